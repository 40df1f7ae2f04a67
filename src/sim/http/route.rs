//! Which handler a request goes to, from its method and path.
//!
//! Done by hand on the path segments instead of with `axum::Router`: the pipeline needs the
//! route before anything else (stats, fault filters, 404/405 with `Allow`), and no extractor
//! rejection of axum can leak a text error this way.

use axum::http::Method;

use crate::api::Endpoint;

/// Route templates: the stats count requests by these, never by the concrete path.
const T_DEPLOYMENTS: &str = "/v1/deployments";
const T_DEPLOYMENT: &str = "/v1/deployments/{id}";
const T_CANCEL: &str = "/v1/deployments/{id}/cancel";
const T_LOGS: &str = "/v1/deployments/{id}/logs";
pub(super) const T_OPENAPI: &str = "/v1/openapi.json";
const T_UNMATCHED: &str = "(unmatched)";

#[derive(Debug)]
pub(super) enum ApiRoute {
    Endpoint(Endpoint, String),
    NotFound,
    MethodNotAllowed(&'static str),
}

#[derive(Debug)]
pub(super) enum SimRoute {
    Stats,
    StatsReset,
    Deployments,
    Deployment(String),
    DeploymentDelete(String),
    DeploymentCancel(String),
    FaultsGet,
    FaultsPut,
    FaultsDelete,
    Health,
    NotFound,
    MethodNotAllowed(&'static str),
}

#[derive(Debug)]
pub(super) enum Route {
    Api {
        template: &'static str,
        route: ApiRoute,
    },
    OpenApi,
    Sim(SimRoute),
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding (and `+` as space when `plus` is set). Malformed escapes stay as they are;
/// invalid UTF-8 is replaced, which can only make a lookup fail.
pub(super) fn percent_decode(s: &str, plus: bool) -> String {
    if !s.bytes().any(|b| b == b'%' || (plus && b == b'+')) {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn route(method: &Method, path: &str) -> Route {
    if let Some(rest) = path.strip_prefix("/_sim/") {
        return Route::Sim(sim_route(method, rest));
    }
    let api = |template, route| Route::Api { template, route };
    let Some(rest) = path.strip_prefix("/v1/") else {
        return api(T_UNMATCHED, ApiRoute::NotFound);
    };
    let mut it = rest.split('/');
    let segs = (it.next(), it.next(), it.next(), it.next());
    let m = method;
    match segs {
        (Some("deployments"), None, _, _) => match *m {
            Method::GET => api(
                T_DEPLOYMENTS,
                ApiRoute::Endpoint(Endpoint::List, String::new()),
            ),
            Method::POST => api(
                T_DEPLOYMENTS,
                ApiRoute::Endpoint(Endpoint::Create, String::new()),
            ),
            _ => api(T_DEPLOYMENTS, ApiRoute::MethodNotAllowed("GET, POST")),
        },
        (Some("deployments"), Some(id), None, _) if !id.is_empty() => match *m {
            Method::GET => api(
                T_DEPLOYMENT,
                ApiRoute::Endpoint(Endpoint::Get, percent_decode(id, false)),
            ),
            Method::DELETE => api(
                T_DEPLOYMENT,
                ApiRoute::Endpoint(Endpoint::Delete, percent_decode(id, false)),
            ),
            _ => api(T_DEPLOYMENT, ApiRoute::MethodNotAllowed("GET, DELETE")),
        },
        (Some("deployments"), Some(id), Some("cancel"), None) if !id.is_empty() => match *m {
            Method::POST => api(
                T_CANCEL,
                ApiRoute::Endpoint(Endpoint::Cancel, percent_decode(id, false)),
            ),
            _ => api(T_CANCEL, ApiRoute::MethodNotAllowed("POST")),
        },
        (Some("deployments"), Some(id), Some("logs"), None) if !id.is_empty() => match *m {
            Method::GET => api(
                T_LOGS,
                ApiRoute::Endpoint(Endpoint::Logs, percent_decode(id, false)),
            ),
            _ => api(T_LOGS, ApiRoute::MethodNotAllowed("GET")),
        },
        (Some("openapi.json"), None, _, _) => match *m {
            Method::GET => Route::OpenApi,
            _ => api(T_OPENAPI, ApiRoute::MethodNotAllowed("GET")),
        },
        _ => api(T_UNMATCHED, ApiRoute::NotFound),
    }
}

fn sim_route(m: &Method, rest: &str) -> SimRoute {
    let mut it = rest.split('/');
    let segs = (it.next(), it.next(), it.next(), it.next());
    match segs {
        (Some("stats"), None, _, _) => match *m {
            Method::GET => SimRoute::Stats,
            _ => SimRoute::MethodNotAllowed("GET"),
        },
        (Some("stats"), Some("reset"), None, _) => match *m {
            Method::POST => SimRoute::StatsReset,
            _ => SimRoute::MethodNotAllowed("POST"),
        },
        (Some("deployments"), None, _, _) => match *m {
            Method::GET => SimRoute::Deployments,
            _ => SimRoute::MethodNotAllowed("GET"),
        },
        (Some("deployments"), Some(id), None, _) if !id.is_empty() => match *m {
            Method::GET => SimRoute::Deployment(percent_decode(id, false)),
            Method::DELETE => SimRoute::DeploymentDelete(percent_decode(id, false)),
            _ => SimRoute::MethodNotAllowed("GET, DELETE"),
        },
        (Some("deployments"), Some(id), Some("cancel"), None) if !id.is_empty() => match *m {
            Method::POST => SimRoute::DeploymentCancel(percent_decode(id, false)),
            _ => SimRoute::MethodNotAllowed("POST"),
        },
        (Some("faults"), None, _, _) => match *m {
            Method::GET => SimRoute::FaultsGet,
            Method::PUT => SimRoute::FaultsPut,
            Method::DELETE => SimRoute::FaultsDelete,
            _ => SimRoute::MethodNotAllowed("GET, PUT, DELETE"),
        },
        (Some("health"), None, _, _) => match *m {
            Method::GET => SimRoute::Health,
            _ => SimRoute::MethodNotAllowed("GET"),
        },
        _ => SimRoute::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve_to_endpoints_with_decoded_ids() {
        match route(&Method::GET, "/v1/deployments/dep%5Fabc") {
            Route::Api {
                template,
                route: ApiRoute::Endpoint(Endpoint::Get, id),
            } => {
                assert_eq!(template, T_DEPLOYMENT);
                assert_eq!(id, "dep_abc");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            route(&Method::PATCH, "/v1/deployments"),
            Route::Api {
                route: ApiRoute::MethodNotAllowed("GET, POST"),
                ..
            }
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/deployments/x/y"),
            Route::Api {
                route: ApiRoute::NotFound,
                ..
            }
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/deployments/"),
            Route::Api {
                route: ApiRoute::NotFound,
                ..
            }
        ));
        assert!(matches!(
            route(&Method::GET, "/v1/openapi.json"),
            Route::OpenApi
        ));
        assert!(matches!(
            route(&Method::PUT, "/_sim/faults"),
            Route::Sim(SimRoute::FaultsPut)
        ));
    }

    #[test]
    fn percent_decoding_handles_malformed_escapes() {
        assert_eq!(percent_decode("a%20b", false), "a b");
        assert_eq!(percent_decode("a+b", true), "a b");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(percent_decode("%zz", false), "%zz");
        assert_eq!(percent_decode("%4", false), "%4");
    }
}
