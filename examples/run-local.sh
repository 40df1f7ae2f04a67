#!/usr/bin/env bash
# Runs the whole product on this machine: a local Kubernetes control plane (unless KUBECONFIG
# names a reachable cluster), the git.dev API simulator, and the operator; applies
# examples/basic.yaml, waits for it to reach `success`, prints `kubectl get gitdeployments`,
# and keeps everything running until Ctrl-C. Then everything stops cleanly.
#
#   examples/run-local.sh                  run until interrupted
#   examples/run-local.sh --exit-when-ready   stop once the example succeeded (used by the tests)
#   examples/run-local.sh --in-cluster     the way a cluster runs it: the images built with
#                                          buildah, a local node (kubelet + containerd), the
#                                          simulator as a pod and the operator installed with
#                                          helm (root only; docs/node.md). Combines with
#                                          --exit-when-ready.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
exit_when_ready=false in_cluster=false
for arg in "$@"; do
  case $arg in
    --exit-when-ready) exit_when_ready=true ;;
    --in-cluster) in_cluster=true ;;
    *) echo "run-local.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'run-local.sh: %s\n' "$*" >&2; exit 1; }
for tool in cargo kubectl curl; do
  command -v "$tool" >/dev/null || die "'$tool' is missing: see the README's prerequisites"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/gitdev-local.XXXXXX")
pids=()
cluster_dir=""
cleanup() {
  set +e
  say "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  [ -n "$cluster_dir" ] && tests/cluster/down.sh "$cluster_dir" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if $in_cluster; then
  [ "$(id -u)" = 0 ] || die "--in-cluster needs root (containerd and the kubelet)"
  say "building the images (tests/cluster/images.sh)"
  tests/cluster/images.sh --out "$work/images" >&2
  # shellcheck disable=SC1091 # written by images.sh just now
  source "$work/images/images.env"
  say "starting a local control plane and a node (kubelet, containerd, controllers, scheduler)"
  cluster_dir="$work/cluster"
  tests/cluster/up.sh --dir "$cluster_dir" --owner-pid $$ --node --images "$work/images" >&2
  export KUBECONFIG="$cluster_dir/kubeconfig"
  helm="$(tests/cluster/build.sh | tail -n1)/helm"
  kubectl create namespace gitdev-system >/dev/null

  say "starting the simulator as a pod (deploy/gitdev-sim.yaml)"
  kubectl apply -n gitdev-system -f deploy/gitdev-sim.yaml >/dev/null
  kubectl wait -n gitdev-system --for=condition=Available --timeout=180s deployment/gitdev-sim >/dev/null
  # No kube-proxy on this node: the operator reaches the simulator at its pod's address.
  sim_ip=$(kubectl get pods -n gitdev-system -l app.kubernetes.io/name=gitdev-sim -o jsonpath='{.items[0].status.podIP}')
  sim="http://$sim_ip:8080"

  say "creating the token Secret (the simulator's sk_test_write token)"
  kubectl create secret generic gitdev-credentials --from-literal=token=sk_test_write >/dev/null

  say "helm install gitdev-operator ($GITDEV_OPERATOR_IMAGE, two replicas, API $sim/v1)"
  "$helm" install gitdev-operator charts/gitdev-operator -n gitdev-system --wait --timeout 180s \
    --set image.repository="${GITDEV_OPERATOR_IMAGE%:*}" --set image.tag="${GITDEV_OPERATOR_IMAGE##*:}" \
    --set image.pullPolicy=Never --set apiUrl="$sim/v1" --set watchNamespace=default >/dev/null

  say "applying examples/basic.yaml"
  kubectl apply -f examples/basic.yaml
  if ! kubectl wait --for=condition=Ready --timeout=180s gitdeployment/web >/dev/null; then
    kubectl describe gitdeployment/web >&2 || true
    kubectl logs -n gitdev-system -l app.kubernetes.io/instance=gitdev-operator --tail=30 >&2 || true
    die "the example did not become Ready"
  fi
  [ "$(kubectl get gitdeployment web -o jsonpath='{.status.status}')" = success ] \
    || die "the example is Ready but its status is not success"
  kubectl get gitdeployments
  kubectl get pods -n gitdev-system -o wide
  echo
  echo "Simulator:  $sim   (hooks: $sim/_sim/stats, $sim/_sim/deployments)"
  echo "Operator:   kubectl logs -n gitdev-system -l app.kubernetes.io/instance=gitdev-operator"
  echo "Cluster:    export KUBECONFIG=$KUBECONFIG"
  if $exit_when_ready; then
    say "example reached success"
    exit 0
  fi
  say "running; press Ctrl-C to stop everything"
  while sleep 3600; do :; done
fi

say "building gitdev-operator and gitdev-sim"
cargo build --quiet --bin gitdev-operator --bin gitdev-sim
bin="${CARGO_TARGET_DIR:-$root/target}/debug"

if [ -n "${KUBECONFIG:-}" ] && kubectl cluster-info >/dev/null 2>&1; then
  say "using the cluster of KUBECONFIG=$KUBECONFIG"
else
  say "starting a local control plane (kube-apiserver + etcd on 127.0.0.1)"
  cluster_dir="$work/cluster"
  tests/cluster/up.sh --dir "$cluster_dir" --owner-pid $$ >&2
  export KUBECONFIG="$cluster_dir/kubeconfig"
fi

say "installing the CRD"
kubectl apply --server-side -f crds/gitdeployments.git.dev.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/gitdeployments.git.dev >/dev/null

# Reads "<prefix>http://ADDR" from a process's stdout file.
wait_for_line() {
  local file=$1 prefix=$2 pid=$3 line=""
  for _ in $(seq 1 150); do
    line=$(grep -m1 "^$prefix" "$file" 2>/dev/null || true)
    [ -n "$line" ] && { echo "${line#"$prefix"}"; return 0; }
    kill -0 "$pid" 2>/dev/null || { cat "$work"/*.log >&2; die "process $pid exited early"; }
    sleep 0.2
  done
  die "no '$prefix' line in $file"
}

say "starting the git.dev API simulator"
"$bin/gitdev-sim" --listen 127.0.0.1:0 >"$work/sim.out" 2>"$work/sim.log" &
pids+=($!)
sim=$(wait_for_line "$work/sim.out" "gitdev-sim listening on " "${pids[-1]}")

say "creating the token Secret (the simulator's sk_test_write token)"
kubectl create secret generic gitdev-credentials --from-literal=token=sk_test_write \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null

say "starting gitdev-operator against $sim/v1"
"$bin/gitdev-operator" --api-url "$sim/v1" --metrics-addr 127.0.0.1:0 \
  >"$work/operator.out" 2>"$work/operator.log" &
pids+=($!)
metrics=$(wait_for_line "$work/operator.out" "gitdev-operator metrics on " "${pids[-1]}")

say "applying examples/basic.yaml"
kubectl apply -f examples/basic.yaml
if ! kubectl wait --for=condition=Ready --timeout=120s gitdeployment/web >/dev/null; then
  kubectl describe gitdeployment/web >&2 || true
  tail -n 30 "$work/operator.log" >&2
  die "the example did not become Ready"
fi
[ "$(kubectl get gitdeployment web -o jsonpath='{.status.status}')" = success ] \
  || die "the example is Ready but its status is not success"
kubectl get gitdeployments
echo
echo "Simulator:  $sim   (hooks: $sim/_sim/stats, $sim/_sim/deployments)"
echo "Operator:   $metrics/metrics   (logs: $work/operator.log)"
echo "Cluster:    export KUBECONFIG=$KUBECONFIG"

if $exit_when_ready; then
  say "example reached success"
  exit 0
fi
say "running; press Ctrl-C to stop everything"
wait "${pids[-1]}"
