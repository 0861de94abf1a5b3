//! flotilla's credential layer: agents use secrets the model never sees.
//!
//! - [`store`]: secrets at rest, AES-256-GCM under a key kept outside the
//!   database (a 0600 key file under the data directory).
//! - [`grant`]: what a session may use: secret, hosts, methods, path
//!   prefixes, TTL; a child's grants are a subset of its parent's.
//! - [`inject`]: the egress proxy hook that swaps placeholders for real
//!   values on requests to granted hosts only, and blocks them elsewhere.
//! - [`redact`]: every granted value (and its base64, URL-encoded and hex
//!   forms) becomes `[secret:NAME]` before anything is stored or sent.
//!
//! Inside a sandbox an agent sees only placeholders
//! (`GITHUB_TOKEN=flotilla-ph-<random>`); real values exist only in the
//! daemon, between the vault and the proxy.

pub mod grant;
pub mod inject;
pub mod redact;
pub mod store;

use serde::{Deserialize, Serialize};

/// The prefix of every placeholder.
pub const PLACEHOLDER_PREFIX: &str = "flotilla-ph-";

/// A fresh placeholder: [`PLACEHOLDER_PREFIX`] and 32 random hex digits.
pub fn new_placeholder() -> String {
    let bytes: [u8; 16] = rand::random();
    format!("{PLACEHOLDER_PREFIX}{}", hex::encode(bytes))
}

/// A header the proxy adds to requests for a secret's hosts, e.g.
/// `Authorization: Bearer {secret}` (`{secret}` is the value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderTemplate {
    /// The header name, e.g. `Authorization`.
    pub name: String,
    /// The value with `{secret}` where the secret goes.
    pub value: String,
}

/// A stored secret's description: everything but the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretSpec {
    /// `[a-z0-9_-]{1,64}`, starting with a letter.
    pub name: String,
    /// Hosts the secret may be sent to: `example.com` or `*.example.com`.
    pub hosts: Vec<String>,
    /// Headers added to requests for those hosts.
    pub headers: Vec<HeaderTemplate>,
    /// The variable that holds the placeholder in the sandbox (default:
    /// the name upper-cased with `_TOKEN`, e.g. `GITHUB_TOKEN`).
    pub env: String,
    /// Also replace placeholders in query strings.
    pub inject_query: bool,
    /// Also replace placeholders in request bodies.
    pub inject_body: bool,
    /// Allow sending it over plain `http://` (refused by default).
    pub allow_http: bool,
}

/// One secret a session may use, with its placeholder (the event log's
/// type: grants are recorded in `SecretsGranted`).
pub use flotilla_protocol::SecretGrant as Grant;

/// One use (or blocked use) of a secret, for the audit trail (recorded as
/// `SecretUsed`).
pub use flotilla_protocol::SecretUse;
