//! The pkcs11 seal and root key rotation against a real kmsd and a real SoftHSM2 token, on
//! SQLite and PostgreSQL: init with the root key in the HSM and restart without humans; a
//! wrong token refused at start; root rotation shamir -> pkcs11 -> shamir (seal migration both
//! ways, by quorum), re-wrapping every KEK in small batches while blobs keep decrypting, a
//! server stopped in the middle resuming after restart, and the new custodians' shares
//! unsealing the last generation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::key_service_client::KeyServiceClient;
use kms_proto::v1::quorum_operation::Operation as QOp;
use kms_testkit::*;
use tonic::transport::Channel;
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";

/// SoftHSM2 sees only tokens that exist when the module is loaded into the process: every token
/// this file uses is made before any server starts.
struct Tokens {
    sqlite: softhsm_fixture::TestToken,
    postgres: softhsm_fixture::TestToken,
    other: softhsm_fixture::TestToken,
    dir: tempfile::TempDir,
}

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| Tokens {
        sqlite: softhsm_fixture::init_token(&softhsm_fixture::unique_label("kms-sqlite")),
        postgres: softhsm_fixture::init_token(&softhsm_fixture::unique_label("kms-pg")),
        other: softhsm_fixture::init_token(&softhsm_fixture::unique_label("kms-other")),
        dir: tempfile::tempdir().unwrap(),
    })
}

fn hsm_config(token: &softhsm_fixture::TestToken) -> kms_server::config::HsmSealConfig {
    kms_server::config::HsmSealConfig {
        module: softhsm_fixture::module_path(),
        token: kms_hsm::TokenSelector::Label(token.label.clone()),
        pin: kms_hsm::PinSource::File(token.pin_file(tokens().dir.path())),
        danger_accept_restored_database: false,
    }
}

fn token_for(backend: Backend) -> &'static softhsm_fixture::TestToken {
    match backend {
        Backend::Sqlite => &tokens().sqlite,
        Backend::Postgres => &tokens().postgres,
    }
}

fn opts(backend: Backend) -> Options {
    Options {
        hsm: Some(hsm_config(token_for(backend))),
        // Small, slow batches, so a rotation is observable (and interruptible) mid-way.
        rotation: kms_server::config::RotationPace {
            batch_size: 2,
            pause: Duration::from_millis(100),
        },
        ..Options::default()
    }
}

async fn status(admin: &mut pb::admin_service_client::AdminServiceClient<Channel>) -> pb::SealStatus {
    admin
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn rotate(seal: pb::SealKind, threshold: u32, custodians: &[&str]) -> QOp {
    QOp::RotateRoot(pb::RotateRootOp {
        seal: seal as i32,
        threshold,
        custodians: custodians.iter().map(|c| (*c).to_owned()).collect(),
    })
}

/// Waits until the rotation to `generation` has completed, decrypting every blob meanwhile.
async fn wait_rotated(
    c: &mut Ceremony,
    data: &mut KeyServiceClient<Channel>,
    blobs: &[(Vec<u8>, Vec<u8>)],
    generation: u64,
) {
    let start = Instant::now();
    loop {
        // Blobs decrypt throughout.
        decrypt_all(data, blobs).await;
        let s = status(&mut c.admin).await;
        if s.root_generation == generation && s.rotation.is_none() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rotation did not complete: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn generation_counts(db: &Db) -> Vec<(i64, i64)> {
    use sqlx::Row as _;
    let mut conn = db.connect().await;
    sqlx::query(
        "SELECT root_generation, COUNT(*) AS n FROM key_versions GROUP BY root_generation ORDER BY root_generation",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.try_get("root_generation").unwrap(), r.try_get("n").unwrap()))
    .collect()
}

async fn pkcs11_init_and_restart(backend: Backend) {
    let Some(db) = Db::new(backend).await else { return };
    let pki = Pki::new();
    let alice = admin("alice", "DE");
    let opts = |backend| Options {
        init_admins: Some(fingerprints([&alice])),
        ..opts(backend)
    };
    let mut server = TestServer::start(&db, &pki, opts(backend)).await;
    let mut admin_c = server.admin(&pki).await;
    let init = init_pkcs11_alone(&mut admin_c, &alice).await.unwrap();
    assert_eq!(
        (init.seal, init.sealed, init.root_generation),
        (pb::SealKind::Pkcs11 as i32, false, 1)
    );
    admin_c
        .create_key(signed(
            &alice,
            Op::CreateKey(pb::CreateKeyOp {
                name: "orders".into(),
                grants: grants_all(&[APP]),
                release_policy: UNATTESTED.into(),
                ..Default::default()
            }),
        ))
        .await
        .unwrap();
    let mut data = server.data(&pki, APP).await;
    let blobs = encrypt_all(&mut data, &["orders".to_owned()]).await;

    // Restart: the server unseals itself from the HSM; no custodian involved.
    server.stop().await;
    server = TestServer::start(&db, &pki, opts(backend)).await;
    let mut admin_c = server.admin(&pki).await;
    let s = status(&mut admin_c).await;
    assert!(!s.sealed, "{s:?}");
    assert_eq!(s.key_check_value, init.key_check_value);
    let mut data = server.data(&pki, APP).await;
    decrypt_all(&mut data, &blobs).await;
    // The pkcs11 seal cannot be sealed at run time (stopping the process does that).
    assert_refused(
        admin_c.seal(signed(&alice, Op::Seal(pb::SealOp {}))).await,
        Code::FailedPrecondition,
        "not_shamir",
    );
    // Audit checkpoints are signed by an ECDSA key in the HSM (one was written when the first
    // server stopped), and the published key verifies them.
    let keys = admin_c
        .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    let es256: Vec<_> = keys.iter().filter(|k| k.algorithm == "ES256").collect();
    assert_eq!(es256.len(), 1, "{keys:?}");
    let key = kms_core::audit::CheckpointKey::parse(&es256[0].kid, "ES256", es256[0].public_key.clone()).unwrap();
    server.stop().await;
    {
        let rows = stored_checkpoints(&db).await;
        let mut verified = 0;
        for (checkpoint, sig) in &rows {
            if checkpoint.kid != es256[0].kid {
                continue;
            }
            key.verify(checkpoint, sig).unwrap();
            verified += 1;
        }
        assert!(verified >= 1, "no HSM-signed checkpoint among {} rows", rows.len());
    }

    // A token without this root key (an HSM partition not there yet): the server starts sealed,
    // serves nothing key-related, and keeps trying.
    let wrong = Options {
        hsm: Some(hsm_config(&tokens().other)),
        ..opts(backend)
    };
    let server = TestServer::start(&db, &pki, wrong).await;
    let mut admin_c = server.admin(&pki).await;
    let s = status(&mut admin_c).await;
    assert!(s.sealed && s.seal == pb::SealKind::Pkcs11 as i32, "{s:?}");
    let mut data = server.data(&pki, APP).await;
    let e = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blobs[0].0.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((e.code(), reason(&e).as_str()), (Code::Unavailable, "sealed"));
    server.stop().await;

    // A wrong PIN is not retried (tokens lock after wrong PINs): the server does not start.
    let pin = tokens()
        .dir
        .path()
        .join(format!("{}-wrong.pin", token_for(backend).label));
    std::fs::write(&pin, "0000000000000000").unwrap();
    std::fs::set_permissions(&pin, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let wrong_pin = Options {
        hsm: Some(kms_server::config::HsmSealConfig {
            pin: kms_hsm::PinSource::File(pin),
            ..hsm_config(token_for(backend))
        }),
        ..opts(backend)
    };
    let Err(err) = TestServer::try_start(&db, &pki, wrong_pin).await else {
        panic!("a server with a wrong HSM PIN must not start")
    };
    assert!(err.contains("pkcs11 seal") && err.contains("PIN"), "{err}");
}
both_backends!(pkcs11_seal_init_and_restart, super::pkcs11_init_and_restart);

async fn rotation_and_migration(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, opts(backend)).await else {
        return;
    };
    let alice = admin_clone(&c.custodians[0]);
    let mut keys = Vec::new();
    for i in 0..7 {
        let name = format!("k{i}");
        c.create_key(&name, &[APP], UNATTESTED).await;
        keys.push(name);
    }
    let mut data = c.server.data(&c.pki, APP).await;
    let blobs = encrypt_all(&mut data, &keys).await;

    // shamir -> pkcs11 (quorum of one here: executes at once).
    let p = c
        .admin
        .propose(propose(&alice, rotate(pb::SealKind::Pkcs11, 0, &[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.status, pb::ProposalStatus::Executed as i32, "{p:?}");
    let s = status(&mut c.admin).await;
    let r = s.rotation.expect("rotation in progress");
    assert_eq!((r.to_generation, r.seal), (2, pb::SealKind::Pkcs11 as i32));
    // A second rotation cannot start meanwhile.
    assert_refused(
        c.admin
            .propose(propose(&alice, rotate(pb::SealKind::Pkcs11, 0, &[])))
            .await,
        Code::FailedPrecondition,
        "rotation_in_progress",
    );
    // New keys made during the rotation are wrapped under the new root.
    c.create_key("during", &[APP], UNATTESTED).await;
    keys.push("during".into());
    let mut blobs = blobs;
    blobs.extend(encrypt_all(&mut data, &["during".to_owned()]).await);

    // Stopped in the middle (some KEKs moved, some not), restarted: the server is sealed
    // (generation 1 is shamir), custodians unseal it with their generation-1 shares, and the
    // rotation resumes from where it stopped.
    let start = Instant::now();
    loop {
        let counts = generation_counts(&c.db).await;
        if counts.iter().any(|(g, _)| *g == 2) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no batch moved: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.restart(opts(backend)).await;
    let mid = generation_counts(&c.db).await;
    assert!(
        mid.iter().any(|(g, _)| *g == 1),
        "stopped too late to test resumption: {mid:?}"
    );
    assert!(status(&mut c.admin).await.sealed);
    c.unseal().await;
    let mut data = c.server.data(&c.pki, APP).await;
    wait_rotated(&mut c, &mut data, &blobs, 2).await;
    assert_eq!(generation_counts(&c.db).await, vec![(2, 8)]);
    let s = status(&mut c.admin).await;
    assert_eq!((s.seal, s.sealed), (pb::SealKind::Pkcs11 as i32, false));

    // Now the HSM holds the root: a restart needs no custodian.
    c.restart(opts(backend)).await;
    assert!(!status(&mut c.admin).await.sealed);
    let mut data = c.server.data(&c.pki, APP).await;
    decrypt_all(&mut data, &blobs).await;
    // The shamir shares of generation 1 are gone: custodians hold none now.
    assert_refused(
        c.admin
            .get_encrypted_share(signed(&alice, Op::GetEncryptedShare(pb::GetEncryptedShareOp {})))
            .await,
        Code::PermissionDenied,
        "not_a_custodian",
    );

    // pkcs11 -> shamir, 2-of-2 among bob and carol.
    let p = c
        .admin
        .propose(propose(&alice, rotate(pb::SealKind::Shamir, 2, &["bob", "carol"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.status, pb::ProposalStatus::Executed as i32, "{p:?}");
    wait_rotated(&mut c, &mut data, &blobs, 3).await;
    assert_eq!(generation_counts(&c.db).await, vec![(3, 8)]);
    c.restart(opts(backend)).await;
    let s = status(&mut c.admin).await;
    assert!(
        s.sealed && s.seal == pb::SealKind::Shamir as i32 && s.threshold == 2,
        "{s:?}"
    );
    // Alice is no longer a custodian; bob and carol unseal generation 3.
    assert_refused(
        c.admin
            .get_encrypted_share(signed(&alice, Op::GetEncryptedShare(pb::GetEncryptedShareOp {})))
            .await,
        Code::PermissionDenied,
        "not_a_custodian",
    );
    submit_share(&mut c.admin, &c.custodians[1]).await.unwrap();
    let s = submit_share(&mut c.admin, &c.custodians[2]).await.unwrap();
    assert!(!s.sealed, "{s:?}");
    let mut data = c.server.data(&c.pki, APP).await;
    decrypt_all(&mut data, &blobs).await;
}
both_backends!(root_rotation_and_seal_migration, super::rotation_and_migration);

fn admin_clone(k: &kms_core::keyfile::AdminKeyFile) -> kms_core::keyfile::AdminKeyFile {
    kms_core::keyfile::AdminKeyFile::decode(std::str::from_utf8(k.encode().expose_secret()).unwrap()).unwrap()
}

/// Three replicas on one PostgreSQL: A runs a rotation (new custodians), C is unsealed and must
/// follow it (adopt the next root before any KEK moves, then promote it), B is sealed throughout
/// and afterwards is unsealed by the new generation's custodians.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_a_rotation() {
    let backend = Backend::Postgres;
    let Some(mut c) = Ceremony::new(backend, opts(backend)).await else {
        return;
    };
    let alice = admin_clone(&c.custodians[0]);
    let replica_c = c.replica(opts(backend)).await;
    let replica_b = c.replica(opts(backend)).await;
    let mut admin_c = replica_c.admin(&c.pki).await;
    let mut admin_b = replica_b.admin(&c.pki).await;
    submit_share(&mut admin_c, &c.custodians[0]).await.unwrap();
    assert!(!submit_share(&mut admin_c, &c.custodians[1]).await.unwrap().sealed);

    let mut keys = Vec::new();
    for i in 0..6 {
        let name = format!("r{i}");
        c.create_key(&name, &[APP], UNATTESTED).await;
        keys.push(name);
    }
    let mut data_a = c.server.data(&c.pki, APP).await;
    let blobs = encrypt_all(&mut data_a, &keys).await;
    let mut data_c = replica_c.data(&c.pki, APP).await;
    decrypt_all(&mut data_c, &blobs).await;

    let p = c
        .admin
        .propose(propose(&alice, rotate(pb::SealKind::Shamir, 2, &["bob", "carol"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.status, pb::ProposalStatus::Executed as i32, "{p:?}");
    // C decrypts every blob throughout, while A's worker moves the KEKs.
    let start = Instant::now();
    loop {
        decrypt_all(&mut data_c, &blobs).await;
        let s = status(&mut c.admin).await;
        if s.root_generation == 2 && s.rotation.is_none() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rotation did not complete: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    decrypt_all(&mut data_c, &blobs).await;
    // C promoted the new generation within a second.
    let start = Instant::now();
    while status(&mut admin_c).await.root_generation != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replica C still on generation 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // B, sealed throughout, follows to generation 2: alice's old share is gone, bob and carol
    // unseal it with theirs.
    let start = Instant::now();
    while status(&mut admin_b).await.root_generation != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replica B still on generation 1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_refused(
        admin_b
            .get_encrypted_share(signed(&alice, Op::GetEncryptedShare(pb::GetEncryptedShareOp {})))
            .await,
        Code::PermissionDenied,
        "not_a_custodian",
    );
    submit_share(&mut admin_b, &c.custodians[1]).await.unwrap();
    assert!(!submit_share(&mut admin_b, &c.custodians[2]).await.unwrap().sealed);
    let mut data_b = replica_b.data(&c.pki, APP).await;
    decrypt_all(&mut data_b, &blobs).await;
}

/// A pkcs11 server with alice pinned for Init, checkpointing every 200 ms.
fn anchored_opts(backend: Backend, alice: &kms_core::keyfile::AdminKeyFile) -> Options {
    Options {
        init_admins: Some(fingerprints([alice])),
        checkpoint_interval: Duration::from_millis(200),
        ..opts(backend)
    }
}

/// A pkcs11 deployment on a new database, initialized by alice alone ([`anchored_opts`]).
async fn anchored_deployment(
    backend: Backend,
) -> Option<(
    Db,
    Pki,
    kms_core::keyfile::AdminKeyFile,
    TestServer,
    pb::admin_service_client::AdminServiceClient<Channel>,
)> {
    let db = Db::new(backend).await?;
    let pki = Pki::new();
    let alice = admin("alice", "DE");
    let server = TestServer::start(&db, &pki, anchored_opts(backend, &alice)).await;
    let mut admin_c = server.admin(&pki).await;
    init_pkcs11_alone(&mut admin_c, &alice).await.unwrap();
    Some((db, pki, alice, server, admin_c))
}

/// Alice's request to create key `name` for APP, unattested.
fn create_key_op(alice: &kms_core::keyfile::AdminKeyFile, name: &str) -> pb::SignedRequest {
    signed(
        alice,
        Op::CreateKey(pb::CreateKeyOp {
            name: name.into(),
            grants: grants_all(&[APP]),
            release_policy: UNATTESTED.into(),
            ..Default::default()
        }),
    )
}

/// With the pkcs11 seal the last checkpoint is anchored in the HSM: a database put back to an
/// earlier, genuine state (every table, its state log, audit log and checkpoints with it) is
/// refused when the server starts, though every row of it verifies: the server stays sealed and
/// says why.
async fn anchored_rollback(backend: Backend) {
    let Some((db, pki, alice, server, mut admin_c)) = anchored_deployment(backend).await else {
        return;
    };
    let opts = || anchored_opts(backend, &alice);
    let create = |name: &str| create_key_op(&alice, name);
    admin_c.create_key(create("before")).await.unwrap();
    let wait_checkpoint = |above: i64| {
        let db = &db;
        async move {
            for _ in 0..100 {
                if let Some((c, _)) = stored_checkpoints(db).await.last() {
                    if c.seq > above {
                        return c.seq;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("no checkpoint past {above}");
        }
    };
    let first = wait_checkpoint(0).await;
    drop_foreign_keys(&db).await;
    let restore = snapshot_database(&db, "early").await;
    // Later: a key created, checkpointed (and anchored in the HSM).
    admin_c.create_key(create("after")).await.unwrap();
    wait_checkpoint(first).await;
    server.stop().await;

    // The operator puts the earlier copy back: genuine rows, a consistent state log and audit
    // log, earlier checkpoints. No replica remembers the later state, but the HSM does.
    run_as_operator(&db, &restore).await;
    let server = TestServer::start(&db, &pki, opts()).await;
    let mut admin_c = server.admin(&pki).await;
    let s = status(&mut admin_c).await;
    assert!(s.sealed, "{s:?}");
    assert!(
        s.integrity_alarm.starts_with("state_rollback") && s.integrity_alarm.contains("anchor"),
        "{s:?}"
    );
    let mut data = server.data(&pki, APP).await;
    let e = data
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key: "before".into(),
            encryption_context: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "sealed");
    server.stop().await;

    // The restore was meant (a backup put back after losing the database): the host's operator
    // accepts it for one start. It is audited, the earlier state is served, the later one is
    // gone, and the next checkpoint is anchored again.
    let accept = Options {
        hsm: Some(kms_server::config::HsmSealConfig {
            danger_accept_restored_database: true,
            ..hsm_config(token_for(backend))
        }),
        ..opts()
    };
    let server = TestServer::start(&db, &pki, accept).await;
    let mut admin_c = server.admin(&pki).await;
    let s = status(&mut admin_c).await;
    assert!(!s.sealed && s.integrity_alarm.is_empty(), "{s:?}");
    let mut data = server.data(&pki, APP).await;
    let gen = |name: &str| pb::GenerateDataKeyWithoutPlaintextRequest {
        key: name.into(),
        encryption_context: Default::default(),
    };
    data.generate_data_key_without_plaintext(gen("before")).await.unwrap();
    let e = data
        .generate_data_key_without_plaintext(gen("after"))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "key_not_found");
    let restored_at = wait_checkpoint(first).await;
    let mut conn = db.connect().await;
    let accepted: Vec<String> = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE operation = 'integrity.violation' AND reason = 'state_rollback'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        accepted
            .iter()
            .any(|d| d.contains("accepted by --danger-accept-restored-database")),
        "{accepted:?}"
    );
    drop(conn);
    server.stop().await;

    // An ordinary start afterwards: the anchor names the restored deployment's own checkpoint.
    let server = TestServer::start(&db, &pki, opts()).await;
    let mut admin_c = server.admin(&pki).await;
    let s = status(&mut admin_c).await;
    assert!(!s.sealed && s.integrity_alarm.is_empty(), "{s:?}");
    assert!(stored_checkpoints(&db).await.iter().any(|(c, _)| c.seq == restored_at));
    server.stop().await;
}
both_backends!(pkcs11_seal_refuses_a_rolled_back_database, super::anchored_rollback);

/// Copies into `to` the checkpoints of `from` that it has no row for (by seq), as an operator
/// who keeps two copies of the database would to make each accept the other's anchor (a seq
/// the replica on `to` stores meanwhile keeps its own row).
async fn copy_checkpoints(from: &Db, to: &Db) {
    let have: Vec<i64> = stored_checkpoints(to).await.iter().map(|(c, _)| c.seq).collect();
    let mut conn = to.connect().await;
    for (c, sig) in stored_checkpoints(from).await {
        if have.contains(&c.seq) {
            continue;
        }
        sqlx::query(
            "INSERT INTO audit_checkpoints (seq, hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (seq) DO NOTHING",
        )
        .bind(c.seq)
        .bind(c.hash.to_vec())
        .bind(c.time_unix_ms)
        .bind(c.kid.clone())
        .bind(sig)
        .bind(c.prev_seq)
        .bind(c.prev_id.to_vec())
        .bind(c.state.version)
        .bind(c.state.seq)
        .bind(c.state.hash.to_vec())
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// The operator forks the database: after a clean stop it copies it, and runs one replica on
/// each copy, both with the deployment's HSM. Each copy then serves writes the other never
/// sees, and every row of each verifies. Every checkpoint round checks that the database holds
/// the checkpoint the HSM's anchor names and extends its state, and that the checkpoint is on
/// the audit chain the replica verifies: both replicas anchor there, so one of them raises
/// `state_rollback` and stops serving. With `copy`, the copies differ only in their audit
/// logs (no admin writes after the fork, so the state heads stay alike) and the operator
/// copies each copy's checkpoints into the other as they appear.
async fn forked(backend: Backend, copy: bool) {
    let Some((db, pki, alice, server, mut admin_c)) = anchored_deployment(backend).await else {
        return;
    };
    let opts = || anchored_opts(backend, &alice);
    let create = |name: &str| create_key_op(&alice, name);
    admin_c.create_key(create("shared")).await.unwrap();
    for _ in 0..100 {
        if !stored_checkpoints(&db).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!stored_checkpoints(&db).await.is_empty(), "no checkpoint");
    server.stop().await;
    let copy_db = db.fork().await;

    let servers = [
        TestServer::start(&db, &pki, opts()).await,
        TestServer::start(&copy_db, &pki, opts()).await,
    ];
    let mut admins = Vec::new();
    let mut data = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        let mut a = s.admin(&pki).await;
        let st = status(&mut a).await;
        assert!(!st.sealed && st.integrity_alarm.is_empty(), "replica {i}: {st:?}");
        data.push(s.data(&pki, APP).await);
        admins.push(a);
    }
    // Each copy takes writes of its own (a key the other never sees) and data calls, whose
    // audit entries its checkpoints cover.
    if !copy {
        for (i, a) in admins.iter_mut().enumerate() {
            a.create_key(create(&format!("only-on-{i}"))).await.unwrap();
        }
    }
    let gen = pb::GenerateDataKeyWithoutPlaintextRequest {
        key: "shared".into(),
        encryption_context: Default::default(),
    };
    let mut alarmed = Vec::new();
    for _ in 0..100 {
        for d in &mut data {
            let _ = d.generate_data_key_without_plaintext(gen.clone()).await;
        }
        if copy {
            copy_checkpoints(&db, &copy_db).await;
            copy_checkpoints(&copy_db, &db).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        alarmed.clear();
        for (i, a) in admins.iter_mut().enumerate() {
            let st = status(a).await;
            if !st.integrity_alarm.is_empty() {
                alarmed.push((i, st.integrity_alarm));
            }
        }
        if !alarmed.is_empty() {
            break;
        }
    }
    assert!(!alarmed.is_empty(), "neither replica of the forked database noticed");
    for (i, alarm) in &alarmed {
        assert!(
            // Copied across, the other copy's checkpoints may first be found off the chain the
            // replica recomputes (another of the round's checks), rather than at the anchor.
            alarm.starts_with("state_rollback") && (copy || (alarm.contains("anchor") && alarm.contains("forked"))),
            "replica {i}: {alarm}"
        );
        let e = data[*i]
            .generate_data_key_without_plaintext(gen.clone())
            .await
            .unwrap_err();
        assert_eq!(reason(&e), "state_rollback", "replica {i}: {e:?}");
    }
    for s in servers {
        s.stop().await;
    }
}
async fn forked_apart(backend: Backend) {
    forked(backend, false).await;
}
both_backends!(pkcs11_seal_stops_a_replica_on_a_forked_database, super::forked_apart);

async fn forked_with_copied_checkpoints(backend: Backend) {
    forked(backend, true).await;
}
both_backends!(
    pkcs11_seal_stops_a_fork_whose_checkpoints_are_copied_across,
    super::forked_with_copied_checkpoints
);
