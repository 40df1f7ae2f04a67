//! The cause of a failed deployment on the object, end to end (real kube-apiserver, real
//! `gitdev-sim`, real `gitdev-operator`): the last lines of its build log in the Stalled
//! condition and a Warning event, read once, with the values of `envFrom` Secrets masked.

mod common;

use std::time::Duration;

use common::stack::eventually;
use common::world::{WAIT, World, gitdeployment};
use serde_json::Value;

/// A value the simulator's failing build prints in its environment dump.
const SECRET: &str = "s3cr3t-db-passw0rd";

/// How many times the simulator was asked for a build log.
fn logs_calls(w: &World) -> u64 {
    w.sim.stats()["by_route"]["GET /v1/deployments/{id}/logs"]["total"]
        .as_u64()
        .unwrap_or(0)
}

/// How many times the simulator was asked for one deployment.
fn gets_calls(w: &World) -> u64 {
    w.sim.stats()["by_route"]["GET /v1/deployments/{id}"]["total"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_failed_build_shows_its_cause_in_the_condition_and_an_event_with_secrets_masked() {
    let w = World::new("fail-cause", 0.3);
    w.token_secret("sk_test_write");
    w.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: app-env\nstringData:\n  DATABASE_PASSWORD: {SECRET}\n"
    ))
    .expect_success();
    let mut op = w.spawn_operator(&[]);
    w.apply(&gitdeployment(
        "broken",
        "fail/broken-build",
        "  envVars:\n    NODE_ENV: production\n  envFrom:\n    - secretRef:\n        name: app-env\n",
    ))
    .expect_success();

    let message = w.wait_for("broken", "Stalled", "DeploymentFailed");
    let id = w.deployment_id("broken");
    assert!(
        message.starts_with(&format!("deployment {id} failed;")),
        "{message}"
    );
    for cause in [
        "Type error: Property 'title'",
        "DATABASE_PASSWORD=***",
        "NODE_ENV=production",
        "exited with status 1",
    ] {
        assert!(message.contains(cause), "{cause} in {message}");
    }

    let obj = w.get("broken");
    assert_eq!(obj["status"]["failure"]["deploymentId"], id.as_str());
    let excerpt = obj["status"]["failure"]["excerpt"].as_str().unwrap_or("");
    assert!(excerpt.contains("DATABASE_PASSWORD=***"), "{excerpt}");

    let events = eventually(WAIT, "a Warning event with the cause", || {
        let events: Value = serde_json::from_str(&w.events("broken")).ok()?;
        let notes: Vec<String> = events["items"]
            .as_array()?
            .iter()
            .filter(|e| e["type"] == "Warning" && e["reason"] == "DeploymentFailed")
            .filter_map(|e| e["message"].as_str().map(str::to_string))
            .collect();
        notes
            .iter()
            .any(|n| n.contains("Type error") && n.contains("DATABASE_PASSWORD=***"))
            .then_some(notes)
    });
    assert!(!events.is_empty());

    // Never in clear: not in the object (conditions, status), not in its events.
    let object_text = w
        .kubectl(&["get", "gitdeployment", "broken", "-o", "json"])
        .expect_success();
    assert!(!object_text.contains(SECRET), "{object_text}");
    assert!(!w.events("broken").contains(SECRET));
    let described = w
        .kubectl(&["describe", "gitdeployment", "broken"])
        .expect_success();
    assert!(described.contains("Type error"), "{described}");
    assert!(!described.contains(SECRET), "{described}");

    // Read once: neither a change that wakes the object nor a new operator process (which
    // reconciles every object on start, with nothing in memory) reads the log again.
    assert_eq!(logs_calls(&w), 1, "one read of the build log");
    op.kill();
    let gets = gets_calls(&w);
    let _again = w.spawn_operator(&[]);
    w.kubectl(&["annotate", "gitdeployment", "broken", "touched=yes"])
        .expect_success();
    eventually(WAIT, "the new operator to look at the deployment", || {
        (gets_calls(&w) > gets).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(logs_calls(&w), 1, "the build log is not read again");
    let (_, reason, message) = w.condition("broken", "Stalled").unwrap();
    assert_eq!(reason, "DeploymentFailed");
    assert!(message.contains("Type error"), "{message}");
}
