#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (`.ci/run` calls this script):
# formatting, lints, the CRD drift check, unit tests, integration and end-to-end tests against
# a real kube-apiserver + etcd and real `gitdev-sim`/`gitdev-operator` processes, schema
# fuzzing of the simulator with schemathesis, and the README's "run it" command.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

step() { printf '\n\033[1m=== %s\033[0m\n' "$*"; }
die() { printf 'run-all.sh: %s\n' "$*" >&2; exit 1; }

step "checking tools"
missing=()
for tool in cargo rustfmt go kubectl openssl npm unzip python3 curl flock; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
cargo clippy --version >/dev/null 2>&1 || missing+=("clippy (rustup component add clippy)")
[ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (see the README's prerequisites; .ci/run installs them)"

step "control-plane binaries (built once per machine, then cached)"
tests/cluster/build.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, CRD drift, simulator, client, control plane, operator end to end)"
# Every suite runs even when one fails, so that one run shows every failure.
cargo test --all-targets --no-fail-fast

step "promtool: the chart's alert rules checked and unit-tested by Prometheus' own code"
tests/monitoring/check.sh

step "the images (buildah) and the chart on a real node (kubelet + containerd): tests/operator_node.rs"
# Root only, as CI runs: the node needs containerd, network namespaces and a bridge.
[ "$(id -u)" = 0 ] || die "the node step needs root (docs/node.md); CI runs as root"
tests/cluster/images.sh
cargo test --test operator_node -- --ignored

step "schemathesis against the simulator's OpenAPI document"
tests/schemathesis/run.sh

step "the README's run-it command: examples/run-local.sh --exit-when-ready"
# Never reuse a developer's cluster here: the script starts its own.
env -u KUBECONFIG examples/run-local.sh --exit-when-ready

step "all checks passed"
