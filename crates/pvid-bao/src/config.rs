//! Where OpenBao is and how pvid talks to it: address, token, namespace, CA, mount paths and
//! timeout, read from the same environment variables the `bao` and `vault` CLIs use, through an
//! injectable lookup so tests never touch the process environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

/// `BAO_ADDR`: the server address (`http://127.0.0.1:8200`).
pub const ENV_BAO_ADDR: &str = "BAO_ADDR";
/// `VAULT_ADDR`: read when `BAO_ADDR` is unset.
pub const ENV_VAULT_ADDR: &str = "VAULT_ADDR";
/// `BAO_TOKEN`: the token.
pub const ENV_BAO_TOKEN: &str = "BAO_TOKEN";
/// `VAULT_TOKEN`: read when `BAO_TOKEN` is unset.
pub const ENV_VAULT_TOKEN: &str = "VAULT_TOKEN";
/// `PVID_BAO_TOKEN_FILE`: a file holding the token (used when no token variable is set).
pub const ENV_TOKEN_FILE: &str = "PVID_BAO_TOKEN_FILE";
/// `BAO_NAMESPACE` / `VAULT_NAMESPACE`: sent as `X-Vault-Namespace`.
pub const ENV_BAO_NAMESPACE: &str = "BAO_NAMESPACE";
/// See [`ENV_BAO_NAMESPACE`].
pub const ENV_VAULT_NAMESPACE: &str = "VAULT_NAMESPACE";
/// `BAO_CACERT` / `VAULT_CACERT`: a PEM file of CA certificates trusted for `https` addresses.
pub const ENV_BAO_CACERT: &str = "BAO_CACERT";
/// See [`ENV_BAO_CACERT`].
pub const ENV_VAULT_CACERT: &str = "VAULT_CACERT";
/// `PVID_BAO_KV_MOUNT`: the KV v2 mount holding `preview/<id>/<svc>/private-key` (default `secret`).
pub const ENV_KV_MOUNT: &str = "PVID_BAO_KV_MOUNT";
/// `PVID_BAO_TRANSIT_MOUNT`: the Transit mount holding `preview-<id>-<svc>` keys (default `transit`).
pub const ENV_TRANSIT_MOUNT: &str = "PVID_BAO_TRANSIT_MOUNT";
/// `PVID_BAO_TIMEOUT`: how long one request may take, e.g. `10s` (default 10 s).
pub const ENV_TIMEOUT: &str = "PVID_BAO_TIMEOUT";

/// Default KV v2 mount (the dev server mounts KV v2 there).
pub const DEFAULT_KV_MOUNT: &str = "secret";
/// Default Transit mount.
pub const DEFAULT_TRANSIT_MOUNT: &str = "transit";
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A token. Zeroised on drop; Debug and Display never show it.
#[derive(Clone)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// Wraps a token; surrounding whitespace (a token file's newline) is dropped.
    pub fn new(token: &str) -> Token {
        Token(Zeroizing::new(token.trim().to_owned()))
    }

    /// The token, for the `X-Vault-Token` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// How to reach OpenBao.
#[derive(Clone, Debug)]
pub struct BaoConfig {
    /// Server address without a trailing slash (`https://bao.example:8200`).
    pub addr: String,
    /// The token every request carries.
    pub token: Token,
    /// Namespace (`X-Vault-Namespace`), if any.
    pub namespace: Option<String>,
    /// Extra CA certificates (PEM file) for `https` addresses.
    pub ca_cert: Option<PathBuf>,
    /// KV v2 mount path.
    pub kv_mount: String,
    /// Transit mount path.
    pub transit_mount: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The configuration is incomplete or invalid. Names the variable (or flag) at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BaoConfigError {
    /// No address.
    #[error("OpenBao address missing: set BAO_ADDR (or VAULT_ADDR), e.g. http://127.0.0.1:8200")]
    MissingAddr,
    /// The address is not an http(s) URL.
    #[error("{var}={value:?} is not an http:// or https:// address")]
    BadAddr {
        /// Where it came from.
        var: &'static str,
        /// The value.
        value: String,
    },
    /// No token.
    #[error("OpenBao token missing: set BAO_TOKEN (or VAULT_TOKEN), or PVID_BAO_TOKEN_FILE / --bao-token-file")]
    MissingToken,
    /// The token file cannot be read.
    #[error("cannot read the OpenBao token file {path}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("the OpenBao token file {path} is empty")]
    EmptyTokenFile {
        /// The file.
        path: PathBuf,
    },
    /// A mount path is not of the form `a/b-c`.
    #[error("{var}={value:?} is not a mount path (letters, digits, `-`, `_`, `.`, inner `/`)")]
    BadMount {
        /// Where it came from.
        var: &'static str,
        /// The value.
        value: String,
    },
    /// The timeout does not parse.
    #[error("{ENV_TIMEOUT}={value:?}: {reason}")]
    BadTimeout {
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// Values given on the command line; each wins over its environment variable.
#[derive(Clone, Debug, Default)]
pub struct BaoOverrides {
    /// `--bao-token-file`.
    pub token_file: Option<PathBuf>,
    /// `--bao-kv-mount`.
    pub kv_mount: Option<String>,
    /// `--bao-transit-mount`.
    pub transit_mount: Option<String>,
}

impl BaoConfig {
    /// Reads the configuration through `env` (the process environment in the CLI, a map in
    /// tests), with command-line `overrides` first.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, overrides: &BaoOverrides) -> Result<BaoConfig, BaoConfigError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (var, addr) = match (get(ENV_BAO_ADDR), get(ENV_VAULT_ADDR)) {
            (Some(a), _) => (ENV_BAO_ADDR, a),
            (None, Some(a)) => (ENV_VAULT_ADDR, a),
            (None, None) => return Err(BaoConfigError::MissingAddr),
        };
        let addr = addr.trim().trim_end_matches('/').to_owned();
        let valid_addr = ["http://", "https://"]
            .iter()
            .any(|s| addr.strip_prefix(s).is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace)));
        if !valid_addr {
            return Err(BaoConfigError::BadAddr { var, value: addr });
        }
        let token_file = overrides.token_file.clone().or_else(|| get(ENV_TOKEN_FILE).map(PathBuf::from));
        let token = match (&overrides.token_file, get(ENV_BAO_TOKEN).or_else(|| get(ENV_VAULT_TOKEN)), token_file) {
            // An explicit --bao-token-file beats the environment's token.
            (Some(_), _, Some(path)) | (None, None, Some(path)) => {
                let text = Zeroizing::new(
                    std::fs::read_to_string(&path).map_err(|source| BaoConfigError::TokenFile { path: path.clone(), source })?,
                );
                if text.trim().is_empty() {
                    return Err(BaoConfigError::EmptyTokenFile { path });
                }
                Token::new(&text)
            }
            (_, Some(t), _) => Token::new(&t),
            (_, None, None) => return Err(BaoConfigError::MissingToken),
        };
        let mount = |var: &'static str, flag: &Option<String>, default: &str| -> Result<String, BaoConfigError> {
            let value = flag.clone().or_else(|| get(var)).unwrap_or_else(|| default.to_owned());
            let v = value.trim().trim_matches('/').to_owned();
            let ok = !v.is_empty()
                && v.split('/').all(|seg| {
                    !seg.is_empty() && seg.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
                        && seg != "." && seg != ".."
                });
            if ok { Ok(v) } else { Err(BaoConfigError::BadMount { var, value }) }
        };
        let timeout = match get(ENV_TIMEOUT) {
            None => DEFAULT_TIMEOUT,
            Some(v) => {
                let d = pvid_core::duration::parse_duration(v.trim())
                    .map_err(|reason| BaoConfigError::BadTimeout { value: v.clone(), reason })?;
                if d.is_zero() {
                    return Err(BaoConfigError::BadTimeout { value: v, reason: "must be more than 0s".into() });
                }
                d
            }
        };
        Ok(BaoConfig {
            addr,
            token,
            namespace: get(ENV_BAO_NAMESPACE).or_else(|| get(ENV_VAULT_NAMESPACE)).map(|n| n.trim().to_owned()),
            ca_cert: get(ENV_BAO_CACERT).or_else(|| get(ENV_VAULT_CACERT)).map(PathBuf::from),
            kv_mount: mount(ENV_KV_MOUNT, &overrides.kv_mount, DEFAULT_KV_MOUNT)?,
            transit_mount: mount(ENV_TRANSIT_MOUNT, &overrides.transit_mount, DEFAULT_TRANSIT_MOUNT)?,
            timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn bao_variables_win_over_vault_variables() {
        let c = BaoConfig::from_env(
            &env(&[("BAO_ADDR", "http://a:1/"), ("VAULT_ADDR", "http://b:2"), ("VAULT_TOKEN", "v"), ("BAO_TOKEN", "b")]),
            &BaoOverrides::default(),
        )
        .unwrap();
        assert_eq!((c.addr.as_str(), c.token.expose()), ("http://a:1", "b"));
        assert_eq!((c.kv_mount.as_str(), c.transit_mount.as_str(), c.timeout), ("secret", "transit", DEFAULT_TIMEOUT));
        let c = BaoConfig::from_env(&env(&[("VAULT_ADDR", "https://b:2"), ("VAULT_TOKEN", "v")]), &BaoOverrides::default())
            .unwrap();
        assert_eq!((c.addr.as_str(), c.token.expose()), ("https://b:2", "v"));
    }

    #[test]
    fn missing_or_bad_values_name_the_variable() {
        let none = BaoOverrides::default();
        let e = BaoConfig::from_env(&env(&[("BAO_TOKEN", "t")]), &none).unwrap_err();
        assert!(matches!(e, BaoConfigError::MissingAddr), "{e}");
        let e = BaoConfig::from_env(&env(&[("BAO_ADDR", "127.0.0.1:8200"), ("BAO_TOKEN", "t")]), &none).unwrap_err();
        assert_eq!(e.to_string(), "BAO_ADDR=\"127.0.0.1:8200\" is not an http:// or https:// address");
        let e = BaoConfig::from_env(&env(&[("BAO_ADDR", "http://a:1")]), &none).unwrap_err();
        assert!(matches!(e, BaoConfigError::MissingToken), "{e}");
        let e = BaoConfig::from_env(
            &env(&[("BAO_ADDR", "http://a:1"), ("BAO_TOKEN", "t"), ("PVID_BAO_KV_MOUNT", "../kv")]),
            &none,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "PVID_BAO_KV_MOUNT=\"../kv\" is not a mount path (letters, digits, `-`, `_`, `.`, inner `/`)");
        let e = BaoConfig::from_env(&env(&[("BAO_ADDR", "http://a:1"), ("BAO_TOKEN", "t"), ("PVID_BAO_TIMEOUT", "0s")]), &none)
            .unwrap_err();
        assert!(matches!(e, BaoConfigError::BadTimeout { .. }), "{e}");
    }

    #[test]
    fn a_token_file_is_read_and_the_flag_wins_over_the_environment() {
        let dir = std::env::temp_dir().join(format!("pvid-bao-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = BaoConfig::from_env(
            &env(&[("BAO_ADDR", "http://a:1"), ("PVID_BAO_TOKEN_FILE", file.to_str().unwrap())]),
            &BaoOverrides::default(),
        )
        .unwrap();
        assert_eq!(c.token.expose(), "from-file");
        let flags = BaoOverrides { token_file: Some(file.clone()), kv_mount: Some("kv2/".into()), transit_mount: None };
        let c = BaoConfig::from_env(&env(&[("BAO_ADDR", "http://a:1"), ("BAO_TOKEN", "env")]), &flags).unwrap();
        assert_eq!((c.token.expose(), c.kv_mount.as_str()), ("from-file", "kv2"));
        assert_eq!(format!("{:?}", c.token), "Token(***)");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
