//! `pvid up`, `down`, `ls`, `show`, `jwks`, `registry`, `audit`.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use pvid_control::{OrphanKind, ProvisionOutcome, TeardownOutcome};
use pvid_core::{PreviewId, PreviewSpec};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::Backend;
use crate::exit::{Failure, NEGATIVE, invalid, operational};
use crate::remote::ServerArgs;

/// Arguments of `pvid up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// The preview spec (YAML).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// The preview id (overrides `preview:` in the spec).
    #[arg(long)]
    preview: Option<PreviewId>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pvid down`.
#[derive(Args, Debug)]
pub struct DownArgs {
    /// The preview id.
    id: PreviewId,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pvid ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pvid show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The preview id.
    id: PreviewId,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A preview id.
#[derive(Args, Debug)]
pub struct IdArg {
    /// The preview id.
    id: PreviewId,
}

/// `pvid audit ...`
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Find every secret or key whose preview is not active. Exit 1 when any is found.
    Orphans {
        /// Remove what is found (secrets deleted, keys revoked, each recorded as evidence).
        #[arg(long)]
        sweep: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain of the evidence trail. Exit 1 naming the first bad entry.
    Verify {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a preview's story from the evidence trail.
    Trail {
        /// The preview id.
        id: PreviewId,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

/// Reads and parses a spec file, keeping its text (sent as is to a control plane); errors name
/// the file, line and field (exit 2).
fn read_spec_text(file: &Path) -> Result<(PreviewSpec, String), Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| invalid(anyhow!("cannot read spec {}: {e}", file.display())))?;
    let spec = PreviewSpec::parse(&file.display().to_string(), &text).map_err(invalid)?;
    Ok((spec, text))
}

pub async fn up(home: &Path, srv: &ServerArgs, a: UpArgs) -> Result<i32, Failure> {
    let (spec, text) = read_spec_text(&a.file)?;
    let id = a.preview.or(spec.preview.clone()).ok_or_else(|| {
        invalid(anyhow!("{}: no preview id: set `preview:` in the spec or pass --preview", a.file.display()))
    })?;
    let backend = Backend::open(home, srv).await?;
    let started = Instant::now();
    let (outcome, reg) = backend.provision(&id, &spec, &text).await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let location = backend.registry_location(&id);
    let what = match outcome {
        ProvisionOutcome::AlreadyActive => "already_active",
        ProvisionOutcome::Created => "created",
        ProvisionOutcome::Resumed => "resumed",
    };
    if a.json {
        let services: Vec<_> = reg
            .services
            .iter()
            .map(|(name, e)| json!({"service": name, "issuer": e.issuer, "audience": e.audience, "kids": e.kids, "address": e.address}))
            .collect();
        println!(
            "{}",
            json!({"preview": id, "outcome": what, "state": reg.state, "version": reg.version, "services": services,
                   "registry": location, "elapsed_ms": elapsed_ms})
        );
    } else {
        let verb = match outcome {
            ProvisionOutcome::AlreadyActive => "already active, nothing changed",
            ProvisionOutcome::Created => "provisioned",
            ProvisionOutcome::Resumed => "provisioned (completed an interrupted run)",
        };
        println!("preview {id}: {verb} ({} services, registry v{}, {elapsed_ms:.1} ms)", reg.services.len(), reg.version);
        for (name, e) in &reg.services {
            println!("  {name:<12} kid {:<18} aud {}", e.kids.join(","), e.audience);
        }
        println!("registry: {location}");
    }
    Ok(0)
}

pub async fn down(home: &Path, srv: &ServerArgs, a: DownArgs) -> Result<i32, Failure> {
    let outcome = Backend::open(home, srv).await?.teardown(&a.id).await?;
    let what = match outcome {
        TeardownOutcome::AlreadyTornDown => "already_torn_down",
        TeardownOutcome::TornDown => "torn_down",
    };
    if a.json {
        println!("{}", json!({"preview": a.id, "outcome": what}));
    } else if outcome == TeardownOutcome::AlreadyTornDown {
        println!("preview {}: already torn down, nothing left", a.id);
    } else {
        println!("preview {}: torn down (keys revoked, secrets deleted and confirmed gone)", a.id);
    }
    Ok(0)
}

pub async fn ls(home: &Path, srv: &ServerArgs, a: LsArgs) -> Result<i32, Failure> {
    let previews = Backend::open(home, srv).await?.previews().await?;
    if a.json {
        let list: Vec<_> = previews
            .iter()
            .map(|p| json!({"preview": p.id, "state": p.state, "version": p.version, "services": p.config.services.len(),
                            "created_at": rfc3339(p.created_at), "updated_at": rfc3339(p.updated_at)}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if previews.is_empty() {
        println!("no previews in {}", srv.server.as_deref().filter(|s| !s.is_empty()).map_or_else(|| home.display().to_string(), str::to_owned));
    } else {
        println!("{:<20} {:<13} {:>8} {:>8}  {}", "PREVIEW", "STATE", "SERVICES", "VERSION", "UPDATED");
        for p in previews {
            println!("{:<20} {:<13} {:>8} {:>8}  {}", p.id, p.state, p.config.services.len(), p.version, rfc3339(p.updated_at));
        }
    }
    Ok(0)
}

pub async fn show(home: &Path, srv: &ServerArgs, a: ShowArgs) -> Result<i32, Failure> {
    let (rec, keys, reg) = Backend::open(home, srv).await?.show(&a.id).await?;
    if a.json {
        let services: Vec<_> = reg
            .services
            .iter()
            .map(|(name, e)| {
                let ks: Vec<_> = keys
                    .iter()
                    .filter(|k| &k.service == name)
                    .map(|k| json!({"kid": k.kid, "state": k.state.as_str(), "alg": k.jwk.alg, "created_at": rfc3339(k.created_at),
                                    "revoked_at": k.revoked_at.map(rfc3339), "revoke_reason": k.revoke_reason}))
                    .collect();
                json!({"service": name, "issuer": e.issuer, "audience": e.audience, "address": e.address,
                       "accept_preview_audience": e.accept_preview_audience, "keys": ks})
            })
            .collect();
        let policy: Vec<String> = reg.policy.iter().map(ToString::to_string).collect();
        println!(
            "{}",
            json!({"preview": rec.id, "state": rec.state, "version": rec.version, "algorithm": rec.config.algorithm,
                   "token_ttl_s": rec.config.token_ttl_s, "created_at": rfc3339(rec.created_at), "updated_at": rfc3339(rec.updated_at),
                   "expires_at": rec.expires_at.map(rfc3339), "services": services, "policy": policy})
        );
        return Ok(0);
    }
    println!("preview {}  state {}  version {}  algorithm {}  token ttl {}s", rec.id, rec.state, rec.version, rec.config.algorithm, rec.config.token_ttl_s);
    println!("{:<12} {:<28} {:<22} {:<10} {}", "SERVICE", "ISSUER / AUDIENCE", "KID", "KEY", "ADDRESS");
    for (name, e) in &reg.services {
        let mine: Vec<_> = keys.iter().filter(|k| &k.service == name).collect();
        if mine.is_empty() {
            println!("{:<12} {:<28} {:<22} {:<10} {}", name, e.issuer, "-", "-", e.address.as_deref().unwrap_or("-"));
        }
        for k in mine {
            println!("{:<12} {:<28} {:<22} {:<10} {}", name, e.issuer, k.kid, k.state.as_str(), e.address.as_deref().unwrap_or("-"));
        }
    }
    println!("policy (everything else is denied):");
    for r in &reg.policy {
        println!("  {r}");
    }
    Ok(0)
}

pub async fn jwks(home: &Path, srv: &ServerArgs, a: IdArg) -> Result<i32, Failure> {
    let reg = Backend::open(home, srv).await?.registry(&a.id).await?;
    println!("{}", serde_json::to_string_pretty(&reg.jwks).map_err(operational)?);
    Ok(0)
}

pub async fn registry(home: &Path, srv: &ServerArgs, a: IdArg) -> Result<i32, Failure> {
    let reg = Backend::open(home, srv).await?.registry(&a.id).await?;
    println!("{}", serde_json::to_string_pretty(&reg).map_err(operational)?);
    Ok(0)
}

pub async fn audit(home: &Path, srv: &ServerArgs, a: AuditCommand) -> Result<i32, Failure> {
    let backend = Backend::open(home, srv).await?;
    match a {
        AuditCommand::Orphans { sweep, json } => {
            let (orphans, left) = if sweep {
                let mut shown = false;
                let mut progress = |done: usize, total: usize| {
                    if !json && total > 1 {
                        eprint!("\rsweeping orphans: {done}/{total}");
                        shown = true;
                    }
                };
                let result = backend.sweep(&mut progress).await?;
                if shown {
                    eprintln!();
                }
                result
            } else {
                let found = backend.orphans().await?;
                (found.clone(), found)
            };
            if json {
                println!("{}", json!({"found": orphans, "swept": sweep, "remaining": left.len()}));
            } else if orphans.is_empty() {
                println!("clean: no orphaned secret or key");
            } else {
                for o in &orphans {
                    let what = match o.kind {
                        OrphanKind::Secret => format!("secret {}", o.path.as_deref().unwrap_or("?")),
                        OrphanKind::Key => format!("key {} ({}/{})", o.kid.as_deref().unwrap_or("?"), o.preview, o.service),
                    };
                    println!("orphan {what}: {}{}", o.why, if sweep { " [swept]" } else { "" });
                }
                println!("{} orphan(s){}", orphans.len(), if sweep { format!(", {} remaining", left.len()) } else { String::new() });
            }
            // Without --sweep any finding is a failure; with it, only what could not be removed.
            Ok(if left.is_empty() && (sweep || orphans.is_empty()) { 0 } else { NEGATIVE })
        }
        AuditCommand::Verify { json } => {
            let entries = backend.evidence(None).await?;
            let result = pvid_store::evidence::verify_chain(&entries);
            let head = entries.last().map(|e| e.hash.clone());
            match (&result, json) {
                (Ok(()), true) => println!("{}", json!({"result": "ok", "entries": entries.len(), "head": head})),
                (Ok(()), false) => println!("evidence trail intact: {} entries, head {}", entries.len(), head.as_deref().unwrap_or("-")),
                (Err((seq, why)), true) => println!("{}", json!({"result": "broken", "first_bad_seq": seq, "why": why})),
                (Err((seq, why)), false) => println!("evidence trail broken at entry {seq}: {why}"),
            }
            Ok(if result.is_ok() { 0 } else { NEGATIVE })
        }
        AuditCommand::Trail { id, json } => {
            let entries = backend.evidence(Some(&id)).await?;
            if entries.is_empty() {
                return Err(invalid(anyhow!("no evidence for preview {id}")));
            }
            for e in entries {
                if json {
                    println!("{}", serde_json::to_string(&e).map_err(operational)?);
                } else {
                    println!("{:>5}  {}  {:<22} {}", e.seq, rfc3339_ms(e.ts_ms), e.event, e.data);
                }
            }
            Ok(0)
        }
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    rfc3339_ms(unix * 1000)
}

fn rfc3339_ms(ms: i64) -> String {
    let fmt = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ms.to_string())
}
