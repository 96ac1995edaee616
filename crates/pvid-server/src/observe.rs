//! Request ids, error bodies and the access log, in one middleware.
//!
//! Every request gets an id: the caller's `x-request-id` when it is sane (visible ASCII, at most
//! 128 bytes), a fresh random one otherwise. Handlers read it from [`RequestId`]; the response
//! carries it in `x-request-id`; an [`ApiError`] body gets it as `request_id`. One JSON line per
//! request goes to standard output (`event: api.request`), with the internal cause of a 5xx.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use serde_json::json;

use crate::error::{ApiError, ErrorBody};

/// The header carrying the request id both ways.
pub const X_REQUEST_ID: &str = "x-request-id";

/// The id of the request being handled.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

fn sane(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())).then(|| s.to_owned())
}

/// RFC 3339 UTC with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Writes one JSON log line to standard output.
pub(crate) fn log_line(value: serde_json::Value) {
    println!("{value}");
}

/// The middleware: id in, id out, error body completed, one access line.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(sane)
        .unwrap_or_else(|| pvid_store::evidence::hex(&pvid_core::key::random_bytes(12)));
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();

    let mut resp = next.run(req).await;
    let mut cause = None;
    if let Some(mut err) = resp.extensions_mut().remove::<ApiError>() {
        cause = err.extra.remove("_log");
        let body = ErrorBody { code: err.code, message: &err.message, request_id: &id, extra: &err.extra };
        let mut fresh = (err.status, axum::Json(body)).into_response();
        for (k, v) in resp.headers() {
            if k != http::header::CONTENT_LENGTH && k != http::header::CONTENT_TYPE {
                fresh.headers_mut().insert(k.clone(), v.clone());
            }
        }
        resp = fresh;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    // Long-polls are logged too; their latency is the wait.
    log_line(json!({
        "ts": now_rfc3339(), "event": "api.request", "request_id": id, "method": method, "path": path,
        "status": resp.status().as_u16(), "latency_ms": started.elapsed().as_secs_f64() * 1000.0,
        "error": cause,
    }));
    resp
}

/// An empty body helper for 304s.
pub(crate) fn empty() -> Body {
    Body::empty()
}
