//! The `kmsd` binary itself: bad configuration exits 64 naming the bad key (and a danger flag
//! without what it applies to); dev mode refuses a
//! non-loopback address, initializes itself and serves plaintext on loopback (and metrics);
//! SIGTERM drains and exits 0; a restart in dev mode unseals from the dev root key file and keeps
//! its data; kmsd locks its memory, and a production kmsd that cannot refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kms_proto::v1 as pb;

const KMSD: &str = env!("CARGO_BIN_EXE_kmsd");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(KMSD).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_and_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&["--config", "/nonexistent/kmsd.toml"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("/nonexistent/kmsd.toml"), "{err}");

    let path = dir.path().join("kmsd.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:7300\"\n[database]\nurl = \"sqlite://x.db\"\nmax_conections = 3\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("max_conections"), "{err}");

    let (code, err) = run(&[
        "--dev",
        "--listen",
        "0.0.0.0:7399",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("loopback"), "{err}");

    let (code, err) = run(&[]);
    assert_eq!(code, 64, "{err}");

    std::fs::write(&path, "listen = \"127.0.0.1:7300\"\n[database]\nurl = \"sqlite://x.db\"\n[log]\nformat = \"yaml\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("log.format"), "{err}");

    // SEV-SNP accepted for a product without a minimum TCB: refused before anything starts.
    std::fs::write(&path, "listen = \"127.0.0.1:7300\"\n[database]\nurl = \"sqlite://x.db\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n[attestation.snp]\nproducts = [\"milan\"]\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("attestation.snp.minimum_tcb.milan: required"), "{err}");

    // Accepting a restored database is for the pkcs11 seal's anchor only, and never in dev mode.
    std::fs::write(&path, "listen = \"127.0.0.1:7300\"\n[database]\nurl = \"sqlite://x.db\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n").unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap(), "--danger-accept-restored-database"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("[seal.pkcs11]"), "{err}");
    let (code, err) = run(&["--dev", "--danger-accept-restored-database"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("not dev mode"), "{err}");

    // `[metrics]`: an address, no other key, not the gRPC address; dev mode on loopback only.
    let base = "listen = \"127.0.0.1:7300\"\n[database]\nurl = \"sqlite://x.db\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n";
    for (metrics, named) in [
        (
            "[metrics]\nlisten = \"localhost\"\n",
            "metrics.listen: \"localhost\" is not an address",
        ),
        ("[metrics]\nlisten = \"127.0.0.1:9464\"\nenabled = true\n", "enabled"),
        ("[metrics]\n", "listen"),
        (
            "[metrics]\nlisten = \"127.0.0.1:7300\"\n",
            "metrics.listen: 127.0.0.1:7300 is the gRPC address",
        ),
    ] {
        std::fs::write(&path, format!("{base}{metrics}")).unwrap();
        let (code, err) = run(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, 64, "{metrics}: {err}");
        assert!(
            err.contains("bad configuration") && err.contains(named),
            "{metrics}: {err}"
        );
    }
    let (code, err) = run(&["--dev", "--metrics-listen", "0.0.0.0:9464"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--metrics-listen") && err.contains("loopback"), "{err}");
    // --metrics-listen is dev mode's; a configuration file has `[metrics]`.
    let (code, err) = run(&["--config", path.to_str().unwrap(), "--metrics-listen", "127.0.0.1:9464"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("[metrics] listen"), "{err}");
}

#[test]
fn a_server_that_cannot_start_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kmsd.toml");
    let port = free_port();
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"sqlite:///nonexistent-dir/kms.db?mode=rwc\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n"),
    )
    .unwrap();
    let start = Instant::now();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("database"), "{err}");
    // stderr is a pipe here, not a terminal: no colour codes in the log.
    assert!(
        !err.contains('\x1b'),
        "ANSI escapes in a log that is not a terminal: {err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));

    // The metrics port is taken: nothing starts.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = taken.local_addr().unwrap();
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"sqlite://{}/kms.db?mode=rwc\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n[metrics]\nlisten = \"{metrics}\"\n", dir.path().display()),
    )
    .unwrap();
    let (code, err) = run(&["--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("metrics: cannot listen on {metrics}")), "{err}");
    assert!(
        !dir.path().join("kms.db").exists(),
        "the database was opened before the metrics listener"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_up(addr: &str) -> pb::admin_service_client::AdminServiceClient<tonic::transport::Channel> {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = pb::admin_service_client::AdminServiceClient::connect(format!("http://{addr}")).await {
            if c.get_seal_status(pb::GetSealStatusRequest {}).await.is_ok() {
                return c;
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "kmsd --dev did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The body of GET /metrics on 127.0.0.1:`port` (HTTP/1.1, the connection closed after it).
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    body.to_owned()
}

async fn sigterm_and_wait(child: &mut std::process::Child) -> i32 {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), rustix::process::Signal::TERM).unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "kmsd did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_initializes_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = free_port();
    let metrics_listen = format!("127.0.0.1:{metrics}");
    let spawn = || {
        Command::new(KMSD)
            .args([
                "--dev",
                "--listen",
                &addr,
                "--data-dir",
                dir.path().to_str().unwrap(),
                "--metrics-listen",
                &metrics_listen,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    let mut admin = wait_up(&addr).await;
    let status = admin
        .get_seal_status(pb::GetSealStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(status.initialized && !status.sealed && status.seal == pb::SealKind::Dev as i32);
    let key_file = dir.path().join(kms_server::DEV_ADMIN_KEY_FILE);
    let meta = std::fs::metadata(&key_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let key = kms_core::keyfile::AdminKeyFile::decode(&std::fs::read_to_string(&key_file).unwrap()).unwrap();

    // Create an unattested key as the dev admin and round-trip a data key as `anonymous`.
    let deployment = status.deployment_id.clone();
    assert!(deployment.starts_with("dep-"), "{status:?}");
    let sign = |op| {
        use kms_core::admin::AdminSigner;
        use prost::Message;
        let req = pb::AdminRequest {
            admin_id: key.admin_id.to_string(),
            timestamp_unix_ms: kms_core::now_unix_ms(),
            nonce: kms_core::random_array::<16>().unwrap().to_vec(),
            operation: Some(op),
            deployment_id: deployment.clone(),
        };
        let payload = req.encode_to_vec();
        pb::SignedRequest {
            signature: key.signer().sign(&payload).unwrap(),
            payload,
        }
    };
    admin
        .create_key(sign(pb::admin_request::Operation::CreateKey(pb::CreateKeyOp {
            name: "demo".into(),
            grants: vec![pb::Grant {
                principal: "anonymous".into(),
                operations: vec![1, 4],
            }],
            release_policy: r#"{"version":1,"attestation":"none"}"#.into(),
            ..Default::default()
        })))
        .await
        .unwrap();
    let mut data = pb::key_service_client::KeyServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let g = data
        .generate_data_key(pb::GenerateDataKeyRequest {
            key: "demo".into(),
            encryption_context: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Dev mode serves metrics (on the address given): the dev seal, the release just made.
    let scrape = scrape(metrics).await;
    for line in [
        "kms_seal_kind{kind=\"dev\"} 1",
        "kms_seal_state{state=\"unsealed\"} 1",
        "kms_grpc_requests_total{service=\"kms.v1.KeyService\",method=\"GenerateDataKey\",code=\"OK\",reason=\"ok\"} 1",
    ] {
        assert!(scrape.lines().any(|l| l == line), "no {line:?} in\n{scrape}");
    }
    assert_eq!(sigterm_and_wait(&mut child).await, 0);

    // Restart: unsealed from the dev root key file, the old blob decrypts.
    let mut child = spawn();
    let _ = wait_up(&addr).await;
    let mut data = pb::key_service_client::KeyServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let d = data
        .decrypt(pb::DecryptRequest {
            ciphertext_blob: g.ciphertext_blob,
            encryption_context: Default::default(),
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.plaintext, g.plaintext);
    assert_eq!(sigterm_and_wait(&mut child).await, 0);
}

/// kmsd's command line under an 8 MiB `RLIMIT_MEMLOCK` and, when the test runs as root, without
/// `CAP_IPC_LOCK` (as a service user without `LimitMEMLOCK=infinity` would start it).
fn under_lock_limit(args: &[&str]) -> Command {
    let mut c = Command::new("prlimit");
    c.arg("--memlock=8388608:8388608");
    if rustix::process::geteuid().is_root() {
        c.args(["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock"]);
    }
    // Whatever the developer's environment says (CONTRIBUTING.md).
    c.arg(KMSD).args(args).env_remove("KMSD__DANGER__ALLOW_SWAP");
    c
}

/// `VmLck` of /proc/PID/status, in kB: memory kmsd has locked against swapping.
fn locked_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmLck:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether this process could lock all its memory (root's CAP_IPC_LOCK, or no limit), as a
/// kmsd started from it could.
fn may_lock() -> bool {
    let caps = rustix::thread::capabilities(None).unwrap();
    caps.effective.contains(rustix::thread::CapabilitySet::IPC_LOCK)
        || rustix::process::getrlimit(rustix::process::Resource::Memlock)
            .current
            .is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kmsd_locks_its_memory_or_a_production_server_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kmsd.toml");
    let port = free_port();
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"sqlite://{}/kms.db?mode=rwc\"\n[tls]\ncert = \"/etc/hostname\"\nkey = \"/etc/hostname\"\nclient_ca = \"/etc/hostname\"\n", dir.path().display()),
    )
    .unwrap();
    let config = path.to_str().unwrap();

    // Production, memory that cannot be locked: refused before anything starts, naming the fix.
    let out = under_lock_limit(&["--config", config]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    for part in [
        "bad configuration: kmsd cannot lock its memory",
        "RLIMIT_MEMLOCK) is 8192 KiB",
        "LimitMEMLOCK=infinity",
        "danger.allow_swap = true",
    ] {
        assert!(err.contains(part), "no {part:?} in {err}");
    }
    assert!(!dir.path().join("kms.db").exists(), "the database was opened");

    // danger.allow_swap: past the lock (on to the TLS files, which are not certificates), warned.
    let out = under_lock_limit(&["--config", config])
        .env("KMSD__DANGER__ALLOW_SWAP", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("tls:"), "{err}");
    assert!(err.contains("danger.allow_swap: memory not locked"), "{err}");

    // Dev mode under the limit: serves, and says its memory is not locked.
    let addr = format!("127.0.0.1:{}", free_port());
    let dev_dir = dir.path().join("dev");
    let dev = |c: &mut Command| {
        c.args([
            "--dev",
            "--listen",
            &addr,
            "--data-dir",
            dev_dir.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let mut child = dev(&mut under_lock_limit(&[]));
    let _ = wait_up(&addr).await;
    // prlimit and setpriv exec what they run: the child is kmsd itself.
    let pid = child.id();
    assert!(std::fs::read_link(format!("/proc/{pid}/exe"))
        .unwrap()
        .ends_with("kmsd"));
    assert_eq!(locked_kb(pid), 0);
    assert_eq!(sigterm_and_wait(&mut child).await, 0);
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("dev mode: memory not locked"), "{err}");

    // Where the process may lock (root, as the suite runs; the kms package's unit): it does.
    if may_lock() {
        let mut child = dev(&mut Command::new(KMSD));
        let _ = wait_up(&addr).await;
        let locked = locked_kb(child.id());
        assert!(locked > 0, "kmsd locked no memory");
        assert_eq!(sigterm_and_wait(&mut child).await, 0);
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!err.contains("memory not locked"), "{err}");
    } else {
        eprintln!("this test process may not lock its memory (not root, RLIMIT_MEMLOCK limited): the locked case is checked by scripts/test-package and runs as root");
    }
}
