//! Docker Compose: an override file (`compose.pvid.yaml`) that puts a `pvid proxy` sidecar in
//! front of every service of the spec.
//!
//! The sidecar `<svc>-pvid` shares its application's network namespace (`network_mode:
//! service:<svc>`): it listens for callers on the inbound port, forwards to the application on
//! loopback, and offers the egress port on loopback only, so no other container can mint tokens
//! through it. Every service of the spec joins one network per preview. The private key reaches
//! the sidecar as a Compose secret (a bind mount of a file pvid writes with mode 0600, owned by
//! the user the sidecar runs as): outside Swarm, Compose ignores a secret's `mode`/`uid`/`gid`,
//! so the override sets neither and relies on the file itself. Only the sidecar lists the
//! secret, so other containers cannot read it.

use pvid_core::ServiceName;
use serde_json::{Value, json};

use crate::doc::{file, secret_file, yaml};
use crate::model::Plan;
use crate::{Custody, RenderError, Rendered};

/// The override file's name.
pub(crate) const OVERRIDE: &str = "compose.pvid.yaml";
/// Where the key is mounted in the sidecar (Compose mounts secrets under `/run/secrets/`).
const KEY_TARGET: &str = "pvid-key.json";
/// Where the registry is mounted in the sidecar.
const REGISTRY_TARGET: &str = "/etc/pvid/registry.json";

pub(crate) fn render(plan: &Plan<'_>) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    let dir = plan.opts.compose_dir.trim_end_matches('/');
    let mut services = serde_json::Map::new();
    let mut secrets = serde_json::Map::new();
    for svc in &plan.services {
        let name = &svc.name;
        services.insert(
            name.to_string(),
            json!({ "environment": plan.app_env(name), "networks": ["pvid"] }),
        );
        services.insert(format!("{name}-pvid"), sidecar(plan, name, dir));
        match plan.custody {
            Custody::Sidecar => {
                secrets.insert(secret_name(plan, name), json!({ "file": format!("{dir}/secrets/{name}.json") }));
                if let Some(key) = plan.secret_of(name) {
                    let text = String::from_utf8(key.expose().to_vec())
                        .map_err(|_| RenderError::SecretMissing(format!("{name} (its key document is not text)")))?;
                    out.files.push(secret_file(format!("secrets/{name}.json"), text));
                }
            }
        }
    }
    let mut doc = json!({
        "services": services,
        "networks": { "pvid": { "name": plan.namespace } },
    });
    if !secrets.is_empty() {
        doc["secrets"] = Value::Object(secrets);
    }
    out.files.push(file(OVERRIDE, yaml(&doc)));
    match plan.registry_json(|svc| format!("{svc}:{}", plan.opts.inbound_port)) {
        Some(registry) => out.files.push(file("registry.json", registry)),
        None => out.warnings.push(plan.not_provisioned("registry.json and the key files")),
    }
    if plan.registry.is_some() && !plan.with_secrets() {
        out.warnings.push(
            "the key files (secrets/<service>.json) were not written: render with --include-secrets --out DIR, \
             or use `pvid up --compose DIR`"
                .to_owned(),
        );
    }
    Ok(out)
}

fn secret_name(plan: &Plan<'_>, svc: &ServiceName) -> String {
    format!("pvid-{}-{svc}-key", plan.preview)
}

fn sidecar(plan: &Plan<'_>, svc: &ServiceName, dir: &str) -> Value {
    let o = plan.opts;
    let args = plan.sidecar_args(svc, REGISTRY_TARGET, &format!("/run/secrets/{KEY_TARGET}"));
    let mut doc = json!({
        "image": o.image,
        "entrypoint": ["pvid"],
        "command": args,
        "network_mode": format!("service:{svc}"),
        "depends_on": [svc.as_str()],
        "user": format!("{}:{}", o.sidecar_user.0, o.sidecar_user.1),
        "read_only": true,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "restart": "unless-stopped",
        "volumes": [{ "type": "bind", "source": format!("{dir}/registry.json"), "target": REGISTRY_TARGET, "read_only": true }],
    });
    match plan.custody {
        Custody::Sidecar => {
            doc["secrets"] = json!([{ "source": secret_name(plan, svc), "target": KEY_TARGET }]);
        }
    }
    doc
}
