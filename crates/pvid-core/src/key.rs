//! Key pairs and public keys. Private keys live as PKCS#8 bytes inside [`SigningKey`], which is
//! zeroised on drop and never printed; public keys travel as JWKs (RFC 7517).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

use crate::jose::{b64_decode, b64_encode};

/// A signature algorithm pvid issues and accepts. The key decides it, never a token header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256, JOSE r‖s signatures (default, widest interop).
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256, 2048-bit keys (legacy peers).
    RS256,
}

impl Algorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
        }
    }
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ES256" => Ok(Algorithm::ES256),
            "EdDSA" => Ok(Algorithm::EdDSA),
            "RS256" => Ok(Algorithm::RS256),
            _ => Err(format!("unsupported algorithm `{}` (use ES256, EdDSA or RS256)", s.escape_debug())),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Errors from key generation or loading. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The random generator or the crypto library failed to make a key.
    #[error("could not generate a {0} key")]
    Generate(Algorithm),
    /// Stored private key bytes do not parse as a PKCS#8 key of the algorithm.
    #[error("stored private key is not a valid {0} PKCS#8 key")]
    Load(Algorithm),
    /// Signing failed.
    #[error("signing failed")]
    Sign,
    /// A JWK cannot be used as a verification key.
    #[error("unusable JWK: {0}")]
    Jwk(String),
}

/// Fills `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // Invariant: the system RNG only fails when the OS has no entropy source, where no key could
    // be made either; a zero-filled id is then still unique enough not to matter.
    let _ = SystemRandom::new().fill(&mut buf);
    buf
}

/// A random lower-case alphanumeric string (kid suffixes).
pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    random_bytes(n).iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

enum Inner {
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// A private key able to sign tokens. Debug output is redacted.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    pkcs8: Zeroizing<Vec<u8>>,
    inner: Inner,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({} {}, private ***)", self.alg, self.kid)
    }
}

impl SigningKey {
    /// Generates a fresh key pair.
    pub fn generate(alg: Algorithm, kid: String) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        let pkcs8: Vec<u8> = match alg {
            Algorithm::ES256 => EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| KeyError::Generate(alg))?
                .as_ref()
                .to_vec(),
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Generate(alg))?
                .as_ref()
                .to_vec(),
            Algorithm::RS256 => {
                let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| KeyError::Generate(alg))?;
                kp.as_der().map_err(|_| KeyError::Generate(alg))?.as_ref().to_vec()
            }
        };
        Self::from_pkcs8(alg, kid, Zeroizing::new(pkcs8)).map_err(|_| KeyError::Generate(alg))
    }

    /// Loads a key from PKCS#8 DER bytes.
    pub fn from_pkcs8(alg: Algorithm, kid: String, pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let inner = match alg {
            Algorithm::ES256 => Inner::Ec(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                    .map_err(|_| KeyError::Load(alg))?,
            ),
            Algorithm::EdDSA => {
                Inner::Ed(Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Load(alg))?)
            }
            Algorithm::RS256 => Inner::Rsa(RsaKeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Load(alg))?),
        };
        Ok(SigningKey { alg, kid, pkcs8, inner })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The PKCS#8 bytes, for the secret store only.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Signs `msg`, returning the JOSE signature bytes (r‖s for ES256).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ec(kp) => Ok(kp.sign(&rng, msg).map_err(|_| KeyError::Sign)?.as_ref().to_vec()),
            Inner::Ed(kp) => Ok(kp.sign(msg).as_ref().to_vec()),
            Inner::Rsa(kp) => {
                let mut sig = vec![0u8; kp.public_modulus_len()];
                kp.sign(&signature::RSA_PKCS1_SHA256, &rng, msg, &mut sig).map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
        }
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = Jwk {
            kty: String::new(),
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            kid: Some(self.kid.clone()),
            alg: Some(self.alg.as_str().to_owned()),
            use_: Some("sig".to_owned()),
        };
        match &self.inner {
            Inner::Ec(kp) => {
                // Uncompressed SEC1 point: 0x04 ‖ x ‖ y.
                let p = kp.public_key().as_ref();
                jwk.kty = "EC".into();
                jwk.crv = Some("P-256".into());
                jwk.x = Some(b64_encode(&p[1..33]));
                jwk.y = Some(b64_encode(&p[33..65]));
            }
            Inner::Ed(kp) => {
                jwk.kty = "OKP".into();
                jwk.crv = Some("Ed25519".into());
                jwk.x = Some(b64_encode(kp.public_key().as_ref()));
            }
            Inner::Rsa(kp) => {
                let pk = kp.public_key();
                jwk.kty = "RSA".into();
                jwk.n = Some(b64_encode(pk.modulus().big_endian_without_leading_zero()));
                jwk.e = Some(b64_encode(pk.exponent().big_endian_without_leading_zero()));
            }
        }
        jwk
    }
}

/// A JSON Web Key (RFC 7517), public members only. Unknown members are ignored (RFC 7517 §4),
/// private members are refused by [`Jwk::to_verifying_key`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `EC`, `OKP` or `RSA`.
    pub kty: String,
    /// Curve for EC/OKP keys.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub crv: Option<String>,
    /// x coordinate (EC) or public key (OKP).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub x: Option<String>,
    /// y coordinate (EC).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub y: Option<String>,
    /// RSA modulus.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub n: Option<String>,
    /// RSA exponent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub e: Option<String>,
    /// Key id.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kid: Option<String>,
    /// Algorithm the key is for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alg: Option<String>,
    /// Intended use (`sig`).
    #[serde(rename = "use", skip_serializing_if = "Option::is_none", default)]
    pub use_: Option<String>,
}

/// A JWK Set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// A parsed public key, ready to verify (parsed once, when the registry loads). The algorithm
/// comes from the key, never from a token.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Algorithm,
    key: signature::ParsedPublicKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({})", self.alg)
    }
}

impl VerifyingKey {
    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Verifies a JOSE signature over `msg`. ES256 needs exactly 64 bytes r‖s (no DER fallback);
    /// the crypto library enforces 0 < r, s < n and, for Ed25519, S < L (RFC 8032 §5.1.7).
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self.alg {
            Algorithm::ES256 | Algorithm::EdDSA if sig.len() != 64 => false,
            _ => self.key.verify_sig(msg, sig).is_ok(),
        }
    }
}

impl Jwk {
    /// The algorithm this key is for: its `alg` member, else implied by `kty`/`crv`.
    pub fn algorithm(&self) -> Result<Algorithm, KeyError> {
        let implied = match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) => Algorithm::ES256,
            ("OKP", Some("Ed25519")) => Algorithm::EdDSA,
            ("RSA", None) => Algorithm::RS256,
            (kty, crv) => return Err(KeyError::Jwk(format!("unsupported key type {kty}/{crv:?}"))),
        };
        match self.alg.as_deref() {
            None => Ok(implied),
            Some(a) => {
                let alg: Algorithm = a.parse().map_err(KeyError::Jwk)?;
                if alg != implied {
                    return Err(KeyError::Jwk(format!("alg {alg} does not fit key type {}", self.kty)));
                }
                Ok(alg)
            }
        }
    }

    /// Parses the public key.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        let alg = self.algorithm()?;
        let field = |name: &str, v: &Option<String>| -> Result<Vec<u8>, KeyError> {
            let s = v.as_deref().ok_or_else(|| KeyError::Jwk(format!("missing `{name}`")))?;
            b64_decode(s).map_err(|e| KeyError::Jwk(format!("`{name}`: {e}")))
        };
        let rejected = |what: &str| KeyError::Jwk(format!("{what} is not a valid {alg} public key"));
        let key = match alg {
            Algorithm::ES256 => {
                let (x, y) = (field("x", &self.x)?, field("y", &self.y)?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(KeyError::Jwk("P-256 coordinates must be 32 bytes".into()));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                signature::ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .map_err(|_| rejected("point"))?
            }
            Algorithm::EdDSA => {
                let x = field("x", &self.x)?;
                if x.len() != 32 {
                    return Err(KeyError::Jwk("Ed25519 key must be 32 bytes".into()));
                }
                signature::ParsedPublicKey::new(&signature::ED25519, x).map_err(|_| rejected("x"))?
            }
            Algorithm::RS256 => {
                let n = field("n", &self.n)?;
                if n.len() < 256 {
                    return Err(KeyError::Jwk("RSA modulus shorter than 2048 bits".into()));
                }
                let e = field("e", &self.e)?;
                signature::RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
                    .map_err(|_| rejected("n/e"))?
            }
        };
        Ok(VerifyingKey { alg, key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_verify_through_their_jwk() {
        for alg in [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256] {
            let key = SigningKey::generate(alg, "api-1-abc".into()).unwrap();
            let sig = key.sign(b"hello").unwrap();
            let vk = key.public_jwk().to_verifying_key().unwrap();
            assert_eq!(vk.algorithm(), alg);
            assert!(vk.verify(b"hello", &sig), "{alg}");
            assert!(!vk.verify(b"hellO", &sig), "{alg}");
            let again = SigningKey::from_pkcs8(alg, "api-1-abc".into(), Zeroizing::new(key.pkcs8().to_vec()))
                .unwrap();
            assert_eq!(again.public_jwk(), key.public_jwk());
        }
    }

    #[test]
    fn debug_never_shows_private_bytes() {
        let key = SigningKey::generate(Algorithm::EdDSA, "k".into()).unwrap();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("***"));
        assert!(!dbg.contains(&b64_encode(key.pkcs8())));
    }
}
