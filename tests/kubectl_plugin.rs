//! `kubectl-gitdev`, the kubectl plugin, end to end: the built binary against a real
//! kube-apiserver, a real `gitdev-sim` and a real `gitdev-operator`, with the harness's
//! kubeconfig or a ServiceAccount's that may not read Secrets.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use common::service_account::kubeconfig_with_role;
use common::stack::{eventually, http};
use common::world::{WAIT, World, gitdeployment};
use serde_json::{Value, json};

/// What one run of the plugin did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(command: &mut Command) -> Run {
        let out = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn ok(self) -> String {
        assert_eq!(self.code, 0, "kubectl-gitdev failed: {self:?}");
        self.stdout
    }

    #[track_caller]
    fn json(self) -> Value {
        let text = self.ok();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

/// Runs `kubectl-gitdev ARGS` in the world's namespace with `kubeconfig`, against its simulator.
fn plugin_as(w: &World, kubeconfig: &Path, args: &[&str]) -> Run {
    Run::of(
        Command::new(env!("CARGO_BIN_EXE_kubectl-gitdev"))
            .env_remove("KUBECONFIG")
            .env("GITDEV_API_URL", w.sim.api_url())
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["-n", &w.ns])
            .args(args),
    )
}

fn plugin(w: &World, args: &[&str]) -> Run {
    plugin_as(w, w.cluster.kubeconfig(), args)
}

fn world(prefix: &str, phase: f64) -> World {
    let w = World::with_operator(prefix, phase);
    w.token_secret("sk_test_write");
    w
}

#[test]
fn logs_follow_a_running_build_and_history_why_redeploy_cancel_resume_act_on_the_object() {
    // Phases of 2 s: the build runs for 6 s, long enough to start following it mid-way.
    let w = world("plugin-live", 2.0);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    let first = eventually(WAIT, "a first deployment", || {
        w.get("web")["status"]["deploymentId"]
            .as_str()
            .map(str::to_string)
    });

    let (_, before) = w.sim.get("sk_test_write", &first);
    assert_ne!(
        before["status"], "success",
        "-f starts on a running build: {before}"
    );
    let followed = plugin(&w, &["logs", "web", "-f"]).ok();
    for phase in ["[queued]", "[building]", "[deploying]"] {
        assert!(
            followed.contains(phase),
            "{phase} in the followed log:\n{followed}"
        );
    }
    let lines: Vec<&str> = followed.lines().collect();
    let mut unique = lines.clone();
    unique.dedup();
    assert_eq!(lines, unique, "no line printed twice");
    let (_, remote) = w.sim.get("sk_test_write", &first);
    assert!(
        remote["status"].as_str().is_some_and(|s| s == "success"),
        "-f ends once terminal: {remote}"
    );

    w.wait_succeeded("web", None);
    let history = plugin(&w, &["history", "web", "-o", "json"]).json();
    assert_eq!(history[0]["deploymentId"], first.as_str());
    assert_eq!(history[0]["status"], "success");
    assert_eq!(history[0]["current"], true);
    assert_eq!(
        history[0]["url"],
        format!("https://{first}.git.dev").as_str()
    );

    let changed = plugin(&w, &["redeploy", "web"]).ok();
    assert!(changed.contains("spec.redeploy: (unset) → "), "{changed}");
    let second = w.wait_succeeded("web", Some(&first));
    let history = plugin(&w, &["history", "web", "-o", "json"]).json();
    let ids: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["deploymentId"].as_str())
        .collect();
    assert_eq!(
        ids,
        [second.as_str(), first.as_str()],
        "newest first: {history}"
    );
    let table = plugin(&w, &["history", "web"]).ok();
    assert!(table.starts_with("DEPLOYMENT"), "{table}");
    assert!(
        table.contains(&format!("{second} *")),
        "current marked: {table}"
    );

    let past = plugin(&w, &["logs", "web", "--deployment", &first]).ok();
    assert!(past.contains("[deploying]"), "{past}");

    let why = plugin(&w, &["why", "web", "-o", "json"]).json();
    assert_eq!(why["conditions"].as_array().map(Vec::len), Some(3), "{why}");
    let reasons: Vec<&str> = why["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"Created"), "events of the object: {why}");
    assert!(
        why["nextStep"].as_str().unwrap().contains("nothing"),
        "{why}"
    );
    let text = plugin(&w, &["why", "web"]).ok();
    assert!(
        text.contains("Succeeded") && text.contains("Next: "),
        "{text}"
    );

    let yaml = plugin(&w, &["why", "web", "-o", "yaml"]).ok();
    assert!(yaml.contains("nextStep:"), "{yaml}");

    // A third deployment, cancelled while it builds.
    plugin(&w, &["redeploy", "web"]).ok();
    let third = eventually(WAIT, "a third deployment", || {
        let id = w.get("web")["status"]["deploymentId"].as_str()?.to_string();
        (id != second).then_some(id)
    });
    let cancel = plugin(&w, &["cancel", "web"]).ok();
    assert!(cancel.contains("spec.cancel: false → true"), "{cancel}");
    w.wait_for("web", "Ready", "Cancelled");
    let (_, remote) = w.sim.get("sk_test_write", &third);
    assert_eq!(remote["status"], "cancelled", "{remote}");
    let resume = plugin(&w, &["resume", "web"]).ok();
    assert!(resume.contains("spec.cancel: true → false"), "{resume}");
    // kubectl hides managedFields unless asked.
    let managers = w
        .kubectl(&[
            "get",
            "gitdeployment",
            "web",
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .expect_success();
    let managers: Value = serde_json::from_str(&managers).unwrap();
    let managers = managers["metadata"]["managedFields"].to_string();
    assert!(
        managers.contains("kubectl-gitdev"),
        "own field manager: {managers}"
    );

    let missing = plugin(&w, &["history", "nope"]);
    assert_eq!(missing.code, 3, "a missing object: {missing:?}");
    assert!(missing.stderr.contains("\"nope\" not found"), "{missing:?}");
    let missing = plugin(&w, &["why", "nope", "-o", "json"]);
    assert_eq!(missing.code, 3, "{missing:?}");
}

#[test]
fn a_failed_build_is_explained_and_untracked_deployments_are_printed_as_adopting_manifests() {
    let w = world("plugin-fail", 0.3);
    w.apply(&gitdeployment("broken", "fail/broken-build", ""))
        .expect_success();
    w.wait_for("broken", "Stalled", "DeploymentFailed");
    let why = plugin(&w, &["why", "broken"]).ok();
    assert!(why.contains("DeploymentFailed"), "{why}");
    assert!(why.contains("End of the build log:"), "{why}");
    assert_eq!(
        why.matches("; the end of its build log (").count(),
        2,
        "message once, event once: {why}"
    );
    assert!(
        why.contains("Next: read the log (`kubectl gitdev logs broken`)"),
        "{why}"
    );

    // A deployment made outside Kubernetes (the dashboard, a script): no object tracks it.
    let created: Value = http()
        .post(format!("{}/deployments", w.sim.api_url()))
        .bearer_auth("sk_test_write")
        .json(&json!({"project_id": "proj_8f3k29", "branch": "main"}))
        .send()
        .and_then(|r| r.json())
        .expect("create outside the operator");
    let outside = created["id"].as_str().unwrap().to_string();
    let tracked = w.deployment_id("broken");

    let listed = plugin(&w, &["adopt", "--list", "-o", "json"]).json();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the untracked one: {listed}");
    assert_eq!(
        items[0]["metadata"]["annotations"]["git.dev/deployment-id"],
        outside.as_str()
    );
    assert_eq!(items[0]["spec"]["branch"], "main");

    let yaml = plugin(&w, &["adopt", "--list"]).ok();
    assert!(yaml.starts_with("---\n# "), "{yaml}");
    assert!(
        yaml.contains(&outside) && !yaml.contains(&tracked),
        "{yaml}"
    );
    // The manifests are what they claim: applied, the object adopts the deployment.
    w.apply(&yaml).expect_success();
    let name = items[0]["metadata"]["name"].as_str().unwrap();
    let adopted = w.wait_succeeded(name, None);
    assert_eq!(adopted, outside);
    assert!(
        plugin(&w, &["adopt", "--list", "-o", "json"]).json()["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_missing_or_unreadable_token_secret_is_named_with_the_rule_and_its_own_exit_code() {
    let w = World::new("plugin-rbac", 0.2);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    // Before the Secret exists: not found, naming it.
    let missing = plugin(&w, &["logs", "web", "--deployment", "dep_anything"]);
    assert_eq!(missing.code, 3, "a missing Secret: {missing:?}");
    assert!(
        missing
            .stderr
            .contains("Secret \"gitdev-credentials\" not found"),
        "{missing:?}"
    );
    w.token_secret("sk_test_write");
    let kubeconfig = kubeconfig_with_role(
        w.cluster,
        &w.ns,
        "developer",
        "- apiGroups: [git.dev]\n  resources: [gitdeployments]\n  verbs: [get, list, patch]\n- apiGroups: [events.k8s.io]\n  resources: [events]\n  verbs: [list]\n",
    );

    let denied = plugin_as(
        &w,
        &kubeconfig,
        &["logs", "web", "--deployment", "dep_anything"],
    );
    assert_eq!(denied.code, 4, "forbidden: {denied:?}");
    assert!(
        denied.stderr.contains(&format!(
            "Secret \"gitdev-credentials\" in namespace \"{}\"",
            w.ns
        )),
        "names the Secret and namespace: {denied:?}"
    );
    assert!(
        denied.stderr.contains("resources: [\"secrets\"]"),
        "{denied:?}"
    );

    // What the object itself says is still shown, with a warning about the rest.
    let history = plugin_as(&w, &kubeconfig, &["history", "web", "-o", "json"]);
    assert_eq!(history.code, 0, "{history:?}");
    assert!(history.stderr.contains("gitdev-credentials"), "{history:?}");

    // Spec edits need only `patch` on gitdeployments.
    let changed = plugin_as(&w, &kubeconfig, &["redeploy", "web"]).ok();
    assert!(changed.contains("spec.redeploy"), "{changed}");
    assert!(w.get("web")["spec"]["redeploy"].is_string());

    let no_list = plugin_as(&w, &kubeconfig, &["adopt", "--list"]);
    assert_eq!(no_list.code, 4, "{no_list:?}");

    let usage = plugin(&w, &["history"]);
    assert_eq!(usage.code, 2, "a usage error: {usage:?}");
    let completion = plugin(&w, &["completion", "bash"]).ok();
    assert!(
        completion.contains("kubectl-gitdev"),
        "a bash completion script"
    );
}

/// Runs `kubectl_complete-gitdev WORDS` as kubectl does: the words after `kubectl gitdev`, the
/// last one under completion, and the user's environment (here `KUBECONFIG`).
fn completer(kubeconfig: &Path, words: &[&str]) -> Run {
    Run::of(
        Command::new(env!("CARGO_BIN_EXE_kubectl_complete-gitdev"))
            .env("KUBECONFIG", kubeconfig)
            .args(words),
    )
}

/// The kubectl the harness uses (`$KUBECTL`, else `kubectl` on PATH).
fn kubectl_program() -> OsString {
    std::env::var_os("KUBECTL")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "kubectl".into())
}

/// The candidates of a completion (descriptions dropped), asserting it ends with `:4`.
#[track_caller]
fn candidates(run: Run) -> Vec<String> {
    let text = run.ok();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.pop(),
        Some(":4"),
        "the directive NoFileComp last: {text}"
    );
    lines
        .iter()
        .map(|l| l.split('\t').next().unwrap_or_default().to_string())
        .collect()
}

/// The minor version of the kubectl the harness uses, if it says.
fn kubectl_minor() -> Option<u32> {
    let out = Command::new(kubectl_program())
        .args(["version", "--client", "-o", "json"])
        .output()
        .ok()?;
    let version: Value = serde_json::from_slice(&out.stdout).ok()?;
    // "32", or "32+" on some distributions' builds.
    let minor = version["clientVersion"]["minor"].as_str()?;
    minor.trim_end_matches('+').parse().ok()
}

#[test]
fn kubectl_completes_subcommands_and_the_names_of_the_objects_in_the_users_namespace() {
    let w = World::new("plugin-complete", 0.2);
    w.apply(&gitdeployment("web", "main", "")).expect_success();
    // Its context's namespace is the world's, so names come from there with no -n typed; it
    // may list gitdeployments there and nothing elsewhere.
    let kubeconfig = kubeconfig_with_role(
        w.cluster,
        &w.ns,
        "completer",
        "- apiGroups: [git.dev]\n  resources: [gitdeployments]\n  verbs: [list]\n",
    );

    let names = candidates(completer(&kubeconfig, &["why", ""]));
    assert_eq!(names, ["web"], "the object of the context's namespace");
    let subcommands = candidates(completer(&kubeconfig, &[""]));
    assert!(subcommands.contains(&"logs".to_string()), "{subcommands:?}");
    // A typed -n wins over the context; the harness's kubeconfig names no namespace.
    let typed = candidates(completer(
        w.cluster.kubeconfig(),
        &["-n", &w.ns, "logs", "w"],
    ));
    assert_eq!(typed, ["web"]);
    // A namespace the user may not list: no names, and still a completion, not an error.
    let denied = completer(&kubeconfig, &["-n", "kube-system", "cancel", ""]);
    assert!(denied.stderr.contains("forbidden"), "{denied:?}");
    assert!(candidates(denied).is_empty());

    // Through kubectl itself, which finds the completer on PATH next to the plugin.
    match kubectl_minor() {
        Some(minor) if minor >= 26 => {}
        minor => {
            eprintln!(
                "SKIPPED the case through kubectl: its client minor version is {minor:?}, and \
                 kubectl completes plugin arguments only from 1.26"
            );
            return;
        }
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_kubectl_complete-gitdev"))
        .parent()
        .expect("the binaries' directory");
    let path = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("a PATH");
    // `__complete` must be kubectl's first argument: only then does it register plugins.
    let via_kubectl = Run::of(
        Command::new(kubectl_program())
            .env("PATH", path)
            .env("KUBECONFIG", &kubeconfig)
            .args(["__complete", "gitdev", "why", ""]),
    );
    assert_eq!(candidates(via_kubectl), ["web"]);
}
