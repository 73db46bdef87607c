//! The audit writer: group commit. Calls hand their record to one writer task per process, which
//! appends whatever has queued up in one transaction, so durability costs one commit per batch,
//! not per call. A call that releases key material or changes state waits for its batch to be
//! durable before it answers (fail closed); a refusal queues its record and answers at once.
//! Records never contain key material.
//!
//! [`Audit`] is what one call's record will say, filled in as the call proceeds.

use std::time::Duration;

use kms_core::audit::{Outcome, Record};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ApiError;
use crate::storage::Store;
use kms_proto::Reason;

struct Pending {
    record: Record,
    done: Option<oneshot::Sender<bool>>,
}

/// A handle to the audit writer. Cloning it is cheap; the writer stops when every handle is gone
/// and the queue is empty.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditLog")
    }
}

impl AuditLog {
    /// Starts the writer.
    pub fn start(store: Store, batch_max: usize) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64 * 1024);
        let handle = tokio::spawn(writer(store, rx, batch_max));
        (Self { tx }, handle)
    }

    /// Appends `record` and waits until it is durable. An error means it is not, and the caller
    /// must not acknowledge its operation.
    pub async fn record_durable(&self, record: Record) -> Result<(), ApiError> {
        let (done, wait) = oneshot::channel();
        let unavailable = || {
            ApiError::new(
                Reason::AuditUnavailable,
                "the audit log cannot be written; nothing was released",
            )
        };
        self.tx
            .send(Pending {
                record,
                done: Some(done),
            })
            .await
            .map_err(|_| unavailable())?;
        match wait.await {
            Ok(true) => Ok(()),
            _ => Err(unavailable()),
        }
    }

    /// A gauge of the queue that does not keep the writer alive (for the metrics endpoint).
    pub fn queue_probe(&self) -> QueueProbe {
        QueueProbe(self.tx.downgrade())
    }

    /// Queues `record` (a refusal or a read); it is written with the next batch.
    pub async fn record(&self, record: Record) {
        if self.tx.send(Pending { record, done: None }).await.is_err() {
            tracing::error!("audit writer stopped; a refusal record was dropped");
        }
    }
}

/// How many records wait for the writer, read without keeping it alive.
#[derive(Clone)]
pub struct QueueProbe(mpsc::WeakSender<Pending>);

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueProbe")
    }
}

impl QueueProbe {
    /// Records queued now (0 once the writer has stopped).
    pub fn depth(&self) -> usize {
        self.0
            .upgrade()
            .map_or(0, |tx| tx.max_capacity().saturating_sub(tx.capacity()))
    }
}

async fn writer(store: Store, mut rx: mpsc::Receiver<Pending>, batch_max: usize) {
    let mut retry: Vec<Record> = Vec::new();
    loop {
        let mut batch: Vec<Pending> = Vec::with_capacity(batch_max);
        if retry.is_empty() {
            match rx.recv().await {
                Some(p) => batch.push(p),
                None => return,
            }
        }
        while batch.len() + retry.len() < batch_max {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut records: Vec<Record> = std::mem::take(&mut retry);
        records.extend(batch.iter().map(|p| p.record.clone()));
        let (count, started) = (records.len(), std::time::Instant::now());
        let written = store.append_audit(records).await;
        crate::telemetry::audit_commit(started.elapsed(), count, written.is_ok());
        match written {
            Ok(_) => {
                for p in batch {
                    if let Some(done) = p.done {
                        let _ = done.send(true);
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "audit batch not written; operations waiting on it fail");
                // Calls waiting on durability are told it failed, so they never answer "done";
                // their records are dropped with them. Queued refusals are kept and retried.
                for p in batch {
                    match p.done {
                        Some(done) => {
                            let _ = done.send(false);
                        }
                        None => retry.push(p.record),
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What one call's audit record will say, filled in as the call proceeds (ids and details,
/// never key material, so it may be copied into the records a transaction writes).
#[derive(Clone, Debug)]
pub struct Audit {
    pub(crate) caller: String,
    pub(crate) operation: &'static str,
    key_id: Option<String>,
    detail: serde_json::Map<String, serde_json::Value>,
}

impl Audit {
    /// For a call by `caller` to `operation`.
    pub fn new(caller: impl Into<String>, operation: &'static str) -> Self {
        Self {
            caller: caller.into(),
            operation,
            key_id: None,
            detail: serde_json::Map::new(),
        }
    }

    /// The operation recorded (a quorum call records the operation it runs).
    pub(crate) fn set_operation(&mut self, operation: &'static str) {
        self.operation = operation;
    }

    /// The key concerned.
    pub fn key(&mut self, id: impl std::fmt::Display) {
        self.key_id = Some(id.to_string());
    }

    /// A detail (never key material).
    pub fn detail(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.detail.insert(k.to_owned(), v.into());
    }

    fn into_record(mut self, outcome: Outcome, reason: &str, message: Option<&str>, extra: Option<&str>) -> Record {
        if let Some(m) = message {
            self.detail.insert("message".into(), m.into());
        }
        if let Some(d) = extra {
            self.detail.insert("refusal_detail".into(), d.into());
        }
        Record {
            time_unix_ms: kms_core::now_unix_ms(),
            caller: self.caller,
            operation: self.operation.to_owned(),
            key_id: self.key_id,
            outcome: outcome.as_str().to_owned(),
            reason: reason.to_owned(),
            detail: serde_json::Value::Object(self.detail).to_string(),
        }
    }

    /// The record of a success.
    pub fn allowed(self) -> Record {
        self.into_record(Outcome::Allowed, "", None, None)
    }

    /// The record of a refusal or failure.
    pub fn failed(self, e: &ApiError) -> Record {
        let outcome = if e.is_refusal() {
            Outcome::Refused
        } else {
            Outcome::Error
        };
        self.into_record(outcome, e.reason.as_str(), Some(&e.message), e.audit_detail.as_deref())
    }
}

impl Audit {
    /// The success record as it stands, for a transaction to write with its change.
    pub(crate) fn clone_allowed(a: &Audit) -> Record {
        a.clone().allowed()
    }

    /// The refusal record as it stands.
    pub(crate) fn clone_failed(a: &Audit, e: &ApiError) -> Record {
        a.clone().failed(e)
    }
}
