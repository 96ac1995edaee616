//! Opens the embedded stores under `$PVID_HOME`.

use pvid_control::Control;
use pvid_store::{LocalSecretStore, StateStore};
use std::path::Path;
use std::sync::Arc;

use crate::exit::{Failure, operational};

/// Environment variable naming a test-only crash point (see `Control::with_failpoint`).
pub const ENV_FAILPOINT: &str = "PVID_FAILPOINT";

/// Environment variable naming the state database (`postgres://…`); default: SQLite under home.
pub const ENV_DATABASE_URL: &str = "PVID_DATABASE_URL";

/// Opens state and secrets under `home`, creating them on first use. The state store is
/// `PVID_DATABASE_URL` when set, else `home/state.db`.
pub async fn open(home: &Path) -> Result<Control, Failure> {
    open_with(home, std::env::var(ENV_DATABASE_URL).ok().filter(|s| !s.is_empty()).as_deref()).await
}

/// Opens state (`database` URL, or `home/state.db`) and the secrets under `home`.
pub async fn open_with(home: &Path, database: Option<&str>) -> Result<Control, Failure> {
    std::fs::create_dir_all(home).map_err(|e| operational(anyhow::anyhow!("cannot create {}: {e}", home.display())))?;
    let secrets = LocalSecretStore::open(home)?;
    let state = match database {
        Some(url) => StateStore::connect(url).await?,
        None => StateStore::open(&home.join("state.db")).await?,
    };
    let failpoint = std::env::var(ENV_FAILPOINT).ok().filter(|s| !s.is_empty());
    Ok(Control::new(state, Arc::new(secrets), home.to_path_buf()).with_failpoint(failpoint))
}
