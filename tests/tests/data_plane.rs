//! Data plane end to end: every KeyService RPC allowed and refused, on SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_testkit::attest::audit_entries;
use kms_testkit::*;
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";
const OTHER: &str = "spiffe://eu.example/other";

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

async fn round_trips(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    let key = c.create_key("orders", &[APP], UNATTESTED).await;
    let mut data = c.server.data(&c.pki, APP).await;

    // GenerateDataKey: plaintext and blob; Decrypt gives the same key back.
    let g = data
        .generate_data_key(pb::GenerateDataKeyRequest {
            key: "orders".into(),
            encryption_context: ctx(&[("order", "42")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(g.plaintext.len(), 32);
    assert_eq!(g.key_id, key.id);
    assert_eq!(g.key_version, 1);
    let d = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: ctx(&[("order", "42")]),
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.plaintext, g.plaintext);

    // Wrong context, missing context, extra pair: refused.
    for bad in [ctx(&[("order", "43")]), ctx(&[]), ctx(&[("order", "42"), ("x", "y")])] {
        assert_refused(
            data.decrypt(pb::DecryptRequest {
                ciphertext_blob: g.ciphertext_blob.clone(),
                encryption_context: bad,
                key: String::new(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "decrypt_failed",
        );
    }

    // WithoutPlaintext by id, Encrypt/Decrypt a payload.
    let w = data
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key: key.id.clone(),
            encryption_context: ctx(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.key_id, key.id);
    let e = data
        .encrypt(pb::EncryptRequest {
            key: "orders".into(),
            plaintext: b"hello".to_vec(),
            encryption_context: ctx(&[("a", "b")]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner();
    let p = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: e.ciphertext_blob.clone(),
            encryption_context: ctx(&[("a", "b")]),
            key: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.plaintext, b"hello");

    // Rotate: new blobs use v2, old blobs still decrypt; ReEncrypt moves an old blob to v2.
    let r = c
        .admin
        .rotate_key(signed(
            &c.custodians[0],
            Op::RotateKey(pb::RotateKeyOp { key: "orders".into() }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.latest_version, 2);
    let e2 = data
        .encrypt(pb::EncryptRequest {
            key: "orders".into(),
            plaintext: b"v2".to_vec(),
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e2.key_version, 2);
    let old = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: e.ciphertext_blob.clone(),
            encryption_context: ctx(&[("a", "b")]),
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((old.plaintext.as_slice(), old.key_version), (b"hello".as_slice(), 1));
    let re = data
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: e.ciphertext_blob.clone(),
            source_encryption_context: ctx(&[("a", "b")]),
            destination_key: String::new(),
            destination_encryption_context: ctx(&[("moved", "yes")]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((re.source_key_version, re.key_version), (1, 2));
    let moved = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: re.ciphertext_blob.clone(),
            encryption_context: ctx(&[("moved", "yes")]),
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.plaintext, b"hello");

    // ReEncrypt to another key; wrong source context refused.
    let other = c.create_key("invoices", &[APP], UNATTESTED).await;
    let re2 = data
        .re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: e.ciphertext_blob.clone(),
            source_encryption_context: ctx(&[("a", "b")]),
            destination_key: "invoices".into(),
            destination_encryption_context: ctx(&[]),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(re2.key_id, other.id);
    assert_refused(
        data.re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: e.ciphertext_blob.clone(),
            source_encryption_context: ctx(&[("a", "c")]),
            destination_key: "invoices".into(),
            destination_encryption_context: ctx(&[]),
        })
        .await,
        Code::InvalidArgument,
        "decrypt_failed",
    );
    // Decrypt with the wrong expected key.
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: e.ciphertext_blob.clone(),
            encryption_context: ctx(&[("a", "b")]),
            key: "invoices".into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "key_mismatch",
    );
    c.server.stop().await;
}
both_backends!(generate_encrypt_decrypt_rotate_reencrypt, super::round_trips);

async fn bad_input(backend: Backend) {
    let Some(c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    c.create_key("k", &[APP], UNATTESTED).await;
    let mut data = c.server.data(&c.pki, APP).await;
    let blob = data
        .encrypt(pb::EncryptRequest {
            key: "k".into(),
            plaintext: vec![7; 100],
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;

    // Tampered: a flipped bit in the header, salt, ciphertext and tag.
    for i in [5usize, 30, 60, blob.len() - 1] {
        let mut b = blob.clone();
        b[i] ^= 0x01;
        let r = data
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: b,
                encryption_context: ctx(&[]),
                key: String::new(),
                ..Default::default()
            })
            .await;
        let s = r.unwrap_err();
        assert_eq!(
            s.code(),
            if i == 5 { Code::NotFound } else { Code::InvalidArgument },
            "byte {i}: {s:?}"
        );
    }
    // Truncated at every length up to the header.
    for n in [0usize, 3, 4, 20, 56, 57, 72] {
        assert_refused(
            data.decrypt(pb::DecryptRequest {
                ciphertext_blob: blob[..n].to_vec(),
                encryption_context: ctx(&[]),
                key: String::new(),
                ..Default::default()
            })
            .await,
            Code::InvalidArgument,
            "malformed_blob",
        );
    }
    // Oversized blob and payload.
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: vec![0; 5000],
            encryption_context: ctx(&[]),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "malformed_blob",
    );
    assert_refused(
        data.encrypt(pb::EncryptRequest {
            key: "k".into(),
            plaintext: vec![0; 4097],
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await,
        Code::InvalidArgument,
        "plaintext_too_long",
    );
    data.encrypt(pb::EncryptRequest {
        key: "k".into(),
        plaintext: vec![0; 4096],
        encryption_context: ctx(&[]),
        sealed_plaintext: None,
    })
    .await
    .unwrap();
    // An answer nonce (kms-answer-nonce-bin) of the wrong size; one of the right size gets the
    // answer signed by the node over the request as sent, the nonce and the answer.
    let asking = |nonce: &[u8]| {
        let mut r = tonic::Request::new(pb::EncryptRequest {
            key: "k".into(),
            plaintext: vec![2; 32],
            encryption_context: ctx(&[("a", "1"), ("b", "2")]),
            sealed_plaintext: None,
        });
        r.metadata_mut().insert_bin(
            kms_proto::answer::NONCE_METADATA,
            tonic::metadata::MetadataValue::from_bytes(nonce),
        );
        r
    };
    assert_refused(data.encrypt(asking(&[1; 15])).await, Code::InvalidArgument, "bad_nonce");
    assert_refused(data.encrypt(asking(&[1; 65])).await, Code::InvalidArgument, "bad_nonce");
    let request = asking(&[9; 16]);
    let sent = prost::Message::encode_to_vec(request.get_ref());
    let answer = data.encrypt(request).await.unwrap();
    let bin = |k: &str| answer.metadata().get_bin(k).unwrap().to_bytes().unwrap();
    let (node_key, signature) = (
        bin(kms_proto::answer::NODE_KEY_METADATA),
        bin(kms_proto::answer::SIGNATURE_METADATA),
    );
    let bytes = prost::Message::encode_to_vec(answer.get_ref());
    let signed = |request: &[u8], nonce: &[u8]| {
        kms_node::verify_signature(
            &node_key,
            &kms_node::message::data_answer("encrypt", request, nonce, &bytes),
            &signature,
        )
    };
    assert!(signed(&sent, &[9; 16]));
    assert!(!signed(&sent, &[8; 16]), "another nonce");
    assert!(!signed(&sent[..sent.len() - 1], &[9; 16]), "another request");
    // Without a nonce, nothing is signed (the data plane's speed is not taxed).
    let unasked = data
        .encrypt(pb::EncryptRequest {
            key: "k".into(),
            plaintext: vec![2; 32],
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap();
    assert!(unasked
        .metadata()
        .get_bin(kms_proto::answer::SIGNATURE_METADATA)
        .is_none());
    // A plaintext sealed to the node (GetNodeIdentity names its HPKE key) for this request:
    // wrapped, and the blob decrypts to it. Refused and audited: sealed for another key or
    // context, altered, or sealed to another node (once the key and grant are checked); sent
    // with a plaintext too, a malformed recipient or encapsulated key, or more than 4096 bytes
    // sealed (before the key is looked up, as a malformed request is).
    let identity = kms_proto::v1::attestation_service_client::AttestationServiceClient::new(
        c.server.channel(c.pki.client(APP)).await.unwrap(),
    )
    .get_node_identity(pb::GetNodeIdentityRequest { nonce: vec![5; 16] })
    .await
    .unwrap()
    .into_inner();
    let node_hpke = identity.node_hpke_public_key.clone();
    let seal_for = |recipient: &[u8], key: &str, context: &[(&str, &str)], plaintext: &[u8]| {
        let context = kms_core::context::EncryptionContext::new(ctx(context)).unwrap();
        let sealed = kms_core::hpke_seal::seal_encrypt_input(recipient, key, &context, plaintext).unwrap();
        pb::SealedPlaintext {
            node_hpke_public_key: recipient.to_vec(),
            encapsulated_key: sealed.encapsulated_key,
            ciphertext: sealed.ciphertext,
        }
    };
    let sealed_request = |sealed: pb::SealedPlaintext, plaintext: Vec<u8>| pb::EncryptRequest {
        key: "k".into(),
        plaintext,
        encryption_context: ctx(&[("a", "1")]),
        sealed_plaintext: Some(sealed),
    };
    let wrapped = data
        .encrypt(sealed_request(
            seal_for(&node_hpke, "k", &[("a", "1")], b"sealed data key"),
            vec![],
        ))
        .await
        .unwrap()
        .into_inner();
    let opened = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: wrapped.ciphertext_blob,
            encryption_context: ctx(&[("a", "1")]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"sealed data key");
    for (what, request, code, reason) in [
        (
            "sealed for another key",
            sealed_request(seal_for(&node_hpke, "other", &[("a", "1")], b"x"), vec![]),
            Code::InvalidArgument,
            "bad_sealed_plaintext",
        ),
        (
            "sealed for another context",
            sealed_request(seal_for(&node_hpke, "k", &[("a", "2")], b"x"), vec![]),
            Code::InvalidArgument,
            "bad_sealed_plaintext",
        ),
        (
            "altered",
            {
                let mut s = seal_for(&node_hpke, "k", &[("a", "1")], b"x");
                s.ciphertext[0] ^= 1;
                sealed_request(s, vec![])
            },
            Code::InvalidArgument,
            "bad_sealed_plaintext",
        ),
        (
            "sealed to another node",
            sealed_request(
                seal_for(
                    &kms_core::hpke_seal::NodeInputKey::generate().public_key(),
                    "k",
                    &[("a", "1")],
                    b"x",
                ),
                vec![],
            ),
            Code::FailedPrecondition,
            "sealed_for_other_node",
        ),
        (
            "with a plaintext too",
            sealed_request(seal_for(&node_hpke, "k", &[("a", "1")], b"x"), vec![1]),
            Code::InvalidArgument,
            "bad_sealed_plaintext",
        ),
        (
            "a short recipient",
            {
                let mut s = seal_for(&node_hpke, "k", &[("a", "1")], b"x");
                s.node_hpke_public_key.pop();
                sealed_request(s, vec![])
            },
            Code::InvalidArgument,
            "bad_sealed_plaintext",
        ),
        (
            "a short encapsulated key",
            {
                let mut s = seal_for(&node_hpke, "k", &[("a", "1")], b"x");
                s.encapsulated_key.pop();
                sealed_request(s, vec![])
            },
            Code::InvalidArgument,
            "bad_sealed_plaintext",
        ),
        (
            "more than 4096 bytes sealed",
            sealed_request(seal_for(&node_hpke, "k", &[("a", "1")], &[0; 4097]), vec![]),
            Code::InvalidArgument,
            "plaintext_too_long",
        ),
    ] {
        let r = data.encrypt(request).await;
        assert!(r.is_err(), "{what}: accepted");
        assert_refused(r, code, reason);
    }
    // Refusals are queued (group commit): wait for the eight, each with its reason.
    let counts = |entries: &[(String, String, String, String)]| {
        let n = |reason: &str, sealed: bool| {
            entries
                .iter()
                .filter(|e| {
                    e.0 == "encrypt"
                        && e.1 == "refused"
                        && e.2 == reason
                        && (!sealed || e.3.contains("\"input\":\"sealed\""))
                })
                .count()
        };
        (
            n("bad_sealed_plaintext", false),
            n("sealed_for_other_node", true),
            n("plaintext_too_long", false),
        )
    };
    let mut entries = audit_entries(&c.db).await;
    for _ in 0..100 {
        if counts(&entries) == (6, 1, 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        entries = audit_entries(&c.db).await;
    }
    // (plaintext_too_long: the clear 4097 bytes above, and the sealed ones.)
    assert_eq!(counts(&entries), (6, 1, 2), "{entries:?}");
    // Context too large.
    let big: BTreeMap<String, String> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
    assert_refused(
        data.encrypt(pb::EncryptRequest {
            key: "k".into(),
            plaintext: vec![1],
            encryption_context: big,
            sealed_plaintext: None,
        })
        .await,
        Code::InvalidArgument,
        "invalid_context",
    );
    // Unknown key, by name and id; empty key.
    assert_refused(
        data.encrypt(pb::EncryptRequest {
            key: "nope".into(),
            plaintext: vec![1],
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await,
        Code::NotFound,
        "key_not_found",
    );
    assert_refused(
        data.encrypt(pb::EncryptRequest {
            key: format!("k-{}", "0".repeat(32)),
            plaintext: vec![1],
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await,
        Code::NotFound,
        "key_not_found",
    );
    assert_refused(
        data.generate_data_key(pb::GenerateDataKeyRequest {
            key: String::new(),
            encryption_context: ctx(&[]),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "missing_key",
    );
    // A name no key can have (a character outside the set, or over 128 characters) is the
    // caller's mistake, and its message does not quote the name back.
    for bad in ["a b".to_string(), "n".repeat(100_000)] {
        let status = data
            .generate_data_key(pb::GenerateDataKeyRequest {
                key: bad.clone(),
                encryption_context: ctx(&[]),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(reason(&status), "invalid_argument");
        assert!(status.message().len() < 200, "{}", status.message());
    }
    c.server.stop().await;
}
both_backends!(tampered_truncated_oversized_unknown, super::bad_input);

async fn grants_and_release(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    c.create_key("open", &[APP], UNATTESTED).await;
    let attested = c.create_key("attested", &[APP], "").await;
    assert!(attested.release_policy.contains("required"));
    let mut app = c.server.data(&c.pki, APP).await;
    let mut other = c.server.data(&c.pki, OTHER).await;

    // A principal without a grant is refused every operation.
    assert_refused(
        other
            .generate_data_key(pb::GenerateDataKeyRequest {
                key: "open".into(),
                encryption_context: ctx(&[]),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "not_permitted",
    );
    let blob = app
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key: "open".into(),
            encryption_context: ctx(&[]),
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    assert_refused(
        other
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                encryption_context: ctx(&[]),
                key: String::new(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "not_permitted",
    );

    // An attestation-required key: no plaintext, but wrapped data keys and encryption work.
    assert_refused(
        app.generate_data_key(pb::GenerateDataKeyRequest {
            key: "attested".into(),
            encryption_context: ctx(&[]),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "attestation_required",
    );
    let wrapped = app
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key: "attested".into(),
            encryption_context: ctx(&[]),
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    assert_refused(
        app.decrypt(pb::DecryptRequest {
            ciphertext_blob: wrapped.clone(),
            encryption_context: ctx(&[]),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "attestation_required",
    );
    // ReEncrypt of it works: plaintext never leaves.
    app.re_encrypt(pb::ReEncryptRequest {
        ciphertext_blob: wrapped.clone(),
        source_encryption_context: ctx(&[]),
        destination_key: String::new(),
        destination_encryption_context: ctx(&[]),
    })
    .await
    .unwrap();
    // But not onto a key that releases without attestation: that would launder it.
    assert_refused(
        app.re_encrypt(pb::ReEncryptRequest {
            ciphertext_blob: wrapped.clone(),
            source_encryption_context: ctx(&[]),
            destination_key: "open".into(),
            destination_encryption_context: ctx(&[]),
        })
        .await,
        Code::FailedPrecondition,
        "release_policy_downgrade",
    );
    // Naming an expected key one may not use reveals nothing about the blob.
    assert_refused(
        other
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: wrapped,
                encryption_context: ctx(&[]),
                key: "attested".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "not_permitted",
    );

    // ReEncrypt never moves data to a key that more principals may decrypt. A rotation job that
    // may only re-encrypt moves blobs between keys with the same readers, and nowhere else.
    const ROTATOR: &str = "spiffe://eu.example/rotator";
    let key_with = |name: &str, grants: Vec<(&str, Vec<pb::Operation>)>| {
        let op = Op::CreateKey(pb::CreateKeyOp {
            name: name.into(),
            grants: grants
                .into_iter()
                .map(|(p, ops)| pb::Grant {
                    principal: p.into(),
                    operations: ops.into_iter().map(|o| o as i32).collect(),
                })
                .collect(),
            release_policy: UNATTESTED.into(),
            ..Default::default()
        });
        let mut admin = c.admin.clone();
        let by = &c.custodians[0];
        async move { admin.create_key(signed(by, op)).await.unwrap() }
    };
    use pb::Operation::{Decrypt as D, Encrypt as E, ReEncrypt as R};
    key_with("ledger", vec![(APP, vec![D, E]), (ROTATOR, vec![R])]).await;
    key_with("ledger-2027", vec![(APP, vec![D, E]), (ROTATOR, vec![R])]).await;
    key_with(
        "ledger-shared",
        vec![(APP, vec![D]), (OTHER, vec![D]), (ROTATOR, vec![R])],
    )
    .await;
    let ledger = app
        .encrypt(pb::EncryptRequest {
            key: "ledger".into(),
            plaintext: b"ledger entry".to_vec(),
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let mut rotator = c.server.data(&c.pki, ROTATOR).await;
    let move_to = |dst: &str| pb::ReEncryptRequest {
        ciphertext_blob: ledger.clone(),
        source_encryption_context: ctx(&[]),
        destination_key: dst.into(),
        destination_encryption_context: ctx(&[]),
    };
    let moved = rotator.re_encrypt(move_to("ledger-2027")).await.unwrap().into_inner();
    let back = app
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: moved.ciphertext_blob,
            encryption_context: ctx(&[]),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.plaintext, b"ledger entry");
    let refused = rotator.re_encrypt(move_to("ledger-shared")).await;
    assert_refused(refused, Code::FailedPrecondition, "grants_widened");
    // The rotator itself may not read what it moves.
    assert_refused(
        rotator
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: ledger.clone(),
                encryption_context: ctx(&[]),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "not_permitted",
    );

    // A server that does not allow unattested keys refuses to create them, and refuses plaintext
    // for such keys already in its database.
    let opts = Options {
        allow_unattested: false,
        ..Options::default()
    };
    c.restart(opts).await;
    c.unseal().await;
    let r = c
        .admin
        .create_key(signed(
            &c.custodians[0],
            Op::CreateKey(pb::CreateKeyOp {
                name: "x".into(),
                grants: grants_all(&[APP]),
                release_policy: UNATTESTED.into(),
                ..Default::default()
            }),
        ))
        .await;
    assert_refused(r, Code::FailedPrecondition, "unattested_keys_disabled");
    let mut app = c.server.data(&c.pki, APP).await;
    assert_refused(
        app.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            encryption_context: ctx(&[]),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "attestation_required",
    );
    c.server.stop().await;
}
both_backends!(grants_and_release_policy, super::grants_and_release);

async fn lifecycle(backend: Backend) {
    let Some(mut c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    let key = c.create_key("life", &[APP], UNATTESTED).await;
    let mut data = c.server.data(&c.pki, APP).await;
    let blob = data
        .encrypt(pb::EncryptRequest {
            key: "life".into(),
            plaintext: b"x".to_vec(),
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let a = c.custodians[0].admin_id.to_string();
    let _ = a;
    let k = || pb::DisableKeyOp { key: "life".into() };
    let m = c
        .admin
        .disable_key(signed(&c.custodians[0], Op::DisableKey(k())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.state, pb::KeyState::Disabled as i32);
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: ctx(&[]),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "key_disabled",
    );
    assert_refused(
        c.admin.disable_key(signed(&c.custodians[0], Op::DisableKey(k()))).await,
        Code::FailedPrecondition,
        "invalid_state_transition",
    );
    assert_refused(
        c.admin
            .rotate_key(signed(
                &c.custodians[0],
                Op::RotateKey(pb::RotateKeyOp { key: "life".into() }),
            ))
            .await,
        Code::FailedPrecondition,
        "key_not_enabled",
    );
    c.admin
        .enable_key(signed(
            &c.custodians[0],
            Op::EnableKey(pb::EnableKeyOp { key: "life".into() }),
        ))
        .await
        .unwrap();
    data.decrypt(pb::DecryptRequest {
        ciphertext_blob: blob.clone(),
        encryption_context: ctx(&[]),
        key: String::new(),
        ..Default::default()
    })
    .await
    .unwrap();

    // Deletion window bounds.
    for days in [0, 6, 31] {
        assert_refused(
            c.admin
                .schedule_key_deletion(signed(
                    &c.custodians[0],
                    Op::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
                        key: "life".into(),
                        pending_window_days: days,
                    }),
                ))
                .await,
            Code::InvalidArgument,
            "bad_deletion_window",
        );
    }
    // Deletion is scheduled only for a disabled key (disable first, see what breaks).
    let schedule7 = || {
        Op::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
            key: "life".into(),
            pending_window_days: 7,
        })
    };
    assert_refused(
        c.admin
            .schedule_key_deletion(signed(&c.custodians[0], schedule7()))
            .await,
        Code::FailedPrecondition,
        "invalid_state_transition",
    );
    c.admin
        .disable_key(signed(&c.custodians[0], Op::DisableKey(k())))
        .await
        .unwrap();
    let m = c
        .admin
        .schedule_key_deletion(signed(
            &c.custodians[0],
            Op::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
                key: "life".into(),
                pending_window_days: 7,
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.state, pb::KeyState::PendingDeletion as i32);
    assert!(m.deletion_unix_ms > kms_core::now_unix_ms() + 6 * 86_400_000);
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob.clone(),
            encryption_context: ctx(&[]),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "key_pending_deletion",
    );
    assert_refused(
        c.admin
            .enable_key(signed(
                &c.custodians[0],
                Op::EnableKey(pb::EnableKeyOp { key: "life".into() }),
            ))
            .await,
        Code::FailedPrecondition,
        "invalid_state_transition",
    );
    let m = c
        .admin
        .cancel_key_deletion(signed(
            &c.custodians[0],
            Op::CancelKeyDeletion(pb::CancelKeyDeletionOp { key: "life".into() }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.state, m.deletion_unix_ms), (pb::KeyState::Disabled as i32, 0));
    c.admin
        .schedule_key_deletion(signed(
            &c.custodians[0],
            Op::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
                key: "life".into(),
                pending_window_days: 30,
            }),
        ))
        .await
        .unwrap();

    // The window ends (the destroyer's clock runs 31 days ahead, as time passing would; the
    // database cannot be used to move the deletion time, kmsd would refuse the row), the
    // destroyer erases the material: irreversible.
    let mut conn = c.db.connect().await;
    let opts = Options {
        destroy_interval: std::time::Duration::from_millis(100),
        destroyer_clock_ahead: std::time::Duration::from_secs(31 * 86_400),
        ..Options::default()
    };
    c.restart(opts).await;
    c.unseal().await;
    let mut destroyed = false;
    for _ in 0..100 {
        let m = c
            .admin
            .describe_key(signed(
                &c.custodians[0],
                Op::DescribeKey(pb::DescribeKeyOp { key: "life".into() }),
            ))
            .await
            .unwrap()
            .into_inner();
        if m.state == pb::KeyState::Destroyed as i32 {
            destroyed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(destroyed, "the destroyer did not run");
    let nulls: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_versions WHERE key_id = $1 AND wrapped_kek IS NULL")
        .bind(&key.id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(nulls, 1, "key material not erased");
    let mut data = c.server.data(&c.pki, APP).await;
    assert_refused(
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            encryption_context: ctx(&[]),
            key: String::new(),
            ..Default::default()
        })
        .await,
        Code::FailedPrecondition,
        "key_destroyed",
    );
    for r in [
        c.admin
            .cancel_key_deletion(signed(
                &c.custodians[0],
                Op::CancelKeyDeletion(pb::CancelKeyDeletionOp { key: "life".into() }),
            ))
            .await,
        c.admin
            .enable_key(signed(
                &c.custodians[0],
                Op::EnableKey(pb::EnableKeyOp { key: "life".into() }),
            ))
            .await,
    ] {
        assert_refused(r, Code::FailedPrecondition, "invalid_state_transition");
    }
    c.server.stop().await;
}
both_backends!(key_lifecycle_to_destruction, super::lifecycle);

/// The database's operator hides a key's second version from any read that selects versions by
/// key id alone (a view in the table's place that looks at the query being run). Destruction
/// still erases that version's KEK: it reads every version, 1 to the key's latest, by its
/// primary key. (Before, it read `WHERE key_id = $1`, and the hidden version kept its wrapped
/// KEK under a key reported destroyed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destruction_erases_a_version_hidden_from_a_read_by_key() {
    let Some(mut c) = Ceremony::new(Backend::Postgres, Options::default()).await else {
        return;
    };
    let key = c.create_key("doomed", &[APP], UNATTESTED).await;
    let by = &c.custodians[0];
    c.admin
        .rotate_key(signed(by, Op::RotateKey(pb::RotateKeyOp { key: "doomed".into() })))
        .await
        .unwrap();
    c.admin
        .disable_key(signed(by, Op::DisableKey(pb::DisableKeyOp { key: "doomed".into() })))
        .await
        .unwrap();
    c.admin
        .schedule_key_deletion(signed(
            by,
            Op::ScheduleKeyDeletion(pb::ScheduleKeyDeletionOp {
                key: "doomed".into(),
                pending_window_days: 7,
            }),
        ))
        .await
        .unwrap();
    let mut conn = c.db.connect().await;
    for sql in [
        "ALTER TABLE key_versions RENAME TO key_versions_stored".to_owned(),
        format!(
            "CREATE VIEW key_versions AS SELECT * FROM key_versions_stored WHERE NOT (\
             key_id = '{}' AND version = 2 \
             AND current_query() LIKE '%key_id = $1%' AND current_query() NOT LIKE '%version = $%')",
            key.id
        ),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let visible: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_versions WHERE key_id = $1")
        .bind(&key.id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(visible, 1, "the view hides version 2 from a read by key id");

    // The window ends (the destroyer's clock 31 days ahead).
    c.restart(Options {
        destroy_interval: std::time::Duration::from_millis(100),
        destroyer_clock_ahead: std::time::Duration::from_secs(31 * 86_400),
        ..Options::default()
    })
    .await;
    c.unseal().await;
    let mut destroyed = false;
    for _ in 0..100 {
        let m = c
            .admin
            .describe_key(signed(
                &c.custodians[0],
                Op::DescribeKey(pb::DescribeKeyOp { key: "doomed".into() }),
            ))
            .await
            .unwrap()
            .into_inner();
        if m.state == pb::KeyState::Destroyed as i32 {
            destroyed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(destroyed, "the destroyer did not run");
    let kept: Vec<i64> = sqlx::query_scalar(
        "SELECT version FROM key_versions_stored WHERE key_id = $1 AND wrapped_kek IS NOT NULL ORDER BY version",
    )
    .bind(&key.id)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(kept.is_empty(), "versions {kept:?} of a destroyed key keep their KEK");
    c.server.stop().await;
}

/// A root rotation completes, and retires the old root for good, only once no secret is left
/// under it. The database answers the rotation's reads `WHERE root_generation = $1` without one
/// key version (a view in the table's place that looks at the query being run), so the worker
/// never re-wraps that version's KEK. The completion reads every version, and the log's count
/// of them: the rotation stays open, the blob keeps decrypting, and once the table answers
/// honestly again the rotation completes with the version re-wrapped. (Before, the completion
/// read `WHERE root_generation = $1` too, retired the old root over the hidden version, and
/// its KEK could never be unwrapped again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_does_not_complete_over_a_secret_hidden_from_it() {
    let Some(c) = Ceremony::new(Backend::Postgres, Options::default()).await else {
        return;
    };
    let key = c.create_key("kept", &[APP], UNATTESTED).await;
    let mut data = c.server.data(&c.pki, APP).await;
    let blob = data
        .encrypt(pb::EncryptRequest {
            key: "kept".into(),
            plaintext: b"kept through rotations".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let decrypts = |mut data: kms_proto::v1::key_service_client::KeyServiceClient<tonic::transport::Channel>,
                    blob: Vec<u8>| async move {
        data.decrypt(pb::DecryptRequest {
            ciphertext_blob: blob,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().plaintext)
    };
    let mut conn = c.db.connect().await;
    for sql in [
        "ALTER TABLE key_versions RENAME TO key_versions_stored".to_owned(),
        format!(
            "CREATE VIEW key_versions AS SELECT * FROM key_versions_stored WHERE NOT (\
             key_id = '{}' AND current_query() LIKE '%root_generation = $1%')",
            key.id
        ),
    ] {
        sqlx::query(&sql).execute(&mut conn).await.unwrap();
    }
    let status = |mut admin: kms_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>| async move {
        admin
            .get_seal_status(pb::GetSealStatusRequest {})
            .await
            .unwrap()
            .into_inner()
    };
    c.admin
        .clone()
        .propose(propose(
            &c.custodians[0],
            pb::quorum_operation::Operation::RotateRoot(pb::RotateRootOp {
                seal: pb::SealKind::Shamir as i32,
                threshold: 2,
                custodians: vec!["alice".into(), "bob".into(), "carol".into()],
            }),
        ))
        .await
        .unwrap();
    // The rotation worker starts after its grace period and passes several times (once a
    // second): the rotation stays open.
    for _ in 0..16 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let s = status(c.admin.clone()).await;
        assert_eq!(
            s.root_generation, 1,
            "the rotation completed over a hidden secret: {s:?}"
        );
        assert!(s.rotation.is_some(), "{s:?}");
        assert_eq!(
            decrypts(data.clone(), blob.clone()).await.unwrap(),
            b"kept through rotations"
        );
    }
    for sql in [
        "DROP VIEW key_versions",
        "ALTER TABLE key_versions_stored RENAME TO key_versions",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let mut done = false;
    for _ in 0..200 {
        let s = status(c.admin.clone()).await;
        if s.root_generation == 2 && s.rotation.is_none() {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "the rotation did not complete once the table answered honestly");
    assert_eq!(
        decrypts(data.clone(), blob.clone()).await.unwrap(),
        b"kept through rotations"
    );
    let generations: Vec<i64> = sqlx::query_scalar("SELECT root_generation FROM key_versions WHERE key_id = $1")
        .bind(&key.id)
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(generations, [2]);
    data = c.server.data(&c.pki, APP).await;
    decrypts(data, blob).await.unwrap();
    c.server.stop().await;
}
