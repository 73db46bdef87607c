//! The library against bad input and misuse: every flipped bit and every truncation, trailing
//! data, reordered and spliced frames, wrong context or key, a header whose wrapped keys open
//! to different data keys, the reader's limits, signed streaming, the cache and several
//! keyrings, slow sources, keyrings asked about wrapped keys not theirs. None may yield
//! plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kms_envelope::{
    BoxFuture, CacheLimits, CommitmentPolicy, DataKey, DataKeyCache, EncryptedDataKey, EncryptionContext, Envelope,
    Error, Keyring, KeyringRequest, Limits, RawAesKeyring, Suite,
};

const COMMITTING: [Suite; 2] = [
    Suite::Aes256GcmHkdfSha512CommitKey,
    Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
];

fn raw(name: &str, key: u8) -> RawAesKeyring {
    RawAesKeyring::new("tests", name, &[key; 32]).unwrap()
}

fn ctx() -> EncryptionContext {
    EncryptionContext::new().with("tenant", "acme").with("purpose", "tests")
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + 3) as u8).collect()
}

fn envelope(suite: Suite, frame: u32) -> Envelope {
    Envelope::new(raw("a", 1))
        .with_suite(suite)
        .unwrap()
        .with_frame_length(frame)
        .unwrap()
}

/// Counts the calls a keyring gets.
struct Counting {
    inner: RawAesKeyring,
    generated: Arc<AtomicUsize>,
    unwrapped: Arc<AtomicUsize>,
}

impl Counting {
    fn new(name: &str, key: u8) -> (Self, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (g, u) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        (
            Self {
                inner: raw(name, key),
                generated: g.clone(),
                unwrapped: u.clone(),
            },
            g,
            u,
        )
    }
}

impl Keyring for Counting {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn generate<'a>(&'a self, r: KeyringRequest<'a>) -> BoxFuture<'a, Result<(DataKey, EncryptedDataKey), Error>> {
        self.generated.fetch_add(1, Ordering::SeqCst);
        self.inner.generate(r)
    }
    fn wrap<'a>(&'a self, k: &'a DataKey, r: KeyringRequest<'a>) -> BoxFuture<'a, Result<EncryptedDataKey, Error>> {
        self.inner.wrap(k, r)
    }
    fn recognizes(&self, edk: &EncryptedDataKey) -> bool {
        self.inner.recognizes(edk)
    }
    fn unwrap<'a>(&'a self, e: &'a EncryptedDataKey, r: KeyringRequest<'a>) -> BoxFuture<'a, Result<DataKey, Error>> {
        self.unwrapped.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(e, r)
    }
}

/// A dishonest writer's second keyring: wraps another data key than the message's.
struct Liar(RawAesKeyring);

impl Keyring for Liar {
    fn name(&self) -> String {
        self.0.name()
    }
    fn wrap<'a>(&'a self, _: &'a DataKey, r: KeyringRequest<'a>) -> BoxFuture<'a, Result<EncryptedDataKey, Error>> {
        Box::pin(async move {
            let other = DataKey::new(vec![0x55; 32]);
            self.0.wrap(&other, r).await
        })
    }
    fn recognizes(&self, edk: &EncryptedDataKey) -> bool {
        self.0.recognizes(edk)
    }
    fn unwrap<'a>(&'a self, e: &'a EncryptedDataKey, r: KeyringRequest<'a>) -> BoxFuture<'a, Result<DataKey, Error>> {
        self.0.unwrap(e, r)
    }
}

/// A keyring whose kmsd cannot be reached.
struct Down;

impl Keyring for Down {
    fn name(&self) -> String {
        "kmsd down".into()
    }
    fn wrap<'a>(&'a self, _: &'a DataKey, _: KeyringRequest<'a>) -> BoxFuture<'a, Result<EncryptedDataKey, Error>> {
        Box::pin(async { Err(kms_envelope::keyring_error(&Down, "unreachable")) })
    }
    fn recognizes(&self, _: &EncryptedDataKey) -> bool {
        true
    }
    fn unwrap<'a>(&'a self, _: &'a EncryptedDataKey, _: KeyringRequest<'a>) -> BoxFuture<'a, Result<DataKey, Error>> {
        Box::pin(async { Err(kms_envelope::keyring_error(&Down, "unreachable")) })
    }
}

async fn stream_decrypt(env: &Envelope, message: &[u8], expected: &EncryptionContext) -> Result<Vec<u8>, String> {
    let mut r = env
        .decrypting_reader(message, expected)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

#[tokio::test]
async fn round_trips_in_one_piece_streamed_and_async() {
    for suite in COMMITTING {
        for frame in [1u32, 17, 4096] {
            let env = envelope(suite, frame);
            let f = frame as usize;
            for len in [0, 1, f.saturating_sub(1), f, f + 1, 3 * f + 5] {
                let plain = data(len);
                let m = env.encrypt(&plain, &ctx()).await.unwrap();
                let d = env.decrypt(&m, &ctx()).await.unwrap();
                assert_eq!(d.plaintext.expose_secret(), plain, "{suite} frame {frame} len {len}");
                assert_eq!(d.header.suite(), suite);
                assert_eq!(d.header.context().get("tenant"), Some("acme"));
                assert_eq!(d.header.frame_length(), frame);

                // Written through the Write adapter in uneven pieces.
                let mut w = env.encrypting_writer(Vec::new(), &ctx(), None).await.unwrap();
                for chunk in plain.chunks(7) {
                    w.write_all(chunk).unwrap();
                }
                let streamed = w.finish().unwrap();
                let d = env.decrypt(&streamed, &ctx()).await.unwrap();
                assert_eq!(d.plaintext.expose_secret(), plain);

                let reader = env.clone().danger_stream_unverified_signed_frames();
                assert_eq!(stream_decrypt(&reader, &m, &ctx()).await.unwrap(), plain);
            }
        }
    }
}

/// The tokio adapters (feature `tokio`).
#[cfg(feature = "tokio")]
#[tokio::test]
async fn round_trips_through_the_tokio_adapters() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 1000);
    let plain = data(10_000);
    let mut w = env
        .async_encrypting_writer(Vec::new(), &ctx(), Some(10_000))
        .await
        .unwrap();
    w.write_all(&plain).await.unwrap();
    w.shutdown().await.unwrap();
    let m = w.into_inner();
    let mut r = env.async_decrypting_reader(&m[..], &ctx()).await.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, plain);
}

#[tokio::test]
async fn every_flipped_bit_is_refused() {
    for suite in COMMITTING {
        let env = envelope(suite, 16);
        let m = env.encrypt(&data(40), &ctx()).await.unwrap();
        let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
        for i in 0..m.len() {
            for bit in 0..8 {
                let mut bad = m.clone();
                bad[i] ^= 1 << bit;
                match env.decrypt(&bad, &ctx()).await {
                    Ok(_) => panic!("{suite}: byte {i} bit {bit} flipped still decrypts"),
                    Err(e) => *reasons.entry(e.reason()).or_default() += 1,
                }
            }
        }
        // Each part of the message is caught by its own check.
        for r in ["header_authentication", "frame_authentication", "no_data_key"] {
            assert!(reasons.contains_key(r), "{suite}: {reasons:?}");
        }
        if suite.signature().is_some() {
            assert!(reasons.contains_key("signature"), "{reasons:?}");
        }
    }
}

#[tokio::test]
async fn every_truncation_and_trailing_data_is_refused() {
    for suite in COMMITTING {
        let env = envelope(suite, 16).danger_stream_unverified_signed_frames();
        let plain = data(40);
        let m = env.encrypt(&plain, &ctx()).await.unwrap();
        for cut in 0..m.len() {
            let e = env
                .decrypt(&m[..cut], &ctx())
                .await
                .err()
                .unwrap_or_else(|| panic!("{cut} decrypts"));
            assert_eq!(e.reason(), "truncated", "{suite} cut at {cut}: {e}");
            let streamed = stream_decrypt(&env, &m[..cut], &ctx()).await;
            assert!(
                streamed.is_err(),
                "{suite}: a stream cut at {cut} ends without an error"
            );
        }
        let mut longer = m.clone();
        longer.push(0);
        assert_eq!(
            env.decrypt(&longer, &ctx()).await.err().unwrap().reason(),
            "trailing_data"
        );
        let e = stream_decrypt(&env, &longer, &ctx()).await.unwrap_err();
        assert!(e.contains("followed by other data"), "{e}");
        // A second message after the first is trailing data too.
        let mut two = m.clone();
        two.extend_from_slice(&m);
        assert_eq!(env.decrypt(&two, &ctx()).await.err().unwrap().reason(), "trailing_data");
    }
}

/// Where the frames of an unsigned message of 16-byte frames start, and their size.
async fn framed(env: &Envelope, plain: &[u8]) -> (Vec<u8>, usize) {
    let m = env.encrypt(plain, &ctx()).await.unwrap();
    let header_len = kms_envelope::parse_header(&m, &Limits::default()).unwrap().1;
    (m, header_len)
}

#[tokio::test]
async fn reordered_dropped_and_spliced_frames_are_refused() {
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 16);
    let frame = 4 + 12 + 16 + 16;
    let (m, h) = framed(&env, &data(50)).await;
    // Swap frames 1 and 2.
    let mut swapped = m.clone();
    swapped[h..h + frame].copy_from_slice(&m[h + frame..h + 2 * frame]);
    swapped[h + frame..h + 2 * frame].copy_from_slice(&m[h..h + frame]);
    let e = env.decrypt(&swapped, &ctx()).await.err().unwrap();
    assert!(e.to_string().contains("reordered"), "{e}");
    // Drop frame 2.
    let mut dropped = m[..h + frame].to_vec();
    dropped.extend_from_slice(&m[h + 2 * frame..]);
    assert!(env.decrypt(&dropped, &ctx()).await.is_err());
    // Frame 2 from another message of the same key and context, at the same place.
    let (other, h2) = framed(&env, &data(50)).await;
    let mut spliced = m.clone();
    spliced[h + frame..h + 2 * frame].copy_from_slice(&other[h2 + frame..h2 + 2 * frame]);
    let e = env.decrypt(&spliced, &ctx()).await.err().unwrap();
    assert!(matches!(e, Error::FrameAuthentication { sequence: 2 }), "{e}");
    // The other message's final frame in place of ours: not the same message id.
    let mut tail = m[..h + 3 * frame].to_vec();
    tail.extend_from_slice(&other[h2 + 3 * frame..]);
    assert!(env.decrypt(&tail, &ctx()).await.is_err());
}

#[tokio::test]
async fn wrong_context_or_key_is_refused() {
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, 64);
    let m = env.encrypt(b"secret", &ctx()).await.unwrap();
    let e = env.decrypt(&m, &ctx().with("tenant", "other")).await.err().unwrap();
    assert_eq!(e.reason(), "context_mismatch");
    // A pair the header does not hold is authenticated-only: it must have been given when
    // writing. The wrapped key is bound to the whole context, so it does not open (and were
    // it opened, the header would not authenticate).
    let e = env.decrypt(&m, &ctx().with("extra", "1")).await.err().unwrap();
    assert_eq!(e.reason(), "no_data_key");
    assert!(e.to_string().contains("another encryption context"), "{e}");
    // A subset of the context is enough (the header stores it).
    assert!(env.decrypt(&m, &EncryptionContext::new()).await.is_ok());
    // Another key of the same name.
    let wrong = Envelope::new(raw("a", 2));
    let e = wrong.decrypt(&m, &ctx()).await.err().unwrap();
    assert_eq!(e.reason(), "no_data_key");
    assert!(e.to_string().contains("does not open"), "{e}");
    // A keyring for another key name does not even try.
    let other = Envelope::new(raw("b", 1));
    let e = other.decrypt(&m, &ctx()).await.err().unwrap();
    assert!(e.to_string().contains("none is for these keyrings"), "{e}");
    // Reserved keys are refused from callers.
    let e = env
        .encrypt(b"x", &EncryptionContext::new().with("aws-crypto-public-key", "x"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.reason(), "invalid_context");
}

#[tokio::test]
async fn two_wrapped_keys_opening_to_different_data_keys_are_caught_by_the_commitment() {
    for suite in COMMITTING {
        let writer = Envelope::new(raw("a", 1))
            .with_suite(suite)
            .unwrap()
            .with_keyring(Liar(raw("b", 2)));
        let m = writer.encrypt(b"what a reads", &ctx()).await.unwrap();
        // A reader with key a sees the message...
        let a = Envelope::new(raw("a", 1));
        assert_eq!(
            a.decrypt(&m, &ctx()).await.unwrap().plaintext.expose_secret(),
            b"what a reads"
        );
        // ...a reader with key b gets another data key, which the header's commitment refuses.
        let b = Envelope::new(raw("b", 2));
        assert_eq!(b.decrypt(&m, &ctx()).await.err().unwrap().reason(), "key_commitment");
    }
}

#[tokio::test]
async fn limits_are_checked_before_any_key_is_opened() {
    let (ka, _, ua) = Counting::new("a", 1);
    let writer = Envelope::new(raw("a", 1))
        .with_keyring(raw("b", 2))
        .with_keyring(raw("c", 3));
    let m = writer.encrypt(b"x", &ctx()).await.unwrap();
    let reader = Envelope::new(ka).with_limits(Limits {
        max_wrapped_keys: 2,
        ..Limits::default()
    });
    let e = reader.decrypt(&m, &ctx()).await.err().unwrap();
    assert!(matches!(e, Error::TooManyWrappedKeys { count: 3, max: 2 }), "{e}");
    let e = reader.decrypting_reader(&m[..], &ctx()).await.err().unwrap();
    assert_eq!(e.reason(), "too_many_wrapped_keys");
    assert_eq!(ua.load(Ordering::SeqCst), 0);

    let small = Envelope::new(raw("a", 1)).with_limits(Limits {
        max_header_len: 200,
        ..Limits::default()
    });
    let e = small.decrypt(&m, &ctx()).await.err().unwrap();
    assert!(matches!(e, Error::HeaderTooLarge { max: 200 }), "{e}");
    let e = small.decrypting_reader(&m[..], &ctx()).await.err().unwrap();
    assert_eq!(e.reason(), "header_too_large");

    // A writer does not write what its own limits would refuse to read.
    let strict_writer = Envelope::new(raw("a", 1))
        .with_keyring(raw("b", 2))
        .with_keyring(raw("c", 3))
        .with_limits(Limits {
            max_wrapped_keys: 2,
            ..Limits::default()
        });
    let e = strict_writer.encrypt(b"x", &ctx()).await.err().unwrap();
    assert!(matches!(e, Error::TooManyWrappedKeys { count: 3, max: 2 }), "{e}");
    let small_writer = Envelope::new(raw("a", 1)).with_limits(Limits {
        max_header_len: 400,
        ..Limits::default()
    });
    let e = small_writer
        .encrypt(b"x", &ctx().with("padding", "p".repeat(400)))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::HeaderTooLarge { max: 400 }), "{e}");
    assert!(small_writer.encrypt(b"x", &ctx()).await.is_ok());

    let big_frames = Envelope::new(raw("a", 1)).with_frame_length(1 << 20).unwrap();
    let m = big_frames.encrypt(b"x", &ctx()).await.unwrap();
    let capped = Envelope::new(raw("a", 1)).with_limits(Limits {
        max_frame_length: 1 << 16,
        ..Limits::default()
    });
    assert_eq!(
        capped.decrypt(&m, &ctx()).await.err().unwrap().reason(),
        "invalid_argument"
    );

    assert!(Envelope::new(raw("a", 1)).with_frame_length(0).is_err());
    assert!(Envelope::new(raw("a", 1))
        .with_frame_length(kms_envelope::MAX_FRAME_LENGTH + 1)
        .is_err());
    assert!(Envelope::new(raw("a", 1))
        .with_suite(Suite::Aes256GcmHkdfSha384EcdsaP384)
        .is_err());
}

#[tokio::test]
async fn signed_messages_stream_only_when_verified_or_opted_in() {
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, 16);
    let multi = env.encrypt(&data(40), &ctx()).await.unwrap();
    let e = stream_decrypt(&env, &multi, &ctx()).await.unwrap_err();
    assert!(e.contains("danger_stream_unverified_signed_frames"), "{e}");
    // One frame: held until the signature verifies, so it streams.
    let single = env.encrypt(&data(10), &ctx()).await.unwrap();
    assert_eq!(stream_decrypt(&env, &single, &ctx()).await.unwrap(), data(10));
    // Opted in, the final frame is still held: a bad signature releases none of it.
    let opted = env.clone().danger_stream_unverified_signed_frames();
    let mut bad = multi.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let mut r = opted.decrypting_reader(&bad[..], &ctx()).await.unwrap();
    let mut out = Vec::new();
    let e = r.read_to_end(&mut out).unwrap_err();
    assert!(e.to_string().contains("signature"), "{e}");
    assert_eq!(out, data(32), "only the two full frames, never the final one");
    // The unsigned suite streams any length.
    let unsigned = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 16);
    let m = unsigned.encrypt(&data(40), &ctx()).await.unwrap();
    assert_eq!(stream_decrypt(&unsigned, &m, &ctx()).await.unwrap(), data(40));
}

#[tokio::test]
async fn the_cache_serves_many_messages_within_its_limits() {
    let limits = CacheLimits {
        max_age: Duration::from_secs(60),
        max_messages: 3,
        max_bytes: 100,
    };
    let cache = Arc::new(DataKeyCache::new(16, limits));
    let (k, generated, unwrapped) = Counting::new("a", 1);
    let k: Arc<dyn Keyring> = Arc::new(k);
    let env = Envelope::from_arc(k.clone()).with_cache(cache.clone());
    for _ in 0..3 {
        env.encrypt(b"0123456789", &ctx()).await.unwrap();
    }
    assert_eq!(generated.load(Ordering::SeqCst), 1, "three messages, one data key");
    env.encrypt(b"0123456789", &ctx()).await.unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), 2, "max_messages");
    // Bytes: 95 more bytes do not fit in the entry that protected 10.
    env.encrypt(&[0; 95], &ctx()).await.unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), 3, "max_bytes");
    // Another context, suite or commitment policy: another entry.
    env.encrypt(b"x", &ctx().with("k", "v")).await.unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), 4);
    let other_suite = env.clone().with_suite(Suite::Aes256GcmHkdfSha512CommitKey).unwrap();
    other_suite.encrypt(b"x", &ctx()).await.unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), 5);
    let other_policy = env
        .clone()
        .with_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    other_policy.encrypt(b"x", &ctx()).await.unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), 6);
    // Streams of unknown length do not use the cache.
    let w = env.encrypting_writer(Vec::new(), &ctx(), None).await.unwrap();
    w.finish().unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), 7);
    // Messages sharing a data key still have their own message ids, and decrypt.
    let a = env.encrypt(b"one", &ctx()).await.unwrap();
    let b = env.encrypt(b"two", &ctx()).await.unwrap();
    assert_ne!(a[3..35], b[3..35]);
    // Decryption: one unwrap for the same header, read twice.
    let before = unwrapped.load(Ordering::SeqCst);
    env.decrypt(&a, &ctx()).await.unwrap();
    env.decrypt(&a, &ctx()).await.unwrap();
    assert_eq!(unwrapped.load(Ordering::SeqCst), before + 1);
    // A cached decryption key is not used for another expected context.
    assert!(env.decrypt(&a, &ctx().with("extra", "1")).await.is_err());
    // Age.
    let short = Arc::new(DataKeyCache::new(
        4,
        CacheLimits {
            max_age: Duration::from_millis(50),
            ..CacheLimits::default()
        },
    ));
    let env = Envelope::from_arc(k).with_cache(short);
    env.encrypt(b"x", &ctx()).await.unwrap();
    let n = generated.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(80)).await;
    env.encrypt(b"x", &ctx()).await.unwrap();
    assert_eq!(generated.load(Ordering::SeqCst), n + 1, "max_age");
    cache.clear();
    assert!(cache.is_empty());
}

#[tokio::test]
async fn several_keyrings_any_one_decrypts() {
    let env = Envelope::new(raw("eu-west", 1)).with_keyring(raw("eu-central", 2));
    let m = env.encrypt(b"two regions", &ctx()).await.unwrap();
    let header = kms_envelope::parse_header(&m, &Limits::default()).unwrap().0;
    assert_eq!(header.encrypted_data_keys().len(), 2);
    for reader in [Envelope::new(raw("eu-west", 1)), Envelope::new(raw("eu-central", 2))] {
        assert_eq!(
            reader.decrypt(&m, &ctx()).await.unwrap().plaintext.expose_secret(),
            b"two regions"
        );
    }
    // The first region down: the second answers, and the failure is named if both are.
    let reader = Envelope::new(Down).with_keyring(raw("eu-central", 2));
    assert!(reader.decrypt(&m, &ctx()).await.is_ok());
    let e = Envelope::new(Down).decrypt(&m, &ctx()).await.err().unwrap();
    assert!(e.to_string().contains("kmsd down: unreachable"), "{e}");
    // Every keyring must wrap when writing.
    let e = Envelope::new(raw("a", 1))
        .with_keyring(Down)
        .encrypt(b"x", &ctx())
        .await
        .err()
        .unwrap();
    assert_eq!(e.reason(), "keyring");
}

#[tokio::test]
async fn declared_lengths_are_kept() {
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 16);
    let mut w = env.encrypting_writer(Vec::new(), &ctx(), Some(4)).await.unwrap();
    assert!(w.write_all(b"12345").is_err());
    let mut w = env.encrypting_writer(Vec::new(), &ctx(), Some(4)).await.unwrap();
    w.write_all(b"123").unwrap();
    assert_eq!(w.finish().err().unwrap().reason(), "invalid_argument");
}

/// Random mutations of valid messages (a fixed-seed xorshift, so a failure reproduces): the
/// parser never panics and never returns plaintext. `fuzz/` runs the same with libFuzzer.
#[tokio::test]
async fn random_mutations_never_decrypt() {
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 8);
    let lenient = env
        .clone()
        .with_commitment_policy(CommitmentPolicy::RequireEncryptAllowDecrypt);
    let base = env.encrypt(&data(30), &ctx()).await.unwrap();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for _ in 0..3000 {
        let mut m = base.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % m.len();
            match next() % 3 {
                0 => m[i] = next() as u8,
                1 => {
                    m.remove(i);
                }
                _ => m.insert(i, next() as u8),
            }
        }
        if m == base {
            continue;
        }
        assert!(lenient.decrypt(&m, &EncryptionContext::new()).await.is_err());
    }
}

#[tokio::test]
async fn an_unsigned_suite_carrying_a_signing_key_is_refused_before_any_keyring() {
    let signed = envelope(Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, 64);
    let mut m = signed.encrypt(b"x", &ctx()).await.unwrap();
    // The same header layout (both format 2) with the suite id of 0x0478.
    m[1..3].copy_from_slice(&0x0478u16.to_be_bytes());
    let (k, _, unwrapped) = Counting::new("a", 1);
    let e = Envelope::new(k).decrypt(&m, &ctx()).await.err().unwrap();
    assert!(e.to_string().contains("aws-crypto-public-key"), "{e}");
    assert_eq!(unwrapped.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_cache_tells_wrapping_keys_of_the_same_name_apart() {
    let cache = Arc::new(DataKeyCache::new(8, CacheLimits::default()));
    let old = Envelope::new(raw("a", 1)).with_cache(cache.clone());
    let new = Envelope::new(raw("a", 2)).with_cache(cache.clone());
    old.encrypt(b"under the old key", &ctx()).await.unwrap();
    let m = new.encrypt(b"under the new key", &ctx()).await.unwrap();
    assert_eq!(cache.len().0, 2, "one entry per wrapping key");
    let reader = Envelope::new(raw("a", 2));
    assert_eq!(
        reader.decrypt(&m, &ctx()).await.unwrap().plaintext.expose_secret(),
        b"under the new key"
    );
}

/// A source that gives at most `sizes[i]` bytes on its i-th read (cycling), as a slow pipe or
/// socket would.
struct Trickle<'a> {
    bytes: &'a [u8],
    sizes: &'a [usize],
    reads: usize,
}

impl<'a> Trickle<'a> {
    fn new(bytes: &'a [u8], sizes: &'a [usize]) -> Self {
        Self { bytes, sizes, reads: 0 }
    }

    fn give(&mut self, buf: &mut [u8]) -> usize {
        let n = self.sizes[self.reads % self.sizes.len()]
            .min(buf.len())
            .min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        self.reads += 1;
        n
    }
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Ok(self.give(buf))
    }
}

/// A [`Trickle`] whose every other poll is `Pending` (waking at once), as a socket without data
/// would be.
#[cfg(feature = "tokio")]
struct Hesitant<'a> {
    inner: Trickle<'a>,
    pended: bool,
}

#[cfg(feature = "tokio")]
impl<'a> Hesitant<'a> {
    fn new(bytes: &'a [u8], sizes: &'a [usize]) -> Self {
        Self {
            inner: Trickle::new(bytes, sizes),
            pended: false,
        }
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for Hesitant<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.pended = !this.pended;
        if this.pended {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = this.inner.give(buf.initialize_unfilled());
        buf.advance(n);
        std::task::Poll::Ready(Ok(()))
    }
}

/// Frames of 4 MiB arriving 1 to 4 KiB per read decrypt (the reader's buffer is zero-filled
/// once, not per read: `stream.rs` counts it).
#[tokio::test]
async fn large_frames_stream_through_small_reads() {
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 4 << 20);
    let plain = data((8 << 20) + 12_345);
    let m = env.encrypt(&plain, &ctx()).await.unwrap();
    let sizes = [1024, 4096, 1, 3000, 2048];
    let mut r = env.decrypting_reader(Trickle::new(&m, &sizes), &ctx()).await.unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert!(out == plain, "the plaintext differs");
}

#[cfg(feature = "tokio")]
#[tokio::test]
async fn large_frames_stream_through_small_async_reads() {
    use tokio::io::AsyncReadExt as _;
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKey, 4 << 20);
    let plain = data((8 << 20) + 12_345);
    let m = env.encrypt(&plain, &ctx()).await.unwrap();
    let sizes = [1024, 4096, 1, 3000, 2048];
    let mut r = env
        .async_decrypting_reader(Hesitant::new(&m, &sizes), &ctx())
        .await
        .unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    assert!(out == plain, "the plaintext differs");
}

/// A message arriving one byte per read (header included) decrypts, blocking and async.
#[tokio::test]
async fn a_message_read_a_byte_at_a_time_decrypts() {
    for suite in COMMITTING {
        let env = envelope(suite, 64).danger_stream_unverified_signed_frames();
        let plain = data(300);
        let context = ctx().with("padding", "p".repeat(200));
        let m = env.encrypt(&plain, &context).await.unwrap();
        let mut r = env.decrypting_reader(Trickle::new(&m, &[1]), &context).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, plain, "{suite}");
        #[cfg(feature = "tokio")]
        {
            use tokio::io::AsyncReadExt as _;
            let mut r = env
                .async_decrypting_reader(Hesitant::new(&m, &[1]), &context)
                .await
                .unwrap();
            let mut out = Vec::new();
            r.read_to_end(&mut out).await.unwrap();
            assert_eq!(out, plain, "{suite} (async)");
        }
    }
}

/// `Keyring::unwrap` is public: the raw AES keyring refuses, without panicking, a wrapped key
/// it does not recognize, whatever its provider info.
#[tokio::test]
async fn the_raw_aes_keyring_refuses_to_unwrap_what_it_does_not_recognize() {
    let keyring = raw("a", 1);
    let context = ctx();
    let request = KeyringRequest {
        suite: Suite::Aes256GcmHkdfSha512CommitKey,
        context: &context,
    };
    let good = keyring.wrap(&DataKey::new(vec![9; 32]), request).await.unwrap();
    assert_eq!(keyring.unwrap(&good, request).await.unwrap().expose_secret(), [9; 32]);
    let with_info = |info: Vec<u8>| EncryptedDataKey {
        provider_info: info,
        ..good.clone()
    };
    let mut wrong_tag_length = good.provider_info.clone();
    wrong_tag_length[4] = 0x60; // 96-bit tags
    let unknown = [
        with_info(Vec::new()),
        with_info(b"a".to_vec()),
        with_info(good.provider_info[..good.provider_info.len() - 1].to_vec()),
        with_info([&good.provider_info[..], &[0]].concat()),
        with_info(wrong_tag_length),
        with_info([b"b", &good.provider_info[1..]].concat()),
        EncryptedDataKey {
            provider_id: "other".into(),
            ..good.clone()
        },
    ];
    for edk in &unknown {
        assert!(!keyring.recognizes(edk));
        let e = keyring.unwrap(edk, request).await.err().expect("refused");
        assert_eq!(e.reason(), "keyring", "{e}");
        assert!(e.to_string().contains("not this keyring's"), "{e}");
    }
}

/// The header must carry the signing key as a compressed point: the same key uncompressed is
/// refused before any keyring is asked.
#[tokio::test]
async fn an_uncompressed_public_key_is_refused_before_any_keyring() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let env = envelope(Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, 64);
    let m = env.encrypt(b"x", &ctx()).await.unwrap();
    let header = kms_envelope::parse_header(&m, &Limits::default()).unwrap().0;
    let compressed = header.context().get("aws-crypto-public-key").unwrap().to_owned();
    let point = p384::ecdsa::VerifyingKey::from_sec1_bytes(&b64.decode(&compressed).unwrap()).unwrap();
    let uncompressed = b64.encode(point.to_encoded_point(false).as_bytes());
    // Put it in place of the compressed one, with its value's and the context's lengths.
    let at = m
        .windows(compressed.len())
        .position(|w| w == compressed.as_bytes())
        .unwrap();
    let grow = uncompressed.len() - compressed.len();
    let mut bad = m[..at].to_vec();
    bad[at - 2..at].copy_from_slice(&(uncompressed.len() as u16).to_be_bytes());
    bad.extend_from_slice(uncompressed.as_bytes());
    bad.extend_from_slice(&m[at + compressed.len()..]);
    let context_len = u16::from_be_bytes([bad[35], bad[36]]) as usize + grow;
    bad[35..37].copy_from_slice(&(context_len as u16).to_be_bytes());
    let reparsed = kms_envelope::parse_header(&bad, &Limits::default()).unwrap().0;
    assert_eq!(reparsed.context().get("aws-crypto-public-key"), Some(&uncompressed[..]));
    let (k, _, unwrapped) = Counting::new("a", 1);
    let e = Envelope::new(k).decrypt(&bad, &ctx()).await.err().unwrap();
    assert_eq!(e.reason(), "malformed", "{e}");
    assert!(e.to_string().contains("compressed P-384 point"), "{e}");
    assert_eq!(unwrapped.load(Ordering::SeqCst), 0);
}
