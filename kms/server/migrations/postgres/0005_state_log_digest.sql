-- Each put in the state log also records the digest of the row's content as written
-- (kms_core::integrity::row_digest), so a row authenticated at a version by a transaction that
-- did not commit is not taken for the row committed at that version. NULL for deletes and for
-- entries written before this column.
ALTER TABLE state_log ADD COLUMN row_digest BYTEA;
