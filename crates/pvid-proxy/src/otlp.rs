//! Optional export of log lines to an OpenTelemetry collector (OTLP/HTTP, JSON encoding).
//!
//! The file/stdout log stays the record of truth; export is best effort and must never slow a
//! request: [`crate::log::LogSink::record`] offers each line to a bounded queue
//! ([`OtlpQueue::offer`], never waits) and a task batches the queue and POSTs it to
//! `{endpoint}/v1/logs`. A full queue drops the line, a failed export drops the batch; both are
//! counted ([`OtlpStats`], in `/metrics`). Lines hold no token, so neither do the records.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pvid_core::Clock;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::log::{LogSink, OtlpEvent, clip_detail, rfc3339_millis};
use crate::registry_source::error_chain;

/// Lines waiting for export at most; past it new lines are dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Records per export request at most.
const MAX_BATCH: usize = 512;
/// How long the first line of a batch waits for company.
const BATCH_WAIT: Duration = Duration::from_secs(1);
/// Connect + request + response of one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector's answer is read (and ignored) up to this size.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Line fields copied into record attributes (when they are strings).
const ATTRIBUTES: [&str; 7] = ["event", "result", "reason", "request_id", "caller", "preview_id", "service"];

/// An OTLP/HTTP base URL: `http://HOST[:PORT][/PREFIX]`; logs go to `{base}/v1/logs`.
#[derive(Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    logs_url: http::Uri,
}

impl OtlpEndpoint {
    /// Parses a base URL as `OTEL_EXPORTER_OTLP_ENDPOINT` holds it. Only plain `http://`: the
    /// sidecar has no TLS stack (send to a collector or agent next to it).
    pub fn parse(s: &str) -> Result<OtlpEndpoint, String> {
        let s = s.trim();
        let scheme_len = s.find("://").map_or(0, |i| i + 3);
        let scheme = &s[..scheme_len];
        if !scheme.eq_ignore_ascii_case("http://") {
            return Err(format!(
                "{s:?}: only plain http:// endpoints are supported (the sidecar has no TLS stack; \
                 export to a collector next to it)"
            ));
        }
        let rest = &s[scheme_len..];
        if rest.contains(['?', '#']) {
            return Err(format!("{s:?}: an endpoint takes no query or fragment"));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            // Not echoed: the part before `@` may be a password.
            return Err("credentials in the OTLP endpoint URL are not supported".into());
        }
        if let Some((_, port)) = authority.rsplit_once(':')
            && !port.ends_with(']')
            && !matches!(port.parse::<u16>(), Ok(p) if p > 0)
        {
            return Err(format!("{s:?}: port {port:?} is not a TCP port (1-65535)"));
        }
        if authority.is_empty() {
            return Err(format!("{s:?}: no host"));
        }
        let prefix = rest[authority.len()..].trim_end_matches('/');
        let logs_url: http::Uri =
            format!("http://{authority}{prefix}/v1/logs").parse().map_err(|e| format!("{s:?}: {e}"))?;
        if logs_url.host().is_none_or(str::is_empty) {
            return Err(format!("{s:?}: no host"));
        }
        Ok(OtlpEndpoint { logs_url })
    }

    /// Where log records are POSTed.
    pub fn logs_url(&self) -> String {
        self.logs_url.to_string()
    }
}

impl fmt::Debug for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OtlpEndpoint({})", self.logs_url)
    }
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.logs_url.fmt(f)
    }
}

/// Export counters, in records (rendered by `metrics.rs`).
#[derive(Debug, Default)]
pub(crate) struct OtlpStats {
    pub exported: AtomicU64,
    pub dropped_queue_full: AtomicU64,
    pub dropped_export_failed: AtomicU64,
}

/// The log sink's end of the export queue. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct OtlpQueue {
    tx: mpsc::Sender<String>,
    stats: Arc<OtlpStats>,
}

impl OtlpQueue {
    /// Queues one line (without its newline) or, when the queue is full, drops and counts it.
    pub(crate) fn offer(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.stats.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Who the records are about (the OTLP resource).
pub(crate) struct Resource {
    pub preview_id: String,
    pub service: String,
}

/// How long [`crate::Proxy::serve`] waits, at its end, for what is still queued to be exported.
pub(crate) const FLUSH_PATIENCE: Duration = Duration::from_secs(6);

/// Starts the export task on the current runtime. It ends once every queue handle is dropped
/// (after exporting what is queued). `log` must be a sink without export: failures are logged
/// there, and exporting them would feed the failure back into the queue.
pub(crate) fn start(
    endpoint: OtlpEndpoint,
    resource: Resource,
    stats: Arc<OtlpStats>,
    log: LogSink,
    clock: Arc<dyn Clock>,
) -> (OtlpQueue, JoinHandle<()>) {
    start_with_capacity(endpoint, resource, stats, log, clock, QUEUE_CAPACITY)
}

fn start_with_capacity(
    endpoint: OtlpEndpoint,
    resource: Resource,
    stats: Arc<OtlpStats>,
    log: LogSink,
    clock: Arc<dyn Clock>,
    capacity: usize,
) -> (OtlpQueue, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(capacity);
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(EXPORT_TIMEOUT));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let exporter = Exporter { endpoint, resource, stats: stats.clone(), log, clock, client };
    let task = tokio::spawn(exporter.run(rx));
    (OtlpQueue { tx, stats }, task)
}

struct Exporter {
    endpoint: OtlpEndpoint,
    resource: Resource,
    stats: Arc<OtlpStats>,
    log: LogSink,
    clock: Arc<dyn Clock>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Exporter {
    async fn run(self, mut rx: mpsc::Receiver<String>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // The cause last logged: a collector that stays down is logged once, not per batch.
        let mut last_failure: Option<String> = None;
        loop {
            if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return; // every sender is gone and the queue is empty
            }
            let deadline = tokio::time::Instant::now() + BATCH_WAIT;
            while batch.len() < MAX_BATCH {
                let room = MAX_BATCH - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let n = batch.len() as u64;
            let body = encode(&self.resource, &batch, now_nanos(&*self.clock));
            batch.clear();
            match self.post(body).await {
                Ok(()) => {
                    self.stats.exported.fetch_add(n, Ordering::Relaxed);
                    if last_failure.take().is_some() {
                        self.log_event("otlp.recovered", 0, None).await;
                    }
                }
                Err(cause) => {
                    self.stats.dropped_export_failed.fetch_add(n, Ordering::Relaxed);
                    if last_failure.as_deref() != Some(cause.as_str()) {
                        self.log_event("otlp.export_failed", n, Some(clip_detail(&cause))).await;
                        last_failure = Some(cause);
                    }
                }
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let req = http::Request::post(self.endpoint.logs_url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| error_chain(&e))?;
            let status = resp.status();
            // Read the answer so the connection can be reused; its content is not needed.
            let _ = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await;
            if status.is_success() { Ok(()) } else { Err(format!("collector answered {status}")) }
        };
        match tokio::time::timeout(EXPORT_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}s", EXPORT_TIMEOUT.as_secs())),
        }
    }

    async fn log_event(&self, event: &'static str, dropped: u64, error: Option<String>) {
        let line = OtlpEvent {
            ts: rfc3339_millis(self.clock.now()),
            event,
            preview_id: &self.resource.preview_id,
            service: &self.resource.service,
            endpoint: self.endpoint.logs_url(),
            dropped,
            error,
        };
        self.log.record(&line);
    }
}


fn now_nanos(clock: &dyn Clock) -> i128 {
    let now = clock.now();
    if now.is_finite() { (now * 1e9) as i128 } else { 0 }
}

/// One `ExportLogsServiceRequest` (OTLP/HTTP JSON: 64-bit integers as decimal strings).
fn encode(resource: &Resource, lines: &[String], observed_ns: i128) -> Vec<u8> {
    let records: Vec<Value> = lines.iter().map(|l| record(l, observed_ns)).collect();
    let request = json!({
        "resourceLogs": [{
            "resource": {"attributes": [
                attribute("service.name", "pvid-proxy"),
                attribute("pvid.preview_id", &resource.preview_id),
                attribute("pvid.service", &resource.service),
            ]},
            "scopeLogs": [{
                "scope": {"name": "pvid", "version": env!("CARGO_PKG_VERSION")},
                "logRecords": records,
            }],
        }],
    });
    serde_json::to_vec(&request).unwrap_or_default()
}

fn record(line: &str, observed_ns: i128) -> Value {
    let fields: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    let time_ns = fields["ts"].as_str().and_then(parse_rfc3339_nanos).unwrap_or(observed_ns);
    let (severity_text, severity_number) = severity(&fields);
    let attributes: Vec<Value> =
        ATTRIBUTES.iter().filter_map(|k| fields[*k].as_str().map(|v| attribute(k, v))).collect();
    json!({
        "timeUnixNano": time_ns.to_string(),
        "observedTimeUnixNano": observed_ns.to_string(),
        "severityNumber": severity_number,
        "severityText": severity_text,
        "body": {"stringValue": line},
        "attributes": attributes,
    })
}

/// WARN (13) for a denial, a failed mint or a failure event; INFO (9) otherwise.
fn severity(fields: &Value) -> (&'static str, u8) {
    let result = fields["result"].as_str().unwrap_or_default();
    let event = fields["event"].as_str().unwrap_or_default();
    if matches!(result, "deny" | "error") || event.ends_with("_failed") { ("WARN", 13) } else { ("INFO", 9) }
}

fn attribute(key: &str, value: &str) -> Value {
    json!({"key": key, "value": {"stringValue": value}})
}

fn parse_rfc3339_nanos(ts: &str) -> Option<i128> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_base_urls() {
        let logs = |s: &str| OtlpEndpoint::parse(s).map(|e| e.logs_url());
        assert_eq!(logs("http://127.0.0.1:4318").unwrap(), "http://127.0.0.1:4318/v1/logs");
        // Found by a fresh-eyes review: a port out of range passed, a password was echoed.
        assert!(logs("http://127.0.0.1:99999").unwrap_err().contains("not a TCP port"));
        assert!(logs("http://127.0.0.1:0").unwrap_err().contains("not a TCP port"));
        assert!(logs("http://[::1]:4318").is_ok());
        let e = logs("http://user:hunter2@127.0.0.1:4318").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(logs("http://otel:4318/").unwrap(), "http://otel:4318/v1/logs");
        assert_eq!(logs("http://otel:4318/prefix/").unwrap(), "http://otel:4318/prefix/v1/logs");
        let bad = ["https://otel:4318", "otel:4318", "grpc://otel:4317", "http://", "http://u:p@otel:4318", "http://o?x=1"];
        for bad in bad {
            assert!(OtlpEndpoint::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(OtlpEndpoint::parse("https://otel:4318").unwrap_err().contains("only plain http://"));
    }

    #[test]
    fn records_carry_the_line_as_body_and_its_fields_as_attributes() {
        let line = concat!(
            r#"{"ts":"2026-12-03T12:00:00.123Z","event":"auth.validate","preview_id":"pr-7","service":"payments","#,
            r#""caller":null,"result":"deny","reason":"expired","request_id":"r1"}"#
        );
        let r = record(line, 5);
        assert_eq!(r["body"]["stringValue"], line);
        assert_eq!(r["timeUnixNano"], "1796299200123000000");
        assert_eq!(r["severityText"], "WARN");
        let keys: Vec<&str> = r["attributes"].as_array().unwrap().iter().map(|a| a["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["event", "result", "reason", "request_id", "preview_id", "service"]);
        let allow = record(r#"{"event":"auth.validate","result":"allow"}"#, 5);
        assert_eq!(allow["severityText"], "INFO");
        assert_eq!(allow["timeUnixNano"], "5");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let origin = crate::log::Origin {
            preview: "pr-7".into(),
            service: "api".into(),
            clock: Arc::new(pvid_core::FixedClock(0.0)),
        };
        let log =
            LogSink::open(&crate::LogTarget::File(dir.path().join("l.log")), 16, origin, None, Arc::default()).unwrap();
        let stats = Arc::new(OtlpStats::default());
        // A current-thread runtime: the export task does not run before the test yields.
        let endpoint = OtlpEndpoint::parse("http://127.0.0.1:9").unwrap();
        let resource = Resource { preview_id: "pr-7".into(), service: "api".into() };
        let (q, _) = start_with_capacity(endpoint, resource, stats.clone(), log, Arc::new(pvid_core::FixedClock(0.0)), 2);
        for i in 0..10 {
            q.offer(format!("{{\"n\":{i}}}"));
        }
        assert_eq!(stats.dropped_queue_full.load(Ordering::Relaxed), 8);
    }
}
