//! The checked-in CRD must be exactly what `crdgen` prints from the Rust types.

use std::path::Path;

#[test]
fn the_checked_in_crd_is_what_crdgen_prints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = gitdev::resource::crd_yaml();
    let mut copies = vec![root.join("crds/gitdeployments.git.dev.yaml")];
    // The Helm chart ships the same file (Helm installs, but never upgrades, `crds/`).
    let chart_copy = root.join("charts/gitdev-operator/crds/gitdeployments.git.dev.yaml");
    if chart_copy.parent().is_some_and(|p| p.exists()) {
        copies.push(chart_copy);
    }
    for path in copies {
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{} differs from the Rust types: run `cargo run --bin crdgen > {}`",
            path.display(),
            path.display()
        );
    }
}

#[test]
fn crdgen_prints_the_same_crd() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        gitdev::resource::crd_yaml()
    );
}
