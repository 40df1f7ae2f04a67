#!/usr/bin/env bash
# Runs the whole product on this machine: a local Kubernetes control plane (unless KUBECONFIG
# names a reachable cluster), the git.dev API simulator, and the operator; applies
# examples/basic.yaml, waits for it to reach `success`, prints `kubectl get gitdeployments`,
# and keeps everything running until Ctrl-C. Then everything stops cleanly.
#
#   examples/run-local.sh                  run until interrupted
#   examples/run-local.sh --exit-when-ready   stop once the example succeeded (used by the tests)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
exit_when_ready=false
[ "${1:-}" = "--exit-when-ready" ] && exit_when_ready=true

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
