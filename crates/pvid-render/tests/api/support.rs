//! Fixtures: the example spec, the registry `pvid up` published for it (public keys only), and
//! helpers to read rendered documents back.

use pvid_core::{PreviewConfig, PreviewId, PreviewSpec, Registry, ServiceName};
use pvid_render::{Custody, RenderInput, RenderOptions, Rendered, SecretBytes, Target, render};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// This crate's folder.
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A spec from its text.
pub fn spec(text: &str) -> (PreviewId, PreviewConfig) {
    let spec = PreviewSpec::parse("spec.yaml", text).unwrap_or_else(|e| panic!("{e}"));
    let id = spec.preview.clone().unwrap_or_else(|| "pr-1".parse().unwrap());
    (id, spec.config())
}

/// `examples/preview.yaml`.
pub fn example() -> (PreviewId, PreviewConfig) {
    spec(&std::fs::read_to_string(repo().join("examples/preview.yaml")).unwrap())
}

/// The registry `pvid up -f examples/preview.yaml` published (committed fixture).
pub fn example_registry() -> Registry {
    Registry::from_json(&std::fs::read(crate_dir().join("tests/fixtures/registry-pr-482.json")).unwrap()).unwrap()
}

/// A registry for any config: one fake-but-well-formed EC key per service.
pub fn registry_for(id: &PreviewId, config: &PreviewConfig) -> Registry {
    let mut doc = serde_json::json!({
        "preview": id, "state": "active", "version": 2, "algorithm": "ES256", "token_ttl_s": 300,
        "services": {}, "policy": config.policy, "jwks": { "keys": [] },
    });
    for s in &config.services {
        let kid = format!("{}-1-fix", s.name);
        let identity = format!("preview-{id}-{}", s.name);
        doc["services"][s.name.as_str()] = serde_json::json!({
            "issuer": identity, "audience": identity, "kids": [kid], "accept_preview_audience": s.accept_preview_audience,
        });
        doc["jwks"]["keys"].as_array_mut().unwrap().push(serde_json::json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": "LkuPp3OurS8B3yAPSKkagy7fm9mnoKRHd4WpjeNF5TE", "y": "ifvZraw1ICtO2mk1cZ1josA_77zOxr6rb8OpjaJMdUg",
        }));
    }
    Registry::from_json(doc.to_string().as_bytes()).unwrap()
}

/// Fake key documents (not keys: the renderer treats them as opaque bytes).
pub fn fake_secrets(config: &PreviewConfig) -> BTreeMap<ServiceName, SecretBytes> {
    config
        .services
        .iter()
        .map(|s| {
            let doc = format!("{{\"kid\":\"{}-1-fix\",\"alg\":\"ES256\",\"pkcs8\":\"FAKE-{}\"}}", s.name, s.name);
            (s.name.clone(), SecretBytes::new(zeroize::Zeroizing::new(doc.into_bytes())))
        })
        .collect()
}

/// Renders with default options.
pub fn render_with(
    target: Target,
    id: &PreviewId,
    config: &PreviewConfig,
    registry: Option<&Registry>,
    secrets: Option<&BTreeMap<ServiceName, SecretBytes>>,
) -> Rendered {
    let options = RenderOptions::default();
    let input = RenderInput { preview: id, config, registry, secrets, custody: Custody::Sidecar, options: &options };
    render(target, &input).unwrap_or_else(|e| panic!("render {target}: {e}"))
}

/// The example, provisioned, without secrets: what the golden files hold.
pub fn render_example(target: Target) -> Rendered {
    let (id, config) = example();
    let registry = example_registry();
    render_with(target, &id, &config, Some(&registry), None)
}

/// Every YAML or JSON document of a render, with the file it came from.
pub fn documents(r: &Rendered) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for f in &r.files {
        if f.path.ends_with(".json") {
            out.push((f.path.clone(), serde_json::from_str(&f.contents).unwrap()));
        } else if f.path.ends_with(".yaml") {
            for d in yaml_serde::Deserializer::from_str(&f.contents) {
                let v: Value = serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", f.path));
                out.push((f.path.clone(), v));
            }
        }
    }
    out
}

/// The documents of one kind.
pub fn kind<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|(_, d)| d["kind"] == kind).map(|(_, d)| d).collect()
}

/// A document by kind and name.
pub fn named<'a>(docs: &'a [(String, Value)], k: &str, name: &str) -> &'a Value {
    kind(docs, k)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} named {name}"))
}
