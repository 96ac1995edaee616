//! `pvid matrix ID`: the permission-boundary test. Against a live preview it tries every caller →
//! callee edge through the real sidecars (each rule's methods and paths, plus what the spec
//! forbids: another method, a path beside the rule's, `/admin`, and edges with no rule), with a
//! token minted exactly as `pvid token mint` does, and compares what each sidecar did with what
//! the spec says (`pvid_core::Policy`, the same code the sidecar runs, as the oracle). A sidecar
//! started with a stale or hand-edited registry shows up as a MISMATCH.

use anyhow::anyhow;
use clap::Args;
use pvid_core::{CallRule, Clock, MintRequest, Policy, PreviewId, PreviewState, ServiceName, SystemClock, service_identity};
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::context;
use crate::exit::{Failure, NEGATIVE, invalid, operational};
use crate::http_util;

/// Arguments of `pvid matrix`.
#[derive(Args, Debug)]
pub struct MatrixArgs {
    /// The preview (active, with its sidecars running at the registry's addresses).
    id: PreviewId,
    /// Print a Markdown table, ready to post on a pull request.
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
    /// Print every probe as JSON.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for a sidecar to connect and answer one probe.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    timeout: f64,
}

/// Why a probe is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A method and path a rule names.
    Rule,
    /// A method the rule does not name, on its path.
    MethodNotAllowed,
    /// A path beside the rule's prefix (`/charge` → `/charge-matrix`).
    PathOutsideRule,
    /// `/admin`, which specs mean to keep closed.
    Admin,
    /// An edge the spec has no rule for.
    NoRule,
}

/// One request to send, with what the spec says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub caller: ServiceName,
    pub callee: ServiceName,
    pub method: String,
    pub path: String,
    pub kind: Kind,
    /// Whether the spec allows it.
    pub allow: bool,
    /// The oracle's explanation of a denial.
    pub why: Option<String>,
}

/// Every probe for these services under this policy, caller by caller, callee by callee.
pub fn plan(services: &[ServiceName], rules: &[CallRule]) -> Vec<Planned> {
    let policy = Policy::new(rules.to_vec());
    let mut out = Vec::new();
    for caller in services {
        for callee in services.iter().filter(|c| *c != caller) {
            let mut wanted: Vec<(String, String, Kind)> = Vec::new();
            let edge: Vec<&CallRule> = rules.iter().filter(|r| &r.caller == caller && &r.callee == callee).collect();
            for r in &edge {
                let path = r.path.clone().unwrap_or_else(|| "/".into());
                let methods = r.methods.clone().unwrap_or_else(|| vec!["GET".into()]);
                for m in &methods {
                    wanted.push((m.clone(), path.clone(), Kind::Rule));
                }
                if let Some(ms) = &r.methods
                    && let Some(other) = ["DELETE", "PUT", "PATCH", "GET", "POST"].iter().find(|m| !ms.iter().any(|x| x == *m))
                {
                    wanted.push(((*other).to_owned(), path.clone(), Kind::MethodNotAllowed));
                }
                if path != "/" {
                    wanted.push((methods[0].clone(), format!("{path}-matrix"), Kind::PathOutsideRule));
                }
            }
            if edge.is_empty() {
                wanted.push(("GET".into(), "/".into(), Kind::NoRule));
            }
            wanted.push(("GET".into(), "/admin".into(), Kind::Admin));
            let mut seen = std::collections::BTreeSet::new();
            for (method, path, kind) in wanted {
                if !seen.insert((method.clone(), path.clone())) {
                    continue;
                }
                let verdict = policy.check(caller, callee, &method, &path);
                out.push(Planned {
                    caller: caller.clone(),
                    callee: callee.clone(),
                    method,
                    path,
                    kind,
                    allow: verdict.is_ok(),
                    why: verdict.err(),
                });
            }
        }
    }
    out
}

/// What a sidecar did with a probe.
#[derive(Debug, Serialize)]
struct Probe {
    caller: String,
    callee: String,
    method: String,
    path: String,
    kind: Kind,
    expected: &'static str,
    got: &'static str,
    status: u16,
    reason: String,
    request_id: String,
    #[serde(rename = "match")]
    matches: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec_says: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Reads an answer: a pvid deny body (401/403 `{"result":"deny","reason":…}`) is a denial; a
/// sidecar error after the checks (`upstream_unavailable`) and anything the upstream answered,
/// whatever its status, mean the request got through.
fn classify(status: u16, body: &serde_json::Value) -> (&'static str, String) {
    let reason = body["reason"].as_str().unwrap_or("").to_owned();
    match body["result"].as_str() {
        Some("deny") if matches!(status, 401 | 403) && !reason.is_empty() => ("deny", reason),
        Some("error") if reason == "upstream_unavailable" => ("allow", reason),
        Some("error") if !reason.is_empty() => ("error", reason),
        _ => ("allow", "ok".into()),
    }
}

pub async fn run(home: &Path, a: MatrixArgs) -> Result<i32, Failure> {
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout <= 600.0) {
        return Err(invalid(anyhow!("--timeout must be between 0 and 600 seconds")));
    }
    let timeout = Duration::from_secs_f64(a.timeout);
    let control = context::open(home).await?;
    let reg = control.registry(&a.id).await?;
    if reg.state != PreviewState::Active {
        return Err(invalid(anyhow!("preview {} is {}, not active: the matrix needs a live preview", a.id, reg.state)));
    }
    let services: Vec<ServiceName> = reg.services.keys().cloned().collect();
    let mut addresses = BTreeMap::new();
    let mut missing = Vec::new();
    for (svc, entry) in &reg.services {
        match &entry.address {
            Some(addr) => {
                addresses.insert(svc.clone(), addr.clone());
            }
            None => missing.push(svc.to_string()),
        }
    }
    if !missing.is_empty() {
        return Err(invalid(anyhow!(
            "no address in the registry of {} for {}: set `address:` (the sidecar's inbound listener) in the spec",
            a.id,
            missing.join(", ")
        )));
    }

    // Every sidecar must answer before any probe: a partial matrix would read as a pass.
    let mut unreachable = Vec::new();
    for (svc, addr) in &addresses {
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr.as_str())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => unreachable.push(format!("{svc} at {addr}: {e}")),
            Err(_) => unreachable.push(format!("{svc} at {addr}: no answer within {}s", a.timeout)),
        }
    }
    if !unreachable.is_empty() {
        return Err(operational(anyhow!("cannot reach the sidecar of {}", unreachable.join("; "))));
    }

    let planned = plan(&services, &reg.policy);
    // A short lifetime: the tokens live only for this run and never leave this process.
    let ttl_s = reg.token_ttl_s.min(120);
    let run_tag = pvid_core::key::random_suffix(4);
    let client = http_util::client();
    let mut signers: BTreeMap<ServiceName, Arc<dyn pvid_proxy::Signer>> = BTreeMap::new();
    let mut tokens: BTreeMap<(ServiceName, ServiceName), String> = BTreeMap::new();
    let mut counters: BTreeMap<(ServiceName, ServiceName), u32> = BTreeMap::new();
    let mut probes = Vec::with_capacity(planned.len());
    for p in &planned {
        let pair = (p.caller.clone(), p.callee.clone());
        if !tokens.contains_key(&pair) {
            if !signers.contains_key(&p.caller) {
                let s = context::signer(&control, &a.id, &p.caller)
                    .await?
                    .ok_or_else(|| operational(anyhow!("no key for {}/{} in the secret store", a.id, p.caller)))?;
                signers.insert(p.caller.clone(), s);
            }
            let audience = service_identity(&a.id, &p.callee);
            let req = MintRequest { from: &p.caller, preview: &a.id, audience: &audience, ttl_s, now: SystemClock.now() };
            let minted = pvid_proxy::mint_with(signers[&p.caller].as_ref(), &req).await.map_err(operational)?;
            tokens.insert(pair.clone(), minted.token);
        }
        let n = counters.entry(pair.clone()).or_default();
        *n += 1;
        let mut rid = format!("matrix-{}-{}-{n}-{run_tag}", p.caller, p.callee);
        if rid.len() > 128 {
            // The sidecar keeps request ids of at most 128 characters.
            rid = format!("matrix-{}-{run_tag}", probes.len() + 1);
        }
        let addr = &addresses[&p.callee];
        let url = format!("http://{addr}{}", p.path);
        let bearer = format!("Bearer {}", tokens[&pair]);
        let headers = [("authorization", bearer.as_str()), ("x-request-id", rid.as_str())];
        let ans = match tokio::time::timeout(timeout, http_util::call(&client, &p.method, &url, &headers)).await {
            Ok(Ok(ans)) => ans,
            Ok(Err(e)) => return Err(operational(anyhow!("cannot reach the sidecar of {} at {addr}: {e:#}", p.callee))),
            Err(_) => return Err(operational(anyhow!("the sidecar of {} at {addr} did not answer within {}s", p.callee, a.timeout))),
        };
        let (got, reason) = classify(ans.status, &ans.body);
        let expected = if p.allow { "allow" } else { "deny" };
        let note = (p.allow && p.kind == Kind::Admin)
            .then(|| format!("the spec lets {} call every path of {}, /admin included", p.caller, p.callee));
        probes.push(Probe {
            caller: p.caller.to_string(),
            callee: p.callee.to_string(),
            method: p.method.clone(),
            path: p.path.clone(),
            kind: p.kind,
            expected,
            got,
            status: ans.status,
            reason,
            request_id: rid,
            matches: expected == got,
            spec_says: p.why.clone(),
            note,
        });
    }
    control.state().close().await;

    let names: Vec<String> = services.iter().map(ToString::to_string).collect();
    let cells = cells(&names, &probes);
    let mismatches = probes.iter().filter(|p| !p.matches).count();
    if a.json {
        outln!(
            "{}",
            json!({"preview": a.id, "ok": mismatches == 0, "total": probes.len(), "mismatches": mismatches,
                   "matrix": cells, "probes": probes})
        );
    } else if a.markdown {
        print_markdown(&a.id, &names, &cells, &probes, mismatches);
    } else {
        print_text(&a.id, &names, &cells, &probes, mismatches);
    }
    Ok(if mismatches == 0 { 0 } else { NEGATIVE })
}

/// One cell per (caller, callee): `MISMATCH` if any probe disagreed with the spec, `deny` when
/// nothing got through, `allow` when everything did, else `allow: ` and what got through.
fn cells(names: &[String], probes: &[Probe]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for caller in names {
        let row: &mut BTreeMap<String, String> = out.entry(caller.clone()).or_default();
        for callee in names.iter().filter(|c| *c != caller) {
            let edge: Vec<&Probe> = probes.iter().filter(|p| &p.caller == caller && &p.callee == callee).collect();
            let through: Vec<String> = edge.iter().filter(|p| p.got == "allow").map(|p| format!("{} {}", p.method, p.path)).collect();
            let cell = if edge.iter().any(|p| !p.matches) {
                "MISMATCH".to_owned()
            } else if through.is_empty() {
                "deny".to_owned()
            } else if through.len() == edge.len() {
                "allow".to_owned()
            } else {
                format!("allow: {}", through.join(", "))
            };
            row.insert(callee.clone(), cell);
        }
    }
    out
}

fn cell<'a>(cells: &'a BTreeMap<String, BTreeMap<String, String>>, caller: &str, callee: &str) -> &'a str {
    cells.get(caller).and_then(|r| r.get(callee)).map_or("-", String::as_str)
}

fn print_text(id: &PreviewId, names: &[String], cells: &BTreeMap<String, BTreeMap<String, String>>, probes: &[Probe], mismatches: usize) {
    outln!("call matrix of {id}: rows call columns, through the real sidecars");
    let mut rows = vec![std::iter::once("caller \\ callee".to_owned()).chain(names.iter().cloned()).collect::<Vec<_>>()];
    for caller in names {
        rows.push(std::iter::once(caller.clone()).chain(names.iter().map(|c| cell(cells, caller, c).to_owned())).collect());
    }
    print_columns(&rows);
    outln!();
    let mut list = vec![["CALLER", "CALLEE", "REQUEST", "KIND", "EXPECTED", "GOT", "STATUS", "REASON", "REQUEST ID", ""].map(str::to_owned).to_vec()];
    for p in probes {
        list.push(vec![
            p.caller.clone(),
            p.callee.clone(),
            format!("{} {}", p.method, p.path),
            serde_json::to_value(p.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            p.expected.to_owned(),
            p.got.to_owned(),
            p.status.to_string(),
            p.reason.clone(),
            p.request_id.clone(),
            if p.matches { String::new() } else { "MISMATCH".into() },
        ]);
    }
    print_columns(&list);
    outln!();
    for p in probes.iter().filter(|p| !p.matches) {
        outln!(
            "MISMATCH {} -> {} {} {}: the spec says {}{}, the sidecar of {} said {} ({} {})",
            p.caller,
            p.callee,
            p.method,
            p.path,
            p.expected,
            p.spec_says.as_ref().map(|w| format!(" ({w})")).unwrap_or_default(),
            p.callee,
            p.got,
            p.status,
            p.reason
        );
    }
    for n in probes.iter().filter_map(|p| p.note.as_ref()) {
        outln!("note: {n}");
    }
    outln!("{}/{} probes as the spec says; `pvid logs --request-id ID` shows a probe's decisions", probes.len() - mismatches, probes.len());
}

fn print_columns(rows: &[Vec<String>]) {
    let mut widths = vec![0; rows.iter().map(Vec::len).max().unwrap_or(0)];
    for r in rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.len());
        }
    }
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(v, w)| format!("{v:<w$}")).collect();
        outln!("{}", line.join("  ").trim_end());
    }
}

fn md(s: &str) -> String {
    s.replace('|', "\\|")
}

fn print_markdown(id: &PreviewId, names: &[String], cells: &BTreeMap<String, BTreeMap<String, String>>, probes: &[Probe], mismatches: usize) {
    let verdict = if mismatches == 0 { "every probe as the spec says".to_owned() } else { format!("**{mismatches} mismatch(es)**") };
    outln!("### pvid call matrix: `{id}`");
    outln!();
    outln!("{} probes through the real sidecars, {verdict}. Rows call columns.", probes.len());
    outln!();
    outln!("| caller ↓ callee → | {} |", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" | "));
    outln!("|---|{}", "---|".repeat(names.len()));
    for caller in names {
        let row: Vec<String> = names
            .iter()
            .map(|c| match cell(cells, caller, c) {
                "-" => "—".to_owned(),
                "MISMATCH" => "**MISMATCH**".to_owned(),
                other => md(other),
            })
            .collect();
        outln!("| `{caller}` | {} |", row.join(" | "));
    }
    outln!();
    let bad: Vec<&Probe> = probes.iter().filter(|p| !p.matches).collect();
    if !bad.is_empty() {
        outln!("Mismatches:");
        outln!();
        for p in &bad {
            outln!(
                "- `{} → {} {} {}`: spec says **{}**, sidecar said **{}** ({} `{}`), request id `{}`",
                p.caller, p.callee, p.method, p.path, p.expected, p.got, p.status, p.reason, p.request_id
            );
        }
        outln!();
    }
    outln!("<details><summary>All {} probes</summary>", probes.len());
    outln!();
    outln!("| caller | callee | request | expected | got | reason | request id |");
    outln!("|---|---|---|---|---|---|---|");
    for p in probes {
        let got = if p.matches { p.got.to_owned() } else { format!("**{}**", p.got) };
        outln!(
            "| `{}` | `{}` | `{} {}` | {} | {got} | `{}` | `{}` |",
            p.caller,
            p.callee,
            p.method,
            md(&p.path),
            p.expected,
            p.reason,
            p.request_id
        );
    }
    outln!();
    outln!("</details>");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        s.parse().unwrap()
    }

    fn rule(caller: &str, callee: &str, methods: Option<&[&str]>, path: Option<&str>) -> CallRule {
        CallRule {
            caller: svc(caller),
            callee: svc(callee),
            methods: methods.map(|ms| ms.iter().map(|m| m.to_string()).collect()),
            path: path.map(str::to_owned),
        }
    }

    #[test]
    fn plans_rule_probes_forbidden_probes_and_no_rule_edges() {
        let services = [svc("api"), svc("payments"), svc("worker")];
        let rules = [rule("api", "worker", None, None), rule("api", "payments", Some(&["POST"]), Some("/charge"))];
        let p = plan(&services, &rules);
        let find = |c: &str, d: &str| p.iter().filter(|x| x.caller.as_str() == c && x.callee.as_str() == d).map(|x| (x.method.as_str(), x.path.as_str(), x.kind, x.allow)).collect::<Vec<_>>();
        assert_eq!(
            find("api", "payments"),
            [("POST", "/charge", Kind::Rule, true), ("DELETE", "/charge", Kind::MethodNotAllowed, false), ("POST", "/charge-matrix", Kind::PathOutsideRule, false), ("GET", "/admin", Kind::Admin, false)]
        );
        // Any method, any path: /admin is allowed too, and the oracle says so.
        assert_eq!(find("api", "worker"), [("GET", "/", Kind::Rule, true), ("GET", "/admin", Kind::Admin, true)]);
        assert_eq!(find("worker", "api"), [("GET", "/", Kind::NoRule, false), ("GET", "/admin", Kind::Admin, false)]);
        // Every ordered pair of distinct services, and never a service calling itself.
        assert_eq!(p.iter().map(|x| (x.caller.clone(), x.callee.clone())).collect::<std::collections::BTreeSet<_>>().len(), 6);
        assert!(p.iter().all(|x| x.caller != x.callee));
        assert!(p.iter().filter(|x| !x.allow).all(|x| x.why.is_some()));
    }

    #[test]
    fn the_forbidden_method_is_one_the_rule_does_not_name() {
        let services = [svc("a"), svc("b")];
        let p = plan(&services, &[rule("a", "b", Some(&["DELETE", "PUT"]), None)]);
        let ms: Vec<(&str, Kind)> = p.iter().filter(|x| x.caller.as_str() == "a").map(|x| (x.method.as_str(), x.kind)).collect();
        assert_eq!(ms, [("DELETE", Kind::Rule), ("PUT", Kind::Rule), ("PATCH", Kind::MethodNotAllowed), ("GET", Kind::Admin)]);
    }

    #[test]
    fn overlapping_rules_are_judged_as_a_union() {
        // The forbidden-method probe of the first rule is allowed by the second: the oracle knows.
        let services = [svc("a"), svc("b")];
        let p = plan(&services, &[rule("a", "b", Some(&["POST"]), Some("/x")), rule("a", "b", Some(&["DELETE"]), None)]);
        let del = p.iter().find(|x| x.method == "DELETE" && x.path == "/x").unwrap();
        assert!(del.allow, "DELETE /x is allowed by the second rule");
    }

    #[test]
    fn classifies_pvid_denials_and_upstream_answers() {
        assert_eq!(classify(403, &json!({"result": "deny", "reason": "policy_denied", "request_id": "r"})), ("deny", "policy_denied".into()));
        assert_eq!(classify(401, &json!({"result": "deny", "reason": "audience_mismatch"})), ("deny", "audience_mismatch".into()));
        assert_eq!(classify(200, &serde_json::Value::Null), ("allow", "ok".into()));
        // The upstream's own 403 is an answer from behind the sidecar: the request got through.
        assert_eq!(classify(403, &json!({"error": "forbidden"})), ("allow", "ok".into()));
        assert_eq!(classify(502, &json!({"result": "error", "reason": "upstream_unavailable"})), ("allow", "upstream_unavailable".into()));
        assert_eq!(classify(503, &json!({"result": "error", "reason": "registry_unavailable"})), ("error", "registry_unavailable".into()));
    }

    #[test]
    fn cells_summarise_each_edge() {
        let probe = |caller: &str, callee: &str, path: &str, expected: &'static str, got: &'static str| Probe {
            caller: caller.into(),
            callee: callee.into(),
            method: "GET".into(),
            path: path.into(),
            kind: Kind::Rule,
            expected,
            got,
            status: 200,
            reason: String::new(),
            request_id: String::new(),
            matches: expected == got,
            spec_says: None,
            note: None,
        };
        let names = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let probes = [
            probe("a", "b", "/", "allow", "allow"),
            probe("a", "b", "/admin", "allow", "allow"),
            probe("a", "c", "/x", "allow", "allow"),
            probe("a", "c", "/admin", "deny", "deny"),
            probe("b", "a", "/", "deny", "deny"),
            probe("b", "c", "/", "deny", "allow"),
        ];
        let c = cells(&names, &probes);
        assert_eq!(c["a"]["b"], "allow");
        assert_eq!(c["a"]["c"], "allow: GET /x");
        assert_eq!(c["b"]["a"], "deny");
        assert_eq!(c["b"]["c"], "MISMATCH");
        assert!(!c["a"].contains_key("a"));
    }
}
