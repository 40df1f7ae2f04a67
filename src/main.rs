//! `gitdev-operator`: reconciles `gitdeployments.git.dev` objects against the git.dev
//! Deployments API.

mod leader;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
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
use gitdev::controller::fence::{Fence, Fenced};
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

    /// Watch only these namespaces, comma-separated (default: every namespace). Each needs
    /// only namespaced permissions (the chart renders one Role per namespace): no cluster-wide
    /// read of Secrets. `--namespace` is the same flag.
    #[arg(
        long = "namespaces",
        visible_alias = "namespace",
        env = "WATCH_NAMESPACE",
        value_delimiter = ',',
        value_name = "NAMESPACE,..."
    )]
    namespaces: Vec<String>,

    /// How many objects are reconciled at the same time.
    /// Reconciles mostly wait (for the API's rate budget, for Kubernetes), so this is set well
    /// above the core count.
    #[arg(long, env = "GITDEV_CONCURRENCY", default_value_t = 64)]
    concurrency: u16,

    /// Give freed heap memory back to the system each time resident memory has grown by this
    /// many MiB since the last time (0: never). Without it, memory freed after a burst stays
    /// resident at the burst's peak.
    #[arg(long, env = "GITDEV_HEAP_TRIM_STEP_MIB", default_value_t = 4)]
    heap_trim_step_mib: u64,

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
    /// both act. Every write to the Deployments API (create, cancel, delete) is checked against
    /// the Lease right before it is sent. A replica that loses the Lease, or cannot renew it
    /// within the renew deadline, stops and exits (to be restarted as a standby).
    #[arg(long, env = "GITDEV_LEADER_ELECTION")]
    leader_election: bool,

    /// Name of the Lease used for leader election.
    #[arg(long, env = "GITDEV_LEASE_NAME", default_value = "gitdev-operator")]
    lease_name: String,

    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,

    /// Seconds a leader may go without renewing the Lease before another replica takes over
    /// (3 to 3600).
    #[arg(long, env = "GITDEV_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,

    /// Seconds within which the leader must have renewed the Lease to go on acting; less than
    /// --lease-duration-seconds (default: two thirds of it), so that a leader that cannot renew
    /// (API server unreachable, process frozen) stops writing before its Lease can expire and
    /// another replica takes over. The Lease is renewed every half of it.
    #[arg(long, env = "GITDEV_LEASE_RENEW_DEADLINE_SECONDS")]
    lease_renew_deadline_seconds: Option<u64>,

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

fn main() -> ExitCode {
    // Before the runtime's threads exist: see `one_arena`.
    gitdev::memory::one_arena();
    let args = Args::parse();
    init_logging(args.log_format);
    gitdev::memory::start_trimming(args.heap_trim_step_mib.saturating_mul(1 << 20));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gitdev-operator: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(operate(args))
}

async fn operate(args: Args) -> ExitCode {
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
    let namespaces = watch_namespaces(&args.namespaces)?;
    let lease_timing = if args.leader_election {
        Some(leader::Timing::new(
            args.lease_duration_seconds,
            args.lease_renew_deadline_seconds,
        )?)
    } else {
        None
    };
    let client = Client::try_default()
        .await
        .map_err(|e| format!("cannot reach Kubernetes (in-cluster config or KUBECONFIG): {e}"))?;
    check_crd(&client, &namespaces).await?;

    let metrics = Arc::new(Metrics::new());
    let mut config = ClientConfig::new(&args.api_url).with_observer(metrics.clone());
    config.request_timeout = Duration::from_secs(args.api_timeout_seconds);
    // The client asks the fence again right before each write it sends, after any wait for
    // rate budget; the fence is known once the Lease is held, and until then nothing passes.
    let fence_cell: Arc<OnceLock<Fence>> = Arc::default();
    if args.leader_election {
        let cell = fence_cell.clone();
        config.write_gate = Some(Arc::new(move || cell.get().is_some_and(Fence::holds)));
    }
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
    tracing::info!(addr = %local, api_url = %args.api_url, ?namespaces, "gitdev-operator starting");
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

    // The flag overrides the key Secret, for installs that manage the key themselves; the
    // Secret's key, if readable, still verifies what the operator signed with it before.
    let (key_bytes, older_key) = match &args.fingerprint_key {
        Some(key) => {
            let older = controller::keys::read_existing(
                client.clone(),
                &args.lease_namespace,
                &args.key_secret,
            )
            .await;
            (key.clone().into_bytes(), older)
        }
        None => {
            let key = controller::keys::load_or_create(
                client.clone(),
                &args.lease_namespace,
                &args.key_secret,
            )
            .await?;
            (key, None)
        }
    };
    let reconciler = Config {
        legacy_fingerprint_keys: [Some(key_bytes.clone()), older_key.clone()]
            .into_iter()
            .flatten()
            .collect(),
        older_keys: older_key
            .iter()
            .map(|k| controller::keys::Key::new(k))
            .collect(),
        cleanup_grace: Duration::from_secs(args.cleanup_grace_seconds),
        default_credentials: args.default_credentials_secret,
        existence_check: Duration::from_secs(args.recheck_finished_seconds.max(1)),
        ..Config::new(controller::keys::Key::new(&key_bytes))
    };
    let options = RunOptions {
        namespaces,
        concurrency: args.concurrency,
    };

    let shutdown = shutdown_signal().shared();
    let mut outcome = Ok(());
    let leadership = if let Some(timing) = lease_timing {
        let lease = leader::Lease {
            name: args.lease_name,
            namespace: args.lease_namespace,
            timing,
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
    // Checked at each write, so that a reconcile already under way when the Lease goes sends
    // nothing more; `stop_acting` then stops the controller itself.
    let fence = leadership
        .as_ref()
        .map_or_else(Fence::open, |held| Fence::until(held.valid_until()));
    let _ = fence_cell.set(fence.clone());
    let api = Fenced { inner: api, fence };
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
    metrics.set_leader(true);
    controller::run(
        client,
        api,
        metrics.clone(),
        reconciler,
        options,
        move || ready.store(true, Ordering::Relaxed),
        stop_acting,
    )
    .await;
    metrics.set_leader(false);
    if let Some(held) = leadership {
        if held.is_lost() {
            outcome = Err(
                "stopped acting: lost the leader Lease, or could not renew it within the renew deadline"
                    .to_string(),
            );
        }
        held.release().await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    tracing::info!("stopped");
    outcome
}

/// The namespaces of `--namespaces` (empty: every namespace), each checked to be a namespace
/// name and named once.
fn watch_namespaces(raw: &[String]) -> Result<Vec<String>, String> {
    let names: Vec<&str> = raw.iter().map(|n| n.trim()).collect();
    if names.iter().all(|n| n.is_empty()) {
        return Ok(Vec::new());
    }
    let listed = names.join(",");
    let mut namespaces: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            return Err(format!(
                "--namespaces {listed}: an empty namespace name; separate names with single commas, or leave the flag out to watch every namespace"
            ));
        }
        let label = name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !label {
            return Err(format!(
                "--namespaces: {name:?} is not a namespace name (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
            ));
        }
        if namespaces.iter().any(|n| n == name) {
            return Err(format!(
                "--namespaces {listed}: {name} is named twice; name each namespace once"
            ));
        }
        namespaces.push(name.to_string());
    }
    Ok(namespaces)
}

/// Fails fast, with the fix, when the CRD is not installed or a watched namespace cannot be
/// read.
async fn check_crd(client: &Client, namespaces: &[String]) -> Result<(), String> {
    let apis: Vec<(Api<GitDeployment>, String)> = if namespaces.is_empty() {
        vec![(Api::all(client.clone()), "in any namespace".to_string())]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced(client.clone(), ns),
                    format!("in namespace {ns}"),
                )
            })
            .collect()
    };
    for (api, scope) in apis {
        match api.list(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Err(
                "the CRD gitdeployments.git.dev is not installed: kubectl apply --server-side -f crds/gitdeployments.git.dev.yaml (or install the Helm chart)".into(),
            ),
            Err(e) => return Err(format!("cannot list gitdeployments.git.dev {scope}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::watch_namespaces;

    fn parse(raw: &[&str]) -> Result<Vec<String>, String> {
        watch_namespaces(&raw.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn namespaces_are_listed_once_each_and_nothing_or_blank_means_every_namespace() {
        assert_eq!(parse(&[]), Ok(vec![]));
        assert_eq!(parse(&[""]), Ok(vec![]));
        assert_eq!(parse(&["apps"]), Ok(vec!["apps".to_string()]));
        assert_eq!(
            parse(&["team-a", " team-b "]),
            Ok(vec!["team-a".to_string(), "team-b".to_string()])
        );
    }

    #[test]
    fn a_bad_namespace_list_is_refused_with_the_flag_and_the_fix() {
        for (raw, message) in [
            (
                &["a", "", "b"][..],
                "--namespaces a,,b: an empty namespace name; separate names with single commas",
            ),
            (
                &["Team_A"][..],
                "--namespaces: \"Team_A\" is not a namespace name (lowercase letters",
            ),
            (&["-apps"][..], "\"-apps\" is not a namespace name"),
            (
                &["apps", "apps"][..],
                "--namespaces apps,apps: apps is named twice; name each namespace once",
            ),
        ] {
            let err = parse(raw).unwrap_err();
            assert!(err.contains(message), "{raw:?}: {err}");
        }
        assert!(parse(&[&"a".repeat(64)]).is_err());
        assert!(parse(&[&"a".repeat(63)]).is_ok());
    }
}
