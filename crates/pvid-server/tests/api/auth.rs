//! The API's own authentication: 401 without or with a wrong admin token, nothing changed,
//! failures counted; registry reads public unless protected.

use http::StatusCode;
use pvid_server::Settings;
use serde_json::Value;

use crate::support::{Db, SPEC, TOKEN, admin, call, env, env_with};

#[tokio::test]
async fn calls_without_or_with_a_wrong_token_are_401_and_change_nothing() {
    let e = env(Db::Sqlite).await;
    let r = &e.router;
    let none = call(r, "POST", "/v1/previews", None, SPEC, &[("x-request-id", "req-no-token")]).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert_eq!(none.body["code"], "unauthorized");
    assert_eq!(none.body["request_id"], "req-no-token");
    assert_eq!(none.headers["x-request-id"], "req-no-token");
    let wrong = call(r, "POST", "/v1/previews", Some("pvid_adm_wrong"), SPEC, &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let prefix = call(r, "POST", "/v1/previews", Some(&TOKEN[..TOKEN.len() - 1]), SPEC, &[]).await;
    assert_eq!(prefix.status, StatusCode::UNAUTHORIZED);
    let basic = call(r, "GET", "/v1/previews", None, "", &[("authorization", &format!("Basic {TOKEN}"))]).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
    for (method, path) in [("GET", "/v1/previews"), ("GET", "/v1/previews/pr-482"), ("DELETE", "/v1/previews/pr-482"),
                           ("GET", "/v1/evidence"), ("GET", "/v1/audit/orphans"), ("POST", "/v1/audit/orphans/sweep"),
                           ("GET", "/v1/previews/pr-482/evidence")] {
        assert_eq!(call(r, method, path, None, "", &[]).await.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    // Nothing was created, nothing recorded.
    assert_eq!(admin(r, "GET", "/v1/previews", "").await.body["previews"], Value::Array(vec![]));
    assert_eq!(admin(r, "GET", "/v1/evidence", "").await.body["entries"], Value::Array(vec![]));
    let metrics = call(r, "GET", "/v1/metrics", None, "", &[]).await;
    assert!(metrics.body.as_str().unwrap().contains("pvid_api_auth_failures_total 11\n"), "{}", metrics.body);
}

#[tokio::test]
async fn teardown_with_a_wrong_token_leaves_the_preview_active() {
    let e = env(Db::Sqlite).await;
    assert_eq!(admin(&e.router, "POST", "/v1/previews", SPEC).await.status, StatusCode::CREATED);
    let wrong = call(&e.router, "DELETE", "/v1/previews/pr-482", Some("nope"), "", &[]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let reg = call(&e.router, "GET", "/v1/previews/pr-482/registry.json", None, "", &[]).await;
    assert_eq!(reg.body["state"], "active");
    assert_eq!(reg.body["jwks"]["keys"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn registry_reads_need_the_token_when_protected() {
    let e = env_with(Db::Sqlite, Settings { protect_registry: true, ..Settings::default() }).await;
    assert_eq!(admin(&e.router, "POST", "/v1/previews", SPEC).await.status, StatusCode::CREATED);
    for path in ["/v1/previews/pr-482/registry.json", "/v1/previews/pr-482/jwks.json"] {
        assert_eq!(call(&e.router, "GET", path, None, "", &[]).await.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(admin(&e.router, "GET", path, "").await.status, StatusCode::OK, "{path}");
    }
    assert_eq!(call(&e.router, "GET", "/v1/healthz", None, "", &[]).await.status, StatusCode::OK);
}
