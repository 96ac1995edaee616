# Python tools the tests use as independent checkers: prometheus_client's text-format parser.
# Exports PVID_TEST_PYTHON (a venv's python with them installed).
if [ ! -x "$PVID_CI_TMP/pytools/bin/python" ]; then
  python3 -m venv "$PVID_CI_TMP/pytools"
  "$PVID_CI_TMP/pytools/bin/pip" install -q --disable-pip-version-check 'prometheus-client==0.21.1'
fi
export PVID_TEST_PYTHON="$PVID_CI_TMP/pytools/bin/python"
