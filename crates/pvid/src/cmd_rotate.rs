//! `pvid rotate ID [--service SVC]`: key rotation with overlap. The new key is published first;
//! signing switches to it once every listed sidecar reports the registry version holding it
//! (`--ack`), or after a publish delay; tokens of the old key stay accepted for the overlap and
//! are refused with `key_revoked` after it. `--emergency` (a leaked key) switches at once and
//! refuses the old key now. Each step is idempotent: a rotation interrupted anywhere is finished
//! by running the same command again.

use anyhow::anyhow;
use clap::Args;
use pvid_core::explain::rfc3339;
use pvid_core::{PreviewId, ServiceName};
use pvid_store::state::unix_now;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use crate::context;
use crate::exit::{Failure, invalid, operational};
use crate::http_util;
use crate::remote::ServerArgs;

/// Rotate the keys of a live preview (every service, or one), without downtime.
#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The preview.
    pub id: PreviewId,
    /// Rotate only this service (default: every service of the preview).
    #[arg(long)]
    pub service: Option<ServiceName>,
    /// The old key leaked: sign with the new key at once and refuse the old key's tokens now.
    /// Calls that still carry them fail with `key_revoked` until their callers mint again.
    #[arg(long)]
    pub emergency: bool,
    #[command(flatten)]
    pub switch: SwitchArgs,
}

/// Move a `mode: shared` preview to per-service keys without downtime (a rotation underneath).
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The preview.
    pub id: PreviewId,
    /// The credential mode to move to.
    #[arg(long, value_enum)]
    pub to: MigrateTo,
    #[command(flatten)]
    pub switch: SwitchArgs,
}

/// Where `pvid migrate` goes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum MigrateTo {
    /// A fresh key pair per service (pattern 2).
    PerService,
}

/// When signing switches to the new keys, and how long the old ones stay accepted.
#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// Sidecar admin URLs (comma-separated, `http://127.0.0.1:9901`): signing switches once each
    /// reports, on its `/healthz`, the registry version that holds the new key.
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub ack: Vec<String>,
    /// Without --ack: how long verifiers get to load the new key before anyone signs with it.
    /// Sidecars poll a registry file every 200 ms and hear of `pvid serve` changes within a second.
    #[arg(long, default_value = "5s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub publish_delay: Duration,
    /// With --ack: how long to wait for the sidecars before giving up (the new key stays
    /// published, unused; run the command again to finish).
    #[arg(long, default_value = "60s", value_parser = parse_duration_arg, value_name = "DURATION")]
    pub ack_timeout: Duration,
    /// How long tokens of the old key stay accepted after the switch. Default: the token
    /// lifetime plus the 60 s leeway, so no token signed before the switch is refused.
    #[arg(long, value_parser = parse_duration_arg, value_name = "DURATION")]
    pub overlap: Option<Duration>,
    /// Stay until the overlap ends, then move the old key to the revoked list (otherwise the next
    /// `pvid rotate` or `pvid serve` does; sidecars refuse its tokens on time either way).
    #[arg(long)]
    pub wait: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What step 1 of a run does.
#[derive(Clone, Copy)]
enum Begin<'a> {
    Rotate { service: Option<&'a ServiceName>, emergency: bool },
    Migrate,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    pvid_core::duration::parse_duration(s)
}

pub async fn rotate(home: &Path, srv: &ServerArgs, a: RotateArgs) -> Result<i32, Failure> {
    run(home, srv, &a.id, Begin::Rotate { service: a.service.as_ref(), emergency: a.emergency }, &a.switch).await
}

pub async fn migrate(home: &Path, srv: &ServerArgs, a: MigrateArgs) -> Result<i32, Failure> {
    let MigrateTo::PerService = a.to;
    run(home, srv, &a.id, Begin::Migrate, &a.switch).await
}

async fn run(home: &Path, srv: &ServerArgs, id: &PreviewId, begin: Begin<'_>, a: &SwitchArgs) -> Result<i32, Failure> {
    if srv.is_remote() {
        return Err(invalid(anyhow!(
            "pvid rotate and pvid migrate work on the state store (PVID_HOME or PVID_DATABASE_URL), not through \
             --server; for previews run by pvid serve, set rotation_period in the spec"
        )));
    }
    let (service, emergency) = match begin {
        Begin::Rotate { service, emergency } => (service, emergency),
        Begin::Migrate => (None, false),
    };
    // Step 1, under the home lock: publish the new keys.
    let (published, version, overlap_s) = {
        let _lock = context::lock(home, false)?;
        let control = context::open(home).await?;
        let published = match begin {
            Begin::Rotate { .. } => control.begin_rotation(id, service, emergency).await?,
            Begin::Migrate => control.begin_migration(id).await?,
        };
        let reg = control.registry(id).await?;
        control.state().close().await;
        let overlap_s = a.overlap.map_or_else(|| pvid_control::default_overlap_s(reg.token_ttl_s), |d| d.as_secs());
        (published, reg.version, overlap_s)
    };
    for p in &published {
        let how = if p.created { "published" } else { "already published (earlier run)" };
        eprintln!("pvid rotate: {} new key {} {how} in registry version {version}", p.service, p.kid);
    }
    // Step 2: wait until verifiers hold the new key, unless it is an emergency.
    let acknowledged = if emergency {
        false
    } else if a.ack.is_empty() {
        eprintln!("pvid rotate: waiting {:?} (--publish-delay) for verifiers to load version {version}", a.publish_delay);
        tokio::time::sleep(a.publish_delay).await;
        false
    } else {
        wait_for_ack(&a.ack, version, a.ack_timeout).await?;
        true
    };
    // Step 3: switch signing.
    let switched = {
        let _lock = context::lock(home, false)?;
        let control = context::open(home).await?;
        let switched = control.switch_signing(id, service, overlap_s, emergency).await?;
        control.state().close().await;
        switched
    };
    crate::cmd_token::forget_cached_tokens(home, id);
    let mut retired = Vec::new();
    if a.wait && !emergency {
        if let Some(until) = switched.iter().map(|s| s.old_key_until).max() {
            let left = (until - unix_now()).max(0) as u64;
            eprintln!("pvid rotate: waiting {left} s for the overlap to end ({})", rfc3339(until));
            tokio::time::sleep(Duration::from_secs(left)).await;
            let _lock = context::lock(home, false)?;
            let control = context::open(home).await?;
            retired = control.retire_due(id, unix_now()).await?;
            control.state().close().await;
        }
    }

    if a.json {
        let services: Vec<_> = switched
            .iter()
            .map(|s| json!({"service": s.service, "old_kid": s.old_kid, "new_kid": s.new_kid,
                            "old_key_until": rfc3339(s.old_key_until), "old_key_until_unix": s.old_key_until}))
            .collect();
        outln!(
            "{}",
            json!({"preview": id, "migrated": matches!(begin, Begin::Migrate), "emergency": emergency, "published_version": version,
                   "switch_after": if emergency { "now" } else if acknowledged { "acknowledged" } else { "publish_delay" },
                   "overlap_s": if emergency { 0 } else { overlap_s }, "services": services, "retired": retired})
        );
        return Ok(0);
    }
    if switched.is_empty() {
        outln!("preview {}: nothing to switch (no published new key; another run finished it)", id);
        return Ok(0);
    }
    let n = switched.len();
    let plural = if n == 1 { "" } else { "s" };
    match begin {
        Begin::Migrate => outln!("preview {id}: moved {n} service{plural} to per-service keys"),
        Begin::Rotate { .. } => outln!("preview {id}: rotated {n} service{plural}{}", if emergency { " (emergency)" } else { "" }),
    }
    for s in &switched {
        let old = s.old_kid.as_deref().unwrap_or("none");
        if emergency {
            outln!("  {:<12} signs with {}; {old} refused from now on (key_revoked)", s.service, s.new_kid);
        } else if retired.contains(&old.to_owned()) {
            outln!("  {:<12} signs with {}; {old} revoked after its overlap", s.service, s.new_kid);
        } else {
            outln!(
                "  {:<12} signs with {}; {old} accepted until {} (overlap {overlap_s} s), then refused with key_revoked",
                s.service,
                s.new_kid,
                rfc3339(s.old_key_until)
            );
        }
    }
    if matches!(begin, Begin::Migrate) {
        outln!("next: set `mode: per-service` in the spec (pvid up compares it with the stored one)");
    }
    Ok(0)
}

/// Polls each sidecar's `/healthz` until it reports registry version `version` or later.
async fn wait_for_ack(urls: &[String], version: u64, timeout: Duration) -> Result<(), Failure> {
    let client = http_util::client();
    let deadline = tokio::time::Instant::now() + timeout;
    for url in urls {
        let base = url.trim_end_matches('/');
        loop {
            let last = match http_util::call(&client, "GET", &format!("{base}/healthz"), &[]).await {
                Ok(a) if a.status == 200 => match a.body["registry_version"].as_u64() {
                    Some(v) if v >= version => break,
                    Some(v) => format!("it holds version {v}"),
                    None => "its /healthz has no registry_version".into(),
                },
                Ok(a) => format!("/healthz answered {}", a.status),
                Err(e) => format!("{e}"),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(operational(anyhow!(
                    "sidecar {base} did not acknowledge registry version {version} within {timeout:?} ({last}); \
                     the new key is published but unused: run pvid rotate again to finish"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("pvid rotate: {base} holds registry version {version} or later");
    }
    Ok(())
}
