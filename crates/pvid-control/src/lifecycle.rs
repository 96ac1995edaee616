//! Provision and teardown (see the crate docs for the order of operations).

use pvid_core::key::random_suffix;
use pvid_core::{Algorithm, CredentialMode, Jwk, KeyCustody, PreviewConfig, PreviewId, PreviewState, ServiceName, SigningKey};
use pvid_store::state::unix_now;
use pvid_store::{
    KeyRecord, KeyState, SecretMeta, SecretPath, SecretStore, StateStore, StoreError, StoredKey, TransitKeyName, TransitKeys,
};
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

/// What a provision wrote to the secret store, for its rollback.
#[derive(Clone, Debug)]
enum Issued {
    /// A private key at `preview/<id>/<svc>/private-key` (service, kid).
    Secret(ServiceName, String),
    /// A Transit key (name).
    Transit(String),
}

/// How a service signs (see [`Control::signing_source`]).
#[derive(Debug)]
pub enum SigningSource {
    /// Sidecar custody: the private key itself.
    Local(SigningKey),
    /// Transit custody: the vault signs with this key and version.
    Transit {
        /// `preview-<id>-<svc>`.
        key_name: String,
        /// The Transit key version whose public half is published under `kid`.
        version: u64,
        /// The published key id.
        kid: String,
        /// The algorithm.
        alg: Algorithm,
    },
}

/// Whether two JWKs hold the same public key (key members only; `kid`, `alg`, `use` ignored).
pub fn same_public_key(a: &Jwk, b: &Jwk) -> bool {
    (&a.kty, &a.crv, &a.x, &a.y, &a.n, &a.e) == (&b.kty, &b.crv, &b.x, &b.y, &b.n, &b.e)
}

/// The lifecycle operations over a state store and a secret store.
pub struct Control {
    pub(crate) state: StateStore,
    pub(crate) secrets: Arc<dyn SecretStore>,
    pub(crate) home: PathBuf,
    pub(crate) failpoint: Option<String>,
    pub(crate) actor: String,
    paused: std::sync::atomic::AtomicBool,
}

impl Control {
    /// Operations over these stores; registry files go under `home/previews/`.
    pub fn new(state: StateStore, secrets: Arc<dyn SecretStore>, home: PathBuf) -> Control {
        Control { state, secrets, home, failpoint: None, actor: "unknown".into(), paused: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Who runs the operations (`cli:alice`, `api:token`, `reaper`), recorded in the evidence
    /// trail of provisions and teardowns.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Control {
        self.actor = actor.into();
        self
    }

    /// Test-only crash injection (`PVID_FAILPOINT`, see docs/cli.md): `NAME` makes the process
    /// exit (code 86) when it reaches the named point (`after_secret_write`,
    /// `after_key_activate`, `after_revoke`, `after_secret_delete`); `NAME:pause=FILE` instead
    /// creates FILE the first time the point is reached and waits (at most 120 s) until FILE is
    /// removed, so a test can act (stop OpenBao) at exactly that instant.
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

    pub(crate) async fn failpoint(&self, name: &str) {
        let Some(spec) = self.failpoint.as_deref() else { return };
        let (point, pause) = match spec.split_once(":pause=") {
            Some((p, file)) => (p, Some(PathBuf::from(file))),
            None => (spec, None),
        };
        if point != name {
            return;
        }
        let Some(file) = pause else {
            eprintln!("pvid: failpoint {name} reached; exiting as if crashed");
            std::process::exit(86);
        };
        if self.paused.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        eprintln!("pvid: failpoint {name} reached; paused until {} is removed", file.display());
        let _ = std::fs::write(&file, name);
        for _ in 0..2400 {
            if !file.exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
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
                    return Err(LifecycleError::SpecChanged { preview: id.to_string(), changes: describe_changes(&rec.config, config) });
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
            .append_evidence(id, "preview.provisioning", json!({"version": version, "services": config.services.len(), "actor": self.actor}))
            .await?;
        let mut issued = Vec::new();
        let result = match config.key_custody {
            KeyCustody::Sidecar => self.issue_keys(id, config, &mut issued).await,
            KeyCustody::Transit => self.issue_transit_keys(id, config, &mut issued).await,
        };
        if let Err(e) = result {
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
        issued: &mut Vec<Issued>,
    ) -> Result<(), LifecycleError> {
        let keys = self.state.keys(id).await?;
        // Keys of services the spec no longer has are revoked and their secrets removed.
        for k in keys.iter().filter(|k| k.state != KeyState::Revoked) {
            if !config.services.iter().any(|s| s.name == k.service) {
                self.state.revoke_key(&k.kid, "service removed").await?;
                self.secrets.delete(&SecretPath::private_key(id, &k.service)).await?;
            }
        }
        let mut fresh: Vec<(ServiceName, SecretPath, SigningKey)> = Vec::new();
        // `mode: shared`: the one key pair, fetched (or made) once for every service.
        let mut shared: Option<StoredKey> = None;
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
                    // A rotation happens only on an active preview; one that is provisioning
                    // again keeps one key per service.
                    KeyState::Next | KeyState::Retiring => self.state.revoke_key(&k.kid, "provisioned again").await?,
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
            let key = match config.mode {
                CredentialMode::PerService => SigningKey::generate(config.algorithm, kid.clone())
                    .map_err(|e| LifecycleError::KeyGen { service: svc.name.to_string(), reason: e.to_string() })?,
                CredentialMode::Shared => {
                    if shared.is_none() {
                        shared = Some(self.shared_key(id, config.algorithm).await?);
                    }
                    let stored = shared.as_ref().unwrap_or_else(|| unreachable!("set just above"));
                    StoredKey { kid: kid.clone(), alg: stored.alg, pkcs8: stored.pkcs8.clone() }.to_signing_key(&SecretPath::shared())?
                }
            };
            fresh.push((svc.name.clone(), path, key));
        }
        // All services at once, in the documented order: every pending row (one commit), every
        // secret, the evidence, then activation (one commit). Per service these were three
        // commits each, and commits (fsyncs) were most of a provision's time (PERFORMANCE.md).
        let records: Vec<KeyRecord> = fresh.iter().map(|(service, _, key)| KeyRecord::pending(id, service, key)).collect();
        self.state.insert_keys(&records).await?;
        issued.extend(fresh.iter().map(|(service, _, key)| Issued::Secret(service.clone(), key.kid().to_owned())));
        for (_, path, key) in &fresh {
            let meta = SecretMeta { kid: key.kid(), created_at: unix_now() };
            self.secrets.put_key(path, &StoredKey::from_signing_key(key).to_bytes(), &meta).await?;
            self.failpoint("after_secret_write").await;
        }
        // Evidence before activation: a crash in between leaves the issue on record and a pending
        // key the re-run activates (recording it again as resumed), never an active key the
        // trail does not know.
        for (service, _, key) in &fresh {
            self.state
                .append_evidence(id, "key.issued", json!({"service": service, "kid": key.kid(), "alg": config.algorithm}))
                .await?;
        }
        let kids: Vec<String> = fresh.iter().map(|(_, _, key)| key.kid().to_owned()).collect();
        self.state.activate_keys(id, &kids).await?;
        self.failpoint("after_key_activate").await;
        Ok(())
    }

    /// The shared credential of `mode: shared` (at `shared/private-key`, created on first use).
    /// Each service signs with it under a kid of its own: the registry still names a service per
    /// kid, but every kid of every shared-mode preview is the same key pair.
    async fn shared_key(&self, id: &PreviewId, alg: Algorithm) -> Result<StoredKey, LifecycleError> {
        let path = SecretPath::shared();
        let existing = match self.secrets.get(&path).await? {
            Some(bytes) => Some(StoredKey::from_bytes(&path, &bytes)?),
            None => None,
        };
        // A shared key no other live preview signs with is replaced, not reused: whoever held it
        // (a preview torn down or migrated away) must not hold the next preview's key too.
        let users = match &existing {
            Some(stored) => self.previews_using(stored, Some(id)).await?,
            None => Vec::new(),
        };
        let stored = match existing {
            Some(stored) if !users.is_empty() => {
                if stored.alg != alg {
                    return Err(LifecycleError::SharedAlgorithm {
                        preview: id.to_string(),
                        shared: stored.alg.to_string(),
                        wanted: alg.to_string(),
                        users: users.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    });
                }
                stored
            }
            _ => {
                let key = SigningKey::generate(alg, format!("shared-{}", random_suffix(10)))
                    .map_err(|e| LifecycleError::KeyGen { service: "(shared)".into(), reason: e.to_string() })?;
                let stored = StoredKey::from_signing_key(&key);
                self.secrets.put_key(&path, &stored.to_bytes(), &SecretMeta { kid: key.kid(), created_at: unix_now() }).await?;
                self.state.append_evidence(id, "shared_key.created", json!({"path": path.to_string(), "alg": alg, "kid": key.kid()})).await?;
                stored
            }
        };
        self.state.append_evidence(id, "shared_key.used", json!({"path": path.to_string(), "shared_with": users})).await?;
        Ok(stored)
    }

    /// The previews that sign with a key made of the shared key: active ones, and `also` in any
    /// state (a provision resumed after a crash keeps the key its first run used).
    pub(crate) async fn previews_using(&self, shared: &StoredKey, also: Option<&PreviewId>) -> Result<Vec<PreviewId>, LifecycleError> {
        let public = StoredKey { kid: shared.kid.clone(), alg: shared.alg, pkcs8: shared.pkcs8.clone() }
            .to_signing_key(&SecretPath::shared())?
            .public_jwk();
        let active: Vec<PreviewId> =
            self.state.previews().await?.into_iter().filter(|p| p.state == PreviewState::Active || Some(&p.id) == also).map(|p| p.id).collect();
        let mut users: Vec<PreviewId> = self
            .state
            .unrevoked_keys()
            .await?
            .into_iter()
            // A retiring key is only accepted, never signed with: it does not need the secret.
            .filter(|k| k.state != KeyState::Retiring && active.contains(&k.preview_id) && same_public_key(&k.jwk, &public))
            .map(|k| k.preview_id)
            .collect();
        users.dedup();
        Ok(users)
    }

    /// Makes sure every service of `config` has exactly one active key whose private half is a
    /// Transit key `preview-<id>-<svc>` (transit custody). The vault makes the key, so its public
    /// half exists only after the write: the Transit key comes first, then the key row. A crash
    /// in between leaves a Transit key of a preview that is not active, which the orphan audit
    /// reports and the re-run adopts (it reads the public key back instead of making another).
    async fn issue_transit_keys(
        &self,
        id: &PreviewId,
        config: &PreviewConfig,
        issued: &mut Vec<Issued>,
    ) -> Result<(), LifecycleError> {
        let transit = self.transit()?;
        let keys = self.state.keys(id).await?;
        for k in keys.iter().filter(|k| k.state != KeyState::Revoked) {
            if !config.services.iter().any(|s| s.name == k.service) {
                self.state.revoke_key(&k.kid, "service removed").await?;
                transit.delete(&TransitKeyName::new(id, &k.service).to_string()).await?;
            }
        }
        for svc in &config.services {
            let name = TransitKeyName::new(id, &svc.name);
            let mut public = transit.public_keys(&name).await?;
            let latest = |public: &Option<Vec<pvid_store::TransitPublicKey>>| {
                public.as_ref().and_then(|v| v.last().cloned()).filter(|k| k.jwk.algorithm().ok() == Some(config.algorithm))
            };
            let current = latest(&public);
            let mine: Vec<&KeyRecord> = keys.iter().filter(|k| k.service == svc.name).collect();
            let mut have_active = false;
            for k in &mine {
                let matches = current.as_ref().is_some_and(|c| same_public_key(&c.jwk, &k.jwk));
                match k.state {
                    KeyState::Active if matches => have_active = true,
                    KeyState::Active => self.state.revoke_key(&k.kid, "transit key missing or replaced").await?,
                    KeyState::Pending if matches && !have_active => {
                        self.state.activate_key(&k.kid).await?;
                        self.state
                            .append_evidence(id, "key.issued", json!({"service": svc.name, "kid": k.kid, "resumed": true}))
                            .await?;
                        have_active = true;
                    }
                    KeyState::Pending => self.state.delete_pending_key(&k.kid).await?,
                    KeyState::Next | KeyState::Retiring => self.state.revoke_key(&k.kid, "provisioned again").await?,
                    KeyState::Revoked => {}
                }
            }
            if have_active {
                continue;
            }
            let created = public.is_none();
            if created {
                transit.create(&name, config.algorithm).await?;
                issued.push(Issued::Transit(name.to_string()));
                self.failpoint("after_secret_write").await;
                public = transit.public_keys(&name).await?;
            }
            let Some(current) = latest(&public) else {
                return Err(StoreError::TransitPublicKey {
                    name: name.to_string(),
                    reason: format!("no {} public key (delete the key or tear the preview down)", config.algorithm),
                }
                .into());
            };
            let kid = format!("{}-{}-{}", svc.name, mine.len() + 1, random_suffix(3));
            let mut jwk = current.jwk.clone();
            jwk.kid = Some(kid.clone());
            self.state.insert_key(&KeyRecord::pending_public(id, &svc.name, kid.clone(), jwk)).await?;
            self.state.activate_key(&kid).await?;
            self.failpoint("after_key_activate").await;
            self.state
                .append_evidence(
                    id,
                    "key.issued",
                    json!({"service": svc.name, "kid": kid, "alg": config.algorithm, "custody": "transit",
                           "transit_key": name.to_string(), "version": current.version, "adopted": !created}),
                )
                .await?;
        }
        Ok(())
    }

    fn transit(&self) -> Result<&dyn TransitKeys, LifecycleError> {
        self.secrets.transit().ok_or_else(|| StoreError::NoTransit(self.secrets.kind()).into())
    }

    /// Removes what a failed provision wrote. Best effort: what it cannot remove stays recorded
    /// (pending key rows, state `provisioning`), so the orphan audit and a re-run find it.
    async fn roll_back(&self, id: &PreviewId, created: bool, issued: &[Issued]) {
        let mut clean = true;
        for item in issued {
            match item {
                Issued::Secret(svc, kid) => {
                    let path = SecretPath::private_key(id, svc);
                    if self.secrets.delete(&path).await.is_ok() {
                        clean &= self.state.revoke_key(kid, "provision rolled back").await.is_ok();
                    } else {
                        clean = false;
                    }
                }
                Issued::Transit(name) => match self.secrets.transit() {
                    Some(t) => clean &= t.delete(name).await.is_ok(),
                    None => clean = false,
                },
            }
        }
        // Keys activated before the failure point at a secret that is gone now.
        if clean {
            for k in self.state.keys(id).await.unwrap_or_default().iter().filter(|k| k.state != KeyState::Revoked) {
                if issued.iter().any(|i| matches!(i, Issued::Transit(n) if *n == TransitKeyName::new(id, &k.service).to_string())) {
                    clean &= self.state.revoke_key(&k.kid, "provision rolled back").await.is_ok();
                }
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
        if rec.state == PreviewState::TornDown
            && self.secrets_of(id).await?.is_empty()
            && self.transit_keys_of(id, &rec.config).await?.is_empty()
        {
            // Republish: a run killed between the last state change and its publication left
            // a registry file that still says `tearing_down`.
            self.publish(id).await?;
            return Ok(TeardownOutcome::AlreadyTornDown);
        }
        if rec.state == PreviewState::TearingDown {
            // A resumed teardown: the killed run may have died before publishing the state.
            self.publish(id).await?;
        } else {
            let version = self.state.set_state(id, PreviewState::TearingDown).await?;
            self.publish(id).await?;
            self.state.append_evidence(id, "preview.tearing_down", json!({"version": version, "actor": self.actor})).await?;
        }
        for k in self.state.keys(id).await?.iter().filter(|k| k.state != KeyState::Revoked) {
            self.state.revoke_key(&k.kid, "teardown").await?;
            self.state.append_evidence(id, "key.revoked", json!({"service": k.service, "kid": k.kid, "reason": "teardown"})).await?;
        }
        self.failpoint("after_revoke").await;
        let listed = self.secrets_of(id).await?;
        let mut paths: Vec<SecretPath> = rec.config.services.iter().map(|s| SecretPath::private_key(id, &s.name)).collect();
        paths.extend(listed.iter().cloned());
        paths.sort();
        paths.dedup();
        for path in &paths {
            // A path that does not exist is not deleted (under transit custody no KV path
            // exists); one that cannot be read is deleted anyway, and so is one the store lists
            // without a readable value (a local write killed before its rename).
            let existed = listed.contains(path) || self.secrets.get(path).await.map(|v| v.is_some()).unwrap_or(true);
            if existed {
                self.secrets.delete(path).await?;
                self.state.append_evidence(id, "secret.deleted", json!({"path": path.to_string(), "store": self.secrets.kind()})).await?;
            }
        }
        let transit_keys = self.transit_keys_of(id, &rec.config).await?;
        if let Some(transit) = self.secrets.transit() {
            for name in &transit_keys {
                let parsed = TransitKeyName::parse(name, &[id]);
                let existed = match &parsed {
                    Some(n) => transit.public_keys(n).await?.is_some(),
                    None => true,
                };
                transit.delete(name).await?;
                if existed {
                    self.state
                        .append_evidence(id, "transit_key.deleted", json!({"transit_key": name, "store": self.secrets.kind()}))
                        .await?;
                }
            }
        }
        self.failpoint("after_secret_delete").await;
        // Prove it: every path read back, the store listed again, every Transit key read back.
        let mut left: Vec<String> = Vec::new();
        for path in &paths {
            if self.secrets.get(path).await?.is_some() {
                left.push(path.to_string());
            }
        }
        left.extend(self.secrets_of(id).await?.iter().map(ToString::to_string));
        if let Some(transit) = self.secrets.transit() {
            let live = transit.list().await?;
            left.extend(transit_keys.iter().filter(|n| live.contains(n)).cloned());
        }
        left.sort();
        left.dedup();
        if !left.is_empty() {
            return Err(LifecycleError::SecretsRemain { preview: id.to_string(), paths: left.join(", ") });
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

    /// How a service of an active preview signs: its private key (sidecar custody) or the
    /// Transit key and version whose public half is the service's active key (transit custody).
    pub async fn signing_source(&self, id: &PreviewId, service: &ServiceName) -> Result<Option<SigningSource>, LifecycleError> {
        let rec = self.state.preview(id).await?.ok_or_else(|| LifecycleError::NotFound(id.to_string()))?;
        if rec.config.key_custody == KeyCustody::Sidecar {
            return Ok(self.signing_key(id, service).await?.map(SigningSource::Local));
        }
        let Some(active) = self.state.keys(id).await?.into_iter().find(|k| &k.service == service && k.state == KeyState::Active)
        else {
            return Ok(None);
        };
        let name = TransitKeyName::new(id, service);
        let versions = self.transit()?.public_keys(&name).await?.unwrap_or_default();
        let version = versions.iter().find(|v| same_public_key(&v.jwk, &active.jwk)).map(|v| v.version).ok_or_else(|| {
            StoreError::TransitPublicKey {
                name: name.to_string(),
                reason: format!("no version holds the public key of active key {} (re-run pvid up)", active.kid),
            }
        })?;
        Ok(Some(SigningSource::Transit { key_name: name.to_string(), version, kid: active.kid, alg: rec.config.algorithm }))
    }

    /// Transit keys that belong to a preview: those of its services, and any other listed key
    /// named for it (none when the store has no Transit custody).
    async fn transit_keys_of(&self, id: &PreviewId, config: &PreviewConfig) -> Result<Vec<String>, LifecycleError> {
        let Some(transit) = self.secrets.transit() else { return Ok(Vec::new()) };
        let listed = transit.list().await?;
        let mut out: Vec<String> = config
            .services
            .iter()
            .map(|s| TransitKeyName::new(id, &s.name).to_string())
            .filter(|n| listed.contains(n))
            .collect();
        let previews = self.state.previews().await?;
        let known: Vec<&PreviewId> = previews.iter().map(|p| &p.id).collect();
        out.extend(listed.iter().filter(|n| TransitKeyName::parse(n, &known).is_some_and(|k| &k.preview == id)).cloned());
        out.sort();
        out.dedup();
        Ok(out)
    }

    async fn secrets_of(&self, id: &PreviewId) -> Result<Vec<SecretPath>, LifecycleError> {
        Ok(self.secrets.list_preview(id).await?)
    }
}

/// What differs between two stored specs, in words (`token_ttl 300s -> 60s; services added: x`).
fn describe_changes(old: &PreviewConfig, new: &PreviewConfig) -> String {
    let mut out = Vec::new();
    if old.algorithm != new.algorithm {
        out.push(format!("algorithm {} -> {}", old.algorithm, new.algorithm));
    }
    if old.token_ttl_s != new.token_ttl_s {
        out.push(format!("token_ttl {}s -> {}s", old.token_ttl_s, new.token_ttl_s));
    }
    if old.ttl_s != new.ttl_s {
        out.push("ttl changed".to_owned());
    }
    if old.mode != new.mode {
        out.push(format!("mode {} -> {}", old.mode, new.mode));
    }
    if old.rotation_period_s != new.rotation_period_s {
        out.push("rotation_period changed".to_owned());
    }
    let names = |c: &PreviewConfig| c.services.iter().map(|s| s.name.to_string()).collect::<Vec<_>>();
    let (o, n) = (names(old), names(new));
    let added: Vec<&String> = n.iter().filter(|s| !o.contains(s)).collect();
    let removed: Vec<&String> = o.iter().filter(|s| !n.contains(s)).collect();
    if !added.is_empty() {
        out.push(format!("services added: {}", added.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
    }
    if !removed.is_empty() {
        out.push(format!("services removed: {}", removed.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")));
    }
    if added.is_empty() && removed.is_empty() && old.services != new.services {
        out.push("service addresses or audiences changed".to_owned());
    }
    if old.policy != new.policy {
        out.push("calls changed".to_owned());
    }
    if out.is_empty() { "order of services changed".to_owned() } else { out.join("; ") }
}
