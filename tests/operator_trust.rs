//! Trust nothing a tenant can write (issue 10), end to end: real kube-apiserver, real
//! `gitdev-sim`, real `gitdev-operator`. Forged `git.dev/state` values, one tenant's object
//! naming another's deployment, a restore, a change of the operator's key, a namespace's
//! teardown and an unknown create outcome: none of them may crash the operator, take a
//! deployment another object holds, or make a deployment twice.
//!
//! The tests between namespaces run one operator over every namespace (`cluster_wide`, on a
//! control plane of their own); the others run an operator per namespace, as elsewhere.

mod common;

use std::time::{Duration, Instant};

use common::cluster::process_is_running;
use common::cluster_wide::ClusterWide;
use common::stack::{CLEANUP_GRACE, Operator, Sim, eventually, http};
use common::world::{WAIT, World, annotated, gitdeployment};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::{Value, json};

/// The operator's own annotation, which a tenant can write too.
const STATE: &str = "git.dev/state";
/// The adoption annotation.
const DEPLOYMENT_ID: &str = "git.dev/deployment-id";
/// The write token of project `proj_8f3k29`, which every namespace's Secret holds.
const TOKEN: &str = "sk_test_write";

/// A world whose deployments finish at once, and whose operators, which each test starts
/// itself, find the write token.
fn world(prefix: &str) -> World {
    let w = World::new(prefix, 0.0);
    w.token_secret(TOKEN);
    w
}

/// A gitdeployment on `main` whose deployments carry `OBJECT=<name>`, so that the simulator's
/// deployments of several objects can be told apart; `extra` as for [`gitdeployment`].
fn object(name: &str, extra: &str) -> String {
    gitdeployment(
        name,
        "main",
        &format!("  envVars:\n    OBJECT: {name}\n{extra}"),
    )
}

/// The id a key is known by in fingerprints and signatures: the first four bytes of its
/// SHA-256, in hex (docs: `v2.<key id>.<visible>.<keyed>`), computed here independently.
fn key_id(key: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, key).as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A deployment made straight through the API, as a user or another tool would: its id.
fn create_directly(sim: &Sim, token: &str, project: &str) -> String {
    let created: Value = http()
        .post(format!("{}/deployments", sim.api_url()))
        .bearer_auth(token)
        .json(&json!({"project_id": project, "branch": "main"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    created["id"].as_str().expect("an id").to_string()
}

impl World {
    /// `status.deploymentId` once the object is Ready for its current generation.
    fn ready_id(&self, name: &str) -> Option<String> {
        let obj = self.get(name);
        let ready = obj["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True" && c["reason"] == "Succeeded");
        (ready && obj["status"]["observedGeneration"] == obj["metadata"]["generation"])
            .then(|| obj["status"]["deploymentId"].as_str().map(str::to_string))
            .flatten()
    }

    #[track_caller]
    fn wait_ready(&self, name: &str) -> String {
        eventually(WAIT, &format!("{name} to be Ready"), || self.ready_id(name))
    }

    /// The simulator's deployments made for object `name` (see [`object`]).
    fn deployments_for(&self, name: &str) -> Vec<Value> {
        self.sim
            .deployments()
            .into_iter()
            .filter(|d| d["env_vars"]["OBJECT"] == name)
            .collect()
    }

    fn faults(&self, rules: Value) {
        let body = json!({ "rules": rules });
        assert_eq!(self.sim.hook("PUT", "/_sim/faults", Some(body)), 200);
    }

    /// The operator's state annotation of `name`, parsed (`Null` when absent or not JSON).
    fn state(&self, name: &str) -> Value {
        let obj = self.get(name);
        obj["metadata"]["annotations"][STATE]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    }

    /// `kubectl delete` without waiting, after checking that the operator's finalizer is on
    /// the object (so that its cleanup is what the deletion waits for).
    #[track_caller]
    fn delete_through_the_finalizer(&self, name: &str) {
        let finalizers = self.get(name)["metadata"]["finalizers"].clone();
        assert!(
            finalizers
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "git.dev/cleanup")),
            "{name} has no cleanup finalizer: {finalizers}"
        );
        self.kubectl(&["delete", "gitdeployment", name, "--wait=false"])
            .expect_success();
    }

    #[track_caller]
    fn wait_gone(&self, name: &str, within: Duration) {
        eventually(within, &format!("{name} to be gone"), || {
            self.lookup(name).stdout.trim().is_empty().then_some(())
        });
    }
}

/// The operator is still the process it was started as, and it serves its health check.
#[track_caller]
fn assert_alive(op: &Operator) {
    assert!(
        process_is_running(op.proc.pid()),
        "the operator exited:\n{}",
        op.proc.log_tail(60)
    );
    assert_eq!(op.get("/healthz"), (200, "ok".to_string()));
}

/// Every panic the operator met was contained to its object: the panic hook's line
/// ("panicked at") appears only as often as the containment's report.
#[track_caller]
fn assert_no_panic_escaped(op: &Operator) {
    let log = op.proc.log_text();
    let panics = log.matches("panicked at").count();
    let contained = log.matches("contained to this object").count();
    assert_eq!(panics, contained, "a panic was not contained:\n{log}");
}

#[test]
fn forged_state_annotations_do_not_take_down_the_operator_of_every_other_namespace() {
    let cw = ClusterWide::new(&["trust-forged", "trust-ordinary"], 0.0);
    let (forged, ordinary) = (&cw.worlds[0], &cw.worlds[1]);
    // Not states the operator can use: each is ignored whole, and its object deployed as new.
    let unusable = [
        // The earliest time there is: the lost-create search once panicked on it.
        (
            "intent-at-the-dawn-of-time",
            json!({"intent": {"fingerprint": "f", "at": "-009999-01-02T01:59:59Z"}}).to_string(),
        ),
        // A time that never comes would hold the object off forever.
        (
            "intent-in-year-9999",
            json!({"intent": {"fingerprint": "f", "at": "9999-12-30T00:00:00Z"}}).to_string(),
        ),
        ("wrong-types", r#"{"id": 7}"#.to_string()),
        ("not-json", r#"{"id": "dep_"#.to_string()),
        (
            "twenty-kib",
            json!({"id": format!("dep_{}", "x".repeat(20 * 1024))}).to_string(),
        ),
    ];
    // A deployment of another project, which the object's token cannot even see.
    let foreign = create_directly(&forged.sim, "sk_test_other", "proj_other");
    let foreign_state = json!({"id": foreign}).to_string();
    let all = unusable
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .chain([("foreign-id", foreign_state.as_str())]);
    // All there before the operator starts: a value that crashed it would crash every start.
    for (name, value) in all {
        forged
            .apply(&annotated(&object(name, ""), &[(STATE, value)]))
            .expect_success();
    }
    let op = cw.spawn_operator(&[]);

    for (name, _) in &unusable {
        forged.wait_ready(name);
        assert_eq!(forged.deployments_for(name).len(), 1, "{name}");
        let state = forged.state(name);
        assert!(state["sig"].is_string(), "{name}: not re-signed: {state}");
    }
    // Reported as gone (to this token it is), and never touched.
    let message = forged.wait_for("foreign-id", "Stalled", "RemoteDeleted");
    assert!(message.contains(&foreign), "{message}");
    let (code, remote) = forged.sim.get("sk_test_other", &foreign);
    assert_eq!(code, 200, "{remote}");
    assert_eq!(remote["status"], "success", "{remote}");

    ordinary.apply(&object("ordinary", "")).expect_success();
    ordinary.wait_ready("ordinary");
    assert_alive(&op);
    assert_no_panic_escaped(&op);
}

/// Object `a` Ready with deployment X in the first namespace of a cluster-wide world: the
/// world, its operator, X, and the holder's name as messages give it (`namespace/a`).
fn holding(prefixes: &[&str]) -> (ClusterWide, Operator, String, String) {
    let cw = ClusterWide::new(prefixes, 0.0);
    let op = cw.spawn_operator(&[]);
    let holder = &cw.worlds[0];
    holder.apply(&object("a", "")).expect_success();
    let x = holder.wait_ready("a");
    let held_by = format!("{}/a", holder.ns);
    (cw, op, x, held_by)
}

/// A new operator in place of `op`, which knows of X only what the objects say: the
/// signatures on their state.
fn restart(cw: &ClusterWide, mut op: Operator) -> Operator {
    op.proc.terminate(Duration::from_secs(15));
    drop(op);
    cw.spawn_operator(&[])
}

impl World {
    /// `name`, which names X, is refused it: Stalled AlreadyManaged, naming X and its holder.
    #[track_caller]
    fn assert_refused(&self, name: &str, x: &str, held_by: &str) {
        let message = self.wait_for(name, "Stalled", "AlreadyManaged");
        assert!(
            message.contains(x) && message.contains(&format!("managed by {held_by}")),
            "{name}: {message}"
        );
    }

    /// Deleting `name`, which names X, runs its cleanup, which leaves X alone.
    #[track_caller]
    fn assert_deleted_leaving(&self, name: &str, x: &str) {
        self.delete_through_the_finalizer(name);
        self.wait_gone(name, WAIT);
        let (code, remote) = self.sim.get(TOKEN, x);
        assert_eq!(code, 200, "X was deleted with {name}: {remote}");
        assert_eq!(remote["status"], "success", "{remote}");
    }

    /// `adopter`, annotated to adopt X, and refused it.
    #[track_caller]
    fn claim_by_adoption(&self, x: &str, held_by: &str) {
        self.apply(&annotated(&object("adopter", ""), &[(DEPLOYMENT_ID, x)]))
            .expect_success();
        self.assert_refused("adopter", x, held_by);
    }
}

#[test]
fn a_deployment_another_object_tracks_cannot_be_taken_by_adoption_or_forged_history() {
    let (cw, op, x, held_by) = holding(&["trust-holder", "trust-claimant"]);
    let [holder, claimant] = &cw.worlds[..] else {
        unreachable!("two namespaces")
    };

    // By the adoption annotation, while the operator still remembers that `a` made X.
    claimant.claim_by_adoption(&x, &held_by);
    claimant.assert_deleted_leaving("adopter", &x);

    // By a forged history with no room for it (pruning it would delete X), after a restart:
    // now only `a`'s signed state tells who holds X.
    let op = restart(&cw, op);
    let history = json!({ "history": [x] }).to_string();
    claimant
        .apply(&annotated(
            &object("forger", "  historyLimit: 0\n"),
            &[(STATE, &history)],
        ))
        .expect_success();
    claimant.assert_refused("forger", &x, &held_by);
    claimant.assert_deleted_leaving("forger", &x);

    assert_eq!(holder.ready_id("a"), Some(x), "a is no longer Ready with X");
    let all = holder.sim.deployments();
    assert_eq!(all.len(), 1, "a claimant made a deployment: {all:?}");
    assert_alive(&op);
}

#[test]
fn deleting_a_claimant_says_that_it_left_the_holders_deployment_in_place() {
    let (cw, _op, x, held_by) = holding(&["trust-holder", "trust-claimant"]);
    let claimant = &cw.worlds[1];
    claimant.claim_by_adoption(&x, &held_by);
    claimant.assert_deleted_leaving("adopter", &x);
    let events = claimant.events("adopter");
    assert!(
        events.contains(&format!("left deployment {x} in place")),
        "{events}"
    );
}

#[test]
fn every_claimant_of_a_held_deployment_is_told_its_holder_not_another_claimant() {
    let (cw, op, x, held_by) = holding(&["trust-holder", "trust-claimants"]);
    let claimants = &cw.worlds[1];
    // After a restart, so that only the signatures tell the holder from the claimants.
    let _op = restart(&cw, op);
    let names: Vec<String> = (1..=6).map(|i| format!("claimant-{i}")).collect();
    for name in &names {
        claimants
            .apply(&annotated(&object(name, ""), &[(DEPLOYMENT_ID, &x)]))
            .expect_success();
    }
    for name in &names {
        claimants.assert_refused(name, &x, &held_by);
    }
}

#[test]
fn after_a_key_change_an_older_object_with_forged_history_cannot_delete_a_held_deployment() {
    let cw = ClusterWide::new(&["trust-older", "trust-holder"], 0.0);
    let [older, holder] = &cw.worlds[..] else {
        unreachable!("two namespaces")
    };
    let mut op = cw.spawn_operator(&[]);
    // The claimant exists first: between two unsigned states, the older object counts.
    older
        .apply(&object("forger", "  historyLimit: 0\n"))
        .expect_success();
    older.wait_ready("forger");
    std::thread::sleep(Duration::from_millis(1100));
    holder.apply(&object("a", "")).expect_success();
    let x = holder.wait_ready("a");

    // The key changes while `a` cannot be reconciled (its tenant is replacing the token
    // Secret), so that `a`'s state stays signed under the old key; meanwhile the claimant's
    // tenant writes X into its history, with no room for it.
    op.proc.terminate(Duration::from_secs(15));
    drop(op);
    holder
        .kubectl(&["delete", "secret", "gitdev-credentials"])
        .expect_success();
    let history = json!({ "history": [x] }).to_string();
    older
        .kubectl(&[
            "annotate",
            "--overwrite",
            "gitdeployment",
            "forger",
            &format!("{STATE}={history}"),
        ])
        .expect_success();
    let op = cw.spawn_operator(&["--fingerprint-key", "a-new-key"]);
    holder.wait_for("a", "Stalled", "CredentialsNotFound");
    let new_key = key_id(b"a-new-key");
    let outcome = eventually(WAIT, "the claimant to be refused or re-signed", || {
        let refused = older
            .condition("forger", "Stalled")
            .is_some_and(|(s, r, _)| s == "True" && r == "AlreadyManaged");
        let signed = older.state("forger")["sig"]
            .as_str()
            .is_some_and(|sig| sig.starts_with(&format!("{new_key}:")));
        (refused || signed).then(|| older.get("forger")["status"].clone())
    });
    let (code, remote) = holder.sim.get(TOKEN, &x);
    assert_eq!(
        code, 200,
        "X was deleted by the claimant: {remote}; claimant: {outcome}"
    );
    assert_alive(&op);
}

#[test]
fn a_restored_object_with_a_new_uid_redeploys_nothing() {
    let w = world("trust-restore");
    let mut op = w.spawn_operator(&[]);
    w.apply(&object("web", "")).expect_success();
    let x = w.wait_ready("web");
    let captured = w.get("web");
    op.proc.terminate(Duration::from_secs(15));
    drop(op);

    // The object goes without a cleanup (a cluster lost, or deleted behind the operator's
    // back), then comes back from a backup, as Velero restores it: same name and annotations
    // (the operator's signed state among them), no status, a new UID.
    w.kubectl(&[
        "patch",
        "gitdeployment",
        "web",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ])
    .expect_success();
    w.kubectl(&["delete", "gitdeployment", "web"])
        .expect_success();
    let mut restored = captured.clone();
    restored.as_object_mut().unwrap().remove("status");
    let meta = restored["metadata"].as_object_mut().unwrap();
    for server_set in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        meta.remove(server_set);
    }
    w.cluster
        .kubectl_with_stdin(["-n", &w.ns, "create", "-f", "-"], &restored.to_string())
        .expect_success();
    let now = w.get("web");
    assert_ne!(now["metadata"]["uid"], captured["metadata"]["uid"]);
    assert!(now["status"]["conditions"].is_null(), "{}", now["status"]);

    let _op = w.spawn_operator(&[]);
    assert_eq!(w.wait_ready("web"), x);
    let remote = w.sim.deployments();
    assert_eq!(remote.len(), 1, "{remote:?}");
}

#[test]
fn setting_then_rotating_the_operators_key_redeploys_nothing() {
    let w = world("trust-keys");
    let names = ["k1", "k2", "k3", "k4", "k5"];
    let mut op = w.spawn_operator(&[]);
    for name in names {
        w.apply(&object(name, "")).expect_success();
    }
    let ids: Vec<String> = names.iter().map(|n| w.wait_ready(n)).collect();
    let key_of = |name: &str| {
        let fingerprint = w.get(name)["status"]["specFingerprint"].clone();
        let fingerprint = fingerprint.as_str().expect("a fingerprint").to_string();
        assert!(fingerprint.starts_with("v2."), "{fingerprint}");
        fingerprint
            .split('.')
            .nth(1)
            .unwrap_or_default()
            .to_string()
    };
    // Without the flag, the key is the one of the operator's key Secret.
    let secret_key = default_key_secret(&w);
    for name in names {
        assert_eq!(key_of(name), key_id(&secret_key), "{name}");
    }

    for key in ["key-one", "key-two"] {
        op.proc.terminate(Duration::from_secs(15));
        op = w.spawn_operator(&["--fingerprint-key", key]);
        let want = key_id(key.as_bytes());
        let signed = |n: &str| {
            w.state(n)["sig"]
                .as_str()
                .is_some_and(|sig| sig.starts_with(&format!("{want}:")))
        };
        eventually(
            WAIT,
            &format!("every object re-stamped under {key}"),
            || {
                let made = w.sim.deployments().len();
                assert!(made <= names.len(), "a key change redeployed: {made}");
                names
                    .iter()
                    .all(|n| w.ready_id(n).is_some() && key_of(n) == want && signed(n))
                    .then_some(())
            },
        );
    }
    let now: Vec<String> = names.iter().map(|n| w.wait_ready(n)).collect();
    assert_eq!(now, ids);
    assert_eq!(w.sim.deployments().len(), names.len());

    // A real change is still seen under the new key: one new deployment.
    w.kubectl(&[
        "patch",
        "gitdeployment",
        "k1",
        "--type=merge",
        "-p",
        r#"{"spec":{"redeploy":"2"}}"#,
    ])
    .expect_success();
    let new = eventually(WAIT, "k1 Ready with a new deployment", || {
        w.ready_id("k1").filter(|id| *id != ids[0])
    });
    assert_eq!(w.deployments_for("k1").len(), 2);
    assert_eq!(w.sim.deployments().len(), names.len() + 1);
    assert_eq!(w.get("k1")["status"]["deploymentId"], new.as_str());
    assert_alive(&op);
}

/// The bytes of the operator's key Secret (`default/gitdev-operator-key`, as the operators
/// here run without `POD_NAMESPACE`).
fn default_key_secret(w: &World) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let secret = rt.block_on(async {
        let secrets: Api<Secret> = Api::namespaced(w.cluster.client().await, "default");
        secrets.get("gitdev-operator-key").await
    });
    let secret = secret.expect("the operator made its key Secret");
    secret.data.unwrap_or_default()["key"].0.clone()
}

#[test]
fn an_object_deleted_just_after_its_token_secret_still_deletes_its_deployment() {
    let w = world("trust-teardown");
    let _op = w.spawn_operator(&[]);
    w.apply(&object("web", "")).expect_success();
    let x = w.wait_ready("web");

    // A namespace's teardown, or a GitOps prune: the Secret goes first, the object just after.
    w.kubectl(&["delete", "secret", "gitdev-credentials"])
        .expect_success();
    std::thread::sleep(Duration::from_secs(1));
    let deleted = Instant::now();
    w.delete_through_the_finalizer("web");
    w.wait_gone("web", Duration::from_secs(60));
    assert!(
        deleted.elapsed() < CLEANUP_GRACE,
        "the cleanup waited out the grace period: {:?}",
        deleted.elapsed()
    );
    let (code, remote) = w.sim.get(TOKEN, &x);
    assert_eq!(code, 404, "the deployment was left behind: {remote}");
    let events = w.events("web");
    assert!(
        events.contains("Deleted") && !events.contains("CleanupAbandoned"),
        "{events}"
    );
}

/// Object `web` applied in a new world whose simulator answers its first create with the
/// fault `fault` (a rate of docs/simulator.md, here 1), and the operator serving it.
fn first_create_meets(prefix: &str, fault: &str) -> (World, Operator) {
    let w = world(prefix);
    w.faults(json!([{"route": "create", fault: 1.0, "count": 1}]));
    let op = w.spawn_operator(&[]);
    w.apply(&object("web", "")).expect_success();
    (w, op)
}

#[test]
fn a_create_committed_then_answered_by_a_dropped_connection_is_adopted_not_repeated() {
    let (w, _op) = first_create_meets("trust-drop", "drop_rate");
    let id = w.wait_ready("web");
    let remote = w.sim.deployments();
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert_eq!(remote[0]["id"], id.as_str());
    let stats = w.sim.stats();
    assert_eq!(stats["dropped"], 1, "the fault never fired: {stats}");
}

#[test]
fn a_create_answered_500_without_committing_is_sent_again_only_after_the_settle_window() {
    let (w, _op) = first_create_meets("trust-settle", "error_rate");
    let creates = |status: &str| {
        w.sim.stats()["by_route"]["POST /v1/deployments"]["by_status"][status]
            .as_u64()
            .unwrap_or(0)
    };
    let failed = eventually(WAIT, "the create to be answered 500", || {
        (creates("500") == 1).then(Instant::now)
    });

    // Nothing was made, but the operator cannot know that: it says so and keeps looking.
    let mut unconfirmed = false;
    let created = eventually(WAIT, "the create to be sent again", || {
        unconfirmed |= w
            .condition("web", "Reconciling")
            .is_some_and(|(s, r, _)| s == "True" && r == "CreationUnconfirmed");
        (creates("201") > 0).then(Instant::now)
    });
    let waited = created - failed;
    println!("created again {:.1}s after the 500", waited.as_secs_f64());
    // The window is 60 s from the intent, recorded just before the 500; `failed` was seen up to
    // a poll later.
    assert!(
        waited >= Duration::from_secs(58),
        "created again after {waited:?}"
    );
    assert!(unconfirmed, "CreationUnconfirmed was never shown");
    let looks = w.sim.stats()["by_route"]["GET /v1/deployments"]["total"]
        .as_u64()
        .unwrap_or(0);
    assert!(looks >= 3, "looked for it {looks} times");

    w.wait_ready("web");
    let remote = w.sim.deployments();
    assert_eq!(remote.len(), 1, "{remote:?}");
}
