//! The per-preview registry (`registry.json`): the JWKS of every live public key, the service map
//! (issuer, audience, address, kids, who may call), the call policy, and the keys revoked so far.
//! It holds public material only. Sidecars verify against it; `pvid registry ID` prints it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::id::{PreviewId, ServiceName};
use crate::key::{Algorithm, Jwks};
use crate::policy::CallRule;

/// Lifecycle of a preview (DESIGN.md): `provisioning → active → tearing_down → torn_down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreviewState {
    /// Keys are being issued.
    Provisioning,
    /// Every service has its key; tokens are accepted.
    Active,
    /// Teardown started; tokens are refused.
    TearingDown,
    /// Every credential was revoked and deleted.
    TornDown,
}

impl PreviewState {
    /// The stable string.
    pub fn as_str(self) -> &'static str {
        match self {
            PreviewState::Provisioning => "provisioning",
            PreviewState::Active => "active",
            PreviewState::TearingDown => "tearing_down",
            PreviewState::TornDown => "torn_down",
        }
    }

    /// Whether sidecars refuse every token of the preview in this state.
    pub fn is_gone(self) -> bool {
        matches!(self, PreviewState::TearingDown | PreviewState::TornDown)
    }
}

impl FromStr for PreviewState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "provisioning" => Ok(PreviewState::Provisioning),
            "active" => Ok(PreviewState::Active),
            "tearing_down" => Ok(PreviewState::TearingDown),
            "torn_down" => Ok(PreviewState::TornDown),
            _ => Err(format!("unknown preview state `{s}`")),
        }
    }
}

impl fmt::Display for PreviewState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One service of the preview, as verifiers see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// `preview-<id>-<svc>`.
    pub issuer: String,
    /// `preview-<id>-<svc>`: what callers put in `aud`.
    pub audience: String,
    /// Where the service's inbound sidecar listens (`host:port`), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The service's live key ids (two during a rotation).
    pub kids: Vec<String>,
    /// The key the service signs with now; during a rotation the other live key is either the
    /// new one, published ahead of use, or the old one, still accepted until its overlap ends.
    /// Absent in registries written before rotation existed: then the only live key signs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_kid: Option<String>,
    /// Whether the service also accepts the preview-wide audience `preview-<id>`.
    #[serde(default)]
    pub accept_preview_audience: bool,
}

/// A key that was revoked: tokens signed by it are refused with `key_revoked`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedKey {
    /// The key id.
    pub kid: String,
    /// The service that owned it.
    pub service: ServiceName,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
    /// Why (`teardown`, `rotation`, ...).
    pub reason: String,
}

/// A key replaced by a rotation: still live (in `kids` and the JWKS) so that tokens it signed
/// keep working, until `until`; from then on they are refused with `key_revoked`, whether or not
/// the control plane has yet moved the key to the revoked list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiringKey {
    /// The key id.
    pub kid: String,
    /// The service that owned it.
    pub service: ServiceName,
    /// End of the overlap (Unix seconds).
    pub until: i64,
}

/// The registry document of one preview.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// The preview.
    pub preview: PreviewId,
    /// Its lifecycle state.
    pub state: PreviewState,
    /// Increases with every change; sidecars log the version they verified against.
    pub version: u64,
    /// Signing algorithm for new keys.
    pub algorithm: Algorithm,
    /// Lifetime of minted tokens, seconds.
    pub token_ttl_s: u64,
    /// Service map.
    pub services: BTreeMap<ServiceName, ServiceEntry>,
    /// Default-deny call policy: the calls that are allowed.
    pub policy: Vec<CallRule>,
    /// Public keys of every live key.
    pub jwks: Jwks,
    /// Keys revoked so far.
    #[serde(default)]
    pub revoked: Vec<RevokedKey>,
    /// Live keys replaced by a rotation, each accepted until the end of its overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<RetiringKey>,
    /// Every service signs with the same key material (`mode: shared`): the kid still names a
    /// service, but whoever holds one service's key can sign as any other. Doctors and
    /// explanations say so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_credentials: bool,
}

impl Registry {
    /// Parses and checks a registry document: every kid in the service map has a JWK and no kid
    /// is claimed by two services.
    pub fn from_json(bytes: &[u8]) -> Result<Registry, String> {
        let reg: Registry = serde_json::from_slice(bytes).map_err(|e| format!("registry: {e}"))?;
        reg.check()?;
        Ok(reg)
    }

    fn check(&self) -> Result<(), String> {
        let mut owners: BTreeMap<&str, &ServiceName> = BTreeMap::new();
        for (svc, entry) in &self.services {
            // A registry may not widen what a sidecar accepts: names follow from the ids.
            let identity = crate::id::service_identity(&self.preview, svc);
            if entry.issuer != identity || entry.audience != identity {
                return Err(format!("registry: {svc} must have issuer and audience `{identity}`"));
            }
            if let Some(k) = entry.kids.iter().find(|k| self.revoked.iter().any(|r| &r.kid == *k)) {
                return Err(format!("registry: kid `{k}` of {svc} is both live and revoked"));
            }
            if let Some(k) = entry.signing_kid.as_ref().filter(|k| !entry.kids.contains(k)) {
                return Err(format!("registry: signing kid `{k}` of {svc} is not one of its live kids"));
            }
            for kid in &entry.kids {
                if let Some(other) = owners.insert(kid, svc) {
                    return Err(format!("registry: kid `{kid}` is claimed by both {other} and {svc}"));
                }
                if !self.jwks.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) {
                    return Err(format!("registry: kid `{kid}` of {svc} has no key in jwks"));
                }
            }
        }
        for r in &self.retiring {
            let entry = self.services.get(&r.service);
            if !entry.is_some_and(|e| e.kids.contains(&r.kid)) {
                return Err(format!("registry: retiring kid `{}` is not a live kid of {}", r.kid, r.service));
            }
            if entry.and_then(|e| e.signing_kid.as_ref()) == Some(&r.kid) {
                return Err(format!("registry: kid `{}` of {} is both retiring and the signing key", r.kid, r.service));
            }
        }
        Ok(())
    }

    /// The key `service` signs with: its `signing_kid`, or its only live key.
    pub fn signing_kid_of(&self, service: &ServiceName) -> Option<&str> {
        let entry = self.services.get(service)?;
        match (&entry.signing_kid, entry.kids.as_slice()) {
            (Some(k), _) => Some(k),
            (None, [only]) => Some(only),
            _ => None,
        }
    }

    /// The service owning `kid`, if any.
    pub fn owner_of(&self, kid: &str) -> Option<&ServiceName> {
        self.services.iter().find(|(_, e)| e.kids.iter().any(|k| k == kid)).map(|(s, _)| s)
    }
}
