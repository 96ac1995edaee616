//! Small HTTP helpers for the demo: a client call and a loopback echo service.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

/// A pooled HTTP/1 client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// The answer to a call: status and JSON body (or `null`).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    /// Set by the caller when it saw the upstream's hit counter move.
    pub reached_upstream: bool,
}

/// Sends one request and reads the whole answer.
pub async fn call(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(Bytes::new()))?).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok(Answer { status, body: serde_json::from_slice(&bytes).unwrap_or(Value::Null), reached_upstream: false })
}

/// A loopback service that answers every request with what it received: its name, method, path,
/// the identity headers pvid set, and whether any `Authorization` header reached it.
pub struct EchoService {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

/// Starts an echo service on an ephemeral loopback port.
pub async fn start_echo(name: &str) -> anyhow::Result<EchoService> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let hits = Arc::new(AtomicU64::new(0));
    let (name, counter) = (name.to_owned(), hits.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (name, counter) = (name.clone(), counter.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let h = |k: &str| req.headers().get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let body = json!({
                        "service": name,
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "caller": h("x-pvid-caller"),
                        "preview": h("x-pvid-preview"),
                        "request_id": h("x-request-id"),
                        "saw_authorization": req.headers().contains_key(hyper::header::AUTHORIZATION),
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body.to_string())))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(EchoService { addr, hits })
}
