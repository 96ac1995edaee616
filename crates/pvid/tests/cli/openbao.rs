//! `pvid` with `--secrets openbao` against a real OpenBao: both key custody modes, the demo, a
//! crash between the vault write and the registry write, OpenBao stopped mid-run, and a token
//! without delete rights. pvid always runs with a token bound to the shipped policy
//! (deploy/openbao/pvid-policy.hcl); the root token only sets up mounts and inspects.

use super::support::{example_spec, json, pvid_with, stderr, stdout};
use pvid_bao::testkit::{PrivateServer, Sandbox};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CUSTODY: [&str; 2] = ["sidecar", "transit"];

fn run(home: &Path, env: &[(String, String)], args: &[&str]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pvid_with(home, args, &env, None)
}

fn with(env: &[(String, String)], extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e = env.to_vec();
    e.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    e
}

fn up(home: &Path, env: &[(String, String)], custody: &str) -> Value {
    let out = run(home, env, &["up", "-f", example_spec().to_str().unwrap(), "--key-custody", custody, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{custody}: {}", stderr(&out));
    json(&out)
}

fn show(home: &Path, env: &[(String, String)], id: &str) -> Value {
    let out = run(home, env, &["show", id, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)
}

/// `service → kid` of the active keys.
fn active_kids(show: &Value) -> Vec<(String, String)> {
    kids_in_state(show, "active")
}

fn kids_in_state(show: &Value, state: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in show["services"].as_array().unwrap() {
        for k in s["keys"].as_array().unwrap() {
            if k["state"] == state {
                out.push((s["service"].as_str().unwrap().to_owned(), k["kid"].as_str().unwrap().to_owned()));
            }
        }
    }
    out.sort();
    out
}

fn audit(home: &Path, env: &[(String, String)]) -> (i32, Value) {
    let out = run(home, env, &["audit", "orphans", "--json"]);
    (out.status.code().unwrap_or(-1), json(&out))
}

const SERVICES: [&str; 4] = ["api", "payments", "webhooks", "worker"];

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn provision_and_teardown_leave_neither_kv_path_nor_transit_key_in_both_custody_modes() {
    for custody in CUSTODY {
        let sb = Sandbox::new();
        let env = sb.env(&sb.token);
        let home = tempfile::tempdir().unwrap();
        let v = up(home.path(), &env, custody);
        assert_eq!((v["key_custody"].as_str(), v["secrets"].as_str()), (Some(custody), Some("openbao")));
        let kids = active_kids(&show(home.path(), &env, "pr-482"));
        assert_eq!(kids.len(), 4);
        if custody == "sidecar" {
            let paths: Vec<String> = SERVICES.iter().map(|s| format!("preview/pr-482/{s}/private-key")).collect();
            assert_eq!(sb.kv_paths(), paths);
            assert_eq!(sb.transit_keys(), Vec::<String>::new());
            let meta = sb.admin.kv_metadata(&sb.kv_mount, "preview/pr-482/api/private-key").unwrap();
            let cm = &meta["custom_metadata"];
            assert_eq!((cm["preview"].as_str(), cm["service"].as_str()), (Some("pr-482"), Some("api")));
            assert_eq!(cm["kid"].as_str(), Some(kids[0].1.as_str()));
            assert!(cm["created_at"].as_str().unwrap().parse::<i64>().unwrap() > 1_700_000_000);
        } else {
            assert_eq!(sb.kv_paths(), Vec::<String>::new(), "no private key leaves the vault under transit custody");
            let names: Vec<String> = SERVICES.iter().map(|s| format!("preview-pr-482-{s}")).collect();
            assert_eq!(sb.transit_keys(), names);
            let key = sb.admin.transit_key(&sb.transit_mount, "preview-pr-482-api").unwrap();
            assert_eq!((key["type"].as_str(), key["exportable"].as_bool()), (Some("ecdsa-p256"), Some(false)));
            // The registry publishes exactly the public key Transit holds.
            let reg: Value = serde_json::from_str(&stdout(&run(home.path(), &env, &["registry", "pr-482"]))).unwrap();
            let jwk = reg["jwks"]["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kids[0].1.as_str()).unwrap().clone();
            let pem = key["keys"]["1"]["public_key"].as_str().unwrap();
            let from_transit = pvid_bao::transit_public_jwk("ecdsa-p256", pem, &kids[0].1).unwrap();
            assert_eq!(serde_json::to_value(from_transit).unwrap(), jwk);
        }
        let (code, a) = audit(home.path(), &env);
        assert_eq!((code, a["found"].clone()), (0, serde_json::json!([])), "{custody}");

        let out = run(home.path(), &env, &["down", "pr-482", "--json"]);
        assert_eq!(out.status.code(), Some(0), "{custody}: {}", stderr(&out));
        assert_eq!(json(&out)["outcome"], "torn_down");
        assert_eq!(sb.kv_paths(), Vec::<String>::new(), "{custody}: a KV path is left");
        assert_eq!(sb.transit_keys(), Vec::<String>::new(), "{custody}: a Transit key is left");
        for s in SERVICES {
            assert_eq!(sb.admin.kv_metadata(&sb.kv_mount, &format!("preview/pr-482/{s}/private-key")), None, "{custody}");
        }
        let (code, _) = audit(home.path(), &env);
        assert_eq!(code, 0, "{custody}");
        let trail = stdout(&run(home.path(), &env, &["audit", "trail", "pr-482", "--json"]));
        let deleted = if custody == "sidecar" { "\"secret.deleted\"" } else { "\"transit_key.deleted\"" };
        assert_eq!(trail.lines().filter(|l| l.contains(deleted)).count(), 4, "{custody}: {trail}");
        assert_eq!(run(home.path(), &env, &["audit", "verify"]).status.code(), Some(0));
    }
}

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn transit_custody_signs_in_the_vault_and_token_mint_caches_until_shortly_before_expiry() {
    let sb = Sandbox::new();
    let env = sb.env(&sb.token);
    let home = tempfile::tempdir().unwrap();
    up(home.path(), &env, "transit");
    let mint = |extra: &[&str]| {
        let mut args = vec!["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "payments"];
        args.extend_from_slice(extra);
        let out = run(home.path(), &env, &args);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let first = mint(&[]);
    assert_eq!(mint(&[]), first, "the cached token is reused");
    let fresh = mint(&["--no-cache"]);
    assert_ne!(fresh, first, "--no-cache signs a new token");
    let registry = home.path().join("previews/pr-482/registry.json");
    for token in [&first, &fresh] {
        let out = run(home.path(), &env, &["token", "verify", token, "--registry", registry.to_str().unwrap(), "--audience", "preview-pr-482-payments", "--json"]);
        assert_eq!((out.status.code(), json(&out)["caller"].clone()), (Some(0), "api".into()), "{}", stdout(&out));
    }
    // A token lasting less than the refresh margin is never served from the cache.
    let short = mint(&["--ttl", "20s"]);
    assert_ne!(mint(&["--ttl", "20s"]), short);
    // The cache file is private and holds no private key.
    let cache = home.path().join("token-cache/pr-482/api--payments--300.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777, 0o600);
    // A revoked token (wrong token for the vault) fails naming OpenBao and the operation.
    let bad = with(&env, &[("BAO_TOKEN", "s.not-a-token")]);
    let out = run(home.path(), &bad, &["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "worker", "--no-cache"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains(&format!("OpenBao at {}: read transit key preview-pr-482-api failed: token rejected", sb.admin.addr)),
        "{}",
        stderr(&out)
    );
    assert_eq!(run(home.path(), &env, &["down", "pr-482"]).status.code(), Some(0));
    assert!(!home.path().join("token-cache/pr-482").exists(), "teardown forgets cached tokens");
}

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn demo_passes_with_openbao_in_both_custody_modes() {
    for custody in CUSTODY {
        let sb = Sandbox::new();
        let env = sb.env(&sb.token);
        let scratch = tempfile::tempdir().unwrap();
        let out = run(scratch.path(), &env, &["demo", "--secrets", "openbao", "--key-custody", custody, "--json", "--keep"]);
        let v = json(&out);
        assert_eq!(out.status.code(), Some(0), "{custody}: {v}\n{}", stderr(&out));
        assert_eq!((v["ok"].clone(), v["key_custody"].clone(), v["secrets"].clone()), (true.into(), custody.into(), "openbao".into()));
        assert!(v["rows"].as_array().unwrap().iter().all(|r| r["ok"] == true), "{v}");
        assert_eq!(sb.kv_paths(), Vec::<String>::new(), "{custody}");
        assert_eq!(sb.transit_keys(), Vec::<String>::new(), "{custody}");
        // No private key on disk at all: neither sealed files nor a master key.
        let home = PathBuf::from(v["home"].as_str().unwrap());
        assert!(!home.join("secrets").exists() && !home.join("master.key").exists(), "{custody}");
        std::fs::remove_dir_all(&home).unwrap();
    }
}

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn a_provision_killed_between_vault_write_and_registry_write_is_audited_and_converges() {
    for custody in CUSTODY {
        let sb = Sandbox::new();
        let env = sb.env(&sb.token);
        let crash = with(&env, &[("PVID_FAILPOINT", "after_secret_write")]);
        let spec = example_spec();
        let args = ["up", "-f", spec.to_str().unwrap(), "--key-custody", custody];

        // (a) the re-run finishes it.
        let home = tempfile::tempdir().unwrap();
        let out = run(home.path(), &crash, &args);
        assert_eq!(out.status.code(), Some(86), "{custody}: {}", stderr(&out));
        let (code, a) = audit(home.path(), &env);
        assert_eq!(code, 1, "{custody}: {a}");
        let found = a["found"].as_array().unwrap();
        let expected = if custody == "sidecar" {
            ("secret", "path", "preview/pr-482/api/private-key")
        } else {
            ("transit_key", "transit_key", "preview-pr-482-api")
        };
        assert!(found.iter().any(|o| o["kind"] == expected.0 && o[expected.1] == expected.2), "{custody}: {a}");
        let out = run(home.path(), &env, &["up", "-f", spec.to_str().unwrap(), "--key-custody", custody, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{custody}: {}", stderr(&out));
        assert_eq!(json(&out)["outcome"], "resumed");
        let show1 = show(home.path(), &env, "pr-482");
        for s in show1["services"].as_array().unwrap() {
            assert_eq!(s["keys"].as_array().unwrap().len(), 1, "{custody}: {s}: finished, not duplicated");
        }
        assert_eq!(audit(home.path(), &env).0, 0, "{custody}");
        assert_eq!(run(home.path(), &env, &["down", "pr-482"]).status.code(), Some(0));

        // (b) --sweep removes what the crash left.
        let home = tempfile::tempdir().unwrap();
        assert_eq!(run(home.path(), &crash, &args).status.code(), Some(86));
        let out = run(home.path(), &env, &["audit", "orphans", "--sweep", "--json"]);
        let v = json(&out);
        assert_eq!((out.status.code(), v["remaining"].clone()), (Some(0), 0.into()), "{custody}: {v}");
        assert_eq!(audit(home.path(), &env).0, 0, "{custody}");
        assert_eq!(sb.kv_paths(), Vec::<String>::new(), "{custody}");
        assert_eq!(sb.transit_keys(), Vec::<String>::new(), "{custody}");
        let trail = stdout(&run(home.path(), &env, &["audit", "trail", "pr-482", "--json"]));
        assert!(trail.lines().any(|l| l.contains("\"orphan.swept\"") && l.contains(expected.2)), "{custody}: {trail}");
    }
}

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn a_token_without_delete_rights_leaves_the_preview_tearing_down_until_a_rerun_succeeds() {
    for custody in CUSTODY {
        let sb = Sandbox::new();
        let env = sb.env(&sb.token);
        let weak = sb.env(&sb.token_without_delete());
        let home = tempfile::tempdir().unwrap();
        up(home.path(), &env, custody);
        let out = run(home.path(), &weak, &["down", "pr-482"]);
        assert_eq!(out.status.code(), Some(3), "{custody}: {}", stderr(&out));
        let err = stderr(&out);
        let (op, path) = if custody == "sidecar" {
            ("destroy secret preview/pr-482/api/private-key (all versions and metadata)", format!("{}/metadata/preview/pr-482/api/private-key", sb.kv_mount))
        } else {
            ("delete transit key preview-pr-482-api", format!("{}/keys/preview-pr-482-api", sb.transit_mount))
        };
        assert!(
            err.contains(&format!("OpenBao at {}: {op} failed: permission denied on {path}", sb.admin.addr)),
            "{custody}: {err}"
        );
        assert_eq!(show(home.path(), &env, "pr-482")["state"], "tearing_down", "{custody}");
        let reg: Value = serde_json::from_slice(&std::fs::read(home.path().join("previews/pr-482/registry.json")).unwrap()).unwrap();
        assert_eq!(reg["state"], "tearing_down", "{custody}: sidecars already refuse");
        assert_eq!(run(home.path(), &weak, &["down", "pr-482"]).status.code(), Some(3), "{custody}: still refused");
        let out = run(home.path(), &env, &["down", "pr-482", "--json"]);
        assert_eq!((out.status.code(), json(&out)["outcome"].clone()), (Some(0), "torn_down".into()), "{custody}: {}", stderr(&out));
        assert_eq!(sb.kv_paths(), Vec::<String>::new(), "{custody}");
        assert_eq!(sb.transit_keys(), Vec::<String>::new(), "{custody}");
        assert_eq!(audit(home.path(), &env).0, 0, "{custody}");
    }
}

/// A spec with `n` services, none calling another.
pub fn spec_with(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::from("preview: pr-900\nservices:\n");
    for i in 0..n {
        text.push_str(&format!("  svc{i}: {{ address: \"127.0.0.1:{}\" }}\n", 7100 + i));
    }
    let file = dir.join("ten.yaml");
    std::fs::write(&file, text).unwrap();
    file
}

#[test]
#[ignore = "needs openbao: PVID_TEST_BAO_BIN"]
fn openbao_stopped_mid_run_gives_a_clear_error_loses_nothing_and_a_rerun_after_restart_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = PrivateServer::start(dir.path().join("bao"));
    for custody in CUSTODY {
        let sb = Sandbox::on(server.admin());
        let env = sb.env(&sb.token);
        let home = tempfile::tempdir().unwrap();
        let spec = spec_with(home.path(), 10);
        let pause = home.path().join("paused");
        let paused_env = with(&env, &[("PVID_FAILPOINT", &format!("after_secret_write:pause={}", pause.display()))]);

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
        cmd.arg("--home").arg(home.path()).args(["up", "-f", spec.to_str().unwrap(), "--key-custody", custody]);
        cmd.env_remove("PVID_FAILPOINT").envs(paused_env.iter().map(|(k, v)| (k, v)));
        let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // The first service's secret (or Transit key) is written: stop OpenBao right there.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !pause.exists() {
            assert!(Instant::now() < deadline, "{custody}: pvid up never reached the failpoint");
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill();
        std::fs::remove_file(&pause).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{custody}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("OpenBao at {}: ", server.addr)) && err.contains("failed: server unreachable"), "{custody}: {err}");
        let s = show(home.path(), &env, "pr-900");
        assert_eq!(s["state"], "provisioning", "{custody}: never published half-made");
        let before = active_kids(&s);
        // The key rows of every service are written (pending) before the first secret; none
        // is active before every secret is stored.
        let pending = kids_in_state(&s, "pending");
        if custody == "sidecar" {
            assert_eq!((before.len(), pending.len()), (0, 10), "{custody}: all rows pending, none active before the stop: {s}");
        } else {
            // The Transit key exists but its public half was never read: no key row yet.
            assert_eq!(before.len(), 0, "{custody}: {s}");
        }
        assert!(!home.path().join("previews/pr-900/registry.json").exists(), "{custody}: no registry published");

        // Restarted, the server is sealed: a clear error again, nothing changes.
        server.restart();
        let out = run(home.path(), &env, &["up", "-f", spec.to_str().unwrap(), "--key-custody", custody]);
        assert_eq!(out.status.code(), Some(3), "{custody}");
        assert!(stderr(&out).contains("failed: server is sealed; unseal it (bao operator unseal) and re-run"), "{custody}: {}", stderr(&out));
        server.unseal();

        let out = run(home.path(), &env, &["up", "-f", spec.to_str().unwrap(), "--key-custody", custody, "--json"]);
        assert_eq!(out.status.code(), Some(0), "{custody}: {}", stderr(&out));
        assert_eq!(json(&out)["outcome"], "resumed");
        let after = active_kids(&show(home.path(), &env, "pr-900"));
        assert_eq!(after.len(), 10, "{custody}");
        if custody == "sidecar" {
            let first = pending.iter().find(|(svc, _)| svc == "svc0").expect("svc0's pending key");
            assert!(after.contains(first), "{custody}: the key whose secret was written before the stop was activated and kept");
        } else {
            let trail = stdout(&run(home.path(), &env, &["audit", "trail", "pr-900", "--json"]));
            let adopted: Vec<&str> = trail.lines().filter(|l| l.contains("\"key.issued\"") && l.contains("\"adopted\":true")).collect();
            assert_eq!(adopted.len(), 1, "{custody}: the Transit key made before the stop was adopted, not remade: {trail}");
            assert!(adopted[0].contains("preview-pr-900-svc0"), "{custody}: {}", adopted[0]);
        }
        assert_eq!(audit(home.path(), &env).0, 0, "{custody}");
        assert_eq!(run(home.path(), &env, &["down", "pr-900"]).status.code(), Some(0), "{custody}");
        assert_eq!(sb.kv_paths(), Vec::<String>::new(), "{custody}");
        assert_eq!(sb.transit_keys(), Vec::<String>::new(), "{custody}");
    }
}

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn rotation_and_the_shared_credential_live_in_kv_and_leave_nothing_behind() {
    let sb = Sandbox::new();
    let env = sb.env(&sb.token);
    let home = tempfile::tempdir().unwrap();
    up(home.path(), &env, "sidecar");
    let before = active_kids(&show(home.path(), &env, "pr-482"));
    // A rotation killed once the new keys are in KV at next-private-key, unpublished...
    let killed = run(home.path(), &with(&env, &[("PVID_FAILPOINT", "after_next_secret_write")]), &["rotate", "pr-482", "--publish-delay", "0s"]);
    assert_eq!(killed.status.code(), Some(86), "{}", stderr(&killed));
    assert!(sb.kv_paths().iter().any(|p| p.ends_with("/next-private-key")), "{:?}", sb.kv_paths());
    // ...is finished by a re-run: new keys sign, the old ones retire, no next key is left.
    let out = run(home.path(), &env, &["rotate", "pr-482", "--publish-delay", "0s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = show(home.path(), &env, "pr-482");
    assert_eq!(kids_in_state(&shown, "retiring"), before);
    let after = active_kids(&shown);
    assert!(after.iter().zip(&before).all(|(a, b)| a.0 == b.0 && a.1 != b.1), "{after:?} vs {before:?}");
    let paths: Vec<String> = SERVICES.iter().map(|s| format!("preview/pr-482/{s}/private-key")).collect();
    assert_eq!(sb.kv_paths(), paths);
    let meta = sb.admin.kv_metadata(&sb.kv_mount, "preview/pr-482/api/private-key").unwrap();
    assert_eq!(meta["custom_metadata"]["kid"].as_str(), after.iter().find(|(s, _)| s == "api").map(|(_, k)| k.as_str()));
    assert_eq!(audit(home.path(), &env).0, 0);
    assert_eq!(run(home.path(), &env, &["down", "pr-482"]).status.code(), Some(0));
    assert_eq!(sb.kv_paths(), Vec::<String>::new());

    // mode: shared keeps one key at shared/private-key (the shipped policy allows exactly that
    // path), outside every preview: teardown leaves it, the orphan sweep removes it.
    let spec = home.path().join("shared.yaml");
    std::fs::write(&spec, "preview: pr-9\nmode: shared\nservices:\n  api: { calls: [worker] }\n  worker: {}\n").unwrap();
    let out = run(home.path(), &env, &["up", "-f", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING: mode: shared"));
    assert!(sb.admin.kv_metadata(&sb.kv_mount, "shared/private-key").is_some());
    assert_eq!(run(home.path(), &env, &["down", "pr-9"]).status.code(), Some(0));
    assert!(sb.admin.kv_metadata(&sb.kv_mount, "shared/private-key").is_some());
    let (code, found) = audit(home.path(), &env);
    assert_eq!(code, 1, "{found}");
    assert_eq!(found["found"][0]["path"], "shared/private-key", "{found}");
    assert_eq!(run(home.path(), &env, &["audit", "orphans", "--sweep"]).status.code(), Some(0));
    assert!(sb.admin.kv_metadata(&sb.kv_mount, "shared/private-key").is_none());
}

#[test]
#[ignore = "needs openbao: BAO_ADDR"]
fn transit_keys_rotate_by_version_and_a_rotation_killed_after_the_vault_write_adopts_it() {
    let sb = Sandbox::new();
    let env = sb.env(&sb.token);
    let home = tempfile::tempdir().unwrap();
    up(home.path(), &env, "transit");
    let registry = home.path().join("previews/pr-482/registry.json");
    let mint = || {
        let out = run(home.path(), &env, &["token", "mint", "--preview", "pr-482", "--from", "api", "--to", "payments", "--no-cache"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    };
    let verify = |token: &str| {
        let out = run(home.path(), &env, &["token", "verify", token, "--registry", registry.to_str().unwrap(), "--audience", "preview-pr-482-payments", "--json"]);
        json(&out)
    };
    let old_token = mint();
    let before = active_kids(&show(home.path(), &env, "pr-482"));
    let versions = |name: &str| sb.admin.transit_key(&sb.transit_mount, name).unwrap()["keys"].as_object().unwrap().len();
    assert_eq!(versions("preview-pr-482-api"), 1);

    // Killed right after the vault made the new version: the re-run adopts it, not a third one.
    let killed = run(home.path(), &with(&env, &[("PVID_FAILPOINT", "after_next_secret_write")]), &["rotate", "pr-482", "--service", "api", "--publish-delay", "0s"]);
    assert_eq!(killed.status.code(), Some(86), "{}", stderr(&killed));
    assert_eq!(versions("preview-pr-482-api"), 2);
    let out = run(home.path(), &env, &["rotate", "pr-482", "--service", "api", "--publish-delay", "0s", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(versions("preview-pr-482-api"), 2, "the re-run adopted the version the killed run made");
    let rotated = json(&out);
    let new_kid = rotated["services"][0]["new_kid"].as_str().unwrap().to_owned();
    let shown = show(home.path(), &env, "pr-482");
    assert_eq!(kids_in_state(&shown, "retiring"), before.iter().filter(|(s, _)| s == "api").cloned().collect::<Vec<_>>());

    // Tokens are now signed by the new version; the old key's token works through the overlap.
    let new_token = mint();
    assert_eq!(verify(&new_token)["kid"], new_kid.as_str(), "{}", verify(&new_token));
    assert_eq!(verify(&old_token)["result"], "ok", "{}", verify(&old_token));
    let (code, found) = audit(home.path(), &env);
    assert_eq!(code, 0, "{found}");
    // An emergency rotation refuses the old key at once.
    let out = run(home.path(), &env, &["rotate", "pr-482", "--service", "api", "--emergency"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(versions("preview-pr-482-api"), 3);
    assert_eq!(verify(&new_token)["reason"], "key_revoked");
    assert_eq!(verify(&mint())["result"], "ok");
    assert_eq!(run(home.path(), &env, &["down", "pr-482"]).status.code(), Some(0));
    assert_eq!(sb.transit_keys(), Vec::<String>::new());
}
