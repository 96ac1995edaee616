//! Errors of OpenBao requests. Every one names the server's address and the operation, and is
//! classified so that an operator knows what to fix: server down, sealed, token rejected,
//! permission missing, timeout, or an answer pvid did not expect.

use std::fmt;
use std::time::Duration;

/// What went wrong, in terms an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BaoErrorKind {
    /// Nothing answers at the address (connection refused, DNS failure, TLS handshake failure).
    Unreachable,
    /// No answer within the timeout.
    Timeout(Duration),
    /// The server is sealed (`bao operator unseal`).
    Sealed,
    /// The server is not initialised (`bao operator init`).
    NotInitialized,
    /// The token is invalid, expired or revoked.
    TokenRejected,
    /// The token is valid but its policies do not allow this request.
    PermissionDenied {
        /// The API path (without `/v1/`).
        path: String,
        /// The token's policies, when they could be read.
        policies: Vec<String>,
    },
    /// The mount does not exist or is of another type.
    NoMount {
        /// The mount path.
        mount: String,
    },
    /// Any other HTTP status, with OpenBao's error messages.
    Status {
        /// HTTP status code.
        status: u16,
        /// `errors` from the response body.
        messages: Vec<String>,
    },
    /// The answer does not have the shape pvid expects.
    BadResponse(String),
}

impl fmt::Display for BaoErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaoErrorKind::Unreachable => f.write_str("server unreachable (is OpenBao running at this address?)"),
            BaoErrorKind::Timeout(d) => write!(f, "no answer within {} s (PVID_BAO_TIMEOUT)", d.as_secs_f64()),
            BaoErrorKind::Sealed => f.write_str("server is sealed; unseal it (bao operator unseal) and re-run"),
            BaoErrorKind::NotInitialized => f.write_str("server is not initialized (bao operator init)"),
            BaoErrorKind::TokenRejected => {
                f.write_str("token rejected (invalid, expired or revoked); check BAO_TOKEN / PVID_BAO_TOKEN_FILE")
            }
            BaoErrorKind::PermissionDenied { path, policies } => {
                write!(f, "permission denied on {path}")?;
                if !policies.is_empty() {
                    write!(f, " for a token with policies [{}]", policies.join(", "))?;
                }
                f.write_str("; grant it as in deploy/openbao/pvid-policy.hcl")
            }
            BaoErrorKind::NoMount { mount } => {
                write!(f, "no such mount `{mount}` (enable it, or set PVID_BAO_KV_MOUNT / PVID_BAO_TRANSIT_MOUNT)")
            }
            BaoErrorKind::Status { status, messages } if messages.is_empty() => write!(f, "HTTP {status}"),
            BaoErrorKind::Status { status, messages } => write!(f, "HTTP {status}: {}", messages.join("; ")),
            BaoErrorKind::BadResponse(why) => write!(f, "unexpected answer: {why}"),
        }
    }
}

/// An OpenBao request failed.
#[derive(Debug, thiserror::Error)]
#[error("OpenBao at {addr}: {operation} failed: {kind}")]
pub struct BaoError {
    /// The server address.
    pub addr: String,
    /// What pvid was doing (`write secret preview/pr-1/api/private-key`).
    pub operation: String,
    /// Why it failed.
    pub kind: BaoErrorKind,
    /// The transport error, for connection failures.
    #[source]
    pub source: Option<reqwest::Error>,
}

impl BaoError {
    /// Whether the same request may succeed later unchanged (server down, sealed, slow, 5xx).
    pub fn is_retryable(&self) -> bool {
        match &self.kind {
            BaoErrorKind::Unreachable | BaoErrorKind::Timeout(_) | BaoErrorKind::Sealed => true,
            BaoErrorKind::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}
