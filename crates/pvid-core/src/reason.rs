//! The closed list of auth decision results (DESIGN.md, "Auth decision reason codes").
//!
//! Every validation ends in exactly one [`ReasonCode`]; `as_str` gives the stable string that log
//! lines, deny bodies, `pvid token verify --json` and `pvid explain` all share.

use std::fmt;

/// Why a request was accepted or refused. The string forms are a stable interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ReasonCode {
    /// The token is valid and the policy allows the call.
    Ok,
    /// No `Authorization` header.
    MissingToken,
    /// More than one `Authorization` header, or several credentials in one header.
    MultipleTokens,
    /// The credential or token is not well formed (scheme, encoding, JSON, claim types, `crit`).
    Malformed,
    /// The token is larger than the limit (8 KiB by default), refused before decoding.
    TokenTooLarge,
    /// The header `alg` is not the algorithm of any key in the registry, or not the key's.
    AlgNotAllowed,
    /// The `kid` names no key of this preview.
    UnknownKid,
    /// The signature does not verify with the key the `kid` names.
    BadSignature,
    /// `iss` is not a pvid issuer, or names a service this preview does not have.
    IssuerUnknown,
    /// The key that signed belongs to another service than `iss` claims.
    IssuerKeyMismatch,
    /// `aud` holds none of the audiences this service accepts.
    AudienceMismatch,
    /// The token belongs to another preview (`iss`, `preview` claim or key).
    PreviewMismatch,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `iat` is in the future (beyond the leeway): the caller's clock runs ahead.
    IssuedInFuture,
    /// The key was revoked (rotation or teardown).
    KeyRevoked,
    /// The preview has been torn down.
    PreviewTornDown,
    /// The token is valid but the policy does not allow this caller on this route.
    PolicyDenied,
}

impl ReasonCode {
    /// Every code, in the order DESIGN.md lists them.
    pub const ALL: [ReasonCode; 18] = [
        ReasonCode::Ok,
        ReasonCode::MissingToken,
        ReasonCode::MultipleTokens,
        ReasonCode::Malformed,
        ReasonCode::TokenTooLarge,
        ReasonCode::AlgNotAllowed,
        ReasonCode::UnknownKid,
        ReasonCode::BadSignature,
        ReasonCode::IssuerUnknown,
        ReasonCode::IssuerKeyMismatch,
        ReasonCode::AudienceMismatch,
        ReasonCode::PreviewMismatch,
        ReasonCode::Expired,
        ReasonCode::NotYetValid,
        ReasonCode::IssuedInFuture,
        ReasonCode::KeyRevoked,
        ReasonCode::PreviewTornDown,
        ReasonCode::PolicyDenied,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Ok => "ok",
            ReasonCode::MissingToken => "missing_token",
            ReasonCode::MultipleTokens => "multiple_tokens",
            ReasonCode::Malformed => "malformed",
            ReasonCode::TokenTooLarge => "token_too_large",
            ReasonCode::AlgNotAllowed => "alg_not_allowed",
            ReasonCode::UnknownKid => "unknown_kid",
            ReasonCode::BadSignature => "bad_signature",
            ReasonCode::IssuerUnknown => "issuer_unknown",
            ReasonCode::IssuerKeyMismatch => "issuer_key_mismatch",
            ReasonCode::AudienceMismatch => "audience_mismatch",
            ReasonCode::PreviewMismatch => "preview_mismatch",
            ReasonCode::Expired => "expired",
            ReasonCode::NotYetValid => "not_yet_valid",
            ReasonCode::IssuedInFuture => "issued_in_future",
            ReasonCode::KeyRevoked => "key_revoked",
            ReasonCode::PreviewTornDown => "preview_torn_down",
            ReasonCode::PolicyDenied => "policy_denied",
        }
    }

    /// Parses a stable code back (for `pvid explain` and tests).
    pub fn parse(s: &str) -> Option<ReasonCode> {
        ReasonCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status a sidecar answers with: 401 for a bad or missing token, 403 for a valid
    /// token the policy refuses.
    pub fn http_status(self) -> u16 {
        match self {
            ReasonCode::Ok => 200,
            ReasonCode::PolicyDenied => 403,
            _ => 401,
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl serde::Serialize for ReasonCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_string() {
        for code in ReasonCode::ALL {
            assert_eq!(ReasonCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ReasonCode::parse("nope"), None);
    }
}
