//! `pvid proxy`: the sidecar. The private key is fetched once from the secret store at start
//! (or read from a key file); the registry comes from a file that is reloaded when it changes,
//! or from the control plane (`--registry http://cp1,http://cp2`), long-polled with failover.

use anyhow::anyhow;
use clap::Args;
use pvid_core::{PreviewId, ServiceName, SystemClock};
use pvid_proxy::{HttpRegistry, LogTarget, Proxy, ProxyConfig, RegistrySource};
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
    /// Turn the verified-token cache off (every request pays a signature check).
    #[arg(long)]
    no_cache: bool,
}

pub async fn run(home: &Path, a: ProxyArgs) -> Result<i32, Failure> {
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
    let signing_key = if a.egress.is_some() {
        let control = context::open(home).await?;
        let key = control.signing_key(&a.preview, &a.service).await?;
        control.state().close().await;
        Some(key.ok_or_else(|| invalid(anyhow!("no private key for {}/{}: is the preview provisioned?", a.preview, a.service)))?)
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
        log: a.log.map_or(LogTarget::Stdout, LogTarget::File),
        clock: Arc::new(SystemClock),
        cache: !a.no_cache,
    };
    let proxy = Proxy::bind(config).await.map_err(operational)?;
    eprintln!(
        "pvid proxy: inbound {}{}",
        proxy.inbound_addr(),
        proxy.egress_addr().map(|e| format!(", egress {e}")).unwrap_or_default()
    );
    proxy.serve(shutdown_signal()).await.map_err(operational)?;
    Ok(0)
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
