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
//!
//! Only the API's own definitive answers settle a create: a 2xx, or a 4xx whose body is the
//! API's error envelope (`{"error": {"code", "message"}}`, a 429 `rate_limited` included).
//! Anything else — any 5xx, a 408, a 3xx, an HTML page, a body that is not the envelope — may
//! come from a gateway that gave up on the API after the API made the deployment, so it is an
//! unknown outcome.
//!
//! Headers and bodies come from outside: waits read from headers are capped
//! ([`MAX_SERVER_WAIT`], with a warning, the only side effect of this module), and what an
//! error keeps of a body is cut ([`MAX_MESSAGE_BYTES`]).

use std::time::Duration;

use jiff::Timestamp;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;

use super::types::{ErrorEnvelope, HEADER_RETRY_AFTER};
use super::{ApiError, Endpoint};

/// How long a 429 without `Retry-After` pauses its token.
pub const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

/// The longest wait a header (`Retry-After`, `X-RateLimit-Reset`) is believed for. The
/// contract's figures are seconds; a larger one is a gateway's or a bug, and taken at its word
/// it would silence a token until the process restarts.
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(3600);

/// Longest excerpt of a non-JSON error body kept in [`ApiError::Status`]'s message.
const BODY_EXCERPT_CHARS: usize = 200;

/// Longest `message` kept from an error envelope; the API's are one sentence.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Longest `code` kept from an error envelope; the API's are one snake_case word.
const MAX_CODE_BYTES: usize = 128;

/// Largest `details` kept from an error envelope, as JSON; larger ones are dropped.
const MAX_DETAILS_BYTES: usize = 4096;

/// How much of a header value a warning quotes.
const QUOTED_HEADER_CHARS: usize = 64;

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

/// Why an answer's body is not there to classify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// The transport failed while reading it.
    Lost(String),
    /// It was longer than the client reads (`limit` bytes); reading stopped there.
    TooLarge { limit: usize },
}

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyFailure::Lost(e) => write!(f, "body unreadable: {e}"),
            BodyFailure::TooLarge { limit } => {
                write!(f, "body larger than the limit of {limit} bytes")
            }
        }
    }
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
    /// creating again. Always [`ApiError::OutcomeUnknown`]. `pause` is set when the answer
    /// was a 429 that was not the API's own: the token still waits, as asked.
    OutcomeUnknown {
        error: ApiError,
        pause: Option<Duration>,
    },
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
            | Verdict::OutcomeUnknown { error, .. }
            | Verdict::Fail(error) => (error.category(), error.status()),
        }
    }

    /// How long the token must pause, when the answer was a 429.
    pub fn rate_limit_pause(&self) -> Option<Duration> {
        match self {
            Verdict::RateLimited { pause, .. } => Some(*pause),
            Verdict::OutcomeUnknown { pause, .. } => *pause,
            _ => None,
        }
    }
}

/// Classifies an answer. `body` is why there is no body when it could not be read whole;
/// `now` is the time against which a `Retry-After` HTTP date is read.
pub fn answer(
    endpoint: Endpoint,
    status: StatusCode,
    headers: &HeaderMap,
    body: Result<Vec<u8>, BodyFailure>,
    now: Timestamp,
) -> Verdict {
    if status.is_success() {
        return match body {
            Ok(body) => Verdict::Success { status, body },
            Err(BodyFailure::TooLarge { limit }) if endpoint.is_idempotent() => {
                // The same request would get the same answer: no retry here.
                Verdict::Fail(ApiError::TooLarge {
                    endpoint,
                    status: status.as_u16(),
                    limit,
                })
            }
            Err(BodyFailure::Lost(e)) if endpoint.is_idempotent() => Verdict::Retry {
                error: ApiError::Transport {
                    endpoint,
                    message: format!(
                        "HTTP {} answered but its body was lost: {e}",
                        status.as_u16()
                    ),
                },
                not_before: None,
            },
            // A 2xx to a create means the deployment exists, but we do not know its id.
            Err(e) => unknown(
                format!("{endpoint} answered HTTP {}, {e}", status.as_u16()),
                None,
            ),
        };
    }
    let retry_after = retry_after(headers, now);
    let (body, envelope) = match body {
        Ok(body) => {
            let envelope = serde_json::from_slice::<ErrorEnvelope>(&body).ok();
            (body, envelope)
        }
        Err(e) => (format!("({e})").into_bytes(), None),
    };
    let definitive = envelope.is_some() && status.is_client_error();
    let error = status_error(endpoint, status, retry_after, envelope, &body);
    let code = status.as_u16();
    if !endpoint.is_idempotent() && !definitive {
        // Not the API's own answer: a gateway may have given up after the API made the
        // deployment, and the API has no idempotency key.
        let pause = (code == 429).then(|| retry_after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE));
        return unknown(error.to_string(), pause);
    }
    match code {
        429 => Verdict::RateLimited {
            error,
            pause: retry_after.unwrap_or(DEFAULT_RATE_LIMIT_PAUSE),
        },
        // Only calls safe to repeat get here: a timeout or a fault of the API or a gateway.
        // 501 and 505 say this request cannot be served at all.
        408 | 500..=599 if !matches!(code, 501 | 505) => Verdict::Retry {
            error,
            not_before: retry_after,
        },
        _ => Verdict::Fail(error),
    }
}

fn unknown(message: String, pause: Option<Duration>) -> Verdict {
    Verdict::OutcomeUnknown {
        error: ApiError::OutcomeUnknown { message },
        pause,
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
        TransportFailure::MaybeSent if !endpoint.is_idempotent() => unknown(message, None),
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

/// `ApiError::Status` from a non-2xx answer: the envelope's code, message and details (cut to
/// size), or `http_<status>` and an excerpt of whatever the body was.
fn status_error(
    endpoint: Endpoint,
    status: StatusCode,
    retry_after: Option<Duration>,
    envelope: Option<ErrorEnvelope>,
    body: &[u8],
) -> ApiError {
    let (code, message, details) = match envelope {
        Some(env) => {
            let details = env.error.details;
            let small = serde_json::to_vec(&details).is_ok_and(|d| d.len() <= MAX_DETAILS_BYTES);
            (
                cut(env.error.code, MAX_CODE_BYTES),
                cut(env.error.message, MAX_MESSAGE_BYTES),
                if small { details } else { Default::default() },
            )
        }
        None => (
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

/// `text` cut to at most `max` bytes at a character boundary, marked with `…` when cut.
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max.saturating_sub('…'.len_utf8());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// A short, single-line excerpt of a body for an error message.
fn excerpt(body: &[u8], status: StatusCode) -> String {
    // Enough to fill the excerpt even if it is mostly whitespace, without copying a huge body.
    let head = &body[..body.len().min(BODY_EXCERPT_CHARS * 16)];
    let text = String::from_utf8_lossy(head);
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

/// `Retry-After` as whole seconds or as an HTTP date (a date in the past is zero), at most
/// [`MAX_SERVER_WAIT`].
fn retry_after(headers: &HeaderMap, now: Timestamp) -> Option<Duration> {
    let value = headers.get(HEADER_RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds is still "a very long time", not "no header".
        value
            .parse::<u64>()
            .map_or(Duration::MAX, Duration::from_secs)
    } else {
        let at = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(value)
            .ok()?;
        let secs = at.as_second().saturating_sub(now.as_second());
        Duration::from_secs(u64::try_from(secs).unwrap_or(0))
    };
    Some(capped_wait(HEADER_RETRY_AFTER, value, wait))
}

/// `wait`, read from `header` whose text was `value`, at most [`MAX_SERVER_WAIT`]; a longer
/// one is logged, naming the header and (the start of) the value.
pub(crate) fn capped_wait(header: &str, value: &str, wait: Duration) -> Duration {
    if wait <= MAX_SERVER_WAIT {
        return wait;
    }
    let quoted: String = value.chars().take(QUOTED_HEADER_CHARS).collect();
    tracing::warn!(
        header,
        value = %quoted,
        cap_secs = MAX_SERVER_WAIT.as_secs(),
        "the API's {header} header asks for a wait longer than the cap; waiting at most the cap"
    );
    MAX_SERVER_WAIT
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_ERROR: &[u8] = br#"{"error":{"code":"internal_error","message":"boom"}}"#;
    const TOO_MANY: &[u8] = br#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
    /// The API's own error envelopes of the 4xx it answers.
    const INVALID: &[u8] = br#"{"error":{"code":"invalid_branch","message":"no such branch"}}"#;
    const UNAUTHORIZED: &[u8] = br#"{"error":{"code":"unauthorized","message":"bad token"}}"#;
    const FORBIDDEN: &[u8] = br#"{"error":{"code":"insufficient_scope","message":"read only"}}"#;
    const NOT_FOUND: &[u8] = br#"{"error":{"code":"not_found","message":"no such deployment"}}"#;
    const CONFLICT: &[u8] = br#"{"error":{"code":"not_cancellable","message":"finished"}}"#;
    /// What a gateway in front of the API answers with.
    const HTML: &[u8] =
        b"<!DOCTYPE html><html><head><title>524: A timeout occurred</title></head></html>";

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
            Verdict::OutcomeUnknown { error, .. } => {
                assert!(
                    matches!(error, ApiError::OutcomeUnknown { .. }),
                    "{error:?}"
                );
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

    fn verdict(endpoint: Endpoint, status: u16, retry_after: Option<&str>, body: &[u8]) -> Verdict {
        let status = StatusCode::from_u16(status).unwrap();
        answer(
            endpoint,
            status,
            &headers(retry_after),
            Ok(body.to_vec()),
            now(),
        )
    }

    fn classify(endpoint: Endpoint, status: u16, retry_after: Option<&str>, body: &[u8]) -> Is {
        is(&verdict(endpoint, status, retry_after, body))
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
            ("a gateway's 520 to a get is retried", Get, 520, None, HTML, Is::Retry("server_error", None)),
            ("a gateway's 524 to a list is retried", List, 524, None, HTML, Is::Retry("server_error", None)),
            ("a 408 to a get is retried: the request timed out on its way", Get, 408, None, HTML, Is::Retry("http_error", None)),
            ("a 408 to a delete is retried", Delete, 408, None, b"", Is::Retry("http_error", None)),
            ("a 500 to a create is an unknown outcome", Create, 500, None, SERVER_ERROR, Is::OutcomeUnknown),
            ("a 504 to a create is an unknown outcome", Create, 504, None, b"", Is::OutcomeUnknown),
            // Changed by issue 10: these were taken as "not created", and the create was sent
            // again after the gateway had let the first one through.
            ("a 408 to a create is an unknown outcome", Create, 408, None, HTML, Is::OutcomeUnknown),
            ("a 520 to a create is an unknown outcome", Create, 520, None, HTML, Is::OutcomeUnknown),
            ("a 524 to a create is an unknown outcome", Create, 524, None, HTML, Is::OutcomeUnknown),
            ("a 501 to a create is an unknown outcome, as is any 5xx", Create, 501, None, b"", Is::OutcomeUnknown),
            ("a 502 with an HTML page to a create is an unknown outcome", Create, 502, None, HTML, Is::OutcomeUnknown),
            ("a 400 with an HTML page to a create is an unknown outcome: not the API's answer", Create, 400, None, HTML, Is::OutcomeUnknown),
            ("a 404 with JSON that is not the envelope to a create is an unknown outcome", Create, 404, None, br#"{"message":"no route"}"#, Is::OutcomeUnknown),
            ("a 429 with an HTML page to a create is an unknown outcome", Create, 429, Some("2"), HTML, Is::OutcomeUnknown),
            ("a redirect to a create is an unknown outcome: it is never followed", Create, 302, None, b"", Is::OutcomeUnknown),
            // The API's own answers settle a create.
            ("a 400 with the API's envelope to a create is final", Create, 400, None, INVALID, Is::Fail("invalid_request")),
            ("a 401 with the API's envelope to a create is final", Create, 401, None, UNAUTHORIZED, Is::Fail("unauthorized")),
            ("a 429 with the API's envelope to a create is waited out", Create, 429, Some("2"), TOO_MANY, Is::RateLimited(secs(2))),
            ("a 429 pauses for its Retry-After", Get, 429, Some("7"), TOO_MANY, Is::RateLimited(secs(7))),
            ("a 429 without Retry-After pauses one second", Logs, 429, None, TOO_MANY, Is::RateLimited(secs(1))),
            ("a 429 with an HTML page to a get pauses too", Get, 429, Some("3"), HTML, Is::RateLimited(secs(3))),
            ("a 401 is final", List, 401, None, UNAUTHORIZED, Is::Fail("unauthorized")),
            ("a 403 is final", Cancel, 403, None, FORBIDDEN, Is::Fail("forbidden")),
            ("a 404 is final", Get, 404, None, NOT_FOUND, Is::Fail("not_found")),
            ("a 409 is final", Cancel, 409, None, CONFLICT, Is::Fail("conflict")),
            ("a 404 with an HTML page to a get is final, with its status", Get, 404, None, HTML, Is::Fail("not_found")),
            ("a 400 with an HTML page to a delete is final", Delete, 400, None, HTML, Is::Fail("invalid_request")),
            ("a 501 to a get is final: the request cannot be served", Get, 501, None, b"", Is::Fail("server_error")),
            ("a redirect to a get is final: it is never followed", Get, 302, None, b"", Is::Fail("http_error")),
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
    fn a_gateways_429_to_a_create_still_pauses_the_token() {
        let v = verdict(Endpoint::Create, 429, Some("4"), HTML);
        assert_eq!(is(&v), Is::OutcomeUnknown);
        assert_eq!(v.rate_limit_pause(), Some(secs(4)));
    }

    #[test]
    fn a_lost_body_of_a_2xx_is_retried_unless_the_call_was_a_create() {
        let lost = |endpoint| {
            answer(
                endpoint,
                StatusCode::OK,
                &HeaderMap::new(),
                Err(BodyFailure::Lost("connection reset".into())),
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
            Err(BodyFailure::Lost("reset".into())),
            now(),
        );
        let Verdict::Fail(ApiError::Status { code, message, .. }) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(code, "http_404");
        assert_eq!(message, "(body unreadable: reset)");
    }

    #[test]
    fn a_2xx_too_large_to_read_is_final_for_a_get_and_an_unknown_outcome_for_a_create() {
        let too_large = |endpoint, status| {
            answer(
                endpoint,
                status,
                &HeaderMap::new(),
                Err(BodyFailure::TooLarge { limit: 1024 }),
                now(),
            )
        };
        let v = too_large(Endpoint::List, StatusCode::OK);
        let Verdict::Fail(e) = &v else {
            panic!("{v:?}")
        };
        assert_eq!(e.category(), "too_large");
        assert_eq!(
            e.to_string(),
            "GET /deployments answered HTTP 200 with a body larger than the limit of 1024 bytes"
        );
        let v = too_large(Endpoint::Create, StatusCode::CREATED);
        assert_eq!(is(&v), Is::OutcomeUnknown);
        assert!(format!("{v:?}").contains("limit of 1024 bytes"), "{v:?}");
        // An error body too large to read is not the API's envelope.
        let v = too_large(Endpoint::Create, StatusCode::BAD_REQUEST);
        assert_eq!(is(&v), Is::OutcomeUnknown);
        let v = too_large(Endpoint::Get, StatusCode::NOT_FOUND);
        assert!(format!("{v:?}").contains("body larger than the limit of 1024 bytes"));
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
            None,
            long.as_bytes(),
        );
        assert_eq!(e.code(), Some("http_502"));
        let ApiError::Status { message, .. } = &e else {
            panic!()
        };
        assert!(message.starts_with("<html> <body>xxx"), "{message}");
        assert!(message.chars().count() <= BODY_EXCERPT_CHARS + 1);
        let empty = status_error(
            Endpoint::Get,
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            None,
            b"",
        );
        assert!(empty.to_string().contains("Service Unavailable"));
    }

    #[test]
    fn an_envelope_error_body_keeps_code_message_and_details() {
        let body = br#"{"error":{"code":"invalid_branch","message":"Branch 'x' does not exist","details":{"project_id":"proj_8f3k29"}},"extra":1}"#;
        let envelope = serde_json::from_slice(body).ok();
        let e = status_error(
            Endpoint::Create,
            StatusCode::BAD_REQUEST,
            None,
            envelope,
            body,
        );
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
    fn a_retry_after_beyond_an_hour_is_capped_at_an_hour_without_overflow() {
        let hour = Some(MAX_SERVER_WAIT);
        for value in [
            "3601",
            "99999999999999",
            "18446744073709551615",
            "99999999999999999999",
            "999999999999999999999999999999999999999",
            "Thu, 30 Dec 9999 00:00:00 GMT",
        ] {
            assert_eq!(retry_after(&headers(Some(value)), now()), hour, "{value}");
        }
        assert_eq!(retry_after(&headers(Some("3600")), now()), Some(secs(3600)));
        let v = verdict(Endpoint::Get, 429, Some("99999999999999"), TOO_MANY);
        assert_eq!(v.rate_limit_pause(), hour);
    }

    #[test]
    fn an_envelopes_message_code_and_details_are_kept_only_up_to_a_size() {
        let body = serde_json::json!({"error": {
            "code": "c".repeat(10_000),
            "message": "é".repeat(100_000),
            "details": {"blob": "x".repeat(100_000)},
        }});
        let body = serde_json::to_vec(&body).unwrap();
        let v = answer(
            Endpoint::Get,
            StatusCode::NOT_FOUND,
            &HeaderMap::new(),
            Ok(body),
            now(),
        );
        let Verdict::Fail(ApiError::Status {
            code,
            message,
            details,
            ..
        }) = &v
        else {
            panic!("{v:?}")
        };
        assert!(code.len() <= MAX_CODE_BYTES, "{}", code.len());
        assert!(message.len() <= MAX_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with('…'));
        assert!(details.is_empty());
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
                Verdict::OutcomeUnknown { error, .. } => {
                    assert_eq!(error.category(), "outcome_unknown")
                }
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
            Ok(INVALID.to_vec()),
            now(),
        ) {
            Verdict::Fail(e) => assert_eq!(e.status(), Some(400)),
            _ => panic!(),
        }
    }
}
