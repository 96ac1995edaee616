//! Preview lifecycle handlers: create (provision), list, show, tear down, evidence, orphan audit.
//! Each calls [`pvid_control::Control`], the same code as the CLI.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use pvid_control::{ProvisionOutcome, TeardownOutcome};
use pvid_core::{PreviewId, PreviewSpec};
use serde::Deserialize;
use serde_json::json;

use crate::AppState;
use crate::auth::Admin;
use crate::error::ApiError;

/// Largest spec body accepted.
const MAX_SPEC_BYTES: usize = 256 * 1024;

/// Parses a `{id}` path segment.
pub(crate) fn preview_id(raw: &str) -> Result<PreviewId, ApiError> {
    raw.parse().map_err(|e| ApiError::bad_request(format!("preview id `{}`: {e}", raw.escape_debug())))
}

/// `?preview=` on create.
#[derive(Debug, Deserialize)]
pub(crate) struct CreateQuery {
    preview: Option<String>,
}

/// `POST /v1/previews`: provision from a spec (YAML or JSON body).
pub(crate) async fn create(
    _: Admin,
    State(s): State<Arc<AppState>>,
    Query(q): Query<CreateQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    if body.len() > MAX_SPEC_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "spec_too_large", format!("spec over {MAX_SPEC_BYTES} bytes")));
    }
    let text = std::str::from_utf8(&body).map_err(|_| ApiError::bad_request("spec is not UTF-8"))?;
    let spec = PreviewSpec::parse("request body", text)?;
    let id = match q.preview {
        Some(p) => preview_id(&p)?,
        None => spec.preview.clone().ok_or_else(|| {
            ApiError::bad_request("no preview id: set `preview:` in the spec or pass ?preview=ID")
        })?,
    };
    let started = Instant::now();
    let outcome = s.control.provision(&id, &spec.config()).await;
    let index = match &outcome {
        Ok(ProvisionOutcome::Created) => 0,
        Ok(ProvisionOutcome::Resumed) => 1,
        Ok(ProvisionOutcome::AlreadyActive) => 2,
        Err(_) => 3,
    };
    s.metrics.provisions[index].fetch_add(1, Ordering::Relaxed);
    let outcome = outcome?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let registry = s.control.registry(&id).await?;
    let (status, what) = match outcome {
        ProvisionOutcome::Created => (StatusCode::CREATED, "created"),
        ProvisionOutcome::Resumed => (StatusCode::CREATED, "resumed"),
        ProvisionOutcome::AlreadyActive => (StatusCode::OK, "already_active"),
    };
    Ok((status, Json(json!({"preview": id, "outcome": what, "registry": registry, "elapsed_ms": elapsed_ms}))).into_response())
}

/// `GET /v1/previews`.
pub(crate) async fn list(_: Admin, State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let previews = s.control.state().previews().await?;
    Ok(Json(json!({"previews": previews})).into_response())
}

/// `GET /v1/previews/{id}`: the record, its keys (public halves) and its registry.
pub(crate) async fn show(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = preview_id(&id)?;
    let rec = s.control.state().preview(&id).await?.ok_or_else(|| ApiError::not_found(format!("preview {id} does not exist")))?;
    let keys = s.control.state().keys(&id).await?;
    let registry = pvid_control::build_registry(&rec, &keys);
    Ok(Json(json!({"preview": rec, "keys": keys, "registry": registry})).into_response())
}

/// `DELETE /v1/previews/{id}`: teardown. Answers once every key is revoked and every secret is
/// confirmed gone, with the registry version sidecars must reach to refuse.
pub(crate) async fn teardown(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = preview_id(&id)?;
    let outcome = s.control.teardown(&id).await;
    s.metrics.count_teardown(&outcome);
    let outcome = outcome?;
    let version = s.control.state().preview_version(&id).await?;
    let what = match outcome {
        TeardownOutcome::TornDown => "torn_down",
        TeardownOutcome::AlreadyTornDown => "already_torn_down",
    };
    Ok(Json(json!({"preview": id, "outcome": what, "version": version})).into_response())
}

/// `GET /v1/previews/{id}/evidence`.
pub(crate) async fn evidence(_: Admin, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = preview_id(&id)?;
    let entries = s.control.state().evidence(Some(&id)).await?;
    Ok(Json(json!({"entries": entries})).into_response())
}

/// `GET /v1/evidence`: the whole trail, for `pvid audit verify` to check.
pub(crate) async fn all_evidence(_: Admin, State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let entries = s.control.state().evidence(None).await?;
    Ok(Json(json!({"entries": entries})).into_response())
}

/// `GET /v1/audit/orphans`.
pub(crate) async fn orphans(_: Admin, State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let found = s.control.find_orphans().await?;
    s.metrics.orphans_found.fetch_add(found.len() as u64, Ordering::Relaxed);
    Ok(Json(json!({"orphans": found})).into_response())
}

/// `POST /v1/audit/orphans/sweep`.
pub(crate) async fn sweep(_: Admin, State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let found = s.control.find_orphans().await?;
    s.metrics.orphans_found.fetch_add(found.len() as u64, Ordering::Relaxed);
    s.control.sweep(&found, &mut |_| {}).await?;
    let remaining = s.control.find_orphans().await?;
    s.metrics.orphans_swept.fetch_add(found.len().saturating_sub(remaining.len()) as u64, Ordering::Relaxed);
    Ok(Json(json!({"found": found, "remaining": remaining})).into_response())
}
