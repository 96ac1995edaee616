# Sourced by scripts/test after the tests: runs every cargo-fuzz target for a bounded time
# (docs/fuzzing.md). PVID_FUZZ_SECONDS per target (default 60; 0 skips fuzzing). New inputs go to
# PVID_FUZZ_CORPUS_DIR (default under $PVID_CI_TMP; point it at a cached folder to keep the corpus
# growing across runs); the seed corpus fuzz/corpus/<target> is read, never written. A crash
# fails the run and names the artifact to turn into a regression (fuzz/regressions/<target>/).
fuzz_seconds=${PVID_FUZZ_SECONDS:-60}
if [ "$fuzz_seconds" = 0 ]; then
  echo "fuzz: skipped (PVID_FUZZ_SECONDS=0)"
else
  if ! cargo fuzz --version 2>/dev/null | grep -q '^cargo-fuzz 0.13.2'; then
    echo "fuzz: installing cargo-fuzz 0.13.2"
    cargo install cargo-fuzz --locked --version 0.13.2 --quiet
  fi
  # Nightly gives AddressSanitizer; on stable, cargo-fuzz runs without a sanitizer (-s none).
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz_cmd=(cargo +nightly fuzz); fuzz_san=(--sanitizer address)
  else
    fuzz_cmd=(cargo fuzz); fuzz_san=(--sanitizer none)
  fi
  fuzz_target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
  fuzz_corpus="${PVID_FUZZ_CORPUS_DIR:-$PVID_CI_TMP/fuzz-corpus}"
  fuzz_artifacts="$PVID_CI_TMP/fuzz-artifacts"
  echo "fuzz: building targets (${fuzz_cmd[*]}, ${fuzz_san[*]})"
  "${fuzz_cmd[@]}" build "${fuzz_san[@]}" --target-dir "$fuzz_target_dir"
  for target in $("${fuzz_cmd[@]}" list); do
    mkdir -p "$fuzz_corpus/$target" "$fuzz_artifacts/$target"
    echo "fuzz: $target for ${fuzz_seconds}s"
    if ! "${fuzz_cmd[@]}" run "${fuzz_san[@]}" --target-dir "$fuzz_target_dir" "$target" \
        "$fuzz_corpus/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$fuzz_artifacts/$target/" >"$fuzz_artifacts/$target.log" 2>&1; then
      tail -40 "$fuzz_artifacts/$target.log"
      echo "fuzz: $target FAILED; the input is in $fuzz_artifacts/$target/:" >&2
      ls "$fuzz_artifacts/$target" >&2
      echo "reproduce: ${fuzz_cmd[*]} run $target <artifact>; then copy it to fuzz/regressions/$target/" >&2
      exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::peak_rss_mb' "$fuzz_artifacts/$target.log" | sed "s/^/fuzz: $target /"
    echo "fuzz: $target: $(ls "$fuzz_corpus/$target" | wc -l) inputs in the working corpus"
  done
fi
