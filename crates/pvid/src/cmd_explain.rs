//! `pvid explain` (why was this refused, and what fixes it) and `pvid logs` (every decision one
//! request caused, across services, in order).

use anyhow::anyhow;
use clap::Args;
use pvid_core::explain::{Observation, explain};
use pvid_core::{Clock, Policy, PreviewId, ReasonCode, Registry, ServiceName, SystemClock, Verifier};
use serde_json::{Value, json};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::context;
use crate::exit::{Failure, NEGATIVE, invalid};
use crate::remote::{Remote, ServerArgs};

/// Arguments of `pvid explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The refused token, or `-` to read it from standard input. Or use --request-id.
    token: Option<String>,
    /// Explain the decision logged for this request id (searched in --log files).
    #[arg(long, conflicts_with = "token")]
    request_id: Option<String>,
    /// Decision log files or folders to search (default: PVID_HOME/logs).
    #[arg(long = "log")]
    logs: Vec<PathBuf>,
    /// The service that refused (required with a token; taken from the log line otherwise).
    #[arg(long)]
    service: Option<ServiceName>,
    /// The registry the service used (default: the preview's, from PVID_HOME or, with
    /// --server, from the control plane).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// The preview (to load its registry from PVID_HOME).
    #[arg(long)]
    preview: Option<PreviewId>,
    /// Request method, to explain a policy decision for a valid token.
    #[arg(long)]
    method: Option<String>,
    /// Request path, to explain a policy decision for a valid token.
    #[arg(long)]
    path: Option<String>,
    /// Judge the token as of this time (Unix seconds) instead of now.
    #[arg(long)]
    now: Option<f64>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `pvid logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The request id to follow.
    #[arg(long)]
    request_id: String,
    /// Decision log files or folders (default: PVID_HOME/logs).
    paths: Vec<PathBuf>,
    /// Print the matching JSON lines unchanged.
    #[arg(long)]
    json: bool,
}

/// Where the registry and the evidence trail come from: PVID_HOME's stores, or a control plane
/// (`--server`), so an explanation works the same offline and online.
enum Source {
    Local,
    Remote(Remote),
}

pub async fn explain_cmd(home: &Path, srv: &ServerArgs, a: ExplainArgs) -> Result<i32, Failure> {
    let source = match srv.server.as_deref().filter(|_| srv.is_remote()) {
        Some(base) => Source::Remote(Remote::new(base, home, srv)?),
        None => Source::Local,
    };
    let (obs, service, preview, request_id) = match (&a.token, &a.request_id) {
        (Some(_), _) => {
            let service = a.service.clone().ok_or_else(|| invalid(anyhow!("--service is required with a token")))?;
            (None, service, a.preview.clone(), None)
        }
        (None, Some(rid)) => {
            let line = find_decision(&log_paths(home, &a.logs), rid, a.service.as_ref())?;
            let service: ServiceName = line["service"].as_str().unwrap_or_default().parse().map_err(|e: String| invalid(anyhow!(e)))?;
            let preview = a.preview.clone().or_else(|| line["preview_id"].as_str().and_then(|p| p.parse().ok()));
            (Some(observation_from_line(&line)), service, preview, Some(rid.clone()))
        }
        (None, None) => return Err(invalid(anyhow!("give a token (or -) or --request-id"))),
    };
    let registry = load_registry(home, &source, a.registry.as_deref(), preview.as_ref()).await?;
    let obs = match obs {
        Some(o) => o,
        None => {
            let reg = registry.as_ref().ok_or_else(|| invalid(anyhow!("explaining a token needs --registry FILE or --preview ID")))?;
            observe_token(reg, &service, &read_token(a.token.as_deref().unwrap_or("-"))?, &a)?
        }
    };
    let mut x = explain(registry.as_ref(), &service, &obs);
    if x.cause == "preview_torn_down"
        && let Some(by) = teardown_actor(home, &source, registry.as_ref()).await
    {
        x.summary = x.summary.replacen(" was torn down", &format!(" was torn down by {by}"), 1);
    }
    if a.json {
        outln!(
            "{}",
            json!({"reason": x.reason, "cause": x.cause, "summary": x.summary, "fix": x.fix, "service": service,
                   "preview": registry.as_ref().map(|r| r.preview.to_string()), "request_id": request_id})
        );
    } else {
        outln!("reason: {}", x.reason);
        outln!("cause:  {}", x.summary);
        outln!("fix:    {}", x.fix);
    }
    Ok(0)
}

/// Who started the teardown, from the evidence trail (in PVID_HOME, or the control plane's).
async fn teardown_actor(home: &Path, source: &Source, reg: Option<&Registry>) -> Option<String> {
    let reg = reg?;
    let trail = match source {
        Source::Remote(r) => r.evidence(Some(&reg.preview)).await.ok()?,
        Source::Local => {
            if !home.join("state.db").exists() {
                return None;
            }
            let control = context::open(home).await.ok()?;
            control.state().evidence(Some(&reg.preview)).await.ok()?
        }
    };
    let entry = trail.iter().rev().find(|e| e.event == "preview.tearing_down")?;
    entry.data["actor"].as_str().map(str::to_owned)
}

fn read_token(arg: &str) -> Result<String, Failure> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).map_err(|e| invalid(anyhow!("cannot read the token from stdin: {e}")))?;
    Ok(s.trim().to_owned())
}

async fn load_registry(home: &Path, source: &Source, file: Option<&Path>, preview: Option<&PreviewId>) -> Result<Option<Registry>, Failure> {
    if let Some(f) = file {
        let bytes = std::fs::read(f).map_err(|e| invalid(anyhow!("cannot read registry {}: {e}", f.display())))?;
        return Registry::from_json(&bytes).map(Some).map_err(|e| invalid(anyhow!("{}: {e}", f.display())));
    }
    let Some(p) = preview else { return Ok(None) };
    if let Source::Remote(r) = source {
        // A control plane that cannot be asked is an error, not "no registry": the explanation
        // would otherwise be made without the facts it needs.
        return r.registry(p).await.map(Some);
    }
    if !home.join("state.db").exists() {
        return Ok(None);
    }
    let control = context::open(home).await?;
    Ok(control.registry(p).await.ok())
}

fn observe_token(reg: &Registry, service: &ServiceName, token: &str, a: &ExplainArgs) -> Result<Observation, Failure> {
    let verifier = Verifier::for_service(reg, service).map_err(|e| invalid(anyhow!("{e}")))?;
    let now = crate::cmd_token::checked_now(a.now)?;
    let mut o = Observation { at: now, method: a.method.clone(), path: a.path.clone(), ..Observation::default() };
    match verifier.verify(token, now) {
        Err(r) => {
            o.reason = Some(r.reason);
            o.detail = Some(r.detail);
            o.caller_iss = r.token.iss;
            o.aud = r.token.aud.unwrap_or_default();
            o.kid = r.token.kid;
            o.iat = r.token.iat;
            o.exp = r.token.exp;
        }
        Ok(v) => {
            o.caller = Some(v.caller.to_string());
            o.caller_iss = Some(v.issuer);
            o.aud = vec![v.audience];
            o.kid = Some(v.kid);
            o.exp = Some(v.exp);
            let method = a.method.as_deref().unwrap_or("GET");
            let path = a.path.as_deref().unwrap_or("/");
            o.reason = Some(match Policy::new(reg.policy.clone()).check(&v.caller, service, method, path) {
                Ok(_) => ReasonCode::Ok,
                Err(_) => ReasonCode::PolicyDenied,
            });
        }
    }
    Ok(o)
}

fn observation_from_line(v: &Value) -> Observation {
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    Observation {
        reason: v["reason"].as_str().and_then(ReasonCode::parse),
        detail: s("detail"),
        caller_iss: s("caller_iss"),
        caller: s("caller"),
        aud: v["actual_aud"].as_str().map(|a| a.split(',').map(str::to_owned).collect()).unwrap_or_default(),
        kid: s("kid"),
        iat: v["token_iat"].as_f64(),
        exp: v["token_exp"].as_f64(),
        method: s("method"),
        path: s("path"),
        at: v["ts"].as_str().and_then(parse_ts).unwrap_or_else(|| SystemClock.now()),
    }
}

fn parse_ts(ts: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

fn log_paths(home: &Path, given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() { vec![home.join("logs")] } else { given.to_vec() }
}

/// Every JSON line of the files (folders: their files, one level).
fn read_lines(paths: &[PathBuf]) -> Result<Vec<Value>, Failure> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| invalid(anyhow!("cannot read {}: {e}", p.display())))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .collect();
            entries.sort();
            files.extend(entries);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            return Err(invalid(anyhow!("no such log file or folder: {}", p.display())));
        }
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        out.extend(text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(Value::is_object));
    }
    Ok(out)
}

fn find_decision(paths: &[PathBuf], rid: &str, service: Option<&ServiceName>) -> Result<Value, Failure> {
    let mut lines: Vec<Value> = read_lines(paths)?
        .into_iter()
        .filter(|v| (v["event"] == "auth.validate" || v["event"] == "auth.mint") && v["request_id"] == rid)
        .filter(|v| service.is_none_or(|s| v["service"] == s.as_str()))
        .collect();
    // A denial is what needs explaining (an inbound one first); otherwise the last decision.
    lines.sort_by_key(|v| (v["result"] == "deny" || v["result"] == "error", v["event"] == "auth.validate", v["ts"].as_str().unwrap_or_default().to_owned()));
    lines.pop().ok_or_else(|| invalid(anyhow!("no decision with request id {rid} in {}", display(paths))))
}

fn display(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Orders one request's lines by time, breaking ties (timestamps are in milliseconds) by the hop
/// count along the call chain: a mint at a caller comes before the callee's validation, which
/// comes before the callee's own mints.
fn sort_causally(lines: &mut [Value]) {
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut depth = vec![0usize; lines.len()];
    for _ in 0..lines.len() {
        let mut changed = false;
        for i in 0..lines.len() {
            let want = if lines[i]["event"] == "auth.validate" {
                let caller = lines[i]["caller"].as_str().map(str::to_owned).unwrap_or_default();
                (0..lines.len())
                    .filter(|&j| lines[j]["event"] == "auth.mint" && s(&lines[j], "service") == caller && s(&lines[j], "callee") == s(&lines[i], "service"))
                    .map(|j| depth[j] + 1)
                    .max()
            } else {
                (0..lines.len())
                    .filter(|&j| lines[j]["event"] == "auth.validate" && s(&lines[j], "service") == s(&lines[i], "service"))
                    .map(|j| depth[j] + 1)
                    .max()
            };
            if let Some(d) = want.filter(|d| *d > depth[i] && *d <= lines.len()) {
                depth[i] = d;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut keyed: Vec<(String, usize, Value)> = lines.iter().zip(depth).map(|(v, d)| (s(v, "ts"), d, v.clone())).collect();
    keyed.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (slot, (_, _, v)) in lines.iter_mut().zip(keyed) {
        *slot = v;
    }
}

pub fn logs_cmd(home: &Path, a: LogsArgs) -> Result<i32, Failure> {
    let paths = log_paths(home, &a.paths);
    let mut lines: Vec<Value> = read_lines(&paths)?.into_iter().filter(|v| v["request_id"] == a.request_id.as_str()).collect();
    sort_causally(&mut lines);
    if lines.is_empty() {
        eprintln!("no line with request id {} in {}", a.request_id, display(&paths));
        return Ok(NEGATIVE);
    }
    for v in &lines {
        if a.json {
            outln!("{v}");
        } else {
            let f = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
            let who = match v["event"].as_str() {
                Some("auth.mint") => format!("{} -> {}", f("service"), f("callee")),
                _ => format!("{} -> {}", v["caller"].as_str().or(v["caller_iss"].as_str()).unwrap_or("?"), f("service")),
            };
            outln!("{}  {:<14} {:<22} {:<6} {:<18} {} {}", f("ts"), f("event"), who, f("result"), f("reason"), f("method"), f("path"));
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_with_equal_timestamps_follow_the_call_chain() {
        let ts = "2026-12-03T10:00:00.001Z";
        let mut lines = vec![
            json!({"ts": ts, "event": "auth.validate", "service": "webhooks", "caller": "worker"}),
            json!({"ts": ts, "event": "auth.mint", "service": "worker", "callee": "webhooks"}),
            json!({"ts": ts, "event": "auth.validate", "service": "worker", "caller": "api"}),
            json!({"ts": ts, "event": "auth.mint", "service": "api", "callee": "worker"}),
        ];
        sort_causally(&mut lines);
        let order: Vec<String> = lines.iter().map(|l| format!("{} {}", l["event"].as_str().unwrap(), l["service"].as_str().unwrap())).collect();
        assert_eq!(order, ["auth.mint api", "auth.validate worker", "auth.mint worker", "auth.validate webhooks"]);
    }
}
