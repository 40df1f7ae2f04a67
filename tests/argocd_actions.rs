//! The Argo CD resource actions of gitdeployments (`redeploy`, `cancel`, `resume`): which ones
//! `examples/argocd/actions/discovery.lua` offers in each state, what each action script does to
//! the object, and that `examples/argocd/argocd-cm.yaml` and the Helm chart ship exactly these
//! scripts in the shape Argo CD reads. Every script runs in a real Lua 5.1 (mlua), as
//! tests/gitops_health.rs runs the health check.
//!
//! `STATES` (tests/common/argocd_lua.rs) is the contract; docs/gitops.md shows it as a table, and a test keeps the two equal.
//! The objects are written here in the shape the operator leaves them in (the conditions and
//! messages of `src/controller/decision.rs`), so that this binary needs no cluster;
//! tests/gitops_health.rs checks the same contract on the real objects it captures.

mod common;

#[allow(dead_code)] // this binary only renders the chart
#[path = "helm_chart/helm.rs"]
mod helm;

use common::argocd_lua::{ACTIONS, STATES, action_script as script, offered};
use common::cluster::repo_path;
use serde::Deserialize;
use serde_json::{Value, json};

// ----- the objects -----

const ID: &str = "dep_ilybsgg90g";

/// One condition as the operator writes it.
fn condition(type_: &str, status: bool, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2025-06-02T10:15:07Z",
    })
}

/// The three conditions, the one of `true_type` True with `reason` and `message`, the other two
/// False with the same reason (as the operator writes them).
fn conditions(true_type: &str, reason: &str, message: &str, generation: i64) -> Value {
    let all = ["Ready", "Reconciling", "Stalled"]
        .iter()
        .map(|t| {
            let message = if *t == true_type { message } else { "" };
            condition(t, *t == true_type, reason, message, generation)
        })
        .collect();
    Value::Array(all)
}

/// examples/basic.yaml as the API server stores it once the operator has taken it over.
fn base(generation: i64) -> Value {
    json!({
        "apiVersion": "git.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {
            "name": "web",
            "namespace": "gitdev-demo",
            "uid": "5b0e6f0c-3f0a-4d8e-9a57-0d1f6c1c2e11",
            "resourceVersion": "48213",
            "generation": generation,
            "creationTimestamp": "2025-06-02T10:15:02Z",
            "finalizers": ["git.dev/cleanup"],
            "annotations": {
                "git.dev/state": "v1.k1.eyJpZCI6ImRlcF9pbHlic2dnOTBnIn0.c2lnbmF0dXJl",
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"git.dev/v1alpha1\",\"kind\":\"Deployment\",\"metadata\":{\"annotations\":{},\"name\":\"web\",\"namespace\":\"gitdev-demo\"},\"spec\":{\"branch\":\"main\",\"envVars\":{\"NODE_ENV\":\"production\"},\"projectId\":\"proj_8f3k29\"}}\n",
            },
        },
        "spec": {
            "projectId": "proj_8f3k29",
            "branch": "main",
            "envVars": {"NODE_ENV": "production"},
            "deletionPolicy": "Delete",
        },
    })
}

/// The status of a deployment that the operator observed at `generation`, its remote status
/// `remote` and its conditions.
fn tracked(generation: i64, remote: &str, conditions: Value) -> Value {
    json!({
        "observedGeneration": generation,
        "conditions": conditions,
        "deploymentId": ID,
        "status": remote,
        "url": format!("https://{ID}.git.dev"),
        "commitSha": "9f2c1e7a4b3d5f60718293a4b5c6d7e8f9012345",
        "shortCommit": "9f2c1e7",
    })
}

/// The object of a state of [`STATES`].
fn object(state: &str) -> Value {
    let building = format!("deployment {ID} is building");
    let live = format!("deployment {ID} succeeded and is live at https://{ID}.git.dev");
    let (generation, status) = match state {
        "generation-not-observed" => {
            // Not touched by the operator yet: no finalizer, no state, the schema's status.
            let mut obj = base(1);
            let metadata = obj["metadata"].as_object_mut().unwrap();
            metadata.remove("finalizers");
            metadata["annotations"]
                .as_object_mut()
                .unwrap()
                .remove("git.dev/state");
            obj["status"] = json!({"observedGeneration": 0});
            return obj;
        }
        "new-generation-not-observed" => (
            2,
            tracked(1, "success", conditions("Ready", "Succeeded", &live, 1)),
        ),
        "queued" => (
            1,
            tracked(
                1,
                "queued",
                conditions(
                    "Reconciling",
                    "Queued",
                    &format!("deployment {ID} is queued"),
                    1,
                ),
            ),
        ),
        "building" => (
            1,
            tracked(
                1,
                "building",
                conditions("Reconciling", "Building", &building, 1),
            ),
        ),
        "success" => (
            1,
            tracked(1, "success", conditions("Ready", "Succeeded", &live, 1)),
        ),
        "failed" => (
            1,
            tracked(
                1,
                "failed",
                conditions(
                    "Stalled",
                    "DeploymentFailed",
                    &format!(
                        "deployment {ID} failed; see its build log at https://api.git.dev/v1/deployments/{ID}/logs; fix the branch and change spec.commitSha or spec.redeploy to deploy again"
                    ),
                    1,
                ),
            ),
        ),
        "invalid-credentials" => (
            1,
            json!({
                "observedGeneration": 1,
                "conditions": conditions(
                    "Stalled",
                    "CredentialsNotFound",
                    "Secret gitdev-demo/gitdev-credentials with the git.dev API token does not exist: create it (kubectl create secret generic gitdev-credentials --from-literal=token=...)",
                    1,
                ),
            }),
        ),
        "cancel-requested" => {
            let mut obj = base(2);
            obj["spec"]["cancel"] = json!(true);
            obj["status"] = tracked(
                1,
                "building",
                conditions("Reconciling", "Building", &building, 1),
            );
            return obj;
        }
        "cancelled" => {
            let mut obj = base(2);
            obj["spec"]["cancel"] = json!(true);
            obj["status"] = tracked(
                2,
                "cancelled",
                conditions(
                    "Ready",
                    "Cancelled",
                    &format!("deployment {ID} was cancelled as spec.cancel requested"),
                    2,
                ),
            );
            return obj;
        }
        "held-off" => {
            let mut obj = base(1);
            obj["spec"]["cancel"] = json!(true);
            obj["status"] = json!({
                "observedGeneration": 1,
                "conditions": conditions(
                    "Ready",
                    "Cancelled",
                    "spec.cancel is true: no deployment is made until it is set to false",
                    1,
                ),
            });
            return obj;
        }
        "deleting" => {
            let mut obj = base(2);
            obj["metadata"]["deletionTimestamp"] = json!("2025-06-02T10:20:00Z");
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            obj["status"] = tracked(
                2,
                "success",
                conditions(
                    "Reconciling",
                    "Deleting",
                    "cleaning up remote deployments before deletion",
                    2,
                ),
            );
            return obj;
        }
        other => panic!("no object for state {other}"),
    };
    let mut obj = base(generation);
    obj["status"] = status;
    obj
}

// ----- the scripts -----

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs action `name` on `obj` and returns the object it gives back to Argo CD.
fn act(name: &str, obj: &Value) -> Value {
    common::argocd_lua::run(&format!("{name}.lua"), &script(name), obj)
}

/// `obj` with `spec.FIELD = value`: what an action may change, and nothing else.
fn with_spec(obj: &Value, field: &str, value: Value) -> Value {
    let mut expected = obj.clone();
    expected["spec"][field] = value;
    expected
}

// ----- discovery -----

#[test]
fn discovery_offers_the_actions_that_make_sense_in_each_state_and_disables_the_others() {
    for state in STATES {
        assert_eq!(
            offered(&object(state.name)),
            state.enabled,
            "actions offered in state {}",
            state.name
        );
    }
}

#[test]
fn every_offered_action_has_a_definition_and_every_definition_is_discovered() {
    let actions = argocd_cm_actions(&read("examples/argocd/argocd-cm.yaml"));
    let defined: Vec<&str> = actions
        .definitions
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(defined, ACTIONS);
}

// ----- the actions -----

/// Runs `action` on the object of every state: each must come back with `spec.FIELD = value`
/// and nothing else changed, so that the patch Argo CD computes touches that one field.
#[track_caller]
fn assert_action_sets_only(action: &str, field: &str, value: Value) {
    for state in STATES {
        let obj = object(state.name);
        assert_eq!(
            act(action, &obj),
            with_spec(&obj, field, value.clone()),
            "{action} on {}",
            state.name
        );
    }
}

#[test]
fn cancel_sets_spec_cancel_to_true_and_changes_nothing_else() {
    assert_action_sets_only("cancel", "cancel", json!(true));
}

#[test]
fn resume_sets_spec_cancel_to_false_and_changes_nothing_else() {
    assert_action_sets_only("resume", "cancel", json!(false));
}

#[test]
fn redeploy_sets_spec_redeploy_to_a_new_value_and_changes_nothing_else() {
    assert_action_sets_only("redeploy", "redeploy", json!("argocd-1"));
}

#[test]
fn redeploy_counts_up_its_own_values_and_replaces_any_other_with_a_different_one() {
    let cases = [
        ("argocd-1", "argocd-2"),
        ("argocd-9", "argocd-10"),
        ("argocd-41", "argocd-42"),
        // A value written by hand or by another tool: replaced, which is all a redeploy needs.
        ("2025-06-02", "argocd-1"),
        ("v2", "argocd-1"),
        ("argocd-", "argocd-1"),
        ("argocd-x", "argocd-1"),
        ("my-argocd-3", "argocd-1"),
        ("", "argocd-1"),
        // Too many digits to count on portably: start again, still a different value.
        ("argocd-999999999", "argocd-1"),
        ("argocd-123456789012345678901234567890", "argocd-1"),
    ];
    for (before, after) in cases {
        let obj = with_spec(&object("success"), "redeploy", json!(before));
        let redeployed = act("redeploy", &obj);
        assert_eq!(
            redeployed,
            with_spec(&obj, "redeploy", json!(after)),
            "redeploy after {before:?}"
        );
        assert_ne!(before, after);
    }
    // Ten clicks in a row: ten different values.
    let mut obj = object("success");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        obj = act("redeploy", &obj);
        assert!(seen.insert(obj["spec"]["redeploy"].to_string()), "{obj}");
    }
    assert_eq!(obj["spec"]["redeploy"], "argocd-10");
}

#[test]
fn the_scripts_need_no_spec_to_run() {
    // Argo CD runs discovery on whatever the live object is; a spec-less object must not make
    // the Actions menu fail.
    let mut obj = object("success");
    obj.as_object_mut().unwrap().remove("spec");
    assert_eq!(offered(&obj), ["redeploy"]);
    assert_eq!(act("cancel", &obj)["spec"], json!({"cancel": true}));
    assert_eq!(act("resume", &obj)["spec"], json!({"cancel": false}));
    assert_eq!(
        act("redeploy", &obj)["spec"],
        json!({"redeploy": "argocd-1"})
    );
}

// ----- argocd-cm and the chart -----

/// The value of `resource.customizations.actions.<group>_<kind>`, as Argo CD parses it
/// (`ResourceActions` of its settings: `discovery.lua` and `definitions`).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ArgoActions {
    #[serde(rename = "discovery.lua")]
    discovery: String,
    definitions: Vec<ArgoActionDefinition>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ArgoActionDefinition {
    name: String,
    #[serde(rename = "action.lua")]
    action: String,
}

/// Argo CD's key for the actions of group `git.dev`, kind `Deployment`.
const ACTIONS_KEY: &str = "resource.customizations.actions.git.dev_Deployment";
const HEALTH_KEY: &str = "resource.customizations.health.git.dev_Deployment";

/// The actions under [`ACTIONS_KEY`] of the ConfigMap data `data`.
#[track_caller]
fn actions_of(data: &Value) -> ArgoActions {
    let value = data[ACTIONS_KEY]
        .as_str()
        .unwrap_or_else(|| panic!("no string under {ACTIONS_KEY} in {data}"));
    serde_saphyr::from_str(value)
        .unwrap_or_else(|e| panic!("{ACTIONS_KEY} is not Argo CD's actions shape: {e}\n{value}"))
}

/// The actions of an argocd-cm ConfigMap manifest.
#[track_caller]
fn argocd_cm_actions(manifest: &str) -> ArgoActions {
    let cm: Value = serde_saphyr::from_str(manifest).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (cm["kind"].as_str(), cm["metadata"]["name"].as_str()),
        (Some("ConfigMap"), Some("argocd-cm"))
    );
    actions_of(&cm["data"])
}

/// The actions exactly as examples/argocd/actions/ holds them.
fn expected_actions() -> ArgoActions {
    ArgoActions {
        discovery: script("discovery"),
        definitions: ACTIONS
            .iter()
            .map(|name| ArgoActionDefinition {
                name: name.to_string(),
                action: script(name),
            })
            .collect(),
    }
}

#[test]
fn the_argocd_cm_example_holds_the_action_scripts_verbatim_under_the_documented_key() {
    let actions = argocd_cm_actions(&read("examples/argocd/argocd-cm.yaml"));
    assert_eq!(
        actions,
        expected_actions(),
        "examples/argocd/argocd-cm.yaml must embed examples/argocd/actions/*.lua as they are"
    );
}

#[test]
fn the_charts_copies_of_the_action_scripts_are_byte_identical_to_the_examples() {
    let names = |dir: &str| {
        let mut names: Vec<String> = std::fs::read_dir(repo_path(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let examples = names("examples/argocd/actions");
    assert_eq!(
        examples,
        ["cancel.lua", "discovery.lua", "redeploy.lua", "resume.lua"]
    );
    assert_eq!(
        names("charts/gitdev-operator/files/argocd-actions"),
        examples
    );
    for name in &examples {
        assert!(
            read(&format!(
                "charts/gitdev-operator/files/argocd-actions/{name}"
            )) == read(&format!("examples/argocd/actions/{name}")),
            "charts/gitdev-operator/files/argocd-actions/{name} differs from examples/argocd/actions/{name}: cp examples/argocd/actions/*.lua charts/gitdev-operator/files/argocd-actions/"
        );
    }
}

#[test]
fn the_charts_argocd_configmap_holds_the_actions_next_to_the_health_check_unless_turned_off() {
    let rendered = helm::template(
        "gitdev",
        "gitdev-system",
        "argocd:\n  healthCheck:\n    enabled: true\n",
    );
    let cm = rendered.one("ConfigMap");
    assert_eq!(
        cm["metadata"]["name"],
        "gitdev-gitdev-operator-argocd-health"
    );
    assert!(cm["data"][HEALTH_KEY].is_string(), "{cm}");
    assert_eq!(actions_of(&cm["data"]), expected_actions());

    let rendered = helm::template(
        "gitdev",
        "gitdev-system",
        "argocd:\n  healthCheck:\n    enabled: true\n  actions:\n    enabled: false\n",
    );
    let data = rendered.one("ConfigMap")["data"].as_object().unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(keys, [HEALTH_KEY]);

    // The actions ride on the health check's ConfigMap: without it there is nothing to render.
    let rendered = helm::template(
        "gitdev",
        "gitdev-system",
        "argocd:\n  actions:\n    enabled: true\n",
    );
    assert!(rendered.all("ConfigMap").is_empty());
}

// ----- the documentation -----

/// The table of docs/gitops.md, from [`STATES`].
fn actions_table() -> String {
    let mut table = String::from(
        "| state | what the object shows | redeploy | cancel | resume |\n|---|---|---|---|---|\n",
    );
    for s in STATES {
        let cell = |a: &str| {
            if s.enabled.contains(&a) {
                "offered"
            } else {
                "disabled"
            }
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.name,
            s.shows,
            cell("redeploy"),
            cell("cancel"),
            cell("resume")
        ));
    }
    table
}

#[test]
fn docs_gitops_md_shows_the_actions_these_tests_assert() {
    let doc = read("docs/gitops.md");
    let table = actions_table();
    assert!(
        doc.contains(&table),
        "docs/gitops.md must contain this table, generated from STATES in tests/argocd_actions.rs:\n\n{table}"
    );
}
