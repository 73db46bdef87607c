//! Metrics: every metric kmsd exports, its name, labels and meaning (docs/operations.md,
//! "Metrics", lists the same), recorded through the `metrics` facade into a Prometheus recorder,
//! and the scrape endpoint that serves them on their own listener (`[metrics]`).
//!
//! Recording is a few atomic operations on handles the exporter keeps (no lock of ours, no I/O),
//! and a no-op while no recorder is installed (metrics off). Labels take their values from small
//! fixed sets (RPC names, reasons, codes, checks, states): never a key id, a principal, a message
//! or anything else a caller chooses. Must never name anything else in this crate: every layer
//! may record.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::body::Bytes;
use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Requests by RPC, code and reason (counter).
pub const GRPC_REQUESTS: &str = "kms_grpc_requests_total";
/// Time from a request's arrival to its response headers (histogram, seconds).
pub const GRPC_DURATION: &str = "kms_grpc_request_duration_seconds";
/// Audit records queued for the writer (gauge).
pub const AUDIT_QUEUE_DEPTH: &str = "kms_audit_queue_depth";
/// One audit batch's transaction (histogram, seconds; label `outcome`).
pub const AUDIT_COMMIT_DURATION: &str = "kms_audit_commit_duration_seconds";
/// Audit records written (counter).
pub const AUDIT_RECORDS_WRITTEN: &str = "kms_audit_records_written_total";
/// Seconds since the newest signed audit checkpoint this replica signed or verified (gauge).
pub const AUDIT_CHECKPOINT_AGE: &str = "kms_audit_checkpoint_age_seconds";
/// Audit records this replica wrote that no checkpoint it knows covers yet (gauge).
pub const AUDIT_UNCHECKPOINTED: &str = "kms_audit_uncheckpointed_records";
/// Checkpoint rounds that failed (counter).
pub const AUDIT_CHECKPOINT_FAILURES: &str = "kms_audit_checkpoint_failures_total";
/// The seal's state: 1 for the current one of `uninitialized`, `sealed`, `unsealed` (gauge).
pub const SEAL_STATE: &str = "kms_seal_state";
/// The seal's kind: 1 for the current one of `shamir`, `dev`, `pkcs11` (gauge).
pub const SEAL_KIND: &str = "kms_seal_kind";
/// 1 while the integrity alarm is up (gauge).
pub const INTEGRITY_ALARM: &str = "kms_integrity_alarm";
/// The current root key generation (gauge).
pub const ROOT_GENERATION: &str = "kms_root_generation";
/// 1 while this replica holds a root rotation's next generation (gauge).
pub const ROTATION_IN_PROGRESS: &str = "kms_root_rotation_in_progress";
/// Secrets and rows still under the previous generation during a rotation (gauge).
pub const ROTATION_REMAINING: &str = "kms_root_rotation_remaining";
/// Rows this replica's rotation worker moved, by `step` (counter).
pub const ROTATION_ROWS: &str = "kms_root_rotation_rows_total";
/// Rotations this replica's worker completed (counter).
pub const ROTATIONS_COMPLETED: &str = "kms_root_rotations_completed_total";
/// Evidence refused at Attest, by `tee` and failed `check` (counter).
pub const ATTESTATION_REFUSALS: &str = "kms_attestation_refusals_total";
/// Database connections of the pool, by `state` (`idle`, `in_use`) (gauge).
pub const DB_POOL_CONNECTIONS: &str = "kms_db_pool_connections";
/// The pool's maximum size (`database.max_connections`) (gauge).
pub const DB_POOL_MAX: &str = "kms_db_pool_max_connections";

/// Every metric, as docs/operations.md lists them (a test keeps the two the same).
pub const ALL: &[&str] = &[
    GRPC_REQUESTS,
    GRPC_DURATION,
    AUDIT_QUEUE_DEPTH,
    AUDIT_COMMIT_DURATION,
    AUDIT_RECORDS_WRITTEN,
    AUDIT_CHECKPOINT_AGE,
    AUDIT_UNCHECKPOINTED,
    AUDIT_CHECKPOINT_FAILURES,
    SEAL_STATE,
    SEAL_KIND,
    INTEGRITY_ALARM,
    ROOT_GENERATION,
    ROTATION_IN_PROGRESS,
    ROTATION_REMAINING,
    ROTATION_ROWS,
    ROTATIONS_COMPLETED,
    ATTESTATION_REFUSALS,
    DB_POOL_CONNECTIONS,
    DB_POOL_MAX,
];

/// Latency buckets (seconds): 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets between scrapes (the exporter
/// keeps raw samples until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// At most this many scrape connections at once; more are closed at accept.
const MAX_CONNECTIONS: usize = 16;

/// The recorder, installed once per process (the facade has one global recorder).
static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls return the same
/// handle). From then on every metric below is recorded.
pub fn install() -> Result<PrometheusHandle, String> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .map_err(|e| e.to_string())?;
            let handle = builder.install_recorder().map_err(|e| e.to_string())?;
            describe();
            Ok(handle)
        })
        .clone()
}

/// Whether [`install`] has run (metrics are being recorded).
pub fn installed() -> bool {
    RECORDER.get().is_some_and(Result::is_ok)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC requests by service, method, gRPC code and kmsd reason (ok on success)"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "gRPC request latency until the response headers, by service, method, code and reason"
    );
    describe_gauge!(AUDIT_QUEUE_DEPTH, "audit records queued for the group-commit writer");
    describe_histogram!(
        AUDIT_COMMIT_DURATION,
        Unit::Seconds,
        "duration of one audit batch's transaction, by outcome"
    );
    describe_counter!(AUDIT_RECORDS_WRITTEN, "audit records written to the database");
    describe_gauge!(
        AUDIT_CHECKPOINT_AGE,
        Unit::Seconds,
        "seconds since the newest signed audit checkpoint this replica signed or verified"
    );
    describe_gauge!(
        AUDIT_UNCHECKPOINTED,
        "audit records this replica wrote that no checkpoint it knows covers yet"
    );
    describe_counter!(
        AUDIT_CHECKPOINT_FAILURES,
        "audit checkpoint rounds that failed (nothing signed)"
    );
    describe_gauge!(
        SEAL_STATE,
        "1 for the seal's current state (uninitialized, sealed, unsealed), 0 for the others"
    );
    describe_gauge!(
        SEAL_KIND,
        "1 for the seal's kind (shamir, dev, pkcs11), 0 for the others"
    );
    describe_gauge!(
        INTEGRITY_ALARM,
        "1 while the integrity alarm is up (state_rollback: nothing is served)"
    );
    describe_gauge!(ROOT_GENERATION, "the current root key generation");
    describe_gauge!(
        ROTATION_IN_PROGRESS,
        "1 while this replica holds a root rotation's next generation"
    );
    describe_gauge!(
        ROTATION_REMAINING,
        "secrets and rows still under the previous root generation (during a rotation)"
    );
    describe_counter!(
        ROTATION_ROWS,
        "rows this replica's rotation worker moved to the next root generation, by step"
    );
    describe_counter!(ROTATIONS_COMPLETED, "root rotations this replica's worker completed");
    describe_counter!(
        ATTESTATION_REFUSALS,
        "evidence refused at Attest, by TEE and failed check"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "database pool connections by state (idle, in_use)");
    describe_gauge!(DB_POOL_MAX, "the database pool's maximum size");
}

// ----- gRPC ------------------------------------------------------------------------------------

/// The handles of one RPC's successful calls, registered once so that the common path records
/// without building a key.
pub struct RpcOk {
    count: Counter,
    latency: Histogram,
}

impl RpcOk {
    /// Registers the success series of `service`/`method`.
    pub fn new(service: &'static str, method: &'static str) -> Self {
        Self {
            count: counter!(GRPC_REQUESTS, "service" => service, "method" => method, "code" => "OK", "reason" => "ok"),
            latency: histogram!(GRPC_DURATION, "service" => service, "method" => method, "code" => "OK", "reason" => "ok"),
        }
    }

    /// A successful call that took `elapsed`.
    pub fn record(&self, elapsed: Duration) {
        self.count.increment(1);
        self.latency.record(elapsed.as_secs_f64());
    }
}

/// A refused or failed call: `code` is the gRPC code's name, `reason` the stable reason (or
/// `none` for a status kmsd did not give one).
pub fn rpc_failed(
    service: &'static str,
    method: &'static str,
    code: &'static str,
    reason: &'static str,
    elapsed: Duration,
) {
    counter!(GRPC_REQUESTS, "service" => service, "method" => method, "code" => code, "reason" => reason).increment(1);
    histogram!(GRPC_DURATION, "service" => service, "method" => method, "code" => code, "reason" => reason)
        .record(elapsed.as_secs_f64());
}

// ----- audit -----------------------------------------------------------------------------------

/// One audit batch of `records` committed (or not) in `elapsed`.
pub fn audit_commit(elapsed: Duration, records: usize, ok: bool) {
    histogram!(AUDIT_COMMIT_DURATION, "outcome" => if ok { "ok" } else { "error" }).record(elapsed.as_secs_f64());
    if ok {
        counter!(AUDIT_RECORDS_WRITTEN).increment(u64::try_from(records).unwrap_or(u64::MAX));
    }
}

/// The newest checkpoint this replica signed or verified (0 = none yet).
static CHECKPOINT_SEQ: AtomicI64 = AtomicI64::new(0);
static CHECKPOINT_TIME_MS: AtomicI64 = AtomicI64::new(0);

/// The newest checkpoint known after a checkpoint round: its sequence number and signing time.
pub fn audit_checkpoint(seq: i64, time_unix_ms: i64) {
    CHECKPOINT_SEQ.store(seq, Ordering::Relaxed);
    CHECKPOINT_TIME_MS.store(time_unix_ms, Ordering::Relaxed);
}

/// A checkpoint round that failed.
pub fn audit_checkpoint_failed() {
    counter!(AUDIT_CHECKPOINT_FAILURES).increment(1);
}

/// What a scrape reads from live state (set just before rendering).
#[derive(Debug)]
pub struct Sample {
    /// Records queued for the audit writer.
    pub audit_queue_depth: usize,
    /// The newest audit entry this replica wrote, if any.
    pub audit_written_seq: Option<i64>,
    /// `uninitialized`, `sealed` or `unsealed`.
    pub seal_state: &'static str,
    /// The seal's kind once initialized: `shamir`, `dev` or `pkcs11`.
    pub seal_kind: Option<&'static str>,
    /// Whether the integrity alarm is up.
    pub integrity_alarm: bool,
    /// The current root generation.
    pub root_generation: u64,
    /// Whether a rotation's next generation is held.
    pub rotating: bool,
    /// Secrets and rows left under the previous generation (while rotating, if it could be read).
    pub rotation_remaining: Option<u64>,
    /// `postgres` or `sqlite`.
    pub db_backend: &'static str,
    /// Open pool connections.
    pub db_pool_size: u32,
    /// Idle pool connections.
    pub db_pool_idle: usize,
    /// The pool's maximum size.
    pub db_pool_max: u32,
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

fn set(sample: &Sample) {
    gauge!(AUDIT_QUEUE_DEPTH).set(sample.audit_queue_depth as f64);
    for state in ["uninitialized", "sealed", "unsealed"] {
        gauge!(SEAL_STATE, "state" => state).set(flag(sample.seal_state == state));
    }
    for kind in ["shamir", "dev", "pkcs11"] {
        gauge!(SEAL_KIND, "kind" => kind).set(flag(sample.seal_kind == Some(kind)));
    }
    gauge!(INTEGRITY_ALARM).set(flag(sample.integrity_alarm));
    gauge!(ROOT_GENERATION).set(sample.root_generation as f64);
    gauge!(ROTATION_IN_PROGRESS).set(flag(sample.rotating));
    gauge!(ROTATION_REMAINING).set(sample.rotation_remaining.unwrap_or(0) as f64);
    let idle = u32::try_from(sample.db_pool_idle)
        .unwrap_or(u32::MAX)
        .min(sample.db_pool_size);
    let backend = sample.db_backend;
    gauge!(DB_POOL_CONNECTIONS, "backend" => backend, "state" => "idle").set(f64::from(idle));
    gauge!(DB_POOL_CONNECTIONS, "backend" => backend, "state" => "in_use").set(f64::from(sample.db_pool_size - idle));
    gauge!(DB_POOL_MAX, "backend" => backend).set(f64::from(sample.db_pool_max));
    let seq = CHECKPOINT_SEQ.load(Ordering::Relaxed);
    let time = CHECKPOINT_TIME_MS.load(Ordering::Relaxed);
    if time > 0 {
        let age_ms = (kms_core::now_unix_ms() - time).max(0);
        gauge!(AUDIT_CHECKPOINT_AGE).set(age_ms as f64 / 1000.0);
    }
    let written = sample.audit_written_seq.unwrap_or(0);
    gauge!(AUDIT_UNCHECKPOINTED).set((written - seq).max(0) as f64);
}

// ----- rotation and attestation ----------------------------------------------------------------

/// The rotation worker moved `rows` rows in `step` (`rewrap` or `reauthenticate`).
pub fn rotation_rows(step: &'static str, rows: u64) {
    counter!(ROTATION_ROWS, "step" => step).increment(rows);
}

/// The rotation worker completed a rotation.
pub fn rotation_completed() {
    counter!(ROTATIONS_COMPLETED).increment(1);
}

/// Evidence from `tee` (`snp` or `tpm`) refused by the verifier's `check` (its stable name).
pub fn attestation_refused(tee: &'static str, check: &'static str) {
    counter!(ATTESTATION_REFUSALS, "tee" => tee, "check" => check).increment(1);
}

// ----- the scrape endpoint ---------------------------------------------------------------------

/// Binds the scrape endpoint's listener and installs the recorder, so that a listener that
/// cannot be had stops the start.
pub async fn bind(listen: SocketAddr) -> Result<(TcpListener, PrometheusHandle), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let handle = install()?;
    Ok((listener, handle))
}

/// Serves `GET /metrics` on `listener` until dropped (abort the task): each scrape first sets
/// the gauges from `sample()`, then renders everything. Also folds histogram samples into their
/// buckets every few seconds, scraped or not.
pub async fn serve<F, Fut>(listener: TcpListener, handle: PrometheusHandle, sample: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Sample> + Send,
{
    let sample = Arc::new(sample);
    let mut connections = tokio::task::JoinSet::new();
    let mut upkeep = tokio::time::interval(UPKEEP);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = upkeep.tick() => handle.run_upkeep(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if connections.len() >= MAX_CONNECTIONS {
                    continue;
                }
                let (handle, sample) = (handle.clone(), sample.clone());
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (handle, sample) = (handle.clone(), sample.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer(&req, &handle, sample.as_ref()).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(10))
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

type Body = http_body_util::Full<Bytes>;

async fn answer<B, F, Fut>(req: &hyper::Request<B>, handle: &PrometheusHandle, sample: &F) -> hyper::Response<Body>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Sample>,
{
    let reply = |status: hyper::StatusCode, text: String| {
        let mut r = hyper::Response::new(Body::new(Bytes::from(text)));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(hyper::StatusCode::NOT_FOUND, "kmsd serves metrics at /metrics\n".into());
    }
    if req.method() != hyper::Method::GET {
        return reply(hyper::StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    set(&sample().await);
    let mut r = reply(hyper::StatusCode::OK, handle.render());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric is in docs/operations.md's "Metrics" table, and the table names no other.
    #[test]
    fn every_metric_is_documented() {
        let docs = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/operations.md"));
        let section = docs
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .expect("docs/operations.md has a Metrics section");
        let documented: std::collections::BTreeSet<&str> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `kms_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let ours: std::collections::BTreeSet<&str> = ALL.iter().map(|m| &m["kms_".len()..]).collect();
        assert_eq!(documented, ours);
    }
}
