-- The sovereign admin plane: approval quorum and proposals, admin removal, root-key generations
-- (rotation and seal migration, resumable), root-key shares in the envelope format that an HSM
-- opens without the share leaving it, and signed audit checkpoints. Identical on PostgreSQL and
-- SQLite but for column type names.

-- M of the M-of-N approval quorum (distinct from the shamir unseal threshold), and which root
-- key generation is current.
ALTER TABLE seal_config ADD COLUMN approval_quorum BIGINT NOT NULL DEFAULT 1;
ALTER TABLE seal_config ADD COLUMN root_generation BIGINT NOT NULL DEFAULT 1;

-- Removed admins stay for the record (their past approvals and audit entries name them).
ALTER TABLE admins ADD COLUMN removed_unix_ms BIGINT;
ALTER TABLE admins ADD COLUMN removed_by TEXT;

-- Every root key generation: the seal that holds it (shamir: custodians' shares in root_shares;
-- pkcs11: an AES key in the HSM under hsm_label; dev: a file), its unseal threshold and check
-- value. During a rotation the next generation is 'pending' and next_root_wrapped holds it
-- wrapped under the current root (software roots only), so a rotation interrupted by a crash
-- resumes after the current root is unsealed again; it is erased when the rotation completes.
CREATE TABLE root_generations (
    generation BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    threshold BIGINT NOT NULL,
    kcv BYTEA NOT NULL,
    hsm_label TEXT,
    next_root_wrapped BYTEA,
    created_unix_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    completed_unix_ms BIGINT
);
INSERT INTO root_generations (generation, kind, status, threshold, kcv, created_unix_ms, created_by)
    SELECT 1, kind, 'active', threshold, kcv, created_unix_ms, 'migration' FROM seal_config;

-- Which root generation wrapped each KEK version and token signing seed.
ALTER TABLE key_versions ADD COLUMN root_generation BIGINT NOT NULL DEFAULT 1;
CREATE INDEX key_versions_generation ON key_versions (root_generation);
ALTER TABLE token_keys ADD COLUMN root_generation BIGINT NOT NULL DEFAULT 1;

-- Custodians' root-key shares per generation, each sealed to the custodian's share key (P-256
-- ECDH + AES-KW-PAD, see kms_core::share_wrap) so only their token opens it.
-- custodian_shares (HPKE-sealed shares of the pre-release format) is no longer read: a shamir
-- database initialized before this migration has to be initialized again (there was no release).
CREATE TABLE root_shares (
    generation BIGINT NOT NULL,
    admin_id TEXT NOT NULL REFERENCES admins (id),
    envelope BYTEA NOT NULL,
    PRIMARY KEY (generation, admin_id)
);

-- Proposals for quorum operations. payload is the exact canonical operation (a serialized
-- QuorumOperation) that every approval signs; status moves pending -> executed | rejected |
-- expired | failed exactly once (a conditional UPDATE), so the operation runs once on any
-- number of replicas.
CREATE TABLE proposals (
    id TEXT PRIMARY KEY,
    operation TEXT NOT NULL,
    payload BYTEA NOT NULL,
    digest BYTEA NOT NULL,
    summary TEXT NOT NULL,
    proposed_by TEXT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    expires_unix_ms BIGINT NOT NULL,
    approvals BIGINT NOT NULL,
    status TEXT NOT NULL,
    closed_unix_ms BIGINT,
    closed_by TEXT,
    outcome TEXT NOT NULL
);
CREATE INDEX proposals_status ON proposals (status, created_unix_ms);

-- Each approval is the approver's signed request (which carries the proposal's digest) and its
-- signature, kept so approvals can be re-verified later. One per admin and proposal.
CREATE TABLE approvals (
    proposal_id TEXT NOT NULL REFERENCES proposals (id),
    admin_id TEXT NOT NULL REFERENCES admins (id),
    signed_payload BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    approved_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (proposal_id, admin_id)
);

-- Rejections: a proposal closes as rejected once M approvals can no longer be reached (more
-- than N - M active admins rejected it), or when its proposer withdraws it; one admin alone
-- cannot veto. One per admin and proposal, each the admin's signed request.
CREATE TABLE rejections (
    proposal_id TEXT NOT NULL REFERENCES proposals (id),
    admin_id TEXT NOT NULL REFERENCES admins (id),
    reason TEXT NOT NULL,
    signed_payload BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    rejected_unix_ms BIGINT NOT NULL,
    PRIMARY KEY (proposal_id, admin_id)
);

-- Unsealed replicas and the root generations they hold, refreshed every second: a rotation
-- re-wraps nothing until every live replica holding the current generation also holds the next
-- one, so no replica ever reads a secret it cannot open.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    next_generation BIGINT,
    seen_unix_ms BIGINT NOT NULL
);

-- Keys that sign audit checkpoints. Held by the seal: an ECDSA P-256 key in the HSM (pkcs11
-- seal, hsm_label set) or an Ed25519 seed wrapped under the root key (software seals,
-- wrapped_secret set).
CREATE TABLE checkpoint_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL,
    public_key BYTEA NOT NULL,
    wrapped_secret BYTEA,
    hsm_label TEXT,
    root_generation BIGINT NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    retired_unix_ms BIGINT
);

-- Signed checkpoints: the audit chain's head (sequence number and hash) at a time, signed.
CREATE TABLE audit_checkpoints (
    seq BIGINT PRIMARY KEY,
    hash BYTEA NOT NULL,
    time_unix_ms BIGINT NOT NULL,
    kid TEXT NOT NULL,
    signature BYTEA NOT NULL
);
