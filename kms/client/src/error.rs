//! The one error of this crate: the channel could not be set up, nothing usable answered, or
//! `kmsd` refused. A refusal is read from the status once, here: its stable reason becomes a
//! [`Reason`] that callers match on, never a string they compare. Messages must never carry key
//! material, a token or a file's contents.

use std::fmt;
use std::path::PathBuf;

use kms_proto::status::{code_name, detail as status_detail};
use kms_proto::Reason;

/// Why a connection or a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint is not a URL.
    #[error("endpoint {url:?} is not a URL: {detail}")]
    InvalidUrl {
        /// The endpoint as given.
        url: String,
        /// What the URL parser said.
        detail: String,
    },
    /// The endpoint is neither `http://` nor `https://`.
    #[error("endpoint {url:?}: use an http:// or https:// URL")]
    UnsupportedScheme {
        /// The endpoint as given.
        url: String,
    },
    /// An `https://` endpoint without the CA that issued the server's certificate.
    #[error("endpoint {url}: https needs the CA certificate that issued the server's certificate (--ca)")]
    MissingCa {
        /// The endpoint.
        url: String,
    },
    /// TLS files for a plaintext `http://` endpoint.
    #[error("endpoint {url} is plaintext http: TLS files are not used with it; use an https:// URL")]
    TlsWithoutHttps {
        /// The endpoint.
        url: String,
    },
    /// A client certificate without its key, or a key without its certificate.
    #[error("a client certificate needs its key and a key its certificate: give both or neither")]
    HalfIdentity,
    /// A TLS file cannot be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Which file: `the CA certificate`, `the client certificate`, `the client key`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS stack refused the material (a certificate or key that does not parse).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Nothing (or nothing usable) answered: connection refused or reset, TLS handshake,
    /// timeout.
    #[error("cannot reach {target}: {detail}")]
    Unreachable {
        /// The endpoint.
        target: String,
        /// What the transport said.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("{0}")]
    Refused(Refusal),
}

impl Error {
    /// The error for a failed gRPC call to `target` (an endpoint, for messages): a
    /// [`Refusal`], or, for a status without a reason that carries a transport error or says
    /// "unavailable" (made by the client's own transport, not by kmsd), [`Error::Unreachable`].
    pub fn from_status(status: tonic::Status, target: &str) -> Self {
        let transport = std::error::Error::source(&status).is_some()
            || matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            );
        if kms_proto::status::reason(&status).is_none() && transport {
            return Self::Unreachable {
                target: target.to_owned(),
                detail: status_detail(&status),
            };
        }
        Self::Refused(Refusal::from_status(&status))
    }

    /// The server's refusal, when it refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// The server's stable reason, when it refused with one this client knows.
    pub fn reason(&self) -> Option<Reason> {
        self.refusal().and_then(Refusal::reason)
    }
}

/// What the server said when it refused a call: its status code, its message, its stable reason
/// (the `kms-reason` metadata) and, set by the client that shows it, what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    code: tonic::Code,
    message: String,
    /// The reason as sent, also one this client does not know (a newer server).
    reason_name: Option<String>,
    reason: Option<Reason>,
    hint: Option<String>,
}

impl Refusal {
    /// The refusal a status says: its code, message and reason.
    pub fn from_status(status: &tonic::Status) -> Self {
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            reason_name: kms_proto::status::reason(status).map(str::to_owned),
            reason: Reason::of(status),
            hint: None,
        }
    }

    /// A refusal the client reports itself, for a server state that rules a command out (as the
    /// server would have refused it).
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason_name: None,
            reason: None,
            hint: None,
        }
    }

    /// With the reason named `name`: a [`Reason`] if it is one, kept as a name either way.
    pub fn with_reason_name(mut self, name: &str) -> Self {
        self.reason = Reason::from_name(name);
        self.reason_name = Some(name.to_owned());
        self
    }

    /// With what the operator can do about it.
    pub fn with_hint(mut self, hint: Option<impl Into<String>>) -> Self {
        self.hint = hint.map(Into::into);
        self
    }

    /// Replaces the hint.
    pub fn set_hint(&mut self, hint: impl Into<String>) {
        self.hint = Some(hint.into());
    }

    /// The gRPC status code.
    pub fn code(&self) -> tonic::Code {
        self.code
    }

    /// The canonical gRPC name of the status code, e.g. `PERMISSION_DENIED`.
    pub fn code_name(&self) -> &'static str {
        code_name(self.code)
    }

    /// The server's message (for humans; may change).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The stable reason, if the server sent one this client knows.
    pub fn reason(&self) -> Option<Reason> {
        self.reason
    }

    /// The reason as sent (`snake_case`), also one this client does not know.
    pub fn reason_name(&self) -> Option<&str> {
        self.reason_name.as_deref()
    }

    /// What to do about it, if the client that shows it knows.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

/// `the server refused: CODE (reason): message`; the hint is the caller's to show.
impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server refused: {}", self.code_name())?;
        if let Some(r) = &self.reason_name {
            write!(f, " ({r})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kms_proto::status::REASON_METADATA;

    use super::*;

    fn status(code: tonic::Code, reason: Option<&str>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "msg");
        if let Some(r) = reason {
            s.metadata_mut().insert(REASON_METADATA, r.parse().unwrap());
        }
        s
    }

    #[test]
    fn refusals_carry_their_reason_as_a_variant() {
        for (code, name, reason) in [
            (tonic::Code::Unavailable, "sealed", Reason::Sealed),
            (
                tonic::Code::FailedPrecondition,
                "quorum_required",
                Reason::QuorumRequired,
            ),
            (tonic::Code::PermissionDenied, "token_expired", Reason::TokenExpired),
            (
                tonic::Code::PermissionDenied,
                "hardware_not_enrolled",
                Reason::HardwareNotEnrolled,
            ),
        ] {
            let e = Error::from_status(status(code, Some(name)), "https://kms");
            assert_eq!(e.reason(), Some(reason), "{e}");
            let r = e.refusal().unwrap();
            assert_eq!(r.reason_name(), Some(name));
            assert_eq!(r.code(), code);
            assert_eq!(r.message(), "msg");
            assert_eq!(r.hint(), None);
            assert_eq!(
                e.to_string(),
                format!("the server refused: {} ({name}): msg", code_name(code))
            );
        }
    }

    #[test]
    fn an_unknown_reason_is_kept_by_name() {
        let e = Error::from_status(status(tonic::Code::Unavailable, Some("from_a_newer_server")), "x");
        let r = e.refusal().unwrap();
        assert_eq!(r.reason(), None);
        assert_eq!(r.reason_name(), Some("from_a_newer_server"));
        assert!(e.to_string().contains("(from_a_newer_server)"), "{e}");
    }

    #[test]
    fn statuses_without_a_reason() {
        // Made by the transport: unreachable, naming the target.
        for code in [
            tonic::Code::Unavailable,
            tonic::Code::DeadlineExceeded,
            tonic::Code::Cancelled,
        ] {
            let e = Error::from_status(status(code, None), "https://kms:7300");
            assert!(
                matches!(&e, Error::Unreachable { target, detail } if target == "https://kms:7300" && detail == "msg"),
                "{e:?}"
            );
            assert!(e.reason().is_none());
        }
        // Anything else without a reason is still the server's answer (e.g. a proxy's 404).
        let e = Error::from_status(status(tonic::Code::Unimplemented, None), "x");
        let r = e.refusal().unwrap();
        assert_eq!((r.reason(), r.reason_name()), (None, None));
        assert_eq!(e.to_string(), "the server refused: UNIMPLEMENTED: msg");
        let empty = Error::from_status(tonic::Status::new(tonic::Code::Internal, ""), "x");
        assert_eq!(empty.to_string(), "the server refused: INTERNAL");
    }

    #[test]
    fn client_made_refusals() {
        let r = Refusal::new(tonic::Code::FailedPrecondition, "not yet")
            .with_reason_name("not_initialized")
            .with_hint(Some("init first"));
        assert_eq!(r.reason(), Some(Reason::NotInitialized));
        assert_eq!(r.hint(), Some("init first"));
        let mut other = Refusal::new(tonic::Code::FailedPrecondition, "x").with_reason_name("bad_share");
        assert_eq!((other.reason(), other.reason_name()), (None, Some("bad_share")));
        other.set_hint("h");
        assert_eq!(other.hint(), Some("h"));
    }
}
