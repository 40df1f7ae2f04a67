//! The `gitdev-sim` binary and shutting an in-process simulator down.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{PROJECT, client, start};

#[test]
fn the_gitdev_sim_binary_prints_its_address_serves_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitdev-sim"))
        .args(["--listen", "127.0.0.1:0", "--phase-duration", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gitdev-sim starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(l) => l,
        Err(e) => {
            let _ = child.kill();
            panic!("no listening line: {e}");
        }
    };
    let root = line
        .trim()
        .strip_prefix("gitdev-sim listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(root.starts_with("http://127.0.0.1:"), "{root}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        client()
            .post(format!("{root}/v1/deployments"))
            .header("authorization", "Bearer sk_test_write")
            .json(&json!({"project_id": PROJECT, "branch": "main"}))
            .send()
            .await
            .map(|r| r.status())
    });

    #[cfg(unix)]
    {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = None;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if exited.is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
        assert_eq!(status.unwrap(), StatusCode::CREATED);
        assert!(
            exited.is_some_and(|s| s.success()),
            "SIGTERM ends it cleanly: {exited:?}"
        );
    }
    #[cfg(not(unix))]
    {
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(status.unwrap(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn shutdown_stops_the_server_and_dropping_it_does_too() {
    let sim = start(Duration::ZERO).await;
    let base = sim.base_url.clone();
    sim.shutdown().await;
    let http = client();
    assert!(
        http.get(format!("{base}/deployments"))
            .send()
            .await
            .is_err()
    );

    let sim = start(Duration::ZERO).await;
    let base = sim.base_url.clone();
    drop(sim);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http.get(format!("{base}/deployments")).send().await.is_ok() {
        assert!(Instant::now() < deadline, "still serving after drop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
