//! Inbound: allow forwards with identity headers and without credentials; every denial is
//! answered by the sidecar, logged once, and never reaches the upstream.

use std::sync::Arc;

use pvid_core::{Algorithm, SigningKey};
use pvid_proxy::{Proxy, ProxyError};

use crate::support::*;

/// (what, token, method, path, status, reason)
type DenyCase<'a> = (&'a str, Option<&'a str>, &'a str, &'a str, u16, &'a str);

async fn payments_world() -> (Keys, World, Sidecar) {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let sidecar = world.sidecar("payments").await;
    (keys, world, sidecar)
}

#[tokio::test]
async fn allowed_call_reaches_upstream_without_authorization_and_with_the_verified_caller() {
    let (keys, world, sidecar) = payments_world().await;
    let t = token(&keys.api, "api", "payments");
    let auth = bearer(&t);
    let reply = send(
        sidecar.inbound,
        "POST",
        "/charge?amount=5",
        &[("AUTHORIZATION", &auth), ("X-Request-Id", "rid-allow-1")],
        b"{}",
    )
    .await;
    let seen = reply.seen();
    assert_eq!(seen.0["method"], "POST");
    assert_eq!(seen.path(), "/charge?amount=5");
    assert!(
        seen.header_names().iter().all(|n| !n.eq_ignore_ascii_case("authorization")),
        "upstream saw an Authorization header: {:?}",
        seen.header_names()
    );
    assert_eq!(seen.header("x-pvid-caller"), "api");
    assert_eq!(seen.header("x-pvid-preview"), "pr-7");
    assert_eq!(seen.header("x-request-id"), "rid-allow-1");
    assert_eq!(seen.0["body_len"], 2);
    assert_eq!(world.echo.hits(), 1);

    let line = sidecar.decision("rid-allow-1");
    assert_eq!(line["result"], "allow");
    assert_eq!(line["reason"], "ok");
    assert_eq!(line["preview_id"], "pr-7");
    assert_eq!(line["service"], "payments");
    assert_eq!(line["caller"], "api");
    assert_eq!(line["caller_iss"], "preview-pr-7-api");
    assert_eq!(line["expected_aud"], "preview-pr-7-payments");
    assert_eq!(line["actual_aud"], "preview-pr-7-payments");
    assert_eq!(line["kid"], keys.api.kid());
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/charge");
    assert_eq!(line["registry_version"], 1);
    assert!(line["latency_us"].is_u64());
    assert_eq!(line["ts"], "2026-12-03T12:00:00.000Z");
    // The verified claims, for `pvid explain` (they were null on allow lines).
    assert_eq!(line["token_iat"], NOW);
    assert_eq!(line["token_exp"], NOW + 300.0);
}

#[tokio::test]
async fn a_policy_denial_logs_the_verified_token_times() {
    let (keys, _world, sidecar) = payments_world().await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let reply = send(sidecar.inbound, "GET", "/admin", &[("Authorization", &auth), ("X-Request-Id", "rid-times")], b"").await;
    assert_eq!(reply.status, 403);
    let line = sidecar.decision("rid-times");
    assert_eq!(line["reason"], "policy_denied");
    assert_eq!((line["token_iat"].as_f64(), line["token_exp"].as_f64()), (Some(NOW), Some(NOW + 300.0)));
}

#[tokio::test]
async fn spoofed_identity_headers_from_the_client_are_replaced() {
    let (keys, _world, sidecar) = payments_world().await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let reply = send(
        sidecar.inbound,
        "POST",
        "/charge",
        &[
            ("Authorization", &auth),
            ("X-Pvid-Caller", "worker"),
            ("x-pvid-caller", "payments"),
            ("X-PVID-PREVIEW", "pr-2"),
            ("x_pvid_caller", "worker"),
            ("X-Pvid-Verified", "yes"),
            ("X-Request-Id", "chosen-by-client"),
        ],
        b"",
    )
    .await;
    let seen = reply.seen();
    assert_eq!(seen.header_values("x-pvid-caller"), vec!["api"]);
    assert_eq!(seen.header_values("x-pvid-preview"), vec!["pr-7"]);
    assert_eq!(seen.header_values("x-request-id"), vec!["chosen-by-client"]);
    assert!(seen.header_values("x_pvid_caller").is_empty());
    assert!(seen.header_values("x-pvid-verified").is_empty());
}

#[tokio::test]
async fn denied_calls_never_reach_the_upstream() {
    let (keys, world, sidecar) = payments_world().await;
    let good = token(&keys.api, "api", "payments");
    let mut bad_sig = good.clone();
    {
        // Change one character in the middle of the signature: still canonical base64url.
        let at = good.len() - 20;
        let c = if &good[at..=at] == "A" { "B" } else { "A" };
        bad_sig.replace_range(at..=at, c);
    }
    let other_preview = token_at(&keys.api, "api", "pr-7", "preview-pr-8-payments", NOW);
    let for_worker = token(&keys.api, "api", "worker");
    let expired = token_at(&keys.api, "api", "pr-7", "preview-pr-7-payments", NOW - 1000.0);
    let from_worker = token(&keys.worker, "worker", "payments");
    let stranger = SigningKey::generate(Algorithm::ES256, "api-9-zzzz".into()).unwrap();
    let unknown_kid = token(&stranger, "api", "payments");

    let cases: Vec<DenyCase<'_>> = vec![
        ("no token", None, "POST", "/charge", 401, "missing_token"),
        ("bad signature", Some(&bad_sig), "POST", "/charge", 401, "bad_signature"),
        ("audience of another preview", Some(&other_preview), "POST", "/charge", 401, "audience_mismatch"),
        ("token minted for another service", Some(&for_worker), "POST", "/charge", 401, "audience_mismatch"),
        ("expired token", Some(&expired), "POST", "/charge", 401, "expired"),
        ("unknown kid", Some(&unknown_kid), "POST", "/charge", 401, "unknown_kid"),
        ("caller without a rule", Some(&from_worker), "POST", "/charge", 403, "policy_denied"),
        ("method not allowed", Some(&good), "GET", "/charge", 403, "policy_denied"),
        ("sibling with the same prefix", Some(&good), "POST", "/chargeback", 403, "policy_denied"),
        ("dot segments out of the prefix", Some(&good), "POST", "/charge/../admin", 403, "policy_denied"),
        ("encoded slash", Some(&good), "POST", "/charge/..%2Fadmin", 403, "policy_denied"),
        ("encoded dots", Some(&good), "POST", "/charge/%2e%2e/admin", 403, "policy_denied"),
        ("upper case path", Some(&good), "POST", "/CHARGE", 403, "policy_denied"),
    ];
    for (i, (what, tok, method, path, status, reason)) in cases.into_iter().enumerate() {
        let rid = format!("rid-deny-{i}");
        let auth = tok.map(bearer);
        let mut headers = vec![("X-Request-Id", rid.as_str())];
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let reply = send(sidecar.inbound, method, path, &headers, b"").await;
        assert_eq!(reply.status, status, "{what}");
        assert_eq!(reply.header("content-type"), Some("application/json"), "{what}");
        assert_eq!(reply.json(), serde_json::json!({"result": "deny", "reason": reason, "request_id": rid}), "{what}");
        if status == 401 {
            let challenge = reply.header("www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        }
        if let Some(t) = tok {
            assert!(!String::from_utf8_lossy(&reply.body).contains(signature_of(t)), "{what}");
        }
        let line = sidecar.decision(&rid);
        assert_eq!((line["result"].as_str(), line["reason"].as_str()), (Some("deny"), Some(reason)), "{what}");
        assert_eq!(line["method"], method, "{what}");
        assert_eq!(line["path"], path, "{what}");
    }
    assert_eq!(world.echo.hits(), 0, "a denied request reached the upstream");

    // The denial lines say what the token claimed (unverified) and what was expected.
    let line = sidecar.decision("rid-deny-2");
    assert_eq!(line["actual_aud"], "preview-pr-8-payments");
    assert_eq!(line["expected_aud"], "preview-pr-7-payments");
    assert_eq!(line["caller_iss"], "preview-pr-7-api");
    assert_eq!(line["caller"], serde_json::Value::Null, "an unverified caller is not named");
    let line = sidecar.decision("rid-deny-6");
    assert_eq!(line["caller"], "worker", "a verified caller refused by policy is named");
}

#[tokio::test]
async fn request_id_is_kept_when_sane_and_created_otherwise() {
    let (keys, _world, sidecar) = payments_world().await;
    let auth = bearer(&token(&keys.api, "api", "payments"));

    // kept, on allow and on deny
    let seen = send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", "given-1")], b"")
        .await
        .seen();
    assert_eq!(seen.header("x-request-id"), "given-1");
    sidecar.decision("given-1");
    let reply = send(sidecar.inbound, "POST", "/charge", &[("X-Request-Id", "given-2")], b"").await;
    assert_eq!(reply.json()["request_id"], "given-2");
    assert_eq!(reply.header("x-request-id"), Some("given-2"));
    sidecar.decision("given-2");

    // created when absent, too long or not visible ASCII
    let too_long = "r".repeat(129);
    for given in [None, Some(too_long.as_str()), Some("has space")] {
        let mut headers = vec![("Authorization", auth.as_str())];
        if let Some(g) = given {
            headers.push(("X-Request-Id", g));
        }
        let seen = send(sidecar.inbound, "POST", "/charge", &headers, b"").await.seen();
        let rid = seen.header("x-request-id");
        assert_eq!(rid.len(), 32, "{rid}");
        assert!(rid.bytes().all(|c| c.is_ascii_hexdigit()), "{rid}");
        sidecar.decision(&rid);

        let mut headers = vec![];
        if let Some(g) = given {
            headers.push(("X-Request-Id", g));
        }
        let reply = send(sidecar.inbound, "POST", "/charge", &headers, b"").await;
        let rid = reply.json()["request_id"].as_str().unwrap().to_owned();
        assert_eq!(rid.len(), 32, "{rid}");
        assert_eq!(sidecar.decision(&rid)["reason"], "missing_token");
    }
}

#[tokio::test]
async fn an_oversized_authorization_is_answered_by_the_sidecar_with_token_too_large() {
    let (_keys, world, sidecar) = payments_world().await;
    for (rid, size) in [("big-1", 8300), ("big-2", 20_000)] {
        let auth = format!("Bearer {}", "a".repeat(size));
        let reply =
            send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", rid)], b"").await;
        assert_eq!(reply.status, 401, "{size}");
        assert_eq!(reply.json()["reason"], "token_too_large");
        assert_eq!(sidecar.decision(rid)["reason"], "token_too_large");
    }
    assert_eq!(world.echo.hits(), 0);
}

#[tokio::test]
async fn upstream_down_gives_502_with_a_json_body() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut config = world.config("payments", Arc::new(pvid_core::FixedClock(NOW)));
    config.upstream = closed;
    let sidecar = Sidecar::start(config).await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let reply =
        send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", "down-1")], b"").await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.json(),
        serde_json::json!({"result": "error", "reason": "upstream_unavailable", "request_id": "down-1"})
    );
    assert_eq!(sidecar.decision("down-1")["result"], "allow");
}

#[tokio::test]
async fn a_kid_holding_a_newline_stays_on_one_log_line_and_long_kids_are_cut() {
    let (_keys, _world, sidecar) = payments_world().await;
    let newline_kid = "api-1\n{\"event\":\"forged\"}";
    let long_kid = format!("api-{}", "k".repeat(1000));
    for (rid, kid) in [("kid-nl", newline_kid.to_owned()), ("kid-long", long_kid.clone())] {
        let key = SigningKey::generate(Algorithm::ES256, kid).unwrap();
        let auth = bearer(&token(&key, "api", "payments"));
        let reply =
            send(sidecar.inbound, "POST", "/charge", &[("Authorization", &auth), ("X-Request-Id", rid)], b"").await;
        assert_eq!(reply.json()["reason"], "unknown_kid");
    }
    assert_eq!(sidecar.decision("kid-nl")["kid"], newline_kid);
    assert_eq!(sidecar.decision("kid-long")["kid"].as_str().unwrap().chars().count(), 256);
    // log_lines parses every line as JSON: a raw newline would have split one.
    let lines = log_lines(&sidecar.log);
    assert!(lines.iter().all(|l| l["event"] != "forged"));
}

#[tokio::test]
async fn the_whole_token_never_appears_in_the_log() {
    let (keys, _world, sidecar) = payments_world().await;
    let good = token(&keys.api, "api", "payments");
    let from_worker = token(&keys.worker, "worker", "payments");
    let mut bad = good.clone();
    bad.push('x');
    let requests = [
        ("POST", "/charge".to_owned(), Some(&good)),
        ("POST", "/admin".to_owned(), Some(&good)),
        ("POST", "/charge".to_owned(), Some(&from_worker)),
        ("POST", "/charge".to_owned(), Some(&bad)),
        ("POST", format!("/charge?access_token={good}"), None),
    ];
    for (method, path, tok) in &requests {
        let auth = tok.map(|t| bearer(t));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        send(sidecar.inbound, method, path, &headers, b"").await;
    }
    let decisions = wait_for_lines(&sidecar.log, requests.len(), |l| l["event"] == "auth.validate");
    assert_eq!(decisions.len(), requests.len());
    let text = std::fs::read_to_string(&sidecar.log).unwrap();
    for t in [&good, &from_worker] {
        assert!(!text.contains(signature_of(t)), "a token signature is in the log");
    }
    assert!(!text.contains("access_token"), "the query string is not logged");
}

#[tokio::test]
async fn a_directory_path_is_forwarded_normalised_with_its_trailing_slash() {
    let (keys, _world, sidecar) = payments_world().await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    for (raw, forwarded) in [
        ("/charge/", "/charge/"),
        ("//charge", "/charge"),
        ("/charge/x/./y/../z?q=1", "/charge/x/z?q=1"),
        ("/admin/../charge/", "/charge/"),
    ] {
        let seen = send(sidecar.inbound, "POST", raw, &[("Authorization", &auth)], b"").await.seen();
        assert_eq!(seen.path(), forwarded, "{raw}");
    }
}

#[tokio::test]
async fn a_keep_alive_client_streams_large_bodies_through() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let (keys, world, sidecar) = payments_world().await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for i in 0..3 {
        let body = vec![b'x'; 1 << 20];
        let req = http::Request::post(format!("http://{}/charge/{i}", sidecar.inbound))
            .header("authorization", &auth)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["body_len"], 1 << 20);
        assert_eq!(v["path"], format!("/charge/{i}"));
    }
    assert_eq!(world.echo.hits(), 3);
}

#[tokio::test]
async fn serve_returns_after_shutdown() {
    let (_keys, _world, sidecar) = payments_world().await;
    sidecar.shutdown().await.unwrap();
}

#[tokio::test]
async fn bind_fails_when_the_registry_is_missing_invalid_or_lacks_the_service() {
    let keys = Keys::generate();
    let world = World::new(&registry(&keys)).await;
    let clock = Arc::new(pvid_core::FixedClock(NOW));

    let mut config = world.config("payments", clock.clone());
    config.registry = pvid_proxy::RegistrySource::File(world.dir.path().join("missing.json"));
    assert!(matches!(Proxy::bind(config).await, Err(ProxyError::LoadRegistry { .. })));

    let config = world.config("ledger", clock.clone());
    let err = Proxy::bind(config).await.unwrap_err();
    assert!(matches!(err, ProxyError::LoadRegistry { .. }), "{err}");
    assert!(err.to_string().contains("ledger"), "{err}");

    let mut config = world.config("payments", clock.clone());
    config.preview = "pr-8".parse().unwrap();
    assert!(matches!(Proxy::bind(config).await, Err(ProxyError::LoadRegistry { .. })));

    world.write_registry_bytes(b"{\"preview\": ");
    let config = world.config("payments", clock);
    assert!(matches!(Proxy::bind(config).await, Err(ProxyError::LoadRegistry { .. })));
}

#[tokio::test]
async fn obsolete_line_folding_and_conflicting_lengths_are_refused_before_any_decision() {
    let (keys, world, sidecar) = payments_world().await;
    let auth = bearer(&token(&keys.api, "api", "payments"));
    let folded = format!(
        "POST /charge HTTP/1.1\r\nHost: payments\r\nAuthorization: {auth}\r\nX-Note: a\r\n x-pvid-caller: worker\r\nContent-Length: 0\r\n\r\n"
    );
    let lengths = format!(
        "POST /charge HTTP/1.1\r\nHost: payments\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n"
    );
    for raw in [folded, lengths] {
        let reply = send_raw(sidecar.inbound, raw.as_bytes()).await;
        assert_eq!(reply.status, 400, "{raw}");
    }
    assert_eq!(world.echo.hits(), 0);
}
