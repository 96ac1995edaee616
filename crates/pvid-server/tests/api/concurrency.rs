//! Two replicas (each its own connection pool over the same database and secrets) take 50
//! concurrent provision/teardown requests for 10 previews; every preview ends consistent.

use std::collections::BTreeMap;

use http::StatusCode;
use pvid_server::Settings;
use serde_json::Value;

use crate::support::{Db, admin, replica, spec_for};

async fn fifty_concurrent_requests_end_consistent(db: Db) {
    let home = tempfile::tempdir().unwrap();
    let mut url = String::new();
    let (_, a) = replica(db, home.path(), &mut url, Settings { replica: "a".into(), ..Settings::default() }).await;
    let (_, b) = replica(db, home.path(), &mut url, Settings { replica: "b".into(), ..Settings::default() }).await;
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let router = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = format!("pr-{}", i % 10);
        // Mostly provisions, a teardown every third request.
        let teardown = i % 3 == 2;
        tasks.push(tokio::spawn(async move {
            if teardown {
                admin(&router, "DELETE", &format!("/v1/previews/{id}"), "").await.status
            } else {
                admin(&router, "POST", "/v1/previews", &spec_for(&id)).await.status
            }
        }));
    }
    let mut statuses = BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap().as_u16()).or_insert(0) += 1;
    }
    // Teardowns of a preview no request created yet are 404; nothing else may fail.
    assert!(statuses.keys().all(|s| [200, 201, 404].contains(s)), "{statuses:?}");

    for i in 0..10 {
        let show = admin(&a, "GET", &format!("/v1/previews/pr-{i}"), "").await;
        if show.status == StatusCode::NOT_FOUND {
            continue;
        }
        let state = show.body["preview"]["state"].as_str().unwrap();
        let active: Vec<&Value> = show.body["keys"].as_array().unwrap().iter().filter(|k| k["state"] != "revoked").collect();
        match state {
            "active" => {
                assert_eq!(active.len(), 4, "pr-{i}: {active:?}");
                let mut services: Vec<&str> = active.iter().map(|k| k["service"].as_str().unwrap()).collect();
                services.sort_unstable();
                assert_eq!(services, ["api", "payments", "webhooks", "worker"], "pr-{i}");
            }
            "torn_down" => assert_eq!(active.len(), 0, "pr-{i}"),
            other => panic!("pr-{i} ended {other}"),
        }
    }
    let orphans = admin(&b, "GET", "/v1/audit/orphans", "").await;
    assert_eq!(orphans.body["orphans"], Value::Array(vec![]));
    let all = admin(&a, "GET", "/v1/evidence", "").await;
    let entries: Vec<pvid_store::EvidenceEntry> = serde_json::from_value(all.body["entries"].clone()).unwrap();
    assert_eq!(pvid_store::evidence::verify_chain(&entries), Ok(()));
}

#[tokio::test]
async fn fifty_concurrent_requests_over_two_replicas_end_consistent_on_sqlite() {
    fifty_concurrent_requests_end_consistent(Db::Sqlite).await;
}

#[tokio::test]
#[ignore = "needs postgres: PVID_TEST_PG_URL"]
async fn fifty_concurrent_requests_over_two_replicas_end_consistent_on_postgres() {
    fifty_concurrent_requests_end_consistent(Db::Postgres).await;
}
