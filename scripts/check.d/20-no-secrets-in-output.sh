# Sourced by scripts/test after the tests: no captured output (CLI runs, sidecar logs, cargo's
# own log) holds a fragment of a private key or a token signature the suite used.
python3 scripts/check-no-secrets.py "$PVID_TEST_CAPTURE_DIR" "$PWD"
# The scan must be able to fail: a planted leak (a corpus token signature) must be reported.
canary="$PVID_CI_TMP/secret-scan-canary"
rm -rf "$canary" && mkdir -p "$canary/out"
cp testdata/cases/tokens/C00a.jwt "$canary/out/planted.txt"
if python3 scripts/check-no-secrets.py "$canary" "$PWD" >/dev/null; then
  echo "secret scan: a planted token signature was not reported" >&2
  exit 1
fi
