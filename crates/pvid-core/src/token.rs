//! Minting and verifying pvid tokens (JWS compact, DESIGN.md "Token format").
//!
//! Verification runs DESIGN.md's check order, and the first failing step gives the reason:
//! extract → size → structure/JSON → `alg` allow-list and `crit` → kid lookup → key/alg match →
//! signature → claim types → issuer → audience → time. (Policy is the caller's last step.)
//! Nothing here trusts the header to choose an algorithm: the key named by `kid` decides.

use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::id::{PreviewId, ServiceName, preview_audience, service_identity};
use crate::jose::{b64_decode, b64_encode, parse_strict_object};
use crate::key::{Algorithm, Jwks, KeyError, SigningKey, VerifyingKey, random_bytes};
use crate::reason::ReasonCode;
use crate::registry::{Registry, RevokedKey};

/// Largest token accepted, in bytes, checked before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// Default leeway on `exp`, `nbf` and `iat`, seconds.
pub const DEFAULT_LEEWAY_S: u64 = 60;
/// Default token lifetime, seconds.
pub const DEFAULT_TTL_S: u64 = 300;
/// Longest lifetime pvid mints, seconds.
pub const MAX_TTL_S: u64 = 3600;
/// Largest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: f64 = 253_402_300_799.0;

// === Minting ===

/// What to put in a token.
#[derive(Clone, Debug)]
pub struct MintRequest<'a> {
    /// The caller's service.
    pub from: &'a ServiceName,
    /// The preview of the caller and callee.
    pub preview: &'a PreviewId,
    /// The audience (normally the callee's `preview-<id>-<svc>`).
    pub audience: &'a str,
    /// Lifetime in seconds (capped at [`MAX_TTL_S`]).
    pub ttl_s: u64,
    /// Issue time, Unix seconds.
    pub now: f64,
}

/// Signs a token for exactly one audience with a local key.
pub fn mint(key: &SigningKey, req: &MintRequest<'_>) -> Result<String, KeyError> {
    let unsigned = UnsignedToken::new(key.algorithm(), key.kid(), req);
    let sig = key.sign(unsigned.signing_input().as_bytes())?;
    Ok(unsigned.finish(&sig))
}

/// A token's header and claims, encoded and waiting for a signature: the sans-IO half of
/// minting. A signer elsewhere (a local key, OpenBao Transit) signs
/// [`signing_input`](Self::signing_input) and [`finish`](Self::finish) appends the signature.
#[derive(Clone, Debug)]
pub struct UnsignedToken {
    signing_input: String,
    exp: i64,
}

impl UnsignedToken {
    /// Encodes the header (`alg`, `typ`, `kid`) and the claims of a token for exactly one
    /// audience: `iat = nbf = floor(now)`, `exp = iat + ttl` (ttl clamped to 1..=[`MAX_TTL_S`]).
    pub fn new(alg: Algorithm, kid: &str, req: &MintRequest<'_>) -> UnsignedToken {
        let iat = req.now.floor() as i64;
        let ttl = req.ttl_s.clamp(1, MAX_TTL_S) as i64;
        let header = json!({"alg": alg.as_str(), "typ": "JWT", "kid": kid});
        let claims = json!({
            "iss": service_identity(req.preview, req.from),
            "sub": req.from.as_str(),
            "aud": req.audience,
            "iat": iat,
            "nbf": iat,
            "exp": iat + ttl,
            "jti": b64_encode(&random_bytes(16)),
            "preview": req.preview.as_str(),
        });
        UnsignedToken { signing_input: signing_input(&header, &claims), exp: iat + ttl }
    }

    /// `base64url(header) "." base64url(claims)`: the bytes to sign (RFC 7515 §5.1).
    pub fn signing_input(&self) -> &str {
        &self.signing_input
    }

    /// The token's `exp` claim, Unix seconds.
    pub fn exp(&self) -> i64 {
        self.exp
    }

    /// The compact token: the signing input, a dot, and the JOSE signature (r‖s for ES256)
    /// in base64url.
    pub fn finish(self, signature: &[u8]) -> String {
        format!("{}.{}", self.signing_input, b64_encode(signature))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64_encode(header.to_string().as_bytes()), b64_encode(claims.to_string().as_bytes()))
}

/// Signs arbitrary header and claims objects, with no checks at all. For tests, fuzzing and
/// tools that must craft unusual tokens; services use [`mint`].
pub fn sign_compact(key: &SigningKey, header: &Value, claims: &Value) -> Result<String, KeyError> {
    let signing_input = signing_input(header, claims);
    let sig = key.sign(signing_input.as_bytes())?;
    Ok(format!("{signing_input}.{}", b64_encode(&sig)))
}

// === Extraction ===

/// Takes the token from the request's `Authorization` header values: exactly one header, scheme
/// `Bearer` (case-insensitive), one credential. Never looks anywhere else (no query string).
pub fn extract_bearer<'a>(values: &[&'a [u8]]) -> Result<&'a str, Rejection> {
    let value = match values {
        [] => return Err(Rejection::bare(ReasonCode::MissingToken, "no Authorization header")),
        [one] => *one,
        _ => return Err(Rejection::bare(ReasonCode::MultipleTokens, "more than one Authorization header")),
    };
    let value = std::str::from_utf8(value)
        .map_err(|_| Rejection::bare(ReasonCode::Malformed, "Authorization header is not ASCII"))?
        .trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Rejection::bare(ReasonCode::Malformed, "Authorization scheme is not Bearer"));
    }
    let token = rest.trim_start();
    if token.contains(',') {
        return Err(Rejection::bare(ReasonCode::MultipleTokens, "several credentials in one Authorization header"));
    }
    if token.is_empty() || token.bytes().any(|c| c.is_ascii_whitespace()) {
        return Err(Rejection::bare(ReasonCode::Malformed, "Bearer credential is empty or has spaces"));
    }
    Ok(token)
}

// === Verification ===

/// What was read from a token, verified or not; used for the decision log and `explain`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenInfo {
    /// Header `alg`, if a string.
    pub alg: Option<String>,
    /// Header `kid`, if a string.
    pub kid: Option<String>,
    /// `iss`, if a string.
    pub iss: Option<String>,
    /// `aud` values, if a string or array of strings.
    pub aud: Option<Vec<String>>,
    /// `iat`, `nbf`, `exp`, if numbers.
    pub iat: Option<f64>,
    /// Not before.
    pub nbf: Option<f64>,
    /// Expiry.
    pub exp: Option<f64>,
    /// `preview` claim, if a string.
    pub preview: Option<String>,
    /// `jti`, if a string.
    pub jti: Option<String>,
}

/// A token that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    /// The caller, from the issuer its key is bound to.
    pub caller: ServiceName,
    /// The caller's issuer.
    pub issuer: String,
    /// The key that signed.
    pub kid: String,
    /// The audience value that matched.
    pub audience: String,
    /// Expiry (Unix seconds).
    pub exp: f64,
    /// Issued-at (Unix seconds), if the token carries it.
    pub iat: Option<f64>,
    /// `jti`, if any.
    pub jti: Option<String>,
}

/// A refused token or request: the reason code, a human detail, and what the token said.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// The reason code.
    pub reason: ReasonCode,
    /// Expected vs actual, in words. Never holds the token.
    pub detail: String,
    /// What could be read from the token before it was refused (unverified).
    pub token: TokenInfo,
}

impl Rejection {
    /// A rejection that knows nothing of the token.
    pub fn bare(reason: ReasonCode, detail: impl Into<String>) -> Rejection {
        Rejection { reason, detail: detail.into(), token: TokenInfo::default() }
    }
}

/// A key the verifier knows, with the service (and preview) it is bound to.
#[derive(Clone, Debug)]
struct BoundKey {
    key: VerifyingKey,
    preview: PreviewId,
    service: ServiceName,
    /// A rotated-out key: accepted until this instant (Unix seconds), then `key_revoked`.
    until: Option<f64>,
}

/// Verifies tokens for one callee of one preview. Build it once per registry version; it is
/// cheap to share (`Arc`) and immutable.
#[derive(Clone, Debug)]
pub struct Verifier {
    preview: PreviewId,
    gone: bool,
    keys: HashMap<String, Arc<BoundKey>>,
    revoked: HashMap<String, RevokedKey>,
    services: BTreeSet<ServiceName>,
    audiences: Vec<String>,
    /// Algorithms of the live keys, plus the preview's configured one (so that a torn-down
    /// preview, with no live key, still reaches the kid step and says `preview_torn_down`).
    allowed_algs: Vec<Algorithm>,
    leeway_s: f64,
    max_token_bytes: usize,
}

/// Errors building a [`Verifier`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierError {
    /// A key of the registry or JWKS cannot be used.
    #[error("key `{kid}`: {source}")]
    Key {
        /// The key id.
        kid: String,
        /// Why.
        #[source]
        source: KeyError,
    },
    /// A JWK has no `kid`, or the kid binds to no service.
    #[error("{0}")]
    Binding(String),
    /// The callee is not a service of the preview.
    #[error("service `{0}` is not in the registry")]
    UnknownCallee(String),
}

impl Verifier {
    /// A verifier for `callee` of the registry's preview. It accepts the callee's audience, and
    /// the preview-wide audience when the registry says the callee accepts it.
    pub fn for_service(reg: &Registry, callee: &ServiceName) -> Result<Verifier, VerifierError> {
        let entry = reg.services.get(callee).ok_or_else(|| VerifierError::UnknownCallee(callee.to_string()))?;
        let mut audiences = vec![entry.audience.clone()];
        if entry.accept_preview_audience {
            audiences.push(preview_audience(&reg.preview));
        }
        Self::from_registry(reg, audiences)
    }

    /// A verifier for a registry with explicit accepted audiences.
    pub fn from_registry(reg: &Registry, audiences: Vec<String>) -> Result<Verifier, VerifierError> {
        let mut keys = HashMap::new();
        for jwk in &reg.jwks.keys {
            let kid = jwk.kid.clone().ok_or_else(|| VerifierError::Binding("a JWK has no kid".into()))?;
            let service = reg
                .owner_of(&kid)
                .ok_or_else(|| VerifierError::Binding(format!("kid `{kid}` belongs to no service")))?
                .clone();
            let key = jwk.to_verifying_key().map_err(|source| VerifierError::Key { kid: kid.clone(), source })?;
            let until = reg.retiring.iter().find(|r| r.kid == kid).map(|r| r.until as f64);
            keys.insert(kid, Arc::new(BoundKey { key, preview: reg.preview.clone(), service, until }));
        }
        let mut allowed_algs: Vec<Algorithm> = keys.values().map(|k| k.key.algorithm()).collect();
        allowed_algs.push(reg.algorithm);
        allowed_algs.sort_by_key(|a| a.as_str());
        allowed_algs.dedup();
        Ok(Verifier {
            allowed_algs,
            preview: reg.preview.clone(),
            gone: reg.state.is_gone(),
            keys,
            revoked: reg.revoked.iter().map(|r| (r.kid.clone(), r.clone())).collect(),
            services: reg.services.keys().cloned().collect(),
            audiences,
            leeway_s: DEFAULT_LEEWAY_S as f64,
            max_token_bytes: MAX_TOKEN_BYTES,
        })
    }

    /// A verifier from a bare JWKS and the trusted issuers (`preview-<id>-<svc>`), for peers that
    /// publish only a JWKS. A kid is bound to a trusted service by its name (`<svc>-<n>[-<x>]`
    /// or `<preview>-<svc>-<n>[-<x>]`); keys of no trusted service are left out, and a kid that
    /// could name two services is an error.
    pub fn from_jwks(
        jwks: &Jwks,
        preview: &PreviewId,
        issuers: &[String],
        audiences: Vec<String>,
    ) -> Result<Verifier, VerifierError> {
        let prefix = format!("preview-{preview}-");
        let mut services = BTreeSet::new();
        for iss in issuers {
            let svc = iss
                .strip_prefix(&prefix)
                .and_then(|s| s.parse::<ServiceName>().ok())
                .ok_or_else(|| VerifierError::Binding(format!("issuer `{iss}` is not of the form {prefix}<service>")))?;
            services.insert(svc);
        }
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            let kid = jwk.kid.clone().ok_or_else(|| VerifierError::Binding("a JWK has no kid".into()))?;
            // A key of no trusted service is not loaded: its tokens are `unknown_kid`.
            let Some((kid_preview, service)) = bind_kid_by_name(&kid, preview, &services).map_err(VerifierError::Binding)?
            else {
                continue;
            };
            let key = jwk.to_verifying_key().map_err(|source| VerifierError::Key { kid: kid.clone(), source })?;
            keys.insert(kid, Arc::new(BoundKey { key, preview: kid_preview, service, until: None }));
        }
        let mut allowed_algs: Vec<Algorithm> = keys.values().map(|k| k.key.algorithm()).collect();
        allowed_algs.sort_by_key(|a| a.as_str());
        allowed_algs.dedup();
        Ok(Verifier {
            allowed_algs,
            preview: preview.clone(),
            gone: false,
            keys,
            revoked: HashMap::new(),
            services,
            audiences,
            leeway_s: DEFAULT_LEEWAY_S as f64,
            max_token_bytes: MAX_TOKEN_BYTES,
        })
    }

    /// Sets the leeway on `exp`, `nbf` and `iat` (default 60 s).
    pub fn with_leeway(mut self, seconds: u64) -> Verifier {
        self.leeway_s = seconds as f64;
        self
    }

    /// The leeway on `exp`, `nbf` and `iat`, seconds.
    pub fn leeway_s(&self) -> f64 {
        self.leeway_s
    }

    /// The preview this verifier serves.
    pub fn preview(&self) -> &PreviewId {
        &self.preview
    }

    /// The audiences accepted.
    pub fn audiences(&self) -> &[String] {
        &self.audiences
    }

    /// Whether tokens of `kid` must no longer be accepted: the key is revoked or unknown, or the
    /// preview is gone (used by caches to drop entries at once).
    pub fn is_revoked(&self, kid: &str) -> bool {
        self.gone || self.revoked.contains_key(kid) || !self.keys.contains_key(kid)
    }

    /// Whether tokens of `kid` are refused at `now`: [`Verifier::is_revoked`], or the key was
    /// rotated out and its overlap has ended.
    pub fn is_revoked_at(&self, kid: &str, now: f64) -> bool {
        self.is_revoked(kid) || self.keys.get(kid).and_then(|k| k.until).is_some_and(|until| now >= until)
    }

    /// Verifies a token at time `now` (Unix seconds).
    pub fn verify(&self, token: &str, now: f64) -> Result<Verified, Rejection> {
        if !now.is_finite() {
            // Every time comparison with NaN is false: fail closed instead.
            return Err(Rejection::bare(ReasonCode::Expired, "the verifier's clock is not a finite number"));
        }
        // size
        if token.len() > self.max_token_bytes {
            return Err(Rejection::bare(
                ReasonCode::TokenTooLarge,
                format!("token is {} bytes; the limit is {}", token.len(), self.max_token_bytes),
            ));
        }
        // structure/JSON
        let mut info = TokenInfo::default();
        let fail = |reason: ReasonCode, detail: String, info: &TokenInfo| Rejection { reason, detail, token: info.clone() };
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(fail(ReasonCode::Malformed, "token does not have three segments".into(), &info));
        };
        let header = decode_json_segment(h64).map_err(|e| fail(ReasonCode::Malformed, format!("header: {e}"), &info))?;
        let claims = decode_json_segment(p64).map_err(|e| fail(ReasonCode::Malformed, format!("claims: {e}"), &info))?;
        let sig = b64_decode(s64).map_err(|e| fail(ReasonCode::Malformed, format!("signature: {e}"), &info))?;
        read_info(&header, &claims, &mut info);

        // alg allow-list and crit
        let alg = match header.get("alg") {
            Some(Value::String(a)) => a.as_str(),
            Some(_) => return Err(fail(ReasonCode::Malformed, "header alg is not a string".into(), &info)),
            None => return Err(fail(ReasonCode::AlgNotAllowed, "header has no alg".into(), &info)),
        };
        if !self.allowed_algs.iter().any(|a| a.as_str() == alg) {
            return Err(fail(
                ReasonCode::AlgNotAllowed,
                format!("alg `{}` is not the algorithm of any key of {}", alg.escape_debug(), self.preview),
                &info,
            ));
        }
        if header.contains_key("crit") {
            return Err(fail(ReasonCode::Malformed, "header has crit; no extension is supported".into(), &info));
        }

        // kid lookup
        let kid = match header.get("kid") {
            Some(Value::String(k)) => k.as_str(),
            Some(_) => return Err(fail(ReasonCode::Malformed, "header kid is not a string".into(), &info)),
            None => return Err(fail(ReasonCode::UnknownKid, "header has no kid".into(), &info)),
        };
        if self.gone {
            return Err(fail(ReasonCode::PreviewTornDown, format!("preview {} has been torn down", self.preview), &info));
        }
        if let Some(r) = self.revoked.get(kid) {
            return Err(fail(
                ReasonCode::KeyRevoked,
                format!("key {} of {} was revoked at {} ({})", r.kid, r.service, r.revoked_at, r.reason),
                &info,
            ));
        }
        let Some(bound) = self.keys.get(kid) else {
            // The key is not ours. When the (unverified) token says it comes from another preview,
            // say so: that is the cause an operator needs, and the token is refused either way.
            if let Some(other) = self.foreign_preview(&info) {
                return Err(fail(
                    ReasonCode::PreviewMismatch,
                    format!("token claims preview {other}; this is {} (its key is not in this registry)", self.preview),
                    &info,
                ));
            }
            return Err(fail(ReasonCode::UnknownKid, format!("kid is not a key of {}", self.preview), &info));
        };

        // A rotated-out key stops at the end of its overlap, by the verifier's own clock: the
        // control plane moving it to the revoked list later changes nothing.
        if let Some(until) = bound.until.filter(|until| now >= *until) {
            return Err(fail(
                ReasonCode::KeyRevoked,
                format!("key {kid} of {} was rotated out; its overlap ended at {until}", bound.service),
                &info,
            ));
        }

        // key/alg match
        if bound.key.algorithm().as_str() != alg {
            return Err(fail(
                ReasonCode::AlgNotAllowed,
                format!("header alg `{}` but key {kid} is {}", alg.escape_debug(), bound.key.algorithm()),
                &info,
            ));
        }

        // signature
        let signing_input_len = h64.len() + 1 + p64.len();
        if !bound.key.verify(&token.as_bytes()[..signing_input_len], &sig) {
            return Err(fail(ReasonCode::BadSignature, format!("signature does not verify with key {kid}"), &info));
        }

        // claim types
        let exp = time_claim(&claims, "exp", true).map_err(|e| fail(ReasonCode::Malformed, e, &info))?;
        let nbf = time_claim(&claims, "nbf", false).map_err(|e| fail(ReasonCode::Malformed, e, &info))?;
        let iat = time_claim(&claims, "iat", false).map_err(|e| fail(ReasonCode::Malformed, e, &info))?;
        let exp = exp.unwrap_or_default();
        let iss = match claims.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            None => return Err(fail(ReasonCode::IssuerUnknown, "token has no iss".into(), &info)),
            Some(_) => return Err(fail(ReasonCode::Malformed, "iss is not a string".into(), &info)),
        };
        for name in ["sub", "jti", "preview"] {
            if claims.get(name).is_some_and(|v| !v.is_string()) {
                return Err(fail(ReasonCode::Malformed, format!("{name} is not a string"), &info));
            }
        }
        let aud: Vec<&str> = match claims.get("aud") {
            None => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for v in items {
                    let Value::String(s) = v else {
                        return Err(fail(ReasonCode::Malformed, "aud holds a non-string".into(), &info));
                    };
                    out.push(s.as_str());
                }
                out
            }
            Some(_) => return Err(fail(ReasonCode::Malformed, "aud is neither a string nor an array".into(), &info)),
        };

        // issuer: pvid issuer, own preview, known service, service owns kid
        let Some(rest) = iss.strip_prefix("preview-") else {
            return Err(fail(ReasonCode::IssuerUnknown, "iss is not a pvid issuer (preview-<id>-<svc>)".into(), &info));
        };
        let Some(svc) = rest.strip_prefix(self.preview.as_str()).and_then(|r| r.strip_prefix('-')) else {
            return Err(fail(ReasonCode::PreviewMismatch, format!("iss is not an issuer of preview {}", self.preview), &info));
        };
        if let Some(Value::String(p)) = claims.get("preview")
            && p != self.preview.as_str()
        {
            return Err(fail(ReasonCode::PreviewMismatch, format!("preview claim is not {}", self.preview), &info));
        }
        let Some(caller) = svc.parse::<ServiceName>().ok().filter(|s| self.services.contains(s)) else {
            return Err(fail(ReasonCode::IssuerUnknown, format!("iss names no service of {}", self.preview), &info));
        };
        if bound.service != caller || bound.preview != self.preview {
            return Err(fail(
                ReasonCode::IssuerKeyMismatch,
                format!("key {kid} belongs to {}/{}, not to {}", bound.preview, bound.service, iss),
                &info,
            ));
        }

        // audience
        let Some(matched) = aud.iter().find(|a| self.audiences.iter().any(|x| x == *a)) else {
            return Err(fail(
                ReasonCode::AudienceMismatch,
                format!("aud {:?} holds none of {:?}", aud, self.audiences),
                &info,
            ));
        };

        // time
        if now - self.leeway_s >= exp {
            return Err(fail(ReasonCode::Expired, format!("expired {:.0} s ago", now - exp), &info));
        }
        if let Some(nbf) = nbf
            && now + self.leeway_s < nbf
        {
            return Err(fail(ReasonCode::NotYetValid, format!("not valid for another {:.0} s", nbf - now), &info));
        }
        if let Some(iat) = iat
            && now + self.leeway_s < iat
        {
            return Err(fail(
                ReasonCode::IssuedInFuture,
                format!("issued {:.0} s in the future: the caller's clock runs ahead", iat - now),
                &info,
            ));
        }

        Ok(Verified {
            caller,
            issuer: iss.to_owned(),
            kid: kid.to_owned(),
            audience: (*matched).to_owned(),
            exp,
            iat,
            jti: info.jti.clone(),
        })
    }

    /// The other preview an unverified token claims to come from, if any.
    fn foreign_preview(&self, info: &TokenInfo) -> Option<String> {
        let own = format!("preview-{}-", self.preview);
        if let Some(p) = &info.preview
            && p != self.preview.as_str()
        {
            return Some(p.clone());
        }
        let iss = info.iss.as_deref()?;
        if iss.starts_with(&own) {
            return None;
        }
        let rest = iss.strip_prefix("preview-")?;
        // Without the other registry the split of `<id>-<svc>` is unknown; drop the last label.
        Some(rest.rsplit_once('-').map_or(rest, |(p, _)| p).to_owned())
    }
}

/// Binds a kid to (preview, service) by its name, which must be `<svc>-<n>[-<suffix>]` (pvid's
/// own form, in `preview`) or `<p>-<svc>-<n>[-<suffix>]` (in preview `p`), with `<n>` digits and
/// `<suffix>` one label. `Ok(None)`: the kid names no trusted service; `Err`: it could name
/// several (service `a` with kid `a-1-2` and service `a-1` with kid `a-1-2`), which only a
/// registry can settle.
fn bind_kid_by_name(
    kid: &str,
    preview: &PreviewId,
    services: &BTreeSet<ServiceName>,
) -> Result<Option<(PreviewId, ServiceName)>, String> {
    let tail_ok = |t: &str| {
        let (n, suffix) = t.split_once('-').unwrap_or((t, "x"));
        !n.is_empty()
            && n.bytes().all(|c| c.is_ascii_digit())
            && !suffix.is_empty()
            && suffix.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    let mut found: Vec<(PreviewId, ServiceName)> = Vec::new();
    for svc in services {
        if let Some(tail) = kid.strip_prefix(svc.as_str()).and_then(|r| r.strip_prefix('-'))
            && tail_ok(tail)
        {
            found.push((preview.clone(), svc.clone()));
        }
        let marker = format!("-{svc}-");
        for (i, _) in kid.match_indices(&marker) {
            if let Ok(p) = kid[..i].parse::<PreviewId>()
                && tail_ok(&kid[i + marker.len()..])
            {
                found.push((p, svc.clone()));
            }
        }
    }
    found.sort();
    found.dedup();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(format!(
            "kid `{kid}` could belong to any of {}; verify with a registry, which binds kids explicitly",
            found.iter().map(|(p, s)| format!("{p}/{s}")).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn decode_json_segment(seg: &str) -> Result<Map<String, Value>, String> {
    let bytes = b64_decode(seg)?;
    parse_strict_object(&bytes)
}

fn read_info(header: &Map<String, Value>, claims: &Map<String, Value>, info: &mut TokenInfo) {
    let s = |m: &Map<String, Value>, k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
    let n = |k: &str| claims.get(k).and_then(Value::as_f64);
    info.alg = s(header, "alg");
    info.kid = s(header, "kid");
    info.iss = s(claims, "iss");
    info.preview = s(claims, "preview");
    info.jti = s(claims, "jti");
    info.iat = n("iat");
    info.nbf = n("nbf");
    info.exp = n("exp");
    info.aud = match claims.get("aud") {
        Some(Value::String(a)) => Some(vec![a.clone()]),
        Some(Value::Array(items)) => Some(items.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
        _ => None,
    };
}

/// Reads a NumericDate: a finite JSON number in [0, 9999-12-31].
fn time_claim(claims: &Map<String, Value>, name: &str, required: bool) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None if required => Err(format!("token has no {name}")),
        None => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| format!("{name} is not a finite number"))?;
            if !(0.0..=MAX_NUMERIC_DATE).contains(&v) {
                return Err(format!("{name} is out of range"));
            }
            Ok(Some(v))
        }
        Some(_) => Err(format!("{name} is not a number")),
    }
}
