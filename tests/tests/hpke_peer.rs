//! kmsd's HPKE against an independent RFC 9180 implementation: pyhpke (pinned in
//! scripts/peer-requirements.txt, venv by scripts/peer-venv), driven by tests/tests/peer/hpke_peer.py,
//! which rebuilds every HPKE `info` from the documented encodings, not from our code. An attested
//! release a running kmsd sealed to a workload opens in pyhpke; a plaintext pyhpke sealed to the
//! node's HPKE key (as `GetNodeIdentity` names it) is wrapped by kmsd and decrypts to itself;
//! either one, bound to another request, does not open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use kms_proto::v1 as pb;
use kms_testkit::attest::*;
use kms_testkit::*;
use serde_json::{json, Value};
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";
const ATTESTED: &str = r#"{"version":1,"attestation":"required"}"#;

/// Runs the peer's `command` on `input`: its JSON answer, or its error output.
fn peer(command: &str, input: &Value) -> Result<Value, String> {
    let python = peer_python().unwrap_or_else(|e| panic!("the HPKE peer (pyhpke) is required: {e}"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peer/hpke_peer.py");
    let mut child = Command::new(python)
        .arg(script)
        .arg(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsd_seals_and_opens_what_an_independent_hpke_does() {
    let lab = SnpLab::new();
    let options = Options {
        snp_test_roots: lab.roots(),
        ..Options::default()
    };
    let Some(mut c) = Ceremony::new(Backend::Sqlite, options).await else {
        return;
    };
    let payroll = c.create_key("payroll", &[APP], ATTESTED).await;
    c.create_key("files", &[APP], UNATTESTED).await;
    enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let token = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();

    // An attested GenerateDataKey and Decrypt, opened by pyhpke with the workload's private key.
    // The context has keys whose byte order differs from their insertion order, and a non-ASCII
    // one, to check the canonical encoding.
    let context = [("zone", "b"), ("é", "1"), ("app", "payroll")];
    let nonce = vec![0x5C; 16];
    let g = w
        .data
        .generate_data_key(pb::GenerateDataKeyRequest {
            key: "payroll".into(),
            encryption_context: ctx(&context),
            attestation_token: token.token.clone(),
            client_nonce: nonce.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let sealed = g.sealed_plaintext.clone().unwrap();
    let private_key = hex::encode(w.key.to_secret_bytes().expose_secret());
    let release = |operation: &str, key_as_sent: &str, sealed: &pb::SealedKey, client_nonce: &[u8]| {
        json!({
            "private_key": private_key,
            "operation": operation,
            "key_id": payroll.id,
            "key_version": g.key_version,
            "token_id": token.token_id,
            "key_as_sent": key_as_sent,
            "context": context.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "client_nonce": hex::encode(client_nonce),
            "blob": hex::encode(&g.ciphertext_blob),
            "encapsulated_key": hex::encode(&sealed.encapsulated_key),
            "ciphertext": hex::encode(&sealed.ciphertext),
        })
    };
    let opened = peer(
        "open-release",
        &release("generate_data_key", "payroll", &sealed, &nonce),
    )
    .unwrap();
    let data_key = unhex(&opened["plaintext"]);
    assert_eq!(data_key.len(), 32);
    let ours = w.decrypt(&g.ciphertext_blob, &token, &context).await.unwrap();
    assert_eq!(
        ours.expose_secret(),
        &data_key[..],
        "pyhpke and kmsd disagree on the data key"
    );
    // Bound to its request: another client nonce, key as sent, or operation does not open.
    for (what, input) in [
        (
            "another nonce",
            release("generate_data_key", "payroll", &sealed, &[0x5D; 16]),
        ),
        (
            "another key as sent",
            release("generate_data_key", &payroll.id, &sealed, &nonce),
        ),
        ("another operation", release("decrypt", "payroll", &sealed, &nonce)),
    ] {
        assert!(peer("open-release", &input).is_err(), "{what}: opened");
    }
    let d = w
        .data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob.clone(),
            encryption_context: ctx(&context),
            key: String::new(),
            attestation_token: token.token.clone(),
            client_nonce: nonce.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let opened = peer(
        "open-release",
        &release("decrypt", "", &d.sealed_plaintext.unwrap(), &nonce),
    )
    .unwrap();
    assert_eq!(unhex(&opened["plaintext"]), data_key);

    // A plaintext pyhpke seals to the node's HPKE key for an Encrypt of "files" under this
    // context: kmsd wraps it, and the blob decrypts to it.
    let node = w
        .attestation
        .get_node_identity(pb::GetNodeIdentityRequest { nonce: vec![1; 16] })
        .await
        .unwrap()
        .into_inner();
    let seal = |key: &str, plaintext: &[u8]| {
        let s = peer(
            "seal-encrypt-input",
            &json!({
                "node_hpke_public_key": hex::encode(&node.node_hpke_public_key),
                "key": key,
                "context": context.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "plaintext": hex::encode(plaintext),
            }),
        )
        .unwrap();
        pb::EncryptRequest {
            key: "files".into(),
            plaintext: Vec::new(),
            encryption_context: ctx(&context),
            sealed_plaintext: Some(pb::SealedPlaintext {
                node_hpke_public_key: node.node_hpke_public_key.clone(),
                encapsulated_key: unhex(&s["encapsulated_key"]),
                ciphertext: unhex(&s["ciphertext"]),
            }),
        }
    };
    let wrapped = w
        .data
        .encrypt(seal("files", b"sealed by pyhpke"))
        .await
        .unwrap()
        .into_inner();
    let back = w
        .data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: wrapped.ciphertext_blob,
            encryption_context: ctx(&context),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.plaintext, b"sealed by pyhpke");
    // Sealed for "payroll" and sent in a request for "files": kmsd does not open it.
    assert_refused(
        w.data.encrypt(seal("payroll", b"moved")).await,
        Code::InvalidArgument,
        "bad_sealed_plaintext",
    );
}
