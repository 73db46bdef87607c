//! The metrics endpoint's task (`[metrics]`): serves scrapes ([`crate::telemetry::serve`]) and,
//! at each scrape, reads the live state the gauges show: the seal, the integrity alarm, a
//! rotation's progress, the audit queue and what this replica wrote, the database pool.
//!
//! Reads only; holds no handle that keeps the audit writer alive. The one database read
//! (a rotation's remaining rows, only while one runs) is bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::audit::QueueProbe;
use crate::seal::Seal;
use crate::storage::{Backend, Store};
use crate::telemetry::{self, Sample};

/// How long a scrape waits for a rotation's remaining count.
const REMAINING_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoint's listener, bound (and the recorder installed) before anything else starts.
pub struct Endpoint {
    listener: TcpListener,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("listener", &self.listener).finish()
    }
}

impl Endpoint {
    /// Binds `listen` and installs the recorder; the error names the address.
    pub async fn bind(listen: SocketAddr) -> Result<Self, String> {
        let (listener, handle) = telemetry::bind(listen).await?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics endpoint: http://{addr}/metrics");
        }
        Ok(Self { listener, handle })
    }

    /// Serves scrapes until the task is aborted.
    pub fn spawn(self, store: Store, seal: Arc<Seal>, audit: QueueProbe) -> JoinHandle<()> {
        let sampler = Arc::new(Sampler { store, seal, audit });
        tokio::spawn(telemetry::serve(self.listener, self.handle, move || {
            let sampler = sampler.clone();
            async move { sampler.sample().await }
        }))
    }
}

struct Sampler {
    store: Store,
    seal: Arc<Seal>,
    audit: QueueProbe,
}

impl Sampler {
    async fn sample(&self) -> Sample {
        let status = self.seal.status();
        let seal_state = match (status.initialized, status.sealed) {
            (false, _) => "uninitialized",
            (true, true) => "sealed",
            (true, false) => "unsealed",
        };
        let rotation_remaining = match status.rotating_to {
            Some(_) => tokio::time::timeout(REMAINING_TIMEOUT, self.store.remaining_under(status.generation))
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        let pool = self.store.pool();
        Sample {
            audit_queue_depth: self.audit.depth(),
            audit_written_seq: self.store.integrity().audit_written().map(|(seq, _)| seq),
            seal_state,
            seal_kind: status.kind.map(|k| k.as_str()),
            integrity_alarm: self.store.integrity().alarm().is_some(),
            root_generation: status.generation,
            rotating: status.rotating_to.is_some(),
            rotation_remaining,
            db_backend: match self.store.backend() {
                Backend::Postgres => "postgres",
                Backend::Sqlite => "sqlite",
            },
            db_pool_size: pool.size(),
            db_pool_idle: pool.num_idle(),
            db_pool_max: pool.options().get_max_connections(),
        }
    }
}
