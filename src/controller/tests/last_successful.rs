//! `status.lastSuccessful`: the last deployment seen succeeding, kept through failures,
//! cancels, new specs and pruned history.

use super::support::*;
use crate::controller::decision::{Health, Observed};
use crate::controller::status::build_status;

fn seen(id: &str, status: Remote, commit: &str) -> Observed {
    let finished = matches!(status, Remote::Success | Remote::Failed);
    Observed::Found(Box::new(DeploymentDetails {
        id: id.into(),
        status,
        project_id: PROJECT.into(),
        branch: "main".into(),
        commit_sha: commit.into(),
        build_duration: None,
        deploy_url: format!("https://{id}.git.dev"),
        logs_url: String::new(),
        created_at: Timestamp::UNIX_EPOCH,
        completed_at: finished.then_some(Timestamp::UNIX_EPOCH),
        cancelled_by: None,
        cancelled_at: None,
    }))
}

/// The status the operator would write for `observed`, applied to the object as the round does.
fn observe(o: &mut GitDeployment, state: &State, observed: &Observed) -> GitDeploymentStatus {
    let health = Health::progressing("Test", "");
    let status = build_status(o, state, observed, &health, None, Timestamp::UNIX_EPOCH);
    o.status = Some(status.clone());
    status
}

fn tracking_state(id: &str, history: &[&str]) -> State {
    State {
        id: Some(id.into()),
        fingerprint: Some("fp".into()),
        history: history.iter().map(|h| h.to_string()).collect(),
        ..State::default()
    }
}

#[test]
fn the_last_success_is_kept_through_a_failure_a_supersede_and_pruned_history() {
    let mut o = object(spec(json!({})));

    let building = observe(
        &mut o,
        &tracking_state("dep_1", &[]),
        &seen("dep_1", Remote::Building, "a1"),
    );
    assert_eq!(building.last_successful, None, "nothing succeeded yet");

    let good = observe(
        &mut o,
        &tracking_state("dep_1", &[]),
        &seen("dep_1", Remote::Success, "a1"),
    )
    .last_successful
    .expect("a success is recorded");
    assert_eq!(good.deployment_id, "dep_1");
    assert_eq!(good.commit_sha, "a1");
    assert_eq!(good.url, "https://dep_1.git.dev");
    assert_eq!(good.completed_at, Some(Time(Timestamp::UNIX_EPOCH)));

    let failed = observe(
        &mut o,
        &tracking_state("dep_2", &["dep_1"]),
        &seen("dep_2", Remote::Failed, "b2"),
    );
    assert_eq!(
        failed.last_successful.as_ref(),
        Some(&good),
        "kept through a failure"
    );

    let superseded = observe(
        &mut o,
        &tracking_state("dep_3", &["dep_2", "dep_1"]),
        &seen("dep_3", Remote::Cancelled, "c3"),
    );
    assert_eq!(
        superseded.last_successful.as_ref(),
        Some(&good),
        "kept through a cancel"
    );

    // historyLimit 0 pruned dep_1 and dep_2; the record of the last good one stays.
    let pruned = observe(
        &mut o,
        &tracking_state("dep_4", &[]),
        &seen("dep_4", Remote::Queued, "d4"),
    );
    assert!(pruned.history.is_empty());
    assert_eq!(
        pruned.last_successful.as_ref(),
        Some(&good),
        "kept through pruning"
    );

    let unread = observe(&mut o, &tracking_state("dep_4", &[]), &Observed::Unread);
    assert_eq!(
        unread.last_successful.as_ref(),
        Some(&good),
        "kept when not looked at"
    );
    let gone = observe(
        &mut o,
        &tracking_state("dep_4", &[]),
        &Observed::Missing { id: "dep_4".into() },
    );
    assert_eq!(
        gone.last_successful.as_ref(),
        Some(&good),
        "kept when the current one vanished"
    );

    let next = observe(
        &mut o,
        &tracking_state("dep_5", &[]),
        &seen("dep_5", Remote::Success, "e5"),
    );
    assert_eq!(
        next.last_successful.map(|l| l.deployment_id).as_deref(),
        Some("dep_5"),
        "a newer success replaces it"
    );
}

#[test]
fn a_success_listed_before_its_details_keeps_the_completion_time_already_read() {
    let mut o = object(spec(json!({})));
    let state = tracking_state("dep_1", &[]);
    observe(&mut o, &state, &seen("dep_1", Remote::Success, "a1"));
    let Observed::Found(mut listed) = seen("dep_1", Remote::Success, "a1") else {
        unreachable!()
    };
    listed.completed_at = None;
    let again = observe(&mut o, &state, &Observed::Found(listed));
    assert_eq!(
        again.last_successful.and_then(|l| l.completed_at),
        Some(Time(Timestamp::UNIX_EPOCH))
    );
}

#[tokio::test]
async fn a_success_replaced_by_a_new_spec_in_the_same_reconcile_is_still_the_last_good_one() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    let id = h.api().add("main", None, Remote::Building);
    h.api().set_status(&id, Remote::Success);
    h.edit(|o| o.spec.redeploy = Some("2".into()));

    h.reconcile_freely().await.unwrap();

    assert_eq!(h.api().creates().len(), 1);
    let status = h.status();
    assert_eq!(status.deployment_id.as_deref(), Some("dep_2"));
    let good = status
        .last_successful
        .expect("the success seen before the create");
    assert_eq!(good.deployment_id, "dep_1");
    assert_eq!(good.commit_sha, HEAD);
}
