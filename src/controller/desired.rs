//! The deployment an object asks for, resolved once per reconcile from its spec and Secrets.
//!
//! Everything that goes into `POST /deployments`, into the spec fingerprint stored on the
//! object, and into the search for a create whose answer was lost, is read from the spec here
//! and nowhere else: the fingerprint cannot drift from what is sent. Pure: no IO.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use ring::{digest, hmac};
use serde::Serialize;

use super::keys::{Key, hex};
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
    /// What of the environment anyone who reads the object sees: `spec.envVars`, and the
    /// names and prefixes of `spec.envFrom`.
    pub visible_env: BTreeMap<String, String>,
    pub env_sources: Vec<(String, Option<String>)>,
}

/// How a stored fingerprint relates to the spec as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stamp {
    /// Made for this very spec under the current key.
    Same,
    /// Made for another spec: a new deployment is due.
    Changed,
    /// Made for this spec as far as can be told, under another key or an older format (a key
    /// rotation, a restore into another cluster, an upgrade): renew the stamp, do not redeploy.
    /// A Secret value changed in the same moment as the key is not seen (said in the docs).
    Restamp,
}

/// The fingerprint format: `v2.<key id>.<visible part>.<keyed part>`.
const V2: &str = "v2";

/// The visible spec fields, hashed without a key so that a change of them is seen whatever
/// key stamped the fingerprint.
#[derive(Serialize)]
struct Visible<'a> {
    project_id: &'a str,
    branch: &'a str,
    commit_sha: Option<&'a str>,
    env_vars: &'a BTreeMap<String, String>,
    env_from: &'a [(String, Option<String>)],
    redeploy: Option<&'a str>,
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
            visible_env: spec.env_vars.clone(),
            env_sources: spec
                .env_from
                .iter()
                .map(|s| (s.secret_ref.name.clone(), s.prefix.clone()))
                .collect(),
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

    /// What makes one deployment different from another: a new fingerprint means a new remote
    /// deployment is due. `v2.<key id>.<visible>.<keyed>`: the visible part hashes the spec
    /// fields anyone can read, without a key; the keyed part is an HMAC of everything sent
    /// (Secret values included), so that the fingerprint on the object reveals nothing of
    /// secret values to someone who can read the object.
    pub fn fingerprint(&self, key: &Key) -> String {
        format!(
            "{V2}.{}.{}.{}",
            key.id(),
            self.visible_part(),
            key.tag(&[&self.canonical()])
        )
    }

    /// How `stored` (a fingerprint on the object) relates to this spec. `legacy_keys` are
    /// what may have keyed the fingerprints of earlier versions (the `--fingerprint-key` flag
    /// or the chart's key Secret, else the object's UID).
    pub fn compare(&self, stored: &str, key: &Key, legacy_keys: &[&[u8]]) -> Stamp {
        let now = self.fingerprint(key);
        if stored == now {
            return Stamp::Same;
        }
        let mut parts = stored.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(V2), Some(id), Some(visible), Some(_)) => {
                if visible != self.visible_part() || id == key.id() {
                    Stamp::Changed
                } else {
                    Stamp::Restamp
                }
            }
            _ if legacy_keys
                .iter()
                .any(|k| stored == self.legacy_fingerprint(k)) =>
            {
                Stamp::Restamp
            }
            _ => Stamp::Changed,
        }
    }

    fn visible_part(&self) -> String {
        let visible = Visible {
            project_id: &self.target.project_id,
            branch: &self.target.branch,
            commit_sha: self.target.commit_sha.as_deref(),
            env_vars: &self.visible_env,
            env_from: &self.env_sources,
            redeploy: self.redeploy.as_deref(),
        };
        // Strings and string maps always serialize.
        let bytes = serde_json::to_vec(&visible).unwrap_or_default();
        hex(&digest::digest(&digest::SHA256, &bytes).as_ref()[..16])
    }

    /// Everything sent, and `redeploy`, in the canonical form every version has used.
    fn canonical(&self) -> Vec<u8> {
        let canonical = Canonical {
            project_id: &self.target.project_id,
            branch: &self.target.branch,
            commit_sha: self.target.commit_sha.as_deref(),
            env: &self.env,
            redeploy: self.redeploy.as_deref(),
        };
        serde_json::to_vec(&canonical).unwrap_or_default()
    }

    /// The fingerprint of versions before `v2`: 32 hex digits of HMAC-SHA256 over the
    /// canonical form, with no key id.
    fn legacy_fingerprint(&self, key: &[u8]) -> String {
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), &self.canonical());
        hex(&tag.as_ref()[..16])
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
            visible_env: BTreeMap::new(),
            env_sources: vec![("app-env".into(), None)],
        }
    }

    fn key() -> Key {
        Key::new(b"key-key-key-key-")
    }

    #[test]
    fn the_fingerprint_changes_with_env_values_and_redeploy_but_not_with_the_key_order() {
        let f = |d: DesiredDeployment| d.fingerprint(&key());
        let ab = f(desired(&[("A", "1"), ("B", "2")], None));
        assert_eq!(ab, f(desired(&[("B", "2"), ("A", "1")], None)));
        assert_ne!(ab, f(desired(&[("A", "1"), ("B", "3")], None)));
        assert_ne!(ab, f(desired(&[("A", "1"), ("B", "2")], Some("1"))));
        assert_ne!(
            ab,
            desired(&[("A", "1"), ("B", "2")], None).fingerprint(&Key::new(b"other-other-othe"))
        );
        assert!(ab.starts_with(&format!("v2.{}.", key().id())), "{ab}");
    }

    #[test]
    fn a_fingerprint_of_an_earlier_version_is_recognised_and_restamped() {
        // Stored on objects by every version before v2: 32 hex digits of HMAC-SHA256 over this
        // canonical JSON. Recognised, it is renewed, never taken for a change of spec.
        let d = desired(&[("NODE_ENV", "production")], None);
        let canonical = r#"{"project_id":"proj_8f3k29","branch":"main","commit_sha":null,"env":{"NODE_ENV":"production"},"redeploy":null}"#;
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"uid-1"),
            canonical.as_bytes(),
        );
        let legacy = hex(&tag.as_ref()[..16]);
        assert_eq!(d.compare(&legacy, &key(), &[b"uid-1"]), Stamp::Restamp);
        // Under another legacy key, or for another spec, it is a change, as it always was.
        assert_eq!(d.compare(&legacy, &key(), &[b"uid-2"]), Stamp::Changed);
        let other = desired(&[("NODE_ENV", "staging")], None);
        assert_eq!(other.compare(&legacy, &key(), &[b"uid-1"]), Stamp::Changed);
    }

    #[test]
    fn a_fingerprint_under_another_key_is_restamped_unless_a_visible_field_changed() {
        let before = desired(&[("A", "1")], None);
        let rotated = Key::new(b"a-new-key-a-new-");
        let stored = before.fingerprint(&key());
        assert_eq!(before.compare(&stored, &key(), &[b"uid"]), Stamp::Same);
        assert_eq!(before.compare(&stored, &rotated, &[b"uid"]), Stamp::Restamp);
        // A Secret value changed under the same key: a change.
        let secret_changed = desired(&[("A", "2")], None);
        assert_eq!(
            secret_changed.compare(&stored, &key(), &[b"uid"]),
            Stamp::Changed
        );
        // A visible field changed: a change whatever the key.
        let mut branch_changed = before.clone();
        branch_changed.target.branch = "dev".into();
        assert_eq!(
            branch_changed.compare(&stored, &rotated, &[b"uid"]),
            Stamp::Changed
        );
        let mut var_changed = before.clone();
        var_changed.visible_env.insert("MODE".into(), "x".into());
        assert_eq!(
            var_changed.compare(&stored, &rotated, &[b"uid"]),
            Stamp::Changed
        );
        let redeployed = desired(&[("A", "1")], Some("2"));
        assert_eq!(
            redeployed.compare(&stored, &rotated, &[b"uid"]),
            Stamp::Changed
        );
        // Anything else on the object is just another spec.
        assert_eq!(before.compare("f1", &key(), &[b"uid"]), Stamp::Changed);
        assert_eq!(
            before.compare("v2.x.y", &rotated, &[b"uid"]),
            Stamp::Changed
        );
    }

    #[test]
    fn the_fingerprint_does_not_contain_secret_values() {
        let fp = desired(&[("PASSWORD", "hunter2")], None).fingerprint(&key());
        assert!(!fp.contains("hunter2"));
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() || c == '.' || c == 'v')
        );
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
                variant.fingerprint(&key()),
                base.fingerprint(&key()),
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
