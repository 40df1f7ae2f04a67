//! Observation: drift behind the operator's back, and batched listings.

use super::support::*;

#[tokio::test]
async fn a_deployment_deleted_behind_the_operators_back_is_reported_not_recreated() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));

    let action = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "RemoteDeleted", &["dep_1", "redeploy"]),
            Expect::status(|s| {
                assert_health(s, "Stalled", "RemoteDeleted");
                assert_eq!(s.status.as_deref(), Some("deleted"));
                assert_eq!(s.url, None, "no URL of a deployment that is gone");
            }),
        ])
        .await
        .unwrap();

    assert_eq!(action, Action::await_change());
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
}

#[tokio::test]
async fn a_replica_that_lost_the_lease_puts_no_status_over_the_new_leaders() {
    let mut h = Harness::new(tracking(spec(json!({})), "dep_1"));
    h.api()
        .lease_lost
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // It may still read and tell (an event), but its view is stale: no status write.
    let err = h
        .reconcile(vec![
            Expect::get_secret(CREDENTIALS),
            Expect::event_noting("Warning", "RemoteDeleted", &["dep_1"]),
        ])
        .await
        .unwrap_err();

    assert_eq!(err.category(), "not_leading", "{err}");
    assert!(err.to_string().contains("status"), "{err}");
}

#[tokio::test]
async fn a_ready_object_whose_details_wait_for_rate_budget_stays_ready_and_writes_nothing() {
    let mut h = Harness::new(ready_from_a_listing("dep_1"));
    h.api().add("main", None, Remote::Success);
    h.api().script(
        Endpoint::Get,
        Script::Fail(ApiError::Throttled {
            endpoint: Endpoint::Get,
            retry_after: Duration::from_secs(20),
        }),
    );

    let action = h
        .reconcile(vec![Expect::get_secret(CREDENTIALS)])
        .await
        .expect("a wait for budget is not an error");

    assert_eq!(requeue_after(&action), Some(Duration::from_secs(20)));
    assert_eq!(h.api().take_calls(), ["get dep_1"]);
    assert_health(&h.status(), "Ready", "Succeeded");
}

#[tokio::test]
async fn an_object_woken_while_creates_go_on_turns_ready_from_the_listing_that_woke_it() {
    use kube::runtime::reflector::ObjectRef;
    let mut h = created_then_succeeded().await;
    let token = ApiToken::new(TOKEN);
    let (wake, mut woken) = futures::channel::mpsc::unbounded();
    let ctx = h.ctx.clone();
    let observer = &ctx.coordination.observer;
    observer.wake_into(wake);
    // Polled while another object's create is under way: waited on, not listed, and looked
    // at again only in 5 s (a listing wakes it sooner if it finds the deployment finished).
    let pending = ctx.coordination.create_pending(&token);
    let action = h.reconcile_freely().await.unwrap();
    assert!(
        h.api().take_calls().is_empty(),
        "nothing read during creates"
    );
    assert_requeue_between(&action, secs(5.0), secs(5.5));
    // Another object's poll lists, finds dep_1 finished and wakes this one.
    let other = h.api().add("main", None, Remote::Deploying);
    observer
        .status(h.api(), &token, &other, wire_now(), Duration::ZERO, None)
        .await
        .unwrap();
    assert_eq!(
        woken.try_recv().ok(),
        Some(ObjectRef::from_obj(&h.object()))
    );
    h.api().take_calls();

    // Woken, with creates still going on, it takes that answer: Ready, nothing read.
    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event_noting("Normal", "DeploymentSucceeded", &["dep_1"]),
        Expect::status(|s| assert_health(s, "Ready", "Succeeded")),
    ])
    .await
    .unwrap();
    assert!(h.api().take_calls().is_empty());
    drop(pending);
}

/// An object whose first reconcile created `dep_1` and mirrored it as queued; the API then
/// says it succeeded.
async fn created_then_succeeded() -> Harness {
    let mut h = Harness::new(object(spec(json!({}))));
    h.reconcile_freely().await.unwrap();
    assert_eq!(h.status().status.as_deref(), Some("queued"));
    h.api().set_status("dep_1", Remote::Success);
    h.api().take_calls();
    h
}

#[tokio::test]
async fn a_finished_deployment_is_ready_with_its_details_in_one_status_write_when_the_budget_is_idle()
 {
    let mut h = created_then_succeeded().await;

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event_noting("Normal", "DeploymentSucceeded", &["dep_1"]),
        Expect::status(|s| {
            assert_health(s, "Ready", "Succeeded");
            assert!(s.completed_at.is_some(), "{s:?}");
            assert_eq!(s.build_duration.as_deref(), Some("14.2s"));
        }),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["list", "get dep_1"]);
}

#[tokio::test]
async fn a_finished_deployment_is_ready_at_once_and_its_details_left_for_later_when_others_wait_for_budget()
 {
    let mut h = created_then_succeeded().await;
    h.api().state().budget_busy = true;

    h.reconcile(vec![
        Expect::get_secret(CREDENTIALS),
        Expect::event_noting("Normal", "DeploymentSucceeded", &["dep_1"]),
        Expect::status(|s| {
            assert_health(s, "Ready", "Succeeded");
            assert_eq!(s.completed_at, None, "details are not waited for");
        }),
    ])
    .await
    .unwrap();

    assert_eq!(h.api().take_calls(), ["list"]);
}

mod batched_observation {
    use super::super::support::*;
    use crate::controller::observe::{Observer, Seen};

    fn fake() -> FakeApi {
        FakeApi::new(Timeline::default())
    }

    #[tokio::test]
    async fn fifty_in_flight_deployments_of_one_token_are_observed_with_one_list_call() {
        let api = fake();
        let ids: Vec<String> = (0..50)
            .map(|_| api.add("main", None, Remote::Building))
            .collect();
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        let asks = ids
            .iter()
            .map(|id| observer.status(&api, &token, id, now, Duration::from_secs(5), None));
        let answers = futures::future::join_all(asks).await;
        for a in answers {
            assert_eq!(a.unwrap(), Some(Seen::Status(Remote::Building)));
        }
        assert_eq!(api.take_calls(), ["list"]);
    }

    #[tokio::test]
    async fn how_long_a_deployment_has_been_in_its_phase_counts_from_the_first_listing_that_showed_it_there()
     {
        let api = fake();
        let id = api.add("main", None, Remote::Building);
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        let look = || observer.status(&api, &token, &id, now, Duration::ZERO, None);
        assert_eq!(
            observer.in_phase(&token, &id),
            Duration::ZERO,
            "never listed"
        );

        look().await.unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        look().await.unwrap();
        let building = observer.in_phase(&token, &id);
        assert!(building >= Duration::from_millis(60), "{building:?}");

        api.state().deployments[0].status = Remote::Deploying;
        look().await.unwrap();
        let deploying = observer.in_phase(&token, &id);
        assert!(deploying < Duration::from_millis(60), "{deploying:?}");
        assert_eq!(api.take_calls(), ["list", "list", "list"]);

        // Gone from the waited-on deployments, it is no longer timed.
        observer.forget(std::slice::from_ref(&id));
        assert_eq!(observer.in_phase(&token, &id), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_deployment_missing_from_a_listing_that_covers_its_creation_is_absent() {
        let api = fake();
        api.add("main", None, Remote::Queued);
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        // Older than the newest deployment listed: it would have been listed.
        let before = wire_now() - Duration::from_secs(5);
        let seen = observer
            .status(
                &api,
                &token,
                "dep_gone",
                before,
                Duration::from_secs(5),
                None,
            )
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Absent));
    }

    #[tokio::test]
    async fn a_deployment_made_after_the_listing_is_not_yet_listed_rather_than_absent() {
        let api = fake();
        api.add("main", None, Remote::Queued);
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        let listed = |id: &'static str, created: Timestamp| {
            observer.status(&api, &token, id, created, Duration::from_secs(60), None)
        };
        listed("dep_1", now).await.unwrap();
        // Made in the listing's last second or after it: the fresh listing cannot tell.
        let later = now + Duration::from_secs(1);
        assert_eq!(listed("dep_new", later).await.unwrap(), Some(Seen::NotYet));
        assert_eq!(
            listed("dep_same_second", now).await.unwrap(),
            Some(Seen::NotYet)
        );
        assert_eq!(api.take_calls(), ["list"], "no listing and no GET for them");

        // Long before the listing, even with nothing newer listed: gone.
        let observer = Observer::default();
        api.state().deployments.clear();
        let old = now - Duration::from_secs(600);
        let seen = observer
            .status(&api, &token, "dep_old", old, Duration::from_secs(60), None)
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Absent));
    }

    #[tokio::test]
    async fn the_listing_pages_back_until_the_oldest_deployment_waited_on() {
        let api = fake();
        let old = api.add("main", None, Remote::Deploying);
        api.state().deployments[0].created_at = wire_now() - Duration::from_secs(3600);
        for _ in 0..150 {
            api.add("main", None, Remote::Success);
        }
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let created = api.state().deployments[0].created_at;
        let seen = observer
            .status(&api, &token, &old, created, Duration::from_secs(5), None)
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Status(Remote::Deploying)));
        assert_eq!(api.take_calls(), ["list", "list"]);
    }

    #[tokio::test]
    async fn deployments_waited_on_during_creates_are_all_answered_by_the_first_listing_after() {
        use kube::runtime::reflector::ObjectRef;
        let api = fake();
        let old = api.add("main", None, Remote::Success);
        api.state().deployments[0].created_at = wire_now() - Duration::from_secs(3600);
        let old_created = api.state().deployments[0].created_at;
        for _ in 0..150 {
            api.add("main", None, Remote::Success);
        }
        let new = api.add("main", None, Remote::Deploying);
        let observer = Observer::default();
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        observer.wake_into(wake);
        let token = ApiToken::new("sk_test_write");
        // While creates were sent, the old one's object was polled: registered, not listed.
        observer.want(
            &token,
            &old,
            old_created,
            ObjectRef::new("app-old").within("team"),
        );
        assert!(api.take_calls().is_empty());

        // The first listing, made for the newest, reaches back to the old one and wakes it.
        let seen = observer
            .status(&api, &token, &new, wire_now(), Duration::ZERO, None)
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Status(Remote::Deploying)));
        assert_eq!(api.take_calls(), ["list", "list"]);
        let refs: Vec<_> = std::iter::from_fn(|| woken.try_recv().ok()).collect();
        assert_eq!(refs, [ObjectRef::new("app-old").within("team")]);
    }

    #[tokio::test]
    async fn a_woken_object_finds_its_answer_after_later_listings_and_is_not_listed_back_to_again()
    {
        use kube::runtime::reflector::ObjectRef;
        let api = fake();
        let old = api.add("main", None, Remote::Success);
        api.state().deployments[0].created_at = wire_now() - Duration::from_secs(3600);
        let old_created = api.state().deployments[0].created_at;
        for _ in 0..150 {
            let filler = api.add("main", None, Remote::Success);
            let mut st = api.state();
            let d = st.deployments.iter_mut().find(|d| d.id == filler).unwrap();
            d.created_at = wire_now() - Duration::from_secs(60);
        }
        let new = api.add("main", None, Remote::Deploying);
        let observer = Observer::default();
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        observer.wake_into(wake);
        let token = ApiToken::new("sk_test_write");
        let app_old = ObjectRef::new("app-old").within("team");
        observer.want(&token, &old, old_created, app_old.clone());
        let listed = |max_age| observer.status(&api, &token, &new, wire_now(), max_age, None);
        listed(Duration::ZERO).await.unwrap();
        assert_eq!(
            api.take_calls(),
            ["list", "list"],
            "reaches back to the old one"
        );
        assert_eq!(woken.try_recv().ok(), Some(app_old));

        // Its object is slow to come (creates hold the slots); more listings run meanwhile,
        // reaching back only to what is still in flight.
        listed(Duration::ZERO).await.unwrap();
        listed(Duration::ZERO).await.unwrap();
        assert_eq!(api.take_calls(), ["list", "list"], "one page each");

        assert_eq!(
            observer.finished(&token, &old),
            Some(Seen::Status(Remote::Success))
        );
        assert_eq!(observer.finished(&token, &old), None, "taken once");
    }

    #[tokio::test]
    async fn a_poll_that_finds_a_listing_under_way_returns_at_once_and_is_woken_by_it() {
        use kube::runtime::reflector::ObjectRef;
        let api = fake();
        let a = api.add("main", None, Remote::Deploying);
        let b = api.add("main", None, Remote::Deploying);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        api.state().list_held = Some(gate.clone());
        let observer = Observer::default();
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        observer.wake_into(wake);
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();

        // a's poll lists; its listing waits for budget.
        let first = observer.status(&api, &token, &a, now, Duration::ZERO, None);
        tokio::pin!(first);
        assert!(futures::poll!(&mut first).is_pending());
        // b's poll does not wait for it in its reconcile slot.
        let object_b = ObjectRef::new("app-b").within("team");
        let seen = observer
            .status(
                &api,
                &token,
                &b,
                now,
                Duration::ZERO,
                Some(object_b.clone()),
            )
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::NotYet));

        // b finishes before the listing is sent: the listing wakes its object.
        api.set_status(&b, Remote::Success);
        gate.add_permits(1);
        assert_eq!(first.await.unwrap(), Some(Seen::Status(Remote::Deploying)));
        assert_eq!(woken.try_recv().ok(), Some(object_b));
        assert_eq!(api.take_calls(), ["list"]);
    }

    #[tokio::test]
    async fn a_listing_made_for_one_object_wakes_the_others_whose_deployment_finished() {
        use kube::runtime::reflector::ObjectRef;
        let api = fake();
        let ids: Vec<String> = (0..4)
            .map(|_| api.add("main", None, Remote::Deploying))
            .collect();
        let object = |i: usize| ObjectRef::new(&format!("app-{i}")).within("team");
        let observer = Observer::default();
        let (wake, mut woken) = futures::channel::mpsc::unbounded();
        observer.wake_into(wake);
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        for (i, id) in ids.iter().enumerate() {
            observer
                .status(
                    &api,
                    &token,
                    id,
                    now,
                    Duration::from_secs(60),
                    Some(object(i)),
                )
                .await
                .unwrap();
        }
        api.set_status(&ids[0], Remote::Success);
        api.set_status(&ids[1], Remote::Success);
        api.set_status(&ids[2], Remote::Failed);
        // Object 0's poll pays for the listing: it has its answer; 1 and 2 are woken, 3 (still
        // deploying) is not.
        let seen = observer
            .status(&api, &token, &ids[0], now, Duration::ZERO, Some(object(0)))
            .await
            .unwrap();
        assert_eq!(seen, Some(Seen::Status(Remote::Success)));
        let mut refs = Vec::new();
        while let Ok(r) = woken.try_recv() {
            refs.push(r);
        }
        refs.sort_by_key(|r| r.name.clone());
        assert_eq!(refs, [object(1), object(2)]);
        // Woken, object 1 reads the fresh view; that answer ends its wait, and neither it nor
        // anyone already woken is woken again by the next listing.
        let again = observer
            .status(
                &api,
                &token,
                &ids[1],
                now,
                Duration::from_secs(60),
                Some(object(1)),
            )
            .await
            .unwrap();
        assert_eq!(again, Some(Seen::Status(Remote::Success)));
        api.set_status(&ids[3], Remote::Success);
        observer
            .status(&api, &token, &ids[3], now, Duration::ZERO, Some(object(3)))
            .await
            .unwrap();
        assert!(woken.try_recv().is_err(), "nobody else to wake");
    }

    #[tokio::test]
    async fn a_fresh_listing_is_reused_and_a_stale_one_refreshed() {
        let api = fake();
        let id = api.add("main", None, Remote::Queued);
        let observer = Observer::default();
        let token = ApiToken::new("sk_test_write");
        let now = wire_now();
        for _ in 0..3 {
            observer
                .status(&api, &token, &id, now, Duration::from_secs(60), None)
                .await
                .unwrap();
        }
        assert_eq!(api.take_calls(), ["list"]);
        observer
            .status(&api, &token, &id, now, Duration::ZERO, None)
            .await
            .unwrap();
        assert_eq!(api.take_calls(), ["list"]);
    }
}
