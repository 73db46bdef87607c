//! The attested-release admin surface of the real `kmsctl` binary against a real `kmsd` over mTLS,
//! on SQLite and PostgreSQL: enrolling a real captured SEV-SNP report (verified by the server
//! against AMD's pinned roots), the jurisdiction rule, listing, describing and revoking; a TPM
//! machine enrolled from a real software TPM's credential activation; release policy changes;
//! the token keys, and offline verification of a token the server issued.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;

use attestation::attester::tpm::{AkKey, AkScheme, EkKind, Tpm};
use kms_proto::v1 as pb;
use kms_proto::v1::attestation_service_client::AttestationServiceClient;
use kms_testkit::attest::{enroll_snp, SnpLab, Workload};
use kms_testkit::swtpm::Swtpm;
use kms_testkit::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

const KMSCTL: &str = env!("CARGO_BIN_EXE_kmsctl");
const APP: &str = "spiffe://eu.example/app";

/// A real capture (Milan, VCEK valid until 2030-01-24) and one of another chip.
const REPORT: &str = "snp/milan-vcek-report-v2.bin";
const VCEK: &str = "snp/milan-vcek-report-v2.vcek.der";
const OTHER_REPORT: &str = "snp/milan-vcek-report-virtee.bin";
const OTHER_VCEK: &str = "snp/milan-vcek-report-virtee.vcek.der";

fn data(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../attestation/test_data")
        .join(path);
    full.to_str().expect("UTF-8 path").to_owned()
}

/// The chip id of a report (CHIP_ID, 0x1A0..0x1E0), hex.
fn chip_id(report: &str) -> String {
    hex::encode(&std::fs::read(data(report)).unwrap()[0x1A0..0x1E0])
}

/// `kmsctl` pointed at a test server as alice (a custodian, DE), with a client certificate.
struct Kmsctl {
    global: Vec<String>,
    dir: tempfile::TempDir,
}

impl Kmsctl {
    fn new(c: &Ceremony) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let admin_key = dir.path().join("alice.key");
        kms_server::seal::write_secret_file(&admin_key, c.custodians[0].encode().expose_secret()).unwrap();
        let (cert, key) = c.pki.client_files("spiffe://test/kmsctl", "kmsctl");
        let path = |p: &Path| p.to_str().unwrap().to_owned();
        let global = vec![
            "--server".into(),
            format!("https://{}", c.server.addr),
            "--tls-server-name".into(),
            "localhost".into(),
            "--ca".into(),
            path(&c.pki.ca_path()),
            "--cert".into(),
            path(&cert),
            "--key".into(),
            path(&key),
            "--admin-key".into(),
            path(&admin_key),
        ];
        Self { global, dir }
    }

    /// A file in this run's temporary directory.
    fn file(&self, name: &str, contents: &[u8]) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_owned()
    }

    async fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None).await
    }

    async fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Out {
        let mut cmd = kmsctl_command(KMSCTL);
        // The test kmsd has no hardware evidence: its answers are checked under its own key.
        cmd.env("KMSCTL_DANGER_UNATTESTED_KMSD", "1")
            .args(&self.global)
            .args(args);
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("run kmsctl");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input).await.unwrap();
            drop(pipe);
        }
        let out = child.wait_with_output().await.unwrap();
        Out::from(out)
    }
}

async fn snp_enrolment_lifecycle(backend: Backend) {
    let Some(c) = Ceremony::new(backend, Options::default()).await else {
        return;
    };
    let k = Kmsctl::new(&c);
    let (report, vcek) = (data(REPORT), data(VCEK));
    let enroll = |country: &'static str, report: String, vcek: String| {
        let k = &k;
        async move {
            k.run(&[
                "hardware",
                "enroll",
                "--country",
                country,
                "--site",
                "FRA-2",
                "--operator",
                "Example Cloud GmbH",
                "--description",
                "rack 7",
                "--snp-report",
                &report,
                "--vek",
                &vcek,
            ])
            .await
        }
    };

    // Outside the EU: refused by the server, naming the country and the jurisdiction rule.
    let us = enroll("US", report.clone(), vcek.clone()).await.expect(1);
    assert!(us.stderr.contains("hardware_outside_jurisdiction"), "{}", us.stderr);
    assert!(
        us.stderr.contains("country US is outside the allowed jurisdictions"),
        "{}",
        us.stderr
    );
    assert!(
        us.stderr.contains("hint: ") && us.stderr.contains("EU member states"),
        "{}",
        us.stderr
    );
    let none = k.run(&["hardware", "list"]).await.expect(0);
    assert_eq!(none.stdout, "no hardware enrolled\n");

    // The real capture, verified against AMD's pinned roots now.
    let out = k
        .run(&[
            "--output",
            "json",
            "hardware",
            "enroll",
            "--country",
            "DE",
            "--site",
            "FRA-2",
            "--operator",
            "Example Cloud GmbH",
            "--snp-report",
            &report,
            "--vek",
            &vcek,
        ])
        .await
        .expect(0);
    let hw = out.json();
    let id = hw["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("hw-") && id.len() == 35, "{hw}");
    assert_eq!(hw["kind"], "snp");
    assert_eq!(hw["status"], "active");
    assert_eq!(hw["country"], "DE");
    assert_eq!(hw["jurisdiction"], "EU");
    assert_eq!(hw["site"], "FRA-2");
    assert_eq!(hw["operator"], "Example Cloud GmbH");
    assert_eq!(hw["snp_chip_id"], chip_id(REPORT));
    assert_eq!(hw["snp_accept_vlek"], false);
    assert_eq!(hw["tpm_ek_digest"], Value::Null);
    assert_eq!(hw["enrolled_by"], "alice");
    assert_eq!(hw["revoked_unix_ms"], Value::Null);
    assert_eq!(hw["enrollment_record"]["product"], "milan", "{hw}");
    assert_eq!(hw["enrollment_record"]["signer"], "vcek", "{hw}");

    // The same chip again: refused while its entry is active.
    let again = enroll("DE", report.clone(), vcek.clone()).await.expect(1);
    assert!(again.stderr.contains("hardware_already_enrolled"), "{}", again.stderr);
    assert!(again.stderr.contains(&id), "{}", again.stderr);

    // Another chip, human output.
    let other = enroll("FR", data(OTHER_REPORT), data(OTHER_VCEK)).await.expect(0);
    assert!(other.stdout.starts_with("enrolled hw-"), "{}", other.stdout);
    let other_chip = chip_id(OTHER_REPORT);
    assert!(
        other.stdout.contains(&format!(
            "chip id:         {}…{}",
            &other_chip[..16],
            &other_chip[120..]
        )),
        "{}",
        other.stdout
    );
    assert!(
        other.stdout.contains("country:         FR (jurisdiction EU)"),
        "{}",
        other.stdout
    );
    assert!(other.stdout.contains("description:     rack 7"), "{}", other.stdout);

    // A report of the wrong size never reaches the server (exit 4); the VCEK of another chip
    // is refused by the server's verifier with the failed check.
    let short = k.file("short.bin", &[0u8; 100]);
    let bad = enroll("DE", short, vcek.clone()).await.expect(4);
    assert!(
        bad.stderr.contains("not a raw SEV-SNP attestation report"),
        "{}",
        bad.stderr
    );
    let wrong_vcek = enroll("DE", report.clone(), data(OTHER_VCEK)).await.expect(1);
    assert!(
        wrong_vcek.stderr.contains("evidence_signature"),
        "{}",
        wrong_vcek.stderr
    );
    assert!(
        wrong_vcek.stderr.contains("hint: --vek must be"),
        "{}",
        wrong_vcek.stderr
    );

    // List: a table for people, every entry for scripts, pages.
    let list = k.run(&["hardware", "list"]).await.expect(0);
    assert_eq!(list.stdout.lines().count(), 3, "{}", list.stdout);
    assert!(list.stdout.starts_with("ID "), "{}", list.stdout);
    assert!(
        list.stdout.contains(&id) && list.stdout.contains("DE/EU"),
        "{}",
        list.stdout
    );
    assert!(
        list.stdout.contains(&format!("chip {}…", &chip_id(REPORT)[..16])),
        "{}",
        list.stdout
    );
    let page = k
        .run(&["--output", "json", "hardware", "list", "--page-size", "1"])
        .await
        .expect(0)
        .json();
    assert_eq!(page["hardware"].as_array().unwrap().len(), 1);
    let token = page["next_page_token"].as_str().unwrap().to_owned();
    let rest = k
        .run(&[
            "--output",
            "json",
            "hardware",
            "list",
            "--page-size",
            "1",
            "--page-token",
            &token,
        ])
        .await
        .expect(0)
        .json();
    assert_eq!(rest["hardware"].as_array().unwrap().len(), 1);
    let all = k
        .run(&["--output", "json", "hardware", "list", "--page-size", "1", "--all"])
        .await
        .expect(0)
        .json();
    assert_eq!(all["hardware"].as_array().unwrap().len(), 2);
    assert_eq!(all["next_page_token"], Value::Null);

    // Describe, revoke, describe.
    let d = k.run(&["hardware", "describe", &id]).await.expect(0);
    assert!(d.stdout.contains("status:          active"), "{}", d.stdout);
    assert!(d.stdout.contains("by alice"), "{}", d.stdout);
    let r = k
        .run(&["hardware", "revoke", &id, "--reason", "decommissioned"])
        .await
        .expect(0);
    assert!(r.stdout.starts_with(&format!("revoked {id}: ")), "{}", r.stdout);
    let d = k
        .run(&["--output", "json", "hardware", "describe", &id])
        .await
        .expect(0)
        .json();
    assert_eq!(d["status"], "revoked");
    assert_eq!(d["revoked_by"], "alice");
    assert_eq!(d["revocation_reason"], "decommissioned");
    assert!(d["revoked_unix_ms"].as_i64().unwrap() >= d["enrolled_unix_ms"].as_i64().unwrap());
    let d = k.run(&["hardware", "describe", &id]).await.expect(0);
    assert!(d.stdout.contains("status:          revoked"), "{}", d.stdout);
    assert!(d.stdout.contains("reason:          decommissioned"), "{}", d.stdout);

    // Revoking again is refused, and says there is nothing to do.
    let twice = k.run(&["hardware", "revoke", &id, "--reason", "again"]).await.expect(1);
    assert!(
        twice.stderr.contains("FAILED_PRECONDITION (hardware_already_revoked)"),
        "{}",
        twice.stderr
    );
    assert!(
        twice.stderr.contains(&format!("machine {id} is already revoked")),
        "{}",
        twice.stderr
    );
    assert!(twice.stderr.contains("hint: nothing to do"), "{}", twice.stderr);
    let twice = k
        .run(&["--output", "json", "hardware", "revoke", &id, "--reason", "again"])
        .await
        .expect(1)
        .json();
    assert_eq!(twice["ok"], false);
    assert_eq!(twice["error"]["reason"], "hardware_already_revoked");

    // Unknown and malformed ids.
    let unknown = format!("hw-{}", "0".repeat(32));
    let nf = k.run(&["hardware", "describe", &unknown]).await.expect(1);
    assert!(nf.stderr.contains("hardware_not_found"), "{}", nf.stderr);
    assert!(nf.stderr.contains("hint: `kmsctl hardware list`"), "{}", nf.stderr);
    let bad_id = k
        .run(&["hardware", "revoke", "machine-7", "--reason", "x"])
        .await
        .expect(1);
    assert!(bad_id.stderr.contains("invalid_hardware_id"), "{}", bad_id.stderr);

    // A revoked chip can be enrolled anew, under a new id.
    let anew = k
        .run(&[
            "--output",
            "json",
            "hardware",
            "enroll",
            "--country",
            "NL",
            "--site",
            "AMS-1",
            "--operator",
            "Example Cloud B.V.",
            "--snp-report",
            &report,
            "--vek",
            &vcek,
        ])
        .await
        .expect(0)
        .json();
    assert_ne!(anew["id"], id.as_str());
    assert_eq!(anew["snp_chip_id"], chip_id(REPORT));
}
both_backends!(snp_enrolment, super::snp_enrolment_lifecycle);

async fn release_policies_and_tokens(backend: Backend) {
    let lab = SnpLab::new();
    let options = Options {
        snp_test_roots: lab.roots(),
        ..Options::default()
    };
    let Some(mut c) = Ceremony::new(backend, options).await else {
        return;
    };
    let k = Kmsctl::new(&c);
    c.create_key("orders", &[APP], "").await;

    let d = k.run(&["key", "describe", "orders"]).await.expect(0);
    assert!(
        d.stdout
            .contains(r#"release policy:  {"version":1,"attestation":"required"} (version 1)"#),
        "{}",
        d.stdout
    );
    let d = k
        .run(&["--output", "json", "key", "describe", "orders"])
        .await
        .expect(0)
        .json();
    assert_eq!(d["release_policy_version"], 1);

    // Invalid documents: refused by the server, which names the bad part; not JSON: caught
    // before anything is signed (exit 2).
    let typo = r#"{"version":1,"attestation":"required","allOf":[{"claim":"jurisdiction","equals":"EU"},{"claim":"snp.measurment","equals":"00"}]}"#;
    let out = k
        .run(&["key", "set-release-policy", "orders", "--policy", typo])
        .await
        .expect(1);
    assert!(
        out.stderr.contains("INVALID_ARGUMENT (invalid_policy)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("allOf[1].claim"), "{}", out.stderr);
    assert!(out.stderr.contains("snp.measurment"), "{}", out.stderr);
    assert!(
        out.stderr.contains("hint: the message names the bad part"),
        "{}",
        out.stderr
    );
    let file = k.file("extra.json", br#"{"version":1,"attestation":"required","extra":true}"#);
    let out = k
        .run(&[
            "--output",
            "json",
            "key",
            "set-release-policy",
            "orders",
            "--file",
            &file,
        ])
        .await
        .expect(1);
    let doc = out.json();
    assert_eq!(doc["error"]["reason"], "invalid_policy");
    assert!(doc["error"]["message"].as_str().unwrap().contains("\"extra\""), "{doc}");
    let out = k
        .run(&["key", "set-release-policy", "orders", "--policy", "{version:1"])
        .await
        .expect(2);
    assert!(out.stderr.contains("--policy is not JSON"), "{}", out.stderr);
    let d = k
        .run(&["--output", "json", "key", "describe", "orders"])
        .await
        .expect(0)
        .json();
    assert_eq!(d["release_policy_version"], 1, "refusals change nothing");

    // Valid documents bump the version: from a file, then from standard input.
    let eu = r#"{"version":1,"attestation":"required","allOf":[{"claim":"jurisdiction","equals":"EU"}]}"#;
    let file = k.file("eu.json", eu.as_bytes());
    let out = k
        .run(&["key", "set-release-policy", "orders", "--file", &file])
        .await
        .expect(0);
    assert!(out.stdout.contains("is now version 2"), "{}", out.stdout);
    assert!(out.stdout.contains("\"jurisdiction\""), "{}", out.stdout);
    let tcb = r#"{"version":1,"attestation":"required","allOf":[{"claim":"jurisdiction","equals":"EU"},{"claim":"snp.tcb.snp","atLeast":8}]}"#;
    let out = k
        .run_with_stdin(
            &["--output", "json", "key", "set-release-policy", "orders", "--file", "-"],
            Some(tcb.as_bytes()),
        )
        .await
        .expect(0)
        .json();
    assert_eq!(out["release_policy_version"], 3);
    assert_eq!(out["release_policy"]["allOf"][1]["atLeast"], 8);
    let d = k.run(&["key", "describe", "orders"]).await.expect(0);
    assert!(d.stdout.contains("(version 3)"), "{}", d.stdout);
    let nf = k
        .run(&["key", "set-release-policy", "no-such-key", "--policy", eu])
        .await
        .expect(1);
    assert!(nf.stderr.contains("key_not_found"), "{}", nf.stderr);

    // A token the server issued to an attested workload verifies offline with its keys.
    let hw = enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let attested = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();

    // The token keys: one Ed25519 key, the JWKS itself on stdout in both formats.
    let keys = k.run(&["--output", "json", "token", "keys"]).await.expect(0);
    let jwks = keys.json();
    let list = jwks["keys"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{jwks}");
    assert_eq!(list[0]["kty"], "OKP");
    assert_eq!(list[0]["crv"], "Ed25519");
    assert_eq!(list[0]["alg"], "EdDSA");
    let human = k.run(&["token", "keys"]).await.expect(0);
    assert_eq!(human.json(), jwks);
    assert!(
        human.stderr.lines().any(|l| l.starts_with("1 token key: kid ")),
        "{}",
        human.stderr
    );
    let jwks_file = k.file("jwks.json", keys.stdout.as_bytes());

    // The token verifies offline with those keys.
    let token_file = k.file("token.jwt", format!("{}\n", attested.token).as_bytes());
    let out = k
        .run(&["token", "verify", "--token", &token_file, "--jwks", &jwks_file])
        .await
        .expect(0);
    let claims = out.json();
    assert_eq!(claims["sub"], hw.id.as_str());
    assert_eq!(claims["jti"], attested.token_id.as_str());
    assert_eq!(claims["principal"], APP);
    assert_eq!(claims["kms"]["tee"], "snp");
    assert_eq!(claims["kms"]["jurisdiction"], "EU");
    assert_eq!(claims["exp"].as_i64().unwrap() * 1000, attested.expires_unix_ms);
    assert!(out.stderr.contains("Not checked here"), "{}", out.stderr);
    assert!(!out.stdout.contains(&attested.token) && !out.stderr.contains(&attested.token));

    // From standard input, and with the keys fetched from the server.
    let out = k
        .run_with_stdin(
            &["token", "verify", "--token", "-", "--jwks", &jwks_file],
            Some(attested.token.as_bytes()),
        )
        .await
        .expect(0);
    assert_eq!(out.json()["jti"], attested.token_id.as_str());
    let out = k.run(&["token", "verify", "--token", &token_file]).await.expect(0);
    assert!(out.stderr.contains("no --jwks"), "{}", out.stderr);

    // Refusals: expired at --at, a changed signature, keys that did not sign it.
    let exp = claims["exp"].as_i64().unwrap().to_string();
    let out = k
        .run(&[
            "token",
            "verify",
            "--token",
            &token_file,
            "--jwks",
            &jwks_file,
            "--at",
            &exp,
        ])
        .await
        .expect(1);
    assert!(out.stderr.starts_with("refused: token_expired: "), "{}", out.stderr);
    let out = k
        .run(&[
            "--output",
            "json",
            "token",
            "verify",
            "--token",
            &token_file,
            "--jwks",
            &jwks_file,
            "--at",
            &exp,
        ])
        .await
        .expect(1)
        .json();
    assert_eq!(out["ok"], false);
    assert_eq!(out["check"], "token_expired");

    let mut forged = attested.token.clone().into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged_file = k.file("forged.jwt", &forged);
    let out = k
        .run(&["token", "verify", "--token", &forged_file, "--jwks", &jwks_file])
        .await
        .expect(1);
    assert!(
        out.stderr.starts_with("refused: token_bad_signature: "),
        "{}",
        out.stderr
    );

    let other = kms_core::token::jwks_json(&[("someone-else".to_owned(), [7u8; 32])]);
    let other_file = k.file("other.json", other.as_bytes());
    let out = k
        .run(&["token", "verify", "--token", &token_file, "--jwks", &other_file])
        .await
        .expect(1);
    assert!(out.stderr.starts_with("refused: token_unknown_key: "), "{}", out.stderr);
    let not_jwks = k.file("not.json", b"{\"keys\":[{\"kty\":\"RSA\"}]}");
    let out = k
        .run(&["token", "verify", "--token", &token_file, "--jwks", &not_jwks])
        .await
        .expect(4);
    assert!(out.stderr.contains("kty must be `OKP`"), "{}", out.stderr);
}
both_backends!(release_policy_and_token, super::release_policies_and_tokens);

/// A TPM enrolment request as the workload agent writes it.
fn tpm_request(enrollment_id: &str, secret: &[u8], ak_name: &str, ek_digest: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({
        "enrollment_id": enrollment_id,
        "activated_secret": hex::encode(secret),
        "ak_name": ak_name,
        "ek_digest": ek_digest,
    }))
    .unwrap()
}

/// The machine's side: a credential challenge for its EK and AK, answered by its TPM.
async fn challenge(
    machine: &mut AttestationServiceClient<tonic::transport::Channel>,
    ek_certificate: &[u8],
    ak: &AkKey,
    tpm: &Swtpm,
) -> (pb::TpmEnrollmentChallenge, Vec<u8>) {
    let ch = machine
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate: ek_certificate.to_vec(),
            ek_intermediates: Vec::new(),
            ak_public: ak.public.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let secret = Tpm::open(&tpm.tcti())
        .unwrap()
        .activate_credential(ak, EkKind::Rsa2048, &ch.id_object, &ch.encrypted_secret)
        .unwrap();
    (ch, secret.to_vec())
}

async fn tpm_enrolment_cases(backend: Backend) {
    let tpm = Swtpm::start();
    let mut options = Options::default();
    options.attestation.tpm_ek_ca_bundle = Some(tpm.ca_bundle_path());
    let Some(c) = Ceremony::new(backend, options).await else {
        return;
    };
    let k = Kmsctl::new(&c);
    let (ek_certificate, ak) = {
        let mut t = Tpm::open(&tpm.tcti()).unwrap();
        (
            t.ek_certificate(EkKind::Rsa2048).unwrap(),
            t.create_ak(AkScheme::RsaSsa).unwrap(),
        )
    };
    let mut machine = AttestationServiceClient::new(c.server.channel(c.pki.client(APP)).await.unwrap());
    let enroll = |request: String| {
        let k = &k;
        async move {
            k.run(&[
                "hardware",
                "enroll",
                "--country",
                "DE",
                "--site",
                "FRA-2",
                "--operator",
                "Example Cloud GmbH",
                "--tpm-request",
                &request,
            ])
            .await
        }
    };

    // A wrong answer is refused, and uses the attempt up.
    let (ch, secret) = challenge(&mut machine, &ek_certificate, &ak, &tpm).await;
    let mut wrong = secret.clone();
    wrong[0] ^= 1;
    let file = k.file(
        "wrong.json",
        &tpm_request(&ch.enrollment_id, &wrong, &ch.ak_name, &ch.ek_digest),
    );
    let out = enroll(file).await.expect(1);
    assert!(
        out.stderr.contains(&format!("EK digest: {}", ch.ek_digest)),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!("AK name:   {}", ch.ak_name)),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("tpm_credential_mismatch"), "{}", out.stderr);
    assert!(out.stderr.contains("hint: the TPM that answered"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(&hex::encode(&wrong)),
        "the secret is never printed"
    );
    let file = k.file(
        "late.json",
        &tpm_request(&ch.enrollment_id, &secret, &ch.ak_name, &ch.ek_digest),
    );
    let out = enroll(file).await.expect(1);
    assert!(out.stderr.contains("tpm_enrollment_used"), "{}", out.stderr);

    // The right answer enrols the machine; its identities are shown in full.
    let (ch, secret) = challenge(&mut machine, &ek_certificate, &ak, &tpm).await;
    let file = k.file(
        "good.json",
        &tpm_request(&ch.enrollment_id, &secret, &ch.ak_name, &ch.ek_digest),
    );
    let out = enroll(file).await.expect(0);
    assert!(out.stdout.contains("kind:            tpm"), "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("EK digest:       {}", ch.ek_digest)),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!("AK name:         {}", ch.ak_name)),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("match the request file"), "{}", out.stdout);
    assert!(!out.stdout.contains(&hex::encode(&secret)) && !out.stderr.contains(&hex::encode(&secret)));
    let id = out.stdout.lines().next().unwrap().split(' ').nth(1).unwrap().to_owned();
    let d = k
        .run(&["--output", "json", "hardware", "describe", &id])
        .await
        .expect(0)
        .json();
    assert_eq!(d["kind"], "tpm");
    assert_eq!(d["tpm_ek_digest"], ch.ek_digest.as_str());
    assert_eq!(d["tpm_ak_name"], ch.ak_name.as_str());
    assert_eq!(d["snp_chip_id"], Value::Null);
    let der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        d["tpm_ek_certificate"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(der, ek_certificate);

    // A request file whose identities differ from the attempt's (a swapped attempt): the server
    // refuses before enrolling anything, since the expected EK and AK are signed with the request.
    k.run(&["hardware", "revoke", &id, "--reason", "re-enrol"])
        .await
        .expect(0);
    let (ch, secret) = challenge(&mut machine, &ek_certificate, &ak, &tpm).await;
    let lie = "00".repeat(32);
    let file = k.file("lie.json", &tpm_request(&ch.enrollment_id, &secret, &ch.ak_name, &lie));
    let out = enroll(file).await.expect(1);
    assert!(out.stderr.contains("tpm_identity_mismatch"), "{}", out.stderr);
    let list = k
        .run(&["--output", "json", "hardware", "list", "--all"])
        .await
        .expect(0);
    assert!(!list.stdout.contains("\"active\""), "{}", list.stdout);

    // Unknown attempts and malformed files.
    let file = k.file(
        "unknown.json",
        &tpm_request("tpme-0000", &secret, &ch.ak_name, &ch.ek_digest),
    );
    let out = enroll(file).await.expect(1);
    assert!(out.stderr.contains("tpm_enrollment_unknown"), "{}", out.stderr);
    let file = k.file("broken.json", br#"{"enrollment_id":"tpme-1"}"#);
    let out = enroll(file).await.expect(4);
    assert!(out.stderr.contains("\"activated_secret\" is missing"), "{}", out.stderr);
}
both_backends!(tpm_enrolment, super::tpm_enrolment_cases);
