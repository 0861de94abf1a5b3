//! Hooks into the egress proxy: where a credential layer (`flotilla-vault`)
//! sees, rewrites or refuses each HTTP request leaving a sandbox.
//!
//! The proxy asks the hook, for every `CONNECT` its domain policy allowed,
//! whether to intercept it ([`EgressHook::intercept`]): an intercepted tunnel
//! has its TLS terminated with a leaf certificate minted by the proxy's
//! [`crate::ca::CertAuthority`] (the sandbox trusts that CA through
//! `SSL_CERT_FILE` and friends), its HTTP/1.1 requests are read one by one,
//! and each is sent upstream over a fresh TLS connection that the proxy
//! verifies against real roots. Plain `http://` requests go through the same
//! hook with `tls == false`. For each request the hook may rewrite the head,
//! refuse the request, or filter the request and response bodies.

use bytes::Bytes;

/// What the proxy knows about one request when it asks the hook.
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    /// The target host, normalised (lower case, no brackets, no trailing
    /// dot): the `CONNECT` host for an intercepted request.
    pub host: &'a str,
    /// The target port.
    pub port: u16,
    /// `true` when the request arrived inside an intercepted TLS tunnel (and
    /// goes upstream over TLS); `false` for a plain `http://` request.
    pub tls: bool,
}

/// The hook's answer for one request.
pub enum HookVerdict {
    /// Send it on (with the head as the hook left it), filtering the bodies.
    Forward(BodyFilters),
    /// Refuse it: the proxy answers `status` with `reason` in the body and
    /// in `X-Flotilla-Denied`, and records it as refused.
    Refuse {
        /// The HTTP status to answer (403 for a refusal by rule).
        status: u16,
        /// Why, for the tool (and the model) to read.
        reason: String,
    },
}

/// Filters over the bodies of one exchange; `None` passes a body untouched.
/// When a body has a filter the proxy drops its `Content-Length` (the filter
/// may change the length) and sends it chunked, or buffers it to set the
/// length again; a filter that [`BodyFilter::preserves_length`] streams.
#[derive(Default)]
pub struct BodyFilters {
    /// Applied to the request body on its way upstream.
    pub request: Option<Box<dyn BodyFilter>>,
    /// Applied to the response body on its way back into the sandbox.
    pub response: Option<Box<dyn BodyFilter>>,
}

/// A streaming filter over one body. It may hold bytes back (a match can
/// straddle two chunks) and must give them out by [`BodyFilter::finish`].
pub trait BodyFilter: Send {
    /// Takes the next chunk; returns the bytes to pass on now. `Err` aborts
    /// the exchange (the proxy stops sending and resets the connection), with
    /// the reason for the record.
    fn filter(&mut self, chunk: Bytes) -> Result<Bytes, String>;
    /// The body ended: returns what was held back.
    fn finish(&mut self) -> Result<Bytes, String>;

    /// Whether the filter passes on exactly the bytes it is given (it may
    /// only hold them back, or abort): then the proxy streams the body with
    /// its own framing instead of buffering it to set a new length.
    fn preserves_length(&self) -> bool {
        false
    }
}

/// A credential layer plugged into one proxy.
pub trait EgressHook: Send + Sync {
    /// Whether to terminate the TLS of a `CONNECT` to `host:port` that the
    /// domain policy allowed, so that [`EgressHook::on_request`] sees its
    /// requests. `false` tunnels it untouched.
    fn intercept(&self, host: &str, port: u16) -> bool;

    /// Called for each request after the domain gate and before anything is
    /// sent upstream. May rewrite the head (headers, URI).
    fn on_request(
        &self,
        info: &RequestInfo<'_>,
        head: &mut hyper::http::request::Parts,
    ) -> HookVerdict;

    /// Called with each response head before it is relayed into the
    /// sandbox. May rewrite headers.
    fn on_response(&self, info: &RequestInfo<'_>, head: &mut hyper::http::response::Parts) {
        let _ = (info, head);
    }
}
