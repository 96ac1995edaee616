//! Mint and verify per algorithm (cold, and a verified-token cache hit), next to the raw aws-lc-rs
//! signature check of the same key (the floor a cold verification cannot go below), and policy
//! evaluation with 10 and 1,000 rules.
//!
//! Run: `cargo bench -p pvid-core --bench jwt`. Compare within one run only (ratios, not times).

use std::collections::BTreeMap;
use std::hint::black_box;

use aws_lc_rs::signature;
use criterion::{Criterion, criterion_group, criterion_main};
use pvid_core::cache::TokenCache;
use pvid_core::jose::b64_decode;
use pvid_core::{
    Algorithm, CallRule, Jwks, MintRequest, Policy, PreviewState, Registry, ServiceEntry, ServiceName, SigningKey,
    Verifier, mint,
};

const NOW: f64 = 1_796_299_200.0;

fn svc(s: &str) -> ServiceName {
    s.parse().expect("service name")
}

fn registry(key: &SigningKey) -> Registry {
    let entry = |s: &str, kids: Vec<String>| ServiceEntry {
        issuer: format!("preview-pr-482-{s}"),
        audience: format!("preview-pr-482-{s}"),
        address: None,
        kids,
        accept_preview_audience: false,
        signing_kid: None,
    };
    let mut services = BTreeMap::new();
    services.insert(svc("api"), entry("api", vec![key.kid().to_owned()]));
    services.insert(svc("payments"), entry("payments", vec![]));
    Registry {
        preview: "pr-482".parse().expect("preview"),
        state: PreviewState::Active,
        version: 1,
        algorithm: key.algorithm(),
        token_ttl_s: 300,
        services,
        policy: vec![],
        jwks: Jwks { keys: vec![key.public_jwk()] },
        revoked: vec![],
        retiring: vec![],
        shared_credentials: false,
    }
}

fn bench_tokens(c: &mut Criterion) {
    for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
        let key = SigningKey::generate(alg, "api-1-abc".into()).expect("key");
        let reg = registry(&key);
        let verifier = Verifier::for_service(&reg, &svc("payments")).expect("verifier");
        let (api, preview) = (svc("api"), reg.preview.clone());
        let req = MintRequest { from: &api, preview: &preview, audience: "preview-pr-482-payments", ttl_s: 300, now: NOW };
        let token = mint(&key, &req).expect("mint");
        assert!(verifier.verify(&token, NOW).is_ok());

        let mut g = c.benchmark_group(format!("{alg}"));
        g.bench_function("mint", |b| b.iter(|| mint(&key, black_box(&req)).expect("mint")));
        g.bench_function("verify_cold", |b| b.iter(|| verifier.verify(black_box(&token), NOW).expect("valid")));
        // What a sidecar pays for a token it has seen: hash the token, look it up, re-check
        // expiry, key liveness and audience (pvid_core::cache).
        let cache = TokenCache::new(10_000);
        cache.insert(TokenCache::key(&token), verifier.verify(&token, NOW).expect("valid"), NOW);
        g.bench_function("verify_cache_hit", |b| {
            b.iter(|| cache.get(&TokenCache::key(black_box(&token)), NOW, &verifier).expect("hit"))
        });

        // The floor: the signature check alone, on a key parsed once, as pvid keeps its keys.
        let (input, sig) = token.rsplit_once('.').expect("three segments");
        let sig = b64_decode(sig).expect("b64");
        let jwk = key.public_jwk();
        let parsed = match alg {
            Algorithm::ES256 => {
                let mut p = vec![4u8];
                p.extend(b64_decode(jwk.x.as_deref().expect("x")).expect("x"));
                p.extend(b64_decode(jwk.y.as_deref().expect("y")).expect("y"));
                signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p).expect("key")
            }
            Algorithm::EdDSA => {
                signature::ParsedPublicKey::new(&signature::ED25519, b64_decode(jwk.x.as_deref().expect("x")).expect("x"))
                    .expect("key")
            }
            Algorithm::RS256 => signature::RsaPublicKeyComponents {
                n: b64_decode(jwk.n.as_deref().expect("n")).expect("n"),
                e: b64_decode(jwk.e.as_deref().expect("e")).expect("e"),
            }
            .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
            .expect("key"),
        };
        g.bench_function("raw_aws_lc_verify", |b| {
            b.iter(|| parsed.verify_sig(black_box(input.as_bytes()), black_box(&sig)).expect("valid"))
        });
        g.finish();
    }
}

fn bench_policy(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy");
    for n in [10usize, 1000] {
        // n rules over n/10 callers; the allowed call is the last rule.
        let rules: Vec<CallRule> = (0..n)
            .map(|i| CallRule {
                caller: svc(&format!("svc{}", i / 10)),
                callee: svc("payments"),
                methods: Some(vec!["POST".into()]),
                path: Some(format!("/route{i}")),
            })
            .collect();
        let last = format!("/route{}/item", n - 1);
        let caller = svc(&format!("svc{}", (n - 1) / 10));
        let policy = Policy::new(rules);
        let callee = svc("payments");
        assert!(policy.check(&caller, &callee, "POST", &last).is_ok());
        g.bench_function(format!("check_{n}_rules"), |b| {
            b.iter(|| policy.check(black_box(&caller), &callee, "POST", black_box(&last)).expect("allowed"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_tokens, bench_policy);
criterion_main!(benches);
