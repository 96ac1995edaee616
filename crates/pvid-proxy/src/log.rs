//! The sidecar's log lines: one typed struct per event kind, turned into one JSON line in exactly
//! one place ([`encode_line`]).
//!
//! A decision must be on record before it takes effect: [`LogSink::record`] returns once the line
//! is written, so the line of a request is always in the file before its response leaves the
//! sidecar. A log file is appended to in place (cheap: page cache); standard output, which may be
//! a pipe, is written by a dedicated thread that the request waits for, so a slow reader stalls
//! that thread and not the async runtime.
//!
//! Tokens never reach this module: events hold only what DESIGN.md's decision line names, and
//! every string read from a token is cut to [`MAX_TOKEN_FIELD_CHARS`]. JSON escaping keeps a value
//! holding a newline on one line.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use pvid_core::ReasonCode;
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

struct Line {
    text: String,
    written: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Line")
    }
}

/// Where lines go (a file or stdout) and the evidence chain that follows them.
struct LineWriter {
    out: Box<dyn Write + Send>,
    evidence: Option<EvidenceChain>,
    reported: bool,
}

impl LineWriter {
    fn write(&mut self, text: &str) {
        // One write per line: with O_APPEND, lines from several writers never interleave. (A
        // File has no buffer to flush; stdout's is flushed so the line leaves now.)
        if let Err(e) = self.out.write_all(text.as_bytes()).and_then(|()| self.out.flush()) {
            report_once(&mut self.reported, "cannot write log line", &e);
        }
        if let Some(chain) = self.evidence.as_mut()
            && let Err(e) = chain.append_if_decision(text.trim_end(), unix_ms())
        {
            report_once(&mut self.reported, "cannot append to the evidence file", &e);
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

/// Where [`LogSink::record`] puts a line.
#[derive(Clone)]
enum Writer {
    /// A regular file: written in place, under a lock. A page-cache append costs a few
    /// microseconds, far less than handing the line to a thread and waiting for its answer
    /// (two context switches per request; see docs/PERFORMANCE.md).
    File(Arc<Mutex<LineWriter>>),
    /// Standard output, which may be a pipe a slow reader drains: written by a dedicated thread
    /// so a full pipe stalls that thread, not the async runtime.
    Thread(mpsc::Sender<Line>),
}

/// Writes log lines. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LogSink {
    writer: Writer,
    /// Also offers each written line for OTLP export, when configured.
    otlp: Option<OtlpQueue>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.writer {
            Writer::File(_) => "LogSink(file)",
            Writer::Thread(_) => "LogSink(stdout)",
        })
    }
}

impl LogSink {
    /// Opens the target (for stdout, starts the writer thread, which ends when the last sink is
    /// dropped). Decision lines are also appended to `evidence` when given, after the log line.
    pub(crate) fn open(target: &LogTarget, evidence: Option<EvidenceChain>) -> Result<LogSink, ProxyError> {
        let writer = match target {
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
                Writer::File(Arc::new(Mutex::new(LineWriter { out: Box::new(file), evidence, reported: false })))
            }
            LogTarget::Stdout => {
                let mut out = LineWriter { out: Box::new(std::io::stdout()), evidence, reported: false };
                let (tx, rx) = mpsc::channel::<Line>();
                std::thread::Builder::new()
                    .name("pvid-log".into())
                    .spawn(move || {
                        for line in rx {
                            out.write(&line.text);
                            if let Some(done) = line.written {
                                let _ = done.send(());
                            }
                        }
                    })
                    .map_err(|source| ProxyError::StartLogWriter { source })?;
                Writer::Thread(tx)
            }
        };
        Ok(LogSink { writer, otlp: None })
    }

    /// This sink, also offering every line it writes to `queue`.
    pub(crate) fn with_otlp(self, queue: OtlpQueue) -> LogSink {
        LogSink { otlp: Some(queue), ..self }
    }

    /// Writes one event; returns once it is written (a decision is on record before it takes
    /// effect).
    pub(crate) async fn record<E: Serialize>(&self, event: &E) {
        let Some(text) = encode_line(event) else { return };
        let export = self.otlp.as_ref().map(|q| (q, text.trim_end_matches('\n').to_owned()));
        match &self.writer {
            Writer::File(w) => w.lock().unwrap_or_else(PoisonError::into_inner).write(&text),
            Writer::Thread(tx) => {
                let (done, written) = oneshot::channel();
                if tx.send(Line { text, written: Some(done) }).is_ok() {
                    let _ = written.await;
                }
            }
        }
        // After the write: the file is the record of truth; export never waits.
        if let Some((queue, line)) = export {
            queue.offer(line);
        }
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
