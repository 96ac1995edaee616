//! The preview spec (YAML, DESIGN.md "Preview spec"): parsed strictly, and every error names the
//! file, line and field.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

use crate::duration::parse_duration;
use crate::id::{PreviewId, ServiceName};
use crate::key::Algorithm;
use crate::policy::{CallRule, CallSpec};
use crate::token::{DEFAULT_TTL_S, MAX_TTL_S};

/// Longest preview TTL accepted: a year.
const MAX_PREVIEW_TTL_S: u64 = 365 * 86_400;

/// A parsed, checked preview spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreviewSpec {
    /// The preview id, when the spec names it (the command line may give it instead).
    pub preview: Option<PreviewId>,
    /// Algorithm of every service key.
    pub algorithm: Algorithm,
    /// Lifetime of minted tokens.
    pub token_ttl: Duration,
    /// Time after which the preview may be reaped, if any.
    pub ttl: Option<Duration>,
    /// Where the services' private keys live and who signs (DESIGN.md "Key custody").
    pub key_custody: KeyCustody,
    /// Rotate every service's key this often (`pvid serve` does it), if set.
    pub rotation_period: Option<Duration>,
    /// Per-service keys (the default), or one key shared by every service of every shared-mode
    /// preview (pattern 1: a starting point, loudly warned about).
    pub mode: CredentialMode,
    /// The services, in the order written.
    pub services: Vec<ServiceSpec>,
}

/// One service of a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Its name.
    pub name: ServiceName,
    /// Where its inbound sidecar listens (`host:port`).
    pub address: Option<String>,
    /// Whom it may call.
    pub calls: Vec<CallSpec>,
    /// Whether it accepts the preview-wide audience.
    pub accept_preview_audience: bool,
}

/// Largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;
/// Most services one preview may have (each gets a key pair, a secret and a sidecar).
pub const MAX_SERVICES: usize = 256;

impl PreviewSpec {
    /// The call policy the spec defines.
    pub fn policy_rules(&self) -> Vec<CallRule> {
        let mut rules = Vec::new();
        for svc in &self.services {
            for call in &svc.calls {
                let rule = CallRule {
                    caller: svc.name.clone(),
                    callee: call.callee.clone(),
                    methods: call.methods.clone(),
                    path: call.path.clone(),
                };
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
        rules
    }

    /// Parses a spec. `file` is only used in error messages.
    pub fn parse(file: &str, text: &str) -> Result<PreviewSpec, SpecError> {
        // A preview is a handful of services: a huge document is a mistake, refused before the
        // YAML parser spends minutes and memory on it (found by a fresh-eyes review: 8 MB,
        // 200,000 services ran for minutes and provisioned thousands of keys).
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError {
                file: file.to_owned(),
                line: None,
                field: "(document)".to_owned(),
                message: format!("{} bytes; a spec is at most {MAX_SPEC_BYTES} bytes", text.len()),
            });
        }
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // YAML counts a bare CR as a line break, editors and `lines()` do not: line numbers
        // would point past the end of the file (found by fuzzing). LF and CRLF only.
        if let Some(i) = text.bytes().enumerate().position(|(i, c)| c == b'\r' && text.as_bytes().get(i + 1) != Some(&b'\n')) {
            return Err(SpecError {
                file: file.to_owned(),
                line: Some(text[..i].matches('\n').count() + 1),
                field: "(document)".to_owned(),
                message: "carriage return without line feed: use LF or CRLF line endings".to_owned(),
            });
        }
        let raw: RawSpec = yaml_serde::from_str(text).map_err(|e| SpecError::from_yaml(file, text, &e))?;
        let err = |line: Option<usize>, field: String, message: String| SpecError {
            file: file.to_owned(),
            line,
            field,
            message,
        };
        let services_line = find_line(text, 0, "services");
        let Some(services) = raw.services else {
            return Err(err(None, "services".into(), "missing: a preview needs at least one service".into()));
        };
        if services.0.is_empty() {
            return Err(err(services_line, "services".into(), "empty: a preview needs at least one service".into()));
        }
        if services.0.len() > MAX_SERVICES {
            return Err(err(services_line, "services".into(), format!("{} services; a preview has at most {MAX_SERVICES}", services.0.len())));
        }
        let names: Vec<&ServiceName> = services.0.iter().map(|(n, _)| n).collect();
        for (name, svc) in &services.0 {
            for call in &svc.calls {
                if !names.contains(&&call.0.callee) {
                    let line = find_line(text, services_line.unwrap_or(0), name.as_str())
                        .and_then(|l| find_line(text, l - 1, call.0.callee.as_str()));
                    return Err(err(
                        line,
                        format!("services.{name}.calls"),
                        format!("unknown service `{}` (services are: {})", call.0.callee, join(&names)),
                    ));
                }
            }
        }
        let top = |field: &str, message: String| err(top_key_line(text, field), field.to_owned(), message);
        let preview = raw.preview.map(|p| p.parse::<PreviewId>().map_err(|e| top("preview", e))).transpose()?;
        let algorithm = match raw.algorithm {
            Some(a) => a.parse::<Algorithm>().map_err(|e| top("algorithm", e))?,
            None => Algorithm::ES256,
        };
        let token_ttl = match raw.token_ttl {
            Some(t) => parse_duration(&t).map_err(|e| top("token_ttl", e))?,
            None => Duration::from_secs(DEFAULT_TTL_S),
        };
        if token_ttl.as_secs() == 0 || token_ttl.as_secs() > MAX_TTL_S {
            return Err(top("token_ttl", format!("must be between 1s and {MAX_TTL_S}s")));
        }
        let ttl = raw.ttl.map(|t| parse_duration(&t).map_err(|e| top("ttl", e))).transpose()?;
        if ttl.is_some_and(|t| t.as_secs() == 0 || t.as_secs() > MAX_PREVIEW_TTL_S) {
            return Err(top("ttl", "must be between 1s and 365d".into()));
        }
        let key_custody = match raw.key_custody {
            Some(c) => c.parse::<KeyCustody>().map_err(|e| top("key_custody", e))?,
            None => KeyCustody::Sidecar,
        };
        key_custody.check_algorithm(algorithm).map_err(|e| top("key_custody", e))?;
        let rotation_period = raw.rotation_period.map(|t| parse_duration(&t).map_err(|e| top("rotation_period", e))).transpose()?;
        if let Some(period) = rotation_period {
            // Each rotation keeps the old key through an overlap (token lifetime + leeway); a
            // period shorter than twice that would find the last rotation still running.
            let overlap = token_ttl.as_secs() + crate::token::DEFAULT_LEEWAY_S;
            if period.as_secs() < 2 * overlap {
                return Err(top(
                    "rotation_period",
                    format!("{}s is shorter than twice the overlap of a rotation (token_ttl + 60 s leeway = {overlap}s)", period.as_secs()),
                ));
            }
        }
        let mode = match raw.mode {
            Some(m) => m.parse::<CredentialMode>().map_err(|e| top("mode", e))?,
            None => CredentialMode::PerService,
        };
        if mode == CredentialMode::Shared && key_custody == KeyCustody::Transit {
            return Err(top("mode", "a shared credential is one exportable key: it needs `key_custody: sidecar`".into()));
        }
        if mode == CredentialMode::Shared && rotation_period.is_some() {
            return Err(top("mode", "a shared credential is rotated by moving off it (pvid migrate), not by rotation_period".into()));
        }
        Ok(PreviewSpec {
            preview,
            algorithm,
            token_ttl,
            ttl,
            key_custody,
            rotation_period,
            mode,
            services: services
                .0
                .into_iter()
                .map(|(name, s)| ServiceSpec {
                    name,
                    address: s.address.map(|a| a.0),
                    calls: s.calls.into_iter().map(|c| c.0).collect(),
                    accept_preview_audience: s.accept_preview_audience,
                })
                .collect(),
        })
    }
}

fn join(names: &[&ServiceName]) -> String {
    names.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
}

/// First 1-based line at or after line `after` (0-based index) where `word` appears as a key or
/// list item; used to place errors found after parsing.
fn find_line(text: &str, after: usize, word: &str) -> Option<usize> {
    text.lines().enumerate().skip(after).find_map(|(i, l)| {
        let t = l.trim_start().trim_start_matches("- ").trim_start_matches(['"', '\'', '[', '{', ' ']);
        let hit = t.starts_with(word) && !t[word.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            || l.contains(&format!("[{word}")) || l.contains(&format!(" {word},")) || l.contains(&format!(" {word}]"))
            || l.contains(&format!("\"{word}:")) || l.contains(&format!("\"{word}\""));
        hit.then_some(i + 1)
    })
}

/// Who holds a preview's private keys (DESIGN.md "Key custody"), chosen per preview.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyCustody {
    /// Each sidecar holds its own private key, fetched from the secret store (the default).
    #[default]
    Sidecar,
    /// OpenBao Transit holds a non-exportable key per service and signs; the private key never
    /// leaves the vault. ES256 and EdDSA only.
    Transit,
}

impl KeyCustody {
    /// The spec spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyCustody::Sidecar => "sidecar",
            KeyCustody::Transit => "transit",
        }
    }

    /// Whether this is the default mode (serde skips it, so older stored configs compare equal).
    pub fn is_sidecar(&self) -> bool {
        *self == KeyCustody::Sidecar
    }

    /// Transit keys are `ecdsa-p256` or `ed25519`; RS256 is refused rather than emulated.
    pub fn check_algorithm(self, alg: Algorithm) -> Result<(), String> {
        match (self, alg) {
            (KeyCustody::Transit, Algorithm::RS256) => {
                Err("transit custody signs with ES256 or EdDSA; RS256 keys need `key_custody: sidecar`".to_owned())
            }
            _ => Ok(()),
        }
    }
}

impl std::str::FromStr for KeyCustody {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sidecar" => Ok(KeyCustody::Sidecar),
            "transit" => Ok(KeyCustody::Transit),
            _ => Err(format!("unknown key custody `{}` (use sidecar or transit)", s.escape_debug())),
        }
    }
}

impl fmt::Display for KeyCustody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a preview's services get their keys (DESIGN.md, the four patterns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialMode {
    /// A fresh key pair per service per preview (pattern 2, the default).
    #[default]
    PerService,
    /// One key pair for every service of every shared-mode preview (pattern 1). Whoever holds it
    /// can sign as any service of any such preview: a permission-boundary test proves nothing.
    Shared,
}

impl CredentialMode {
    /// The spec spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialMode::PerService => "per-service",
            CredentialMode::Shared => "shared",
        }
    }

    /// Whether this is the default mode (serde skips it, so older stored configs compare equal).
    pub fn is_per_service(&self) -> bool {
        *self == CredentialMode::PerService
    }
}

impl std::str::FromStr for CredentialMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-service" => Ok(CredentialMode::PerService),
            "shared" => Ok(CredentialMode::Shared),
            _ => Err(format!("unknown mode `{}` (use per-service or shared)", s.escape_debug())),
        }
    }
}

impl fmt::Display for CredentialMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A spec error with its place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {field}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct SpecError {
    /// The spec file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Dotted path of the field (`services.api.calls`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl SpecError {
    fn from_yaml(file: &str, text: &str, e: &yaml_serde::Error) -> SpecError {
        let mut line = e.location().map(|l| l.line());
        let mut message = e.to_string();
        // The YAML error appends " at line L column C"; the line is reported on its own.
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        // Nested errors start with the dotted path ("services.api: ..."); top-level ones do not,
        // so the key written on the error's line names the field.
        let (mut field, from_path) = match message.split_once(": ") {
            Some((f, m)) if !f.contains(' ') && !f.contains('`') => {
                let f = f.to_owned();
                message = m.to_owned();
                (f, true)
            }
            _ => (line.and_then(|l| key_on_line(text, l)).unwrap_or_else(|| "(document)".to_owned()), false),
        };
        message = message.replace("struct RawSpec", "a mapping with preview, algorithm, token_ttl, ttl, key_custody, rotation_period, mode and services");
        message = message.replace("struct RawService", "a mapping with address, calls and accept_preview_audience");
        if message.contains("cannot start any token")
            && line.and_then(|l| text.lines().nth(l.saturating_sub(1))).is_some_and(|l| l.contains('\t'))
        {
            message.push_str(" (a tab: YAML indents with spaces only)");
        }
        if let Some(key) = message.strip_prefix("duplicate field `").and_then(|m| m.strip_suffix('`'))
            && let Some(second) = text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.trim_start().strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':')))
                .map(|(i, _)| i + 1)
                .nth(1)
        {
            line = Some(second);
            // The error's own line is where the mapping starts: name the duplicated key.
            field = if from_path { format!("{field}.{key}") } else { key.to_owned() };
        }
        // A duplicate is reported where the mapping starts; point at the second occurrence.
        if let Some(name) = message.strip_prefix("duplicate service `").and_then(|m| m.strip_suffix('`')) {
            let start = line.unwrap_or(1);
            let hits: Vec<usize> = text
                .lines()
                .enumerate()
                .skip(start.saturating_sub(1))
                .filter(|(_, l)| l.trim_start().starts_with(&format!("{name}:")))
                .map(|(i, _)| i + 1)
                .collect();
            if let Some(second) = hits.get(1) {
                line = Some(*second);
                field = format!("services.{name}");
            }
        }
        SpecError { file: file.to_owned(), line, field, message }
    }
}

/// The 1-based line of a top-level key.
fn top_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines().position(|l| l.strip_prefix(key).is_some_and(|r| r.trim_start().starts_with(':'))).map(|i| i + 1)
}

/// The mapping key written on 1-based line `line`, if any.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let l = text.lines().nth(line.checked_sub(1)?)?;
    let key = l.trim_start().trim_start_matches("- ").split_once(':')?.0.trim();
    (!key.is_empty() && !key.contains(' ')).then(|| key.to_owned())
}

// === Raw YAML shape ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    // Top-level scalars are checked after parsing: the YAML parser places errors raised inside
    // them at the start of the document, and their line is easy to find (column 0).
    preview: Option<String>,
    algorithm: Option<String>,
    token_ttl: Option<String>,
    ttl: Option<String>,
    key_custody: Option<String>,
    rotation_period: Option<String>,
    mode: Option<String>,
    services: Option<Services>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    address: Option<Address>,
    #[serde(default)]
    calls: Vec<CallField>,
    #[serde(default)]
    accept_preview_audience: bool,
}

struct Address(String);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = s.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) && !host.contains(['/', ' '])
        });
        if !ok {
            return Err(de::Error::custom(format!("`{s}` is not host:port")));
        }
        Ok(Address(s))
    }
}

struct CallField(CallSpec);

impl<'de> Deserialize<'de> for CallField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CallSpec::parse(&s).map(CallField).map_err(de::Error::custom)
    }
}

/// The services mapping, in order, refusing duplicate names.
struct Services(Vec<(ServiceName, RawService)>);

impl<'de> Deserialize<'de> for Services {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Services;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of service name to service")
            }
            fn visit_unit<E>(self) -> Result<Services, E> {
                Ok(Services(Vec::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Services, A::Error> {
                let mut out: Vec<(ServiceName, RawService)> = Vec::new();
                while let Some(name) = map.next_key::<ServiceName>()? {
                    if out.iter().any(|(n, _)| n == &name) {
                        return Err(de::Error::custom(format!("duplicate service `{name}`")));
                    }
                    let svc: RawService = map.next_value()?;
                    out.push((name, svc));
                }
                Ok(Services(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// What the control plane stores of a spec: everything the registry is built from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewConfig {
    /// Algorithm of every service key.
    pub algorithm: Algorithm,
    /// Token lifetime, seconds.
    pub token_ttl_s: u64,
    /// Reap after this many seconds, if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    /// Key custody; absent in stored configs written before custody modes existed.
    #[serde(default, skip_serializing_if = "KeyCustody::is_sidecar")]
    pub key_custody: KeyCustody,
    /// Scheduled rotation period, seconds (`pvid serve` rotates), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_s: Option<u64>,
    /// Per-service or shared keys; absent in configs written before the mode existed.
    #[serde(default, skip_serializing_if = "CredentialMode::is_per_service")]
    pub mode: CredentialMode,
    /// Services in spec order.
    pub services: Vec<ServiceConfig>,
    /// Allowed calls.
    pub policy: Vec<CallRule>,
}

/// One service of a [`PreviewConfig`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name.
    pub name: ServiceName,
    /// Inbound sidecar address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Accepts the preview-wide audience.
    #[serde(default)]
    pub accept_preview_audience: bool,
}

impl PreviewSpec {
    /// The stored form of the spec.
    pub fn config(&self) -> PreviewConfig {
        PreviewConfig {
            algorithm: self.algorithm,
            token_ttl_s: self.token_ttl.as_secs(),
            ttl_s: self.ttl.map(|d| d.as_secs()),
            key_custody: self.key_custody,
            rotation_period_s: self.rotation_period.map(|d| d.as_secs()),
            mode: self.mode,
            services: self
                .services
                .iter()
                .map(|s| ServiceConfig {
                    name: s.name.clone(),
                    address: s.address.clone(),
                    accept_preview_audience: s.accept_preview_audience,
                })
                .collect(),
            policy: self.policy_rules(),
        }
    }
}
