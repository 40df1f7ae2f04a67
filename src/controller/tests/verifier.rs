//! The mocked Kubernetes API server checks itself: a wrong request fails the test.

use super::support::*;

#[tokio::test]
#[should_panic(expected = "unexpected Kubernetes request #3: k8s write status")]
async fn the_mock_api_server_names_a_request_that_was_not_expected() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));
    let _ = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event("Warning", "CredentialsNotFound"),
        ])
        .await;
}

#[tokio::test]
#[should_panic(
    expected = "Kubernetes request #2 was k8s event Warning CredentialsNotFound, expected k8s write status"
)]
async fn the_mock_api_server_names_a_request_out_of_order() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));
    let _ = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::status(|_| {}),
            Expect::event("Warning", "CredentialsNotFound"),
        ])
        .await;
}

#[tokio::test]
#[should_panic(expected = "without making the expected Kubernetes requests")]
async fn the_mock_api_server_names_an_expected_request_that_was_not_made() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));
    let _ = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event("Warning", "CredentialsNotFound"),
            Expect::status(|_| {}),
            Expect::get_secret("another"),
        ])
        .await;
}
