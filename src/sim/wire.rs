//! The simulator's own types of the wire format (`docs/deployments-api.md`).
//!
//! Deliberately not the client's types from `crate::api`: the simulator is the oracle the client
//! is tested against, and a field misspelled in a type both sides shared would be agreed on by
//! both and noticed by no test. `tests/wire_examples.rs` checks these types, and the client's
//! separately, against the examples of the documented contract.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Rate-limit headers of every `/v1` answer, in the lowercase form `http` names them.
pub const HEADER_LIMIT: &str = "x-ratelimit-limit";
pub const HEADER_REMAINING: &str = "x-ratelimit-remaining";
pub const HEADER_RESET: &str = "x-ratelimit-reset";
pub const HEADER_RETRY_AFTER: &str = "retry-after";

/// Where a deployment is in its lifecycle:
/// `queued → building → deploying → success | failed`, or `cancelled` from the first three.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    Queued,
    Building,
    Deploying,
    Success,
    Failed,
    Cancelled,
}

impl DeploymentStatus {
    pub const ALL: [DeploymentStatus; 6] = [
        Self::Queued,
        Self::Building,
        Self::Deploying,
        Self::Success,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The name on the wire, also the `status` query value of a listing.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Building => "building",
            Self::Deploying => "deploying",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Only a deployment still in progress can be cancelled; the others answer 409.
    pub fn is_cancellable(self) -> bool {
        matches!(self, Self::Queued | Self::Building | Self::Deploying)
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire name is not one of the six statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownStatus;

impl FromStr for DeploymentStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(UnknownStatus)
    }
}

/// Body of `POST /deployments`. The simulator reads it field by field (so that a 400 names the
/// field) and builds this from what it read; `Deserialize` is for checking the documented example.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    pub project_id: String,
    pub branch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// `201` answer of `POST /deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateResponse {
    pub id: String,
    /// Always `queued`.
    pub status: DeploymentStatus,
    pub project_id: String,
    pub branch: String,
    pub commit_sha: String,
    pub created_at: Timestamp,
    /// `https://<id>.git.dev`.
    pub url: String,
}

/// One row of a listing: the short form of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListItem {
    pub id: String,
    pub status: DeploymentStatus,
    pub branch: String,
    pub created_at: Timestamp,
}

/// Where a page of a listing sits: `total` rows match, this page starts at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// `200` answer of `GET /deployments`, newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    pub data: Vec<ListItem>,
    pub meta: ListMeta,
}

/// `200` answer of `GET /deployments/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResponse {
    pub id: String,
    pub status: DeploymentStatus,
    pub project_id: String,
    pub branch: String,
    pub commit_sha: String,
    /// Like `"14.2s"`; `null` (present, not absent) until terminal.
    pub build_duration: Option<String>,
    pub deploy_url: String,
    pub logs_url: String,
    pub created_at: Timestamp,
    /// `null` (present, not absent) until terminal.
    pub completed_at: Option<Timestamp>,
    /// Only a cancelled deployment has the two `cancelled_*` fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Timestamp>,
}

/// `200` answer of `POST /deployments/{id}/cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelResponse {
    pub id: String,
    /// Always `cancelled`.
    pub status: DeploymentStatus,
    pub cancelled_by: String,
    pub cancelled_at: Timestamp,
}

/// The body of every non-2xx answer: `{"error": {"code", "message", "details"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// snake_case, for programs: `not_found`, `rate_limited`, …
    pub code: String,
    /// For people.
    pub message: String,
    /// Depends on the code; always present, possibly empty.
    #[serde(default)]
    pub details: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_from_their_wire_names_and_nothing_else() {
        for st in DeploymentStatus::ALL {
            assert_eq!(st.as_str().parse(), Ok(st));
            assert_eq!(
                serde_json::to_value(st).ok(),
                Some(Value::String(st.as_str().to_owned()))
            );
        }
        assert_eq!("done".parse::<DeploymentStatus>(), Err(UnknownStatus));
        assert_eq!("Queued".parse::<DeploymentStatus>(), Err(UnknownStatus));
    }

    #[test]
    fn only_statuses_in_progress_are_cancellable() {
        let cancellable: Vec<_> = DeploymentStatus::ALL
            .into_iter()
            .filter(|s| s.is_cancellable())
            .collect();
        assert_eq!(
            cancellable,
            [
                DeploymentStatus::Queued,
                DeploymentStatus::Building,
                DeploymentStatus::Deploying
            ]
        );
    }

    #[test]
    fn details_of_a_running_deployment_show_nulls_and_no_cancel_fields() {
        let created_at: Timestamp = "2025-03-14T10:32:00Z".parse().unwrap();
        let d = GetResponse {
            id: "dep_a".into(),
            status: DeploymentStatus::Building,
            project_id: "proj_a".into(),
            branch: "main".into(),
            commit_sha: "a1b2c3d".into(),
            build_duration: None,
            deploy_url: "https://dep_a.git.dev".into(),
            logs_url: "http://h/v1/deployments/dep_a/logs".into(),
            created_at,
            completed_at: None,
            cancelled_by: None,
            cancelled_at: None,
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["build_duration"], Value::Null);
        assert_eq!(v["completed_at"], Value::Null);
        assert_eq!(v["created_at"], "2025-03-14T10:32:00Z");
        assert!(v.get("cancelled_by").is_none() && v.get("cancelled_at").is_none());
    }
}
