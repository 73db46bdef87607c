//! Keeping key material out of swap. The root key, the KEKs, released data keys and `Encrypt`
//! plaintexts live in kmsd's heap; a page of it swapped out lands on a disk the infrastructure
//! operator holds (an SEV-SNP guest's swap is written through the host like any other disk
//! write, in clear unless the guest encrypts it). So kmsd locks all of its memory
//! (`mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: pages are locked as they are touched,
//! not all at once) before it reads a key, and a production server that cannot refuses to start
//! (docs/operations.md, "Memory").
//!
//! Locking everything as it is mapped is safe only where nothing can run out of the lock limit
//! later (a `malloc` past `RLIMIT_MEMLOCK` would fail): kmsd locks only with `CAP_IPC_LOCK` or an
//! unlimited `RLIMIT_MEMLOCK` (the kms package's unit sets `LimitMEMLOCK=infinity`).

use rustix::mm::{mlockall, MlockAllFlags};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// What kmsd does about its memory, from its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Production: lock, or refuse to start.
    Require,
    /// Dev mode: lock if the process may, warn if not.
    Try,
    /// `danger.allow_swap`: leave it swappable (a host without swap, or with encrypted swap).
    Off,
}

/// What happened.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Locked,
    /// Not locked, and why (`Policy::Try` only).
    Unlocked(String),
    /// `Policy::Off`.
    Allowed,
}

/// Locks kmsd's memory as `policy` asks; `Err` (the reason, for kmsd's refusal to start) only
/// under `Policy::Require`.
pub(crate) fn lock(policy: Policy) -> Result<Outcome, String> {
    if policy == Policy::Off {
        return Ok(Outcome::Allowed);
    }
    let attempt = may_lock_everything().and_then(|()| lock_all());
    match (attempt, policy) {
        (Ok(()), _) => Ok(Outcome::Locked),
        (Err(why), Policy::Try) => Ok(Outcome::Unlocked(why)),
        (Err(why), _) => Err(why),
    }
}

/// Whether every future mapping can be locked: `CAP_IPC_LOCK` (no limit applies), or an
/// unlimited `RLIMIT_MEMLOCK` (raised to its hard limit first when that one is unlimited).
fn may_lock_everything() -> Result<(), String> {
    let ipc_lock = rustix::thread::capabilities(None)
        .map(|c| c.effective.contains(rustix::thread::CapabilitySet::IPC_LOCK))
        .unwrap_or(false);
    let mut limit = getrlimit(Resource::Memlock);
    if limit.current.is_some() && limit.maximum.is_none() {
        let raised = Rlimit {
            current: None,
            maximum: None,
        };
        if setrlimit(Resource::Memlock, raised).is_ok() {
            limit = getrlimit(Resource::Memlock);
        }
    }
    unlimited_or_privileged(limit.current, ipc_lock)
}

/// The decision itself: `limit` is `RLIMIT_MEMLOCK`'s soft limit in bytes (`None`: unlimited).
fn unlimited_or_privileged(limit: Option<u64>, ipc_lock: bool) -> Result<(), String> {
    match limit {
        None => Ok(()),
        Some(_) if ipc_lock => Ok(()),
        Some(bytes) => Err(format!(
            "its locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, not unlimited, and it does not hold CAP_IPC_LOCK",
            bytes / 1024
        )),
    }
}

fn lock_all() -> Result<(), String> {
    let flags = MlockAllFlags::CURRENT | MlockAllFlags::FUTURE;
    match mlockall(flags | MlockAllFlags::ONFAULT) {
        Ok(()) => Ok(()),
        // Kernels before 4.4 have no MCL_ONFAULT: lock the pages at once instead.
        Err(rustix::io::Errno::INVAL) => mlockall(flags),
        Err(e) => Err(e),
    }
    .map_err(|e| format!("mlockall: {e}"))
}

/// kmsd's refusal to start when `Policy::Require` could not lock: what to change.
pub(crate) fn refusal(why: &str) -> String {
    format!(
        "kmsd cannot lock its memory, so the root key and KEKs could be written to swap: {why}. \
         Raise the limit (systemd: LimitMEMLOCK=infinity, as the kms package's unit does; a shell \
         run as root: ulimit -l unlimited), or, on a host without swap or with encrypted swap only, \
         set danger.allow_swap = true"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_only_where_no_later_mapping_can_fail_for_the_limit() {
        assert_eq!(unlimited_or_privileged(None, false), Ok(()));
        assert_eq!(unlimited_or_privileged(None, true), Ok(()));
        assert_eq!(unlimited_or_privileged(Some(8 << 20), true), Ok(()));
        let why = unlimited_or_privileged(Some(8 << 20), false).unwrap_err();
        assert!(why.contains("8192 KiB") && why.contains("CAP_IPC_LOCK"), "{why}");
        let refusal = refusal(&why);
        assert!(
            refusal.contains("LimitMEMLOCK=infinity") && refusal.contains("danger.allow_swap = true"),
            "{refusal}"
        );
    }

    #[test]
    fn allowed_swap_does_not_touch_the_process() {
        assert_eq!(lock(Policy::Off), Ok(Outcome::Allowed));
    }
}
