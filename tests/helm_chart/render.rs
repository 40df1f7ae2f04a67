//! What the chart renders, value by value.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::cluster::repo_path;
use crate::helm::*;

#[test]
fn default_values_render_two_hardened_leader_elected_operator_pods_with_probes_a_disruption_budget_and_a_cluster_role_of_exactly_the_verbs_it_uses()
 {
    let r = template("gitdev", "gitdev-system", "");
    assert_eq!(
        r.kinds(),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
        "{}",
        r.yaml
    );
    for o in &r.objects {
        if !matches!(
            o["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        ) {
            assert_eq!(o["metadata"]["namespace"], "gitdev-system", "{o}");
        }
    }

    let deployment = r.one("Deployment");
    assert_eq!(deployment["metadata"]["name"], "gitdev-gitdev-operator");
    // Two replicas: one acts, the other stands by with leader election; a rollout starts the
    // new pod as a standby before the old one goes.
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "gitdev-gitdev-operator");
    assert_eq!(
        pod["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}})
    );
    let c = r.container();
    assert_eq!(c["image"], "gitdev-operator:0.1.0");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(
        c["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        })
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "50m", "memory": "64Mi"})
    );
    assert_eq!(c["resources"]["limits"], json!({"memory": "256Mi"}));

    assert_eq!(r.env_value("GITDEV_API_URL"), "https://api.git.dev/v1");
    assert_eq!(
        r.env_value("GITDEV_DEFAULT_CREDENTIALS_SECRET"),
        "gitdev-credentials"
    );
    assert_eq!(r.env_value("GITDEV_METRICS_ADDR"), "0.0.0.0:8080");
    assert_eq!(r.env_value("GITDEV_LOG_FORMAT"), "json");
    assert_eq!(r.env_value("GITDEV_LEADER_ELECTION"), "true");
    assert_eq!(r.env_value("GITDEV_LEASE_NAME"), "gitdev-gitdev-operator");
    assert_eq!(r.env_value("GITDEV_LEASE_DURATION_SECONDS"), "15");
    // The renew deadline is the operator's default (two thirds of the Lease).
    assert!(r.env("GITDEV_LEASE_RENEW_DEADLINE_SECONDS").is_none());
    assert!(r.env("WATCH_NAMESPACE").is_none());
    assert_eq!(
        r.env("POD_NAME").unwrap()["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.name"}})
    );
    assert_eq!(
        r.env("POD_NAMESPACE").unwrap()["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    // The key: the operator reads or creates its key Secret itself (no Helm lookup, so every
    // render is the same, under Argo CD too); the default name is the Secret earlier chart
    // versions made, so that an upgrade keeps the key. No key is passed, none is rendered.
    assert_eq!(
        r.env_value("GITDEV_KEY_SECRET"),
        "gitdev-gitdev-operator-fingerprint"
    );
    assert!(r.env("GITDEV_FINGERPRINT_KEY").is_none());
    assert!(r.all("Secret").is_empty());
    assert_eq!(
        template("gitdev", "gitdev-system", "").yaml,
        r.yaml,
        "rendering twice gives the same chart"
    );
    assert_eq!(
        r.named("Role", "gitdev-gitdev-operator-key")["rules"],
        json!([
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "resourceNames": ["gitdev-gitdev-operator-fingerprint"], "verbs": ["get"]},
        ])
    );
    let key_binding = r.named("RoleBinding", "gitdev-gitdev-operator-key");
    assert_eq!(key_binding["roleRef"]["name"], "gitdev-gitdev-operator-key");
    assert_eq!(
        key_binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "gitdev-gitdev-operator", "namespace": "gitdev-system"}])
    );

    // RBAC: a ClusterRole of exactly the operator's calls, bound to its ServiceAccount, and the
    // Lease's Role in the release namespace.
    assert_eq!(r.one("ClusterRole")["rules"], operator_rules());
    let binding = r.one("ClusterRoleBinding");
    assert_binds_the_service_account(binding, "ClusterRole");
    assert_eq!(
        r.named("Role", "gitdev-gitdev-operator-leader-election")["rules"],
        lease_rules("gitdev-gitdev-operator")
    );

    // Drains and upgrades take one of the two pods at a time.
    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["metadata"]["name"], "gitdev-gitdev-operator");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // The metrics Service selects exactly the operator's pods.
    let service = r.one("Service");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&service["spec"]["selector"], selector);
    for (k, v) in selector.as_object().unwrap() {
        assert_eq!(&deployment["spec"]["template"]["metadata"]["labels"][k], v);
    }
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
}

#[test]
fn every_env_var_the_chart_sets_is_one_the_operator_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_gitdev-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    for values in [
        "".to_string(),
        read("charts/gitdev-operator/ci/all-values.yaml"),
    ] {
        let r = template("gitdev", "gitdev-system", &values);
        for e in r.container()["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            // Read by the operator's code (not a flag): the Events' and Lease holder's identity,
            // the log filter, and Rust's own.
            if matches!(name, "POD_NAME" | "RUST_LOG" | "RUST_BACKTRACE") {
                continue;
            }
            assert!(
                help.contains(&format!("[env: {name}")),
                "the chart sets {name}, which `gitdev-operator --help` does not name:\n{help}"
            );
        }
    }
}

#[test]
fn watch_namespace_renders_a_role_and_binding_in_that_namespace_and_nothing_cluster_wide() {
    let r = template("gitdev", "gitdev-system", "watchNamespace: apps\n");
    assert!(r.all("ClusterRole").is_empty() && r.all("ClusterRoleBinding").is_empty());
    assert_eq!(r.env_value("WATCH_NAMESPACE"), "apps");
    let role = r.named("Role", "gitdev-gitdev-operator");
    assert_eq!(role["metadata"]["namespace"], "apps");
    assert_eq!(role["rules"], operator_rules());
    let binding = r.named("RoleBinding", "gitdev-gitdev-operator");
    assert_eq!(binding["metadata"]["namespace"], "apps");
    assert_binds_the_service_account(binding, "Role");
    // Everything else stays in the release namespace.
    for kind in ["ServiceAccount", "Deployment", "Service"] {
        assert_eq!(r.one(kind)["metadata"]["namespace"], "gitdev-system");
    }
    assert_eq!(
        r.named("Role", "gitdev-gitdev-operator-key")["metadata"]["namespace"],
        "gitdev-system"
    );
}

#[test]
fn watch_namespaces_render_one_role_and_binding_per_namespace_and_nothing_cluster_wide() {
    let r = template(
        "gitdev",
        "gitdev-system",
        "watchNamespaces: [team-a, team-b]\n",
    );
    assert!(r.all("ClusterRole").is_empty() && r.all("ClusterRoleBinding").is_empty());
    assert_eq!(r.env_value("WATCH_NAMESPACE"), "team-a,team-b");
    let in_namespace = |kind: &str| -> Vec<&str> {
        r.all(kind)
            .iter()
            .filter(|o| o["metadata"]["name"] == "gitdev-gitdev-operator")
            .map(|o| o["metadata"]["namespace"].as_str().unwrap())
            .collect()
    };
    assert_eq!(in_namespace("Role"), ["team-a", "team-b"]);
    assert_eq!(in_namespace("RoleBinding"), ["team-a", "team-b"]);
    for ns in ["team-a", "team-b"] {
        let role = r
            .all("Role")
            .into_iter()
            .find(|o| o["metadata"]["namespace"] == ns)
            .unwrap();
        assert_eq!(role["rules"], operator_rules());
        let binding = r
            .all("RoleBinding")
            .into_iter()
            .find(|o| o["metadata"]["namespace"] == ns)
            .unwrap();
        assert_binds_the_service_account(binding, "Role");
    }
    // The older single value joins the list; a namespace named in both is watched once.
    let r = template(
        "gitdev",
        "gitdev-system",
        "watchNamespace: team-a\nwatchNamespaces: [team-b, team-a]\n",
    );
    assert_eq!(r.env_value("WATCH_NAMESPACE"), "team-b,team-a");
    let watched = r
        .all("Role")
        .into_iter()
        .filter(|o| o["metadata"]["name"] == "gitdev-gitdev-operator")
        .count();
    assert_eq!(watched, 2);
}

#[test]
fn two_replicas_turn_on_leader_election_with_a_lease_role_in_the_release_namespace_only() {
    for values in [
        "",
        "replicas: 2\n",
        "replicas: 1\nleaderElection:\n  enabled: true\n",
    ] {
        let r = template("gitdev", "gitdev-system", values);
        assert_eq!(r.env_value("GITDEV_LEADER_ELECTION"), "true", "{values}");
        assert_eq!(r.env_value("GITDEV_LEASE_NAME"), "gitdev-gitdev-operator");
        assert_eq!(r.env_value("GITDEV_LEASE_DURATION_SECONDS"), "15");
        assert_eq!(
            r.one("Deployment")["spec"]["strategy"]["type"],
            "RollingUpdate"
        );
        let role = r.named("Role", "gitdev-gitdev-operator-leader-election");
        assert_eq!(role["metadata"]["namespace"], "gitdev-system");
        assert_eq!(role["rules"], lease_rules("gitdev-gitdev-operator"));
        let binding = r.named("RoleBinding", "gitdev-gitdev-operator-leader-election");
        assert_eq!(binding["metadata"]["namespace"], "gitdev-system");
        assert_eq!(
            binding["roleRef"]["name"],
            "gitdev-gitdev-operator-leader-election"
        );
        assert_eq!(binding["subjects"][0]["name"], "gitdev-gitdev-operator");
        // The object permissions are still the ClusterRole's.
        assert_eq!(r.one("ClusterRole")["rules"], operator_rules());
    }
    let r = template("gitdev", "gitdev-system", "replicas: 3\n");
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 3);
    assert_eq!(r.one("PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    let r = template(
        "gitdev",
        "gitdev-system",
        "leaderElection:\n  leaseDurationSeconds: 30\n  renewDeadlineSeconds: 12\n",
    );
    assert_eq!(r.env_value("GITDEV_LEASE_DURATION_SECONDS"), "30");
    assert_eq!(r.env_value("GITDEV_LEASE_RENEW_DEADLINE_SECONDS"), "12");
}

#[test]
fn one_replica_runs_without_leader_election_with_the_recreate_strategy_and_no_disruption_budget() {
    let r = template("gitdev", "gitdev-system", "replicas: 1\n");
    let deployment = r.one("Deployment");
    assert_eq!(deployment["spec"]["replicas"], 1);
    // Without leader election two pods must never overlap, not even during a rollout.
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(r.env_value("GITDEV_LEADER_ELECTION"), "false");
    assert!(r.env("GITDEV_LEASE_NAME").is_none());
    assert!(r.env("GITDEV_LEASE_RENEW_DEADLINE_SECONDS").is_none());
    // No Lease permission without leader election (the key's Role only), and no budget that
    // could block a drain.
    let names = |kind: &str| -> Vec<String> {
        r.all(kind)
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names("Role"), ["gitdev-gitdev-operator-key"]);
    assert_eq!(names("RoleBinding"), ["gitdev-gitdev-operator-key"]);
    assert!(r.all("PodDisruptionBudget").is_empty());
    assert_eq!(r.one("ClusterRole")["rules"], operator_rules());
    // With leader election asked for, a single pod still gets no budget.
    let r = template(
        "gitdev",
        "gitdev-system",
        "replicas: 1\nleaderElection:\n  enabled: true\n",
    );
    assert!(r.all("PodDisruptionBudget").is_empty());
    // Two replicas but no budget when it is turned off.
    let r = template(
        "gitdev",
        "gitdev-system",
        "podDisruptionBudget:\n  enabled: false\n",
    );
    assert!(r.all("PodDisruptionBudget").is_empty());
}

#[test]
fn the_service_monitor_is_rendered_only_when_enabled() {
    assert!(
        template("gitdev", "gitdev-system", "")
            .all("ServiceMonitor")
            .is_empty()
    );
    let r = template(
        "gitdev",
        "gitdev-system",
        "serviceMonitor:\n  enabled: true\n",
    );
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics"}])
    );
    assert_eq!(
        sm["spec"]["namespaceSelector"],
        json!({"matchNames": ["gitdev-system"]})
    );
    let labels = &r.one("Service")["metadata"]["labels"];
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &labels[k], v,
            "the ServiceMonitor must select the metrics Service"
        );
    }
}

#[test]
fn every_value_set_lands_where_it_belongs() {
    let r = template(
        "gitdev",
        "gitdev-system",
        &read("charts/gitdev-operator/ci/all-values.yaml"),
    );
    let d = r.one("Deployment");
    assert_eq!(d["metadata"]["name"], "gitdev-all");
    assert_eq!(d["spec"]["replicas"], 3);
    let pod = &d["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"]["team"], "platform");
    assert_eq!(pod["metadata"]["labels"]["app.kubernetes.io/name"], "gdo");
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({"example.com/owner": "platform"})
    );
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], "gitdev-all-sa");
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "registry-credentials"}])
    );
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["securityContext"]["fsGroup"], 65532);
    assert_eq!(spec["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"],
        100
    );
    let c = r.container();
    assert_eq!(
        c["image"],
        "registry.example.com/platform/gitdev-operator:0.1.0-rc.1"
    );
    assert_eq!(c["imagePullPolicy"], "Always");
    assert_eq!(c["ports"][0]["containerPort"], 9090);
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "1", "memory": "512Mi"})
    );
    for (name, value) in [
        (
            "GITDEV_API_URL",
            "http://gitdev-sim.gitdev-system.svc:8080/v1",
        ),
        ("WATCH_NAMESPACE", "apps,billing"),
        ("GITDEV_DEFAULT_CREDENTIALS_SECRET", "team-token"),
        ("GITDEV_CONCURRENCY", "4"),
        ("GITDEV_METRICS_ADDR", "0.0.0.0:9090"),
        ("GITDEV_LOG_FORMAT", "text"),
        ("RUST_LOG", "info,gitdev=debug,kube=warn"),
        ("GITDEV_CLEANUP_GRACE_SECONDS", "60"),
        ("GITDEV_API_TIMEOUT_SECONDS", "10"),
        ("GITDEV_LEADER_ELECTION", "true"),
        ("GITDEV_LEASE_NAME", "gitdev-all-leader"),
        ("GITDEV_LEASE_DURATION_SECONDS", "20"),
        ("GITDEV_LEASE_RENEW_DEADLINE_SECONDS", "12"),
        ("RUST_BACKTRACE", "1"),
        ("GITDEV_RECHECK_FINISHED_SECONDS", "120"),
    ] {
        assert_eq!(r.env_value(name), value, "{name}");
    }
    // An existing key Secret overrides the operator's own, and none is created.
    assert!(r.all("Secret").is_empty());
    assert_eq!(r.env_value("GITDEV_KEY_SECRET"), "gitdev-key");
    // Three replicas, but the disruption budget is turned off.
    assert!(r.all("PodDisruptionBudget").is_empty());
    assert_eq!(
        r.env("GITDEV_FINGERPRINT_KEY").unwrap()["valueFrom"]["secretKeyRef"],
        json!({"name": "gitdev-fingerprint-key", "key": "key"})
    );
    let sa = r.one("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "gitdev-all-sa");
    assert_eq!(
        sa["metadata"]["annotations"],
        json!({"iam.example.com/role": "gitdev"})
    );
    let service = r.one("Service");
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["port"], 9191);
    assert_eq!(
        service["metadata"]["annotations"],
        json!({"prometheus.io/scrape": "true"})
    );
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(
        sm["spec"]["endpoints"],
        json!([{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}])
    );
    let watched: Vec<&Value> = r
        .all("Role")
        .into_iter()
        .filter(|o| o["metadata"]["name"] == "gitdev-all")
        .map(|o| &o["metadata"]["namespace"])
        .collect();
    assert_eq!(watched, [&json!("apps"), &json!("billing")]);
    assert_eq!(
        r.named("Role", "gitdev-all-leader-election")["rules"],
        lease_rules("gitdev-all-leader")
    );
    let cm = r.named("ConfigMap", "gitdev-all-argocd-health");
    assert_eq!(cm["metadata"]["namespace"], "argocd");

    // rbac.create: false renders no RBAC at all.
    let r = template("gitdev", "gitdev-system", "rbac:\n  create: false\n");
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(r.all(kind).is_empty(), "{kind}");
    }
    // serviceAccount.create: false uses the named one.
    let r = template(
        "gitdev",
        "gitdev-system",
        "serviceAccount:\n  create: false\n  name: platform-sa\n",
    );
    assert!(r.all("ServiceAccount").is_empty());
    assert_eq!(
        r.one("Deployment")["spec"]["template"]["spec"]["serviceAccountName"],
        "platform-sa"
    );
    assert_eq!(
        r.one("ClusterRoleBinding")["subjects"][0]["name"],
        "platform-sa"
    );
}

#[test]
fn the_charts_copies_of_the_crd_and_of_the_argocd_health_check_are_byte_identical_to_the_originals()
{
    assert!(
        read("charts/gitdev-operator/crds/gitdeployments.git.dev.yaml")
            == read("crds/gitdeployments.git.dev.yaml"),
        "charts/gitdev-operator/crds/ differs from crds/: cp crds/gitdeployments.git.dev.yaml charts/gitdev-operator/crds/"
    );
    let script = read("charts/gitdev-operator/files/argocd-health.lua");
    let canonical = repo_path("examples/argocd/health.lua");
    if canonical.exists() {
        assert!(
            script == read("examples/argocd/health.lua"),
            "charts/gitdev-operator/files/argocd-health.lua differs from examples/argocd/health.lua: cp examples/argocd/health.lua charts/gitdev-operator/files/argocd-health.lua"
        );
    }
    // The rendered ConfigMap carries the script byte for byte.
    let r = template(
        "gitdev",
        "gitdev-system",
        "argocd:\n  healthCheck:\n    enabled: true\n",
    );
    let cm = r.one("ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "gitdev-system");
    assert_eq!(
        cm["data"]["resource.customizations.health.git.dev_Deployment"].as_str(),
        Some(script.as_str())
    );
    assert!(script.contains("Degraded") && script.contains("Healthy"));
}
