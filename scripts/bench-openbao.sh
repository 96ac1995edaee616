#!/usr/bin/env bash
# Benchmark (not a test): pvid up/down of a 10-service preview and token mints per second, for
# local, OpenBao KV and OpenBao Transit custody, in one run on one machine. Starts its own
# OpenBao dev server (stopped by PID on exit) and runs pvid with a token bound to the shipped
# least-privilege policy. Prints a Markdown table for docs/PERFORMANCE.md.
#
#   ./scripts/bench-openbao.sh [--runs 9] [--mints 2000]
set -euo pipefail
cd "$(dirname "$0")/.."

PVID_CI_TMP=${PVID_CI_TMP:-$(mktemp -d /tmp/pvid-bench.XXXXXX)}
export PVID_CI_TMP
_exit_cmds=()
on_exit() { _exit_cmds+=("$1"); }
trap 'for c in "${_exit_cmds[@]}"; do eval "$c" || true; done' EXIT
# shellcheck source=scripts/test.d/20-openbao.sh
source scripts/test.d/20-openbao.sh

root="$PVID_TEST_BAO_ROOT_TOKEN"
api() { curl -fsS -H "X-Vault-Token: $root" "$@"; }
api -X POST -d '{"type":"transit"}' "$BAO_ADDR/v1/sys/mounts/transit" # KV v2 is at secret/ in dev mode
python3 -c 'import json,sys; print(json.dumps({"policy": open(sys.argv[1]).read()}))' deploy/openbao/pvid-policy.hcl \
  | api -X PUT -d @- "$BAO_ADDR/v1/sys/policies/acl/pvid"
BAO_TOKEN=$(api -X POST -d '{"policies":["pvid"],"no_default_policy":true}' "$BAO_ADDR/v1/auth/token/create" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["auth"]["client_token"])')
export BAO_TOKEN

cargo build --release --locked -p pvid --bin pvid --example custody_bench
target_dir=${CARGO_TARGET_DIR:-target}
echo "machine: $(nproc) cores, $(uname -sr); OpenBao $("$PVID_TEST_BAO_BIN" version | cut -d' ' -f2) dev server (in-memory)"
"$target_dir/release/examples/custody_bench" --pvid "$target_dir/release/pvid" "$@"
