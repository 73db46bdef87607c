//! Faults under load (issue 14): real `kmsd` processes on a throwaway PostgreSQL cluster of their
//! own, with clients generating data keys (GenerateDataKey and …WithoutPlaintext) and decrypting,
//! while a fault is injected:
//!
//! - `kill-restart`: kill -9 of kmsd, restarted at once (it comes back sealed: one custodian's
//!   share unseals it);
//! - `postgres-restart`: PostgreSQL shut down immediately (as a crash), started again later;
//! - `failover`: two kmsd replicas on one database, one killed with kill -9; clients fail over;
//! - `disk-full`: PostgreSQL's data directory on a small tmpfs, filled up, then freed;
//! - `read-only`: PostgreSQL read-only (`default_transaction_read_only`, as a primary demoted
//!   to a standby would be), then writable again. A read-only remount of its disk cannot be
//!   had while PostgreSQL runs: the kernel refuses it (EBUSY) while files are open for writing.
//!
//! After each: every blob whose GenerateDataKey was acknowledged decrypts (to the plaintext the
//! client got), no decrypt ever answered other data, every refusal carried a documented reason
//! with its code, the audit chain verifies (pinned checkpoint keys, head) and holds an allowed
//! record for each acknowledged call, and kmsd recovered (for the database faults: the same
//! process, reconnected). Run by `tests/tests/faults.rs` (short) and `kms-bench --phases faults`.
//!
//! It never mocks a component, and never touches a PostgreSQL server it did not start: the tmpfs
//! scenario mounts (and unmounts) only a directory it created, and needs root.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kms_core::audit::{AuditVerifier, Break, CheckpointKey};
use kms_core::keyfile::AdminKeyFile;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::admin_service_client::AdminServiceClient;
use kms_proto::v1::key_service_client::KeyServiceClient;
use kms_proto::Reason;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{admin, grants_all, new_admin, signed, submit_share, Db, Pki};

/// The throwaway-cluster script of this repository.
const SCRIPTS_PG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/pg");
/// The key every scenario's clients use.
const KEY: &str = "faults";
/// How long a client waits for one answer (kmsd waits up to 30 s for a database connection).
const CALL_TIMEOUT: Duration = Duration::from_secs(40);
/// The longest a scenario may take to recover before it fails.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(90);
/// The tmpfs that holds PostgreSQL's data directory in the disk scenarios.
const TMPFS_SIZE: &str = "160m";
/// `[limits]` far above the load: the scenarios must not be refused for their rate.
const LIMITS: &str = "[limits]\nprincipal_per_second = 1000000\nprincipal_burst = 1000000\nunauthenticated_per_second = 1000000\nunauthenticated_burst = 1000000\n";

/// One fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// kill -9 of kmsd under load, restarted at once and unsealed.
    KillRestart,
    /// PostgreSQL shut down immediately under load, started again after the outage.
    PostgresRestart,
    /// Two replicas on one database, one killed (kill -9); clients fail over.
    Failover,
    /// PostgreSQL's disk (a tmpfs) full for the outage, then freed.
    DiskFull,
    /// PostgreSQL read-only for the outage (every transaction), then writable.
    ReadOnly,
}

impl Scenario {
    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 5] = [
        Self::KillRestart,
        Self::PostgresRestart,
        Self::Failover,
        Self::DiskFull,
        Self::ReadOnly,
    ];

    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::KillRestart => "kill-restart",
            Self::PostgresRestart => "postgres-restart",
            Self::Failover => "failover",
            Self::DiskFull => "disk-full",
            Self::ReadOnly => "read-only",
        }
    }

    /// The scenario named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    fn what(self) -> &'static str {
        match self {
            Self::KillRestart => "kill -9 of kmsd under load; restarted at once, sealed, unsealed with one share",
            Self::PostgresRestart => {
                "PostgreSQL shut down (immediate mode, as a crash) under load, started again after the outage"
            }
            Self::Failover => "two kmsd replicas on one database; one killed with kill -9, its clients fail over",
            Self::DiskFull => "PostgreSQL's data directory (a tmpfs) full for the outage, then freed",
            Self::ReadOnly => "PostgreSQL read-only (default_transaction_read_only) for the outage, then writable",
        }
    }

    /// Whether kmsd stays up and must ride out a database fault.
    fn database_fault(self) -> bool {
        matches!(self, Self::PostgresRestart | Self::DiskFull | Self::ReadOnly)
    }

    fn replicas(self) -> usize {
        if self == Self::Failover {
            2
        } else {
            1
        }
    }

    fn on_tmpfs(self) -> bool {
        self == Self::DiskFull
    }

    /// Whether it mounts a tmpfs (root only).
    pub fn needs_root(self) -> bool {
        self.on_tmpfs()
    }
}

/// How to run the scenarios.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The kmsd binary.
    pub kmsd: PathBuf,
    /// Concurrent clients, each its own principal and connection(s).
    pub workers: usize,
    /// Load before the fault, and after recovery.
    pub settle: Duration,
    /// How long PostgreSQL is down, or its disk full or read-only.
    pub outage: Duration,
    /// Which scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Damage planted after the load and before the checks, to show that the checks catch it
    /// (the checks' own test); empty for a real run.
    pub sabotage: Vec<Sabotage>,
}

/// What [`Settings::sabotage`] plants, each something a check must report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    /// One acknowledged blob is damaged (a byte of its tag flipped), as if kmsd had answered a
    /// blob it cannot open: it must count as lost.
    UndecryptableBlob,
    /// The data key a client recorded for one GenerateDataKey is changed, as if kmsd had
    /// answered a blob of another key: it must count as lost.
    OtherDataKey,
    /// One more acknowledged GenerateDataKey than the client made, as if kmsd had answered
    /// without its audit record: the audit check must find a record missing.
    UnauditedCall,
    /// An audit row in the middle of the chain deleted with SQL: the chain must break.
    DeletedAuditRow,
}

/// Acknowledged calls by operation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Acked {
    pub generate: u64,
    pub without_plaintext: u64,
    pub decrypt: u64,
}

impl Acked {
    pub fn total(&self) -> u64 {
        self.generate + self.without_plaintext + self.decrypt
    }
}

/// What one scenario found.
#[derive(Debug)]
pub struct Report {
    pub scenario: Scenario,
    pub acked: Acked,
    /// Calls that failed or whose answer was lost: they may or may not have been done.
    pub unknown: u64,
    /// Acknowledged blobs that no longer decrypt, or to other data.
    pub lost: u64,
    /// Errors by "CODE/reason" ("transport" when kmsd sent no reason), with a first message.
    pub errors: BTreeMap<String, (u64, String)>,
    /// From the fault to the moment every client had been answered OK again.
    pub outage: Option<Duration>,
    /// From the repair (restart, disk freed …) to the same moment.
    pub recovery: Option<Duration>,
    /// Steps worth knowing (restart and unseal times, PostgreSQL restarted by hand …).
    pub notes: Vec<String>,
    /// Audit: entries verified, checkpoints verified.
    pub audit: Option<(i64, usize)>,
    /// Every check that failed, in words.
    pub failures: Vec<String>,
}

impl Report {
    fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            acked: Acked::default(),
            unknown: 0,
            lost: 0,
            errors: BTreeMap::new(),
            outage: None,
            recovery: None,
            notes: Vec::new(),
            audit: None,
            failures: Vec::new(),
        }
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.lost == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = |d: Option<Duration>| d.map_or("never".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        writeln!(f, "faults: {} ({})", self.scenario.name(), self.scenario.what())?;
        writeln!(
            f,
            "  acknowledged {} (GenerateDataKey {}, GenerateDataKeyWithoutPlaintext {}, Decrypt {})",
            self.acked.total(),
            self.acked.generate,
            self.acked.without_plaintext,
            self.acked.decrypt
        )?;
        writeln!(f, "  unknown (error or no answer) {}", self.unknown)?;
        writeln!(f, "  lost {}", self.lost)?;
        for (what, (n, message)) in &self.errors {
            writeln!(f, "  errors: {n} × {what}: {message}")?;
        }
        writeln!(
            f,
            "  time to recover: {} from the fault, {} from the repair",
            secs(self.outage),
            secs(self.recovery)
        )?;
        if let Some((entries, checkpoints)) = self.audit {
            writeln!(
                f,
                "  audit: {entries} entries chain and match the head, {checkpoints} checkpoints verify under the pinned keys"
            )?;
        }
        for n in &self.notes {
            writeln!(f, "  note: {n}")?;
        }
        if self.passed() {
            writeln!(f, "  PASS")
        } else {
            for x in &self.failures {
                writeln!(f, "  FAILED: {x}")?;
            }
            writeln!(f, "  FAIL")
        }
    }
}

/// Runs the scenarios one after the other, each on a fresh cluster and deployment.
pub async fn run(settings: &Settings) -> Vec<Report> {
    let mut reports = Vec::new();
    for &scenario in &settings.scenarios {
        eprintln!("faults: {} ...", scenario.name());
        let work = tempfile::Builder::new()
            .prefix("kms-faults-")
            .tempdir()
            .expect("a temporary directory");
        // scripts/pg runs PostgreSQL as its own user, which must reach the cluster inside.
        std::fs::set_permissions(work.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("the temporary directory's mode");
        let mut report = Report::new(scenario);
        if let Err(e) = run_one(settings, scenario, work.path(), &mut report).await {
            report.failures.push(e);
        }
        eprintln!(
            "faults: {} {}",
            scenario.name(),
            if report.passed() { "passed" } else { "FAILED" }
        );
        reports.push(report);
    }
    reports
}

async fn run_one(settings: &Settings, scenario: Scenario, work: &Path, report: &mut Report) -> Result<(), String> {
    let disk = if scenario.on_tmpfs() {
        Some(Tmpfs::mount(&work.join("disk"))?)
    } else {
        None
    };
    let cluster_dir = disk.as_ref().map_or_else(|| work.join("pg"), |d| d.path.join("pg"));
    let cluster = Cluster::start(&cluster_dir)?;
    let pki = Pki::new();
    let mut deployment = Deployment::new(settings, scenario, &cluster, &pki, work).await?;
    let result = drive(settings, scenario, &cluster, disk.as_ref(), &mut deployment, report).await;
    if result.is_err() || !report.failures.is_empty() {
        for r in &deployment.replicas {
            report.notes.push(format!("kmsd log {}: {}", r.addr, r.log_tail(8)));
        }
        report.notes.push(format!("PostgreSQL log: {}", cluster.log_tail(8)));
    }
    drop(deployment);
    drop(cluster);
    drop(disk);
    result
}

/// Injects the fault under load, waits for recovery, then checks.
async fn drive(
    settings: &Settings,
    scenario: Scenario,
    cluster: &Cluster,
    disk: Option<&Tmpfs>,
    d: &mut Deployment<'_>,
    report: &mut Report,
) -> Result<(), String> {
    let endpoints: Vec<SocketAddr> = d.replicas.iter().map(|r| r.addr).collect();
    let load = Load::start(&d.pki_ca, d.pki, &endpoints, settings.workers);
    tokio::time::sleep(settings.settle).await;
    let answered = load.workers_answered();
    if answered < settings.workers {
        load.stop().await;
        return Err(format!(
            "only {answered} of {} clients were answered OK before the fault: the load does not run",
            settings.workers
        ));
    }

    let fault = Instant::now();
    let repaired = match scenario {
        Scenario::KillRestart => {
            d.replicas[0].kill_9();
            d.replicas[0].spawn()?;
            let up = Instant::now();
            let refused = d.unseal(0).await?;
            report.notes.push(format!(
                "restart until answering {:.2} s, then unseal {:.2} s{}",
                up.duration_since(fault).as_secs_f64(),
                up.elapsed().as_secs_f64(),
                refused
                    .first()
                    .map(|r| format!(" (the share was refused {} times first: {r})", refused.len()))
                    .unwrap_or_default()
            ));
            fault
        }
        Scenario::PostgresRestart => {
            cluster.down()?;
            tokio::time::sleep(settings.outage).await;
            let at = Instant::now();
            cluster.up()?;
            at
        }
        Scenario::Failover => {
            d.replicas[1].kill_9();
            fault
        }
        Scenario::DiskFull => {
            let disk = disk.expect("a tmpfs scenario has its tmpfs");
            let filled = disk.fill()?;
            report
                .notes
                .push(format!("filled the tmpfs with {} MiB", filled / (1024 * 1024)));
            tokio::time::sleep(settings.outage).await;
            let at = Instant::now();
            disk.free()?;
            at
        }
        Scenario::ReadOnly => {
            cluster.read_only(true)?;
            tokio::time::sleep(settings.outage).await;
            let at = Instant::now();
            cluster.read_only(false)?;
            at
        }
    };
    // The repair on the wall clock, which audit records and checkpoints carry.
    let repaired_unix_ms = kms_core::now_unix_ms() - i64::try_from(millis(repaired.elapsed())).unwrap_or(i64::MAX);
    let recovered = load.recovered_after(repaired, RECOVERY_DEADLINE).await;
    match recovered {
        Some(at) => {
            report.outage = Some(at.duration_since(fault));
            report.recovery = Some(at.saturating_duration_since(repaired));
        }
        None => report.failures.push(format!(
            "not every client was answered OK within {} s of the repair",
            RECOVERY_DEADLINE.as_secs()
        )),
    }
    tokio::time::sleep(settings.settle).await;
    let mut logs = load.stop().await;
    sabotage(&settings.sabotage, &d.db, &mut logs).await?;

    if scenario.database_fault() {
        for r in &mut d.replicas {
            if !r.running() {
                report
                    .failures
                    .push(format!("kmsd {} exited during the database fault", r.addr));
            }
        }
    }
    // Replica 0 is up in every scenario (the failover kills replica 1): check through it.
    check(d, 0, &logs, repaired_unix_ms, report).await;
    Ok(())
}

/// Plants each of `what` (see [`Sabotage`]).
async fn sabotage(what: &[Sabotage], db: &Db, logs: &mut [WorkerLog]) -> Result<(), String> {
    for s in what {
        match s {
            Sabotage::UndecryptableBlob | Sabotage::OtherDataKey => {
                let blob = logs
                    .iter_mut()
                    .flat_map(|l| l.blobs.iter_mut())
                    .find(|b| b.plaintext.is_some())
                    .ok_or("sabotage: no acknowledged blob with a known data key")?;
                if *s == Sabotage::UndecryptableBlob {
                    let last = blob.blob.len() - 1;
                    blob.blob[last] ^= 1;
                } else if let Some(p) = blob.plaintext.as_mut() {
                    p[0] ^= 1;
                }
            }
            Sabotage::UnauditedCall => {
                let log = logs.first_mut().ok_or("sabotage: no client")?;
                log.acked.generate += 1;
            }
            Sabotage::DeletedAuditRow => {
                use sqlx::Row as _;
                let mut conn = db.connect().await;
                let max: i64 = sqlx::query("SELECT MAX(seq) AS n FROM audit_log")
                    .fetch_one(&mut conn)
                    .await
                    .and_then(|r| r.try_get("n"))
                    .map_err(|e| format!("sabotage: reading audit_log: {e}"))?;
                let done = sqlx::query("DELETE FROM audit_log WHERE seq = $1")
                    .bind(max / 2)
                    .execute(&mut conn)
                    .await
                    .map_err(|e| format!("sabotage: deleting an audit row: {e}"))?;
                if done.rows_affected() != 1 {
                    return Err(format!("sabotage: no audit row {} to delete", max / 2));
                }
            }
        }
    }
    Ok(())
}

/// Every check on what the clients saw and what the database holds.
async fn check(d: &Deployment<'_>, live: usize, logs: &[WorkerLog], repaired_unix_ms: i64, report: &mut Report) {
    for log in logs {
        report.acked.generate += log.acked.generate;
        report.acked.without_plaintext += log.acked.without_plaintext;
        report.acked.decrypt += log.acked.decrypt;
        report.unknown += log.unknown;
        for (k, (n, m)) in &log.errors {
            report.errors.entry(k.clone()).or_insert((0, m.clone())).0 += n;
        }
        for w in &log.wrong {
            report.failures.push(format!("{}: {w}", log.principal));
        }
        for u in &log.misanswered {
            report
                .failures
                .push(format!("{}: an error a fault may not cause ({u})", log.principal));
        }
    }

    // Every acknowledged blob decrypts, to the plaintext its client got.
    let mut verifier = KeyServiceClient::new(d.channel(live, VERIFIER));
    let mut decrypts_by_verifier = 0u64;
    for log in logs {
        for acked in &log.blobs {
            let mut answer = Err(tonic::Status::unavailable("not tried"));
            for _ in 0..5 {
                answer = verifier
                    .decrypt(pb::DecryptRequest {
                        ciphertext_blob: acked.blob.clone(),
                        encryption_context: log.context.clone(),
                        ..Default::default()
                    })
                    .await;
                if answer
                    .as_ref()
                    .map_or_else(|s| s.code() != tonic::Code::Unavailable, |_| true)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            match answer {
                Ok(r) => {
                    decrypts_by_verifier += 1;
                    let r = r.into_inner();
                    if acked.plaintext.as_ref().is_some_and(|p| *p != r.plaintext) {
                        report.lost += 1;
                        report.failures.push(format!(
                            "an acknowledged blob of {} decrypts to other data than its GenerateDataKey returned",
                            log.principal
                        ));
                    }
                }
                Err(s) => {
                    report.lost += 1;
                    if report.lost <= 5 {
                        report.failures.push(format!(
                            "an acknowledged blob of {} does not decrypt: {}",
                            log.principal,
                            describe(&s)
                        ));
                    }
                }
            }
        }
    }

    match audit(d, live, logs, decrypts_by_verifier, repaired_unix_ms).await {
        Ok(found) => report.audit = Some(found),
        Err(problems) => report.failures.extend(problems),
    }
}

/// The audit log: checkpoints are signed again after the repair, the chain verifies against the
/// head and the pinned checkpoint keys, and each client's allowed records per operation number
/// at least its acknowledged calls and at most those plus its unknown ones.
async fn audit(
    d: &Deployment<'_>,
    live: usize,
    logs: &[WorkerLog],
    decrypts_by_verifier: u64,
    repaired_unix_ms: i64,
) -> Result<(i64, usize), Vec<String>> {
    let mut problems = Vec::new();
    let db_error = |e: sqlx::Error| vec![format!("reading the audit tables: {e}")];
    // kmsd signs a checkpoint every second (`audit.checkpoint_interval_secs = 1`) while the
    // chain advances; the verifier's decrypts just advanced it.
    let waiting = Instant::now();
    loop {
        let mut tx = kms_audit::snapshot(&d.db.url).await.map_err(db_error)?;
        let newest = kms_audit::checkpoints(&mut tx)
            .await
            .map_err(db_error)?
            .last()
            .map(|(c, _)| c.time_unix_ms);
        let _ = tx.rollback().await;
        if newest.is_some_and(|t| t > repaired_unix_ms) {
            break;
        }
        if waiting.elapsed() > Duration::from_secs(10) {
            problems.push("audit: no checkpoint was signed within 10 s after the repair".to_owned());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pinned: Vec<CheckpointKey> = {
        let mut admin = AdminServiceClient::new(d.channel(live, ADMIN));
        let keys = admin
            .get_audit_checkpoint_keys(pb::GetAuditCheckpointKeysRequest::default())
            .await
            .map_err(|s| vec![format!("GetAuditCheckpointKeys: {}", describe(&s))])?
            .into_inner()
            .keys;
        keys.into_iter()
            .map(|k| CheckpointKey::parse(&k.kid, &k.algorithm, k.public_key))
            .collect::<Result<_, _>>()
            .map_err(|e| vec![format!("an unusable checkpoint key: {e}")])?
    };
    let mut tx = kms_audit::snapshot(&d.db.url).await.map_err(db_error)?;
    let head = kms_audit::head(&mut tx).await.map_err(db_error)?;
    let stored = kms_audit::checkpoints(&mut tx).await.map_err(db_error)?;
    let entries = kms_audit::entries(&mut tx, 0, i64::MAX).await.map_err(db_error)?;
    // The state log must chain and hold, at each checkpoint, the state head it signed (as
    // `kmsctl audit verify` checks it).
    let state_seqs: Vec<i64> = stored.iter().map(|(c, _)| c.state.seq).collect();
    match kms_audit::state_log(&mut tx, &state_seqs).await.map_err(db_error)? {
        Err(what) => problems.push(format!("audit: the state log: {what}")),
        Ok((_, found)) => {
            if let Some((c, _)) = stored
                .iter()
                .find(|(c, _)| found.get(&c.state.seq) != Some(&c.state.hash))
            {
                problems.push(format!(
                    "audit: checkpoint {} signed state log entry {}, which the state log does not hold as signed",
                    c.seq, c.state.seq
                ));
            }
        }
    }
    let _ = tx.rollback().await;

    let mut verifier = AuditVerifier::new(&pinned, stored);
    let mut allowed: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in &entries {
        match row {
            Ok(e) => {
                verifier.push(e);
                if e.record.outcome == "allowed" {
                    *allowed
                        .entry((e.record.caller.clone(), e.record.operation.clone()))
                        .or_default() += 1;
                }
            }
            Err(b) => verifier.fail(b.clone(), true),
        }
        if verifier.chain_broken() {
            break;
        }
    }
    let count = verifier.count();
    match head {
        None => problems.push("audit: the audit_head row is missing".into()),
        Some((seq, hash)) if seq != count || hash.as_slice() != verifier.head().as_slice() => {
            verifier.fail(
                Break {
                    seq,
                    what: format!("the head names entry {seq}, the chain ends at {count}"),
                },
                false,
            );
        }
        Some(_) => {}
    }
    let report = verifier.finish();
    if let Some(b) = report.first_break() {
        problems.push(format!("audit chain: breaks at {}: {}", b.seq, b.what));
    }
    for log in logs {
        let ops = [
            ("generate_data_key", log.acked.generate, log.unknown_by_op[0]),
            (
                "generate_data_key_without_plaintext",
                log.acked.without_plaintext,
                log.unknown_by_op[1],
            ),
            ("decrypt", log.acked.decrypt, log.unknown_by_op[2]),
        ];
        for (op, acked, unknown) in ops {
            let found = allowed
                .get(&(log.principal.clone(), op.to_owned()))
                .copied()
                .unwrap_or(0);
            if found < acked {
                problems.push(format!(
                    "audit: {} has {found} allowed {op} records for {acked} acknowledged calls ({} missing)",
                    log.principal,
                    acked - found
                ));
            }
            if found > acked + unknown {
                problems.push(format!(
                    "audit: {} has {found} allowed {op} records, more than its {acked} acknowledged and {unknown} unknown calls",
                    log.principal
                ));
            }
        }
    }
    let verifier_found = allowed
        .get(&(VERIFIER.to_owned(), "decrypt".to_owned()))
        .copied()
        .unwrap_or(0);
    if verifier_found < decrypts_by_verifier {
        problems.push(format!(
            "audit: {verifier_found} allowed decrypt records of the verifier for {decrypts_by_verifier} acknowledged"
        ));
    }
    if problems.is_empty() {
        Ok((report.entries, report.checkpoints_verified))
    } else {
        Err(problems)
    }
}

/// A status as a short line: code, reason and message.
/// Why an error a client got under a fault is not one a fault may cause (`None` if it is): kmsd
/// answers what it could not do because of a fault UNAVAILABLE with a documented reason (the
/// database, the audit log, a restarted replica still sealed: retry). An error without a
/// reason is a transport failure (the process died mid-call, or was not listening). Anything
/// else (INTERNAL, or a refusal such as `state_rollback` or `row_integrity` raised by the fault)
/// would tell a client to give up on a call that a retry would have done, or that its data
/// is damaged when it is not.
fn not_a_fault_answer(s: &tonic::Status) -> Option<&'static str> {
    let text = kms_proto::status::reason(s)?;
    match Reason::from_name(text) {
        None => Some("an misanswered reason"),
        Some(r) if r.code() != s.code() => Some("a reason with another code than its documented one"),
        Some(_) if s.code() != tonic::Code::Unavailable => Some("not UNAVAILABLE"),
        Some(_) => None,
    }
}

fn describe(s: &tonic::Status) -> String {
    format!(
        "{}/{}: {}",
        kms_proto::status::code_name(s.code()),
        crate::reason(s),
        kms_proto::status::detail(s)
    )
}

const ADMIN: &str = "spiffe://faults/admin";
const VERIFIER: &str = "spiffe://faults/verifier";

fn worker_principal(i: usize) -> String {
    format!("spiffe://faults/worker-{i}")
}

/// A deployment: its database on the cluster, its replicas (initialized, unsealed) and the key
/// the clients use.
struct Deployment<'a> {
    db: Db,
    pki: &'a Pki,
    pki_ca: Certificate,
    alice: AdminKeyFile,
    replicas: Vec<Replica>,
}

impl<'a> Deployment<'a> {
    async fn new(
        settings: &Settings,
        scenario: Scenario,
        cluster: &Cluster,
        pki: &'a Pki,
        work: &Path,
    ) -> Result<Self, String> {
        let db = Db::fresh_postgres(&cluster.url, "kms_faults").await;
        let alice = admin("alice", "DE");
        let mut d = Self {
            db,
            pki,
            pki_ca: Certificate::from_pem(&pki.ca_pem),
            alice,
            replicas: Vec::new(),
        };
        for i in 0..scenario.replicas() {
            let mut r = Replica::new(settings, &d.db, pki, &d.alice, &work.join(format!("kmsd-{i}")));
            r.spawn()?;
            d.replicas.push(r);
            d.answering(i).await?;
            if i == 0 {
                let mut admin_c = AdminServiceClient::new(d.channel(0, ADMIN));
                crate::init(
                    &mut admin_c,
                    &d.alice,
                    pb::InitOp {
                        seal: pb::SealKind::Shamir as i32,
                        threshold: 1,
                        admins: vec![new_admin(&d.alice, true)],
                        approval_quorum: 1,
                    },
                )
                .await
                .map_err(|s| format!("init: {}", describe(&s)))?;
                let mut principals: Vec<String> = (0..settings.workers).map(worker_principal).collect();
                principals.push(VERIFIER.to_owned());
                let refs: Vec<&str> = principals.iter().map(String::as_str).collect();
                admin_c
                    .create_key(signed(
                        &d.alice,
                        Op::CreateKey(pb::CreateKeyOp {
                            name: KEY.into(),
                            grants: grants_all(&refs),
                            release_policy: crate::UNATTESTED.into(),
                            ..Default::default()
                        }),
                    ))
                    .await
                    .map_err(|s| format!("create key: {}", describe(&s)))?;
            } else {
                d.unseal(i).await?;
            }
        }
        Ok(d)
    }

    /// A lazily connecting channel to replica `i` as `principal` (it reconnects by itself).
    fn channel(&self, i: usize, principal: &str) -> Channel {
        endpoint(&self.pki_ca, self.pki, self.replicas[i].addr, principal).connect_lazy()
    }

    /// Waits until replica `i` answers GetSealStatus.
    async fn answering(&self, i: usize) -> Result<(), String> {
        let start = Instant::now();
        let mut admin_c = AdminServiceClient::new(self.channel(i, ADMIN));
        loop {
            if admin_c.get_seal_status(pb::GetSealStatusRequest {}).await.is_ok() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!("kmsd {} did not answer within 30 s", self.replicas[i].addr));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Unseals replica `i` with alice's share (threshold 1), waiting for it to answer first;
    /// returns the refusals before the share was taken.
    async fn unseal(&self, i: usize) -> Result<Vec<String>, String> {
        self.answering(i).await?;
        let start = Instant::now();
        let mut admin_c = AdminServiceClient::new(self.channel(i, ADMIN));
        let mut refused = Vec::new();
        loop {
            let last = match submit_share(&mut admin_c, &self.alice).await {
                Ok(s) if !s.sealed => return Ok(refused),
                Ok(_) => "still sealed after the share".to_owned(),
                Err(s) => describe(&s),
            };
            refused.push(last.clone());
            if start.elapsed() > Duration::from_secs(30) {
                return Err(format!(
                    "kmsd {} was not unsealed within 30 s: {last}",
                    self.replicas[i].addr
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn endpoint(ca: &Certificate, pki: &Pki, addr: SocketAddr, principal: &str) -> Endpoint {
    let tls = ClientTlsConfig::new()
        .ca_certificate(ca.clone())
        .identity(pki.client(principal))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("a valid URI")
        .tls_config(tls)
        .expect("a valid TLS configuration")
        .connect_timeout(Duration::from_secs(2))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
}

/// One kmsd process, its configuration file and its log.
struct Replica {
    binary: PathBuf,
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    child: Option<std::process::Child>,
}

impl Replica {
    fn new(settings: &Settings, db: &Db, pki: &Pki, alice: &AdminKeyFile, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("the replica's directory");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let tls = pki.tls_config();
        let config = dir.join("kmsd.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"{}\"\nmax_connections = 8\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n[admin]\ninit_admins = [\"{}\"]\n[audit]\ncheckpoint_interval_secs = 1\n[danger]\nallow_unattested_keys = true\n[log]\nlevel = \"warn\"\n{LIMITS}",
                db.url,
                tls.cert.display(),
                tls.key.display(),
                tls.client_ca.display(),
                alice.public().fingerprint().expect("a fingerprint")
            ),
        )
        .expect("the replica's configuration");
        Self {
            binary: settings.kmsd.clone(),
            config,
            log: dir.join("kmsd.log"),
            addr: format!("127.0.0.1:{port}").parse().expect("an address"),
            child: None,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = std::process::Command::new(&self.binary)
            .arg("--config")
            .arg(&self.config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no draining, no queued audit records written, as a crash or an OOM kill.
    fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: it drains and writes its queued audit records.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// A PostgreSQL cluster of its own (scripts/pg), removed when dropped.
struct Cluster {
    dir: PathBuf,
    url: String,
}

impl Cluster {
    fn start(dir: &Path) -> Result<Self, String> {
        let out = std::process::Command::new("bash")
            .arg(SCRIPTS_PG)
            .arg("start")
            .arg(dir)
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("scripts/pg: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/pg start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self {
            dir: dir.to_owned(),
            url: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        })
    }

    /// `scripts/pg COMMAND DIR ARGS…`.
    fn script(&self, command: &str, args: &[&str]) -> Result<(), String> {
        let out = std::process::Command::new("bash")
            .arg(SCRIPTS_PG)
            .arg(command)
            .arg(&self.dir)
            .args(args)
            .output()
            .map_err(|e| format!("scripts/pg: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "scripts/pg {command}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Immediate shutdown, as a crash.
    fn down(&self) -> Result<(), String> {
        self.script("down", &[])
    }

    /// Starts it again on the same port.
    fn up(&self) -> Result<(), String> {
        self.script("up", &[])
    }

    /// Makes every transaction read-only (sessions open now included, from their next
    /// transaction), or writable again.
    fn read_only(&self, on: bool) -> Result<(), String> {
        let set = if on {
            "ALTER SYSTEM SET default_transaction_read_only = on"
        } else {
            "ALTER SYSTEM RESET default_transaction_read_only"
        };
        self.script("sql", &[set, "SELECT pg_reload_conf()"])
    }

    fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("postgres.log"), lines)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.script("stop", &[]) {
            eprintln!("faults: {e}");
        }
    }
}

/// A small tmpfs this program mounted (root only), unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| format!("{}: {e}", path.display()))?;
        command(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={TMPFS_SIZE},mode=0755"),
                "tmpfs",
                &path.display().to_string(),
            ],
        )
        .map_err(|e| format!("cannot mount a tmpfs (the disk scenarios need root): {e}"))?;
        Ok(Self { path: path.to_owned() })
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Writes a file until the disk is full; returns its size.
    fn fill(&self) -> Result<u64, String> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.filler()).map_err(|e| format!("filler: {e}"))?;
        let chunk = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(format!("filler: {e}")),
            }
        }
        Ok(written)
    }

    fn free(&self) -> Result<(), String> {
        std::fs::remove_file(self.filler()).map_err(|e| format!("filler: {e}"))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = command("umount", &[&self.path.display().to_string()]) {
            eprintln!("faults: {e}");
        }
    }
}

fn command(program: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A blob a GenerateDataKey… call acknowledged, and the plaintext the client knows for it.
struct AckedBlob {
    blob: Vec<u8>,
    /// From GenerateDataKey, or from the first acknowledged Decrypt of a …WithoutPlaintext blob.
    plaintext: Option<Vec<u8>>,
}

/// What one client saw.
struct WorkerLog {
    principal: String,
    context: BTreeMap<String, String>,
    acked: Acked,
    /// By operation: GenerateDataKey, …WithoutPlaintext, Decrypt.
    unknown_by_op: [u64; 3],
    unknown: u64,
    blobs: Vec<AckedBlob>,
    errors: BTreeMap<String, (u64, String)>,
    /// Answers with other data than the client knows.
    wrong: Vec<String>,
    /// Errors kmsd sent that a fault may not cause ([`not_a_fault_answer`]).
    misanswered: Vec<String>,
}

/// The clients: each its own principal, a channel per replica, calls in a loop (GenerateDataKey,
/// …WithoutPlaintext, Decrypt of one of its blobs), failing over to the next replica on
/// UNAVAILABLE or a transport failure.
struct Load {
    stop: Arc<AtomicBool>,
    base: Instant,
    /// Per worker: when (ms after `base`) its newest acknowledged call started, +1 (0: none).
    last_ok: Arc<Vec<AtomicU64>>,
    tasks: Vec<tokio::task::JoinHandle<WorkerLog>>,
}

impl Load {
    fn start(ca: &Certificate, pki: &Pki, endpoints: &[SocketAddr], workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let last_ok: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
        let tasks = (0..workers)
            .map(|i| {
                let principal = worker_principal(i);
                let channels: Vec<Channel> = endpoints
                    .iter()
                    .map(|a| endpoint(ca, pki, *a, &principal).connect_lazy())
                    .collect();
                let stop = stop.clone();
                let last_ok = last_ok.clone();
                tokio::spawn(worker(i, principal, channels, stop, base, last_ok))
            })
            .collect();
        Self {
            stop,
            base,
            last_ok,
            tasks,
        }
    }

    /// How many workers have had an acknowledged call.
    fn workers_answered(&self) -> usize {
        self.last_ok.iter().filter(|t| t.load(Ordering::Relaxed) > 0).count()
    }

    /// When every worker had an acknowledged call that started after `repair`, polling until
    /// `deadline` after it.
    async fn recovered_after(&self, repair: Instant, deadline: Duration) -> Option<Instant> {
        let since = millis(repair.duration_since(self.base)) + 1;
        loop {
            if self.last_ok.iter().all(|t| t.load(Ordering::Relaxed) >= since) {
                return Some(Instant::now());
            }
            if repair.elapsed() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn stop(mut self) -> Vec<WorkerLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut logs = Vec::new();
        for t in std::mem::take(&mut self.tasks) {
            logs.push(t.await.expect("a fault worker panicked"));
        }
        logs
    }
}

impl Drop for Load {
    /// A scenario that ends early (its fault could not be injected) stops its clients too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn worker(
    i: usize,
    principal: String,
    channels: Vec<Channel>,
    stop: Arc<AtomicBool>,
    base: Instant,
    last_ok: Arc<Vec<AtomicU64>>,
) -> WorkerLog {
    let context: BTreeMap<String, String> = [
        ("worker".to_owned(), i.to_string()),
        ("test".to_owned(), "faults".to_owned()),
    ]
    .into();
    let mut log = WorkerLog {
        principal,
        context: context.clone(),
        acked: Acked::default(),
        unknown_by_op: [0; 3],
        unknown: 0,
        blobs: Vec::new(),
        errors: BTreeMap::new(),
        wrong: Vec::new(),
        misanswered: Vec::new(),
    };
    let mut current = i % channels.len();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut client = KeyServiceClient::new(channels[current].clone());
        let op = if log.blobs.is_empty() {
            (n % 2) as usize
        } else {
            (n % 3) as usize
        };
        n += 1;
        let started = Instant::now();
        let outcome: Result<(), tonic::Status> = match op {
            0 => client
                .generate_data_key(pb::GenerateDataKeyRequest {
                    key: KEY.into(),
                    encryption_context: context.clone(),
                    ..Default::default()
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    log.acked.generate += 1;
                    log.blobs.push(AckedBlob {
                        blob: r.ciphertext_blob,
                        plaintext: Some(r.plaintext),
                    });
                }),
            1 => client
                .generate_data_key_without_plaintext(pb::GenerateDataKeyWithoutPlaintextRequest {
                    key: KEY.into(),
                    encryption_context: context.clone(),
                })
                .await
                .map(|r| {
                    log.acked.without_plaintext += 1;
                    log.blobs.push(AckedBlob {
                        blob: r.into_inner().ciphertext_blob,
                        plaintext: None,
                    });
                }),
            _ => {
                // One of its blobs, in turn.
                let k = (n as usize / 3) % log.blobs.len();
                let answer = client
                    .decrypt(pb::DecryptRequest {
                        ciphertext_blob: log.blobs[k].blob.clone(),
                        encryption_context: context.clone(),
                        ..Default::default()
                    })
                    .await;
                answer.map(|r| {
                    let plaintext = r.into_inner().plaintext;
                    log.acked.decrypt += 1;
                    match &log.blobs[k].plaintext {
                        Some(p) if *p != plaintext => log
                            .wrong
                            .push("Decrypt answered other data than the blob's data key".into()),
                        Some(_) => {}
                        None => log.blobs[k].plaintext = Some(plaintext),
                    }
                })
            }
        };
        match outcome {
            Ok(()) => {
                last_ok[i].store(millis(started.duration_since(base)) + 1, Ordering::Relaxed);
            }
            Err(s) => {
                log.unknown += 1;
                log.unknown_by_op[op] += 1;
                let reason = kms_proto::status::reason(&s).map(str::to_owned);
                let key = format!(
                    "{}/{}",
                    kms_proto::status::code_name(s.code()),
                    reason.as_deref().unwrap_or("transport")
                );
                if let Some(why) = not_a_fault_answer(&s) {
                    if log.misanswered.len() < 5 {
                        log.misanswered.push(format!("{why}: {}", describe(&s)));
                    }
                }
                log.errors
                    .entry(key)
                    .or_insert_with(|| (0, kms_proto::status::detail(&s)))
                    .0 += 1;
                // Another replica may answer; this one is down, sealed or without its database.
                if s.code() == tonic::Code::Unavailable
                    || reason.is_none()
                    || s.code() == tonic::Code::FailedPrecondition
                {
                    current = (current + 1) % channels.len();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, reason: Option<&str>) -> tonic::Status {
        let mut s = tonic::Status::new(code, "m");
        if let Some(r) = reason {
            s.metadata_mut()
                .insert(kms_proto::status::REASON_METADATA, r.parse().unwrap());
        }
        s
    }

    #[test]
    fn a_fault_is_answered_unavailable_with_a_documented_reason() {
        use tonic::Code;
        for (code, reason) in [
            (Code::Unavailable, Some("database_unavailable")),
            (Code::Unavailable, Some("audit_unavailable")),
            (Code::Unavailable, Some("sealed")),
            (Code::Unavailable, None),
            (Code::Unknown, None),
            (Code::Cancelled, None),
        ] {
            assert_eq!(not_a_fault_answer(&status(code, reason)), None, "{code:?} {reason:?}");
        }
        for (code, reason) in [
            (Code::FailedPrecondition, "state_rollback"),
            (Code::FailedPrecondition, "row_integrity"),
            (Code::Internal, "internal"),
            (Code::Unavailable, "row_integrity"),
            (Code::Unavailable, "no_such_reason"),
        ] {
            assert!(
                not_a_fault_answer(&status(code, Some(reason))).is_some(),
                "{code:?} {reason}"
            );
        }
    }
}
