//! `pvid render TARGET -f SPEC`: the documents a substrate needs (see docs/substrates.md).
//!
//! This command does the I/O around the pure `pvid-render` crate: it reads the spec, loads the
//! published registry (and, with `--include-secrets`, the private keys) when the preview is
//! provisioned, and writes the files: public ones 0644, key material 0600 in a 0700 folder,
//! each written to a temporary file first and renamed, so no reader sees half a file.

use anyhow::anyhow;
use clap::Args;
use pvid_core::{PreviewId, PreviewSpec, PreviewState, Registry, ServiceName};
use pvid_render::{Custody, RenderInput, RenderOptions, Rendered, SecretBytes, Target};
use pvid_store::SecretPath;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::cmd_lifecycle::read_spec;
use crate::context;
use crate::exit::{Failure, invalid, operational};

/// Arguments of `pvid render`.
#[derive(Args, Debug)]
pub struct RenderArgs {
    /// What to render: k8s, istio, linkerd, compose or serverless.
    target: Target,
    /// The preview spec (YAML).
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// The preview id (overrides `preview:` in the spec).
    #[arg(long)]
    preview: Option<PreviewId>,
    /// Write the files into this folder. Without it, k8s, istio and linkerd print their objects
    /// as one YAML stream (kubectl apply -f -); compose and serverless need a folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Put the private keys in the output (k8s Secret data, Compose key files), read from the
    /// secret store. Needs --out; the files are written with mode 0600. Never commit them.
    #[arg(long)]
    include_secrets: bool,
    /// Sidecar image (default pvid:<version>).
    #[arg(long)]
    image: Option<String>,
    /// Port the application listens on, on loopback inside its pod or container (default 8080).
    #[arg(long)]
    app_port: Option<u16>,
    /// Sidecar inbound port, the only port callers reach (default 8400).
    #[arg(long)]
    inbound_port: Option<u16>,
    /// Sidecar egress port on loopback, for the application's calls (default 8401).
    #[arg(long)]
    egress_port: Option<u16>,
    /// Istio trust domain of the rendered principals (default cluster.local).
    #[arg(long)]
    trust_domain: Option<String>,
    /// AWS account id in rendered ARNs (default `*`).
    #[arg(long)]
    aws_account: Option<String>,
    /// AWS region in rendered ARNs (default `*`).
    #[arg(long)]
    aws_region: Option<String>,
    /// Google Cloud project of the Cloud Run service accounts (default PROJECT_ID).
    #[arg(long)]
    gcp_project: Option<String>,
    /// Print a JSON summary (files written, warnings) instead of text.
    #[arg(long)]
    json: bool,
}

/// What a render wrote.
pub struct Report {
    /// Files written, relative to the output folder, with whether they hold key material.
    pub files: Vec<(String, bool)>,
    /// Warnings, already printed to standard error.
    pub warnings: Vec<String>,
}

pub async fn run(home: &Path, a: RenderArgs) -> Result<i32, Failure> {
    let spec = read_spec(&a.file)?;
    let id = a.preview.clone().or(spec.preview.clone()).ok_or_else(|| {
        invalid(anyhow!("{}: no preview id: set `preview:` in the spec or pass --preview", a.file.display()))
    })?;
    if a.include_secrets && !matches!(a.target, Target::K8s | Target::Compose) {
        return Err(invalid(anyhow!("--include-secrets applies to k8s and compose only ({} renders no key material)", a.target)));
    }
    let mut options = RenderOptions::default();
    override_options(&mut options, &a);
    let Some(out) = a.out.clone() else {
        if a.include_secrets {
            return Err(invalid(anyhow!("refusing to print private keys: --include-secrets needs --out DIR")));
        }
        if !a.target.is_kubernetes() {
            return Err(invalid(anyhow!("{} renders several files: give --out DIR", a.target)));
        }
        let rendered = render(home, a.target, &spec, &id, false, &options).await?;
        warn(&rendered.warnings);
        eprintln!("pvid: note: the sidecar patches and kustomization.yaml are written only with --out");
        let stream: Vec<&str> = rendered
            .files
            .iter()
            .filter(|f| f.path.ends_with(".yaml") && f.path != "kustomization.yaml" && !f.path.starts_with("patches/"))
            .map(|f| f.contents.as_str())
            .collect();
        print!("{}", stream.join("---\n"));
        return Ok(0);
    };
    let report = render_to(home, a.target, &spec, &id, &out, a.include_secrets, options).await?;
    if a.json {
        let files: Vec<_> = report.files.iter().map(|(p, s)| json!({"path": p, "secret": s})).collect();
        outln!(
            "{}",
            json!({"target": a.target.as_str(), "preview": id, "out": out, "files": files, "warnings": report.warnings})
        );
    } else {
        let secret = report.files.iter().filter(|(_, s)| *s).count();
        outln!(
            "{} for preview {id}: {} files in {}{}",
            a.target,
            report.files.len(),
            out.display(),
            if secret > 0 { format!(" ({secret} with private keys, mode 0600: do not commit them)") } else { String::new() }
        );
    }
    Ok(0)
}

fn override_options(o: &mut RenderOptions, a: &RenderArgs) {
    let set = |slot: &mut String, v: &Option<String>| {
        if let Some(v) = v {
            slot.clone_from(v);
        }
    };
    set(&mut o.image, &a.image);
    set(&mut o.trust_domain, &a.trust_domain);
    set(&mut o.aws_account, &a.aws_account);
    set(&mut o.aws_region, &a.aws_region);
    set(&mut o.gcp_project, &a.gcp_project);
    o.app_port = a.app_port.unwrap_or(o.app_port);
    o.inbound_port = a.inbound_port.unwrap_or(o.inbound_port);
    o.egress_port = a.egress_port.unwrap_or(o.egress_port);
}

fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("pvid: warning: {w}");
    }
}

/// Renders `target` for `spec` into `out` (used by `pvid render --out` and `pvid up --compose`).
pub async fn render_to(
    home: &Path,
    target: Target,
    spec: &PreviewSpec,
    id: &PreviewId,
    out: &Path,
    include_secrets: bool,
    mut options: RenderOptions,
) -> Result<Report, Failure> {
    create_dir(out, 0o755)?;
    let owner = current_owner(out)?;
    // Compose resolves the override's relative paths from the project directory: name the
    // output folder as the user gave it (relative to where they run `docker compose`).
    let shown = out.display().to_string();
    options.compose_dir = if out.is_absolute() || shown.starts_with('.') { shown } else { format!("./{shown}") };
    // Key files are owned by the user the Compose sidecar runs as: the caller, or, when pvid
    // runs as root, the sidecar's own non-root user (the files are chowned to it).
    let as_root = owner.0 == 0;
    options.sidecar_user = if as_root { options.sidecar_user } else { owner };
    let rendered = render(home, target, spec, id, include_secrets, &options).await?;
    warn(&rendered.warnings);
    let mut files = Vec::new();
    for f in &rendered.files {
        let path = out.join(&f.path);
        let parent = path.parent().unwrap_or(out);
        if f.secret {
            // Key files live in their own 0700 folder; the output folder itself is the user's.
            create_dir(parent, if parent == out { 0o755 } else { 0o700 })?;
            write_atomic(&path, f.contents.as_bytes(), 0o600)?;
            if as_root && target == Target::Compose {
                let (uid, gid) = options.sidecar_user;
                for p in [parent, path.as_path()].into_iter().filter(|p| *p != out) {
                    std::os::unix::fs::chown(p, Some(uid), Some(gid))
                        .map_err(|e| operational(anyhow!("cannot give {} to {uid}:{gid}: {e}", p.display())))?;
                }
            }
        } else {
            create_dir(parent, 0o755)?;
            write_atomic(&path, f.contents.as_bytes(), 0o644)?;
        }
        files.push((f.path.clone(), f.secret));
    }
    Ok(Report { files, warnings: rendered.warnings.clone() })
}

/// Loads what the preview has published (and, on request, its keys) and renders.
async fn render(
    home: &Path,
    target: Target,
    spec: &PreviewSpec,
    id: &PreviewId,
    include_secrets: bool,
    options: &RenderOptions,
) -> Result<Rendered, Failure> {
    let config = spec.config();
    let (registry, secrets) = load(home, id, &config, include_secrets).await?;
    let input = RenderInput {
        preview: id,
        config: &config,
        registry: registry.as_ref(),
        secrets: secrets.as_ref(),
        custody: Custody::Sidecar,
        options,
    };
    let mut rendered = pvid_render::render(target, &input).map_err(invalid)?;
    if let Some(reg) = &registry
        && reg.state.is_gone()
    {
        rendered.warnings.push(format!(
            "preview {id} is {}: the rendered registry makes every sidecar refuse; apply it, then remove the preview's resources",
            reg.state
        ));
    }
    Ok(rendered)
}

type Loaded = (Option<Registry>, Option<BTreeMap<ServiceName, SecretBytes>>);

/// The registry when the preview was provisioned (active, or torn down: then it refuses all),
/// and the private keys when asked for (only of an active preview).
async fn load(home: &Path, id: &PreviewId, config: &pvid_core::PreviewConfig, include_secrets: bool) -> Result<Loaded, Failure> {
    let not_active = |what: &str| invalid(anyhow!("--include-secrets: preview {id} {what}; run `pvid up` first"));
    // Rendering never creates a PVID_HOME: without a state database nothing is provisioned.
    if !home.join("state.db").exists() {
        return if include_secrets { Err(not_active("is not provisioned")) } else { Ok((None, None)) };
    }
    let control = context::open(home).await?;
    let state = control.state().preview(id).await?.map(|r| r.state);
    let registry = match state {
        Some(PreviewState::Active | PreviewState::TearingDown | PreviewState::TornDown) => Some(control.registry(id).await?),
        Some(PreviewState::Provisioning) | None => None,
    };
    let secrets = if include_secrets {
        if state != Some(PreviewState::Active) {
            return Err(not_active(&match state {
                Some(s) => format!("is {s}"),
                None => "is not provisioned".to_owned(),
            }));
        }
        let mut keys = BTreeMap::new();
        for svc in &config.services {
            let path = SecretPath::private_key(id, &svc.name);
            let bytes = control
                .secrets()
                .get(&path)
                .await?
                .ok_or_else(|| invalid(anyhow!("no private key at {path}: run `pvid up` to complete provisioning")))?;
            keys.insert(svc.name.clone(), SecretBytes::new(bytes));
        }
        Some(keys)
    } else {
        None
    };
    control.state().close().await;
    Ok((registry, secrets))
}

fn create_dir(dir: &Path, mode: u32) -> Result<(), Failure> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| operational(anyhow!("cannot create {}: {e}", dir.display())))?;
    if mode == 0o700 {
        // An existing folder keeps its mode: tighten it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| operational(anyhow!("cannot restrict {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The uid and gid files created in `dir` get: the user pvid runs as.
fn current_owner(dir: &Path) -> Result<(u32, u32), Failure> {
    let probe = tempfile::NamedTempFile::new_in(dir).map_err(|e| operational(anyhow!("cannot write in {}: {e}", dir.display())))?;
    let meta = probe.as_file().metadata().map_err(|e| operational(anyhow!("cannot stat in {}: {e}", dir.display())))?;
    Ok((meta.uid(), meta.gid()))
}

/// Writes through a temporary file created with `mode` from the start, then renames it.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Failure> {
    let err = |e: std::io::Error| operational(anyhow!("cannot write {}: {e}", path.display()));
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    // The umask may have cleared bits of `mode`; set it exactly.
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
