//! `gitdev-sim`: the simulator of the git.dev Deployments API. See `docs/simulator.md`.

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use gitdev::sim::{RunningSim, SimConfig, config::seconds_to_duration};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A faithful in-memory simulator of the git.dev Deployments API (served under /v1,
/// testing hooks under /_sim/).
#[derive(Debug, Parser)]
#[command(name = "gitdev-sim", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, env = "GITDEV_SIM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// YAML file replacing the default fixture (projects, branches, tokens, limits, phases).
    #[arg(long, env = "GITDEV_SIM_CONFIG")]
    config: Option<PathBuf>,
    /// Seconds each of queued, building and deploying lasts (0 = deployments finish at once).
    /// Overrides the config file.
    #[arg(long, env = "GITDEV_SIM_PHASE_DURATION", allow_negative_numbers = true)]
    phase_duration: Option<f64>,
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(
        long,
        value_enum,
        env = "GITDEV_SIM_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_config(args: &Args) -> Result<SimConfig, String> {
    let mut config = match &args.config {
        Some(path) => SimConfig::from_yaml_file(path).map_err(|e| e.to_string())?,
        None => SimConfig::default_fixture(),
    };
    if let Some(secs) = args.phase_duration {
        let d = seconds_to_duration("--phase-duration", secs).map_err(|e| e.to_string())?;
        config = config.with_phase_duration(d);
    }
    Ok(config)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gitdev-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let sim = match RunningSim::start(config, args.listen).await {
        Ok(sim) => sim,
        Err(e) => {
            error!(listen = %args.listen, "cannot start: {e}");
            eprintln!("gitdev-sim: cannot listen on {}: {e}", args.listen);
            return ExitCode::from(1);
        }
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "gitdev-sim listening on http://{}", sim.addr);
        let _ = out.flush();
    }
    wait_for_signal().await;
    sim.shutdown().await;
    info!("gitdev-sim stopped");
    ExitCode::SUCCESS
}
