//! Every authenticated table's row type, with its columns in one list ([`Row`]): what its
//! authenticator covers, how it binds to SQL and how it decodes into domain values. A row type
//! has a field for every column of its table (a test checks this against both schemas), so an
//! authenticator covers the whole row.

use std::collections::BTreeMap;

use kms_core::ids::{AdminId, KeyId, KeyName, KeyVersion};
use kms_core::integrity::Value;
use kms_core::jurisdiction::Country;
use kms_core::key::KeyState;
use kms_core::policy::{AccessPolicy, ReleasePolicy};

use super::row::{bytes, int, text, Column, Row, Table, Values};

fn gen(n: u64) -> Value {
    Value::int(i64::try_from(n).unwrap_or(i64::MAX))
}

fn opt_gen(n: Option<u64>) -> Value {
    Value::Int(n.map(|n| i64::try_from(n).unwrap_or(i64::MAX)))
}

// ----- seal_config -------------------------------------------------------------------------------

/// The seal's record (one row, id 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealConfigRow {
    /// `shamir`, `pkcs11` or `dev` (the current generation's).
    pub kind: String,
    /// Shares needed (the current generation's).
    pub threshold: u32,
    /// Root key check value (the current generation's).
    pub kcv: Vec<u8>,
    /// When Init ran.
    pub created_unix_ms: i64,
    /// M of the approval quorum.
    pub approval_quorum: u32,
    /// The current root key generation.
    pub root_generation: u64,
    /// The deployment's identity, made at Init; every signed admin request names it.
    pub deployment_id: String,
}

impl Row for SealConfigRow {
    const TABLE: Table = Table::SealConfig;
    const COLUMNS: &'static [Column] = &[
        int("id"),
        text("kind"),
        int("threshold"),
        bytes("kcv"),
        int("created_unix_ms"),
        int("approval_quorum"),
        int("root_generation"),
        text("deployment_id"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::int(1),
            Value::text(self.kind.clone()),
            Value::int(self.threshold),
            Value::bytes(self.kcv.clone()),
            Value::int(self.created_unix_ms),
            Value::int(self.approval_quorum),
            gen(self.root_generation),
            Value::text(self.deployment_id.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        if v.int("id")? != 1 {
            return Err("id is not 1".into());
        }
        Ok(Self {
            kind: v.text("kind")?,
            threshold: v.u32("threshold")?,
            kcv: v.bytes("kcv")?,
            created_unix_ms: v.int("created_unix_ms")?,
            approval_quorum: v.u32("approval_quorum")?,
            root_generation: v.u64("root_generation")?,
            deployment_id: v.text("deployment_id")?,
        })
    }
}

// ----- root_generations --------------------------------------------------------------------------

/// One root key generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootGenerationRow {
    /// Its number (1 at init).
    pub generation: u64,
    /// The seal that holds it.
    pub kind: String,
    /// `active`, `pending` (being rotated to) or `retired`.
    pub status: String,
    /// Shares needed to unseal it (shamir).
    pub threshold: u32,
    /// Its check value (KCV; the pkcs11 seal's canary).
    pub kcv: Vec<u8>,
    /// pkcs11: the key's label in the HSM.
    pub hsm_label: Option<String>,
    /// While pending and held in software: the root wrapped under the current root.
    pub next_root_wrapped: Option<Vec<u8>>,
    /// When it was created.
    pub created_unix_ms: i64,
    /// Who created it.
    pub created_by: String,
    /// When its rotation completed (or it was retired).
    pub completed_unix_ms: Option<i64>,
    /// Its integrity key, wrapped under this generation's root key.
    pub integrity_key: Option<Vec<u8>>,
}

impl Row for RootGenerationRow {
    const TABLE: Table = Table::RootGenerations;
    const COLUMNS: &'static [Column] = &[
        int("generation"),
        text("kind"),
        text("status"),
        int("threshold"),
        bytes("kcv"),
        text("hsm_label"),
        bytes("next_root_wrapped"),
        int("created_unix_ms"),
        text("created_by"),
        int("completed_unix_ms"),
        bytes("integrity_key"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            gen(self.generation),
            Value::text(self.kind.clone()),
            Value::text(self.status.clone()),
            Value::int(self.threshold),
            Value::bytes(self.kcv.clone()),
            Value::Text(self.hsm_label.clone()),
            Value::Bytes(self.next_root_wrapped.clone()),
            Value::int(self.created_unix_ms),
            Value::text(self.created_by.clone()),
            Value::Int(self.completed_unix_ms),
            Value::Bytes(self.integrity_key.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            generation: v.u64("generation")?,
            kind: v.text("kind")?,
            status: v.text("status")?,
            threshold: v.u32("threshold")?,
            kcv: v.bytes("kcv")?,
            hsm_label: v.opt_text("hsm_label")?,
            next_root_wrapped: v.opt_bytes("next_root_wrapped")?,
            created_unix_ms: v.int("created_unix_ms")?,
            created_by: v.text("created_by")?,
            completed_unix_ms: v.opt_int("completed_unix_ms")?,
            integrity_key: v.opt_bytes("integrity_key")?,
        })
    }
}

/// The `admin_id` column, which kmsd only ever writes from a parsed [`AdminId`].
fn admin_id(v: &Values<'_>) -> Result<AdminId, String> {
    AdminId::parse(&v.text("admin_id")?).map_err(|_| "admin_id is not an admin id".to_owned())
}

// ----- root_shares -------------------------------------------------------------------------------

/// A custodian's share envelope of one root generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareRow {
    /// The generation.
    pub generation: u64,
    /// The custodian.
    pub admin_id: AdminId,
    /// The share envelope (kms_core::share_wrap), sealed to the custodian's share key.
    pub envelope: Vec<u8>,
}

impl Row for ShareRow {
    const TABLE: Table = Table::RootShares;
    const COLUMNS: &'static [Column] = &[int("generation"), text("admin_id"), bytes("envelope")];
    const KEY: usize = 2;
    fn to_values(&self) -> Vec<Value> {
        vec![
            gen(self.generation),
            Value::text(self.admin_id.as_str()),
            Value::bytes(self.envelope.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            generation: v.u64("generation")?,
            admin_id: admin_id(v)?,
            envelope: v.bytes("envelope")?,
        })
    }
}

// ----- admins ------------------------------------------------------------------------------------

/// An admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRow {
    /// Id.
    pub id: AdminId,
    /// Country.
    pub country: Country,
    /// SEC1 signing key.
    pub signing_public_key: Vec<u8>,
    /// SEC1 share (encryption) key.
    pub encryption_public_key: Vec<u8>,
    /// Holds a share.
    pub custodian: bool,
    /// Created.
    pub created_unix_ms: i64,
    /// Removed (the row stays for the record).
    pub removed_unix_ms: Option<i64>,
    /// By whom.
    pub removed_by: Option<String>,
}

impl Row for AdminRow {
    const TABLE: Table = Table::Admins;
    const COLUMNS: &'static [Column] = &[
        text("id"),
        text("country"),
        bytes("signing_public_key"),
        bytes("encryption_public_key"),
        int("custodian"),
        int("created_unix_ms"),
        int("removed_unix_ms"),
        text("removed_by"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.id.as_str()),
            Value::text(self.country.as_str()),
            Value::bytes(self.signing_public_key.clone()),
            Value::bytes(self.encryption_public_key.clone()),
            Value::bool(self.custodian),
            Value::int(self.created_unix_ms),
            Value::Int(self.removed_unix_ms),
            Value::Text(self.removed_by.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            id: AdminId::parse(&v.text("id")?).map_err(|_| "id is not an admin id")?,
            country: Country::parse(&v.text("country")?).map_err(|_| "country is not a country code")?,
            signing_public_key: v.bytes("signing_public_key")?,
            encryption_public_key: v.bytes("encryption_public_key")?,
            custodian: v.bool("custodian")?,
            created_unix_ms: v.int("created_unix_ms")?,
            removed_unix_ms: v.opt_int("removed_unix_ms")?,
            removed_by: v.opt_text("removed_by")?,
        })
    }
}

// ----- keys --------------------------------------------------------------------------------------

/// A key's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    /// `k-…`.
    pub id: KeyId,
    /// Unique name.
    pub name: KeyName,
    /// Description.
    pub description: String,
    /// Tags.
    pub tags: BTreeMap<String, String>,
    /// State.
    pub state: KeyState,
    /// Newest version.
    pub latest_version: KeyVersion,
    /// Grants.
    pub grants: AccessPolicy,
    /// Release policy, parsed once when the row is read (stored as its canonical JSON).
    pub release_policy: ReleasePolicy,
    /// The release policy's version (1 at creation, +1 per change).
    pub release_policy_version: u32,
    /// Created.
    pub created_unix_ms: i64,
    /// Last changed.
    pub updated_unix_ms: i64,
    /// When the material will be destroyed, while pending deletion.
    pub deletion_unix_ms: Option<i64>,
}

impl Row for KeyRow {
    const TABLE: Table = Table::Keys;
    const COLUMNS: &'static [Column] = &[
        text("id"),
        text("name"),
        text("description"),
        text("tags"),
        text("state"),
        int("latest_version"),
        text("grants"),
        text("release_policy"),
        int("created_unix_ms"),
        int("updated_unix_ms"),
        int("deletion_unix_ms"),
        int("release_policy_version"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.id.to_string()),
            Value::text(self.name.as_str()),
            Value::text(self.description.clone()),
            Value::text(serde_json::to_string(&self.tags).unwrap_or_default()),
            Value::text(self.state.as_str()),
            Value::int(self.latest_version.get()),
            Value::text(serde_json::to_string(&self.grants).unwrap_or_default()),
            Value::text(self.release_policy.to_json()),
            Value::int(self.created_unix_ms),
            Value::int(self.updated_unix_ms),
            Value::Int(self.deletion_unix_ms),
            Value::int(self.release_policy_version),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        let state = v.text("state")?;
        Ok(Self {
            id: KeyId::parse(&v.text("id")?).map_err(|_| "id is not a key id")?,
            name: KeyName::parse(&v.text("name")?).map_err(|_| "name is not a key name")?,
            description: v.text("description")?,
            tags: serde_json::from_str(&v.text("tags")?).map_err(|_| "tags is not a JSON map")?,
            state: KeyState::parse(&state).ok_or("state is not a key state")?,
            latest_version: KeyVersion::new(v.u32("latest_version")?).ok_or("latest_version is 0")?,
            grants: serde_json::from_str(&v.text("grants")?).map_err(|_| "grants is not an access policy")?,
            release_policy: ReleasePolicy::parse(&v.text("release_policy")?)
                .map_err(|_| "release_policy is not a release policy")?,
            release_policy_version: v.u32("release_policy_version")?,
            created_unix_ms: v.int("created_unix_ms")?,
            updated_unix_ms: v.int("updated_unix_ms")?,
            deletion_unix_ms: v.opt_int("deletion_unix_ms")?,
        })
    }
}

// ----- key_versions ------------------------------------------------------------------------------

/// One KEK version, wrapped under the root key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionRow {
    /// The key.
    pub key_id: KeyId,
    /// The version.
    pub version: KeyVersion,
    /// The KEK wrapped under the root key (AAD = key id, version); `None` once destroyed.
    pub wrapped_kek: Option<Vec<u8>>,
    /// Created.
    pub created_unix_ms: i64,
    /// Destroyed.
    pub destroyed_unix_ms: Option<i64>,
    /// The root key generation that wrapped it.
    pub root_generation: u64,
}

impl Row for KeyVersionRow {
    const TABLE: Table = Table::KeyVersions;
    const COLUMNS: &'static [Column] = &[
        text("key_id"),
        int("version"),
        bytes("wrapped_kek"),
        int("created_unix_ms"),
        int("destroyed_unix_ms"),
        int("root_generation"),
    ];
    const KEY: usize = 2;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.key_id.to_string()),
            Value::int(self.version.get()),
            Value::Bytes(self.wrapped_kek.clone()),
            Value::int(self.created_unix_ms),
            Value::Int(self.destroyed_unix_ms),
            gen(self.root_generation),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            key_id: KeyId::parse(&v.text("key_id")?).map_err(|_| "key_id is not a key id")?,
            version: KeyVersion::new(v.u32("version")?).ok_or("version is 0")?,
            wrapped_kek: v.opt_bytes("wrapped_kek")?,
            created_unix_ms: v.int("created_unix_ms")?,
            destroyed_unix_ms: v.opt_int("destroyed_unix_ms")?,
            root_generation: v.u64("root_generation")?,
        })
    }
}

// ----- release_policies --------------------------------------------------------------------------

/// One version of a key's release policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasePolicyRow {
    /// The key.
    pub key_id: KeyId,
    /// The policy version.
    pub version: u32,
    /// The canonical document.
    pub document: String,
    /// When set.
    pub set_unix_ms: i64,
    /// By whom.
    pub set_by: String,
}

impl Row for ReleasePolicyRow {
    const TABLE: Table = Table::ReleasePolicies;
    const COLUMNS: &'static [Column] = &[
        text("key_id"),
        int("version"),
        text("document"),
        int("set_unix_ms"),
        text("set_by"),
    ];
    const KEY: usize = 2;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.key_id.to_string()),
            Value::int(self.version),
            Value::text(self.document.clone()),
            Value::int(self.set_unix_ms),
            Value::text(self.set_by.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            key_id: KeyId::parse(&v.text("key_id")?).map_err(|_| "key_id is not a key id")?,
            version: v.u32("version")?,
            document: v.text("document")?,
            set_unix_ms: v.int("set_unix_ms")?,
            set_by: v.text("set_by")?,
        })
    }
}

// ----- hardware ----------------------------------------------------------------------------------

/// A registry entry's status.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HardwareStatus {
    /// May obtain tokens.
    Active,
    /// Revoked: its tokens stop working.
    Revoked,
}

impl HardwareStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// An enrolled machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HardwareRow {
    /// `hw-…`.
    pub id: String,
    /// `snp` or `tpm`.
    pub kind: String,
    /// Status.
    pub status: HardwareStatus,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// Site.
    pub site: String,
    /// Operator (legal entity).
    pub operator: String,
    /// Free text.
    pub description: String,
    /// SNP chip id (hex).
    pub snp_chip_id: Option<String>,
    /// VLEK-signed reports accepted.
    pub snp_accept_vlek: bool,
    /// TPM EK digest (hex).
    pub tpm_ek_digest: Option<String>,
    /// TPM AK name (hex).
    pub tpm_ak_name: Option<String>,
    /// TPM EK certificate (DER).
    pub tpm_ek_certificate: Option<Vec<u8>>,
    /// What the evidence showed at enrolment (JSON).
    pub enrollment_record: String,
    /// When enrolled.
    pub enrolled_unix_ms: i64,
    /// By whom.
    pub enrolled_by: String,
    /// When revoked.
    pub revoked_unix_ms: Option<i64>,
    /// By whom.
    pub revoked_by: Option<String>,
    /// Why.
    pub revocation_reason: Option<String>,
}

impl HardwareRow {
    /// The identities only one active entry may hold (the SNP chip id, the TPM EK digest, the
    /// TPM AK name) that this entry holds.
    pub(crate) fn identities(&self) -> impl Iterator<Item = (super::Identity, &str)> {
        [
            (super::Identity::SnpChipId, &self.snp_chip_id),
            (super::Identity::TpmEkDigest, &self.tpm_ek_digest),
            (super::Identity::TpmAkName, &self.tpm_ak_name),
        ]
        .into_iter()
        .filter_map(|(column, v)| v.as_deref().map(|v| (column, v)))
    }

    /// An active SNP machine in Germany, for tests.
    #[cfg(test)]
    pub(crate) fn example() -> Self {
        Self {
            id: format!("hw-{}", "ab".repeat(16)),
            kind: "snp".into(),
            status: HardwareStatus::Active,
            country: "DE".into(),
            site: "FRA-2".into(),
            operator: "Example GmbH".into(),
            description: String::new(),
            snp_chip_id: Some("cd".repeat(64)),
            snp_accept_vlek: false,
            tpm_ek_digest: None,
            tpm_ak_name: None,
            tpm_ek_certificate: None,
            enrollment_record: "{}".into(),
            enrolled_unix_ms: 1,
            enrolled_by: "alice".into(),
            revoked_unix_ms: None,
            revoked_by: None,
            revocation_reason: None,
        }
    }
}

impl Row for HardwareRow {
    const TABLE: Table = Table::Hardware;
    const COLUMNS: &'static [Column] = &[
        text("id"),
        text("kind"),
        text("status"),
        text("country"),
        text("site"),
        text("operator"),
        text("description"),
        text("snp_chip_id"),
        int("snp_accept_vlek"),
        text("tpm_ek_digest"),
        text("tpm_ak_name"),
        bytes("tpm_ek_certificate"),
        text("enrollment_record"),
        int("enrolled_unix_ms"),
        text("enrolled_by"),
        int("revoked_unix_ms"),
        text("revoked_by"),
        text("revocation_reason"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.id.clone()),
            Value::text(self.kind.clone()),
            Value::text(self.status.as_str()),
            Value::text(self.country.clone()),
            Value::text(self.site.clone()),
            Value::text(self.operator.clone()),
            Value::text(self.description.clone()),
            Value::Text(self.snp_chip_id.clone()),
            Value::bool(self.snp_accept_vlek),
            Value::Text(self.tpm_ek_digest.clone()),
            Value::Text(self.tpm_ak_name.clone()),
            Value::Bytes(self.tpm_ek_certificate.clone()),
            Value::text(self.enrollment_record.clone()),
            Value::int(self.enrolled_unix_ms),
            Value::text(self.enrolled_by.clone()),
            Value::Int(self.revoked_unix_ms),
            Value::Text(self.revoked_by.clone()),
            Value::Text(self.revocation_reason.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            id: v.text("id")?,
            kind: v.text("kind")?,
            status: HardwareStatus::parse(&v.text("status")?).ok_or("status is not active or revoked")?,
            country: v.text("country")?,
            site: v.text("site")?,
            operator: v.text("operator")?,
            description: v.text("description")?,
            snp_chip_id: v.opt_text("snp_chip_id")?,
            snp_accept_vlek: v.bool("snp_accept_vlek")?,
            tpm_ek_digest: v.opt_text("tpm_ek_digest")?,
            tpm_ak_name: v.opt_text("tpm_ak_name")?,
            tpm_ek_certificate: v.opt_bytes("tpm_ek_certificate")?,
            enrollment_record: v.text("enrollment_record")?,
            enrolled_unix_ms: v.int("enrolled_unix_ms")?,
            enrolled_by: v.text("enrolled_by")?,
            revoked_unix_ms: v.opt_int("revoked_unix_ms")?,
            revoked_by: v.opt_text("revoked_by")?,
            revocation_reason: v.opt_text("revocation_reason")?,
        })
    }
}

// ----- admin_requests ----------------------------------------------------------------------------

/// A signed admin request an unsealed replica took, by its nonce, kept until the request is
/// stale on every replica. Tracked by the state log, so a row deleted to let the request run
/// again is missed by every replica (`row_rollback`), not only by the one that took it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminRequestRow {
    /// The request's nonce (hex).
    pub nonce: String,
    /// When the request can no longer be fresh anywhere.
    pub expires_unix_ms: i64,
}

impl Row for AdminRequestRow {
    const TABLE: Table = Table::AdminRequests;
    const COLUMNS: &'static [Column] = &[text("nonce"), int("expires_unix_ms")];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![Value::text(self.nonce.clone()), Value::int(self.expires_unix_ms)]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            nonce: v.text("nonce")?,
            expires_unix_ms: v.int("expires_unix_ms")?,
        })
    }
}

// ----- tpm_enrollments ---------------------------------------------------------------------------

/// A TPM credential-activation attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmEnrollmentRow {
    /// Attempt id.
    pub id: String,
    /// EK digest (hex).
    pub ek_digest: String,
    /// EK certificate (DER).
    pub ek_certificate: Vec<u8>,
    /// What the EK certificate showed (JSON).
    pub ek_record: String,
    /// AK TPM2B_PUBLIC.
    pub ak_public: Vec<u8>,
    /// AK name (hex).
    pub ak_name: String,
    /// SHA-256 of the credential secret.
    pub secret_sha256: Vec<u8>,
    /// The principal that asked.
    pub requested_by: String,
    /// Expiry.
    pub expires_unix_ms: i64,
    /// When it was used (claimed by an enrolment, or burnt by a wrong answer).
    pub used_unix_ms: Option<i64>,
}

impl Row for TpmEnrollmentRow {
    const TABLE: Table = Table::TpmEnrollments;
    const COLUMNS: &'static [Column] = &[
        text("id"),
        text("ek_digest"),
        bytes("ek_certificate"),
        text("ek_record"),
        bytes("ak_public"),
        text("ak_name"),
        bytes("secret_sha256"),
        text("requested_by"),
        int("expires_unix_ms"),
        int("used_unix_ms"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.id.clone()),
            Value::text(self.ek_digest.clone()),
            Value::bytes(self.ek_certificate.clone()),
            Value::text(self.ek_record.clone()),
            Value::bytes(self.ak_public.clone()),
            Value::text(self.ak_name.clone()),
            Value::bytes(self.secret_sha256.clone()),
            Value::text(self.requested_by.clone()),
            Value::int(self.expires_unix_ms),
            Value::Int(self.used_unix_ms),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            id: v.text("id")?,
            ek_digest: v.text("ek_digest")?,
            ek_certificate: v.bytes("ek_certificate")?,
            ek_record: v.text("ek_record")?,
            ak_public: v.bytes("ak_public")?,
            ak_name: v.text("ak_name")?,
            secret_sha256: v.bytes("secret_sha256")?,
            requested_by: v.text("requested_by")?,
            expires_unix_ms: v.int("expires_unix_ms")?,
            used_unix_ms: v.opt_int("used_unix_ms")?,
        })
    }
}

// ----- proposals, approvals, rejections ----------------------------------------------------------

/// Where a proposal is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ProposalStatus {
    /// Waiting for approvals.
    Pending,
    /// The quorum was reached and the operation ran.
    Executed,
    /// It was withdrawn, or rejected by so many that the quorum cannot be reached.
    Rejected,
    /// It was not approved in time.
    Expired,
    /// The quorum was reached but the operation was refused.
    Failed,
}

impl ProposalStatus {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Executed => "executed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "executed" => Self::Executed,
            "rejected" => Self::Rejected,
            "expired" => Self::Expired,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// A stored proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProposalRow {
    /// Id ("prop-" and 32 hex digits).
    pub id: String,
    /// The operation's name.
    pub operation: String,
    /// The serialized QuorumOperation.
    pub payload: Vec<u8>,
    /// SHA-256 of `payload`.
    pub digest: Vec<u8>,
    /// Human-readable summary.
    pub summary: String,
    /// Who proposed it.
    pub proposed_by: AdminId,
    /// When.
    pub created_unix_ms: i64,
    /// Until when it can be approved.
    pub expires_unix_ms: i64,
    /// Approvals recorded when it closed (or so far).
    pub approvals: u32,
    /// Status.
    pub status: ProposalStatus,
    /// When it was closed.
    pub closed_unix_ms: Option<i64>,
    /// Who closed it (the approver who reached the quorum, or the rejecter).
    pub closed_by: Option<String>,
    /// The outcome text.
    pub outcome: String,
}

impl ProposalRow {
    /// The status as seen at `now`: a pending proposal past its expiry is expired.
    pub fn status_at(&self, now: i64) -> ProposalStatus {
        if self.status == ProposalStatus::Pending && self.expires_unix_ms <= now {
            ProposalStatus::Expired
        } else {
            self.status
        }
    }
}

impl Row for ProposalRow {
    const TABLE: Table = Table::Proposals;
    const COLUMNS: &'static [Column] = &[
        text("id"),
        text("operation"),
        bytes("payload"),
        bytes("digest"),
        text("summary"),
        text("proposed_by"),
        int("created_unix_ms"),
        int("expires_unix_ms"),
        int("approvals"),
        text("status"),
        int("closed_unix_ms"),
        text("closed_by"),
        text("outcome"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.id.clone()),
            Value::text(self.operation.clone()),
            Value::bytes(self.payload.clone()),
            Value::bytes(self.digest.clone()),
            Value::text(self.summary.clone()),
            Value::text(self.proposed_by.as_str()),
            Value::int(self.created_unix_ms),
            Value::int(self.expires_unix_ms),
            Value::int(self.approvals),
            Value::text(self.status.as_str()),
            Value::Int(self.closed_unix_ms),
            Value::Text(self.closed_by.clone()),
            Value::text(self.outcome.clone()),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            id: v.text("id")?,
            operation: v.text("operation")?,
            payload: v.bytes("payload")?,
            digest: v.bytes("digest")?,
            summary: v.text("summary")?,
            proposed_by: AdminId::parse(&v.text("proposed_by")?).map_err(|_| "proposed_by is not an admin id")?,
            created_unix_ms: v.int("created_unix_ms")?,
            expires_unix_ms: v.int("expires_unix_ms")?,
            approvals: v.u32("approvals")?,
            status: ProposalStatus::parse(&v.text("status")?).ok_or("status is not a proposal status")?,
            closed_unix_ms: v.opt_int("closed_unix_ms")?,
            closed_by: v.opt_text("closed_by")?,
            outcome: v.text("outcome")?,
        })
    }
}

/// One approval: the approver's signed request and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalRow {
    /// The proposal.
    pub proposal_id: String,
    /// The approving admin.
    pub admin_id: AdminId,
    /// The signed AdminRequest bytes (a Propose, an Approve carrying the digest, or a direct
    /// call of the operation).
    pub signed_payload: Vec<u8>,
    /// The admin's signature over them.
    pub signature: Vec<u8>,
    /// When.
    pub approved_unix_ms: i64,
}

impl Row for ApprovalRow {
    const TABLE: Table = Table::Approvals;
    const COLUMNS: &'static [Column] = &[
        text("proposal_id"),
        text("admin_id"),
        bytes("signed_payload"),
        bytes("signature"),
        int("approved_unix_ms"),
    ];
    const KEY: usize = 2;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.proposal_id.clone()),
            Value::text(self.admin_id.as_str()),
            Value::bytes(self.signed_payload.clone()),
            Value::bytes(self.signature.clone()),
            Value::int(self.approved_unix_ms),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            proposal_id: v.text("proposal_id")?,
            admin_id: admin_id(v)?,
            signed_payload: v.bytes("signed_payload")?,
            signature: v.bytes("signature")?,
            approved_unix_ms: v.int("approved_unix_ms")?,
        })
    }
}

/// One rejection: the admin's signed request and its signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectionRow {
    /// The proposal.
    pub proposal_id: String,
    /// The rejecting admin.
    pub admin_id: AdminId,
    /// Why.
    pub reason: String,
    /// The signed AdminRequest bytes.
    pub signed_payload: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
    /// When.
    pub rejected_unix_ms: i64,
}

impl Row for RejectionRow {
    const TABLE: Table = Table::Rejections;
    const COLUMNS: &'static [Column] = &[
        text("proposal_id"),
        text("admin_id"),
        text("reason"),
        bytes("signed_payload"),
        bytes("signature"),
        int("rejected_unix_ms"),
    ];
    const KEY: usize = 2;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.proposal_id.clone()),
            Value::text(self.admin_id.as_str()),
            Value::text(self.reason.clone()),
            Value::bytes(self.signed_payload.clone()),
            Value::bytes(self.signature.clone()),
            Value::int(self.rejected_unix_ms),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            proposal_id: v.text("proposal_id")?,
            admin_id: admin_id(v)?,
            reason: v.text("reason")?,
            signed_payload: v.bytes("signed_payload")?,
            signature: v.bytes("signature")?,
            rejected_unix_ms: v.int("rejected_unix_ms")?,
        })
    }
}

// ----- token_keys, checkpoint_keys ---------------------------------------------------------------

/// A token signing key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenKeyRow {
    /// Version (1, 2, …).
    pub version: u32,
    /// JWK thumbprint.
    pub kid: String,
    /// Ed25519 public key.
    pub public_key: Vec<u8>,
    /// The seed, wrapped under the root key.
    pub wrapped_seed: Vec<u8>,
    /// Created.
    pub created_unix_ms: i64,
    /// The root key generation that wrapped it.
    pub root_generation: u64,
}

impl Row for TokenKeyRow {
    const TABLE: Table = Table::TokenKeys;
    const COLUMNS: &'static [Column] = &[
        int("version"),
        text("kid"),
        bytes("public_key"),
        bytes("wrapped_seed"),
        int("created_unix_ms"),
        int("root_generation"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::int(self.version),
            Value::text(self.kid.clone()),
            Value::bytes(self.public_key.clone()),
            Value::bytes(self.wrapped_seed.clone()),
            Value::int(self.created_unix_ms),
            gen(self.root_generation),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            version: v.u32("version")?,
            kid: v.text("kid")?,
            public_key: v.bytes("public_key")?,
            wrapped_seed: v.bytes("wrapped_seed")?,
            created_unix_ms: v.int("created_unix_ms")?,
            root_generation: v.u64("root_generation")?,
        })
    }
}

/// A checkpoint signing key as stored. Even authenticated, its key is used or published only
/// after it is checked against the seal (the secret unwraps to the public key, or the HSM holds
/// it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointKeyRow {
    /// Hex of the first 16 bytes of SHA-256(public key); the primary key.
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub algorithm: String,
    /// Ed25519: 32 bytes; ES256: SEC1 uncompressed point.
    pub public_key: Vec<u8>,
    /// Software keys: the Ed25519 seed wrapped under the root key.
    pub wrapped_secret: Option<Vec<u8>>,
    /// HSM keys: the key's label in the HSM.
    pub hsm_label: Option<String>,
    /// The root key generation that wrapped the secret (or held by the seal at creation).
    pub root_generation: i64,
    /// Created.
    pub created_unix_ms: i64,
    /// No longer signs (still verifies the checkpoints it signed).
    pub retired_unix_ms: Option<i64>,
}

impl Row for CheckpointKeyRow {
    const TABLE: Table = Table::CheckpointKeys;
    const COLUMNS: &'static [Column] = &[
        text("kid"),
        text("algorithm"),
        bytes("public_key"),
        bytes("wrapped_secret"),
        text("hsm_label"),
        int("root_generation"),
        int("created_unix_ms"),
        int("retired_unix_ms"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.kid.clone()),
            Value::text(self.algorithm.clone()),
            Value::bytes(self.public_key.clone()),
            Value::Bytes(self.wrapped_secret.clone()),
            Value::Text(self.hsm_label.clone()),
            Value::int(self.root_generation),
            Value::int(self.created_unix_ms),
            Value::Int(self.retired_unix_ms),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            kid: v.text("kid")?,
            algorithm: v.text("algorithm")?,
            public_key: v.bytes("public_key")?,
            wrapped_secret: v.opt_bytes("wrapped_secret")?,
            hsm_label: v.opt_text("hsm_label")?,
            root_generation: v.int("root_generation")?,
            created_unix_ms: v.int("created_unix_ms")?,
            retired_unix_ms: v.opt_int("retired_unix_ms")?,
        })
    }
}

// ----- replicas, tpm_clocks (authenticated, not tracked) -----------------------------------------

/// An unsealed replica's heartbeat: the root generations it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRow {
    /// The replica's id.
    pub id: String,
    /// The current generation it holds.
    pub generation: u64,
    /// During a rotation, the next generation it holds too.
    pub next_generation: Option<u64>,
    /// When it last reported.
    pub seen_unix_ms: i64,
}

impl Row for ReplicaRow {
    const TABLE: Table = Table::Replicas;
    const COLUMNS: &'static [Column] = &[
        text("id"),
        int("generation"),
        int("next_generation"),
        int("seen_unix_ms"),
    ];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.id.clone()),
            gen(self.generation),
            opt_gen(self.next_generation),
            Value::int(self.seen_unix_ms),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            id: v.text("id")?,
            generation: v.u64("generation")?,
            next_generation: v
                .opt_int("next_generation")?
                .map(|n| u64::try_from(n).map_err(|_| "next_generation is out of range".to_owned()))
                .transpose()?,
            seen_unix_ms: v.int("seen_unix_ms")?,
        })
    }
}

/// The newest clock seen from a TPM AK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmClockRow {
    /// The AK's name (hex).
    pub ak_name: String,
    /// TPM reset count.
    pub reset_count: u32,
    /// TPM restart count.
    pub restart_count: u32,
    /// TPM clock.
    pub clock: u64,
}

impl Row for TpmClockRow {
    const TABLE: Table = Table::TpmClocks;
    const COLUMNS: &'static [Column] = &[text("ak_name"), int("reset_count"), int("restart_count"), int("clock")];
    const KEY: usize = 1;
    fn to_values(&self) -> Vec<Value> {
        vec![
            Value::text(self.ak_name.clone()),
            Value::int(self.reset_count),
            Value::int(self.restart_count),
            gen(self.clock),
        ]
    }
    fn from_values(v: &Values<'_>) -> Result<Self, String> {
        Ok(Self {
            ak_name: v.text("ak_name")?,
            reset_count: v.u32("reset_count")?,
            restart_count: v.u32("restart_count")?,
            clock: v.u64("clock")?,
        })
    }
}
