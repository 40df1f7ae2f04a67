//! What one attempt's answer means, decided without any IO.
//!
//! The HTTP client ([`super::client`]) sends and retries; everything it must decide about an
//! answer — success, send again, wait out a 429, give up — is a pure function of the endpoint,
//! the status (or how the transport failed), the headers and the body, kept here so that every
//! rule is one row of a table test. The rules, for users, are in `docs/api-client.md`.
//!
//! The one distinction between endpoints is [`Endpoint::is_idempotent`]: a call that is safe
//! to repeat is retried after a fault, while a create that may have reached the server is
//! never sent again ([`Verdict::OutcomeUnknown`]), because the API has no idempotency key.

use std::time::Duration;

use jiff::Timestamp;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use super::types::{ErrorEnvelope, HEADER_RETRY_AFTER};
use super::{ApiError, Endpoint};

/// How long a 429 without `Retry-After` pauses its token.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// Longest excerpt of a non-JSON error body kept in [`ApiError::Status`]'s message.
const BODY_EXCERPT_CHARS: usize = 200;

/// How an attempt that got no answer failed, as far as the server's state is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportFailure {
    /// The request could not even be formed: nothing was sent, and sending again cannot help.
    Invalid,
    /// The connection could not be opened (refused, DNS, TLS, connect timeout): nothing of the
    /// request reached the server.
    NotSent,
    /// Timeout, reset or close once the connection was open: the server may have the request.
    MaybeSent,
}

/// What to do after one attempt.
#[derive(Debug)]
pub enum Verdict {
    /// A 2xx and its whole body.
    Success { status: StatusCode, body: Vec<u8> },
    /// A fault that repeating the call may get past: back off, then send again, but not
    /// before `not_before` when the server said so.
    Retry {
        error: ApiError,
        not_before: Option<Duration>,
    },
    /// A 429: the token is paused for `pause`, then the call is sent again. The API guarantees
    /// that a 429 did nothing, so this holds for creates too.
    RateLimited { error: ApiError, pause: Duration },
    /// A create may or may not have been carried out: the caller must look for it before
    /// creating again. Always [`ApiError::OutcomeUnknown`].
    OutcomeUnknown(ApiError),
    /// Final: retrying the same request cannot change the answer.
    Fail(ApiError),
}

impl Verdict {
    /// The outcome label for observers (`success` or [`ApiError::category`]) and the HTTP
    /// status when the server answered.
    pub fn outcome(&self) -> (&'static str, Option<u16>) {
        match self {
            Verdict::Success { status, .. } => ("success", Some(status.as_u16())),
            Verdict::Retry { error, .. }
            | Verdict::RateLimited { error, .. }
            | Verdict::OutcomeUnknown(error)
            | Verdict::Fail(error) => (error.category(), error.status()),
        }
    }

    /// How long the token must pause, when the answer was a 429.
    pub fn rate_limit_pause(&self) -> Option<Duration> {
        match self {
            Verdict::RateLimited { pause, .. } => Some(*pause),
            _ => None,
        }
    }
}

/// Classifies an answer. `body` is the error text when the body could not be read; `now` is
/// the time against which a `Retry-After` HTTP date is read.
pub fn answer(
    endpoint: Endpoint,
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Vec<u8>, String>,
    now: Timestamp,
) -> Verdict {
    if status.is_success() {
        return match body {
            Ok(body) => Verdict::Success { status, body },
            Err(e) => {
                let message = format!(
                    "HTTP {} answered but its body was lost: {e}",
                    status.as_u16()
                );
                if endpoint.is_idempotent() {
                    Verdict::Retry {
                        error: ApiError::Transport { endpoint, message },
                        not_before: None,
                    }
                } else {
                    Verdict::OutcomeUnknown(ApiError::OutcomeUnknown { message })
                }
            }
        };
    }
    let retry_after = retry_after(headers, now);
    let body = body.unwrap_or_else(|e| format!("(body unreadable: {e})").into_bytes());
    let error = status_error(endpoint, status, retry_after, &body);
    match status.as_u16() {
        429 => Verdict::RateLimited {
            error,
            pause: retry_after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE),
        },
        // The API has no idempotency key and a 5xx does not say whether the deployment was
        // made before the fault: the outcome of a create is unknown.
        500 | 502 | 503 | 504 if !endpoint.is_idempotent() => {
            Verdict::OutcomeUnknown(ApiError::OutcomeUnknown {
                message: error.to_string(),
            })
        }
        500 | 502 | 503 | 504 => Verdict::Retry {
            error,
            not_before: retry_after,
        },
        _ => Verdict::Fail(error),
    }
}

/// Classifies an attempt that got no answer; `message` says what the transport reported.
pub fn transport_failure(
    endpoint: Endpoint,
    failure: TransportFailure,
    message: String,
) -> Verdict {
    match failure {
        TransportFailure::Invalid => Verdict::Fail(ApiError::Config(message)),
        TransportFailure::MaybeSent if !endpoint.is_idempotent() => {
            Verdict::OutcomeUnknown(ApiError::OutcomeUnknown { message })
        }
        TransportFailure::NotSent | TransportFailure::MaybeSent => Verdict::Retry {
            error: ApiError::Transport { endpoint, message },
            not_before: None,
        },
    }
}

/// Reads the body of a 2xx. One the client cannot read is [`ApiError::Decode`], except for a
/// call that is not idempotent: a 2xx to a create means the deployment exists, so the caller
/// must look for it rather than create again ([`ApiError::OutcomeUnknown`]).
pub fn decode<T: DeserializeOwned>(
    endpoint: Endpoint,
    status: StatusCode,
    body: &[u8],
) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let error = ApiError::Decode {
            endpoint,
            status: status.as_u16(),
            message: e.to_string(),
        };
        if endpoint.is_idempotent() {
            error
        } else {
            ApiError::OutcomeUnknown {
                message: error.to_string(),
            }
        }
    })
}

/// `ApiError::Status` from a non-2xx answer: the envelope's code, message and details, or
/// `http_<status>` and an excerpt of whatever the body was.
fn status_error(
    endpoint: Endpoint,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
) -> ApiError {
    let (code, message, details) = match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => (env.error.code, env.error.message, env.error.details),
        Err(_) => (
            format!("http_{}", status.as_u16()),
            excerpt(body, status),
            Default::default(),
        ),
    };
    ApiError::Status {
        endpoint,
        status: status.as_u16(),
        code,
        message,
        details,
        retry_after,
    }
}

/// A short, single-line excerpt of a body for an error message.
fn excerpt(body: &[u8], status: StatusCode) -> String {
    let text = String::from_utf8_lossy(body);
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("(empty body)")
            .to_owned();
    }
    if collapsed.chars().count() > BODY_EXCERPT_CHARS {
        let cut: String = collapsed.chars().take(BODY_EXCERPT_CHARS).collect();
        format!("{cut}…")
    } else {
        collapsed
    }
}

/// `Retry-After` as whole seconds or as an HTTP date (a date in the past is zero).
fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers.get(HEADER_RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let secs = u64::try_from(at.as_second() - now.as_second()).unwrap_or(0);
    Some(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_ERROR: &[u8] = br#"{"error":{"code":"internal_error","message":"boom"}}"#;
    const TOO_MANY: &[u8] = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;

    /// What a verdict amounts to, for table rows.
    #[derive(Debug, PartialEq)]
    enum Is {
        Success,
        Retry(&'static str, Option<Duration>),
        RateLimited(Duration),
        OutcomeUnknown,
        Fail(&'static str),
    }

    fn is(v: &Verdict) -> Is {
        match v {
            Verdict::Success { .. } => Is::Success,
            Verdict::Retry { error, not_before } => Is::Retry(error.category(), *not_before),
            Verdict::RateLimited { pause, .. } => Is::RateLimited(*pause),
            Verdict::OutcomeUnknown(e) => {
                assert!(matches!(e, ApiError::OutcomeUnknown { .. }), "{e:?}");
                Is::OutcomeUnknown
            }
            Verdict::Fail(e) => Is::Fail(e.category()),
        }
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_741_948_320).unwrap()
    }

    fn headers(retry_after: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(HEADER_RETRY_AFTER, v.parse().unwrap());
        }
        h
    }

    fn classify(endpoint: Endpoint, status: u16, retry_after: Option<&str>, body: &[u8]) -> Is {
        let status = StatusCode::from_u16(status).unwrap();
        is(&answer(
            endpoint,
            status,
            &headers(retry_after),
            Ok(body.to_vec()),
            now(),
        ))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Why, endpoint, status, `Retry-After`, body, verdict.
    type AnswerRow = (
        &'static str,
        Endpoint,
        u16,
        Option<&'static str>,
        &'static [u8],
        Is,
    );

    #[test]
    fn answers_are_classified_by_status_and_whether_the_call_is_idempotent() {
        use Endpoint::*;
        #[rustfmt::skip]
        let table: &[AnswerRow] = &[
            ("a 201 to a create succeeds", Create, 201, None, b"{}", Is::Success),
            ("a 204 to a delete succeeds", Delete, 204, None, b"", Is::Success),
            ("a 500 to a get is retried", Get, 500, None, SERVER_ERROR, Is::Retry("server_error", None)),
            ("a 503 with Retry-After is retried no sooner", List, 503, Some("3"), SERVER_ERROR, Is::Retry("server_error", Some(secs(3)))),
            ("a 502 to a cancel is retried", Cancel, 502, None, b"<html>", Is::Retry("server_error", None)),
            ("a 504 to a delete is retried", Delete, 504, None, b"", Is::Retry("server_error", None)),
            ("a 500 to a create is an unknown outcome", Create, 500, None, SERVER_ERROR, Is::OutcomeUnknown),
            ("a 504 to a create is an unknown outcome", Create, 504, None, b"", Is::OutcomeUnknown),
            ("a 429 pauses for its Retry-After", Get, 429, Some("7"), TOO_MANY, Is::RateLimited(secs(7))),
            ("a 429 without Retry-After pauses one second", Logs, 429, None, TOO_MANY, Is::RateLimited(secs(1))),
            ("a 429 to a create is waited out too", Create, 429, Some("2"), TOO_MANY, Is::RateLimited(secs(2))),
            ("a 400 to a create is final", Create, 400, None, b"{}", Is::Fail("invalid_request")),
            ("a 401 is final", List, 401, None, b"{}", Is::Fail("unauthorized")),
            ("a 403 is final", Cancel, 403, None, b"{}", Is::Fail("forbidden")),
            ("a 404 is final", Get, 404, None, b"{}", Is::Fail("not_found")),
            ("a 409 is final", Cancel, 409, None, b"{}", Is::Fail("conflict")),
            ("a 408 is final, as the client has always treated it", Get, 408, None, b"", Is::Fail("http_error")),
            ("a 501 is final", Get, 501, None, b"", Is::Fail("server_error")),
            ("a redirect is final: it is never followed", Create, 302, None, b"", Is::Fail("http_error")),
        ];
        for (why, endpoint, status, retry_after, body, want) in table {
            assert_eq!(
                classify(*endpoint, *status, *retry_after, body),
                *want,
                "{why}"
            );
        }
    }

    #[test]
    fn a_lost_body_of_a_2xx_is_retried_unless_the_call_was_a_create() {
        let lost = |endpoint| {
            answer(
                endpoint,
                StatusCode::OK,
                &HeaderMap::new(),
                Err("connection reset".into()),
                now(),
            )
        };
        let v = lost(Endpoint::Get);
        assert_eq!(is(&v), Is::Retry("transport", None));
        assert!(format!("{v:?}").contains("HTTP 200 answered but its body was lost"));
        assert_eq!(is(&lost(Endpoint::Create)), Is::OutcomeUnknown);
    }

    #[test]
    fn an_unreadable_error_body_still_gives_the_status_error() {
        let v = answer(
            Endpoint::Get,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Err("reset".into()),
            now(),
        );
        let Verdict::Fail(ApiError::Status { code, message, .. }) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(code, "http_404");
        assert_eq!(message, "(body unreadable: reset)");
    }

    #[test]
    fn transport_failures_are_retried_unless_a_create_may_have_been_sent() {
        use Endpoint::*;
        use TransportFailure::*;
        #[rustfmt::skip]
        let table = [
            ("a refused connection of a create is retried: nothing was sent", Create, NotSent, Is::Retry("transport", None)),
            ("a timeout of a create is an unknown outcome", Create, MaybeSent, Is::OutcomeUnknown),
            ("a timeout of a get is retried", Get, MaybeSent, Is::Retry("transport", None)),
            ("a reset during a delete is retried", Delete, MaybeSent, Is::Retry("transport", None)),
            ("a refused connection of a list is retried", List, NotSent, Is::Retry("transport", None)),
            ("a request that cannot be formed is a config error", Get, Invalid, Is::Fail("config")),
            ("a create that cannot be formed is a config error", Create, Invalid, Is::Fail("config")),
        ];
        for (why, endpoint, failure, want) in table {
            assert_eq!(
                is(&transport_failure(endpoint, failure, "x".into())),
                want,
                "{why}"
            );
        }
    }

    #[test]
    fn the_outcome_label_is_success_or_the_error_category_with_the_status() {
        let ok = answer(
            Endpoint::Get,
            StatusCode::OK,
            &HeaderMap::new(),
            Ok(vec![]),
            now(),
        );
        assert_eq!(ok.outcome(), ("success", Some(200)));
        let limited = answer(
            Endpoint::Get,
            StatusCode::TOO_MANY_REQUESTS,
            &HeaderMap::new(),
            Ok(TOO_MANY.to_vec()),
            now(),
        );
        assert_eq!(limited.outcome(), ("rate_limited", Some(429)));
        assert_eq!(limited.rate_limit_pause(), Some(DEFAULT_RATE_LIMIT_PAUSE));
        assert_eq!(ok.rate_limit_pause(), None);
        let lost = transport_failure(Endpoint::Create, TransportFailure::MaybeSent, "x".into());
        assert_eq!(lost.outcome(), ("outcome_unknown", None));
    }

    #[test]
    fn an_unparsable_2xx_is_a_decode_error_except_for_a_create_whose_outcome_is_unknown() {
        let get = decode::<serde_json::Value>(Endpoint::Get, StatusCode::OK, b"{");
        assert_eq!(get.unwrap_err().category(), "decode");
        let create =
            decode::<serde_json::Value>(Endpoint::Create, StatusCode::CREATED, b"{").unwrap_err();
        assert_eq!(create.category(), "outcome_unknown");
        assert!(
            create
                .to_string()
                .contains("answered HTTP 201 with a body that does not parse"),
            "{create}"
        );
        let ok: serde_json::Value = decode(Endpoint::Get, StatusCode::OK, b"{}").unwrap();
        assert!(ok.is_object());
    }

    #[test]
    fn a_non_envelope_error_body_becomes_http_status_and_an_excerpt() {
        let long = format!("<html>\n  <body>{}</body></html>", "x".repeat(500));
        let e = status_error(
            Endpoint::Get,
            StatusCode::BAD_GATEWAY,
            None,
            long.as_bytes(),
        );
        assert_eq!(e.code(), Some("http_502"));
        let ApiError::Status { message, .. } = &e else {
            panic!()
        };
        assert!(message.starts_with("<html> <body>xxx"), "{message}");
        assert!(message.chars().count() <= BODY_EXCERPT_CHARS + 1);
        let empty = status_error(Endpoint::Get, StatusCode::SERVICE_UNAVAILABLE, None, b"");
        assert!(empty.to_string().contains("Service Unavailable"));
    }

    #[test]
    fn an_envelope_error_body_keeps_code_message_and_details() {
        let body = br#"{"error":{"code":"invalid_branch","message":"Branch 'x' does not exist","details":{"project_id":"proj_8f3k29"}},"extra":1}"#;
        let e = status_error(Endpoint::Create, StatusCode::BAD_REQUEST, None, body);
        let ApiError::Status {
            status,
            code,
            details,
            ..
        } = &e
        else {
            panic!()
        };
        assert_eq!((*status, code.as_str()), (400, "invalid_branch"));
        assert_eq!(details["project_id"], "proj_8f3k29");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h, now()), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            "Thu, 01 Jan 1970 00:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now()), Some(Duration::ZERO));
        h.insert(
            "retry-after",
            "Fri, 14 Mar 2025 10:32:05 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now()), Some(Duration::from_secs(5)));
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now()), None);
    }

    #[test]
    fn a_5xx_to_a_create_is_an_unknown_outcome_but_a_5xx_to_a_get_is_retried() {
        let h = HeaderMap::new();
        for s in [500, 502, 503, 504] {
            let status = StatusCode::from_u16(s).unwrap();
            match answer(
                Endpoint::Create,
                status,
                &h,
                Ok(SERVER_ERROR.to_vec()),
                now(),
            ) {
                Verdict::OutcomeUnknown(e) => assert_eq!(e.category(), "outcome_unknown"),
                _ => panic!("{s}"),
            }
            assert!(matches!(
                answer(Endpoint::Get, status, &h, Ok(SERVER_ERROR.to_vec()), now()),
                Verdict::Retry { .. }
            ));
        }
        match answer(
            Endpoint::Create,
            StatusCode::BAD_REQUEST,
            &h,
            Ok(SERVER_ERROR.to_vec()),
            now(),
        ) {
            Verdict::Fail(e) => assert_eq!(e.status(), Some(400)),
            _ => panic!(),
        }
    }
}
