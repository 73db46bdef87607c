//! Admin plane end to end: signed requests, jurisdictions, replay and staleness, the shamir seal
//! (sealed refusals, unseal with too few / wrong shares, restart), pagination, concurrent
//! rotation from two servers, and the audit chain, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_testkit::*;
use prost::Message;
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";

async fn authentication(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    let alice = &c.custodians[0];
    let list = || Op::ListKeys(pb::ListKeysOp::default());

    // Replay: the same signed request twice.
    let req = signed(alice, list());
    c.admin.list_keys(req.clone()).await.unwrap();
    assert_refused(c.admin.list_keys(req).await, Code::PermissionDenied, "replayed_request");

    // Stale timestamps (older than the window), and timestamps further in the future than the
    // clock-skew margin (30 s here); a little ahead is fine.
    assert_refused(
        c.admin
            .list_keys(signed_at(alice, list(), kms_core::now_unix_ms() - 301_000))
            .await,
        Code::PermissionDenied,
        "stale_request",
    );
    for ahead in [31_000i64, 301_000] {
        assert_refused(
            c.admin
                .list_keys(signed_at(alice, list(), kms_core::now_unix_ms() + ahead))
                .await,
            Code::PermissionDenied,
            "future_request",
        );
    }
    // The extremes are refused the same way (kmsd is a debug build here: an overflow would panic).
    for (at, reason) in [(i64::MIN, "stale_request"), (i64::MAX, "future_request")] {
        assert_refused(
            c.admin.list_keys(signed_at(alice, list(), at)).await,
            Code::PermissionDenied,
            reason,
        );
    }
    c.admin
        .list_keys(signed_at(alice, list(), kms_core::now_unix_ms() + 20_000))
        .await
        .unwrap();
    // Signature by someone else's key under alice's id.
    let mallory = admin("alice", "DE");
    assert_refused(
        c.admin.list_keys(signed(&mallory, list())).await,
        Code::PermissionDenied,
        "bad_signature",
    );
    // A tampered payload.
    let mut t = signed(alice, list());
    t.payload.push(0);
    let r = c.admin.list_keys(t).await;
    assert!(matches!(
        r.as_ref().map_err(reason).unwrap_err().as_str(),
        "bad_signature" | "malformed_request"
    ));
    // Unknown admin; operation not matching the method; garbage payload.
    assert_refused(
        c.admin.list_keys(signed(&admin("nobody", "DE"), list())).await,
        Code::PermissionDenied,
        "unknown_admin",
    );
    assert_refused(
        c.admin
            .list_keys(signed(
                alice,
                Op::ListAdmins(pb::ListAdminsOp { include_removed: false }),
            ))
            .await,
        Code::InvalidArgument,
        "operation_mismatch",
    );
    assert_refused(
        c.admin
            .list_keys(pb::SignedRequest {
                payload: vec![0xff; 10],
                signature: vec![],
            })
            .await,
        Code::InvalidArgument,
        "malformed_request",
    );
    // Short nonce.
    let req = pb::AdminRequest {
        admin_id: "alice".into(),
        timestamp_unix_ms: kms_core::now_unix_ms(),
        nonce: vec![1; 8],
        operation: Some(list()),
        deployment_id: deployment_of(alice),
    };
    let payload = req.encode_to_vec();
    let signature = kms_core::admin::AdminSigner::sign(alice.signer(), &payload).unwrap();
    assert_refused(
        c.admin.list_keys(pb::SignedRequest { payload, signature }).await,
        Code::InvalidArgument,
        "bad_nonce",
    );

    // Admins: add an EU admin; a non-EU admin is refused whoever asks; duplicates refused.
    let dora = admin("dora", "IE");
    let added = c
        .admin
        .add_admin(signed(
            alice,
            Op::AddAdmin(pb::AddAdminOp {
                admin: Some(new_admin(&dora, false)),
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.country, "IE");
    for (id, cc) in [("sam", "US"), ("gb", "GB"), ("cn", "CN")] {
        assert_refused(
            c.admin
                .add_admin(signed(
                    alice,
                    Op::AddAdmin(pb::AddAdminOp {
                        admin: Some(new_admin(&admin(id, cc), false)),
                    }),
                ))
                .await,
            Code::PermissionDenied,
            "country_not_allowed",
        );
    }
    assert_refused(
        c.admin
            .add_admin(signed(
                &dora,
                Op::AddAdmin(pb::AddAdminOp {
                    admin: Some(new_admin(&dora, false)),
                }),
            ))
            .await,
        Code::AlreadyExists,
        "admin_exists",
    );
    let mut bad = new_admin(&admin("eve", "DE"), false);
    bad.signing_public_key[10] ^= 1;
    assert_refused(
        c.admin
            .add_admin(signed(alice, Op::AddAdmin(pb::AddAdminOp { admin: Some(bad) })))
            .await,
        Code::InvalidArgument,
        "invalid_public_key",
    );
    let admins = c
        .admin
        .list_admins(signed(
            &dora,
            Op::ListAdmins(pb::ListAdminsOp { include_removed: false }),
        ))
        .await
        .unwrap()
        .into_inner()
        .admins;
    assert_eq!(
        admins.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["alice", "bob", "carol", "dora"]
    );

    // Key creation input checks.
    let create = |name: &str, grants: Vec<pb::Grant>, policy: &str| {
        Op::CreateKey(pb::CreateKeyOp {
            name: name.into(),
            grants,
            release_policy: policy.into(),
            ..Default::default()
        })
    };
    c.create_key("dup", &[APP], UNATTESTED).await;
    assert_refused(
        c.admin
            .create_key(signed(alice, create("dup", grants_all(&[APP]), "")))
            .await,
        Code::AlreadyExists,
        "key_name_taken",
    );
    assert_refused(
        c.admin.create_key(signed(alice, create("bad name", vec![], ""))).await,
        Code::InvalidArgument,
        "invalid_argument",
    );
    let r = c
        .admin
        .create_key(signed(
            alice,
            create("p", vec![], r#"{"version":1,"attestation":"sometimes"}"#),
        ))
        .await
        .unwrap_err();
    assert_eq!(reason(&r), "invalid_policy");
    assert!(r.message().contains("sometimes"), "{}", r.message());
    let r = c
        .admin
        .create_key(signed(
            alice,
            create(
                "g",
                vec![pb::Grant {
                    principal: APP.into(),
                    operations: vec![0],
                }],
                "",
            ),
        ))
        .await;
    assert_refused(r, Code::InvalidArgument, "invalid_policy");

    // Pagination over 5 keys, 2 a page.
    for i in 0..4 {
        c.create_key(&format!("page-{i}"), &[APP], "").await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .admin
            .list_keys(signed(
                alice,
                Op::ListKeys(pb::ListKeysOp {
                    page_size: 2,
                    page_token: token.clone(),
                }),
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 2);
        seen.extend(page.keys.into_iter().map(|k| k.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["dup", "page-0", "page-1", "page-2", "page-3"]);
    assert_refused(
        c.admin
            .list_keys(signed(
                alice,
                Op::ListKeys(pb::ListKeysOp {
                    page_size: 2,
                    page_token: "junk".into(),
                }),
            ))
            .await,
        Code::InvalidArgument,
        "bad_page_token",
    );
    c.server.stop().await;
}
both_backends!(admin_authentication_and_inputs, super::authentication);

async fn init_rules(backend: Backend) {
    let Some(db) = Db::new(backend).await else { return };
    let pki = Pki::new();
    let (a, b, us) = (admin("a", "DE"), admin("b", "FR"), admin("u", "US"));
    let ab = || vec![new_admin(&a, true), new_admin(&b, true)];
    let shamir = |admins: Vec<pb::NewAdmin>| {
        Op::Init(pb::InitOp {
            seal: pb::SealKind::Shamir as i32,
            threshold: 2,
            admins,
            approval_quorum: 1,
        })
    };

    // Not first come, first served: a server that pins no initial admin set refuses Init, and
    // one that pins a set refuses any other (also a set of genuine admins missing one).
    let server = TestServer::start(&db, &pki, Options::default()).await;
    let mut admin_c = server.admin(&pki).await;
    assert_refused(
        admin_c.init(signed(&a, shamir(ab()))).await,
        Code::FailedPrecondition,
        "init_not_pinned",
    );
    server.stop().await;
    let pinned = Options {
        init_admins: Some(fingerprints([&a, &b])),
        ..Options::default()
    };
    let server = TestServer::start(&db, &pki, pinned).await;
    let mut admin_c = server.admin(&pki).await;
    let mallory = admin("m", "DE");
    for (by, admins) in [
        (&mallory, vec![new_admin(&mallory, true)]),
        (&a, vec![new_admin(&a, true), new_admin(&mallory, true)]),
        (&a, vec![new_admin(&a, true)]),
    ] {
        let op = Op::Init(pb::InitOp {
            seal: pb::SealKind::Shamir as i32,
            threshold: 1,
            admins,
            approval_quorum: 1,
        });
        assert_refused(
            admin_c.init(signed(by, op)).await,
            Code::PermissionDenied,
            "init_admins_mismatch",
        );
    }
    // The same admin with another share key is another admin.
    let mut swapped = new_admin(&a, true);
    swapped.encryption_public_key = new_admin(&mallory, true).encryption_public_key;
    assert_refused(
        admin_c
            .init(signed(&a, shamir(vec![swapped, new_admin(&b, true)])))
            .await,
        Code::PermissionDenied,
        "init_admins_mismatch",
    );
    let init = |admins: Vec<pb::NewAdmin>, threshold: u32, seal: pb::SealKind| {
        Op::Init(pb::InitOp {
            seal: seal as i32,
            threshold,
            admins,
            approval_quorum: 1,
        })
    };

    // Before init: key operations say not initialized.
    let status = admin_c
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!status.initialized);
    // A non-EU admin cannot be among the first admins; thresholds checked; dev seal refused
    // outside dev mode; Init must be signed by a listed admin.
    assert_refused(
        admin_c
            .init(signed(
                &a,
                init(vec![new_admin(&a, true), new_admin(&us, true)], 1, pb::SealKind::Shamir),
            ))
            .await,
        Code::PermissionDenied,
        "country_not_allowed",
    );
    assert_refused(
        admin_c
            .init(signed(
                &a,
                init(vec![new_admin(&a, true), new_admin(&b, true)], 3, pb::SealKind::Shamir),
            ))
            .await,
        Code::InvalidArgument,
        "bad_threshold",
    );
    assert_refused(
        admin_c.init(signed(&a, init(ab(), 0, pb::SealKind::Dev))).await,
        Code::FailedPrecondition,
        "dev_seal_refused",
    );
    assert_refused(
        admin_c
            .init(signed(&us, init(vec![new_admin(&a, true)], 1, pb::SealKind::Shamir)))
            .await,
        Code::PermissionDenied,
        "unknown_admin",
    );
    admin_c
        .init(signed(
            &a,
            init(vec![new_admin(&a, true), new_admin(&b, true)], 2, pb::SealKind::Shamir),
        ))
        .await
        .unwrap();
    assert_refused(
        admin_c
            .init(signed(&a, init(vec![new_admin(&a, true)], 1, pb::SealKind::Shamir)))
            .await,
        Code::FailedPrecondition,
        "already_initialized",
    );
    server.stop().await;
}
both_backends!(init_rules, super::init_rules);

async fn sealing(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    c.create_key("s", &[APP], UNATTESTED).await;
    let mut data = c.server.data(&c.pki, APP).await;
    let ctx: BTreeMap<String, String> = [("tenant".to_owned(), "t1".to_owned())].into();
    let blob = data
        .encrypt(pb::EncryptRequest {
            key: "s".into(),
            plaintext: b"survives restarts".to_vec(),
            encryption_context: ctx.clone(),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;

    let dora = admin("dora", "IE");
    c.admin
        .add_admin(signed(
            &c.custodians[0],
            Op::AddAdmin(pb::AddAdminOp {
                admin: Some(new_admin(&dora, false)),
            }),
        ))
        .await
        .unwrap();

    // Restart: sealed; every key operation refused with UNAVAILABLE/sealed.
    c.restart(Options::default()).await;
    let status = c
        .admin
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.initialized && status.sealed && status.threshold == 2 && status.progress == 0);
    let mut data = c.server.data(&c.pki, APP).await;
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: ctx.clone(),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::Unavailable,
        "sealed",
    );
    assert_refused(
        data.generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key: "s".into(),
            encryption_context: ctx.clone(),
        })
        .await,
        Code::Unavailable,
        "sealed",
    );
    assert_refused(
        c.admin
            .create_key(signed(
                &c.custodians[0],
                Op::CreateKey(pb::CreateKeyOp {
                    name: "n".into(),
                    ..Default::default()
                }),
            ))
            .await,
        Code::Unavailable,
        "sealed",
    );
    assert_refused(
        c.admin
            .rotate_key(signed(
                &c.custodians[0],
                Op::RotateKey(pb::RotateKeyOp { key: "s".into() }),
            ))
            .await,
        Code::Unavailable,
        "sealed",
    );

    // While sealed the database's rows cannot be verified, so nothing is read or written: not
    // even a fail-safe change (disable a key through an unsealed replica).
    assert_refused(
        c.admin
            .disable_key(signed(
                &c.custodians[0],
                Op::DisableKey(pb::DisableKeyOp { key: "s".into() }),
            ))
            .await,
        Code::Unavailable,
        "sealed",
    );
    assert_refused(
        c.admin
            .describe_key(signed(
                &c.custodians[0],
                Op::DescribeKey(pb::DescribeKeyOp { key: "s".into() }),
            ))
            .await,
        Code::Unavailable,
        "sealed",
    );
    assert_eq!(status.key_check_value.len(), 16);
    assert!(status.deployment_id.starts_with("dep-"), "{status:?}");

    // Too few shares: still sealed. The same custodian twice: refused.
    let s = submit_share(&mut c.admin, &c.custodians[0]).await.unwrap();
    assert!(s.sealed && s.progress == 1);
    let e = submit_share(&mut c.admin, &c.custodians[0]).await.unwrap_err();
    assert_eq!(reason(&e), "share_already_submitted");
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: ctx.clone(),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::Unavailable,
        "sealed",
    );
    // A non-custodian cannot submit or fetch a share: dora is no custodian the server pins,
    // so she is refused before her share is looked for.
    let e = c
        .admin
        .get_encrypted_share(signed(&dora, Op::GetEncryptedShare(pb::GetEncryptedShareOp {})))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), "custodian_not_pinned");
    let status = c
        .admin
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let forged = kms_core::share_wrap::seal(
        &status.unseal_public_key,
        kms_core::share_wrap::share_plaintext("dora", &[1; 33]).expose_secret(),
    )
    .unwrap();
    assert_refused(
        c.admin
            .unseal(signed(
                &dora,
                Op::Unseal(pb::UnsealOp {
                    envelope: forged.encode(),
                }),
            ))
            .await,
        Code::PermissionDenied,
        "custodian_not_pinned",
    );

    // A wrong share (right custodian, wrong bytes) completes the threshold: detected by the key
    // check value, every share discarded, still sealed.
    let bob = &c.custodians[1];
    // A share labelled for another custodian is refused before it counts.
    let not_his = kms_core::share_wrap::seal(
        &status.unseal_public_key,
        kms_core::share_wrap::share_plaintext("alice", &[2; 33]).expose_secret(),
    )
    .unwrap();
    assert_refused(
        c.admin
            .unseal(signed(
                bob,
                Op::Unseal(pb::UnsealOp {
                    envelope: not_his.encode(),
                }),
            ))
            .await,
        Code::PermissionDenied,
        "share_not_yours",
    );
    let wrong = kms_core::share_wrap::seal(
        &status.unseal_public_key,
        kms_core::share_wrap::share_plaintext("bob", &[2; 33]).expose_secret(),
    )
    .unwrap();
    assert_refused(
        c.admin
            .unseal(signed(
                bob,
                Op::Unseal(pb::UnsealOp {
                    envelope: wrong.encode(),
                }),
            ))
            .await,
        Code::InvalidArgument,
        "wrong_share_set",
    );
    let status = c
        .admin
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.sealed && status.progress == 0);

    // The right 2 of 3 (bob and carol this time): unsealed; the old blob decrypts.
    submit_share(&mut c.admin, &c.custodians[1]).await.unwrap();
    let s = submit_share(&mut c.admin, &c.custodians[2]).await.unwrap();
    assert!(!s.sealed);
    let p = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: ctx.clone(),
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.plaintext, b"survives restarts");

    // Seal at run time (one admin): refused again at once.
    c.admin.seal(signed(&dora, Op::Seal(pb::SealOp {}))).await.unwrap();
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            encryption_context: ctx,
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::Unavailable,
        "sealed",
    );

    // Seal on a sealed replica discards the shares submitted so far: the unseal starts over.
    let s = submit_share(&mut c.admin, &c.custodians[0]).await.unwrap();
    assert!(s.sealed && s.progress == 1);
    let s = c
        .admin
        .seal(signed(&dora, Op::Seal(pb::SealOp {})))
        .await
        .unwrap()
        .into_inner();
    assert!(s.sealed && s.progress == 0, "{s:?}");
    submit_share(&mut c.admin, &c.custodians[0]).await.unwrap();
    let s = submit_share(&mut c.admin, &c.custodians[1]).await.unwrap();
    assert!(!s.sealed);
    c.server.stop().await;
}
both_backends!(shamir_seal_restart_unseal, super::sealing);

async fn concurrent_rotation(backend: Backend) {
    let Some(c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    c.create_key("rot", &[APP], UNATTESTED).await;
    // A second server (replica) on the same database, unsealed by the same custodians.
    let second = c.replica(Options::default()).await;
    let mut admin2 = second.admin(&c.pki).await;
    submit_share(&mut admin2, &c.custodians[0]).await.unwrap();
    submit_share(&mut admin2, &c.custodians[2]).await.unwrap();

    let per_server = 10;
    let mut tasks = Vec::new();
    for (i, client) in [c.admin.clone(), admin2.clone()].into_iter().enumerate() {
        for _ in 0..per_server {
            let mut client = client.clone();
            let signer = if i == 0 { 0 } else { 1 };
            let req = signed(
                &c.custodians[signer],
                Op::RotateKey(pb::RotateKeyOp { key: "rot".into() }),
            );
            tasks.push(tokio::spawn(async move {
                client.rotate_key(req).await.map(|r| r.into_inner().latest_version)
            }));
        }
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap().unwrap());
    }
    versions.sort();
    assert_eq!(
        versions,
        (2..=(1 + 2 * per_server as u32)).collect::<Vec<_>>(),
        "versions must be consecutive with no gap or duplicate"
    );
    let mut conn = c.db.connect().await;
    let rows: Vec<i64> = sqlx::query_scalar("SELECT version FROM key_versions ORDER BY version")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(rows, (1..=(1 + 2 * per_server as i64)).collect::<Vec<_>>());

    // Every version decrypts on both replicas.
    let mut d1 = c.server.data(&c.pki, APP).await;
    let mut d2 = second.data(&c.pki, APP).await;
    let blob = d1
        .encrypt(pb::EncryptRequest {
            key: "rot".into(),
            plaintext: b"v".to_vec(),
            encryption_context: Default::default(),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(blob.key_version, 1 + 2 * per_server as u32);
    d2.decrypt(pb::DecryptRequest {
        ciphertext_blob: blob.ciphertext_blob,
        encryption_context: Default::default(),
        key: String::new(),
        ..Default::default()
    })
    .await
    .unwrap();
    second.stop().await;
    c.server.stop().await;
}
both_backends!(two_servers_rotate_concurrently, super::concurrent_rotation);

/// A sealed server takes `GetEncryptedShare` and `Unseal` only from the custodians its
/// configuration pins (it cannot verify the database's admin rows before the root is back):
/// `admin.custodians` when set, else `admin.init_admins`, and neither is refused outright.
async fn pinned_custodians(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    // admin.custodians pins bob and carol: alice, an init admin, is refused while sealed.
    let bob_and_carol = fingerprints(&c.custodians[1..]);
    c.restart(Options {
        custodians: Some(bob_and_carol),
        ..Options::default()
    })
    .await;
    let fetch = |k: &kms_core::keyfile::AdminKeyFile| signed(k, Op::GetEncryptedShare(pb::GetEncryptedShareOp {}));
    let (alice, bob, carol) = (&c.custodians[0], &c.custodians[1], &c.custodians[2]);
    assert_refused(
        c.admin.get_encrypted_share(fetch(alice)).await,
        Code::PermissionDenied,
        "custodian_not_pinned",
    );
    submit_share(&mut c.admin, bob).await.unwrap();
    let s = submit_share(&mut c.admin, carol).await.unwrap();
    assert!(!s.sealed);
    // Unsealed, the rows verify: alice is an admin like any other.
    c.admin.get_encrypted_share(fetch(alice)).await.unwrap();
    attest::assert_audited(&c.db, "admin.get_encrypted_share", "custodian_not_pinned").await;

    // Neither setting: no share is taken.
    let old = std::mem::replace(
        &mut c.server,
        TestServer::start(&c.db, &c.pki, Options::default()).await,
    );
    old.stop().await;
    c.admin = c.server.admin(&c.pki).await;
    assert_refused(
        c.admin.get_encrypted_share(fetch(&c.custodians[1])).await,
        Code::FailedPrecondition,
        "unseal_not_pinned",
    );
    attest::assert_audited(&c.db, "admin.get_encrypted_share", "unseal_not_pinned").await;
}
both_backends!(
    a_sealed_server_takes_shares_only_from_pinned_custodians,
    super::pinned_custodians
);
