//! `pvid doctor` against real sidecars and env files; the sidecar's `/metrics` and `/healthz`.

use super::support::{example_spec, free_port, json, pvid, stderr, stdout, upstream};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Sidecar {
    child: Child,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar(home: &Path, service: &str, clock_offset: &str) -> Sidecar {
    sidecar_with(home, service, clock_offset, &home.join("previews/pr-482/registry.json"), &[])
}

fn sidecar_with(home: &Path, service: &str, clock_offset: &str, registry: &Path, extra: &[&str]) -> Sidecar {
    let (inbound, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_pvid"))
        .arg("--home")
        .arg(home)
        .args(["proxy", "--preview", "pr-482", "--service", service, "--listen", &inbound.to_string()])
        .arg("--registry")
        .arg(registry)
        .args(["--upstream", &upstream().to_string(), "--admin", &admin.to_string()])
        .args(["--dangerous-clock-offset-for-tests", clock_offset])
        .args(extra)
        .arg("--log")
        .arg(home.join(format!("{service}.jsonl")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if TcpStream::connect(admin).is_ok() && TcpStream::connect(inbound).is_ok() {
            return Sidecar { child, inbound, admin };
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("sidecar did not start");
}

fn get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = auth.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

fn up(home: &Path) {
    let out = pvid(home, &["up", "-f", example_spec().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn write_env(home: &Path, service: &str, audience: &str) -> String {
    let f = home.join(format!("{service}.env"));
    std::fs::write(&f, format!("PREVIEW_ID=pr-482\nSERVICE_AUDIENCE={audience}\nPVID_EGRESS=127.0.0.1:9001\n")).unwrap();
    f.display().to_string()
}

#[test]
fn doctor_is_clean_when_environment_and_sidecars_agree() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let sc = sidecar(home.path(), "payments", "0");
    let env = write_env(home.path(), "api", "preview-pr-482-api");
    let admin = format!("http://{}", sc.admin);
    let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--env", &env, "--sidecar", &admin]);
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).starts_with("clean: preview pr-482"), "{}", stdout(&out));
}

#[test]
fn doctor_finds_a_planted_audience_drift() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let env = write_env(home.path(), "api", "preview-pr-481-api");
    let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--env", &env, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let f = &v["findings"][0];
    assert_eq!(v["findings"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!((f["check"].as_str(), f["service"].as_str()), (Some("audience_drift"), Some("api")));
    assert_eq!(f["problem"], "SERVICE_AUDIENCE points at pr-481 (preview-pr-481-api); the preview is pr-482");
    assert_eq!(f["fix"], "set SERVICE_AUDIENCE=preview-pr-482-api");
}

#[test]
fn doctor_finds_a_planted_clock_offset() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let sc = sidecar(home.path(), "worker", "120");
    let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--sidecar", &format!("http://{}", sc.admin), "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let f = &v["findings"][0];
    assert_eq!((f["check"].as_str(), f["service"].as_str()), (Some("clock_offset"), Some("worker")), "{v}");
    let problem = f["problem"].as_str().unwrap();
    let secs: f64 = problem.strip_prefix("clock offset of ").unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((119.0..=121.0).contains(&secs), "{problem}");
}

#[test]
fn doctor_finds_a_sidecar_on_a_stale_registry() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    // The sidecar reads a frozen copy of the registry; then the preview moves on.
    let frozen = home.path().join("frozen.json");
    std::fs::copy(home.path().join("previews/pr-482/registry.json"), &frozen).unwrap();
    let sc = sidecar_with(home.path(), "api", "0", &frozen, &[]);
    let admin = format!("http://{}", sc.admin);
    let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--sidecar", &admin]);
    assert_eq!(out.status.code(), Some(0), "same version so far: {}", stdout(&out));
    let out = pvid(home.path(), &["down", "pr-482"]);
    assert_eq!(out.status.code(), Some(0));
    let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--sidecar", &admin, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let checks: Vec<&str> = v["findings"].as_array().unwrap().iter().map(|f| f["check"].as_str().unwrap()).collect();
    assert_eq!(checks, ["preview_state", "stale_registry"], "{v}");
}

/// Parses Prometheus text with the reference Python client when the test script provides it.
#[test]
#[ignore = "needs prometheus_client: PVID_TEST_PYTHON (set by scripts/test.d/20-python-tools.sh)"]
fn sidecar_metrics_parse_as_prometheus_text_and_count_decisions() {
    let python = std::env::var("PVID_TEST_PYTHON").expect("PVID_TEST_PYTHON");
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let sc = sidecar(home.path(), "payments", "0");
    assert_eq!(get(sc.inbound, "/charge", None).0, 401);
    assert_eq!(get(sc.inbound, "/charge", Some("not.a.token")).0, 401);
    let t = stdout(&pvid(home.path(), &["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "payments"]));
    for _ in 0..3 {
        assert_eq!(get(sc.inbound, "/charge", Some(t.trim())).0, 403, "GET is not allowed, POST is");
    }
    let (status, text) = get(sc.admin, "/metrics", None);
    assert_eq!(status, 200);
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = s.name + "|" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[key] = s.value
print(json.dumps(out))
"#;
    let mut child = Command::new(python).args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let parsed = child.wait_with_output().unwrap();
    assert!(parsed.status.success(), "prometheus_client could not parse:\n{text}");
    let m: serde_json::Value = serde_json::from_slice(&parsed.stdout).unwrap();
    assert_eq!(m["pvid_proxy_decisions_total|reason=missing_token,result=deny"], 1.0, "{m}");
    assert_eq!(m["pvid_proxy_decisions_total|reason=malformed,result=deny"], 1.0);
    assert_eq!(m["pvid_proxy_decisions_total|reason=policy_denied,result=deny"], 3.0);
    assert_eq!(m["pvid_proxy_decision_duration_seconds_count|"], 5.0);
    assert_eq!(m["pvid_proxy_token_cache_lookups_total|outcome=hit"], 2.0);
    assert_eq!(m["pvid_proxy_token_cache_lookups_total|outcome=miss"], 2.0);
    let (_, health) = get(sc.admin, "/healthz", None);
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!((h["status"].as_str(), h["service"].as_str()), (Some("ok"), Some("payments")));
}

#[test]
fn doctor_finds_a_sidecar_still_signing_with_a_key_revoked_by_a_reprovision() {
    // Found by a fresh-eyes review: `pvid down` then `pvid up` of the same id gives every service
    // a new key; a sidecar that kept the one it read at start had every call refused
    // (key_revoked), while doctor said "clean". A sidecar that loads its key from the secret
    // store now follows the registry's signing key; one started with a key file that nobody
    // replaced cannot, and doctor names it.
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let key_file = key_file(home.path(), "worker");
    let registry = home.path().join("previews/pr-482/registry.json");
    let (egress, egress2) = (free_port().to_string(), free_port().to_string());
    let from_store = sidecar_with(home.path(), "worker", "0", &registry, &["--egress", &egress]);
    let from_file = sidecar_with(home.path(), "worker", "0", &registry, &["--egress", &egress2, "--key-file", key_file.to_str().unwrap()]);
    let (store_admin, file_admin) = (format!("http://{}", from_store.admin), format!("http://{}", from_file.admin));
    assert_eq!(pvid(home.path(), &["down", "pr-482"]).status.code(), Some(0));
    up(home.path());
    // Bounded wait until both sidecars have loaded the new registry (they poll its file).
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--sidecar", &store_admin, "--sidecar", &file_admin, "--json"]);
        last = json(&out);
        let checks: Vec<&str> = last["findings"].as_array().unwrap().iter().filter_map(|f| f["check"].as_str()).collect();
        if !checks.contains(&"stale_registry") && checks.len() == 1 {
            assert_eq!(out.status.code(), Some(1));
            assert_eq!(checks, ["stale_signing_key"], "{last}");
            assert_eq!(last["findings"][0]["service"], "worker");
            assert!(last["findings"][0]["problem"].as_str().unwrap().contains(&from_file.admin.to_string()), "{last}");
            assert!(last["findings"][0]["fix"].as_str().unwrap().starts_with("restart the sidecar"));
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    panic!("the sidecars never settled on the new registry: {last}");
}

/// A `--key-file` (0600) holding `service`'s private key as the local secret store has it now.
fn key_file(home: &Path, service: &str) -> std::path::PathBuf {
    use pvid_store::SecretStore as _;
    let store = pvid_store::LocalSecretStore::open(home).unwrap();
    let path = pvid_store::SecretPath::private_key(&"pr-482".parse().unwrap(), &service.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let file = home.join(format!("{service}.key"));
    std::fs::write(&file, rt.block_on(store.get(&path)).unwrap().unwrap().as_slice()).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    file
}

#[test]
fn doctor_finds_a_key_file_sidecar_left_on_a_rotated_out_key_once_its_overlap_ends() {
    // Found by a fresh-eyes review: after a rotation, a sidecar whose --key-file nobody replaced
    // kept signing with the old key; once the overlap ended every call it made was refused, and
    // /healthz still said `signing_key_live: true`, doctor "clean".
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let key_file = key_file(home.path(), "worker");
    let registry = home.path().join("previews/pr-482/registry.json");
    let egress = free_port().to_string();
    let sc = sidecar_with(home.path(), "worker", "0", &registry, &["--egress", &egress, "--key-file", key_file.to_str().unwrap()]);
    let admin = format!("http://{}", sc.admin);
    let out = pvid(home.path(), &["rotate", "pr-482", "--service", "worker", "--publish-delay", "0s", "--overlap", "1s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut last = serde_json::Value::Null;
    for _ in 0..200 {
        let out = pvid(home.path(), &["doctor", "--preview", "pr-482", "--sidecar", &admin, "--json"]);
        last = json(&out);
        let checks: Vec<&str> = last["findings"].as_array().unwrap().iter().filter_map(|f| f["check"].as_str()).collect();
        if checks == ["stale_signing_key"] {
            assert_eq!(out.status.code(), Some(1));
            let (_, health) = get(sc.admin, "/healthz", None);
            let h: serde_json::Value = serde_json::from_str(&health).unwrap();
            assert_eq!(h["signing_key_live"], false, "{h}");
            let log = std::fs::read_to_string(home.path().join("worker.jsonl")).unwrap();
            assert!(log.contains("\"event\":\"key.reload_failed\""), "the sidecar said why it kept the old key");
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("doctor never named the stale key: {last}");
}
