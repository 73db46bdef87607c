//! The workload side end to end, against a real kmsd (SQLite and PostgreSQL) and a real software
//! TPM: TPM enrolment through the agent library (EK certificate, new AK, credential activation),
//! the admin's EnrollHardware with the request file, attestation with a quote bound to the
//! challenge and the session's HPKE key, a data key generated and opened, and decrypted later
//! under a fresh attestation; policy, revocation and unknown-AK refusals. Then the same protocol
//! with tpm2-tools as an independent TPM stack plugged in through `evidence::from_fn`, SEV-SNP
//! evidence through the same adapter, and the `kms-agent` binary (files, modes, exit codes).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::tpm::credential::CredentialBlob;
use std::collections::BTreeMap;

use attestation::attester::tpm::Tpm;
use attestation::tpm::{PcrValues, TpmEvidence};
use kms_agent::evidence::{from_fn, tpm_evidence, EvidenceRequest};
use kms_agent::{
    decode_ak, encode_ak, AkScheme, Client, ClientConfig, EnrollmentRequest, Error, EvidenceError, NodePolicy,
    NodeTrust, TlsFiles, TpmEnrollOptions, TpmQuoter,
};
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_testkit::attest::revoke;
use kms_testkit::swtpm::Swtpm;
use kms_testkit::*;

const APP: &str = "spiffe://eu.example/app";

/// What the "boot loader" extends PCR 7 with, and the value PCR 7 then holds (SHA-256 of 32 zero
/// bytes followed by it), computed independently with Python's hashlib.
const BOOT_DIGEST: &str = "12fb8bdb5033fd8c59905d1049cbfcb3d9a5ff3b7342176326a05ab2f0c933a1";
const PCR7_BOOTED: &str = "204b6d606b6f02928085ee8e593f954b2cd6262918f90b935c0801fe1c787c5f";

fn options(tpm: &Swtpm) -> Options {
    let mut o = Options {
        allow_unattested: false,
        ..Options::default()
    };
    o.attestation.tpm_ek_ca_bundle = Some(tpm.ca_bundle_path());
    o
}

/// A TPM whose PCR 7 holds [`PCR7_BOOTED`].
fn booted_tpm() -> Swtpm {
    let tpm = Swtpm::start();
    tpm.tpm2("tpm2_pcrextend", &[&format!("7:sha256={BOOT_DIGEST}")]);
    tpm
}

/// The workload's client over mTLS, through the library's own file-based configuration. The
/// kmsd of these tests has no evidence of its own (see `the_agent_trusts_only_an_attested_kmsd`
/// for one that does).
async fn workload(c: &Ceremony) -> Client {
    workload_at(c, &c.server, NodeTrust::DangerUnattested).await
}

async fn workload_at(c: &Ceremony, server: &impl Reachable, trust: NodeTrust) -> Client {
    let (cert, key) = c.pki.client_files(APP, "app");
    let config = ClientConfig::new(format!("https://{}", server.addr()))
        .with_tls(TlsFiles::ca(c.pki.ca_path()).with_identity(cert, key))
        .with_node_trust(trust);
    Client::connect(&config).await.unwrap()
}

/// kmsd attested by a TPM of its own (another swtpm: the kmsd host's), its AK kept in a file;
/// and the node policy that trusts exactly that kmsd host, as its operator hands it over.
struct NodeTpm {
    tpm: Swtpm,
    dir: tempfile::TempDir,
}

impl NodeTpm {
    fn new() -> Self {
        Self {
            tpm: Swtpm::start(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn ak_file(&self) -> std::path::PathBuf {
        self.dir.path().join("node-ak.json")
    }

    fn evidence(&self) -> kms_server::node::NodeEvidence {
        kms_server::node::NodeEvidence::Tpm(kms_server::node::TpmNode {
            tcti: self.tpm.tcti(),
            ak_file: self.ak_file(),
            pcrs: vec![0, 7],
        })
    }

    /// The node policy JSON: this host's AK (read from the file kmsd wrote at start) and its
    /// PCR 0.
    fn policy_json(&self) -> String {
        let ak = decode_ak(&std::fs::read_to_string(self.ak_file()).unwrap()).unwrap();
        let name = ak.parsed_public().unwrap().name().to_hex();
        let pcr0 = hex::encode([0u8; 32]);
        format!(
            r#"{{"version":1,"tpm":{{"ak_names":["{name}"]}},"release_policy":{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"tpm"}},{{"claim":"tpm.pcr.0","equals":"{pcr0}"}}]}}}}"#
        )
    }

    fn policy(&self) -> NodeTrust {
        NodeTrust::Policy(NodePolicy::parse(&self.policy_json()).unwrap())
    }

    /// kmsd (SQLite) attested by this host TPM, trusting the workload TPM `tpm`'s EK CA.
    async fn kmsd(&self, tpm: &Swtpm) -> Option<Ceremony> {
        Ceremony::new(
            Backend::Sqlite,
            Options {
                node: self.evidence(),
                ..options(tpm)
            },
        )
        .await
    }
}

fn policy(ek_digest: &str, pcr7: &str) -> String {
    format!(
        r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"tpm"}},{{"claim":"jurisdiction","equals":"EU"}},{{"claim":"tpm.ek_digest","equals":"{ek_digest}"}},{{"claim":"tpm.pcr.7","equals":"{pcr7}"}}]}}"#
    )
}

async fn enroll(c: &Ceremony, request: &EnrollmentRequest) -> Result<pb::Hardware, tonic::Status> {
    c.admin
        .clone()
        .enroll_hardware(signed(
            &c.custodians[0],
            Op::EnrollHardware(request.enroll_hardware_op("DE", "FRA-2", "Example Cloud GmbH", "swtpm")),
        ))
        .await
        .map(tonic::Response::into_inner)
}

fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[track_caller]
fn assert_reason<T>(r: Result<T, Error>, reason: &str) {
    match r {
        Ok(_) => panic!("expected a refusal with {reason}, got success"),
        Err(e) => assert_eq!(e.reason(), Some(reason), "{e}"),
    }
}

async fn tpm_release(backend: Backend) {
    let mut tpm = booted_tpm();
    let Some(c) = Ceremony::new(backend, options(&tpm)).await else {
        return;
    };
    let client = workload(&c).await;

    // Machine side: EK certificate, new AK, credential activation; the request travels as JSON.
    let pending = client.enroll_tpm(&TpmEnrollOptions::new(tpm.tcti())).await.unwrap();
    let request = EnrollmentRequest::from_json(&pending.request.to_json()).unwrap();
    assert!(pending.expires_unix_ms > kms_core::now_unix_ms());
    let hw = enroll(&c, &request).await.unwrap();
    assert_eq!(hw.kind, pb::HardwareKind::Tpm as i32);
    assert_eq!(hw.status, pb::HardwareStatus::Active as i32);
    assert_eq!(hw.jurisdiction, "EU");
    assert_eq!(hw.tpm_ak_name, request.ak_name);
    assert_eq!(hw.tpm_ek_digest, request.ek_digest);
    assert_eq!(hw.tpm_ek_certificate, tpm.ek_certificate("rsa2048"));
    // A request is good for one enrolment.
    let again = enroll(&c, &request).await.unwrap_err();
    assert_eq!(reason(&again), "tpm_enrollment_used", "{}", again.message());

    let key = c
        .create_key("payroll", &[APP], &policy(&request.ek_digest, PCR7_BOOTED))
        .await;

    // The AK as the machine stores it, reloaded for quoting.
    let ak = decode_ak(&encode_ak(&pending.ak).unwrap()).unwrap();
    let mut quoter = TpmQuoter::new(tpm.tcti(), ak.clone(), &[0, 1, 7]).unwrap();
    let session = client.attest(&mut quoter).await.unwrap();
    assert_eq!(session.hardware_id(), hw.id);
    assert!(!session.is_expired());
    let claims = session.claims();
    assert_eq!(claims["tee"], "tpm");
    assert_eq!(claims["country"], "DE");
    assert_eq!(claims["tpm.ak_name"], request.ak_name);
    assert_eq!(claims["tpm.pcr.7"], PCR7_BOOTED);
    assert_eq!(claims["tpm.pcr.0"], hex::encode([0u8; 32]));
    assert!(claims.get("tpm.pcr.2").is_none(), "only the quoted PCRs are claims");
    assert!(!format!("{session:?}").contains(session.expose_token()));

    let context = ctx(&[("file", "payroll-2025.csv")]);
    let generated = session.generate_data_key("payroll", &context).await.unwrap();
    assert_eq!(generated.key_id, key.id);
    assert_eq!(generated.key_version, 1);
    assert_eq!(generated.data_key.len(), 32);

    // Later, a fresh attestation (new challenge, HPKE key and token) decrypts the blob.
    let later = client.attest(&mut quoter).await.unwrap();
    assert_ne!(later.token_id(), session.token_id());
    assert_ne!(later.hpke_public_key(), session.hpke_public_key());
    let data_key = later
        .decrypt(&generated.ciphertext_blob, &context, Some("payroll"))
        .await
        .unwrap();
    assert_eq!(data_key.expose_secret(), generated.data_key.expose_secret());
    let by_id = later
        .decrypt(&generated.ciphertext_blob, &context, Some(&key.id))
        .await
        .unwrap();
    assert_eq!(by_id.expose_secret(), generated.data_key.expose_secret());
    assert_reason(
        later
            .decrypt(&generated.ciphertext_blob, &ctx(&[("file", "other")]), None)
            .await,
        "decrypt_failed",
    );

    // Another AK of the same TPM was never enrolled: its quotes obtain nothing.
    let stranger = Tpm::open(&tpm.tcti()).unwrap().create_ak(AkScheme::EcdsaP256).unwrap();
    let mut stranger = TpmQuoter::new(tpm.tcti(), stranger, &[7]).unwrap();
    assert_reason(client.attest(&mut stranger).await, "hardware_not_enrolled");

    // The boot changes (PCR 7): the machine still attests, but the key's policy no longer holds.
    tpm.tpm2("tpm2_pcrextend", &[&format!("7:sha256={BOOT_DIGEST}")]);
    let changed = client.attest(&mut quoter).await.unwrap();
    assert_ne!(changed.claims()["tpm.pcr.7"], PCR7_BOOTED);
    assert_reason(
        changed.generate_data_key("payroll", &context).await,
        "release_policy_not_met",
    );

    // A reboot resets the PCRs and advances the reset counter; the same AK, reloaded, attests
    // again once the boot is measured the same way.
    tpm.restart();
    tpm.tpm2("tpm2_pcrextend", &[&format!("7:sha256={BOOT_DIGEST}")]);
    let mut quoter = TpmQuoter::new(tpm.tcti(), ak, &[0, 1, 7]).unwrap();
    let rebooted = client.attest(&mut quoter).await.unwrap();
    assert_eq!(rebooted.claims()["tpm.pcr.7"], PCR7_BOOTED);
    rebooted.generate_data_key("payroll", &context).await.unwrap();

    // Revocation takes effect at once, for existing sessions and new attestations.
    revoke(&mut c.admin.clone(), &c.custodians[0], &hw.id).await.unwrap();
    assert_reason(
        later.decrypt(&generated.ciphertext_blob, &context, None).await,
        "hardware_revoked",
    );
    assert_reason(client.attest(&mut quoter).await, "hardware_revoked");
}

both_backends!(tpm_release_through_the_agent, super::tpm_release);

/// With a node policy the agent trusts only the kmsd host it names (by its TPM's AK and PCR 0),
/// and only answers that host signed: through an operator's TLS-terminating proxy the protocol
/// still works, but a data key of the proxy's choosing sealed to the workload's key with the
/// right HPKE info, a token of its own, or an identity without the host's evidence are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_trusts_only_an_attested_kmsd() {
    use kms_testkit::proxy::{GrpcProxy, Tamper};
    use std::sync::{Arc, Mutex};

    let tpm = booted_tpm();
    let node = NodeTpm::new();
    let Some(c) = node.kmsd(&tpm).await else {
        return;
    };
    let client = workload_at(&c, &c.server, node.policy()).await;
    let verified = client.verify_node().await.unwrap();
    assert_eq!(
        verified.claims.as_ref().unwrap().get("tee").unwrap().as_str(),
        Some("tpm")
    );
    let pending = client.enroll_tpm(&TpmEnrollOptions::new(tpm.tcti())).await.unwrap();
    let request = EnrollmentRequest::from_json(&pending.request.to_json()).unwrap();
    enroll(&c, &request).await.unwrap();
    c.create_key("payroll", &[APP], &policy(&request.ek_digest, PCR7_BOOTED))
        .await;
    let mut quoter = TpmQuoter::new(tpm.tcti(), pending.ak.clone(), &[0, 1, 7]).unwrap();
    let context = ctx(&[("file", "payroll-2026.csv")]);
    let session = client.attest(&mut quoter).await.unwrap();
    let generated = session.generate_data_key("payroll", &context).await.unwrap();

    // Through the operator's proxy, untouched: every answer is still the node's.
    let honest = GrpcProxy::start(&c.pki, &c.server, APP, Tamper::none()).await;
    let via = workload_at(&c, &honest, node.policy()).await;
    let s = via.attest(&mut quoter).await.unwrap();
    let opened = s.decrypt(&generated.ciphertext_blob, &context, None).await.unwrap();
    assert_eq!(opened.expose_secret(), generated.data_key.expose_secret());

    // The proxy answers GenerateDataKey with a data key it chose, sealed to the workload's
    // HPKE key (from the token's cnf) with exactly the info the workload expects.
    let asked: Arc<Mutex<Option<pb::GenerateDataKeyRequest>>> = Arc::default();
    let seen = asked.clone();
    let forging = Tamper {
        request: Arc::new(move |path, bytes| {
            if path == "/kms.v1.KeyService/GenerateDataKey" {
                *seen.lock().unwrap() = Some(prost::Message::decode(bytes.as_slice()).unwrap());
            }
            Ok(bytes)
        }),
        ..Tamper::response(
            "/kms.v1.KeyService/GenerateDataKey",
            move |r: &mut pb::GenerateDataKeyResponse| {
                let req = asked.lock().unwrap().clone().unwrap();
                let token = kms_core::token::TokenClaims::read_unverified(&req.attestation_token).unwrap();
                let asked_context =
                    kms_core::context::EncryptionContext::new(req.encryption_context.clone().into_iter().collect())
                        .unwrap();
                let info = kms_core::hpke_seal::release_info(
                    "generate_data_key",
                    &r.key_id,
                    r.key_version,
                    &token.jti,
                    &kms_core::hpke_seal::release_request(&req.key, &asked_context),
                    &req.client_nonce,
                );
                let chosen = kms_core::hpke_seal::seal_release(
                    &token.hpke_public_key().unwrap(),
                    &info,
                    &r.ciphertext_blob,
                    &[0x66; 32],
                )
                .unwrap();
                let sealed = r.sealed_plaintext.as_mut().unwrap();
                sealed.encapsulated_key = chosen.encapsulated_key;
                sealed.ciphertext = chosen.ciphertext;
            },
        )
    };
    let proxy = GrpcProxy::start(&c.pki, &c.server, APP, forging).await;
    let via = workload_at(&c, &proxy, node.policy()).await;
    let s = via.attest(&mut quoter).await.unwrap();
    match s.generate_data_key("payroll", &context).await {
        Err(Error::Node(e)) => assert_eq!(e.reason(), "node_signature", "{e}"),
        other => panic!("a forged release must be refused: {other:?}"),
    }

    // The proxy changes the request on its way: another key the workload's token also opens
    // (named as the workload names keys), or another encryption context. The genuine node
    // answers the request it got, and the workload, whose release binds what it asked for,
    // refuses that answer.
    c.create_key("payroll-weak", &[APP], &policy(&request.ek_digest, PCR7_BOOTED))
        .await;
    for change in ["key", "context"] {
        let rewriting = Tamper {
            request: Arc::new(move |path, bytes| {
                if path != "/kms.v1.KeyService/GenerateDataKey" {
                    return Ok(bytes);
                }
                let mut r: pb::GenerateDataKeyRequest = prost::Message::decode(bytes.as_slice()).unwrap();
                if change == "key" {
                    r.key = "payroll-weak".into();
                } else {
                    r.encryption_context.insert("file".into(), "chosen-by-the-proxy".into());
                }
                Ok(prost::Message::encode_to_vec(&r))
            }),
            ..Tamper::none()
        };
        let proxy = GrpcProxy::start(&c.pki, &c.server, APP, rewriting).await;
        let via = workload_at(&c, &proxy, node.policy()).await;
        let s = via.attest(&mut quoter).await.unwrap();
        match s.generate_data_key("payroll", &context).await {
            Err(Error::Node(e)) => assert_eq!(e.reason(), "node_signature", "{change}: {e}"),
            other => panic!("an answer to a changed request ({change}) must be refused: {other:?}"),
        }
    }

    // A token of the proxy's own (here: another workload's, with another HPKE key).
    let other_token = s.expose_token().to_owned();
    let swapping = Tamper::response(
        "/kms.v1.AttestationService/Attest",
        move |a: &mut pb::AttestResponse| {
            a.token.clone_from(&other_token);
        },
    );
    let proxy = GrpcProxy::start(&c.pki, &c.server, APP, swapping).await;
    let via = workload_at(&c, &proxy, node.policy()).await;
    match via.attest(&mut quoter).await {
        Err(Error::Node(e)) => assert_eq!(e.reason(), "node_signature", "{e}"),
        other => panic!("a token the node did not sign into its answer must be refused: {other:?}"),
    }

    // An impostor's identity: its own node key, no evidence of the host.
    let impostor = kms_node::NodeKey::generate().unwrap();
    let replacing = Tamper::response(
        "/kms.v1.AttestationService/GetNodeIdentity",
        move |id: &mut pb::NodeIdentity| {
            id.node_public_key = impostor.public_key().to_vec();
            id.evidence = None;
        },
    );
    let proxy = GrpcProxy::start(&c.pki, &c.server, APP, replacing).await;
    let via = workload_at(&c, &proxy, node.policy()).await;
    match via.verify_node().await {
        Err(Error::Node(e)) => assert!(matches!(e.reason(), "node_signature" | "node_unattested"), "{e}"),
        other => panic!("an impostor's identity must be refused: {other:?}"),
    }
    assert_eq!(proxy.seen(), ["/kms.v1.AttestationService/GetNodeIdentity"]);
}

/// tpm2-tools as the TPM stack: its AK and credential activation for enrolment (through the
/// library's BeginTpmEnrollment call), its quotes as the evidence source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm2_tools_evidence_through_from_fn() {
    let tpm = booted_tpm();
    let Some(c) = Ceremony::new(Backend::Sqlite, options(&tpm)).await else {
        return;
    };
    let client = workload(&c).await;

    tpm.tpm2("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    tpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa", "-u", "ak.pub", "-n",
            "ak.name", "-r", "ak.priv",
        ],
    );
    let challenge = client
        .begin_tpm_enrollment(tpm.ek_certificate("rsa2048"), Vec::new(), tpm.read("ak.pub"))
        .await
        .unwrap();
    assert_eq!(challenge.ak_name, hex::encode(tpm.read("ak.name")));
    let credential =
        CredentialBlob::from_parts(challenge.id_object.clone(), challenge.encrypted_secret.clone()).to_tpm2_tools();
    let secret = tpm.activate_credential_with_tools("ak.ctx", "ek.ctx", &credential);
    let request = EnrollmentRequest::new(challenge.enrollment_id, secret, challenge.ak_name, challenge.ek_digest);
    let hw = enroll(&c, &request).await.unwrap();
    c.create_key("payroll", &[APP], &policy(&request.ek_digest, PCR7_BOOTED))
        .await;

    let tools = &tpm;
    let mut quotes = 0;
    let mut source = from_fn(|r: &EvidenceRequest<'_>| {
        quotes += 1;
        let out = tools.tpm2_output(
            "tpm2_quote",
            &[
                "-c",
                "ak.ctx",
                "-l",
                "sha256:0,7",
                "-q",
                &hex::encode(r.tpm_qualifying_data()),
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-o",
                "pcrs.out",
                "-g",
                "sha256",
            ],
        );
        if !out.status.success() {
            return Err(EvidenceError::other(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        tools.tpm2_output("tpm2_flushcontext", &["-t"]);
        let pcrs = PcrValues::from_tpm2_tools(&tools.read("pcrs.out")).map_err(EvidenceError::other)?;
        Ok(tpm_evidence(&TpmEvidence {
            ak_public: tools.read("ak.pub"),
            quote: tools.read("quote.msg"),
            signature: tools.read("quote.sig"),
            pcrs,
        }))
    });
    let session = client.attest(&mut source).await.unwrap();
    assert_eq!(session.hardware_id(), hw.id);
    assert_eq!(session.claims()["tpm.pcr.7"], PCR7_BOOTED);
    let context = ctx(&[("stack", "tpm2-tools")]);
    let generated = session.generate_data_key("payroll", &context).await.unwrap();
    let later = client.attest(&mut source).await.unwrap();
    let data_key = later.decrypt(&generated.ciphertext_blob, &context, None).await.unwrap();
    assert_eq!(data_key.expose_secret(), generated.data_key.expose_secret());
    assert_eq!(quotes, 2);

    // A source that binds something else is refused by the server for the binding.
    let mut wrong = from_fn(|r: &EvidenceRequest<'_>| {
        let mut other = r.nonce.to_vec();
        other[0] ^= 1;
        let out = tools.tpm2_output(
            "tpm2_quote",
            &[
                "-c",
                "ak.ctx",
                "-l",
                "sha256:7",
                "-q",
                &hex::encode(attestation::binding::tpm_qualifying_data(&other, r.hpke_public_key)),
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-o",
                "pcrs.out",
                "-g",
                "sha256",
            ],
        );
        assert!(out.status.success());
        tools.tpm2_output("tpm2_flushcontext", &["-t"]);
        Ok(tpm_evidence(&TpmEvidence {
            ak_public: tools.read("ak.pub"),
            quote: tools.read("quote.msg"),
            signature: tools.read("quote.sig"),
            pcrs: PcrValues::from_tpm2_tools(&tools.read("pcrs.out")).unwrap(),
        }))
    });
    assert_reason(client.attest(&mut wrong).await, "evidence_binding_mismatch");
}

/// Runs the `kms-agent` binary (connection options first) and returns (exit code, stdout JSON
/// or Null, stderr).
async fn agent(connection: &[String], args: &[&str]) -> (i32, serde_json::Value, String) {
    let (code, stdout, stderr) = agent_text(connection, &[&["--output", "json"][..], args].concat()).await;
    let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (code, json, stderr)
}

/// Runs the `kms-agent` binary; returns (exit code, stdout, stderr).
async fn agent_text(connection: &[String], args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kms-agent"));
    for var in [
        "KMS_AGENT_ENDPOINT",
        "KMS_AGENT_CA",
        "KMS_AGENT_CERT",
        "KMS_AGENT_KEY",
        "KMS_AGENT_TCTI",
        "KMS_AGENT_TLS_SERVER_NAME",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.args(connection).args(args).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// The `kms-agent` command line against kmsd and swtpm: enrol, generate, decrypt, attest; its
/// files, modes and exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_end_to_end() {
    let tpm = booted_tpm();
    let node = NodeTpm::new();
    let Some(c) = node.kmsd(&tpm).await else {
        return;
    };
    let (cert, key) = c.pki.client_files(APP, "app");
    let node_policy = node.dir.path().join("node-policy.json");
    std::fs::write(&node_policy, node.policy_json()).unwrap();
    let connection: Vec<String> = vec![
        "--node-policy".into(),
        node_policy.display().to_string(),
        "--endpoint".into(),
        format!("https://{}", c.server.addr),
        "--ca".into(),
        c.pki.ca_path().display().to_string(),
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    let tcti = tpm.tcti();

    let (code, doc, err) = agent(
        &connection,
        &[
            "tpm",
            "enroll",
            "--tcti",
            &tcti,
            "--ak-out",
            &path("ak.json"),
            "--request-out",
            &path("request.json"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(doc["enrollment_id"].as_str().unwrap().starts_with("tpme-"), "{doc}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir.path().join("ak.json")), 0o600);
        assert_eq!(mode(&dir.path().join("request.json")), 0o600);
    }
    let request = EnrollmentRequest::from_json(&std::fs::read_to_string(path("request.json")).unwrap()).unwrap();
    assert_eq!(doc["ak_name"], request.ak_name.as_str());
    enroll(&c, &request).await.unwrap();
    c.create_key("payroll", &[APP], &policy(&request.ek_digest, PCR7_BOOTED))
        .await;

    let (ak, blob, data_key_file) = (path("ak.json"), path("blob"), path("data.key"));
    let evidence = ["--tpm", "--tcti", &tcti, "--ak", &ak, "--pcrs", "0,7"];
    let generate = [
        &[
            "generate-data-key",
            "--key",
            "payroll",
            "--context",
            "file=a",
            "--blob-out",
            &blob,
            "--key-out",
            &data_key_file,
        ][..],
        &evidence[..],
    ]
    .concat();
    let (code, doc, err) = agent(&connection, &generate).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["key_version"], 1);
    assert!(
        doc.get("data_key_base64").is_none(),
        "no key on stdout without the insecure flag"
    );
    let data_key = std::fs::read(path("data.key")).unwrap();
    assert_eq!(data_key.len(), 32);
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("data.key")), 0o600);
    assert!(!err.contains(&hex::encode(&data_key)));

    // Outputs are never replaced silently, and this is found before anything is attested.
    let (code, doc, _) = agent(&connection, &generate).await;
    assert_eq!(code, 4);
    assert_eq!(doc["ok"], false);
    assert!(doc["error"]["message"]
        .as_str()
        .unwrap()
        .contains("refusing to overwrite"));

    let decrypt = |ctx: &'static str, out: &'static str| {
        let mut args = vec![
            "decrypt".to_owned(),
            "--blob".into(),
            path("blob"),
            "--context".into(),
            ctx.into(),
            "--key".into(),
            "payroll".into(),
            "--out".into(),
            path(out),
        ];
        args.extend(evidence.iter().map(|s| (*s).to_owned()));
        args
    };
    let args = decrypt("file=a", "plain");
    let (code, doc, err) = agent(&connection, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["bytes"], 32);
    assert_eq!(std::fs::read(path("plain")).unwrap(), data_key);
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("plain")), 0o600);

    // A refusal: exit 1 and the server's reason code.
    let args = decrypt("file=b", "plain2");
    let (code, doc, err) = agent(&connection, &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(code, 1, "{err}");
    assert_eq!(doc["error"]["reason"], "decrypt_failed");
    assert!(!dir.path().join("plain2").exists());

    // Attest shows the claims, never the token.
    let (code, doc, err) = agent(&connection, &[&["attest"][..], &evidence[..]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["claims"]["tee"], "tpm");
    assert_eq!(doc["claims"]["tpm.pcr.7"], PCR7_BOOTED);
    assert!(doc.get("token").is_none());
    assert!(!err.contains("eyJ"), "no JWT on stderr");
    let (code, text, err) = agent_text(&connection, &[&["attest"][..], &evidence[..]].concat()).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("hardware:") && text.contains("\"tee\": \"tpm\""),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "no JWT on stdout");

    // The data key on stdout only when asked for, insecurely.
    let (code, text, err) = agent_text(
        &connection,
        &[
            &[
                "generate-data-key",
                "--key",
                "payroll",
                "--blob-out",
                &path("blob2"),
                "--insecure-print-key",
            ][..],
            &evidence[..],
        ]
        .concat(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("data key:"), "{text}");
    assert!(err.contains("--insecure-print-key"), "{err}");

    // Nothing listening: exit 3.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = connection.clone();
    let at = unreachable.iter().position(|a| a == "--endpoint").unwrap() + 1;
    unreachable[at] = format!("https://127.0.0.1:{closed}");
    let (code, doc, _) = agent(&unreachable, &[&["attest"][..], &evidence[..]].concat()).await;
    assert_eq!(code, 3);
    assert_eq!(doc["error"]["kind"], "unreachable");

    // A missing AK file is a local problem: exit 4.
    let (code, _, err) = agent(
        &connection,
        &["attest", "--tpm", "--tcti", &tcti, "--ak", &path("missing.json")],
    )
    .await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("missing.json"), "{err}");
}

/// SEV-SNP evidence from elsewhere (the harness's synthetic SNP lab standing in for a guest tool)
/// through `from_fn`: REPORT_DATA carries the request's binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snp_evidence_through_from_fn() {
    use kms_agent::evidence::Evidence;
    use kms_testkit::attest::{enroll_snp, SnpLab};

    let lab = SnpLab::new();
    let opts = Options {
        allow_unattested: false,
        snp_test_roots: lab.roots(),
        ..Options::default()
    };
    let Some(c) = Ceremony::new(Backend::Sqlite, opts).await else {
        return;
    };
    let hw = enroll_snp(
        &mut c.admin.clone(),
        &c.custodians[0],
        lab.evidence(&lab.report()),
        "FR",
        false,
    )
    .await
    .unwrap();
    c.create_key(
        "snp-key",
        &[APP],
        r#"{"version":1,"attestation":"required","allOf":[{"claim":"tee","equals":"snp"}]}"#,
    )
    .await;
    let client = workload(&c).await;
    let mut guest = from_fn(|r: &EvidenceRequest<'_>| {
        let mut report = lab.report();
        report.report_data = r.snp_report_data();
        Ok(Evidence::Snp(lab.evidence(&report)))
    });
    let session = client.attest(&mut guest).await.unwrap();
    assert_eq!(session.hardware_id(), hw.id);
    assert_eq!(session.claims()["tee"], "snp");
    assert_eq!(session.claims()["country"], "FR");
    let context = ctx(&[("vm", "guest-1")]);
    let generated = session.generate_data_key("snp-key", &context).await.unwrap();
    let later = client.attest(&mut guest).await.unwrap();
    let again = later.decrypt(&generated.ciphertext_blob, &context, None).await.unwrap();
    assert_eq!(again.expose_secret(), generated.data_key.expose_secret());
}

/// A kmsd on an SEV-SNP host (its report made by the synthetic lab, bound to the node
/// statement): an agent with an SNP node policy (the lab's chain, a floor, the measurement)
/// trusts it; the same policy with another measurement does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_snp_attested_kmsd_is_verified_by_its_measurement() {
    use kms_testkit::attest::SnpLab;
    use std::sync::Arc;

    let lab = Arc::new(SnpLab::new());
    let host = lab.clone();
    let evidence = kms_server::node::NodeEvidence::DangerTest(Arc::new(move |statement: &kms_node::NodeStatement| {
        let mut report = host.report();
        report.policy &= !attestation::snp::danger::test_chain::TestReport::POLICY_SMT;
        report.platform_info = 1 << 5;
        report.report_data = statement.snp_report_data();
        Ok(kms_server::node::Evidence::Snp(host.snp_evidence(&report)))
    }));
    let Some(c) = Ceremony::new(
        Backend::Sqlite,
        Options {
            node: evidence,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let policy = |measurement: &str| {
        NodeTrust::Policy(
            NodePolicy::new(
                Some(lab.chain.strict_trust(lab.chain.options().tcb)),
                None,
                kms_core::policy::ReleasePolicy::parse(&format!(
                    r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"snp"}},{{"claim":"snp.measurement","equals":"{measurement}"}}]}}"#
                ))
                .unwrap(),
            )
            .unwrap(),
        )
    };
    let node = workload_at(&c, &c.server, policy(&hex::encode([0x33u8; 48])))
        .await
        .verify_node()
        .await
        .unwrap();
    let claims = node.claims.unwrap();
    assert_eq!(claims.get("snp.product").unwrap().as_str(), Some("milan"));
    assert_eq!(
        claims.get("danger_test_root"),
        Some(&kms_core::claims::ClaimValue::Bool(true))
    );
    match workload_at(&c, &c.server, policy(&"00".repeat(48)))
        .await
        .verify_node()
        .await
    {
        Err(Error::Node(e)) => assert_eq!(e.reason(), "node_policy_refused", "{e}"),
        other => panic!("another measurement must be refused: {other:?}"),
    }

    // Pinned to the deployment it serves (from its signed status), kmsd is trusted; pinned to
    // another (genuine kmsd on allowed hardware, initialized by someone else), it is not.
    let served = c
        .admin
        .clone()
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .deployment_id;
    let pinned = |deployment: &str| match policy(&hex::encode([0x33u8; 48])) {
        NodeTrust::Policy(p) => NodeTrust::Policy(p.pinned_to(deployment).unwrap()),
        NodeTrust::DangerUnattested => unreachable!(),
    };
    workload_at(&c, &c.server, pinned(&served))
        .await
        .verify_node()
        .await
        .unwrap();
    match workload_at(&c, &c.server, pinned("dep-someone-else"))
        .await
        .verify_node()
        .await
    {
        Err(Error::Node(e)) => assert_eq!(e.reason(), "node_wrong_deployment", "{e}"),
        other => panic!("another deployment must be refused: {other:?}"),
    }
}
