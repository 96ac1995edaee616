//! `pvid demo` as a subprocess: every row as expected, and no secret in any log.

use super::support::{json, pvid, stderr};

#[test]
fn demo_exits_zero_with_every_row_as_expected_and_logs_hold_no_secret() {
    let scratch = tempfile::tempdir().unwrap();
    let out = pvid(scratch.path(), &["demo", "--json", "--keep"]);
    let v = json(&out);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", stderr(&out));
    assert_eq!(v["ok"], true);
    let rows = v["rows"].as_array().unwrap();
    assert!(rows.len() >= 12, "{v}");
    assert!(rows.iter().all(|r| r["ok"] == true), "{v}");
    let reasons: Vec<&str> = rows.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    for needed in ["ok", "policy_denied", "missing_token", "preview_mismatch", "audience_mismatch", "expired", "preview_torn_down"] {
        assert!(reasons.contains(&needed), "{needed} missing from {reasons:?}");
    }

    // Every file the demo left (decision logs, sidecar stderr, registry) is free of tokens and
    // private keys. A JWT starts with base64url of `{"`; an EC PKCS#8 key with `MIGHAgEA`.
    let home = std::path::PathBuf::from(v["home"].as_str().unwrap());
    let mut scanned = 0;
    for dir in [home.join("logs"), home.join("previews/pr-482")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!holds_jwt(&text), "a token in {}", path.display());
            assert!(!text.contains("MIGHAgEA") && !text.contains("pkcs8") && !text.contains("PRIVATE KEY"), "key material in {}", path.display());
            scanned += 1;
        }
    }
    assert!(scanned >= 8, "scanned {scanned} files");
    let decisions = std::fs::read_to_string(home.join("logs/payments.decisions.jsonl")).unwrap();
    assert!(decisions.lines().count() >= 6, "{decisions}");
    std::fs::remove_dir_all(&home).unwrap();
}

/// Whether `text` holds something shaped like a compact JWS: `eyJ…` then two more base64url
/// segments joined by dots.
fn holds_jwt(text: &str) -> bool {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    text.match_indices("eyJ").any(|(i, _)| {
        let segs: Vec<&str> = text[i..].split(|c: char| !(b64(c) || c == '.')).next().unwrap_or("").split('.').collect();
        segs.len() >= 3 && segs[..3].iter().all(|s| s.len() >= 8)
    })
}

#[test]
fn the_jwt_detector_finds_tokens() {
    assert!(holds_jwt("x eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl y"));
    assert!(!holds_jwt("{\"kid\":\"api-1-x7q\",\"event\":\"auth.validate\"}"));
}
