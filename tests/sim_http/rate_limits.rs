//! Rate limiting: the 429 and its headers, and the headers on every other answer.

use std::collections::BTreeSet;
use std::time::Duration;

use gitdev::api::ErrorEnvelope;
use reqwest::{Method, StatusCode};

use crate::support::{ADMIN, Api, READ, STARTER, WRITE, start};

#[tokio::test]
async fn over_the_limit_answers_429_with_retry_after_and_consumes_nothing() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    // Starter: burst 20, all admitted at once.
    for i in 0..20 {
        let a = api
            .call(Method::GET, "/deployments", Some(STARTER), None)
            .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        assert_eq!(a.header("x-ratelimit-limit").as_deref(), Some("100"));
    }
    // Then the bucket runs dry (the refill of 1.67/s may admit a few more meanwhile).
    let mut limited = None;
    for _ in 0..100 {
        let a = api
            .call(Method::GET, "/deployments", Some(STARTER), None)
            .await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(a);
            break;
        }
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }
    let limited = limited.expect("the bucket runs dry");
    let env = limited.expect_error(429, "rate_limited");
    assert_eq!(env.error.details["limit"], 100);
    limited.assert_rate_headers();
    assert_eq!(
        limited.header("x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert_eq!(retry, 1, "0.6 s rounds up to 1 s");
    let reset: u64 = limited
        .header("x-ratelimit-reset")
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(reset > now && reset <= now + 13, "reset {reset} now {now}");
    // Other tokens have their own buckets.
    assert_eq!(
        api.call(Method::GET, "/deployments", Some(WRITE), None)
            .await
            .status,
        StatusCode::OK
    );
    // 429s consumed nothing: after Retry-After one request is admitted even though we kept
    // hammering meanwhile.
    for _ in 0..5 {
        api.call(Method::GET, "/deployments", Some(STARTER), None)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let a = api
        .call(Method::GET, "/deployments", Some(STARTER), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn every_api_response_carries_the_rate_limit_headers() {
    let sim = start(Duration::ZERO).await;
    let api = Api::new(&sim);
    let c = api.created("main").await;
    let answers = vec![
        api.create(ADMIN, "main").await,
        api.create(ADMIN, "nope").await,
        api.create(READ, "main").await,
        api.call(Method::GET, "/deployments", Some(ADMIN), None)
            .await,
        api.call(Method::GET, "/deployments?limit=0", Some(ADMIN), None)
            .await,
        api.get(ADMIN, &c.id).await,
        api.get(ADMIN, "dep_nope").await,
        api.call(
            Method::GET,
            &format!("/deployments/{}/logs", c.id),
            Some(ADMIN),
            None,
        )
        .await,
        api.call(
            Method::POST,
            &format!("/deployments/{}/cancel", c.id),
            Some(ADMIN),
            None,
        )
        .await,
        api.call(
            Method::DELETE,
            &format!("/deployments/{}", c.id),
            Some(ADMIN),
            None,
        )
        .await,
        api.call(Method::GET, "/deployments", None, None).await,
        api.call(Method::GET, "/what", Some(ADMIN), None).await,
    ];
    let statuses: BTreeSet<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(
        statuses,
        BTreeSet::from([200, 201, 204, 400, 401, 403, 404, 409])
    );
    for a in &answers {
        a.assert_rate_headers();
        if !a.status.is_success() {
            let env: ErrorEnvelope = a.parse();
            assert!(!env.error.code.is_empty());
        }
    }
    let admin_limit = answers[0].header("x-ratelimit-limit").unwrap();
    assert_eq!(admin_limit, "10000", "Enterprise default");
    let pro_limit = answers[2].header("x-ratelimit-limit").unwrap();
    assert_eq!(pro_limit, "1000");
}
