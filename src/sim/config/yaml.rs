//! The YAML file that replaces the fixture (`--config FILE`; format in `docs/simulator.md`).
//!
//! Its own serde types rather than `Deserialize` on [`SimConfig`]: the file has conveniences
//! (one `phase_duration` for all phases, `scope` or `scopes`, defaults for what is left out)
//! that the configuration the server runs on does not need to know about.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::{
    DEFAULT_DASHBOARD_USER, DEFAULT_MAX_BODY_BYTES, PhaseDurations, Plan, PlanLimits,
    ProjectConfig, RateLimit, Scope, SimConfig, TokenConfig, seconds_to_duration,
};
use crate::sim::SimError;

impl SimConfig {
    /// Reads a YAML file that replaces the fixture entirely.
    pub fn from_yaml_file(path: &Path) -> Result<SimConfig, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text).map_err(|e| match e {
            SimError::Yaml { message, .. } => SimError::Yaml {
                path: Some(path.to_owned()),
                message,
            },
            SimError::Invalid { message, .. } => SimError::Invalid {
                path: Some(path.to_owned()),
                message,
            },
            other => other,
        })
    }

    /// Parses the YAML format of [`SimConfig::from_yaml_file`].
    pub fn from_yaml_str(text: &str) -> Result<SimConfig, SimError> {
        let file: ConfigFile = serde_saphyr::from_str(text).map_err(|e| SimError::Yaml {
            path: None,
            message: e.to_string(),
        })?;
        file.into_config()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    /// Seconds for each of queued, building and deploying.
    #[serde(default)]
    phase_duration: Option<f64>,
    /// Per-phase seconds; each given phase overrides `phase_duration`.
    #[serde(default)]
    phases: Option<PhasesFile>,
    #[serde(default)]
    dashboard_user: Option<String>,
    #[serde(default)]
    max_body_bytes: Option<usize>,
    #[serde(default)]
    plans: Option<PlanLimits>,
    #[serde(default)]
    anonymous: Option<RateLimit>,
    projects: BTreeMap<String, ProjectFile>,
    tokens: BTreeMap<String, TokenFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhasesFile {
    #[serde(default)]
    queued: Option<f64>,
    #[serde(default)]
    building: Option<f64>,
    #[serde(default)]
    deploying: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectFile {
    branches: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    project: String,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    scopes: Option<Vec<Scope>>,
    plan: Plan,
    user: String,
    #[serde(default)]
    expired: bool,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
}

impl ConfigFile {
    fn into_config(self) -> Result<SimConfig, SimError> {
        let base = match self.phase_duration {
            Some(s) => seconds_to_duration("phase_duration", s)?,
            None => Duration::from_secs(1),
        };
        let mut phases = PhaseDurations::uniform(base);
        if let Some(p) = self.phases {
            if let Some(s) = p.queued {
                phases.queued = seconds_to_duration("phases.queued", s)?;
            }
            if let Some(s) = p.building {
                phases.building = seconds_to_duration("phases.building", s)?;
            }
            if let Some(s) = p.deploying {
                phases.deploying = seconds_to_duration("phases.deploying", s)?;
            }
        }
        let projects = self
            .projects
            .into_iter()
            .map(|(id, p)| {
                (
                    id,
                    ProjectConfig {
                        branches: p.branches,
                    },
                )
            })
            .collect();
        let mut tokens = BTreeMap::new();
        for (secret, t) in self.tokens {
            let mut scopes = t.scopes.unwrap_or_default();
            if let Some(s) = t.scope {
                scopes.push(s);
            }
            scopes.sort();
            scopes.dedup();
            if scopes.is_empty() {
                return Err(SimError::invalid(format!(
                    "tokens.{secret}: give 'scope' (e.g. deploy:write) or 'scopes' (a list)"
                )));
            }
            tokens.insert(
                secret,
                TokenConfig {
                    project: t.project,
                    scopes,
                    plan: t.plan,
                    user: t.user,
                    expired: t.expired,
                    rate_limit: t.rate_limit,
                },
            );
        }
        let config = SimConfig {
            projects,
            tokens,
            plans: self.plans.unwrap_or_default(),
            anonymous: self.anonymous.unwrap_or(RateLimit::STARTER),
            phases,
            dashboard_user: self
                .dashboard_user
                .unwrap_or_else(|| DEFAULT_DASHBOARD_USER.to_owned()),
            max_body_bytes: self.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
phase_duration: 0.5
phases:
  building: 2
dashboard_user: user_console
plans:
  pro: { per_minute: 600, burst: 50 }
anonymous: { per_minute: 30, burst: 5 }
projects:
  proj_a:
    branches:
      main: "1111111111111111111111111111111111111111"
      fail/x: "2222222222222222222222222222222222222222"
tokens:
  sk_a_write:
    project: proj_a
    scope: deploy:write
    plan: pro
    user: user_a
  sk_a_old:
    project: proj_a
    scopes: [deploy:read, deploy:admin]
    plan: Enterprise
    user: user_old
    expired: true
    rate_limit: { per_minute: 5, burst: 1 }
"#;

    #[test]
    fn a_good_yaml_file_replaces_the_fixture() {
        let c = SimConfig::from_yaml_str(GOOD).unwrap();
        assert_eq!(c.projects.len(), 1);
        assert_eq!(c.projects["proj_a"].branches.len(), 2);
        assert_eq!(c.phases.queued, Duration::from_millis(500));
        assert_eq!(c.phases.building, Duration::from_secs(2));
        assert_eq!(c.phases.deploying, Duration::from_millis(500));
        assert_eq!(c.dashboard_user, "user_console");
        assert_eq!(
            c.plans.pro,
            RateLimit {
                per_minute: 600,
                burst: 50
            }
        );
        assert_eq!(
            c.plans.starter,
            RateLimit::STARTER,
            "unset plans keep defaults"
        );
        assert_eq!(c.anonymous.burst, 5);
        let old = &c.tokens["sk_a_old"];
        assert!(old.expired);
        assert_eq!(old.plan, Plan::Enterprise);
        assert_eq!(old.scopes, vec![Scope::Read, Scope::Admin]);
        assert_eq!(c.token_limit(old).per_minute, 5);
        assert_eq!(c.token_limit(&c.tokens["sk_a_write"]).per_minute, 600);
    }

    #[test]
    fn a_yaml_file_with_a_missing_field_names_the_field() {
        let bad = GOOD.replace("    plan: pro\n", "");
        let err = SimConfig::from_yaml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("plan"), "{err}");
    }

    #[test]
    fn a_yaml_file_with_an_unknown_field_names_the_field() {
        let bad = GOOD.replace("    user: user_a\n", "    user: user_a\n    colour: red\n");
        let err = SimConfig::from_yaml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn a_yaml_file_with_a_bad_value_names_the_field() {
        let bad = GOOD.replace(
            "project: proj_a\n    scope:",
            "project: proj_zz\n    scope:",
        );
        let err = SimConfig::from_yaml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("tokens.sk_a_write.project"), "{err}");
        assert!(err.contains("proj_zz"), "{err}");

        let bad = GOOD.replace("\"1111111111111111111111111111111111111111\"", "\"xyz\"");
        let err = SimConfig::from_yaml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("projects.proj_a.branches.main"), "{err}");

        let bad = GOOD.replace("phase_duration: 0.5", "phase_duration: -1");
        let err = SimConfig::from_yaml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("phase_duration"), "{err}");

        let bad = GOOD.replace("plan: pro", "plan: gold");
        let err = SimConfig::from_yaml_str(&bad).unwrap_err().to_string();
        assert!(err.contains("gold") || err.contains("plan"), "{err}");
    }

    #[test]
    fn a_missing_file_is_an_io_error_naming_the_path() {
        let err = SimConfig::from_yaml_file(Path::new("/nonexistent/sim.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/sim.yaml"), "{err}");
    }
}
