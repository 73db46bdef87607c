//! Software MakeCredential against a real TPM's ActivateCredential, through our attester
//! (tss-esapi) and through tpm2-tools: the TPM recovers the secret only into the named AK.

use attestation::attester::tpm::{AkScheme, EkKind, TpmError};
use attestation::tpm::credential::make_credential;
use attestation::tpm::ek::EkPublic;
use attestation::tpm::{AkName, AkPublic};

use super::support::{Swtpm, SwtpmExt};

fn secret(tag: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = tag.wrapping_mul(31).wrapping_add(i as u8);
    }
    s
}

fn attester_activation(ek_kind: EkKind, ak_scheme: AkScheme) {
    let swtpm = Swtpm::start();
    let mut tpm = swtpm.attester();
    let ak = tpm.create_ak(ak_scheme).expect("create AK");
    let other = tpm.create_ak(ak_scheme).expect("create another AK");
    let ek = EkPublic::from_tpm2b_public(&tpm.ek_public(ek_kind).expect("EK public")).expect("EK parses");
    let ak_name = ak.parsed_public().expect("AK").name().clone();

    let blob = make_credential(&ek, &ak_name, &secret(1)).expect("make credential");
    let recovered = tpm
        .activate_credential(&ak, ek_kind, blob.id_object(), blob.encrypted_secret())
        .expect("the TPM activates the credential");
    assert_eq!(&recovered[..], &secret(1));

    // Short secrets too (TPM2B_DIGEST of any size up to the digest).
    let blob = make_credential(&ek, &ak_name, b"challenge").expect("make credential");
    let recovered = tpm
        .activate_credential(&ak, ek_kind, blob.id_object(), blob.encrypted_secret())
        .expect("the TPM activates the credential");
    assert_eq!(&recovered[..], b"challenge");

    // Made for one AK, it cannot be activated into another (the integrity HMAC covers the name).
    let err = tpm
        .activate_credential(&other, ek_kind, blob.id_object(), blob.encrypted_secret())
        .expect_err("activation into another AK must fail");
    assert!(matches!(err, TpmError::Tpm { .. }), "{err}");

    // A tampered blob is rejected by the TPM.
    let mut id_object = blob.id_object().to_vec();
    let last = id_object.len() - 1;
    id_object[last] ^= 1;
    let err = tpm
        .activate_credential(&ak, ek_kind, &id_object, blob.encrypted_secret())
        .expect_err("tampered credential");
    assert!(matches!(err, TpmError::Tpm { .. }), "{err}");

    // Malformed input is an error, not a panic.
    let err = tpm
        .activate_credential(&ak, ek_kind, &[0, 9, 1], blob.encrypted_secret())
        .expect_err("malformed");
    assert!(matches!(err, TpmError::Input(_)), "{err}");

    // Everything was flushed: the TPM still has room for the three objects it holds.
    for _ in 0..4 {
        tpm.activate_credential(&ak, ek_kind, blob.id_object(), blob.encrypted_secret())
            .expect("repeated activation");
    }
}

#[test]
fn rsa_ek_credential_activates_with_tss_esapi() {
    attester_activation(EkKind::Rsa2048, AkScheme::RsaSsa);
}

#[test]
fn ecc_p256_ek_credential_activates_with_tss_esapi() {
    attester_activation(EkKind::EccP256, AkScheme::EcdsaP256);
}

/// tpm2_createek/createak, our credential blob in tpm2_makecredential's file format,
/// tpm2_activatecredential with the EK policy session.
fn tools_activation(ek_algorithm: &str) {
    let swtpm = Swtpm::start();
    swtpm.tpm2("tpm2_createek", &["-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    if ek_algorithm != "rsa" {
        swtpm.tpm2(
            "tpm2_createek",
            &["-c", "ek-act.ctx", "-G", ek_algorithm, "-u", "ek-act.pub"],
        );
    }
    let (ek_ctx, ek_pub) = if ek_algorithm == "rsa" {
        ("ek.ctx", "ek.pub")
    } else {
        ("ek-act.ctx", "ek-act.pub")
    };
    swtpm.tpm2(
        "tpm2_createak",
        &[
            "-C", "ek.ctx", "-c", "ak.ctx", "-G", "rsa", "-g", "sha256", "-s", "rsassa", "-u", "ak.pub", "-n",
            "ak.name", "-r", "ak.priv",
        ],
    );
    let ak_name = AkName::from_bytes(&swtpm.read("ak.name")).expect("ak.name");
    assert_eq!(
        AkPublic::from_tpm2b_public(&swtpm.read("ak.pub"))
            .expect("ak.pub")
            .name(),
        &ak_name
    );
    let ek = EkPublic::from_tpm2b_public(&swtpm.read(ek_pub)).expect("EK public");
    let blob = make_credential(&ek, &ak_name, &secret(2)).expect("make credential");
    let recovered = swtpm.activate_credential_with_tools("ak.ctx", ek_ctx, &blob.to_tpm2_tools());
    assert_eq!(recovered, secret(2));
}

#[test]
fn rsa_ek_credential_activates_with_tpm2_tools() {
    tools_activation("rsa");
}

#[test]
fn ecc_p256_ek_credential_activates_with_tpm2_tools() {
    tools_activation("ecc");
}
