//! Claims: what a tenant can write (`git.dev/state`, the adoption annotation) never reaches a
//! deployment another object manages.

use super::support::*;

/// Another object, in another namespace, whose operator-signed state tracks `dep_1`.
fn holder() -> GitDeployment {
    let mut o = object(spec(json!({})));
    o.metadata.namespace = Some("team-a".into());
    o.metadata.name = Some("a".into());
    o.metadata.uid = Some("4b1f2c9e-0000-4000-8000-00000000000a".into());
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(fingerprint(&o.spec)),
        ..State::default()
    };
    with_state(o, &state)
}

fn forged(state: State) -> GitDeployment {
    with_unsigned_state(object(spec(json!({}))), &state)
}

fn harness(me: GitDeployment) -> Harness {
    let mut h = Harness::beside(me, vec![holder()]);
    h.add_secret(CREDENTIALS, &[("token", TOKEN)]);
    h.api().add("main", None, Remote::Building);
    h
}

fn already_managed() -> Vec<Expect> {
    vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event_noting("Warning", "AlreadyManaged", &["dep_1", "team-a/a"]),
        Expect::status(|s| assert_health(s, "Stalled", "AlreadyManaged")),
    ]
}

#[tokio::test]
async fn a_forged_state_naming_another_objects_deployment_stalls_and_touches_nothing() {
    let me = forged(State {
        id: Some("dep_1".into()),
        fingerprint: Some("forged".into()),
        ..State::default()
    });
    let mut h = harness(me);
    let action = h.reconcile(already_managed()).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(h.api().take_calls().is_empty(), "no call at all");
}

#[tokio::test]
async fn forged_history_with_history_limit_zero_deletes_nothing_it_does_not_hold() {
    let mut me = forged(State {
        history: vec!["dep_1".into()],
        ..State::default()
    });
    me.spec.history_limit = Some(0);
    let mut h = harness(me);
    h.reconcile(already_managed()).await.unwrap();
    assert!(h.api().take_calls().is_empty());
    assert!(h.api().deployment("dep_1").is_some());
}

#[tokio::test]
async fn the_adoption_annotation_cannot_take_a_deployment_another_object_manages() {
    let mut me = object(spec(json!({})));
    me.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_DEPLOYMENT_ID.into(), "dep_1".into());
    let mut h = harness(me);
    h.reconcile(already_managed()).await.unwrap();
    assert!(h.api().take_calls().is_empty());
}

#[tokio::test]
async fn deleting_an_object_with_a_forged_state_leaves_the_other_objects_deployment_alone() {
    let me = deleting(forged(State {
        id: Some("dep_1".into()),
        ..State::default()
    }));
    let mut h = harness(me);
    h.reconcile(vec![
        Expect::event_noting("Warning", "AlreadyManaged", &["dep_1", "team-a/a"]),
        Expect::remove_finalizer(),
    ])
    .await
    .unwrap();
    assert!(
        h.api().take_calls().is_empty(),
        "neither cancelled nor deleted"
    );
    assert!(h.api().deployment("dep_1").is_some());
}

#[tokio::test]
async fn an_unsigned_state_that_names_only_its_own_deployment_is_verified_and_signed() {
    // As written by a version of the operator before states were signed.
    let s = spec(json!({}));
    let state = State {
        id: Some("dep_2".into()),
        fingerprint: Some(fingerprint(&s)),
        ..State::default()
    };
    let mut h = Harness::beside(with_unsigned_state(object(s), &state), vec![holder()]);
    h.add_secret(CREDENTIALS, &[("token", TOKEN)]);
    h.api().add("main", None, Remote::Building);
    h.api().add("main", None, Remote::Success);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|st| assert_eq!(st.id.as_deref(), Some("dep_2"))),
        Expect::event("Normal", "DeploymentSucceeded"),
        Expect::status(|st| assert_health(st, "Ready", "Succeeded")),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_2"]);
    let annotation = &h.object().metadata.annotations.unwrap()[ANNOTATION_STATE];
    assert!(annotation.contains("\"sig\""), "{annotation}");
}

#[tokio::test]
async fn two_unsigned_claims_of_one_deployment_hold_each_other_off() {
    // Neither state is the operator's (a restore into another cluster, or two forgeries):
    // neither object may cancel, delete or prune it until a person removes one claim.
    let state = State {
        history: vec!["dep_1".into()],
        ..State::default()
    };
    let mut other = with_unsigned_state(object(spec(json!({}))), &state);
    other.metadata.namespace = Some("team-b".into());
    other.metadata.name = Some("b".into());
    other.metadata.uid = Some("4b1f2c9e-0000-4000-8000-00000000000b".into());
    let mut me = with_unsigned_state(object(spec(json!({}))), &state);
    me.spec.history_limit = Some(0);
    let mut h = Harness::beside(me, vec![other]);
    h.add_secret(CREDENTIALS, &[("token", TOKEN)]);
    h.api().add("main", None, Remote::Success);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event_noting("Warning", "AlreadyManaged", &["team-b/b", "names it too"]),
        Expect::status(|s| assert_health(s, "Stalled", "AlreadyManaged")),
    ])
    .await
    .unwrap();
    assert!(h.api().take_calls().is_empty());
}
