//! `gitdev-operator`: reconciles `gitdeployments.git.dev` objects against the git.dev
//! Deployments API.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::{Parser, ValueEnum};
use futures::FutureExt;
use kube::api::ListParams;
use kube::{Api, Client};

use gitdev::api::{ClientConfig, HttpClient};
use gitdev::controller::{self, Config, RunOptions};
use gitdev::metrics::Metrics;
use gitdev::resource::GitDeployment;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Kubernetes operator for the git.dev Deployments API.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Base URL of the Deployments API.
    #[arg(long, env = "GITDEV_API_URL", default_value = "https://api.git.dev/v1")]
    api_url: String,

    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    namespace: Option<String>,

    /// How many objects are reconciled at the same time.
    /// Reconciles mostly wait (for the API's rate budget, for Kubernetes), so this is set well
    /// above the core count.
    #[arg(long, env = "GITDEV_CONCURRENCY", default_value_t = 64)]
    concurrency: u16,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "GITDEV_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "GITDEV_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,

    /// The operator's key (signs the state it writes on objects, keys the part of spec
    /// fingerprints that covers Secret values), overriding the key Secret. A change of key
    /// re-stamps objects; it never redeploys them.
    #[arg(long, env = "GITDEV_FINGERPRINT_KEY", hide_env_values = true)]
    fingerprint_key: Option<String>,

    /// Secret in the operator's own namespace (`POD_NAMESPACE`) that holds its key under
    /// data key `key`; created with a random key when missing. Needs get and create on
    /// Secrets there.
    #[arg(long, env = "GITDEV_KEY_SECRET", default_value = "gitdev-operator-key")]
    key_secret: String,

    /// How long a deletion waits for usable credentials before orphaning the remote
    /// deployments (with a Warning event) so that the object can go.
    #[arg(long, env = "GITDEV_CLEANUP_GRACE_SECONDS", default_value_t = 300)]
    cleanup_grace_seconds: u64,

    /// How often a finished deployment is checked for existence, in seconds (with jitter), so
    /// that one deleted outside the operator is reported.
    #[arg(long, env = "GITDEV_RECHECK_FINISHED_SECONDS", default_value_t = 600)]
    recheck_finished_seconds: u64,

    /// Token Secret (key `token`) of objects that set no spec.credentialsSecretRef.
    #[arg(long, env = "GITDEV_DEFAULT_CREDENTIALS_SECRET", default_value = gitdev::resource::DEFAULT_CREDENTIALS_SECRET)]
    default_credentials_secret: String,

    /// Act only while holding a coordination.k8s.io/v1 Lease, so that several replicas never
    /// both act. A replica that loses the Lease stops and exits (to be restarted as a standby).
    #[arg(long, env = "GITDEV_LEADER_ELECTION")]
    leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, env = "GITDEV_LEASE_NAME", default_value = "gitdev-operator")]
    lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// Seconds a leader may go without renewing the Lease before another replica takes over.
    #[arg(long, env = "GITDEV_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,

    /// Timeout of one Deployments API request, in seconds.
    #[arg(long, env = "GITDEV_API_TIMEOUT_SECONDS", default_value_t = 30)]
    api_timeout_seconds: u64,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    // Colours only for a person at a terminal, never in log files or collectors.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[derive(Clone)]
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    api: HttpClient,
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "object cache not yet filled",
        )
    }
}

async fn metrics_text(State(h): State<Health>) -> impl IntoResponse {
    h.metrics.set_budget_waiting(h.api.waiting());
    h.metrics.set_budgets(&h.api.budgets());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("gitdev-operator: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes (in-cluster config or KUBECONFIG): {e}"))?;
    check_crd(&client, args.namespace.as_deref()).await?;

    let metrics = Arc::new(Metrics::new());
    let mut config = ClientConfig::new(&args.api_url).with_observer(metrics.clone());
    config.request_timeout = Duration::from_secs(args.api_timeout_seconds);
    let api = HttpClient::new(config).map_err(|e| format!("--api-url {}: {e}", args.api_url))?;

    let ready = Arc::new(AtomicBool::new(false));
    let health = Health {
        ready: ready.clone(),
        metrics: metrics.clone(),
        api: api.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| format!("--metrics-addr {}: {e}", args.metrics_addr))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(addr = %local, api_url = %args.api_url, namespace = ?args.namespace, "gitdev-operator starting");
    // Tests and scripts read the bound address from this line.
    println!("gitdev-operator metrics on http://{local}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let mut rx = stop_rx.clone();
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await;
    });

    // The flag overrides the key Secret, for installs that manage the key themselves.
    let key_bytes = match &args.fingerprint_key {
        Some(key) => key.clone().into_bytes(),
        None => {
            controller::keys::load_or_create(
                client.clone(),
                &args.lease_namespace,
                &args.key_secret,
            )
            .await?
        }
    };
    let reconciler = Config {
        legacy_fingerprint_keys: vec![key_bytes.clone()],
        cleanup_grace: Duration::from_secs(args.cleanup_grace_seconds),
        default_credentials: args.default_credentials_secret,
        existence_check: Duration::from_secs(args.recheck_finished_seconds.max(1)),
        ..Config::new(controller::keys::Key::new(&key_bytes))
    };
    let options = RunOptions {
        namespace: args.namespace,
        concurrency: args.concurrency,
    };

    let shutdown = shutdown_signal().shared();
    let mut outcome = Ok(());
    let leadership = if args.leader_election {
        let lease = Lease {
            name: args.lease_name,
            namespace: args.lease_namespace,
            duration: args.lease_duration_seconds,
        };
        // A standby replica is healthy and ready: it serves, it just does not act.
        ready.store(true, Ordering::Relaxed);
        match lease.acquire(client.clone(), shutdown.clone()).await? {
            Some(held) => Some(held),
            None => {
                let _ = stop_tx.send(true);
                let _ = server.await;
                return Ok(());
            }
        }
    } else {
        None
    };
    let stop_acting = {
        let shutdown = shutdown.clone();
        let lost = leadership.as_ref().map(|l| l.lost());
        async move {
            match lost {
                Some(lost) => {
                    tokio::select! {
                        _ = shutdown => {}
                        _ = lost => {}
                    }
                }
                None => shutdown.await,
            }
        }
    };
    ready.store(false, Ordering::Relaxed);
    controller::run(
        client,
        api,
        metrics,
        reconciler,
        options,
        move || ready.store(true, Ordering::Relaxed),
        stop_acting,
    )
    .await;
    if let Some(held) = leadership {
        if held.is_lost() {
            outcome = Err("lost the leader Lease to another replica; stopped acting".to_string());
        }
        held.release().await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    tracing::info!("stopped");
    outcome
}

struct Lease {
    name: String,
    namespace: String,
    duration: u64,
}

/// The Lease while this replica holds it.
struct Held {
    state: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
}

impl Lease {
    /// Waits until this replica holds the Lease (`Some`) or is told to stop first (`None`).
    async fn acquire(
        self,
        client: Client,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Option<Held>, String> {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &self.name)
            .with_namespace(&self.namespace)
            .with_identity(&identity)
            .with_duration(self.duration)
            .with_grace((self.duration / 3).max(1))
            .build()
            .await
            .map_err(|e| {
                format!(
                    "leader election on Lease {}/{}: {e}",
                    self.namespace, self.name
                )
            })?;
        let (mut state, task) = manager.watch().await;
        tracing::info!(lease = %self.name, namespace = %self.namespace, %identity, "waiting to hold the leader Lease");
        let held = tokio::select! {
            held = state.wait_for(|leader| *leader) => held.map(|_| true),
            _ = shutdown => Ok(false),
        };
        match held {
            Ok(true) => {
                tracing::info!(%identity, "holding the leader Lease; acting");
                Ok(Some(Held { state, task }))
            }
            Ok(false) => {
                drop(state);
                let _ = task.await;
                Ok(None)
            }
            Err(_) => Err("leader election stopped before the Lease was held".into()),
        }
    }
}

impl Held {
    /// Resolves when the Lease is lost.
    fn lost(&self) -> impl std::future::Future<Output = ()> + use<> {
        let mut state = self.state.clone();
        async move {
            let _ = state.wait_for(|leader| !*leader).await;
            tracing::error!("lost the leader Lease; stopping");
        }
    }

    fn is_lost(&self) -> bool {
        !*self.state.borrow()
    }

    /// Gives the Lease up at once, so that a standby takes over without waiting for it to expire.
    async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
            other => tracing::warn!(?other, "releasing the leader Lease did not complete"),
        }
    }
}

/// Fails fast, with the fix, when the CRD is not installed.
async fn check_crd(client: &Client, namespace: Option<&str>) -> Result<(), String> {
    let api: Api<GitDeployment> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(
            "the CRD gitdeployments.git.dev is not installed: kubectl apply --server-side -f crds/gitdeployments.git.dev.yaml (or install the Helm chart)".into(),
        ),
        Err(e) => Err(format!("cannot list gitdeployments.git.dev: {e}")),
    }
}
