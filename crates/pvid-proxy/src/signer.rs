//! Who signs egress tokens. [`Signer`] is the one thing minting needs from a key: its id, its
//! algorithm and a signature over a signing input. Two implementations:
//!
//! - [`SigningKey`] (sidecar custody): the private key is in this process;
//! - [`TransitSigner`] (transit custody, feature `openbao`): OpenBao Transit signs and the
//!   private key never leaves the vault; each signature is one HTTP request, which is why tokens
//!   are cached until shortly before they expire ([`MintCache`]).
//!
//! `pvid-core` stays free of I/O: it encodes the [`UnsignedToken`] and appends the signature.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use pvid_core::key::KeyError;
use pvid_core::{Algorithm, MintRequest, ServiceName, SigningKey, UnsignedToken};

/// A cached token is replaced this many seconds before it expires.
pub const REFRESH_BEFORE_EXPIRY_S: f64 = 30.0;

/// Signing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The local key could not sign.
    #[error("local key {kid} cannot sign")]
    Local {
        /// The key id.
        kid: String,
        /// Cause.
        #[source]
        source: KeyError,
    },
    /// OpenBao Transit could not sign (the error names the address and the key).
    #[cfg(feature = "openbao")]
    #[error(transparent)]
    Transit(#[from] pvid_bao::BaoError),
}

/// Signs the signing input of a token with one key.
#[async_trait]
pub trait Signer: Send + Sync + fmt::Debug {
    /// The key id that goes in the header (`kid`).
    fn kid(&self) -> &str;
    /// The key's algorithm (`alg`).
    fn algorithm(&self) -> Algorithm;
    /// The JOSE signature over `signing_input` (r‖s for ES256).
    async fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError>;
}

#[async_trait]
impl Signer for SigningKey {
    fn kid(&self) -> &str {
        SigningKey::kid(self)
    }

    fn algorithm(&self) -> Algorithm {
        SigningKey::algorithm(self)
    }

    async fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
        SigningKey::sign(self, signing_input).map_err(|source| SignError::Local { kid: self.kid().to_owned(), source })
    }
}

/// Where a sidecar gets its signing key again when a rotation switches it: the registry names
/// the key to sign with (`signing_kid`), and when that is not the one in hand the sidecar loads
/// the current one from here (the secret store, or a key file the operator replaces).
#[async_trait]
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The service's signing key as its store holds it now; errors name the store.
    async fn load(&self) -> Result<std::sync::Arc<dyn Signer>, String>;
}

/// A minted token and its `exp`.
#[derive(Clone)]
pub struct Minted {
    /// The compact token.
    pub token: String,
    /// Its `exp`, Unix seconds.
    pub exp: f64,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Minted(exp {}, token ***)", self.exp)
    }
}

/// Mints a token for exactly one audience with `signer`.
pub async fn mint_with(signer: &dyn Signer, req: &MintRequest<'_>) -> Result<Minted, SignError> {
    let unsigned = UnsignedToken::new(signer.algorithm(), signer.kid(), req);
    let exp = unsigned.exp() as f64;
    let sig = signer.sign(unsigned.signing_input().as_bytes()).await?;
    Ok(Minted { token: unsigned.finish(&sig), exp })
}

/// Tokens minted per callee, reused until [`REFRESH_BEFORE_EXPIRY_S`] before they expire.
/// Debug output never shows a token.
#[derive(Default)]
pub struct MintCache {
    tokens: Mutex<HashMap<ServiceName, Minted>>,
}

impl fmt::Debug for MintCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MintCache({} tokens)", self.lock().len())
    }
}

impl MintCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServiceName, Minted>> {
        // Every operation is a single insert/get/clear: a poisoned map is still consistent.
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets every token (this service's keys changed).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// A token for `callee` that is still good at `now`, if any.
    pub fn get(&self, callee: &ServiceName, now: f64) -> Option<String> {
        self.lock().get(callee).filter(|m| now < m.exp - REFRESH_BEFORE_EXPIRY_S).map(|m| m.token.clone())
    }

    /// Keeps a token for `callee`.
    pub fn put(&self, callee: ServiceName, minted: Minted) {
        self.lock().insert(callee, minted);
    }
}

#[cfg(feature = "openbao")]
pub use transit::TransitSigner;

#[cfg(feature = "openbao")]
mod transit {
    use super::*;

    /// Signs with one version of an OpenBao Transit key (transit custody).
    #[derive(Clone, Debug)]
    pub struct TransitSigner {
        client: pvid_bao::Client,
        key_name: String,
        version: u64,
        kid: String,
        alg: Algorithm,
    }

    impl TransitSigner {
        /// Signs as `kid` (`alg`) with version `version` of Transit key `key_name`.
        pub fn new(client: pvid_bao::Client, key_name: String, version: u64, kid: String, alg: Algorithm) -> TransitSigner {
            TransitSigner { client, key_name, version, kid, alg }
        }
    }

    #[async_trait]
    impl Signer for TransitSigner {
        fn kid(&self) -> &str {
            &self.kid
        }

        fn algorithm(&self) -> Algorithm {
            self.alg
        }

        async fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
            Ok(self.client.transit_sign(&self.key_name, self.version, signing_input).await?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvid_core::{Registry, Verifier};

    #[test]
    fn a_cached_token_is_replaced_shortly_before_it_expires() {
        let cache = MintCache::default();
        let callee: ServiceName = "payments".parse().unwrap();
        cache.put(callee.clone(), Minted { token: "t".into(), exp: 1000.0 });
        assert_eq!(cache.get(&callee, 969.0).as_deref(), Some("t"));
        assert_eq!(cache.get(&callee, 970.0), None);
        cache.clear();
        assert_eq!(cache.get(&callee, 0.0), None);
    }

    #[tokio::test]
    async fn a_token_minted_through_the_signer_trait_is_byte_for_byte_a_core_token() {
        let key = SigningKey::generate(Algorithm::ES256, "api-1-abc".into()).unwrap();
        let (from, preview): (ServiceName, _) = ("api".parse().unwrap(), "pr-1".parse().unwrap());
        let req = MintRequest { from: &from, preview: &preview, audience: "preview-pr-1-payments", ttl_s: 300, now: 1000.5 };
        let m = mint_with(&key, &req).await.unwrap();
        assert_eq!(m.exp, 1300.0);
        let mut parts = m.token.split('.');
        let header = pvid_core::jose::b64_decode(parts.next().unwrap()).unwrap();
        assert_eq!(header, br#"{"alg":"ES256","kid":"api-1-abc","typ":"JWT"}"#);
        let reg = Registry::from_json(
            serde_json::json!({
                "preview": "pr-1", "state": "active", "version": 1, "algorithm": "ES256", "token_ttl_s": 300,
                "services": {
                    "api": {"issuer": "preview-pr-1-api", "audience": "preview-pr-1-api", "kids": ["api-1-abc"]},
                    "payments": {"issuer": "preview-pr-1-payments", "audience": "preview-pr-1-payments", "kids": []}
                },
                "policy": [], "jwks": {"keys": [key.public_jwk()]}, "revoked": []
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let v = Verifier::for_service(&reg, &"payments".parse().unwrap()).unwrap();
        assert_eq!(v.verify(&m.token, 1001.0).unwrap().caller.as_str(), "api");
    }
}
