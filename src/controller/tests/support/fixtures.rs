//! Objects, specs and assertions the scenarios share.

use super::*;

pub fn spec(extra: Value) -> GitDeploymentSpec {
    let mut base = json!({"projectId": PROJECT, "branch": "main"});
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

/// An object that already carries the finalizer (the usual state after its first reconcile).
pub fn object(spec: GitDeploymentSpec) -> GitDeployment {
    let mut o = GitDeployment::new(NAME, spec);
    o.metadata.namespace = Some(NS.into());
    o.metadata.uid = Some("4b1f2c9e-0000-4000-8000-000000000001".into());
    o.metadata.resource_version = Some("100".into());
    o.metadata.generation = Some(1);
    o.metadata.finalizers = Some(vec![FINALIZER.into()]);
    o
}

/// `git.dev/state` as the operator writes it: signed for this object with the test key.
pub fn with_state(mut o: GitDeployment, state: &State) -> GitDeployment {
    let annotation = state.to_annotation(&o, &Key::new(FINGERPRINT_KEY));
    o.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_STATE.into(), annotation);
    o
}

/// As if someone other than the operator wrote `git.dev/state` (a tenant, or a version of the
/// operator before states were signed).
pub fn with_unsigned_state(mut o: GitDeployment, state: &State) -> GitDeployment {
    o.metadata.annotations.get_or_insert_default().insert(
        ANNOTATION_STATE.into(),
        serde_json::to_string(state).unwrap(),
    );
    o
}

/// An object tracking `id`, made for its current spec.
pub fn tracking(spec: GitDeploymentSpec, id: &str) -> GitDeployment {
    let state = State {
        id: Some(id.into()),
        fingerprint: Some(fingerprint(&spec)),
        ..State::default()
    };
    with_state(object(spec), &state)
}

pub fn deleting(mut o: GitDeployment) -> GitDeployment {
    o.metadata.deletion_timestamp = Some(Time(wire_now()));
    o
}

/// The fingerprint the reconciler computes for a spec without `envFrom`.
pub fn fingerprint(spec: &GitDeploymentSpec) -> String {
    DesiredDeployment::resolve(spec, |_| None)
        .unwrap()
        .fingerprint(&Key::new(FINGERPRINT_KEY))
}

/// (status, reason) of a condition.
pub fn cond(s: &GitDeploymentStatus, type_: &str) -> (String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.conditions));
    (c.status.clone(), c.reason.clone())
}

pub fn pair(status: &str, reason: &str) -> (String, String) {
    (status.into(), reason.into())
}

/// Asserts the kstatus triple: which condition is True, and the reason all three carry.
pub fn assert_health(s: &GitDeploymentStatus, true_type: &str, reason: &str) {
    for t in ["Ready", "Reconciling", "Stalled"] {
        let want = if t == true_type { "True" } else { "False" };
        assert_eq!(
            cond(s, t),
            pair(want, reason),
            "condition {t} of {:?}",
            s.conditions
        );
    }
}

/// When an `Action` requeues (`None`: only on a change). The reconciler's delays are whole
/// milliseconds (jitter included), so the delay is found exactly.
pub fn requeue_after(action: &Action) -> Option<Duration> {
    if *action == Action::await_change() {
        return None;
    }
    let found = (0..=700_000u64)
        .map(Duration::from_millis)
        .find(|d| Action::requeue(*d) == *action);
    Some(found.unwrap_or_else(|| panic!("{action:?} is not a whole number of milliseconds")))
}

pub fn assert_requeue_between(action: &Action, low: Duration, high: Duration) {
    let after = requeue_after(action).unwrap_or_else(|| panic!("{action:?} does not requeue"));
    assert!(
        low <= after && after <= high,
        "requeue after {after:?}, expected within {low:?}..={high:?}"
    );
}

pub fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// An object tracking `id`, made for its spec, Ready from a listing that saw its deployment
/// succeed: the completion time only a GET gives is still to be read.
pub fn ready_from_a_listing(id: &str) -> GitDeployment {
    use crate::controller::decision::{Health, Observed};
    let spec = spec(json!({}));
    let state = State {
        id: Some(id.into()),
        fingerprint: Some(fingerprint(&spec)),
        ..State::default()
    };
    let mut o = tracking(spec, id);
    let listed = DeploymentDetails {
        id: id.into(),
        status: Remote::Success,
        project_id: PROJECT.into(),
        branch: "main".into(),
        commit_sha: HEAD.into(),
        build_duration: None,
        deploy_url: format!("https://{id}.git.dev"),
        logs_url: String::new(),
        created_at: wire_now(),
        completed_at: None,
        cancelled_by: None,
        cancelled_at: None,
    };
    o.status = Some(crate::controller::status::build_status(
        &o,
        &state,
        &Observed::Found(Box::new(listed)),
        &Health::ready("Succeeded", "deployed"),
        None,
        wire_now(),
    ));
    o
}
