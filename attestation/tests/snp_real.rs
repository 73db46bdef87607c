//! The SNP verifier on real captures (test_data/snp) against AMD's pinned roots.

use attestation::snp::{Product, Signer, SnpEvidence, SnpTrust, SnpVerifier, Tcb, REPORT_LEN};
use attestation::{Check, Verifier};

/// 2025-06-01T00:00:00Z: inside every fixture certificate's validity (the VLEK's ends 2025-12-10).
const NOW: i64 = 1_748_736_000;
/// 2026-01-01T00:00:00Z: after the VLEK certificate expired.
const AFTER_VLEK_EXPIRY: i64 = 1_767_225_600;

fn data(path: &str) -> Vec<u8> {
    let full = format!("{}/test_data/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

struct Case {
    report: &'static str,
    vek: &'static str,
    signer: Signer,
    reported_tcb: Tcb,
}

const MILAN_TCB: Tcb = Tcb {
    fmc: None,
    bootloader: 3,
    tee: 0,
    snp: 8,
    microcode: 115,
};

const CASES: [Case; 4] = [
    Case {
        report: "snp/milan-vcek-report-v2.bin",
        vek: "snp/milan-vcek-report-v2.vcek.der",
        signer: Signer::Vcek,
        reported_tcb: MILAN_TCB,
    },
    Case {
        report: "snp/milan-vcek-report-virtee.bin",
        vek: "snp/milan-vcek-report-virtee.vcek.der",
        signer: Signer::Vcek,
        reported_tcb: MILAN_TCB,
    },
    Case {
        report: "snp/azure-milan-report-v2.bin",
        vek: "snp/azure-milan-report-v2.vcek.der",
        signer: Signer::Vcek,
        reported_tcb: MILAN_TCB,
    },
    Case {
        report: "snp/milan-vlek-report-v3.bin",
        vek: "snp/milan-vlek-report-v3.vlek.der",
        signer: Signer::Vlek,
        reported_tcb: Tcb {
            fmc: None,
            bootloader: 4,
            tee: 0,
            snp: 24,
            microcode: 217,
        },
    },
];

/// Every genuine report (these captures come from hosts with SMT on, firmware without the
/// alias check, and a VMPL 1 guest), VLEKs too.
fn verifier() -> SnpVerifier {
    SnpVerifier::new(SnpTrust {
        accept_vlek: true,
        ..SnpTrust::insecure_any_platform()
    })
    .expect("built-in roots")
}

fn evidence(case: &Case) -> SnpEvidence {
    SnpEvidence {
        report: data(case.report),
        vek: Some(data(case.vek)),
        chain: None,
    }
}

/// The report's own REPORT_DATA (bytes 0x50..0x90): the binding it was made for.
fn report_data(report: &[u8]) -> Vec<u8> {
    report[0x50..0x90].to_vec()
}

fn refusal(result: Result<impl std::fmt::Debug, attestation::Refusal>) -> Check {
    match result {
        Ok(claims) => panic!("accepted: {claims:?}"),
        Err(refusal) => refusal.check,
    }
}

#[test]
fn every_real_report_verifies_with_its_own_certificate() {
    let verifier = verifier();
    for case in &CASES {
        let ev = evidence(case);
        let claims = verifier
            .verify(&ev, &report_data(&ev.report), NOW)
            .unwrap_or_else(|r| panic!("{}: {r}", case.report));
        assert_eq!(claims.product, Product::Milan, "{}", case.report);
        assert_eq!(claims.signer, case.signer, "{}", case.report);
        assert_eq!(claims.reported_tcb, case.reported_tcb, "{}", case.report);
        assert!(!claims.policy.debug);
        assert!(!claims.danger_test_root);
        assert_eq!(claims.chip_id.0[..], ev.report[0x1A0..0x1E0]);
        // What kmsd looks the registry up by before verifying is what verifying yields.
        assert_eq!(
            attestation::snp::unverified_chip_id(&ev.report).expect("framing"),
            claims.chip_id
        );
        assert_eq!(claims.measurement[..], ev.report[0x90..0xC0]);
        // The claims serialize (the offline verifier prints them) and read back.
        let json = serde_json::to_string(&claims).expect("serialize");
        let back: attestation::snp::SnpClaims = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, claims);
    }
}

#[test]
fn claims_of_the_vlek_report() {
    let verifier = verifier();
    let ev = evidence(&CASES[3]);
    let claims = verifier.verify(&ev, &report_data(&ev.report), NOW).expect("verifies");
    assert_eq!(claims.report_version, 3);
    assert_eq!(claims.vmpl, 1);
    assert!(claims.chip_id.is_zero());
    assert_eq!(claims.vlek_csp_id.as_deref(), Some("CN=cc-us-east-2.amazonaws.com"));
    assert_eq!(claims.cpuid, Some([0x19, 0x01, 0x01]));
    assert!(claims.platform_info.smt_enabled);
}

#[test]
fn claims_match_the_sev_crates_parse() {
    // A second parser as an oracle for the field offsets (sev cannot parse masked chip ids in
    // version 2 reports, which none of these are).
    use sev::firmware::guest::AttestationReport;
    use sev::parser::ByteParser;
    let verifier = verifier();
    for case in &CASES {
        let ev = evidence(case);
        let claims = verifier.verify(&ev, &report_data(&ev.report), NOW).expect("verifies");
        let theirs = AttestationReport::from_bytes(&ev.report).expect("sev parses");
        assert_eq!(claims.report_version, theirs.version);
        assert_eq!(claims.guest_svn, theirs.guest_svn);
        assert_eq!(claims.policy.raw, u64::from(theirs.policy));
        assert_eq!(claims.vmpl, theirs.vmpl);
        assert_eq!(claims.platform_info.raw, u64::from(theirs.plat_info));
        assert_eq!(claims.measurement, theirs.measurement);
        assert_eq!(claims.host_data, theirs.host_data);
        assert_eq!(claims.id_key_digest, theirs.id_key_digest);
        assert_eq!(claims.author_key_digest, theirs.author_key_digest);
        assert_eq!(claims.report_id, theirs.report_id);
        assert_eq!(claims.chip_id.0, theirs.chip_id);
        assert_eq!(claims.family_id, theirs.family_id);
        assert_eq!(claims.image_id, theirs.image_id);
        let t = theirs.reported_tcb;
        assert_eq!(
            (
                claims.reported_tcb.bootloader,
                claims.reported_tcb.tee,
                claims.reported_tcb.snp,
                claims.reported_tcb.microcode
            ),
            (t.bootloader, t.tee, t.snp, t.microcode)
        );
        assert_eq!(claims.current_firmware.major, theirs.current.major);
        assert_eq!(claims.current_firmware.minor, theirs.current.minor);
        assert_eq!(claims.current_firmware.build, theirs.current.build);
    }
}

#[test]
fn cross_paired_report_and_certificate_fail_the_signature() {
    let verifier = verifier();
    let vceks = &CASES[..3];
    for a in vceks {
        for b in vceks {
            if a.report == b.report {
                continue;
            }
            let ev = SnpEvidence {
                report: data(a.report),
                vek: Some(data(b.vek)),
                chain: None,
            };
            assert_eq!(
                refusal(verifier.verify(&ev, &report_data(&ev.report), NOW)),
                Check::Signature,
                "{} with {}",
                a.report,
                b.vek
            );
        }
    }
}

#[test]
fn vcek_report_with_the_vlek_certificate_fails_the_chain() {
    let verifier = verifier();
    let ev = SnpEvidence {
        report: data(CASES[0].report),
        vek: Some(data(CASES[3].vek)),
        chain: None,
    };
    assert_eq!(
        refusal(verifier.verify(&ev, &report_data(&ev.report), NOW)),
        Check::CertificateChain
    );
}

#[test]
fn invalid_vceks_are_refused() {
    let verifier = verifier();
    for bad in ["snp/invalid-vcek-legacy.der", "snp/invalid-vcek-new.der"] {
        let ev = SnpEvidence {
            report: data(CASES[0].report),
            vek: Some(data(bad)),
            chain: None,
        };
        assert_eq!(
            refusal(verifier.verify(&ev, &report_data(&ev.report), NOW)),
            Check::CertificateChain,
            "{bad}"
        );
        assert_eq!(
            refusal(verifier.verify_vek_certificate(&data(bad), Signer::Vcek, None, NOW)),
            Check::CertificateChain,
            "{bad}"
        );
    }
}

#[test]
fn every_bit_flip_of_a_real_report_is_refused() {
    let verifier = verifier();
    for case in [&CASES[0], &CASES[3]] {
        let ev = evidence(case);
        let binding = report_data(&ev.report);
        // Warm the chain cache, so each flip costs one report signature verification.
        verifier.verify(&ev, &binding, NOW).expect("the original verifies");
        let mut flipped = ev.clone();
        let mut signature_refusals = 0;
        for byte in 0..REPORT_LEN {
            for bit in 0..8 {
                flipped.report[byte] ^= 1 << bit;
                match verifier.verify(&flipped, &binding, NOW) {
                    Ok(_) => panic!("{}: flipping bit {bit} of byte {byte:#x} still verifies", case.report),
                    Err(r) if r.check == Check::Signature => signature_refusals += 1,
                    Err(_) => {}
                }
                flipped.report[byte] ^= 1 << bit;
            }
        }
        // Most flips reach the signature check; the rest are refused before it (version,
        // signing key, CPUID product, reserved bytes) - never after it.
        assert!(signature_refusals > 0x2A0 * 8 * 9 / 10, "{signature_refusals}");
    }
}

#[test]
fn every_truncation_and_extension_is_refused_cleanly() {
    let verifier = verifier();
    let ev = evidence(&CASES[0]);
    let binding = report_data(&ev.report);
    for len in 0..ev.report.len() {
        let cut = SnpEvidence {
            report: ev.report[..len].to_vec(),
            ..ev.clone()
        };
        assert_eq!(refusal(verifier.verify(&cut, &binding, NOW)), Check::Malformed, "{len}");
    }
    let mut long = ev.clone();
    long.report.push(0);
    assert_eq!(refusal(verifier.verify(&long, &binding, NOW)), Check::Malformed);
    // Truncated certificates: refused, never a panic.
    let vek = data(CASES[0].vek);
    for len in 0..vek.len() {
        let cut = SnpEvidence {
            vek: Some(vek[..len].to_vec()),
            ..ev.clone()
        };
        assert_eq!(
            refusal(verifier.verify(&cut, &binding, NOW)),
            Check::CertificateChain,
            "{len}"
        );
    }
}

#[test]
fn wrong_binding_is_refused() {
    let verifier = verifier();
    let ev = evidence(&CASES[0]);
    let mut binding = report_data(&ev.report);
    binding[63] ^= 1;
    assert_eq!(refusal(verifier.verify(&ev, &binding, NOW)), Check::Binding);
    assert_eq!(refusal(verifier.verify(&ev, &binding[..32], NOW)), Check::Binding);
    assert_eq!(refusal(verifier.verify(&ev, &[], NOW)), Check::Binding);
}

#[test]
fn vlek_is_refused_unless_the_policy_accepts_it() {
    let strict = SnpVerifier::new(SnpTrust::default()).expect("built-in roots");
    let ev = evidence(&CASES[3]);
    assert_eq!(
        refusal(strict.verify(&ev, &report_data(&ev.report), NOW)),
        Check::SigningKey
    );
}

#[test]
fn expired_certificates_are_refused() {
    let verifier = verifier();
    let ev = evidence(&CASES[3]);
    assert_eq!(
        refusal(verifier.verify(&ev, &report_data(&ev.report), AFTER_VLEK_EXPIRY)),
        Check::CertificateValidity
    );
    // Before the VLEK was issued.
    assert_eq!(
        refusal(verifier.verify(&ev, &report_data(&ev.report), 1_700_000_000)),
        Check::CertificateValidity
    );
    // The VCEKs run until 2030 (1_950_000_000 is in 2031).
    let ev = evidence(&CASES[0]);
    assert_eq!(
        refusal(verifier.verify(&ev, &report_data(&ev.report), 1_950_000_000)),
        Check::CertificateValidity
    );
}

#[test]
fn supplied_chain_must_be_the_pinned_one() {
    let verifier = verifier();
    let mut ev = evidence(&CASES[0]);
    let binding = report_data(&ev.report);
    ev.chain = Some(data("amd/ask_ark_milan.pem"));
    verifier.verify(&ev, &binding, NOW).expect("the pinned Milan chain");
    for other in [
        "amd/ask_ark_genoa.pem",
        "amd/ask_ark_turin_vcek.pem",
        "amd/ask_ark_milan_vlek.pem",
    ] {
        ev.chain = Some(data(other));
        assert_eq!(
            refusal(verifier.verify(&ev, &binding, NOW)),
            Check::CertificateChain,
            "{other}"
        );
    }
    // Only the ARK, or garbage.
    let milan = String::from_utf8(data("amd/ask_ark_milan.pem")).expect("PEM is text");
    let ark_only = &milan[milan.rfind("-----BEGIN").expect("two certificates")..];
    ev.chain = Some(ark_only.as_bytes().to_vec());
    assert_eq!(refusal(verifier.verify(&ev, &binding, NOW)), Check::CertificateChain);
    ev.chain = Some(b"not a PEM".to_vec());
    assert_eq!(refusal(verifier.verify(&ev, &binding, NOW)), Check::CertificateChain);

    let mut vlek = evidence(&CASES[3]);
    vlek.chain = Some(data("amd/ask_ark_milan_vlek.pem"));
    verifier
        .verify(&vlek, &report_data(&vlek.report), NOW)
        .expect("the pinned ASVK chain");
}

#[test]
fn pinned_roots_are_the_ones_amd_publishes() {
    // The sev crate's built-in ASK/ARK equal AMD's published bundles (test_data/amd).
    use sev::certs::snp::builtin::{genoa, milan, turin};
    for (builtin_ask, builtin_ark, published) in [
        (milan::ASK, milan::ARK, "amd/ask_ark_milan.pem"),
        (genoa::ASK, genoa::ARK, "amd/ask_ark_genoa.pem"),
        (turin::ASK, turin::ARK, "amd/ask_ark_turin_vcek.pem"),
    ] {
        let der = |pem: &[u8]| {
            x509_parser::pem::Pem::iter_from_buffer(pem)
                .map(|p| p.expect("PEM").contents)
                .collect::<Vec<_>>()
        };
        let mut builtin = der(builtin_ask);
        builtin.extend(der(builtin_ark));
        assert_eq!(builtin, der(&data(published)), "{published}");
    }
}

#[test]
fn turin_vcek_chains_to_the_turin_root() {
    let verifier = verifier();
    let turin = data("snp/turin-vcek.der");
    let cert = verifier
        .verify_vek_certificate(&turin, Signer::Vcek, None, NOW)
        .expect("chains to the pinned Turin ASK");
    assert_eq!(cert.product, Product::Turin);
    assert_eq!(cert.hw_id.as_deref(), Some("1e550a8ee5cf9f4d"));
    assert_eq!(
        cert.tcb,
        Tcb {
            fmc: Some(0),
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 9
        }
    );
    assert_eq!(
        refusal(verifier.verify_vek_certificate(&turin, Signer::Vcek, Some(Product::Milan), NOW)),
        Check::CertificateChain
    );
    assert_eq!(
        refusal(verifier.verify_vek_certificate(&turin, Signer::Vlek, None, NOW)),
        Check::CertificateChain
    );
}

#[test]
fn a_cached_vcek_need_not_be_sent_again() {
    let verifier = verifier();
    let ev = evidence(&CASES[1]);
    let binding = report_data(&ev.report);
    let without = SnpEvidence {
        vek: None,
        ..ev.clone()
    };
    assert_eq!(
        refusal(verifier.verify(&without, &binding, NOW)),
        Check::CertificateChain
    );
    verifier.verify(&ev, &binding, NOW).expect("with its VCEK");
    verifier
        .verify(&without, &binding, NOW)
        .expect("the VCEK is cached for this chip and TCB");
    // The cache does not lift the validity check.
    assert_eq!(
        refusal(verifier.verify(&without, &binding, 1_950_000_000)),
        Check::CertificateValidity
    );
}

/// The strict defaults refuse what these real hosts show, each for its own reason, until the
/// deployment accepts it explicitly: SMT on, the memory alias check not done (firmware 1.52,
/// before the BadRAM fix), a guest at VMPL 1, no floor for the product.
#[test]
fn the_default_trust_refuses_these_hosts_for_their_reasons() {
    let case = &CASES[0];
    let ev = evidence(case);
    let binding = report_data(&ev.report);
    let with = |adjust: &dyn Fn(&mut SnpTrust)| {
        let mut trust = SnpTrust {
            products: [Product::Milan].into(),
            minimum_tcb: attestation::snp::MinimumTcb {
                milan: Some(case.reported_tcb),
                ..Default::default()
            },
            ..SnpTrust::default()
        };
        adjust(&mut trust);
        SnpVerifier::new(trust).expect("trust").verify(&ev, &binding, NOW)
    };
    let smt = with(&|_| {}).unwrap_err();
    assert_eq!(smt.check, Check::GuestPolicy);
    assert!(smt.detail.contains("SMT"), "{smt}");
    let alias = with(&|t| t.allow_smt = true).unwrap_err();
    assert_eq!(alias.check, Check::GuestPolicy);
    assert!(alias.detail.contains("alias check"), "{alias}");
    with(&|t| {
        t.allow_smt = true;
        t.require_alias_check = false;
    })
    .expect("both accepted explicitly");
    let no_floor = SnpVerifier::new(SnpTrust {
        allow_smt: true,
        require_alias_check: false,
        ..SnpTrust::default()
    })
    .expect("trust")
    .verify(&ev, &binding, NOW)
    .unwrap_err();
    assert_eq!(no_floor.check, Check::Tcb);
    let raised = with(&|t| {
        t.allow_smt = true;
        t.require_alias_check = false;
        t.minimum_tcb.milan = Some(Tcb {
            snp: case.reported_tcb.snp + 1,
            ..case.reported_tcb
        });
    })
    .unwrap_err();
    assert_eq!(raised.check, Check::Tcb);
    // The VLEK capture is a VMPL 1 guest.
    let vlek = evidence(&CASES[3]);
    let at_vmpl1 = SnpVerifier::new(SnpTrust {
        accept_vlek: true,
        allowed_vmpls: [0].into(),
        ..SnpTrust::insecure_any_platform()
    })
    .expect("trust")
    .verify(&vlek, &report_data(&vlek.report), NOW)
    .unwrap_err();
    assert_eq!(at_vmpl1.check, Check::Vmpl);
}
