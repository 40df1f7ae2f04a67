//! Who is calling: the bearer token, and whether its scopes allow the endpoint.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde_json::json;

use super::respond::{details, error_response};
use crate::api::Endpoint;
use crate::sim::config::TokenConfig;

/// Why a request has no usable token; each answers `401` with its own `details.reason`.
pub(super) enum AuthError {
    Missing,
    Malformed,
    Unknown,
    Expired,
}

impl AuthError {
    pub(super) fn response(&self) -> Response<Body> {
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

/// The token named by the one `Authorization: Bearer` header, with its secret as configured
/// (the secret keys the rate-limit bucket and the stats).
pub(super) fn authenticate<'a>(
    tokens: &'a BTreeMap<String, TokenConfig>,
    headers: &HeaderMap,
) -> Result<(&'a str, &'a TokenConfig), AuthError> {
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
    let (secret, cfg) = tokens.get_key_value(token).ok_or(AuthError::Unknown)?;
    if cfg.expired {
        return Err(AuthError::Expired);
    }
    Ok((secret.as_str(), cfg))
}

/// `403 insufficient_scope` when `endpoint` changes state and `token` may only read.
pub(super) fn check_scope(endpoint: Endpoint, token: &TokenConfig) -> Option<Response<Body>> {
    let writes = matches!(
        endpoint,
        Endpoint::Create | Endpoint::Cancel | Endpoint::Delete
    );
    if !writes || token.can_write() {
        return None;
    }
    let granted: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
    Some(error_response(
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
    ))
}
