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
    /// The master key is gone but sealed secrets remain: a new key could not open them.
    #[error("master key {path} is missing but sealed secrets exist under {secrets}; restore the key file (a new key cannot open them)")]
    MasterKeyMissing {
        /// The expected key file.
        path: PathBuf,
        /// The secrets folder.
        secrets: PathBuf,
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
    /// An OpenBao request failed (the error names the address and the operation).
    #[cfg(feature = "openbao")]
    #[error(transparent)]
    OpenBao(#[from] pvid_bao::BaoError),
    /// A secret or Transit key is still readable after it was deleted.
    #[error("secret store {store}: {what} is still present after deletion")]
    StillPresent {
        /// Store location.
        store: String,
        /// The path or key name.
        what: String,
    },
    /// The store has no Transit custody (the local store), but the preview asks for it.
    #[error("key custody `transit` needs the openbao secret store (--secrets openbao); this one is {0}")]
    NoTransit(&'static str),
    /// A Transit key exists with another type than the preview's algorithm needs.
    #[error("transit key {name} exists with type {found}, expected {expected}; delete it or tear the preview down first")]
    TransitKeyType {
        /// Key name.
        name: String,
        /// Its type.
        found: String,
        /// The type the algorithm needs.
        expected: String,
    },
    /// A Transit key's public key is unusable.
    #[error("transit key {name}: {reason}")]
    TransitPublicKey {
        /// Key name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (a server down, sealed or slow).
    pub fn is_retryable(&self) -> bool {
        match self {
            #[cfg(feature = "openbao")]
            StoreError::OpenBao(e) => e.is_retryable(),
            StoreError::Query { .. } => true,
            _ => false,
        }
    }
}
