//! `pvid`: service-to-service identity for preview environments. This binary only wires the
//! library crates together and maps errors to exit codes (see docs/cli.md).
#![forbid(unsafe_code)]

/// `println!` that ends the process quietly when standard output is closed (`pvid ... | head`)
/// instead of panicking.
macro_rules! outln {
    () => { $crate::exit::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::exit::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` with the same behaviour as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::exit::write_stdout(format_args!($($arg)*)) };
}

mod backend;
mod cmd_doctor;
mod cmd_explain;
mod cmd_lifecycle;
mod cmd_matrix;
mod cmd_proxy;
mod cmd_recommend;
mod cmd_render;
mod cmd_rotate;
mod cmd_serve;
mod cmd_token;
mod context;
mod demo;
mod exit;
mod http_util;
mod remote;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

use crate::exit::Failure;

/// Service-to-service identity for multi-service preview environments.
///
/// pvid gives every service of a preview its own key pair, lets services prove who they are with
/// short-lived tokens minted for exactly one callee, enforces a default-deny call policy in a
/// sidecar, and removes every credential at teardown.
#[derive(Parser, Debug)]
#[command(name = "pvid", version, propagate_version = true, after_help = EXIT_CODES)]
struct Cli {
    /// Where pvid keeps its state (SQLite), local secrets and published registries.
    #[arg(long, global = true, env = "PVID_HOME", default_value = ".pvid")]
    home: PathBuf,

    #[command(flatten)]
    store: context::StoreArgs,

    #[command(flatten)]
    server: remote::ServerArgs,

    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success; 1 negative result (token denied, orphans found, \
demo row unexpected); 2 invalid input (bad spec, bad flag, unknown preview); 3 operational failure \
(store, secret store, I/O).";

#[derive(Subcommand, Debug)]
enum Command {
    /// Provision a preview from a spec: a fresh key pair per service, registry published.
    ///
    /// Idempotent: re-running on an active preview changes nothing; re-running after a crash
    /// finishes the job.
    Up(cmd_lifecycle::UpArgs),
    /// Tear a preview down: keys revoked, secrets deleted, registry emptied, evidence recorded.
    ///
    /// Idempotent; a re-run after an interruption completes it.
    Down(cmd_lifecycle::DownArgs),
    /// List previews.
    Ls(cmd_lifecycle::LsArgs),
    /// Show one preview: services, issuers, audiences, kids, state.
    Show(cmd_lifecycle::ShowArgs),
    /// Print a preview's JWKS (public keys only).
    Jwks(cmd_lifecycle::IdArg),
    /// Print a preview's registry.json (JWKS + service map + policy).
    Registry(cmd_lifecycle::IdArg),
    /// Audits: orphaned credentials, the evidence trail.
    #[command(subcommand)]
    Audit(cmd_lifecycle::AuditCommand),
    /// Mint and verify tokens.
    #[command(subcommand)]
    Token(cmd_token::TokenCommand),
    /// Run the sidecar in front of one service (inbound validation, egress minting).
    Proxy(cmd_proxy::ProxyArgs),
    /// Say why a request was refused and what fixes it (from a token or a logged request id).
    Explain(cmd_explain::ExplainArgs),
    /// Check a preview's services and sidecars for configuration drift and clock offset.
    Doctor(cmd_doctor::DoctorArgs),
    /// Show every decision one request caused, across services, in order.
    Logs(cmd_explain::LogsArgs),
    /// Render what a substrate needs for a preview: k8s, istio, linkerd, compose or serverless.
    ///
    /// Preview-scoped identities, default deny, and exactly the calls the spec allows. Output is
    /// deterministic (sorted keys, stable names); key material only with --include-secrets.
    Render(cmd_render::RenderArgs),
    /// Try every caller → callee edge of a live preview through its sidecars, against the spec.
    ///
    /// Each rule's methods and paths, plus what the spec forbids (another method, a path beside
    /// the rule's, /admin, edges with no rule). Exit 0 when every probe matches, 1 on a mismatch,
    /// 3 when a sidecar cannot be reached.
    Matrix(cmd_matrix::MatrixArgs),
    /// Rotate a live preview's keys without downtime: publish the new key, switch signing once
    /// the sidecars hold it (--ack) or after --publish-delay, accept the old key's tokens for the
    /// overlap (token lifetime + leeway), then refuse them with key_revoked. --emergency switches
    /// at once and refuses the old key now. Re-run an interrupted rotation to finish it.
    Rotate(cmd_rotate::RotateArgs),
    /// Move a `mode: shared` preview to per-service keys without downtime: the mode changes and
    /// every service rotates onto a fresh key of its own (same steps and flags as `pvid rotate`).
    /// Afterwards set `mode: per-service` (or remove `mode`) in the spec.
    Migrate(cmd_rotate::MigrateArgs),
    /// Recommend a pattern (shared, per-service, mesh, sidecar) for a size and substrate, and
    /// the next commands.
    Recommend(cmd_recommend::RecommendArgs),
    /// Run a real four-service preview on loopback, end to end, and check every decision.
    Demo(demo::DemoArgs),
    /// Run the control plane: the /v1 API, registry watch for sidecars, TTL reaper.
    ///
    /// Several replicas may share one PostgreSQL (--database); sidecars watch them all.
    Serve(cmd_serve::ServeArgs),
}

fn main() {
    let cli = Cli::parse();
    // A sidecar on one thread runs a single event loop: no hand-offs between workers (1.3-1.4x
    // req/s pinned to one core, docs/PERFORMANCE.md). Everything else uses the default pool.
    let mut builder = match &cli.command {
        Command::Proxy(a) if a.threads() == 1 => tokio::runtime::Builder::new_current_thread(),
        Command::Proxy(a) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(a.threads());
            b
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pvid: cannot start the async runtime: {e}");
            std::process::exit(exit::OPERATIONAL);
        }
    };
    let result = runtime.block_on(run(cli));
    let code = match result {
        Ok(code) => code,
        Err(Failure { code, error }) => {
            eprintln!("pvid: {error:#}");
            // A program that asked for JSON gets the error as JSON on stdout too.
            if std::env::args().any(|a| a == "--json") {
                outln!("{}", serde_json::json!({"result": "error", "exit_code": code, "message": format!("{error:#}")}));
            }
            code
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    let home = cli.home;
    context::configure(cli.store);
    match cli.command {
        Command::Up(a) => cmd_lifecycle::up(&home, &cli.server, a).await,
        Command::Down(a) => cmd_lifecycle::down(&home, &cli.server, a).await,
        Command::Ls(a) => cmd_lifecycle::ls(&home, &cli.server, a).await,
        Command::Show(a) => cmd_lifecycle::show(&home, &cli.server, a).await,
        Command::Jwks(a) => cmd_lifecycle::jwks(&home, &cli.server, a).await,
        Command::Registry(a) => cmd_lifecycle::registry(&home, &cli.server, a).await,
        Command::Audit(a) => cmd_lifecycle::audit(&home, &cli.server, a).await,
        Command::Token(a) => cmd_token::run(&home, a).await,
        Command::Proxy(a) => cmd_proxy::run(&home, a).await,
        Command::Explain(a) => cmd_explain::explain_cmd(&home, &cli.server, a).await,
        Command::Doctor(a) => cmd_doctor::run(&home, a).await,
        Command::Logs(a) => cmd_explain::logs_cmd(&home, a),
        Command::Render(a) => cmd_render::run(&home, a).await,
        Command::Matrix(a) => cmd_matrix::run(&home, a).await,
        Command::Rotate(a) => cmd_rotate::rotate(&home, &cli.server, a).await,
        Command::Migrate(a) => cmd_rotate::migrate(&home, &cli.server, a).await,
        Command::Recommend(a) => cmd_recommend::run(a),
        Command::Demo(a) => demo::run(a).await,
        Command::Serve(a) => cmd_serve::run(&home, a).await,
    }
}
