//! `kubectl gitdev history NAME`: the object's deployments, newest first.
//!
//! The list comes from the object's status (current + `status.history`), which anyone who may
//! read the object can see; when the user may also read the token Secret, one GET per
//! deployment adds what the status does not keep for history entries (URL, exact status now).

use std::io::Write;

use clap::Args;
use jiff::Timestamp;
use serde::Serialize;

use super::output::{OutputArgs, age, cell, structured, table};
use super::{Context, Error};
use crate::api::DeploymentsApi;
use crate::resource::GitDeployment;

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The gitdeployment.
    pub name: String,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// One deployment of the object, as printed.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub deployment_id: String,
    pub current: bool,
    pub status: Option<String>,
    pub commit_sha: Option<String>,
    pub created_at: Option<Timestamp>,
    pub url: Option<String>,
}

/// The rows the object's status knows, newest first (current first among equal times).
pub fn rows_from_status(obj: &GitDeployment) -> Vec<Row> {
    let Some(status) = &obj.status else {
        return Vec::new();
    };
    let mut rows: Vec<Row> = Vec::new();
    if let Some(id) = &status.deployment_id {
        rows.push(Row {
            deployment_id: id.clone(),
            current: true,
            status: status.status.clone(),
            commit_sha: status.commit_sha.clone(),
            created_at: status.created_at.as_ref().map(|t| t.0),
            url: status.url.clone(),
        });
    }
    for entry in &status.history {
        if rows.iter().any(|r| r.deployment_id == entry.deployment_id) {
            continue;
        }
        rows.push(Row {
            deployment_id: entry.deployment_id.clone(),
            current: false,
            status: entry.status.clone(),
            commit_sha: entry.commit_sha.clone(),
            created_at: entry.created_at.as_ref().map(|t| t.0),
            url: None,
        });
    }
    // Stable sort: rows without a time keep their place after the timed ones.
    rows.sort_by(|a, b| match (a.created_at, b.created_at) {
        (Some(x), Some(y)) => y.cmp(&x),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    rows
}

pub async fn run(
    ctx: &Context,
    args: &HistoryArgs,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let obj = ctx.object(&args.name).await?;
    let mut rows = rows_from_status(&obj);
    match ctx.token_of(&obj).await {
        Ok(token) => {
            let api = ctx.api()?;
            for row in &mut rows {
                match api.get(&token, &row.deployment_id).await {
                    Ok(d) => {
                        row.status = Some(d.status.as_str().to_string());
                        row.commit_sha = Some(d.commit_sha);
                        row.created_at = Some(d.created_at);
                        row.url = Some(d.deploy_url);
                    }
                    // Deleted remotely (pruned, or by hand): say so rather than fail the list.
                    Err(e) if e.is_not_found() => row.status = Some("deleted".into()),
                    Err(e) => eprintln!("warning: {}: {e}", row.deployment_id),
                }
            }
        }
        // Without the token the status still answers the question; say what is missing.
        Err(e @ (Error::Forbidden { .. } | Error::NotFound { .. } | Error::State(_))) => {
            eprintln!("warning: showing what the object's status records only: {e}");
        }
        Err(e) => return Err(e),
    }
    if structured(args.output.output, &rows, out)? {
        return Ok(());
    }
    let now = Timestamp::now();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}{}", r.deployment_id, if r.current { " *" } else { "" }),
                cell(r.status.as_deref()),
                cell(r.commit_sha.as_deref().map(|c| &c[..c.len().min(7)])),
                r.created_at
                    .map(|t| age(t, now))
                    .unwrap_or_else(|| "-".into()),
                cell(r.url.as_deref()),
            ]
        })
        .collect();
    table(
        &["DEPLOYMENT", "STATUS", "COMMIT", "AGE", "URL"],
        &cells,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_lists_the_current_deployment_and_its_history_newest_first() {
        let obj: GitDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "git.dev/v1alpha1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"projectId": "proj_8f3k29", "branch": "main"},
            "status": {
                "deploymentId": "dep_new", "status": "building",
                "createdAt": "2026-01-03T00:00:00Z",
                "history": [
                    {"deploymentId": "dep_old", "createdAt": "2026-01-01T00:00:00Z", "status": "success"},
                    {"deploymentId": "dep_mid", "createdAt": "2026-01-02T00:00:00Z", "status": "cancelled"}
                ]
            }
        }))
        .unwrap();
        let ids: Vec<String> = rows_from_status(&obj)
            .into_iter()
            .map(|r| r.deployment_id)
            .collect();
        assert_eq!(ids, ["dep_new", "dep_mid", "dep_old"]);
    }
}
