//! pvid-server: the control plane's HTTP API (axum), for CI systems that create and destroy
//! previews, and for sidecars that watch their preview's registry.
//!
//! - [`router`] builds the `/v1` API over an [`AppState`] (a [`Control`] over the shared state
//!   store, the admin token, settings); [`openapi`] describes every route.
//! - Provision, teardown and audit are [`Control`]'s, the same code the CLI runs; several replicas
//!   on one PostgreSQL serialise per preview through the store's operation locks.
//! - `GET /v1/previews/{id}/registry.json` answers with an `ETag` (the registry version) and, with
//!   `If-None-Match` and `?wait=30s`, long-polls until the version moves ([`registry`]).
//! - [`reaper`] tears down previews whose TTL ran out, with the same teardown as `pvid down`,
//!   and runs scheduled rotation (`rotation_period` in the spec).
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
    /// Provisions through this replica, by outcome: created, resumed, already_active, failed.
    pub provisions: [AtomicU64; 4],
    /// Teardowns through this replica (API and reaper), by outcome: torn_down,
    /// already_torn_down, failed.
    pub teardowns: [AtomicU64; 3],
    /// Orphans found by audits through this replica (each audit counts what it saw).
    pub orphans_found: AtomicU64,
    /// Orphans removed by sweeps through this replica.
    pub orphans_swept: AtomicU64,
}

impl Metrics {
    /// Counts one teardown by its outcome.
    pub fn count_teardown<E>(&self, outcome: &Result<pvid_control::TeardownOutcome, E>) {
        let index = match outcome {
            Ok(pvid_control::TeardownOutcome::TornDown) => 0,
            Ok(pvid_control::TeardownOutcome::AlreadyTornDown) => 1,
            Err(_) => 2,
        };
        self.teardowns[index].fetch_add(1, Ordering::Relaxed);
    }
}

/// Label values of [`Metrics::provisions`], in index order.
pub const PROVISION_OUTCOMES: [&str; 4] = ["created", "resumed", "already_active", "failed"];
/// Label values of [`Metrics::teardowns`], in index order.
pub const TEARDOWN_OUTCOMES: [&str; 3] = ["torn_down", "already_torn_down", "failed"];

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
    /// Scheduled rotation: how long a new key is published before services sign with it.
    pub rotation_publish_delay: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            protect_registry: false,
            max_wait: Duration::from_secs(60),
            watch_poll: Duration::from_millis(100),
            replica: "pvid".into(),
            rotation_publish_delay: Duration::from_secs(5),
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

async fn metrics(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    use std::fmt::Write as _;
    let m = &s.metrics;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    // Previews by state come from the shared store, so every replica reports the same gauge.
    let mut by_state = std::collections::BTreeMap::<String, u64>::new();
    for state in ["provisioning", "active", "tearing_down", "torn_down"] {
        by_state.insert(state.to_owned(), 0);
    }
    for p in s.control.state().previews().await? {
        *by_state.entry(p.state.to_string()).or_default() += 1;
    }
    let mut body = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(body, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(body, "{name}{labels} {v}");
        }
    };
    family("pvid_api_auth_failures_total", "counter", "API calls refused for a missing or wrong admin token.", vec![(String::new(), load(&m.auth_failures))]);
    family("pvid_reaped_total", "counter", "Previews torn down by this replica's TTL reaper.", vec![(String::new(), load(&m.reaped))]);
    family(
        "pvid_previews",
        "gauge",
        "Previews in the state store, by state.",
        by_state.into_iter().map(|(st, n)| (format!("{{state=\"{st}\"}}"), n)).collect(),
    );
    family(
        "pvid_provisions_total",
        "counter",
        "Provisions through this replica, by outcome.",
        PROVISION_OUTCOMES.iter().zip(&m.provisions).map(|(o, c)| (format!("{{outcome=\"{o}\"}}"), load(c))).collect(),
    );
    family(
        "pvid_teardowns_total",
        "counter",
        "Teardowns through this replica (API and reaper), by outcome.",
        TEARDOWN_OUTCOMES.iter().zip(&m.teardowns).map(|(o, c)| (format!("{{outcome=\"{o}\"}}"), load(c))).collect(),
    );
    family("pvid_orphans_found_total", "counter", "Orphaned secrets and keys seen by audits through this replica.", vec![(String::new(), load(&m.orphans_found))]);
    family("pvid_orphans_swept_total", "counter", "Orphaned secrets and keys removed by sweeps through this replica.", vec![(String::new(), load(&m.orphans_swept))]);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
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
