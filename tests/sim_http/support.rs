//! What every topic shares: the fixture's tokens, a simulator on a free port, and a thin
//! HTTP client whose answers check the contract's error envelope and rate-limit headers.

use std::time::Duration;

use gitdev::api::{CreatedDeployment, DeploymentDetails, ErrorEnvelope};
use gitdev::sim::{RunningSim, SimConfig};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const ADMIN: &str = "sk_test_admin";
pub const WRITE: &str = "sk_test_write";
pub const READ: &str = "sk_test_read";
pub const STARTER: &str = "sk_test_starter";
pub const OTHER: &str = "sk_test_other";
pub const PROJECT: &str = "proj_8f3k29";

pub fn client() -> reqwest::Client {
    // reqwest is built without a default TLS provider; plain http needs none, but building a
    // client does. Install the ring provider the crate already uses (idempotent).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub async fn start_with(config: SimConfig) -> RunningSim {
    RunningSim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

pub async fn start(phase: Duration) -> RunningSim {
    start_with(SimConfig::default_fixture().with_phase_duration(phase)).await
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("does not parse ({e}): {}", self.text))
    }

    /// Asserts the status, the JSON error envelope and its code; returns the envelope.
    pub fn expect_error(&self, status: u16, code: &str) -> ErrorEnvelope {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("application/json"), "content type {ct}");
        let env: ErrorEnvelope = self.parse();
        assert_eq!(env.error.code, code, "{}", self.text);
        assert!(!env.error.message.is_empty());
        env
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    pub fn assert_rate_headers(&self) {
        for h in [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ] {
            let v = self
                .header(h)
                .unwrap_or_else(|| panic!("{h} missing on {} {}", self.status, self.text));
            v.parse::<u64>()
                .unwrap_or_else(|_| panic!("{h} is not an integer: {v}"));
        }
    }
}

pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub root: String,
}

impl Api {
    pub fn new(sim: &RunningSim) -> Api {
        Api {
            http: client(),
            base: sim.base_url.clone(),
            root: sim.root_url(),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let mut req = self.http.request(method, url);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("request answered");
        Answer {
            status: resp.status(),
            headers: resp.headers().clone(),
            text: resp.text().await.unwrap(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let url = format!("{}{path}", self.base);
        self.send(method, &url, token, body.map(|b| b.to_string()))
            .await
    }

    pub async fn create(&self, token: &str, branch: &str) -> Answer {
        self.call(
            Method::POST,
            "/deployments",
            Some(token),
            Some(json!({ "project_id": PROJECT, "branch": branch })),
        )
        .await
    }

    pub async fn created(&self, branch: &str) -> CreatedDeployment {
        let a = self.create(ADMIN, branch).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
        a.parse()
    }

    pub async fn get(&self, token: &str, id: &str) -> Answer {
        self.call(
            Method::GET,
            &format!("/deployments/{id}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn details(&self, id: &str) -> DeploymentDetails {
        let a = self.get(ADMIN, id).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        a.parse()
    }

    pub async fn sim(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let url = format!("{}/_sim{path}", self.root);
        self.send(method, &url, None, body.map(|b| b.to_string()))
            .await
    }

    pub async fn all_deployments(&self) -> Vec<Value> {
        let a = self.sim(Method::GET, "/deployments", None).await;
        assert_eq!(a.status, StatusCode::OK);
        a.json()["data"].as_array().unwrap().clone()
    }

    pub async fn set_faults(&self, rules: Value) {
        let a = self
            .sim(Method::PUT, "/faults", Some(json!({ "rules": rules })))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
}
