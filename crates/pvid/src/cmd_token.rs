//! `pvid token mint` and `pvid token verify`. The verify interface is stable (docs/cli.md):
//! other tools script it.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use pvid_core::duration::parse_duration;
use pvid_core::token::{DEFAULT_LEEWAY_S, MAX_TTL_S};
use pvid_core::{Clock, Jwks, KeyCustody, MintRequest, PreviewId, PreviewState, Registry, ServiceName, SystemClock, Verifier, service_identity};
use serde_json::json;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::context;
use crate::exit::{Failure, NEGATIVE, invalid, operational};

/// `pvid token ...`
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Mint a token from one service of a preview for exactly one callee, and print it.
    Mint(MintArgs),
    /// Verify a token the way a sidecar would; exit 0 when valid, 1 with a reason code when not.
    Verify(VerifyArgs),
}

/// Arguments of `pvid token mint`.
#[derive(Args, Debug)]
pub struct MintArgs {
    /// The preview.
    #[arg(long)]
    preview: PreviewId,
    /// The calling service (whose key signs).
    #[arg(long)]
    from: ServiceName,
    /// The called service (the token's audience).
    #[arg(long)]
    to: ServiceName,
    /// Lifetime (e.g. 300s, 5m; at most 1h). Default: the preview's token_ttl.
    #[arg(long)]
    ttl: Option<String>,
    /// Print this many tokens, one per line, each with its own jti (for load tests).
    #[arg(long, default_value_t = 1)]
    count: u32,
    /// Always sign a new token. Under transit custody a token is otherwise reused from
    /// PVID_HOME/token-cache until 30 s before it expires (each signature is an OpenBao request).
    #[arg(long)]
    no_cache: bool,
}

/// Arguments of `pvid token verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The token, or `-` to read it from standard input.
    token: String,
    /// A registry.json (JWKS + service map): keys are bound to services by the registry.
    #[arg(long, conflicts_with_all = ["jwks", "issuer"], required_unless_present = "jwks")]
    registry: Option<PathBuf>,
    /// A bare JWKS file; needs --issuer. Kids are bound to services by name (`<svc>-…` or `<preview>-<svc>-…`).
    #[arg(long, requires = "issuer")]
    jwks: Option<PathBuf>,
    /// A trusted issuer (`preview-<id>-<svc>`); repeat for several.
    #[arg(long)]
    issuer: Vec<String>,
    /// An accepted audience; repeat for several (any one matches).
    #[arg(long, required = true)]
    audience: Vec<String>,
    /// The preview the verifier belongs to (taken from the registry, or inferred from the issuers).
    #[arg(long)]
    preview: Option<PreviewId>,
    /// Verify as of this time (Unix seconds) instead of now.
    #[arg(long)]
    now: Option<f64>,
    /// Leeway on exp, nbf and iat, in seconds.
    #[arg(long, default_value_t = DEFAULT_LEEWAY_S)]
    leeway: u64,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(home: &Path, cmd: TokenCommand) -> Result<i32, Failure> {
    match cmd {
        TokenCommand::Mint(a) => mint(home, a).await,
        TokenCommand::Verify(a) => verify(a),
    }
}

async fn mint(home: &Path, a: MintArgs) -> Result<i32, Failure> {
    let control = context::open(home).await?;
    let reg = control.registry(&a.preview).await?;
    if reg.state != PreviewState::Active {
        return Err(invalid(anyhow!("preview {} is {}, not active", a.preview, reg.state)));
    }
    for svc in [&a.from, &a.to] {
        if !reg.services.contains_key(svc) {
            return Err(invalid(anyhow!("preview {} has no service {svc}", a.preview)));
        }
    }
    let ttl_s = match &a.ttl {
        Some(t) => parse_duration(t).map_err(|e| invalid(anyhow!("--ttl: {e}")))?.as_secs(),
        None => reg.token_ttl_s,
    };
    if ttl_s == 0 || ttl_s > MAX_TTL_S {
        return Err(invalid(anyhow!("--ttl must be between 1s and {MAX_TTL_S}s")));
    }
    let signer = context::signer(&control, &a.preview, &a.from)
        .await?
        .ok_or_else(|| operational(anyhow!("no key for {}/{} in the secret store", a.preview, a.from)))?;
    let transit = reg_custody(&control, &a.preview).await? == KeyCustody::Transit;
    let now = SystemClock.now();
    let cache = (transit && !a.no_cache && a.count == 1).then(|| token_cache::entry(home, &a.preview, &a.from, &a.to, ttl_s));
    if let Some(token) = cache.as_ref().and_then(|c| c.load(signer.kid(), now)) {
        outln!("{token}");
        return Ok(0);
    }
    let audience = service_identity(&a.preview, &a.to);
    let req = MintRequest { from: &a.from, preview: &a.preview, audience: &audience, ttl_s, now };
    for _ in 0..a.count {
        let minted = pvid_proxy::mint_with(signer.as_ref(), &req).await.map_err(operational)?;
        if let Some(c) = &cache {
            // A cache that cannot be written costs a signature next time, nothing else.
            let _ = c.store(signer.kid(), &minted);
        }
        outln!("{}", minted.token);
    }
    Ok(0)
}

async fn reg_custody(control: &pvid_control::Control, preview: &PreviewId) -> Result<KeyCustody, Failure> {
    let rec = control.state().preview(preview).await?.ok_or_else(|| invalid(anyhow!("preview {preview} does not exist")))?;
    Ok(rec.config.key_custody)
}

/// Removes a preview's cached tokens (after teardown they are refused anyway).
pub fn forget_cached_tokens(home: &Path, preview: &PreviewId) {
    let _ = std::fs::remove_dir_all(token_cache::dir(home, preview));
}

/// The token cache of `pvid token mint` under transit custody: one 0600 file per (caller,
/// callee, lifetime) in `PVID_HOME/token-cache/<preview>/` (0700), holding the token, its `exp`
/// and the kid that signed it. A token is reused only while that kid is still the caller's
/// active key and until 30 s before `exp` (the sidecar's rule).
mod token_cache {
    use pvid_core::{PreviewId, ServiceName};
    use pvid_proxy::Minted;
    use pvid_proxy::signer::REFRESH_BEFORE_EXPIRY_S;
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};

    pub fn dir(home: &Path, preview: &PreviewId) -> PathBuf {
        home.join("token-cache").join(preview.as_str())
    }

    pub struct Entry {
        file: PathBuf,
    }

    pub fn entry(home: &Path, preview: &PreviewId, from: &ServiceName, to: &ServiceName, ttl_s: u64) -> Entry {
        Entry { file: dir(home, preview).join(format!("{from}--{to}--{ttl_s}.json")) }
    }

    impl Entry {
        pub fn load(&self, kid: &str, now: f64) -> Option<String> {
            let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&self.file).ok()?).ok()?;
            let fresh = v["kid"] == kid && v["exp"].as_f64().is_some_and(|exp| now < exp - REFRESH_BEFORE_EXPIRY_S);
            fresh.then(|| v["token"].as_str().map(str::to_owned)).flatten()
        }

        pub fn store(&self, kid: &str, minted: &Minted) -> std::io::Result<()> {
            let dir = self.file.parent().unwrap_or(Path::new("."));
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
            let tmp = self.file.with_extension("tmp");
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(serde_json::json!({"kid": kid, "exp": minted.exp, "token": minted.token}).to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        }
    }
}

fn verify(a: VerifyArgs) -> Result<i32, Failure> {
    let token = if a.token == "-" {
        // Read at most a little more than the largest token: the size check decides, and a
        // gigabyte on stdin costs nothing.
        let mut bytes = Vec::new();
        std::io::stdin()
            .take(pvid_core::token::MAX_TOKEN_BYTES as u64 * 2 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| invalid(anyhow!("cannot read the token from stdin: {e}")))?;
        // Not UTF-8 cannot be a token; let the verifier call it malformed.
        String::from_utf8(bytes).unwrap_or_else(|_| "\u{fffd}".to_owned())
    } else {
        a.token.clone()
    };
    let token = token.trim();
    let verifier = build_verifier(&a)?.with_leeway(a.leeway);
    let now = checked_now(a.now)?;
    let outcome = verifier.verify(token, now);
    let (code, out) = match &outcome {
        Ok(v) => (
            0,
            json!({"result": "ok", "reason": "ok", "caller": v.caller, "issuer": v.issuer, "kid": v.kid,
                   "audience": v.audience, "exp": v.exp, "jti": v.jti, "preview": verifier.preview()}),
        ),
        Err(r) => (
            NEGATIVE,
            json!({"result": "deny", "reason": r.reason, "detail": r.detail, "kid": r.token.kid, "issuer": r.token.iss,
                   "audience": r.token.aud, "expected_audience": verifier.audiences(), "preview": verifier.preview()}),
        ),
    };
    if a.json {
        outln!("{out}");
    } else {
        match outcome {
            Ok(v) => outln!("ok: caller {} ({}), kid {}, audience {}", v.caller, v.issuer, v.kid, v.audience),
            Err(r) => outln!("deny: {}: {}", r.reason, r.detail),
        }
    }
    Ok(code)
}

fn read_json_file(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| invalid(anyhow!("cannot read {what} {}: {e}", path.display())))
}

fn build_verifier(a: &VerifyArgs) -> Result<Verifier, Failure> {
    if let Some(path) = &a.registry {
        let reg = Registry::from_json(&read_json_file(path, "registry")?).map_err(|e| invalid(anyhow!("{}: {e}", path.display())))?;
        if let Some(p) = &a.preview
            && p != &reg.preview
        {
            return Err(invalid(anyhow!("--preview {p} but the registry is for {}", reg.preview)));
        }
        return Verifier::from_registry(&reg, a.audience.clone()).map_err(|e| invalid(anyhow!("{}: {e}", path.display())));
    }
    let Some(path) = &a.jwks else {
        return Err(invalid(anyhow!("give --registry FILE, or --jwks FILE with --issuer")));
    };
    let jwks: Jwks = serde_json::from_slice(&read_json_file(path, "JWKS")?)
        .map_err(|e| invalid(anyhow!("{}: not a JWKS: {e}", path.display())))?;
    let preview = match &a.preview {
        Some(p) => p.clone(),
        None => infer_preview(&a.issuer, &a.audience).ok_or_else(|| {
            invalid(anyhow!("cannot tell the preview from --issuer/--audience; pass --preview"))
        })?,
    };
    Verifier::from_jwks(&jwks, &preview, &a.issuer, a.audience.clone()).map_err(|e| invalid(anyhow!("{}: {e}", path.display())))
}

/// The longest preview id `p` such that every issuer is `preview-p-<svc>` and every audience is
/// `preview-p` or `preview-p-<svc>`.
fn infer_preview(issuers: &[String], audiences: &[String]) -> Option<PreviewId> {
    let first = issuers.first()?.strip_prefix("preview-")?;
    let mut best: Option<PreviewId> = None;
    for (i, _) in first.match_indices('-') {
        let Ok(candidate) = first[..i].parse::<PreviewId>() else { continue };
        let own = format!("preview-{candidate}-");
        let whole = format!("preview-{candidate}");
        let fits = issuers.iter().all(|iss| iss.starts_with(&own) && iss.len() > own.len())
            && audiences.iter().all(|aud| aud == &whole || aud.starts_with(&own));
        if fits {
            best = Some(candidate);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_the_preview_from_issuers_and_audiences() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let p = infer_preview(&s(&["preview-pr-1-api", "preview-pr-1-web"]), &s(&["preview-pr-1-orders"]));
        assert_eq!(p.unwrap().as_str(), "pr-1");
        let p = infer_preview(&s(&["preview-pr-1-api-gw"]), &s(&["preview-pr-1"]));
        assert_eq!(p.unwrap().as_str(), "pr-1");
        assert!(infer_preview(&s(&["nope"]), &s(&["x"])).is_none());
    }

}

/// `--now` if given (refused unless a finite Unix time in the NumericDate range), else the clock.
pub fn checked_now(given: Option<f64>) -> Result<f64, Failure> {
    let now = given.unwrap_or_else(|| SystemClock.now());
    if !(0.0..=pvid_core::token::MAX_NUMERIC_DATE).contains(&now) {
        return Err(invalid(anyhow!("--now must be a Unix time between 0 and 253402300799")));
    }
    Ok(now)
}
