//! Attested release end to end over SEV-SNP evidence: enrolment, challenge, Attest, sealed
//! GenerateDataKey/Decrypt, release policies, and the refusal matrix (each refusal audited), on
//! SQLite and PostgreSQL; two replicas on one PostgreSQL. Synthetic reports are signed by a test
//! chain the server trusts through `danger.snp_test_roots`; the real captured reports are
//! enrolled against AMD's pinned roots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kms_proto::v1 as pb;
use kms_testkit::attest::*;
use kms_testkit::*;
use tonic::Code;

const APP: &str = "spiffe://eu.example/app";
const OTHER: &str = "spiffe://eu.example/other";

fn options(labs: &[&SnpLab]) -> Options {
    Options {
        allow_unattested: false,
        snp_test_roots: labs.iter().flat_map(|l| l.roots()).collect(),
        ..Options::default()
    }
}

const ATTESTED: &str = r#"{"version":1,"attestation":"required"}"#;

fn measurement_policy(hex_measurement: &str) -> String {
    format!(
        r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"tee","equals":"snp"}},{{"claim":"jurisdiction","equals":"EU"}},{{"claim":"snp.measurement","in":["{hex_measurement}"]}},{{"claim":"snp.tcb.snp","atLeast":8}}]}}"#
    )
}

async fn snp_round_trip(backend: Backend) {
    let lab = SnpLab::new();
    let Some(mut c) = Ceremony::new(backend, options(&[&lab])).await else {
        return;
    };
    let key = c
        .create_key("payroll", &[APP], &measurement_policy(&hex::encode([0x33u8; 48])))
        .await;
    let hw = enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    assert_eq!(hw.kind, pb::HardwareKind::Snp as i32);
    assert_eq!(hw.status, pb::HardwareStatus::Active as i32);
    assert_eq!(hw.jurisdiction, "EU");
    assert_eq!(hw.snp_chip_id, lab.chip_id_hex());

    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let token = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();
    assert_eq!(token.hardware_id, hw.id);
    assert_eq!(token.token_id.len(), 32);
    let claims: serde_json::Value = serde_json::from_str(&token.claims_json).unwrap();
    assert_eq!(claims["tee"], "snp");
    assert_eq!(claims["country"], "DE");
    assert_eq!(claims["jurisdiction"], "EU");
    assert_eq!(claims["site"], "FRA-2");
    assert_eq!(claims["operator"], "Example Cloud GmbH");
    assert_eq!(claims["danger_test_root"], true);
    assert_eq!(claims["snp.measurement"], hex::encode([0x33u8; 48]));
    let now_ms = kms_core::now_unix_ms();
    assert!(token.expires_unix_ms > now_ms && token.expires_unix_ms <= now_ms + 600_000);

    // Generate: blob + key sealed to the workload; the key opens only with its private key.
    let (g, data_key) = w.generate("payroll", &token, &[("file", "a")]).await.unwrap();
    assert_eq!(g.key_id, key.id);
    assert_eq!(data_key.expose_secret().len(), 32);

    // Later, with a fresh attestation (a new HPKE key and token), Decrypt gives the same key.
    let mut later = Workload::new(&c.server, &c.pki, APP).await;
    let token2 = later.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();
    assert_ne!(token2.token_id, token.token_id);
    let again = later
        .decrypt(&g.ciphertext_blob, &token2, &[("file", "a")])
        .await
        .unwrap();
    assert_eq!(again.expose_secret(), data_key.expose_secret());

    // The sealed key is bound to its token and to the request's client nonce: another token's id,
    // or another request's nonce (a replayed answer), does not open it.
    let decrypt_request = |nonce: Vec<u8>| pb::DecryptRequest {
        ciphertext_blob: g.ciphertext_blob.clone(),
        encryption_context: ctx(&[("file", "a")]),
        key: String::new(),
        attestation_token: token2.token.clone(),
        client_nonce: nonce,
    };
    let nonce = vec![0x5C; 16];
    let r = later
        .data
        .decrypt(decrypt_request(nonce.clone()))
        .await
        .unwrap()
        .into_inner();
    let sealed = r.sealed_plaintext.unwrap();
    // The HPKE info of an answer to this Decrypt, for a token and a client nonce.
    let decrypt_info = |token_id: &str, nonce: &[u8]| {
        kms_core::hpke_seal::release_info(
            "decrypt",
            &r.key_id,
            r.key_version,
            token_id,
            &requested("", &[("file", "a")]),
            nonce,
        )
    };
    let pb_sealed = pb::SealedKey {
        encapsulated_key: sealed.encapsulated_key.clone(),
        ciphertext: sealed.ciphertext.clone(),
        ..Default::default()
    };
    let opened = later.open(&pb_sealed, &decrypt_info(&token2.token_id, &nonce), &g.ciphertext_blob);
    assert_eq!(opened.expose_secret(), data_key.expose_secret());
    let info = decrypt_info(&token2.token_id, &[0x5D; 16]);
    assert!(later
        .key
        .open(
            &kms_core::hpke_seal::Sealed {
                encapsulated_key: sealed.encapsulated_key.clone(),
                ciphertext: sealed.ciphertext.clone(),
            },
            &info,
            &g.ciphertext_blob,
        )
        .is_err());
    for (bad, why) in [
        (Vec::new(), "missing_client_nonce"),
        (vec![1; 8], "invalid_client_nonce"),
        (vec![1; 65], "invalid_client_nonce"),
    ] {
        assert_status(
            later.data.decrypt(decrypt_request(bad)).await,
            Code::InvalidArgument,
            why,
        );
    }
    let info = decrypt_info(&token.token_id, &nonce);
    assert!(later
        .key
        .open(
            &kms_core::hpke_seal::Sealed {
                encapsulated_key: sealed.encapsulated_key.clone(),
                ciphertext: sealed.ciphertext.clone(),
            },
            &info,
            &g.ciphertext_blob,
        )
        .is_err());
    // ... nor does the first workload's key.
    let info = decrypt_info(&token2.token_id, &nonce);
    assert!(w
        .key
        .open(
            &kms_core::hpke_seal::Sealed {
                encapsulated_key: sealed.encapsulated_key,
                ciphertext: sealed.ciphertext,
            },
            &info,
            &g.ciphertext_blob,
        )
        .is_err());

    // Without a token, an attested key releases nothing.
    assert_status(
        w.data
            .generate_data_key(pb::GenerateDataKeyRequest {
                key: "payroll".into(),
                encryption_context: ctx(&[]),
                attestation_token: String::new(),
                client_nonce: Vec::new(),
            })
            .await,
        Code::FailedPrecondition,
        "attestation_required",
    );

    // Audit: the Attest entry carries the claims; releases name token and machine.
    let entries = audit_entries(&c.db).await;
    let attest = entries
        .iter()
        .find(|(op, out, _, _)| op == "attestation.attest" && out == "allowed")
        .unwrap();
    assert!(
        attest.3.contains(&token.token_id) && attest.3.contains("snp.measurement"),
        "{}",
        attest.3
    );
    let gen = entries
        .iter()
        .find(|(op, out, _, _)| op == "generate_data_key" && out == "allowed")
        .unwrap();
    assert!(gen.3.contains(&token.token_id) && gen.3.contains(&hw.id), "{}", gen.3);
    for (_, _, _, detail) in &entries {
        assert!(!detail.contains(&hex::encode(data_key.expose_secret())));
    }
}
both_backends!(snp_enrol_attest_generate_decrypt, super::snp_round_trip);

/// The refusal matrix for SNP evidence and tokens; each refusal is audited.
async fn refusals(backend: Backend) {
    let lab = SnpLab::new();
    let Some(mut c) = Ceremony::new(backend, options(&[&lab])).await else {
        return;
    };
    c.create_key("payroll", &[APP, OTHER], ATTESTED).await;
    c.create_key("strict", &[APP], &measurement_policy(&hex::encode([0x99u8; 48])))
        .await;
    let hw = enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;

    // A nonce this service never issued.
    let pk = w.public_key();
    let r = w
        .attest(
            vec![7; 32],
            pb::attest_request::Evidence::Snp(lab.bound(lab.report(), &[7; 32], &pk)),
        )
        .await;
    assert_status(r, Code::FailedPrecondition, "nonce_unknown");
    assert_audited(&c.db, "attestation.attest", "nonce_unknown").await;

    // A replayed nonce (the evidence is valid; the second use is refused).
    let nonce = w.challenge().await;
    let ev = lab.bound(lab.report(), &nonce, &pk);
    w.attest(nonce.clone(), pb::attest_request::Evidence::Snp(ev.clone()))
        .await
        .unwrap();
    assert_status(
        w.attest(nonce, pb::attest_request::Evidence::Snp(ev)).await,
        Code::FailedPrecondition,
        "nonce_replayed",
    );
    assert_audited(&c.db, "attestation.attest", "nonce_replayed").await;

    // Wrong binding: REPORT_DATA for another HPKE key.
    let r = w.attest_snp(|n, _| lab.bound(lab.report(), n, &[1; 32])).await;
    assert_status(r, Code::PermissionDenied, "evidence_binding_mismatch");
    assert_audited(&c.db, "attestation.attest", "evidence_binding_mismatch").await;

    // A debug guest.
    let r = w
        .attest_snp(|n, pk| {
            let mut rep = lab.report();
            rep.policy |= TestReport::POLICY_DEBUG;
            lab.bound(rep, n, pk)
        })
        .await;
    assert_status(r, Code::PermissionDenied, "evidence_guest_policy");
    assert_audited(&c.db, "attestation.attest", "evidence_guest_policy").await;

    // A chip nobody enrolled (same trusted chain, other chip).
    let mut other = TestChainOptions::new(Product::Milan, Signer::Vcek);
    other.chip_id = [0x5A; 64];
    other.hwid = Some(vec![0x5A; 64]);
    let stranger = SnpLab::with(other);
    let r = w.attest_snp(|n, pk| stranger.bound(stranger.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "hardware_not_enrolled");
    assert_audited(&c.db, "attestation.attest", "hardware_not_enrolled").await;

    // A chain the server does not trust.
    let mut untrusted = TestChainOptions::new(Product::Milan, Signer::Vcek);
    untrusted.keys = KeySet::Alternate;
    let untrusted = SnpLab::with(untrusted);
    let r = w.attest_snp(|n, pk| untrusted.bound(untrusted.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "evidence_certificate_chain");

    // A good token, then every way to misuse it.
    let token = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();
    w.generate("payroll", &token, &[]).await.unwrap();

    // Tampered token: one payload character changed.
    let mut parts: Vec<String> = token.token.split('.').map(str::to_owned).collect();
    let mut payload = parts[1].clone().into_bytes();
    payload[10] = if payload[10] == b'A' { b'B' } else { b'A' };
    parts[1] = String::from_utf8(payload).unwrap();
    let tampered = pb::AttestResponse {
        token: parts.join("."),
        ..token.clone()
    };
    let r = w.generate("payroll", &tampered, &[]).await;
    let s = r.err().expect("tampered token refused");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(
        ["token_bad_signature", "token_malformed"].contains(&reason(&s).as_str()),
        "{}",
        reason(&s)
    );
    assert_audited(&c.db, "generate_data_key", &reason(&s)).await;
    // Garbage.
    let garbage = pb::AttestResponse {
        token: "not-a-token".into(),
        ..token.clone()
    };
    let s = w.generate("payroll", &garbage, &[]).await.err().unwrap();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "token_malformed")
    );

    // A token presented by another principal (stolen): refused, though that principal has grants.
    let mut thief = Workload::new(&c.server, &c.pki, OTHER).await;
    let s = thief.generate("payroll", &token, &[]).await.err().unwrap();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "token_principal_mismatch")
    );
    assert_audited(&c.db, "generate_data_key", "token_principal_mismatch").await;

    // A key whose policy the claims do not meet (another measurement pinned).
    let s = w.generate("strict", &token, &[]).await.err().unwrap();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "release_policy_not_met")
    );
    assert!(s.message().contains("snp.measurement"), "{}", s.message());
    assert_audited(&c.db, "generate_data_key", "release_policy_not_met").await;
    // Changing the policy takes effect at once: the same token now passes.
    let m = set_policy(
        &mut c.admin,
        &c.custodians[0],
        "strict",
        &measurement_policy(&hex::encode([0x33u8; 48])),
    )
    .await
    .unwrap();
    assert_eq!(m.release_policy_version, 2);
    w.generate("strict", &token, &[]).await.unwrap();

    // ReEncrypt cannot move a blob to a key with a weaker policy (fewer conditions), only to one
    // at least as strict.
    let strict_blob = w
        .data
        .encrypt(pb::EncryptRequest {
            key: "strict".into(),
            plaintext: b"secret".to_vec(),
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    let re = |src: Vec<u8>, dst: &str| pb::ReEncryptRequest {
        ciphertext_blob: src,
        source_encryption_context: ctx(&[]),
        destination_key: dst.into(),
        destination_encryption_context: ctx(&[]),
    };
    assert_status(
        w.data.re_encrypt(re(strict_blob.clone(), "payroll")).await,
        Code::FailedPrecondition,
        "release_policy_downgrade",
    );
    let lax_blob = w
        .data
        .encrypt(pb::EncryptRequest {
            key: "payroll".into(),
            plaintext: b"secret".to_vec(),
            encryption_context: ctx(&[]),
            sealed_plaintext: None,
        })
        .await
        .unwrap()
        .into_inner()
        .ciphertext_blob;
    w.data.re_encrypt(re(lax_blob, "strict")).await.unwrap();
    w.data.re_encrypt(re(strict_blob, "strict")).await.unwrap();

    // Revocation: tokens already issued stop working at once, and new attestations fail.
    revoke(&mut c.admin, &c.custodians[1], &hw.id).await.unwrap();
    let s = w.generate("payroll", &token, &[]).await.err().unwrap();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "hardware_revoked")
    );
    assert_audited(&c.db, "generate_data_key", "hardware_revoked").await;
    let r = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "hardware_revoked");
    assert_audited(&c.db, "attestation.attest", "hardware_revoked").await;
    // Revoking twice is refused; re-enrolling the chip makes a new entry.
    assert_status(
        revoke(&mut c.admin, &c.custodians[1], &hw.id).await,
        Code::FailedPrecondition,
        "hardware_already_revoked",
    );
    let again = enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "FR", false)
        .await
        .unwrap();
    assert_ne!(again.id, hw.id);
    assert_status(
        enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "FR", false).await,
        Code::AlreadyExists,
        "hardware_already_enrolled",
    );
    w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();

    // Hardware outside the EU cannot be enrolled.
    assert_status(
        enroll_snp(
            &mut c.admin,
            &c.custodians[0],
            stranger.evidence(&stranger.report()),
            "US",
            false,
        )
        .await,
        Code::PermissionDenied,
        "hardware_outside_jurisdiction",
    );
    assert_audited(&c.db, "admin.enroll_hardware", "hardware_outside_jurisdiction").await;
}
both_backends!(refusal_matrix, super::refusals);

/// TCB floors and VLEK: per-server trust settings.
async fn tcb_and_vlek(backend: Backend) {
    let lab = SnpLab::new();
    let mut vlek_options = TestChainOptions::new(Product::Milan, Signer::Vlek);
    vlek_options.chip_id = lab.chain.options().chip_id;
    let vlek = SnpLab::with(vlek_options);
    let mut opts = options(&[&lab, &vlek]);
    // The floor equals the lab's TCB (snp = 8); the server accepts VLEKs where a machine allows.
    opts.attestation.snp.minimum_tcb.milan = Some(lab.chain.options().tcb);
    opts.attestation.snp.accept_vlek = true;
    let Some(mut c) = Ceremony::new(backend, opts).await else {
        return;
    };
    c.create_key("payroll", &[APP], ATTESTED).await;
    enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "NL", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();

    // The same chip on older firmware: a VCEK for TCB snp = 7, below the floor.
    let mut old = lab.chain.options().clone();
    old.tcb.snp = 7;
    let old = SnpLab::with(old);
    let r = w.attest_snp(|n, pk| old.bound(old.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "evidence_tcb");
    assert_audited(&c.db, "attestation.attest", "evidence_tcb").await;

    // VLEK-signed evidence for a machine enrolled without accept_vlek.
    let r = w.attest_snp(|n, pk| vlek.bound(vlek.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "vlek_not_accepted");
    assert_audited(&c.db, "attestation.attest", "vlek_not_accepted").await;
}
both_backends!(tcb_floor_and_vlek_policy, super::tcb_and_vlek);

/// A server with the default SNP trust and a floor for Milan, as a deployment configures it:
/// SMT, a higher VMPL and a missing memory alias check are refused (at enrolment and at
/// Attest), each audited with its reason; a report from a host without them is accepted.
async fn strict_defaults(backend: Backend) {
    use attestation::snp::danger::test_chain::TestReport;
    let lab = SnpLab::new();
    let mut opts = options(&[&lab]);
    opts.attestation.snp = attestation::snp::SnpTrust {
        products: [Product::Milan].into(),
        minimum_tcb: attestation::snp::MinimumTcb {
            milan: Some(lab.chain.options().tcb),
            ..Default::default()
        },
        ..attestation::snp::SnpTrust::default()
    };
    let Some(mut c) = Ceremony::new(backend, opts).await else {
        return;
    };
    c.create_key("payroll", &[APP], ATTESTED).await;
    // What most hosts run: SMT on, no alias check reported.
    let smt = lab.report();
    assert_status(
        enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&smt), "DE", false).await,
        Code::PermissionDenied,
        "evidence_guest_policy",
    );
    let mut good = lab.report();
    good.policy &= !TestReport::POLICY_SMT;
    good.platform_info = 1 << 5;
    enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&good), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let token = w.attest_snp(|n, pk| lab.bound(good.clone(), n, pk)).await.unwrap();
    w.generate("payroll", &token, &[]).await.unwrap();
    let r = w.attest_snp(|n, pk| lab.bound(smt.clone(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "evidence_guest_policy");
    let mut vmpl1 = good.clone();
    vmpl1.vmpl = 1;
    let r = w.attest_snp(|n, pk| lab.bound(vmpl1.clone(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "evidence_vmpl");
    assert_audited(&c.db, "attestation.attest", "evidence_vmpl").await;
    let mut no_alias_check = good.clone();
    no_alias_check.platform_info = 0;
    let r = w.attest_snp(|n, pk| lab.bound(no_alias_check.clone(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "evidence_guest_policy");
    assert_audited(&c.db, "attestation.attest", "evidence_guest_policy").await;
}
both_backends!(strict_snp_defaults_refuse_smt_vmpl_and_alias, super::strict_defaults);

/// Without `attestation.snp.accept_vlek`, VLEK evidence is refused by the verifier itself, and a
/// VLEK enrolment cannot be asked for.
async fn vlek_off(backend: Backend) {
    let lab = SnpLab::new();
    let mut vlek_options = TestChainOptions::new(Product::Milan, Signer::Vlek);
    vlek_options.chip_id = lab.chain.options().chip_id;
    let vlek = SnpLab::with(vlek_options);
    let Some(mut c) = Ceremony::new(backend, options(&[&lab, &vlek])).await else {
        return;
    };
    enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let r = w.attest_snp(|n, pk| vlek.bound(vlek.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "evidence_signing_key");
    assert_status(
        enroll_snp(
            &mut c.admin,
            &c.custodians[0],
            vlek.evidence(&vlek.report()),
            "DE",
            true,
        )
        .await,
        Code::FailedPrecondition,
        "vlek_disabled",
    );
}
both_backends!(vlek_refused_without_server_policy, super::vlek_off);

/// Expired nonces and tokens (the shortest lifetimes the configuration allows: 10 s).
async fn expiry(backend: Backend) {
    let lab = SnpLab::new();
    let mut opts = options(&[&lab]);
    opts.attestation.challenge_ttl = std::time::Duration::from_secs(10);
    opts.attestation.token_ttl = std::time::Duration::from_secs(10);
    let Some(mut c) = Ceremony::new(backend, opts).await else {
        return;
    };
    c.create_key("payroll", &[APP], ATTESTED).await;
    enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let token = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();
    let stale_nonce = w.challenge().await;
    tokio::time::sleep(std::time::Duration::from_millis(11_500)).await;
    let pk = w.public_key();
    let r = w
        .attest(
            stale_nonce.clone(),
            pb::attest_request::Evidence::Snp(lab.bound(lab.report(), &stale_nonce, &pk)),
        )
        .await;
    assert_status(r, Code::FailedPrecondition, "nonce_expired");
    assert_audited(&c.db, "attestation.attest", "nonce_expired").await;
    let s = w.generate("payroll", &token, &[]).await.err().unwrap();
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "token_expired")
    );
    assert_audited(&c.db, "generate_data_key", "token_expired").await;
}
both_backends!(expired_nonce_and_token, super::expiry);

/// A machine whose country leaves the allowed jurisdictions (configuration narrowed) is refused
/// at Attest and at release.
async fn jurisdiction(backend: Backend) {
    let lab = SnpLab::new();
    let Some(mut c) = Ceremony::new(backend, options(&[&lab])).await else {
        return;
    };
    c.create_key("payroll", &[APP], ATTESTED).await;
    enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "FR", false)
        .await
        .unwrap();
    let mut opts = options(&[&lab]);
    opts.attestation.allowed_countries = kms_core::jurisdiction::AllowedCountries::parse(["DE"]).unwrap();
    c.restart(opts).await;
    c.unseal().await;
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let r = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await;
    assert_status(r, Code::PermissionDenied, "hardware_outside_jurisdiction");
    assert_audited(&c.db, "attestation.attest", "hardware_outside_jurisdiction").await;
}
both_backends!(hardware_outside_allowed_jurisdiction, super::jurisdiction);

/// The real captured reports enrol against AMD's pinned roots (no test roots configured); a
/// VLEK capture needs accept_vlek.
async fn real_reports(backend: Backend) {
    let Some(mut c) = Ceremony::new(
        backend,
        Options {
            allow_unattested: false,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let read = |f: &str| {
        std::fs::read(format!(
            "{}/../attestation/test_data/snp/{f}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    for (i, name) in [
        "milan-vcek-report-v2",
        "milan-vcek-report-virtee",
        "azure-milan-report-v2",
    ]
    .iter()
    .enumerate()
    {
        let ev = pb::SnpEvidence {
            report: read(&format!("{name}.bin")),
            vek_certificate: read(&format!("{name}.vcek.der")),
            cert_chain: Vec::new(),
        };
        match enroll_snp(&mut c.admin, &c.custodians[i % 3], ev, "DE", false).await {
            Ok(hw) => {
                assert_eq!(hw.snp_chip_id.len(), 128);
                let record: serde_json::Value = serde_json::from_str(&hw.enrollment_record).unwrap();
                assert_eq!(record["product"].as_str().unwrap().to_lowercase(), "milan");
                assert_eq!(record["danger_test_root"], false);
            }
            // Two captures may come from one chip: the second is then already enrolled.
            Err(s) => assert_eq!(reason(&s), "hardware_already_enrolled", "{name}: {}", s.message()),
        }
    }
    let list = c
        .admin
        .list_hardware(signed(
            &c.custodians[0],
            pb::admin_request::Operation::ListHardware(pb::ListHardwareOp::default()),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!list.hardware.is_empty());
    // A VLEK capture: refused by this server (VLEK off).
    let ev = pb::SnpEvidence {
        report: read("milan-vlek-report-v3.bin"),
        vek_certificate: read("milan-vlek-report-v3.vlek.der"),
        cert_chain: Vec::new(),
    };
    let s = enroll_snp(&mut c.admin, &c.custodians[0], ev, "DE", false)
        .await
        .err()
        .unwrap();
    assert_eq!(s.code(), Code::PermissionDenied, "{}", s.message());
}
both_backends!(real_captured_reports_enrol, super::real_reports);

/// Two replicas on one PostgreSQL: a nonce is used once across them, and a revocation through
/// one is refused at once by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_nonces_and_revocations() {
    let lab = SnpLab::new();
    let Some(mut c) = Ceremony::new(Backend::Postgres, options(&[&lab])).await else {
        return;
    };
    c.create_key("payroll", &[APP], ATTESTED).await;
    let hw = enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let second = c.replica(options(&[&lab])).await;
    let mut admin2 = second.admin(&c.pki).await;
    submit_share(&mut admin2, &c.custodians[1]).await.unwrap();
    submit_share(&mut admin2, &c.custodians[2]).await.unwrap();

    let mut w1 = Workload::new(&c.server, &c.pki, APP).await;
    let mut w2 = Workload::new(&second, &c.pki, APP).await;
    w2.key = kms_core::hpke_seal::PrivateKey::from_secret_bytes(&w1.key.to_secret_bytes()).unwrap();

    // One nonce from replica 1, raced on both replicas, many times: exactly one success each.
    for _ in 0..10 {
        let nonce = w1.challenge().await;
        let ev = lab.bound(lab.report(), &nonce, &w1.public_key());
        let (a, b) = tokio::join!(
            w1.attest(nonce.clone(), pb::attest_request::Evidence::Snp(ev.clone())),
            w2.attest(nonce.clone(), pb::attest_request::Evidence::Snp(ev)),
        );
        assert_eq!(a.is_ok() as u8 + b.is_ok() as u8, 1, "{a:?} {b:?}");
        let loser = if a.is_ok() { b.err() } else { a.err() }.unwrap();
        assert_eq!(reason(&loser), "nonce_replayed");
    }

    // A token from replica 1 works on replica 2 (shared signing key).
    let token = w1.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();
    let (g, k) = w2.generate("payroll", &token, &[("r", "2")]).await.unwrap();
    assert_eq!(
        w1.decrypt(&g.ciphertext_blob, &token, &[("r", "2")])
            .await
            .unwrap()
            .expose_secret(),
        k.expose_secret()
    );

    // Revoked through replica 2: replica 1 refuses the very next release.
    revoke(&mut admin2, &c.custodians[2], &hw.id).await.unwrap();
    let s = w1.generate("payroll", &token, &[]).await.err().unwrap();
    assert_eq!(reason(&s), "hardware_revoked");
    second.stop().await;
}

/// Hardening found in review: a token key row written straight into the database verifies
/// nothing; nonces belong to the principal that asked; per-principal challenge limits; refused
/// releases name token and machine in the audit log, and the caller gets the check, not the
/// detail; a low-order HPKE key is refused at Attest.
async fn hardening(backend: Backend) {
    use sqlx::Connection as _;
    let lab = SnpLab::new();
    let mut opts = options(&[&lab]);
    opts.attestation.max_open_challenges = 3;
    let Some(mut c) = Ceremony::new(backend, opts).await else {
        return;
    };
    c.create_key(
        "payroll",
        &[APP, OTHER],
        &measurement_policy(&hex::encode([0x99u8; 48])),
    )
    .await;
    let hw = enroll_snp(&mut c.admin, &c.custodians[0], lab.evidence(&lab.report()), "DE", false)
        .await
        .unwrap();
    let mut w = Workload::new(&c.server, &c.pki, APP).await;
    let token = w.attest_snp(|n, pk| lab.bound(lab.report(), n, pk)).await.unwrap();

    // A forged key row: the attacker's Ed25519 key, no seed wrapped under the root key.
    let evil_seed = kms_core::secret::SecretKey::<32>::generate().unwrap();
    let evil = kms_core::token::TokenSigner::from_seed(&evil_seed).unwrap();
    let mut conn = c.db.connect().await;
    sqlx::query(
        "INSERT INTO token_keys (version, kid, public_key, wrapped_seed, created_unix_ms) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(0i64)
    .bind(evil.kid().to_owned())
    .bind(evil.public_key().to_vec())
    .bind(vec![0u8; 60])
    .bind(0i64)
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let mut claims = kms_core::claims::ReleaseClaims::from_json(&token.claims_json).unwrap();
    claims.insert_str("snp.measurement", hex::encode([0x99u8; 48]));
    let now = kms_core::now_unix_ms() / 1000;
    let forged_claims = kms_core::token::TokenClaims::new(&hw.id, APP, &w.public_key(), claims, now, 300).unwrap();
    let forged = pb::AttestResponse {
        token: evil.sign(&forged_claims).unwrap(),
        token_id: forged_claims.jti.clone(),
        ..token.clone()
    };
    let s = w
        .generate("payroll", &forged, &[])
        .await
        .err()
        .expect("a forged token is refused");
    assert_eq!(
        (s.code(), reason(&s).as_str()),
        (Code::PermissionDenied, "token_unknown_key")
    );
    // The keys come signed by the node over the caller's nonce; a nonce too short is refused.
    let nonce = [0x4eu8; 16];
    let keys = w
        .attestation
        .get_token_keys(pb::GetTokenKeysRequest { nonce: nonce.to_vec() })
        .await
        .unwrap()
        .into_inner();
    assert!(kms_node::verify_signature(
        &keys.node_public_key,
        &kms_node::message::token_keys(&nonce, &keys.jwks_json),
        &keys.node_signature
    ));
    assert!(!kms_node::verify_signature(
        &keys.node_public_key,
        &kms_node::message::token_keys(&[], &keys.jwks_json),
        &keys.node_signature
    ));
    let s = w
        .attestation
        .get_token_keys(pb::GetTokenKeysRequest { nonce: vec![1; 5] })
        .await
        .unwrap_err();
    assert_eq!((s.code(), reason(&s).as_str()), (Code::InvalidArgument, "bad_nonce"));
    let jwks = keys.jwks_json;
    assert!(!jwks.contains(evil.kid()), "{jwks}");
    let verifier = kms_core::token::TokenVerifier::from_jwks_json(&jwks).unwrap();
    assert_eq!(verifier.keys().len(), 1);
    verifier.verify(&token.token, now).unwrap();

    // A refused release names the token and the machine in the audit log; the caller gets the
    // failing condition, the audit log the values.
    let s = w.generate("payroll", &token, &[]).await.err().unwrap();
    assert_eq!(reason(&s), "release_policy_not_met");
    assert!(!s.message().contains(&hex::encode([0x99u8; 48])), "{}", s.message());
    assert_audited(&c.db, "generate_data_key", "release_policy_not_met").await;
    let entries = audit_entries(&c.db).await;
    let refusal = entries
        .iter()
        .rev()
        .find(|(op, _, r, _)| op == "generate_data_key" && r == "release_policy_not_met")
        .unwrap();
    assert!(
        refusal.3.contains(&token.token_id) && refusal.3.contains(&hw.id),
        "{}",
        refusal.3
    );
    assert!(refusal.3.contains(&hex::encode([0x99u8; 48])), "{}", refusal.3);

    // Evidence refusals: the check for the caller, the verifier's detail for the audit log.
    let s = w
        .attest_snp(|n, _| lab.bound(lab.report(), n, &[1; 32]))
        .await
        .err()
        .unwrap();
    assert_eq!(reason(&s), "evidence_binding_mismatch");
    assert_audited(&c.db, "attestation.attest", "evidence_binding_mismatch").await;
    let entries = audit_entries(&c.db).await;
    let refusal = entries
        .iter()
        .rev()
        .find(|(op, _, r, _)| op == "attestation.attest" && r == "evidence_binding_mismatch")
        .unwrap();
    assert!(refusal.3.contains("refusal_detail"), "{}", refusal.3);

    // Nonces belong to the principal that asked: another cannot use (or burn) them.
    let mut other = Workload::new(&c.server, &c.pki, OTHER).await;
    let nonce = w.challenge().await;
    let ev = lab.bound(lab.report(), &nonce, &other.public_key());
    assert_status(
        other.attest(nonce.clone(), pb::attest_request::Evidence::Snp(ev)).await,
        Code::FailedPrecondition,
        "nonce_unknown",
    );
    let ev = lab.bound(lab.report(), &nonce, &w.public_key());
    w.attest(nonce, pb::attest_request::Evidence::Snp(ev)).await.unwrap();

    // At most 3 open challenges per principal here; using one frees a slot.
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(w.challenge().await);
    }
    assert_status(
        w.attestation.get_challenge(pb::GetChallengeRequest {}).await,
        Code::ResourceExhausted,
        "too_many_challenges",
    );
    other.challenge().await;
    let n = open.pop().unwrap();
    let ev = lab.bound(lab.report(), &n, &w.public_key());
    w.attest(n, pb::attest_request::Evidence::Snp(ev)).await.unwrap();
    w.challenge().await;

    // A low-order X25519 point is not a key anything can be sealed to.
    let n = open.pop().unwrap();
    let r = w
        .attestation
        .attest(pb::AttestRequest {
            nonce: n.clone(),
            hpke_public_key: vec![0; 32],
            evidence: Some(pb::attest_request::Evidence::Snp(lab.bound(lab.report(), &n, &[0; 32]))),
        })
        .await;
    assert_status(r, Code::InvalidArgument, "invalid_hpke_public_key");
}
both_backends!(review_hardening, super::hardening);
