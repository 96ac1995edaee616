//! Egress: api's sidecar mints for the callee and the callee's sidecar accepts (two real
//! sidecars chained); request ids propagate; failures are JSON answers from the sidecar.

use std::sync::Arc;

use pvid_core::{FixedClock, Registry};

use crate::support::*;

/// payments' sidecar in front of the echo, and api's sidecar with egress and api's key; the
/// registry gives payments' sidecar address.
async fn chain() -> (Keys, Registry, World, Sidecar, Sidecar) {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    let world = World::new(&reg).await;
    let payments = world.sidecar("payments").await;
    reg.services.get_mut(&svc("payments")).unwrap().address = Some(payments.inbound.to_string());
    reg.version = 2;
    world.write_registry(&reg);
    payments.wait_for_version(2).await;

    let mut config = world.config("api", Arc::new(FixedClock(NOW)));
    config.egress = Some("127.0.0.1:0".parse().unwrap());
    config.signing_key = Some(Arc::new(clone_key(&keys.api)));
    let api = Sidecar::start(config).await;
    (keys, reg, world, payments, api)
}

#[tokio::test]
async fn egress_mints_a_token_that_the_callee_sidecar_accepts() {
    let (keys, _reg, world, payments, api) = chain().await;
    let egress = api.egress.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (rid, reason) in [("eg-1", "minted"), ("eg-2", "cached")] {
        let reply = send(
            egress,
            "POST",
            "/payments/charge?amount=5",
            &[("X-Request-Id", rid), ("traceparent", traceparent), ("Authorization", "Bearer app-must-not-decide")],
            b"{}",
        )
        .await;
        let seen = reply.seen();
        assert_eq!(seen.path(), "/charge?amount=5");
        assert_eq!(seen.0["method"], "POST");
        assert_eq!(seen.header("x-pvid-caller"), "api");
        assert_eq!(seen.header("x-request-id"), rid);
        assert_eq!(seen.header("traceparent"), traceparent);
        assert!(seen.header_values("authorization").is_empty());

        let mint = api.mint_line(rid);
        assert_eq!(mint["result"], "ok");
        assert_eq!(mint["reason"], reason);
        assert_eq!(mint["callee"], "payments");
        assert_eq!(mint["audience"], "preview-pr-7-payments");
        assert_eq!(mint["kid"], keys.api.kid());
        assert_eq!(mint["path"], "/charge");
        let decision = payments.decision(rid);
        assert_eq!(decision["result"], "allow");
        assert_eq!(decision["caller"], "api");
        assert_eq!(decision["kid"], keys.api.kid());
    }
    assert_eq!(world.echo.hits(), 2);
}

#[tokio::test]
async fn egress_creates_a_request_id_and_carries_it_to_the_callee() {
    let (_keys, _reg, _world, payments, api) = chain().await;
    let seen = send(api.egress.unwrap(), "POST", "/payments/charge", &[], b"").await.seen();
    let rid = seen.header("x-request-id");
    assert_eq!(rid.len(), 32);
    api.mint_line(&rid);
    payments.decision(&rid);
}

#[tokio::test]
async fn egress_accepts_an_absolute_form_proxy_request() {
    let (_keys, _reg, _world, payments, api) = chain().await;
    let seen = send(
        api.egress.unwrap(),
        "POST",
        "http://payments/charge/42?x=1",
        &[("Host", "payments"), ("X-Request-Id", "abs-1")],
        b"",
    )
    .await
    .seen();
    assert_eq!(seen.path(), "/charge/42?x=1");
    assert_eq!(seen.header("x-pvid-caller"), "api");
    assert_eq!(payments.decision("abs-1")["result"], "allow");
}

#[tokio::test]
async fn the_callee_sidecar_still_applies_its_policy_to_egress_calls() {
    let (_keys, _reg, world, payments, api) = chain().await;
    let reply = send(api.egress.unwrap(), "GET", "/payments/admin", &[("X-Request-Id", "eg-deny")], b"").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["reason"], "policy_denied");
    assert_eq!(payments.decision("eg-deny")["reason"], "policy_denied");
    assert_eq!(world.echo.hits(), 0);
}

#[tokio::test]
async fn egress_to_an_unknown_callee_or_one_without_address_is_a_502() {
    let (_keys, _reg, _world, _payments, api) = chain().await;
    for (rid, target, reason) in [
        ("uc-1", "/nobody/x", "unknown_callee"),
        ("uc-2", "/NotAName/x", "unknown_callee"),
        ("uc-3", "/worker/x", "callee_has_no_address"),
    ] {
        let reply = send(api.egress.unwrap(), "GET", target, &[("X-Request-Id", rid)], b"").await;
        assert_eq!(reply.status, 502, "{target}");
        assert_eq!(reply.json(), serde_json::json!({"result": "error", "reason": reason, "request_id": rid}));
        let line = api.mint_line(rid);
        assert_eq!((line["result"].as_str(), line["reason"].as_str()), (Some("error"), Some(reason)));
    }
}

#[tokio::test]
async fn egress_without_a_signing_key_is_a_500() {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    reg.services.get_mut(&svc("payments")).unwrap().address = Some("127.0.0.1:9".into());
    let world = World::new(&reg).await;
    let mut config = world.config("api", Arc::new(FixedClock(NOW)));
    config.egress = Some("127.0.0.1:0".parse().unwrap());
    let api = Sidecar::start(config).await;
    let reply = send(api.egress.unwrap(), "POST", "/payments/charge", &[("X-Request-Id", "nokey")], b"").await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.json()["reason"], "no_signing_key");
    assert_eq!(api.mint_line("nokey")["result"], "error");
}

#[tokio::test]
async fn egress_stops_minting_when_its_key_is_revoked_or_the_preview_torn_down() {
    let (keys, mut reg, world, _payments, api) = chain().await;
    // warm the token cache first: a revocation must not leave a cached token in use
    assert_eq!(send(api.egress.unwrap(), "POST", "/payments/charge", &[], b"").await.status, 200);

    let kid = keys.api.kid().to_owned();
    reg.services.get_mut(&svc("api")).unwrap().kids.clear();
    reg.jwks.keys.retain(|k| k.kid.as_deref() != Some(kid.as_str()));
    reg.revoked.push(pvid_core::RevokedKey {
        kid,
        service: svc("api"),
        revoked_at: NOW as i64,
        reason: "rotation".into(),
    });
    reg.version = 3;
    world.write_registry(&reg);
    api.wait_for_version(3).await;
    let reply = send(api.egress.unwrap(), "POST", "/payments/charge", &[("X-Request-Id", "rk-1")], b"").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["reason"], "key_revoked");

    reg.state = pvid_core::PreviewState::TornDown;
    reg.version = 4;
    world.write_registry(&reg);
    api.wait_for_version(4).await;
    let reply = send(api.egress.unwrap(), "POST", "/payments/charge", &[("X-Request-Id", "rk-2")], b"").await;
    assert_eq!(reply.json()["reason"], "preview_torn_down");
}
