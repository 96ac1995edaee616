//! Where lifecycle commands act: the embedded stores under PVID_HOME (default), or a control
//! plane (`--server`). Both give the same answers, so every command prints the same output
//! whichever it talks to.

use anyhow::anyhow;
use pvid_control::{Control, Orphan, ProvisionOutcome, TeardownOutcome};
use pvid_core::{PreviewId, PreviewSpec, Registry};
use pvid_store::{EvidenceEntry, KeyRecord, PreviewRecord};
use std::path::{Path, PathBuf};

use crate::context;
use crate::exit::{Failure, invalid, operational};
use crate::remote::{Remote, ServerArgs};

/// The embedded stores or a control plane.
pub enum Backend {
    /// The embedded stores.
    Local {
        /// Lifecycle operations.
        control: Control,
        /// PVID_HOME.
        home: PathBuf,
    },
    /// A control plane.
    Remote(Remote),
}

fn outcome_word<T>(word: &str, table: &[(&str, T)]) -> Result<T, Failure>
where
    T: Copy,
{
    table
        .iter()
        .find(|(w, _)| *w == word)
        .map(|(_, o)| *o)
        .ok_or_else(|| operational(anyhow!("control plane answered an unknown outcome `{word}`")))
}

impl Backend {
    /// The control plane when `--server` is set, else the embedded stores.
    pub async fn open(home: &Path, server: &ServerArgs) -> Result<Backend, Failure> {
        match server.server.as_deref().filter(|s| !s.is_empty()) {
            Some(url) => Ok(Backend::Remote(Remote::new(url, home, server)?)),
            None => Ok(Backend::Local { control: context::open(home).await?, home: home.to_path_buf() }),
        }
    }

    /// Like [`Backend::open`], creating the embedded stores on first use (`pvid up`).
    pub async fn open_or_create(home: &Path, server: &ServerArgs) -> Result<Backend, Failure> {
        match server.server.as_deref().filter(|s| !s.is_empty()) {
            Some(url) => Ok(Backend::Remote(Remote::new(url, home, server)?)),
            None => Ok(Backend::Local { control: context::open_or_create(home).await?, home: home.to_path_buf() }),
        }
    }

    /// The secret store's kind (`local`, `openbao`; `server` for a control plane).
    pub fn secrets_kind(&self) -> &'static str {
        match self {
            Backend::Local { control, .. } => control.secrets().kind(),
            Backend::Remote(_) => "server",
        }
    }

    /// Where the secret store is (for `pvid show`).
    pub fn secrets_location(&self) -> String {
        match self {
            Backend::Local { control, .. } => control.secrets().location(),
            Backend::Remote(r) => format!("held by the control plane at {}", r.url("")),
        }
    }

    /// Provisions; `spec_text` is what a control plane is sent.
    pub async fn provision(&self, id: &PreviewId, spec: &PreviewSpec, spec_text: &str) -> Result<(ProvisionOutcome, Registry), Failure> {
        match self {
            Backend::Local { control, .. } => {
                let outcome = control.provision(id, &spec.config()).await?;
                Ok((outcome, control.registry(id).await?))
            }
            Backend::Remote(r) => {
                let (word, reg) = r.provision(id, spec_text).await?;
                let table = [
                    ("created", ProvisionOutcome::Created),
                    ("resumed", ProvisionOutcome::Resumed),
                    ("already_active", ProvisionOutcome::AlreadyActive),
                ];
                Ok((outcome_word(&word, &table)?, reg))
            }
        }
    }

    /// Tears down.
    pub async fn teardown(&self, id: &PreviewId) -> Result<TeardownOutcome, Failure> {
        match self {
            Backend::Local { control, .. } => Ok(control.teardown(id).await?),
            Backend::Remote(r) => {
                let table = [("torn_down", TeardownOutcome::TornDown), ("already_torn_down", TeardownOutcome::AlreadyTornDown)];
                outcome_word(&r.teardown(id).await?, &table)
            }
        }
    }

    /// Every preview.
    pub async fn previews(&self) -> Result<Vec<PreviewRecord>, Failure> {
        match self {
            Backend::Local { control, .. } => Ok(control.state().previews().await?),
            Backend::Remote(r) => r.previews().await,
        }
    }

    /// One preview with its keys and registry (exit 2 when it does not exist).
    pub async fn show(&self, id: &PreviewId) -> Result<(PreviewRecord, Vec<KeyRecord>, Registry), Failure> {
        match self {
            Backend::Local { control, .. } => {
                let rec = control.state().preview(id).await?.ok_or_else(|| invalid(anyhow!("preview {id} does not exist")))?;
                let keys = control.state().keys(id).await?;
                let reg = pvid_control::build_registry(&rec, &keys);
                Ok((rec, keys, reg))
            }
            Backend::Remote(r) => r.show(id).await,
        }
    }

    /// A preview's registry.
    pub async fn registry(&self, id: &PreviewId) -> Result<Registry, Failure> {
        match self {
            Backend::Local { control, .. } => Ok(control.registry(id).await?),
            Backend::Remote(r) => r.registry(id).await,
        }
    }

    /// Where a preview's registry is published (file or URL).
    pub fn registry_location(&self, id: &PreviewId) -> String {
        match self {
            Backend::Local { home, .. } => pvid_control::registry_dir(home, id.as_str()).join("registry.json").display().to_string(),
            Backend::Remote(r) => r.url(&format!("/v1/previews/{id}/registry.json")),
        }
    }

    /// The evidence trail (one preview's, or all of it).
    pub async fn evidence(&self, id: Option<&PreviewId>) -> Result<Vec<EvidenceEntry>, Failure> {
        match self {
            Backend::Local { control, .. } => Ok(control.state().evidence(id).await?),
            Backend::Remote(r) => r.evidence(id).await,
        }
    }

    /// Orphaned credentials.
    pub async fn orphans(&self) -> Result<Vec<Orphan>, Failure> {
        match self {
            Backend::Local { control, .. } => Ok(control.find_orphans().await?),
            Backend::Remote(r) => r.orphans().await,
        }
    }

    /// Sweeps orphans: what was found, what remains. `progress` sees local progress only.
    pub async fn sweep(&self, progress: &mut (dyn FnMut(usize, usize) + Send)) -> Result<(Vec<Orphan>, Vec<Orphan>), Failure> {
        match self {
            Backend::Local { control, .. } => {
                let found = control.find_orphans().await?;
                let total = found.len();
                control.sweep(&found, &mut |done| progress(done, total)).await?;
                Ok((found, control.find_orphans().await?))
            }
            Backend::Remote(r) => r.sweep().await,
        }
    }
}
