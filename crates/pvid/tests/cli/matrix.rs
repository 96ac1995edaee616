//! `pvid matrix` against real sidecars on loopback: a correct preview matches the spec edge by
//! edge; a sidecar enforcing a hand-edited registry (one edge opened, one closed) is named as a
//! mismatch; a sidecar that is not running is named by its address.

use super::support::{Sidecar, free_port, json, pvid, stderr, stdout, upstream};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const SERVICES: [&str; 4] = ["api", "worker", "webhooks", "payments"];

struct Preview {
    home: tempfile::TempDir,
    addrs: Vec<(&'static str, SocketAddr)>,
}

impl Preview {
    /// The example's four services and calls, at free loopback ports, provisioned.
    fn up() -> Preview {
        let home = tempfile::tempdir().unwrap();
        let addrs: Vec<(&str, SocketAddr)> = SERVICES.iter().map(|s| (*s, free_port())).collect();
        let a = |s: &str| addrs.iter().find(|(n, _)| *n == s).unwrap().1;
        let spec = format!(
            "preview: pr-482\nservices:\n  api:      {{ address: \"{}\", calls: [worker, \"payments: POST /charge\"] }}\n  worker:   {{ address: \"{}\", calls: [webhooks] }}\n  webhooks: {{ address: \"{}\" }}\n  payments: {{ address: \"{}\" }}\n",
            a("api"),
            a("worker"),
            a("webhooks"),
            a("payments")
        );
        let file = home.path().join("preview.yaml");
        std::fs::write(&file, spec).unwrap();
        let out = pvid(home.path(), &["up", "-f", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        Preview { home, addrs }
    }

    fn path(&self) -> &Path {
        self.home.path()
    }

    /// Starts the sidecar of `service` at its registry address; `registry` overrides the
    /// published registry file. Returns once it accepts connections (bounded wait).
    fn sidecar(&self, service: &str, registry: Option<&Path>) -> Sidecar {
        let addr = self.addrs.iter().find(|(n, _)| *n == service).unwrap().1;
        let log = self.path().join("logs").join(format!("{service}.jsonl"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
        cmd.arg("--home").arg(self.path()).env_remove("PVID_HOME");
        cmd.args(["proxy", "--preview", "pr-482", "--service", service]);
        cmd.args(["--listen", &addr.to_string(), "--upstream", &upstream().to_string()]).arg("--log").arg(&log);
        if let Some(r) = registry {
            cmd.arg("--registry").arg(r);
        }
        let mut child = Sidecar(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap());
        for _ in 0..400 {
            if TcpStream::connect(addr).is_ok() {
                return child;
            }
            assert!(child.0.try_wait().unwrap().is_none(), "sidecar {service} exited");
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("sidecar {service} did not listen on {addr}");
    }

    /// The published registry with `edit` applied, written to a file of its own.
    fn edited_registry(&self, name: &str, edit: impl FnOnce(&mut Vec<Value>)) -> PathBuf {
        let published = self.path().join("previews/pr-482/registry.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(published).unwrap()).unwrap();
        let mut policy = doc["policy"].as_array().unwrap().clone();
        edit(&mut policy);
        doc["policy"] = Value::Array(policy);
        let file = self.path().join(name);
        std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
        file
    }
}

fn mismatched_edges(v: &Value) -> BTreeSet<(String, String)> {
    v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["match"] == false)
        .map(|p| (p["caller"].as_str().unwrap().to_owned(), p["callee"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn matrix_of_a_correct_preview_matches_the_spec_on_every_edge() {
    let p = Preview::up();
    let _sidecars: Vec<Sidecar> = SERVICES.iter().map(|s| p.sidecar(s, None)).collect();

    let out = pvid(p.path(), &["matrix", "pr-482", "--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(0), "{v:#}\n{}", stderr(&out));
    assert_eq!(v["ok"], true);
    let probes = v["probes"].as_array().unwrap();
    // 12 edges, 2 probes each (a rule or no-rule probe, and /admin), plus api → payments'
    // forbidden method and path beside /charge.
    assert_eq!(probes.len(), 26, "{v:#}");
    assert!(probes.iter().all(|p| p["match"] == true), "{v:#}");
    assert_eq!(v["matrix"]["api"]["payments"], "allow: POST /charge");
    assert_eq!(v["matrix"]["api"]["worker"], "allow");
    assert_eq!(v["matrix"]["worker"]["webhooks"], "allow");
    assert_eq!(v["matrix"]["worker"]["payments"], "deny");
    assert_eq!(v["matrix"]["payments"]["api"], "deny");

    // Denials are the sidecar's own, with their reason; allowed probes reached the upstream.
    let find = |caller: &str, callee: &str, method: &str, path: &str| {
        probes
            .iter()
            .find(|p| p["caller"] == caller && p["callee"] == callee && p["method"] == method && p["path"] == path)
            .unwrap_or_else(|| panic!("no probe {caller} -> {callee} {method} {path}: {v:#}"))
            .clone()
    };
    let charge = find("api", "payments", "POST", "/charge");
    assert_eq!((charge["got"].as_str(), charge["status"].as_u64()), (Some("allow"), Some(200)));
    for (method, path) in [("DELETE", "/charge"), ("POST", "/charge-matrix"), ("GET", "/admin")] {
        let d = find("api", "payments", method, path);
        assert_eq!((d["got"].as_str(), d["status"].as_u64(), d["reason"].as_str()), (Some("deny"), Some(403), Some("policy_denied")), "{d}");
    }
    let admin = find("api", "worker", "GET", "/admin");
    assert_eq!(admin["expected"], "allow");
    assert!(admin["note"].as_str().unwrap().contains("/admin included"), "{admin}");

    // Each probe's request id is recognisable and `pvid logs` finds its decision.
    let no_rule = find("worker", "payments", "GET", "/");
    let rid = no_rule["request_id"].as_str().unwrap();
    assert!(rid.starts_with("matrix-worker-payments-"), "{rid}");
    let logs = pvid(p.path(), &["logs", "--request-id", rid, "--json"]);
    assert_eq!(logs.status.code(), Some(0), "{}", stderr(&logs));
    let line: Value = serde_json::from_str(stdout(&logs).lines().next().unwrap()).unwrap();
    assert_eq!((line["service"].as_str(), line["caller"].as_str(), line["reason"].as_str()), (Some("payments"), Some("worker"), Some("policy_denied")));

    // The Markdown form, ready for a pull request.
    let out = pvid(p.path(), &["matrix", "pr-482", "--markdown"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let md = stdout(&out);
    assert!(md.starts_with("### pvid call matrix: `pr-482`"), "{md}");
    // Columns in name order: api, payments, webhooks, worker.
    assert!(md.contains("| `api` | — | allow: POST /charge | deny | allow |"), "{md}");
    assert!(md.contains("|---|---|---|---|---|"), "{md}");
    assert!(!md.contains("MISMATCH"), "{md}");
    // No token ever reaches the output.
    assert!(!md.contains("eyJ") && !stdout(&logs).contains("eyJ"));
}

#[test]
fn matrix_names_the_edges_a_sidecar_enforces_wrongly() {
    let p = Preview::up();
    // payments' sidecar also admits worker (an edge the spec does not have); worker's sidecar
    // lost the rule that lets api call it.
    let opened = p.edited_registry("payments-registry.json", |rules| rules.push(json!({"caller": "worker", "callee": "payments"})));
    let closed = p.edited_registry("worker-registry.json", |rules| rules.retain(|r| !(r["caller"] == "api" && r["callee"] == "worker")));
    let _sidecars = [
        p.sidecar("api", None),
        p.sidecar("webhooks", None),
        p.sidecar("payments", Some(&opened)),
        p.sidecar("worker", Some(&closed)),
    ];

    let out = pvid(p.path(), &["matrix", "pr-482", "--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(1), "{v:#}\n{}", stderr(&out));
    assert_eq!(v["ok"], false);
    let want: BTreeSet<(String, String)> = [("api", "worker"), ("worker", "payments")].iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(mismatched_edges(&v), want, "{v:#}");
    assert_eq!(v["matrix"]["worker"]["payments"], "MISMATCH");
    assert_eq!(v["matrix"]["api"]["worker"], "MISMATCH");
    assert_eq!(v["matrix"]["api"]["payments"], "allow: POST /charge");
    for p in v["probes"].as_array().unwrap().iter().filter(|p| p["match"] == false) {
        if p["caller"] == "worker" {
            assert_eq!((p["expected"].as_str(), p["got"].as_str()), (Some("deny"), Some("allow")), "{p}");
            assert!(p["spec_says"].as_str().unwrap().contains("no rule lets worker call payments"), "{p}");
        } else {
            assert_eq!((p["expected"].as_str(), p["got"].as_str(), p["reason"].as_str()), (Some("allow"), Some("deny"), Some("policy_denied")), "{p}");
        }
    }

    // The text form says it in a line per probe.
    let out = pvid(p.path(), &["matrix", "pr-482"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("MISMATCH worker -> payments GET /: the spec says deny (no rule lets worker call payments), the sidecar of payments said allow (200 ok)"), "{text}");
    assert!(text.contains("MISMATCH api -> worker GET /: the spec says allow, the sidecar of worker said deny (403 policy_denied)"), "{text}");
    let out = pvid(p.path(), &["matrix", "pr-482", "--markdown"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("**MISMATCH**"), "{}", stdout(&out));
}

#[test]
fn matrix_finds_a_wrong_policy_in_a_rendered_compose_config() {
    // What a team deploys is the rendered configuration, not the spec: here the registry that
    // `pvid render compose` wrote (and the Compose sidecars mount) was edited by hand so that
    // api may call payments on any route, /admin included.
    let p = Preview::up();
    let out_dir = p.path().join("compose");
    let spec = p.path().join("preview.yaml");
    let out = pvid(p.path(), &["render", "compose", "-f", spec.to_str().unwrap(), "--out", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rendered = out_dir.join("registry.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&rendered).unwrap()).unwrap();
    for rule in doc["policy"].as_array_mut().unwrap() {
        if rule["caller"] == "api" && rule["callee"] == "payments" {
            *rule = json!({"caller": "api", "callee": "payments"});
        }
    }
    std::fs::write(&rendered, serde_json::to_vec(&doc).unwrap()).unwrap();
    let _sidecars: Vec<Sidecar> = SERVICES.iter().map(|s| p.sidecar(s, Some(&rendered))).collect();

    let out = pvid(p.path(), &["matrix", "pr-482", "--json"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    let want: BTreeSet<(String, String)> = [("api".to_owned(), "payments".to_owned())].into();
    assert_eq!(mismatched_edges(&v), want, "{v:#}");
    let admin = v["probes"].as_array().unwrap().iter().find(|p| p["callee"] == "payments" && p["path"] == "/admin").unwrap();
    assert_eq!((admin["expected"].as_str(), admin["got"].as_str()), (Some("deny"), Some("allow")), "{admin}");
}

#[test]
fn matrix_says_which_sidecar_cannot_be_reached() {
    let p = Preview::up();
    let _sidecars: Vec<Sidecar> = ["api", "worker", "webhooks"].iter().map(|s| p.sidecar(s, None)).collect();
    let payments = p.addrs.iter().find(|(n, _)| *n == "payments").unwrap().1;
    let out = pvid(p.path(), &["matrix", "pr-482", "--timeout", "2"]);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("payments at {payments}")), "{err}");

    // Invalid input is exit 2: an unknown preview, a torn-down one.
    let out = pvid(p.path(), &["matrix", "pr-999"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = pvid(p.path(), &["down", "pr-482"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = pvid(p.path(), &["matrix", "pr-482"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not active"), "{}", stderr(&out));
}

#[test]
fn recommend_prints_the_pattern_and_refuses_nonsense() {
    let home = tempfile::tempdir().unwrap();
    let out = pvid(home.path(), &["recommend", "--services", "5", "--substrate", "k8s", "--mesh", "linkerd", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["pattern"], 3);
    assert!(v["next"].as_array().unwrap().iter().any(|c| c == "pvid render linkerd -f preview.yaml --out pvid/linkerd"), "{v}");

    let out = pvid(home.path(), &["recommend", "--services", "1", "--substrate", "serverless"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("permission-boundary test is meaningless") && text.contains("direct function-to-function invoke"), "{text}");

    for bad in [
        &["recommend", "--services", "0", "--substrate", "k8s"][..],
        &["recommend", "--services", "4", "--substrate", "lambda"],
        &["recommend", "--services", "4", "--substrate", "compose", "--mesh", "istio"],
    ] {
        let out = pvid(home.path(), bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stdout(&out));
        assert!(!stderr(&out).is_empty());
    }
}
