//! TLS interception in the egress proxy, end to end on 127.0.0.1: a real
//! HTTPS upstream with its own test CA, the proxy with a hook and the
//! flotilla CA, and a real TLS client going through `CONNECT`.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use flotilla_sandbox::ca::{CaError, CertAuthority, CA_CERT_FILE, CA_KEY_FILE};
use flotilla_sandbox::hook::{BodyFilter, BodyFilters, EgressHook, HookVerdict, RequestInfo};
use flotilla_sandbox::proxy::{
    DomainPolicy, EgressObserver, EgressProxy, EgressRecord, ProxyOptions,
};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The upstream's own CA and a `localhost` (+ 127.0.0.1) certificate.
struct TestPki {
    ca_der: CertificateDer<'static>,
    server: Arc<rustls::ServerConfig>,
}

fn test_pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "upstream test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf_params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    TestPki {
        ca_der: ca_cert.der().clone(),
        server: Arc::new(server),
    }
}

fn client_config(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Echoes the request line, the headers and the body back as the body.
async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut text = format!("{} {}\n", req.method(), req.uri());
    for (name, value) in req.headers() {
        text.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    text.push('\n');
    let body = req.into_body().collect().await.unwrap().to_bytes();
    text.push_str(&String::from_utf8_lossy(&body));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// An HTTPS (or plain, with `tls == None`) echo server on 127.0.0.1; counts
/// the requests it serves.
async fn echo_server(tls: Option<Arc<rustls::ServerConfig>>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let count = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tls = tls.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    echo(req)
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(config) => {
                        let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(stream).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (port, hits)
}

/// Replaces `from` by `to` in a whole body (held back until the end); fails
/// on `BOOM`.
struct Replace {
    from: &'static str,
    to: &'static str,
    held: Vec<u8>,
}

impl Replace {
    fn boxed(from: &'static str, to: &'static str) -> Box<dyn BodyFilter> {
        Box::new(Replace {
            from,
            to,
            held: Vec::new(),
        })
    }
}

impl BodyFilter for Replace {
    fn filter(&mut self, chunk: Bytes) -> Result<Bytes, String> {
        self.held.extend_from_slice(&chunk);
        Ok(Bytes::new())
    }

    fn finish(&mut self) -> Result<Bytes, String> {
        let text = String::from_utf8_lossy(&self.held).into_owned();
        if text.contains("BOOM") {
            return Err("the body holds BOOM".into());
        }
        Ok(Bytes::from(text.replace(self.from, self.to)))
    }
}

/// Intercepts `localhost`; swaps PLACEHOLDER for REAL going out and REAL for
/// [redacted] coming back; refuses /forbidden.
struct TestHook;

impl EgressHook for TestHook {
    fn intercept(&self, host: &str, _port: u16) -> bool {
        host == "localhost"
    }

    fn on_request(
        &self,
        _info: &RequestInfo<'_>,
        head: &mut hyper::http::request::Parts,
    ) -> HookVerdict {
        if head.uri.path().starts_with("/forbidden") {
            return HookVerdict::Refuse {
                status: 403,
                reason: "forbidden paths stay inside".into(),
            };
        }
        if let Some(value) = head.headers.get("authorization") {
            let swapped = value.to_str().unwrap().replace("PLACEHOLDER", "REAL");
            head.headers
                .insert("authorization", HeaderValue::from_str(&swapped).unwrap());
        }
        HookVerdict::Forward(BodyFilters {
            request: Some(Replace::boxed("PLACEHOLDER", "REAL")),
            response: Some(Replace::boxed("REAL", "[redacted]")),
        })
    }

    fn on_response(&self, info: &RequestInfo<'_>, head: &mut hyper::http::response::Parts) {
        let tls = if info.tls { "tls" } else { "plain" };
        head.headers
            .insert("x-hooked", HeaderValue::from_static(tls));
    }
}

type Records = Arc<Mutex<Vec<EgressRecord>>>;

struct Setup {
    proxy: EgressProxy,
    addr: SocketAddr,
    records: Records,
    ca: Arc<CertAuthority>,
    pki: TestPki,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertAuthority::load_or_create(&dir.path().join("ca")).unwrap());
    let pki = test_pki();
    let records = Records::default();
    let sink = records.clone();
    let observer: EgressObserver = Arc::new(move |r| sink.lock().unwrap().push(r));
    let policy = DomainPolicy::new(&["localhost".into(), "127.0.0.1".into()], &[]).unwrap();
    let options = ProxyOptions {
        hook: Some(Arc::new(TestHook)),
        ca: Some(ca.clone()),
        upstream_tls: Some(client_config(&pki.ca_der)),
    };
    let proxy = EgressProxy::bind_tcp_with(
        "127.0.0.1:0".parse().unwrap(),
        policy,
        Some(observer),
        options,
    )
    .await
    .unwrap();
    let addr = proxy.tcp_addr().unwrap();
    Setup {
        proxy,
        addr,
        records,
        ca,
        pki,
        _dir: dir,
    }
}

/// Reads a response head byte by byte.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "EOF in head: {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Opens a CONNECT tunnel to `host:port` and a TLS session through it,
/// trusting only `root`; returns an HTTP/1.1 sender on it.
async fn tls_via_proxy(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    root: &CertificateDer<'static>,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let name = ServerName::try_from(host.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(root))
        .connect(name, s)
        .await
        .map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (u16, hyper::HeaderMap, String) {
    sender.ready().await.unwrap();
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(WAIT, response.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn request(method: &str, path: &str, host: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("authorization", "Bearer PLACEHOLDER")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn taken(records: &Records) -> Vec<EgressRecord> {
    std::mem::take(&mut *records.lock().unwrap())
}

#[tokio::test]
async fn intercepted_requests_are_rewritten_filtered_and_recorded() {
    let s = setup().await;
    let (port, hits) = echo_server(Some(s.pki.server.clone())).await;
    let authority = format!("localhost:{port}");
    let ca_der = s.ca.cert_der().clone();
    let mut sender = tls_via_proxy(s.addr, "localhost", port, &ca_der)
        .await
        .unwrap();

    // Rewritten on the way out, redacted on the way back.
    let (status, headers, body) = send(
        &mut sender,
        request("POST", "/echo?token=secret", &authority, "body PLACEHOLDER"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("x-hooked").unwrap(), "tls");
    assert!(!body.contains("REAL"), "{body}");
    assert!(!body.contains("PLACEHOLDER"), "{body}");
    assert!(body.contains("authorization: Bearer [redacted]"), "{body}");
    assert!(body.contains("body [redacted]"), "{body}");
    // The request body was buffered and sent with its new length.
    assert!(
        body.contains(&format!("content-length: {}", "body REAL".len())),
        "{body}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Refused by the hook: never reaches upstream.
    let (status, headers, body) =
        send(&mut sender, request("GET", "/forbidden/x", &authority, "")).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        headers.get("x-flotilla-denied").unwrap(),
        "forbidden paths stay inside"
    );
    assert!(body.contains("forbidden paths stay inside"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A request body filter failure: 403, not sent.
    let (status, _, body) = send(&mut sender, request("POST", "/echo", &authority, "BOOM")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("BOOM"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Domain fronting: another Host in the tunnel.
    let (status, _, body) =
        send(&mut sender, request("GET", "/echo", "evil.example.com", "")).await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("domain fronting"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The same tunnel still works, on the same upstream connection.
    let (status, _, body) = send(&mut sender, request("GET", "/again", &authority, "")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("GET /again\n"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    let recs = taken(&s.records);
    let summary: Vec<_> = recs
        .iter()
        .map(|r| (r.method.as_str(), r.target.clone(), r.allowed, r.status))
        .collect();
    let base = format!("https://localhost:{port}");
    assert_eq!(
        summary,
        [
            ("CONNECT", authority.clone(), true, Some(200)),
            ("POST", format!("{base}/echo"), true, Some(200)),
            ("GET", format!("{base}/forbidden/x"), false, Some(403)),
            ("POST", format!("{base}/echo"), false, Some(403)),
            ("GET", format!("{base}/echo"), false, Some(421)),
            ("GET", format!("{base}/again"), true, Some(200)),
        ],
        "{recs:?}"
    );
    assert!(recs.iter().all(|r| r.host == "localhost" && r.port == port));
    assert!(recs[0].reason.contains("TLS intercepted"), "{recs:?}");
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn hosts_the_hook_passes_over_are_tunnelled_untouched() {
    let s = setup().await;
    let (port, hits) = echo_server(Some(s.pki.server.clone())).await;
    // The flotilla CA does not work: the upstream's own certificate arrives.
    let ca_der = s.ca.cert_der().clone();
    let err = tls_via_proxy(s.addr, "127.0.0.1", port, &ca_der)
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("invalid peer certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    let upstream_ca = s.pki.ca_der.clone();
    let mut sender = tls_via_proxy(s.addr, "127.0.0.1", port, &upstream_ca)
        .await
        .unwrap();
    let (status, headers, body) = send(
        &mut sender,
        request("GET", "/plain?x=1", &format!("127.0.0.1:{port}"), ""),
    )
    .await;
    assert_eq!(status, 200);
    assert!(headers.get("x-hooked").is_none());
    // Untouched: the placeholder went through, nothing was redacted.
    assert!(body.contains("authorization: Bearer PLACEHOLDER"), "{body}");
    assert!(body.starts_with("GET /plain?x=1\n"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    let recs = taken(&s.records);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r.method == "CONNECT"));
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn a_client_that_does_not_speak_tls_is_closed() {
    let s = setup().await;
    let (port, hits) = echo_server(Some(s.pki.server.clone())).await;
    let mut c = TcpStream::connect(s.addr).await.unwrap();
    let req = format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
    c.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut c).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, c.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    s.proxy.shutdown().await;
}

#[tokio::test]
async fn plain_http_goes_through_the_hook() {
    let s = setup().await;
    let (port, hits) = echo_server(None).await;
    let stream = TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let url = format!("http://localhost:{port}/echo?q=1");
    let (status, headers, body) = send(
        &mut sender,
        request("POST", &url, &format!("localhost:{port}"), "PLACEHOLDER!"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get("x-hooked").unwrap(), "plain");
    assert!(!body.contains("REAL"), "{body}");
    assert!(body.contains("authorization: Bearer [redacted]"), "{body}");
    assert!(body.contains("[redacted]!"), "{body}");
    assert!(body.starts_with("POST /echo?q=1\n"), "{body}");

    let url = format!("http://localhost:{port}/forbidden");
    let (status, _, body) = send(
        &mut sender,
        request("GET", &url, &format!("localhost:{port}"), ""),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden paths stay inside"), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let recs = taken(&s.records);
    let summary: Vec<_> = recs.iter().map(|r| (r.allowed, r.status)).collect();
    assert_eq!(summary, [(true, Some(200)), (false, Some(403))], "{recs:?}");
    s.proxy.shutdown().await;
}

#[test]
fn the_ca_persists_and_refuses_corrupt_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = CertAuthority::load_or_create(dir.path()).unwrap();
    let second = CertAuthority::load_or_create(dir.path()).unwrap();
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert!(first.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(CA_KEY_FILE), 0o600);
    assert_eq!(mode(CA_CERT_FILE), 0o644);

    // A leaf from the reloaded CA verifies against the first one's cert.
    let leaf = second.leaf_for("example.com").unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(first.cert_der().clone()).unwrap();
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    verifier
        .verify_server_cert(
            &leaf.cert[0],
            &[],
            &ServerName::try_from("example.com").unwrap(),
            &[],
            rustls::pki_types::UnixTime::now(),
        )
        .unwrap();

    let key_path = dir.path().join(CA_KEY_FILE);
    std::fs::write(&key_path, b"-----BEGIN PRIVATE KEY-----\ngarbage\n").unwrap();
    let err = CertAuthority::load_or_create(dir.path()).unwrap_err();
    assert!(matches!(err, CaError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");
    // Never replaced.
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n"
    );

    let dir = tempfile::tempdir().unwrap();
    CertAuthority::load_or_create(dir.path()).unwrap();
    std::fs::write(dir.path().join(CA_CERT_FILE), b"not a certificate").unwrap();
    let err = CertAuthority::load_or_create(dir.path()).unwrap_err();
    assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
}

/// curl (OpenSSL or whatever it is built with) through the proxy, trusting
/// the bundle `write_bundle` makes: the leaf certificates suit a real client.
#[tokio::test]
async fn curl_trusts_the_bundle() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("curl is not installed; skipping");
        return;
    }
    let s = setup().await;
    let (port, hits) = echo_server(Some(s.pki.server.clone())).await;
    let bundle = s._dir.path().join("bundle.pem");
    s.ca.write_bundle(&bundle).unwrap();
    let proxy = format!("http://{}", s.addr);
    let url = format!("https://localhost:{port}/echo");
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--noproxy", ""])
        .args(["--proxy", &proxy, "--cacert"])
        .arg(&bundle)
        .args(["-H", "Authorization: Bearer PLACEHOLDER", &url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stdout.starts_with("GET /echo\n"), "{stdout}");
    assert!(stdout.contains("Bearer [redacted]"), "{stdout}");
    assert!(!stdout.contains("REAL"), "{stdout}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    s.proxy.shutdown().await;
}
