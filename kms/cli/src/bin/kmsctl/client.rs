//! Talking to kmsd: the channel (kms-client's builder: plain or TLS, with an optional client
//! certificate), signing admin requests, taking an answer (admin or data plane) only as a node
//! verified under the node trust signed it, and turning failed calls into [`Error`]s with their
//! reason and a hint. Admin requests are signed only through the [`AdminSigner`] boundary, so an HSM signer can replace the
//! key file. It must never log or print a request payload, the admin's private key or a share.

use std::time::Duration;

use kms_client::cli::NodeTrustArgs;
use kms_client::nodes::{VerifiedNodes, IDENTITY_ATTEMPTS};
use kms_client::Reason;
use kms_core::admin::AdminSigner;
use kms_node::NodeError;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::admin_service_client::AdminServiceClient;
use kms_proto::v1::attestation_service_client::AttestationServiceClient;
use prost::Message as _;
use tonic::transport::Channel;

use serde_json::json;

use crate::cli::{Global, KmsctlFlags};
use crate::error::Error;

/// The server accepts 16 to 64; 16 random bytes never repeat in practice.
const NONCE_LEN: usize = 16;

/// A connection to one kmsd.
pub(crate) struct Server {
    channel: Channel,
    url: String,
    /// The deployment pinned by --deployment, if any.
    pinned_deployment: Option<String>,
    /// The deployment the server reported, once asked.
    deployment: tokio::sync::OnceCell<String>,
    /// Which kmsd signed admin answers must come from (--node-policy, --danger-unattested-kmsd).
    trust: NodeTrustArgs<KmsctlFlags>,
    /// The nodes verified under it so far in this run (behind a load balancer, one per
    /// replica), from the first signed call on.
    nodes: tokio::sync::OnceCell<VerifiedNodes>,
}

impl Server {
    /// Connects now, so an unreachable server or a failed TLS handshake is reported as such
    /// (exit code 3) before anything is signed.
    pub(crate) async fn connect(global: &Global) -> Result<Self, Error> {
        let config = global.connection.channel_config()?;
        let channel = config.connect().await?;
        Ok(Self {
            channel,
            url: config.target().to_owned(),
            pinned_deployment: global.deployment.clone(),
            deployment: tokio::sync::OnceCell::new(),
            trust: global.node_trust.clone(),
            nodes: tokio::sync::OnceCell::new(),
        })
    }

    /// The deployment signed requests name: the one the answering node's status names, signed
    /// over a fresh nonce by a node verified under `nodes`' trust (so a proxy cannot make this
    /// kmsctl sign for a deployment of its choosing, as it could with the unsigned
    /// `GetSealStatus`), which must be the pinned one if --deployment is given.
    async fn deployment(&self, nodes: &VerifiedNodes) -> Result<&str, Error> {
        self.deployment
            .get_or_try_init(|| async {
                let (_, status) = crate::node::verified_status(self, nodes).await?;
                if !status.initialized {
                    return Err(Error::local(
                        "the server is not initialized: it has no deployment to sign requests for (kmsctl init first)",
                    ));
                }
                if let Some(pinned) = &self.pinned_deployment {
                    if pinned != &status.deployment_id {
                        return Err(Error::local(format!(
                            "{} is deployment {:?}, not {pinned:?} (--deployment): refusing to sign for it",
                            self.url, status.deployment_id
                        )));
                    }
                }
                Ok(status.deployment_id)
            })
            .await
            .map(String::as_str)
    }

    pub(crate) fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
    }

    pub(crate) fn attestation(&self) -> AttestationServiceClient<Channel> {
        AttestationServiceClient::new(self.channel.clone())
    }

    /// The keys that verify attestation tokens (a JWKS), signed over `nonce`, unverified.
    pub(crate) async fn token_keys(&self, nonce: &[u8]) -> Result<pb::TokenKeys, Error> {
        match self
            .attestation()
            .get_token_keys(pb::GetTokenKeysRequest { nonce: nonce.to_vec() })
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.failed(s).await),
        }
    }

    /// GetSealStatus (unsigned).
    /// GetNodeIdentity over `nonce`, unverified.
    pub(crate) async fn node_identity(&self, nonce: &[u8]) -> Result<pb::NodeIdentity, Error> {
        match self
            .attestation()
            .get_node_identity(pb::GetNodeIdentityRequest { nonce: nonce.to_vec() })
            .await
        {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.failed(s).await),
        }
    }

    pub(crate) async fn seal_status(&self) -> Result<pb::SealStatus, Error> {
        match self.admin().get_seal_status(pb::GetSealStatusRequest {}).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.failed(s).await),
        }
    }

    /// Signs `op` as `admin`, sends it to its method, and answers what kmsd answered: only if
    /// the answer is signed by a node verified under the node trust (`--node-policy`), over this
    /// request and the answer's bytes as received (see `kms_proto::admin`). Without a node trust
    /// nothing is signed or sent (a usage error).
    pub(crate) async fn admin_call<T: prost::Message + Default>(&self, admin: &Signer<'_>, op: Op) -> Result<T, Error> {
        let (method, path) = kms_proto::admin::method(&op);
        let nodes = self.nodes(method).await?;
        let deployment = match op {
            // Init makes the deployment.
            Op::Init(_) => "",
            _ => self.deployment(nodes).await?,
        };
        let request = admin.sign(deployment, op)?;
        let answer = self
            .signed_answer(nodes, method, path, request.encode_to_vec(), None, |answer| {
                kms_node::message::admin_answer(method, &request.payload, answer)
            })
            .await?;
        T::decode(answer.as_slice()).map_err(|e| unreadable(method, &e))
    }

    /// A data-plane call (`method` as audit records name it, at gRPC `path`) whose answer the
    /// answering node signs over this request and a fresh nonce: checked as
    /// [`Server::admin_call`] checks its answers, and needs a node trust the same way.
    pub(crate) async fn data_call<Q: prost::Message, A: prost::Message + Default>(
        &self,
        method: &'static str,
        path: &'static str,
        request: &Q,
    ) -> Result<A, Error> {
        let nodes = self.nodes(method).await?;
        let nonce =
            kms_core::random_array::<32>().map_err(|e| Error::local(format!("random number generator: {e}")))?;
        // An Encrypt request holds the caller's plaintext: wiped once checked against.
        let sent = zeroize::Zeroizing::new(request.encode_to_vec());
        let answer = self
            .signed_answer(nodes, method, path, sent.to_vec(), Some(&nonce), |answer| {
                kms_node::message::data_answer(method, &sent, &nonce, answer)
            })
            .await?;
        A::decode(answer.as_slice()).map_err(|e| unreadable(method, &e))
    }

    /// Encrypt with `plaintext` sealed to the answering node, verified now under the node trust
    /// (its evidence binds the HPKE key: a TLS-terminating relay sees only HPKE ciphertext), and
    /// the answer signed by it over this request. Behind a load balancer another replica may take
    /// the call and refuse it (`sealed_for_other_node`): the identity is asked for again and the
    /// plaintext sealed to the node that answers.
    pub(crate) async fn encrypt_sealed(
        &self,
        key: &str,
        context: &std::collections::BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> Result<pb::EncryptResponse, Error> {
        let nodes = self.nodes("encrypt").await?;
        let bound = kms_client::sealed::context(context).map_err(|r| Error::from(kms_client::Error::Refused(r)))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // After a replica refused what was sealed for another one, something was sent.
            let consequence = match attempt {
                1 => "nothing was sent",
                _ => "nothing was encrypted (the plaintext sent before was sealed to another replica, which alone can open it)",
            };
            let (node, _) = crate::node::verified_status_or(self, nodes, consequence).await?;
            let sealed = kms_client::sealed::encrypt_input(&node, key, &bound, plaintext)
                .map_err(|e| Error::local(format!("sealing the plaintext to {}: {e}", node.id)))?;
            let request = pb::EncryptRequest {
                key: key.to_owned(),
                plaintext: Vec::new(),
                encryption_context: context.clone(),
                sealed_plaintext: Some(sealed),
            };
            match self
                .data_call::<_, pb::EncryptResponse>("encrypt", "/kms.v1.KeyService/Encrypt", &request)
                .await
            {
                Err(Error::Refused(r))
                    if r.reason() == Some(Reason::SealedForOtherNode) && attempt < IDENTITY_ATTEMPTS =>
                {
                    continue
                }
                answer => return answer,
            }
        }
    }

    /// Sends `request` to `path` and answers the answer's bytes once a node verified under
    /// `nodes`' trust signed `message(answer bytes)`; the refusals name `method`.
    async fn signed_answer(
        &self,
        nodes: &VerifiedNodes,
        method: &'static str,
        path: &'static str,
        request: Vec<u8>,
        nonce: Option<&[u8]>,
        message: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
        let answer = match kms_client::signed::call(&self.channel, path, request, nonce).await {
            Ok(a) => a,
            Err(s) => return Err(self.failed(s).await),
        };
        let untrusted = |e: &NodeError| {
            Error::check_failed(
                e.reason(),
                format!("{method}: {e}; the answer is not trusted (kmsd may or may not have done it: check with a signed read)"),
                json!({ "method": method }),
            )
        };
        let node_key = answer.node_key().map_err(|e| untrusted(&e))?;
        let node = crate::node::signer(self, nodes, node_key, &untrusted).await?;
        let bytes = answer.check(&node, message).map_err(|e| untrusted(&e))?;
        // A data-plane answer may hold plaintext.
        Ok(zeroize::Zeroizing::new(bytes.to_vec()))
    }

    /// With `nodes` as the nodes verified under the node trust: for a command that made them
    /// before connecting (so that a missing trust is refused before anything is sent), and then
    /// shares them with every signed call of the run.
    pub(crate) fn trusting(self, nodes: VerifiedNodes) -> Self {
        // Only a fresh connection is handed its set.
        let _ = self.nodes.set(nodes);
        self
    }

    /// The nodes verified under the node trust; a usage error (nothing sent) if the command
    /// line names none.
    pub(crate) async fn nodes(&self, method: &str) -> Result<&VerifiedNodes, Error> {
        self.nodes
            .get_or_try_init(|| async {
                let trust = self.trust.required_trust(&format!("kmsctl's {method}"))?;
                trust
                    .verifier()
                    .map(VerifiedNodes::new)
                    .map_err(|e| Error::local(format!("the node policy cannot be used: {e}")))
            })
            .await
    }

    /// The error for a failed call. A `sealed` refusal gets a precise hint from the seal status.
    pub(crate) async fn failed(&self, status: tonic::Status) -> Error {
        let mut error = Error::from(kms_client::Error::from_status(status, &self.url));
        if let Error::Refused(refusal) = &mut error {
            if refusal.reason() == Some(Reason::Sealed) {
                if let Ok(Ok(s)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    self.admin().get_seal_status(pb::GetSealStatusRequest {}),
                )
                .await
                {
                    refusal.set_hint(sealed_hint(&s.into_inner()));
                }
            }
        }
        error
    }
}

/// The error for an answer a verified node signed but this kmsctl cannot decode.
fn unreadable(method: &str, e: &prost::DecodeError) -> Error {
    Error::local(format!(
        "{method}: kmsd signed an answer this kmsctl cannot read ({e}): is kmsctl older than kmsd?"
    ))
}

/// What a sealed server needs, from its status.
pub(crate) fn sealed_hint(s: &pb::SealStatus) -> String {
    let missing = s.threshold.saturating_sub(s.progress);
    format!(
        "run `kmsctl unseal` as {} custodian{} ({}/{} shares submitted so far)",
        if s.progress == 0 {
            s.threshold.to_string()
        } else {
            format!("{missing} more")
        },
        if missing == 1 { "" } else { "s" },
        s.progress,
        s.threshold
    )
}

pub(crate) use kms_client::channel::is_plaintext_to_remote as plaintext_to_remote;
pub(crate) use kms_proto::status::error_chain;

/// Who signs admin requests: an admin id and its signer.
pub(crate) struct Signer<'a> {
    admin_id: String,
    signer: &'a dyn AdminSigner,
}

impl<'a> Signer<'a> {
    /// Signs as `admin_id` with `signer` (a key file's or a token's key).
    pub(crate) fn new(admin_id: String, signer: &'a dyn AdminSigner) -> Self {
        Self { admin_id, signer }
    }

    pub(crate) fn admin_id(&self) -> &str {
        &self.admin_id
    }

    /// The request for `op` in `deployment`: fresh timestamp and nonce, encoded once and
    /// signed over exactly those bytes (the server never re-encodes).
    pub(crate) fn sign(&self, deployment: &str, op: Op) -> Result<pb::SignedRequest, Error> {
        let nonce = kms_core::random_array::<NONCE_LEN>().map_err(|e| Error::local(format!("nonce: {e}")))?;
        let request = pb::AdminRequest {
            admin_id: self.admin_id.clone(),
            timestamp_unix_ms: kms_core::now_unix_ms(),
            nonce: nonce.to_vec(),
            operation: Some(op),
            deployment_id: deployment.to_owned(),
        };
        let payload = request.encode_to_vec();
        let signature = self
            .signer
            .sign(&payload)
            .map_err(|e| Error::local(format!("cannot sign the request: {e}")))?;
        Ok(pb::SignedRequest { payload, signature })
    }
}

#[cfg(test)]
mod tests {
    use kms_core::ids::AdminId;
    use kms_core::jurisdiction::Country;
    use kms_core::keyfile::AdminKeyFile;
    use prost::Message as _;

    use super::*;

    #[test]
    fn signed_requests_verify_and_differ() {
        let key = AdminKeyFile::generate(AdminId::parse("alice").unwrap(), Country::parse("DE").unwrap()).unwrap();
        let signer = Signer::new(key.admin_id.to_string(), key.signer());
        let a = signer.sign("dep-1", Op::Seal(pb::SealOp {})).unwrap();
        let b = signer.sign("dep-1", Op::Seal(pb::SealOp {})).unwrap();
        key.public()
            .signing_key()
            .unwrap()
            .verify(&a.payload, &a.signature)
            .unwrap();
        let req = pb::AdminRequest::decode(a.payload.as_slice()).unwrap();
        assert_eq!(req.admin_id, "alice");
        assert_eq!(req.deployment_id, "dep-1");
        assert_eq!(req.nonce.len(), 16);
        assert!(matches!(req.operation, Some(Op::Seal(_))));
        assert_ne!(a.payload, b.payload, "every request has a fresh nonce");
    }

    #[test]
    fn sealed_hints_count_what_is_missing() {
        let mut s = pb::SealStatus {
            threshold: 2,
            ..Default::default()
        };
        assert_eq!(
            sealed_hint(&s),
            "run `kmsctl unseal` as 2 custodians (0/2 shares submitted so far)"
        );
        s.progress = 1;
        assert_eq!(
            sealed_hint(&s),
            "run `kmsctl unseal` as 1 more custodian (1/2 shares submitted so far)"
        );
    }
}
