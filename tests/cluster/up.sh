#!/usr/bin/env bash
# Starts a real, local Kubernetes control plane (etcd + kube-apiserver) on 127.0.0.1 only.
#
#   tests/cluster/up.sh [--dir DIR] [--owner-pid PID] [--timeout SECONDS] [--node [--images DIR]]
#
#   --dir DIR          where everything lives (data, certificates, logs, kubeconfig); must be
#                      absent or empty. Default: a new directory from mktemp.
#   --owner-pid PID    stop everything (down.sh) as soon as process PID exits, e.g. a test binary.
#   --timeout SECONDS  how long to wait for /readyz (default: $GITDEV_CP_READY_TIMEOUT or 120).
#   --node             also start a node: kube-controller-manager, kube-scheduler, containerd and
#                      a kubelet (tests/cluster/node-up.sh; root only; docs/node.md).
#   --images DIR       with --node: the image archives to load (default: target/images, made by
#                      tests/cluster/images.sh).
#
# Writes DIR/kubeconfig (https://127.0.0.1:PORT, the CA, an admin token in system:masters) and
# DIR/env (KEY=VALUE lines: KUBECONFIG, PIDs, ports). Stop with `tests/cluster/down.sh DIR`.
# Ports are picked free for every run, so several control planes can run on one machine.
# The binaries come from build.sh (built once into ~/.cache/gitdev-operator).
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=versions.env
source "$here/versions.env"

usage() { sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

dir="" owner="" timeout=${GITDEV_CP_READY_TIMEOUT:-120} node=0 images=()
while [ $# -gt 0 ]; do
  case $1 in
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir=$2; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    --owner-pid) [ $# -ge 2 ] || die "--owner-pid needs a value"; owner=$2; shift 2 ;;
    --owner-pid=*) owner=${1#*=}; shift ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a value"; timeout=$2; shift 2 ;;
    --timeout=*) timeout=${1#*=}; shift ;;
    --node) node=1; shift ;;
    --images) [ $# -ge 2 ] || die "--images needs a value"; images=(--images "$2"); shift 2 ;;
    --images=*) images=(--images "${1#*=}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ $timeout =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds, not '$timeout'"
[ $node = 1 ] || [ ${#images[@]} = 0 ] || die "--images goes with --node"

# --- What this needs from the machine -------------------------------------------------------
kubectl=${KUBECTL:-kubectl}
need openssl "apt-get install -y openssl (makes the certificates and keys)"
need "$kubectl" "install kubectl (Debian: the kubernetes-client package; or set KUBECTL=/path/to/kubectl)"
need ss "apt-get install -y iproute2 (checks which process listens on which port)"
need setsid "apt-get install -y util-linux (runs the servers in their own session)"
need flock "apt-get install -y util-linux (build.sh takes a lock)"
# kubectl supports one minor version of skew either way.
kubectl_version=$("$kubectl" version --client -o json 2>/dev/null \
  | sed -n 's/^ *"gitVersion": *"\([^"]*\)".*/\1/p' | head -n1) || true
[ -n "$kubectl_version" ] || die "cannot read the version of $kubectl ($kubectl version --client -o json)"
skew=$(($(kube_minor "$kubectl_version") - $(kube_minor "$KUBE_VERSION")))
if [ "${skew#-}" -gt 1 ]; then
  log "warning: kubectl $kubectl_version is more than one minor version away from kube-apiserver" \
    "$KUBE_VERSION (unsupported skew); set KUBECTL=/path/to/a/closer/kubectl if commands misbehave"
fi

if [ -n "$owner" ]; then
  [[ $owner =~ ^[0-9]+$ ]] || die "--owner-pid must be a PID, not '$owner'"
  pid_alive "$owner" || die "--owner-pid $owner: no such process"
  owner_start=$(pid_start_time "$owner")
fi

# Cached after the first run: this prints the binaries' directory in well under a second.
bin=$("$here/build.sh" | tail -n1) || die "build.sh failed (see its messages above)"
# The versioned files, not the symlinks: another build.sh may be re-creating those right now.
apiserver_bin="$bin/kube-apiserver-$KUBE_VERSION"
etcd_bin="$bin/etcd-$ETCD_VERSION"
for f in "$apiserver_bin" "$etcd_bin"; do [ -x "$f" ] || die "build.sh did not leave $f"; done

# --- The directory ----------------------------------------------------------------------------
if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/gitdev-cp.XXXXXX")
else
  mkdir -p "$dir"
  [ -z "$(ls -A "$dir")" ] || die "--dir $dir is not empty (is a control plane running there? stop it with down.sh)"
fi
dir=$(cd "$dir" && pwd)
[[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || die "--dir $dir: use a path of letters, digits and ._/+- only"
chmod 700 "$dir"
touch "$dir/$CP_MARKER"
mkdir -m 700 "$dir/pki" "$dir/etcd" "$dir/kube-apiserver"

started=0
on_exit() {
  local rc=$?
  [ $started = 1 ] && return
  # Failed half-way: stop whatever runs, keep the directory (logs) for a look.
  stop_pidfile kube-apiserver "$dir/kube-apiserver.pid" "$dir" 5 || true
  stop_pidfile etcd "$dir/etcd.pid" "$dir" 5 || true
  if [ $rc -ne 0 ]; then
    log "failed; nothing is left running. Logs are in $dir (remove it with: rm -rf $dir)"
  fi
}
trap on_exit EXIT

# fail MESSAGE: the error, with the end of every log, then exit.
fail() {
  local f
  echo "${0##*/}: error: $*" >&2
  for f in "$dir/etcd.log" "$dir/kube-apiserver.log"; do
    [ -s "$f" ] || continue
    echo "----- last 30 lines of $f -----" >&2
    tail -n 30 "$f" >&2
  done
  exit 1
}

# --- Certificates, keys and the admin token ---------------------------------------------------
pki=$dir/pki
cat >"$pki/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = gitdev-local
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
# 10.96.0.1 and kubernetes.default.svc: the `kubernetes` Service, which pods of a local node
# (node-up.sh) reach the server by, as in any cluster.
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.96.0.1, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
(
  cd "$pki"
  umask 077
  # A CA of its own (clients trust it through the kubeconfig) and a serving certificate it signs:
  # rustls refuses a CA certificate used directly as a server certificate.
  openssl req -x509 -new -config openssl.cnf -extensions ca -subj /CN=gitdev-local-ca -days 3650 \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc -keyout ca.key -out ca.crt
  openssl req -new -config openssl.cnf -subj /CN=kube-apiserver \
    -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -noenc -keyout apiserver.key -out apiserver.csr
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
    -days 365 -extfile openssl.cnf -extensions server -out apiserver.crt
  # The key pair that signs and verifies ServiceAccount tokens (TokenRequest API).
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
  openssl pkey -in sa.key -pubout -out sa.pub
  printf '%s,gitdev-admin,gitdev-admin,"system:masters"\n' "$(openssl rand -hex 32)" >tokens.csv
) >"$dir/pki.log" 2>&1 || { cat "$dir/pki.log" >&2; die "openssl failed to make the certificates"; }
token=$(cut -d, -f1 "$pki/tokens.csv")

# --- etcd ---------------------------------------------------------------------------------------
for attempt in 1 2 3 4 5; do
  read -r etcd_port etcd_peer_port <<<"$(free_ports 2)"
  u=http://127.0.0.1:$etcd_port peer=http://127.0.0.1:$etcd_peer_port
  # Client and peer URLs on 127.0.0.1, no separate metrics listener (--listen-metrics-urls unset:
  # /metrics is served on the client port), no pprof. --unsafe-no-fsync: test data is disposable.
  rc=0
  start_server etcd "$etcd_port $etcd_peer_port" "$etcd_bin" \
    --name=gitdev --data-dir="$dir/etcd" \
    --listen-client-urls="$u" --advertise-client-urls="$u" \
    --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
    --initial-cluster="gitdev=$peer" --initial-cluster-state=new \
    --unsafe-no-fsync --log-level=warn || rc=$?
  [ $rc = 0 ] && break
  [ "$attempt" = 5 ] && fail "etcd: ports kept colliding with other processes"
  log "etcd: port collision on $etcd_port/$etcd_peer_port; retrying with other ports"
  rm -rf "${dir:?}/etcd" && mkdir -m 700 "$dir/etcd"
done

# --- kube-apiserver -----------------------------------------------------------------------------
write_kubeconfig() {
  local ca
  ca=$(base64 -w0 <"$pki/ca.crt")
  cat >"$dir/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: gitdev-local
  cluster:
    server: https://127.0.0.1:$1
    certificate-authority-data: $ca
users:
- name: gitdev-admin
  user:
    token: $token
contexts:
- name: gitdev-local
  context:
    cluster: gitdev-local
    user: gitdev-admin
    namespace: default
current-context: gitdev-local
EOF
  chmod 600 "$dir/kubeconfig.tmp"
  mv "$dir/kubeconfig.tmp" "$dir/kubeconfig"
}

# Only the secure port, on 127.0.0.1 (there is no insecure port since 1.20). No client
# certificates: one admin token (system:masters) authenticates, RBAC authorizes (no Node
# authorizer: no kubelets). The service-account key pair makes the TokenRequest API work. The
# service range is for ClusterIP allocation only; nothing routes there. No endpoint reconciler:
# it would only complain that 127.0.0.1 is not a valid endpoint address. No /debug/pprof.
# A node (node-up.sh) is reached at its address: its name resolves nowhere.
# Priority and fairness stays on as in real clusters: turning it off saved ~10 MB and no
# measurable start time.
for attempt in 1 2 3 4 5; do
  read -r apiserver_port <<<"$(free_ports 1)"
  rc=0
  start_server kube-apiserver "$apiserver_port" "$apiserver_bin" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$apiserver_port" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --cert-dir="$dir/kube-apiserver" \
    --token-auth-file="$pki/tokens.csv" --authorization-mode=RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range=10.96.0.0/24 \
    --endpoint-reconciler-type=none \
    --kubelet-preferred-address-types=InternalIP,Hostname \
    --profiling=false || rc=$?
  [ $rc = 0 ] && break
  [ "$attempt" = 5 ] && fail "kube-apiserver: ports kept colliding with other processes"
  log "kube-apiserver: port collision on $apiserver_port; retrying with another port"
done
write_kubeconfig "$apiserver_port"

# --- Ready? -------------------------------------------------------------------------------------
apiserver_pid=$(cat "$dir/kube-apiserver.pid")
etcd_pid=$(cat "$dir/etcd.pid")
deadline=$((SECONDS + timeout))
until out=$("$kubectl" --kubeconfig="$dir/kubeconfig" get --raw=/readyz --request-timeout=5s 2>&1) \
  && [ "$out" = ok ]; do
  pid_alive "$apiserver_pid" || fail "kube-apiserver exited while starting"
  pid_alive "$etcd_pid" || fail "etcd exited while kube-apiserver was starting"
  if [ $SECONDS -ge $deadline ]; then
    # The failing checks, one a line (kubectl prints the body of a failed request with \n escapes).
    verbose=$("$kubectl" --kubeconfig="$dir/kubeconfig" get --raw='/readyz?verbose' --request-timeout=5s 2>&1 \
      | sed 's/\\n/\n/g' | grep -e '\[-\]' || true)
    fail "kube-apiserver was not ready within ${timeout}s; /readyz says:"$'\n'"${verbose:-$out}"
  fi
  sleep 0.5
done

# --- Reaper, env file ---------------------------------------------------------------------------
reaper_pid=""
if [ -n "$owner" ]; then
  spawn reaper "$here/reaper.sh" "$dir" "$owner" "$owner_start"
  reaper_pid=$(cat "$dir/reaper.pid")
fi

cat >"$dir/env.tmp" <<EOF
KUBECONFIG=$dir/kubeconfig
GITDEV_CP_DIR=$dir
GITDEV_CP_SERVER=https://127.0.0.1:$apiserver_port
GITDEV_CP_KUBE_VERSION=$KUBE_VERSION
GITDEV_CP_ETCD_VERSION=$ETCD_VERSION
GITDEV_CP_APISERVER_PID=$apiserver_pid
GITDEV_CP_APISERVER_PORT=$apiserver_port
GITDEV_CP_ETCD_PID=$etcd_pid
GITDEV_CP_ETCD_PORT=$etcd_port
GITDEV_CP_ETCD_PEER_PORT=$etcd_peer_port
GITDEV_CP_REAPER_PID=$reaper_pid
GITDEV_CP_OWNER_PID=$owner
EOF
mv "$dir/env.tmp" "$dir/env"
started=1

cat <<EOF
Kubernetes $KUBE_VERSION control plane ready at https://127.0.0.1:$apiserver_port (etcd $ETCD_VERSION on 127.0.0.1:$etcd_port)
  directory:  $dir   (logs: kube-apiserver.log, etcd.log; PIDs and ports: env)
  use it:     export KUBECONFIG=$dir/kubeconfig
  stop it:    $here/down.sh $dir
EOF
if [ -n "$owner" ]; then
  echo "  it stops by itself when PID $owner exits"
fi
if [ $node = 1 ]; then
  # The control plane stays up if the node fails to start: its logs and the node's are in $dir.
  "$here/node-up.sh" "$dir" "${images[@]}" || die "the node did not start (stop everything with: $here/down.sh $dir)"
fi
