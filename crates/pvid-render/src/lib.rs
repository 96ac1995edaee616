//! pvid-render: from one preview spec, the documents each substrate needs to give a preview the
//! same isolation: preview-scoped identities, default deny, and exactly the calls the spec allows.
//!
//! Pure functions: `(config, registry, secrets, options) → files`. Nothing here reads or writes a
//! file or a store; the CLI (`pvid render`) loads the spec, the registry and (on request) the
//! private keys, calls [`render`], and writes what comes back.
//!
//! | target | what is rendered |
//! |---|---|
//! | [`Target::K8s`] | Namespace, NetworkPolicies (default deny, DNS, exactly the spec's edges), ServiceAccounts, Services in front of the sidecars, the registry ConfigMap, per-service env ConfigMaps and Secrets, a sidecar patch per Deployment, a kustomize Component |
//! | [`Target::Istio`] | deny-all and other-namespace DENY AuthorizationPolicies, one ALLOW per service, PeerAuthentication STRICT, RequestAuthentication with the preview's JWKS |
//! | [`Target::Linkerd`] | the namespace with default-inbound-policy `deny`, a Server per service, HTTPRoutes, AuthorizationPolicies and MeshTLSAuthentications that admit exactly the spec's callers |
//! | [`Target::Compose`] | an override file with a sidecar per service, one network per preview, key files as Compose secrets |
//! | [`Target::Serverless`] | AWS IAM roles, policies and function URL configs; Cloud Run service accounts and `run.invoker` bindings |
//!
//! Output is deterministic: services and rules are sorted, mapping keys are sorted, names are
//! derived from the preview and service names (never from a counter), so a re-render of the same
//! input is byte-identical and diffs cleanly in a pull request. See `docs/substrates.md`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(clippy::unwrap_used)]

mod compose;
mod doc;
mod error;
mod istio;
mod k8s;
mod linkerd;
mod model;
mod serverless;

use pvid_core::{PreviewConfig, PreviewId, Registry, ServiceName};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

pub use error::RenderError;
pub use linkerd::route_name as linkerd_route_name;

/// A substrate pvid renders for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Docker Compose: an override file with a sidecar per service.
    Compose,
    /// Istio authorization on top of the Kubernetes objects.
    Istio,
    /// Kubernetes: namespace, network policies, identities, sidecars.
    K8s,
    /// Linkerd authorization on top of the Kubernetes objects.
    Linkerd,
    /// AWS Lambda (IAM) and Google Cloud Run (IAM) documents.
    Serverless,
}

impl Target {
    /// Every target, in the order the documentation lists them.
    pub const ALL: [Target; 5] = [Target::K8s, Target::Istio, Target::Linkerd, Target::Compose, Target::Serverless];

    /// The name used on the command line and as the output folder.
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Compose => "compose",
            Target::Istio => "istio",
            Target::K8s => "k8s",
            Target::Linkerd => "linkerd",
            Target::Serverless => "serverless",
        }
    }

    /// Whether the output is a stream of Kubernetes objects (printable as one YAML stream).
    pub fn is_kubernetes(self) -> bool {
        matches!(self, Target::K8s | Target::Istio | Target::Linkerd)
    }
}

impl FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown target `{s}` (use k8s, istio, linkerd, compose or serverless)"))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who holds a service's private key (DESIGN.md, "Key custody").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Custody {
    /// Each sidecar holds its own private key, handed over as a Kubernetes Secret or a Compose
    /// secret file. The only mode rendered today.
    #[default]
    Sidecar,
}

/// A private key document as the secret store holds it (`{"kid","alg","pkcs8"}`), the exact
/// bytes `pvid proxy --key-file` reads. Zeroised on drop; Debug never shows it.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps secret bytes.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> SecretBytes {
        SecretBytes(bytes)
    }

    /// The bytes.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, ***)", self.0.len())
    }
}

/// Knobs of the rendered output. [`RenderOptions::default`] is what `pvid render` uses unless a
/// flag says otherwise; every default is documented in `docs/substrates.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderOptions {
    /// The image that runs `pvid proxy` (Kubernetes and Compose sidecars).
    pub image: String,
    /// The port the application listens on, inside its pod or container, on loopback.
    pub app_port: u16,
    /// The sidecar's inbound port: the only port other services may reach.
    pub inbound_port: u16,
    /// The sidecar's egress port, on loopback: the application calls `http://127.0.0.1:<port>/<callee>/...`.
    pub egress_port: u16,
    /// `uid:gid` the Compose sidecar runs as; the key files are written owned by it.
    pub sidecar_user: (u32, u32),
    /// The Compose output folder as the override file names it (Compose resolves relative paths
    /// from the project directory, the folder of the first `-f` file).
    pub compose_dir: String,
    /// Istio trust domain of the SPIFFE principals.
    pub trust_domain: String,
    /// Namespace of the Istio control plane (istiod), for the egress NetworkPolicy.
    pub istio_namespace: String,
    /// Namespace of the Linkerd control plane, for the egress NetworkPolicy.
    pub linkerd_namespace: String,
    /// AWS partition, region and account in rendered ARNs (`*` matches any region/account).
    pub aws_partition: String,
    /// AWS region in ARNs.
    pub aws_region: String,
    /// AWS account id in ARNs.
    pub aws_account: String,
    /// Google Cloud project of the Cloud Run services and service accounts.
    pub gcp_project: String,
}

impl Default for RenderOptions {
    fn default() -> RenderOptions {
        RenderOptions {
            image: concat!("pvid:", env!("CARGO_PKG_VERSION")).to_owned(),
            app_port: 8080,
            inbound_port: 8400,
            egress_port: 8401,
            sidecar_user: (65532, 65532),
            compose_dir: ".".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            istio_namespace: "istio-system".to_owned(),
            linkerd_namespace: "linkerd".to_owned(),
            aws_partition: "aws".to_owned(),
            aws_region: "*".to_owned(),
            aws_account: "*".to_owned(),
            gcp_project: "PROJECT_ID".to_owned(),
        }
    }
}

/// Everything a render reads.
#[derive(Clone, Copy, Debug)]
pub struct RenderInput<'a> {
    /// The preview.
    pub preview: &'a PreviewId,
    /// Its services and call policy (from the spec, or as stored at provisioning).
    pub config: &'a PreviewConfig,
    /// The published registry (JWKS, service map), when the preview is provisioned. Targets
    /// that need public keys leave those documents out, with a warning, when it is `None`.
    pub registry: Option<&'a Registry>,
    /// Private key documents by service, only when the user asked for secrets
    /// (`--include-secrets`) and custody is [`Custody::Sidecar`].
    pub secrets: Option<&'a BTreeMap<ServiceName, SecretBytes>>,
    /// Key custody of the preview.
    pub custody: Custody,
    /// Rendering knobs.
    pub options: &'a RenderOptions,
}

/// One rendered file, with a path relative to the target's output folder.
#[derive(Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Relative path (`networkpolicies.yaml`, `secrets/api.json`).
    pub path: String,
    /// The content.
    pub contents: String,
    /// Whether it holds private key material: written with mode 0600 in a 0700 folder, and never
    /// printed.
    pub secret: bool,
}

impl Drop for RenderedFile {
    fn drop(&mut self) {
        if self.secret {
            zeroize::Zeroize::zeroize(&mut self.contents);
        }
    }
}

impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            write!(f, "RenderedFile({}, secret, {} bytes)", self.path, self.contents.len())
        } else {
            write!(f, "RenderedFile({}, {} bytes)", self.path, self.contents.len())
        }
    }
}

/// What a render produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// Files, sorted by path.
    pub files: Vec<RenderedFile>,
    /// Things the user must know (left-out documents, limits of the substrate).
    pub warnings: Vec<String>,
}

impl Rendered {
    /// The file at `path`, if rendered.
    pub fn file(&self, path: &str) -> Option<&RenderedFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Renders one target. Fails, naming the service and call, when the spec asks for something the
/// substrate cannot express, or when a name the substrate derives would be invalid there.
pub fn render(target: Target, input: &RenderInput<'_>) -> Result<Rendered, RenderError> {
    let plan = model::Plan::new(target, input)?;
    let mut out = match target {
        Target::Compose => compose::render(&plan)?,
        Target::Istio => istio::render(&plan)?,
        Target::K8s => k8s::render(&plan)?,
        Target::Linkerd => linkerd::render(&plan)?,
        Target::Serverless => serverless::render(&plan)?,
    };
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
