//! `/v1/metrics`: previews by state (from the shared store), provisions and teardowns by
//! outcome, orphans found and swept.

use http::StatusCode;

use crate::support::{Db, SPEC, admin, call, env};

fn sample(body: &str, name: &str) -> u64 {
    let line = body.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("no {name} in\n{body}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn lifecycle_calls_are_counted_by_outcome_and_previews_by_state() {
    let e = env(Db::Sqlite).await;
    let r = &e.router;
    assert_eq!(admin(r, "POST", "/v1/previews", SPEC).await.status, StatusCode::CREATED);
    assert_eq!(admin(r, "POST", "/v1/previews", SPEC).await.status, StatusCode::OK);
    assert_eq!(admin(r, "POST", "/v1/previews?preview=pr-9", SPEC).await.status, StatusCode::CREATED);
    assert_eq!(admin(r, "DELETE", "/v1/previews/pr-482", "").await.status, StatusCode::OK);
    assert_eq!(admin(r, "DELETE", "/v1/previews/pr-482", "").await.status, StatusCode::OK);
    assert_eq!(admin(r, "GET", "/v1/audit/orphans", "").await.status, StatusCode::OK);
    let m = call(r, "GET", "/v1/metrics", None, "", &[]).await;
    assert_eq!(m.status, StatusCode::OK);
    let body = m.body.as_str().unwrap();
    assert_eq!(sample(body, "pvid_provisions_total{outcome=\"created\"}"), 2);
    assert_eq!(sample(body, "pvid_provisions_total{outcome=\"already_active\"}"), 1);
    assert_eq!(sample(body, "pvid_provisions_total{outcome=\"failed\"}"), 0);
    assert_eq!(sample(body, "pvid_teardowns_total{outcome=\"torn_down\"}"), 1);
    assert_eq!(sample(body, "pvid_teardowns_total{outcome=\"already_torn_down\"}"), 1);
    assert_eq!(sample(body, "pvid_previews{state=\"active\"}"), 1);
    assert_eq!(sample(body, "pvid_previews{state=\"torn_down\"}"), 1);
    assert_eq!(sample(body, "pvid_previews{state=\"provisioning\"}"), 0);
    assert_eq!(sample(body, "pvid_orphans_found_total"), 0);
    assert_eq!(sample(body, "pvid_orphans_swept_total"), 0);
}
