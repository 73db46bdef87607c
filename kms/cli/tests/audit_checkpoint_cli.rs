//! Signed audit checkpoints end to end, on SQLite and PostgreSQL: a real `kmsd` signs its audit
//! head (here: when it stops unsealed), `kmsctl audit checkpoint-keys` fetches the key to pin, and
//! `kmsctl audit verify --checkpoint-key` catches what the hash chain alone cannot: a row edited or
//! deleted with the rest of the chain and the head recomputed, a chain cut short with its head
//! fixed, a forged checkpoint and one signed by a key written into the database. Exit code 1 and
//! the first break named in every case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_core::audit::{chain, Checkpoint, CheckpointSigner, Entry, Record, GENESIS};
use kms_core::secret::SecretKey;
use kms_proto::v1 as pb;
use kms_testkit::*;
use serde_json::Value;
use sqlx::Row as _;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");
const APP: &str = "spiffe://eu/app";

fn kmsctl(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(KMSCTL).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Verify {
    url: String,
    keys: String,
}

impl Verify {
    /// `audit verify` with the pinned key file: (exit code, stdout, stderr).
    fn pinned(&self) -> (i32, String, String) {
        kmsctl(&[
            "audit",
            "verify",
            "--database",
            &self.url,
            "--checkpoint-key",
            &self.keys,
        ])
    }

    fn json(&self) -> (i32, Value) {
        let (code, out, _) = kmsctl(&[
            "--output",
            "json",
            "audit",
            "verify",
            "--database",
            &self.url,
            "--checkpoint-key",
            &self.keys,
        ]);
        (code, serde_json::from_str(&out).unwrap())
    }

    /// Asserts a failed verification whose first break is at `seq` and mentions `what`.
    fn broken(&self, seq: i64, what: &str) {
        let (code, _, err) = self.pinned();
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(&format!("broken at entry {seq}: ")), "{err}");
        assert!(err.contains(what), "{err}");
        let (code, j) = self.json();
        assert_eq!(code, 1);
        assert_eq!(j["ok"], false);
        assert_eq!(j["first_broken_seq"], seq, "{j}");
    }
}

async fn entries(conn: &mut sqlx::AnyConnection) -> Vec<Entry> {
    kms_audit::all_entries(conn).await.unwrap().unwrap()
}

/// Replaces the whole chain and its head with `records` chained afresh: what an attacker who can
/// write the database does to hide an edit.
async fn rewrite(conn: &mut sqlx::AnyConnection, records: Vec<Record>) {
    let chained = chain(0, GENESIS, records);
    sqlx::query("DELETE FROM audit_log").execute(&mut *conn).await.unwrap();
    for e in &chained {
        sqlx::query(
            "INSERT INTO audit_log (seq, time_unix_ms, caller, operation, key_id, outcome, reason, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(e.seq)
        .bind(e.record.time_unix_ms)
        .bind(e.record.caller.clone())
        .bind(e.record.operation.clone())
        .bind(e.record.key_id.clone())
        .bind(e.record.outcome.clone())
        .bind(e.record.reason.clone())
        .bind(e.record.detail.clone())
        .bind(e.prev_hash.to_vec())
        .bind(e.hash.to_vec())
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    let (seq, hash) = chained.last().map(|e| (e.seq, e.hash)).unwrap_or((0, GENESIS));
    sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
        .bind(seq)
        .bind(hash.to_vec())
        .execute(&mut *conn)
        .await
        .unwrap();
}

fn records(entries: &[Entry]) -> Vec<Record> {
    entries.iter().map(|e| e.record.clone()).collect()
}

async fn encrypt_some(c: &Ceremony, n: u8) {
    let mut app = c.server.data(&c.pki, APP).await;
    for i in 0..n {
        app.encrypt(pb::EncryptRequest {
            key: "audited".into(),
            plaintext: vec![i],
            encryption_context: Default::default(),
            sealed_plaintext: None,
        })
        .await
        .unwrap();
    }
}

async fn checkpoint_cases(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    c.create_key("audited", &[APP], UNATTESTED).await;
    encrypt_some(&c, 3).await;

    // The key to pin, fetched from the running server.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = c.pki.client_files("spiffe://test/kmsctl", "kmsctl");
    let server = format!("https://{}", c.server.addr);
    let ca = c.pki.ca_path();
    let global = [
        "--server",
        server.as_str(),
        "--tls-server-name",
        "localhost",
        "--ca",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    // The test kmsd has no hardware evidence: the keys are taken under the key it presents.
    let (code, keys_json, err) =
        kmsctl(&[&global[..], &["--danger-unattested-kmsd", "audit", "checkpoint-keys"]].concat());
    assert_eq!(code, 0, "{err}");
    let doc: Value = serde_json::from_str(&keys_json).unwrap();
    let kid = doc["keys"][0]["kid"].as_str().unwrap().to_owned();
    assert_eq!(doc["keys"][0]["algorithm"], "EdDSA");
    let keys = dir.path().join("checkpoint-keys.json");
    std::fs::write(&keys, &keys_json).unwrap();

    // Stopping unsealed signs the head (checkpoint 1); the restarted server is sealed, so the
    // unseal and more calls follow, and its stop signs again (checkpoint 2).
    c.restart(Options::default()).await;
    c.unseal().await;
    encrypt_some(&c, 2).await;
    c.server.stop().await;

    let v = Verify {
        url: c.db.url.clone(),
        keys: keys.to_str().unwrap().to_owned(),
    };
    let mut conn = c.db.connect().await;
    let original = entries(&mut conn).await;
    let cps: Vec<(i64, String)> = sqlx::query("SELECT seq, kid FROM audit_checkpoints ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("seq"), r.get("kid")))
        .collect();
    assert_eq!(cps.len(), 2, "{cps:?}");
    assert!(cps.iter().all(|(_, k)| *k == kid));
    let (first, last) = (cps[0].0, cps[1].0);
    assert_eq!(last, original.len() as i64);
    assert!(first >= 5 && first < last, "{cps:?}");

    // Clean: everything verifies, nothing after the last checkpoint.
    let (code, out, err) = v.pinned();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("ok: {last} entries")), "{out}");
    assert!(out.contains("checkpoints: 2 verified, 1 key pinned"), "{out}");
    assert!(
        out.contains(&format!("0 entries after the last checkpoint at seq {last}")),
        "{out}"
    );
    assert!(!err.contains("warning"), "{err}");
    let (code, j) = v.json();
    assert_eq!(
        (code, &j["checkpoints"]["verified"], &j["gap"]["entries"]),
        (0, &2.into(), &0.into())
    );
    // Without a pinned key it still verifies, but says loudly that it proves little.
    let (code, _, err) = kmsctl(&["audit", "verify", "--database", &c.db.url]);
    assert_eq!(code, 0);
    assert!(err.contains("warning: no --checkpoint-key"), "{err}");

    // An edited row: the chain breaks there.
    let mut edited = records(&original);
    edited[1].detail = r#"{"edited":true}"#.into();
    sqlx::query("UPDATE audit_log SET detail = $1 WHERE seq = 2")
        .bind(edited[1].detail.clone())
        .execute(&mut conn)
        .await
        .unwrap();
    v.broken(2, "altered");

    // The same edit with the chain and head recomputed: only the checkpoints tell.
    rewrite(&mut conn, edited).await;
    v.broken(first, "rewritten");
    let (_, j) = v.json();
    assert!(j["chain_break"].is_null(), "{j}");
    assert_eq!(j["checkpoints"]["bad"][0]["fault"], "hash_mismatch");
    assert_eq!(j["checkpoints"]["bad"].as_array().unwrap().len(), 2);

    // A deleted row: missing from the chain, and with the chain renumbered and recomputed, the
    // checkpoints no longer match (and the last one is past the shortened chain's end).
    rewrite(&mut conn, records(&original)).await;
    assert_eq!(v.pinned().0, 0);
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    v.broken(3, "missing");
    let mut removed = records(&original);
    removed.remove(2);
    rewrite(&mut conn, removed).await;
    v.broken(first, "rewritten");
    let (_, j) = v.json();
    assert_eq!(j["checkpoints"]["bad"][1]["fault"], "beyond_chain");

    // Truncated: the last entries gone and the head fixed to match.
    let keep = usize::try_from(first + 1).unwrap();
    rewrite(&mut conn, records(&original[..keep])).await;
    v.broken(last, "past the end of the chain");

    // A forged checkpoint under the pinned kid, signed by another key.
    rewrite(&mut conn, records(&original)).await;
    assert_eq!(v.pinned().0, 0);
    let attacker = CheckpointSigner::from_seed(&SecretKey::generate().unwrap()).unwrap();
    let mut forged = Checkpoint {
        seq: 1,
        hash: original[0].hash,
        time_unix_ms: original[0].record.time_unix_ms,
        kid,
        prev_seq: 0,
        prev_id: [0; 32],
        state: kms_core::integrity::StateHead::default(),
    };
    insert_checkpoint(&mut conn, &forged, &attacker.sign(&forged)).await;
    v.broken(1, "does not verify");
    sqlx::query("DELETE FROM audit_checkpoints WHERE seq = 1")
        .execute(&mut conn)
        .await
        .unwrap();

    // A key written into checkpoint_keys by the attacker, and a checkpoint it signed.
    sqlx::query(
        "INSERT INTO checkpoint_keys (kid, algorithm, public_key, wrapped_secret, hsm_label, root_generation, created_unix_ms) \
         VALUES ($1, 'EdDSA', $2, NULL, NULL, 1, 0)",
    )
    .bind(attacker.key().kid().to_owned())
    .bind(attacker.key().public_key().to_vec())
    .execute(&mut conn)
    .await
    .unwrap();
    forged.seq = 2;
    forged.hash = original[1].hash;
    forged.kid = attacker.key().kid().to_owned();
    insert_checkpoint(&mut conn, &forged, &attacker.sign(&forged)).await;
    v.broken(2, "not trusted (not pinned)");
    let (_, _, err) = v.pinned();
    assert!(
        err.contains(&format!(
            "checkpoint_keys holds key {}, which is not pinned",
            attacker.key().kid()
        )),
        "{err}"
    );
    // Trusting the database instead of a pinned key: the attacker's checkpoint alone breaks the
    // checkpoint chain (the server's first checkpoint follows it without naming it) ...
    let (code, _, err) = kmsctl(&["audit", "verify", "--database", &c.db.url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("claims to be the first checkpoint"), "{err}");
    // ... but with the server's checkpoints removed, the attacker's own chain is all there is,
    // and only a pinned key tells it from the server's.
    sqlx::query("DELETE FROM audit_checkpoints WHERE kid <> $1")
        .bind(attacker.key().kid().to_owned())
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, _, err) = kmsctl(&["audit", "verify", "--database", &c.db.url]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: no --checkpoint-key"), "{err}");
    v.broken(2, "not trusted (not pinned)");

    // `audit tail` shows the last entries, oldest first.
    let (code, out, err) = kmsctl(&[
        "--output",
        "json",
        "audit",
        "tail",
        "--database",
        &c.db.url,
        "--count",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    let tail: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(tail[1]["seq"], last);
    assert_eq!(tail[0]["seq"], last - 1);
    let (code, out, _) = kmsctl(&["audit", "tail", "--database", &c.db.url, "--count", "2"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.starts_with(&format!("{} ", last - 1)), "{out}");
}

async fn insert_checkpoint(conn: &mut sqlx::AnyConnection, c: &Checkpoint, signature: &[u8]) {
    sqlx::query(
        "INSERT INTO audit_checkpoints (seq, hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(c.seq)
    .bind(c.hash.to_vec())
    .bind(c.time_unix_ms)
    .bind(c.kid.clone())
    .bind(signature.to_vec())
    .bind(c.prev_seq)
    .bind(c.prev_id.to_vec())
    .bind(c.state.version)
    .bind(c.state.seq)
    .bind(c.state.hash.to_vec())
    .execute(&mut *conn)
    .await
    .unwrap();
}

both_backends!(audit_checkpoints_catch_tampering, super::checkpoint_cases);
