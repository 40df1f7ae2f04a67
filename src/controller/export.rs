//! `spec.exportTo`: the last successful deployment, published in a ConfigMap of the object's
//! namespace for consumers that read ConfigMaps rather than `.status`.
//!
//! The ConfigMap only ever describes `status.lastSuccessful`, so it changes when a deployment
//! succeeds and never while one builds: whatever reads it always finds a live URL. The operator
//! owns it (an owner reference to the object, so that the garbage collector removes it with the
//! object) and writes it by server-side apply, only when its content differs. An existing
//! ConfigMap that this object does not own is never written or deleted: the object goes Stalled
//! and says which field to change.
//!
//! The pure part (what the ConfigMap holds, whether it must be looked at) comes first; the IO
//! (`Round::export`, `Round::unexport`) follows.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, Resource};
use serde_json::{Value, json};

use super::Error;
use super::decision::{Health, Observed, cut, details_pending};
use super::round::{MANAGER, Round};
use super::status::last_successful;
use crate::api::DeploymentsApi;
use crate::resource::{Exported, GitDeployment, LastSuccessful};

/// Data key of the public URL.
pub const KEY_URL: &str = "url";
/// Data key of the remote deployment's id.
pub const KEY_DEPLOYMENT_ID: &str = "deploymentId";
/// Data key of the deployed commit.
pub const KEY_COMMIT_SHA: &str = "commitSha";
/// Data key of the completion time (RFC 3339), once the API has reported it.
pub const KEY_COMPLETED_AT: &str = "completedAt";
/// Label on every ConfigMap the operator exports to, so that people and tools can find them.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// A ConfigMap that cannot be exported to is looked at again this often: nothing watches
/// ConfigMaps, so this is how a removed obstacle is noticed.
pub const CONFLICT_RETRY: Duration = Duration::from_secs(60);

/// What the exported ConfigMap holds for the last successful deployment.
pub fn data(last: &LastSuccessful) -> BTreeMap<String, String> {
    let mut data = BTreeMap::from([
        (KEY_URL.to_string(), last.url.clone()),
        (KEY_DEPLOYMENT_ID.to_string(), last.deployment_id.clone()),
        (KEY_COMMIT_SHA.to_string(), last.commit_sha.clone()),
    ]);
    if let Some(t) = &last.completed_at {
        data.insert(KEY_COMPLETED_AT.to_string(), t.0.to_string());
    }
    data
}

/// What the export step must do this round. Pure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// A ConfigMap exported to before, that `spec.exportTo` no longer names: deleted if owned.
    pub remove: Option<String>,
    /// The ConfigMap to look at, and what it must hold.
    pub keep: Option<(String, BTreeMap<String, String>)>,
}

/// The plan for an object exporting to `target`, whose last success is `last`, after
/// `recorded` was exported. While a new deployment is polled (`polling`) and the record
/// already names the same ConfigMap and success, nothing is read: the ConfigMap cannot need a
/// change before that deployment ends. A settled object looks again on each reconcile (every
/// few minutes), which brings back a ConfigMap deleted or edited behind the operator's back.
/// A success just seen in a listing (`details_pending`) is exported once its completion time
/// is read, a moment later, so that it is written once rather than twice.
pub fn plan(
    target: Option<&str>,
    last: Option<&LastSuccessful>,
    recorded: Option<&Exported>,
    polling: bool,
    details_pending: bool,
) -> Plan {
    let remove = recorded
        .filter(|r| Some(r.config_map.as_str()) != target)
        .map(|r| r.config_map.clone());
    let keep = match (target, last) {
        (Some(_), Some(last)) if details_pending && last.completed_at.is_none() => None,
        (Some(name), Some(last)) => {
            let current = recorded
                .is_some_and(|r| r.config_map == name && r.deployment_id == last.deployment_id);
            (!(current && polling)).then(|| (name.to_string(), data(last)))
        }
        // Nothing has succeeded yet: no ConfigMap, rather than one without a live URL.
        _ => None,
    };
    Plan { remove, keep }
}

/// Whether `cm` is `owner`'s: it carries an owner reference with the owner's uid.
pub fn owned_by(cm: &ConfigMap, owner_uid: &str) -> bool {
    !owner_uid.is_empty()
        && cm
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner_uid)
}

/// Whether `cm` (owned already) holds exactly `data` and the operator's label.
pub fn holds(cm: &ConfigMap, data: &BTreeMap<String, String>) -> bool {
    cm.data.as_ref() == Some(data)
        && cm
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_MANAGED_BY))
            .is_some_and(|v| v == MANAGER)
}

/// The server-side apply body of the ConfigMap `name` of `owner` holding `data`; with the
/// `resource_version` of the ConfigMap read, as a precondition against a concurrent change.
pub fn manifest(
    owner: &GitDeployment,
    name: &str,
    data: &BTreeMap<String, String>,
    resource_version: Option<&str>,
) -> Value {
    let mut metadata = json!({
        "name": name,
        "labels": { LABEL_MANAGED_BY: MANAGER },
        // No blockOwnerDeletion: it would take update rights on gitdeployments/finalizers,
        // and deleting the object never needs to wait for its ConfigMap.
        "ownerReferences": [{
            "apiVersion": GitDeployment::api_version(&()),
            "kind": GitDeployment::kind(&()),
            "name": owner.metadata.name,
            "uid": owner.metadata.uid,
            "controller": true,
        }],
    });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": data,
    })
}

/// The Stalled health of an object whose `spec.exportTo` names a ConfigMap it does not own.
pub fn conflict(name: &str, namespace: &str) -> Health {
    Health::stalled(
        "ExportConflict",
        format!(
            "spec.exportTo: ConfigMap {namespace}/{name} exists and is not owned by this gitdeployment, so the operator leaves it alone; set spec.exportTo to another name, or delete that ConfigMap to let the operator create its own"
        ),
    )
}

/// The Stalled health of an object whose ConfigMap the operator may not read or write.
fn forbidden(name: &str, namespace: &str, message: &str) -> Health {
    Health::stalled(
        "ExportForbidden",
        format!(
            "spec.exportTo: the operator may not write ConfigMap {namespace}/{name} ({message}); grant its ServiceAccount get, create, patch and delete on configmaps in this namespace (the Helm chart does), or remove spec.exportTo"
        ),
    )
}

/// A Kubernetes answer that waiting will not change.
fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl<A: DeploymentsApi> Round<'_, A> {
    fn config_maps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    fn export_failed(&self, config_map: &str, source: kube::Error) -> Error {
        Error::Export {
            namespace: self.namespace.clone(),
            config_map: config_map.to_string(),
            source,
        }
    }

    /// Brings the exported ConfigMap in line with `spec.exportTo` and the last success as of
    /// `observed` (which `status.lastSuccessful` becomes when the round finishes). `Some`
    /// health is a problem only a human can solve, to report instead of the deployment's own;
    /// `Err` a transient failure, retried with backoff. What was exported is recorded on the
    /// round, for the status it writes.
    pub async fn export(
        &mut self,
        observed: &Observed,
        polling: bool,
    ) -> Result<Option<Health>, Error> {
        let status = self.obj.status.clone().unwrap_or_default();
        let last = last_successful(&status, observed);
        let plan = plan(
            self.obj.spec.export_to.as_deref(),
            last.as_ref(),
            status.exported.as_ref(),
            polling,
            matches!(observed, Observed::Found(d) if details_pending(d)),
        );
        if let Some(old) = &plan.remove {
            self.delete_owned(old).await?;
            self.exported = Some(None);
        }
        let (Some((name, data)), Some(last)) = (plan.keep, last) else {
            return Ok(None);
        };
        let uid = self.obj.metadata.uid.clone().unwrap_or_default();
        let api = self.config_maps();
        let existing = match api.get_opt(&name).await {
            Ok(existing) => existing,
            Err(e) if is_forbidden(&e) => {
                return Ok(Some(forbidden(&name, &self.namespace, &e.to_string())));
            }
            Err(e) => return Err(self.export_failed(&name, e)),
        };
        let write = match &existing {
            Some(cm) if !owned_by(cm, &uid) => {
                return Ok(Some(conflict(&name, &self.namespace)));
            }
            Some(cm) if holds(cm, &data) => None,
            // Ours and stale (a new success, or an edit behind the operator's back): fields
            // another manager took are taken back, unless the ConfigMap changed since read.
            Some(cm) => Some((cm.metadata.resource_version.as_deref(), true)),
            // Not forced: should someone create it between the read and this write, their
            // values win and the next reconcile finds it is not ours.
            None => Some((None, false)),
        };
        if let Some((resource_version, force)) = write {
            let body = manifest(&self.obj, &name, &data, resource_version);
            let mut params = PatchParams::apply(MANAGER);
            params.force = force;
            match api.patch(&name, &params, &Patch::Apply(&body)).await {
                Ok(_) => {}
                Err(e) if is_forbidden(&e) => {
                    return Ok(Some(forbidden(&name, &self.namespace, &e.to_string())));
                }
                Err(e) => return Err(self.export_failed(&name, e)),
            }
            self.ctx.metrics.kubernetes_write("export");
            tracing::info!(object = %self.name(), namespace = %self.namespace, config_map = %name, deployment = %last.deployment_id, "exported the last successful deployment");
            // An action per deployment: the recorder would fold it into the series of an
            // earlier export, which keeps that one's note.
            let action = format!("Export {}", cut(&last.deployment_id, 100));
            let note = format!(
                "ConfigMap {name} now holds deployment {} ({})",
                last.deployment_id, last.url
            );
            self.event_of(EventType::Normal, "Exported", &action, &note)
                .await;
        }
        self.exported = Some(Some(Exported {
            config_map: name,
            deployment_id: last.deployment_id,
        }));
        Ok(None)
    }

    /// Deletes `name` if this object owns it; a ConfigMap of anyone else, or none, is left be.
    /// The uid read is a precondition of the delete: a ConfigMap made anew in between stays.
    async fn delete_owned(&self, name: &str) -> Result<(), Error> {
        let uid = self.obj.metadata.uid.clone().unwrap_or_default();
        let api = self.config_maps();
        let cm = match api.get_opt(name).await {
            Ok(Some(cm)) if owned_by(&cm, &uid) => cm,
            Ok(_) => return Ok(()),
            Err(e) => return Err(self.export_failed(name, e)),
        };
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: cm.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(self.export_failed(name, e)),
        }
        self.ctx.metrics.kubernetes_write("export");
        tracing::info!(object = %self.name(), namespace = %self.namespace, config_map = %name, "deleted a ConfigMap this object no longer exports to");
        Ok(())
    }

    /// On deletion of the object: deletes the ConfigMaps it exported to (the one recorded, and
    /// the one `spec.exportTo` names, if this object owns them). The garbage collector would
    /// too, through the owner reference; doing it here does not depend on one running. A
    /// failure does not hold deletion back: it is logged and told in a Warning event.
    pub async fn unexport(&self) {
        let recorded = self
            .obj
            .status
            .as_ref()
            .and_then(|s| s.exported.as_ref())
            .map(|e| e.config_map.as_str());
        let mut names: Vec<&str> = recorded
            .into_iter()
            .chain(self.obj.spec.export_to.as_deref())
            .collect();
        names.dedup();
        for name in names {
            if let Err(e) = self.delete_owned(name).await {
                tracing::warn!(object = %self.name(), namespace = %self.namespace, error = %e, "could not delete an exported ConfigMap; its owner reference lets the garbage collector remove it");
                self.event(
                    EventType::Warning,
                    "ExportCleanupFailed",
                    &format!(
                        "could not delete ConfigMap {name} ({e}); the garbage collector removes it through its owner reference"
                    ),
                )
                .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

    fn success(id: &str, completed: Option<&str>) -> LastSuccessful {
        LastSuccessful {
            deployment_id: id.to_string(),
            commit_sha: "0123456789abcdef0123456789abcdef01234567".to_string(),
            url: format!("https://{id}.git.dev"),
            completed_at: completed.map(|t| Time(t.parse::<Timestamp>().unwrap())),
        }
    }

    fn record(config_map: &str, id: &str) -> Exported {
        Exported {
            config_map: config_map.to_string(),
            deployment_id: id.to_string(),
        }
    }

    #[test]
    fn the_config_map_holds_the_url_id_commit_and_completion_time_of_the_last_success() {
        let d = data(&success("dep_a", Some("2026-01-02T03:04:05Z")));
        assert_eq!(d[KEY_URL], "https://dep_a.git.dev");
        assert_eq!(d[KEY_DEPLOYMENT_ID], "dep_a");
        assert_eq!(
            d[KEY_COMMIT_SHA],
            "0123456789abcdef0123456789abcdef01234567"
        );
        assert_eq!(d[KEY_COMPLETED_AT], "2026-01-02T03:04:05Z");
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn a_completion_time_not_yet_reported_is_left_out_rather_than_made_up() {
        let d = data(&success("dep_a", None));
        assert!(!d.contains_key(KEY_COMPLETED_AT));
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn nothing_is_exported_before_a_first_success() {
        let p = plan(Some("out"), None, None, false, false);
        assert_eq!(
            p,
            Plan {
                remove: None,
                keep: None
            }
        );
    }

    #[test]
    fn a_first_success_is_exported_to_the_named_config_map() {
        let last = success("dep_a", None);
        let p = plan(Some("out"), Some(&last), None, true, false);
        assert_eq!(p.keep, Some(("out".to_string(), data(&last))));
        assert_eq!(p.remove, None);
    }

    #[test]
    fn while_a_new_deployment_builds_an_export_of_the_same_success_is_not_even_read() {
        let last = success("dep_a", None);
        let p = plan(
            Some("out"),
            Some(&last),
            Some(&record("out", "dep_a")),
            true,
            false,
        );
        assert_eq!(p.keep, None);
        assert_eq!(p.remove, None);
    }

    #[test]
    fn a_settled_object_checks_its_export_so_that_a_lost_config_map_comes_back() {
        let last = success("dep_a", None);
        let p = plan(
            Some("out"),
            Some(&last),
            Some(&record("out", "dep_a")),
            false,
            false,
        );
        assert_eq!(p.keep.map(|(name, _)| name), Some("out".to_string()));
    }

    #[test]
    fn a_new_success_is_exported_even_while_polling() {
        let last = success("dep_b", None);
        let p = plan(
            Some("out"),
            Some(&last),
            Some(&record("out", "dep_a")),
            true,
            false,
        );
        assert_eq!(p.keep, Some(("out".to_string(), data(&last))));
    }

    #[test]
    fn a_success_seen_in_a_listing_is_exported_once_its_completion_time_is_read() {
        let listed = success("dep_b", None);
        let p = plan(
            Some("out"),
            Some(&listed),
            Some(&record("out", "dep_a")),
            true,
            true,
        );
        assert_eq!(p.keep, None);
        let read = success("dep_b", Some("2026-01-02T03:04:05Z"));
        let p = plan(
            Some("out"),
            Some(&read),
            Some(&record("out", "dep_a")),
            false,
            false,
        );
        assert_eq!(p.keep, Some(("out".to_string(), data(&read))));
    }

    #[test]
    fn changing_export_to_moves_the_output_and_removes_the_old_config_map() {
        let last = success("dep_a", None);
        let p = plan(
            Some("new"),
            Some(&last),
            Some(&record("old", "dep_a")),
            true,
            false,
        );
        assert_eq!(p.remove.as_deref(), Some("old"));
        assert_eq!(p.keep.map(|(name, _)| name), Some("new".to_string()));
    }

    #[test]
    fn removing_export_to_removes_the_config_map() {
        let last = success("dep_a", None);
        let p = plan(
            None,
            Some(&last),
            Some(&record("old", "dep_a")),
            false,
            false,
        );
        assert_eq!(p.remove.as_deref(), Some("old"));
        assert_eq!(p.keep, None);
    }

    fn config_map(owner_uid: Option<&str>, data: Option<BTreeMap<String, String>>) -> ConfigMap {
        let mut cm = ConfigMap {
            data,
            ..ConfigMap::default()
        };
        cm.metadata.labels = Some(BTreeMap::from([(
            LABEL_MANAGED_BY.to_string(),
            MANAGER.to_string(),
        )]));
        cm.metadata.owner_references = owner_uid.map(|uid| {
            vec![OwnerReference {
                api_version: "git.dev/v1alpha1".into(),
                kind: "Deployment".into(),
                name: "web".into(),
                uid: uid.into(),
                controller: Some(true),
                block_owner_deletion: None,
            }]
        });
        cm
    }

    #[test]
    fn only_a_config_map_with_this_objects_uid_as_owner_is_its_own() {
        assert!(owned_by(&config_map(Some("uid-1"), None), "uid-1"));
        assert!(!owned_by(&config_map(Some("uid-2"), None), "uid-1"));
        assert!(!owned_by(&config_map(None, None), "uid-1"));
        // An object not yet given a uid owns nothing, not even owner references without one.
        assert!(!owned_by(&config_map(Some(""), None), ""));
    }

    #[test]
    fn a_config_map_needs_a_write_only_when_its_data_or_label_differ() {
        let want = data(&success("dep_a", None));
        let mut cm = config_map(Some("uid-1"), Some(want.clone()));
        assert!(holds(&cm, &want));
        assert!(!holds(&cm, &data(&success("dep_b", None))));
        cm.metadata.labels = None;
        assert!(!holds(&cm, &want));
        let mut extra = want.clone();
        extra.insert("added".into(), "by hand".into());
        assert!(!holds(&config_map(Some("uid-1"), Some(extra)), &want));
    }

    #[test]
    fn the_applied_config_map_is_owned_by_the_object_without_blocking_its_deletion() {
        let mut owner = GitDeployment::new(
            "web",
            serde_json::from_value(json!({"projectId": "proj_8f3k29", "branch": "main"})).unwrap(),
        );
        owner.metadata.uid = Some("uid-1".into());
        let want = data(&success("dep_a", None));
        let body = manifest(&owner, "out", &want, Some("42"));
        assert_eq!(body["metadata"]["name"], "out");
        assert_eq!(body["metadata"]["resourceVersion"], "42");
        let r = &body["metadata"]["ownerReferences"][0];
        assert_eq!(r["apiVersion"], "git.dev/v1alpha1");
        assert_eq!(r["kind"], "Deployment");
        assert_eq!(r["uid"], "uid-1");
        assert_eq!(r["controller"], true);
        assert!(r.get("blockOwnerDeletion").is_none());
        assert_eq!(body["data"]["deploymentId"], "dep_a");
        let created = manifest(&owner, "out", &want, None);
        assert!(created["metadata"].get("resourceVersion").is_none());
    }

    #[test]
    fn the_conflict_message_names_the_field_and_the_fix() {
        let h = conflict("out", "apps");
        assert_eq!(h.reason(), "ExportConflict");
        assert!(matches!(h, Health::Stalled { .. }));
        for part in ["spec.exportTo", "apps/out", "not owned", "another name"] {
            assert!(h.message().contains(part), "{}", h.message());
        }
    }
}
