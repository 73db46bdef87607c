//! Custodians verify the kmsd they unseal: `kmsctl unseal` asks the answering node for its
//! identity (its own TPM's quote over its node key, unseal key and TLS key), checks it against
//! the custodian's node policy (the host's AK, its PCR 0), and re-wraps the share only to the
//! unseal key of that node, as the node signed it over the custodian's nonce. Refused: no
//! policy, another PCR 0, another AK, an identity without evidence; an operator's proxy that
//! relays the genuine identity but swaps the unseal key, or presents its own key with the
//! genuine evidence. No share reaches such a node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_proto::v1 as pb;
use kms_testkit::proxy::{GrpcProxy, Tamper};
use kms_testkit::swtpm::Swtpm;
use kms_testkit::*;
use prost::Message as _;

const SHARE_METHODS: [&str; 2] = ["/kms.v1.AdminService/GetEncryptedShare", "/kms.v1.AdminService/Unseal"];

struct Node {
    tpm: Swtpm,
    dir: tempfile::TempDir,
}

impl Node {
    fn evidence(&self) -> kms_server::node::NodeEvidence {
        kms_server::node::NodeEvidence::Tpm(kms_server::node::TpmNode {
            tcti: self.tpm.tcti(),
            ak_file: self.dir.path().join("node-ak.json"),
            pcrs: vec![0, 7],
        })
    }

    fn ak_name(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("node-ak.json")).unwrap();
        attestation::attester::tpm::AkKey::from_file(&text)
            .unwrap()
            .parsed_public()
            .unwrap()
            .name()
            .to_hex()
    }

    /// A node policy file trusting `ak` with PCR 0 = `pcr0`.
    fn policy(&self, name: &str, ak: &str, pcr0: &str) -> String {
        let path = self.dir.path().join(format!("{name}.json"));
        std::fs::write(
            &path,
            format!(
                r#"{{"version":1,"tpm":{{"ak_names":["{ak}"]}},"release_policy":{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"tpm"}},{{"claim":"tpm.pcr.0","equals":"{pcr0}"}}]}}}}"#
            ),
        )
        .unwrap();
        path.display().to_string()
    }
}

/// `kmsctl` against `server` as custodian `key_file`, with `args`.
async fn kmsctl(pki: &Pki, server: &impl Reachable, key_file: &std::path::Path, args: &[&str]) -> Out {
    let (cert, key) = pki.client_files("spiffe://test/admin-cli", "admin-cli");
    kmsctl_command(kmsctl_binary().to_str().unwrap())
        .env("KMSCTL_SERVER", format!("https://{}", server.addr()))
        .env("KMSCTL_TLS_SERVER_NAME", "localhost")
        .env("KMSCTL_CA", pki.ca_path())
        .env("KMSCTL_CERT", cert)
        .env("KMSCTL_CLIENT_KEY", key)
        .env("KMSCTL_ADMIN_KEY", key_file)
        .args(args)
        .output()
        .await
        .unwrap()
        .into()
}

/// The server's (unsigned) seal status, asked directly.
async fn seal_status(pki: &Pki, server: &TestServer) -> pb::SealStatus {
    server
        .admin(pki)
        .await
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

async fn progress(pki: &Pki, server: &TestServer) -> u32 {
    seal_status(pki, server).await.progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custodians_unseal_only_the_attested_node() {
    let Some(db) = Db::new(Backend::Sqlite).await else {
        return;
    };
    let pki = Pki::new();
    let node = Node {
        tpm: Swtpm::start(),
        dir: tempfile::tempdir().unwrap(),
    };
    let (alice, bob) = (admin("alice", "DE"), admin("bob", "FR"));
    let opts = || Options {
        init_admins: Some(fingerprints([&alice, &bob])),
        node: node.evidence(),
        ..Options::default()
    };
    let server = TestServer::start(&db, &pki, opts()).await;
    let mut admin_c = server.admin(&pki).await;
    init(
        &mut admin_c,
        &alice,
        pb::InitOp {
            seal: pb::SealKind::Shamir as i32,
            threshold: 2,
            admins: vec![new_admin(&alice, true), new_admin(&bob, true)],
            approval_quorum: 1,
        },
    )
    .await
    .unwrap();
    server.stop().await;
    // Restarted: sealed, a new node key and unseal key, the same AK (kept in its file).
    let server = TestServer::start(&db, &pki, opts()).await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = |k: &kms_core::keyfile::AdminKeyFile, name: &str| {
        let path = keys.path().join(name);
        std::fs::write(&path, k.encode().expose_secret()).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        path
    };
    let (alice_key, bob_key) = (key_file(&alice, "alice.key"), key_file(&bob, "bob.key"));
    let zero = hex::encode([0u8; 32]);
    let good = node.policy("good", &node.ak_name(), &zero);

    // Without a node policy (or the danger flag), nothing is asked for: exit 2.
    let out = kmsctl(&pki, &server, &alice_key, &["unseal"]).await.expect(2);
    assert!(out.stderr.contains("--node-policy"), "{}", out.stderr);
    // Another PCR 0 (another boot chain), another AK (another host).
    let other_pcr = node.policy("other-pcr", &node.ak_name(), &"11".repeat(32));
    let out = kmsctl(
        &pki,
        &server,
        &alice_key,
        &["--node-policy", &other_pcr, "--output", "json", "unseal"],
    )
    .await
    .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_policy_refused", "{}", out.stdout);
    let other_ak = node.policy("other-ak", "000b00", &zero);
    let out = kmsctl(
        &pki,
        &server,
        &alice_key,
        &["--node-policy", &other_ak, "--output", "json", "unseal"],
    )
    .await
    .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_not_allowed", "{}", out.stdout);
    assert_eq!(progress(&pki, &server).await, 0, "no share was sent");

    // The operator's proxy relays the genuine identity with its own unseal key in the status:
    // the node's signature does not cover it.
    let impostor_unseal = vec![4u8; 65];
    let fake = impostor_unseal.clone();
    let swap_status = Tamper::response(
        "/kms.v1.AttestationService/GetNodeIdentity",
        move |id: &mut pb::NodeIdentity| {
            let mut s = pb::SealStatus::decode(id.status.as_slice()).unwrap();
            s.unseal_public_key.clone_from(&fake);
            id.status = s.encode_to_vec();
        },
    );
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", swap_status).await;
    let out = kmsctl(
        &pki,
        &proxy,
        &alice_key,
        &["--node-policy", &good, "--output", "json", "unseal"],
    )
    .await
    .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);
    assert!(proxy.seen().iter().all(|m| !SHARE_METHODS.contains(&m.as_str())));
    // Its own node key and unseal key, signed over kmsctl's nonce, with the genuine evidence:
    // the evidence does not bind its statement.
    let impostor = std::sync::Arc::new(kms_node::NodeKey::generate().unwrap());
    let nonce: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = std::sync::Arc::default();
    let (seen_nonce, used_nonce) = (nonce.clone(), nonce);
    let own_statement = Tamper {
        request: std::sync::Arc::new(move |path, bytes| {
            if path == "/kms.v1.AttestationService/GetNodeIdentity" {
                *seen_nonce.lock().unwrap() = pb::GetNodeIdentityRequest::decode(bytes.as_slice()).unwrap().nonce;
            }
            Ok(bytes)
        }),
        ..Tamper::response(
            "/kms.v1.AttestationService/GetNodeIdentity",
            move |id: &mut pb::NodeIdentity| {
                let mut s = pb::SealStatus::decode(id.status.as_slice()).unwrap();
                s.unseal_public_key.clone_from(&impostor_unseal);
                id.status = s.encode_to_vec();
                id.unseal_public_key.clone_from(&impostor_unseal);
                id.node_public_key = impostor.public_key().to_vec();
                let statement = kms_node::NodeStatement {
                    node_public_key: impostor.public_key(),
                    unseal_public_key: impostor_unseal.clone(),
                    tls_spki_sha256: id.tls_spki_sha256.as_slice().try_into().unwrap(),
                    hpke_public_key: id.node_hpke_public_key.as_slice().try_into().unwrap(),
                };
                let nonce = used_nonce.lock().unwrap().clone();
                id.signature = impostor
                    .sign(&kms_node::message::status(&statement.digest(), &nonce, &id.status))
                    .to_vec();
            },
        )
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", own_statement).await;
    let out = kmsctl(
        &pki,
        &proxy,
        &alice_key,
        &["--node-policy", &good, "--output", "json", "unseal"],
    )
    .await
    .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_evidence_refused", "{}", out.stdout);
    assert!(proxy.seen().iter().all(|m| !SHARE_METHODS.contains(&m.as_str())));
    assert_eq!(progress(&pki, &server).await, 0, "no share was sent");

    // The genuine node: alice directly, bob through an honest proxy (it forwards the share,
    // sealed to the node's attested unseal key, which it cannot open).
    let out = kmsctl(&pki, &server, &alice_key, &["--node-policy", &good, "unseal"])
        .await
        .expect(0);
    assert!(out.stdout.contains("1/2 shares"), "{}", out.stdout);
    let honest = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", Tamper::none()).await;
    let out = kmsctl(
        &pki,
        &honest,
        &bob_key,
        &["--node-policy", &good, "--output", "json", "unseal"],
    )
    .await
    .expect(0);
    assert_eq!(out.json()["unsealed"], true, "{}", out.stdout);
    server.stop().await;

    // A kmsd without evidence: refused under a policy, accepted only with the danger flag.
    let server = TestServer::start(
        &db,
        &pki,
        Options {
            node: kms_server::node::NodeEvidence::None,
            ..opts()
        },
    )
    .await;
    let out = kmsctl(
        &pki,
        &server,
        &alice_key,
        &["--node-policy", &good, "--output", "json", "unseal"],
    )
    .await
    .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_unattested", "{}", out.stdout);
    let out = kmsctl(&pki, &server, &alice_key, &["--danger-unattested-kmsd", "unseal"])
        .await
        .expect(0);
    assert!(out.stderr.contains("danger"), "{}", out.stderr);
    let shown = kmsctl(&pki, &server, &alice_key, &["--output", "json", "node", "show"])
        .await
        .expect(0);
    assert_eq!(shown.json()["evidence"]["kind"], "none", "{}", shown.stdout);
    server.stop().await;
}

/// A kmsd attested by its own swtpm (the node policy `good` pins its AK and PCR 0), initialized
/// by alice alone (shamir 1 of 1, quorum 1) and unsealed, with alice's key file.
struct AttestedLab {
    server: TestServer,
    pki: Pki,
    alice_key: std::path::PathBuf,
    good: String,
    _node: Node,
    _keys: tempfile::TempDir,
    _db: Db,
}

impl AttestedLab {
    async fn start() -> Option<Self> {
        let db = Db::new(Backend::Sqlite).await?;
        let pki = Pki::new();
        let node = Node {
            tpm: Swtpm::start(),
            dir: tempfile::tempdir().unwrap(),
        };
        let alice = admin("alice", "DE");
        let server = TestServer::start(
            &db,
            &pki,
            Options {
                init_admins: Some(fingerprints([&alice])),
                node: node.evidence(),
                ..Options::default()
            },
        )
        .await;
        let mut admin_c = server.admin(&pki).await;
        init(
            &mut admin_c,
            &alice,
            pb::InitOp {
                seal: pb::SealKind::Shamir as i32,
                threshold: 1,
                admins: vec![new_admin(&alice, true)],
                approval_quorum: 1,
            },
        )
        .await
        .unwrap();
        let keys = tempfile::tempdir().unwrap();
        let alice_key = keys.path().join("alice.key");
        std::fs::write(&alice_key, alice.encode().expose_secret()).unwrap();
        std::fs::set_permissions(&alice_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let good = node.policy("good", &node.ak_name(), &hex::encode([0u8; 32]));
        Some(Self {
            server,
            pki,
            alice_key,
            good,
            _node: node,
            _keys: keys,
            _db: db,
        })
    }
}

/// An auditor pins the audit checkpoint keys (`kmsctl audit checkpoint-keys`) only as the
/// attested node signed them over the auditor's nonce: the operator's proxy that swaps in a key
/// of its own (with a matching kid), and so could sign checkpoints over a rewritten log, or
/// replays an older genuine answer, is refused and nothing is written; without a node policy
/// nothing is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_pin_checkpoint_keys_only_from_the_attested_node() {
    let Some(lab) = AttestedLab::start().await else {
        return;
    };
    let AttestedLab {
        pki,
        server,
        alice_key,
        good,
        ..
    } = lab;
    let pin = [
        "--node-policy",
        good.as_str(),
        "--output",
        "json",
        "audit",
        "checkpoint-keys",
    ];

    let out = kmsctl(&pki, &server, &alice_key, &["audit", "checkpoint-keys"])
        .await
        .expect(2);
    assert!(out.stderr.contains("--node-policy"), "{}", out.stderr);
    // An honest proxy, which keeps the answer it forwards.
    let kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = std::sync::Arc::default();
    let keep = kept.clone();
    let recording = Tamper {
        response: std::sync::Arc::new(move |path, bytes| {
            if path == "/kms.v1.AdminService/GetAuditCheckpointKeys" {
                keep.lock().unwrap().clone_from(&bytes);
            }
            Ok(bytes)
        }),
        ..Tamper::none()
    };
    let honest = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", recording).await;
    let pinned = kmsctl(&pki, &honest, &alice_key, &pin).await.expect(0);
    let genuine: serde_json::Value = serde_json::from_str(&pinned.stdout).unwrap();
    assert!(pinned.stdout.contains("EdDSA"), "{}", pinned.stdout);

    // That genuine answer replayed later (signed over the earlier request's nonce): the key set
    // could since have gained a key the replay hides.
    let old = kept.lock().unwrap().clone();
    let replaying = Tamper {
        response: std::sync::Arc::new(move |path, bytes| {
            Ok(if path == "/kms.v1.AdminService/GetAuditCheckpointKeys" {
                old.clone()
            } else {
                bytes
            })
        }),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", replaying).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pin).await.expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);

    // The proxy's own key, with the kid that goes with it.
    let own = vec![0x5au8; 32];
    let kid = hex::encode(&ring::digest::digest(&ring::digest::SHA256, &own).as_ref()[..16]);
    let swap = Tamper::response(
        "/kms.v1.AdminService/GetAuditCheckpointKeys",
        move |k: &mut pb::AuditCheckpointKeys| {
            for key in &mut k.keys {
                key.public_key.clone_from(&own);
                key.kid.clone_from(&kid);
            }
        },
    );
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", swap).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pin).await.expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);
    assert!(!out.stdout.contains("EdDSA"), "no key was written: {}", out.stdout);
    // Through the honest proxy again: the same keys as before.
    let again = kmsctl(&pki, &honest, &alice_key, &pin).await.expect(0);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again.stdout).unwrap(),
        genuine
    );
    server.stop().await;
}

/// An admin acts only on answers the attested node signed over their own request: the
/// operator's proxy (a certificate the admin's CA trusts) that strips the signature, changes an
/// answer, replays an older genuine answer (hiding that the key was disabled since), or signs
/// with a key of its own is refused (`node_unsigned`, `node_signature`, `node_unknown`) and
/// nothing it said is printed; without a node policy nothing is signed or sent. The same for a
/// data-plane request the proxy changes (`kmsctl data encrypt`) and for the token keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_act_only_on_answers_the_attested_node_signed() {
    use std::sync::{Arc, Mutex};

    let Some(lab) = AttestedLab::start().await else {
        return;
    };
    let AttestedLab {
        pki,
        server,
        alice_key,
        good,
        ..
    } = lab;
    let pinned = |args: &[&'static str]| -> Vec<&str> {
        let mut all = vec!["--node-policy", good.as_str(), "--output", "json"];
        all.extend_from_slice(args);
        all
    };
    const DESCRIBE: &str = "/kms.v1.AdminService/DescribeKey";

    // Without a node policy (or the danger flag) nothing is signed or sent: exit 2.
    let honest = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", Tamper::none()).await;
    let out = kmsctl(&pki, &honest, &alice_key, &["key", "create", "payroll"])
        .await
        .expect(2);
    assert!(out.stderr.contains("--node-policy"), "{}", out.stderr);
    assert!(
        honest.seen().iter().all(|m| !m.starts_with("/kms.v1.AdminService/")),
        "{:?}",
        honest.seen()
    );
    // Through an honest proxy (it forwards the node's signature): the genuine answers.
    let created = kmsctl(&pki, &honest, &alice_key, &pinned(&["key", "create", "payroll"]))
        .await
        .expect(0);
    assert_eq!(created.json()["name"], "payroll", "{}", created.stdout);
    assert!(
        honest
            .seen()
            .contains(&"/kms.v1.AttestationService/GetNodeIdentity".to_owned()),
        "the signer was verified: {:?}",
        honest.seen()
    );

    // A proxy that records the genuine answer to a DescribeKey, signature and all.
    let recorded: Arc<Mutex<(Vec<u8>, tonic::metadata::MetadataMap)>> = Arc::default();
    let (bytes_to, metadata_to) = (recorded.clone(), recorded.clone());
    let recording = Tamper {
        response: Arc::new(move |path, bytes| {
            if path == DESCRIBE {
                bytes_to.lock().unwrap().0.clone_from(&bytes);
            }
            Ok(bytes)
        }),
        metadata: Arc::new(move |path, metadata| {
            if path == DESCRIBE {
                metadata_to.lock().unwrap().1 = metadata.clone();
            }
        }),
        ..Tamper::none()
    };
    let recorder = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", recording).await;
    let enabled = kmsctl(&pki, &recorder, &alice_key, &pinned(&["key", "describe", "payroll"]))
        .await
        .expect(0);
    assert_eq!(enabled.json()["state"], "enabled", "{}", enabled.stdout);
    assert!(
        !recorded.lock().unwrap().1.is_empty(),
        "the answer carried kms- metadata"
    );

    // Stripped: the disable went through (kmsd did it), but kmsctl does not vouch for it.
    let stripping = Tamper {
        metadata: Arc::new(|_, metadata| *metadata = tonic::metadata::MetadataMap::new()),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", stripping).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&["key", "disable", "payroll"]))
        .await
        .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_unsigned", "{}", out.stdout);
    assert_eq!(out.json()["error"]["method"], "disable_key", "{}", out.stdout);
    assert!(out.stderr.contains("may or may not have done it"), "{}", out.stderr);
    assert!(
        !out.stdout.contains("\"state\""),
        "nothing the proxy said is printed: {}",
        out.stdout
    );

    // Replayed: the genuine, signed answer of the earlier describe ("enabled"), for a new one.
    let (old_bytes, old_metadata) = recorded.lock().unwrap().clone();
    let replaying = Tamper {
        response: Arc::new(move |path, bytes| Ok(if path == DESCRIBE { old_bytes.clone() } else { bytes })),
        metadata: Arc::new(move |path, metadata| {
            if path == DESCRIBE {
                *metadata = old_metadata.clone();
            }
        }),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", replaying).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&["key", "describe", "payroll"]))
        .await
        .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);
    assert!(!out.stdout.contains("enabled"), "{}", out.stdout);

    // Changed: "enabled" again, under the genuine signature.
    let changing = Tamper::response(DESCRIBE, |k: &mut pb::KeyMetadata| {
        k.state = pb::KeyState::Enabled as i32;
    });
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", changing).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&["key", "describe", "payroll"]))
        .await
        .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);

    // Changed and signed with the proxy's own key: the node answering GetNodeIdentity (the
    // genuine one: the proxy cannot make evidence for its key) holds another.
    let impostor = Arc::new(kms_node::NodeKey::generate().unwrap());
    let payload: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (seen_payload, used_payload) = (payload.clone(), payload);
    let answer: Arc<Mutex<Vec<u8>>> = Arc::default();
    let (changed_to, signed_from) = (answer.clone(), answer);
    let resigning = Tamper {
        request: Arc::new(move |path, bytes| {
            if path == DESCRIBE {
                *seen_payload.lock().unwrap() = pb::SignedRequest::decode(bytes.as_slice()).unwrap().payload;
            }
            Ok(bytes)
        }),
        response: Arc::new(move |path, bytes| {
            if path != DESCRIBE {
                return Ok(bytes);
            }
            let mut k = pb::KeyMetadata::decode(bytes.as_slice()).unwrap();
            k.state = pb::KeyState::Enabled as i32;
            let changed = k.encode_to_vec();
            changed_to.lock().unwrap().clone_from(&changed);
            Ok(changed)
        }),
        metadata: Arc::new(move |path, metadata| {
            if path != DESCRIBE {
                return;
            }
            let message = kms_node::message::admin_answer(
                "describe_key",
                &used_payload.lock().unwrap(),
                &signed_from.lock().unwrap(),
            );
            metadata.insert_bin(
                kms_proto::answer::NODE_KEY_METADATA,
                tonic::metadata::MetadataValue::from_bytes(&impostor.public_key()),
            );
            metadata.insert_bin(
                kms_proto::answer::SIGNATURE_METADATA,
                tonic::metadata::MetadataValue::from_bytes(&impostor.sign(&message)),
            );
        }),
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", resigning).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&["key", "describe", "payroll"]))
        .await
        .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_unknown", "{}", out.stdout);

    // Data-plane calls too. kmsctl seals the Encrypt plaintext to the attested node's HPKE key:
    // the proxy sees only HPKE ciphertext, a context it changes makes kmsd refuse the sealed
    // plaintext (`bad_sealed_plaintext`, nothing wrapped), and a blob it swaps into the answer is
    // not the one kmsd signed for this request (`node_signature`); the honest path gets the blob.
    let files = [
        "key",
        "create",
        "files",
        "--grant",
        "spiffe://test/admin-cli=all",
        "--release-policy",
        r#"{"version":1,"attestation":"none"}"#,
    ];
    kmsctl(&pki, &honest, &alice_key, &pinned(&files)).await.expect(0);
    let encrypt = [
        "data",
        "encrypt",
        "files",
        "--context",
        "app=payroll",
        "--text",
        "salaries",
    ];
    let recontext = Tamper {
        request: Arc::new(|path, bytes| {
            if path != "/kms.v1.KeyService/Encrypt" {
                return Ok(bytes);
            }
            let mut r = pb::EncryptRequest::decode(bytes.as_slice()).unwrap();
            r.encryption_context.insert("app".into(), "proxy".into());
            Ok(r.encode_to_vec())
        }),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", recontext).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&encrypt)).await.expect(1);
    assert_eq!(out.json()["error"]["reason"], "bad_sealed_plaintext", "{}", out.stdout);
    let sent: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let recorded = sent.clone();
    let reblob = Tamper {
        request: Arc::new(move |path, bytes| {
            if path == "/kms.v1.KeyService/Encrypt" {
                recorded.lock().unwrap().push(bytes.clone());
            }
            Ok(bytes)
        }),
        ..Tamper::response("/kms.v1.KeyService/Encrypt", |r: &mut pb::EncryptResponse| {
            r.ciphertext_blob[40] ^= 1;
        })
    };
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", reblob).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&encrypt)).await.expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);
    assert_eq!(out.json()["error"]["method"], "encrypt", "{}", out.stdout);
    let sent = sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let request = pb::EncryptRequest::decode(sent[0].as_slice()).unwrap();
    assert!(request.plaintext.is_empty());
    assert!(request.sealed_plaintext.is_some());
    assert!(
        !sent[0].windows(b"salaries".len()).any(|w| w == b"salaries"),
        "the proxy saw the plaintext"
    );
    let out = kmsctl(&pki, &honest, &alice_key, &pinned(&encrypt)).await.expect(0);
    assert!(out.json()["ciphertext_blob"].is_string(), "{}", out.stdout);

    // The token keys a relying party pins: a proxy's own JWKS (its tokens would verify) is
    // refused, the genuine one is taken.
    let own_jwks = Tamper::response("/kms.v1.AttestationService/GetTokenKeys", |k: &mut pb::TokenKeys| {
        k.jwks_json = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"proxy","alg":"EdDSA","use":"sig"}]}"#.into();
    });
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", own_jwks).await;
    let out = kmsctl(&pki, &proxy, &alice_key, &pinned(&["token", "keys"]))
        .await
        .expect(1);
    assert_eq!(out.json()["error"]["kind"], "node_signature", "{}", out.stdout);
    assert!(!out.stdout.contains("proxy"), "{}", out.stdout);
    let out = kmsctl(&pki, &honest, &alice_key, &pinned(&["token", "keys"]))
        .await
        .expect(0);
    assert!(out.json()["keys"].is_array(), "{}", out.stdout);

    // The deployment a request is signed for comes from the verified node's signed status, not
    // from the unsigned GetSealStatus: a proxy that names another deployment there (one where
    // the same admin key is an admin too, say) cannot make kmsctl sign for it, with or without
    // --deployment.
    let deployment = seal_status(&pki, &server).await.deployment_id;
    let elsewhere = Tamper::response("/kms.v1.AdminService/GetSealStatus", |s: &mut pb::SealStatus| {
        s.deployment_id = "dep-elsewhere".into();
    });
    let proxy = GrpcProxy::start(&pki, &server, "spiffe://test/admin-cli", elsewhere).await;
    // `kmsctl status` shows what the proxy wrote unless asked for the node's signed status.
    let unsigned = kmsctl(&pki, &proxy, &alice_key, &["--output", "json", "status"])
        .await
        .expect(0);
    assert_eq!(unsigned.json()["deployment_id"], "dep-elsewhere", "{}", unsigned.stdout);
    assert!(unsigned.json().get("signed_by").is_none(), "{}", unsigned.stdout);
    let signed = kmsctl(&pki, &proxy, &alice_key, &pinned(&["status"])).await.expect(0);
    assert_eq!(signed.json()["deployment_id"], deployment.as_str(), "{}", signed.stdout);
    assert!(
        signed.json()["signed_by"].as_str().unwrap().starts_with("node-"),
        "{}",
        signed.stdout
    );
    let listed = kmsctl(&pki, &proxy, &alice_key, &pinned(&["key", "list"]))
        .await
        .expect(0);
    assert!(listed.stdout.contains("payroll"), "{}", listed.stdout);
    let mut with_pin = vec!["--deployment", deployment.as_str()];
    with_pin.extend(pinned(&["key", "list"]));
    kmsctl(&pki, &proxy, &alice_key, &with_pin).await.expect(0);
    let mut elsewhere_pin = vec!["--deployment", "dep-elsewhere"];
    elsewhere_pin.extend(pinned(&["key", "list"]));
    let out = kmsctl(&pki, &proxy, &alice_key, &elsewhere_pin).await.expect(4);
    assert!(
        out.stdout.contains("refusing to sign") || out.stderr.contains("refusing to sign"),
        "{} {}",
        out.stdout,
        out.stderr
    );

    // The truth, through the honest proxy: the disable that the stripped answer did not vouch for.
    let now = kmsctl(&pki, &honest, &alice_key, &pinned(&["key", "describe", "payroll"]))
        .await
        .expect(0);
    assert_eq!(now.json()["state"], "disabled", "{}", now.stdout);
    server.stop().await;
}
