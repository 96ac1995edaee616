//! pvid-bao: a small client for OpenBao (and HashiCorp Vault, which speaks the same API), with
//! exactly what pvid uses:
//!
//! - **KV v2** ([`Client::kv_put`], [`Client::kv_get`], [`Client::kv_destroy`], ...) for private
//!   keys under `sidecar` custody, at `preview/<id>/<svc>/private-key`;
//! - **Transit** ([`Client::transit_create`], [`Client::transit_sign`], ...) for `transit`
//!   custody, where a non-exportable key per service signs and the private key never leaves the
//!   vault.
//!
//! Every failure is a [`BaoError`] naming the server address, the operation and an actionable
//! kind (unreachable, timeout, sealed, token rejected, permission denied on a path, ...).
//! It is plain HTTP over `reqwest` (rustls): see docs/openbao.md for why not a Vault crate.
//! Used by the secret store backend (`pvid-store`, feature `openbao`) and by the sidecar's
//! Transit signer (`pvid-proxy`, feature `openbao`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod client;
mod config;
mod error;
mod jwk;
#[cfg(feature = "test-util")]
pub mod testkit;

pub use client::{Client, ClientBuildError, TransitKeyInfo};
pub use config::{BaoConfig, BaoConfigError, BaoOverrides, Token};
pub use config::{
    ENV_BAO_ADDR, ENV_BAO_CACERT, ENV_BAO_NAMESPACE, ENV_BAO_TOKEN, ENV_KV_MOUNT, ENV_TIMEOUT, ENV_TOKEN_FILE,
    ENV_TRANSIT_MOUNT, ENV_VAULT_ADDR, ENV_VAULT_CACERT, ENV_VAULT_NAMESPACE, ENV_VAULT_TOKEN,
};
pub use error::{BaoError, BaoErrorKind};
pub use jwk::{transit_key_type, transit_public_jwk};

/// Name of the Transit key of one service of one preview: `preview-<id>-<svc>`.
pub fn transit_key_name(preview: &pvid_core::PreviewId, service: &pvid_core::ServiceName) -> String {
    pvid_core::service_identity(preview, service)
}
