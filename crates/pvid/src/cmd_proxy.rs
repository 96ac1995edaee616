//! `pvid proxy`: the sidecar. Under sidecar custody the private key is fetched once from the
//! secret store at start; under transit custody OpenBao Transit signs each new egress token (and
//! tokens are cached until shortly before expiry). The registry comes from a file that is
//! reloaded when it changes.

use anyhow::anyhow;
use clap::Args;
use pvid_core::{PreviewId, ServiceName, SystemClock};
use pvid_proxy::{LogTarget, Proxy, ProxyConfig};
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
    /// The preview's registry.json (default: the published file under PVID_HOME).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Append decision lines to this file instead of standard output.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Turn the verified-token cache off (every request pays a signature check).
    #[arg(long)]
    no_cache: bool,
}

pub async fn run(home: &Path, a: ProxyArgs) -> Result<i32, Failure> {
    let registry = a
        .registry
        .clone()
        .unwrap_or_else(|| pvid_control::registry_dir(home, a.preview.as_str()).join("registry.json"));
    // Egress needs this service's private key; inbound validation needs only public keys.
    // Sidecar custody: the key is fetched once; transit custody: OpenBao signs each new token.
    let signing_key = if a.egress.is_some() {
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

async fn shutdown_signal() {
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
