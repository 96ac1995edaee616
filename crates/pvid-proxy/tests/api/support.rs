//! Test harness: a real echo upstream, fixture keys and registries, sidecars on 127.0.0.1:0, a
//! raw HTTP/1.1 client (exact header spellings on the wire) and log-file readers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pvid_core::key::Jwks;
use pvid_core::{
    Algorithm, CallRule, Clock, MintRequest, PreviewId, PreviewState, Registry, ServiceEntry, ServiceName, SigningKey,
    mint, service_identity,
};
use pvid_proxy::{Limits, LogTarget, Proxy, ProxyConfig, ProxyError};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The instant every test starts at (2026-12-03T12:00:00Z).
pub const NOW: f64 = 1_796_299_200.0;

pub fn svc(s: &str) -> ServiceName {
    s.parse().unwrap()
}

pub fn preview() -> PreviewId {
    "pr-7".parse().unwrap()
}

// === Clock ===

/// A clock tests move by hand.
#[derive(Debug)]
pub struct TestClock(AtomicU64);

impl TestClock {
    pub fn at(t: f64) -> Arc<TestClock> {
        Arc::new(TestClock(AtomicU64::new(t.to_bits())))
    }
    pub fn set(&self, t: f64) {
        self.0.store(t.to_bits(), Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

// === Echo upstream ===

/// An upstream that answers every request with JSON: method, path (with query), every header
/// as received, and the body length. Counts hits.
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Echo {
    pub async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, counter.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Echo { addr, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo(req: Request<Incoming>, hits: Arc<AtomicUsize>) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let out = json!({"method": method, "path": path, "headers": headers, "body_len": body.len()});
    let mut resp = Response::new(Full::new(Bytes::from(out.to_string())));
    resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// What the echo saw, from its JSON answer.
pub struct Seen(pub Value);

impl Seen {
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap()
    }
    /// Every value of header `name`, matched case-insensitively.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].as_str().unwrap().to_owned())
            .collect()
    }
    pub fn header_names(&self) -> Vec<String> {
        self.0["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_owned()).collect()
    }
    /// The single value of `name`; fails when absent or repeated.
    pub fn header(&self, name: &str) -> String {
        let v = self.header_values(name);
        assert_eq!(v.len(), 1, "upstream saw {name}: {v:?}");
        v[0].clone()
    }
}

// === Keys and registry ===

pub fn clone_key(k: &SigningKey) -> SigningKey {
    SigningKey::from_pkcs8(k.algorithm(), k.kid().to_owned(), zeroize::Zeroizing::new(k.pkcs8().to_vec())).unwrap()
}

pub struct Keys {
    pub api: SigningKey,
    pub worker: SigningKey,
    pub payments: SigningKey,
}

impl Keys {
    pub fn generate() -> Keys {
        let g = |kid: &str| SigningKey::generate(Algorithm::ES256, kid.into()).unwrap();
        let keys = Keys { api: g("api-1-a1b2"), worker: g("worker-1-c3d4"), payments: g("payments-1-e5f6") };
        for k in [&keys.api, &keys.worker, &keys.payments] {
            capture("needles/keys", &format!("{}.der", k.kid()), k.pkcs8());
        }
        keys
    }
}

/// Preview pr-7: api, worker, payments. Policy: api → payments `POST /charge`, api → worker any.
pub fn registry(keys: &Keys) -> Registry {
    let p = preview();
    let mut services = BTreeMap::new();
    for (name, key) in [("api", &keys.api), ("worker", &keys.worker), ("payments", &keys.payments)] {
        let s = svc(name);
        let id = service_identity(&p, &s);
        services.insert(
            s,
            ServiceEntry {
                issuer: id.clone(),
                audience: id,
                address: None,
                kids: vec![key.kid().to_owned()],
                accept_preview_audience: false,
                signing_kid: None,
            },
        );
    }
    Registry {
        preview: p,
        state: PreviewState::Active,
        version: 1,
        algorithm: Algorithm::ES256,
        token_ttl_s: 300,
        services,
        policy: vec![
            CallRule {
                caller: svc("api"),
                callee: svc("payments"),
                methods: Some(vec!["POST".into()]),
                path: Some("/charge".into()),
            },
            CallRule { caller: svc("api"), callee: svc("worker"), methods: None, path: None },
        ],
        jwks: Jwks { keys: vec![keys.api.public_jwk(), keys.worker.public_jwk(), keys.payments.public_jwk()] },
        revoked: vec![],
        retiring: vec![],
        shared_credentials: false,
    }
}

/// A token from `key` (of service `from`) for `audience`, minted at `now`.
pub fn token_at(key: &SigningKey, from: &str, preview_id: &str, audience: &str, now: f64) -> String {
    let from = svc(from);
    let p: PreviewId = preview_id.parse().unwrap();
    let t = mint(key, &MintRequest { from: &from, preview: &p, audience, ttl_s: 300, now }).unwrap();
    capture("needles/tokens", "token.txt", t.as_bytes());
    t
}

// === Capture for the post-test secret scan ===

/// With `PVID_TEST_CAPTURE_DIR` set (by `scripts/test`), keeps a file for the secret scan
/// (`scripts/check.d/20-no-secrets-in-output.sh`): needles (keys and tokens the tests made)
/// under `needles/`, outputs (sidecar logs) under `out/`. Names get a unique prefix.
pub fn capture(sub: &str, name: &str, bytes: &[u8]) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("PVID_TEST_CAPTURE_DIR").map(PathBuf::from) else { return };
    let dir = dir.join(sub);
    std::fs::create_dir_all(&dir).unwrap();
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    std::fs::write(dir.join(format!("proxy-{}-{n}-{name}", std::process::id())), bytes).unwrap();
}

/// A token of `from` for service `to` of pr-7, minted at [`NOW`].
pub fn token(key: &SigningKey, from: &str, to: &str) -> String {
    token_at(key, from, "pr-7", &service_identity(&preview(), &svc(to)), NOW)
}

/// The signature segment of a token (what must never show up in a log).
pub fn signature_of(token: &str) -> &str {
    token.rsplit('.').next().unwrap()
}

// === World and sidecars ===

/// A temp dir with a registry file and an echo upstream.
pub struct World {
    pub dir: tempfile::TempDir,
    pub registry_path: PathBuf,
    pub echo: Echo,
}

impl World {
    pub async fn new(registry: &Registry) -> World {
        let dir = tempfile::tempdir().unwrap();
        let registry_path = dir.path().join("registry.json");
        let world = World { dir, registry_path, echo: Echo::start().await };
        world.write_registry(registry);
        world
    }

    /// Replaces the registry file atomically (write + rename).
    pub fn write_registry(&self, registry: &Registry) {
        self.write_registry_bytes(&serde_json::to_vec_pretty(registry).unwrap());
    }

    pub fn write_registry_bytes(&self, bytes: &[u8]) {
        let tmp = self.dir.path().join("registry.json.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &self.registry_path).unwrap();
    }

    pub fn config(&self, service: &str, clock: Arc<dyn Clock>) -> ProxyConfig {
        ProxyConfig {
            preview: preview(),
            service: svc(service),
            listen: "127.0.0.1:0".parse().unwrap(),
            upstream: self.echo.addr,
            egress: None,
            registry: self.registry_path.clone().into(),
            signing_key: None,
            key_source: None,
            log: LogTarget::File(self.dir.path().join(format!("{service}.log"))),
            log_buffer: pvid_proxy::DEFAULT_LOG_BUFFER_LINES,
            evidence: None,
            clock,
            cache: true,
            otlp: None,
        }
    }

    /// A sidecar for `service` in front of the echo, at [`NOW`], cache on.
    pub async fn sidecar(&self, service: &str) -> Sidecar {
        Sidecar::start(self.config(service, Arc::new(pvid_core::FixedClock(NOW)))).await
    }
}

/// A running sidecar.
pub struct Sidecar {
    pub inbound: SocketAddr,
    pub egress: Option<SocketAddr>,
    pub log: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), ProxyError>>>,
}

impl Sidecar {
    pub async fn start(config: ProxyConfig) -> Sidecar {
        Sidecar::start_with_limits(config, Limits::default()).await
    }

    /// A sidecar with other limits than the defaults.
    pub async fn start_with_limits(config: ProxyConfig, limits: Limits) -> Sidecar {
        let LogTarget::File(log) = config.log.clone() else { panic!("tests log to a file") };
        let proxy = Proxy::bind_with_limits(config, limits).await.unwrap();
        Sidecar::serve(proxy, log)
    }

    /// A sidecar with its admin listener (`/healthz`, `/metrics`) on 127.0.0.1; returns the
    /// admin address too.
    pub async fn start_with_admin(config: ProxyConfig) -> (Sidecar, SocketAddr) {
        let LogTarget::File(log) = config.log.clone() else { panic!("tests log to a file") };
        let mut proxy = Proxy::bind(config).await.unwrap();
        let admin = proxy.bind_admin("127.0.0.1:0".parse().unwrap()).await.unwrap();
        (Sidecar::serve(proxy, log), admin)
    }

    fn serve(proxy: Proxy, log: PathBuf) -> Sidecar {
        let (stop, stopped) = oneshot::channel::<()>();
        let inbound = proxy.inbound_addr();
        let egress = proxy.egress_addr();
        let task = tokio::spawn(proxy.serve(async move {
            let _ = stopped.await;
        }));
        Sidecar { inbound, egress, log, stop: Some(stop), task: Some(task) }
    }

    /// Asks the sidecar to stop and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), ProxyError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), task).await.expect("serve returns after shutdown").unwrap()
    }

    /// The single `auth.validate` line of request `rid`.
    pub fn decision(&self, rid: &str) -> Value {
        one_line(&self.log, "auth.validate", rid)
    }

    /// The single `auth.mint` line of request `rid`.
    pub fn mint_line(&self, rid: &str) -> Value {
        one_line(&self.log, "auth.mint", rid)
    }

    /// Waits (bounded) for a log line matching `pred`.
    pub async fn wait_for_line(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..500 {
            if let Some(v) = log_lines(&self.log).into_iter().find(|v| pred(v)) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "no log line {what} in {}:\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Waits for the registry version `v` to be loaded.
    pub async fn wait_for_version(&self, v: u64) {
        self.wait_for_line(&format!("registry.loaded v{v}"), |l| {
            l["event"] == "registry.loaded" && l["registry_version"] == v
        })
        .await;
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // A regular file only: opening a FIFO nobody writes to any more would never return.
        if std::fs::metadata(&self.log).is_ok_and(|m| m.is_file())
            && let Ok(log) = std::fs::read(&self.log)
        {
            capture("out", "sidecar.log", &log);
        }
    }
}

// === Log files ===

/// Every line of a log file, each parsed as JSON (a line that is not JSON fails the test).
pub fn log_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l:?}")))
        .collect()
}

/// The lines of `path` for which `pred` holds, once there are at least `n` (bounded wait: the
/// log is written by the sidecar's writer thread shortly after the response). Blocks the
/// thread, which is fine: the writer needs no runtime.
pub fn wait_for_lines(path: &Path, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    for _ in 0..500 {
        let lines: Vec<Value> = log_lines(path).into_iter().filter(|l| pred(l)).collect();
        if lines.len() >= n {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("fewer than {n} matching lines in {}:\n{}", path.display(), std::fs::read_to_string(path).unwrap_or_default());
}

fn one_line(path: &Path, event: &str, rid: &str) -> Value {
    let lines = wait_for_lines(path, 1, |l| l["event"] == event && l["request_id"] == rid);
    assert_eq!(lines.len(), 1, "exactly one {event} line for {rid}: {lines:#?}");
    lines.into_iter().next().unwrap()
}

// === Raw HTTP client ===

/// A response read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn seen(&self) -> Seen {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
        Seen(self.json())
    }
}

/// Sends one request with exactly these header lines (plus `Host` unless given, `Connection:
/// close` and `Content-Length`) and reads the whole response.
pub async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut head = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: test\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Connection: close\r\nContent-Length: {}\r\n\r\n", body.len()));
    send_raw(addr, &[head.as_bytes(), body].concat()).await
}

/// Sends raw bytes and reads the response until the server closes.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fut).await.expect("response within 10 s");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 4 + size..];
    }
}

/// `Bearer <token>`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The value of one sample of the sidecar's `/metrics`.
pub async fn metric(admin: SocketAddr, sample: &str) -> u64 {
    let reply = send(admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.body).unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{sample} "))).unwrap_or_else(|| panic!("no {sample}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}
