//! The OpenBao (Vault API) secret store.
//!
//! - **`sidecar` custody**: a private key is a KV v2 secret at `preview/<id>/<svc>/private-key`
//!   of the configured mount, its fields the key document (`kid`, `alg`, `pkcs8`), with custom
//!   metadata `preview`, `service`, `kid`, `created_at`. Deleting destroys every version and the
//!   metadata, then reads the path back to prove it is gone.
//! - **`transit` custody** ([`TransitKeys`]): a non-exportable Transit key `preview-<id>-<svc>`
//!   (`ecdsa-p256` for ES256, `ed25519` for EdDSA). Deleting sets `deletion_allowed`, deletes,
//!   and reads back.

use async_trait::async_trait;
use base64::Engine as _;
use pvid_bao::{Client, transit_key_type, transit_public_jwk};
use pvid_core::{Algorithm, PreviewId};
use serde_json::Value;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::secret::{KeySlot, SecretMeta, SecretPath, SecretStore};
use crate::transit::{TransitKeyName, TransitKeys, TransitPublicKey};

/// Private keys and Transit keys in OpenBao.
#[derive(Clone, Debug)]
pub struct OpenBaoSecretStore {
    client: Client,
}

impl OpenBaoSecretStore {
    /// A store over `client` (nothing is sent until the first operation).
    pub fn new(client: Client) -> OpenBaoSecretStore {
        OpenBaoSecretStore { client }
    }

    /// The client, for signers that share its configuration.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn still_present(&self, what: String) -> StoreError {
        StoreError::StillPresent { store: self.location(), what }
    }

    /// Appends the secrets under `preview/<preview>/` to `out`.
    async fn list_services(&self, preview: &str, out: &mut Vec<SecretPath>) -> Result<(), StoreError> {
        for service in self.client.kv_list(&format!("preview/{preview}")).await? {
            let Some(service) = service.strip_suffix('/') else { continue };
            let leaves = self.client.kv_list(&format!("preview/{preview}/{service}")).await?;
            for leaf in KeySlot::ALL.map(KeySlot::leaf) {
                if leaves.iter().any(|l| l == leaf) {
                    // Entries that are not pvid paths (not DNS labels) are not pvid's: skipped.
                    if let Ok(p) = SecretPath::parse(&format!("preview/{preview}/{service}/{leaf}")) {
                        out.push(p);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The KV fields of a value: a JSON object is stored as it is (operators see `kid`, `alg`);
/// anything else as base64 under `value_b64`.
fn to_fields(value: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(value) {
        Ok(v @ Value::Object(_)) => v,
        _ => serde_json::json!({"value_b64": base64::engine::general_purpose::STANDARD.encode(value)}),
    }
}

fn from_fields(path: &SecretPath, data: &Value) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    match data.get("value_b64").and_then(Value::as_str) {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Zeroizing::new)
            .map_err(|_| StoreError::BadSecret { path: path.to_string() }),
        None => Ok(Zeroizing::new(data.to_string().into_bytes())),
    }
}

#[async_trait]
impl SecretStore for OpenBaoSecretStore {
    fn kind(&self) -> &'static str {
        "openbao"
    }

    fn location(&self) -> String {
        format!("openbao {} (kv mount {})", self.client.addr(), self.client.config().kv_mount)
    }

    async fn put(&self, path: &SecretPath, value: &[u8]) -> Result<(), StoreError> {
        self.client.kv_put(&path.to_string(), &to_fields(value)).await?;
        Ok(())
    }

    async fn put_key(&self, path: &SecretPath, value: &[u8], meta: &SecretMeta<'_>) -> Result<(), StoreError> {
        self.put(path, value).await?;
        let custom = BTreeMap::from([
            ("preview".to_owned(), path.preview.to_string()),
            ("service".to_owned(), path.service.to_string()),
            ("kid".to_owned(), meta.kid.to_owned()),
            ("created_at".to_owned(), meta.created_at.to_string()),
        ]);
        self.client.kv_put_metadata(&path.to_string(), &custom).await?;
        Ok(())
    }

    async fn get(&self, path: &SecretPath) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match self.client.kv_get(&path.to_string()).await? {
            Some(data) => from_fields(path, &data).map(Some),
            None => Ok(None),
        }
    }

    async fn delete(&self, path: &SecretPath) -> Result<(), StoreError> {
        let p = path.to_string();
        self.client.kv_destroy(&p).await?;
        // Read back: neither a version nor the metadata may be left.
        if self.client.kv_metadata(&p).await?.is_some() {
            return Err(self.still_present(p));
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<SecretPath>, StoreError> {
        let mut out = Vec::new();
        for preview in self.client.kv_list("preview").await? {
            let Some(preview) = preview.strip_suffix('/') else { continue };
            self.list_services(preview, &mut out).await?;
        }
        out.sort();
        Ok(out)
    }

    async fn list_preview(&self, preview: &PreviewId) -> Result<Vec<SecretPath>, StoreError> {
        let mut out = Vec::new();
        self.list_services(preview.as_str(), &mut out).await?;
        out.sort();
        Ok(out)
    }

    fn transit(&self) -> Option<&dyn TransitKeys> {
        Some(self)
    }
}

#[async_trait]
impl TransitKeys for OpenBaoSecretStore {
    async fn create(&self, name: &TransitKeyName, alg: Algorithm) -> Result<(), StoreError> {
        let n = name.to_string();
        let expected = transit_key_type(alg).ok_or(StoreError::TransitKeyType {
            name: n.clone(),
            found: "(none)".into(),
            expected: format!("a type for {alg} (transit custody signs ES256 or EdDSA)"),
        })?;
        match self.client.transit_key(&n).await? {
            Some(info) if info.key_type != expected => {
                return Err(StoreError::TransitKeyType { name: n, found: info.key_type, expected: expected.into() });
            }
            Some(_) => {}
            None => self.client.transit_create(&n, expected).await?,
        }
        Ok(())
    }

    async fn rotate(&self, name: &TransitKeyName) -> Result<(), StoreError> {
        self.client.transit_rotate(&name.to_string()).await?;
        Ok(())
    }

    async fn public_keys(&self, name: &TransitKeyName) -> Result<Option<Vec<TransitPublicKey>>, StoreError> {
        let n = name.to_string();
        let Some(info) = self.client.transit_key(&n).await? else { return Ok(None) };
        let mut out = Vec::new();
        for (version, pem) in &info.public_keys {
            let jwk = transit_public_jwk(&info.key_type, pem, "")
                .map_err(|reason| StoreError::TransitPublicKey { name: n.clone(), reason })?;
            out.push(TransitPublicKey { version: *version, jwk });
        }
        Ok(Some(out))
    }

    async fn delete(&self, name: &str) -> Result<(), StoreError> {
        self.client.transit_delete(name).await?;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let listed = match self.client.transit_list().await {
            Ok(keys) => keys,
            // No Transit mount at all: a KV-only deployment has no Transit keys to list (making
            // or using a key still fails on the missing mount).
            Err(e) if matches!(e.kind, pvid_bao::BaoErrorKind::NoMount { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut keys: Vec<String> = listed.into_iter().filter(|k| TransitKeyName::is_pvid_name(k)).collect();
        keys.sort();
        Ok(keys)
    }
}
