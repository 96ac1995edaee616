//! The registry in force and the watcher that reloads it: from its file (below), or from the
//! control plane over HTTP (`registry_source.rs` fetches; [`watch_http`] loops).
//!
//! The file is read every [`POLL_INTERVAL`] and its SHA-256 compared with the one in force (mtime
//! and length miss a same-size rewrite within the timestamp granularity; the files are small).
//! A changed file is parsed, checked for this preview and service, and turned into a [`Verifier`];
//! only then is it swapped in, atomically, for every request that starts afterwards. Any failure
//! keeps the last good registry (never an empty key set) and is logged once per distinct cause as
//! `registry.reload_failed`. A swap drops cached verifications of keys that are no longer live
//! and, when this service's own keys changed, the egress tokens minted with the old ones.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use aws_lc_rs::digest;
use pvid_core::{Policy, PreviewId, Registry, ServiceName, Verifier};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::log::{KeyEvent, RegistryEvent, clip_detail, clip_field, rfc3339_millis};
use crate::registry_source::{Fetched, HttpWatch, MAX_BACKOFF, RegistrySource};
use crate::server::stopped;
use crate::shared::Shared;

/// How often the registry file is checked.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A loaded registry, ready to answer requests. Immutable; replaced as a whole.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub registry: Registry,
    pub verifier: Verifier,
    pub policy: Policy,
    /// SHA-256 of the file content it came from.
    pub digest: [u8; 32],
}

impl Snapshot {
    /// Parses a registry file's content for `service` of `preview`.
    pub(crate) fn parse(bytes: &[u8], preview: &PreviewId, service: &ServiceName) -> Result<Snapshot, String> {
        let registry = Registry::from_json(bytes)?;
        if &registry.preview != preview {
            return Err(format!("registry is for preview {}, this sidecar serves {preview}", registry.preview));
        }
        let verifier = Verifier::for_service(&registry, service).map_err(|e| format!("registry: {e}"))?;
        let policy = Policy::new(registry.policy.clone());
        Ok(Snapshot { registry, verifier, policy, digest: sha256(bytes) })
    }

    /// The kids the registry lists for `service` (empty when the service is gone).
    pub(crate) fn kids_of(&self, service: &ServiceName) -> &[String] {
        self.registry.services.get(service).map_or(&[], |e| e.kids.as_slice())
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The snapshot in force. Readers take an `Arc` and keep using it for the whole request.
#[derive(Debug)]
pub(crate) struct RegistryHandle {
    current: RwLock<Arc<Snapshot>>,
    /// When the snapshot in force was put in force (Unix milliseconds, wall clock).
    loaded_at_ms: std::sync::atomic::AtomicU64,
}

impl RegistryHandle {
    pub(crate) fn new(snapshot: Arc<Snapshot>) -> RegistryHandle {
        RegistryHandle { current: RwLock::new(snapshot), loaded_at_ms: std::sync::atomic::AtomicU64::new(wall_ms()) }
    }

    /// When the snapshot in force was loaded (Unix seconds).
    pub(crate) fn loaded_at(&self) -> f64 {
        self.loaded_at_ms.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    }

    /// The snapshot in force.
    pub(crate) fn load(&self) -> Arc<Snapshot> {
        // The lock only guards an `Arc` swap, which cannot leave it half-written.
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `next` in force and returns the one it replaces.
    fn store(&self, next: Arc<Snapshot>) -> Arc<Snapshot> {
        let mut guard = self.current.write().unwrap_or_else(PoisonError::into_inner);
        self.loaded_at_ms.store(wall_ms(), std::sync::atomic::Ordering::Relaxed);
        std::mem::replace(&mut *guard, next)
    }
}

/// Why the last reload failed, so the same failure is logged once, not every poll.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Read(std::io::ErrorKind),
    Content([u8; 32]),
}

impl Shared {
    /// A `registry.*` log line about the snapshot in force.
    pub(crate) fn registry_event(
        &self,
        event: &'static str,
        current: &Snapshot,
        previous_version: Option<u64>,
        error: Option<String>,
    ) -> RegistryEvent<'_> {
        RegistryEvent {
            ts: rfc3339_millis(self.clock.now()),
            event,
            preview_id: self.preview.as_str(),
            service: self.service.as_str(),
            path: match &self.http {
                Some(h) => h.base().to_owned(),
                None => self.registry_source.describe(),
            },
            registry_version: current.registry.version,
            previous_version,
            state: current.registry.state.as_str(),
            error,
        }
    }

    /// Checks the file once; reloads when its content changed.
    async fn poll_registry(&self, last_failure: &mut Option<Failure>) {
        let RegistrySource::File(path) = &self.registry_source else { return };
        let bytes = match tokio::fs::read(path).await {
            Ok(b) => b,
            Err(e) => {
                let failure = Failure::Read(e.kind());
                if last_failure.as_ref() != Some(&failure) {
                    let current = self.registry.load();
                    let line = self.registry_event(
                        "registry.reload_failed",
                        &current,
                        None,
                        Some(format!("cannot read: {e}; keeping version {}", current.registry.version)),
                    );
                    self.log.record(&line);
                    *last_failure = Some(failure);
                }
                return;
            }
        };
        let current = self.registry.load();
        let digest = sha256(&bytes);
        if digest == current.digest {
            *last_failure = None;
            return;
        }
        if last_failure.as_ref() == Some(&Failure::Content(digest)) {
            return;
        }
        match Snapshot::parse(&bytes, &self.preview, &self.service).and_then(|next| {
            // Versions only go up: an older (or rewritten same-version) registry could revive a
            // torn-down preview or a revoked key.
            if next.registry.version <= current.registry.version {
                return Err(format!(
                    "registry version {} is not newer than the one in force ({}); refusing to go back",
                    next.registry.version, current.registry.version
                ));
            }
            Ok(next)
        }) {
            Ok(next) => {
                *last_failure = None;
                self.apply(next).await;
            }
            Err(e) => {
                let line = self.registry_event(
                    "registry.reload_failed",
                    &current,
                    None,
                    Some(clip_detail(&format!("{e}; keeping version {}", current.registry.version))),
                );
                self.log.record(&line);
                *last_failure = Some(Failure::Content(digest));
            }
        }
    }

    /// Puts a new snapshot in force and forgets what it invalidates.
    pub(crate) async fn apply(&self, next: Snapshot) {
        let next = Arc::new(next);
        let previous = self.registry.store(next.clone());
        if let Some(cache) = &self.cache {
            cache.retain_live(&next.verifier);
        }
        if previous.kids_of(&self.service) != next.kids_of(&self.service) {
            self.minted.clear();
        }
        let line = self.registry_event("registry.loaded", &next, Some(previous.registry.version), None);
        self.log.record(&line);
        self.follow_signing_key(&next).await;
    }

    /// After a rotation switched this service's signing key in the registry, loads the new key
    /// from the key source. Until it is in hand the old key keeps signing: the registry still
    /// accepts it through the overlap.
    async fn follow_signing_key(&self, next: &Snapshot) {
        let Some(source) = &self.key_source else { return };
        let Some(wanted) = next.registry.signing_kid_of(&self.service) else { return };
        let held = self.signer().map(|k| k.kid().to_owned());
        if held.as_deref() == Some(wanted) {
            return;
        }
        let failed = match source.load().await {
            Ok(key) if key.kid() == wanted => {
                *self.signing_key.write().unwrap_or_else(PoisonError::into_inner) = Some(key);
                // Tokens of the old key are not handed out again.
                self.minted.clear();
                None
            }
            Ok(key) => Some(format!("the key store holds {}, not {wanted}", clip_field(key.kid()))),
            Err(e) => Some(e),
        };
        let line = KeyEvent {
            ts: rfc3339_millis(self.clock.now()),
            event: if failed.is_none() { "key.loaded" } else { "key.reload_failed" },
            preview_id: self.preview.as_str(),
            service: self.service.as_str(),
            kid: wanted,
            previous_kid: held,
            registry_version: next.registry.version,
            error: failed.map(|e| clip_detail(&format!("{e}; still signing with the previous key"))),
        };
        self.log.record(&line);
    }
}

/// Watches the registry source until `stop` turns true.
pub(crate) async fn watch(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    if shared.http.is_some() {
        watch_http(shared, stop).await;
    } else {
        watch_file(shared, stop).await;
    }
}

/// Long-polls the control plane until `stop` turns true, failing over between replicas.
async fn watch_http(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let Some(http) = shared.http.as_ref() else { return };
    let mut last_failure: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let known = shared.registry.load().registry.version;
        let mut refetching = false;
        let result = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = http.fetch(&shared.preview, Some(known), Some(http.config.wait)) => r,
            _ = http.refetch.notified() => {
                refetching = true;
                let line = shared.registry_event("registry.refetch", &shared.registry.load(), None, Some("unknown kid".into()));
                shared.log.record(&line);
                http.fetch(&shared.preview, Some(known), None).await
            }
        };
        let failure = match result {
            Ok(Fetched::NotModified) => None,
            Ok(Fetched::New(bytes)) => match Snapshot::parse(&bytes, &shared.preview, &shared.service) {
                Ok(next) => {
                    shared.apply(next).await;
                    None
                }
                Err(e) => Some(format!("{}: {e}", http.base())),
            },
            Err(e) => Some(e),
        };
        if refetching {
            // What it brought is in force (or it failed and the last good registry stays):
            // the requests waiting on it are decided again now.
            http.refetch_finished();
        }
        match failure {
            None => {
                http.mark_ok();
                if last_failure.take().is_some() {
                    let line = shared.registry_event("registry.recovered", &shared.registry.load(), None, None);
                    shared.log.record(&line);
                }
                backoff = Duration::from_millis(100);
            }
            Some(e) => {
                if last_failure.as_deref() != Some(e.as_str()) {
                    let current = shared.registry.load();
                    let detail = clip_detail(&format!("{e}; keeping version {}", current.registry.version));
                    let line = shared.registry_event("registry.fetch_failed", &current, None, Some(detail));
                    shared.log.record(&line);
                    last_failure = Some(e);
                }
                http.fail_over();
                tokio::select! {
                    _ = stopped(&mut stop) => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Fetches the first registry at start, trying each replica in turn for up to `patience`.
pub(crate) async fn first_fetch(http: &HttpWatch, preview: &PreviewId, service: &ServiceName, patience: Duration) -> Result<Snapshot, String> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut errors = Vec::new();
    loop {
        for _ in 0..http.config.bases.len() {
            match http.fetch(preview, None, None).await {
                Ok(Fetched::New(bytes)) => match Snapshot::parse(&bytes, preview, service) {
                    Ok(s) => {
                        http.mark_ok();
                        return Ok(s);
                    }
                    Err(e) => errors.push(format!("{}: {e}", http.base())),
                },
                Ok(Fetched::NotModified) => errors.push(format!("{}: 304 without a version asked", http.base())),
                Err(e) => errors.push(e),
            }
            http.fail_over();
        }
        if tokio::time::Instant::now() >= deadline {
            errors.dedup();
            return Err(errors.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the registry file until `stop` turns true.
async fn watch_file(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_failure = None;
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = ticks.tick() => shared.poll_registry(&mut last_failure).await,
        }
    }
}
