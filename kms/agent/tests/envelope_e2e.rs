//! The envelope library on kmsd, end to end against a real kmsd (SQLite and PostgreSQL) and a
//! real software TPM: messages whose data key is released to an attested workload (and cached
//! for many messages), kmsd binding the message's encryption context, the release policy
//! refusing a changed boot; plaintext release only through its named option (dev mode); two
//! kmsd deployments wrapping one message; and `kms-agent encrypt|decrypt --in`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::sync::Arc;

use kms_agent::{
    decode_ak, encode_ak, Client, ClientConfig, KmsdKeyring, NodeTrust, TlsFiles, TpmEnrollOptions, TpmQuoter,
};
use kms_envelope::{CacheLimits, DataKeyCache, EncryptionContext, Envelope, Error as EnvelopeError, Suite};
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_testkit::swtpm::Swtpm;
use kms_testkit::*;

const APP: &str = "spiffe://eu.example/app";
const BOOT_DIGEST: &str = "12fb8bdb5033fd8c59905d1049cbfcb3d9a5ff3b7342176326a05ab2f0c933a1";
const PCR7_BOOTED: &str = "204b6d606b6f02928085ee8e593f954b2cd6262918f90b935c0801fe1c787c5f";

async fn workload(c: &Ceremony) -> Client {
    let (cert, key) = c.pki.client_files(APP, "app");
    let config = ClientConfig::new(format!("https://{}", c.server.addr()))
        .with_tls(TlsFiles::ca(c.pki.ca_path()).with_identity(cert, key))
        .with_node_trust(NodeTrust::DangerUnattested);
    Client::connect(&config).await.unwrap()
}

/// Two deployments, the first on SQLite and the second on `central`, each with the dev key
/// "files" (`"attestation": "none"`) that APP may use; `None` without that backend.
async fn two_deployments(central: Backend) -> Option<(Ceremony, Ceremony)> {
    let west = Ceremony::new(Backend::Sqlite, Options::default()).await?;
    let central = Ceremony::new(central, Options::default()).await?;
    west.create_key("files", &[APP], UNATTESTED).await;
    central.create_key("files", &[APP], UNATTESTED).await;
    Some((west, central))
}

fn context() -> EncryptionContext {
    EncryptionContext::new()
        .with("tenant", "acme")
        .with("file", "payroll-2026.csv")
}

/// The kmsd refusal inside an envelope error, if that is what it is.
fn kmsd_reason(e: &EnvelopeError) -> Option<String> {
    let keyring = match e {
        EnvelopeError::NoDataKey(attempts) => attempts.first()?,
        other => other,
    };
    match keyring {
        EnvelopeError::Keyring { source, .. } => source
            .downcast_ref::<kms_agent::Error>()
            .and_then(|a| a.reason().map(str::to_owned)),
        _ => None,
    }
}

/// An enrolled TPM (PCR 7 booted) and a key whose release policy needs it.
async fn enrolled(c: &Ceremony, client: &Client, tpm: &Swtpm) -> (kms_agent::AkKey, pb::KeyMetadata) {
    let pending = client.enroll_tpm(&TpmEnrollOptions::new(tpm.tcti())).await.unwrap();
    let r = &pending.request;
    c.admin
        .clone()
        .enroll_hardware(signed(
            &c.custodians[0],
            Op::EnrollHardware(r.enroll_hardware_op("DE", "FRA-2", "Example Cloud GmbH", "swtpm")),
        ))
        .await
        .unwrap();
    let policy = format!(
        r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"jurisdiction","equals":"EU"}},{{"claim":"tpm.ek_digest","equals":"{}"}},{{"claim":"tpm.pcr.7","equals":"{PCR7_BOOTED}"}}]}}"#,
        r.ek_digest
    );
    let key = c.create_key("files", &[APP], &policy).await;
    (decode_ak(&encode_ak(&pending.ak).unwrap()).unwrap(), key)
}

async fn attested_messages(backend: Backend) {
    let tpm = Swtpm::start();
    tpm.tpm2("tpm2_pcrextend", &[&format!("7:sha256={BOOT_DIGEST}")]);
    let mut options = Options {
        allow_unattested: false,
        ..Options::default()
    };
    options.attestation.tpm_ek_ca_bundle = Some(tpm.ca_bundle_path());
    let Some(c) = Ceremony::new(backend, options).await else {
        return;
    };
    let client = workload(&c).await;
    let (ak, key) = enrolled(&c, &client, &tpm).await;
    let quoter = || TpmQuoter::new(tpm.tcti(), ak.clone(), &[0, 7]).unwrap();

    // One attested release serves several messages through the cache.
    let cache = Arc::new(DataKeyCache::new(8, CacheLimits::default()));
    let writer = Envelope::new(KmsdKeyring::attested(client.clone(), "files", quoter())).with_cache(cache.clone());
    let mut messages = Vec::new();
    for len in [0usize, 1, 70_000, 200_000] {
        let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
        messages.push((writer.encrypt(&plain, &context()).await.unwrap(), plain));
    }
    let blobs: Vec<Vec<u8>> = messages
        .iter()
        .map(|(m, _)| {
            let header = kms_envelope::parse_header(m, &Default::default()).unwrap().0;
            let edk = &header.encrypted_data_keys()[0];
            assert_eq!(edk.provider_id, kms_agent::envelope::PROVIDER_ID);
            assert_eq!(String::from_utf8_lossy(&edk.provider_info), format!("{}/1", key.id));
            edk.ciphertext.clone()
        })
        .collect();
    assert!(
        blobs.windows(2).all(|w| w[0] == w[1]),
        "one data key for the four messages"
    );
    assert_eq!(cache.len().0, 1);

    // A reader without a cache: its own attestation, a release per message.
    let reader = Envelope::new(KmsdKeyring::attested(client.clone(), &key.id, quoter()));
    for (m, plain) in &messages {
        let d = reader.decrypt(m, &context()).await.unwrap();
        assert_eq!(d.plaintext.expose_secret(), &plain[..]);
        assert_eq!(d.header.context().get("tenant"), Some("acme"));
        assert!(d.header.context().get("aws-crypto-public-key").is_some());
    }

    // kmsd bound the message's whole context (the signing key included) to the blob.
    let session = client.attest(&mut quoter()).await.unwrap();
    let without_public_key: std::collections::BTreeMap<String, String> = context().pairs().clone();
    let e = session
        .decrypt(&blobs[0], &without_public_key, None)
        .await
        .err()
        .unwrap();
    assert_eq!(e.reason(), Some("decrypt_failed"), "{e}");

    // Streaming, unsigned suite, 64 KiB frames.
    let streaming = Envelope::new(KmsdKeyring::with_session(
        client.attest(&mut quoter()).await.unwrap(),
        "files",
    ))
    .with_suite(Suite::Aes256GcmHkdfSha512CommitKey)
    .unwrap();
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i| (i % 253) as u8).collect();
    let mut w = streaming.encrypting_writer(Vec::new(), &context(), None).await.unwrap();
    for chunk in big.chunks(100_000) {
        w.write_all(chunk).unwrap();
    }
    let m = w.finish().unwrap();
    let mut r = reader.decrypting_reader(&m[..], &context()).await.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert!(out == big);

    // The boot changes: kmsd's release policy refuses, and the reason comes through.
    tpm.tpm2("tpm2_pcrextend", &[&format!("7:sha256={BOOT_DIGEST}")]);
    let changed = Envelope::new(KmsdKeyring::attested(client.clone(), "files", quoter()));
    let e = changed.encrypt(b"x", &context()).await.unwrap_err();
    assert_eq!(kmsd_reason(&e).as_deref(), Some("release_policy_not_met"), "{e}");
    let e = changed.decrypt(&messages[1].0, &context()).await.err().unwrap();
    assert_eq!(kmsd_reason(&e).as_deref(), Some("release_policy_not_met"), "{e}");
    // Nor does this key release without attestation.
    let plain = Envelope::new(KmsdKeyring::insecure_plaintext_release(client.clone(), "files"));
    let e = plain.encrypt(b"x", &context()).await.unwrap_err();
    assert!(kmsd_reason(&e).is_some(), "{e}");
}

both_backends!(attested_envelope_messages, super::attested_messages);

/// Dev mode: keys with `"attestation": "none"` release in plaintext, through the keyring named
/// for it; two deployments wrap one message, and either opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_release_and_two_deployments() {
    let Some((eu_west, eu_central)) = two_deployments(Backend::Sqlite).await else {
        return;
    };
    let west = workload(&eu_west).await;
    let central = workload(&eu_central).await;
    let both = Envelope::new(KmsdKeyring::insecure_plaintext_release(west.clone(), "files"))
        .with_keyring(KmsdKeyring::insecure_plaintext_release(central.clone(), "files"));
    let m = both.encrypt(b"kept in two regions", &context()).await.unwrap();
    let header = kms_envelope::parse_header(&m, &Default::default()).unwrap().0;
    assert_eq!(header.encrypted_data_keys().len(), 2);
    for client in [&west, &central] {
        let one = Envelope::new(KmsdKeyring::insecure_plaintext_release(client.clone(), "files"));
        let d = one.decrypt(&m, &context()).await.unwrap();
        assert_eq!(d.plaintext.expose_secret(), b"kept in two regions");
    }
    // eu-west goes away: a reader with both keyrings still decrypts through eu-central.
    eu_west.server.stop().await;
    let d = both.decrypt(&m, &context()).await.unwrap();
    assert_eq!(d.plaintext.expose_secret(), b"kept in two regions");
}

/// The node check inside an envelope error (`node_signature`, …), if that is what it is.
fn node_reason(e: &EnvelopeError) -> Option<&'static str> {
    match e {
        EnvelopeError::Keyring { source, .. } => match source.downcast_ref::<kms_agent::Error>() {
            Some(kms_agent::Error::Node(n)) => Some(n.reason()),
            _ => None,
        },
        _ => None,
    }
}

/// The data key goes to the second deployment (Encrypt) sealed to its node's HPKE key, and the
/// wrapped key comes back signed by that node over the request and a fresh nonce: the operator's
/// proxy in front of it sees only HPKE ciphertext, cannot move the sealed key into a request for
/// a key it may decrypt, and when it answers with another genuine blob (an earlier message's:
/// the same key, another data key) or strips the signature, encrypt fails instead of writing a
/// message that would not open through that deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_cannot_swap_the_wrapped_key_of_another_deployment() {
    use kms_testkit::proxy::{GrpcProxy, Tamper};
    use prost::Message as _;
    use std::sync::Mutex;
    use tonic::metadata::MetadataMap;

    let Some((west, central)) = two_deployments(Backend::Sqlite).await else {
        return;
    };
    let direct = workload(&west).await;
    let via = |proxy: &GrpcProxy| {
        let (cert, key) = central.pki.client_files(APP, "app");
        let config = ClientConfig::new(format!("https://{}", proxy.addr()))
            .with_tls(TlsFiles::ca(central.pki.ca_path()).with_identity(cert, key))
            .with_node_trust(NodeTrust::DangerUnattested);
        async move { Client::connect(&config).await.unwrap() }
    };
    let both = |central: Client| {
        Envelope::new(KmsdKeyring::insecure_plaintext_release(direct.clone(), "files"))
            .with_keyring(KmsdKeyring::insecure_plaintext_release(central, "files"))
    };
    const ENCRYPT: &str = "/kms.v1.KeyService/Encrypt";

    // An honest proxy that keeps the first Encrypt answer, signature and all.
    let kept_blob: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let kept_signature: Arc<Mutex<Option<MetadataMap>>> = Arc::default();
    let (blob_to, signature_to) = (kept_blob.clone(), kept_signature.clone());
    let recording = Tamper {
        response: Arc::new(move |path, bytes| {
            if path == ENCRYPT {
                blob_to.lock().unwrap().get_or_insert_with(|| bytes.clone());
            }
            Ok(bytes)
        }),
        metadata: Arc::new(move |path, metadata| {
            if path == ENCRYPT {
                signature_to.lock().unwrap().get_or_insert_with(|| metadata.clone());
            }
        }),
        ..Tamper::none()
    };
    let kept_request: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
    let request_to = kept_request.clone();
    let recording = Tamper {
        request: Arc::new(move |path, bytes| {
            if path == ENCRYPT {
                request_to.lock().unwrap().get_or_insert_with(|| bytes.clone());
            }
            Ok(bytes)
        }),
        ..recording
    };
    let honest = GrpcProxy::start(&central.pki, &central.server, APP, recording).await;
    let first = both(via(&honest).await).encrypt(b"first", &context()).await.unwrap();
    // The data key went to the second deployment sealed to its node's HPKE key: the proxy saw
    // only HPKE ciphertext.
    let sent = pb::EncryptRequest::decode(kept_request.lock().unwrap().clone().unwrap().as_slice()).unwrap();
    assert!(sent.plaintext.is_empty(), "the data key crossed the proxy in clear");
    let sealed = sent.sealed_plaintext.unwrap();
    assert_eq!((sealed.encapsulated_key.len(), sealed.ciphertext.len()), (32, 32 + 16));
    let central_alone = Envelope::new(KmsdKeyring::insecure_plaintext_release(
        workload(&central).await,
        "files",
    ));
    let d = central_alone.decrypt(&first, &context()).await.unwrap();
    assert_eq!(d.plaintext.expose_secret(), b"first");
    let old_blob = kept_blob.lock().unwrap().clone().unwrap();
    let old_signature = kept_signature.lock().unwrap().clone().unwrap();
    assert!(!old_signature.is_empty(), "the answer was signed");

    // The first message's genuine, signed answer, for the second message's request.
    let replaying = Tamper {
        response: Arc::new(move |path, bytes| Ok(if path == ENCRYPT { old_blob.clone() } else { bytes })),
        metadata: Arc::new(move |path, metadata| {
            if path == ENCRYPT {
                metadata.clone_from(&old_signature);
            }
        }),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&central.pki, &central.server, APP, replaying).await;
    let e = both(via(&proxy).await)
        .encrypt(b"second", &context())
        .await
        .unwrap_err();
    assert_eq!(node_reason(&e), Some("node_signature"), "{e}");

    // The sealed data key moved into an Encrypt under a key the proxy's principal may decrypt
    // in clear: it opens only for the request it was sealed for.
    central.create_key("loot", &[APP], UNATTESTED).await;
    let moving = Tamper {
        request: Arc::new(|path, bytes| {
            if path != ENCRYPT {
                return Ok(bytes);
            }
            let mut r = pb::EncryptRequest::decode(bytes.as_slice()).unwrap();
            r.key = "loot".into();
            Ok(r.encode_to_vec())
        }),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&central.pki, &central.server, APP, moving).await;
    let e = both(via(&proxy).await)
        .encrypt(b"second", &context())
        .await
        .unwrap_err();
    let refused = match &e {
        EnvelopeError::Keyring { source, .. } => source
            .downcast_ref::<kms_agent::Error>()
            .and_then(|a| a.refusal())
            .and_then(|r| r.reason()),
        _ => None,
    };
    assert_eq!(refused, Some(kms_agent::Reason::BadSealedPlaintext), "{e}");

    // No signature at all.
    let stripping = Tamper {
        metadata: Arc::new(|_, metadata| *metadata = MetadataMap::new()),
        ..Tamper::none()
    };
    let proxy = GrpcProxy::start(&central.pki, &central.server, APP, stripping).await;
    let e = both(via(&proxy).await)
        .encrypt(b"second", &context())
        .await
        .unwrap_err();
    assert_eq!(node_reason(&e), Some("node_unsigned"), "{e}");

    // Through the honest proxy, the second message opens through either deployment.
    let second = both(via(&honest).await).encrypt(b"second", &context()).await.unwrap();
    let d = central_alone.decrypt(&second, &context()).await.unwrap();
    assert_eq!(d.plaintext.expose_secret(), b"second");
}

/// Behind a load balancer, a reconnection may land on another replica of the second deployment
/// than the one whose HPKE key the data key was sealed to: that replica refuses it
/// (`sealed_for_other_node`, audited), and the keyring verifies the node that answers now and
/// seals to it, and to it again for the next message without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_key_sealed_to_one_replica_is_sealed_again_for_the_one_that_answers() {
    use kms_testkit::proxy::GrpcProxy;
    use std::sync::atomic::{AtomicBool, Ordering};

    let Some((west, central)) = two_deployments(Backend::Postgres).await else {
        return;
    };
    let replica = central.replica(Options::default()).await;
    let mut admin = replica.admin(&central.pki).await;
    submit_share(&mut admin, &central.custodians[1]).await.unwrap();
    submit_share(&mut admin, &central.custodians[2]).await.unwrap();
    // Every call to the first replica until the first Encrypt, then every one to the second.
    let moved = Arc::new(AtomicBool::new(false));
    let on_encrypt = moved.clone();
    let balancer = GrpcProxy::balancing(&central.pki, &[&central.server, &replica], APP, move |path| {
        if path == "/kms.v1.KeyService/Encrypt" {
            on_encrypt.store(true, Ordering::SeqCst);
        }
        usize::from(on_encrypt.load(Ordering::SeqCst))
    })
    .await;
    let (cert, key) = central.pki.client_files(APP, "app");
    let config = ClientConfig::new(format!("https://{}", balancer.addr()))
        .with_tls(TlsFiles::ca(central.pki.ca_path()).with_identity(cert, key))
        .with_node_trust(NodeTrust::DangerUnattested);
    let envelope = Envelope::new(KmsdKeyring::insecure_plaintext_release(workload(&west).await, "files")).with_keyring(
        KmsdKeyring::insecure_plaintext_release(Client::connect(&config).await.unwrap(), "files"),
    );
    let message = envelope.encrypt(b"balanced", &context()).await.unwrap();
    assert!(moved.load(Ordering::SeqCst));
    assert_eq!(
        balancer.seen(),
        [
            "/kms.v1.AttestationService/GetNodeIdentity",
            "/kms.v1.KeyService/Encrypt",
            "/kms.v1.AttestationService/GetNodeIdentity",
            "/kms.v1.KeyService/Encrypt",
        ]
    );
    attest::assert_audited(&central.db, "encrypt", "sealed_for_other_node").await;
    // The next message is sealed to the node verified last (the one this connection reaches
    // now): one Encrypt, no identity asked again.
    let second = envelope.encrypt(b"again", &context()).await.unwrap();
    assert_eq!(balancer.seen().len(), 5);
    assert_eq!(balancer.seen()[4], "/kms.v1.KeyService/Encrypt");
    let central_alone = Envelope::new(KmsdKeyring::insecure_plaintext_release(
        workload(&central).await,
        "files",
    ));
    let d = central_alone.decrypt(&message, &context()).await.unwrap();
    assert_eq!(d.plaintext.expose_secret(), b"balanced");
    let d = central_alone.decrypt(&second, &context()).await.unwrap();
    assert_eq!(d.plaintext.expose_secret(), b"again");
}

/// `kms-agent encrypt` and `decrypt --in`: attested with the TPM, plaintext only once the
/// message verified, exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_encrypts_and_decrypts_files() {
    let tpm = Swtpm::start();
    tpm.tpm2("tpm2_pcrextend", &[&format!("7:sha256={BOOT_DIGEST}")]);
    let mut options = Options::default();
    options.attestation.tpm_ek_ca_bundle = Some(tpm.ca_bundle_path());
    let Some(c) = Ceremony::new(Backend::Sqlite, options).await else {
        return;
    };
    let client = workload(&c).await;
    let (ak, _) = enrolled(&c, &client, &tpm).await;
    c.create_key("dev", &[APP], UNATTESTED).await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    std::fs::write(path("ak.json"), encode_ak(&ak).unwrap().as_bytes()).unwrap();
    let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(path("plain"), &plain).unwrap();
    let (cert, key) = c.pki.client_files(APP, "app");
    let connection: Vec<String> = [
        "--danger-unattested-kmsd",
        "--endpoint",
        &format!("https://{}", c.server.addr),
        "--ca",
        &c.pki.ca_path().display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "--output",
        "json",
    ]
    .map(String::from)
    .to_vec();
    let tcti = tpm.tcti();
    let tpm_args = ["--tpm", "--tcti", &tcti, "--ak", &path("ak.json"), "--pcrs", "0,7"];
    let run = |args: Vec<String>| {
        let connection = connection.clone();
        async move {
            let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kms-agent"))
                .env_remove("KMS_AGENT_ENDPOINT")
                .args(&connection)
                .args(&args)
                .output()
                .await
                .unwrap();
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            (
                out.status.code().unwrap_or(-1),
                doc,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    let args = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();

    let mut enc = args(&[
        "encrypt",
        "--key",
        "files",
        "--in",
        &path("plain"),
        "--out",
        &path("msg"),
        "--context",
        "tenant=acme",
        "--frame-length",
        "65536",
    ]);
    enc.extend(args(&tpm_args));
    let (code, doc, err) = run(enc.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["suite"], "0x0578", "{doc}");
    assert_eq!(doc["in_bytes"], 300_000);
    // Not twice: the output exists.
    let (code, _, err) = run(enc).await;
    assert_eq!(code, 4, "{err}");

    let mut dec = args(&[
        "decrypt",
        "--in",
        &path("msg"),
        "--out",
        &path("out"),
        "--key",
        "files",
        "--context",
        "tenant=acme",
    ]);
    dec.extend(args(&tpm_args));
    let (code, doc, err) = run(dec.clone()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["bytes"], 300_000, "{doc}");
    assert!(std::fs::read(path("out")).unwrap() == plain);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(path("out")).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // A message changed in its last frame: refused (exit 4), and no plaintext file appears,
    // although the frames before it were streamed.
    let mut m = std::fs::read(path("msg")).unwrap();
    let i = m.len() - 150;
    m[i] ^= 1;
    std::fs::write(path("bad"), &m).unwrap();
    let mut bad = args(&[
        "decrypt",
        "--in",
        &path("bad"),
        "--out",
        &path("out2"),
        "--key",
        "files",
    ]);
    bad.extend(args(&tpm_args));
    let (code, doc, err) = run(bad).await;
    assert_eq!(code, 4, "{err}");
    assert_eq!(doc["ok"], false);
    assert!(!dir.path().join("out2").exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        5,
        "no temporary file is left"
    );

    // Another context than the message's.
    let mut wrong = args(&[
        "decrypt",
        "--in",
        &path("msg"),
        "--out",
        &path("out3"),
        "--key",
        "files",
        "--context",
        "tenant=other",
    ]);
    wrong.extend(args(&tpm_args));
    let (code, _, err) = run(wrong).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("encryption context"), "{err}");

    // Dev mode: plaintext release only when named, and only for keys that allow it.
    let dev = args(&[
        "encrypt",
        "--key",
        "dev",
        "--in",
        &path("plain"),
        "--out",
        &path("dev.msg"),
        "--insecure-plaintext-release",
    ]);
    let (code, _, err) = run(dev).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("insecure-plaintext-release"), "it warns: {err}");
    let (code, _, err) = run(args(&[
        "decrypt",
        "--in",
        &path("dev.msg"),
        "--out",
        &path("dev.out"),
        "--key",
        "dev",
        "--insecure-plaintext-release",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read(path("dev.out")).unwrap() == plain);
    let (code, _, err) = run(args(&[
        "encrypt",
        "--key",
        "files",
        "--in",
        &path("plain"),
        "--out",
        &path("x.msg"),
        "--insecure-plaintext-release",
    ]))
    .await;
    assert_eq!(code, 1, "the attested key refuses: {err}");
    let (code, _, err) = run(args(&[
        "encrypt",
        "--key",
        "dev",
        "--in",
        &path("plain"),
        "--out",
        &path("y.msg"),
    ]))
    .await;
    assert_eq!(code, 2, "neither evidence nor the insecure option: {err}");
}
