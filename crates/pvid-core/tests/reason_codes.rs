//! One crafted token (or request) per reason code of DESIGN.md, each asserted exactly.

use pvid_core::{
    Algorithm, CallRule, Jwks, Policy, PreviewState, Registry, ReasonCode, RevokedKey, ServiceEntry, ServiceName,
    SigningKey, Verifier, extract_bearer, sign_compact,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const NOW: f64 = 1_796_299_200.0;

struct Fixture {
    reg: Registry,
    api: SigningKey,
    worker: SigningKey,
    legacy: SigningKey,
    old_api: SigningKey,
}

fn svc(s: &str) -> ServiceName {
    s.parse().unwrap()
}

fn fixture() -> Fixture {
    let api = SigningKey::generate(Algorithm::ES256, "api-2-abc".into()).unwrap();
    let worker = SigningKey::generate(Algorithm::EdDSA, "worker-1-def".into()).unwrap();
    let legacy = SigningKey::generate(Algorithm::RS256, "legacy-1-ghi".into()).unwrap();
    let old_api = SigningKey::generate(Algorithm::ES256, "api-1-old".into()).unwrap();
    let entry = |s: &str, kids: Vec<&str>| ServiceEntry {
        issuer: format!("preview-pr-482-{s}"),
        audience: format!("preview-pr-482-{s}"),
        address: None,
        kids: kids.into_iter().map(str::to_owned).collect(),
        accept_preview_audience: false,
        signing_kid: None,
    };
    let mut services = BTreeMap::new();
    services.insert(svc("api"), entry("api", vec!["api-2-abc"]));
    services.insert(svc("worker"), entry("worker", vec!["worker-1-def"]));
    services.insert(svc("legacy"), entry("legacy", vec!["legacy-1-ghi"]));
    services.insert(svc("payments"), entry("payments", vec![]));
    let reg = Registry {
        preview: "pr-482".parse().unwrap(),
        state: PreviewState::Active,
        version: 3,
        algorithm: Algorithm::ES256,
        token_ttl_s: 300,
        services,
        policy: vec![CallRule { caller: svc("api"), callee: svc("payments"), methods: Some(vec!["POST".into()]), path: Some("/charge".into()) }],
        jwks: Jwks { keys: vec![api.public_jwk(), worker.public_jwk(), legacy.public_jwk()] },
        revoked: vec![RevokedKey { kid: "api-1-old".into(), service: svc("api"), revoked_at: 1_796_290_000, reason: "rotation".into() }],
        retiring: vec![],
        shared_credentials: false,
    };
    Fixture { reg, api, worker, legacy, old_api }
}

fn claims(from: &str) -> Value {
    json!({"iss": format!("preview-pr-482-{from}"), "sub": from, "aud": "preview-pr-482-payments",
           "iat": NOW - 10.0, "nbf": NOW - 10.0, "exp": NOW + 290.0, "jti": "j1"})
}

fn header(key: &SigningKey) -> Value {
    json!({"alg": key.algorithm().as_str(), "typ": "JWT", "kid": key.kid()})
}

fn sign(key: &SigningKey, h: Value, c: Value) -> String {
    sign_compact(key, &h, &c).unwrap()
}

fn verify(f: &Fixture, token: &str) -> Result<pvid_core::Verified, ReasonCode> {
    Verifier::for_service(&f.reg, &svc("payments")).unwrap().verify(token, NOW).map_err(|r| r.reason)
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

#[test]
fn accepts_a_valid_token_of_each_algorithm() {
    let f = fixture();
    for (key, from) in [(&f.api, "api"), (&f.worker, "worker"), (&f.legacy, "legacy")] {
        let v = verify(&f, &sign(key, header(key), claims(from))).unwrap();
        assert_eq!(v.caller.as_str(), from);
        assert_eq!(v.kid, key.kid());
    }
}

#[test]
fn each_token_reason_code_from_a_crafted_token() {
    let f = fixture();
    let api = |c: Value| sign(&f.api, header(&f.api), c);
    let mut cases: Vec<(ReasonCode, String)> = vec![
        (ReasonCode::Malformed, "not.a.token".into()),
        (ReasonCode::Malformed, api(with(claims("api"), "exp", json!("1796299490")))),
        (ReasonCode::TokenTooLarge, format!("{}.{}.{}", "a".repeat(4000), "b".repeat(4000), "c".repeat(200))),
        (ReasonCode::AlgNotAllowed, sign(&f.api, json!({"alg": "HS256", "kid": "api-2-abc"}), claims("api"))),
        (ReasonCode::AlgNotAllowed, sign(&f.api, json!({"alg": "EdDSA", "kid": "api-2-abc"}), claims("api"))),
        (ReasonCode::UnknownKid, sign(&f.api, json!({"alg": "ES256", "kid": "api-9-zzz"}), claims("api"))),
        (ReasonCode::KeyRevoked, sign(&f.old_api, header(&f.old_api), claims("api"))),
        (ReasonCode::IssuerUnknown, api(with(claims("api"), "iss", json!("https://evil.example")))),
        (ReasonCode::IssuerUnknown, api(with(claims("api"), "iss", json!("preview-pr-482-ghost")))),
        (ReasonCode::IssuerKeyMismatch, api(with(claims("api"), "iss", json!("preview-pr-482-worker")))),
        (ReasonCode::PreviewMismatch, api(with(claims("api"), "iss", json!("preview-pr-481-api")))),
        (ReasonCode::PreviewMismatch, api(with(claims("api"), "preview", json!("pr-481")))),
        (ReasonCode::AudienceMismatch, api(with(claims("api"), "aud", json!("preview-pr-481-payments")))),
        (ReasonCode::AudienceMismatch, api(with(claims("api"), "aud", json!("preview-pr-482")))),
        (ReasonCode::Expired, api(with(claims("api"), "exp", json!(NOW - 61.0)))),
        (ReasonCode::NotYetValid, api(with(claims("api"), "nbf", json!(NOW + 61.0)))),
        (ReasonCode::IssuedInFuture, api(with(with(claims("api"), "iat", json!(NOW + 120.0)), "nbf", json!(NOW)))),
    ];
    // A valid signature over other bytes.
    let good = api(claims("api"));
    let other = api(with(claims("api"), "jti", json!("j2")));
    let forged = format!("{}.{}", good.rsplit_once('.').unwrap().0, other.rsplit_once('.').unwrap().1);
    cases.push((ReasonCode::BadSignature, forged));
    for (want, token) in &cases {
        assert_eq!(verify(&f, token).map(|v| v.caller), Err(*want), "{want}");
    }
}

#[test]
fn a_token_from_another_preview_names_the_preview_not_the_kid() {
    let f = fixture();
    let stranger = SigningKey::generate(Algorithm::ES256, "api-1-xyz".into()).unwrap();
    let c = with(with(claims("api"), "iss", json!("preview-pr-481-api")), "preview", json!("pr-481"));
    let r = Verifier::for_service(&f.reg, &svc("payments")).unwrap().verify(&sign(&stranger, header(&stranger), c), NOW).unwrap_err();
    assert_eq!(r.reason, ReasonCode::PreviewMismatch);
    assert!(r.detail.contains("pr-481"), "{}", r.detail);
}

#[test]
fn a_torn_down_preview_refuses_even_valid_tokens() {
    let mut f = fixture();
    let token = sign(&f.api, header(&f.api), claims("api"));
    f.reg.state = PreviewState::TornDown;
    assert_eq!(verify(&f, &token).unwrap_err(), ReasonCode::PreviewTornDown);
    f.reg.state = PreviewState::TearingDown;
    assert_eq!(verify(&f, &token).unwrap_err(), ReasonCode::PreviewTornDown);
}

#[test]
fn preview_audience_is_accepted_only_where_the_registry_allows_it() {
    let mut f = fixture();
    let token = sign(&f.api, header(&f.api), with(claims("api"), "aud", json!("preview-pr-482")));
    assert_eq!(verify(&f, &token).unwrap_err(), ReasonCode::AudienceMismatch);
    f.reg.services.get_mut(&svc("payments")).unwrap().accept_preview_audience = true;
    assert_eq!(verify(&f, &token).unwrap().audience, "preview-pr-482");
}

#[test]
fn request_level_reason_codes() {
    let t = b"Bearer a.b.c";
    assert_eq!(extract_bearer(&[]).unwrap_err().reason, ReasonCode::MissingToken);
    assert_eq!(extract_bearer(&[t, t]).unwrap_err().reason, ReasonCode::MultipleTokens);
    assert_eq!(extract_bearer(&[b"Bearer a.b.c, Bearer d.e.f"]).unwrap_err().reason, ReasonCode::MultipleTokens);
    assert_eq!(extract_bearer(&[b"a.b.c"]).unwrap_err().reason, ReasonCode::Malformed);
    assert_eq!(extract_bearer(&[b"Basic dXNlcjpwYXNz"]).unwrap_err().reason, ReasonCode::Malformed);
    assert_eq!(extract_bearer(&[b"Bearer "]).unwrap_err().reason, ReasonCode::Malformed);
    assert_eq!(extract_bearer(&[b"bEaReR a.b.c"]).unwrap(), "a.b.c");
    let f = fixture();
    let policy = Policy::new(f.reg.policy.clone());
    assert!(policy.check(&svc("api"), &svc("payments"), "POST", "/charge").is_ok());
    assert!(policy.check(&svc("worker"), &svc("payments"), "POST", "/charge").is_err());
    assert_eq!(ReasonCode::PolicyDenied.http_status(), 403);
    assert_eq!(ReasonCode::Expired.http_status(), 401);
}

#[test]
fn every_reason_code_is_covered_by_these_tests() {
    // Keep this list in sync with the tests above: a new code must get a crafted case.
    let covered = [
        "ok", "missing_token", "multiple_tokens", "malformed", "token_too_large", "alg_not_allowed", "unknown_kid",
        "bad_signature", "issuer_unknown", "issuer_key_mismatch", "audience_mismatch", "preview_mismatch", "expired",
        "not_yet_valid", "issued_in_future", "key_revoked", "preview_torn_down", "policy_denied",
    ];
    let all: Vec<&str> = ReasonCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(all, covered);
}

#[test]
fn a_non_finite_clock_fails_closed() {
    let f = fixture();
    let token = sign(&f.api, header(&f.api), claims("api"));
    let v = Verifier::for_service(&f.reg, &svc("payments")).unwrap();
    assert!(v.verify(&token, NOW).is_ok());
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(v.verify(&token, bad).unwrap_err().reason, ReasonCode::Expired);
    }
}

#[test]
fn bare_jwks_binds_kids_by_their_exact_form_and_refuses_ambiguity() {
    let a = SigningKey::generate(Algorithm::ES256, "a-1-77n".into()).unwrap();
    let jwks = Jwks { keys: vec![a.public_jwk()] };
    let preview: pvid_core::PreviewId = "p".parse().unwrap();
    let issuers = |s: &[&str]| s.iter().map(|x| format!("preview-p-{x}")).collect::<Vec<_>>();
    // Service `a-1` does not own `a-1-77n` (`77n` is not a generation number); `a` does.
    let v = Verifier::from_jwks(&jwks, &preview, &issuers(&["a", "a-1", "b"]), vec!["preview-p-b".into()]).unwrap();
    let token = sign(&a, json!({"alg": "ES256", "kid": "a-1-77n"}), json!({"iss": "preview-p-a", "aud": "preview-p-b", "exp": NOW + 100.0}));
    assert_eq!(v.verify(&token, NOW).unwrap().caller.as_str(), "a");
    let forged = sign(&a, json!({"alg": "ES256", "kid": "a-1-77n"}), json!({"iss": "preview-p-a-1", "aud": "preview-p-b", "exp": NOW + 100.0}));
    assert_eq!(v.verify(&forged, NOW).unwrap_err().reason, ReasonCode::IssuerKeyMismatch);
    // `a-1-2` fits both `a` (generation 1, suffix 2) and `a-1` (generation 2): refused.
    let amb = SigningKey::generate(Algorithm::ES256, "a-1-2".into()).unwrap();
    let err = Verifier::from_jwks(&Jwks { keys: vec![amb.public_jwk()] }, &preview, &issuers(&["a", "a-1"]), vec![]).unwrap_err();
    assert!(err.to_string().contains("could belong to any of p/a, p/a-1"), "{err}");
    // A key of a service nobody trusts is left out: its tokens are unknown_kid.
    let b = SigningKey::generate(Algorithm::ES256, "b-1-xyz".into()).unwrap();
    let both = Jwks { keys: vec![a.public_jwk(), b.public_jwk()] };
    let v = Verifier::from_jwks(&both, &preview, &issuers(&["b"]), vec!["preview-p-b".into()]).unwrap();
    assert_eq!(v.verify(&token, NOW).unwrap_err().reason, ReasonCode::UnknownKid);
}

#[test]
fn a_rotated_out_key_is_accepted_until_its_overlap_ends_then_key_revoked_also_from_the_cache() {
    let mut f = fixture();
    // api rotated: api-3-new signs, api-2-abc is retiring until NOW + 100.
    let new_api = SigningKey::generate(Algorithm::ES256, "api-3-new".into()).unwrap();
    f.reg.jwks.keys.push(new_api.public_jwk());
    let entry = f.reg.services.get_mut(&svc("api")).unwrap();
    entry.kids.push("api-3-new".into());
    entry.signing_kid = Some("api-3-new".into());
    let until = NOW as i64 + 100;
    f.reg.retiring.push(pvid_core::RetiringKey { kid: "api-2-abc".into(), service: svc("api"), until });
    let reg = Registry::from_json(&serde_json::to_vec(&f.reg).unwrap()).expect("a registry mid-rotation is valid");
    assert_eq!(reg.signing_kid_of(&svc("api")), Some("api-3-new"));

    let verifier = Verifier::for_service(&reg, &svc("payments")).unwrap();
    let old = sign(&f.api, header(&f.api), claims("api"));
    let new = sign(&new_api, header(&new_api), claims("api"));
    let at = |token: &str, t: f64| verifier.verify(token, t).map(|v| v.kid).map_err(|r| r.reason);
    assert_eq!(at(&old, until as f64 - 0.001), Ok("api-2-abc".to_owned()));
    assert_eq!(at(&old, until as f64), Err(ReasonCode::KeyRevoked));
    assert_eq!(at(&new, until as f64 + 1.0), Ok("api-3-new".to_owned()));

    // A cache hit from inside the overlap does not outlive it.
    let cache = pvid_core::cache::TokenCache::new(16);
    let key = pvid_core::cache::TokenCache::key(&old);
    cache.insert(key, verifier.verify(&old, NOW).unwrap(), NOW);
    assert!(cache.get(&key, until as f64 - 1.0, &verifier).is_some());
    assert!(cache.get(&key, until as f64, &verifier).is_none());
}

#[test]
fn a_registry_whose_rotation_fields_contradict_its_keys_is_refused() {
    let f = fixture();
    let mut bad = f.reg.clone();
    bad.services.get_mut(&svc("api")).unwrap().signing_kid = Some("worker-1-def".into());
    assert!(Registry::from_json(&serde_json::to_vec(&bad).unwrap()).unwrap_err().contains("signing kid"));
    let mut bad = f.reg.clone();
    bad.retiring.push(pvid_core::RetiringKey { kid: "worker-1-def".into(), service: svc("api"), until: 1 });
    assert!(Registry::from_json(&serde_json::to_vec(&bad).unwrap()).unwrap_err().contains("not a live kid"));
    let mut bad = f.reg.clone();
    bad.services.get_mut(&svc("api")).unwrap().signing_kid = Some("api-2-abc".into());
    bad.retiring.push(pvid_core::RetiringKey { kid: "api-2-abc".into(), service: svc("api"), until: 1 });
    assert!(Registry::from_json(&serde_json::to_vec(&bad).unwrap()).unwrap_err().contains("both retiring and the signing key"));
}
