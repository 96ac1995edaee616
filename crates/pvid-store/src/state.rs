//! The state store: previews, their services and public keys, and the evidence trail, in one
//! SQLite file (WAL mode). Private keys never come here.

use pvid_core::{Jwk, PreviewConfig, PreviewId, PreviewState, ServiceName};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::Row;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::StoreError;
use crate::evidence::{EvidenceEntry, GENESIS_HASH, entry_hash};

/// Schema migrations, applied in order once each; the index + 1 is the schema version.
const MIGRATIONS: &[&'static str] = &[r#"
CREATE TABLE previews (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    version     INTEGER NOT NULL,
    config      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE TABLE keys (
    kid           TEXT PRIMARY KEY,
    preview_id    TEXT NOT NULL REFERENCES previews(id),
    service       TEXT NOT NULL,
    state         TEXT NOT NULL,
    jwk           TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    revoke_reason TEXT
);
CREATE INDEX keys_by_preview ON keys(preview_id, service);
CREATE TABLE evidence (
    seq        INTEGER PRIMARY KEY,
    ts_ms      INTEGER NOT NULL,
    preview_id TEXT NOT NULL,
    event      TEXT NOT NULL,
    data       TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX evidence_by_preview ON evidence(preview_id, seq);
"#];

/// State of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Recorded before its private half is written to the secret store; not yet published.
    Pending,
    /// Published and used for signing.
    Active,
    /// Revoked: published only in the registry's revoked list.
    Revoked,
}

impl KeyState {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Active => "active",
            KeyState::Revoked => "revoked",
        }
    }
}

impl FromStr for KeyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pending" => Ok(KeyState::Pending),
            "active" => Ok(KeyState::Active),
            "revoked" => Ok(KeyState::Revoked),
            _ => Err(format!("unknown key state `{s}`")),
        }
    }
}

/// A preview as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The state store.
#[derive(Clone, Debug)]
pub struct StateStore {
    pool: SqlitePool,
}

impl StateStore {
    /// Opens (creating if needed) the SQLite state file and applies pending migrations.
    pub async fn open(path: &Path) -> Result<StateStore, StoreError> {
        let open_err = |source| StoreError::OpenState { path: path.to_owned(), source };
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.map_err(open_err)?;
        let store = StateStore { pool };
        store.migrate().await.map_err(open_err)?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)").execute(&mut *tx).await?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_version")
            .fetch_one(&mut *tx)
            .await?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(i as i64 + 1).execute(&mut *tx).await?;
        }
        tx.commit().await
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

    /// Every preview, by id.
    pub async fn previews(&self) -> Result<Vec<PreviewRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM previews ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(q("list previews"))?;
        rows.iter().map(preview_from_row).collect()
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
        Ok(version as u64)
    }

    /// Deletes a preview that never became active, with its keys (rollback of a failed provision).
    pub async fn delete_preview(&self, id: &PreviewId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(q("begin"))?;
        sqlx::query("DELETE FROM keys WHERE preview_id = $1").bind(id.as_str()).execute(&mut *tx).await.map_err(q("delete keys"))?;
        sqlx::query("DELETE FROM previews WHERE id = $1").bind(id.as_str()).execute(&mut *tx).await.map_err(q("delete preview"))?;
        tx.commit().await.map_err(q("commit"))
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

    /// Records a new key (normally `Pending`, before its secret is written).
    pub async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
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
        .execute(&self.pool)
        .await
        .map_err(q("insert key"))?;
        Ok(())
    }

    /// Marks a pending key active.
    pub async fn activate_key(&self, kid: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE keys SET state = 'active' WHERE kid = $1 AND state = 'pending'")
            .bind(kid)
            .execute(&self.pool)
            .await
            .map_err(q("activate key"))?;
        Ok(())
    }

    /// Revokes a key (idempotent: the first revocation time and reason are kept).
    pub async fn revoke_key(&self, kid: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE keys SET state = 'revoked', revoked_at = $2, revoke_reason = $3 WHERE kid = $1 AND state != 'revoked'",
        )
        .bind(kid)
        .bind(unix_now())
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(q("revoke key"))?;
        Ok(())
    }

    /// Forgets a key that was never published (rollback of a pending key).
    pub async fn delete_pending_key(&self, kid: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM keys WHERE kid = $1 AND state = 'pending'")
            .bind(kid)
            .execute(&self.pool)
            .await
            .map_err(q("delete pending key"))?;
        Ok(())
    }

    // === evidence ===

    /// Appends an entry to the hash-chained evidence trail.
    pub async fn append_evidence(
        &self,
        preview: &PreviewId,
        event: &str,
        data: serde_json::Value,
    ) -> Result<EvidenceEntry, StoreError> {
        // BEGIN IMMEDIATE takes the write lock up front, so two writers cannot fork the chain.
        let mut conn = self.pool.acquire().await.map_err(q("begin evidence"))?;
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.map_err(q("begin evidence"))?;
        let result = async {
            let last: Option<(i64, String)> = sqlx::query_as("SELECT seq, hash FROM evidence ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *conn)
                .await?;
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
            Ok::<_, sqlx::Error>(EvidenceEntry {
                seq,
                ts_ms,
                preview_id: preview.to_string(),
                event: event.to_owned(),
                data,
                prev_hash,
                hash,
            })
        }
        .await;
        match result {
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

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}


fn preview_from_row(r: &SqliteRow) -> Result<PreviewRecord, StoreError> {
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

fn key_from_row(r: &SqliteRow) -> Result<KeyRecord, StoreError> {
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
    })
}
