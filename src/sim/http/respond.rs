//! The answers: JSON bodies, the error envelope of every non-2xx status, rate-limit headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, Method, Response, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::sim::ratelimit::Decision;
use crate::sim::store::CancelError;
use crate::sim::wire::{
    ErrorBody, ErrorEnvelope, HEADER_LIMIT, HEADER_REMAINING, HEADER_RESET, HEADER_RETRY_AFTER,
};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(super) const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

pub(super) fn details(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `{"error": {"code", "message", "details"}}` with a JSON content type.
pub(super) fn error_response(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    details: Map<String, Value>,
) -> Response<Body> {
    let envelope = ErrorEnvelope {
        error: ErrorBody {
            code: code.to_owned(),
            message: message.into(),
            details,
        },
    };
    let body = serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"error":{"code":"internal_error","message":"error body","details":{}}}"#.to_vec()
    });
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
    resp
}

pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = Response::new(Body::from(bytes));
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
            resp
        }
        Err(e) => internal_error(&format!("could not serialize the answer: {e}")),
    }
}

pub(super) fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

pub(super) fn internal_error(message: &str) -> Response<Body> {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        message,
        Map::new(),
    )
}

pub(super) fn not_found_route(method: &Method, path: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("No route for {method} {path}"),
        details(json!({ "method": method.as_str(), "path": path })),
    )
}

pub(super) fn method_not_allowed(
    method: &Method,
    path: &str,
    allow: &'static str,
) -> Response<Body> {
    let mut resp = error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("Method {method} is not allowed on {path}; allowed: {allow}"),
        details(json!({ "method": method.as_str(), "allow": allow })),
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

pub(super) fn deployment_not_found(id: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("Deployment '{id}' not found"),
        details(json!({ "deployment_id": id })),
    )
}

pub(super) fn invalid_request(field: &str, message: String, extra: Value) -> Response<Body> {
    let mut d = details(extra);
    d.insert("field".to_owned(), Value::String(field.to_owned()));
    error_response(StatusCode::BAD_REQUEST, "invalid_request", message, d)
}

pub(super) fn invalid_parameter(parameter: &str, value: &str, expected: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        format!("Query parameter '{parameter}' must be {expected}; got '{value}'"),
        details(json!({ "parameter": parameter, "value": value, "expected": expected })),
    )
}

pub(super) fn cancel_error(id: &str, e: CancelError) -> Response<Body> {
    match e {
        CancelError::NotFound => deployment_not_found(id),
        CancelError::NotCancellable(status) => error_response(
            StatusCode::CONFLICT,
            "not_cancellable",
            format!(
                "Deployment '{id}' is {status}; only queued, building or deploying deployments can be cancelled"
            ),
            details(json!({ "deployment_id": id, "status": status.as_str() })),
        ),
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

pub(super) fn add_rate_headers(resp: &mut Response<Body>, d: &Decision) {
    let h = resp.headers_mut();
    h.insert(
        HeaderName::from_static(HEADER_LIMIT),
        HeaderValue::from(d.limit),
    );
    h.insert(
        HeaderName::from_static(HEADER_REMAINING),
        HeaderValue::from(d.remaining),
    );
    h.insert(
        HeaderName::from_static(HEADER_RESET),
        HeaderValue::from(d.reset_epoch(unix_now())),
    );
    if let Some(secs) = d.retry_after {
        h.insert(
            HeaderName::from_static(HEADER_RETRY_AFTER),
            HeaderValue::from(secs),
        );
    }
}

pub(super) fn rate_limited(d: &Decision) -> Response<Body> {
    let secs = d.retry_after.unwrap_or(1);
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "Rate limit of {} requests per minute exceeded; retry in {secs} s",
            d.limit
        ),
        details(json!({ "limit": d.limit, "retry_after": secs })),
    )
}
