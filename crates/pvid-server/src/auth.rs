//! Authentication of the API itself: one admin token.
//!
//! The token is created at the control plane's first start (32 random bytes, base64url, prefix
//! `pvid_adm_`) in a 0600 file; replicas sharing a home share it. The server keeps only its
//! SHA-256 and compares the SHA-256 of what a caller presents in constant time, so neither the
//! content nor the length of the token leaks through timing. Every mutating or secret-revealing
//! call needs it ([`Admin`]); registry and JWKS reads need it only when the server was started
//! with `protect_registry` ([`RegistryReader`]). A failed attempt is logged (`api.auth_failed`,
//! with the request id, never the presented value) and counted.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::FromRequestParts;
use http::request::Parts;
use serde_json::json;

use crate::AppState;
use crate::error::ApiError;
use crate::observe::{RequestId, log_line, now_rfc3339};

/// Prefix of admin tokens (recognisable in a leaked-secret scan).
pub const TOKEN_PREFIX: &str = "pvid_adm_";

/// Why an admin token file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminTokenError {
    /// Reading or creating the file failed.
    #[error("cannot {operation} admin token file {}", path.display())]
    Io {
        /// What was being done.
        operation: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is readable by others than its owner.
    #[error("admin token file {} has mode {mode:o}; it must be 0600 (chmod 600 {})", path.display(), path.display())]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file holds no token.
    #[error("admin token file {} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The admin token, as the server holds it: only its digest.
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, b).as_ref());
    out
}

impl AdminToken {
    /// A token from its value.
    pub fn from_value(value: &str) -> AdminToken {
        AdminToken { digest: sha256(value.trim().as_bytes()) }
    }

    /// Reads the token file, creating it (0600, fresh random token) when it does not exist.
    /// Returns the token and whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(AdminToken, bool), AdminTokenError> {
        let io = |operation| move |source| AdminTokenError::Io { operation, path: path.to_owned(), source };
        let created = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(mut f) => {
                let value = format!("{TOKEN_PREFIX}{}", pvid_core::jose::b64_encode(&pvid_core::key::random_bytes(32)));
                f.write_all(value.as_bytes()).and_then(|()| f.write_all(b"\n")).and_then(|()| f.sync_all()).map_err(io("write"))?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io("create")(e)),
        };
        let mode = std::fs::metadata(path).map_err(io("read"))?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AdminTokenError::Mode { path: path.to_owned(), mode });
        }
        let value = std::fs::read_to_string(path).map_err(io("read"))?;
        if value.trim().is_empty() {
            return Err(AdminTokenError::Empty { path: path.to_owned() });
        }
        Ok((AdminToken::from_value(&value), created))
    }

    /// Whether `presented` is the token (constant time over the digests).
    pub fn matches(&self, presented: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&sha256(presented.as_bytes()), &self.digest).is_ok()
    }
}

/// Checks the `Authorization: Bearer` header of a request against the admin token; logs and
/// counts a failure.
fn check(state: &AppState, parts: &Parts) -> Result<(), ApiError> {
    let values: Vec<_> = parts.headers.get_all(http::header::AUTHORIZATION).iter().collect();
    let presented = match values.as_slice() {
        [one] => one.to_str().ok().and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        }),
        _ => None,
    };
    let reason = match presented {
        Some(t) if state.admin.matches(t) => return Ok(()),
        Some(_) => "bad_token",
        None if values.is_empty() => "missing_token",
        None => "malformed_authorization",
    };
    state.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
    let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
    log_line(json!({
        "ts": now_rfc3339(), "event": "api.auth_failed", "request_id": request_id, "reason": reason,
        "method": parts.method.as_str(), "path": parts.uri.path(),
    }));
    Err(ApiError::unauthorized())
}

/// Extractor: the request carries the admin token (else 401, before the body is read).
#[derive(Debug)]
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Admin, ApiError> {
        check(state, parts).map(|()| Admin)
    }
}

/// Extractor: may read registries and JWKS (always, unless the server protects them).
#[derive(Debug)]
pub struct RegistryReader;

impl FromRequestParts<Arc<AppState>> for RegistryReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<RegistryReader, ApiError> {
        if state.protect_registry {
            check(state, parts)?;
        }
        Ok(RegistryReader)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_token_file_is_0600_and_reads_back_the_same_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let (a, created) = AdminToken::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let value = std::fs::read_to_string(&path).unwrap();
        assert!(value.starts_with(TOKEN_PREFIX));
        assert!(a.matches(value.trim()));
        let (b, created) = AdminToken::load_or_create(&path).unwrap();
        assert!(!created);
        assert!(b.matches(value.trim()));
        assert!(!b.matches("pvid_adm_wrong"));
        assert!(!b.matches(""));
    }

    #[test]
    fn a_token_file_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, "x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(AdminToken::load_or_create(&path), Err(AdminTokenError::Mode { mode: 0o644, .. })));
    }
}
