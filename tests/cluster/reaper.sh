#!/usr/bin/env bash
# Started by `up.sh --owner-pid PID` in its own session: waits until the owner process exits
# (a test binary that finished, panicked or was killed), then runs down.sh on the control plane.
#
#   tests/cluster/reaper.sh DIR OWNER_PID OWNER_START_TIME
#
# OWNER_START_TIME (from /proc/PID/stat, may be empty) tells the owner from a later process that
# reuses its PID.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$here/lib.sh"

[ $# -eq 3 ] || die "usage: ${0##*/} DIR OWNER_PID OWNER_START_TIME"
dir=$1 owner=$2 start=$3

owner_alive() {
  pid_alive "$owner" || return 1
  [ -z "$start" ] || [ "$(pid_start_time "$owner")" = "$start" ]
}

while owner_alive; do
  # Someone ran down.sh already: nothing left to do.
  [ -f "$dir/$CP_MARKER" ] || exit 0
  sleep 1
done
[ -f "$dir/$CP_MARKER" ] || exit 0
log "owner PID $owner exited; stopping the control plane in $dir"
exec "$here/down.sh" "$dir"
