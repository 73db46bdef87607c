-- The initial schema. Identical on PostgreSQL and SQLite but for column type names.
-- Nothing here is a usable key: KEK material is wrapped under the root key, which is never stored;
-- custodians' shares are encrypted to their own keys.

-- One row once the service is initialized: which seal holds the root key, its quorum, and the
-- root key's check value (tells a right share set from a wrong one, reveals nothing).
CREATE TABLE seal_config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kind TEXT NOT NULL,
    threshold INTEGER NOT NULL,
    kcv BLOB NOT NULL,
    created_unix_ms INTEGER NOT NULL
);

CREATE TABLE admins (
    id TEXT PRIMARY KEY,
    country TEXT NOT NULL,
    signing_public_key BLOB NOT NULL,
    encryption_public_key BLOB NOT NULL,
    custodian INTEGER NOT NULL,
    created_unix_ms INTEGER NOT NULL
);

-- Each custodian's root-key share, HPKE-sealed to the custodian's encryption key.
CREATE TABLE custodian_shares (
    admin_id TEXT PRIMARY KEY REFERENCES admins (id),
    encapsulated_key BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);

-- Admin request nonces seen, kept until the request could no longer be fresh. The primary key
-- makes a replay fail on every replica.
CREATE TABLE admin_nonces (
    nonce BLOB PRIMARY KEY,
    expires_unix_ms INTEGER NOT NULL
);
CREATE INDEX admin_nonces_expiry ON admin_nonces (expires_unix_ms);

CREATE TABLE keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    state TEXT NOT NULL,
    latest_version INTEGER NOT NULL,
    grants TEXT NOT NULL,
    release_policy TEXT NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    updated_unix_ms INTEGER NOT NULL,
    deletion_unix_ms INTEGER
);
CREATE INDEX keys_deletion ON keys (state, deletion_unix_ms);

-- KEK versions, wrapped under the root key (AAD = key id, version). wrapped_kek is erased
-- (NULL) when the key is destroyed.
CREATE TABLE key_versions (
    key_id TEXT NOT NULL REFERENCES keys (id),
    version INTEGER NOT NULL,
    wrapped_kek BLOB,
    created_unix_ms INTEGER NOT NULL,
    destroyed_unix_ms INTEGER,
    PRIMARY KEY (key_id, version)
);

-- The audit chain. audit_head holds the last sequence number and hash; a writer locks it (by
-- updating it first) so replicas append in one order.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));

CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    time_unix_ms INTEGER NOT NULL,
    caller TEXT NOT NULL,
    operation TEXT NOT NULL,
    key_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
