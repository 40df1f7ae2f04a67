//! Request counts for `/_sim/stats`: by route template (method included) and status, by
//! token, and totals. Requests to `/_sim/` itself are not counted.

use std::collections::{BTreeMap, HashMap};

use axum::http::Method;
use serde::Serialize;

/// The status slot of a request that got no answer because a fault dropped its connection.
pub(crate) const DROPPED: u16 = 0;

#[derive(Default)]
pub(crate) struct Stats {
    total: u64,
    dropped: u64,
    by_route: HashMap<(Method, &'static str, u16), u64>,
    by_token: HashMap<String, u64>,
    unauthenticated: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct RouteStats {
    pub total: u64,
    pub by_status: BTreeMap<String, u64>,
}

/// Body of `GET /_sim/stats`.
#[derive(Debug, Serialize)]
pub(crate) struct StatsReport {
    pub total: u64,
    /// Requests whose connection was dropped by a fault, without an answer.
    pub dropped: u64,
    /// `"POST /v1/deployments"` → counts.
    pub by_route: BTreeMap<String, RouteStats>,
    /// `"201"` (or `"dropped"`) → count.
    pub by_status: BTreeMap<String, u64>,
    /// Token → count, for requests with a valid token.
    pub by_token: BTreeMap<String, u64>,
    /// Requests without a valid token.
    pub unauthenticated: u64,
}

fn status_key(status: u16) -> String {
    if status == DROPPED {
        "dropped".to_owned()
    } else {
        status.to_string()
    }
}

impl Stats {
    /// `template` is the route template such as `/v1/deployments/{id}`; `status` is
    /// [`DROPPED`] for a dropped connection.
    pub fn record(
        &mut self,
        method: &Method,
        template: &'static str,
        status: u16,
        token: Option<&str>,
    ) {
        self.total += 1;
        if status == DROPPED {
            self.dropped += 1;
        }
        let key = (method.clone(), template, status);
        *self.by_route.entry(key).or_insert(0) += 1;
        match token {
            Some(t) => match self.by_token.get_mut(t) {
                Some(c) => *c += 1,
                None => {
                    self.by_token.insert(t.to_owned(), 1);
                }
            },
            None => self.unauthenticated += 1,
        }
    }

    pub fn reset(&mut self) {
        *self = Stats::default();
    }

    pub fn report(&self) -> StatsReport {
        let mut by_route: BTreeMap<String, RouteStats> = BTreeMap::new();
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for ((method, template, status), count) in &self.by_route {
            let r = by_route
                .entry(format!("{method} {template}"))
                .or_insert_with(|| RouteStats {
                    total: 0,
                    by_status: BTreeMap::new(),
                });
            r.total += count;
            *r.by_status.entry(status_key(*status)).or_insert(0) += count;
            *by_status.entry(status_key(*status)).or_insert(0) += count;
        }
        StatsReport {
            total: self.total,
            dropped: self.dropped,
            by_route,
            by_status,
            by_token: self.by_token.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            unauthenticated: self.unauthenticated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_route_status_and_token_and_resets() {
        let mut s = Stats::default();
        s.record(&Method::POST, "/v1/deployments", 201, Some("sk_a"));
        s.record(&Method::POST, "/v1/deployments", 201, Some("sk_a"));
        s.record(&Method::POST, "/v1/deployments", DROPPED, Some("sk_b"));
        s.record(&Method::GET, "/v1/deployments/{id}", 401, None);
        let r = s.report();
        assert_eq!(r.total, 4);
        assert_eq!(r.dropped, 1);
        let create = &r.by_route["POST /v1/deployments"];
        assert_eq!(create.total, 3);
        assert_eq!(create.by_status["201"], 2);
        assert_eq!(create.by_status["dropped"], 1);
        assert_eq!(r.by_status["401"], 1);
        assert_eq!(r.by_token["sk_a"], 2);
        assert_eq!(r.unauthenticated, 1);
        s.reset();
        assert_eq!(s.report().total, 0);
    }
}
