//! Test environment: a control plane over a fresh SQLite file or a fresh PostgreSQL database.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use pvid_control::Control;
use pvid_server::{AdminToken, AppState, Settings};
use pvid_store::{LocalSecretStore, StateStore};
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

pub const SPEC: &str = include_str!("../../../../examples/preview.yaml");
pub const TOKEN: &str = "pvid_adm_test-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh database on the test PostgreSQL server; its URL.
pub async fn fresh_pg_database() -> String {
    let admin = std::env::var("PVID_TEST_PG_URL").expect("needs postgres: set PVID_TEST_PG_URL (scripts/test starts one)");
    let name = format!("t_{}", pvid_store::evidence::hex(&pvid_core::key::random_bytes(8)));
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let base = admin.rsplit_once('/').unwrap().0;
    format!("{base}/{name}")
}

pub struct Env {
    /// Kept alive for the test's duration (the secrets and the SQLite file live there).
    #[allow(dead_code)]
    pub home: tempfile::TempDir,
    #[allow(dead_code)]
    pub url: String,
    pub state: Arc<AppState>,
    pub router: Router,
}

pub async fn store(db: Db, home: &Path, url: &mut String) -> StateStore {
    match db {
        Db::Sqlite => {
            if url.is_empty() {
                *url = home.join("state.db").display().to_string();
            }
            StateStore::open(Path::new(url.as_str())).await.unwrap()
        }
        Db::Postgres => {
            if url.is_empty() {
                *url = fresh_pg_database().await;
            }
            StateStore::connect(url).await.unwrap()
        }
    }
}

/// A replica: its own store connection (pool) over the same database and secrets.
pub async fn replica(db: Db, home: &Path, url: &mut String, settings: Settings) -> (Arc<AppState>, Router) {
    let state_store = store(db, home, url).await;
    let secrets = LocalSecretStore::open(home).unwrap();
    let control = Control::new(state_store, Arc::new(secrets), home.to_path_buf());
    let state = AppState::new(Arc::new(control), AdminToken::from_value(TOKEN), settings);
    (state.clone(), pvid_server::router(state))
}

pub async fn env(db: Db) -> Env {
    env_with(db, Settings::default()).await
}

pub async fn env_with(db: Db, settings: Settings) -> Env {
    let home = tempfile::tempdir().unwrap();
    let mut url = String::new();
    let (state, router) = replica(db, home.path(), &mut url, settings).await;
    Env { home, url, state, router }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

/// One request through the router.
pub async fn call(router: &Router, method: &str, path: &str, token: Option<&str>, body: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router.clone().oneshot(req.body(Body::from(body.to_owned())).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into())) };
    Answer { status, headers, body }
}

pub async fn admin(router: &Router, method: &str, path: &str, body: &str) -> Answer {
    call(router, method, path, Some(TOKEN), body, &[]).await
}

/// The spec with another preview id.
pub fn spec_for(id: &str) -> String {
    SPEC.replace("preview: pr-482", &format!("preview: {id}"))
}
