//! Fuzzing entry points. The cargo-fuzz targets in `fuzz/fuzz_targets/` are one-line wrappers
//! around these functions, and `tests/fuzz_regressions.rs` replays every saved input through the
//! same functions in the normal test suite, so a crash found once stays fixed.
//!
//! Each function takes arbitrary bytes, runs one parser of hostile input, and checks invariants
//! that must hold whatever the input: a panic (from the code under test or from an `assert!`
//! here) is a finding. Not part of the public API (`#[doc(hidden)]` at the module).
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use serde_json::Value;

use crate::jose::b64_encode;
use crate::key::{Algorithm, Jwks, SigningKey};
use crate::policy::{CallRule, CallSpec, Policy, normalize_path};
use crate::reason::ReasonCode;
use crate::registry::Registry;
use crate::spec::PreviewSpec;
use crate::token::{Verifier, extract_bearer};
use crate::{PreviewId, ServiceName};

/// The instant every fuzzed token is verified at (2026-12-03T12:00:00Z).
pub const NOW: f64 = 1_796_299_200.0;

/// Separates the header from the claims in a structured [`token`] input.
pub const SPLIT: u8 = 0xff;

struct Fixture {
    api: SigningKey,
    web: SigningKey,
    verifier: Verifier,
}

/// Preview `pr-1`, callee `orders`, callers `api` (ES256, kid `pr-1-api-1`) and `web` (EdDSA,
/// kid `pr-1-web-1`), as in `testdata/cases`. Keys are generated once per process.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let api = SigningKey::generate(Algorithm::ES256, "pr-1-api-1".into()).unwrap();
        let web = SigningKey::generate(Algorithm::EdDSA, "pr-1-web-1".into()).unwrap();
        let preview: PreviewId = "pr-1".parse().unwrap();
        let issuers: Vec<String> = ["api", "web", "orders"].iter().map(|s| format!("preview-pr-1-{s}")).collect();
        let jwks = Jwks { keys: vec![api.public_jwk(), web.public_jwk()] };
        let audiences = vec!["preview-pr-1".to_owned(), "preview-pr-1-orders".to_owned()];
        let verifier = Verifier::from_jwks(&jwks, &preview, &issuers, audiences).unwrap();
        Fixture { api, web, verifier }
    })
}

/// Token parsing and verification.
///
/// The first byte picks the mode. Even: the rest is an `Authorization` value (or a bare token)
/// and goes through extraction and verification as received. Odd: the rest is `header 0xff
/// claims`; both are base64url-encoded as they are and signed with a real key (api's when the
/// mode byte is 1 mod 4, web's otherwise), so the fuzzer reaches the checks behind the signature.
///
/// Invariants: a refusal never quotes the whole token; a signed token that verifies names the
/// service whose key signed it (a key never vouches for another service).
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    if mode % 2 == 0 {
        let values = [rest];
        let result = extract_bearer(&values).and_then(|t| f.verifier.verify(t, NOW));
        // Only a token-sized text can be "quoted": an input of whitespace trims to "", which
        // every detail contains (a harness false positive the fuzzer found, not a leak).
        if let (Err(rej), Ok(text)) = (&result, std::str::from_utf8(rest))
            && text.trim().len() > 64
        {
            assert!(!rej.detail.contains(text.trim()), "a refusal quotes the whole token");
        }
        return;
    }
    let (header, claims) = match rest.iter().position(|b| *b == SPLIT) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b"{}"[..]),
    };
    let (key, service) = if mode % 4 == 1 { (&f.api, "api") } else { (&f.web, "web") };
    let signing_input = format!("{}.{}", b64_encode(header), b64_encode(claims));
    let sig = key.sign(signing_input.as_bytes()).unwrap();
    let token = format!("{signing_input}.{}", b64_encode(&sig));
    match f.verifier.verify(&token, NOW) {
        Ok(v) => {
            assert_eq!(v.caller.as_str(), service, "a token signed by {service}'s key verified as another caller");
            assert_eq!(v.kid, key.kid());
        }
        Err(rej) => {
            assert_ne!(rej.reason, ReasonCode::Ok);
            assert!(!rej.detail.contains(&token), "a refusal quotes the whole token");
        }
    }
}

/// JWKS and registry documents.
///
/// Invariants: a JWK that yields a verifying key yields one of the algorithm its members imply;
/// a registry that parses survives a serialise/parse round trip unchanged, and every service of
/// it either gets a verifier or a typed error.
pub fn jwks(data: &[u8]) {
    if let Ok(set) = serde_json::from_slice::<Jwks>(data) {
        for jwk in &set.keys {
            if let Ok(vk) = jwk.to_verifying_key() {
                assert_eq!(Some(vk.algorithm()), jwk.algorithm().ok());
                assert!(!vk.verify(b"message", &[0u8; 64]), "an all-zero signature verified");
            }
        }
    }
    if let Ok(reg) = Registry::from_json(data) {
        let again = Registry::from_json(&serde_json::to_vec(&reg).unwrap()).unwrap();
        assert_eq!(again, reg, "registry round trip");
        for svc in reg.services.keys() {
            let _ = Verifier::for_service(&reg, svc);
        }
    }
}

/// The preview spec (YAML).
///
/// Invariants: an error names a line inside the text (or none) and a field; a spec that parses
/// has at least one service, only calls to its own services, and a token lifetime within limits.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match PreviewSpec::parse("fuzz.yaml", text) {
        Ok(spec) => {
            assert!(!spec.services.is_empty());
            let names: Vec<&ServiceName> = spec.services.iter().map(|s| &s.name).collect();
            for rule in spec.policy_rules() {
                assert!(names.contains(&&rule.callee), "policy names an unknown callee");
            }
            let secs = spec.token_ttl.as_secs();
            assert!((1..=crate::token::MAX_TTL_S).contains(&secs));
            let _ = spec.config();
        }
        Err(e) => {
            let lines = text.split('\n').count() + 1;
            assert!(e.line.is_none_or(|l| l >= 1 && l <= lines), "error line {:?} outside the text", e.line);
            assert!(!e.field.is_empty());
        }
    }
}

/// Request path normalisation and prefix matching, plus call-rule parsing.
///
/// Invariants: a normalised path starts with `/`, has no empty, `.` or `..` segment and no
/// trailing slash (except the root), holds only visible ASCII, and normalises to itself; a
/// `/charge` rule admits exactly `/charge` and the paths under `/charge/`.
pub fn policy_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let _ = CallSpec::parse(raw);
    // A request target's query is not part of the path (the policy drops it the same way).
    let raw_path = raw.split_once('?').map_or(raw, |(p, _)| p);
    let Ok(path) = normalize_path(raw_path) else { return };
    assert!(path.starts_with('/'));
    assert!(path == "/" || !path.ends_with('/'), "trailing slash kept: {path:?}");
    assert!(path.bytes().all(|c| (0x21..0x7f).contains(&c) && c != b'\\'), "bad byte in {path:?}");
    for seg in path.split('/').skip(1) {
        assert!(path == "/" || !matches!(seg, "" | "." | ".."), "segment {seg:?} left in {path:?}");
    }
    assert_eq!(normalize_path(&path).as_deref(), Ok(path.as_str()), "not idempotent");
    let api: ServiceName = "api".parse().unwrap();
    let payments: ServiceName = "payments".parse().unwrap();
    let policy = Policy::new(vec![CallRule {
        caller: api.clone(),
        callee: payments.clone(),
        methods: Some(vec!["POST".into()]),
        path: Some("/charge".into()),
    }]);
    let allowed = policy.check(&api, &payments, "POST", raw);
    let expected = path == "/charge" || path.starts_with("/charge/");
    assert_eq!(allowed.is_ok(), expected, "{raw:?} normalised to {path:?}");
    if let Ok(matched) = allowed {
        assert_eq!(matched, path);
    }
}

/// A well-formed structured [`token`] input (mode 1: api's key) for the given header and claims,
/// used to seed the corpus.
pub fn structured_input(header: &Value, claims: &Value) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(header.to_string().as_bytes());
    out.push(SPLIT);
    out.extend_from_slice(claims.to_string().as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_structured_input_verifies_as_the_signing_service() {
        let header = json!({"alg": "ES256", "kid": "pr-1-api-1"});
        let claims = json!({"iss": "preview-pr-1-api", "aud": "preview-pr-1-orders", "exp": NOW + 60.0});
        token(&structured_input(&header, &claims));
        // The same claims signed by web's key name api as issuer: refused, never accepted as api.
        let mut web = structured_input(&json!({"alg": "EdDSA", "kid": "pr-1-web-1"}), &claims);
        web[0] = 3;
        token(&web);
    }

    #[test]
    fn every_entry_point_takes_empty_and_garbage_input() {
        for data in [&b""[..], b"\x00", b"\x01", b"\xff\xfe", b"{", b"/..", b"services:\n  - x"] {
            token(data);
            jwks(data);
            spec(data);
            policy_path(data);
        }
    }
}
