//! Benchmark (not a test): `pvid up` / `pvid down` of a 10-service preview and token mints per
//! second, for each key custody: local secret store, OpenBao KV v2 (`sidecar` custody) and
//! OpenBao Transit (`transit` custody). Run by `scripts/bench-openbao.sh`, which builds release
//! binaries and starts a throwaway OpenBao; figures go to docs/PERFORMANCE.md.
//!
//! ```text
//! custody_bench --pvid target/release/pvid [--runs 9] [--mints 2000]
//! ```
//! Needs BAO_ADDR, BAO_TOKEN (a token bound to deploy/openbao/pvid-policy.hcl) and the mounts in
//! PVID_BAO_KV_MOUNT / PVID_BAO_TRANSIT_MOUNT (or the defaults).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use pvid_control::{Control, SigningSource};
use pvid_core::{Clock, MintRequest, PreviewId, ServiceName, SystemClock, service_identity};
use pvid_proxy::{MintCache, Signer, TransitSigner, mint_with};
use pvid_store::{LocalSecretStore, OpenBaoSecretStore, SecretStore, StateStore};

const SERVICES: usize = 10;

struct Mode {
    name: &'static str,
    secrets: &'static str,
    custody: &'static str,
}

const MODES: [Mode; 3] = [
    Mode { name: "local", secrets: "local", custody: "sidecar" },
    Mode { name: "openbao kv", secrets: "openbao", custody: "sidecar" },
    Mode { name: "openbao transit", secrets: "openbao", custody: "transit" },
];

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pvid(bin: &Path, home: &Path, mode: &Mode, args: &[&str]) -> f64 {
    let t = Instant::now();
    let out = Command::new(bin).arg("--home").arg(home).args(["--secrets", mode.secrets]).args(args).output().expect("run pvid");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(out.status.success(), "pvid {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    ms
}

async fn signer(home: &Path, mode: &Mode, preview: &PreviewId, from: &ServiceName) -> Arc<dyn Signer> {
    let bao = || {
        let config = pvid_bao::BaoConfig::from_env(&|k| std::env::var(k).ok(), &Default::default()).expect("BAO_ADDR/BAO_TOKEN");
        pvid_bao::Client::new(config).expect("client")
    };
    let secrets: Arc<dyn SecretStore> = match mode.secrets {
        "local" => Arc::new(LocalSecretStore::open(home).expect("local store")),
        _ => Arc::new(OpenBaoSecretStore::new(bao())),
    };
    let state = StateStore::open(&home.join("state.db")).await.expect("state");
    let control = Control::new(state, secrets, home.to_path_buf());
    match control.signing_source(preview, from).await.expect("signing source").expect("a key") {
        SigningSource::Local(k) => Arc::new(k),
        SigningSource::Transit { key_name, version, kid, alg } => Arc::new(TransitSigner::new(bao(), key_name, version, kid, alg)),
    }
}

/// Mints per second for `n` mints spread over the 9 callees; with `cache`, a token is reused
/// per callee as the sidecar does.
async fn mints_per_s(signer: &dyn Signer, preview: &PreviewId, n: usize, cache: bool) -> f64 {
    let from: ServiceName = "svc0".parse().expect("name");
    let callees: Vec<ServiceName> = (1..SERVICES).map(|i| format!("svc{i}").parse().expect("name")).collect();
    let minted = MintCache::default();
    let t = Instant::now();
    for i in 0..n {
        let callee = &callees[i % callees.len()];
        let now = SystemClock.now();
        if cache && minted.get(callee, now).is_some() {
            continue;
        }
        let audience = service_identity(preview, callee);
        let req = MintRequest { from: &from, preview, audience: &audience, ttl_s: 300, now };
        let m = mint_with(signer, &req).await.expect("mint");
        if cache {
            minted.put(callee.clone(), m);
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bin = PathBuf::from(arg(&args, "--pvid").expect("--pvid PATH"));
    let runs: usize = arg(&args, "--runs").map_or(9, |v| v.parse().expect("--runs N"));
    let mints: usize = arg(&args, "--mints").map_or(2000, |v| v.parse().expect("--mints N"));
    let work = tempfile::tempdir().expect("tempdir");
    let spec = work.path().join("ten.yaml");
    let mut text = String::from("services:\n");
    for i in 0..SERVICES {
        text.push_str(&format!("  svc{i}: {{ address: \"127.0.0.1:{}\" }}\n", 7100 + i));
    }
    std::fs::write(&spec, text).expect("spec");
    let spec = spec.to_str().expect("utf-8 path");

    println!("| custody | pvid up, median ms | pvid down, median ms | mints/s, cache off | mints/s, cache on |");
    println!("|---|---:|---:|---:|---:|");
    for (m, mode) in MODES.iter().enumerate() {
        let home = work.path().join(format!("home-{m}"));
        let (mut ups, mut downs) = (Vec::new(), Vec::new());
        for i in 0..runs {
            let id = format!("bench-{m}-{i}");
            ups.push(pvid(&bin, &home, mode, &["up", "-f", spec, "--preview", &id, "--key-custody", mode.custody]));
            downs.push(pvid(&bin, &home, mode, &["down", &id]));
        }
        let id: PreviewId = format!("bench-{m}-mint").parse().expect("id");
        pvid(&bin, &home, mode, &["up", "-f", spec, "--preview", id.as_str(), "--key-custody", mode.custody]);
        let s = signer(&home, mode, &id, &"svc0".parse().expect("name")).await;
        // Transit costs one HTTP round trip per signature: fewer mints keep the run short.
        let n = if mode.custody == "transit" { mints / 4 } else { mints };
        let off = mints_per_s(s.as_ref(), &id, n, false).await;
        let on = mints_per_s(s.as_ref(), &id, mints * 50, true).await;
        pvid(&bin, &home, mode, &["down", id.as_str()]);
        println!("| {} | {:.1} | {:.1} | {:.0} | {:.0} |", mode.name, median(ups), median(downs), off, on);
    }
    println!();
    println!("runs per median: {runs}; services per preview: {SERVICES}; mints (cache off): {mints} local/kv, {} transit", mints / 4);
}
