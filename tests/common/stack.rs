//! The product's own processes for end-to-end tests: a `gitdev-sim` and a `gitdev-operator`
//! watching one test namespace (or, for `cluster_wide`, every namespace), both real binaries
//! talking over 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::Cluster;

/// A child process killed when dropped, and by a watchdog if the test binary dies first.
#[derive(Debug)]
pub struct Proc {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, waits for a stdout line starting with `ready_prefix`, returns the rest of it.
    pub fn start(name: &'static str, mut cmd: Command, ready_prefix: &str) -> (Proc, String) {
        let log = log_path(name);
        let stderr = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::piped())
            .stderr(stderr)
            .stdin(Stdio::null());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        watchdog(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let prefix = ready_prefix.to_string();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix(&prefix) {
                    let _ = tx.send(rest.trim().to_string());
                    break;
                }
            }
            // Keep draining so that the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut proc = Proc { name, child, log };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(rest) => (proc, rest),
            Err(_) => {
                let _ = proc.child.kill();
                panic!(
                    "{name} did not print '{ready_prefix}' within 30 s:\n{}",
                    proc.log_tail(40)
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU seconds (user + system) the process has used so far, from `/proc/PID/stat`.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of stat(5); `fields[0]` is field 3.
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
            .sum();
        ticks / clock_ticks_per_second()
    }

    /// Peak resident memory so far (`VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    /// Resident memory now (`VmRSS`), in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Everything the process has written to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then wait; returns the exit status.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of {} ({}) ---\n{}",
                self.name,
                self.log.display(),
                self.log_tail(60)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `getconf CLK_TCK` (100 on Linux unless the kernel was built otherwise), asked once.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

fn log_path(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir.join(format!("{name}-{}-{}.log", std::process::id(), unique()))
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Kills `pid` once this test process is gone, however it ended.
fn watchdog(pid: u32) {
    let me = std::process::id();
    let script =
        format!("while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null");
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Blocking HTTP for tests; reqwest is built without a TLS provider of its own.
pub fn http() -> reqwest::blocking::Client {
    gitdev::api::client::install_crypto_provider();
    reqwest::blocking::Client::new()
}

/// A simulator process.
#[derive(Debug)]
pub struct Sim {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`
    pub root: String,
}

impl Sim {
    pub fn start(phase_seconds: f64) -> Sim {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitdev-sim"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--phase-duration",
            &phase_seconds.to_string(),
        ]);
        let (proc, url) = Proc::start("gitdev-sim", cmd, "gitdev-sim listening on ");
        Sim {
            proc,
            root: url.trim_end_matches('/').to_string(),
        }
    }

    pub fn api_url(&self) -> String {
        format!("{}/v1", self.root)
    }

    /// Every deployment the simulator holds, in every project.
    pub fn deployments(&self) -> Vec<Value> {
        let v: Value = http()
            .get(format!("{}/_sim/deployments", self.root))
            .send()
            .and_then(|r| r.json())
            .expect("GET /_sim/deployments");
        match v {
            Value::Array(items) => items,
            Value::Object(mut o) => match o.remove("deployments").or_else(|| o.remove("data")) {
                Some(Value::Array(items)) => items,
                other => panic!("unexpected /_sim/deployments shape: {other:?}"),
            },
            other => panic!("unexpected /_sim/deployments shape: {other}"),
        }
    }

    /// The deployments of one branch (every test uses its own branch or simulator).
    pub fn deployments_of(&self, branch: &str) -> Vec<Value> {
        self.deployments()
            .into_iter()
            .filter(|d| d["branch"] == branch)
            .collect()
    }

    pub fn stats(&self) -> Value {
        http()
            .get(format!("{}/_sim/stats", self.root))
            .send()
            .and_then(|r| r.json())
            .expect("GET /_sim/stats")
    }

    /// `GET /v1/deployments/{id}` with a token, as any API client would: (status code, body).
    pub fn get(&self, token: &str, id: &str) -> (u16, Value) {
        let r = http()
            .get(format!("{}/v1/deployments/{id}", self.root))
            .bearer_auth(token)
            .send()
            .expect("GET deployment");
        let code = r.status().as_u16();
        (code, r.json().unwrap_or(Value::Null))
    }

    pub fn hook(&self, method: &str, path: &str, body: Option<Value>) -> u16 {
        let url = format!("{}{path}", self.root);
        let c = http();
        let req = match method {
            "POST" => c.post(url),
            "PUT" => c.put(url),
            "DELETE" => c.delete(url),
            _ => c.get(url),
        };
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        req.send().expect("simulator hook").status().as_u16()
    }
}

/// How long the test operators' deletions wait for usable credentials before orphaning
/// (`--cleanup-grace-seconds`; the product's default is 300 s).
pub const CLEANUP_GRACE: Duration = Duration::from_secs(20);

/// An operator process watching one namespace.
#[derive(Debug)]
pub struct Operator {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT` of /metrics, /healthz, /readyz.
    pub metrics: String,
}

impl Operator {
    pub fn start(cluster: &Cluster, api_url: &str, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_with_env(cluster, api_url, namespace, extra, &[])
    }

    pub fn start_with_env(
        cluster: &Cluster,
        api_url: &str,
        namespace: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        Self::start_watching(cluster, api_url, Some(namespace), extra, env)
    }

    /// An operator watching `namespace`, or every namespace of the cluster when `None` (as a
    /// cluster-wide install runs: see `cluster_wide`, never on a cluster other tests share).
    pub fn start_watching(
        cluster: &Cluster,
        api_url: &str,
        namespace: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Operator {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitdev-operator"));
        cmd.env("KUBECONFIG", cluster.kubeconfig())
            .env("RUST_LOG", "info,gitdev=debug,kube=warn")
            .args(["--api-url", api_url, "--metrics-addr", "127.0.0.1:0"])
            .args(
                namespace
                    .map(|ns| ["--namespace", ns])
                    .into_iter()
                    .flatten(),
            )
            .args([
                "--cleanup-grace-seconds",
                &CLEANUP_GRACE.as_secs().to_string(),
            ])
            .args(extra)
            .envs(env.iter().copied());
        let (proc, url) = Proc::start("gitdev-operator", cmd, "gitdev-operator metrics on ");
        Operator { proc, metrics: url }
    }

    /// A counter or gauge of /metrics (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn kill(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.proc.pid().to_string()])
            .status();
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = http()
            .get(format!("{}{path}", self.metrics))
            .send()
            .expect("operator endpoint");
        (r.status().as_u16(), r.text().unwrap_or_default())
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
