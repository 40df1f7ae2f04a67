//! Deletion: the finalizer, `deletionPolicy`, and cleanup of remote deployments.

use super::support::*;

#[tokio::test]
async fn deletion_with_policy_delete_cancels_and_deletes_every_deployment_then_releases_the_finalizer()
 {
    let s = spec(json!({}));
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(fingerprint(&s)),
        // Already deleted remotely: its 404s count as done.
        history: vec!["dep_0".into()],
        ..State::default()
    };
    let mut h = Harness::new(deleting(with_state(object(s), &state)));
    h.api().add("main", None, Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Normal", "Deleted", &["dep_1"]),
            Expect::remove_finalizer(),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.api().take_calls(),
        [
            "get dep_1",
            "cancel dep_1",
            "delete dep_1",
            "cancel dep_0",
            "delete dep_0"
        ]
    );
    assert!(h.api().ids().is_empty());
    assert_eq!(h.object().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn deletion_with_policy_delete_does_not_cancel_a_finished_deployment() {
    let mut h = Harness::new(deleting(tracking(spec(json!({})), "dep_1")));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event("Normal", "Deleted"),
        Expect::remove_finalizer(),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_1", "delete dep_1"]);
    assert!(h.api().ids().is_empty());
}

#[tokio::test]
async fn deletion_with_policy_orphan_touches_nothing_remote_and_releases_the_finalizer() {
    let o = tracking(spec(json!({"deletionPolicy": "Orphan"})), "dep_1");
    assert_eq!(o.spec.deletion_policy, DeletionPolicy::Orphan);
    let mut h = Harness::new(deleting(o));
    h.api().add("main", None, Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::event_noting("Normal", "Orphaned", &["dep_1"]),
            Expect::remove_finalizer(),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert!(
        h.api().take_calls().is_empty(),
        "Orphan makes no API call, and reads no Secret"
    );
    assert_eq!(
        h.api().deployment("dep_1").unwrap().status,
        Remote::Building
    );
    assert_eq!(h.object().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn deleting_an_object_whose_create_answer_was_lost_still_deletes_that_deployment() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(Endpoint::Create, Script::LoseAnswer);
    h.reconcile_freely().await.unwrap();
    assert_eq!(h.api().ids(), ["dep_1"]);
    assert!(h.state().intent.is_some());

    h.edit(|o| o.metadata.deletion_timestamp = Some(Time(wire_now())));
    for _ in 0..3 {
        if h.object()
            .metadata
            .finalizers
            .iter()
            .flatten()
            .next()
            .is_none()
        {
            break;
        }
        h.reconcile_freely().await.unwrap();
    }

    assert_eq!(h.object().metadata.finalizers, Some(vec![]));
    assert!(
        h.api().ids().is_empty(),
        "deletionPolicy Delete left remote deployment(s) {:?} behind",
        h.api().ids()
    );
}

#[tokio::test]
async fn a_token_secret_deleted_before_its_object_still_lets_the_cleanup_delete() {
    // A namespace's teardown (or a GitOps prune) deletes the Secret first, then the object.
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Success);
    h.reconcile_freely().await.unwrap();
    h.server.cluster.secrets.remove(CREDENTIALS);
    h.edit(|o| o.metadata.deletion_timestamp = Some(Time(wire_now())));
    h.api().take_calls();

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event_noting("Normal", "Deleted", &["dep_1"]),
        Expect::remove_finalizer(),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1", "delete dep_1"]);
    assert_eq!(h.api().tokens().last().map(String::as_str), Some(TOKEN));
    assert!(h.api().ids().is_empty());
}
