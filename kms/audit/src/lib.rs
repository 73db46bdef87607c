//! Reads `kmsd`'s audit tables straight from its database (PostgreSQL or SQLite), for whoever
//! verifies the audit log without trusting `kmsd`: `kmsctl audit verify`, and the tests that play
//! an auditor. Every read is plain SQL in one read-only snapshot ([`snapshot`]); nothing here
//! decides whether the log is sound: [`kms_core::audit`] does that with the values read here.
//!
//! A value that cannot be read as the type it should have is not an error of the reader: a chain
//! entry becomes a [`Break`] at its seq, a hash of the wrong length reads as zeros (so whatever it
//! is part of does not verify), and a checkpoint key that does not parse is named as unusable.

use std::collections::BTreeMap;

use kms_core::audit::{Break, Checkpoint, CheckpointKey, Entry, Record};
use kms_core::integrity::{StateEntry, StateHead, StateOp, STATE_GENESIS};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyConnection;
use sqlx::{Any, Row as _, Transaction};

/// One consistent, read-only view of the database at `url`, so a server appending meanwhile
/// cannot make the rows and the head disagree. SQLite's read transaction is a snapshot already;
/// PostgreSQL's default isolation (read committed) is not, so it is raised to repeatable read.
pub async fn snapshot(url: &str) -> Result<Transaction<'static, Any>, sqlx::Error> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new().max_connections(1).connect(url).await?;
    let mut tx = pool.begin().await?;
    if url.starts_with("postgres") {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// The audit head: the seq and hash of the newest entry, if any was written.
pub async fn head(conn: &mut AnyConnection) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|r| Ok((r.try_get("seq")?, r.try_get("hash")?))).transpose()
}

/// Up to `limit` chain entries after `after`, in order. An entry whose row cannot be read breaks
/// the chain there.
pub async fn entries(
    conn: &mut AnyConnection,
    after: i64,
    limit: i64,
) -> Result<Vec<Result<Entry, Break>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash \
         FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(entry).collect()
}

/// The newest `count` chain entries, oldest first.
pub async fn last_entries(conn: &mut AnyConnection, count: i64) -> Result<Vec<Result<Entry, Break>>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash \
         FROM audit_log ORDER BY seq DESC LIMIT $1",
    )
    .bind(count)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().rev().map(entry).collect()
}

/// Every chain entry, in order; the first that cannot be read is the error.
pub async fn all_entries(conn: &mut AnyConnection) -> Result<Result<Vec<Entry>, Break>, sqlx::Error> {
    Ok(entries(conn, 0, i64::MAX).await?.into_iter().collect())
}

/// One `audit_log` row as a chain entry.
fn entry(row: &AnyRow) -> Result<Result<Entry, Break>, sqlx::Error> {
    let seq: i64 = row.try_get("seq")?;
    let unreadable = |e: sqlx::Error| Break {
        seq,
        what: format!("its row cannot be read: {e}"),
    };
    let fields = || -> Result<Record, sqlx::Error> {
        Ok(Record {
            time_unix_ms: row.try_get("time_unix_ms")?,
            caller: row.try_get("caller")?,
            operation: row.try_get("operation")?,
            key_id: row.try_get("key_id")?,
            outcome: row.try_get("outcome")?,
            reason: row.try_get("reason")?,
            detail: row.try_get("detail")?,
        })
    };
    let record = match fields() {
        Ok(r) => r,
        Err(e) => return Ok(Err(unreadable(e))),
    };
    let hash = |column: &str| -> Result<[u8; 32], Break> {
        let bytes: Vec<u8> = row.try_get(column).map_err(unreadable)?;
        <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Break {
            seq,
            what: format!("its {column} is {} bytes, not 32", bytes.len()),
        })
    };
    Ok(match (hash("prev_hash"), hash("hash")) {
        (Ok(prev_hash), Ok(hash)) => Ok(Entry {
            seq,
            record,
            prev_hash,
            hash,
        }),
        (Err(b), _) | (_, Err(b)) => Err(b),
    })
}

/// The keys in the database's `checkpoint_keys` table (whoever can write the database can put
/// keys there: pin the server's instead), and the kids of rows that do not parse as keys.
pub async fn checkpoint_keys(conn: &mut AnyConnection) -> Result<(Vec<CheckpointKey>, Vec<String>), sqlx::Error> {
    let rows = sqlx::query("SELECT kid, algorithm, public_key FROM checkpoint_keys ORDER BY created_unix_ms, kid")
        .fetch_all(&mut *conn)
        .await?;
    let mut keys = Vec::new();
    let mut unusable = Vec::new();
    for r in &rows {
        let kid: String = r.try_get("kid")?;
        let parsed = r
            .try_get::<String, _>("algorithm")
            .ok()
            .zip(r.try_get::<Vec<u8>, _>("public_key").ok())
            .and_then(|(alg, pk)| CheckpointKey::parse(&kid, &alg, pk).ok());
        match parsed {
            Some(k) => keys.push(k),
            None => unusable.push(kid),
        }
    }
    Ok((keys, unusable))
}

/// A 32-byte column, or zeros.
fn bytes32(r: &AnyRow, column: &str) -> Result<[u8; 32], sqlx::Error> {
    let v: Option<Vec<u8>> = r.try_get(column)?;
    Ok(v.as_deref().and_then(|b| b.try_into().ok()).unwrap_or([0; 32]))
}

/// Every stored checkpoint with its signature, oldest first.
pub async fn checkpoints(conn: &mut AnyConnection) -> Result<Vec<(Checkpoint, Vec<u8>)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash \
         FROM audit_checkpoints ORDER BY seq",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                Checkpoint {
                    seq: r.try_get("seq")?,
                    hash: bytes32(r, "hash")?,
                    time_unix_ms: r.try_get("time_unix_ms")?,
                    kid: r.try_get("kid")?,
                    prev_seq: r.try_get("prev_seq")?,
                    prev_id: bytes32(r, "prev_id")?,
                    state: StateHead {
                        version: r.try_get("state_version")?,
                        seq: r.try_get("state_seq")?,
                        hash: bytes32(r, "state_hash")?,
                    },
                },
                r.try_get("signature")?,
            ))
        })
        .collect()
}

/// The state log recomputed from the genesis hash: the last seq that chains, and the hash at
/// each of the `wanted` seqs (those the checkpoints name). `Err` names the first entry that does
/// not chain.
pub async fn state_log(
    conn: &mut AnyConnection,
    wanted: &[i64],
) -> Result<Result<(i64, BTreeMap<i64, [u8; 32]>), String>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT seq, version, tbl, row_key, op, row_digest, prev_hash, hash FROM state_log ORDER BY seq")
            .fetch_all(&mut *conn)
            .await?;
    let mut prev = STATE_GENESIS;
    let mut at = 0i64;
    let mut found = BTreeMap::new();
    if wanted.contains(&0) {
        found.insert(0, prev);
    }
    for r in &rows {
        let seq: i64 = r.try_get("seq")?;
        let op: String = r.try_get("op")?;
        let Some(op) = StateOp::parse(&op) else {
            return Ok(Err(format!("state log entry {seq} has an unknown operation")));
        };
        let entry = StateEntry {
            seq,
            version: r.try_get("version")?,
            table: r.try_get("tbl")?,
            key: r.try_get("row_key")?,
            op,
            digest: match r.try_get::<Option<Vec<u8>>, _>("row_digest")? {
                None => None,
                Some(d) => match <[u8; 32]>::try_from(d.as_slice()) {
                    Ok(d) => Some(d),
                    Err(_) => return Ok(Err(format!("state log entry {seq} has a malformed row digest"))),
                },
            },
        };
        let hash = bytes32(r, "hash")?;
        if seq != at + 1
            || bytes32(r, "prev_hash")? != prev
            || kms_core::integrity::state_entry_hash(&prev, &entry) != hash
        {
            return Ok(Err(format!("state log entry {} is missing or altered", at + 1)));
        }
        prev = hash;
        at = seq;
        if wanted.contains(&seq) {
            found.insert(seq, hash);
        }
    }
    Ok(Ok((at, found)))
}
