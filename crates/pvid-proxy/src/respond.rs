//! The one place that turns a denial or a sidecar-side failure into a response (linkerd's
//! `respond.rs`). Bodies are small JSON objects with the reason code and the request id, never
//! the token or the detail (the detail goes to the log line only).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use pvid_core::ReasonCode;
use serde::Serialize;

use crate::headers::{X_REQUEST_ID, set};

/// The body type of every response the sidecar sends: streamed from upstream or synthetic.
pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// `result` of a synthetic answer.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Deny,
    Error,
}

#[derive(Debug, Serialize)]
struct Body<'a> {
    result: Outcome,
    reason: &'a str,
    request_id: &'a str,
}

/// A body from bytes held in memory.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

fn json(status: StatusCode, body: &Body<'_>) -> Response<ProxyBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    set(h, X_REQUEST_ID, body.request_id);
    resp
}

/// 401 (bad or missing token) or 403 (`policy_denied`), with `{"result":"deny",...}`.
pub(crate) fn deny(reason: ReasonCode, request_id: &str) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = json(status, &Body { result: Outcome::Deny, reason: reason.as_str(), request_id });
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750 §3.1: a request without credentials gets the challenge without an error code.
        let challenge = if reason == ReasonCode::MissingToken { "Bearer" } else { "Bearer error=\"invalid_token\"" };
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    resp
}

/// A failure of the sidecar or of a hop behind it (`upstream_unavailable`, `unknown_callee`...),
/// with `{"result":"error",...}`.
pub(crate) fn error(status: StatusCode, reason: &str, request_id: &str) -> Response<ProxyBody> {
    json(status, &Body { result: Outcome::Error, reason, request_id })
}

/// A complete `Connection: close` response as bytes, for answers written to a socket hyper no
/// longer drives (a connection refused at accept, a request whose headers never came).
pub(crate) fn raw_error(status: StatusCode, reason: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&Body { result: Outcome::Error, reason, request_id: "" }).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deny_bodies_hold_reason_and_request_id_only() {
        let resp = deny(ReasonCode::BadSignature, "rid-1");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer error=\"invalid_token\"");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"result":"deny","reason":"bad_signature","request_id":"rid-1"}"#);

        let resp = deny(ReasonCode::PolicyDenied, "rid-2");
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(resp.headers().get(header::WWW_AUTHENTICATE).is_none());

        let resp = deny(ReasonCode::MissingToken, "rid-3");
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn raw_errors_are_complete_closing_responses() {
        let raw = String::from_utf8(raw_error(StatusCode::REQUEST_TIMEOUT, "header_timeout")).unwrap();
        let body = r#"{"result":"error","reason":"header_timeout","request_id":""}"#;
        assert!(raw.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{raw}");
        assert!(raw.contains("connection: close\r\n"));
        assert!(raw.ends_with(&format!("content-length: {}\r\n\r\n{body}", body.len())), "{raw}");
    }
}
