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
    /// A rotation needs an active preview.
    #[error("preview {preview} is {state}; only an active preview can rotate its keys")]
    NotActive {
        /// The preview.
        preview: String,
        /// Its state.
        state: String,
    },
    /// The spec names no such service.
    #[error("preview {preview} has no service {service}")]
    UnknownService {
        /// The preview.
        preview: String,
        /// The service asked for.
        service: String,
    },
    /// The previous rotation of a service is still in its overlap.
    #[error(
        "{service} of {preview} is still in the overlap of its last rotation: key {kid} is accepted until {until}; \
         rotate again after that, or now with --emergency (which refuses that key at once){resume}"
    )]
    RotationInProgress {
        /// How to finish services whose rotation was interrupted before its switch, if any.
        resume: String,
        /// The preview.
        preview: String,
        /// The service.
        service: String,
        /// The retiring key.
        kid: String,
        /// End of its overlap (RFC 3339).
        until: String,
    },
    /// The shared credential is of another algorithm than the spec asks for.
    #[error("algorithm: the shared credential is {shared}, in use by {users}; preview {preview} asks for {wanted} (use `algorithm: {shared}` with `mode: shared`)")]
    SharedAlgorithm {
        /// The preview.
        preview: String,
        /// The shared key's algorithm.
        shared: String,
        /// The spec's.
        wanted: String,
        /// The active previews signing with it.
        users: String,
    },
    /// A shared-mode preview is rotated by leaving the shared credential.
    #[error("preview {0} uses the shared credential (mode: shared); move it to its own keys with `pvid migrate {0} --to per-service`")]
    SharedRotation(String),
    /// A migration was asked of a preview already on per-service keys.
    #[error("preview {0} already has per-service keys")]
    AlreadyPerService(String),
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
