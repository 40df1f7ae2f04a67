//! Create and get: the POST answer, the phases a deployment walks through, and its logs.

use std::time::{Duration, Instant};

use gitdev::api::{CreatedDeployment, DeploymentDetails, DeploymentStatus};
use gitdev::sim::HEAD_MAIN;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{ADMIN, Api, PROJECT, READ, WRITE, start};

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
async fn the_sim_listing_gives_exact_creation_and_completion_times_for_benchmarks() {
    let sim = start(Duration::from_millis(300)).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let exact = |v: &serde_json::Value, field: &str| -> Option<jiff::Timestamp> {
        v[field].as_str().map(|s| s.parse().expect("RFC 3339 time"))
    };
    let running = api.all_deployments().await;
    let created = exact(&running[0], "created_at_exact").expect("created_at_exact");
    assert!(
        running[0]
            .get("completed_at_exact")
            .is_none_or(|v| v.is_null())
    );
    // The wire's created_at is the exact time cut to whole seconds.
    assert_eq!(
        created.as_second(),
        c.created_at.as_second(),
        "{created} vs {}",
        c.created_at
    );
    observe_statuses(&api, &c.id).await;
    let done = api.all_deployments().await;
    let completed = exact(&done[0], "completed_at_exact").expect("completed_at_exact once done");
    // Three phases of 300 ms: exactly 900 ms after creation, to the nanosecond.
    assert_eq!(
        completed.duration_since(created),
        jiff::SignedDuration::from_millis(900)
    );
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
