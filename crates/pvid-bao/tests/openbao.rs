//! The client against a real OpenBao: the shared dev server of the test run (a sandbox of
//! mounts and a token bound to the shipped policy per test) and, for failures that need a
//! server to be stopped or sealed, a private server of the test's own.

use std::collections::BTreeMap;
use std::time::Duration;

use pvid_bao::testkit::{PrivateServer, Sandbox, free_port};
use pvid_bao::{BaoConfig, BaoErrorKind, Client, Token, transit_public_jwk};
use pvid_core::{Algorithm, PreviewId, ServiceName};
use serde_json::json;

fn client(config: BaoConfig) -> Client {
    Client::new(config).unwrap()
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn kv_secrets_round_trip_with_metadata_and_are_destroyed_with_every_version() {
    let sb = Sandbox::new();
    let c = client(sb.config(&sb.token));
    let path = "preview/pr-1/api/private-key";
    assert_eq!(c.kv_get(path).await.unwrap(), None);
    assert_eq!(c.kv_put(path, &json!({"v": "one"})).await.unwrap(), 1);
    assert_eq!(c.kv_put(path, &json!({"v": "two"})).await.unwrap(), 2);
    let meta = BTreeMap::from([("kid".to_owned(), "api-1-abc".to_owned()), ("preview".to_owned(), "pr-1".to_owned())]);
    c.kv_put_metadata(path, &meta).await.unwrap();
    assert_eq!(c.kv_get(path).await.unwrap(), Some(json!({"v": "two"})));
    let m = c.kv_metadata(path).await.unwrap().unwrap();
    assert_eq!(m["custom_metadata"], json!({"kid": "api-1-abc", "preview": "pr-1"}));
    assert_eq!(c.kv_list("preview").await.unwrap(), vec!["pr-1/"]);
    assert_eq!(c.kv_list("preview/pr-1").await.unwrap(), vec!["api/"]);
    assert_eq!(c.kv_list("preview/pr-404").await.unwrap(), Vec::<String>::new());

    c.kv_destroy(path).await.unwrap();
    c.kv_destroy(path).await.unwrap();
    assert_eq!(c.kv_get(path).await.unwrap(), None);
    assert_eq!(c.kv_metadata(path).await.unwrap(), None, "metadata and every version are gone");
    assert_eq!(sb.kv_paths(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn transit_keys_are_non_exportable_sign_jose_signatures_and_are_deleted() {
    let sb = Sandbox::new();
    let c = client(sb.config(&sb.token));
    let p: PreviewId = "pr-7".parse().unwrap();
    for (svc, alg) in [("api", Algorithm::ES256), ("worker", Algorithm::EdDSA)] {
        let svc: ServiceName = svc.parse().unwrap();
        let name = pvid_bao::transit_key_name(&p, &svc);
        let key_type = pvid_bao::transit_key_type(alg).unwrap();
        c.transit_create(&name, key_type).await.unwrap();
        c.transit_create(&name, key_type).await.unwrap();
        let info = c.transit_key(&name).await.unwrap().unwrap();
        assert_eq!((info.key_type.as_str(), info.latest_version, info.exportable), (key_type, 1, false));
        let jwk = transit_public_jwk(&info.key_type, &info.public_keys[&1], "k-1").unwrap();
        let vk = jwk.to_verifying_key().unwrap();
        assert_eq!(vk.algorithm(), alg);
        let input = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhcGkifQ";
        let sig = c.transit_sign(&name, 1, input).await.unwrap();
        assert_eq!(sig.len(), 64);
        assert!(vk.verify(input, &sig), "{alg}: Transit's signature verifies with the JWK");
        assert!(!vk.verify(b"tampered", &sig));
        // OpenBao refuses to export the private key.
        let (status, _) = pvid_bao::testkit::http(&sb.admin.addr, "GET", &format!("{}/export/signing-key/{name}", sb.transit_mount), Some(&sb.admin.root), None).unwrap();
        assert_eq!(status, 400, "{alg}: the key is not exportable");
    }
    assert_eq!(c.transit_list().await.unwrap(), vec!["preview-pr-7-api", "preview-pr-7-worker"]);
    for name in ["preview-pr-7-api", "preview-pr-7-worker"] {
        c.transit_delete(name).await.unwrap();
        c.transit_delete(name).await.unwrap();
        assert_eq!(c.transit_key(name).await.unwrap(), None);
    }
    assert_eq!(sb.transit_keys(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn a_wrong_token_and_a_missing_grant_are_told_apart_and_name_address_and_operation() {
    let sb = Sandbox::new();
    let bad = client(sb.config("s.not-a-real-token"));
    let err = bad.kv_put("preview/pr-1/api/private-key", &json!({"v": 1})).await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::TokenRejected);
    assert_eq!(
        err.to_string(),
        format!(
            "OpenBao at {}: write secret preview/pr-1/api/private-key failed: token rejected (invalid, expired or \
             revoked); check BAO_TOKEN / PVID_BAO_TOKEN_FILE",
            sb.admin.addr
        )
    );
    assert!(!err.is_retryable());

    // The shipped policy grants nothing outside preview/.
    let c = client(sb.config(&sb.token));
    let err = c.kv_put("elsewhere/x", &json!({"v": 1})).await.unwrap_err();
    let policy = format!("pvid-{}", sb.kv_mount.trim_start_matches("kv-"));
    assert_eq!(
        err.kind,
        BaoErrorKind::PermissionDenied { path: format!("{}/data/elsewhere/x", sb.kv_mount), policies: vec![policy] }
    );
    assert!(err.to_string().contains("deploy/openbao/pvid-policy.hcl"), "{err}");
    let err = c.transit_create("not-a-preview-key", "ed25519").await.unwrap_err();
    assert!(matches!(err.kind, BaoErrorKind::PermissionDenied { .. }), "{err}");

    // A revoked token is rejected too.
    let t = sb.admin.create_token(&[&format!("pvid-{}", sb.kv_mount.trim_start_matches("kv-"))]);
    sb.admin.revoke_token(&t);
    let err = client(sb.config(&t)).kv_get("preview/pr-1/api/private-key").await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::TokenRejected);
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn a_missing_mount_is_an_error_never_an_empty_answer() {
    let sb = Sandbox::new();
    let mut config = sb.config(&sb.admin.root);
    config.kv_mount = "no-such-mount".into();
    let err = client(config).kv_get("preview/pr-1/api/private-key").await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::NoMount { mount: "no-such-mount".into() });
}

#[tokio::test]
async fn nothing_listening_is_unreachable_and_names_the_address() {
    let addr = format!("http://127.0.0.1:{}", free_port());
    let config = BaoConfig {
        addr: addr.clone(),
        token: Token::new("t"),
        namespace: None,
        ca_cert: None,
        kv_mount: "secret".into(),
        transit_mount: "transit".into(),
        timeout: Duration::from_secs(5),
    };
    let err = client(config).transit_sign("preview-pr-1-api", 1, b"x").await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::Unreachable);
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        format!("OpenBao at {addr}: sign with transit key preview-pr-1-api v1 failed: server unreachable (is OpenBao running at this address?)")
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs openbao: PVID_TEST_BAO_BIN"]
async fn a_sealed_a_frozen_and_a_killed_server_each_give_their_own_error_and_data_survives() {
    let dir = tempfile_dir("sealed");
    let mut server = PrivateServer::start(dir.clone());
    let sb = Sandbox::on(server.admin());
    let mut config = sb.config(&sb.token);
    config.timeout = Duration::from_secs(2);
    let c = client(config);
    let path = "preview/pr-1/api/private-key";
    c.kv_put(path, &json!({"v": 1})).await.unwrap();

    server.admin().seal();
    let err = c.kv_get(path).await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::Sealed, "{err}");
    assert!(err.is_retryable());
    server.unseal();
    assert_eq!(c.kv_get(path).await.unwrap(), Some(json!({"v": 1})));

    // SIGSTOP: the port accepts, nobody answers.
    let pid = server.pid().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let err = c.kv_get(path).await.unwrap_err();
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert_eq!(err.kind, BaoErrorKind::Timeout(Duration::from_secs(2)), "{err}");
    assert!(err.to_string().contains("read secret preview/pr-1/api/private-key failed: no answer within 2 s"), "{err}");

    server.kill();
    let err = c.kv_get(path).await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::Unreachable, "{err}");
    server.restart();
    let err = c.kv_get(path).await.unwrap_err();
    assert_eq!(err.kind, BaoErrorKind::Sealed, "a restarted server is sealed: {err}");
    server.unseal();
    assert_eq!(c.kv_get(path).await.unwrap(), Some(json!({"v": 1})), "nothing lost across the restart");
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

fn tempfile_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pvid-bao-{tag}-{}", pvid_core::key::random_suffix(8)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
