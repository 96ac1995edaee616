//! The one place API errors become responses: `{code, message, request_id}` JSON with the right
//! status. Handlers return `Result<_, ApiError>`; the request-id middleware fills `request_id`
//! (it knows it, handlers need not), so every error body carries it. Internal details (a store's
//! cause chain) are logged, never sent.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use pvid_control::LifecycleError;
use pvid_core::SpecError;
use serde::Serialize;
use serde_json::json;

/// An API error: status, stable code and a message for people.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable, machine-readable code (`unauthorized`, `invalid_spec`, `not_found`, ...).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Extra members of the body (`line` and `field` for spec errors).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The body, as the middleware completes it.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
    pub request_id: &'a str,
    #[serde(flatten)]
    pub extra: &'a serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error without extra members.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: serde_json::Map::new() }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this call needs the admin token: Authorization: Bearer <token>",
        )
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 500 `internal`, the cause logged with the request id by the middleware.
    pub fn internal(cause: &(dyn std::error::Error + 'static)) -> ApiError {
        let mut e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log");
        e.extra.insert("_log".into(), json!(chain(cause)));
        e
    }
}

/// A cause chain as one line, for the log.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> ApiError {
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", e.to_string());
        err.extra.insert("line".into(), json!(e.line));
        err.extra.insert("field".into(), json!(e.field));
        err
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> ApiError {
        match &e {
            LifecycleError::NotFound(_) => ApiError::not_found(e.to_string()),
            LifecycleError::SpecChanged { .. } => ApiError::new(StatusCode::CONFLICT, "spec_changed", e.to_string()),
            LifecycleError::TearingDown(_) => ApiError::new(StatusCode::CONFLICT, "tearing_down", e.to_string()),
            LifecycleError::Store(s) => ApiError::from_store(s),
            _ => ApiError::internal(&e),
        }
    }
}

impl From<pvid_store::StoreError> for ApiError {
    fn from(e: pvid_store::StoreError) -> ApiError {
        ApiError::from_store(&e)
    }
}

impl ApiError {
    fn from_store(e: &pvid_store::StoreError) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the state or secret store failed; the operation can be retried",
        );
        err.extra.insert("_log".into(), json!(chain(e)));
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // The body is written by the request-id middleware, which adds the request id; this
        // placeholder is what a router without the middleware (never ours) would send.
        let status = self.status;
        let mut resp = (status, Json(json!({"code": self.code, "message": self.message}))).into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}
