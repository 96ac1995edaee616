#!/usr/bin/env bash
# bench/rss.sh: the pvid sidecar's resident memory while 1,000 keep-alive connections hammer it.
#
# One nginx origin on loopback, one `pvid proxy` (cache on, log to a file) in front of it, pinned
# to CPU 0; wrk (1 thread, CONNS connections, each sending the same valid token) on CPU 1. VmRSS
# of the sidecar is read from /proc halfway through the run, then VmHWM (peak) at its end. The
# same method as the memory line of bench/proxy.sh, without the rest of that benchmark.
#
# Usage: bench/rss.sh   (env: PVID=path/to/pvid (default: build release), CONNS=1000,
#                        DURATION=10, ROUNDS=3, PVID_ENV="VAR=value ..." for the sidecar)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-1000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
source bench/lib.sh
bench_work pvid-rss

if [ -z "${PVID:-}" ]; then
  cargo build --release -p pvid -q
  PVID=${CARGO_TARGET_DIR:-$PWD/target}/release/pvid
fi
export PVID_HOME=$WORK/home
ORIGIN=127.0.0.1:18180
PORT=18185

start_origin $ORIGIN

bench_preview "$PVID" rss 19998 $PORT
# shellcheck disable=SC2086
env ${PVID_ENV:-} taskset -c 0 "$PVID" proxy --preview rss --service origin --listen 127.0.0.1:$PORT \
  --upstream $ORIGIN --registry "$REG" --log "$WORK/proxy.log" & PIDS+=($!)
PROXY=$!
wait_up $PORT
[ "$(status_with_token $PORT)" = 200 ]

kib() { awk -v k="$1:" '$1==k {print $2}' "/proc/$PROXY/status"; }
mib() { echo "scale=1; $(kib "$1") / 1024" | bc; }
echo "idle: VmRSS $(mib VmRSS) MiB (anonymous $(mib RssAnon), file $(mib RssFile))"
for round in $(seq 1 "$ROUNDS"); do
  taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/" >"$WORK/wrk.txt" &
  WRK=$!
  sleep $((DURATION / 2 + 1))
  rss="$(mib VmRSS) MiB (anonymous $(mib RssAnon), file $(mib RssFile))"
  wait $WRK || true
  rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
  echo "round $round: VmRSS $rss under $CONNS connections; peak so far $(mib VmHWM) MiB; $rps req/s"
done
