//! Details of finished deployments, read off the reconcile path by the token's readers.

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use kube::runtime::reflector::ObjectRef;

use super::support::*;
use crate::controller::details::{Read, read_details};

/// Starts readers on `h`'s context as the controller does; woken objects arrive on the
/// receiver returned.
fn start_readers(h: &Harness) -> UnboundedReceiver<ObjectRef<GitDeployment>> {
    let (wake, woken) = futures::channel::mpsc::unbounded();
    let ctx = Arc::downgrade(&h.ctx);
    h.ctx.coordination.details.start(
        Box::new(move |token| {
            if let Some(ctx) = ctx.upgrade() {
                tokio::spawn(read_details(ctx, token));
            }
        }),
        wake,
    );
    woken
}

fn waiter(name: &str) -> ObjectRef<GitDeployment> {
    ObjectRef::new(name).within(NS)
}

async fn next_woken(woken: &mut UnboundedReceiver<ObjectRef<GitDeployment>>) -> String {
    tokio::time::timeout(Duration::from_secs(5), woken.next())
        .await
        .expect("an object is woken")
        .expect("the wake channel is open")
        .name
}

#[tokio::test]
async fn details_asked_for_by_several_objects_are_read_once_each_and_their_objects_woken() {
    let h = Harness::new(object(spec(json!({}))));
    let mut woken = start_readers(&h);
    let token = ApiToken::new(TOKEN);
    let ids: Vec<String> = (0..3)
        .map(|_| h.api().add("main", None, Remote::Success))
        .collect();
    let details = &h.ctx.coordination.details;
    for (i, id) in ids.iter().enumerate() {
        details.want(&token, id, waiter(&format!("app-{i}")));
        details.want(&token, id, waiter(&format!("app-{i}")));
    }

    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(next_woken(&mut woken).await);
    }
    names.sort();
    assert_eq!(names, ["app-0", "app-1", "app-2"]);
    for id in &ids {
        match details.take(id) {
            Some(Read::Details(d)) => assert!(d.completed_at.is_some(), "{d:?}"),
            other => panic!("{id}: {other:?}"),
        }
        assert!(details.take(id).is_none(), "a read is taken once");
    }
    let mut calls = h.api().take_calls();
    calls.sort();
    assert_eq!(
        calls,
        ["get dep_1", "get dep_2", "get dep_3"],
        "one GET each"
    );
    assert_eq!(details.waiting(), 0);
}

#[tokio::test]
async fn details_wait_until_the_tokens_creates_are_sent() {
    let h = Harness::new(object(spec(json!({}))));
    let mut woken = start_readers(&h);
    let token = ApiToken::new(TOKEN);
    let id = h.api().add("main", None, Remote::Success);

    let pending = h.ctx.coordination.create_pending(&token);
    h.ctx.coordination.details.want(&token, &id, waiter("web"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        h.api().take_calls().is_empty(),
        "no GET while a create waits"
    );

    drop(pending);
    assert_eq!(next_woken(&mut woken).await, "web");
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
}

#[tokio::test]
async fn details_that_cannot_be_read_are_left_to_the_objects_own_reconcile() {
    let h = Harness::new(object(spec(json!({}))));
    let mut woken = start_readers(&h);
    let token = ApiToken::new(TOKEN);

    h.ctx
        .coordination
        .details
        .want(&token, "dep_gone", waiter("web"));

    assert_eq!(next_woken(&mut woken).await, "web");
    assert!(matches!(
        h.ctx.coordination.details.take("dep_gone"),
        Some(Read::Failed)
    ));
}

#[tokio::test]
async fn a_ready_object_asks_for_its_details_and_mirrors_them_when_woken_without_a_get_of_its_own()
{
    let mut h = Harness::new(ready_from_a_listing("dep_1"));
    h.api().add("main", None, Remote::Success);
    let mut woken = start_readers(&h);

    // Its reconcile asks and returns at once: no GET in its reconcile slot.
    let action = h.reconcile_freely().await.unwrap();
    let net = crate::controller::decision::DETAILS_RECHECK;
    assert_requeue_between(&action, net, net.mul_f64(1.25));

    assert_eq!(next_woken(&mut woken).await, NAME);
    assert_eq!(h.api().take_calls(), ["get dep_1"], "read by the reader");
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::status(|s| {
            assert!(s.completed_at.is_some(), "{s:?}");
            assert_eq!(s.build_duration.as_deref(), Some("14.2s"));
            assert_health(s, "Ready", "Succeeded");
        }),
    ])
    .await
    .unwrap();
    assert!(
        h.api().take_calls().is_empty(),
        "the reconcile read nothing itself"
    );
}
