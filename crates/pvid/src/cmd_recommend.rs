//! `pvid recommend`: which of the four patterns (DESIGN.md) fits a team's size and substrate,
//! why, and the exact next commands. [`recommend`] is a pure function so every branch is a unit
//! test; the command only parses flags and prints.

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::exit::{Failure, invalid};

/// Where the services run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Substrate {
    /// Kubernetes.
    K8s,
    /// Docker Compose.
    Compose,
    /// HashiCorp Nomad.
    Nomad,
    /// AWS ECS.
    Ecs,
    /// AWS Lambda or Google Cloud Run.
    Serverless,
}

/// The service mesh already in place, if any.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mesh {
    /// Istio (Kubernetes).
    Istio,
    /// Linkerd (Kubernetes).
    Linkerd,
    /// Consul service mesh.
    Consul,
    /// No mesh.
    #[default]
    None,
}

/// Arguments of `pvid recommend`.
#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// How many services one preview runs.
    #[arg(long)]
    services: u32,
    /// Where they run.
    #[arg(long, value_enum)]
    substrate: Substrate,
    /// The service mesh in place (default: none).
    #[arg(long, value_enum, default_value_t = Mesh::None)]
    mesh: Mesh,
    /// Print the advice as JSON.
    #[arg(long)]
    json: bool,
}

/// The advice.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Advice {
    /// DESIGN.md's pattern number: 1 shared, 2 per-service keys, 3 mesh identity, 4 auth proxy.
    pub pattern: u8,
    /// One line: what to use.
    pub summary: String,
    /// Only as a first step, to be left soon (pattern 1).
    pub temporary: bool,
    /// Why this pattern fits.
    pub why: Vec<String>,
    /// What the team must know before relying on it.
    pub warnings: Vec<String>,
    /// The commands to run next, in order.
    pub next: Vec<String>,
}

const SPEC: &str = "preview.yaml";

/// The rendered k8s folder is a kustomize Component (patches onto the team's Deployments).
const KUSTOMIZE: &str = "kubectl apply -k .   # after adding pvid/k8s to `components:` of the kustomization holding your Deployments";

/// Pattern 1: the spec line that turns it on, before the usual wiring.
const SHARED_MODE: &str = "add `mode: shared` to preview.yaml (pvid up and pvid doctor will warn)";
/// Pattern 1: how to leave it, after the wiring.
const SHARED_LEAVE: &str = "pvid migrate ID --to per-service   # as soon as you can: no downtime, then remove `mode: shared`";

/// The advice for `services` services on `substrate` with `mesh`; an error names the input
/// that makes no sense.
pub fn recommend(services: u32, substrate: Substrate, mesh: Mesh) -> Result<Advice, String> {
    if services == 0 {
        return Err("--services must be at least 1".into());
    }
    match (mesh, substrate) {
        // pvid renders Istio and Linkerd objects for Kubernetes only.
        (Mesh::Istio | Mesh::Linkerd, s) if s != Substrate::K8s => {
            return Err(format!("--mesh {} runs on Kubernetes here: use --substrate k8s, or --mesh none", name(mesh)));
        }
        // Functions have no sidecar a mesh could inject.
        (Mesh::Consul, Substrate::Serverless) => {
            return Err("--mesh consul with --substrate serverless: functions join no mesh; use --mesh none".into());
        }
        _ => {}
    }

    let up = format!("pvid up -f {SPEC}");
    let mut advice = if services <= 2 {
        Advice {
            pattern: 1,
            summary: "shared credentials, as a temporary step only; move to per-service keys (pattern 2) next".into(),
            temporary: true,
            why: vec![format!("{services} service(s): one key set is the least to set up while the team starts")],
            warnings: vec![
                "with shared credentials every permission-boundary test is meaningless: any service can be any other".into(),
                "a compromise of one preview is a compromise of all: every preview holds the same keys".into(),
            ],
            next: vec![format!("# {SHARED_MODE}")],
        }
    } else if matches!(mesh, Mesh::Istio | Mesh::Linkerd) {
        let m = name(mesh);
        Advice {
            pattern: 3,
            summary: format!("mesh identity ({m}) scoped to the preview's namespace, with per-service pvid keys"),
            temporary: false,
            why: vec![
                format!("{m} already gives every pod an mTLS identity: pvid renders the namespace, default-deny NetworkPolicies and {m} authorization admitting exactly the spec's calls"),
                "the pvid sidecar still checks the token per callee, so a mesh misconfiguration is not the only wall".into(),
            ],
            warnings: vec![],
            next: vec![
                up.clone(),
                format!("pvid render k8s -f {SPEC} --out pvid/k8s --include-secrets"),
                format!("pvid render {m} -f {SPEC} --out pvid/{m}"),
                format!("kubectl apply -f pvid/{m}   # its namespace.yaml replaces pvid/k8s/namespace.yaml"),
                KUSTOMIZE.into(),
            ],
        }
    } else {
        sidecar_advice(services, substrate, mesh, &up)
    };

    if services <= 2 {
        // Pattern 1's wiring is the per-service wiring of the same substrate.
        let wiring = sidecar_advice(services, substrate, mesh, &up);
        advice.next.extend(wiring.next);
        advice.next.push(SHARED_LEAVE.into());
        advice.warnings.extend(wiring.warnings);
    }
    if services > 10 {
        advice.why.push(format!(
            "{services} services: still one key per service; run the control plane (`pvid serve`, CLI with --server URL) so sidecars long-poll the registry, and render the wiring instead of writing it by hand"
        ));
        advice.next.insert(0, "pvid serve --listen 0.0.0.0:7070   # then: export PVID_SERVER=http://HOST:7070".into());
    }
    Ok(advice)
}

/// Pattern 2 keys behind the `pvid proxy` sidecar (pattern 4), wired the substrate's way.
fn sidecar_advice(services: u32, substrate: Substrate, mesh: Mesh, up: &str) -> Advice {
    let proxy = "pvid proxy --preview ID --service SVC --listen 0.0.0.0:8400 --upstream 127.0.0.1:8080 --egress 127.0.0.1:8401";
    let mut why = Vec::new();
    let mut warnings = Vec::new();
    let next: Vec<String> = match substrate {
        Substrate::K8s => vec![
            up.to_owned(),
            format!("pvid render k8s -f {SPEC} --out pvid/k8s --include-secrets"),
            KUSTOMIZE.into(),
        ],
        Substrate::Compose => vec![
            format!("{up} --compose pvid"),
            "docker compose -f compose.yaml -f pvid/compose.pvid.yaml up".into(),
        ],
        Substrate::Nomad | Substrate::Ecs => vec![
            up.to_owned(),
            format!("pvid render compose -f {SPEC} --out pvid --include-secrets   # key files and registry.json to translate into the task definitions"),
            format!("{proxy} --registry pvid/registry.json --key-file pvid/secrets/SVC.json   # a sidecar task per service, in the app's network namespace; set the registry's addresses to yours"),
        ],
        Substrate::Serverless => vec![
            up.to_owned(),
            format!("pvid render serverless -f {SPEC} --out pvid/serverless"),
        ],
    };
    let summary = match substrate {
        Substrate::Serverless => "per-service roles (pattern 2) with a token check in every function (pattern 4); the sidecar where a container runs".to_owned(),
        _ => "per-service keys with the `pvid proxy` sidecar in front of every service (pattern 4 on top)".to_owned(),
    };
    match (substrate, mesh) {
        (_, Mesh::Consul) => why.push("pvid renders no Consul intentions yet: the pvid sidecar enforces the spec's calls next to Consul".into()),
        (Substrate::K8s | Substrate::Compose, _) => why.push(format!(
            "{services} services without a mesh: a key pair per service per preview, and a sidecar that admits exactly the spec's calls, default deny"
        )),
        (Substrate::Nomad | Substrate::Ecs, _) => why.push(
            "no mesh and no renderer for this substrate: the sidecar carries the same checks anywhere a container runs".into(),
        ),
        (Substrate::Serverless, _) => why.push(
            "functions have no sidecar: IAM admits exactly the spec's edges per function, and each function checks the pvid token itself (`pvid token verify` or the library)".into(),
        ),
    }
    if substrate == Substrate::Serverless {
        warnings.push("a direct function-to-function invoke through the platform API bypasses every HTTP-level check; the rendered DenyDirectInvoke statement must stay".into());
        warnings.push("IAM cannot match methods or paths: a rule like `payments: POST /charge` becomes the edge api → payments, and the function must check method and path".into());
    }
    Advice { pattern: 2, summary, temporary: false, why, warnings, next }
}

fn name(m: Mesh) -> &'static str {
    match m {
        Mesh::Istio => "istio",
        Mesh::Linkerd => "linkerd",
        Mesh::Consul => "consul",
        Mesh::None => "none",
    }
}

pub fn run(a: RecommendArgs) -> Result<i32, Failure> {
    let advice = recommend(a.services, a.substrate, a.mesh).map_err(|e| invalid(anyhow!(e)))?;
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"services": a.services, "substrate": a.substrate, "mesh": a.mesh, "pattern": advice.pattern,
                "summary": advice.summary, "temporary": advice.temporary, "why": advice.why,
                "warnings": advice.warnings, "next": advice.next})
        );
        return Ok(0);
    }
    outln!("recommended: pattern {}: {}", advice.pattern, advice.summary);
    for w in &advice.why {
        outln!("  why: {w}");
    }
    for w in &advice.warnings {
        outln!("  WARNING: {w}");
    }
    outln!("next:");
    for c in &advice.next {
        outln!("  {c}");
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(a: &Advice) -> String {
        format!("{} {} {} {}", a.summary, a.why.join(" "), a.warnings.join(" "), a.next.join(" "))
    }

    #[test]
    fn one_or_two_services_get_shared_as_a_temporary_step_and_per_service_next() {
        for n in [1, 2] {
            let a = recommend(n, Substrate::Compose, Mesh::None).unwrap();
            assert_eq!((a.pattern, a.temporary), (1, true));
            let text = all(&a);
            assert!(text.contains("permission-boundary test is meaningless"), "{text}");
            assert!(text.contains("compromise of one preview is a compromise of all"), "{text}");
            assert!(a.next[0].contains("add `mode: shared`"), "{:?}", a.next);
            assert!(a.next.last().unwrap().starts_with("pvid migrate ID --to per-service"), "{:?}", a.next);
            assert_eq!(a.next[1], "pvid up -f preview.yaml --compose pvid");
            assert_eq!(a.next.iter().filter(|c| c.starts_with("pvid up")).count(), 1);
        }
        // Even serverless warns about direct invokes at this size.
        let a = recommend(2, Substrate::Serverless, Mesh::None).unwrap();
        assert!(all(&a).contains("direct function-to-function invoke"));
    }

    #[test]
    fn three_to_ten_without_a_mesh_get_per_service_keys_and_the_sidecar() {
        for n in [3, 10] {
            let a = recommend(n, Substrate::K8s, Mesh::None).unwrap();
            assert_eq!((a.pattern, a.temporary), (2, false));
            assert!(a.summary.contains("pvid proxy"));
            assert_eq!(a.next, ["pvid up -f preview.yaml", "pvid render k8s -f preview.yaml --out pvid/k8s --include-secrets", KUSTOMIZE]);
            assert!(a.warnings.is_empty());
        }
        let a = recommend(5, Substrate::Compose, Mesh::None).unwrap();
        assert_eq!(a.next[0], "pvid up -f preview.yaml --compose pvid");
    }

    #[test]
    fn istio_and_linkerd_on_k8s_get_mesh_identity_per_namespace() {
        for (mesh, m) in [(Mesh::Istio, "istio"), (Mesh::Linkerd, "linkerd")] {
            let a = recommend(6, Substrate::K8s, mesh).unwrap();
            assert_eq!(a.pattern, 3);
            assert!(a.summary.contains("namespace"));
            assert!(a.next.contains(&format!("pvid render {m} -f preview.yaml --out pvid/{m}")), "{:?}", a.next);
            assert!(a.next.iter().any(|c| c.starts_with("kubectl apply")));
        }
    }

    #[test]
    fn consul_gets_the_sidecar_and_says_no_intentions_are_rendered() {
        for s in [Substrate::K8s, Substrate::Nomad, Substrate::Ecs] {
            let a = recommend(5, s, Mesh::Consul).unwrap();
            assert_eq!(a.pattern, 2);
            assert!(all(&a).contains("renders no Consul intentions"), "{a:?}");
        }
    }

    #[test]
    fn nomad_and_ecs_get_the_sidecar_with_flags_that_exist() {
        for s in [Substrate::Nomad, Substrate::Ecs] {
            let a = recommend(4, s, Mesh::None).unwrap();
            assert_eq!(a.pattern, 2);
            let proxy = a.next.iter().find(|c| c.starts_with("pvid proxy")).unwrap();
            for flag in ["--preview", "--service", "--listen", "--upstream", "--egress", "--registry", "--key-file"] {
                assert!(proxy.contains(flag), "{proxy}");
            }
        }
    }

    #[test]
    fn serverless_gets_render_serverless_and_the_direct_invoke_warning() {
        let a = recommend(5, Substrate::Serverless, Mesh::None).unwrap();
        assert!(a.next.contains(&"pvid render serverless -f preview.yaml --out pvid/serverless".to_owned()));
        assert!(a.warnings[0].contains("direct function-to-function invoke") && a.warnings[0].contains("bypasses"));
    }

    #[test]
    fn more_than_ten_services_stay_per_service_and_get_the_control_plane() {
        let a = recommend(40, Substrate::K8s, Mesh::None).unwrap();
        assert_eq!(a.pattern, 2);
        assert!(a.next[0].starts_with("pvid serve"));
        assert!(a.why.iter().any(|w| w.contains("still one key per service") && w.contains("render")));
        let a = recommend(40, Substrate::K8s, Mesh::Istio).unwrap();
        assert_eq!(a.pattern, 3);
        assert!(a.next[0].starts_with("pvid serve"));
    }

    #[test]
    fn nonsense_is_refused_with_a_message_naming_the_flag() {
        assert!(recommend(0, Substrate::K8s, Mesh::None).unwrap_err().contains("--services"));
        for s in [Substrate::Compose, Substrate::Nomad, Substrate::Ecs, Substrate::Serverless] {
            for m in [Mesh::Istio, Mesh::Linkerd] {
                let e = recommend(5, s, m).unwrap_err();
                assert!(e.contains("--substrate k8s"), "{e}");
            }
        }
        assert!(recommend(5, Substrate::Serverless, Mesh::Consul).unwrap_err().contains("--mesh none"));
        // A mesh with 1-2 services is still checked.
        assert!(recommend(1, Substrate::Compose, Mesh::Istio).is_err());
    }

    #[test]
    fn every_command_uses_a_real_subcommand() {
        let known = ["pvid up", "pvid render k8s", "pvid render istio", "pvid render linkerd", "pvid render compose", "pvid render serverless", "pvid proxy", "pvid serve", "pvid migrate", "kubectl", "docker compose", "#"];
        for n in [1, 5, 20] {
            for s in [Substrate::K8s, Substrate::Compose, Substrate::Nomad, Substrate::Ecs, Substrate::Serverless] {
                for m in [Mesh::None, Mesh::Istio, Mesh::Linkerd, Mesh::Consul] {
                    let Ok(a) = recommend(n, s, m) else { continue };
                    for c in &a.next {
                        assert!(known.iter().any(|k| c.starts_with(k)), "{c}");
                    }
                }
            }
        }
    }
}
