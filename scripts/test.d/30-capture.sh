# Sourced by scripts/test. Tests keep what they print, and the keys and tokens they make, under
# $PVID_TEST_CAPTURE_DIR; scripts/check.d/20-no-secrets-in-output.sh scans the outputs for the
# secrets afterwards (see scripts/check-no-secrets.py).
export PVID_TEST_CAPTURE_DIR="$PVID_CI_TMP/capture"
rm -rf "$PVID_TEST_CAPTURE_DIR"
mkdir -p "$PVID_TEST_CAPTURE_DIR/out" "$PVID_TEST_CAPTURE_DIR/needles/keys" "$PVID_TEST_CAPTURE_DIR/needles/tokens"
