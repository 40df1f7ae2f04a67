//! The six endpoints of the public API, once the request passed auth, scopes and faults.

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use jiff::Timestamp;
use serde_json::json;

use super::parse::{parse_create, parse_list_query, read_body};
use super::respond::{
    TEXT, cancel_error, deployment_not_found, details, error_response, json_response, no_content,
};
use super::{App, lock};
use crate::api::Endpoint;
use crate::sim::config::{TokenConfig, is_valid_commit};
use crate::sim::store::NewDeployment;

impl App {
    /// Serves `endpoint` on deployment `id` (empty for create and list) for `token`.
    pub(super) async fn endpoint(
        &self,
        req: Request<Body>,
        endpoint: Endpoint,
        id: String,
        token: &TokenConfig,
    ) -> Response<Body> {
        let project = token.project.as_str();
        match endpoint {
            Endpoint::Create => self.create(req, token).await,
            Endpoint::List => match parse_list_query(req.uri().query()) {
                Ok(p) => {
                    let list = lock(&self.store).list(
                        project,
                        p.status,
                        p.limit,
                        p.offset,
                        Instant::now(),
                    );
                    json_response(StatusCode::OK, &list)
                }
                Err(resp) => resp,
            },
            Endpoint::Get => {
                let base = self.base_url(req.headers());
                let found = lock(&self.store)
                    .get(&id, Some(project))
                    .map(|d| d.details(Instant::now(), &base));
                match found {
                    Some(d) => json_response(StatusCode::OK, &d),
                    None => deployment_not_found(&id),
                }
            }
            Endpoint::Cancel => {
                let result = lock(&self.store).cancel(
                    &id,
                    Some(project),
                    &token.user,
                    Instant::now(),
                    Timestamp::now(),
                );
                match result {
                    Ok(c) => json_response(StatusCode::OK, &c),
                    Err(e) => cancel_error(&id, e),
                }
            }
            Endpoint::Delete => {
                if lock(&self.store).delete(&id, Some(project)) {
                    no_content()
                } else {
                    deployment_not_found(&id)
                }
            }
            Endpoint::Logs => {
                let logs = lock(&self.store)
                    .get(&id, Some(project))
                    .map(|d| d.logs(Instant::now()));
                match logs {
                    Some(text) => {
                        let mut resp = Response::new(Body::from(text));
                        resp.headers_mut().insert(header::CONTENT_TYPE, TEXT);
                        resp
                    }
                    None => deployment_not_found(&id),
                }
            }
        }
    }

    async fn create(&self, req: Request<Body>, token: &TokenConfig) -> Response<Body> {
        let bytes = match read_body(req, self.config.max_body_bytes).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let body = match parse_create(&bytes) {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let project = match self.config.projects.get(&body.project_id) {
            Some(p) if body.project_id == token.project => p,
            _ => {
                return error_response(
                    StatusCode::NOT_FOUND,
                    "project_not_found",
                    format!("Project '{}' not found", body.project_id),
                    details(json!({ "project_id": body.project_id })),
                );
            }
        };
        let Some(head) = project.branches.get(&body.branch) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "invalid_branch",
                format!("Branch '{}' does not exist in repository", body.branch),
                details(json!({ "project_id": body.project_id, "branch": body.branch })),
            );
        };
        let commit_sha = match body.commit_sha {
            None => head.clone(),
            Some(c) if is_valid_commit(&c) => c,
            Some(c) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_commit",
                    format!("Commit '{c}' is not a commit SHA (7 to 40 lowercase hex characters)"),
                    details(json!({
                        "project_id": body.project_id,
                        "branch": body.branch,
                        "commit_sha": c,
                    })),
                );
            }
        };
        let created = {
            let mut store = lock(&self.store);
            store
                .create(
                    NewDeployment {
                        project_id: body.project_id,
                        branch: body.branch,
                        commit_sha,
                        env_vars: body.env_vars.unwrap_or_default(),
                        created_by: token.user.clone(),
                        phases: self.config.phases,
                    },
                    Instant::now(),
                    Timestamp::now(),
                )
                .created()
        };
        let mut resp = json_response(StatusCode::CREATED, &created);
        if let Ok(v) = HeaderValue::from_str(&format!("/v1/deployments/{}", created.id)) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    }
}
