#!/usr/bin/env bash
# Builds the OCI images of gitdev-operator and gitdev-sim, and the pause image a local node
# needs, with buildah: no Docker engine, no registry.
#
#   tests/cluster/images.sh [--out DIR]
#
#   --out DIR   where the image archives go (default: target/images in the repository)
#
# Writes DIR/gitdev-operator.oci.tar, DIR/gitdev-sim.oci.tar and DIR/pause.oci.tar (OCI
# archives, named localhost/gitdev-operator:VERSION, localhost/gitdev-sim:VERSION and
# localhost/pause:catatonit), and DIR/images.env (the names and sizes). The operator and
# simulator images are the Dockerfile's stages: this script only compiles the binaries on the
# host the way the Dockerfile's `build` stage does, and hands them to those stages.
# buildah keeps its storage in ${GITDEV_CACHE:-~/.cache/gitdev-operator}/buildah.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

usage() { sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
out="$root/target/images"
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || die "--out needs a value"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

need buildah "apt-get install -y buildah (builds the images without a Docker engine)"
need cargo "install Rust (https://rustup.rs)"
catatonit=$(command -v catatonit || true)
[ -n "$catatonit" ] || die "'catatonit' is missing: apt-get install -y catatonit (the pause process of the node's pods)"
cabundle=/etc/ssl/certs/ca-certificates.crt
[ -s "$cabundle" ] || die "$cabundle is missing: apt-get install -y ca-certificates"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n1)
[ -n "$version" ] || die "cannot read the package version from Cargo.toml"
target=x86_64-unknown-linux-gnu

# --- The binaries, as the Dockerfile's build stage makes them -----------------------------------
log "building static gitdev-operator and gitdev-sim (release, $target)"
(cd "$root" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
  --target "$target" --bin gitdev-operator --bin gitdev-sim)
# Where cargo put them: CARGO_TARGET_DIR when set (relative to the repository, as cargo reads it).
build_dir=${CARGO_TARGET_DIR:-target}
case $build_dir in /*) ;; *) build_dir="$root/$build_dir" ;; esac
context="$root/target/image-context"
rm -rf "$context"
mkdir -p "$context/out/etc/ssl/certs"
for b in gitdev-operator gitdev-sim; do
  cp "$build_dir/$target/release/$b" "$context/out/$b"
  # A dynamic executable names its loader near its start; a static one has none and runs FROM scratch.
  if LC_ALL=C head -c 4096 "$context/out/$b" | grep -q 'ld-linux'; then
    die "$b is not static (RUSTFLAGS=-C target-feature=+crt-static did not apply)"
  fi
done
cp "$cabundle" "$context/out/etc/ssl/certs/ca-certificates.crt"
cp "$catatonit" "$context/pause"

# --- buildah, with storage of its own --------------------------------------------------------------
cache=${GITDEV_CACHE:-$HOME/.cache/gitdev-operator}
store="$cache/buildah"
mkdir -p "$store"
cat >"$store/storage.conf" <<CONF
[storage]
driver = "vfs"
runroot = "$store/run"
graphroot = "$store/graph"
CONF
export CONTAINERS_STORAGE_CONF="$store/storage.conf"
# No RUN steps below; should one appear, runc (not crun) copes with this machine's cgroups.
export BUILDAH_RUNTIME=runc BUILDAH_ISOLATION=chroot

mkdir -p "$out"
out=$(cd "$out" && pwd)
# --timestamp 0: the same inputs give the same layers and image digests.
build_stage() {
  local stage=$1 name=$2
  log "buildah: $name (Dockerfile stage $stage)"
  buildah build --quiet --network none --timestamp 0 --layers=false \
    --build-context "build=$context" --target "$stage" -f "$root/Dockerfile" -t "$name" "$context" >/dev/null
}
export_image() {
  local name=$1 file=$2
  rm -f "$out/$file"
  buildah push --quiet "$name" "oci-archive:$out/$file:$name" >/dev/null
  buildah rmi "$name" >/dev/null
}

operator_image=localhost/gitdev-operator:$version
sim_image=localhost/gitdev-sim:$version
pause_image=localhost/pause:catatonit
build_stage gitdev-operator "$operator_image"
export_image "$operator_image" gitdev-operator.oci.tar
build_stage gitdev-sim "$sim_image"
export_image "$sim_image" gitdev-sim.oci.tar

# The pause image: what holds a pod's namespaces. catatonit -P only waits for signals.
log "buildah: $pause_image (catatonit -P)"
c=$(buildah from scratch)
buildah copy --quiet "$c" "$context/pause" /pause >/dev/null
buildah config --entrypoint '["/pause", "-P"]' --user 65535:65535 "$c"
buildah commit --quiet --timestamp 0 "$c" "$pause_image" >/dev/null
buildah rm "$c" >/dev/null
export_image "$pause_image" pause.oci.tar

size() { stat -c %s "$1"; }
cat >"$out/images.env.tmp" <<ENV
GITDEV_OPERATOR_IMAGE=$operator_image
GITDEV_OPERATOR_ARCHIVE=$out/gitdev-operator.oci.tar
GITDEV_OPERATOR_ARCHIVE_BYTES=$(size "$out/gitdev-operator.oci.tar")
GITDEV_SIM_IMAGE=$sim_image
GITDEV_SIM_ARCHIVE=$out/gitdev-sim.oci.tar
GITDEV_SIM_ARCHIVE_BYTES=$(size "$out/gitdev-sim.oci.tar")
GITDEV_PAUSE_IMAGE=$pause_image
GITDEV_PAUSE_ARCHIVE=$out/pause.oci.tar
ENV
mv "$out/images.env.tmp" "$out/images.env"
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "images in $out:"
echo "  $operator_image  $(mib "$(size "$out/gitdev-operator.oci.tar")")"
echo "  $sim_image  $(mib "$(size "$out/gitdev-sim.oci.tar")")"
echo "  $pause_image  $(mib "$(size "$out/pause.oci.tar")")"
