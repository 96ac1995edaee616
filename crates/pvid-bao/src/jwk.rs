//! Transit public keys as JWKs (RFC 7517), and pvid algorithms as Transit key types.
//!
//! Transit returns an ECDSA P-256 public key as a PEM `SubjectPublicKeyInfo` and an Ed25519 key
//! as base64 of the 32 raw bytes; a JWK wants the curve point's coordinates in base64url.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use pvid_core::jose::b64_encode;
use pvid_core::{Algorithm, Jwk};

/// DER prefix of a P-256 `SubjectPublicKeyInfo` holding an uncompressed point (RFC 5480):
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The Transit key type for a pvid algorithm; `None` for RS256, which transit custody refuses.
pub fn transit_key_type(alg: Algorithm) -> Option<&'static str> {
    match alg {
        Algorithm::ES256 => Some("ecdsa-p256"),
        Algorithm::EdDSA => Some("ed25519"),
        Algorithm::RS256 => None,
    }
}

/// The public JWK (with `kid`, `alg`, `use: sig`) of a Transit public key of `key_type`.
pub fn transit_public_jwk(key_type: &str, public_key: &str, kid: &str) -> Result<Jwk, String> {
    let mut jwk = Jwk {
        kty: String::new(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        kid: Some(kid.to_owned()),
        alg: None,
        use_: Some("sig".to_owned()),
    };
    match key_type {
        "ecdsa-p256" => {
            let body: String = public_key.lines().filter(|l| !l.starts_with("-----")).map(str::trim).collect();
            let der = STANDARD.decode(body).map_err(|_| "ecdsa-p256 public key is not PEM".to_owned())?;
            let point = der
                .strip_prefix(&P256_SPKI_PREFIX[..])
                .filter(|p| p.len() == 65 && p[0] == 0x04)
                .ok_or_else(|| "ecdsa-p256 public key is not an uncompressed P-256 SubjectPublicKeyInfo".to_owned())?;
            jwk.kty = "EC".into();
            jwk.crv = Some("P-256".into());
            jwk.x = Some(b64_encode(&point[1..33]));
            jwk.y = Some(b64_encode(&point[33..65]));
            jwk.alg = Some(Algorithm::ES256.as_str().into());
        }
        "ed25519" => {
            let raw = STANDARD.decode(public_key.trim()).map_err(|_| "ed25519 public key is not base64".to_owned())?;
            if raw.len() != 32 {
                return Err(format!("ed25519 public key is {} bytes, expected 32", raw.len()));
            }
            jwk.kty = "OKP".into();
            jwk.crv = Some("Ed25519".into());
            jwk.x = Some(b64_encode(&raw));
            jwk.alg = Some(Algorithm::EdDSA.as_str().into());
        }
        other => return Err(format!("transit key type {other} is not one pvid signs with (ecdsa-p256, ed25519)")),
    }
    // Parse it once, so a key pvid could not verify with is refused here, not by every sidecar.
    jwk.to_verifying_key().map_err(|e| e.to_string())?;
    Ok(jwk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvid_core::SigningKey;

    #[test]
    fn a_p256_spki_becomes_the_same_jwk_as_the_key_it_came_from() {
        let key = SigningKey::generate(Algorithm::ES256, "api-1-abc".into()).unwrap();
        let jwk = key.public_jwk();
        let x = pvid_core::jose::b64_decode(jwk.x.as_deref().unwrap()).unwrap();
        let y = pvid_core::jose::b64_decode(jwk.y.as_deref().unwrap()).unwrap();
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.push(4);
        der.extend_from_slice(&x);
        der.extend_from_slice(&y);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(&der));
        assert_eq!(transit_public_jwk("ecdsa-p256", &pem, "api-1-abc").unwrap(), jwk);
    }

    #[test]
    fn an_ed25519_key_becomes_the_same_jwk_and_other_types_are_refused() {
        let key = SigningKey::generate(Algorithm::EdDSA, "w-1-x".into()).unwrap();
        let jwk = key.public_jwk();
        let raw = pvid_core::jose::b64_decode(jwk.x.as_deref().unwrap()).unwrap();
        assert_eq!(transit_public_jwk("ed25519", &STANDARD.encode(raw), "w-1-x").unwrap(), jwk);
        assert!(transit_public_jwk("rsa-2048", "x", "k").unwrap_err().contains("rsa-2048"));
        assert!(transit_public_jwk("ed25519", "AAAA", "k").unwrap_err().contains("3 bytes"));
    }
}
