//! A real Kubernetes control plane (etcd + kube-apiserver from `tests/cluster/up.sh`) for the
//! integration tests.
//!
//! [`cluster()`] starts one control plane per test binary, the first time a test asks for it,
//! and shares it between the tests of that binary. It is started with `--owner-pid` set to the
//! test process, so `tests/cluster/reaper.sh` stops it and deletes its directory once the test
//! binary exits, whether the tests passed, panicked or the process was killed.
//!
//! With `GITDEV_TEST_USE_KUBECONFIG=1`, the tests use the cluster that the file named by
//! `KUBECONFIG` points at (its current context) instead of starting one. `KUBECONFIG` is never
//! read otherwise, and `~/.kube/config` never: tests do not touch a developer's cluster unless
//! asked to.
//!
//! Each test takes a fresh namespace from [`Cluster::namespace`]; the CRDs of the repository's
//! `crds/` directory are installed (server-side apply) before the first test runs.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Set to `1` to run the tests against the cluster of `$KUBECONFIG` instead of a local one.
pub const USE_KUBECONFIG_ENV: &str = "GITDEV_TEST_USE_KUBECONFIG";
/// The label every namespace made by [`Cluster::namespace`] carries.
pub const NAMESPACE_LABEL: &str = "gitdev.test/harness";
/// The field manager of the harness's server-side applies.
pub const FIELD_MANAGER: &str = "gitdev-tests";

/// The repository's root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file or directory of the repository, from a path relative to its root.
pub fn repo_path(relative: &str) -> PathBuf {
    repo_root().join(relative)
}

/// The Kubernetes version the local control plane is built at (`KUBE_VERSION` in
/// tests/cluster/versions.env), e.g. `v1.33.13`.
pub fn expected_kube_version() -> String {
    let path = repo_path("tests/cluster/versions.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    parse_env(&text)
        .remove("KUBE_VERSION")
        .unwrap_or_else(|| panic!("{} has no KUBE_VERSION", path.display()))
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The cluster of this test binary: a local control plane started on first use (a few seconds
/// once the binaries are built; the first build on a machine takes minutes), or the cluster of
/// `$KUBECONFIG` when `GITDEV_TEST_USE_KUBECONFIG=1`. Panics with the reason (e.g. the end of
/// the logs) if it cannot be had; every later caller gets the same panic without a new attempt.
///
/// This blocks; calling it from an async test is fine (each `#[tokio::test]` has a runtime of its
/// own, and the other tests wait for the same start anyway).
pub fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(Cluster::start_or_reuse) {
        Ok(cluster) => cluster,
        Err(error) => panic!("no Kubernetes cluster for the tests: {error}"),
    }
}

static SECOND: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// A second local control plane of this test binary, for operators that watch every namespace.
/// Such an operator acts on every gitdeployment it can see, so it must never run where the
/// binary's other tests run operators of their own: this one is always local, even with
/// `GITDEV_TEST_USE_KUBECONFIG=1` (it would act on everything in a developer's cluster), and
/// only `cluster_wide` uses it. Started on first use, like [`cluster()`].
pub fn second_cluster() -> &'static Cluster {
    match SECOND.get_or_init(Cluster::start_local) {
        Ok(cluster) => cluster,
        Err(error) => panic!("no second Kubernetes control plane for the tests: {error}"),
    }
}

/// A Kubernetes cluster the tests can use.
#[derive(Debug)]
pub struct Cluster {
    kubeconfig: PathBuf,
    kubectl: Kubectl,
    /// The control plane this test binary started; `None` when reusing `$KUBECONFIG`.
    local: Option<LocalControlPlane>,
}

impl Cluster {
    fn start_or_reuse() -> Result<Cluster, String> {
        if !reuse_kubeconfig()? {
            return Cluster::start_local();
        }
        let path = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()).ok_or_else(|| {
            format!("{USE_KUBECONFIG_ENV}=1 but KUBECONFIG is not set: set it to the kubeconfig file of the cluster to test against")
        })?;
        let mut paths: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if paths.len() != 1 {
            return Err(format!(
                "{USE_KUBECONFIG_ENV}=1 needs KUBECONFIG to name one file, not {}",
                path.to_string_lossy()
            ));
        }
        let kubeconfig = paths.remove(0);
        if !kubeconfig.is_file() {
            return Err(format!("KUBECONFIG={} is not a file", kubeconfig.display()));
        }
        let cluster = Cluster {
            kubectl: Kubectl::new(&kubeconfig, None),
            kubeconfig,
            local: None,
        };
        cluster.install_repository_crds()?;
        Ok(cluster)
    }

    /// A local control plane owned by this test process, with the repository's CRDs.
    fn start_local() -> Result<Cluster, String> {
        let dir = unique_temp_dir("gitdev-cp-test");
        let local = LocalControlPlane::start(&dir, Some(std::process::id()))?;
        let cluster = Cluster {
            kubeconfig: local.kubeconfig(),
            kubectl: Kubectl::new(&local.kubeconfig(), Some(local.dir.join("kubectl-cache"))),
            local: Some(local),
        };
        cluster.install_repository_crds()?;
        Ok(cluster)
    }

    /// A local control plane of its own, for callers that want a clean one each time (the
    /// benchmark, one per run); stop it with `local().stop()`.
    pub fn start_fresh() -> Result<Cluster, String> {
        Cluster::start_local()
    }

    /// The kubeconfig file of this cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The local control plane, or `None` if the tests run against `$KUBECONFIG`'s cluster.
    pub fn local(&self) -> Option<&LocalControlPlane> {
        self.local.as_ref()
    }

    /// A new client for this cluster. A `kube::Client` belongs to the Tokio runtime it was made
    /// in (each `#[tokio::test]` has its own), so make one per test rather than sharing one.
    pub async fn client(&self) -> Client {
        self.try_client().await.unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn try_client(&self) -> Result<Client, String> {
        // kube's rustls needs a process-wide crypto provider; the crate builds only ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = &self.kubeconfig;
        let kubeconfig = Kubeconfig::read_from(path)
            .map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("bad kubeconfig {}: {e}", path.display()))?;
        Client::try_from(config)
            .map_err(|e| format!("cannot make a client for {}: {e}", path.display()))
    }

    /// `kubectl` with this cluster's kubeconfig.
    pub fn kubectl_command(&self) -> &Kubectl {
        &self.kubectl
    }

    /// Runs `kubectl ARGS...` against this cluster. Blocks until it exits.
    pub fn kubectl<I, S>(&self, args: I) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl.run(args, None)
    }

    /// Runs `kubectl ARGS...` with `stdin` as its standard input (e.g. `apply -f -`).
    pub fn kubectl_with_stdin<I, S>(&self, args: I, stdin: &str) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl.run(args, Some(stdin))
    }

    /// Applies a file of CustomResourceDefinitions (server-side) and waits until every CRD in
    /// it is Established. Returns their names.
    pub fn apply_crds(&self, file: &Path) -> Result<Vec<String>, String> {
        let file_arg = file.as_os_str().to_owned();
        let applied = self.kubectl.run(
            [
                OsStr::new("apply"),
                OsStr::new("--server-side"),
                OsStr::new("--force-conflicts"),
                OsStr::new(&format!("--field-manager={FIELD_MANAGER}")),
                OsStr::new("-o"),
                OsStr::new("name"),
                OsStr::new("-f"),
                &file_arg,
            ],
            None,
        );
        if !applied.success() {
            return Err(format!("cannot apply {}: {applied}", file.display()));
        }
        let crds: Vec<String> = applied
            .stdout
            .lines()
            .filter(|l| l.starts_with("customresourcedefinition"))
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .collect();
        if !crds.is_empty() {
            let mut args = vec![
                "wait".to_string(),
                "--for=condition=Established".into(),
                "--timeout=60s".into(),
            ];
            args.extend(crds.iter().map(|c| format!("customresourcedefinition/{c}")));
            let waited = self.kubectl(&args);
            if !waited.success() {
                return Err(format!(
                    "CRDs of {} did not become Established: {waited}",
                    file.display()
                ));
            }
        }
        Ok(crds)
    }

    /// Installs every `crds/*.yaml` of the repository; nothing if there is no such file.
    fn install_repository_crds(&self) -> Result<(), String> {
        let dir = repo_path("crds");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for file in files {
            self.apply_crds(&file)?;
        }
        Ok(())
    }

    /// A new namespace with a unique name starting with `prefix`, deleted when the returned
    /// guard is dropped.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = unique_name(prefix);
        let namespaces: Api<Namespace> = Api::all(self.client().await);
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        TestNamespace {
            name,
            kubectl: self.kubectl.clone(),
            keep: false,
        }
    }
}

/// `1`/`true`: use `$KUBECONFIG`; unset, empty, `0`/`false`: start a local control plane.
fn reuse_kubeconfig() -> Result<bool, String> {
    match std::env::var(USE_KUBECONFIG_ENV).as_deref() {
        Err(_) | Ok("") | Ok("0") | Ok("false") => Ok(false),
        Ok("1") | Ok("true") => Ok(true),
        Ok(other) => Err(format!(
            "{USE_KUBECONFIG_ENV}={other}: use 1 (reuse $KUBECONFIG's cluster) or 0"
        )),
    }
}

/// A namespace for one test. Dropping it issues the namespace's deletion without waiting.
///
/// On the local control plane, which runs no kube-controller-manager, a deleted namespace stays
/// `Terminating` for good (the namespace controller that empties and finalizes it does not
/// run), with its objects still readable. That is harmless: names are unique, the whole control
/// plane goes away when the test binary exits, and a test that watches cluster-wide should
/// filter on its namespace anyway. On a real cluster the namespace goes away as usual.
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubectl: Kubectl,
    keep: bool,
}

impl TestNamespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Do not delete the namespace on drop (to look at it after a test).
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.name.clone()
    }
}

impl std::ops::Deref for TestNamespace {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Display for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let out = self.kubectl.run(
            [
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
        if !out.success() {
            eprintln!(
                "warning: could not delete test namespace {}: {out}",
                self.name
            );
        }
    }
}

/// How to run kubectl against one cluster: `$KUBECTL` or `kubectl` from `PATH`, always with
/// `--kubeconfig` (so `$KUBECONFIG` and `~/.kube/config` never matter).
#[derive(Debug, Clone)]
pub struct Kubectl {
    program: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: Option<PathBuf>,
}

impl Kubectl {
    /// `cache_dir`: kubectl's discovery cache; `None` for kubectl's default (~/.kube/cache).
    pub fn new(kubeconfig: &Path, cache_dir: Option<PathBuf>) -> Kubectl {
        let program = std::env::var_os("KUBECTL")
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "kubectl".into());
        Kubectl {
            program: program.into(),
            kubeconfig: kubeconfig.to_path_buf(),
            cache_dir,
        }
    }

    /// The command with the global flags set, for callers that need more control.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(dir) = &self.cache_dir {
            command.arg("--cache-dir").arg(dir);
        }
        command
    }

    pub fn run<I, S>(&self, args: I, stdin: Option<&str>) -> KubectlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let mut command = self.command();
        command
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run {} (set KUBECTL to kubectl's path if it is not on PATH): {e}",
                self.program.display()
            )
        });
        let writer = stdin.map(|input| {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            let input = input.to_string();
            // A thread, so that a large input cannot deadlock against kubectl's output.
            std::thread::spawn(move || pipe.write_all(input.as_bytes()))
        });
        let output = child.wait_with_output().expect("kubectl's output");
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        KubectlOutput {
            args,
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What a kubectl run printed, and how it exited.
#[derive(Debug, Clone)]
pub struct KubectlOutput {
    pub args: Vec<String>,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The standard output; panics with everything kubectl said if it failed.
    #[track_caller]
    pub fn expect_success(self) -> String {
        assert!(self.success(), "{self}");
        self.stdout
    }

    /// The standard error; panics if kubectl succeeded.
    #[track_caller]
    pub fn expect_failure(self) -> String {
        assert!(!self.success(), "expected a failure, but {self}");
        self.stderr
    }
}

impl std::fmt::Display for KubectlOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`kubectl {}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args.join(" "),
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// A control plane started by `tests/cluster/up.sh`.
#[derive(Debug)]
pub struct LocalControlPlane {
    /// Its directory: data, certificates, logs, `kubeconfig` and `env`.
    pub dir: PathBuf,
    /// The `env` file up.sh wrote (KUBECONFIG, GITDEV_CP_* PIDs and ports).
    pub env: HashMap<String, String>,
}

impl LocalControlPlane {
    /// Runs `up.sh --dir DIR [--owner-pid PID]` and waits until the control plane is ready.
    /// With an owner, it stops by itself when that process exits.
    pub fn start(dir: &Path, owner_pid: Option<u32>) -> Result<LocalControlPlane, String> {
        let script = repo_path("tests/cluster/up.sh");
        let mut command = Command::new(&script);
        command.arg("--dir").arg(dir).stdin(Stdio::null());
        if let Some(pid) = owner_pid {
            command.arg("--owner-pid").arg(pid.to_string());
        }
        let started = Instant::now();
        let output = command
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} --dir {} failed ({}) after {:.1?}:\n{}{}",
                script.display(),
                dir.display(),
                output.status,
                started.elapsed(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let env_file = dir.join("env");
        let text = std::fs::read_to_string(&env_file).map_err(|e| {
            format!(
                "up.sh succeeded but {} is unreadable: {e}",
                env_file.display()
            )
        })?;
        let env = parse_env(&text);
        let dir = env
            .get("GITDEV_CP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| dir.to_path_buf());
        Ok(LocalControlPlane { dir, env })
    }

    /// Runs `down.sh DIR`: stops the processes and removes the directory.
    pub fn stop(&self) -> Result<(), String> {
        let script = repo_path("tests/cluster/down.sh");
        let output = Command::new(&script)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{} {} failed ({}):\n{}{}",
                script.display(),
                self.dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A value of the env file, e.g. `GITDEV_CP_APISERVER_PORT`.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.env
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str) -> u32 {
        self.var(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{}/env has no number {key}", self.dir.display()))
    }

    pub fn apiserver_pid(&self) -> u32 {
        self.number("GITDEV_CP_APISERVER_PID")
    }
    pub fn etcd_pid(&self) -> u32 {
        self.number("GITDEV_CP_ETCD_PID")
    }
    /// The reaper's PID, if started with an owner.
    pub fn reaper_pid(&self) -> Option<u32> {
        self.var("GITDEV_CP_REAPER_PID")
            .and_then(|v| v.parse().ok())
    }
    pub fn apiserver_port(&self) -> u16 {
        self.number("GITDEV_CP_APISERVER_PORT") as u16
    }
    pub fn etcd_port(&self) -> u16 {
        self.number("GITDEV_CP_ETCD_PORT") as u16
    }
    pub fn etcd_peer_port(&self) -> u16 {
        self.number("GITDEV_CP_ETCD_PEER_PORT") as u16
    }
    /// The PIDs of the servers (kube-apiserver, etcd).
    pub fn server_pids(&self) -> [u32; 2] {
        [self.apiserver_pid(), self.etcd_pid()]
    }
}

/// Whether a process runs: it exists and is not a zombie (which has exited and only waits to be
/// collected by its parent).
pub fn process_is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// Waits until `condition` holds, checking every 100 ms; false if it still does not after
/// `timeout`.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `KEY=VALUE` lines (comments and blank lines skipped), as in up.sh's env file and versions.env.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        .collect()
}

/// A path under the system's temporary directory that nothing uses yet (not created).
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}.{}", unique_suffix()))
}

/// `prefix-xxxxxxxxxx`: a valid namespace (DNS-1123 label) name, unique across test binaries.
pub fn unique_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    clean = clean.trim_matches('-').to_string();
    if clean.is_empty() || !clean.starts_with(|c: char| c.is_ascii_alphabetic()) {
        clean.insert(0, 't');
    }
    format!("{clean}-{}", unique_suffix())
}

/// Ten hex digits from the process id, a counter, the time and a per-process random key.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let mut hasher = KEYS.get_or_init(Default::default).build_hasher();
    std::process::id().hash(&mut hasher);
    COUNTER.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .hash(&mut hasher);
    format!("{:010x}", hasher.finish() & 0xff_ffff_ffff)
}
