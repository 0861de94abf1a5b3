#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use flotilla_sandbox::hook::{BodyFilter, EgressHook, HookVerdict, RequestInfo};
use flotilla_vault::inject::{Granted, Injector};
use flotilla_vault::{Grant, HeaderTemplate, SecretSpec, SecretUse};
use zeroize::Zeroizing;

const PH: &str = "flotilla-ph-00112233445566778899aabbccddeeff";
const VALUE: &str = "ghp_RealSecretValue123";
const PH2: &str = "flotilla-ph-ffeeddccbbaa99887766554433221100";
const VALUE2: &str = "sk-other-secret-value-42";

fn granted(name: &str, hosts: &[&str], ph: &str, value: &str) -> Granted {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    Granted {
        grant: Grant {
            secret: name.to_string(),
            hosts: hosts.clone(),
            methods: vec![],
            path_prefixes: vec![],
            expires_at_ms: None,
            placeholder: ph.to_string(),
            env: format!("{}_TOKEN", name.to_uppercase()),
        },
        spec: SecretSpec {
            name: name.to_string(),
            hosts,
            headers: vec![],
            env: format!("{}_TOKEN", name.to_uppercase()),
            inject_query: false,
            inject_body: false,
            allow_http: false,
        },
        value: Zeroizing::new(value.to_string()),
    }
}

fn github() -> Granted {
    granted("github", &["api.github.com", "github.com"], PH, VALUE)
}

type Uses = Arc<Mutex<Vec<SecretUse>>>;

fn injector(grants: Vec<Granted>) -> (Injector, Uses) {
    let uses: Uses = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&uses);
    let inj = Injector::new(grants, Arc::new(move |u| sink.lock().unwrap().push(u)));
    (inj, uses)
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn info(host: &str) -> RequestInfo<'_> {
    RequestInfo {
        host,
        port: 443,
        tls: true,
    }
}

fn forward(v: HookVerdict) -> flotilla_sandbox::hook::BodyFilters {
    match v {
        HookVerdict::Forward(f) => f,
        HookVerdict::Refuse { reason, .. } => panic!("refused: {reason}"),
    }
}

fn refused(v: HookVerdict) -> String {
    match v {
        HookVerdict::Forward(_) => panic!("forwarded"),
        HookVerdict::Refuse { status, reason } => {
            assert_eq!(status, 403);
            reason
        }
    }
}

fn run(filter: &mut dyn BodyFilter, chunks: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(&filter.filter(Bytes::copy_from_slice(c))?);
    }
    out.extend_from_slice(&filter.finish()?);
    Ok(out)
}

#[test]
fn bearer_replaced_and_recorded() {
    let (inj, uses) = injector(vec![github()]);
    let mut head = parts(
        "GET",
        "/user/repos?page=2",
        &[
            ("authorization", &format!("Bearer {PH}")),
            ("accept-encoding", "gzip"),
        ],
    );
    let f = forward(inj.on_request(&info("api.github.com"), &mut head));
    assert_eq!(
        head.headers["authorization"],
        format!("Bearer {VALUE}").as_str()
    );
    assert!(head.headers["authorization"].is_sensitive());
    assert!(head.headers.get("accept-encoding").is_none());
    assert!(f.response.is_some());
    assert!(f.request.is_none());
    let uses = uses.lock().unwrap();
    assert_eq!(uses.len(), 1);
    assert!(uses[0].allowed);
    assert_eq!(uses[0].secret, "github");
    assert_eq!(uses[0].path, "/user/repos");
    assert_eq!(uses[0].method, "GET");
    assert_eq!(uses[0].host, "api.github.com");
    assert!(uses[0].ts_ms > 0);
}

#[test]
fn basic_auth_git_style() {
    let (inj, uses) = injector(vec![github()]);
    let creds = STANDARD.encode(format!("x-access-token:{PH}"));
    let mut head = parts(
        "POST",
        "/o/r.git/git-upload-pack",
        &[("Authorization", &format!("Basic {creds}"))],
    );
    forward(inj.on_request(&info("github.com"), &mut head));
    let sent = head.headers["authorization"].to_str().unwrap().to_string();
    let decoded = STANDARD
        .decode(sent.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(decoded, format!("x-access-token:{VALUE}").as_bytes());
    assert_eq!(uses.lock().unwrap().len(), 1);
}

#[test]
fn custom_header_and_path() {
    // A secret whose own header is X-Api-Key: a placeholder there (and in
    // Authorization) is replaced.
    let api_key = || {
        let mut g = github();
        g.spec.headers = vec![HeaderTemplate {
            name: "X-Api-Key".into(),
            value: "{secret}".into(),
        }];
        g
    };
    let (inj, uses) = injector(vec![api_key()]);
    let mut head = parts(
        "GET",
        "/k/x",
        &[("X-Api-Key", PH), ("authorization", &format!("token {PH}"))],
    );
    forward(inj.on_request(&info("api.github.com"), &mut head));
    assert_eq!(head.headers["x-api-key"], VALUE);
    assert_eq!(
        head.headers["authorization"],
        format!("token {VALUE}").as_str()
    );
    assert_eq!(uses.lock().unwrap().len(), 1, "once per secret per request");

    // In the path, or in a header that is no credential header, a server
    // could store the value and give it back later: refused.
    let (inj, uses) = injector(vec![api_key()]);
    let mut head = parts("PUT", &format!("/repos/me/x/contents/{PH}"), &[]);
    let reason = refused(inj.on_request(&info("api.github.com"), &mut head));
    assert!(reason.contains("URL path"), "{reason}");
    assert_eq!(head.uri.path(), format!("/repos/me/x/contents/{PH}"));
    let mut head = parts("POST", "/issues", &[("X-Title", &format!("a{PH}b"))]);
    let reason = refused(inj.on_request(&info("api.github.com"), &mut head));
    assert!(reason.contains("not a credential header"), "{reason}");
    assert_eq!(head.headers["x-title"], format!("a{PH}b").as_str());
    let uses = uses.lock().unwrap();
    assert_eq!(uses.len(), 2);
    assert!(uses.iter().all(|u| !u.allowed && !u.path.contains(VALUE)));
}

#[test]
fn query_only_with_inject_query() {
    let (inj, uses) = injector(vec![github()]);
    let mut head = parts("GET", &format!("/search?q=x&token={PH}"), &[]);
    let reason = refused(inj.on_request(&info("api.github.com"), &mut head));
    assert!(reason.contains("query string"), "{reason}");
    {
        let uses = uses.lock().unwrap();
        assert_eq!(uses.len(), 1);
        assert!(!uses[0].allowed);
        assert_eq!(uses[0].path, "/search");
    }

    let mut g = github();
    g.spec.inject_query = true;
    let (inj, uses) = injector(vec![g]);
    let mut head = parts("GET", &format!("/search?q=x&token={PH}"), &[]);
    forward(inj.on_request(&info("api.github.com"), &mut head));
    assert_eq!(
        head.uri.query(),
        Some(format!("q=x&token={VALUE}").as_str())
    );
    let uses = uses.lock().unwrap();
    assert!(uses[0].allowed);
    assert_eq!(uses[0].path, "/search");
    assert!(!uses[0].path.contains('?'));
}

#[test]
fn query_value_is_percent_encoded() {
    let mut g = granted("odd", &["api.example.com"], PH, "a&b=c d+");
    g.spec.inject_query = true;
    let (inj, _) = injector(vec![g]);
    let mut head = parts("GET", &format!("http://api.example.com/x?t={PH}"), &[]);
    forward(inj.on_request(&info("api.example.com"), &mut head));
    assert_eq!(head.uri.query(), Some("t=a%26b%3Dc%20d%2B"));
    assert_eq!(head.uri.host(), Some("api.example.com"));
}

#[test]
fn wrong_host_refused_and_recorded() {
    let (inj, uses) = injector(vec![github()]);
    let mut head = parts(
        "GET",
        "/steal?x=1",
        &[("authorization", &format!("token {PH}"))],
    );
    let reason = refused(inj.on_request(&info("evil.example"), &mut head));
    assert_eq!(
        reason,
        "flotilla vault: the placeholder for secret \"github\" may only be sent to api.github.com, github.com; refused a request to evil.example"
    );
    // The head still holds only the placeholder.
    assert_eq!(
        head.headers["authorization"],
        format!("token {PH}").as_str()
    );
    let uses = uses.lock().unwrap();
    assert_eq!(uses.len(), 1);
    assert!(!uses[0].allowed);
    assert_eq!(uses[0].host, "evil.example");
    assert_eq!(uses[0].path, "/steal");
    assert_eq!(uses[0].reason, reason);
}

#[test]
fn wildcard_hosts() {
    let g = granted("corp", &["*.corp.example"], PH, VALUE);
    let (inj, _) = injector(vec![g]);
    for (host, ok) in [
        ("api.corp.example", true),
        ("a.b.corp.example", true),
        ("corp.example", false),
        ("evilcorp.example", false),
    ] {
        let mut head = parts("GET", "/", &[("authorization", PH)]);
        let v = inj.on_request(&info(host), &mut head);
        assert_eq!(matches!(v, HookVerdict::Forward(_)), ok, "{host}");
    }
}

#[test]
fn expired_grant() {
    let mut g = github();
    g.grant.expires_at_ms = Some(1_700_000_000_000);
    let (inj, uses) = injector(vec![g]);
    let mut head = parts(
        "GET",
        "/user",
        &[("authorization", &format!("Bearer {PH}"))],
    );
    let reason = refused(inj.on_request(&info("api.github.com"), &mut head));
    assert!(
        reason.contains("expired at 2023-11-14T22:13:20Z"),
        "{reason}"
    );
    assert!(reason.contains("--grant github:ttl="), "{reason}");
    assert!(!uses.lock().unwrap()[0].allowed);
}

#[test]
fn method_and_path_limits() {
    let mut g = github();
    g.grant.methods = vec!["GET".into(), "HEAD".into()];
    g.grant.path_prefixes = vec!["/repos/acme".into()];
    let (inj, _) = injector(vec![g]);
    let auth = format!("Bearer {PH}");
    let cases = [
        ("GET", "/repos/acme/x/issues", None),
        ("HEAD", "/repos/acme", None),
        ("POST", "/repos/acme/x/issues", Some("methods GET, HEAD")),
        ("GET", "/repos/acme-evil/x", Some("paths under /repos/acme")),
        ("GET", "/repos/acme/../other/x", Some("paths under")),
        ("GET", "/repos/acme/%2e%2e/other", Some("paths under")),
        ("GET", "/user", Some("paths under")),
    ];
    for (method, path, want) in cases {
        let mut head = parts(method, path, &[("authorization", &auth)]);
        let v = inj.on_request(&info("api.github.com"), &mut head);
        match want {
            None => {
                forward(v);
            }
            Some(text) => {
                let reason = refused(v);
                assert!(reason.contains(text), "{method} {path}: {reason}");
            }
        }
    }
}

#[test]
fn plain_http() {
    let (inj, uses) = injector(vec![github()]);
    let plain = RequestInfo {
        host: "api.github.com",
        port: 80,
        tls: false,
    };
    let mut head = parts(
        "GET",
        "http://api.github.com/user",
        &[("authorization", &format!("Bearer {PH}"))],
    );
    let reason = refused(inj.on_request(&plain, &mut head));
    assert_eq!(
        reason,
        "flotilla vault: refusing to send secret \"github\" over plain http; use https"
    );
    assert!(!uses.lock().unwrap()[0].allowed);

    let mut g = github();
    g.spec.allow_http = true;
    let (inj, _) = injector(vec![g]);
    let mut head = parts(
        "GET",
        "http://api.github.com/user",
        &[("authorization", &format!("Bearer {PH}"))],
    );
    forward(inj.on_request(&plain, &mut head));
    assert_eq!(
        head.headers["authorization"],
        format!("Bearer {VALUE}").as_str()
    );
}

fn with_template() -> Granted {
    let mut g = github();
    g.spec.headers = vec![HeaderTemplate {
        name: "Authorization".into(),
        value: "Bearer {secret}".into(),
    }];
    g
}

#[test]
fn header_templates() {
    let (inj, uses) = injector(vec![with_template()]);
    let mut head = parts("GET", "/user", &[("accept-encoding", "br")]);
    let f = forward(inj.on_request(&info("api.github.com"), &mut head));
    assert_eq!(head.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(
        head.headers["authorization"],
        format!("Bearer {VALUE}").as_str()
    );
    assert!(head.headers.get("accept-encoding").is_none());
    assert!(f.response.is_some());
    assert_eq!(uses.lock().unwrap().len(), 1);

    // Present already: not duplicated, not replaced.
    let mut head = parts("GET", "/user", &[("authorization", "Bearer mine")]);
    forward(inj.on_request(&info("api.github.com"), &mut head));
    assert_eq!(head.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(head.headers["authorization"], "Bearer mine");

    // Another host: nothing added; its response is still unmasked (a value
    // stored earlier could come back from anywhere), so no encoding.
    let mut head = parts("GET", "/", &[("accept-encoding", "gzip")]);
    let f = forward(inj.on_request(&info("example.org"), &mut head));
    assert!(head.headers.get("authorization").is_none());
    assert!(head.headers.get("accept-encoding").is_none());
    assert!(f.response.is_some());

    // Plain http where the template would apply: refused.
    let plain = RequestInfo {
        host: "api.github.com",
        port: 80,
        tls: false,
    };
    let mut head = parts("GET", "http://api.github.com/user", &[]);
    let reason = refused(inj.on_request(&plain, &mut head));
    assert!(reason.contains("plain http"));

    // Expired: sent without it.
    let mut g = with_template();
    g.grant.expires_at_ms = Some(1);
    let (inj, _) = injector(vec![g]);
    let mut head = parts("GET", "/user", &[]);
    forward(inj.on_request(&info("api.github.com"), &mut head));
    assert!(head.headers.get("authorization").is_none());
}

#[test]
fn response_filter_and_headers_map_values_back() {
    let (inj, _) = injector(vec![github()]);
    let mut head = parts(
        "GET",
        "/echo",
        &[("authorization", &format!("Bearer {PH}"))],
    );
    let f = forward(inj.on_request(&info("api.github.com"), &mut head));
    let mut response = f.response.unwrap();
    let b64 = STANDARD.encode(format!("x-access-token:{VALUE}"));
    let body = format!("you sent {VALUE} and Basic {b64}.");
    let (a, b) = body.as_bytes().split_at(12);
    let out = String::from_utf8(run(response.as_mut(), &[a, b]).unwrap()).unwrap();
    assert!(!out.contains(VALUE), "{out}");
    assert!(out.contains(&format!("you sent {PH}")), "{out}");
    let echoed = out.split("Basic ").nth(1).unwrap().trim_end_matches('.');
    assert_eq!(
        STANDARD.decode(echoed).unwrap(),
        format!("x-access-token:{PH}").as_bytes()
    );

    let mut resp = http::Response::builder()
        .header("x-echo", format!("Bearer {VALUE}"))
        .header("x-plain", "ok")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    inj.on_response(&info("api.github.com"), &mut resp);
    assert_eq!(resp.headers["x-echo"], format!("Bearer {PH}").as_str());
    assert_eq!(resp.headers["x-plain"], "ok");
}

#[test]
fn body_to_ungranted_host_blocked_across_chunks() {
    let (inj, uses) = injector(vec![
        github(),
        granted("openai", &["api.openai.com"], PH2, VALUE2),
    ]);
    let mut head = parts("POST", "/upload?secret=no", &[]);
    let f = forward(inj.on_request(&info("paste.example"), &mut head));
    assert!(f.response.is_some(), "every response is unmasked");
    assert!(
        f.request.as_ref().unwrap().preserves_length(),
        "a blocker streams"
    );
    let mut body = f.request.unwrap();
    let text = format!("{{\"k\":\"{PH2}\"}}");
    let (a, b) = text.as_bytes().split_at(20);
    let passed = body.filter(Bytes::copy_from_slice(a)).unwrap();
    assert!(!String::from_utf8_lossy(&passed).contains("flotilla-ph"));
    let err = body.filter(Bytes::copy_from_slice(b)).unwrap_err();
    assert!(
        err.contains("\"openai\"") && err.contains("paste.example"),
        "{err}"
    );
    let uses = uses.lock().unwrap();
    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0].secret, "openai");
    assert!(!uses[0].allowed);
    assert_eq!(uses[0].path, "/upload");

    // A clean body passes whole.
    let mut head = parts("POST", "/upload", &[]);
    let mut body = forward(inj.on_request(&info("paste.example"), &mut head))
        .request
        .unwrap();
    assert_eq!(
        run(body.as_mut(), &[b"hello ", b"world"]).unwrap(),
        b"hello world"
    );
}

#[test]
fn body_injection_with_inject_body() {
    let mut g = github();
    g.spec.inject_body = true;
    let (inj, uses) = injector(vec![g]);
    let mut head = parts("POST", "/graphql", &[("accept-encoding", "gzip")]);
    let f = forward(inj.on_request(&info("api.github.com"), &mut head));
    assert!(head.headers.get("accept-encoding").is_none());
    assert!(f.response.is_some());
    let mut body = f.request.unwrap();
    let text = format!("{{\"token\":\"{PH}\",\"again\":\"{PH}\"}}");
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(7).collect();
    let out = run(body.as_mut(), &chunks).unwrap();
    assert_eq!(
        out,
        format!("{{\"token\":\"{VALUE}\",\"again\":\"{VALUE}\"}}").as_bytes()
    );
    let uses = uses.lock().unwrap();
    assert_eq!(uses.len(), 1);
    assert!(uses[0].allowed);
    assert!(uses[0].reason.contains("body"));
}

#[test]
fn invalid_header_value_refused() {
    let g = granted("bad", &["api.example.com"], PH, "line\r\nInjected: yes");
    let (inj, _) = injector(vec![g]);
    let mut head = parts("GET", "/", &[("authorization", PH)]);
    let reason = refused(inj.on_request(&info("api.example.com"), &mut head));
    assert!(
        reason.contains("invalid value for header authorization"),
        "{reason}"
    );
    assert_eq!(head.headers["authorization"], PH);
}

#[test]
fn intercept_rules() {
    let (none, _) = injector(vec![]);
    assert!(!none.intercept("api.github.com", 443));
    let mut head = parts("GET", "/", &[("x", PH)]);
    forward(none.on_request(&info("api.github.com"), &mut head));

    let (inj, _) = injector(vec![github()]);
    assert!(inj.intercept("api.github.com", 443));
    assert!(inj.intercept("evil.example", 443));
    assert!(inj.intercept("github.com", 8443));
    // Any port: a tunnel left alone could carry a placeholder anywhere.
    assert!(inj.intercept("evil.example", 8443));
}

#[test]
fn redactor_covers_all_values() {
    let (inj, _) = injector(vec![
        github(),
        granted("openai", &["api.openai.com"], PH2, VALUE2),
    ]);
    assert_eq!(
        inj.redactor().redact(&format!("{VALUE} {VALUE2}")),
        "[secret:github] [secret:openai]"
    );
}
