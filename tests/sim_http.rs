//! The simulator over real HTTP: every error code of the contract, headers, lifecycle,
//! pagination, the `/_sim/` hooks and fault injection, the OpenAPI document, and the binary.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gitdev::api::{
    CancelledDeployment, CreatedDeployment, DeploymentDetails, DeploymentList, DeploymentStatus,
    ErrorEnvelope,
};
use gitdev::sim::{HEAD_MAIN, RunningSim, SimConfig, TokenConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ADMIN: &str = "sk_test_admin";
const WRITE: &str = "sk_test_write";
const READ: &str = "sk_test_read";
const STARTER: &str = "sk_test_starter";
const OTHER: &str = "sk_test_other";
const PROJECT: &str = "proj_8f3k29";

fn client() -> reqwest::Client {
    // reqwest is built without a default TLS provider; plain http needs none, but building a
    // client does. Install the ring provider the crate already uses (idempotent).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn start_with(config: SimConfig) -> RunningSim {
    RunningSim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

async fn start(phase: Duration) -> RunningSim {
    start_with(SimConfig::default_fixture().with_phase_duration(phase)).await
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("does not parse ({e}): {}", self.text))
    }

    /// Asserts the status, the JSON error envelope and its code; returns the envelope.
    fn expect_error(&self, status: u16, code: &str) -> ErrorEnvelope {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "content type {ct}");
        let env: ErrorEnvelope = self.parse();
        assert_eq!(env.error.code, code, "{}", self.text);
        assert!(!env.error.message.is_empty());
        env
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    fn assert_rate_headers(&self) {
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            let v = self
                .header(h)
                .unwrap_or_else(|| panic!("{h} missing on {} {}", self.status, self.text));
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{h} is not an integer: {v}"));
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    root: String,
}

impl Api {
    fn new(sim: &RunningSim) -> Api {
        Api {
            http: client(),
            base: sim.base_url.clone(),
            root: sim.root_url(),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request answered");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        self.send(method, &url, token, body.map(|b| b.to_string()))
            .await
    }

    async fn create(&self, token: &str, branch: &str) -> Answer {
        self.call(
            Method::POST,
            "/deployments",
            Some(token),
            Some(json!({ "project_id": PROJECT, "branch": branch })),
        )
        .await
    }

    async fn created(&self, branch: &str) -> CreatedDeployment {
        let a = self.create(ADMIN, branch).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.parse()
    }

    async fn get(&self, token: &str, id: &str) -> Answer {
        self.call(
            Method::GET,
            &format!("/deployments/{id}"),
            Some(token),
            None,
        )
        .await
    }

    async fn details(&self, id: &str) -> DeploymentDetails {
        let a = self.get(ADMIN, id).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.parse()
    }

    async fn sim(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}/_sim{path}", self.root);
        self.send(method, &url, None, body.map(|b| b.to_string()))
            .await
    }

    async fn all_deployments(&self) -> Vec<Value> {
        let a = self.sim(Method::GET, "/deployments", None).await;
        assert_eq!(a.status, StatusCode::OK);
        a.json()["data"].as_array().unwrap().clone()
    }

    async fn set_faults(&self, rules: Value) {
        let a = self
            .sim(Method::PUT, "/faults", Some(json!({ "rules": rules })))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
}

// ----- create, get, lifecycle -----

#[tokio::test]
async fn create_answers_201_queued_with_the_branch_head_and_instant_phases_show_success_at_once() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let a = api.create(ADMIN, "main").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    a.assert_rate_headers();
    let c: CreatedDeployment = a.parse();
    assert_eq!(
        c.status,
        DeploymentStatus::Queued,
        "the POST answer always says queued"
    );
    assert_eq!(c.project_id, PROJECT);
    assert_eq!(c.branch, "main");
    assert_eq!(c.commit_sha, HEAD_MAIN);
    assert_eq!(c.url, format!("https://{}.git.dev", c.id));
    assert!(c.id.starts_with("dep_"));
    assert_eq!(
        a.header("location").as_deref(),
        Some(format!("/v1/deployments/{}", c.id).as_str())
    );

    let d = api.details(&c.id).await;
    assert_eq!(d.status, DeploymentStatus::Success);
    assert_eq!(d.build_duration.as_deref(), Some("0.0s"));
    assert!(d.completed_at.is_some());
    assert_eq!(d.deploy_url, c.url);
    assert_eq!(
        d.logs_url,
        format!("{}/deployments/{}/logs", sim.base_url, c.id)
    );
    assert_eq!(d.created_at, c.created_at);
    assert!(d.cancelled_by.is_none() && d.cancelled_at.is_none());
}

#[tokio::test]
async fn create_accepts_a_given_commit_env_vars_and_ignores_unknown_fields() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let a = api
        .call(
            Method::POST,
            "/deployments",
            Some(WRITE),
            Some(json!({
                "project_id": PROJECT,
                "branch": "feature/login",
                "commit_sha": "a1b2c3d",
                "env_vars": { "NODE_ENV": "production" },
                "rollback": { "enabled": true }
            })),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let c: CreatedDeployment = a.parse();
    assert_eq!(c.commit_sha, "a1b2c3d");
    let all = api.all_deployments().await;
    assert_eq!(all[0]["env_vars"]["NODE_ENV"], "production");
    assert_eq!(all[0]["created_by"], "user_write01");
}

/// Polls until terminal; returns the distinct statuses seen, in order.
async fn observe_statuses(api: &Api, id: &str) -> Vec<DeploymentStatus> {
    let mut seen: Vec<DeploymentStatus> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = api.details(id).await;
        if seen.last() != Some(&d.status) {
            seen.push(d.status);
        }
        if d.status.is_terminal() || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_deployment_walks_queued_building_deploying_success_with_short_phases() {
    let sim = start(Duration::from_millis(500)).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let early = api.details(&c.id).await;
    assert_eq!(early.build_duration, None);
    assert_eq!(early.completed_at, None);
    let seen = observe_statuses(&api, &c.id).await;
    assert_eq!(
        seen,
        [
            DeploymentStatus::Queued,
            DeploymentStatus::Building,
            DeploymentStatus::Deploying,
            DeploymentStatus::Success
        ]
    );
    let done = api.details(&c.id).await;
    assert_eq!(done.build_duration.as_deref(), Some("1.5s"));
    assert!(done.completed_at.unwrap() >= done.created_at);
}

#[tokio::test]
async fn a_fail_branch_ends_failed_after_building() {
    let sim = start(Duration::from_millis(400)).await;
    let api = Api::new(&sim);
    let c = api.created("fail/broken-build").await;
    let seen = observe_statuses(&api, &c.id).await;
    assert_eq!(
        seen,
        [
            DeploymentStatus::Queued,
            DeploymentStatus::Building,
            DeploymentStatus::Failed
        ]
    );
    let d = api.details(&c.id).await;
    assert_eq!(d.build_duration.as_deref(), Some("0.8s"));
    assert!(d.completed_at.is_some());
}

#[tokio::test]
async fn logs_are_plain_text_and_grow_as_phases_pass() {
    let sim = start(Duration::from_millis(250)).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let path = format!("/deployments/{}/logs", c.id);
    let first = api.call(Method::GET, &path, Some(READ), None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        first
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    first.assert_rate_headers();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let last = api.call(Method::GET, &path, Some(READ), None).await;
    assert!(
        last.text.lines().count() > first.text.lines().count(),
        "{}\n---\n{}",
        first.text,
        last.text
    );
    assert!(last.text.contains("[success]"), "{}", last.text);
    assert!(last.text.starts_with(first.text.lines().next().unwrap()));
}

#[tokio::test]
async fn logs_url_uses_the_host_the_client_used() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let url = format!(
        "http://localhost:{}/v1/deployments/{}",
        sim.addr.port(),
        c.id
    );
    let a = api.send(Method::GET, &url, Some(ADMIN), None).await;
    let d: DeploymentDetails = a.parse();
    assert_eq!(
        d.logs_url,
        format!(
            "http://localhost:{}/v1/deployments/{}/logs",
            sim.addr.port(),
            c.id
        )
    );
    let logs = api.send(Method::GET, &d.logs_url, Some(ADMIN), None).await;
    assert_eq!(logs.status, StatusCode::OK);
}

// ----- cancel and delete -----

#[tokio::test]
async fn cancel_records_who_and_when_and_a_second_cancel_is_not_cancellable() {
    let sim = start(Duration::from_secs(5)).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let path = format!("/deployments/{}/cancel", c.id);
    let a = api.call(Method::POST, &path, Some(ADMIN), None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    a.assert_rate_headers();
    let cancelled: CancelledDeployment = a.parse();
    assert_eq!(cancelled.status, DeploymentStatus::Cancelled);
    assert_eq!(cancelled.cancelled_by, "user_admin01");
    let d = api.details(&c.id).await;
    assert_eq!(d.status, DeploymentStatus::Cancelled);
    assert_eq!(d.cancelled_by.as_deref(), Some("user_admin01"));
    assert_eq!(d.cancelled_at, Some(cancelled.cancelled_at));
    assert!(d.completed_at.is_some() && d.build_duration.is_some());

    let again = api.call(Method::POST, &path, Some(ADMIN), None).await;
    let env = again.expect_error(409, "not_cancellable");
    assert_eq!(env.error.details["status"], "cancelled");
    again.assert_rate_headers();
}

#[tokio::test]
async fn cancel_of_a_finished_deployment_is_409_not_cancellable() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    for branch in ["main", "fail/broken-build"] {
        let c = api.created(branch).await;
        let a = api
            .call(
                Method::POST,
                &format!("/deployments/{}/cancel", c.id),
                Some(WRITE),
                None,
            )
            .await;
        a.expect_error(409, "not_cancellable");
    }
}

#[tokio::test]
async fn delete_answers_204_then_the_deployment_is_gone() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let path = format!("/deployments/{}", c.id);
    let a = api.call(Method::DELETE, &path, Some(WRITE), None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.text.is_empty());
    a.assert_rate_headers();
    api.get(ADMIN, &c.id).await.expect_error(404, "not_found");
    api.call(Method::DELETE, &path, Some(WRITE), None)
        .await
        .expect_error(404, "not_found");
    api.call(Method::GET, &format!("{path}/logs"), Some(WRITE), None)
        .await
        .expect_error(404, "not_found");
    assert!(api.all_deployments().await.is_empty());
}

// ----- list -----

#[tokio::test]
async fn list_is_newest_first_paginated_and_filtered_on_the_current_status() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let mut ids = Vec::new();
    for i in 0..7 {
        let branch = if i % 3 == 0 {
            "fail/broken-build"
        } else {
            "main"
        };
        ids.push(api.created(branch).await.id);
    }
    // Another project's deployment never shows.
    let o = api
        .call(
            Method::POST,
            "/deployments",
            Some(OTHER),
            Some(json!({"project_id": "proj_other", "branch": "main"})),
        )
        .await;
    assert_eq!(o.status, StatusCode::CREATED);

    let a = api
        .call(Method::GET, "/deployments", Some(READ), None)
        .await;
    a.assert_rate_headers();
    let all: DeploymentList = a.parse();
    assert_eq!(all.meta.total, 7);
    assert_eq!((all.meta.limit, all.meta.offset), (20, 0));
    let got: Vec<&str> = all.data.iter().map(|d| d.id.as_str()).collect();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want);

    let page: DeploymentList = api
        .call(
            Method::GET,
            "/deployments?limit=3&offset=2",
            Some(READ),
            None,
        )
        .await
        .parse();
    assert_eq!(page.meta.total, 7);
    assert_eq!((page.meta.limit, page.meta.offset), (3, 2));
    let got: Vec<&str> = page.data.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got, want[2..5]);

    let failed: DeploymentList = api
        .call(Method::GET, "/deployments?status=failed", Some(READ), None)
        .await
        .parse();
    assert_eq!(failed.meta.total, 3);
    assert!(
        failed
            .data
            .iter()
            .all(|d| d.status == DeploymentStatus::Failed)
    );
    let success: DeploymentList = api
        .call(
            Method::GET,
            "/deployments?status=success&limit=1",
            Some(READ),
            None,
        )
        .await
        .parse();
    assert_eq!(success.meta.total, 4);
    assert_eq!(success.data.len(), 1);
    let past_end: DeploymentList = api
        .call(Method::GET, "/deployments?offset=50", Some(READ), None)
        .await
        .parse();
    assert!(past_end.data.is_empty());
    assert_eq!(past_end.meta.total, 7);
}

// ----- the error table -----

#[tokio::test]
async fn malformed_create_bodies_are_400_invalid_request_naming_the_field() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let cases: &[(&str, &str)] = &[
        ("{not json", "body"),
        ("", "body"),
        ("[1,2]", "body"),
        (r#"{"branch":"main"}"#, "project_id"),
        (r#"{"project_id":"proj_8f3k29"}"#, "branch"),
        (r#"{"project_id":42,"branch":"main"}"#, "project_id"),
        (
            r#"{"project_id":"proj_8f3k29","branch":["main"]}"#,
            "branch",
        ),
        (
            r#"{"project_id":"proj_8f3k29","branch":"main","commit_sha":7}"#,
            "commit_sha",
        ),
        (
            r#"{"project_id":"proj_8f3k29","branch":"main","env_vars":"A=1"}"#,
            "env_vars",
        ),
        (
            r#"{"project_id":"proj_8f3k29","branch":"main","env_vars":{"A":1}}"#,
            "env_vars.A",
        ),
    ];
    for (body, field) in cases {
        let url = format!("{}/deployments", api.base);
        let a = api
            .send(Method::POST, &url, Some(ADMIN), Some(body.to_string()))
            .await;
        let env = a.expect_error(400, "invalid_request");
        assert_eq!(env.error.details["field"], *field, "{body}: {}", a.text);
        assert!(env.error.message.contains(field), "{body}: {}", a.text);
        a.assert_rate_headers();
    }
    assert!(api.all_deployments().await.is_empty());
}

#[tokio::test]
async fn unknown_branch_is_400_invalid_branch_with_project_and_branch() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let a = api.create(ADMIN, "develop").await;
    let env = a.expect_error(400, "invalid_branch");
    assert_eq!(env.error.details["project_id"], PROJECT);
    assert_eq!(env.error.details["branch"], "develop");
    assert!(env.error.message.contains("develop"));
}

#[tokio::test]
async fn malformed_commits_are_400_invalid_commit() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    for commit in ["abc", "A1B2C3D4", "zzzzzzzz", &"a".repeat(41), ""] {
        let a = api
            .call(
                Method::POST,
                "/deployments",
                Some(ADMIN),
                Some(json!({"project_id": PROJECT, "branch": "main", "commit_sha": commit})),
            )
            .await;
        a.expect_error(400, "invalid_commit");
    }
}

#[tokio::test]
async fn bad_query_values_are_400_invalid_parameter_naming_the_parameter() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("status=done", "status"),
        ("status=", "status"),
    ] {
        let a = api
            .call(
                Method::GET,
                &format!("/deployments?{query}"),
                Some(READ),
                None,
            )
            .await;
        let env = a.expect_error(400, "invalid_parameter");
        assert_eq!(env.error.details["parameter"], param, "{query}");
        assert!(env.error.message.contains(param), "{query}");
    }
}

#[tokio::test]
async fn missing_malformed_unknown_and_expired_tokens_are_401_unauthorized() {
    let mut config = SimConfig::default_fixture();
    let mut expired = TokenConfig::new(
        PROJECT,
        gitdev::sim::Scope::Admin,
        gitdev::sim::Plan::Pro,
        "user_gone",
    );
    expired.expired = true;
    config.tokens.insert("sk_test_expired".into(), expired);
    let sim = start_with(config).await;
    let api = Api::new(&sim);
    let url = format!("{}/deployments", api.base);
    let cases: [(Option<&str>, &str); 5] = [
        (None, "missing"),
        (Some("Basic c2tfdGVzdF9hZG1pbg=="), "malformed"),
        (Some("Bearer"), "malformed"),
        (Some("Bearer sk_live_nope"), "unknown"),
        (Some("Bearer sk_test_expired"), "expired"),
    ];
    for (header, reason) in cases {
        let mut req = api.http.get(&url);
        if let Some(h) = header {
            req = req.header("authorization", h);
        }
        let resp = req.send().await.unwrap();
        let a = Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap(),
        };
        let env = a.expect_error(401, "unauthorized");
        assert_eq!(env.error.details["reason"], reason, "{header:?}");
        a.assert_rate_headers();
        assert_eq!(a.header("x-ratelimit-limit").as_deref(), Some("100"));
    }
}

#[tokio::test]
async fn a_read_token_reads_but_cannot_create_cancel_or_delete() {
    let sim = start(Duration::from_secs(5)).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    assert_eq!(api.get(READ, &c.id).await.status, StatusCode::OK);
    let a = api.create(READ, "main").await;
    let env = a.expect_error(403, "insufficient_scope");
    assert!(env.error.message.contains("deploy:write"));
    a.assert_rate_headers();
    api.call(
        Method::POST,
        &format!("/deployments/{}/cancel", c.id),
        Some(READ),
        None,
    )
    .await
    .expect_error(403, "insufficient_scope");
    api.call(
        Method::DELETE,
        &format!("/deployments/{}", c.id),
        Some(READ),
        None,
    )
    .await
    .expect_error(403, "insufficient_scope");
    assert_eq!(api.details(&c.id).await.status, DeploymentStatus::Queued);
}

#[tokio::test]
async fn another_projects_deployment_is_404_as_if_absent_and_a_foreign_project_is_project_not_found()
 {
    let sim = start(Duration::from_secs(5)).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    api.get(OTHER, &c.id).await.expect_error(404, "not_found");
    api.get(ADMIN, "dep_doesnotexist")
        .await
        .expect_error(404, "not_found");
    api.call(
        Method::POST,
        &format!("/deployments/{}/cancel", c.id),
        Some(OTHER),
        None,
    )
    .await
    .expect_error(404, "not_found");
    api.call(
        Method::DELETE,
        &format!("/deployments/{}", c.id),
        Some(OTHER),
        None,
    )
    .await
    .expect_error(404, "not_found");
    api.call(
        Method::GET,
        &format!("/deployments/{}/logs", c.id),
        Some(OTHER),
        None,
    )
    .await
    .expect_error(404, "not_found");
    let a = api
        .call(
            Method::POST,
            "/deployments",
            Some(ADMIN),
            Some(json!({"project_id": "proj_other", "branch": "main"})),
        )
        .await;
    let env = a.expect_error(404, "project_not_found");
    assert_eq!(env.error.details["project_id"], "proj_other");
    api.call(
        Method::POST,
        "/deployments",
        Some(ADMIN),
        Some(json!({"project_id": "proj_nope", "branch": "main"})),
    )
    .await
    .expect_error(404, "project_not_found");
    // Untouched by the foreign token.
    assert_eq!(api.details(&c.id).await.status, DeploymentStatus::Queued);
}

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_consumes_nothing() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    // Starter: burst 20, all admitted at once.
    for i in 0..20 {
        let a = api
            .call(Method::GET, "/deployments", Some(STARTER), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        assert_eq!(a.header("x-ratelimit-limit").as_deref(), Some("100"));
    }
    // Then the bucket runs dry (the refill of 1.67/s may admit a few more meanwhile).
    let mut limited = None;
    for _ in 0..100 {
        let a = api
            .call(Method::GET, "/deployments", Some(STARTER), None)
            .await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(a);
            break;
        }
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let limited = limited.expect("the bucket runs dry");
    let env = limited.expect_error(429, "rate_limited");
    assert_eq!(env.error.details["limit"], 100);
    limited.assert_rate_headers();
    assert_eq!(
        limited.header("x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1, "0.6 s rounds up to 1 s");
    let reset: u64 = limited
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset > now && reset <= now + 13, "reset {reset} now {now}");
    // Other tokens have their own buckets.
    assert_eq!(
        api.call(Method::GET, "/deployments", Some(WRITE), None)
            .await
            .status,
        StatusCode::OK
    );
    // 429s consumed nothing: after Retry-After one request is admitted even though we kept
    // hammering meanwhile.
    for _ in 0..5 {
        api.call(Method::GET, "/deployments", Some(STARTER), None)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let a = api
        .call(Method::GET, "/deployments", Some(STARTER), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn bodies_over_64_kib_are_413_payload_too_large() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let big = json!({
        "project_id": PROJECT,
        "branch": "main",
        "env_vars": { "BIG": "x".repeat(70 * 1024) }
    });
    let a = api
        .call(Method::POST, "/deployments", Some(ADMIN), Some(big))
        .await;
    a.expect_error(413, "payload_too_large");
    a.assert_rate_headers();
    assert!(api.all_deployments().await.is_empty());
    // Chunked (no Content-Length) too: the limit holds while reading.
    let addr = sim.addr;
    let head = tokio::task::spawn_blocking(move || chunked_post(addr, 80))
        .await
        .unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("payload_too_large"), "{head}");
}

/// Sends `kib` chunks of 1 KiB to `POST /v1/deployments` and returns what the server said.
fn chunked_post(addr: std::net::SocketAddr, kib: usize) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = write!(
        s,
        "POST /v1/deployments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    let chunk = vec![b' '; 1024];
    for _ in 0..kib {
        if write!(s, "400\r\n").is_err()
            || s.write_all(&chunk).is_err()
            || write!(s, "\r\n").is_err()
        {
            break; // the server answered and closed
        }
    }
    let _ = write!(s, "0\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn unknown_routes_are_404_json_and_wrong_methods_405_json_with_allow() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    for path in ["/nothing", "/deployments/x/y/z", "/deployments/x/restart"] {
        let a = api.call(Method::GET, path, Some(ADMIN), None).await;
        a.expect_error(404, "not_found");
        a.assert_rate_headers();
    }
    let root = api
        .send(Method::GET, &format!("{}/", api.root), None, None)
        .await;
    root.expect_error(404, "not_found");
    for (method, path, allow) in [
        (Method::PUT, "/deployments", "GET, POST"),
        (Method::PATCH, "/deployments/dep_x", "GET, DELETE"),
        (Method::GET, "/deployments/dep_x/cancel", "POST"),
        (Method::DELETE, "/deployments/dep_x/logs", "GET"),
    ] {
        let a = api.call(method.clone(), path, Some(ADMIN), None).await;
        a.expect_error(405, "method_not_allowed");
        assert_eq!(a.header("allow").as_deref(), Some(allow), "{method} {path}");
        a.assert_rate_headers();
    }
    let a = api.sim(Method::POST, "/stats", None).await;
    a.expect_error(405, "method_not_allowed");
    api.sim(Method::GET, "/nope", None)
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn every_api_response_carries_the_rate_limit_headers() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let answers = vec![
        api.create(ADMIN, "main").await,
        api.create(ADMIN, "nope").await,
        api.create(READ, "main").await,
        api.call(Method::GET, "/deployments", Some(ADMIN), None)
            .await,
        api.call(Method::GET, "/deployments?limit=0", Some(ADMIN), None)
            .await,
        api.get(ADMIN, &c.id).await,
        api.get(ADMIN, "dep_nope").await,
        api.call(
            Method::GET,
            &format!("/deployments/{}/logs", c.id),
            Some(ADMIN),
            None,
        )
        .await,
        api.call(
            Method::POST,
            &format!("/deployments/{}/cancel", c.id),
            Some(ADMIN),
            None,
        )
        .await,
        api.call(
            Method::DELETE,
            &format!("/deployments/{}", c.id),
            Some(ADMIN),
            None,
        )
        .await,
        api.call(Method::GET, "/deployments", None, None).await,
        api.call(Method::GET, "/what", Some(ADMIN), None).await,
    ];
    let statuses: BTreeSet<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(
        statuses,
        BTreeSet::from([200, 201, 204, 400, 401, 403, 404, 409])
    );
    for a in &answers {
        a.assert_rate_headers();
        if !a.status.is_success() {
            let env: ErrorEnvelope = a.parse();
            assert!(!env.error.code.is_empty());
        }
    }
    let admin_limit = answers[0].header("x-ratelimit-limit").unwrap();
    assert_eq!(admin_limit, "10000", "Enterprise default");
    let pro_limit = answers[2].header("x-ratelimit-limit").unwrap();
    assert_eq!(pro_limit, "1000");
}

// ----- /_sim/ hooks -----

#[tokio::test]
async fn dashboard_cancel_and_delete_act_behind_the_clients_back() {
    let sim = start(Duration::from_secs(5)).await;
    let api = Api::new(&sim);
    let a = api.created("main").await;
    let b = api.created("main").await;
    let r = api
        .sim(Method::POST, &format!("/deployments/{}/cancel", a.id), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let d = api.details(&a.id).await;
    assert_eq!(d.status, DeploymentStatus::Cancelled);
    assert_eq!(d.cancelled_by.as_deref(), Some("user_dashboard"));
    api.sim(Method::POST, &format!("/deployments/{}/cancel", a.id), None)
        .await
        .expect_error(409, "not_cancellable");

    let r = api
        .sim(Method::DELETE, &format!("/deployments/{}", b.id), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    api.get(ADMIN, &b.id).await.expect_error(404, "not_found");
    api.sim(Method::DELETE, &format!("/deployments/{}", b.id), None)
        .await
        .expect_error(404, "not_found");

    let all = api.all_deployments().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], a.id.as_str());
    assert_eq!(all[0]["cancelled_by"], "user_dashboard");
}

#[tokio::test]
async fn sim_deployments_lists_every_project_with_full_details() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    api.created("main").await;
    let o = api
        .call(
            Method::POST,
            "/deployments",
            Some(OTHER),
            Some(json!({"project_id": "proj_other", "branch": "main"})),
        )
        .await;
    assert_eq!(o.status, StatusCode::CREATED);
    let all = api.all_deployments().await;
    assert_eq!(all.len(), 2);
    for d in &all {
        let _: DeploymentDetails = serde_json::from_value(d.clone()).unwrap();
    }
    let only = api
        .sim(Method::GET, "/deployments?project_id=proj_other", None)
        .await
        .json();
    assert_eq!(only["meta"]["total"], 1);
    assert_eq!(only["data"][0]["project_id"], "proj_other");
}

#[tokio::test]
async fn stats_count_requests_by_route_status_and_token_and_reset() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    api.create(ADMIN, "nope").await;
    api.get(READ, &c.id).await;
    api.get(READ, "dep_nope").await;
    api.call(Method::GET, "/deployments", None, None).await;
    let s = api.sim(Method::GET, "/stats", None).await.json();
    assert_eq!(s["total"], 5, "{s}");
    assert_eq!(s["by_route"]["POST /v1/deployments"]["total"], 2);
    assert_eq!(s["by_route"]["POST /v1/deployments"]["by_status"]["201"], 1);
    assert_eq!(s["by_route"]["POST /v1/deployments"]["by_status"]["400"], 1);
    assert_eq!(
        s["by_route"]["GET /v1/deployments/{id}"]["by_status"]["200"],
        1
    );
    assert_eq!(
        s["by_route"]["GET /v1/deployments/{id}"]["by_status"]["404"],
        1
    );
    assert_eq!(s["by_route"]["GET /v1/deployments"]["by_status"]["401"], 1);
    assert_eq!(s["by_status"]["404"], 1);
    assert_eq!(s["by_token"][ADMIN], 2);
    assert_eq!(s["by_token"][READ], 2);
    assert_eq!(s["unauthenticated"], 1);
    let r = api.sim(Method::POST, "/stats/reset", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let s = api.sim(Method::GET, "/stats", None).await.json();
    assert_eq!(s["total"], 0);
}

// ----- faults -----

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

// ----- OpenAPI -----

#[tokio::test]
async fn openapi_json_parses_and_lists_every_path_and_operation() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let a = api
        .send(
            Method::GET,
            &format!("{}/openapi.json", api.base),
            None,
            None,
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let doc = a.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    assert_eq!(doc["servers"][0]["url"], sim.base_url.as_str());
    let paths = doc["paths"].as_object().unwrap();
    let ops: BTreeSet<String> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(move |m| format!("{} {p}", m.to_uppercase()))
        })
        .collect();
    let want: BTreeSet<String> = [
        "POST /deployments",
        "GET /deployments",
        "GET /deployments/{id}",
        "DELETE /deployments/{id}",
        "POST /deployments/{id}/cancel",
        "GET /deployments/{id}/logs",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(ops, want);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let limit = &paths["/deployments"]["get"]["parameters"][0];
    assert_eq!(limit["schema"]["maximum"], 100);
    let body = &doc["components"]["schemas"]["CreateDeploymentRequest"];
    assert_eq!(body["required"], json!(["project_id", "branch"]));
    assert_eq!(
        body["properties"]["env_vars"]["additionalProperties"]["type"],
        "string"
    );
}

// ----- the binary -----

#[test]
fn the_gitdev_sim_binary_prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitdev-sim"))
        .args(["--listen", "127.0.0.1:0", "--phase-duration", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gitdev-sim starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(e) => {
            let _ = child.kill();
            panic!("no listening line: {e}");
        }
    };
    let root = line
        .trim()
        .strip_prefix("gitdev-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(root.starts_with("http://127.0.0.1:"), "{root}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        client()
            .post(format!("{root}/v1/deployments"))
            .header("authorization", "Bearer sk_test_write")
            .json(&json!({"project_id": PROJECT, "branch": "main"}))
            .send()
            .await
            .map(|r| r.status())
    });

    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = None;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if exited.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        assert_eq!(status.unwrap(), StatusCode::CREATED);
        assert!(
            exited.is_some_and(|s| s.success()),
            "SIGTERM ends it cleanly: {exited:?}"
        );
    }
    #[cfg(not(unix))]
    {
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn shutdown_stops_the_server_and_dropping_it_does_too() {
    let sim = start(Duration::ZERO).await;
    let base = sim.base_url.clone();
    sim.shutdown().await;
    let http = client();
    assert!(
        http.get(format!("{base}/deployments"))
            .send()
            .await
            .is_err()
    );

    let sim = start(Duration::ZERO).await;
    let base = sim.base_url.clone();
    drop(sim);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http.get(format!("{base}/deployments")).send().await.is_ok() {
        assert!(Instant::now() < deadline, "still serving after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ----- throughput (run by hand: cargo test --release --test sim_http -- --ignored) -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-dependent; run by hand to measure throughput"]
async fn sustains_thousands_of_requests_per_second() {
    let mut config = SimConfig::default_fixture().with_phase_duration(Duration::ZERO);
    if let Some(t) = config.tokens.get_mut(ADMIN) {
        t.rate_limit = Some(gitdev::sim::RateLimit {
            per_minute: 100_000_000,
            burst: 1_000_000,
        });
    }
    let sim = start_with(config).await;
    let api = Api::new(&sim);
    for _ in 0..200 {
        api.created("main").await;
    }
    let ids: Vec<String> = api
        .all_deployments()
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let per_worker = 2_000;
    let workers = 16;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let http = api.http.clone();
        let base = api.base.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let url = if i % 10 == 0 {
                    format!("{base}/deployments?limit=20")
                } else {
                    format!("{base}/deployments/{}", ids[(i + w) % ids.len()])
                };
                let r = http
                    .get(url)
                    .header("authorization", format!("Bearer {ADMIN}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = (per_worker * workers) as f64;
    let rate = n / started.elapsed().as_secs_f64();
    eprintln!(
        "{n} requests in {:?}: {rate:.0} requests/s (client and server on the same cores)",
        started.elapsed()
    );
    assert!(rate > 1_000.0, "{rate:.0} requests/s");
}
