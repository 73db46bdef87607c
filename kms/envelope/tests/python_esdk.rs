//! Interop with the official AWS Encryption SDK for Python (PyPI `aws-encryption-sdk`, pinned
//! in scripts/peer-requirements.txt, installed into a venv by scripts/peer-venv): messages it
//! writes with a raw AES keyring decrypt with ours, and ours decrypt with it, over both
//! committing suites, several frame sizes, empty, one-frame and frame+1 plaintexts, with and
//! without context, and with two wrapping keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use kms_envelope::{EncryptionContext, Envelope, RawAesKeyring, Suite};

const KEY: [u8; 32] = [0x42; 32];
const NAMESPACE: &str = "kms-interop";
const NAME: &str = "raw-key-1";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's python (built on first use; needs PyPI).
fn python() -> PathBuf {
    let out = Command::new("bash")
        .arg(root().join("scripts/peer-venv"))
        .output()
        .expect("run scripts/peer-venv");
    assert!(
        out.status.success(),
        "scripts/peer-venv failed (the Python ESDK peer is required):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn peer(python: &Path, args: &[String]) -> Result<(), String> {
    let out = Command::new(python)
        .arg(root().join("kms/envelope/tests/peer/esdk_peer.py"))
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn key_args(cmd: &str) -> Vec<String> {
    [
        cmd,
        "--key-hex",
        &hex::encode(KEY),
        "--namespace",
        NAMESPACE,
        "--key-name",
        NAME,
    ]
    .map(String::from)
    .to_vec()
}

fn context_args(c: &EncryptionContext) -> Vec<String> {
    c.pairs()
        .iter()
        .flat_map(|(k, v)| ["--context".to_owned(), format!("{k}={v}")])
        .collect()
}

fn ours() -> Envelope {
    Envelope::new(RawAesKeyring::new(NAMESPACE, NAME, &KEY).unwrap())
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn messages_cross_between_the_python_esdk_and_us() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let contexts = [
        EncryptionContext::new(),
        EncryptionContext::new()
            .with("tenant", "acme")
            .with("région", "eu-west-3"),
    ];
    let mut checked = 0;
    for suite in [
        Suite::Aes256GcmHkdfSha512CommitKey,
        Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        // The Python ESDK writes only multiples of 128 as frame lengths; it reads any.
        for frame in [128usize, 65536] {
            for len in [0, 1, frame, frame + 1] {
                let context = &contexts[checked % 2];
                let plain = plaintext(len);
                let case = format!("{suite} frame {frame} len {len} context {:?}", context.pairs());
                let input = dir.path().join("plain");
                std::fs::write(&input, &plain).unwrap();

                // Theirs -> ours.
                let theirs = dir.path().join("theirs.esdk");
                let mut args = key_args("encrypt");
                args.extend(
                    [
                        "--suite",
                        &format!("0x{:04x}", suite.id()),
                        "--frame-length",
                        &frame.to_string(),
                    ]
                    .map(String::from),
                );
                args.extend(context_args(context));
                args.extend([
                    "--in".into(),
                    input.display().to_string(),
                    "--out".into(),
                    theirs.display().to_string(),
                ]);
                peer(&python, &args).unwrap_or_else(|e| panic!("{case}: python encrypt: {e}"));
                let message = std::fs::read(&theirs).unwrap();
                let d = ours()
                    .decrypt(&message, context)
                    .await
                    .unwrap_or_else(|e| panic!("{case}: we cannot read the Python ESDK's message: {e}"));
                assert_eq!(d.plaintext.expose_secret(), plain, "{case}");
                assert_eq!(d.header.suite(), suite);

                // Ours -> theirs (also with a frame length they would not write).
                for our_frame in [frame as u32, 17] {
                    let env = ours().with_suite(suite).unwrap().with_frame_length(our_frame).unwrap();
                    let message = env.encrypt(&plain, context).await.unwrap();
                    let mine = dir.path().join("ours.esdk");
                    std::fs::write(&mine, &message).unwrap();
                    let out = dir.path().join("decrypted");
                    let mut args = key_args("decrypt");
                    args.extend(context_args(context));
                    args.extend([
                        "--in".into(),
                        mine.display().to_string(),
                        "--out".into(),
                        out.display().to_string(),
                    ]);
                    peer(&python, &args).unwrap_or_else(|e| {
                        panic!("{case} (our frame {our_frame}): the Python ESDK cannot read ours: {e}")
                    });
                    assert_eq!(std::fs::read(&out).unwrap(), plain, "{case}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
}

#[tokio::test]
async fn the_python_esdk_reads_one_of_several_wrapped_keys_and_refuses_tampering() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let env = Envelope::new(RawAesKeyring::new("other-region", "k", &[9; 32]).unwrap())
        .with_keyring(RawAesKeyring::new(NAMESPACE, NAME, &KEY).unwrap());
    let context = EncryptionContext::new().with("purpose", "two wrapped keys");
    let mut message = env.encrypt(b"one of two keys is enough", &context).await.unwrap();
    let path = dir.path().join("m.esdk");
    let out = dir.path().join("out");
    std::fs::write(&path, &message).unwrap();
    let mut args = key_args("decrypt");
    args.extend([
        "--in".into(),
        path.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    peer(&python, &args).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"one of two keys is enough");
    // A flipped byte in the body: it refuses too, and writes nothing.
    std::fs::remove_file(&out).unwrap();
    let i = message.len() - 120;
    message[i] ^= 1;
    std::fs::write(&path, &message).unwrap();
    assert!(peer(&python, &args).is_err());
    assert!(!out.exists());
}
