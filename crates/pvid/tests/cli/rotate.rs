//! `pvid rotate` against real sidecars on loopback: calls keep flowing while keys rotate, a
//! token signed by the old key works through the overlap and is refused with `key_revoked` after
//! it, an emergency rotation refuses the old key at once, and a rotation killed at each step is
//! finished by running it again.

use super::support::{Sidecar, free_port, json, pvid, pvid_with, stderr, stdout, upstream};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A two-service preview (api may call worker) with both sidecars running: api with egress,
/// both with an admin listener.
struct Live {
    home: tempfile::TempDir,
    worker: SocketAddr,
    egress: SocketAddr,
    admins: Vec<String>,
    _sidecars: Vec<Sidecar>,
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn up(home: &Path, api: SocketAddr, worker: SocketAddr) {
    up_with(home, "pr-7", "", api, worker);
}

/// Provisions preview `id` (api may call worker) with `extra` spec lines; returns `up --json`.
fn up_with(home: &Path, id: &str, extra: &str, api: SocketAddr, worker: SocketAddr) -> Value {
    let spec = format!(
        "preview: {id}\ntoken_ttl: 30s\n{extra}services:\n  api:    {{ address: \"{api}\", calls: [worker] }}\n  worker: {{ address: \"{worker}\" }}\n"
    );
    let file = home.join(format!("{id}.yaml"));
    std::fs::write(&file, spec).unwrap();
    let out = pvid(home, &["up", "-f", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut doc = json(&out);
    doc["stderr"] = stderr(&out).into();
    doc
}

/// Starts a sidecar; `Err` with its stderr when it exits before listening (a port another test
/// took between `free_port` and the bind).
fn sidecar(home: &Path, service: &str, listen: SocketAddr, admin: SocketAddr, egress: Option<SocketAddr>) -> Result<Sidecar, String> {
    let log = home.join("logs").join(format!("{service}.jsonl"));
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let err_file = home.join("logs").join(format!("{service}.stderr"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pvid"));
    cmd.arg("--home").arg(home).env_remove("PVID_HOME");
    cmd.args(["proxy", "--preview", "pr-7", "--service", service]);
    cmd.args(["--listen", &listen.to_string(), "--upstream", &upstream().to_string(), "--admin", &admin.to_string()]);
    if let Some(e) = egress {
        cmd.args(["--egress", &e.to_string()]);
    }
    cmd.arg("--log").arg(&log);
    let stderr_out = std::fs::File::create(&err_file).unwrap();
    let mut child = Sidecar(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr_out).spawn().unwrap());
    for _ in 0..400 {
        if TcpStream::connect(admin).is_ok() && egress.is_none_or(|e| TcpStream::connect(e).is_ok()) {
            return Ok(child);
        }
        if child.0.try_wait().unwrap().is_some() {
            return Err(format!("sidecar {service} exited: {}", std::fs::read_to_string(&err_file).unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("sidecar {service} did not start");
}

impl Live {
    fn start() -> Live {
        Live::start_with("")
    }

    /// Preview pr-7 with `extra` spec lines, its sidecars running. Tests run in parallel and a
    /// free port may be taken before a sidecar binds it: then it starts over on other ports.
    fn start_with(extra: &str) -> Live {
        let mut last = String::new();
        for _ in 0..5 {
            let home = tempfile::tempdir().unwrap();
            let (api, worker, egress) = (free_port(), free_port(), free_port());
            let (api_admin, worker_admin) = (free_port(), free_port());
            up_with(home.path(), "pr-7", extra, api, worker);
            let started = sidecar(home.path(), "worker", worker, worker_admin, None)
                .and_then(|w| sidecar(home.path(), "api", api, api_admin, Some(egress)).map(|a| vec![w, a]));
            match started {
                Ok(sidecars) => {
                    return Live {
                        home,
                        worker,
                        egress,
                        admins: vec![format!("http://{api_admin}"), format!("http://{worker_admin}")],
                        _sidecars: sidecars,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("the sidecars did not start in 5 attempts: {last}");
    }

    fn path(&self) -> &Path {
        self.home.path()
    }

    /// A token api signs for worker now (with the key api signs with now).
    fn mint(&self) -> String {
        let out = pvid(self.path(), &["token", "mint", "--preview", "pr-7", "--from", "api", "--to", "worker"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out).trim().to_owned()
    }

    fn healthz(&self, which: usize) -> Value {
        let addr: SocketAddr = self.admins[which].trim_start_matches("http://").parse().unwrap();
        let (_, body) = get(addr, "/healthz", None);
        serde_json::from_str(&body).unwrap()
    }

    fn rotate(&self, args: &[&str]) -> Value {
        let mut all = vec!["rotate", "pr-7", "--json"];
        all.extend_from_slice(args);
        let out = pvid(self.path(), &all);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        json(&out)
    }
}

/// One HTTP/1.1 GET on a fresh connection: status and body.
fn get(addr: SocketAddr, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn reason(body: &str) -> String {
    serde_json::from_str::<Value>(body).ok().and_then(|v| v["reason"].as_str().map(str::to_owned)).unwrap_or_default()
}

/// One call of the load: when it was sent and answered, and the answer.
#[derive(Debug)]
struct Call {
    sent: f64,
    answered: f64,
    status: u16,
    reason: String,
}

#[test]
fn calls_keep_flowing_through_a_rotation_and_only_tokens_older_than_the_overlap_fail() {
    let live = Live::start();
    let old_token = live.mint();
    let old_kid = live.healthz(0)["signing_kid"].as_str().unwrap().to_owned();

    // The load: calls through api's egress (fresh tokens, minted by the sidecar) and, beside
    // them, the token signed by the old key before the rotation, replayed to worker.
    let stop = Arc::new(AtomicBool::new(false));
    let (fresh, replayed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Vec::new())));
    let load = {
        let (stop, fresh, replayed, token) = (stop.clone(), fresh.clone(), replayed.clone(), old_token.clone());
        let (egress, worker) = (live.egress, live.worker);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                for (target, list) in [((egress, "/worker/ping", None), &fresh), ((worker, "/ping", Some(token.as_str())), &replayed)] {
                    let sent = now();
                    let (status, body) = get(target.0, target.1, target.2);
                    list.lock().unwrap().push(Call { sent, answered: now(), status, reason: reason(&body) });
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A sidecar of another preview acknowledges nothing about this one: refused up front.
    up_with(live.path(), "pr-9", "", free_port(), free_port());
    let foreign = pvid(live.path(), &["rotate", "pr-9", "--ack", &live.admins[0]]);
    assert_eq!(foreign.status.code(), Some(2), "{}", stderr(&foreign));
    assert!(stderr(&foreign).contains("is a sidecar of preview pr-7, not pr-9"), "{}", stderr(&foreign));
    let ack = live.admins.join(",");
    let rotated = live.rotate(&["--ack", &ack, "--overlap", "2s"]);
    let api = rotated["services"].as_array().unwrap().iter().find(|s| s["service"] == "api").unwrap().clone();
    assert_eq!(api["old_kid"], old_kid.as_str());
    assert_eq!(rotated["switch_after"], "acknowledged");
    let until = api["old_key_until_unix"].as_f64().unwrap();
    // Run on until the overlap is well over and some calls were made after it.
    while now() < until + 1.5 || replayed.lock().unwrap().iter().filter(|c| c.sent > until + 0.5).count() < 5 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();

    let fresh = fresh.lock().unwrap();
    let failed: Vec<&Call> = fresh.iter().filter(|c| c.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} calls with fresh tokens failed during the rotation; the first: {:?}",
        failed.len(),
        fresh.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(fresh.iter().filter(|c| c.sent > until).count() >= 5, "too few calls after the overlap");

    let replayed = replayed.lock().unwrap();
    let within: Vec<&Call> = replayed.iter().filter(|c| c.answered < until - 0.25).collect();
    let after: Vec<&Call> = replayed.iter().filter(|c| c.sent > until + 0.25).collect();
    assert!(!within.is_empty() && !after.is_empty(), "{} calls within the overlap, {} after", within.len(), after.len());
    assert!(
        within.iter().all(|c| c.status == 200),
        "the old key's token failed within the overlap: {:?}",
        within.iter().find(|c| c.status != 200)
    );
    assert!(
        after.iter().all(|c| c.status == 401 && c.reason == "key_revoked"),
        "the old key's token after the overlap: {:?}",
        after.iter().find(|c| c.status != 401 || c.reason != "key_revoked")
    );
    eprintln!(
        "rotation under load: {} fresh calls, none failed; old token: {} accepted within the overlap, {} refused after it",
        fresh.len(),
        within.len(),
        after.len()
    );

    // The sidecar signs with the new key, and worker's decision lines show it verified.
    let new_kid = api["new_kid"].as_str().unwrap();
    assert_eq!(live.healthz(0)["signing_kid"], new_kid);
    let log = std::fs::read_to_string(live.path().join("logs/worker.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"result\":\"allow\"") && l.contains(new_kid)), "no allowed call with {new_kid}");
    let api_log = std::fs::read_to_string(live.path().join("logs/api.jsonl")).unwrap();
    assert!(api_log.lines().any(|l| l.contains("\"event\":\"key.loaded\"") && l.contains(new_kid)), "api did not log the new key");

    // The next run retires the old key for good: the registry lists it as revoked.
    let again = live.rotate(&["--publish-delay", "0s", "--service", "worker"]);
    assert_eq!(again["services"].as_array().unwrap().len(), 1);
    let reg: Value = serde_json::from_str(&stdout(&pvid(live.path(), &["registry", "pr-7"]))).unwrap();
    let revoked = reg["revoked"].as_array().unwrap();
    assert!(revoked.iter().any(|r| r["kid"] == old_kid.as_str() && r["reason"] == "rotation"), "{revoked:?}");
    let verify = json(&pvid(live.path(), &["audit", "verify", "--json"]));
    assert_eq!(verify["result"], "ok");
    let trail = stdout(&pvid(live.path(), &["audit", "trail", "pr-7"]));
    assert!(trail.contains("key.rotated"), "{trail}");
}

#[test]
fn an_emergency_rotation_refuses_the_old_key_at_once_and_calls_recover() {
    let live = Live::start();
    let old_token = live.mint();
    assert_eq!(get(live.worker, "/ping", Some(&old_token)).0, 200);
    // With --ack the command returns once the sidecars hold the version that refuses the key
    // (found by a fresh-eyes review: it used to return on the version that published the new one).
    let rotated = live.rotate(&["--emergency", "--service", "api", "--ack", &live.admins.join(",")]);
    assert_eq!((rotated["emergency"].clone(), rotated["overlap_s"].clone()), (true.into(), 0.into()));
    let (status, body) = get(live.worker, "/ping", Some(&old_token));
    assert_eq!((status, reason(&body)), (401, "key_revoked".into()), "refused as soon as the command returned");

    // Sidecars poll the registry file every 200 ms: bounded waits, not sleeps.
    let within = |what: &str, ok: &dyn Fn() -> bool| {
        for _ in 0..200 {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("{what} did not happen within 5 s");
    };
    within("the old token refused", &|| get(live.worker, "/ping", Some(&old_token)).0 == 401);
    let (status, body) = get(live.worker, "/ping", Some(&old_token));
    assert_eq!((status, reason(&body)), (401, "key_revoked".into()));
    within("egress calls working again", &|| get(live.egress, "/worker/ping", None).0 == 200);
    assert_eq!(live.healthz(0)["signing_kid"], rotated["services"][0]["new_kid"]);
    let explain = pvid(live.path(), &["explain", &old_token, "--service", "worker", "--preview", "pr-7"]);
    assert!(stdout(&explain).contains("emergency rotation"), "{}", stdout(&explain));
}

#[test]
fn a_rotation_killed_at_each_step_is_finished_by_running_it_again() {
    for point in ["after_next_secret_write", "after_signing_secret_write"] {
        let home = tempfile::tempdir().unwrap();
        up(home.path(), free_port(), free_port());
        let killed = pvid_with(home.path(), &["rotate", "pr-7", "--publish-delay", "0s"], &[("PVID_FAILPOINT", point)], None);
        assert_eq!(killed.status.code(), Some(86), "{point}: {}", stderr(&killed));
        assert_eq!(json(&pvid(home.path(), &["audit", "verify", "--json"]))["result"], "ok", "{point}");

        let rerun = pvid(home.path(), &["rotate", "pr-7", "--publish-delay", "0s", "--json"]);
        assert_eq!(rerun.status.code(), Some(0), "{point}: {}", stderr(&rerun));
        let show = json(&pvid(home.path(), &["show", "pr-7", "--json"]));
        for svc in show["services"].as_array().unwrap() {
            let mut states: Vec<&str> = svc["keys"].as_array().unwrap().iter().map(|k| k["state"].as_str().unwrap()).collect();
            states.sort();
            assert_eq!(states, ["active", "retiring"], "{point}: {}", svc["service"]);
        }
        let orphans = pvid(home.path(), &["audit", "orphans", "--json"]);
        assert_eq!(orphans.status.code(), Some(0), "{point}: {}", stdout(&orphans));
        let leftovers: Vec<_> = walk(&home.path().join("secrets")).into_iter().filter(|p| p.contains("next-private-key")).collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");

        // Killed again at the first step, then torn down: nothing is left, the next key included.
        let killed = pvid_with(home.path(), &["rotate", "pr-7", "--emergency"], &[("PVID_FAILPOINT", "after_next_secret_write")], None);
        assert_eq!(killed.status.code(), Some(86), "{point}: {}", stderr(&killed));
        assert_eq!(pvid(home.path(), &["down", "pr-7"]).status.code(), Some(0));
        assert!(walk(&home.path().join("secrets")).iter().all(|p| !p.ends_with(".sealed")), "{point}: secrets left after down");
        assert_eq!(pvid(home.path(), &["audit", "orphans"]).status.code(), Some(0), "{point}");
    }
}

#[test]
fn rotations_that_cannot_run_are_input_errors_and_change_nothing() {
    let home = tempfile::tempdir().unwrap();
    up(home.path(), free_port(), free_port());
    let first = pvid(home.path(), &["rotate", "pr-7", "--publish-delay", "0s"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let version = json(&pvid(home.path(), &["show", "pr-7", "--json"]))["version"].clone();
    for (args, says) in [
        (vec!["rotate", "pr-7", "--publish-delay", "0s"], "still in the overlap"),
        (vec!["rotate", "pr-7", "--service", "nope"], "has no service nope"),
        (vec!["rotate", "pr-404"], "does not exist"),
        // Flags are checked before anything changes (fresh-eyes review findings).
        (vec!["rotate", "pr-7", "--emergency", "--ack", "notaurl"], "is not a sidecar admin URL"),
        (vec!["rotate", "pr-7", "--emergency", "--ack", ""], "is not a sidecar admin URL"),
        (vec!["rotate", "pr-7", "--emergency", "--overlap", "10m"], "cannot be used with"),
        (vec!["rotate", "pr-7", "--overlap", "8d"], "longer than the 604800s"),
    ] {
        let out = pvid(home.path(), &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    assert_eq!(json(&pvid(home.path(), &["show", "pr-7", "--json"]))["version"], version, "a refused rotation changed the registry");
    // --emergency may cut an overlap short: both earlier keys are refused, one new key signs.
    let out = pvid(home.path(), &["rotate", "pr-7", "--emergency", "--service", "api", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let show = json(&pvid(home.path(), &["show", "pr-7", "--json"]));
    let api = show["services"].as_array().unwrap().iter().find(|s| s["service"] == "api").unwrap();
    let states: Vec<&str> = api["keys"].as_array().unwrap().iter().map(|k| k["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["revoked", "revoked", "active"]);
    assert_eq!(pvid(home.path(), &["down", "pr-7"]).status.code(), Some(0));
    let out = pvid(home.path(), &["rotate", "pr-7"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("only an active preview"), "{}", stderr(&out));
}

/// The `x` coordinate of every public key a preview publishes.
fn public_xs(home: &Path, id: &str) -> Vec<String> {
    let jwks: Value = serde_json::from_str(&stdout(&pvid(home, &["jwks", id]))).unwrap();
    jwks["keys"].as_array().unwrap().iter().map(|k| k["x"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn shared_mode_warns_works_and_a_migration_keeps_calls_flowing() {
    let live = Live::start_with("mode: shared\n");
    // A second shared-mode preview: the same key pair again.
    let other = up_with(live.path(), "pr-8", "mode: shared\n", free_port(), free_port());
    assert!(other["stderr"].as_str().unwrap().contains("WARNING: mode: shared"), "{}", other["stderr"]);
    assert!(other["warnings"][0].as_str().unwrap().contains("permission-boundary tests (pvid matrix) are meaningless"));
    let shared: Vec<String> = [public_xs(live.path(), "pr-7"), public_xs(live.path(), "pr-8")].concat();
    assert_eq!(shared.len(), 4);
    assert!(shared.iter().all(|x| *x == shared[0]), "every service of every shared preview has one key: {shared:?}");
    // It works: calls go through, and doctor says why it is weak.
    assert_eq!(get(live.egress, "/worker/ping", None).0, 200);
    let doctor = pvid(live.path(), &["doctor", "--preview", "pr-7", "--json"]);
    assert_eq!(doctor.status.code(), Some(1));
    let findings = json(&doctor)["findings"].clone();
    assert!(findings.as_array().unwrap().iter().any(|f| f["check"] == "shared_credentials"
        && f["fix"].as_str().unwrap().contains("pvid migrate pr-7 --to per-service")), "{findings}");
    // Rotating a shared credential is refused: it would change every shared preview.
    let refused = pvid(live.path(), &["rotate", "pr-7"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("pvid migrate pr-7 --to per-service"), "{}", stderr(&refused));

    // The migration, under load through the egress sidecar.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(Mutex::new(Vec::new()));
    let load = {
        let (stop, calls, egress) = (stop.clone(), calls.clone(), live.egress);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = get(egress, "/worker/ping", None);
                calls.lock().unwrap().push((status, reason(&body)));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = pvid(live.path(), &["migrate", "pr-7", "--to", "per-service", "--ack", &live.admins.join(","), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let migrated = json(&out);
    assert_eq!((migrated["migrated"].clone(), migrated["services"].as_array().unwrap().len()), (true.into(), 2));
    let new_kid = migrated["services"].as_array().unwrap().iter().find(|s| s["service"] == "api").unwrap()["new_kid"].clone();
    for _ in 0..200 {
        if live.healthz(0)["signing_kid"] == new_kid {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    let calls = calls.lock().unwrap();
    let failed: Vec<_> = calls.iter().filter(|c| c.0 != 200).collect();
    assert!(failed.is_empty() && calls.len() > 10, "{} of {} calls failed during the migration: {:?}", failed.len(), calls.len(), failed.first());
    assert_eq!(live.healthz(0)["signing_kid"], new_kid);

    // pr-7 now has keys of its own; pr-8 keeps the shared one, and so does the old kid of pr-7
    // until its overlap ends.
    let xs = public_xs(live.path(), "pr-7");
    assert_eq!(xs.iter().filter(|x| **x == shared[0]).count(), 2, "old (retiring) keys: {xs:?}");
    assert_eq!(xs.iter().filter(|x| **x != shared[0]).count(), 2, "new keys: {xs:?}");
    let doctor = pvid(live.path(), &["doctor", "--preview", "pr-7", "--json"]);
    assert_eq!(doctor.status.code(), Some(0), "{}", stdout(&doctor));
    // The shared key outlives pr-7's move and is an orphan only once no shared preview is left.
    assert_eq!(pvid(live.path(), &["audit", "orphans"]).status.code(), Some(0));
    assert_eq!(pvid(live.path(), &["down", "pr-8"]).status.code(), Some(0));
    let orphans = pvid(live.path(), &["audit", "orphans", "--json"]);
    assert_eq!(orphans.status.code(), Some(1));
    assert!(stdout(&orphans).contains("shared/private-key"), "{}", stdout(&orphans));
    // A shared key nobody signs with any more is replaced, not handed to the next shared
    // preview (fresh-eyes review: it was silently reused).
    up_with(live.path(), "pr-10", "mode: shared\n", free_port(), free_port());
    let fresh = public_xs(live.path(), "pr-10");
    assert!(fresh.iter().all(|x| *x == fresh[0] && *x != shared[0]), "{fresh:?} vs the old shared key {}", shared[0]);
    assert_eq!(pvid(live.path(), &["audit", "orphans"]).status.code(), Some(0));
    assert_eq!(pvid(live.path(), &["down", "pr-10"]).status.code(), Some(0));
    assert_eq!(pvid(live.path(), &["audit", "orphans", "--sweep"]).status.code(), Some(0));
    assert!(!live.path().join("secrets/shared/private-key.sealed").exists());
    assert_eq!(json(&pvid(live.path(), &["audit", "verify", "--json"]))["result"], "ok");
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_wait_interrupted_in_the_overlap_is_finished_by_the_same_command() {
    // Found by a fresh-eyes review: `rotate --wait` stopped during the overlap could not be run
    // again (refused: still in the overlap).
    let home = tempfile::tempdir().unwrap();
    up(home.path(), free_port(), free_port());
    let first = pvid(home.path(), &["rotate", "pr-7", "--publish-delay", "0s", "--overlap", "2s", "--json"]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let old: Vec<Value> = json(&first)["services"].as_array().unwrap().iter().map(|s| s["old_kid"].clone()).collect();
    let again = pvid(home.path(), &["rotate", "pr-7", "--publish-delay", "0s", "--overlap", "2s", "--wait", "--json"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let v = json(&again);
    assert_eq!(v["resumed_wait"], true, "{v}");
    let mut retired: Vec<Value> = v["retired"].as_array().unwrap().clone();
    retired.sort_by_key(|k| k.to_string());
    let mut old = old;
    old.sort_by_key(|k| k.to_string());
    assert_eq!(retired, old);
    let reg: Value = serde_json::from_str(&stdout(&pvid(home.path(), &["registry", "pr-7"]))).unwrap();
    assert!(reg.get("retiring").is_none(), "{reg}");
    assert_eq!(reg["jwks"]["keys"].as_array().unwrap().len(), 2, "only the new keys are published");
}
