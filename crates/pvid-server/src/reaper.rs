//! The TTL reaper: every interval, tear down the active previews whose TTL ran out, with
//! [`pvid_control::Control::reap_expired`], the same teardown as `pvid down`. Every replica runs
//! one; the preview's operation lock and the re-check under it make exactly one of them reap a
//! given preview (and record `preview.expired` once).
//!
//! The same pass advances scheduled rotations ([`pvid_control::Control::advance_rotations`]):
//! each step runs under the preview's lock and re-reads the key states, so replicas running it
//! at once take each step once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;

use crate::AppState;
use crate::error::chain;
use crate::observe::{log_line, now_rfc3339};

/// Runs the reaper until `stop` turns true.
pub async fn run(state: Arc<AppState>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = ticks.tick() => once(&state).await,
        }
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`; drop it here, not in the caller's future.
    let _ = stop.wait_for(|s| *s).await;
}

/// One pass of the reaper.
pub async fn once(state: &AppState) {
    let now = pvid_store::state::unix_now();
    match state.control.reap_expired(now, &state.settings.replica).await {
        Ok(reaped) => {
            for id in reaped {
                state.metrics.reaped.fetch_add(1, Ordering::Relaxed);
                state.metrics.teardowns[0].fetch_add(1, Ordering::Relaxed);
                log_line(json!({"ts": now_rfc3339(), "event": "preview.reaped", "preview_id": id, "replica": state.settings.replica}));
            }
        }
        Err(e) => log_line(json!({"ts": now_rfc3339(), "event": "reaper.failed", "replica": state.settings.replica, "error": chain(&e)})),
    }
    match state.control.advance_rotations(now, state.settings.rotation_publish_delay.as_secs()).await {
        Ok(steps) => {
            for (id, step) in steps {
                log_line(json!({"ts": now_rfc3339(), "event": "rotation.step", "preview_id": id, "step": step, "replica": state.settings.replica}));
            }
        }
        Err(e) => log_line(json!({"ts": now_rfc3339(), "event": "rotation.failed", "replica": state.settings.replica, "error": chain(&e)})),
    }
}
