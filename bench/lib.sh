# shellcheck shell=bash
# bench/lib.sh: what the benchmark scripts share (each sources it): a work folder whose
# processes stop on exit, the one-worker nginx origin, a two-service preview (client -> origin)
# with a long-lived token, a wait for a listener, and a process's CPU ticks.

# bench_work PREFIX [keep]: sets WORK and PIDS. On exit every PID is stopped, and WORK removed
# unless `keep` is given.
bench_work() {
  WORK=$(mktemp -d "/tmp/$1.XXXXXX")
  PIDS=()
  BENCH_KEEP=${2:-}
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$BENCH_KEEP" ] || rm -rf "$WORK"
}

# start_origin ADDR: one nginx worker, pinned to CPU 1, answering `200 ok` at ADDR.
start_origin() {
  local nginx; nginx=$(command -v nginx || echo /usr/sbin/nginx)
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
  server { listen $1; location / { return 200 "ok\n"; } }
}
CONF
  "$nginx" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" & PIDS+=($!)
}

# bench_preview PVID ID CLIENT_PORT ORIGIN_PORT: provisions preview ID (client may call origin,
# whose sidecar listens on ORIGIN_PORT) under PVID_HOME; sets TOKEN (client -> origin, 1 h) and
# REG (the registry file).
bench_preview() {
  cat >"$WORK/spec.yaml" <<SPEC
preview: $2
algorithm: ES256
token_ttl: 1h
services:
  client: { address: "127.0.0.1:$3", calls: [origin] }
  origin: { address: "127.0.0.1:$4" }
SPEC
  "$1" up -f "$WORK/spec.yaml" >/dev/null
  TOKEN=$("$1" token mint --preview "$2" --from client --to origin --ttl 1h)
  REG=$PVID_HOME/previews/$2/registry.json
}

# wait_up PORT: until something answers HTTP on 127.0.0.1:PORT (10 s at most, then exit 1).
wait_up() {
  for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done
  echo "nothing answers on port $1"; exit 1
}

# status_with_token PORT: the HTTP status of a request carrying $TOKEN.
status_with_token() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$1/"; }

# cpu_ticks PID: user + system clock ticks of PID so far (0 without a PID).
cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
