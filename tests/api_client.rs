//! The HTTP client against the real simulator, in-process on a real socket.
//!
//! Every test starts its own simulator (own port), so budgets of the process-wide rate limiter
//! (keyed by base URL and token) never mix between tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitdev::api::{
    ApiError, ApiObserver, ApiToken, ClientConfig, CreateDeploymentRequest, DeploymentStatus,
    DeploymentsApi, Endpoint, ErrorClass, HttpClient, ListQuery, RateLimiter, RetryPolicy,
    list_newest_back_to, list_status_back_to,
};
use gitdev::metrics::Metrics;
use gitdev::sim::{RunningSim, SimConfig};
use jiff::Timestamp;
use serde_json::{Value, json};

const PROJECT: &str = "proj_8f3k29";
const ADMIN: &str = "sk_test_admin";
const WRITE: &str = "sk_test_write";
const READ: &str = "sk_test_read";
const STARTER: &str = "sk_test_starter";
const OTHER: &str = "sk_test_other";

fn token(s: &str) -> ApiToken {
    ApiToken::new(s)
}

async fn start(phase: Duration) -> RunningSim {
    // reqwest is built without a TLS crypto provider; the raw clients below need one.
    gitdev::api::client::install_crypto_provider();
    RunningSim::start(
        SimConfig::default_fixture().with_phase_duration(phase),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts")
}

/// Fast retries so that fault tests do not sleep for long.
fn config(sim: &RunningSim) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            base_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        ..ClientConfig::new(sim.base_url.clone())
    }
}

fn client(sim: &RunningSim) -> HttpClient {
    HttpClient::new(config(sim)).unwrap()
}

fn create_req(branch: &str) -> CreateDeploymentRequest {
    CreateDeploymentRequest {
        project_id: PROJECT.into(),
        branch: branch.into(),
        commit_sha: None,
        env_vars: None,
    }
}

/// A raw call to the simulator's `/_sim/` hooks.
async fn hook(sim: &RunningSim, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let url = format!("{}/_sim/{path}", sim.root_url());
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("hook answers");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "hook {path}: {status} {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

async fn stats(sim: &RunningSim) -> Value {
    hook(sim, reqwest::Method::GET, "stats", None).await
}

/// Requests the simulator saw for `route` (e.g. `"POST /v1/deployments"`) with `status`
/// (`"201"`, `"dropped"`…).
fn seen(stats: &Value, route: &str, status: &str) -> u64 {
    stats["by_route"][route]["by_status"][status]
        .as_u64()
        .unwrap_or(0)
}

fn seen_total(stats: &Value, route: &str) -> u64 {
    stats["by_route"][route]["total"].as_u64().unwrap_or(0)
}

async fn set_faults(sim: &RunningSim, rules: Value) {
    hook(
        sim,
        reqwest::Method::PUT,
        "faults",
        Some(json!({ "rules": rules })),
    )
    .await;
}

/// Every deployment the simulator holds, whatever the project.
async fn sim_deployments(sim: &RunningSim) -> Vec<Value> {
    let v = hook(sim, reqwest::Method::GET, "deployments", None).await;
    match v {
        Value::Array(a) => a,
        Value::Object(ref o) => o
            .get("data")
            .or_else(|| o.get("deployments"))
            .and_then(|d| d.as_array())
            .cloned()
            .unwrap_or_else(|| panic!("unexpected /_sim/deployments shape: {v}")),
        other => panic!("unexpected /_sim/deployments shape: {other}"),
    }
}

fn expect_status(err: &ApiError, status: u16, code: &str) {
    match err {
        ApiError::Status {
            status: s, code: c, ..
        } => assert_eq!((*s, c.as_str()), (status, code), "{err}"),
        other => panic!("expected HTTP {status} {code}, got {other:?}"),
    }
}

/// Creates `main` with the write token, which must end in an unknown outcome.
async fn create_with_unknown_outcome(api: &HttpClient) -> ApiError {
    let err = api
        .create(&token(WRITE), &create_req("main"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::OutcomeUnknown { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::OutcomeUnknown);
    err
}

async fn wait_for_status(
    api: &HttpClient,
    t: &ApiToken,
    id: &str,
    want: DeploymentStatus,
) -> Duration {
    let start = Instant::now();
    loop {
        let d = api.get(t, id).await.unwrap();
        if d.status == want {
            return start.elapsed();
        }
        assert!(
            !d.status.is_terminal(),
            "{id} reached {} while waiting for {want}",
            d.status
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{id} never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Records what the client reports per attempt.
#[derive(Default)]
struct Recorder {
    attempts: Mutex<Vec<(Endpoint, String, Option<u16>)>>,
    waits: Mutex<Vec<(Endpoint, Duration)>>,
}

impl ApiObserver for Recorder {
    fn request_finished(
        &self,
        endpoint: Endpoint,
        outcome: &str,
        status: Option<u16>,
        _elapsed: Duration,
    ) {
        self.attempts
            .lock()
            .unwrap()
            .push((endpoint, outcome.to_owned(), status));
    }

    fn budget_wait(&self, endpoint: Endpoint, waited: Duration) {
        self.waits.lock().unwrap().push((endpoint, waited));
    }
}

impl Recorder {
    fn outcomes(&self, endpoint: Endpoint) -> Vec<String> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, ..)| *e == endpoint)
            .map(|(_, o, _)| o.clone())
            .collect()
    }
}

// ----- every endpoint -----

#[tokio::test]
async fn every_endpoint_works_end_to_end_and_a_deleted_deployment_is_gone() {
    let sim = start(Duration::from_secs(5)).await;
    let api = client(&sim);
    let t = token(WRITE);

    let mut req = create_req("feature/login");
    req.env_vars = Some(BTreeMap::from([("NODE_ENV".into(), "production".into())]));
    let created = api.create(&t, &req).await.unwrap();
    assert_eq!(created.status, DeploymentStatus::Queued);
    assert_eq!(created.project_id, PROJECT);
    assert_eq!(created.branch, "feature/login");
    assert_eq!(
        created.commit_sha,
        gitdev::sim::HEAD_FEATURE_LOGIN,
        "defaults to the branch HEAD"
    );
    assert_eq!(created.url, format!("https://{}.git.dev", created.id));

    let details = api.get(&t, &created.id).await.unwrap();
    assert_eq!(details.id, created.id);
    assert_eq!(details.commit_sha, created.commit_sha);
    assert!(details.completed_at.is_none());
    assert!(details.build_duration.is_none());

    let page = api.list(&t, &ListQuery::default()).await.unwrap();
    assert_eq!(page.meta.total, 1);
    assert_eq!(page.meta.limit, 20, "the server's default limit");
    assert_eq!(page.data[0].id, created.id);

    let logs = api.logs(&t, &created.id).await.unwrap();
    assert!(!logs.is_empty());

    let cancelled = api.cancel(&t, &created.id).await.unwrap();
    assert_eq!(cancelled.status, DeploymentStatus::Cancelled);
    assert_eq!(cancelled.cancelled_by, "user_write01");
    let details = api.get(&t, &created.id).await.unwrap();
    assert_eq!(details.status, DeploymentStatus::Cancelled);
    assert_eq!(details.cancelled_by.as_deref(), Some("user_write01"));

    api.delete(&t, &created.id).await.unwrap();
    let err = api.get(&t, &created.id).await.unwrap_err();
    expect_status(&err, 404, "not_found");
    assert!(err.is_not_found());
    assert_eq!(err.class(), ErrorClass::Permanent);
    expect_status(
        &api.delete(&t, &created.id).await.unwrap_err(),
        404,
        "not_found",
    );
    expect_status(
        &api.logs(&t, &created.id).await.unwrap_err(),
        404,
        "not_found",
    );
}

#[tokio::test]
async fn a_pinned_commit_is_deployed_as_given() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let t = token(WRITE);
    let mut req = create_req("main");
    req.commit_sha = Some("a1b2c3d4e5f6".into());
    let created = api.create(&t, &req).await.unwrap();
    assert_eq!(created.commit_sha, "a1b2c3d4e5f6");
    let details = api.get(&t, &created.id).await.unwrap();
    assert_eq!(details.status, DeploymentStatus::Success);
    assert!(details.completed_at.is_some());
    assert!(details.build_duration.is_some());
}

// ----- every error code of the contract -----

#[tokio::test]
async fn an_unknown_branch_is_400_invalid_branch_with_details() {
    let sim = start(Duration::ZERO).await;
    let err = client(&sim)
        .create(&token(WRITE), &create_req("develop"))
        .await
        .unwrap_err();
    expect_status(&err, 400, "invalid_branch");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let ApiError::Status {
        message, details, ..
    } = &err
    else {
        unreachable!()
    };
    assert!(message.contains("develop"), "{message}");
    assert!(!details.is_empty(), "the simulator explains which project");
}

#[tokio::test]
async fn a_malformed_commit_is_400_invalid_commit() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    for sha in ["NOT-HEX", "abc12", &"a".repeat(41)] {
        let mut req = create_req("main");
        req.commit_sha = Some(sha.to_string());
        let err = api.create(&token(WRITE), &req).await.unwrap_err();
        expect_status(&err, 400, "invalid_commit");
        assert_eq!(err.class(), ErrorClass::Permanent, "{sha}");
    }
}

#[tokio::test]
async fn a_malformed_body_is_400_invalid_request() {
    let sim = start(Duration::ZERO).await;
    // The typed client cannot send bad JSON: a raw request does.
    let resp = reqwest::Client::new()
        .post(format!("{}/deployments", sim.base_url))
        .bearer_auth(WRITE)
        .header("content-type", "application/json")
        .body(r#"{"project_id": "proj_8f3k29", "branch": 42}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_request");
}

#[tokio::test]
async fn an_out_of_range_list_limit_is_400_invalid_parameter() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    for limit in [0, 101] {
        let q = ListQuery {
            limit: Some(limit),
            ..ListQuery::default()
        };
        let err = api.list(&token(READ), &q).await.unwrap_err();
        expect_status(&err, 400, "invalid_parameter");
        assert_eq!(err.category(), "invalid_request");
    }
}

#[tokio::test]
async fn an_unknown_token_is_401_unauthorized() {
    let sim = start(Duration::ZERO).await;
    let err = client(&sim)
        .list(&token("sk_test_nobody"), &ListQuery::default())
        .await
        .unwrap_err();
    expect_status(&err, 401, "unauthorized");
    assert_eq!(err.class(), ErrorClass::Permanent);
    // No token at all, too.
    let resp = reqwest::get(format!("{}/deployments", sim.base_url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn a_read_only_token_reads_but_gets_403_insufficient_scope_for_writes() {
    let sim = start(Duration::from_secs(5)).await;
    let api = client(&sim);
    let created = api
        .create(&token(WRITE), &create_req("main"))
        .await
        .unwrap();
    let r = token(READ);
    api.get(&r, &created.id).await.unwrap();
    api.list(&r, &ListQuery::default()).await.unwrap();
    api.logs(&r, &created.id).await.unwrap();
    expect_status(
        &api.create(&r, &create_req("main")).await.unwrap_err(),
        403,
        "insufficient_scope",
    );
    expect_status(
        &api.cancel(&r, &created.id).await.unwrap_err(),
        403,
        "insufficient_scope",
    );
    let err = api.delete(&r, &created.id).await.unwrap_err();
    expect_status(&err, 403, "insufficient_scope");
    assert_eq!(err.category(), "forbidden");
    // Nothing happened to it.
    assert!(!api.get(&r, &created.id).await.unwrap().status.is_terminal());
}

#[tokio::test]
async fn another_projects_deployments_and_projects_answer_404() {
    let sim = start(Duration::from_secs(5)).await;
    let api = client(&sim);
    let mine = api
        .create(&token(WRITE), &create_req("main"))
        .await
        .unwrap();
    let o = token(OTHER);
    for err in [
        api.get(&o, &mine.id).await.unwrap_err(),
        api.cancel(&o, &mine.id).await.unwrap_err(),
        api.delete(&o, &mine.id).await.unwrap_err(),
        api.logs(&o, &mine.id).await.unwrap_err(),
    ] {
        expect_status(&err, 404, "not_found");
    }
    // Creating in a project the token does not belong to.
    let err = api.create(&o, &create_req("main")).await.unwrap_err();
    expect_status(&err, 404, "project_not_found");
    // The other project's list does not show ours.
    assert_eq!(
        api.list(&o, &ListQuery::default())
            .await
            .unwrap()
            .meta
            .total,
        0
    );
    // And ours is untouched.
    assert!(
        !api.get(&token(WRITE), &mine.id)
            .await
            .unwrap()
            .status
            .is_terminal()
    );
}

#[tokio::test]
async fn a_500_is_internal_error_and_a_429_is_rate_limited_when_retries_are_off() {
    let sim = start(Duration::ZERO).await;
    let api = HttpClient::new(ClientConfig {
        retry: RetryPolicy {
            max_attempts: 1,
            max_rate_limited: 0,
            ..RetryPolicy::default()
        },
        ..config(&sim)
    })
    .unwrap();
    let t = token(ADMIN);
    set_faults(
        &sim,
        json!([{"route": "list", "error_rate": 1.0, "count": 1}]),
    )
    .await;
    let err = api.list(&t, &ListQuery::default()).await.unwrap_err();
    expect_status(&err, 500, "internal_error");
    assert_eq!(err.class(), ErrorClass::Transient);

    set_faults(
        &sim,
        json!([{"route": "list", "force_429": 1.0, "count": 1}]),
    )
    .await;
    let err = api.list(&t, &ListQuery::default()).await.unwrap_err();
    expect_status(&err, 429, "rate_limited");
    let ErrorClass::RateLimited { retry_after } = err.class() else {
        panic!("{err:?}")
    };
    assert!(retry_after >= Duration::from_secs(1), "{retry_after:?}");
}

// ----- cancel from every state -----

#[tokio::test]
async fn cancel_works_from_queued_building_and_deploying() {
    let sim = start(Duration::from_millis(1500)).await;
    let api = client(&sim);
    let t = token(ADMIN);
    for phase in [
        DeploymentStatus::Queued,
        DeploymentStatus::Building,
        DeploymentStatus::Deploying,
    ] {
        let d = api.create(&t, &create_req("main")).await.unwrap();
        wait_for_status(&api, &t, &d.id, phase).await;
        let c = api
            .cancel(&t, &d.id)
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e}"));
        assert_eq!(c.status, DeploymentStatus::Cancelled, "{phase}");
        assert_eq!(c.cancelled_by, "user_admin01");
        let details = api.get(&t, &d.id).await.unwrap();
        assert_eq!(details.status, DeploymentStatus::Cancelled, "{phase}");
        assert!(details.cancelled_at.is_some());
    }
}

#[tokio::test]
async fn cancel_of_a_finished_deployment_is_409_not_cancellable() {
    let sim = start(Duration::from_millis(50)).await;
    let api = client(&sim);
    let t = token(ADMIN);
    let ok = api.create(&t, &create_req("main")).await.unwrap();
    let failed = api
        .create(&t, &create_req("fail/broken-build"))
        .await
        .unwrap();
    let cancelled = api.create(&t, &create_req("feature/login")).await.unwrap();
    api.cancel(&t, &cancelled.id).await.unwrap();
    wait_for_status(&api, &t, &ok.id, DeploymentStatus::Success).await;
    wait_for_status(&api, &t, &failed.id, DeploymentStatus::Failed).await;
    for id in [&ok.id, &failed.id, &cancelled.id] {
        let err = api.cancel(&t, id).await.unwrap_err();
        expect_status(&err, 409, "not_cancellable");
        assert_eq!(err.category(), "conflict");
        assert_eq!(err.class(), ErrorClass::Permanent);
    }
}

// ----- pagination -----

#[tokio::test]
async fn pages_follow_limit_and_offset_and_a_full_listing_reads_every_page_once() {
    let sim = start(Duration::from_secs(60)).await;
    let api = client(&sim);
    let t = token(ADMIN);
    let mut ids = Vec::new();
    for i in 0..230 {
        let branch = if i % 2 == 0 { "main" } else { "feature/login" };
        ids.push(api.create(&t, &create_req(branch)).await.unwrap().id);
    }
    // Cancel a few so that the status filter has something to tell apart.
    for id in &ids[..7] {
        api.cancel(&t, id).await.unwrap();
    }

    let q = ListQuery {
        limit: Some(50),
        offset: Some(0),
        status: None,
    };
    let first = api.list(&t, &q).await.unwrap();
    assert_eq!(first.meta.total, 230);
    assert_eq!(first.data.len(), 50);
    assert_eq!(first.data[0].id, *ids.last().unwrap(), "newest first");
    let last = api
        .list(
            &t,
            &ListQuery {
                offset: Some(200),
                ..q
            },
        )
        .await
        .unwrap();
    assert_eq!(last.data.len(), 30);
    assert_eq!(last.meta.offset, 200);
    let beyond = api
        .list(
            &t,
            &ListQuery {
                offset: Some(1000),
                ..q
            },
        )
        .await
        .unwrap();
    assert!(beyond.data.is_empty());

    let all = list_newest_back_to(&api, &t, Timestamp::MIN).await.unwrap();
    assert_eq!(all.len(), 230);
    let unique: HashSet<_> = all.iter().map(|d| d.id.clone()).collect();
    assert_eq!(unique, ids.iter().cloned().collect());
    // Three pages of 100 at most.
    let s = stats(&sim).await;
    assert_eq!(seen_total(&s, "GET /v1/deployments"), 2 + 1 + 3);

    let cancelled =
        list_status_back_to(&api, &t, Some(DeploymentStatus::Cancelled), Timestamp::MIN)
            .await
            .unwrap();
    assert_eq!(cancelled.len(), 7);
    assert!(
        cancelled
            .iter()
            .all(|d| d.status == DeploymentStatus::Cancelled)
    );
    let queued = api
        .list(
            &t,
            &ListQuery {
                status: Some(DeploymentStatus::Queued),
                ..ListQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(queued.meta.total, 223);
    assert!(
        queued
            .data
            .iter()
            .all(|d| d.status == DeploymentStatus::Queued)
    );
}

#[tokio::test]
async fn a_full_listing_of_an_empty_project_ends_after_one_empty_page() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let all = list_newest_back_to(&api, &token(OTHER), Timestamp::MIN)
        .await
        .unwrap();
    assert!(all.is_empty());
    assert_eq!(seen_total(&stats(&sim).await, "GET /v1/deployments"), 1);
}

#[tokio::test]
async fn a_listing_stops_at_the_first_error() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let err = list_newest_back_to(&api, &token("sk_test_nobody"), Timestamp::MIN)
        .await
        .unwrap_err();
    expect_status(&err, 401, "unauthorized");
    assert_eq!(seen_total(&stats(&sim).await, "GET /v1/deployments"), 1);
}

// ----- retries -----

#[tokio::test]
async fn safe_calls_are_retried_through_injected_500s_and_dropped_connections() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(config(&sim).with_observer(rec.clone())).unwrap();
    let t = token(ADMIN);
    let d = api.create(&t, &create_req("main")).await.unwrap();

    set_faults(
        &sim,
        json!([{"route": "get", "error_rate": 1.0, "count": 2}]),
    )
    .await;
    assert_eq!(api.get(&t, &d.id).await.unwrap().id, d.id);
    let s = stats(&sim).await;
    assert_eq!(seen(&s, "GET /v1/deployments/{id}", "500"), 2);
    assert_eq!(seen(&s, "GET /v1/deployments/{id}", "200"), 1);
    assert_eq!(
        rec.outcomes(Endpoint::Get),
        ["server_error", "server_error", "success"],
        "the observer sees every attempt"
    );

    set_faults(
        &sim,
        json!([{"route": "logs", "drop_rate": 1.0, "count": 1}]),
    )
    .await;
    assert!(!api.logs(&t, &d.id).await.unwrap().is_empty());
    assert_eq!(rec.outcomes(Endpoint::Logs), ["transport", "success"]);

    set_faults(
        &sim,
        json!([{"route": "list", "error_rate": 1.0, "count": 2}]),
    )
    .await;
    assert_eq!(
        api.list(&t, &ListQuery::default())
            .await
            .unwrap()
            .meta
            .total,
        1
    );

    // Delete and cancel are safe too.
    let d2 = api.create(&t, &create_req("main")).await.unwrap();
    set_faults(
        &sim,
        json!([{"route": "delete", "error_rate": 1.0, "count": 1}]),
    )
    .await;
    api.delete(&t, &d2.id).await.unwrap();
}

#[tokio::test]
async fn retries_stop_after_max_attempts_with_the_last_error() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(config(&sim).with_observer(rec.clone())).unwrap();
    set_faults(&sim, json!([{"route": "list", "error_rate": 1.0}])).await;
    let err = api
        .list(&token(ADMIN), &ListQuery::default())
        .await
        .unwrap_err();
    expect_status(&err, 500, "internal_error");
    assert_eq!(
        rec.outcomes(Endpoint::List).len(),
        4,
        "default max_attempts"
    );
    assert_eq!(seen(&stats(&sim).await, "GET /v1/deployments", "500"), 4);
}

#[tokio::test]
async fn a_create_answered_500_is_not_retried_and_its_outcome_is_unknown() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    set_faults(
        &sim,
        json!([{"route": "create", "error_rate": 1.0, "count": 1}]),
    )
    .await;
    let err = create_with_unknown_outcome(&api).await;
    assert!(err.to_string().contains("500"), "{err}");
    let s = stats(&sim).await;
    assert_eq!(seen_total(&s, "POST /v1/deployments"), 1, "sent once");
    // The simulator's 500 fault answers without processing: nothing was made.
    assert_eq!(sim_deployments(&sim).await.len(), 0);
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_an_unknown_outcome_and_exists_exactly_once() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    set_faults(
        &sim,
        json!([{"route": "create", "drop_rate": 1.0, "latency_ms": 50, "latency_when": "after", "count": 1}]),
    )
    .await;
    let started = jiff::Timestamp::now();
    create_with_unknown_outcome(&api).await;
    let s = stats(&sim).await;
    assert_eq!(
        seen_total(&s, "POST /v1/deployments"),
        1,
        "never sent twice"
    );
    assert_eq!(seen(&s, "POST /v1/deployments", "dropped"), 1);
    let all = sim_deployments(&sim).await;
    assert_eq!(all.len(), 1, "exactly one deployment: {all:?}");
    // The caller can find it by branch and creation time, listing back to when it sent it.
    let since = started
        .checked_sub(jiff::SignedDuration::from_secs(1))
        .unwrap();
    let found: Vec<_> = list_newest_back_to(&api, &token(WRITE), since)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.branch == "main" && d.created_at >= since)
        .collect();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn a_create_that_times_out_is_an_unknown_outcome() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(
        ClientConfig {
            request_timeout: Duration::from_millis(300),
            ..config(&sim)
        }
        .with_observer(rec.clone()),
    )
    .unwrap();
    // The simulator makes the deployment, then is slow to answer.
    set_faults(
        &sim,
        json!([{"route": "create", "latency_ms": 1000, "latency_when": "after", "count": 1}]),
    )
    .await;
    create_with_unknown_outcome(&api).await;
    assert_eq!(
        rec.outcomes(Endpoint::Create),
        ["outcome_unknown"],
        "one attempt, never repeated"
    );
    // (The simulator does not count a request whose client hung up, so its stats cannot tell.)
    assert_eq!(sim_deployments(&sim).await.len(), 1, "made exactly once");
}

#[tokio::test]
async fn a_create_to_a_closed_port_is_retried_because_nothing_was_sent() {
    // Bind then drop a listener: the port refuses connections.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(
        ClientConfig {
            retry: RetryPolicy {
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(20),
                ..RetryPolicy::default()
            },
            ..ClientConfig::new(format!("http://127.0.0.1:{port}/v1"))
        }
        .with_observer(rec.clone()),
    )
    .unwrap();
    let err = api
        .create(&token(WRITE), &create_req("main"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err:?}");
    assert_eq!(rec.outcomes(Endpoint::Create), ["transport"; 4]);
    let err = api.get(&token(WRITE), "dep_x").await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err:?}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn a_create_answered_408_520_or_524_by_a_gateway_after_the_commit_is_an_unknown_outcome() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(config(&sim).with_observer(rec.clone())).unwrap();
    for (n, status) in [408u16, 520, 524].into_iter().enumerate() {
        set_faults(
            &sim,
            json!([{"route": "create", "gateway_rate": 1.0, "gateway_status": status, "count": 1}]),
        )
        .await;
        let err = create_with_unknown_outcome(&api).await;
        let text = err.to_string();
        assert!(
            text.contains(&format!("HTTP {status} http_{status}")),
            "{text}"
        );
        assert!(text.contains("<!DOCTYPE html>"), "{text}");
        assert_eq!(
            sim_deployments(&sim).await.len(),
            n + 1,
            "the simulator made it once and it was never sent again"
        );
    }
    assert_eq!(rec.outcomes(Endpoint::Create), ["outcome_unknown"; 3]);
    let s = stats(&sim).await;
    assert_eq!(seen_total(&s, "POST /v1/deployments"), 3);
}

#[tokio::test]
async fn the_apis_own_4xx_still_settles_a_create() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let err = api
        .create(&token(WRITE), &create_req("no-such-branch"))
        .await
        .unwrap_err();
    expect_status(&err, 400, "invalid_branch");
    assert_eq!(err.class(), ErrorClass::Permanent);
    let err = api
        .create(&token(READ), &create_req("main"))
        .await
        .unwrap_err();
    expect_status(&err, 403, "insufficient_scope");
    assert!(sim_deployments(&sim).await.is_empty());
}

#[tokio::test]
async fn a_safe_call_answered_by_a_gateways_408_or_524_is_retried() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(config(&sim).with_observer(rec.clone())).unwrap();
    for status in [408, 524] {
        set_faults(
            &sim,
            json!([{"route": "list", "gateway_rate": 1.0, "gateway_status": status, "count": 1}]),
        )
        .await;
        api.list(&token(WRITE), &ListQuery::default())
            .await
            .unwrap();
    }
    assert_eq!(
        rec.outcomes(Endpoint::List),
        ["http_error", "success", "server_error", "success"]
    );
}

// ----- rate limits -----

#[tokio::test]
async fn the_rate_limit_headers_describe_the_tokens_bucket() {
    let sim = start(Duration::ZERO).await;
    let before = jiff::Timestamp::now().as_second();
    let resp = reqwest::Client::new()
        .get(format!("{}/deployments", sim.base_url))
        .bearer_auth(STARTER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = |name: &str| -> i64 { resp.headers()[name].to_str().unwrap().parse().unwrap() };
    assert_eq!(h("x-ratelimit-limit"), 100);
    assert_eq!(h("x-ratelimit-remaining"), 19, "burst 20, one spent");
    // One request missing at 100/min: full again within a second.
    let reset = h("x-ratelimit-reset");
    assert!(
        reset >= before && reset <= before + 2,
        "{reset} vs {before}"
    );

    let resp = reqwest::Client::new()
        .get(format!("{}/deployments", sim.base_url))
        .bearer_auth(WRITE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-ratelimit-limit"], "1000");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "199");
}

#[tokio::test]
async fn a_starter_token_hammered_from_many_tasks_stays_within_its_limit() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(
        ClientConfig {
            max_budget_wait: Duration::from_secs(60),
            ..config(&sim)
        }
        .with_observer(rec.clone()),
    )
    .unwrap();
    let t = token(STARTER);
    let created = api.create(&t, &create_req("main")).await.unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let api = api.clone();
        let t = t.clone();
        let id = created.id.clone();
        tasks.push(tokio::spawn(async move {
            // 60 requests in all: every task one, every second task two.
            let n = if i % 2 == 0 { 2 } else { 1 };
            for _ in 0..n {
                if i % 3 == 0 {
                    api.list(&t, &ListQuery::default()).await.unwrap();
                } else {
                    api.get(&t, &id).await.unwrap();
                }
            }
        }));
    }
    // Calls are seen waiting for budget while the burst is spent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (`waiting()` counts every token of the process-wide registry, which other tests share.)
    assert!(api.waiting() > 0, "calls wait for budget");
    assert!(
        api.budget(&t).waiting > 0,
        "calls of this token wait for budget"
    );
    let snap = api.budget(&t);
    assert!(snap.synced);
    assert_eq!((snap.limit_per_minute, snap.burst), (100, 20));
    assert!(snap.remaining < 1.0, "{snap:?}");
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(api.budget(&t).waiting, 0);
    let s = stats(&sim).await;
    assert_eq!(s["by_status"].get("429"), None, "no 429 at all: {s}");
    assert_eq!(s["total"], 61);
    // 1 create + 60 calls against a burst of 20 refilled at 100/min: 41 × 0.6 s at least.
    assert!(
        elapsed >= Duration::from_secs(23),
        "the limit was respected, not bypassed: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(35),
        "and the budget was used, not wasted: {elapsed:?}"
    );
    assert!(
        rec.waits
            .lock()
            .unwrap()
            .iter()
            .any(|(_, w)| *w > Duration::from_secs(1))
    );
}

#[tokio::test]
async fn a_pro_token_learns_its_plan_from_the_first_answer_and_uses_its_whole_budget() {
    let sim = start(Duration::ZERO).await;
    let api = HttpClient::new(ClientConfig {
        max_budget_wait: Duration::from_secs(60),
        ..config(&sim)
    })
    .unwrap();
    let t = token(WRITE);
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let api = api.clone();
            let t = t.clone();
            tokio::spawn(async move {
                for _ in 0..3 {
                    api.list(&t, &ListQuery::default()).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let snap = api.budget(&t);
    assert_eq!((snap.limit_per_minute, snap.burst), (1000, 200));
    let s = stats(&sim).await;
    assert_eq!(s["total"], 300);
    assert_eq!(s["by_status"].get("429"), None, "no 429 at all: {s}");
    // Burst 200, then 100 more at 1000/min: 6 s. At the assumed Starter rate it would take minutes.
    assert!(elapsed >= Duration::from_secs(5), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(12), "{elapsed:?}");
}

#[tokio::test]
async fn a_call_that_would_wait_too_long_is_throttled_without_being_sent() {
    let sim = start(Duration::ZERO).await;
    let api = HttpClient::new(ClientConfig {
        max_budget_wait: Duration::from_millis(100),
        ..config(&sim)
    })
    .unwrap();
    let t = token(STARTER);
    let mut throttled = 0;
    for _ in 0..25 {
        match api.list(&t, &ListQuery::default()).await {
            Ok(_) => {}
            Err(ApiError::Throttled { retry_after, .. }) => {
                assert!(retry_after > Duration::from_millis(100));
                throttled += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(throttled > 0);
    let s = stats(&sim).await;
    assert_eq!(s["total"].as_u64().unwrap() + throttled, 25);
    assert_eq!(s["by_status"].get("429"), None);
}

#[tokio::test]
async fn a_read_if_idle_is_sent_while_the_budget_has_room_and_refused_unsent_once_it_is_spent() {
    let sim = start(Duration::ZERO).await;
    let api = HttpClient::new(ClientConfig {
        max_budget_wait: Duration::ZERO,
        ..config(&sim)
    })
    .unwrap();
    let t = token(STARTER);
    let made = api.create(&t, &create_req("main")).await.unwrap();
    let read = api.get_if_idle(&t, &made.id).await.unwrap();
    assert_eq!(read.id, made.id);

    while api.list(&t, &ListQuery::default()).await.is_ok() {}
    let sent = stats(&sim).await["total"].as_u64().unwrap();
    let refused = api.get_if_idle(&t, &made.id).await.unwrap_err();
    assert!(matches!(refused, ApiError::Throttled { .. }), "{refused:?}");
    assert_eq!(
        stats(&sim).await["total"].as_u64().unwrap(),
        sent,
        "nothing sent"
    );
}

#[tokio::test]
async fn a_forced_429_pauses_the_token_and_the_call_succeeds_after_retry_after() {
    let sim = start(Duration::ZERO).await;
    let rec = Arc::new(Recorder::default());
    let api = HttpClient::new(config(&sim).with_observer(rec.clone())).unwrap();
    let t = token(WRITE);
    set_faults(
        &sim,
        json!([{"route": "create", "force_429": 1.0, "count": 1}]),
    )
    .await;
    let started = Instant::now();
    let created = api.create(&t, &create_req("main")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(rec.outcomes(Endpoint::Create), ["rate_limited", "success"]);
    let s = stats(&sim).await;
    assert_eq!(seen(&s, "POST /v1/deployments", "429"), 1);
    assert_eq!(seen(&s, "POST /v1/deployments", "201"), 1);
    assert_eq!(sim_deployments(&sim).await.len(), 1);
    assert_eq!(api.get(&t, &created.id).await.unwrap().id, created.id);
}

#[tokio::test]
async fn a_429_pauses_every_call_of_the_token_not_just_the_one_that_got_it() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let t = token(WRITE);
    set_faults(
        &sim,
        json!([{"route": "list", "force_429": 1.0, "count": 1}]),
    )
    .await;
    let first = {
        let api = api.clone();
        let t = t.clone();
        tokio::spawn(async move { api.list(&t, &ListQuery::default()).await })
    };
    // Let the 429 arrive, then another call of the same token has to wait for the pause.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(api.budget(&t).paused_for > Duration::from_millis(500));
    let started = Instant::now();
    api.get(&t, "dep_missing").await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    first.await.unwrap().unwrap();
    assert_eq!(seen(&stats(&sim).await, "GET /v1/deployments", "429"), 1);
}

#[tokio::test]
async fn the_budget_gauges_show_each_tokens_plan_and_remaining_requests_by_fingerprint() {
    let sim = start(Duration::ZERO).await;
    // A registry of its own, so that only this test's tokens are in it.
    let api = HttpClient::with_rate_limiter(config(&sim), Arc::new(RateLimiter::new())).unwrap();
    let t = token(STARTER);
    for _ in 0..5 {
        api.list(&t, &ListQuery::default()).await.unwrap();
    }
    let metrics = Metrics::new();
    let budgets = api.budgets();
    metrics.set_budgets(&budgets);
    let text = metrics.render();

    let fingerprint = api.budget(&t).token_fingerprint;
    let value = |name: &str| -> f64 {
        let series = format!("gitdev_api_budget_{name}{{token=\"{fingerprint}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("limit"), 100.0, "the Starter plan, from the headers");
    assert_eq!(value("burst"), 20.0);
    let remaining = value("remaining");
    assert_eq!(remaining, budgets[0].remaining);
    // The server said 15 were left; a second of refill at 100/min adds less than two.
    assert!((15.0..17.0).contains(&remaining), "{remaining}");
    assert_eq!(budgets.len(), 1);
    assert!(
        !text.contains(STARTER),
        "the token leaks into /metrics:\n{text}"
    );
}

// ----- secrets -----

#[tokio::test(flavor = "current_thread")]
async fn the_token_never_appears_in_debug_output_or_logs() {
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_ansi(false),
        )
        // Only the client's own events: the simulator's logs are not under test here.
        .with(tracing_subscriber::EnvFilter::new("gitdev::api=trace"));
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let t = token(WRITE);
    let d = api.create(&t, &create_req("main")).await.unwrap();
    api.get(&t, &d.id).await.unwrap();
    let err = api
        .get(&token("sk_test_nobody"), "dep_x")
        .await
        .unwrap_err();
    set_faults(
        &sim,
        json!([{"route": "get", "error_rate": 1.0, "count": 1}]),
    )
    .await;
    api.get(&t, &d.id).await.unwrap();

    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("API attempt finished"),
        "debug logs were captured: {logs}"
    );
    let debug = format!(
        "{api:?} {:?} {t:?} {t} {err:?} {err} {:?}",
        api.config(),
        api.budgets()
    );
    for secret in [WRITE, "sk_test_nobody"] {
        assert!(!logs.contains(secret), "log leaks {secret}: {logs}");
        assert!(!debug.contains(secret), "Debug leaks {secret}: {debug}");
    }
}

// ----- what the client does not take at the server's word -----

/// A client that returns the first 429 instead of waiting it out.
fn without_429_retries(sim: &RunningSim) -> HttpClient {
    HttpClient::new(ClientConfig {
        retry: RetryPolicy {
            max_rate_limited: 0,
            ..config(sim).retry
        },
        ..config(sim)
    })
    .unwrap()
}

#[tokio::test]
async fn an_absurd_retry_after_pauses_the_token_for_at_most_a_minute() {
    let sim = start(Duration::ZERO).await;
    let api = without_429_retries(&sim);
    let t = token(WRITE);
    set_faults(
        &sim,
        json!([{"route": "list", "force_429": 1.0, "count": 1,
                "headers": {"retry-after": "99999999999999", "x-ratelimit-reset": "99999999999999999999"}}]),
    )
    .await;
    let err = api.list(&t, &ListQuery::default()).await.unwrap_err();
    let ApiError::Status {
        status: 429,
        retry_after,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        *retry_after,
        Some(Duration::from_secs(3600)),
        "capped at an hour"
    );
    let ErrorClass::RateLimited { retry_after } = err.class() else {
        panic!("{err:?}")
    };
    assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}");
    let budget = api.budget(&t);
    assert!(budget.paused_for > Duration::from_secs(50), "{budget:?}");
    assert!(budget.paused_for <= Duration::from_secs(60), "{budget:?}");
    // The next call is told to come back within the minute, not in three million years.
    let err = api.get(&t, "dep_missing").await.unwrap_err();
    let ApiError::Throttled { retry_after, .. } = err else {
        panic!("{err:?}")
    };
    assert!(retry_after <= Duration::from_secs(60), "{retry_after:?}");
}

#[tokio::test]
async fn a_retry_after_too_large_for_any_integer_does_not_panic_and_is_capped() {
    let sim = start(Duration::ZERO).await;
    let api = without_429_retries(&sim);
    set_faults(
        &sim,
        json!([{"route": "get", "force_429": 1.0, "count": 1,
                "headers": {"retry-after": "99999999999999999999999999999999"}}]),
    )
    .await;
    let err = api.get(&token(WRITE), "dep_missing").await.unwrap_err();
    let ApiError::Status { retry_after, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*retry_after, Some(Duration::from_secs(3600)));
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_an_error_naming_the_endpoint_and_the_limit() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    let limit = api.config().max_body_bytes;
    assert_eq!(limit, 1 << 20);
    set_faults(
        &sim,
        json!([{"route": "list", "pad_bytes": 2 * limit, "count": 1}]),
    )
    .await;
    let err = api
        .list(&token(WRITE), &ListQuery::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::TooLarge { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "GET /deployments answered HTTP 200 with a body larger than the limit of 1048576 bytes"
    );
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(
        seen_total(&stats(&sim).await, "GET /v1/deployments"),
        1,
        "not retried: the same request gets the same answer"
    );
}

#[tokio::test]
async fn a_create_answered_with_a_body_larger_than_the_limit_is_an_unknown_outcome() {
    let sim = start(Duration::ZERO).await;
    let api = client(&sim);
    set_faults(
        &sim,
        json!([{"route": "create", "pad_bytes": 2 << 20, "count": 1}]),
    )
    .await;
    let err = create_with_unknown_outcome(&api).await;
    assert!(err.to_string().contains("limit of 1048576 bytes"), "{err}");
    assert_eq!(sim_deployments(&sim).await.len(), 1);
}

#[tokio::test]
async fn a_build_log_is_read_up_to_its_own_limit() {
    let sim = start(Duration::ZERO).await;
    let api = HttpClient::new(ClientConfig {
        max_log_bytes: 64 * 1024,
        ..config(&sim)
    })
    .unwrap();
    let t = token(WRITE);
    let created = api.create(&t, &create_req("main")).await.unwrap();
    // Above the JSON limit would not matter: logs have their own.
    assert!(
        api.logs(&t, &created.id)
            .await
            .unwrap()
            .contains("[queued]")
    );
    set_faults(
        &sim,
        json!([{"route": "logs", "pad_bytes": 128 * 1024, "count": 1}]),
    )
    .await;
    let err = api.logs(&t, &created.id).await.unwrap_err();
    assert!(err.to_string().contains("limit of 65536 bytes"), "{err}");
}

#[tokio::test]
async fn a_closed_write_gate_refuses_creates_cancels_and_deletes_unsent_and_lets_reads_through() {
    let sim = start(Duration::from_secs(30)).await;
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = open.clone();
    let api = HttpClient::new(ClientConfig {
        write_gate: Some(std::sync::Arc::new(move || {
            gate.load(std::sync::atomic::Ordering::SeqCst)
        })),
        ..config(&sim)
    })
    .unwrap();
    let t = token(WRITE);
    let id = api.create(&t, &create_req("main")).await.unwrap().id;

    open.store(false, std::sync::atomic::Ordering::SeqCst);
    let refused = [
        api.create(&t, &create_req("main")).await.map(|_| ()),
        api.cancel(&t, &id).await.map(|_| ()),
        api.delete(&t, &id).await,
    ];
    for answer in refused {
        let err = answer.expect_err("the gate is closed");
        assert!(err.to_string().contains("not sent"), "{err}");
    }
    assert_eq!(api.get(&t, &id).await.unwrap().id, id);
    // The simulator saw the first create and the get: nothing of the refused writes.
    let s = stats(&sim).await;
    assert_eq!(seen_total(&s, "POST /v1/deployments"), 1, "{s}");
    assert_eq!(s["total"], 2, "{s}");
}
