//! The evidence trail: an append-only list of events where each entry holds the hash of the
//! previous one, so an edited, deleted or reordered entry breaks the chain. The state store keeps
//! the lifecycle trail; a sidecar with `--evidence FILE` keeps a chain of its decisions in the
//! same format. Pure: hashing and checking only.

use aws_lc_rs::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

/// Hash that stands before the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceEntry {
    /// Position in the trail, from 1.
    pub seq: i64,
    /// Unix milliseconds.
    pub ts_ms: i64,
    /// The preview the event concerns.
    pub preview_id: String,
    /// Event name (`preview.provisioned`, `key.issued`, `key.revoked`, `secret.deleted`, ...,
    /// and `auth.validate`, `auth.mint` for a sidecar's decisions).
    pub event: String,
    /// Event details (never secret material).
    pub data: serde_json::Value,
    /// Hash of the previous entry.
    pub prev_hash: String,
    /// Hash of this entry: SHA-256 over `prev_hash` and the entry's canonical JSON.
    pub hash: String,
}

/// Computes the hash of an entry from its fields and the previous hash.
pub fn entry_hash(prev_hash: &str, seq: i64, ts_ms: i64, preview_id: &str, event: &str, data: &serde_json::Value) -> String {
    // serde_json writes object members sorted (BTreeMap), so this is canonical.
    let body = serde_json::json!({"seq": seq, "ts_ms": ts_ms, "preview_id": preview_id, "event": event, "data": data});
    let mut input = prev_hash.as_bytes().to_vec();
    input.push(b'\n');
    input.extend_from_slice(body.to_string().as_bytes());
    hex(digest(&SHA256, &input).as_ref())
}

/// Checks a whole trail in order. Returns the seq of the first bad entry and why.
pub fn verify_chain(entries: &[EvidenceEntry]) -> Result<(), (i64, String)> {
    let mut prev = GENESIS_HASH.to_owned();
    let mut expected_seq = 1;
    for e in entries {
        if e.seq != expected_seq {
            return Err((e.seq, format!("expected entry {expected_seq}, found {} (deleted or reordered)", e.seq)));
        }
        if e.prev_hash != prev {
            return Err((e.seq, "prev_hash does not match the previous entry (deleted or reordered)".into()));
        }
        if entry_hash(&prev, e.seq, e.ts_ms, &e.preview_id, &e.event, &e.data) != e.hash {
            return Err((e.seq, "hash does not match the entry's content (edited)".into()));
        }
        prev = e.hash.clone();
        expected_seq += 1;
    }
    Ok(())
}

/// Checks an excerpt of a trail (one preview's entries, as `pvid audit export` writes them):
/// each entry's hash against its content and `prev_hash`, and, where two entries are
/// consecutive in the trail, that the second links to the first. Gaps are other previews'.
pub fn verify_excerpt(entries: &[EvidenceEntry]) -> Result<(), (i64, String)> {
    let mut previous: Option<&EvidenceEntry> = None;
    for e in entries {
        if let Some(p) = previous {
            if e.seq <= p.seq {
                return Err((e.seq, format!("entry {} follows entry {} (reordered)", e.seq, p.seq)));
            }
            if e.seq == p.seq + 1 && e.prev_hash != p.hash {
                return Err((e.seq, "prev_hash does not match the previous entry (deleted or reordered)".into()));
            }
        }
        if entry_hash(&e.prev_hash, e.seq, e.ts_ms, &e.preview_id, &e.event, &e.data) != e.hash {
            return Err((e.seq, "hash does not match the entry's content (edited)".into()));
        }
        previous = Some(e);
    }
    Ok(())
}

/// The entries of a chain file (JSONL, as `pvid audit export` and a sidecar's
/// `--evidence` file write them), in order; names the line that is not an entry.
pub fn read_entries(text: &str) -> Result<Vec<EvidenceEntry>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: not an evidence entry: {e}", i + 1)))
        .collect()
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
