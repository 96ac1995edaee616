//! The renderer cases of testdata/cases/PROXY-AND-POLICY.md (D04, D09, D11, D12, D14), on the
//! rendered output. Policy P: `api` may `POST /charge` on `orders`, `web` may `GET /public`;
//! P' gives `orders` no callers. (D14's file modes, written by the CLI, are checked in
//! crates/pvid/tests/cli/render.rs.)

use pvid_render::Target;
use serde_json::Value;

use super::support::{documents, kind, named, registry_for, render_with, spec};

const P: &str = "preview: pr-1\nservices:\n  api: { calls: [\"orders: POST /charge\"] }\n  web: { calls: [\"orders: GET /public\"] }\n  orders: {}\n";
const P_PRIME: &str = "preview: pr-1\nservices:\n  api: {}\n  web: {}\n  orders: {}\n";

fn docs(text: &str, target: Target) -> Vec<(String, Value)> {
    let (id, config) = spec(text);
    let registry = registry_for(&id, &config);
    documents(&render_with(target, &id, &config, Some(&registry), None))
}

/// Every string anywhere in a document, with the key it sits under.
fn walk<'a>(v: &'a Value, key: &str, out: &mut Vec<(String, &'a Value)>) {
    out.push((key.to_owned(), v));
    match v {
        Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, k, out)),
        Value::Array(a) => a.iter().for_each(|v| walk(v, key, out)),
        _ => {}
    }
}

fn all_nodes(docs: &[(String, Value)]) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    docs.iter().for_each(|(_, d)| walk(d, "", &mut out));
    out
}

#[test]
fn d04_istio_prefix_rule_is_exact_path_plus_subtree_never_a_bare_star() {
    let docs = docs(P, Target::Istio);
    let orders = named(&docs, "AuthorizationPolicy", "pvid-orders");
    let charge = orders["spec"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["to"][0]["operation"]["methods"][0] == "POST")
        .unwrap();
    assert_eq!(charge["to"][0]["operation"]["paths"], serde_json::json!(["/charge", "/charge/*"]));
    for (key, v) in all_nodes(&docs) {
        if key == "paths" && let Some(p) = v.as_str() {
            assert!(!p.ends_with('*') || p.ends_with("/*"), "`{p}` would also match siblings like /chargeback");
        }
    }
}

#[test]
fn d09_a_service_without_callers_gets_allow_with_selector_and_no_rules_key() {
    let docs = docs(P_PRIME, Target::Istio);
    let orders = named(&docs, "AuthorizationPolicy", "pvid-orders");
    assert_eq!(orders["spec"]["action"], "ALLOW");
    assert_eq!(orders["spec"]["selector"]["matchLabels"]["pvid.dev/service"], "orders");
    assert!(orders["spec"].get("rules").is_none(), "no `rules` key: {orders}");
    // The namespace-wide deny-all: no selector, no action, no rules.
    assert_eq!(named(&docs, "AuthorizationPolicy", "deny-all")["spec"], serde_json::json!({}));
}

#[test]
fn d09_no_rule_is_empty_and_allow_uses_only_positive_matches() {
    for text in [P, P_PRIME] {
        let docs = docs(text, Target::Istio);
        for p in kind(&docs, "AuthorizationPolicy") {
            for rule in p["spec"]["rules"].as_array().into_iter().flatten() {
                assert!(rule.as_object().is_some_and(|r| !r.is_empty()), "empty rule `{{}}` allows everything: {p}");
                for clause in ["from", "to"] {
                    for item in rule[clause].as_array().into_iter().flatten() {
                        assert!(item.as_object().unwrap().values().all(|v| v.as_object().is_some_and(|o| !o.is_empty())));
                    }
                }
            }
            if p["spec"]["action"] == "ALLOW" || p["spec"].get("action").is_none() {
                let mut nodes = Vec::new();
                walk(&p["spec"], "", &mut nodes);
                assert!(nodes.iter().all(|(k, _)| !k.starts_with("not")), "negative match under ALLOW: {p}");
            }
        }
    }
}

#[test]
fn d09_no_deny_matches_an_allowed_call_and_mtls_is_strict() {
    let docs = docs(P, Target::Istio);
    let denies: Vec<&Value> = kind(&docs, "AuthorizationPolicy").into_iter().filter(|p| p["spec"]["action"] == "DENY").collect();
    assert_eq!(denies.len(), 1);
    // The only DENY refuses sources outside the preview's namespace; api and web are inside.
    assert_eq!(
        denies[0]["spec"]["rules"],
        serde_json::json!([{ "from": [{ "source": { "notNamespaces": ["preview-pr-1"] } }] }])
    );
    let orders = named(&docs, "AuthorizationPolicy", "pvid-orders");
    let principals: Vec<&Value> =
        orders["spec"]["rules"].as_array().unwrap().iter().map(|r| &r["from"][0]["source"]["principals"][0]).collect();
    assert_eq!(principals, ["cluster.local/ns/preview-pr-1/sa/api", "cluster.local/ns/preview-pr-1/sa/web"]);
    let peer = kind(&docs, "PeerAuthentication");
    assert_eq!(peer.len(), 1);
    assert_eq!(peer[0]["spec"], serde_json::json!({ "mtls": { "mode": "STRICT" } }));
    assert!(peer[0]["spec"].get("selector").is_none(), "STRICT must cover the whole namespace");
}

#[test]
fn d11_linkerd_default_policy_is_deny_and_only_api_may_use_the_charge_route() {
    let docs = docs(P, Target::Linkerd);
    let ns = &kind(&docs, "Namespace")[0];
    assert_eq!(ns["metadata"]["annotations"]["config.linkerd.io/default-inbound-policy"], "deny");
    for (_, v) in all_nodes(&docs) {
        assert_ne!(v.as_str(), Some("all-unauthenticated"));
        assert_ne!(v.as_str(), Some("0.0.0.0/0"));
    }
    assert!(kind(&docs, "NetworkAuthentication").is_empty(), "nothing is authorized unauthenticated");
    let server = named(&docs, "Server", "pvid-orders");
    assert_eq!(server["spec"]["port"], "pvid-in");
    assert_eq!(server["spec"]["accessPolicy"], "deny");
    let routes: Vec<&Value> = kind(&docs, "HTTPRoute").into_iter().filter(|r| r["spec"]["parentRefs"][0]["name"] == "pvid-orders").collect();
    let charge = routes.iter().find(|r| r["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/charge").unwrap();
    assert_eq!(charge["spec"]["rules"][0]["matches"][0]["method"], "POST");
    let name = charge["metadata"]["name"].as_str().unwrap();
    let authn = named(&docs, "MeshTLSAuthentication", name);
    assert_eq!(authn["spec"]["identityRefs"], serde_json::json!([{ "kind": "ServiceAccount", "name": "api" }]));
    // Only the two allowed (path, method) routes exist: a GET /charge or POST /public matches none.
    assert_eq!(routes.len(), 2);
}

#[test]
fn d11_probes_reach_the_app_port_which_has_no_server() {
    let (id, config) = spec(P);
    let registry = registry_for(&id, &config);
    let k8s = documents(&render_with(Target::K8s, &id, &config, Some(&registry), None));
    let linkerd = docs(P, Target::Linkerd);
    // Every Server selects the sidecar's named port, which is the inbound port, never the app's.
    for server in kind(&linkerd, "Server") {
        assert_eq!(server["spec"]["port"], "pvid-in");
    }
    let patch = kind(&k8s, "Deployment").into_iter().find(|d| d["metadata"]["name"] == "orders").unwrap();
    let sidecar = &patch["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(sidecar["ports"], serde_json::json!([{ "name": "pvid-in", "containerPort": 8400, "protocol": "TCP" }]));
    assert!(sidecar.get("readinessProbe").is_none() && sidecar.get("livenessProbe").is_none());
}

#[test]
fn d12_dns_egress_is_udp_and_tcp_with_both_selectors_in_one_peer() {
    let docs = docs(P, Target::K8s);
    let deny = named(&docs, "NetworkPolicy", "default-deny-except-dns");
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(deny["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(deny["spec"].get("ingress").is_none());
    let dns = &deny["spec"]["egress"][0];
    assert_eq!(
        dns["to"],
        serde_json::json!([{
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
            "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
        }])
    );
    assert_eq!(dns["ports"], serde_json::json!([{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }]));
}

#[test]
fn d12_only_the_default_deny_selects_every_pod_and_peers_never_split_and_into_or() {
    let docs = docs(P, Target::K8s);
    for np in kind(&docs, "NetworkPolicy") {
        let name = np["metadata"]["name"].as_str().unwrap();
        if name != "default-deny-except-dns" {
            assert!(np["spec"]["podSelector"]["matchLabels"].as_object().is_some_and(|m| !m.is_empty()), "{name}");
        }
        for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
            for rule in np["spec"][dir].as_array().into_iter().flatten() {
                let items = rule[peers].as_array().unwrap();
                let lone_ns = items.iter().any(|i| i.get("namespaceSelector").is_some() && i.get("podSelector").is_none());
                let lone_pod = items.iter().any(|i| i.get("podSelector").is_some() && i.get("namespaceSelector").is_none());
                assert!(!(lone_ns && lone_pod), "{name}: a lone namespaceSelector next to a lone podSelector means OR");
            }
        }
    }
}

#[test]
fn d12_orders_admits_only_its_callers_pods_and_only_on_the_sidecar_port() {
    let docs = docs(P, Target::K8s);
    let orders = named(&docs, "NetworkPolicy", "pvid-orders");
    assert_eq!(
        orders["spec"]["ingress"],
        serde_json::json!([{
            "from": [
                { "podSelector": { "matchLabels": { "pvid.dev/service": "api" } } },
                { "podSelector": { "matchLabels": { "pvid.dev/service": "web" } } },
            ],
            "ports": [{ "port": 8400, "protocol": "TCP" }],
        }])
    );
    assert!(orders["spec"].get("egress").is_none(), "orders calls no one");
    for (_, v) in all_nodes(&docs).into_iter().filter(|(k, _)| k == "port") {
        assert_ne!(v, &serde_json::json!(8080), "the app port is never opened");
    }
}

#[test]
fn d14_compose_secrets_use_no_mode_or_uid_and_only_the_own_sidecar_mounts_them() {
    let (id, config) = spec(P);
    let registry = registry_for(&id, &config);
    let secrets = super::support::fake_secrets(&config);
    let r = render_with(Target::Compose, &id, &config, Some(&registry), Some(&secrets));
    let doc: Value = yaml_serde::from_str(&r.file("compose.pvid.yaml").unwrap().contents).unwrap();
    for (name, svc) in doc["services"].as_object().unwrap() {
        match name.strip_suffix("-pvid") {
            Some(app) => {
                assert_eq!(svc["user"], "65532:65532");
                assert_eq!(svc["network_mode"], format!("service:{app}"));
                assert_eq!(
                    svc["secrets"],
                    serde_json::json!([{ "source": format!("pvid-pr-1-{app}-key"), "target": "pvid-key.json" }])
                );
            }
            None => assert!(svc.get("secrets").is_none(), "the app container {name} must not see a key"),
        }
    }
    for (name, s) in doc["secrets"].as_object().unwrap() {
        assert_eq!(s.as_object().unwrap().keys().collect::<Vec<_>>(), ["file"], "{name}: only `file`, never mode/uid/gid");
    }
    for svc in ["api", "orders", "web"] {
        let f = r.file(&format!("secrets/{svc}.json")).unwrap();
        assert!(f.secret, "{svc}: key files are marked secret (written 0600)");
    }
}
