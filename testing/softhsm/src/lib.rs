//! SoftHSM2 for tests: one process-wide configuration ([`conf_path`]) whose token directory is a
//! temporary directory, and a freshly initialised token per test ([`init_token`]) with random
//! PINs. Tests pass [`CONF_ENV`] to the processes they spawn (`kmsd`, `kmsctl`) so those see the
//! same tokens.
//!
//! Facts the fixture is built around:
//! - SoftHSM2 reads `SOFTHSM2_CONF` once, in `C_Initialize`: [`conf_path`] sets it before any
//!   test can load the module, and every test must call it (directly or through [`init_token`])
//!   before touching PKCS#11.
//! - SoftHSM2 2.6.1 scans the token directory only in `C_Initialize`: a token made after the
//!   process loaded the module is invisible to it. A test binary makes all its tokens before it
//!   opens the first one (e.g. in one `OnceLock`); spawned processes see every token.
//! - `softhsm2-util --init-token --free` always leaves one more free slot, so any number of tokens
//!   can be made, each its own directory under `tokens/`.
//! - The PINs are on `softhsm2-util`'s command line: acceptable for a throw-away test token,
//!   never for a real one.
//!
//! This crate is for tests and demos, never for a release build. It depends only on `tempfile`.
#![warn(missing_docs)]

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tempfile::TempDir;

/// The environment variable through which SoftHSM2 finds its configuration file.
pub const CONF_ENV: &str = "SOFTHSM2_CONF";
/// The environment variable that overrides where the SoftHSM2 PKCS#11 module is.
pub const MODULE_ENV: &str = "SOFTHSM2_MODULE";

const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 PKCS#11 module: `$SOFTHSM2_MODULE` if set, else the first Debian/Ubuntu path that
/// exists. Fails the test, saying how to install it, if there is none.
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os(MODULE_ENV) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{MODULE_ENV}={} is not a file", p.display());
        return p;
    }
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the SoftHSM2 PKCS#11 module is not installed (looked in {MODULE_CANDIDATES:?}): install the \
                 `softhsm2` package (scripts/setup) or set {MODULE_ENV} to libsofthsm2.so"
            )
        })
}

struct Conf {
    // Kept alive for the whole process: the tokens live here.
    _dir: TempDir,
    path: PathBuf,
}

static CONF: OnceLock<Conf> = OnceLock::new();

/// The process-wide `softhsm2.conf` (token directory in a temporary directory, file object store,
/// errors-only logging). The first call creates it and sets [`CONF_ENV`] in this process's
/// environment, which child processes inherit; it must happen before any `C_Initialize` of the
/// SoftHSM2 module in this process.
pub fn conf_path() -> &'static Path {
    &CONF
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("softhsm-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temporary directory for SoftHSM2: {e}"));
            let tokens = dir.path().join("tokens");
            fs::create_dir(&tokens).unwrap_or_else(|e| panic!("cannot create {}: {e}", tokens.display()));
            let path = dir.path().join("softhsm2.conf");
            let conf = format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            );
            fs::write(&path, conf).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
            // Tests call this before loading the module; the variable is only ever set to this
            // one value, so concurrent readers see either nothing or the final path.
            std::env::set_var(CONF_ENV, &path);
            Conf { _dir: dir, path }
        })
        .path
}

/// An initialised SoftHSM2 token of the process-wide configuration. `Debug` shows the label only.
pub struct TestToken {
    /// The token label.
    pub label: String,
    /// The user PIN (random, 16 hex digits).
    pub user_pin: String,
    /// The security officer PIN (random, 16 hex digits).
    pub so_pin: String,
}

impl std::fmt::Debug for TestToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestToken")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl TestToken {
    /// Writes the user PIN (no newline) to `dir/<label>.pin`, mode 0600, and returns the path.
    pub fn pin_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.pin", self.label));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // The mode above applies only to a new file; make sure of it for an old one too.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
        f.write_all(self.user_pin.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// The environment a child process needs to see this token: `(SOFTHSM2_CONF, path)`.
    pub fn env(&self) -> (&'static str, &'static Path) {
        (CONF_ENV, conf_path())
    }
}

/// `n` random bytes from the OS, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// `prefix` with a random suffix, for token and key labels unique per test (SoftHSM2 token labels
/// are at most 32 bytes: keep `prefix` under 23).
pub fn unique_label(prefix: &str) -> String {
    format!("{prefix}-{}", random_hex(4))
}

/// Initialises a fresh token labelled `label` in the first free slot, with random user and SO PINs.
pub fn init_token(label: &str) -> TestToken {
    assert!(
        label.len() <= 32,
        "SoftHSM2 token labels are at most 32 bytes: {label:?}"
    );
    let conf = conf_path();
    // `softhsm2-util --init-token --free` picks the first free slot: two at once in one process
    // race for it ("Could not get info about the token in slot 0"). One at a time.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = INIT.lock().unwrap_or_else(|p| p.into_inner());
    let token = TestToken {
        label: label.to_owned(),
        user_pin: random_hex(8),
        so_pin: random_hex(8),
    };
    let out = Command::new("softhsm2-util")
        .env(CONF_ENV, conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", &token.user_pin, "--so-pin", &token.so_pin])
        .output()
        .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}): install the `softhsm2` package (scripts/setup)"));
    assert!(
        out.status.success(),
        "softhsm2-util --init-token --label {label} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_and_token() {
        let conf = conf_path();
        assert!(conf.is_file());
        assert_eq!(std::env::var_os(CONF_ENV).as_deref(), Some(conf.as_os_str()));
        assert!(module_path().is_file());
        let label = unique_label("fixture");
        let token = init_token(&label);
        let out = Command::new("softhsm2-util").arg("--show-slots").output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains(&label));
        let dir = tempfile::tempdir().unwrap();
        let pin = token.pin_file(dir.path());
        assert_eq!(fs::read_to_string(&pin).unwrap(), token.user_pin);
        assert_eq!(fs::metadata(&pin).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
