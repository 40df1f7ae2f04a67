//! Routes, the request pipeline (auth, rate limit, faults) and the JSON error answers.
//!
//! Routing is done by hand on the path segments instead of with `axum::Router`: the pipeline
//! needs the route before anything else (stats, fault filters, 404/405 with `Allow`), and no
//! extractor rejection of axum can leak a text error this way. axum supplies the body and
//! response types.

// Parsers return the finished 4xx answer as their error: built once on the error path and
// handed back as is, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::header::{self, HeaderName};
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tracing::{debug, error};

use super::config::{SimConfig, TokenConfig, is_valid_commit};
use super::faults::{FaultPlan, FaultSet};
use super::openapi;
use super::ratelimit::{BucketKey, Decision, Limiter};
use super::stats::{DROPPED, Stats};
use super::store::{CancelError, Deployment, NewDeployment, Store};
use crate::api::{
    CreateDeploymentRequest, DeploymentDetails, DeploymentStatus, Endpoint, ErrorBody,
    ErrorEnvelope, HEADER_LIMIT, HEADER_REMAINING, HEADER_RESET, HEADER_RETRY_AFTER,
};

/// A request body that has not fully arrived after this long answers 400.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// Per connection: the peer and the signal that makes the server drop the connection
/// without answering.
pub(crate) struct ConnCtx {
    pub peer: SocketAddr,
    pub drop: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct App {
    config: SimConfig,
    /// `127.0.0.1:PORT` (the bound address, with an unspecified IP shown as loopback).
    display_addr: SocketAddr,
    store: Mutex<Store>,
    limiter: Mutex<Limiter>,
    stats: Mutex<Stats>,
    faults: Mutex<FaultSet>,
    openapi: Value,
}

// ----- routing -----

const T_DEPLOYMENTS: &str = "/v1/deployments";
const T_DEPLOYMENT: &str = "/v1/deployments/{id}";
const T_CANCEL: &str = "/v1/deployments/{id}/cancel";
const T_LOGS: &str = "/v1/deployments/{id}/logs";
const T_OPENAPI: &str = "/v1/openapi.json";
const T_UNMATCHED: &str = "(unmatched)";

#[derive(Debug)]
enum ApiRoute {
    Endpoint(Endpoint, String),
    NotFound,
    MethodNotAllowed(&'static str),
}

#[derive(Debug)]
enum SimRoute {
    Stats,
    StatsReset,
    Deployments,
    Deployment(String),
    DeploymentDelete(String),
    DeploymentCancel(String),
    FaultsGet,
    FaultsPut,
    FaultsDelete,
    Health,
    NotFound,
    MethodNotAllowed(&'static str),
}

#[derive(Debug)]
enum Route {
    Api {
        template: &'static str,
        route: ApiRoute,
    },
    OpenApi,
    Sim(SimRoute),
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding (and `+` as space when `plus` is set). Malformed escapes stay as they are;
/// invalid UTF-8 is replaced, which can only make a lookup fail.
fn percent_decode(s: &str, plus: bool) -> String {
    if !s.bytes().any(|b| b == b'%' || (plus && b == b'+')) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn route(method: &Method, path: &str) -> Route {
    if let Some(rest) = path.strip_prefix("/_sim/") {
        return Route::Sim(sim_route(method, rest));
    }
    let api = |template, route| Route::Api { template, route };
    let Some(rest) = path.strip_prefix("/v1/") else {
        return api(T_UNMATCHED, ApiRoute::NotFound);
    };
    let mut it = rest.split('/');
    let segs = (it.next(), it.next(), it.next(), it.next());
    let m = method;
    match segs {
        (Some("deployments"), None, _, _) => match *m {
            Method::GET => api(
                T_DEPLOYMENTS,
                ApiRoute::Endpoint(Endpoint::List, String::new()),
            ),
            Method::POST => api(
                T_DEPLOYMENTS,
                ApiRoute::Endpoint(Endpoint::Create, String::new()),
            ),
            _ => api(T_DEPLOYMENTS, ApiRoute::MethodNotAllowed("GET, POST")),
        },
        (Some("deployments"), Some(id), None, _) if !id.is_empty() => match *m {
            Method::GET => api(
                T_DEPLOYMENT,
                ApiRoute::Endpoint(Endpoint::Get, percent_decode(id, false)),
            ),
            Method::DELETE => api(
                T_DEPLOYMENT,
                ApiRoute::Endpoint(Endpoint::Delete, percent_decode(id, false)),
            ),
            _ => api(T_DEPLOYMENT, ApiRoute::MethodNotAllowed("GET, DELETE")),
        },
        (Some("deployments"), Some(id), Some("cancel"), None) if !id.is_empty() => match *m {
            Method::POST => api(
                T_CANCEL,
                ApiRoute::Endpoint(Endpoint::Cancel, percent_decode(id, false)),
            ),
            _ => api(T_CANCEL, ApiRoute::MethodNotAllowed("POST")),
        },
        (Some("deployments"), Some(id), Some("logs"), None) if !id.is_empty() => match *m {
            Method::GET => api(
                T_LOGS,
                ApiRoute::Endpoint(Endpoint::Logs, percent_decode(id, false)),
            ),
            _ => api(T_LOGS, ApiRoute::MethodNotAllowed("GET")),
        },
        (Some("openapi.json"), None, _, _) => match *m {
            Method::GET => Route::OpenApi,
            _ => api(T_OPENAPI, ApiRoute::MethodNotAllowed("GET")),
        },
        _ => api(T_UNMATCHED, ApiRoute::NotFound),
    }
}

fn sim_route(m: &Method, rest: &str) -> SimRoute {
    let mut it = rest.split('/');
    let segs = (it.next(), it.next(), it.next(), it.next());
    match segs {
        (Some("stats"), None, _, _) => match *m {
            Method::GET => SimRoute::Stats,
            _ => SimRoute::MethodNotAllowed("GET"),
        },
        (Some("stats"), Some("reset"), None, _) => match *m {
            Method::POST => SimRoute::StatsReset,
            _ => SimRoute::MethodNotAllowed("POST"),
        },
        (Some("deployments"), None, _, _) => match *m {
            Method::GET => SimRoute::Deployments,
            _ => SimRoute::MethodNotAllowed("GET"),
        },
        (Some("deployments"), Some(id), None, _) if !id.is_empty() => match *m {
            Method::GET => SimRoute::Deployment(percent_decode(id, false)),
            Method::DELETE => SimRoute::DeploymentDelete(percent_decode(id, false)),
            _ => SimRoute::MethodNotAllowed("GET, DELETE"),
        },
        (Some("deployments"), Some(id), Some("cancel"), None) if !id.is_empty() => match *m {
            Method::POST => SimRoute::DeploymentCancel(percent_decode(id, false)),
            _ => SimRoute::MethodNotAllowed("POST"),
        },
        (Some("faults"), None, _, _) => match *m {
            Method::GET => SimRoute::FaultsGet,
            Method::PUT => SimRoute::FaultsPut,
            Method::DELETE => SimRoute::FaultsDelete,
            _ => SimRoute::MethodNotAllowed("GET, PUT, DELETE"),
        },
        (Some("health"), None, _, _) => match *m {
            Method::GET => SimRoute::Health,
            _ => SimRoute::MethodNotAllowed("GET"),
        },
        _ => SimRoute::NotFound,
    }
}

// ----- responses -----

fn details(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `{"error": {"code", "message", "details"}}` with a JSON content type.
pub(crate) fn error_response(
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

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
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

fn no_content() -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn internal_error(message: &str) -> Response<Body> {
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        message,
        Map::new(),
    )
}

fn not_found_route(method: &Method, path: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("No route for {method} {path}"),
        details(json!({ "method": method.as_str(), "path": path })),
    )
}

fn method_not_allowed(method: &Method, path: &str, allow: &'static str) -> Response<Body> {
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

fn deployment_not_found(id: &str) -> Response<Body> {
    error_response(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("Deployment '{id}' not found"),
        details(json!({ "deployment_id": id })),
    )
}

fn invalid_request(field: &str, message: String, extra: Value) -> Response<Body> {
    let mut d = details(extra);
    d.insert("field".to_owned(), Value::String(field.to_owned()));
    error_response(StatusCode::BAD_REQUEST, "invalid_request", message, d)
}

fn invalid_parameter(parameter: &str, value: &str, expected: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        "invalid_parameter",
        format!("Query parameter '{parameter}' must be {expected}; got '{value}'"),
        details(json!({ "parameter": parameter, "value": value, "expected": expected })),
    )
}

fn cancel_error(id: &str, e: CancelError) -> Response<Body> {
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

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn add_rate_headers(resp: &mut Response<Body>, d: &Decision) {
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

fn rate_limited(d: &Decision) -> Response<Body> {
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

// ----- request bodies and queries -----

async fn read_body(req: Request<Body>, limit: usize) -> Result<Bytes, Response<Body>> {
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

/// Reads the create body into the shared wire type, naming the field of any problem.
fn parse_create(bytes: &[u8]) -> Result<CreateDeploymentRequest, Response<Body>> {
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
    Ok(CreateDeploymentRequest {
        project_id,
        branch,
        commit_sha,
        env_vars,
    })
}

struct ListParams {
    limit: u32,
    offset: u64,
    status: Option<DeploymentStatus>,
}

fn parse_list_query(query: Option<&str>) -> Result<ListParams, Response<Body>> {
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

/// A `Host` header is used for `logs_url` only when it looks like a host name and port.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

// ----- identity -----

enum AuthError {
    Missing,
    Malformed,
    Unknown,
    Expired,
}

impl AuthError {
    fn response(&self) -> Response<Body> {
        let (reason, message) = match self {
            AuthError::Missing => ("missing", "Missing Authorization header"),
            AuthError::Malformed => ("malformed", "Authorization header must be 'Bearer <token>'"),
            AuthError::Unknown => ("unknown", "Invalid API token"),
            AuthError::Expired => ("expired", "API token has expired"),
        };
        let mut resp = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
            details(json!({ "reason": reason })),
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"git.dev\""),
        );
        resp
    }
}

impl App {
    pub fn new(config: SimConfig, bound: SocketAddr) -> App {
        let mut display_addr = bound;
        if display_addr.ip().is_unspecified() {
            display_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        App {
            config,
            display_addr,
            store: Mutex::new(Store::default()),
            limiter: Mutex::new(Limiter::default()),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(FaultSet::default()),
            openapi: openapi::document(),
        }
    }

    /// `http://HOST/v1` as the client addressed us.
    fn base_url(&self, headers: &HeaderMap) -> String {
        match headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| plausible_host(h))
        {
            Some(host) => format!("http://{host}/v1"),
            None => format!("http://{}/v1", self.display_addr),
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<(&str, &TokenConfig), AuthError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(AuthError::Missing);
        };
        if values.next().is_some() {
            return Err(AuthError::Malformed);
        }
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        let token = token.trim_matches(' ');
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(AuthError::Malformed);
        }
        let (secret, cfg) = self
            .config
            .tokens
            .get_key_value(token)
            .ok_or(AuthError::Unknown)?;
        if cfg.expired {
            return Err(AuthError::Expired);
        }
        Ok((secret.as_str(), cfg))
    }

    /// Answers one request; `None` means "drop the connection without answering".
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Body>,
        conn: Arc<ConnCtx>,
    ) -> Option<Response<Body>> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let outcome = AssertUnwindSafe(self.dispatch(req, &conn))
            .catch_unwind()
            .await;
        let resp = match outcome {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                debug!(%method, path = uri.path(), "dropping the connection without an answer (fault)");
                return None;
            }
            Err(_) => {
                error!(%method, path = uri.path(), "request handler panicked");
                internal_error("The simulator failed on this request")
            }
        };
        debug!(
            %method,
            path = uri.path(),
            status = resp.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        Some(resp)
    }

    async fn dispatch(&self, req: Request<Body>, conn: &ConnCtx) -> Option<Response<Body>> {
        match route(req.method(), req.uri().path()) {
            Route::Sim(r) => Some(self.sim(req, r).await),
            Route::OpenApi => {
                let mut doc = self.openapi.clone();
                if let Some(obj) = doc.as_object_mut() {
                    obj.insert(
                        "servers".to_owned(),
                        json!([
                            { "url": self.base_url(req.headers()), "description": "this simulator" },
                            { "url": "https://api.git.dev/v1", "description": "production" }
                        ]),
                    );
                }
                let resp = json_response(StatusCode::OK, &doc);
                lock(&self.stats).record(req.method(), T_OPENAPI, resp.status().as_u16(), None);
                Some(resp)
            }
            Route::Api { template, route } => self.api(req, template, route, conn).await,
        }
    }

    /// The public API: rate limit, faults, auth and scopes, then the endpoint.
    async fn api(
        &self,
        req: Request<Body>,
        template: &'static str,
        route: ApiRoute,
        conn: &ConnCtx,
    ) -> Option<Response<Body>> {
        let method = req.method().clone();
        let auth = self.authenticate(req.headers());
        let (key, limit) = match &auth {
            Ok((secret, token)) => (BucketKey::Token(secret), self.config.token_limit(token)),
            Err(_) => (BucketKey::Ip(conn.peer.ip()), self.config.anonymous),
        };
        let plan = match &route {
            ApiRoute::Endpoint(e, _) => lock(&self.faults).plan(*e),
            _ => FaultPlan::default(),
        };
        if !plan.latency_before.is_zero() {
            tokio::time::sleep(plan.latency_before).await;
        }
        let decision = {
            let mut limiter = lock(&self.limiter);
            let now = Instant::now();
            if plan.force_429 {
                limiter.peek(key, limit, now, true)
            } else {
                limiter.try_take(key, limit, now)
            }
        };
        let mut resp = if decision.admitted {
            self.admitted(req, route, &auth, &plan).await
        } else {
            rate_limited(&decision)
        };
        add_rate_headers(&mut resp, &decision);
        if !plan.latency_after.is_zero() {
            tokio::time::sleep(plan.latency_after).await;
        }
        let token = auth.as_ref().ok().map(|(secret, _)| *secret);
        let status = if plan.drop {
            DROPPED
        } else {
            resp.status().as_u16()
        };
        lock(&self.stats).record(&method, template, status, token);
        (!plan.drop).then_some(resp)
    }

    async fn admitted(
        &self,
        req: Request<Body>,
        route: ApiRoute,
        auth: &Result<(&str, &TokenConfig), AuthError>,
        plan: &FaultPlan,
    ) -> Response<Body> {
        let (endpoint, id) = match route {
            ApiRoute::NotFound => return not_found_route(req.method(), req.uri().path()),
            ApiRoute::MethodNotAllowed(allow) => {
                return method_not_allowed(req.method(), req.uri().path(), allow);
            }
            ApiRoute::Endpoint(e, id) => (e, id),
        };
        let token = match auth {
            Ok((_, token)) => *token,
            Err(e) => return e.response(),
        };
        if matches!(
            endpoint,
            Endpoint::Create | Endpoint::Cancel | Endpoint::Delete
        ) && !token.can_write()
        {
            let granted: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
            return error_response(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!(
                    "{} needs the deploy:write or deploy:admin scope; this token has {}",
                    endpoint.route(),
                    granted.join(", ")
                ),
                details(json!({
                    "required": ["deploy:write", "deploy:admin"],
                    "granted": granted,
                })),
            );
        }
        if plan.error {
            return internal_error("Internal error (injected fault); please retry");
        }
        let project = token.project.as_str();
        match endpoint {
            Endpoint::Create => self.create(req, token).await,
            Endpoint::List => match parse_list_query(req.uri().query()) {
                Ok(p) => {
                    let list = lock(&self.store).list(
                        project,
                        p.status,
                        p.limit,
                        p.offset,
                        Instant::now(),
                    );
                    json_response(StatusCode::OK, &list)
                }
                Err(resp) => resp,
            },
            Endpoint::Get => {
                let base = self.base_url(req.headers());
                let found = lock(&self.store)
                    .get(&id, Some(project))
                    .map(|d| d.details(Instant::now(), &base));
                match found {
                    Some(d) => json_response(StatusCode::OK, &d),
                    None => deployment_not_found(&id),
                }
            }
            Endpoint::Cancel => {
                let result = lock(&self.store).cancel(
                    &id,
                    Some(project),
                    &token.user,
                    Instant::now(),
                    Timestamp::now(),
                );
                match result {
                    Ok(c) => json_response(StatusCode::OK, &c),
                    Err(e) => cancel_error(&id, e),
                }
            }
            Endpoint::Delete => {
                if lock(&self.store).delete(&id, Some(project)) {
                    no_content()
                } else {
                    deployment_not_found(&id)
                }
            }
            Endpoint::Logs => {
                let logs = lock(&self.store)
                    .get(&id, Some(project))
                    .map(|d| d.logs(Instant::now()));
                match logs {
                    Some(text) => {
                        let mut resp = Response::new(Body::from(text));
                        resp.headers_mut().insert(header::CONTENT_TYPE, TEXT);
                        resp
                    }
                    None => deployment_not_found(&id),
                }
            }
        }
    }

    async fn create(&self, req: Request<Body>, token: &TokenConfig) -> Response<Body> {
        let bytes = match read_body(req, self.config.max_body_bytes).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let body = match parse_create(&bytes) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let project = match self.config.projects.get(&body.project_id) {
            Some(p) if body.project_id == token.project => p,
            _ => {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "project_not_found",
                    format!("Project '{}' not found", body.project_id),
                    details(json!({ "project_id": body.project_id })),
                );
            }
        };
        let Some(head) = project.branches.get(&body.branch) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_branch",
                format!("Branch '{}' does not exist in repository", body.branch),
                details(json!({ "project_id": body.project_id, "branch": body.branch })),
            );
        };
        let commit_sha = match body.commit_sha {
            None => head.clone(),
            Some(c) if is_valid_commit(&c) => c,
            Some(c) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_commit",
                    format!("Commit '{c}' is not a commit SHA (7 to 40 lowercase hex characters)"),
                    details(json!({
                        "project_id": body.project_id,
                        "branch": body.branch,
                        "commit_sha": c,
                    })),
                );
            }
        };
        let created = {
            let mut store = lock(&self.store);
            store
                .create(
                    NewDeployment {
                        project_id: body.project_id,
                        branch: body.branch,
                        commit_sha,
                        env_vars: body.env_vars.unwrap_or_default(),
                        created_by: token.user.clone(),
                        phases: self.config.phases,
                    },
                    Instant::now(),
                    Timestamp::now(),
                )
                .created()
        };
        let mut resp = json_response(StatusCode::CREATED, &created);
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/deployments/{}", created.id)) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }

    // ----- /_sim/ hooks -----

    async fn sim(&self, req: Request<Body>, route: SimRoute) -> Response<Body> {
        match route {
            SimRoute::NotFound => not_found_route(req.method(), req.uri().path()),
            SimRoute::MethodNotAllowed(allow) => {
                method_not_allowed(req.method(), req.uri().path(), allow)
            }
            SimRoute::Health => {
                let n = lock(&self.store).len();
                json_response(StatusCode::OK, &json!({ "status": "ok", "deployments": n }))
            }
            SimRoute::Stats => {
                let report = lock(&self.stats).report();
                json_response(StatusCode::OK, &report)
            }
            SimRoute::StatsReset => {
                lock(&self.stats).reset();
                no_content()
            }
            SimRoute::Deployments => {
                let project = req.uri().query().and_then(|q| {
                    q.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        (percent_decode(k, true) == "project_id").then(|| percent_decode(v, true))
                    })
                });
                let base = self.base_url(req.headers());
                let now = Instant::now();
                let store = lock(&self.store);
                let data: Vec<SimDeployment> = store
                    .all()
                    .filter(|d| project.as_deref().is_none_or(|p| d.project_id == p))
                    .map(|d| SimDeployment::new(d, now, &base))
                    .collect();
                let total = data.len();
                let resp = json_response(
                    StatusCode::OK,
                    &json!({ "data": data, "meta": { "total": total } }),
                );
                drop(store);
                resp
            }
            SimRoute::Deployment(id) => {
                let base = self.base_url(req.headers());
                let store = lock(&self.store);
                match store.get(&id, None) {
                    Some(d) => json_response(
                        StatusCode::OK,
                        &SimDeployment::new(d, Instant::now(), &base),
                    ),
                    None => deployment_not_found(&id),
                }
            }
            SimRoute::DeploymentCancel(id) => {
                let result = lock(&self.store).cancel(
                    &id,
                    None,
                    &self.config.dashboard_user,
                    Instant::now(),
                    Timestamp::now(),
                );
                match result {
                    Ok(c) => json_response(StatusCode::OK, &c),
                    Err(e) => cancel_error(&id, e),
                }
            }
            SimRoute::DeploymentDelete(id) => {
                if lock(&self.store).delete(&id, None) {
                    no_content()
                } else {
                    deployment_not_found(&id)
                }
            }
            SimRoute::FaultsGet => {
                let set = lock(&self.faults).clone();
                json_response(StatusCode::OK, &set)
            }
            SimRoute::FaultsDelete => {
                let mut faults = lock(&self.faults);
                *faults = FaultSet::default();
                json_response(StatusCode::OK, &*faults)
            }
            SimRoute::FaultsPut => {
                let bytes = match read_body(req, self.config.max_body_bytes).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let set: FaultSet = match serde_json::from_slice(&bytes) {
                    Ok(s) => s,
                    Err(e) => {
                        return invalid_request(
                            "body",
                            format!("Fault rules do not parse: {e}"),
                            json!({ "expected": "{\"rules\": [{\"route\": \"create\", \"error_rate\": 1.0, \"count\": 1}]}" }),
                        );
                    }
                };
                if let Err(message) = set.validate() {
                    return invalid_request("rules", message, json!({}));
                }
                *lock(&self.faults) = set.clone();
                json_response(StatusCode::OK, &set)
            }
        }
    }
}

/// A deployment as `/_sim/deployments` shows it: the public details plus what only the
/// server knows.
#[derive(Serialize)]
struct SimDeployment<'a> {
    #[serde(flatten)]
    details: DeploymentDetails,
    env_vars: &'a BTreeMap<String, String>,
    created_by: &'a str,
}

impl<'a> SimDeployment<'a> {
    fn new(d: &'a Deployment, now: Instant, base: &str) -> Self {
        SimDeployment {
            details: d.details(now, base),
            env_vars: &d.env_vars,
            created_by: &d.created_by,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_to_endpoints_with_decoded_ids() {
        match route(&Method::GET, "/v1/deployments/dep%5Fabc") {
            Route::Api {
                template,
                route: ApiRoute::Endpoint(Endpoint::Get, id),
            } => {
                assert_eq!(template, T_DEPLOYMENT);
                assert_eq!(id, "dep_abc");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route(&Method::PATCH, "/v1/deployments"),
            Route::Api {
                route: ApiRoute::MethodNotAllowed("GET, POST"),
                ..
            }
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/deployments/x/y"),
            Route::Api {
                route: ApiRoute::NotFound,
                ..
            }
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/deployments/"),
            Route::Api {
                route: ApiRoute::NotFound,
                ..
            }
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/openapi.json"),
            Route::OpenApi
        ));
        assert!(matches!(
            route(&Method::PUT, "/_sim/faults"),
            Route::Sim(SimRoute::FaultsPut)
        ));
    }

    #[test]
    fn percent_decoding_handles_malformed_escapes() {
        assert_eq!(percent_decode("a%20b", false), "a b");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
        assert_eq!(percent_decode("%4", false), "%4");
    }

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
