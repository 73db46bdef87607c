//! What `kms-agent` prints: one JSON document on stdout with `--output json`, short lines
//! otherwise, and errors on stderr. It must never print the HPKE private key or the token, and
//! a data key or plaintext only where an --insecure-print-* flag asked for it.

use std::io::Write as _;

use serde_json::Value;

use crate::cli::OutputFormat;
use crate::error::Error;

/// Prints results in the chosen format.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Printer {
    format: OutputFormat,
}

impl Printer {
    pub(crate) fn new(format: OutputFormat) -> Self {
        Self { format }
    }

    /// Prints `json` or, for humans, what `human` renders.
    pub(crate) fn emit(&self, json: &Value, human: impl FnOnce() -> String) -> Result<(), Error> {
        let mut text = match self.format {
            OutputFormat::Json => serde_json::to_string_pretty(json).map_err(|e| Error::local(e.to_string()))?,
            OutputFormat::Human => human(),
        };
        if !text.ends_with('\n') {
            text.push('\n');
        }
        stdout(text.as_bytes())
    }

    /// Reports a failed command: the message on stderr, and in JSON mode the error document on
    /// stdout as well, so a script always gets one document.
    pub(crate) fn error(&self, e: &Error) {
        let _ = writeln!(std::io::stderr().lock(), "kms-agent: {e}");
        if self.format == OutputFormat::Json {
            if let Ok(doc) = serde_json::to_string_pretty(&e.to_json()) {
                let _ = stdout(format!("{doc}\n").as_bytes());
            }
        }
    }
}

/// Writes to stdout; a failed write (full disk behind a redirect) is an error, not a panic.
pub(crate) fn stdout(bytes: &[u8]) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        // The reader (e.g. `| head`) has stopped reading: nothing is left to tell it.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| Error::local(format!("cannot write to stdout: {e}"))),
    }
}

/// A warning on stderr.
pub(crate) fn warn(what: &str) {
    let _ = writeln!(std::io::stderr().lock(), "warning: {what}");
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC, e.g. `2025-03-01T12:00:00Z`.
pub(crate) fn time(unix_ms: i64) -> String {
    kms_core::rfc3339_utc(unix_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0), "1970-01-01T00:00:00Z");
        assert_eq!(time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(time(1_735_689_599_999), "2024-12-31T23:59:59Z");
    }
}
