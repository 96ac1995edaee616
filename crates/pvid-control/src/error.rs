//! Errors of lifecycle operations.

use pvid_store::StoreError;

/// A lifecycle operation failed. The state it left is always one a re-run completes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The preview does not exist.
    #[error("preview {0} does not exist")]
    NotFound(String),
    /// The preview is active with a different spec.
    #[error("preview {preview} is already active with a different spec ({changes}); tear it down first (pvid down {preview})")]
    SpecChanged {
        /// The preview.
        preview: String,
        /// What differs, in words.
        changes: String,
    },
    /// A teardown is in progress.
    #[error("preview {0} is being torn down; finish it with `pvid down {0}` before provisioning again")]
    TearingDown(String),
    /// Key generation failed.
    #[error("key generation for {service} failed: {reason}")]
    KeyGen {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// Secrets were still listed after teardown deleted them.
    #[error("secrets of {preview} still present after deletion: {paths}")]
    SecretsRemain {
        /// The preview.
        preview: String,
        /// What is left.
        paths: String,
    },
    /// Writing the registry files failed.
    #[error("cannot write registry file {path}")]
    Publish {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}
