//! Accepting connections and serving HTTP/1.1 (keep-alive) on them with hyper.
//!
//! Limits: the header block may be up to [`MAX_HEADER_BYTES`], well above the 8 KiB token limit,
//! so an oversized `Authorization` is answered by the sidecar (`token_too_large`, logged) rather
//! than by hyper's bare 431. Headers must arrive within [`HEADER_READ_TIMEOUT`].
//! On shutdown the listener stops accepting and open connections finish their current request
//! within [`SHUTDOWN_GRACE`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::shared::Shared;
use crate::{egress, inbound};

/// Largest request header block accepted.
pub(crate) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Time allowed for a client to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time open connections get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

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

fn builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES + 8 * 1024);
    b
}

/// Serves `listener` until `stop` turns true, then drains open connections.
pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, role: Role, mut stop: watch::Receiver<bool>) {
    let builder = builder();
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_connection(builder.clone(), stream, shared.clone(), role, stop.clone()));
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

async fn serve_connection(
    builder: http1::Builder,
    stream: tokio::net::TcpStream,
    shared: Arc<Shared>,
    role: Role,
    mut stop: watch::Receiver<bool>,
) {
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move {
            Ok::<_, Infallible>(match role {
                Role::Inbound => inbound::handle(shared, req).await,
                Role::Egress => egress::handle(shared, req).await,
            })
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
