//! Fencing: API writes pass only while this replica holds the leader Lease.

use super::support::*;
use crate::controller::fence::{Fence, Fenced};

fn create_request() -> CreateDeploymentRequest {
    CreateDeploymentRequest {
        project_id: PROJECT.into(),
        branch: "main".into(),
        commit_sha: None,
        env_vars: None,
    }
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_sends_no_write_but_still_reads() {
    let later = || Some(tokio::time::Instant::now() + Duration::from_secs(3600));
    let (leading, follows) = tokio::sync::watch::channel(later());
    let api = Fenced {
        inner: FakeApi::new(Timeline::default()),
        fence: Fence::until(follows),
    };
    let token = ApiToken::new(TOKEN);
    let id = api.create(&token, &create_request()).await.unwrap().id;

    // Not renewed in time: the deadline passed, whatever task last ran.
    leading.send(Some(tokio::time::Instant::now())).unwrap();
    let refused = [
        api.create(&token, &create_request()).await.map(|_| ()),
        api.cancel(&token, &id).await.map(|_| ()),
        api.delete(&token, &id).await,
    ];
    for answer in refused {
        let err = answer.expect_err("no write without the Lease");
        assert!(err.to_string().contains("leader Lease"), "{err}");
        // Nothing was sent: transient, never an unknown create outcome.
        assert_eq!(err.class(), crate::api::ErrorClass::Transient);
    }
    assert_eq!(api.inner.take_calls(), ["create"]);
    assert!(api.get(&token, &id).await.is_ok());
    assert!(api.list(&token, &ListQuery::default()).await.is_ok());

    leading.send(None).unwrap();
    assert!(api.delete(&token, &id).await.is_err(), "not leading at all");
    leading.send(later()).unwrap();
    assert!(api.cancel(&token, &id).await.is_ok());
}

#[test]
fn without_leader_election_the_fence_is_always_open() {
    assert!(Fence::open().holds());
}

#[tokio::test]
async fn the_fence_passes_on_what_the_budget_says_of_reads_that_must_not_wait() {
    let api = Fenced {
        inner: FakeApi::new(Timeline::default()),
        fence: Fence::open(),
    };
    let token = ApiToken::new(TOKEN);
    let id = api.inner.add("main", None, Remote::Success);
    assert_eq!(api.room(&token), Room::Ample);
    assert!(api.get_if_idle(&token, &id).await.is_ok());

    api.inner.state().budget_busy = true;
    assert_eq!(api.room(&token), Room::None);
    let refused = api.get_if_idle(&token, &id).await.unwrap_err();
    assert!(matches!(refused, ApiError::Throttled { .. }), "{refused:?}");
}
