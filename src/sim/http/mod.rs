//! The HTTP side of the simulator: one [`App`] answers every request.
//!
//! `route` picks the handler: a `/_sim/` hook (`hooks`), the OpenAPI document, or the public
//! API, whose pipeline is here (rate limit, faults, `auth` and scopes) before the endpoint
//! itself (`api`). `parse` reads bodies and queries, `respond` builds every answer. axum supplies
//! only the body and response types.

mod api;
mod auth;
mod hooks;
mod parse;
mod respond;
mod route;

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, Request, Response, StatusCode, header};
use futures::FutureExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{debug, error};

use super::config::{SimConfig, TokenConfig};
use super::faults::{FaultPlan, FaultSet};
use super::openapi;
use super::ratelimit::{BucketKey, Limiter};
use super::stats::{DROPPED, Stats};
use super::store::Store;
use auth::{AuthError, authenticate, check_scope};
use respond::{
    add_rate_headers, gateway_page, internal_error, json_response, method_not_allowed,
    not_found_route, padded, rate_limited, set_headers,
};
use route::{ApiRoute, Route, T_OPENAPI, route};

/// Per connection: the peer and the signal that makes the server drop the connection
/// without answering.
pub(crate) struct ConnCtx {
    pub peer: SocketAddr,
    pub drop: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) struct App {
    config: SimConfig,
    /// `127.0.0.1:PORT` (the bound address, with an unspecified IP shown as loopback).
    display_addr: SocketAddr,
    store: Mutex<Store>,
    limiter: Mutex<Limiter>,
    stats: Mutex<Stats>,
    faults: Mutex<FaultSet>,
    openapi: Value,
}

impl App {
    pub(crate) fn new(config: SimConfig, bound: SocketAddr) -> App {
        let mut display_addr = bound;
        if display_addr.ip().is_unspecified() {
            display_addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        App {
            config,
            display_addr,
            store: Mutex::new(Store::default()),
            limiter: Mutex::new(Limiter::default()),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(FaultSet::default()),
            openapi: openapi::document(),
        }
    }

    /// `http://HOST/v1` as the client addressed us.
    fn base_url(&self, headers: &HeaderMap) -> String {
        match headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| plausible_host(h))
        {
            Some(host) => format!("http://{host}/v1"),
            None => format!("http://{}/v1", self.display_addr),
        }
    }

    /// Answers one request; `None` means "drop the connection without answering".
    pub(crate) async fn handle(
        self: Arc<Self>,
        req: Request<Body>,
        conn: Arc<ConnCtx>,
    ) -> Option<Response<Body>> {
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let outcome = AssertUnwindSafe(self.dispatch(req, &conn))
            .catch_unwind()
            .await;
        let resp = match outcome {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                debug!(%method, path = uri.path(), "dropping the connection without an answer (fault)");
                return None;
            }
            Err(_) => {
                error!(%method, path = uri.path(), "request handler panicked");
                internal_error("The simulator failed on this request")
            }
        };
        debug!(
            %method,
            path = uri.path(),
            status = resp.status().as_u16(),
            micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "request"
        );
        Some(resp)
    }

    async fn dispatch(&self, req: Request<Body>, conn: &ConnCtx) -> Option<Response<Body>> {
        match route(req.method(), req.uri().path()) {
            Route::Sim(r) => Some(self.sim(req, r).await),
            Route::OpenApi => {
                let mut doc = self.openapi.clone();
                if let Some(obj) = doc.as_object_mut() {
                    obj.insert(
                        "servers".to_owned(),
                        json!([
                            { "url": self.base_url(req.headers()), "description": "this simulator" },
                            { "url": "https://api.git.dev/v1", "description": "production" }
                        ]),
                    );
                }
                let resp = json_response(StatusCode::OK, &doc);
                lock(&self.stats).record(req.method(), T_OPENAPI, resp.status().as_u16(), None);
                Some(resp)
            }
            Route::Api { template, route } => self.api(req, template, route, conn).await,
        }
    }

    /// The public API: rate limit, faults, auth and scopes, then the endpoint.
    async fn api(
        &self,
        req: Request<Body>,
        template: &'static str,
        route: ApiRoute,
        conn: &ConnCtx,
    ) -> Option<Response<Body>> {
        let method = req.method().clone();
        let auth = authenticate(&self.config.tokens, req.headers());
        let (key, limit) = match &auth {
            Ok((secret, token)) => (BucketKey::Token(secret), self.config.token_limit(token)),
            Err(_) => (BucketKey::Ip(conn.peer.ip()), self.config.anonymous),
        };
        let plan = match &route {
            ApiRoute::Endpoint(e, _) => lock(&self.faults).plan(*e),
            _ => FaultPlan::default(),
        };
        if !plan.latency_before.is_zero() {
            tokio::time::sleep(plan.latency_before).await;
        }
        let decision = {
            let mut limiter = lock(&self.limiter);
            let now = Instant::now();
            if plan.force_429 {
                limiter.peek(key, limit, now, true)
            } else {
                limiter.try_take(key, limit, now)
            }
        };
        let mut resp = if decision.admitted {
            self.admitted(req, route, &auth, &plan).await
        } else {
            rate_limited(&decision)
        };
        add_rate_headers(&mut resp, &decision);
        // What a gateway between client and API does to the answer, after the API's work is done.
        if let Some(status) = plan.gateway {
            resp = gateway_page(status);
        }
        set_headers(&mut resp, &plan.headers);
        if plan.pad_bytes > 0 {
            resp = padded(resp, plan.pad_bytes);
        }
        if !plan.latency_after.is_zero() {
            tokio::time::sleep(plan.latency_after).await;
        }
        let token = auth.as_ref().ok().map(|(secret, _)| *secret);
        let status = if plan.drop {
            DROPPED
        } else {
            resp.status().as_u16()
        };
        lock(&self.stats).record(&method, template, status, token);
        (!plan.drop).then_some(resp)
    }

    /// Past the rate limit, in the documented order of checks (`docs/simulator.md`): route,
    /// token, scope, injected `500`, then the endpoint.
    async fn admitted(
        &self,
        req: Request<Body>,
        route: ApiRoute,
        auth: &Result<(&str, &TokenConfig), AuthError>,
        plan: &FaultPlan,
    ) -> Response<Body> {
        let (endpoint, id) = match route {
            ApiRoute::NotFound => return not_found_route(req.method(), req.uri().path()),
            ApiRoute::MethodNotAllowed(allow) => {
                return method_not_allowed(req.method(), req.uri().path(), allow);
            }
            ApiRoute::Endpoint(e, id) => (e, id),
        };
        let token = match auth {
            Ok((_, token)) => *token,
            Err(e) => return e.response(),
        };
        if let Some(denied) = check_scope(endpoint, token) {
            return denied;
        }
        if plan.error {
            return internal_error("Internal error (injected fault); please retry");
        }
        self.endpoint(req, endpoint, id, token).await
    }
}

/// A `Host` header is used for `logs_url` only when it looks like a host name and port.
fn plausible_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}
