//! pvid-control: the lifecycle of a preview's credentials, shared by the CLI (and, later, the
//! control-plane server and its TTL reaper).
//!
//! Order of operations, chosen so that a crash at any instant leaves something a re-run
//! completes and never a secret the state store does not know about:
//!
//! - **provision**, `sidecar` custody: preview row (`provisioning`) → key row (`pending`, public
//!   half) → private key into the secret store → key `active` → preview `active` → registry
//!   files published.
//! - **provision**, `transit` custody: preview row → Transit key created in the vault (its public
//!   half exists only now) → key row → key `active` → preview `active` → registry published.
//!   A crash after the vault write leaves a Transit key of a preview that is not active: the
//!   orphan audit reports it, a re-run adopts it.
//! - **teardown**: preview `tearing_down` and registry republished (sidecars refuse from here) →
//!   keys revoked → secrets and Transit keys deleted → each read back and the store listed again
//!   to prove they are gone → preview `torn_down` → registry republished with an empty key set.
//!
//! - **rotation** ([`Control::begin_rotation`], [`Control::switch_signing`],
//!   [`Control::retire_due`]): new key row (`pending`) → its private key at
//!   `preview/<id>/<svc>/next-private-key` → key `next` and registry published (verifiers accept
//!   it, nobody signs with it) → after the registry version was acknowledged or a publish delay:
//!   the new private key copied to `private-key` → in one transaction the new key `active` and
//!   the old one `retiring` until the end of the overlap (or `revoked`, `--emergency`) → registry
//!   published → `next-private-key` deleted → once the overlap is over the old key `revoked`.
//!   Under transit custody step one is a new version of the Transit key (nothing to stage).
//!
//! The secret (or Transit key) is always written before the registry publishes its public half,
//! and deleted only after the registry stopped publishing it: see docs/openbao.md.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod error;
mod lifecycle;
mod publish;
mod rotate;

pub use audit::{Orphan, OrphanKind};
pub use error::LifecycleError;
pub use lifecycle::{Control, ProvisionOutcome, SigningSource, TeardownOutcome, same_public_key};
pub use publish::{build_registry, registry_dir};
pub use rotate::{NextKey, Switched, default_overlap_s};
