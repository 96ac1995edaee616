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
use pvid_store::KeyState;
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
    /// (No publish delay and no overlap: --publish-delay, --overlap and --wait do not apply.)
    #[arg(long, conflicts_with_all = ["publish_delay", "overlap", "wait"])]
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

/// Longest overlap accepted: a week. Tokens live an hour at most; more only keeps a replaced key
/// alive, and blocks the next rotation for as long.
const MAX_OVERLAP_S: u64 = 7 * 86_400;

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
    let me = match begin {
        Begin::Rotate { .. } => "pvid rotate",
        Begin::Migrate => "pvid migrate",
    };
    // Flags are checked before anything changes.
    let acks = ack_urls(&a.ack)?;
    if let Some(o) = a.overlap.filter(|o| o.as_secs() > MAX_OVERLAP_S) {
        return Err(invalid(anyhow!("--overlap {}s is longer than the {MAX_OVERLAP_S}s (7 days) accepted", o.as_secs())));
    }
    refuse_foreign_sidecars(&acks, id).await?;
    if a.wait && !emergency {
        if let Some(code) = finish_waiting(home, id, service, a.json).await? {
            return Ok(code);
        }
    }
    // Step 1, under the home lock: publish the new keys.
    let (published, version, overlap_s, safe_overlap_s) = {
        let _lock = context::lock(home, false)?;
        let control = context::open(home).await?;
        let published = match begin {
            Begin::Rotate { .. } => control.begin_rotation(id, service, emergency).await?,
            Begin::Migrate => control.begin_migration(id).await?,
        };
        let reg = control.registry(id).await?;
        control.state().close().await;
        let safe = pvid_control::default_overlap_s(reg.token_ttl_s);
        (published, reg.version, a.overlap.map_or(safe, |d| d.as_secs()), safe)
    };
    for p in &published {
        let how = if p.created { "published" } else { "already published (earlier run)" };
        eprintln!("{me}: {} new key {} {how} in registry version {version}", p.service, p.kid);
    }
    if !emergency && overlap_s < safe_overlap_s {
        eprintln!(
            "{me}: warning: --overlap {overlap_s}s is shorter than the token lifetime plus leeway ({safe_overlap_s}s): \
             tokens signed just before the switch will be refused (key_revoked) while still unexpired"
        );
    }
    // Step 2: wait until verifiers hold the new key, unless it is an emergency.
    let acknowledged = if emergency {
        false
    } else if acks.is_empty() {
        eprintln!("{me}: waiting {:?} (--publish-delay) for verifiers to load version {version}", a.publish_delay);
        tokio::time::sleep(a.publish_delay).await;
        false
    } else {
        let then = "the new key is published, nobody signs with it yet: run the same command again to finish";
        wait_for_ack(me, &acks, id, version, a.ack_timeout, then).await?;
        true
    };
    // Step 3: switch signing.
    let (switched, switched_version) = {
        let _lock = context::lock(home, false)?;
        let control = context::open(home).await?;
        let switched = control.switch_signing(id, service, overlap_s, emergency).await?;
        let version = control.registry(id).await?.version;
        control.state().close().await;
        (switched, version)
    };
    crate::cmd_token::forget_cached_tokens(home, id);
    // With --ack, return once the sidecars hold the switch too: for an emergency that is the
    // version that refuses the leaked key.
    if !acks.is_empty() && !switched.is_empty() {
        let then = "signing has switched; that sidecar still runs an older registry (check it: pvid doctor --sidecar URL)";
        wait_for_ack(me, &acks, id, switched_version, a.ack_timeout, then).await?;
    }
    let mut retired = Vec::new();
    let mut torn_down = false;
    if a.wait && !emergency {
        if let Some(until) = switched.iter().map(|s| s.old_key_until).max() {
            eprintln!("{me}: waiting for the overlap to end");
            match retire_after(me, home, id, until).await? {
                Some(kids) => retired = kids,
                None => torn_down = true,
            }
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
                   "switched_version": switched_version,
                   "switch_after": if emergency { "now" } else if acknowledged { "acknowledged" } else { "publish_delay" },
                   "overlap_s": if emergency { 0 } else { overlap_s }, "services": services, "retired": retired,
                   "torn_down": torn_down})
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
        } else if torn_down {
            outln!("  {:<12} signed with {} until the preview was torn down", s.service, s.new_kid);
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
    if !emergency && !a.wait {
        // Sidecars refuse the old key on time by the registry's `retiring` list; a verifier that
        // reads only the JWKS cannot see it and accepts the key until it leaves the JWKS.
        outln!("the old keys leave the JWKS when the next `pvid rotate` or `pvid serve` pass (or `--wait`) revokes them");
    }
    if matches!(begin, Begin::Migrate) {
        outln!("next: set `mode: per-service` in the spec (pvid up compares it with the stored one)");
    }
    Ok(0)
}

/// `--wait` run again after it was interrupted in the overlap: every selected service has
/// switched and only waits for its old key's overlap to end. Then this finishes that wait
/// instead of refusing a new rotation. `None`: not that case, rotate as usual.
async fn finish_waiting(home: &Path, id: &PreviewId, service: Option<&ServiceName>, json_out: bool) -> Result<Option<i32>, Failure> {
    let control = context::open(home).await?;
    let keys = control.state().keys(id).await.map_err(Failure::from)?;
    control.state().close().await;
    let selected = |k: &&pvid_store::KeyRecord| service.is_none_or(|s| &k.service == s);
    let retiring: Vec<&pvid_store::KeyRecord> = keys.iter().filter(selected).filter(|k| k.state == KeyState::Retiring).collect();
    let services: std::collections::BTreeSet<&ServiceName> = keys.iter().filter(selected).map(|k| &k.service).collect();
    let pending = keys.iter().filter(selected).any(|k| matches!(k.state, KeyState::Next | KeyState::Pending));
    let waiting: std::collections::BTreeSet<&ServiceName> = retiring.iter().map(|k| &k.service).collect();
    if pending || waiting.is_empty() || waiting != services {
        return Ok(None);
    }
    let until = retiring.iter().filter_map(|k| k.retire_at).max().unwrap_or_default();
    eprintln!("pvid rotate: every service has switched already; waiting for the overlap to end");
    let retired = retire_after("pvid rotate", home, id, until).await?.unwrap_or_default();
    if json_out {
        outln!("{}", json!({"preview": id, "resumed_wait": true, "services": [], "retired": retired}));
    } else {
        outln!("preview {id}: the overlap ended; revoked {}", if retired.is_empty() { "nothing (already done)".to_owned() } else { retired.join(", ") });
    }
    Ok(Some(0))
}

/// Sleeps until `until` (the end of an overlap), then revokes the keys whose overlap ended.
/// `None` when the preview was torn down meanwhile (every key of it is revoked already).
async fn retire_after(me: &str, home: &Path, id: &PreviewId, until: i64) -> Result<Option<Vec<String>>, Failure> {
    let left = (until - unix_now()).max(0) as u64;
    eprintln!("{me}: {left} s to go ({})", rfc3339(until));
    tokio::time::sleep(Duration::from_secs(left)).await;
    let _lock = context::lock(home, false)?;
    let control = context::open(home).await?;
    let result = if control.registry(id).await?.state.is_gone() {
        eprintln!("{me}: preview {id} was torn down during the overlap: every key of it is revoked");
        None
    } else {
        Some(control.retire_due(id, unix_now()).await?)
    };
    control.state().close().await;
    Ok(result)
}

/// The `--ack` URLs, checked: `http://host:port`, nothing else (exit 2 before anything changes).
fn ack_urls(raw: &[String]) -> Result<Vec<String>, Failure> {
    raw.iter()
        .map(|u| {
            let base = u.trim().trim_end_matches('/');
            let hostport = base.strip_prefix("http://").unwrap_or("");
            let ok = hostport.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok_and(|p| p > 0));
            if ok {
                Ok(base.to_owned())
            } else {
                Err(invalid(anyhow!("--ack `{}` is not a sidecar admin URL (http://host:port)", u.escape_debug())))
            }
        })
        .collect()
}

/// A `--ack` sidecar that answers now and serves another preview is a mistake in the command:
/// refused before anything changes. (One that does not answer yet is waited for later.)
async fn refuse_foreign_sidecars(urls: &[String], id: &PreviewId) -> Result<(), Failure> {
    let client = http_util::client();
    for base in urls {
        let url = format!("{base}/healthz");
        if let Ok(Ok(a)) = tokio::time::timeout(Duration::from_secs(2), http_util::call(&client, "GET", &url, &[])).await {
            if let Some(other) = a.body["preview"].as_str().filter(|p| *p != id.as_str()) {
                return Err(invalid(anyhow!("--ack {base} is a sidecar of preview {other}, not {id}")));
            }
        }
    }
    Ok(())
}

/// Polls each sidecar's `/healthz` until it reports registry version `version` or later. A
/// sidecar of another preview is refused at once: its versions count another registry.
async fn wait_for_ack(me: &str, urls: &[String], id: &PreviewId, version: u64, timeout: Duration, then: &str) -> Result<(), Failure> {
    let client = http_util::client();
    let deadline = tokio::time::Instant::now() + timeout;
    for base in urls {
        loop {
            let last = match http_util::call(&client, "GET", &format!("{base}/healthz"), &[]).await {
                Ok(a) if a.status == 200 && a.body["preview"].as_str().is_some_and(|p| p != id.as_str()) => {
                    return Err(invalid(anyhow!(
                        "--ack {base} is a sidecar of preview {}, not {id}: its registry versions say nothing about {id}",
                        a.body["preview"].as_str().unwrap_or("?")
                    )));
                }
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
                    "sidecar {base} did not acknowledge registry version {version} within {timeout:?} ({last}); {then}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("{me}: {base} holds registry version {version} or later");
    }
    Ok(())
}
