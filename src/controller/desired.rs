//! The deployment an object asks for, resolved once per reconcile from its spec and Secrets.
//!
//! Everything that goes into `POST /deployments`, into the spec fingerprint stored on the
//! object, and into the search for a create whose answer was lost, is read from the spec here
//! and nowhere else: the fingerprint cannot drift from what is sent. Pure: no IO.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use ring::hmac;
use serde::Serialize;

use super::secrets::{self, SecretProblem};
use crate::api::{CreateDeploymentRequest, DeploymentDetails, DeploymentSummary};
use crate::resource::GitDeploymentSpec;

/// Which deployment of which project: what tells one remote deployment's origin from another's.
/// Needs no Secret, so that deletion can still recognise a deployment after they are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub project_id: String,
    pub branch: String,
    /// `None`: the branch HEAD at the time of the create.
    pub commit_sha: Option<String>,
}

impl Target {
    pub fn of(spec: &GitDeploymentSpec) -> Self {
        Target {
            project_id: spec.project_id.clone(),
            branch: spec.branch.clone(),
            commit_sha: spec.commit_sha.clone(),
        }
    }

    /// Whether a listed deployment could have come from a create of this target (the listing
    /// carries the branch only; `could_be` settles it).
    pub fn could_be_listed(&self, d: &DeploymentSummary) -> bool {
        d.branch == self.branch
    }

    /// Whether a deployment could have come from a create of this target: same project and
    /// branch, and the commit asked for (a short sha names its full one).
    pub fn could_be(&self, d: &DeploymentDetails) -> bool {
        d.project_id == self.project_id
            && d.branch == self.branch
            && self
                .commit_sha
                .as_deref()
                .is_none_or(|c| d.commit_sha.starts_with(c))
    }
}

/// The remote deployment the spec and its Secrets ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredDeployment {
    pub target: Target,
    /// Resolved values: `envFrom` Secrets merged in order, `envVars` on top.
    pub env: BTreeMap<String, String>,
    /// `spec.redeploy`: not sent, but a new value asks for a new deployment.
    pub redeploy: Option<String>,
}

/// The canonical form the fingerprint is computed over. Field order and names are part of
/// every fingerprint already stored on objects: changing them would redeploy everything.
#[derive(Serialize)]
struct Canonical<'a> {
    project_id: &'a str,
    branch: &'a str,
    commit_sha: Option<&'a str>,
    env: &'a BTreeMap<String, String>,
    redeploy: Option<&'a str>,
}

impl DesiredDeployment {
    /// Resolves the spec against the Secrets of its namespace (`secret` looks one up by name).
    pub fn resolve<'a>(
        spec: &GitDeploymentSpec,
        secret: impl Fn(&str) -> Option<&'a Secret>,
    ) -> Result<Self, SecretProblem> {
        Ok(DesiredDeployment {
            target: Target::of(spec),
            env: secrets::env_from(spec, secret)?,
            redeploy: spec.redeploy.clone(),
        })
    }

    /// The body of `POST /deployments`.
    pub fn request(&self) -> CreateDeploymentRequest {
        CreateDeploymentRequest {
            project_id: self.target.project_id.clone(),
            branch: self.target.branch.clone(),
            commit_sha: self.target.commit_sha.clone(),
            env_vars: (!self.env.is_empty()).then(|| self.env.clone()),
        }
    }

    /// A keyed hash (HMAC-SHA256, 128 bits in hex) of everything that makes one deployment
    /// different from another, so that the fingerprint stored on the object reveals nothing
    /// of secret environment values to someone who can read the object. A new fingerprint
    /// means a new remote deployment is due.
    pub fn fingerprint(&self, key: &[u8]) -> String {
        let canonical = Canonical {
            project_id: &self.target.project_id,
            branch: &self.target.branch,
            commit_sha: self.target.commit_sha.as_deref(),
            env: &self.env,
            redeploy: self.redeploy.as_deref(),
        };
        // A struct of strings and a string map cannot fail to serialize; an empty input would
        // still give a keyed, stable hash.
        let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &bytes);
        tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DeploymentStatus;
    use jiff::Timestamp;

    fn desired(env: &[(&str, &str)], redeploy: Option<&str>) -> DesiredDeployment {
        DesiredDeployment {
            target: Target {
                project_id: "proj_8f3k29".into(),
                branch: "main".into(),
                commit_sha: None,
            },
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            redeploy: redeploy.map(str::to_string),
        }
    }

    #[test]
    fn the_fingerprint_changes_with_env_values_and_redeploy_but_not_with_the_key_order() {
        let f = |d: DesiredDeployment| d.fingerprint(b"key");
        let ab = f(desired(&[("A", "1"), ("B", "2")], None));
        assert_eq!(ab, f(desired(&[("B", "2"), ("A", "1")], None)));
        assert_ne!(ab, f(desired(&[("A", "1"), ("B", "3")], None)));
        assert_ne!(ab, f(desired(&[("A", "1"), ("B", "2")], Some("1"))));
        assert_ne!(
            ab,
            desired(&[("A", "1"), ("B", "2")], None).fingerprint(b"other")
        );
        assert_eq!(ab.len(), 32);
    }

    #[test]
    fn the_fingerprint_of_a_spec_is_what_it_was_before_the_pipeline_existed() {
        // Stored on every object already: a different value would redeploy every object on
        // upgrade. Computed with the canonical JSON the operator has always used.
        let d = desired(&[("NODE_ENV", "production")], None);
        let canonical = r#"{"project_id":"proj_8f3k29","branch":"main","commit_sha":null,"env":{"NODE_ENV":"production"},"redeploy":null}"#;
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"key"),
            canonical.as_bytes(),
        );
        let expected: String = tag.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(d.fingerprint(b"key"), expected);
    }

    #[test]
    fn the_fingerprint_does_not_contain_secret_values() {
        let fp = desired(&[("PASSWORD", "hunter2")], None).fingerprint(b"key");
        assert!(!fp.contains("hunter2"));
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
    }

    /// Every field of the request body is covered by the fingerprint, and the only input the
    /// fingerprint covers beyond the body is `redeploy`: one change of each input, alone.
    #[test]
    fn the_fingerprint_and_the_request_body_read_the_same_fields() {
        let base = desired(&[("A", "1")], None);
        let variants: Vec<(&str, DesiredDeployment, bool)> = vec![
            (
                "project",
                DesiredDeployment {
                    target: Target {
                        project_id: "proj_other".into(),
                        ..base.target.clone()
                    },
                    ..base.clone()
                },
                true,
            ),
            (
                "branch",
                DesiredDeployment {
                    target: Target {
                        branch: "dev".into(),
                        ..base.target.clone()
                    },
                    ..base.clone()
                },
                true,
            ),
            (
                "commit",
                DesiredDeployment {
                    target: Target {
                        commit_sha: Some("a1b2c3d".into()),
                        ..base.target.clone()
                    },
                    ..base.clone()
                },
                true,
            ),
            ("env value", desired(&[("A", "2")], None), true),
            ("env name", desired(&[("B", "1")], None), true),
            ("no env", desired(&[], None), true),
            ("redeploy", desired(&[("A", "1")], Some("2")), false),
        ];
        let body = |d: &DesiredDeployment| serde_json::to_value(d.request()).unwrap();
        for (what, variant, body_changes) in variants {
            assert_ne!(
                variant.fingerprint(b"k"),
                base.fingerprint(b"k"),
                "changing the {what} must change the fingerprint"
            );
            assert_eq!(
                body(&variant) != body(&base),
                body_changes,
                "changing the {what}: the body {} change",
                if body_changes { "must" } else { "must not" }
            );
        }
    }

    #[test]
    fn the_request_sends_env_vars_only_when_there_are_some() {
        assert_eq!(desired(&[], None).request().env_vars, None);
        let with = desired(&[("A", "1")], Some("x")).request();
        assert_eq!(with.env_vars.unwrap()["A"], "1");
        assert_eq!(with.project_id, "proj_8f3k29");
        assert_eq!(with.branch, "main");
    }

    #[test]
    fn a_deployment_could_be_ours_only_with_the_same_project_branch_and_commit() {
        let details = |project: &str, branch: &str, commit: &str| DeploymentDetails {
            id: "dep_1".into(),
            status: DeploymentStatus::Queued,
            project_id: project.into(),
            branch: branch.into(),
            commit_sha: commit.into(),
            build_duration: None,
            deploy_url: String::new(),
            logs_url: String::new(),
            created_at: Timestamp::UNIX_EPOCH,
            completed_at: None,
            cancelled_by: None,
            cancelled_at: None,
        };
        let head = Target {
            project_id: "proj_a".into(),
            branch: "main".into(),
            commit_sha: None,
        };
        let pinned = Target {
            commit_sha: Some("a1b2c3d".into()),
            ..head.clone()
        };
        assert!(head.could_be(&details("proj_a", "main", "ffff")));
        assert!(!head.could_be(&details("proj_b", "main", "ffff")));
        assert!(!head.could_be(&details("proj_a", "dev", "ffff")));
        assert!(pinned.could_be(&details("proj_a", "main", "a1b2c3d4e5")));
        assert!(!pinned.could_be(&details("proj_a", "main", "ffff")));
        let listed = |branch: &str| DeploymentSummary {
            id: "dep_1".into(),
            status: DeploymentStatus::Queued,
            branch: branch.into(),
            created_at: Timestamp::UNIX_EPOCH,
        };
        assert!(head.could_be_listed(&listed("main")));
        assert!(!head.could_be_listed(&listed("dev")));
    }
}
