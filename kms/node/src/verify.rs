//! Verifying a node: its identity answer once (evidence, policy, signed status), then every
//! answer it signs.

use attestation::snp::{SnpEvidence, SnpVerifier};
use attestation::tpm::{PcrValues, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::{Refusal, Verifier as _};
use kms_core::claims::ReleaseClaims;
use kms_proto::v1 as pb;
use prost::Message as _;

use crate::key::{node_id, verify_signature, NodeKey, NODE_KEY_LEN};
use crate::policy::{NodePolicy, PolicyError};
use crate::statement::NodeStatement;
use crate::{claims, message};

/// Why a node, or one of its answers, is not trusted. [`NodeError::reason`] is stable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The identity answer is not well formed.
    #[error("the node identity is malformed: {0}")]
    Malformed(String),
    /// A signature does not verify under the node key.
    #[error("{0} does not verify under the node's key")]
    Signature(&'static str),
    /// The answer contradicts the statement the evidence binds (e.g. another unseal key).
    #[error("{0}")]
    Mismatch(String),
    /// The node has no evidence, and the caller requires it.
    #[error("the node presents no hardware evidence ({0}); only --danger-unattested-kmsd accepts such a node")]
    NoEvidence(String),
    /// The evidence is refused (chain, signature, binding, TCB…).
    #[error("the node's evidence is refused: {0}")]
    Evidence(Refusal),
    /// The node's hardware is not one the policy allows (a TPM AK not listed, SNP not accepted).
    #[error("the node's hardware is not allowed by the node policy: {0}")]
    NotAllowed(String),
    /// The node's claims do not meet the policy's conditions.
    #[error("the node's claims do not meet the node policy: {0}")]
    Policy(String),
    /// The node serves another deployment than the policy pins.
    #[error("the node serves deployment {served:?}, and the node policy pins {pinned:?}")]
    WrongDeployment {
        /// What the node's signed status names.
        served: String,
        /// What the policy pins.
        pinned: String,
    },
    /// An answer that must be signed carries no node signature (or no node key).
    #[error("{0} carries no node signature")]
    Unsigned(&'static str),
    /// An answer is signed by a node key that was not verified.
    #[error("the answer is signed by node {0}, which was not verified")]
    UnknownNode(String),
}

impl NodeError {
    /// A stable name, for exit codes and reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "node_malformed",
            Self::Signature(_) => "node_signature",
            Self::Unsigned(_) => "node_unsigned",
            Self::Mismatch(_) => "node_statement_mismatch",
            Self::NoEvidence(_) => "node_unattested",
            Self::Evidence(_) => "node_evidence_refused",
            Self::NotAllowed(_) => "node_not_allowed",
            Self::Policy(_) => "node_policy_refused",
            Self::WrongDeployment { .. } => "node_wrong_deployment",
            Self::UnknownNode(_) => "node_unknown",
        }
    }
}

/// The answer a node gives to GetNodeIdentity (what [`NodeVerifier::verify`] checks): its
/// statement's fields, its evidence (or why it has none), and `status` signed over `nonce`.
pub fn identity(
    key: &NodeKey,
    statement: &NodeStatement,
    evidence: Option<pb::node_identity::Evidence>,
    no_evidence_reason: &str,
    nonce: &[u8],
    status: &pb::SealStatus,
) -> pb::NodeIdentity {
    let status = status.encode_to_vec();
    let signature = key.sign(&message::status(&statement.digest(), nonce, &status)).to_vec();
    pb::NodeIdentity {
        node_public_key: statement.node_public_key.to_vec(),
        unseal_public_key: statement.unseal_public_key.clone(),
        tls_spki_sha256: statement.tls_spki_sha256.to_vec(),
        node_hpke_public_key: statement.hpke_public_key.to_vec(),
        evidence,
        status,
        signature,
        node_id: key.id(),
        no_evidence_reason: no_evidence_reason.to_owned(),
    }
}

/// A node whose identity verified: its key (which later answers must be signed with), its
/// statement, and, when attested, the claims its evidence proved.
#[derive(Clone, Debug)]
pub struct VerifiedNode {
    /// The node public key.
    pub public_key: [u8; NODE_KEY_LEN],
    /// `node-…`.
    pub id: String,
    /// What its evidence binds.
    pub statement: NodeStatement,
    /// The claims its evidence proved; `None` for a node accepted without evidence (danger).
    pub claims: Option<ReleaseClaims>,
}

impl VerifiedNode {
    /// Checks `signature` over `message` (one of [`crate::message`]'s) under this node's key.
    pub fn check(&self, what: &'static str, message: &[u8], signature: &[u8]) -> Result<(), NodeError> {
        if verify_signature(&self.public_key, message, signature) {
            Ok(())
        } else {
            Err(NodeError::Signature(what))
        }
    }
}

enum Mode {
    Policy(Box<PolicyMode>),
    DangerUnattested,
}

struct PolicyMode {
    policy: NodePolicy,
    snp: Option<SnpVerifier>,
}

/// Decides which nodes are trusted: by their evidence against a [`NodePolicy`], or (dev and
/// tests only) any node that signs consistently.
pub struct NodeVerifier {
    mode: Mode,
}

impl std::fmt::Debug for NodeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.mode {
            Mode::Policy(_) => "NodeVerifier(policy)",
            Mode::DangerUnattested => "NodeVerifier(danger: unattested)",
        })
    }
}

/// TPM evidence as the attester makes it, in wire form.
pub fn tpm_to_wire(e: &TpmEvidence) -> pb::TpmEvidence {
    pb::TpmEvidence {
        ak_public: e.ak_public.clone(),
        quote: e.quote.clone(),
        signature: e.signature.clone(),
        pcrs: e
            .pcrs
            .iter()
            .map(|(index, value)| pb::PcrValue {
                index: u32::from(index),
                sha256: value.to_vec(),
            })
            .collect(),
    }
}

/// SEV-SNP evidence as the attester makes it, in wire form.
pub fn snp_to_wire(e: SnpEvidence) -> pb::SnpEvidence {
    pb::SnpEvidence {
        report: e.report,
        vek_certificate: e.vek.unwrap_or_default(),
        cert_chain: e.chain.unwrap_or_default(),
    }
}

/// Wire TPM evidence to the verifier's types; the message names the bad part.
pub fn tpm_from_wire(t: &pb::TpmEvidence) -> Result<TpmEvidence, String> {
    if t.pcrs.len() > 24 {
        return Err("tpm.pcrs: at most 24 values".into());
    }
    let mut pcrs = PcrValues::new();
    for p in &t.pcrs {
        let index = u8::try_from(p.index)
            .ok()
            .filter(|i| *i < 24)
            .ok_or_else(|| format!("tpm.pcrs: index {} is not 0 to 23", p.index))?;
        let value: [u8; 32] = p
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| format!("tpm.pcrs[{index}]: {} bytes; a SHA-256 PCR value is 32", p.sha256.len()))?;
        if pcrs.insert(index, value).is_some() {
            return Err(format!("tpm.pcrs: PCR {index} appears twice"));
        }
    }
    Ok(TpmEvidence {
        ak_public: t.ak_public.clone(),
        quote: t.quote.clone(),
        signature: t.signature.clone(),
        pcrs,
    })
}

impl NodeVerifier {
    /// Trusts the nodes `policy` accepts.
    pub fn new(policy: NodePolicy) -> Result<Self, PolicyError> {
        let snp = policy
            .snp
            .clone()
            .map(SnpVerifier::new)
            .transpose()
            .map_err(|e| PolicyError(format!("snp: {e}")))?;
        Ok(Self {
            mode: Mode::Policy(Box::new(PolicyMode { policy, snp })),
        })
    }

    /// Trusts any node whose answers are consistent and signed by the key it presents, without
    /// evidence. Insecure: anyone who can answer in the node's place is trusted. Dev mode and
    /// tests only (`--danger-unattested-kmsd`).
    pub fn danger_unattested() -> Self {
        Self {
            mode: Mode::DangerUnattested,
        }
    }

    /// Whether this verifier requires evidence.
    pub fn requires_evidence(&self) -> bool {
        matches!(self.mode, Mode::Policy(_))
    }

    /// Verifies an identity answered to a `GetNodeIdentity` request with `nonce`, at
    /// `now_unix`: the status is signed by the node key over this nonce, its unseal key is the
    /// statement's, and (unless danger) the evidence binds the statement, comes from hardware the
    /// policy allows, and its claims meet the policy. Returns the node and the status it signed.
    pub fn verify(
        &self,
        identity: &pb::NodeIdentity,
        nonce: &[u8],
        now_unix: i64,
    ) -> Result<(VerifiedNode, pb::SealStatus), NodeError> {
        let node_public_key: [u8; NODE_KEY_LEN] = identity.node_public_key.as_slice().try_into().map_err(|_| {
            NodeError::Malformed(format!(
                "node_public_key is {} bytes, not 32",
                identity.node_public_key.len()
            ))
        })?;
        let tls_spki_sha256: [u8; 32] = identity.tls_spki_sha256.as_slice().try_into().map_err(|_| {
            NodeError::Malformed(format!(
                "tls_spki_sha256 is {} bytes, not 32",
                identity.tls_spki_sha256.len()
            ))
        })?;
        let hpke_public_key: [u8; 32] = identity.node_hpke_public_key.as_slice().try_into().map_err(|_| {
            NodeError::Malformed(if identity.node_hpke_public_key.is_empty() {
                "node_hpke_public_key is missing: this kmsd is older than this client (its node statement has no HPKE key); upgrade kmsd".to_owned()
            } else {
                format!(
                    "node_hpke_public_key is {} bytes, not 32",
                    identity.node_hpke_public_key.len()
                )
            })
        })?;
        let statement = NodeStatement {
            node_public_key,
            unseal_public_key: identity.unseal_public_key.clone(),
            tls_spki_sha256,
            hpke_public_key,
        };
        let node = VerifiedNode {
            public_key: node_public_key,
            id: node_id(&node_public_key),
            statement,
            claims: None,
        };
        node.check(
            "the signed status",
            &message::status(&node.statement.digest(), nonce, &identity.status),
            &identity.signature,
        )?;
        let status = pb::SealStatus::decode(identity.status.as_slice())
            .map_err(|e| NodeError::Malformed(format!("the signed status is not a SealStatus: {e}")))?;
        if status.unseal_public_key != node.statement.unseal_public_key {
            return Err(NodeError::Mismatch(
                "the signed status names another unseal key than the node statement".into(),
            ));
        }
        let Mode::Policy(mode) = &self.mode else {
            return Ok((node, status));
        };
        let (policy, snp) = (&mode.policy, &mode.snp);
        let claims = match &identity.evidence {
            None => {
                let why = if identity.no_evidence_reason.is_empty() {
                    "none given"
                } else {
                    identity.no_evidence_reason.as_str()
                };
                return Err(NodeError::NoEvidence(why.to_owned()));
            }
            Some(pb::node_identity::Evidence::Snp(s)) => {
                let verifier = snp
                    .as_ref()
                    .ok_or_else(|| NodeError::NotAllowed("an SEV-SNP node, and the policy accepts none".into()))?;
                let evidence = SnpEvidence {
                    report: s.report.clone(),
                    vek: (!s.vek_certificate.is_empty()).then(|| s.vek_certificate.clone()),
                    chain: (!s.cert_chain.is_empty()).then(|| s.cert_chain.clone()),
                };
                let c = verifier
                    .verify(&evidence, &node.statement.snp_report_data(), now_unix)
                    .map_err(NodeError::Evidence)?;
                claims::snp(&c)
            }
            Some(pb::node_identity::Evidence::Tpm(t)) => {
                let trust = policy
                    .tpm
                    .as_ref()
                    .ok_or_else(|| NodeError::NotAllowed("a TPM node, and the policy accepts none".into()))?;
                let quote = t
                    .quote
                    .as_ref()
                    .ok_or_else(|| NodeError::Malformed("tpm.quote is missing".into()))?;
                let evidence = tpm_from_wire(quote).map_err(NodeError::Malformed)?;
                let c = TpmVerifier::new(TpmTrust::ak_checked_by_caller())
                    .verify(&evidence, &node.statement.tpm_qualifying_data(), now_unix)
                    .map_err(NodeError::Evidence)?;
                let ak = c.ak_name.to_hex();
                if !trust.ak_names.iter().any(|n| n.eq_ignore_ascii_case(&ak)) {
                    return Err(NodeError::NotAllowed(format!(
                        "the quote is signed by AK {ak}, which tpm.ak_names does not list"
                    )));
                }
                claims::tpm(&c, None)
            }
        };
        policy
            .release_policy
            .evaluate(&claims)
            .map_err(|m| NodeError::Policy(m.to_string()))?;
        if let Some(pinned) = &policy.deployment_id {
            if status.deployment_id != *pinned {
                return Err(NodeError::WrongDeployment {
                    served: status.deployment_id,
                    pinned: pinned.clone(),
                });
            }
        }
        Ok((
            VerifiedNode {
                claims: Some(claims),
                ..node
            },
            status,
        ))
    }
}
