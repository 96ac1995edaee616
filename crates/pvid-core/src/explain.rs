//! Turns a refusal into its cause and the change that fixes it (`pvid explain`).
//!
//! The input is what a sidecar saw ([`Observation`]: from a token checked again, or from a
//! decision log line) plus, when available, the preview's registry. The output names the cause in
//! the operator's words: an audience for another preview, clock skew, a stale key, a misrouted
//! token, a torn-down preview, or the policy rule that is missing.

use serde::Serialize;

use crate::id::ServiceName;
use crate::reason::ReasonCode;
use crate::registry::Registry;

/// What was seen at the refusing service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    /// The reason the sidecar gave.
    pub reason: Option<ReasonCode>,
    /// The sidecar's detail text, if any.
    pub detail: Option<String>,
    /// `iss` the token claimed.
    pub caller_iss: Option<String>,
    /// The verified caller, if the token verified.
    pub caller: Option<String>,
    /// `aud` values the token carried.
    pub aud: Vec<String>,
    /// The token's kid.
    pub kid: Option<String>,
    /// `iat`, `exp` of the token.
    pub iat: Option<f64>,
    /// Expiry.
    pub exp: Option<f64>,
    /// Method and path of the request, when known.
    pub method: Option<String>,
    /// Path.
    pub path: Option<String>,
    /// When the decision was made (Unix seconds).
    pub at: f64,
}

/// A cause and its fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// The reason code explained.
    pub reason: String,
    /// A stable name for the cause (`audience_for_other_preview`, `clock_skew`, `stale_key`, …).
    pub cause: &'static str,
    /// What is wrong, in words.
    pub summary: String,
    /// What to change.
    pub fix: String,
}

/// Explains a refusal at `service` of the registry's preview.
pub fn explain(reg: Option<&Registry>, service: &ServiceName, o: &Observation) -> Explanation {
    let reason = o.reason.unwrap_or(ReasonCode::Ok);
    let preview = reg.map(|r| r.preview.to_string());
    let here = preview.clone().unwrap_or_else(|| "this preview".into());
    let caller = o
        .caller
        .clone()
        .or_else(|| caller_from_iss(o.caller_iss.as_deref(), preview.as_deref()))
        .unwrap_or_else(|| "the caller".into());
    let want_aud = reg.map_or_else(|| format!("preview-<id>-{service}"), |r| crate::id::service_identity(&r.preview, service));
    let e = |cause, summary: String, fix: String| Explanation { reason: reason.as_str().into(), cause, summary, fix };
    match reason {
        ReasonCode::Ok => e("none", format!("the request to {service} was allowed"), "nothing to fix".into()),
        ReasonCode::AudienceMismatch => {
            let other = o.aud.iter().find_map(|a| {
                let rest = a.strip_prefix("preview-")?;
                let p = preview.as_deref()?;
                (!rest.starts_with(&format!("{p}-")) && rest != p).then(|| other_preview_of(rest))
            });
            let sibling = o.aud.iter().find(|a| a.starts_with(&format!("preview-{here}-")) && **a != want_aud);
            match (other, sibling, o.aud.is_empty()) {
                (_, _, true) => e(
                    "audience_missing",
                    format!("the token from {caller} has no aud; {service} accepts only {want_aud}"),
                    format!("mint tokens for exactly one callee: aud={want_aud} (the egress sidecar does this)"),
                ),
                (Some(p), _, _) => e(
                    "audience_for_other_preview",
                    format!("SERVICE_AUDIENCE of {caller} points at {p}; the preview is {here} (token aud {})", o.aud.join(",")),
                    format!("set SERVICE_AUDIENCE={want_aud} for {caller} (redeploy it with this preview's environment, or call through its egress sidecar)"),
                ),
                (None, Some(s), _) => e(
                    "token_for_other_service",
                    format!("{caller} sent a token minted for {s} to {service}: a token is valid for one callee only"),
                    format!("route the call through {caller}'s egress sidecar as /{service}/…, which mints aud={want_aud}"),
                ),
                (None, None, false) => e(
                    "audience_unknown",
                    format!("the token's aud {} is not {want_aud}", o.aud.join(",")),
                    format!("mint with aud={want_aud}"),
                ),
            }
        }
        ReasonCode::PreviewMismatch => {
            let from = o.caller_iss.as_deref().and_then(|i| i.strip_prefix("preview-")).map(other_preview_of).unwrap_or_else(|| "another preview".into());
            e(
                "token_from_other_preview",
                format!("the token was minted in {from} and replayed into {here}"),
                format!("the caller must run with {here}'s identity: redeploy it with PREVIEW_ID={here} and its own key, or check routing between previews"),
            )
        }
        ReasonCode::IssuedInFuture | ReasonCode::NotYetValid => {
            let skew = o.iat.map(|i| i - o.at).unwrap_or_default();
            e(
                "clock_skew",
                format!("clock skew of {skew:.0} s on {caller}'s host: its token is issued {skew:.0} s after {service}'s clock"),
                format!("sync the clocks (NTP/chrony) of {caller}'s and {service}'s hosts; the leeway is 60 s"),
            )
        }
        ReasonCode::Expired => {
            let ago = o.exp.map(|x| o.at - x).unwrap_or_default();
            e(
                "expired",
                format!("{caller}'s token expired {ago:.0} s before {service} saw it: a token reused past its lifetime, or {caller}'s clock is behind by that much"),
                format!("mint a fresh token per call through the egress sidecar (it refreshes before expiry), or sync {caller}'s clock"),
            )
        }
        ReasonCode::KeyRevoked => {
            let when = o
                .kid
                .as_deref()
                .and_then(|k| reg.and_then(|r| r.revoked.iter().find(|x| x.kid == k)))
                .map(|r| format!(" (revoked at {} for {})", rfc3339(r.revoked_at), r.reason))
                .or_else(|| {
                    let k = o.kid.as_deref()?;
                    let r = reg?.retiring.iter().find(|x| x.kid == k)?;
                    Some(format!(" (rotated out; its overlap ended at {})", rfc3339(r.until)))
                })
                .unwrap_or_default();
            e(
                "stale_key",
                format!("{caller} signed with stale key {}{when}", o.kid.as_deref().unwrap_or("?")),
                format!("restart {caller}'s sidecar or give it its current key (a sidecar that reads the secret store reloads by itself when a rotation switches the key; its log says key.reload_failed when it cannot)"),
            )
        }
        ReasonCode::UnknownKid => e(
            "unknown_key",
            format!("key {} is not in {service}'s registry of {here}", o.kid.as_deref().unwrap_or("(none)")),
            format!("check that {service}'s sidecar loads the current registry (its version is in the log line) and that {caller} belongs to {here}"),
        ),
        ReasonCode::IssuerUnknown => e(
            "misrouted_or_misissued",
            format!("iss {} is not a service of {here}: the token was misissued, or the request misrouted from another environment", o.caller_iss.as_deref().unwrap_or("(none)")),
            format!("the caller must be a service of {here} and sign as preview-{here}-<service>"),
        ),
        ReasonCode::IssuerKeyMismatch => e(
            "key_of_another_service",
            format!("the token claims {} but was signed with key {} of another service", o.caller_iss.as_deref().unwrap_or("?"), o.kid.as_deref().unwrap_or("?")),
            "each service signs with its own key only; check which key file the caller's sidecar mounts".into(),
        ),
        ReasonCode::PreviewTornDown => {
            let when = reg
                .and_then(|r| r.revoked.iter().filter(|k| k.reason == "teardown").map(|k| k.revoked_at).max())
                .map(|t| format!(" at {}", rfc3339(t)))
                .unwrap_or_default();
            e(
                "preview_torn_down",
                format!("preview {here} was torn down{when}; every token of it is refused"),
                format!("provision it again (pvid up) or stop the callers still running against {here}"),
            )
        }
        ReasonCode::PolicyDenied => {
            let method = o.method.clone().unwrap_or_else(|| "GET".into());
            let path = o.path.clone().unwrap_or_else(|| "/".into());
            let existing: Vec<String> = reg
                .map(|r| r.policy.iter().filter(|p| p.callee == *service && p.caller.as_str() == caller).map(ToString::to_string).collect())
                .unwrap_or_default();
            let now = if existing.is_empty() { format!("no rule lets {caller} call {service}") } else { format!("{caller} may call {service} only as: {}", existing.join("; ")) };
            e(
                "policy",
                format!("{now}; the request was {method} {path}"),
                format!("if intended, add to the spec: services.{caller}.calls: [\"{service}: {method} {path}\"] and provision again: pvid down {}, then pvid up (an active preview keeps the spec it was provisioned with)", preview.as_deref().unwrap_or("ID")),
            )
        }
        ReasonCode::MissingToken => e(
            "no_token",
            format!("the request to {service} carried no Authorization header"),
            format!("call {service} through the caller's egress sidecar (http://EGRESS/{service}/…), which adds the token"),
        ),
        ReasonCode::MultipleTokens => e(
            "several_tokens",
            "the request carried more than one credential".into(),
            "send exactly one Authorization: Bearer header".into(),
        ),
        ReasonCode::TokenTooLarge => e("token_too_large", "the token is over 8 KiB".into(), "mint compact tokens (pvid tokens are ~400 bytes)".into()),
        ReasonCode::Malformed => e(
            "malformed",
            format!("the credential is not a well-formed pvid token: {}", o.detail.as_deref().unwrap_or("see the detail in the log")),
            "send `Authorization: Bearer <token>` with a token minted by pvid".into(),
        ),
        ReasonCode::AlgNotAllowed => e(
            "algorithm",
            format!("the token's algorithm is not the one of {here}'s keys ({})", o.detail.as_deref().unwrap_or("")),
            "sign with the service's own key; the key decides the algorithm".into(),
        ),
        ReasonCode::BadSignature => e(
            "bad_signature",
            format!("the signature does not verify with key {}: the token was altered or signed with another key", o.kid.as_deref().unwrap_or("?")),
            "check for proxies rewriting the header, and that the caller signs with its published key".into(),
        ),
    }
}

fn caller_from_iss(iss: Option<&str>, preview: Option<&str>) -> Option<String> {
    let iss = iss?;
    if let Some(svc) = preview.and_then(|p| iss.strip_prefix(&format!("preview-{p}-"))) {
        return Some(svc.to_owned());
    }
    iss.rsplit_once('-').map(|(_, s)| s.to_owned())
}

/// Unix seconds as RFC 3339 UTC (`2026-12-03T12:00:00Z`), for messages.
pub fn rfc3339(secs: i64) -> String {
    // Civil-from-days (H. Hinnant's algorithm), valid for the NumericDate range.
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `pr-481-payments` → `pr-481` (drops the last label: without that preview's registry the split
/// of `<id>-<svc>` is a guess, and service names are usually one label).
fn other_preview_of(rest: &str) -> String {
    rest.rsplit_once('-').map_or(rest, |(p, _)| p).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        s.parse().unwrap()
    }

    #[test]
    fn names_the_other_preview_of_an_audience() {
        let reg: Registry = serde_json::from_value(serde_json::json!({
            "preview": "pr-482", "state": "active", "version": 1, "algorithm": "ES256", "token_ttl_s": 300,
            "services": {"payments": {"issuer": "preview-pr-482-payments", "audience": "preview-pr-482-payments", "kids": []}},
            "policy": [], "jwks": {"keys": []}
        }))
        .unwrap();
        let o = Observation {
            reason: Some(ReasonCode::AudienceMismatch),
            caller_iss: Some("preview-pr-482-api".into()),
            aud: vec!["preview-pr-481-payments".into()],
            ..Observation::default()
        };
        let x = explain(Some(&reg), &svc("payments"), &o);
        assert_eq!(x.cause, "audience_for_other_preview");
        assert_eq!(x.summary, "SERVICE_AUDIENCE of api points at pr-481; the preview is pr-482 (token aud preview-pr-481-payments)");
        assert!(x.fix.starts_with("set SERVICE_AUDIENCE=preview-pr-482-payments for api"), "{}", x.fix);
    }

    #[test]
    fn formats_unix_seconds_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_299_200), "2026-12-03T12:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn clock_skew_is_measured_from_iat() {
        let o = Observation { reason: Some(ReasonCode::IssuedInFuture), caller_iss: Some("preview-pr-1-api".into()), iat: Some(1120.0), at: 1000.0, ..Observation::default() };
        let x = explain(None, &svc("orders"), &o);
        assert_eq!(x.cause, "clock_skew");
        assert!(x.summary.starts_with("clock skew of 120 s on api's host"), "{}", x.summary);
    }
}
