//! One reconcile, run against the fake Deployments API and the mocked Kubernetes API server.

use super::*;

pub struct Harness {
    pub server: ApiServer,
    pub ctx: Arc<Context<FakeApi>>,
    pub timeline: Timeline,
}

impl Harness {
    /// The object, with the credentials Secret in its namespace.
    pub fn new(obj: GitDeployment) -> Self {
        let mut h = Self::without_secrets(obj);
        h.add_secret(CREDENTIALS, &[("token", TOKEN)]);
        h
    }

    pub fn without_secrets(obj: GitDeployment) -> Self {
        Self::beside(obj, Vec::new())
    }

    /// The object among `others`, which the operator's object cache holds too (the claims
    /// of other objects come from there).
    pub fn beside(obj: GitDeployment, others: Vec<GitDeployment>) -> Self {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, NS);
        let timeline = Timeline::default();
        let recorder = Recorder::new(client.clone(), "gitdev-operator", None);
        let config = Config {
            // Tests change remote state between reconciles at once; every reconcile lists afresh.
            observe_max_age: Duration::ZERO,
            ..Config::new(Key::new(FINGERPRINT_KEY))
        };
        let ctx = Context::new(
            client,
            FakeApi::new(timeline.clone()),
            recorder,
            Arc::new(Metrics::new()),
            config,
            Some(store_of(others.into_iter().chain([obj.clone()]))),
        );
        Harness {
            server: ApiServer {
                handle,
                cluster: Cluster {
                    object: serde_json::to_value(&obj).unwrap(),
                    secrets: BTreeMap::new(),
                    events: BTreeMap::new(),
                },
                timeline: timeline.clone(),
            },
            ctx: Arc::new(ctx),
            timeline,
        }
    }

    pub fn add_secret(&mut self, name: &str, data: &[(&str, &str)]) {
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

    pub fn api(&self) -> &FakeApi {
        &self.ctx.api
    }

    /// The object as the API server has it now.
    pub fn object(&self) -> GitDeployment {
        serde_json::from_value(self.server.cluster.object.clone())
            .expect("the stored object parses")
    }

    pub fn state(&self) -> State {
        State::read(&self.object(), &Key::new(FINGERPRINT_KEY)).0
    }

    pub fn status(&self) -> GitDeploymentStatus {
        self.object().status.unwrap_or_default()
    }

    /// Moves the recorded intent back beyond the settle window, as if the operator had been
    /// looking for a lost create for that long.
    pub fn let_the_settle_window_pass(&mut self) {
        let mut state = self.state();
        let intent = state.intent.as_mut().expect("an intent is recorded");
        intent.at = intent
            .at
            .checked_sub(crate::controller::recover::SETTLE_WINDOW + Duration::from_secs(1))
            .unwrap();
        let obj = with_state(self.object(), &state);
        self.server.cluster.object = serde_json::to_value(&obj).unwrap();
        self.server.cluster.bump();
    }

    /// A user's change of the object (new generation when the spec changes).
    pub fn edit(&mut self, f: impl FnOnce(&mut GitDeployment)) {
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
    pub async fn reconcile(&mut self, expected: Vec<Expect>) -> Result<Action, Error> {
        let obj = Arc::new(self.object());
        let ctx = self.ctx.clone();
        self.server.run(Some(expected), reconcile(obj, ctx)).await
    }

    /// One reconcile of `obj`, a copy of the object as the operator's cache may hold it
    /// (behind the API server's); its Kubernetes requests must be exactly `expected`.
    pub async fn reconcile_copy(
        &mut self,
        obj: GitDeployment,
        expected: Vec<Expect>,
    ) -> Result<Action, Error> {
        let ctx = self.ctx.clone();
        self.server
            .run(Some(expected), reconcile(Arc::new(obj), ctx))
            .await
    }

    /// One reconcile, serving whatever it asks of Kubernetes.
    pub async fn reconcile_freely(&mut self) -> Result<Action, Error> {
        let obj = Arc::new(self.object());
        let ctx = self.ctx.clone();
        self.server.run(None, reconcile(obj, ctx)).await
    }

    pub fn error_policy(&self, obj: &GitDeployment, error: &Error) -> Action {
        error_policy(Arc::new(obj.clone()), error, self.ctx.clone())
    }

    pub fn take_timeline(&self) -> Vec<String> {
        std::mem::take(&mut self.timeline.lock().unwrap())
    }

    /// The first reconcile of `Script::LoseAnswer`: the intent is recorded, the create is
    /// sent, its answer never arrives.
    pub async fn reconcile_losing_the_create_answer(&mut self) {
        self.reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())),
            Expect::status(|s| assert_health(s, "Reconciling", "CreationUnconfirmed")),
        ])
        .await
        .unwrap();
    }

    /// An object tracking `dep_1`, building, whose next GET fails with `status` and `code`.
    pub fn tracking_a_build_whose_get_fails(status: u16, code: &str) -> Self {
        let h = Harness::new(tracking(spec(json!({})), "dep_1"));
        h.api().add("main", None, Remote::Building);
        h.api().fail_next(Endpoint::Get, status, code);
        h
    }
}

fn store_of(
    objects: impl Iterator<Item = GitDeployment>,
) -> kube::runtime::reflector::Store<crate::controller::cached::Cached> {
    let (reader, mut writer) = kube::runtime::reflector::store();
    for o in objects {
        let cached = crate::controller::cached::Cached::of(o).unwrap();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cached));
    }
    reader
}
