//! pvid-store: where pvid keeps what it knows.
//!
//! - [`state`]: the state store (previews, public keys, evidence trail) in SQLite or PostgreSQL,
//!   with per-preview operation locks ([`PreviewLock`]);
//! - [`secret`]: the secret store for private keys, behind the [`SecretStore`] trait, with the
//!   embedded [`LocalSecretStore`] (AES-256-GCM at rest, master key in a 0600 file);
//! - [`evidence`]: the hash chain of the evidence trail.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod evidence;
mod lock;
mod migrations;
pub mod secret;
pub mod state;

pub use error::StoreError;
pub use evidence::EvidenceEntry;
pub use secret::{LocalSecretStore, SecretPath, SecretStore, StoredKey};
pub use lock::PreviewLock;
pub use state::{Backend, KeyRecord, KeyState, PreviewRecord, StateStore};
