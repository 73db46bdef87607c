//! The official ESDK test vectors (test_data/esdk, copied unchanged from shared/fixtures/esdk): every raw
//! AES-keyring case of the decrypt manifests, and the Python ESDK's commitment vectors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;

use base64::Engine as _;
use kms_envelope::{
    danger_open_with_data_key, CommitmentPolicy, EncryptionContext, Envelope, Error, RawAesKeyring, Suite,
};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test_data/esdk")
}

/// The files of one vector archive, by path.
fn archive(name: &str) -> BTreeMap<String, Vec<u8>> {
    let path = fixtures().join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).unwrap();
        if f.is_dir() {
            continue;
        }
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        out.insert(f.name().to_owned(), bytes);
    }
    out
}

fn file<'a>(files: &'a BTreeMap<String, Vec<u8>>, uri: &str) -> &'a [u8] {
    let name = uri.strip_prefix("file://").unwrap_or(uri);
    files
        .get(name)
        .unwrap_or_else(|| panic!("{name} is not in the archive"))
}

#[derive(Default, Debug)]
struct Count {
    decrypted: usize,
    refused: usize,
    skipped: usize,
}

/// Runs the raw AES cases of a manifest; `expect_refusal` for the archive whose messages a
/// correct reader must refuse.
async fn run_manifest(name: &str, expect_refusal: bool) -> Count {
    let files = archive(name);
    let manifest: serde_json::Value = serde_json::from_slice(file(&files, "manifest.json")).unwrap();
    assert_eq!(manifest["manifest"]["type"], "awses-decrypt");
    let keys: serde_json::Value = serde_json::from_slice(file(&files, "keys.json")).unwrap();
    let mut count = Count::default();
    for (case, t) in manifest["tests"].as_object().unwrap() {
        let master_keys = t["master-keys"].as_array().unwrap();
        if !master_keys
            .iter()
            .all(|k| k["type"] == "raw" && k["encryption-algorithm"] == "aes")
        {
            count.skipped += 1; // aws-kms (no AWS here) and raw RSA (no RSA keyring)
            continue;
        }
        let mk = &master_keys[0];
        let key = &keys["keys"][mk["key"].as_str().unwrap()];
        let material = B64.decode(key["material"].as_str().unwrap()).unwrap();
        let keyring = RawAesKeyring::new(
            mk["provider-id"].as_str().unwrap(),
            key["key-id"].as_str().unwrap(),
            &material,
        )
        .unwrap();
        let context: EncryptionContext = t["encryption-context"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let message = file(&files, t["ciphertext"].as_str().unwrap());
        let suite = Suite::from_id(u16::from_str_radix(&case[..4], 16).unwrap()).unwrap();
        let legacy = Envelope::new(keyring).with_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
        let result = legacy.decrypt(message, &context).await;
        if expect_refusal {
            assert!(result.is_err(), "{name} {case}: a correct reader refuses this message");
            count.refused += 1;
            continue;
        }
        let want = file(&files, t["result"]["output"]["plaintext"].as_str().unwrap());
        let got = result.unwrap_or_else(|e| panic!("{name} {case}: {e}"));
        assert_eq!(got.plaintext.expose_secret(), want, "{name} {case}");
        // The default policy reads the committing suites only.
        let strict = Envelope::new(
            RawAesKeyring::new(
                mk["provider-id"].as_str().unwrap(),
                key["key-id"].as_str().unwrap(),
                &material,
            )
            .unwrap(),
        );
        match strict.decrypt(message, &context).await {
            Ok(d) => {
                assert!(suite.is_committing(), "{case}");
                assert_eq!(d.plaintext.expose_secret(), want);
            }
            Err(Error::NonCommittingSuite(s)) => assert!(!s.is_committing() && s == suite, "{case}"),
            Err(e) => panic!("{case}: {e}"),
        }
        // Streaming gives the same plaintext (signed multi-frame messages need the opt-in).
        let streaming = legacy.clone().danger_stream_unverified_signed_frames();
        let mut reader = streaming.decrypting_reader(message, &context).await.unwrap();
        let mut streamed = Vec::new();
        reader.read_to_end(&mut streamed).unwrap();
        assert_eq!(streamed, want, "{case} (streamed)");
        count.decrypted += 1;
    }
    count
}

#[tokio::test]
async fn decrypt_manifest_v4_raw_aes_cases() {
    let c = run_manifest("v4-Net-4.0.1.zip", false).await;
    // 33 raw AES cases over all 11 suites (6 committing); the rest need AWS KMS or RSA.
    assert_eq!((c.decrypted, c.skipped), (33, 99), "{c:?}");
}

#[tokio::test]
async fn decrypt_manifest_valid_net_4_0_0() {
    let c = run_manifest("valid-Net-4.0.0.zip", false).await;
    assert_eq!(c.decrypted, 5, "{c:?}");
}

#[tokio::test]
async fn the_net_4_0_0_header_bug_messages_are_refused() {
    let c = run_manifest("invalid-Net-4.0.0.zip", true).await;
    assert_eq!(c.refused, 28, "{c:?}");
}

/// The Python ESDK's commitment vectors come with the plaintext data key: each message opens
/// with it exactly when its status says so (one of the failing ones carries two data keys, one
/// of which the commitment refuses).
#[test]
fn commitment_vectors_decrypt_or_fail_as_specified() {
    let path = fixtures().join("commitment-test-vectors.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let (mut ok, mut failed) = (0, 0);
    for t in v["tests"].as_array().unwrap() {
        let message = B64.decode(t["ciphertext"].as_str().unwrap().trim()).unwrap();
        let key = B64.decode(t["decrypted-dek"].as_str().unwrap()).unwrap();
        let context: EncryptionContext = t["encryption-context"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let result = danger_open_with_data_key(&message, key, CommitmentPolicy::default(), &context);
        if t["status"] == true {
            let d = result.unwrap_or_else(|e| panic!("{}: {e}", t["comment"]));
            let want: Vec<u8> = t["plaintext-frames"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|f| f.as_str().unwrap().as_bytes().to_vec())
                .collect();
            assert_eq!(d.plaintext.expose_secret(), want, "{}", t["comment"]);
            ok += 1;
        } else {
            assert!(result.is_err(), "{} must fail", t["comment"]);
            failed += 1;
        }
    }
    assert_eq!((ok, failed), (41, 5));
}
