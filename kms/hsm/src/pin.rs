//! Where a token's user PIN comes from: an environment variable, a file only its owner can read,
//! or a no-echo prompt on the terminal. There is deliberately no way to give a PIN on the command
//! line (other users can read argv in /proc). A [`Pin`] zeroizes on drop and is never printed.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::HsmError;

/// A token user PIN. Zeroized on drop; no `Debug`, `Clone` or `Display`.
pub struct Pin(Zeroizing<Vec<u8>>);

impl Pin {
    /// Takes a PIN obtained some other way (e.g. from a secret store). Empty PINs are refused.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Result<Self, HsmError> {
        if bytes.is_empty() {
            return Err(HsmError::PinSource("the PIN is empty".into()));
        }
        Ok(Self(bytes))
    }

    /// The PIN bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

/// Where to read a PIN from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinSource {
    /// The named environment variable.
    Env(String),
    /// A file readable only by its owner (mode 0600 or 0400); one trailing newline is ignored.
    File(PathBuf),
    /// Ask on the controlling terminal (`/dev/tty`), without echo.
    Prompt,
}

impl FromStr for PinSource {
    type Err = HsmError;

    /// Parses `env:VAR`, `file:PATH` or `prompt`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(var) = s.strip_prefix("env:").filter(|v| !v.is_empty()) {
            Ok(Self::Env(var.to_owned()))
        } else if let Some(path) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
            Ok(Self::File(PathBuf::from(path)))
        } else if s == "prompt" {
            Ok(Self::Prompt)
        } else {
            Err(HsmError::PinSource(format!(
                "invalid PIN source {s:?}: expected env:VAR, file:PATH or prompt (a PIN is never given on the command line)"
            )))
        }
    }
}

impl PinSource {
    /// Reads the PIN.
    pub fn read(&self) -> Result<Pin, HsmError> {
        match self {
            Self::Env(var) => {
                let value = std::env::var_os(var)
                    .ok_or_else(|| HsmError::PinSource(format!("environment variable {var} is not set")))?;
                Pin::new(Zeroizing::new(value.into_encoded_bytes()))
                    .map_err(|_| HsmError::PinSource(format!("environment variable {var} is empty")))
            }
            Self::File(path) => read_file(path),
            Self::Prompt => prompt(),
        }
    }
}

fn strip_newline(bytes: &mut Zeroizing<Vec<u8>>) {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
}

fn read_file(path: &std::path::Path) -> Result<Pin, HsmError> {
    let shown = path.display();
    let mut file = File::open(path).map_err(|e| HsmError::PinSource(format!("cannot open PIN file {shown}: {e}")))?;
    // Checked on the open file, so the file read is the file checked.
    let mode = file
        .metadata()
        .map_err(|e| HsmError::PinSource(format!("cannot stat PIN file {shown}: {e}")))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(HsmError::PinSource(format!(
            "PIN file {shown} is accessible by group or others (mode {:o}); run `chmod 600 {shown}`",
            mode & 0o777
        )));
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(64));
    file.read_to_end(&mut bytes)
        .map_err(|e| HsmError::PinSource(format!("cannot read PIN file {shown}: {e}")))?;
    strip_newline(&mut bytes);
    Pin::new(bytes).map_err(|_| HsmError::PinSource(format!("PIN file {shown} is empty")))
}

/// Restores the terminal's modes when dropped, also on error paths.
struct EchoOff<'a> {
    tty: &'a File,
    saved: rustix::termios::Termios,
}

impl Drop for EchoOff<'_> {
    fn drop(&mut self) {
        // Nothing useful can be done if restoring fails; the shell's `reset` fixes the terminal.
        let _ = rustix::termios::tcsetattr(self.tty, rustix::termios::OptionalActions::Now, &self.saved);
    }
}

fn prompt() -> Result<Pin, HsmError> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let err = |what: &str, e: &dyn std::fmt::Display| HsmError::PinSource(format!("{what}: {e}"));
    let mut tty = File::options()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| err("no terminal to prompt for the PIN on (use env:VAR or file:PATH)", &e))?;
    let saved = tcgetattr(&tty).map_err(|e| err("cannot read the terminal modes", &e))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    tcsetattr(&tty, OptionalActions::Flush, &quiet).map_err(|e| err("cannot turn off echo", &e))?;
    let guard = EchoOff { tty: &tty, saved };
    (&tty)
        .write_all(b"PKCS#11 user PIN: ")
        .map_err(|e| err("cannot write the prompt", &e))?;
    // Byte by byte, so no buffer outside `bytes` ever holds the PIN.
    let mut bytes = Zeroizing::new(Vec::with_capacity(64));
    let mut byte = [0u8; 1];
    loop {
        match (&tty).read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => bytes.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err("cannot read the PIN from the terminal", &e)),
        }
    }
    zeroize::Zeroize::zeroize(&mut byte);
    drop(guard);
    let _ = tty.flush();
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Pin::new(bytes).map_err(|_| HsmError::PinSource("no PIN was entered".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    fn write(path: &std::path::Path, mode: u32, content: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .unwrap();
        f.write_all(content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn parse_sources() {
        assert_eq!("env:X".parse::<PinSource>().unwrap(), PinSource::Env("X".into()));
        assert_eq!(
            "file:/a/b".parse::<PinSource>().unwrap(),
            PinSource::File("/a/b".into())
        );
        assert_eq!("prompt".parse::<PinSource>().unwrap(), PinSource::Prompt);
        assert!("1234".parse::<PinSource>().is_err());
        assert!("env:".parse::<PinSource>().is_err());
    }

    #[test]
    fn file_pin() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok");
        write(&ok, 0o600, b"1234\n");
        assert_eq!(PinSource::File(ok).read().unwrap().expose_secret(), b"1234");
        let crlf = dir.path().join("crlf");
        write(&crlf, 0o400, b"12 34\r\n\n");
        // Only one trailing newline is removed.
        assert_eq!(PinSource::File(crlf).read().unwrap().expose_secret(), b"12 34\r\n");
        let open = dir.path().join("open");
        write(&open, 0o644, b"1234");
        let e = PinSource::File(open).read().err().unwrap().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        let empty = dir.path().join("empty");
        write(&empty, 0o600, b"\n");
        assert!(PinSource::File(empty).read().is_err());
        assert!(PinSource::File(dir.path().join("missing")).read().is_err());
    }

    #[test]
    fn env_pin() {
        std::env::set_var("KMS_HSM_TEST_PIN_SOURCE", "9876");
        let pin = PinSource::Env("KMS_HSM_TEST_PIN_SOURCE".into()).read().unwrap();
        assert_eq!(pin.expose_secret(), b"9876");
        assert!(PinSource::Env("KMS_HSM_TEST_PIN_UNSET".into()).read().is_err());
    }
}
