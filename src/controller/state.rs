//! What the operator remembers on the object itself, so that it survives a restart of the
//! operator and the loss of `.status` (backup and restore, `kubectl replace`).
//!
//! It lives in one annotation, `git.dev/state`, as JSON, written with the object's
//! `resourceVersion` as a precondition so that a concurrent writer is noticed, never overwritten.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::keys::{Key, Verify};
use crate::resource::{ANNOTATION_DEPLOYMENT_ID, GitDeployment};

/// The operator's own annotation. Users never need to write it.
pub const ANNOTATION_STATE: &str = "git.dev/state";

/// `git.dev/state` as JSON, with the signature (if any) apart. `None` when it is not a state
/// at all (not JSON, wrong types, too long): as if there were none.
fn parse(annotation: &str) -> Option<(State, Option<String>)> {
    if annotation.len() > ANNOTATION_LIMIT {
        return None;
    }
    let mut value: serde_json::Value = serde_json::from_str(annotation).ok()?;
    let signature = value
        .as_object_mut()?
        .remove("sig")
        .and_then(|s| s.as_str().map(str::to_string));
    let state = serde_json::from_value(value).ok()?;
    Some((state, signature))
}

/// What a signature covers: the object's namespace and name (not its UID, which a restore
/// changes), and the state as the operator serializes it.
struct SignedParts {
    namespace: String,
    name: String,
    state: Vec<u8>,
}

impl SignedParts {
    fn parts(&self) -> [&[u8]; 3] {
        [self.namespace.as_bytes(), self.name.as_bytes(), &self.state]
    }
}

fn signed_parts(obj: &GitDeployment, state: &State) -> SignedParts {
    SignedParts {
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        name: obj.metadata.name.clone().unwrap_or_default(),
        state: serde_json::to_vec(state).unwrap_or_default(),
    }
}

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

/// How far the operator trusts what an object says of its deployments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trust {
    /// The operator's own signature, for this namespace and name, under its current key.
    Signed,
    /// Anything else: written by someone else, signed under another key (a rotation, a
    /// restore), rebuilt from `.status`, or named by the adoption annotation. A hint: no
    /// deployment it names is cancelled, deleted or adopted while another object holds it.
    Hint,
}

/// The longest `git.dev/state` the operator reads: its own never comes near; a longer one is
/// not the operator's.
const ANNOTATION_LIMIT: usize = 16 * 1024;

/// The most history a state keeps (the largest `historyLimit`).
const HISTORY_LIMIT: usize = 100;

impl State {
    /// The state of an object, and how far to trust it: its own annotation first; else what
    /// `.status` still says; else the adoption annotation `git.dev/deployment-id` a user set.
    pub fn read(obj: &GitDeployment, keys: &impl Verify) -> (State, Trust) {
        let (state, signature) = State::claimed(obj);
        let trust = match signature {
            Some(sig) if keys.verifies(&sig, &signed_parts(obj, &state).parts()) => Trust::Signed,
            _ => Trust::Hint,
        };
        (state, trust)
    }

    /// The deployments `obj` names, read as [`State::read`] reads them but not verified.
    pub fn named_by(obj: &GitDeployment) -> Vec<String> {
        State::claimed(obj).0.ids()
    }

    /// The state `obj` claims, from the first source [`State::read`] names, and the signature
    /// of its own annotation if that is the source.
    fn claimed(obj: &GitDeployment) -> (State, Option<String>) {
        let annotations = obj.metadata.annotations.as_ref();
        if let Some((mut state, signature)) = annotations
            .and_then(|a| a.get(ANNOTATION_STATE))
            .and_then(|s| parse(s))
        {
            state.history.truncate(HISTORY_LIMIT);
            return (state, signature);
        }
        if let Some(status) = obj.status.as_ref().filter(|s| s.deployment_id.is_some()) {
            let state = State {
                id: status.deployment_id.clone(),
                fingerprint: status.spec_fingerprint.clone(),
                history: status
                    .history
                    .iter()
                    .take(HISTORY_LIMIT)
                    .map(|h| h.deployment_id.clone())
                    .collect(),
                ..State::default()
            };
            return (state, None);
        }
        let state = State {
            id: annotations
                .and_then(|a| a.get(ANNOTATION_DEPLOYMENT_ID))
                .map(|id| id.trim().to_string())
                .filter(|id| !id.is_empty()),
            ..State::default()
        };
        (state, None)
    }

    /// What the object's own `git.dev/state` says, signed or not (for tools that only list
    /// the deployments an object names, such as `kubectl gitdev adopt --list`).
    pub fn unverified(obj: &GitDeployment) -> Option<State> {
        let annotation = obj.metadata.annotations.as_ref()?.get(ANNOTATION_STATE)?;
        parse(annotation).map(|(state, _)| state)
    }

    /// Whether the object carries this state already, signed under the current key (no write
    /// needed; a signature under an older key is renewed at the next write).
    pub fn is_recorded_on(&self, obj: &GitDeployment, keys: &impl Verify) -> bool {
        State::read(obj, keys.current()) == (self.clone(), Trust::Signed)
    }

    /// The annotation's value: this state, signed for this object under `key`.
    pub fn to_annotation(&self, obj: &GitDeployment, key: &Key) -> String {
        let parts = signed_parts(obj, self);
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("sig".into(), key.sign(&parts.parts()).into());
        }
        value.to_string()
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
        o.metadata.namespace = Some("team-a".into());
        o.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        o.status = status;
        o
    }

    fn key() -> Key {
        Key::new(b"the-operators-key")
    }

    fn of(o: &GitDeployment) -> State {
        State::read(o, &key()).0
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
        assert_eq!(of(&annotated).id.as_deref(), Some("dep_a"));

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
        let from_status = of(&obj(
            &[(ANNOTATION_DEPLOYMENT_ID, "dep_user")],
            Some(status),
        ));
        assert_eq!(from_status.id.as_deref(), Some("dep_s"));
        assert_eq!(from_status.history, vec!["dep_old".to_string()]);

        let adopted = of(&obj(&[(ANNOTATION_DEPLOYMENT_ID, " dep_user ")], None));
        assert_eq!(adopted.id.as_deref(), Some("dep_user"));
        assert_eq!(adopted.fingerprint, None);

        assert_eq!(of(&obj(&[], None)), State::default());
    }

    #[test]
    fn only_a_state_the_operator_signed_for_this_object_under_its_key_is_trusted() {
        let state = State {
            id: Some("dep_a".into()),
            history: vec!["dep_0".into()],
            ..State::default()
        };
        let web = obj(&[], None);
        let signed = state.to_annotation(&web, &key());
        let with = |annotation: &str| obj(&[(ANNOTATION_STATE, annotation)], None);

        assert_eq!(
            State::read(&with(&signed), &key()),
            (state.clone(), Trust::Signed)
        );
        assert!(state.is_recorded_on(&with(&signed), &key()));

        // Unsigned (a tenant's, or an older version's), or signed under another key: a hint.
        let unsigned = serde_json::to_string(&state).unwrap();
        assert_eq!(
            State::read(&with(&unsigned), &key()),
            (state.clone(), Trust::Hint)
        );
        assert!(!state.is_recorded_on(&with(&unsigned), &key()));
        let other_key = Key::new(b"another-clusters-key");
        assert_eq!(State::read(&with(&signed), &other_key).1, Trust::Hint);

        // Copied to another object, or edited: the signature no longer holds.
        let mut api = with(&signed);
        api.metadata.name = Some("api".into());
        assert_eq!(State::read(&api, &key()).1, Trust::Hint);
        let mut moved = with(&signed);
        moved.metadata.namespace = Some("team-b".into());
        assert_eq!(State::read(&moved, &key()).1, Trust::Hint);
        let forged = signed.replace("dep_0", "dep_other");
        assert_eq!(State::read(&with(&forged), &key()).1, Trust::Hint);
    }

    #[test]
    fn a_state_that_is_not_one_is_ignored_whole() {
        for junk in [
            "not json",
            "[]",
            r#"{"id": 7}"#,
            r#"{"intent": {"fingerprint": "f", "at": "yesterday"}}"#,
            &format!(r#"{{"id": "{}"}}"#, "x".repeat(ANNOTATION_LIMIT)),
        ] {
            let o = obj(&[(ANNOTATION_STATE, junk)], None);
            assert_eq!(
                State::read(&o, &key()),
                (State::default(), Trust::Hint),
                "{junk:.40}"
            );
        }
        let long: Vec<String> = (0..500).map(|i| format!("dep_{i}")).collect();
        let o = obj(
            &[(
                ANNOTATION_STATE,
                &serde_json::json!({ "history": long }).to_string(),
            )],
            None,
        );
        assert_eq!(of(&o).history.len(), HISTORY_LIMIT);
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
