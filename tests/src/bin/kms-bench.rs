//! `kms-bench`: throughput and latency of a real `kmsd` (a separate process, mTLS gRPC on
//! loopback, durable audit) for GenerateDataKeyWithoutPlaintext and Decrypt, printed next to
//! baselines measured in the same run: the bare AES-256-GCM seal rate (ring) and our per-blob
//! seal (HKDF-SHA256 + AES-256-GCM), both single-threaded and over all cores.
//!
//! Usage: kms-bench --kmsd target/release/kmsd [--database URL] [--seconds 20] [--concurrency 64]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_core::blob::{self, Kek};
use kms_core::context::EncryptionContext;
use kms_core::ids::{KeyId, KeyVersion};
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_tests::{admin, grants_all, new_admin, signed, Pki};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

struct Args {
    kmsd: PathBuf,
    database: Option<String>,
    seconds: u64,
    concurrency: usize,
    connections: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        kmsd: PathBuf::from("target/release/kmsd"),
        database: None,
        seconds: 20,
        concurrency: 64,
        connections: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--kmsd" => a.kmsd = v()?.into(),
            "--database" => a.database = Some(v()?),
            "--seconds" => a.seconds = v()?.parse().map_err(|_| "--seconds: a number")?,
            "--concurrency" => a.concurrency = v()?.parse().map_err(|_| "--concurrency: a number")?,
            "--connections" => a.connections = v()?.parse().map_err(|_| "--connections: a number")?,
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kms-bench: {e}\nusage: kms-bench --kmsd PATH [--database URL] [--seconds N] [--concurrency N] [--connections N]");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(args));
}

/// Operations per second of `f` on `threads` threads for `secs`.
fn rate(threads: usize, secs: f64, f: impl Fn() + Sync) -> f64 {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let total: u64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        for _ in 0..256 {
                            f();
                        }
                        n += 256;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / secs
}

fn baselines() -> (f64, f64, f64, f64) {
    use ring::aead;
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &[7u8; 32]).unwrap());
    let aes = |_: ()| {
        let mut buf = [9u8; 32].to_vec();
        let _ = key.seal_in_place_separate_tag(
            aead::Nonce::assume_unique_for_key([1; 12]),
            aead::Aad::from(&[0u8; 57]),
            &mut buf,
        );
        std::hint::black_box(buf);
    };
    let mut k = [3u8; 32];
    let kek = Kek::from_slice(&mut k).unwrap();
    let id = KeyId::from_bytes([1; 16]);
    let ctx = EncryptionContext::empty();
    let blob_seal = || {
        std::hint::black_box(blob::seal(&kek, id, KeyVersion::FIRST, &ctx, &[5u8; 32]).unwrap());
    };
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (
        rate(1, 2.0, || aes(())),
        rate(cores, 2.0, || aes(())),
        rate(1, 2.0, blob_seal),
        rate(cores, 2.0, blob_seal),
    )
}

struct Phase {
    name: &'static str,
    count: u64,
    errors: u64,
    secs: f64,
    lat_us: Vec<u32>,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.lat_us[i]) / 1000.0
    }
}

async fn run(args: Args) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("kms-bench: measuring baselines (8 s)...");
    let (aes1, aes_all, blob1, blob_all) = baselines();

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // A fresh database each run, on the given PostgreSQL server, or SQLite in a temp dir.
    let database = match &args.database {
        Some(base) => kms_tests::Db::fresh_postgres(base, "kms_bench").await.url,
        None => format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display()),
    };
    let tls = pki.tls_config();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"{database}\"\nmax_connections = 16\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n[keys]\ncache_ttl_ms = 1000\n[danger]\nallow_unattested_keys = true\n[log]\nlevel = \"warn\"\n",
        tls.cert.display(),
        tls.key.display(),
        tls.client_ca.display()
    );
    let config_path = dir.path().join("kmsd.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = std::process::Command::new(&args.kmsd)
        .arg("--config")
        .arg(&config_path)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", args.kmsd.display()));

    let ca = tonic::transport::Certificate::from_pem(&pki.ca_pem);
    let connect = |principal: &str| {
        let tls = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(pki.client(principal))
            .domain_name("localhost");
        let ep = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .tcp_nodelay(true);
        async move { ep.connect().await }
    };
    let start = Instant::now();
    let mut admin_c = loop {
        if let Ok(ch) = connect("spiffe://bench/admin").await {
            break pb::admin_service_client::AdminServiceClient::new(ch);
        }
        assert!(start.elapsed() < Duration::from_secs(30), "kmsd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let alice = admin("alice", "DE");
    admin_c
        .init(signed(
            &alice,
            Op::Init(pb::InitOp {
                seal: pb::SealKind::Shamir as i32,
                threshold: 1,
                admins: vec![new_admin(&alice, true)],
            }),
        ))
        .await
        .expect("init");
    let app = "spiffe://bench/app";
    admin_c
        .create_key(signed(
            &alice,
            Op::CreateKey(pb::CreateKeyOp {
                name: "bench".into(),
                grants: grants_all(&[app]),
                release_policy: kms_tests::UNATTESTED.into(),
                ..Default::default()
            }),
        ))
        .await
        .expect("create key");
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(connect(app).await.expect("connect"));
    }
    let blob = pb::key_service_client::KeyServiceClient::new(channels[0].clone())
        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
            key: "bench".into(),
            encryption_context: [("app".to_owned(), "bench".to_owned())].into(),
        })
        .await
        .expect("warm-up")
        .into_inner()
        .ciphertext_blob;

    let gen = load(
        &channels,
        args.concurrency,
        args.seconds,
        "GenerateDataKeyWithoutPlaintext",
        |mut c| async move {
            c.generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                key: "bench".into(),
                encryption_context: [("app".to_owned(), "bench".to_owned())].into(),
            })
            .await
            .is_ok()
        },
    )
    .await;
    let blob = Arc::new(blob);
    let dec = load(&channels, args.concurrency, args.seconds, "Decrypt", move |mut c| {
        let blob = blob.clone();
        async move {
            c.decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.to_vec(),
                encryption_context: [("app".to_owned(), "bench".to_owned())].into(),
                key: String::new(),
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;
    let _ = rustix_kill(&child);
    let _ = child.wait();

    let backend = if database.starts_with("sqlite") {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    println!("kms-bench: kmsd over mTLS gRPC on loopback, {backend}, durable audit (group commit); load generator in the same machine");
    println!(
        "  cores {cores}, concurrency {}, connections {}, {} s per phase\n",
        args.concurrency, args.connections, args.seconds
    );
    println!("  baseline (same run)                         ops/s");
    println!("  bare AES-256-GCM seal, 32 B, 1 thread   {aes1:>12.0}");
    println!("  bare AES-256-GCM seal, 32 B, {cores} threads  {aes_all:>12.0}");
    println!("  blob seal (HKDF + AES-GCM), 1 thread    {blob1:>12.0}");
    println!("  blob seal (HKDF + AES-GCM), {cores} threads   {blob_all:>12.0}\n");
    println!(
        "  operation                              req/s    p50 ms   p99 ms  errors  req/s ÷ bare AES-GCM ({cores} thr)"
    );
    for p in [&gen, &dec] {
        let rps = p.count as f64 / p.secs;
        println!(
            "  {:<34} {rps:>9.0} {:>9.2} {:>8.2} {:>7} {:>12.5}",
            p.name,
            p.pct(0.5),
            p.pct(0.99),
            p.errors,
            rps / aes_all
        );
    }
}

fn rustix_kill(child: &std::process::Child) -> std::io::Result<()> {
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .map(|_| ())
}

async fn load<F, Fut>(channels: &[Channel], concurrency: usize, seconds: u64, name: &'static str, call: F) -> Phase
where
    F: Fn(pb::key_service_client::KeyServiceClient<Channel>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    eprintln!("kms-bench: {name} for {seconds} s...");
    let start = Instant::now();
    let stop = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let client = pb::key_service_client::KeyServiceClient::new(channels[i % channels.len()].clone());
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = 0u64;
            while Instant::now() < stop {
                let t = Instant::now();
                if call(client.clone()).await {
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut lat_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat_us.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    Phase {
        name,
        count: lat_us.len() as u64,
        errors,
        secs,
        lat_us,
    }
}
