//! `pvid proxy`: the sidecar. Under sidecar custody the private key is fetched from the secret
//! store at start (or read from a key file), and again whenever the registry switches the
//! service's signing key (a rotation); under transit custody OpenBao Transit signs each new
//! egress token (tokens are cached until shortly before expiry). The registry comes from
//! a file that is reloaded when it changes, or from the control plane (`--registry
//! http://cp1,http://cp2`), long-polled with failover.

use anyhow::anyhow;
use clap::Args;
use pvid_core::{Clock, PreviewId, ServiceName, SystemClock};
use pvid_proxy::{HttpRegistry, KeySource, LogTarget, OtlpEndpoint, Proxy, ProxyConfig, RegistrySource};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::context;
use crate::exit::{Failure, invalid, operational};

/// Arguments of `pvid proxy`.
#[derive(Args, Debug)]
pub struct ProxyArgs {
    /// The preview.
    #[arg(long)]
    preview: PreviewId,
    /// The service this sidecar fronts.
    #[arg(long)]
    service: ServiceName,
    /// Inbound listener (callers connect here).
    #[arg(long)]
    listen: SocketAddr,
    /// The local service behind the sidecar.
    #[arg(long)]
    upstream: SocketAddr,
    /// Egress listener for the service's own outbound calls (`http://EGRESS/<callee>/...`).
    #[arg(long)]
    egress: Option<SocketAddr>,
    /// The preview's registry: a registry.json file (default: the published file under
    /// PVID_HOME), or control-plane base URLs, comma-separated (`http://cp1:7070,http://cp2:7070`):
    /// the sidecar long-polls the first that answers and fails over to the next.
    #[arg(long)]
    registry: Option<String>,
    /// With control-plane URLs: how long the last good registry is served while no replica
    /// answers; past it every request is refused (503, reason `registry_unavailable`).
    #[arg(long, default_value = "10m", value_parser = parse_duration_arg)]
    registry_max_stale: std::time::Duration,
    /// With control-plane URLs: a file holding the admin token, for a control plane that
    /// protects registry reads (`pvid serve --protect-registry`).
    #[arg(long)]
    registry_token_file: Option<PathBuf>,
    /// Append decision lines to this file instead of standard output.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Log lines held for the writer at most; a line that finds the buffer full (a slow disk,
    /// a stdout reader that stopped reading) is dropped, counted in /metrics and reported in a
    /// `log.dropped` line. Requests never wait for the log.
    #[arg(long, value_name = "LINES", default_value_t = pvid_proxy::DEFAULT_LOG_BUFFER_LINES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    log_buffer: usize,
    /// Also append every decision to this hash-chained evidence file (JSONL, mode 0600; one
    /// file per sidecar). Checked at start and continued; `pvid audit verify --file` checks it.
    #[arg(long, value_name = "FILE")]
    evidence: Option<PathBuf>,
    /// Admin listener: `GET /healthz` (registry version, this host's clock) and `GET /metrics`
    /// (Prometheus).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Test only: pretend this host's clock is off by SECS (for `pvid doctor` tests).
    #[arg(long, hide = true, default_value_t = 0.0, allow_negative_numbers = true)]
    dangerous_clock_offset_for_tests: f64,
    /// Turn the verified-token cache off (every request pays a signature check).
    #[arg(long)]
    no_cache: bool,
    /// Worker threads (default: the CPUs this process may use, at most 2). 1 runs a single
    /// event loop, the fastest per core.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: Option<u16>,
    /// Also export every log line as an OTLP log record (OTLP/HTTP JSON, POST
    /// `URL/v1/logs`), best effort; plain `http://` only. The log stays the record.
    #[arg(long, value_name = "URL", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Read the private key from this file (the document `pvid render` puts in a Kubernetes
    /// Secret or a Compose secret file) instead of the secret store under PVID_HOME.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

impl ProxyArgs {
    /// The runtime's worker threads.
    pub fn threads(&self) -> usize {
        self.threads.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(2), usize::from)
    }
}

pub async fn run(home: &Path, a: ProxyArgs) -> Result<i32, Failure> {
    // Checked first: a bad endpoint is refused before any key or registry is touched.
    let otlp = match a.otlp_endpoint.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) => Some(
            OtlpEndpoint::parse(e)
                .map_err(|e| invalid(anyhow!("--otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT): {e}")))?,
        ),
        None => None,
    };
    let registry = match a.registry.as_deref() {
        Some(r) if r.contains("://") => {
            let mut h = HttpRegistry::parse(r).map_err(|e| invalid(anyhow!("--registry: {e}")))?;
            h.max_stale = a.registry_max_stale;
            if let Some(f) = &a.registry_token_file {
                let t = std::fs::read_to_string(f).map_err(|e| invalid(anyhow!("cannot read {}: {e}", f.display())))?;
                h.token = Some(t.trim().to_owned());
            }
            RegistrySource::Http(h)
        }
        Some(path) => RegistrySource::File(PathBuf::from(path)),
        None => RegistrySource::File(pvid_control::registry_dir(home, a.preview.as_str()).join("registry.json")),
    };
    // Egress needs this service's private key; inbound validation needs only public keys.
    // Sidecar custody: the key is fetched here; transit custody: OpenBao signs each new token.
    // After a rotation the registry names another signing key: the sidecar loads it again from
    // the same place (the key file, replaced by the operator, or the secret store).
    let key_source: Option<Arc<dyn KeySource>> = match (a.egress, &a.key_file) {
        (None, _) => None,
        (Some(_), Some(file)) => Some(Arc::new(KeyFileSource { file: file.clone(), preview: a.preview.clone(), service: a.service.clone() })),
        (Some(_), None) => Some(Arc::new(StoreKeySource { home: home.to_owned(), preview: a.preview.clone(), service: a.service.clone() })),
    };
    let signing_key = if let (Some(_), Some(file)) = (a.egress, &a.key_file) {
        Some(Arc::new(read_key_file(file, &a.preview, &a.service)?) as Arc<dyn pvid_proxy::Signer>)
    } else if a.egress.is_some() {
        let control = context::open(home).await?;
        let signer = context::signer(&control, &a.preview, &a.service).await?;
        control.state().close().await;
        Some(signer.ok_or_else(|| invalid(anyhow!("no key for {}/{}: is the preview provisioned?", a.preview, a.service)))?)
    } else {
        None
    };
    let config = ProxyConfig {
        preview: a.preview,
        service: a.service,
        listen: a.listen,
        upstream: a.upstream,
        egress: a.egress,
        registry,
        signing_key,
        key_source,
        log: a.log.map_or(LogTarget::Stdout, LogTarget::File),
        log_buffer: a.log_buffer,
        evidence: a.evidence,
        clock: if a.dangerous_clock_offset_for_tests == 0.0 {
            Arc::new(SystemClock)
        } else {
            Arc::new(OffsetClock(a.dangerous_clock_offset_for_tests))
        },
        cache: !a.no_cache,
        otlp,
    };
    // A registry that is missing, invalid, of another preview or without this service is a
    // problem with what the operator asked for (exit 2); a port in use is operational (exit 3).
    let mut proxy = Proxy::bind(config).await.map_err(|e| match e {
        pvid_proxy::ProxyError::LoadRegistry { .. } => invalid(e),
        e => operational(e),
    })?;
    if let Some(addr) = a.admin {
        proxy.bind_admin(addr).await.map_err(operational)?;
    }
    eprintln!(
        "pvid proxy: inbound {}{}",
        proxy.inbound_addr(),
        proxy.egress_addr().map(|e| format!(", egress {e}")).unwrap_or_default()
    );
    proxy.serve(shutdown_signal()).await.map_err(operational)?;
    Ok(0)
}

/// A service's signer as the stores have it now: its private key (sidecar custody) or the
/// Transit key version of its active key (transit custody, after a re-provision).
#[derive(Debug)]
struct StoreKeySource {
    home: PathBuf,
    preview: PreviewId,
    service: ServiceName,
}

#[async_trait::async_trait]
impl KeySource for StoreKeySource {
    async fn load(&self) -> Result<Arc<dyn pvid_proxy::Signer>, String> {
        let control = context::open(&self.home).await.map_err(|e| format!("{:#}", e.error))?;
        let signer = context::signer(&control, &self.preview, &self.service).await;
        control.state().close().await;
        match signer {
            Ok(Some(signer)) => Ok(signer),
            Ok(None) => Err(format!("no key for {}/{} in the secret store", self.preview, self.service)),
            Err(e) => Err(format!("{:#}", e.error)),
        }
    }
}

/// A key file (`--key-file`), read again: the operator replaces it after a rotation (a
/// Kubernetes Secret volume is updated in place).
#[derive(Debug)]
struct KeyFileSource {
    file: PathBuf,
    preview: PreviewId,
    service: ServiceName,
}

#[async_trait::async_trait]
impl KeySource for KeyFileSource {
    async fn load(&self) -> Result<Arc<dyn pvid_proxy::Signer>, String> {
        read_key_file(&self.file, &self.preview, &self.service).map(|k| Arc::new(k) as Arc<dyn pvid_proxy::Signer>).map_err(|e| format!("{:#}", e.error))
    }
}

/// The system clock shifted by a fixed number of seconds.
struct OffsetClock(f64);

impl Clock for OffsetClock {
    fn now(&self) -> f64 {
        SystemClock.now() + self.0
    }
}

/// Loads a key document written by `pvid render` (the secret store's format).
fn read_key_file(file: &Path, preview: &PreviewId, service: &ServiceName) -> Result<pvid_core::SigningKey, Failure> {
    // As for the master key: a private key others can read is refused, not used.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(file).map_err(|e| operational(anyhow!("cannot read key file {}: {e}", file.display())))?.permissions(),
    ) & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(anyhow!(
            "key file {} has mode {mode:o}: group or others can read the private key (chmod 600 {})",
            file.display(),
            file.display()
        )));
    }
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(file).map_err(|e| operational(anyhow!("cannot read key file {}: {e}", file.display())))?,
    );
    let path = pvid_store::SecretPath::private_key(preview, service);
    let stored = pvid_store::StoredKey::from_bytes(&path, &bytes)
        .map_err(|_| invalid(anyhow!("{} is not a pvid key document for {preview}/{service}", file.display())))?;
    // Kids are `<service>-<n>-<suffix>`: the digits after the name keep `api` from taking a key
    // of `api-v2`. (Egress also signs only with a key the registry lists for this service.)
    let own = stored.kid.strip_prefix(&format!("{service}-")).and_then(|rest| rest.split('-').next());
    if !own.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
        return Err(invalid(anyhow!("{}: key {} is not a key of service {service}", file.display(), stored.kid)));
    }
    stored.to_signing_key(&path).map_err(|e| invalid(anyhow!("{}: {e}", file.display())))
}

pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    pvid_core::duration::parse_duration(s)
}
