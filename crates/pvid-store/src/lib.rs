//! pvid-store: where pvid keeps what it knows.
//!
//! - [`state`]: the state store (previews, public keys, evidence trail) in SQLite or PostgreSQL,
//!   with per-preview operation locks ([`PreviewLock`]);
//! - [`secret`]: the secret store for private keys, behind the [`SecretStore`] trait, with the
//!   embedded [`LocalSecretStore`] (AES-256-GCM at rest, master key in a 0600 file);
//! - [`evidence`]: the hash chain of the evidence trail;
//! - [`transit`]: keys that sign inside the secret store ([`TransitKeys`], transit custody);
//! - `openbao` (feature `openbao`): [`OpenBaoSecretStore`], private keys in OpenBao / Vault KV v2
//!   and Transit keys.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod evidence;
mod lock;
mod migrations;
pub mod secret;
pub mod state;
pub mod transit;
#[cfg(feature = "openbao")]
pub mod openbao;

pub use error::StoreError;
pub use evidence::EvidenceEntry;
pub use secret::{KeySlot, LocalSecretStore, SecretMeta, SecretPath, SecretStore, StoredKey};
pub use transit::{TransitKeyName, TransitKeys, TransitPublicKey};
#[cfg(feature = "openbao")]
pub use openbao::OpenBaoSecretStore;
pub use lock::PreviewLock;
pub use state::{Backend, KeyRecord, KeyState, PreviewRecord, StateStore};
