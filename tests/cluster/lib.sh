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
