//! `pvid doctor`: finds configuration drift between a preview's registry and what its services
//! and sidecars actually run with: environment (`PREVIEW_ID`, `SERVICE_AUDIENCE`, registry URL,
//! egress address) from env files, a Compose file or a JSON dump, and each sidecar's registry
//! version and clock (from its admin `/healthz`). One line per finding, with the fix; exit 1 when
//! anything is found.

use anyhow::anyhow;
use clap::Args;
use pvid_core::{Clock, PreviewId, Registry, SystemClock, service_identity};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::context;
use crate::exit::{Failure, NEGATIVE, invalid};
use crate::http_util;

/// Arguments of `pvid doctor`.
#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The preview to check.
    #[arg(long)]
    preview: PreviewId,
    /// The registry to check against (default: the preview's, from PVID_HOME).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// An env file of one service (`<service>.env`, or holding `PVID_SERVICE=<service>`).
    #[arg(long = "env")]
    env_files: Vec<PathBuf>,
    /// A Compose file: each service's `environment` is checked.
    #[arg(long)]
    compose: Option<PathBuf>,
    /// A JSON dump: `{"<service>": {"PREVIEW_ID": ..., ...}, ...}`.
    #[arg(long)]
    dump: Option<PathBuf>,
    /// A sidecar admin address (`http://127.0.0.1:9901`); its `/healthz` is checked.
    #[arg(long = "sidecar")]
    sidecars: Vec<String>,
    /// Largest clock offset tolerated between a sidecar and this host, seconds (the token
    /// leeway is 60 s; drift well below it already deserves attention).
    #[arg(long, default_value_t = 5.0)]
    max_clock_offset: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// One problem found.
#[derive(Debug, Serialize)]
struct Finding {
    check: &'static str,
    service: String,
    problem: String,
    fix: String,
}

pub async fn run(home: &Path, a: DoctorArgs) -> Result<i32, Failure> {
    let reg = match &a.registry {
        Some(f) => {
            let bytes = std::fs::read(f).map_err(|e| invalid(anyhow!("cannot read registry {}: {e}", f.display())))?;
            Registry::from_json(&bytes).map_err(|e| invalid(anyhow!("{}: {e}", f.display())))?
        }
        None => context::open(home).await?.registry(&a.preview).await?,
    };
    if reg.preview != a.preview {
        return Err(invalid(anyhow!("the registry is for {}, not {}", reg.preview, a.preview)));
    }
    let mut findings = Vec::new();
    let mut checks = 0;
    if reg.state.is_gone() {
        findings.push(Finding {
            check: "preview_state",
            service: "-".into(),
            problem: format!("preview {} is {}", reg.preview, reg.state),
            fix: format!("provision it again (pvid up) or stop its services"),
        });
    }
    if reg.shared_credentials && !reg.state.is_gone() {
        findings.push(Finding {
            check: "shared_credentials",
            service: "-".into(),
            problem: crate::cmd_lifecycle::shared_mode_warning(&reg.preview),
            fix: format!("pvid migrate {} --to per-service, then set `mode: per-service` in the spec", reg.preview),
        });
    }
    let envs = collect_envs(&a)?;
    for (service, env) in &envs {
        checks += 1;
        check_env(&reg, service, env, &mut findings);
    }
    let client = http_util::client();
    for url in &a.sidecars {
        checks += 1;
        check_sidecar(&client, &reg, url, a.max_clock_offset, &mut findings).await;
    }
    if a.json {
        outln!("{}", json!({"preview": reg.preview, "checked": checks, "findings": findings}));
    } else if findings.is_empty() {
        outln!("clean: preview {} registry v{}; {checks} service environment(s) and sidecar(s) checked", reg.preview, reg.version);
    } else {
        for f in &findings {
            outln!("[{}] {}: {} -- fix: {}", f.check, f.service, f.problem, f.fix);
        }
    }
    Ok(if findings.is_empty() { 0 } else { NEGATIVE })
}

type Env = BTreeMap<String, String>;

fn collect_envs(a: &DoctorArgs) -> Result<Vec<(String, Env)>, Failure> {
    let mut out = Vec::new();
    for f in &a.env_files {
        let text = std::fs::read_to_string(f).map_err(|e| invalid(anyhow!("cannot read {}: {e}", f.display())))?;
        let env = parse_env_file(&text);
        let service = env
            .get("PVID_SERVICE")
            .cloned()
            .or_else(|| f.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_default();
        out.push((service, env));
    }
    if let Some(f) = &a.compose {
        let text = std::fs::read_to_string(f).map_err(|e| invalid(anyhow!("cannot read {}: {e}", f.display())))?;
        let doc: Value = yaml_serde::from_str(&text).map_err(|e| invalid(anyhow!("{}: {e}", f.display())))?;
        for (name, svc) in doc["services"].as_object().into_iter().flatten() {
            let env: Env = match &svc["environment"] {
                Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect(),
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
                    .collect(),
                _ => continue,
            };
            // Only the application containers carry the preview's environment.
            if env.contains_key("PREVIEW_ID") || env.contains_key("SERVICE_AUDIENCE") {
                out.push((env.get("PVID_SERVICE").cloned().unwrap_or_else(|| name.clone()), env));
            }
        }
    }
    if let Some(f) = &a.dump {
        let bytes = std::fs::read(f).map_err(|e| invalid(anyhow!("cannot read {}: {e}", f.display())))?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| invalid(anyhow!("{}: not JSON: {e}", f.display())))?;
        let services = doc.get("services").unwrap_or(&doc);
        for (name, env) in services.as_object().into_iter().flatten() {
            let env: Env = env.as_object().into_iter().flatten().map(|(k, v)| (k.clone(), scalar(v))).collect();
            out.push((name.clone(), env));
        }
    }
    Ok(out)
}

fn scalar(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

/// `KEY=VALUE` lines; `export`, quotes and `#` comments allowed.
fn parse_env_file(text: &str) -> Env {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches(['"', '\'']).to_owned()))
        .collect()
}

fn check_env(reg: &Registry, service: &str, env: &Env, findings: &mut Vec<Finding>) {
    let mut add = |check, problem: String, fix: String| findings.push(Finding { check, service: service.to_owned(), problem, fix });
    let Some(name) = reg.services.keys().find(|s| s.as_str() == service) else {
        add("unknown_service", format!("{service} is not a service of {}", reg.preview), "check the service name, or add it to the spec and run pvid up".into());
        return;
    };
    let want_aud = service_identity(&reg.preview, name);
    match env.get("PREVIEW_ID") {
        None => add("preview_id", "PREVIEW_ID is not set".into(), format!("set PREVIEW_ID={}", reg.preview)),
        Some(p) if p != reg.preview.as_str() => {
            add("preview_id", format!("PREVIEW_ID is {p}; the preview is {}", reg.preview), format!("set PREVIEW_ID={}", reg.preview))
        }
        Some(_) => {}
    }
    if let Some(aud) = env.get("SERVICE_AUDIENCE")
        && aud != &want_aud
    {
        let other = aud.strip_prefix("preview-").and_then(|r| r.strip_suffix(&format!("-{service}"))).filter(|p| *p != reg.preview.as_str());
        let problem = match other {
            Some(p) => format!("SERVICE_AUDIENCE points at {p} ({aud}); the preview is {}", reg.preview),
            None => format!("SERVICE_AUDIENCE is {aud}, not {want_aud}"),
        };
        add("audience_drift", problem, format!("set SERVICE_AUDIENCE={want_aud}"));
    }
    for key in ["PVID_REGISTRY_URL", "PVID_REGISTRY"] {
        if let Some(url) = env.get(key)
            && !url.contains(&format!("/{}/", reg.preview))
            && !url.ends_with(&format!("/{}", reg.preview))
        {
            add("registry_drift", format!("{key} is {url}, which is not {}'s registry", reg.preview), format!("point {key} at the registry of {}", reg.preview));
        }
    }
    if let Some(egress) = env.get("PVID_EGRESS") {
        let hostport = egress.strip_prefix("http://").unwrap_or(egress).trim_end_matches('/');
        if hostport.rsplit_once(':').is_none_or(|(_, p)| p.parse::<u16>().is_err()) {
            add("egress", format!("PVID_EGRESS is {egress}, not host:port"), "set PVID_EGRESS to the sidecar's egress listener, e.g. 127.0.0.1:9001".into());
        }
    }
}

async fn check_sidecar(client: &http_util::HttpClient, reg: &Registry, url: &str, max_offset: f64, findings: &mut Vec<Finding>) {
    let base = url.trim_end_matches('/');
    let before = SystemClock.now();
    let answer = http_util::call(client, "GET", &format!("{base}/healthz"), &[]).await;
    let after = SystemClock.now();
    let mut add = |check, service: String, problem: String, fix: String| findings.push(Finding { check, service, problem, fix });
    let h = match answer {
        Ok(a) if a.status == 200 => a.body,
        Ok(a) => return add("sidecar_unreachable", url.into(), format!("{base}/healthz answered {}", a.status), "start the sidecar with --admin".into()),
        Err(e) => return add("sidecar_unreachable", url.into(), format!("{base}/healthz: {e}"), "start the sidecar with --admin, check the address".into()),
    };
    let service = h["service"].as_str().unwrap_or(url).to_owned();
    if h["preview"] != json!(reg.preview.as_str()) {
        add("sidecar_preview", service.clone(), format!("the sidecar serves preview {}, not {}", h["preview"], reg.preview), format!("restart it with --preview {}", reg.preview));
    }
    if h["registry_version"].as_u64() != Some(reg.version) {
        add(
            "stale_registry",
            service.clone(),
            format!("the sidecar uses registry v{}, the current one is v{}", h["registry_version"], reg.version),
            "check that the sidecar can read the registry (file or URL) it was started with".into(),
        );
    }
    if h["signing_key_live"] == json!(false) {
        add(
            "stale_signing_key",
            service.clone(),
            format!("the sidecar at {base} signs egress tokens with {}, which the registry no longer publishes (every call it makes is refused: key_revoked)", h["signing_kid"]),
            "restart the sidecar, or replace its --key-file with the current key (a sidecar that reads the secret store follows by itself; its log says key.reload_failed when it cannot)".into(),
        );
    }
    if let Some(ms) = h["clock_unix_ms"].as_f64() {
        // Compare with the midpoint of the request, so the round trip does not count as skew.
        let offset = ms / 1000.0 - (before + after) / 2.0;
        if offset.abs() > max_offset {
            add(
                "clock_offset",
                service,
                format!("clock offset of {offset:+.0} s on the sidecar's host (tolerated: {max_offset} s; tokens allow 60 s)"),
                "sync the host clock (NTP/chrony)".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_env_files_with_exports_quotes_and_comments() {
        let env = parse_env_file("# c\nexport PREVIEW_ID=\"pr-1\"\nSERVICE_AUDIENCE='preview-pr-1-api'\n\nBAD\n");
        assert_eq!(env.get("PREVIEW_ID").map(String::as_str), Some("pr-1"));
        assert_eq!(env.get("SERVICE_AUDIENCE").map(String::as_str), Some("preview-pr-1-api"));
        assert_eq!(env.len(), 2);
    }
}
