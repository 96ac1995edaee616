//! The OpenBao secret store against a real OpenBao, with a token bound to the shipped policy.

use pvid_bao::Client;
use pvid_bao::testkit::Sandbox;
use pvid_core::{Algorithm, SigningKey};
use pvid_store::{OpenBaoSecretStore, SecretMeta, SecretPath, SecretStore, StoredKey, TransitKeyName};

fn store(sb: &Sandbox, token: &str) -> OpenBaoSecretStore {
    OpenBaoSecretStore::new(Client::new(sb.config(token)).unwrap())
}

fn path(p: &str, s: &str) -> SecretPath {
    SecretPath::private_key(&p.parse().unwrap(), &s.parse().unwrap())
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn private_keys_round_trip_with_custom_metadata_and_leave_nothing_when_deleted() {
    let sb = Sandbox::new();
    let s = store(&sb, &sb.token);
    let key = SigningKey::generate(Algorithm::ES256, "api-1-abc".into()).unwrap();
    let p = path("pr-5", "api");
    s.put_key(&p, &StoredKey::from_signing_key(&key).to_bytes(), &SecretMeta { kid: "api-1-abc", created_at: 1_700_000_000 })
        .await
        .unwrap();
    s.put(&path("pr-5", "worker"), b"not json").await.unwrap();
    let back = StoredKey::from_bytes(&p, &s.get(&p).await.unwrap().unwrap()).unwrap();
    assert_eq!(back.to_signing_key(&p).unwrap().public_jwk(), key.public_jwk());
    assert_eq!(s.get(&path("pr-5", "worker")).await.unwrap().unwrap().as_slice(), b"not json");
    let meta = sb.admin.kv_metadata(&sb.kv_mount, "preview/pr-5/api/private-key").unwrap();
    assert_eq!(
        meta["custom_metadata"],
        serde_json::json!({"preview": "pr-5", "service": "api", "kid": "api-1-abc", "created_at": "1700000000"})
    );
    assert_eq!(s.list().await.unwrap(), vec![p.clone(), path("pr-5", "worker")]);
    assert_eq!(s.list_preview(&"pr-5".parse().unwrap()).await.unwrap(), vec![p.clone(), path("pr-5", "worker")]);
    assert!(s.list_preview(&"pr-55".parse().unwrap()).await.unwrap().is_empty(), "a prefix is not the preview");

    s.delete(&p).await.unwrap();
    s.delete(&p).await.unwrap();
    s.delete(&path("pr-5", "worker")).await.unwrap();
    assert!(s.get(&p).await.unwrap().is_none());
    assert!(s.list().await.unwrap().is_empty());
    assert_eq!(sb.admin.kv_metadata(&sb.kv_mount, "preview/pr-5/api/private-key"), None);
    assert_eq!(sb.kv_paths(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn transit_keys_are_created_once_read_as_jwks_and_deleted() {
    let sb = Sandbox::new();
    let s = store(&sb, &sb.token);
    let t = s.transit().unwrap();
    let name = TransitKeyName::new(&"pr-6".parse().unwrap(), &"api".parse().unwrap());
    assert_eq!(t.public_keys(&name).await.unwrap(), None);
    t.create(&name, Algorithm::ES256).await.unwrap();
    t.create(&name, Algorithm::ES256).await.unwrap();
    let keys = t.public_keys(&name).await.unwrap().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].version, keys[0].jwk.kty.as_str(), keys[0].jwk.alg.as_deref()), (1, "EC", Some("ES256")));
    let err = t.create(&name, Algorithm::EdDSA).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "transit key preview-pr-6-api exists with type ecdsa-p256, expected ed25519; delete it or tear the preview down first"
    );
    assert_eq!(t.list().await.unwrap(), vec!["preview-pr-6-api"]);
    t.delete("preview-pr-6-api").await.unwrap();
    assert_eq!(t.public_keys(&name).await.unwrap(), None);
    assert!(t.list().await.unwrap().is_empty());
    assert_eq!(sb.transit_keys(), Vec::<String>::new());
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn a_token_without_delete_rights_cannot_destroy_and_the_secret_stays() {
    let sb = Sandbox::new();
    let s = store(&sb, &sb.token);
    let p = path("pr-8", "api");
    s.put(&p, b"{\"kid\":\"k\"}").await.unwrap();
    let weak = store(&sb, &sb.token_without_delete());
    let err = weak.delete(&p).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("destroy secret preview/pr-8/api/private-key (all versions and metadata) failed: permission denied"), "{msg}");
    assert!(s.get(&p).await.unwrap().is_some());
}

#[tokio::test]
#[ignore = "needs openbao: BAO_ADDR"]
async fn a_kv_only_deployment_lists_no_transit_keys_but_cannot_make_one() {
    let sb = Sandbox::new();
    let mut config = sb.config(&sb.admin.root);
    config.transit_mount = "no-transit-here".into();
    let s = OpenBaoSecretStore::new(Client::new(config).unwrap());
    let t = s.transit().unwrap();
    assert!(t.list().await.unwrap().is_empty());
    let name = TransitKeyName::new(&"pr-1".parse().unwrap(), &"api".parse().unwrap());
    let err = t.create(&name, Algorithm::ES256).await.unwrap_err();
    assert!(err.to_string().contains("read transit key preview-pr-1-api failed: no such mount `no-transit-here`"), "{err}");
}
