//! The rendered chart on the real control plane: server-side validation, and what its RBAC lets
//! the ServiceAccount do (`kubectl auth can-i`).

use crate::common::cluster::{Cluster, cluster};
use crate::helm::*;

#[test]
fn the_rendered_chart_passes_server_side_dry_run_on_the_control_plane() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-dry"));
    let apps = rt.block_on(c.namespace("helm-dry-apps"));
    let billing = rt.block_on(c.namespace("helm-dry-billing"));
    let argocd = rt.block_on(c.namespace("helm-dry-argocd"));
    let monitoring = rt.block_on(c.namespace("helm-dry-monitoring"));
    let all_values = read("charts/gitdev-operator/ci/all-values.yaml")
        .replace("watchNamespace: apps", &format!("watchNamespace: {apps}"))
        .replace(
            "  - apps\n  - billing\n",
            &format!("  - {apps}\n  - {billing}\n"),
        )
        .replace("namespace: argocd", &format!("namespace: {argocd}"))
        .replace("namespace: monitoring", &format!("namespace: {monitoring}"))
        // The ServiceMonitor and PrometheusRule CRDs are not installed here.
        .replace(
            "serviceMonitor:\n  enabled: true",
            "serviceMonitor:\n  enabled: false",
        )
        .replace(
            "prometheusRule:\n    enabled: true",
            "prometheusRule:\n    enabled: false",
        );
    for (release, values) in [
        (
            format!("d{}", &release_ns[release_ns.len() - 10..]),
            String::new(),
        ),
        ("replicated".to_string(), "replicas: 2\n".to_string()),
        ("all".to_string(), all_values),
    ] {
        let r = template(&release, &release_ns, &values);
        assert!(r.all("ServiceMonitor").is_empty());
        assert!(r.all("PrometheusRule").is_empty());
        let out = c
            .kubectl_with_stdin(["apply", "--dry-run=server", "-f", "-"], &r.yaml)
            .expect_success();
        for kind in ["deployment.apps", "serviceaccount", "service"] {
            assert!(out.contains(&format!("{kind}/")), "{out}");
        }
        assert!(out.contains("created (server dry run)"), "{out}");
    }
}

/// Applies the rendered ServiceAccount and RBAC (and any rendered Secret) for real.
pub fn apply_identity(c: &Cluster, r: &Rendered) {
    let manifests = r.only(&[
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Secret",
    ]);
    c.kubectl_with_stdin(["apply", "-f", "-"], &manifests)
        .expect_success();
}

pub fn can_i(c: &Cluster, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let mut args = vec!["auth", "can-i", verb];
    args.extend(resource.split_whitespace());
    args.extend(["--as", sa]);
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let out = c.kubectl(&args);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        _ => panic!("{out}"),
    }
}

#[test]
fn kubectl_auth_can_i_shows_the_service_account_may_do_what_the_operator_needs_and_no_more() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_guard = rt.block_on(c.namespace("helm-cani"));
    let apps_guard = rt.block_on(c.namespace("helm-cani-apps"));
    let other_guard = rt.block_on(c.namespace("helm-cani-other"));
    let (release_ns, apps, other): (&str, &str, &str) = (&release_guard, &apps_guard, &other_guard);

    // Cluster-wide, with leader election.
    let release = format!("c{}", &release_ns[release_ns.len() - 10..]);
    let r = template(&release, release_ns, "replicas: 2\n");
    apply_identity(c, &r);
    let full = format!("{release}-gitdev-operator");
    let sa = format!("system:serviceaccount:{release_ns}:{full}");
    let lease = format!("leases.coordination.k8s.io/{full}");
    let yes = |verb: &str, resource: &str, ns: Option<&str>| {
        assert!(
            can_i(c, &sa, verb, resource, ns),
            "{sa} should be able to {verb} {resource} in {ns:?}"
        );
    };
    let no = |verb: &str, resource: &str, ns: Option<&str>| {
        assert!(
            !can_i(c, &sa, verb, resource, ns),
            "{sa} must not be able to {verb} {resource} in {ns:?}"
        );
    };
    for verb in ["get", "list", "watch", "patch"] {
        yes(verb, "gitdeployments.git.dev", Some(apps));
        yes(verb, "gitdeployments.git.dev", None);
    }
    yes(
        "patch",
        "gitdeployments.git.dev --subresource=status",
        Some(apps),
    );
    for verb in ["create", "update", "delete", "deletecollection"] {
        no(verb, "gitdeployments.git.dev", Some(apps));
    }
    no(
        "update",
        "gitdeployments.git.dev --subresource=status",
        Some(apps),
    );
    no(
        "update",
        "gitdeployments.git.dev --subresource=finalizers",
        Some(apps),
    );
    for verb in ["get", "list", "watch"] {
        yes(verb, "secrets", Some(apps));
        yes(verb, "secrets", None);
    }
    for verb in ["create", "update", "patch", "delete"] {
        no(verb, "secrets", Some(apps));
    }
    yes("create", "events.events.k8s.io", Some(apps));
    yes("patch", "events.events.k8s.io", Some(apps));
    no("delete", "events.events.k8s.io", Some(apps));
    no("create", "events", Some(apps)); // core/v1 Events: the operator uses events.k8s.io
    no("list", "pods", Some(apps));
    // spec.exportTo: the ConfigMaps it keeps, read, applied and deleted one by one, never
    // listed or watched.
    for verb in ["get", "create", "patch", "delete"] {
        yes(verb, "configmaps", Some(apps));
    }
    for verb in ["list", "watch", "update", "deletecollection"] {
        no(verb, "configmaps", Some(apps));
    }
    no("list", "namespaces", None);
    no("create", "clusterroles.rbac.authorization.k8s.io", None);
    no(
        "create",
        "rolebindings.rbac.authorization.k8s.io",
        Some(apps),
    );
    no(
        "get",
        "customresourcedefinitions.apiextensions.k8s.io",
        None,
    );
    // Leases: only its own, only in the release namespace.
    yes("create", "leases.coordination.k8s.io", Some(release_ns));
    yes("get", &lease, Some(release_ns));
    yes("patch", &lease, Some(release_ns));
    no("update", &lease, Some(release_ns));
    no("delete", &lease, Some(release_ns));
    no(
        "patch",
        "leases.coordination.k8s.io/someone-else",
        Some(release_ns),
    );
    no("list", "leases.coordination.k8s.io", Some(release_ns));
    for verb in ["get", "create", "patch"] {
        no(verb, &lease, Some(apps));
    }

    // One watched namespace and one replica: nothing anywhere else, nothing cluster-wide, no
    // Lease.
    let release = format!("n{}", &release_ns[release_ns.len() - 10..]);
    let r = template(
        &release,
        release_ns,
        &format!("watchNamespace: {apps}\nreplicas: 1\n"),
    );
    apply_identity(c, &r);
    let sa = format!("system:serviceaccount:{release_ns}:{release}-gitdev-operator");
    let can = |verb: &str, resource: &str, ns: Option<&str>| can_i(c, &sa, verb, resource, ns);
    assert!(can("list", "gitdeployments.git.dev", Some(apps)));
    assert!(can(
        "patch",
        "gitdeployments.git.dev --subresource=status",
        Some(apps)
    ));
    assert!(can("get", "secrets", Some(apps)));
    assert!(can("create", "events.events.k8s.io", Some(apps)));
    for ns in [Some(other), Some(release_ns), None] {
        assert!(!can("list", "gitdeployments.git.dev", ns), "{ns:?}");
        assert!(!can("get", "secrets", ns), "{ns:?}");
        assert!(!can("create", "events.events.k8s.io", ns), "{ns:?}");
    }
    assert!(!can(
        "create",
        "leases.coordination.k8s.io",
        Some(release_ns)
    ));
    assert!(!can("delete", "gitdeployments.git.dev", Some(apps)));
    assert!(!can("patch", "secrets", Some(apps)));
    assert!(can("patch", "configmaps", Some(apps)));
    for ns in [Some(other), Some(release_ns), None] {
        assert!(!can("patch", "configmaps", ns), "{ns:?}");
    }
}

#[test]
fn with_a_list_of_namespaces_the_service_account_reads_secrets_in_those_namespaces_only() {
    let c = cluster();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let release_ns = rt.block_on(c.namespace("helm-cani-list"));
    let team_a = rt.block_on(c.namespace("helm-cani-team-a"));
    let team_b = rt.block_on(c.namespace("helm-cani-team-b"));
    let other = rt.block_on(c.namespace("helm-cani-unlisted"));
    let release = format!("m{}", &release_ns[release_ns.len() - 10..]);
    let r = template(
        &release,
        &release_ns,
        &format!("watchNamespaces: [{team_a}, {team_b}]\n"),
    );
    assert!(r.all("ClusterRole").is_empty() && r.all("ClusterRoleBinding").is_empty());
    apply_identity(c, &r);
    let sa = format!("system:serviceaccount:{release_ns}:{release}-gitdev-operator");
    let can = |verb: &str, resource: &str, ns: Option<&str>| can_i(c, &sa, verb, resource, ns);
    for ns in [&team_a, &team_b] {
        let ns = Some(ns.as_ref());
        for verb in ["get", "list", "watch"] {
            assert!(can(verb, "secrets", ns), "{verb} secrets in {ns:?}");
            assert!(can(verb, "gitdeployments.git.dev", ns), "{ns:?}");
        }
        assert!(can("patch", "gitdeployments.git.dev", ns));
        assert!(can(
            "patch",
            "gitdeployments.git.dev --subresource=status",
            ns
        ));
        assert!(can("create", "events.events.k8s.io", ns));
        assert!(!can("patch", "secrets", ns));
        for verb in ["get", "create", "patch", "delete"] {
            assert!(can(verb, "configmaps", ns), "{verb} configmaps in {ns:?}");
        }
        assert!(!can("list", "configmaps", ns));
    }
    // Not in a namespace left off the list, not in its own, not cluster-wide.
    for ns in [Some(other.as_ref()), Some(release_ns.as_ref()), None] {
        for verb in ["get", "list", "watch"] {
            assert!(!can(verb, "secrets", ns), "{verb} secrets in {ns:?}");
        }
        assert!(!can("list", "gitdeployments.git.dev", ns), "{ns:?}");
        assert!(!can("create", "events.events.k8s.io", ns), "{ns:?}");
        assert!(!can("patch", "configmaps", ns), "{ns:?}");
    }
}
