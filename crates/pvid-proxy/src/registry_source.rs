//! Where the registry comes from: a file (polled, `registry_watch.rs`) or the control plane over
//! HTTP, watched with a long-poll and failing over between replicas.
//!
//! **Watch protocol** (docs/server.md): `GET {base}/v1/previews/{id}/registry.json?wait=30s` with
//! `If-None-Match: "<version>"`. The control plane answers `304` while the version is unchanged
//! (at the end of the wait) or `200` with the new registry and `ETag: "<version>"` as soon as it
//! moves. The sidecar loops on it, so a teardown reaches it within the control plane's watch
//! poll plus one round trip.
//!
//! **Failover**: any failure (connect, timeout, a status other than 200/304, a registry that does
//! not parse or is not this preview's) moves to the next base URL, with a short backoff that
//! grows to [`MAX_BACKOFF`] while every replica fails.
//!
//! **Fail-static, then fail-closed**: a failed fetch never replaces the registry in force. Once
//! no fetch has succeeded for [`HttpRegistry::max_stale`] (default 10 minutes), the sidecar
//! refuses every request with 503 and reason `registry_unavailable` (logged on each request)
//! until a fetch succeeds again: a sidecar cut off from revocations must not keep accepting.
//!
//! **Unknown kid**: a token whose kid the registry does not know asks for one immediate refetch,
//! at most once per [`REFETCH_INTERVAL`], however many such tokens arrive (a kid storm does not
//! become a request storm on the control plane). The request that asked, and any that arrive
//! while the refetch is in flight, wait for it (at most [`REFETCH_WAIT`]) and are decided again
//! on what it brought: a key published after the last delivery is accepted on first sight (case
//! C05), not refused until the next watch round.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pvid_core::PreviewId;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Default bound on serving from the last good registry while no replica answers.
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(600);
/// Default long-poll wait asked of the control plane.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// At most one unknown-kid refetch per this interval.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Longest time a request with an unknown kid waits for the refetch it caused.
pub const REFETCH_WAIT: Duration = Duration::from_secs(3);
/// Longest pause between failed fetches.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Largest registry document accepted.
const MAX_REGISTRY_BYTES: usize = 16 * 1024 * 1024;
/// Time allowed on top of the wait for the answer to arrive.
const FETCH_SLACK: Duration = Duration::from_secs(10);

/// Where the sidecar reads its registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrySource {
    /// A `registry.json` file, polled for changes.
    File(PathBuf),
    /// The control plane's API, long-polled, with failover between replicas.
    Http(HttpRegistry),
}

impl From<PathBuf> for RegistrySource {
    fn from(p: PathBuf) -> RegistrySource {
        RegistrySource::File(p)
    }
}

impl RegistrySource {
    /// The file path, or the base URLs joined by commas (for messages and log lines).
    pub fn describe(&self) -> String {
        match self {
            RegistrySource::File(p) => p.display().to_string(),
            RegistrySource::Http(h) => h.bases.join(","),
        }
    }
}

/// The control plane replicas a sidecar watches.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpRegistry {
    /// Base URLs (`http://host:port`), tried in order, failing over to the next.
    pub bases: Vec<String>,
    /// Admin token, when the control plane protects registry reads.
    pub token: Option<String>,
    /// How long the last good registry is served while no replica answers.
    pub max_stale: Duration,
    /// Long-poll wait asked of the control plane.
    pub wait: Duration,
}

impl fmt::Debug for HttpRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpRegistry")
            .field("bases", &self.bases)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("max_stale", &self.max_stale)
            .field("wait", &self.wait)
            .finish()
    }
}

impl HttpRegistry {
    /// Parses `http://cp1:7070,http://cp2:7070` with the default bounds. Only plain `http://`
    /// URLs (the sidecar carries no TLS stack; use a local TLS-terminating hop, or the mesh).
    pub fn parse(list: &str) -> Result<HttpRegistry, String> {
        let mut bases = Vec::new();
        for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let base = raw.trim_end_matches('/');
            let uri: Uri = base.parse().map_err(|e| format!("registry URL `{raw}`: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(format!("registry URL `{raw}`: expected http://host:port"));
            }
            if uri.path() != "/" && !uri.path().is_empty() {
                return Err(format!("registry URL `{raw}`: give the control plane's base URL, without a path"));
            }
            bases.push(base.to_owned());
        }
        if bases.is_empty() {
            return Err("no registry URL given".into());
        }
        Ok(HttpRegistry { bases, token: None, max_stale: DEFAULT_MAX_STALE, wait: DEFAULT_WAIT })
    }
}

/// What one fetch got.
#[derive(Debug)]
pub(crate) enum Fetched {
    /// `304`: the version asked about is current.
    NotModified,
    /// `200`: a registry document.
    New(Bytes),
}

/// The HTTP watcher's state, shared with the request handlers.
pub(crate) struct HttpWatch {
    pub config: HttpRegistry,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Index of the base URL in use.
    pub current: AtomicUsize,
    /// When a fetch last succeeded.
    last_ok: Mutex<Instant>,
    /// When the last unknown-kid refetch was asked for.
    last_refetch: Mutex<Option<Instant>>,
    /// Wakes the watcher for an immediate refetch.
    pub refetch: Notify,
    /// Whether an unknown-kid refetch was asked for and has not finished.
    refetch_in_flight: AtomicBool,
    /// Wakes the requests waiting for that refetch.
    refetched: Notify,
}

impl HttpWatch {
    pub(crate) fn new(config: HttpRegistry) -> HttpWatch {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_timer(TokioTimer::new()).build(connector);
        HttpWatch {
            config,
            client,
            current: AtomicUsize::new(0),
            last_ok: Mutex::new(Instant::now()),
            last_refetch: Mutex::new(None),
            refetch: Notify::new(),
            refetch_in_flight: AtomicBool::new(false),
            refetched: Notify::new(),
        }
    }

    /// The base URL in use.
    pub(crate) fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.config.bases.len().max(1);
        self.config.bases.get(i).map_or("", String::as_str)
    }

    /// Moves to the next replica.
    pub(crate) fn fail_over(&self) {
        let n = self.config.bases.len().max(1);
        let _ = self.current.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |i| Some((i + 1) % n));
    }

    /// Records a successful fetch.
    pub(crate) fn mark_ok(&self) {
        *self.last_ok.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// Whether the last good registry is older than the fail-static bound.
    pub(crate) fn is_stale(&self) -> bool {
        self.last_ok.lock().unwrap_or_else(PoisonError::into_inner).elapsed() > self.config.max_stale
    }

    /// Asks for an immediate refetch, unless one was asked for in the last
    /// [`REFETCH_INTERVAL`]. Returns whether this call asked.
    pub(crate) fn request_refetch(&self) -> bool {
        let mut last = self.last_refetch.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        drop(last);
        self.refetch_in_flight.store(true, Ordering::Release);
        self.refetch.notify_one();
        true
    }

    /// Asks for a refetch as [`Self::request_refetch`] does, then waits (at most
    /// [`REFETCH_WAIT`]) for the one asked for or already in flight. Returns at once when there
    /// is none (the interval has not passed and nothing is in flight).
    pub(crate) async fn refetch_and_wait(&self) {
        let done = self.refetched.notified();
        tokio::pin!(done);
        // Registered before looking, so a refetch finishing in between still wakes us.
        done.as_mut().enable();
        if !self.request_refetch() && !self.refetch_in_flight.load(Ordering::Acquire) {
            return;
        }
        let _ = tokio::time::timeout(REFETCH_WAIT, done).await;
    }

    /// Called by the watcher once the refetch's result (new registry or failure) is in force.
    pub(crate) fn refetch_finished(&self) {
        self.refetch_in_flight.store(false, Ordering::Release);
        self.refetched.notify_waiters();
    }

    /// One fetch from the replica in use: long-polls when `wait` is given and `known` is set.
    pub(crate) async fn fetch(&self, preview: &PreviewId, known: Option<u64>, wait: Option<Duration>) -> Result<Fetched, String> {
        let base = self.base();
        let mut url = format!("{base}/v1/previews/{preview}/registry.json");
        if let (Some(w), Some(_)) = (wait, known) {
            url.push_str(&format!("?wait={}s", w.as_secs()));
        }
        let mut req = Request::get(url.as_str());
        if let Some(v) = known {
            req = req.header(header::IF_NONE_MATCH, format!("\"{v}\""));
        }
        if let Some(t) = &self.config.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).map_err(|e| format!("{url}: {e}"))?;
        let limit = wait.unwrap_or_default() + FETCH_SLACK;
        let resp = tokio::time::timeout(limit, self.client.request(req))
            .await
            .map_err(|_| format!("{base}: no answer within {}s", limit.as_secs()))?
            .map_err(|e| format!("{base}: {}", error_chain(&e)))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(Fetched::NotModified),
            StatusCode::OK => {
                let body = tokio::time::timeout(limit, Limited::new(resp.into_body(), MAX_REGISTRY_BYTES).collect())
                    .await
                    .map_err(|_| format!("{base}: body not received within {}s", limit.as_secs()))?
                    .map_err(|e| format!("{base}: reading the registry: {e}"))?;
                Ok(Fetched::New(body.to_bytes()))
            }
            s => Err(format!("{base}: HTTP {}", s.as_u16())),
        }
    }
}

/// An error and its causes on one line: hyper_util's errors say little at the top ("client
/// error (Connect)"); the cause is below. Shared by the registry watch and the OTLP exporter.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_of_http_bases_parses() {
        let h = HttpRegistry::parse("http://127.0.0.1:7070/, http://cp2:80").unwrap();
        assert_eq!(h.bases, ["http://127.0.0.1:7070", "http://cp2:80"]);
        assert_eq!(h.max_stale, DEFAULT_MAX_STALE);
    }

    #[test]
    fn other_schemes_paths_and_empty_lists_are_refused() {
        assert!(HttpRegistry::parse("https://cp1").unwrap_err().contains("expected http://"));
        assert!(HttpRegistry::parse("http://cp1/v1").unwrap_err().contains("without a path"));
        assert_eq!(HttpRegistry::parse(" , ").unwrap_err(), "no registry URL given");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let mut h = HttpRegistry::parse("http://cp1").unwrap();
        h.token = Some("pvid_adm_secret".into());
        assert!(!format!("{h:?}").contains("secret"));
    }

    #[tokio::test]
    async fn unknown_kid_refetches_are_limited_to_one_per_interval() {
        let w = HttpWatch::new(HttpRegistry::parse("http://cp1").unwrap());
        assert!(w.request_refetch());
        for _ in 0..100 {
            assert!(!w.request_refetch());
        }
    }
}

// === impl Shared: what request handlers ask of the registry source ===

use crate::log::{clip_field, rfc3339_millis};
use crate::respond::{self, ProxyBody};
use crate::shared::Shared;

/// The line of a request refused because the registry could not be confirmed for too long.
#[derive(Debug, serde::Serialize)]
struct UnavailableEvent<'a> {
    ts: String,
    /// `auth.validate` (inbound) or `auth.mint` (egress).
    event: &'static str,
    preview_id: &'a str,
    service: &'a str,
    result: &'static str,
    reason: &'static str,
    method: String,
    path: String,
    request_id: &'a str,
    registry_version: u64,
    detail: String,
}

impl Shared {
    /// When the registry comes over HTTP and no replica confirmed it within the fail-static
    /// bound: logs the refusal and returns the 503 to send (`registry_unavailable`).
    pub(crate) async fn refuse_if_registry_unavailable(
        &self,
        event: &'static str,
        method: &http::Method,
        path: &str,
        request_id: &str,
    ) -> Option<http::Response<ProxyBody>> {
        let http = self.http.as_ref()?;
        if !http.is_stale() {
            return None;
        }
        let line = UnavailableEvent {
            ts: rfc3339_millis(self.clock.now()),
            event,
            preview_id: self.preview.as_str(),
            service: self.service.as_str(),
            result: "deny",
            reason: "registry_unavailable",
            method: clip_field(method.as_str()),
            path: clip_field(path),
            request_id,
            registry_version: self.registry.load().registry.version,
            detail: format!(
                "no control-plane replica confirmed the registry for over {}s (fail-static bound); failing closed",
                http.config.max_stale.as_secs()
            ),
        };
        self.log.record(&line);
        Some(respond::error(StatusCode::SERVICE_UNAVAILABLE, "registry_unavailable", request_id))
    }

    /// A token named a kid the registry does not know: ask the watcher for one refetch (at most
    /// one per [`REFETCH_INTERVAL`]) and wait, bounded, for the refetch asked for or in flight.
    /// A file source has nothing to ask: its next poll brings any change.
    pub(crate) async fn unknown_kid_seen(&self) {
        if let Some(h) = &self.http {
            h.refetch_and_wait().await;
        }
    }
}
