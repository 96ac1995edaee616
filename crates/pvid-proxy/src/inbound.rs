//! Inbound: validate → policy → strip `Authorization` → set `x-pvid-*` → forward to the app.
//!
//! The decision is taken on the registry snapshot in force when the request arrived, and logged
//! (one `auth.validate` line) before anything is sent: to the app on allow, to the caller on deny.
//! A denied request never reaches the app. The token is read only from the `Authorization`
//! headers; the query string is never looked at and never logged.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pvid_core::cache::TokenCache;
use pvid_core::{ReasonCode, Rejection, TokenInfo, Verified};

use crate::headers::{self, X_PVID_CALLER, X_PVID_PREVIEW, X_REQUEST_ID};
use crate::log::{DecisionEvent, DecisionResult, clip_detail, clip_field, rfc3339_millis};
use crate::registry_watch::Snapshot;
use crate::respond::{self, ProxyBody};
use crate::shared::Shared;

/// Longest `Authorization` value looked at; larger ones are `token_too_large` before any parsing
/// (the token limit is 8192 bytes; this leaves room for the scheme and spaces).
pub(crate) const MAX_AUTHORIZATION_BYTES: usize = 8704;

/// What the checks decided.
enum Outcome {
    Allow { verified: Verified, path: String },
    Deny { reason: ReasonCode, detail: String, token: TokenInfo, verified: Option<Verified> },
}

impl From<Rejection> for Outcome {
    fn from(r: Rejection) -> Outcome {
        Outcome::Deny { reason: r.reason, detail: r.detail, token: r.token, verified: None }
    }
}

/// Handles one inbound request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let now = shared.clock.now();
    let request_id = headers::request_id(req.headers());
    if let Some(refused) =
        shared.refuse_if_registry_unavailable("auth.validate", req.method(), req.uri().path(), &request_id).await
    {
        return refused;
    }
    let mut snapshot = shared.registry.load();
    let mut outcome = decide(&shared, &snapshot, &req, now);
    if let Outcome::Deny { reason: ReasonCode::UnknownKid, .. } = &outcome {
        // The key may have been published after the last delivery (a rotation): one refetch,
        // then this request is decided again on what it brought (case C05).
        shared.unknown_kid_seen().await;
        let fresh = shared.registry.load();
        if fresh.registry.version != snapshot.registry.version {
            snapshot = fresh;
            outcome = decide(&shared, &snapshot, &req, now);
        }
    }

    let event = decision_event(&shared, &snapshot, &req, &outcome, &request_id, now, started);
    shared.metrics.decision(event.reason, event.latency_us);
    shared.log.record(&event);
    drop(event);

    match outcome {
        Outcome::Allow { verified, path } => forward(&shared, req, &verified, &path, &request_id).await,
        Outcome::Deny { reason, .. } => respond::deny(reason, &request_id),
    }
}

/// Token, then policy. Runs on one snapshot, so a reload mid-request cannot mix registries.
fn decide(shared: &Shared, snapshot: &Snapshot, req: &Request<Incoming>, now: f64) -> Outcome {
    let values: Vec<&[u8]> = req.headers().get_all(header::AUTHORIZATION).iter().map(HeaderValue::as_bytes).collect();
    if let [one] = values.as_slice()
        && one.len() > MAX_AUTHORIZATION_BYTES
    {
        return Outcome::from(Rejection::bare(
            ReasonCode::TokenTooLarge,
            format!("Authorization header is {} bytes; the limit is {MAX_AUTHORIZATION_BYTES}", one.len()),
        ));
    }
    let token = match pvid_core::extract_bearer(&values) {
        Ok(t) => t,
        Err(r) => return r.into(),
    };
    let verified = match verify(shared, snapshot, token, now) {
        Ok(v) => v,
        Err(r) => return r.into(),
    };
    match snapshot.policy.check(&verified.caller, &shared.service, req.method().as_str(), req.uri().path()) {
        Ok(path) => Outcome::Allow { path: keep_trailing_slash(req.uri().path(), path), verified },
        Err(detail) => Outcome::Deny {
            reason: ReasonCode::PolicyDenied,
            detail,
            token: TokenInfo::default(),
            verified: Some(verified),
        },
    }
}

/// Verification, through the cache when it is on.
// `Rejection` is core's type; boxing it here would only add an allocation per denial.
#[allow(clippy::result_large_err)]
fn verify(shared: &Shared, snapshot: &Snapshot, token: &str, now: f64) -> Result<Verified, Rejection> {
    let Some(cache) = &shared.cache else {
        return snapshot.verifier.verify(token, now);
    };
    let key = TokenCache::key(token);
    if let Some(hit) = cache.get(&key, now, &snapshot.verifier) {
        shared.metrics.cache_lookup(true);
        return Ok(hit);
    }
    shared.metrics.cache_lookup(false);
    let verified = snapshot.verifier.verify(token, now)?;
    cache.insert(key, verified.clone(), now);
    Ok(verified)
}

/// Core's normalisation drops a trailing slash (`/charge/` → `/charge`), which matters for
/// matching only; many apps route `/x/` and `/x` differently, so the app gets the slash back when
/// the request path ended in a directory (`/`, `/.`, `/..`, also percent-encoded). The result
/// stays inside the subtree the policy matched.
fn keep_trailing_slash(raw: &str, normalised: String) -> String {
    if normalised == "/" {
        return normalised;
    }
    let last = raw.rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
    let dir = matches!(last.as_str(), "" | "." | ".." | "%2e" | "%2e%2e" | ".%2e" | "%2e.");
    if dir { normalised + "/" } else { normalised }
}

/// Sends an allowed request to the app, streaming both bodies.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
    verified: &Verified,
    path: &str,
    request_id: &str,
) -> Response<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let uri =
        Uri::builder().scheme("http").authority(shared.upstream.to_string()).path_and_query(path_and_query).build();
    let Ok(uri) = uri else {
        // The path came out of a parsed URI and normalisation only removes characters.
        return respond::error(StatusCode::BAD_REQUEST, "bad_request_target", request_id);
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_credentials_and_owned(&mut parts.headers);
    headers::set(&mut parts.headers, X_PVID_CALLER, verified.caller.as_str());
    headers::set(&mut parts.headers, X_PVID_PREVIEW, shared.preview.as_str());
    headers::set(&mut parts.headers, X_REQUEST_ID, request_id);

    match shared.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            if !parts.headers.contains_key(X_REQUEST_ID) {
                headers::set(&mut parts.headers, X_REQUEST_ID, request_id);
            }
            Response::from_parts(parts, body.boxed())
        }
        Err(_) => respond::error(StatusCode::BAD_GATEWAY, "upstream_unavailable", request_id),
    }
}

/// The decision line of a request.
fn decision_event<'a>(
    shared: &'a Shared,
    snapshot: &Snapshot,
    req: &Request<Incoming>,
    outcome: &Outcome,
    request_id: &'a str,
    now: f64,
    started: Instant,
) -> DecisionEvent<'a> {
    let aud_of = |aud: &[String]| clip_field(&aud.join(","));
    let (result, reason, caller_iss, caller, actual_aud, kid, detail) = match outcome {
        Outcome::Allow { verified, .. } => (
            DecisionResult::Allow,
            ReasonCode::Ok,
            Some(clip_field(&verified.issuer)),
            Some(verified.caller.to_string()),
            Some(clip_field(&verified.audience)),
            Some(clip_field(&verified.kid)),
            None,
        ),
        Outcome::Deny { reason, detail, verified: Some(v), .. } => (
            DecisionResult::Deny,
            *reason,
            Some(clip_field(&v.issuer)),
            Some(v.caller.to_string()),
            Some(clip_field(&v.audience)),
            Some(clip_field(&v.kid)),
            Some(clip_detail(detail)),
        ),
        Outcome::Deny { reason, detail, token, verified: None } => (
            DecisionResult::Deny,
            *reason,
            token.iss.as_deref().map(clip_field),
            None,
            token.aud.as_deref().map(aud_of),
            token.kid.as_deref().map(clip_field),
            Some(clip_detail(detail)),
        ),
    };
    // The claims as verified when the token passed (allow, policy denial), else as the token
    // said them (unverified): `pvid explain` sizes skew and expiry from them.
    let (token_iat, token_exp) = match outcome {
        Outcome::Allow { verified: v, .. } | Outcome::Deny { verified: Some(v), .. } => (v.iat, Some(v.exp)),
        Outcome::Deny { token, verified: None, .. } => (token.iat, token.exp),
    };
    DecisionEvent {
        token_iat,
        token_exp,
        ts: rfc3339_millis(now),
        event: "auth.validate",
        preview_id: shared.preview.as_str(),
        service: shared.service.as_str(),
        caller_iss,
        caller,
        result,
        reason,
        expected_aud: &shared.identity,
        actual_aud,
        kid,
        method: clip_field(req.method().as_str()),
        path: clip_field(req.uri().path()),
        request_id,
        latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        registry_version: snapshot.registry.version,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_path_keeps_its_trailing_slash() {
        assert_eq!(keep_trailing_slash("/charge/", "/charge".into()), "/charge/");
        assert_eq!(keep_trailing_slash("/public/./x/..", "/public".into()), "/public/");
        assert_eq!(keep_trailing_slash("/public/x/%2E", "/public/x".into()), "/public/x/");
        assert_eq!(keep_trailing_slash("/charge", "/charge".into()), "/charge");
        assert_eq!(keep_trailing_slash("//", "/".into()), "/");
        assert_eq!(keep_trailing_slash("/a/..", "/".into()), "/");
    }
}
