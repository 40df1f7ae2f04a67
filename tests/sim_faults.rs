//! The simulator's faults of what stands between a client and the API, over HTTP: a gateway
//! that answers with its own HTML page after the API committed the request, headers rewritten
//! on the way, and answers larger than any client should read.

use std::time::Duration;

use gitdev::sim::{RunningSim, SimConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PROJECT: &str = "proj_8f3k29";
const ADMIN: &str = "sk_test_admin";

async fn start() -> RunningSim {
    gitdev::api::client::install_crypto_provider();
    RunningSim::start(
        SimConfig::default_fixture().with_phase_duration(Duration::ZERO),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .expect("simulator starts")
}

/// A `/_sim/` hook: its status and JSON body.
async fn hook(sim: &RunningSim, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}/_sim/{path}", sim.root_url()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("hook answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn set_faults(sim: &RunningSim, rules: Value) {
    let (status, body) = hook(sim, Method::PUT, "faults", Some(json!({ "rules": rules }))).await;
    assert_eq!(status, 200, "{body}");
}

async fn deployments(sim: &RunningSim) -> Vec<Value> {
    let (_, body) = hook(sim, Method::GET, "deployments", None).await;
    body["data"].as_array().cloned().unwrap_or_default()
}

fn create(sim: &RunningSim) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}/deployments", sim.base_url))
        .bearer_auth(ADMIN)
        .json(&json!({ "project_id": PROJECT, "branch": "main" }))
}

fn list(sim: &RunningSim) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .get(format!("{}/deployments", sim.base_url))
        .bearer_auth(ADMIN)
}

#[tokio::test]
async fn a_gateway_fault_commits_the_create_then_answers_its_status_with_an_html_page() {
    let sim = start().await;
    for (n, status) in [408u16, 520, 524].into_iter().enumerate() {
        set_faults(
            &sim,
            json!([{ "route": "create", "gateway_rate": 1.0, "gateway_status": status, "count": 1 }]),
        )
        .await;
        let resp = create(&sim).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(
            resp.headers().get("x-ratelimit-limit").is_none(),
            "a gateway's page carries no rate-limit headers"
        );
        let body = resp.text().await.unwrap();
        assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
        assert!(body.contains(&format!("Error {status}")), "{body}");
        assert_eq!(
            deployments(&sim).await.len(),
            n + 1,
            "committed all the same"
        );
    }
    let (_, stats) = hook(&sim, Method::GET, "stats", None).await;
    let by_status = &stats["by_route"]["POST /v1/deployments"]["by_status"];
    for status in ["408", "520", "524"] {
        assert_eq!(by_status[status], 1, "{stats}");
    }
    // The counted rules are used up: the next create is the API's own answer.
    assert_eq!(
        create(&sim).send().await.unwrap().status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_gateway_fault_without_a_status_answers_502() {
    let sim = start().await;
    set_faults(
        &sim,
        json!([{ "route": "list", "gateway_rate": 1.0, "count": 1 }]),
    )
    .await;
    let resp = list(&sim).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let (_, faults) = hook(&sim, Method::GET, "faults", None).await;
    assert!(faults["rules"].as_array().unwrap().is_empty(), "{faults}");
}

#[tokio::test]
async fn a_rule_can_set_an_absurd_retry_after_on_a_forced_429() {
    let sim = start().await;
    set_faults(
        &sim,
        json!([{ "route": "list", "force_429": 1.0, "count": 1,
                 "headers": { "Retry-After": "99999999999999", "X-RateLimit-Reset": "99999999999999999999" } }]),
    )
    .await;
    let resp = list(&sim).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "99999999999999");
    assert_eq!(resp.headers()["x-ratelimit-reset"], "99999999999999999999");
    assert!(
        resp.headers().get("x-ratelimit-limit").is_some(),
        "the others stay"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test]
async fn padding_makes_a_valid_answer_larger_without_a_content_length() {
    let sim = start().await;
    let pad = 3 << 20;
    set_faults(
        &sim,
        json!([{ "route": "list", "pad_bytes": pad, "count": 1 }]),
    )
    .await;
    let resp = list(&sim).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-length").is_none());
    assert_eq!(resp.content_length(), None);
    let body = resp.bytes().await.unwrap();
    assert!(body.len() > pad, "{}", body.len());
    let page: Value = serde_json::from_slice(&body).expect("still JSON");
    assert_eq!(page["meta"]["total"], 0);
}

#[tokio::test]
async fn bad_gateway_header_and_padding_rules_are_refused_naming_the_field() {
    let sim = start().await;
    for (rule, field) in [
        (json!({ "gateway_status": 204 }), "rules[0].gateway_status"),
        (json!({ "gateway_rate": 2 }), "rules[0].gateway_rate"),
        (json!({ "pad_bytes": 1u64 << 40 }), "rules[0].pad_bytes"),
        (
            json!({ "headers": { "no spaces": "1" } }),
            "rules[0].headers",
        ),
    ] {
        let (status, body) = hook(
            &sim,
            Method::PUT,
            "faults",
            Some(json!({ "rules": [rule] })),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{message}");
    }
}
