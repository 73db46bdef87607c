//! The nodes a client verified in this run (behind a load balancer, one per replica), for
//! kmsctl and kms-agent alike: each identity is verified against the node trust once, and an
//! answer signed by a node key not verified yet makes the client ask for the answering node's
//! identity again, a few times, until the signer answers (a reconnection may land on another
//! replica).

use std::sync::Mutex;

use kms_node::{NodeError, NodeVerifier, VerifiedNode};
use kms_proto::v1 as pb;

/// How often the identity is asked for before giving up on the node that signed an answer, or
/// on a replica taking a plaintext sealed to another (`sealed_for_other_node`).
pub const IDENTITY_ATTEMPTS: usize = 3;

/// The verifier of the node trust, and the nodes it verified so far.
#[derive(Debug)]
pub struct VerifiedNodes {
    verifier: NodeVerifier,
    verified: Mutex<Vec<VerifiedNode>>,
    /// The node that answered the last identity verified.
    last: Mutex<Option<VerifiedNode>>,
}

impl VerifiedNodes {
    /// None verified yet.
    pub fn new(verifier: NodeVerifier) -> Self {
        Self {
            verifier,
            verified: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        }
    }

    /// The verifier.
    pub fn verifier(&self) -> &NodeVerifier {
        &self.verifier
    }

    /// Verifies `identity`, answered to a `GetNodeIdentity` with `nonce`, now; the node is
    /// remembered, so its later answers need no new identity.
    pub fn verify(
        &self,
        identity: &pb::NodeIdentity,
        nonce: &[u8],
    ) -> Result<(VerifiedNode, pb::SealStatus), NodeError> {
        let (node, status) = self.verifier.verify(identity, nonce, kms_core::now_unix_ms() / 1000)?;
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if !verified.iter().any(|n| n.public_key == node.public_key) {
            verified.push(node.clone());
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
        Ok((node, status))
    }

    /// The node whose identity was verified last: the one this connection reached most recently
    /// (what a plaintext is sealed to before any identity is asked again).
    pub fn last(&self) -> Option<VerifiedNode> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The node holding `public_key`, if it was verified.
    pub fn known(&self, public_key: &[u8]) -> Option<VerifiedNode> {
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|n| n.public_key[..] == *public_key)
            .cloned()
    }

    /// The verified node holding `public_key` (the key an answer says it is signed with): known
    /// already, or the node `answering` verifies now (`GetNodeIdentity` over a fresh nonce,
    /// through [`VerifiedNodes::verify`]), asked up to [`IDENTITY_ATTEMPTS`] times until it is
    /// that node. Else [`NodeError::UnknownNode`], made an `E` by `unknown`.
    pub async fn signer<E, Fut>(
        &self,
        public_key: &[u8],
        mut answering: impl FnMut() -> Fut,
        unknown: impl FnOnce(NodeError) -> E,
    ) -> Result<VerifiedNode, E>
    where
        Fut: std::future::Future<Output = Result<VerifiedNode, E>>,
    {
        for _ in 0..IDENTITY_ATTEMPTS {
            if let Some(node) = self.known(public_key) {
                return Ok(node);
            }
            let node = answering().await?;
            if node.public_key[..] == *public_key {
                return Ok(node);
            }
        }
        Err(unknown(NodeError::UnknownNode(kms_node::node_id(public_key))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use kms_node::{NodeKey, NodeStatement};

    use super::*;

    struct Node {
        key: NodeKey,
        statement: NodeStatement,
    }

    fn node() -> Node {
        let key = NodeKey::generate().unwrap();
        let statement = NodeStatement {
            node_public_key: key.public_key(),
            unseal_public_key: vec![4; 65],
            tls_spki_sha256: [0; 32],
            hpke_public_key: [9; 32],
        };
        Node { key, statement }
    }

    fn identity(n: &Node, nonce: &[u8]) -> pb::NodeIdentity {
        let status = pb::SealStatus {
            unseal_public_key: vec![4; 65],
            ..Default::default()
        };
        kms_node::identity(&n.key, &n.statement, None, "test", nonce, &status)
    }

    #[tokio::test]
    async fn a_signer_is_asked_for_until_it_answers() {
        let nodes = VerifiedNodes::new(NodeVerifier::danger_unattested());
        let (a, b) = (node(), node());
        let a_key = a.key.public_key();
        let b_key = b.key.public_key();
        assert!(nodes.known(&a_key).is_none());
        // A load balancer that answers with a first, then b.
        let mut answered = 0;
        let found = nodes
            .signer(
                &b_key,
                || {
                    answered += 1;
                    let n = if answered == 1 { &a } else { &b };
                    std::future::ready(nodes.verify(&identity(n, b"nonce"), b"nonce").map(|(v, _)| v))
                },
                |e| e,
            )
            .await
            .unwrap();
        assert_eq!((found.public_key, answered), (b_key, 2));
        assert_eq!(nodes.last().unwrap().public_key, b_key);
        // Both are known now: no identity is asked for.
        let found = nodes
            .signer(&a_key, || async { unreachable!("asked again") }, |e: NodeError| e)
            .await
            .unwrap();
        assert_eq!(found.public_key, a_key);
        // A key no answering node holds: asked IDENTITY_ATTEMPTS times, then node_unknown.
        let mut asked = 0;
        let e = nodes
            .signer(
                &[7; 32],
                || {
                    asked += 1;
                    std::future::ready(nodes.verify(&identity(&a, b"n"), b"n").map(|(v, _)| v))
                },
                |e| e,
            )
            .await
            .unwrap_err();
        assert_eq!((e.reason(), asked), ("node_unknown", IDENTITY_ATTEMPTS));
        // A refused identity is an error at once.
        let mut forged = identity(&a, b"n");
        forged.signature[0] ^= 1;
        assert_eq!(nodes.verify(&forged, b"n").unwrap_err().reason(), "node_signature");
    }
}
