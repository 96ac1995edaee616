//! The orphan audit: every secret or unrevoked key whose preview is not active, and every secret
//! that is not the private half of its service's active key. `sweep` removes them.

use pvid_core::PreviewState;
use pvid_store::{KeyState, SecretPath, StoredKey};
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
                    let active = keys.iter().find(|k| {
                        k.preview_id == path.preview && k.service == path.service && k.state == KeyState::Active
                    });
                    let stored = match self.secrets.get(&path).await? {
                        Some(bytes) => StoredKey::from_bytes(&path, &bytes).ok().map(|k| k.kid),
                        None => continue,
                    };
                    match (active, stored) {
                        (Some(a), Some(kid)) if a.kid == kid => None,
                        (_, kid) => Some(format!("not the private half of an active key (kid {})", kid.unwrap_or("?".into()))),
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
                    why,
                });
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
            let preview: pvid_core::PreviewId = p.parse().map_err(|_| LifecycleError::NotFound(p.to_owned()))?;
            let lock = self.state.lock_preview(&preview).await?;
            let result = self.sweep_locked(&preview, orphans, &mut done, progress).await;
            lock.release().await;
            result?;
        }
        Ok(())
    }

    async fn sweep_locked(
        &self,
        preview: &pvid_core::PreviewId,
        orphans: &[Orphan],
        done: &mut usize,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<(), LifecycleError> {
        let still = self.find_orphans().await?;
        for o in orphans.iter().filter(|o| o.preview == preview.as_str()) {
            let current = still.iter().any(|s| s.kind == o.kind && s.service == o.service && s.kid == o.kid && s.path == o.path);
            if current {
                match o.kind {
                    OrphanKind::Secret => {
                        let service = o.service.parse().map_err(|_| LifecycleError::NotFound(o.service.clone()))?;
                        self.secrets.delete(&SecretPath::private_key(preview, &service)).await?;
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
                        json!({"kind": o.kind, "service": o.service, "kid": o.kid, "path": o.path, "why": o.why}),
                    )
                    .await?;
            }
            *done += 1;
            progress(*done);
        }
        Ok(())
    }
}
