//! How the operator process starts and stops, against a real kube-apiserver.

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::{LocalControlPlane, cluster, unique_temp_dir};
use common::stack::{Operator, Sim};

#[test]
fn the_operator_refuses_to_start_without_its_crd_and_says_how_to_install_it() {
    // A control plane of its own, on which the CRD was never installed.
    let bare = LocalControlPlane::start(&unique_temp_dir("gitdev-nocrd"), Some(std::process::id()))
        .expect("a bare control plane");
    let out = Command::new(env!("CARGO_BIN_EXE_gitdev-operator"))
        .env("KUBECONFIG", bare.kubeconfig())
        .args([
            "--api-url",
            "http://127.0.0.1:9/v1",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let _ = bare.stop();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CRD gitdeployments.git.dev is not installed")
            && stderr.contains("kubectl apply"),
        "{stderr}"
    );
}

#[test]
fn the_operator_stops_cleanly_on_sigterm() {
    let cluster = cluster();
    let sim = Sim::start(0.0);
    let mut operator = Operator::start(cluster, &sim.api_url(), "default", &[]);
    // Serving and ready before it is told to stop.
    common::stack::eventually(Duration::from_secs(30), "readyz", || {
        (operator.get("/readyz").0 == 200).then_some(())
    });
    let status = operator
        .proc
        .terminate(Duration::from_secs(10))
        .expect("exits within 10 s of SIGTERM");
    assert!(
        status.success(),
        "{status:?}\n{}",
        operator.proc.log_tail(20)
    );
    assert!(operator.proc.log_tail(5).contains("stopped"));
}

#[test]
fn a_bad_flag_value_is_rejected_with_the_flag_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitdev-operator"))
        .args(["--log-format", "xml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("--log-format") && stderr.contains("text") && stderr.contains("json"),
        "{stderr}"
    );
}
