//! The git.dev Deployments API: wire types, errors, the HTTP client and its rate budget.
//!
//! The reconciler talks to the API only through [`DeploymentsApi`], so that it can be tested
//! against a fake without HTTP.
//!
//! * `client`: sending, rate budget waits and retries over HTTP;
//! * `classify`: what an answer means (success, retry, 429, unknown outcome, final error);
//! * `pages`: reading a listing page by page, for any [`DeploymentsApi`];
//! * `ratelimit`: the process-wide budget of each token; `types`, `error`: wire and error types.

mod classify;
pub mod client;
pub mod error;
pub mod pages;
pub mod ratelimit;
pub mod types;

use std::fmt;
use std::future::Future;

pub use client::{ApiObserver, ClientConfig, HttpClient, RetryPolicy};
pub use error::{ApiError, ErrorClass};
pub use pages::{list_newest_back_to, list_status_back_to};
pub use ratelimit::{BudgetSnapshot, RateLimiter};
pub use types::*;

/// The endpoints of the API, as metric labels and in error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Create,
    List,
    Get,
    Cancel,
    Delete,
    Logs,
}

impl Endpoint {
    pub const ALL: [Endpoint; 6] = [
        Self::Create,
        Self::List,
        Self::Get,
        Self::Cancel,
        Self::Delete,
        Self::Logs,
    ];

    /// Stable label for metrics: `create`, `list`, `get`, `cancel`, `delete`, `logs`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::List => "list",
            Self::Get => "get",
            Self::Cancel => "cancel",
            Self::Delete => "delete",
            Self::Logs => "logs",
        }
    }

    /// Human form used in messages, e.g. `POST /deployments`.
    pub fn route(self) -> &'static str {
        match self {
            Self::Create => "POST /deployments",
            Self::List => "GET /deployments",
            Self::Get => "GET /deployments/{id}",
            Self::Cancel => "POST /deployments/{id}/cancel",
            Self::Delete => "DELETE /deployments/{id}",
            Self::Logs => "GET /deployments/{id}/logs",
        }
    }

    /// Safe to repeat: the server state after two calls equals the state after one. Decides
    /// whether a call that may have reached the server is sent again after a fault.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Self::Create)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.route())
    }
}

/// An API token. It is only ever sent in the `Authorization` header: `Debug` and `Display`
/// print a redacted form, so it cannot reach a log by accident. Shared, not copied: every
/// object remembers the token that last worked for it, and the per-token maps key by it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ApiToken(std::sync::Arc<str>);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How urgent a call is when the token's rate budget is short. Removing or stopping remote
/// work and starting what users asked for come before observing what is already known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// GET / logs of one deployment whose state we already mirror.
    Observe = 0,
    /// A listing: one call observes up to 100 deployments, so it goes before single GETs.
    Survey = 1,
    /// Create.
    Create = 2,
    /// Cancel and delete.
    Act = 3,
}

impl Endpoint {
    pub fn default_priority(self) -> Priority {
        match self {
            Self::Cancel | Self::Delete => Priority::Act,
            Self::Create => Priority::Create,
            Self::List => Priority::Survey,
            Self::Get | Self::Logs => Priority::Observe,
        }
    }
}

/// A create's share of its token's rate budget, taken before anything about the create is
/// written (see [`DeploymentsApi::reserve_create`]). Dropped unused, it gives the share back.
#[derive(Debug)]
#[must_use]
pub struct CreateSlot(Option<ratelimit::Permit>);

impl CreateSlot {
    /// A slot that holds no budget: the create waits for its own when it is sent.
    pub fn unbudgeted() -> Self {
        Self(None)
    }

    pub fn budgeted(permit: ratelimit::Permit) -> Self {
        Self(Some(permit))
    }

    /// The budget held, to be spent by the create's first attempt.
    pub fn into_permit(mut self) -> Option<ratelimit::Permit> {
        self.0.take()
    }
}

impl Drop for CreateSlot {
    fn drop(&mut self) {
        if let Some(permit) = self.0.take() {
            permit.unused();
        }
    }
}

/// How much of a token's rate budget is free for spending that can wait (observation, details),
/// from least to most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Room {
    /// Someone waits for the budget, or less than a tenth of its burst is there: what is sent
    /// now is a create later.
    None,
    /// A tenth of the burst or more, and nobody waiting.
    Spare,
    /// Half the burst or more, and nobody waiting: a budget not spent as fast as it refills.
    Ample,
}

/// The calls the operator makes. Every call names the token it spends, because the operator
/// serves objects of many namespaces with different tokens.
pub trait DeploymentsApi: Send + Sync + 'static {
    fn create(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
    ) -> impl Future<Output = Result<CreatedDeployment, ApiError>> + Send;

    /// Waits (at most the client's budget patience) for a create's share of `token`'s rate
    /// budget, so that an object records its intent to create only once it can send the
    /// create: one waiting for budget writes nothing meanwhile. Refused with
    /// [`ApiError::Throttled`] when the wait would be longer.
    fn reserve_create(
        &self,
        token: &ApiToken,
    ) -> impl Future<Output = Result<CreateSlot, ApiError>> + Send {
        let _ = token;
        std::future::ready(Ok(CreateSlot::unbudgeted()))
    }

    /// [`Self::create`], spending the budget `slot` holds.
    fn create_with(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
        slot: CreateSlot,
    ) -> impl Future<Output = Result<CreatedDeployment, ApiError>> + Send {
        drop(slot);
        self.create(token, request)
    }

    fn list(
        &self,
        token: &ApiToken,
        query: &ListQuery,
    ) -> impl Future<Output = Result<DeploymentList, ApiError>> + Send;

    fn get(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<DeploymentDetails, ApiError>> + Send;

    /// [`Self::get`], sent only if `token`'s rate budget has room now and nobody waits for
    /// it; else refused at once with [`ApiError::Throttled`], nothing sent. For a read worth
    /// making only when it costs no other call a wait: the completion details of a deployment
    /// that just finished, read before its object is marked Ready, so that one status write
    /// says both.
    ///
    /// No default: a wrapper that fell back to [`Self::get`] would wait for budget where the
    /// caller counts on not waiting (the leader fence once did, and Pro 1,000 took twice its
    /// floor).
    fn get_if_idle(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<DeploymentDetails, ApiError>> + Send;

    /// How much room `token`'s rate budget has now for spending that can wait: none while
    /// anyone waits for it (the token's creates, if any, are not held back by what else it is
    /// spent on). No default, for the reason given at [`Self::get_if_idle`].
    fn room(&self, token: &ApiToken) -> Room;

    fn cancel(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<CancelledDeployment, ApiError>> + Send;

    /// `Ok(())` on 204. A 404 is returned as an error; callers that treat it as done say so.
    fn delete(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn logs(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<String, ApiError>> + Send;

    /// Whether this process may write now. A replica that lost the leader Lease must not
    /// write to Kubernetes either: a reconcile it had under way when it froze would put its
    /// stale view over the new leader's status.
    fn may_write(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_prints_itself() {
        let t = ApiToken::new("sk_live_secret");
        assert!(!format!("{t:?} {t}").contains("sk_live_secret"));
        assert_eq!(t.expose(), "sk_live_secret");
    }
}
