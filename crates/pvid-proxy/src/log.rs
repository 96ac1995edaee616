//! The sidecar's log lines: one typed struct per event kind, turned into one JSON line in exactly
//! one place ([`encode_line`]).
//!
//! Requests never wait for the log: [`LogSink::record`] puts the line in a bounded buffer that a
//! writer thread drains into the file or stdout. When the buffer is full the line is dropped and
//! counted, never silently: `/metrics` has `pvid_log_lines_dropped_total`, and the writer writes
//! one `log.dropped` line with the count as soon as it can. On shutdown the buffer is flushed.
//! The evidence chain is the exception and stays synchronous ([`LogSink`]).
//!
//! Tokens never reach this module: events hold only what DESIGN.md's decision line names, and
//! every string read from a token is cut to [`MAX_TOKEN_FIELD_CHARS`]. JSON escaping keeps a value
//! holding a newline on one line.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use pvid_core::{Clock, ReasonCode};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::evidence::EvidenceChain;
use crate::otlp::OtlpQueue;
use crate::{LogTarget, ProxyError};

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Longest string taken from a token (`kid`, `iss`, `aud`) or a request (`path`) into a line.
pub(crate) const MAX_TOKEN_FIELD_CHARS: usize = 256;
/// Longest human detail in a line.
const MAX_DETAIL_CHARS: usize = 512;

/// Lines the log buffer holds unless configured (`--log-buffer`): about 2 MiB of typical
/// decision lines, a few hundred milliseconds of traffic at full speed.
pub const DEFAULT_LOG_BUFFER_LINES: usize = 4096;
/// How often an idle writer looks for drops it has not reported yet.
const DROP_CHECK_PERIOD: Duration = Duration::from_millis(200);
/// How long the writer waits, after a first line, for more to write along with it.
const LINGER: Duration = Duration::from_millis(1);
/// Bytes gathered into one write at most.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// How long [`LogSink::flush`] sleeps before retrying a full buffer.
const FLUSH_RETRY: Duration = Duration::from_millis(5);
/// How long shutdown waits for the writer to drain the buffer.
pub(crate) const FLUSH_PATIENCE: Duration = Duration::from_secs(10);

/// The `result` of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DecisionResult {
    Allow,
    Deny,
}

/// `event: "auth.validate"`: the decision line of one inbound request (DESIGN.md, "The decision
/// log line"). Absent values are `null`, so every line has the same fields.
#[derive(Debug, Serialize)]
pub(crate) struct DecisionEvent<'a> {
    pub ts: String,
    pub event: &'static str,
    pub preview_id: &'a str,
    pub service: &'a str,
    /// `iss` as the token claims it (unverified on deny).
    pub caller_iss: Option<String>,
    /// The verified caller; `null` unless the token verified.
    pub caller: Option<String>,
    pub result: DecisionResult,
    pub reason: ReasonCode,
    pub expected_aud: &'a str,
    pub actual_aud: Option<String>,
    pub kid: Option<String>,
    pub method: String,
    /// The request path as received, without the query (a query may hold a token).
    pub path: String,
    pub request_id: &'a str,
    pub latency_us: u64,
    pub registry_version: u64,
    /// Expected vs actual, in words (never the token).
    pub detail: Option<String>,
    /// The token's `iat` and `exp` (unverified on deny), so `pvid explain` can name clock skew.
    pub token_iat: Option<f64>,
    /// See `token_iat`.
    pub token_exp: Option<f64>,
}

/// `event: "auth.mint"`: one egress request.
#[derive(Debug, Serialize)]
pub(crate) struct MintEvent<'a> {
    pub ts: String,
    pub event: &'static str,
    pub preview_id: &'a str,
    pub service: &'a str,
    pub callee: Option<String>,
    pub audience: Option<String>,
    pub kid: Option<&'a str>,
    /// `ok` or `error`.
    pub result: &'static str,
    /// `minted`, `cached`, or the error code.
    pub reason: &'static str,
    pub method: String,
    pub path: String,
    pub request_id: &'a str,
    pub latency_us: u64,
    pub registry_version: u64,
    pub detail: Option<String>,
}

/// `event: "registry.loaded"` or `"registry.reload_failed"`.
#[derive(Debug, Serialize)]
pub(crate) struct RegistryEvent<'a> {
    pub ts: String,
    pub event: &'static str,
    pub preview_id: &'a str,
    pub service: &'a str,
    pub path: String,
    /// The version in force after this event.
    pub registry_version: u64,
    pub previous_version: Option<u64>,
    /// The preview state in force after this event.
    pub state: &'static str,
    pub error: Option<String>,
}

/// `event: "key.loaded"` (the sidecar signs with the key the registry names now) or
/// `"key.reload_failed"` (it could not get that key and keeps signing with `previous_kid`).
#[derive(Debug, Serialize)]
pub(crate) struct KeyEvent<'a> {
    pub ts: String,
    pub event: &'static str,
    pub preview_id: &'a str,
    pub service: &'a str,
    /// The key the registry says to sign with.
    pub kid: &'a str,
    /// The key signed with until now.
    pub previous_kid: Option<String>,
    pub registry_version: u64,
    pub error: Option<String>,
}

/// `event: "conn.limit"`: a connection or request refused or closed by a limit before (or
/// instead of) an auth decision: `header_too_large` 431, `bad_request` 400, `header_timeout` 408,
/// `too_many_connections` 503, `idle_timeout` (closed, no status).
#[derive(Debug, Serialize)]
pub(crate) struct LimitEvent<'a> {
    pub ts: String,
    pub event: &'static str,
    pub preview_id: &'a str,
    pub service: &'a str,
    /// `inbound` or `egress`.
    pub listener: &'static str,
    pub result: &'static str,
    pub reason: &'static str,
    /// The status answered, if any was.
    pub status: Option<u16>,
    /// The client's address.
    pub peer: String,
    /// How many refusals this line stands for (refusals are logged at most once a second).
    pub count: u64,
    pub detail: String,
}

/// `event: "otlp.export_failed"` (once per distinct cause) or `"otlp.recovered"`. Written to the
/// log only, never exported.
#[derive(Debug, Serialize)]
pub(crate) struct OtlpEvent<'a> {
    pub ts: String,
    pub event: &'static str,
    pub preview_id: &'a str,
    pub service: &'a str,
    pub endpoint: String,
    /// Records dropped with the batch that failed.
    pub dropped: u64,
    pub error: Option<String>,
}

/// The one place an event becomes a line.
fn encode_line<E: Serialize>(event: &E) -> Option<String> {
    let mut line = serde_json::to_string(event).ok()?;
    line.push('\n');
    Some(line)
}

/// Cuts a string to `max` characters.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => s[..i].to_owned(),
        None => s.to_owned(),
    }
}

/// Cuts a token-derived string to [`MAX_TOKEN_FIELD_CHARS`].
pub(crate) fn clip_field(s: &str) -> String {
    clip(s, MAX_TOKEN_FIELD_CHARS)
}

/// Cuts a human detail.
pub(crate) fn clip_detail(s: &str) -> String {
    clip(s, MAX_DETAIL_CHARS)
}

/// `2026-12-03T10:00:00.123Z` from Unix seconds (RFC 3339, UTC, milliseconds).
pub(crate) fn rfc3339_millis(unix_seconds: f64) -> String {
    let nanos = if unix_seconds.is_finite() { (unix_seconds * 1e9) as i128 } else { 0 };
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// What travels through the buffer to the writer thread.
enum Msg {
    Line(String),
    /// Answered once every line queued before it is written (shutdown).
    Flush(oneshot::Sender<()>),
}

/// Counters of the log buffer (rendered by `metrics.rs`).
#[derive(Debug, Default)]
pub(crate) struct LogStats {
    /// Lines dropped because the buffer was full (or the writer was gone).
    pub dropped: AtomicU64,
}

/// Who writes: the fields of the writer's own `log.dropped` lines.
pub(crate) struct Origin {
    pub preview: String,
    pub service: String,
    pub clock: Arc<dyn Clock>,
}

/// `event: "log.dropped"`: lines the buffer had no room for since the previous such line.
/// Written by the writer itself, so it cannot be dropped in turn.
#[derive(Debug, Serialize)]
struct DroppedEvent<'a> {
    ts: String,
    event: &'static str,
    preview_id: &'a str,
    service: &'a str,
    /// Lines lost since the previous `log.dropped` line.
    dropped: u64,
    detail: String,
}

/// The writer thread's state: where lines go, and the drops it has already reported.
struct LineWriter {
    out: Box<dyn Write + Send>,
    origin: Origin,
    stats: Arc<LogStats>,
    capacity: usize,
    batch: String,
    reported_drops: u64,
    reported_error: bool,
}

impl LineWriter {
    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut backlog = false;
        loop {
            // Idle, it still wakes now and then: drops may have happened after the last line.
            let first = match rx.recv_timeout(DROP_CHECK_PERIOD) {
                Ok(msg) => Some(msg),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            // Let company gather, then write everything queued at once. A sleeping writer is not
            // waiting on the channel, so the requests' sends wake no thread: a busy sidecar pays
            // one wake-up and one write per LINGER, not per line. (No pause with a backlog.)
            if first.is_some() && !backlog {
                std::thread::sleep(LINGER);
            }
            let mut acks = Vec::new();
            let mut next = first;
            backlog = false;
            while let Some(msg) = next {
                match msg {
                    Msg::Line(text) => self.batch.push_str(&text),
                    Msg::Flush(ack) => acks.push(ack),
                }
                backlog = self.batch.len() >= MAX_BATCH_BYTES;
                next = if backlog { None } else { rx.try_recv().ok() };
            }
            self.write_batch();
            self.report_drops();
            for ack in acks {
                let _ = ack.send(());
            }
        }
        self.write_batch();
        self.report_drops();
    }

    fn write_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // Whole lines only: with O_APPEND, lines from several writers never interleave. (A File
        // has no buffer to flush; stdout's is flushed so the lines leave now.)
        let written = self.out.write_all(self.batch.as_bytes()).and_then(|()| self.out.flush());
        if let Err(e) = written {
            report_once(&mut self.reported_error, "cannot write log line", &e);
        }
        self.batch.clear();
    }

    /// One `log.dropped` line for the drops not reported yet, if any.
    fn report_drops(&mut self) {
        let total = self.stats.dropped.load(Ordering::Relaxed);
        if total <= self.reported_drops {
            return;
        }
        let event = DroppedEvent {
            ts: rfc3339_millis(self.origin.clock.now()),
            event: "log.dropped",
            preview_id: &self.origin.preview,
            service: &self.origin.service,
            dropped: total - self.reported_drops,
            detail: format!("the log buffer ({} lines) was full: the writer could not keep up", self.capacity),
        };
        self.reported_drops = total;
        if let Some(line) = encode_line(&event) {
            self.batch.push_str(&line);
            self.write_batch();
        }
    }
}

fn report_once(reported: &mut bool, what: &str, e: &std::io::Error) {
    // The log itself is broken; say so once where an operator may see it.
    if !*reported {
        eprintln!("pvid proxy: {what}: {e}");
        *reported = true;
    }
}

/// The evidence chain, written from the request's task (see [`LogSink`]).
struct EvidenceWriter {
    chain: EvidenceChain,
    reported_error: bool,
}

/// Writes log lines without waiting for I/O. Cheap to clone.
///
/// Lines go into a bounded buffer ([`DEFAULT_LOG_BUFFER_LINES`] lines unless configured) that a
/// writer thread drains into the file or stdout; a full buffer drops the line and counts it
/// (`pvid_log_lines_dropped_total`, and a `log.dropped` line once the writer can write again). A
/// slow disk or a stalled stdout reader therefore costs log lines, never request latency.
///
/// The evidence chain (`--evidence`) is not buffered: a decision is appended to it in the
/// request's task, under a lock, before the request goes on, as every line used to be. Evidence
/// must be complete, and a buffer with backpressure would still lose what it holds when the
/// process is killed; the chain is a regular file (a page-cache append), so this costs the
/// request microseconds, not a reader's whims (design-notes 24).
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::SyncSender<Msg>,
    stats: Arc<LogStats>,
    evidence: Option<Arc<Mutex<EvidenceWriter>>>,
    /// Also offers each line for OTLP export, when configured.
    otlp: Option<OtlpQueue>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogSink")
    }
}

impl LogSink {
    /// Opens the target and starts the writer thread, which ends (after writing what is
    /// queued) when the last sink is dropped. Decisions are also appended to `evidence` when
    /// given. `capacity`: lines the buffer holds (at least 1).
    pub(crate) fn open(
        target: &LogTarget,
        capacity: usize,
        origin: Origin,
        evidence: Option<EvidenceChain>,
        stats: Arc<LogStats>,
    ) -> Result<LogSink, ProxyError> {
        let out: Box<dyn Write + Send> = match target {
            LogTarget::File(path) => {
                // `PVID_HOME/logs/<svc>.log` is where `pvid explain` and `pvid logs` look first.
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|source| ProxyError::OpenLog { path: path.clone(), source })?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| ProxyError::OpenLog { path: path.clone(), source })?;
                Box::new(file)
            }
            LogTarget::Stdout => Box::new(std::io::stdout()),
        };
        let capacity = capacity.max(1);
        let writer = LineWriter {
            out,
            origin,
            stats: stats.clone(),
            capacity,
            batch: String::new(),
            reported_drops: 0,
            reported_error: false,
        };
        let (tx, rx) = mpsc::sync_channel::<Msg>(capacity);
        std::thread::Builder::new()
            .name("pvid-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| ProxyError::StartLogWriter { source })?;
        let evidence = evidence.map(|chain| Arc::new(Mutex::new(EvidenceWriter { chain, reported_error: false })));
        Ok(LogSink { tx, stats, evidence, otlp: None })
    }

    /// This sink, also offering every line it writes to `queue`.
    pub(crate) fn with_otlp(self, queue: OtlpQueue) -> LogSink {
        LogSink { otlp: Some(queue), ..self }
    }

    /// Queues one event for the writer, never waiting for I/O; a full buffer drops (and counts)
    /// the line. A decision goes into the evidence chain, when there is one, before this returns.
    pub(crate) fn record<E: Serialize>(&self, event: &E) {
        let Some(text) = encode_line(event) else { return };
        if let Some(evidence) = &self.evidence {
            let mut w = evidence.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = w.chain.append_if_decision(text.trim_end(), unix_ms()) {
                report_once(&mut w.reported_error, "cannot append to the evidence file", &e);
            }
        }
        // Export never waits either (its own bounded queue).
        if let Some(queue) = &self.otlp {
            queue.offer(text.trim_end_matches('\n').to_owned());
        }
        if self.tx.try_send(Msg::Line(text)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every line queued before this call is written (or the writer is gone). Never
    /// blocks the runtime: a full buffer is retried, so bound this with a timeout.
    pub(crate) async fn flush(&self) {
        let (ack, written) = oneshot::channel();
        let mut msg = Msg::Flush(ack);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(mpsc::TrySendError::Full(m)) => {
                    msg = m;
                    tokio::time::sleep(FLUSH_RETRY).await;
                }
                Err(mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
        let _ = written.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_millis(1_796_299_200.0), "2026-12-03T12:00:00.000Z");
        assert_eq!(rfc3339_millis(1_796_299_200.123_4), "2026-12-03T12:00:00.123Z");
        assert_eq!(rfc3339_millis(f64::NAN), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn clip_cuts_on_character_boundaries() {
        assert_eq!(clip("abc", 2), "ab");
        assert_eq!(clip("ééé", 2), "éé");
        assert_eq!(clip("ab", 5), "ab");
        assert_eq!(clip_field(&"k".repeat(1000)).len(), MAX_TOKEN_FIELD_CHARS);
    }

    #[test]
    fn a_value_holding_a_newline_stays_on_one_line() {
        #[derive(Serialize)]
        struct E {
            kid: String,
        }
        let line = encode_line(&E { kid: "a\nb\r\u{2028}".into() }).unwrap_or_default();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(line.ends_with('\n'));
    }
}
