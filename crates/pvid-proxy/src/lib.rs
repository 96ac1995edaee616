//! pvid-proxy: the sidecar in front of one service of one preview (DESIGN.md, "Sidecar").
//!
//! - **Inbound** (`inbound.rs`): every request is checked in DESIGN.md's order (extract → verify →
//!   policy); an allowed request goes to the local app without `Authorization`, with the verified
//!   identity in `x-pvid-caller` / `x-pvid-preview`; a denied one is answered 401/403 here and never
//!   reaches the app.
//! - **Egress** (`egress.rs`, optional): the app's own outbound calls get a token minted for the
//!   callee and are forwarded to the callee's address from the registry. Tokens are signed by a
//!   [`Signer`] (`signer.rs`): the service's own key, or OpenBao Transit (feature `openbao`).
//! - **Registry** (`registry_watch.rs`, `registry_source.rs`): loaded from a file or from the
//!   control plane at start (an error if missing or invalid), then watched (file polled, or HTTP
//!   long-poll failing over between replicas); a failed reload never replaces the last good
//!   registry, and a registry no replica could confirm for too long fails closed.
//! - **Decision log** (`log.rs`): exactly one JSON line per request, never holding a token,
//!   written by a thread behind a bounded buffer so that no request waits for it (a full buffer
//!   drops lines and counts them); the `--evidence` chain is written before the response leaves.
//! - **OTLP** (`otlp.rs`, optional): every log line also exported as an OTLP/HTTP JSON log
//!   record, best effort (bounded queue, batches, drops counted); the log stays the record.
//! - **Admin** (`admin.rs`, optional): `/healthz` (registry in force, this host's clock) and
//!   `/metrics` (Prometheus, `metrics.rs`).
//!
//! The proxy links neither the state store nor an HTTP framework: hyper, a file and log lines.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod egress;
mod evidence;
mod headers;
mod inbound;
mod limits;
mod log;
mod metrics;
mod otlp;
mod registry_source;
mod registry_watch;
mod respond;
mod server;
mod shared;
pub mod signer;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pvid_core::{Clock, PreviewId, ServiceName};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::limits::Limits;
pub use crate::log::DEFAULT_LOG_BUFFER_LINES;
pub use crate::otlp::OtlpEndpoint;
pub use crate::signer::{KeySource, MintCache, Minted, SignError, Signer, mint_with};
#[cfg(feature = "openbao")]
pub use crate::signer::TransitSigner;
pub use crate::registry_source::{DEFAULT_MAX_STALE, DEFAULT_WAIT, HttpRegistry, REFETCH_INTERVAL, RegistrySource};

use crate::server::Role;
use crate::shared::Shared;

/// Where decision and registry log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output, one JSON object per line.
    Stdout,
    /// A file, opened for appending (created if missing).
    File(PathBuf),
}

/// Everything a sidecar needs. Built by the CLI from flags, env and files.
pub struct ProxyConfig {
    /// The preview this sidecar belongs to; the registry must be of the same preview.
    pub preview: PreviewId,
    /// The service this sidecar fronts (the callee of inbound requests).
    pub service: ServiceName,
    /// Inbound listener address (port 0 picks a free port; see [`Proxy::inbound_addr`]).
    pub listen: SocketAddr,
    /// The local app that allowed requests are forwarded to.
    pub upstream: SocketAddr,
    /// Egress listener for the app's own outbound calls; `None` disables egress.
    pub egress: Option<SocketAddr>,
    /// Where the registry comes from: a `registry.json` file (reloaded when its content changes)
    /// or the control plane's replicas (long-polled, failing over; see [`RegistrySource`]).
    pub registry: RegistrySource,
    /// Signs this service's egress tokens: its private key ([`pvid_core::SigningKey`], sidecar
    /// custody) or a [`TransitSigner`] (transit custody, feature `openbao`).
    pub signing_key: Option<Arc<dyn Signer>>,
    /// Where a new signing key is loaded from when the registry switches this service to
    /// another key (a rotation); `None` keeps `signing_key` for the sidecar's lifetime.
    pub key_source: Option<Arc<dyn KeySource>>,
    /// Where log lines go.
    pub log: LogTarget,
    /// Lines the log buffer holds ([`DEFAULT_LOG_BUFFER_LINES`] in the CLI); a line that finds
    /// it full is dropped and counted.
    pub log_buffer: usize,
    /// Where decisions are also appended as a hash-chained evidence trail (`--evidence`).
    pub evidence: Option<PathBuf>,
    /// The source of "now" for token validation, minting and log timestamps.
    pub clock: Arc<dyn Clock>,
    /// Whether verified tokens are cached (by SHA-256 of the token). On by default in the CLI.
    pub cache: bool,
    /// Also export log lines to this OTLP/HTTP collector; `None` disables export.
    pub otlp: Option<OtlpEndpoint>,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("preview", &self.preview)
            .field("service", &self.service)
            .field("listen", &self.listen)
            .field("upstream", &self.upstream)
            .field("egress", &self.egress)
            .field("registry", &self.registry)
            .field("signing_key", &self.signing_key)
            .field("key_source", &self.key_source)
            .field("log", &self.log)
            .field("log_buffer", &self.log_buffer)
            .field("evidence", &self.evidence)
            .field("cache", &self.cache)
            .field("otlp", &self.otlp)
            .finish_non_exhaustive()
    }
}

/// Errors starting or running the sidecar, named for the operation that failed. Denials are not
/// errors: they are answers to requests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The registry file could not be read, parsed or used for this service at start.
    #[error("cannot load registry {}: {reason}", path.display())]
    LoadRegistry {
        /// The registry file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// No control-plane replica gave a usable registry at start.
    #[error("cannot fetch the registry from {urls}: {reason}")]
    FetchRegistry {
        /// The base URLs tried.
        urls: String,
        /// What each answered.
        reason: String,
    },
    /// The log file could not be opened for appending.
    #[error("cannot open log file {}", path.display())]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `--evidence` file could not be opened, or holds a broken chain.
    #[error("evidence file {}: {reason}", path.display())]
    Evidence {
        /// The evidence file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The log writer thread could not be started.
    #[error("cannot start the log writer")]
    StartLogWriter {
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener task ended abnormally (it panicked or was cancelled).
    #[error("the {listener} listener stopped abnormally")]
    Serve {
        /// `inbound` or `egress`.
        listener: &'static str,
        /// The task failure.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A sidecar with its listeners bound and its registry loaded; [`Proxy::serve`] runs it.
pub struct Proxy {
    shared: Arc<Shared>,
    inbound: TcpListener,
    inbound_addr: SocketAddr,
    egress: Option<(TcpListener, SocketAddr)>,
    admin: Option<(TcpListener, SocketAddr)>,
    limits: Limits,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("preview", &self.shared.preview)
            .field("service", &self.shared.service)
            .field("inbound", &self.inbound_addr)
            .field("egress", &self.egress.as_ref().map(|(_, a)| a))
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Opens the log, loads the registry (an error if it is missing, invalid, of another preview
    /// or lacks this service) and binds the listeners. Nothing is served until [`Proxy::serve`].
    pub async fn bind(config: ProxyConfig) -> Result<Proxy, ProxyError> {
        Proxy::bind_with_limits(config, Limits::default()).await
    }

    /// [`Proxy::bind`] with other [`Limits`] (connection count, header size and count, header and
    /// idle timeouts) than the defaults; both listeners get the same limits.
    pub async fn bind_with_limits(config: ProxyConfig, limits: Limits) -> Result<Proxy, ProxyError> {
        let inbound = bind(config.listen).await?;
        let inbound_addr = local_addr(&inbound, config.listen)?;
        let egress = match config.egress {
            Some(addr) => {
                let l = bind(addr).await?;
                let a = local_addr(&l, addr)?;
                Some((l, a))
            }
            None => None,
        };
        let shared = Shared::start(config).await?;
        Ok(Proxy { shared: Arc::new(shared), inbound, inbound_addr, egress, admin: None, limits })
    }

    /// Adds the admin listener (`GET /healthz`, `GET /metrics`) on `addr`; returns the bound
    /// address.
    pub async fn bind_admin(&mut self, addr: SocketAddr) -> Result<SocketAddr, ProxyError> {
        let l = bind(addr).await?;
        let a = local_addr(&l, addr)?;
        self.admin = Some((l, a));
        Ok(a)
    }

    /// The address the inbound listener is bound to (with the real port when 0 was asked).
    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound_addr
    }

    /// The address the egress listener is bound to, if egress is on.
    pub fn egress_addr(&self) -> Option<SocketAddr> {
        self.egress.as_ref().map(|(_, a)| *a)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets open connections finish
    /// their current request (bounded grace period), waits (bounded) for the OTLP exporter to
    /// send what is queued and for the log writer to write what is buffered, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ProxyError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let watcher = tokio::spawn(registry_watch::watch(self.shared.clone(), stop_rx.clone()));
        let limits = self.limits;
        let inbound =
            tokio::spawn(server::run(self.inbound, self.shared.clone(), Role::Inbound, limits.clone(), stop_rx.clone()));
        let egress = self
            .egress
            .map(|(l, _)| tokio::spawn(server::run(l, self.shared.clone(), Role::Egress, limits, stop_rx.clone())));
        let admin = self.admin.map(|(l, _)| tokio::spawn(admin::run(l, self.shared.clone(), stop_rx.clone())));
        let inbound_result = inbound.await;
        let egress_result = match egress {
            Some(task) => task.await,
            None => Ok(()),
        };
        watcher.abort();
        if let Some(task) = admin {
            task.abort();
        }
        // Export what is still queued: the queue closes when the last `Shared` goes away.
        let otlp_task = self.shared.otlp_task.lock().ok().and_then(|mut t| t.take());
        let sink = self.shared.log.clone();
        drop(self.shared);
        if let Some(task) = otlp_task {
            let _ = tokio::time::timeout(otlp::FLUSH_PATIENCE, task).await;
        }
        // Last: the exporter may have logged its own failure. Bounded, as a stdout reader may
        // never read again.
        if tokio::time::timeout(log::FLUSH_PATIENCE, sink.flush()).await.is_err() {
            eprintln!("pvid proxy: the log writer did not drain its buffer within {:?}", log::FLUSH_PATIENCE);
        }
        inbound_result.map_err(|source| ProxyError::Serve { listener: "inbound", source })?;
        egress_result.map_err(|source| ProxyError::Serve { listener: "egress", source })?;
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr).await.map_err(|source| ProxyError::Bind { addr, source })
}

fn local_addr(l: &TcpListener, asked: SocketAddr) -> Result<SocketAddr, ProxyError> {
    l.local_addr().map_err(|source| ProxyError::Bind { addr: asked, source })
}
