-- The database is not trusted for integrity (docs/threat-model.md, adversary 1): every row kmsd
-- acts on carries an authenticator kmsd computed under an integrity key the database does not
-- hold (HMAC-SHA-256 under a key wrapped by the root key of generation row_generation), over its
-- table, every column and its version (kms_core::integrity). row_version is the state version of
-- the transaction that last wrote the row; state_log records, per row written, the version it
-- was written at, as a hash chain whose head integrity_state holds (authenticated too), so an
-- older genuine row put back is told from the current one. Rows written before this migration
-- have no authenticator and are refused: a database initialized before it must be initialized
-- again (there was no release). Identical on PostgreSQL and SQLite but for column type names.

-- The deployment's identity, made at Init: every signed admin request names it.
ALTER TABLE seal_config ADD COLUMN deployment_id TEXT NOT NULL DEFAULT '';
-- Each generation's integrity key, wrapped under that generation's root key.
ALTER TABLE root_generations ADD COLUMN integrity_key BLOB;

-- Authenticated tables whose versions the state log tracks.
ALTER TABLE seal_config ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE seal_config ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE seal_config ADD COLUMN row_mac BLOB;
ALTER TABLE root_generations ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE root_generations ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE root_generations ADD COLUMN row_mac BLOB;
ALTER TABLE root_shares ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE root_shares ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE root_shares ADD COLUMN row_mac BLOB;
ALTER TABLE admins ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admins ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admins ADD COLUMN row_mac BLOB;
ALTER TABLE keys ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN row_mac BLOB;
ALTER TABLE key_versions ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE key_versions ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE key_versions ADD COLUMN row_mac BLOB;
ALTER TABLE release_policies ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE release_policies ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE release_policies ADD COLUMN row_mac BLOB;
ALTER TABLE hardware ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hardware ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE hardware ADD COLUMN row_mac BLOB;
ALTER TABLE tpm_enrollments ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tpm_enrollments ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tpm_enrollments ADD COLUMN row_mac BLOB;
ALTER TABLE proposals ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE proposals ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE proposals ADD COLUMN row_mac BLOB;
ALTER TABLE approvals ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN row_mac BLOB;
ALTER TABLE rejections ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rejections ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rejections ADD COLUMN row_mac BLOB;
ALTER TABLE token_keys ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE token_keys ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE token_keys ADD COLUMN row_mac BLOB;
ALTER TABLE checkpoint_keys ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE checkpoint_keys ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE checkpoint_keys ADD COLUMN row_mac BLOB;

-- Authenticated, not tracked: liveness and clock rows rewritten all the time, whose rollback
-- gains nothing (docs/threat-model.md).
ALTER TABLE replicas ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE replicas ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE replicas ADD COLUMN row_mac BLOB;
ALTER TABLE tpm_clocks ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tpm_clocks ADD COLUMN row_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tpm_clocks ADD COLUMN row_mac BLOB;

-- A root rotation re-authenticates rows generation by generation.
CREATE INDEX keys_row_generation ON keys (row_generation);
CREATE INDEX key_versions_row_generation ON key_versions (row_generation);
CREATE INDEX release_policies_row_generation ON release_policies (row_generation);
CREATE INDEX hardware_row_generation ON hardware (row_generation);
CREATE INDEX proposals_row_generation ON proposals (row_generation);
CREATE INDEX approvals_row_generation ON approvals (row_generation);

-- The state: its version (one per authenticated write transaction) and the state log's head.
-- Every authenticated write transaction updates it first, so such transactions serialize on
-- every replica.
CREATE TABLE integrity_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    log_seq INTEGER NOT NULL,
    log_hash BLOB NOT NULL,
    row_generation INTEGER NOT NULL,
    row_mac BLOB NOT NULL
);

-- One entry per row written: (version, table, key, put|delete), hash-chained.
CREATE TABLE state_log (
    seq INTEGER PRIMARY KEY,
    version INTEGER NOT NULL,
    tbl TEXT NOT NULL,
    row_key TEXT NOT NULL,
    op TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);

-- Checkpoints form a chain and sign the state head (kms_core::audit::Checkpoint).
ALTER TABLE audit_checkpoints ADD COLUMN prev_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_checkpoints ADD COLUMN prev_id BLOB;
ALTER TABLE audit_checkpoints ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_checkpoints ADD COLUMN state_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_checkpoints ADD COLUMN state_hash BLOB;
