//! The mocked Kubernetes API server: answers like an API server would (merge patches, JSON
//! patches, server-side apply of status) and checks every request against what a test expects.

use super::*;

pub fn object_path() -> String {
    format!("/apis/git.dev/v1alpha1/namespaces/{NS}/gitdeployments/{NAME}")
}

pub fn events_path() -> String {
    format!("/apis/events.k8s.io/v1/namespaces/{NS}/events")
}

pub fn secret_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/secrets/{name}")
}

/// One request the reconciler sent to Kubernetes.
pub struct Received {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: String,
    pub body: Value,
}

impl Received {
    pub async fn read(request: Request<Body>) -> Received {
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
        Received {
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

    pub fn raw(&self) -> String {
        let query: Vec<_> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} {}?{} [{}]",
            self.method,
            self.path,
            query.join("&"),
            self.content_type
        )
    }

    pub fn json_patch_ops(&self) -> Vec<(String, String)> {
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
    pub fn what(&self) -> String {
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
pub struct Cluster {
    pub object: Value,
    pub secrets: BTreeMap<String, Value>,
    /// Events posted, by name, as the patches of their series left them.
    pub events: BTreeMap<String, Value>,
}

pub fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

pub fn failure(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

/// RFC 7386.
pub fn merge_patch(target: &mut Value, patch: &Value) {
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
pub fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
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
    /// Keeps posted events; a series patch (count and time only) is read as the whole event
    /// it makes, so that it can be told by its type and reason.
    pub fn complete_event(&mut self, req: &mut Received) {
        let events = events_path();
        if req.method == Method::POST && req.path == events {
            let name = req.body["metadata"]["name"]
                .as_str()
                .unwrap_or("")
                .to_string();
            self.events.insert(name, req.body.clone());
        } else if req.method == Method::PATCH
            && let Some(name) = req.path.strip_prefix(&format!("{events}/"))
            && let Some(event) = self.events.get_mut(name)
        {
            merge_patch(event, &req.body);
            req.body = event.clone();
        }
    }

    pub fn resource_version(&self) -> String {
        self.object["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    pub fn bump(&mut self) {
        let rv: u64 = self.resource_version().parse().unwrap_or(0);
        self.object["metadata"]["resourceVersion"] = json!((rv + 1).to_string());
    }

    /// Answers like an API server would.
    pub fn serve(&mut self, req: &Received) -> Response<Body> {
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

pub type Check = Box<dyn FnOnce(&Received, &Cluster)>;

pub fn check_event(req: &Received, _: &Cluster) {
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
pub struct Expect {
    pub what: String,
    pub check: Option<Check>,
    pub fail: Option<u16>,
}

impl Expect {
    pub fn new(what: impl Into<String>) -> Self {
        Expect {
            what: what.into(),
            check: None,
            fail: None,
        }
    }

    pub fn with(mut self, check: impl FnOnce(&Received, &Cluster) + 'static) -> Self {
        self.check = Some(Box::new(check));
        self
    }

    /// Answer with this HTTP status (a Kubernetes `Status` failure) instead of serving it.
    pub fn fails(mut self, code: u16) -> Self {
        self.fail = Some(code);
        self
    }

    pub fn get_secret(name: &str) -> Self {
        Expect::new(format!("k8s get secret {name}"))
    }

    pub fn remove_finalizer() -> Self {
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
    pub fn state(check: impl FnOnce(&State) + 'static) -> Self {
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

    /// The same write also sets the object's finalizers to exactly `finalizers`.
    pub fn with_finalizers(self, finalizers: &[&str]) -> Self {
        let want = json!(finalizers);
        let base = self.check;
        Expect {
            check: Some(Box::new(move |req: &Received, cluster: &Cluster| {
                if let Some(base) = base {
                    base(req, cluster);
                }
                assert_eq!(req.body["metadata"]["finalizers"], want, "{}", req.body);
            })),
            ..self
        }
    }

    /// A server-side apply of the status subresource.
    pub fn status(check: impl FnOnce(&GitDeploymentStatus) + 'static) -> Self {
        Expect::new("k8s write status").with(|req, _| {
            assert_eq!(req.body["apiVersion"], "git.dev/v1alpha1", "{}", req.body);
            assert_eq!(req.body["kind"], "Deployment", "{}", req.body);
            let status: GitDeploymentStatus = serde_json::from_value(req.body["status"].clone())
                .unwrap_or_else(|e| panic!("status does not parse ({e}): {}", req.body));
            check(&status);
        })
    }

    /// A new event (POST to events.k8s.io/v1) about the object.
    pub fn event(type_: &str, reason: &str) -> Self {
        Expect::new(format!("k8s event {type_} {reason}")).with(check_event)
    }

    /// The same event again within the recorder's cache time: a PATCH of its series.
    pub fn repeated_event(type_: &str, reason: &str) -> Self {
        Expect::new(format!("k8s event {type_} {reason} repeated")).with(|req, cluster| {
            check_event(req, cluster);
            assert!(
                req.body["series"]["count"].as_i64() >= Some(2),
                "{}",
                req.body
            );
        })
    }

    pub fn event_noting(type_: &str, reason: &str, words: &[&str]) -> Self {
        let words: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        let event = Expect::event(type_, reason);
        let base = event.check;
        Expect {
            check: Some(Box::new(move |req: &Received, cluster: &Cluster| {
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

pub struct ApiServer {
    pub handle: Handle<Request<Body>, Response<Body>>,
    pub cluster: Cluster,
    pub timeline: Timeline,
}

impl ApiServer {
    /// Runs `work` while answering its Kubernetes requests: with `expected`, each request must
    /// be the next expected one (else the test fails naming it); without, anything is served.
    pub async fn run<T>(
        &mut self,
        expected: Option<Vec<Expect>>,
        work: impl Future<Output = T>,
    ) -> T {
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
                    let mut req = Received::read(request).await;
                    cluster.complete_event(&mut req);
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
