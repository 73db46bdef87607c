//! The envelope library's speed, measured (run by `scripts/bench-envelope`): a message of
//! `--gib` GiB streamed through the library (encrypt into a sink; decrypt from a file), beside
//! bare AES-256-GCM (ring) over the same bytes in frame-sized buffers, and beside the Python
//! aws-encryption-sdk (`--python`, `--peer`) on the same machine; peak RSS for a small and a
//! large message, to show it does not grow with the message.
//!
//! Usage: envelope_bench [--gib N] [--frame-length BYTES] [--repeat N]
//!        [--python PATH --peer esdk_peer.py] [--python-mib N] [--dir DIR]

use std::io::{self, Read, Write};
use std::time::Instant;

use kms_envelope::{EncryptionContext, Envelope, RawAesKeyring, Suite};
use ring::aead;

/// Yields `total` bytes of a fixed 1 MiB pattern, without holding more than that.
struct Pattern {
    block: Vec<u8>,
    left: u64,
    pos: usize,
}

impl Pattern {
    fn new(total: u64) -> Self {
        let block = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        Self {
            block,
            left: total,
            pos: 0,
        }
    }
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.block.len() - self.pos).min(self.left as usize);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.block.len();
        self.left -= n as u64;
        Ok(n)
    }
}

/// Discards what is written, counting it.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets the peak RSS (Linux: write 5 to clear_refs).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Run {
    encrypt_s: f64,
    /// Decryption through `BufRead`.
    decrypt_s: f64,
    /// Decryption through `Read` and `io::copy`.
    decrypt_copy_s: f64,
    message_bytes: u64,
}

/// Throughput: encrypt a pattern into a sink, decrypt the message (held in memory, like the
/// bare baseline's buffers) into a sink; both through the streaming adapters and `io::copy`.
fn run(rt: &tokio::runtime::Runtime, env: &Envelope, bytes: u64) -> Run {
    let ctx = EncryptionContext::new().with("bench", "envelope");
    let t = Instant::now();
    let mut w = rt
        .block_on(env.encrypting_writer(Sink(0), &ctx, Some(bytes)))
        .expect("start");
    io::copy(&mut Pattern::new(bytes), &mut w).expect("encrypt");
    let sink = w.finish().expect("finish");
    let encrypt_s = t.elapsed().as_secs_f64();
    let mut w = rt
        .block_on(env.encrypting_writer(Vec::with_capacity(sink.0 as usize), &ctx, Some(bytes)))
        .expect("start");
    io::copy(&mut Pattern::new(bytes), &mut w).expect("encrypt");
    let message = w.finish().expect("finish");
    // Through BufRead (the frame itself is lent, no copy)...
    let t = Instant::now();
    let mut r = rt.block_on(env.decrypting_reader(&message[..], &ctx)).expect("header");
    let mut out = Sink(0);
    loop {
        let buf = io::BufRead::fill_buf(&mut r).expect("decrypt");
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        out.write_all(buf).expect("sink");
        io::BufRead::consume(&mut r, n);
    }
    let decrypt_s = t.elapsed().as_secs_f64();
    assert_eq!(out.0, bytes);
    // ...and through Read with io::copy (8 KiB copies).
    let t = Instant::now();
    let mut r = rt.block_on(env.decrypting_reader(&message[..], &ctx)).expect("header");
    let n = io::copy(&mut r, &mut Sink(0)).expect("decrypt");
    let decrypt_copy_s = t.elapsed().as_secs_f64();
    assert_eq!(n, bytes);
    Run {
        encrypt_s,
        decrypt_s,
        decrypt_copy_s,
        message_bytes: sink.0,
    }
}

/// Peak RSS of streaming a message of `bytes` from a pattern to a file and back to a sink.
fn peak_rss(rt: &tokio::runtime::Runtime, env: &Envelope, bytes: u64, dir: &std::path::Path) -> u64 {
    let ctx = EncryptionContext::new().with("bench", "envelope");
    reset_peak();
    let path = dir.join("bench.esdk");
    let file = io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).expect("create"));
    let mut w = rt
        .block_on(env.encrypting_writer(file, &ctx, Some(bytes)))
        .expect("start");
    io::copy(&mut Pattern::new(bytes), &mut w).expect("encrypt");
    w.finish().expect("finish").flush().expect("flush");
    let file = std::fs::File::open(&path).expect("open");
    let mut r = rt
        .block_on(env.decrypting_reader(io::BufReader::with_capacity(1 << 20, file), &ctx))
        .expect("header");
    let n = io::copy(&mut r, &mut Sink(0)).expect("decrypt");
    assert_eq!(n, bytes);
    let _ = std::fs::remove_file(&path);
    peak_rss_kib()
}

/// Bare AES-256-GCM (ring) over the same bytes in `frame`-sized buffers, the same way in both
/// directions: encryption copies each frame from the 1 MiB pattern into a buffer and seals it
/// in place; decryption copies each sealed frame of a message held in memory into a buffer and
/// opens it in place. What the library cannot beat.
fn bare(bytes: u64, frame: usize) -> (f64, f64) {
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &[7; 32]).expect("key"));
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        aead::Nonce::assume_unique_for_key(n)
    };
    let frames = bytes.div_ceil(frame as u64) as usize;
    let mut buf = vec![0u8; frame];
    let mut source = Pattern::new(bytes);
    let t = Instant::now();
    for i in 0..frames {
        let n = source.read(&mut buf).expect("read");
        let tag = key
            .seal_in_place_separate_tag(nonce(i), aead::Aad::from(&[]), &mut buf[..n])
            .expect("seal");
        let _ = std::hint::black_box(tag);
    }
    let encrypt_s = t.elapsed().as_secs_f64();
    // The sealed frames, for decryption (not timed).
    let mut sealed = vec![1u8; bytes as usize];
    let mut source = Pattern::new(bytes);
    let tags: Vec<aead::Tag> = sealed
        .chunks_mut(frame)
        .enumerate()
        .map(|(i, chunk)| {
            source.read_exact(chunk).expect("read");
            key.seal_in_place_separate_tag(nonce(i), aead::Aad::from(&[]), chunk)
                .expect("seal")
        })
        .collect();
    let t = Instant::now();
    for (i, chunk) in sealed.chunks(frame).enumerate() {
        let b = &mut buf[..chunk.len()];
        b.copy_from_slice(chunk);
        key.open_in_place_separate_tag(nonce(i), aead::Aad::from(&[]), tags[i], b, 0..)
            .expect("open");
    }
    (encrypt_s, t.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: f64 = arg(&args, "--gib").map_or(1.0, |v| v.parse().expect("--gib N"));
    let frame: u32 = arg(&args, "--frame-length").map_or(1 << 20, |v| v.parse().expect("--frame-length BYTES"));
    let python_mib: u64 = arg(&args, "--python-mib").map_or(256, |v| v.parse().expect("--python-mib N"));
    let repeat: usize = arg(&args, "--repeat").map_or(3, |v| v.parse().expect("--repeat N"));
    let dir = arg(&args, "--dir").map_or_else(std::env::temp_dir, std::path::PathBuf::from);
    let bytes = (gib * (1u64 << 30) as f64) as u64;
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");

    println!("envelope bench: {bytes} bytes ({gib} GiB) streamed, frame length {frame}, one thread, best of {repeat}");
    println!("{:<44} {:>10} {:>10}", "", "encrypt", "decrypt");
    // Best of `repeat` runs for every figure (the machine is shared; the best is the least
    // disturbed).
    let best = |a: (f64, f64), b: (f64, f64)| (a.0.min(b.0), a.1.min(b.1));
    let (be, bd) = (0..repeat)
        .map(|_| bare(bytes, frame as usize))
        .fold((f64::MAX, f64::MAX), best);
    println!(
        "{:<44} {:>7.3} GB/s {:>7.3} GB/s",
        "bare AES-256-GCM (ring), same buffers",
        gbps(bytes, be),
        gbps(bytes, bd)
    );
    let mut results = Vec::new();
    for suite in [
        Suite::Aes256GcmHkdfSha512CommitKey,
        Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
    ] {
        let mut env = Envelope::new(RawAesKeyring::new("bench", "k", &[9; 32]).expect("keyring"))
            .with_suite(suite)
            .expect("suite")
            .with_frame_length(frame)
            .expect("frame");
        if suite.signature().is_some() {
            // Frames go to a sink; the bench does not act on them before the end.
            env = env.danger_stream_unverified_signed_frames();
        }
        let mut r = run(&rt, &env, bytes);
        for _ in 1..repeat {
            let again = run(&rt, &env, bytes);
            r.encrypt_s = r.encrypt_s.min(again.encrypt_s);
            r.decrypt_s = r.decrypt_s.min(again.decrypt_s);
            r.decrypt_copy_s = r.decrypt_copy_s.min(again.decrypt_copy_s);
        }
        println!(
            "{:<44} {:>7.3} GB/s {:>7.3} GB/s   ({:.3} / {:.3} of bare; decrypt through io::copy {:.3} GB/s, {:.3})",
            format!("kms-envelope 0x{:04X}", suite.id()),
            gbps(bytes, r.encrypt_s),
            gbps(bytes, r.decrypt_s),
            be / r.encrypt_s,
            bd / r.decrypt_s,
            gbps(bytes, r.decrypt_copy_s),
            bd / r.decrypt_copy_s,
        );
        assert!(r.message_bytes > bytes);
        results.push((suite, r));
    }
    // RSS does not grow with the message: file to file, 1/16 of the size and the whole.
    let env = Envelope::new(RawAesKeyring::new("bench", "k", &[9; 32]).expect("keyring"))
        .with_suite(Suite::Aes256GcmHkdfSha512CommitKey)
        .expect("suite")
        .with_frame_length(frame)
        .expect("frame");
    let small = peak_rss(&rt, &env, bytes / 16, &dir);
    let large = peak_rss(&rt, &env, bytes, &dir);
    println!(
        "peak RSS streaming through files (0x0478): {} MiB for a {} MiB message, {} MiB for {} MiB",
        small / 1024,
        (bytes / 16) >> 20,
        large / 1024,
        bytes >> 20
    );

    if let (Some(python), Some(peer)) = (arg(&args, "--python"), arg(&args, "--peer")) {
        let py_bytes = python_mib << 20;
        for (suite, r) in &results {
            let out = std::process::Command::new(&python)
                .arg(&peer)
                .args([
                    "bench",
                    "--bytes",
                    &py_bytes.to_string(),
                    "--frame-length",
                    &frame.to_string(),
                ])
                .args(["--suite", &format!("0x{:04x}", suite.id()), "--repeat", "2"])
                .output()
                .expect("run the Python peer");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("peer JSON");
            let (pe, pd) = (
                doc["encrypt_seconds"].as_f64().expect("encrypt_seconds"),
                doc["decrypt_seconds"].as_f64().expect("decrypt_seconds"),
            );
            let (our_e, our_d) = (gbps(bytes, r.encrypt_s), gbps(bytes, r.decrypt_s));
            let (py_e, py_d) = (gbps(py_bytes, pe), gbps(py_bytes, pd));
            println!(
                "{:<44} {:>7.3} GB/s {:>7.3} GB/s   (ours ÷ theirs: {:.2} / {:.2})",
                format!(
                    "python aws-encryption-sdk {} 0x{:04X} ({} MiB)",
                    doc["esdk_version"].as_str().unwrap_or("?"),
                    suite.id(),
                    python_mib
                ),
                py_e,
                py_d,
                our_e / py_e,
                our_d / py_d
            );
        }
    }
}
