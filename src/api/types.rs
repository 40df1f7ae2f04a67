//! Wire types of the git.dev Deployments API (contract: `docs/deployments-api.md`).
//!
//! Shared by the client and the simulator so that both sides agree on every field name.
//! Unknown JSON fields are ignored on purpose: the API may add fields without breaking us.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Lifecycle of a remote deployment: `queued → building → deploying → success | failed`,
/// and `queued`, `building`, `deploying` can go to `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

    /// `success`, `failed` and `cancelled` never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Cancelled)
    }

    /// Only in-progress deployments can be cancelled; the API answers 409 otherwise.
    pub fn is_cancellable(self) -> bool {
        !self.is_terminal()
    }
}

impl fmt::Display for DeploymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeploymentStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            format!("unknown status '{s}': expected one of queued, building, deploying, success, failed, cancelled")
        })
    }
}

/// Body of `POST /deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateDeploymentRequest {
    pub project_id: String,
    pub branch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// `201` answer of `POST /deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedDeployment {
    pub id: String,
    pub status: DeploymentStatus,
    pub project_id: String,
    pub branch: String,
    pub commit_sha: String,
    pub created_at: Timestamp,
    pub url: String,
}

/// One row of `GET /deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub id: String,
    pub status: DeploymentStatus,
    pub branch: String,
    pub created_at: Timestamp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMeta {
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// `200` answer of `GET /deployments`: newest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentList {
    pub data: Vec<DeploymentSummary>,
    pub meta: ListMeta,
}

/// Query of `GET /deployments`; `None` leaves the server's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeploymentStatus>,
}

/// `200` answer of `GET /deployments/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDetails {
    pub id: String,
    pub status: DeploymentStatus,
    pub project_id: String,
    pub branch: String,
    pub commit_sha: String,
    /// Like `"14.2s"`; `null` until the deployment finished.
    pub build_duration: Option<String>,
    pub deploy_url: String,
    pub logs_url: String,
    pub created_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Timestamp>,
}

/// `200` answer of `POST /deployments/{id}/cancel`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelledDeployment {
    pub id: String,
    pub status: DeploymentStatus,
    pub cancelled_by: String,
    pub cancelled_at: Timestamp,
}

/// Every non-2xx body: `{"error": {"code", "message", "details"}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// Rate-limit headers carried by every response.
pub const HEADER_LIMIT: &str = "x-ratelimit-limit";
pub const HEADER_REMAINING: &str = "x-ratelimit-remaining";
pub const HEADER_RESET: &str = "x-ratelimit-reset";
pub const HEADER_RETRY_AFTER: &str = "retry-after";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_with_unknown_fields_and_nulls_deserialize() {
        let json = r#"{"id":"dep_9x2m4p","status":"success","project_id":"proj_8f3k29","branch":"main",
            "commit_sha":"a1b2c3d4e5f6","build_duration":"14.2s","deploy_url":"https://dep_9x2m4p.git.dev",
            "logs_url":"https://api.git.dev/v1/deployments/dep_9x2m4p/logs","created_at":"2025-03-14T10:32:00Z",
            "completed_at":"2025-03-14T10:32:14Z","rollback":{"available":true}}"#;
        let d: DeploymentDetails = serde_json::from_str(json).unwrap();
        assert_eq!(d.status, DeploymentStatus::Success);
        assert_eq!(d.build_duration.as_deref(), Some("14.2s"));
        assert!(d.cancelled_at.is_none());
    }

    #[test]
    fn create_request_omits_absent_optional_fields() {
        let req = CreateDeploymentRequest {
            project_id: "proj_8f3k29".into(),
            branch: "main".into(),
            commit_sha: None,
            env_vars: None,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"project_id":"proj_8f3k29","branch":"main"}"#
        );
    }

    #[test]
    fn error_body_without_details_reads_as_empty_details() {
        let e: ErrorEnvelope =
            serde_json::from_str(r#"{"error":{"code":"not_found","message":"gone"}}"#).unwrap();
        assert!(e.error.details.is_empty());
    }

    #[test]
    fn status_parses_from_its_wire_name_and_rejects_others() {
        for st in DeploymentStatus::ALL {
            assert_eq!(st.as_str().parse::<DeploymentStatus>().unwrap(), st);
        }
        assert!("done".parse::<DeploymentStatus>().is_err());
    }
}
