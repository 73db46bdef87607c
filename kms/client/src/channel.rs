//! The channel to one `kmsd`: the URL's scheme decides plaintext (`http://`, only a dev-mode
//! `kmsd` on loopback serves it) or TLS (`https://`: the server's CA, an optional client
//! certificate and key, the name to verify). Both clients build their channel here, so they check
//! the same things in the same order. It must never log, and holds the client key only in a
//! zeroizing buffer until the TLS stack has it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kms_proto::status::error_chain;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::Error;

/// How long connecting may take, by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one call may take, by default.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where `kmsd` is and how to reach it.
#[derive(Clone, Debug)]
pub struct ChannelConfig {
    /// The gRPC endpoint: `https://HOST:PORT` (TLS, needs [`ChannelConfig::tls`]) or
    /// `http://HOST:PORT` (plaintext; only a dev-mode kmsd on loopback serves it).
    pub endpoint: String,
    /// TLS material, for an `https://` endpoint.
    pub tls: Option<TlsFiles>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one call may take.
    pub call_timeout: Duration,
}

impl ChannelConfig {
    /// `endpoint` with default timeouts and no TLS material.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            tls: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// With TLS material.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The endpoint URL without a trailing `/`: what errors name.
    pub fn target(&self) -> &str {
        self.endpoint.trim_end_matches('/')
    }

    /// The checked endpoint, not connected yet: the URL parses, its scheme is `http` or
    /// `https`, TLS material is given exactly for `https`, and the TLS files are read. Nothing
    /// goes on the network.
    pub fn endpoint(&self) -> Result<Endpoint, Error> {
        let url = self.target().to_owned();
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| Error::InvalidUrl {
                url: url.clone(),
                detail: e.to_string(),
            })?
            .connect_timeout(self.connect_timeout)
            .timeout(self.call_timeout);
        match (endpoint.uri().scheme_str(), &self.tls) {
            (Some("https"), Some(tls)) => endpoint
                .tls_config(tls.config()?)
                .map_err(|e| Error::Tls(error_chain(&e))),
            (Some("https"), None) => Err(Error::MissingCa { url }),
            (Some("http"), None) => Ok(endpoint),
            (Some("http"), Some(_)) => Err(Error::TlsWithoutHttps { url }),
            _ => Err(Error::UnsupportedScheme { url }),
        }
    }

    /// Connects now, so an unreachable server or a failed TLS handshake is reported as such
    /// ([`Error::Unreachable`]) before anything else is done.
    pub async fn connect(&self) -> Result<Channel, Error> {
        connect(self.endpoint()?, self.target()).await
    }
}

/// Connects to a checked endpoint (see [`ChannelConfig::endpoint`]); `target` names it in the
/// error.
pub async fn connect(endpoint: Endpoint, target: &str) -> Result<Channel, Error> {
    endpoint.connect().await.map_err(|e| Error::Unreachable {
        target: target.to_owned(),
        detail: error_chain(&e),
    })
}

/// TLS material in PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA that issued the server's certificate.
    pub ca: PathBuf,
    /// The client certificate (mutual TLS). The server derives the caller's principal from it.
    pub client_cert: Option<PathBuf>,
    /// The private key of the client certificate.
    pub client_key: Option<PathBuf>,
    /// The name to verify the server's certificate against, when it differs from the URL's host.
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// Only a CA: the server is authenticated, the client is not.
    pub fn ca(ca: impl Into<PathBuf>) -> Self {
        Self {
            ca: ca.into(),
            client_cert: None,
            client_key: None,
            server_name: None,
        }
    }

    /// With a client certificate and its key.
    pub fn with_identity(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }

    /// With the name to verify the server's certificate against.
    pub fn with_server_name(mut self, name: Option<String>) -> Self {
        self.server_name = name;
        self
    }

    fn config(&self) -> Result<ClientTlsConfig, Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca, "the CA certificate")?));
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let key = Zeroizing::new(read(key, "the client key")?);
                tls = tls.identity(Identity::from_pem(
                    read(cert, "the client certificate")?,
                    key.as_slice(),
                ));
            }
            (None, None) => {}
            _ => return Err(Error::HalfIdentity),
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Whether `url` names this machine (`localhost`, a loopback address). A URL that does not parse
/// is not loopback.
pub fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::transport::Uri>() else {
        return false;
    };
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// Whether `url` is plaintext HTTP to another machine, where anyone on the path can read and
/// change what is sent.
pub fn is_plaintext_to_remote(url: &str) -> bool {
    url.parse::<tonic::transport::Uri>()
        .is_ok_and(|uri| uri.scheme_str() == Some("http"))
        && !is_loopback(url)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn settings_are_checked_before_the_network() {
        let e = ChannelConfig::new("https://127.0.0.1:1").endpoint().unwrap_err();
        assert!(
            matches!(&e, Error::MissingCa { url } if url == "https://127.0.0.1:1"),
            "{e}"
        );
        assert!(e.to_string().contains("--ca"), "{e}");
        let e = ChannelConfig::new("http://127.0.0.1:1/")
            .with_tls(TlsFiles::ca("/nonexistent"))
            .endpoint()
            .unwrap_err();
        assert!(matches!(&e, Error::TlsWithoutHttps { .. }), "{e}");
        let e = ChannelConfig::new("ftp://x").endpoint().unwrap_err();
        assert!(matches!(&e, Error::UnsupportedScheme { .. }), "{e}");
        let e = ChannelConfig::new("%%%").endpoint().unwrap_err();
        assert!(matches!(&e, Error::InvalidUrl { url, .. } if url == "%%%"), "{e}");
        let e = ChannelConfig::new("https://127.0.0.1:1")
            .with_tls(TlsFiles::ca("/nonexistent/ca.pem"))
            .endpoint()
            .unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Read {
                    what: "the CA certificate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let mut half = TlsFiles::ca("/nonexistent/ca.pem");
        half.client_cert = Some("c.pem".into());
        let e = ChannelConfig::new("https://127.0.0.1:1")
            .with_tls(half)
            .endpoint()
            .unwrap_err();
        // The CA is read first.
        assert!(matches!(&e, Error::Read { .. }), "{e}");
        assert!(ChannelConfig::new("http://127.0.0.1:1").endpoint().is_ok());
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = ChannelConfig::new(format!("http://127.0.0.1:{port}/"))
            .connect()
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Unreachable { target, .. } if *target == format!("http://127.0.0.1:{port}")),
            "{e:?}"
        );
    }

    #[test]
    fn plaintext_is_remote_unless_loopback() {
        assert!(is_plaintext_to_remote("http://kms.example:7300"));
        assert!(is_plaintext_to_remote("http://10.0.0.1:7300"));
        assert!(!is_plaintext_to_remote("http://127.0.0.1:7300"));
        assert!(!is_plaintext_to_remote("http://localhost:7300"));
        assert!(!is_plaintext_to_remote("http://[::1]:7300"));
        assert!(!is_plaintext_to_remote("https://kms.example:7300"));
        assert!(!is_plaintext_to_remote("not a url"));
        assert!(is_loopback("http://[::1]:7300"));
        assert!(!is_loopback("not a url"));
    }
}
