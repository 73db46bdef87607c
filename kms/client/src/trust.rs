//! Which kmsd nodes a client trusts to answer: those whose hardware evidence meets the node
//! policy the client keeps, or (dev and tests only) any node that signs its answers
//! consistently. `kmsctl` verifies the node it unseals or initializes with it, `kms-agent` every
//! node whose answers it uses. It only describes the trust; `kms_node::NodeVerifier` checks.

use kms_node::{NodePolicy, NodeVerifier, PolicyError};

/// How a client decides that an answer comes from a genuine kmsd.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per client, made once at start: a box would buy nothing
pub enum NodeTrust {
    /// A node whose hardware evidence meets this policy (docs/attested-release.md, "Node
    /// identity"): its answers are used only if that node signed them.
    Policy(NodePolicy),
    /// Any node that signs its answers consistently, without evidence. Insecure: whoever can
    /// answer in kmsd's place (a TLS-terminating proxy) is trusted. Dev and tests only
    /// (`--danger-unattested-kmsd`).
    DangerUnattested,
}

impl NodeTrust {
    /// The verifier of answering nodes under this trust. Refused only for a policy whose SEV-SNP
    /// settings cannot be used (the message names the part).
    pub fn verifier(&self) -> Result<NodeVerifier, PolicyError> {
        match self {
            Self::Policy(p) => NodeVerifier::new(p.clone()),
            Self::DangerUnattested => Ok(NodeVerifier::danger_unattested()),
        }
    }
}
