//! A spec a target cannot express fails with an error naming the target, service and call;
//! names too long for a substrate fail naming the name and what to shorten; a registry or
//! secrets that do not belong to the spec are refused.

use pvid_render::{Custody, RenderError, RenderInput, RenderOptions, Target, render};

use super::support::{example, fake_secrets, registry_for, spec};

fn render_err(text: &str, target: Target) -> RenderError {
    let (id, config) = spec(text);
    let options = RenderOptions::default();
    let input = RenderInput { preview: &id, config: &config, registry: None, secrets: None, custody: Custody::Sidecar, options: &options };
    render(target, &input).expect_err("must fail")
}

#[test]
fn istio_refuses_a_literal_brace_naming_service_and_call() {
    let e = render_err("services:\n  api: { calls: [\"payments: POST /a{b\"] }\n  payments: {}\n", Target::Istio);
    assert_eq!(
        e.to_string(),
        "istio: services.api.calls: \"payments: POST /a{b\": Istio path patterns read `{` as a wildcard or template and cannot match it literally"
    );
    // Pvid's own sidecar expresses it, so the targets that rely on it render. (Linkerd refuses
    // `{` too, as outside RFC 3986; `*` never gets this far: the spec refuses it.)
    let (id, config) = spec("services:\n  api: { calls: [\"payments: POST /a{b\"] }\n  payments: {}\n");
    let options = RenderOptions::default();
    let input = RenderInput { preview: &id, config: &config, registry: None, secrets: None, custody: Custody::Sidecar, options: &options };
    assert!(render(Target::K8s, &input).is_ok());
    assert!(render(Target::Compose, &input).is_ok());
}

#[test]
fn linkerd_refuses_a_custom_method_and_a_path_character_outside_rfc_3986() {
    let e = render_err("services:\n  api: { calls: [\"cache: PURGE /x\"] }\n  cache: {}\n", Target::Linkerd);
    assert_eq!(
        e.to_string(),
        "linkerd: services.api.calls: \"cache: PURGE /x\": Linkerd HTTPRoutes match only the standard methods \
         (CONNECT, DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT, TRACE), not `PURGE`"
    );
    let e = render_err("services:\n  api: { calls: [\"web: GET /a|b\"] }\n  web: {}\n", Target::Linkerd);
    assert_eq!(
        e.to_string(),
        "linkerd: services.api.calls: \"web: GET /a|b\": `|` is not allowed in a Linkerd HTTPRoute path (RFC 3986 path characters only)"
    );
}

#[test]
fn kubernetes_targets_refuse_a_namespace_longer_than_a_dns_label() {
    let id = "p".repeat(56);
    let text = format!("preview: {id}\nservices:\n  api: {{}}\n");
    for target in [Target::K8s, Target::Istio, Target::Linkerd] {
        let e = render_err(&text, target);
        assert_eq!(
            e.to_string(),
            format!("{target}: namespace `preview-{id}` is 64 characters, over the limit of 63: shorten the preview id to at most 55 characters")
        );
    }
}

#[test]
fn kubernetes_refuses_a_service_whose_derived_name_is_too_long() {
    let svc = "s".repeat(59);
    let e = render_err(&format!("services:\n  {svc}: {{}}\n"), Target::K8s);
    assert_eq!(
        e.to_string(),
        format!("k8s: Service name `pvid-{svc}` is 64 characters, over the limit of 63: shorten service `{svc}` to at most 58 characters")
    );
}

#[test]
fn cloud_run_refuses_a_service_account_id_over_thirty_characters() {
    let e = render_err("preview: pr-1234\nservices:\n  notification-sender: {}\n", Target::Serverless);
    assert_eq!(
        e.to_string(),
        "serverless: Cloud Run service account id `pvid-pr-1234-notification-sender` is 32 characters, over Google's \
         limit of 30: shorten the preview id or service `notification-sender`"
    );
}

#[test]
fn a_registry_of_another_preview_or_policy_is_refused() {
    let (id, config) = example();
    let (other_id, other_config) = spec("preview: pr-9\nservices:\n  api: {}\n");
    let options = RenderOptions::default();
    let foreign = registry_for(&other_id, &other_config);
    let input = RenderInput { preview: &id, config: &config, registry: Some(&foreign), secrets: None, custody: Custody::Sidecar, options: &options };
    assert_eq!(
        render(Target::K8s, &input).unwrap_err().to_string(),
        "the registry does not match the spec: it is preview pr-9's, not pr-482's; run `pvid up` with this spec first"
    );
    let (_, changed) = spec("preview: pr-482\nservices:\n  api: { calls: [worker] }\n  worker: {}\n  webhooks: {}\n  payments: {}\n");
    let registry = registry_for(&id, &changed);
    let input = RenderInput { registry: Some(&registry), ..input };
    assert_eq!(
        render(Target::Istio, &input).unwrap_err(),
        RenderError::RegistryMismatch("the spec's calls differ from the provisioned policy".into())
    );
}

#[test]
fn secrets_missing_a_service_are_refused() {
    let (id, config) = example();
    let mut secrets = fake_secrets(&config);
    secrets.remove(&"payments".parse().unwrap());
    let options = RenderOptions::default();
    let registry = registry_for(&id, &config);
    let input = RenderInput { preview: &id, config: &config, registry: Some(&registry), secrets: Some(&secrets), custody: Custody::Sidecar, options: &options };
    assert_eq!(render(Target::K8s, &input).unwrap_err(), RenderError::SecretMissing("payments".into()));
}

#[test]
fn target_names_parse_and_unknown_ones_are_explained() {
    for t in Target::ALL {
        assert_eq!(t.as_str().parse::<Target>(), Ok(t));
    }
    assert_eq!("nomad".parse::<Target>(), Err("unknown target `nomad` (use k8s, istio, linkerd, compose or serverless)".into()));
}
