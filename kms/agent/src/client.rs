//! The connection to kmsd: an endpoint URL, TLS with the server's CA and the workload's client
//! certificate (the data plane and the attestation service identify callers by it; the channel
//! is built by kms-client), the node trust, and the calls the agent makes. It must never log
//! requests or answers: they carry tokens and sealed keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kms_client::nodes::{VerifiedNodes, IDENTITY_ATTEMPTS};
use kms_client::{ChannelConfig, Reason, TlsFiles};
use kms_node::{NodeVerifier, VerifiedNode};
use kms_proto::v1 as pb;
use kms_proto::v1::attestation_service_client::AttestationServiceClient;
use kms_proto::v1::key_service_client::KeyServiceClient;
use tonic::transport::Channel;

use crate::error::Error;

/// Where kmsd is and how to reach it.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The gRPC endpoint: `https://HOST:PORT` (TLS, needs [`ClientConfig::tls`]) or
    /// `http://HOST:PORT` (plaintext; only a dev-mode kmsd on loopback serves it).
    pub endpoint: String,
    /// TLS material, for an `https://` endpoint.
    pub tls: Option<TlsFiles>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long one call may take.
    pub call_timeout: Duration,
    /// Which kmsd nodes are trusted to answer ([`NodeTrust`]); required.
    pub node_trust: Option<NodeTrust>,
}

/// How the agent decides that an answer comes from a genuine kmsd: a node policy (the Attest
/// answer and every release must be signed by a node whose evidence meets it), or knowingly any
/// node (`--danger-unattested-kmsd`). Shared with kmsctl.
pub use kms_client::NodeTrust;

impl ClientConfig {
    /// `endpoint` with default timeouts, no TLS material and no node trust yet.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ChannelConfig::new(endpoint).into()
    }

    /// The channel part of the settings.
    fn channel(&self) -> ChannelConfig {
        ChannelConfig {
            endpoint: self.endpoint.clone(),
            tls: self.tls.clone(),
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
        }
    }

    /// Trusting the nodes `trust` says.
    pub fn with_node_trust(mut self, trust: NodeTrust) -> Self {
        self.node_trust = Some(trust);
        self
    }

    /// With TLS material.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }
}

/// A channel's settings, with no node trust yet.
impl From<ChannelConfig> for ClientConfig {
    fn from(c: ChannelConfig) -> Self {
        Self {
            endpoint: c.endpoint,
            tls: c.tls,
            connect_timeout: c.connect_timeout,
            call_timeout: c.call_timeout,
            node_trust: None,
        }
    }
}

/// A connection to one kmsd. Cheap to clone (the channel and the verified nodes are shared).
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    target: String,
    nodes: Arc<Nodes>,
}

/// The nodes verified so far under the node trust.
#[derive(Debug)]
struct Nodes {
    verified: VerifiedNodes,
    /// Unique in this process for a connection and its clones (which share its TLS identity).
    instance: u64,
}

fn node_verifier(trust: &NodeTrust) -> Result<NodeVerifier, Error> {
    trust.verifier().map_err(|e| Error::Config(e.to_string()))
}

impl Client {
    /// Connects now, so an unreachable server or a failed TLS handshake is reported as such
    /// before any evidence is produced.
    pub async fn connect(config: &ClientConfig) -> Result<Self, Error> {
        let channel = config.channel();
        let endpoint = channel.endpoint()?;
        let trust = config.node_trust.as_ref().ok_or_else(|| {
            Error::Config(
                "say how kmsd is verified: a node policy (--node-policy FILE), or --danger-unattested-kmsd for a dev-mode kmsd".into(),
            )
        })?;
        let verifier = node_verifier(trust)?;
        let target = channel.target().to_owned();
        let channel = kms_client::channel::connect(endpoint, &target).await?;
        Ok(Self::with_verifier(channel, target, verifier))
    }

    /// A client over a channel made elsewhere; `target` names it in errors.
    pub fn from_channel(channel: Channel, target: impl Into<String>, trust: NodeTrust) -> Result<Self, Error> {
        Ok(Self::with_verifier(channel, target.into(), node_verifier(&trust)?))
    }

    fn with_verifier(channel: Channel, target: String, verifier: NodeVerifier) -> Self {
        Self {
            channel,
            target,
            nodes: Arc::new(Nodes {
                verified: VerifiedNodes::new(verifier),
                instance: {
                    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                },
            }),
        }
    }

    /// Asks the answering node for its identity (GetNodeIdentity, over a fresh nonce) and
    /// verifies it against the node trust; remembered for later answers.
    pub async fn verify_node(&self) -> Result<VerifiedNode, Error> {
        let nonce =
            kms_core::random_array::<32>().map_err(|e| Error::Input(format!("random number generator: {e}")))?;
        let identity = self
            .attestation()
            .get_node_identity(pb::GetNodeIdentityRequest { nonce: nonce.to_vec() })
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        let (node, _status) = self.nodes.verified.verify(&identity, &nonce)?;
        Ok(node)
    }

    /// The verified node with this public key: known already, or verified now (its identity
    /// asked for until that node answers).
    pub(crate) async fn node(&self, public_key: &[u8]) -> Result<VerifiedNode, Error> {
        self.nodes
            .verified
            .signer(public_key, || self.verify_node(), Error::from)
            .await
    }

    /// Tells connections apart in this process (clones share it): what a data-key cache keys
    /// kmsd releases by, as connections may present different client identities.
    pub(crate) fn instance(&self) -> u64 {
        self.nodes.instance
    }

    /// The endpoint, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    pub(crate) fn attestation(&self) -> AttestationServiceClient<Channel> {
        AttestationServiceClient::new(self.channel.clone())
    }

    pub(crate) fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel.clone())
    }

    /// A `KeyService` call (`method` as audit records name it, at gRPC `path`) whose answer the
    /// answering node signs over this request and a fresh nonce (`kms_proto::answer`): checked
    /// over the bytes received, under a node verified against the node trust, before they are
    /// decoded. For the answers no HPKE seal protects (Encrypt, plaintext releases): a proxy can
    /// then neither swap in another genuine answer nor change the request it forwards.
    pub(crate) async fn signed_key_call<Q: prost::Message, A: prost::Message + Default>(
        &self,
        method: &'static str,
        path: &'static str,
        request: &Q,
    ) -> Result<A, Error> {
        let nonce =
            kms_core::random_array::<32>().map_err(|e| Error::Input(format!("random number generator: {e}")))?;
        // An Encrypt request holds the data key it wraps: wiped once checked against.
        let sent = zeroize::Zeroizing::new(request.encode_to_vec());
        let answer = kms_client::signed::call(&self.channel, path, sent.to_vec(), Some(&nonce))
            .await
            .map_err(|s| self.failed(s))?;
        let node = self.node(answer.node_key()?).await?;
        let bytes = answer.check(&node, |a| kms_node::message::data_answer(method, &sent, &nonce, a))?;
        A::decode(bytes).map_err(|e| Error::bad_response(format!("{method}: {e}")))
    }

    /// Encrypt with `plaintext` sealed to the node this connection reached last (verified: its
    /// evidence binds the HPKE key; verified now if none was yet) and the answer signed by it over
    /// this request: a TLS-terminating relay sees only HPKE ciphertext, and can swap in no other
    /// blob. After a reconnection another replica (or a restarted kmsd) may take the call and
    /// refuse it (`sealed_for_other_node`): the identity is asked for again and the plaintext
    /// sealed to the node that answers.
    pub(crate) async fn encrypt_sealed(
        &self,
        key: &str,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> Result<pb::EncryptResponse, Error> {
        let bound = kms_client::sealed::context(context).map_err(Error::Refused)?;
        let mut node = match self.nodes.verified.last() {
            Some(node) => node,
            None => self.verify_node().await?,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sealed = kms_client::sealed::encrypt_input(&node, key, &bound, plaintext)
                .map_err(|e| Error::Input(format!("sealing the plaintext to {}: {e}", node.id)))?;
            let request = pb::EncryptRequest {
                key: key.to_owned(),
                plaintext: Vec::new(),
                encryption_context: context.clone().into_iter().collect(),
                sealed_plaintext: Some(sealed),
            };
            match self
                .signed_key_call("encrypt", "/kms.v1.KeyService/Encrypt", &request)
                .await
            {
                Err(Error::Refused(r))
                    if r.reason() == Some(Reason::SealedForOtherNode) && attempt < IDENTITY_ATTEMPTS =>
                {
                    node = self.verify_node().await?;
                }
                answer => return answer,
            }
        }
    }

    pub(crate) fn failed(&self, status: tonic::Status) -> Error {
        Error::from_grpc_status(status, &self.target)
    }

    /// A fresh challenge (GetChallenge).
    pub async fn challenge(&self) -> Result<Challenge, Error> {
        let c = self
            .attestation()
            .get_challenge(pb::GetChallengeRequest {})
            .await
            .map_err(|s| self.failed(s))?
            .into_inner();
        if c.nonce.len() != 32 {
            return Err(Error::bad_response(format!(
                "the challenge nonce is {} bytes, not 32",
                c.nonce.len()
            )));
        }
        Ok(Challenge {
            nonce: c.nonce,
            expires_unix_ms: c.expires_unix_ms,
        })
    }

    /// Machine side of TPM enrolment, first step (BeginTpmEnrollment): the EK certificate (DER),
    /// intermediates (DER) and the AK's TPM2B_PUBLIC. [`Client::enroll_tpm`] does the whole
    /// machine side; this is for TPM stacks other than ours (e.g. tpm2-tools).
    pub async fn begin_tpm_enrollment(
        &self,
        ek_certificate: Vec<u8>,
        ek_intermediates: Vec<Vec<u8>>,
        ak_public: Vec<u8>,
    ) -> Result<pb::TpmEnrollmentChallenge, Error> {
        self.attestation()
            .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
                ek_certificate,
                ek_intermediates,
                ak_public,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| self.failed(s))
    }
}

/// A challenge from the server: a single-use nonce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// 32 random bytes.
    pub nonce: Vec<u8>,
    /// When the server stops accepting it, in milliseconds since the Unix epoch.
    pub expires_unix_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect_error(config: ClientConfig) -> Error {
        Client::connect(&config).await.unwrap_err()
    }

    #[tokio::test]
    async fn bad_settings_are_config_errors() {
        let e = connect_error(ClientConfig::new("https://127.0.0.1:1")).await;
        assert!(matches!(&e, Error::Config(m) if m.contains("--ca")), "{e}");
        let e = connect_error(ClientConfig::new("http://127.0.0.1:1").with_tls(TlsFiles::ca("/nonexistent"))).await;
        assert!(matches!(&e, Error::Config(m) if m.contains("plaintext")), "{e}");
        let e = connect_error(ClientConfig::new("ftp://x")).await;
        assert!(matches!(&e, Error::Config(_)), "{e}");
        let e =
            connect_error(ClientConfig::new("https://127.0.0.1:1").with_tls(TlsFiles::ca("/nonexistent/ca.pem"))).await;
        assert!(
            matches!(&e, Error::Input(m) if m.contains("/nonexistent/ca.pem")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = connect_error(ClientConfig::new(format!("http://127.0.0.1:{port}"))).await;
        assert!(matches!(&e, Error::Config(m) if m.contains("--node-policy")), "{e:?}");
        let e = connect_error(
            ClientConfig::new(format!("http://127.0.0.1:{port}")).with_node_trust(NodeTrust::DangerUnattested),
        )
        .await;
        assert!(matches!(e, Error::Unreachable { .. }), "{e:?}");
    }
}
