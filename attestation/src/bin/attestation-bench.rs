//! Verification throughput of the attestation verifiers, next to the bare signature primitives
//! they are built on, measured in the same run. Single-threaded; about 2 s per measurement.
//!
//! Run in release: `scripts/bench-attestation` (adds the `test-chain` feature for the
//! synthetic SNP case).

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use attestation::binding::tpm_qualifying_data;
use attestation::snp::{SnpEvidence, SnpTrust, SnpVerifier};
use attestation::tpm::{AkName, PcrValues, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::Verifier;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaPublicKeyComponents, UnparsedPublicKey};

/// Inside every real SNP fixture certificate's validity (2025-06-01).
const SNP_NOW: i64 = 1_748_736_000;
/// Inside the captured TPM EK/CA validity (as tests/tpm_vectors.rs).
const TPM_NOW: i64 = 1_796_010_000;
const DURATION: Duration = Duration::from_secs(2);

fn data(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test_data").join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Calls `f` for about `DURATION` (after a short warm-up) and returns calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        f();
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    loop {
        for _ in 0..16 {
            f();
        }
        n += 16;
        let elapsed = start.elapsed();
        if elapsed >= DURATION {
            return n as f64 / elapsed.as_secs_f64();
        }
    }
}

fn line(name: &str, per_s: f64) {
    println!("{name:<62} {per_s:>10.0} /s  ({:>8.1} µs each)", 1e6 / per_s);
}

fn main() {
    println!(
        "attestation-bench: single-threaded, ~{} s per measurement",
        DURATION.as_secs()
    );

    // Bare primitives.
    let rng = SystemRandom::new();
    let report = data("snp/milan-vcek-report-v2.bin");
    // The SNP signature covers bytes 0..0x2A0 of the report with ECDSA P-384/SHA-384.
    let signed_part = &report[..0x2A0];
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).expect("P-384 key");
    let key =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).expect("P-384 key");
    let sig = key.sign(&rng, signed_part).expect("sign");
    let p384 = UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, key.public_key().as_ref().to_vec());
    p384.verify(signed_part, sig.as_ref()).expect("P-384 verifies");
    let p384_rate = rate(|| {
        black_box(p384.verify(black_box(signed_part), black_box(sig.as_ref()))).expect("P-384");
    });
    line("ring ECDSA P-384/SHA-384 verify (672-byte message)", p384_rate);

    // RSA-2048 PKCS#1 v1.5 SHA-256: the captured rsassa TPM quote's signature. The AK's
    // TPM2B_PUBLIC ends with the 256-byte modulus (exponent 0 = 65537); TPMT_SIGNATURE ends
    // with the 256-byte signature.
    let ak_pub = data("tpm/quote-rsassa/ak.pub");
    let quote = data("tpm/quote-rsassa/quote.msg");
    let quote_sig = data("tpm/quote-rsassa/quote.sig");
    let rsa = RsaPublicKeyComponents {
        n: ak_pub[ak_pub.len() - 256..].to_vec(),
        e: vec![0x01, 0x00, 0x01],
    };
    let rsa_sig = &quote_sig[quote_sig.len() - 256..];
    rsa.verify(&signature::RSA_PKCS1_2048_8192_SHA256, &quote, rsa_sig)
        .expect("RSA fixture verifies");
    let rsa_rate = rate(|| {
        black_box(rsa.verify(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            black_box(&quote),
            black_box(rsa_sig),
        ))
        .expect("RSA");
    });
    line("ring RSA-2048 PKCS#1 SHA-256 verify (TPM quote fixture)", rsa_rate);

    // SNP, real Milan report + VCEK, chain cached after the first call.
    let snp = SnpVerifier::new(SnpTrust::default()).expect("built-in roots");
    let snp_ev = SnpEvidence {
        report: report.clone(),
        vek: Some(data("snp/milan-vcek-report-v2.vcek.der")),
        chain: None,
    };
    let snp_binding = report[0x50..0x90].to_vec();
    snp.verify(&snp_ev, &snp_binding, SNP_NOW)
        .expect("real SNP report verifies");
    let snp_rate = rate(|| {
        black_box(snp.verify(black_box(&snp_ev), &snp_binding, SNP_NOW)).expect("SNP");
    });
    line("SNP verify, real Milan report + VCEK (cached chain)", snp_rate);
    let snp_novek = SnpEvidence {
        vek: None,
        ..snp_ev.clone()
    };
    let snp_novek_rate = rate(|| {
        black_box(snp.verify(black_box(&snp_novek), &snp_binding, SNP_NOW)).expect("SNP without VCEK");
    });
    line(
        "SNP verify, real Milan report, VCEK omitted (cached by chip)",
        snp_novek_rate,
    );

    #[cfg(feature = "test-chain")]
    let synthetic_rate = {
        use attestation::snp::danger::test_chain::{TestChain, TestChainOptions, VALID_AT};
        use attestation::snp::{Product, Signer};
        let chain = TestChain::new(TestChainOptions::new(Product::Milan, Signer::Vcek)).expect("test chain");
        let mut r = chain.report();
        r.report_data = [0x42; 64];
        let ev = chain.evidence(&r).expect("sign");
        let verifier = SnpVerifier::new(chain.trust()).expect("test root");
        verifier
            .verify(&ev, &r.report_data, VALID_AT)
            .expect("synthetic verifies");
        let rate = rate(|| {
            black_box(verifier.verify(black_box(&ev), &r.report_data, VALID_AT)).expect("synthetic SNP");
        });
        line("SNP verify, synthetic TestChain report (cached chain)", rate);
        Some(rate)
    };
    #[cfg(not(feature = "test-chain"))]
    let synthetic_rate: Option<f64> = {
        println!("SNP verify, synthetic TestChain report: skipped (build with --features test-chain)");
        None
    };

    // TPM quotes, captured evidence.
    let binding = tpm_qualifying_data(&[0x5a; 32], b"workload HPKE public key");
    for name in ["quote-rsassa", "quote-rsapss", "quote-ecdsa"] {
        let ev = TpmEvidence {
            ak_public: data(&format!("tpm/{name}/ak.pub")),
            quote: data(&format!("tpm/{name}/quote.msg")),
            signature: data(&format!("tpm/{name}/quote.sig")),
            pcrs: PcrValues::from_tpm2_tools(&data(&format!("tpm/{name}/pcrs.out"))).expect("PCRs"),
        };
        let ak = AkName::from_bytes(&data(&format!("tpm/{name}/ak.name"))).expect("ak.name");
        let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(ak));
        verifier.verify(&ev, &binding, TPM_NOW).expect("TPM quote verifies");
        let r = rate(|| {
            black_box(verifier.verify(black_box(&ev), &binding, TPM_NOW)).expect("TPM");
        });
        line(&format!("TPM quote verify, {name}"), r);
    }

    println!();
    println!(
        "ratio SNP (real, cached) / bare P-384 verify: {:.3}  (target >= 0.8: {})",
        snp_rate / p384_rate,
        if snp_rate / p384_rate >= 0.8 { "met" } else { "NOT met" }
    );
    println!(
        "ratio SNP (VCEK omitted) / bare P-384 verify: {:.3}",
        snp_novek_rate / p384_rate
    );
    if let Some(s) = synthetic_rate {
        println!("ratio SNP (synthetic)    / bare P-384 verify: {:.3}", s / p384_rate);
    }
}
