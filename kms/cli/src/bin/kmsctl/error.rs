//! The one error type of `kmsctl` and its exit codes. Every failure ends here, so the exit code
//! tells a script *whose* problem it was: the server's answer, the network, or a local file.
//! Messages must never carry key material, a share or the admin's private key.

use std::fmt;

/// Exit codes, as documented in `kmsctl --help` (shared with kms-agent).
pub(crate) use kms_client::cli::exit;
use kms_client::cli::{Failure, Report};
/// What the server said when it refused a call (with kmsctl's hint).
pub(crate) use kms_client::Refusal;
use kms_proto::Reason;
use serde_json::{json, Value};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The server answered with an error status; its hint is printed on a line of its own.
    #[error("{0}")]
    Refused(Refusal),
    /// A check made by `kmsctl` itself failed (audit chain, key check value, node identity): a
    /// verdict, printed as it is.
    #[error("{what}")]
    Verification {
        what: String,
        /// The JSON document printed in `--output json` mode.
        json: Value,
    },
    /// Nothing (or nothing usable) answered: connection, TLS handshake, timeout, database.
    #[error("cannot reach {target}: {detail}")]
    Unreachable {
        target: String,
        detail: String,
        hint: &'static str,
    },
    /// A local file or key is missing, unreadable, malformed or would be overwritten.
    #[error("{0}")]
    Local(String),
    /// Arguments that clap accepted but that do not make sense together.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    pub(crate) fn local(what: impl fmt::Display) -> Self {
        Self::Local(what.to_string())
    }

    pub(crate) fn usage(what: impl fmt::Display) -> Self {
        Self::Usage(what.to_string())
    }

    pub(crate) fn unreachable(target: impl fmt::Display, detail: impl fmt::Display) -> Self {
        Self::Unreachable {
            target: target.to_string(),
            detail: detail.to_string(),
            hint: "check --server (or KMSCTL_SERVER), that kmsd runs there, and for https the --ca, --cert and --key files",
        }
    }

    pub(crate) fn database_unreachable(detail: impl fmt::Display) -> Self {
        Self::Unreachable {
            target: "the audit database".into(),
            detail: detail.to_string(),
            hint: "check --database: postgres://USER@HOST/DB or sqlite://PATH of the server's database",
        }
    }

    /// The server's state (as its status shows) rules the command out; reported like the
    /// refusal the server would have sent.
    pub(crate) fn server_state(reason: &str, message: impl fmt::Display) -> Self {
        let refusal = Refusal::new(tonic::Code::FailedPrecondition, message.to_string()).with_reason_name(reason);
        let hint = refusal.reason().and_then(hint_for);
        Self::Refused(refusal.with_hint(hint))
    }

    /// A check `kmsctl` makes before it acts failed, so nothing was sent: `check` is its stable
    /// name (like a server's reason, e.g. `key_check_value_mismatch`). Exit code 1; printed as
    /// `CHECK: message`, and with `--output json` as `{"ok": false, "error": {"kind": CHECK,
    /// "exit_code": 1, "message": …}}` with `detail`'s fields added to `error`.
    pub(crate) fn check_failed(check: &str, message: impl fmt::Display, detail: Value) -> Self {
        let message = message.to_string();
        let mut error = json!({ "kind": check, "exit_code": exit::REFUSED, "message": message });
        if let (Some(e), Value::Object(d)) = (error.as_object_mut(), detail) {
            e.extend(d);
        }
        Self::Verification {
            what: format!("{check}: {message}"),
            json: json!({ "ok": false, "error": error }),
        }
    }

    /// A file operation failed; names the file.
    pub(crate) fn file(action: &str, path: &std::path::Path, e: impl fmt::Display) -> Self {
        Failure::file(action, path, e).into()
    }

    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Refused(_) | Self::Verification { .. } => exit::REFUSED,
            Self::Usage(_) => exit::USAGE,
            Self::Unreachable { .. } => exit::UNREACHABLE,
            Self::Local(_) => exit::LOCAL,
        }
    }

    /// The hint line, if any.
    pub(crate) fn hint(&self) -> Option<&str> {
        match self {
            Self::Refused(r) => r.hint(),
            Self::Unreachable { hint, .. } => Some(hint),
            _ => None,
        }
    }

    /// The document printed on stdout in `--output json` mode.
    pub(crate) fn to_json(&self) -> Value {
        let (kind, extra) = match self {
            Self::Verification { json, .. } => return json.clone(),
            Self::Refused(r) => (
                "refused",
                json!({
                    "code": r.code_name(),
                    "reason": r.reason_name(),
                    "message": r.message(),
                }),
            ),
            Self::Unreachable { target, detail, .. } => (
                "unreachable",
                json!({ "target": target, "detail": detail, "message": self.to_string() }),
            ),
            Self::Local(m) => ("local", json!({ "message": m })),
            Self::Usage(m) => ("usage", json!({ "message": m })),
        };
        let mut error = json!({ "kind": kind, "exit_code": self.exit_code() });
        if let (Some(e), Value::Object(x)) = (error.as_object_mut(), extra) {
            e.extend(x);
            if let Some(h) = self.hint() {
                e.insert("hint".into(), Value::from(h));
            }
        }
        json!({ "ok": false, "error": error })
    }
}

impl Report for Error {
    fn exit_code(&self) -> u8 {
        Error::exit_code(self)
    }

    fn to_json(&self) -> Value {
        Error::to_json(self)
    }

    fn hint(&self) -> Option<&str> {
        Error::hint(self)
    }

    /// A verification result ("broken at entry 7: ...") is the answer, not a failure of kmsctl.
    fn is_verdict(&self) -> bool {
        matches!(self, Self::Verification { .. })
    }
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Usage(m) => Self::Usage(m),
            other => Self::Local(other.to_string()),
        }
    }
}

impl From<tonic::Status> for Error {
    /// A status from "the server"; [`crate::client::Server::failed`] names the URL instead.
    fn from(status: tonic::Status) -> Self {
        kms_client::Error::from_status(status, "the server").into()
    }
}

/// The channel's and the calls' errors in kmsctl's terms: the URL is --server's, a TLS file is a
/// local file, and a refusal gets kmsctl's hint.
impl From<kms_client::Error> for Error {
    fn from(e: kms_client::Error) -> Self {
        use kms_client::Error as C;
        match e {
            C::InvalidUrl { url, detail } => Self::usage(format!("--server {url:?} is not a URL: {detail}")),
            C::UnsupportedScheme { url } => Self::usage(format!("--server {url:?}: use an http:// or https:// URL")),
            C::Read { path, source, .. } => Self::file("read", &path, source),
            C::Unreachable { target, detail } => Self::unreachable(target, detail),
            C::Refused(r) => {
                let hint = r.reason().and_then(hint_for);
                Self::Refused(r.with_hint(hint))
            }
            e @ C::Tls(_) => Self::local(e),
            e => Self::usage(e),
        }
    }
}

#[cfg(test)]
use kms_proto::status::REASON_METADATA;

/// What to do about a refusal, by its stable reason. `sealed` gets a more precise hint from
/// the client, which can ask for the seal status.
fn hint_for(reason: Reason) -> Option<&'static str> {
    use Reason as R;
    Some(match reason {
        R::Sealed => "run `kmsctl unseal` as enough custodians (`kmsctl status` shows how many)",
        R::NotInitialized => "initialize the server with `kmsctl init`",
        R::AlreadyApproved => "each admin approves once: another admin must approve (`kmsctl proposal show ID` shows who has)",
        R::ProposalNotFound => "`kmsctl proposal list --all` shows the proposals",
        R::ProposalClosed | R::ProposalExpired => {
            "the proposal is no longer open (`kmsctl proposal show ID` shows its outcome); propose the operation again if it is still wanted"
        }
        R::QuorumRequired => {
            "the approval quorum is above 1: run the same command again with --propose; other admins then run `kmsctl proposal approve ID`"
        }
        R::ReplayedRequest => {
            "every run signs a fresh nonce, so run the command again; if this repeats, something between you and the server replays requests"
        }
        R::StaleRequest => "this machine's clock and the server's differ too much: synchronize them (NTP)",
        R::BadSignature => "--admin-key is not the key the server has on record for this admin id",
        R::UnknownAdmin => "the server has no admin with the id in --admin-key (`kmsctl admins list` shows them)",
        R::NotACustodian => "only custodians hold a root-key share; run this with a custodian's --admin-key",
        R::ShareAlreadySubmitted => "this custodian's share is in; the remaining custodians run `kmsctl unseal`",
        R::ShareUnreadable => "the server restarted since its status was read; run `kmsctl unseal` again",
        R::WrongShareSet | R::InvalidShare => {
            "compare the key check value (`kmsctl status`) with the one recorded at init, then all custodians start again"
        }
        R::CustodianNeedsReshare => "add the admin with --non-custodian",
        R::AdminExists => "`kmsctl admins list` shows the existing admins",
        R::CountryNotAllowed => "the server accepts admins only from its allowed jurisdictions",
        R::DevSealRefused => "the dev seal exists only when kmsd runs with --dev; use --seal shamir",
        R::AlreadyInitialized => "the server is initialized; `kmsctl status` shows its seal",
        R::AttestationRequired => {
            "this key releases plaintext only to attested workloads; use the envelope library inside an attested TEE (or `kmsctl data generate` without --with-plaintext)"
        }
        R::UnattestedKeysDisabled => {
            "this server refuses keys that release plaintext without attestation; use a policy that requires attestation"
        }
        R::NotPermitted => "the key's grants do not allow this principal this operation (`kmsctl key describe KEY` shows them)",
        R::NoClientCertificate | R::BadClientCertificate => {
            "the data plane identifies callers by their client certificate: pass --cert and --key"
        }
        R::KeyNotFound => "`kmsctl key list` shows the keys",
        R::KeyNameTaken => "choose another name, or `kmsctl key describe NAME` to see the existing key",
        R::KeyDisabled | R::KeyNotEnabled => "enable the key with `kmsctl key enable KEY` if that is intended",
        R::KeyPendingDeletion => "`kmsctl key cancel-deletion KEY` stops the deletion (the key becomes disabled)",
        R::DecryptFailed | R::InvalidContext => {
            "pass exactly the --context pairs given when the blob was made"
        }
        R::KeyMismatch => "the blob is under another key than --key",
        R::BadDeletionWindow => "--days must be between 7 and 30",
        R::DatabaseUnavailable | R::AuditUnavailable => {
            "the server cannot write to its database; nothing took effect: retry once it is back"
        }
        R::BadPageToken => "start the listing again without --page-token",
        R::InvalidPolicy => {
            "the message names the bad part of the document; docs/release-policy.md describes the language"
        }
        R::KeyDestroyed => "a destroyed key cannot change",
        R::HardwareOutsideJurisdiction => {
            "machines can be enrolled only in the server's allowed jurisdictions (attestation.allowed_countries; by default the EU member states)"
        }
        R::HardwareNotFound => "`kmsctl hardware list` shows the enrolled machines",
        R::InvalidHardwareId => "a hardware id is hw- followed by 32 hex digits (`kmsctl hardware list` shows them)",
        R::HardwareAlreadyRevoked => {
            "nothing to do: `kmsctl hardware describe HW_ID` shows when and by whom; to trust the machine again, enrol it anew"
        }
        R::HardwareAlreadyEnrolled => {
            "the message names the active entry (`kmsctl hardware describe HW_ID`); revoke it first to enrol the machine again"
        }
        R::VlekDisabled => "VLEK-signed machines need the server setting attestation.snp.accept_vlek = true",
        R::VlekNotAccepted => {
            "the report is signed by a cloud provider's VLEK, not the chip's VCEK: add --accept-vlek if you accept that key"
        }
        R::ChipIdMasked => "take the report from a guest launched without MASK_CHIP_ID in its policy",
        R::EvidenceMalformed => {
            "--snp-report must be the raw 1184-byte report, --vek the report's VCEK/VLEK (DER or PEM)"
        }
        R::EvidenceCertificateChain | R::EvidenceSigningKey | R::EvidenceSignature => {
            "--vek must be the certificate of the chip and TCB that signed the report (AMD KDS serves VCEKs by chip id and reported TCB)"
        }
        R::EvidenceCertificateValidity => {
            "the VCEK/VLEK or AMD's chain is not valid now (VLEKs expire after a year): fetch a current certificate"
        }
        R::EvidenceTcb => "the machine's firmware TCB is below the server's minimum (attestation.snp): update the host firmware",
        R::EvidenceGuestPolicy | R::EvidenceVmpl => {
            "the guest's policy or VMPL is refused by the server (debug guests never enrol): take the report from a production guest at VMPL 0"
        }
        R::TpmEnrollmentExpired | R::TpmEnrollmentUnknown => {
            "the machine must start its TPM enrolment again (the workload agent), and you enrol with the new request file promptly"
        }
        R::TpmEnrollmentUsed => {
            "this request file was used already: `kmsctl hardware list` shows whether the machine is enrolled"
        }
        R::TpmCredentialMismatch => {
            "the TPM that answered does not hold the EK of this enrolment, or the AK is not its: do not enrol the machine until you know why"
        }
        R::TpmIdentityMismatch => {
            "the enrolment attempt is for another EK or AK than the request file names: the file was altered or mixed up; have the machine run its enrolment again"
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: tonic::Code, reason: Option<&str>) -> Error {
        let mut s = tonic::Status::new(code, "msg");
        if let Some(r) = reason {
            s.metadata_mut().insert(REASON_METADATA, r.parse().unwrap());
        }
        Error::from(s)
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let sealed = refused(tonic::Code::Unavailable, Some("sealed"));
        assert_eq!(sealed.exit_code(), exit::REFUSED);
        assert!(sealed.hint().unwrap().contains("kmsctl unseal"));
        assert_eq!(refused(tonic::Code::Unavailable, None).exit_code(), exit::UNREACHABLE);
        let denied = refused(tonic::Code::PermissionDenied, Some("replayed_request"));
        assert_eq!(denied.exit_code(), exit::REFUSED);
        assert_eq!(
            denied.to_string(),
            "the server refused: PERMISSION_DENIED (replayed_request): msg"
        );
        let j = denied.to_json();
        assert_eq!(j["ok"], false);
        assert_eq!(j["error"]["reason"], "replayed_request");
        assert_eq!(j["error"]["exit_code"], 1);
    }

    /// kmsctl's own checks and every other failure have the documented error object: `kind`,
    /// `exit_code` and `message` at least.
    #[test]
    fn every_error_has_kind_exit_code_and_message() {
        let e = Error::check_failed("key_check_value_mismatch", "it differs", json!({ "expected": "00" }));
        assert_eq!(e.exit_code(), exit::REFUSED);
        assert_eq!(e.to_string(), "key_check_value_mismatch: it differs");
        let j = e.to_json();
        assert_eq!(j["ok"], false);
        assert_eq!(j["error"]["kind"], "key_check_value_mismatch");
        assert_eq!(j["error"]["exit_code"], 1);
        assert_eq!(j["error"]["message"], "it differs");
        assert_eq!(j["error"]["expected"], "00");
        for e in [
            refused(tonic::Code::FailedPrecondition, Some("quorum_required")),
            Error::unreachable("https://kms", "connection refused"),
            Error::local("gone"),
            Error::usage("bad"),
        ] {
            let j = e.to_json();
            assert_eq!(j["ok"], false, "{j}");
            assert!(j["error"]["kind"].is_string(), "{j}");
            assert_eq!(j["error"]["exit_code"], e.exit_code(), "{j}");
            assert!(j["error"]["message"].is_string(), "{j}");
        }
    }
}
