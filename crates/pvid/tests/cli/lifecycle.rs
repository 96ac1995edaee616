//! `pvid up`, `down`, `ls`, `show`, `audit` as a user runs them, crashes included.

use super::support::{example_spec, json, pvid, pvid_with, stderr, stdout};
use std::path::Path;

fn up(home: &Path) -> serde_json::Value {
    let out = pvid(home, &["up", "-f", example_spec().to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    json(&out)
}

fn kids(show: &serde_json::Value) -> Vec<String> {
    show["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["keys"].as_array().unwrap().iter().map(|k| format!("{}:{}", k["kid"], k["state"])))
        .collect()
}

#[test]
fn up_is_idempotent_and_show_lists_identities() {
    let home = tempfile::tempdir().unwrap();
    assert_eq!(up(home.path())["outcome"], "created");
    let show1 = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
    assert_eq!(up(home.path())["outcome"], "already_active");
    let show2 = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
    assert_eq!(kids(&show1), kids(&show2), "a second up must not issue keys");
    assert_eq!(show1["state"], "active");
    let payments = show1["services"].as_array().unwrap().iter().find(|s| s["service"] == "payments").unwrap();
    assert_eq!(payments["issuer"], "preview-pr-482-payments");
    assert_eq!(payments["audience"], "preview-pr-482-payments");
    let ls = json(&pvid(home.path(), &["ls", "--json"]));
    assert_eq!(ls[0]["preview"], "pr-482");
    assert_eq!(ls[0]["services"], 4);
    // jwks and registry print public material only.
    let jwks = stdout(&pvid(home.path(), &["jwks", "pr-482"]));
    assert!(!jwks.contains("\"d\""), "a private member in the JWKS");
    let reg: serde_json::Value = serde_json::from_str(&stdout(&pvid(home.path(), &["registry", "pr-482"]))).unwrap();
    assert_eq!(reg["jwks"]["keys"].as_array().unwrap().len(), 4);
}

#[test]
fn down_is_idempotent_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let out = pvid(home.path(), &["down", "pr-482", "--json"]);
    assert_eq!((out.status.code(), json(&out)["outcome"].clone()), (Some(0), "torn_down".into()));
    let out = pvid(home.path(), &["down", "pr-482", "--json"]);
    assert_eq!((out.status.code(), json(&out)["outcome"].clone()), (Some(0), "already_torn_down".into()));
    let audit = pvid(home.path(), &["audit", "orphans", "--json"]);
    assert_eq!(audit.status.code(), Some(0), "{}", stdout(&audit));
    assert_eq!(json(&audit)["found"], serde_json::json!([]));
    let verify = pvid(home.path(), &["audit", "verify", "--json"]);
    assert_eq!((verify.status.code(), json(&verify)["result"].clone()), (Some(0), "ok".into()));
}

#[test]
fn commands_on_a_home_without_state_fail_and_create_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let typo = scratch.path().join("typo");
    for args in [&["ls"][..], &["audit", "orphans"], &["show", "pr-1"], &["down", "pr-1"], &["audit", "verify"]] {
        let out = pvid(&typo, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains("no pvid state in"), "{args:?}: {}", stderr(&out));
    }
    assert!(!typo.exists(), "a read-only command created the home");
}

#[test]
fn concurrent_ups_and_downs_of_one_preview_end_consistent() {
    let home = tempfile::tempdir().unwrap();
    let spec = example_spec();
    let spawn = |args: Vec<String>| {
        let home = home.path().to_path_buf();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pvid(&home, &args).status.code()
        })
    };
    let up_args = vec!["up".to_string(), "-f".into(), spec.display().to_string()];
    let ups: Vec<_> = (0..4).map(|_| spawn(up_args.clone())).collect();
    let codes: Vec<_> = ups.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes, [Some(0); 4]);
    let show = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
    for s in show["services"].as_array().unwrap() {
        assert_eq!(s["keys"].as_array().unwrap().len(), 1, "one key per service: {s}");
    }
    assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0));
    let downs: Vec<_> = (0..4).map(|_| spawn(vec!["down".into(), "pr-482".into()])).collect();
    let codes: Vec<_> = downs.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(codes, [Some(0); 4]);
    let trail = stdout(&pvid(home.path(), &["audit", "trail", "pr-482", "--json"]));
    assert_eq!(trail.lines().filter(|l| l.contains("\"preview.torn_down\"")).count(), 1, "{trail}");
    assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0));
}

#[test]
fn down_of_an_unknown_preview_is_an_input_error() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let out = pvid(home.path(), &["down", "pr-404"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("pr-404 does not exist"), "{}", stderr(&out));
}

#[test]
fn a_teardown_interrupted_at_each_step_is_completed_by_a_rerun() {
    for point in ["after_revoke", "after_secret_delete"] {
        let home = tempfile::tempdir().unwrap();
        up(home.path());
        let crashed = pvid_with(home.path(), &["down", "pr-482"], &[("PVID_FAILPOINT", point)], None);
        assert_eq!(crashed.status.code(), Some(86), "{point}: {}", stderr(&crashed));
        let show = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
        assert_eq!(show["state"], "tearing_down", "{point}");
        // The registry already refuses: sidecars see tearing_down at once.
        let reg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(home.path().join("previews/pr-482/registry.json")).unwrap()).unwrap();
        assert_eq!(reg["state"], "tearing_down", "{point}");
        let audit = pvid(home.path(), &["audit", "orphans", "--json"]);
        if point == "after_revoke" {
            assert_eq!(audit.status.code(), Some(1), "{point}: secrets are still there");
        }
        let rerun = pvid(home.path(), &["down", "pr-482", "--json"]);
        assert_eq!(rerun.status.code(), Some(0), "{point}: {}", stderr(&rerun));
        assert_eq!(json(&rerun)["outcome"], "torn_down");
        assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0), "{point}");
        assert_eq!(pvid(home.path(), &["audit", "verify"]).status.code(), Some(0), "{point}");
    }
}

#[test]
fn a_provision_killed_after_the_secret_write_is_found_by_the_audit_and_finished_by_a_rerun() {
    let home = tempfile::tempdir().unwrap();
    let spec = example_spec();
    let crashed = pvid_with(home.path(), &["up", "-f", spec.to_str().unwrap()], &[("PVID_FAILPOINT", "after_secret_write")], None);
    assert_eq!(crashed.status.code(), Some(86), "{}", stderr(&crashed));
    let audit = pvid(home.path(), &["audit", "orphans", "--json"]);
    assert_eq!(audit.status.code(), Some(1), "the half-made credential must be reported");
    let found = json(&audit)["found"].as_array().unwrap().clone();
    assert!(found.iter().any(|o| o["kind"] == "secret" && o["path"] == "preview/pr-482/api/private-key"), "{found:?}");
    let rerun = pvid(home.path(), &["up", "-f", spec.to_str().unwrap(), "--json"]);
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    assert_eq!(json(&rerun)["outcome"], "resumed");
    let show = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
    for s in show["services"].as_array().unwrap() {
        let keys = s["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{s}: the crashed key is finished, not duplicated");
        assert_eq!(keys[0]["state"], "active");
    }
    assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0));
}

#[test]
fn sweep_removes_what_a_crashed_provision_left() {
    let home = tempfile::tempdir().unwrap();
    let spec = example_spec();
    let crashed = pvid_with(home.path(), &["up", "-f", spec.to_str().unwrap()], &[("PVID_FAILPOINT", "after_key_activate")], None);
    assert_eq!(crashed.status.code(), Some(86));
    let sweep = pvid(home.path(), &["audit", "orphans", "--sweep", "--json"]);
    assert_eq!(sweep.status.code(), Some(0), "{}", stdout(&sweep));
    let v = json(&sweep);
    assert!(!v["found"].as_array().unwrap().is_empty());
    assert_eq!(v["remaining"], 0);
    assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0));
    let trail = stdout(&pvid(home.path(), &["audit", "trail", "pr-482", "--json"]));
    assert!(trail.lines().any(|l| l.contains("\"orphan.swept\"")), "{trail}");
    // The preview can still be provisioned afterwards, with fresh keys.
    let rerun = pvid(home.path(), &["up", "-f", spec.to_str().unwrap(), "--json"]);
    assert_eq!(rerun.status.code(), Some(0), "{}", stderr(&rerun));
    assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0));
}

#[test]
fn an_edited_deleted_or_reordered_evidence_entry_is_named() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    let out = pvid(home.path(), &["audit", "verify", "--json"]);
    assert_eq!(json(&out)["result"], "ok");
    let tamper = [
        ("UPDATE evidence SET data='{}' WHERE seq=2", 2),
        ("DELETE FROM evidence WHERE seq=3", 4),
        // Swap the contents of entries 3 and 4 (seq numbers stay in place).
        ("UPDATE evidence SET seq=-1 WHERE seq=3; UPDATE evidence SET seq=3 WHERE seq=4; UPDATE evidence SET seq=4 WHERE seq=-1", 3),
    ];
    for (sql, first_bad) in tamper {
        // Work on a copy of the whole PVID_HOME: the original stays intact.
        let copy = tempfile::tempdir().unwrap();
        for f in ["state.db", "state.db-wal", "state.db-shm", "master.key"] {
            if home.path().join(f).exists() {
                std::fs::copy(home.path().join(f), copy.path().join(f)).unwrap();
            }
        }
        let script = format!("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.executescript(\"{sql}\"); c.commit()");
        let status = std::process::Command::new("python3").args(["-c", &script]).arg(copy.path().join("state.db")).status().expect("python3");
        assert!(status.success(), "{sql}");
        let out = pvid(copy.path(), &["audit", "verify", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{sql}");
        let v = json(&out);
        assert_eq!((v["result"].clone(), v["first_bad_seq"].clone()), ("broken".into(), first_bad.into()), "{sql}: {v}");
    }
    assert_eq!(json(&pvid(home.path(), &["audit", "verify", "--json"]))["result"], "ok");
}

#[test]
fn audit_export_writes_every_entry_of_the_preview_and_the_chain_head() {
    let home = tempfile::tempdir().unwrap();
    up(home.path());
    assert_eq!(pvid(home.path(), &["down", "pr-482"]).status.code(), Some(0));
    let bundle = home.path().join("evidence.jsonl");
    let out = pvid(home.path(), &["audit", "export", "pr-482", "--out", bundle.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&bundle).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (head, entries) = lines.split_last().unwrap();
    assert_eq!(head["bundle"], "pvid-evidence-v1");
    assert_eq!(head["entries"], entries.len());
    assert_eq!(head["chain_verified"], true);
    assert_eq!(head["chain_head"], entries.last().unwrap()["hash"], "only pr-482 wrote evidence here");
    let events: Vec<&str> = entries.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events.first(), Some(&"preview.provisioning"));
    assert_eq!(events.last(), Some(&"preview.torn_down"));
    assert_eq!(events.iter().filter(|e| **e == "key.issued").count(), 4);
    assert_eq!(events.iter().filter(|e| **e == "secret.deleted").count(), 4);
}

#[test]
fn transit_custody_with_the_local_store_is_an_input_error_and_creates_nothing() {
    let home = tempfile::tempdir().unwrap();
    let out = pvid(home.path(), &["up", "-f", example_spec().to_str().unwrap(), "--key-custody", "transit"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("key custody `transit` needs the openbao secret store (--secrets openbao)"), "{}", stderr(&out));
    let show = json(&pvid(home.path(), &["show", "pr-482", "--json"]));
    assert_eq!(show["state"], "torn_down", "rolled back: {show}");
    assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0));
}

#[test]
fn openbao_without_an_address_is_an_input_error_naming_the_variable() {
    let home = tempfile::tempdir().unwrap();
    let out = pvid_with(home.path(), &["ls", "--secrets", "openbao"], &[("BAO_ADDR", ""), ("VAULT_ADDR", "")], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("OpenBao address missing: set BAO_ADDR (or VAULT_ADDR)"), "{}", stderr(&out));
}
