//! `kmsctl audit verify --database URL` against a database a real `kmsd` wrote, on SQLite and
//! PostgreSQL: a clean chain verifies; an edited row, a deleted row and a truncated tail are each
//! caught and named, with exit code 1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_proto::v1 as pb;
use kms_testkit::*;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");

fn verify(url: &str) -> (i32, String, String) {
    let out = std::process::Command::new(KMSCTL)
        .args(["audit", "verify", "--database", url])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn tamper_cases(backend: Backend) {
    let Some(c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    c.create_key("audited", &["spiffe://eu/app"], UNATTESTED).await;
    let mut app = c.server.data(&c.pki, "spiffe://eu/app").await;
    for i in 0..5 {
        app.encrypt(pb::EncryptRequest {
            key: "audited".into(),
            plaintext: vec![i],
            encryption_context: Default::default(),
            sealed_plaintext: None,
        })
        .await
        .unwrap();
    }
    c.server.stop().await;

    let (code, out, err) = verify(&c.db.url);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("ok: 7 entries"), "{out}");

    let mut conn = c.db.connect().await;
    sqlx::query("UPDATE audit_log SET caller = 'someone-else' WHERE seq = 4")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, _, err) = verify(&c.db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken at entry 4"), "{err}");

    sqlx::query("UPDATE audit_log SET caller = 'spiffe://eu/app' WHERE seq = 4")
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(verify(&c.db.url).0, 0);
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, _, err) = verify(&c.db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("broken at entry 3"), "{err}");

    // Truncated tail: the chain that is left is consistent, but the head disagrees.
    let fresh = Ceremony::new(backend, Options::default()).await.unwrap();
    fresh.create_key("k", &["spiffe://eu/app"], UNATTESTED).await;
    fresh.create_key("k2", &["spiffe://eu/app"], UNATTESTED).await;
    fresh.server.stop().await;
    let mut conn = fresh.db.connect().await;
    sqlx::query("DELETE FROM audit_log WHERE seq = 3")
        .execute(&mut conn)
        .await
        .unwrap();
    let (code, _, err) = verify(&fresh.db.url);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains('3') || err.contains("head"), "{err}");
}
both_backends!(audit_verify_catches_tampering, super::tamper_cases);
