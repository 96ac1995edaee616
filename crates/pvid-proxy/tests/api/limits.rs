//! Limits and slow clients: every limit answers with a clear status (or closes an idle
//! connection) and writes one `conn.limit` line; nothing is buffered without bound; nothing over a
//! limit reaches the upstream. Timeouts are set short here (hundreds of ms) and every wait is a
//! bounded read or poll, never a fixed sleep that the assertion depends on.

use std::net::SocketAddr;
use std::time::Duration;

use pvid_proxy::Limits;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::support::*;

async fn payments_with(limits: Limits) -> (Keys, World, Sidecar) {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let config = world.config("payments", std::sync::Arc::new(pvid_core::FixedClock(NOW)));
    let sidecar = Sidecar::start_with_limits(config, limits).await;
    (keys, world, sidecar)
}

/// Reads until the peer closes (bounded).
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the sidecar closes the connection within 10 s")
        .unwrap_or_default();
    out
}

fn status_of(raw: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(raw);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line in {text:?}"))
}

fn body_json(raw: &[u8]) -> Value {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    serde_json::from_slice(&raw[split..]).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(raw)))
}

async fn limit_line(sidecar: &Sidecar, reason: &str) -> Value {
    let r = reason.to_owned();
    sidecar.wait_for_line(&format!("conn.limit {reason}"), move |l| l["event"] == "conn.limit" && l["reason"] == r).await
}

#[tokio::test]
async fn a_header_block_over_the_limit_gets_431_and_a_log_line_and_never_reaches_upstream() {
    let (keys, world, sidecar) = payments_with(Limits::default()).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let pad = "a".repeat(70 * 1024);
    let reply = send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Pad", &pad)], b"").await;
    assert_eq!(reply.status, 431);
    let line = limit_line(&sidecar, "header_too_large").await;
    assert_eq!((line["status"].clone(), line["result"].clone(), line["listener"].clone()), (431.into(), "deny".into(), "inbound".into()));
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
    assert_eq!(world.echo.hits(), 0);
    let text = std::fs::read_to_string(&sidecar.log).unwrap();
    assert!(!text.contains(signature_of(auth.trim_start_matches("Bearer "))), "token in the log");
}

#[tokio::test]
async fn more_header_fields_than_allowed_get_431() {
    let limits = Limits { max_headers: 20, ..Limits::default() };
    let (keys, world, sidecar) = payments_with(limits).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let names: Vec<String> = (0..25).map(|i| format!("X-Field-{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    headers.push(("Authorization", &auth));
    let reply = send(sidecar.inbound, "POST", "/charge", &headers, b"").await;
    assert_eq!(reply.status, 431);
    limit_line(&sidecar, "header_too_large").await;
    assert_eq!(world.echo.hits(), 0);
    // Under the limit the same request goes through.
    let reply = send(sidecar.inbound, "POST", "/charge", &headers[10..], b"").await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_gets_408_and_the_connection_closes() {
    let limits = Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() };
    let (_keys, world, sidecar) = payments_with(limits).await;
    let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
    s.write_all(b"POST /charge HTTP/1.1\r\nHost: payments\r\n").await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Slowloris: one header line every 50 ms, for up to 10 s, until the sidecar gives up.
    let trickle = tokio::spawn(async move {
        for i in 0..200 {
            if wr.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut raw)).await.expect("closed within 10 s").ok();
    trickle.abort();
    assert_eq!(status_of(&raw), 408, "{}", String::from_utf8_lossy(&raw));
    assert_eq!(body_json(&raw)["reason"], "header_timeout");
    let line = limit_line(&sidecar, "header_timeout").await;
    assert_eq!(line["status"], 408);
    assert_eq!(world.echo.hits(), 0);
}

#[tokio::test]
async fn a_client_that_connects_and_sends_nothing_gets_408() {
    let limits = Limits { header_read_timeout: Duration::from_millis(200), ..Limits::default() };
    let (_keys, _world, sidecar) = payments_with(limits).await;
    let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
    let raw = read_to_close(&mut s).await;
    assert_eq!(status_of(&raw), 408);
    limit_line(&sidecar, "header_timeout").await;
}

/// Reads one keep-alive response (head and `content-length` body) without waiting for a close.
async fn read_one_response(s: &mut TcpStream) -> (u16, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                return (status_of(&buf), buf[end + 4..end + 4 + len].to_vec());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the response was complete");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let limits = Limits { idle_timeout: Duration::from_millis(300), ..Limits::default() };
    let (keys, world, sidecar) = payments_with(limits).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
    for _ in 0..2 {
        let req = format!("POST /charge HTTP/1.1\r\nHost: payments\r\nAuthorization: {auth}\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        assert_eq!(read_one_response(&mut s).await.0, 200, "keep-alive requests are served");
    }
    assert!(read_to_close(&mut s).await.is_empty(), "an idle close sends nothing");
    let line = limit_line(&sidecar, "idle_timeout").await;
    assert_eq!(line["status"], Value::Null);
    assert!(line["detail"].as_str().unwrap().contains("keep-alive"), "{line}");
    assert_eq!(world.echo.hits(), 2);
}

#[tokio::test]
async fn a_stalled_upload_is_aborted_after_the_idle_timeout() {
    let limits = Limits { idle_timeout: Duration::from_millis(300), ..Limits::default() };
    let (keys, _world, sidecar) = payments_with(limits).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
    let req = format!("POST /charge HTTP/1.1\r\nHost: payments\r\nAuthorization: {auth}\r\nContent-Length: 1000\r\n\r\n0123456789");
    s.write_all(req.as_bytes()).await.unwrap();
    read_to_close(&mut s).await;
    let line = limit_line(&sidecar, "idle_timeout").await;
    assert!(line["detail"].as_str().unwrap().contains("request aborted"), "{line}");
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_a_slot_frees_when_one_closes() {
    let limits = Limits { max_connections: 2, ..Limits::default() };
    let (keys, _world, sidecar) = payments_with(limits).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
        s.write_all(b"GET").await.unwrap(); // a request begun, never finished
        held.push(s);
    }
    let mut third = TcpStream::connect(sidecar.inbound).await.unwrap();
    let raw = read_to_close(&mut third).await;
    assert_eq!(status_of(&raw), 503);
    assert_eq!(body_json(&raw)["reason"], "too_many_connections");
    let line = limit_line(&sidecar, "too_many_connections").await;
    assert_eq!((line["status"].clone(), line["count"].clone()), (503.into(), 1.into()));

    drop(held.pop());
    // The freed slot is taken again as soon as the sidecar sees the close (bounded poll).
    let mut served = false;
    for _ in 0..100 {
        let reply = send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth)], b"").await;
        if reply.status == 200 {
            served = true;
            break;
        }
        assert_eq!(reply.status, 503);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served, "a slot never came free");
}

/// An upstream that signals once the first part of a request body has arrived, then reads the
/// rest (by `content-length`) and answers `ok`.
async fn signalling_upstream(first: &'static [u8]) -> (SocketAddr, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut tx = Some(tx);
        loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "upstream: request cut short");
            buf.extend_from_slice(&chunk[..n]);
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = &buf[end + 4..];
            if body.starts_with(first)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            let chunked = head.contains("transfer-encoding: chunked");
            let len: Option<usize> = head.lines().find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()));
            let done = match len {
                Some(len) => body.len() >= len,
                None => chunked && body.ends_with(b"0\r\n\r\n"),
            };
            if done {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await.unwrap();
                return;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn request_bodies_reach_the_upstream_before_the_client_has_sent_them_whole() {
    const FIRST: &[u8] = b"first-part-of-a-large-upload";
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let (upstream, first_arrived) = signalling_upstream(FIRST).await;
    let mut config = world.config("payments", std::sync::Arc::new(pvid_core::FixedClock(NOW)));
    config.upstream = upstream;
    let sidecar = Sidecar::start(config).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let rest = vec![b'x'; 8 << 20];
    let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
    let head = format!(
        "POST /charge HTTP/1.1\r\nHost: payments\r\nAuthorization: {auth}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        FIRST.len() + rest.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(FIRST).await.unwrap();
    // A buffering proxy would wait for all 8 MiB before sending anything upstream.
    tokio::time::timeout(Duration::from_secs(10), first_arrived)
        .await
        .expect("the first part reached the upstream while the rest was unsent")
        .unwrap();
    s.write_all(&rest).await.unwrap();
    let raw = read_to_close(&mut s).await;
    assert_eq!(status_of(&raw), 200);
    assert!(raw.ends_with(b"ok"));
}

#[tokio::test]
async fn a_denied_request_is_answered_without_reading_its_body() {
    let (_keys, world, sidecar) = payments_with(Limits::default()).await;
    let mut s = TcpStream::connect(sidecar.inbound).await.unwrap();
    // Announces 1 GiB and sends none of it: the 401 comes at once and the connection closes.
    s.write_all(b"POST /charge HTTP/1.1\r\nHost: payments\r\nAuthorization: Bearer a.b.c\r\nContent-Length: 1073741824\r\n\r\n")
        .await
        .unwrap();
    let raw = read_to_close(&mut s).await;
    assert_eq!(status_of(&raw), 401);
    assert_eq!(body_json(&raw)["reason"], "malformed");
    assert_eq!(world.echo.hits(), 0);
}

#[tokio::test]
async fn the_egress_listener_has_the_same_limits() {
    let limits = Limits { header_read_timeout: Duration::from_millis(200), ..Limits::default() };
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let mut config = world.config("api", std::sync::Arc::new(pvid_core::FixedClock(NOW)));
    config.egress = Some("127.0.0.1:0".parse().unwrap());
    config.signing_key = Some(std::sync::Arc::new(clone_key(&keys.api)));
    let sidecar = Sidecar::start_with_limits(config, limits).await;
    let mut s = TcpStream::connect(sidecar.egress.unwrap()).await.unwrap();
    let raw = read_to_close(&mut s).await;
    assert_eq!(status_of(&raw), 408);
    let line = limit_line(&sidecar, "header_timeout").await;
    assert_eq!(line["listener"], "egress");
}
