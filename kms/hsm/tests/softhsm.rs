//! kms-hsm against a real SoftHSM2. SoftHSM2 only sees the tokens that exist when the module is
//! initialised, so every test first calls `tokens()`, which makes all of this binary's tokens
//! before any test opens one.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use kms_core::admin::{signed_message, AdminSigner};
use kms_core::ids::{KeyId, KeyVersion};
use kms_core::root::{kek_wrap_aad, WRAPPED_KEK_LEN};
use kms_core::share_wrap::{parse_share_plaintext, seal, share_plaintext, ShareEnvelope, ShareKey, UnsealKey};
use kms_hsm::{Hsm, HsmError, Pin, PinSource, TokenSelector};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use softhsm_fixture::{init_token, module_path, unique_label, TestToken};
use zeroize::Zeroizing;

struct Tokens {
    main: TestToken,
    second: TestToken,
    wrong_pin: TestToken,
    /// Only `keys_are_not_extractable` uses it: it also reads it with cryptoki directly.
    inspect: TestToken,
    pin_dir: tempfile::TempDir,
}

/// SoftHSM2 guards its file-backed token store with fcntl locks, which do not exclude threads of
/// one process: two tests creating objects on one token at once make `C_GenerateKeyPair` fail
/// with CKR_GENERAL_ERROR now and then. The tests run one at a time (they take well under a second).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens {
        main: init_token(&unique_label("kms-main")),
        second: init_token(&unique_label("kms-second")),
        wrong_pin: init_token(&unique_label("kms-wrongpin")),
        inspect: init_token(&unique_label("kms-inspect")),
        pin_dir: tempfile::tempdir().unwrap(),
    })
}

fn pin(token: &TestToken) -> Pin {
    Pin::new(Zeroizing::new(token.user_pin.as_bytes().to_vec())).unwrap()
}

fn open(token: &TestToken) -> Hsm {
    Hsm::open(&module_path(), &TokenSelector::Label(token.label.clone()), &pin(token)).unwrap()
}

fn verify(public: &[u8], message: &[u8], der: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, public)
        .verify(message, der)
        .is_ok()
}

#[test]
fn signing_key_signs_and_verifies_with_ring() {
    let _one_at_a_time = serial();
    let t = tokens();
    let hsm = open(&t.main);
    assert_eq!(hsm.token_label(), t.main.label);
    let label = unique_label("admin");
    let signer = hsm.generate_signing_key(&label).unwrap();
    let public = signer.public_key();
    assert_eq!(public.as_bytes().len(), 65);

    // Admin requests: what the server checks.
    let sig = signer.sign(b"request bytes").unwrap();
    public.verify(b"request bytes", &sig).unwrap();
    assert!(verify(public.as_bytes(), &signed_message(b"request bytes"), &sig));
    assert!(public.verify(b"other bytes", &sig).is_err());

    // Raw signatures for other contexts.
    let raw = signer.sign_raw(b"checkpoint").unwrap();
    assert!(verify(public.as_bytes(), b"checkpoint", &raw));
    assert!(!verify(public.as_bytes(), b"checkpoinT", &raw));

    // Found again by label; the same label cannot be generated twice.
    let again = hsm.signing_key(&label).unwrap();
    assert_eq!(again.public_key(), public);
    assert!(verify(public.as_bytes(), b"x", &again.sign_raw(b"x").unwrap()));
    let e = hsm.generate_signing_key(&label).unwrap_err();
    assert!(matches!(e, HsmError::KeyExists { .. }), "{e}");
    let e = hsm.signing_key("no-such-key").unwrap_err();
    assert!(
        e.to_string()
            .contains("no ECDSA P-256 signing key labelled 'no-such-key'"),
        "{e}"
    );
    // A share key is not a signing key.
    let share_label = unique_label("not-signing");
    hsm.generate_share_key(&share_label).unwrap();
    assert!(matches!(
        hsm.signing_key(&share_label),
        Err(HsmError::KeyNotFound { .. })
    ));
}

#[test]
fn pin_sources_open_the_token() {
    let _one_at_a_time = serial();
    let t = tokens();
    let file = t.main.pin_file(t.pin_dir.path());
    let p = PinSource::File(file).read().unwrap();
    let hsm = Hsm::open(&module_path(), &format!("label:{}", t.main.label).parse().unwrap(), &p).unwrap();
    let by_slot = Hsm::open(&module_path(), &TokenSelector::Slot(hsm.slot_id()), &p).unwrap();
    assert_eq!(by_slot.token_label(), t.main.label);
}

#[test]
fn wrong_pin_is_refused_and_never_printed() {
    let _one_at_a_time = serial();
    let t = tokens();
    let selector = TokenSelector::Label(t.wrong_pin.label.clone());
    let wrong = Pin::new(Zeroizing::new(b"0000000000000000".to_vec())).unwrap();
    let e = Hsm::open(&module_path(), &selector, &wrong).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HsmError::PinIncorrect { .. }), "{msg}");
    assert!(
        msg.contains("CKR_PIN_INCORRECT") && msg.contains(&t.wrong_pin.label),
        "{msg}"
    );
    assert!(!msg.contains("0000000000000000") && !format!("{e:?}").contains("0000000000000000"));

    // Once the process is logged in, the token would take any PIN: the layer still refuses it.
    let good = Hsm::open(&module_path(), &selector, &pin(&t.wrong_pin)).unwrap();
    let e = Hsm::open(&module_path(), &selector, &wrong).unwrap_err();
    assert!(matches!(e, HsmError::PinIncorrect { .. }), "{e}");
    let also_good = Hsm::open(&module_path(), &selector, &pin(&t.wrong_pin)).unwrap();
    drop((good, also_good));
}

#[test]
fn unknown_token_lists_the_tokens_present() {
    let _one_at_a_time = serial();
    let t = tokens();
    let e = Hsm::open(
        &module_path(),
        &TokenSelector::Label("no-such-token".into()),
        &pin(&t.main),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HsmError::TokenNotFound { .. }), "{msg}");
    assert!(msg.contains("token label 'no-such-token' not found"), "{msg}");
    assert!(msg.contains(&t.main.label) && msg.contains(&t.second.label), "{msg}");
    assert!(msg.contains("libsofthsm2.so"), "{msg}");
    let e = Hsm::open(&module_path(), &TokenSelector::Serial("nope".into()), &pin(&t.main)).unwrap_err();
    assert!(e.to_string().contains("token serial 'nope'"), "{e}");
    let e = Hsm::open(
        std::path::Path::new("/nonexistent/pkcs11.so"),
        &TokenSelector::Slot(0),
        &pin(&t.main),
    )
    .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/pkcs11.so"), "{e}");
}

/// Reads attributes with cryptoki directly (not through the crate under test): CKA_VALUE of the
/// key must be refused as sensitive.
fn value_is_sensitive(module: &PathBuf, token: &TestToken, label: &str) -> bool {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectClass};
    let ctx = Pkcs11::new(module).unwrap();
    // Already initialised by kms-hsm in this process; that is fine.
    let _ = ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label() == token.label)
        .unwrap();
    // The process is logged in (an Hsm is open), so private objects are visible.
    let session = ctx.open_ro_session(slot).unwrap();
    let keys: Vec<_> = [ObjectClass::PRIVATE_KEY, ObjectClass::SECRET_KEY]
        .into_iter()
        .flat_map(|c| {
            session
                .find_objects(&[Attribute::Label(label.as_bytes().to_vec()), Attribute::Class(c)])
                .unwrap()
        })
        .collect();
    assert_eq!(keys.len(), 1, "one key labelled {label}");
    let info = session.get_attribute_info(keys[0], &[AttributeType::Value]).unwrap();
    let attrs = session.get_attributes(keys[0], &[AttributeType::Value]).unwrap();
    matches!(info[0], AttributeInfo::Sensitive) && attrs.is_empty()
}

#[test]
fn keys_are_not_extractable() {
    let _one_at_a_time = serial();
    let t = tokens();
    let hsm = open(&t.inspect);
    let (sign, share, root) = (
        unique_label("ne-sign"),
        unique_label("ne-share"),
        unique_label("ne-root"),
    );
    hsm.generate_signing_key(&sign).unwrap();
    hsm.generate_share_key(&share).unwrap();
    hsm.generate_root_key(&root).unwrap();
    for label in [&sign, &share, &root] {
        let private: Vec<_> = hsm
            .key_info(label)
            .unwrap()
            .into_iter()
            .filter(|k| k.class != "CKO_PUBLIC_KEY")
            .collect();
        assert_eq!(private.len(), 1, "{label}: {private:?}");
        let k = &private[0];
        assert_eq!(k.sensitive, Some(true), "{label}");
        assert_eq!(k.extractable, Some(false), "{label}");
        assert_eq!(k.never_extractable, Some(true), "{label}");
        assert!(!k.value_readable, "{label}");
        assert!(value_is_sensitive(&module_path(), &t.inspect, label), "{label}");
    }
}

#[test]
fn share_rewrap_round_trip() {
    let _one_at_a_time = serial();
    let t = tokens();
    let hsm = open(&t.main);
    let label = unique_label("custodian");
    let share_key = hsm.generate_share_key(&label).unwrap();
    assert_eq!(share_key.public_key().len(), 65);
    assert_eq!(hsm.share_key(&label).unwrap().public_key(), share_key.public_key());

    // The server seals a custodian's share to the custodian's token key.
    let plaintext = share_plaintext("admin-7", &[0x5a; 33]);
    let to_custodian = seal(&share_key.public_key(), plaintext.expose_secret()).unwrap();
    // The custodian's token re-seals it to the server's unseal key.
    let server = UnsealKey::generate().unwrap();
    let to_server = share_key.rewrap(&to_custodian, &server.public_key()).unwrap();
    assert_ne!(to_server.ephemeral_public_key, to_custodian.ephemeral_public_key);
    let to_server = ShareEnvelope::decode(&to_server.encode()).unwrap();
    let opened = server.open(&to_server).unwrap();
    assert_eq!(opened.expose_secret(), plaintext.expose_secret());
    assert_eq!(
        parse_share_plaintext("admin-7", &opened).unwrap().expose_secret(),
        &[0x5a; 33]
    );
    assert!(parse_share_plaintext("admin-8", &opened).is_err());
    // Another key cannot open the re-sealed envelope.
    assert!(UnsealKey::generate().unwrap().open(&to_server).is_err());

    // Shares of any length round trip exactly (share_plaintext pads to whole 8-byte blocks, which
    // SoftHSM2's CKM_AES_KEY_WRAP_PAD unwrap needs), also through two re-wraps.
    let second = hsm.generate_share_key(&unique_label("custodian-2")).unwrap();
    for len in [0usize, 1, 7, 8, 9, 33, 64, 100] {
        let share = vec![0xa5u8; len];
        let env = seal(&share_key.public_key(), share_plaintext("a", &share).expose_secret()).unwrap();
        let hop = share_key.rewrap(&env, &second.public_key()).unwrap();
        let back = server
            .open(&second.rewrap(&hop, &server.public_key()).unwrap())
            .unwrap();
        assert_eq!(
            parse_share_plaintext("a", &back).unwrap().expose_secret(),
            &share[..],
            "length {len}"
        );
    }
}

#[test]
fn rewrap_of_a_foreign_or_tampered_envelope_fails_cleanly() {
    let _one_at_a_time = serial();
    let t = tokens();
    let hsm = open(&t.main);
    let label = unique_label("custodian-x");
    let share_key = hsm.generate_share_key(&label).unwrap();
    let server = UnsealKey::generate().unwrap();

    let someone_else = ShareKey::generate().unwrap();
    let foreign = seal(&someone_else.public_key(), b"not for this token, 24 b").unwrap();
    let e = share_key.rewrap(&foreign, &server.public_key()).unwrap_err();
    assert!(matches!(e, HsmError::ShareOpen { .. }), "{e}");
    assert!(e.to_string().contains(&label), "{e}");

    let mut tampered = seal(&share_key.public_key(), b"for this token!!").unwrap();
    tampered.wrapped[5] ^= 0x10;
    assert!(matches!(
        share_key.rewrap(&tampered, &server.public_key()),
        Err(HsmError::ShareOpen { .. })
    ));
    let good = seal(&share_key.public_key(), b"for this token!!").unwrap();
    assert!(
        share_key.rewrap(&good, &[4u8; 65]).is_err(),
        "a server key that is not a point"
    );
    let mut bad_epk = good.clone();
    bad_epk.ephemeral_public_key[10] ^= 1;
    assert!(share_key.rewrap(&bad_epk, &server.public_key()).is_err());

    // Failed rewraps leave no session objects behind and the key keeps working.
    let back = server
        .open(&share_key.rewrap(&good, &server.public_key()).unwrap())
        .unwrap();
    assert_eq!(back.expose_secret(), b"for this token!!");
}

#[test]
fn root_key_encrypts_in_the_software_root_format() {
    let _one_at_a_time = serial();
    let t = tokens();
    let hsm = open(&t.main);
    let label = unique_label("root");
    let root = hsm.generate_root_key(&label).unwrap();
    let id = KeyId::generate().unwrap();
    let aad = kek_wrap_aad(id, KeyVersion::FIRST);
    let kek = [0x42u8; 32];
    let wrapped = root.encrypt(&aad, &kek).unwrap();
    // IV (12) ‖ ciphertext (32) ‖ tag (16), exactly as SoftwareRoot::wrap lays it out.
    assert_eq!(wrapped.len(), WRAPPED_KEK_LEN);
    assert_ne!(&wrapped[12..44], &kek[..]);
    assert_eq!(root.decrypt(&aad, &wrapped).unwrap().expose_secret(), &kek[..]);
    // Fresh IVs.
    let again = root.encrypt(&aad, &kek).unwrap();
    assert_ne!(again[..12], wrapped[..12]);
    assert_ne!(again, wrapped);

    // AAD binds key id and version.
    let other_version = kek_wrap_aad(id, KeyVersion::new(2).unwrap());
    let e = root.decrypt(&other_version, &wrapped).err().unwrap();
    assert!(matches!(e, HsmError::DecryptFailed { .. }), "{e}");
    let other_id = kek_wrap_aad(KeyId::generate().unwrap(), KeyVersion::FIRST);
    assert!(root.decrypt(&other_id, &wrapped).is_err());
    // Tampering anywhere fails.
    for i in [0, 11, 12, 43, 44, 59] {
        let mut bad = wrapped.clone();
        bad[i] ^= 1;
        assert!(
            matches!(root.decrypt(&aad, &bad), Err(HsmError::DecryptFailed { .. })),
            "byte {i}"
        );
    }
    assert!(root.decrypt(&aad, &wrapped[..27]).is_err());
    // Another root key cannot decrypt.
    let other = hsm.generate_root_key(&unique_label("root-other")).unwrap();
    assert!(other.decrypt(&aad, &wrapped).is_err());
    // Found again by label.
    assert_eq!(
        hsm.root_key(&label)
            .unwrap()
            .decrypt(&aad, &wrapped)
            .unwrap()
            .expose_secret(),
        &kek[..]
    );
    // Empty plaintexts and long ones work too.
    assert_eq!(root.decrypt(b"", &root.encrypt(b"", b"").unwrap()).unwrap().len(), 0);
    let long = vec![7u8; 5000];
    assert_eq!(
        root.decrypt(b"a", &root.encrypt(b"a", &long).unwrap())
            .unwrap()
            .expose_secret(),
        &long[..]
    );
}

#[test]
fn keys_survive_reopening_the_token() {
    let _one_at_a_time = serial();
    let t = tokens();
    let (sign, share, root) = (
        unique_label("keep-sign"),
        unique_label("keep-share"),
        unique_label("keep-root"),
    );
    let (public, share_public, wrapped) = {
        let hsm = open(&t.main);
        let signer = hsm.generate_signing_key(&sign).unwrap();
        let share_key = hsm.generate_share_key(&share).unwrap();
        let root_key = hsm.generate_root_key(&root).unwrap();
        (
            signer.public_key(),
            share_key.public_key(),
            root_key.encrypt(b"aad", b"kept").unwrap(),
        )
    };
    let hsm = open(&t.main);
    let signer = hsm.signing_key(&sign).unwrap();
    assert_eq!(signer.public_key(), public);
    public.verify(b"p", &signer.sign(b"p").unwrap()).unwrap();
    assert_eq!(hsm.share_key(&share).unwrap().public_key(), share_public);
    assert_eq!(
        hsm.root_key(&root)
            .unwrap()
            .decrypt(b"aad", &wrapped)
            .unwrap()
            .expose_secret(),
        b"kept"
    );
    // Clean-up by label.
    assert_eq!(hsm.delete_object(&sign).unwrap(), 2);
    assert!(hsm.signing_key(&sign).is_err());
}

#[test]
fn two_tokens_in_one_process() {
    let _one_at_a_time = serial();
    let t = tokens();
    let a = open(&t.main);
    let b = open(&t.second);
    assert_ne!(a.slot_id(), b.slot_id());
    let label = unique_label("both");
    let sa = a.generate_signing_key(&label).unwrap();
    // The same label on another token is another key.
    let sb = b.generate_signing_key(&label).unwrap();
    assert_ne!(sa.public_key(), sb.public_key());
    let only_b = unique_label("only-b");
    b.generate_root_key(&only_b).unwrap();
    assert!(matches!(a.root_key(&only_b), Err(HsmError::KeyNotFound { .. })));
    let sig = sb.sign(b"m").unwrap();
    sb.public_key().verify(b"m", &sig).unwrap();
    assert!(sa.public_key().verify(b"m", &sig).is_err());
}

#[test]
fn concurrent_signing_from_several_threads() {
    let _one_at_a_time = serial();
    let t = tokens();
    let hsm = Arc::new(open(&t.main));
    let signer = Arc::new(hsm.generate_signing_key(&unique_label("threads")).unwrap());
    let root = Arc::new(hsm.generate_root_key(&unique_label("threads-root")).unwrap());
    let workers: Vec<_> = (0..8)
        .map(|i| {
            let (signer, root) = (Arc::clone(&signer), Arc::clone(&root));
            std::thread::spawn(move || {
                for j in 0..25 {
                    let msg = format!("message {i}-{j}");
                    let sig = signer.sign_raw(msg.as_bytes()).unwrap();
                    assert!(verify(signer.public_key_bytes(), msg.as_bytes(), &sig));
                    let w = root.encrypt(b"t", msg.as_bytes()).unwrap();
                    assert_eq!(root.decrypt(b"t", &w).unwrap().expose_secret(), msg.as_bytes());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn data_objects_hold_a_value_across_sessions() {
    let _one_at_a_time = serial();
    let t = tokens();
    let label = unique_label("anchor");
    let hsm = open(&t.main);
    assert!(hsm.read_data(&label).unwrap().is_empty());
    hsm.write_data(&label, b"first").unwrap();
    assert_eq!(hsm.read_data(&label).unwrap(), vec![b"first".to_vec()]);
    hsm.write_data(&label, b"second, longer").unwrap();
    drop(hsm);
    let again = open(&t.main);
    assert_eq!(again.read_data(&label).unwrap(), vec![b"second, longer".to_vec()]);
    // One object under the label, not two.
    assert_eq!(again.delete_object(&label).unwrap(), 1);
}
