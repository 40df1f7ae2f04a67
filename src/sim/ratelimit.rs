//! The server side of the rate limits: one token bucket per API token (and one per client IP
//! for requests without a valid token).
//!
//! A bucket holds `burst` requests and refills at `per_minute / 60` per second, starting full.
//! A request takes one; when less than one is left the request answers 429 and takes nothing.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::config::RateLimit;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

/// What the rate-limit headers of one response say.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Decision {
    pub admitted: bool,
    /// `X-RateLimit-Limit`: the per-minute figure.
    pub limit: u32,
    /// `X-RateLimit-Remaining`: whole requests left now.
    pub remaining: u32,
    /// Time until the bucket is full again (`X-RateLimit-Reset` is now + this, rounded up).
    pub until_full: Duration,
    /// `Retry-After` in whole seconds (≥ 1) when not admitted.
    pub retry_after: Option<u64>,
}

impl Decision {
    /// `X-RateLimit-Reset`: Unix epoch seconds, rounded up, at which the bucket is full.
    pub fn reset_epoch(&self, now_unix: Duration) -> u64 {
        (now_unix + self.until_full).as_secs_f64().ceil() as u64
    }
}

fn per_second(limit: RateLimit) -> f64 {
    f64::from(limit.per_minute) / 60.0
}

impl Bucket {
    pub fn full(limit: RateLimit, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(limit.burst),
            last: now,
        }
    }

    fn refill(&mut self, limit: RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second(limit)).min(f64::from(limit.burst));
        if now > self.last {
            self.last = now;
        }
    }

    fn decision(&self, limit: RateLimit, admitted: bool) -> Decision {
        let rate = per_second(limit);
        let missing = (f64::from(limit.burst) - self.tokens).max(0.0);
        let retry_after = (!admitted).then(|| {
            let wait = ((1.0 - self.tokens).max(0.0) / rate).ceil();
            (wait as u64).max(1)
        });
        Decision {
            admitted,
            limit: limit.per_minute,
            remaining: self.tokens.floor().max(0.0) as u32,
            until_full: Duration::from_secs_f64(missing / rate),
            retry_after,
        }
    }

    /// Takes one request if there is room; a refusal takes nothing.
    pub fn try_take(&mut self, limit: RateLimit, now: Instant) -> Decision {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.decision(limit, true)
        } else {
            self.decision(limit, false)
        }
    }

    /// The headers as they are now, taking nothing. With `refuse`, the decision is a refusal
    /// (for a forced 429) with a `Retry-After` of at least one second.
    pub fn peek(&mut self, limit: RateLimit, now: Instant, refuse: bool) -> Decision {
        self.refill(limit, now);
        self.decision(limit, !refuse && self.tokens >= 1.0)
    }
}

/// Who a bucket belongs to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BucketKey<'a> {
    Token(&'a str),
    Ip(IpAddr),
}

#[derive(Default)]
pub(crate) struct Limiter {
    tokens: HashMap<String, Bucket>,
    ips: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    fn with_bucket(
        &mut self,
        key: BucketKey<'_>,
        limit: RateLimit,
        now: Instant,
        f: impl FnOnce(&mut Bucket) -> Decision,
    ) -> Decision {
        match key {
            // Look up by &str first so that the common case allocates nothing.
            BucketKey::Token(t) => match self.tokens.get_mut(t) {
                Some(b) => f(b),
                None => {
                    let mut b = Bucket::full(limit, now);
                    let d = f(&mut b);
                    self.tokens.insert(t.to_owned(), b);
                    d
                }
            },
            BucketKey::Ip(ip) => f(self
                .ips
                .entry(ip)
                .or_insert_with(|| Bucket::full(limit, now))),
        }
    }

    pub fn try_take(&mut self, key: BucketKey<'_>, limit: RateLimit, now: Instant) -> Decision {
        self.with_bucket(key, limit, now, |b| b.try_take(limit, now))
    }

    pub fn peek(
        &mut self,
        key: BucketKey<'_>,
        limit: RateLimit,
        now: Instant,
        refuse: bool,
    ) -> Decision {
        self.with_bucket(key, limit, now, |b| b.peek(limit, now, refuse))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTER: RateLimit = RateLimit::STARTER; // 100/min, burst 20

    #[test]
    fn a_bucket_starts_full_and_admits_burst_requests_at_once() {
        let t0 = Instant::now();
        let mut b = Bucket::full(STARTER, t0);
        for i in 0..20 {
            let d = b.try_take(STARTER, t0);
            assert!(d.admitted, "request {i}");
            assert_eq!(d.remaining, 19 - i);
            assert_eq!(d.limit, 100);
            assert_eq!(d.retry_after, None);
        }
        let d = b.try_take(STARTER, t0);
        assert!(!d.admitted);
        assert_eq!(d.remaining, 0);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let t0 = Instant::now();
        let mut b = Bucket::full(STARTER, t0);
        for _ in 0..20 {
            b.try_take(STARTER, t0);
        }
        // 100/min = 1.667/s: one request needs 0.6 s → 1 s.
        assert_eq!(b.try_take(STARTER, t0).retry_after, Some(1));
        // Slow bucket: 6/min = one every 10 s.
        let slow = RateLimit {
            per_minute: 6,
            burst: 1,
        };
        let mut s = Bucket::full(slow, t0);
        assert!(s.try_take(slow, t0).admitted);
        assert_eq!(s.try_take(slow, t0).retry_after, Some(10));
        assert_eq!(
            s.try_take(slow, t0 + Duration::from_millis(2_500))
                .retry_after,
            Some(8),
            "7.5 s left rounds up to 8"
        );
        assert!(s.try_take(slow, t0 + Duration::from_secs(10)).admitted);
    }

    #[test]
    fn a_refused_request_consumes_nothing() {
        let t0 = Instant::now();
        let slow = RateLimit {
            per_minute: 60,
            burst: 1,
        };
        let mut b = Bucket::full(slow, t0);
        assert!(b.try_take(slow, t0).admitted);
        for ms in [100, 300, 600, 900] {
            assert!(!b.try_take(slow, t0 + Duration::from_millis(ms)).admitted);
        }
        // Had the refusals taken anything, the bucket would still be empty after 1 s.
        assert!(b.try_take(slow, t0 + Duration::from_millis(1_000)).admitted);
    }

    #[test]
    fn the_bucket_refills_at_limit_per_sixty_seconds_up_to_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(STARTER, t0);
        for _ in 0..20 {
            b.try_take(STARTER, t0);
        }
        // 3 s at 1.667/s = 5 requests.
        let d = b.peek(STARTER, t0 + Duration::from_secs(3), false);
        assert_eq!(d.remaining, 5);
        let d = b.peek(STARTER, t0 + Duration::from_secs(3600), false);
        assert_eq!(d.remaining, 20, "never above burst");
        assert_eq!(d.until_full, Duration::ZERO);
    }

    #[test]
    fn reset_is_when_the_bucket_is_full_again_in_epoch_seconds_rounded_up() {
        let t0 = Instant::now();
        let mut b = Bucket::full(STARTER, t0);
        let d = b.try_take(STARTER, t0);
        // One missing at 1.667/s: 0.6 s.
        assert!((d.until_full.as_secs_f64() - 0.6).abs() < 1e-9);
        assert_eq!(d.reset_epoch(Duration::from_secs(1_000)), 1_001);
        let full = b.peek(STARTER, t0 + Duration::from_secs(60), false);
        assert_eq!(full.reset_epoch(Duration::from_millis(1_000_200)), 1_001);
        assert_eq!(full.reset_epoch(Duration::from_secs(1_000)), 1_000);
    }

    #[test]
    fn a_forced_refusal_takes_nothing_and_asks_for_at_least_a_second() {
        let t0 = Instant::now();
        let mut b = Bucket::full(STARTER, t0);
        let d = b.peek(STARTER, t0, true);
        assert!(!d.admitted);
        assert_eq!(d.retry_after, Some(1));
        assert_eq!(d.remaining, 20);
    }

    #[test]
    fn the_limiter_keeps_one_bucket_per_token_and_per_ip() {
        let t0 = Instant::now();
        let one = RateLimit {
            per_minute: 1,
            burst: 1,
        };
        let mut l = Limiter::default();
        assert!(l.try_take(BucketKey::Token("a"), one, t0).admitted);
        assert!(!l.try_take(BucketKey::Token("a"), one, t0).admitted);
        assert!(l.try_take(BucketKey::Token("b"), one, t0).admitted);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.try_take(BucketKey::Ip(ip), one, t0).admitted);
        assert!(!l.try_take(BucketKey::Ip(ip), one, t0).admitted);
    }
}
