//! Creating: the first reconciles of an object, exactly-once creates, adoption by annotation.

use super::support::*;

/// What a first create does, in order: the intent is durable before the create is sent, and
/// the id right after.
const FIRST_CREATE: [&str; 6] = [
    "k8s get secret gitdev-credentials",
    "k8s write state",
    "api create",
    "k8s write state",
    "k8s event Normal Created",
    "k8s write status",
];

#[tokio::test]
async fn a_new_object_gets_its_finalizer_with_the_intent_of_its_first_create_before_anything_is_sent()
 {
    let mut o = object(spec(json!({})));
    o.metadata.finalizers = None;
    let mut h = Harness::new(o);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::state(|s| assert!(s.intent.is_some(), "the intent of the first create"))
            .with_finalizers(&[FINALIZER]),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();

    assert_eq!(
        h.take_timeline(),
        FIRST_CREATE,
        "no write and no watch round trip of its own for the finalizer"
    );
    assert_eq!(
        h.object().metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
}

#[tokio::test]
async fn a_new_object_that_creates_nothing_gets_no_finalizer_until_it_has_something_to_clean_up() {
    let mut o = object(spec(json!({})));
    o.metadata.finalizers = Some(vec!["example.com/other".into()]);
    let mut h = Harness::without_secrets(o);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event("Warning", "CredentialsNotFound"),
        Expect::status(|s| assert_health(s, "Stalled", "CredentialsNotFound")),
    ])
    .await
    .unwrap();
    assert_eq!(
        h.object().metadata.finalizers,
        Some(vec!["example.com/other".to_string()])
    );
}

#[tokio::test]
async fn an_object_that_names_a_deployment_gets_its_finalizer_before_its_status() {
    let mut o = tracking(spec(json!({})), "dep_1");
    o.metadata.finalizers = Some(vec!["example.com/other".into()]);
    let mut h = Harness::new(o);
    h.api().add("main", None, Remote::Building);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::new("k8s add finalizer").with(|req, _| {
            assert_eq!(
                req.body,
                json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/other"]},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
                ]),
                "appended, guarded by a test of the list as read"
            );
        }),
        Expect::status(|s| assert_health(s, "Reconciling", "Building")),
    ])
    .await
    .unwrap();
    assert_eq!(
        h.object().metadata.finalizers,
        Some(vec!["example.com/other".to_string(), FINALIZER.to_string()])
    );
}

#[tokio::test]
async fn a_first_reconcile_records_the_intent_then_creates_then_records_the_id_and_reports_queued()
{
    let s = spec(json!({}));
    let fp = fingerprint(&s);
    let mut h = Harness::new(object(s));

    let (fp1, fp2) = (fp.clone(), fp.clone());
    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(move |s| {
                let intent = s.intent.as_ref().expect("an intent before the create");
                assert_eq!(intent.fingerprint, fp1);
                assert_eq!(s.id, None, "no id before the create answered");
            }),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_1"));
                assert_eq!(s.fingerprint.as_deref(), Some(fp2.as_str()));
                assert_eq!(s.intent, None, "the intent is resolved with the id");
            }),
            Expect::event_noting("Normal", "Created", &["dep_1", "main"]),
            Expect::status(move |s| {
                assert_health(s, "Reconciling", "Queued");
                assert_eq!(s.deployment_id.as_deref(), Some("dep_1"));
                assert_eq!(s.url.as_deref(), Some("https://dep_1.git.dev"));
                assert_eq!(s.status.as_deref(), Some("queued"));
                assert_eq!(s.commit_sha.as_deref(), Some(HEAD));
                assert_eq!(s.short_commit.as_deref(), Some(&HEAD[..7]));
                assert_eq!(s.spec_fingerprint.as_deref(), Some(fp.as_str()));
                assert_eq!(s.observed_generation, Some(1));
            }),
        ])
        .await
        .unwrap();

    assert_eq!(
        h.take_timeline(),
        FIRST_CREATE,
        "the intent is durable before the create is sent, and the id right after"
    );
    assert_requeue_between(&action, secs(2.0), secs(2.2));
    assert_eq!(
        h.api().creates()[0],
        CreateDeploymentRequest {
            project_id: PROJECT.into(),
            branch: "main".into(),
            commit_sha: None,
            env_vars: None,
        }
    );
    assert_eq!(
        h.api().tokens(),
        [TOKEN],
        "the token of the Secret is spent"
    );
    assert_eq!(h.state().id.as_deref(), Some("dep_1"));
}

#[tokio::test]
async fn status_is_not_written_again_when_nothing_changed() {
    let s = spec(json!({}));
    let mut h = Harness::new(tracking(s, "dep_1"));
    h.api().add("main", None, Remote::Queued);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| {
            assert_health(s, "Reconciling", "Queued");
            assert_eq!(
                s.logs_url.as_deref(),
                Some("https://api.git.dev/v1/deployments/dep_1/logs")
            );
        }),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1"]);

    // Same remote state, and the object now carries the status it would get: no write at all.
    let action = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap();
    // In flight and mirrored: observed through the shared listing, not a GET of its own.
    assert_eq!(h.api().take_calls(), ["list"]);
    assert_requeue_between(&action, secs(2.0), secs(2.2));

    // Progress is written once.
    h.api().set_status("dep_1", Remote::Building);
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| {
            assert_health(s, "Reconciling", "Building");
            assert_eq!(s.status.as_deref(), Some("building"));
        }),
    ])
    .await
    .unwrap();
    h.reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .unwrap();
}

#[tokio::test]
async fn env_from_secrets_are_read_and_sent_with_the_create_but_never_stored_in_clear() {
    let s = spec(json!({
        "envVars": {"MODE": "prod"},
        "envFrom": [{"secretRef": {"name": "app-env"}, "prefix": "APP_"}],
    }));
    let mut h = Harness::new(object(s));
    h.add_secret("app-env", &[("PASSWORD", "hunter2")]);

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::get_secret("app-env"),
        Expect::state(|s| assert!(s.intent.is_some())),
        Expect::state(|s| assert_eq!(s.id.as_deref(), Some("dep_1"))),
        Expect::event("Normal", "Created"),
        Expect::status(|s| assert_health(s, "Reconciling", "Queued")),
    ])
    .await
    .unwrap();

    let env = h.api().creates()[0].env_vars.clone().unwrap();
    assert_eq!(
        env,
        BTreeMap::from([
            ("APP_PASSWORD".to_string(), "hunter2".to_string()),
            ("MODE".to_string(), "prod".to_string())
        ])
    );
    let stored = serde_json::to_string(&h.object()).unwrap();
    assert!(
        !stored.contains("hunter2"),
        "a secret value reached the object: {stored}"
    );
}

#[tokio::test]
async fn a_create_is_not_sent_when_the_intent_cannot_be_recorded() {
    let mut h = Harness::new(object(spec(json!({}))));

    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(|s| assert!(s.intent.is_some())).fails(409),
            Expect::event_noting("Warning", "ApiUnavailable", &["not sent"]),
            Expect::status(|s| assert_health(s, "Reconciling", "ApiUnavailable")),
        ])
        .await
        .unwrap_err();

    assert!(
        h.api().take_calls().is_empty(),
        "no create without a durable intent"
    );
    assert_requeue_between(&h.error_policy(&h.object(), &err), secs(1.0), secs(1.25));
    assert_eq!(h.state(), State::default());
}

#[tokio::test]
async fn a_deployment_named_by_the_adoption_annotation_is_adopted_not_recreated() {
    let mut o = object(spec(json!({})));
    o.metadata
        .annotations
        .get_or_insert_default()
        .insert(ANNOTATION_DEPLOYMENT_ID.into(), "dep_1".into());
    let fp = fingerprint(&o.spec);
    let mut h = Harness::new(o);
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::state(move |s| {
                assert_eq!(s.id.as_deref(), Some("dep_1"));
                assert_eq!(s.fingerprint.as_deref(), Some(fp.as_str()));
            }),
            Expect::event_noting("Normal", "Adopted", &["dep_1", "success"]),
            Expect::event("Normal", "DeploymentSucceeded"),
            Expect::status(|s| {
                assert_health(s, "Ready", "Succeeded");
                assert_eq!(s.build_duration.as_deref(), Some("14.2s"));
            }),
        ])
        .await
        .unwrap();

    assert_requeue_between(&action, secs(600.0), secs(660.0));
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    assert!(h.api().creates().is_empty());
}
