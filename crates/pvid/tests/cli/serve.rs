//! The control plane as real processes: `pvid serve` replicas on one PostgreSQL (or SQLite), the
//! CLI talking to them, sidecars watching them, replicas killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sqlx::Connection;

use super::support::{example_spec, json, pvid_with, stderr, stdout};

/// Longest any bounded wait in these tests may take before it fails the test.
const PATIENCE: Duration = Duration::from_secs(30);

/// A fresh database on the test PostgreSQL server; its URL.
async fn fresh_pg_database() -> String {
    let admin = std::env::var("PVID_TEST_PG_URL").expect("needs postgres: set PVID_TEST_PG_URL (scripts/test starts one)");
    let name = format!("t_{}", pvid_store::evidence::hex(&pvid_core::key::random_bytes(8)));
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    format!("{}/{name}", admin.rsplit_once('/').unwrap().0)
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped.
struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    fn spawn(home: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let stdout = home.join(format!("{name}.out"));
        let stderr = home.join(format!("{name}.err"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
        cmd.arg("--home").arg(home).args(args).env_remove("PVID_HOME").env_remove("PVID_SERVER").env_remove("PVID_DATABASE_URL");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap());
        Proc { child: cmd.spawn().expect("spawn pvid"), stderr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `pvid serve` replica.
struct Replica {
    proc: Proc,
    url: String,
}

fn serve(home: &Path, name: &str, database: Option<&str>) -> Replica {
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--replica", name, "--reap-interval", "1s"];
    if let Some(db) = database {
        args.extend(["--database", db]);
    }
    let mut proc = Proc::spawn(home, name, &args, &[]);
    let url = wait_for(&format!("replica {name} to listen"), || {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("replica {name} exited {status}: {}", proc.stderr_text());
        }
        let text = proc.stderr_text();
        let at = text.find("listening on http://")?;
        Some(text[at + "listening on ".len()..].split_whitespace().next()?.to_owned())
    });
    Replica { proc, url }
}

/// A sidecar in front of `upstream`, watching `registry` (URLs, comma-separated).
fn sidecar(home: &Path, registry: &str, upstream: std::net::SocketAddr, extra: &[&str]) -> (Proc, String, PathBuf) {
    let log = home.join("sidecar.jsonl");
    let up = upstream.to_string();
    let log_s = log.display().to_string();
    let mut args = vec![
        "proxy", "--preview", "pr-482", "--service", "payments", "--listen", "127.0.0.1:0", "--upstream", &up,
        "--registry", registry, "--log", &log_s,
    ];
    args.extend_from_slice(extra);
    let mut proc = Proc::spawn(home, "sidecar", &args, &[]);
    let addr = wait_for("the sidecar to listen", || {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("sidecar exited {status}: {}", proc.stderr_text());
        }
        let text = proc.stderr_text();
        let at = text.find("inbound ")?;
        Some(text[at + "inbound ".len()..].split([',', '\n']).next()?.trim().to_owned())
    });
    (proc, addr, log)
}

/// A loopback upstream answering 200 to everything.
async fn upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}

/// One HTTP call: status and JSON body (or null).
async fn http(method: &str, url: &str, bearer: Option<&str>, body: &str) -> (u16, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client.request(req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn admin_token(home: &Path) -> String {
    std::fs::read_to_string(home.join("admin.token")).unwrap().trim().to_owned()
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn mint(home: &Path, database: &str) -> String {
    let out = pvid_with(home, &["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "payments"], &[("PVID_DATABASE_URL", database)], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out).trim().to_owned()
}

fn cli(home: &Path, server: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["--server", server];
    all.extend_from_slice(args);
    pvid_with(home, &all, &[], None)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgres: PVID_TEST_PG_URL"]
async fn a_preview_provisioned_through_one_replica_is_torn_down_through_the_other() {
    let home = tempfile::tempdir().unwrap();
    let db = fresh_pg_database().await;
    let a = serve(home.path(), "a", Some(&db));
    let b = serve(home.path(), "b", Some(&db));
    let spec = example_spec();
    let up = cli(home.path(), &a.url, &["up", "-f", spec.to_str().unwrap(), "--json"]);
    assert_eq!(up.status.code(), Some(0), "{}", stderr(&up));
    assert_eq!(json(&up)["outcome"], "created");
    let show = cli(home.path(), &b.url, &["show", "pr-482", "--json"]);
    assert_eq!(json(&show)["state"], "active");
    // The CLI prints the same through a control plane as from the store itself.
    let remote_ls = stdout(&cli(home.path(), &b.url, &["ls"]));
    let local_ls = stdout(&pvid_with(home.path(), &["ls"], &[("PVID_DATABASE_URL", &db)], None));
    assert_eq!(remote_ls, local_ls);
    let down = cli(home.path(), &b.url, &["down", "pr-482", "--json"]);
    assert_eq!(down.status.code(), Some(0), "{}", stderr(&down));
    assert_eq!(json(&down)["outcome"], "torn_down");
    let reg = json(&cli(home.path(), &a.url, &["registry", "pr-482"]));
    assert_eq!(reg["state"], "torn_down");
    let orphans = cli(home.path(), &a.url, &["audit", "orphans"]);
    assert_eq!(orphans.status.code(), Some(0), "{}", stdout(&orphans));
    assert_eq!(cli(home.path(), &b.url, &["audit", "verify"]).status.code(), Some(0));
    // No token: refused, nothing changed.
    let (status, body) = http("DELETE", &format!("{}/v1/previews/pr-482", a.url), Some("pvid_adm_wrong"), "").await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthorized");
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgres: PVID_TEST_PG_URL"]
async fn fifty_concurrent_requests_for_ten_previews_over_two_replicas_end_consistent() {
    let home = tempfile::tempdir().unwrap();
    let db = fresh_pg_database().await;
    let a = serve(home.path(), "a", Some(&db));
    let b = serve(home.path(), "b", Some(&db));
    let token = admin_token(home.path());
    let spec = std::fs::read_to_string(example_spec()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50usize {
        let base = if i % 2 == 0 { a.url.clone() } else { b.url.clone() };
        let (token, spec) = (token.clone(), spec.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("pr-{}", i % 10);
            if i % 3 == 2 {
                http("DELETE", &format!("{base}/v1/previews/{id}"), Some(&token), "").await.0
            } else {
                http("POST", &format!("{base}/v1/previews?preview={id}"), Some(&token), &spec).await.0
            }
        }));
    }
    for t in tasks {
        let status = t.await.unwrap();
        assert!([200, 201, 404].contains(&status), "status {status}");
    }
    for i in 0..10 {
        let (status, show) = http("GET", &format!("{}/v1/previews/pr-{i}", b.url), Some(&token), "").await;
        if status == 404 {
            continue;
        }
        let live = show["keys"].as_array().unwrap().iter().filter(|k| k["state"] != "revoked").count();
        match show["preview"]["state"].as_str().unwrap() {
            "active" => assert_eq!(live, 4, "pr-{i}: {show}"),
            "torn_down" => assert_eq!(live, 0, "pr-{i}: {show}"),
            other => panic!("pr-{i} ended {other}"),
        }
    }
    let orphans = cli(home.path(), &a.url, &["audit", "orphans"]);
    assert_eq!(orphans.status.code(), Some(0), "{}", stdout(&orphans));
    assert_eq!(stdout(&orphans).trim(), "clean: no orphaned secret or key");
    let verify = cli(home.path(), &b.url, &["audit", "verify"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stdout(&verify));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs postgres: PVID_TEST_PG_URL"]
async fn a_sidecar_keeps_serving_when_a_replica_dies_and_refuses_after_a_teardown_through_the_other() {
    let home = tempfile::tempdir().unwrap();
    let db = fresh_pg_database().await;
    let mut a = serve(home.path(), "a", Some(&db));
    let b = serve(home.path(), "b", Some(&db));
    let spec = example_spec();
    assert_eq!(cli(home.path(), &a.url, &["up", "-f", spec.to_str().unwrap()]).status.code(), Some(0));
    let up = upstream().await;
    let (_sidecar, addr, log) = sidecar(home.path(), &format!("{},{}", a.url, b.url), up, &[]);
    let token = mint(home.path(), &db);
    let url = format!("http://{addr}/charge");
    assert_eq!(http("POST", &url, Some(&token), "").await.0, 200);

    a.proc.kill();
    // Still serving from the last good registry while it fails over.
    assert_eq!(http("POST", &url, Some(&token), "").await.0, 200);
    let down = json(&cli(home.path(), &b.url, &["down", "pr-482", "--json"]));
    assert_eq!(down["outcome"], "torn_down");
    let (_, reg) = http("GET", &format!("{}/v1/previews/pr-482/registry.json", b.url), None, "").await;
    let final_version = reg["version"].as_u64().unwrap();
    // The sidecar acknowledges that version (its log line), then refuses the old token.
    wait_for("the sidecar to load the final registry", || {
        log_lines(&log)
            .iter()
            .any(|l| l["event"] == "registry.loaded" && l["registry_version"].as_u64() >= Some(final_version))
            .then_some(())
    });
    let (status, body) = http("POST", &url, Some(&token), "").await;
    assert_eq!(status, 401, "{body}");
    assert!(["preview_torn_down", "key_revoked"].contains(&body["reason"].as_str().unwrap()), "{body}");
    let lines = log_lines(&log);
    assert!(lines.iter().any(|l| l["event"] == "registry.fetch_failed" && l["path"] == a.url.as_str()), "no failover logged");
    assert!(lines.iter().any(|l| l["event"] == "registry.loaded" && l["path"] == b.url.as_str()), "nothing loaded from b");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_fails_closed_once_no_replica_confirmed_the_registry_for_the_bound() {
    let home = tempfile::tempdir().unwrap();
    let mut a = serve(home.path(), "a", None);
    let spec = example_spec();
    assert_eq!(cli(home.path(), &a.url, &["up", "-f", spec.to_str().unwrap()]).status.code(), Some(0));
    let up = upstream().await;
    let (_sidecar, addr, log) = sidecar(home.path(), &a.url, up, &["--registry-max-stale", "1s"]);
    let db = home.path().join("state.db").display().to_string();
    let token = mint(home.path(), &db);
    let url = format!("http://{addr}/charge");
    assert_eq!(http("POST", &url, Some(&token), "").await.0, 200);
    a.proc.kill();
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let (status, body) = http("POST", &url, Some(&token), "").await;
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "the sidecar never failed closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["reason"], "registry_unavailable");
    // The log is written by the sidecar's writer thread, shortly after the response.
    wait_for("the registry_unavailable decision line", || {
        log_lines(&log).iter().any(|l| l["reason"] == "registry_unavailable" && l["event"] == "auth.validate").then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_unknown_kids_asks_the_control_plane_for_one_refetch() {
    let home = tempfile::tempdir().unwrap();
    let a = serve(home.path(), "a", None);
    let spec = example_spec();
    assert_eq!(cli(home.path(), &a.url, &["up", "-f", spec.to_str().unwrap()]).status.code(), Some(0));
    let up = upstream().await;
    let (_sidecar, addr, log) = sidecar(home.path(), &a.url, up, &[]);
    let db = home.path().join("state.db").display().to_string();
    let token = mint(home.path(), &db);
    // The same token with a kid nobody published (the signature is never reached).
    let mut parts = token.split('.');
    let (_, payload, sig) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let header = pvid_core::jose::b64_encode(br#"{"alg":"ES256","typ":"JWT","kid":"api-9-zzz"}"#);
    let forged = format!("{header}.{payload}.{sig}");
    let url = format!("http://{addr}/charge");
    for _ in 0..50 {
        let (status, body) = http("POST", &url, Some(&forged), "").await;
        assert_eq!((status, body["reason"].as_str()), (401, Some("unknown_kid")));
    }
    wait_for("the refetch", || log_lines(&log).iter().any(|l| l["event"] == "registry.refetch").then_some(()));
    for _ in 0..50 {
        assert_eq!(http("POST", &url, Some(&forged), "").await.0, 401);
    }
    let lines = wait_for("100 decision lines", || {
        let lines = log_lines(&log);
        (lines.iter().filter(|l| l["reason"] == "unknown_kid").count() >= 100).then_some(lines)
    });
    assert_eq!(lines.iter().filter(|l| l["reason"] == "unknown_kid").count(), 100);
    assert_eq!(lines.iter().filter(|l| l["event"] == "registry.refetch").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_works_online_from_the_control_plane_with_no_local_state() {
    let server_home = tempfile::tempdir().unwrap();
    let a = serve(server_home.path(), "a", None);
    let token_file = server_home.path().join("admin.token");
    let spec = example_spec();
    // The CLI's own home is empty: everything explain knows comes from the control plane.
    let client_home = tempfile::tempdir().unwrap();
    let url = a.url.clone();
    let online = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str(), "--token-file", token_file.to_str().unwrap()];
        all.extend_from_slice(args);
        pvid_with(client_home.path(), &all, &[], None)
    };
    assert_eq!(online(&["up", "-f", spec.to_str().unwrap()]).status.code(), Some(0));
    let mint = pvid_with(server_home.path(), &["token", "mint", "--preview", "pr-482", "--from", "worker", "--to", "payments"], &[], None);
    assert_eq!(mint.status.code(), Some(0), "{}", stderr(&mint));
    let token = stdout(&mint).trim().to_owned();
    let explain = |token: &str| {
        let out = online(&["explain", token, "--service", "payments", "--preview", "pr-482", "--method", "POST", "--path", "/charge", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json(&out)
    };
    // Live preview: worker may not charge; the rule that would allow it is named.
    let x = explain(&token);
    assert_eq!(x["reason"], "policy_denied", "{x}");
    assert!(x["fix"].as_str().unwrap().contains("payments: POST /charge"), "{x}");
    assert_eq!(online(&["down", "pr-482"]).status.code(), Some(0));
    // Torn down through the API: when and by whom, from the control plane's evidence trail.
    let x = explain(&token);
    assert_eq!(x["reason"], "preview_torn_down", "{x}");
    assert!(x["summary"].as_str().unwrap().starts_with("preview pr-482 was torn down by "), "{x}");
    // A control plane that does not answer is an error, not an explanation without facts.
    drop(a);
    let out = online(&["explain", &token, "--service", "payments", "--preview", "pr-482"]);
    assert_ne!(out.status.code(), Some(0));
}
