//! The software TPM fixture for end-to-end tests: the `swtpm-fixture` crate (testing/swtpm),
//! shared with the attestation crate's TPM tests. See its docs for what it runs and why.

pub use swtpm_fixture::*;
