//! The request-level cases C20a–e of `testdata/cases` through a real sidecar fronting `orders`
//! of preview pr-1, with the exact header lines of each case on the wire.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use pvid_core::key::Jwks;
use pvid_core::{Algorithm, CallRule, FixedClock, PreviewState, ReasonCode, Registry, ServiceEntry, service_identity};
use pvid_proxy::{LogTarget, ProxyConfig};
use serde_json::Value;

use crate::support::*;

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/cases")
}

fn read_json(rel: &str) -> Value {
    let text = std::fs::read_to_string(cases_dir().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// pr-1 from the cases' JWKS, each kid bound as `keys.json` says; orders accepts the
/// preview-wide audience; api, web and worker may `GET /v1/ping` on orders.
fn pr1_registry() -> Registry {
    let preview: pvid_core::PreviewId = "pr-1".parse().unwrap();
    let jwks: Jwks = serde_json::from_value(read_json("jwks/pr-1.json")).unwrap();
    let bindings = read_json("keys.json");
    let mut services = BTreeMap::new();
    for name in ["api", "web", "worker", "orders"] {
        let s = svc(name);
        let kids = jwks
            .keys
            .iter()
            .filter_map(|k| k.kid.clone())
            .filter(|kid| bindings[kid]["preview"] == "pr-1" && bindings[kid]["service"] == name)
            .collect();
        let id = service_identity(&preview, &s);
        services.insert(
            s,
            ServiceEntry {
                issuer: id.clone(),
                audience: id,
                address: None,
                kids,
                accept_preview_audience: name == "orders",
                signing_kid: None,
            },
        );
    }
    let policy = ["api", "web", "worker"]
        .into_iter()
        .map(|caller| CallRule {
            caller: svc(caller),
            callee: svc("orders"),
            methods: Some(vec!["GET".into()]),
            path: Some("/v1/ping".into()),
        })
        .collect();
    Registry {
        preview,
        state: PreviewState::Active,
        version: 1,
        algorithm: Algorithm::ES256,
        token_ttl_s: 300,
        services,
        policy,
        jwks,
        revoked: vec![],
        retiring: vec![],
        shared_credentials: false,
    }
}

#[tokio::test]
async fn request_level_cases_give_their_expected_reasons_through_a_real_sidecar() {
    let world = World::new(&pr1_registry()).await;
    let log = world.dir.path().join("orders.log");
    let sidecar = Sidecar::start(ProxyConfig {
        preview: "pr-1".parse().unwrap(),
        service: svc("orders"),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: world.echo.addr,
        egress: None,
        registry: pvid_proxy::RegistrySource::File(world.registry_path.clone()),
        signing_key: None,
        key_source: None,
        log: LogTarget::File(log.clone()),
        log_buffer: pvid_proxy::DEFAULT_LOG_BUFFER_LINES,
        evidence: None,
        clock: Arc::new(FixedClock(1_796_299_200.0)),
        cache: true,
        otlp: None,
    })
    .await;

    let cases: Vec<Value> = serde_json::from_value(read_json("cases.json")).unwrap();
    let mut ran = Vec::new();
    let mut accepted = 0;
    for case in cases.iter().filter(|c| c.get("request").is_some()) {
        let id = case["id"].as_str().unwrap();
        assert_eq!(case["now"], 1_796_299_200, "{id}: the sidecar's clock is fixed at the cases' now");
        let req = &case["request"];
        let rid = format!("case-{id}");
        let mut headers: Vec<(&str, &str)> = req["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap()))
            .collect();
        headers.push(("X-Request-Id", &rid));
        let reply =
            send(sidecar.inbound, req["method"].as_str().unwrap(), req["path"].as_str().unwrap(), &headers, b"").await;

        let reason = case["reason"].as_str().unwrap();
        let line = sidecar.decision(&rid);
        assert_eq!(line["reason"], reason, "{id}: log line");
        if case["expected"] == "accept" {
            accepted += 1;
            let seen = reply.seen();
            assert!(
                seen.header_names().iter().all(|n| !n.eq_ignore_ascii_case("authorization")),
                "{id}: upstream saw Authorization"
            );
            assert_eq!(seen.header("x-pvid-caller"), case["identity"].as_str().unwrap(), "{id}");
            assert_eq!(seen.header("x-pvid-preview"), "pr-1", "{id}");
            assert_eq!(line["result"], "allow", "{id}");
        } else {
            let code = ReasonCode::parse(reason).unwrap();
            assert_eq!(reply.status, code.http_status(), "{id}");
            assert_eq!(reply.json()["reason"], reason, "{id}: deny body");
            assert_eq!(line["result"], "deny", "{id}");
        }
        // The path is logged without its query: C20d carries the token there.
        assert_eq!(line["path"], "/v1/ping", "{id}");
        ran.push(id.to_owned());
    }
    assert_eq!(ran, ["C20a", "C20b", "C20c", "C20d", "C20e"]);
    assert_eq!(world.echo.hits(), accepted, "only accepted requests reach the upstream");

    let text = std::fs::read_to_string(&log).unwrap();
    for case in &cases {
        let token = std::fs::read_to_string(cases_dir().join(case["token_file"].as_str().unwrap())).unwrap();
        let sig = signature_of(token.trim());
        assert!(sig.len() < 16 || !text.contains(sig), "{}: token signature in the log", case["id"]);
    }
}
