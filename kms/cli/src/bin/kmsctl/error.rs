//! The one error type of `kmsctl` and its exit codes. Every failure ends here, so the exit code
//! tells a script *whose* problem it was: the server's answer, the network, or a local file.
//! Messages must never carry key material, a share or the admin's private key.

use std::fmt;

use serde_json::{json, Value};

/// Exit codes, as documented in `kmsctl --help`.
pub(crate) mod exit {
    /// The server refused, or a verification failed.
    pub(crate) const REFUSED: u8 = 1;
    /// Bad usage (clap's own code for its errors).
    pub(crate) const USAGE: u8 = 2;
    /// The server (or the audit database) cannot be reached.
    pub(crate) const UNREACHABLE: u8 = 3;
    /// A local file or key cannot be read, written or used.
    pub(crate) const LOCAL: u8 = 4;
}

/// What the server said when it refused a call.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) code: tonic::Code,
    pub(crate) message: String,
    /// The stable `kms-reason` code, when the server sent one.
    pub(crate) reason: Option<String>,
    /// What the operator can do about it, where that is obvious.
    pub(crate) hint: Option<String>,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The server answered with an error status.
    #[error("{0}")]
    Refused(Refusal),
    /// A check made by `kmsctl` itself failed (audit chain, key check value).
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
        Self::Refused(Refusal {
            code: tonic::Code::FailedPrecondition,
            message: message.to_string(),
            reason: Some(reason.to_owned()),
            hint: hint_for(reason).map(str::to_owned),
        })
    }

    /// A file operation failed; names the file.
    pub(crate) fn file(action: &str, path: &std::path::Path, e: impl fmt::Display) -> Self {
        Self::Local(format!("cannot {action} {}: {e}", path.display()))
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
            Self::Refused(r) => r.hint.as_deref(),
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
                    "code": code_name(r.code),
                    "reason": r.reason,
                    "message": r.message,
                }),
            ),
            Self::Unreachable { target, detail, .. } => ("unreachable", json!({ "target": target, "detail": detail })),
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

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server refused: {}", code_name(self.code))?;
        if let Some(r) = &self.reason {
            write!(f, " ({r})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let reason = status
            .metadata()
            .get(REASON_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // A status without a reason code that carries a local error, or says "unavailable", was
        // made by the client's own transport (connection refused or reset, TLS alert, timeout),
        // not by kmsd: the server is not reachable as configured.
        if reason.is_none()
            && (std::error::Error::source(&status).is_some()
                || matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ))
        {
            return Self::unreachable("the server", status_detail(&status));
        }
        let hint = reason.as_deref().and_then(hint_for).map(str::to_owned);
        Self::Refused(Refusal {
            code: status.code(),
            message: status.message().to_owned(),
            reason,
            hint,
        })
    }
}

pub(crate) use kms_proto::status::REASON_METADATA;

use kms_proto::status::detail as status_detail;

/// What to do about a refusal, by its stable reason code. `sealed` gets a more precise hint from
/// the client, which can ask for the seal status.
fn hint_for(reason: &str) -> Option<&'static str> {
    Some(match reason {
        "sealed" => "run `kmsctl unseal` as enough custodians (`kmsctl status` shows how many)",
        "not_initialized" => "initialize the server with `kmsctl init`",
        "already_approved" => "each admin approves once: another admin must approve (`kmsctl proposal show ID` shows who has)",
        "proposal_not_found" => "`kmsctl proposal list --all` shows the proposals",
        "proposal_closed" | "proposal_expired" => {
            "the proposal is no longer open (`kmsctl proposal show ID` shows its outcome); propose the operation again if it is still wanted"
        }
        "quorum_required" => {
            "the approval quorum is above 1: run the same command again with --propose; other admins then run `kmsctl proposal approve ID`"
        }
        "replayed_request" => {
            "every run signs a fresh nonce, so run the command again; if this repeats, something between you and the server replays requests"
        }
        "stale_request" => "this machine's clock and the server's differ too much: synchronize them (NTP)",
        "bad_signature" => "--admin-key is not the key the server has on record for this admin id",
        "unknown_admin" => "the server has no admin with the id in --admin-key (`kmsctl admins list` shows them)",
        "not_a_custodian" => "only custodians hold a root-key share; run this with a custodian's --admin-key",
        "share_already_submitted" => "this custodian's share is in; the remaining custodians run `kmsctl unseal`",
        "share_unreadable" => "the server restarted since its status was read; run `kmsctl unseal` again",
        "wrong_share_set" | "invalid_share" => {
            "compare the key check value (`kmsctl status`) with the one recorded at init, then all custodians start again"
        }
        "custodian_needs_reshare" => "add the admin with --non-custodian",
        "admin_exists" => "`kmsctl admins list` shows the existing admins",
        "country_not_allowed" => "the server accepts admins only from its allowed jurisdictions",
        "dev_seal_refused" => "the dev seal exists only when kmsd runs with --dev; use --seal shamir",
        "already_initialized" => "the server is initialized; `kmsctl status` shows its seal",
        "attestation_required" => {
            "this key releases plaintext only to attested workloads; use the envelope library inside an attested TEE (or `kmsctl data generate` without --with-plaintext)"
        }
        "unattested_keys_disabled" => {
            "this server refuses keys that release plaintext without attestation; use a policy that requires attestation"
        }
        "not_permitted" => "the key's grants do not allow this principal this operation (`kmsctl key describe KEY` shows them)",
        "no_client_certificate" | "bad_client_certificate" => {
            "the data plane identifies callers by their client certificate: pass --cert and --key"
        }
        "key_not_found" => "`kmsctl key list` shows the keys",
        "key_name_taken" => "choose another name, or `kmsctl key describe NAME` to see the existing key",
        "key_disabled" | "key_not_enabled" => "enable the key with `kmsctl key enable KEY` if that is intended",
        "key_pending_deletion" => "`kmsctl key cancel-deletion KEY` stops the deletion (the key becomes disabled)",
        "decrypt_failed" | "wrong_context" | "invalid_context" => {
            "pass exactly the --context pairs given when the blob was made"
        }
        "key_mismatch" => "the blob is under another key than --key",
        "bad_deletion_window" => "--days must be between 7 and 30",
        "database_unavailable" | "audit_unavailable" => {
            "the server cannot write to its database; nothing took effect: retry once it is back"
        }
        "bad_page_token" => "start the listing again without --page-token",
        "invalid_policy" => {
            "the message names the bad part of the document; docs/release-policy.md describes the language"
        }
        "key_destroyed" => "a destroyed key cannot change",
        "hardware_outside_jurisdiction" => {
            "machines can be enrolled only in the server's allowed jurisdictions (attestation.allowed_countries; by default the EU member states)"
        }
        "hardware_not_found" => "`kmsctl hardware list` shows the enrolled machines",
        "invalid_hardware_id" => "a hardware id is hw- followed by 32 hex digits (`kmsctl hardware list` shows them)",
        "hardware_already_revoked" => {
            "nothing to do: `kmsctl hardware describe HW_ID` shows when and by whom; to trust the machine again, enrol it anew"
        }
        "hardware_already_enrolled" => {
            "the message names the active entry (`kmsctl hardware describe HW_ID`); revoke it first to enrol the machine again"
        }
        "vlek_disabled" => "VLEK-signed machines need the server setting attestation.snp.accept_vlek = true",
        "vlek_not_accepted" => {
            "the report is signed by a cloud provider's VLEK, not the chip's VCEK: add --accept-vlek if you accept that key"
        }
        "chip_id_masked" => "take the report from a guest launched without MASK_CHIP_ID in its policy",
        "evidence_malformed" => {
            "--snp-report must be the raw 1184-byte report, --vek the report's VCEK/VLEK (DER or PEM)"
        }
        "evidence_certificate_chain" | "evidence_signing_key" | "evidence_signature" => {
            "--vek must be the certificate of the chip and TCB that signed the report (AMD KDS serves VCEKs by chip id and reported TCB)"
        }
        "evidence_certificate_validity" => {
            "the VCEK/VLEK or AMD's chain is not valid now (VLEKs expire after a year): fetch a current certificate"
        }
        "evidence_tcb" => "the machine's firmware TCB is below the server's minimum (attestation.snp): update the host firmware",
        "evidence_guest_policy" | "evidence_vmpl" => {
            "the guest's policy or VMPL is refused by the server (debug guests never enrol): take the report from a production guest at VMPL 0"
        }
        "tpm_enrollment_expired" | "tpm_enrollment_unknown" => {
            "the machine must start its TPM enrolment again (the workload agent), and you enrol with the new request file promptly"
        }
        "tpm_enrollment_used" => {
            "this request file was used already: `kmsctl hardware list` shows whether the machine is enrolled"
        }
        "tpm_credential_mismatch" => {
            "the TPM that answered does not hold the EK of this enrolment, or the AK is not its: do not enrol the machine until you know why"
        }
        "tpm_identity_mismatch" => {
            "the enrolment attempt is for another EK or AK than the request file names: the file was altered or mixed up; have the machine run its enrolment again"
        }
        _ => return None,
    })
}

pub(crate) use kms_proto::status::code_name;

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
}
