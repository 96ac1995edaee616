//! The default-deny call policy: who may call whom, optionally per method and path prefix.
//!
//! A path rule `/charge` matches `/charge` and everything below `/charge/`, never `/chargeback`.
//! Request paths are normalised (percent-decoding of safe bytes, repeated slashes, dot segments)
//! before matching, and a path that is not well formed is refused rather than guessed at.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::id::ServiceName;

/// One allowed call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallRule {
    /// The calling service.
    pub caller: ServiceName,
    /// The called service.
    pub callee: ServiceName,
    /// Allowed methods (upper case); `None` means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Allowed normalised path prefix; `None` means any path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl CallRule {
    /// Whether this rule admits the call. `path` must already be normalised.
    pub fn admits(&self, caller: &ServiceName, callee: &ServiceName, method: &str, path: &str) -> bool {
        &self.caller == caller
            && &self.callee == callee
            && self.methods.as_ref().is_none_or(|ms| ms.iter().any(|m| m == method))
            && self.path.as_deref().is_none_or(|prefix| path_has_prefix(path, prefix))
    }
}

impl fmt::Display for CallRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.caller, self.callee)?;
        if self.methods.is_some() || self.path.is_some() {
            f.write_str(":")?;
        }
        if let Some(ms) = &self.methods {
            write!(f, " {}", ms.join("|"))?;
        }
        if let Some(p) = &self.path {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

/// A call as written in a spec's `calls` list: `callee` or `"callee: [METHOD[|METHOD..]] [/path]"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallSpec {
    /// The called service.
    pub callee: ServiceName,
    /// Allowed methods, if restricted.
    pub methods: Option<Vec<String>>,
    /// Allowed path prefix, if restricted.
    pub path: Option<String>,
}

impl CallSpec {
    /// Parses one `calls` entry.
    pub fn parse(s: &str) -> Result<CallSpec, String> {
        let (callee, rest) = match s.split_once(':') {
            Some((c, r)) => (c.trim(), Some(r.trim())),
            None => (s.trim(), None),
        };
        let callee: ServiceName = callee.parse()?;
        let (mut methods, mut path) = (None, None);
        if let Some(rest) = rest {
            let words: Vec<&str> = rest.split_whitespace().collect();
            if words.is_empty() || words.len() > 2 {
                return Err(format!("`{s}`: expected `callee: METHOD /path`, `callee: METHOD` or `callee: /path`"));
            }
            for w in words {
                if w.starts_with('/') {
                    if w.contains(['?', '*']) {
                        return Err(format!(
                            "`{s}`: a path rule is a plain prefix (no query, no `*`): `/charge` matches /charge and everything below it"
                        ));
                    }
                    if path.is_some() {
                        return Err(format!("`{s}`: more than one path"));
                    }
                    let norm = normalize_path(w).map_err(|e| format!("`{s}`: {e}"))?;
                    if norm != w && format!("{norm}/") != w {
                        return Err(format!("`{s}`: path must be written normalised (`{norm}`)"));
                    }
                    path = Some(norm);
                } else {
                    if methods.is_some() || path.is_some() {
                        return Err(format!("`{s}`: write the method before the path"));
                    }
                    let ms: Vec<String> = w.split('|').map(str::to_owned).collect();
                    for m in &ms {
                        if m.is_empty() || !m.bytes().all(|c| c.is_ascii_uppercase()) {
                            return Err(format!("`{s}`: `{m}` is not an HTTP method (upper case, e.g. GET|POST)"));
                        }
                    }
                    methods = Some(ms);
                }
            }
        }
        Ok(CallSpec { callee, methods, path })
    }
}

/// The policy of one preview: the list of allowed calls; everything else is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<CallRule>,
}

impl Policy {
    /// A policy from its rules.
    pub fn new(rules: Vec<CallRule>) -> Policy {
        Policy { rules }
    }

    /// The rules.
    pub fn rules(&self) -> &[CallRule] {
        &self.rules
    }

    /// Decides a call. `raw_path` is the request target's path (the query is ignored). Returns the
    /// normalised path on allow, and a human explanation on deny.
    pub fn check(
        &self,
        caller: &ServiceName,
        callee: &ServiceName,
        method: &str,
        raw_path: &str,
    ) -> Result<String, String> {
        let path = raw_path.split_once('?').map_or(raw_path, |(p, _)| p);
        let path = normalize_path(path).map_err(|e| format!("request path refused: {e}"))?;
        if self.rules.iter().any(|r| r.admits(caller, callee, method, &path)) {
            Ok(path)
        } else if self.rules.iter().any(|r| &r.caller == caller && &r.callee == callee) {
            Err(format!("{caller} may call {callee} but not {method} {path}"))
        } else {
            Err(format!("no rule lets {caller} call {callee}"))
        }
    }
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// Normalises an absolute request path: decodes percent-escapes of unreserved characters,
/// collapses repeated slashes, resolves `.` and `..`. Refuses what cannot be matched safely:
/// no leading `/`, control bytes, backslashes, bad escapes, escaped `/`, `\` or `%`, and `..`
/// above the root. A trailing slash is kept off (`/a/` → `/a`), except for the root.
pub fn normalize_path(raw: &str) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err("path must start with `/`".into());
    }
    let bytes = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or("truncated percent-escape")?;
            let v = u8::from_str_radix(hex, 16).map_err(|_| "bad percent-escape")?;
            if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                decoded.push(v as char);
            } else if v < 0x20 || v >= 0x7f || v == b'/' || v == b'\\' || v == b'%' {
                return Err(format!("escaped byte %{hex} is not allowed in a path"));
            } else {
                // Keep other escapes as they are, upper-cased, so one spelling matches.
                decoded.push('%');
                decoded.push_str(&hex.to_ascii_uppercase());
            }
            i += 3;
            continue;
        }
        if c < 0x21 || c >= 0x7f || c == b'\\' || c == b'#' || c == b';' {
            // `;` starts path parameters, which some servers strip (`/a/..;/b` is `/b` to
            // Tomcat): a path the upstream may read differently is refused, not matched.
            return Err("path holds a control, space, backslash, `#`, `;` or non-ASCII byte".into());
        }
        decoded.push(c as char);
        i += 1;
    }
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err("`..` climbs above the root".into());
                }
            }
            s => segments.push(s),
        }
    }
    Ok(format!("/{}", segments.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(s: &str) -> ServiceName {
        s.parse().unwrap()
    }

    #[test]
    fn normalises_dot_segments_slashes_and_safe_escapes() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//charge///x/").unwrap(), "/charge/x");
        assert_eq!(normalize_path("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(normalize_path("/%63harge").unwrap(), "/charge");
        assert_eq!(normalize_path("/a%2e%2e/b").unwrap(), "/a../b");
        assert_eq!(normalize_path("/x/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(normalize_path("/a%3ab").unwrap(), "/a%3Ab");
        for bad in ["charge", "/..", "/a/../..", "/a%2fb", "/a%5cb", "/a\\b", "/a%", "/a%zz", "/a b", "/a%00", "/%25", "/charge/..;/admin", "/charge;jsessionid=1"] {
            assert!(normalize_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn path_rule_matches_subtree_but_not_siblings_with_same_prefix() {
        let p = Policy::new(vec![CallRule {
            caller: svc("api"),
            callee: svc("payments"),
            methods: Some(vec!["POST".into()]),
            path: Some("/charge".into()),
        }]);
        let (api, pay) = (svc("api"), svc("payments"));
        assert!(p.check(&api, &pay, "POST", "/charge").is_ok());
        assert!(p.check(&api, &pay, "POST", "/charge/123?x=1").is_ok());
        assert!(p.check(&api, &pay, "POST", "/chargeback").is_err());
        assert!(p.check(&api, &pay, "GET", "/charge").is_err());
        assert!(p.check(&api, &pay, "POST", "/charge/../admin").is_err());
        assert!(p.check(&api, &pay, "POST", "/x/../charge").is_ok());
        assert!(p.check(&svc("worker"), &pay, "POST", "/charge").is_err());
    }

    #[test]
    fn parses_call_entries() {
        let c = CallSpec::parse("payments: POST /charge").unwrap();
        assert_eq!(c.callee.as_str(), "payments");
        assert_eq!(c.methods, Some(vec!["POST".to_string()]));
        assert_eq!(c.path.as_deref(), Some("/charge"));
        let c = CallSpec::parse("worker").unwrap();
        assert_eq!((c.methods, c.path), (None, None));
        let c = CallSpec::parse("worker: GET|HEAD").unwrap();
        assert_eq!(c.methods, Some(vec!["GET".to_string(), "HEAD".to_string()]));
        for bad in ["Worker", "worker:", "worker: post /x", "worker: /a/../b", "worker: /x GET", "worker: GET /a /b", "worker: /x?y=1", "worker: /x/*"] {
            assert!(CallSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
