//! Registry and JWKS reads, and the registry watch protocol sidecars use.
//!
//! `GET /v1/previews/{id}/registry.json` answers the registry with `ETag: "<version>"`. With
//! `If-None-Match: "<version>"` it answers `304 Not Modified` while the version is the same; with
//! `?wait=30s` as well, it holds the request until the version moves (then `200` with the new
//! registry) or the wait runs out (then `304`). A change made through this replica wakes waiters
//! at once; changes made through other replicas are seen by re-reading the version every
//! [`crate::Settings::watch_poll`]. Sidecars loop on it, so a revocation reaches them within that
//! poll interval plus one round trip.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;

use crate::AppState;
use crate::auth::RegistryReader;
use crate::error::ApiError;
use crate::observe::empty;
use crate::previews::preview_id;

/// `?wait=` of a registry read.
#[derive(Debug, Deserialize)]
pub(crate) struct WatchQuery {
    wait: Option<String>,
}

/// The ETag of a registry version.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The version named by an `If-None-Match` value (`"7"`, `W/"7"`); `None` for anything else.
pub fn parse_if_none_match(v: &str) -> Option<u64> {
    let v = v.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    v.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

/// `GET /v1/previews/{id}/jwks.json`.
pub(crate) async fn jwks(_: RegistryReader, State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = preview_id(&id)?;
    let reg = s.control.registry(&id).await?;
    let mut resp = Json(&reg.jwks).into_response();
    set_etag(&mut resp, reg.version);
    Ok(resp)
}

/// `GET /v1/previews/{id}/registry.json[?wait=30s]` with optional `If-None-Match`.
pub(crate) async fn registry(
    _: RegistryReader,
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<WatchQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = preview_id(&id)?;
    let known = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).and_then(parse_if_none_match);
    let wait = match &q.wait {
        Some(w) => pvid_core::duration::parse_duration(w).map_err(|e| ApiError::bad_request(format!("wait: {e}")))?,
        None => Duration::ZERO,
    }
    .min(s.settings.max_wait);
    let deadline = tokio::time::Instant::now() + wait;
    let store = s.control.state();
    let mut changes = store.changes();
    loop {
        changes.borrow_and_update();
        let version = store.preview_version(&id).await?.ok_or_else(|| ApiError::not_found(format!("preview {id} does not exist")))?;
        let now = tokio::time::Instant::now();
        if known != Some(version) || now >= deadline {
            if known == Some(version) {
                return Ok(not_modified(version));
            }
            let reg = s.control.registry(&id).await?;
            if known == Some(reg.version) {
                return Ok(not_modified(reg.version));
            }
            let mut resp = Json(&reg).into_response();
            set_etag(&mut resp, reg.version);
            return Ok(resp);
        }
        let next_poll = (now + s.settings.watch_poll).min(deadline);
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep_until(next_poll) => {}
        }
    }
}

fn set_etag(resp: &mut Response, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

fn not_modified(version: u64) -> Response {
    let mut resp = (StatusCode::NOT_MODIFIED, empty()).into_response();
    set_etag(&mut resp, version);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_names_a_version_in_quotes() {
        assert_eq!(parse_if_none_match("\"7\""), Some(7));
        assert_eq!(parse_if_none_match("W/\"12\""), Some(12));
        assert_eq!(parse_if_none_match("7"), None);
        assert_eq!(parse_if_none_match("\"x\""), None);
        assert_eq!(etag(7), "\"7\"");
    }
}
