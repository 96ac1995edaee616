//! Per-preview operation locks: provisioning and teardown of one preview are serialised across
//! every process that shares the state store, so two of them never interleave their steps (two
//! key sets, a revocation lost behind a provision).
//!
//! - **PostgreSQL**: a session-level `pg_advisory_lock` on a key derived from the preview id,
//!   held on a connection of a dedicated pool (so a lock holder never waits for a work
//!   connection held by a lock waiter). If the process dies, PostgreSQL drops the session and
//!   the lock with it.
//! - **SQLite**: an exclusive `flock` on `<db>.locks/<id>.lock`. flock locks belong to the open
//!   file, so the lock serialises threads of one process as well as separate processes; it is
//!   released when the file is closed, also by a crash.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use aws_lc_rs::digest::{SHA256, digest};
use pvid_core::PreviewId;
use sqlx::AnyPool;
use sqlx::pool::PoolConnection;

use crate::error::StoreError;

/// Where locks are taken.
#[derive(Clone, Debug)]
pub(crate) enum LockSource {
    /// One lock file per preview in this folder.
    Files(PathBuf),
    /// Advisory locks on connections of this pool.
    Postgres(AnyPool),
}

/// A held per-preview lock. Call [`PreviewLock::release`]; dropping it also releases it (the
/// PostgreSQL connection is then closed instead of returned to the pool).
#[derive(Debug)]
#[must_use = "the lock is released when dropped"]
pub struct PreviewLock {
    inner: Held,
}

#[derive(Debug)]
enum Held {
    File(#[allow(dead_code)] File),
    Postgres { conn: Option<PoolConnection<sqlx::Any>>, key: i64 },
}

/// The advisory lock key of a name: the first 8 bytes of its SHA-256, the same on every replica.
pub(crate) fn advisory_key(name: &str) -> i64 {
    let d = digest(&SHA256, name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    i64::from_be_bytes(b)
}

impl LockSource {
    pub(crate) async fn lock(&self, preview: &PreviewId) -> Result<PreviewLock, StoreError> {
        match self {
            LockSource::Files(dir) => {
                let path = dir.join(format!("{preview}.lock"));
                let file = tokio::task::spawn_blocking(move || lock_file(&path))
                    .await
                    .map_err(|e| StoreError::Lock { preview: preview.to_string(), detail: e.to_string() })?
                    .map_err(|e| StoreError::Lock { preview: preview.to_string(), detail: e.to_string() })?;
                Ok(PreviewLock { inner: Held::File(file) })
            }
            LockSource::Postgres(pool) => {
                let key = advisory_key(&format!("pvid:preview:{preview}"));
                let mut conn = pool.acquire().await.map_err(|source| StoreError::Query { operation: "lock preview", source })?;
                sqlx::query("SELECT 1 FROM pg_advisory_lock($1)")
                    .bind(key)
                    .execute(&mut *conn)
                    .await
                    .map_err(|source| StoreError::Query { operation: "lock preview", source })?;
                Ok(PreviewLock { inner: Held::Postgres { conn: Some(conn), key } })
            }
        }
    }
}

fn lock_file(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    file.lock()?;
    Ok(file)
}

impl PreviewLock {
    /// Releases the lock.
    pub async fn release(mut self) {
        if let Held::Postgres { conn, key } = &mut self.inner
            && let Some(mut c) = conn.take()
        {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(*key).execute(&mut *c).await;
            if unlocked.is_err() {
                // Closing the session is the other way to release a session lock.
                let _ = c.close().await;
            }
        }
    }
}

impl Drop for PreviewLock {
    fn drop(&mut self) {
        if let Held::Postgres { conn, .. } = &mut self.inner
            && let Some(c) = conn.take()
        {
            // Not released through `release` (an error path or a cancelled future): close the
            // session, so PostgreSQL drops the lock, rather than pool a connection that holds it.
            drop(c.detach());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisory_keys_are_stable_and_distinct() {
        assert_eq!(advisory_key("pvid:preview:pr-1"), advisory_key("pvid:preview:pr-1"));
        assert_ne!(advisory_key("pvid:preview:pr-1"), advisory_key("pvid:preview:pr-2"));
    }
}
