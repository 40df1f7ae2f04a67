//! `kubectl gitdev why NAME`: the conditions, the last events, the end of a failed build's log,
//! and what to do next.

use std::io::Write;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use super::error::Access;
use super::output::{OutputArgs, age, structured};
use super::{Context, Error};
use crate::api::DeploymentsApi;

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The gitdeployment.
    pub name: String,
    /// How many of the latest events to show.
    #[arg(long, default_value_t = 10)]
    pub events: usize,
    /// How many lines of the end of a failed build's log to show.
    #[arg(long, default_value_t = 10)]
    pub log_lines: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// What to do next, by condition reason: the README's troubleshooting table, in short.
pub fn next_step(reason: &str) -> &'static str {
    match reason {
        "Succeeded" => "nothing: the deployment is live.",
        "Cancelled" => "`kubectl gitdev resume NAME` to deploy again.",
        "Pending" | "Creating" | "Queued" | "Building" | "Deploying" => {
            "wait; `kubectl gitdev logs -f NAME` follows the build."
        }
        "RateLimited" => {
            "wait: calls resume when the token's rate budget allows; this is not an error."
        }
        "ApiUnavailable" => "wait: transient API errors are retried with backoff.",
        "CreationUnconfirmed" => {
            "wait: the operator is looking for the deployment a lost create made."
        }
        "CredentialsNotFound" => {
            "create the token Secret: `kubectl create secret generic gitdev-credentials --from-literal=token=…`, or set spec.credentialsSecretRef."
        }
        "CredentialsKeyMissing" => {
            "put the token under key `token` (or the key named in spec.credentialsSecretRef.key)."
        }
        "CredentialsInvalid" => "put the token itself in the Secret (not empty, no spaces).",
        "Unauthorized" => {
            "put a valid token in the Secret; the object retries when the Secret changes."
        }
        "InsufficientScope" => "use a token with deploy:write or deploy:admin.",
        "ProjectNotFound" => "check spec.projectId and the token's project.",
        "InvalidBranch" | "InvalidCommit" | "InvalidRequest" => {
            "fix the field the message names (the API rejected the deployment spec)."
        }
        "DeploymentFailed" => {
            "read the log (`kubectl gitdev logs NAME`); push a fix and change spec.commitSha, or `kubectl gitdev redeploy NAME`."
        }
        "CancelledExternally" | "RemoteDeleted" => {
            "`kubectl gitdev redeploy NAME` to deploy again."
        }
        "CreationUncertain" => {
            "delete the extra deployments, then set the annotation git.dev/deployment-id to the one to keep."
        }
        "EnvSecretNotFound" | "EnvNameInvalid" => {
            "create the envFrom Secret, or rename the key / set a prefix."
        }
        "EnvTooLarge" => "move large values out of the environment (over 64 KiB).",
        "AlreadyManaged" => {
            "remove git.dev/state from this object; another object manages that deployment."
        }
        "InternalError" => "report it with the operator's log; it is retried with backoff.",
        "CleanupBlocked" => {
            "fix the token Secret, or wait: remote deployments are orphaned after the grace period."
        }
        _ => "see `kubectl describe gitdeployment NAME` and the README's Troubleshooting.",
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Why {
    pub name: String,
    pub namespace: String,
    pub deployment_id: Option<String>,
    pub status: Option<String>,
    pub conditions: Vec<ConditionRow>,
    pub events: Vec<EventRow>,
    /// The end of the build log of a failed deployment, when the token could be read.
    pub failure_excerpt: Option<String>,
    pub next_step: String,
}

#[derive(Debug, Serialize)]
pub struct ConditionRow {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct EventRow {
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub note: String,
    pub time: Option<Timestamp>,
}

fn event_time(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The last `n` events about gitdeployment `name`, oldest first.
async fn events(ctx: &Context, name: &str, n: usize) -> Result<Vec<EventRow>, Error> {
    let api: Api<Event> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    // events.k8s.io/v1 selects on `regarding.*`; the kind filter below keeps an apps/v1
    // Deployment of the same name out.
    let params = ListParams::default().fields(&format!("regarding.name={name}"));
    let list = api.list(&params).await.map_err(|e| {
        Access {
            verb: "list",
            kind: "Event",
            resource: "events.events.k8s.io",
            name: None,
            namespace: &ctx.namespace,
        }
        .error(e)
    })?;
    let mut rows: Vec<EventRow> = list
        .items
        .iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Deployment")
                    && r.api_version
                        .as_deref()
                        .is_some_and(|v| v.starts_with("git.dev/"))
            })
        })
        .map(|e| EventRow {
            type_: e.type_.clone().unwrap_or_default(),
            reason: e.reason.clone().unwrap_or_default(),
            note: e.note.clone().unwrap_or_default(),
            time: event_time(e),
        })
        .collect();
    rows.sort_by_key(|r| r.time);
    let skip = rows.len().saturating_sub(n);
    Ok(rows.split_off(skip))
}

/// The last `n` lines of `log`.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub async fn run(ctx: &Context, args: &WhyArgs, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    let obj = ctx.object(&args.name).await?;
    let status = obj.status.clone().unwrap_or_default();
    let conditions: Vec<ConditionRow> = status
        .conditions
        .iter()
        .map(|c| ConditionRow {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    let reason = conditions
        .iter()
        .find(|c| c.status == "True")
        .map(|c| c.reason.clone())
        .unwrap_or_else(|| "Pending".into());
    let events = match events(ctx, &args.name, args.events).await {
        Ok(rows) => rows,
        // Events help but are not the answer: a user without `list events` still gets the rest.
        Err(e) => {
            eprintln!("warning: no events: {e}");
            Vec::new()
        }
    };
    let mut failure_excerpt = None;
    if let (Some("failed"), Some(id)) = (status.status.as_deref(), &status.deployment_id) {
        match ctx.token_of(&obj).await {
            Ok(token) => match ctx.api()?.logs(&token, id).await {
                Ok(log) => failure_excerpt = Some(tail(&log, args.log_lines)),
                Err(e) => eprintln!("warning: no build log of {id}: {e}"),
            },
            Err(e) => eprintln!("warning: no build log: {e}"),
        }
    }
    let why = Why {
        name: args.name.clone(),
        namespace: ctx.namespace.clone(),
        deployment_id: status.deployment_id.clone(),
        status: status.status.clone(),
        conditions,
        events,
        failure_excerpt,
        next_step: next_step(&reason).replace("NAME", &args.name),
    };
    if structured(args.output.output, &why, out)? {
        return Ok(());
    }
    writeln!(
        out,
        "{}/{}: deployment {} is {}",
        why.namespace,
        why.name,
        why.deployment_id.as_deref().unwrap_or("(none)"),
        why.status.as_deref().unwrap_or("(unknown)")
    )?;
    writeln!(out, "\nConditions:")?;
    if why.conditions.is_empty() {
        writeln!(
            out,
            "  (none yet: the operator has not looked at this object)"
        )?;
    }
    // The operator gives all three conditions the same reason and message: say it once.
    let shared = why
        .conditions
        .windows(2)
        .all(|w| w[0].reason == w[1].reason && w[0].message == w[1].message);
    for c in &why.conditions {
        if shared {
            writeln!(out, "  {:<12} {:<6} {}", c.type_, c.status, c.reason)?;
        } else {
            writeln!(
                out,
                "  {:<12} {:<6} {}: {}",
                c.type_, c.status, c.reason, c.message
            )?;
        }
    }
    if let (true, Some(c)) = (shared, why.conditions.first()) {
        writeln!(out, "  Message: {}", c.message)?;
    }
    writeln!(out, "\nEvents (latest last):")?;
    if why.events.is_empty() {
        writeln!(out, "  (none)")?;
    }
    let now = Timestamp::now();
    for e in &why.events {
        let when = e.time.map(|t| age(t, now)).unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "  {when:>5} ago  {:<8} {:<20} {}",
            e.type_, e.reason, e.note
        )?;
    }
    if let Some(excerpt) = &why.failure_excerpt {
        writeln!(out, "\nEnd of the build log:")?;
        for line in excerpt.lines() {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out, "\nNext: {}", why.next_step)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stalled_reason_of_the_resource_contract_has_its_own_next_step() {
        let fallback = next_step("SomethingNew");
        for reason in [
            "DeploymentFailed",
            "CancelledExternally",
            "RemoteDeleted",
            "CredentialsNotFound",
            "CredentialsKeyMissing",
            "CredentialsInvalid",
            "Unauthorized",
            "InsufficientScope",
            "ProjectNotFound",
            "InvalidBranch",
            "InvalidCommit",
            "InvalidRequest",
            "Conflict",
            "ApiError",
            "CreationUncertain",
            "EnvSecretNotFound",
            "EnvNameInvalid",
            "EnvTooLarge",
            "AlreadyManaged",
            "InternalError",
            "CleanupBlocked",
        ] {
            // Conflict and ApiError quote the API; the general advice is the right one there.
            if reason == "Conflict" || reason == "ApiError" {
                continue;
            }
            assert_ne!(next_step(reason), fallback, "{reason}");
        }
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
