//! Batched observation: the in-flight deployments of one token are observed through the list
//! endpoint, one call covering up to 100 of them, instead of one GET per object per tick.
//!
//! Every reconcile of an in-flight deployment asks for its status no older than some age;
//! the first to find the token's view too old refreshes it for everyone (single flight), the
//! others read the result. The rate budget is the product's hard limit, so this is what lets a
//! thousand objects converge without polling each one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;

use crate::api::{
    ApiError, ApiToken, DeploymentStatus, DeploymentSummary, DeploymentsApi, ListQuery,
};

/// What the last listing said of one deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Status(DeploymentStatus),
    /// The listing covered its creation time and it was not there: deleted.
    Absent,
}

#[derive(Default)]
pub struct Observer {
    tokens: Mutex<HashMap<ApiToken, Arc<TokenView>>>,
}

#[derive(Default)]
struct TokenView {
    /// Held while refreshing, so that one listing serves every waiter.
    refresh: tokio::sync::Mutex<()>,
    view: Mutex<View>,
}

#[derive(Default)]
struct View {
    refreshed: Option<Instant>,
    /// Oldest creation time the last listing reached back to.
    covered_since: Option<Timestamp>,
    seen: HashMap<String, DeploymentStatus>,
    /// Deployments someone waits on, by creation time: how far back a listing must go.
    wanted: HashMap<String, Timestamp>,
}

impl View {
    fn answer(&self, id: &str, created_at: Timestamp) -> Option<Seen> {
        match self.seen.get(id) {
            Some(s) => Some(Seen::Status(*s)),
            None if self.covered_since.is_some_and(|c| c <= created_at) => Some(Seen::Absent),
            None => None,
        }
    }
}

impl Observer {
    fn view(&self, token: &ApiToken) -> Arc<TokenView> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.entry(token.clone()).or_default().clone()
    }

    /// The status of deployment `id` (created at `created_at`) as listed at most `max_age` ago.
    /// `Ok(None)` when no listing could place it (then a GET decides).
    pub async fn status<A: DeploymentsApi>(
        &self,
        api: &A,
        token: &ApiToken,
        id: &str,
        created_at: Timestamp,
        max_age: Duration,
    ) -> Result<Option<Seen>, ApiError> {
        let tv = self.view(token);
        let fresh = |v: &View| v.refreshed.is_some_and(|t| t.elapsed() <= max_age);
        {
            let mut v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
            v.wanted.insert(id.to_string(), created_at);
            if fresh(&v)
                && let Some(seen) = v.answer(id, created_at)
            {
                return Ok(Some(seen));
            }
        }
        let _flight = tv.refresh.lock().await;
        {
            // Someone else refreshed while we waited for the flight.
            let v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
            if fresh(&v)
                && let Some(seen) = v.answer(id, created_at)
            {
                return Ok(Some(seen));
            }
        }
        let oldest = {
            let v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
            v.wanted.values().min().copied().unwrap_or(created_at)
        };
        let (seen, covered_since) = list_back_to(api, token, oldest).await?;
        let mut v = tv.view.lock().unwrap_or_else(|e| e.into_inner());
        v.refreshed = Some(Instant::now());
        v.covered_since = covered_since;
        v.seen = seen;
        // Finished and vanished deployments need no more listing on their account.
        let View {
            seen,
            wanted,
            covered_since,
            ..
        } = &mut *v;
        wanted.retain(|wid, at| match seen.get(wid) {
            Some(s) => !s.is_terminal(),
            None => !covered_since.is_some_and(|c| c <= *at),
        });
        Ok(v.answer(id, created_at))
    }

    /// Whether deployments of `token` are still being waited on: reading details of finished
    /// ones can wait until the listing that tells the others they finished has run.
    pub fn in_flight(&self, token: &ApiToken) -> bool {
        let tv = self.view(token);
        !tv.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wanted
            .is_empty()
    }

    /// Stop tracking `id` (its object no longer waits on it).
    pub fn forget(&self, token: &ApiToken, id: &str) {
        let tv = self.view(token);
        tv.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wanted
            .remove(id);
    }
}

/// Lists newest first until the page reaches back before `oldest` (or the list ends).
async fn list_back_to<A: DeploymentsApi>(
    api: &A,
    token: &ApiToken,
    oldest: Timestamp,
) -> Result<(HashMap<String, DeploymentStatus>, Option<Timestamp>), ApiError> {
    let rows = list_newest_back_to(api, token, oldest).await?;
    let covered_since = match rows.last() {
        // Creation times are whole seconds: a deployment created in the same second as the
        // last row may be on the next page, so coverage starts one second later.
        Some(last) if last.created_at < oldest => Some(last.created_at + Duration::from_secs(1)),
        _ => Some(Timestamp::MIN),
    };
    Ok((
        rows.into_iter().map(|d| (d.id, d.status)).collect(),
        covered_since,
    ))
}

/// Every deployment of the token's project, newest first, page by page (100 a call) until a
/// page reaches back before `oldest` or the list ends. The last page may hold older rows.
pub async fn list_newest_back_to<A: DeploymentsApi>(
    api: &A,
    token: &ApiToken,
    oldest: Timestamp,
) -> Result<Vec<DeploymentSummary>, ApiError> {
    let mut rows = Vec::new();
    let mut offset = 0u64;
    loop {
        let query = ListQuery {
            limit: Some(100),
            offset: Some(offset),
            status: None,
        };
        let page = api.list(token, &query).await?;
        offset += page.data.len() as u64;
        let reached = page.data.last().is_some_and(|d| d.created_at < oldest);
        let exhausted = page.data.is_empty() || offset >= page.meta.total;
        rows.extend(page.data);
        if reached || exhausted {
            return Ok(rows);
        }
    }
}
