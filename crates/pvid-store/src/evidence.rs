//! The evidence trail's format and checks live in `pvid-core` (a sidecar's decision chain uses
//! them too); the state store appends and reads entries.

pub use pvid_core::evidence::{EvidenceEntry, GENESIS_HASH, entry_hash, hex, read_entries, verify_chain, verify_excerpt};
