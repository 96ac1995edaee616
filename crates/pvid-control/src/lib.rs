//! pvid-control: the lifecycle of a preview's credentials, shared by the CLI (and, later, the
//! control-plane server and its TTL reaper).
//!
//! Order of operations, chosen so that a crash at any instant leaves something a re-run
//! completes and never a secret the state store does not know about:
//!
//! - **provision**: preview row (`provisioning`) → key row (`pending`, public half) → private
//!   key into the secret store → key `active` → preview `active` → registry files published.
//! - **teardown**: preview `tearing_down` and registry republished (sidecars refuse from here) →
//!   keys revoked → secrets deleted → secrets listed again to prove they are gone → preview
//!   `torn_down` → registry republished with an empty key set.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod error;
mod lifecycle;
mod publish;

pub use audit::{Orphan, OrphanKind};
pub use error::LifecycleError;
pub use lifecycle::{Control, ProvisionOutcome, TeardownOutcome};
pub use publish::{build_registry, registry_dir};
