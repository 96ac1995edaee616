//! Header handling shared by inbound and egress: request ids, hop-by-hop headers, and the
//! identity headers a caller must never be able to set (linkerd's `set_identity_header`: always
//! strip, then write).

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use pvid_core::key::random_bytes;

/// `x-request-id`.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `x-pvid-caller`: the verified calling service.
pub(crate) const X_PVID_CALLER: HeaderName = HeaderName::from_static("x-pvid-caller");
/// `x-pvid-preview`: the preview of the verified call.
pub(crate) const X_PVID_PREVIEW: HeaderName = HeaderName::from_static("x-pvid-preview");
/// Prefix of every header the sidecar owns.
const PVID_PREFIX: &str = "x-pvid-";
/// Longest request id kept from a caller.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// `proxy-*` credentials and `keep-alive`/`proxy-connection` that old clients still send.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// A caller's request id is kept when it is 1..=128 visible ASCII characters.
pub(crate) fn is_sane_request_id(v: &[u8]) -> bool {
    // Letters, digits and `-._:/+=` cover UUIDs, ULIDs, hex, base64 and trace ids; quotes,
    // angle brackets and the like would travel into upstream logs and HTML unescaped.
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_CHARS
        && v.iter().all(|c| c.is_ascii_alphanumeric() || b"-._:/+=".contains(c))
}

/// A fresh request id: 16 random bytes in hex.
pub(crate) fn new_request_id() -> String {
    random_bytes(16).iter().map(|b| format!("{b:02x}")).collect()
}

/// The request id of a request: the caller's single sane `x-request-id`, or a new one.
pub(crate) fn request_id(headers: &HeaderMap) -> String {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    match (values.next(), values.next()) {
        (Some(v), None) if is_sane_request_id(v.as_bytes()) => {
            // Sane means visible ASCII, which is valid UTF-8.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => new_request_id(),
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Whether a header name, with `_` read as `-` (as CGI/WSGI-style apps do), is one the sidecar
/// owns: `x-pvid-*` or `x-request-id`.
fn is_owned_name(name: &str) -> bool {
    let folded = name.replace('_', "-");
    folded.starts_with(PVID_PREFIX) || folded == X_REQUEST_ID.as_str()
}

/// Removes every credential and every header the sidecar owns, in any spelling, so that what the
/// sidecar writes afterwards is the only copy the app sees.
pub(crate) fn strip_credentials_and_owned(headers: &mut HeaderMap) {
    headers.remove(header::AUTHORIZATION);
    let owned: Vec<HeaderName> = headers.keys().filter(|n| is_owned_name(n.as_str())).cloned().collect();
    for name in owned {
        headers.remove(name);
    }
}

/// Sets a header to a value the sidecar produced. Values come from parsed names (DNS labels,
/// sane request ids, tokens in base64url), so a refusal here is a bug; the header is then left out.
pub(crate) fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        assert!(is_sane_request_id(b"abc-123"));
        assert!(is_sane_request_id("x".repeat(128).as_bytes()));
        assert!(!is_sane_request_id("x".repeat(129).as_bytes()));
        assert!(!is_sane_request_id(b""));
        assert!(!is_sane_request_id(b"a b"));
        assert!(!is_sane_request_id(b"a\tb"));
        assert!(!is_sane_request_id("é".as_bytes()));
        assert!(!is_sane_request_id(b"a\"b"));
        assert!(!is_sane_request_id(b"<script>"));
        assert!(is_sane_request_id(b"0f9c:span/1+x=="));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(is_sane_request_id(id.as_bytes()));
    }

    #[test]
    fn two_request_ids_are_replaced_by_a_new_one() {
        let mut h = HeaderMap::new();
        h.append(X_REQUEST_ID, HeaderValue::from_static("a"));
        h.append(X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = request_id(&h);
        assert_ne!(id, "a");
        assert_ne!(id, "b");
    }

    #[test]
    fn owned_headers_and_credentials_are_stripped_in_any_spelling() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer x"),
            ("x-pvid-caller", "api"),
            ("x_pvid_caller", "api"),
            ("x-pvid-anything", "1"),
            ("x_request_id", "r"),
            ("x-request-id", "r"),
            ("accept", "*/*"),
        ] {
            h.append(HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_static(v));
        }
        strip_credentials_and_owned(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::PROXY_AUTHORIZATION, HeaderValue::from_static("Basic x"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }
}
