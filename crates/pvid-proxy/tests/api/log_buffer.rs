//! The decision log behind its bounded buffer: requests never wait for the log target, a full
//! buffer drops lines and counts them (metric and one `log.dropped` line), the evidence chain
//! stays complete, and nothing is lost in normal operation or at shutdown.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use pvid_core::FixedClock;
use pvid_core::evidence::{read_entries, verify_chain};
use serde_json::Value;

use crate::support::*;

async fn charge(sidecar: &Sidecar, auth: &str, rid: &str) -> u16 {
    send(sidecar.inbound, "POST", "/charge", &[("Authorization", auth), ("X-Request-Id", rid)], b"").await.status
}

#[tokio::test]
async fn every_request_leaves_its_decision_line_once_the_sidecar_has_shut_down() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let sidecar = world.sidecar("payments").await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    const N: usize = 300;
    let sidecar = Arc::new(sidecar);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (sidecar, auth) = (sidecar.clone(), auth.clone());
        tasks.push(tokio::spawn(async move {
            for i in (t..N).step_by(4) {
                assert_eq!(charge(&sidecar, &auth, &format!("n-{i}")).await, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let sidecar = Arc::into_inner(sidecar).unwrap();
    let log = sidecar.log.clone();
    sidecar.shutdown().await.unwrap();
    // No waiting: shutdown returns once the buffer is written.
    let lines = log_lines(&log);
    let mut rids: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "auth.validate")
        .map(|l| l["request_id"].as_str().unwrap().to_owned())
        .collect();
    rids.sort();
    rids.dedup();
    assert_eq!(rids.len(), N, "one decision line per request");
    assert!(lines.iter().all(|l| l["event"] != "log.dropped"), "nothing dropped");
}

/// Opens `fifo` for reading (blocking until the sidecar opens it for writing), then reads
/// nothing until `go` fires, then forwards every line it reads.
fn stalled_reader(fifo: &Path) -> (mpsc::Sender<()>, mpsc::Receiver<String>) {
    let (go_tx, go) = mpsc::channel::<()>();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let fifo = fifo.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&fifo).unwrap();
        let _ = go.recv();
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else { return };
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    (go_tx, lines)
}

#[tokio::test]
async fn a_stalled_log_reader_costs_counted_lines_never_requests_nor_evidence() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let fifo = world.dir.path().join("payments.fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs");
    assert!(status.success());
    let evidence = world.dir.path().join("evidence.jsonl");
    let (go, lines) = stalled_reader(&fifo);
    let mut config = world.config("payments", Arc::new(FixedClock(NOW)));
    config.log = pvid_proxy::LogTarget::File(fifo.clone());
    config.log_buffer = 16;
    config.evidence = Some(evidence.clone());
    let (sidecar, admin) = Sidecar::start_with_admin(config).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));

    // Nobody reads the FIFO: the pipe (64 KiB, about a hundred lines) and the buffer (16) fill
    // up, the writer blocks, and every request must still be answered.
    const N: usize = 600;
    for i in 0..N {
        assert_eq!(charge(&sidecar, &auth, &format!("s-{i}")).await, 200, "request {i}");
    }
    let dropped = metric(admin, "pvid_log_lines_dropped_total").await;
    assert!(dropped > 0, "the buffer never filled: is the pipe larger than {N} lines?");
    // The evidence chain is written before each response: complete while the log is stuck.
    let entries = read_entries(&std::fs::read_to_string(&evidence).unwrap()).unwrap();
    assert_eq!(entries.len(), N, "one evidence entry per decision");
    assert_eq!(verify_chain(&entries), Ok(()));

    // The reader reads again: what was kept arrives, then one line telling how much was not.
    go.send(()).unwrap();
    let mut seen: Vec<Value> = Vec::new();
    let report = loop {
        let line = lines.recv_timeout(Duration::from_secs(15)).expect("the writer writes again");
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(v.clone());
        if v["event"] == "log.dropped" {
            break v;
        }
    };
    assert_eq!(report["dropped"], dropped, "{report}");
    assert_eq!((report["preview_id"].as_str(), report["service"].as_str()), (Some("pr-7"), Some("payments")));
    assert!(report["ts"].as_str().unwrap().ends_with('Z'), "{report}");
    sidecar.shutdown().await.unwrap();

    // Every line is accounted for: written, or counted in the report (1 registry line + N).
    while seen.iter().filter(|l| l["event"] != "log.dropped").count() as u64 + dropped < 1 + N as u64 {
        let line = lines.recv_timeout(Duration::from_secs(15)).expect("the buffered lines after the report");
        seen.push(serde_json::from_str(&line).unwrap());
    }
    assert_eq!(seen.iter().filter(|l| l["event"] != "log.dropped").count() as u64 + dropped, 1 + N as u64);
    assert_eq!(seen.iter().filter(|l| l["event"] == "log.dropped").count(), 1, "one report for one stall");
    let text: String = seen.iter().map(|l| format!("{l}\n")).collect();
    capture("out", "sidecar-fifo.log", text.as_bytes());
}
