//! `pvid up`, `down`, `ls`, `show`, `jwks`, `registry`, `audit`.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use pvid_control::{OrphanKind, ProvisionOutcome, TeardownOutcome};
use pvid_core::{KeyCustody, PreviewId, PreviewSpec};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::backend::Backend;
use crate::context;
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
    /// Who holds the private keys (overrides `key_custody:` in the spec): `sidecar` (each
    /// sidecar gets its key from the secret store) or `transit` (OpenBao Transit signs; needs
    /// --secrets openbao).
    #[arg(long, value_name = "sidecar|transit")]
    key_custody: Option<KeyCustody>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the Docker Compose override, registry and key files (0600) into this folder
    /// (`pvid render compose --include-secrets --out DIR`).
    #[arg(long, value_name = "DIR")]
    compose: Option<PathBuf>,
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
    ///
    /// With --file, check chain files instead of the state store's trail: a sidecar's
    /// `--evidence` file (the whole chain) or a `pvid audit export` bundle (each entry's hash,
    /// and the links between consecutive entries).
    Verify {
        /// Evidence files to check (repeatable); the state store is not opened.
        #[arg(long = "file", value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a preview's evidence as a JSONL bundle (entries, then the chain head), ready to
    /// attach to a pull request.
    Export {
        /// The preview id.
        id: PreviewId,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
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

/// Orphan sweeps of at least this many items show a progress bar.
const SWEEP_BAR_THRESHOLD: usize = 5;

/// Reads and parses a spec file; errors name the file, line and field (exit 2).
pub fn read_spec(file: &Path) -> Result<PreviewSpec, Failure> {
    Ok(read_spec_text(file)?.0)
}

/// Reads and parses a spec file, keeping its text (sent as is to a control plane); errors name
/// the file, line and field (exit 2).
fn read_spec_text(file: &Path) -> Result<(PreviewSpec, String), Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| invalid(anyhow!("cannot read spec {}: {e}", file.display())))?;
    let spec = PreviewSpec::parse(&file.display().to_string(), &text).map_err(invalid)?;
    Ok((spec, text))
}

/// What `pvid up` and `pvid doctor` say about `mode: shared` (DESIGN.md, pattern 1).
pub fn shared_mode_warning(id: &PreviewId) -> String {
    format!(
        "mode: shared: every service of every shared-mode preview signs with ONE key pair. A compromise of \
         one preview (a leaked key file, one breached service) compromises all of them, and permission-boundary \
         tests (pvid matrix) are meaningless: any holder of the key can claim to be any service. Use it only to \
         start; move to per-service keys without downtime with `pvid migrate {id} --to per-service`"
    )
}

pub async fn up(home: &Path, srv: &ServerArgs, a: UpArgs) -> Result<i32, Failure> {
    let (mut spec, text) = read_spec_text(&a.file)?;
    if let Some(custody) = a.key_custody {
        if srv.is_remote() {
            return Err(invalid(anyhow!("--key-custody applies to the embedded stores; with --server set `key_custody:` in the spec")));
        }
        custody.check_algorithm(spec.algorithm).map_err(|e| invalid(anyhow!("--key-custody {custody}: {e}")))?;
        spec.key_custody = custody;
    }
    let id = a.preview.or(spec.preview.clone()).ok_or_else(|| {
        invalid(anyhow!("{}: no preview id: set `preview:` in the spec or pass --preview", a.file.display()))
    })?;
    let warnings: Vec<String> = (spec.mode == pvid_core::CredentialMode::Shared).then(|| shared_mode_warning(&id)).into_iter().collect();
    for w in &warnings {
        eprintln!("pvid up: WARNING: {w}");
    }
    let _lock = local_lock(home, srv, true)?;
    let backend = Backend::open_or_create(home, srv).await?;
    let started = Instant::now();
    let (outcome, reg) = backend.provision(&id, &spec, &text).await?;
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let location = backend.registry_location(&id);
    if let Some(dir) = &a.compose {
        let options = pvid_render::RenderOptions::default();
        crate::cmd_render::render_to(home, pvid_render::Target::Compose, &spec, &id, dir, true, options).await?;
    }
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
        outln!(
            "{}",
            json!({"preview": id, "outcome": what, "state": reg.state, "version": reg.version, "services": services,
                   "key_custody": spec.key_custody, "secrets": backend.secrets_kind(),
                   "mode": spec.mode, "warnings": warnings, "registry": location, "elapsed_ms": elapsed_ms})
        );
    } else {
        let verb = match outcome {
            ProvisionOutcome::AlreadyActive => "already active, nothing changed",
            ProvisionOutcome::Created => "provisioned",
            ProvisionOutcome::Resumed => "provisioned (completed an interrupted run)",
        };
        let n = reg.services.len();
        outln!("preview {id}: {verb} ({n} service{}, registry v{}, {elapsed_ms:.1} ms)", if n == 1 { "" } else { "s" }, reg.version);
        for (name, e) in &reg.services {
            outln!("  {name:<12} kid {:<18} aud {}", e.kids.join(","), e.audience);
        }
        outln!("registry: {location}");
    }
    Ok(0)
}

pub async fn down(home: &Path, srv: &ServerArgs, a: DownArgs) -> Result<i32, Failure> {
    let _lock = local_lock(home, srv, false)?;
    let outcome = Backend::open(home, srv).await?.teardown(&a.id).await?;
    crate::cmd_token::forget_cached_tokens(home, &a.id);
    let what = match outcome {
        TeardownOutcome::AlreadyTornDown => "already_torn_down",
        TeardownOutcome::TornDown => "torn_down",
    };
    if a.json {
        outln!("{}", json!({"preview": a.id, "outcome": what}));
    } else if outcome == TeardownOutcome::AlreadyTornDown {
        outln!("preview {}: already torn down, nothing left", a.id);
    } else {
        outln!("preview {}: torn down (keys revoked, secrets deleted and confirmed gone)", a.id);
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
        outln!("{}", serde_json::Value::Array(list));
    } else if previews.is_empty() {
        outln!("no previews in {}", srv.server.as_deref().filter(|s| !s.is_empty()).map_or_else(|| home.display().to_string(), str::to_owned));
    } else {
        outln!("{:<20} {:<13} {:>8} {:>8}  {}", "PREVIEW", "STATE", "SERVICES", "VERSION", "UPDATED");
        for p in previews {
            outln!("{:<20} {:<13} {:>8} {:>8}  {}", p.id, p.state, p.config.services.len(), p.version, rfc3339(p.updated_at));
        }
    }
    Ok(0)
}

pub async fn show(home: &Path, srv: &ServerArgs, a: ShowArgs) -> Result<i32, Failure> {
    let backend = Backend::open(home, srv).await?;
    let (rec, keys, reg) = backend.show(&a.id).await?;
    if a.json {
        let services: Vec<_> = reg
            .services
            .iter()
            .map(|(name, e)| {
                let ks: Vec<_> = keys
                    .iter()
                    .filter(|k| &k.service == name)
                    .map(|k| json!({"kid": k.kid, "state": k.state.as_str(), "alg": k.jwk.alg, "created_at": rfc3339(k.created_at),
                                    "revoked_at": k.revoked_at.map(rfc3339), "revoke_reason": k.revoke_reason,
                                    "retire_at": k.retire_at.map(rfc3339)}))
                    .collect();
                json!({"service": name, "issuer": e.issuer, "audience": e.audience, "address": e.address,
                       "accept_preview_audience": e.accept_preview_audience, "keys": ks})
            })
            .collect();
        let policy: Vec<String> = reg.policy.iter().map(ToString::to_string).collect();
        outln!(
            "{}",
            json!({"preview": rec.id, "state": rec.state, "version": rec.version, "algorithm": rec.config.algorithm,
                   "key_custody": rec.config.key_custody, "secrets": backend.secrets_location(),
                   "token_ttl_s": rec.config.token_ttl_s, "rotation_period_s": rec.config.rotation_period_s, "mode": rec.config.mode, "created_at": rfc3339(rec.created_at), "updated_at": rfc3339(rec.updated_at),
                   "expires_at": rec.expires_at.map(rfc3339), "services": services, "policy": policy})
        );
        return Ok(0);
    }
    outln!("preview {}  state {}  version {}  algorithm {}  token ttl {}s", rec.id, rec.state, rec.version, rec.config.algorithm, rec.config.token_ttl_s);
    outln!("key custody {}  secrets {}", rec.config.key_custody, backend.secrets_location());
    outln!("{:<12} {:<28} {:<22} {:<10} {}", "SERVICE", "ISSUER / AUDIENCE", "KID", "KEY", "ADDRESS");
    for (name, e) in &reg.services {
        let mine: Vec<_> = keys.iter().filter(|k| &k.service == name).collect();
        if mine.is_empty() {
            outln!("{:<12} {:<28} {:<22} {:<10} {}", name, e.issuer, "-", "-", e.address.as_deref().unwrap_or("-"));
        }
        for k in mine {
            outln!("{:<12} {:<28} {:<22} {:<10} {}", name, e.issuer, k.kid, k.state.as_str(), e.address.as_deref().unwrap_or("-"));
        }
    }
    if let Some(period) = rec.config.rotation_period_s {
        outln!("rotation_period {period}s (pvid serve rotates each key when it is that old)");
    }
    for k in keys.iter().filter(|k| k.state == pvid_store::KeyState::Retiring) {
        let until = k.retire_at.unwrap_or_default();
        if until > pvid_store::state::unix_now() {
            outln!("rotation: {} of {} is accepted until {}, then refused with key_revoked", k.kid, k.service, rfc3339(until));
        } else {
            outln!("rotation: {} of {} is refused (key_revoked) since {}; the next pvid rotate or pvid serve pass revokes it", k.kid, k.service, rfc3339(until));
        }
    }
    outln!("policy (everything else is denied):");
    for r in &reg.policy {
        outln!("  {r}");
    }
    Ok(0)
}

pub async fn jwks(home: &Path, srv: &ServerArgs, a: IdArg) -> Result<i32, Failure> {
    let reg = Backend::open(home, srv).await?.registry(&a.id).await?;
    outln!("{}", serde_json::to_string_pretty(&reg.jwks).map_err(operational)?);
    Ok(0)
}

pub async fn registry(home: &Path, srv: &ServerArgs, a: IdArg) -> Result<i32, Failure> {
    let reg = Backend::open(home, srv).await?.registry(&a.id).await?;
    outln!("{}", serde_json::to_string_pretty(&reg).map_err(operational)?);
    Ok(0)
}

pub async fn audit(home: &Path, srv: &ServerArgs, a: AuditCommand) -> Result<i32, Failure> {
    // The orphan audit must not see a provision or teardown half-way.
    let _lock = if matches!(a, AuditCommand::Orphans { .. }) { local_lock(home, srv, false)? } else { None };
    if let AuditCommand::Verify { files, json } = &a
        && !files.is_empty()
    {
        return verify_files(files, *json);
    }
    let backend = Backend::open(home, srv).await?;
    match a {
        AuditCommand::Orphans { sweep, json } => {
            let (orphans, left) = if sweep {
                // A bar on stderr when there are many; indicatif draws nothing when stderr is
                // not a terminal, so scripts and --json output stay clean.
                let bar = std::sync::OnceLock::<indicatif::ProgressBar>::new();
                let mut progress = |done: usize, total: usize| {
                    if !json && total >= SWEEP_BAR_THRESHOLD {
                        let b = bar.get_or_init(|| {
                            let b = indicatif::ProgressBar::new(total as u64);
                            b.set_style(
                                indicatif::ProgressStyle::with_template("sweeping orphans {bar:30} {pos}/{len} {elapsed}")
                                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                            );
                            b
                        });
                        b.set_position(done as u64);
                    }
                };
                let result = backend.sweep(&mut progress).await;
                if let Some(b) = bar.get() {
                    b.finish_and_clear();
                }
                result?
            } else {
                let found = backend.orphans().await?;
                (found.clone(), found)
            };
            if json {
                outln!("{}", json!({"found": orphans, "swept": sweep, "remaining": left.len()}));
            } else if orphans.is_empty() {
                outln!("clean: no orphaned secret or key");
            } else {
                for o in &orphans {
                    let what = match o.kind {
                        OrphanKind::Secret => format!("secret {}", o.path.as_deref().unwrap_or("?")),
                        OrphanKind::Key => format!("key {} ({}/{})", o.kid.as_deref().unwrap_or("?"), o.preview, o.service),
                        OrphanKind::TransitKey => format!("transit key {}", o.transit_key.as_deref().unwrap_or("?")),
                    };
                    outln!("orphan {what}: {}{}", o.why, if sweep { " [swept]" } else { "" });
                }
                outln!("{} orphan(s){}", orphans.len(), if sweep { format!(", {} remaining", left.len()) } else { String::new() });
            }
            // Without --sweep any finding is a failure; with it, only what could not be removed.
            Ok(if left.is_empty() && (sweep || orphans.is_empty()) { 0 } else { NEGATIVE })
        }
        AuditCommand::Verify { json, .. } => {
            let entries = backend.evidence(None).await?;
            let result = pvid_store::evidence::verify_chain(&entries);
            let head = entries.last().map(|e| e.hash.clone());
            match (&result, json) {
                (Ok(()), true) => outln!("{}", json!({"result": "ok", "entries": entries.len(), "head": head})),
                (Ok(()), false) => outln!("evidence trail intact: {} entries, head {}", entries.len(), head.as_deref().unwrap_or("-")),
                (Err((seq, why)), true) => outln!("{}", json!({"result": "broken", "first_bad_seq": seq, "why": why})),
                (Err((seq, why)), false) => outln!("evidence trail broken at entry {seq}: {why}"),
            }
            Ok(if result.is_ok() { 0 } else { NEGATIVE })
        }
        AuditCommand::Export { id, out } => {
            let all = backend.evidence(None).await?;
            let chain = pvid_store::evidence::verify_chain(&all);
            let mine: Vec<_> = all.iter().filter(|e| e.preview_id == id.as_str()).collect();
            if mine.is_empty() {
                return Err(invalid(anyhow!("no evidence for preview {id}")));
            }
            let mut text = String::new();
            for e in &mine {
                text.push_str(&serde_json::to_string(e).map_err(operational)?);
                text.push('\n');
            }
            // The head commits to the whole trail; each entry's hash can be recomputed from its
            // fields and prev_hash (see docs/cli.md).
            let head = json!({"bundle": "pvid-evidence-v1", "preview": id, "entries": mine.len(),
                              "chain_head": all.last().map(|e| e.hash.clone()), "chain_length": all.len(),
                              "chain_verified": chain.is_ok(), "exported_at": rfc3339(pvid_store::state::unix_now())});
            text.push_str(&head.to_string());
            text.push('\n');
            match out {
                Some(path) => {
                    std::fs::write(&path, text).map_err(|e| operational(anyhow!("cannot write {}: {e}", path.display())))?;
                    eprintln!("wrote {} entries of {id} to {}", mine.len(), path.display());
                }
                None => out!("{text}"),
            }
            Ok(if chain.is_ok() { 0 } else { NEGATIVE })
        }
        AuditCommand::Trail { id, json } => {
            let entries = backend.evidence(Some(&id)).await?;
            if entries.is_empty() {
                return Err(invalid(anyhow!("no evidence for preview {id}")));
            }
            for e in entries {
                if json {
                    outln!("{}", serde_json::to_string(&e).map_err(operational)?);
                } else {
                    outln!("{:>5}  {}  {:<22} {}", e.seq, rfc3339_ms(e.ts_ms), e.event, e.data);
                }
            }
            Ok(0)
        }
    }
}

/// Unix seconds as RFC 3339 UTC.
pub fn rfc3339(unix: i64) -> String {
    rfc3339_ms(unix.saturating_mul(1000))
}

fn rfc3339_ms(ms: i64) -> String {
    let secs = pvid_core::explain::rfc3339(ms.div_euclid(1000));
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// The PVID_HOME lock of a command that changes local state; a control plane locks for itself.
fn local_lock(home: &Path, srv: &ServerArgs, create: bool) -> Result<Option<context::HomeLock>, Failure> {
    if srv.is_remote() { Ok(None) } else { context::lock(home, create).map(Some) }
}

/// An excerpt cannot show a deleted entry between two that are not consecutive in the trail;
/// the bundle's head can: it says how many entries of which preview it holds.
fn bundle_matches_head(head: &Value, entries: &[pvid_store::EvidenceEntry]) -> Result<(), (i64, String)> {
    let said = head["entries"].as_u64();
    if said != Some(entries.len() as u64) {
        return Err((0, format!("the bundle's head says {} entries, the file holds {} (deleted or added)", head["entries"], entries.len())));
    }
    if let Some(e) = entries.iter().find(|e| head["preview"].as_str() != Some(e.preview_id.as_str())) {
        return Err((e.seq, format!("entry of preview {} in a bundle of {}", e.preview_id, head["preview"])));
    }
    Ok(())
}

/// `pvid audit verify --file F...`: each file is a whole chain (a sidecar's `--evidence` file)
/// or an export bundle (its last line the `pvid-evidence-v1` head). Exit 1 when any is broken.
fn verify_files(files: &[PathBuf], json: bool) -> Result<i32, Failure> {
    let mut all_ok = true;
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| invalid(anyhow!("cannot read {}: {e}", path.display())))?;
        // A bundle ends with its `pvid-evidence-v1` head line; a chain file is entries only.
        let trimmed = text.trim_end();
        let (before_last, last) = trimmed.rsplit_once('\n').unwrap_or(("", trimmed));
        let head = serde_json::from_str::<Value>(last).ok().filter(|v| v["bundle"] == "pvid-evidence-v1");
        let is_bundle = head.is_some();
        let body = if is_bundle { before_last } else { text.as_str() };
        let entries = pvid_store::evidence::read_entries(body).map_err(|e| invalid(anyhow!("{}: {e}", path.display())))?;
        let result = match &head {
            Some(head) => pvid_store::evidence::verify_excerpt(&entries).and_then(|()| bundle_matches_head(head, &entries)),
            None => pvid_store::evidence::verify_chain(&entries),
        };
        let last_hash = entries.last().map(|e| e.hash.clone());
        let kind = if is_bundle { "bundle" } else { "chain" };
        match (&result, json) {
            (Ok(()), true) => outln!("{}", json!({"file": path, "kind": kind, "result": "ok", "entries": entries.len(), "head": last_hash})),
            (Ok(()), false) => outln!("{}: {kind} intact: {} entries, head {}", path.display(), entries.len(), last_hash.as_deref().unwrap_or("-")),
            (Err((seq, why)), true) => outln!("{}", json!({"file": path, "kind": kind, "result": "broken", "first_bad_seq": seq, "why": why})),
            (Err((seq, why)), false) => outln!("{}: {kind} broken at entry {seq}: {why}", path.display()),
        }
        all_ok &= result.is_ok();
    }
    Ok(if all_ok { 0 } else { NEGATIVE })
}
