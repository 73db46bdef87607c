//! Test harness: a real `kmsd` (the `kms_server::serve` function, on port 0) over mTLS, with a
//! throwaway CA, on SQLite (a temp dir) or PostgreSQL (a fresh database per test on the server
//! named by `KMS_TEST_POSTGRES_URL`, which `scripts/test` starts). Admin requests are signed with
//! software admin keys exactly as `kmsctl` signs them.
//!
//! When `KMS_TEST_POSTGRES_URL` is unset the PostgreSQL variants are skipped with a message,
//! unless `KMS_TEST_REQUIRE_POSTGRES=1` (as `scripts/test` sets it), where they fail.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod attest;
pub mod faults;
pub mod proxy;
pub mod swtpm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kms_core::admin::AdminSigner;
use kms_core::ids::AdminId;
use kms_core::jurisdiction::{AllowedCountries, Country};
use kms_core::keyfile::AdminKeyFile;
use kms_proto::v1 as pb;
use kms_proto::v1::admin_request::Operation as Op;
use kms_proto::v1::admin_service_client::AdminServiceClient;
use kms_proto::v1::key_service_client::KeyServiceClient;
use kms_server::config::{Config, Danger, TlsConfig};
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use sqlx::Connection;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh database.
pub struct Db {
    pub url: String,
    pub backend: Backend,
    _dir: Option<tempfile::TempDir>,
}

impl Db {
    /// A new empty database, or `None` when PostgreSQL is not available and not required.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Some(Self {
                    url: format!("sqlite://{}?mode=rwc", dir.path().join("kms.db").display()),
                    backend,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let base = postgres_url()?;
                Some(Self::fresh_postgres(&base, "kms_t").await)
            }
        }
    }

    /// A new database `<prefix>_<random>` on the PostgreSQL server of `base_url`.
    pub async fn fresh_postgres(base_url: &str, prefix: &str) -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("{prefix}_{}", hex::encode(kms_core::random_array::<8>().unwrap()));
        let mut conn = sqlx::AnyConnection::connect(base_url)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let (server, _) = base_url.rsplit_once('/').unwrap();
        Self {
            url: format!("{server}/{name}"),
            backend: Backend::Postgres,
            _dir: None,
        }
    }

    /// A copy of this database as it is now, as an operator would make one to run a second
    /// replica on (a fork). Servers on this database should be stopped first: on PostgreSQL
    /// the copy is `CREATE DATABASE … TEMPLATE`, which needs no other session on the source
    /// (any left are ended); on SQLite it is `VACUUM INTO`.
    pub async fn fork(&self) -> Self {
        match self.backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("kms.db");
                let mut conn = self.connect().await;
                sqlx::query(&format!("VACUUM INTO '{}'", path.display()))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                conn.close().await.unwrap();
                Self {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    backend: Backend::Sqlite,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let (server, source) = self.url.rsplit_once('/').unwrap();
                let name = format!("{source}_fork");
                let mut conn = sqlx::AnyConnection::connect(&format!("{server}/postgres"))
                    .await
                    .expect("connect to PostgreSQL");
                // Ended sessions take a moment to go: until then the copy is refused ("being
                // accessed by other users").
                let mut tries = 0;
                loop {
                    sqlx::query(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{source}' AND pid <> pg_backend_pid()"
                    ))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                    match sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {source}"))
                        .execute(&mut conn)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            eprintln!("copying {source}: {e}; again");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("copying {source}: {e}"),
                    }
                }
                conn.close().await.unwrap();
                Self {
                    url: format!("{server}/{name}"),
                    backend: Backend::Postgres,
                    _dir: None,
                }
            }
        }
    }

    /// A direct connection, for tests that look at or tamper with rows.
    pub async fn connect(&self) -> sqlx::AnyConnection {
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.url).await.unwrap()
    }
}

/// The python of the peers' venv (scripts/peer-venv builds it on first use from the pins of
/// scripts/peer-requirements.txt, which needs PyPI and the apt packages python3 python3-venv).
/// The error carries the script's output.
pub fn peer_python() -> Result<PathBuf, String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/peer-venv");
    let out = std::process::Command::new("bash")
        .arg(script)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run scripts/peer-venv: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "scripts/peer-venv failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `KMS_TEST_POSTGRES_URL`, or `None` (with a SKIPPED message) when PostgreSQL is not available
/// and not required; panics when `KMS_TEST_REQUIRE_POSTGRES=1` and it is unset.
pub fn postgres_url() -> Option<String> {
    let Ok(base) = std::env::var("KMS_TEST_POSTGRES_URL") else {
        if std::env::var("KMS_TEST_REQUIRE_POSTGRES").as_deref() == Ok("1") {
            panic!("KMS_TEST_POSTGRES_URL is not set but KMS_TEST_REQUIRE_POSTGRES=1");
        }
        eprintln!("SKIPPED (PostgreSQL): KMS_TEST_POSTGRES_URL is not set; scripts/test sets it");
        return None;
    };
    Some(base)
}

/// Defines `mod $name { sqlite, postgres }` tests that run `$body(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body($crate::Backend::Postgres).await
            }
        }
    };
}

/// A throwaway CA with a server certificate for `localhost`/127.0.0.1, and client certificates
/// on demand.
pub struct Pki {
    dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    pub ca_pem: String,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.distinguished_name.push(DnType::CommonName, "kms test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = ca.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        let pki = Self {
            dir,
            ca_params,
            ca_key,
            ca_pem,
        };
        let (cert, key) = pki.issue(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            "kmsd",
        );
        std::fs::write(pki.dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(pki.dir.path().join("server.key"), key).unwrap();
        pki
    }

    fn issue(&self, sans: Vec<SanType>, cn: &str) -> (String, String) {
        self.issue_with(sans, cn, Vec::new())
    }

    /// A leaf certificate (PEM) and its key; `usages` empty: no extended key usage extension.
    fn issue_with(&self, sans: Vec<SanType>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A server identity for `localhost` (and 127.0.0.1) issued by this CA: what an operator's
    /// TLS-terminating proxy presents.
    pub fn server_identity(&self, cn: &str) -> Identity {
        let (cert, key) = self.issue(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            cn,
        );
        Identity::from_pem(cert, key)
    }

    /// A client identity with these SANs and common name.
    pub fn client_with(&self, sans: Vec<SanType>, cn: &str) -> Identity {
        let (cert, key) = self.issue(sans, cn);
        Identity::from_pem(cert, key)
    }

    /// A client identity with these SANs, common name and extended key usages.
    pub fn client_with_usages(&self, sans: Vec<SanType>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>) -> Identity {
        let (cert, key) = self.issue_with(sans, cn, usages);
        Identity::from_pem(cert, key)
    }

    /// A certificate of this CA with these SANs, common name and extended key usages, written to
    /// `NAME.pem` and `NAME.key`: e.g. a server certificate an operator might get wrong.
    pub fn files_with(
        &self,
        sans: Vec<SanType>,
        cn: &str,
        usages: Vec<ExtendedKeyUsagePurpose>,
        name: &str,
    ) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue_with(sans, cn, usages);
        let c = self.dir.path().join(format!("{name}.pem"));
        let k = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    /// A client identity whose principal is `spiffe_uri`.
    pub fn client(&self, spiffe_uri: &str) -> Identity {
        let (cert, key) = self.issue(vec![SanType::URI(spiffe_uri.try_into().unwrap())], "client");
        Identity::from_pem(cert, key)
    }

    /// Writes a client identity to files (for `kmsctl` and the bench).
    pub fn client_files(&self, spiffe_uri: &str, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(vec![SanType::URI(spiffe_uri.try_into().unwrap())], name);
        let c = self.dir.path().join(format!("{name}.pem"));
        let k = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    pub fn tls_config(&self) -> TlsConfig {
        TlsConfig {
            cert: self.dir.path().join("server.pem"),
            key: self.dir.path().join("server.key"),
            client_ca: self.dir.path().join("ca.pem"),
        }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Options for a test server.
#[derive(Clone)]
pub struct Options {
    pub allow_unattested: bool,
    pub key_cache_ttl: Duration,
    pub destroy_interval: Duration,
    pub allowed_countries: AllowedCountries,
    /// `[attestation]`: lifetimes, hardware countries, TPM EK CA bundle, SNP trust.
    pub attestation: kms_server::config::AttestationConfig,
    /// `danger.snp_test_roots`: synthetic SNP chains the server trusts.
    pub snp_test_roots: Vec<kms_server::config::SnpTestRoot>,
    /// M of the approval quorum the Ceremony initializes with (0 means 1).
    pub approval_quorum: u32,
    /// `admin.proposal_ttl_secs`.
    pub proposal_ttl: Duration,
    /// `[seal.pkcs11]`.
    pub hsm: Option<kms_server::config::HsmSealConfig>,
    /// Where the node identity's evidence comes from (default: none; tests of node attestation
    /// give kmsd a TPM of its own).
    pub node: kms_server::node::NodeEvidence,
    /// `[seal]` rotation pace.
    pub rotation: kms_server::config::RotationPace,
    /// `audit.checkpoint_interval_secs`.
    pub checkpoint_interval: Duration,
    /// `admin.init_admins`: the fingerprints Init must name (the Ceremony sets its own).
    pub init_admins: Option<Vec<String>>,
    /// `admin.custodians`: who may unseal (unset: `init_admins`).
    pub custodians: Option<Vec<String>>,
    /// `integrity.scan_interval_secs`.
    pub integrity_scan_interval: Duration,
    /// How far ahead the destroyer's clock runs (`Config::danger_destroyer_clock_ahead`).
    pub destroyer_clock_ahead: Duration,
    /// `[limits]`.
    pub limits: kms_server::config::LimitsConfig,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow_unattested: true,
            key_cache_ttl: Duration::from_millis(0),
            destroy_interval: Duration::from_secs(3600),
            allowed_countries: AllowedCountries::eu(),
            // Every genuine SNP report of the synthetic labs (tests of the trust settings set
            // them as a deployment would).
            attestation: kms_server::config::AttestationConfig {
                snp: attestation::snp::SnpTrust::insecure_any_platform(),
                ..kms_server::config::AttestationConfig::default()
            },
            snp_test_roots: Vec::new(),
            approval_quorum: 1,
            proposal_ttl: Duration::from_secs(86_400),
            hsm: None,
            node: kms_server::node::NodeEvidence::None,
            rotation: kms_server::config::RotationPace {
                batch_size: 500,
                pause: Duration::ZERO,
            },
            checkpoint_interval: Duration::from_secs(60),
            init_admins: None,
            custodians: None,
            integrity_scan_interval: Duration::from_secs(300),
            destroyer_clock_ahead: Duration::ZERO,
            limits: kms_server::config::LimitsConfig::default(),
        }
    }
}

/// A running `kmsd`.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), kms_server::ServeError>>>,
    pub ca: Certificate,
}

/// A running server reachable over mTLS: channels and clients for test principals.
#[allow(async_fn_in_trait)] // test harness: callers await on the same runtime
pub trait Reachable {
    /// Where it listens.
    fn addr(&self) -> SocketAddr;
    /// The CA of its server certificate.
    fn ca(&self) -> &Certificate;

    /// A channel presenting `identity` (or no client certificate).
    async fn channel(&self, identity: Identity) -> Result<Channel, tonic::transport::Error> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(self.ca().clone())
            .identity(identity)
            .domain_name("localhost");
        Endpoint::from_shared(format!("https://{}", self.addr()))?
            .tls_config(tls)?
            .connect()
            .await
    }

    /// The admin service, as the admin CLI's client certificate.
    async fn try_admin(&self, pki: &Pki) -> Result<AdminServiceClient<Channel>, tonic::transport::Error> {
        Ok(AdminServiceClient::new(
            self.channel(pki.client("spiffe://test/admin-cli")).await?,
        ))
    }

    /// [`Reachable::try_admin`], which must connect.
    async fn admin(&self, pki: &Pki) -> AdminServiceClient<Channel> {
        self.try_admin(pki).await.unwrap()
    }

    /// The key service as `principal`.
    async fn data(&self, pki: &Pki, principal: &str) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel(pki.client(principal)).await.unwrap())
    }
}

impl Reachable for TestServer {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ca(&self) -> &Certificate {
        &self.ca
    }
}

impl Reachable for KmsdProcess {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn ca(&self) -> &Certificate {
        &self.ca
    }
}

impl TestServer {
    pub async fn start(db: &Db, pki: &Pki, opts: Options) -> Self {
        match Self::try_start(db, pki, opts).await {
            Ok(s) => s,
            Err(e) => panic!("kmsd did not start: {e}"),
        }
    }

    /// Starts a server; `Err` with the server's error if it stops at start.
    pub async fn try_start(db: &Db, pki: &Pki, opts: Options) -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Config {
            listen: addr,
            database_url: db.url.clone(),
            database_max_connections: 8,
            tls: Some(pki.tls_config()),
            allowed_countries: opts.allowed_countries,
            init_admins: opts.init_admins,
            custodians: opts.custodians,
            integrity_scan_interval: opts.integrity_scan_interval,
            proposal_ttl: opts.proposal_ttl,
            key_cache_ttl: opts.key_cache_ttl,
            destroy_interval: opts.destroy_interval,
            danger_destroyer_clock_ahead: opts.destroyer_clock_ahead,
            checkpoint_interval: opts.checkpoint_interval,
            hsm: opts.hsm,
            node: opts.node,
            rotation: opts.rotation,
            attestation: opts.attestation,
            limits: opts.limits,
            danger: Danger {
                allow_unattested_keys: opts.allow_unattested,
                snp_test_roots: opts.snp_test_roots,
                // The server runs in the test process, which locks nothing: only kmsd's main does.
                allow_swap: false,
            },
            ..Config::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(kms_server::serve(config, listener, async {
            let _ = rx.await;
        }));
        let mut server = Self {
            addr,
            stop: Some(tx),
            handle: Some(handle),
            ca: Certificate::from_pem(&pki.ca_pem),
        };
        // Wait until it answers.
        for _ in 0..400 {
            if server.handle.as_ref().is_some_and(|h| h.is_finished()) {
                let h = server.handle.take().expect("checked");
                return Err(match h.await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(())) => "stopped".into(),
                    Err(e) => e.to_string(),
                });
            }
            if let Ok(mut c) = server.try_admin(pki).await {
                if c.get_seal_status(pb::GetSealStatusRequest {}).await.is_ok() {
                    return Ok(server);
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err("no answer within 10 s".into())
    }

    /// Stops it and waits for it to drain.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A software admin.
pub fn admin(id: &str, country: &str) -> AdminKeyFile {
    AdminKeyFile::generate(AdminId::parse(id).unwrap(), Country::parse(country).unwrap()).unwrap()
}

/// The wire form of an admin's public identity.
pub fn new_admin(k: &AdminKeyFile, custodian: bool) -> pb::NewAdmin {
    let p = k.public();
    pb::NewAdmin {
        id: p.admin_id.clone(),
        country: p.country.clone(),
        signing_public_key: hex::decode(&p.signing_public_key).unwrap(),
        encryption_public_key: hex::decode(&p.encryption_public_key).unwrap(),
        custodian,
    }
}

/// Which deployment each admin key (by its signing key) signs for: set when a test initializes
/// a server through the harness, so [`signed`] names the right deployment in parallel tests.
fn deployments() -> &'static std::sync::Mutex<std::collections::HashMap<Vec<u8>, String>> {
    static MAP: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<Vec<u8>, String>>> =
        std::sync::OnceLock::new();
    MAP.get_or_init(Default::default)
}

thread_local! {
    /// The deployment the current test (on this thread) last initialized: what admins it made
    /// later (added by AddAdmin) sign for.
    static CURRENT_DEPLOYMENT: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Initializes the server behind `admin` with `op`, signed by `by`, and records the deployment
/// for every admin `op` names (so [`signed`] names it).
pub async fn init(
    admin: &mut AdminServiceClient<Channel>,
    by: &AdminKeyFile,
    op: pb::InitOp,
) -> Result<pb::SealStatus, tonic::Status> {
    let keys: Vec<Vec<u8>> = op.admins.iter().map(|a| a.signing_public_key.clone()).collect();
    let status = admin
        .init(signed(by, Op::Init(op)))
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    let mut map = deployments().lock().unwrap();
    for k in keys {
        map.insert(k, status.deployment_id.clone());
    }
    CURRENT_DEPLOYMENT.with(|c| *c.borrow_mut() = Some(status.deployment_id.clone()));
    Ok(status)
}

/// Initializes a pkcs11-sealed server whose one admin, `by` (not a custodian: the HSM holds the
/// root), approves alone (M = 1).
pub async fn init_pkcs11_alone(
    admin: &mut AdminServiceClient<Channel>,
    by: &AdminKeyFile,
) -> Result<pb::SealStatus, tonic::Status> {
    init(
        admin,
        by,
        pb::InitOp {
            seal: pb::SealKind::Pkcs11 as i32,
            threshold: 0,
            admins: vec![new_admin(by, false)],
            approval_quorum: 1,
        },
    )
    .await
}

/// The database's operator at work: runs `statements` with foreign keys not enforced (SQLite
/// turns them off per connection; on PostgreSQL [`drop_foreign_keys`] first).
pub async fn run_as_operator(db: &Db, statements: &[String]) {
    let mut conn = db.connect().await;
    if db.backend == Backend::Sqlite {
        sqlx::query("PRAGMA foreign_keys = OFF")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for sql in statements {
        sqlx::query(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Drops every foreign key of a PostgreSQL schema (its tables' owner can); nothing on SQLite.
pub async fn drop_foreign_keys(db: &Db) {
    use sqlx::Row as _;
    if db.backend != Backend::Postgres {
        return;
    }
    let mut conn = db.connect().await;
    let fks: Vec<String> = sqlx::query(
        "SELECT table_name::text AS t, constraint_name::text AS c FROM information_schema.table_constraints \
         WHERE constraint_type = 'FOREIGN KEY' AND table_schema = current_schema()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        format!(
            "ALTER TABLE {} DROP CONSTRAINT {}",
            r.get::<String, _>("t"),
            r.get::<String, _>("c")
        )
    })
    .collect();
    run_as_operator(db, &fks).await;
}

/// Copies every table of the database aside (as its operator can at any time); returns the
/// statements that put it back as it was.
pub async fn snapshot_database(db: &Db, tag: &str) -> Vec<String> {
    use sqlx::Row as _;
    let mut conn = db.connect().await;
    let sql = match db.backend {
        Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%' AND name NOT LIKE 'snap%'",
        Backend::Postgres => "SELECT table_name::text AS name FROM information_schema.tables WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_%' AND table_name NOT LIKE 'snap%'",
    };
    let tables: Vec<String> = sqlx::query(sql)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("name"))
        .collect();
    let copies: Vec<String> = tables
        .iter()
        .map(|t| format!("CREATE TABLE snap{tag}_{t} AS SELECT * FROM {t}"))
        .collect();
    run_as_operator(db, &copies).await;
    tables
        .iter()
        .flat_map(|t| {
            [
                format!("DELETE FROM {t}"),
                format!("INSERT INTO {t} SELECT * FROM snap{tag}_{t}"),
            ]
        })
        .collect()
}

/// Every stored checkpoint with its signature (as `kmsctl audit verify` reads them).
pub async fn stored_checkpoints(db: &Db) -> Vec<(kms_core::audit::Checkpoint, Vec<u8>)> {
    use sqlx::Row as _;
    let mut conn = db.connect().await;
    let h32 = |v: Option<Vec<u8>>| -> [u8; 32] { v.and_then(|b| b.try_into().ok()).unwrap_or([0; 32]) };
    sqlx::query(
        "SELECT seq, hash, time_unix_ms, kid, signature, prev_seq, prev_id, state_version, state_seq, state_hash          FROM audit_checkpoints ORDER BY seq",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            kms_core::audit::Checkpoint {
                seq: r.get("seq"),
                hash: h32(r.get("hash")),
                time_unix_ms: r.get("time_unix_ms"),
                kid: r.get("kid"),
                prev_seq: r.get("prev_seq"),
                prev_id: h32(r.get("prev_id")),
                state: kms_core::integrity::StateHead {
                    version: r.get("state_version"),
                    seq: r.get("state_seq"),
                    hash: h32(r.get("state_hash")),
                },
            },
            r.get("signature"),
        )
    })
    .collect()
}

/// Records that `keys` sign for `deployment` (and makes it this thread's current deployment).
pub fn register_deployment<'a>(keys: impl IntoIterator<Item = &'a AdminKeyFile>, deployment: &str) {
    let mut map = deployments().lock().unwrap();
    for k in keys {
        map.insert(k.signer().public_key().as_bytes().to_vec(), deployment.to_owned());
    }
    CURRENT_DEPLOYMENT.with(|c| *c.borrow_mut() = Some(deployment.to_owned()));
}

/// The deployment `k` signs for: its registered one, else this thread's current one.
pub fn deployment_of(k: &AdminKeyFile) -> String {
    let key = k.signer().public_key().as_bytes().to_vec();
    if let Some(d) = deployments().lock().unwrap().get(&key) {
        return d.clone();
    }
    CURRENT_DEPLOYMENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
        panic!(
            "admin {} signs for no known deployment: register it (kms_testkit::register_deployment)",
            k.admin_id
        )
    })
}

/// Signs `op` as `k`, as kmsctl does, for `k`'s deployment (none for Init).
pub fn signed(k: &AdminKeyFile, op: Op) -> pb::SignedRequest {
    signed_at(k, op, kms_core::now_unix_ms())
}

/// Signs `op` as `k` with a given timestamp.
pub fn signed_at(k: &AdminKeyFile, op: Op, timestamp_unix_ms: i64) -> pb::SignedRequest {
    let deployment = if matches!(op, Op::Init(_)) {
        String::new()
    } else {
        deployment_of(k)
    };
    signed_for(k, &deployment, op, timestamp_unix_ms)
}

/// Signs `op` as `k` for `deployment` with a given timestamp.
pub fn signed_for(k: &AdminKeyFile, deployment: &str, op: Op, timestamp_unix_ms: i64) -> pb::SignedRequest {
    let req = pb::AdminRequest {
        admin_id: k.admin_id.to_string(),
        timestamp_unix_ms,
        nonce: kms_core::random_array::<16>().unwrap().to_vec(),
        operation: Some(op),
        deployment_id: deployment.to_owned(),
    };
    let payload = req.encode_to_vec();
    let signature = k.signer().sign(&payload).unwrap();
    pb::SignedRequest { payload, signature }
}

/// The fingerprints (for `admin.init_admins`) of the admins in public files (`*.pub.json`).
pub fn fingerprints_of<P: AsRef<std::path::Path>>(public_files: &[P]) -> Vec<String> {
    public_files
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            serde_json::from_str::<kms_core::keyfile::AdminPublic>(&text)
                .unwrap()
                .fingerprint()
                .unwrap()
        })
        .collect()
}

/// The fingerprints (for `admin.init_admins`) of `keys`.
pub fn fingerprints<'a>(keys: impl IntoIterator<Item = &'a AdminKeyFile>) -> Vec<String> {
    keys.into_iter().map(|k| k.public().fingerprint().unwrap()).collect()
}

/// The stable reason of a refusal.
pub fn reason(s: &tonic::Status) -> String {
    kms_proto::status::reason(s).unwrap_or("").to_owned()
}

/// Asserts a refusal's code and reason.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, code: tonic::Code, why: &str) {
    match r {
        Ok(v) => panic!("expected {code:?}/{why}, got success: {v:?}"),
        Err(s) => {
            assert_eq!((s.code(), reason(&s).as_str()), (code, why), "message: {}", s.message());
        }
    }
}

/// Submits `custodian`'s share as kmsctl does: fetch, open with the custodian's key, re-seal to
/// the server's unseal key.
pub async fn submit_share(
    admin: &mut AdminServiceClient<Channel>,
    custodian: &AdminKeyFile,
) -> Result<pb::SealStatus, tonic::Status> {
    let status = admin.get_seal_status(pb::GetSealStatusRequest {}).await?.into_inner();
    let share = admin
        .get_encrypted_share(signed(custodian, Op::GetEncryptedShare(pb::GetEncryptedShareOp {})))
        .await?
        .into_inner();
    let envelope = kms_core::share_wrap::ShareEnvelope::decode(&share.envelope).unwrap();
    let plain = custodian.share_key().open(&envelope).unwrap();
    let rewrapped = kms_core::share_wrap::seal(&status.unseal_public_key, plain.expose_secret()).unwrap();
    Ok(admin
        .unseal(signed(
            custodian,
            Op::Unseal(pb::UnsealOp {
                envelope: rewrapped.encode(),
            }),
        ))
        .await?
        .into_inner())
}

/// Grants every operation to each principal.
pub fn grants_all(principals: &[&str]) -> Vec<pb::Grant> {
    principals
        .iter()
        .map(|p| pb::Grant {
            principal: (*p).to_owned(),
            operations: (1..=5).collect(),
        })
        .collect()
}

pub const UNATTESTED: &str = r#"{"version":1,"attestation":"none"}"#;

/// `[attestation.snp]` for a kmsd process's configuration file that accepts every genuine report
/// of the synthetic labs, as `SnpTrust::insecure_any_platform` does in process (tests of the
/// protocol, not of the trust settings): every product with a zero floor, SMT, VMPLs 0 to 3, no
/// alias check.
pub fn snp_any_platform_toml() -> String {
    let mut t = String::from(
        "[attestation.snp]\nproducts = [\"milan\", \"genoa\", \"turin\"]\nallow_smt = true\nrequire_alias_check = false\nallowed_vmpls = [0, 1, 2, 3]\n",
    );
    for p in ["milan", "genoa", "turin"] {
        t.push_str(&format!(
            "[attestation.snp.minimum_tcb.{p}]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n"
        ));
    }
    t
}

/// A server initialized with the shamir seal, 2-of-3 custodians (alice, bob, carol; DE, FR, NL).
pub struct Ceremony {
    pub db: Db,
    pub pki: Pki,
    pub server: TestServer,
    pub admin: AdminServiceClient<Channel>,
    pub custodians: Vec<AdminKeyFile>,
}

impl Ceremony {
    pub async fn new(backend: Backend, mut opts: Options) -> Option<Self> {
        let db = Db::new(backend).await?;
        let pki = Pki::new();
        let approval_quorum = opts.approval_quorum.max(1);
        let custodians = vec![
            admin_key("alice", "DE"),
            admin_key("bob", "FR"),
            admin_key("carol", "NL"),
        ];
        if opts.init_admins.is_none() {
            opts.init_admins = Some(fingerprints(&custodians));
        }
        let server = TestServer::start(&db, &pki, opts).await;
        let mut admin = server.admin(&pki).await;
        let init = pb::InitOp {
            seal: pb::SealKind::Shamir as i32,
            threshold: 2,
            admins: custodians.iter().map(|c| new_admin(c, true)).collect(),
            approval_quorum,
        };
        let status = admin
            .init(signed(&custodians[0], Op::Init(init)))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert!(!status.sealed);
        register_deployment(&custodians, &status.deployment_id);
        Some(Self {
            db,
            pki,
            server,
            admin,
            custodians,
        })
    }

    /// Creates a key granting everything to `principals`.
    pub async fn create_key(&self, name: &str, principals: &[&str], release_policy: &str) -> pb::KeyMetadata {
        self.admin
            .clone()
            .create_key(signed(
                &self.custodians[0],
                Op::CreateKey(pb::CreateKeyOp {
                    name: name.into(),
                    description: format!("test key {name}"),
                    tags: [("team".to_owned(), "test".to_owned())].into(),
                    grants: grants_all(principals),
                    release_policy: release_policy.into(),
                }),
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// Restarts the server on the same database (sealed afterwards).
    pub async fn restart(&mut self, mut opts: Options) {
        if opts.init_admins.is_none() {
            opts.init_admins = Some(fingerprints(&self.custodians));
        }
        let old = std::mem::replace(&mut self.server, TestServer::start(&self.db, &self.pki, opts).await);
        old.stop().await;
        self.admin = self.server.admin(&self.pki).await;
    }

    /// Another replica on this deployment's database (sealed), started with `opts`, pinning
    /// this ceremony's custodians as every replica's configuration does (a sealed replica takes
    /// shares only from the custodians it pins).
    pub async fn replica(&self, mut opts: Options) -> TestServer {
        if opts.init_admins.is_none() && opts.custodians.is_none() {
            opts.init_admins = Some(fingerprints(&self.custodians));
        }
        TestServer::start(&self.db, &self.pki, opts).await
    }

    /// Unseals with the first two custodians.
    pub async fn unseal(&mut self) {
        submit_share(&mut self.admin, &self.custodians[0]).await.unwrap();
        let s = submit_share(&mut self.admin, &self.custodians[1]).await.unwrap();
        assert!(!s.sealed);
    }
}

fn admin_key(id: &str, country: &str) -> AdminKeyFile {
    admin(id, country)
}

/// The `kmsd` binary next to this test executable (`target/<profile>/kmsd`). `scripts/test`
/// builds it before the tests run; a missing binary fails the test with what to do.
pub fn kmsd_binary() -> PathBuf {
    workspace_binary("kmsd", "kms-server")
}

/// The `kmsctl` binary next to this test executable (built by `cargo test --workspace`).
pub fn kmsctl_binary() -> PathBuf {
    workspace_binary("kmsctl", "kmsctl")
}

fn workspace_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first (cargo build -p {package} --bin {name})",
        path.display()
    );
    path
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET http://127.0.0.1:port`path` (kmsd's metrics listener): the status line and the body.
/// A 200 answer must be Prometheus text (`text/plain; version=0.0.4`).
pub async fn http_get(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("the metrics endpoint answers within 10 s")
        .unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.lines().next().unwrap().to_owned();
    assert!(
        !status.contains(" 200 ")
            || head
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    (status, body.to_owned())
}

/// A `kmsd` run as its own process (so a test can kill -9 it), on `db`, mTLS with `pki`'s
/// server certificate, with `extra` appended to its configuration file.
pub struct KmsdProcess {
    child: Option<std::process::Child>,
    pub addr: SocketAddr,
    pub ca: Certificate,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl KmsdProcess {
    /// Writes the configuration and starts the process; returns once it answers.
    pub async fn start(db: &Db, pki: &Pki, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls = pki.tls_config();
        let config = dir.path().join("kmsd.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\n[database]\nurl = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n[danger]\nallow_unattested_keys = true\n[log]\nlevel = \"warn\"\n{extra}",
                db.url,
                tls.cert.display(),
                tls.key.display(),
                tls.client_ca.display()
            ),
        )
        .unwrap();
        let mut p = Self {
            child: None,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            ca: Certificate::from_pem(&pki.ca_pem),
            config,
            _dir: dir,
        };
        p.spawn(pki).await;
        p
    }

    async fn spawn(&mut self, pki: &Pki) {
        let mut child = std::process::Command::new(kmsd_binary())
            .arg("--config")
            .arg(&self.config)
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        for _ in 0..400 {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("kmsd exited at start: {status}");
            }
            if let Ok(mut c) = self.try_admin(pki).await {
                if c.get_seal_status(pb::GetSealStatusRequest {}).await.is_ok() {
                    self.child = Some(child);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let _ = child.kill();
        panic!("kmsd did not answer within 10 s");
    }

    /// SIGKILL: no draining, no cleanup, as a crash or an OOM kill.
    pub fn kill_9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Starts the process again with the same configuration.
    pub async fn restart(&mut self, pki: &Pki) {
        self.kill_9();
        self.spawn(pki).await;
    }
}

impl Drop for KmsdProcess {
    fn drop(&mut self) {
        self.kill_9();
    }
}

/// What one run of a command-line tool printed.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Self {
        Self {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Out {
    /// Asserts the exit code (showing both outputs if it differs).
    #[track_caller]
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Every environment variable `kmsctl` reads its settings from.
pub const KMSCTL_VARS: &[&str] = &[
    "KMSCTL_SERVER",
    "KMSCTL_CA",
    "KMSCTL_CERT",
    "KMSCTL_CLIENT_KEY",
    "KMSCTL_ADMIN_KEY",
    "KMSCTL_TLS_SERVER_NAME",
    "KMSCTL_HSM_MODULE",
    "KMSCTL_HSM_TOKEN",
    "KMSCTL_HSM_PIN",
    "KMSCTL_HSM_KEY",
    "KMSCTL_ADMIN_PUB",
    "KMSCTL_AUDIT_DATABASE",
    "KMSCTL_DEPLOYMENT",
    "KMSCTL_NODE_POLICY",
    "KMSCTL_DANGER_UNATTESTED_KMSD",
];

/// The `kmsctl` binary at `path`, with none of the `KMSCTL_*` settings of the environment that
/// runs the tests, no stdin and captured output.
pub fn kmsctl_command(path: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(path);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for var in KMSCTL_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// A quorum operation serialized as a proposal carries it.
pub fn op_bytes(op: pb::quorum_operation::Operation) -> Vec<u8> {
    pb::QuorumOperation { operation: Some(op) }.encode_to_vec()
}

/// `by` proposes `op` (default lifetime).
pub fn propose(by: &AdminKeyFile, op: pb::quorum_operation::Operation) -> pb::SignedRequest {
    signed(
        by,
        Op::Propose(pb::ProposeOp {
            operation: op_bytes(op),
            ttl_secs: 0,
        }),
    )
}

/// `by` approves `p`, signing the SHA-256 of its operation bytes computed here.
pub fn approve(by: &AdminKeyFile, p: &pb::Proposal) -> pb::SignedRequest {
    let digest = ring::digest::digest(&ring::digest::SHA256, &p.operation_bytes);
    signed(
        by,
        Op::Approve(pb::ApproveOp {
            proposal_id: p.id.clone(),
            operation_sha256: digest.as_ref().to_vec(),
        }),
    )
}

/// Encrypts `"secret i"` under each key (empty context); returns (blob, plaintext) pairs.
pub async fn encrypt_all(data: &mut KeyServiceClient<Channel>, keys: &[String]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let plaintext = format!("secret {i}").into_bytes();
        let e = data
            .encrypt(pb::EncryptRequest {
                key: k.clone(),
                plaintext: plaintext.clone(),
                encryption_context: Default::default(),
                sealed_plaintext: None,
            })
            .await
            .unwrap()
            .into_inner();
        out.push((e.ciphertext_blob, plaintext));
    }
    out
}

/// Asserts that every (blob, plaintext) pair still decrypts to its plaintext.
pub async fn decrypt_all(data: &mut KeyServiceClient<Channel>, blobs: &[(Vec<u8>, Vec<u8>)]) {
    for (blob, plaintext) in blobs {
        let d = data
            .decrypt(pb::DecryptRequest {
                ciphertext_blob: blob.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| panic!("a blob no longer decrypts: {s:?}"))
            .into_inner();
        assert_eq!(&d.plaintext, plaintext);
    }
}
