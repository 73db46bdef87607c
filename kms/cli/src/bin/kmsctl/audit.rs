//! Offline audit verification: reads `audit_log`, `audit_head` and the signed checkpoints
//! straight from the server's database (PostgreSQL or SQLite) in one read-only snapshot,
//! re-computes the hash chain and checks each checkpoint against pinned keys with kms-core's
//! [`AuditVerifier`], and names the first break and the entries no checkpoint vouches for. It
//! must never write to the database, never trust a hash it did not recompute, and never take the
//! database's own checkpoint keys for pinned ones.

use std::path::{Path, PathBuf};

use kms_core::audit::{AuditReport, AuditVerifier, Break, Checkpoint, CheckpointFault, CheckpointKey, Entry};
use kms_core::integrity::StateHead;
use kms_proto::v1 as pb;
use serde_json::{json, Value};

use crate::cli::Global;
use crate::client::{error_chain, Server};
use crate::error::Error;
use crate::files;
use crate::output::{self, Printer};

fn db_error(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::Configuration(c) => Error::usage(format!("--database: {c}")),
        other => Error::database_unreachable(error_chain(&other)),
    }
}

fn hash32(bytes: Vec<u8>, seq: i64, column: &str) -> Result<[u8; 32], Break> {
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| Break {
        seq,
        what: format!("its {column} is {} bytes, not 32", bytes.len()),
    })
}

/// The keys that verify checkpoints, and whether they were pinned by the operator.
struct TrustedKeys {
    keys: Vec<CheckpointKey>,
    pinned: bool,
}

/// Reads `--checkpoint-key` files: JSON as `kmsctl audit checkpoint-keys` writes it,
/// `{"keys": [{"kid", "algorithm", "public_key" (hex)}, ...]}`. Each kid must be its public key's.
fn read_key_files(paths: &[PathBuf]) -> Result<Vec<CheckpointKey>, Error> {
    let mut keys = Vec::new();
    for path in paths {
        let text = files::read_text(path)?;
        keys.extend(parse_key_file(&text).map_err(|e| Error::file("use the checkpoint key file", path, e))?);
    }
    Ok(keys)
}

fn parse_key_file(text: &str) -> Result<Vec<CheckpointKey>, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array (write it with `kmsctl audit checkpoint-keys`)")?;
    if list.is_empty() {
        return Err("it holds no key".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, k)| {
            let field = |name: &str| {
                k.get(name)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("key {i}: no {name:?} string"))
            };
            let public_key =
                hex::decode(field("public_key")?).map_err(|e| format!("key {i}: public_key is not hex: {e}"))?;
            CheckpointKey::parse(field("kid")?, field("algorithm")?, public_key).map_err(|e| format!("key {i}: {e}"))
        })
        .collect()
}

fn key_json(kid: &str, algorithm: &str, public_key: &[u8], created: i64, retired: i64) -> Value {
    json!({
        "kid": kid,
        "algorithm": algorithm,
        "public_key": hex::encode(public_key),
        "created_unix_ms": created,
        "retired_unix_ms": (retired != 0).then_some(retired),
    })
}

/// The auditor's state file: the checkpoint the last verification that passed ended at.
fn read_state_file(path: &Path) -> Result<Option<Checkpoint>, Error> {
    if !path.exists() {
        return Ok(None);
    }
    let text = files::read_text(path)?;
    let parse = || -> Result<Checkpoint, String> {
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
        let c = v.get("checkpoint").ok_or("no \"checkpoint\"")?;
        let int = |k: &str| c.get(k).and_then(Value::as_i64).ok_or(format!("no integer {k:?}"));
        let h32 = |k: &str| -> Result<[u8; 32], String> {
            let s = c.get(k).and_then(Value::as_str).ok_or(format!("no {k:?}"))?;
            hex::decode(s)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or(format!("{k} is not 32 bytes of hex"))
        };
        Ok(Checkpoint {
            seq: int("seq")?,
            hash: h32("hash")?,
            time_unix_ms: int("time_unix_ms")?,
            kid: c.get("kid").and_then(Value::as_str).ok_or("no \"kid\"")?.to_owned(),
            prev_seq: int("prev_seq")?,
            prev_id: h32("prev_id")?,
            state: StateHead {
                version: int("state_version")?,
                seq: int("state_seq")?,
                hash: h32("state_hash")?,
            },
        })
    };
    parse()
        .map(Some)
        .map_err(|e| Error::file("use the audit state file", path, e))
}

fn checkpoint_json(c: &Checkpoint) -> Value {
    json!({
        "seq": c.seq,
        "hash": hex::encode(c.hash),
        "time_unix_ms": c.time_unix_ms,
        "time": output::time(c.time_unix_ms),
        "kid": c.kid,
        "id": hex::encode(c.id()),
        "prev_seq": c.prev_seq,
        "prev_id": hex::encode(c.prev_id),
        "state_version": c.state.version,
        "state_seq": c.state.seq,
        "state_hash": hex::encode(c.state.hash),
    })
}

/// Replaces the state file (a new file written next to it, then renamed over it).
fn write_state_file(path: &Path, c: &Checkpoint) -> Result<(), Error> {
    let doc = json!({
        "about": "kmsctl audit verify --state: the last checkpoint a verification of this deployment's audit log ended at",
        "verified_at": output::time(kms_core::now_unix_ms()),
        "checkpoint": checkpoint_json(c),
    });
    Ok(files::write(path, format!("{doc:#}\n").as_bytes(), false)?)
}

/// `kmsctl audit verify`: the chain, the head, and the signed checkpoints against the keys in
/// `checkpoint_keys` files (pinned) or, without any, the database's own (with a warning).
pub(crate) async fn verify(
    p: &Printer,
    database: &str,
    batch: i64,
    checkpoint_keys: &[PathBuf],
    state_file: Option<&Path>,
    checkpoint_interval_secs: u64,
) -> Result<(), Error> {
    let pinned = read_key_files(checkpoint_keys)?;
    let anchor = state_file.map(read_state_file).transpose()?.flatten();
    let mut tx = kms_audit::snapshot(database).await.map_err(db_error)?;
    let head = kms_audit::head(&mut tx).await.map_err(db_error)?;
    let (db_keys, unusable) = kms_audit::checkpoint_keys(&mut tx).await.map_err(db_error)?;
    let trusted = if pinned.is_empty() {
        eprintln!(
            "warning: no --checkpoint-key: checkpoints are checked against the keys in the database itself, which \
             whoever can write the database can replace; they prove nothing against such an attacker. Pin the \
             server's keys: `kmsctl audit checkpoint-keys > checkpoint-keys.json`, then --checkpoint-key checkpoint-keys.json"
        );
        TrustedKeys {
            keys: db_keys.clone(),
            pinned: false,
        }
    } else {
        TrustedKeys {
            keys: pinned,
            pinned: true,
        }
    };
    // Keys the database holds that the operator did not pin: the server's new key (pin it), or
    // one someone else wrote there.
    let mut not_pinned: Vec<String> = db_keys
        .iter()
        .map(|k| k.kid().to_owned())
        .filter(|kid| !trusted.keys.iter().any(|k| k.kid() == kid))
        .collect();
    not_pinned.extend(unusable.iter().cloned());
    for kid in &not_pinned {
        eprintln!("warning: the database's checkpoint_keys holds key {kid}, which is not pinned");
    }
    let stored = kms_audit::checkpoints(&mut tx).await.map_err(db_error)?;
    let state_seqs: Vec<i64> = stored.iter().map(|(c, _)| c.state.seq).collect();
    let stored_states: Vec<(i64, i64, [u8; 32])> =
        stored.iter().map(|(c, _)| (c.seq, c.state.seq, c.state.hash)).collect();
    let mut verifier = AuditVerifier::new(&trusted.keys, stored);
    if let Some(a) = &anchor {
        verifier = verifier.with_anchor(a.clone());
    }
    let state = kms_audit::state_log(&mut tx, &state_seqs).await.map_err(db_error)?;

    let mut last_seq = 0i64;
    'read: loop {
        let rows = kms_audit::entries(&mut tx, last_seq, batch).await.map_err(db_error)?;
        for row in &rows {
            match row {
                Ok(e) => {
                    verifier.push(e);
                    last_seq = e.seq;
                }
                Err(b) => verifier.fail(b.clone(), true),
            }
            if verifier.chain_broken() {
                break 'read;
            }
        }
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < batch {
            break;
        }
    }
    // Nothing was written; ending the snapshot explicitly keeps it short on a busy server.
    let _ = tx.rollback().await;

    if !verifier.chain_broken() {
        let count = verifier.count();
        match head {
            None => verifier.fail(
                Break {
                    seq: count + 1,
                    what: "the audit_head row is missing".into(),
                },
                false,
            ),
            Some((head_seq, head_hash)) => match hash32(head_hash, head_seq, "head hash") {
                Err(b) => verifier.fail(b, false),
                Ok(h) => {
                    if let Some(b) = head_mismatch(count, verifier.head(), head_seq, h) {
                        verifier.fail(b, false);
                    }
                }
            },
        }
    }
    let report = verifier.finish();
    // The state log (which rows kmsd wrote, at which version) must chain, and hold at each
    // checkpoint the head that checkpoint signed.
    let state_fault = match &state {
        Err(what) => Some(what.clone()),
        Ok((_, found)) => stored_states
            .iter()
            .filter(|(seq, _, _)| report.last_checkpoint.as_ref().is_some_and(|c| *seq <= c.seq))
            .find(|(_, s, h)| found.get(s) != Some(h))
            .map(|(seq, s, _)| format!("checkpoint {seq} signed state log entry {s}, which the state log does not hold as signed: the database was rolled back or rewritten")),
    };
    let now = kms_core::now_unix_ms();
    let age_secs = report
        .last_checkpoint
        .as_ref()
        .map(|c| (now - c.time_unix_ms).max(0) / 1000);
    let stale = age_secs.is_some_and(|a| a > i64::try_from(checkpoint_interval_secs).unwrap_or(i64::MAX));
    if let (true, Some(a)) = (stale, age_secs) {
        eprintln!(
            "warning: the newest checkpoint is {a} s old, older than the checkpoint interval ({checkpoint_interval_secs} s): \
             the server stopped signing, or newer checkpoints were removed"
        );
    }
    let mut doc = report_json(&report, &trusted, &not_pinned);
    doc["state_log"] = json!({
        "ok": state_fault.is_none(),
        "entries": state.as_ref().map(|(n, _)| *n).unwrap_or(0),
        "reason": state_fault,
    });
    doc["newest_checkpoint_age_secs"] = json!(age_secs);
    doc["stale"] = json!(stale);
    doc["anchor"] = json!(anchor.as_ref().map(|a| json!({
        "seq": a.seq,
        "extended": report.anchor_fault.is_none(),
        "reason": report.anchor_fault,
    })));
    let first = report.first_break().or_else(|| {
        report.anchor_fault.as_ref().map(|what| Break {
            seq: anchor.as_ref().map_or(0, |a| a.seq),
            what: what.clone(),
        })
    });
    let first = first.or_else(|| {
        state_fault.as_ref().map(|what| Break {
            seq: report.entries,
            what: what.clone(),
        })
    });
    if first.is_some() {
        doc["ok"] = json!(false);
    } else if let (Some(path), Some(c)) = (state_file, &report.last_checkpoint) {
        write_state_file(path, c)?;
    }
    match first {
        Some(b) => Err(Error::Verification {
            what: format!(
                "broken at entry {}: {}\n{}",
                b.seq,
                b.what,
                report_human(&report, &trusted)
            ),
            json: doc,
        }),
        None => p.emit(doc, || {
            let mut out = format!(
                "ok: {} entries, head {}\n{}",
                report.entries,
                hex::encode(report.head),
                report_human(&report, &trusted)
            );
            if let Ok((n, _)) = &state {
                out.push_str(&format!("\nstate log: {n} entries, as the checkpoints signed it"));
            }
            if let Some(a) = &anchor {
                out.push_str(&format!(
                    "\nstate file: the checkpoints extend checkpoint {} verified before",
                    a.seq
                ));
            }
            if let (Some(path), Some(c)) = (state_file, &report.last_checkpoint) {
                out.push_str(&format!(
                    "\nstate file {} now names checkpoint {}",
                    path.display(),
                    c.seq
                ));
            }
            out
        }),
    }
}

fn gap_text(report: &AuditReport) -> String {
    let g = &report.gap;
    let span = match (g.first_time_unix_ms, g.last_time_unix_ms) {
        (Some(a), Some(b)) if g.entries > 0 => format!(" ({} to {})", output::time(a), output::time(b)),
        _ => String::new(),
    };
    match &report.last_checkpoint {
        Some(c) => format!(
            "{} entries after the last checkpoint at seq {} ({}){span}",
            g.entries,
            c.seq,
            output::time(c.time_unix_ms)
        ),
        None => format!("{} entries and no valid checkpoint{span}", g.entries),
    }
}

fn report_human(report: &AuditReport, keys: &TrustedKeys) -> String {
    let mut out = format!(
        "checkpoints: {} verified{}{}, {} key{} {}\n",
        report.checkpoints_verified,
        if report.bad_checkpoints.is_empty() {
            String::new()
        } else {
            format!(", {} bad", report.bad_checkpoints.len())
        },
        if report.checkpoints_unchecked == 0 {
            String::new()
        } else {
            format!(", {} past the break not checked", report.checkpoints_unchecked)
        },
        keys.keys.len(),
        if keys.keys.len() == 1 { "" } else { "s" },
        if keys.pinned {
            "pinned"
        } else {
            "from the database (NOT pinned)"
        },
    );
    for b in &report.bad_checkpoints {
        out.push_str(&format!(
            "bad checkpoint at seq {} (key {}): {}\n",
            b.seq, b.kid, b.fault
        ));
    }
    out.push_str(&gap_text(report));
    out
}

fn report_json(report: &AuditReport, keys: &TrustedKeys, not_pinned: &[String]) -> Value {
    let first = report.first_break();
    let g = &report.gap;
    json!({
        "ok": first.is_none(),
        "entries": report.entries,
        "verified_entries": report.entries,
        "head": hex::encode(report.head),
        "first_broken_seq": first.as_ref().map(|b| b.seq),
        "reason": first.as_ref().map(|b| b.what.clone()),
        "chain_break": report.chain_break.as_ref().map(|b| json!({ "seq": b.seq, "reason": b.what })),
        "checkpoints": {
            "verified": report.checkpoints_verified,
            "unchecked": report.checkpoints_unchecked,
            "bad": report.bad_checkpoints.iter().map(|b| json!({
                "seq": b.seq,
                "kid": b.kid,
                "fault": fault_name(&b.fault),
                "reason": b.fault.to_string(),
            })).collect::<Vec<_>>(),
        },
        "keys": {
            "pinned": keys.pinned,
            "kids": keys.keys.iter().map(CheckpointKey::kid).collect::<Vec<_>>(),
            "in_database_not_pinned": not_pinned,
        },
        "last_checkpoint": report.last_checkpoint.as_ref().map(|c| json!({
            "seq": c.seq,
            "hash": hex::encode(c.hash),
            "time_unix_ms": c.time_unix_ms,
            "time": output::time(c.time_unix_ms),
            "kid": c.kid,
        })),
        "gap": {
            "entries": g.entries,
            "first_time_unix_ms": g.first_time_unix_ms,
            "last_time_unix_ms": g.last_time_unix_ms,
            "summary": gap_text(report),
        },
    })
}

fn fault_name(f: &CheckpointFault) -> &'static str {
    match f {
        CheckpointFault::UnknownKey => "unknown_key",
        CheckpointFault::BadSignature => "bad_signature",
        CheckpointFault::HashMismatch { .. } => "hash_mismatch",
        CheckpointFault::BeyondChain { .. } => "beyond_chain",
        CheckpointFault::ChainBroken { .. } => "chain_broken",
        _ => "other",
    }
}

/// `kmsctl audit checkpoint-keys`: the server's checkpoint keys (GetAuditCheckpointKeys) as the
/// JSON document `audit verify --checkpoint-key` reads, on stdout in both formats so it can be
/// saved. Written only if a node verified against the node policy signed them (a proxy that
/// hands the auditor keys of its own could sign checkpoints over a rewritten log), and each
/// key's kid is checked against its public key.
pub(crate) async fn checkpoint_keys(g: &Global, p: &Printer) -> Result<(), Error> {
    let nodes = crate::node::required_nodes(g, "audit checkpoint-keys")?;
    let server = Server::connect(g).await?.trusting(nodes);
    let nodes = server.nodes("audit checkpoint-keys").await?;
    let nonce = kms_core::random_array::<32>().map_err(|e| Error::local(format!("random number generator: {e}")))?;
    let answer = match server
        .admin()
        .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest { nonce: nonce.to_vec() })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(server.failed(s).await),
    };
    let refused = |e: &kms_node::NodeError| {
        Error::check_failed(e.reason(), format!("{e}; no key was written"), serde_json::json!({}))
    };
    crate::node::signer(&server, nodes, &answer.node_public_key, refused)
        .await?
        .check(
            "the checkpoint keys",
            &kms_node::message::checkpoint_keys(&nonce, &answer.keys),
            &answer.node_signature,
        )
        .map_err(|e| refused(&e))?;
    let keys = answer.keys;
    let mut list = Vec::new();
    for k in &keys {
        CheckpointKey::parse(&k.kid, &k.algorithm, k.public_key.clone())
            .map_err(|e| Error::local(format!("the server sent an unusable checkpoint key {}: {e}", k.kid)))?;
        list.push(key_json(
            &k.kid,
            &k.algorithm,
            &k.public_key,
            k.created_unix_ms,
            k.retired_unix_ms,
        ));
    }
    if !p.is_json() {
        eprintln!(
            "{} checkpoint key{}: {}",
            keys.len(),
            if keys.len() == 1 { "" } else { "s" },
            keys.iter()
                .map(|k| format!("kid {} ({})", k.kid, k.algorithm))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let doc = json!({ "keys": list });
    let pretty = serde_json::to_string_pretty(&doc).map_err(|e| Error::local(e.to_string()))?;
    p.emit(doc, || pretty)
}

/// `kmsctl audit tail`: the last `count` entries, oldest first (not verified: `audit verify`
/// does that).
pub(crate) async fn tail(p: &Printer, database: &str, count: i64) -> Result<(), Error> {
    let mut tx = kms_audit::snapshot(database).await.map_err(db_error)?;
    let last = kms_audit::last_entries(&mut tx, count).await.map_err(db_error)?;
    let _ = tx.rollback().await;
    let mut entries = Vec::with_capacity(last.len());
    for e in last {
        match e {
            Ok(e) => entries.push(e),
            Err(b) => return Err(Error::local(format!("entry {}: {}", b.seq, b.what))),
        }
    }
    let doc: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "seq": e.seq,
                "time_unix_ms": e.record.time_unix_ms,
                "time": output::time(e.record.time_unix_ms),
                "caller": e.record.caller,
                "operation": e.record.operation,
                "key_id": e.record.key_id,
                "outcome": e.record.outcome,
                "reason": e.record.reason,
                "detail": serde_json::from_str::<Value>(&e.record.detail).unwrap_or_else(|_| Value::from(e.record.detail.clone())),
                "hash": hex::encode(e.hash),
            })
        })
        .collect();
    p.emit(Value::from(doc), || {
        if entries.is_empty() {
            return "the audit log is empty".into();
        }
        entries.iter().map(tail_line).collect::<Vec<_>>().join("\n")
    })
}

fn tail_line(e: &Entry) -> String {
    let r = &e.record;
    let mut line = format!(
        "{} {} {} {} {}",
        e.seq,
        output::time(r.time_unix_ms),
        r.caller,
        r.operation,
        r.outcome
    );
    if let Some(k) = &r.key_id {
        line.push_str(&format!(" key={k}"));
    }
    if !r.reason.is_empty() {
        line.push_str(&format!(" reason={}", r.reason));
    }
    if r.detail != "{}" && !r.detail.is_empty() {
        line.push_str(&format!(" {}", r.detail));
    }
    line
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
    use kms_core::audit::{chain, Record, GENESIS};

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
    fn key_files_are_parsed_and_kids_checked() {
        let seed = kms_core::secret::SecretKey::<32>::generate().unwrap();
        let signer = kms_core::audit::CheckpointSigner::from_seed(&seed).unwrap();
        let k = signer.key();
        let doc = json!({ "keys": [key_json(k.kid(), "EdDSA", k.public_key(), 1, 0)] }).to_string();
        assert_eq!(parse_key_file(&doc).unwrap(), vec![k.clone()]);
        let wrong = json!({ "keys": [key_json(&"00".repeat(16), "EdDSA", k.public_key(), 1, 0)] }).to_string();
        assert!(parse_key_file(&wrong).unwrap_err().contains("not the id"));
        assert!(parse_key_file("{}").is_err());
        assert!(parse_key_file(r#"{"keys": []}"#).is_err());
    }

    #[test]
    fn reports_name_the_first_break_and_the_gap() {
        let seed = kms_core::secret::SecretKey::<32>::generate().unwrap();
        let signer = kms_core::audit::CheckpointSigner::from_seed(&seed).unwrap();
        let entries = chain(
            0,
            GENESIS,
            (0..4)
                .map(|i| Record {
                    time_unix_ms: i,
                    caller: "cn:a".into(),
                    operation: "decrypt".into(),
                    key_id: None,
                    outcome: "allowed".into(),
                    reason: String::new(),
                    detail: "{}".into(),
                })
                .collect(),
        );
        let c = Checkpoint {
            seq: 2,
            hash: entries[1].hash,
            time_unix_ms: 0,
            kid: signer.key().kid().to_owned(),
            prev_seq: 0,
            prev_id: [0; 32],
            state: StateHead::default(),
        };
        let sig = signer.sign(&c);
        let keys = TrustedKeys {
            keys: vec![signer.key().clone()],
            pinned: true,
        };
        let mut v = AuditVerifier::new(&keys.keys, vec![(c, sig)]);
        entries.iter().for_each(|e| v.push(e));
        let r = v.finish();
        let j = report_json(&r, &keys, &[]);
        assert_eq!(j["ok"], true);
        assert_eq!(j["checkpoints"]["verified"], 1);
        assert_eq!(j["gap"]["entries"], 2);
        assert!(report_human(&r, &keys).ends_with(
            "2 entries after the last checkpoint at seq 2 (1970-01-01T00:00:00Z) (1970-01-01T00:00:00Z to 1970-01-01T00:00:00Z)"
        ), "{}", report_human(&r, &keys));

        let mut v = AuditVerifier::new(&[], vec![]);
        entries[..2].iter().for_each(|e| v.push(e));
        v.push(&entries[3]);
        let r = v.finish();
        let j = report_json(&r, &keys, &["x".into()]);
        assert_eq!(j["ok"], false);
        assert_eq!(j["first_broken_seq"], 3);
        assert_eq!(j["keys"]["in_database_not_pinned"][0], "x");
    }
}
