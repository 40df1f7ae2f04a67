//! The JSON examples of `docs/deployments-api.md` against the types of both sides.
//!
//! The client (`gitdev::api`) and the simulator (`gitdev::sim::wire`) have separate wire types,
//! so that a misspelled field is not silently agreed on by both. Each side is held to the
//! documented examples on its own: an example is read into the type and written back, and the
//! field names (recursively) must be exactly those of the example. The simulator is also asked
//! over HTTP, so that what its handlers send is checked, not only its types.

use std::collections::{BTreeMap, BTreeSet};
use std::mem::discriminant;
use std::time::Duration;

use gitdev::api;
use gitdev::sim::{RunningSim, SimConfig, wire};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const DOC: &str = "docs/deployments-api.md";
const MARKER_START: &str = "<!-- wire-example:";
const MARKER_END: &str = "-->";

const CREATE_REQUEST: &str = "create-request";
const CREATE_RESPONSE: &str = "create-response";
const LIST_RESPONSE: &str = "list-response";
const GET_RESPONSE: &str = "get-response";
const GET_RESPONSE_CANCELLED: &str = "get-response-cancelled";
const CANCEL_RESPONSE: &str = "cancel-response";
const ERROR_BODY: &str = "error-body";

/// Every example this file checks. The doc must have each, and no example this file ignores.
const EXAMPLES: [&str; 7] = [
    CREATE_REQUEST,
    CREATE_RESPONSE,
    LIST_RESPONSE,
    GET_RESPONSE,
    GET_RESPONSE_CANCELLED,
    CANCEL_RESPONSE,
    ERROR_BODY,
];

fn doc_text() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"))
}

/// Each `<!-- wire-example: NAME -->` of the doc and the text of the json code block after it.
fn extract_examples(doc: &str) -> Result<BTreeMap<String, String>, String> {
    let mut found = BTreeMap::new();
    let mut lines = doc.lines().enumerate().peekable();
    while let Some((n, line)) = lines.next() {
        let Some(rest) = line.trim().strip_prefix(MARKER_START) else {
            continue;
        };
        let name = rest
            .strip_suffix(MARKER_END)
            .ok_or_else(|| format!("{DOC}:{}: marker does not end with `-->`", n + 1))?
            .trim()
            .to_owned();
        while lines.next_if(|(_, l)| l.trim().is_empty()).is_some() {}
        match lines.next() {
            Some((_, fence)) if fence.trim() == "```json" => {}
            _ => {
                return Err(format!(
                    "{DOC}:{}: example `{name}` is not followed by a ```json block",
                    n + 1
                ));
            }
        }
        let mut json = String::new();
        loop {
            match lines.next() {
                Some((_, l)) if l.trim() == "```" => break,
                Some((_, l)) => {
                    json.push_str(l);
                    json.push('\n');
                }
                None => return Err(format!("{DOC}: example `{name}` has no closing ```")),
            }
        }
        if found.insert(name.clone(), json).is_some() {
            return Err(format!("{DOC}: example `{name}` appears twice"));
        }
    }
    Ok(found)
}

/// The documented example `name`, parsed.
fn example(name: &str) -> Value {
    let examples = extract_examples(&doc_text()).unwrap_or_else(|e| panic!("{e}"));
    let text = examples.get(name).unwrap_or_else(|| {
        panic!("{DOC} has no example marked `{MARKER_START} {name} {MARKER_END}`")
    });
    serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("example `{name}` of {DOC} is not JSON: {e}\n{text}"))
}

/// Every field path of `v` with a value found there: `meta.total` → `142`. Array elements share
/// one path (`data[].id`). Paths in `opaque` are listed, but not what is inside them: error
/// `details` differ from one error to the next.
fn fields<'v>(v: &'v Value, opaque: &[&str]) -> BTreeMap<String, &'v Value> {
    fn walk<'v>(v: &'v Value, path: &str, opaque: &[&str], out: &mut BTreeMap<String, &'v Value>) {
        if opaque.contains(&path) {
            return;
        }
        match v {
            Value::Object(map) => {
                for (key, value) in map {
                    let p = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    out.insert(p.clone(), value);
                    walk(value, &p, opaque, out);
                }
            }
            Value::Array(items) => {
                let p = format!("{path}[]");
                for item in items {
                    out.insert(p.clone(), item);
                    walk(item, &p, opaque, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(v, "", opaque, &mut out);
    out
}

/// How the fields of `actual` (written by `who`) differ from those of the documented example
/// `name`, one sentence per field: missing, extra, or holding another JSON type (a string where
/// the example has a number, say). Empty when they are the same.
fn differences(name: &str, expected: &Value, who: &str, actual: &Value) -> Vec<String> {
    differences_except(name, expected, who, actual, &[])
}

fn differences_except(
    name: &str,
    expected: &Value,
    who: &str,
    actual: &Value,
    opaque: &[&str],
) -> Vec<String> {
    let want = fields(expected, opaque);
    let got = fields(actual, opaque);
    let paths: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut out = Vec::new();
    for path in paths {
        match (want.get(path), got.get(path)) {
            (Some(_), None) => out.push(format!(
                "field `{path}` of the `{name}` example is missing from what {who} writes"
            )),
            (None, Some(_)) => out.push(format!(
                "{who} writes field `{path}`, which the `{name}` example does not have"
            )),
            (Some(w), Some(g)) if discriminant(*w) != discriminant(*g) => out.push(format!(
                "field `{path}` is {w} in the `{name}` example but {who} writes {g}, another JSON type"
            )),
            _ => {}
        }
    }
    out
}

/// Reads the example `name` into `T`, writes it back, and lists how the fields differ.
fn round_trip_differences<T: DeserializeOwned + Serialize>(name: &str) -> Vec<String> {
    let who = std::any::type_name::<T>();
    let expected = example(name);
    let typed: T = match serde_json::from_value(expected.clone()) {
        Ok(t) => t,
        Err(e) => return vec![format!("{who} cannot read the `{name}` example: {e}")],
    };
    match serde_json::to_value(&typed) {
        Ok(actual) => differences(name, &expected, who, &actual),
        Err(e) => vec![format!("{who} cannot write the `{name}` example back: {e}")],
    }
}

fn assert_same_fields<T: DeserializeOwned + Serialize>(name: &str) {
    let problems = round_trip_differences::<T>(name);
    assert!(
        problems.is_empty(),
        "{DOC}, example `{name}`:\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn the_doc_has_every_example_this_test_checks_and_no_other() {
    let found = extract_examples(&doc_text()).unwrap_or_else(|e| panic!("{e}"));
    let missing: Vec<&str> = EXAMPLES
        .into_iter()
        .filter(|name| !found.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "{DOC} lost the examples {missing:?}; every one of them is checked here"
    );
    let unchecked: Vec<&String> = found
        .keys()
        .filter(|name| !EXAMPLES.contains(&name.as_str()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "{DOC} has examples {unchecked:?} that no test here checks: add them to EXAMPLES"
    );
}

#[test]
fn a_marker_without_its_json_block_is_reported() {
    let doc = "<!-- wire-example: x -->\n\nsome prose\n";
    let err = extract_examples(doc).unwrap_err();
    assert!(err.contains("`x`") && err.contains("```json"), "{err}");
    let twice =
        "<!-- wire-example: y -->\n```json\n{}\n```\n<!-- wire-example: y -->\n```json\n{}\n```\n";
    assert!(extract_examples(twice).unwrap_err().contains("twice"));
}

#[test]
fn a_misspelled_or_retyped_field_is_named_in_the_failure() {
    #[derive(serde::Deserialize, Serialize)]
    struct Misspelled {
        id: String,
        status: String,
        #[serde(default)]
        cancelled_by: Option<String>,
        #[serde(rename = "canceled_at", default)]
        cancelled_at: Option<String>,
    }
    let problems = round_trip_differences::<Misspelled>(CANCEL_RESPONSE);
    let all = problems.join("\n");
    assert!(
        all.contains("field `cancelled_at` of the `cancel-response` example is missing"),
        "{all}"
    );
    assert!(all.contains("writes field `canceled_at`"), "{all}");

    let expected = json!({ "meta": { "total": 1 } });
    let actual = json!({ "meta": { "total": "1" } });
    let problems = differences("list-response", &expected, "someone", &actual);
    assert_eq!(
        problems,
        [
            "field `meta.total` is 1 in the `list-response` example but someone writes \"1\", another JSON type"
        ]
    );
}

// The simulator's wire types.

#[test]
fn the_simulators_create_request_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<wire::CreateRequest>(CREATE_REQUEST);
}

#[test]
fn the_simulators_create_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<wire::CreateResponse>(CREATE_RESPONSE);
}

#[test]
fn the_simulators_list_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<wire::ListResponse>(LIST_RESPONSE);
}

#[test]
fn the_simulators_get_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<wire::GetResponse>(GET_RESPONSE);
}

#[test]
fn the_simulators_get_response_of_a_cancelled_deployment_has_exactly_the_documented_fields() {
    assert_same_fields::<wire::GetResponse>(GET_RESPONSE_CANCELLED);
}

#[test]
fn the_simulators_cancel_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<wire::CancelResponse>(CANCEL_RESPONSE);
}

#[test]
fn the_simulators_error_body_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<wire::ErrorEnvelope>(ERROR_BODY);
}

// The client's wire types.

#[test]
fn the_clients_create_request_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<api::CreateDeploymentRequest>(CREATE_REQUEST);
}

#[test]
fn the_clients_create_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<api::CreatedDeployment>(CREATE_RESPONSE);
}

#[test]
fn the_clients_list_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<api::DeploymentList>(LIST_RESPONSE);
}

#[test]
fn the_clients_get_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<api::DeploymentDetails>(GET_RESPONSE);
}

#[test]
fn the_clients_get_response_of_a_cancelled_deployment_has_exactly_the_documented_fields() {
    assert_same_fields::<api::DeploymentDetails>(GET_RESPONSE_CANCELLED);
}

#[test]
fn the_clients_cancel_response_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<api::CancelledDeployment>(CANCEL_RESPONSE);
}

#[test]
fn the_clients_error_body_has_exactly_the_fields_of_the_documented_example() {
    assert_same_fields::<api::ErrorEnvelope>(ERROR_BODY);
}

// The simulator over HTTP: what its handlers send, not only its types.

const PROJECT: &str = "proj_8f3k29";
const WRITE_TOKEN: &str = "sk_test_write";

async fn start(phase: Duration) -> RunningSim {
    let config = SimConfig::default_fixture().with_phase_duration(phase);
    RunningSim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// Calls the simulator with the write token.
struct Caller {
    http: reqwest::Client,
    base: String,
}

impl Caller {
    fn new(sim: &RunningSim) -> Caller {
        // reqwest is built without a default TLS provider; building a client still needs one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Caller {
            http: reqwest::Client::new(),
            base: sim.base_url.clone(),
        }
    }

    /// `method` on `path` (below the base URL): the status and the JSON body.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, url).bearer_auth(WRITE_TOKEN);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.expect("the simulator answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        (status, json)
    }
}

fn assert_answer_matches(name: &str, status: u16, want_status: u16, body: &Value, opaque: &[&str]) {
    assert_eq!(status, want_status, "`{name}`: {body}");
    let problems = differences_except(name, &example(name), "the simulator", body, opaque);
    assert!(
        problems.is_empty(),
        "{DOC}, example `{name}`, against the simulator's answer {body}:\n  - {}",
        problems.join("\n  - ")
    );
}

#[tokio::test]
async fn the_simulator_answers_with_exactly_the_documented_fields() {
    let sim = start(Duration::ZERO).await;
    let api = Caller::new(&sim);

    // The documented request itself, as is: its project, branch and commit are in the fixture.
    let request = example(CREATE_REQUEST);
    let (status, created) = api.send(Method::POST, "/deployments", Some(&request)).await;
    assert_answer_matches(CREATE_RESPONSE, status, 201, &created, &[]);
    let id = created["id"].as_str().expect("an id");

    let (status, details) = api
        .send(Method::GET, &format!("/deployments/{id}"), None)
        .await;
    assert_answer_matches(GET_RESPONSE, status, 200, &details, &[]);

    let (status, list) = api.send(Method::GET, "/deployments", None).await;
    assert_answer_matches(LIST_RESPONSE, status, 200, &list, &[]);

    let bad_branch = json!({ "project_id": PROJECT, "branch": "develop" });
    let (status, error) = api
        .send(Method::POST, "/deployments", Some(&bad_branch))
        .await;
    assert_answer_matches(ERROR_BODY, status, 400, &error, &["error.details"]);
    assert_eq!(error["error"]["code"], "invalid_branch");

    sim.shutdown().await;
}

#[tokio::test]
async fn the_simulator_answers_a_cancel_with_exactly_the_documented_fields() {
    // Long phases, so that the deployment is still queued when the cancel arrives.
    let sim = start(Duration::from_secs(600)).await;
    let api = Caller::new(&sim);

    let request = json!({ "project_id": PROJECT, "branch": "main" });
    let (status, created) = api.send(Method::POST, "/deployments", Some(&request)).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("an id");

    let cancel = format!("/deployments/{id}/cancel");
    let (status, cancelled) = api.send(Method::POST, &cancel, None).await;
    assert_answer_matches(CANCEL_RESPONSE, status, 200, &cancelled, &[]);

    let (status, details) = api
        .send(Method::GET, &format!("/deployments/{id}"), None)
        .await;
    assert_answer_matches(GET_RESPONSE_CANCELLED, status, 200, &details, &[]);

    sim.shutdown().await;
}
