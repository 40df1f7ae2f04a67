#!/usr/bin/env bash
# Property-based conformance test of gitdev-sim against its own OpenAPI document, with
# Schemathesis: no server errors, every status code documented, every response body, header
# and content type as documented, wrong methods answered 405 with Allow, auth enforced,
# deleted deployments gone.
#
# Usage: tests/schemathesis/run.sh
# Environment:
#   GITDEV_CACHE            cache directory (default ~/.cache/gitdev-operator); the venv lives
#                           in $GITDEV_CACHE/venv-schemathesis
#   SCHEMATHESIS_VERSION    pinned version to install (default below)
#   MAX_EXAMPLES            examples per operation and phase (default 100)
#   SCHEMATHESIS_SEED       random seed (default fixed, for reproducible runs)
#
# Two passes, each against a fresh simulator:
#   1. --phase-duration 0, every phase (examples, coverage, fuzzing, stateful);
#   2. --phase-duration 30, every phase again: deployments stay in progress, so cancels
#      succeed and in-progress details are checked (with phase 0 every cancel is a 409).
#
# Generated create bodies are steered towards the fixture's project and branches by a small
# hook (written below), so that the stateful phase has real deployments to follow links to.
#
# Check excluded: positive_data_acceptance. A body valid by the schema names an arbitrary
# project and branch; the API rightly answers the documented 404 project_not_found /
# 400 invalid_branch for those, which that check reports as "valid data rejected".
#
# Rate limits: requests carry the Enterprise token sk_test_admin (10,000/min, burst 2,000).
# A run sends well under that (the summary prints the count); 429 is documented on every
# operation anyway, so a 429 would not fail a check, only narrow what the run explores.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE="${GITDEV_CACHE:-$HOME/.cache/gitdev-operator}"
VENV="$CACHE/venv-schemathesis"
VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
MAX_EXAMPLES="${MAX_EXAMPLES:-100}"
SEED="${SCHEMATHESIS_SEED:-20250314}"
TOKEN="sk_test_admin"

say() { printf '==> %s\n' "$*" >&2; }

# ----- the venv -----
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "version $VERSION\$"; then
    say "installing schemathesis $VERSION into $VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi
"$VENV/bin/schemathesis" --version >&2

# ----- the simulator binary -----
say "building gitdev-sim"
BIN="$(cd "$ROOT" && cargo build --bin gitdev-sim --message-format=json-render-diagnostics \
    | python3 -c 'import json,sys
exe = None
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gitdev-sim" and m.get("executable"):
        exe = m["executable"]
print(exe or "")')"
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
    BIN="$ROOT/target/debug/gitdev-sim"
fi
[[ -x "$BIN" ]] || { echo "gitdev-sim binary not found" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gitdev-schemathesis.XXXXXX")"

# A Schemathesis hook: most generated create bodies get the token's project and a real branch
# (only where the generated value is already a string, so negative cases stay negative).
# Without it almost every generated create is a 404/400, the stateful phase never gets an id
# to follow its links with, and GET/cancel/logs of real deployments are never exercised.
cat >"$WORK/hooks.py" <<'PY'
import zlib

import schemathesis

BRANCHES = ["main", "feature/login", "fail/broken-build"]


@schemathesis.hook
def map_body(context, body):
    op = context.operation
    if op is None or op.path != "/deployments" or op.method.upper() != "POST":
        return body
    if not isinstance(body, dict):
        return body
    pid, branch = body.get("project_id"), body.get("branch")
    if isinstance(pid, str) and isinstance(branch, str):
        # Deterministic (seeded runs stay reproducible); one case in four is left as generated.
        h = zlib.crc32((pid + "\0" + branch).encode("utf-8", "surrogatepass"))
        if h % 4:
            body = dict(body, project_id="proj_8f3k29", branch=BRANCHES[h % len(BRANCHES)])
    return body
PY
export SCHEMATHESIS_HOOKS="$WORK/hooks.py"
SIM_PID=""
stop_sim() {
    if [[ -n "$SIM_PID" ]] && kill -0 "$SIM_PID" 2>/dev/null; then
        kill -TERM "$SIM_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$SIM_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SIM_PID" 2>/dev/null || true
        wait "$SIM_PID" 2>/dev/null || true
    fi
    SIM_PID=""
}
cleanup() { stop_sim; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts the simulator with the given phase duration; sets SIM_URL (http://127.0.0.1:PORT).
start_sim() {
    local phase="$1" out="$WORK/sim-$1.out"
    "$BIN" --listen 127.0.0.1:0 --phase-duration "$phase" >"$out" 2>"$WORK/sim-$1.log" &
    SIM_PID=$!
    SIM_URL=""
    for _ in $(seq 300); do
        if [[ -s "$out" ]]; then
            SIM_URL="$(sed -n 's/^gitdev-sim listening on //p' "$out" | head -n1)"
            [[ -n "$SIM_URL" ]] && break
        fi
        kill -0 "$SIM_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$SIM_URL" ]]; then
        echo "gitdev-sim did not start; its log:" >&2
        cat "$WORK/sim-$1.log" >&2 || true
        exit 2
    fi
    say "gitdev-sim (phase duration $phase s) at $SIM_URL"
}

# Prints what the simulator counted; returns non-zero if it answered any 5xx.
sim_summary() {
    python3 -c 'import json,sys,urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1] + "/_sim/stats", timeout=10))
st = s["by_status"]
print("    simulator saw %d requests; by status: %s" % (s["total"], ", ".join("%s=%d" % kv for kv in sorted(st.items()))))
fives = sum(v for k, v in st.items() if k.startswith("5"))
if st.get("429"):
    print("    note: %d answers were 429 (documented; they only narrow the exploration)" % st["429"])
if fives:
    print("    SERVER ERRORS: %d" % fives)
sys.exit(1 if fives else 0)' "$SIM_URL"
}

# run_pass NAME PHASE_DURATION PHASES
run_pass() {
    local name="$1" phase="$2" phases="$3" rc=0 src=0
    start_sim "$phase"
    say "schemathesis pass '$name': phases $phases, $MAX_EXAMPLES examples, seed $SEED"
    (
        cd "$WORK"   # Hypothesis keeps its database in the working directory
        "$VENV/bin/schemathesis" run "$SIM_URL/v1/openapi.json" \
            --url "$SIM_URL/v1" \
            --header "Authorization: Bearer $TOKEN" \
            --checks all \
            --exclude-checks positive_data_acceptance \
            --phases "$phases" \
            --max-examples "$MAX_EXAMPLES" \
            --seed "$SEED" \
            --request-timeout 10 \
            --wait-for-schema 10 \
            --no-color
    ) || rc=$?
    sim_summary || src=$?
    stop_sim
    RESULTS+=("$name: schemathesis exit $rc, simulator 5xx check $([[ $src -eq 0 ]] && echo ok || echo FAILED)")
    [[ $rc -eq 0 && $src -eq 0 ]]
}

RESULTS=()
FAILED=0
run_pass "instant lifecycle" 0 "examples,coverage,fuzzing,stateful" || FAILED=1
run_pass "slow lifecycle" 30 "examples,coverage,fuzzing,stateful" || FAILED=1

echo
echo "==================== schemathesis summary ===================="
for r in "${RESULTS[@]}"; do echo "  $r"; done
if [[ $FAILED -ne 0 ]]; then
    echo "  RESULT: FAILED (see the schemathesis output above)"
    exit 1
fi
echo "  RESULT: passed"
