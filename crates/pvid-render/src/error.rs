//! Why a render failed. Every error names what the user must change: the service and call, or
//! the name that does not fit the substrate.

use crate::Target;

/// A render failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The spec asks for a call the target cannot express exactly.
    #[error("{target}: services.{caller}.calls: \"{call}\": {reason}")]
    CallNotExpressible {
        /// The target.
        target: Target,
        /// The calling service (the spec entry holding the call).
        caller: String,
        /// The call as written in the spec (`payments: POST /charge`).
        call: String,
        /// What the target cannot do.
        reason: String,
    },
    /// A name the target derives from the preview or a service is invalid there.
    #[error("{target}: {what} `{name}` {reason}")]
    NameNotValid {
        /// The target.
        target: Target,
        /// What the name is for (`namespace`, `IAM role name`).
        what: &'static str,
        /// The derived name.
        name: String,
        /// Why it is refused, and what to shorten.
        reason: String,
    },
    /// The registry is not the one of this preview and spec.
    #[error("the registry does not match the spec: {0}; run `pvid up` with this spec first")]
    RegistryMismatch(String),
    /// Secrets were asked for, but one service has none.
    #[error("no private key for service {0}: is the preview provisioned?")]
    SecretMissing(String),
}
