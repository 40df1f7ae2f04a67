#!/usr/bin/env bash
# Adds a node to a control plane started by up.sh: kube-controller-manager, kube-scheduler,
# containerd and a kubelet, all on this machine, with the locally built images loaded.
#
#   tests/cluster/node-up.sh CP_DIR [--images DIR] [--timeout SECONDS]
#
#   CP_DIR             the control plane's directory (up.sh --dir); the node lives in CP_DIR/node
#   --images DIR       load every *.oci.tar of DIR into containerd; it must hold pause.oci.tar
#                      (default: target/images, made by tests/cluster/images.sh)
#   --timeout SECONDS  how long to wait for the node to be Ready (default 120)
#
# Root only (containerd and the kubelet need it). Pods get addresses on a bridge of their own
# (10.244.N.0/24, Debian's CNI plugins); the `kubernetes` Service address 10.96.0.1:443 is
# forwarded to the API server on 127.0.0.1 for them, so in-cluster clients work unchanged. There is
# no kube-proxy: other Services do not route. The kubelet changes vm.overcommit_memory,
# kernel.panic and kernel.panic_on_oops; their values are saved here and node-down.sh (which
# down.sh runs) puts them back. Writes CP_DIR/node/env (node name, containerd socket, subnet).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=versions.env
source "$here/versions.env"

usage() { sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
cp_dir="" images="$root/target/images" timeout=120
while [ $# -gt 0 ]; do
  case $1 in
    --images) [ $# -ge 2 ] || die "--images needs a value"; images=$2; shift 2 ;;
    --images=*) images=${1#*=}; shift ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; timeout=$2; shift 2 ;;
    --timeout=*) timeout=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) usage >&2; die "unknown argument: $1" ;;
    *) [ -z "$cp_dir" ] || die "one control-plane directory only"; cp_dir=$1; shift ;;
  esac
done
[ -n "$cp_dir" ] || { usage >&2; die "which control plane? give its directory"; }
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds, not '$timeout'"
cp_dir=$(cd "$cp_dir" && pwd)
[ -f "$cp_dir/$CP_MARKER" ] && [ -f "$cp_dir/env" ] || die "$cp_dir is not a running control plane of up.sh"
[ "$(id -u)" = 0 ] || die "a node needs root (containerd, the kubelet, network namespaces)"
for tool in containerd runc ctr ip iptables sysctl findmnt; do
  need "$tool" "apt-get install -y containerd runc iproute2 iptables procps util-linux"
done
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] \
  || die "the CNI plugins are missing: apt-get install -y containernetworking-plugins"
[ -f "$images/pause.oci.tar" ] || die "$images/pause.oci.tar is missing: run tests/cluster/images.sh first"
kubectl=${KUBECTL:-kubectl}
cp_env() { sed -n "s/^$1=//p" "$cp_dir/env"; }
api_port=$(cp_env GITDEV_CP_APISERVER_PORT)

bin=$("$here/build.sh" --node | tail -n1) || die "build.sh --node failed (see its messages above)"
for component in kubelet kube-controller-manager kube-scheduler; do
  [ -x "$bin/$component-$KUBE_VERSION" ] || die "build.sh did not leave $bin/$component-$KUBE_VERSION"
done

dir=$cp_dir/node
[ ! -e "$dir" ] || die "$dir exists: a node runs there already (stop it with node-down.sh $cp_dir)"
mkdir -m 700 "$dir"
started=0
on_exit() {
  local rc=$?
  [ $started = 1 ] && return
  if [ $rc -ne 0 ]; then
    "$here/node-down.sh" --keep "$cp_dir" || true
    log "failed; the node is stopped. Logs are in $dir"
  fi
}
trap on_exit EXIT
fail() {
  local f
  echo "${0##*/}: error: $*" >&2
  for f in "$dir"/*.log; do
    [ -s "$f" ] || continue
    echo "----- last 20 lines of $f -----" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}

# --- Kernel settings the kubelet changes, saved for node-down.sh --------------------------------
for key in vm.overcommit_memory kernel.panic kernel.panic_on_oops; do
  echo "$key=$(sysctl -n "$key")"
done >"$dir/sysctl.saved"

# --- Pod network: a bridge, and the kubernetes Service address forwarded to the API server -----
subnet_index=""
for n in $(shuf -i 1-250); do
  if ! ip -4 route show | grep -q "^10\.244\.$n\.0/24 " && ! ip link show "gdnode$n" >/dev/null 2>&1; then
    subnet_index=$n
    break
  fi
done
[ -n "$subnet_index" ] || fail "no free 10.244.N.0/24 subnet for the pods"
bridge=gdnode$subnet_index
gateway=10.244.$subnet_index.1
chain=GITDEV-NODE-$subnet_index
echo "$subnet_index" >"$dir/subnet"
ip link add "$bridge" type bridge
ip addr add "$gateway/24" dev "$bridge"
ip link set "$bridge" up
# Pods reach 127.0.0.1 only if the bridge may route loopback addresses; DNAT does the rest.
sysctl -qw "net.ipv4.conf.$bridge.route_localnet=1"
iptables -w -t nat -N "$chain"
iptables -w -t nat -A "$chain" -i "$bridge" -d 10.96.0.1 -p tcp --dport 443 \
  -j DNAT --to-destination "127.0.0.1:$api_port"
iptables -w -t nat -I PREROUTING -j "$chain"

mkdir -p "$dir/cni/net.d" "$dir/cni/ipam"
cat >"$dir/cni/net.d/10-gitdev.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "gitdev-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{ "subnet": "10.244.$subnet_index.0/24", "gateway": "$gateway" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF

# --- containerd, on a private socket ------------------------------------------------------------
sock=$dir/containerd/containerd.sock
mkdir -p "$dir/containerd"
# restrict_oom_score_adj: root may not lower oom_score_adj on such machines, and sandboxes fail
# to start without it. The CNI configuration is ours alone (podman may have one in /etc/cni).
containerd config default | sed \
  -e "s|^root = .*|root = \"$dir/containerd/root\"|" \
  -e "s|^state = .*|state = \"$dir/containerd/state\"|" \
  -e "s|address = \"/run/containerd/containerd.sock\"|address = \"$sock\"|" \
  -e "s|sandbox_image = .*|sandbox_image = \"localhost/pause:catatonit\"|" \
  -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
  -e "s|bin_dir = \"/opt/cni/bin\"|bin_dir = \"/usr/lib/cni\"|" \
  -e "s|conf_dir = \"/etc/cni/net.d\"|conf_dir = \"$dir/cni/net.d\"|" \
  -e "s|path = \"/opt/containerd\"|path = \"$dir/containerd/opt\"|" \
  >"$dir/containerd.toml"
grep -q "restrict_oom_score_adj = true" "$dir/containerd.toml" \
  || fail "containerd's default configuration changed shape: restrict_oom_score_adj not set"
spawn containerd containerd --config "$dir/containerd.toml"
for ((i = 0; i < 300; i++)); do
  [ -S "$sock" ] && ctr --address "$sock" version >/dev/null 2>&1 && break
  pid_alive "$(cat "$dir/containerd.pid")" || fail "containerd exited while starting"
  sleep 0.1
done
[ -S "$sock" ] || fail "containerd did not open $sock within 30 s"
for archive in "$images"/*.oci.tar; do
  ctr --address "$sock" -n k8s.io images import "$archive" >>"$dir/images.log" 2>&1 \
    || fail "could not import $archive into containerd"
done
ctr --address "$sock" -n k8s.io images ls -q | grep -qx localhost/pause:catatonit \
  || fail "the pause image localhost/pause:catatonit is not in containerd after the import"

# --- Controllers and scheduler ------------------------------------------------------------------
# They use the control plane's admin credentials (a test node: no per-component identities).
cp "$cp_dir/kubeconfig" "$dir/kubeconfig"
# No serving ports (--secure-port=0): nothing here scrapes them, and nodes may run side by side.
# --root-ca-file: pods wait forever for the kube-root-ca.crt ConfigMap without it.
spawn kube-controller-manager "$bin/kube-controller-manager-$KUBE_VERSION" \
  --kubeconfig="$dir/kubeconfig" --secure-port=0 --leader-elect=false \
  --cert-dir="$dir/controller-manager" \
  --root-ca-file="$cp_dir/pki/ca.crt" --service-account-private-key-file="$cp_dir/pki/sa.key" \
  --use-service-account-credentials=false
spawn kube-scheduler "$bin/kube-scheduler-$KUBE_VERSION" \
  --kubeconfig="$dir/kubeconfig" --secure-port=0 --leader-elect=false

# --- kubelet --------------------------------------------------------------------------------------
node_name=gitdev-node
read -r kubelet_port healthz_port <<<"$(free_ports 2)"
mkdir -p "$dir/kubelet"
# cgroupfs, no QoS cgroup tree (nothing of it would be cleaned up after a test), swap allowed,
# evictions only when a disk is really full. The node's address is the pod bridge's (the kubelet
# refuses a loopback one); its API listens there only, for `kubectl logs` and `exec` (the API
# server presents no client certificate, hence anonymous, reachable from this host and its pods).
cat >"$dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
containerRuntimeEndpoint: unix://$sock
failSwapOn: false
oomScoreAdj: 0
address: $gateway
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: /etc/resolv.conf
podLogsDir: $dir/pod-logs
EOF
spawn kubelet "$bin/kubelet-$KUBE_VERSION" \
  --config="$dir/kubelet.yaml" --kubeconfig="$dir/kubeconfig" --root-dir="$dir/kubelet" \
  --cert-dir="$dir/kubelet/pki" --hostname-override="$node_name" --node-ip="$gateway"

deadline=$((SECONDS + timeout))
until [ "$("$kubectl" --kubeconfig="$dir/kubeconfig" get node "$node_name" \
  -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]; do
  for component in containerd kube-controller-manager kube-scheduler kubelet; do
    pid_alive "$(cat "$dir/$component.pid")" || fail "$component exited while the node was starting"
  done
  [ $SECONDS -lt $deadline ] || fail "node $node_name was not Ready within ${timeout}s"
  sleep 1
done
# The node controller lifts the not-ready taint a moment after Ready; until then nothing schedules.
until [ -z "$("$kubectl" --kubeconfig="$dir/kubeconfig" get node "$node_name" -o 'jsonpath={.spec.taints}' 2>/dev/null)" ]; do
  [ $SECONDS -lt $deadline ] || fail "node $node_name kept its taints for ${timeout}s"
  sleep 1
done
# Pods of a namespace start only once its default ServiceAccount exists.
until "$kubectl" --kubeconfig="$dir/kubeconfig" get serviceaccount default -n default >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || fail "the controller manager made no default ServiceAccount within ${timeout}s"
  sleep 1
done

cat >"$dir/env.tmp" <<EOF
GITDEV_NODE_NAME=$node_name
GITDEV_NODE_DIR=$dir
GITDEV_NODE_CONTAINERD_SOCKET=$sock
GITDEV_NODE_POD_SUBNET=10.244.$subnet_index.0/24
GITDEV_NODE_BRIDGE=$bridge
GITDEV_NODE_KUBELET_PORT=$kubelet_port
EOF
mv "$dir/env.tmp" "$dir/env"
started=1
cat <<EOF
node $node_name Ready (kubelet $KUBE_VERSION, containerd $(containerd --version | awk '{ print $3 }'), pods on 10.244.$subnet_index.0/24)
  directory:  $dir   (logs: kubelet.log, containerd.log, kube-controller-manager.log, kube-scheduler.log)
  images:     ctr --address $sock -n k8s.io images ls
EOF
