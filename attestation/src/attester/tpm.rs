//! The workload side of TPM attestation, through the TSS (tss-esapi over libtss2): read the EK
//! certificate, create an attestation key (AK) under the EK, answer credential activation, and
//! quote PCRs over a binding into [`TpmEvidence`].
//!
//! Everything goes through a TCTI: `device:/dev/tpmrm0` on a machine, or
//! `swtpm:host=127.0.0.1,port=N` for a software TPM (`swtpm:path=` is ignored by tss-esapi).
//! Transient objects and sessions are flushed after every operation, even on error: a TPM (and
//! swtpm in particular) holds only three of each.
//!
//! Never panics when the TPM is missing or misbehaves: every failure is a [`TpmError`].

use std::path::Path;
use std::str::FromStr;

use tss_esapi::abstraction::ak::{create_ak_2, load_ak};
use tss_esapi::abstraction::ek::{create_ek_object_2, retrieve_ek_pubcert};
use tss_esapi::abstraction::{pcr, AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{AuthHandle, KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SignatureSchemeAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, EncryptedSecret, IdObject, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuffer, SignatureScheme,
    SymmetricDefinition,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::tpm::{AkPublic, PcrValues, TpmEvidence, TpmTrust, TpmVerifier};
use crate::{Check, Refusal, Verifier};

/// Why a TPM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TPM device named by the TCTI does not exist.
    #[error("no TPM: {0} does not exist (is this a machine with a TPM, and is the tpm_crb/tpm_tis driver loaded?)")]
    NoDevice(String),
    /// The TCTI could not be loaded or the TPM did not answer.
    #[error("cannot reach the TPM through TCTI \"{tcti}\": {source}")]
    Connect {
        /// The TCTI configuration used.
        tcti: String,
        /// The TSS error.
        source: tss_esapi::Error,
    },
    /// A TPM command failed.
    #[error("TPM {operation} failed: {source}")]
    Tpm {
        /// What was being done.
        operation: &'static str,
        /// The TSS or TPM error.
        source: tss_esapi::Error,
    },
    /// The caller's input was not usable (e.g. a malformed credential blob or AK).
    #[error("invalid input: {0}")]
    Input(String),
    /// What the TPM produced does not verify here (it would be refused by the server too).
    #[error("the TPM's output does not verify: {0}")]
    SelfCheck(Refusal),
}

/// Adds the operation name to a TSS error.
fn op(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Tpm { operation, source }
}

/// An endorsement key, by the TCG EK Credential Profile template it is created from (and the NV
/// index holding its certificate).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum EkKind {
    /// RSA 2048 (low range; certificate at NV 0x01c00002).
    Rsa2048,
    /// ECC NIST P-256 (low range; certificate at NV 0x01c0000a).
    EccP256,
    /// ECC NIST P-384 (high range; certificate at NV 0x01c00016). swtpm_setup makes this one.
    EccP384,
}

impl EkKind {
    fn selection(self) -> AsymmetricAlgorithmSelection {
        match self {
            Self::Rsa2048 => AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            Self::EccP256 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
            Self::EccP384 => AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP384),
        }
    }
}

/// The AK's key type and signature scheme (all with SHA-256).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum AkScheme {
    /// RSA 2048, RSASSA-PKCS1-v1_5.
    RsaSsa,
    /// RSA 2048, RSASSA-PSS.
    RsaPss,
    /// ECC P-256, ECDSA.
    EcdsaP256,
}

/// An AK created under the RSA 2048 EK, as the TPM returned it. The private part is wrapped by
/// the TPM (only that TPM can load it); the workload stores both parts and reloads the AK with
/// them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AkKey {
    /// TPM2B_PUBLIC, as `tpm2_createak -u` writes it (the evidence's `ak_public`).
    pub public: Vec<u8>,
    /// TPM2B_PRIVATE, as `tpm2_createak -r` writes it.
    pub private: Vec<u8>,
}

impl AkKey {
    /// The AK's public area, parsed and checked as the server will.
    pub fn parsed_public(&self) -> Result<AkPublic, TpmError> {
        AkPublic::from_tpm2b_public(&self.public).map_err(TpmError::SelfCheck)
    }

    fn tss_parts(&self) -> Result<(Private, Public), TpmError> {
        let private = match self.private.split_first_chunk::<2>() {
            Some((size, body)) if usize::from(u16::from_be_bytes(*size)) == body.len() => {
                Private::try_from(body).map_err(|e| TpmError::Input(format!("AK private: {e}")))?
            }
            _ => return Err(TpmError::Input("AK private is not a TPM2B_PRIVATE".into())),
        };
        let public = PublicBuffer::unmarshall(&self.public)
            .and_then(Public::try_from)
            .map_err(|e| TpmError::Input(format!("AK public: {e}")))?;
        Ok((private, public))
    }
}

/// The AK file's format tag.
const AK_FILE_FORMAT: &str = "kms-agent-tpm-ak-v1";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AkFile {
    format: String,
    /// Informational: the AK's name, checked against the public area when read.
    name: String,
    public: String,
    private: String,
}

impl AkKey {
    /// The AK file (JSON): the AK's TPM2B_PUBLIC and TPM2B_PRIVATE in hex, and its name. The
    /// private part is wrapped by the TPM (only that TPM can load it). `kms-agent` keeps a
    /// workload's AK in one, `kmsd` its node AK.
    pub fn to_file(&self) -> Result<String, TpmError> {
        let doc = AkFile {
            format: AK_FILE_FORMAT.into(),
            name: self.parsed_public()?.name().to_string(),
            public: hex::encode(&self.public),
            private: hex::encode(&self.private),
        };
        serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| TpmError::Input(format!("AK file: {e}")))
    }

    /// Parses an AK file written by [`AkKey::to_file`], checking the public area and its name.
    pub fn from_file(text: &str) -> Result<Self, TpmError> {
        let doc: AkFile = serde_json::from_str(text).map_err(|e| TpmError::Input(format!("not an AK file: {e}")))?;
        if doc.format != AK_FILE_FORMAT {
            return Err(TpmError::Input(format!(
                "AK file format {:?}, expected {AK_FILE_FORMAT:?}",
                doc.format
            )));
        }
        let hex_field = |name: &str, value: &str| {
            hex::decode(value).map_err(|e| TpmError::Input(format!("AK file: {name} is not hex: {e}")))
        };
        let ak = Self {
            public: hex_field("public", &doc.public)?,
            private: hex_field("private", &doc.private)?,
        };
        let name = ak.parsed_public()?.name().to_string();
        if !name.eq_ignore_ascii_case(&doc.name) {
            return Err(TpmError::Input(format!(
                "AK file: its public area is named {name}, the file says {}",
                doc.name
            )));
        }
        Ok(ak)
    }
}

/// Strips the u16 size of a marshalled TPM2B, checking it.
fn tpm2b_body<'a>(bytes: &'a [u8], what: &str) -> Result<&'a [u8], TpmError> {
    match bytes.split_first_chunk::<2>() {
        Some((size, body)) if usize::from(u16::from_be_bytes(*size)) == body.len() => Ok(body),
        _ => Err(TpmError::Input(format!("{what} is not a marshalled TPM2B"))),
    }
}

/// A connection to a TPM.
pub struct Tpm {
    ctx: Context,
}

impl std::fmt::Debug for Tpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tpm")
    }
}

/// How often a quote is retried when a PCR changed between the quote and the PCR read.
const QUOTE_ATTEMPTS: usize = 3;

impl Tpm {
    /// Connects through `tcti`: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`, ….
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Connect {
            tcti: tcti.to_owned(),
            source,
        })?;
        if let TctiNameConf::Device(_) = conf {
            let path = tcti
                .strip_prefix("device:")
                .filter(|p| !p.is_empty())
                .unwrap_or("/dev/tpm0");
            if !Path::new(path).exists() {
                return Err(TpmError::NoDevice(path.to_owned()));
            }
        }
        let ctx = Context::new(conf).map_err(|source| TpmError::Connect {
            tcti: tcti.to_owned(),
            source,
        })?;
        Ok(Self { ctx })
    }

    /// Runs `f` with the EK of `kind` loaded (created from its template, which yields the same
    /// key every time), then flushes it.
    fn with_ek<T>(
        &mut self,
        kind: EkKind,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let ek = create_ek_object_2(&mut self.ctx, kind.selection(), DefaultKey).map_err(op("create EK"))?;
        let result = f(&mut self.ctx, ek);
        let flushed = self.ctx.flush_context(ek.into()).map_err(op("flush EK"));
        let value = result?;
        flushed?;
        Ok(value)
    }

    /// Runs `f` with `ak` loaded under the RSA 2048 EK (the EK is flushed once the AK is
    /// loaded), then flushes the AK.
    fn with_ak<T>(
        &mut self,
        ak: &AkKey,
        f: impl FnOnce(&mut Context, KeyHandle) -> Result<T, TpmError>,
    ) -> Result<T, TpmError> {
        let (private, public) = ak.tss_parts()?;
        let handle = self.with_ek(EkKind::Rsa2048, |ctx, ek| {
            load_ak(ctx, ek, None, private, public).map_err(op("load AK"))
        })?;
        let result = f(&mut self.ctx, handle);
        let flushed = self.ctx.flush_context(handle.into()).map_err(op("flush AK"));
        let value = result?;
        flushed?;
        Ok(value)
    }

    /// The EK certificate (DER) from its NV index.
    pub fn ek_certificate(&mut self, kind: EkKind) -> Result<Vec<u8>, TpmError> {
        retrieve_ek_pubcert(&mut self.ctx, kind.selection()).map_err(op("read EK certificate from NV"))
    }

    /// The EK's public area, TPM2B_PUBLIC (as `tpm2_createek -u` writes it).
    pub fn ek_public(&mut self, kind: EkKind) -> Result<Vec<u8>, TpmError> {
        self.with_ek(kind, |ctx, ek| {
            let (public, _, _) = ctx.read_public(ek).map_err(op("read EK public"))?;
            PublicBuffer::try_from(public)
                .and_then(|b| b.marshall())
                .map_err(op("marshal EK public"))
        })
    }

    /// Creates an AK under the RSA 2048 EK: a restricted signing key, fixed to this TPM, with
    /// `scheme`. Checks that the name the TPM gives it is the one the server will compute.
    pub fn create_ak(&mut self, scheme: AkScheme) -> Result<AkKey, TpmError> {
        let (key, sign) = match scheme {
            AkScheme::RsaSsa => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaSsa,
            ),
            AkScheme::RsaPss => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaPss,
            ),
            AkScheme::EcdsaP256 => (
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
            ),
        };
        let created = self.with_ek(EkKind::Rsa2048, |ctx, ek| {
            create_ak_2(ctx, ek, HashingAlgorithm::Sha256, key, sign, None, DefaultKey).map_err(op("create AK"))
        })?;
        let mut private = Vec::with_capacity(2 + created.out_private.len());
        let size =
            u16::try_from(created.out_private.len()).map_err(|_| TpmError::Input("AK private too large".into()))?;
        private.extend_from_slice(&size.to_be_bytes());
        private.extend_from_slice(created.out_private.value());
        let public = PublicBuffer::try_from(created.out_public)
            .and_then(|b| b.marshall())
            .map_err(op("marshal AK public"))?;
        let ak = AkKey { public, private };

        let expected = ak.parsed_public()?;
        let tpm_name = self.with_ak(&ak, |ctx, handle| {
            let (_, name, _) = ctx.read_public(handle).map_err(op("read AK public"))?;
            Ok(name.value().to_vec())
        })?;
        if tpm_name != expected.name().as_bytes() {
            return Err(TpmError::SelfCheck(Refusal::new(
                Check::Identity,
                format!(
                    "the TPM names the AK {}, its public area hashes to {}",
                    hex::encode(tpm_name),
                    expected.name()
                ),
            )));
        }
        Ok(ak)
    }

    /// Answers credential activation: decrypts the credential the server made for `ak` with
    /// [`crate::tpm::credential::make_credential`] against the EK of `ek_kind`. `id_object` and
    /// `encrypted_secret` are the marshalled TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET.
    pub fn activate_credential(
        &mut self,
        ak: &AkKey,
        ek_kind: EkKind,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let id_object = IdObject::try_from(tpm2b_body(id_object, "ID object")?)
            .map_err(|e| TpmError::Input(format!("ID object: {e}")))?;
        let secret = EncryptedSecret::try_from(tpm2b_body(encrypted_secret, "encrypted secret")?)
            .map_err(|e| TpmError::Input(format!("encrypted secret: {e}")))?;
        let (private, public) = ak.tss_parts()?;
        let ak_handle = self.with_ek(EkKind::Rsa2048, |ctx, ek| {
            load_ak(ctx, ek, None, private, public).map_err(op("load AK"))
        })?;
        let result = self.with_ek(ek_kind, |ctx, ek| activate(ctx, ak_handle, ek, id_object, secret));
        let flushed = self.ctx.flush_context(ak_handle.into()).map_err(op("flush AK"));
        let credential = result?;
        flushed?;
        Ok(credential)
    }

    /// Quotes the SHA-256 PCRs `pcrs` with `ak` over `qualifying_data` (the binding), and reads
    /// their values. The evidence is verified here as the server will (so a PCR that changed
    /// between the quote and the read is caught and the quote retried).
    pub fn quote(&mut self, ak: &AkKey, qualifying_data: &[u8; 32], pcrs: &[u8]) -> Result<TpmEvidence, TpmError> {
        let slots = pcrs
            .iter()
            .map(|&i| {
                1u32.checked_shl(u32::from(i))
                    .filter(|_| i < 24)
                    .and_then(|bit| PcrSlot::try_from(bit).ok())
                    .ok_or_else(|| TpmError::Input(format!("PCR {i} does not exist")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if slots.is_empty() {
            return Err(TpmError::Input("no PCR to quote".into()));
        }
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()
            .map_err(op("build PCR selection"))?;
        let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(ak.parsed_public()?.name().clone()));
        let mut last_refusal = None;
        for _ in 0..QUOTE_ATTEMPTS {
            let (attest, signature) = self.with_ak(ak, |ctx, handle| {
                let data = Data::try_from(qualifying_data.to_vec()).map_err(op("qualifying data"))?;
                let selection = selection.clone();
                ctx.execute_with_nullauth_session(|ctx| ctx.quote(handle, data, SignatureScheme::Null, selection))
                    .map_err(op("quote"))
            })?;
            let values = self.read_pcrs(&selection, &slots, pcrs)?;
            let evidence = TpmEvidence {
                ak_public: ak.public.clone(),
                quote: attest.marshall().map_err(op("marshal quote"))?,
                signature: signature.marshall().map_err(op("marshal signature"))?,
                pcrs: values,
            };
            match verifier.verify(&evidence, qualifying_data, 0) {
                Ok(_) => return Ok(evidence),
                Err(refusal) if refusal.check == Check::Pcrs => last_refusal = Some(refusal),
                Err(refusal) => return Err(TpmError::SelfCheck(refusal)),
            }
        }
        Err(TpmError::SelfCheck(
            last_refusal.unwrap_or_else(|| Refusal::new(Check::Pcrs, "PCRs kept changing")),
        ))
    }

    fn read_pcrs(
        &mut self,
        selection: &tss_esapi::structures::PcrSelectionList,
        slots: &[PcrSlot],
        indices: &[u8],
    ) -> Result<PcrValues, TpmError> {
        let data = pcr::read_all(&mut self.ctx, selection.clone()).map_err(op("read PCRs"))?;
        let bank = data
            .pcr_bank(HashingAlgorithm::Sha256)
            .ok_or_else(|| TpmError::SelfCheck(Refusal::new(Check::Pcrs, "the TPM has no SHA-256 PCR bank")))?;
        let mut values = PcrValues::new();
        for (&slot, &index) in slots.iter().zip(indices) {
            let value: [u8; 32] = bank
                .get_digest(slot)
                .and_then(|d| d.value().try_into().ok())
                .ok_or_else(|| {
                    TpmError::SelfCheck(Refusal::new(Check::Pcrs, format!("no SHA-256 value for PCR {index}")))
                })?;
            values.insert(index, value);
        }
        Ok(values)
    }
}

/// TPM2_ActivateCredential with the AK (password, empty) and the EK (policy: PolicySecret with
/// the endorsement hierarchy, the EK templates' policy A). Flushes the policy session.
fn activate(
    ctx: &mut Context,
    ak: KeyHandle,
    ek: KeyHandle,
    id_object: IdObject,
    secret: EncryptedSecret,
) -> Result<Zeroizing<Vec<u8>>, TpmError> {
    let session = ctx
        .start_auth_session(
            None,
            None,
            None,
            SessionType::Policy,
            SymmetricDefinition::AES_128_CFB,
            HashingAlgorithm::Sha256,
        )
        .map_err(op("start policy session"))?
        .ok_or_else(|| TpmError::Input("the TPM returned no policy session".into()))?;
    let result = (|| {
        let policy = PolicySession::try_from(session).map_err(op("policy session"))?;
        ctx.execute_with_nullauth_session(|ctx| {
            ctx.policy_secret(
                policy,
                AuthHandle::Endorsement,
                Default::default(),
                Default::default(),
                Default::default(),
                None,
            )
        })
        .map_err(op("PolicySecret(endorsement)"))?;
        let digest = ctx
            .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |ctx| {
                ctx.activate_credential(ak, ek, id_object, secret)
            })
            .map_err(op("ActivateCredential"))?;
        Ok(Zeroizing::new(digest.value().to_vec()))
    })();
    let flushed = ctx
        .flush_context(ObjectHandle::from(SessionHandle::from(session)))
        .map_err(op("flush policy session"));
    let credential = result?;
    flushed?;
    Ok(credential)
}
