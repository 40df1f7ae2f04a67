//! Fencing: a replica writes to the Deployments API (create, cancel, delete) only while it
//! holds the leader Lease, checked at the moment of each write, so that a replica that was
//! frozen or cut off and woke up after losing the Lease cannot act next to the new leader.
//!
//! `Fenced` wraps any `DeploymentsApi`: reads pass through, writes are refused with a
//! transport error that says nothing was sent (a create refused this way leaves no intent
//! behind: nothing can have been made).

use std::future::Future;
use tokio::time::Instant;

use tokio::sync::watch;

use crate::api::{
    ApiError, ApiToken, CancelledDeployment, CreateDeploymentRequest, CreateSlot,
    CreatedDeployment, DeploymentDetails, DeploymentList, DeploymentsApi, Endpoint, ListQuery,
    Room,
};

/// Whether this replica may write now.
#[derive(Clone, Debug)]
pub struct Fence(Option<watch::Receiver<Option<Instant>>>);

impl Fence {
    /// No leader election: the only replica always may.
    pub fn open() -> Self {
        Fence(None)
    }

    /// Follows this replica's leadership as the instant until which it may write: its last
    /// renewal of the Lease plus the renew deadline (`None`: not leading). The deadline is
    /// compared with the clock at each write, not when a task last got to run, so that a
    /// replica frozen past its deadline writes nothing the moment it wakes.
    pub fn until(valid_until: watch::Receiver<Option<Instant>>) -> Self {
        Fence(Some(valid_until))
    }

    pub fn holds(&self) -> bool {
        match &self.0 {
            None => true,
            Some(until) => until.borrow().is_some_and(|t| Instant::now() < t),
        }
    }

    /// The fence as a gate the HTTP client asks right before it sends a write, after any wait
    /// for rate budget (`ClientConfig::write_gate`).
    pub fn gate(&self) -> std::sync::Arc<dyn Fn() -> bool + Send + Sync> {
        let fence = self.clone();
        std::sync::Arc::new(move || fence.holds())
    }

    /// Refuses, with an error that says nothing was sent, when the fence does not hold.
    pub fn check(&self, endpoint: Endpoint) -> Result<(), ApiError> {
        if self.holds() {
            Ok(())
        } else {
            Err(ApiError::Transport {
                endpoint,
                message: "not sent: this replica does not hold the leader Lease".into(),
            })
        }
    }
}

/// A `DeploymentsApi` whose writes pass only while the fence holds.
pub struct Fenced<A> {
    pub inner: A,
    pub fence: Fence,
}

impl<A: DeploymentsApi> DeploymentsApi for Fenced<A> {
    async fn create(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
    ) -> Result<CreatedDeployment, ApiError> {
        self.fence.check(Endpoint::Create)?;
        self.inner.create(token, request).await
    }

    fn reserve_create(
        &self,
        token: &ApiToken,
    ) -> impl Future<Output = Result<CreateSlot, ApiError>> + Send {
        self.inner.reserve_create(token)
    }

    async fn create_with(
        &self,
        token: &ApiToken,
        request: &CreateDeploymentRequest,
        slot: CreateSlot,
    ) -> Result<CreatedDeployment, ApiError> {
        self.fence.check(Endpoint::Create)?;
        self.inner.create_with(token, request, slot).await
    }

    fn list(
        &self,
        token: &ApiToken,
        query: &ListQuery,
    ) -> impl Future<Output = Result<DeploymentList, ApiError>> + Send {
        self.inner.list(token, query)
    }

    fn get(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<DeploymentDetails, ApiError>> + Send {
        self.inner.get(token, id)
    }

    fn get_if_idle(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<DeploymentDetails, ApiError>> + Send {
        self.inner.get_if_idle(token, id)
    }

    fn room(&self, token: &ApiToken) -> Room {
        self.inner.room(token)
    }

    async fn cancel(&self, token: &ApiToken, id: &str) -> Result<CancelledDeployment, ApiError> {
        self.fence.check(Endpoint::Cancel)?;
        self.inner.cancel(token, id).await
    }

    async fn delete(&self, token: &ApiToken, id: &str) -> Result<(), ApiError> {
        self.fence.check(Endpoint::Delete)?;
        self.inner.delete(token, id).await
    }

    fn logs(
        &self,
        token: &ApiToken,
        id: &str,
    ) -> impl Future<Output = Result<String, ApiError>> + Send {
        self.inner.logs(token, id)
    }

    fn may_write(&self) -> bool {
        self.fence.holds() && self.inner.may_write()
    }
}
