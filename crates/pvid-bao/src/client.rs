//! The HTTP client: one request per call, the Vault API's JSON shapes, and classification of
//! every failure into a [`BaoError`] that names the address and the operation.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::config::BaoConfig;
use crate::error::{BaoError, BaoErrorKind};

/// A connection to one OpenBao server with one token. Cheap to clone (the HTTP pool is shared).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    config: BaoConfig,
}

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientBuildError {
    /// The CA file cannot be read or holds no certificate.
    #[error("cannot use the CA certificate file {path}: {reason}")]
    CaCert {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP stack refused the configuration.
    #[error("cannot build the HTTP client for OpenBao")]
    Http(#[source] reqwest::Error),
}

impl Client {
    /// A client for `config`. Nothing is sent until the first call.
    pub fn new(config: BaoConfig) -> Result<Client, ClientBuildError> {
        let mut builder = reqwest::Client::builder().timeout(config.timeout).connect_timeout(config.timeout);
        if let Some(path) = &config.ca_cert {
            let ca_err = |reason: String| ClientBuildError::CaCert { path: path.display().to_string(), reason };
            let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_err(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_err("no PEM certificate in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Client { http: builder.build().map_err(ClientBuildError::Http)?, config })
    }

    /// The server address.
    pub fn addr(&self) -> &str {
        &self.config.addr
    }

    /// The configuration this client was built from.
    pub fn config(&self) -> &BaoConfig {
        &self.config
    }

    fn error(&self, operation: &str, kind: BaoErrorKind) -> BaoError {
        BaoError { addr: self.config.addr.clone(), operation: operation.to_owned(), kind, source: None }
    }

    /// Sends one request to `/v1/<path>`. `Ok(None)` for 404 (not found), `Ok(Some(body))` for
    /// 2xx (`Value::Null` when the body is empty), an error naming `operation` otherwise.
    pub async fn request(
        &self,
        operation: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, BaoError> {
        let (status, value) = self.send(operation, method, path, body).await?;
        if status.is_success() {
            return Ok(Some(value));
        }
        let messages = error_messages(&value);
        if status == StatusCode::NOT_FOUND {
            // A missing mount also answers 404; it must never read as "the secret is gone".
            if messages.iter().any(|m| m.contains("no handler for route")) {
                let mount = path.split('/').next().unwrap_or(path).to_owned();
                return Err(self.error(operation, BaoErrorKind::NoMount { mount }));
            }
            return Ok(None);
        }
        let lower: Vec<String> = messages.iter().map(|m| m.to_ascii_lowercase()).collect();
        let kind = if lower.iter().any(|m| m.contains("is sealed")) {
            BaoErrorKind::Sealed
        } else if lower.iter().any(|m| m.contains("not initialized")) {
            BaoErrorKind::NotInitialized
        } else if status == StatusCode::FORBIDDEN {
            self.diagnose_forbidden(path).await
        } else if status == StatusCode::BAD_REQUEST && lower.iter().any(|m| m.contains("unsupported path")) {
            BaoErrorKind::NoMount { mount: path.split('/').next().unwrap_or(path).to_owned() }
        } else {
            BaoErrorKind::Status { status: status.as_u16(), messages }
        };
        Err(self.error(operation, kind))
    }

    async fn send(
        &self,
        operation: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), BaoError> {
        let url = format!("{}/v1/{path}", self.config.addr);
        let mut req = self.http.request(method, url).header("X-Vault-Token", self.config.token.expose());
        if let Some(ns) = &self.config.namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b.to_string());
        }
        let transport = |e: reqwest::Error| {
            let kind = if e.is_timeout() { BaoErrorKind::Timeout(self.config.timeout) } else { BaoErrorKind::Unreachable };
            BaoError { addr: self.config.addr.clone(), operation: operation.to_owned(), kind, source: Some(e) }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                self.error(operation, BaoErrorKind::BadResponse(format!("HTTP {status} with a body that is not JSON ({e})")))
            })?
        };
        Ok((status, value))
    }

    /// A 403 means a bad token or a missing grant; the token's own lookup tells which.
    async fn diagnose_forbidden(&self, path: &str) -> BaoErrorKind {
        match self.send("look up own token", Method::GET, "auth/token/lookup-self", None).await {
            Ok((status, v)) if status.is_success() => BaoErrorKind::PermissionDenied {
                path: path.to_owned(),
                policies: v["data"]["policies"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            },
            Ok((StatusCode::FORBIDDEN, v)) if error_messages(&v).iter().any(|m| m.contains("invalid token")) => {
                BaoErrorKind::TokenRejected
            }
            // lookup-self is in pvid's policy; a token that may not even look itself up is not
            // a token pvid's policy was attached to, or not a token at all.
            Ok((StatusCode::FORBIDDEN, _)) => BaoErrorKind::TokenRejected,
            _ => BaoErrorKind::PermissionDenied { path: path.to_owned(), policies: Vec::new() },
        }
    }

    // === KV v2 ===

    fn kv(&self, area: &str, path: &str) -> String {
        format!("{}/{area}/{path}", self.config.kv_mount)
    }

    /// Writes a new version of the secret at `path` (KV v2 `data`). Returns the version.
    pub async fn kv_put(&self, path: &str, data: &Value) -> Result<u64, BaoError> {
        let op = format!("write secret {path}");
        let v = self.request(&op, Method::POST, &self.kv("data", path), Some(&json!({"data": data}))).await?;
        v.as_ref()
            .and_then(|v| v["data"]["version"].as_u64())
            .ok_or_else(|| self.error(&op, BaoErrorKind::BadResponse("no data.version (is the mount KV version 2?)".into())))
    }

    /// Sets the secret's custom metadata (KV v2 `metadata`), keeping its versions.
    pub async fn kv_put_metadata(&self, path: &str, custom: &BTreeMap<String, String>) -> Result<(), BaoError> {
        let op = format!("write metadata of secret {path}");
        self.request(&op, Method::POST, &self.kv("metadata", path), Some(&json!({"custom_metadata": custom}))).await?;
        Ok(())
    }

    /// The current version's data, or `None` when there is none (never written, deleted or
    /// destroyed).
    pub async fn kv_get(&self, path: &str) -> Result<Option<Value>, BaoError> {
        let op = format!("read secret {path}");
        match self.request(&op, Method::GET, &self.kv("data", path), None).await? {
            Some(v) if v["data"]["data"].is_object() => Ok(Some(v["data"]["data"].clone())),
            _ => Ok(None),
        }
    }

    /// The secret's metadata (versions, custom metadata), or `None` when the path is unknown.
    pub async fn kv_metadata(&self, path: &str) -> Result<Option<Value>, BaoError> {
        let op = format!("read metadata of secret {path}");
        Ok(self.request(&op, Method::GET, &self.kv("metadata", path), None).await?.map(|v| v["data"].clone()))
    }

    /// Destroys every version and the metadata of the secret (KV v2 `DELETE metadata`).
    /// Succeeds when there was nothing.
    pub async fn kv_destroy(&self, path: &str) -> Result<(), BaoError> {
        let op = format!("destroy secret {path} (all versions and metadata)");
        self.request(&op, Method::DELETE, &self.kv("metadata", path), None).await?;
        Ok(())
    }

    /// The keys under a folder (`LIST metadata/<path>`); folders end in `/`. Empty when the
    /// folder does not exist.
    pub async fn kv_list(&self, path: &str) -> Result<Vec<String>, BaoError> {
        let op = format!("list secrets under {path}/");
        let v = self.request(&op, list(), &format!("{}/", self.kv("metadata", path)), None).await?;
        Ok(keys(v.as_ref()))
    }

    // === Transit ===

    fn transit(&self, path: &str) -> String {
        format!("{}/{path}", self.config.transit_mount)
    }

    /// Creates a non-exportable Transit key of `key_type` (`ecdsa-p256`, `ed25519`). Creating a
    /// key that exists leaves it unchanged.
    pub async fn transit_create(&self, name: &str, key_type: &str) -> Result<(), BaoError> {
        let op = format!("create transit key {name}");
        let body = json!({"type": key_type, "exportable": false, "allow_plaintext_backup": false});
        self.request(&op, Method::POST, &self.transit(&format!("keys/{name}")), Some(&body)).await?;
        Ok(())
    }

    /// Adds a version to a Transit key (the new version signs from then on when asked for; pvid
    /// names the version in every sign request).
    pub async fn transit_rotate(&self, name: &str) -> Result<(), BaoError> {
        let op = format!("rotate transit key {name}");
        self.request(&op, Method::POST, &self.transit(&format!("keys/{name}/rotate")), Some(&json!({}))).await?;
        Ok(())
    }

    /// Reads a Transit key (type, versions and public keys), or `None` when it does not exist.
    pub async fn transit_key(&self, name: &str) -> Result<Option<TransitKeyInfo>, BaoError> {
        let op = format!("read transit key {name}");
        let Some(v) = self.request(&op, Method::GET, &self.transit(&format!("keys/{name}")), None).await? else {
            return Ok(None);
        };
        let d = &v["data"];
        let bad = |why: &str| self.error(&op, BaoErrorKind::BadResponse(why.to_owned()));
        let key_type = d["type"].as_str().ok_or_else(|| bad("no data.type"))?.to_owned();
        let mut versions = BTreeMap::new();
        for (version, entry) in d["keys"].as_object().ok_or_else(|| bad("no data.keys"))? {
            let n: u64 = version.parse().map_err(|_| bad("a key version is not a number"))?;
            if let Some(pk) = entry["public_key"].as_str() {
                versions.insert(n, pk.to_owned());
            }
        }
        Ok(Some(TransitKeyInfo {
            name: name.to_owned(),
            key_type,
            latest_version: d["latest_version"].as_u64().unwrap_or(0),
            exportable: d["exportable"].as_bool().unwrap_or(false),
            public_keys: versions,
        }))
    }

    /// Signs `input` with version `version` of key `name`. ECDSA signatures are asked for in
    /// JWS form (`marshaling_algorithm: jws`), so every algorithm returns the raw JOSE
    /// signature bytes (r‖s for ES256, R‖S for Ed25519).
    pub async fn transit_sign(&self, name: &str, version: u64, input: &[u8]) -> Result<Vec<u8>, BaoError> {
        use base64::Engine as _;
        let op = format!("sign with transit key {name} v{version}");
        let body = json!({
            "input": base64::engine::general_purpose::STANDARD.encode(input),
            "key_version": version,
            "hash_algorithm": "sha2-256",
            "marshaling_algorithm": "jws",
        });
        let v = self.request(&op, Method::POST, &self.transit(&format!("sign/{name}")), Some(&body)).await?;
        let sig = v.as_ref().and_then(|v| v["data"]["signature"].as_str()).ok_or_else(|| {
            self.error(&op, BaoErrorKind::BadResponse("no data.signature (does the key exist?)".into()))
        })?;
        decode_signature(sig).map_err(|why| self.error(&op, BaoErrorKind::BadResponse(why)))
    }

    /// Allows deletion of key `name`, deletes it, and reads it back to prove it is gone.
    /// Succeeds when the key did not exist.
    pub async fn transit_delete(&self, name: &str) -> Result<(), BaoError> {
        let op = format!("allow deletion of transit key {name}");
        let cfg = self.transit(&format!("keys/{name}/config"));
        if self.transit_key(name).await?.is_none() {
            return Ok(());
        }
        self.request(&op, Method::POST, &cfg, Some(&json!({"deletion_allowed": true}))).await?;
        let op = format!("delete transit key {name}");
        self.request(&op, Method::DELETE, &self.transit(&format!("keys/{name}")), None).await?;
        if self.transit_key(name).await?.is_some() {
            return Err(self.error(&op, BaoErrorKind::BadResponse("the key is still readable after deletion".into())));
        }
        Ok(())
    }

    /// Names of every Transit key of the mount.
    pub async fn transit_list(&self) -> Result<Vec<String>, BaoError> {
        let v = self.request("list transit keys", list(), &self.transit("keys/"), None).await?;
        Ok(keys(v.as_ref()))
    }
}

/// A Transit key as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitKeyInfo {
    /// Key name.
    pub name: String,
    /// `ecdsa-p256`, `ed25519`, ...
    pub key_type: String,
    /// Newest version.
    pub latest_version: u64,
    /// Whether the private key can be exported (pvid creates keys that cannot).
    pub exportable: bool,
    /// Public key of each version: PEM (SPKI) for ECDSA, base64 for Ed25519.
    pub public_keys: BTreeMap<u64, String>,
}

fn list() -> Method {
    // Invariant: "LIST" is a valid token (RFC 9110 §5.6.2), so this cannot fail.
    Method::from_bytes(b"LIST").unwrap_or(Method::GET)
}

fn keys(v: Option<&Value>) -> Vec<String> {
    v.and_then(|v| v["data"]["keys"].as_array())
        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn error_messages(v: &Value) -> Vec<String> {
    v["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                // Multi-error text ("1 error occurred:\n\t* permission denied\n\n") to one line.
                .map(|m| m.replace("\n\t* ", " ").replace('\n', " ").trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `vault:v1:<sig>` → signature bytes. JWS-marshalled ECDSA signatures are base64url; Ed25519
/// signatures are standard base64. Both must be 64 bytes.
fn decode_signature(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let b64 = s
        .strip_prefix("vault:v")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(v, _)| !v.is_empty() && v.bytes().all(|c| c.is_ascii_digit()))
        .map(|(_, sig)| sig)
        .ok_or_else(|| "signature is not of the form vault:vN:...".to_owned())?;
    let bytes = if b64.contains(['+', '/']) {
        STANDARD.decode(b64)
    } else {
        // base64url, or standard base64 that happens to use neither `+` nor `/`: same bytes.
        URL_SAFE_NO_PAD.decode(b64.trim_end_matches('='))
    }
    .map_err(|_| "signature is not base64".to_owned())?;
    if bytes.len() != 64 {
        return Err(format!("signature is {} bytes, expected 64", bytes.len()));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_decode_from_both_base64_alphabets() {
        use base64::Engine as _;
        let raw: Vec<u8> = (0u8..64).map(|i| i.wrapping_mul(37).wrapping_add(250)).collect();
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
        let std = base64::engine::general_purpose::STANDARD.encode(&raw);
        assert_eq!(decode_signature(&format!("vault:v1:{url}")).unwrap(), raw);
        assert_eq!(decode_signature(&format!("vault:v12:{std}")).unwrap(), raw);
        assert!(decode_signature(&format!("v1:{url}")).is_err());
        assert!(decode_signature("vault:v1:AAAA").unwrap_err().contains("3 bytes"));
    }

    #[test]
    fn multi_error_text_becomes_one_line() {
        let v = json!({"errors": ["1 error occurred:\n\t* permission denied\n\n"]});
        assert_eq!(error_messages(&v), vec!["1 error occurred: permission denied".to_owned()]);
    }
}
