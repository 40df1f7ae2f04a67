//! `kubectl gitdev adopt --list`: the project's remote deployments that no object of the
//! namespace tracks, each printed as a `Deployment.git.dev` manifest that adopts it
//! (annotation `git.dev/deployment-id`), ready for `kubectl apply -f -` or a GitOps repository.

use std::collections::BTreeSet;
use std::io::Write;

use clap::Args;
use kube::api::ListParams;
use serde_json::{Value, json};

use super::context::api_error;
use super::output::{Output, OutputArgs};
use super::{Context, Error};
use crate::api::{DeploymentsApi, list_newest_back_to};
use crate::controller::state::State;
use crate::resource::{
    ANNOTATION_DEPLOYMENT_ID, DEFAULT_CREDENTIALS_KEY, GitDeployment, SecretKeyRef,
};

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// List the untracked deployments as manifests (the only mode: adopting is `kubectl apply`).
    #[arg(long, required = true)]
    pub list: bool,
    /// The Secret of the namespace whose token lists the project's deployments.
    #[arg(long, default_value = crate::resource::DEFAULT_CREDENTIALS_SECRET)]
    pub credentials_secret: String,
    /// The key of the token inside that Secret.
    #[arg(long, default_value = DEFAULT_CREDENTIALS_KEY)]
    pub credentials_key: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Every deployment id `obj` tracks or claims: current, history (status and the operator's
/// state annotation) and an adoption annotation not yet acted on.
pub fn tracked_ids(obj: &GitDeployment) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    if let Some(status) = &obj.status {
        ids.extend(status.deployment_id.clone());
        ids.extend(status.history.iter().map(|h| h.deployment_id.clone()));
    }
    let annotations = obj.metadata.annotations.as_ref();
    if let Some(id) = annotations.and_then(|a| a.get(ANNOTATION_DEPLOYMENT_ID)) {
        ids.insert(id.clone());
    }
    // The state's signature does not matter here: even an unsigned state names deployments
    // the operator would refuse to hand to a second object.
    if let Some(state) = State::unverified(obj) {
        ids.extend(state.ids());
    }
    ids
}

/// A DNS-1123 object name for an adopted deployment: the branch, made safe, and the id.
pub fn object_name(branch: &str, id: &str) -> String {
    let mut base: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    base.truncate(40);
    let base = base.trim_matches('-');
    let suffix: String = id
        .trim_start_matches("dep_")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if base.is_empty() {
        format!("adopted-{suffix}")
    } else {
        format!("{base}-{suffix}")
    }
}

/// The manifest that adopts deployment `id`.
pub fn manifest(namespace: &str, id: &str, project: &str, branch: &str, commit: &str) -> Value {
    json!({
        "apiVersion": "git.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": {
            "name": object_name(branch, id),
            "namespace": namespace,
            "annotations": { ANNOTATION_DEPLOYMENT_ID: id },
        },
        "spec": { "projectId": project, "branch": branch, "commitSha": commit },
    })
}

pub async fn run(
    ctx: &Context,
    args: &AdoptArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let objects = ctx
        .objects()
        .list(&ListParams::default())
        .await
        .map_err(|e| {
            super::error::Access {
                verb: "list",
                kind: "gitdeployment",
                resource: "gitdeployments.git.dev",
                name: None,
                namespace: &ctx.namespace,
            }
            .error(e)
        })?;
    let tracked: BTreeSet<String> = objects.items.iter().flat_map(tracked_ids).collect();
    let token = ctx
        .token(&SecretKeyRef {
            name: args.credentials_secret.clone(),
            key: args.credentials_key.clone(),
        })
        .await?;
    let api = ctx.api()?;
    let remote = list_newest_back_to(&api, &token, jiff::Timestamp::MIN).await?;
    let mut manifests = Vec::new();
    for summary in remote.iter().filter(|d| !tracked.contains(&d.id)) {
        // The listing has no project or commit; one GET each gives both.
        let details = match api.get(&token, &summary.id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => continue, // deleted since the listing
            Err(e) => return Err(api_error(&summary.id, e)),
        };
        manifests.push((
            format!(
                "# {}: {}, created {}",
                details.id, details.status, details.created_at
            ),
            manifest(
                &ctx.namespace,
                &details.id,
                &details.project_id,
                &details.branch,
                &details.commit_sha,
            ),
        ));
    }
    match args.output.output {
        Output::Json => {
            let items: Vec<&Value> = manifests.iter().map(|(_, m)| m).collect();
            let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
            let text =
                serde_json::to_string_pretty(&list).map_err(|e| Error::Output(e.to_string()))?;
            writeln!(out, "{text}")?;
        }
        Output::Table | Output::Yaml => {
            if manifests.is_empty() {
                eprintln!(
                    "every remote deployment of the project is tracked by an object in namespace {:?}",
                    ctx.namespace
                );
            }
            for (comment, m) in &manifests {
                let yaml = serde_saphyr::to_string(m).map_err(|e| Error::Output(e.to_string()))?;
                write!(out, "---\n{comment}\n{yaml}")?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopted_objects_get_valid_names() {
        assert_eq!(
            object_name("feature/Login", "dep_ab12cd34ef"),
            "feature-login-ab12cd34ef"
        );
        assert_eq!(object_name("///", "dep_x1"), "adopted-x1");
    }

    #[test]
    fn an_object_tracks_its_current_history_state_and_adoption_ids() {
        let obj: GitDeployment = serde_json::from_value(json!({
            "apiVersion": "git.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {
                "git.dev/deployment-id": "dep_adopt",
                "git.dev/state": "{\"id\":\"dep_state\",\"history\":[\"dep_shist\"],\"sig\":\"x\"}"
            }},
            "spec": {"projectId": "proj_8f3k29", "branch": "main"},
            "status": {"deploymentId": "dep_cur", "history": [{"deploymentId": "dep_hist"}]}
        }))
        .unwrap();
        let ids: Vec<String> = tracked_ids(&obj).into_iter().collect();
        assert_eq!(
            ids,
            ["dep_adopt", "dep_cur", "dep_hist", "dep_shist", "dep_state"]
        );
    }
}
