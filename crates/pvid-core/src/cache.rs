//! The verified-token cache: keeps a sidecar's hot path cheap by skipping signature checks for a
//! token seen before (DESIGN.md, "Sidecar"). Pure (a map behind a lock); here so that the
//! benchmarks of `pvid-core` measure a hit next to a cold verification.
//!
//! Keyed by the SHA-256 of the token, so the cache holds no credential. A hit is only trusted
//! after re-checking what can change after the first verification: expiry against the clock
//! (with the verifier's leeway), whether the key is still live in the current registry (revoked,
//! removed, preview torn down) and whether the matched audience is still accepted. When any of
//! these fails, the entry is dropped and the caller runs the full verification, which gives the
//! exact reason code. On every registry reload, entries of keys that are no longer live are
//! dropped at once. Policy is never cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aws_lc_rs::digest;
use crate::token::DEFAULT_LEEWAY_S;
use crate::{Verified, Verifier};

/// SHA-256 of a token.
pub type TokenKey = [u8; 32];

/// A bounded map from token hash to the verification result.
#[derive(Debug)]
pub struct TokenCache {
    entries: Mutex<HashMap<TokenKey, Verified>>,
    capacity: usize,
}

/// Whether a token expiring at `exp` is expired at `now`, with the leeway core applies.
fn is_expired(exp: f64, now: f64) -> bool {
    now - DEFAULT_LEEWAY_S as f64 >= exp
}

impl TokenCache {
    /// An empty cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache { entries: Mutex::new(HashMap::new()), capacity: capacity.max(1) }
    }

    /// The cache key of a token.
    pub fn key(token: &str) -> TokenKey {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(d.as_ref());
        key
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Verified>> {
        // A panic while holding the lock leaves a map that is still consistent (every operation
        // is a single insert/remove/retain), so a poisoned lock is safe to keep using.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached result for `key`, if it still holds at `now` under `verifier`. A stale entry is
    /// removed and `None` returned, so the caller verifies in full.
    pub fn get(&self, key: &TokenKey, now: f64, verifier: &Verifier) -> Option<Verified> {
        let mut entries = self.lock();
        let hit = entries.get(key)?;
        let still_good =
            !is_expired(hit.exp, now) && !verifier.is_revoked_at(&hit.kid, now) && verifier.audiences().contains(&hit.audience);
        if still_good {
            Some(hit.clone())
        } else {
            entries.remove(key);
            None
        }
    }

    /// Remembers a verification result. When full, expired entries go first, then arbitrary
    /// ones (a tenth of the capacity at once, so a flood of fresh tokens costs amortised O(1)).
    pub fn insert(&self, key: TokenKey, verified: Verified, now: f64) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            entries.retain(|_, v| !is_expired(v.exp, now));
            if entries.len() >= self.capacity {
                let evict: Vec<TokenKey> = entries.keys().take((self.capacity / 10).max(1)).copied().collect();
                for k in evict {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(key, verified);
    }

    /// Drops every entry whose key is not live in `verifier` (called on each registry reload).
    pub fn retain_live(&self, verifier: &Verifier) {
        self.lock().retain(|_, v| !verifier.is_revoked(&v.kid));
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Jwks;
    use crate::{Algorithm, PreviewId, SigningKey};

    fn verified(kid: &str, exp: f64) -> Verified {
        Verified {
            caller: "api".parse().unwrap(),
            issuer: "preview-pr-1-api".into(),
            kid: kid.into(),
            audience: "preview-pr-1-orders".into(),
            exp,
            iat: None,
            jti: None,
        }
    }

    fn verifier_with(kid: &str) -> Verifier {
        let key = SigningKey::generate(Algorithm::ES256, kid.into()).unwrap();
        let jwks = Jwks { keys: vec![key.public_jwk()] };
        let preview: PreviewId = "pr-1".parse().unwrap();
        Verifier::from_jwks(&jwks, &preview, &["preview-pr-1-api".into()], vec!["preview-pr-1-orders".into()]).unwrap()
    }

    #[test]
    fn a_hit_is_rechecked_for_expiry_with_leeway() {
        let v = verifier_with("api-1");
        let cache = TokenCache::new(10);
        let k = TokenCache::key("t");
        cache.insert(k, verified("api-1", 1000.0), 900.0);
        assert!(cache.get(&k, 1059.0, &v).is_some(), "inside the leeway");
        assert!(cache.get(&k, 1060.0, &v).is_none(), "expired beyond the leeway");
        assert_eq!(cache.len(), 0, "a stale entry is dropped");
    }

    #[test]
    fn a_hit_for_a_key_no_longer_live_is_dropped() {
        let cache = TokenCache::new(10);
        let k = TokenCache::key("t");
        cache.insert(k, verified("api-1", 1000.0), 900.0);
        assert!(cache.get(&k, 900.0, &verifier_with("api-2")).is_none());
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn reload_purges_entries_of_keys_that_are_gone() {
        let cache = TokenCache::new(10);
        cache.insert(TokenCache::key("a"), verified("api-1", 1000.0), 900.0);
        cache.insert(TokenCache::key("b"), verified("api-2", 1000.0), 900.0);
        cache.retain_live(&verifier_with("api-2"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::new(20);
        for i in 0..100 {
            cache.insert(TokenCache::key(&i.to_string()), verified("api-1", 1000.0), 900.0);
        }
        assert!(cache.len() <= 20);
        // expired entries are the first to go
        let cache = TokenCache::new(2);
        cache.insert(TokenCache::key("old"), verified("api-1", 100.0), 50.0);
        cache.insert(TokenCache::key("live"), verified("api-1", 1000.0), 900.0);
        cache.insert(TokenCache::key("new"), verified("api-1", 1000.0), 900.0);
        let v = verifier_with("api-1");
        assert!(cache.get(&TokenCache::key("live"), 900.0, &v).is_some());
        assert!(cache.get(&TokenCache::key("new"), 900.0, &v).is_some());
    }
}
