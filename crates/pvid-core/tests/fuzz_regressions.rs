//! Replays every saved fuzz input through its entry point: the seed corpus (`fuzz/corpus/<t>/`)
//! and every input that once crashed a target (`fuzz/regressions/<t>/`). A panic here is a
//! fuzz finding that came back. See docs/fuzzing.md.

use std::path::PathBuf;

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 4] = [
    ("token", pvid_core::fuzzing::token),
    ("jwks", pvid_core::fuzzing::jwks),
    ("spec", pvid_core::fuzzing::spec),
    ("policy_path", pvid_core::fuzzing::policy_path),
];

fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz").join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_seed_input_and_every_saved_crash_runs_clean() {
    for (target, entry) in TARGETS {
        let seeds = inputs("corpus", target);
        assert!(seeds.len() >= 5, "{target}: the seed corpus is missing ({} files)", seeds.len());
        for (path, bytes) in seeds.into_iter().chain(inputs("regressions", target)) {
            let result = std::panic::catch_unwind(|| entry(&bytes));
            assert!(result.is_ok(), "{target}: {} panicked", path.display());
        }
    }
}
