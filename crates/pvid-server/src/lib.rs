//! pvid-server: the control plane's HTTP API (axum), for CI systems that create and destroy
//! previews, and for sidecars that watch their preview's registry.
//!
//! - [`router`] builds the `/v1` API over an [`AppState`] (a [`Control`] over the shared state
//!   store, the admin token, settings); [`openapi`] describes every route.
//! - Provision, teardown and audit are [`Control`]'s, the same code the CLI runs; several replicas
//!   on one PostgreSQL serialise per preview through the store's operation locks.
//! - `GET /v1/previews/{id}/registry.json` answers with an `ETag` (the registry version) and, with
//!   `If-None-Match` and `?wait=30s`, long-polls until the version moves ([`registry`]).
//! - [`reaper`] tears down previews whose TTL ran out, with the same teardown as `pvid down`.
//!
//! Errors are one type, [`ApiError`], turned into `{code, message, request_id}` in one place.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used)]

pub mod auth;
pub mod error;
mod observe;
pub mod openapi;
mod previews;
pub mod reaper;
pub mod registry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use pvid_control::Control;
use serde_json::json;

pub use auth::{AdminToken, AdminTokenError};
pub use error::ApiError;
pub use observe::{RequestId, X_REQUEST_ID};

/// Counters exposed at `/v1/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Calls refused for a missing or wrong admin token.
    pub auth_failures: AtomicU64,
    /// Previews torn down by this replica's reaper.
    pub reaped: AtomicU64,
}

/// Settings of the API.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Registry and JWKS reads need the admin token too.
    pub protect_registry: bool,
    /// Longest long-poll a watcher may ask for (`?wait=`).
    pub max_wait: Duration,
    /// How often a long-poll re-reads the version from the store, to see changes made by other
    /// replicas (changes made by this one wake it at once).
    pub watch_poll: Duration,
    /// This replica's name (in logs, `/v1/healthz` and reaper evidence).
    pub replica: String,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            protect_registry: false,
            max_wait: Duration::from_secs(60),
            watch_poll: Duration::from_millis(100),
            replica: "pvid".into(),
        }
    }
}

/// What every handler shares.
pub struct AppState {
    /// Lifecycle operations over the stores.
    pub control: Arc<Control>,
    /// The admin token.
    pub admin: AdminToken,
    /// Whether registry reads need the token.
    pub protect_registry: bool,
    /// Settings.
    pub settings: Settings,
    /// Counters.
    pub metrics: Metrics,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl AppState {
    /// State for [`router`].
    pub fn new(control: Arc<Control>, admin: AdminToken, settings: Settings) -> Arc<AppState> {
        Arc::new(AppState {
            control,
            admin,
            protect_registry: settings.protect_registry,
            settings,
            metrics: Metrics::default(),
        })
    }
}

/// The `/v1` API. Every route is listed in [`openapi::ROUTES`] (a test keeps them in step).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/healthz", get(healthz))
        .route("/v1/readyz", get(readyz))
        .route("/v1/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi::serve))
        .route("/v1/previews", get(previews::list).post(previews::create))
        .route("/v1/previews/{id}", get(previews::show).delete(previews::teardown))
        .route("/v1/previews/{id}/jwks.json", get(registry::jwks))
        .route("/v1/previews/{id}/registry.json", get(registry::registry))
        .route("/v1/previews/{id}/evidence", get(previews::evidence))
        .route("/v1/evidence", get(previews::all_evidence))
        .route("/v1/audit/orphans", get(previews::orphans))
        .route("/v1/audit/orphans/sweep", post(previews::sweep))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /v1/openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route; see /v1/openapi.json")
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "replica": s.settings.replica})).into_response()
}

async fn readyz(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let store = s.control.state();
    store.ping().await?;
    let schema = store.schema_version().await?;
    Ok(axum::Json(json!({"status": "ready", "replica": s.settings.replica, "backend": store.backend(), "schema_version": schema}))
        .into_response())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let body = format!(
        "# HELP pvid_api_auth_failures_total API calls refused for a missing or wrong admin token.\n\
         # TYPE pvid_api_auth_failures_total counter\n\
         pvid_api_auth_failures_total {}\n\
         # HELP pvid_reaped_total Previews torn down by this replica's TTL reaper.\n\
         # TYPE pvid_reaped_total counter\n\
         pvid_reaped_total {}\n",
        s.metrics.auth_failures.load(Ordering::Relaxed),
        s.metrics.reaped.load(Ordering::Relaxed),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Serves [`router`] on `listener` until `shutdown` completes, then stops accepting and lets
/// requests in flight finish (a long-poll ends at its wait).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
