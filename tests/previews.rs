//! `examples/previews/` end to end: one gitdeployment per open pull request, pruned when the pull
//! request closes, as Argo CD's ApplicationSet and the Flux Operator's ResourceSet make them.
//!
//! Neither tool runs here; what each would apply is rendered with the template engine it uses
//! (the Go program in `tests/previews/`: Go text/template with sprig for the ApplicationSet,
//! with slim-sprig and `<< >>` for the ResourceSet; `helm template` for the chart each Argo CD
//! Application installs). The rendered gitdeployments are applied to the real control plane with
//! the real operator and simulator; closing a pull request re-renders without it and deletes what
//! is no longer rendered, as both tools prune, and the remote deployment must then be deleted.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::cluster::{Cluster, cluster, repo_path};
use common::stack::{Operator, Proc, Sim, eventually};
use common::world::WAIT;
use serde_json::{Value, json};

const TOKEN: &str = "sk_test_write";

/// An open pull request, as the Git host reports it to the generator or input provider.
#[derive(Clone)]
struct Pull {
    number: u32,
    branch: &'static str,
    head_sha: String,
}

impl Pull {
    fn new(number: u32, branch: &'static str, sha_digit: char) -> Pull {
        Pull {
            number,
            branch,
            head_sha: sha_digit.to_string().repeat(40),
        }
    }

    fn json(&self) -> Value {
        json!({
            "number": self.number,
            "title": format!("Pull request {}", self.number),
            "branch": self.branch,
            "targetBranch": "main",
            "headSha": self.head_sha,
            "author": "dev",
            "labels": ["preview"],
        })
    }
}

/// The pull request branches, known to the simulator as branches of `proj_8f3k29`.
const BRANCHES: [&str; 3] = ["feature/search", "fix/header-typo", "feature/dark-mode"];

fn open_pulls() -> Vec<Pull> {
    vec![
        Pull::new(12, BRANCHES[0], 'a'),
        Pull::new(15, BRANCHES[1], 'b'),
        Pull::new(21, BRANCHES[2], 'c'),
    ]
}

/// `go run` of the renderer in tests/previews/ for `tool` on `manifest` (under examples/).
fn render(tool: &str, manifest: &str, pulls: &[Pull]) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("previews");
    std::fs::create_dir_all(&dir).unwrap();
    // Tests render at the same time: each call has a file of its own.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let pulls_file = dir.join(format!("{tool}-pulls-{}-{call}.json", std::process::id()));
    let list: Vec<Value> = pulls.iter().map(Pull::json).collect();
    std::fs::write(&pulls_file, serde_json::to_vec(&list).unwrap()).unwrap();
    let go = std::env::var_os("GO").unwrap_or_else(|| "go".into());
    let out = Command::new(go)
        .current_dir(repo_path("tests/previews"))
        .args(["run", ".", tool])
        .arg(repo_path(manifest))
        .arg(&pulls_file)
        .stdin(Stdio::null())
        .output()
        .expect("run go (tests/previews needs a Go toolchain)");
    assert!(
        out.status.success(),
        "go run . {tool} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the renderer prints a JSON array")
}

/// The Helm binary of `tests/cluster/build.sh` (its last line of output is its bin directory).
fn helm_binary() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        let out = Command::new(repo_path("tests/cluster/build.sh"))
            .stdin(Stdio::null())
            .output()
            .expect("run tests/cluster/build.sh");
        assert!(out.status.success(), "tests/cluster/build.sh failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bin = stdout.lines().last().expect("build.sh prints its bin dir");
        Path::new(bin.trim()).join("helm")
    })
}

/// What Argo CD applies for each Application: `helm template` of its source chart with its
/// release name and Helm parameters (`forceString` ones as `--set-string`).
fn argocd_gitdeployments(pulls: &[Pull]) -> Vec<Value> {
    let apps = render(
        "argocd",
        "examples/previews/argocd/applicationset.yaml",
        pulls,
    );
    assert_eq!(apps.len(), pulls.len());
    let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    apps.iter()
        .flat_map(|app| {
            assert_eq!(app["kind"], "Application");
            let finalizers = app["metadata"]["finalizers"].to_string();
            assert!(
                finalizers.contains("resources-finalizer.argocd.argoproj.io"),
                "deleting the Application must delete its gitdeployment: {app}"
            );
            assert_eq!(app["spec"]["syncPolicy"]["automated"]["prune"], true);
            let source = &app["spec"]["source"];
            let helm = &source["helm"];
            let mut cmd = Command::new(helm_binary());
            cmd.env("HELM_CACHE_HOME", home.join("cache"))
                .env("HELM_CONFIG_HOME", home.join("config"))
                .env("HELM_DATA_HOME", home.join("data"))
                .env_remove("KUBECONFIG")
                .arg("template")
                .arg(helm["releaseName"].as_str().expect("a release name"))
                .arg(repo_path(source["path"].as_str().expect("a chart path")));
            for p in helm["parameters"].as_array().expect("Helm parameters") {
                let flag = if p["forceString"] == true {
                    "--set-string"
                } else {
                    "--set"
                };
                let (name, value) = (p["name"].as_str().unwrap(), p["value"].as_str().unwrap());
                cmd.arg(flag).arg(format!("{name}={value}"));
            }
            let out = cmd.stdin(Stdio::null()).output().expect("run helm");
            assert!(
                out.status.success(),
                "helm template failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
            serde_saphyr::from_multiple::<Value>(&yaml)
                .unwrap_or_else(|e| panic!("helm template printed invalid YAML: {e}\n{yaml}"))
                .into_iter()
                .filter(|o| !o.is_null())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn flux_gitdeployments(pulls: &[Pull]) -> Vec<Value> {
    render("flux", "examples/previews/flux/resourceset.yaml", pulls)
}

/// The preview namespace of one test: its own simulator (knowing the pull request branches),
/// its own operator, the API token.
struct Previews {
    cluster: &'static Cluster,
    ns: common::cluster::TestNamespace,
    sim: Sim,
    _operator: Operator,
}

impl Previews {
    fn start(prefix: &str) -> Previews {
        let c = cluster();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("previews");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join(format!("{prefix}-sim.yaml"));
        let branches: String = std::iter::once(("main", '0'))
            .chain(BRANCHES.iter().copied().zip(['d', 'e', 'f']))
            .map(|(b, d)| format!("      {b}: \"{}\"\n", d.to_string().repeat(40)))
            .collect();
        std::fs::write(
            &config,
            format!(
                "phase_duration: 0.5\nprojects:\n  proj_8f3k29:\n    branches:\n{branches}tokens:\n  {TOKEN}:\n    project: proj_8f3k29\n    scope: deploy:write\n    plan: pro\n    user: user_write01\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gitdev-sim"));
        cmd.args(["--listen", "127.0.0.1:0", "--config"])
            .arg(&config);
        let (proc, url) = Proc::start("gitdev-sim", cmd, "gitdev-sim listening on ");
        let sim = Sim {
            proc,
            root: url.trim_end_matches('/').to_string(),
        };
        let ns = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(c.namespace(prefix));
        c.kubectl_with_stdin(
            ["-n", &ns, "apply", "-f", "-"],
            &format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: gitdev-credentials\nstringData:\n  token: {TOKEN}\n"),
        )
        .expect_success();
        let operator = Operator::start_with_env(c, &sim.api_url(), &ns, &[], &[]);
        Previews {
            cluster: c,
            ns,
            sim,
            _operator: operator,
        }
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.ns];
        all.extend_from_slice(args);
        self.cluster.kubectl(all).expect_success()
    }

    /// Applies rendered objects into the test's namespace (the examples say `previews`).
    fn apply(&self, objects: &[Value]) {
        let items: Vec<Value> = objects
            .iter()
            .map(|o| {
                let mut o = o.clone();
                if let Some(m) = o["metadata"].as_object_mut() {
                    m.remove("namespace");
                }
                o
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.cluster
            .kubectl_with_stdin(["-n", &self.ns, "apply", "-f", "-"], &list.to_string())
            .expect_success();
    }

    fn get(&self, name: &str) -> Value {
        serde_json::from_str(&self.kubectl(&["get", "gitdeployment", name, "-o", "json"])).unwrap()
    }

    /// Waits until `name` is Ready/Succeeded with its generation observed; its status.
    fn wait_succeeded(&self, name: &str) -> Value {
        eventually(WAIT, &format!("{name} Ready"), || {
            let obj = self.get(name);
            let ready = obj["status"]["conditions"].as_array()?.iter().any(|c| {
                c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Succeeded"
            });
            (ready && obj["status"]["observedGeneration"] == obj["metadata"]["generation"])
                .then(|| obj["status"].clone())
        })
    }

    fn exists(&self, kind: &str, name: &str) -> bool {
        !self
            .kubectl(&["get", kind, name, "--ignore-not-found", "-o", "name"])
            .trim()
            .is_empty()
    }
}

fn names(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// The scenario both tools must pass: a preview per open pull request, each deployed at its
/// pull request's head commit; a push redeploys it; a closed pull request's preview is pruned
/// and its remote deployment deleted, and the other previews are left as they are.
fn previews_follow_the_open_pull_requests(prefix: &str, rendered: fn(&[Pull]) -> Vec<Value>) {
    let p = Previews::start(prefix);
    let mut pulls = open_pulls();
    let objects = rendered(&pulls);
    assert_eq!(
        names(&objects),
        BTreeSet::from(["web-pr-12".into(), "web-pr-15".into(), "web-pr-21".into()])
    );
    for (o, pull) in objects.iter().zip(&pulls) {
        assert_eq!(o["apiVersion"], "git.dev/v1alpha1");
        assert_eq!(o["kind"], "Deployment");
        assert_eq!(o["spec"]["branch"], pull.branch);
        assert_eq!(o["spec"]["commitSha"], pull.head_sha.as_str());
        assert_eq!(o["spec"]["deletionPolicy"], "Delete");
    }
    p.apply(&objects);

    let mut ids = std::collections::BTreeMap::new();
    for pull in &pulls {
        let name = format!("web-pr-{}", pull.number);
        let status = p.wait_succeeded(&name);
        assert_eq!(status["commitSha"], pull.head_sha.as_str());
        let id = status["deploymentId"].as_str().unwrap().to_string();
        let (code, remote) = p.sim.get(TOKEN, &id);
        assert_eq!(code, 200);
        assert_eq!(remote["branch"], pull.branch);
        // The preview URL is also where a bot would read it.
        let url = eventually(WAIT, "the preview URL exported", || {
            let out = p.kubectl(&[
                "get",
                "configmap",
                &format!("{name}-preview"),
                "--ignore-not-found",
                "-o",
                "jsonpath={.data.url}",
            ]);
            (!out.is_empty()).then_some(out)
        });
        assert_eq!(url, format!("https://{id}.git.dev"));
        ids.insert(name, id);
    }

    // A push to pull request 12: its head moves, its preview redeploys at the new commit.
    pulls[0].head_sha = "9".repeat(40);
    p.apply(&rendered(&pulls));
    let status = eventually(WAIT, "web-pr-12 redeployed", || {
        let s = p.wait_succeeded("web-pr-12");
        (s["deploymentId"] != ids["web-pr-12"].as_str()).then_some(s)
    });
    assert_eq!(status["commitSha"], "9".repeat(40).as_str());

    // Pull request 15 closes: it is no longer rendered, and what is no longer rendered is pruned.
    pulls.retain(|pull| pull.number != 15);
    let now = rendered(&pulls);
    let pruned: Vec<String> = names(&objects).difference(&names(&now)).cloned().collect();
    assert_eq!(pruned, ["web-pr-15"]);
    p.apply(&now);
    for name in &pruned {
        p.kubectl(&["delete", "gitdeployment", name.as_str(), "--wait=false"]);
    }
    eventually(WAIT, "web-pr-15 gone", || {
        (!p.exists("gitdeployment", "web-pr-15")).then_some(())
    });
    let (code, _) = p.sim.get(TOKEN, &ids["web-pr-15"]);
    assert_eq!(
        code, 404,
        "the closed pull request's deployment is deleted remotely"
    );
    eventually(WAIT, "its ConfigMap gone", || {
        (!p.exists("configmap", "web-pr-15-preview")).then_some(())
    });
    // The other previews stand.
    for name in ["web-pr-12", "web-pr-21"] {
        let status = p.wait_succeeded(name);
        let (code, _) = p.sim.get(TOKEN, status["deploymentId"].as_str().unwrap());
        assert_eq!(code, 200, "{name}");
    }
    assert_eq!(p.sim.get(TOKEN, &ids["web-pr-21"]).0, 200);
}

#[test]
fn an_argo_cd_application_set_makes_a_preview_per_open_pull_request_and_prunes_a_closed_one() {
    previews_follow_the_open_pull_requests("previews-argocd", argocd_gitdeployments);
}

#[test]
fn a_flux_resource_set_makes_a_preview_per_open_pull_request_and_prunes_a_closed_one() {
    previews_follow_the_open_pull_requests("previews-flux", flux_gitdeployments);
}

#[test]
fn no_open_pull_request_renders_no_preview() {
    assert!(argocd_gitdeployments(&[]).is_empty());
    assert!(flux_gitdeployments(&[]).is_empty());
}
