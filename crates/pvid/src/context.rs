//! Opens the stores: the state store under `$PVID_HOME`, and the secret store chosen with
//! `--secrets` / `PVID_SECRETS` (`local`: sealed files under `$PVID_HOME`; `openbao`: OpenBao or
//! Vault, configured from `BAO_ADDR`/`VAULT_ADDR`, `BAO_TOKEN`/`VAULT_TOKEN` or a token file).
//! Also builds the signer of a service (its key, or OpenBao Transit).

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use pvid_control::{Control, SigningSource};
use pvid_core::{PreviewId, ServiceName};
use pvid_proxy::{Signer, TransitSigner};
use pvid_store::{LocalSecretStore, OpenBaoSecretStore, SecretStore, StateStore};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::exit::{Failure, invalid, operational};

/// Environment variable naming a test-only crash point (see `Control::with_failpoint`).
pub const ENV_FAILPOINT: &str = "PVID_FAILPOINT";
/// Environment variable choosing the secret store (`--secrets`).
pub const ENV_SECRETS: &str = "PVID_SECRETS";

/// Which secret store holds private keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SecretsKind {
    /// Embedded: AES-256-GCM sealed files under PVID_HOME/secrets, master key in a 0600 file.
    #[default]
    Local,
    /// OpenBao or HashiCorp Vault: KV v2 (sidecar custody) and Transit (transit custody).
    Openbao,
}

/// Secret store options, shared by every command (global flags).
#[derive(Args, Clone, Debug, Default)]
pub struct StoreArgs {
    /// Where private keys live: `local` (sealed files under PVID_HOME) or `openbao` (OpenBao or
    /// Vault at BAO_ADDR/VAULT_ADDR, token from BAO_TOKEN/VAULT_TOKEN or --bao-token-file).
    #[arg(long, global = true, env = ENV_SECRETS, value_enum, default_value_t = SecretsKind::Local)]
    pub secrets: SecretsKind,
    /// File holding the OpenBao token (instead of BAO_TOKEN / VAULT_TOKEN).
    #[arg(long, global = true, env = pvid_bao::ENV_TOKEN_FILE, value_name = "FILE")]
    pub bao_token_file: Option<PathBuf>,
    /// KV v2 mount for `sidecar` custody keys (default `secret`).
    #[arg(long, global = true, env = pvid_bao::ENV_KV_MOUNT, value_name = "MOUNT")]
    pub bao_kv_mount: Option<String>,
    /// Transit mount for `transit` custody keys (default `transit`).
    #[arg(long, global = true, env = pvid_bao::ENV_TRANSIT_MOUNT, value_name = "MOUNT")]
    pub bao_transit_mount: Option<String>,
}

impl StoreArgs {
    /// The flags that make a child `pvid` process use the same secret store (the demo's sidecars).
    pub fn to_args(&self) -> Vec<String> {
        let mut out = vec!["--secrets".to_owned(), self.secrets.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()];
        if let Some(f) = &self.bao_token_file {
            out.extend(["--bao-token-file".to_owned(), f.display().to_string()]);
        }
        if let Some(m) = &self.bao_kv_mount {
            out.extend(["--bao-kv-mount".to_owned(), m.clone()]);
        }
        if let Some(m) = &self.bao_transit_mount {
            out.extend(["--bao-transit-mount".to_owned(), m.clone()]);
        }
        out
    }
}

/// The store options of this process, set once from the command line in `main`. A process
/// runs one command against one secret store, so this is configuration, not shared state; it
/// keeps every command's signature unchanged.
static STORE_ARGS: OnceLock<StoreArgs> = OnceLock::new();

/// Records the command line's store options (first call wins).
pub fn configure(args: StoreArgs) {
    let _ = STORE_ARGS.set(args);
}

/// The store options in force.
pub fn store_args() -> StoreArgs {
    STORE_ARGS.get().cloned().unwrap_or_default()
}

/// The OpenBao client configured from the environment and the flags.
pub fn bao_client() -> Result<pvid_bao::Client, Failure> {
    let args = store_args();
    let overrides = pvid_bao::BaoOverrides {
        token_file: args.bao_token_file,
        kv_mount: args.bao_kv_mount,
        transit_mount: args.bao_transit_mount,
    };
    let config = pvid_bao::BaoConfig::from_env(&|k| std::env::var(k).ok(), &overrides).map_err(|e| {
        invalid(anyhow!(e).context("--secrets openbao"))
    })?;
    pvid_bao::Client::new(config).map_err(|e| invalid(anyhow!(e).context("--secrets openbao")))
}

fn secret_store(home: &Path) -> Result<Arc<dyn SecretStore>, Failure> {
    Ok(match store_args().secrets {
        SecretsKind::Local => Arc::new(LocalSecretStore::open(home)?),
        SecretsKind::Openbao => Arc::new(OpenBaoSecretStore::new(bao_client()?)),
    })
}

/// Environment variable naming the state database (`postgres://…`); default: SQLite under home.
pub const ENV_DATABASE_URL: &str = "PVID_DATABASE_URL";

fn database_url() -> Option<String> {
    std::env::var(ENV_DATABASE_URL).ok().filter(|s| !s.is_empty())
}

/// Opens state and secrets of an existing PVID_HOME (state: `PVID_DATABASE_URL` when set, else
/// `home/state.db`). A folder without state is an input error: a mistyped `--home` must not
/// read as "nothing there, all clean".
pub async fn open(home: &Path) -> Result<Control, Failure> {
    // A secret store that cannot be configured is the first thing to fix: say so before
    // looking for state.
    if store_args().secrets == SecretsKind::Openbao {
        bao_client()?;
    }
    require_state(home)?;
    open_or_create(home).await
}

fn require_state(home: &Path) -> Result<(), Failure> {
    if database_url().is_some() || home.join("state.db").is_file() {
        return Ok(());
    }
    Err(invalid(anyhow::anyhow!(
        "no pvid state in {}: run `pvid up` first, or point --home/PVID_HOME at the right folder",
        home.display()
    )))
}

/// Opens state and secrets under `home`, creating them on first use (`pvid up`).
pub async fn open_or_create(home: &Path) -> Result<Control, Failure> {
    open_with(home, database_url().as_deref()).await
}

/// Opens state (`database` URL, or `home/state.db`, created on first use) and the secrets.
pub async fn open_with(home: &Path, database: Option<&str>) -> Result<Control, Failure> {
    if home.exists() && !home.is_dir() {
        return Err(invalid(anyhow::anyhow!("PVID_HOME {} is a file, not a folder", home.display())));
    }
    // 0700 from the start: the home holds the master key (the secret store tightens it too).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| operational(anyhow::anyhow!("cannot create {}: {e}", home.display())))?;
    let secrets = secret_store(home)?;
    let state = match database {
        Some(url) => StateStore::connect(url).await?,
        None => StateStore::open(&home.join("state.db")).await?,
    };
    let failpoint = std::env::var(ENV_FAILPOINT).ok().filter(|s| !s.is_empty());
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    Ok(Control::new(state, secrets, home.to_path_buf()).with_failpoint(failpoint).with_actor(format!("cli:{user}")))
}

/// An exclusive lock on PVID_HOME, held while a command changes state (`up`, `down`, a sweep):
/// two such commands on one home run one after the other, never interleaved. Released on drop.
pub struct HomeLock(#[allow(dead_code)] std::fs::File);

/// Takes the lock, waiting for another pvid command to finish. Only `pvid up` (`create`) may
/// make the home; other commands need its state to exist.
pub fn lock(home: &Path, create: bool) -> Result<HomeLock, Failure> {
    if !create {
        require_state(home)?;
    }
    std::fs::create_dir_all(home).map_err(|e| operational(anyhow::anyhow!("cannot create {}: {e}", home.display())))?;
    let path = home.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| operational(anyhow::anyhow!("cannot open {}: {e}", path.display())))?;
    file.lock().map_err(|e| operational(anyhow::anyhow!("cannot lock {}: {e}", path.display())))?;
    Ok(HomeLock(file))

}

/// The signer of a service of an active preview: its private key (sidecar custody), or OpenBao
/// Transit (transit custody). `None` when the service has no key.
pub async fn signer(control: &Control, preview: &PreviewId, service: &ServiceName) -> Result<Option<Arc<dyn Signer>>, Failure> {
    Ok(match control.signing_source(preview, service).await? {
        None => None,
        Some(SigningSource::Local(key)) => Some(Arc::new(key)),
        Some(SigningSource::Transit { key_name, version, kid, alg }) => {
            Some(Arc::new(TransitSigner::new(bao_client()?, key_name, version, kid, alg)))
        }
    })
}
