//! A real software TPM per test: `swtpm_setup` manufactures a TPM state whose EK certificates
//! (RSA 2048 and ECC P-384, in NV and in `certs/`) are signed by a local CA made in the same
//! temporary directory ([`TpmState`]), then `swtpm socket` serves it on free loopback ports until
//! the [`Swtpm`] is dropped. The CA certificates are the TPM-manufacturer CA bundle a verifier
//! or a server under test is configured with (`attestation.tpm_ek_ca_bundle`).
//!
//! Facts the fixture is built around:
//! - swtpm serves one client at a time: drop a tss-esapi context before running tpm2-tools.
//! - swtpm holds only three transient objects, and tpm2-tools leaves loaded what it loaded:
//!   [`Swtpm::tpm2`] flushes transients after every command.
//! - tss-esapi ignores `swtpm:path=`, so the TCTI is `swtpm:host=…,port=…` on TCP.
//! - `swtpm socket --tpmstate dir=` is given an absolute path: the temporary directory is made
//!   under an absolute temp dir, so the state is found whatever the working directory.
//!
//! Missing tools fail the test with the fix (scripts/setup). This crate must never depend on
//! `attestation`, which uses it as a dev-dependency; it is for tests and demos, never for a
//! release build.
#![warn(missing_docs)]

use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The tools the fixture and its helpers run.
const TOOLS: &[&str] = &["swtpm", "swtpm_setup", "swtpm_localca", "tpm2_flushcontext"];

/// The full path of `tool` on PATH; fails the test, saying how to install it, if absent.
pub fn require(tool: &str) -> PathBuf {
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

/// A manufactured TPM state with its local CA, in a temporary directory removed on drop; not
/// running until [`TpmState::start`].
#[derive(Debug)]
pub struct TpmState {
    dir: TempDir,
}

impl TpmState {
    /// Runs `swtpm_setup` with a fresh local CA: RSA 2048 and ECC P-384 EKs with certificates
    /// in NV (and written to `certs/`), a platform certificate, the SHA-256 PCR bank.
    pub fn manufacture() -> Self {
        for tool in TOOLS {
            require(tool);
        }
        let tmp = std::path::absolute(std::env::temp_dir()).expect("absolute temp dir");
        let dir = tempfile::Builder::new()
            .prefix("swtpm-")
            .tempdir_in(tmp)
            .expect("temp dir");
        manufacture(dir.path());
        Self { dir }
    }

    /// Starts `swtpm socket` on this state.
    pub fn start(self) -> Swtpm {
        let mut tpm = Swtpm {
            child: None,
            port: 0,
            state: self,
        };
        tpm.run();
        tpm
    }

    /// The temporary directory: tpm2-tools run in it, and files they write are read from it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The local CA's root certificate (PEM).
    pub fn root_ca_pem(&self) -> Vec<u8> {
        fs::read(self.dir().join("ca/swtpm-localca-rootca-cert.pem")).expect("root CA certificate")
    }

    /// The local CA's intermediate, the issuer of the EK certificates (PEM).
    pub fn issuer_ca_pem(&self) -> Vec<u8> {
        fs::read(self.dir().join("ca/issuercert.pem")).expect("issuer CA certificate")
    }

    /// The local CA's certificates (root and the issuer of the EK certificates), PEM: the
    /// TPM-manufacturer CA bundle for the server.
    pub fn ca_bundle_pem(&self) -> Vec<u8> {
        let mut pem = self.root_ca_pem();
        if !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend(self.issuer_ca_pem());
        pem
    }

    /// [`TpmState::ca_bundle_pem`] in a file, for `attestation.tpm_ek_ca_bundle`.
    pub fn ca_bundle_path(&self) -> PathBuf {
        let path = self.dir().join("ek-ca-bundle.pem");
        if !path.exists() {
            fs::write(&path, self.ca_bundle_pem()).expect("write the EK CA bundle");
        }
        path
    }

    /// An EK certificate (DER) as swtpm_setup wrote it: `rsa2048` or `secp384r1`.
    #[track_caller]
    pub fn ek_certificate(&self, kind: &str) -> Vec<u8> {
        self.read(&format!("certs/ek-{kind}.crt"))
    }

    /// A certificate for the EK of `kind` (`rsa2048` or `secp384r1`) issued by this state's
    /// EK-issuing CA with the openssl x509v3 `extensions` (an `[ext]` section's lines) and
    /// nothing else: what a manufacturer's CA key signs that is not an EK certificate under the
    /// TCG profile. DER.
    #[track_caller]
    pub fn issue_by_ek_ca(&self, kind: &str, extensions: &str) -> Vec<u8> {
        let dir = self.dir();
        let pubkey = Command::new("openssl")
            .args(["x509", "-inform", "der", "-noout", "-pubkey", "-in"])
            .arg(dir.join(format!("certs/ek-{kind}.crt")))
            .output()
            .unwrap_or_else(|e| panic!("openssl (scripts/setup installs it): {e}"));
        assert!(
            pubkey.status.success(),
            "openssl -pubkey: {}",
            String::from_utf8_lossy(&pubkey.stderr)
        );
        self.write("issued.pub.pem", &pubkey.stdout);
        self.write("issued.ext", format!("[ext]\n{extensions}\n").as_bytes());
        let out = Command::new("openssl")
            .args([
                "x509",
                "-new",
                "-subj",
                "/CN=issued by the EK CA",
                "-days",
                "30",
                "-outform",
                "der",
            ])
            .arg("-force_pubkey")
            .arg(dir.join("issued.pub.pem"))
            .arg("-CA")
            .arg(dir.join("ca/issuercert.pem"))
            .arg("-CAkey")
            .arg(dir.join("ca/signkey.pem"))
            .arg("-extfile")
            .arg(dir.join("issued.ext"))
            .args(["-extensions", "ext", "-out"])
            .arg(dir.join("issued.der"))
            .output()
            .unwrap_or_else(|e| panic!("openssl: {e}"));
        assert!(
            out.status.success(),
            "openssl x509 -new: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.read("issued.der")
    }

    /// Reads a file in [`TpmState::dir`] (what the tools wrote).
    #[track_caller]
    pub fn read(&self, name: &str) -> Vec<u8> {
        fs::read(self.dir().join(name)).unwrap_or_else(|e| match e.kind() {
            ErrorKind::NotFound => panic!("{name} was not written"),
            _ => panic!("read {name}: {e}"),
        })
    }

    /// Writes a file in [`TpmState::dir`].
    #[track_caller]
    pub fn write(&self, name: &str, bytes: &[u8]) {
        fs::write(self.dir().join(name), bytes).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}

/// A running software TPM on its [`TpmState`] (whose methods it derefs to), killed on drop, and
/// its directory removed.
#[derive(Debug)]
pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state: TpmState,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Deref for Swtpm {
    type Target = TpmState;

    fn deref(&self) -> &TpmState {
        &self.state
    }
}

impl Swtpm {
    /// A fresh TPM, manufactured ([`TpmState::manufacture`]) and running.
    pub fn start() -> Self {
        TpmState::manufacture().start()
    }

    /// Stops swtpm and starts it again on the same state, as a reboot does: PCRs are reset and
    /// the reset counter advances; keys, NV and the EK certificates stay. It listens on the same
    /// ports when they are still free, else on others: take [`Swtpm::tcti`] again.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `swtpm socket` on free ports (retrying when another process takes them first).
    fn run(&mut self) {
        let swtpm = require("swtpm");
        let log_path = self.dir().join("swtpm.log");
        let mut last_error = String::new();
        let mut previous = (self.port != 0).then_some(self.port);
        for _ in 0..10 {
            let port = previous.take().unwrap_or_else(free_port_pair);
            let log = fs::File::create(&log_path).expect("swtpm log");
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
                        fs::read_to_string(&log_path).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && TcpStream::connect(("127.0.0.1", port + 1)).is_ok()
                {
                    self.child = Some(child);
                    self.port = port;
                    return;
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

    /// The TCTI for tss-esapi (`attestation::attester::tpm::Tpm::open`, `kms-agent --tcti`).
    /// tss-esapi ignores `swtpm:path=`, so it is host and port.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TCTI for tpm2-tools (`TPM2TOOLS_TCTI`, `-T`).
    pub fn tpm2_tools_tcti(&self) -> String {
        self.tcti()
    }

    /// The server port (the control port is the next one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs a tpm2-tools command in [`TpmState::dir`] against this TPM, whatever its outcome.
    pub fn tpm2_output(&self, tool: &str, args: &[&str]) -> Output {
        Command::new(require(tool))
            .args(args)
            .current_dir(self.dir())
            .env("TPM2TOOLS_TCTI", self.tpm2_tools_tcti())
            .output()
            .unwrap_or_else(|e| panic!("run {tool}: {e}"))
    }

    /// Runs a tpm2-tools command that must succeed, then flushes transient objects (swtpm holds
    /// three and tpm2-tools leaves what it loaded).
    #[track_caller]
    pub fn tpm2(&self, tool: &str, args: &[&str]) -> Output {
        let out = self.tpm2_output(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let flush = self.tpm2_output("tpm2_flushcontext", &["-t"]);
        assert!(
            flush.status.success(),
            "tpm2_flushcontext -t failed: {}",
            String::from_utf8_lossy(&flush.stderr)
        );
        out
    }

    /// Runs TPM2_ActivateCredential with tpm2-tools: writes `credential_file` (the format
    /// `tpm2_makecredential -o` writes) as `cred.blob`, opens the EK policy session
    /// (PolicySecret on the endorsement hierarchy), activates into the AK loaded from `ak_ctx`
    /// with the EK from `ek_ctx`, flushes the session, and returns the recovered secret.
    #[track_caller]
    pub fn activate_credential_with_tools(&self, ak_ctx: &str, ek_ctx: &str, credential_file: &[u8]) -> Vec<u8> {
        self.write("cred.blob", credential_file);
        self.tpm2("tpm2_startauthsession", &["--policy-session", "-S", "session.ctx"]);
        self.tpm2("tpm2_policysecret", &["-S", "session.ctx", "-c", "e"]);
        self.tpm2(
            "tpm2_activatecredential",
            &[
                "-c",
                ak_ctx,
                "-C",
                ek_ctx,
                "-i",
                "cred.blob",
                "-o",
                "secret.out",
                "-P",
                "session:session.ctx",
            ],
        );
        self.tpm2("tpm2_flushcontext", &["session.ctx"]);
        self.read("secret.out")
    }
}

/// Runs `swtpm_setup` in `root` with a fresh local CA: RSA 2048 and ECC P-384 EKs with
/// certificates in NV (and written to `certs/`), a platform certificate, the SHA-256 PCR bank.
fn manufacture(root: &Path) {
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
