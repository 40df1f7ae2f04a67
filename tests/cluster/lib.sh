# Helpers shared by up.sh, down.sh and reaper.sh. Sourced, not run.
# shellcheck shell=bash

# The marker that says "this directory holds a control plane started by up.sh": down.sh refuses
# to delete a directory without it.
# shellcheck disable=SC2034 # used by the scripts that source this file
CP_MARKER=.gitdev-control-plane

log() { echo "${0##*/}: $*" >&2; }
die() { echo "${0##*/}: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is missing: $2"; }

# pid_alive PID: the process exists and is not a zombie. A zombie has exited already; it only
# waits for its parent (or a PID 1 that never reaps, as in some containers) to collect it.
pid_alive() {
  local pid=$1 state
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  if [ -d /proc/self ]; then
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
  else
    kill -0 "$pid" 2>/dev/null
  fi
}

# pid_start_time PID: the process's start time in clock ticks since boot, to tell a process from a
# later one that reuses its PID. Empty where /proc is missing.
pid_start_time() {
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20 || true
}

# pid_mentions PID TEXT: the process's command line contains TEXT. Every process up.sh starts has
# the control plane's directory in its arguments, so a PID file left behind after a reboot never
# makes down.sh signal an unrelated process.
pid_mentions() {
  local cmdline
  [ -r "/proc/$1/cmdline" ] || return 0 # no /proc: cannot check
  # Read whole, then matched: `... | grep -q` could fail under pipefail (SIGPIPE).
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  [[ $cmdline == *"$2"* ]]
}

# stop_pidfile NAME PIDFILE DIR TIMEOUT: TERM the process, KILL it after TIMEOUT seconds.
stop_pidfile() {
  local name=$1 pidfile=$2 dir=$3 timeout=$4 pid i
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if ! pid_alive "$pid"; then return 0; fi
  if ! pid_mentions "$pid" "$dir"; then
    log "not stopping PID $pid ($name): it is not a process of $dir"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < timeout * 10; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  log "$name (PID $pid) did not stop within ${timeout}s of SIGTERM; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  log "$name (PID $pid) is still there after SIGKILL"
  return 1
}

# kube_minor vX.Y.Z -> Y
kube_minor() { local v=${1#v}; v=${v#*.}; echo "${v%%.*}"; }

# --- Starting servers (up.sh, node-up.sh) ------------------------------------------------------
# These use the caller's $dir (logs and PID files go there) and its `fail MESSAGE` function.

# free_ports N: N distinct ports that are free on 127.0.0.1 right now. Someone may still take one
# before our server binds it: start_server then sees "address already in use" and we retry.
free_ports() {
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))  # the kernel picks a free port; all are held until we print
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
  else
    # Below the kernel's ephemeral range (32768+), so outgoing connections do not race us.
    local picked=() p used
    used=$(ss -Htan | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u)
    while [ ${#picked[@]} -lt "$1" ]; do
      p=$((20000 + RANDOM % 12000))
      grep -qx "$p" <<<"$used" && continue
      [[ " ${picked[*]} " == *" $p "* ]] && continue
      picked+=("$p")
    done
    echo "${picked[*]}"
  fi
}

# listens PID PORT: process PID has a listening TCP socket on 127.0.0.1:PORT.
listens() {
  local out
  out=$(ss -Hltnp "sport = :$2" 2>/dev/null) || return 1
  [[ $out == *"pid=$1,"* ]]
}

# spawn NAME COMMAND...: runs COMMAND in the background in a session of its own (so that a Ctrl-C
# meant for the caller does not reach it), with no terminal, its output in DIR/NAME.log and its
# PID in DIR/NAME.pid.
spawn() {
  local name=$1 i
  shift
  rm -f "$dir/$name.pid"
  # sh writes its own PID (setsid may fork, so $! could be wrong) and then becomes COMMAND.
  # shellcheck disable=SC2016 # $$, $0 and $@ are for that sh
  setsid sh -c 'echo $$ >"$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$dir/$name.pid" "$@" \
    </dev/null >"$dir/$name.log" 2>&1 &
  for ((i = 0; i < 100; i++)); do [ -s "$dir/$name.pid" ] && return 0; sleep 0.05; done
  fail "$name did not start"
}

# start_server NAME PORTS COMMAND...: runs COMMAND in its own session with its log in DIR/NAME.log
# and its PID in DIR/NAME.pid, and waits until it listens on every one of PORTS.
# Returns 0 when it does, 2 if it died of a port collision, and fails otherwise.
start_server() {
  local name=$1 ports=$2 pid p i ok
  shift 2
  spawn "$name" "$@"
  pid=$(cat "$dir/$name.pid")
  for ((i = 0; i < 600; i++)); do # 60 s
    if ! pid_alive "$pid"; then
      grep -q "address already in use" "$dir/$name.log" && return 2
      fail "$name exited right after starting"
    fi
    ok=1
    for p in $ports; do listens "$pid" "$p" || { ok=0; break; }; done
    [ $ok = 1 ] && return 0
    sleep 0.1
  done
  fail "$name did not listen on 127.0.0.1 port(s) $ports within 60 s"
}
