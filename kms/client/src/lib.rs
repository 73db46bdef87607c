//! What the clients of `kmsd` share: `kmsctl` (the admin CLI) and `kms-agent` (the workload side).
//!
//! - [`channel`]: one builder for the gRPC channel: plain `http://` (dev mode, loopback) or TLS
//!   with the server's CA, an optional client identity (mutual TLS), a server name and timeouts.
//! - [`Error`] and [`Refusal`]: a failed call read into a type. A status that carries one of
//!   `kmsd`'s stable reasons ([`kms_proto::Reason`]) is a [`Refusal`], matched on its variant;
//!   one without a reason made by the client's own transport is [`Error::Unreachable`].
//! - [`NodeTrust`]: which kmsd nodes are trusted to answer (a node policy, or knowingly none);
//!   [`nodes::VerifiedNodes`]: the nodes verified under it in a run.
//! - [`signed`]: calls whose answer the answering node signs, checked over the bytes received.
//! - [`sealed`]: plaintext sealed to a verified node's HPKE key for `Encrypt`.
//! - `cli` (feature `cli`): the command-line helpers both binaries use: clap connection
//!   and node-trust arguments, error reporting with the documented exit codes, stdout and JSON
//!   output, output files created with their final mode, certificate files, and value parsers.
//!
//! This crate never logs, and never puts key material, tokens or file contents in an error: it
//! reads TLS keys only to hand them to the TLS stack.
#![warn(missing_docs)]

pub mod channel;
mod error;
pub mod nodes;
pub mod sealed;
pub mod signed;
mod trust;

#[cfg(feature = "cli")]
pub mod cli;

pub use channel::{ChannelConfig, TlsFiles, DEFAULT_CALL_TIMEOUT, DEFAULT_CONNECT_TIMEOUT};
pub use error::{Error, Refusal};
pub use kms_proto::Reason;
pub use trust::NodeTrust;
