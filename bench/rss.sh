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
WORK=$(mktemp -d /tmp/pvid-rss.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

if [ -z "${PVID:-}" ]; then
  cargo build --release -p pvid -q
  PVID=${CARGO_TARGET_DIR:-$PWD/target}/release/pvid
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
export PVID_HOME=$WORK/home
ORIGIN=127.0.0.1:18180
PORT=18185

mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_cpu_affinity 10;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen $ORIGIN; location / { return 200 "ok\n"; } }
}
CONF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)

cat >"$WORK/spec.yaml" <<SPEC
preview: rss
algorithm: ES256
token_ttl: 1h
services:
  client: { address: "127.0.0.1:19998", calls: [origin] }
  origin: { address: "127.0.0.1:$PORT" }
SPEC
"$PVID" up -f "$WORK/spec.yaml" >/dev/null
TOKEN=$("$PVID" token mint --preview rss --from client --to origin --ttl 1h)
# shellcheck disable=SC2086
env ${PVID_ENV:-} taskset -c 0 "$PVID" proxy --preview rss --service origin --listen 127.0.0.1:$PORT \
  --upstream $ORIGIN --registry "$PVID_HOME/previews/rss/registry.json" --log "$WORK/proxy.log" & PIDS+=($!)
PROXY=$!
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/")" = 200 ]

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
