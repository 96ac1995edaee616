//! The admin listener: `GET /healthz` (JSON: registry in force and this host's clock, which
//! `pvid doctor` compares across sidecars) and `GET /metrics` (Prometheus text). It serves no
//! application traffic and holds no secret.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::stopped;
use crate::shared::Shared;

/// Serves the admin endpoints until `stop` turns true.
pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(answer(&shared, &req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let snapshot = shared.registry.load();
    let now = shared.clock.now();
    let age = (now - shared.registry.loaded_at()).max(0.0);
    let reg = &snapshot.registry;
    let signer = shared.signer();
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (
            StatusCode::OK,
            "application/json",
            serde_json::json!({
                "status": if reg.state.is_gone() { "torn_down" } else { "ok" },
                "preview": shared.preview.as_str(),
                "service": shared.service.as_str(),
                "registry_version": reg.version,
                "registry_state": reg.state.as_str(),
                "registry_age_s": age,
                "clock_unix_ms": (now * 1000.0).round() as i64,
                // The key egress signs with, and whether the registry still publishes it: a
                // sidecar follows rotations, but a preview torn down and provisioned again
                // under the same id leaves it signing with a revoked key.
                "signing_kid": signer.as_ref().map(|k| k.kid().to_owned()),
                // Live: published for this service and not past the end of a rotation's overlap.
                "signing_key_live": signer.as_ref().map(|k| {
                    snapshot.kids_of(&shared.service).iter().any(|kid| kid == k.kid()) && !snapshot.verifier.is_revoked_at(k.kid(), now)
                }),
            })
            .to_string(),
        ),
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(reg.version, reg.state.as_str(), age),
        ),
        _ => (StatusCode::NOT_FOUND, "application/json", r#"{"error":"not_found"}"#.to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
