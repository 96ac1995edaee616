//! Spec errors name the file, line and field.

use pvid_core::{Algorithm, PreviewSpec};

fn err(text: &str) -> pvid_core::SpecError {
    PreviewSpec::parse("spec.yaml", text).expect_err("must fail")
}

#[test]
fn example_spec_parses_with_its_policy() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/preview.yaml")).unwrap();
    let spec = PreviewSpec::parse("examples/preview.yaml", &text).unwrap();
    assert_eq!(spec.preview.as_ref().unwrap().as_str(), "pr-482");
    assert_eq!(spec.algorithm, Algorithm::ES256);
    assert_eq!(spec.token_ttl.as_secs(), 300);
    let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "worker", "webhooks", "payments"]);
    let rules: Vec<String> = spec.policy_rules().iter().map(ToString::to_string).collect();
    assert_eq!(rules, ["api -> worker", "api -> payments: POST /charge", "worker -> webhooks"]);
}

#[test]
fn unknown_field_names_line_and_field() {
    let e = err("services:\n  api:\n    adress: \"127.0.0.1:1\"\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().starts_with("spec.yaml:3: services.api: unknown field `adress`"), "{e}");
}

#[test]
fn unknown_top_level_field_is_an_error() {
    let e = err("preview: pr-1\nservicez: {}\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("unknown field `servicez`"), "{e}");
}

#[test]
fn unknown_service_in_calls_names_the_caller_line() {
    let e = err("services:\n  api:\n    calls: [paymnts]\n  payments: {}\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert_eq!(e.field, "services.api.calls");
    assert!(e.message.contains("unknown service `paymnts`"), "{e}");
}

#[test]
fn duplicate_service_is_an_error() {
    let e = err("services:\n  api: {}\n  worker: {}\n  api: {}\n");
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("duplicate service `api`"), "{e}");
}

#[test]
fn bad_preview_id_and_service_name_are_errors() {
    let e = err("preview: PR_482\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(1), "preview"), "{e}");
    assert!(e.message.contains("invalid preview id"), "{e}");
    let e = err("services:\n  Api: {}\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("invalid service name `Api`"), "{e}");
}

#[test]
fn bad_algorithm_and_duration_are_errors() {
    let e = err("algorithm: HS256\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(1), "algorithm"), "{e}");
    let e = err("token_ttl: 5 minutes\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(1), "token_ttl"), "{e}");
    let e = err("token_ttl: 2h\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(1), "token_ttl"), "{e}");
}

#[test]
fn empty_or_missing_services_are_errors() {
    let e = err("preview: pr-1\nservices: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(2), "services"), "{e}");
    let e = err("preview: pr-1\n");
    assert_eq!(e.field, "services", "{e}");
}

#[test]
fn bad_call_rule_and_address_are_errors() {
    let e = err("services:\n  api:\n    calls: [\"worker: post /x\"]\n  worker: {}\n");
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.field.starts_with("services.api.calls"), "{e}");
    let e = err("services:\n  api: { address: \"nowhere\" }\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.field.starts_with("services.api"), "{e}");
}

#[test]
fn friendlier_messages_for_common_yaml_mistakes() {
    let e = err("preview: pr-1\npreview: pr-2\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(2), "preview"), "{e}");
    let e = err("- a\n- b\n");
    assert!(e.message.contains("a mapping with preview"), "{e}");
    let e = err("services:\n\tapi: {}\n");
    assert!(e.message.contains("a tab"), "{e}");
    let ok = PreviewSpec::parse("bom.yaml", "\u{feff}preview: pr-1\nservices:\n  api: {}\n").unwrap();
    assert_eq!(ok.preview.unwrap().as_str(), "pr-1");
    let e = err("preview: pr-1\nttl: 99999999999d\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(2), "ttl"), "{e}");
}

#[test]
fn duplicate_call_rules_are_merged() {
    let spec = PreviewSpec::parse("s.yaml", "services:\n  api: { calls: [b, b, \"b: GET /x\", \"b: GET /x\"] }\n  b: {}\n").unwrap();
    assert_eq!(spec.policy_rules().len(), 2);
}

#[test]
fn crlf_line_endings_parse_and_a_bare_carriage_return_is_refused_at_its_line() {
    let crlf = "preview: pr-1\r\nservices:\r\n  api: {}\r\n";
    assert_eq!(PreviewSpec::parse("spec.yaml", crlf).unwrap().services.len(), 1);
    // Found by fuzzing: YAML counted the bare CRs as lines and reported line 6 of a 2-line file.
    let e = err("services:\n  api: {}\r\r\r  web: {}\n");
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("carriage return"), "{e}");
    let bad_line_numbers = err("services:\n  api:\r    adress: x\n");
    assert_eq!(bad_line_numbers.line, Some(2), "{bad_line_numbers}");
}

#[test]
fn key_custody_defaults_to_sidecar_and_transit_refuses_rs256_naming_the_field() {
    use pvid_core::KeyCustody;
    let spec = PreviewSpec::parse("s.yaml", "services:\n  api: {}\n").unwrap();
    assert_eq!(spec.key_custody, KeyCustody::Sidecar);
    // A sidecar-custody config serialises as before custody modes existed (stored configs compare equal).
    assert!(!serde_json::to_string(&spec.config()).unwrap().contains("key_custody"));
    let spec = PreviewSpec::parse("s.yaml", "key_custody: transit\nalgorithm: EdDSA\nservices:\n  api: {}\n").unwrap();
    assert_eq!((spec.key_custody, spec.config().key_custody), (KeyCustody::Transit, KeyCustody::Transit));
    let e = err("algorithm: RS256\nkey_custody: transit\nservices:\n  api: {}\n");
    assert_eq!((e.line, e.field.as_str()), (Some(2), "key_custody"), "{e}");
    assert!(e.message.contains("RS256 keys need `key_custody: sidecar`"), "{e}");
    let e = err("key_custody: vault\nservices:\n  api: {}\n");
    assert_eq!(e.to_string(), "spec.yaml:1: key_custody: unknown key custody `vault` (use sidecar or transit)");
}

#[test]
fn a_spec_too_large_or_with_too_many_services_is_refused_fast() {
    use pvid_core::spec::{MAX_SERVICES, MAX_SPEC_BYTES};
    let mut text = String::from("services:\n");
    for i in 0..=MAX_SERVICES {
        text.push_str(&format!("  s{i}: {{}}\n"));
    }
    let e = err(&text);
    assert_eq!((e.line, e.field.as_str()), (Some(1), "services"), "{e}");
    assert_eq!(e.message, format!("{} services; a preview has at most {MAX_SERVICES}", MAX_SERVICES + 1));
    // At the limit it parses.
    let at_limit: String = text.lines().take(MAX_SERVICES + 1).map(|l| format!("{l}\n")).collect();
    assert_eq!(PreviewSpec::parse("spec.yaml", &at_limit).unwrap().services.len(), MAX_SERVICES);
    let huge = format!("services:\n  api: {{}}\n#{}\n", "x".repeat(MAX_SPEC_BYTES));
    let e = err(&huge);
    assert_eq!(e.field, "(document)");
    assert!(e.message.ends_with(&format!("a spec is at most {MAX_SPEC_BYTES} bytes")), "{e}");
}
