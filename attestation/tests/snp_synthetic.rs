//! The SNP verifier on synthetic reports signed by fake chains (`snp::danger::test_chain`), one
//! refusal per test: each report differs from an accepted one in one field only.

use attestation::snp::danger::test_chain::{KeySet, TestChain, TestChainOptions, TestReport, VALID_AT};
use attestation::snp::danger::DangerTestRoots;
use attestation::snp::{Product, Signer, SnpEvidence, SnpTrust, SnpVerifier, Tcb};
use attestation::{binding, Check, Refusal, Verifier};

fn chain(product: Product, signer: Signer) -> TestChain {
    TestChain::new(TestChainOptions::new(product, signer)).expect("test chain")
}

fn milan() -> TestChain {
    chain(Product::Milan, Signer::Vcek)
}

fn verifier(trust: SnpTrust) -> SnpVerifier {
    SnpVerifier::new(trust).expect("trust configuration")
}

/// A report bound to a fresh nonce and key, as a workload would make it.
fn bound_report(chain: &TestChain) -> (TestReport, [u8; 64]) {
    let binding = binding::snp_report_data(&[7; 32], b"hpke public key");
    let mut report = chain.report();
    report.report_data = binding;
    (report, binding)
}

fn check(result: Result<impl std::fmt::Debug, Refusal>) -> Check {
    match result {
        Ok(claims) => panic!("accepted: {claims:?}"),
        Err(refusal) => refusal.check,
    }
}

/// Verifies `report` (signed by `chain`) with `chain`'s trust adjusted by `adjust`.
fn verify_with(
    chain: &TestChain,
    report: &TestReport,
    binding: &[u8],
    adjust: impl FnOnce(&mut SnpTrust),
) -> Result<attestation::snp::SnpClaims, Refusal> {
    let mut trust = chain.trust();
    adjust(&mut trust);
    verifier(trust).verify(&chain.evidence(report).expect("sign"), binding, VALID_AT)
}

#[test]
fn an_untouched_synthetic_report_verifies() {
    for (product, signer) in [
        (Product::Milan, Signer::Vcek),
        (Product::Genoa, Signer::Vcek),
        (Product::Turin, Signer::Vcek),
        (Product::Milan, Signer::Vlek),
        (Product::Turin, Signer::Vlek),
    ] {
        let chain = chain(product, signer);
        let (report, binding) = bound_report(&chain);
        let claims =
            verify_with(&chain, &report, &binding, |_| {}).unwrap_or_else(|r| panic!("{product} {signer}: {r}"));
        assert_eq!(claims.product, product);
        assert_eq!(claims.signer, signer);
        assert!(claims.danger_test_root, "claims through a test root say so");
        assert_eq!(claims.reported_tcb, chain.options().tcb);
        assert_eq!(claims.chip_id.0, chain.options().chip_id);
        assert_eq!(claims.report_data, binding);
        assert_eq!(claims.measurement, report.measurement);
        assert_eq!(claims.cpuid, Some(report.cpuid));
    }
}

#[test]
fn versions_2_3_and_5_are_accepted_others_refused() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    for version in [2, 3, 5] {
        report.version = version;
        report.launch_mit_vector = 0x11;
        report.current_mit_vector = 0x22;
        let claims = verify_with(&chain, &report, &binding, |_| {}).unwrap_or_else(|r| panic!("v{version}: {r}"));
        assert_eq!(claims.report_version, version);
        assert_eq!(claims.cpuid.is_some(), version >= 3);
        assert_eq!(claims.current_mit_vector, (version >= 5).then_some(0x22));
    }
    for version in [0, 1, 4, 6] {
        report.version = version;
        assert_eq!(
            check(verify_with(&chain, &report, &binding, |_| {})),
            Check::Version,
            "v{version}"
        );
    }
}

#[test]
fn debug_is_refused_always() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    report.policy |= TestReport::POLICY_DEBUG;
    let permissive = |t: &mut SnpTrust| {
        t.allow_migration_agent = true;
        t.allow_smt = true;
    };
    assert_eq!(
        check(verify_with(&chain, &report, &binding, permissive)),
        Check::GuestPolicy
    );
}

#[test]
fn migration_agent_and_smt_follow_the_trust_configuration() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    report.policy |= TestReport::POLICY_MIGRATE_MA;
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |_| {})),
        Check::GuestPolicy
    );
    verify_with(&chain, &report, &binding, |t| t.allow_migration_agent = true).expect("allowed by policy");

    let (report, binding) = bound_report(&chain);
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |t| t.allow_smt = false)),
        Check::GuestPolicy
    );
    let mut no_smt = report.clone();
    no_smt.policy &= !TestReport::POLICY_SMT;
    no_smt.platform_info = 0;
    verify_with(&chain, &no_smt, &binding, |t| t.allow_smt = false).expect("no SMT anywhere");
}

#[test]
fn vmpl_follows_the_trust_configuration() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    report.vmpl = 2;
    verify_with(&chain, &report, &binding, |_| {}).expect("VMPL 2 is allowed when listed");
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |t| t.allowed_vmpls = [0].into())),
        Check::Vmpl
    );
    for vmpl in [4, u32::MAX] {
        report.vmpl = vmpl;
        assert_eq!(
            check(verify_with(&chain, &report, &binding, |_| {})),
            Check::Vmpl,
            "{vmpl}"
        );
        // And no configuration can list it.
        let mut trust = chain.trust();
        trust.allowed_vmpls.insert(vmpl);
        assert!(SnpVerifier::new(trust).is_err(), "{vmpl}");
    }
}

#[test]
fn tcb_below_the_minimum_is_refused_per_component() {
    let chain = milan();
    let (report, binding) = bound_report(&chain);
    let tcb = chain.options().tcb;
    verify_with(&chain, &report, &binding, |t| t.minimum_tcb.milan = Some(tcb)).expect("equal to the minimum");
    for raise in [
        |m: &mut Tcb| m.bootloader += 1,
        |m: &mut Tcb| m.tee += 1,
        |m: &mut Tcb| m.snp += 1,
        |m: &mut Tcb| m.microcode += 1,
    ] {
        let mut minimum = tcb;
        raise(&mut minimum);
        assert_eq!(
            check(verify_with(&chain, &report, &binding, |t| t.minimum_tcb.milan = Some(minimum))),
            Check::Tcb
        );
    }
    // Another product's floor does not apply.
    verify_with(&chain, &report, &binding, |t| {
        t.minimum_tcb.genoa = Some(Tcb {
            snp: 200,
            ..Tcb::default()
        })
    })
    .expect("Genoa's floor");
}

#[test]
fn turin_fmc_minimum_applies() {
    let chain = chain(Product::Turin, Signer::Vcek);
    let (report, binding) = bound_report(&chain);
    let fmc = chain.options().tcb.fmc.expect("Turin has an FMC");
    let floor = |fmc| {
        Some(Tcb {
            fmc: Some(fmc),
            ..Tcb::default()
        })
    };
    verify_with(&chain, &report, &binding, |t| t.minimum_tcb.turin = floor(fmc)).expect("equal");
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |t| t.minimum_tcb.turin = floor(fmc + 1))),
        Check::Tcb
    );
}

#[test]
fn reported_tcb_must_equal_the_certificates() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    report.reported_tcb.snp -= 1;
    assert_eq!(check(verify_with(&chain, &report, &binding, |_| {})), Check::Tcb);
    // A reserved TCB byte set: the raw bytes differ from the certificate's.
    let (report, binding) = bound_report(&chain);
    let mut bytes = report.to_bytes();
    bytes[0x180 + 3] = 1;
    chain.sign_bytes(&mut bytes).expect("sign");
    let evidence = SnpEvidence {
        report: bytes,
        vek: Some(chain.vek_der().to_vec()),
        chain: None,
    };
    assert_eq!(
        check(verifier(chain.trust()).verify(&evidence, &binding, VALID_AT)),
        Check::Tcb
    );
}

#[test]
fn chip_id_must_equal_the_hwid() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    report.chip_id[17] ^= 0x01;
    assert_eq!(check(verify_with(&chain, &report, &binding, |_| {})), Check::Identity);
    // A masked chip id cannot match a VCEK.
    let (mut report, binding) = bound_report(&chain);
    report.chip_id = [0; 64];
    assert_eq!(check(verify_with(&chain, &report, &binding, |_| {})), Check::Identity);
}

#[test]
fn turin_chip_id_is_the_8_byte_hwid_padded_with_zeros() {
    let chain = chain(Product::Turin, Signer::Vcek);
    assert_eq!(chain.options().hwid.as_ref().map(Vec::len), Some(8));
    let (mut report, binding) = bound_report(&chain);
    verify_with(&chain, &report, &binding, |_| {}).expect("8-byte hwID");
    report.chip_id[40] = 1;
    assert_eq!(check(verify_with(&chain, &report, &binding, |_| {})), Check::Identity);
}

#[test]
fn vcek_without_hwid_is_refused() {
    let mut options = TestChainOptions::new(Product::Milan, Signer::Vcek);
    options.hwid = None;
    let chain = TestChain::new(options).expect("test chain");
    let (report, binding) = bound_report(&chain);
    assert_eq!(check(verify_with(&chain, &report, &binding, |_| {})), Check::Identity);
}

#[test]
fn vlek_needs_accept_vlek_and_may_mask_the_chip_id() {
    let chain = chain(Product::Milan, Signer::Vlek);
    let (mut report, binding) = bound_report(&chain);
    report.chip_id = [0; 64];
    report.mask_chip_key = true;
    let claims = verify_with(&chain, &report, &binding, |_| {}).expect("accepted with accept_vlek");
    assert!(claims.chip_id_masked && claims.mask_chip_key);
    assert_eq!(claims.vlek_csp_id, chain.options().csp_id);
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |t| t.accept_vlek = false)),
        Check::SigningKey
    );
}

#[test]
fn signing_key_field_decides_vcek_or_vlek_not_the_certificate() {
    // A VLEK-chain report that claims to be VCEK-signed: its key is looked for under the ASKs
    // only, where it is not.
    let vlek = chain(Product::Milan, Signer::Vlek);
    let (mut report, binding) = bound_report(&vlek);
    report.signing_key = 0;
    assert_eq!(
        check(verify_with(&vlek, &report, &binding, |_| {})),
        Check::CertificateChain
    );
    // And the other way round.
    let vcek = milan();
    let (mut report, binding) = bound_report(&vcek);
    report.signing_key = 1;
    assert_eq!(
        check(verify_with(&vcek, &report, &binding, |t| t.accept_vlek = true)),
        Check::CertificateChain
    );
    // No signature at all.
    report.signing_key = 7;
    assert_eq!(check(verify_with(&vcek, &report, &binding, |_| {})), Check::SigningKey);
}

#[test]
fn expired_or_not_yet_valid_certificates_are_refused() {
    let options = TestChainOptions {
        vek_validity: (VALID_AT - 1000, VALID_AT - 1),
        ..TestChainOptions::default()
    };
    let chain = TestChain::new(options).expect("test chain");
    let (report, binding) = bound_report(&chain);
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |_| {})),
        Check::CertificateValidity
    );

    let options = TestChainOptions {
        ca_validity: (VALID_AT + 1, VALID_AT + 1000),
        ..TestChainOptions::default()
    };
    let chain = TestChain::new(options).expect("test chain");
    let (report, binding) = bound_report(&chain);
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |_| {})),
        Check::CertificateValidity
    );
}

#[test]
fn test_roots_are_not_trusted_unless_configured() {
    let chain = milan();
    let (report, binding) = bound_report(&chain);
    let evidence = chain.evidence(&report).expect("sign");
    let plain = verifier(SnpTrust::default());
    assert_eq!(
        check(plain.verify(&evidence, &binding, VALID_AT)),
        Check::CertificateChain
    );
    let empty = verifier(SnpTrust {
        danger_test_roots: Some(DangerTestRoots::default()),
        ..SnpTrust::default()
    });
    assert_eq!(
        check(empty.verify(&evidence, &binding, VALID_AT)),
        Check::CertificateChain
    );
}

#[test]
fn a_chain_from_other_keys_is_refused() {
    let trusted = milan();
    let options = TestChainOptions {
        keys: KeySet::Alternate,
        ..TestChainOptions::default()
    };
    let rogue = TestChain::new(options).expect("test chain");
    let (report, binding) = bound_report(&rogue);
    let evidence = rogue.evidence(&report).expect("sign");
    assert_eq!(
        check(verifier(trusted.trust()).verify(&evidence, &binding, VALID_AT)),
        Check::CertificateChain
    );
    // Nor does naming the rogue chain in the evidence help.
    let with_chain = SnpEvidence {
        chain: Some(rogue.chain_pem()),
        ..evidence
    };
    assert_eq!(
        check(verifier(trusted.trust()).verify(&with_chain, &binding, VALID_AT)),
        Check::CertificateChain
    );
}

#[test]
fn supplied_chain_matching_a_trusted_root_is_accepted() {
    let chain = milan();
    let (report, binding) = bound_report(&chain);
    let evidence = SnpEvidence {
        chain: Some(chain.chain_pem()),
        ..chain.evidence(&report).expect("sign")
    };
    verifier(chain.trust())
        .verify(&evidence, &binding, VALID_AT)
        .expect("its own chain");
}

#[test]
fn cpuid_product_selects_the_root() {
    let chain = milan();
    let (mut report, binding) = bound_report(&chain);
    report.cpuid = [0x19, 0x11, 0x01]; // Genoa
    assert_eq!(
        check(verify_with(&chain, &report, &binding, |_| {})),
        Check::CertificateChain
    );
    // Unknown CPUID: the certificate decides.
    report.cpuid = [0, 0, 0];
    verify_with(&chain, &report, &binding, |_| {}).expect("no CPUID product");
}

#[test]
fn a_signature_by_another_key_is_refused() {
    let chain = milan();
    let other = milan();
    let (report, binding) = bound_report(&chain);
    let evidence = SnpEvidence {
        report: other.sign(&report).expect("sign"),
        vek: Some(chain.vek_der().to_vec()),
        chain: None,
    };
    assert_eq!(
        check(verifier(chain.trust()).verify(&evidence, &binding, VALID_AT)),
        Check::Signature
    );
}

#[test]
fn signature_high_bytes_and_unsigned_tail_must_be_zero() {
    let chain = milan();
    let (report, binding) = bound_report(&chain);
    let good = chain.evidence(&report).expect("sign");
    let verifier = verifier(chain.trust());
    for (at, expected) in [
        (0x2A0 + 48, Check::Signature),
        (0x2A0 + 72 + 71, Check::Signature),
        (0x2A0 + 144, Check::Malformed),
        (0x49F, Check::Malformed),
    ] {
        let mut bad = good.clone();
        bad.report[at] = 1;
        assert_eq!(check(verifier.verify(&bad, &binding, VALID_AT)), expected, "{at:#x}");
    }
}

#[test]
fn wrong_binding_is_refused() {
    let chain = milan();
    let (report, binding) = bound_report(&chain);
    let other = binding::snp_report_data(&[8; 32], b"hpke public key");
    assert_eq!(check(verify_with(&chain, &report, &other, |_| {})), Check::Binding);
    assert_eq!(
        check(verify_with(&chain, &report, &binding[..63], |_| {})),
        Check::Binding
    );
}

#[test]
fn bad_test_roots_are_a_configuration_error() {
    let chain = milan();
    let mut root = chain.danger_root();
    let last = root.ark_der.len() - 1;
    root.ark_der[last] ^= 1;
    assert!(SnpVerifier::new(SnpTrust {
        danger_test_roots: Some(DangerTestRoots { roots: vec![root] }),
        ..SnpTrust::default()
    })
    .is_err());
}

#[test]
fn the_verifier_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<SnpVerifier>();
}

/// The defaults accept nothing they cannot justify: a product only once it has a floor, VMPL 0
/// only, no SMT, the memory alias check done.
#[test]
fn the_default_trust_is_strict() {
    let chain = milan();
    let (report, binding) = bound_report(&chain);
    let strict = |report: &TestReport, adjust: &dyn Fn(&mut SnpTrust)| {
        let mut trust = chain.strict_trust(chain.options().tcb);
        adjust(&mut trust);
        verifier(trust).verify(&chain.evidence(report).expect("sign"), &binding, VALID_AT)
    };
    // What the test chain makes by default is what most hosts run: SMT on, no alias check.
    let mut good = report.clone();
    good.policy &= !TestReport::POLICY_SMT;
    good.platform_info = 1 << 5;
    strict(&good, &|_| {}).expect("no SMT, alias check complete, VMPL 0, floor met");
    assert_eq!(check(strict(&report, &|_| {})), Check::GuestPolicy, "SMT");
    let mut smt_host = good.clone();
    smt_host.platform_info |= 1;
    assert_eq!(check(strict(&smt_host, &|_| {})), Check::GuestPolicy, "SMT on the host");
    strict(&smt_host, &|t| t.allow_smt = true).expect("SMT accepted explicitly");
    let mut no_alias_check = good.clone();
    no_alias_check.platform_info = 0;
    let refusal = strict(&no_alias_check, &|_| {}).unwrap_err();
    assert_eq!(refusal.check, Check::GuestPolicy);
    assert!(refusal.detail.contains("alias check"), "{refusal}");
    strict(&no_alias_check, &|t| t.require_alias_check = false).expect("alias check waived explicitly");
    let mut vmpl1 = good.clone();
    vmpl1.vmpl = 1;
    assert_eq!(check(strict(&vmpl1, &|_| {})), Check::Vmpl);
    strict(&vmpl1, &|t| t.allowed_vmpls = [0, 1].into()).expect("VMPL 1 listed");
    // A product without a floor is not accepted, even with a floor for another one.
    let refusal = strict(&good, &|t| {
        t.products = [Product::Genoa].into();
        t.minimum_tcb.milan = None;
        t.minimum_tcb.genoa = Some(Tcb::default());
    })
    .unwrap_err();
    assert_eq!(refusal.check, Check::Tcb);
    assert!(refusal.detail.contains("not accepted"), "{refusal}");
    // A product listed without a floor is a configuration error, not a verifier.
    let mut unfloored = chain.strict_trust(Tcb::default());
    unfloored.minimum_tcb.milan = None;
    assert!(SnpVerifier::new(unfloored).is_err());
}
