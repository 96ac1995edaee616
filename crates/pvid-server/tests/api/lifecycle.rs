//! The whole lifecycle through the API: one suite, run on SQLite and on PostgreSQL.

use http::StatusCode;
use pvid_store::EvidenceEntry;
use serde_json::Value;

use crate::support::{Db, Env, admin, call, env, spec_for};

async fn whole_lifecycle(e: Env) {
    let r = &e.router;
    // Create from YAML.
    let created = admin(r, "POST", "/v1/previews", &spec_for("pr-1")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.body["outcome"], "created");
    assert_eq!(created.body["registry"]["state"], "active");
    let services = created.body["registry"]["services"].as_object().unwrap();
    assert_eq!(services.len(), 4);
    for (name, s) in services {
        let kids = s["kids"].as_array().unwrap();
        assert_eq!(kids.len(), 1, "{name}");
        assert!(kids[0].as_str().unwrap().starts_with(&format!("{name}-1-")));
    }
    // Again: nothing changes.
    let again = admin(r, "POST", "/v1/previews", &spec_for("pr-1")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["outcome"], "already_active");
    assert_eq!(again.body["registry"], created.body["registry"]);

    // Create from JSON, id from the query.
    let json_spec = r#"{"algorithm": "EdDSA", "services": {"api": {"calls": ["worker"]}, "worker": {}}}"#;
    let j = admin(r, "POST", "/v1/previews?preview=pr-json", json_spec).await;
    assert_eq!(j.status, StatusCode::CREATED, "{}", j.body);
    assert_eq!(j.body["registry"]["algorithm"], "EdDSA");
    assert_eq!(j.body["registry"]["jwks"]["keys"].as_array().unwrap().len(), 2);

    // List and show.
    let list = admin(r, "GET", "/v1/previews", "").await;
    let ids: Vec<&str> = list.body["previews"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["pr-1", "pr-json"]);
    let show = admin(r, "GET", "/v1/previews/pr-1", "").await;
    assert_eq!(show.status, StatusCode::OK);
    let keys = show.body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| k["state"] == "active"));
    assert!(!show.body.to_string().contains("\"d\""), "a private JWK member leaked");

    // Public reads: JWKS and registry, with the version as ETag.
    let jwks = call(r, "GET", "/v1/previews/pr-1/jwks.json", None, "", &[]).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.body["keys"].as_array().unwrap().len(), 4);
    let reg = call(r, "GET", "/v1/previews/pr-1/registry.json", None, "", &[]).await;
    let v0 = reg.body["version"].as_u64().unwrap();
    assert_eq!(reg.headers["etag"], format!("\"{v0}\"").as_str());
    let etag = format!("\"{v0}\"");
    let same = call(r, "GET", "/v1/previews/pr-1/registry.json", None, "", &[("if-none-match", &etag)]).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert_eq!(same.headers["etag"], etag.as_str());

    // A watcher holding a long-poll sees the teardown.
    let watcher = {
        let r = r.clone();
        let etag = etag.clone();
        tokio::spawn(async move {
            call(&r, "GET", "/v1/previews/pr-1/registry.json?wait=60s", None, "", &[("if-none-match", &etag)]).await
        })
    };
    let down = admin(r, "DELETE", "/v1/previews/pr-1", "").await;
    assert_eq!(down.status, StatusCode::OK, "{}", down.body);
    assert_eq!(down.body["outcome"], "torn_down");
    let final_version = down.body["version"].as_u64().unwrap();
    assert!(final_version > v0);
    let seen = watcher.await.unwrap();
    assert_eq!(seen.status, StatusCode::OK);
    assert!(seen.body["version"].as_u64().unwrap() > v0);
    assert!(["tearing_down", "torn_down"].contains(&seen.body["state"].as_str().unwrap()), "{}", seen.body["state"]);
    assert_eq!(seen.body["jwks"]["keys"], Value::Array(vec![]));

    let after = call(r, "GET", "/v1/previews/pr-1/registry.json", None, "", &[]).await;
    assert_eq!(after.body["state"], "torn_down");
    assert_eq!(after.body["version"].as_u64().unwrap(), final_version);
    assert_eq!(after.body["revoked"].as_array().unwrap().len(), 4);
    let again = admin(r, "DELETE", "/v1/previews/pr-1", "").await;
    assert_eq!(again.body["outcome"], "already_torn_down");

    // Evidence: the preview's story, and an intact chain.
    let trail = admin(r, "GET", "/v1/previews/pr-1/evidence", "").await;
    let events: Vec<&str> = trail.body["entries"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    let count = |name: &str| events.iter().filter(|e| **e == name).count();
    assert_eq!(count("preview.provisioned"), 1);
    assert_eq!(count("key.issued"), 4);
    assert_eq!(count("preview.tearing_down"), 1);
    assert_eq!(count("key.revoked"), 4);
    assert_eq!(count("secret.deleted"), 4);
    assert_eq!(events.last(), Some(&"preview.torn_down"));
    let all = admin(r, "GET", "/v1/evidence", "").await;
    let entries: Vec<EvidenceEntry> = serde_json::from_value(all.body["entries"].clone()).unwrap();
    assert_eq!(pvid_store::evidence::verify_chain(&entries), Ok(()));

    // Nothing orphaned.
    let orphans = admin(r, "GET", "/v1/audit/orphans", "").await;
    assert_eq!(orphans.body["orphans"], Value::Array(vec![]));

    // Unknown preview and bad id.
    let missing = admin(r, "DELETE", "/v1/previews/pr-404", "").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["code"], "not_found");
    let bad = admin(r, "GET", "/v1/previews/PR_1", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // The reaper tears down what expired, once.
    let ttl_spec = spec_for("pr-ttl").replace("token_ttl: 5m", "token_ttl: 5m\nttl: 1h");
    assert_eq!(admin(r, "POST", "/v1/previews", &ttl_spec).await.status, StatusCode::CREATED);
    let now = pvid_store::state::unix_now();
    let control = &e.state.control;
    assert_eq!(control.reap_expired(now, "r1").await.unwrap(), vec![]);
    let later = now + 3601;
    assert_eq!(control.reap_expired(later, "r1").await.unwrap(), vec!["pr-ttl".parse().unwrap()]);
    assert_eq!(control.reap_expired(later, "r2").await.unwrap(), vec![]);
    let trail = admin(r, "GET", "/v1/previews/pr-ttl/evidence", "").await;
    let expired: Vec<&Value> = trail.body["entries"].as_array().unwrap().iter().filter(|e| e["event"] == "preview.expired").collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["data"]["reaped_by"], "r1");
    let reg = call(r, "GET", "/v1/previews/pr-ttl/registry.json", None, "", &[]).await;
    assert_eq!(reg.body["state"], "torn_down");
    assert_eq!(admin(r, "GET", "/v1/audit/orphans", "").await.body["orphans"], Value::Array(vec![]));
}

#[tokio::test]
async fn the_whole_lifecycle_works_on_sqlite() {
    whole_lifecycle(env(Db::Sqlite).await).await;
}

#[tokio::test]
#[ignore = "needs postgres: PVID_TEST_PG_URL"]
async fn the_whole_lifecycle_works_on_postgres() {
    whole_lifecycle(env(Db::Postgres).await).await;
}

async fn malformed_spec_is_a_400_with_line_and_field(e: Env) {
    let spec = "preview: pr-2\nservices:\n  api: { calls: [nobody] }\n";
    let a = admin(&e.router, "POST", "/v1/previews", spec).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["code"], "invalid_spec");
    assert_eq!(a.body["line"], 3);
    assert_eq!(a.body["field"], "services.api.calls");
    assert!(a.body["message"].as_str().unwrap().starts_with("request body:3:"), "{}", a.body["message"]);
    assert!(!a.body["request_id"].as_str().unwrap().is_empty());
    let unknown = admin(&e.router, "POST", "/v1/previews", "preview: pr-2\nservices:\n  api: {}\ncolour: red\n").await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.body["line"], 4);
    assert_eq!(unknown.body["field"], "colour");
    let list = admin(&e.router, "GET", "/v1/previews", "").await;
    assert_eq!(list.body["previews"], Value::Array(vec![]));
}

#[tokio::test]
async fn a_malformed_spec_is_refused_with_line_and_field_on_sqlite() {
    malformed_spec_is_a_400_with_line_and_field(env(Db::Sqlite).await).await;
}

#[tokio::test]
#[ignore = "needs postgres: PVID_TEST_PG_URL"]
async fn a_malformed_spec_is_refused_with_line_and_field_on_postgres() {
    malformed_spec_is_a_400_with_line_and_field(env(Db::Postgres).await).await;
}
