//! Exit codes scripts can rely on, and the error type that carries one.

/// A negative result: token denied, orphans found, a demo row not as expected.
pub const NEGATIVE: i32 = 1;
/// Invalid input: bad spec, bad flag, unknown preview or service.
pub const INVALID: i32 = 2;
/// Operational failure: store, secret store, I/O, network.
pub const OPERATIONAL: i32 = 3;

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: i32,
    /// What went wrong.
    pub error: anyhow::Error,
}

/// Invalid input.
pub fn invalid(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: INVALID, error: error.into() }
}

/// Operational failure.
pub fn operational(error: impl Into<anyhow::Error>) -> Failure {
    Failure { code: OPERATIONAL, error: error.into() }
}

impl From<pvid_control::LifecycleError> for Failure {
    fn from(e: pvid_control::LifecycleError) -> Failure {
        use pvid_control::LifecycleError as E;
        let code = match &e {
            E::NotFound(_) | E::SpecChanged { .. } | E::TearingDown(_) => INVALID,
            E::NotActive { .. } | E::UnknownService { .. } | E::RotationInProgress { .. } => INVALID,
            E::SharedAlgorithm { .. } | E::SharedRotation(_) | E::AlreadyPerService(_) => INVALID,
            // Transit custody asked of a store that has none: the command line is wrong.
            E::Store(pvid_store::StoreError::NoTransit(_)) => INVALID,
            _ => OPERATIONAL,
        };
        Failure { code, error: e.into() }
    }
}

impl From<pvid_store::StoreError> for Failure {
    fn from(e: pvid_store::StoreError) -> Failure {
        operational(e)
    }
}

/// Writes to standard output; a closed pipe ends the process with success (the reader has all it
/// wanted), any other write error with [`OPERATIONAL`].
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pvid: cannot write to standard output: {e}");
        std::process::exit(OPERATIONAL);
    }
}
