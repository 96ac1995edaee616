//! Schema migrations, one list per backend. Both lists describe the same schema and are kept in
//! step: migration N of SQLite and migration N of PostgreSQL make the same change, so a schema
//! version means the same thing on both. Each migration runs once, in a transaction, and is
//! recorded in `schema_version`.

/// SQLite migrations; the index + 1 is the schema version.
pub(crate) const SQLITE: &[&str] = &[
    r#"
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
"#,
    // 2: the TTL reaper looks up expired active previews.
    "CREATE INDEX previews_by_expiry ON previews(state, expires_at);",
    // 3: rotation. A key replaced by a rotation stays live until `retire_at` (Unix seconds).
    "ALTER TABLE keys ADD COLUMN retire_at INTEGER;",
];

/// PostgreSQL migrations; the index + 1 is the schema version. Integers are `BIGINT` so that
/// every column decodes as `i64` on both backends.
pub(crate) const POSTGRES: &[&str] = &[
    r#"
CREATE TABLE previews (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    version     BIGINT NOT NULL,
    config      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE TABLE keys (
    kid           TEXT PRIMARY KEY,
    preview_id    TEXT NOT NULL REFERENCES previews(id),
    service       TEXT NOT NULL,
    state         TEXT NOT NULL,
    jwk           TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT,
    revoke_reason TEXT
);
CREATE INDEX keys_by_preview ON keys(preview_id, service);
CREATE TABLE evidence (
    seq        BIGINT PRIMARY KEY,
    ts_ms      BIGINT NOT NULL,
    preview_id TEXT NOT NULL,
    event      TEXT NOT NULL,
    data       TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);
CREATE INDEX evidence_by_preview ON evidence(preview_id, seq);
"#,
    "CREATE INDEX previews_by_expiry ON previews(state, expires_at);",
    "ALTER TABLE keys ADD COLUMN retire_at BIGINT;",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_have_the_same_number_of_migrations() {
        assert_eq!(SQLITE.len(), POSTGRES.len());
    }
}
