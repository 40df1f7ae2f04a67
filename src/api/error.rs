//! Errors of the Deployments API client, classified for retry decisions.

use std::time::Duration;

use super::Endpoint;

/// What a caller should do about an [`ApiError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// A fault of the network or of the API's infrastructure: retry with backoff.
    Transient,
    /// Over the token's rate limit: retry once `retry_after` has passed.
    RateLimited { retry_after: Duration },
    /// Needs a human (400, 401, 403, 404, 409): retrying the same request cannot help.
    Permanent,
    /// A create may or may not have reached the server: look for it before creating again.
    OutcomeUnknown,
}

/// One error type for every call of the client. It keeps what the API said (status, `code`,
/// `message`, `details`) so that conditions and events can quote it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API answered with a non-2xx status and (usually) an error body.
    #[error("{endpoint} answered HTTP {status} {code}: {message}")]
    Status {
        endpoint: Endpoint,
        status: u16,
        code: String,
        message: String,
        details: serde_json::Map<String, serde_json::Value>,
        /// From `Retry-After` (429) when the server sent it.
        retry_after: Option<Duration>,
    },
    /// The request never reached the server, or its answer was lost, on a safe verb.
    #[error("{endpoint} failed in transport: {message}")]
    Transport { endpoint: Endpoint, message: String },
    /// `POST /deployments` was sent and its answer was lost: the deployment may exist.
    #[error(
        "create outcome unknown: the request may have reached the server ({message}); look for the deployment before creating again"
    )]
    OutcomeUnknown { message: String },
    /// The server answered 2xx with a body we could not read.
    #[error("{endpoint} answered HTTP {status} with a body that does not parse: {message}")]
    Decode {
        endpoint: Endpoint,
        status: u16,
        message: String,
    },
    /// The server answered 2xx with a body longer than the client reads for this endpoint.
    #[error("{endpoint} answered HTTP {status} with a body larger than the limit of {limit} bytes")]
    TooLarge {
        endpoint: Endpoint,
        status: u16,
        limit: usize,
    },
    /// The process-wide budget of this token has no room for this call within the caller's
    /// patience: nothing was sent. Retry after `retry_after`.
    #[error(
        "{endpoint} not sent: this token's rate budget admits the next request in {retry_after:?}"
    )]
    Throttled {
        endpoint: Endpoint,
        retry_after: Duration,
    },
    /// The client could not be built or a request could not be formed (bad base URL, bad token bytes).
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl ApiError {
    pub fn class(&self) -> ErrorClass {
        match self {
            ApiError::Status {
                status: 429,
                retry_after,
                ..
            } => ErrorClass::RateLimited {
                // The token's budget looks again after this long at the latest, so should we.
                retry_after: retry_after
                    .unwrap_or(super::classify::DEFAULT_RATE_LIMIT_PAUSE)
                    .min(super::ratelimit::MAX_RATE_LIMIT_PAUSE),
            },
            ApiError::Status { status, .. } if *status >= 500 || *status == 408 => {
                ErrorClass::Transient
            }
            ApiError::Status { .. } => ErrorClass::Permanent,
            ApiError::Transport { .. } => ErrorClass::Transient,
            ApiError::Throttled { retry_after, .. } => ErrorClass::RateLimited {
                retry_after: *retry_after,
            },
            // A 2xx we cannot read is the API's fault, not the user's; it may heal.
            ApiError::Decode { .. } | ApiError::TooLarge { .. } => ErrorClass::Transient,
            ApiError::OutcomeUnknown { .. } => ErrorClass::OutcomeUnknown,
            ApiError::Config(_) => ErrorClass::Permanent,
        }
    }

    /// HTTP status, when the API answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. }
            | ApiError::Decode { status, .. }
            | ApiError::TooLarge { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error `code` (`invalid_branch`, `unauthorized`, …), when it sent one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// A short stable label for metrics and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ApiError::Status { status: 400, .. } => "invalid_request",
            ApiError::Status { status: 401, .. } => "unauthorized",
            ApiError::Status { status: 403, .. } => "forbidden",
            ApiError::Status { status: 404, .. } => "not_found",
            ApiError::Status { status: 409, .. } => "conflict",
            ApiError::Status { status: 429, .. } => "rate_limited",
            ApiError::Status { status, .. } if *status >= 500 => "server_error",
            ApiError::Status { .. } => "http_error",
            ApiError::Transport { .. } => "transport",
            ApiError::Throttled { .. } => "throttled",
            ApiError::OutcomeUnknown { .. } => "outcome_unknown",
            ApiError::Decode { .. } => "decode",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::Config(_) => "config",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16, retry_after: Option<Duration>) -> ApiError {
        ApiError::Status {
            endpoint: Endpoint::Get,
            status,
            code: "x".into(),
            message: "m".into(),
            details: Default::default(),
            retry_after,
        }
    }

    #[test]
    fn client_errors_need_a_human_and_server_errors_are_retried() {
        for s in [400, 401, 403, 404, 409] {
            assert_eq!(status(s, None).class(), ErrorClass::Permanent, "{s}");
        }
        for s in [500, 502, 503, 504] {
            assert_eq!(status(s, None).class(), ErrorClass::Transient, "{s}");
        }
    }

    #[test]
    fn a_429_is_retried_after_the_servers_retry_after() {
        assert_eq!(
            status(429, Some(Duration::from_secs(7))).class(),
            ErrorClass::RateLimited {
                retry_after: Duration::from_secs(7)
            }
        );
    }

    #[test]
    fn a_429_asks_callers_to_come_back_within_a_minute_whatever_its_retry_after() {
        assert_eq!(
            status(429, Some(Duration::from_secs(3600))).class(),
            ErrorClass::RateLimited {
                retry_after: crate::api::ratelimit::MAX_RATE_LIMIT_PAUSE
            }
        );
    }

    #[test]
    fn a_408_and_a_gateways_5xx_are_transient() {
        for s in [408, 520, 524] {
            assert_eq!(status(s, None).class(), ErrorClass::Transient, "{s}");
        }
    }

    #[test]
    fn a_lost_create_answer_is_neither_success_nor_retryable() {
        let e = ApiError::OutcomeUnknown {
            message: "connection reset".into(),
        };
        assert_eq!(e.class(), ErrorClass::OutcomeUnknown);
        assert!(e.to_string().contains("look for the deployment"));
    }
}
