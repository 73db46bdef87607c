//! Captured TPM evidence (test_data/tpm/, made by capture.sh with swtpm and tpm2-tools): each
//! case verifies offline; every bit flip and truncation of it is refused without a panic. Runs
//! without a TPM and without the `attester` feature.

use std::fs;
use std::path::PathBuf;

use attestation::binding::tpm_qualifying_data;
use attestation::tpm::ek::{EkCaBundle, EkPublic};
use attestation::tpm::{AkName, AkPublic, PcrValues, SignatureScheme, TpmEvidence, TpmTrust, TpmVerifier};
use attestation::{Check, Verifier};

/// A time at which the captured EK and CA certificates are valid (a day after capture).
const NOW: i64 = 1_796_010_000;

fn data(path: &str) -> Vec<u8> {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("test_data/tpm")
        .join(path);
    fs::read(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

struct Case {
    evidence: TpmEvidence,
    ak_name: AkName,
    binding: Vec<u8>,
}

fn case(name: &str) -> Case {
    let binding = hex::decode(
        String::from_utf8(data(&format!("{name}/qualification.hex")))
            .expect("utf-8")
            .trim(),
    )
    .expect("hex");
    Case {
        evidence: TpmEvidence {
            ak_public: data(&format!("{name}/ak.pub")),
            quote: data(&format!("{name}/quote.msg")),
            signature: data(&format!("{name}/quote.sig")),
            pcrs: PcrValues::from_tpm2_tools(&data(&format!("{name}/pcrs.out"))).expect("PCR file"),
        },
        ak_name: AkName::from_bytes(&data(&format!("{name}/ak.name"))).expect("ak.name"),
        binding,
    }
}

const CASES: &[(&str, SignatureScheme)] = &[
    ("quote-rsassa", SignatureScheme::RsassaSha256),
    ("quote-rsapss", SignatureScheme::RsapssSha256),
    ("quote-ecdsa", SignatureScheme::EcdsaP256Sha256),
];

#[test]
fn captured_quotes_verify() {
    for &(name, scheme) in CASES {
        let c = case(name);
        assert_eq!(c.binding, tpm_qualifying_data(&[0x5a; 32], b"workload HPKE public key"));
        assert_eq!(
            AkPublic::from_tpm2b_public(&c.evidence.ak_public).expect(name).name(),
            &c.ak_name
        );
        let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(c.ak_name.clone()));
        let claims = verifier
            .verify(&c.evidence, &c.binding, NOW)
            .unwrap_or_else(|r| panic!("{name}: {r}"));
        assert_eq!(claims.signature_scheme, scheme, "{name}");
        assert_eq!(
            claims.pcrs.iter().map(|(i, _)| i).collect::<Vec<_>>(),
            [0, 1, 2, 3, 7, 16],
            "{name}"
        );
        assert_eq!(
            hex::encode(claims.pcrs.get(16).expect("PCR 16")),
            // SHA-256(32 zero bytes ‖ the extended digest), as tpm2_pcrextend did.
            hex::encode(ring::digest::digest(
                &ring::digest::SHA256,
                &[
                    [0u8; 32].as_slice(),
                    &hex::decode("b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c").expect("hex")
                ]
                .concat()
            )),
        );
        let json = serde_json::to_value(&claims).expect("JSON");
        for key in [
            "ak_name",
            "signature_scheme",
            "pcr_bank",
            "pcrs",
            "clock_info",
            "firmware_version",
            "qualified_signer",
            "extra_data",
        ] {
            assert!(json.get(key).is_some(), "{name}: claims JSON lacks {key}");
        }
    }
}

#[test]
fn every_bit_flip_is_refused() {
    for &(name, _) in CASES {
        let c = case(name);
        let verifier = TpmVerifier::new(TpmTrust::enrolled_ak(c.ak_name.clone()));
        type Field = fn(&mut TpmEvidence) -> &mut Vec<u8>;
        let fields: [(&str, Field); 3] = [
            ("quote", |e| &mut e.quote),
            ("signature", |e| &mut e.signature),
            ("ak_public", |e| &mut e.ak_public),
        ];
        for (field, get) in fields {
            let len = get(&mut c.evidence.clone()).len();
            for byte in 0..len {
                for bit in 0..8 {
                    let mut evidence = c.evidence.clone();
                    get(&mut evidence)[byte] ^= 1 << bit;
                    let refusal = verifier.verify(&evidence, &c.binding, NOW).expect_err(&format!(
                        "{name}: flipped bit {bit} of {field} byte {byte} was accepted"
                    ));
                    assert_ne!(
                        refusal.check,
                        Check::Binding,
                        "{name} {field} {byte}: checked before the signature"
                    );
                }
            }
            for cut in 0..len {
                let mut evidence = c.evidence.clone();
                get(&mut evidence).truncate(cut);
                assert!(
                    verifier.verify(&evidence, &c.binding, NOW).is_err(),
                    "{name}: {field} cut at {cut}"
                );
            }
            let mut evidence = c.evidence.clone();
            get(&mut evidence).push(0);
            assert_eq!(verifier.verify(&evidence, &c.binding, NOW).unwrap_err().check, {
                if field == "quote" {
                    Check::Signature
                } else {
                    Check::Malformed
                }
            });
        }
    }
}

#[test]
fn captured_ek_certificates_chain_to_the_captured_ca() {
    let root = EkCaBundle::from_pem(&data("ek/root.pem")).expect("root");
    let issuer = EkCaBundle::from_pem(&data("ek/issuer.pem")).expect("issuer");
    let issuer_der = x509_parser::pem::Pem::iter_from_buffer(&data("ek/issuer.pem"))
        .next()
        .expect("PEM")
        .expect("PEM")
        .contents;
    for kind in ["rsa2048", "secp384r1"] {
        let cert = data(&format!("ek/ek-{kind}.crt"));
        let ek = EkPublic::from_tpm2b_public(&data(&format!("ek/ek-{kind}.pub"))).expect("EK public");
        let verified = root
            .verify(&cert, &[&issuer_der], NOW)
            .unwrap_or_else(|r| panic!("{kind}: {r}"));
        assert_eq!(verified.digest, ek.digest(), "{kind}: certified key is the TPM's EK");
        assert_eq!(
            verified
                .digest
                .to_string()
                .parse::<attestation::tpm::ek::EkDigest>()
                .expect("hex"),
            verified.digest
        );
        assert_eq!(
            EkPublic::from_spki_der(&ek.spki_der()).expect("SPKI").digest(),
            ek.digest()
        );
        issuer
            .verify(&cert, &[], NOW)
            .expect("the intermediate as trust anchor");
        assert_eq!(root.verify(&cert, &[], NOW).unwrap_err().check, Check::CertificateChain);
        assert_eq!(
            root.verify(&cert, &[&issuer_der], NOW - 10 * 86_400).unwrap_err().check,
            Check::CertificateValidity
        );
        for cut in [0, 1, cert.len() / 2, cert.len() - 1] {
            assert_eq!(
                root.verify(&cert[..cut], &[&issuer_der], NOW).unwrap_err().check,
                Check::Malformed
            );
        }
    }
    assert_eq!(
        EkCaBundle::from_pem(b"no certificates here").unwrap_err().check,
        Check::Malformed
    );
    assert!(EkCaBundle::from_der(vec![vec![0x30, 0x00]]).is_err());
}
