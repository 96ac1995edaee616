//! Secrets hygiene, end to end: key files are 0600 in 0700 folders whatever the umask; pvid
//! refuses a master key others can read; and no output of any command, error path or sidecar
//! log holds a private key (in any common encoding, even in part) or a whole token.

use super::support::{json, pvid, pvid_with, stderr, stdout};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use pvid_store::SecretStore as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every folder and file under `dir`, with its mode.
fn walk(dir: &Path, out: &mut Vec<(std::path::PathBuf, bool, u32)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let is_dir = p.is_dir();
        out.push((p.clone(), is_dir, mode(&p)));
        if is_dir {
            walk(&p, out);
        }
    }
}

fn spec_file(dir: &Path, payments_addr: &str) -> std::path::PathBuf {
    let path = dir.join("spec.yaml");
    let text = format!(
        "preview: pr-9\nservices:\n  api: {{ calls: [payments] }}\n  payments: {{ address: \"{payments_addr}\" }}\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn key_files_are_0600_in_0700_folders_even_under_a_permissive_umask() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), "127.0.0.1:9");
    // A home pvid creates, and one that exists already with loose permissions.
    let fresh = dir.path().join("fresh-home");
    let loose = dir.path().join("loose-home");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();
    for home in [&fresh, &loose] {
        let out = Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_pvid")])
            .arg("--home")
            .arg(home)
            .args(["up", "-f", spec.to_str().unwrap()])
            .env_remove("PVID_HOME")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(mode(home), 0o700, "{}", home.display());
        assert_eq!(mode(&home.join("master.key")), 0o600);
        let mut entries = Vec::new();
        walk(&home.join("secrets"), &mut entries);
        let sealed: Vec<_> = entries.iter().filter(|(p, d, _)| !d && p.extension().is_some_and(|e| e == "sealed")).collect();
        assert_eq!(sealed.len(), 2, "{entries:?}");
        for (p, is_dir, m) in &entries {
            assert_eq!(*m, if *is_dir { 0o700 } else { 0o600 }, "{}", p.display());
        }
    }
}

#[test]
fn pvid_refuses_to_start_with_a_master_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), "127.0.0.1:9");
    let home = dir.path().join("home");
    assert_eq!(pvid(&home, &["up", "-f", spec.to_str().unwrap()]).status.code(), Some(0));
    let key = home.join("master.key");
    for bad in [0o644, 0o640, 0o604, 0o660, 0o606, 0o610] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(bad)).unwrap();
        for args in [
            vec!["token", "mint", "--preview", "pr-9", "--from", "api", "--to", "payments"],
            vec!["audit", "orphans"],
            vec!["down", "pr-9"],
        ] {
            let out = pvid(&home, &args);
            assert_eq!(out.status.code(), Some(3), "mode {bad:o}, {args:?}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(err.contains(&key.display().to_string()) && err.contains(&format!("{bad:o}")), "{err}");
            assert!(stdout(&out).is_empty(), "{args:?} printed something before refusing");
        }
    }
    // Owner-only modes are fine; the refused runs changed nothing.
    for ok in [0o600, 0o400] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(ok)).unwrap();
        assert_eq!(pvid(&home, &["audit", "orphans"]).status.code(), Some(0), "mode {ok:o}");
    }
    assert_eq!(json(&pvid(&home, &["show", "pr-9", "--json"]))["state"], "active");
}

// === The leak hunt ===

/// Strings that must never appear in output: fragments of a private key in the encodings a bug
/// would print (base64, base64url, hex, at every byte alignment), and whole tokens and their
/// signatures.
#[derive(Default)]
struct Needles(Vec<(String, String)>);

impl Needles {
    /// A secret's bytes (a private scalar, a master key): none of its fragments may show up.
    fn secret(&mut self, name: &str, secret: &[u8]) {
        for off in 0..3 {
            for enc in [STANDARD.encode(&secret[off..]), URL_SAFE_NO_PAD.encode(&secret[off..])] {
                // Whole 4-character groups only: inside a longer encoding, the group holding the
                // secret's first byte (at this alignment) and the last one differ.
                let usable = enc.trim_end_matches('=').len() / 4 * 4 - 4;
                for start in (0..=usable.saturating_sub(24)).step_by(4) {
                    self.0.push((format!("{name} (base64 fragment)"), enc[start..start + 24].to_owned()));
                }
            }
        }
        for chunk in secret.windows(12).step_by(4) {
            let hex: String = chunk.iter().map(|b| format!("{b:02x}")).collect();
            self.0.push((format!("{name} (hex fragment)"), hex.to_uppercase()));
            self.0.push((format!("{name} (hex fragment)"), hex));
        }
    }

    /// The private scalar of a PKCS#8 P-256 or Ed25519 key: the first 32-byte OCTET STRING
    /// (`04 20`). The rest of the document is public (OIDs, the public point) and shows up in
    /// JWKS by design.
    fn key(&mut self, name: &str, pkcs8: &[u8]) {
        let at = pkcs8.windows(2).position(|w| w == [0x04, 0x20]).expect("a 32-byte private scalar") + 2;
        self.secret(name, &pkcs8[at..at + 32]);
    }

    fn token(&mut self, name: &str, token: &str) {
        let sig = token.rsplit('.').next().unwrap();
        assert!(sig.len() >= 40, "{name}: not a token");
        self.0.push((format!("{name} signature"), sig.to_owned()));
        self.0.push((format!("{name} (whole)"), token.to_owned()));
    }

    /// Every (output, needle) pair found: never the needle itself, only its name.
    fn find_in(&self, outputs: &[(String, String)]) -> Vec<String> {
        let mut found = Vec::new();
        for (what, text) in outputs {
            for (name, needle) in &self.0 {
                if text.contains(needle.as_str()) {
                    found.push(format!("{what} holds {name}"));
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }
}

/// A loopback HTTP/1.1 server answering `200 ok` (with `connection: close`) and recording the
/// raw head of every request it gets.
fn recording_server() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            seen.lock().unwrap().push(String::from_utf8_lossy(&buf).into_owned());
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (addr, heads)
}

/// A running `pvid proxy`; its stderr is drained into a buffer.
struct ProxyProc {
    child: Child,
    inbound: SocketAddr,
    egress: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
}

impl ProxyProc {
    fn start(home: &Path, service: &str, upstream: SocketAddr, log: &Path, egress: bool) -> ProxyProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
        cmd.arg("--home").arg(home).env_remove("PVID_HOME");
        cmd.args(["proxy", "--preview", "pr-9", "--service", service, "--listen", "127.0.0.1:0"]);
        cmd.arg("--upstream").arg(upstream.to_string()).arg("--log").arg(log);
        if egress {
            cmd.args(["--egress", "127.0.0.1:0"]);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap());
        let mut first = String::new();
        lines.read_line(&mut first).unwrap();
        // "pvid proxy: inbound ADDR[, egress ADDR]"
        let addrs: Vec<SocketAddr> =
            first.trim().split([' ', ',']).filter_map(|w| w.parse().ok()).collect();
        assert!(!addrs.is_empty(), "unexpected first line: {first:?}");
        let stderr = Arc::new(Mutex::new(first.clone()));
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = lines.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        ProxyProc { child, inbound: addrs[0], egress: addrs.get(1).copied(), stderr }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50)); // let the drain thread see EOF
        self.stderr.lock().unwrap().clone()
    }
}

/// Sends one request and returns the whole raw response.
fn http(addr: SocketAddr, head: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn no_output_of_any_command_or_sidecar_log_holds_a_private_key_or_a_whole_token() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let (callee, callee_heads) = recording_server();
    let (app, app_heads) = recording_server();
    let spec = spec_file(dir.path(), &callee.to_string());
    let mut outputs: Vec<(String, String)> = Vec::new();
    let run = |outputs: &mut Vec<(String, String)>, label: &str, args: &[&str], stdin: Option<&str>| {
        let out = pvid_with(&home, args, &[], stdin);
        outputs.push((format!("{label} stdout"), stdout(&out)));
        outputs.push((format!("{label} stderr"), stderr(&out)));
        out
    };

    assert_eq!(run(&mut outputs, "up", &["up", "-f", spec.to_str().unwrap(), "--json"], None).status.code(), Some(0));
    let mut needles = Needles::default();
    let store = pvid_store::LocalSecretStore::open(&home).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let paths = rt.block_on(store.list()).unwrap();
    assert_eq!(paths.len(), 2);
    for path in &paths {
        let bytes = rt.block_on(store.get(path)).unwrap().unwrap();
        let key = pvid_store::StoredKey::from_bytes(path, &bytes).unwrap();
        needles.key(&format!("private key of {}", path.service), &key.pkcs8);
    }
    needles.secret("master key", &std::fs::read(home.join("master.key")).unwrap());

    // `token mint` prints a token by design: its stdout is a needle, not an output.
    let mint = pvid_with(&home, &["token", "mint", "--preview", "pr-9", "--from", "api", "--to", "payments"], &[], None);
    assert_eq!(mint.status.code(), Some(0));
    let token = stdout(&mint).trim().to_owned();
    needles.token("minted token", &token);
    outputs.push(("mint stderr".into(), stderr(&mint)));

    let registry = home.join("previews/pr-9/registry.json").display().to_string();
    let (head, sig) = token.rsplit_once('.').unwrap();
    let tampered = format!("{head}.{}{}", if sig.starts_with('A') { "B" } else { "A" }, &sig[1..]);
    let wrong_aud = ["--registry", &registry, "--audience", "preview-pr-9-api", "--json"];
    let right_aud = ["--registry", &registry, "--audience", "preview-pr-9-payments"];
    run(&mut outputs, "verify ok", &[&["token", "verify", &token][..], &right_aud].concat(), None);
    run(&mut outputs, "verify json", &[&["token", "verify", &token][..], &right_aud, &["--json"]].concat(), None);
    run(&mut outputs, "verify stdin", &[&["token", "verify", "-"][..], &right_aud].concat(), Some(&token));
    run(&mut outputs, "verify tampered", &[&["token", "verify", &tampered][..], &right_aud].concat(), None);
    run(&mut outputs, "verify wrong audience", &[&["token", "verify", &token][..], &wrong_aud].concat(), None);
    run(&mut outputs, "verify garbage", &[&["token", "verify", &format!("{token}.x")][..], &right_aud].concat(), None);
    run(&mut outputs, "verify expired", &[&["token", "verify", &token][..], &right_aud, &["--now", "4102444800"]].concat(), None);
    run(&mut outputs, "mint unknown service", &["token", "mint", "--preview", "pr-9", "--from", "ghost", "--to", "payments"], None);
    run(&mut outputs, "mint too long", &["token", "mint", "--preview", "pr-9", "--from", "api", "--to", "payments", "--ttl", "9h"], None);
    for args in [&["show", "pr-9"][..], &["show", "pr-9", "--json"], &["registry", "pr-9"], &["jwks", "pr-9"], &["ls"], &["show", "pr-404"]] {
        run(&mut outputs, &args.join(" "), args, None);
    }

    // Sidecars: payments inbound in front of the recording app; api with egress towards the
    // recording callee, which sees the token the egress mints.
    let payments_log = dir.path().join("payments.log");
    let api_log = dir.path().join("api.log");
    let payments = ProxyProc::start(&home, "payments", app, &payments_log, false);
    let api = ProxyProc::start(&home, "api", app, &api_log, true);
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
    for (label, auth) in [
        ("valid", bearer(&token)),
        ("tampered", bearer(&tampered)),
        ("twice", format!("{}{}", bearer(&token), bearer(&token))),
        ("two in one", format!("Authorization: Bearer {token}, Bearer {token}\r\n")),
        ("no scheme", format!("Authorization: {token}\r\n")),
        ("oversized", bearer(&format!("{token}{}", "A".repeat(9000)))),
        ("in the query", String::new()),
    ] {
        let target = if label == "in the query" { format!("/charge?access_token={token}") } else { "/charge".into() };
        let reply = http(payments.inbound, &format!("POST {target} HTTP/1.1\r\nHost: p\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"));
        assert!(reply.starts_with(if label == "valid" { "HTTP/1.1 200" } else { "HTTP/1.1 40" }), "{label}: {reply}");
        outputs.push((format!("payments answer ({label})"), reply));
    }
    let reply = http(
        api.egress.unwrap(),
        "GET /payments/charge HTTP/1.1\r\nHost: payments\r\nAuthorization: Bearer app-secret-must-not-travel\r\nConnection: close\r\n\r\n",
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    outputs.push(("egress answer".into(), reply));
    let callee_head = callee_heads.lock().unwrap().first().cloned().expect("the callee was called");
    let minted = callee_head
        .lines()
        .find_map(|l| l.strip_prefix("authorization: Bearer ").or_else(|| l.strip_prefix("Authorization: Bearer ")))
        .expect("the egress sent a token")
        .trim()
        .to_owned();
    assert!(!callee_head.contains("app-secret-must-not-travel"), "the app's own credential travelled");
    needles.token("egress-minted token", &minted);
    for h in app_heads.lock().unwrap().iter() {
        assert!(!h.to_ascii_lowercase().contains("authorization"), "the app behind the sidecar saw a credential: {h}");
    }
    // The sidecars write their logs from a thread: let the last lines land before the kill.
    for _ in 0..400 {
        if std::fs::read_to_string(&api_log).is_ok_and(|t| t.contains("\"auth.mint\"")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    outputs.push(("payments sidecar stderr".into(), payments.stop()));
    outputs.push(("api sidecar stderr".into(), api.stop()));
    outputs.push(("payments decision log".into(), std::fs::read_to_string(&payments_log).unwrap()));
    outputs.push(("api decision log".into(), std::fs::read_to_string(&api_log).unwrap()));
    assert!(outputs.last().unwrap().1.contains("\"auth.mint\""), "the egress logged its mint");

    for args in [&["audit", "trail", "pr-9", "--json"][..], &["audit", "trail", "pr-9"], &["audit", "verify"], &["down", "pr-9"], &["audit", "orphans", "--json"]] {
        run(&mut outputs, &args.join(" "), args, None);
    }
    run(&mut outputs, "up bad spec", &["up", "-f", dir.path().join("missing.yaml").to_str().unwrap()], None);

    let leaks = needles.find_in(&outputs);
    assert!(leaks.is_empty(), "secrets in output:\n{}", leaks.join("\n"));
    // The hunt is only worth something if the needles would be found where they are.
    assert!(!needles.find_in(&[("mint stdout".into(), stdout(&mint))]).is_empty());
    assert!(!needles.find_in(&[("callee".into(), callee_head)]).is_empty());
    let pkcs8 = {
        let bytes = rt.block_on(store.get(&paths[0]));
        // Deleted by `down`; a fresh key of the same shape shows the key needles work too.
        assert!(bytes.unwrap().is_none());
        pvid_core::SigningKey::generate(pvid_core::Algorithm::ES256, "k".into()).unwrap().pkcs8().to_vec()
    };
    let mut probe = Needles::default();
    probe.key("probe", &pkcs8);
    for enc in [STANDARD.encode(&pkcs8), URL_SAFE_NO_PAD.encode(&pkcs8[1..]), pkcs8.iter().map(|b| format!("{b:02x}")).collect()] {
        assert!(!probe.find_in(&[("leak".into(), format!("x{enc}y"))]).is_empty(), "{enc}");
    }
}
