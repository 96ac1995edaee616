//! `pvid token verify --json` on every token-level attack case, and on one crafted token per
//! reason code against a preview provisioned by `pvid up`.

use super::support::{example_spec, json, pvid, pvid_with, repo, stderr};
use pvid_core::{SigningKey, sign_compact};
use serde_json::{Value, json};
use std::path::Path;

const NOW: &str = "1796299200";

fn cases() -> Vec<Value> {
    serde_json::from_slice(&std::fs::read(repo().join("testdata/cases/cases.json")).unwrap()).unwrap()
}

fn case_file(rel: &str) -> String {
    repo().join("testdata/cases").join(rel).display().to_string()
}

/// Verifies with the harness of testdata/cases: preview pr-1, callee orders.
fn verify_case(token: &str, jwks: &str, via_stdin: bool) -> (Option<i32>, Value) {
    let jwks = case_file(jwks);
    let mut args = vec!["token", "verify", if via_stdin { "-" } else { token }, "--jwks", &jwks];
    for s in ["api", "web", "worker", "orders"] {
        args.push("--issuer");
        args.push(Box::leak(format!("preview-pr-1-{s}").into_boxed_str()));
    }
    args.extend(["--audience", "preview-pr-1", "--audience", "preview-pr-1-orders", "--now", NOW, "--json"]);
    let home = tempfile::tempdir().unwrap();
    let out = pvid_with(home.path(), &args, &[], via_stdin.then_some(token));
    (out.status.code(), json(&out))
}

fn assert_case(id: &str, got: (Option<i32>, Value), expected: &str, reason: &str, identity: Option<&str>) {
    let (code, v) = got;
    let want_code = if expected == "accept" { 0 } else { 1 };
    assert_eq!(code, Some(want_code), "{id}: {v}");
    assert_eq!(v["result"], if expected == "accept" { "ok" } else { "deny" }, "{id}: {v}");
    assert_eq!(v["reason"], reason, "{id}: {v}");
    if let Some(who) = identity {
        assert_eq!(v["caller"], who, "{id}: {v}");
    }
}

#[test]
fn every_token_level_case_through_the_cli() {
    let mut ran = 0;
    for (i, case) in cases().iter().enumerate() {
        if case.get("request").is_some() {
            continue; // request-level cases need a sidecar (pvid-proxy tests run them).
        }
        let id = case["id"].as_str().unwrap();
        let token = std::fs::read_to_string(case_file(case["token_file"].as_str().unwrap())).unwrap();
        let jwks = case["jwks_file"].as_str().unwrap();
        let (expected, reason) = (case["expected"].as_str().unwrap(), case["reason"].as_str().unwrap());
        let identity = case.get("identity").and_then(Value::as_str);
        if let Some(rotated) = case.get("jwks_refetch_file").and_then(Value::as_str) {
            assert_case(id, verify_case(token.trim(), jwks, false), "reject", "unknown_kid", None);
            assert_case(id, verify_case(token.trim(), rotated, false), expected, reason, identity);
        } else if let Some(burst) = case.get("burst_file").and_then(Value::as_str) {
            let burst = std::fs::read_to_string(case_file(burst)).unwrap();
            for t in burst.lines().take(5) {
                assert_case(id, verify_case(t.trim(), jwks, true), expected, reason, identity);
            }
            let then = std::fs::read_to_string(case_file(case["then"]["token_file"].as_str().unwrap())).unwrap();
            assert_case(id, verify_case(then.trim(), jwks, false), "accept", "ok", Some("api"));
        } else {
            // Alternate argv and stdin so both inputs are exercised.
            assert_case(id, verify_case(token.trim(), jwks, i % 2 == 0), expected, reason, identity);
        }
        ran += 1;
    }
    assert!(ran >= 35, "ran {ran} cases");
}

struct Live {
    home: tempfile::TempDir,
    api: SigningKey,
    old_api: SigningKey,
}

async fn live_preview() -> Live {
    let home = tempfile::tempdir().unwrap();
    let out = pvid(home.path(), &["up", "-f", example_spec().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let secrets = pvid_store::LocalSecretStore::open(home.path()).unwrap();
    let path = pvid_store::SecretPath::private_key(&"pr-482".parse().unwrap(), &"api".parse().unwrap());
    use pvid_store::SecretStore as _;
    let bytes = secrets.get(&path).await.unwrap().unwrap();
    let api = pvid_store::StoredKey::from_bytes(&path, &bytes).unwrap().to_signing_key(&path).unwrap();
    let old_api = SigningKey::generate(pvid_core::Algorithm::ES256, "api-0-old".into()).unwrap();
    Live { home, api, old_api }
}

fn registry_path(home: &Path) -> String {
    home.join("previews/pr-482/registry.json").display().to_string()
}

fn claims() -> Value {
    let now: f64 = NOW.parse().unwrap();
    json!({"iss": "preview-pr-482-api", "sub": "api", "aud": "preview-pr-482-payments", "iat": now - 5.0,
           "nbf": now - 5.0, "exp": now + 295.0, "jti": "x", "preview": "pr-482"})
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

fn verify_registry(registry: &str, token: &str) -> (Option<i32>, Value) {
    let home = tempfile::tempdir().unwrap();
    let out = pvid(
        home.path(),
        &["token", "verify", token, "--registry", registry, "--audience", "preview-pr-482-payments", "--now", NOW, "--json"],
    );
    (out.status.code(), json(&out))
}

#[tokio::test]
async fn each_reason_code_through_the_cli_against_a_provisioned_preview() {
    let live = live_preview().await;
    let reg = registry_path(live.home.path());
    let h = |k: &SigningKey| json!({"alg": k.algorithm().as_str(), "typ": "JWT", "kid": k.kid()});
    let api = |c: Value| sign_compact(&live.api, &h(&live.api), &c).unwrap();
    let now: f64 = NOW.parse().unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("ok", api(claims())),
        ("malformed", "a.b".into()),
        ("token_too_large", format!("{}.{}.{}", "e".repeat(5000), "e".repeat(3000), "e".repeat(300))),
        ("alg_not_allowed", sign_compact(&live.api, &json!({"alg": "none", "kid": live.api.kid()}), &claims()).unwrap()),
        ("unknown_kid", sign_compact(&live.old_api, &h(&live.old_api), &claims()).unwrap()),
        ("bad_signature", {
            let t = api(claims());
            let other = api(with(claims(), "jti", json!("y")));
            format!("{}.{}", t.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1)
        }),
        ("issuer_unknown", api(with(claims(), "iss", json!("preview-pr-482-ghost")))),
        ("issuer_key_mismatch", api(with(claims(), "iss", json!("preview-pr-482-worker")))),
        ("preview_mismatch", api(with(claims(), "iss", json!("preview-pr-481-api")))),
        ("audience_mismatch", api(with(claims(), "aud", json!("preview-pr-481-payments")))),
        ("expired", api(with(claims(), "exp", json!(now - 100.0)))),
        ("not_yet_valid", api(with(claims(), "nbf", json!(now + 100.0)))),
        ("issued_in_future", api(with(claims(), "iat", json!(now + 100.0)))),
    ];
    for (reason, token) in &cases {
        let (code, v) = verify_registry(&reg, token);
        assert_eq!(v["reason"], *reason, "{v}");
        assert_eq!(code, Some(if *reason == "ok" { 0 } else { 1 }), "{reason}");
        if *reason == "audience_mismatch" {
            assert_eq!(v["audience"], json!(["preview-pr-481-payments"]));
            assert_eq!(v["expected_audience"], json!(["preview-pr-482-payments"]));
        }
    }

    // key_revoked: the registry lists the kid as revoked (as after a rotation).
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&reg).unwrap()).unwrap();
    doc["services"]["api"]["kids"] = json!([]);
    doc["services"]["api"].as_object_mut().unwrap().remove("signing_kid");
    doc["jwks"]["keys"] = json!(doc["jwks"]["keys"].as_array().unwrap().iter().filter(|k| k["kid"] != live.api.kid()).cloned().collect::<Vec<_>>());
    doc["revoked"] = json!([{"kid": live.api.kid(), "service": "api", "revoked_at": 1796299000, "reason": "rotation"}]);
    let rotated = live.home.path().join("rotated.json");
    std::fs::write(&rotated, doc.to_string()).unwrap();
    let (code, v) = verify_registry(rotated.to_str().unwrap(), &api(claims()));
    assert_eq!((code, v["reason"].clone()), (Some(1), "key_revoked".into()), "{v}");

    // preview_torn_down: after `pvid down`, the same valid token is refused.
    let out = pvid(live.home.path(), &["down", "pr-482"]);
    assert_eq!(out.status.code(), Some(0));
    let (code, v) = verify_registry(&reg, &api(claims()));
    assert_eq!((code, v["reason"].clone()), (Some(1), "preview_torn_down".into()), "{v}");
}

#[tokio::test]
async fn mint_then_verify_round_trips_and_the_token_is_for_one_callee() {
    let live = live_preview().await;
    let out = pvid(live.home.path(), &["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "payments", "--ttl", "2m"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    let reg = registry_path(live.home.path());
    let home = tempfile::tempdir().unwrap();
    let ok = pvid(home.path(), &["token", "verify", token.trim(), "--registry", &reg, "--audience", "preview-pr-482-payments", "--json"]);
    assert_eq!(ok.status.code(), Some(0));
    let v = json(&ok);
    assert_eq!((v["caller"].clone(), v["audience"].clone()), ("api".into(), "preview-pr-482-payments".into()));
    let replay = pvid(home.path(), &["token", "verify", token.trim(), "--registry", &reg, "--audience", "preview-pr-482-worker", "--json"]);
    assert_eq!((replay.status.code(), json(&replay)["reason"].clone()), (Some(1), "audience_mismatch".into()));
    // A lifetime over the maximum is an input error.
    let long = pvid(live.home.path(), &["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "payments", "--ttl", "2h"]);
    assert_eq!(long.status.code(), Some(2));
}
