//! Control-plane benchmark (figures in docs/PERFORMANCE.md):
//!
//! 1. provisions per second through the API (real socket, 8 concurrent clients), SQLite and
//!    PostgreSQL;
//! 2. revocation propagation: 10 sidecars (in-process `pvid-proxy`, registry over HTTP
//!    long-poll) in front of one preview; time from the teardown call returning to each sidecar's
//!    first refusal of a token that was accepted before (median, p99 over all sidecars and trials);
//! 3. registry fetch latency (p50, p99) with 10,000 previews × 10 services stored.
//!
//! Run: `PVID_BENCH_PG_URL=postgres://… cargo bench -p pvid-server --bench control_plane`
//! (PostgreSQL parts are skipped without a URL; `PVID_TEST_PG_URL` works too). Loopback only;
//! every loop is bounded.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pvid_control::Control;
use pvid_core::{PreviewId, ServiceName, SystemClock};
use pvid_proxy::{HttpRegistry, LogTarget, Proxy, ProxyConfig, RegistrySource};
use pvid_server::{AdminToken, AppState, Settings};
use pvid_store::{LocalSecretStore, StateStore};
use sqlx::Connection;

const TOKEN: &str = "pvid_adm_bench";
const SPEC: &str = include_str!("../../../examples/preview.yaml");

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(c: &HttpClient, method: &str, url: &str, bearer: Option<&str>, body: String) -> (u16, Bytes) {
    let mut req = hyper::Request::builder().method(method).uri(url);
    if let Some(t) = bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = c.request(req.body(Full::new(Bytes::from(body))).expect("request")).await.expect("call");
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.expect("body").to_bytes())
}

async fn fresh_pg(admin: &str) -> String {
    let name = format!("bench_{}", pvid_store::evidence::hex(&pvid_core::key::random_bytes(6)));
    let mut conn = sqlx::PgConnection::connect(admin).await.expect("connect postgres");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create database");
    format!("{}/{name}", admin.rsplit_once('/').expect("url").0)
}

/// A control plane on a real socket.
struct Plane {
    url: String,
    state: Arc<AppState>,
    db_url: String,
}

async fn plane(home: &Path, pg: Option<&str>) -> Plane {
    let (store, db_url) = match pg {
        Some(admin) => {
            let url = fresh_pg(admin).await;
            (StateStore::connect(&url).await.expect("postgres"), url)
        }
        None => {
            let path = home.join("state.db");
            (StateStore::open(&path).await.expect("sqlite"), format!("sqlite://{}", path.display()))
        }
    };
    let control = Control::new(store, Arc::new(LocalSecretStore::open(home).expect("secrets")), home.to_path_buf());
    let state = AppState::new(Arc::new(control), AdminToken::from_value(TOKEN), Settings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(pvid_server::serve(listener, state.clone(), std::future::pending()));
    Plane { url: format!("http://{addr}"), state, db_url }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn provisions_per_second(pg: Option<&str>, count: usize, concurrency: usize) -> f64 {
    let home = tempfile::tempdir().expect("tmp");
    let p = plane(home.path(), pg).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let url = p.url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in (w..count).step_by(concurrency) {
                let (status, body) = call(&c, "POST", &format!("{url}/v1/previews?preview=pr-{i}"), Some(TOKEN), SPEC.to_owned()).await;
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&body));
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
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

/// Milliseconds from teardown return to first refusal, one value per sidecar per trial.
async fn revocation_propagation(pg: Option<&str>, sidecars: usize, trials: usize) -> Vec<f64> {
    let home = tempfile::tempdir().expect("tmp");
    let p = plane(home.path(), pg).await;
    let up = upstream().await;
    let c = client();
    let mut samples = Vec::new();
    for trial in 0..trials {
        let id: PreviewId = format!("pr-rev-{trial}").parse().expect("id");
        let (status, _) = call(&c, "POST", &format!("{}/v1/previews?preview={id}", p.url), Some(TOKEN), SPEC.to_owned()).await;
        assert_eq!(status, 201);
        let mut addrs = Vec::new();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for s in 0..sidecars {
            let config = ProxyConfig {
                preview: id.clone(),
                service: "payments".parse().expect("svc"),
                listen: "127.0.0.1:0".parse().expect("addr"),
                upstream: up,
                egress: None,
                registry: RegistrySource::Http(HttpRegistry::parse(&p.url).expect("url")),
                signing_key: None,
                key_source: None,
                log: LogTarget::File(home.path().join(format!("sidecar-{trial}-{s}.jsonl"))),
                log_buffer: pvid_proxy::DEFAULT_LOG_BUFFER_LINES,
                evidence: None,
                clock: Arc::new(SystemClock),
                cache: true,
                otlp: None,
            };
            let proxy = Proxy::bind(config).await.expect("sidecar");
            addrs.push(proxy.inbound_addr());
            let mut stop = stop_rx.clone();
            tokio::spawn(proxy.serve(async move {
                let _ = stop.wait_for(|s| *s).await;
            }));
        }
        let api: ServiceName = "api".parse().expect("svc");
        let key = p.state.control.signing_key(&id, &api).await.expect("key").expect("key present");
        let aud = format!("preview-{id}-payments");
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("time").as_secs_f64();
        let token = pvid_core::mint(&key, &pvid_core::MintRequest { from: &api, preview: &id, audience: &aud, ttl_s: 300, now }).expect("mint");
        for a in &addrs {
            assert_eq!(call(&c, "POST", &format!("http://{a}/charge"), Some(&token), String::new()).await.0, 200);
        }
        // Let every sidecar's long-poll settle on the current version.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _) = call(&c, "DELETE", &format!("{}/v1/previews/{id}", p.url), Some(TOKEN), String::new()).await;
        let returned = Instant::now();
        assert_eq!(status, 200);
        let mut waits = Vec::new();
        for a in addrs.clone() {
            let (c, token) = (client(), token.clone());
            waits.push(tokio::spawn(async move {
                let deadline = returned + Duration::from_secs(10);
                loop {
                    let (status, _) = call(&c, "POST", &format!("http://{a}/charge"), Some(&token), String::new()).await;
                    if status == 401 {
                        return returned.elapsed().as_secs_f64() * 1000.0;
                    }
                    assert!(Instant::now() < deadline, "sidecar {a} never refused");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }
        for w in waits {
            samples.push(w.await.expect("wait"));
        }
        let _ = stop_tx.send(true);
    }
    samples
}

use std::time::{SystemTime, UNIX_EPOCH};

/// Stores `previews` previews of `services` services (one key each) directly, then fetches
/// registries of random previews. Returns fetch latencies in ms.
async fn registry_fetch(pg: Option<&str>, previews: usize, services: usize, fetches: usize) -> Vec<f64> {
    let home = tempfile::tempdir().expect("tmp");
    let p = plane(home.path(), pg).await;
    let mut spec = String::from("algorithm: ES256\nservices:\n");
    for s in 0..services {
        spec.push_str(&format!("  svc{s}: {{ address: \"127.0.0.1:{}\", calls: [svc{}] }}\n", 7000 + s, (s + 1) % services));
    }
    let config = pvid_core::PreviewSpec::parse("bench", &spec).expect("spec").config();
    let config_json = serde_json::to_string(&config).expect("config");
    let key = pvid_core::SigningKey::generate(pvid_core::Algorithm::ES256, "k".into()).expect("key");
    let mut jwk = serde_json::to_value(key.public_jwk()).expect("jwk");
    let pool = sqlx::AnyPool::connect(&p.db_url).await.expect("pool");
    let loaded = Instant::now();
    for chunk in (0..previews).collect::<Vec<_>>().chunks(200) {
        let mut tx = pool.begin().await.expect("tx");
        for &i in chunk {
            sqlx::query("INSERT INTO previews (id, state, version, config, created_at, updated_at) VALUES ($1, 'active', 1, $2, 0, 0)")
                .bind(format!("pr-{i}"))
                .bind(&config_json)
                .execute(&mut *tx)
                .await
                .expect("insert preview");
            for s in 0..services {
                let kid = format!("svc{s}-1-{i}");
                jwk["kid"] = serde_json::Value::String(kid.clone());
                sqlx::query("INSERT INTO keys (kid, preview_id, service, state, jwk, created_at) VALUES ($1, $2, $3, 'active', $4, 0)")
                    .bind(kid)
                    .bind(format!("pr-{i}"))
                    .bind(format!("svc{s}"))
                    .bind(jwk.to_string())
                    .execute(&mut *tx)
                    .await
                    .expect("insert key");
            }
        }
        tx.commit().await.expect("commit");
    }
    eprintln!("  stored {previews} previews × {services} services in {:.1} s", loaded.elapsed().as_secs_f64());
    let mut tasks = Vec::new();
    let workers = 4;
    for w in 0..workers {
        let url = p.url.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ w as u64;
            for _ in 0..fetches / workers {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % previews as u64) as usize;
                let t = Instant::now();
                let (status, body) = call(&c, "GET", &format!("{url}/v1/previews/pr-{i}/registry.json"), None, String::new()).await;
                out.push(t.elapsed().as_secs_f64() * 1000.0);
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(f64::total_cmp);
    println!(
        "{name}: n={} median={:.2} ms p99={:.2} ms max={:.2} ms",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let pg = std::env::var("PVID_BENCH_PG_URL").or_else(|_| std::env::var("PVID_TEST_PG_URL")).ok();
    let machine = format!("{} cores", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    println!("pvid control-plane benchmark ({machine}, loopback)");

    let rate = provisions_per_second(None, 200, 8).await;
    println!("provisions/s via API, SQLite: {rate:.1} (200 previews × 4 services, 8 clients)");
    if let Some(pg) = pg.as_deref() {
        let rate = provisions_per_second(Some(pg), 200, 8).await;
        println!("provisions/s via API, PostgreSQL: {rate:.1} (200 previews × 4 services, 8 clients)");
    }
    summary("revocation propagation, SQLite (10 sidecars × 10 trials)", revocation_propagation(None, 10, 10).await);
    if let Some(pg) = pg.as_deref() {
        summary("revocation propagation, PostgreSQL (10 sidecars × 10 trials)", revocation_propagation(Some(pg), 10, 10).await);
    }
    summary("registry fetch, SQLite (10,000 previews × 10 services, 4 clients)", registry_fetch(None, 10_000, 10, 4000).await);
    if let Some(pg) = pg.as_deref() {
        summary("registry fetch, PostgreSQL (10,000 previews × 10 services, 4 clients)", registry_fetch(Some(pg), 10_000, 10, 4000).await);
    }
}
