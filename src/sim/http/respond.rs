//! The answers: JSON bodies, the error envelope of every non-2xx status, rate-limit headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderValue, Method, Response, StatusCode};
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::sim::ratelimit::Decision;
use crate::sim::store::CancelError;
use crate::sim::wire::{
    ErrorBody, ErrorEnvelope, HEADER_LIMIT, HEADER_REMAINING, HEADER_RESET, HEADER_RETRY_AFTER,
};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=UTF-8");
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

/// The page a gateway in front of the API answers with when it lost (or gave up on) the API's
/// own answer: HTML, no error envelope, no rate-limit headers. `status` was validated with the
/// rule; anything else reads as a 502.
pub(super) fn gateway_page(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let reason = status.canonical_reason().unwrap_or("Gateway error");
    let code = status.as_u16();
    let body = format!(
        "<!DOCTYPE html>\n<html>\n<head><title>{code} {reason}</title></head>\n<body>\n<h1>Error {code}</h1>\n<p>{reason}. The gateway could not deliver the origin's answer (injected fault).</p>\n</body>\n</html>\n"
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HTML);
    resp
}

/// Sets each header, replacing the simulator's own; names and values were validated with the
/// rule, so one that does not convert is skipped rather than failing the answer.
pub(super) fn set_headers(resp: &mut Response<Body>, headers: &[(String, String)]) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(name, value);
        }
    }
}

/// Spaces to pad with, shared by every padded answer.
static SPACES: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// The answer with `pad_bytes` spaces after its body, streamed without `Content-Length` so that
/// a client cannot learn the size before reading: it has to count what it reads. Trailing
/// whitespace keeps a JSON body valid. Answers that cannot have a body stay as they are.
pub(super) fn padded(resp: Response<Body>, pad_bytes: u64) -> Response<Body> {
    if matches!(
        resp.status(),
        StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
    ) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let chunk = SPACES.len() as u64;
    let pad = (0..pad_bytes.div_ceil(chunk)).map(move |i| {
        let len = (pad_bytes - i * chunk).min(chunk);
        // `len` is at most the length of `SPACES`.
        let len = usize::try_from(len).unwrap_or(SPACES.len());
        Ok::<_, axum::Error>(Bytes::from_static(&SPACES[..len]))
    });
    let stream = body.into_data_stream().chain(futures::stream::iter(pad));
    Response::from_parts(parts, Body::from_stream(stream))
}
