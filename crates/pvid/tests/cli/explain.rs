//! `pvid explain` on refusals captured from a real sidecar: one test per cause, each asserting
//! the cause and the suggested fix. And `pvid logs` following one request across services.

use super::support::{example_spec, free_port, json, pvid, stderr, stdout, upstream};
use pvid_core::{SigningKey, sign_compact};
use pvid_store::SecretStore as _;
use serde_json::{Value, json};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sidecar(home: &Path, service: &str, registry: Option<&Path>) -> Sidecar {
    start_sidecar_with(home, service, registry, &[])
}

fn start_sidecar_with(home: &Path, service: &str, registry: Option<&Path>, extra: &[&str]) -> Sidecar {
    let addr = free_port();
    let log = home.join("logs").join(format!("{service}.jsonl"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
    // One worker thread: the single-event-loop runtime is exercised here, the pool elsewhere.
    cmd.arg("--home").arg(home).args(["proxy", "--preview", "pr-482", "--service", service, "--threads", "1"]);
    cmd.args(["--listen", &addr.to_string(), "--upstream", &upstream().to_string()]).arg("--log").arg(&log);
    if let Some(r) = registry {
        cmd.arg("--registry").arg(r);
    }
    cmd.args(extra);
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            return Sidecar { child, addr };
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("sidecar did not start");
}

/// Sends one request; returns (status, body).
fn send(addr: SocketAddr, method: &str, path: &str, token: &str, rid: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nx-request-id: {rid}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

struct Setup {
    home: tempfile::TempDir,
    api: SigningKey,
}

async fn setup() -> Setup {
    let home = tempfile::tempdir().unwrap();
    let out = pvid(home.path(), &["up", "-f", example_spec().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let secrets = pvid_store::LocalSecretStore::open(home.path()).unwrap();
    let path = pvid_store::SecretPath::private_key(&"pr-482".parse().unwrap(), &"api".parse().unwrap());
    let bytes = secrets.get(&path).await.unwrap().unwrap();
    let api = pvid_store::StoredKey::from_bytes(&path, &bytes).unwrap().to_signing_key(&path).unwrap();
    Setup { home, api }
}

fn token(key: &SigningKey, aud: &str, iat: f64, iss: &str) -> String {
    let h = json!({"alg": "ES256", "typ": "JWT", "kid": key.kid()});
    sign_compact(key, &h, &json!({"iss": iss, "sub": "api", "aud": aud, "iat": iat, "nbf": iat.min(now()), "exp": iat + 300.0})).unwrap()
}

/// Waits (bounded) until a log under `home/logs` holds request `rid`: sidecars write their log
/// from a thread, shortly after the response.
fn wait_logged(home: &Path, rid: &str) {
    let needle = format!("\"request_id\":\"{rid}\"");
    for _ in 0..400 {
        let logged = std::fs::read_dir(home.join("logs")).into_iter().flatten().flatten().any(|e| {
            std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(&needle))
        });
        if logged {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("no log line for {rid}");
}

fn explain(home: &Path, rid: &str) -> Value {
    wait_logged(home, rid);
    let out = pvid(home, &["explain", "--request-id", rid, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)
}

fn registry_file(home: &Path) -> PathBuf {
    home.join("previews/pr-482/registry.json")
}

#[tokio::test]
async fn explains_an_audience_for_another_preview() {
    let s = setup().await;
    let sc = start_sidecar(s.home.path(), "payments", None);
    let t = token(&s.api, "preview-pr-481-payments", now(), "preview-pr-482-api");
    let (status, body) = send(sc.addr, "POST", "/charge", &t, "rid-aud");
    assert_eq!((status, body["reason"].as_str()), (401, Some("audience_mismatch")));
    let x = explain(s.home.path(), "rid-aud");
    assert_eq!(x["cause"], "audience_for_other_preview");
    assert_eq!(x["summary"], "SERVICE_AUDIENCE of api points at pr-481; the preview is pr-482 (token aud preview-pr-481-payments)");
    assert!(x["fix"].as_str().unwrap().starts_with("set SERVICE_AUDIENCE=preview-pr-482-payments for api"), "{x}");
}

#[tokio::test]
async fn explains_clock_skew_with_its_size() {
    let s = setup().await;
    let sc = start_sidecar(s.home.path(), "payments", None);
    let t = token(&s.api, "preview-pr-482-payments", now() + 600.0, "preview-pr-482-api");
    let (status, body) = send(sc.addr, "POST", "/charge", &t, "rid-skew");
    assert_eq!((status, body["reason"].as_str()), (401, Some("issued_in_future")));
    let x = explain(s.home.path(), "rid-skew");
    assert_eq!(x["cause"], "clock_skew");
    let summary = x["summary"].as_str().unwrap();
    // 600 s ahead, give or take the time between minting and the sidecar's decision.
    let skew: f64 = summary.strip_prefix("clock skew of ").unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((590.0..=600.0).contains(&skew), "{summary}");
    assert!(x["fix"].as_str().unwrap().starts_with("sync the clocks"), "{x}");
}

#[tokio::test]
async fn explains_a_stale_key_with_when_it_was_revoked() {
    let s = setup().await;
    // The registry the sidecar reads says api's key was revoked (as after a rotation).
    let mut doc: Value = serde_json::from_slice(&std::fs::read(registry_file(s.home.path())).unwrap()).unwrap();
    let kid = s.api.kid().to_owned();
    doc["services"]["api"]["kids"] = json!([]);
    doc["services"]["api"].as_object_mut().unwrap().remove("signing_kid");
    let keys: Vec<Value> = doc["jwks"]["keys"].as_array().unwrap().iter().filter(|k| k["kid"] != kid.as_str()).cloned().collect();
    doc["jwks"]["keys"] = json!(keys);
    doc["revoked"] = json!([{"kid": kid, "service": "api", "revoked_at": 1796299200, "reason": "rotation"}]);
    let rotated = s.home.path().join("rotated.json");
    std::fs::write(&rotated, doc.to_string()).unwrap();
    let sc = start_sidecar(s.home.path(), "payments", Some(&rotated));
    let t = token(&s.api, "preview-pr-482-payments", now(), "preview-pr-482-api");
    let (status, body) = send(sc.addr, "POST", "/charge", &t, "rid-stale");
    assert_eq!((status, body["reason"].as_str()), (401, Some("key_revoked")));
    wait_logged(s.home.path(), "rid-stale");
    let out = pvid(s.home.path(), &["explain", "--request-id", "rid-stale", "--registry", rotated.to_str().unwrap(), "--json"]);
    let x = json(&out);
    assert_eq!(x["cause"], "stale_key");
    assert_eq!(x["summary"], format!("api signed with stale key {kid} (revoked at 2026-12-03T12:00:00Z for rotation)"));
    assert!(x["fix"].as_str().unwrap().starts_with("restart api's sidecar"), "{x}");
}

#[tokio::test]
async fn explains_a_misissued_token_from_a_service_not_in_the_preview() {
    let s = setup().await;
    let sc = start_sidecar(s.home.path(), "payments", None);
    let t = token(&s.api, "preview-pr-482-payments", now(), "preview-pr-482-billing");
    let (status, body) = send(sc.addr, "POST", "/charge", &t, "rid-iss");
    assert_eq!((status, body["reason"].as_str()), (401, Some("issuer_unknown")));
    let x = explain(s.home.path(), "rid-iss");
    assert_eq!(x["cause"], "misrouted_or_misissued");
    assert!(x["summary"].as_str().unwrap().contains("iss preview-pr-482-billing is not a service of pr-482"), "{x}");
}

#[tokio::test]
async fn explains_a_torn_down_preview_with_when_and_by_whom() {
    let s = setup().await;
    let sc = start_sidecar(s.home.path(), "payments", None);
    let t = token(&s.api, "preview-pr-482-payments", now(), "preview-pr-482-api");
    assert_eq!(send(sc.addr, "POST", "/charge", &t, "rid-before").0, 200);
    let out = super::support::pvid_with(s.home.path(), &["down", "pr-482"], &[("USER", "alice")], None);
    assert_eq!(out.status.code(), Some(0));
    let mut last = (0, Value::Null);
    for i in 0..100 {
        last = send(sc.addr, "POST", "/charge", &t, &format!("rid-after-{i}"));
        if last.0 != 200 {
            let x = explain(s.home.path(), &format!("rid-after-{i}"));
            assert_eq!(x["cause"], "preview_torn_down");
            let summary = x["summary"].as_str().unwrap();
            assert!(summary.starts_with("preview pr-482 was torn down by cli:alice at 20"), "{summary}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("sidecar never refused after teardown: {last:?}");
}

#[tokio::test]
async fn explains_a_policy_denial_with_the_rule_that_would_allow_it() {
    let s = setup().await;
    let sc = start_sidecar(s.home.path(), "payments", None);
    let t = token(&s.api, "preview-pr-482-payments", now(), "preview-pr-482-api");
    let (status, body) = send(sc.addr, "DELETE", "/charge/7", &t, "rid-policy");
    assert_eq!((status, body["reason"].as_str()), (403, Some("policy_denied")));
    let x = explain(s.home.path(), "rid-policy");
    assert_eq!(x["cause"], "policy");
    assert_eq!(x["summary"], "api may call payments only as: api -> payments: POST /charge; the request was DELETE /charge/7");
    assert_eq!(x["fix"], "if intended, add to the spec: services.api.calls: [\"payments: DELETE /charge/7\"] and provision again: pvid down pr-482, then pvid up (an active preview keeps the spec it was provisioned with)");
}

#[tokio::test]
async fn explains_a_token_given_directly_without_any_log() {
    let s = setup().await;
    let t = token(&s.api, "preview-pr-481-payments", now(), "preview-pr-482-api");
    let out = pvid(s.home.path(), &["explain", &t, "--service", "payments", "--preview", "pr-482", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["cause"], "audience_for_other_preview");
    // A clock that is not a time is refused as `pvid token verify` refuses it, not explained.
    for bad in ["nan", "inf", "1e300"] {
        let out = pvid(s.home.path(), &["explain", &t, "--service", "payments", "--preview", "pr-482", "--now", bad]);
        assert_eq!(out.status.code(), Some(2), "--now {bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("--now must be a Unix time"), "{}", stderr(&out));
    }
}

/// An upstream for `worker` that, for every request, calls webhooks through worker's egress
/// sidecar with the same request id, then answers 200.
fn relaying_upstream(egress: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let rid = req
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("x-request-id:").map(|v| v.trim().to_owned()))
                .unwrap_or_default();
            if let Ok(mut e) = TcpStream::connect(egress) {
                let _ = write!(e, "POST /webhooks/hook HTTP/1.1\r\nhost: x\r\nx-request-id: {rid}\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
                let mut sink = String::new();
                let _ = e.read_to_string(&mut sink);
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    addr
}

#[tokio::test]
async fn logs_follow_one_request_across_three_services_in_order() {
    let s = setup().await;
    let home = s.home.path();
    let spawn = |service: &str, listen: SocketAddr, upstream: SocketAddr, egress: SocketAddr| {
        let log = home.join("logs").join(format!("{service}.jsonl"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_pvid"))
            .arg("--home")
            .arg(home)
            .args(["proxy", "--preview", "pr-482", "--service", service, "--listen", &listen.to_string()])
            .args(["--upstream", &upstream.to_string(), "--egress", &egress.to_string()])
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if TcpStream::connect(listen).is_ok() && TcpStream::connect(egress).is_ok() {
                return Sidecar { child, addr: listen };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("sidecar {service} did not start");
    };
    // The sidecars must listen where the registry says, so take the addresses from it.
    let reg: Value = serde_json::from_slice(&std::fs::read(registry_file(home)).unwrap()).unwrap();
    let at = |svc: &str| -> SocketAddr { reg["services"][svc]["address"].as_str().unwrap().parse().unwrap() };
    let (api_egress, worker_egress) = (free_port(), free_port());
    let _webhooks = spawn("webhooks", at("webhooks"), upstream(), free_port());
    let _worker = spawn("worker", at("worker"), relaying_upstream(worker_egress), worker_egress);
    let _api = spawn("api", at("api"), upstream(), api_egress);

    let mut c = TcpStream::connect(api_egress).unwrap();
    write!(c, "GET /worker/jobs HTTP/1.1\r\nhost: x\r\nx-request-id: trace-3\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");

    let mut lines = Vec::new();
    for _ in 0..40 {
        let o = pvid(home, &["logs", "--request-id", "trace-3", "--json"]);
        lines = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).collect();
        if lines.iter().filter(|l| l["event"] == "auth.validate").count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let seen: Vec<String> = lines.iter().map(|l| format!("{} {} {}", l["event"].as_str().unwrap(), l["service"].as_str().unwrap(), l["reason"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        ["auth.mint api minted", "auth.validate worker ok", "auth.mint worker minted", "auth.validate webhooks ok"],
        "{lines:?}"
    );
    let human = String::from_utf8_lossy(&pvid(home, &["logs", "--request-id", "trace-3"]).stdout).to_string();
    assert_eq!(human.lines().count(), 4, "{human}");
    assert!(human.lines().nth(1).unwrap().contains("api -> worker"), "{human}");
}

#[tokio::test]
async fn decisions_go_to_a_hash_chained_evidence_file_that_audit_verify_checks() {
    let s = setup().await;
    let evidence = s.home.path().join("payments.evidence.jsonl");
    let ok = token(&s.api, "preview-pr-482-payments", now(), "preview-pr-482-api");
    let stale = token(&s.api, "preview-pr-482-payments", now() - 7200.0, "preview-pr-482-api");
    {
        let sc = start_sidecar_with(s.home.path(), "payments", None, &["--evidence", evidence.to_str().unwrap()]);
        assert_eq!(send(sc.addr, "POST", "/charge", &ok, "rid-ev-1").0, 200);
        assert_eq!(send(sc.addr, "POST", "/charge", &stale, "rid-ev-2").0, 401);
    }
    // A restarted sidecar continues the chain it finds.
    {
        let sc = start_sidecar_with(s.home.path(), "payments", None, &["--evidence", evidence.to_str().unwrap()]);
        assert_eq!(send(sc.addr, "GET", "/admin", &ok, "rid-ev-3").0, 403);
    }
    let text = std::fs::read_to_string(&evidence).unwrap();
    let entries: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seen: Vec<(i64, &str, &str)> = entries
        .iter()
        .map(|e| (e["seq"].as_i64().unwrap(), e["data"]["request_id"].as_str().unwrap(), e["data"]["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(seen, [(1, "rid-ev-1", "ok"), (2, "rid-ev-2", "expired"), (3, "rid-ev-3", "policy_denied")]);
    assert!(!text.contains(&ok) && !text.contains(ok.rsplit('.').next().unwrap()), "no token in the evidence");
    let verify = |file: &Path| pvid(s.home.path(), &["audit", "verify", "--file", file.to_str().unwrap(), "--json"]);
    let out = verify(&evidence);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["entries"], 3);
    // Edited: the denial turned into an allow is named.
    let edited = s.home.path().join("edited.jsonl");
    std::fs::write(&edited, text.replacen("\"reason\":\"expired\"", "\"reason\":\"ok\"", 1)).unwrap();
    let out = verify(&edited);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["first_bad_seq"], 2);
    // Deleted: the entry after the hole is named.
    let deleted = s.home.path().join("deleted.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&deleted, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
    let out = verify(&deleted);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["first_bad_seq"], 3);
    // A sidecar refuses to append to a broken chain.
    let out = pvid(s.home.path(), &["proxy", "--preview", "pr-482", "--service", "payments", "--listen", "127.0.0.1:0",
        "--upstream", "127.0.0.1:9", "--evidence", edited.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("chain broken at entry 2"), "{}", stderr(&out));
    // The lifecycle trail's export bundle verifies the same way.
    let bundle = s.home.path().join("bundle.jsonl");
    assert_eq!(pvid(s.home.path(), &["audit", "export", "pr-482", "--out", bundle.to_str().unwrap()]).status.code(), Some(0));
    let out = verify(&bundle);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json(&out)["kind"], "bundle");
    // A deleted entry and an edited head are caught too (found by a fresh-eyes review).
    let text = std::fs::read_to_string(&bundle).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = s.home.path().join("cut.jsonl");
    std::fs::write(&cut, format!("{}\n{}\n", lines[..2].join("\n"), lines[3..].join("\n"))).unwrap();
    let out = verify(&cut);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let relabelled = s.home.path().join("relabelled.jsonl");
    std::fs::write(&relabelled, text.replace("\"entries\":", "\"entries\":1")).unwrap();
    assert_eq!(verify(&relabelled).status.code(), Some(1));
}
