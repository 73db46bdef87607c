//! EK certificates from a real (software) TPM's NV chain to its manufacturer's (swtpm's local) CA;
//! the certified key is the TPM's EK; certificates from another CA are refused.

use attestation::attester::tpm::EkKind;
use attestation::tpm::ek::{EkCaBundle, EkProfile, EkPublic};
use attestation::Check;
use x509_parser::pem::Pem;

use super::support::{now_unix, Swtpm, SwtpmExt, TpmState};

fn der_of(pem: &[u8]) -> Vec<u8> {
    Pem::iter_from_buffer(pem)
        .next()
        .expect("a PEM block")
        .expect("PEM parses")
        .contents
}

#[test]
fn ek_certificates_chain_to_the_local_ca() {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.attester();
    let rsa_cert = tpm.ek_certificate(EkKind::Rsa2048).expect("RSA EK certificate in NV");
    let rsa_ek = EkPublic::from_tpm2b_public(&tpm.ek_public(EkKind::Rsa2048).expect("EK")).expect("EK parses");
    let p384_cert = tpm.ek_certificate(EkKind::EccP384).expect("P-384 EK certificate in NV");
    let p384_ek = EkPublic::from_tpm2b_public(&tpm.ek_public(EkKind::EccP384).expect("EK")).expect("EK parses");
    let missing = tpm.ek_certificate(EkKind::EccP256);
    drop(tpm);
    assert!(missing.is_err(), "swtpm_setup writes no P-256 EK certificate");
    assert_eq!(rsa_cert, swtpm.ek_certificate("rsa2048"));

    let now = now_unix();
    let root = EkCaBundle::from_pem(&swtpm.root_ca_pem()).expect("root bundle");
    let issuer = der_of(&swtpm.issuer_ca_pem());
    let both = EkCaBundle::from_pem(&[swtpm.root_ca_pem(), swtpm.issuer_ca_pem()].concat()).expect("bundle");

    for (cert, ek, key_type) in [(&rsa_cert, &rsa_ek, "rsa-2048"), (&p384_cert, &p384_ek, "ecc-p384")] {
        // Root in the bundle, the intermediate supplied with the EK certificate.
        let verified = root
            .verify(cert, &[&issuer], now)
            .expect("chains through the intermediate");
        assert_eq!(
            verified.chain,
            vec!["CN=swtpm-localca".to_owned(), "CN=swtpm-localca-rootca".to_owned()]
        );
        assert_eq!(verified.public.key_type(), key_type);
        assert_eq!(
            verified.digest,
            ek.digest(),
            "the certificate certifies the TPM's EK ({key_type})"
        );
        assert_eq!(verified.tpm_manufacturer.as_deref(), Some("id:00001014"));
        assert_eq!(verified.tpm_model.as_deref(), Some("swtpm"));
        assert!(verified.tpm_version.is_some());

        // The intermediate trusted directly.
        let verified = both
            .verify(cert, &[], now)
            .expect("chains to the bundle's intermediate");
        assert_eq!(verified.chain, vec!["CN=swtpm-localca".to_owned()]);

        // Without the intermediate there is no path.
        assert_eq!(root.verify(cert, &[], now).unwrap_err().check, Check::CertificateChain);

        // Before the certificates were issued.
        assert_eq!(
            root.verify(cert, &[&issuer], 0).unwrap_err().check,
            Check::CertificateValidity
        );

        // A flipped bit in the signed part breaks the signature.
        let mut tampered = cert.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x01;
        let check = root.verify(&tampered, &[&issuer], now).unwrap_err().check;
        assert!(matches!(check, Check::CertificateChain | Check::Malformed), "{check:?}");
    }

    // The EK certificate is not a CA: it cannot act as an intermediate, and a CA certificate is
    // not an EK certificate.
    assert_eq!(
        root.verify(&issuer, &[], now).unwrap_err().check,
        Check::CertificateChain
    );
    assert_eq!(
        root.verify(&[0x30, 0x03, 0x02, 0x01, 0x00], &[], now)
            .unwrap_err()
            .check,
        Check::Malformed
    );
}

#[test]
fn ek_certificate_from_another_ca_is_refused() {
    // Two TPMs manufactured with two local CAs: same CA names, different keys.
    let ours = TpmState::manufacture();
    let theirs = TpmState::manufacture();
    let now = now_unix();
    let our_cas = EkCaBundle::from_pem(&[ours.root_ca_pem(), ours.issuer_ca_pem()].concat()).expect("bundle");
    let our_root = EkCaBundle::from_pem(&ours.root_ca_pem()).expect("bundle");

    our_cas
        .verify(&ours.ek_certificate("rsa2048"), &[], now)
        .expect("our TPM");
    for kind in ["rsa2048", "secp384r1"] {
        let refusal = our_cas.verify(&theirs.ek_certificate(kind), &[], now).unwrap_err();
        assert_eq!(refusal.check, Check::CertificateChain, "{refusal}");
        // Their intermediate does not chain to our root either.
        let their_issuer = der_of(&theirs.issuer_ca_pem());
        let refusal = our_root
            .verify(&theirs.ek_certificate(kind), &[&their_issuer], now)
            .unwrap_err();
        assert_eq!(refusal.check, Check::CertificateChain, "{refusal}");
    }
}

/// What the manufacturer's CA signs is an EK certificate only under the TCG EK profile: a
/// certificate of the same CA without the TPM's subjectAltName, or without the EK key purpose,
/// is refused (`EkProfile`), though its chain and key are the EK's. The key purpose alone can be
/// waived for a listed manufacturer.
#[test]
fn certificates_outside_the_tcg_ek_profile_are_refused() {
    let state = TpmState::manufacture();
    const BASE: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment";
    const SAN: &str = "subjectAltName=critical,dirName:tpm\n[tpm]\n0.2.23.133.2.1=id:00001014\n1.2.23.133.2.2=swtpm\n2.2.23.133.2.3=id:20191023";
    let plain = state.issue_by_ek_ca("rsa2048", BASE);
    let eku_only = state.issue_by_ek_ca("rsa2048", &format!("{BASE}\nextendedKeyUsage=2.23.133.8.1"));
    let san_only = state.issue_by_ek_ca("rsa2048", &format!("{BASE}\n{SAN}"));
    let complete = state.issue_by_ek_ca("rsa2048", &format!("{BASE}\nextendedKeyUsage=2.23.133.8.1\n{SAN}"));
    // After the certificates were issued (they are valid from that second on).
    let now = now_unix() + 1;
    let cas = EkCaBundle::from_pem(&state.ca_bundle_pem()).expect("bundle");
    cas.verify(&state.ek_certificate("rsa2048"), &[], now)
        .expect("swtpm's EK certificate follows the profile");
    let refusal = cas.verify(&plain, &[], now).unwrap_err();
    assert_eq!(refusal.check, Check::EkProfile, "{refusal}");
    assert!(refusal.detail.contains("subjectAltName"), "{refusal}");
    assert_eq!(cas.verify(&eku_only, &[], now).unwrap_err().check, Check::EkProfile);
    let refusal = cas.verify(&san_only, &[], now).unwrap_err();
    assert_eq!(refusal.check, Check::EkProfile, "{refusal}");
    assert!(refusal.detail.contains("2.23.133.8.1"), "{refusal}");
    cas.verify(&complete, &[], now)
        .expect("the profile's parts, issued by the CA");

    // The key purpose waived for this manufacturer (case of the hex digits aside), never the
    // subjectAltName, and only for the manufacturer listed.
    let exempt = |m: &str| {
        EkCaBundle::from_pem(&state.ca_bundle_pem())
            .expect("bundle")
            .with_profile(EkProfile {
                eku_exempt_manufacturers: [m.to_owned()].into(),
            })
    };
    exempt("ID:00001014").verify(&san_only, &[], now).expect("exempted");
    assert_eq!(
        exempt("id:00001014").verify(&plain, &[], now).unwrap_err().check,
        Check::EkProfile
    );
    assert_eq!(
        exempt("id:49465800").verify(&san_only, &[], now).unwrap_err().check,
        Check::EkProfile
    );
}
