//! What the simulator knows before the first request: projects and their branches, API tokens,
//! rate limits per plan and the duration of each lifecycle phase.
//!
//! [`SimConfig::default_fixture`] is the fixture every test and the documentation rely on;
//! [`SimConfig::from_yaml_file`] replaces it with a file (format in `docs/simulator.md`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SimError;

mod yaml;

/// HEAD of `main` in `proj_8f3k29`.
pub const HEAD_MAIN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";
/// HEAD of `feature/login` in `proj_8f3k29`.
pub const HEAD_FEATURE_LOGIN: &str = "b7e4c1f0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4";
/// HEAD of `fail/broken-build` in `proj_8f3k29`.
pub const HEAD_FAIL_BROKEN_BUILD: &str = "dead0beef1cafe2babe3f00d4c0de5fee6bad7a8";
/// HEAD of `main` in `proj_other`.
pub const HEAD_OTHER_MAIN: &str = "0123456789abcdef0123456789abcdef01234567";

/// Cancels made through `/_sim/` ("from the dashboard") are signed by this user by default.
pub const DEFAULT_DASHBOARD_USER: &str = "user_dashboard";

/// Largest accepted request body; larger bodies answer `413 payload_too_large`.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// A token scope. `write` and `admin` imply `read`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    #[serde(rename = "deploy:read")]
    Read,
    #[serde(rename = "deploy:write")]
    Write,
    #[serde(rename = "deploy:admin")]
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "deploy:read",
            Scope::Write => "deploy:write",
            Scope::Admin => "deploy:admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plan of the account a token belongs to; it decides the token's default rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    #[serde(alias = "Starter")]
    Starter,
    #[serde(alias = "Pro")]
    Pro,
    #[serde(alias = "Enterprise")]
    Enterprise,
}

/// A token bucket: `burst` requests at once, refilled at `per_minute / 60` per second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl RateLimit {
    pub const STARTER: RateLimit = RateLimit {
        per_minute: 100,
        burst: 20,
    };
    pub const PRO: RateLimit = RateLimit {
        per_minute: 1_000,
        burst: 200,
    };
    pub const ENTERPRISE: RateLimit = RateLimit {
        per_minute: 10_000,
        burst: 2_000,
    };

    fn validate(self, field: &str) -> Result<(), SimError> {
        if self.per_minute == 0 {
            return Err(SimError::invalid(format!(
                "{field}.per_minute: must be at least 1"
            )));
        }
        if self.burst == 0 {
            return Err(SimError::invalid(format!(
                "{field}.burst: must be at least 1"
            )));
        }
        Ok(())
    }
}

/// Rate limit of each plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    #[serde(default = "starter_limit")]
    pub starter: RateLimit,
    #[serde(default = "pro_limit")]
    pub pro: RateLimit,
    #[serde(default = "enterprise_limit")]
    pub enterprise: RateLimit,
}

fn starter_limit() -> RateLimit {
    RateLimit::STARTER
}
fn pro_limit() -> RateLimit {
    RateLimit::PRO
}
fn enterprise_limit() -> RateLimit {
    RateLimit::ENTERPRISE
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            starter: RateLimit::STARTER,
            pro: RateLimit::PRO,
            enterprise: RateLimit::ENTERPRISE,
        }
    }
}

impl PlanLimits {
    pub fn of(&self, plan: Plan) -> RateLimit {
        match plan {
            Plan::Starter => self.starter,
            Plan::Pro => self.pro,
            Plan::Enterprise => self.enterprise,
        }
    }
}

/// How long a deployment stays in each in-progress phase. `ZERO` everywhere makes a deployment
/// finish the moment it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseDurations {
    pub queued: Duration,
    pub building: Duration,
    pub deploying: Duration,
}

impl PhaseDurations {
    pub fn uniform(d: Duration) -> Self {
        PhaseDurations {
            queued: d,
            building: d,
            deploying: d,
        }
    }
}

impl Default for PhaseDurations {
    fn default() -> Self {
        Self::uniform(Duration::from_secs(1))
    }
}

/// A project and its branches (name → 40-hex HEAD commit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectConfig {
    pub branches: BTreeMap<String, String>,
}

/// An API token: the project it belongs to, its scopes, its plan and the user it acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenConfig {
    pub project: String,
    pub scopes: Vec<Scope>,
    pub plan: Plan,
    /// Written into `cancelled_by` when this token cancels.
    pub user: String,
    /// An expired token answers 401 like an unknown one.
    pub expired: bool,
    /// Overrides the plan's rate limit for this token only.
    pub rate_limit: Option<RateLimit>,
}

impl TokenConfig {
    pub fn new(project: &str, scope: Scope, plan: Plan, user: &str) -> Self {
        TokenConfig {
            project: project.to_owned(),
            scopes: vec![scope],
            plan,
            user: user.to_owned(),
            expired: false,
            rate_limit: None,
        }
    }

    /// Create, cancel and delete need `deploy:write` or `deploy:admin`.
    pub fn can_write(&self) -> bool {
        self.scopes
            .iter()
            .any(|s| matches!(s, Scope::Write | Scope::Admin))
    }
}

/// Everything the simulator serves. Fields are public so that tests can adjust the fixture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// Project id → project.
    pub projects: BTreeMap<String, ProjectConfig>,
    /// Token secret → token.
    pub tokens: BTreeMap<String, TokenConfig>,
    pub plans: PlanLimits,
    /// Bucket per client IP for requests without a valid token (missing, unknown, expired).
    pub anonymous: RateLimit,
    pub phases: PhaseDurations,
    /// `cancelled_by` of cancels made through `/_sim/deployments/{id}/cancel`.
    pub dashboard_user: String,
    pub max_body_bytes: usize,
}

impl SimConfig {
    /// The documented fixture: two projects, five tokens, phases of one second each.
    pub fn default_fixture() -> SimConfig {
        let mut projects = BTreeMap::new();
        projects.insert(
            "proj_8f3k29".to_owned(),
            ProjectConfig {
                branches: BTreeMap::from([
                    ("main".to_owned(), HEAD_MAIN.to_owned()),
                    ("feature/login".to_owned(), HEAD_FEATURE_LOGIN.to_owned()),
                    (
                        "fail/broken-build".to_owned(),
                        HEAD_FAIL_BROKEN_BUILD.to_owned(),
                    ),
                ]),
            },
        );
        projects.insert(
            "proj_other".to_owned(),
            ProjectConfig {
                branches: BTreeMap::from([("main".to_owned(), HEAD_OTHER_MAIN.to_owned())]),
            },
        );
        let p = "proj_8f3k29";
        let tokens = BTreeMap::from([
            (
                "sk_test_admin".to_owned(),
                TokenConfig::new(p, Scope::Admin, Plan::Enterprise, "user_admin01"),
            ),
            (
                "sk_test_write".to_owned(),
                TokenConfig::new(p, Scope::Write, Plan::Pro, "user_write01"),
            ),
            (
                "sk_test_read".to_owned(),
                TokenConfig::new(p, Scope::Read, Plan::Pro, "user_read01"),
            ),
            (
                "sk_test_starter".to_owned(),
                TokenConfig::new(p, Scope::Write, Plan::Starter, "user_starter01"),
            ),
            (
                "sk_test_other".to_owned(),
                TokenConfig::new("proj_other", Scope::Write, Plan::Pro, "user_other01"),
            ),
        ]);
        SimConfig {
            projects,
            tokens,
            plans: PlanLimits::default(),
            anonymous: RateLimit::STARTER,
            phases: PhaseDurations::default(),
            dashboard_user: DEFAULT_DASHBOARD_USER.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Same duration for queued, building and deploying; `Duration::ZERO` makes deployments
    /// finish at once.
    pub fn with_phase_duration(mut self, d: Duration) -> SimConfig {
        self.phases = PhaseDurations::uniform(d);
        self
    }

    /// The rate limit a token is held to: its own override, else its plan's.
    pub fn token_limit(&self, token: &TokenConfig) -> RateLimit {
        token
            .rate_limit
            .unwrap_or_else(|| self.plans.of(token.plan))
    }

    /// Checks the cross references and ranges the types cannot express.
    pub fn validate(&self) -> Result<(), SimError> {
        if self.projects.is_empty() {
            return Err(SimError::invalid(
                "projects: at least one project is needed",
            ));
        }
        for (pid, project) in &self.projects {
            if pid.is_empty() {
                return Err(SimError::invalid("projects: a project id is empty"));
            }
            for (branch, head) in &project.branches {
                if branch.is_empty() {
                    return Err(SimError::invalid(format!(
                        "projects.{pid}.branches: a branch name is empty"
                    )));
                }
                if head.len() != 40 || !is_lower_hex(head) {
                    return Err(SimError::invalid(format!(
                        "projects.{pid}.branches.{branch}: HEAD commit '{head}' must be 40 lowercase hex characters"
                    )));
                }
            }
        }
        for (secret, token) in &self.tokens {
            if secret.is_empty() || !secret.bytes().all(is_token_byte) {
                return Err(SimError::invalid(format!(
                    "tokens.{secret}: a token must be non-empty visible ASCII without spaces"
                )));
            }
            if !self.projects.contains_key(&token.project) {
                return Err(SimError::invalid(format!(
                    "tokens.{secret}.project: project '{}' is not defined under projects",
                    token.project
                )));
            }
            if token.scopes.is_empty() {
                return Err(SimError::invalid(format!(
                    "tokens.{secret}.scopes: at least one scope is needed"
                )));
            }
            if token.user.is_empty() {
                return Err(SimError::invalid(format!(
                    "tokens.{secret}.user: must not be empty"
                )));
            }
            if let Some(limit) = token.rate_limit {
                limit.validate(&format!("tokens.{secret}.rate_limit"))?;
            }
        }
        self.plans.starter.validate("plans.starter")?;
        self.plans.pro.validate("plans.pro")?;
        self.plans.enterprise.validate("plans.enterprise")?;
        self.anonymous.validate("anonymous")?;
        if self.dashboard_user.is_empty() {
            return Err(SimError::invalid("dashboard_user: must not be empty"));
        }
        if self.max_body_bytes == 0 {
            return Err(SimError::invalid("max_body_bytes: must be at least 1"));
        }
        Ok(())
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        Self::default_fixture()
    }
}

pub(crate) fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A commit the API accepts: 7 to 40 lowercase hex characters.
pub fn is_valid_commit(s: &str) -> bool {
    (7..=40).contains(&s.len()) && is_lower_hex(s)
}

pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

/// Largest phase duration a file or flag may ask for: a day.
pub const MAX_PHASE_SECONDS: f64 = 86_400.0;

/// Seconds (as given on the command line or in YAML) to a duration, refusing what
/// `Duration::from_secs_f64` would panic on.
pub fn seconds_to_duration(field: &str, secs: f64) -> Result<Duration, SimError> {
    if !secs.is_finite() || !(0.0..=MAX_PHASE_SECONDS).contains(&secs) {
        return Err(SimError::invalid(format!(
            "{field}: {secs} is not a number of seconds between 0 and {MAX_PHASE_SECONDS}"
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_heads_are_forty_lowercase_hex_and_the_fixture_is_valid() {
        for head in [
            HEAD_MAIN,
            HEAD_FEATURE_LOGIN,
            HEAD_FAIL_BROKEN_BUILD,
            HEAD_OTHER_MAIN,
        ] {
            assert_eq!(head.len(), 40, "{head}");
            assert!(is_lower_hex(head), "{head}");
        }
        let c = SimConfig::default_fixture();
        c.validate().unwrap();
        assert_eq!(c.tokens.len(), 5);
        assert_eq!(c.phases, PhaseDurations::uniform(Duration::from_secs(1)));
        assert_eq!(
            c.token_limit(&c.tokens["sk_test_starter"]),
            RateLimit::STARTER
        );
        assert_eq!(
            c.token_limit(&c.tokens["sk_test_admin"]),
            RateLimit::ENTERPRISE
        );
        assert!(!c.tokens["sk_test_read"].can_write());
        assert!(c.tokens["sk_test_admin"].can_write());
    }

    #[test]
    fn with_phase_duration_sets_all_three_phases() {
        let c = SimConfig::default_fixture().with_phase_duration(Duration::ZERO);
        assert_eq!(c.phases, PhaseDurations::uniform(Duration::ZERO));
    }

    #[test]
    fn commits_are_seven_to_forty_lowercase_hex() {
        assert!(is_valid_commit("a1b2c3d"));
        assert!(is_valid_commit(HEAD_MAIN));
        assert!(!is_valid_commit("a1b2c3"), "too short");
        assert!(!is_valid_commit(&"a".repeat(41)), "too long");
        assert!(!is_valid_commit("A1B2C3D4"), "uppercase");
        assert!(!is_valid_commit("g1b2c3d4"), "not hex");
        assert!(!is_valid_commit(""));
    }
}
