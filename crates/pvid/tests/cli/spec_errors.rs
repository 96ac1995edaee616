//! A bad spec gives exit code 2 and a message naming the file, line and field; nothing is created.

use super::support::{pvid, stderr};

fn up_with(spec: &str) -> (i32, String, tempfile::TempDir) {
    let home = tempfile::tempdir().unwrap();
    let file = home.path().join("bad.yaml");
    std::fs::write(&file, spec).unwrap();
    let out = pvid(&home.path().join("h"), &["up", "-f", file.to_str().unwrap()]);
    (out.status.code().unwrap(), stderr(&out), home)
}

#[test]
fn each_bad_spec_names_file_line_and_field_with_exit_code_2() {
    let cases = [
        ("services:\n  api:\n    adress: \"127.0.0.1:1\"\n", ":3: services.api: unknown field `adress`"),
        ("services:\n  api:\n    calls: [paymnts]\n", ":3: services.api.calls: unknown service `paymnts`"),
        ("services:\n  api: {}\n  api: {}\n", ":3: services.api: duplicate service `api`"),
        ("preview: PR_1\nservices:\n  api: {}\n", ":1: preview: invalid preview id `PR_1`"),
        ("preview: pr-1\nservices:\n  Api: {}\n", ":3: services: invalid service name `Api`"),
        ("preview: pr-1\nalgorithm: HS256\nservices:\n  api: {}\n", ":2: algorithm: unsupported algorithm `HS256`"),
        ("preview: pr-1\ntoken_ttl: soon\nservices:\n  api: {}\n", ":2: token_ttl: `soon` is not a duration"),
        ("preview: pr-1\nservices: {}\n", ":2: services: empty"),
        // Found by a fresh-eyes review: a duplicate top-level key was blamed on `preview`.
        ("preview: pr-1\nmode: shared\nmode: shared\nservices:\n  api: {}\n", ":3: mode: duplicate field `mode`"),
        ("services:\n  api:\n    calls: []\n    calls: []\n", ":4: services.api.calls: duplicate field `calls`"),
        ("preview: pr-1\nmode: solo\nservices:\n  api: {}\n", ":2: mode: unknown mode `solo`"),
        ("preview: pr-1\ntoken_ttl: 5m\nrotation_period: 10m\nservices:\n  api: {}\n", ":3: rotation_period: 600s is shorter than twice the overlap"),
        ("preview: pr-1\nmode: shared\nkey_custody: transit\nservices:\n  api: {}\n", ":2: mode: a shared credential is one exportable key"),
    ];
    for (spec, want) in cases {
        let (code, err, _home) = up_with(spec);
        assert_eq!(code, 2, "{spec:?}: {err}");
        assert!(err.contains("bad.yaml") && err.contains(want), "{spec:?}\nwant {want}\ngot  {err}");
    }
}

#[test]
fn a_bad_spec_creates_no_state_and_no_secret() {
    let (code, _err, home) = up_with("preview: pr-1\nservices:\n  api:\n    calls: [nobody]\n");
    assert_eq!(code, 2);
    assert!(!home.path().join("h").join("state.db").exists());
    assert!(!home.path().join("h").join("secrets").exists());
}

#[test]
fn a_spec_without_preview_id_needs_the_flag() {
    let (code, err, _home) = up_with("services:\n  api: {}\n");
    assert_eq!(code, 2);
    assert!(err.contains("--preview"), "{err}");
}
