//! Faults under load, short form (`kms_testkit::faults`; `scripts/bench --phases faults` runs the
//! long one): real kmsd processes on a PostgreSQL cluster of the test's own (scripts/pg), clients
//! generating data keys and decrypting while kmsd is killed (-9) and restarted, PostgreSQL is
//! restarted, one of two replicas is killed, and PostgreSQL's disk is full or read-only (a tmpfs:
//! root only; skipped with a message otherwise). Nothing acknowledged may be lost: every blob
//! decrypts to its data key, the audit chain verifies and holds a record per acknowledged call,
//! errors carry a documented reason, and kmsd rides out database faults without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use kms_testkit::faults::{self, Sabotage, Scenario, Settings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load() {
    // The scenarios start their own clusters, but like every PostgreSQL test only where
    // PostgreSQL is available (scripts/test), and fail without it where it is required.
    if kms_testkit::postgres_url().is_none() {
        return;
    }
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let scenarios: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| {
            if s.needs_root() && !root {
                eprintln!("SKIPPED (faults {}): mounting a tmpfs needs root", s.name());
            }
            !s.needs_root() || root
        })
        .collect();
    let settings = Settings {
        kmsd: kms_testkit::kmsd_binary(),
        workers: 4,
        settle: Duration::from_millis(1500),
        outage: Duration::from_millis(1500),
        scenarios,
        sabotage: Vec::new(),
    };
    let reports = faults::run(&settings).await;
    for r in &reports {
        eprintln!("{r}");
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(ToString::to_string)
        .collect();
    assert!(failed.is_empty(), "faults under load failed:\n{}", failed.join("\n"));
    for r in &reports {
        assert!(r.acked.total() > 0, "{}: nothing was acknowledged", r.scenario.name());
        assert!(
            r.unknown > 0 || r.scenario == Scenario::PostgresRestart,
            "{}: the fault was never seen by a client",
            r.scenario.name()
        );
    }
}

/// The checks themselves: a run with damage planted before the checks must fail, naming it. One
/// run per kind of damage, so that each check is shown to fire on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checks_catch_planted_damage() {
    if kms_testkit::postgres_url().is_none() {
        return;
    }
    let cases = [
        (Sabotage::UndecryptableBlob, 1, "does not decrypt"),
        (
            Sabotage::OtherDataKey,
            1,
            "decrypts to other data than its GenerateDataKey returned",
        ),
        (Sabotage::UnauditedCall, 0, "allowed generate_data_key records for"),
        (Sabotage::DeletedAuditRow, 0, "audit chain: breaks at"),
    ];
    for (sabotage, lost, expected) in cases {
        let settings = Settings {
            kmsd: kms_testkit::kmsd_binary(),
            workers: 2,
            settle: Duration::from_millis(1000),
            outage: Duration::from_millis(500),
            scenarios: vec![Scenario::Failover],
            sabotage: vec![sabotage],
        };
        let reports = faults::run(&settings).await;
        let r = &reports[0];
        eprintln!("{sabotage:?}:\n{r}");
        assert!(!r.passed(), "{sabotage:?} went unseen:\n{r}");
        assert_eq!(r.lost, lost, "{sabotage:?}:\n{r}");
        let failures = r.failures.join("\n");
        assert!(
            failures.contains(expected),
            "{sabotage:?}: no failure says {expected:?}:\n{failures}"
        );
        if sabotage == Sabotage::UnauditedCall {
            // Only that one record is missing, and nothing else failed.
            assert_eq!(r.failures.len(), 1, "{failures}");
            assert!(failures.contains("(1 missing)"), "{failures}");
        }
    }
}
