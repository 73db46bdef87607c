//! The software admin key file: an admin's ECDSA P-256 signing key (PKCS#8) and P-256 HPKE
//! encryption key (for root-key shares), with the admin's id and country, as JSON. It is secret:
//! written with mode 0600, never logged. The public half is a separate JSON document that is
//! safe to share (it is what `kmsctl init` and `kmsctl admin add` take).
//! HSM-held admin keys replace this file in production.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::admin::{AdminPublicKey, AdminSigner, SoftwareSigner};
use crate::ids::AdminId;
use crate::jurisdiction::Country;
use crate::secret::SecretBytes;
use crate::share_wrap::ShareKey;
use crate::Error;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// An admin's identity and public keys: the shareable half of a key file.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminPublic {
    /// The admin's id.
    pub admin_id: String,
    /// ISO 3166-1 alpha-2 country.
    pub country: String,
    /// ECDSA P-256 signing key, SEC1 uncompressed, hex.
    pub signing_public_key: String,
    /// P-256 HPKE encryption key, SEC1 uncompressed, hex.
    pub encryption_public_key: String,
}

impl AdminPublic {
    /// The admin's fingerprint ([`crate::admin::fingerprint`]); `Err` if a key is not hex.
    pub fn fingerprint(&self) -> Result<String, Error> {
        let hex = |s: &str| {
            hex::decode(s).map_err(|_| Error::InvalidId {
                kind: "admin public key",
                reason: "not hex".into(),
            })
        };
        Ok(crate::admin::fingerprint(
            &self.admin_id,
            &self.country,
            &hex(&self.signing_public_key)?,
            &hex(&self.encryption_public_key)?,
        ))
    }
}

/// The file's fields; the two keys in base64, wiped when it is dropped.
#[derive(Serialize, Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    admin_id: String,
    country: String,
    signing_pkcs8: String,
    encryption_private_key: String,
}

/// A loaded admin key file. No `Debug`, `Clone` or `Serialize`.
pub struct AdminKeyFile {
    /// The admin's id.
    pub admin_id: AdminId,
    /// The admin's country.
    pub country: Country,
    signer: SoftwareSigner,
    pkcs8: SecretBytes,
    share: ShareKey,
}

impl AdminKeyFile {
    /// Generates fresh keys for `admin_id` in `country`.
    pub fn generate(admin_id: AdminId, country: Country) -> Result<Self, Error> {
        let pkcs8 = SoftwareSigner::generate_pkcs8()?;
        Ok(Self {
            admin_id,
            country,
            signer: SoftwareSigner::from_pkcs8(&pkcs8)?,
            pkcs8,
            share: ShareKey::generate()?,
        })
    }

    /// Parses the JSON file contents.
    pub fn decode(text: &str) -> Result<Self, Error> {
        let bad = |reason: String| Error::InvalidPolicy {
            document: "admin key file",
            reason,
        };
        let s: Stored = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if s.version != 1 {
            return Err(bad(format!("version {} is unknown", s.version)));
        }
        let pkcs8 = SecretBytes::new(
            B64.decode(&s.signing_pkcs8)
                .map_err(|_| bad("signing_pkcs8 is not base64".into()))?,
        );
        let enc = SecretBytes::new(
            B64.decode(&s.encryption_private_key)
                .map_err(|_| bad("encryption_private_key is not base64".into()))?,
        );
        Ok(Self {
            admin_id: AdminId::parse(&s.admin_id)?,
            country: Country::parse(&s.country)?,
            signer: SoftwareSigner::from_pkcs8(&pkcs8)?,
            pkcs8,
            share: ShareKey::from_bytes(&enc)?,
        })
    }

    /// The JSON file contents (secret).
    pub fn encode(&self) -> SecretBytes {
        let stored = Stored {
            version: 1,
            admin_id: self.admin_id.to_string(),
            country: self.country.to_string(),
            signing_pkcs8: B64.encode(self.pkcs8.expose_secret()),
            encryption_private_key: B64.encode(self.share.to_bytes().expose_secret()),
        };
        SecretBytes::new(serde_json::to_vec_pretty(&stored).unwrap_or_default())
    }

    /// The shareable half.
    pub fn public(&self) -> AdminPublic {
        AdminPublic {
            admin_id: self.admin_id.to_string(),
            country: self.country.to_string(),
            signing_public_key: hex::encode(self.signer.public_key().as_bytes()),
            encryption_public_key: hex::encode(self.share.public_key()),
        }
    }

    /// The signer.
    pub fn signer(&self) -> &SoftwareSigner {
        &self.signer
    }

    /// The key that opens this admin's root-key share envelopes (`share_wrap`; an HSM holds it
    /// for production admins).
    pub fn share_key(&self) -> &ShareKey {
        &self.share
    }
}

impl AdminPublic {
    /// The signing key, parsed.
    pub fn signing_key(&self) -> Result<AdminPublicKey, Error> {
        let b = hex::decode(&self.signing_public_key).map_err(|_| Error::InvalidPublicKey("P-256 signing (hex)"))?;
        AdminPublicKey::parse(&b)
    }

    /// The encryption key, checked.
    pub fn encryption_key(&self) -> Result<Vec<u8>, Error> {
        let b =
            hex::decode(&self.encryption_public_key).map_err(|_| Error::InvalidPublicKey("P-256 encryption (hex)"))?;
        crate::share_wrap::check_public_key(&b)?;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip() {
        let k = AdminKeyFile::generate(AdminId::parse("alice").unwrap(), Country::parse("DE").unwrap()).unwrap();
        let text = k.encode();
        let again = AdminKeyFile::decode(std::str::from_utf8(text.expose_secret()).unwrap()).unwrap();
        assert_eq!(again.public(), k.public());
        let sig = again.signer().sign(b"x").unwrap();
        k.public().signing_key().unwrap().verify(b"x", &sig).unwrap();
        assert!(AdminKeyFile::decode("{}").is_err());
    }
}
