//! Provisioning benchmark (figures in docs/PERFORMANCE.md), in process with the embedded stores
//! (SQLite state, `local` secret store), so process start is excluded:
//!
//! 1. provision and teardown of one 10-service preview, repeated (median, p90 of each);
//! 2. 1,000 previews provisioned then torn down in a loop, in one state store (total and per
//!    preview), which shows whether cost grows with the number of previews stored.
//!
//! Run: `cargo bench -p pvid-control --bench provision [-- --runs 51 --previews 1000]`.

use std::sync::Arc;
use std::time::Instant;

use pvid_control::Control;
use pvid_core::PreviewId;
use pvid_core::spec::PreviewSpec;
use pvid_store::{LocalSecretStore, StateStore};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect("a number"))
}

fn spec(services: usize) -> PreviewSpec {
    let mut text = String::from("algorithm: ES256\nservices:\n");
    for i in 0..services {
        // A chain of calls, so the policy is not empty.
        let calls = if i + 1 < services { format!(", calls: [svc{}]", i + 1) } else { String::new() };
        text.push_str(&format!("  svc{i}: {{ address: \"127.0.0.1:{}\"{calls} }}\n", 7100 + i));
    }
    PreviewSpec::parse("bench.yaml", &text).expect("spec")
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

async fn control(home: &std::path::Path) -> Control {
    let state = StateStore::open(&home.join("state.db")).await.expect("state");
    Control::new(state, Arc::new(LocalSecretStore::open(home).expect("secrets")), home.to_path_buf())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = arg("--runs", 51);
    let previews = arg("--previews", 1000);
    println!("pvid provisioning benchmark ({} cores, in process, SQLite + local secret store)", std::thread::available_parallelism().map_or(1, |n| n.get()));

    let home = tempfile::tempdir().expect("tmp");
    let c = control(home.path()).await;
    let config = spec(10).config();
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    for i in 0..runs {
        let id: PreviewId = format!("ten-{i}").parse().expect("id");
        let t = Instant::now();
        c.provision(&id, &config).await.expect("provision");
        ups.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.teardown(&id).await.expect("teardown");
        downs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "10-service preview, {runs} runs: up median {:.2} ms (p90 {:.2}), down median {:.2} ms (p90 {:.2})",
        quantile(&mut ups, 0.5),
        quantile(&mut ups, 0.9),
        quantile(&mut downs, 0.5),
        quantile(&mut downs, 0.9)
    );

    let home = tempfile::tempdir().expect("tmp");
    let c = control(home.path()).await;
    let config = spec(4).config();
    let ids: Vec<PreviewId> = (0..previews).map(|i| format!("pr-{i}").parse().expect("id")).collect();
    let t = Instant::now();
    let mut first_tenth = 0.0;
    for (i, id) in ids.iter().enumerate() {
        c.provision(id, &config).await.expect("provision");
        if i + 1 == previews / 10 {
            first_tenth = t.elapsed().as_secs_f64();
        }
    }
    let up_total = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for id in &ids {
        c.teardown(id).await.expect("teardown");
    }
    let down_total = t.elapsed().as_secs_f64();
    let per = |total: f64| total * 1e3 / previews as f64;
    println!(
        "{previews} previews of 4 services: up {up_total:.2} s ({:.2} ms each; first tenth {:.2} ms each), down {down_total:.2} s ({:.2} ms each)",
        per(up_total),
        first_tenth * 1e3 / (previews / 10).max(1) as f64,
        per(down_total)
    );
}
