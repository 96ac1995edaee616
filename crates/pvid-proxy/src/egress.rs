//! Egress: the app's own outbound calls. The app sends `http://127.0.0.1:<egress>/<callee>/<rest>`
//! (or an HTTP proxy request `GET http://<callee>/<rest>`); the sidecar mints a token for the
//! callee's audience with this service's key, and forwards to the callee's address from the
//! registry with `Authorization: Bearer`, the request id and `traceparent`.
//!
//! Tokens are cached per callee until shortly before they expire
//! ([`crate::signer::REFRESH_BEFORE_EXPIRY_S`]), and forgotten when the registry changes this
//! service's keys. The sidecar only signs with a key the
//! registry publishes for this service (DESIGN.md: a key is published to every verifier before
//! anyone signs with it), and not at all once the preview is being torn down. One `auth.mint`
//! line is logged per request; it never holds the token.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pvid_core::{MintRequest, ServiceName, service_identity};

use crate::headers::{self, X_REQUEST_ID};
use crate::log::{MintEvent, clip_detail, clip_field, rfc3339_millis};
use crate::registry_watch::Snapshot;
use crate::respond::{self, ProxyBody};
use crate::shared::Shared;
use crate::signer::{Signer, mint_with};

/// Why an egress request was answered by the sidecar itself.
struct Failure {
    status: StatusCode,
    reason: &'static str,
    detail: String,
}

impl Failure {
    fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Failure {
        Failure { status, reason, detail: detail.into() }
    }
}

/// The callee (as written by the app) and the path and query to send it.
struct Target {
    callee: String,
    path: String,
    path_and_query: String,
}

/// A request ready to go: where, and with which token.
struct Prepared {
    address: String,
    audience: String,
    token: String,
    /// The key that signed it.
    kid: String,
    cached: bool,
}

/// Handles one egress request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let now = shared.clock.now();
    let request_id = headers::request_id(req.headers());
    if let Some(refused) = shared.refuse_if_registry_unavailable("auth.mint", req.method(), req.uri().path(), &request_id).await {
        return refused;
    }
    let snapshot = shared.registry.load();
    let (callee, path, prepared) = match parse_target(req.method(), req.uri()) {
        Err(f) => (None, clip_field(req.uri().path()), Err(f)),
        Ok(t) => {
            let (callee, path) = (clip_field(&t.callee), clip_field(&t.path));
            (Some(callee), path, prepare(&shared, &snapshot, &t, now).await.map(|p| (t, p)))
        }
    };

    shared.metrics.mint(prepared.is_ok());
    let signer = shared.signer();
    let event = MintEvent {
        ts: rfc3339_millis(now),
        event: "auth.mint",
        preview_id: shared.preview.as_str(),
        service: shared.service.as_str(),
        callee,
        audience: prepared.as_ref().ok().map(|(_, p)| p.audience.clone()),
        kid: prepared.as_ref().ok().map(|(_, p)| p.kid.as_str()).or_else(|| signer.as_deref().map(Signer::kid)),
        result: if prepared.is_ok() { "ok" } else { "error" },
        reason: match &prepared {
            Ok((_, p)) if p.cached => "cached",
            Ok(_) => "minted",
            Err(f) => f.reason,
        },
        method: clip_field(req.method().as_str()),
        path,
        request_id: &request_id,
        latency_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        registry_version: snapshot.registry.version,
        detail: prepared.as_ref().err().map(|f| clip_detail(&f.detail)),
    };
    shared.log.record(&event);
    drop(event);

    match prepared {
        Ok((target, prepared)) => forward(&shared, req, &target, &prepared, &request_id).await,
        Err(f) => respond::error(f.status, f.reason, &request_id),
    }
}

/// Reads the callee and the rest of the path from origin form (`/<callee>/<rest>`) or absolute
/// form (`http://<callee>/<rest>`).
fn parse_target(method: &Method, uri: &Uri) -> Result<Target, Failure> {
    if method == Method::CONNECT {
        return Err(Failure::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_not_supported",
            "CONNECT tunnels are not proxied",
        ));
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let (callee, path) = match uri.host() {
        Some(host) => (host.to_owned(), uri.path().to_owned()),
        None => {
            let rest = uri.path().strip_prefix('/').unwrap_or(uri.path());
            match rest.split_once('/') {
                Some((callee, path)) => (callee.to_owned(), format!("/{path}")),
                None => (rest.to_owned(), "/".to_owned()),
            }
        }
    };
    let path = if path.is_empty() { "/".to_owned() } else { path };
    Ok(Target { path_and_query: format!("{path}{query}"), callee, path })
}

/// Looks the callee up and finds or mints its token.
async fn prepare(shared: &Shared, snapshot: &Snapshot, target: &Target, now: f64) -> Result<Prepared, Failure> {
    let bad_gateway = |reason, detail: String| Failure::new(StatusCode::BAD_GATEWAY, reason, detail);
    let entry = target
        .callee
        .parse::<ServiceName>()
        .ok()
        .and_then(|c| snapshot.registry.services.get_key_value(&c))
        .ok_or_else(|| {
            bad_gateway("unknown_callee", format!("no service `{}` in the registry", target.callee.escape_debug()))
        })?;
    let (callee, entry) = (entry.0.clone(), entry.1);
    let address = entry
        .address
        .clone()
        .ok_or_else(|| bad_gateway("callee_has_no_address", format!("the registry gives no address for {callee}")))?;
    let key = shared.signer().ok_or_else(|| {
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_signing_key",
            "this sidecar was started without a signing key",
        )
    })?;
    check_key_is_live(shared, snapshot, key.as_ref(), now)?;

    let audience = service_identity(&shared.preview, &callee);
    let kid = key.kid().to_owned();
    if let Some(token) = shared.minted.get(&callee, now) {
        return Ok(Prepared { address, audience, token, kid, cached: true });
    }
    let ttl_s = snapshot.registry.token_ttl_s;
    let request = MintRequest { from: &shared.service, preview: &shared.preview, audience: &audience, ttl_s, now };
    // A Transit signer answers in one HTTP round trip, or names OpenBao and what failed.
    let minted = mint_with(key.as_ref(), &request)
        .await
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "mint_failed", e.to_string()))?;
    let token = minted.token.clone();
    shared.minted.put(callee, minted);
    Ok(Prepared { address, audience, token, kid, cached: false })
}

/// The sidecar signs only with a key the registry publishes for this service, and only while
/// the preview is live.
fn check_key_is_live(shared: &Shared, snapshot: &Snapshot, key: &dyn Signer, now: f64) -> Result<(), Failure> {
    let unavailable = |reason, detail: String| Failure::new(StatusCode::SERVICE_UNAVAILABLE, reason, detail);
    let reg = &snapshot.registry;
    if reg.state.is_gone() {
        return Err(unavailable("preview_torn_down", format!("preview {} is {}", reg.preview, reg.state)));
    }
    let owner = reg.owner_of(key.kid());
    // Revoked, or rotated out with its overlap over (verifiers refuse its tokens by now).
    let retired = owner.is_some() && snapshot.verifier.is_revoked_at(key.kid(), now);
    if retired || reg.revoked.iter().any(|r| r.kid == key.kid()) {
        return Err(unavailable("key_revoked", format!("signing key {} was revoked", clip_field(key.kid()))));
    }
    if owner != Some(&shared.service) {
        return Err(unavailable(
            "key_not_published",
            format!(
                "signing key {} is not a key of {} in registry version {}",
                clip_field(key.kid()),
                shared.service,
                reg.version
            ),
        ));
    }
    Ok(())
}

/// Sends the request to the callee's sidecar, streaming both bodies.
async fn forward(
    shared: &Shared,
    req: Request<Incoming>,
    target: &Target,
    prepared: &Prepared,
    request_id: &str,
) -> Response<ProxyBody> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(prepared.address.as_str())
        .path_and_query(target.path_and_query.as_str())
        .build();
    let Ok(uri) = uri else {
        return respond::error(StatusCode::BAD_GATEWAY, "bad_callee_address", request_id);
    };
    let (mut parts, body) = req.into_parts();
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_credentials_and_owned(&mut parts.headers);
    // The client writes Host from the callee's address.
    parts.headers.remove(header::HOST);
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", prepared.token)) else {
        // A minted token is base64url segments joined by dots.
        return respond::error(StatusCode::INTERNAL_SERVER_ERROR, "mint_failed", request_id);
    };
    parts.headers.insert(header::AUTHORIZATION, bearer);
    headers::set(&mut parts.headers, X_REQUEST_ID, request_id);

    match shared.client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(_) => respond::error(StatusCode::BAD_GATEWAY, "callee_unavailable", request_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: Method, uri: &str) -> Target {
        match parse_target(&method, &uri.parse().unwrap()) {
            Ok(t) => t,
            Err(f) => panic!("{}", f.reason),
        }
    }

    #[test]
    fn origin_form_names_the_callee_in_the_first_segment() {
        let t = target(Method::POST, "/payments/charge/1?x=1");
        assert_eq!(
            (t.callee.as_str(), t.path.as_str(), t.path_and_query.as_str()),
            ("payments", "/charge/1", "/charge/1?x=1")
        );
        let t = target(Method::GET, "/payments");
        assert_eq!((t.callee.as_str(), t.path_and_query.as_str()), ("payments", "/"));
        let t = target(Method::GET, "/payments?q");
        assert_eq!((t.callee.as_str(), t.path_and_query.as_str()), ("payments", "/?q"));
    }

    #[test]
    fn absolute_form_names_the_callee_in_the_host() {
        let t = target(Method::GET, "http://payments/charge?x=1");
        assert_eq!((t.callee.as_str(), t.path_and_query.as_str()), ("payments", "/charge?x=1"));
        let t = target(Method::GET, "http://payments:8080");
        assert_eq!((t.callee.as_str(), t.path_and_query.as_str()), ("payments", "/"));
    }

    #[test]
    fn connect_is_refused() {
        let f = parse_target(&Method::CONNECT, &"payments:443".parse().unwrap()).err().unwrap();
        assert_eq!(f.reason, "connect_not_supported");
    }
}
