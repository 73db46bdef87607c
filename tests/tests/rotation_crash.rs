//! Root key rotation interrupted by `kill -9` of a real `kmsd` process (pkcs11 seal on a real
//! SoftHSM2 token), on SQLite and PostgreSQL: the restarted process unseals itself from the HSM,
//! resumes re-wrapping where the killed one stopped, and completes; every blob decrypts before,
//! after the kill and after the rotation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::quorum_operation::Operation as QOp;
use kms_testkit::*;
use sqlx::Row as _;

const APP: &str = "spiffe://eu.example/app";

struct Setup {
    tokens: [softhsm_fixture::TestToken; 2],
    dir: tempfile::TempDir,
}

/// Tokens exist before any kmsd loads the module.
fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| Setup {
        tokens: [
            softhsm_fixture::init_token(&softhsm_fixture::unique_label("crash-sqlite")),
            softhsm_fixture::init_token(&softhsm_fixture::unique_label("crash-pg")),
        ],
        dir: tempfile::tempdir().unwrap(),
    })
}

async fn counts(db: &Db) -> (i64, i64) {
    let mut conn = db.connect().await;
    let rows = sqlx::query("SELECT root_generation, COUNT(*) AS n FROM key_versions GROUP BY root_generation")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let mut out = (0, 0);
    for r in rows {
        match r.try_get::<i64, _>("root_generation").unwrap() {
            1 => out.0 = r.try_get("n").unwrap(),
            2 => out.1 = r.try_get("n").unwrap(),
            g => panic!("unexpected generation {g}"),
        }
    }
    out
}

/// Rows of every authenticated table still authenticated under `generation`'s integrity key.
async fn rows_under(db: &Db, generation: i64) -> i64 {
    let mut conn = db.connect().await;
    let mut n = 0;
    for t in [
        "seal_config",
        "root_generations",
        "root_shares",
        "admins",
        "keys",
        "key_versions",
        "release_policies",
        "hardware",
        "tpm_enrollments",
        "proposals",
        "approvals",
        "rejections",
        "token_keys",
        "checkpoint_keys",
        "replicas",
        "tpm_clocks",
        "integrity_state",
    ] {
        let c: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {t} WHERE row_generation = $1"))
            .bind(generation)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        n += c;
    }
    n
}

async fn killed_mid_rotation(backend: Backend) {
    let token = &setup().tokens[matches!(backend, Backend::Postgres) as usize];
    let Some(db) = Db::new(backend).await else { return };
    let pki = Pki::new();
    let alice = admin("alice", "DE");
    let extra = format!(
        "[admin]\ninit_admins = [\"{}\"]\n[seal]\nrotation_batch_size = 1\nrotation_batch_pause_ms = 150\n[seal.pkcs11]\nmodule = \"{}\"\ntoken = \"label:{}\"\npin_file = \"{}\"\n",
        alice.public().fingerprint().unwrap(),
        softhsm_fixture::module_path().display(),
        token.label,
        token.pin_file(setup().dir.path()).display()
    );
    let mut kmsd = KmsdProcess::start(&db, &pki, &extra).await;
    let mut admin_c = kmsd.admin(&pki).await;
    init_pkcs11_alone(&mut admin_c, &alice).await.unwrap();
    // The audit checkpoint key of generation 1 (ES256 in the HSM), pinned by an auditor.
    let es256 = |keys: &[pb::AuditCheckpointKey]| -> Vec<String> {
        keys.iter()
            .filter(|k| k.algorithm == "ES256")
            .map(|k| k.kid.clone())
            .collect()
    };
    let first = admin_c
        .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(es256(&first).len(), 1, "{first:?}");
    let mut blobs = Vec::new();
    let mut data = kmsd.data(&pki, APP).await;
    for i in 0..12 {
        let name = format!("k{i}");
        admin_c
            .create_key(signed(
                &alice,
                Op::CreateKey(pb::CreateKeyOp {
                    name: name.clone(),
                    grants: grants_all(&[APP]),
                    release_policy: UNATTESTED.into(),
                    ..Default::default()
                }),
            ))
            .await
            .unwrap();
        let plaintext = format!("blob {i}").into_bytes();
        let e = data
            .encrypt(pb::EncryptRequest {
                key: name,
                plaintext: plaintext.clone(),
                encryption_context: Default::default(),
                sealed_plaintext: None,
            })
            .await
            .unwrap()
            .into_inner();
        blobs.push((e.ciphertext_blob, plaintext));
    }

    // A new root key in the HSM; the worker moves one KEK per 150 ms.
    admin_c
        .propose(propose(
            &alice,
            QOp::RotateRoot(pb::RotateRootOp {
                seal: pb::SealKind::Pkcs11 as i32,
                threshold: 0,
                custodians: Vec::new(),
            }),
        ))
        .await
        .unwrap();
    let start = Instant::now();
    loop {
        let (old, new) = counts(&db).await;
        if new >= 2 && old >= 2 {
            break;
        }
        assert!(old >= 2, "the rotation ran too fast to be interrupted: {old} left");
        assert!(start.elapsed() < Duration::from_secs(30), "no KEK moved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    decrypt_all(&mut data, &blobs).await;
    kmsd.kill_9();
    let (old, new) = counts(&db).await;
    assert!(old > 0 && new > 0, "killed mid-way: {old} / {new}");

    // Restarted: unsealed from the HSM without anyone, both roots held, rotation resumed. Once
    // every KEK is re-wrapped the worker re-authenticates every row under generation 2's
    // integrity key: killed again in the middle of that, it resumes it too.
    kmsd.restart(&pki).await;
    let mut admin_c = kmsd.admin(&pki).await;
    let mut data = kmsd.data(&pki, APP).await;
    let start = Instant::now();
    let mut killed_in_reauthentication = false;
    loop {
        if !killed_in_reauthentication && counts(&db).await == (0, 12) {
            let left = rows_under(&db, 1).await;
            if left > 0 {
                kmsd.kill_9();
                assert!(rows_under(&db, 1).await > 0 && rows_under(&db, 2).await > 0);
                killed_in_reauthentication = true;
                kmsd.restart(&pki).await;
                admin_c = kmsd.admin(&pki).await;
                data = kmsd.data(&pki, APP).await;
            }
        }
        decrypt_all(&mut data, &blobs).await;
        let s = admin_c
            .get_seal_status(pb::GetSealStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!s.sealed);
        if s.root_generation == 2 && s.rotation.is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rotation did not resume: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(counts(&db).await, (0, 12));
    assert!(
        killed_in_reauthentication,
        "the re-authentication ran too fast to be interrupted"
    );
    assert_eq!(
        rows_under(&db, 1).await,
        0,
        "rows left under generation 1's integrity key"
    );
    decrypt_all(&mut data, &blobs).await;
    // Both generations' checkpoint keys are still published (the retired one's key is still in
    // the HSM), so checkpoints signed before the rotation stay verifiable.
    let after = admin_c
        .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    let kids = es256(&after);
    assert_eq!(kids.len(), 2, "{after:?}");
    assert!(kids.contains(&es256(&first)[0]), "{after:?}");
    // And from a fresh process holding only generation 2.
    kmsd.restart(&pki).await;
    let mut data = kmsd.data(&pki, APP).await;
    decrypt_all(&mut data, &blobs).await;
}
both_backends!(rotation_killed_and_resumed, super::killed_mid_rotation);
