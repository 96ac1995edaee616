//! Opens the embedded stores under `$PVID_HOME`.

use pvid_control::Control;
use pvid_store::{LocalSecretStore, StateStore};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::Arc;

use crate::exit::{Failure, operational};

/// Environment variable naming a test-only crash point (see `Control::with_failpoint`).
pub const ENV_FAILPOINT: &str = "PVID_FAILPOINT";

/// Opens state and secrets under `home`, creating them on first use.
pub async fn open(home: &Path) -> Result<Control, Failure> {
    // 0700 from the start: the home holds the master key (the secret store tightens it too).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| operational(anyhow::anyhow!("cannot create {}: {e}", home.display())))?;
    let secrets = LocalSecretStore::open(home)?;
    let state = StateStore::open(&home.join("state.db")).await?;
    let failpoint = std::env::var(ENV_FAILPOINT).ok().filter(|s| !s.is_empty());
    Ok(Control::new(state, Arc::new(secrets), home.to_path_buf()).with_failpoint(failpoint))
}
