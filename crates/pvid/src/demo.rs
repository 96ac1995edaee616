//! `pvid demo`: a real four-service preview on loopback, end to end.
//!
//! It provisions the example spec into a temporary PVID_HOME, starts one echo service and one
//! `pvid proxy` process per service, sends real HTTP through the sidecars (allowed calls,
//! policy denials, a token replayed from another preview, an expired token), tears the preview
//! down, checks that calls are refused afterwards and that no credential is left, and prints
//! one row per check. It exits 0 only if every row matched its expectation.

use anyhow::{Context as _, anyhow};
use clap::Args;
use pvid_core::{Clock, MintRequest, PreviewId, PreviewSpec, ServiceName, SystemClock, service_identity};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

use crate::context;
use crate::exit::{Failure, NEGATIVE, invalid, operational};
use crate::http_util::{self, HttpClient};

const EXAMPLE_SPEC: &str = include_str!("../../../examples/preview.yaml");

/// Arguments of `pvid demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Use this spec instead of the built-in copy of examples/preview.yaml. It must have the
    /// services api, worker, webhooks and payments.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Keep the temporary PVID_HOME (state, registry, decision logs) and print its path.
    #[arg(long)]
    keep: bool,
    /// Key custody of the demo preview (default: the spec's, `sidecar`). `transit` needs
    /// `--secrets openbao`: OpenBao signs every token and no sidecar holds a private key.
    #[arg(long, value_name = "sidecar|transit")]
    key_custody: Option<pvid_core::KeyCustody>,
}

/// One checked step of the scenario.
#[derive(Debug, Serialize)]
struct Row {
    caller: String,
    callee: String,
    request: String,
    expected: String,
    got: String,
    reason: String,
    request_id: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    /// The sidecar (and log event) that must have logged this row's decision.
    #[serde(skip)]
    logged_by: Option<(String, &'static str)>,
}

struct Sidecar {
    inbound: SocketAddr,
    egress: SocketAddr,
    log: PathBuf,
    child: Child,
}

pub async fn run(a: DemoArgs) -> Result<i32, Failure> {
    let started = Instant::now();
    let (file, text) = match &a.file {
        Some(f) => (f.display().to_string(), std::fs::read_to_string(f).map_err(|e| invalid(anyhow!("{}: {e}", f.display())))?),
        None => ("examples/preview.yaml".to_owned(), EXAMPLE_SPEC.to_owned()),
    };
    let mut spec = PreviewSpec::parse(&file, &text).map_err(invalid)?;
    if let Some(custody) = a.key_custody {
        custody.check_algorithm(spec.algorithm).map_err(|e| invalid(anyhow!("--key-custody {custody}: {e}")))?;
        spec.key_custody = custody;
    }
    let custody = spec.key_custody;
    for needed in ["api", "worker", "webhooks", "payments"] {
        if !spec.services.iter().any(|s| s.name.as_str() == needed) {
            return Err(invalid(anyhow!("{file}: the demo needs a service named {needed}")));
        }
    }
    let tmp = tempfile::Builder::new().prefix("pvid-demo.").tempdir().map_err(operational)?;
    let home = tmp.path().to_path_buf();
    let mut demo = Demo::start(&home, spec, a.json).await.map_err(operational)?;
    let result = demo.scenario().await;
    demo.stop().await;
    let rows = result.map_err(operational)?;

    let passed = rows.iter().filter(|r| r.ok).count();
    let total_ms = started.elapsed().as_millis();
    if a.json {
        outln!(
            "{}",
            json!({"preview": demo.preview, "rows": rows, "passed": passed, "total": rows.len(),
                   "key_custody": custody, "secrets": context::store_args().to_args()[1],
                   "ok": passed == rows.len(), "up_ms": demo.up_ms, "total_ms": total_ms,
                   "home": if a.keep { Some(home.display().to_string()) } else { None }})
        );
    } else {
        print_table(&rows);
        outln!();
        outln!(
            "{passed}/{} rows as expected ({custody} custody, {} secrets). pvid up ({} services): {:.1} ms; whole demo: {:.1} s.",
            rows.len(),
            context::store_args().to_args()[1],
            demo.services.len(),
            demo.up_ms,
            total_ms as f64 / 1000.0
        );
        if a.keep {
            outln!("state, registry and decision logs kept in {}", home.display());
        }
    }
    if a.keep {
        let _ = tmp.keep();
    }
    Ok(if passed == rows.len() { 0 } else { NEGATIVE })
}

fn print_table(rows: &[Row]) {
    let headers = ["CALLER", "CALLEE", "REQUEST", "EXPECTED", "GOT", "REASON", "REQUEST ID", ""];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.caller.clone(),
                r.callee.clone(),
                r.request.clone(),
                r.expected.clone(),
                r.got.clone(),
                r.reason.clone(),
                r.request_id.clone(),
                if r.ok { "as expected".into() } else { format!("UNEXPECTED {}", r.note.clone().unwrap_or_default()) },
            ]
        })
        .collect();
    let mut widths = headers.map(str::len);
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c.iter()) {
            *w = (*w).max(v.len());
        }
    }
    let line = |vals: &[String]| {
        vals.iter().zip(widths.iter()).map(|(v, w)| format!("{v:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_owned()
    };
    outln!("{}", line(&headers.map(str::to_owned)));
    for c in &cells {
        outln!("{}", line(c));
    }
}

struct Demo {
    home: PathBuf,
    preview: PreviewId,
    other: PreviewId,
    services: Vec<ServiceName>,
    sidecars: BTreeMap<String, Sidecar>,
    echoes: BTreeMap<String, http_util::EchoService>,
    client: HttpClient,
    up_ms: f64,
    seq: u32,
}

impl Demo {
    async fn start(home: &Path, spec: PreviewSpec, quiet: bool) -> anyhow::Result<Demo> {
        let preview = match &spec.preview {
            Some(p) => p.clone(),
            None => "pr-482".parse().map_err(|e: String| anyhow!(e))?,
        };
        // The replayed token comes from a neighbour preview with the same services.
        let other = neighbour(&preview)?;
        let services: Vec<ServiceName> = spec.services.iter().map(|s| s.name.clone()).collect();

        let mut echoes = BTreeMap::new();
        for s in &services {
            echoes.insert(s.to_string(), http_util::start_echo(s.as_str()).await?);
        }
        // Free loopback ports for the sidecars (the spec's fixed ports may be taken here).
        let mut ports = BTreeMap::new();
        for s in &services {
            ports.insert(s.to_string(), (free_port()?, free_port()?));
        }
        let mut config = spec.config();
        for svc in &mut config.services {
            svc.address = Some(ports[svc.name.as_str()].0.to_string());
        }

        let control = context::open_or_create(home).await.map_err(|f| f.error)?;
        let t = Instant::now();
        control.provision(&preview, &config).await?;
        let up_ms = t.elapsed().as_secs_f64() * 1000.0;
        control.provision(&other, &config).await?;
        control.state().close().await;
        if !quiet {
            eprintln!("provisioned {preview} ({} services) in {up_ms:.1} ms; starting sidecars…", services.len());
        }

        let logs = home.join("logs");
        std::fs::create_dir_all(&logs)?;
        let exe = std::env::current_exe().context("cannot find the pvid executable")?;
        let mut sidecars = BTreeMap::new();
        for s in &services {
            let (inbound, egress) = ports[s.as_str()];
            let log = logs.join(format!("{s}.decisions.jsonl"));
            let stderr = std::fs::File::create(logs.join(format!("{s}.stderr")))?;
            let child = Command::new(&exe)
                .arg("--home")
                .arg(home)
                .args(context::store_args().to_args())
                .args(["proxy", "--preview", preview.as_str(), "--service", s.as_str()])
                .args(["--listen", &inbound.to_string(), "--upstream", &echoes[s.as_str()].addr.to_string()])
                .args(["--egress", &egress.to_string()])
                .arg("--log")
                .arg(&log)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .context("cannot start pvid proxy")?;
            sidecars.insert(s.to_string(), Sidecar { inbound, egress, log, child });
        }
        let mut demo = Demo {
            home: home.to_path_buf(),
            preview,
            other,
            services,
            sidecars,
            echoes,
            client: http_util::client(),
            up_ms,
            seq: 0,
        };
        demo.wait_ready().await?;
        Ok(demo)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        for (name, sc) in self.sidecars.iter_mut() {
            let mut ready = false;
            for _ in 0..200 {
                if let Some(status) = sc.child.try_wait()? {
                    let err = std::fs::read_to_string(self.home.join("logs").join(format!("{name}.stderr"))).unwrap_or_default();
                    return Err(anyhow!("sidecar {name} exited ({status}): {err}"));
                }
                let a = tokio::net::TcpStream::connect(sc.inbound).await.is_ok();
                let b = tokio::net::TcpStream::connect(sc.egress).await.is_ok();
                if a && b {
                    ready = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !ready {
                return Err(anyhow!("sidecar {name} did not start listening within 10 s"));
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        for sc in self.sidecars.values_mut() {
            let _ = sc.child.start_kill();
            let _ = sc.child.wait().await;
        }
    }

    fn request_id(&mut self) -> String {
        self.seq += 1;
        format!("demo-{:02}-{}", self.seq, pvid_core::key::random_suffix(6))
    }

    /// A call made by `caller` through its sidecar's egress listener.
    async fn via_egress(&mut self, caller: &str, callee: &str, method: &str, path: &str) -> anyhow::Result<(String, http_util::Answer)> {
        let rid = self.request_id();
        let url = format!("http://{}/{callee}{path}", self.sidecars[caller].egress);
        let before = self.hits(callee);
        let mut ans = http_util::call(&self.client, method, &url, &[("x-request-id", &rid)]).await?;
        ans.reached_upstream = self.hits(callee) > before;
        Ok((rid, ans))
    }

    /// A call straight to `callee`'s inbound sidecar with a hand-made Authorization header.
    async fn direct(&mut self, callee: &str, method: &str, path: &str, token: Option<&str>) -> anyhow::Result<(String, http_util::Answer)> {
        let rid = self.request_id();
        let url = format!("http://{}{path}", self.sidecars[callee].inbound);
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("x-request-id", rid.as_str())];
        if let Some(b) = &bearer {
            headers.push(("authorization", b.as_str()));
        }
        let before = self.hits(callee);
        let mut ans = http_util::call(&self.client, method, &url, &headers).await?;
        ans.reached_upstream = self.hits(callee) > before;
        Ok((rid, ans))
    }

    fn hits(&self, service: &str) -> u64 {
        self.echoes.get(service).map_or(0, |e| e.hits.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Mints a token with a preview's key, as of `now`.
    async fn forge(&self, preview: &PreviewId, from: &str, audience: &str, now: f64) -> anyhow::Result<String> {
        let control = context::open(&self.home).await.map_err(|f| f.error)?;
        let from: ServiceName = from.parse().map_err(|e: String| anyhow!(e))?;
        let signer = context::signer(&control, preview, &from).await.map_err(|f| f.error)?.ok_or_else(|| anyhow!("no key for {preview}/{from}"))?;
        control.state().close().await;
        Ok(pvid_proxy::mint_with(signer.as_ref(), &MintRequest { from: &from, preview, audience, ttl_s: 300, now }).await?.token)
    }

    /// Runs `pvid` as a subprocess against the demo's home; returns exit code and stdout.
    async fn pvid(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new(std::env::current_exe()?)
            .arg("--home")
            .arg(&self.home)
            .args(context::store_args().to_args())
            .args(args)
            .output()
            .await?;
        Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    async fn scenario(&mut self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        let p = self.preview.clone();
        let now = SystemClock.now();

        // Allowed calls go through both sidecars and reach the upstream without Authorization.
        for (caller, callee, method, path) in [("api", "worker", "GET", "/jobs"), ("api", "payments", "POST", "/charge")] {
            let (rid, ans) = self.via_egress(caller, callee, method, path).await?;
            rows.push(self.check_allowed(caller, callee, method, path, &rid, &ans));
        }
        // Policy denials: a caller the spec does not list, and a route nobody may call.
        for (caller, callee, method, path) in
            [("worker", "payments", "POST", "/charge"), ("api", "payments", "GET", "/admin"), ("webhooks", "payments", "POST", "/admin/refund")]
        {
            let (rid, ans) = self.via_egress(caller, callee, method, path).await?;
            rows.push(self.check_denied(caller, callee, &format!("{method} {path}"), 403, "policy_denied", &rid, &ans));
        }
        // No token at all.
        let (rid, ans) = self.direct("payments", "POST", "/charge", None).await?;
        rows.push(self.check_denied("(anonymous)", "payments", "POST /charge, no token", 401, "missing_token", &rid, &ans));
        // A token minted in the neighbour preview, replayed here.
        let other = self.other.clone();
        let t = self.forge(&other, "api", &service_identity(&other, &"payments".parse().map_err(|e: String| anyhow!(e))?), now).await?;
        let (rid, ans) = self.direct("payments", "POST", "/charge", Some(&t)).await?;
        rows.push(self.check_denied(&format!("api@{other}"), "payments", "POST /charge, token from other preview", 401, "preview_mismatch", &rid, &ans));
        // This preview's api, but the audience points at the neighbour preview.
        let t = self.forge(&p, "api", &format!("preview-{other}-payments"), now).await?;
        let (rid, ans) = self.direct("payments", "POST", "/charge", Some(&t)).await?;
        rows.push(self.check_denied("api", "payments", &format!("POST /charge, aud for {other}"), 401, "audience_mismatch", &rid, &ans));
        // An expired token (minted 20 minutes ago with a 5-minute lifetime).
        let t = self.forge(&p, "api", &service_identity(&p, &"payments".parse().map_err(|e: String| anyhow!(e))?), now - 1200.0).await?;
        let (rid, ans) = self.direct("payments", "POST", "/charge", Some(&t)).await?;
        rows.push(self.check_denied("api", "payments", "POST /charge, expired token", 401, "expired", &rid, &ans));

        // A valid token, kept to replay after teardown.
        let before_teardown = self.forge(&p, "api", &service_identity(&p, &"worker".parse().map_err(|e: String| anyhow!(e))?), now).await?;

        // Teardown, through the CLI.
        let (code, out) = self.pvid(&["down", p.as_str(), "--json"]).await?;
        rows.push(Row {
            caller: "(operator)".into(),
            callee: p.to_string(),
            request: format!("pvid down {p}"),
            expected: "exit 0".into(),
            got: format!("exit {code}"),
            reason: serde_json::from_str::<Value>(&out).ok().and_then(|v| v["outcome"].as_str().map(str::to_owned)).unwrap_or_default(),
            request_id: "-".into(),
            ok: code == 0,
            note: None,
            logged_by: None,
        });
        // After teardown: a token minted before it is refused by the callee's sidecar, and the
        // caller's egress stops minting. Both wait (bounded) for the sidecars to reload.
        let mut last = None;
        for _ in 0..100 {
            let (rid, ans) = self.direct("worker", "GET", "/jobs", Some(&before_teardown)).await?;
            let done = ans.status != 200;
            last = Some((rid, ans));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some((rid, ans)) = last {
            rows.push(self.check_denied("api", "worker", "GET /jobs, token minted before teardown", 401, "preview_torn_down", &rid, &ans));
        }
        let mut last = None;
        for _ in 0..100 {
            let (rid, ans) = self.via_egress("api", "worker", "GET", "/jobs").await?;
            // Until api's sidecar reloads, its cached token reaches worker's sidecar, which may
            // already refuse it (401): wait for the caller's own refusal.
            let done = ans.status == 503;
            last = Some((rid, ans));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some((rid, ans)) = last {
            let mut row = self.check_denied("api", "worker", "GET /jobs via egress, after teardown", 503, "preview_torn_down", &rid, &ans);
            row.logged_by = Some(("api".into(), "auth.mint"));
            rows.push(row);
        }
        let (code, _) = self.pvid(&["down", other.as_str()]).await?;
        let (audit_code, out) = self.pvid(&["audit", "orphans", "--json"]).await?;
        let found = serde_json::from_str::<Value>(&out).ok().and_then(|v| v["found"].as_array().map(Vec::len));
        rows.push(Row {
            caller: "(operator)".into(),
            callee: "secret store".into(),
            request: "pvid audit orphans".into(),
            expected: "clean".into(),
            got: if audit_code == 0 && found == Some(0) { "clean".into() } else { format!("exit {audit_code}, {found:?} found") },
            reason: format!("{} orphans", found.unwrap_or(usize::MAX)),
            request_id: "-".into(),
            ok: audit_code == 0 && found == Some(0) && code == 0,
            note: None,
            logged_by: None,
        });
        self.check_logs(&mut rows).await;
        Ok(rows)
    }

    fn check_allowed(&self, caller: &str, callee: &str, method: &str, path: &str, rid: &str, ans: &http_util::Answer) -> Row {
        let b = &ans.body;
        let mut problems = Vec::new();
        if ans.status != 200 {
            problems.push(format!("status {}", ans.status));
        }
        if b["caller"] != json!(caller) {
            problems.push(format!("upstream saw caller {}", b["caller"]));
        }
        if b["saw_authorization"] != json!(false) {
            problems.push("upstream saw Authorization".into());
        }
        if b["request_id"] != json!(rid) {
            problems.push(format!("request id became {}", b["request_id"]));
        }
        Row {
            caller: caller.into(),
            callee: callee.into(),
            request: format!("{method} {path}"),
            expected: "200 allow".into(),
            got: format!("{} {}", ans.status, if ans.status == 200 { "allow" } else { "deny" }),
            reason: b["reason"].as_str().unwrap_or("ok").into(),
            request_id: rid.into(),
            ok: problems.is_empty(),
            note: (!problems.is_empty()).then(|| problems.join("; ")),
            logged_by: Some((callee.into(), "auth.validate")),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_denied(&self, caller: &str, callee: &str, request: &str, status: u16, reason: &str, rid: &str, ans: &http_util::Answer) -> Row {
        let got_reason = ans.body["reason"].as_str().unwrap_or("").to_owned();
        let upstream_clean = !ans.reached_upstream && ans.body.get("service").is_none();
        let ok = ans.status == status && got_reason == reason && ans.body["request_id"] == json!(rid) && upstream_clean;
        Row {
            caller: caller.into(),
            callee: callee.into(),
            request: request.into(),
            expected: format!("{status} {reason}"),
            got: format!("{} {}", ans.status, if ans.status == 200 { "allow" } else { "deny" }),
            reason: got_reason,
            request_id: rid.into(),
            ok,
            note: (!ok).then(|| format!("body {}", ans.body)),
            logged_by: Some((callee.into(), "auth.validate")),
        }
    }

    /// Every request row must have exactly one decision line, at the sidecar that decided, with
    /// the same request id and reason.
    async fn check_logs(&self, rows: &mut [Row]) {
        for row in rows.iter_mut() {
            let Some((service, event)) = row.logged_by.clone() else { continue };
            let Some(sc) = self.sidecars.get(&service) else { continue };
            let mut found = Vec::new();
            for _ in 0..40 {
                let text = std::fs::read_to_string(&sc.log).unwrap_or_default();
                found = text
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v["event"] == event && v["request_id"] == json!(row.request_id))
                    .collect();
                if !found.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let logged = found.first().and_then(|v| v["reason"].as_str()).unwrap_or("(none)").to_owned();
            if found.len() != 1 || logged != row.reason {
                row.ok = false;
                row.note = Some(format!("{service} logged {} {event} line(s), reason {logged}", found.len()));
            }
        }
    }
}

/// `pr-482` → `pr-481`; otherwise `<id>-old`.
fn neighbour(p: &PreviewId) -> anyhow::Result<PreviewId> {
    let s = p.as_str();
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let n: Option<u64> = s[s.len() - digits..].parse().ok().filter(|n| *n > 0);
    let other = match n {
        Some(n) => format!("{}{}", &s[..s.len() - digits], n - 1),
        None => format!("{}-old", &s[..s.len().min(59)]),
    };
    other.parse().map_err(|e: String| anyhow!(e))
}

fn free_port() -> std::io::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    l.local_addr()
}
