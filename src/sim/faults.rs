//! Fault injection, switchable at run time through `/_sim/faults`.
//!
//! A list of rules; every rule whose route filter matches a request applies to it (and, with
//! `count`, only to the next `count` matching requests). Effects of several rules add up.
//!
//! Besides the API's own faults (a `500`, a `429`, latency, a dropped connection) a rule can
//! stand for what sits between a client and the API: a gateway that replaces the API's answer
//! with its own HTML page after the API committed the request, headers rewritten on the way
//! (an absurd `Retry-After`), or an answer far larger than any real one. Those are the answers
//! a client must survive without trusting them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Endpoint;

/// Longest latency a rule may inject: ten minutes.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// Largest padding a rule may add to one answer: 64 MiB, well above any client's body limit.
pub const MAX_PAD_BYTES: u64 = 64 << 20;

/// Status of a gateway's page when a rule names none: the commonest gateway error.
pub const DEFAULT_GATEWAY_STATUS: u16 = 502;

/// Most headers one rule may set, and the longest value, so that a rule stays a test fixture.
const MAX_HEADERS: usize = 16;
const MAX_HEADER_VALUE_BYTES: usize = 1024;

/// Which API route a rule applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultRoute {
    #[default]
    All,
    Create,
    List,
    Get,
    Cancel,
    Delete,
    Logs,
}

impl FaultRoute {
    pub fn matches(self, endpoint: Endpoint) -> bool {
        match self {
            FaultRoute::All => true,
            FaultRoute::Create => endpoint == Endpoint::Create,
            FaultRoute::List => endpoint == Endpoint::List,
            FaultRoute::Get => endpoint == Endpoint::Get,
            FaultRoute::Cancel => endpoint == Endpoint::Cancel,
            FaultRoute::Delete => endpoint == Endpoint::Delete,
            FaultRoute::Logs => endpoint == Endpoint::Logs,
        }
    }
}

/// When `latency_ms` is spent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LatencyWhen {
    /// Before the request is processed.
    #[default]
    Before,
    /// After it was processed and committed, before the answer is sent.
    After,
}

/// One fault rule. Rates are fractions in `[0, 1]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    #[serde(default)]
    pub route: FaultRoute,
    /// Fraction of matching requests answered `500 internal_error` without being processed.
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub latency_when: LatencyWhen,
    /// Fraction of matching requests processed, then left without any answer: the
    /// connection is closed.
    #[serde(default)]
    pub drop_rate: f64,
    /// Fraction of matching requests answered `429 rate_limited` (taking nothing from the bucket).
    #[serde(default)]
    pub force_429: f64,
    /// Fraction of matching requests processed (and committed) whose answer is then replaced
    /// by a gateway's HTML page with status `gateway_status` and no rate-limit headers.
    #[serde(default)]
    pub gateway_rate: f64,
    /// Status of the gateway's page (default [`DEFAULT_GATEWAY_STATUS`]): any status that can
    /// carry a body, 200 to 599 (not 204, 205 or 304).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_status: Option<u16>,
    /// Headers set on every answer this rule applies to, replacing the simulator's own (e.g. a
    /// `Retry-After` no API would send).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Bytes of whitespace appended to the body of every answer this rule applies to, sent
    /// without `Content-Length`: still valid JSON, just larger than a client should read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pad_bytes: u64,
    /// Apply to the next `count` matching requests only, then disappear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Whether an answer with this status may carry a body (the gateway's page).
fn can_carry_a_body(status: u16) -> bool {
    (200..=599).contains(&status) && !matches!(status, 204 | 205 | 304)
}

impl FaultRule {
    pub fn validate(&self, index: usize) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("force_429", self.force_429),
            ("gateway_rate", self.gateway_rate),
        ] {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                return Err(format!(
                    "rules[{index}].{name}: {v} is not a fraction between 0 and 1"
                ));
            }
        }
        if self.latency_ms > MAX_LATENCY_MS {
            return Err(format!(
                "rules[{index}].latency_ms: {} is above the maximum of {MAX_LATENCY_MS}",
                self.latency_ms
            ));
        }
        if let Some(status) = self.gateway_status.filter(|s| !can_carry_a_body(*s)) {
            return Err(format!(
                "rules[{index}].gateway_status: {status} is not a status between 200 and 599 that can carry a body"
            ));
        }
        if self.pad_bytes > MAX_PAD_BYTES {
            return Err(format!(
                "rules[{index}].pad_bytes: {} is above the maximum of {MAX_PAD_BYTES}",
                self.pad_bytes
            ));
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(format!(
                "rules[{index}].headers: {} headers, at most {MAX_HEADERS}",
                self.headers.len()
            ));
        }
        for (name, value) in &self.headers {
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!(
                    "rules[{index}].headers: {name:?} is not a header name"
                ));
            }
            if value.len() > MAX_HEADER_VALUE_BYTES
                || axum::http::HeaderValue::from_str(value).is_err()
            {
                return Err(format!(
                    "rules[{index}].headers.{name}: not a header value of at most {MAX_HEADER_VALUE_BYTES} visible ASCII bytes"
                ));
            }
        }
        Ok(())
    }
}

/// Body of `GET`/`PUT /_sim/faults`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSet {
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

impl FaultSet {
    pub fn validate(&self) -> Result<(), String> {
        self.rules
            .iter()
            .enumerate()
            .try_for_each(|(i, r)| r.validate(i))
    }
}

/// What happens to one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub latency_before: Duration,
    pub latency_after: Duration,
    pub error: bool,
    pub drop: bool,
    pub force_429: bool,
    /// The status of the gateway page that replaces the answer (the first rule that fired).
    pub gateway: Option<u16>,
    /// Headers set on the answer, in rule order (a later rule wins).
    pub headers: Vec<(String, String)>,
    /// Whitespace appended to the answer's body, summed over rules.
    pub pad_bytes: u64,
}

fn roll(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

impl FaultSet {
    /// Decides the faults of one request to `endpoint` and counts it against limited rules.
    pub fn plan(&mut self, endpoint: Endpoint) -> FaultPlan {
        let mut plan = FaultPlan::default();
        if self.rules.is_empty() {
            return plan;
        }
        for rule in self.rules.iter_mut() {
            if !rule.route.matches(endpoint) || rule.count == Some(0) {
                continue;
            }
            if let Some(c) = rule.count.as_mut() {
                *c -= 1;
            }
            let latency = Duration::from_millis(rule.latency_ms);
            match rule.latency_when {
                LatencyWhen::Before => plan.latency_before += latency,
                LatencyWhen::After => plan.latency_after += latency,
            }
            plan.error |= roll(rule.error_rate);
            plan.drop |= roll(rule.drop_rate);
            plan.force_429 |= roll(rule.force_429);
            if plan.gateway.is_none() && roll(rule.gateway_rate) {
                plan.gateway = Some(rule.gateway_status.unwrap_or(DEFAULT_GATEWAY_STATUS));
            }
            plan.headers.extend(rule.headers.clone());
            plan.pad_bytes = plan.pad_bytes.saturating_add(rule.pad_bytes);
        }
        self.rules.retain(|r| r.count != Some(0));
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_rule_applies_to_the_next_n_matching_requests_then_disappears() {
        let mut f = FaultSet {
            rules: vec![FaultRule {
                route: FaultRoute::Create,
                error_rate: 1.0,
                count: Some(2),
                ..Default::default()
            }],
        };
        assert!(!f.plan(Endpoint::Get).error, "other routes are untouched");
        assert!(f.plan(Endpoint::Create).error);
        assert!(f.plan(Endpoint::Create).error);
        assert!(!f.plan(Endpoint::Create).error);
        assert!(f.rules.is_empty());
    }

    #[test]
    fn effects_of_several_rules_add_up() {
        let mut f = FaultSet {
            rules: vec![
                FaultRule {
                    latency_ms: 100,
                    ..Default::default()
                },
                FaultRule {
                    route: FaultRoute::List,
                    latency_ms: 50,
                    latency_when: LatencyWhen::After,
                    drop_rate: 1.0,
                    ..Default::default()
                },
            ],
        };
        let p = f.plan(Endpoint::List);
        assert_eq!(p.latency_before, Duration::from_millis(100));
        assert_eq!(p.latency_after, Duration::from_millis(50));
        assert!(p.drop && !p.error && !p.force_429);
        let p = f.plan(Endpoint::Get);
        assert!(!p.drop);
        assert_eq!(f.rules.len(), 2, "rules without count stay");
    }

    #[test]
    fn zero_rates_never_fire() {
        let mut f = FaultSet {
            rules: vec![FaultRule::default()],
        };
        for _ in 0..100 {
            assert_eq!(f.plan(Endpoint::Create), FaultPlan::default());
        }
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused_naming_the_field() {
        let f = FaultSet {
            rules: vec![
                FaultRule::default(),
                FaultRule {
                    drop_rate: 1.5,
                    ..Default::default()
                },
            ],
        };
        let err = f.validate().unwrap_err();
        assert!(err.contains("rules[1].drop_rate"), "{err}");
    }

    #[test]
    fn a_gateway_rule_names_its_status_or_answers_502_and_headers_and_padding_add_up() {
        let mut f: FaultSet = serde_json::from_str(
            r#"{"rules":[
                {"route":"create","gateway_rate":1.0,"gateway_status":524,"headers":{"Retry-After":"99999999999999"}},
                {"gateway_rate":1.0,"pad_bytes":10},
                {"pad_bytes":5}
            ]}"#,
        )
        .unwrap();
        f.validate().unwrap();
        let p = f.plan(Endpoint::Create);
        assert_eq!(p.gateway, Some(524), "the first rule that fires wins");
        assert_eq!(
            p.headers,
            [("Retry-After".to_owned(), "99999999999999".to_owned())]
        );
        assert_eq!(p.pad_bytes, 15);
        let p = f.plan(Endpoint::Get);
        assert_eq!(p.gateway, Some(DEFAULT_GATEWAY_STATUS));
        assert!(p.headers.is_empty());
    }

    #[test]
    fn gateway_statuses_headers_and_padding_are_checked_naming_the_field() {
        for (rule, field) in [
            (r#"{"gateway_status":204}"#, "rules[0].gateway_status"),
            (r#"{"gateway_status":99}"#, "rules[0].gateway_status"),
            (r#"{"gateway_status":600}"#, "rules[0].gateway_status"),
            (r#"{"gateway_rate":-1}"#, "rules[0].gateway_rate"),
            (r#"{"pad_bytes":999999999999}"#, "rules[0].pad_bytes"),
            (r#"{"headers":{"bad name":"x"}}"#, "rules[0].headers"),
            (
                r#"{"headers":{"retry-after":"line\nbreak"}}"#,
                "rules[0].headers.retry-after",
            ),
        ] {
            let f: FaultSet = serde_json::from_str(&format!(r#"{{"rules":[{rule}]}}"#)).unwrap();
            let err = f.validate().unwrap_err();
            assert!(err.contains(field), "{rule}: {err}");
        }
        let ok: FaultSet =
            serde_json::from_str(r#"{"rules":[{"gateway_status":408},{"gateway_status":200}]}"#)
                .unwrap();
        ok.validate().unwrap();
    }

    #[test]
    fn the_wire_form_uses_lowercase_names_and_defaults() {
        let f: FaultSet = serde_json::from_str(
            r#"{"rules":[{"route":"create","latency_ms":200,"latency_when":"after","count":1}]}"#,
        )
        .unwrap();
        assert_eq!(f.rules[0].route, FaultRoute::Create);
        assert_eq!(f.rules[0].latency_when, LatencyWhen::After);
        assert_eq!(f.rules[0].error_rate, 0.0);
        assert!(serde_json::from_str::<FaultSet>(r#"{"rules":[{"rout":"create"}]}"#).is_err());
    }
}
