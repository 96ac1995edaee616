//! Time as an injected dependency, so expiry and skew are tested without sleeping
//! (the model is rustls' `TimeProvider`).

use std::time::{SystemTime, UNIX_EPOCH};

/// A source of "now" in seconds since the Unix epoch.
pub trait Clock: Send + Sync {
    /// Current time, in (fractional) seconds since the Unix epoch.
    fn now(&self) -> f64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
    }
}

/// A clock stopped at a given instant (tests, `pvid token verify --now`).
#[derive(Clone, Copy, Debug)]
pub struct FixedClock(pub f64);

impl Clock for FixedClock {
    fn now(&self) -> f64 {
        self.0
    }
}
