//! The served OpenAPI document.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Api, start};

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
