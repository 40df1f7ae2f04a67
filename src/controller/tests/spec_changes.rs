//! Changes of the spec: cancel, supersede, history, lifting cancel.

use super::support::*;

#[tokio::test]
async fn cancel_stops_an_in_progress_deployment_and_reports_cancelled() {
    let mut h = Harness::new(tracking(spec(json!({"cancel": true})), "dep_1"));
    h.api().add("main", None, Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| {
                assert!(s.cancel_requested);
                assert_eq!(s.id.as_deref(), Some("dep_1"));
            }),
            Expect::event_noting("Normal", "Cancelled", &["dep_1", "spec.cancel"]),
            Expect::status(|s| {
                assert_health(s, "Ready", "Cancelled");
                assert_eq!(s.status.as_deref(), Some("cancelled"));
                assert_eq!(s.cancelled_by.as_deref(), Some("user_operator"));
                assert!(s.cancelled_at.is_some());
            }),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.api().take_calls(),
        ["get dep_1", "cancel dep_1", "get dep_1"]
    );
    assert_eq!(
        h.api().deployment("dep_1").unwrap().status,
        Remote::Cancelled
    );
    assert!(h.state().cancel_requested);
}

#[tokio::test]
async fn a_new_spec_while_building_cancels_the_old_deployment_and_creates_a_new_one() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| assert_health(s, "Reconciling", "Building")),
    ])
    .await
    .unwrap();
    h.api().take_calls();

    h.edit(|o| o.spec.branch = "release".into());
    let new_fp = fingerprint(&h.object().spec);
    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Normal", "Superseded", &["dep_1"]),
            Expect::state(|s| {
                assert_eq!((s.id.as_deref(), s.intent.is_some()), (Some("dep_1"), true))
            }),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_2"));
                assert_eq!(s.fingerprint.as_deref(), Some(new_fp.as_str()));
                assert_eq!(s.history, ["dep_1"]);
            }),
            Expect::event_noting("Normal", "Created", &["dep_2", "release"]),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "Queued");
                assert_eq!(s.deployment_id.as_deref(), Some("dep_2"));
                assert_eq!(s.observed_generation, Some(2));
                assert_eq!(s.history.len(), 1);
                let old = &s.history[0];
                assert_eq!(old.deployment_id, "dep_1");
                assert_eq!(old.status.as_deref(), Some("building"), "last known status");
                assert_eq!(old.commit_sha.as_deref(), Some(HEAD));
            }),
        ])
        .await
        .unwrap();

    assert_requeue_between(&action, secs(2.0), secs(2.2));
    assert_eq!(
        h.api().take_calls(),
        ["list", "cancel dep_1", "get dep_1", "create"]
    );
    assert_eq!(
        h.api().deployment("dep_1").unwrap().status,
        Remote::Cancelled
    );
    assert_eq!(h.api().creates()[0].branch, "release");
}

#[tokio::test]
async fn history_beyond_the_history_limit_is_deleted_remotely() {
    let mut h = Harness::new(tracking(spec(json!({"historyLimit": 0})), "dep_1"));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);

    h.edit(|o| o.spec.redeploy = Some("2".into()));
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.history, ["dep_1"])),
        Expect::event("Normal", "Created"),
        Expect::event_noting("Normal", "Pruned", &["dep_1", "historyLimit"]),
        Expect::state(|s| {
            assert_eq!(s.id.as_deref(), Some("dep_2"));
            assert!(s.history.is_empty());
        }),
        Expect::status(|s| {
            assert_eq!(s.deployment_id.as_deref(), Some("dep_2"));
            assert!(s.history.is_empty());
        }),
    ])
    .await
    .unwrap();

    assert_eq!(
        h.api().take_calls(),
        ["get dep_1", "create", "delete dep_1"]
    );
    assert_eq!(h.api().ids(), ["dep_2"]);
}

#[tokio::test]
async fn lifting_cancel_deploys_again() {
    let s = spec(json!({}));
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(fingerprint(&s)),
        cancel_requested: true,
        ..State::default()
    };
    let mut h = Harness::new(with_state(object(s), &state));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Cancelled);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some() && s.cancel_requested)),
        Expect::state(|s| {
            assert_eq!(s.id.as_deref(), Some("dep_2"));
            assert_eq!(s.history, ["dep_1"]);
            assert!(!s.cancel_requested);
        }),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_1", "create"]);
}

#[tokio::test]
async fn a_fingerprint_made_under_another_key_is_restamped_and_nothing_is_redeployed() {
    let s = spec(json!({"envVars": {"MODE": "a"}}));
    let older = DesiredDeployment::resolve(&s, |_| None)
        .unwrap()
        .fingerprint(&Key::new(b"a-key-since-rotated"));
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(older.clone()),
        ..State::default()
    };
    let mut h = Harness::new(with_state(object(s.clone()), &state));
    h.api().add("main", None, Remote::Success);

    let now = fingerprint(&s);
    assert_ne!(now, older);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(move |st| assert_eq!(st.fingerprint.as_deref(), Some(now.as_str()))),
        Expect::event("Normal", "DeploymentSucceeded"),
        Expect::status(|st| assert_health(st, "Ready", "Succeeded")),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    assert!(h.api().creates().is_empty());

    // A visible change under the new key is still a change.
    h.edit(|o| {
        o.spec.env_vars.insert("MODE".into(), "b".into());
    });
    h.reconcile_freely().await.unwrap();
    assert_eq!(h.api().creates().len(), 1);
}
