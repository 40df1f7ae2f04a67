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

step "cargo test: building every target"
cargo test --all-targets --no-run

# The later steps' builds (promtool, the node's Go binaries, the images' static release
# binaries) are most of a cold run. They start now, niced, beside the tests, which spend most of
# their time waiting on the processes they drive; on a machine that has them cached they cost
# nothing. The static build has a target directory of its own so that it never waits for the
# lock of the one the tests use.
mkdir -p target
later_log="$root/target/run-all-later-builds.log"
# In a process group of their own (setsid), so that a failing run stops them all, builds
# included, and leaves nothing running behind it.
setsid bash -c '
  set -e
  nice -n 10 tests/monitoring/promtool.sh
  nice -n 10 tests/cluster/build.sh --node
  if [ "$(id -u)" = 0 ]; then
    CARGO_TARGET_DIR="$1/target/image-build" nice -n 10 tests/cluster/images.sh
  fi
' later-builds "$root" >"$later_log" 2>&1 &
later=$!
trap 'kill -- -$later 2>/dev/null || true' EXIT
later_builds() {
  wait "$later" || { cat "$later_log" >&2; die "a build for the later steps failed (above; $later_log)"; }
  trap - EXIT
}

step "cargo test (unit, CRD drift, simulator, client, control plane, operator end to end)"
# Every suite runs even when one fails, so that one run shows every failure.
cargo test --all-targets --no-fail-fast

step "waiting for the builds of the later steps (promtool, the node, the images)"
later_builds

step "promtool: the chart's alert rules checked and unit-tested by Prometheus' own code"
tests/monitoring/check.sh

step "the images (buildah) and the chart on a real node (kubelet + containerd): tests/operator_node.rs"
# Root only, as CI runs: the node needs containerd, network namespaces and a bridge.
[ "$(id -u)" = 0 ] || die "the node step needs root (docs/node.md); CI runs as root"
cargo test --test operator_node -- --ignored

step "schemathesis against the simulator's OpenAPI document"
tests/schemathesis/run.sh

step "the README's run-it command: examples/run-local.sh --exit-when-ready"
# Never reuse a developer's cluster here: the script starts its own.
env -u KUBECONFIG examples/run-local.sh --exit-when-ready

step "all checks passed"
