#!/usr/bin/env bash
# Stops a node started by node-up.sh and undoes what it did to the machine.
#
#   tests/cluster/node-down.sh [--keep] CP_DIR
#
#   --keep   keep CP_DIR/node (its logs) after stopping; by default it is removed
#
# In order: the kubelet (so that nothing restarts pods), every pod through containerd's CRI
# (their containers, network namespaces and addresses), containerd, the controller manager and the
# scheduler; then mounts left under the node's directory, the pod bridge and its iptables chain,
# and the kernel settings the kubelet changed, put back to the values saved at start. down.sh runs
# this before it stops the control plane. Stopping a stopped node is fine.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=versions.env
source "$here/versions.env"

keep=0 cp_dir=""
while [ $# -gt 0 ]; do
  case $1 in
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,12s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) die "unknown argument: $1" ;;
    *) [ -z "$cp_dir" ] || die "one control-plane directory only"; cp_dir=$1; shift ;;
  esac
done
[ -n "$cp_dir" ] || die "usage: ${0##*/} [--keep] CP_DIR"
[ -d "$cp_dir/node" ] || { log "$cp_dir/node does not exist: no node to stop"; exit 0; }
dir=$(cd "$cp_dir/node" && pwd)
timeout=${GITDEV_CP_STOP_TIMEOUT:-10}
status=0

stop_pidfile kubelet "$dir/kubelet.pid" "$dir" "$timeout" || status=1

sock=$dir/containerd/containerd.sock
if [ -f "$dir/containerd.pid" ] && pid_alive "$(cat "$dir/containerd.pid")" && [ -S "$sock" ]; then
  node_bin=${GITDEV_CACHE:-$HOME/.cache/gitdev-operator}/bin/kube-node-$KUBE_VERSION
  if ! "$node_bin" remove-pods --endpoint "unix://$sock" >>"$dir/remove-pods.log" 2>&1; then
    log "could not remove every pod through the CRI (see $dir/remove-pods.log)"
    status=1
  fi
  # Containers run with ctr directly (not through the CRI), in any namespace.
  for ns in $(ctr --address "$sock" namespaces ls -q 2>/dev/null); do
    for task in $(ctr --address "$sock" -n "$ns" tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n "$ns" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
      for ((i = 0; i < 50; i++)); do
        ctr --address "$sock" -n "$ns" tasks delete "$task" >/dev/null 2>&1 && break
        sleep 0.1
      done
    done
  done
fi
stop_pidfile containerd "$dir/containerd.pid" "$dir" "$timeout" || status=1
# A container's shim outlives containerd by design; ours are those that name our state directory.
for proc in /proc/[0-9]*; do
  pid=${proc#/proc/}
  [[ $(tr '\0' ' ' 2>/dev/null <"$proc/cmdline" || true) == *containerd-shim*"$dir/containerd"* ]] || continue
  log "stopping a container shim left behind (PID $pid)"
  kill -KILL "$pid" 2>/dev/null || true
done
stop_pidfile kube-controller-manager "$dir/kube-controller-manager.pid" "$dir" "$timeout" || status=1
stop_pidfile kube-scheduler "$dir/kube-scheduler.pid" "$dir" "$timeout" || status=1

# Volumes of pods, container root file systems, shm: deepest first.
for ((attempt = 0; attempt < 3; attempt++)); do
  mounts=$(findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | awk '{ print length, $0 }' \
    | sort -rn | cut -d' ' -f2-)
  [ -n "$mounts" ] || break
  while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done <<<"$mounts"
done
if findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | grep -q .; then
  log "some mounts under $dir would not go away:"
  findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' >&2
  status=1
fi

if [ -f "$dir/subnet" ]; then
  n=$(cat "$dir/subnet")
  chain=GITDEV-NODE-$n
  while iptables -w -t nat -D PREROUTING -j "$chain" 2>/dev/null; do :; done
  if iptables -w -t nat -n -L "$chain" >/dev/null 2>&1; then
    iptables -w -t nat -F "$chain" && iptables -w -t nat -X "$chain" || status=1
  fi
  if ip link show "gdnode$n" >/dev/null 2>&1; then ip link del "gdnode$n" || status=1; fi
fi

# Paths the kubelet and the shims do not let us choose: links to our pods' logs, the kubelet's
# device-plugin socket (unless another kubelet listens there), and directories left empty.
if [ -d /var/log/containers ]; then
  find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete || status=1
fi
plugin_sock=/var/lib/kubelet/device-plugins/kubelet.sock
if [ -S "$plugin_sock" ] && [ -z "$(ss -Hxl "src $plugin_sock" 2>/dev/null)" ]; then rm -f "$plugin_sock"; fi
for d in /var/log/containers /var/lib/kubelet/device-plugins /var/lib/kubelet \
  /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd/fifo /run/containerd/s /run/containerd; do
  [ -d "$d" ] && rmdir "$d" 2>/dev/null || true
done

# The kubelet's kernel settings, back to what they were before node-up.sh.
if [ -f "$dir/sysctl.saved" ]; then
  while IFS='=' read -r key value; do
    [ -n "$key" ] && [ -n "$value" ] || continue
    [ "$(sysctl -n "$key")" = "$value" ] || sysctl -qw "$key=$value" || status=1
  done <"$dir/sysctl.saved"
fi

[ $status -eq 0 ] || die "the node did not stop cleanly; $dir is kept"
if [ $keep = 0 ]; then
  rm -rf "$dir"
  log "stopped the node and removed $dir"
else
  log "stopped the node; its logs are in $dir"
fi
