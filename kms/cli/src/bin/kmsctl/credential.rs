//! The admin's credential: a key file (the software, development path) or keys inside a PKCS#11
//! token (production). Both sign through the [`AdminSigner`] boundary and pass a root-key share
//! to the server through [`Credential::rewrap_share`], so the commands never ask which one they
//! have. It must never print, log or accept on the command line a PIN, and never take a private
//! key or a share in the clear out of a token.

use std::path::Path;

use kms_core::admin::AdminSigner;
use kms_core::keyfile::{AdminKeyFile, AdminPublic};
use kms_core::share_wrap::{self, ShareEnvelope};
use kms_hsm::{Hsm, HsmShareKey, HsmSigner, PinSource, TokenSelector};

use crate::cli::Global;
use crate::client::Signer;
use crate::error::Error;
use crate::files;

/// The label suffix of an admin's signing key in the token.
pub(crate) const SIGN_SUFFIX: &str = "-sign";
/// The label suffix of a custodian's share key in the token.
pub(crate) const SHARE_SUFFIX: &str = "-share";

/// Which token, and how to log in: from --hsm-module, --hsm-token and --hsm-pin.
pub(crate) struct TokenArgs<'a> {
    module: &'a Path,
    token: TokenSelector,
    pin: PinSource,
}

impl<'a> TokenArgs<'a> {
    /// The token options, or `None` when --hsm-module is not given.
    pub(crate) fn from_global(g: &'a Global) -> Result<Option<Self>, Error> {
        let Some(module) = g.hsm_module.as_deref() else {
            return Ok(None);
        };
        let token = g
            .hsm_token
            .as_deref()
            .ok_or_else(|| Error::usage("--hsm-module needs --hsm-token label:NAME|slot:N|serial:S"))?
            .parse::<TokenSelector>()
            .map_err(|e| Error::usage(format!("--hsm-token: {e}")))?;
        // The refusal does not repeat the value: it may be a PIN typed where a source belongs.
        let pin = g.hsm_pin.parse::<PinSource>().map_err(|_| {
            Error::usage(
                "--hsm-pin (or KMSCTL_HSM_PIN) must be env:VAR, file:PATH or prompt; a PIN itself is never given there",
            )
        })?;
        Ok(Some(Self { module, token, pin }))
    }

    /// Reads the PIN and logs in to the token.
    pub(crate) fn open(&self) -> Result<Hsm, Error> {
        let pin = self.pin.read().map_err(|e| Error::local(format!("--hsm-pin: {e}")))?;
        Hsm::open(self.module, &self.token, &pin).map_err(|e| Error::local(format!("HSM: {e}")))
    }
}

/// An admin whose keys live in a token.
pub(crate) struct HsmAdmin {
    admin_id: String,
    public: AdminPublic,
    label: String,
    hsm: Hsm,
    signer: HsmSigner,
}

/// What signs this run's admin requests.
pub(crate) enum Credential {
    /// A key file (--admin-key): development and tests.
    KeyFile(Box<AdminKeyFile>),
    /// Keys in a PKCS#11 token (--hsm-module ... --admin-pub).
    Hsm(Box<HsmAdmin>),
}

impl Credential {
    /// The credential the global options name: --admin-key, or --hsm-module with --admin-pub.
    pub(crate) fn load(g: &Global) -> Result<Self, Error> {
        match (TokenArgs::from_global(g)?, g.admin_key.as_deref()) {
            (Some(_), Some(_)) => Err(Error::usage(
                "give either --admin-key (a key file) or --hsm-module (keys in a token), not both",
            )),
            (None, key_file) => Ok(Self::KeyFile(Box::new(files::admin_key(key_file)?))),
            (Some(token), None) => {
                let pub_path = g.admin_pub.as_deref().ok_or_else(|| {
                    Error::usage(
                        "an HSM credential needs --admin-pub FILE (the public file `kmsctl admin keygen --hsm` wrote): it names the admin",
                    )
                })?;
                let public = files::admin_public(pub_path)?;
                let label = g.hsm_key.clone().unwrap_or_else(|| public.admin_id.clone());
                let hsm = token.open()?;
                let signer = hsm
                    .signing_key(&format!("{label}{SIGN_SUFFIX}"))
                    .map_err(|e| Error::local(format!("HSM: {e}")))?;
                if !hex::encode(signer.public_key_bytes()).eq_ignore_ascii_case(&public.signing_public_key) {
                    return Err(Error::local(format!(
                        "the signing key '{label}{SIGN_SUFFIX}' in the token is not the one in {} (admin {}); check --hsm-token, --hsm-key and --admin-pub",
                        pub_path.display(),
                        public.admin_id
                    )));
                }
                Ok(Self::Hsm(Box::new(HsmAdmin {
                    admin_id: public.admin_id.clone(),
                    public,
                    label,
                    hsm,
                    signer,
                })))
            }
        }
    }

    pub(crate) fn admin_id(&self) -> &str {
        match self {
            Self::KeyFile(k) => k.admin_id.as_str(),
            Self::Hsm(h) => &h.admin_id,
        }
    }

    /// The request signer.
    pub(crate) fn signer(&self) -> Signer<'_> {
        let signer: &dyn AdminSigner = match self {
            Self::KeyFile(k) => k.signer(),
            Self::Hsm(h) => &h.signer,
        };
        Signer::new(self.admin_id().to_owned(), signer)
    }

    /// Whether `public` (an admin's public file) describes this credential's keys.
    pub(crate) fn matches(&self, public: &AdminPublic) -> Result<bool, Error> {
        let mine = match self {
            Self::KeyFile(k) => k.public(),
            Self::Hsm(h) => {
                let mut mine = h.public.clone();
                mine.encryption_public_key = hex::encode(h.share_key()?.public_key());
                mine
            }
        };
        Ok(mine.admin_id == public.admin_id
            && mine.signing_public_key.eq_ignore_ascii_case(&public.signing_public_key)
            && mine
                .encryption_public_key
                .eq_ignore_ascii_case(&public.encryption_public_key))
    }

    /// Re-seals the share in `envelope` (sealed to this admin) to the server's unseal key. A
    /// key file opens it in this process (zeroized at once); a token re-wraps it inside.
    pub(crate) fn rewrap_share(
        &self,
        envelope: &ShareEnvelope,
        server_public_key: &[u8],
    ) -> Result<ShareEnvelope, Error> {
        match self {
            Self::KeyFile(key) => {
                let plain = key.share_key().open(envelope).map_err(|e| {
                    Error::local(format!(
                        "cannot open your share with the encryption key in --admin-key ({e}); is it the key file given at init?"
                    ))
                })?;
                share_wrap::seal(server_public_key, plain.expose_secret())
                    .map_err(|e| Error::server_state("bad_unseal_key", format!("the server's unseal public key: {e}")))
            }
            Self::Hsm(h) => h.share_key()?.rewrap(envelope, server_public_key).map_err(|e| {
                Error::local(format!(
                    "the token could not re-wrap your share with '{}{SHARE_SUFFIX}' ({e}); is it the token given at init?",
                    h.label
                ))
            }),
        }
    }
}

impl HsmAdmin {
    fn share_key(&self) -> Result<HsmShareKey, Error> {
        self.hsm
            .share_key(&format!("{}{SHARE_SUFFIX}", self.label))
            .map_err(|e| Error::local(format!("HSM: {e}")))
    }
}

/// Generates an admin's signing and share keys inside the token (`<label>-sign`,
/// `<label>-share`, non-extractable) and returns the public half.
pub(crate) fn generate_in_token(token: &TokenArgs<'_>, label: &str, public: AdminPublic) -> Result<AdminPublic, Error> {
    let hsm = token.open()?;
    let sign_label = format!("{label}{SIGN_SUFFIX}");
    let share_label = format!("{label}{SHARE_SUFFIX}");
    let signer = hsm
        .generate_signing_key(&sign_label)
        .map_err(|e| Error::local(format!("HSM: {e}")))?;
    let share = match hsm.generate_share_key(&share_label) {
        Ok(s) => s,
        Err(e) => {
            // The signing key was made by this run: without its share key it is of no use.
            let _ = hsm.delete_object(&sign_label);
            return Err(Error::local(format!("HSM: {e}")));
        }
    };
    Ok(AdminPublic {
        signing_public_key: hex::encode(signer.public_key_bytes()),
        encryption_public_key: hex::encode(share.public_key()),
        ..public
    })
}
