//! Local files: inputs (AK file, blobs, intermediates) and outputs (keys, plaintext, blobs, the
//! AK and the enrolment request), through `kms_client::cli::files`: outputs never replace a file
//! unless asked to (`--force`), and secret outputs are created with mode 0600 from the start;
//! certificates are read as DER or PEM, as kmsctl reads them. It must never print or log a
//! secret file's contents.

pub(crate) use kms_client::cli::files::{
    check_outputs, read, read_certificates, read_prefix, read_text, write_output, Output,
};
