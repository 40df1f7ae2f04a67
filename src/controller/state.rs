//! What the operator remembers on the object itself, so that it survives a restart of the
//! operator and the loss of `.status` (backup and restore, `kubectl replace`).
//!
//! It lives in one annotation, `git.dev/state`, as JSON, written with the object's
//! `resourceVersion` as a precondition so that a concurrent writer is noticed, never overwritten.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::resource::{ANNOTATION_DEPLOYMENT_ID, GitDeployment};

/// The operator's own annotation. Users never need to write it.
pub const ANNOTATION_STATE: &str = "git.dev/state";

/// A create about to be sent: recorded before `POST /deployments` so that a crash or a lost
/// answer can be resolved by looking for the deployment instead of creating a second one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub fingerprint: String,
    /// Operator clock when the create was about to be sent.
    pub at: Timestamp,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The current remote deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Fingerprint of the deployment spec `id` was made for (unknown for an adopted one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// `id` was cancelled because of `spec.cancel`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Earlier remote deployments of this object, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    /// A create whose answer has not been recorded yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<Intent>,
}

impl State {
    /// The state of an object: its own annotation first; else what `.status` still says; else
    /// the adoption annotation `git.dev/deployment-id` a user set.
    pub fn of(obj: &GitDeployment) -> State {
        let annotations = obj.metadata.annotations.as_ref();
        if let Some(state) = annotations
            .and_then(|a| a.get(ANNOTATION_STATE))
            .and_then(|s| serde_json::from_str::<State>(s).ok())
        {
            return state;
        }
        if let Some(status) = obj.status.as_ref().filter(|s| s.deployment_id.is_some()) {
            return State {
                id: status.deployment_id.clone(),
                fingerprint: status.spec_fingerprint.clone(),
                history: status
                    .history
                    .iter()
                    .map(|h| h.deployment_id.clone())
                    .collect(),
                ..State::default()
            };
        }
        State {
            id: annotations
                .and_then(|a| a.get(ANNOTATION_DEPLOYMENT_ID))
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
            ..State::default()
        }
    }

    /// Whether the object carries this state already (no write needed).
    pub fn is_recorded_on(&self, obj: &GitDeployment) -> bool {
        obj.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_STATE))
            .and_then(|s| serde_json::from_str::<State>(s).ok())
            .as_ref()
            == Some(self)
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).expect("state always serializes")
    }

    /// Every remote deployment the object knows of: the current one, then history, once each.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for id in self.id.iter().chain(&self.history) {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        ids
    }

    /// The current deployment becomes history and `id` the current one.
    pub fn replace_current(&mut self, id: String, fingerprint: String) {
        if let Some(old) = self.id.take() {
            self.history.retain(|h| h != &old);
            self.history.insert(0, old);
        }
        self.history.retain(|h| h != &id);
        self.id = Some(id);
        self.fingerprint = Some(fingerprint);
        self.cancel_requested = false;
        self.intent = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{GitDeploymentSpec, GitDeploymentStatus, HistoryEntry};

    fn obj(annotations: &[(&str, &str)], status: Option<GitDeploymentStatus>) -> GitDeployment {
        let spec: GitDeploymentSpec = serde_json::from_value(
            serde_json::json!({"projectId": "proj_8f3k29", "branch": "main"}),
        )
        .unwrap();
        let mut o = GitDeployment::new("web", spec);
        o.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o.status = status;
        o
    }

    #[test]
    fn state_is_read_from_the_annotation_first_then_status_then_adoption() {
        let annotated = obj(
            &[
                (ANNOTATION_STATE, r#"{"id":"dep_a","fingerprint":"f1"}"#),
                (ANNOTATION_DEPLOYMENT_ID, "dep_user"),
            ],
            None,
        );
        assert_eq!(State::of(&annotated).id.as_deref(), Some("dep_a"));

        let status = GitDeploymentStatus {
            deployment_id: Some("dep_s".into()),
            spec_fingerprint: Some("f2".into()),
            history: vec![HistoryEntry {
                deployment_id: "dep_old".into(),
                commit_sha: None,
                status: None,
                created_at: None,
            }],
            ..Default::default()
        };
        let from_status = State::of(&obj(
            &[(ANNOTATION_DEPLOYMENT_ID, "dep_user")],
            Some(status),
        ));
        assert_eq!(from_status.id.as_deref(), Some("dep_s"));
        assert_eq!(from_status.history, vec!["dep_old".to_string()]);

        let adopted = State::of(&obj(&[(ANNOTATION_DEPLOYMENT_ID, " dep_user ")], None));
        assert_eq!(adopted.id.as_deref(), Some("dep_user"));
        assert_eq!(adopted.fingerprint, None);

        assert_eq!(State::of(&obj(&[], None)), State::default());
    }

    #[test]
    fn replacing_the_current_deployment_moves_it_to_the_front_of_history() {
        let mut s = State {
            id: Some("dep_2".into()),
            history: vec!["dep_1".into()],
            cancel_requested: true,
            intent: Some(Intent {
                fingerprint: "f3".into(),
                at: Timestamp::UNIX_EPOCH,
            }),
            ..State::default()
        };
        s.replace_current("dep_3".into(), "f3".into());
        assert_eq!(s.id.as_deref(), Some("dep_3"));
        assert_eq!(s.history, vec!["dep_2".to_string(), "dep_1".to_string()]);
        assert!(!s.cancel_requested && s.intent.is_none());
    }
}
