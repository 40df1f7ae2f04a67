#!/usr/bin/env bash
# Builds promtool from the Prometheus Go module into the same cache as the local control plane
# (tests/cluster/build.sh), keyed by version, and prints the binary's path. Only the first run
# on a machine pays the build.
#
#   tests/monitoring/promtool.sh     build if missing, print the path of promtool
#
# Cache: ${GITDEV_CACHE:-~/.cache/gitdev-operator}. Nothing is written inside the repository.
set -euo pipefail
# Prometheus publishes its Go module as v0.<major*100+minor>.<patch>: v0.315.1 is Prometheus 3.15.1.
PROMETHEUS_MODULE_VERSION=${PROMETHEUS_MODULE_VERSION:-v0.315.1}
cache=${GITDEV_CACHE:-$HOME/.cache/gitdev-operator}
bin="$cache/bin"
mkdir -p "$bin"

die() { echo "promtool.sh: $*" >&2; exit 1; }
command -v go >/dev/null 2>&1 || die "'go' is missing: install Go (https://go.dev/doc/install); promtool is built from its module"
command -v flock >/dev/null 2>&1 || die "'flock' is missing: apt-get install -y util-linux"

# A lock of its own: the control-plane build holds .build.lock for many minutes, and the two
# builds touch different cache entries.
exec 9>"$cache/.promtool.lock"
flock 9

promtool="$bin/promtool-$PROMETHEUS_MODULE_VERSION"
release=${PROMETHEUS_MODULE_VERSION#v0.}
release="$(( ${release%%.*} / 100 )).$(( ${release%%.*} % 100 )).${release#*.}"
if [ ! -x "$promtool" ]; then
  work="$cache/work/promtool-$PROMETHEUS_MODULE_VERSION"
  echo "promtool.sh: building promtool $release from github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION (first run only; several minutes on 2 cores)" >&2
  rm -rf "$work"; mkdir -p "$work"
  printf 'module gitdev.local/promtool\n\ngo 1.24\n' >"$work/go.mod"
  # `go get` of the package (not just the module) records the sums of everything it imports.
  (cd "$work" && go get "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_MODULE_VERSION" >/dev/null 2>&1) \
    || die "could not fetch github.com/prometheus/prometheus@$PROMETHEUS_MODULE_VERSION from the Go module proxy"
  (cd "$work" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -o "$promtool.tmp" \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=$release" \
      github.com/prometheus/prometheus/cmd/promtool)
  mv "$promtool.tmp" "$promtool"
  rm -rf "$work"
fi

# The binary must say what it is: a wrong version here means a wrong cache entry.
out=$("$promtool" --version 2>&1) || die "$promtool does not run"
grep -q "^promtool, version $release " <<<"$out" || die "$promtool does not report version $release: $out"
ln -sf "$(basename "$promtool")" "$bin/promtool"
echo "$promtool"
