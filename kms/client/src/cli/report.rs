//! How a command ends: its result on stdout (short lines, or one JSON document with
//! `--output json`), or its error on stderr (and in JSON mode as a document on stdout too, so a
//! script always gets one), and one of the exit codes documented in `docs/operations.md`. It must
//! never print anything it was not handed.

use std::borrow::Borrow;
use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;

use serde_json::Value;

use super::Failure;

/// Base64 (standard alphabet, padded): how blobs, keys and certificates are printed.
pub const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Exit codes, as documented in `kmsctl --help` and `kms-agent --help` (and kmsctl's in
/// `docs/operations.md`): they tell a script *whose* problem it was.
pub mod exit {
    /// The server refused, or a verification (or the server's answer) was refused.
    pub const REFUSED: u8 = 1;
    /// Bad usage (clap's own code for its errors).
    pub const USAGE: u8 = 2;
    /// The server (or a database) cannot be reached.
    pub const UNREACHABLE: u8 = 3;
    /// A local file, key or device is missing, unreadable, malformed or in the way.
    pub const LOCAL: u8 = 4;
}

/// The error of a binary, as it is reported.
pub trait Report: fmt::Display {
    /// One of the [`exit`] codes.
    fn exit_code(&self) -> u8;
    /// The document printed on stdout in `--output json` mode (`{"ok": false, ...}`).
    fn to_json(&self) -> Value;
    /// What to do about it, printed on its own `hint:` line.
    fn hint(&self) -> Option<&str> {
        None
    }
    /// Whether it is a verdict (a verification result: the answer, not a failure of the
    /// program), printed without the program's name.
    fn is_verdict(&self) -> bool {
        false
    }
}

/// The output format (`--output`): `human`, short lines for people, or `json`, one JSON document
/// on stdout.
// The variants have no doc comments: clap would show them as per-value help, and both binaries'
// `--help` lists the values alone.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

/// Prints results in the chosen format, and errors.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    program: &'static str,
    format: OutputFormat,
}

impl Printer {
    /// For `program` (its name prefixes error messages), in `format`.
    pub fn new(program: &'static str, format: OutputFormat) -> Self {
        Self { program, format }
    }

    /// Whether results are JSON.
    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints `json` or, for people, what `human` renders (a final newline added if missing).
    pub fn emit<E: From<Failure>>(&self, json: impl Borrow<Value>, human: impl FnOnce() -> String) -> Result<(), E> {
        let mut text = match self.format {
            OutputFormat::Json => serde_json::to_string_pretty(json.borrow()).map_err(Failure::local)?,
            OutputFormat::Human => human(),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        Ok(stdout(text.as_bytes())?)
    }

    /// Reports a failed command: `PROGRAM: message` (a verdict as it is) and its hint on
    /// stderr, and in JSON mode the error document on stdout as well.
    pub fn error(&self, e: &dyn Report) {
        let mut err = std::io::stderr().lock();
        let _ = if e.is_verdict() {
            writeln!(err, "{e}")
        } else {
            writeln!(err, "{}: {e}", self.program)
        };
        if let Some(h) = e.hint() {
            let _ = writeln!(err, "hint: {h}");
        }
        if self.is_json() {
            if let Ok(doc) = serde_json::to_string_pretty(&e.to_json()) {
                let _ = stdout(format!("{doc}\n").as_bytes());
            }
        }
    }
}

/// Writes to stdout; a failed write (full disk behind a redirect) is an error, not a panic, and
/// a reader that stopped reading (`| head`) is not an error.
pub fn stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| Failure::local(format!("cannot write to stdout: {e}"))),
    }
}

/// A warning on stderr: `warning: WHAT`.
pub fn warn(what: &str) {
    let _ = writeln!(std::io::stderr().lock(), "warning: {what}");
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2025-03-01T12:00:00Z`.
pub fn time(unix_ms: i64) -> String {
    kms_core::rfc3339_utc(unix_ms)
}

/// The end of `main`: runs `command` on a small single-threaded runtime and turns its outcome
/// into the exit code, reporting an error with `printer`.
pub fn run<E, F>(printer: &Printer, command: F) -> ExitCode
where
    E: Report + From<Failure>,
    F: Future<Output = Result<(), E>>,
{
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| E::from(Failure::local(format!("cannot start the async runtime: {e}"))))
        .and_then(|rt| rt.block_on(command));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            printer.error(&e);
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(time(1_735_689_599_999), "2024-12-31T23:59:59Z");
        assert_eq!(time(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn failures_have_their_exit_codes() {
        assert_eq!(Failure::usage("x").exit_code(), exit::USAGE);
        let e = Failure::file("read", std::path::Path::new("/a/b"), "gone");
        assert_eq!(e.to_string(), "cannot read /a/b: gone");
        assert_eq!(e.exit_code(), exit::LOCAL);
    }
}
