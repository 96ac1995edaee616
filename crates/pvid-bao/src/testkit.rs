//! Test helpers for a real OpenBao (feature `test-util`; never in the binary).
//!
//! - [`Sandbox`]: on the shared dev server of a test run (`BAO_ADDR`,
//!   `PVID_TEST_BAO_ROOT_TOKEN`, started by `scripts/test.d/20-openbao.sh`), a KV v2 mount and a
//!   Transit mount of its own, the shipped policy (`deploy/openbao/pvid-policy.hcl`) rewritten
//!   for those mounts, and tokens bound to it. Tests running in parallel never see each other's
//!   secrets, so an orphan audit in one test cannot sweep another's preview.
//! - [`PrivateServer`]: a server of the test's own (`PVID_TEST_BAO_BIN`), with Raft storage, so
//!   it can be killed, restarted (it comes back sealed) and unsealed without losing data, all by
//!   PID.
//!
//! Admin calls use a blocking HTTP/1.1 exchange over `std::net` (loopback, plain HTTP), so sync
//! tests that drive the `pvid` binary need no async runtime.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::config::{BaoConfig, Token};

/// The shipped least-privilege policy.
pub const PVID_POLICY: &str = include_str!("../../../deploy/openbao/pvid-policy.hcl");

/// One blocking request to `addr` (`http://host:port`). Returns the status and the JSON body
/// (`Null` when empty).
pub fn http(addr: &str, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> std::io::Result<(u16, Value)> {
    let hostport = addr.strip_prefix("http://").expect("testkit speaks plain http only");
    let mut s = TcpStream::connect(hostport)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!("{method} /v1/{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(t) = token {
        req.push_str(&format!("X-Vault-Token: {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let payload = if chunked { dechunk(rest) } else { rest.to_owned() };
    let value = if payload.trim().is_empty() { Value::Null } else { serde_json::from_str(&payload).unwrap_or(Value::String(payload)) };
    Ok((status, value))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Admin operations with a root token.
#[derive(Clone, Debug)]
pub struct Admin {
    pub addr: String,
    pub root: String,
}

impl Admin {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = http(&self.addr, method, path, Some(&self.root), body.as_ref())
            .unwrap_or_else(|e| panic!("OpenBao admin {method} {path} at {}: {e}", self.addr));
        assert!((200..300).contains(&status), "OpenBao admin {method} {path}: HTTP {status} {v}");
        v
    }

    pub fn enable_kv2(&self, mount: &str) {
        self.call("POST", &format!("sys/mounts/{mount}"), Some(json!({"type": "kv", "options": {"version": "2"}})));
    }

    pub fn enable_transit(&self, mount: &str) {
        self.call("POST", &format!("sys/mounts/{mount}"), Some(json!({"type": "transit"})));
    }

    /// Writes an ACL policy.
    pub fn put_policy(&self, name: &str, hcl: &str) {
        self.call("PUT", &format!("sys/policies/acl/{name}"), Some(json!({"policy": hcl})));
    }

    /// A token with exactly these policies (no `default` policy).
    pub fn create_token(&self, policies: &[&str]) -> String {
        let v = self.call("POST", "auth/token/create", Some(json!({"policies": policies, "no_default_policy": true, "ttl": "2h"})));
        v["auth"]["client_token"].as_str().expect("client_token").to_owned()
    }

    /// Revokes a token.
    pub fn revoke_token(&self, token: &str) {
        self.call("POST", "auth/token/revoke", Some(json!({"token": token})));
    }

    /// Seals the server.
    pub fn seal(&self) {
        self.call("PUT", "sys/seal", None);
    }

    /// Keys under `preview/` in a KV v2 mount, recursively, read with the root token.
    pub fn kv_paths(&self, mount: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec!["preview/".to_owned()];
        while let Some(dir) = stack.pop() {
            let (status, v) = http(&self.addr, "LIST", &format!("{mount}/metadata/{dir}"), Some(&self.root), None).unwrap();
            if status == 404 {
                continue;
            }
            for k in v["data"]["keys"].as_array().cloned().unwrap_or_default() {
                let k = format!("{dir}{}", k.as_str().unwrap());
                if k.ends_with('/') { stack.push(k) } else { out.push(k) }
            }
        }
        out.sort();
        out
    }

    /// Metadata of a KV v2 path (`None` when the path is unknown), read with the root token.
    pub fn kv_metadata(&self, mount: &str, path: &str) -> Option<Value> {
        let (status, v) = http(&self.addr, "GET", &format!("{mount}/metadata/{path}"), Some(&self.root), None).unwrap();
        (status == 200).then(|| v["data"].clone())
    }

    /// Transit key names of a mount, read with the root token.
    pub fn transit_keys(&self, mount: &str) -> Vec<String> {
        let (status, v) = http(&self.addr, "LIST", &format!("{mount}/keys/"), Some(&self.root), None).unwrap();
        if status == 404 {
            return Vec::new();
        }
        let mut keys: Vec<String> = v["data"]["keys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()).collect();
        keys.sort();
        keys
    }

    /// A Transit key as OpenBao reports it, read with the root token.
    pub fn transit_key(&self, mount: &str, name: &str) -> Option<Value> {
        let (status, v) = http(&self.addr, "GET", &format!("{mount}/keys/{name}"), Some(&self.root), None).unwrap();
        (status == 200).then(|| v["data"].clone())
    }
}

/// A policy derived from the shipped one: `secret/` and `transit/` replaced by these mounts.
pub fn policy_for(kv_mount: &str, transit_mount: &str) -> String {
    PVID_POLICY.replace("path \"secret/", &format!("path \"{kv_mount}/")).replace("path \"transit/", &format!("path \"{transit_mount}/"))
}

/// The shipped policy without the `delete` capability anywhere.
pub fn policy_without_delete(kv_mount: &str, transit_mount: &str) -> String {
    policy_for(kv_mount, transit_mount).replace(", \"delete\"", "")
}

/// Mounts, policy and tokens of one test on a shared server.
#[derive(Debug)]
pub struct Sandbox {
    pub admin: Admin,
    pub kv_mount: String,
    pub transit_mount: String,
    /// A token bound to the shipped policy (for these mounts) and nothing else.
    pub token: String,
}

fn random_tag() -> String {
    pvid_core::key::random_suffix(10)
}

impl Sandbox {
    /// On the shared dev server of the test run. Panics with what to do when it is not running.
    pub fn new() -> Sandbox {
        let addr = std::env::var("BAO_ADDR").expect("needs openbao: BAO_ADDR (run ./scripts/test)");
        let root = std::env::var("PVID_TEST_BAO_ROOT_TOKEN").expect("needs openbao: PVID_TEST_BAO_ROOT_TOKEN (run ./scripts/test)");
        Sandbox::on(Admin { addr, root })
    }

    /// On any server, given its root token.
    pub fn on(admin: Admin) -> Sandbox {
        let tag = random_tag();
        let (kv_mount, transit_mount) = (format!("kv-{tag}"), format!("transit-{tag}"));
        admin.enable_kv2(&kv_mount);
        admin.enable_transit(&transit_mount);
        admin.put_policy(&format!("pvid-{tag}"), &policy_for(&kv_mount, &transit_mount));
        let token = admin.create_token(&[&format!("pvid-{tag}")]);
        Sandbox { admin, kv_mount, transit_mount, token }
    }

    /// A token bound to the shipped policy minus every `delete` capability.
    pub fn token_without_delete(&self) -> String {
        let name = format!("pvid-nodelete-{}", random_tag());
        self.admin.put_policy(&name, &policy_without_delete(&self.kv_mount, &self.transit_mount));
        self.admin.create_token(&[&name])
    }

    /// The environment the `pvid` binary needs to use this sandbox with `token`.
    pub fn env(&self, token: &str) -> Vec<(String, String)> {
        vec![
            ("PVID_SECRETS".into(), "openbao".into()),
            ("BAO_ADDR".into(), self.admin.addr.clone()),
            ("BAO_TOKEN".into(), token.to_owned()),
            ("PVID_BAO_KV_MOUNT".into(), self.kv_mount.clone()),
            ("PVID_BAO_TRANSIT_MOUNT".into(), self.transit_mount.clone()),
        ]
    }

    /// A client configuration for this sandbox with `token`.
    pub fn config(&self, token: &str) -> BaoConfig {
        BaoConfig {
            addr: self.admin.addr.clone(),
            token: Token::new(token),
            namespace: None,
            ca_cert: None,
            kv_mount: self.kv_mount.clone(),
            transit_mount: self.transit_mount.clone(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Every KV path under `preview/` of this sandbox's mount.
    pub fn kv_paths(&self) -> Vec<String> {
        self.admin.kv_paths(&self.kv_mount)
    }

    /// Every Transit key of this sandbox's mount.
    pub fn transit_keys(&self) -> Vec<String> {
        self.admin.transit_keys(&self.transit_mount)
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

/// A loopback port free right now, for a server or sidecar the test starts next, and never
/// handed out twice in this process. `bind(0)` would draw from the kernel's ephemeral range
/// (32768 and up on Linux), where another test's `bind(0)` or an outgoing connection's source
/// port can take it before the server binds it: CI saw a test's requests answered by another
/// test's process. So ports come from 20000..32000, in a sequence of this process's own. Every
/// test of the workspace that starts a process on a chosen port takes it from here.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = (FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN);
}

/// An OpenBao server of one test, with Raft storage on disk: it survives a kill and a restart, and comes
/// back sealed. Stopped by PID when dropped.
#[derive(Debug)]
pub struct PrivateServer {
    pub addr: String,
    pub unseal_key: String,
    pub root: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateServer {
    /// Starts, initialises (one key share) and unseals a server. Needs `PVID_TEST_BAO_BIN`.
    pub fn start(dir: PathBuf) -> PrivateServer {
        let (port, cluster_port) = (free_port(), free_port());
        let addr = format!("http://127.0.0.1:{port}");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // Raft: OpenBao's built-in persistent storage (it has no `file` backend).
        std::fs::write(
            dir.join("bao.hcl"),
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"pvid-test\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cluster_port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"{addr}\"\ncluster_addr = \"http://127.0.0.1:{cluster_port}\"\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let mut server = PrivateServer { addr, unseal_key: String::new(), root: String::new(), dir, child: None };
        server.spawn();
        let (status, v) = http(&server.addr, "PUT", "sys/init", None, Some(&json!({"secret_shares": 1, "secret_threshold": 1}))).unwrap();
        assert_eq!(status, 200, "init: {v}");
        server.unseal_key = v["keys_base64"][0].as_str().unwrap().to_owned();
        server.root = v["root_token"].as_str().unwrap().to_owned();
        server.unseal();
        server
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) {
        let bin = std::env::var("PVID_TEST_BAO_BIN").expect("needs openbao: PVID_TEST_BAO_BIN (run ./scripts/test)");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("bao.log")).unwrap();
        let child = Command::new(bin)
            .arg("server")
            .arg(format!("-config={}", self.dir.join("bao.hcl").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start bao server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(&self.addr, "GET", "sys/seal-status", None, None).is_err() {
            assert!(Instant::now() < deadline, "private OpenBao did not listen within 30 s: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bao.log")).unwrap_or_default()
    }

    /// Unseals and waits until the server is active.
    pub fn unseal(&self) {
        let (status, v) = http(&self.addr, "PUT", "sys/unseal", None, Some(&json!({"key": self.unseal_key}))).unwrap();
        assert_eq!((status, v["sealed"].clone()), (200, json!(false)), "unseal: {v}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _) = http(&self.addr, "GET", "sys/health", None, None).unwrap();
            if status == 200 {
                return;
            }
            assert!(Instant::now() < deadline, "private OpenBao not active 30 s after unseal (health {status})");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Admin operations with this server's root token.
    pub fn admin(&self) -> Admin {
        Admin { addr: self.addr.clone(), root: self.root.clone() }
    }

    /// Kills the server (SIGKILL, by PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same storage and port; it is sealed until [`Self::unseal`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}
