//! Housekeeping: expired attestation challenges and TPM enrolment attempts are purged.

use crate::storage::StoreError;

/// Housekeeping: forgets attestation challenges and TPM enrolment attempts an hour after they
/// expired (so a late replay is still named as one), except the attempts that a pending
/// enrolment proposal names, whose approvals may take the proposal's whole lifetime.
pub(crate) async fn purge_attestation(store: &crate::storage::Store, now: i64) -> Result<u64, StoreError> {
    let mut awaiting = std::collections::BTreeSet::new();
    for p in store.pending_proposals("enroll_hardware", now).await? {
        if let Some(id) = crate::wire::quorum::awaited_tpm_enrollment(&p.payload) {
            awaiting.insert(id);
        }
    }
    store.purge_attestation(now - 3_600_000, &awaiting).await
}
