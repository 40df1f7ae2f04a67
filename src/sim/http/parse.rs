//! Request bodies and query strings, checked field by field so that every 400 names the field.

// Parsers return the finished 4xx answer as their error: built once on the error path and
// handed back as is, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode, header};
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::respond::{details, error_response, invalid_parameter, invalid_request};
use super::route::percent_decode;
use crate::sim::wire::{CreateRequest, DeploymentStatus};

/// A request body that has not fully arrived after this long answers 400.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) async fn read_body(req: Request<Body>, limit: usize) -> Result<Bytes, Response<Body>> {
    let too_large = || {
        error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("Request body is larger than {limit} bytes"),
            details(json!({ "limit_bytes": limit })),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let mut stream = req.into_body().into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                invalid_request(
                    "body",
                    format!("Request body could not be read: {e}"),
                    json!({}),
                )
            })?;
            if buf.len() + chunk.len() > limit {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_READ_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(Bytes::from(buf)),
        Ok(Err(resp)) => Err(resp),
        Err(_) => Err(invalid_request(
            "body",
            format!(
                "Request body did not arrive within {} s",
                BODY_READ_TIMEOUT.as_secs()
            ),
            json!({}),
        )),
    }
}

fn required_string(obj: &Map<String, Value>, field: &str) -> Result<String, Response<Body>> {
    match obj.get(field) {
        None | Some(Value::Null) => Err(invalid_request(
            field,
            format!("Missing required field '{field}'"),
            json!({ "problem": "missing", "expected": "string" }),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid_request(
            field,
            format!(
                "Field '{field}' must be a string, not {}",
                json_type_name(other)
            ),
            json!({ "problem": "type", "expected": "string", "got": json_type_name(other) }),
        )),
    }
}

/// Reads the create body into the simulator's wire type, naming the field of any problem.
pub(super) fn parse_create(bytes: &[u8]) -> Result<CreateRequest, Response<Body>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid_request(
            "body",
            "Request body is empty; expected a JSON object".to_owned(),
            json!({ "problem": "missing" }),
        ));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        invalid_request(
            "body",
            format!("Request body is not valid JSON: {e}"),
            json!({ "problem": "syntax", "line": e.line(), "column": e.column() }),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(invalid_request(
            "body",
            format!(
                "Request body must be a JSON object, not {}",
                json_type_name(&value)
            ),
            json!({ "problem": "type", "expected": "object", "got": json_type_name(&value) }),
        ));
    };
    let project_id = required_string(&obj, "project_id")?;
    let branch = required_string(&obj, "branch")?;
    let commit_sha = match obj.get("commit_sha") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(invalid_request(
                "commit_sha",
                format!(
                    "Field 'commit_sha' must be a string, not {}",
                    json_type_name(other)
                ),
                json!({ "problem": "type", "expected": "string", "got": json_type_name(other) }),
            ));
        }
    };
    let env_vars = match obj.get("env_vars") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let mut vars = BTreeMap::new();
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        vars.insert(k.clone(), s.clone());
                    }
                    other => {
                        let field = format!("env_vars.{k}");
                        return Err(invalid_request(
                            &field,
                            format!(
                                "Field '{field}' must be a string, not {}",
                                json_type_name(other)
                            ),
                            json!({ "problem": "type", "expected": "string", "got": json_type_name(other) }),
                        ));
                    }
                }
            }
            Some(vars)
        }
        Some(other) => {
            return Err(invalid_request(
                "env_vars",
                format!(
                    "Field 'env_vars' must be an object of strings, not {}",
                    json_type_name(other)
                ),
                json!({ "problem": "type", "expected": "object", "got": json_type_name(other) }),
            ));
        }
    };
    Ok(CreateRequest {
        project_id,
        branch,
        commit_sha,
        env_vars,
    })
}

/// The query of `GET /deployments`, with the documented defaults filled in.
pub(super) struct ListParams {
    pub limit: u32,
    pub offset: u64,
    pub status: Option<DeploymentStatus>,
}

pub(super) fn parse_list_query(query: Option<&str>) -> Result<ListParams, Response<Body>> {
    let mut p = ListParams {
        limit: 20,
        offset: 0,
        status: None,
    };
    let Some(query) = query else {
        return Ok(p);
    };
    for pair in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k, true);
        match key.as_str() {
            "limit" => {
                let v = percent_decode(v, true);
                const EXPECTED: &str = "an integer from 1 to 100";
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid_parameter("limit", &v, EXPECTED));
                }
                match v.parse::<u32>() {
                    Ok(n) if (1..=100).contains(&n) => p.limit = n,
                    _ => return Err(invalid_parameter("limit", &v, EXPECTED)),
                }
            }
            "offset" => {
                let v = percent_decode(v, true);
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid_parameter(
                        "offset",
                        &v,
                        "an integer greater than or equal to 0",
                    ));
                }
                // All digits: only overflow can fail, and such an offset is past any list.
                p.offset = v.parse::<u64>().unwrap_or(u64::MAX);
            }
            "status" => {
                let v = percent_decode(v, true);
                match v.parse::<DeploymentStatus>() {
                    Ok(s) => p.status = Some(s),
                    Err(_) => {
                        return Err(invalid_parameter(
                            "status",
                            &v,
                            "one of queued, building, deploying, success, failed, cancelled",
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(p)
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::wire::ErrorEnvelope;
    #[test]
    fn list_queries_are_checked_and_defaulted() {
        let p = parse_list_query(None).ok().unwrap();
        assert_eq!((p.limit, p.offset, p.status), (20, 0, None));
        let p = parse_list_query(Some("limit=100&offset=5&status=failed&x=1"))
            .ok()
            .unwrap();
        assert_eq!(
            (p.limit, p.offset, p.status),
            (100, 5, Some(DeploymentStatus::Failed))
        );
        for bad in [
            "limit=0",
            "limit=101",
            "limit=abc",
            "limit=",
            "limit=-1",
            "limit=1.5",
            "offset=-1",
            "offset=x",
            "status=done",
        ] {
            assert!(parse_list_query(Some(bad)).is_err(), "{bad}");
        }
        let p = parse_list_query(Some("offset=99999999999999999999999"))
            .ok()
            .unwrap();
        assert_eq!(p.offset, u64::MAX);
    }

    #[tokio::test]
    async fn create_bodies_name_the_offending_field() {
        async fn field(body: &str) -> String {
            let resp = parse_create(body.as_bytes()).unwrap_err();
            assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let env: ErrorEnvelope = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(env.error.code, "invalid_request");
            let field = env.error.details["field"].as_str().unwrap().to_owned();
            assert!(env.error.message.contains(&field), "{env:?}");
            field
        }
        assert_eq!(field("").await, "body");
        assert_eq!(field("{").await, "body");
        assert_eq!(field("[]").await, "body");
        assert_eq!(field(r#"{"branch":"main"}"#).await, "project_id");
        assert_eq!(
            field(r#"{"project_id":1,"branch":"main"}"#).await,
            "project_id"
        );
        assert_eq!(field(r#"{"project_id":"p"}"#).await, "branch");
        assert_eq!(
            field(r#"{"project_id":"p","branch":"main","env_vars":[]}"#).await,
            "env_vars"
        );
        assert_eq!(
            field(r#"{"project_id":"p","branch":"main","env_vars":{"A":1}}"#).await,
            "env_vars.A"
        );
        assert_eq!(
            field(r#"{"project_id":"p","branch":"main","commit_sha":12}"#).await,
            "commit_sha"
        );
        let ok = parse_create(
            br#"{"project_id":"p","branch":"main","commit_sha":null,"env_vars":{"A":"1"},"extra":true}"#,
        )
        .ok()
        .unwrap();
        assert_eq!(ok.env_vars.unwrap()["A"], "1");
        assert_eq!(ok.commit_sha, None);
    }
}
