#!/usr/bin/env bash
# Runs the network tests ROUNDS times, one test at a time, while busy loops keep every core loaded (the way a busy
# device or a shared CI box runs them), and prints a pass/fail table per test. A test that fails here and passes
# alone points at a race in the runtime.
#
#   bash scripts/stress.sh [-r ROUNDS] [-j BUSY_LOOPS] [-t TARGET ...] [-f FILTER]
#     -r  rounds (default 5)
#     -j  busy loops (default: one per core)
#     -t  test targets as PACKAGE:TEST (default: every test that starts processes or talks over the network)
#     -f  run only tests whose name contains FILTER
# Logs of failures are kept in $STRESS_DIR (default target/stress). Needs a built workspace and scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=5
BUSY=$(nproc)
FILTER=""
TARGETS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -r) ROUNDS=$2; shift 2 ;;
        -j) BUSY=$2; shift 2 ;;
        -t) TARGETS+=("$2"); shift 2 ;;
        -f) FILTER=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
        *) echo "stress.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(edge-tests:cluster edge-tests:distributed edge-tests:gemma3 edge-tests:serve edge-tests:replicas edge-tests:soak edge-tests:netns
             edge-tests:testbed edge-tests:dashboard edge-node:stage_security edge-coord:deploy edge-sim:testbed)
fi
OUT=${STRESS_DIR:-target/stress}
mkdir -p "$OUT"
export NODEVICE_SELECT=1

echo "building the tests" >&2
# The test executables of the workspace build (running `cargo test -p` per test would rebuild with other
# features): "PACKAGE:TEST EXECUTABLE PACKAGE_DIR" per line.
EXES=$(cargo test --release --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or "test" not in m["target"]["kind"]:
        continue
    pid = m["package_id"]  # path+file:///DIR#NAME@VERSION (or NAME VERSION (path+file:///DIR) on older cargo)
    pkg = pid.split("#")[1].split("@")[0] if "#" in pid else pid.split()[0]
    print(pkg + ":" + m["target"]["name"], m["executable"], os.path.dirname(m["manifest_path"]))
')
[ -n "$EXES" ] || { cargo test --release --workspace --no-run; exit 1; }

# Every test of every target, as EXECUTABLE|DIR|TARGET|NAME.
TESTS=()
for t in "${TARGETS[@]}"; do
    line=$(grep -F "$t " <<<"$EXES" | head -1)
    [ -n "$line" ] || { echo "stress.sh: no test target $t" >&2; exit 2; }
    read -r _ exe dir <<<"$line"
    ignored=$(cd "$dir" && "$exe" --list --ignored 2>/dev/null | sed -n 's/: test$//p')
    while IFS= read -r name; do
        [ -z "$FILTER" ] || [[ "$name" == *"$FILTER"* ]] || continue
        grep -qxF "$name" <<<"$ignored" && continue # opt-in tests (#[ignore]) stay out
        TESTS+=("$exe|$dir|${t#*:}|$name")
    done < <(cd "$dir" && "$exe" --list 2>/dev/null | sed -n 's/: test$//p')
done
[ ${#TESTS[@]} -gt 0 ] || { echo "stress.sh: no tests matched" >&2; exit 2; }

BUSY_PIDS=()
TEST_PID=""
# On exit or Ctrl-C: stop the busy loops and the running test with everything it started (its own session).
stop_busy() {
    for p in "${BUSY_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -z "$TEST_PID" ] || kill -- "-$TEST_PID" 2>/dev/null || true
}
trap stop_busy EXIT INT TERM
for _ in $(seq 1 "$BUSY"); do
    (while :; do :; done) &
    BUSY_PIDS+=($!)
done
echo "$BUSY busy loop(s) running; ${#TESTS[@]} tests x $ROUNDS rounds" >&2

declare -A PASS FAIL TIMES
for r in $(seq 1 "$ROUNDS"); do
    for t in "${TESTS[@]}"; do
        IFS='|' read -r exe dir test name <<<"$t"
        start=$(date +%s.%N)
        log="$OUT/$test-$name-round$r.log"
        # In the background and waited for, so that a signal reaches the trap at once.
        (cd "$dir" && exec setsid "$exe" --exact "$name") >"$log" 2>&1 &
        TEST_PID=$!
        if wait "$TEST_PID"; then
            PASS[$t]=$(( ${PASS[$t]:-0} + 1 ))
            rm -f "$log"
            status=pass
        else
            FAIL[$t]=$(( ${FAIL[$t]:-0} + 1 ))
            status="FAIL (log: $log)"
        fi
        secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
        TIMES[$t]="${TIMES[$t]:-} $secs"
        printf 'round %d  %-75s %6.1f s  %s\n' "$r" "$test::$name" "$secs" "$status" >&2
    done
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
total_fail=0
printf '\n| test | passed | failed | median s |\n| --- | ---: | ---: | ---: |\n'
for t in "${TESTS[@]}"; do
    IFS='|' read -r exe dir test name <<<"$t"
    printf '| %s::%s | %d | %d | %.1f |\n' "$test" "$name" "${PASS[$t]:-0}" "${FAIL[$t]:-0}" \
        "$(echo "${TIMES[$t]}" | median)"
    total_fail=$(( total_fail + ${FAIL[$t]:-0} ))
done
echo
echo "$ROUNDS rounds with $BUSY busy loop(s): $total_fail failure(s)"
[ "$total_fail" -eq 0 ]
