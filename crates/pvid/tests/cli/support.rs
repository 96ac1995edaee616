//! Helpers shared by the end-to-end tests.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs `pvid --home HOME ARGS...`.
pub fn pvid(home: &Path, args: &[&str]) -> Output {
    pvid_with(home, args, &[], None)
}

/// Runs pvid with extra environment variables and optional standard input.
pub fn pvid_with(home: &Path, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
    cmd.arg("--home").arg(home).args(args).env_remove("PVID_FAILPOINT").env_remove("PVID_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn pvid");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait pvid");
    capture(home, args, &out);
    out
}

/// With `PVID_TEST_CAPTURE_DIR` set (by `scripts/test`), keeps what a command printed for the
/// post-test secret scan (`scripts/check.d/20-no-secrets-in-output.sh`): its output under `out/`,
/// and as needles the tokens it was meant to print (`token mint`) and, after a successful `up`,
/// the private keys it made. The scan fails the suite if any needle shows up in any output.
fn capture(home: &Path, args: &[&str], out: &Output) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("PVID_TEST_CAPTURE_DIR").map(PathBuf::from) else { return };
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    let id = format!("cli-{}-{n}", std::process::id());
    let write = |sub: &str, name: String, bytes: &[u8]| {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).expect("capture folder");
        std::fs::write(d.join(name), bytes).expect("capture file");
    };
    if args.starts_with(&["token", "mint"]) {
        write("needles/tokens", format!("{id}.txt"), &out.stdout);
    } else {
        write("out", format!("{id}.stdout"), &out.stdout);
    }
    write("out", format!("{id}.stderr"), &out.stderr);
    // `up` and `rotate` make private keys.
    if matches!(args.first(), Some(&"up" | &"rotate")) && out.status.success() {
        use pvid_store::SecretStore as _;
        // A thread of its own: callers may be async tests, where a nested runtime would panic.
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let store = pvid_store::LocalSecretStore::open(home).expect("open the secret store");
                let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
                for path in rt.block_on(store.list()).expect("list secrets") {
                    if let Some(bytes) = rt.block_on(store.get(&path)).expect("read secret") {
                        let key = pvid_store::StoredKey::from_bytes(&path, &bytes).expect("stored key");
                        write("needles/keys", format!("{id}-{}-{}.der", path.service, path.slot.leaf()), &key.pkcs8);
                    }
                }
            });
        });
    }
}

/// Standard output as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Standard output parsed as one JSON value.
pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

/// The example spec.
pub fn example_spec() -> PathBuf {
    repo().join("examples/preview.yaml")
}

/// A loopback upstream answering 200 to everything.
pub fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    addr
}

/// A loopback port free right now for a process the test starts next, never handed out twice in
/// this run (see `pvid_bao::testkit::free_port`, which the OpenBao servers of tests use too).
pub fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pvid_bao::testkit::free_port()))
}

/// A child process (a sidecar) killed and reaped when the test lets go of it.
pub struct Sidecar(pub Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
