//! The HTTP client of the git.dev Deployments API (contract: `docs/deployments-api.md`).
//!
//! [`HttpClient`] implements [`DeploymentsApi`] over reqwest (rustls with the ring provider):
//! it sends, waits for rate budget and retries. What an answer means is decided by
//! `super::classify`. The behaviour is described for users in `docs/api-client.md`; in short:
//!
//! * safe calls (list, get, logs, cancel, delete) are retried on 408, on any 5xx but 501 and
//!   505 and on transport errors, with full-jitter exponential backoff, bounded in attempts
//!   and time;
//! * `POST /deployments` is never repeated once it may have reached the server: anything but
//!   a 2xx or the API's own 4xx error envelope (a timeout, a lost connection, an unreadable
//!   answer, any 5xx, a 408, a gateway's HTML page) gives [`ApiError::OutcomeUnknown`]. Only a
//!   connection that could not be opened (nothing sent) is retried;
//! * a body is read up to a limit ([`ClientConfig::max_body_bytes`], `max_log_bytes`), never
//!   further, whatever the server says its length is;
//! * every call first takes a token from the process-wide budget of its API token
//!   ([`super::ratelimit`]); a 429 that still arrives pauses the token and the call is sent
//!   again once the pause is over.

use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use reqwest::header::{self, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::classify::{self, BodyFailure, TransportFailure, Verdict};
use super::ratelimit::{Budget, BudgetSnapshot, Permit, RateLimitHeaders, RateLimiter};
use super::types::{
    CancelledDeployment, CreateDeploymentRequest, CreatedDeployment, DeploymentDetails,
    DeploymentList, ListQuery,
};
use super::{ApiError, ApiToken, CreateSlot, DeploymentsApi, Endpoint, Room};

/// Production base URL of the API.
pub const DEFAULT_BASE_URL: &str = "https://api.git.dev/v1";

/// Default for [`ClientConfig::max_body_bytes`]: a page of 100 deployments is about 30 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// Default for [`ClientConfig::max_log_bytes`].
pub const DEFAULT_MAX_LOG_BYTES: usize = 4 << 20;

/// Told about every HTTP attempt (retries included) and every wait for rate budget, e.g. to
/// feed metrics. Must be cheap: it is called on the request path.
pub trait ApiObserver: Send + Sync {
    /// One HTTP attempt ended. `outcome` is `"success"` or [`ApiError::category`] of what the
    /// attempt produced; `status` is the HTTP status when the server answered.
    fn request_finished(
        &self,
        endpoint: Endpoint,
        outcome: &str,
        status: Option<u16>,
        elapsed: Duration,
    );

    /// A call waited `waited` (possibly zero) for its token's rate budget before being sent,
    /// or before being refused with [`ApiError::Throttled`].
    fn budget_wait(&self, endpoint: Endpoint, waited: Duration) {
        let _ = (endpoint, waited);
    }
}

/// Retries of failed attempts (not of 429s, which have their own bound).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts of one call, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry; doubled at each retry.
    pub base_backoff: Duration,
    /// Largest backoff ceiling.
    pub max_backoff: Duration,
    /// No retry starts once the call has run this long (budget waits included).
    pub max_elapsed: Duration,
    /// How many 429 answers one call may meet before the 429 is returned.
    pub max_rate_limited: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
            max_rate_limited: 5,
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the backoff before retry number `retry` (1 = first retry):
    /// `min(max_backoff, base_backoff * 2^(retry-1))`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(20));
        self.base_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// "Full jitter": a uniformly random pause in `[0, ceiling]`, so that clients that failed
    /// together do not retry together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry).as_secs_f64();
        if ceiling <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(rand::random_range(0.0..=ceiling))
    }
}

/// How to reach the API. The token is not part of it: every call names its own.
#[derive(Clone)]
pub struct ClientConfig {
    /// e.g. `https://api.git.dev/v1` (a trailing `/` is ignored).
    pub base_url: String,
    /// Whole-attempt timeout: connect, send, and read the answer.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// How long a call may wait locally for its token's rate budget; beyond that it returns
    /// [`ApiError::Throttled`] without sending anything.
    pub max_budget_wait: Duration,
    /// Longest JSON answer (or error body) read; a longer one is an error naming the limit.
    pub max_body_bytes: usize,
    /// Longest build log read.
    pub max_log_bytes: usize,
    pub user_agent: String,
    pub observer: Option<Arc<dyn ApiObserver>>,
    /// Asked right before each attempt of a write (create, cancel, delete) is sent, after
    /// its rate-budget wait: `false` refuses it unsent. The operator's leader fence, so that a
    /// write that waited for budget past the renew deadline is not sent.
    pub write_gate: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            max_budget_wait: Duration::from_secs(10),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            user_agent: concat!("gitdev-operator/", env!("CARGO_PKG_VERSION")).to_owned(),
            observer: None,
            write_gate: None,
        }
    }
}

impl ClientConfig {
    /// Defaults against another base URL (the simulator, a staging API).
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            ..Self::default()
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn ApiObserver>) -> Self {
        self.observer = Some(observer);
        self
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("max_budget_wait", &self.max_budget_wait)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_log_bytes", &self.max_log_bytes)
            .field("user_agent", &self.user_agent)
            .field("observer", &self.observer.as_ref().map(|_| "…"))
            .finish()
    }
}

/// reqwest is built without a crypto provider: install ring as the process default, once.
/// If someone else installed one already (kube does the same), theirs is kept. Called by
/// [`HttpClient::new`]; call it before building any other `reqwest::Client` of this crate.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    /// `base` as text without a trailing slash: the scope of rate budgets.
    scope: String,
    config: ClientConfig,
    limiter: Arc<RateLimiter>,
}

/// The Deployments API over HTTP. Cheap to clone: clones share the connection pool and,
/// through [`RateLimiter::global`], every token's rate budget.
#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("config", &self.inner.config)
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl HttpClient {
    /// A client sharing the process-wide rate budgets.
    pub fn new(config: ClientConfig) -> Result<Self, ApiError> {
        Self::with_rate_limiter(config, RateLimiter::global())
    }

    /// A client with its own registry of rate budgets (tests, or a deliberately separate pool).
    pub fn with_rate_limiter(
        config: ClientConfig,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, ApiError> {
        install_crypto_provider();
        let scope = config.base_url.trim_end_matches('/').to_owned();
        let base =
            Url::parse(&scope).map_err(|e| ApiError::Config(format!("base URL {scope:?}: {e}")))?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(ApiError::Config(format!(
                "base URL {scope:?} is not an http(s) URL"
            )));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(ApiError::Config(format!(
                "base URL {scope:?} must not have a query or fragment"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            // The API does not redirect; following one could replay a create elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ApiError::Config(format!("HTTP client: {}", error_chain(&e))))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                scope,
                config,
                limiter,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.inner.scope
    }

    /// Calls currently waiting for rate budget (all tokens of this client's registry).
    pub fn waiting(&self) -> usize {
        self.inner.limiter.waiting()
    }

    /// The rate budget of `token` as this process sees it.
    pub fn budget(&self, token: &ApiToken) -> BudgetSnapshot {
        self.budget_of(token).snapshot()
    }

    /// Every token's rate budget known to this client's registry: what `/metrics` shows as the
    /// `gitdev_api_budget_*` gauges (`Metrics::set_budgets`).
    pub fn budgets(&self) -> Vec<BudgetSnapshot> {
        self.inner.limiter.snapshots()
    }

    fn budget_of(&self, token: &ApiToken) -> Arc<Budget> {
        self.inner.limiter.budget(&self.inner.scope, token)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        {
            // Checked in the constructor: the base URL can be a base.
            let mut path = url.path_segments_mut().expect("base URL can be a base");
            path.pop_if_empty();
            // Each segment is percent-encoded: an id cannot change the route.
            path.extend(segments);
        }
        url
    }

    fn notify_attempt(
        &self,
        endpoint: Endpoint,
        outcome: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        if let Some(o) = &self.inner.config.observer {
            o.request_finished(endpoint, outcome, status, elapsed);
        }
    }

    fn notify_wait(&self, endpoint: Endpoint, waited: Duration) {
        if let Some(o) = &self.inner.config.observer {
            o.budget_wait(endpoint, waited);
        }
    }

    /// Sends one call with budget, retries and error mapping; returns the 2xx status and body.
    async fn execute(
        &self,
        endpoint: Endpoint,
        token: &ApiToken,
        method: Method,
        url: Url,
        query: Option<&ListQuery>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ApiError> {
        self.execute_with(None, endpoint, token, method, url, query, body)
            .await
    }

    /// Waits for a token of `budget` for one call of `endpoint`, at most `max_budget_wait`;
    /// the wait is reported either way. Refused: [`ApiError::Throttled`], nothing sent.
    async fn acquire_budget(
        &self,
        budget: &Arc<Budget>,
        endpoint: Endpoint,
    ) -> Result<Permit, ApiError> {
        match budget
            .acquire(
                endpoint.default_priority(),
                self.inner.config.max_budget_wait,
            )
            .await
        {
            Ok(permit) => {
                self.notify_wait(endpoint, permit.waited());
                Ok(permit)
            }
            Err(throttled) => {
                self.notify_wait(endpoint, throttled.waited);
                tracing::debug!(
                    endpoint = endpoint.as_str(),
                    token = budget.fingerprint(),
                    retry_after_ms = millis(throttled.retry_after),
                    "not sent: no rate budget within max_budget_wait"
                );
                Err(ApiError::Throttled {
                    endpoint,
                    retry_after: throttled.retry_after,
                })
            }
        }
    }

    /// [`Self::execute`], whose first attempt spends `reserved` (budget taken beforehand)
    /// instead of waiting for its own.
    #[allow(clippy::too_many_arguments)]
    async fn execute_with(
        &self,
        mut reserved: Option<Permit>,
        endpoint: Endpoint,
        token: &ApiToken,
        method: Method,
        url: Url,
        query: Option<&ListQuery>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), ApiError> {
        let config = &self.inner.config;
        let policy = &config.retry;
        let mut auth =
            HeaderValue::try_from(format!("Bearer {}", token.expose())).map_err(|_| {
                ApiError::Config("the API token contains characters not allowed in a header".into())
            })?;
        auth.set_sensitive(true);
        let budget = self.budget_of(token);
        let started = Instant::now();
        let mut failures = 0u32;
        let mut rate_limited = 0u32;
        let mut attempt = 0u32;
        loop {
            let permit = match reserved.take() {
                Some(permit) => permit,
                None => self.acquire_budget(&budget, endpoint).await?,
            };
            let write = matches!(
                endpoint,
                Endpoint::Create | Endpoint::Cancel | Endpoint::Delete
            );
            if write && config.write_gate.as_ref().is_some_and(|may| !may()) {
                drop(permit);
                return Err(ApiError::Transport {
                    endpoint,
                    message: "not sent: this replica does not hold the leader Lease".into(),
                });
            }
            attempt += 1;
            let attempt_started = Instant::now();
            let mut request = self
                .inner
                .http
                .request(method.clone(), url.clone())
                .header(header::AUTHORIZATION, auth.clone())
                .header(
                    header::ACCEPT,
                    if endpoint == Endpoint::Logs {
                        "text/plain"
                    } else {
                        "application/json"
                    },
                );
            if let Some(q) = query {
                request = request.query(q);
            }
            if let Some(b) = &body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(b.clone());
            }
            let verdict = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let headers = response.headers().clone();
                    let limit = if endpoint == Endpoint::Logs {
                        config.max_log_bytes
                    } else {
                        config.max_body_bytes
                    };
                    let body = read_body(response, limit).await;
                    let verdict =
                        classify::answer(endpoint, status, &headers, body, jiff::Timestamp::now());
                    // Every answer, errors included, re-syncs the budget; a 429 pauses it.
                    permit.answered(
                        &RateLimitHeaders::from_headers(&headers),
                        verdict.rate_limit_pause(),
                    );
                    verdict
                }
                Err(e) => {
                    drop(permit);
                    classify::transport_failure(endpoint, transport_failure(&e), error_chain(&e))
                }
            };
            let elapsed = attempt_started.elapsed();
            let (label, status) = verdict.outcome();
            self.notify_attempt(endpoint, label, status, elapsed);
            tracing::debug!(
                endpoint = endpoint.as_str(),
                token = budget.fingerprint(),
                attempt,
                status,
                outcome = label,
                elapsed_ms = millis(elapsed),
                "API attempt finished"
            );
            match verdict {
                Verdict::Success { status, body } => return Ok((status, body)),
                Verdict::OutcomeUnknown { error, .. } | Verdict::Fail(error) => return Err(error),
                Verdict::RateLimited { error, .. } => {
                    rate_limited += 1;
                    if rate_limited > policy.max_rate_limited {
                        return Err(error);
                    }
                    // The budget is paused until Retry-After; `acquire` waits it out.
                }
                Verdict::Retry { error, not_before } => {
                    failures += 1;
                    if failures >= policy.max_attempts {
                        return Err(error);
                    }
                    let mut pause = policy.backoff(failures);
                    if let Some(nb) = not_before {
                        pause = pause.max(nb.min(policy.max_backoff));
                    }
                    if started.elapsed() + pause > policy.max_elapsed {
                        return Err(error);
                    }
                    tracing::debug!(
                        endpoint = endpoint.as_str(),
                        attempt,
                        backoff_ms = millis(pause),
                        error = %error,
                        "retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// `GET /deployments/{id}`, its first attempt spending `reserved` if given.
    async fn get_with(
        &self,
        reserved: Option<Permit>,
        token: &ApiToken,
        id: &str,
    ) -> Result<DeploymentDetails, ApiError> {
        let (status, body) = self
            .execute_with(
                reserved,
                Endpoint::Get,
                token,
                Method::GET,
                self.url(&["deployments", id]),
                None,
                None,
            )
            .await?;
        classify::decode(Endpoint::Get, status, &body)
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        token: &ApiToken,
        method: Method,
        url: Url,
        query: Option<&ListQuery>,
        body: Option<Vec<u8>>,
    ) -> Result<T, ApiError> {
        let (status, body) = self
            .execute(endpoint, token, method, url, query, body)
            .await?;
        classify::decode(endpoint, status, &body)
    }
}

/// The body, read chunk by chunk and never beyond `limit` bytes: `Content-Length` is the
/// server's word, and a chunked answer has none.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyFailure> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if chunk.len() > limit.saturating_sub(body.len()) {
                    return Err(BodyFailure::TooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(BodyFailure::Lost(error_chain(&e))),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How a request that got no answer failed: only reqwest can tell whether anything was sent.
fn transport_failure(e: &reqwest::Error) -> TransportFailure {
    if e.is_builder() {
        TransportFailure::Invalid
    } else if e.is_connect() {
        TransportFailure::NotSent
    } else {
        TransportFailure::MaybeSent
    }
}

/// An error and its causes on one line (reqwest's own message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl DeploymentsApi for HttpClient {
    async fn create(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
    ) -> Result<CreatedDeployment, ApiError> {
        self.create_with(token, request, CreateSlot::unbudgeted())
            .await
    }

    async fn reserve_create(&self, token: &ApiToken) -> Result<CreateSlot, ApiError> {
        let permit = self
            .acquire_budget(&self.budget_of(token), Endpoint::Create)
            .await?;
        Ok(CreateSlot::budgeted(permit))
    }

    async fn create_with(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
        slot: CreateSlot,
    ) -> Result<CreatedDeployment, ApiError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| ApiError::Config(format!("create request: {e}")))?;
        let (status, body) = self
            .execute_with(
                slot.into_permit(),
                Endpoint::Create,
                token,
                Method::POST,
                self.url(&["deployments"]),
                None,
                Some(body),
            )
            .await?;
        // An unreadable 2xx to a create is an unknown outcome, not a decode error: see
        // `classify::decode`.
        classify::decode(Endpoint::Create, status, &body)
    }

    async fn list(&self, token: &ApiToken, query: &ListQuery) -> Result<DeploymentList, ApiError> {
        self.call_json(
            Endpoint::List,
            token,
            Method::GET,
            self.url(&["deployments"]),
            Some(query),
            None,
        )
        .await
    }

    async fn get(&self, token: &ApiToken, id: &str) -> Result<DeploymentDetails, ApiError> {
        self.get_with(None, token, id).await
    }

    async fn get_if_idle(&self, token: &ApiToken, id: &str) -> Result<DeploymentDetails, ApiError> {
        // Refused: nothing was sent and nobody waited, so no budget wait is reported.
        let permit = self
            .budget_of(token)
            .acquire(Endpoint::Get.default_priority(), Duration::ZERO)
            .await
            .map_err(|refused| ApiError::Throttled {
                endpoint: Endpoint::Get,
                retry_after: refused.retry_after,
            })?;
        self.notify_wait(Endpoint::Get, Duration::ZERO);
        self.get_with(Some(permit), token, id).await
    }

    fn room(&self, token: &ApiToken) -> Room {
        self.budget_of(token).room()
    }

    async fn cancel(&self, token: &ApiToken, id: &str) -> Result<CancelledDeployment, ApiError> {
        self.call_json(
            Endpoint::Cancel,
            token,
            Method::POST,
            self.url(&["deployments", id, "cancel"]),
            None,
            None,
        )
        .await
    }

    async fn delete(&self, token: &ApiToken, id: &str) -> Result<(), ApiError> {
        self.execute(
            Endpoint::Delete,
            token,
            Method::DELETE,
            self.url(&["deployments", id]),
            None,
            None,
        )
        .await
        .map(|_| ())
    }

    async fn logs(&self, token: &ApiToken, id: &str) -> Result<String, ApiError> {
        let (_, bytes) = self
            .execute(
                Endpoint::Logs,
                token,
                Method::GET,
                self.url(&["deployments", id, "logs"]),
                None,
                None,
            )
            .await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> HttpClient {
        HttpClient::with_rate_limiter(ClientConfig::new(base), Arc::new(RateLimiter::new()))
            .unwrap()
    }

    #[test]
    fn urls_are_built_under_the_base_path_with_ids_escaped() {
        let c = client("http://127.0.0.1:1/v1/");
        assert_eq!(c.base_url(), "http://127.0.0.1:1/v1");
        assert_eq!(
            c.url(&["deployments", "dep_1", "logs"]).as_str(),
            "http://127.0.0.1:1/v1/deployments/dep_1/logs"
        );
        assert_eq!(
            c.url(&["deployments", "../x?y"]).as_str(),
            "http://127.0.0.1:1/v1/deployments/..%2Fx%3Fy"
        );
    }

    #[test]
    fn a_bad_base_url_is_a_config_error() {
        for bad in ["not a url", "mailto:x@y", "ftp://h/v1", "http://h/v1?x=1"] {
            let e = HttpClient::new(ClientConfig::new(bad)).unwrap_err();
            assert_eq!(e.category(), "config", "{bad}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_its_ceiling_with_full_jitter() {
        let p = RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff_ceiling(1), Duration::from_millis(100));
        assert_eq!(p.backoff_ceiling(3), Duration::from_millis(400));
        assert_eq!(p.backoff_ceiling(30), Duration::from_millis(1000));
        for _ in 0..100 {
            assert!(p.backoff(3) <= Duration::from_millis(400));
        }
    }

    #[test]
    fn debug_output_names_no_token() {
        let c = client("http://127.0.0.1:1/v1");
        let token = ApiToken::new("sk_live_do_not_print");
        let _ = c.budget(&token);
        let text = format!("{c:?} {:?} {:?}", c.config(), c.budgets());
        assert!(!text.contains("sk_live"), "{text}");
        assert!(text.contains("127.0.0.1"));
    }
}
