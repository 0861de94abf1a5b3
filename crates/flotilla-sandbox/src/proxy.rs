//! The sandbox's egress proxy: the only way out of a sandbox whose network
//! namespace is otherwise empty.
//!
//! A forwarder inside the sandbox connects to this proxy's Unix socket; the
//! tools in the sandbox see `HTTP_PROXY=http://127.0.0.1:3128` and
//! `HTTPS_PROXY=...`. The proxy speaks HTTP/1.1 and understands two kinds of
//! request:
//!
//! - `CONNECT host:port`: after the checks below, a TCP tunnel to the host
//!   (used for `https://` URLs); the bytes are copied both ways untouched.
//! - absolute-form requests (`GET http://host:port/path HTTP/1.1`): forwarded
//!   to the host without hop-by-hop headers; the response streams back.
//!
//! Every request goes through the same gate (`open_upstream`): the
//! [`DomainPolicy`] decides on the host name; the name is resolved; the
//! resolved addresses are checked (loopback, private, link-local and shared
//! addresses are reachable only through a host allowed by an exact rule, which
//! guards against DNS rebinding and requests into the host's own network);
//! and only then is a connection opened, to exactly the checked addresses.
//! Each request yields one [`EgressRecord`] for the observer and one
//! `tracing` line.
//!
//! With an [`EgressHook`] and a [`CertAuthority`] in [`ProxyOptions`], the
//! proxy can intercept TLS. After the gate has allowed a `CONNECT` (and the
//! connection to the checked address is open), it asks
//! [`EgressHook::intercept`]; on `true` it answers `200`, terminates the
//! client's TLS with a leaf certificate for the `CONNECT` host minted by the
//! CA (ALPN `http/1.1` only; a client that does not start TLS is closed), and
//! serves HTTP/1.1 on the decrypted stream. Each request inside must name the
//! `CONNECT` host (another `Host` is domain fronting: `421`); the hook sees
//! its head ([`EgressHook::on_request`]) and may rewrite it, refuse it, or
//! filter its bodies ([`BodyFilters`]; a filtered request body is buffered,
//! up to 16 MiB, and sent with a fresh `Content-Length`; a filtered response
//! body streams without one). Requests go upstream over TLS verified against
//! real roots (or [`ProxyOptions::upstream_tls`]), with the `CONNECT` host as
//! SNI, on one upstream connection per tunnel: the one the gate opened, then,
//! if it closes, a fresh one through the gate again. Every request inside
//! yields its own record (target `https://host[:port]/path`, without the
//! query). Plain `http://` requests go through the same hook, with
//! `tls == false`. Tunnels the hook does not intercept are copied untouched.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::ext::ReasonPhrase;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::{LazyConfigAcceptor, TlsConnector};

use crate::ca::CertAuthority;
use crate::hook::{BodyFilter, BodyFilters, EgressHook, HookVerdict, RequestInfo};

/// Connections served at once; the ones beyond get `503`.
const MAX_CONNECTIONS: usize = 256;
/// The largest request head accepted (larger ones get `431`).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Resolving and connecting to an upstream host, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send a whole request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The time a refused (over the limit) connection gets to take its `503`.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Header carrying the reason of a refusal on `403` responses.
const DENIED_HEADER: &str = "x-flotilla-denied";
/// The largest request body buffered for a request body filter (`413` beyond).
const MAX_FILTERED_BODY: usize = 16 * 1024 * 1024;
/// A client must finish its TLS handshake on an intercepted tunnel within
/// this time.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The only application protocol spoken on intercepted tunnels.
const HTTP11_ALPN: &[u8] = b"http/1.1";
/// Status line reason of a successful `CONNECT`.
const CONNECTION_ESTABLISHED: ReasonPhrase = ReasonPhrase::from_static(b"Connection Established");

/// What a pattern may look like, for error messages.
const ACCEPTED_PATTERNS: &str = "accepted patterns are \"example.com\" (exactly that host), \
     \"*.example.com\" (any subdomain of example.com, not example.com itself), \"*\" (any host), \
     or an IP address such as \"127.0.0.1\", \"::1\" or \"[::1]\"";

// ---------------------------------------------------------------------------
// Errors

/// Errors building a policy or starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A domain pattern in the allow or deny list is not one of the accepted forms.
    #[error("invalid pattern {pattern:?} in the {list}: {problem}; {ACCEPTED_PATTERNS}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// Which list it was in: "allow list" or "deny list".
        list: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The TLS configuration for interception could not be built.
    #[error("egress proxy cannot set up TLS interception: {problem}")]
    Tls {
        /// What failed.
        problem: String,
    },
    /// The proxy could not listen on the socket path or address.
    #[error("egress proxy cannot listen on {path_or_addr}: {source}")]
    Bind {
        /// The Unix socket path or the TCP address.
        path_or_addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// Policy

/// How one pattern matches.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    /// `*`: any host.
    Any,
    /// `example.com` or an IP literal: exactly that host (normalised).
    Exact(String),
    /// `*.example.com`: any host ending in `.example.com` (stored without `*.`).
    Subdomain(String),
}

/// One parsed pattern, with its text as the user wrote it.
#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    matcher: Matcher,
}

impl Pattern {
    fn parse(raw: &str, list: &'static str) -> Result<Pattern, ProxyError> {
        let invalid = |problem: &str| ProxyError::InvalidPattern {
            pattern: raw.to_string(),
            list,
            problem: problem.to_string(),
        };
        if raw.chars().any(char::is_whitespace) {
            return Err(invalid("it contains whitespace"));
        }
        if raw.contains('/') {
            return Err(invalid("it contains '/'; give a host name, not a URL"));
        }
        let lower = raw.to_ascii_lowercase();
        if lower == "*." {
            return Err(invalid("\"*.\" must be followed by a domain"));
        }
        let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        if trimmed == "*" {
            return Ok(Pattern {
                text: raw.to_string(),
                matcher: Matcher::Any,
            });
        }
        if let Some(domain) = trimmed.strip_prefix("*.") {
            if domain.is_empty() {
                return Err(invalid("\"*.\" must be followed by a domain"));
            }
            if domain.contains('*') {
                return Err(invalid("'*' may appear only once, as a leading \"*.\""));
            }
            if domain.contains(':') || domain.starts_with('[') || domain.parse::<IpAddr>().is_ok() {
                return Err(invalid(
                    "a wildcard must be followed by a domain name, not an address or a port",
                ));
            }
            check_hostname(domain).map_err(|p| invalid(&p))?;
            return Ok(Pattern {
                text: raw.to_string(),
                matcher: Matcher::Subdomain(domain.to_string()),
            });
        }
        if trimmed.contains('*') {
            return Err(invalid("'*' is allowed only alone or as a leading \"*.\""));
        }
        if let Some(ip) = parse_ip_literal(trimmed) {
            return Ok(Pattern {
                text: raw.to_string(),
                matcher: Matcher::Exact(ip.to_string()),
            });
        }
        if trimmed.contains(':') {
            return Err(invalid(
                "it contains ':'; ports are not supported, give the host name only",
            ));
        }
        check_hostname(trimmed).map_err(|p| invalid(&p))?;
        Ok(Pattern {
            text: raw.to_string(),
            matcher: Matcher::Exact(trimmed.to_string()),
        })
    }

    /// Whether this pattern matches `host`, which is already normalised.
    fn matches(&self, host: &str) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Exact(exact) => host == exact,
            Matcher::Subdomain(domain) => {
                host.len() > domain.len() + 1
                    && host.ends_with(domain.as_str())
                    && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
            }
        }
    }
}

/// An IP literal, with or without the brackets of an IPv6 authority.
fn parse_ip_literal(text: &str) -> Option<IpAddr> {
    let inner = text
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'));
    match inner {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        None => text.parse::<IpAddr>().ok(),
    }
}

/// Checks a lower-case DNS name: labels of letters, digits, `-` and `_`.
fn check_hostname(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("it is longer than 253 characters".to_string());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (a leading dot or two dots in a row)".to_string());
        }
        if label.len() > 63 {
            return Err(format!("the label {label:?} is longer than 63 characters"));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(match bad {
                ':' => {
                    "it contains ':'; ports are not supported, give the host name only".to_string()
                }
                '*' => "'*' is allowed only alone or as a leading \"*.\"".to_string(),
                _ => format!("it contains {bad:?}, which cannot appear in a host name"),
            });
        }
    }
    Ok(())
}

/// Normalises a host from a request: lower case, no trailing dot, IP
/// literals in canonical form without brackets. `None` if it is neither a
/// valid host name nor an IP literal.
fn normalize_host(host: &str) -> Option<String> {
    let lower = host.to_ascii_lowercase();
    let trimmed = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(ip) = parse_ip_literal(trimmed) {
        return Some(ip.to_string());
    }
    if trimmed.is_empty() || check_hostname(trimmed).is_err() {
        return None;
    }
    Some(trimmed.to_string())
}

/// The allow and deny lists of a sandbox's network access.
///
/// One pattern is `"github.com"` (exactly that host), `"*.github.com"` (any
/// subdomain, NOT github.com itself), or `"*"` (any host). Matching is
/// case-insensitive and a trailing dot is ignored. IP literals are accepted
/// as exact patterns (`"127.0.0.1"`, `"[::1]"` or `"::1"`).
#[derive(Clone, Debug, Default)]
pub struct DomainPolicy {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

/// The policy's verdict on one host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    /// Whether egress to the host is allowed by the lists.
    pub allowed: bool,
    /// The pattern that matched, if any, as written in the list.
    pub rule: Option<String>,
    /// Human text, e.g. `denied by rule "*.evil.com" in the deny list` or
    /// `not in the allow list`.
    pub reason: String,
}

/// A decision, plus what the proxy needs beyond it.
struct Evaluation {
    decision: Decision,
    /// The host, normalised (`None` when it is not a valid host).
    host: Option<String>,
    /// Allowed by an exact pattern equal to the host (not `*`, not `*.x`).
    exact: bool,
}

impl DomainPolicy {
    /// Builds a policy from allow and deny patterns; an invalid pattern
    /// (empty, with '/', a port, spaces, a misplaced '*', ...) is
    /// [`ProxyError::InvalidPattern`].
    pub fn new(allow: &[String], deny: &[String]) -> Result<DomainPolicy, ProxyError> {
        let allow = allow
            .iter()
            .map(|p| Pattern::parse(p, "allow list"))
            .collect::<Result<Vec<_>, _>>()?;
        let deny = deny
            .iter()
            .map(|p| Pattern::parse(p, "deny list"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DomainPolicy { allow, deny })
    }

    /// A policy that denies every host.
    pub fn deny_all() -> DomainPolicy {
        DomainPolicy::default()
    }

    /// Decides on `host` (a name or an IP literal, brackets allowed): a match
    /// in the deny list wins over the allow list; no match is denied.
    pub fn decide(&self, host: &str) -> Decision {
        self.evaluate(host).decision
    }

    fn evaluate(&self, host: &str) -> Evaluation {
        let Some(host) = normalize_host(host) else {
            return Evaluation {
                decision: Decision {
                    allowed: false,
                    rule: None,
                    reason: "not a valid host name".to_string(),
                },
                host: None,
                exact: false,
            };
        };
        if let Some(rule) = self.deny.iter().find(|p| p.matches(&host)) {
            return Evaluation {
                decision: Decision {
                    allowed: false,
                    rule: Some(rule.text.clone()),
                    reason: format!("denied by rule {:?} in the deny list", rule.text),
                },
                host: Some(host),
                exact: false,
            };
        }
        // The most specific rule is the one reported: exact, then
        // subdomain, then "*".
        let rank = |p: &Pattern| match p.matcher {
            Matcher::Exact(_) => 0,
            Matcher::Subdomain(_) => 1,
            Matcher::Any => 2,
        };
        let best = self
            .allow
            .iter()
            .filter(|p| p.matches(&host))
            .min_by_key(|p| rank(p));
        match best {
            Some(rule) => Evaluation {
                decision: Decision {
                    allowed: true,
                    rule: Some(rule.text.clone()),
                    reason: format!("allowed by rule {:?} in the allow list", rule.text),
                },
                exact: matches!(rule.matcher, Matcher::Exact(_)),
                host: Some(host),
            },
            None => Evaluation {
                decision: Decision {
                    allowed: false,
                    rule: None,
                    reason: "not in the allow list".to_string(),
                },
                host: Some(host),
                exact: false,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Records

/// One request through the proxy, for the session's audit trail.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EgressRecord {
    /// When the request was decided, in milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// `"CONNECT"`, `"GET"`, ... (empty for a request that could not be parsed).
    pub method: String,
    /// The target host, normalised when valid (lower case, no brackets).
    pub host: String,
    /// The target port (0 when unknown).
    pub port: u16,
    /// The authority for CONNECT, the full URL for plain HTTP.
    pub target: String,
    /// Whether the request was let through (the policy and the address check).
    pub allowed: bool,
    /// The pattern that matched, if any.
    pub rule: Option<String>,
    /// Human text explaining the outcome.
    pub reason: String,
    /// The status the proxy answered or relayed.
    pub status: Option<u16>,
}

/// Where records go: called once per request, after the decision (from a
/// tokio task; must not block).
pub type EgressObserver = Arc<dyn Fn(EgressRecord) + Send + Sync>;

/// What is known about a request's target before the gate.
struct Target {
    method: String,
    host: String,
    port: u16,
    target: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// The proxy

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// What a proxy does beyond its policy: TLS interception and the hook.
/// `Default` is none of it (the proxy of [`EgressProxy::bind_unix`]).
#[derive(Clone, Default)]
pub struct ProxyOptions {
    /// Sees every request it can: plain `http://` ones always, and the ones
    /// inside tunnels it asks to intercept (which also needs [`Self::ca`]).
    pub hook: Option<Arc<dyn EgressHook>>,
    /// Mints the certificates of intercepted hosts; without it no tunnel is
    /// intercepted.
    pub ca: Option<Arc<CertAuthority>>,
    /// How upstream servers of intercepted tunnels are verified; `None`: the
    /// webpki roots plus the system's native certificates. ALPN is always
    /// set to `http/1.1`, whatever the config says.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("hook", &self.hook.as_ref().map(|_| "<dyn EgressHook>"))
            .field("ca", &self.ca)
            .field(
                "upstream_tls",
                &self.upstream_tls.as_ref().map(|_| "<rustls::ClientConfig>"),
            )
            .finish()
    }
}

/// What interception needs, present when both a hook and a CA are set.
struct Interception {
    ca: Arc<CertAuthority>,
    connector: TlsConnector,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Interception {
    fn new(
        ca: Arc<CertAuthority>,
        upstream: Option<&rustls::ClientConfig>,
    ) -> Result<Self, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = match upstream {
            Some(config) => config.clone(),
            None => default_client_config(&provider)?,
        };
        client.alpn_protocols = vec![HTTP11_ALPN.to_vec()];
        Ok(Interception {
            ca,
            connector: TlsConnector::from(Arc::new(client)),
            provider,
        })
    }

    /// The server side of one intercepted tunnel, presenting `leaf`.
    fn server_config(
        &self,
        leaf: Arc<rustls::sign::CertifiedKey>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(FixedCert(leaf)));
        config.alpn_protocols = vec![HTTP11_ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The upstream client TLS configuration of intercepted tunnels: webpki
/// roots, the system's native certificates, and the certificates of each
/// PEM file in `extra_roots` (a corporate CA; a test server's). Build it once
/// and share it: loading the native roots reads the system's bundle.
pub fn upstream_client_config(
    extra_roots: &[PathBuf],
) -> Result<Arc<rustls::ClientConfig>, ProxyError> {
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = default_client_config(&provider)?;
    if extra_roots.is_empty() {
        return Ok(Arc::new(config));
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for path in extra_roots {
        let bad = |problem: String| ProxyError::Tls {
            problem: format!("root certificates in {}: {problem}", path.display()),
        };
        let mut n = 0;
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
        {
            let cert = cert.map_err(|e| bad(e.to_string()))?;
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
            n += 1;
        }
        if n == 0 {
            return Err(bad("no PEM certificate in the file".to_owned()));
        }
    }
    config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls {
            problem: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The upstream client TLS configuration by default: webpki roots plus the
/// system's native certificates.
fn default_client_config(
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls::ClientConfig, ProxyError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "egress proxy: cannot load some native root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "egress proxy: native root certificates");
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ProxyError::Tls {
                problem: e.to_string(),
            })?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Presents one certificate, whatever the client asks for (the tunnel's
/// host is known from its `CONNECT`).
#[derive(Debug)]
struct FixedCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// State shared by every connection of one proxy.
struct Shared {
    policy: DomainPolicy,
    observer: Option<EgressObserver>,
    shutdown: watch::Receiver<bool>,
    hook: Option<Arc<dyn EgressHook>>,
    /// Set when both a hook and a CA are.
    interception: Option<Interception>,
}

/// The interception state of `options`, when it has both a hook and a CA.
fn interception(options: &ProxyOptions) -> Result<Option<Interception>, ProxyError> {
    match (&options.hook, &options.ca) {
        (Some(_), Some(ca)) => {
            Interception::new(ca.clone(), options.upstream_tls.as_deref()).map(Some)
        }
        _ => Ok(None),
    }
}

impl Shared {
    fn new(
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
        hook: Option<Arc<dyn EgressHook>>,
        interception: Option<Interception>,
    ) -> impl FnOnce(watch::Receiver<bool>) -> Shared {
        move |shutdown| Shared {
            policy,
            observer,
            shutdown,
            hook,
            interception,
        }
    }

    /// Emits the one record (and log line) of a request.
    fn record(
        &self,
        target: &Target,
        allowed: bool,
        rule: Option<String>,
        reason: String,
        status: u16,
    ) {
        tracing::info!(
            method = %target.method,
            host = %target.host,
            port = target.port,
            target = %target.target,
            allowed,
            rule = rule.as_deref().unwrap_or("-"),
            reason = %reason,
            status,
            "sandbox egress"
        );
        if let Some(observer) = &self.observer {
            observer(EgressRecord {
                ts_ms: now_ms(),
                method: target.method.clone(),
                host: target.host.clone(),
                port: target.port,
                target: target.target.clone(),
                allowed,
                rule,
                reason,
                status: Some(status),
            });
        }
    }

    /// Spawns `fut`, dropped as soon as the proxy shuts down.
    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut stop = self.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = fut => {}
                _ = stop.wait_for(|stop| *stop) => {}
            }
        });
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

enum Local {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A running egress proxy. Dropping it stops it (best effort); prefer
/// [`EgressProxy::shutdown`].
pub struct EgressProxy {
    local: Local,
    /// The socket file still to remove.
    socket_file: Option<PathBuf>,
    stop: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

impl EgressProxy {
    /// Listens on a Unix socket at `path` (mode 0600), removing a stale
    /// socket file first; fails if `path` exists and is not a socket, or is
    /// a socket something still listens on. Runs on the current tokio
    /// runtime.
    pub async fn bind_unix(
        path: &Path,
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
    ) -> Result<EgressProxy, ProxyError> {
        Self::bind_unix_with(path, policy, observer, ProxyOptions::default()).await
    }

    /// [`EgressProxy::bind_unix`] with [`ProxyOptions`] (a hook, TLS
    /// interception).
    pub async fn bind_unix_with(
        path: &Path,
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
        options: ProxyOptions,
    ) -> Result<EgressProxy, ProxyError> {
        Self::bind_unix_with_limit(path, policy, observer, options, MAX_CONNECTIONS).await
    }

    async fn bind_unix_with_limit(
        path: &Path,
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
        options: ProxyOptions,
        max_connections: usize,
    ) -> Result<EgressProxy, ProxyError> {
        let interception = interception(&options)?;
        let bind_error = |source: io::Error| ProxyError::Bind {
            path_or_addr: path.display().to_string(),
            source,
        };
        remove_stale_socket(path).await.map_err(bind_error)?;
        let listener = UnixListener::bind(path).map_err(bind_error)?;
        {
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                let _ = std::fs::remove_file(path);
                return Err(bind_error(e));
            }
        }
        Ok(Self::start(
            Listener::Unix(listener),
            Local::Unix(path.to_path_buf()),
            Some(path.to_path_buf()),
            Shared::new(policy, observer, options.hook, interception),
            max_connections,
        ))
    }

    /// Listens on a TCP address (tests, and the CLI on hosts without
    /// namespaces); pass `127.0.0.1:0` for any free port. Runs on the current
    /// tokio runtime.
    pub async fn bind_tcp(
        addr: SocketAddr,
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
    ) -> Result<EgressProxy, ProxyError> {
        Self::bind_tcp_with(addr, policy, observer, ProxyOptions::default()).await
    }

    /// [`EgressProxy::bind_tcp`] with [`ProxyOptions`] (a hook, TLS
    /// interception).
    pub async fn bind_tcp_with(
        addr: SocketAddr,
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
        options: ProxyOptions,
    ) -> Result<EgressProxy, ProxyError> {
        Self::bind_tcp_with_limit(addr, policy, observer, options, MAX_CONNECTIONS).await
    }

    async fn bind_tcp_with_limit(
        addr: SocketAddr,
        policy: DomainPolicy,
        observer: Option<EgressObserver>,
        options: ProxyOptions,
        max_connections: usize,
    ) -> Result<EgressProxy, ProxyError> {
        let interception = interception(&options)?;
        let bind_error = |source: io::Error| ProxyError::Bind {
            path_or_addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        Ok(Self::start(
            Listener::Tcp(listener),
            Local::Tcp(local),
            None,
            Shared::new(policy, observer, options.hook, interception),
            max_connections,
        ))
    }

    fn start(
        listener: Listener,
        local: Local,
        socket_file: Option<PathBuf>,
        shared: impl FnOnce(watch::Receiver<bool>) -> Shared,
        max_connections: usize,
    ) -> EgressProxy {
        let (stop, shutdown) = watch::channel(false);
        let shared = Arc::new(shared(shutdown));
        let limit = Arc::new(Semaphore::new(max_connections));
        let accept_task = tokio::spawn(accept_loop(listener, shared, limit));
        EgressProxy {
            local,
            socket_file,
            stop,
            accept_task: Some(accept_task),
        }
    }

    /// The Unix socket path, when listening on one.
    pub fn unix_path(&self) -> Option<&Path> {
        match &self.local {
            Local::Unix(path) => Some(path),
            Local::Tcp(_) => None,
        }
    }

    /// The TCP address (with the actual port), when listening on one.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.local {
            Local::Tcp(addr) => Some(*addr),
            Local::Unix(_) => None,
        }
    }

    /// Stops accepting, aborts open connections and tunnels, and removes the
    /// socket file. Dropping the proxy does the same, without waiting.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            task.abort();
            let _ = task.await;
        }
        self.remove_socket_file();
    }

    fn remove_socket_file(&mut self) {
        if let Some(path) = self.socket_file.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove egress proxy socket");
                }
            }
        }
    }
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("EgressProxy");
        match &self.local {
            Local::Tcp(addr) => d.field("tcp_addr", addr),
            Local::Unix(path) => d.field("unix_path", path),
        };
        d.finish_non_exhaustive()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        self.remove_socket_file();
    }
}

/// Removes a socket file nobody listens on; refuses anything else.
async fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket; refusing to remove it",
        ));
    }
    match tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await {
        Ok(Err(_)) => std::fs::remove_file(path),
        Ok(Ok(_)) | Err(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening on this socket",
        )),
    }
}

async fn accept_loop(listener: Listener, shared: Arc<Shared>, limit: Arc<Semaphore>) {
    loop {
        match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((io, _)) => dispatch(io, &shared, &limit),
                Err(e) => accept_failed(e).await,
            },
            Listener::Unix(l) => match l.accept().await {
                Ok((io, _)) => dispatch(io, &shared, &limit),
                Err(e) => accept_failed(e).await,
            },
        }
    }
}

async fn accept_failed(e: io::Error) {
    // Typically out of file descriptors: back off rather than spin.
    tracing::warn!(error = %e, "egress proxy accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn dispatch<I>(io: I, shared: &Arc<Shared>, limit: &Arc<Semaphore>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match limit.clone().try_acquire_owned() {
        Ok(permit) => shared.spawn(serve_connection(io, shared.clone(), permit)),
        Err(_) => {
            tracing::warn!("egress proxy: too many connections, answering 503");
            shared.spawn(refuse_busy(io));
        }
    }
}

async fn refuse_busy<I>(mut io: I)
where
    I: AsyncWrite + Unpin,
{
    let body = "flotilla sandbox: the egress proxy has too many open connections; retry later.\n";
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(BUSY_WRITE_TIMEOUT, async {
        io.write_all(response.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

async fn serve_connection<I>(io: I, shared: Arc<Shared>, permit: OwnedSemaphorePermit)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Tunnels outlive the HTTP connection that opened them; they hold the
    // permit too.
    let permit = Arc::new(permit);
    let service = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let permit = permit.clone();
            async move { Ok::<_, Infallible>(handle_request(req, shared, permit).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        if e.is_parse() {
            // hyper has answered 400 (or 431 when the head is too large).
            let status = if e.is_parse_too_large() { 431 } else { 400 };
            let target = Target {
                method: String::new(),
                host: String::new(),
                port: 0,
                target: String::new(),
            };
            shared.record(
                &target,
                false,
                None,
                format!("malformed request: {e}"),
                status,
            );
        } else {
            tracing::debug!(error = %e, "egress proxy connection ended with an error");
        }
    }
}

/// Routes one request by its form.
async fn handle_request(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        handle_connect(req, shared, permit).await
    } else if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        handle_absolute(req, &shared).await
    } else {
        handle_origin_form(&req, &shared)
    }
}

/// Why the gate refused a request.
enum Refusal {
    /// The policy denied the host.
    Policy(Decision),
    /// The host resolved to an internal address and was not allowed exactly.
    Internal {
        decision: Decision,
        addr: IpAddr,
        kind: &'static str,
    },
    /// Resolving or connecting failed.
    Upstream { decision: Decision, error: String },
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Policy(_) | Refusal::Internal { .. } => StatusCode::FORBIDDEN,
            Refusal::Upstream { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// Records the refusal and builds the response for it.
    fn respond(self, shared: &Shared, target: &Target) -> Response<ProxyBody> {
        let status = self.status();
        let host = &target.host;
        match self {
            Refusal::Policy(decision) => {
                let advice = if decision.rule.is_some() {
                    // Denied by the deny list: allowing will not help.
                    format!(
                        "To allow it, remove {:?} from [sandbox.network] deny in config.",
                        decision.rule.as_deref().unwrap_or_default()
                    )
                } else if host.is_empty() || normalize_host(host).is_none() {
                    String::new()
                } else {
                    format!(
                        "To allow it, add \"{host}\" to [sandbox.network] allow in config, \
                         or pass --allow-domain {host}."
                    )
                };
                let body = format!(
                    "flotilla sandbox: egress to {} denied ({}). {advice}\n",
                    display_host(host),
                    decision.reason
                );
                shared.record(
                    target,
                    false,
                    decision.rule,
                    decision.reason.clone(),
                    status.as_u16(),
                );
                text_response(status, Some(&decision.reason), body)
            }
            Refusal::Internal {
                decision,
                addr,
                kind,
            } => {
                let rule = decision.rule.clone().unwrap_or_default();
                let reason = format!(
                    "{host} resolved to {addr}, a {kind} address, which only a host allowed by \
                     an exact rule may reach (matched {rule:?})"
                );
                let body = format!(
                    "flotilla sandbox: egress to {host} denied: it resolved to {addr}, a {kind} \
                     address. Loopback, private, link-local and shared addresses are reachable \
                     only through a host allowed by an exact rule, not through a wildcard (it \
                     matched {rule:?}); this guards against DNS rebinding and requests into the \
                     host's network. To allow it, add \"{host}\" (exactly) to [sandbox.network] \
                     allow in config, or pass --allow-domain {host}.\n"
                );
                shared.record(
                    target,
                    false,
                    decision.rule,
                    reason.clone(),
                    status.as_u16(),
                );
                text_response(status, Some(&reason), body)
            }
            Refusal::Upstream { decision, error } => {
                let body = format!(
                    "flotilla sandbox: cannot reach {host} port {}: {error}\n",
                    target.port
                );
                shared.record(
                    target,
                    true,
                    decision.rule,
                    format!("upstream failed: {error}"),
                    status.as_u16(),
                );
                text_response(status, None, body)
            }
        }
    }
}

fn display_host(host: &str) -> String {
    if host.is_empty() {
        "an empty host".to_string()
    } else {
        host.to_string()
    }
}

/// The one gate every request passes: the policy decides on the host, the
/// host is resolved, internal addresses are refused unless the host was
/// allowed exactly, and a TCP connection is opened to a checked address.
async fn open_upstream(
    shared: &Shared,
    host: &str,
    port: u16,
) -> Result<(TcpStream, Decision), Refusal> {
    let eval = shared.policy.evaluate(host);
    let Some(host) = eval.host.filter(|_| eval.decision.allowed) else {
        return Err(Refusal::Policy(eval.decision));
    };
    let decision = eval.decision;
    let exact = eval.exact;
    let attempt = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{host} resolved to no address"));
        }
        if !exact {
            if let Some((addr, kind)) = addrs
                .iter()
                .find_map(|a| internal_address_kind(a.ip()).map(|kind| (a.ip(), kind)))
            {
                return Ok(Err((addr, kind)));
            }
        }
        let mut last_error = String::new();
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Ok(stream));
                }
                Err(e) => last_error = format!("cannot connect to {addr}: {e}"),
            }
        }
        Err(last_error)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(Ok(stream))) => Ok((stream, decision)),
        Ok(Ok(Err((addr, kind)))) => Err(Refusal::Internal {
            decision,
            addr,
            kind,
        }),
        Ok(Err(error)) => Err(Refusal::Upstream { decision, error }),
        Err(_) => Err(Refusal::Upstream {
            decision,
            error: format!(
                "timed out after {} s resolving and connecting",
                CONNECT_TIMEOUT.as_secs()
            ),
        }),
    }
}

/// Names the kind of an address the sandbox may reach only through an exact
/// rule: loopback, private, link-local, unspecified, shared (100.64/10).
fn internal_address_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4_kind(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal_v4_kind(v4);
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

fn internal_v4_kind(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, _, _] = v4.octets();
    if v4.is_loopback() {
        Some("loopback")
    } else if a == 0 {
        Some("unspecified")
    } else if v4.is_private() {
        Some("private")
    } else if v4.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (100.64.0.0/10)")
    } else {
        None
    }
}

/// `CONNECT host:port`: the gate, then a tunnel copying bytes both ways, or
/// an intercepted tunnel when the hook asks for it.
async fn handle_connect(
    mut req: Request<Incoming>,
    shared: Arc<Shared>,
    permit: Arc<OwnedSemaphorePermit>,
) -> Response<ProxyBody> {
    let shared = &shared;
    let authority = req.uri().authority().cloned();
    let (host, port) = match &authority {
        Some(a) => (a.host().to_string(), a.port_u16()),
        None => (String::new(), None),
    };
    let target = Target {
        method: Method::CONNECT.to_string(),
        host: normalize_host(&host).unwrap_or(host),
        port: port.unwrap_or(0),
        target: authority
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| req.uri().to_string()),
    };
    let Some(port) = port else {
        let reason = "CONNECT needs a target of the form host:port".to_string();
        shared.record(&target, false, None, reason.clone(), 400);
        return text_response(
            StatusCode::BAD_REQUEST,
            None,
            format!("flotilla sandbox: {reason}, got {:?}.\n", target.target),
        );
    };
    match open_upstream(shared, &target.host, port).await {
        Err(refusal) => refusal.respond(shared, &target),
        Ok((upstream, decision)) => {
            let intercept = match (&shared.hook, &shared.interception) {
                (Some(hook), Some(interception)) if hook.intercept(&target.host, port) => {
                    let server = interception
                        .ca
                        .leaf_for(&target.host)
                        .map_err(|e| e.to_string())
                        .and_then(|leaf| {
                            interception.server_config(leaf).map_err(|e| e.to_string())
                        });
                    match server {
                        Ok(server) => Some((hook.clone(), server)),
                        Err(error) => {
                            let reason = format!("cannot intercept TLS: {error}");
                            shared.record(&target, false, decision.rule, reason.clone(), 502);
                            return text_response(
                                StatusCode::BAD_GATEWAY,
                                None,
                                format!("flotilla sandbox: {reason}\n"),
                            );
                        }
                    }
                }
                _ => None,
            };
            let reason = if intercept.is_some() {
                format!("{}; TLS intercepted", decision.reason)
            } else {
                decision.reason.clone()
            };
            shared.record(&target, true, decision.rule.clone(), reason, 200);
            let on_upgrade = hyper::upgrade::on(&mut req);
            let label = target.target;
            let shared = shared.clone();
            let host = target.host;
            shared.clone().spawn(async move {
                let _permit = permit;
                let upgraded = match on_upgrade.await {
                    Ok(upgraded) => upgraded,
                    Err(e) => {
                        tracing::debug!(target = %label, error = %e, "CONNECT upgrade failed");
                        return;
                    }
                };
                match intercept {
                    None => tunnel(TokioIo::new(upgraded), upstream, &label).await,
                    Some((hook, server)) => {
                        let tunnel = Arc::new(Intercepted {
                            shared,
                            hook,
                            host,
                            port,
                            decision,
                            upstream: tokio::sync::Mutex::new(UpstreamConn {
                                tcp: Some(upstream),
                                sender: None,
                            }),
                        });
                        serve_intercepted(TokioIo::new(upgraded), server, tunnel, &label).await
                    }
                }
            });
            let mut response = Response::new(empty_body());
            response.extensions_mut().insert(CONNECTION_ESTABLISHED);
            response
        }
    }
}

// ---------------------------------------------------------------------------
// Interception

/// One intercepted tunnel: its target, the gate's decision, and the upstream
/// connection its requests share.
struct Intercepted {
    shared: Arc<Shared>,
    hook: Arc<dyn EgressHook>,
    /// The `CONNECT` host, normalised.
    host: String,
    port: u16,
    /// The gate's decision on the `CONNECT`.
    decision: Decision,
    upstream: tokio::sync::Mutex<UpstreamConn>,
}

/// The upstream side of an intercepted tunnel, opened at the first request.
struct UpstreamConn {
    /// The connection the gate opened for the `CONNECT`, until used.
    tcp: Option<TcpStream>,
    sender: Option<SendRequest<ProxyBody>>,
}

/// Terminates the client's TLS on an intercepted tunnel and serves the
/// HTTP/1.1 requests inside it.
async fn serve_intercepted<C>(
    client: C,
    server: Arc<rustls::ServerConfig>,
    tunnel: Arc<Intercepted>,
    label: &str,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), client)
            .await
            .map_err(|e| {
                format!("the client did not start TLS on a tunnel the hook intercepts ({e})")
            })?;
        start
            .into_stream(server)
            .await
            .map_err(|e| format!("TLS handshake with the client failed: {e}"))
    };
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::warn!(target = %label, %error, "intercepted tunnel closed");
            return;
        }
        Err(_) => {
            tracing::warn!(target = %label, "intercepted tunnel closed: no TLS handshake in time");
            return;
        }
    };
    let service = service_fn(move |req| {
        let tunnel = tunnel.clone();
        async move { Ok::<_, Infallible>(tunnel.handle(req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(target = %label, error = %e, "intercepted connection ended with an error");
    }
}

/// `host` as it appears in a URL authority (IPv6 in brackets), with `:port`
/// unless it is `default_port`.
fn url_authority(host: &str, port: u16, default_port: u16) -> String {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    }
}

/// Whether an authority (`host` or `host:port`, from a `Host` header or a
/// request target) names `host` (normalised) and, when it has a port, `port`.
fn names_host(authority: &str, host: &str, port: u16) -> bool {
    let Ok(parsed) = authority.parse::<hyper::http::uri::Authority>() else {
        return false;
    };
    normalize_host(parsed.host()).as_deref() == Some(host)
        && parsed.port_u16().is_none_or(|p| p == port)
}

impl Intercepted {
    fn inner_target(&self, method: &Method, path: &str) -> Target {
        let path = path.split('?').next().unwrap_or_default();
        Target {
            method: method.to_string(),
            host: self.host.clone(),
            port: self.port,
            target: format!(
                "https://{}{path}",
                url_authority(&self.host, self.port, 443)
            ),
        }
    }

    /// One request inside the tunnel: the `Host` check, the hook, upstream.
    async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let shared = &*self.shared;
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| !pq.is_empty())
            .unwrap_or("/")
            .to_string();
        let target = self.inner_target(&parts.method, &path);

        // Every name the request gives must be the tunnel's host.
        let mut named: Vec<String> = parts
            .headers
            .get_all(header::HOST)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if let Some(authority) = parts.uri.authority() {
            named.push(authority.to_string());
        }
        if let Some(other) = named
            .iter()
            .find(|name| !names_host(name, &self.host, self.port))
        {
            let reason = format!(
                "the request names host {other:?}, but the tunnel was opened to {}; a request                  for another host must open its own CONNECT (domain fronting is refused)",
                url_authority(&self.host, self.port, 0)
            );
            shared.record(
                &target,
                false,
                self.decision.rule.clone(),
                reason.clone(),
                421,
            );
            return text_response(
                StatusCode::MISDIRECTED_REQUEST,
                Some(&reason),
                format!("flotilla sandbox: {reason}.\n"),
            );
        }
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            match path.parse::<Uri>() {
                Ok(uri) => parts.uri = uri,
                Err(e) => {
                    let reason = format!("bad request target: {e}");
                    shared.record(&target, false, None, reason.clone(), 400);
                    return text_response(
                        StatusCode::BAD_REQUEST,
                        None,
                        format!("flotilla sandbox: {reason}\n"),
                    );
                }
            }
        }
        strip_hop_by_hop(&mut parts.headers);
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(value) = HeaderValue::from_str(&url_authority(&self.host, self.port, 443)) {
                parts.headers.insert(header::HOST, value);
            }
        }
        parts.version = Version::HTTP_11;

        let info = RequestInfo {
            host: &self.host,
            port: self.port,
            tls: true,
        };
        let (body, response_filter) =
            match run_hook(self.hook.as_ref(), &info, &mut parts, body).await {
                Ok(prepared) => prepared,
                Err(stop) => return stop.respond(shared, &target, self.decision.rule.clone()),
            };

        let mut upstream = self.upstream.lock().await;
        if let Err(response) = self.ensure_upstream(&mut upstream, &target).await {
            return response;
        }
        let Some(sender) = upstream.sender.as_mut() else {
            return text_response(
                StatusCode::BAD_GATEWAY,
                None,
                "flotilla sandbox: no upstream connection\n".into(),
            );
        };
        let response = match sender.send_request(Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(e) => {
                upstream.sender = None;
                return Refusal::Upstream {
                    decision: self.decision.clone(),
                    error: format!("upstream HTTP error: {e}"),
                }
                .respond(shared, &target);
            }
        };
        drop(upstream);
        let response = finish_response(Some(self.hook.as_ref()), &info, response, response_filter);
        shared.record(
            &target,
            true,
            self.decision.rule.clone(),
            self.decision.reason.clone(),
            response.status().as_u16(),
        );
        response
    }

    /// Makes `upstream.sender` a ready HTTP/1.1 connection over TLS to the
    /// tunnel's host: the current one, or a new one on the connection the
    /// gate opened for the `CONNECT`, or through the gate again.
    async fn ensure_upstream(
        &self,
        upstream: &mut UpstreamConn,
        target: &Target,
    ) -> Result<(), Response<ProxyBody>> {
        let shared = &*self.shared;
        if let Some(sender) = upstream.sender.as_mut() {
            match tokio::time::timeout(CONNECT_TIMEOUT, sender.ready()).await {
                Ok(Ok(())) => return Ok(()),
                _ => upstream.sender = None,
            }
        }
        let tcp = match upstream.tcp.take() {
            Some(tcp) => tcp,
            None => match open_upstream(shared, &self.host, self.port).await {
                Ok((tcp, _)) => tcp,
                Err(refusal) => return Err(refusal.respond(shared, target)),
            },
        };
        let upstream_error = |error: String| {
            Refusal::Upstream {
                decision: self.decision.clone(),
                error,
            }
            .respond(shared, target)
        };
        let Some(interception) = &shared.interception else {
            return Err(upstream_error("TLS interception is not set up".into()));
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
            upstream_error(format!("{:?} is not a TLS server name: {e}", self.host))
        })?;
        let tls =
            match tokio::time::timeout(CONNECT_TIMEOUT, interception.connector.connect(name, tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return Err(upstream_error(format!(
                        "TLS handshake with {} failed: {e}",
                        self.host
                    )))
                }
                Err(_) => {
                    return Err(upstream_error(format!(
                        "TLS handshake with {} timed out after {} s",
                        self.host,
                        CONNECT_TIMEOUT.as_secs()
                    )))
                }
            };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| upstream_error(format!("HTTP handshake failed: {e}")))?;
        shared.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTPS connection ended with an error");
            }
        });
        upstream.sender = Some(sender);
        Ok(())
    }
}

/// Why a request stops before going upstream: the hook refused it, its body
/// filter failed, or its body could not be read.
struct Stop {
    status: StatusCode,
    reason: String,
}

impl Stop {
    /// Records the refusal and answers it, with the reason in the body and
    /// in `X-Flotilla-Denied`.
    fn respond(
        self,
        shared: &Shared,
        target: &Target,
        rule: Option<String>,
    ) -> Response<ProxyBody> {
        shared.record(
            target,
            false,
            rule,
            self.reason.clone(),
            self.status.as_u16(),
        );
        text_response(
            self.status,
            Some(&self.reason),
            format!(
                "flotilla sandbox: the request to {} was refused: {}\n",
                display_host(&target.host),
                self.reason
            ),
        )
    }
}

/// Asks the hook about a request whose head is ready to go upstream (origin
/// form, no hop-by-hop headers) and applies its answer: the body to send
/// (filtered and buffered when the hook filters it) and the filter for the
/// response body.
async fn run_hook(
    hook: &dyn EgressHook,
    info: &RequestInfo<'_>,
    parts: &mut hyper::http::request::Parts,
    body: Incoming,
) -> Result<(ProxyBody, Option<Box<dyn BodyFilter>>), Stop> {
    let filters = match hook.on_request(info, parts) {
        HookVerdict::Refuse { status, reason } => {
            return Err(Stop {
                status: StatusCode::from_u16(status)
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::FORBIDDEN),
                reason,
            })
        }
        HookVerdict::Forward(filters) => filters,
    };
    // The hook may have set an absolute URI; upstream gets origin form.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| !pq.is_empty())
            .unwrap_or("/");
        parts.uri = path.parse::<Uri>().map_err(|e| Stop {
            status: StatusCode::BAD_GATEWAY,
            reason: format!("the hook set a bad request target: {e}"),
        })?;
    }
    let BodyFilters { request, response } = filters;
    let body = match request {
        None => body.map_err(BoxError::from).boxed_unsync(),
        // A filter that never changes the bytes (a blocker) streams, with
        // the request's own framing: nothing is buffered.
        Some(filter) if filter.preserves_length() => FilteredBody {
            inner: body,
            filter,
            done: false,
        }
        .boxed_unsync(),
        Some(filter) => {
            let had_body = !body.is_end_stream();
            let filtered = filter_request_body(body, filter).await?;
            parts.headers.remove(header::CONTENT_LENGTH);
            if had_body || !filtered.is_empty() {
                parts
                    .headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(filtered.len()));
            }
            Full::new(filtered)
                .map_err(|never| match never {})
                .boxed_unsync()
        }
    };
    Ok((body, response))
}

/// Reads a whole request body through `filter`, up to
/// [`MAX_FILTERED_BODY`] bytes.
async fn filter_request_body(
    mut body: Incoming,
    mut filter: Box<dyn BodyFilter>,
) -> Result<Bytes, Stop> {
    let refused = |reason: String| Stop {
        status: StatusCode::FORBIDDEN,
        reason,
    };
    let mut out = BytesMut::new();
    let push = |out: &mut BytesMut, chunk: Bytes| {
        if out.len() + chunk.len() > MAX_FILTERED_BODY {
            return Err(Stop {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                reason: format!(
                    "the request body is larger than {} MiB, the most the proxy buffers for a \
                     filtered request",
                    MAX_FILTERED_BODY >> 20
                ),
            });
        }
        out.extend_from_slice(&chunk);
        Ok(())
    };
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Stop {
            status: StatusCode::BAD_REQUEST,
            reason: format!("cannot read the request body: {e}"),
        })?;
        if let Ok(data) = frame.into_data() {
            let passed = filter.filter(data).map_err(refused)?;
            push(&mut out, passed)?;
        }
    }
    let rest = filter.finish().map_err(refused)?;
    push(&mut out, rest)?;
    Ok(out.freeze())
}

/// Prepares a response from upstream for the client: no hop-by-hop
/// headers, HTTP/1.1, the hook's `on_response`, and the body filter (which
/// drops `Content-Length`).
fn finish_response(
    hook: Option<&dyn EgressHook>,
    info: &RequestInfo<'_>,
    response: Response<Incoming>,
    filter: Option<Box<dyn BodyFilter>>,
) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    if let Some(hook) = hook {
        // A custom reason phrase is relayed as is by hyper; the hook cannot
        // see it, so it goes (the status code stays).
        parts.extensions.remove::<ReasonPhrase>();
        hook.on_response(info, &mut parts);
    }
    let body = match filter {
        None => body.map_err(BoxError::from).boxed_unsync(),
        Some(filter) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            FilteredBody {
                inner: body,
                filter,
                done: false,
            }
            .boxed_unsync()
        }
    };
    Response::from_parts(parts, body)
}

/// A body filter failed: the exchange is aborted.
#[derive(Debug)]
struct FilterAborted(String);

impl std::fmt::Display for FilterAborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "body filter aborted the exchange: {}", self.0)
    }
}

impl std::error::Error for FilterAborted {}

/// A body passed through a [`BodyFilter`] as it streams (trailers are
/// dropped).
struct FilteredBody<B> {
    inner: B,
    filter: Box<dyn BodyFilter>,
    done: bool,
}

impl<B> Body for FilteredBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let next = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(next) => next,
            };
            let result = match next {
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.filter.filter(data),
                    Err(_trailers) => continue,
                },
                None => {
                    this.done = true;
                    this.filter.finish()
                }
            };
            match result {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                Err(reason) => {
                    this.done = true;
                    tracing::warn!(%reason, "egress proxy: a body filter aborted an exchange");
                    return Poll::Ready(Some(Err(Box::new(FilterAborted(reason)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Copies bytes both ways until both sides are done (a side's EOF is passed
/// on as a write shutdown to the other), or either fails.
async fn tunnel<C>(mut client: C, mut upstream: TcpStream, label: &str)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => {
            tracing::debug!(target = %label, bytes_up = up, bytes_down = down, "tunnel closed")
        }
        Err(e) => tracing::debug!(target = %label, error = %e, "tunnel ended with an error"),
    }
}

/// `GET http://host:port/path`: the gate, then the request forwarded without
/// hop-by-hop headers and the response relayed as it streams.
async fn handle_absolute(req: Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let uri = req.uri().clone();
    let raw_host = uri.host().unwrap_or_default().to_string();
    let host = normalize_host(&raw_host).unwrap_or_else(|| raw_host.clone());
    let explicit_port = uri.port_u16();
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| !pq.is_empty())
        .unwrap_or("/")
        .to_string();
    let authority = match explicit_port {
        Some(p) => format!("{raw_host}:{p}"),
        None => raw_host.clone(),
    };
    let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
    let target = Target {
        method: req.method().to_string(),
        host,
        port: explicit_port.unwrap_or(if scheme == "https" { 443 } else { 80 }),
        target: format!("{scheme}://{authority}{path}"),
    };

    if scheme != "http" || raw_host.is_empty() {
        let reason = if scheme == "https" {
            "https:// URLs must go through CONNECT (set HTTPS_PROXY), not as a plain request"
                .to_string()
        } else if scheme.is_empty() || raw_host.is_empty() {
            "the request target must be an absolute http:// URL with a host".to_string()
        } else {
            format!("unsupported URL scheme {scheme:?}; only http:// is proxied in plain form")
        };
        shared.record(&target, false, None, reason.clone(), 400);
        return text_response(
            StatusCode::BAD_REQUEST,
            None,
            format!("flotilla sandbox: {reason}.\n"),
        );
    }

    match open_upstream(shared, &target.host, target.port).await {
        Err(refusal) => refusal.respond(shared, &target),
        Ok((upstream, decision)) => {
            let (mut parts, body) = req.into_parts();
            if let Err(error) = to_origin_form(&mut parts, &authority, &path) {
                return Refusal::Upstream { decision, error }.respond(shared, &target);
            }
            let info = RequestInfo {
                host: &target.host,
                port: target.port,
                tls: false,
            };
            let (body, response_filter) = match &shared.hook {
                None => (body.map_err(BoxError::from).boxed_unsync(), None),
                Some(hook) => match run_hook(hook.as_ref(), &info, &mut parts, body).await {
                    Ok(prepared) => prepared,
                    Err(stop) => return stop.respond(shared, &target, decision.rule),
                },
            };
            match forward(Request::from_parts(parts, body), upstream, shared).await {
                Ok(response) => {
                    let response =
                        finish_response(shared.hook.as_deref(), &info, response, response_filter);
                    shared.record(
                        &target,
                        true,
                        decision.rule,
                        decision.reason,
                        response.status().as_u16(),
                    );
                    response
                }
                Err(error) => Refusal::Upstream { decision, error }.respond(shared, &target),
            }
        }
    }
}

/// Turns the head of an absolute-form request into the one sent upstream:
/// origin form, `Host` set to `authority`, no hop-by-hop headers, HTTP/1.1.
fn to_origin_form(
    parts: &mut hyper::http::request::Parts,
    authority: &str,
    path: &str,
) -> Result<(), String> {
    strip_hop_by_hop(&mut parts.headers);
    let host_value = HeaderValue::from_str(authority).map_err(|e| format!("bad host: {e}"))?;
    parts.headers.insert(header::HOST, host_value);
    parts.uri = path
        .parse::<Uri>()
        .map_err(|e| format!("bad request path: {e}"))?;
    parts.version = Version::HTTP_11;
    Ok(())
}

/// Sends `req` (already in origin form) on `upstream` and returns the
/// response, whose body streams from the upstream connection.
async fn forward(
    req: Request<ProxyBody>,
    upstream: TcpStream,
    shared: &Shared,
) -> Result<Response<Incoming>, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(upstream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    shared.spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP connection ended with an error");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("upstream HTTP error: {e}"))
}

/// Removes the headers meant for one hop: those the `Connection` header
/// lists, and the standard hop-by-hop ones (including the proxy's own
/// `Proxy-Authorization`).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .chain(headers.get_all("proxy-connection").iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        "connection",
        "proxy-connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// A request in origin form (`GET /path`) was sent to the proxy itself.
fn handle_origin_form(req: &Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let target = Target {
        method: req.method().to_string(),
        host,
        port: 0,
        target: req.uri().to_string(),
    };
    let reason = "origin-form request sent to the proxy itself".to_string();
    shared.record(&target, false, None, reason, 400);
    text_response(
        StatusCode::BAD_REQUEST,
        None,
        "flotilla sandbox: this is the sandbox's egress proxy, not a web server. Send requests \
         in absolute form (\"GET http://host/path HTTP/1.1\") or use \"CONNECT host:port\"; \
         tools do this when HTTP_PROXY and HTTPS_PROXY point here.\n"
            .to_string(),
    )
}

fn empty_body() -> ProxyBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A `text/plain` response, with `X-Flotilla-Denied` when `denied` is given.
fn text_response(status: StatusCode, denied: Option<&str>, body: String) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(reason) = denied {
        // Header values must be visible ASCII; hosts and rules already are.
        let clean: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(value) = HeaderValue::from_str(&clean) {
            headers.insert(HeaderName::from_static(DENIED_HEADER), value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;
    use tokio::sync::oneshot;

    const WAIT: Duration = Duration::from_secs(10);

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn policy(allow: &[&str], deny: &[&str]) -> DomainPolicy {
        DomainPolicy::new(&strings(allow), &strings(deny)).unwrap()
    }

    type Records = Arc<Mutex<Vec<EgressRecord>>>;

    fn recorder() -> (EgressObserver, Records) {
        let records = Records::default();
        let sink = records.clone();
        let observer: EgressObserver = Arc::new(move |r| sink.lock().unwrap().push(r));
        (observer, records)
    }

    async fn start(allow: &[&str], deny: &[&str]) -> (EgressProxy, SocketAddr, Records) {
        let (observer, records) = recorder();
        let proxy = EgressProxy::bind_tcp(
            "127.0.0.1:0".parse().unwrap(),
            policy(allow, deny),
            Some(observer),
        )
        .await
        .unwrap();
        let addr = proxy.tcp_addr().unwrap();
        (proxy, addr, records)
    }

    fn taken(records: &Records) -> Vec<EgressRecord> {
        std::mem::take(&mut *records.lock().unwrap())
    }

    /// An echo server on 127.0.0.1 that counts the connections it accepts.
    async fn echo_server() -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        (port, accepted)
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Reads a message head byte by byte, so nothing after it is consumed.
    async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let read = async {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut byte).await.unwrap();
                assert_eq!(n, 1, "EOF in head: {:?}", String::from_utf8_lossy(&head));
                head.push(byte[0]);
            }
            String::from_utf8(head).unwrap()
        };
        tokio::time::timeout(WAIT, read).await.unwrap()
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Reads a response with a Content-Length body: (head, body).
    async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> (String, String) {
        let head = read_head(s).await;
        let len: usize = header(&head, "content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        tokio::time::timeout(WAIT, s.read_exact(&mut body))
            .await
            .unwrap()
            .unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    /// Sends a CONNECT and returns the response head.
    async fn connect_via<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, authority: &str) -> String {
        let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        read_head(s).await
    }

    async fn ping<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, data: &[u8]) {
        s.write_all(data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, data);
    }

    /// Waits until the peer closes (EOF or an error), failing after WAIT.
    async fn assert_closed<S: AsyncRead + Unpin>(s: &mut S) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("unexpected data: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => panic!("connection still open"),
        }
    }

    #[test]
    fn patterns_valid_and_invalid() {
        for ok in [
            "github.com",
            "GitHub.COM",
            "github.com.",
            "*.github.com",
            "*.GitHub.com.",
            "*",
            "localhost",
            "my_host-1.internal",
            "127.0.0.1",
            "::1",
            "[::1]",
        ] {
            assert!(DomainPolicy::new(&strings(&[ok]), &[]).is_ok(), "{ok:?}");
            assert!(DomainPolicy::new(&[], &strings(&[ok])).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "*.",
            "*..",
            "https://github.com",
            "github.com/x",
            "github.com:443",
            "github.com:",
            "[::1]:80",
            "git hub.com",
            " github.com",
            "*github.com",
            "gith*b.com",
            "github.*",
            "*.*.com",
            "**",
            "a..b",
            ".github.com",
            "*.127.0.0.1",
            "ex!ample.com",
            "exämple.com",
        ] {
            let err = DomainPolicy::new(&strings(&["ok.com", bad]), &[]).unwrap_err();
            assert!(matches!(err, ProxyError::InvalidPattern { .. }), "{bad:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("allow list"), "{msg}");
            assert!(msg.contains("accepted patterns are"), "{msg}");
        }
        let err = DomainPolicy::new(&[], &strings(&["evil.com:80"])).unwrap_err();
        assert!(err.to_string().contains("deny list"), "{err}");
        assert!(err.to_string().contains("ports are not supported"), "{err}");
    }

    #[test]
    fn matching_semantics() {
        let p = policy(
            &[
                "github.com",
                "*.Example.org",
                "127.0.0.1",
                "[::1]",
                "fe80::1",
            ],
            &[],
        );
        assert!(p.decide("github.com").allowed);
        assert!(p.decide("GITHUB.com.").allowed);
        assert!(!p.decide("api.github.com").allowed);
        assert!(!p.decide("notgithub.com").allowed);
        assert!(!p.decide("github.com.evil").allowed);
        assert!(p.decide("a.example.org").allowed);
        assert!(p.decide("a.b.EXAMPLE.org.").allowed);
        assert!(!p.decide("example.org").allowed);
        assert!(!p.decide("badexample.org").allowed);
        assert!(p.decide("127.0.0.1").allowed);
        assert!(!p.decide("127.0.0.2").allowed);
        assert!(p.decide("::1").allowed);
        assert!(p.decide("[::1]").allowed);
        assert!(p.decide("[0:0::1]").allowed);
        assert!(p.decide("FE80::1").allowed);
        assert!(!p.decide("").allowed);
        assert!(!p.decide("bad host").allowed);
        assert_eq!(p.decide("bad/host").reason, "not a valid host name");

        assert_eq!(
            p.decide("evil.com"),
            Decision {
                allowed: false,
                rule: None,
                reason: "not in the allow list".to_string(),
            }
        );
        assert_eq!(
            p.decide("x.example.org"),
            Decision {
                allowed: true,
                rule: Some("*.Example.org".to_string()),
                reason: "allowed by rule \"*.Example.org\" in the allow list".to_string(),
            }
        );

        let any = policy(&["*"], &[]);
        assert!(any.decide("anything.at.all").allowed);
        assert!(any.decide("10.0.0.1").allowed);
        assert!(!any.decide("not valid").allowed);

        let none = DomainPolicy::deny_all();
        assert!(!none.decide("github.com").allowed);
        assert_eq!(none.decide("github.com").reason, "not in the allow list");
    }

    #[test]
    fn deny_wins_and_the_most_specific_rule_is_reported() {
        let p = policy(&["*", "api.evil.com"], &["*.evil.com"]);
        assert_eq!(
            p.decide("api.evil.com"),
            Decision {
                allowed: false,
                rule: Some("*.evil.com".to_string()),
                reason: "denied by rule \"*.evil.com\" in the deny list".to_string(),
            }
        );
        assert!(p.decide("evil.com").allowed);

        let p = policy(&["localhost"], &["LOCALHOST."]);
        assert!(!p.decide("localhost").allowed);

        let p = policy(&["*", "*.github.com", "api.github.com"], &[]);
        assert_eq!(
            p.decide("api.github.com").rule.as_deref(),
            Some("api.github.com")
        );
        assert!(p.evaluate("api.github.com").exact);
        assert_eq!(
            p.decide("x.github.com").rule.as_deref(),
            Some("*.github.com")
        );
        assert!(!p.evaluate("x.github.com").exact);
        assert_eq!(p.decide("other.com").rule.as_deref(), Some("*"));
        assert!(!p.evaluate("other.com").exact);
    }

    #[test]
    fn internal_addresses() {
        for internal in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "0.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(internal_address_kind(ip).is_some(), "{internal}");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "100.63.255.255",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(internal_address_kind(ip).is_none(), "{public}");
        }
    }

    #[tokio::test]
    async fn connect_to_an_allowed_host_tunnels_bytes() {
        let (echo, accepted) = echo_server().await;
        let (proxy, addr, records) = start(&["localhost"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The request arrives in pieces.
        let req = format!("CONNECT localhost:{echo} HTTP/1.1\r\nHost: localhost:{echo}\r\n\r\n");
        for piece in [&req[..5], &req[5..20], &req[20..]] {
            s.write_all(piece.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let head = read_head(&mut s).await;
        assert!(
            head.starts_with("HTTP/1.1 200 Connection Established\r\n"),
            "{head}"
        );
        ping(&mut s, b"ping through the tunnel").await;
        ping(&mut s, &[0u8, 255, 13, 10, 13, 10]).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        let recs = taken(&records);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = &recs[0];
        assert_eq!(r.method, "CONNECT");
        assert_eq!(r.host, "localhost");
        assert_eq!(r.port, echo);
        assert_eq!(r.target, format!("localhost:{echo}"));
        assert!(r.allowed);
        assert_eq!(r.rule.as_deref(), Some("localhost"));
        assert_eq!(r.status, Some(200));
        assert!(r.ts_ms > 0);

        // The client's EOF reaches the echo server, whose close comes back.
        s.shutdown().await.unwrap();
        assert_closed(&mut s).await;
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn connect_to_a_denied_host_is_403_and_never_reaches_upstream() {
        let (echo, accepted) = echo_server().await;
        let (proxy, addr, records) = start(&["example.com"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("CONNECT localhost:{echo} HTTP/1.1\r\nHost: localhost:{echo}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert_eq!(
            header(&head, "x-flotilla-denied"),
            Some("not in the allow list")
        );
        assert!(
            header(&head, "content-type")
                .unwrap()
                .starts_with("text/plain"),
            "{head}"
        );
        assert_eq!(
            body,
            "flotilla sandbox: egress to localhost denied (not in the allow list). To allow it, \
             add \"localhost\" to [sandbox.network] allow in config, or pass --allow-domain \
             localhost.\n"
        );

        // Denied by the deny list, on the same connection.
        drop(s);
        let (proxy2, addr2, records2) = start(&["localhost"], &["*.localhost", "localhost"]).await;
        let mut s = TcpStream::connect(addr2).await.unwrap();
        let req = format!("CONNECT LOCALHOST:{echo} HTTP/1.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
        assert_eq!(
            header(&head, "x-flotilla-denied"),
            Some("denied by rule \"localhost\" in the deny list")
        );
        assert!(
            body.contains("remove \"localhost\" from [sandbox.network] deny"),
            "{body}"
        );

        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0);

        let recs = taken(&records);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert!(!recs[0].allowed);
        assert_eq!(recs[0].rule, None);
        assert_eq!(recs[0].reason, "not in the allow list");
        assert_eq!(recs[0].status, Some(403));
        let recs = taken(&records2);
        assert_eq!(recs.len(), 1, "{recs:?}");
        assert!(!recs[0].allowed);
        assert_eq!(recs[0].host, "localhost");
        assert_eq!(recs[0].rule.as_deref(), Some("localhost"));
        proxy.shutdown().await;
        proxy2.shutdown().await;
    }

    #[tokio::test]
    async fn wildcard_rules_cannot_reach_internal_addresses() {
        let (echo, accepted) = echo_server().await;
        let (proxy, addr, records) = start(&["*", "*.localhost"], &[]).await;
        for authority in [
            format!("127.0.0.1:{echo}"),
            format!("localhost:{echo}"),
            format!("[::ffff:127.0.0.1]:{echo}"),
        ] {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req = format!("CONNECT {authority} HTTP/1.1\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let (head, body) = read_response(&mut s).await;
            assert!(head.starts_with("HTTP/1.1 403 "), "{authority}: {head}");
            assert!(
                header(&head, "x-flotilla-denied")
                    .unwrap()
                    .contains("loopback"),
                "{head}"
            );
            assert!(body.contains("a loopback address"), "{body}");
            assert!(body.contains("exact rule"), "{body}");
            assert!(body.contains("--allow-domain"), "{body}");
        }
        // Plain HTTP goes through the same gate.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET http://127.0.0.1:{echo}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{head}");

        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        let recs = taken(&records);
        assert_eq!(recs.len(), 4, "{recs:?}");
        assert!(recs.iter().all(|r| !r.allowed && r.status == Some(403)));
        assert_eq!(recs[0].rule.as_deref(), Some("*"));
        assert_eq!(recs[0].host, "127.0.0.1");
        proxy.shutdown().await;

        // An exact rule may.
        let (proxy, addr, _) = start(&["*", "127.0.0.1"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = connect_via(&mut s, &format!("127.0.0.1:{echo}")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        ping(&mut s, b"exact").await;
        proxy.shutdown().await;
    }

    /// A one-shot HTTP server that hands over the request head it got and
    /// sends the second half of a chunked body only when released.
    async fn split_http_server() -> (u16, oneshot::Receiver<String>, oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (head_tx, head_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let head = read_head(&mut s).await;
            head_tx.send(head).unwrap();
            s.write_all(
                b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Upstream: yes\r\n\
                  Connection: close, X-Hop-Resp\r\nX-Hop-Resp: 1\r\n\
                  Transfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n",
            )
            .await
            .unwrap();
            s.flush().await.unwrap();
            let _ = release_rx.await;
            s.write_all(b"5\r\nworld\r\n0\r\n\r\n").await.unwrap();
            s.flush().await.unwrap();
            // Keep the socket until the client has read everything.
            let _ = s.read(&mut [0u8; 1]).await;
        });
        (port, head_rx, release_tx)
    }

    /// Reads from `s` into `buf` until `buf` contains `needle`.
    async fn read_until<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>, needle: &str) {
        let read = async {
            while !String::from_utf8_lossy(buf).contains(needle) {
                let mut chunk = [0u8; 1024];
                let n = s.read(&mut chunk).await.unwrap();
                assert!(
                    n > 0,
                    "EOF before {needle:?}: {:?}",
                    String::from_utf8_lossy(buf)
                );
                buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(WAIT, read).await.unwrap();
    }

    #[tokio::test]
    async fn absolute_form_get_is_forwarded_and_streamed() {
        let (port, upstream_head, release) = split_http_server().await;
        let (proxy, addr, records) = start(&["localhost"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET http://localhost:{port}/x?q=1 HTTP/1.1\r\nHost: localhost:{port}\r\n\
             Proxy-Authorization: Basic c2VjcmV0\r\nProxy-Connection: keep-alive\r\n\
             Connection: X-Hop\r\nX-Hop: drop me\r\nX-Keep: keep me\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();

        let got = upstream_head.await.unwrap();
        assert!(got.starts_with("GET /x?q=1 HTTP/1.1\r\n"), "{got}");
        assert_eq!(
            header(&got, "host"),
            Some(format!("localhost:{port}").as_str())
        );
        assert_eq!(header(&got, "x-keep"), Some("keep me"));
        for gone in ["proxy-authorization", "proxy-connection", "x-hop"] {
            assert_eq!(header(&got, gone), None, "{gone} in {got}");
        }

        let head = read_head(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
        assert_eq!(header(&head, "x-upstream"), Some("yes"));
        assert_eq!(header(&head, "x-hop-resp"), None, "{head}");
        // The first half arrives before the upstream has sent the rest.
        let mut body = Vec::new();
        read_until(&mut s, &mut body, "hello ").await;
        assert!(!String::from_utf8_lossy(&body).contains("world"));
        release.send(()).unwrap();
        read_until(&mut s, &mut body, "0\r\n\r\n").await;
        assert!(String::from_utf8_lossy(&body).contains("world"), "{body:?}");

        let recs = taken(&records);
        assert_eq!(recs.len(), 1, "{recs:?}");
        let r = &recs[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.host, "localhost");
        assert_eq!(r.port, port);
        assert_eq!(r.target, format!("http://localhost:{port}/x?q=1"));
        assert!(r.allowed);
        assert_eq!(r.rule.as_deref(), Some("localhost"));
        assert_eq!(r.status, Some(201));
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn denied_get_explains_how_to_allow() {
        let (proxy, addr, records) = start(&["example.com"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET http://Evil.Example.com/x HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert_eq!(
            header(&head, "x-flotilla-denied"),
            Some("not in the allow list")
        );
        assert_eq!(
            body,
            "flotilla sandbox: egress to evil.example.com denied (not in the allow list). To \
             allow it, add \"evil.example.com\" to [sandbox.network] allow in config, or pass \
             --allow-domain evil.example.com.\n"
        );
        // https:// in plain form is refused: it must use CONNECT.
        s.write_all(b"GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert!(body.contains("CONNECT"), "{body}");

        let recs = taken(&records);
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert_eq!(recs[0].method, "GET");
        assert_eq!(recs[0].host, "evil.example.com");
        assert_eq!(recs[0].port, 80);
        assert_eq!(recs[0].target, "http://Evil.Example.com/x");
        assert!(!recs[0].allowed);
        assert_eq!(recs[0].status, Some(403));
        assert_eq!(recs[1].status, Some(400));
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn unreachable_upstream_is_502() {
        let port = closed_port().await;
        let (proxy, addr, records) = start(&["localhost"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let (head, body) = {
            let req = format!("CONNECT localhost:{port} HTTP/1.1\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            read_response(&mut s).await
        };
        assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
        assert!(body.contains("cannot reach localhost port"), "{body}");
        assert!(body.contains("refused"), "{body}");

        let req = format!("GET http://localhost:{port}/ HTTP/1.1\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 502 "), "{head}");

        let recs = taken(&records);
        assert_eq!(recs.len(), 2, "{recs:?}");
        assert!(recs.iter().all(|r| r.allowed && r.status == Some(502)));
        assert!(recs[0].reason.starts_with("upstream failed"), "{recs:?}");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_requests_are_400_and_the_proxy_keeps_serving() {
        let (echo, _) = echo_server().await;
        let (proxy, addr, records) = start(&["localhost"], &[]).await;

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"\x01\x02 garbage\r\n\r\n").await.unwrap();
        let (head, _) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert_closed(&mut s).await;

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:3128\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert!(body.contains("egress proxy"), "{body}");

        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"CONNECT localhost HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_response(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert!(body.contains("host:port"), "{body}");

        // A head over 16 KiB.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let big = format!(
            "GET http://localhost:{echo}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(17 * 1024)
        );
        let _ = s.write_all(big.as_bytes()).await;
        let mut buf = Vec::new();
        if let Ok(Ok(_)) = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await {
            let text = String::from_utf8_lossy(&buf);
            assert!(
                text.is_empty() || text.starts_with("HTTP/1.1 431 "),
                "{text}"
            );
        }

        // The next client is served.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = connect_via(&mut s, &format!("localhost:{echo}")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        ping(&mut s, b"still here").await;

        let recs = taken(&records);
        let statuses: Vec<_> = recs.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [Some(400), Some(400), Some(400), Some(431), Some(200)],
            "{recs:?}"
        );
        assert!(recs[0].reason.starts_with("malformed request"), "{recs:?}");
        assert_eq!(recs[1].method, "GET");
        assert_eq!(recs[1].target, "/index.html");
        assert_eq!(recs[2].method, "CONNECT");
        assert!(recs[..4].iter().all(|r| !r.allowed));
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_get_503() {
        let (echo, _) = echo_server().await;
        let proxy = EgressProxy::bind_tcp_with_limit(
            "127.0.0.1:0".parse().unwrap(),
            policy(&["localhost"], &[]),
            None,
            ProxyOptions::default(),
            1,
        )
        .await
        .unwrap();
        let addr = proxy.tcp_addr().unwrap();
        let mut first = TcpStream::connect(addr).await.unwrap();
        let head = connect_via(&mut first, &format!("localhost:{echo}")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");

        let mut second = TcpStream::connect(addr).await.unwrap();
        let (head, body) = read_response(&mut second).await;
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(body.contains("too many"), "{body}");

        // The tunnel holds the slot until it closes.
        ping(&mut first, b"x").await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let head = connect_via(&mut third, &format!("localhost:{echo}")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        proxy.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_aborts_open_tunnels() {
        let (echo, _) = echo_server().await;
        let (proxy, addr, _) = start(&["localhost"], &[]).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let head = connect_via(&mut s, &format!("localhost:{echo}")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        ping(&mut s, b"before").await;
        proxy.shutdown().await;
        assert_closed(&mut s).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn unix_socket_listener() {
        use std::os::unix::fs::PermissionsExt;
        let (echo, _) = echo_server().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("egress.sock");
        // A stale socket file from an earlier run is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (observer, records) = recorder();
        let proxy = EgressProxy::bind_unix(&path, policy(&["localhost"], &[]), Some(observer))
            .await
            .unwrap();
        assert_eq!(proxy.unix_path(), Some(path.as_path()));
        assert_eq!(proxy.tcp_addr(), None);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A live socket is not taken over.
        let err = EgressProxy::bind_unix(&path, DomainPolicy::deny_all(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Bind { .. }), "{err}");

        let mut s = UnixStream::connect(&path).await.unwrap();
        let head = connect_via(&mut s, &format!("localhost:{echo}")).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        ping(&mut s, b"over unix").await;
        assert_eq!(taken(&records).len(), 1);

        proxy.shutdown().await;
        assert!(!path.exists());
        assert_closed(&mut s).await;

        // Drop removes the socket file too.
        let proxy = EgressProxy::bind_unix(&path, DomainPolicy::deny_all(), None)
            .await
            .unwrap();
        assert!(path.exists());
        drop(proxy);
        assert!(!path.exists());

        // Anything but a socket is left alone.
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, b"keep me").unwrap();
        let err = EgressProxy::bind_unix(&file, DomainPolicy::deny_all(), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Bind { .. }), "{err}");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
