//! Fault injection, switchable at run time through `/_sim/faults`.
//!
//! A list of rules; every rule whose route filter matches a request applies to it (and, with
//! `count`, only to the next `count` matching requests). Effects of several rules add up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Endpoint;

/// Longest latency a rule may inject: ten minutes.
pub const MAX_LATENCY_MS: u64 = 600_000;

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
    /// Apply to the next `count` matching requests only, then disappear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl FaultRule {
    pub fn validate(&self, index: usize) -> Result<(), String> {
        for (name, v) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("force_429", self.force_429),
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub latency_before: Duration,
    pub latency_after: Duration,
    pub error: bool,
    pub drop: bool,
    pub force_429: bool,
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
