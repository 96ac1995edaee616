//! The state store: previews, their services and public keys, and the evidence trail. Private
//! keys never come here.
//!
//! Two backends behind one query layer (sqlx's `Any` driver; every query is written once, with
//! `$n` placeholders both understand): a SQLite file (WAL mode) for one machine, PostgreSQL for
//! several control-plane replicas. Each backend has its own migration list (`migrations.rs`),
//! applied at open. What differs is serialisation:
//!
//! - **per-preview operations** (provision, teardown) hold a [`PreviewLock`]
//!   ([`StateStore::lock_preview`]): an advisory lock on PostgreSQL, a lock file on SQLite;
//! - **the evidence chain** needs one writer at a time: `BEGIN IMMEDIATE` on SQLite, a
//!   transaction-level advisory lock on PostgreSQL.
//!
//! Every change a sidecar must see bumps the preview's `version` (the registry version and ETag),
//! and is announced on [`StateStore::changes`] to waiters in this process.

use pvid_core::{Jwk, PreviewConfig, PreviewId, PreviewState, ServiceName};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

use crate::error::StoreError;
use crate::evidence::{EvidenceEntry, GENESIS_HASH, entry_hash};
use crate::lock::{LockSource, PreviewLock, advisory_key};
use crate::migrations;

/// Connections of the work pool (PostgreSQL); SQLite uses fewer, it has one writer anyway.
const PG_MAX_CONNECTIONS: u32 = 16;
/// Connections that may hold per-preview locks at once (PostgreSQL).
const PG_MAX_LOCK_CONNECTIONS: u32 = 32;
/// How long an operation waits for a connection (or a lock connection) before failing.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which database holds the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// A SQLite file: one machine.
    Sqlite,
    /// PostgreSQL: several control-plane replicas.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// State of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Recorded before its private half is written to the secret store; not yet published.
    Pending,
    /// The new key of a rotation: published (verifiers accept it) but not yet used to sign.
    Next,
    /// Published and used for signing.
    Active,
    /// Replaced by a rotation: still published until its `retire_at`, no longer used to sign.
    Retiring,
    /// Revoked: published only in the registry's revoked list.
    Revoked,
}

impl KeyState {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retiring => "retiring",
            KeyState::Revoked => "revoked",
        }
    }
}

impl FromStr for KeyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(KeyState::Pending),
            "next" => Ok(KeyState::Next),
            "active" => Ok(KeyState::Active),
            "retiring" => Ok(KeyState::Retiring),
            "revoked" => Ok(KeyState::Revoked),
            _ => Err(format!("unknown key state `{s}`")),
        }
    }
}

/// A preview as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRecord {
    /// Id.
    pub id: PreviewId,
    /// Lifecycle state.
    pub state: PreviewState,
    /// Registry version; bumped on every change sidecars must see.
    pub version: u64,
    /// The spec as stored.
    pub config: PreviewConfig,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// When the TTL runs out (Unix seconds), if the spec set one.
    pub expires_at: Option<i64>,
}

/// A key's public half and lifecycle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Key id.
    pub kid: String,
    /// Its preview.
    pub preview_id: PreviewId,
    /// Its service.
    pub service: ServiceName,
    /// State.
    pub state: KeyState,
    /// Public JWK.
    pub jwk: Jwk,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once revoked.
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
    /// When a rotated-out key stops being accepted (Unix seconds); set in state `retiring`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<i64>,
}

impl KeyRecord {
    /// The row of a key just made, before its private half is stored (`pending`).
    pub fn pending(preview_id: &PreviewId, service: &ServiceName, key: &pvid_core::SigningKey) -> KeyRecord {
        KeyRecord::pending_public(preview_id, service, key.kid().to_owned(), key.public_jwk())
    }

    /// The row of a key whose private half lives elsewhere (a Transit key version), `pending`.
    pub fn pending_public(preview_id: &PreviewId, service: &ServiceName, kid: String, jwk: Jwk) -> KeyRecord {
        KeyRecord {
            kid,
            preview_id: preview_id.clone(),
            service: service.clone(),
            state: KeyState::Pending,
            jwk,
            created_at: unix_now(),
            revoked_at: None,
            revoke_reason: None,
            retire_at: None,
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn unix_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn q(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}

fn corrupt(what: &'static str) -> impl Fn(String) -> StoreError {
    move |detail| StoreError::Corrupt { what, detail }
}


/// Percent-encodes a file path for a `sqlite://` URL.
fn sqlite_url(path: &Path) -> String {
    let mut out = String::from("sqlite://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"/._~-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str("?mode=rwc");
    out
}

/// A database URL with any password replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The state store.
#[derive(Clone, Debug)]
pub struct StateStore {
    pool: AnyPool,
    backend: Backend,
    locks: LockSource,
    /// Bumped after every change that moves a preview's version, in this process.
    changes: Arc<watch::Sender<u64>>,
    /// Where the data lives, for messages (passwords redacted).
    location: String,
}

impl StateStore {
    /// Opens (creating if needed) a SQLite state file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<StateStore, StoreError> {
        sqlx::any::install_default_drivers();
        let open_err = |source| StoreError::OpenState { path: path.to_owned(), source };
        let opts = AnyConnectOptions::from_str(&sqlite_url(path)).map_err(open_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    sqlx::raw_sql("PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA journal_mode = WAL;")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(open_err)?;
        let mut lock_dir = path.as_os_str().to_owned();
        lock_dir.push(".locks");
        let store = StateStore {
            pool,
            backend: Backend::Sqlite,
            locks: LockSource::Files(PathBuf::from(lock_dir)),
            changes: Arc::new(watch::channel(0).0),
            location: path.display().to_string(),
        };
        store.migrate().await.map_err(open_err)?;
        Ok(store)
    }

    /// Connects to a state store by URL: `postgres://…` / `postgresql://…` (several replicas may
    /// share it), or `sqlite://PATH` / a plain file path. Applies pending migrations.
    pub async fn connect(url: &str) -> Result<StateStore, StoreError> {
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            return StateStore::open(Path::new(path.split('?').next().unwrap_or(path))).await;
        }
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return StateStore::open(Path::new(url)).await;
        }
        sqlx::any::install_default_drivers();
        let location = redact_url(url);
        let open_err = |source| StoreError::OpenDatabase { url: location.clone(), source };
        let pool = AnyPoolOptions::new()
            .max_connections(PG_MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(open_err)?;
        let lock_pool = AnyPoolOptions::new()
            .max_connections(PG_MAX_LOCK_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy(url)
            .map_err(open_err)?;
        let store = StateStore {
            pool,
            backend: Backend::Postgres,
            locks: LockSource::Postgres(lock_pool),
            changes: Arc::new(watch::channel(0).0),
            location: location.clone(),
        };
        store.migrate().await.map_err(open_err)?;
        Ok(store)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where the state lives (file path, or URL with the password redacted).
    pub fn location(&self) -> &str {
        &self.location
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let list = match self.backend {
            Backend::Sqlite => migrations::SQLITE,
            Backend::Postgres => migrations::POSTGRES,
        };
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // Replicas starting together: one migrates, the others wait and then find it done.
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(advisory_key("pvid:migrate"))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)").execute(&mut *tx).await?;
        let current: i64 = sqlx::query_scalar("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?;
        for (i, sql) in list.iter().enumerate().skip(current as usize) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(i as i64 + 1).execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// The schema version in force.
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) FROM schema_version")
            .fetch_one(&self.pool)
            .await
            .map_err(q("read schema version"))
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(q("ping"))?;
        Ok(())
    }

    /// Serialises operations on one preview across every process sharing this store. Hold the
    /// returned lock for the whole operation and [`PreviewLock::release`] it at the end.
    pub async fn lock_preview(&self, id: &PreviewId) -> Result<PreviewLock, StoreError> {
        self.locks.lock(id).await
    }

    /// A receiver that sees a new value after every change this process makes to any preview's
    /// version. Changes made by other processes are not announced: waiters also poll.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn announce(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    // === previews ===

    /// One preview.
    pub async fn preview(&self, id: &PreviewId) -> Result<Option<PreviewRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM previews WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read preview"))?;
        row.map(|r| preview_from_row(&r)).transpose()
    }

    /// A preview's registry version (cheap: for long-polling watchers).
    pub async fn preview_version(&self, id: &PreviewId) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT version FROM previews WHERE id = $1")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(q("read preview version"))?;
        Ok(v.map(|v| v as u64))
    }

    /// Every preview, by id.
    pub async fn previews(&self) -> Result<Vec<PreviewRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM previews ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list previews"))?;
        rows.iter().map(preview_from_row).collect()
    }

    /// Active previews whose TTL ran out at or before `now` (Unix seconds), oldest first.
    pub async fn expired_previews(&self, now: i64) -> Result<Vec<PreviewId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM previews WHERE state = 'active' AND expires_at IS NOT NULL AND expires_at <= $1
             ORDER BY expires_at, id",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(q("list expired previews"))?;
        ids.into_iter().map(|s| s.parse().map_err(corrupt("preview id"))).collect()
    }

    /// Creates a preview in state `provisioning`, or moves an existing one back to it with a new
    /// config. Returns the new version.
    pub async fn begin_provision(&self, id: &PreviewId, config: &PreviewConfig) -> Result<u64, StoreError> {
        let now = unix_now();
        let cfg = serde_json::to_string(config).map_err(|e| corrupt("config")(e.to_string()))?;
        let expires = config.ttl_s.map(|t| now + t as i64);
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO previews (id, state, version, config, created_at, updated_at, expires_at)
             VALUES ($1, 'provisioning', 1, $2, $3, $3, $4)
             ON CONFLICT(id) DO UPDATE SET state = 'provisioning', version = previews.version + 1,
                 config = excluded.config, updated_at = excluded.updated_at, expires_at = excluded.expires_at
             RETURNING version",
        )
        .bind(id.as_str())
        .bind(cfg)
        .bind(now)
        .bind(expires)
        .fetch_one(&self.pool)
        .await
        .map_err(q("create preview"))?;
        self.announce();
        Ok(version as u64)
    }

    /// Replaces a preview's stored config (a migration between credential modes) and bumps its
    /// version.
    pub async fn set_config(&self, id: &PreviewId, config: &PreviewConfig) -> Result<u64, StoreError> {
        let cfg = serde_json::to_string(config).map_err(|e| corrupt("config")(e.to_string()))?;
        let version: i64 = sqlx::query_scalar(
            "UPDATE previews SET config = $2, version = version + 1, updated_at = $3 WHERE id = $1 RETURNING version",
        )
        .bind(id.as_str())
        .bind(cfg)
        .bind(unix_now())
        .fetch_one(&self.pool)
        .await
        .map_err(q("update preview config"))?;
        self.announce();
        Ok(version as u64)
    }

    /// Sets a preview's state and bumps its version. Returns the new version.
    pub async fn set_state(&self, id: &PreviewId, state: PreviewState) -> Result<u64, StoreError> {
        let version: i64 = sqlx::query_scalar(
            "UPDATE previews SET state = $2, version = version + 1, updated_at = $3 WHERE id = $1 RETURNING version",
        )
        .bind(id.as_str())
        .bind(state.as_str())
        .bind(unix_now())
        .fetch_one(&self.pool)
        .await
        .map_err(q("update preview state"))?;
        self.announce();
        Ok(version as u64)
    }

    /// Deletes a preview that never became active, with its keys (rollback of a failed provision).
    pub async fn delete_preview(&self, id: &PreviewId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        sqlx::query("DELETE FROM keys WHERE preview_id = $1").bind(id.as_str()).execute(&mut *tx).await.map_err(q("delete keys"))?;
        sqlx::query("DELETE FROM previews WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await.map_err(q("delete preview"))?;
        tx.commit().await.map_err(q("commit"))?;
        self.announce();
        Ok(())
    }

    // === keys ===

    /// Keys of one preview, oldest first.
    pub async fn keys(&self, preview: &PreviewId) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keys WHERE preview_id = $1 ORDER BY created_at, kid")
            .bind(preview.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(q("list keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    /// Every key that is not revoked, across previews (orphan audit).
    pub async fn unrevoked_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM keys WHERE state != 'revoked' ORDER BY preview_id, kid")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list keys"))?;
        rows.iter().map(key_from_row).collect()
    }

    /// Runs one key statement and, when it changed a row, bumps the version of the key's preview
    /// in the same transaction: the registry version moves with every key change.
    async fn key_change<'q>(
        &self,
        operation: &'static str,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
        kid: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(q(operation))?;
        let changed = query.execute(&mut *tx).await.map_err(q(operation))?.rows_affected() > 0;
        if changed {
            sqlx::query(
                "UPDATE previews SET version = version + 1, updated_at = $2
                 WHERE id = (SELECT preview_id FROM keys WHERE kid = $1)",
            )
            .bind(kid.to_owned())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(q(operation))?;
        }
        tx.commit().await.map_err(q(operation))?;
        if changed {
            self.announce();
        }
        Ok(changed)
    }

    /// Records a new key (normally `Pending`, before its secret is written).
    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.insert_keys(std::slice::from_ref(key)).await
    }

    /// Records new keys of one preview in one transaction (one commit, one version step):
    /// provisioning writes every service's pending row before any secret.
    pub async fn insert_keys(&self, keys: &[KeyRecord]) -> Result<(), StoreError> {
        let Some(first) = keys.first() else { return Ok(()) };
        let mut tx = self.pool.begin().await.map_err(q("insert key"))?;
        for key in keys {
            let jwk = serde_json::to_string(&key.jwk).map_err(|e| corrupt("jwk")(e.to_string()))?;
            sqlx::query(
                "INSERT INTO keys (kid, preview_id, service, state, jwk, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.kid)
            .bind(key.preview_id.as_str())
            .bind(key.service.as_str())
            .bind(key.state.as_str())
            .bind(jwk)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(q("insert key"))?;
        }
        sqlx::query("UPDATE previews SET version = version + 1, updated_at = $2 WHERE id = $1")
            .bind(first.preview_id.as_str())
            .bind(unix_now())
            .execute(&mut *tx)
            .await
            .map_err(q("insert key"))?;
        tx.commit().await.map_err(q("insert key"))?;
        self.announce();
        Ok(())
    }

    /// Marks pending keys of one preview active, in one transaction (one version step).
    pub async fn activate_keys(&self, preview: &PreviewId, kids: &[String]) -> Result<(), StoreError> {
        if kids.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(q("activate key"))?;
        let mut changed = false;
        for kid in kids {
            let done = sqlx::query("UPDATE keys SET state = 'active' WHERE kid = $1 AND preview_id = $2 AND state = 'pending'")
                .bind(kid.clone())
                .bind(preview.as_str())
                .execute(&mut *tx)
                .await
                .map_err(q("activate key"))?;
            changed |= done.rows_affected() > 0;
        }
        if changed {
            sqlx::query("UPDATE previews SET version = version + 1, updated_at = $2 WHERE id = $1")
                .bind(preview.as_str())
                .bind(unix_now())
                .execute(&mut *tx)
                .await
                .map_err(q("activate key"))?;
        }
        tx.commit().await.map_err(q("activate key"))?;
        if changed {
            self.announce();
        }
        Ok(())
    }

    /// Marks a pending key active.
    pub async fn activate_key(&self, kid: &str) -> Result<(), StoreError> {
        let query = sqlx::query("UPDATE keys SET state = 'active' WHERE kid = $1 AND state = 'pending'").bind(kid.to_owned());
        self.key_change("activate key", query, kid, unix_now()).await.map(drop)
    }

    /// Publishes the pending new key of a rotation (`pending → next`).
    pub async fn publish_next_key(&self, kid: &str) -> Result<(), StoreError> {
        let query = sqlx::query("UPDATE keys SET state = 'next' WHERE kid = $1 AND state = 'pending'").bind(kid.to_owned());
        self.key_change("publish next key", query, kid, unix_now()).await.map(drop)
    }

    /// Switches a service's signing key in one transaction (one version step): `next` becomes
    /// `active`, and the old active key becomes `retiring` until `retire_at`, or is revoked at
    /// once with `revoke_reason` when that is given (an emergency rotation). Idempotent.
    pub async fn switch_signing_key(
        &self,
        preview: &PreviewId,
        old_kid: &str,
        new_kid: &str,
        retire_at: i64,
        revoke_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = unix_now();
        let mut tx = self.pool.begin().await.map_err(q("switch signing key"))?;
        let promoted = sqlx::query("UPDATE keys SET state = 'active' WHERE kid = $1 AND preview_id = $2 AND state IN ('next', 'pending')")
            .bind(new_kid.to_owned())
            .bind(preview.as_str())
            .execute(&mut *tx)
            .await
            .map_err(q("switch signing key"))?
            .rows_affected();
        let demoted = match revoke_reason {
            Some(reason) => sqlx::query(
                "UPDATE keys SET state = 'revoked', revoked_at = $3, revoke_reason = $4
                 WHERE kid = $1 AND preview_id = $2 AND state IN ('active', 'retiring')",
            )
            .bind(old_kid.to_owned())
            .bind(preview.as_str())
            .bind(now)
            .bind(reason.to_owned()),
            None => sqlx::query("UPDATE keys SET state = 'retiring', retire_at = $3 WHERE kid = $1 AND preview_id = $2 AND state = 'active'")
                .bind(old_kid.to_owned())
                .bind(preview.as_str())
                .bind(retire_at),
        }
        .execute(&mut *tx)
        .await
        .map_err(q("switch signing key"))?
        .rows_affected();
        let changed = promoted + demoted > 0;
        if changed {
            sqlx::query("UPDATE previews SET version = version + 1, updated_at = $2 WHERE id = $1")
                .bind(preview.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(q("switch signing key"))?;
        }
        tx.commit().await.map_err(q("switch signing key"))?;
        if changed {
            self.announce();
        }
        Ok(())
    }

    /// Revokes a key (idempotent: the first revocation time and reason are kept).
    pub async fn revoke_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        let now = unix_now();
        let query = sqlx::query(
            "UPDATE keys SET state = 'revoked', revoked_at = $2, revoke_reason = $3 WHERE kid = $1 AND state != 'revoked'",
        )
        .bind(kid.to_owned())
        .bind(now)
        .bind(reason.to_owned());
        self.key_change("revoke key", query, kid, now).await.map(drop)
    }

    /// Forgets a key that was never published (rollback of a pending key).
    pub async fn delete_pending_key(&self, kid: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("delete pending key"))?;
        let preview: Option<String> = sqlx::query_scalar("SELECT preview_id FROM keys WHERE kid = $1 AND state = 'pending'")
            .bind(kid)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("delete pending key"))?;
        if let Some(preview) = &preview {
            sqlx::query("DELETE FROM keys WHERE kid = $1 AND state = 'pending'")
                .bind(kid)
                .execute(&mut *tx)
                .await
                .map_err(q("delete pending key"))?;
            sqlx::query("UPDATE previews SET version = version + 1, updated_at = $2 WHERE id = $1")
                .bind(preview)
                .bind(unix_now())
                .execute(&mut *tx)
                .await
                .map_err(q("delete pending key"))?;
        }
        tx.commit().await.map_err(q("delete pending key"))?;
        if preview.is_some() {
            self.announce();
        }
        Ok(())
    }

    // === evidence ===

    /// Appends an entry to the hash-chained evidence trail. One writer at a time, across every
    /// process sharing the store, so two writers cannot fork the chain.
    pub async fn append_evidence(
        &self,
        preview: &PreviewId,
        event: &str,
        data: serde_json::Value,
    ) -> Result<EvidenceEntry, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                // BEGIN IMMEDIATE takes the write lock up front.
                let mut conn = self.pool.acquire().await.map_err(q("begin evidence"))?;
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(q("begin evidence"))?;
                match append_locked(&mut conn, preview, event, data).await {
                    Ok(entry) => {
                        sqlx::query("COMMIT").execute(&mut *conn).await.map_err(q("commit evidence"))?;
                        Ok(entry)
                    }
                    Err(e) => {
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                        Err(q("append evidence")(e))
                    }
                }
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await.map_err(q("begin evidence"))?;
                // The global serialisation point of the chain; released at commit or rollback.
                sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                    .bind(advisory_key("pvid:evidence"))
                    .execute(&mut *tx)
                    .await
                    .map_err(q("lock evidence"))?;
                let entry = append_locked(&mut tx, preview, event, data).await.map_err(q("append evidence"))?;
                tx.commit().await.map_err(q("commit evidence"))?;
                Ok(entry)
            }
        }
    }

    /// The trail, in order; only one preview's entries when `preview` is given.
    pub async fn evidence(&self, preview: Option<&PreviewId>) -> Result<Vec<EvidenceEntry>, StoreError> {
        let rows = match preview {
            Some(p) => sqlx::query("SELECT * FROM evidence WHERE preview_id = $1 ORDER BY seq").bind(p.as_str()).fetch_all(&self.pool).await,
            None => sqlx::query("SELECT * FROM evidence ORDER BY seq").fetch_all(&self.pool).await,
        }
        .map_err(q("read evidence"))?;
        rows.iter()
            .map(|r| {
                let data: String = r.get("data");
                Ok(EvidenceEntry {
                    seq: r.get("seq"),
                    ts_ms: r.get("ts_ms"),
                    preview_id: r.get("preview_id"),
                    event: r.get("event"),
                    data: serde_json::from_str(&data).map_err(|e| corrupt("evidence")(e.to_string()))?,
                    prev_hash: r.get("prev_hash"),
                    hash: r.get("hash"),
                })
            })
            .collect()
    }

    /// Closes the pools (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
        if let LockSource::Postgres(p) = &self.locks {
            p.close().await;
        }
    }
}

/// Reads the head of the chain and appends one entry; the caller holds the chain's lock.
async fn append_locked(
    conn: &mut sqlx::AnyConnection,
    preview: &PreviewId,
    event: &str,
    data: serde_json::Value,
) -> Result<EvidenceEntry, sqlx::Error> {
    let last: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM evidence ORDER BY seq DESC LIMIT 1").fetch_optional(&mut *conn).await?;
    let (seq, prev_hash) = last.map_or((1, GENESIS_HASH.to_owned()), |(s, h)| (s + 1, h));
    let ts_ms = unix_now_ms();
    let hash = entry_hash(&prev_hash, seq, ts_ms, preview.as_str(), event, &data);
    sqlx::query(
        "INSERT INTO evidence (seq, ts_ms, preview_id, event, data, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(seq)
    .bind(ts_ms)
    .bind(preview.as_str())
    .bind(event)
    .bind(data.to_string())
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(EvidenceEntry { seq, ts_ms, preview_id: preview.to_string(), event: event.to_owned(), data, prev_hash, hash })
}

fn preview_from_row(r: &AnyRow) -> Result<PreviewRecord, StoreError> {
    let id: String = r.get("id");
    let state: String = r.get("state");
    let config: String = r.get("config");
    let version: i64 = r.get("version");
    Ok(PreviewRecord {
        id: id.parse().map_err(corrupt("preview id"))?,
        state: state.parse().map_err(corrupt("preview state"))?,
        version: version as u64,
        config: serde_json::from_str(&config).map_err(|e| corrupt("preview config")(e.to_string()))?,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        expires_at: r.get("expires_at"),
    })
}

fn key_from_row(r: &AnyRow) -> Result<KeyRecord, StoreError> {
    let preview: String = r.get("preview_id");
    let service: String = r.get("service");
    let state: String = r.get("state");
    let jwk: String = r.get("jwk");
    Ok(KeyRecord {
        kid: r.get("kid"),
        preview_id: preview.parse().map_err(corrupt("key preview"))?,
        service: service.parse().map_err(corrupt("key service"))?,
        state: state.parse().map_err(corrupt("key state"))?,
        jwk: serde_json::from_str(&jwk).map_err(|e| corrupt("key jwk")(e.to_string()))?,
        created_at: r.get("created_at"),
        revoked_at: r.get("revoked_at"),
        revoke_reason: r.get("revoke_reason"),
        retire_at: r.get("retire_at"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_escape_what_a_url_would_misread() {
        assert_eq!(sqlite_url(Path::new("/tmp/a b/state.db")), "sqlite:///tmp/a%20b/state.db?mode=rwc");
        assert_eq!(sqlite_url(Path::new("x?#%.db")), "sqlite://x%3F%23%25.db?mode=rwc");
    }

    #[test]
    fn passwords_are_redacted_from_database_urls() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("/tmp/state.db"), "/tmp/state.db");
    }
}
