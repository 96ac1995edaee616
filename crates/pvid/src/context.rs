//! Opens the embedded stores under `$PVID_HOME`.

use pvid_control::Control;
use pvid_store::{LocalSecretStore, StateStore};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::Path;
use std::sync::Arc;

use crate::exit::{Failure, invalid, operational};

/// Environment variable naming a test-only crash point (see `Control::with_failpoint`).
pub const ENV_FAILPOINT: &str = "PVID_FAILPOINT";

/// Opens state and secrets of an existing PVID_HOME. A folder without state is an input error:
/// a mistyped `--home` must not read as "nothing there, all clean".
pub async fn open(home: &Path) -> Result<Control, Failure> {
    require_state(home)?;
    open_or_create(home).await
}

fn require_state(home: &Path) -> Result<(), Failure> {
    if home.join("state.db").is_file() {
        return Ok(());
    }
    Err(invalid(anyhow::anyhow!(
        "no pvid state in {}: run `pvid up` first, or point --home/PVID_HOME at the right folder",
        home.display()
    )))
}

/// Opens state and secrets under `home`, creating them on first use (`pvid up`).
pub async fn open_or_create(home: &Path) -> Result<Control, Failure> {
    if home.exists() && !home.is_dir() {
        return Err(invalid(anyhow::anyhow!("PVID_HOME {} is a file, not a folder", home.display())));
    }
    // 0700 from the start: the home holds the master key (the secret store tightens it too).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .map_err(|e| operational(anyhow::anyhow!("cannot create {}: {e}", home.display())))?;
    let secrets = LocalSecretStore::open(home)?;
    let state = StateStore::open(&home.join("state.db")).await?;
    let failpoint = std::env::var(ENV_FAILPOINT).ok().filter(|s| !s.is_empty());
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    Ok(Control::new(state, Arc::new(secrets), home.to_path_buf()).with_failpoint(failpoint).with_actor(format!("cli:{user}")))
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
