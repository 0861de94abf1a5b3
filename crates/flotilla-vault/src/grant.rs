//! What a session may use: grants.
//!
//! A [`Grant`] lets a session use one secret, on some of its hosts, with
//! some methods, under some path prefixes, until some time. A session's
//! grants are [`issue`]d from the secrets' specs (by the user, through
//! [`GrantRequest`]s such as `github:ttl=2h:host=api.github.com:method=GET`);
//! a child session's grants are [`narrow`]ed from its parent's and never
//! allow anything the parent's refuse. [`permits`] is the one check the
//! proxy makes per request; [`sandbox_env`] is what the sandbox sees.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};

use crate::store::{normalize_host_pattern, validate_name, VaultError};
use crate::{Grant, SecretSpec};

/// The keys [`GrantRequest`]'s text form knows.
pub const REQUEST_KEYS: &[&str] = &["ttl", "host", "method", "path"];

/// A request for a grant, as given on the command line:
/// `NAME[:ttl=2h][:host=api.github.com][:host=...][:method=GET,POST][:path=/repos/]`.
///
/// Every list may be given as repeated keys or `,`-separated (or both);
/// empty lists mean "the default": the secret's (or the parent's) hosts,
/// any method (or the parent's), any path (or the parent's). TTL units are
/// `s`, `m`, `h` and `d` (`90m`, `2h`, `1d`); no TTL means no expiry (or the
/// parent's). A path may contain `:` (`path=/v1/models/x:generate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRequest {
    /// The secret's name.
    pub secret: String,
    /// Hosts (`example.com` or `*.example.com`); empty: the default.
    pub hosts: Vec<String>,
    /// Methods; empty: the default.
    pub methods: Vec<String>,
    /// Path prefixes (starting with `/`); empty: the default.
    pub path_prefixes: Vec<String>,
    /// How long the grant lasts; `None`: the default.
    pub ttl: Option<Duration>,
}

impl GrantRequest {
    /// A request for `secret` with every default.
    pub fn new(secret: impl Into<String>) -> GrantRequest {
        GrantRequest {
            secret: secret.into(),
            hosts: Vec::new(),
            methods: Vec::new(),
            path_prefixes: Vec::new(),
            ttl: None,
        }
    }
}

/// Why a grant could not be issued or narrowed, or a request not parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Part of the request is malformed.
    #[error("invalid grant {field}: {detail}")]
    Invalid {
        /// Which part: `secret`, `ttl`, `host`, `method`, `path`, `key`.
        field: &'static str,
        /// What is wrong and what is accepted.
        detail: String,
    },
    /// [`issue`] was given the spec of another secret.
    #[error("the request is for secret {requested:?} but the spec given is {secret:?}")]
    SecretMismatch {
        /// The request's secret.
        requested: String,
        /// The spec's secret.
        secret: String,
    },
    /// The parent holds no grant for the secret.
    #[error(
        "the parent session holds no grant for secret {secret:?} (it holds: {}); \
         a child can only use secrets its parent was granted",
        list(.parent_secrets)
    )]
    NotInParent {
        /// The secret asked for.
        secret: String,
        /// The secrets the parent holds.
        parent_secrets: Vec<String>,
    },
    /// A host is not covered by the secret's (or the parent's) hosts.
    #[error("host {host:?} is not allowed for secret {secret:?} (allowed: {})", list(.allowed))]
    HostNotAllowed {
        /// The secret.
        secret: String,
        /// The host asked for.
        host: String,
        /// What is allowed.
        allowed: Vec<String>,
    },
    /// A method is not among the parent's.
    #[error("method {method} is not allowed for secret {secret:?} (allowed: {})", list(.allowed))]
    MethodNotAllowed {
        /// The secret.
        secret: String,
        /// The method asked for.
        method: String,
        /// What is allowed.
        allowed: Vec<String>,
    },
    /// A path prefix does not extend any of the parent's.
    #[error(
        "path prefix {prefix:?} is not allowed for secret {secret:?}: it must start with one \
         of {}",
        list(.allowed)
    )]
    PathNotAllowed {
        /// The secret.
        secret: String,
        /// The prefix asked for.
        prefix: String,
        /// What is allowed.
        allowed: Vec<String>,
    },
    /// The TTL asked for outlives the parent's grant.
    #[error(
        "a TTL of {}s for secret {secret:?} outlives the parent's grant, which ends in {}s; \
         ask for less or leave the TTL out to inherit the parent's",
        .requested_ms / 1000,
        .left_ms / 1000
    )]
    TtlTooLong {
        /// The secret.
        secret: String,
        /// The TTL asked for, in milliseconds.
        requested_ms: u64,
        /// What is left of the parent's, in milliseconds.
        left_ms: u64,
    },
    /// The parent's grant has expired.
    #[error(
        "the parent's grant for secret {secret:?} expired (at {at_ms} ms since the epoch); \
         grant the parent the secret again first"
    )]
    ParentExpired {
        /// The secret.
        secret: String,
        /// When it expired.
        at_ms: u64,
    },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Why [`permits`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The host is not among the grant's hosts.
    Host,
    /// The method is not among the grant's methods.
    Method,
    /// The path is not under the grant's path prefixes (or has `.`/`..`
    /// segments, which could leave them once the server resolves them).
    Path,
    /// The grant has expired.
    Expired {
        /// When, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Host => f.write_str(
                "the host is not one the secret is granted for; if the request is legitimate, \
                 grant the secret for that host (`:host=HOST`)",
            ),
            Refusal::Method => f.write_str(
                "the method is not one the secret is granted for; if the request is legitimate, \
                 grant that method too (`:method=...`)",
            ),
            Refusal::Path => f.write_str(
                "the path is not under the prefixes the secret is granted for (or contains \
                 `.`/`..` segments); if the request is legitimate, grant that prefix \
                 (`:path=/...`)",
            ),
            Refusal::Expired { at_ms } => write!(
                f,
                "the grant expired at {at_ms} ms since the epoch; grant the secret again \
                 (with a longer `:ttl=`) if the session still needs it"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

fn invalid(field: &'static str, detail: String) -> GrantError {
    GrantError::Invalid { field, detail }
}

fn from_vault(field: &'static str, e: VaultError) -> GrantError {
    match e {
        VaultError::Invalid { detail, .. } => invalid(field, detail),
        other => invalid(field, other.to_string()),
    }
}

/// Parses a TTL: a positive number followed by `s`, `m`, `h` or `d`.
fn parse_ttl(text: &str) -> Result<Duration, GrantError> {
    let bad = || {
        invalid(
            "ttl",
            format!("{text:?}: give a number and a unit s, m, h or d (e.g. 90m, 2h, 1d)"),
        )
    };
    // The unit is the last character, which may be any char (`2é`).
    let unit_at = text.char_indices().last().map(|(i, _)| i).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(unit_at);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    if n == 0 {
        return Err(invalid(
            "ttl",
            "a TTL of 0 would make the grant useless; leave it out for no expiry".into(),
        ));
    }
    let secs = n
        .checked_mul(scale)
        .filter(|s| *s <= 100 * 365 * 86_400)
        .ok_or_else(|| invalid("ttl", format!("{text:?} is too long (at most 100 years)")))?;
    Ok(Duration::from_secs(secs))
}

fn format_ttl(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    if ttl.subsec_nanos() == 0 && secs > 0 {
        for (unit, scale) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs.is_multiple_of(scale) {
                return format!("{}{unit}", secs / scale);
            }
        }
    }
    // Whole seconds, rounded up so that a sub-second TTL stays non-zero.
    let up = secs + u64::from(ttl.subsec_nanos() > 0);
    format!("{up}s")
}

fn ttl_ms(ttl: Duration) -> Result<u64, GrantError> {
    if ttl.is_zero() {
        return Err(invalid(
            "ttl",
            "a TTL of 0 would make the grant useless; leave it out for no expiry".into(),
        ));
    }
    u64::try_from(ttl.as_millis())
        .map_err(|_| invalid("ttl", "the TTL is too long".into()))
        .map(|ms| ms.max(1))
}

fn normalize_host(host: &str) -> Result<String, GrantError> {
    normalize_host_pattern(host).map_err(|e| from_vault("host", e))
}

fn normalize_method(method: &str) -> Result<String, GrantError> {
    let m = method.to_ascii_uppercase();
    let ok = !m.is_empty()
        && m.len() <= 32
        && m.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(m)
    } else {
        Err(invalid(
            "method",
            format!("{method:?} is not an HTTP method (e.g. GET, POST)"),
        ))
    }
}

fn normalize_prefix(prefix: &str) -> Result<String, GrantError> {
    if !prefix.starts_with('/') {
        return Err(invalid(
            "path",
            format!("{prefix:?} must start with '/' (e.g. /repos/)"),
        ));
    }
    if prefix
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#' || c == '\\')
    {
        return Err(invalid(
            "path",
            format!("{prefix:?} contains whitespace, a control character, '?', '#' or '\\'"),
        ));
    }
    if has_dot_segment(prefix) {
        return Err(invalid(
            "path",
            format!("{prefix:?} contains a '.' or '..' segment"),
        ));
    }
    Ok(prefix.to_string())
}

/// Whether a path, percent-decoded once, has a `.` or `..` segment
/// (separated by `/` or `\`): a server resolving it may end up outside the
/// prefix the text starts with.
fn has_dot_segment(path: &str) -> bool {
    let decoded: Vec<u8> = percent_decode_str(path).collect();
    decoded
        .split(|b| *b == b'/' || *b == b'\\')
        .any(|seg| seg == b"." || seg == b"..")
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(i.clone()))
        .collect()
}

/// The request with every field checked and normalized (hosts lower-cased,
/// methods upper-cased, duplicates dropped).
fn normalized(req: &GrantRequest) -> Result<GrantRequest, GrantError> {
    validate_name(&req.secret).map_err(|e| from_vault("secret", e))?;
    let hosts = req
        .hosts
        .iter()
        .map(|h| normalize_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let methods = req
        .methods
        .iter()
        .map(|m| normalize_method(m))
        .collect::<Result<Vec<_>, _>>()?;
    let path_prefixes = req
        .path_prefixes
        .iter()
        .map(|p| normalize_prefix(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(ttl) = req.ttl {
        ttl_ms(ttl)?;
    }
    Ok(GrantRequest {
        secret: req.secret.clone(),
        hosts: dedup(hosts),
        methods: dedup(methods),
        path_prefixes: dedup(path_prefixes),
        ttl: req.ttl,
    })
}

impl FromStr for GrantRequest {
    type Err = GrantError;

    fn from_str(s: &str) -> Result<GrantRequest, GrantError> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let mut fields: Vec<(String, String)> = Vec::new();
        for part in parts {
            let key = part
                .split_once('=')
                .map(|(k, _)| k)
                .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase()));
            match key {
                Some(k) => {
                    let key = match k {
                        "hosts" => "host",
                        "methods" => "method",
                        "paths" => "path",
                        k => k,
                    };
                    if !REQUEST_KEYS.contains(&key) {
                        return Err(invalid(
                            "key",
                            format!(
                                "unknown key {k:?} in {s:?}; known keys: {}",
                                REQUEST_KEYS.join(", ")
                            ),
                        ));
                    }
                    let value = &part[k.len() + 1..];
                    fields.push((key.to_string(), value.to_string()));
                }
                None => match fields.last_mut() {
                    // A ':' inside a path (`/v1/models/x:generate`).
                    Some((k, v)) if k == "path" => {
                        v.push(':');
                        v.push_str(part);
                    }
                    Some((k, v)) if k == "host" => {
                        return Err(invalid(
                            "host",
                            format!(
                                "{:?} in {s:?}: give the host alone, without scheme or port \
                                 (e.g. host=api.github.com)",
                                format!("{v}:{part}")
                            ),
                        ));
                    }
                    _ => {
                        return Err(invalid(
                            "key",
                            format!(
                                "{part:?} in {s:?} is not KEY=VALUE; known keys: {}",
                                REQUEST_KEYS.join(", ")
                            ),
                        ));
                    }
                },
            }
        }
        let mut req = GrantRequest::new(name);
        for (key, value) in fields {
            let items: Vec<&str> = value.split(',').collect();
            if items.iter().any(|i| i.is_empty()) {
                return Err(invalid(
                    "key",
                    format!("{key}={value:?} has an empty item in {s:?}"),
                ));
            }
            match key.as_str() {
                "ttl" => {
                    if req.ttl.is_some() {
                        return Err(invalid("ttl", format!("ttl is given twice in {s:?}")));
                    }
                    req.ttl = Some(parse_ttl(&value)?);
                }
                "host" => req.hosts.extend(items.into_iter().map(String::from)),
                "method" => req.methods.extend(items.into_iter().map(String::from)),
                _ => req
                    .path_prefixes
                    .extend(items.into_iter().map(String::from)),
            }
        }
        normalized(&req)
    }
}

impl fmt::Display for GrantRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.secret)?;
        if let Some(ttl) = self.ttl {
            write!(f, ":ttl={}", format_ttl(ttl))?;
        }
        if !self.hosts.is_empty() {
            write!(f, ":host={}", self.hosts.join(","))?;
        }
        if !self.methods.is_empty() {
            write!(f, ":method={}", self.methods.join(","))?;
        }
        if !self.path_prefixes.is_empty() {
            write!(f, ":path={}", self.path_prefixes.join(","))?;
        }
        Ok(())
    }
}

fn trim_host(host: &str) -> String {
    let lower = host.to_ascii_lowercase();
    match lower.strip_suffix('.') {
        Some(h) => h.to_string(),
        None => lower,
    }
}

/// Whether a host matches a pattern: exactly (case-insensitive, a trailing
/// dot ignored), or `*.example.com` for subdomains of `example.com` at any
/// depth (not `example.com` itself). `host` has no port.
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = trim_host(pattern);
    let host = trim_host(host);
    if host.is_empty() || pattern.is_empty() {
        return false;
    }
    match pattern.strip_prefix("*.") {
        Some(base) => {
            !base.is_empty()
                && host.len() > base.len() + 1
                && host.ends_with(base)
                && host.as_bytes()[host.len() - base.len() - 1] == b'.'
        }
        None => pattern == host,
    }
}

/// Whether host pattern `outer` allows everything `inner` does.
fn covers(outer: &str, inner: &str) -> bool {
    match inner.strip_prefix("*.") {
        // A wildcard is covered only by a wildcard over the same or a
        // parent domain.
        Some(inner_base) => match outer.strip_prefix("*.") {
            Some(outer_base) => inner_base == outer_base || host_matches(outer, inner_base),
            None => false,
        },
        None => host_matches(outer, inner),
    }
}

fn check_hosts(secret: &str, asked: &[String], allowed: &[String]) -> Result<(), GrantError> {
    for host in asked {
        if !allowed.iter().any(|a| covers(a, host)) {
            return Err(GrantError::HostNotAllowed {
                secret: secret.to_string(),
                host: host.clone(),
                allowed: allowed.to_vec(),
            });
        }
    }
    Ok(())
}

/// Issues a grant of `spec`'s secret for a session (at `now_ms`): hosts
/// default to the secret's and must each be covered by them; methods are
/// upper-cased; path prefixes start with `/`; the expiry is `now + ttl`
/// (none without a TTL); a fresh placeholder goes into `spec.env`.
pub fn issue(spec: &SecretSpec, req: &GrantRequest, now_ms: u64) -> Result<Grant, GrantError> {
    let req = normalized(req)?;
    if req.secret != spec.name {
        return Err(GrantError::SecretMismatch {
            requested: req.secret,
            secret: spec.name.clone(),
        });
    }
    let spec_hosts = spec
        .hosts
        .iter()
        .map(|h| normalize_host(h))
        .collect::<Result<Vec<_>, _>>()?;
    let hosts = if req.hosts.is_empty() {
        spec_hosts
    } else {
        check_hosts(&req.secret, &req.hosts, &spec_hosts)?;
        req.hosts
    };
    let expires_at_ms = match req.ttl {
        Some(ttl) => Some(now_ms.saturating_add(ttl_ms(ttl)?)),
        None => None,
    };
    Ok(Grant {
        secret: req.secret,
        hosts,
        methods: req.methods,
        path_prefixes: req.path_prefixes,
        expires_at_ms,
        placeholder: crate::new_placeholder(),
        env: spec.env.clone(),
    })
}

/// Narrows a parent session's grant of `req.secret` for a child (at
/// `now_ms`). The result allows nothing the parent's grant refuses: hosts
/// covered by the parent's (default: the parent's), methods a subset (a
/// parent with none allows any; a child with none inherits the parent's),
/// path prefixes each extending one of the parent's (default: the
/// parent's), expiry no later than the parent's (default: the parent's). The
/// placeholder and environment variable are the parent's. With several
/// parent grants of one secret, the first is used.
pub fn narrow(parent: &[Grant], req: &GrantRequest, now_ms: u64) -> Result<Grant, GrantError> {
    let req = normalized(req)?;
    let secret = req.secret.clone();
    let Some(p) = parent.iter().find(|g| g.secret == secret) else {
        return Err(GrantError::NotInParent {
            secret,
            parent_secrets: dedup(parent.iter().map(|g| g.secret.clone()).collect()),
        });
    };
    if let Some(at_ms) = p.expires_at_ms {
        if at_ms <= now_ms {
            return Err(GrantError::ParentExpired { secret, at_ms });
        }
    }
    let hosts = if req.hosts.is_empty() {
        p.hosts.clone()
    } else {
        check_hosts(&secret, &req.hosts, &p.hosts)?;
        req.hosts
    };
    let methods = if req.methods.is_empty() {
        p.methods.clone()
    } else {
        if !p.methods.is_empty() {
            if let Some(m) = req.methods.iter().find(|m| !p.methods.contains(m)) {
                return Err(GrantError::MethodNotAllowed {
                    secret,
                    method: m.clone(),
                    allowed: p.methods.clone(),
                });
            }
        }
        req.methods
    };
    let path_prefixes = if req.path_prefixes.is_empty() {
        p.path_prefixes.clone()
    } else {
        if !p.path_prefixes.is_empty() {
            if let Some(prefix) = req
                .path_prefixes
                .iter()
                .find(|c| !path_allowed(&p.path_prefixes, c))
            {
                return Err(GrantError::PathNotAllowed {
                    secret,
                    prefix: prefix.clone(),
                    allowed: p.path_prefixes.clone(),
                });
            }
        }
        req.path_prefixes
    };
    let expires_at_ms = match req.ttl {
        None => p.expires_at_ms,
        Some(ttl) => {
            let requested_ms = ttl_ms(ttl)?;
            let at = now_ms.saturating_add(requested_ms);
            match p.expires_at_ms {
                Some(pat) if at > pat => {
                    return Err(GrantError::TtlTooLong {
                        secret,
                        requested_ms,
                        left_ms: pat.saturating_sub(now_ms),
                    });
                }
                _ => Some(at),
            }
        }
    };
    Ok(Grant {
        secret,
        hosts,
        methods,
        path_prefixes,
        expires_at_ms,
        placeholder: p.placeholder.clone(),
        env: p.env.clone(),
    })
}

/// Whether `grant` allows a request at `now_ms`: not expired, `host` (no
/// port) matching one of its hosts, `method` (exactly, upper case) among its
/// methods if it names any, and `path` (its query and fragment ignored)
/// under one of its prefixes if it names any. With prefixes, a path with
/// `.` or `..` segments (also percent-encoded) is refused: the server could
/// resolve it to somewhere outside them.
pub fn permits(
    grant: &Grant,
    host: &str,
    method: &str,
    path: &str,
    now_ms: u64,
) -> Result<(), Refusal> {
    if let Some(at_ms) = grant.expires_at_ms {
        if now_ms >= at_ms {
            return Err(Refusal::Expired { at_ms });
        }
    }
    if !grant.hosts.iter().any(|p| host_matches(p, host)) {
        return Err(Refusal::Host);
    }
    if !grant.methods.is_empty() && !grant.methods.iter().any(|m| m == method) {
        return Err(Refusal::Method);
    }
    if !path_allowed(&grant.path_prefixes, path) {
        return Err(Refusal::Path);
    }
    Ok(())
}

/// Whether `path` (a query or fragment ignored) is under one of
/// `prefixes`; any path when there are none. A prefix matches on a segment
/// boundary: `/repos/acme` allows `/repos/acme` and `/repos/acme/x`, not
/// `/repos/acme-evil`. With prefixes, a path holding `.` or `..` segments
/// (also percent-encoded, or behind `\`) is refused: the server would
/// resolve it to somewhere the prefix does not cover. The one definition
/// used by [`permits`], by [`narrow`] (a child's prefix must itself be an
/// allowed path of the parent's) and by the proxy hook.
pub fn path_allowed(prefixes: &[String], path: &str) -> bool {
    if prefixes.is_empty() {
        return true;
    }
    let end = path.find(['?', '#']).unwrap_or(path.len());
    let path = &path[..end];
    if !path.starts_with('/') || has_dot_segment(path) {
        return false;
    }
    prefixes.iter().any(|prefix| {
        path == prefix
            || (path.starts_with(prefix.as_str())
                && (prefix.ends_with('/') || path.as_bytes().get(prefix.len()) == Some(&b'/')))
    })
}

/// The git credential helper for a placeholder in `env`: it answers `get`
/// with the placeholder as password (the proxy swaps it inside the Basic
/// authorization header).
pub fn git_credential_helper(env: &str) -> String {
    format!(
        "!f() {{ test \"$1\" = get && printf 'username=x-access-token\\npassword=%s\\n' \"${env}\"; }}; f"
    )
}

/// The sandbox's environment for `grants`: `ENV=placeholder` for each (the
/// first grant wins when two use one variable), and a git credential helper
/// for each exact (non-wildcard) host, given through `GIT_CONFIG_COUNT`,
/// `GIT_CONFIG_KEY_n` and `GIT_CONFIG_VALUE_n` (no files): per host, an empty
/// `credential.https://HOST.helper` (which clears helpers from other config)
/// then [`git_credential_helper`] for each grant of that host (git takes the
/// first that answers).
pub fn sandbox_env(grants: &[Grant]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut seen_env = HashSet::new();
    // Exact hosts in first-seen order, with the variables granted for each.
    let mut hosts: Vec<(String, Vec<String>)> = Vec::new();
    for g in grants {
        if seen_env.insert(g.env.clone()) {
            env.push((g.env.clone(), g.placeholder.clone()));
        }
        for h in &g.hosts {
            if h.starts_with("*.") {
                continue;
            }
            let h = trim_host(h);
            match hosts.iter_mut().find(|(host, _)| *host == h) {
                Some((_, envs)) => {
                    if !envs.contains(&g.env) {
                        envs.push(g.env.clone());
                    }
                }
                None => hosts.push((h, vec![g.env.clone()])),
            }
        }
    }
    let mut config: Vec<(String, String)> = Vec::new();
    for (host, envs) in &hosts {
        let key = format!("credential.https://{host}.helper");
        config.push((key.clone(), String::new()));
        for e in envs {
            config.push((key.clone(), git_credential_helper(e)));
        }
    }
    if !config.is_empty() {
        env.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
        for (i, (k, v)) in config.into_iter().enumerate() {
            env.push((format!("GIT_CONFIG_KEY_{i}"), k));
            env.push((format!("GIT_CONFIG_VALUE_{i}"), v));
        }
    }
    env
}
