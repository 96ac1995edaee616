//! Provision, teardown and the orphan audit over the real embedded stores (SQLite file and the
//! local secret store) in a temporary PVID_HOME.

use pvid_control::{Control, OrphanKind, ProvisionOutcome, TeardownOutcome};
use pvid_core::{PreviewConfig, PreviewId, PreviewSpec, PreviewState, Registry, ReasonCode, Verifier};
use pvid_store::{LocalSecretStore, SecretPath, StateStore, StoredKey};
use std::sync::Arc;

const SPEC: &str = include_str!("../../../examples/preview.yaml");

async fn control(home: &std::path::Path) -> Control {
    let secrets = LocalSecretStore::open(home).unwrap();
    let state = StateStore::open(&home.join("state.db")).await.unwrap();
    Control::new(state, Arc::new(secrets), home.to_path_buf())
}

fn config() -> PreviewConfig {
    PreviewSpec::parse("preview.yaml", SPEC).unwrap().config()
}

fn id(s: &str) -> PreviewId {
    s.parse().unwrap()
}

fn published(home: &std::path::Path, p: &str) -> Registry {
    Registry::from_json(&std::fs::read(home.join("previews").join(p).join("registry.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn provision_issues_one_key_per_service_and_publishes_the_registry() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    assert_eq!(c.provision(&id("pr-482"), &config()).await.unwrap(), ProvisionOutcome::Created);
    let reg = published(home.path(), "pr-482");
    assert_eq!(reg.state, PreviewState::Active);
    assert_eq!(reg.services.len(), 4);
    assert_eq!(reg.jwks.keys.len(), 4);
    for (name, entry) in &reg.services {
        assert_eq!(entry.kids.len(), 1);
        assert!(entry.kids[0].starts_with(&format!("{name}-1-")), "{}", entry.kids[0]);
        let key = c.signing_key(&reg.preview, name).await.unwrap().unwrap();
        assert_eq!(key.kid(), entry.kids[0]);
    }
    assert_eq!(c.secrets().list().await.unwrap().len(), 4);
}

#[tokio::test]
async fn provision_again_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    c.provision(&id("pr-1"), &config()).await.unwrap();
    let before = published(home.path(), "pr-1");
    assert_eq!(c.provision(&id("pr-1"), &config()).await.unwrap(), ProvisionOutcome::AlreadyActive);
    assert_eq!(published(home.path(), "pr-1"), before);
}

#[tokio::test]
async fn provision_with_a_different_spec_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    c.provision(&id("pr-1"), &config()).await.unwrap();
    let mut changed = config();
    changed.token_ttl_s = 60;
    let err = c.provision(&id("pr-1"), &changed).await.unwrap_err();
    assert!(matches!(err, pvid_control::LifecycleError::SpecChanged { .. }));
    assert!(err.to_string().contains("(token_ttl 300s -> 60s)"), "{err}");
}

#[tokio::test]
async fn teardown_revokes_deletes_and_is_idempotent() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    let p = id("pr-2");
    c.provision(&p, &config()).await.unwrap();

    assert_eq!(c.teardown(&p).await.unwrap(), TeardownOutcome::TornDown);
    let reg = published(home.path(), "pr-2");
    assert_eq!(reg.state, PreviewState::TornDown);
    assert!(reg.jwks.keys.is_empty());
    assert_eq!(reg.revoked.len(), 4);
    assert!(c.secrets().list().await.unwrap().is_empty());
    assert_eq!(c.teardown(&p).await.unwrap(), TeardownOutcome::AlreadyTornDown);
    assert!(c.find_orphans().await.unwrap().is_empty());
    // A token signed before teardown is refused by a verifier loading the new registry.
    let events: Vec<String> = c.state().evidence(Some(&p)).await.unwrap().into_iter().map(|e| e.event).collect();
    for needed in ["preview.provisioned", "key.issued", "preview.tearing_down", "key.revoked", "secret.deleted", "preview.torn_down"] {
        assert!(events.iter().any(|e| e == needed), "missing {needed} in {events:?}");
    }
    assert!(pvid_store::evidence::verify_chain(&c.state().evidence(None).await.unwrap()).is_ok());

}

#[tokio::test]
async fn tokens_are_refused_once_the_registry_says_torn_down() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    let p = id("pr-3");
    c.provision(&p, &config()).await.unwrap();
    let api = "api".parse().unwrap();
    let payments = "payments".parse().unwrap();
    let key = c.signing_key(&p, &api).await.unwrap().unwrap();
    let now = 1_796_299_200.0;
    let token = pvid_core::mint(
        &key,
        &pvid_core::MintRequest { from: &api, preview: &p, audience: "preview-pr-3-payments", ttl_s: 300, now },
    )
    .unwrap();
    let v = Verifier::for_service(&published(home.path(), "pr-3"), &payments).unwrap();
    assert_eq!(v.verify(&token, now).unwrap().caller, api);
    c.teardown(&p).await.unwrap();
    let v = Verifier::for_service(&published(home.path(), "pr-3"), &payments).unwrap();
    assert_eq!(v.verify(&token, now).unwrap_err().reason, ReasonCode::PreviewTornDown);
}

#[tokio::test]
async fn orphan_audit_finds_a_planted_secret_and_sweep_removes_it() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    c.provision(&id("pr-4"), &config()).await.unwrap();
    assert!(c.find_orphans().await.unwrap().is_empty());
    // A secret no preview knows about, and a second, stale key for a live service.
    let ghost = SecretPath::private_key(&id("pr-999"), &"api".parse().unwrap());
    let key = pvid_core::SigningKey::generate(pvid_core::Algorithm::ES256, "api-7-zzz".into()).unwrap();
    c.secrets().put(&ghost, &StoredKey::from_signing_key(&key).to_bytes()).await.unwrap();
    let orphans = c.find_orphans().await.unwrap();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].kind, OrphanKind::Secret);
    assert_eq!(orphans[0].path.as_deref(), Some("preview/pr-999/api/private-key"));
    let mut seen = 0;
    c.sweep(&orphans, &mut |n| seen = n).await.unwrap();
    assert_eq!(seen, 1);
    assert!(c.find_orphans().await.unwrap().is_empty());
    assert!(c.secrets().get(&ghost).await.unwrap().is_none());
    assert_eq!(c.secrets().list().await.unwrap().len(), 4, "live secrets untouched");
}

#[tokio::test]
async fn a_torn_down_preview_can_be_provisioned_again_with_fresh_keys() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    let p = id("pr-5");
    c.provision(&p, &config()).await.unwrap();
    let first = published(home.path(), "pr-5");
    c.teardown(&p).await.unwrap();
    assert_eq!(c.provision(&p, &config()).await.unwrap(), ProvisionOutcome::Created);
    let second = published(home.path(), "pr-5");
    assert_eq!(second.state, PreviewState::Active);
    for (name, e) in &second.services {
        assert_ne!(e.kids, first.services[name].kids, "{name} got a fresh key");
        assert!(e.kids[0].starts_with(&format!("{name}-2-")));
    }
    assert!(c.find_orphans().await.unwrap().is_empty());
}

#[tokio::test]
async fn scheduled_rotation_publishes_then_switches_then_revokes_on_its_clock() {
    let home = tempfile::tempdir().unwrap();
    let c = control(home.path()).await;
    let spec = "token_ttl: 10s\nrotation_period: 1h\nservices:\n  api: { calls: [worker] }\n  worker: {}\n";
    let p = id("pr-rot");
    c.provision(&p, &PreviewSpec::parse("rot.yaml", spec).unwrap().config()).await.unwrap();
    let first = published(home.path(), "pr-rot");
    let api = "api".parse().unwrap();
    let old = first.signing_kid_of(&api).unwrap().to_owned();
    let t0 = pvid_store::state::unix_now();

    // Before the period: nothing to do.
    assert!(c.advance_rotations(t0 + 60, 5).await.unwrap().is_empty());
    // The period is over: a new key per service is published, and still nobody signs with it.
    let steps = c.advance_rotations(t0 + 3600, 5).await.unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let reg = published(home.path(), "pr-rot");
    assert_eq!(reg.services[&api].kids.len(), 2);
    assert_eq!(reg.signing_kid_of(&api), Some(old.as_str()));
    assert_eq!(c.signing_key(&p, &api).await.unwrap().unwrap().kid(), old);
    // After the publish delay: the new keys sign, the old ones are retiring for ttl + leeway.
    let steps = c.advance_rotations(t0 + 3600 + 6, 5).await.unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let reg = published(home.path(), "pr-rot");
    let new = reg.signing_kid_of(&api).unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(c.signing_key(&p, &api).await.unwrap().unwrap().kid(), new);
    let retiring = reg.retiring.iter().find(|r| r.kid == old).expect("old key retiring");
    assert!((retiring.until - pvid_store::state::unix_now() - 70).abs() <= 2, "overlap is ttl + 60 s: {}", retiring.until);
    // Once the overlap is over the old keys are revoked, and no rotation starts before the
    // period has passed again for the new key.
    // (Each service switched in its own step: their overlaps may end a second apart.)
    let steps = c.advance_rotations(retiring.until + 5, 5).await.unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let reg = published(home.path(), "pr-rot");
    assert!(reg.revoked.iter().any(|r| r.kid == old && r.reason == "rotation"));
    assert_eq!(reg.services[&api].kids, vec![new]);
    assert!(c.advance_rotations(retiring.until + 60, 5).await.unwrap().is_empty());
    // The orphan audit agrees, and teardown leaves nothing.
    assert!(c.find_orphans().await.unwrap().is_empty());
    c.teardown(&p).await.unwrap();
    assert!(c.secrets().list().await.unwrap().is_empty());
}

#[test]
fn a_rotation_period_shorter_than_two_overlaps_is_a_spec_error() {
    let e = PreviewSpec::parse("rot.yaml", "token_ttl: 5m\nrotation_period: 10m\nservices:\n  api: {}\n").unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (Some(2), "rotation_period"), "{e}");
    assert!(e.message.contains("twice the overlap"), "{e}");
}
