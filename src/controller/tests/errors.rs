//! Problems: Secrets, API errors by class, rate limits and per-object backoff.

use super::support::*;

#[tokio::test]
async fn a_missing_credentials_secret_stalls_without_calling_the_api() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "CredentialsNotFound", &["ns/gitdev-credentials"]),
            Expect::status(|s| {
                assert_health(s, "Stalled", "CredentialsNotFound");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();

    assert_eq!(
        action,
        Action::await_change(),
        "a missing Secret waits for the Secret to change"
    );
    assert!(h.api().take_calls().is_empty());
}

#[tokio::test]
async fn a_401_from_get_stalls_as_unauthorized() {
    let mut h = Harness::tracking_a_build_whose_get_fails(401, "unauthorized");

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "Unauthorized", &["401", "valid"]),
            Expect::status(|s| assert_health(s, "Stalled", "Unauthorized")),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
}

#[tokio::test]
async fn a_403_from_create_stalls_as_insufficient_scope_and_forgets_the_intent() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api()
        .fail_next(Endpoint::Create, 403, "insufficient_scope");

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())),
            Expect::state(|s| {
                assert_eq!(*s, State::default(), "a refused create leaves no intent")
            }),
            Expect::event_noting("Warning", "InsufficientScope", &["403", "deploy:write"]),
            Expect::status(|s| assert_health(s, "Stalled", "InsufficientScope")),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["create"]);
    assert!(h.api().ids().is_empty());
    assert_eq!(h.state(), State::default());
}

#[tokio::test]
async fn a_500_from_get_reports_api_unavailable_and_fails_the_reconcile_for_backoff() {
    let mut h = Harness::tracking_a_build_whose_get_fails(500, "internal_error");

    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "ApiUnavailable", &["500", "internal_error"]),
            Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
        ])
        .await
        .expect_err("a transient API error fails the reconcile");

    assert_eq!(err.category(), "server_error");
    assert!(
        matches!(&err, Error::Finalizer(e) if matches!(e.as_ref(), kube::runtime::finalizer::Error::ApplyFailed(Error::Api { .. }))),
        "{err:?}"
    );
    let action = h.error_policy(&h.object(), &err);
    assert_requeue_between(&action, secs(1.0), secs(1.25));
}

#[tokio::test]
async fn error_policy_backs_off_exponentially_per_object_and_resets_after_a_success() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Queued);
    for _ in 0..3 {
        h.api().fail_next(Endpoint::Get, 503, "service_unavailable");
    }
    let first = vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event("Warning", "ApiUnavailable"),
        Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
    ];
    let err = h.reconcile(first).await.unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(1.0), secs(1.25));
    // The same failure again: the status and its condition are unchanged, so nothing is written.
    let err = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(2.0), secs(2.5));
    let err = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(4.0), secs(5.0));

    // Another object has its own count.
    let mut other = h.object();
    other.metadata.name = Some("other".into());
    assert_requeue_between(&h.error_policy(&other, &err), secs(1.0), secs(1.25));
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(8.0), secs(10.0));

    // A success forgets the failures.
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();
    // Now mirrored as in flight, the deployment is observed through the token's listing.
    h.api().fail_next(Endpoint::List, 500, "internal_error");
    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::repeated_event("Warning", "ApiUnavailable"),
            Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
        ])
        .await
        .unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(1.0), secs(1.25));
}

#[tokio::test]
async fn a_429_from_create_waits_for_the_rate_limit_without_an_error() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(
        Endpoint::Create,
        Script::Fail(ApiError::Status {
            endpoint: Endpoint::Create,
            status: 429,
            code: "rate_limited".into(),
            message: "slow down".into(),
            details: Default::default(),
            retry_after: Some(Duration::from_secs(7)),
        }),
    );

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())),
            Expect::state(|s| {
                assert_eq!(*s, State::default(), "a refused create leaves no intent")
            }),
            Expect::event_noting("Warning", "RateLimited", &["rate limit", "create"]),
            Expect::status(|s| assert_health(s, "Reconciling", "RateLimited")),
        ])
        .await
        .expect("a rate limit is not an error");

    assert_eq!(requeue_after(&action), Some(Duration::from_secs(7)));
    assert_eq!(h.api().take_calls(), ["create"]);
}

/// The next create finds no rate budget within the client's patience; its turn is `secs` away.
fn no_budget_for_a_create(h: &Harness, secs: u64) {
    h.api()
        .state()
        .budget_refusals
        .push_back(ApiError::Throttled {
            endpoint: Endpoint::Create,
            retry_after: Duration::from_secs(secs),
        });
}

#[tokio::test]
async fn an_object_waiting_for_rate_budget_to_create_writes_no_intent_while_it_waits() {
    let mut h = Harness::new(object(spec(json!({}))));
    no_budget_for_a_create(&h, 12);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "RateLimited", &["rate limit", "create"]),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "RateLimited");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .expect("a wait for budget is not an error");

    assert_eq!(requeue_after(&action), Some(Duration::from_secs(12)));
    assert!(h.api().take_calls().is_empty(), "nothing was sent");
    assert!(
        h.ctx.coordination.creates_pending(&ApiToken::new(TOKEN)),
        "observation of the token's other objects yields to the create it owes"
    );

    // Still no budget: nothing changed, nothing is written.
    no_budget_for_a_create(&h, 3);
    let action = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap();
    assert_eq!(requeue_after(&action), Some(Duration::from_secs(3)));

    // Its turn came: the intent is recorded, then the create sent, then its id recorded.
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event_noting("Normal", "Created", &["dep_1"]),
        Expect::status(|s| assert_eq!(s.deployment_id.as_deref(), Some("dep_1"))),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["create"]);
}

#[tokio::test]
async fn a_panic_while_reconciling_one_object_is_reported_on_it_and_returned_as_its_error() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.api().script(Endpoint::Get, Script::Panic);

    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "InternalError", &["scripted panic", "report"]),
            Expect::status(|s| assert_health(s, "Stalled", "InternalError")),
        ])
        .await
        .expect_err("a panic is an error of the object, not of the process");

    assert!(matches!(err, Error::Panicked { .. }), "{err}");
    assert_eq!(err.category(), "panic");
    let backoff = h.error_policy(&h.object(), &err);
    assert_requeue_between(&backoff, secs(1.0), secs(1.25));
}
