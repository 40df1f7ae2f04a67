//! The `Deployment.git.dev` custom resource: what users write (`spec`) and what the operator
//! reports back (`status`). Types only, no IO. The `///` docs below become `kubectl explain`.
//!
//! The user-facing contract is `docs/gitdeployment-resource.md`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Finalizer that makes deletion wait for the remote cleanup the `deletionPolicy` asks for.
pub const FINALIZER: &str = "git.dev/cleanup";
/// Adoption and status-loss safety: the id of the remote deployment this object owns.
pub const ANNOTATION_DEPLOYMENT_ID: &str = "git.dev/deployment-id";
/// `git.dev/paused: "true"` holds back every write to the Deployments API for the object
/// (create, cancel, pruning of history) while observation goes on; deletion is never held
/// back. Only the exact value `"true"` pauses, as with Crossplane's `crossplane.io/paused`.
pub const ANNOTATION_PAUSED: &str = "git.dev/paused";
/// Default name of the Secret holding the API token, in the object's namespace.
pub const DEFAULT_CREDENTIALS_SECRET: &str = "gitdev-credentials";
/// Default key of the API token inside that Secret.
pub const DEFAULT_CREDENTIALS_KEY: &str = "token";
/// Default number of earlier remote deployments kept before the oldest are deleted.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

/// Deploy one branch or commit of a git.dev project, and mirror the remote deployment's status.
///
/// One remote deployment is made per distinct deployment spec (project, branch, commit,
/// environment values, redeploy): re-applying the same manifest creates nothing new.
// Every `printcolumn(...)` says `type_ = "string"`: that is data, not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "git.dev",
    version = "v1alpha1",
    kind = "Deployment",
    plural = "gitdeployments",
    singular = "gitdeployment",
    shortname = "gdeploy",
    category = "gitdev",
    namespaced,
    root = "GitDeployment",
    status = "GitDeploymentStatus",
    derive = "PartialEq",
    doc = "A deployment of a git.dev project's branch or commit, made and tracked through the git.dev Deployments API.",
    printcolumn(name = "Project", type_ = "string", json_path = ".spec.projectId"),
    printcolumn(name = "Branch", type_ = "string", json_path = ".spec.branch"),
    printcolumn(
        name = "Commit",
        type_ = "string",
        json_path = ".status.shortCommit",
        description = "First 7 characters of the deployed commit"
    ),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        priority = 1
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Last-Good",
        type_ = "string",
        json_path = ".status.lastSuccessful.deploymentId",
        description = "The last deployment seen succeeding (status.lastSuccessful)",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GitDeploymentSpec {
    /// The git.dev project to deploy, like `proj_8f3k29` (or the project's UUID).
    /// Immutable: to deploy another project, create another object.
    #[schemars(
        length(min = 1, max = 64),
        regex(
            pattern = r"^(proj_[A-Za-z0-9]+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
        ),
        extend("x-kubernetes-validations" = [{
            "rule": "self == oldSelf",
            "message": "projectId is immutable: create a new object to deploy another project"
        }])
    )]
    pub project_id: String,

    /// Branch to deploy, like `main` or `feature/login`. Must be a valid git ref name
    /// (no spaces, `..`, `~`, `^`, `:`, `?`, `*`, `[`, `\`, no leading or trailing `/` or `.`).
    #[schemars(
        length(min = 1, max = 255),
        regex(pattern = r"^[^\x00-\x20\x7f~^:?*\[\\]+$"),
        extend("x-kubernetes-validations" = [
            {"rule": "!self.contains('..')", "message": "branch is not a valid git ref name: it must not contain '..'"},
            {"rule": "!self.contains('//')", "message": "branch is not a valid git ref name: it must not contain '//'"},
            {"rule": "!self.contains('@{') && self != '@'", "message": "branch is not a valid git ref name: it must not be '@' or contain '@{'"},
            {"rule": "!self.startsWith('/') && !self.endsWith('/') && !self.endsWith('.')", "message": "branch is not a valid git ref name: it must not start or end with '/' or end with '.'"},
            {"rule": "!self.matches('(^|/)[.]') && !self.matches('[.]lock(/|$)')", "message": "branch is not a valid git ref name: no component may start with '.' or end with '.lock'"}
        ])
    )]
    pub branch: String,

    /// Commit to deploy: 7 to 40 lowercase hex characters. When absent, the branch's HEAD at
    /// the time the remote deployment is created; `status.commitSha` shows which commit that was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{7,40}$"))]
    pub commit_sha: Option<String>,

    /// Runtime environment variables of the deployment. Names match `[A-Za-z_][A-Za-z0-9_]*`.
    /// A value here wins over the same name from `envFrom`. Put secrets in `envFrom`, not here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 256,
        "x-kubernetes-validations" = [{
            "rule": "self.all(k, k.matches('^[A-Za-z_][A-Za-z0-9_]*$'))",
            "message": "envVars names must match [A-Za-z_][A-Za-z0-9_]* (letters, digits and '_', not starting with a digit)"
        }]
    ))]
    pub env_vars: BTreeMap<String, String>,

    /// Environment variables read from Secrets in the object's namespace, so that secret values
    /// never sit in a GitOps repository. Every key of each Secret becomes a variable (with the
    /// optional `prefix`); later entries win over earlier ones, and `envVars` wins over all.
    /// Changing a Secret's values creates a new remote deployment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub env_from: Vec<EnvFromSecret>,

    /// The Secret in the object's namespace that holds the git.dev API token.
    /// Defaults to name `gitdev-credentials`, key `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretKeyRef>,

    /// What deleting this object does remotely: `Delete` (default) cancels what is in progress
    /// and deletes every remote deployment this object made; `Orphan` touches nothing remote.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// `true` cancels the current deployment while it is queued, building or deploying, and
    /// holds off new ones until set back to `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,

    /// Any opaque string; changing it creates a new deployment of the same spec, like
    /// `kubectl rollout restart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub redeploy: Option<String>,

    /// How many earlier remote deployments of this object to keep before deleting the oldest.
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub history_limit: Option<i32>,

    /// Name of a ConfigMap in the object's namespace that the operator keeps with the URL,
    /// deployment id, commit and completion time of the last successful deployment (keys `url`,
    /// `deploymentId`, `commitSha`, `completedAt`), for workloads and tools that read a
    /// ConfigMap rather than `.status`. Written only once a deployment succeeds, so it never
    /// holds a URL that is not live; owned by this object and deleted with it. Changing it
    /// moves the output; an existing ConfigMap that this object does not own is never touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub export_to: Option<String>,
}

/// All keys of one Secret as environment variables.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvFromSecret {
    /// The Secret, in the object's namespace.
    pub secret_ref: SecretRef,
    /// Prepended to every key of the Secret to form the variable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"))]
    pub prefix: Option<String>,
}

/// A Secret in the object's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the object's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret. Default `gitdev-credentials`.
    #[serde(default = "default_credentials_name")]
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret. Default `token`.
    #[serde(default = "default_credentials_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_credentials_name() -> String {
    DEFAULT_CREDENTIALS_SECRET.to_string()
}
fn default_credentials_key() -> String {
    DEFAULT_CREDENTIALS_KEY.to_string()
}

impl Default for SecretKeyRef {
    fn default() -> Self {
        Self {
            name: default_credentials_name(),
            key: default_credentials_key(),
        }
    }
}

/// What deleting the object does to the remote deployments it made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Cancel what is in progress and delete every remote deployment this object made.
    #[default]
    Delete,
    /// Leave every remote deployment as it is.
    Orphan,
}

/// Observed state, mirrored from the Deployments API.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitDeploymentStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled`, following Kubernetes conventions (kstatus).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Id of the current remote deployment, like `dep_9x2m4p`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,

    /// The remote deployment's status: queued, building, deploying, success, failed or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,

    /// Public URL of the deployment, like `https://dep_9x2m4p.git.dev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// The deploy URL the API reports for the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_url: Option<String>,

    /// Where the build log is served by the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs_url: Option<String>,

    /// Why the current remote deployment failed, from its build log: read once, when the
    /// operator first sees it `failed`, and never again for the same deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<DeploymentFailure>,

    /// The commit actually deployed (the branch HEAD when `spec.commitSha` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,

    /// First 7 characters of `commitSha`, for the Commit column of `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub short_commit: Option<String>,

    /// How long the build took, as the API reports it (like `14.2s`), once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_duration: Option<String>,

    /// When the remote deployment was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,

    /// When the remote deployment finished (success or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,

    /// When the remote deployment was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<Time>,

    /// Who cancelled the remote deployment, as the API reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_by: Option<String>,

    /// Fingerprint of the deployment spec the current remote deployment was made from
    /// (a keyed hash: it reveals nothing of secret values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_fingerprint: Option<String>,

    /// Earlier remote deployments of this object, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,

    /// The last remote deployment of this object seen succeeding: kept when later deployments
    /// fail, are cancelled or superseded, and when `historyLimit` prunes it from `history`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful: Option<LastSuccessful>,

    /// The ConfigMap of `spec.exportTo` as the operator last wrote or checked it: which one,
    /// and which successful deployment it describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<Exported>,
}

/// Where the last successful deployment was exported to (`spec.exportTo`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exported {
    /// Name of the ConfigMap, in the object's namespace.
    pub config_map: String,
    /// The deployment whose details it holds (`lastSuccessful.deploymentId`).
    pub deployment_id: String,
}

/// The last remote deployment of this object that succeeded, as it was when seen succeeding.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastSuccessful {
    /// Id of the remote deployment, like `dep_9x2m4p`.
    pub deployment_id: String,
    /// The commit it deployed.
    pub commit_sha: String,
    /// Its public URL, like `https://dep_9x2m4p.git.dev`.
    pub url: String,
    /// When it finished, once the API has reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
}

/// The cause of a failed deployment, as its build log tells it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentFailure {
    /// The failed remote deployment whose build log was read.
    pub deployment_id: String,
    /// The last meaningful lines of its build log, up to the failing step (at most 1,500
    /// characters). Values the operator took from `envFrom` Secrets show as `***`.
    pub excerpt: String,
}

/// An earlier remote deployment of this object.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Id of the remote deployment.
    pub deployment_id: String,
    /// Commit it deployed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_sha: Option<String>,
    /// Its last known status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,
}

impl GitDeployment {
    /// Whether `git.dev/paused: "true"` holds back the object's writes to the Deployments API.
    pub fn paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_PAUSED))
            .is_some_and(|v| v == "true")
    }
}

impl GitDeploymentSpec {
    /// The token Secret, with `default_name` (key `token`) when the spec names none: the
    /// operator's `--default-credentials-secret`.
    pub fn credentials_or(&self, default_name: &str) -> SecretKeyRef {
        self.credentials_secret_ref
            .clone()
            .unwrap_or_else(|| SecretKeyRef {
                name: default_name.to_string(),
                key: default_credentials_key(),
            })
    }

    pub fn history_limit(&self) -> usize {
        self.history_limit.unwrap_or(DEFAULT_HISTORY_LIMIT).max(0) as usize
    }
}

/// The CRD, with one addition to what the derive makes: a new object gets
/// `status: {observedGeneration: 0}` from the API server's defaulting, so that kstatus and
/// Flux read an object the operator never looked at as InProgress, not Current (an object
/// without status or conditions counts as Current for them), even while the operator is down.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSON;
    use kube::CustomResourceExt;
    let mut crd = GitDeployment::crd();
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            status.default = Some(JSON(serde_json::json!({})));
            if let Some(g) = status
                .properties
                .as_mut()
                .and_then(|p| p.get_mut("observedGeneration"))
            {
                g.default = Some(JSON(serde_json::json!(0)));
            }
        }
    }
    crd
}

/// The CRD as YAML, exactly as `crdgen` prints it and `crds/` holds it.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd()).expect("the CRD always serializes");
    format!(
        "# Generated by `cargo run --bin crdgen` from src/resource.rs. Do not edit by hand.\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_manifest_takes_every_default() {
        let spec: GitDeploymentSpec = serde_json::from_value(
            serde_json::json!({"projectId": "proj_8f3k29", "branch": "main"}),
        )
        .unwrap();
        assert_eq!(spec.deletion_policy, DeletionPolicy::Delete);
        let credentials = spec.credentials_or(DEFAULT_CREDENTIALS_SECRET);
        assert_eq!(credentials, SecretKeyRef::default());
        assert_eq!(credentials.name, "gitdev-credentials");
        assert_eq!(credentials.key, "token");
        assert_eq!(spec.history_limit(), 10);
        assert!(!spec.cancel);
    }

    #[test]
    fn a_credentials_ref_with_only_a_name_keeps_the_default_key() {
        let r: SecretKeyRef = serde_json::from_value(serde_json::json!({"name": "mine"})).unwrap();
        assert_eq!(r.key, "token");
    }

    #[test]
    fn the_crd_names_match_the_contract() {
        use kube::CustomResourceExt;
        let crd = GitDeployment::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("gitdeployments.git.dev"));
        let names = &crd.spec.names;
        assert_eq!(names.kind, "Deployment");
        assert_eq!(names.singular.as_deref(), Some("gitdeployment"));
        assert_eq!(
            names.short_names.as_deref(),
            Some(&["gdeploy".to_string()][..])
        );
        assert_eq!(
            names.categories.as_deref(),
            Some(&["gitdev".to_string()][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, "v1alpha1");
        assert!(v.subresources.as_ref().unwrap().status.is_some());
    }

    #[test]
    fn the_crd_carries_the_immutable_project_rule_and_list_map_conditions() {
        let yaml = crd_yaml();
        assert!(yaml.contains("self == oldSelf"), "{yaml}");
        assert!(yaml.contains("x-kubernetes-list-map-keys"), "{yaml}");
        assert!(yaml.contains("^[0-9a-f]{7,40}$"), "{yaml}");
    }

    /// Every field of the schema must explain itself in `kubectl explain`.
    #[test]
    fn every_schema_property_has_a_description() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(GitDeployment::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk(schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );

        fn walk(s: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
            if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
                for (name, sub) in props {
                    let p = format!("{path}.{name}");
                    // apiVersion/kind/metadata are Kubernetes' own; conditions' items are metav1.Condition.
                    let ours = !matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                        && !path.contains(".conditions");
                    if ours && sub.get("description").is_none() {
                        missing.push(p.clone());
                    }
                    walk(sub, &p, missing);
                }
            }
            if let Some(items) = s.get("items") {
                walk(items, &format!("{path}[]"), missing);
            }
        }
    }
}
