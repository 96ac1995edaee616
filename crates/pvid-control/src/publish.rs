//! Builds a preview's registry document from the state store and publishes it as files
//! (`$PVID_HOME/previews/<id>/registry.json` and `jwks.json`), written atomically so a sidecar
//! never reads half a file.

use pvid_core::{Jwks, PreviewState, Registry, RetiringKey, RevokedKey, ServiceEntry, service_identity};
use pvid_store::{KeyRecord, KeyState, PreviewRecord};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::LifecycleError;

/// The folder holding a preview's published files.
pub fn registry_dir(home: &Path, preview: &str) -> PathBuf {
    home.join("previews").join(preview)
}

/// The registry of a preview: active keys are published only while the preview is active.
pub fn build_registry(rec: &PreviewRecord, keys: &[KeyRecord]) -> Registry {
    let publish_keys = rec.state == PreviewState::Active;
    let mut services = std::collections::BTreeMap::new();
    for svc in &rec.config.services {
        let kids = keys
            .iter()
            .filter(|k| publish_keys && k.service == svc.name && is_published(k.state))
            .map(|k| k.kid.clone())
            .collect();
        let signing_kid = keys
            .iter()
            .find(|k| publish_keys && k.service == svc.name && k.state == KeyState::Active)
            .map(|k| k.kid.clone());
        services.insert(
            svc.name.clone(),
            ServiceEntry {
                issuer: service_identity(&rec.id, &svc.name),
                audience: service_identity(&rec.id, &svc.name),
                address: svc.address.clone(),
                kids,
                accept_preview_audience: svc.accept_preview_audience,
                signing_kid,
            },
        );
    }
    let jwks = Jwks {
        keys: keys
            .iter()
            .filter(|k| publish_keys && is_published(k.state) && services.contains_key(&k.service))
            .map(|k| k.jwk.clone())
            .collect(),
    };
    let revoked = keys
        .iter()
        .filter(|k| k.state == KeyState::Revoked)
        .map(|k| RevokedKey {
            kid: k.kid.clone(),
            service: k.service.clone(),
            revoked_at: k.revoked_at.unwrap_or_default(),
            reason: k.revoke_reason.clone().unwrap_or_default(),
        })
        .collect();
    let retiring = keys
        .iter()
        .filter(|k| publish_keys && k.state == KeyState::Retiring && services.contains_key(&k.service))
        .map(|k| RetiringKey { kid: k.kid.clone(), service: k.service.clone(), until: k.retire_at.unwrap_or_default() })
        .collect();
    Registry {
        preview: rec.id.clone(),
        state: rec.state,
        version: rec.version,
        algorithm: rec.config.algorithm,
        token_ttl_s: rec.config.token_ttl_s,
        services,
        policy: rec.config.policy.clone(),
        jwks,
        revoked,
        retiring,
        // Also while a migration away from `mode: shared` has not switched every service yet.
        shared_credentials: rec.config.mode == pvid_core::CredentialMode::Shared || shares_key_material(keys),
    }
}

/// Whether two services sign with the same key pair (the active keys of a shared credential).
fn shares_key_material(keys: &[KeyRecord]) -> bool {
    let active: Vec<&KeyRecord> = keys.iter().filter(|k| k.state == KeyState::Active).collect();
    active.iter().enumerate().any(|(i, a)| active[i + 1..].iter().any(|b| b.service != a.service && crate::same_public_key(&a.jwk, &b.jwk)))
}

/// Key states verifiers accept: the signing key, and during a rotation the new key published
/// ahead of use and the old one until its overlap ends.
fn is_published(state: KeyState) -> bool {
    matches!(state, KeyState::Next | KeyState::Active | KeyState::Retiring)
}

/// Writes `registry.json` and `jwks.json` for a preview.
pub fn write_registry_files(home: &Path, reg: &Registry) -> Result<(), LifecycleError> {
    let dir = registry_dir(home, reg.preview.as_str());
    let err = |path: &Path| {
        let path = path.display().to_string();
        move |source| LifecycleError::Publish { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(err(&dir))?;
    // Invariant: these types serialise infallibly (no maps with non-string keys, no floats).
    let registry = serde_json::to_vec_pretty(reg).unwrap_or_default();
    let jwks = serde_json::to_vec_pretty(&reg.jwks).unwrap_or_default();
    write_atomic(&dir.join("jwks.json"), &jwks).map_err(err(&dir.join("jwks.json")))?;
    write_atomic(&dir.join("registry.json"), &registry).map_err(err(&dir.join("registry.json")))?;
    remove_stale_temp_files(&dir);
    Ok(())
}

/// Removes half-written files of writers that died (SIGKILL between create and rename): those
/// whose process no longer exists on this host, or older than ten minutes (a writer on another
/// host sharing the folder). A live writer's file is left alone. Best effort: a leftover costs
/// disk, not correctness (readers only open the final names).
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // `<file>.json.<pid>-<suffix>.tmp`
        let Some(pid) = name.strip_suffix(".tmp").and_then(|n| n.rsplit('.').next()).and_then(|n| n.split('-').next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let dead = pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(600));
        if dead || old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // A name of its own per writer: replicas sharing a PVID_HOME must not rename each other's
    // half-written file.
    let tmp = path.with_extension(format!("json.{}-{}.tmp", std::process::id(), pvid_core::key::random_suffix(6)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
