//! The request-shape rows of the error table: 400s that name the culprit, 413, 404 and 405.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{ADMIN, Api, PROJECT, READ, start};

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
