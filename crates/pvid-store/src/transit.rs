//! Transit custody: a non-exportable key per service that signs inside the secret store
//! (OpenBao Transit), so the private key never leaves it. Named `preview-<id>-<svc>`.

use async_trait::async_trait;
use pvid_core::{Algorithm, Jwk, PreviewId, ServiceName};
use std::fmt;

use crate::error::StoreError;

/// The Transit key of one service of one preview: `preview-<id>-<svc>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransitKeyName {
    /// The preview.
    pub preview: PreviewId,
    /// The service.
    pub service: ServiceName,
}

impl TransitKeyName {
    /// The key of a service.
    pub fn new(preview: &PreviewId, service: &ServiceName) -> TransitKeyName {
        TransitKeyName { preview: preview.clone(), service: service.clone() }
    }

    /// Whether a key named `name` may belong to a pvid preview (starts with `preview-`).
    pub fn is_pvid_name(name: &str) -> bool {
        name.starts_with("preview-")
    }

    /// Splits a key name into preview and service. The name alone is ambiguous when ids hold
    /// dashes (`preview-pr-1-api-gw`), so `known` previews are tried first, longest id first;
    /// otherwise the service is taken to be the last dash-separated part.
    pub fn parse(name: &str, known: &[&PreviewId]) -> Option<TransitKeyName> {
        let rest = name.strip_prefix("preview-")?;
        let mut known: Vec<&&PreviewId> = known.iter().collect();
        known.sort_by_key(|p| std::cmp::Reverse(p.as_str().len()));
        for p in known {
            if let Some(svc) = rest.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix('-'))
                && let Ok(service) = svc.parse()
            {
                return Some(TransitKeyName { preview: (*p).clone(), service });
            }
        }
        let (p, svc) = rest.rsplit_once('-')?;
        Some(TransitKeyName { preview: p.parse().ok()?, service: svc.parse().ok()? })
    }
}

impl fmt::Display for TransitKeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "preview-{}-{}", self.preview, self.service)
    }
}

/// One version of a Transit key's public half.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitPublicKey {
    /// Transit key version (from 1).
    pub version: u64,
    /// The public key as a JWK; `kid` is left for the caller to set.
    pub jwk: Jwk,
}

/// Keys that sign inside the store. Every operation is idempotent.
#[async_trait]
pub trait TransitKeys: Send + Sync {
    /// Creates the key for `alg` (non-exportable) unless it exists; an existing key of another
    /// type is an error.
    async fn create(&self, name: &TransitKeyName, alg: Algorithm) -> Result<(), StoreError>;
    /// Adds a version to an existing key (a rotation under transit custody).
    async fn rotate(&self, name: &TransitKeyName) -> Result<(), StoreError>;
    /// The public half of every version, oldest first, or `None` when the key does not exist.
    async fn public_keys(&self, name: &TransitKeyName) -> Result<Option<Vec<TransitPublicKey>>, StoreError>;
    /// Makes the key deletable, deletes it, and proves it is gone; `Ok` when it did not exist.
    async fn delete(&self, name: &str) -> Result<(), StoreError>;
    /// Names of every key that may be pvid's (`preview-*`).
    async fn list(&self) -> Result<Vec<String>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_split_with_known_previews_first() {
        let p1: PreviewId = "pr-1".parse().unwrap();
        let p1api: PreviewId = "pr-1-api".parse().unwrap();
        let n = TransitKeyName::parse("preview-pr-1-api-gw", &[&p1]).unwrap();
        assert_eq!((n.preview.as_str(), n.service.as_str()), ("pr-1", "api-gw"));
        let n = TransitKeyName::parse("preview-pr-1-api-gw", &[&p1, &p1api]).unwrap();
        assert_eq!((n.preview.as_str(), n.service.as_str()), ("pr-1-api", "gw"));
        let n = TransitKeyName::parse("preview-pr-9-api", &[&p1]).unwrap();
        assert_eq!((n.preview.as_str(), n.service.as_str(), n.to_string().as_str()), ("pr-9", "api", "preview-pr-9-api"));
        assert_eq!(TransitKeyName::parse("other-key", &[]), None);
        assert_eq!(TransitKeyName::parse("preview-x", &[]), None);
    }
}
