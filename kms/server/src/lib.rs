//! `kmsd`, the key management service: gRPC data plane (KeyService) and admin plane
//! (AdminService), storage on PostgreSQL or SQLite, the seal that holds the root key, and the
//! audit chain. [`serve`] runs the whole server on a given listener until a shutdown signal, so
//! tests run the real thing on port 0.
//!
//! Never logs or returns key material; every refusal carries a stable reason.

pub mod attest;
pub mod audit;
pub mod config;
pub mod error;
pub mod grpc;
pub mod identity;
pub mod keys;
pub mod limits;
pub mod node;
pub mod ops;
pub mod request;
pub mod seal;
pub mod storage;
pub mod telemetry;
pub mod wire;
pub mod workers;
pub mod wrap_ids;

use std::future::Future;
use std::sync::Arc;

use kms_core::keyfile::AdminKeyFile;
use kms_proto::v1::admin_service_server::AdminServiceServer;
use kms_proto::v1::attestation_service_server::AttestationServiceServer;
use kms_proto::v1::key_service_server::KeyServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::audit::Audit;
use crate::audit::AuditLog;
use crate::config::Config;
use crate::identity::{Callers, Identities};
use crate::keys::Keys;
use crate::ops::admin::AdminPlane;
use crate::ops::attestation::AttestationPlane;
use crate::ops::data::DataPlane;
use crate::request::NewAdmin;
use crate::seal::{Seal, SealKind};
use crate::storage::Store;

/// The dev admin's key file, written in the data directory when dev mode initializes.
pub const DEV_ADMIN_KEY_FILE: &str = "dev-admin.key";

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The database could not be reached or migrated.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The seal could not be loaded.
    #[error("seal: {0}")]
    Seal(#[from] seal::LoadError),
    /// TLS files could not be read or used.
    #[error("tls: {0}")]
    Tls(String),
    /// Dev-mode initialization failed.
    #[error("dev mode: {0}")]
    Dev(String),
    /// The configuration cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// The gRPC transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The node identity could not be made (the configured evidence is unavailable).
    #[error("node: {0}")]
    Node(String),
    /// The metrics endpoint (`[metrics]`) cannot listen.
    #[error("metrics: {0}")]
    Metrics(String),
}

/// Runs the server on `listener` until `shutdown` completes, then drains in-flight calls and
/// the audit queue.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let metrics = match config.metrics.as_ref() {
        Some(m) => Some(
            workers::scrape::Endpoint::bind(m.listen)
                .await
                .map_err(ServeError::Metrics)?,
        ),
        None => None,
    };
    let store = Store::connect_with(
        &config.database_url,
        config.database_max_connections,
        config.database_acquire_timeout,
    )
    .await?;
    let dev_dir = config.dev.as_ref().map(|d| d.data_dir.clone());
    let seal = Arc::new(Seal::load(&store, dev_dir.clone(), config.hsm.clone()).await?);
    let rotation_task = workers::rotation::spawn(store.clone(), seal.clone(), config.rotation);
    let checkpointer = workers::checkpoint::Checkpoints::new(store.clone());
    let checkpoints = workers::checkpoint::spawn(checkpointer.clone(), seal.clone(), config.checkpoint_interval);
    let (audit, audit_task) = AuditLog::start(store.clone(), config.audit_batch_max);
    let violations = tokio::spawn(audit_violations(store.clone(), audit.clone()));
    let metrics = metrics.map(|m| m.spawn(store.clone(), seal.clone(), audit.queue_probe()));
    let keys = Arc::new(Keys::new(store.clone(), seal.clone(), config.key_cache_ttl));
    let tls_spki = match &config.tls {
        Some(t) => {
            let pem = std::fs::read(&t.cert).map_err(|e| ServeError::Tls(format!("{}: {e}", t.cert.display())))?;
            node::tls_spki_sha256(&pem).map_err(ServeError::Tls)?
        }
        None => [0; 32],
    };
    let node = Arc::new(
        node::Node::start(config.node.clone(), seal.unseal_public_key(), tls_spki)
            .await
            .map_err(ServeError::Node)?,
    );
    let test_roots = config.danger.snp_test_roots().map_err(|e| ServeError::Config(e.0))?;
    let attestation = Arc::new(
        attest::Attestation::new(store.clone(), seal.clone(), config.attestation.clone(), test_roots)
            .map_err(|e| ServeError::Config(e.0))?,
    );
    let limits = Arc::new(limits::Limits::new(&config.limits));
    let limits_report = tokio::spawn(limits.clone().report(audit.clone()));
    let callers = Callers::new(
        Arc::new(Identities::default()),
        limits,
        audit.clone(),
        config.tls.is_some(),
    );
    let admin = AdminPlane {
        store: store.clone(),
        seal: seal.clone(),
        keys: keys.clone(),
        audit: audit.clone(),
        allowed_countries: config.allowed_countries.clone(),
        window: config.admin_request_window,
        skew: config.admin_clock_skew,
        init_admins: config.init_admins.clone(),
        custodians: config.custodians.clone().or_else(|| config.init_admins.clone()),
        proposal_ttl: config.proposal_ttl,
        allow_unattested: config.danger.allow_unattested_keys,
        attestation: attestation.clone(),
        callers: callers.clone(),
        node: node.clone(),
    };
    if let Some(dir) = &dev_dir {
        dev_init(&admin, dir).await?;
    }
    let data = DataPlane {
        node: node.clone(),
        keys: keys.clone(),
        audit: audit.clone(),
        callers: callers.clone(),
        allow_unattested: config.danger.allow_unattested_keys,
        attestation: attestation.clone(),
    };
    let attestation_plane = AttestationPlane {
        node,
        store: store.clone(),
        seal: seal.clone(),
        engine: attestation.clone(),
        audit: audit.clone(),
        callers,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kms_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Tls(format!("reflection: {e}")))?;
    // v1alpha too: older grpcurl and grpcui speak only that.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kms_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Tls(format!("reflection: {e}")))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(background(
        store.clone(),
        keys.clone(),
        seal.clone(),
        health,
        Intervals {
            destroy: config.destroy_interval,
            scan: config.integrity_scan_interval,
            destroyer_ahead_ms: i64::try_from(config.danger_destroyer_clock_ahead.as_millis()).unwrap_or(0),
        },
        stop_rx,
    ));

    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())));
        let identity = Identity::from_pem(read(&tls.cert)?, read(&tls.key)?);
        let tls_config = ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(Certificate::from_pem(read(&tls.client_ca)?));
        builder = builder.tls_config(tls_config)?;
    }
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(addr = %config.listen, tls = config.tls.is_some(), dev = dev_dir.is_some(), "kmsd serving");
    let result = builder
        .layer(grpc::metered::Metered::new(metrics.is_some()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(KeyServiceServer::new(data))
        .add_service(AdminServiceServer::new(admin))
        .add_service(AttestationServiceServer::new(attestation_plane))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = stop_tx.send(true);
    let _ = background.await;
    rotation_task.abort();
    checkpoints.abort();
    violations.abort();
    limits_report.abort();
    if let Some(m) = &metrics {
        m.abort();
    }
    drop(audit);
    drop(keys);
    // The writer ends when the last handle is gone and its queue is written.
    let _ = audit_task.await;
    // A last checkpoint covers everything written up to the stop.
    if seal.root().is_ok() && store.integrity().alarm().is_none() {
        if let Err(e) = workers::checkpoint::checkpoint_now(&checkpointer, &seal).await {
            tracing::warn!(reason = %e.reason, error = %e.message, "final audit checkpoint not signed");
        }
    }
    tracing::info!("kmsd stopped");
    result.map_err(ServeError::from)
}

/// Dev mode: on an empty database, create a dev admin (key file in the data directory) and
/// initialize with the dev seal, so `kmsctl` works at once.
pub(crate) async fn dev_init(admin: &AdminPlane, dir: &std::path::Path) -> Result<(), ServeError> {
    if admin.seal.is_initialized() {
        return Ok(());
    }
    let id = kms_core::ids::AdminId::parse("dev-admin").map_err(|e| ServeError::Dev(e.to_string()))?;
    let country = kms_core::jurisdiction::Country::parse("DE").map_err(|e| ServeError::Dev(e.to_string()))?;
    let path = dir.join(DEV_ADMIN_KEY_FILE);
    // A dev admin key left from an earlier database in this directory is reused.
    let key = match std::fs::read_to_string(&path) {
        Ok(text) => AdminKeyFile::decode(&text).map_err(|e| ServeError::Dev(format!("{}: {e}", path.display())))?,
        Err(_) => {
            let key = AdminKeyFile::generate(id, country).map_err(|e| ServeError::Dev(e.to_string()))?;
            seal::write_secret_file(&path, key.encode().expose_secret())
                .map_err(|e| ServeError::Dev(format!("{}: {e}", path.display())))?;
            key
        }
    };
    let public = key.public();
    let new = NewAdmin {
        id: key.admin_id.clone(),
        country: key.country.clone(),
        signing_key: public.signing_key().map_err(|e| ServeError::Dev(e.to_string()))?,
        encryption_key: public.encryption_key().map_err(|e| ServeError::Dev(e.to_string()))?,
        custodian: false,
    };
    let mut audit = Audit::new("system:dev-init", "admin.init");
    admin
        .initialize(SealKind::Dev, 0, 1, vec![new], &mut audit)
        .await
        .map_err(|e| ServeError::Dev(e.message))?;
    Ok(())
}

/// Writes every row the integrity checks refused into the audit log (each at most once a
/// minute), so an operator sees what someone did to the database.
async fn audit_violations(store: Store, audit: AuditLog) {
    let Some(mut rx) = store.integrity().take_violations() else {
        return;
    };
    while let Some(v) = rx.recv().await {
        let mut a = Audit::new("system:integrity", "integrity.violation");
        if v.table == "keys" {
            if let Some(id) = serde_json::from_str::<Vec<String>>(&v.key)
                .ok()
                .and_then(|k| k.into_iter().next())
            {
                a.key(&id);
            }
        }
        a.detail("table", v.table);
        a.detail("row", v.key.as_str());
        a.detail("found", v.detail.as_str());
        let e = error::ApiError::new(error::violation_reason(v.kind), format!("{}", v));
        audit.record(a.failed(&e)).await;
    }
}

/// How often the periodic work runs.
struct Intervals {
    destroy: std::time::Duration,
    scan: std::time::Duration,
    destroyer_ahead_ms: i64,
}

/// Periodic work: destroy keys whose deletion window ended, forget expired admin nonces, keep
/// the health status in step with the seal, follow the state log (other replicas' writes, and
/// whether the database went back), and check every row now and then.
async fn background(
    store: Store,
    keys: Arc<Keys>,
    seal: Arc<Seal>,
    health: tonic_health::server::HealthReporter,
    every: Intervals,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut destroy_tick = tokio::time::interval(every.destroy);
    let mut scan_tick = tokio::time::interval(every.scan);
    scan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut health_tick = tokio::time::interval(std::time::Duration::from_millis(500));
    let mut last_sealed = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = health_tick.tick() => {
                // Another replica may have run Init: pick up its seal record (sealed).
                if !seal.is_initialized() {
                    if let Ok(Some(cfg)) = store.seal_config_unverified().await {
                        seal.adopt_initialized(&store, &cfg).await;
                    }
                }
                let sealed = seal.root().is_err() || store.integrity().alarm().is_some();
                if !sealed {
                    // Learns of other replicas' writes, and notices a database that went back.
                    if let Err(e) = store.integrity().catch_up(&store).await {
                        tracing::warn!(error = %e, "cannot follow the state log");
                    }
                }
                if last_sealed != Some(sealed) {
                    last_sealed = Some(sealed);
                    if sealed {
                        health.set_not_serving::<KeyServiceServer<DataPlane>>().await;
                    } else {
                        health.set_serving::<KeyServiceServer<DataPlane>>().await;
                    }
                }
            }
            _ = scan_tick.tick() => {
                if seal.root().is_ok() && store.integrity().alarm().is_none() {
                    match store.integrity().scan(&store).await {
                        Ok(v) if v.is_empty() => tracing::debug!("integrity scan: every row verifies"),
                        Ok(v) => tracing::error!(refused = v.len(), "integrity scan: rows that kmsd did not write are refused (see the audit log)"),
                        Err(e) => tracing::warn!(error = %e, "integrity scan failed"),
                    }
                }
            }
            _ = destroy_tick.tick() => {
                if seal.root().is_err() {
                    continue;
                }
                destroy_due(&store, &keys, kms_core::now_unix_ms() + every.destroyer_ahead_ms).await;
                match store.expire_proposals(kms_core::now_unix_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "proposals expired"),
                    Err(e) => tracing::warn!(error = %e, "cannot expire proposals"),
                }
                if let Err(e) = store.purge_nonces(kms_core::now_unix_ms()).await {
                    tracing::warn!(error = %e, "cannot purge admin nonces");
                }
                if let Err(e) = workers::housekeeping::purge_attestation(&store, kms_core::now_unix_ms()).await {
                    tracing::warn!(error = %e, "cannot purge attestation challenges");
                }
            }
        }
    }
}

/// Destroys keys whose deletion time is at or before `now`: material erased, state Destroyed,
/// audited in the same transaction. Safe on several replicas: write transactions serialize and
/// re-check the state.
pub async fn destroy_due(store: &Store, keys: &Keys, now: i64) {
    let due = match store.due_for_destruction(now).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for keys to destroy");
            return;
        }
    };
    for id in due {
        let mut audit = Audit::new("system:destroyer", "destroy_key");
        audit.key(id);
        let r = store
            .change_state(
                id,
                kms_core::key::Transition::Destroy,
                None,
                Some(now),
                now,
                None,
                audit.allowed(),
            )
            .await;
        match r {
            Ok(Some(row)) => {
                tracing::info!(key_id = %row.id, "key destroyed");
                keys.remember(row);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(key_id = %id, error = ?e, "cannot destroy key"),
        }
    }
}
