//! What the attestation TPM tests add to the shared software TPM (`swtpm-fixture`): our
//! attester connected to it, and the clock the EK checks take. Everything about running swtpm
//! lives in the fixture crate, never here.

use std::time::{SystemTime, UNIX_EPOCH};

use attestation::attester::tpm::Tpm;
pub(crate) use swtpm_fixture::{Swtpm, TpmState};

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Opens our attester (tss-esapi) on a running swtpm.
pub(crate) trait SwtpmExt {
    /// Our attester, connected. swtpm serves one client at a time: drop it before running
    /// tpm2-tools.
    fn attester(&self) -> Tpm;
}

impl SwtpmExt for Swtpm {
    fn attester(&self) -> Tpm {
        Tpm::open(&self.tcti()).expect("connect to swtpm")
    }
}
