//! Scenario tests of `reconcile()`: an in-memory Deployments API (`FakeApi`) with scripted
//! answers, and a mocked Kubernetes API server (a `tower_test` mock behind a real
//! `kube::Client`) that verifies every request the reconciler makes, in order, and answers
//! like an API server would (merge patches, JSON patches, server-side apply of status).
//!
//! Both sides write to one timeline, so that a test can assert the order of Kubernetes writes
//! and Deployments API calls (e.g. "intent recorded before the create is sent").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};
use tower_test::mock::Handle;

use super::reconcile::reconcile;
use super::state::{self, ANNOTATION_STATE, DeploymentInputs, State};
use super::{Context, Error, error_policy, secrets};
use crate::api::{
    ApiError, ApiToken, CancelledDeployment, CreateDeploymentRequest, CreatedDeployment,
    DeploymentDetails, DeploymentList, DeploymentStatus as Remote, DeploymentSummary,
    DeploymentsApi, Endpoint, ListMeta, ListQuery,
};
use crate::metrics::Metrics;
use crate::resource::{
    ANNOTATION_DEPLOYMENT_ID, DeletionPolicy, FINALIZER, GitDeployment, GitDeploymentSpec,
    GitDeploymentStatus,
};

const NS: &str = "ns";
const NAME: &str = "web";
const PROJECT: &str = "proj_8f3k29";
const TOKEN: &str = "sk_test_write";
const CREDENTIALS: &str = "gitdev-credentials";
const FINGERPRINT_KEY: &[u8] = b"test-fingerprint-key";
/// The commit the fake API deploys when the request names none (the branch HEAD).
const HEAD: &str = "0123456789abcdef0123456789abcdef01234567";
/// No test may hang: every reconcile must finish within this.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Kubernetes requests and Deployments API calls, in the order they happened.
type Timeline = Arc<Mutex<Vec<String>>>;

fn note(timeline: &Timeline, entry: String) {
    timeline.lock().unwrap().push(entry);
}

// ===== FakeApi: the Deployments API in memory =====

/// A scripted answer for the next call of one endpoint.
enum Script {
    /// Answer this error; nothing happens remotely.
    Fail(ApiError),
    /// Create: make the deployment, then lose the answer (`ApiError::OutcomeUnknown`).
    LoseAnswer,
}

#[derive(Default)]
struct FakeState {
    /// Oldest first.
    deployments: Vec<DeploymentDetails>,
    next_id: u64,
    scripts: HashMap<Endpoint, VecDeque<Script>>,
    /// Calls not yet taken by `take_calls`, as `"endpoint [id]"`.
    calls: Vec<String>,
    tokens: Vec<String>,
    creates: Vec<CreateDeploymentRequest>,
}

/// The Deployments API in memory, behaving like the real one unless scripted otherwise:
/// create → queued `dep_N`; get → the stored details or 404; cancel only from in progress
/// (else 409 `not_cancellable`); delete → 204, then 404. Timestamps have whole seconds, as
/// the API sends them.
struct FakeApi {
    inner: Mutex<FakeState>,
    timeline: Timeline,
}

fn api_error(endpoint: Endpoint, status: u16, code: &str) -> ApiError {
    ApiError::Status {
        endpoint,
        status,
        code: code.into(),
        message: format!("fake API says {code}"),
        details: Default::default(),
        retry_after: None,
    }
}

fn wire_now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap()
}

impl FakeApi {
    fn new(timeline: Timeline) -> Self {
        FakeApi {
            inner: Mutex::default(),
            timeline,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.lock().unwrap()
    }

    /// The next call of `endpoint` answers `script` (queued after earlier scripts).
    fn script(&self, endpoint: Endpoint, script: Script) {
        self.state()
            .scripts
            .entry(endpoint)
            .or_default()
            .push_back(script);
    }

    fn fail_next(&self, endpoint: Endpoint, status: u16, code: &str) {
        self.script(endpoint, Script::Fail(api_error(endpoint, status, code)));
    }

    /// A deployment made by someone else (or earlier), on `branch` at `commit`.
    fn add(&self, branch: &str, commit: Option<&str>, status: Remote) -> String {
        let request = CreateDeploymentRequest {
            project_id: PROJECT.into(),
            branch: branch.into(),
            commit_sha: commit.map(str::to_string),
            env_vars: None,
        };
        let id = Self::make(&mut self.state(), &request).id;
        self.set_status(&id, status);
        id
    }

    /// Simulates the deployment's progress.
    fn set_status(&self, id: &str, status: Remote) {
        let mut st = self.state();
        let d = st
            .deployments
            .iter_mut()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("fake API has no deployment {id}"));
        d.status = status;
        match status {
            Remote::Success | Remote::Failed => {
                d.completed_at = Some(wire_now());
                d.build_duration = Some("14.2s".into());
            }
            Remote::Cancelled => {
                d.cancelled_at = Some(wire_now());
                d.cancelled_by = Some("user_someone".into());
            }
            _ => {}
        }
    }

    /// Removes a deployment behind the operator's back.
    fn remove(&self, id: &str) {
        self.state().deployments.retain(|d| d.id != id);
    }

    fn deployment(&self, id: &str) -> Option<DeploymentDetails> {
        self.state()
            .deployments
            .iter()
            .find(|d| d.id == id)
            .cloned()
    }

    fn ids(&self) -> Vec<String> {
        self.state()
            .deployments
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    /// Calls since the last `take_calls`, as `"create"`, `"get dep_1"`, ….
    fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.state().calls)
    }

    fn tokens(&self) -> Vec<String> {
        self.state().tokens.clone()
    }

    fn creates(&self) -> Vec<CreateDeploymentRequest> {
        self.state().creates.clone()
    }

    /// Records the call and takes the script for it, if any.
    fn enter(&self, endpoint: Endpoint, id: Option<&str>, token: &ApiToken) -> Option<Script> {
        let call = match id {
            Some(id) => format!("{} {id}", endpoint.as_str()),
            None => endpoint.as_str().to_string(),
        };
        note(&self.timeline, format!("api {call}"));
        let mut st = self.state();
        st.calls.push(call);
        st.tokens.push(token.expose().to_string());
        st.scripts.get_mut(&endpoint).and_then(VecDeque::pop_front)
    }

    fn make(st: &mut FakeState, request: &CreateDeploymentRequest) -> CreatedDeployment {
        st.next_id += 1;
        let id = format!("dep_{}", st.next_id);
        let details = DeploymentDetails {
            id: id.clone(),
            status: Remote::Queued,
            project_id: request.project_id.clone(),
            branch: request.branch.clone(),
            commit_sha: request.commit_sha.clone().unwrap_or_else(|| HEAD.into()),
            build_duration: None,
            deploy_url: format!("https://{id}.git.dev"),
            logs_url: format!("https://api.git.dev/v1/deployments/{id}/logs"),
            created_at: wire_now(),
            completed_at: None,
            cancelled_by: None,
            cancelled_at: None,
        };
        st.deployments.push(details.clone());
        CreatedDeployment {
            id,
            status: details.status,
            project_id: details.project_id,
            branch: details.branch,
            commit_sha: details.commit_sha,
            created_at: details.created_at,
            url: details.deploy_url,
        }
    }

    fn not_found(endpoint: Endpoint) -> ApiError {
        api_error(endpoint, 404, "not_found")
    }
}

impl DeploymentsApi for FakeApi {
    async fn create(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
    ) -> Result<CreatedDeployment, ApiError> {
        let script = self.enter(Endpoint::Create, None, token);
        let mut st = self.state();
        st.creates.push(request.clone());
        match script {
            Some(Script::Fail(e)) => Err(e),
            Some(Script::LoseAnswer) => {
                Self::make(&mut st, request);
                Err(ApiError::OutcomeUnknown {
                    message: "connection reset after the request was sent".into(),
                })
            }
            None => Ok(Self::make(&mut st, request)),
        }
    }

    async fn list(&self, token: &ApiToken, query: &ListQuery) -> Result<DeploymentList, ApiError> {
        if let Some(Script::Fail(e)) = self.enter(Endpoint::List, None, token) {
            return Err(e);
        }
        let st = self.state();
        let all: Vec<_> = st
            .deployments
            .iter()
            .rev()
            .filter(|d| query.status.is_none_or(|s| s == d.status))
            .collect();
        let limit = query.limit.unwrap_or(20);
        let offset = query.offset.unwrap_or(0);
        let data = all
            .iter()
            .skip(offset as usize)
            .take(limit as usize)
            .map(|d| DeploymentSummary {
                id: d.id.clone(),
                status: d.status,
                branch: d.branch.clone(),
                created_at: d.created_at,
            })
            .collect();
        Ok(DeploymentList {
            data,
            meta: ListMeta {
                total: all.len() as u64,
                limit,
                offset,
            },
        })
    }

    async fn get(&self, token: &ApiToken, id: &str) -> Result<DeploymentDetails, ApiError> {
        if let Some(Script::Fail(e)) = self.enter(Endpoint::Get, Some(id), token) {
            return Err(e);
        }
        self.deployment(id)
            .ok_or_else(|| Self::not_found(Endpoint::Get))
    }

    async fn cancel(&self, token: &ApiToken, id: &str) -> Result<CancelledDeployment, ApiError> {
        if let Some(Script::Fail(e)) = self.enter(Endpoint::Cancel, Some(id), token) {
            return Err(e);
        }
        let mut st = self.state();
        let d = st
            .deployments
            .iter_mut()
            .find(|d| d.id == id)
            .ok_or_else(|| Self::not_found(Endpoint::Cancel))?;
        if !d.status.is_cancellable() {
            return Err(api_error(Endpoint::Cancel, 409, "not_cancellable"));
        }
        let at = wire_now();
        d.status = Remote::Cancelled;
        d.cancelled_at = Some(at);
        d.cancelled_by = Some("user_operator".into());
        Ok(CancelledDeployment {
            id: id.into(),
            status: Remote::Cancelled,
            cancelled_by: "user_operator".into(),
            cancelled_at: at,
        })
    }

    async fn delete(&self, token: &ApiToken, id: &str) -> Result<(), ApiError> {
        if let Some(Script::Fail(e)) = self.enter(Endpoint::Delete, Some(id), token) {
            return Err(e);
        }
        let mut st = self.state();
        let before = st.deployments.len();
        st.deployments.retain(|d| d.id != id);
        if st.deployments.len() == before {
            return Err(Self::not_found(Endpoint::Delete));
        }
        Ok(())
    }

    async fn logs(&self, token: &ApiToken, id: &str) -> Result<String, ApiError> {
        if let Some(Script::Fail(e)) = self.enter(Endpoint::Logs, Some(id), token) {
            return Err(e);
        }
        self.deployment(id)
            .map(|d| format!("logs of {}", d.id))
            .ok_or_else(|| Self::not_found(Endpoint::Logs))
    }
}

// ===== The mocked Kubernetes API server =====

fn object_path() -> String {
    format!("/apis/git.dev/v1alpha1/namespaces/{NS}/gitdeployments/{NAME}")
}

fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

/// One request the reconciler sent to Kubernetes.
struct Seen {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

impl Seen {
    async fn read(request: Request<Body>) -> Seen {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "request body of {} {} is not JSON ({e}): {}",
                    parts.method,
                    parts.uri,
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (p.to_string(), String::new()),
            })
            .collect();
        Seen {
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            body,
        }
    }

    fn raw(&self) -> String {
        let query: Vec<_> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} {}?{} [{}]",
            self.method,
            self.path,
            query.join("&"),
            self.content_type
        )
    }

    fn json_patch_ops(&self) -> Vec<(String, String)> {
        self.body
            .as_array()
            .into_iter()
            .flatten()
            .map(|op| {
                let s = |k: &str| op[k].as_str().unwrap_or("").to_string();
                (s("op"), s("path"))
            })
            .collect()
    }

    /// What the request is, in the words the tests use: `"k8s write state"`, ….
    fn what(&self) -> String {
        let obj = object_path();
        let status = format!("{obj}/status");
        let secrets_prefix = secret_path("");
        let events = events_path();
        let m = &self.method;
        let ct = self.content_type.as_str();
        if *m == Method::GET && self.path.starts_with(&secrets_prefix) {
            return format!("k8s get secret {}", &self.path[secrets_prefix.len()..]);
        }
        if *m == Method::PATCH && self.path == obj && ct == "application/merge-patch+json" {
            return "k8s write state".into();
        }
        if *m == Method::PATCH && self.path == obj && ct == "application/json-patch+json" {
            let ops = self.json_patch_ops();
            if ops.iter().any(|(op, _)| op == "remove") {
                return "k8s remove finalizer".into();
            }
            if ops.iter().any(|(op, _)| op == "add") {
                return "k8s add finalizer".into();
            }
        }
        if *m == Method::PATCH
            && self.path == status
            && ct == "application/apply-patch+yaml"
            && self.query.get("fieldManager").map(String::as_str) == Some("gitdev-operator")
            && self.query.get("force").map(String::as_str) == Some("true")
        {
            return "k8s write status".into();
        }
        let s = |k: &str| self.body[k].as_str().unwrap_or("?").to_string();
        if *m == Method::POST && self.path == events {
            return format!("k8s event {} {}", s("type"), s("reason"));
        }
        // The recorder patches the event it already posted, as a series, when it repeats.
        if *m == Method::PATCH && self.path.starts_with(&format!("{events}/")) {
            return format!("k8s event {} {} repeated", s("type"), s("reason"));
        }
        format!("k8s {}", self.raw())
    }
}

/// What the mocked API server stores: the one object and the Secrets of its namespace.
struct Cluster {
    object: Value,
    secrets: BTreeMap<String, Value>,
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().unwrap();
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The part of RFC 6902 the finalizer helper uses: test, add, remove.
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    for op in ops.as_array().ok_or("a JSON patch is an array")? {
        let path = op["path"].as_str().ok_or("op without path")?;
        let (parent, last) = path.rsplit_once('/').ok_or("path without /")?;
        match op["op"].as_str() {
            Some("test") => {
                let actual = doc.pointer(path).cloned().unwrap_or(Value::Null);
                if actual != op["value"] {
                    return Err(format!("test {path}: is {actual}, not {}", op["value"]));
                }
            }
            Some("add") => match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.insert(last.to_string(), op["value"].clone());
                }
                Some(Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
                Some(Value::Array(a)) => {
                    let i: usize = last.parse().map_err(|_| format!("bad index {path}"))?;
                    a.insert(i, op["value"].clone());
                }
                _ => return Err(format!("add {path}: no parent")),
            },
            Some("remove") => match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(last).ok_or(format!("remove {path}: absent"))?;
                }
                Some(Value::Array(a)) => {
                    let i: usize = last.parse().map_err(|_| format!("bad index {path}"))?;
                    if i >= a.len() {
                        return Err(format!("remove {path}: absent"));
                    }
                    a.remove(i);
                }
                _ => return Err(format!("remove {path}: no parent")),
            },
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

impl Cluster {
    fn resource_version(&self) -> String {
        self.object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn bump(&mut self) {
        let rv: u64 = self.resource_version().parse().unwrap_or(0);
        self.object["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
    }

    /// Answers like an API server would.
    fn serve(&mut self, req: &Seen) -> Response<Body> {
        let what = req.what();
        if let Some(name) = what.strip_prefix("k8s get secret ") {
            return match self.secrets.get(name) {
                Some(s) => json_response(200, s),
                None => failure(404, "NotFound", &format!("secrets \"{name}\" not found")),
            };
        }
        match what.as_str() {
            "k8s write state" => {
                let want = &req.body["metadata"]["resourceVersion"];
                if !want.is_null() && want.as_str() != Some(self.resource_version().as_str()) {
                    return failure(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                merge_patch(&mut self.object, &req.body);
                self.bump();
                json_response(200, &self.object)
            }
            "k8s add finalizer" | "k8s remove finalizer" => {
                let mut object = self.object.clone();
                if let Err(e) = json_patch(&mut object, &req.body) {
                    return failure(422, "Invalid", &e);
                }
                self.object = object;
                self.bump();
                json_response(200, &self.object)
            }
            "k8s write status" => {
                self.object["status"] = req.body["status"].clone();
                self.bump();
                json_response(200, &self.object)
            }
            w if w.starts_with("k8s event ") => json_response(
                if req.method == Method::POST { 201 } else { 200 },
                &req.body,
            ),
            _ => failure(404, "NotFound", &format!("the mock has no {}", req.raw())),
        }
    }
}

type Check = Box<dyn FnOnce(&Seen, &Cluster)>;

fn check_event(req: &Seen, _: &Cluster) {
    assert_eq!(req.body["regarding"]["name"], NAME, "{}", req.body);
    assert_eq!(req.body["regarding"]["kind"], "Deployment", "{}", req.body);
    assert_eq!(req.body["regarding"]["namespace"], NS, "{}", req.body);
    assert_eq!(
        req.body["reportingController"], "gitdev-operator",
        "{}",
        req.body
    );
}

/// One request the reconciler must make next: what it is, checks of its body, and optionally
/// a failure to answer instead of serving it.
struct Expect {
    what: String,
    check: Option<Check>,
    fail: Option<u16>,
}

impl Expect {
    fn new(what: impl Into<String>) -> Self {
        Expect {
            what: what.into(),
            check: None,
            fail: None,
        }
    }

    fn with(mut self, check: impl FnOnce(&Seen, &Cluster) + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    /// Answer with this HTTP status (a Kubernetes `Status` failure) instead of serving it.
    fn fails(mut self, code: u16) -> Self {
        self.fail = Some(code);
        self
    }

    fn get_secret(name: &str) -> Self {
        Expect::new(format!("k8s get secret {name}"))
    }

    fn add_finalizer() -> Self {
        Expect::new("k8s add finalizer").with(|req, _| {
            assert_eq!(
                req.body,
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
                ]),
                "the finalizer is added with a JSON patch guarded by a test"
            );
        })
    }

    fn remove_finalizer() -> Self {
        Expect::new("k8s remove finalizer").with(|req, cluster| {
            let i = cluster.object["metadata"]["finalizers"]
                .as_array()
                .and_then(|f| f.iter().position(|f| f == FINALIZER))
                .expect("the object has the finalizer");
            let path = format!("/metadata/finalizers/{i}");
            assert_eq!(
                req.body,
                json!([
                    {"op": "test", "path": path, "value": FINALIZER},
                    {"op": "remove", "path": path},
                ]),
                "the finalizer is removed with a JSON patch guarded by a test"
            );
        })
    }

    /// A merge patch of `git.dev/state` carrying the current resourceVersion.
    fn state(check: impl FnOnce(&State) + 'static) -> Self {
        Expect::new("k8s write state").with(|req, cluster| {
            assert_eq!(
                req.body["metadata"]["resourceVersion"].as_str(),
                Some(cluster.resource_version().as_str()),
                "the state is written with the object's current resourceVersion as a precondition: {}",
                req.body
            );
            let keys: Vec<_> = req.body.as_object().unwrap().keys().cloned().collect();
            assert_eq!(keys, ["metadata"], "a state write touches only metadata: {}", req.body);
            let annotation = req.body["metadata"]["annotations"][ANNOTATION_STATE]
                .as_str()
                .unwrap_or_else(|| panic!("no {ANNOTATION_STATE} in {}", req.body));
            let state: State = serde_json::from_str(annotation)
                .unwrap_or_else(|e| panic!("{ANNOTATION_STATE} {annotation} does not parse: {e}"));
            check(&state);
        })
    }

    /// A server-side apply of the status subresource.
    fn status(check: impl FnOnce(&GitDeploymentStatus) + 'static) -> Self {
        Expect::new("k8s write status").with(|req, _| {
            assert_eq!(req.body["apiVersion"], "git.dev/v1alpha1", "{}", req.body);
            assert_eq!(req.body["kind"], "Deployment", "{}", req.body);
            let status: GitDeploymentStatus = serde_json::from_value(req.body["status"].clone())
                .unwrap_or_else(|e| panic!("status does not parse ({e}): {}", req.body));
            check(&status);
        })
    }

    /// A new event (POST to events.k8s.io/v1) about the object.
    fn event(type_: &str, reason: &str) -> Self {
        Expect::new(format!("k8s event {type_} {reason}")).with(check_event)
    }

    /// The same event again within the recorder's cache time: a PATCH of its series.
    fn repeated_event(type_: &str, reason: &str) -> Self {
        Expect::new(format!("k8s event {type_} {reason} repeated")).with(|req, cluster| {
            check_event(req, cluster);
            assert!(
                req.body["series"]["count"].as_i64() >= Some(2),
                "{}",
                req.body
            );
        })
    }

    fn event_noting(type_: &str, reason: &str, words: &[&str]) -> Self {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let event = Expect::event(type_, reason);
        let base = event.check;
        Expect {
            check: Some(Box::new(move |req: &Seen, cluster: &Cluster| {
                if let Some(base) = base {
                    base(req, cluster);
                }
                let note = req.body["note"].as_str().unwrap_or("");
                for w in &words {
                    assert!(
                        note.contains(w.as_str()),
                        "event note {note:?} does not mention {w:?}"
                    );
                }
            })),
            ..event
        }
    }
}

struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    cluster: Cluster,
    timeline: Timeline,
}

impl ApiServer {
    /// Runs `work` while answering its Kubernetes requests: with `expected`, each request must
    /// be the next expected one (else the test fails naming it); without, anything is served.
    async fn run<T>(&mut self, expected: Option<Vec<Expect>>, work: impl Future<Output = T>) -> T {
        let strict = expected.is_some();
        let mut expected: VecDeque<Expect> = expected.unwrap_or_default().into();
        let mut seen: Vec<String> = Vec::new();
        let outcome = {
            let handle = &mut self.handle;
            let cluster = &mut self.cluster;
            let timeline = &self.timeline;
            let expected = &mut expected;
            let seen = &mut seen;
            let serve = async move {
                loop {
                    let (request, send) = handle
                        .next_request()
                        .await
                        .expect("the kube client was dropped while reconciling");
                    let req = Seen::read(request).await;
                    let what = req.what();
                    note(timeline, what.clone());
                    seen.push(what.clone());
                    let n = seen.len();
                    let mut fail = None;
                    if strict {
                        let listing = |v: &[String]| {
                            v.iter().map(|s| format!("\n    {s}")).collect::<String>()
                        };
                        let Some(exp) = expected.pop_front() else {
                            panic!(
                                "unexpected Kubernetes request #{n}: {what}\n  raw: {}\n  body: {}\n  every expected request was already made; requests so far:{}",
                                req.raw(),
                                req.body,
                                listing(seen)
                            );
                        };
                        if exp.what != what {
                            let rest: Vec<String> =
                                expected.iter().map(|e| e.what.clone()).collect();
                            panic!(
                                "Kubernetes request #{n} was {what}, expected {}\n  raw: {}\n  body: {}\n  requests so far:{}\n  still expected after it:{}",
                                exp.what,
                                req.raw(),
                                req.body,
                                listing(seen),
                                listing(&rest)
                            );
                        }
                        if let Some(check) = exp.check {
                            check(&req, cluster);
                        }
                        fail = exp.fail;
                    }
                    let response = match fail {
                        Some(code) => failure(code, "Conflict", "failure injected by the test"),
                        None => cluster.serve(&req),
                    };
                    send.send_response(response);
                }
            };
            tokio::time::timeout(TIMEOUT, async {
                tokio::select! {
                    out = work => out,
                    _ = serve => unreachable!("the mock API server never stops"),
                }
            })
            .await
        };
        let rest: Vec<String> = expected.iter().map(|e| e.what.clone()).collect();
        let Ok(out) = outcome else {
            panic!(
                "reconcile did not finish within {TIMEOUT:?}; Kubernetes requests made: {seen:#?}; still expected: {rest:#?}"
            );
        };
        assert!(
            rest.is_empty(),
            "reconcile finished without making the expected Kubernetes requests {rest:#?}; it made: {seen:#?}"
        );
        out
    }
}

// ===== Harness =====

struct Harness {
    server: ApiServer,
    ctx: Arc<Context<FakeApi>>,
    timeline: Timeline,
}

impl Harness {
    /// The object, with the credentials Secret in its namespace.
    fn new(obj: GitDeployment) -> Self {
        let mut h = Self::without_secrets(obj);
        h.add_secret(CREDENTIALS, &[("token", TOKEN)]);
        h
    }

    fn without_secrets(obj: GitDeployment) -> Self {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NS);
        let timeline = Timeline::default();
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "gitdev-operator".into(),
                instance: None,
            },
        );
        let mut ctx = Context::new(
            client,
            FakeApi::new(timeline.clone()),
            recorder,
            Arc::new(Metrics::new()),
        );
        ctx.fingerprint_key = Some(FINGERPRINT_KEY.to_vec());
        // Tests change remote state between reconciles at once; every reconcile lists afresh.
        ctx.observe_max_age = Duration::ZERO;
        Harness {
            server: ApiServer {
                handle,
                cluster: Cluster {
                    object: serde_json::to_value(&obj).unwrap(),
                    secrets: BTreeMap::new(),
                },
                timeline: timeline.clone(),
            },
            ctx: Arc::new(ctx),
            timeline,
        }
    }

    fn add_secret(&mut self, name: &str, data: &[(&str, &str)]) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NS.into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.server
            .cluster
            .secrets
            .insert(name.into(), serde_json::to_value(secret).unwrap());
    }

    fn api(&self) -> &FakeApi {
        &self.ctx.api
    }

    /// The object as the API server has it now.
    fn object(&self) -> GitDeployment {
        serde_json::from_value(self.server.cluster.object.clone())
            .expect("the stored object parses")
    }

    fn state(&self) -> State {
        State::of(&self.object())
    }

    fn status(&self) -> GitDeploymentStatus {
        self.object().status.unwrap_or_default()
    }

    /// A user's change of the object (new generation when the spec changes).
    fn edit(&mut self, f: impl FnOnce(&mut GitDeployment)) {
        let mut obj = self.object();
        let before = obj.spec.clone();
        f(&mut obj);
        if obj.spec != before {
            obj.metadata.generation = Some(obj.metadata.generation.unwrap_or(0) + 1);
        }
        self.server.cluster.object = serde_json::to_value(&obj).unwrap();
        self.server.cluster.bump();
    }

    /// One reconcile of the stored object; its Kubernetes requests must be exactly `expected`.
    async fn reconcile(&mut self, expected: Vec<Expect>) -> Result<Action, Error> {
        let obj = Arc::new(self.object());
        let ctx = self.ctx.clone();
        self.server.run(Some(expected), reconcile(obj, ctx)).await
    }

    /// One reconcile, serving whatever it asks of Kubernetes.
    async fn reconcile_freely(&mut self) -> Result<Action, Error> {
        let obj = Arc::new(self.object());
        let ctx = self.ctx.clone();
        self.server.run(None, reconcile(obj, ctx)).await
    }

    fn error_policy(&self, obj: &GitDeployment, error: &Error) -> Action {
        error_policy(Arc::new(obj.clone()), error, self.ctx.clone())
    }

    fn take_timeline(&self) -> Vec<String> {
        std::mem::take(&mut self.timeline.lock().unwrap())
    }
}

// ===== Fixtures =====

fn spec(extra: Value) -> GitDeploymentSpec {
    let mut base = json!({"projectId": PROJECT, "branch": "main"});
    base.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(base).unwrap()
}

/// An object that already carries the finalizer (the usual state after its first reconcile).
fn object(spec: GitDeploymentSpec) -> GitDeployment {
    let mut o = GitDeployment::new(NAME, spec);
    o.metadata.namespace = Some(NS.into());
    o.metadata.uid = Some("4b1f2c9e-0000-4000-8000-000000000001".into());
    o.metadata.resource_version = Some("100".into());
    o.metadata.generation = Some(1);
    o.metadata.finalizers = Some(vec![FINALIZER.into()]);
    o
}

fn with_state(mut o: GitDeployment, state: &State) -> GitDeployment {
    o.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_STATE.into(), state.to_annotation());
    o
}

/// An object tracking `id`, made for its current spec.
fn tracking(spec: GitDeploymentSpec, id: &str) -> GitDeployment {
    let state = State {
        id: Some(id.into()),
        fingerprint: Some(fingerprint(&spec)),
        ..State::default()
    };
    with_state(object(spec), &state)
}

fn deleting(mut o: GitDeployment) -> GitDeployment {
    o.metadata.deletion_timestamp = Some(Time(wire_now()));
    o
}

/// The fingerprint the reconciler computes for a spec without `envFrom`.
fn fingerprint(spec: &GitDeploymentSpec) -> String {
    let env = secrets::env_from(spec, |_| None).unwrap();
    state::fingerprint(
        FINGERPRINT_KEY,
        &DeploymentInputs {
            project_id: &spec.project_id,
            branch: &spec.branch,
            commit_sha: spec.commit_sha.as_deref(),
            env: &env,
            redeploy: spec.redeploy.as_deref(),
        },
    )
}

/// (status, reason) of a condition.
fn cond(s: &GitDeploymentStatus, type_: &str) -> (String, String) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {:?}", s.conditions));
    (c.status.clone(), c.reason.clone())
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.into(), reason.into())
}

/// Asserts the kstatus triple: which condition is True, and the reason all three carry.
fn assert_health(s: &GitDeploymentStatus, true_type: &str, reason: &str) {
    for t in ["Ready", "Reconciling", "Stalled"] {
        let want = if t == true_type { "True" } else { "False" };
        assert_eq!(
            cond(s, t),
            pair(want, reason),
            "condition {t} of {:?}",
            s.conditions
        );
    }
}

/// When an `Action` requeues (`None`: only on a change). The reconciler's delays are whole
/// milliseconds (jitter included), so the delay is found exactly.
fn requeue_after(action: &Action) -> Option<Duration> {
    if *action == Action::await_change() {
        return None;
    }
    let found = (0..=700_000u64)
        .map(Duration::from_millis)
        .find(|d| Action::requeue(*d) == *action);
    Some(found.unwrap_or_else(|| panic!("{action:?} is not a whole number of milliseconds")))
}

fn assert_requeue_between(action: &Action, low: Duration, high: Duration) {
    let after = requeue_after(action).unwrap_or_else(|| panic!("{action:?} does not requeue"));
    assert!(
        low <= after && after <= high,
        "requeue after {after:?}, expected within {low:?}..={high:?}"
    );
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

// ===== Scenarios =====

#[tokio::test]
async fn a_new_object_gets_conditions_and_the_cleanup_finalizer_and_nothing_else() {
    let mut o = object(spec(json!({})));
    o.metadata.finalizers = None;
    let mut h = Harness::new(o);

    // Conditions first: kstatus must never see a new object without them (it would say Current).
    let action = h
        .reconcile(vec![
            Expect::status(|s| {
                assert_health(s, "Reconciling", "Pending");
                assert_eq!(s.observed_generation, Some(1));
            }),
            Expect::add_finalizer(),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.object().metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
    assert!(
        h.api().take_calls().is_empty(),
        "no Deployments API call before the finalizer is in place"
    );
}

#[tokio::test]
async fn a_first_reconcile_records_the_intent_then_creates_then_records_the_id_and_reports_queued()
{
    let s = spec(json!({}));
    let fp = fingerprint(&s);
    let mut h = Harness::new(object(s));

    let (fp1, fp2) = (fp.clone(), fp.clone());
    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(move |s| {
                let intent = s.intent.as_ref().expect("an intent before the create");
                assert_eq!(intent.fingerprint, fp1);
                assert_eq!(s.id, None, "no id before the create answered");
            }),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_1"));
                assert_eq!(s.fingerprint.as_deref(), Some(fp2.as_str()));
                assert_eq!(s.intent, None, "the intent is resolved with the id");
            }),
            Expect::event_noting("Normal", "Created", &["dep_1", "main"]),
            Expect::status(move |s| {
                assert_health(s, "Reconciling", "Queued");
                assert_eq!(s.deployment_id.as_deref(), Some("dep_1"));
                assert_eq!(s.url.as_deref(), Some("https://dep_1.git.dev"));
                assert_eq!(s.status.as_deref(), Some("queued"));
                assert_eq!(s.commit_sha.as_deref(), Some(HEAD));
                assert_eq!(s.short_commit.as_deref(), Some(&HEAD[..7]));
                assert_eq!(s.spec_fingerprint.as_deref(), Some(fp.as_str()));
                assert_eq!(s.observed_generation, Some(1));
            }),
        ])
        .await
        .unwrap();

    assert_eq!(
        h.take_timeline(),
        [
            "k8s get secret gitdev-credentials",
            "k8s write state",
            "api create",
            "k8s write state",
            "k8s event Normal Created",
            "k8s write status",
        ],
        "the intent is durable before the create is sent, and the id right after"
    );
    assert_requeue_between(&action, secs(2.0), secs(2.2));
    assert_eq!(
        h.api().creates()[0],
        CreateDeploymentRequest {
            project_id: PROJECT.into(),
            branch: "main".into(),
            commit_sha: None,
            env_vars: None,
        }
    );
    assert_eq!(
        h.api().tokens(),
        [TOKEN],
        "the token of the Secret is spent"
    );
    assert_eq!(h.state().id.as_deref(), Some("dep_1"));
}

#[tokio::test]
async fn status_is_not_written_again_when_nothing_changed() {
    let s = spec(json!({}));
    let mut h = Harness::new(tracking(s, "dep_1"));
    h.api().add("main", None, Remote::Queued);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| {
            assert_health(s, "Reconciling", "Queued");
            assert_eq!(
                s.logs_url.as_deref(),
                Some("https://api.git.dev/v1/deployments/dep_1/logs")
            );
        }),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1"]);

    // Same remote state, and the object now carries the status it would get: no write at all.
    let action = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap();
    // In flight and mirrored: observed through the shared listing, not a GET of its own.
    assert_eq!(h.api().take_calls(), ["list"]);
    assert_requeue_between(&action, secs(2.0), secs(2.2));

    // Progress is written once.
    h.api().set_status("dep_1", Remote::Building);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| {
            assert_health(s, "Reconciling", "Building");
            assert_eq!(s.status.as_deref(), Some("building"));
        }),
    ])
    .await
    .unwrap();
    h.reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_credentials_secret_stalls_without_calling_the_api() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "CredentialsNotFound", &["ns/gitdev-credentials"]),
            Expect::status(|s| {
                assert_health(s, "Stalled", "CredentialsNotFound");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();

    assert_eq!(
        action,
        Action::await_change(),
        "a missing Secret waits for the Secret to change"
    );
    assert!(h.api().take_calls().is_empty());
}

#[tokio::test]
async fn a_401_from_get_stalls_as_unauthorized() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.api().fail_next(Endpoint::Get, 401, "unauthorized");

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "Unauthorized", &["401", "valid"]),
            Expect::status(|s| assert_health(s, "Stalled", "Unauthorized")),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
}

#[tokio::test]
async fn a_403_from_create_stalls_as_insufficient_scope_and_forgets_the_intent() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api()
        .fail_next(Endpoint::Create, 403, "insufficient_scope");

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())),
            Expect::state(|s| {
                assert_eq!(*s, State::default(), "a refused create leaves no intent")
            }),
            Expect::event_noting("Warning", "InsufficientScope", &["403", "deploy:write"]),
            Expect::status(|s| assert_health(s, "Stalled", "InsufficientScope")),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["create"]);
    assert!(h.api().ids().is_empty());
    assert_eq!(h.state(), State::default());
}

#[tokio::test]
async fn a_500_from_get_reports_api_unavailable_and_fails_the_reconcile_for_backoff() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.api().fail_next(Endpoint::Get, 500, "internal_error");

    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "ApiUnavailable", &["500", "internal_error"]),
            Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
        ])
        .await
        .expect_err("a transient API error fails the reconcile");

    assert_eq!(err.category(), "server_error");
    assert!(
        matches!(&err, Error::Finalizer(e) if matches!(e.as_ref(), kube::runtime::finalizer::Error::ApplyFailed(Error::Api { .. }))),
        "{err:?}"
    );
    let action = h.error_policy(&h.object(), &err);
    assert_requeue_between(&action, secs(1.0), secs(1.25));
}

#[tokio::test]
async fn error_policy_backs_off_exponentially_per_object_and_resets_after_a_success() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Queued);
    for _ in 0..3 {
        h.api().fail_next(Endpoint::Get, 503, "service_unavailable");
    }
    let first = vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event("Warning", "ApiUnavailable"),
        Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
    ];
    let err = h.reconcile(first).await.unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(1.0), secs(1.25));
    // The same failure again: the status and its condition are unchanged, so nothing is written.
    let err = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(2.0), secs(2.5));
    let err = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(4.0), secs(5.0));

    // Another object has its own count.
    let mut other = h.object();
    other.metadata.name = Some("other".into());
    assert_requeue_between(&h.error_policy(&other, &err), secs(1.0), secs(1.25));
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(8.0), secs(10.0));

    // A success forgets the failures.
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();
    // Now mirrored as in flight, the deployment is observed through the token's listing.
    h.api().fail_next(Endpoint::List, 500, "internal_error");
    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::repeated_event("Warning", "ApiUnavailable"),
            Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
        ])
        .await
        .unwrap_err();
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(1.0), secs(1.25));
}

#[tokio::test]
async fn a_lost_create_answer_is_adopted_on_the_next_reconcile_instead_of_creating_again() {
    let s = spec(json!({"commitSha": "abc1234"}));
    let fp = fingerprint(&s);
    let mut h = Harness::new(object(s));
    h.api().script(Endpoint::Create, Script::LoseAnswer);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some() && s.id.is_none())),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "CreationUnconfirmed");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();
    assert_eq!(requeue_after(&action), Some(secs(1.0)));
    assert_eq!(h.api().take_calls(), ["create"]);
    let state = h.state();
    assert!(
        state.intent.is_some() && state.id.is_none(),
        "the intent stays recorded: {state:?}"
    );
    assert_eq!(h.api().ids(), ["dep_1"], "the create did happen");

    // Someone else deploys another commit of the branch meanwhile: not ours.
    h.api().add("main", Some(HEAD), Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_1"));
                assert_eq!(s.fingerprint.as_deref(), Some(fp.as_str()));
                assert_eq!(s.intent, None);
            }),
            Expect::event_noting("Normal", "Adopted", &["dep_1", "lost"]),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "Queued");
                assert_eq!(s.deployment_id.as_deref(), Some("dep_1"));
                assert_eq!(s.commit_sha.as_deref(), Some("abc1234"));
            }),
        ])
        .await
        .unwrap();
    assert_requeue_between(&action, secs(2.0), secs(2.2));
    assert_eq!(
        h.api().take_calls(),
        ["list", "get dep_2", "get dep_1", "get dep_1"],
        "each candidate is read to check its commit, then the adopted one is observed"
    );
    assert_eq!(h.api().creates().len(), 1, "never created twice");
}

#[tokio::test]
async fn a_lost_create_answer_with_two_candidates_stalls_as_creation_uncertain_until_one_is_deleted()
 {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(Endpoint::Create, Script::LoseAnswer);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::status(|s| assert_health(s, "Reconciling", "CreationUnconfirmed")),
    ])
    .await
    .unwrap();
    h.api().take_calls();
    // A second deployment of the same branch and commit appears in the window.
    h.api().add("main", None, Remote::Queued);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "CreationUncertain", &["dep_1", "dep_2"]),
            Expect::status(|s| {
                assert_health(s, "Stalled", "CreationUncertain");
                assert_eq!(s.deployment_id, None);
            }),
        ])
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["list", "get dep_2", "get dep_1"]);
    assert_eq!(
        h.api().creates().len(),
        1,
        "no create while the outcome is uncertain"
    );
    assert!(h.state().intent.is_some());

    // The recovery the message asks for: delete the extra one, set the adoption annotation.
    h.api().remove("dep_2");
    h.edit(|o| {
        o.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_DEPLOYMENT_ID.into(), "dep_1".into());
    });
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert_eq!((s.id.as_deref(), s.intent.is_none()), (Some("dep_1"), true))),
        Expect::event("Normal", "Adopted"),
        Expect::status(|s| {
            assert_health(s, "Reconciling", "Queued");
            assert_eq!(s.deployment_id.as_deref(), Some("dep_1"));
        }),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().creates().len(), 1);
}

#[tokio::test]
async fn a_lost_create_that_never_reached_the_api_is_sent_again_once_nothing_is_found() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(
        Endpoint::Create,
        Script::Fail(ApiError::OutcomeUnknown {
            message: "timed out".into(),
        }),
    );
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::status(|s| assert_health(s, "Reconciling", "CreationUnconfirmed")),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["create"]);
    assert!(h.api().ids().is_empty());

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert_eq!(*s, State::default(), "nothing found: the intent is dropped")),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["list", "create"]);
    assert_eq!(h.api().ids(), ["dep_1"]);
}

#[tokio::test]
async fn cancel_stops_an_in_progress_deployment_and_reports_cancelled() {
    let mut h = Harness::new(tracking(spec(json!({"cancel": true})), "dep_1"));
    h.api().add("main", None, Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| {
                assert!(s.cancel_requested);
                assert_eq!(s.id.as_deref(), Some("dep_1"));
            }),
            Expect::event_noting("Normal", "Cancelled", &["dep_1", "spec.cancel"]),
            Expect::status(|s| {
                assert_health(s, "Ready", "Cancelled");
                assert_eq!(s.status.as_deref(), Some("cancelled"));
                assert_eq!(s.cancelled_by.as_deref(), Some("user_operator"));
                assert!(s.cancelled_at.is_some());
            }),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.api().take_calls(),
        ["get dep_1", "cancel dep_1", "get dep_1"]
    );
    assert_eq!(
        h.api().deployment("dep_1").unwrap().status,
        Remote::Cancelled
    );
    assert!(h.state().cancel_requested);
}

#[tokio::test]
async fn deletion_with_policy_delete_cancels_and_deletes_every_deployment_then_releases_the_finalizer()
 {
    let s = spec(json!({}));
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(fingerprint(&s)),
        // Already deleted remotely: its 404s count as done.
        history: vec!["dep_0".into()],
        ..State::default()
    };
    let mut h = Harness::new(deleting(with_state(object(s), &state)));
    h.api().add("main", None, Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Normal", "Deleted", &["dep_1"]),
            Expect::remove_finalizer(),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.api().take_calls(),
        [
            "get dep_1",
            "cancel dep_1",
            "delete dep_1",
            "cancel dep_0",
            "delete dep_0"
        ]
    );
    assert!(h.api().ids().is_empty());
    assert_eq!(h.object().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn deletion_with_policy_delete_does_not_cancel_a_finished_deployment() {
    let mut h = Harness::new(deleting(tracking(spec(json!({})), "dep_1")));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event("Normal", "Deleted"),
        Expect::remove_finalizer(),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_1", "delete dep_1"]);
    assert!(h.api().ids().is_empty());
}

#[tokio::test]
async fn deletion_with_policy_orphan_touches_nothing_remote_and_releases_the_finalizer() {
    let o = tracking(spec(json!({"deletionPolicy": "Orphan"})), "dep_1");
    assert_eq!(o.spec.deletion_policy, DeletionPolicy::Orphan);
    let mut h = Harness::new(deleting(o));
    h.api().add("main", None, Remote::Building);

    let action = h
        .reconcile(vec![
            Expect::event_noting("Normal", "Orphaned", &["dep_1"]),
            Expect::remove_finalizer(),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert!(
        h.api().take_calls().is_empty(),
        "Orphan makes no API call, and reads no Secret"
    );
    assert_eq!(
        h.api().deployment("dep_1").unwrap().status,
        Remote::Building
    );
    assert_eq!(h.object().metadata.finalizers, Some(vec![]));
}

#[tokio::test]
async fn a_new_spec_while_building_cancels_the_old_deployment_and_creates_a_new_one() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| assert_health(s, "Reconciling", "Building")),
    ])
    .await
    .unwrap();
    h.api().take_calls();

    h.edit(|o| o.spec.branch = "release".into());
    let new_fp = fingerprint(&h.object().spec);
    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Normal", "Superseded", &["dep_1"]),
            Expect::state(|s| {
                assert_eq!((s.id.as_deref(), s.intent.is_some()), (Some("dep_1"), true))
            }),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_2"));
                assert_eq!(s.fingerprint.as_deref(), Some(new_fp.as_str()));
                assert_eq!(s.history, ["dep_1"]);
            }),
            Expect::event_noting("Normal", "Created", &["dep_2", "release"]),
            Expect::status(|s| {
                assert_health(s, "Reconciling", "Queued");
                assert_eq!(s.deployment_id.as_deref(), Some("dep_2"));
                assert_eq!(s.observed_generation, Some(2));
                assert_eq!(s.history.len(), 1);
                let old = &s.history[0];
                assert_eq!(old.deployment_id, "dep_1");
                assert_eq!(old.status.as_deref(), Some("building"), "last known status");
                assert_eq!(old.commit_sha.as_deref(), Some(HEAD));
            }),
        ])
        .await
        .unwrap();

    assert_requeue_between(&action, secs(2.0), secs(2.2));
    assert_eq!(
        h.api().take_calls(),
        ["list", "cancel dep_1", "get dep_1", "create"]
    );
    assert_eq!(
        h.api().deployment("dep_1").unwrap().status,
        Remote::Cancelled
    );
    assert_eq!(h.api().creates()[0].branch, "release");
}

#[tokio::test]
async fn history_beyond_the_history_limit_is_deleted_remotely() {
    let mut h = Harness::new(tracking(spec(json!({"historyLimit": 0})), "dep_1"));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);

    h.edit(|o| o.spec.redeploy = Some("2".into()));
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.history, ["dep_1"])),
        Expect::event("Normal", "Created"),
        Expect::event_noting("Normal", "Pruned", &["dep_1", "historyLimit"]),
        Expect::state(|s| {
            assert_eq!(s.id.as_deref(), Some("dep_2"));
            assert!(s.history.is_empty());
        }),
        Expect::status(|s| {
            assert_eq!(s.deployment_id.as_deref(), Some("dep_2"));
            assert!(s.history.is_empty());
        }),
    ])
    .await
    .unwrap();

    assert_eq!(
        h.api().take_calls(),
        ["get dep_1", "create", "delete dep_1"]
    );
    assert_eq!(h.api().ids(), ["dep_2"]);
}

#[tokio::test]
async fn env_from_secrets_are_read_and_sent_with_the_create_but_never_stored_in_clear() {
    let s = spec(json!({
        "envVars": {"MODE": "prod"},
        "envFrom": [{"secretRef": {"name": "app-env"}, "prefix": "APP_"}],
    }));
    let mut h = Harness::new(object(s));
    h.add_secret("app-env", &[("PASSWORD", "hunter2")]);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::get_secret("app-env"),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();

    let env = h.api().creates()[0].env_vars.clone().unwrap();
    assert_eq!(
        env,
        BTreeMap::from([
            ("APP_PASSWORD".to_string(), "hunter2".to_string()),
            ("MODE".to_string(), "prod".to_string())
        ])
    );
    let stored = serde_json::to_string(&h.object()).unwrap();
    assert!(
        !stored.contains("hunter2"),
        "a secret value reached the object: {stored}"
    );
}

#[tokio::test]
async fn a_deployment_named_by_the_adoption_annotation_is_adopted_not_recreated() {
    let mut o = object(spec(json!({})));
    o.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_DEPLOYMENT_ID.into(), "dep_1".into());
    let fp = fingerprint(&o.spec);
    let mut h = Harness::new(o);
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_1"));
                assert_eq!(s.fingerprint.as_deref(), Some(fp.as_str()));
            }),
            Expect::event_noting("Normal", "Adopted", &["dep_1", "success"]),
            Expect::event("Normal", "DeploymentSucceeded"),
            Expect::status(|s| {
                assert_health(s, "Ready", "Succeeded");
                assert_eq!(s.build_duration.as_deref(), Some("14.2s"));
            }),
        ])
        .await
        .unwrap();

    assert_requeue_between(&action, secs(600.0), secs(660.0));
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    assert!(h.api().creates().is_empty());
}

#[tokio::test]
async fn a_create_is_not_sent_when_the_intent_cannot_be_recorded() {
    let mut h = Harness::new(object(spec(json!({}))));

    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())).fails(409),
            Expect::event_noting("Warning", "ApiUnavailable", &["not sent"]),
            Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
        ])
        .await
        .unwrap_err();

    assert!(
        h.api().take_calls().is_empty(),
        "no create without a durable intent"
    );
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(1.0), secs(1.25));
    assert_eq!(h.state(), State::default());
}

#[tokio::test]
async fn a_429_from_create_waits_for_the_rate_limit_without_an_error() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(
        Endpoint::Create,
        Script::Fail(ApiError::Status {
            endpoint: Endpoint::Create,
            status: 429,
            code: "rate_limited".into(),
            message: "slow down".into(),
            details: Default::default(),
            retry_after: Some(Duration::from_secs(7)),
        }),
    );

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())),
            Expect::state(|s| {
                assert_eq!(*s, State::default(), "a refused create leaves no intent")
            }),
            Expect::event_noting("Warning", "RateLimited", &["7s"]),
            Expect::status(|s| assert_health(s, "Reconciling", "RateLimited")),
        ])
        .await
        .expect("a rate limit is not an error");

    assert_eq!(requeue_after(&action), Some(Duration::from_secs(7)));
    assert_eq!(h.api().take_calls(), ["create"]);
}

#[tokio::test]
async fn a_deployment_deleted_behind_the_operators_back_is_reported_not_recreated() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "RemoteDeleted", &["dep_1", "redeploy"]),
            Expect::status(|s| {
                assert_health(s, "Stalled", "RemoteDeleted");
                assert_eq!(s.status.as_deref(), Some("deleted"));
                assert_eq!(s.url, None, "no URL of a deployment that is gone");
            }),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
}

#[tokio::test]
async fn lifting_cancel_deploys_again() {
    let s = spec(json!({}));
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(fingerprint(&s)),
        cancel_requested: true,
        ..State::default()
    };
    let mut h = Harness::new(with_state(object(s), &state));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Cancelled);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some() && s.cancel_requested)),
        Expect::state(|s| {
            assert_eq!(s.id.as_deref(), Some("dep_2"));
            assert_eq!(s.history, ["dep_1"]);
            assert!(!s.cancel_requested);
        }),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["get dep_1", "create"]);
}

// ===== The verifier itself =====

#[tokio::test]
#[should_panic(expected = "unexpected Kubernetes request #3: k8s write status")]
async fn the_mock_api_server_names_a_request_that_was_not_expected() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));
    let _ = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event("Warning", "CredentialsNotFound"),
        ])
        .await;
}

#[tokio::test]
#[should_panic(
    expected = "Kubernetes request #2 was k8s event Warning CredentialsNotFound, expected k8s write status"
)]
async fn the_mock_api_server_names_a_request_out_of_order() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));
    let _ = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::status(|_| {}),
            Expect::event("Warning", "CredentialsNotFound"),
        ])
        .await;
}

#[tokio::test]
#[should_panic(expected = "without making the expected Kubernetes requests")]
async fn the_mock_api_server_names_an_expected_request_that_was_not_made() {
    let mut h = Harness::without_secrets(object(spec(json!({}))));
    let _ = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event("Warning", "CredentialsNotFound"),
            Expect::status(|_| {}),
            Expect::get_secret("another"),
        ])
        .await;
}

// ===== Bugs =====

#[tokio::test]
async fn a_lost_create_answer_after_a_supersede_is_not_mistaken_for_the_superseded_deployment() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    // A redeploy while dep_1 (same branch, created seconds ago) is building; the create of
    // the replacement times out before reaching the API.
    h.edit(|o| o.spec.redeploy = Some("2".into()));
    h.api().script(
        Endpoint::Create,
        Script::Fail(ApiError::OutcomeUnknown {
            message: "timed out".into(),
        }),
    );
    h.reconcile_freely().await.unwrap();
    assert_eq!(
        h.api().take_calls(),
        ["get dep_1", "cancel dep_1", "get dep_1", "create"]
    );

    h.reconcile_freely().await.unwrap();

    let state = h.state();
    assert_ne!(
        state.id.as_deref(),
        Some("dep_1"),
        "the cancelled, superseded dep_1 was adopted as the new spec's deployment: {state:?}, status {:?}",
        h.status().conditions
    );
    assert_eq!(
        state.id.as_deref(),
        Some("dep_2"),
        "the new spec is deployed"
    );
    assert_eq!(state.history, ["dep_1"]);
}

#[tokio::test]
async fn a_lost_create_answer_after_a_supersede_adopts_the_new_deployment() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api().add("main", None, Remote::Building);
    h.edit(|o| o.spec.redeploy = Some("2".into()));
    h.api().script(Endpoint::Create, Script::LoseAnswer);
    h.reconcile_freely().await.unwrap();

    h.reconcile_freely().await.unwrap();

    let status = h.status();
    assert_ne!(
        cond(&status, "Stalled").1,
        "CreationUncertain",
        "{:?}",
        status.conditions
    );
    let state = h.state();
    assert_eq!(state.id.as_deref(), Some("dep_2"), "{state:?}");
    assert_eq!(state.history, ["dep_1"]);
}

#[tokio::test]
async fn deleting_an_object_whose_create_answer_was_lost_still_deletes_that_deployment() {
    let mut h = Harness::new(object(spec(json!({}))));
    h.api().script(Endpoint::Create, Script::LoseAnswer);
    h.reconcile_freely().await.unwrap();
    assert_eq!(h.api().ids(), ["dep_1"]);
    assert!(h.state().intent.is_some());

    h.edit(|o| o.metadata.deletion_timestamp = Some(Time(wire_now())));
    for _ in 0..3 {
        if h.object()
            .metadata
            .finalizers
            .iter()
            .flatten()
            .next()
            .is_none()
        {
            break;
        }
        h.reconcile_freely().await.unwrap();
    }

    assert_eq!(h.object().metadata.finalizers, Some(vec![]));
    assert!(
        h.api().ids().is_empty(),
        "deletionPolicy Delete left remote deployment(s) {:?} behind",
        h.api().ids()
    );
}

// ===== Batched observation =====

mod batched_observation {
    use super::*;
    use crate::controller::observer::{Observer, Seen};

    fn fake() -> FakeApi {
        FakeApi::new(Timeline::default())
    }

    #[tokio::test]
    async fn fifty_in_flight_deployments_of_one_token_are_observed_with_one_list_call() {
        let api = fake();
        let ids: Vec<String> = (0..50)
            .map(|_| api.add("main", None, Remote::Building))
            .collect();
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        let asks = ids
            .iter()
            .map(|id| observer.status(&api, &token, id, now, Duration::from_secs(5)));
        let answers = futures::future::join_all(asks).await;
        for a in answers {
            assert_eq!(a.unwrap(), Some(Seen::Status(Remote::Building)));
        }
        assert_eq!(api.take_calls(), ["list"]);
    }

    #[tokio::test]
    async fn a_deployment_missing_from_a_listing_that_covers_its_creation_is_absent() {
        let api = fake();
        api.add("main", None, Remote::Queued);
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let seen = observer
            .status(&api, &token, "dep_gone", wire_now(), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Absent));
    }

    #[tokio::test]
    async fn the_listing_pages_back_until_the_oldest_deployment_waited_on() {
        let api = fake();
        let old = api.add("main", None, Remote::Deploying);
        api.state().deployments[0].created_at = wire_now() - Duration::from_secs(3600);
        for _ in 0..150 {
            api.add("main", None, Remote::Success);
        }
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let created = api.state().deployments[0].created_at;
        let seen = observer
            .status(&api, &token, &old, created, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Status(Remote::Deploying)));
        assert_eq!(api.take_calls(), ["list", "list"]);
    }

    #[tokio::test]
    async fn a_fresh_listing_is_reused_and_a_stale_one_refreshed() {
        let api = fake();
        let id = api.add("main", None, Remote::Queued);
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        for _ in 0..3 {
            observer
                .status(&api, &token, &id, now, Duration::from_secs(60))
                .await
                .unwrap();
        }
        assert_eq!(api.take_calls(), ["list"]);
        observer
            .status(&api, &token, &id, now, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(api.take_calls(), ["list"]);
    }
}
