//! The error of the `kms-agent` binary and its exit codes. Every failure ends here, so the exit
//! code tells a script *whose* problem it was: the server's answer, the network, the command
//! line or this machine. Messages must never carry key material, tokens or activated secrets.

use std::fmt;
use std::path::Path;

use kms_client::cli::{exit, Failure, Report};
use serde_json::{json, Value};

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// From the library: the server, the transport, the evidence.
    #[error("{0}")]
    Agent(#[from] kms_agent::Error),
    /// Arguments that clap accepted but that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// A local file is missing, unreadable, malformed or in the way.
    #[error("{0}")]
    Local(String),
}

/// Envelope errors: a keyring's own error is kept (kmsd's refusal and its exit code); a message
/// that is malformed or does not verify is a local problem with the input file.
impl From<kms_envelope::Error> for Error {
    fn from(e: kms_envelope::Error) -> Self {
        use kms_envelope::Error as E;
        match e {
            E::Keyring { source, keyring } => match source.downcast::<kms_agent::Error>() {
                Ok(agent) => Self::Agent(*agent),
                Err(other) => Self::Local(format!("keyring {keyring}: {other}")),
            },
            E::NoDataKey(mut attempts) if attempts.len() == 1 => Self::from(attempts.remove(0)),
            E::Io(io) => Self::Local(format!("i/o: {io}")),
            other => Self::Local(format!("the message: {other}")),
        }
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

impl From<kms_agent::EvidenceError> for Error {
    fn from(e: kms_agent::EvidenceError) -> Self {
        Self::Agent(e.into())
    }
}

impl Error {
    pub(crate) fn usage(what: impl fmt::Display) -> Self {
        Self::Usage(what.to_string())
    }

    pub(crate) fn local(what: impl fmt::Display) -> Self {
        Self::Local(what.to_string())
    }

    /// A file operation failed; names the file.
    pub(crate) fn file(action: &str, path: &Path, e: impl fmt::Display) -> Self {
        Failure::file(action, path, e).into()
    }
}

impl Report for Error {
    fn exit_code(&self) -> u8 {
        use kms_agent::Error as A;
        match self {
            Self::Agent(A::Refused(_) | A::BadResponse(_)) => exit::REFUSED,
            Self::Agent(A::Config(_)) | Self::Usage(_) => exit::USAGE,
            Self::Agent(A::Unreachable { .. }) => exit::UNREACHABLE,
            Self::Agent(_) | Self::Local(_) => exit::LOCAL,
        }
    }

    fn to_json(&self) -> Value {
        use kms_agent::Error as A;
        let mut error = match self {
            Self::Agent(A::Refused(r)) => json!({
                "kind": "refused",
                "code": r.code_name(),
                "reason": r.reason_name(),
                "message": r.message(),
                "hint": r.hint(),
            }),
            Self::Agent(A::BadResponse(m)) => json!({ "kind": "bad_response", "message": m }),
            Self::Agent(A::Unreachable { target, detail }) => {
                json!({ "kind": "unreachable", "target": target, "detail": detail })
            }
            Self::Agent(A::Evidence(_)) => json!({ "kind": "evidence" }),
            Self::Agent(A::Tpm(_)) => json!({ "kind": "tpm" }),
            Self::Agent(A::Config(_)) | Self::Usage(_) => json!({ "kind": "usage" }),
            Self::Agent(_) | Self::Local(_) => json!({ "kind": "local" }),
        };
        error["message"] = match self {
            Self::Agent(A::Refused(r)) => json!(r.message()),
            other => json!(other.to_string()),
        };
        error["exit_code"] = json!(self.exit_code());
        json!({ "ok": false, "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_say_whose_problem_it_is() {
        let mut s = tonic::Status::permission_denied("no");
        s.metadata_mut()
            .insert(kms_agent::REASON_METADATA, "hardware_not_enrolled".parse().unwrap());
        // Through the library's public mapping: a refusal with a reason code.
        let refused = Error::Agent(kms_agent::Error::from_grpc_status(s, "https://kms"));
        assert_eq!(refused.exit_code(), exit::REFUSED);
        let j = refused.to_json();
        assert_eq!(j["ok"], false);
        assert_eq!(j["error"]["reason"], "hardware_not_enrolled");
        assert_eq!(j["error"]["code"], "PERMISSION_DENIED");
        assert_eq!(j["error"]["exit_code"], 1);
        assert!(j["error"]["hint"].as_str().unwrap().contains("enrol"));

        let bad = Error::Agent(kms_agent::Error::BadResponse("plaintext".into()));
        assert_eq!(bad.exit_code(), exit::REFUSED);
        let unreachable = Error::Agent(kms_agent::Error::Unreachable {
            target: "https://kms".into(),
            detail: "refused".into(),
        });
        assert_eq!(unreachable.exit_code(), exit::UNREACHABLE);
        assert_eq!(
            Error::Agent(kms_agent::Error::Config("x".into())).exit_code(),
            exit::USAGE
        );
        assert_eq!(Error::usage("x").exit_code(), exit::USAGE);
        assert_eq!(Error::local("x").exit_code(), exit::LOCAL);
        let evidence = Error::from(kms_agent::EvidenceError::other("no tpm2_quote"));
        assert_eq!(evidence.exit_code(), exit::LOCAL);
        assert_eq!(evidence.to_json()["error"]["kind"], "evidence");
    }
}
