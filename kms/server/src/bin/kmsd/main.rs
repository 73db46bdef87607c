//! `kmsd`: parses the command line and configuration, sets up logging, hardens the process
//! (no core dumps, not ptrace-able by other users, its memory locked out of swap), and runs
//! [`kms_server::serve`] until SIGTERM or SIGINT, then drains in-flight calls within a grace
//! period.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kms_server::config::Config;

mod memory;

/// The key management service.
#[derive(Parser, Debug)]
#[command(name = "kmsd", version, about)]
struct Args {
    /// Configuration file (TOML). Settings can be overridden by KMSD__SECTION__KEY variables.
    #[arg(long, conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Dev mode: SQLite in --data-dir, the insecure dev seal, plaintext on loopback, keys that
    /// release plaintext without attestation allowed. Never for production.
    #[arg(long)]
    dev: bool,
    /// Dev mode: address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:7300", requires = "dev")]
    listen: SocketAddr,
    /// Dev mode: where the database, the dev root key and the dev admin key live.
    #[arg(long, default_value = "./kms-dev", requires = "dev")]
    data_dir: PathBuf,
    /// Dev mode: TPM-manufacturer CA certificates (PEM) for TPM enrolment, e.g. a swtpm local CA
    /// (attestation.tpm_ek_ca_bundle in a configuration file).
    #[arg(long, requires = "dev")]
    tpm_ek_ca_bundle: Option<PathBuf>,
    /// Dev mode: where to serve Prometheus metrics (loopback only; default 127.0.0.1:9464; port 0
    /// picks a free one). With --config, `[metrics] listen` in the file.
    #[arg(long, requires = "dev")]
    metrics_listen: Option<SocketAddr>,
    /// pkcs11 seal: accept, at this start only, a database behind the last checkpoint anchored
    /// in the HSM (a backup restored on purpose; otherwise kmsd stays sealed with
    /// `state_rollback`). Audited. Everything written after the backup is abandoned.
    #[arg(long)]
    danger_accept_restored_database: bool,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Seconds to let in-flight calls finish after SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
}

const EX_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match (&args.config, args.dev) {
        (Some(_), false) if args.metrics_listen.is_some() => Err(kms_server::config::ConfigError(
            "--metrics-listen is for dev mode: with --config, set `[metrics] listen` in the file".into(),
        )),
        (Some(path), false) => Config::from_file(path, std::env::vars()).and_then(|mut c| {
            if args.danger_accept_restored_database {
                c.danger_accept_restored_database()?;
            }
            Ok(c)
        }),
        (None, true) if args.danger_accept_restored_database => Err(kms_server::config::ConfigError(
            "--danger-accept-restored-database is for a production server's pkcs11 seal (--config), not dev mode"
                .into(),
        )),
        (None, true) => std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| kms_server::config::ConfigError(format!("--data-dir {}: {e}", args.data_dir.display())))
            .and_then(|()| {
                let dir = std::fs::canonicalize(&args.data_dir).map_err(|e| {
                    kms_server::config::ConfigError(format!("--data-dir {}: {e}", args.data_dir.display()))
                })?;
                let mut config = Config::dev(args.listen, dir)?;
                config.set_tpm_ek_ca_bundle(args.tpm_ek_ca_bundle.clone())?;
                if let Some(listen) = args.metrics_listen {
                    config.set_dev_metrics_listen(listen)?;
                }
                Ok(config)
            }),
        _ => Err(kms_server::config::ConfigError(
            "give --config FILE, or --dev for a local development server".into(),
        )),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kmsd: bad configuration: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    init_logging(args.log_json || config.log.format == "json", &config.log.level);
    harden();
    // Before the runtime starts and before any key is read.
    let policy = match (config.danger.allow_swap, config.dev.is_some()) {
        (true, _) => memory::Policy::Off,
        (false, true) => memory::Policy::Try,
        (false, false) => memory::Policy::Require,
    };
    match memory::lock(policy) {
        Ok(memory::Outcome::Locked) => tracing::debug!("memory locked: no key material is swapped out"),
        Ok(memory::Outcome::Unlocked(why)) => {
            tracing::warn!("dev mode: memory not locked, keys may be swapped out: {why}")
        }
        Ok(memory::Outcome::Allowed) => {
            tracing::warn!("danger.allow_swap: memory not locked: keys may be swapped out")
        }
        Err(why) => {
            eprintln!("kmsd: bad configuration: {}", memory::refusal(&why));
            return ExitCode::from(EX_CONFIG);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kmsd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, args.grace_secs))
}

async fn run(config: Config, grace_secs: u64) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kmsd: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Some(dev) = &config.dev {
        print_dev_banner(&config, &dev.data_dir);
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(kms_server::serve(config, listener, async {
        let _ = rx.await;
    }));
    // A server that fails to start (database, TLS files, seal) ends the process at once.
    tokio::select! {
        done = &mut server => return exit_of(done),
        () = shutdown_signal() => {}
    }
    tracing::info!(grace_secs, "shutting down: draining in-flight calls");
    let _ = tx.send(());
    match tokio::time::timeout(Duration::from_secs(grace_secs), server).await {
        Ok(done) => exit_of(done),
        Err(_) => {
            tracing::warn!("grace period over; exiting with calls still in flight");
            ExitCode::FAILURE
        }
    }
}

/// The pkcs11 seal's HSM refused the PIN: a supervisor must not restart kmsd (each try counts
/// towards locking the token). systemd: `RestartPreventExitStatus=78`.
const EX_HSM_PIN_REFUSED: u8 = 78;

fn exit_of(done: Result<Result<(), kms_server::ServeError>, tokio::task::JoinError>) -> ExitCode {
    match done {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e @ kms_server::ServeError::Seal(kms_server::seal::LoadError::HsmLoginRefused(_)))) => {
            tracing::error!(error = %e, "kmsd cannot start: the HSM refused the PIN");
            eprintln!("kmsd: {e}");
            ExitCode::from(EX_HSM_PIN_REFUSED)
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "kmsd failed");
            eprintln!("kmsd: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("kmsd: server task failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn print_dev_banner(config: &Config, dir: &std::path::Path) {
    eprintln!(
        "\n  kmsd DEV MODE — INSECURE: dev seal (root key in a file), plaintext gRPC, unattested keys allowed.\n  \
         Never use it for real data.\n\n  listening on   http://{listen}\n  metrics        {metrics}\n  data dir       {dir}\n  admin key      {dir}/{key}\n\n  \
         try:\n    export KMSCTL_SERVER=http://{listen} KMSCTL_ADMIN_KEY={dir}/{key} KMSCTL_DANGER_UNATTESTED_KMSD=1\n    \
         kmsctl key create demo --grant anonymous=all --release-policy '{{\"version\":1,\"attestation\":\"none\"}}'\n    \
         kmsctl data generate demo --context app=demo --with-plaintext\n",
        listen = config.listen,
        metrics = config
            .metrics
            .as_ref()
            .map_or("off".to_owned(), |m| format!("http://{}/metrics", m.listen)),
        dir = dir.display(),
        key = kms_server::DEV_ADMIN_KEY_FILE,
    );
}

fn init_logging(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMSD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colour only on a terminal: a journal, a file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// No core dumps (they would hold the root key and KEKs), and not dumpable, so other processes
/// of the same user cannot ptrace us or read /proc/self/mem.
fn harden() {
    use rustix::process::{setrlimit, Resource, Rlimit};
    if let Err(e) = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    ) {
        tracing::warn!(error = %e, "cannot disable core dumps");
    }
    if let Err(e) = rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable) {
        tracing::warn!(error = %e, "cannot mark the process not dumpable");
    }
}
