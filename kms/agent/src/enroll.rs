//! The machine side of TPM enrolment: read the EK certificate, create an attestation key (AK)
//! under the EK, ask the server for a credential challenge over both (BeginTpmEnrollment), and
//! have the TPM answer it (TPM2_ActivateCredential). The outcome is an enrolment request for an
//! admin (who submits it with AdminService.EnrollHardware) and the AK, which the machine keeps:
//! only that AK's quotes are accepted afterwards.
//!
//! The TPM is opened for each step and released before every network call, and every object
//! loaded is flushed (a TPM, swtpm in particular, holds only three transient objects). The
//! activated secret is shown to nobody but the admin's request file.

use attestation::attester::tpm::{AkKey, AkScheme, EkKind, Tpm, TpmError};
use attestation::tpm::ek::EkPublic;
use kms_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize as _, Zeroizing};

use crate::client::Client;
use crate::error::Error;

/// What [`Client::enroll_tpm`] needs.
#[derive(Clone, Debug)]
pub struct TpmEnrollOptions {
    /// The TPM: `device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=N`.
    pub tcti: String,
    /// The new AK's key type and signature scheme.
    pub ak_scheme: AkScheme,
    /// The EK that answers the credential challenge (its certificate is sent). The AK is always
    /// created under the RSA 2048 EK.
    pub ek_kind: EkKind,
    /// Intermediate CA certificates (DER) between the EK certificate and the server's
    /// TPM-manufacturer CA bundle.
    pub ek_intermediates: Vec<Vec<u8>>,
}

impl TpmEnrollOptions {
    /// The TPM at `tcti`, an RSASSA AK, the RSA 2048 EK, no intermediates.
    pub fn new(tcti: impl Into<String>) -> Self {
        Self {
            tcti: tcti.into(),
            ak_scheme: AkScheme::RsaSsa,
            ek_kind: EkKind::Rsa2048,
            ek_intermediates: Vec::new(),
        }
    }
}

/// An enrolment waiting for an admin: the request to hand over, and the AK to keep.
pub struct PendingEnrollment {
    /// For the admin (EnrollHardware).
    pub request: EnrollmentRequest,
    /// The new AK; store it (see [`encode_ak`]) and quote with it once enrolled.
    pub ak: AkKey,
    /// When the server stops accepting the request, in milliseconds since the Unix epoch.
    pub expires_unix_ms: i64,
}

impl std::fmt::Debug for PendingEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingEnrollment")
            .field("request", &self.request)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

/// The answer to a TPM enrolment challenge, which an admin submits with
/// AdminService.EnrollHardware. As JSON (see [`EnrollmentRequest::to_json`]):
/// `{"enrollment_id": "...", "activated_secret": "<hex>", "ak_name": "<hex>", "ek_digest": "<hex>"}`.
pub struct EnrollmentRequest {
    /// Names the enrolment attempt.
    pub enrollment_id: String,
    activated_secret: Zeroizing<Vec<u8>>,
    /// The AK's name (hex), as the server computed it.
    pub ak_name: String,
    /// SHA-256 of the EK's SubjectPublicKeyInfo (hex): the machine's TPM identity.
    pub ek_digest: String,
}

impl std::fmt::Debug for EnrollmentRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentRequest")
            .field("enrollment_id", &self.enrollment_id)
            .field("ak_name", &self.ak_name)
            .field("ek_digest", &self.ek_digest)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    enrollment_id: String,
    activated_secret: String,
    ak_name: String,
    ek_digest: String,
}

impl Drop for RequestJson {
    fn drop(&mut self) {
        self.activated_secret.zeroize();
    }
}

impl EnrollmentRequest {
    /// A request from its parts.
    pub fn new(enrollment_id: String, activated_secret: Vec<u8>, ak_name: String, ek_digest: String) -> Self {
        Self {
            enrollment_id,
            activated_secret: Zeroizing::new(activated_secret),
            ak_name,
            ek_digest,
        }
    }

    /// The secret the TPM recovered: the proof that the TPM holding the EK holds the AK.
    pub fn expose_activated_secret(&self) -> &[u8] {
        &self.activated_secret
    }

    /// The request file's contents (JSON).
    pub fn to_json(&self) -> Zeroizing<String> {
        let doc = RequestJson {
            enrollment_id: self.enrollment_id.clone(),
            activated_secret: hex::encode(self.activated_secret.as_slice()),
            ak_name: self.ak_name.clone(),
            ek_digest: self.ek_digest.clone(),
        };
        // Serializing strings into a string cannot fail.
        Zeroizing::new(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n")
    }

    /// Parses a request file.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let mut doc: RequestJson =
            serde_json::from_str(text).map_err(|e| Error::Input(format!("not an enrolment request: {e}")))?;
        let secret = Zeroizing::new(
            hex::decode(doc.activated_secret.as_str())
                .map_err(|e| Error::Input(format!("enrolment request: activated_secret is not hex: {e}")))?,
        );
        if doc.enrollment_id.is_empty() || secret.is_empty() {
            return Err(Error::Input(
                "enrolment request: enrollment_id and activated_secret must not be empty".into(),
            ));
        }
        for (name, value) in [("ak_name", &doc.ak_name), ("ek_digest", &doc.ek_digest)] {
            if hex::decode(value).is_err() {
                return Err(Error::Input(format!("enrolment request: {name} is not hex")));
            }
        }
        Ok(Self {
            enrollment_id: std::mem::take(&mut doc.enrollment_id),
            activated_secret: secret,
            ak_name: std::mem::take(&mut doc.ak_name),
            ek_digest: std::mem::take(&mut doc.ek_digest),
        })
    }

    /// The TPM part of an EnrollHardware operation.
    pub fn to_wire(&self) -> pb::TpmEnrollment {
        pb::TpmEnrollment {
            enrollment_id: self.enrollment_id.clone(),
            activated_secret: self.activated_secret.to_vec(),
            expected_ek_digest: self.ek_digest.clone(),
            expected_ak_name: self.ak_name.clone(),
        }
    }

    /// The whole EnrollHardware operation, with where the machine is and who runs it.
    pub fn enroll_hardware_op(
        &self,
        country: &str,
        site: &str,
        operator: &str,
        description: &str,
    ) -> pb::EnrollHardwareOp {
        pb::EnrollHardwareOp {
            country: country.to_owned(),
            site: site.to_owned(),
            operator: operator.to_owned(),
            description: description.to_owned(),
            identity: Some(pb::enroll_hardware_op::Identity::Tpm(self.to_wire())),
        }
    }
}

/// The AK file's contents (JSON): the AK's TPM2B_PUBLIC and TPM2B_PRIVATE in hex, and its name
/// ([`AkKey::to_file`]). The private part is wrapped by the TPM (only that TPM can load it).
pub fn encode_ak(ak: &AkKey) -> Result<String, Error> {
    ak.to_file().map_err(ak_file_error)
}

/// Parses an AK file written by [`encode_ak`], checking the public area and its name.
pub fn decode_ak(text: &str) -> Result<AkKey, Error> {
    AkKey::from_file(text).map_err(ak_file_error)
}

fn ak_file_error(e: TpmError) -> Error {
    match e {
        TpmError::Input(m) => Error::Input(m),
        other => Error::Input(other.to_string()),
    }
}

impl Client {
    /// The machine side of TPM enrolment: reads the EK certificate, creates an AK, asks the
    /// server for a credential challenge and has the TPM answer it. The request goes to an
    /// admin; the AK must be kept (it is the only one the server will accept for this machine).
    pub async fn enroll_tpm(&self, options: &TpmEnrollOptions) -> Result<PendingEnrollment, Error> {
        let (ek_certificate, ek_digest, ak) = prepare(options)?;
        let challenge = self
            .begin_tpm_enrollment(ek_certificate, options.ek_intermediates.clone(), ak.public.clone())
            .await?;
        let ak_name = ak.parsed_public()?.name().to_string();
        if !challenge.ak_name.eq_ignore_ascii_case(&ak_name) {
            return Err(Error::bad_response(format!(
                "the server names the AK {}, the TPM {ak_name}",
                challenge.ak_name
            )));
        }
        if !challenge.ek_digest.eq_ignore_ascii_case(&ek_digest) {
            return Err(Error::bad_response(format!(
                "the server computed EK digest {}, this TPM's EK has {ek_digest}",
                challenge.ek_digest
            )));
        }
        let secret = {
            let mut tpm = Tpm::open(&options.tcti)?;
            tpm.activate_credential(&ak, options.ek_kind, &challenge.id_object, &challenge.encrypted_secret)?
        };
        Ok(PendingEnrollment {
            request: EnrollmentRequest {
                enrollment_id: challenge.enrollment_id,
                activated_secret: secret,
                ak_name,
                ek_digest,
            },
            ak,
            expires_unix_ms: challenge.expires_unix_ms,
        })
    }
}

/// The EK certificate, the EK's digest (of the EK the TPM derives, not of the certificate, so a
/// certificate that is not this TPM's is noticed here) and a new AK.
fn prepare(options: &TpmEnrollOptions) -> Result<(Vec<u8>, String, AkKey), Error> {
    let mut tpm = Tpm::open(&options.tcti)?;
    let ek_certificate = tpm.ek_certificate(options.ek_kind)?;
    let ek_public = tpm.ek_public(options.ek_kind)?;
    let ek_digest = EkPublic::from_tpm2b_public(&ek_public)
        .map_err(|r| Error::Tpm(TpmError::SelfCheck(r)))?
        .digest()
        .to_string();
    let ak = tpm.create_ak(options.ak_scheme)?;
    Ok((ek_certificate, ek_digest, ak))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let r = EnrollmentRequest::new("enr-1".into(), vec![1, 2, 0xff], "000bab".into(), "cd".repeat(32));
        let text = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["enrollment_id"], "enr-1");
        assert_eq!(v["activated_secret"], "0102ff");
        assert_eq!(v["ak_name"], "000bab");
        assert_eq!(v.as_object().unwrap().len(), 4);
        let back = EnrollmentRequest::from_json(&text).unwrap();
        assert_eq!(
            (&back.enrollment_id, &back.ak_name, &back.ek_digest),
            (&r.enrollment_id, &r.ak_name, &r.ek_digest)
        );
        assert_eq!(back.expose_activated_secret(), &[1, 2, 0xff]);
        let op = back.enroll_hardware_op("DE", "fra-1", "ACME GmbH", "rack 3");
        let Some(pb::enroll_hardware_op::Identity::Tpm(t)) = op.identity else {
            panic!("not TPM")
        };
        assert_eq!(
            (t.enrollment_id.as_str(), t.activated_secret.as_slice()),
            ("enr-1", &[1, 2, 0xff][..])
        );
    }

    #[test]
    fn the_secret_stays_out_of_debug() {
        let r = EnrollmentRequest::new("enr-1".into(), vec![0xab; 4], "00".into(), "11".into());
        assert!(!format!("{r:?}").contains("abab"));
    }

    #[test]
    fn bad_request_files_are_refused() {
        for text in [
            "{}",
            r#"{"enrollment_id":"e","activated_secret":"zz","ak_name":"00","ek_digest":"00"}"#,
            r#"{"enrollment_id":"","activated_secret":"01","ak_name":"00","ek_digest":"00"}"#,
            r#"{"enrollment_id":"e","activated_secret":"01","ak_name":"xx","ek_digest":"00"}"#,
            r#"{"enrollment_id":"e","activated_secret":"01","ak_name":"00","ek_digest":"00","x":1}"#,
        ] {
            assert!(
                matches!(EnrollmentRequest::from_json(text), Err(Error::Input(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn ak_files_are_checked() {
        assert!(decode_ak("{}").is_err());
        let wrong = r#"{"format":"other","name":"00","public":"00","private":"00"}"#;
        assert!(decode_ak(wrong).unwrap_err().to_string().contains("format"));
        let junk = r#"{"format":"kms-agent-tpm-ak-v1","name":"00","public":"0000","private":"0000"}"#;
        assert!(matches!(decode_ak(junk), Err(Error::Input(_))));
    }
}
