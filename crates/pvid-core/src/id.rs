//! Names parsed at the boundary: preview ids and service names are DNS labels
//! (`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`), and identities derive from them.

use std::fmt;
use std::str::FromStr;

/// Checks the DNS label rule shared by preview ids and service names.
fn check_label(kind: &str, s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    let ok_char = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    if b.is_empty() || b.len() > 63 || !b.iter().all(ok_char) || b[0] == b'-' || b[b.len() - 1] == b'-'
    {
        return Err(format!(
            "invalid {kind} `{}`: must be a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')",
            s.escape_debug()
        ));
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                check_label($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// A preview id such as `pr-482`.
    PreviewId,
    "preview id"
);
label_type!(
    /// A service name such as `payments`.
    ServiceName,
    "service name"
);

/// `preview-<id>-<svc>`: both the issuer and the audience of a service.
pub fn service_identity(preview: &PreviewId, service: &ServiceName) -> String {
    format!("preview-{preview}-{service}")
}

/// `preview-<id>`: the preview-wide audience (accepted only where the spec allows it).
pub fn preview_audience(preview: &PreviewId) -> String {
    format!("preview-{preview}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels_and_rejects_the_rest() {
        for ok in ["pr-482", "a", "0", "api-v2", &"a".repeat(63)] {
            assert!(ok.parse::<PreviewId>().is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "pr_1", "pr.1", "p r", &"a".repeat(64), "é"] {
            assert!(bad.parse::<ServiceName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identities_follow_the_design_names() {
        let p: PreviewId = "pr-482".parse().unwrap();
        let s: ServiceName = "payments".parse().unwrap();
        assert_eq!(service_identity(&p, &s), "preview-pr-482-payments");
        assert_eq!(preview_audience(&p), "preview-pr-482");
    }
}
