//! The testing hooks under `/_sim/`: health, request counts, every deployment, dashboard
//! actions and fault rules. No auth, no rate limit, not counted in the stats.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::json;

use super::parse::read_body;
use super::respond::{
    cancel_error, deployment_not_found, invalid_request, json_response, method_not_allowed,
    no_content, not_found_route,
};
use super::route::{SimRoute, percent_decode};
use super::{App, lock};
use crate::sim::deployment::Deployment;
use crate::sim::faults::FaultSet;
use crate::sim::wire::GetResponse;

impl App {
    /// Serves one `/_sim/` hook.
    pub(super) async fn sim(&self, req: Request<Body>, route: SimRoute) -> Response<Body> {
        match route {
            SimRoute::NotFound => not_found_route(req.method(), req.uri().path()),
            SimRoute::MethodNotAllowed(allow) => {
                method_not_allowed(req.method(), req.uri().path(), allow)
            }
            SimRoute::Health => {
                let n = lock(&self.store).len();
                json_response(StatusCode::OK, &json!({ "status": "ok", "deployments": n }))
            }
            SimRoute::Stats => {
                let report = lock(&self.stats).report();
                json_response(StatusCode::OK, &report)
            }
            SimRoute::StatsReset => {
                lock(&self.stats).reset();
                no_content()
            }
            SimRoute::Deployments => {
                let project = req.uri().query().and_then(|q| {
                    q.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        (percent_decode(k, true) == "project_id").then(|| percent_decode(v, true))
                    })
                });
                let base = self.base_url(req.headers());
                let now = Instant::now();
                let store = lock(&self.store);
                let data: Vec<SimDeployment> = store
                    .all()
                    .filter(|d| project.as_deref().is_none_or(|p| d.project_id == p))
                    .map(|d| SimDeployment::new(d, now, &base))
                    .collect();
                let total = data.len();
                let resp = json_response(
                    StatusCode::OK,
                    &json!({ "data": data, "meta": { "total": total } }),
                );
                drop(store);
                resp
            }
            SimRoute::Deployment(id) => {
                let base = self.base_url(req.headers());
                let store = lock(&self.store);
                match store.get(&id, None) {
                    Some(d) => json_response(
                        StatusCode::OK,
                        &SimDeployment::new(d, Instant::now(), &base),
                    ),
                    None => deployment_not_found(&id),
                }
            }
            SimRoute::DeploymentCancel(id) => {
                let result = lock(&self.store).cancel(
                    &id,
                    None,
                    &self.config.dashboard_user,
                    Instant::now(),
                    Timestamp::now(),
                );
                match result {
                    Ok(c) => json_response(StatusCode::OK, &c),
                    Err(e) => cancel_error(&id, e),
                }
            }
            SimRoute::DeploymentDelete(id) => {
                if lock(&self.store).delete(&id, None) {
                    no_content()
                } else {
                    deployment_not_found(&id)
                }
            }
            SimRoute::FaultsGet => {
                let set = lock(&self.faults).clone();
                json_response(StatusCode::OK, &set)
            }
            SimRoute::FaultsDelete => {
                let mut faults = lock(&self.faults);
                *faults = FaultSet::default();
                json_response(StatusCode::OK, &*faults)
            }
            SimRoute::FaultsPut => {
                let bytes = match read_body(req, self.config.max_body_bytes).await {
                    Ok(b) => b,
                    Err(resp) => return resp,
                };
                let set: FaultSet = match serde_json::from_slice(&bytes) {
                    Ok(s) => s,
                    Err(e) => {
                        return invalid_request(
                            "body",
                            format!("Fault rules do not parse: {e}"),
                            json!({ "expected": "{\"rules\": [{\"route\": \"create\", \"error_rate\": 1.0, \"count\": 1}]}" }),
                        );
                    }
                };
                if let Err(message) = set.validate() {
                    return invalid_request("rules", message, json!({}));
                }
                *lock(&self.faults) = set.clone();
                json_response(StatusCode::OK, &set)
            }
        }
    }
}

/// A deployment as `/_sim/deployments` shows it: the public details plus what only the
/// server knows.
#[derive(Serialize)]
struct SimDeployment<'a> {
    #[serde(flatten)]
    details: GetResponse,
    env_vars: &'a BTreeMap<String, String>,
    created_by: &'a str,
    /// The wire's times have whole seconds; benchmarks time the operator against these.
    created_at_exact: Timestamp,
    /// When it reached `success` or `failed` (or was cancelled); absent while in progress.
    completed_at_exact: Option<Timestamp>,
}

impl<'a> SimDeployment<'a> {
    fn new(d: &'a Deployment, now: Instant, base: &str) -> Self {
        SimDeployment {
            details: d.details(now, base),
            env_vars: &d.env_vars,
            created_by: &d.created_by,
            created_at_exact: d.created_at,
            completed_at_exact: d.completed_at_exact(now),
        }
    }
}
