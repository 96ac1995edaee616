//! Kubernetes: the preview's namespace with default-deny NetworkPolicies, one identity
//! (ServiceAccount) per service, a Service in front of each sidecar, the registry ConfigMap, the
//! application environment, the key Secrets, and a strategic-merge patch per Deployment that adds
//! the sidecar. `kustomization.yaml` is a kustomize Component that a team's own kustomization
//! includes next to its Deployments (one per service, named after it).

use base64::Engine as _;
use pvid_core::ServiceName;
use serde_json::{Value, json};

use crate::doc::{file, secret_file, yaml, yaml_stream};
use crate::model::{LABEL_PREVIEW, LABEL_SERVICE, PORT_NAME, Plan};
use crate::{Custody, RenderError, Rendered};

/// Name of the sidecar container.
pub(crate) const SIDECAR: &str = "pvid-sidecar";
/// Where the registry ConfigMap is mounted in the sidecar.
const REGISTRY_DIR: &str = "/etc/pvid/registry";
/// Where the key Secret is mounted in the sidecar.
const KEY_DIR: &str = "/etc/pvid/key";
/// Name of the key document inside the Secret.
pub(crate) const KEY_FILE: &str = "private-key.json";
/// Mode of the mounted key: readable by the sidecar's non-root user. Only the sidecar container
/// mounts the volume, so the application container cannot see it (Kubernetes' own service
/// account tokens are mounted the same way); a stricter mode would need a pod-wide `fsGroup`,
/// which would change the ownership of the application's volumes too.
const KEY_MODE: u32 = 0o444;

pub(crate) fn render(plan: &Plan<'_>) -> Result<Rendered, RenderError> {
    let mut out = Rendered::default();
    let mut resources = vec!["namespace.yaml", "networkpolicies.yaml", "serviceaccounts.yaml", "services.yaml"];
    out.files.push(file("namespace.yaml", yaml(&namespace(plan, json!({}), json!({})))));
    out.files.push(file("networkpolicies.yaml", yaml_stream(&network_policies(plan))));
    out.files.push(file("serviceaccounts.yaml", yaml_stream(&service_accounts(plan))));
    out.files.push(file("services.yaml", yaml_stream(&services(plan))));

    let mut configmaps = Vec::new();
    match registry_configmap(plan) {
        Some(cm) => configmaps.push(cm),
        None => out.warnings.push(plan.not_provisioned("the registry ConfigMap (pvid-registry) that the sidecars read")),
    }
    configmaps.extend(plan.services.iter().map(|s| env_configmap(plan, &s.name)));
    out.files.push(file("configmaps.yaml", yaml_stream(&configmaps)));
    resources.push("configmaps.yaml");

    match plan.custody {
        Custody::Sidecar => {
            let secrets: Vec<Value> = plan.services.iter().map(|s| key_secret(plan, &s.name)).collect();
            let text = yaml_stream(&secrets);
            out.files.push(if plan.with_secrets() { secret_file("secrets.yaml", text) } else { file("secrets.yaml", text) });
            resources.push("secrets.yaml");
            if !plan.with_secrets() {
                out.warnings.push(
                    "secrets.yaml holds no key material (the default, so the output can be committed); \
                     render with --include-secrets --out DIR to fill it"
                        .to_owned(),
                );
            }
        }
    }

    let mut patches = Vec::new();
    for svc in &plan.services {
        let path = format!("patches/{}.yaml", svc.name);
        out.files.push(file(path.clone(), yaml(&sidecar_patch(plan, &svc.name))));
        patches.push(json!({ "path": path }));
    }
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": resources,
        "patches": patches,
    });
    out.files.push(file("kustomization.yaml", yaml(&kustomization)));
    Ok(out)
}

/// The preview's namespace, with extra labels and annotations for a mesh.
pub(crate) fn namespace(plan: &Plan<'_>, extra_labels: Value, annotations: Value) -> Value {
    let mut labels = plan.labels();
    if let (Some(l), Value::Object(extra)) = (labels.as_object_mut(), extra_labels) {
        l.extend(extra);
    }
    let mut metadata = json!({ "name": plan.namespace, "labels": labels });
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        metadata["annotations"] = annotations;
    }
    json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": metadata })
}

/// Egress to the cluster DNS (kube-dns in kube-system), UDP and TCP 53. The namespace and pod
/// selectors sit in the *same* peer, so both must match (two peers would mean either).
fn dns_egress() -> Value {
    json!({
        "to": [{
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
            "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } },
        }],
        "ports": [{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }],
    })
}

/// The sidecar port, the only one other pods may reach.
fn sidecar_port(plan: &Plan<'_>) -> Value {
    json!([{ "port": plan.opts.inbound_port, "protocol": "TCP" }])
}

/// Default deny (ingress and egress, DNS excepted) for every pod of the namespace, then per
/// service: ingress from its callers' pods and egress to its callees' pods, sidecar port only.
fn network_policies(plan: &Plan<'_>) -> Vec<Value> {
    let mut docs = vec![json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": plan.metadata("default-deny-except-dns", None),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [dns_egress()],
        },
    })];
    for svc in &plan.services {
        let peers = |names: std::collections::BTreeSet<&ServiceName>| -> Vec<Value> {
            names.into_iter().map(|n| json!({ "podSelector": Plan::selector(n) })).collect()
        };
        let mut spec = json!({ "podSelector": Plan::selector(&svc.name), "policyTypes": ["Ingress", "Egress"] });
        let from = peers(plan.callers_of(&svc.name));
        if !from.is_empty() {
            spec["ingress"] = json!([{ "from": from, "ports": sidecar_port(plan) }]);
        }
        let to = peers(plan.callees_of(&svc.name));
        if !to.is_empty() {
            spec["egress"] = json!([{ "to": to, "ports": sidecar_port(plan) }]);
        }
        docs.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": plan.metadata(&format!("pvid-{}", svc.name), Some(&svc.name)),
            "spec": spec,
        }));
    }
    docs
}

/// A NetworkPolicy letting every pod of the preview reach a mesh control plane (the proxies
/// fetch certificates and configuration from it; the default deny would block them).
pub(crate) fn mesh_egress_policy(plan: &Plan<'_>, mesh: &str, namespace: &str, ports: &[u16]) -> Value {
    let ports: Vec<Value> = ports.iter().map(|p| json!({ "port": p, "protocol": "TCP" })).collect();
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": plan.metadata(&format!("allow-egress-{mesh}-control-plane"), None),
        "spec": {
            "podSelector": { "matchExpressions": [{ "key": LABEL_SERVICE, "operator": "Exists" }] },
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": namespace } } }],
                "ports": ports,
            }],
        },
    })
}

/// One ServiceAccount per service: the identity meshes name (`sa/<svc>`).
fn service_accounts(plan: &Plan<'_>) -> Vec<Value> {
    plan.services
        .iter()
        .map(|s| {
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": plan.metadata(s.name.as_str(), Some(&s.name)),
                // The sidecar authenticates with its pvid key, not with a Kubernetes token.
                "automountServiceAccountToken": false,
            })
        })
        .collect()
}

/// A Service in front of each sidecar: the address callers' sidecars forward to.
fn services(plan: &Plan<'_>) -> Vec<Value> {
    plan.services
        .iter()
        .map(|s| {
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": plan.metadata(&format!("pvid-{}", s.name), Some(&s.name)),
                "spec": {
                    "selector": { LABEL_SERVICE: s.name.as_str() },
                    "ports": [{
                        "name": "http-pvid",
                        "appProtocol": "http",
                        "port": plan.opts.inbound_port,
                        "targetPort": PORT_NAME,
                        "protocol": "TCP",
                    }],
                },
            })
        })
        .collect()
}

/// The in-cluster address of a service's sidecar.
pub(crate) fn address(plan: &Plan<'_>, svc: &ServiceName) -> String {
    format!("pvid-{svc}.{}.svc:{}", plan.namespace, plan.opts.inbound_port)
}

/// The registry, with in-cluster addresses, as the sidecars read it.
fn registry_configmap(plan: &Plan<'_>) -> Option<Value> {
    let registry = plan.registry_json(|svc| address(plan, svc))?;
    Some(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": plan.metadata("pvid-registry", None),
        "data": { "registry.json": registry },
    }))
}

/// The application's environment (`envFrom` it in the application container).
fn env_configmap(plan: &Plan<'_>, svc: &ServiceName) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": plan.metadata(&format!("pvid-env-{svc}"), Some(svc)),
        "data": plan.app_env(svc),
    })
}

/// The Secret holding a service's private key; without `--include-secrets` it holds no data and
/// says so.
fn key_secret(plan: &Plan<'_>, svc: &ServiceName) -> Value {
    let mut doc = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": plan.metadata(&format!("pvid-{svc}"), Some(svc)),
        "type": "Opaque",
    });
    match plan.secret_of(svc) {
        Some(secret) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(secret.expose());
            doc["data"] = json!({ KEY_FILE: b64 });
        }
        None => {
            doc["metadata"]["annotations"] =
                json!({ "pvid.dev/values": "omitted; render with --include-secrets to fill" });
        }
    }
    doc
}

/// Strategic-merge patch of the Deployment named after the service: pod labels (the selectors
/// of every policy), the service account, the sidecar container and its two volumes. Containers
/// and volumes merge by name, so the patch leaves the application container alone.
fn sidecar_patch(plan: &Plan<'_>, svc: &ServiceName) -> Value {
    let o = plan.opts;
    let args = plan.sidecar_args(svc, &format!("{REGISTRY_DIR}/registry.json"), &format!("{KEY_DIR}/{KEY_FILE}"));
    let mut mounts = vec![json!({ "name": "pvid-registry", "mountPath": REGISTRY_DIR, "readOnly": true })];
    let mut volumes = vec![json!({ "name": "pvid-registry", "configMap": { "name": "pvid-registry" } })];
    match plan.custody {
        Custody::Sidecar => {
            mounts.push(json!({ "name": "pvid-key", "mountPath": KEY_DIR, "readOnly": true }));
            volumes.push(json!({
                "name": "pvid-key",
                "secret": { "secretName": format!("pvid-{svc}"), "defaultMode": KEY_MODE },
            }));
        }
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": svc.as_str(), "namespace": plan.namespace },
        "spec": { "template": {
            // Only the selector labels: the pods stay the team's (no managed-by label).
            "metadata": { "labels": { LABEL_PREVIEW: plan.preview.as_str(), LABEL_SERVICE: svc.as_str() } },
            "spec": {
                "serviceAccountName": svc.as_str(),
                "containers": [{
                    "name": SIDECAR,
                    "image": o.image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["pvid"],
                    "args": args,
                    "ports": [{ "name": PORT_NAME, "containerPort": o.inbound_port, "protocol": "TCP" }],
                    "resources": {
                        "requests": { "cpu": "10m", "memory": "16Mi" },
                        "limits": { "memory": "64Mi" },
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": { "drop": ["ALL"] },
                        "readOnlyRootFilesystem": true,
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            },
        }},
    })
}
