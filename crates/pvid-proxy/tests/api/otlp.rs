//! OTLP export: a real sidecar POSTs its decision lines to a loopback collector as OTLP/HTTP
//! JSON; a collector that fails or is absent changes no decision and is counted in /metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pvid_proxy::OtlpEndpoint;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support::*;

/// One request the collector received.
#[derive(Clone, Debug)]
struct Posted {
    method: String,
    path: String,
    content_type: String,
    body: Vec<u8>,
}

/// A loopback OTLP/HTTP collector that records every request and answers `status`.
struct Collector {
    addr: SocketAddr,
    posted: Arc<Mutex<Vec<Posted>>>,
}

impl Collector {
    async fn start(status: StatusCode) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posted = Arc::new(Mutex::new(Vec::new()));
        let store = posted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_owned())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
                            store.lock().unwrap().push(Posted { method, path, content_type, body });
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"{}")));
                            *resp.status_mut() = status;
                            resp.headers_mut().insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Collector { addr, posted }
    }

    fn endpoint(&self) -> OtlpEndpoint {
        OtlpEndpoint::parse(&format!("http://{}", self.addr)).unwrap()
    }

    fn posted(&self) -> Vec<Posted> {
        self.posted.lock().unwrap().clone()
    }

    /// Every log record received, each with its batch's resource attributes.
    fn records(&self) -> Vec<(Value, Value)> {
        let mut out = Vec::new();
        for p in self.posted() {
            let req: Value = serde_json::from_slice(&p.body).expect("an OTLP body is JSON");
            for rl in req["resourceLogs"].as_array().expect("resourceLogs") {
                for sl in rl["scopeLogs"].as_array().expect("scopeLogs") {
                    assert_eq!(sl["scope"]["name"], "pvid");
                    for r in sl["logRecords"].as_array().expect("logRecords") {
                        out.push((rl["resource"].clone(), r.clone()));
                    }
                }
            }
        }
        out
    }
}

/// An OTLP `attributes` list as (key, stringValue) pairs.
fn attrs(v: &Value) -> Vec<(String, String)> {
    v["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"]["stringValue"].as_str().unwrap().to_owned()))
        .collect()
}

fn attr(v: &Value, key: &str) -> Option<String> {
    attrs(v).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// The raw text of the single `auth.validate` line of request `rid`.
fn raw_decision_line(sidecar: &Sidecar, rid: &str) -> String {
    sidecar.decision(rid);
    let text = std::fs::read_to_string(&sidecar.log).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["event"] == "auth.validate" && v["request_id"] == rid
        })
        .collect();
    assert_eq!(lines.len(), 1, "one decision line for {rid}");
    lines[0].to_owned()
}

/// Polls `cond` every 20 ms for up to 15 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..750 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits (bounded) until `sample` is at least `min`.
async fn metric_at_least(admin: SocketAddr, sample: &str, min: u64) -> u64 {
    for _ in 0..750 {
        let n = metric(admin, sample).await;
        if n >= min {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{sample} stayed below {min}");
}

/// An allowed call (api → payments POST /charge) and a denied one (worker may not call payments).
async fn allow_and_deny(sidecar: &Sidecar, keys: &Keys, allow_rid: &str, deny_rid: &str) -> (String, String) {
    let api = token(&keys.api, "api", "payments");
    let reply = send(
        sidecar.inbound,
        "POST",
        "/charge",
        &[("Authorization", &bearer(&api)), ("X-Request-Id", allow_rid)],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    let worker = token(&keys.worker, "worker", "payments");
    let reply = send(
        sidecar.inbound,
        "POST",
        "/charge",
        &[("Authorization", &bearer(&worker)), ("X-Request-Id", deny_rid)],
        b"",
    )
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["reason"], "policy_denied");
    (api, worker)
}

const EXPORT_FAILED: &str = "pvid_otlp_dropped_total{why=\"export_failed\"}";

#[tokio::test]
async fn decision_lines_reach_an_otlp_collector_as_log_records_equal_to_the_log() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let collector = Collector::start(StatusCode::OK).await;
    let mut config = world.config("payments", Arc::new(pvid_core::FixedClock(NOW)));
    config.otlp = Some(collector.endpoint());
    let (sidecar, admin) = Sidecar::start_with_admin(config).await;

    let (api, worker) = allow_and_deny(&sidecar, &keys, "otlp-allow", "otlp-deny").await;

    let has = |rid: &str| {
        collector.records().iter().any(|(_, r)| attr(r, "request_id").as_deref() == Some(rid))
    };
    eventually("both decisions at the collector", || has("otlp-allow") && has("otlp-deny")).await;

    let posted = collector.posted();
    for p in &posted {
        assert_eq!((p.method.as_str(), p.path.as_str()), ("POST", "/v1/logs"));
        assert_eq!(p.content_type, "application/json");
        let body = String::from_utf8(p.body.clone()).unwrap();
        for t in [&api, &worker] {
            assert!(!body.contains(signature_of(t)), "a token reached the collector");
        }
    }
    let records = collector.records();
    for (rid, result, reason, severity, caller) in [
        ("otlp-allow", "allow", "ok", "INFO", "api"),
        ("otlp-deny", "deny", "policy_denied", "WARN", "worker"),
    ] {
        let line = raw_decision_line(&sidecar, rid);
        let found: Vec<&(Value, Value)> =
            records.iter().filter(|(_, r)| attr(r, "request_id").as_deref() == Some(rid)).collect();
        assert_eq!(found.len(), 1, "one record for {rid}");
        let (resource, record) = found[0];
        assert_eq!(record["body"]["stringValue"].as_str(), Some(line.as_str()));
        assert_eq!(record["severityText"], severity);
        // NOW as the line's ts says it, in nanoseconds, as a decimal string
        assert_eq!(record["timeUnixNano"], "1796299200000000000");
        for (k, v) in [
            ("event", "auth.validate"),
            ("result", result),
            ("reason", reason),
            ("caller", caller),
            ("preview_id", "pr-7"),
            ("service", "payments"),
        ] {
            assert_eq!(attr(record, k).as_deref(), Some(v), "{rid}: attribute {k}");
        }
        let mut res = attrs(resource);
        res.sort();
        let want: Vec<(String, String)> =
            [("pvid.preview_id", "pr-7"), ("pvid.service", "payments"), ("service.name", "pvid-proxy")]
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
        assert_eq!(res, want);
    }
    let exported = metric_at_least(admin, "pvid_otlp_exported_total", 2).await;
    assert!(exported >= 2);
    assert_eq!(metric(admin, EXPORT_FAILED).await, 0);
    assert_eq!(metric(admin, "pvid_otlp_dropped_total{why=\"queue_full\"}").await, 0);
}

#[tokio::test]
async fn a_failing_collector_changes_no_decision_and_is_counted_and_logged_once() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let collector = Collector::start(StatusCode::INTERNAL_SERVER_ERROR).await;
    let mut config = world.config("payments", Arc::new(pvid_core::FixedClock(NOW)));
    config.otlp = Some(collector.endpoint());
    let (sidecar, admin) = Sidecar::start_with_admin(config).await;

    allow_and_deny(&sidecar, &keys, "fail-allow", "fail-deny").await;
    assert_eq!(world.echo.hits(), 1);
    assert_eq!(sidecar.decision("fail-allow")["result"], "allow");
    assert_eq!(sidecar.decision("fail-deny")["reason"], "policy_denied");
    // registry.loaded and both decisions were offered; every one of them is dropped
    metric_at_least(admin, EXPORT_FAILED, 3).await;
    let failed = sidecar.wait_for_line("otlp.export_failed", |l| l["event"] == "otlp.export_failed").await;
    assert!(failed["error"].as_str().unwrap().contains("500"), "{failed}");

    // A later batch fails for the same cause: counted, not logged again.
    let posts = collector.posted().len();
    allow_and_deny(&sidecar, &keys, "fail-allow-2", "fail-deny-2").await;
    eventually("another export attempt", || collector.posted().len() > posts).await;
    metric_at_least(admin, EXPORT_FAILED, 5).await;
    let logged = log_lines(&sidecar.log).iter().filter(|l| l["event"] == "otlp.export_failed").count();
    assert_eq!(logged, 1);
    assert_eq!(metric(admin, "pvid_otlp_exported_total").await, 0);
}

#[tokio::test]
async fn an_absent_collector_changes_no_decision_and_is_counted() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    // A port nobody listens on any more.
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut config = world.config("payments", Arc::new(pvid_core::FixedClock(NOW)));
    config.otlp = Some(OtlpEndpoint::parse(&format!("http://{gone}")).unwrap());
    let (sidecar, admin) = Sidecar::start_with_admin(config).await;

    allow_and_deny(&sidecar, &keys, "gone-allow", "gone-deny").await;
    assert_eq!(world.echo.hits(), 1);
    assert_eq!(sidecar.decision("gone-deny")["reason"], "policy_denied");
    metric_at_least(admin, EXPORT_FAILED, 3).await;
    sidecar.wait_for_line("otlp.export_failed", |l| l["event"] == "otlp.export_failed").await;
}

#[tokio::test]
async fn lines_still_queued_at_shutdown_are_exported_before_serve_returns() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let collector = Collector::start(StatusCode::OK).await;
    let mut config = world.config("payments", Arc::new(pvid_core::FixedClock(NOW)));
    config.otlp = Some(collector.endpoint());
    let sidecar = Sidecar::start(config).await;
    allow_and_deny(&sidecar, &keys, "stop-allow", "stop-deny").await;
    sidecar.shutdown().await.unwrap();
    // No polling: serve returned, so the last batch was sent.
    let rids: Vec<String> = collector.records().iter().filter_map(|(_, r)| attr(r, "request_id")).collect();
    assert!(rids.iter().any(|r| r == "stop-allow") && rids.iter().any(|r| r == "stop-deny"), "{rids:?}");
}
