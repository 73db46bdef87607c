//! Attested release end to end over TPM 2.0 with a real software TPM (swtpm, EK certificates from
//! swtpm_setup's local CA, which the server trusts as its TPM-manufacturer CA bundle): enrolment by
//! credential activation, quotes, sealed releases, and the TPM refusals. The machine side runs
//! twice: with our attester (tss-esapi), and with tpm2-tools as an independent TPM stack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use attestation::attester::tpm::{AkScheme, EkKind, Tpm};
use attestation::tpm::credential::CredentialBlob;
use attestation::tpm::PcrValues;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_testkit::attest::*;
use kms_testkit::swtpm::Swtpm;
use kms_testkit::*;
use tonic::Code;

const APP: &str = "spiffe://eu.example/tpm-app";

fn options(swtpm: &Swtpm) -> Options {
    let mut o = Options {
        allow_unattested: false,
        ..Options::default()
    };
    o.attestation.tpm_ek_ca_bundle = Some(swtpm.ca_bundle_path());
    o
}

fn pcr_policy(pcr7_hex: &str) -> String {
    format!(
        r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"tpm"}},{{"claim":"jurisdiction","equals":"EU"}},{{"claim":"tpm.pcr.7","equals":"{pcr7_hex}"}}]}}"#
    )
}

async fn enroll_tpm(
    c: &mut Ceremony,
    w: &mut Workload,
    ek_certificate: Vec<u8>,
    ak_public: Vec<u8>,
    activate: impl FnOnce(&pb::TpmEnrollmentChallenge) -> Vec<u8>,
) -> Result<pb::Hardware, tonic::Status> {
    let challenge = w
        .attestation
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate,
            ek_intermediates: Vec::new(),
            ak_public,
        })
        .await?
        .into_inner();
    let secret = activate(&challenge);
    c.admin
        .enroll_hardware(signed(
            &c.custodians[0],
            Op::EnrollHardware(pb::EnrollHardwareOp {
                country: "AT".into(),
                site: "VIE-1".into(),
                operator: "Example Rechenzentrum GmbH".into(),
                description: "swtpm".into(),
                identity: Some(pb::enroll_hardware_op::Identity::Tpm(pb::TpmEnrollment {
                    enrollment_id: challenge.enrollment_id,
                    activated_secret: secret,
                    expected_ek_digest: challenge.ek_digest,
                    expected_ak_name: challenge.ak_name,
                })),
            }),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn tpm_with_attester(backend: Backend) {
    let swtpm = Swtpm::start();
    let Some(mut c) = Ceremony::new(backend, options(&swtpm)).await else {
        return;
    };
    let key = c.create_key("tpm-data", &[APP], &pcr_policy(&"00".repeat(32))).await;
    let mut w = Workload::new(&c.server, &c.pki, APP).await;

    // Machine side: EK certificate from NV, an AK under the EK, credential activation.
    let (ek_cert, ak) = {
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        (
            tpm.ek_certificate(EkKind::Rsa2048).unwrap(),
            tpm.create_ak(AkScheme::RsaSsa).unwrap(),
        )
    };
    let ak_name = ak.parsed_public().unwrap().name().to_hex();
    let hw = enroll_tpm(&mut c, &mut w, ek_cert.clone(), ak.public.clone(), |ch| {
        assert_eq!(ch.ak_name, ak_name);
        let secret = Tpm::open(&swtpm.tcti())
            .unwrap()
            .activate_credential(&ak, EkKind::Rsa2048, &ch.id_object, &ch.encrypted_secret)
            .unwrap();
        secret.to_vec()
    })
    .await
    .unwrap();
    assert_eq!(hw.kind, pb::HardwareKind::Tpm as i32);
    assert_eq!(hw.tpm_ak_name, ak_name);
    assert_eq!(hw.tpm_ek_certificate, ek_cert);
    assert_eq!(hw.tpm_ek_digest.len(), 64);

    // Attest, generate, open; later decrypt with a fresh attestation.
    let token = w.attest_tpm(&swtpm, &ak).await.unwrap();
    assert_eq!(token.hardware_id, hw.id);
    let claims = kms_core::claims::ReleaseClaims::from_json(&token.claims_json).unwrap();
    claims.validate().unwrap();
    assert_eq!(claims.get("tee").and_then(|v| v.as_str()), Some("tpm"));
    assert_eq!(claims.get("country").and_then(|v| v.as_str()), Some("AT"));
    assert_eq!(
        claims.get("tpm.ak_name").and_then(|v| v.as_str()),
        Some(ak_name.as_str())
    );
    assert_eq!(
        claims.get("tpm.pcr.7").and_then(|v| v.as_str()),
        Some("00".repeat(32).as_str())
    );
    let (g, data_key) = w.generate("tpm-data", &token, &[("doc", "1")]).await.unwrap();
    assert_eq!(g.key_id, key.id);
    let mut later = Workload::new(&c.server, &c.pki, APP).await;
    let token2 = later.attest_tpm(&swtpm, &ak).await.unwrap();
    let plain = later
        .decrypt(&g.ciphertext_blob, &token2, &[("doc", "1")])
        .await
        .unwrap();
    assert_eq!(plain.expose_secret(), data_key.expose_secret());

    // A quote signed by an AK nobody enrolled (same TPM, same EK).
    let stranger = Tpm::open(&swtpm.tcti()).unwrap().create_ak(AkScheme::RsaSsa).unwrap();
    let r = w.attest_tpm(&swtpm, &stranger).await;
    assert_status(r, Code::PermissionDenied, "hardware_not_enrolled");
    assert_audited(&c.db, "attestation.attest", "hardware_not_enrolled").await;

    // Tampered evidence: a PCR value that is not the quoted one; a flipped signature bit.
    let nonce = w.challenge().await;
    let qd = attestation::binding::tpm_qualifying_data(&nonce, &w.public_key());
    let mut ev = Tpm::open(&swtpm.tcti()).unwrap().quote(&ak, &qd, &[0, 1, 7]).unwrap();
    let mut pcrs = PcrValues::new();
    for (i, v) in ev.pcrs.iter() {
        pcrs.insert(i, if i == 7 { [0xAA; 32] } else { *v });
    }
    ev.pcrs = pcrs;
    assert_status(
        w.attest(nonce, tpm_evidence(ev)).await,
        Code::PermissionDenied,
        "evidence_pcrs",
    );
    let nonce = w.challenge().await;
    let qd = attestation::binding::tpm_qualifying_data(&nonce, &w.public_key());
    let mut ev = Tpm::open(&swtpm.tcti()).unwrap().quote(&ak, &qd, &[0, 1, 7]).unwrap();
    let last = ev.signature.len() - 1;
    ev.signature[last] ^= 1;
    assert_status(
        w.attest(nonce, tpm_evidence(ev)).await,
        Code::PermissionDenied,
        "evidence_signature",
    );
    // A quote over another binding (the qualifying data of another nonce).
    let nonce = w.challenge().await;
    let qd = attestation::binding::tpm_qualifying_data(&[0; 32], &w.public_key());
    let ev = Tpm::open(&swtpm.tcti()).unwrap().quote(&ak, &qd, &[0, 1, 7]).unwrap();
    assert_status(
        w.attest(nonce, tpm_evidence(ev)).await,
        Code::PermissionDenied,
        "evidence_binding_mismatch",
    );

    // A PCR value the key's policy does not allow: PCR 7 extended (e.g. Secure Boot state).
    swtpm.tpm2(
        "tpm2_pcrextend",
        &["7:sha256=b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"],
    );
    let token3 = w.attest_tpm(&swtpm, &ak).await.unwrap();
    let s = w.generate("tpm-data", &token3, &[]).await.err().unwrap();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "release_policy_not_met")
    );
    assert!(s.message().contains("tpm.pcr.7"), "{}", s.message());
    assert_audited(&c.db, "generate_data_key", "release_policy_not_met").await;

    // The same EK or AK cannot be enrolled twice while active.
    let r = enroll_tpm(&mut c, &mut w, ek_cert, ak.public.clone(), |ch| {
        Tpm::open(&swtpm.tcti())
            .unwrap()
            .activate_credential(&ak, EkKind::Rsa2048, &ch.id_object, &ch.encrypted_secret)
            .unwrap()
            .to_vec()
    })
    .await;
    assert_status(r, Code::AlreadyExists, "hardware_already_enrolled");
}
both_backends!(tpm_enrol_attest_release_with_attester, super::tpm_with_attester);

/// Credential activation refusals and an EK certificate from an untrusted CA.
async fn tpm_enrolment_refusals(backend: Backend) {
    let swtpm = Swtpm::start();
    let Some(mut c) = Ceremony::new(backend, options(&swtpm)).await else {
        return;
    };
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let (ek_cert, ak) = {
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        (
            tpm.ek_certificate(EkKind::Rsa2048).unwrap(),
            tpm.create_ak(AkScheme::EcdsaP256).unwrap(),
        )
    };

    // A wrong answer (not what the TPM recovered): refused, and the attempt is spent.
    let challenge = w
        .attestation
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate: ek_cert.clone(),
            ek_intermediates: Vec::new(),
            ak_public: ak.public.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let enroll = |id: &str, secret: Vec<u8>, ek: &str, ak: &str| {
        signed(
            &c.custodians[1],
            Op::EnrollHardware(pb::EnrollHardwareOp {
                country: "DE".into(),
                site: "MUC-1".into(),
                operator: "Example GmbH".into(),
                description: String::new(),
                identity: Some(pb::enroll_hardware_op::Identity::Tpm(pb::TpmEnrollment {
                    enrollment_id: id.into(),
                    activated_secret: secret,
                    expected_ek_digest: ek.into(),
                    expected_ak_name: ak.into(),
                })),
            }),
        )
    };
    assert_status(
        c.admin
            .enroll_hardware(enroll(
                &challenge.enrollment_id,
                vec![0; 32],
                &challenge.ek_digest,
                &challenge.ak_name,
            ))
            .await,
        Code::PermissionDenied,
        "tpm_credential_mismatch",
    );
    assert_audited(&c.db, "admin.enroll_hardware", "tpm_credential_mismatch").await;
    let real = Tpm::open(&swtpm.tcti())
        .unwrap()
        .activate_credential(&ak, EkKind::Rsa2048, &challenge.id_object, &challenge.encrypted_secret)
        .unwrap()
        .to_vec();
    assert_status(
        c.admin
            .enroll_hardware(enroll(
                &challenge.enrollment_id,
                real.clone(),
                &challenge.ek_digest,
                &challenge.ak_name,
            ))
            .await,
        Code::FailedPrecondition,
        "tpm_enrollment_used",
    );
    assert_status(
        c.admin
            .enroll_hardware(enroll(
                "tpme-unknown",
                vec![0; 32],
                &challenge.ek_digest,
                &challenge.ak_name,
            ))
            .await,
        Code::FailedPrecondition,
        "tpm_enrollment_unknown",
    );

    // A swapped attempt: the signed request expects another EK than the attempt's.
    let again = w
        .attestation
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate: ek_cert.clone(),
            ek_intermediates: Vec::new(),
            ak_public: ak.public.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let secret = Tpm::open(&swtpm.tcti())
        .unwrap()
        .activate_credential(&ak, EkKind::Rsa2048, &again.id_object, &again.encrypted_secret)
        .unwrap()
        .to_vec();
    assert_status(
        c.admin
            .enroll_hardware(enroll(&again.enrollment_id, secret, &"00".repeat(32), &again.ak_name))
            .await,
        Code::PermissionDenied,
        "tpm_identity_mismatch",
    );
    assert_audited(&c.db, "admin.enroll_hardware", "tpm_identity_mismatch").await;

    // An EK certificate from another manufacturer's CA (another swtpm_setup local CA).
    let foreign = Swtpm::start();
    let foreign_cert = Tpm::open(&foreign.tcti())
        .unwrap()
        .ek_certificate(EkKind::Rsa2048)
        .unwrap();
    assert_status(
        w.attestation
            .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
                ek_certificate: foreign_cert,
                ek_intermediates: Vec::new(),
                ak_public: ak.public.clone(),
            })
            .await,
        Code::PermissionDenied,
        "ek_certificate_untrusted",
    );
    assert_audited(&c.db, "attestation.begin_tpm_enrollment", "ek_certificate_untrusted").await;
    // A certificate for this very EK from the manufacturer's own CA, but not an EK certificate
    // under the TCG profile (no TPM identity, no EK key purpose): refused, audited.
    let not_ek = swtpm.issue_by_ek_ca(
        "rsa2048",
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment",
    );
    assert_status(
        w.attestation
            .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
                ek_certificate: not_ek,
                ek_intermediates: Vec::new(),
                ak_public: ak.public.clone(),
            })
            .await,
        Code::PermissionDenied,
        "ek_certificate_not_ek",
    );
    assert_audited(&c.db, "attestation.begin_tpm_enrollment", "ek_certificate_not_ek").await;
    // Garbage instead of a certificate or an AK.
    assert_status(
        w.attestation
            .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
                ek_certificate: b"not a certificate".to_vec(),
                ek_intermediates: Vec::new(),
                ak_public: ak.public.clone(),
            })
            .await,
        Code::PermissionDenied,
        "ek_certificate_malformed",
    );
    assert_status(
        w.attestation
            .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
                ek_certificate: ek_cert,
                ek_intermediates: Vec::new(),
                ak_public: vec![0, 4, 1, 2, 3, 4],
            })
            .await,
        Code::InvalidArgument,
        "evidence_malformed",
    );
}
both_backends!(tpm_enrolment_refusals_and_untrusted_ek, super::tpm_enrolment_refusals);

/// Without a TPM-manufacturer CA bundle, TPM enrolment is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpm_enrolment_needs_a_ca_bundle() {
    let swtpm = Swtpm::start();
    let Some(c) = Ceremony::new(Backend::Sqlite, Options::default()).await else {
        return;
    };
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let r = w
        .attestation
        .begin_tpm_enrollment(pb::BeginTpmEnrollmentRequest {
            ek_certificate: swtpm.ek_certificate("rsa2048"),
            ek_intermediates: Vec::new(),
            ak_public: Vec::new(),
        })
        .await;
    assert_status(r, Code::FailedPrecondition, "tpm_enrollment_not_configured");
}

/// The whole machine side with tpm2-tools (an independent TPM stack): EK and AK, credential
/// activation, quote; the server's release opens with the workload's key.
async fn tpm_with_tpm2_tools(backend: Backend) {
    let swtpm = Swtpm::start();
    let Some(mut c) = Ceremony::new(backend, options(&swtpm)).await else {
        return;
    };
    c.create_key("tools-data", &[APP], &pcr_policy(&"00".repeat(32))).await;
    let mut w = Workload::new(&c.server, &c.pki, APP).await;

    swtpm.tpm2("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    swtpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u", "ak.pub", "-n",
            "ak.name", "-r", "ak.priv",
        ],
    );
    swtpm.tpm2("tpm2_nvread", &["0x01c00002", "-C", "o", "-o", "ek.crt"]);
    let ek_cert = swtpm.read("ek.crt");
    let hw = enroll_tpm(&mut c, &mut w, ek_cert, swtpm.read("ak.pub"), |ch| {
        assert_eq!(hex::encode(swtpm.read("ak.name")), ch.ak_name);
        let credential = CredentialBlob::from_parts(ch.id_object.clone(), ch.encrypted_secret.clone()).to_tpm2_tools();
        swtpm.activate_credential_with_tools("ak.ctx", "ek.ctx", &credential)
    })
    .await
    .unwrap();

    // Attest with a tpm2_quote over PCRs 0, 1, 7.
    let nonce = w.challenge().await;
    let qd = attestation::binding::tpm_qualifying_data(&nonce, &w.public_key());
    swtpm.tpm2(
        "tpm2_quote",
        &[
            "-c",
            "ak.ctx",
            "-l",
            "sha256:0,1,7",
            "-q",
            &hex::encode(qd),
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
    let ev = attestation::tpm::TpmEvidence {
        ak_public: swtpm.read("ak.pub"),
        quote: swtpm.read("quote.msg"),
        signature: swtpm.read("quote.sig"),
        pcrs: PcrValues::from_tpm2_tools(&swtpm.read("pcrs.out")).unwrap(),
    };
    let token = w.attest(nonce, tpm_evidence(ev)).await.unwrap();
    assert_eq!(token.hardware_id, hw.id);
    let (g, k) = w
        .generate("tools-data", &token, &[("via", "tpm2-tools")])
        .await
        .unwrap();
    let again = w
        .decrypt(&g.ciphertext_blob, &token, &[("via", "tpm2-tools")])
        .await
        .unwrap();
    assert_eq!(again.expose_secret(), k.expose_secret());

    // Revoked: the token stops working at once.
    revoke(&mut c.admin, &c.custodians[0], &hw.id).await.unwrap();
    let s = w.generate("tools-data", &token, &[]).await.err().unwrap();
    assert_eq!(reason(&s), "hardware_revoked");
}
both_backends!(tpm_enrol_attest_release_with_tpm2_tools, super::tpm_with_tpm2_tools);
