//! Cases C05 (rotation) and C06 (unknown-kid storm) of `testdata/cases` against a real
//! `pvid proxy` whose registry source is an HTTP server this test controls and counts fetches on
//! (`pvid proxy --registry http://HOST:PORT`, which asks for `/v1/previews/pr-1/registry.json`).
//!
//! The interface assumed (DESIGN.md, "Sidecar"): the sidecar fetches the registry URL at start
//! and keeps watching it (long-poll with `If-None-Match`); a token with an unknown kid triggers at
//! most one refetch per 30 s, however many tokens ask; a failed refetch never replaces (never
//! empties) the key set in force.


mod registry_http {
    use std::collections::BTreeMap;
    use std::io::{BufRead as _, BufReader};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use base64::Engine as _;
    use pvid_core::key::Jwks;
    use pvid_core::{Algorithm, CallRule, PreviewState, Registry, ServiceEntry, SigningKey, sign_compact};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{Mutex, watch};
    use zeroize::Zeroizing;

    fn cases() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/cases")
    }

    fn read_json(rel: &str) -> Value {
        serde_json::from_slice(&std::fs::read(cases().join(rel)).unwrap()).unwrap()
    }

    fn key(kid: &str) -> SigningKey {
        let pem = std::fs::read_to_string(cases().join(format!("keys/{kid}.pem"))).unwrap();
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(body).unwrap());
        SigningKey::from_pkcs8(Algorithm::ES256, kid.into(), der).unwrap()
    }

    /// pr-1 as the cases' harness has it, with the key set of `jwks_file`; orders accepts the
    /// preview-wide audience; api, web and worker may `GET /v1/ping` on orders.
    fn registry(jwks_file: &str, version: u64) -> Vec<u8> {
        let preview: pvid_core::PreviewId = "pr-1".parse().unwrap();
        let jwks: Jwks = serde_json::from_value(read_json(jwks_file)).unwrap();
        let bindings = read_json("keys.json");
        let mut services = BTreeMap::new();
        for name in ["api", "web", "worker", "orders"] {
            let kids = jwks
                .keys
                .iter()
                .filter_map(|k| k.kid.clone())
                .filter(|kid| bindings[kid]["preview"] == "pr-1" && bindings[kid]["service"] == name)
                .collect();
            let id = format!("preview-pr-1-{name}");
            services.insert(
                name.parse().unwrap(),
                ServiceEntry { issuer: id.clone(), audience: id, address: None, kids, accept_preview_audience: name == "orders", signing_kid: None },
            );
        }
        let policy = ["api", "web", "worker"]
            .iter()
            .map(|c| CallRule {
                caller: c.parse().unwrap(),
                callee: "orders".parse().unwrap(),
                methods: Some(vec!["GET".into()]),
                path: Some("/v1/ping".into()),
            })
            .collect();
        let reg = Registry {
            preview,
            state: PreviewState::Active,
            version,
            algorithm: Algorithm::ES256,
            token_ttl_s: 300,
            services,
            policy,
            jwks,
            revoked: vec![],
            retiring: vec![],
            shared_credentials: false,
        };
        serde_json::to_vec(&reg).unwrap()
    }

    /// A fresh token shaped like the case's (the case files are pinned to 2026-12-03T12:00Z and
    /// the sidecar reads the system clock).
    fn token(kid: &str) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64().floor();
        let k = key(kid);
        sign_compact(
            &k,
            &json!({"alg": "ES256", "kid": kid, "typ": "JWT"}),
            &json!({"iss": "preview-pr-1-api", "aud": "preview-pr-1", "iat": now, "nbf": now, "exp": now + 300.0, "jti": "http-1"}),
        )
        .unwrap()
    }

    // === The registry server ===

    /// What the server answers to a full fetch.
    #[derive(Clone)]
    enum Answer {
        Registry { etag: String, body: Vec<u8> },
        Fail(u16),
    }

    /// A registry source that counts every request that is answered at once (a fetch). A request
    /// whose `If-None-Match` is the current ETag is a long-poll: it waits for [`Server::publish`];
    /// [`Server::set_silently`] changes what fetches get without waking the long-polls (as if the
    /// watch had not delivered yet, the situation the unknown-kid refetch exists for).
    struct Server {
        addr: SocketAddr,
        fetches: Arc<AtomicUsize>,
        /// Requests without `?wait=`: the first fetch and the unknown-kid refetches (the
        /// watch's long-polls, and its retries after a failure, all carry `wait`).
        refetches: Arc<AtomicUsize>,
        answer: Arc<Mutex<Answer>>,
        wake: watch::Sender<u64>,
    }

    impl Server {
        async fn start(first: Answer) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let fetches = Arc::new(AtomicUsize::new(0));
            let answer = Arc::new(Mutex::new(first));
            let (wake, _) = watch::channel(0u64);
            let refetches = Arc::new(AtomicUsize::new(0));
            let (f, r, a, w) = (fetches.clone(), refetches.clone(), answer.clone(), wake.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else { continue };
                    tokio::spawn(serve(s, f.clone(), r.clone(), a.clone(), w.subscribe()));
                }
            });
            Server { addr, fetches, refetches, answer, wake }
        }

        /// The base URL the sidecar is given; it asks for `/v1/previews/pr-1/registry.json`.
        fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        fn fetches(&self) -> usize {
            self.fetches.load(Ordering::SeqCst)
        }

        fn refetches(&self) -> usize {
            self.refetches.load(Ordering::SeqCst)
        }

        async fn set_silently(&self, a: Answer) {
            *self.answer.lock().await = a;
        }
    }

    async fn serve(mut s: TcpStream, fetches: Arc<AtomicUsize>, refetches: Arc<AtomicUsize>, answer: Arc<Mutex<Answer>>, mut woken: watch::Receiver<u64>) {
        loop {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            // Only the preview's registry document is served: a sidecar asking elsewhere fails.
            let target = text.split_whitespace().nth(1).unwrap_or("");
            if target.split('?').next() != Some("/v1/previews/pr-1/registry.json") {
                if s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                    return;
                }
                continue;
            }
            let if_none_match =
                text.lines().find_map(|l| l.strip_prefix("if-none-match:")).map(|v| v.trim().trim_matches('"').to_owned());
            let current = answer.lock().await.clone();
            let long_poll = target.contains("wait=");
            if !long_poll {
                refetches.fetch_add(1, Ordering::SeqCst);
            }
            if let (true, Some(tag), Answer::Registry { etag, .. }) = (long_poll, &if_none_match, &current)
                && tag == etag
            {
                // Long-poll: park until a publish (or 25 s), then answer as a fetch would.
                let _ = tokio::time::timeout(Duration::from_secs(25), woken.changed()).await;
            }
            fetches.fetch_add(1, Ordering::SeqCst);
            let reply = match answer.lock().await.clone() {
                Answer::Registry { etag, .. } if !long_poll && if_none_match.as_deref() == Some(etag.as_str()) => {
                    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 0\r\n\r\n".to_vec()
                }
                Answer::Registry { etag, body } => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: \"{etag}\"\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(&body);
                    r
                }
                Answer::Fail(code) => format!("HTTP/1.1 {code} Failed\r\ncontent-length: 0\r\n\r\n").into_bytes(),
            };
            if s.write_all(&reply).await.is_err() {
                return;
            }
        }
    }

    // === The sidecar ===

    struct Sidecar {
        child: Child,
        inbound: SocketAddr,
        log: PathBuf,
    }

    impl Drop for Sidecar {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_sidecar(dir: &Path, registry_url: &str, upstream: SocketAddr) -> Sidecar {
        let log = dir.join("orders.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pvid"))
            .arg("--home")
            .arg(dir.join("home"))
            .args(["proxy", "--preview", "pr-1", "--service", "orders", "--listen", "127.0.0.1:0"])
            .arg("--upstream")
            .arg(upstream.to_string())
            .arg("--registry")
            .arg(registry_url)
            .arg("--log")
            .arg(&log)
            .env_remove("PVID_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
        let inbound = first
            .split([' ', ','])
            .find_map(|w| w.trim().parse().ok())
            .unwrap_or_else(|| panic!("sidecar did not start: {first:?}"));
        Sidecar { child, inbound, log }
    }

    /// A loopback app that answers 200 with the `x-pvid-caller` it was given.
    async fn app() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    let caller =
                        head.lines().find_map(|l| l.strip_prefix("x-pvid-caller:")).unwrap_or("").trim().to_owned();
                    let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{caller}", caller.len());
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        addr
    }

    /// `GET /v1/ping` with a bearer token: (status, body).
    async fn ping(addr: SocketAddr, token: &str) -> (u16, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET /v1/ping HTTP/1.1\r\nHost: orders\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// Waits (bounded) until the sidecar has fetched the registry at least once.
    async fn settled(server: &Server) -> usize {
        for _ in 0..250 {
            if server.fetches() >= 1 {
                // Let a long-poll that follows the first fetch get parked.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return server.fetches();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the sidecar never fetched its registry");
    }

    fn v1() -> Answer {
        Answer::Registry { etag: "1".into(), body: registry("jwks/pr-1.json", 1) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn c05_a_key_published_after_start_is_fetched_once_on_first_sight() {
        let server = Server::start(v1()).await;
        let dir = tempfile::tempdir().unwrap();
        let sidecar = start_sidecar(dir.path(), &server.url(), app().await);
        settled(&server).await;
        let before = server.refetches();
        // The issuer rotated to pr-1-api-2; the watch has not delivered it yet.
        server.set_silently(Answer::Registry { etag: "2".into(), body: registry("jwks/pr-1-rotated.json", 2) }).await;
        let (status, caller) = ping(sidecar.inbound, &token("pr-1-api-2")).await;
        assert_eq!((status, caller.as_str()), (200, "api"), "C05: accepted after a refetch");
        assert_eq!(server.refetches() - before, 1, "C05: exactly one refetch");
        // Known now: no further fetch.
        assert_eq!(ping(sidecar.inbound, &token("pr-1-api-2")).await.0, 200);
        assert_eq!(server.refetches() - before, 1);
        let _ = server.wake.send(1);
        drop(sidecar);
    }

    /// Sends the 200 tokens of `bursts/C06.txt` at once; returns the statuses.
    async fn burst(addr: SocketAddr) -> Vec<u16> {
        let text = std::fs::read_to_string(cases().join("bursts/C06.txt")).unwrap();
        let tokens: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
        assert_eq!(tokens.len(), 200);
        let tasks: Vec<_> = tokens.into_iter().map(|t| tokio::spawn(async move { ping(addr, &t).await.0 })).collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    /// The `unknown_kid` decision lines in `log` once there are `want` of them, or however many
    /// there are after a bounded wait (the sidecar's log writer runs behind a buffer).
    async fn unknown_kid_lines(log: &Path, want: usize) -> usize {
        let count = || std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("\"reason\":\"unknown_kid\"")).count();
        for _ in 0..200 {
            if count() >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn c06_a_storm_of_unknown_kids_costs_at_most_one_refetch_and_valid_tokens_still_pass() {
        let server = Server::start(v1()).await;
        let dir = tempfile::tempdir().unwrap();
        let sidecar = start_sidecar(dir.path(), &server.url(), app().await);
        settled(&server).await;
        let before = server.refetches();
        let statuses = burst(sidecar.inbound).await;
        assert!(statuses.iter().all(|s| *s == 401), "C06: every storm token refused");
        assert_eq!(unknown_kid_lines(&sidecar.log, 200).await, 200, "C06: each refused as unknown_kid");
        assert_eq!(server.refetches() - before, 1, "C06: one refetch for the whole burst");
        let (status, caller) = ping(sidecar.inbound, &token("pr-1-api-1")).await;
        assert_eq!((status, caller.as_str()), (200, "api"), "C06 then: the valid token is accepted");
        let _ = server.wake.send(1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn c06_a_failing_refetch_never_empties_the_key_set() {
        let server = Server::start(v1()).await;
        let dir = tempfile::tempdir().unwrap();
        let sidecar = start_sidecar(dir.path(), &server.url(), app().await);
        settled(&server).await;
        let before = server.refetches();
        for failure in [
            Answer::Fail(500),
            Answer::Fail(404),
            Answer::Registry { etag: "garbage".into(), body: b"{\"keys\":".to_vec() },
            Answer::Registry { etag: "empty".into(), body: b"{}".to_vec() },
        ] {
            server.set_silently(failure).await;
            let statuses = burst(sidecar.inbound).await;
            assert!(statuses.iter().all(|s| *s == 401));
            let (status, caller) = ping(sidecar.inbound, &token("pr-1-api-1")).await;
            assert_eq!((status, caller.as_str()), (200, "api"), "the last good key set is still in force");
        }
        assert_eq!(server.refetches() - before, 1, "one refetch within one 30 s window, however it failed");
        let _ = server.wake.send(1);
    }
}
