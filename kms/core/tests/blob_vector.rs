//! The blob test vector of docs/blob-format.md (test_data/blob-v1.json, computed independently
//! with pyca/cryptography): our encoder must produce it byte for byte, and our decoder open it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use kms_core::blob::{self, Blob, Kek};
use kms_core::context::EncryptionContext;
use kms_core::ids::{KeyId, KeyVersion};

#[test]
fn blob_v1_vector_matches_byte_for_byte() {
    let v: serde_json::Value = serde_json::from_str(include_str!("../test_data/blob-v1.json")).unwrap();
    let hex = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
    let mut kek_bytes = hex("kek");
    let kek = Kek::from_slice(&mut kek_bytes).unwrap();
    let key_id = KeyId::parse(v["key_id"].as_str().unwrap()).unwrap();
    let version = KeyVersion::new(u32::try_from(v["key_version"].as_u64().unwrap()).unwrap()).unwrap();
    let salt: [u8; 32] = hex("salt").try_into().unwrap();
    let context = EncryptionContext::new(
        v["encryption_context"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect::<BTreeMap<_, _>>(),
    )
    .unwrap();
    assert_eq!(context.canonical_bytes(), hex("canonical_context"));
    let expected = hex("blob");
    let got = blob::seal_with_salt(&kek, key_id, version, &context, &hex("plaintext"), &salt).unwrap();
    assert_eq!(hex::encode(&got), hex::encode(&expected));
    let parsed = Blob::parse(&expected).unwrap();
    assert_eq!((parsed.key_id(), parsed.version()), (key_id, version));
    assert_eq!(
        parsed.open(&kek, &context).unwrap().expose_secret(),
        hex("plaintext").as_slice()
    );
}
