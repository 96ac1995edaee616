//! `pvid render` and `pvid up --compose` as a user runs them: what is left out before `pvid up`,
//! where private keys go (never stdout; 0600 files in a 0700 folder, owned by the sidecar's
//! user: PROXY-AND-POLICY D14), and a real `pvid proxy --key-file` reading a rendered key file.

use super::support::{example_spec, json, pvid, stderr, stdout};
use base64::Engine as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};

fn spec() -> String {
    example_spec().to_str().unwrap().to_owned()
}

fn up(home: &Path, extra: &[&str]) {
    let spec = spec();
    let mut args = vec!["up", "-f", spec.as_str()];
    args.extend_from_slice(extra);
    let out = pvid(home, &args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn render_before_up_leaves_out_what_needs_keys_and_says_so() {
    let home = tempfile::tempdir().unwrap();
    let out = pvid(home.path(), &["render", "k8s", "-f", &spec()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("kind: NetworkPolicy") && !text.contains("name: pvid-registry"), "{text}");
    assert!(stderr(&out).contains("preview pr-482 is not provisioned"), "{}", stderr(&out));
    assert!(!home.path().join("state.db").exists(), "render must not create state");
    let out = pvid(home.path(), &["render", "k8s", "-f", &spec(), "--include-secrets"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("refusing to print private keys: --include-secrets needs --out DIR"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let o = dir.path().join("k").display().to_string();
    let out = pvid(home.path(), &["render", "k8s", "-f", &spec(), "--include-secrets", "--out", &o]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--include-secrets: preview pr-482 is not provisioned; run `pvid up` first"), "{}", stderr(&out));
    let out = pvid(home.path(), &["render", "compose", "-f", &spec()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("compose renders several files: give --out DIR"));
    let out = pvid(home.path(), &["render", "nomad", "-f", &spec()]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_bad_spec_for_a_target_exits_2_naming_service_and_call() {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("brace.yaml");
    std::fs::write(&file, "preview: pr-1\nservices:\n  api: { calls: [\"payments: GET /a{x\"] }\n  payments: {}\n").unwrap();
    let out = pvid(home.path(), &["render", "istio", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        "pvid: istio: services.api.calls: \"payments: GET /a{x\": Istio path patterns read `{` as a wildcard or template and cannot match it literally"
    );
}

#[test]
fn k8s_secrets_are_written_0600_and_hold_each_services_own_key() {
    let home = tempfile::tempdir().unwrap();
    up(home.path(), &[]);
    let dir = home.path().join("k8s");
    let out = pvid(home.path(), &["render", "k8s", "-f", &spec(), "--out", dir.to_str().unwrap(), "--include-secrets", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stdout(&out).contains("pkcs8") && !stderr(&out).contains("pkcs8"), "a key was printed");
    let report = json(&out);
    let secret_files: Vec<&str> =
        report["files"].as_array().unwrap().iter().filter(|f| f["secret"] == true).map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(secret_files, ["secrets.yaml"]);
    assert_eq!(mode(&dir.join("secrets.yaml")), 0o600);
    assert_eq!(mode(&dir.join("namespace.yaml")), 0o644);
    let show = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
    let text = std::fs::read_to_string(dir.join("secrets.yaml")).unwrap();
    for doc in yaml_serde::Deserializer::from_str(&text) {
        let secret: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let svc = secret["metadata"]["labels"]["pvid.dev/service"].as_str().unwrap();
        let b64 = secret["data"]["private-key.json"].as_str().unwrap();
        let key: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
        let service = show["services"].as_array().unwrap().iter().find(|s| s["service"] == svc).unwrap();
        assert_eq!(key["kid"], service["keys"][0]["kid"], "{svc}");
    }
}

#[test]
fn d14_compose_key_files_are_0600_in_a_0700_dir_owned_by_the_sidecar_user() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("compose");
    up(home.path(), &["--compose", dir.to_str().unwrap()]);
    let override_text = std::fs::read_to_string(dir.join("compose.pvid.yaml")).unwrap();
    let doc: serde_json::Value = yaml_serde::from_str(&override_text).unwrap();
    let user = doc["services"]["api-pvid"]["user"].as_str().unwrap().to_owned();
    let (uid, gid): (u32, u32) = {
        let (u, g) = user.split_once(':').unwrap();
        (u.parse().unwrap(), g.parse().unwrap())
    };
    let secrets = dir.join("secrets");
    assert_eq!(mode(&secrets), 0o700);
    let mut n = 0;
    for entry in std::fs::read_dir(&secrets).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{}: group/other bits", path.display());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", path.display());
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}: owned by the override's user", path.display());
        n += 1;
    }
    assert_eq!(n, 4);
    // The override never relies on Compose's `mode`/`uid`/`gid` (ignored outside Swarm).
    for (name, svc) in doc["services"].as_object().unwrap() {
        for secret in svc["secrets"].as_array().into_iter().flatten() {
            let keys: Vec<&String> = secret.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["source", "target"], "{name}");
        }
    }
    assert_eq!(doc["secrets"]["pvid-pr-482-api-key"]["file"], format!("{}/secrets/api.json", dir.display()));
}

/// A process killed (by PID) when the test ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `pvid proxy ARGS` and returns it with its inbound and egress addresses.
fn proxy(home: &Path, args: &[&str]) -> (Proc, SocketAddr, Option<SocketAddr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvid"))
        .arg("--home")
        .arg(home)
        .arg("proxy")
        .args(args)
        .env_remove("PVID_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let proc = Proc(child);
    // "pvid proxy: inbound ADDR[, egress ADDR]"
    let rest = line.trim().strip_prefix("pvid proxy: inbound ").unwrap_or_else(|| panic!("unexpected: {line}"));
    let (inbound, egress) = match rest.split_once(", egress ") {
        Some((i, e)) => (i.parse().unwrap(), Some(e.parse().unwrap())),
        None => (rest.parse().unwrap(), None),
    };
    (proc, inbound, egress)
}

fn status_of(addr: SocketAddr, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_sidecar_signs_with_the_rendered_compose_key_file_and_its_callee_accepts() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("compose");
    up(home.path(), &["--compose", dir.to_str().unwrap()]);
    // The payments app: answers 200 to anything.
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_addr = app.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut conn in app.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let published = pvid_control_registry(home.path());
    let (_payments, payments_in, _) =
        proxy(home.path(), &["--preview", "pr-482", "--service", "payments", "--listen", "127.0.0.1:0", "--upstream", &app_addr,
            "--registry", published.to_str().unwrap()]);
    // The api sidecar's registry names payments' real port, as the rendered one names `payments:8400`.
    let mut reg: serde_json::Value = serde_json::from_slice(&std::fs::read(&published).unwrap()).unwrap();
    reg["services"]["payments"]["address"] = serde_json::json!(payments_in.to_string());
    let api_registry = home.path().join("api-registry.json");
    std::fs::write(&api_registry, reg.to_string()).unwrap();
    let key_file = dir.join("secrets/api.json");
    let (_api, _, egress) = proxy(
        home.path(),
        &["--preview", "pr-482", "--service", "api", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9",
          "--egress", "127.0.0.1:0", "--registry", api_registry.to_str().unwrap(), "--key-file", key_file.to_str().unwrap()],
    );
    let egress = egress.unwrap();
    let post = "POST /payments/charge HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(status_of(egress, post), 200, "api's rendered key must sign tokens payments accepts");
    let admin = "POST /payments/admin HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    assert_eq!(status_of(egress, admin), 403, "the policy still applies");
    // A key file of another service is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_pvid"))
        .args(["--home", home.path().to_str().unwrap(), "proxy", "--preview", "pr-482", "--service", "api", "--listen", "127.0.0.1:0",
               "--upstream", "127.0.0.1:9", "--egress", "127.0.0.1:0", "--registry", api_registry.to_str().unwrap(), "--key-file"])
        .arg(dir.join("secrets/worker.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a key of service api"));
    // A key file others can read is refused at start, as the master key is.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pvid"))
        .args(["--home", home.path().to_str().unwrap(), "proxy", "--preview", "pr-482", "--service", "api", "--listen", "127.0.0.1:0",
               "--upstream", "127.0.0.1:9", "--egress", "127.0.0.1:0", "--registry", api_registry.to_str().unwrap(), "--key-file"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has mode 644: group or others can read the private key"), "{}", String::from_utf8_lossy(&out.stderr));
}

fn pvid_control_registry(home: &Path) -> std::path::PathBuf {
    home.join("previews/pr-482/registry.json")
}
