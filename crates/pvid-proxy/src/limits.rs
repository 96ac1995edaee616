//! What one client may hold or send, and the per-connection watchdog that enforces the time
//! limits (docs/limits.md has the table and the reasons behind the defaults).
//!
//! Sizes are enforced by hyper (header block and header count: 431) and by the inbound checks
//! (token: 401 `token_too_large`). Connections are counted in `server.rs` (503 when full). Time
//! is enforced here, because hyper has a single header timer that also ends idle keep-alive
//! connections, and the two want different values:
//!
//! - **header timeout**: from the first byte of a request (or from accept, for a client that sends
//!   nothing) until its header block is complete: slowloris. Answered `408` with a JSON body.
//! - **idle timeout**: a keep-alive connection with no request in progress, or a request during
//!   which no byte moves in either direction (a stalled upload, a client that stopped reading).
//!   The connection is closed; a stalled request is aborted.
//!
//! [`GuardedIo`] wraps the client socket and records activity in a [`ConnState`]; the request
//! [`Ticket`] marks when a request is in progress (from its head until its response body is
//! done). [`ConnState::expired`] completes when a limit is crossed. When the connection is
//! dropped, [`GuardedIo`] hands the socket back so the server can still write the 408.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

/// Limits of one listener. The defaults suit a sidecar in front of one service of a preview.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; one more is answered `503 too_many_connections` and closed.
    pub max_connections: usize,
    /// Largest request header block (request line included); above it hyper answers `431`.
    pub max_header_bytes: usize,
    /// Most header fields in one request; above it hyper answers `431`.
    pub max_headers: usize,
    /// Time from the first byte of a request (or from accept) to the end of its headers; then
    /// `408 header_timeout`.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may sit without a request, and a request may go without a
    /// byte moving either way; then the connection is closed (`idle_timeout`).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 512,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Which limit ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Headers did not arrive in time.
    HeaderTimeout,
    /// Nothing happened for the idle timeout; `in_request` when a request was in progress.
    Idle { in_request: bool },
}

#[derive(Debug)]
struct Activity {
    in_flight: usize,
    served: u64,
    /// Accept time, or when the last request in progress finished.
    mark: Instant,
    /// First byte read after `mark` while no request was in progress: a new request started.
    first_read_after_mark: Option<Instant>,
    /// Last byte read from or written to the client.
    last_io: Instant,
}

/// Activity of one connection, shared by its socket wrapper, its requests and its watchdog.
#[derive(Debug)]
pub(crate) struct ConnState {
    activity: Mutex<Activity>,
    changed: Notify,
}

impl ConnState {
    pub(crate) fn new() -> Arc<ConnState> {
        let now = Instant::now();
        Arc::new(ConnState {
            activity: Mutex::new(Activity {
                in_flight: 0,
                served: 0,
                mark: now,
                first_read_after_mark: None,
                last_io: now,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Activity> {
        // Every update is a few field writes that cannot be left half-done by a panic.
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn on_read(&self) {
        let mut a = self.lock();
        let now = Instant::now();
        a.last_io = now;
        if a.in_flight == 0 && a.first_read_after_mark.is_none() {
            a.first_read_after_mark = Some(now);
            drop(a);
            // The header deadline may now come before the idle one.
            self.changed.notify_one();
        }
    }

    fn on_write(&self) {
        self.lock().last_io = Instant::now();
    }

    /// A request's head has been read: it is in progress until the ticket is dropped.
    pub(crate) fn begin_request(self: &Arc<Self>) -> Ticket {
        {
            let mut a = self.lock();
            a.in_flight += 1;
            a.served += 1;
            a.first_read_after_mark = None;
            a.last_io = Instant::now();
        }
        self.changed.notify_one();
        Ticket(self.clone())
    }

    fn end_request(&self) {
        {
            let mut a = self.lock();
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 {
                let now = Instant::now();
                a.mark = now;
                a.last_io = now;
                a.first_read_after_mark = None;
            }
        }
        self.changed.notify_one();
    }

    /// The next deadline and what crossing it means.
    fn deadline(&self, limits: &Limits) -> (Instant, Expiry) {
        let a = self.lock();
        if a.in_flight > 0 {
            (a.last_io + limits.idle_timeout, Expiry::Idle { in_request: true })
        } else if let Some(started) = a.first_read_after_mark {
            (started + limits.header_read_timeout, Expiry::HeaderTimeout)
        } else if a.served == 0 {
            // Connected and sent nothing: the first request's headers are late too.
            (a.mark + limits.header_read_timeout, Expiry::HeaderTimeout)
        } else {
            (a.mark + limits.idle_timeout, Expiry::Idle { in_request: false })
        }
    }

    /// Completes when a time limit is crossed.
    pub(crate) async fn expired(&self, limits: &Limits) -> Expiry {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            // Register before reading the state, so a change in between still wakes us.
            notified.as_mut().enable();
            let (deadline, expiry) = self.deadline(limits);
            if deadline <= Instant::now() {
                return expiry;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = notified => {}
            }
        }
    }
}

/// A request in progress; dropping it (when the response body is done) ends it.
#[derive(Debug)]
pub(crate) struct Ticket(Arc<ConnState>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.end_request();
    }
}

/// A response body that keeps its request's [`Ticket`] until hyper has sent it (or dropped it).
pub(crate) struct TrackedBody<B> {
    inner: B,
    _ticket: Ticket,
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, ticket: Ticket) -> TrackedBody<B> {
        TrackedBody { inner, _ticket: ticket }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for TrackedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client socket, recording activity; handed back through `handback` when dropped.
pub(crate) struct GuardedIo {
    stream: Option<TcpStream>,
    state: Arc<ConnState>,
    handback: Option<oneshot::Sender<TcpStream>>,
}

impl GuardedIo {
    /// Wraps `stream`; the receiver gets it back once the wrapper is dropped.
    pub(crate) fn new(stream: TcpStream, state: Arc<ConnState>) -> (GuardedIo, oneshot::Receiver<TcpStream>) {
        let (tx, rx) = oneshot::channel();
        (GuardedIo { stream: Some(stream), state, handback: Some(tx) }, rx)
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.stream.as_mut().ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        if let (Some(stream), Some(tx)) = (self.stream.take(), self.handback.take()) {
            // Nobody waiting means nobody needs it: the socket is closed with the value.
            let _ = tx.send(stream);
        }
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(this.stream()?).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.state.on_read();
        }
        result
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(this.stream()?).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.state.on_write();
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(this.stream()?).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.state.on_write();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(TcpStream::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().stream()?).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_sends_nothing_meets_the_header_timeout() {
        let state = ConnState::new();
        let started = Instant::now();
        assert_eq!(state.expired(&limits()).await, Expiry::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_keep_alive_connection_meets_the_idle_timeout_and_a_new_request_the_header_one() {
        let state = ConnState::new();
        drop(state.begin_request());
        let started = Instant::now();
        assert_eq!(state.expired(&limits()).await, Expiry::Idle { in_request: false });
        assert_eq!(started.elapsed(), Duration::from_secs(60));

        // A byte of the next request arrives: its headers now have 10 s.
        let state = ConnState::new();
        drop(state.begin_request());
        tokio::time::advance(Duration::from_secs(30)).await;
        state.on_read();
        let started = Instant::now();
        assert_eq!(state.expired(&limits()).await, Expiry::HeaderTimeout);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_expires_only_when_nothing_moves() {
        let state = ConnState::new();
        let ticket = state.begin_request();
        let watch = {
            let state = state.clone();
            tokio::spawn(async move { state.expired(&limits()).await })
        };
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(50)).await;
            state.on_write();
        }
        assert!(!watch.is_finished(), "activity keeps a request alive past the idle timeout");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(watch.await.unwrap(), Expiry::Idle { in_request: true });
        drop(ticket);
    }
}
