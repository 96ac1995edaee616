//! The CLI's client of a control plane (`--server URL` / `PVID_SERVER`): the same lifecycle
//! commands, over the `/v1` API instead of the embedded stores. The admin token comes from
//! `--token-file`, `PVID_ADMIN_TOKEN`, or `PVID_HOME/admin.token`.

use anyhow::anyhow;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use pvid_core::{PreviewId, Registry};
use pvid_store::{EvidenceEntry, KeyRecord, PreviewRecord};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::exit::{Failure, INVALID, OPERATIONAL, invalid, operational};
use crate::http_util::{HttpClient, client};

/// How long one API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Global flags choosing a control plane.
#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// Talk to this control plane (`http://host:port`) instead of the embedded stores.
    #[arg(long, global = true, env = "PVID_SERVER")]
    pub server: Option<String>,
    /// File holding the control plane's admin token (default: PVID_ADMIN_TOKEN, else
    /// PVID_HOME/admin.token).
    #[arg(long, global = true, env = "PVID_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ServerArgs {
    /// Whether commands go to a control plane.
    pub fn is_remote(&self) -> bool {
        self.server.as_deref().is_some_and(|s| !s.is_empty())
    }
}

/// A control plane.
pub struct Remote {
    base: String,
    token: Option<String>,
    client: HttpClient,
}

impl Remote {
    /// A client for `base`, with the admin token found as documented.
    pub fn new(base: &str, home: &Path, args: &ServerArgs) -> Result<Remote, Failure> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            return Err(invalid(anyhow!("--server {base}: expected http://host:port")));
        }
        let from_file = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .map_err(|e| invalid(anyhow!("cannot read admin token file {}: {e}", p.display())))
        };
        let token = match (&args.token_file, std::env::var("PVID_ADMIN_TOKEN").ok().filter(|s| !s.is_empty())) {
            (Some(p), _) => Some(from_file(p)?),
            (None, Some(t)) => Some(t.trim().to_owned()),
            (None, None) => {
                let p = crate::cmd_serve::default_token_file(home);
                if p.exists() { Some(from_file(&p)?) } else { None }
            }
        };
        Ok(Remote { base, token, client: client() })
    }

    /// The URL of a path.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, Value), Failure> {
        let url = self.url(path);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/yaml");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| invalid(anyhow!("{url}: {e}")))?;
        let resp = tokio::time::timeout(CALL_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| operational(anyhow!("{url}: no answer within {}s", CALL_TIMEOUT.as_secs())))?
            .map_err(|e| operational(anyhow!("{url}: {e}")))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| operational(anyhow!("{url}: {e}")))?.to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 {
            let message = value["message"].as_str().unwrap_or("no message").to_owned();
            let code = value["code"].as_str().unwrap_or("?").to_owned();
            let request_id = value["request_id"].as_str().unwrap_or("-").to_owned();
            let exit = if status < 500 { INVALID } else { OPERATIONAL };
            return Err(Failure { code: exit, error: anyhow!("{message} ({code}, HTTP {status}, request {request_id})") });
        }
        Ok((status, value))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, member: &str) -> Result<T, Failure> {
        let (_, v) = self.call("GET", path, None).await?;
        decode(&v[member], path)
    }

    /// `POST /v1/previews`: the outcome word and the registry.
    pub async fn provision(&self, id: &PreviewId, spec_text: &str) -> Result<(String, Registry), Failure> {
        let (_, v) = self.call("POST", &format!("/v1/previews?preview={id}"), Some(spec_text.to_owned())).await?;
        Ok((v["outcome"].as_str().unwrap_or("?").to_owned(), decode(&v["registry"], "registry")?))
    }

    /// `DELETE /v1/previews/{id}`: the outcome word.
    pub async fn teardown(&self, id: &PreviewId) -> Result<String, Failure> {
        let (_, v) = self.call("DELETE", &format!("/v1/previews/{id}"), None).await?;
        Ok(v["outcome"].as_str().unwrap_or("?").to_owned())
    }

    /// `GET /v1/previews`.
    pub async fn previews(&self) -> Result<Vec<PreviewRecord>, Failure> {
        self.get("/v1/previews", "previews").await
    }

    /// `GET /v1/previews/{id}`.
    pub async fn show(&self, id: &PreviewId) -> Result<(PreviewRecord, Vec<KeyRecord>, Registry), Failure> {
        let (_, v) = self.call("GET", &format!("/v1/previews/{id}"), None).await?;
        Ok((decode(&v["preview"], "preview")?, decode(&v["keys"], "keys")?, decode(&v["registry"], "registry")?))
    }

    /// `GET /v1/previews/{id}/registry.json`.
    pub async fn registry(&self, id: &PreviewId) -> Result<Registry, Failure> {
        let (_, v) = self.call("GET", &format!("/v1/previews/{id}/registry.json"), None).await?;
        decode(&v, "registry")
    }

    /// The evidence trail, of one preview or all.
    pub async fn evidence(&self, id: Option<&PreviewId>) -> Result<Vec<EvidenceEntry>, Failure> {
        match id {
            Some(id) => self.get(&format!("/v1/previews/{id}/evidence"), "entries").await,
            None => self.get("/v1/evidence", "entries").await,
        }
    }

    /// `GET /v1/audit/orphans`.
    pub async fn orphans(&self) -> Result<Vec<pvid_control::Orphan>, Failure> {
        self.get("/v1/audit/orphans", "orphans").await
    }

    /// `POST /v1/audit/orphans/sweep`: what was found and what remains.
    pub async fn sweep(&self) -> Result<(Vec<pvid_control::Orphan>, Vec<pvid_control::Orphan>), Failure> {
        let (_, v) = self.call("POST", "/v1/audit/orphans/sweep", None).await?;
        Ok((decode(&v["found"], "found")?, decode(&v["remaining"], "remaining")?))
    }
}

fn decode<T: DeserializeOwned>(v: &Value, what: &str) -> Result<T, Failure> {
    serde_json::from_value(v.clone()).map_err(|e| operational(anyhow!("control plane answered an unexpected {what}: {e}")))
}
