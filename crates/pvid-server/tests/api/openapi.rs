//! The OpenAPI document and the router agree.

use http::StatusCode;
use pvid_server::openapi::{Access, ROUTES, document};

use crate::support::{Db, TOKEN, call, env};

#[tokio::test]
async fn every_documented_route_is_served_and_no_other_method_is() {
    let e = env(Db::Sqlite).await;
    for r in ROUTES {
        let path = r.path.replace("{id}", "pr-x");
        let token = (r.access == Access::Admin).then_some(TOKEN);
        let a = call(&e.router, r.method, &path, token, "services: {a: {}}\npreview: pr-x\n", &[]).await;
        assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{} {}", r.method, r.path);
        assert_ne!(a.body["code"], "unknown_route", "{} {}", r.method, r.path);
        if a.status == StatusCode::NOT_FOUND {
            assert_eq!(a.body["code"], "not_found");
            assert!(!a.body["message"].as_str().unwrap().starts_with("no such route"), "{} {} is not routed", r.method, r.path);
        }
        if r.access == Access::Admin {
            assert_eq!(call(&e.router, r.method, &path, None, "", &[]).await.status, StatusCode::UNAUTHORIZED, "{} {}", r.method, r.path);
        }
        let doc = document();
        assert!(doc["paths"][r.path][r.method.to_ascii_lowercase()].is_object(), "{} {} missing from the document", r.method, r.path);
    }
    // Methods the table does not list for a documented path are not served.
    for path in ROUTES.iter().map(|r| r.path) {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if ROUTES.iter().any(|r| r.path == path && r.method == method) {
                continue;
            }
            let a = call(&e.router, method, &path.replace("{id}", "pr-x"), Some(TOKEN), "", &[]).await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is served but not documented");
        }
    }
    let unknown = call(&e.router, "GET", "/v1/nothing", None, "", &[]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body["message"].as_str().unwrap().starts_with("no such route"));
}

#[tokio::test]
async fn the_document_is_served_and_is_openapi_3_1() {
    let e = env(Db::Sqlite).await;
    let a = call(&e.router, "GET", "/v1/openapi.json", None, "", &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["openapi"], "3.1.0");
    assert_eq!(a.body, document());
    let ops: usize = a.body["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(ops, ROUTES.len());
    assert_eq!(a.body["paths"]["/v1/previews"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error");
}
