//! The Deployments API in memory, with scripted answers and a record of every call.

use super::*;

pub fn note(timeline: &Timeline, entry: String) {
    timeline.lock().unwrap().push(entry);
}

/// A scripted answer for the next call of one endpoint.
pub enum Script {
    /// Answer this error; nothing happens remotely.
    Fail(ApiError),
    /// Create: make the deployment, then lose the answer (`ApiError::OutcomeUnknown`).
    LoseAnswer,
    /// A bug: the call panics.
    Panic,
}

#[derive(Default)]
pub struct FakeState {
    /// Oldest first.
    pub deployments: Vec<DeploymentDetails>,
    pub next_id: u64,
    pub scripts: HashMap<Endpoint, VecDeque<Script>>,
    /// Calls not yet taken by `take_calls`, as `"endpoint [id]"`.
    pub calls: Vec<String>,
    pub tokens: Vec<String>,
    pub creates: Vec<CreateDeploymentRequest>,
    /// Build logs by deployment id; `"logs of <id>"` when none is set.
    pub logs: HashMap<String, String>,
    /// Answers of the next `reserve_create` calls (then: budget at once).
    pub budget_refusals: VecDeque<ApiError>,
    /// Others wait for the token's budget: `room` says none, `get_if_idle` is refused.
    pub budget_busy: bool,
    /// The budget has room to spare but not plenty (`room` says `Spare`).
    pub budget_spare_only: bool,
    /// Set: a listing waits for a permit of this before it answers (one waiting for budget).
    pub list_held: Option<Arc<tokio::sync::Semaphore>>,
}

/// The Deployments API in memory, behaving like the real one unless scripted otherwise:
/// create → queued `dep_N`; get → the stored details or 404; cancel only from in progress
/// (else 409 `not_cancellable`); delete → 204, then 404. Timestamps have whole seconds, as
/// the API sends them.
pub struct FakeApi {
    pub inner: Mutex<FakeState>,
    pub timeline: Timeline,
    /// Set: this replica lost the leader Lease (`may_write` says no).
    pub lease_lost: std::sync::atomic::AtomicBool,
}

pub fn api_error(endpoint: Endpoint, status: u16, code: &str) -> ApiError {
    ApiError::Status {
        endpoint,
        status,
        code: code.into(),
        message: format!("fake API says {code}"),
        details: Default::default(),
        retry_after: None,
    }
}

pub fn wire_now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap()
}

impl FakeApi {
    pub fn new(timeline: Timeline) -> Self {
        FakeApi {
            inner: Mutex::default(),
            timeline,
            lease_lost: Default::default(),
        }
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.lock().unwrap()
    }

    /// The next call of `endpoint` answers `script` (queued after earlier scripts).
    pub fn script(&self, endpoint: Endpoint, script: Script) {
        self.state()
            .scripts
            .entry(endpoint)
            .or_default()
            .push_back(script);
    }

    pub fn fail_next(&self, endpoint: Endpoint, status: u16, code: &str) {
        self.script(endpoint, Script::Fail(api_error(endpoint, status, code)));
    }

    /// A deployment made by someone else (or earlier), on `branch` at `commit`.
    pub fn add(&self, branch: &str, commit: Option<&str>, status: Remote) -> String {
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
    pub fn set_status(&self, id: &str, status: Remote) {
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
    pub fn remove(&self, id: &str) {
        self.state().deployments.retain(|d| d.id != id);
    }

    pub fn deployment(&self, id: &str) -> Option<DeploymentDetails> {
        self.state()
            .deployments
            .iter()
            .find(|d| d.id == id)
            .cloned()
    }

    pub fn ids(&self) -> Vec<String> {
        self.state()
            .deployments
            .iter()
            .map(|d| d.id.clone())
            .collect()
    }

    /// Calls since the last `take_calls`, as `"create"`, `"get dep_1"`, ….
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.state().calls)
    }

    pub fn tokens(&self) -> Vec<String> {
        self.state().tokens.clone()
    }

    pub fn creates(&self) -> Vec<CreateDeploymentRequest> {
        self.state().creates.clone()
    }

    /// Records the call and takes the script for it, if any.
    pub fn enter(&self, endpoint: Endpoint, id: Option<&str>, token: &ApiToken) -> Option<Script> {
        let call = match id {
            Some(id) => format!("{} {id}", endpoint.as_str()),
            None => endpoint.as_str().to_string(),
        };
        note(&self.timeline, format!("api {call}"));
        let mut st = self.state();
        st.calls.push(call.clone());
        st.tokens.push(token.expose().to_string());
        let script = st.scripts.get_mut(&endpoint).and_then(VecDeque::pop_front);
        drop(st);
        if let Some(Script::Panic) = script {
            panic!("scripted panic in {call}");
        }
        script
    }

    pub fn make(st: &mut FakeState, request: &CreateDeploymentRequest) -> CreatedDeployment {
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

    pub fn not_found(endpoint: Endpoint) -> ApiError {
        api_error(endpoint, 404, "not_found")
    }
}

impl DeploymentsApi for FakeApi {
    async fn reserve_create(&self, _token: &ApiToken) -> Result<CreateSlot, ApiError> {
        match self.state().budget_refusals.pop_front() {
            Some(refusal) => Err(refusal),
            None => Ok(CreateSlot::unbudgeted()),
        }
    }

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
            // `enter` panics on `Script::Panic` before this point.
            Some(Script::LoseAnswer | Script::Panic) => {
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
        let held = self.state().list_held.clone();
        if let Some(gate) = held {
            gate.acquire().await.expect("the gate stays open").forget();
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

    async fn get_if_idle(&self, token: &ApiToken, id: &str) -> Result<DeploymentDetails, ApiError> {
        if self.state().budget_busy {
            return Err(ApiError::Throttled {
                endpoint: Endpoint::Get,
                retry_after: Duration::from_secs(1),
            });
        }
        self.get(token, id).await
    }

    fn room(&self, _token: &ApiToken) -> Room {
        let st = self.state();
        if st.budget_busy {
            Room::None
        } else if st.budget_spare_only {
            Room::Spare
        } else {
            Room::Ample
        }
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
        let log = self.state().logs.get(id).cloned();
        self.deployment(id)
            .map(|d| log.unwrap_or_else(|| format!("logs of {}", d.id)))
            .ok_or_else(|| Self::not_found(Endpoint::Logs))
    }

    fn may_write(&self) -> bool {
        !self.lease_lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}
