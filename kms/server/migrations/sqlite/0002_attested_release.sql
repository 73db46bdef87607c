-- Attested release: challenges, the hardware registry, TPM enrolment attempts, TPM counters,
-- the token signing key, and release policy versions. Identical on PostgreSQL and SQLite but for
-- column type names.

-- Release policies are versioned with their key: the current document stays in keys, every
-- version (including the first) is kept here.
ALTER TABLE keys ADD COLUMN release_policy_version INTEGER NOT NULL DEFAULT 1;
CREATE TABLE release_policies (
    key_id TEXT NOT NULL REFERENCES keys (id),
    version INTEGER NOT NULL,
    document TEXT NOT NULL,
    set_unix_ms INTEGER NOT NULL,
    set_by TEXT NOT NULL,
    PRIMARY KEY (key_id, version)
);
INSERT INTO release_policies (key_id, version, document, set_unix_ms, set_by)
    SELECT id, 1, release_policy, created_unix_ms, 'migration' FROM keys;

-- Attestation challenges, each for the principal that asked. A nonce is consumed by one
-- conditional UPDATE, so across every replica exactly one Attest can use it.
CREATE TABLE attestation_nonces (
    nonce BLOB PRIMARY KEY,
    principal TEXT NOT NULL,
    expires_unix_ms INTEGER NOT NULL,
    used_unix_ms INTEGER
);
CREATE INDEX attestation_nonces_expiry ON attestation_nonces (expires_unix_ms);
-- Open challenges per principal (the per-principal limit counts them): used rows left out.
CREATE INDEX attestation_nonces_principal ON attestation_nonces (principal, expires_unix_ms) WHERE used_unix_ms IS NULL;

-- Approved hardware. An identity (chip id, EK, AK) can be active in one entry only; revoked
-- entries stay for the record.
CREATE TABLE hardware (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    country TEXT NOT NULL,
    site TEXT NOT NULL,
    operator TEXT NOT NULL,
    description TEXT NOT NULL,
    snp_chip_id TEXT,
    snp_accept_vlek INTEGER NOT NULL,
    tpm_ek_digest TEXT,
    tpm_ak_name TEXT,
    tpm_ek_certificate BLOB,
    enrollment_record TEXT NOT NULL,
    enrolled_unix_ms INTEGER NOT NULL,
    enrolled_by TEXT NOT NULL,
    revoked_unix_ms INTEGER,
    revoked_by TEXT,
    revocation_reason TEXT
);
CREATE UNIQUE INDEX hardware_active_chip ON hardware (snp_chip_id) WHERE status = 'active' AND snp_chip_id IS NOT NULL;
CREATE UNIQUE INDEX hardware_active_ek ON hardware (tpm_ek_digest) WHERE status = 'active' AND tpm_ek_digest IS NOT NULL;
CREATE UNIQUE INDEX hardware_active_ak ON hardware (tpm_ak_name) WHERE status = 'active' AND tpm_ak_name IS NOT NULL;

-- TPM credential-activation attempts (BeginTpmEnrollment). The secret is kept only as its
-- SHA-256; an attempt is used once.
CREATE TABLE tpm_enrollments (
    id TEXT PRIMARY KEY,
    ek_digest TEXT NOT NULL,
    ek_certificate BLOB NOT NULL,
    ek_record TEXT NOT NULL,
    ak_public BLOB NOT NULL,
    ak_name TEXT NOT NULL,
    secret_sha256 BLOB NOT NULL,
    requested_by TEXT NOT NULL,
    expires_unix_ms INTEGER NOT NULL,
    used_unix_ms INTEGER
);
CREATE INDEX tpm_enrollments_expiry ON tpm_enrollments (expires_unix_ms);
CREATE INDEX tpm_enrollments_principal ON tpm_enrollments (requested_by, expires_unix_ms) WHERE used_unix_ms IS NULL;

-- The newest clock info seen from each AK: quotes may not go back in time.
CREATE TABLE tpm_clocks (
    ak_name TEXT PRIMARY KEY,
    reset_count INTEGER NOT NULL,
    restart_count INTEGER NOT NULL,
    clock INTEGER NOT NULL
);

-- Token signing keys (Ed25519): the seed wrapped under the root key like a KEK, so every
-- replica signs and verifies with the same key.
CREATE TABLE token_keys (
    version INTEGER PRIMARY KEY,
    kid TEXT NOT NULL UNIQUE,
    public_key BLOB NOT NULL,
    wrapped_seed BLOB NOT NULL,
    created_unix_ms INTEGER NOT NULL
);
