//! Runs every case of `testdata/cases` (crafted tokens from real-world JWT bugs) through the
//! library and checks the expected result and reason code.

use pvid_core::key::Jwks;
use pvid_core::{PreviewId, ReasonCode, Verifier, extract_bearer};
use serde_json::Value;
use std::path::PathBuf;

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/cases")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(cases_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn verifier(jwks_file: &str) -> Verifier {
    let harness: Value = serde_json::from_str(&read("harness.json")).unwrap();
    let preview: PreviewId = harness["preview"].as_str().unwrap().parse().unwrap();
    let issuers: Vec<String> = harness["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("preview-{preview}-{}", s.as_str().unwrap()))
        .collect();
    let audiences: Vec<String> =
        harness["accepted_audiences"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    let jwks: Jwks = serde_json::from_str(&read(jwks_file)).unwrap();
    Verifier::from_jwks(&jwks, &preview, &issuers, audiences).unwrap()
}

/// (result, reason, identity) as the cases spell them.
fn outcome(r: Result<pvid_core::Verified, pvid_core::Rejection>) -> (String, String, Option<String>) {
    match r {
        Ok(v) => ("accept".into(), "ok".into(), Some(v.caller.to_string())),
        Err(rej) => ("reject".into(), rej.reason.as_str().into(), None),
    }
}

fn check(case: &Value, got: (String, String, Option<String>)) {
    let id = case["id"].as_str().unwrap();
    let want = (
        case["expected"].as_str().unwrap().to_owned(),
        case["reason"].as_str().unwrap().to_owned(),
        case.get("identity").and_then(Value::as_str).map(str::to_owned),
    );
    assert_eq!(got, want, "case {id}");
}

#[test]
fn every_token_case_gives_its_expected_result_and_reason() {
    let cases: Vec<Value> = serde_json::from_str(&read("cases.json")).unwrap();
    let mut ran = 0;
    for case in &cases {
        let now = case["now"].as_f64().unwrap();
        let v = verifier(case["jwks_file"].as_str().unwrap());
        let token = read(case["token_file"].as_str().unwrap());
        let token = token.trim();
        if let Some(req) = case.get("request") {
            // Request-level case: take the token from the literal headers, as a sidecar would.
            let values: Vec<&[u8]> = req["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("authorization"))
                .map(|h| h[1].as_str().unwrap().as_bytes())
                .collect();
            let got = extract_bearer(&values).and_then(|t| v.verify(t, now));
            check(case, outcome(got));
        } else if let Some(refetch) = case.get("jwks_refetch_file") {
            // Rotation: unknown to the old key set, accepted once the new set is loaded.
            let before = v.verify(token, now).unwrap_err();
            assert_eq!(before.reason, ReasonCode::UnknownKid, "case {}", case["id"]);
            check(case, outcome(verifier(refetch.as_str().unwrap()).verify(token, now)));
        } else if let Some(burst) = case.get("burst_file") {
            let burst = read(burst.as_str().unwrap());
            let mut n = 0;
            for t in burst.lines().filter(|l| !l.trim().is_empty()) {
                check(case, outcome(v.verify(t.trim(), now)));
                n += 1;
            }
            assert_eq!(n, 200, "burst size");
            let then = &case["then"];
            let then_token = read(then["token_file"].as_str().unwrap());
            let got = outcome(v.verify(then_token.trim(), now));
            assert_eq!(got, ("accept".into(), "ok".into(), Some("api".into())), "case {} then", case["id"]);
        } else {
            check(case, outcome(v.verify(token, now)));
        }
        ran += 1;
    }
    assert_eq!(ran, cases.len());
    assert!(ran >= 40, "expected the whole corpus, ran {ran}");
}

#[test]
fn high_s_twins_verify_to_the_same_claims() {
    let v = verifier("jwks/pr-1.json");
    let a = read("tokens/C15a.jwt");
    let b = read("tokens/C15b.jwt");
    assert_ne!(a.trim(), b.trim());
    let (va, vb) = (v.verify(a.trim(), 1796299200.0).unwrap(), v.verify(b.trim(), 1796299200.0).unwrap());
    assert_eq!(va.jti, vb.jti, "dedup keys on jti, not on token text");
}
