//! Offline audit verification: reads `audit_log` and `audit_head` straight from the server's
//! database (PostgreSQL or SQLite) in one read-only snapshot, re-computes the hash chain with
//! kms-core's [`ChainVerifier`] and names the first broken entry. It must never write to the
//! database, and never trust a hash it did not recompute.

use kms_core::audit::{Break, ChainVerifier, Entry, Record};
use serde_json::json;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, Row as _, Transaction};

use crate::client::error_chain;
use crate::error::Error;
use crate::output::Printer;

fn db_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Configuration(c) => Error::usage(format!("--database: {c}")),
        other => Error::database_unreachable(error_chain(&other)),
    }
}

/// A chain break as the error `kmsctl` exits with.
fn broken(b: Break, verified: i64) -> Error {
    Error::Verification {
        what: format!("broken at entry {}: {}", b.seq, b.what),
        json: json!({
            "ok": false,
            "first_broken_seq": b.seq,
            "reason": b.what,
            "verified_entries": verified,
        }),
    }
}

fn hash32(bytes: Vec<u8>, seq: i64, column: &str) -> Result<[u8; 32], Break> {
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Break {
        seq,
        what: format!("its {column} is {} bytes, not 32", bytes.len()),
    })
}

/// One row as a chain entry. A field that cannot be read breaks the chain at that entry.
fn entry(row: &AnyRow) -> Result<Result<Entry, Break>, Error> {
    let seq: i64 = row.try_get("seq").map_err(db_error)?;
    let fields = || -> Result<Entry, sqlx::Error> {
        Ok(Entry {
            seq,
            record: Record {
                time_unix_ms: row.try_get("time_unix_ms")?,
                caller: row.try_get("caller")?,
                operation: row.try_get("operation")?,
                key_id: row.try_get("key_id")?,
                outcome: row.try_get("outcome")?,
                reason: row.try_get("reason")?,
                detail: row.try_get("detail")?,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        })
    };
    let unreadable = |e: sqlx::Error| Break {
        seq,
        what: format!("its row cannot be read: {e}"),
    };
    let mut e = match fields() {
        Ok(e) => e,
        Err(err) => return Ok(Err(unreadable(err))),
    };
    let blob = |column: &str| -> Result<[u8; 32], Break> {
        hash32(row.try_get::<Vec<u8>, _>(column).map_err(unreadable)?, seq, column)
    };
    match (blob("prev_hash"), blob("hash")) {
        (Ok(prev), Ok(hash)) => {
            e.prev_hash = prev;
            e.hash = hash;
            Ok(Ok(e))
        }
        (Err(b), _) | (_, Err(b)) => Ok(Err(b)),
    }
}

/// The consistent snapshot the whole check reads from, so a server appending meanwhile cannot
/// make the rows and the head disagree. SQLite's read transaction is a snapshot already;
/// PostgreSQL's default (read committed) is not.
async fn snapshot(database: &str) -> Result<Transaction<'static, Any>, Error> {
    sqlx::any::install_default_drivers();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(database)
        .await
        .map_err(db_error)?;
    let mut tx = pool.begin().await.map_err(db_error)?;
    if database.starts_with("postgres") {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    Ok(tx)
}

/// `kmsctl audit verify`.
pub(crate) async fn verify(p: &Printer, database: &str, batch: i64) -> Result<(), Error> {
    let mut tx = snapshot(database).await?;
    let head = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1")
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;

    let mut verifier = ChainVerifier::default();
    let mut last_seq = 0i64;
    loop {
        let rows = sqlx::query(
            "SELECT seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash \
             FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(last_seq)
        .bind(batch)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_error)?;
        for row in &rows {
            let e = entry(row)?.map_err(|b| broken(b, verifier.count()))?;
            verifier.push(&e).map_err(|b| broken(b, verifier.count()))?;
            last_seq = e.seq;
        }
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < batch {
            break;
        }
    }
    // Nothing was written; ending the snapshot explicitly keeps it short on a busy server.
    let _ = tx.rollback().await;

    let count = verifier.count();
    let Some(head) = head else {
        return Err(broken(
            Break {
                seq: count + 1,
                what: "the audit_head row is missing".into(),
            },
            count,
        ));
    };
    let head_seq: i64 = head.try_get("seq").map_err(db_error)?;
    let head_hash = head.try_get::<Vec<u8>, _>("hash").map_err(db_error)?;
    let head_hash = hash32(head_hash, head_seq, "head hash").map_err(|b| broken(b, count))?;
    if let Some(b) = head_mismatch(count, verifier.head(), head_seq, head_hash) {
        return Err(broken(b, count));
    }
    let head_hex = hex::encode(verifier.head());
    p.emit(json!({ "ok": true, "entries": count, "head": head_hex }), || {
        format!("ok: {count} entries, head {head_hex}")
    })
}

/// Whether the verified chain ends where `audit_head` says it does: a truncated (or extended)
/// tail keeps a valid chain, and only the head tells.
fn head_mismatch(count: i64, chain_hash: [u8; 32], head_seq: i64, head_hash: [u8; 32]) -> Option<Break> {
    if count < head_seq {
        Some(Break {
            seq: count + 1,
            what: format!("chain ends at {count} but the head says {head_seq} (entries are missing from the end)"),
        })
    } else if count > head_seq {
        Some(Break {
            seq: head_seq + 1,
            what: format!("chain goes on to {count} but the head says {head_seq} (entries were added past the head)"),
        })
    } else if chain_hash != head_hash {
        Some(Break {
            seq: count,
            what: format!(
                "its hash {} differs from the head's {}",
                hex::encode(chain_hash),
                hex::encode(head_hash)
            ),
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use kms_core::audit::{chain, GENESIS};

    use super::*;

    #[test]
    fn the_head_must_match_the_chain_end() {
        let entries = chain(
            0,
            GENESIS,
            vec![
                Record {
                    time_unix_ms: 1,
                    caller: "cn:a".into(),
                    operation: "decrypt".into(),
                    key_id: None,
                    outcome: "allowed".into(),
                    reason: String::new(),
                    detail: "{}".into(),
                };
                3
            ],
        );
        let last = entries[2].hash;
        assert!(head_mismatch(3, last, 3, last).is_none());
        assert!(head_mismatch(0, GENESIS, 0, GENESIS).is_none());
        let truncated = head_mismatch(2, entries[1].hash, 3, last).unwrap();
        assert_eq!(truncated.seq, 3);
        assert!(truncated.what.starts_with("chain ends at 2 but the head says 3"));
        assert_eq!(head_mismatch(3, last, 2, entries[1].hash).unwrap().seq, 3);
        assert_eq!(head_mismatch(3, last, 3, entries[1].hash).unwrap().seq, 3);
    }

    #[test]
    fn breaks_report_the_seq_in_both_formats() {
        let e = broken(
            Break {
                seq: 7,
                what: "x".into(),
            },
            6,
        );
        assert_eq!(e.to_string(), "broken at entry 7: x");
        let j = e.to_json();
        assert_eq!(j["first_broken_seq"], 7);
        assert_eq!(j["ok"], false);
    }
}
