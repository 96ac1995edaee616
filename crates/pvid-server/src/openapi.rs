//! The OpenAPI 3.1 document of the API, served at `/v1/openapi.json`.
//!
//! Hand-written from [`ROUTES`] rather than derived (utoipa would add a proc-macro stack to a
//! 2-core build). The tests keep it honest: every route of the table answers through
//! [`crate::router`] with something other than "no such route", and every route the router
//! serves is in the table (`tests/api.rs`).

use axum::Json;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Anyone, unless the server protects registry reads (then the admin token).
    Registry,
    /// The admin token.
    Admin,
}

/// One route of the API.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    /// Method, upper case.
    pub method: &'static str,
    /// Path template (`{id}` for a preview id).
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
    /// What it does.
    pub summary: &'static str,
    /// Status codes it answers with (besides 401 for token-protected routes, and 5xx).
    pub responses: &'static [u16],
}

/// Every route of the API.
pub const ROUTES: &[Route] = &[
    Route { method: "GET", path: "/v1/healthz", access: Access::Public, summary: "Liveness: the process answers.", responses: &[200] },
    Route { method: "GET", path: "/v1/readyz", access: Access::Public, summary: "Readiness: the state store answers; backend and schema version.", responses: &[200, 503] },
    Route { method: "GET", path: "/v1/metrics", access: Access::Public, summary: "Prometheus metrics: previews by state, provisions, teardowns, orphans, auth failures, reaped previews.", responses: &[200] },
    Route { method: "GET", path: "/v1/openapi.json", access: Access::Public, summary: "This document.", responses: &[200] },
    Route { method: "GET", path: "/v1/previews", access: Access::Admin, summary: "List previews.", responses: &[200] },
    Route { method: "POST", path: "/v1/previews", access: Access::Admin, summary: "Provision a preview from a spec (YAML or JSON body; ?preview=ID overrides `preview:`). 201 created or resumed, 200 already active.", responses: &[200, 201, 400, 409, 413] },
    Route { method: "GET", path: "/v1/previews/{id}", access: Access::Admin, summary: "A preview: record, keys (public halves), registry.", responses: &[200, 400, 404] },
    Route { method: "DELETE", path: "/v1/previews/{id}", access: Access::Admin, summary: "Tear a preview down: keys revoked, secrets deleted and confirmed gone. Returns the final registry version.", responses: &[200, 400, 404] },
    Route { method: "GET", path: "/v1/previews/{id}/jwks.json", access: Access::Registry, summary: "The JWKS (RFC 7517) of the preview's live public keys.", responses: &[200, 400, 404] },
    Route { method: "GET", path: "/v1/previews/{id}/registry.json", access: Access::Registry, summary: "The registry, ETag = version. If-None-Match + ?wait=30s long-polls until the version moves (200) or the wait ends (304).", responses: &[200, 304, 400, 404] },
    Route { method: "GET", path: "/v1/previews/{id}/evidence", access: Access::Admin, summary: "The preview's evidence trail.", responses: &[200, 400] },
    Route { method: "GET", path: "/v1/evidence", access: Access::Admin, summary: "The whole hash-chained evidence trail.", responses: &[200] },
    Route { method: "GET", path: "/v1/audit/orphans", access: Access::Admin, summary: "Orphaned credentials (secrets or unrevoked keys of previews that are not active).", responses: &[200] },
    Route { method: "POST", path: "/v1/audit/orphans/sweep", access: Access::Admin, summary: "Remove orphans; returns what was found and what remains.", responses: &[200] },
];

fn describe(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        304 => "Not modified (ETag still current)",
        400 => "Invalid input: body {code, message, request_id}; spec errors add line and field",
        401 => "Missing or wrong admin token",
        404 => "No such preview",
        409 => "Conflict: active with another spec, or being torn down",
        413 => "Spec too large",
        503 => "State store unavailable",
        _ => "See message",
    }
}

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for r in ROUTES {
        let mut responses = serde_json::Map::new();
        let mut codes: Vec<u16> = r.responses.to_vec();
        if r.access != Access::Public {
            codes.push(401);
        }
        codes.sort_unstable();
        for c in codes {
            let content = if c == 304 {
                json!({"description": describe(c)})
            } else if c >= 400 {
                json!({"description": describe(c), "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
            } else {
                json!({"description": describe(c), "content": {"application/json": {}}})
            };
            responses.insert(c.to_string(), content);
        }
        let mut op = json!({"summary": r.summary, "responses": responses});
        if r.path.contains("{id}") {
            op["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"}}]);
        }
        if r.path.ends_with("registry.json") {
            if let Some(params) = op["parameters"].as_array_mut() {
                params.push(json!({"name": "wait", "in": "query", "schema": {"type": "string", "example": "30s"}}));
                params.push(json!({"name": "If-None-Match", "in": "header", "schema": {"type": "string", "example": "\"7\""}}));
            }
        }
        if r.method == "POST" && r.path == "/v1/previews" {
            op["parameters"] = json!([{"name": "preview", "in": "query", "schema": {"type": "string"}}]);
            op["requestBody"] = json!({"required": true, "content": {"application/yaml": {}, "application/json": {}}});
        }
        match r.access {
            Access::Admin => op["security"] = json!([{"adminToken": []}]),
            Access::Registry => op["security"] = json!([{}, {"adminToken": []}]),
            Access::Public => {}
        }
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "pvid control plane", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Previews, their keys and registries. See docs/server.md."},
        "paths": paths,
        "components": {
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["code", "message", "request_id"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "request_id": {"type": "string"},
                               "line": {"type": ["integer", "null"]}, "field": {"type": "string"}}}}
        }
    })
}

/// `GET /v1/openapi.json`.
pub(crate) async fn serve() -> Response {
    Json(document()).into_response()
}
