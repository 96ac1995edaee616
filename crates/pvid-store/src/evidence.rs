//! The evidence trail: an append-only list of lifecycle events where each entry holds the hash
//! of the previous one, so an edited, deleted or reordered entry breaks the chain.

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
    /// Event name (`preview.provisioned`, `key.issued`, `key.revoked`, `secret.deleted`, ...).
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

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
