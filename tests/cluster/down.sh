#!/usr/bin/env bash
# Stops a control plane started by up.sh and removes its directory.
#
#   tests/cluster/down.sh DIR
#
# Stops the reaper (if any), the node (if any, node-down.sh), kube-apiserver, then etcd, by the PIDs recorded in DIR: SIGTERM, and
# SIGKILL after ${GITDEV_CP_STOP_TIMEOUT:-10} seconds. Then removes DIR. A directory without the
# marker file up.sh writes is never removed. Stopping an already stopped control plane is fine.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

if [ $# -ne 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  echo "usage: ${0##*/} DIR   (the directory up.sh printed)" >&2
  exit 2
fi
[ -d "$1" ] || { log "$1 does not exist: nothing to stop"; exit 0; }
dir=$(cd "$1" && pwd)
[ -f "$dir/$CP_MARKER" ] || die "$dir was not made by up.sh (no $CP_MARKER file); not touching it"
timeout=${GITDEV_CP_STOP_TIMEOUT:-10}

# The reaper runs this script with exec when its owner exits: then its PID is ours.
if [ -f "$dir/reaper.pid" ] && [ "$(cat "$dir/reaper.pid")" != "$$" ]; then
  stop_pidfile reaper "$dir/reaper.pid" "$dir" 2 || true
fi
status=0
# A node (node-up.sh) goes first: its kubelet and controllers need the API server to stop cleanly.
if [ -d "$dir/node" ]; then
  "$here/node-down.sh" "$dir" || status=1
fi
stop_pidfile kube-apiserver "$dir/kube-apiserver.pid" "$dir" "$timeout" || status=1
stop_pidfile etcd "$dir/etcd.pid" "$dir" "$timeout" || status=1
[ $status -eq 0 ] || die "some processes would not stop; $dir is kept"
rm -rf "$dir"
log "stopped the control plane and removed $dir"
