//! Admin requests as the operations see them. `wire::admin` decodes a signed `AdminRequest` into
//! a [`RequestHeader`] (what authentication checks) and the operation; `wire::quorum` decodes the
//! quorum operations a proposal stores ([`QuorumOp`]) from, and encodes them to, the canonical
//! protobuf bytes the admins sign. The operations in `ops/` take and return these types and never
//! see protobuf; shape errors (a missing message, an unknown enum value) are the wire layer's,
//! checks that need the database or the configuration are the operations'.

use std::sync::Arc;

use attestation::snp::SnpEvidence;

use crate::seal::{SealKind, StatusReport};
use crate::storage::{AdminRow, HardwareRow, KeyRow, ProposalRow, Votes};

/// A signed request's exact bytes and its signature (a proposal's approvals keep both, so each
/// approval can be verified again when the proposal executes).
#[derive(Clone, Copy, Debug)]
pub struct Signed<'a> {
    /// The serialized `AdminRequest`.
    pub payload: &'a [u8],
    /// The admin's signature over `payload`.
    pub signature: &'a [u8],
}

/// What authentication reads from a signed request, before anything runs.
#[derive(Debug)]
pub struct RequestHeader {
    /// The admin the request claims to come from (not yet parsed: a bad id is refused by
    /// authentication, audited).
    pub admin_id: String,
    /// The deployment the request is for (empty for Init).
    pub deployment_id: String,
    /// When the admin signed it.
    pub timestamp_unix_ms: i64,
    /// The request nonce (once only, on every replica).
    pub nonce: Vec<u8>,
    /// The method name of the signed operation (`init`, `add_admin`, …), `None` when the
    /// request names no operation.
    pub method: Option<&'static str>,
    /// For Init only: the admins it names, with their signing keys (the signer must be one).
    pub init_signers: Vec<(String, Vec<u8>)>,
}

/// A new admin as an operation gets it: every field parsed (the allowed jurisdictions are checked
/// by the operation).
#[derive(Clone, Debug)]
pub struct NewAdmin {
    /// Id.
    pub id: kms_core::ids::AdminId,
    /// Country.
    pub country: kms_core::jurisdiction::Country,
    /// Signing key.
    pub signing_key: kms_core::admin::AdminPublicKey,
    /// P-256 share key (the custodian's root-key share is wrapped to it: `kms_core::share_wrap`).
    pub encryption_key: Vec<u8>,
    /// Holds a share.
    pub custodian: bool,
}

/// Init: the seal, its threshold, the approval quorum and the first admins.
#[derive(Debug)]
pub struct Init {
    /// The seal asked for (`None`: not one this server knows).
    pub seal: Option<SealKind>,
    /// Shares needed to unseal (Shamir).
    pub threshold: u32,
    /// M of the M-of-N quorum.
    pub approval_quorum: u32,
    /// The first admins.
    pub admins: Vec<NewAdmin>,
}

/// A quorum (M-of-N) operation: what a proposal stores, and what the operation's own RPC runs
/// when M = 1.
#[derive(Clone, Debug)]
pub enum QuorumOp {
    /// Add an admin (never as a custodian: custodians change by re-sharing the root key).
    AddAdmin(NewAdmin),
    /// Remove an active admin.
    RemoveAdmin {
        /// The admin removed.
        admin_id: String,
        /// Why (1 to 1024 characters).
        reason: String,
    },
    /// Change M.
    SetQuorum {
        /// The new M.
        approval_quorum: u32,
    },
    /// Enrol a machine in the hardware registry.
    EnrollHardware(Enrollment),
    /// Replace a key's release policy.
    SetReleasePolicy {
        /// Key id or name.
        key: String,
        /// The policy document (JSON).
        release_policy: String,
    },
    /// Schedule a disabled key's deletion.
    ScheduleKeyDeletion {
        /// Key id or name.
        key: String,
        /// Days until it is destroyed (7 to 30), counted from execution.
        pending_window_days: u32,
    },
    /// Start root generation g+1.
    RotateRoot(RootRotation),
}

impl QuorumOp {
    /// The operation's name, as stored in proposals.
    pub fn name(&self) -> &'static str {
        match self {
            Self::AddAdmin(_) => "add_admin",
            Self::RemoveAdmin { .. } => "remove_admin",
            Self::SetQuorum { .. } => "set_quorum",
            Self::EnrollHardware(_) => "enroll_hardware",
            Self::SetReleasePolicy { .. } => "set_release_policy",
            Self::ScheduleKeyDeletion { .. } => "schedule_key_deletion",
            Self::RotateRoot(_) => "rotate_root",
        }
    }

    /// The audit operation of its execution.
    pub fn audit_operation(&self) -> &'static str {
        match self {
            Self::AddAdmin(_) => "admin.add_admin",
            Self::RemoveAdmin { .. } => "admin.remove_admin",
            Self::SetQuorum { .. } => "admin.set_quorum",
            Self::EnrollHardware(_) => "admin.enroll_hardware",
            Self::SetReleasePolicy { .. } => "admin.set_release_policy",
            Self::ScheduleKeyDeletion { .. } => "admin.schedule_key_deletion",
            Self::RotateRoot(_) => "admin.rotate_root",
        }
    }
}

/// A quorum operation with the canonical bytes its digest is taken over.
#[derive(Clone, Debug)]
pub struct Proposed {
    /// The operation.
    pub op: QuorumOp,
    /// Its canonical encoding (what the proposal stores and approvals sign the digest of).
    pub bytes: Vec<u8>,
}

/// A machine to enrol.
#[derive(Clone, Debug)]
pub struct Enrollment {
    /// Where it is (ISO 3166-1 alpha-2, checked against the allowed jurisdictions).
    pub country: String,
    /// Site.
    pub site: String,
    /// Operator.
    pub operator: String,
    /// Free text.
    pub description: String,
    /// How it proves who it is (`None`: the request names no identity).
    pub identity: Option<EnrollIdentity>,
}

/// How a machine proves its identity at enrolment.
#[derive(Clone, Debug)]
pub enum EnrollIdentity {
    /// An SEV-SNP report, verified against AMD's roots.
    Snp {
        /// The report and its certificates.
        evidence: SnpEvidence,
        /// Accept a VLEK-signed report (a cloud provider's key).
        accept_vlek: bool,
    },
    /// The answer to a credential challenge (BeginTpmEnrollment).
    Tpm {
        /// The enrolment attempt.
        enrollment_id: String,
        /// The secret the TPM activated.
        activated_secret: Vec<u8>,
        /// The EK digest the admin expects.
        expected_ek_digest: String,
        /// The AK name the admin expects.
        expected_ak_name: String,
    },
}

/// A root key rotation.
#[derive(Clone, Debug)]
pub struct RootRotation {
    /// The seal of the new generation (`None`: not one this server knows).
    pub seal: Option<SealKind>,
    /// Shares needed (Shamir; 0 keeps the current threshold).
    pub threshold: u32,
    /// The custodians (Shamir; empty keeps the current ones).
    pub custodians: Vec<String>,
}

/// What a signed request stored as an approval approves, read again when its proposal executes.
#[derive(Debug)]
pub struct StoredRequest {
    /// The admin it is signed as.
    pub admin_id: String,
    /// The deployment it is for.
    pub deployment_id: String,
    /// What it approves.
    pub approves: Approves,
}

/// What a stored request approves.
#[derive(Debug)]
pub enum Approves {
    /// An Approve: the proposal and the SHA-256 of its operation.
    Proposal {
        /// Proposal id.
        id: String,
        /// SHA-256 of the operation's bytes.
        operation_sha256: Vec<u8>,
    },
    /// A Propose, or a quorum operation's own RPC: the canonical bytes of the operation.
    Operation(Vec<u8>),
    /// Anything else.
    Nothing,
}

/// What an executed quorum operation returns.
#[derive(Debug)]
pub enum Outcome {
    /// The admin added or removed.
    Admin(AdminRow),
    /// The seal status after the change.
    SealStatus(StatusReport),
    /// The machine enrolled.
    Hardware(Box<HardwareRow>),
    /// The key changed.
    Key(Arc<KeyRow>),
}

/// A proposal as answered: the row, its votes, M, and the result once it executed in this call.
#[derive(Debug)]
pub struct ProposalView {
    /// The stored proposal.
    pub row: ProposalRow,
    /// M.
    pub approvals_required: u32,
    /// Its approvals and rejections.
    pub votes: Votes,
    /// The result, when this call executed it.
    pub result: Option<Outcome>,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// The token of the next page, empty on the last one.
    pub next_page_token: String,
}
