#!/usr/bin/env bash
# bench/proxy.sh: the pvid sidecar side by side with HAProxy and nginx, in one run.
#
# A one-worker nginx origin answers 200 on loopback. In front of it, measured interleaved and
# repeated ROUNDS times, with the proxy pinned to CPU 0 and wrk + origin to CPU 1:
#   nginx-direct      wrk -> nginx (no proxy: the ceiling of this setup)
#   haproxy-pass      HAProxy passthrough
#   haproxy-jwt       HAProxy 2.6 jwt_verify ES256 + iss/aud/exp checks + header rewrite
#   pvid-cache        pvid proxy, full validation, verified-token cache on
#   pvid-nocache      pvid proxy, full validation, cache off (a signature check per request)
#   pvid-newtoken     pvid proxy, cache on, a different token on every request
# Prints req/s, p50, p99 and proxy CPU per request (median over rounds) and the ratios.
# Absolute figures drift on shared machines: compare only within one run.
#
# Usage: bench/proxy.sh            (env: ROUNDS=3 DURATION=10 CONNS=32 TOKENS=50000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
TOKENS=${TOKENS:-50000}
source bench/lib.sh
bench_work pvid-bench keep   # keeps logs and results

need() { command -v "$1" >/dev/null 2>&1 || command -v "/usr/sbin/$1" >/dev/null 2>&1; }
if ! need haproxy || ! need nginx || ! need wrk; then
  echo "== installing haproxy, nginx, wrk (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q haproxy nginx wrk >/dev/null
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

echo "== building pvid (release)"
cargo build --release -p pvid -q
PVID=$PWD/target/release/pvid
export PVID_HOME=$WORK/home

ORIGIN=127.0.0.1:18080
P_PASS=18083; P_JWT=18084; P_CACHE=18085; P_NOCACHE=18086

# --- origin: one nginx worker on CPU 1
start_origin $ORIGIN

# --- a preview with a client and the origin service; tokens for the origin
bench_preview "$PVID" bench 19999 $P_CACHE
"$PVID" token mint --preview bench --from client --to origin --ttl 1h --count "$TOKENS" >"$WORK/tokens.txt"

# The origin's public key as PEM (SubjectPublicKeyInfo) for HAProxy's jwt_verify.
python3 - "$REG" "$WORK/origin-client.pem" <<'PY'
import base64, json, sys
reg = json.load(open(sys.argv[1]))
kid = reg["services"]["client"]["kids"][0]
jwk = next(k for k in reg["jwks"]["keys"] if k["kid"] == kid)
b = lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
spki = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200") + b"\x04" + b(jwk["x"]) + b(jwk["y"])
pem = base64.encodebytes(spki).decode().replace("\n", "")
open(sys.argv[2], "w").write("-----BEGIN PUBLIC KEY-----\n" + "\n".join(pem[i:i+64] for i in range(0, len(pem), 64)) + "\n-----END PUBLIC KEY-----\n")
PY

# --- HAProxy: passthrough and jwt_verify, one process, one thread, CPU 0
cat >"$WORK/haproxy.cfg" <<CONF
global
  nbthread 1
  cpu-map auto:1/1 0
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend pass
  bind 127.0.0.1:$P_PASS
  default_backend origin
frontend jwt
  bind 127.0.0.1:$P_JWT
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str ES256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.iss') -m str preview-bench-client }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_payload_query('\$.aud') -m str preview-bench-origin }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$WORK/origin-client.pem") -m int 1 }
  http-request del-header Authorization
  http-request set-header x-pvid-caller client
  default_backend origin
backend origin
  http-reuse always
  server o $ORIGIN
CONF
taskset -c 0 "$HAPROXY" -f "$WORK/haproxy.cfg" -db & PIDS+=($!)
HAPROXY_PID=$!

# --- pvid sidecars (cache on / off), CPU 0
taskset -c 0 "$PVID" proxy --preview bench --service origin --listen 127.0.0.1:$P_CACHE \
  --upstream $ORIGIN --registry "$REG" --log "$WORK/cache.log" & PIDS+=($!)
PVID_CACHE_PID=$!
taskset -c 0 "$PVID" proxy --preview bench --service origin --listen 127.0.0.1:$P_NOCACHE \
  --upstream $ORIGIN --registry "$REG" --log "$WORK/nocache.log" --no-cache & PIDS+=($!)
PVID_NOCACHE_PID=$!

for port in 18080 $P_PASS $P_JWT $P_CACHE $P_NOCACHE; do wait_up $port; done
# Every target must answer 200 with the token and refuse without it (else the numbers lie).
for port in $P_JWT $P_CACHE $P_NOCACHE; do
  ok=$(status_with_token $port)
  no=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")
  [ "$ok" = 200 ] && [ "$no" = 401 ] || { echo "port $port answers $ok with a token, $no without"; exit 1; }
done

cat >"$WORK/newtoken.lua" <<LUA
local tokens = {}
for line in io.lines("$WORK/tokens.txt") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA

# run NAME PORT PID [extra wrk args...] -> "NAME rps p50_us p99_us cpu_us_per_req"
run() {
  local name=$1 port=$2 pid=$3; shift 3
  local before after out rps p50 p99 reqs
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$@" "http://127.0.0.1:$port/")
  after=$(cpu_ticks "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  local non2xx; non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
  [ "$non2xx" = 0 ] || { echo "$name: $non2xx non-2xx answers"; exit 1; }
  python3 - "$name" "$rps" "$p50" "$p99" "$before" "$after" "$reqs" "$(getconf CLK_TCK)" <<'PY'
import sys
def us(v):
    v = v.strip()
    for suf, m in (("us", 1), ("ms", 1e3), ("s", 1e6)):
        if v.endswith(suf): return float(v[:-len(suf)]) * m
    return float(v)
name, rps, p50, p99, b, a, reqs, tck = sys.argv[1:]
cpu = (int(a) - int(b)) / int(tck) * 1e6 / max(int(reqs), 1) if int(a) else 0
print(f"{name} {float(rps):.0f} {us(p50):.0f} {us(p99):.0f} {cpu:.1f}")
PY
}

AUTH=(-H "Authorization: Bearer $TOKEN")
RESULTS=$WORK/results.txt
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round/$ROUNDS (${DURATION}s each, $CONNS connections)"
  run nginx-direct 18080 "" | tee -a "$RESULTS"
  run haproxy-pass $P_PASS "$HAPROXY_PID" | tee -a "$RESULTS"
  run haproxy-jwt $P_JWT "$HAPROXY_PID" "${AUTH[@]}" | tee -a "$RESULTS"
  run pvid-cache $P_CACHE "$PVID_CACHE_PID" "${AUTH[@]}" | tee -a "$RESULTS"
  run pvid-nocache $P_NOCACHE "$PVID_NOCACHE_PID" "${AUTH[@]}" | tee -a "$RESULTS"
  run pvid-newtoken $P_CACHE "$PVID_CACHE_PID" -s "$WORK/newtoken.lua" | tee -a "$RESULTS"
done

# Memory: pvid's RSS while 1000 keep-alive connections are open.
taskset -c 1 wrk -t1 -c1000 -d"${DURATION}s" "${AUTH[@]}" "http://127.0.0.1:$P_CACHE/" >/dev/null &
WRK=$!
sleep $((DURATION / 2 + 1))
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$PVID_CACHE_PID/status")
wait $WRK || true

python3 - "$RESULTS" "$RSS_KB" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    n, *v = line.split()
    rows.setdefault(n, []).append([float(x) for x in v])
med = {n: [statistics.median(c) for c in zip(*vals)] for n, vals in rows.items()}
print()
print(f"{'target':<15} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'CPU us/req':>11}   (median of {len(next(iter(rows.values())))} rounds)")
for n, (rps, p50, p99, cpu) in med.items():
    print(f"{n:<15} {rps:>9.0f} {p50:>8.0f} {p99:>8.0f} {cpu:>11.1f}")
r = lambda a, b, i=0: med[a][i] / med[b][i]
print()
print(f"pvid-cache / haproxy-pass   req/s {r('pvid-cache','haproxy-pass'):.2f}  (target >= 0.90)   p99 {r('pvid-cache','haproxy-pass',2):.2f}  (target <= 1.10)")
print(f"pvid-cache / haproxy-jwt    req/s {r('pvid-cache','haproxy-jwt'):.2f}")
print(f"pvid-nocache / haproxy-jwt  req/s {r('pvid-nocache','haproxy-jwt'):.2f}  (target >= 1.30)")
print(f"pvid-newtoken / haproxy-jwt req/s {r('pvid-newtoken','haproxy-jwt'):.2f}")
print(f"pvid sidecar RSS with 1000 keep-alive connections: {int(sys.argv[2]) / 1024:.1f} MiB (target <= 20)")
PY
