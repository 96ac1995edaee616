//! The state every request handler and the registry watcher share: configuration, the current
//! registry snapshot, the caches, the pooled HTTP client and the log sink.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pvid_core::cache::TokenCache;
use pvid_core::{Clock, PreviewId, ServiceName, service_identity};

use crate::evidence::EvidenceChain;
use crate::log::{LogSink, Origin};
use crate::metrics::Metrics;
use crate::otlp;
use crate::signer::{MintCache, Signer};
use crate::registry_source::{HttpWatch, RegistrySource};
use crate::registry_watch::{RegistryHandle, Snapshot, first_fetch};
use crate::{ProxyConfig, ProxyError};

/// Entries the verified-token cache holds at most.
pub(crate) const TOKEN_CACHE_CAPACITY: usize = 10_000;
/// How long a sidecar starting with an HTTP registry source waits for a replica to answer.
const FIRST_FETCH_PATIENCE: Duration = Duration::from_secs(10);
/// How long a TCP connect to the upstream or a callee may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One pooled client for upstream and egress forwarding; request bodies stream from the server.
pub(crate) type HttpClient = Client<HttpConnector, Incoming>;

/// Shared sidecar state (one per [`crate::Proxy`]).
pub(crate) struct Shared {
    pub preview: PreviewId,
    pub service: ServiceName,
    /// `preview-<id>-<svc>`: this service's audience (the `expected_aud` of log lines).
    pub identity: String,
    pub upstream: SocketAddr,
    pub registry_source: RegistrySource,
    /// The control-plane watcher's state, when the registry comes over HTTP.
    pub http: Option<HttpWatch>,
    pub clock: Arc<dyn Clock>,
    pub log: LogSink,
    pub registry: RegistryHandle,
    pub cache: Option<TokenCache>,
    pub client: HttpClient,
    /// The key egress signs with; replaced when a rotation switches it (see `key_source`).
    pub signing_key: std::sync::RwLock<Option<Arc<dyn Signer>>>,
    pub key_source: Option<Arc<dyn crate::KeySource>>,
    pub minted: MintCache,
    pub metrics: Metrics,
    /// The OTLP export task, taken by `serve` to wait for the last batch.
    pub otlp_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    /// The key egress signs with now.
    pub(crate) fn signer(&self) -> Option<Arc<dyn Signer>> {
        // The lock only guards an `Arc` swap, which cannot leave it half-written.
        self.signing_key.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Opens the log and loads the registry; any failure here stops the sidecar from starting.
    pub(crate) async fn start(config: ProxyConfig) -> Result<Shared, ProxyError> {
        let evidence = match &config.evidence {
            Some(path) => Some(EvidenceChain::open(path, config.preview.as_str())?),
            None => None,
        };
        let metrics = Metrics::default();
        let origin = Origin {
            preview: config.preview.as_str().to_owned(),
            service: config.service.as_str().to_owned(),
            clock: config.clock.clone(),
        };
        let log = LogSink::open(&config.log, config.log_buffer, origin, evidence, metrics.log.clone())?;
        let (snapshot, http) = match &config.registry {
            RegistrySource::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| ProxyError::LoadRegistry { path: path.clone(), reason: format!("cannot read: {e}") })?;
                let snapshot = Snapshot::parse(&bytes, &config.preview, &config.service)
                    .map_err(|reason| ProxyError::LoadRegistry { path: path.clone(), reason })?;
                (snapshot, None)
            }
            RegistrySource::Http(h) => {
                let http = HttpWatch::new(h.clone());
                let snapshot = first_fetch(&http, &config.preview, &config.service, FIRST_FETCH_PATIENCE)
                    .await
                    .map_err(|reason| ProxyError::FetchRegistry { urls: h.bases.join(","), reason })?;
                (snapshot, Some(http))
            }
        };

        let mut otlp_task = None;
        // The exporter logs its own failures to the plain sink: exporting them would loop.
        let log = match &config.otlp {
            Some(endpoint) => {
                let resource = otlp::Resource {
                    preview_id: config.preview.as_str().to_owned(),
                    service: config.service.as_str().to_owned(),
                };
                let (queue, task) =
                    otlp::start(endpoint.clone(), resource, metrics.otlp.clone(), log.clone(), config.clock.clone());
                otlp_task = Some(task);
                log.with_otlp(queue)
            }
            None => log,
        };

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);

        let shared = Shared {
            identity: service_identity(&config.preview, &config.service),
            preview: config.preview,
            service: config.service,
            upstream: config.upstream,
            registry_source: config.registry,
            http,
            clock: config.clock,
            log,
            registry: RegistryHandle::new(Arc::new(snapshot)),
            cache: config.cache.then(|| TokenCache::new(TOKEN_CACHE_CAPACITY)),
            client,
            signing_key: std::sync::RwLock::new(config.signing_key),
            key_source: config.key_source,
            minted: MintCache::default(),
            metrics,
            otlp_task: std::sync::Mutex::new(otlp_task),
        };
        let current = shared.registry.load();
        shared.log.record(&shared.registry_event("registry.loaded", &current, None, None));
        Ok(shared)
    }
}
