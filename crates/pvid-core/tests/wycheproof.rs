//! Project Wycheproof vectors for ES256 (ECDSA P-256 + SHA-256, P1363 signatures) and Ed25519,
//! through pvid's verification path: the vector's public key as a JWK → `Jwk::to_verifying_key`
//! → `VerifyingKey::verify` (what `Verifier::verify` calls for a token's signature). The data
//! files and their licence are in `testdata/wycheproof/`.

use pvid_core::{Algorithm, Jwk};
use serde_json::Value;
use std::path::PathBuf;

fn load(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/wycheproof").join(file);
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s}");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The group's public key as a JWK: `publicKeyJwk` when the file has one, else built from the raw
/// coordinates (`wx`, `wy`: big-endian hex, possibly with a sign byte or fewer than 32 bytes).
fn group_jwk(group: &Value) -> Jwk {
    if !group["publicKeyJwk"].is_null() {
        return serde_json::from_value(group["publicKeyJwk"].clone()).unwrap();
    }
    let b64 = |bytes: &[u8]| pvid_core::jose::b64_encode(bytes);
    let coord = |h: &str| {
        let raw: Vec<u8> = hex(h).into_iter().skip_while(|b| *b == 0).collect();
        assert!(raw.len() <= 32, "coordinate {h}");
        [vec![0u8; 32 - raw.len()], raw].concat()
    };
    let pk = &group["publicKey"];
    let (kty, crv, x, y) = match pk["wx"].as_str() {
        Some(wx) => ("EC", "P-256", b64(&coord(wx)), Some(b64(&coord(pk["wy"].as_str().unwrap())))),
        None => ("OKP", "Ed25519", b64(&hex(pk["pk"].as_str().unwrap())), None),
    };
    serde_json::from_value(serde_json::json!({"kty": kty, "crv": crv, "x": x, "y": y})).unwrap()
}

/// Runs every vector of a file; returns (valid, invalid) counts after checking each one.
fn run(file: &str, alg: Algorithm) -> (usize, usize) {
    let doc = load(file);
    let (mut valid, mut invalid) = (0, 0);
    let mut wrong = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        let jwk = group_jwk(group);
        let key = jwk.to_verifying_key().unwrap_or_else(|e| panic!("{file}: group key refused: {e}"));
        assert_eq!(key.algorithm(), alg);
        for t in group["tests"].as_array().unwrap() {
            let (msg, sig) = (hex(t["msg"].as_str().unwrap()), hex(t["sig"].as_str().unwrap()));
            let expected = match t["result"].as_str().unwrap() {
                "valid" => true,
                "invalid" => false,
                other => panic!("tcId {}: unexpected result {other}", t["tcId"]),
            };
            if expected { valid += 1 } else { invalid += 1 }
            if key.verify(&msg, &sig) != expected {
                wrong.push(format!("tcId {} ({}; {}): expected {}", t["tcId"], t["comment"], t["flags"], t["result"]));
            }
        }
    }
    assert!(wrong.is_empty(), "{file}: {} vectors disagree:\n{}", wrong.len(), wrong.join("\n"));
    (valid, invalid)
}

#[test]
fn every_wycheproof_es256_p1363_vector_gives_its_expected_result() {
    assert_eq!(run("ecdsa_secp256r1_sha256_p1363_test.json", Algorithm::ES256), (173, 89));
}

#[test]
fn every_wycheproof_ed25519_vector_gives_its_expected_result() {
    assert_eq!(run("ed25519_test.json", Algorithm::EdDSA), (88, 63));
}
