//! `--evidence FILE`: every decision (`auth.validate`, `auth.mint`) is also appended to a
//! hash-chained JSONL file, DESIGN.md's evidence trail for decisions. The sidecar links no state
//! store, so it keeps a chain of its own, in the entry format of the lifecycle trail
//! ([`pvid_core::evidence`]); `pvid audit verify --file FILE` checks it.
//!
//! Appending continues the chain already in the file. A file whose chain is broken is refused at
//! start: appending to it would bury the break under valid entries. One file per sidecar: two
//! writers would fork the chain.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use pvid_core::evidence::{EvidenceEntry, GENESIS_HASH, entry_hash, read_entries, verify_chain};
use serde_json::Value;

use crate::ProxyError;

/// The open chain: where the next entry goes and what it links to.
pub(crate) struct EvidenceChain {
    file: File,
    preview: String,
    seq: i64,
    prev_hash: String,
}

impl EvidenceChain {
    /// Opens `path` for appending after checking the chain already in it.
    pub(crate) fn open(path: &Path, preview: &str) -> Result<EvidenceChain, ProxyError> {
        let bad = |reason: String| ProxyError::Evidence { path: path.to_path_buf(), reason };
        let existing = match std::fs::read_to_string(path) {
            Ok(text) => read_entries(&text).map_err(bad)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(bad(format!("cannot read: {e}"))),
        };
        verify_chain(&existing).map_err(|(seq, why)| bad(format!("chain broken at entry {seq}: {why}")))?;
        let mut options = OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path).map_err(|e| bad(format!("cannot open for appending: {e}")))?;
        let (seq, prev_hash) = existing.last().map_or((0, GENESIS_HASH.to_owned()), |e| (e.seq, e.hash.clone()));
        Ok(EvidenceChain { file, preview: preview.to_owned(), seq, prev_hash })
    }

    /// Appends `line` (one encoded log line) when it is a decision; other lines are not evidence.
    pub(crate) fn append_if_decision(&mut self, line: &str, ts_ms: i64) -> io::Result<()> {
        let Ok(data) = serde_json::from_str::<Value>(line) else { return Ok(()) };
        let Some(event) = data["event"].as_str().filter(|e| e.starts_with("auth.")).map(str::to_owned) else {
            return Ok(());
        };
        let seq = self.seq + 1;
        let hash = entry_hash(&self.prev_hash, seq, ts_ms, &self.preview, &event, &data);
        let entry = EvidenceEntry { seq, ts_ms, preview_id: self.preview.clone(), event, data, prev_hash: self.prev_hash.clone(), hash };
        let mut text = serde_json::to_string(&entry).map_err(io::Error::other)?;
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.flush()?;
        self.seq = seq;
        self.prev_hash = entry.hash;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(rid: &str) -> String {
        format!("{{\"ts\":\"2026-12-03T10:00:00.000Z\",\"event\":\"auth.validate\",\"result\":\"deny\",\"reason\":\"expired\",\"request_id\":\"{rid}\"}}")
    }

    #[test]
    fn decisions_chain_across_reopen_and_other_lines_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.jsonl");
        let mut chain = EvidenceChain::open(&path, "pr-1").unwrap();
        chain.append_if_decision(&decision("a"), 1).unwrap();
        chain.append_if_decision("{\"event\":\"registry.loaded\"}", 2).unwrap();
        drop(chain);
        let mut chain = EvidenceChain::open(&path, "pr-1").unwrap();
        chain.append_if_decision(&decision("b"), 3).unwrap();
        let entries = read_entries(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(entries.iter().map(|e| (e.seq, e.data["request_id"].as_str().unwrap())).collect::<Vec<_>>(), [(1, "a"), (2, "b")]);
        assert_eq!(verify_chain(&entries), Ok(()));
        #[cfg(unix)]
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions()) & 0o777, 0o600);
    }

    #[test]
    fn a_broken_chain_is_refused_at_open_naming_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("evidence.jsonl");
        let mut chain = EvidenceChain::open(&path, "pr-1").unwrap();
        for rid in ["a", "b", "c"] {
            chain.append_if_decision(&decision(rid), 1).unwrap();
        }
        drop(chain);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"reason\":\"expired\"", "\"reason\":\"ok\"", 2)).unwrap();
        let err = EvidenceChain::open(&path, "pr-1").err().expect("refused").to_string();
        assert!(err.contains("chain broken at entry 1: hash does not match"), "{err}");
    }
}
