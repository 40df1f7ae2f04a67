//! The token rows of the error table: 401 reasons, 403 scopes, and another project's
//! deployments answering 404 as if absent.

use std::time::Duration;

use gitdev::api::DeploymentStatus;
use gitdev::sim::{SimConfig, TokenConfig};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{ADMIN, Answer, Api, OTHER, PROJECT, READ, start, start_with};

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
