//! Property: for random specs, every allowed edge (caller → callee) of the spec appears in every
//! target and no other edge does; for the meshes, which can express methods and paths, a model
//! of Istio's and Linkerd's matching decides every sampled request exactly as pvid's policy does.

use pvid_core::{Policy, PreviewConfig, PreviewId, ServiceName};
use pvid_render::Target;
use serde_json::Value;
use std::collections::BTreeSet;

use super::support::{documents, kind, registry_for, render_with, spec};

type Edges = BTreeSet<(String, String)>;

/// xorshift64*: a small deterministic generator, so a failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const NAMES: [&str; 7] = ["api", "web", "worker", "payments", "orders", "billing", "search"];
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "HEAD"];
const PATHS: [&str; 7] = ["/", "/a", "/a/b", "/charge", "/charge/x", "/b", "/a/b/c"];
const PROBES: [&str; 10] = ["/", "/a", "/a/b", "/a/bc", "/ab", "/charge", "/chargeback", "/charge/x/y", "/b/", "/zzz"];

fn random_spec(seed: u64) -> String {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = 1 + rng.below(5);
    let names = &NAMES[..n];
    let mut text = String::from("preview: pr-7\nservices:\n");
    for name in names {
        let mut calls = Vec::new();
        for _ in 0..rng.below(4) {
            let callee = rng.pick(names);
            let call = match rng.below(4) {
                0 => callee.to_owned(),
                1 => {
                    let mut ms: Vec<&str> = (0..1 + rng.below(2)).map(|_| rng.pick(&METHODS)).collect();
                    ms.dedup();
                    format!("{callee}: {}", ms.join("|"))
                }
                2 => format!("{callee}: {}", rng.pick(&PATHS)),
                _ => format!("{callee}: {} {}", rng.pick(&METHODS), rng.pick(&PATHS)),
            };
            calls.push(format!("\"{call}\""));
        }
        text.push_str(&format!("  {name}: {{ calls: [{}] }}\n", calls.join(", ")));
    }
    text
}

fn spec_edges(config: &PreviewConfig) -> Edges {
    config.policy.iter().map(|r| (r.caller.to_string(), r.callee.to_string())).collect()
}

fn name_of(d: &Value) -> String {
    d["metadata"]["name"].as_str().unwrap().to_owned()
}

fn svc_label(d: &Value) -> String {
    d["spec"]["podSelector"]["matchLabels"]["pvid.dev/service"].as_str().unwrap().to_owned()
}

fn k8s_edges(docs: &[(String, Value)]) -> (Edges, Edges) {
    let (mut ingress, mut egress) = (Edges::new(), Edges::new());
    for np in kind(docs, "NetworkPolicy") {
        if name_of(np) == "default-deny-except-dns" {
            continue;
        }
        let svc = svc_label(np);
        for rule in np["spec"]["ingress"].as_array().into_iter().flatten() {
            for peer in rule["from"].as_array().unwrap() {
                ingress.insert((peer["podSelector"]["matchLabels"]["pvid.dev/service"].as_str().unwrap().to_owned(), svc.clone()));
            }
        }
        for rule in np["spec"]["egress"].as_array().into_iter().flatten() {
            for peer in rule["to"].as_array().unwrap() {
                egress.insert((svc.clone(), peer["podSelector"]["matchLabels"]["pvid.dev/service"].as_str().unwrap().to_owned()));
            }
        }
    }
    (ingress, egress)
}

/// Istio: allowed iff some ALLOW rule of the callee's policy matches (the deny-all matches
/// nothing; every caller here is in the namespace, so the namespace DENY does not apply).
fn istio_allows(docs: &[(String, Value)], ns: &str, caller: &str, callee: &str, method: &str, path: &str) -> bool {
    let policy = kind(docs, "AuthorizationPolicy").into_iter().find(|d| name_of(d) == format!("pvid-{callee}")).unwrap();
    policy["spec"]["rules"].as_array().into_iter().flatten().any(|rule| {
        let source = &rule["from"][0]["source"];
        let principal = format!("cluster.local/ns/{ns}/sa/{caller}");
        let request_principal = format!("preview-pr-7-{caller}/{caller}");
        let op = &rule["to"][0]["operation"];
        source["principals"].as_array().unwrap().iter().any(|p| p == &principal)
            && source["requestPrincipals"].as_array().unwrap().iter().any(|p| p == &request_principal)
            && op["ports"].as_array().unwrap().iter().any(|p| p == "8400")
            && op["methods"].as_array().is_none_or(|ms| ms.iter().any(|m| m == method))
            && op["paths"].as_array().is_none_or(|ps| {
                ps.iter().any(|p| {
                    let p = p.as_str().unwrap();
                    match p.strip_suffix('*') {
                        Some(prefix) => path.starts_with(prefix),
                        None => path == p,
                    }
                })
            })
    })
}

fn istio_edges(docs: &[(String, Value)]) -> Edges {
    let mut edges = Edges::new();
    for p in kind(docs, "AuthorizationPolicy") {
        let Some(callee) = name_of(p).strip_prefix("pvid-").map(str::to_owned) else { continue };
        for rule in p["spec"]["rules"].as_array().into_iter().flatten() {
            for principal in rule["from"][0]["source"]["principals"].as_array().unwrap() {
                edges.insert((principal.as_str().unwrap().rsplit('/').next().unwrap().to_owned(), callee.clone()));
            }
        }
    }
    edges
}

fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Linkerd: the most specific matching route of the callee's Server (longest prefix, then a
/// method match) decides; its MeshTLSAuthentication lists who may use it.
fn linkerd_allows(docs: &[(String, Value)], caller: &str, callee: &str, method: &str, path: &str) -> bool {
    let server = format!("pvid-{callee}");
    let mut best: Option<((usize, bool), String)> = None;
    for route in kind(docs, "HTTPRoute") {
        if route["spec"]["parentRefs"][0]["name"] != server.as_str() {
            continue;
        }
        let m = &route["spec"]["rules"][0]["matches"][0];
        let prefix = m["path"]["value"].as_str().unwrap();
        let route_method = m["method"].as_str();
        if !covers(prefix, path) || route_method.is_some_and(|rm| rm != method) {
            continue;
        }
        let rank = (prefix.len(), route_method.is_some());
        if let Some((best_rank, _)) = &best {
            assert_ne!(*best_rank, rank, "two routes of {callee} tie for {method} {path}");
        }
        if best.as_ref().is_none_or(|(r, _)| rank > *r) {
            best = Some((rank, name_of(route)));
        }
    }
    let Some((_, name)) = best else { return false };
    let authz = kind(docs, "AuthorizationPolicy").into_iter().find(|d| name_of(d) == name).unwrap();
    assert_eq!(authz["spec"]["targetRef"]["name"], name.as_str());
    let authn_name = authz["spec"]["requiredAuthenticationRefs"][0]["name"].as_str().unwrap();
    let authn = kind(docs, "MeshTLSAuthentication").into_iter().find(|d| name_of(d) == authn_name).unwrap();
    authn["spec"]["identityRefs"].as_array().unwrap().iter().any(|i| i["kind"] == "ServiceAccount" && i["name"] == caller)
}

fn linkerd_edges(docs: &[(String, Value)]) -> Edges {
    let mut edges = Edges::new();
    for route in kind(docs, "HTTPRoute") {
        let callee = route["spec"]["parentRefs"][0]["name"].as_str().unwrap().strip_prefix("pvid-").unwrap().to_owned();
        let authn = kind(docs, "MeshTLSAuthentication").into_iter().find(|d| name_of(d) == name_of(route)).unwrap();
        for id in authn["spec"]["identityRefs"].as_array().unwrap() {
            edges.insert((id["name"].as_str().unwrap().to_owned(), callee.clone()));
        }
    }
    edges
}

fn serverless_edges(docs: &[(String, Value)]) -> (Edges, Edges) {
    let (mut aws, mut gcp) = (Edges::new(), Edges::new());
    for (path, d) in docs {
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["aws", svc, "policy.json"] => {
                for st in d["Statement"].as_array().unwrap() {
                    if st["Effect"] == "Allow" && st["Action"] == "lambda:InvokeFunctionUrl" {
                        for arn in st["Resource"].as_array().unwrap() {
                            let callee = arn.as_str().unwrap().rsplit(':').next().unwrap().strip_prefix("pvid-pr-7-").unwrap();
                            aws.insert((svc.to_string(), callee.to_owned()));
                        }
                    }
                }
            }
            ["cloudrun", svc, "iam-policy.json"] => {
                for b in d["bindings"].as_array().unwrap() {
                    assert_eq!(b["role"], "roles/run.invoker");
                    for m in b["members"].as_array().unwrap() {
                        let m = m.as_str().unwrap();
                        let caller = m.strip_prefix("serviceAccount:pvid-pr-7-").unwrap().split('@').next().unwrap();
                        gcp.insert((caller.to_owned(), svc.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    (aws, gcp)
}

fn check_seed(seed: u64) {
    let text = random_spec(seed);
    let (id, config): (PreviewId, PreviewConfig) = spec(&text);
    let registry = registry_for(&id, &config);
    let want = spec_edges(&config);
    let ctx = format!("seed {seed}, spec:\n{text}");
    let docs = |t: Target| documents(&render_with(t, &id, &config, Some(&registry), None));

    let k8s = docs(Target::K8s);
    let (ingress, egress) = k8s_edges(&k8s);
    assert_eq!(ingress, want, "k8s ingress, {ctx}");
    assert_eq!(egress, want, "k8s egress, {ctx}");

    let istio = docs(Target::Istio);
    assert_eq!(istio_edges(&istio), want, "istio, {ctx}");
    let linkerd = docs(Target::Linkerd);
    assert_eq!(linkerd_edges(&linkerd), want, "linkerd, {ctx}");

    let compose = render_with(Target::Compose, &id, &config, Some(&registry), None);
    let reg: pvid_core::Registry = serde_json::from_str(&compose.file("registry.json").unwrap().contents).unwrap();
    let compose_edges: Edges = reg.policy.iter().map(|r| (r.caller.to_string(), r.callee.to_string())).collect();
    assert_eq!(compose_edges, want, "compose registry, {ctx}");

    let (aws, gcp) = serverless_edges(&docs(Target::Serverless));
    assert_eq!(aws, want, "aws, {ctx}");
    assert_eq!(gcp, want, "cloud run, {ctx}");

    // Request level: the meshes decide like pvid's own policy.
    let policy = Policy::new(config.policy.clone());
    let names: Vec<ServiceName> = config.services.iter().map(|s| s.name.clone()).collect();
    for caller in &names {
        for callee in &names {
            for method in METHODS.iter().chain(["OPTIONS"].iter()) {
                for path in PROBES {
                    let pvid = policy.check(caller, callee, method, path).is_ok();
                    let norm = pvid_core::normalize_path(path).unwrap();
                    let (c, e) = (caller.as_str(), callee.as_str());
                    assert_eq!(istio_allows(&istio, "preview-pr-7", c, e, method, &norm), pvid, "istio {c}->{e} {method} {path}, {ctx}");
                    assert_eq!(linkerd_allows(&linkerd, c, e, method, &norm), pvid, "linkerd {c}->{e} {method} {path}, {ctx}");
                }
            }
        }
    }
}

#[test]
fn every_allowed_edge_appears_in_every_target_and_no_other() {
    for seed in 0..100 {
        check_seed(seed);
    }
}

#[test]
fn example_spec_edges_are_the_three_calls_in_every_target() {
    let (id, config) = super::support::example();
    let want: Edges = [("api", "payments"), ("api", "worker"), ("worker", "webhooks")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(spec_edges(&config), want);
    let registry = super::support::example_registry();
    let docs = |t: Target| documents(&render_with(t, &id, &config, Some(&registry), None));
    assert_eq!(k8s_edges(&docs(Target::K8s)), (want.clone(), want.clone()));
    assert_eq!(istio_edges(&docs(Target::Istio)), want);
    assert_eq!(linkerd_edges(&docs(Target::Linkerd)), want);
}
