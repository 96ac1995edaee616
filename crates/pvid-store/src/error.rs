//! Errors of the state and secret stores, named for the operation that failed.

use std::path::PathBuf;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Opening or migrating the state database failed.
    #[error("cannot open state database {path}")]
    OpenState {
        /// The database file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// Connecting to or migrating a state database server failed.
    #[error("cannot open state database {url}")]
    OpenDatabase {
        /// The database URL, password redacted.
        url: String,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// Taking a preview's operation lock failed.
    #[error("cannot lock preview {preview}: {detail}")]
    Lock {
        /// The preview.
        preview: String,
        /// Why.
        detail: String,
    },
    /// A query on the state database failed.
    #[error("state store: {operation} failed")]
    Query {
        /// What was being done.
        operation: &'static str,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// A stored row does not decode (the database was edited or is from a newer pvid).
    #[error("state store: corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// Reading or writing a file of the local secret store failed.
    #[error("secret store: cannot {operation} {path}")]
    SecretIo {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The master key file is readable by others than its owner.
    #[error("master key {path} has mode {mode:o}; it must be 0600 (chmod 600 {path})")]
    MasterKeyMode {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The master key file is not 32 bytes.
    #[error("master key {path} is not a pvid master key (expected 32 bytes)")]
    MasterKeyInvalid {
        /// The file.
        path: PathBuf,
    },
    /// A sealed secret does not decrypt: wrong master key, or the file was altered or moved.
    #[error("secret {path} does not decrypt with this master key (altered, moved, or another PVID_HOME's key)")]
    Unseal {
        /// The secret path.
        path: String,
    },
    /// A secret does not hold a pvid key document.
    #[error("secret {path} is not a pvid key")]
    BadSecret {
        /// The secret path.
        path: String,
    },
    /// A secret path is not of the form `preview/<id>/<svc>/private-key`.
    #[error("not a pvid secret path: {0}")]
    BadPath(String),
    /// Sealing failed (crypto library).
    #[error("secret store: encryption failed")]
    Seal,
}
