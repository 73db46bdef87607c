//! A real software TPM per test: `swtpm_setup` manufactures a TPM state (EK certificates signed
//! by a local CA made in the same temporary directory), then `swtpm socket` serves it on free
//! TCP ports until the [`Swtpm`] is dropped. Missing tools fail the test with the fix.

use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use attestation::attester::tpm::Tpm;
use tempfile::TempDir;

const TOOLS: &[&str] = &[
    "swtpm",
    "swtpm_setup",
    "swtpm_localca",
    "tpm2_createek",
    "tpm2_createak",
    "tpm2_quote",
    "tpm2_checkquote",
    "tpm2_pcrextend",
    "tpm2_flushcontext",
    "tpm2_startauthsession",
    "tpm2_policysecret",
    "tpm2_activatecredential",
];

/// The full path of `tool` on PATH; fails the test, saying how to install it, if absent.
fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{tool}` is not installed: the TPM tests need swtpm, swtpm-tools and tpm2-tools. \
                 Run scripts/setup (as root) to install them."
            )
        })
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A manufactured TPM state with its local CA, not running.
pub(crate) struct TpmState {
    dir: TempDir,
}

impl TpmState {
    /// Runs `swtpm_setup` with a fresh local CA: RSA 2048 and ECC P-384 EKs with certificates
    /// in NV (and written to `certs/`), a platform certificate, the SHA-256 PCR bank.
    pub(crate) fn manufacture() -> Self {
        for tool in TOOLS {
            require(tool);
        }
        let dir = tempfile::Builder::new()
            .prefix("swtpm-test-")
            .tempdir()
            .expect("temp dir");
        let root = dir.path();
        for sub in ["ca", "state", "certs"] {
            fs::create_dir(root.join(sub)).expect("mkdir");
        }
        let ca = root.join("ca");
        fs::write(
            root.join("swtpm-localca.conf"),
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n",
                ca = ca.display()
            ),
        )
        .expect("write swtpm-localca.conf");
        fs::write(
            root.join("swtpm-localca.options"),
            "--platform-manufacturer KMS-Test\n--platform-version 2.1\n--platform-model swtpm\n",
        )
        .expect("write swtpm-localca.options");
        fs::write(
            root.join("swtpm_setup.conf"),
            format!(
                "create_certs_tool = {tool}\ncreate_certs_tool_config = {root}/swtpm-localca.conf\ncreate_certs_tool_options = {root}/swtpm-localca.options\nactive_pcr_banks = sha256\n",
                tool = require("swtpm_localca").display(),
                root = root.display()
            ),
        )
        .expect("write swtpm_setup.conf");
        let out = Command::new(require("swtpm_setup"))
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(root.join("state"))
            .arg("--create-ek-cert")
            .arg("--create-platform-cert")
            .arg("--config")
            .arg(root.join("swtpm_setup.conf"))
            .arg("--write-ek-cert-files")
            .arg(root.join("certs"))
            .arg("--pcr-banks")
            .arg("sha256")
            .output()
            .expect("run swtpm_setup");
        assert!(
            out.status.success(),
            "swtpm_setup failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    /// The temporary directory (tpm2-tools run in it).
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The local CA's root certificate (PEM).
    pub(crate) fn root_ca_pem(&self) -> Vec<u8> {
        fs::read(self.dir().join("ca/swtpm-localca-rootca-cert.pem")).expect("root CA certificate")
    }

    /// The local CA's intermediate (the EK certificates' issuer; PEM).
    pub(crate) fn issuer_ca_pem(&self) -> Vec<u8> {
        fs::read(self.dir().join("ca/issuercert.pem")).expect("issuer CA certificate")
    }

    /// An EK certificate as swtpm_setup wrote it: `rsa2048` or `secp384r1`.
    pub(crate) fn ek_cert_file(&self, kind: &str) -> Vec<u8> {
        fs::read(self.dir().join(format!("certs/ek-{kind}.crt"))).expect("EK certificate file")
    }

    /// Starts `swtpm socket` on this state.
    pub(crate) fn start(self) -> Swtpm {
        let swtpm = require("swtpm");
        let mut last_error = String::new();
        for _ in 0..10 {
            let port = free_port_pair();
            let log = fs::File::create(self.dir().join("swtpm.log")).expect("swtpm log");
            let mut child = Command::new(&swtpm)
                .arg("socket")
                .arg("--tpm2")
                .arg("--tpmstate")
                .arg(format!("dir={}", self.dir().join("state").display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn swtpm");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "swtpm exited with {status}: {}",
                        fs::read_to_string(self.dir().join("swtpm.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
                {
                    return Swtpm {
                        child,
                        port,
                        state: self,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "swtpm did not listen within 10 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start swtpm: {last_error}");
    }
}

/// Two consecutive free ports on the loopback (server, control). Another process may take them
/// before swtpm binds: the caller retries.
fn free_port_pair() -> u16 {
    loop {
        let first = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = first.local_addr().expect("addr").port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A running swtpm, killed on drop.
pub(crate) struct Swtpm {
    child: Child,
    port: u16,
    state: TpmState,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::ops::Deref for Swtpm {
    type Target = TpmState;

    fn deref(&self) -> &TpmState {
        &self.state
    }
}

impl Swtpm {
    /// A fresh TPM, manufactured and running.
    pub(crate) fn new() -> Self {
        TpmState::manufacture().start()
    }

    /// The TCTI for tss-esapi and tpm2-tools.
    pub(crate) fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Our attester, connected. swtpm serves one client at a time: drop it before running
    /// tpm2-tools.
    pub(crate) fn attester(&self) -> Tpm {
        Tpm::open(&self.tcti()).expect("connect to swtpm")
    }

    /// Runs a tpm2-tools command in the test directory against this TPM.
    pub(crate) fn tpm2_output(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(require(tool))
            .args(args)
            .current_dir(self.dir())
            .env("TPM2TOOLS_TCTI", self.tcti())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    /// Runs a tpm2-tools command that must succeed, then flushes transient objects (swtpm holds
    /// three and tpm2-tools leaves what it loaded).
    pub(crate) fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.tpm2_output(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flush = self.tpm2_output("tpm2_flushcontext", &["-t"]);
        assert!(flush.status.success(), "tpm2_flushcontext -t failed");
        out
    }

    /// Reads a file the tools wrote in the test directory.
    pub(crate) fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.dir().join(name)).unwrap_or_else(|e| match e.kind() {
            ErrorKind::NotFound => panic!("{name} was not written"),
            _ => panic!("read {name}: {e}"),
        })
    }

    /// Writes a file in the test directory.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) {
        fs::write(self.dir().join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}
