//! The audit log as the server writes it: every call (allowed or refused) has an entry with
//! caller, operation, key, outcome and reason; the chain verifies from the first entry; entries
//! carry no key material; editing, deleting or truncating rows is caught. (The same checks
//! through `kmsctl audit verify` are in kms/cli/tests.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_core::audit::{ChainVerifier, Entry};
use kms_proto::v1 as pb;
use kms_testkit::*;

const APP: &str = "spiffe://eu.example/app";

async fn entries(db: &Db) -> Vec<Entry> {
    let mut conn = db.connect().await;
    kms_audit::all_entries(&mut conn).await.unwrap().unwrap()
}

fn verify(entries: &[Entry]) -> Result<i64, kms_core::audit::Break> {
    let mut v = ChainVerifier::default();
    for e in entries {
        v.push(e)?;
    }
    Ok(v.count())
}

async fn audit_chain(backend: Backend) {
    let Some(c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    let key = c.create_key("audited", &[APP], UNATTESTED).await;
    let mut app = c.server.data(&c.pki, APP).await;
    let mut stranger = c.server.data(&c.pki, "spiffe://eu.example/stranger").await;
    let g = app
        .generate_data_key(pb::GenerateDataKeyRequest {
            key: "audited".into(),
            encryption_context: [("k".to_owned(), "v".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let refused = stranger
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: Default::default(),
            key: String::new(),
            ..Default::default()
        })
        .await;
    assert!(refused.is_err());
    let d = app
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: [("k".to_owned(), "v".to_owned())].into(),
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // A forged admin request (alice's id, another key) is recorded as unverified.
    let mallory = admin("alice", "DE");
    let forged = c
        .admin
        .clone()
        .list_keys(signed(
            &mallory,
            kms_proto::v1::admin_request::Operation::ListKeys(pb::ListKeysOp::default()),
        ))
        .await;
    assert!(forged.is_err());
    c.server.stop().await; // drains the audit queue

    let all = entries(&c.db).await;
    assert_eq!(verify(&all).unwrap(), all.len() as i64);
    let ops: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|e| {
            (
                e.record.operation.as_str(),
                e.record.outcome.as_str(),
                e.record.reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("admin.init", "allowed", ""),
            ("admin.create_key", "allowed", ""),
            ("generate_data_key", "allowed", ""),
            ("decrypt", "refused", "not_permitted"),
            ("decrypt", "allowed", ""),
            ("admin.list_keys", "refused", "bad_signature"),
        ]
    );
    assert_eq!(all[5].record.caller, "unverified:alice");
    assert_eq!(all[1].record.caller, "admin:alice");
    assert_eq!(all[2].record.caller, APP);
    assert_eq!(all[3].record.caller, "spiffe://eu.example/stranger");
    for e in &all[1..5] {
        assert_eq!(e.record.key_id.as_deref(), Some(key.id.as_str()));
    }
    // No key material anywhere in the log, in any encoding we might have used.
    let dump: String = all.iter().map(|e| format!("{:?}", e.record)).collect();
    use base64::Engine as _;
    for secret in [&g.plaintext, &d.plaintext] {
        assert!(!dump.contains(&hex::encode(secret)));
        assert!(!dump.contains(&base64::engine::general_purpose::STANDARD.encode(secret)));
        assert!(!dump.contains(&format!("{:?}", secret.as_slice())));
    }

    // Tampering: an edited row is named; a deleted row is named; a truncated tail disagrees with
    // the head.
    let mut conn = c.db.connect().await;
    sqlx::query("UPDATE audit_log SET outcome = 'allowed', reason = '' WHERE seq = 4")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(verify(&entries(&c.db).await).unwrap_err().seq, 4);
    sqlx::query("UPDATE audit_log SET outcome = 'refused', reason = 'not_permitted' WHERE seq = 4")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(verify(&entries(&c.db).await).unwrap(), 6);
    sqlx::query("DELETE FROM audit_log WHERE seq = 2")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(verify(&entries(&c.db).await).unwrap_err().seq, 2);
}
both_backends!(audit_chain_records_every_call_and_detects_tampering, super::audit_chain);
