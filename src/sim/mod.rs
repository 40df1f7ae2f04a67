//! `gitdev-sim`: a faithful, in-memory simulator of the git.dev Deployments API
//! (`docs/deployments-api.md`), so that the operator and every test run on one machine.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use gitdev::sim::{RunningSim, SimConfig};
//! let config = SimConfig::default_fixture().with_phase_duration(std::time::Duration::ZERO);
//! let sim = RunningSim::start(config, "127.0.0.1:0".parse().unwrap()).await?;
//! println!("API at {}, hooks at {}/_sim/", sim.base_url, sim.root_url());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The server runs its own accept loop on hyper (HTTP/1.1) rather than `axum::serve`, so that a
//! fault can drop a connection without any answer after the request was processed.
//! Reference documentation: `docs/simulator.md`.

pub mod config;
mod deployment;
pub mod faults;
mod http;
mod openapi;
mod ratelimit;
mod stats;
mod store;
pub mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

pub use config::{
    HEAD_FAIL_BROKEN_BUILD, HEAD_FEATURE_LOGIN, HEAD_MAIN, HEAD_OTHER_MAIN, PhaseDurations, Plan,
    PlanLimits, ProjectConfig, RateLimit, Scope, SimConfig, TokenConfig, is_valid_commit,
};
pub use faults::{FaultRoute, FaultRule, FaultSet, LatencyWhen};

use http::{App, ConnCtx};

/// How long a graceful shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Slow clients cannot hold a connection open forever before sending their headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot read simulator config {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "simulator config{} is not valid YAML for this format: {message}",
        at(path)
    )]
    Yaml {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("simulator config{} is invalid: {message}", at(path))]
    Invalid {
        path: Option<PathBuf>,
        message: String,
    },
}

fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}

impl SimError {
    pub(crate) fn invalid(message: impl Into<String>) -> SimError {
        SimError::Invalid {
            path: None,
            message: message.into(),
        }
    }
}

/// A simulator serving on a local port. Dropping it stops the server (abruptly);
/// [`RunningSim::shutdown`] lets requests in flight finish first.
pub struct RunningSim {
    /// The bound address (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT/v1`: the API base URL.
    pub base_url: String,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl RunningSim {
    /// Binds `listen` (port 0 picks a free port) and spawns the server on the current tokio
    /// runtime.
    pub async fn start(config: SimConfig, listen: SocketAddr) -> std::io::Result<RunningSim> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let mut shown = addr;
        if shown.ip().is_unspecified() {
            shown.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let app = Arc::new(App::new(config, addr));
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, app, rx));
        info!(%addr, "gitdev-sim serving");
        Ok(RunningSim {
            addr,
            base_url: format!("http://{shown}/v1"),
            shutdown: tx,
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:PORT`, the root of the `/_sim/` hooks.
    pub fn root_url(&self) -> String {
        self.base_url
            .strip_suffix("/v1")
            .unwrap_or(&self.base_url)
            .to_owned()
    }

    /// Stops accepting, lets requests in flight finish (up to a few seconds), then returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE * 2, task)
                .await
                .is_err()
        {
            warn!("gitdev-sim did not stop in time");
        }
    }
}

impl Drop for RunningSim {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Resolves once a shutdown is asked for (or the sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    // Connection tasks live in the set: aborting this task (drop of RunningSim) aborts them.
    let mut conns = JoinSet::new();
    let conn_shutdown = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(serve_connection(stream, peer, app.clone(), conn_shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    debug!(connections = conns.len(), "draining connections");
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        conns.abort_all();
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let ctx = Arc::new(ConnCtx {
        peer,
        drop: Notify::new(),
    });
    let service = {
        let ctx = ctx.clone();
        service_fn(move |req: hyper::Request<Incoming>| {
            let app = app.clone();
            let ctx = ctx.clone();
            async move {
                match app.handle(req.map(Body::new), ctx.clone()).await {
                    Some(resp) => Ok::<_, Infallible>(resp),
                    None => {
                        // Ask the connection task to drop the connection, and never answer.
                        ctx.drop.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut draining = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = ctx.drop.notified() => {
                debug!(%peer, "connection dropped without an answer (fault)");
                break;
            }
            () = stopped(&mut shutdown), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
