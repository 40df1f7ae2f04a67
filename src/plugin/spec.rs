//! `redeploy`, `cancel`, `resume`: the one-field spec edits a user would make by hand, as a
//! server-side apply of that field alone under the field manager `kubectl-gitdev`.
//!
//! The apply is forced so that it wins over a GitOps tool that owns the same field (the edit is
//! what the user asked for); the patch names only that field, so force takes nothing else.

use std::io::Write;

use clap::Args;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use super::{Context, Error, FIELD_MANAGER};

#[derive(Debug, Args)]
pub struct NameArg {
    /// The gitdeployment.
    pub name: String,
}

/// `spec.redeploy` becomes the current time (RFC 3339), a value never used before.
pub async fn redeploy(
    ctx: &Context,
    args: &NameArg,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    let value = jiff::Timestamp::now().to_string();
    apply_field(ctx, &args.name, "redeploy", json!(value), out).await
}

pub async fn set_cancel(
    ctx: &Context,
    args: &NameArg,
    cancel: bool,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    apply_field(ctx, &args.name, "cancel", json!(cancel), out).await
}

/// The apply body: only `spec.<field>`.
pub fn patch_body(name: &str, field: &str, value: Value) -> Value {
    json!({
        "apiVersion": "git.dev/v1alpha1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": { field: value },
    })
}

async fn apply_field(
    ctx: &Context,
    name: &str,
    field: &str,
    value: Value,
    out: &mut (dyn Write + Send),
) -> Result<(), Error> {
    // Read first: a missing object must not be created by the apply (it would lack a spec
    // anyway), and the old value is what "what changed" reports.
    let before = ctx.object(name).await?;
    let old = serde_json::to_value(&before.spec)
        .ok()
        .and_then(|spec| spec.get(field).cloned());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let after = ctx
        .objects()
        .patch(name, &params, &Patch::Apply(patch_body(name, field, value)))
        .await
        .map_err(|e| ctx.access("patch", name).error(e))?;
    let new = serde_json::to_value(&after.spec)
        .ok()
        .and_then(|spec| spec.get(field).cloned());
    // `cancel: false` is the default and is not serialized: unset reads as false.
    let (old, new) = if field == "cancel" {
        let b = |v: Option<Value>| Some(v.unwrap_or(Value::Bool(false)));
        (b(old), b(new))
    } else {
        (old, new)
    };
    let show = |v: &Option<Value>| match v {
        None => "(unset)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if old == new {
        writeln!(
            out,
            "gitdeployment/{name}: spec.{field} unchanged ({})",
            show(&new)
        )?;
    } else {
        writeln!(
            out,
            "gitdeployment/{name}: spec.{field}: {} → {}",
            show(&old),
            show(&new)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apply_names_only_the_one_field() {
        let body = patch_body("web", "cancel", json!(true));
        assert_eq!(body["spec"], json!({"cancel": true}));
        assert_eq!(body["metadata"], json!({"name": "web"}));
    }
}
