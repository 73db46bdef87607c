//! Command-line helpers shared by `kmsctl` and `kms-agent` (feature `cli`), in the manner of
//! rage's `cli_common`: each binary keeps its commands, its messages and its hints; what they do
//! alike lives here once. It must never print a secret: output helpers print what they are given,
//! and file helpers never show a file's contents.
//!
//! - [`ConnectionArgs`]: the connection options (URL, CA, client certificate and key, server
//!   name) to `#[command(flatten)]`, named per binary through [`ConnectionFlags`].
//! - [`NodeTrustArgs`]: which kmsd to trust (`--node-policy FILE`, `--danger-unattested-kmsd`),
//!   read into a [`crate::NodeTrust`]; flattened the same way, with [`NodeTrustFlags`].
//! - [`report`]: the exit codes, the [`Report`] of a failed command, the [`Printer`] of results
//!   and errors (stdout, JSON), and [`run`], the end of every `main`.
//! - [`files`]: inputs, certificate files (DER or PEM), and outputs created with their final
//!   mode (0600 for secrets).
//! - [`parse`]: the small argument languages both binaries accept (`K=V`).

mod args;
pub mod files;
pub mod parse;
pub mod report;
mod trust;

use std::fmt;
use std::path::Path;

pub use args::{ConnectionArgs, ConnectionFlags, PlaintextWithTlsFiles};
pub use report::{exit, run, OutputFormat, Printer, Report, B64};
pub use trust::{NodeTrustArgs, NodeTrustFlags};

/// The failure of a helper here, for the binary's own error (both map it with `From`): the
/// arguments do not fit together (exit code 2), or a local file or stdout failed (exit code 4).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// Arguments that clap accepted but that do not make sense together.
    #[error("{0}")]
    Usage(String),
    /// A local file is missing, unreadable, malformed or in the way; stdout cannot be written.
    #[error("{0}")]
    Local(String),
}

impl Failure {
    /// A usage error.
    pub fn usage(what: impl fmt::Display) -> Self {
        Self::Usage(what.to_string())
    }

    /// A local error.
    pub fn local(what: impl fmt::Display) -> Self {
        Self::Local(what.to_string())
    }

    /// A file operation failed: `cannot ACTION PATH: E`.
    pub fn file(action: &str, path: &Path, e: impl fmt::Display) -> Self {
        Self::Local(format!("cannot {action} {}: {e}", path.display()))
    }

    /// Its exit code: [`exit::USAGE`] or [`exit::LOCAL`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Local(_) => exit::LOCAL,
        }
    }
}
