//! Key rotation with overlap. Three steps, each idempotent and each run under
//! the preview's operation lock, so a rotation killed at any instant is finished by running the
//! same step again:
//!
//! 1. [`Control::begin_rotation`]: a new key per service, its private half at
//!    `next-private-key`, its public half published (state `next`): verifiers accept it, nobody
//!    signs with it yet.
//! 2. [`Control::switch_signing`], once every verifier holds that registry version: the new key
//!    becomes `active` (it is copied to `private-key`, where sidecars load their key from), the
//!    old one `retiring` until the end of the overlap: verifiers accept tokens it signed until
//!    then, and refuse them with `key_revoked` from then on, by their own clock.
//! 3. [`Control::retire_due`]: retiring keys whose overlap is over move to the revoked list.
//!
//! An emergency rotation (a leaked key) runs 1 and 2 at once and revokes the old key in 2.
//!
//! Under transit custody the new key is a new version of the service's Transit key: nothing is
//! staged or copied, and the switch changes which version signs.

use pvid_core::explain::rfc3339;
use pvid_core::key::random_suffix;
use pvid_core::token::DEFAULT_LEEWAY_S;
use pvid_core::{CredentialMode, KeyCustody, PreviewId, PreviewState, ServiceName, SigningKey};
use pvid_store::state::unix_now;
use pvid_store::{KeyRecord, KeyState, PreviewRecord, SecretMeta, SecretPath, StoredKey, TransitKeyName, TransitPublicKey};
use serde::Serialize;
use serde_json::json;

use crate::error::LifecycleError;
use crate::lifecycle::Control;

/// A new key published by [`Control::begin_rotation`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NextKey {
    /// The service.
    pub service: ServiceName,
    /// The new key.
    pub kid: String,
    /// Whether this run made it (false: an earlier, interrupted run did).
    pub created: bool,
}

/// A signing switch made by [`Control::switch_signing`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Switched {
    /// The service.
    pub service: ServiceName,
    /// The key it signed with until now (none when it had no active key).
    pub old_kid: Option<String>,
    /// The key it signs with from now on.
    pub new_kid: String,
    /// When tokens of the old key stop being accepted (Unix seconds); now, for an emergency.
    pub old_key_until: i64,
}

/// The overlap after a switch: the longest a token signed just before it stays valid, the
/// token lifetime plus the verifiers' leeway on `exp`.
pub fn default_overlap_s(token_ttl_s: u64) -> u64 {
    token_ttl_s + DEFAULT_LEEWAY_S
}

impl Control {
    /// Step 1: publishes a new key for `service` (every service when `None`). Keys already
    /// published by an interrupted run are kept. Retiring keys whose overlap is over are revoked
    /// first; a service still in the overlap of its last rotation is refused, unless
    /// `emergency`, which revokes that key too (a leak may be of either key).
    pub async fn begin_rotation(
        &self,
        id: &PreviewId,
        service: Option<&ServiceName>,
        emergency: bool,
    ) -> Result<Vec<NextKey>, LifecycleError> {
        self.locked(id, async || self.begin_rotation_locked(id, service, emergency).await).await
    }

    async fn begin_rotation_locked(
        &self,
        id: &PreviewId,
        service: Option<&ServiceName>,
        emergency: bool,
    ) -> Result<Vec<NextKey>, LifecycleError> {
        let rec = self.rotatable(id).await?;
        let services = selected(&rec, service)?;
        self.retire_due_locked(id, unix_now()).await?;
        let keys = self.state.keys(id).await?;
        // Refuse before changing anything: one service in its overlap stops the whole run.
        if !emergency {
            if let Some(k) = keys.iter().find(|k| k.state == KeyState::Retiring && services.contains(&k.service)) {
                let unfinished: Vec<String> = keys
                    .iter()
                    .filter(|n| n.state == KeyState::Next && services.contains(&n.service))
                    .map(|n| format!("pvid rotate {id} --service {}", n.service))
                    .collect();
                let resume = match unfinished.as_slice() {
                    [] => String::new(),
                    cmds => format!(". Interrupted before its switch, so finish it now: {}", cmds.join("; ")),
                };
                return Err(LifecycleError::RotationInProgress {
                    resume,
                    preview: id.to_string(),
                    service: k.service.to_string(),
                    kid: k.kid.clone(),
                    until: rfc3339(k.retire_at.unwrap_or_default()),
                });
            }
        }
        let mut out = Vec::new();
        let mut fresh: Vec<(ServiceName, SigningKey)> = Vec::new();
        for svc in &services {
            let mine: Vec<&KeyRecord> = keys.iter().filter(|k| &k.service == svc).collect();
            if emergency {
                for k in mine.iter().filter(|k| k.state == KeyState::Retiring) {
                    self.revoke_recorded(id, k, "emergency rotation").await?;
                }
            }
            if rec.config.key_custody == KeyCustody::Transit {
                out.push(self.next_transit_key(id, &rec, svc, &mine).await?);
                continue;
            }
            let path = SecretPath::next_private_key(id, svc);
            let stored_kid = match self.secrets.get(&path).await? {
                Some(bytes) => Some(StoredKey::from_bytes(&path, &bytes)?.kid),
                None => None,
            };
            let mut have_next = false;
            for k in mine.iter().filter(|k| matches!(k.state, KeyState::Pending | KeyState::Next)) {
                let matches_secret = stored_kid.as_deref() == Some(k.kid.as_str());
                match k.state {
                    KeyState::Next if matches_secret && !have_next => have_next = true,
                    // A crash between the secret write and the publication: finish it.
                    KeyState::Pending if matches_secret && !have_next => {
                        self.state.publish_next_key(&k.kid).await?;
                        self.state
                            .append_evidence(id, "key.issued", json!({"service": svc, "kid": k.kid, "rotation": true, "resumed": true}))
                            .await?;
                        have_next = true;
                    }
                    KeyState::Pending => self.state.delete_pending_key(&k.kid).await?,
                    _ => self.revoke_recorded(id, k, "rotation secret missing").await?,
                }
                if have_next && matches_secret {
                    out.push(NextKey { service: svc.clone(), kid: k.kid.clone(), created: false });
                }
            }
            if have_next {
                continue;
            }
            let kid = format!("{}-{}-{}", svc, mine.len() + 1, random_suffix(10));
            let key = SigningKey::generate(rec.config.algorithm, kid)
                .map_err(|e| LifecycleError::KeyGen { service: svc.to_string(), reason: e.to_string() })?;
            fresh.push((svc.clone(), key));
        }
        // The provision order: pending rows, secrets, evidence, then publication.
        let records: Vec<KeyRecord> = fresh.iter().map(|(service, key)| KeyRecord::pending(id, service, key)).collect();
        self.state.insert_keys(&records).await?;
        for (service, key) in &fresh {
            let meta = SecretMeta { kid: key.kid(), created_at: unix_now() };
            self.secrets.put_key(&SecretPath::next_private_key(id, service), &StoredKey::from_signing_key(key).to_bytes(), &meta).await?;
            self.failpoint("after_next_secret_write").await;
        }
        for (service, key) in &fresh {
            self.state
                .append_evidence(
                    id,
                    "key.issued",
                    json!({"service": service, "kid": key.kid(), "alg": rec.config.algorithm, "rotation": true, "actor": self.actor}),
                )
                .await?;
            self.state.publish_next_key(key.kid()).await?;
            out.push(NextKey { service: service.clone(), kid: key.kid().to_owned(), created: true });
        }
        self.publish(id).await?;
        Ok(out)
    }

    /// Step 1 under transit custody: a new version of the service's Transit key, published as
    /// its next key. The vault keeps every version, so there is no secret to stage: the new
    /// version's public half is the key. A crash after the vault's rotation leaves a latest
    /// version no key row holds, which the re-run adopts instead of rotating again.
    async fn next_transit_key(&self, id: &PreviewId, rec: &PreviewRecord, svc: &ServiceName, mine: &[&KeyRecord]) -> Result<NextKey, LifecycleError> {
        let transit = self.secrets.transit().ok_or_else(|| pvid_store::StoreError::NoTransit(self.secrets.kind()))?;
        let name = TransitKeyName::new(id, svc);
        let latest = |versions: Option<Vec<TransitPublicKey>>| {
            versions.and_then(|v| v.last().cloned()).ok_or_else(|| pvid_store::StoreError::TransitPublicKey {
                name: name.to_string(),
                reason: "the Transit key is missing (tear the preview down and provision it again)".into(),
            })
        };
        for k in mine.iter().filter(|k| k.state == KeyState::Pending) {
            self.state.delete_pending_key(&k.kid).await?;
        }
        let mut current = latest(transit.public_keys(&name).await?)?;
        let held = |v: &TransitPublicKey| mine.iter().find(|k| k.state != KeyState::Pending && crate::same_public_key(&k.jwk, &v.jwk));
        if let Some(k) = held(&current) {
            if k.state == KeyState::Next {
                return Ok(NextKey { service: svc.clone(), kid: k.kid.clone(), created: false });
            }
            transit.rotate(&name).await?;
            self.failpoint("after_next_secret_write").await;
            current = latest(transit.public_keys(&name).await?)?;
        }
        let kid = format!("{}-{}-{}", svc, mine.len() + 1, random_suffix(10));
        let mut jwk = current.jwk.clone();
        jwk.kid = Some(kid.clone());
        self.state.insert_key(&KeyRecord::pending_public(id, svc, kid.clone(), jwk)).await?;
        self.state
            .append_evidence(
                id,
                "key.issued",
                json!({"service": svc, "kid": kid, "alg": rec.config.algorithm, "rotation": true, "custody": "transit",
                       "transit_key": name.to_string(), "version": current.version, "actor": self.actor}),
            )
            .await?;
        self.state.publish_next_key(&kid).await?;
        Ok(NextKey { service: svc.clone(), kid, created: true })
    }

    /// Step 2: every selected service with a published next key signs with it from now on; its
    /// old key is accepted `overlap_s` more seconds, or refused at once when `emergency`.
    /// Call it once the registry version of step 1 reached every verifier. Services without a
    /// next key are left as they are.
    pub async fn switch_signing(
        &self,
        id: &PreviewId,
        service: Option<&ServiceName>,
        overlap_s: u64,
        emergency: bool,
    ) -> Result<Vec<Switched>, LifecycleError> {
        self.locked(id, async || self.switch_signing_locked(id, service, overlap_s, emergency).await).await
    }

    async fn switch_signing_locked(
        &self,
        id: &PreviewId,
        service: Option<&ServiceName>,
        overlap_s: u64,
        emergency: bool,
    ) -> Result<Vec<Switched>, LifecycleError> {
        let rec = self.rotatable(id).await?;
        let services = selected(&rec, service)?;
        let keys = self.state.keys(id).await?;
        let mut out = Vec::new();
        // Under transit custody the vault holds every version: nothing to copy or delete.
        let staged = rec.config.key_custody == KeyCustody::Sidecar;
        for svc in &services {
            let next_path = SecretPath::next_private_key(id, svc);
            let Some(next) = keys.iter().find(|k| &k.service == svc && k.state == KeyState::Next) else {
                // A run killed after the switch left the copy in `next-private-key`.
                if staged && self.secrets.get(&next_path).await?.is_some() {
                    self.delete_recorded(id, &next_path).await?;
                }
                continue;
            };
            if staged {
                let bytes = self.secrets.get(&next_path).await?.ok_or_else(|| pvid_store::StoreError::BadSecret {
                    path: format!("{next_path} (missing: run pvid rotate again to issue a new key)"),
                })?;
                let stored = StoredKey::from_bytes(&next_path, &bytes)?;
                if stored.kid != next.kid {
                    return Err(pvid_store::StoreError::BadSecret { path: format!("{next_path} holds {} not {}", stored.kid, next.kid) }.into());
                }
                let meta = SecretMeta { kid: &next.kid, created_at: next.created_at };
                self.secrets.put_key(&SecretPath::private_key(id, svc), &bytes, &meta).await?;
                self.failpoint("after_signing_secret_write").await;
            }
            let old = keys.iter().find(|k| &k.service == svc && k.state == KeyState::Active);
            let now = unix_now();
            let until = if emergency { now } else { now + overlap_s as i64 };
            let reason = emergency.then_some("emergency rotation");
            self.state.switch_signing_key(id, old.map_or("", |k| k.kid.as_str()), &next.kid, until, reason).await?;
            self.state
                .append_evidence(
                    id,
                    "key.rotated",
                    json!({"service": svc, "old_kid": old.map(|k| &k.kid), "new_kid": next.kid,
                           "old_key_until": until, "emergency": emergency, "actor": self.actor}),
                )
                .await?;
            if let (Some(old), true) = (old, emergency) {
                self.state
                    .append_evidence(id, "key.revoked", json!({"service": svc, "kid": old.kid, "reason": "emergency rotation"}))
                    .await?;
            }
            self.publish(id).await?;
            if staged {
                self.delete_recorded(id, &next_path).await?;
            }
            out.push(Switched { service: svc.clone(), old_kid: old.map(|k| k.kid.clone()), new_kid: next.kid.clone(), old_key_until: until });
        }
        Ok(out)
    }

    /// Step 3: revokes the retiring keys of a preview whose overlap ended at or before `now`.
    /// Verifiers already refuse them by then; this moves them to the registry's revoked list.
    /// Returns the kids revoked.
    pub async fn retire_due(&self, id: &PreviewId, now: i64) -> Result<Vec<String>, LifecycleError> {
        self.locked(id, async || self.retire_due_locked(id, now).await).await
    }

    async fn retire_due_locked(&self, id: &PreviewId, now: i64) -> Result<Vec<String>, LifecycleError> {
        let due: Vec<KeyRecord> = self
            .state
            .keys(id)
            .await?
            .into_iter()
            .filter(|k| k.state == KeyState::Retiring && k.retire_at.is_some_and(|t| t <= now))
            .collect();
        for k in &due {
            self.revoke_recorded(id, k, "rotation").await?;
        }
        if !due.is_empty() {
            self.publish(id).await?;
        }
        Ok(due.into_iter().map(|k| k.kid).collect())
    }

    /// Moves a shared-mode preview to per-service keys, step one: the stored mode becomes
    /// `per-service` (so the rotation that follows issues fresh keys of its own) and, in the same
    /// locked run, every service's new key is published as [`Control::begin_rotation`] does.
    /// Then [`Control::switch_signing`] finishes it, calls flowing throughout. Re-running it on
    /// a preview already moved resumes the rotation.
    pub async fn begin_migration(&self, id: &PreviewId) -> Result<Vec<NextKey>, LifecycleError> {
        self.locked(id, async || {
            let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
            if rec.state != PreviewState::Active {
                return Err(LifecycleError::NotActive { preview: id.to_string(), state: rec.state.to_string() });
            }
            let keys = self.state.keys(id).await?;
            let resuming = keys.iter().any(|k| k.state == KeyState::Next);
            if rec.config.mode == CredentialMode::PerService && !resuming {
                return Err(LifecycleError::AlreadyPerService(id.to_string()));
            }
            if rec.config.mode == CredentialMode::Shared {
                let mut config = rec.config.clone();
                config.mode = CredentialMode::PerService;
                self.state.set_config(id, &config).await?;
                self.state.append_evidence(id, "preview.migrated", json!({"from": "shared", "to": "per-service", "actor": self.actor})).await?;
            }
            self.begin_rotation_locked(id, None, false).await
        })
        .await
    }

    /// One pass of scheduled rotation (`rotation_period` in the spec; `pvid serve` runs it):
    /// for every active preview, overlaps that ended are closed, new keys published at least
    /// `publish_delay_s` ago become the signing keys, and services whose key is older than the
    /// period get a new one published. Returns what it did, one line per step, for the log.
    pub async fn advance_rotations(&self, now: i64, publish_delay_s: u64) -> Result<Vec<(PreviewId, String)>, LifecycleError> {
        let mut done = Vec::new();
        for rec in self.state.previews().await? {
            if rec.state != PreviewState::Active {
                continue;
            }
            let id = rec.id.clone();
            for kid in self.retire_due(&id, now).await? {
                done.push((id.clone(), format!("revoked {kid}: its overlap ended")));
            }
            let Some(period) = rec.config.rotation_period_s else { continue };
            let overlap = default_overlap_s(rec.config.token_ttl_s);
            let keys = self.state.keys(&id).await?;
            for svc in rec.config.services.iter().map(|s| &s.name) {
                let of = |state: KeyState| keys.iter().find(|k| &k.service == svc && k.state == state);
                if let Some(next) = of(KeyState::Next) {
                    if next.created_at + publish_delay_s as i64 <= now {
                        for s in self.switch_signing(&id, Some(svc), overlap, false).await? {
                            done.push((id.clone(), format!("{} signs with {}", s.service, s.new_kid)));
                        }
                    }
                } else if of(KeyState::Retiring).is_none() && of(KeyState::Active).is_some_and(|k| k.created_at + period as i64 <= now) {
                    for n in self.begin_rotation(&id, Some(svc), false).await? {
                        done.push((id.clone(), format!("{} published new key {}", n.service, n.kid)));
                    }
                }
            }
        }
        Ok(done)
    }

    /// Runs `op` holding the preview's operation lock (see [`Control::provision`]).
    async fn locked<T>(&self, id: &PreviewId, op: impl AsyncFnOnce() -> Result<T, LifecycleError>) -> Result<T, LifecycleError> {
        let lock = self.state.lock_preview(id).await?;
        let result = op().await;
        lock.release().await;
        result
    }

    /// The preview, if it may rotate: active, and not on the shared credential.
    async fn rotatable(&self, id: &PreviewId) -> Result<PreviewRecord, LifecycleError> {
        let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        if rec.state != PreviewState::Active {
            return Err(LifecycleError::NotActive { preview: id.to_string(), state: rec.state.to_string() });
        }
        if rec.config.mode == CredentialMode::Shared {
            return Err(LifecycleError::SharedRotation(id.to_string()));
        }
        Ok(rec)
    }

    async fn revoke_recorded(&self, id: &PreviewId, k: &KeyRecord, reason: &str) -> Result<(), LifecycleError> {
        self.state.revoke_key(&k.kid, reason).await?;
        self.state.append_evidence(id, "key.revoked", json!({"service": k.service, "kid": k.kid, "reason": reason})).await?;
        Ok(())
    }

    async fn delete_recorded(&self, id: &PreviewId, path: &SecretPath) -> Result<(), LifecycleError> {
        self.secrets.delete(path).await?;
        self.state.append_evidence(id, "secret.deleted", json!({"path": path.to_string(), "store": self.secrets.kind()})).await?;
        Ok(())
    }
}

/// The services a rotation covers: one, or all of the spec's.
fn selected(rec: &PreviewRecord, service: Option<&ServiceName>) -> Result<Vec<ServiceName>, LifecycleError> {
    match service {
        Some(s) if rec.config.services.iter().any(|c| &c.name == s) => Ok(vec![s.clone()]),
        Some(s) => Err(LifecycleError::UnknownService { preview: rec.id.to_string(), service: s.to_string() }),
        None => Ok(rec.config.services.iter().map(|c| c.name.clone()).collect()),
    }
}
