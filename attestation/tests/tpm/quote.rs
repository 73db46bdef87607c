//! Quotes from a real (software) TPM, made by our attester (tss-esapi) and by tpm2-tools, verify;
//! tampered, mis-bound or foreign evidence is refused with the right check.

use attestation::attester::tpm::{AkScheme, Tpm};
use attestation::binding::tpm_qualifying_data;
use attestation::tpm::{AkName, AkPublic, PcrValues, SignatureScheme, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::{Check, Verifier};
use tss_esapi::structures::{Attest, AttestInfo, PublicBuffer, Signature};
use tss_esapi::traits::UnMarshall;

use super::support::{Swtpm, SwtpmExt};

const PCRS: &[u8] = &[0, 1, 2, 3, 7, 16];
const PCR_LIST: &str = "sha256:0,1,2,3,7,16";

fn binding() -> [u8; 32] {
    tpm_qualifying_data(&[0x5a; 32], b"workload HPKE public key")
}

/// Makes PCR 16 non-zero, so the quoted values are not all equal.
fn extend_pcr16(tpm: &Swtpm) {
    tpm.tpm2(
        "tpm2_pcrextend",
        &["16:sha256=b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c"],
    );
}

fn refused(verifier: &TpmVerifier, evidence: &TpmEvidence, binding: &[u8]) -> Check {
    verifier
        .verify(evidence, binding, 0)
        .expect_err("evidence must be refused")
        .check
}

/// Everything that must be refused, starting from valid `evidence` by `ak`.
fn assert_refusals(evidence: &TpmEvidence, ak: &AkName, other_ak: &[u8]) {
    let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(ak.clone()));
    let binding = binding();

    let other_binding = tpm_qualifying_data(&[0x5b; 32], b"workload HPKE public key");
    assert_eq!(refused(&verifier, evidence, &other_binding), Check::Binding);
    assert_eq!(refused(&verifier, evidence, &binding[..31]), Check::Binding);

    let mut tampered_pcr = evidence.clone();
    let mut value = *tampered_pcr.pcrs.get(16).expect("PCR 16");
    value[0] ^= 1;
    tampered_pcr.pcrs.insert(16, value);
    assert_eq!(refused(&verifier, &tampered_pcr, &binding), Check::Pcrs);

    let mut missing_pcr = evidence.clone();
    missing_pcr.pcrs = evidence
        .pcrs
        .iter()
        .filter(|(i, _)| *i != 7)
        .map(|(i, v)| (i, *v))
        .collect();
    assert_eq!(refused(&verifier, &missing_pcr, &binding), Check::Pcrs);

    let mut extra_pcr = evidence.clone();
    extra_pcr.pcrs.insert(9, [0; 32]);
    assert_eq!(refused(&verifier, &extra_pcr, &binding), Check::Pcrs);

    // A byte of the clock info, one of the pcrDigest, one of extraData.
    for offset in [evidence.quote.len() - 40 - 30, evidence.quote.len() - 1, 60] {
        let mut tampered = evidence.clone();
        tampered.quote[offset] ^= 0x01;
        assert_eq!(
            refused(&verifier, &tampered, &binding),
            Check::Signature,
            "quote byte {offset}"
        );
    }
    let mut bad_magic = evidence.clone();
    bad_magic.quote[0] ^= 0x01;
    assert_eq!(refused(&verifier, &bad_magic, &binding), Check::Signature);

    let mut tampered_sig = evidence.clone();
    let last = tampered_sig.signature.len() - 1;
    tampered_sig.signature[last] ^= 0x01;
    assert_eq!(refused(&verifier, &tampered_sig, &binding), Check::Signature);

    // Another AK of the same TPM: not the enrolled one (Identity); presented as the signer of a
    // quote it did not sign, with its own name enrolled (Signature).
    let mut foreign = evidence.clone();
    foreign.ak_public = other_ak.to_vec();
    assert_eq!(refused(&verifier, &foreign, &binding), Check::Identity);
    let other_name = AkPublic::from_tpm2b_public(other_ak).expect("other AK").name().clone();
    let other_verifier = TpmVerifier::new(TpmTrust::enrolled_ak(other_name));
    assert_eq!(refused(&other_verifier, &foreign, &binding), Check::Signature);
    assert_eq!(refused(&other_verifier, evidence, &binding), Check::Identity);

    let mut truncated = evidence.clone();
    truncated.signature.truncate(10);
    assert_eq!(refused(&verifier, &truncated, &binding), Check::Malformed);
}

/// Cross-checks our parse of the evidence against the TSS's own unmarshalling.
fn assert_tss_agrees(evidence: &TpmEvidence, claims: &attestation::tpm::TpmClaims) {
    let attest = Attest::unmarshall(&evidence.quote).expect("TSS parses the quote");
    assert_eq!(attest.clock_info().clock(), claims.clock_info.clock);
    assert_eq!(attest.clock_info().reset_count(), claims.clock_info.reset_count);
    assert_eq!(attest.clock_info().restart_count(), claims.clock_info.restart_count);
    assert_eq!(attest.clock_info().safe(), claims.clock_info.safe);
    assert_eq!(attest.firmware_version(), claims.firmware_version);
    assert_eq!(attest.extra_data().value(), &claims.extra_data[..]);
    assert_eq!(attest.qualified_signer().value(), &claims.qualified_signer[..]);
    let AttestInfo::Quote { info } = attest.attested() else {
        panic!("not a quote")
    };
    assert_eq!(info.pcr_digest().len(), 32);
    Signature::unmarshall(&evidence.signature).expect("TSS parses the signature");
    PublicBuffer::unmarshall(&evidence.ak_public).expect("TSS parses the AK public");
}

fn attester_quote(scheme: AkScheme, expected: SignatureScheme) {
    let swtpm = Swtpm::start();
    extend_pcr16(&swtpm);
    let mut tpm: Tpm = swtpm.attester();
    let ak = tpm.create_ak(scheme).expect("create AK");
    let other_ak = tpm.create_ak(scheme).expect("create a second AK");
    let name = ak.parsed_public().expect("AK public").name().clone();
    let evidence = tpm.quote(&ak, &binding(), PCRS).expect("quote");
    drop(tpm);

    let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(name.clone()));
    let claims = verifier
        .verify(&evidence, &binding(), 0)
        .expect("our attester's quote verifies");
    assert_eq!(claims.ak_name, name);
    assert_eq!(claims.signature_scheme, expected);
    assert_eq!(claims.pcrs, evidence.pcrs);
    assert_eq!(claims.pcrs.iter().map(|(i, _)| i).collect::<Vec<_>>(), PCRS);
    assert_ne!(claims.pcrs.get(16), Some(&[0u8; 32]));
    assert_eq!(claims.extra_data, binding());
    assert!(claims.clock_info.safe);
    assert_tss_agrees(&evidence, &claims);

    let any_ak = TpmVerifier::new(TpmTrust::ak_checked_by_caller());
    assert_eq!(any_ak.verify(&evidence, &binding(), 0).expect("verifies").ak_name, name);

    let json = serde_json::to_value(&claims).expect("claims serialize");
    assert_eq!(json["ak_name"], name.to_hex());
    assert_eq!(json["pcr_bank"], "sha256");
    assert_eq!(json["pcrs"]["16"], hex::encode(claims.pcrs.get(16).expect("PCR 16")));
    assert_eq!(json["extra_data"], hex::encode(binding()));
    assert!(json["clock_info"]["reset_count"].is_u64());
    assert_eq!(json["firmware_version"], format!("{:016x}", claims.firmware_version));

    assert_refusals(&evidence, &name, &other_ak.public);
}

#[test]
fn attester_rsassa_quote_verifies() {
    attester_quote(AkScheme::RsaSsa, SignatureScheme::RsassaSha256);
}

#[test]
fn attester_rsapss_quote_verifies() {
    attester_quote(AkScheme::RsaPss, SignatureScheme::RsapssSha256);
}

#[test]
fn attester_ecdsa_quote_verifies() {
    attester_quote(AkScheme::EcdsaP256, SignatureScheme::EcdsaP256Sha256);
}

/// tpm2_createek + tpm2_createak + tpm2_quote, files read as the server would receive them.
fn tools_quote(key: &str, scheme: &str, expected: SignatureScheme) {
    let swtpm = Swtpm::start();
    extend_pcr16(&swtpm);
    swtpm.tpm2("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    let create_ak = |n: &str| {
        let (ctx, public, name, private) = (
            format!("{n}.ctx"),
            format!("{n}.pub"),
            format!("{n}.name"),
            format!("{n}.priv"),
        );
        swtpm.tpm2(
            "tpm2_createak",
            &[
                "-C", "ek.ctx", "-c", &ctx, "-G", key, "-g", "sha256", "-s", scheme, "-u", &public, "-n", &name, "-r",
                &private,
            ],
        );
    };
    create_ak("ak");
    create_ak("other");
    let qualification = hex::encode(binding());
    swtpm.tpm2(
        "tpm2_quote",
        &[
            "-c",
            "ak.ctx",
            "-l",
            PCR_LIST,
            "-q",
            &qualification,
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-o",
            "pcrs.out",
            "--scheme",
            scheme,
            "-g",
            "sha256",
        ],
    );

    let pcr_file = swtpm.read("pcrs.out");
    let evidence = TpmEvidence {
        ak_public: swtpm.read("ak.pub"),
        quote: swtpm.read("quote.msg"),
        signature: swtpm.read("quote.sig"),
        pcrs: PcrValues::from_tpm2_tools(&pcr_file).expect("tpm2_quote PCR file"),
    };
    let tools_name = AkName::from_bytes(&swtpm.read("ak.name")).expect("tpm2_createak -n");
    let ak = AkPublic::from_tpm2b_public(&evidence.ak_public).expect("AK public");
    assert_eq!(ak.name(), &tools_name, "our AK name is the one tpm2-tools computes");

    let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(tools_name.clone()));
    let claims = verifier
        .verify(&evidence, &binding(), 0)
        .expect("tpm2-tools quote verifies");
    assert_eq!(claims.signature_scheme, expected);
    assert_eq!(claims.pcrs.iter().map(|(i, _)| i).collect::<Vec<_>>(), PCRS);
    assert_tss_agrees(&evidence, &claims);

    // Our writer of the PCR file round-trips, and tpm2_checkquote (an independent verifier)
    // accepts it; not for PSS, which tpm2_checkquote 5.4 wrongly rejects.
    assert_eq!(
        PcrValues::from_tpm2_tools(&evidence.pcrs.to_tpm2_tools()).expect("round trip"),
        evidence.pcrs
    );
    if scheme != "rsapss" {
        swtpm.write("ours.pcrs", &evidence.pcrs.to_tpm2_tools());
        let out = swtpm.tpm2_output(
            "tpm2_checkquote",
            &[
                "-u",
                "ak.pub",
                "-m",
                "quote.msg",
                "-s",
                "quote.sig",
                "-f",
                "ours.pcrs",
                "-g",
                "sha256",
                "-q",
                &qualification,
            ],
        );
        assert!(
            out.status.success(),
            "tpm2_checkquote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    assert_refusals(&evidence, &tools_name, &swtpm.read("other.pub"));
}

#[test]
fn tpm2_tools_rsassa_quote_verifies() {
    tools_quote("rsa", "rsassa", SignatureScheme::RsassaSha256);
}

#[test]
fn tpm2_tools_rsapss_quote_verifies() {
    tools_quote("rsa", "rsapss", SignatureScheme::RsapssSha256);
}

#[test]
fn tpm2_tools_ecdsa_quote_verifies() {
    tools_quote("ecc", "ecdsa", SignatureScheme::EcdsaP256Sha256);
}

#[test]
fn quotes_of_one_ak_keep_counters_moving_forward() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.attester();
    let ak = tpm.create_ak(AkScheme::EcdsaP256).expect("create AK");
    let first = tpm.quote(&ak, &binding(), &[0]).expect("first quote");
    let second = tpm.quote(&ak, &binding(), &[0]).expect("second quote");
    drop(tpm);
    let verifier = TpmVerifier::new(TpmTrust::ak_checked_by_caller());
    let first = verifier.verify(&first, &binding(), 0).expect("first");
    let second = verifier.verify(&second, &binding(), 0).expect("second");
    second.clock_info.check_after(&first.clock_info).expect("later quote");
    assert_eq!(
        first.clock_info.check_after(&second.clock_info).err().map(|r| r.check),
        {
            // Same reset and restart counts: only the clock moved, and only if time passed.
            if second.clock_info.clock > first.clock_info.clock {
                Some(Check::Counters)
            } else {
                None
            }
        }
    );
}

#[test]
fn a_missing_tpm_is_an_error_not_a_panic() {
    use attestation::attester::tpm::TpmError;
    let err = Tpm::open("device:/dev/no-such-tpm").expect_err("no device");
    assert!(matches!(err, TpmError::NoDevice(_)), "{err}");
    assert!(err.to_string().contains("/dev/no-such-tpm"), "{err}");
    // A port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let err = Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}")).expect_err("no swtpm");
    assert!(matches!(err, TpmError::Connect { .. }), "{err}");
}
