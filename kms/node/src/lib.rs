//! The node identity of a `kmsd` process, and how clients check that an answer comes from a
//! genuine `kmsd` (docs/attested-release.md, "Node identity").
//!
//! A `kmsd` makes an Ed25519 **node key** when it starts ([`NodeKey`], in memory only). Its
//! **statement** ([`NodeStatement`]) names that key, the process's unseal public key and its TLS
//! server key; where the host can, the hardware's evidence (an SEV-SNP report, a TPM quote) binds
//! the statement. Everything a client must trust is then signed with the node key: the seal
//! status it answers a custodian with (over the custodian's nonce), every Attest answer, every
//! sealed release ([`message`]). A client verifies the evidence once per node key against a
//! **node policy** it keeps locally ([`NodePolicy`], the release-policy language over the
//! node's claims) and from then on only signatures ([`NodeVerifier`]).
//!
//! Must never accept a node whose evidence does not bind its statement, nor an answer whose
//! signature does not verify under a node key that was verified.
#![warn(missing_docs)]

pub mod claims;
mod key;
pub mod message;
mod policy;
mod statement;
mod verify;

pub use key::{node_id, verify_signature, NodeKey, NODE_KEY_LEN, NODE_SIGNATURE_LEN};
pub use policy::{NodePolicy, PolicyError, TpmNodeTrust};
pub use statement::{spki_sha256, NodeStatement};
pub use verify::{identity, snp_to_wire, tpm_from_wire, tpm_to_wire, NodeError, NodeVerifier, VerifiedNode};
