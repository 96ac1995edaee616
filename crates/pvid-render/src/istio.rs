//! Istio: authorization that denies by default, on top of the Kubernetes objects.
//!
//! Istio *allows* a request to a workload that no ALLOW policy selects, so the output starts
//! with a namespace-wide `deny-all` (an ALLOW policy with no rules matches nothing; once any
//! ALLOW policy applies to a workload, requests no ALLOW rule matches are denied). A
//! namespace-wide DENY refuses every source outside the preview's namespace (plaintext
//! requests, which have no namespace, included). Then one ALLOW policy per service admits
//! exactly the spec's callers: the caller's mesh identity (`<trust domain>/ns/<ns>/sa/<caller>`)
//! *and* its pvid token (`requestPrincipals` `preview-<id>-<caller>/<caller>`, checked by the
//! RequestAuthentication against the caller's keys and the callee's audience), only on the
//! methods and paths of the calls, only on the sidecar port. No rule is ever empty (`rules:
//! [{}]` would allow everything) and no ALLOW uses a negative match. PeerAuthentication STRICT
//! makes the principals mean something (no plaintext).

use serde_json::{Value, json};

use crate::doc::{file, yaml, yaml_stream};
use crate::k8s::{mesh_egress_policy, namespace};
use crate::model::{Plan, call_text};
use crate::{RenderError, Rendered};

/// istiod's xDS and certificate port.
const ISTIOD_PORT: u16 = 15012;

pub(crate) fn render(plan: &Plan<'_>) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    out.files.push(file(
        "namespace.yaml",
        yaml(&namespace(plan, json!({ "istio-injection": "enabled" }), json!({}))),
    ));
    out.files.push(file("authorizationpolicies.yaml", yaml_stream(&authorization_policies(plan)?)));
    out.files.push(file("peerauthentication.yaml", yaml(&peer_authentication(plan))));
    match request_authentications(plan) {
        Some(docs) if docs.is_empty() => {}
        Some(docs) => out.files.push(file("requestauthentications.yaml", yaml_stream(&docs))),
        None => out.warnings.push(plan.not_provisioned(
            "the RequestAuthentications (inline JWKS); until they are applied the ALLOW policies admit no one, as they require a verified token",
        )),
    }
    out.files.push(file(
        "networkpolicy-mesh.yaml",
        yaml(&mesh_egress_policy(plan, "istio", &plan.opts.istio_namespace, &[ISTIOD_PORT])),
    ));
    Ok(out)
}

fn policy(plan: &Plan<'_>, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": plan.metadata(name, None),
        "spec": spec,
    })
}

fn authorization_policies(plan: &Plan<'_>) -> Result<Vec<Value>, RenderError> {
    let mut docs = vec![
        // Namespace-wide ALLOW with no rules: matches nothing, so nothing is allowed unless a
        // per-service ALLOW below matches.
        policy(plan, "deny-all", json!({})),
        policy(
            plan,
            "deny-other-namespaces",
            json!({
                "action": "DENY",
                "rules": [{ "from": [{ "source": { "notNamespaces": [plan.namespace] } }] }],
            }),
        ),
    ];
    for svc in &plan.services {
        let mut rules = Vec::new();
        for rule in plan.rules_to(&svc.name) {
            let mut operation = json!({ "ports": [plan.opts.inbound_port.to_string()] });
            if let Some(methods) = &rule.methods {
                operation["methods"] = json!(methods);
            }
            if let Some(path) = &rule.path {
                if let Some(bad) = path.chars().find(|c| matches!(c, '*' | '{' | '}')) {
                    return Err(RenderError::CallNotExpressible {
                        target: plan.target,
                        caller: rule.caller.to_string(),
                        call: call_text(rule),
                        reason: format!(
                            "Istio path patterns read `{bad}` as a wildcard or template and cannot match it literally"
                        ),
                    });
                }
                // Exact path, and everything below it: never `/charge*`, which also matches
                // `/chargeback`.
                operation["paths"] = json!([path, format!("{path}/*")]);
            }
            let caller = &rule.caller;
            rules.push(json!({
                "from": [{ "source": {
                    "principals": [format!("{}/ns/{}/sa/{caller}", plan.opts.trust_domain, plan.namespace)],
                    "requestPrincipals": [format!("{}/{caller}", plan.identity(caller))],
                }}],
                "to": [{ "operation": operation }],
            }));
        }
        let mut spec = json!({ "action": "ALLOW", "selector": Plan::selector(&svc.name) });
        // No callers: an ALLOW with no `rules` key denies everything for this workload.
        if !rules.is_empty() {
            spec["rules"] = Value::Array(rules);
        }
        docs.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": plan.metadata(&format!("pvid-{}", svc.name), Some(&svc.name)),
            "spec": spec,
        }));
    }
    Ok(docs)
}

fn peer_authentication(plan: &Plan<'_>) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": plan.metadata("default", None),
        "spec": { "mtls": { "mode": "STRICT" } },
    })
}

/// Per service with callers: one JWT rule per caller (its issuer, its keys only, this service's
/// audience). The token is forwarded so the pvid sidecar checks it too.
fn request_authentications(plan: &Plan<'_>) -> Option<Vec<Value>> {
    plan.registry?;
    let mut docs = Vec::new();
    for svc in &plan.services {
        let callers = plan.callers_of(&svc.name);
        if callers.is_empty() {
            continue;
        }
        let mut audiences = vec![plan.identity(&svc.name)];
        if svc.accept_preview_audience {
            audiences.push(pvid_core::preview_audience(plan.preview));
        }
        let mut rules = Vec::new();
        for caller in callers {
            rules.push(json!({
                "issuer": plan.identity(caller),
                "audiences": audiences,
                "jwks": plan.jwks_of(&std::iter::once(caller).collect())?,
                "forwardOriginalToken": true,
            }));
        }
        docs.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": plan.metadata(&format!("pvid-{}", svc.name), Some(&svc.name)),
            "spec": { "selector": Plan::selector(&svc.name), "jwtRules": rules },
        }));
    }
    Some(docs)
}
