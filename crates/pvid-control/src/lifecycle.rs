//! Provision and teardown (see the crate docs for the order of operations).

use pvid_core::key::random_suffix;
use pvid_core::{PreviewConfig, PreviewId, PreviewState, ServiceName, SigningKey};
use pvid_store::state::unix_now;
use pvid_store::{KeyRecord, KeyState, SecretPath, SecretStore, StateStore, StoredKey};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::LifecycleError;
use crate::publish::{build_registry, write_registry_files};

/// What `provision` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProvisionOutcome {
    /// The preview was already active with this spec; nothing changed.
    AlreadyActive,
    /// A new preview (or a torn-down one provisioned again).
    Created,
    /// An interrupted provision was completed.
    Resumed,
}

/// What `teardown` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownOutcome {
    /// The preview was already torn down; nothing changed.
    AlreadyTornDown,
    /// The preview is now torn down.
    TornDown,
}

/// The lifecycle operations over a state store and a secret store.
pub struct Control {
    pub(crate) state: StateStore,
    pub(crate) secrets: Arc<dyn SecretStore>,
    pub(crate) home: PathBuf,
    failpoint: Option<String>,
}

impl Control {
    /// Operations over these stores; registry files go under `home/previews/`.
    pub fn new(state: StateStore, secrets: Arc<dyn SecretStore>, home: PathBuf) -> Control {
        Control { state, secrets, home, failpoint: None }
    }

    /// Test-only crash injection: the process exits (code 86) when it reaches the named point
    /// (`after_secret_write`, `after_key_activate`, `after_revoke`, `after_secret_delete`).
    pub fn with_failpoint(mut self, name: Option<String>) -> Control {
        self.failpoint = name;
        self
    }

    /// The state store.
    pub fn state(&self) -> &StateStore {
        &self.state
    }

    /// The secret store.
    pub fn secrets(&self) -> &dyn SecretStore {
        self.secrets.as_ref()
    }

    fn failpoint(&self, name: &str) {
        if self.failpoint.as_deref() == Some(name) {
            eprintln!("pvid: failpoint {name} reached; exiting as if crashed");
            std::process::exit(86);
        }
    }

    /// Provisions a preview: a fresh key pair per service, private keys into the secret store,
    /// public keys into the registry. Idempotent; completes an interrupted run; on failure,
    /// removes what this run wrote.
    ///
    /// Holds the preview's operation lock throughout, so a concurrent provision or teardown of
    /// the same preview (in this process, another process, or another replica on the same
    /// PostgreSQL) runs before or after it, never interleaved.
    pub async fn provision(&self, id: &PreviewId, config: &PreviewConfig) -> Result<ProvisionOutcome, LifecycleError> {
        let lock = self.state.lock_preview(id).await?;
        let result = self.provision_locked(id, config).await;
        lock.release().await;
        result
    }

    async fn provision_locked(&self, id: &PreviewId, config: &PreviewConfig) -> Result<ProvisionOutcome, LifecycleError> {
        let existing = self.state.preview(id).await?;
        let outcome = match &existing {
            Some(rec) if rec.state == PreviewState::Active => {
                if &rec.config != config {
                    return Err(LifecycleError::SpecChanged(id.to_string()));
                }
                // Still republish: the files may have been removed.
                write_registry_files(&self.home, &build_registry(rec, &self.state.keys(id).await?))?;
                return Ok(ProvisionOutcome::AlreadyActive);
            }
            Some(rec) if rec.state == PreviewState::TearingDown => {
                return Err(LifecycleError::TearingDown(id.to_string()));
            }
            Some(rec) if rec.state == PreviewState::Provisioning => ProvisionOutcome::Resumed,
            _ => ProvisionOutcome::Created,
        };
        let version = self.state.begin_provision(id, config).await?;
        self.state
            .append_evidence(id, "preview.provisioning", json!({"version": version, "services": config.services.len()}))
            .await?;
        let mut issued = Vec::new();
        if let Err(e) = self.issue_keys(id, config, &mut issued).await {
            self.roll_back(id, existing.is_none(), &issued).await;
            return Err(e);
        }
        let version = self.state.set_state(id, PreviewState::Active).await?;
        let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        write_registry_files(&self.home, &build_registry(&rec, &self.state.keys(id).await?))?;
        self.state.append_evidence(id, "preview.provisioned", json!({"version": version})).await?;
        Ok(outcome)
    }

    /// Makes sure every service of `config` has exactly one active key with its secret stored.
    async fn issue_keys(
        &self,
        id: &PreviewId,
        config: &PreviewConfig,
        issued: &mut Vec<(ServiceName, String)>,
    ) -> Result<(), LifecycleError> {
        let keys = self.state.keys(id).await?;
        // Keys of services the spec no longer has are revoked and their secrets removed.
        for k in keys.iter().filter(|k| k.state != KeyState::Revoked) {
            if !config.services.iter().any(|s| s.name == k.service) {
                self.state.revoke_key(&k.kid, "service removed").await?;
                self.secrets.delete(&SecretPath::private_key(id, &k.service)).await?;
            }
        }
        for svc in &config.services {
            let path = SecretPath::private_key(id, &svc.name);
            let stored_kid = match self.secrets.get(&path).await? {
                Some(bytes) => Some(StoredKey::from_bytes(&path, &bytes)?.kid),
                None => None,
            };
            let mine: Vec<&KeyRecord> = keys.iter().filter(|k| k.service == svc.name).collect();
            let mut have_active = false;
            for k in &mine {
                let matches_secret = stored_kid.as_deref() == Some(k.kid.as_str());
                match k.state {
                    KeyState::Active if matches_secret && k.jwk.algorithm().ok() == Some(config.algorithm) => {
                        have_active = true;
                    }
                    // An active key without its secret (or of another algorithm) cannot sign.
                    KeyState::Active => self.state.revoke_key(&k.kid, "secret missing or replaced").await?,
                    // A crash between the secret write and activation: finish it.
                    KeyState::Pending if matches_secret && !have_active => {
                        self.state.activate_key(&k.kid).await?;
                        self.state
                            .append_evidence(id, "key.issued", json!({"service": svc.name, "kid": k.kid, "resumed": true}))
                            .await?;
                        have_active = true;
                    }
                    KeyState::Pending => self.state.delete_pending_key(&k.kid).await?,
                    KeyState::Revoked => {}
                }
            }
            if have_active {
                continue;
            }
            let n = mine.len() + 1;
            // Kids are unique across every preview of the state store (its primary key): a
            // 10-character suffix (~51 bits) keeps thousands of previews of the same services
            // clear of collisions (3 characters collided within a few hundred).
            let kid = format!("{}-{n}-{}", svc.name, random_suffix(10));
            let key = SigningKey::generate(config.algorithm, kid.clone())
                .map_err(|e| LifecycleError::KeyGen { service: svc.name.to_string(), reason: e.to_string() })?;
            self.state
                .insert_key(&KeyRecord {
                    kid: kid.clone(),
                    preview_id: id.clone(),
                    service: svc.name.clone(),
                    state: KeyState::Pending,
                    jwk: key.public_jwk(),
                    created_at: unix_now(),
                    revoked_at: None,
                    revoke_reason: None,
                })
                .await?;
            issued.push((svc.name.clone(), kid.clone()));
            self.secrets.put(&path, &StoredKey::from_signing_key(&key).to_bytes()).await?;
            self.failpoint("after_secret_write");
            self.state.activate_key(&kid).await?;
            self.failpoint("after_key_activate");
            self.state
                .append_evidence(id, "key.issued", json!({"service": svc.name, "kid": kid, "alg": config.algorithm}))
                .await?;
        }
        Ok(())
    }

    /// Removes what a failed provision wrote. Best effort: what it cannot remove stays recorded
    /// (pending key rows, state `provisioning`), so the orphan audit and a re-run find it.
    async fn roll_back(&self, id: &PreviewId, created: bool, issued: &[(ServiceName, String)]) {
        let mut clean = true;
        for (svc, kid) in issued {
            let path = SecretPath::private_key(id, svc);
            if self.secrets.delete(&path).await.is_ok() {
                clean &= self.state.revoke_key(kid, "provision rolled back").await.is_ok();
            } else {
                clean = false;
            }
        }
        let _ = self.state.append_evidence(id, "preview.provision_failed", json!({"rolled_back": clean})).await;
        if created && clean {
            let _ = self.state.set_state(id, PreviewState::TornDown).await;
        }
    }

    /// Tears a preview down: registry refuses at once, keys revoked, secrets deleted and proven
    /// gone. Idempotent; a re-run after an interruption completes it. Holds the preview's
    /// operation lock throughout (see [`Control::provision`]).
    pub async fn teardown(&self, id: &PreviewId) -> Result<TeardownOutcome, LifecycleError> {
        let lock = self.state.lock_preview(id).await?;
        let result = self.teardown_locked(id).await;
        lock.release().await;
        result
    }

    /// Tears down a preview whose TTL ran out: the same teardown as [`Control::teardown`], after
    /// checking, under the preview's lock, that it is still active and expired at `now` (so that
    /// of several replicas reaping at once exactly one does it, and a preview provisioned again
    /// meanwhile is left alone). Records `preview.expired` with `reaper` (who reaped it) first.
    /// Returns `None` when there was nothing to reap.
    pub async fn reap(&self, id: &PreviewId, now: i64, reaper: &str) -> Result<Option<TeardownOutcome>, LifecycleError> {
        let lock = self.state.lock_preview(id).await?;
        let result = async {
            let Some(rec) = self.state.preview(id).await? else { return Ok(None) };
            let expired = rec.state == PreviewState::Active && rec.expires_at.is_some_and(|t| t <= now);
            if !expired {
                return Ok(None);
            }
            self.state
                .append_evidence(id, "preview.expired", json!({"expires_at": rec.expires_at, "reaped_by": reaper, "version": rec.version}))
                .await?;
            self.teardown_locked(id).await.map(Some)
        }
        .await;
        lock.release().await;
        result
    }

    /// Reaps every active preview whose TTL ran out at or before `now` (see [`Control::reap`]).
    /// Returns the previews this call tore down.
    pub async fn reap_expired(&self, now: i64, reaper: &str) -> Result<Vec<PreviewId>, LifecycleError> {
        let mut reaped = Vec::new();
        for id in self.state.expired_previews(now).await? {
            if self.reap(&id, now, reaper).await? == Some(TeardownOutcome::TornDown) {
                reaped.push(id);
            }
        }
        Ok(reaped)
    }

    async fn teardown_locked(&self, id: &PreviewId) -> Result<TeardownOutcome, LifecycleError> {
        let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        if rec.state == PreviewState::TornDown && self.secrets_of(id).await?.is_empty() {
            return Ok(TeardownOutcome::AlreadyTornDown);
        }
        if rec.state != PreviewState::TearingDown {
            let version = self.state.set_state(id, PreviewState::TearingDown).await?;
            self.publish(id).await?;
            self.state.append_evidence(id, "preview.tearing_down", json!({"version": version})).await?;
        }
        for k in self.state.keys(id).await?.iter().filter(|k| k.state != KeyState::Revoked) {
            self.state.revoke_key(&k.kid, "teardown").await?;
            self.state.append_evidence(id, "key.revoked", json!({"service": k.service, "kid": k.kid, "reason": "teardown"})).await?;
        }
        self.failpoint("after_revoke");
        let mut paths: Vec<SecretPath> = rec.config.services.iter().map(|s| SecretPath::private_key(id, &s.name)).collect();
        paths.extend(self.secrets_of(id).await?);
        paths.sort();
        paths.dedup();
        for path in &paths {
            let existed = self.secrets.get(path).await.map(|v| v.is_some()).unwrap_or(true);
            self.secrets.delete(path).await?;
            if existed {
                self.state.append_evidence(id, "secret.deleted", json!({"path": path.to_string(), "store": self.secrets.kind()})).await?;
            }
        }
        self.failpoint("after_secret_delete");
        let left = self.secrets_of(id).await?;
        if !left.is_empty() {
            return Err(LifecycleError::SecretsRemain {
                preview: id.to_string(),
                paths: left.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            });
        }
        let version = self.state.set_state(id, PreviewState::TornDown).await?;
        self.publish(id).await?;
        self.state.append_evidence(id, "preview.torn_down", json!({"version": version})).await?;
        Ok(TeardownOutcome::TornDown)
    }

    /// Republishes a preview's registry files from the state store.
    pub async fn publish(&self, id: &PreviewId) -> Result<(), LifecycleError> {
        let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        write_registry_files(&self.home, &build_registry(&rec, &self.state.keys(id).await?))
    }

    /// The registry of a preview, as the state store has it now.
    pub async fn registry(&self, id: &PreviewId) -> Result<pvid_core::Registry, LifecycleError> {
        let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        Ok(build_registry(&rec, &self.state.keys(id).await?))
    }

    /// Loads a service's signing key from the secret store.
    pub async fn signing_key(&self, id: &PreviewId, service: &ServiceName) -> Result<Option<SigningKey>, LifecycleError> {
        let path = SecretPath::private_key(id, service);
        match self.secrets.get(&path).await? {
            Some(bytes) => Ok(Some(StoredKey::from_bytes(&path, &bytes)?.to_signing_key(&path)?)),
            None => Ok(None),
        }
    }

    async fn secrets_of(&self, id: &PreviewId) -> Result<Vec<SecretPath>, LifecycleError> {
        Ok(self.secrets.list().await?.into_iter().filter(|p| &p.preview == id).collect())
    }
}
