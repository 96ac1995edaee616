#!/usr/bin/env bash
# bench/ab.sh OLD NEW: two pvid binaries, same setup, alternated, to compare one change.
#
# One nginx origin on loopback; each binary runs `pvid proxy` (cache on, log to a file) pinned to
# CPU 0; wrk (1 thread, CONNS connections, one valid token) on CPU 1 for DURATION seconds, the
# two alternated ROUNDS times. Prints req/s, p99 and proxy CPU per request for every run, then
# the medians. Absolute figures drift on shared machines: compare only within one run.
#
# Usage: bench/ab.sh OLD_PVID NEW_PVID   (env: ROUNDS=4 DURATION=10 CONNS=32)
set -euo pipefail
OLD=$1 NEW=$2
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
source "$(dirname "$0")/lib.sh"
bench_work pvid-ab
export PVID_HOME=$WORK/home
ORIGIN=127.0.0.1:18280

start_origin $ORIGIN
bench_preview "$NEW" ab 19997 18285

start() { # BIN PORT LOG -> pid
  taskset -c 0 "$1" proxy --preview ab --service origin --listen "127.0.0.1:$2" --upstream $ORIGIN \
    --registry "$REG" --log "$3" >/dev/null 2>&1 &
  echo $!
}
P_OLD=$(start "$OLD" 18286 "$WORK/old.log"); PIDS+=("$P_OLD")
P_NEW=$(start "$NEW" 18287 "$WORK/new.log"); PIDS+=("$P_NEW")
for port in 18286 18287; do
  wait_up $port
  [ "$(status_with_token $port)" = 200 ]
done

run() { # NAME PORT PID
  local b a out
  b=$(cpu_ticks "$3")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$2/")
  a=$(cpu_ticks "$3")
  awk -v n="$1" -v b="$b" -v a="$a" -v t="$(getconf CLK_TCK)" '
    /Requests\/sec/ {rps=$2} /requests in/ {reqs=$1} $1=="99%" {p99=$2}
    END {printf "%s %.0f %s %.1f %d\n", n, rps, p99, (a-b)/t*1e6/reqs, reqs}' <<<"$out"
}
RES=$WORK/res.txt
for r in $(seq 1 "$ROUNDS"); do
  run old 18286 "$P_OLD" | tee -a "$RES"
  run new 18287 "$P_NEW" | tee -a "$RES"
done
sleep 1 # let the writer catch up
for n in old new; do
  served=$(awk -v n="$n" '$1==n {s+=$5} END {print s}' "$RES")
  echo "$n: $served requests by wrk, $(grep -c '"auth.validate"' "$WORK/$n.log") decision lines" \
    "(plus the 1-2 curl checks), $(grep -c '"log.dropped"' "$WORK/$n.log" || true) log.dropped lines"
done
python3 - "$RES" <<'PY'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    n, rps, _p99, cpu, _reqs = l.split()
    rows.setdefault(n, []).append((float(rps), float(cpu)))
for n, v in rows.items():
    print(f"{n}: median {statistics.median(r for r, _ in v):.0f} req/s, {statistics.median(c for _, c in v):.1f} us CPU/req")
print(f"new/old req/s: {statistics.median(r for r, _ in rows['new']) / statistics.median(r for r, _ in rows['old']):.2f}")
PY
