-- Admin request nonces an unsealed replica took, authenticated and tracked by the state log like
-- every table kmsd acts on (0004), so that a row deleted to let a captured request run again is
-- a row_rollback on every replica, not only on the one that took it. admin_nonces stays for
-- sealed replicas, which hold no integrity key and record what they take there, unauthenticated
-- (any row in either table is a use).
CREATE TABLE admin_requests (
    nonce TEXT PRIMARY KEY,
    expires_unix_ms BIGINT NOT NULL,
    row_version BIGINT NOT NULL DEFAULT 0,
    row_generation BIGINT NOT NULL DEFAULT 0,
    row_mac BYTEA
);
CREATE INDEX admin_requests_expiry ON admin_requests (expires_unix_ms);
CREATE INDEX admin_requests_row_generation ON admin_requests (row_generation);
