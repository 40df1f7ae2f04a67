//! A failed deployment: its build log is read once, and its last lines reach the Stalled
//! condition and a Warning event, with the values of `envFrom` Secrets masked.

use super::support::*;

const LOG: &str = "\
2025-03-14T10:32:01Z [building] Running \"npm run build\"
2025-03-14T10:32:02Z [building] Downloading packages [=====>     ] 48%
2025-03-14T10:32:03Z [building] Type error: Property 'title' does not exist
2025-03-14T10:32:03Z [building] build environment: APP_PASSWORD=hunter2 MODE=prod
2025-03-14T10:32:03Z [building] error: build command exited with status 1
2025-03-14T10:32:03Z [failed] Build failed after 3.0s
";

/// An object with an `envFrom` Secret, tracking `dep_1`, which has failed with `LOG`.
fn failed_with_env_from() -> Harness {
    let s = spec(json!({
        "envVars": {"MODE": "prod"},
        "envFrom": [{"secretRef": {"name": "app-env"}, "prefix": "APP_"}],
    }));
    let secret = Secret {
        data: Some(BTreeMap::from([(
            "PASSWORD".to_string(),
            ByteString(b"hunter2".to_vec()),
        )])),
        ..Default::default()
    };
    let fp = DesiredDeployment::resolve(&s, |_| Some(&secret))
        .unwrap()
        .fingerprint(&Key::new(FINGERPRINT_KEY));
    let state = State {
        id: Some("dep_1".into()),
        fingerprint: Some(fp),
        ..State::default()
    };
    let mut h = Harness::new(with_state(object(s), &state));
    h.add_secret("app-env", &[("PASSWORD", "hunter2")]);
    let id = h.api().add("main", None, Remote::Failed);
    h.api().state().logs.insert(id, LOG.into());
    h
}

fn stalled_message(s: &GitDeploymentStatus) -> String {
    let c = s.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    c.message.clone()
}

#[tokio::test]
async fn a_failed_deployment_s_build_log_is_read_once_and_its_cause_shown_with_secrets_masked() {
    let mut h = failed_with_env_from();

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::get_secret("app-env"),
            Expect::new("k8s event Warning DeploymentFailed").with(|req, cluster| {
                check_event(req, cluster);
                let note = req.body["note"].as_str().unwrap_or("");
                for w in ["dep_1 failed", "Type error", "APP_PASSWORD=***", "status 1"] {
                    assert!(note.contains(w), "{w} in {note}");
                }
                assert!(!note.contains("hunter2"), "{note}");
                assert!(!note.contains("48%"), "progress is noise: {note}");
            }),
            Expect::status(|s| {
                assert_health(s, "Stalled", "DeploymentFailed");
                let message = stalled_message(s);
                assert!(message.starts_with("deployment dep_1 failed;"), "{message}");
                assert!(message.contains("Type error"), "{message}");
                assert!(message.ends_with("Build failed after 3.0s"), "{message}");
                let failure = s.failure.as_ref().expect("status.failure");
                assert_eq!(failure.deployment_id, "dep_1");
                assert!(failure.excerpt.contains("APP_PASSWORD=*** MODE=prod"));
            }),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change(), "a human decides");
    assert_eq!(h.api().take_calls(), ["get dep_1", "logs dep_1"]);
    let stored = serde_json::to_string(&h.object()).unwrap();
    assert!(!stored.contains("hunter2"), "{stored}");

    // The next reconcile (a resync, an operator restart) reads the log no more.
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::get_secret("app-env"),
    ])
    .await
    .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    assert!(stalled_message(&h.status()).contains("Type error"));
}

#[tokio::test]
async fn a_build_log_that_cannot_be_read_is_said_and_read_again_at_the_existence_cadence() {
    let mut h = failed_with_env_from();
    h.api().fail_next(Endpoint::Logs, 503, "unavailable");

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::get_secret("app-env"),
            Expect::event_noting(
                "Warning",
                "DeploymentFailed",
                &["the build log could not be read"],
            ),
            Expect::status(|s| {
                assert_health(s, "Stalled", "DeploymentFailed");
                assert!(stalled_message(s).contains("the build log could not be read"));
                assert_eq!(s.failure, None, "nothing read, nothing recorded");
            }),
        ])
        .await
        .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1", "logs dep_1"]);
    let existence = h.ctx.config.existence_check;
    assert_requeue_between(&action, existence, existence + existence / 10);

    // Read at last: the cause is news, told in an event of its own.
    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::get_secret("app-env"),
            Expect::event_noting("Warning", "DeploymentFailed", &["Type error"]),
            Expect::status(|s| {
                assert_eq!(s.failure.as_ref().unwrap().deployment_id, "dep_1");
                assert!(stalled_message(s).contains("APP_PASSWORD=***"));
            }),
        ])
        .await
        .unwrap();
    assert_eq!(h.api().take_calls(), ["get dep_1", "logs dep_1"]);
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn a_new_deployment_drops_the_failure_of_the_last_one() {
    let mut h = failed_with_env_from();
    h.reconcile_freely().await.unwrap();
    assert!(h.status().failure.is_some());

    h.edit(|o| o.spec.redeploy = Some("again".into()));
    h.reconcile_freely().await.unwrap();
    let s = h.status();
    assert_eq!(s.deployment_id.as_deref(), Some("dep_2"));
    assert_eq!(s.failure, None, "{s:?}");
}
