//! Process-wide rate budgets of API tokens.
//!
//! The API limits every token (Starter 100 requests/min with a burst of 20, Pro 1,000/min with
//! 200, Enterprise configurable) with a token bucket of capacity *burst* refilled at
//! *limit / 60* per second, and answers `429` once it is empty. The operator serves many objects
//! with the same token from many tasks, so the budget is kept here, once per process and token,
//! shared by every [`HttpClient`](super::client::HttpClient) clone:
//!
//! * each [`Budget`] mirrors the server's bucket. Before the first answer the plan is unknown and
//!   the bucket assumes the smallest plan (Starter); every answer re-syncs it from
//!   `X-RateLimit-Limit` / `X-RateLimit-Remaining` / `X-RateLimit-Reset`. The burst is not sent
//!   by the server: it is inferred from the limit with [`burst_for_limit`].
//! * a call takes one token before it is sent. Without a token it waits (a tokio sleep until the
//!   next token, no polling); waiters are served by [`Priority`], highest first, FIFO within a
//!   priority, and only the first waiter in that order may take a token.
//! * a wait longer than the caller's patience is refused at once: nothing is sent and the caller
//!   learns when to come back ([`Throttled`]).
//! * a `429` that still arrives empties the bucket and pauses the whole token until
//!   `Retry-After` has passed, for at most [`MAX_RATE_LIMIT_PAUSE`] at a time.
//!
//! Budgets are keyed by an HMAC-SHA256 of (base URL, token) under a key drawn at random for each
//! registry: the token itself is never stored here nor logged. Logs and the budget gauges on
//! `/metrics` name a budget by [`Budget::fingerprint`], the first 16 hex digits of that HMAC:
//! without the key, which never leaves the process, it says nothing about the token, not even
//! whether a guessed token is the right one, and it differs from one process to the next.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use reqwest::header::HeaderMap;
use ring::hmac;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Room;

use super::classify::{MAX_SERVER_WAIT, capped_wait};
use super::types::{HEADER_LIMIT, HEADER_REMAINING, HEADER_RESET};
use super::{ApiToken, Priority};

/// The per-minute limit assumed for a token before the server has told us its plan: the
/// smallest plan, Starter, so that a fresh process never overruns any plan.
pub const ASSUMED_LIMIT_PER_MINUTE: u32 = 100;

/// The longest a 429 silences a token at once. The contract's bucket admits at least one
/// request a minute (a plan has a limit of at least 1 per minute), so its `Retry-After` never
/// exceeds this; a longer one is not the bucket speaking (a gateway, a bug). The token then
/// sends one request a minute, far below any plan's limit, and a 429 to it pauses it again;
/// once the server answers otherwise, the token is back at once instead of up to an hour later.
pub const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(60);

/// The burst (bucket capacity) of a plan, inferred from its per-minute limit, which is all the
/// headers carry: Starter 100 → 20, Pro 1,000 → 200, anything else (Enterprise, configured)
/// limit / 5, which is the ratio of both published plans. At least 1.
pub fn burst_for_limit(limit_per_minute: u32) -> u32 {
    match limit_per_minute {
        100 => 20,
        1000 => 200,
        other => (other / 5).max(1),
    }
}

/// The rate-limit headers of one answer; every answer, errors included, carries them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `X-RateLimit-Limit`: requests per minute of the token's plan.
    pub limit: Option<u32>,
    /// `X-RateLimit-Remaining`: whole requests left in the bucket when the answer was made.
    pub remaining: Option<u32>,
    /// `X-RateLimit-Reset`: Unix epoch seconds at which the bucket is full again.
    pub reset: Option<i64>,
}

impl RateLimitHeaders {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        fn parse<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
            headers.get(name)?.to_str().ok()?.trim().parse().ok()
        }
        Self {
            limit: parse(headers, HEADER_LIMIT),
            remaining: parse::<u64>(headers, HEADER_REMAINING)
                .map(|r| u32::try_from(r).unwrap_or(u32::MAX)),
            reset: parse(headers, HEADER_RESET),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

/// The local mirror of one token's server-side bucket. Pure arithmetic: every method takes the
/// current instant, so that it can be tested without clocks.
#[derive(Clone, Debug)]
pub(crate) struct BucketMirror {
    limit: u32,
    capacity: f64,
    tokens: f64,
    /// Tokens are accounted up to this instant. After a 429 it lies in the future: the bucket
    /// neither refills nor admits anything before it (the `Retry-After` pause).
    last: Instant,
    /// Whether the limit has been learnt from the server yet.
    synced: bool,
    /// Calls that took a token and have not been answered yet.
    in_flight: u32,
    reset_epoch: Option<i64>,
    /// The last `X-RateLimit-Reset` beyond [`MAX_SERVER_WAIT`] that was warned about.
    reset_warned: Option<i64>,
}

impl BucketMirror {
    pub(crate) fn new(limit: u32, now: Instant) -> Self {
        let limit = limit.max(1);
        let capacity = f64::from(burst_for_limit(limit));
        Self {
            limit,
            capacity,
            tokens: capacity,
            last: now,
            synced: false,
            in_flight: 0,
            reset_epoch: None,
            reset_warned: None,
        }
    }

    /// Tokens per second.
    fn rate(&self) -> f64 {
        f64::from(self.limit) / 60.0
    }

    pub(crate) fn refill(&mut self, now: Instant) {
        if now > self.last {
            let elapsed = (now - self.last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate()).min(self.capacity);
            self.last = now;
        }
    }

    pub(crate) fn paused_for(&self, now: Instant) -> Duration {
        self.last.saturating_duration_since(now)
    }

    /// Takes one token if one is there now.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.last <= now && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// How long from `now` until `n` whole tokens are in the bucket (0 if they are there).
    pub(crate) fn time_until(&self, n: f64, now: Instant) -> Duration {
        let mut me = self.clone();
        me.refill(now);
        let pause = me.paused_for(now);
        let missing = (n - me.tokens).max(0.0);
        if missing == 0.0 {
            return pause;
        }
        // Round up a little so that a waiter woken at this instant finds its token there.
        let secs = missing / me.rate() + 1e-6;
        pause + Duration::from_secs_f64(secs.min(1e9))
    }

    /// Re-syncs from the headers of an answer, whose own call is still counted in `in_flight`.
    pub(crate) fn sync(&mut self, h: &RateLimitHeaders, now: Instant, now_epoch: i64) {
        self.refill(now);
        let mut relearn = !self.synced;
        if let Some(limit) = h.limit.filter(|l| *l > 0) {
            if limit != self.limit {
                relearn = true;
                self.limit = limit;
                self.capacity = f64::from(burst_for_limit(limit));
            }
        } else if h.limit.is_none() {
            // Without the limit we cannot tell which bucket the other figures describe.
            return;
        }
        // Seconds until the server's bucket is full, as `reset` says, capped like any wait.
        let secs_to_full = h.reset.map(|reset| {
            let secs = u64::try_from(reset.saturating_sub(now_epoch)).unwrap_or(0);
            let wait = Duration::from_secs(secs);
            // Every answer carries the header: warn once per value, not once per answer.
            if wait > MAX_SERVER_WAIT && self.reset_warned != Some(reset) {
                self.reset_warned = Some(reset);
                capped_wait(HEADER_RESET, &reset.to_string(), wait);
            }
            wait.min(MAX_SERVER_WAIT).as_secs()
        });
        // The server's `remaining`, or what `reset` implies (full at `reset`).
        let server = h.remaining.map(f64::from).or_else(|| {
            secs_to_full.map(|secs| {
                // Exact: `secs` is at most an hour.
                let secs = Duration::from_secs(secs).as_secs_f64();
                (self.capacity - secs * self.rate()).floor().max(0.0)
            })
        });
        if let Some(server) = server {
            if relearn {
                // The server may not have counted the calls still on their way (this answer's
                // own call is among `in_flight` and is counted): assume it counted none of them.
                let others = f64::from(self.in_flight.saturating_sub(1));
                self.tokens = (server - others).clamp(0.0, self.capacity);
            } else {
                // Both views are lower bounds of what is really left; keep the smaller.
                self.tokens = self.tokens.min(server);
            }
            self.synced = true;
        } else {
            self.tokens = self.tokens.min(self.capacity);
        }
        if let Some(secs) = secs_to_full {
            // Within an hour of now: no overflow.
            self.reset_epoch = Some(now_epoch.saturating_add_unsigned(secs));
        }
    }

    /// A 429: the server admits the next request in `retry_after`. Nothing refills or is
    /// admitted before then; then exactly one token is there and the bucket refills from it.
    pub(crate) fn rate_limited(&mut self, retry_after: Duration, now: Instant) {
        self.refill(now);
        let until = now + retry_after.min(MAX_RATE_LIMIT_PAUSE);
        if until > self.last {
            self.last = until;
        }
        self.tokens = if retry_after.is_zero() { 0.0 } else { 1.0 };
    }

    /// A call that took a token was not sent after all: the token is there again.
    pub(crate) fn unused(&mut self) {
        self.tokens = (self.tokens + 1.0).min(self.capacity);
        self.finished();
    }

    pub(crate) fn finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub(crate) fn tokens(&self) -> f64 {
        self.tokens
    }
}

/// Key of a waiter: highest priority first, then arrival order.
type WaiterKey = (Reverse<Priority>, u64);

struct BudgetState {
    bucket: BucketMirror,
    queue: BTreeMap<WaiterKey, Arc<Notify>>,
    next_seq: u64,
}

impl BudgetState {
    /// Removes a waiter; if it was first in line, the next one must look at the bucket now.
    fn leave(&mut self, key: &WaiterKey) {
        let was_head = self.queue.keys().next() == Some(key);
        if self.queue.remove(key).is_some() && was_head {
            self.wake_head();
        }
    }

    fn wake_head(&self) {
        if let Some(n) = self.queue.values().next() {
            n.notify_one();
        }
    }

    fn ahead_of(&self, key: &WaiterKey) -> usize {
        self.queue.range(..*key).count()
    }
}

/// Refusal to wait: the token's budget has no room for this call within the caller's patience.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Throttled {
    /// When the call would have been admitted, from now (an estimate).
    pub retry_after: Duration,
    /// How long the call waited before giving up.
    pub waited: Duration,
}

/// One token's budget as this process sees it now; `/metrics` shows `remaining`,
/// `limit_per_minute` and `burst` as gauges labelled by `token_fingerprint`.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetSnapshot {
    /// [`Budget::fingerprint`]: a per-process HMAC of the token, never the token.
    pub token_fingerprint: String,
    /// The base URL the token is used against.
    pub scope: String,
    /// Requests per minute: assumed (Starter) until `synced`, then as the server said.
    pub limit_per_minute: u32,
    pub burst: u32,
    /// Estimate of the requests left in the server's bucket now.
    pub remaining: f64,
    /// Whether the figures above come from the server's headers yet.
    pub synced: bool,
    /// Remaining pause after a 429.
    pub paused_for: Duration,
    /// Calls waiting for this token's budget now.
    pub waiting: usize,
    /// Calls sent and not answered yet.
    pub in_flight: u32,
    /// The server's last `X-RateLimit-Reset`.
    pub reset_epoch: Option<i64>,
}

/// One token's budget against one API base URL.
pub struct Budget {
    fingerprint: String,
    scope: String,
    state: Mutex<BudgetState>,
    waiting: Arc<AtomicUsize>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("token_fingerprint", &self.fingerprint)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

fn now_epoch() -> i64 {
    jiff::Timestamp::now().as_second()
}

impl Budget {
    fn new(fingerprint: String, scope: String, limit: u32, waiting: Arc<AtomicUsize>) -> Self {
        Self {
            fingerprint,
            scope,
            state: Mutex::new(BudgetState {
                bucket: BucketMirror::new(limit, Instant::now()),
                queue: BTreeMap::new(),
                next_seq: 0,
            }),
            waiting,
        }
    }

    /// A budget outside any registry, with a known limit (tests, tools).
    pub fn standalone(limit_per_minute: u32) -> Arc<Self> {
        Arc::new(Self::new(
            "standalone".into(),
            String::new(),
            limit_per_minute,
            Arc::new(AtomicUsize::new(0)),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, BudgetState> {
        // The state is valid after any panic of a holder (plain arithmetic): keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A short non-reversible name of the token (and base URL), for logs and metric labels;
    /// see the module documentation.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Waits until this call may be sent, or refuses at once if that would take longer than
    /// `max_wait`. The permit returned must be given the answer's headers
    /// ([`Permit::answered`]), or dropped if no answer came.
    pub async fn acquire(
        self: &Arc<Self>,
        priority: Priority,
        max_wait: Duration,
    ) -> Result<Permit, Throttled> {
        let start = Instant::now();
        let deadline = start
            .checked_add(max_wait)
            .unwrap_or(start + Duration::from_secs(86_400 * 365));
        let (key, notify) = {
            let mut st = self.lock();
            let now = Instant::now();
            if st.queue.is_empty() && st.bucket.try_take(now) {
                return Ok(self.permit(Duration::ZERO));
            }
            let key = (Reverse(priority), st.next_seq);
            let ahead = st.ahead_of(&key);
            let estimate = st.bucket.time_until((ahead + 1) as f64, now);
            if estimate > max_wait {
                return Err(Throttled {
                    retry_after: estimate,
                    waited: Duration::ZERO,
                });
            }
            st.next_seq += 1;
            let notify = Arc::new(Notify::new());
            st.queue.insert(key, notify.clone());
            self.waiting.fetch_add(1, Ordering::Relaxed);
            (key, notify)
        };
        // Leaves the queue if this future is dropped while waiting.
        let mut guard = QueueGuard {
            budget: self,
            key,
            armed: true,
        };
        loop {
            let wake_at = {
                let mut st = self.lock();
                let now = Instant::now();
                let is_head = st.queue.keys().next() == Some(&key);
                if is_head {
                    if st.bucket.try_take(now) {
                        st.leave(&key);
                        drop(st);
                        guard.disarm();
                        return Ok(self.permit(now - start));
                    }
                    let wait = st.bucket.time_until(1.0, now);
                    if now.checked_add(wait).is_none_or(|at| at > deadline) {
                        st.leave(&key);
                        drop(st);
                        guard.disarm();
                        return Err(Throttled {
                            retry_after: wait,
                            waited: now - start,
                        });
                    }
                    now + wait
                } else {
                    if now >= deadline {
                        let ahead = st.ahead_of(&key);
                        let retry_after = st.bucket.time_until((ahead + 1) as f64, now);
                        st.leave(&key);
                        drop(st);
                        guard.disarm();
                        return Err(Throttled {
                            retry_after,
                            waited: now - start,
                        });
                    }
                    // Woken when it becomes first in line; else gives up at its deadline.
                    deadline
                }
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    fn permit(self: &Arc<Self>, waited: Duration) -> Permit {
        Permit {
            budget: self.clone(),
            waited,
            open: true,
        }
    }

    /// Re-syncs the bucket from an answer's headers (also done by [`Permit::answered`]).
    pub fn observe(&self, headers: &RateLimitHeaders) {
        if headers.is_empty() {
            return;
        }
        let mut st = self.lock();
        st.bucket.sync(headers, Instant::now(), now_epoch());
        st.wake_head();
    }

    /// A 429 arrived: empty the bucket and pause the whole token for `retry_after`, at most
    /// [`MAX_RATE_LIMIT_PAUSE`].
    pub fn pause(&self, retry_after: Duration) {
        self.warn_if_beyond_pause(retry_after);
        let mut st = self.lock();
        st.bucket.rate_limited(retry_after, Instant::now());
        st.wake_head();
    }

    fn warn_if_beyond_pause(&self, retry_after: Duration) {
        if retry_after > MAX_RATE_LIMIT_PAUSE {
            tracing::warn!(
                token = self.fingerprint(),
                retry_after_secs = retry_after.as_secs(),
                pause_secs = MAX_RATE_LIMIT_PAUSE.as_secs(),
                "a 429 asked for a longer pause than any plan's bucket needs; the token pauses for the shorter time and asks again"
            );
        }
    }

    pub fn snapshot(&self) -> BudgetSnapshot {
        let mut st = self.lock();
        let now = Instant::now();
        st.bucket.refill(now);
        let b = &st.bucket;
        BudgetSnapshot {
            token_fingerprint: self.fingerprint.clone(),
            scope: self.scope.clone(),
            limit_per_minute: b.limit,
            burst: b.capacity as u32,
            remaining: b.tokens(),
            synced: b.synced,
            paused_for: b.paused_for(now),
            waiting: st.queue.len(),
            in_flight: b.in_flight,
            reset_epoch: b.reset_epoch,
        }
    }

    /// Calls waiting for this budget now.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// How much room the budget has for spending that can wait: none while anyone waits for
    /// it or while less than a tenth of its burst is there (at least one token: a budget
    /// spent as fast as it refills has one now and then between two creates, and what is sent
    /// then is a create later); ample from half its burst, a budget not spent as fast as it
    /// refills.
    pub fn room(&self) -> Room {
        let st = self.lock();
        if !st.queue.is_empty() {
            return Room::None;
        }
        let now = Instant::now();
        let there = |share: f64| {
            let tokens = (st.bucket.capacity * share).max(1.0);
            st.bucket.time_until(tokens, now).is_zero()
        };
        if there(0.5) {
            Room::Ample
        } else if there(0.1) {
            Room::Spare
        } else {
            Room::None
        }
    }
}

struct QueueGuard<'a> {
    budget: &'a Budget,
    key: WaiterKey,
    armed: bool,
}

impl QueueGuard<'_> {
    fn disarm(&mut self) {
        if self.armed {
            self.armed = false;
            self.budget.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.budget.lock().leave(&self.key);
            self.disarm();
        }
    }
}

/// The right to send one request, taken from a token's budget. Hand it the answer's headers;
/// dropping it without an answer just ends the call's `in_flight` count.
#[must_use]
pub struct Permit {
    budget: Arc<Budget>,
    waited: Duration,
    open: bool,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("budget", &self.budget)
            .field("waited", &self.waited)
            .finish()
    }
}

impl Permit {
    /// How long the call waited for this permit.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The server answered: re-sync from its headers, and pause the token if it was a 429.
    pub fn answered(mut self, headers: &RateLimitHeaders, rate_limited: Option<Duration>) {
        if let Some(retry_after) = rate_limited {
            self.budget.warn_if_beyond_pause(retry_after);
        }
        let mut st = self.budget.lock();
        let now = Instant::now();
        if !headers.is_empty() {
            st.bucket.sync(headers, now, now_epoch());
        }
        if let Some(retry_after) = rate_limited {
            st.bucket.rate_limited(retry_after, now);
        }
        st.bucket.finished();
        self.open = false;
        st.wake_head();
    }
}

impl Permit {
    /// Nothing was sent with this permit: its token goes back to the bucket, for the next
    /// call in line.
    pub fn unused(mut self) {
        let mut st = self.budget.lock();
        st.bucket.unused();
        self.open = false;
        st.wake_head();
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.open {
            self.budget.lock().bucket.finished();
        }
    }
}

/// Hex digits of a fingerprint: 64 bits, plenty to tell a process's tokens apart.
const FINGERPRINT_HEX_DIGITS: usize = 16;

fn fingerprint(tag: &[u8]) -> String {
    tag.iter()
        .take(FINGERPRINT_HEX_DIGITS / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh HMAC key from the thread-local CSPRNG (seeded by the operating system).
fn random_key() -> hmac::Key {
    let mut key = [0u8; 32];
    rand::fill(&mut key[..]);
    hmac::Key::new(hmac::HMAC_SHA256, &key)
}

/// The registry of every token's budget. One per process ([`RateLimiter::global`]) so that all
/// clients of a token share it; tests may make their own.
pub struct RateLimiter {
    /// By the whole HMAC of (scope, token), so that two tokens never share a budget.
    budgets: Mutex<HashMap<Vec<u8>, Arc<Budget>>>,
    key: hmac::Key,
    waiting: Arc<AtomicUsize>,
    initial_limit: u32,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("tokens", &self.budgets.lock().map(|b| b.len()).unwrap_or(0))
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        Self::with_initial_limit(ASSUMED_LIMIT_PER_MINUTE)
    }

    /// A registry whose budgets assume `limit_per_minute` until the server says otherwise.
    pub fn with_initial_limit(limit_per_minute: u32) -> Self {
        Self {
            budgets: Mutex::new(HashMap::new()),
            key: random_key(),
            waiting: Arc::new(AtomicUsize::new(0)),
            initial_limit: limit_per_minute.max(1),
        }
    }

    /// The process-wide registry used by every client unless told otherwise.
    pub fn global() -> Arc<RateLimiter> {
        static GLOBAL: OnceLock<Arc<RateLimiter>> = OnceLock::new();
        GLOBAL.get_or_init(|| Arc::new(RateLimiter::new())).clone()
    }

    /// The budget of `token` against the API at `scope` (its base URL).
    pub fn budget(&self, scope: &str, token: &ApiToken) -> Arc<Budget> {
        let tag = self.tag(scope, token);
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .entry(tag.as_ref().to_vec())
            .or_insert_with(|| {
                Arc::new(Budget::new(
                    fingerprint(tag.as_ref()),
                    scope.to_owned(),
                    self.initial_limit,
                    self.waiting.clone(),
                ))
            })
            .clone()
    }

    /// The HMAC of (scope, token); the scope's length comes first so that no other pair of
    /// scope and token gives the same input.
    fn tag(&self, scope: &str, token: &ApiToken) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&u64::try_from(scope.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(scope.as_bytes());
        ctx.update(token.expose().as_bytes());
        ctx.sign()
    }

    /// Calls waiting for budget now, over all tokens.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// One snapshot per token seen, for gauges.
    pub fn snapshots(&self) -> Vec<BudgetSnapshot> {
        let budgets: Vec<Arc<Budget>> = self
            .budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        budgets.iter().map(|b| b.snapshot()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn headers(limit: u32, remaining: u32) -> RateLimitHeaders {
        RateLimitHeaders {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: None,
        }
    }

    #[test]
    fn the_burst_of_a_plan_is_inferred_from_its_limit() {
        assert_eq!(burst_for_limit(100), 20);
        assert_eq!(burst_for_limit(1000), 200);
        assert_eq!(burst_for_limit(10_000), 2000);
        assert_eq!(burst_for_limit(3), 1);
    }

    #[test]
    fn a_fresh_bucket_admits_its_burst_then_refills_at_limit_over_sixty() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(100, t0);
        for _ in 0..20 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0), "the 21st call of a burst of 20 must wait");
        // 100/min = one token every 0.6 s.
        let wait = b.time_until(1.0, t0);
        assert!((wait.as_secs_f64() - 0.6).abs() < 0.001, "{wait:?}");
        assert!(!b.try_take(t0 + secs(0.5)));
        assert!(b.try_take(t0 + secs(0.61)));
        // Ten tokens take six seconds, and the bucket never holds more than its burst.
        b.refill(t0 + secs(600.0));
        assert_eq!(b.tokens(), 20.0);
    }

    #[test]
    fn the_time_until_several_tokens_counts_the_missing_ones() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(600, t0); // 10 per second, burst 120
        b.tokens = 2.0;
        assert_eq!(b.time_until(2.0, t0), Duration::ZERO);
        let w = b.time_until(5.0, t0).as_secs_f64();
        assert!((w - 0.3).abs() < 0.001, "{w}");
    }

    #[test]
    fn the_first_answer_teaches_the_plan_and_discounts_calls_still_in_flight() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(ASSUMED_LIMIT_PER_MINUTE, t0);
        for _ in 0..5 {
            assert!(b.try_take(t0));
        }
        // A Pro token: the server counted one call and says 199 are left; four are on their way.
        b.sync(&headers(1000, 199), t0, 0);
        assert_eq!(b.limit, 1000);
        assert_eq!(b.capacity, 200.0);
        assert_eq!(b.tokens(), 195.0);
        assert!(b.synced);
    }

    #[test]
    fn later_answers_only_lower_the_estimate() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(100, t0);
        b.sync(&headers(100, 20), t0, 0);
        assert!(b.try_take(t0));
        b.finished();
        assert_eq!(b.tokens(), 19.0);
        // Another process spends the same token: the server has less than we think.
        b.sync(&headers(100, 7), t0, 0);
        assert_eq!(b.tokens(), 7.0);
        // A stale answer that reports more does not raise it.
        b.sync(&headers(100, 15), t0, 0);
        assert_eq!(b.tokens(), 7.0);
    }

    #[test]
    fn a_changed_limit_resets_the_bucket_to_the_servers_figure() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(100, t0);
        b.sync(&headers(100, 3), t0, 0);
        b.sync(&headers(10_000, 1500), t0, 0);
        assert_eq!(b.capacity, 2000.0);
        assert_eq!(b.tokens(), 1500.0);
    }

    #[test]
    fn without_remaining_the_reset_time_gives_the_estimate() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(100, t0);
        let h = RateLimitHeaders {
            limit: Some(100),
            remaining: None,
            reset: Some(1_000 + 6),
        };
        // Full in 6 s at 100/min: 10 tokens short of 20.
        b.sync(&h, t0, 1_000);
        assert_eq!(b.tokens(), 10.0);
        assert_eq!(b.reset_epoch, Some(1_006));
    }

    #[test]
    fn headers_are_read_from_an_answer() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", "100".parse().unwrap());
        h.insert("x-ratelimit-remaining", " 17 ".parse().unwrap());
        h.insert("x-ratelimit-reset", "1741948320".parse().unwrap());
        assert_eq!(
            RateLimitHeaders::from_headers(&h),
            RateLimitHeaders {
                limit: Some(100),
                remaining: Some(17),
                reset: Some(1_741_948_320)
            }
        );
        assert!(RateLimitHeaders::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn a_429_pauses_the_bucket_then_admits_one_call() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(100, t0);
        b.rate_limited(secs(2.0), t0);
        assert_eq!(b.paused_for(t0), secs(2.0));
        assert!(!b.try_take(t0 + secs(1.9)));
        assert_eq!(b.time_until(1.0, t0), secs(2.0));
        assert!(b.try_take(t0 + secs(2.0)));
        assert!(
            !b.try_take(t0 + secs(2.0)),
            "only one call right after the pause"
        );
        assert!(b.try_take(t0 + secs(2.61)));
    }

    #[test]
    fn a_429_pauses_the_bucket_for_at_most_a_minute_whatever_it_asks() {
        let t0 = Instant::now();
        let mut b = BucketMirror::new(100, t0);
        b.rate_limited(Duration::MAX, t0);
        assert_eq!(b.paused_for(t0), MAX_RATE_LIMIT_PAUSE);
        assert!(!b.try_take(t0 + secs(59.0)));
        assert!(b.try_take(t0 + MAX_RATE_LIMIT_PAUSE), "one call asks again");
    }

    #[test]
    fn an_absurd_reset_neither_overflows_nor_sets_a_wait_beyond_an_hour() {
        let t0 = Instant::now();
        let now_epoch = 1_741_948_320;
        for reset in [i64::MAX, i64::MIN, now_epoch + 99_999_999_999_999] {
            let mut b = BucketMirror::new(100, t0);
            let h = RateLimitHeaders {
                limit: Some(100),
                remaining: None,
                reset: Some(reset),
            };
            b.sync(&h, t0, now_epoch);
            let reset_epoch = b.reset_epoch.unwrap();
            assert!(
                (now_epoch..=now_epoch + 3600).contains(&reset_epoch),
                "{reset}: {reset_epoch}"
            );
            // Empty at worst: the next token is due at the plan's rate, not in an hour.
            assert!(b.time_until(1.0, t0) <= secs(0.61), "{reset}");
        }
    }

    #[test]
    fn header_figures_too_large_for_their_type_are_not_a_panic() {
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-limit", "99999999999999999999".parse().unwrap());
        h.insert("x-ratelimit-remaining", "99999999999".parse().unwrap());
        h.insert(
            "x-ratelimit-reset",
            "-99999999999999999999".parse().unwrap(),
        );
        assert_eq!(
            RateLimitHeaders::from_headers(&h),
            RateLimitHeaders {
                limit: None,
                remaining: Some(u32::MAX),
                reset: None
            }
        );
    }

    fn empty_budget(limit: u32) -> Arc<Budget> {
        let budget = Budget::standalone(limit);
        {
            let mut st = budget.lock();
            st.bucket.tokens = 0.0;
            st.bucket.last = Instant::now();
        }
        budget
    }

    #[tokio::test]
    async fn a_call_with_budget_is_admitted_without_waiting() {
        let budget = Budget::standalone(100);
        let permit = budget
            .acquire(Priority::Observe, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(permit.waited(), Duration::ZERO);
        assert_eq!(budget.snapshot().in_flight, 1);
        permit.answered(&headers(100, 19), None);
        let snap = budget.snapshot();
        assert_eq!(snap.in_flight, 0);
        assert!(snap.synced);
        assert!(snap.remaining >= 19.0 && snap.remaining < 19.1);
    }

    #[tokio::test]
    async fn a_budget_has_room_from_a_tenth_of_its_burst_ample_from_half_and_none_while_someone_waits()
     {
        let budget = empty_budget(600); // burst 120
        assert_eq!(budget.room(), Room::None, "no token");
        budget.lock().bucket.tokens = 5.0;
        assert_eq!(
            budget.room(),
            Room::None,
            "a few tokens, as between two creates"
        );
        budget.lock().bucket.tokens = 12.5;
        assert_eq!(budget.room(), Room::Spare, "a tenth of the burst");
        budget.lock().bucket.tokens = 59.0;
        assert_eq!(budget.room(), Room::Spare, "just under half");
        budget.lock().bucket.tokens = 60.5;
        assert_eq!(budget.room(), Room::Ample, "half the burst");

        let waiting = {
            let budget = budget.clone();
            budget.lock().bucket.tokens = 0.0;
            tokio::spawn(async move {
                budget
                    .acquire(Priority::Create, Duration::from_secs(30))
                    .await
            })
        };
        while budget.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        // Tokens came in, but the create waiting is first in line for them.
        budget.lock().bucket.tokens = 100.0;
        assert_eq!(budget.room(), Room::None, "someone waits");
        waiting.abort();
    }

    #[tokio::test]
    async fn a_permit_given_back_unused_lets_the_next_call_in_at_once() {
        let budget = empty_budget(1); // one token a minute
        budget.lock().bucket.tokens = 1.0;
        let permit = budget
            .acquire(Priority::Create, Duration::ZERO)
            .await
            .unwrap();
        assert!(
            budget
                .acquire(Priority::Create, Duration::ZERO)
                .await
                .is_err()
        );
        permit.unused();
        assert_eq!(budget.snapshot().in_flight, 0);
        let again = budget.acquire(Priority::Create, Duration::ZERO).await;
        assert!(again.is_ok(), "the token given back is taken again");
    }

    #[tokio::test]
    async fn a_wait_longer_than_the_callers_patience_is_refused_without_waiting() {
        let budget = empty_budget(1); // one token a minute
        let start = std::time::Instant::now();
        let err = budget
            .acquire(Priority::Act, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(start.elapsed() < Duration::from_millis(100));
        assert!(err.retry_after > Duration::from_secs(59), "{err:?}");
        assert_eq!(budget.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_sleeps_until_the_next_token() {
        let budget = empty_budget(600); // one token every 100 ms
        let start = std::time::Instant::now();
        let permit = budget
            .acquire(Priority::Observe, Duration::from_secs(2))
            .await
            .unwrap();
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(95), "{waited:?}");
        assert!(waited < Duration::from_millis(600), "{waited:?}");
        assert!(permit.waited() >= Duration::from_millis(95));
    }

    #[tokio::test]
    async fn act_is_served_before_observe_even_when_observe_queued_first() {
        let budget = empty_budget(300); // one token every 200 ms
        let order = Arc::new(Mutex::new(Vec::new()));
        let spawn = |priority: Priority, name: &'static str| {
            let budget = budget.clone();
            let order = order.clone();
            tokio::spawn(async move {
                let permit = budget
                    .acquire(priority, Duration::from_secs(5))
                    .await
                    .unwrap();
                order.lock().unwrap().push(name);
                drop(permit);
            })
        };
        let observe1 = spawn(Priority::Observe, "observe-1");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let observe2 = spawn(Priority::Observe, "observe-2");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(budget.waiting(), 2);
        let create = spawn(Priority::Create, "create");
        let act = spawn(Priority::Act, "act");
        for t in [observe1, observe2, create, act] {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["act", "create", "observe-1", "observe-2"]
        );
        assert_eq!(budget.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_dropped_while_queued_leaves_the_line() {
        let budget = empty_budget(300);
        let first = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(Priority::Act, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(budget.waiting(), 1);
        first.abort();
        let _ = first.await;
        assert_eq!(budget.waiting(), 0);
        // The next caller is first in line at once.
        let start = std::time::Instant::now();
        let _permit = budget
            .acquire(Priority::Observe, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_millis(400));
    }

    #[tokio::test]
    async fn a_queued_waiter_whose_turn_comes_too_late_is_throttled() {
        let budget = empty_budget(300); // 200 ms per token
        let act = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.acquire(Priority::Act, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Second in line: needs ~400 ms, may wait only 250 ms.
        let err = budget
            .acquire(Priority::Observe, Duration::from_millis(250))
            .await
            .unwrap_err();
        assert!(err.retry_after > Duration::from_millis(250), "{err:?}");
        assert!(act.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_429_pauses_every_call_of_the_token() {
        let budget = Budget::standalone(6000); // plenty of tokens
        let permit = budget
            .acquire(Priority::Observe, Duration::ZERO)
            .await
            .unwrap();
        permit.answered(&headers(6000, 0), Some(Duration::from_millis(300)));
        let snap = budget.snapshot();
        assert!(snap.paused_for > Duration::from_millis(200), "{snap:?}");
        // Impatient callers are refused, naming the pause.
        let err = budget
            .acquire(Priority::Act, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(err.retry_after > Duration::from_millis(200), "{err:?}");
        // Patient ones wait it out.
        let start = std::time::Instant::now();
        let _permit = budget
            .acquire(Priority::Act, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn an_absurd_retry_after_refuses_impatient_calls_for_at_most_a_minute() {
        let budget = Budget::standalone(6000);
        budget.pause(Duration::from_secs(99_999_999_999_999));
        let snap = budget.snapshot();
        assert!(snap.paused_for <= MAX_RATE_LIMIT_PAUSE, "{snap:?}");
        let err = budget
            .acquire(Priority::Act, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(err.retry_after <= MAX_RATE_LIMIT_PAUSE, "{err:?}");
    }

    #[test]
    fn a_fingerprint_is_sixteen_hex_digits_that_differ_by_token_scope_and_registry() {
        let token = ApiToken::new("sk_test_secret_a");
        let reg = RateLimiter::new();
        let fp = reg.budget("http://x/v1", &token).fingerprint().to_owned();
        assert_eq!(fp.len(), 16);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()), "{fp}");
        assert_eq!(reg.budget("http://x/v1", &token).fingerprint(), fp);
        let others = [
            reg.budget("http://x/v1", &ApiToken::new("sk_test_secret_b")),
            reg.budget("http://y/v1", &token),
            RateLimiter::new().budget("http://x/v1", &token),
        ];
        for other in others {
            assert_ne!(other.fingerprint(), fp);
        }
    }

    #[test]
    fn the_scope_and_token_are_not_confused_at_their_boundary() {
        let reg = RateLimiter::new();
        let a = reg.budget("http://x/v1", &ApiToken::new("ab"));
        let b = reg.budget("http://x/v1a", &ApiToken::new("b"));
        assert!(!Arc::ptr_eq(&a, &b));
    }

    #[tokio::test]
    async fn the_registry_keeps_one_budget_per_token_and_scope_without_the_token() {
        let reg = RateLimiter::new();
        let a = ApiToken::new("sk_test_secret_a");
        let b = ApiToken::new("sk_test_secret_b");
        let a1 = reg.budget("http://x/v1", &a);
        let a2 = reg.budget("http://x/v1", &a);
        assert!(Arc::ptr_eq(&a1, &a2));
        assert!(!Arc::ptr_eq(&a1, &reg.budget("http://x/v1", &b)));
        assert!(!Arc::ptr_eq(&a1, &reg.budget("http://y/v1", &a)));
        let snaps = format!("{:?} {:?} {:?}", reg.snapshots(), a1, reg);
        assert!(!snaps.contains("secret"), "{snaps}");
        assert_eq!(reg.snapshots().len(), 3);
        assert_eq!(
            reg.snapshots()[0].limit_per_minute,
            ASSUMED_LIMIT_PER_MINUTE
        );
    }
}
