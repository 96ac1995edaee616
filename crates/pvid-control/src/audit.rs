//! The orphan audit: every secret, Transit key or unrevoked key whose preview is not active,
//! every secret that is not the private half of its service's active key, and every Transit key
//! that is not the signing half of its service's active key. `sweep` removes them.

use pvid_core::{KeyCustody, PreviewId, PreviewState};
use pvid_store::{KeySlot, KeyState, SecretPath, StoredKey, TransitKeyName};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;

use crate::error::LifecycleError;
use crate::lifecycle::Control;

/// What kind of credential is orphaned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanKind {
    /// A key that is not revoked.
    Key,
    /// A private key in the secret store.
    Secret,
    /// A Transit key (`preview-<id>-<svc>`) in the secret store.
    TransitKey,
}

/// One orphaned credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Orphan {
    /// Secret or key.
    pub kind: OrphanKind,
    /// Its preview.
    pub preview: String,
    /// Its service.
    pub service: String,
    /// The key id, when known.
    pub kid: Option<String>,
    /// The secret path, for secrets.
    pub path: Option<String>,
    /// The Transit key name, for Transit keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transit_key: Option<String>,
    /// Why it is an orphan.
    pub why: String,
}

impl Control {
    /// Finds every orphaned credential.
    pub async fn find_orphans(&self) -> Result<Vec<Orphan>, LifecycleError> {
        let previews: BTreeMap<String, PreviewState> =
            self.state.previews().await?.into_iter().map(|p| (p.id.to_string(), p.state)).collect();
        let keys = self.state.unrevoked_keys().await?;
        let mut out = Vec::new();
        for path in self.secrets.list().await? {
            let state = previews.get(path.preview.as_str()).copied();
            let why = match state {
                None => Some("preview unknown to the state store".to_owned()),
                Some(PreviewState::Active) => {
                    // `private-key` holds the active key, or the new key of a rotation whose
                    // switch was interrupted; `next-private-key` the new key of a rotation.
                    let fits: &[KeyState] = match path.slot {
                        KeySlot::Current | KeySlot::Shared => &[KeyState::Active, KeyState::Next],
                        KeySlot::Next => &[KeyState::Next],
                    };
                    let stored = match self.secrets.get(&path).await? {
                        Some(bytes) => StoredKey::from_bytes(&path, &bytes).ok().map(|k| k.kid),
                        None => continue,
                    };
                    let owned = keys.iter().any(|k| {
                        k.preview_id == path.preview
                            && k.service == path.service
                            && fits.contains(&k.state)
                            && stored.as_deref() == Some(k.kid.as_str())
                    });
                    match (owned, path.slot) {
                        (true, _) => None,
                        (false, KeySlot::Current | KeySlot::Shared) => {
                            Some(format!("not the private half of an active key (kid {})", stored.unwrap_or("?".into())))
                        }
                        (false, KeySlot::Next) => {
                            Some(format!("not the private half of a published next key (kid {})", stored.unwrap_or("?".into())))
                        }
                    }
                }
                Some(s) => Some(format!("preview is {s}")),
            };
            if let Some(why) = why {
                out.push(Orphan {
                    kind: OrphanKind::Secret,
                    preview: path.preview.to_string(),
                    service: path.service.to_string(),
                    kid: None,
                    path: Some(path.to_string()),
                    transit_key: None,
                    why,
                });
            }
        }
        // The shared credential belongs to no preview: it is an orphan once no active preview
        // uses it.
        let shared = SecretPath::shared();
        if let Some(bytes) = self.secrets.get(&shared).await? {
            // Used while an active preview has a live key made of it (a shared-mode preview, or
            // one whose migration away from it is not finished).
            let stored = StoredKey::from_bytes(&shared, &bytes)?;
            let used = !self.previews_using(&stored, None).await?.is_empty();
            if !used {
                out.push(Orphan {
                    kind: OrphanKind::Secret,
                    preview: shared.preview.to_string(),
                    service: shared.service.to_string(),
                    kid: None,
                    path: Some(shared.to_string()),
                    transit_key: None,
                    why: "shared credential, and no active preview signs with it".into(),
                });
            }
        }
        if let Some(transit) = self.secrets.transit() {
            let records = self.state.previews().await?;
            let known: Vec<&PreviewId> = records.iter().map(|p| &p.id).collect();
            for name in transit.list().await? {
                let parsed = TransitKeyName::parse(&name, &known);
                let rec = parsed.as_ref().and_then(|n| records.iter().find(|r| r.id == n.preview));
                let why = match (&parsed, rec) {
                    (None, _) => Some("named preview-* but not preview-<id>-<svc>".to_owned()),
                    (Some(_), None) => Some("preview unknown to the state store".to_owned()),
                    (Some(_), Some(r)) if r.state != PreviewState::Active => Some(format!("preview is {}", r.state)),
                    (Some(_), Some(r)) if r.config.key_custody != KeyCustody::Transit => {
                        Some("preview uses sidecar custody".to_owned())
                    }
                    (Some(n), Some(_)) => {
                        let active = keys.iter().find(|k| {
                            k.preview_id == n.preview && k.service == n.service && k.state == KeyState::Active
                        });
                        let versions = transit.public_keys(n).await?.unwrap_or_default();
                        match active {
                            Some(a) if versions.iter().any(|v| crate::same_public_key(&v.jwk, &a.jwk)) => None,
                            Some(a) => Some(format!("no version is the public key of active key {}", a.kid)),
                            None => Some("no active key of this service".to_owned()),
                        }
                    }
                };
                if let Some(why) = why {
                    out.push(Orphan {
                        kind: OrphanKind::TransitKey,
                        preview: parsed.as_ref().map(|n| n.preview.to_string()).unwrap_or_default(),
                        service: parsed.as_ref().map(|n| n.service.to_string()).unwrap_or_default(),
                        kid: None,
                        path: None,
                        transit_key: Some(name.clone()),
                        why,
                    });
                }
            }
        }
        for k in &keys {
            let state = previews.get(k.preview_id.as_str()).copied();
            if state != Some(PreviewState::Active) || k.state == KeyState::Pending {
                out.push(Orphan {
                    kind: OrphanKind::Key,
                    preview: k.preview_id.to_string(),
                    service: k.service.to_string(),
                    kid: Some(k.kid.clone()),
                    path: None,
                    transit_key: None,
                    why: match state {
                        Some(PreviewState::Active) => "key never activated".to_owned(),
                        Some(s) => format!("key not revoked but preview is {s}"),
                        None => "preview unknown".to_owned(),
                    },
                });
            }
        }
        Ok(out)
    }

    /// Removes orphans: secrets deleted, keys revoked, each recorded in the evidence trail.
    /// `progress` is called after each one. Each preview's orphans are removed under its
    /// operation lock, and only those still orphaned then: a provision that finished after
    /// `orphans` was computed keeps its fresh key.
    pub async fn sweep(&self, orphans: &[Orphan], progress: &mut (dyn FnMut(usize) + Send)) -> Result<(), LifecycleError> {
        let mut done = 0;
        let previews: std::collections::BTreeSet<&str> = orphans.iter().map(|o| o.preview.as_str()).collect();
        for p in previews {
            // A Transit key whose name fits no preview id is recorded under the reserved id
            // `unknown` (a valid DNS label no pvid preview name collides with in practice).
            let preview: PreviewId = p.parse().or_else(|_| "unknown".parse()).map_err(|_| LifecycleError::NotFound(p.to_owned()))?;
            let lock = self.state.lock_preview(&preview).await?;
            let result = self.sweep_locked(p, &preview, orphans, &mut done, progress).await;
            lock.release().await;
            result?;
        }
        Ok(())
    }

    async fn sweep_locked(
        &self,
        name: &str,
        preview: &PreviewId,
        orphans: &[Orphan],
        done: &mut usize,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<(), LifecycleError> {
        let still = self.find_orphans().await?;
        for o in orphans.iter().filter(|o| o.preview == name) {
            let current = still
                .iter()
                .any(|s| s.kind == o.kind && s.service == o.service && s.kid == o.kid && s.path == o.path && s.transit_key == o.transit_key);
            if current {
                match o.kind {
                    OrphanKind::Secret => {
                        let path = match &o.path {
                            Some(p) => SecretPath::parse(p)?,
                            None => {
                                let service = o.service.parse().map_err(|_| LifecycleError::NotFound(o.service.clone()))?;
                                SecretPath::private_key(preview, &service)
                            }
                        };
                        self.secrets.delete(&path).await?;
                    }
                    OrphanKind::TransitKey => {
                        if let (Some(t), Some(key)) = (self.secrets.transit(), &o.transit_key) {
                            t.delete(key).await?;
                        }
                    }
                    OrphanKind::Key => {
                        if let Some(kid) = &o.kid {
                            self.state.revoke_key(kid, "orphan swept").await?;
                        }
                    }
                }
                self.state
                    .append_evidence(
                        preview,
                        "orphan.swept",
                        json!({"kind": o.kind, "service": o.service, "kid": o.kid, "path": o.path, "transit_key": o.transit_key,
                               "why": o.why, "store": self.secrets.kind()}),
                    )
                    .await?;
            }
            *done += 1;
            progress(*done);
        }
        Ok(())
    }
}
