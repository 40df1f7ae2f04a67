//! Throughput; ignored because it is timing-dependent. Run it by hand:
//! `cargo test --release --test sim_http -- --ignored`.

use std::time::{Duration, Instant};

use gitdev::sim::SimConfig;
use reqwest::StatusCode;

use crate::support::{ADMIN, Api, start_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing-dependent; run by hand to measure throughput"]
async fn sustains_thousands_of_requests_per_second() {
    let mut config = SimConfig::default_fixture().with_phase_duration(Duration::ZERO);
    if let Some(t) = config.tokens.get_mut(ADMIN) {
        t.rate_limit = Some(gitdev::sim::RateLimit {
            per_minute: 100_000_000,
            burst: 1_000_000,
        });
    }
    let sim = start_with(config).await;
    let api = Api::new(&sim);
    for _ in 0..200 {
        api.created("main").await;
    }
    let ids: Vec<String> = api
        .all_deployments()
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let per_worker = 2_000;
    let workers = 16;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let http = api.http.clone();
        let base = api.base.clone();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_worker {
                let url = if i % 10 == 0 {
                    format!("{base}/deployments?limit=20")
                } else {
                    format!("{base}/deployments/{}", ids[(i + w) % ids.len()])
                };
                let r = http
                    .get(url)
                    .header("authorization", format!("Bearer {ADMIN}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                r.bytes().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = (per_worker * workers) as f64;
    let rate = n / started.elapsed().as_secs_f64();
    eprintln!(
        "{n} requests in {:?}: {rate:.0} requests/s (client and server on the same cores)",
        started.elapsed()
    );
    assert!(rate > 1_000.0, "{rate:.0} requests/s");
}
