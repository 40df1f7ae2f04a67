//! A create whose answer was lost: found and adopted, never made twice.

use super::support::*;

#[tokio::test]
async fn a_lost_create_answer_is_adopted_on_the_next_reconcile_instead_of_creating_again() {
    let s = spec(json!({"commitSha": "abc1234"}));
    let fp = fingerprint(&s);
    let mut h = Harness::new(object(s));
    h.api().script(Endpoint::Create, Script::LoseAnswer);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some() && s.id.is_none())),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "CreationUnconfirmed");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();
    assert_eq!(requeue_after(&action), Some(secs(1.0)));
    assert_eq!(h.api().take_calls(), ["create"]);
    let state = h.state();
    assert!(
        state.intent.is_some() && state.id.is_none(),
        "the intent stays recorded: {state:?}"
    );
    assert_eq!(h.api().ids(), ["dep_1"], "the create did happen");

    // Someone else deploys another commit of the branch meanwhile: not ours.
    h.api().add("main", Some(HEAD), Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_1"));
                assert_eq!(s.fingerprint.as_deref(), Some(fp.as_str()));
                assert_eq!(s.intent, None);
            }),
            Expect::event_noting("Normal", "Adopted", &["dep_1", "lost"]),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "Queued");
                assert_eq!(s.deployment_id.as_deref(), Some("dep_1"));
                assert_eq!(s.commit_sha.as_deref(), Some("abc1234"));
            }),
        ])
        .await
        .unwrap();
    assert_requeue_between(&action, secs(2.0), secs(2.2));
    assert_eq!(
        h.api().take_calls(),
        ["list", "get dep_2", "get dep_1", "get dep_1"],
        "each candidate is read to check its commit, then the adopted one is observed"
    );
    assert_eq!(h.api().creates().len(), 1, "never created twice");
}

#[tokio::test]
async fn a_lost_create_answer_with_two_candidates_stalls_as_creation_uncertain_until_one_is_deleted()
 {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(Endpoint::Create, Script::LoseAnswer);
    h.reconcile_losing_the_create_answer().await;
    h.api().take_calls();
    // A second deployment of the same branch and commit appears in the window.
    h.api().add("main", None, Remote::Queued);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "CreationUncertain", &["dep_1", "dep_2"]),
            Expect::status(|s| {
                assert_health(s, "Stalled", "CreationUncertain");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["list", "get dep_2", "get dep_1"]);
    assert_eq!(
        h.api().creates().len(),
        1,
        "no create while the outcome is uncertain"
    );
    assert!(h.state().intent.is_some());

    // The recovery the message asks for: delete the extra one, set the adoption annotation.
    h.api().remove("dep_2");
    h.edit(|o| {
        o.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_DEPLOYMENT_ID.into(), "dep_1".into());
    });
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert_eq!((s.id.as_deref(), s.intent.is_none()), (Some("dep_1"), true))),
        Expect::event("Normal", "Adopted"),
        Expect::status(|s| {
            assert_health(s, "Reconciling", "Queued");
            assert_eq!(s.deployment_id.as_deref(), Some("dep_1"));
        }),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().creates().len(), 1);
}

#[tokio::test]
async fn a_lost_create_that_never_reached_the_api_is_sent_again_once_nothing_is_found() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(
        Endpoint::Create,
        Script::Fail(ApiError::OutcomeUnknown {
            message: "timed out".into(),
        }),
    );
    h.reconcile_losing_the_create_answer().await;
    assert_eq!(h.api().take_calls(), ["create"]);
    assert!(h.api().ids().is_empty());

    // Inside the settle window: looked for, not found, looked for again soon; no create.
    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "CreationUnconfirmed");
                assert!(s.conditions[0].message.contains("looking again"));
            }),
        ])
        .await
        .unwrap();
    assert_eq!(h.api().take_calls(), ["list"]);
    assert_requeue_between(&action, secs(2.0), secs(2.0));

    h.let_the_settle_window_pass();
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert_eq!(*s, State::default(), "nothing found: the intent is dropped")),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["list", "create"]);
    assert_eq!(h.api().ids(), ["dep_1"]);
}

#[tokio::test]
async fn a_lost_create_answer_after_a_supersede_is_not_mistaken_for_the_superseded_deployment() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    // A redeploy while dep_1 (same branch, created seconds ago) is building; the create of
    // the replacement times out before reaching the API.
    h.edit(|o| o.spec.redeploy = Some("2".into()));
    h.api().script(
        Endpoint::Create,
        Script::Fail(ApiError::OutcomeUnknown {
            message: "timed out".into(),
        }),
    );
    h.reconcile_freely().await.unwrap();
    assert_eq!(
        h.api().take_calls(),
        ["get dep_1", "cancel dep_1", "get dep_1", "create"]
    );

    h.let_the_settle_window_pass();
    h.reconcile_freely().await.unwrap();

    let state = h.state();
    assert_ne!(
        state.id.as_deref(),
        Some("dep_1"),
        "the cancelled, superseded dep_1 was adopted as the new spec's deployment: {state:?}, status {:?}",
        h.status().conditions
    );
    assert_eq!(
        state.id.as_deref(),
        Some("dep_2"),
        "the new spec is deployed"
    );
    assert_eq!(state.history, ["dep_1"]);
}

#[tokio::test]
async fn a_lost_create_answer_after_a_supersede_adopts_the_new_deployment() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.edit(|o| o.spec.redeploy = Some("2".into()));
    h.api().script(Endpoint::Create, Script::LoseAnswer);
    h.reconcile_freely().await.unwrap();

    h.reconcile_freely().await.unwrap();

    let status = h.status();
    assert_ne!(
        cond(&status, "Stalled").1,
        "CreationUncertain",
        "{:?}",
        status.conditions
    );
    let state = h.state();
    assert_eq!(state.id.as_deref(), Some("dep_2"), "{state:?}");
    assert_eq!(state.history, ["dep_1"]);
}

/// Intent times come from an annotation a tenant can write: at either edge of the calendar
/// they must neither panic (the lost-create search subtracts a clock skew) nor hold creates
/// off forever (a time in the future counts as expired).
#[tokio::test]
async fn an_intent_time_at_either_edge_of_the_calendar_neither_panics_nor_holds_creates_off() {
    for at in ["-009999-01-02T01:59:59Z", "9999-12-30T00:00:00Z"] {
        let obj = with_state(
            object(spec(json!({}))),
            &serde_json::from_value(json!({"intent": {"fingerprint": "f", "at": at}})).unwrap(),
        );
        let mut h = Harness::new(obj);
        h.reconcile_freely().await.unwrap();
        // Nothing could be it: the intent is settled as never made, and the create is sent once.
        assert_eq!(h.api().take_calls(), ["list", "create"], "{at}");
        assert_eq!(h.api().ids().len(), 1, "{at}");
    }
}

#[tokio::test]
async fn an_object_read_before_the_cache_saw_its_recorded_create_is_read_again_not_searched_for() {
    let s = spec(json!({}));
    let mut h = Harness::new(object(s.clone()));
    let intended = Arc::new(Mutex::new(None));
    let keep = intended.clone();
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(move |s| *keep.lock().unwrap() = Some(s.clone())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();
    h.api().take_calls();

    // The watch event of the intent write woke the object; the cache has not seen the id yet.
    let intent_only = intended
        .lock()
        .unwrap()
        .clone()
        .expect("the intent was written");
    let action = h
        .reconcile_copy(
            with_state(object(s), &intent_only),
            vec![Expect::get_secret(CREDENTIALS)],
        )
        .await
        .unwrap();

    assert_eq!(requeue_after(&action), Some(secs(1.0)));
    assert_eq!(
        h.api().take_calls(),
        Vec::<String>::new(),
        "no search for a create this process saw answered"
    );
    assert_eq!(h.state().id.as_deref(), Some("dep_1"), "nothing rewritten");
}

#[tokio::test]
async fn a_create_whose_answer_could_not_be_written_is_recorded_from_memory_without_a_search() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))).fails(409),
        Expect::event("Normal", "Created"),
        // Tried again at the end of the reconcile, in vain.
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))).fails(409),
        Expect::status(|s| assert_eq!(s.deployment_id.as_deref(), Some("dep_1"))),
    ])
    .await
    .unwrap();
    h.api().take_calls();
    assert!(h.state().intent.is_some() && h.state().id.is_none());

    h.reconcile_freely().await.unwrap();

    let state = h.state();
    assert_eq!(state.id.as_deref(), Some("dep_1"));
    assert_eq!(state.intent, None);
    assert_eq!(
        h.api().take_calls(),
        ["list"],
        "only the observation of the deployment: no search through the listing, no candidate read"
    );
    assert_eq!(h.api().creates().len(), 1, "never created twice");
}
