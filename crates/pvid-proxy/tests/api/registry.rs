//! Registry reloads: teardown and revocation take effect on the next request (cached or not),
//! and a bad rewrite never replaces the last good registry.

use std::sync::Arc;

use pvid_core::{PreviewState, RevokedKey};

use crate::support::*;

#[tokio::test]
async fn torn_down_registry_refuses_the_next_call_with_preview_torn_down() {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    let world = World::new(&reg).await;
    let sidecar = world.sidecar("payments").await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let call = |rid: &'static str| {
        let auth = auth.clone();
        let addr = sidecar.inbound;
        async move { send(addr, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", rid)], b"").await }
    };
    assert_eq!(call("td-1").await.status, 200);

    reg.state = PreviewState::TornDown;
    reg.version = 2;
    world.write_registry(&reg);
    let loaded = sidecar
        .wait_for_line("registry.loaded v2", |l| l["event"] == "registry.loaded" && l["registry_version"] == 2)
        .await;
    assert_eq!(loaded["state"], "torn_down");
    assert_eq!(loaded["previous_version"], 1);

    let reply = call("td-2").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["reason"], "preview_torn_down");
    let line = sidecar.decision("td-2");
    assert_eq!(line["reason"], "preview_torn_down");
    assert_eq!(line["registry_version"], 2);
    assert_eq!(world.echo.hits(), 1);
}

#[tokio::test]
async fn a_revoked_kid_is_refused_even_when_its_token_was_cached() {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    let world = World::new(&reg).await;
    let sidecar = world.sidecar("payments").await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    for rid in ["rv-1", "rv-2"] {
        // the second call is served from the cache
        let reply =
            send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", rid)], b"").await;
        assert_eq!(reply.status, 200);
    }

    // revoke api's key: it leaves the service map and the JWKS, and joins `revoked`
    let kid = keys.api.kid().to_owned();
    reg.services.get_mut(&svc("api")).unwrap().kids.clear();
    reg.jwks.keys.retain(|k| k.kid.as_deref() != Some(kid.as_str()));
    reg.revoked.push(RevokedKey {
        kid: kid.clone(),
        service: svc("api"),
        revoked_at: NOW as i64,
        reason: "rotation".into(),
    });
    reg.version = 2;
    world.write_registry(&reg);
    sidecar.wait_for_version(2).await;

    let reply =
        send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", "rv-3")], b"").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["reason"], "key_revoked");
    assert_eq!(sidecar.decision("rv-3")["kid"], kid.as_str());
    assert_eq!(world.echo.hits(), 2);
}

#[tokio::test]
async fn an_invalid_registry_rewrite_keeps_the_last_good_one() {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    let world = World::new(&reg).await;
    let sidecar = world.sidecar("payments").await;
    let auth = bearer(&token(&keys.api, "api", "payments"));

    // not JSON, then an empty key set for another preview: both refused, both logged once
    world.write_registry_bytes(b"{ this is not a registry");
    let failed = sidecar.wait_for_line("registry.reload_failed", |l| l["event"] == "registry.reload_failed").await;
    assert_eq!(failed["registry_version"], 1, "the version kept");
    assert!(failed["error"].as_str().unwrap().contains("registry"));

    let reply =
        send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", "bad-1")], b"").await;
    assert_eq!(reply.status, 200);
    assert_eq!(sidecar.decision("bad-1")["registry_version"], 1);

    let mut other = reg.clone();
    other.preview = "pr-8".parse().unwrap();
    other.version = 9;
    world.write_registry(&other);
    sidecar
        .wait_for_line("reload_failed for pr-8", |l| {
            l["event"] == "registry.reload_failed" && l["error"].as_str().unwrap_or_default().contains("pr-8")
        })
        .await;
    let reply =
        send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", "bad-2")], b"").await;
    assert_eq!(reply.status, 200);

    // the file disappearing keeps the last good registry too
    std::fs::remove_file(&world.registry_path).unwrap();
    sidecar
        .wait_for_line("reload_failed for a missing file", |l| {
            l["event"] == "registry.reload_failed" && l["error"].as_str().unwrap_or_default().contains("cannot read")
        })
        .await;
    let reply =
        send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", "bad-3")], b"").await;
    assert_eq!(reply.status, 200);

    // a good registry is picked up again
    reg.version = 3;
    world.write_registry(&reg);
    sidecar.wait_for_version(3).await;
    let failures = log_lines(&sidecar.log).iter().filter(|l| l["event"] == "registry.reload_failed").count();
    assert_eq!(failures, 3, "each failure is logged once, not on every poll");
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let clock = TestClock::at(NOW);
    let sidecar = Sidecar::start(world.config("payments", clock.clone())).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let call = |rid: &'static str| {
        let auth = auth.clone();
        let addr = sidecar.inbound;
        async move { send(addr, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", rid)], b"").await }
    };
    assert_eq!(call("exp-1").await.status, 200);
    clock.set(NOW + 300.0 + 59.0);
    assert_eq!(call("exp-2").await.status, 200, "inside the 60 s leeway");
    clock.set(NOW + 300.0 + 60.0);
    let reply = call("exp-3").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["reason"], "expired");
}

#[tokio::test]
async fn policy_is_evaluated_on_every_request_even_with_a_cached_token() {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    let world = World::new(&reg).await;
    let sidecar = world.sidecar("payments").await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let ok = send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth)], b"").await;
    assert_eq!(ok.status, 200);
    let denied = send(sidecar.inbound, "POST", "/refund", &[("Authorization", &auth)], b"").await;
    assert_eq!(denied.json()["reason"], "policy_denied");

    // a policy change applies to a token already in the cache
    reg.policy.retain(|r| r.callee != svc("payments"));
    reg.version = 2;
    world.write_registry(&reg);
    sidecar.wait_for_version(2).await;
    let denied = send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth)], b"").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["reason"], "policy_denied");
}

#[tokio::test]
async fn the_sidecar_decides_the_same_with_the_cache_off() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let mut config = world.config("payments", Arc::new(pvid_core::FixedClock(NOW)));
    config.cache = false;
    let sidecar = Sidecar::start(config).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    for _ in 0..2 {
        assert_eq!(send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth)], b"").await.status, 200);
    }
    let reply = send(sidecar.inbound, "POST", "/charge", &[("Authorization", "Bearer x.y.z")], b"").await;
    assert_eq!(reply.json()["reason"], "malformed");
}

#[tokio::test]
async fn an_older_registry_never_revives_a_torn_down_preview() {
    let keys = Keys::generate();
    let mut reg = registry(&keys);
    let world = World::new(&reg).await;
    let sidecar = world.sidecar("payments").await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let call = |rid: &'static str| {
        let auth = auth.clone();
        let addr = sidecar.inbound;
        async move { send(addr, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", rid)], b"").await }
    };
    let live = reg.clone();
    reg.state = PreviewState::TornDown;
    reg.version = 4;
    world.write_registry(&reg);
    sidecar.wait_for_version(4).await;
    assert_eq!(call("old-1").await.json()["reason"], "preview_torn_down");

    // Someone copies the old, active registry back (a backup restore, a stale cache).
    world.write_registry(&live);
    let refused = sidecar
        .wait_for_line("reload refused", |l| l["event"] == "registry.reload_failed" && l["registry_version"] == 4)
        .await;
    assert!(refused["error"].as_str().unwrap().contains("not newer"), "{refused}");
    assert_eq!(call("old-2").await.json()["reason"], "preview_torn_down");
    assert_eq!(world.echo.hits(), 0);
}
