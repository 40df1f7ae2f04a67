//! Fault injection through `/_sim/faults`: errors, forced 429s, latency, and dropped answers.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{ADMIN, Api, PROJECT, start};

#[tokio::test]
async fn an_error_rate_of_one_with_a_count_fails_exactly_the_next_n_matching_requests() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.set_faults(json!([{ "route": "create", "error_rate": 1.0, "count": 2 }]))
        .await;
    // Other routes are untouched.
    assert_eq!(
        api.call(Method::GET, "/deployments", Some(ADMIN), None)
            .await
            .status,
        StatusCode::OK
    );
    for _ in 0..2 {
        let a = api.create(ADMIN, "main").await;
        a.expect_error(500, "internal_error");
        a.assert_rate_headers();
    }
    assert!(
        api.all_deployments().await.is_empty(),
        "a 500 commits nothing"
    );
    assert_eq!(api.create(ADMIN, "main").await.status, StatusCode::CREATED);
    let f = api.sim(Method::GET, "/faults", None).await.json();
    assert_eq!(
        f["rules"].as_array().unwrap().len(),
        0,
        "the counted rule is used up"
    );
}

#[tokio::test]
async fn faults_can_be_read_replaced_and_cleared_and_bad_rules_are_refused() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.set_faults(json!([{ "error_rate": 0.5 }])).await;
    let f = api.sim(Method::GET, "/faults", None).await.json();
    assert_eq!(f["rules"][0]["route"], "all");
    assert_eq!(f["rules"][0]["error_rate"], 0.5);
    let bad = api
        .sim(
            Method::PUT,
            "/faults",
            Some(json!({ "rules": [{ "error_rate": 2 }] })),
        )
        .await;
    let env = bad.expect_error(400, "invalid_request");
    assert!(env.error.message.contains("error_rate"), "{}", bad.text);
    let bad = api
        .sim(
            Method::PUT,
            "/faults",
            Some(json!({ "rules": [{ "route": "nope" }] })),
        )
        .await;
    bad.expect_error(400, "invalid_request");
    let cleared = api.sim(Method::DELETE, "/faults", None).await;
    assert_eq!(cleared.status, StatusCode::OK);
    let f = api.sim(Method::GET, "/faults", None).await.json();
    assert!(f["rules"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn force_429_answers_rate_limited_with_retry_after() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.set_faults(json!([{ "route": "list", "force_429": 1.0, "count": 1 }]))
        .await;
    let a = api
        .call(Method::GET, "/deployments", Some(ADMIN), None)
        .await;
    a.expect_error(429, "rate_limited");
    assert!(a.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    a.assert_rate_headers();
    let a = api
        .call(Method::GET, "/deployments", Some(ADMIN), None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn latency_after_commits_the_create_before_the_client_gets_its_answer() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.set_faults(json!([{
        "route": "create", "latency_ms": 1500, "latency_when": "after", "count": 1
    }]))
    .await;
    let started = Instant::now();
    let pending = {
        let http = api.http.clone();
        let url = format!("{}/deployments", api.base);
        tokio::spawn(async move {
            http.post(url)
                .header("authorization", format!("Bearer {ADMIN}"))
                .json(&json!({"project_id": PROJECT, "branch": "main"}))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    // The deployment shows up while the client still waits for its answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.all_deployments().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the create never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pending.is_finished(), "the answer is still held back");
    let status = pending.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(started.elapsed() >= Duration::from_millis(1500));
}

#[tokio::test]
async fn latency_before_delays_the_answer() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.set_faults(json!([{ "route": "get", "latency_ms": 300, "count": 1 }]))
        .await;
    let started = Instant::now();
    api.get(ADMIN, "dep_x").await.expect_error(404, "not_found");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_dropped_create_leaves_the_client_without_an_answer_but_the_deployment_exists() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.set_faults(json!([{ "route": "create", "drop_rate": 1.0, "count": 1 }]))
        .await;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        api.http
            .post(format!("{}/deployments", api.base))
            .header("authorization", format!("Bearer {ADMIN}"))
            .json(&json!({"project_id": PROJECT, "branch": "main"}))
            .send(),
    )
    .await
    .expect("the client is not left hanging");
    let err = result.expect_err("no HTTP answer at all, not even a 5xx");
    assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
    let all = api.all_deployments().await;
    assert_eq!(
        all.len(),
        1,
        "exactly one deployment: the server processed it once"
    );
    assert_eq!(all[0]["branch"], "main");
    let s = api.sim(Method::GET, "/stats", None).await.json();
    assert_eq!(s["dropped"], 1);
    assert_eq!(
        s["by_route"]["POST /v1/deployments"]["by_status"]["dropped"],
        1
    );
    // The rule is used up: the next create is answered.
    assert_eq!(api.create(ADMIN, "main").await.status, StatusCode::CREATED);
}
