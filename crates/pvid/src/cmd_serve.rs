//! `pvid serve`: the control plane. The `/v1` API over the state store (SQLite under PVID_HOME,
//! or PostgreSQL shared by several replicas), the admin token (created at first start), the
//! registry watch for sidecars and the TTL reaper.

use anyhow::anyhow;
use clap::Args;
use pvid_server::{AdminToken, AppState, Settings};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::context;
use crate::exit::{Failure, invalid, operational};

/// Arguments of `pvid serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// State database: `postgres://user@host/db` for several replicas (each runs the migrations
    /// it lacks at start); default SQLite at PVID_HOME/state.db.
    #[arg(long, env = context::ENV_DATABASE_URL)]
    database: Option<String>,
    /// The admin token file (created, 0600, with a fresh token when missing). Replicas must
    /// share one token: point them at the same file or copy it.
    #[arg(long, env = "PVID_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Registry and JWKS reads need the admin token too (default: public, they hold only public
    /// keys).
    #[arg(long)]
    protect_registry: bool,
    /// How often the TTL reaper looks for expired previews and advances scheduled rotations
    /// (`rotation_period` in the spec); 0 turns both off on this replica.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    reap_interval: Duration,
    /// Scheduled rotation: how long a new key is published before services sign with it
    /// (sidecars watching this server hear of it within a second).
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg)]
    rotation_publish_delay: Duration,
    /// This replica's name, in logs, /v1/healthz and reaper evidence (default: host:port).
    #[arg(long)]
    replica: Option<String>,
    /// How often a registry long-poll re-reads the version, to see changes made through other
    /// replicas (milliseconds).
    #[arg(long, default_value_t = 100)]
    watch_poll_ms: u64,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    pvid_core::duration::parse_duration(s)
}

/// The default admin token file of a home.
pub fn default_token_file(home: &Path) -> PathBuf {
    home.join("admin.token")
}

pub async fn run(home: &Path, a: ServeArgs) -> Result<i32, Failure> {
    if a.watch_poll_ms == 0 {
        return Err(invalid(anyhow!("--watch-poll-ms must be at least 1")));
    }
    let control = context::open_with(home, a.database.as_deref().filter(|s| !s.is_empty())).await?;
    let token_file = a.admin_token_file.clone().unwrap_or_else(|| default_token_file(home));
    let (admin, created) = AdminToken::load_or_create(&token_file).map_err(operational)?;
    if created {
        eprintln!("pvid serve: created admin token file {} (0600)", token_file.display());
    }
    let listener = tokio::net::TcpListener::bind(a.listen).await.map_err(|e| operational(anyhow!("cannot listen on {}: {e}", a.listen)))?;
    let addr = listener.local_addr().map_err(operational)?;
    let settings = Settings {
        protect_registry: a.protect_registry,
        watch_poll: Duration::from_millis(a.watch_poll_ms),
        replica: a.replica.clone().unwrap_or_else(|| addr.to_string()),
        rotation_publish_delay: a.rotation_publish_delay,
        ..Settings::default()
    };
    let backend = control.state().backend().as_str();
    let location = control.state().location().to_owned();
    let state = AppState::new(Arc::new(control), admin, settings);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reaper = (!a.reap_interval.is_zero()).then(|| tokio::spawn(pvid_server::reaper::run(state.clone(), a.reap_interval, stop_rx)));
    eprintln!(
        "pvid serve: listening on http://{addr} (replica {}, state {backend} {location}, admin token {})",
        state.settings.replica,
        token_file.display()
    );
    let result = pvid_server::serve(listener, state.clone(), crate::cmd_proxy::shutdown_signal()).await;
    let _ = stop_tx.send(true);
    if let Some(r) = reaper {
        let _ = r.await;
    }
    state.control.state().close().await;
    result.map_err(|e| operational(anyhow!("serving failed: {e}")))?;
    Ok(0)
}
