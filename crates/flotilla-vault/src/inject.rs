//! The egress proxy hook: placeholders become real values on requests to
//! granted hosts only, and are refused everywhere else.
//!
//! Inside a sandbox an agent holds only placeholders. For each request the
//! proxy hands to [`Injector`] (every request on an intercepted TLS tunnel,
//! and every plain `http://` request), the hook:
//!
//! 1. finds each grant's placeholder in the path, the query, every header
//!    value, and inside `Authorization: Basic` credentials;
//! 2. checks each secret found against its grant (host, expiry, method,
//!    path prefix, TLS, query) and refuses the whole request on the first
//!    rule broken, with a reason meant for the model to read;
//! 3. adds the secrets' header templates (`Authorization: Bearer
//!    {secret}`) to requests for their hosts that lack those headers;
//! 4. substitutes the values, and when anything was injected removes
//!    `Accept-Encoding` and maps the values back to placeholders in the
//!    response (headers and body), so a server echoing a credential never
//!    puts it into the sandbox;
//! 5. filters the request body: placeholders are replaced for secrets with
//!    `inject_body`, and a body carrying a placeholder to a host no grant
//!    covers is aborted.
//!
//! Every use and every refusal goes to the observer as a [`SecretUse`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bytes::Bytes;
use flotilla_sandbox::hook::{BodyFilter, BodyFilters, EgressHook, HookVerdict, RequestInfo};
use http::header::{ACCEPT_ENCODING, AUTHORIZATION};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Uri};
use zeroize::Zeroizing;

use crate::redact::{form_pairs, Redactor, StreamBlocker, StreamReplacer};
use crate::{Grant, SecretSpec, SecretUse};

/// One secret a session may use: the grant, the secret's description and
/// its value.
pub struct Granted {
    /// What the session may do with it.
    pub grant: Grant,
    /// The secret's description (templates, `inject_query`, ...).
    pub spec: SecretSpec,
    /// The value (wiped from this copy on drop).
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Granted")
            .field("grant", &self.grant)
            .field("spec", &self.spec)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Receives every use and every refusal of a secret.
pub type Observer = Arc<dyn Fn(SecretUse) + Send + Sync>;

/// The proxy hook for one session's grants. See the module documentation.
///
/// Besides the [`Granted`] values (zeroized on drop), the injector's
/// automatons hold copies of the values and of their encoded forms that
/// are not wiped.
pub struct Injector {
    grants: Vec<Granted>,
    observer: Observer,
    redactor: Redactor,
    /// Every grant's placeholder; `None` when building it failed (every
    /// request is then refused).
    placeholders: Option<AhoCorasick>,
    /// Placeholder pattern index to grant index.
    placeholder_grant: Vec<usize>,
    /// Every form of every value to the same form of its placeholder.
    unmask: StreamReplacer,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// Where a placeholder was seen in one request.
#[derive(Clone, Copy, Default)]
struct Seen {
    path: bool,
    query: bool,
    header: bool,
    /// Found in a header that is neither `Authorization` nor one of the
    /// secret's template headers.
    other_header: bool,
}

impl Seen {
    fn any(self) -> bool {
        self.path || self.query || self.header
    }
}

/// Base64 for Basic credentials, lenient about padding.
const BASIC: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The decoded credentials of an `Authorization: Basic` value.
fn basic_credentials(name: &HeaderName, value: &HeaderValue) -> Option<Zeroizing<Vec<u8>>> {
    if name != AUTHORIZATION {
        return None;
    }
    let bytes = value.as_bytes();
    let scheme = bytes.get(..6)?;
    if !scheme.eq_ignore_ascii_case(b"basic ") {
        return None;
    }
    let encoded = bytes[6..].trim_ascii();
    BASIC.decode(encoded).ok().map(Zeroizing::new)
}

use crate::grant::{host_matches, path_allowed};

fn covers(hosts: &[String], host: &str) -> bool {
    hosts.iter().any(|p| host_matches(p, host))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

/// Percent-encodes a value for a URI (every byte outside the unreserved
/// set), so the server decodes the placeholder's position back to exactly
/// the value whatever characters it holds.
fn uri_encode(value: &str) -> Vec<u8> {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::percent_encode(value.as_bytes(), SET)
        .to_string()
        .into_bytes()
}

/// The request fields a [`SecretUse`] records.
#[derive(Clone, Copy)]
struct Req<'a> {
    host: &'a str,
    tls: bool,
    method: &'a str,
    /// Without the query.
    path: &'a str,
    now: u64,
}

impl Injector {
    /// An injector for `grants`, reporting every use and refusal to
    /// `observer`.
    pub fn new(grants: Vec<Granted>, observer: Arc<dyn Fn(SecretUse) + Send + Sync>) -> Injector {
        let named: Vec<(String, Vec<u8>)> = grants
            .iter()
            .map(|g| (g.grant.secret.clone(), g.value.as_bytes().to_vec()))
            .collect();
        let redactor = Redactor::new(&named);
        // The plain copies of the values above are wiped now.
        for (_, mut value) in named {
            zeroize::Zeroize::zeroize(&mut value);
        }

        let mut patterns = Vec::new();
        let mut placeholder_grant = Vec::new();
        for (i, g) in grants.iter().enumerate() {
            let ph = g.grant.placeholder.as_bytes();
            if !ph.is_empty() && !patterns.contains(&ph) {
                patterns.push(ph);
                placeholder_grant.push(i);
            }
        }
        let placeholders = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .ok();

        let mut pairs = Vec::new();
        for g in &grants {
            if !g.value.is_empty() {
                pairs.extend(form_pairs(
                    g.value.as_bytes(),
                    g.grant.placeholder.as_bytes(),
                ));
            }
        }
        let unmask = StreamReplacer::new(pairs);
        Injector {
            grants,
            observer,
            redactor,
            placeholders,
            placeholder_grant,
            unmask,
        }
    }

    /// A redactor over every granted value.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn record(&self, g: &Granted, req: &Req<'_>, allowed: bool, reason: String) {
        (self.observer)(SecretUse {
            ts_ms: req.now,
            secret: g.grant.secret.clone(),
            host: req.host.to_string(),
            method: req.method.to_string(),
            path: req.path.to_string(),
            allowed,
            reason,
        });
    }

    /// Records the refusal and returns the verdict.
    fn refuse(&self, g: &Granted, req: &Req<'_>, reason: String) -> HookVerdict {
        self.record(g, req, false, reason.clone());
        HookVerdict::Refuse {
            status: 403,
            reason,
        }
    }

    fn host_reason(g: &Granted, host: &str) -> String {
        format!(
            "flotilla vault: the placeholder for secret \"{}\" may only be sent to {}; refused a request to {host}",
            g.grant.secret,
            g.grant.hosts.join(", ")
        )
    }

    /// The grant's rules other than the host: expiry, method, path, TLS.
    fn rules(g: &Granted, req: &Req<'_>) -> Result<(), String> {
        let name = &g.grant.secret;
        if let Some(at) = g.grant.expires_at_ms {
            if req.now >= at {
                return Err(format!(
                    "flotilla vault: the grant for secret \"{name}\" expired at {}; ask the user to grant it again (flotilla run --grant {name}:ttl=...)",
                    rfc3339(at)
                ));
            }
        }
        if !g.grant.methods.is_empty()
            && !g
                .grant
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(req.method))
        {
            return Err(format!(
                "flotilla vault: the grant for secret \"{name}\" allows only the methods {}; refused {} {}{}",
                g.grant.methods.join(", "),
                req.method,
                req.host,
                req.path
            ));
        }
        if !path_allowed(&g.grant.path_prefixes, req.path) {
            return Err(format!(
                "flotilla vault: the grant for secret \"{name}\" allows only paths under {}; refused {} {}{}",
                g.grant.path_prefixes.join(", "),
                req.method,
                req.host,
                req.path
            ));
        }
        if !req.tls && !g.spec.allow_http {
            return Err(format!(
                "flotilla vault: refusing to send secret \"{name}\" over plain http; use https"
            ));
        }
        Ok(())
    }

    /// Marks in `seen` (through `set`) each grant whose placeholder is in
    /// `hay`.
    fn mark(&self, ac: &AhoCorasick, hay: &[u8], seen: &mut [Seen], set: fn(&mut Seen)) {
        for m in ac.find_iter(hay) {
            set(&mut seen[self.placeholder_grant[m.pattern().as_usize()]]);
        }
    }

    /// `hay` with every placeholder replaced by `value(grant)`; `None` when
    /// there is none.
    fn substitute(
        &self,
        ac: &AhoCorasick,
        hay: &[u8],
        value: impl Fn(&Granted) -> Vec<u8>,
    ) -> Option<Zeroizing<Vec<u8>>> {
        ac.find(hay)?;
        let mut out = Zeroizing::new(Vec::with_capacity(hay.len() + 64));
        ac.replace_all_with_bytes(hay, &mut out, |m, _, dst| {
            let g = &self.grants[self.placeholder_grant[m.pattern().as_usize()]];
            dst.extend_from_slice(&Zeroizing::new(value(g)));
            true
        });
        Some(out)
    }

    /// The request body filter (see the module documentation).
    fn request_filter(&self, req: &Req<'_>, covered: bool) -> Option<Box<dyn BodyFilter>> {
        let host = req.host.to_string();
        let method = req.method.to_string();
        let path = req.path.to_string();
        let now = req.now;
        let observer = Arc::clone(&self.observer);
        // For the callbacks: the secret's name per pattern index.
        let use_for = move |secret: String, allowed: bool, reason: String| SecretUse {
            ts_ms: now,
            secret,
            host: host.clone(),
            method: method.clone(),
            path: path.clone(),
            allowed,
            reason,
        };

        let mut replace: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut replace_names: Vec<String> = Vec::new();
        let mut block: Vec<(Vec<u8>, String)> = Vec::new();
        let mut block_names: Vec<String> = Vec::new();
        for g in &self.grants {
            let ph = g.grant.placeholder.as_bytes().to_vec();
            if !covered {
                block.push((
                    ph,
                    format!("{} (in the request body)", Self::host_reason(g, req.host)),
                ));
                block_names.push(g.grant.secret.clone());
            } else if g.spec.inject_body && covers(&g.grant.hosts, req.host) {
                match Self::rules(g, req) {
                    Ok(()) => {
                        replace.push((ph, g.value.as_bytes().to_vec()));
                        replace_names.push(g.grant.secret.clone());
                    }
                    Err(reason) => {
                        block.push((ph, format!("{reason} (in the request body)")));
                        block_names.push(g.grant.secret.clone());
                    }
                }
            }
        }
        let injects = !replace.is_empty();

        let blocker = (!block.is_empty()).then(|| {
            let observer = Arc::clone(&observer);
            let use_for = use_for.clone();
            let reasons: Vec<String> = block.iter().map(|(_, r)| r.clone()).collect();
            StreamBlocker::new(block).on_block(move |i| {
                if let (Some(name), Some(reason)) = (block_names.get(i), reasons.get(i)) {
                    observer(use_for(name.clone(), false, reason.clone()));
                }
            })
        });
        let replacer = injects.then(|| {
            let mut recorded = vec![false; replace_names.len()];
            // The values move into the filter (no copy left behind).
            StreamReplacer::new(replace).on_match(move |i| {
                if let (Some(done), Some(name)) = (recorded.get_mut(i), replace_names.get(i)) {
                    if !*done {
                        *done = true;
                        observer(use_for(
                            name.clone(),
                            true,
                            "injected into the request body".to_string(),
                        ));
                    }
                }
            })
        });
        let filter: Option<Box<dyn BodyFilter>> = match (blocker, replacer) {
            (None, None) => None,
            (Some(b), None) => Some(Box::new(b)),
            (None, Some(r)) => Some(Box::new(r)),
            // Blocking first: the blocker sees the placeholders before the
            // replacer turns them into values.
            (Some(b), Some(r)) => Some(Box::new(Chain(b, r))),
        };
        filter
    }
}

/// Two body filters one after the other.
struct Chain<A, B>(A, B);

impl<A: BodyFilter, B: BodyFilter> BodyFilter for Chain<A, B> {
    fn filter(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        let mid = self.0.filter(chunk)?;
        self.1.filter(mid)
    }

    fn finish(&mut self) -> Result<Bytes, String> {
        let rest = self.0.finish()?;
        let mut out = self.1.filter(rest)?.to_vec();
        out.extend_from_slice(&self.1.finish()?);
        Ok(Bytes::from(out))
    }
    fn preserves_length(&self) -> bool {
        self.0.preserves_length() && self.1.preserves_length()
    }
}

impl EgressHook for Injector {
    fn intercept(&self, _host: &str, _port: u16) -> bool {
        // Every tunnel is intercepted while a secret is granted, whatever
        // its port, so that a placeholder sent to an ungranted host is seen
        // and refused (a tunnel left alone could carry it anywhere). The
        // price: a session with grants speaks only TLS through CONNECT.
        !self.grants.is_empty()
    }

    fn on_request(&self, info: &RequestInfo<'_>, head: &mut http::request::Parts) -> HookVerdict {
        if self.grants.is_empty() {
            return HookVerdict::Forward(BodyFilters::default());
        }
        let Some(ac) = &self.placeholders else {
            return HookVerdict::Refuse {
                status: 403,
                reason: "flotilla vault: the placeholder matcher could not be built".to_string(),
            };
        };
        let method = head.method.as_str().to_string();
        let path = head.uri.path().to_string();
        let req = Req {
            host: info.host,
            tls: info.tls,
            method: &method,
            path: &path,
            now: now_ms(),
        };

        // 1. Where each placeholder is.
        let mut seen = vec![Seen::default(); self.grants.len()];
        self.mark(ac, path.as_bytes(), &mut seen, |s| s.path = true);
        if let Some(query) = head.uri.query() {
            self.mark(ac, query.as_bytes(), &mut seen, |s| s.query = true);
        }
        for (name, value) in &head.headers {
            let mut here = vec![Seen::default(); self.grants.len()];
            self.mark(ac, value.as_bytes(), &mut here, |s| s.header = true);
            if let Some(decoded) = basic_credentials(name, value) {
                self.mark(ac, &decoded, &mut here, |s| s.header = true);
            }
            for ((g, h), s) in self.grants.iter().zip(&here).zip(seen.iter_mut()) {
                if !h.header {
                    continue;
                }
                s.header = true;
                let credential_header = name == AUTHORIZATION
                    || g.spec
                        .headers
                        .iter()
                        .any(|t| t.name.eq_ignore_ascii_case(name.as_str()));
                if !credential_header {
                    s.other_header = true;
                }
            }
        }

        // 2. Every secret found must be allowed here, or nothing is sent.
        for (g, s) in self.grants.iter().zip(&seen) {
            if !s.any() {
                continue;
            }
            if !covers(&g.grant.hosts, req.host) {
                return self.refuse(g, &req, Self::host_reason(g, req.host));
            }
            if let Err(reason) = Self::rules(g, &req) {
                return self.refuse(g, &req, reason);
            }
            // A value in a path or an arbitrary header may be stored by the
            // server (a file name, a title) and read back by the agent in a
            // request that carries no placeholder: only credential headers
            // (and, where the secret says so, query strings and bodies)
            // receive values.
            if s.path {
                let reason = format!(
                    "flotilla vault: the placeholder for secret \"{}\" is in the URL path; values are sent only in the Authorization header (or the secret's own headers), never in paths",
                    g.grant.secret
                );
                return self.refuse(g, &req, reason);
            }
            if s.other_header {
                let reason = format!(
                    "flotilla vault: the placeholder for secret \"{}\" is in a header that is not a credential header; values are sent only in Authorization or the secret's own headers",
                    g.grant.secret
                );
                return self.refuse(g, &req, reason);
            }
            if s.query && !g.spec.inject_query {
                let reason = format!(
                    "flotilla vault: the placeholder for secret \"{}\" is in the query string, and this secret is not injected into query strings; send it in a header instead",
                    g.grant.secret
                );
                return self.refuse(g, &req, reason);
            }
        }

        // 3. Header templates for the grants covering this host.
        let mut used: Vec<bool> = seen.iter().map(|s| s.any()).collect();
        let mut added: Vec<(HeaderName, HeaderValue)> = Vec::new();
        for (i, g) in self.grants.iter().enumerate() {
            if g.spec.headers.is_empty() || !covers(&g.grant.hosts, req.host) {
                continue;
            }
            for template in &g.spec.headers {
                let Ok(name) = HeaderName::from_bytes(template.name.as_bytes()) else {
                    let reason = format!(
                        "flotilla vault: secret \"{}\" has an invalid header name {:?} in its template",
                        g.grant.secret, template.name
                    );
                    return self.refuse(g, &req, reason);
                };
                if head.headers.contains_key(&name) || added.iter().any(|(n, _)| *n == name) {
                    continue;
                }
                // Expired, or a method or path outside the grant: the
                // request goes without the credential.
                if Self::rules(g, &Req { tls: true, ..req }).is_err() {
                    continue;
                }
                // Over plain http the template would have applied: say so
                // rather than send the request without it.
                if let Err(reason) = Self::rules(g, &req) {
                    return self.refuse(g, &req, reason);
                }
                let value = Zeroizing::new(template.value.replace("{secret}", &g.value));
                let Ok(mut value) = HeaderValue::from_str(&value) else {
                    let reason = format!(
                        "flotilla vault: the value of secret \"{}\" does not make a valid {} header",
                        g.grant.secret, template.name
                    );
                    return self.refuse(g, &req, reason);
                };
                value.set_sensitive(true);
                added.push((name, value));
                used[i] = true;
            }
        }

        // 4. Substitute, building everything before changing the head.
        let mut new_uri = None;
        if seen.iter().any(|s| s.path || s.query) {
            let pq = head
                .uri
                .path_and_query()
                .map(PathAndQuery::as_str)
                .unwrap_or("/");
            let Some(bytes) = self.substitute(ac, pq.as_bytes(), |g| uri_encode(&g.value)) else {
                return HookVerdict::Refuse {
                    status: 403,
                    reason: "flotilla vault: internal error".to_string(),
                };
            };
            let mut parts = head.uri.clone().into_parts();
            let built = PathAndQuery::try_from(bytes.as_slice())
                .ok()
                .and_then(|pq| {
                    parts.path_and_query = Some(pq);
                    Uri::from_parts(parts).ok()
                });
            match built {
                Some(uri) => new_uri = Some(uri),
                None => {
                    return HookVerdict::Refuse {
                        status: 403,
                        reason: "flotilla vault: substituting a secret made an invalid URI"
                            .to_string(),
                    };
                }
            }
        }
        let mut new_values: Vec<Option<HeaderValue>> = Vec::with_capacity(head.headers.len());
        for (name, value) in &head.headers {
            let replaced = match basic_credentials(name, value) {
                Some(decoded) => self
                    .substitute(ac, &decoded, |g| g.value.as_bytes().to_vec())
                    .map(|creds| {
                        let mut v = Zeroizing::new(b"Basic ".to_vec());
                        v.extend_from_slice(STANDARD.encode(creds.as_slice()).as_bytes());
                        v
                    }),
                None => None,
            };
            let replaced = replaced
                .or_else(|| self.substitute(ac, value.as_bytes(), |g| g.value.as_bytes().to_vec()));
            match replaced {
                None => new_values.push(None),
                Some(bytes) => match HeaderValue::from_bytes(&bytes) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        new_values.push(Some(v));
                    }
                    Err(_) => {
                        return HookVerdict::Refuse {
                            status: 403,
                            reason: format!(
                                "flotilla vault: substituting a secret made an invalid value for header {name}"
                            ),
                        };
                    }
                },
            }
        }

        // 5. Apply.
        if let Some(uri) = new_uri {
            head.uri = uri;
        }
        for ((_, value), new) in head.headers.iter_mut().zip(new_values) {
            if let Some(new) = new {
                *value = new;
            }
        }
        for (name, value) in added {
            head.headers.append(name, value);
        }

        let covered = self.grants.iter().any(|g| covers(&g.grant.hosts, req.host));
        let request = self.request_filter(&req, covered);
        // Every response is unmasked while a secret is granted, not only
        // those to requests that carried one: a value stored by an earlier
        // request can come back in any later one. An encoded body could not
        // be scanned, so no encoding is asked for.
        head.headers.remove(ACCEPT_ENCODING);
        let filters = BodyFilters {
            request,
            response: Some(Box::new(self.unmask.fresh())),
        };
        for ((g, s), u) in self.grants.iter().zip(&seen).zip(&used) {
            if !*u {
                continue;
            }
            let mut wheres = Vec::new();
            if s.header {
                wheres.push("a header");
            }
            if s.path {
                wheres.push("the path");
            }
            if s.query {
                wheres.push("the query");
            }
            if !s.any() {
                wheres.push("a header template");
            }
            self.record(
                g,
                &req,
                true,
                format!("injected into {}", wheres.join(", ")),
            );
        }
        HookVerdict::Forward(filters)
    }

    fn on_response(&self, _info: &RequestInfo<'_>, head: &mut http::response::Parts) {
        // Any granted value in a response header goes back to being its
        // placeholder (whichever request it answers: the value has no
        // business in the sandbox).
        for (_, value) in head.headers.iter_mut() {
            let new = match self.unmask.replace_all(value.as_bytes()) {
                Some(Cow::Borrowed(_)) => continue,
                Some(Cow::Owned(bytes)) => HeaderValue::from_bytes(&bytes).ok(),
                None => None,
            };
            // Fail closed: a value that cannot be unmasked is dropped.
            *value = new.unwrap_or_else(|| HeaderValue::from_static("[secret:redacted]"));
        }
    }
}
