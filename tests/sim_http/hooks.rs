//! The `/_sim/` hooks a test uses behind the client's back: dashboard actions, the full
//! deployment list, and request statistics.

use std::time::Duration;

use gitdev::api::{DeploymentDetails, DeploymentStatus};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{ADMIN, Api, OTHER, READ, start};

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
