//! Cancel and delete through the API: who and when, and what is left afterwards.

use std::time::Duration;

use gitdev::api::{CancelledDeployment, DeploymentStatus};
use reqwest::{Method, StatusCode};

use crate::support::{ADMIN, Api, WRITE, start};

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
