//! Linkerd: authorization that denies by default, on top of the Kubernetes objects.
//!
//! The namespace's `config.linkerd.io/default-inbound-policy` is `deny` (never
//! `all-unauthenticated`), and a `Server` (`accessPolicy: deny`) covers each service's sidecar
//! port. Requests reach the sidecar only through an HTTPRoute of that Server whose
//! AuthorizationPolicy requires a MeshTLSAuthentication listing the allowed callers' service
//! accounts.
//!
//! Linkerd picks *one* route per request (Gateway API precedence: the longest path prefix, then a
//! method match), and only that route's authorizations count, whereas pvid's policy is a union of
//! rules. So routes are not one per rule: for each path the rules of a service name, there is a
//! route for "any method" and one per method the rules name, and each route admits every caller
//! whose rules cover it entirely. Whatever route Linkerd picks then admits exactly the callers
//! pvid's policy admits for that request. Routes that would admit no one are left out: every less
//! specific route admits a subset of a more specific one's callers, so nothing less specific can
//! admit the request either, and a request no route matches is refused.

use pvid_core::{CallRule, ServiceName};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use crate::doc::{file, yaml, yaml_stream};
use crate::k8s::{mesh_egress_policy, namespace};
use crate::model::{PORT_NAME, Plan, call_text};
use crate::{RenderError, Rendered};

/// Linkerd control-plane ports: identity (8080), destination (8086), policy (8090).
const CONTROL_PLANE_PORTS: [u16; 3] = [8080, 8086, 8090];
/// Methods a Gateway API HTTPRoute can match.
const ROUTE_METHODS: [&str; 9] = ["CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"];
const POLICY: &str = "policy.linkerd.io";

/// One route of a service: a path prefix and an optional method, with who may use it.
#[derive(Debug, PartialEq, Eq)]
struct Route<'a> {
    path: String,
    method: Option<String>,
    callers: BTreeSet<&'a ServiceName>,
}

pub(crate) fn render(plan: &Plan<'_>) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    out.files.push(file(
        "namespace.yaml",
        yaml(&namespace(
            plan,
            json!({}),
            json!({ "config.linkerd.io/default-inbound-policy": "deny", "linkerd.io/inject": "enabled" }),
        )),
    ));
    let (mut servers, mut routes, mut authz, mut authn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for svc in &plan.services {
        let server = format!("pvid-{}", svc.name);
        servers.push(json!({
            "apiVersion": format!("{POLICY}/v1beta3"),
            "kind": "Server",
            "metadata": plan.metadata(&server, Some(&svc.name)),
            "spec": {
                "podSelector": Plan::selector(&svc.name),
                "port": PORT_NAME,
                "proxyProtocol": "HTTP/1",
                "accessPolicy": "deny",
            },
        }));
        for route in routes_of(plan, &svc.name)? {
            let name = route_name(&svc.name, route.method.as_deref(), &route.path);
            let mut matched = json!({ "path": { "type": "PathPrefix", "value": route.path } });
            if let Some(m) = &route.method {
                matched["method"] = json!(m);
            }
            routes.push(json!({
                "apiVersion": format!("{POLICY}/v1beta3"),
                "kind": "HTTPRoute",
                "metadata": plan.metadata(&name, Some(&svc.name)),
                "spec": {
                    "parentRefs": [{ "group": POLICY, "kind": "Server", "name": server }],
                    "rules": [{ "matches": [matched] }],
                },
            }));
            authz.push(json!({
                "apiVersion": format!("{POLICY}/v1alpha1"),
                "kind": "AuthorizationPolicy",
                "metadata": plan.metadata(&name, Some(&svc.name)),
                "spec": {
                    "targetRef": { "group": POLICY, "kind": "HTTPRoute", "name": name },
                    "requiredAuthenticationRefs": [{ "group": POLICY, "kind": "MeshTLSAuthentication", "name": name }],
                },
            }));
            let identities: Vec<Value> =
                route.callers.iter().map(|c| json!({ "kind": "ServiceAccount", "name": c.as_str() })).collect();
            authn.push(json!({
                "apiVersion": format!("{POLICY}/v1alpha1"),
                "kind": "MeshTLSAuthentication",
                "metadata": plan.metadata(&name, Some(&svc.name)),
                "spec": { "identityRefs": identities },
            }));
        }
    }
    out.files.push(file("servers.yaml", yaml_stream(&servers)));
    for (path, docs) in [("httproutes.yaml", routes), ("authorizationpolicies.yaml", authz), ("meshtlsauthentications.yaml", authn)] {
        if !docs.is_empty() {
            out.files.push(file(path, yaml_stream(&docs)));
        }
    }
    out.files.push(file(
        "networkpolicy-mesh.yaml",
        yaml(&mesh_egress_policy(plan, "linkerd", &plan.opts.linkerd_namespace, &CONTROL_PLANE_PORTS)),
    ));
    Ok(out)
}

/// Stable route name: service, method (or `any`) and a hash of the path, so adding a rule
/// elsewhere never renames a route.
pub fn route_name(svc: &ServiceName, method: Option<&str>, path: &str) -> String {
    let method = method.map_or_else(|| "any".to_owned(), str::to_ascii_lowercase);
    format!("{svc}-{method}-{:08x}", fnv1a32(path.as_bytes()))
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// Whether path prefix `prefix` covers `path`, element by element (`/a` covers `/a/b`, not `/ab`).
fn covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The routes of one service (see the module docs), checked against what Gateway API routes
/// can express.
fn routes_of<'a>(plan: &'a Plan<'_>, svc: &'a ServiceName) -> Result<Vec<Route<'a>>, RenderError> {
    let rules: Vec<&CallRule> = plan.rules_to(svc).collect();
    for rule in &rules {
        check_rule(plan, rule)?;
    }
    let paths: BTreeSet<&str> = rules.iter().map(|r| r.path.as_deref().unwrap_or("/")).collect();
    let methods: BTreeSet<&str> = rules.iter().flat_map(|r| r.methods.iter().flatten().map(String::as_str)).collect();
    let mut routes = Vec::new();
    for path in paths {
        let covering: Vec<&&CallRule> = rules.iter().filter(|r| covers(r.path.as_deref().unwrap_or("/"), path)).collect();
        let mut by_method: BTreeMap<Option<&str>, BTreeSet<&ServiceName>> = BTreeMap::new();
        by_method.insert(None, covering.iter().filter(|r| r.methods.is_none()).map(|r| &r.caller).collect());
        for m in &methods {
            let callers = covering
                .iter()
                .filter(|r| r.methods.as_ref().is_none_or(|ms| ms.iter().any(|x| x == m)))
                .map(|r| &r.caller)
                .collect();
            by_method.insert(Some(m), callers);
        }
        for (method, callers) in by_method {
            if !callers.is_empty() {
                routes.push(Route { path: path.to_owned(), method: method.map(str::to_owned), callers });
            }
        }
    }
    Ok(routes)
}

/// Gateway API path values allow RFC 3986 path characters only, and routes match only the
/// standard methods.
fn check_rule(plan: &Plan<'_>, rule: &CallRule) -> Result<(), RenderError> {
    let fail = |reason: String| RenderError::CallNotExpressible {
        target: plan.target,
        caller: rule.caller.to_string(),
        call: call_text(rule),
        reason,
    };
    if let Some(m) = rule.methods.iter().flatten().find(|m| !ROUTE_METHODS.contains(&m.as_str())) {
        return Err(fail(format!(
            "Linkerd HTTPRoutes match only the standard methods ({}), not `{m}`",
            ROUTE_METHODS.join(", ")
        )));
    }
    if let Some(path) = &rule.path {
        let allowed = |c: char| c.is_ascii_alphanumeric() || "-/._~!$&'()*+,;=:@%".contains(c);
        if let Some(bad) = path.chars().find(|c| !allowed(*c)) {
            return Err(fail(format!("`{bad}` is not allowed in a Linkerd HTTPRoute path (RFC 3986 path characters only)")));
        }
    }
    Ok(())
}
