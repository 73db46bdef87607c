//! Bodies of the fuzz targets, shared by the libFuzzer binaries (fuzz_targets/) and the
//! stable-Rust smoke runner (src/bin/smoke.rs). Each must never panic, whatever the input.

use std::sync::OnceLock;

use attestation::binding::tpm_qualifying_data;
use attestation::snp::{Product, Signer, SnpEvidence, SnpTrust, SnpVerifier};
use attestation::tpm::ek::{EkCaBundle, EkPublic};
use attestation::tpm::{AkName, AkPublic, PcrValues, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::Verifier;

/// Inside every real SNP fixture certificate's validity (2025-06-01).
pub const SNP_NOW: i64 = 1_748_736_000;
/// Inside the captured TPM EK/CA certificates' validity.
pub const TPM_NOW: i64 = 1_796_010_000;

/// test_data of the attestation crate, embedded so that the binaries run from anywhere.
pub mod fixtures {
    macro_rules! td {
        ($p:literal) => {
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../attestation/test_data/", $p))
        };
    }
    pub const MILAN_VCEK: &[u8] = td!("snp/milan-vcek-report-v2.vcek.der");
    pub const MILAN_VLEK: &[u8] = td!("snp/milan-vlek-report-v3.vlek.der");
    pub const EK_ROOT_PEM: &[u8] = td!("tpm/ek/root.pem");
    pub const EK_ISSUER_PEM: &[u8] = td!("tpm/ek/issuer.pem");
}

struct Snp {
    verifier: SnpVerifier,
}

fn snp() -> &'static Snp {
    static S: OnceLock<Snp> = OnceLock::new();
    S.get_or_init(|| Snp {
        verifier: SnpVerifier::new(SnpTrust {
            accept_vlek: true,
            ..SnpTrust::insecure_any_platform()
        })
        .expect("built-in roots"),
    })
}

/// Arbitrary bytes as an SNP report, with a real VCEK, a real VLEK, and no certificate (the
/// verifier's chip cache may hold the VCEK from an earlier input). The expected binding is the
/// report's own REPORT_DATA when it has one, so inputs reach the signature check.
pub fn snp_report(data: &[u8]) {
    let s = snp();
    let binding: &[u8] = data.get(0x50..0x90).unwrap_or(&[0u8; 64]);
    for vek in [Some(fixtures::MILAN_VCEK), Some(fixtures::MILAN_VLEK), None] {
        let ev = SnpEvidence {
            report: data.to_vec(),
            vek: vek.map(<[u8]>::to_vec),
            chain: None,
        };
        let _ = s.verifier.verify(&ev, binding, SNP_NOW);
    }
    // The input as a VCEK/VLEK certificate on its own.
    let _ = s.verifier.verify_vek_certificate(data, Signer::Vcek, None, SNP_NOW);
    let _ = s.verifier.verify_vek_certificate(data, Signer::Vlek, Some(Product::Milan), SNP_NOW);
}

/// Splits `data` into length-prefixed parts (u16 big-endian length each); the last part is the
/// remainder.
pub fn split<const N: usize>(mut data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&[][..]; N];
    for (i, part) in parts.iter_mut().enumerate() {
        if i == N - 1 || data.len() < 2 {
            *part = data;
            data = &[];
            continue;
        }
        let len = usize::from(u16::from_be_bytes([data[0], data[1]])).min(data.len() - 2);
        *part = &data[2..2 + len];
        data = &data[2 + len..];
    }
    parts
}

/// Joins parts as [`split`] reads them.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            out.extend_from_slice(&u16::try_from(p.len()).expect("part too long").to_be_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

/// ak_public ‖ quote ‖ signature ‖ pcrs (tpm2_tools PCR file), split by [`split`].
pub fn tpm_quote(data: &[u8]) {
    let [ak_public, quote, signature, pcrs] = split::<4>(data);
    let pcr_values = PcrValues::from_tpm2_tools(pcrs);
    if let Ok(p) = &pcr_values {
        let back = PcrValues::from_tpm2_tools(&p.to_tpm2_tools()).expect("re-read own PCR file");
        assert_eq!(&back, p);
    }
    let ev = TpmEvidence {
        ak_public: ak_public.to_vec(),
        quote: quote.to_vec(),
        signature: signature.to_vec(),
        pcrs: pcr_values.unwrap_or_default(),
    };
    let binding = tpm_qualifying_data(&[0x5a; 32], b"workload HPKE public key");
    let _ = TpmVerifier::new(TpmTrust::ak_checked_by_caller()).verify(&ev, &binding, TPM_NOW);
    if let Ok(ak) = AkPublic::from_tpm2b_public(ak_public) {
        let _ = TpmVerifier::new(TpmTrust::enrolled_ak(ak.name().clone())).verify(&ev, &binding, TPM_NOW);
    }
    let _ = AkName::from_bytes(quote);
}

/// TPM2B_PUBLIC parsing as an AK and as an EK, plus EK SPKI parsing.
pub fn tpm_public(data: &[u8]) {
    if let Ok(ak) = AkPublic::from_tpm2b_public(data) {
        let _ = ak.name().to_hex();
        let _ = ak.verify(data, data);
        let _ = ak.verify(b"message", &data[data.len().min(2)..]);
    }
    if let Ok(ek) = EkPublic::from_tpm2b_public(data) {
        let spki = ek.spki_der();
        let again = EkPublic::from_spki_der(&spki).expect("re-read own SPKI");
        assert_eq!(again.digest(), ek.digest());
        let _ = ek.key_type();
    }
    if let Ok(ek) = EkPublic::from_spki_der(data) {
        let _ = ek.spki_der();
        let _ = ek.digest();
        let _ = ek.key_type();
    }
}

struct Ek {
    root: EkCaBundle,
    issuer: EkCaBundle,
    issuer_der: Vec<u8>,
}

fn ek() -> &'static Ek {
    static E: OnceLock<Ek> = OnceLock::new();
    E.get_or_init(|| Ek {
        root: EkCaBundle::from_pem(fixtures::EK_ROOT_PEM).expect("root"),
        issuer: EkCaBundle::from_pem(fixtures::EK_ISSUER_PEM).expect("issuer"),
        issuer_der: x509_parser::pem::Pem::iter_from_buffer(fixtures::EK_ISSUER_PEM)
            .next()
            .expect("PEM")
            .expect("PEM")
            .contents,
    })
}

/// Arbitrary bytes as an EK certificate against the captured EK CA (with and without the
/// intermediate), as an intermediate, and as a CA bundle.
pub fn x509_ek_cert(data: &[u8]) {
    let e = ek();
    let _ = e.root.verify(data, &[&e.issuer_der], TPM_NOW);
    let _ = e.root.verify(data, &[], TPM_NOW);
    let _ = e.issuer.verify(data, &[], TPM_NOW);
    let _ = e.root.verify(&e.issuer_der, &[data], TPM_NOW);
    if let Ok(bundle) = EkCaBundle::from_der(vec![data.to_vec()]) {
        let _ = bundle.verify(data, &[], TPM_NOW);
    }
    let _ = EkCaBundle::from_pem(data);
}

/// The targets by name.
pub const TARGETS: [(&str, fn(&[u8])); 5] = [
    ("snp_report", snp_report),
    ("tpm_quote", tpm_quote),
    ("tpm_public", tpm_public),
    ("x509_ek_cert", x509_ek_cert),
    ("envelope_message", envelope_message),
];

/// The wrapping key of the envelope target's messages.
const ENVELOPE_KEY: [u8; 32] = [0x11; 32];

fn envelope(policy: kms_envelope::CommitmentPolicy) -> kms_envelope::Envelope {
    let keyring = kms_envelope::RawAesKeyring::new("fuzz", "k", &ENVELOPE_KEY).expect("key");
    kms_envelope::Envelope::new(keyring).with_commitment_policy(policy)
}

/// Runs a future that never waits (the raw AES keyring answers at once).
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a raw AES keyring future waited"),
    }
}

/// Arbitrary bytes as an envelope message: the header parser, then a whole decryption (header
/// authentication, frames, footer) under the key the seeds were written with, in one piece and
/// streamed, reading legacy suites too. A mutated message must never decrypt to anything but
/// the seed's plaintext, and nothing may panic.
pub fn envelope_message(data: &[u8]) {
    use std::io::Read as _;
    let _ = kms_envelope::parse_header(data, &kms_envelope::Limits::default());
    let env = envelope(kms_envelope::CommitmentPolicy::RequireEncryptAllowDecrypt);
    let ctx = kms_envelope::EncryptionContext::new();
    if let Ok(d) = now(env.decrypt(data, &ctx)) {
        assert!(d.plaintext.expose_secret().starts_with(b"fuzz seed"), "a forged message decrypted");
    }
    let streaming = env.danger_stream_unverified_signed_frames();
    if let Ok(mut r) = now(streaming.decrypting_reader(data, &ctx)) {
        let mut out = Vec::new();
        let _ = r.read_to_end(&mut out);
    }
}

/// Seeds made at run time (the envelope target's messages: both suites, several frame sizes).
pub fn generated_seeds(target: &str) -> Vec<Vec<u8>> {
    if target != "envelope_message" {
        return Vec::new();
    }
    let mut seeds = Vec::new();
    for suite in [
        kms_envelope::Suite::Aes256GcmHkdfSha512CommitKey,
        kms_envelope::Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        for (frame, len) in [(16u32, 0usize), (16, 40), (128, 300), (4096, 5000)] {
            let env = envelope(kms_envelope::CommitmentPolicy::default())
                .with_suite(suite)
                .expect("suite")
                .with_frame_length(frame)
                .expect("frame");
            let mut plaintext = b"fuzz seed".to_vec();
            plaintext.resize(len.max(9), 0x5a);
            let ctx = kms_envelope::EncryptionContext::new().with("fuzz", "seed");
            seeds.push(now(env.encrypt(&plaintext, &ctx)).expect("seed"));
        }
    }
    seeds
}
