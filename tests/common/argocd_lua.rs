//! Argo CD's Lua customizations (health checks, resource actions) run the way Argo CD runs them,
//! by a real Lua 5.1 (mlua; Argo CD's gopher-lua implements 5.1).

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaOptions, LuaSerdeExt, StdLib};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Runs `script` (named `name` in errors) on `obj` as Argo CD does: the object as the global
/// `obj` (JSON null as nil, as Argo CD's conversion does), only the base, table, string and math
/// libraries (so a script that needs `os` or `io` fails here), and the chunk's return value,
/// deserialized into `T`, as the result. Panics with the script's error.
#[track_caller]
pub fn run<T: DeserializeOwned>(name: &str, script: &str, obj: &Value) -> T {
    let lua = Lua::new_with(
        StdLib::TABLE | StdLib::STRING | StdLib::MATH,
        LuaOptions::new(),
    )
    .expect("a Lua 5.1 state");
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).expect("obj as a Lua table");
    lua.globals().set("obj", value).unwrap();
    let result: mlua::Value = lua
        .load(script)
        .set_name(name)
        .eval()
        .unwrap_or_else(|e| panic!("{name} failed on {obj}: {e}"));
    lua.from_value(result)
        .unwrap_or_else(|e| panic!("{name} returned an unexpected value on {obj}: {e}"))
}

/// The actions, in the order of the definitions in argocd-cm.
pub const ACTIONS: [&str; 3] = ["redeploy", "cancel", "resume"];

/// A state of a gitdeployment and the actions Argo CD must offer in it.
pub struct State {
    /// The name of the state; tests/gitops_health.rs captures real objects under these names.
    pub name: &'static str,
    /// What the object shows in that state.
    pub shows: &'static str,
    /// The actions offered (not disabled), in [`ACTIONS`] order; the others are disabled.
    pub enabled: &'static [&'static str],
}

/// The contract of examples/argocd/actions/discovery.lua: tests/argocd_actions.rs checks it on
/// objects written in the operator's shape, tests/gitops_health.rs on real captured objects.
pub const STATES: &[State] = &[
    State {
        name: "generation-not-observed",
        shows: "a new object: `status: {observedGeneration: 0}`",
        // Cancel holds the first deployment off; the operator may create it any moment.
        enabled: &["redeploy", "cancel"],
    },
    State {
        name: "new-generation-not-observed",
        shows: "a spec change (e.g. a redeploy) the operator has not observed yet",
        enabled: &["redeploy", "cancel"],
    },
    State {
        name: "queued",
        shows: "Reconciling=True, reason `Queued`",
        enabled: &["redeploy", "cancel"],
    },
    State {
        name: "building",
        shows: "Reconciling=True, reason `Building`",
        enabled: &["redeploy", "cancel"],
    },
    State {
        name: "success",
        shows: "Ready=True, reason `Succeeded`",
        // Cancel would change nothing about a live deployment, only hold the next one off.
        enabled: &["redeploy"],
    },
    State {
        name: "failed",
        shows: "Stalled=True, reason `DeploymentFailed`",
        enabled: &["redeploy"],
    },
    State {
        name: "invalid-credentials",
        shows: "Stalled=True, reason `CredentialsNotFound`, no deployment yet",
        enabled: &["redeploy"],
    },
    State {
        name: "cancel-requested",
        shows: "`spec.cancel: true`, not observed yet, the build still running",
        // Redeploy would be held off as well: resume first.
        enabled: &["resume"],
    },
    State {
        name: "cancelled",
        shows: "Ready=True, reason `Cancelled` (`spec.cancel: true`)",
        enabled: &["resume"],
    },
    State {
        name: "held-off",
        shows: "a new object created with `spec.cancel: true`: Ready=True, reason `Cancelled`, no deployment",
        enabled: &["resume"],
    },
    State {
        name: "deleting",
        shows: "`metadata.deletionTimestamp` set, the operator cleaning up",
        enabled: &[],
    },
];

/// The state of [`STATES`] named `name`.
pub fn action_state(name: &str) -> Option<&'static State> {
    STATES.iter().find(|s| s.name == name)
}

/// An action script of examples/argocd/actions/.
pub fn action_script(name: &str) -> String {
    let path = super::cluster::repo_path(&format!("examples/argocd/actions/{name}.lua"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What discovery.lua says about one action.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Discovered {
    disabled: bool,
}

/// The actions discovery.lua offers on `obj` (not disabled), in [`ACTIONS`] order; panics
/// unless it lists exactly the three actions.
#[track_caller]
pub fn offered(obj: &Value) -> Vec<&'static str> {
    let discovered: std::collections::BTreeMap<String, Discovered> =
        run("discovery.lua", &action_script("discovery"), obj);
    let listed: Vec<&str> = discovered.keys().map(String::as_str).collect();
    let mut all = ACTIONS;
    all.sort();
    assert_eq!(listed, all, "discovery.lua must list every action: {obj}");
    ACTIONS
        .into_iter()
        .filter(|a| !discovered[*a].disabled)
        .collect()
}
