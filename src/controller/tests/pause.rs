//! `git.dev/paused: "true"`: no create, cancel or prune reaches the Deployments API while the
//! deployment goes on being observed; deletion is never held back; lifting the pause deploys.

use super::support::*;
use crate::resource::ANNOTATION_PAUSED;

fn paused(mut o: GitDeployment) -> GitDeployment {
    o.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_PAUSED.into(), "true".into());
    o
}

fn message(s: &GitDeploymentStatus, type_: &str) -> String {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.conditions))
}

/// Reconciling=True with reason Paused, and a message that says each of `words`.
fn assert_paused(s: &GitDeploymentStatus, words: &[&str]) {
    assert_health(s, "Reconciling", "Paused");
    let message = message(s, "Reconciling");
    for word in words {
        assert!(message.contains(word), "{word:?} not in {message}");
    }
}

#[tokio::test]
async fn a_paused_new_object_creates_nothing_and_says_paused() {
    let mut h = Harness::new(paused(object(spec(json!({})))));

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::status(|s| {
                assert_paused(
                    s,
                    &[
                        "a first deployment is due",
                        "remove git.dev/paused to deploy",
                    ],
                );
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert!(h.api().take_calls().is_empty());
    assert!(h.api().creates().is_empty());
    assert_eq!(
        h.state().intent,
        None,
        "no intent: nothing is about to be sent"
    );
}

#[tokio::test]
async fn a_paused_spec_change_while_building_neither_cancels_nor_creates_but_keeps_polling() {
    let mut h = Harness::new(paused(tracking(spec(json!({})), "dep_1")));
    h.api().add("main", None, Remote::Building);
    h.edit(|o| o.spec.branch = "release".into());

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::status(|s| {
                assert_paused(s, &["it supersedes dep_1"]);
                assert_eq!(s.status.as_deref(), Some("building"), "still observed");
            }),
        ])
        .await
        .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    // As often as an unpaused building deployment is looked at.
    assert_requeue_between(&action, secs(1.0), secs(1.1));

    // Lifting the pause: the held-back create happens, once.
    h.edit(|o| {
        o.metadata
            .annotations
            .get_or_insert_default()
            .remove(ANNOTATION_PAUSED);
    });
    h.reconcile_freely().await.unwrap();
    assert_eq!(
        h.api().take_calls(),
        ["list", "cancel dep_1", "get dep_1", "create"]
    );
    assert_eq!(h.api().creates().len(), 1);
    assert_eq!(h.api().creates()[0].branch, "release");
    assert_health(&h.status(), "Reconciling", "Queued");
}

#[tokio::test]
async fn a_paused_cancel_is_not_sent_and_says_what_it_holds_back() {
    let mut h = Harness::new(paused(tracking(spec(json!({"cancel": true})), "dep_1")));
    h.api().add("main", None, Remote::Queued);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| {
            assert_paused(s, &["remove git.dev/paused to cancel it"]);
        }),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    assert!(!h.state().cancel_requested);
}

#[tokio::test]
async fn a_paused_object_prunes_no_history() {
    let s = spec(json!({"historyLimit": 0}));
    let state = State {
        id: Some("dep_2".into()),
        fingerprint: Some(fingerprint(&s)),
        history: vec!["dep_1".into()],
        ..State::default()
    };
    let mut h = Harness::new(paused(with_state(object(s), &state)));
    h.api().add("main", None, Remote::Success);
    h.api().add("main", None, Remote::Success);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event("Normal", "DeploymentSucceeded"),
        Expect::status(|s| {
            assert_health(s, "Ready", "Succeeded");
            let message = message(s, "Ready");
            assert!(message.contains("git.dev/paused"), "{message}");
        }),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_2"]);
    assert_eq!(h.api().ids(), ["dep_1", "dep_2"]);
    assert_eq!(h.state().history, ["dep_1"]);
}

#[tokio::test]
async fn deleting_a_paused_object_cleans_up_per_policy_and_releases_the_finalizer() {
    let mut h = Harness::new(deleting(paused(tracking(spec(json!({})), "dep_1"))));
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
        ["get dep_1", "cancel dep_1", "delete dep_1"]
    );
    assert!(h.api().ids().is_empty());
}

#[tokio::test]
async fn deleting_a_paused_object_with_policy_orphan_leaves_the_remote_alone() {
    let mut h = Harness::new(deleting(paused(tracking(
        spec(json!({"deletionPolicy": "Orphan"})),
        "dep_1",
    ))));
    h.api().add("main", None, Remote::Success);

    h.reconcile(vec![
        Expect::event_noting("Normal", "Orphaned", &["dep_1"]),
        Expect::remove_finalizer(),
    ])
    .await
    .unwrap();

    assert!(h.api().take_calls().is_empty());
    assert_eq!(h.api().ids(), ["dep_1"]);
}
