# Sourced by scripts/test. Tests that wait on work in another branch: marked #[ignore] with the
# reason, and skipped here too because scripts/test runs --include-ignored. Each entry names
# what it waits for; remove it (and the #[ignore]) when that lands.
#
# registry_http:: (crates/pvid/tests/registry_http.rs): cases C05/C06 against `pvid proxy
# --registry http://...`, which branch `server` adds.
PVID_TEST_HARNESS_ARGS+=(--skip "registry_http::")
