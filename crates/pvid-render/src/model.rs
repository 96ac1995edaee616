//! What every target renders from: the preview's services and allowed calls in a canonical order,
//! the names derived from them, and the checks that the registry and secrets belong to them.

use pvid_core::{CallRule, PreviewConfig, PreviewId, Registry, ServiceConfig, ServiceName, service_identity};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

use crate::{Custody, RenderError, RenderInput, RenderOptions, SecretBytes, Target};

/// Label naming the preview of every object and pod pvid renders.
pub(crate) const LABEL_PREVIEW: &str = "pvid.dev/preview";
/// Label naming the service of a pod; every selector pvid renders uses it.
pub(crate) const LABEL_SERVICE: &str = "pvid.dev/service";
/// The standard managed-by label.
pub(crate) const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Name of the sidecar's inbound container port (an IANA service name: at most 15 characters).
pub(crate) const PORT_NAME: &str = "pvid-in";
/// Kubernetes names are DNS labels of at most this many characters.
const DNS_LABEL_MAX: usize = 63;

/// The canonical view of one preview, shared by every target.
pub(crate) struct Plan<'a> {
    /// The target being rendered (for error messages).
    pub target: Target,
    /// The preview.
    pub preview: &'a PreviewId,
    /// Rendering knobs.
    pub opts: &'a RenderOptions,
    /// `preview-<id>`: the namespace (Kubernetes) and name prefix (elsewhere).
    pub namespace: String,
    /// Services, sorted by name.
    pub services: Vec<&'a ServiceConfig>,
    /// Allowed calls: sorted, deduplicated, methods sorted, `/` written as "any path".
    pub rules: Vec<CallRule>,
    /// The registry, when the preview is provisioned.
    pub registry: Option<&'a Registry>,
    /// Private keys, when asked for.
    pub secrets: Option<&'a BTreeMap<ServiceName, SecretBytes>>,
    /// Key custody.
    pub custody: Custody,
}

impl<'a> Plan<'a> {
    /// Builds and checks the plan.
    pub(crate) fn new(target: Target, input: &RenderInput<'a>) -> Result<Plan<'a>, RenderError> {
        let mut services: Vec<&ServiceConfig> = input.config.services.iter().collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        let plan = Plan {
            target,
            preview: input.preview,
            opts: input.options,
            namespace: format!("preview-{}", input.preview),
            services,
            rules: canonical_rules(&input.config.policy),
            registry: input.registry,
            secrets: input.secrets,
            custody: input.custody,
        };
        if let Some(reg) = input.registry {
            check_registry(input.preview, input.config, reg)?;
        }
        if let Some(secrets) = input.secrets {
            for svc in &plan.services {
                if !secrets.contains_key(&svc.name) {
                    return Err(RenderError::SecretMissing(svc.name.to_string()));
                }
            }
        }
        if target.is_kubernetes() {
            plan.check_dns_label("namespace", &plan.namespace, "shorten the preview id to at most 55 characters")?;
            for svc in &plan.services {
                plan.check_dns_label(
                    "Service name",
                    &format!("pvid-{}", svc.name),
                    &format!("shorten service `{}` to at most 58 characters", svc.name),
                )?;
            }
        }
        Ok(plan)
    }

    /// Refuses a derived Kubernetes name longer than a DNS label.
    pub(crate) fn check_dns_label(&self, what: &'static str, name: &str, fix: &str) -> Result<(), RenderError> {
        if name.len() > DNS_LABEL_MAX {
            return Err(RenderError::NameNotValid {
                target: self.target,
                what,
                name: name.to_owned(),
                reason: format!("is {} characters, over the limit of {DNS_LABEL_MAX}: {fix}", name.len()),
            });
        }
        Ok(())
    }

    /// The rules whose callee is `callee`.
    pub(crate) fn rules_to<'s>(&'s self, callee: &'s ServiceName) -> impl Iterator<Item = &'s CallRule> + 's {
        self.rules.iter().filter(move |r| &r.callee == callee)
    }

    /// Services allowed to call `callee` (on some method and path).
    pub(crate) fn callers_of(&self, callee: &ServiceName) -> BTreeSet<&ServiceName> {
        self.rules.iter().filter(|r| &r.callee == callee).map(|r| &r.caller).collect()
    }

    /// Services `caller` may call.
    pub(crate) fn callees_of(&self, caller: &ServiceName) -> BTreeSet<&ServiceName> {
        self.rules.iter().filter(|r| &r.caller == caller).map(|r| &r.callee).collect()
    }

    /// `preview-<id>-<svc>`: issuer and audience of a service.
    pub(crate) fn identity(&self, svc: &ServiceName) -> String {
        service_identity(self.preview, svc)
    }

    /// The labels every object of the preview carries.
    pub(crate) fn labels(&self) -> Value {
        json!({ LABEL_MANAGED_BY: "pvid", LABEL_PREVIEW: self.preview.as_str() })
    }

    /// The labels of one service's objects and pods.
    pub(crate) fn service_labels(&self, svc: &ServiceName) -> Value {
        json!({ LABEL_MANAGED_BY: "pvid", LABEL_PREVIEW: self.preview.as_str(), LABEL_SERVICE: svc.as_str() })
    }

    /// The selector of one service's pods.
    pub(crate) fn selector(svc: &ServiceName) -> Value {
        json!({ "matchLabels": { LABEL_SERVICE: svc.as_str() } })
    }

    /// Object metadata in the preview namespace.
    pub(crate) fn metadata(&self, name: &str, svc: Option<&ServiceName>) -> Value {
        let labels = svc.map_or_else(|| self.labels(), |s| self.service_labels(s));
        json!({ "name": name, "namespace": self.namespace, "labels": labels })
    }

    /// The registry as the sidecars of this substrate read it: each service's address replaced
    /// by `address(svc)`, pretty JSON. `None` when the preview is not provisioned.
    pub(crate) fn registry_json(&self, address: impl Fn(&ServiceName) -> String) -> Option<String> {
        let mut reg = self.registry?.clone();
        for (name, entry) in reg.services.iter_mut() {
            entry.address = Some(address(name));
        }
        Some(crate::doc::json(&serde_json::to_value(&reg).ok()?))
    }

    /// The JWKS of the preview restricted to `services`' keys, as a JSON string (for inline
    /// `jwks` fields). `None` when the preview is not provisioned.
    pub(crate) fn jwks_of(&self, services: &BTreeSet<&ServiceName>) -> Option<String> {
        let reg = self.registry?;
        let kids: BTreeSet<&str> = services
            .iter()
            .filter_map(|s| reg.services.get(*s))
            .flat_map(|e| e.kids.iter().map(String::as_str))
            .collect();
        let mut keys: Vec<&pvid_core::Jwk> =
            reg.jwks.keys.iter().filter(|k| k.kid.as_deref().is_some_and(|kid| kids.contains(kid))).collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        let value = json!({ "keys": keys });
        // Compact: Envoy parses it; one line per key set keeps the YAML readable.
        serde_json::to_string(&crate::doc::sorted(value)).ok()
    }

    /// The warning given when documents that need the registry are left out.
    pub(crate) fn not_provisioned(&self, what: &str) -> String {
        format!(
            "preview {} is not provisioned, so what needs its public keys was left out: {what}; run `pvid up` and render again",
            self.preview
        )
    }

    /// The secret of a service, when secrets were asked for and custody is sidecar.
    pub(crate) fn secret_of(&self, svc: &ServiceName) -> Option<&'a SecretBytes> {
        match self.custody {
            Custody::Sidecar => self.secrets?.get(svc),
        }
    }

    /// Whether secrets were asked for.
    pub(crate) fn with_secrets(&self) -> bool {
        self.secrets.is_some()
    }

    /// `pvid proxy` arguments for a sidecar of `svc`.
    pub(crate) fn sidecar_args(&self, svc: &ServiceName, registry: &str, key_file: &str) -> Vec<String> {
        let o = self.opts;
        let mut args: Vec<String> = vec![
            "proxy".into(),
            "--preview".into(),
            self.preview.to_string(),
            "--service".into(),
            svc.to_string(),
            "--listen".into(),
            format!("0.0.0.0:{}", o.inbound_port),
            "--upstream".into(),
            format!("127.0.0.1:{}", o.app_port),
            "--egress".into(),
            format!("127.0.0.1:{}", o.egress_port),
            "--registry".into(),
            registry.into(),
        ];
        match self.custody {
            Custody::Sidecar => args.extend(["--key-file".to_owned(), key_file.to_owned()]),
        }
        args
    }

    /// The environment of the application container.
    pub(crate) fn app_env(&self, svc: &ServiceName) -> Value {
        json!({
            "PREVIEW_ID": self.preview.as_str(),
            "PVID_EGRESS": format!("http://127.0.0.1:{}", self.opts.egress_port),
            "SERVICE_AUDIENCE": self.identity(svc),
        })
    }
}

/// A rule as written in the caller's `calls` list (`payments: POST /charge`).
pub(crate) fn call_text(rule: &CallRule) -> String {
    let mut s = rule.callee.to_string();
    if rule.methods.is_some() || rule.path.is_some() {
        s.push(':');
    }
    if let Some(ms) = &rule.methods {
        s.push(' ');
        s.push_str(&ms.join("|"));
    }
    if let Some(p) = &rule.path {
        s.push(' ');
        s.push_str(p);
    }
    s
}

/// Sorted, deduplicated rules; methods sorted and deduplicated; path `/` means any path.
fn canonical_rules(policy: &[CallRule]) -> Vec<CallRule> {
    let mut rules: Vec<CallRule> = policy
        .iter()
        .map(|r| {
            let methods = r.methods.as_ref().map(|ms| {
                let set: BTreeSet<&String> = ms.iter().collect();
                set.into_iter().cloned().collect()
            });
            CallRule {
                caller: r.caller.clone(),
                callee: r.callee.clone(),
                methods,
                path: r.path.clone().filter(|p| p != "/"),
            }
        })
        .collect();
    rules.sort_by(|a, b| {
        (&a.callee, &a.caller, &a.path, &a.methods).cmp(&(&b.callee, &b.caller, &b.path, &b.methods))
    });
    rules.dedup();
    rules
}

/// The registry must be this preview's, with the same services and the same policy.
fn check_registry(preview: &PreviewId, config: &PreviewConfig, reg: &Registry) -> Result<(), RenderError> {
    if &reg.preview != preview {
        return Err(RenderError::RegistryMismatch(format!("it is preview {}'s, not {preview}'s", reg.preview)));
    }
    let spec: BTreeSet<&ServiceName> = config.services.iter().map(|s| &s.name).collect();
    let published: BTreeSet<&ServiceName> = reg.services.keys().collect();
    if spec != published {
        let names = |s: &BTreeSet<&ServiceName>| s.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ");
        return Err(RenderError::RegistryMismatch(format!(
            "the spec has services [{}], the registry [{}]",
            names(&spec),
            names(&published)
        )));
    }
    if canonical_rules(&config.policy) != canonical_rules(&reg.policy) {
        return Err(RenderError::RegistryMismatch("the spec's calls differ from the provisioned policy".into()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(caller: &str, callee: &str, methods: Option<&[&str]>, path: Option<&str>) -> CallRule {
        CallRule {
            caller: caller.parse().unwrap(),
            callee: callee.parse().unwrap(),
            methods: methods.map(|ms| ms.iter().map(|m| m.to_string()).collect()),
            path: path.map(str::to_owned),
        }
    }

    #[test]
    fn canonical_rules_sort_dedup_and_read_root_path_as_any() {
        let rules = canonical_rules(&[
            rule("b", "x", Some(&["POST", "GET", "POST"]), Some("/a")),
            rule("a", "x", None, Some("/")),
            rule("b", "x", Some(&["GET", "POST"]), Some("/a")),
        ]);
        assert_eq!(rules, vec![rule("a", "x", None, None), rule("b", "x", Some(&["GET", "POST"]), Some("/a"))]);
    }

    #[test]
    fn call_text_is_the_spec_spelling() {
        assert_eq!(call_text(&rule("a", "payments", Some(&["POST"]), Some("/charge"))), "payments: POST /charge");
        assert_eq!(call_text(&rule("a", "worker", None, None)), "worker");
        assert_eq!(call_text(&rule("a", "w", Some(&["GET", "HEAD"]), None)), "w: GET|HEAD");
    }
}
