//! pvid-core: the identity model of pvid, with no I/O and no async.
//!
//! - [`id`]: preview ids and service names (DNS labels), issuer and audience names;
//! - [`spec`]: the preview spec (YAML) with file/line/field errors;
//! - [`key`]: key generation (ES256, EdDSA, RS256), JWKs;
//! - [`token`]: minting and strict verification in DESIGN.md's check order;
//! - [`registry`]: the per-preview registry document;
//! - [`policy`]: the default-deny call policy and path normalisation;
//! - [`reason`]: the closed list of decision reason codes.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod cache;
pub mod clock;
pub mod duration;
pub mod evidence;
pub mod explain;
#[doc(hidden)]
pub mod fuzzing;
pub mod id;
pub mod jose;
pub mod key;
pub mod policy;
pub mod reason;
pub mod registry;
pub mod spec;
pub mod token;

pub use clock::{Clock, FixedClock, SystemClock};
pub use id::{PreviewId, ServiceName, preview_audience, service_identity};
pub use key::{Algorithm, Jwk, Jwks, SigningKey, VerifyingKey};
pub use policy::{CallRule, CallSpec, Policy, normalize_path};
pub use reason::ReasonCode;
pub use registry::{PreviewState, Registry, RetiringKey, RevokedKey, ServiceEntry};
pub use spec::{CredentialMode, KeyCustody, PreviewConfig, PreviewSpec, ServiceConfig, ServiceSpec, SpecError};
pub use token::{MintRequest, Rejection, TokenInfo, UnsignedToken, Verified, Verifier, extract_bearer, mint, sign_compact};
