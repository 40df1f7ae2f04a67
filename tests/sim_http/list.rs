//! Listing: newest first, pagination, status filter, and project isolation.

use std::time::Duration;

use gitdev::api::{DeploymentList, DeploymentStatus};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Api, OTHER, READ, start};

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
