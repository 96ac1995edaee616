//! Accepting connections and serving HTTP/1.1 (keep-alive) on them with hyper, within
//! [`Limits`]: at most `max_connections` at once (one more gets `503 too_many_connections`), a
//! bounded header block and header count (hyper's `431`), and the header and idle timeouts of
//! `limits.rs`. Every refusal or close by a limit is logged as one `conn.limit` line.
//!
//! The header block may be up to `max_header_bytes` (64 KiB by default), well above the 8 KiB
//! token limit, so an oversized `Authorization` is answered by the sidecar (`token_too_large`,
//! logged) rather than by hyper's bare 431. Bodies are streamed both ways, never buffered.
//! On shutdown the listener stops accepting and open connections finish their current request
//! within [`SHUTDOWN_GRACE`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::limits::{ConnState, Expiry, GuardedIo, Limits, TrackedBody};
use crate::log::{LimitEvent, clip_detail, rfc3339_millis};
use crate::respond;
use crate::shared::Shared;
use crate::{egress, inbound};

/// Time open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Time allowed to write a refusal (503, 408) to a client before the socket is dropped.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Refusals being written at once; beyond this, connections over the limit are just closed.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;
/// Refused connections are logged at most once per this period (the line counts them).
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(1);

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Egress,
    Inbound,
}

/// Completes once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in the caller's future.
    let _ = stop.wait_for(|s| *s).await;
}

fn builder(limits: &Limits) -> http1::Builder {
    let mut b = http1::Builder::new();
    // hyper's own header timer is off: `limits.rs` runs a header and an idle timeout of its own.
    b.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_headers(limits.max_headers)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes + 8 * 1024);
    b
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Egress => "egress",
            Role::Inbound => "inbound",
        }
    }
}

/// Everything one listener's connections share.
struct Listener {
    shared: Arc<Shared>,
    role: Role,
    limits: Limits,
    builder: http1::Builder,
}

impl Listener {
    /// Logs one `conn.limit` line.
    async fn log_limit(&self, reason: &'static str, status: Option<StatusCode>, peer: SocketAddr, count: u64, detail: String) {
        let line = LimitEvent {
            ts: rfc3339_millis(self.shared.clock.now()),
            event: "conn.limit",
            preview_id: self.shared.preview.as_str(),
            service: self.shared.service.as_str(),
            listener: self.role.as_str(),
            result: "deny",
            reason,
            status: status.map(|s| s.as_u16()),
            peer: peer.to_string(),
            count,
            detail: clip_detail(&detail),
        };
        self.shared.log.record(&line);
    }
}

/// Refused connections since the last `too_many_connections` line.
struct RefusalLog {
    last: Option<Instant>,
    pending: u64,
}

/// Serves `listener` until `stop` turns true, then drains open connections.
pub(crate) async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    role: Role,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let refusing = Arc::new(AtomicUsize::new(0));
    let me = Arc::new(Listener { builder: builder(&limits), shared, role, limits });
    let mut refusals = RefusalLog { last: None, pending: 0 };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            conns.spawn(serve_connection(me.clone(), stream, peer, permit, stop.clone()));
                        }
                        Err(_) => refuse(&me, stream, peer, &refusing, &mut refusals),
                    }
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
        }
        while conns.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        conns.abort_all();
    }
}

/// Answers a connection over `max_connections` with a 503 and closes it, without reading it.
/// Bounded: at most [`MAX_REFUSALS_IN_FLIGHT`] answers are written at once (others are closed
/// unanswered) and the log gets at most one line per [`REFUSAL_LOG_PERIOD`].
fn refuse(me: &Arc<Listener>, mut stream: TcpStream, peer: SocketAddr, refusing: &Arc<AtomicUsize>, log: &mut RefusalLog) {
    log.pending += 1;
    let now = Instant::now();
    if log.last.is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_PERIOD) {
        let (me, count) = (me.clone(), std::mem::take(&mut log.pending));
        log.last = Some(now);
        let detail = format!("{} connections are open on the {} listener", me.limits.max_connections, me.role.as_str());
        tokio::spawn(async move {
            me.log_limit("too_many_connections", Some(StatusCode::SERVICE_UNAVAILABLE), peer, count, detail).await;
        });
    }
    if refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSALS_IN_FLIGHT {
        refusing.fetch_sub(1, Ordering::SeqCst);
        return; // dropped: closed unanswered
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        let answer = respond::raw_error(StatusCode::SERVICE_UNAVAILABLE, "too_many_connections");
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            stream.write_all(&answer).await?;
            stream.shutdown().await
        })
        .await;
        refusing.fetch_sub(1, Ordering::SeqCst);
    });
}

async fn serve_connection(
    me: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    _slot: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let state = ConnState::new();
    let (io, handback) = GuardedIo::new(stream, state.clone());
    let (shared, role) = (me.shared.clone(), me.role);
    let requests = state.clone();
    let service = service_fn(move |req| {
        // The head is read: the request is in progress until its response body is sent.
        let ticket = requests.begin_request();
        let shared = shared.clone();
        async move {
            let resp = match role {
                Role::Inbound => inbound::handle(shared, req).await,
                Role::Egress => egress::handle(shared, req).await,
            };
            Ok::<_, Infallible>(resp.map(|body| TrackedBody::new(body, ticket).boxed()))
        }
    });
    let mut conn = Box::pin(me.builder.serve_connection(TokioIo::new(io), service));
    let expiry = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                log_protocol_error(&me, peer, &e).await;
            }
            return;
        }
        expiry = state.expired(&me.limits) => expiry,
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
            return;
        }
    };
    drop(conn);
    match expiry {
        Expiry::HeaderTimeout => {
            if let Ok(mut stream) = handback.await {
                let answer = respond::raw_error(StatusCode::REQUEST_TIMEOUT, "header_timeout");
                let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                    stream.write_all(&answer).await?;
                    stream.shutdown().await
                })
                .await;
            }
            let detail = format!("request headers not complete within {:?}", me.limits.header_read_timeout);
            me.log_limit("header_timeout", Some(StatusCode::REQUEST_TIMEOUT), peer, 1, detail).await;
        }
        Expiry::Idle { in_request } => {
            let detail = if in_request {
                format!("request aborted: no byte moved either way for {:?}", me.limits.idle_timeout)
            } else {
                format!("keep-alive connection idle for {:?}", me.limits.idle_timeout)
            };
            me.log_limit("idle_timeout", None, peer, 1, detail).await;
        }
    }
}

/// Logs what hyper refused (it has already answered): an oversized header block or too many
/// fields (431), or a request it could not parse (400: obs-fold, bad framing, bad target).
/// Client disconnects and I/O errors are not limits and are not logged.
async fn log_protocol_error(me: &Listener, peer: SocketAddr, e: &hyper::Error) {
    if e.is_parse_too_large() {
        let detail = format!(
            "header block over {} bytes or more than {} fields",
            me.limits.max_header_bytes, me.limits.max_headers
        );
        me.log_limit("header_too_large", Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE), peer, 1, detail).await;
    } else if e.is_parse() {
        me.log_limit("bad_request", Some(StatusCode::BAD_REQUEST), peer, 1, e.to_string()).await;
    }
}
