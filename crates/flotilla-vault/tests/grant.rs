#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Grants: parsing, issuing, narrowing, the per-request check, the sandbox's
//! environment (with a real `git credential fill`).

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_vault::grant::{
    host_matches, issue, narrow, permits, sandbox_env, GrantError, GrantRequest, Refusal,
};
use flotilla_vault::{Grant, HeaderTemplate, SecretSpec, PLACEHOLDER_PREFIX};

fn spec(name: &str, hosts: &[&str]) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        headers: vec![HeaderTemplate {
            name: "Authorization".into(),
            value: "Bearer {secret}".into(),
        }],
        env: format!("{}_TOKEN", name.to_uppercase().replace('-', "_")),
        inject_query: false,
        inject_body: false,
        allow_http: false,
    }
}

fn req(s: &str) -> GrantRequest {
    s.parse().unwrap()
}

fn parse_err(s: &str) -> GrantError {
    s.parse::<GrantRequest>().unwrap_err()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- parsing

#[test]
fn parses_the_cli_form() {
    let r = req(
        "github:ttl=2h:host=api.github.com:host=Uploads.GitHub.com:method=get,POST:path=/repos/",
    );
    assert_eq!(
        r,
        GrantRequest {
            secret: "github".into(),
            hosts: strs(&["api.github.com", "uploads.github.com"]),
            methods: strs(&["GET", "POST"]),
            path_prefixes: strs(&["/repos/"]),
            ttl: Some(Duration::from_secs(7200)),
        }
    );
    assert_eq!(req("github"), GrantRequest::new("github"));
    assert_eq!(
        req("gh:host=a.com,*.b.com").hosts,
        strs(&["a.com", "*.b.com"])
    );
    assert_eq!(
        req("gh:path=/a/,/b:path=/c").path_prefixes,
        strs(&["/a/", "/b", "/c"])
    );
    // A ':' inside a path.
    assert_eq!(
        req("gemini:path=/v1/models/x:generate:method=POST").path_prefixes,
        strs(&["/v1/models/x:generate"])
    );
    for (ttl, secs) in [("45s", 45), ("90m", 5400), ("2h", 7200), ("1d", 86_400)] {
        assert_eq!(
            req(&format!("x:ttl={ttl}")).ttl,
            Some(Duration::from_secs(secs))
        );
    }
}

#[test]
fn refuses_bad_requests() {
    let field = |s: &str| match parse_err(s) {
        GrantError::Invalid { field, .. } => field,
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(field("x:ttl=0s"), "ttl");
    assert_eq!(field("x:ttl=0"), "ttl");
    assert_eq!(field("x:ttl=2"), "ttl");
    assert_eq!(field("x:ttl=h"), "ttl");
    assert_eq!(field("x:ttl=2w"), "ttl");
    assert_eq!(field("x:ttl=-2h"), "ttl");
    assert_eq!(field("x:ttl=1h:ttl=2h"), "ttl");
    assert_eq!(field("x:ttl=99999999999d"), "ttl");
    assert_eq!(field(""), "secret");
    assert_eq!(field("GitHub"), "secret");
    assert_eq!(field("x:host=https://a.com"), "host");
    assert_eq!(field("x:host=a.com:443"), "host");
    assert!(parse_err("x:host=a.com:443")
        .to_string()
        .contains("without scheme or port"));
    assert_eq!(field("x:host="), "key");
    assert_eq!(field("x:host=a.com,"), "key");
    assert_eq!(field("x:method=G ET"), "method");
    assert_eq!(field("x:path=repos"), "path");
    assert_eq!(field("x:path=/a/../b"), "path");
    assert_eq!(field("x:garbage"), "key");
    let msg = parse_err("x:port=443").to_string();
    assert!(msg.contains("unknown key \"port\""), "{msg}");
    assert!(msg.contains("ttl, host, method, path"), "{msg}");
}

#[test]
fn display_round_trips() {
    for s in [
        "github",
        "github:ttl=2h",
        "github:ttl=90m:host=api.github.com,*.githubusercontent.com:method=GET,POST:path=/repos/,/user",
        "x:ttl=1d",
        "x:ttl=45s",
        "gemini:path=/v1/models/x:generate",
    ] {
        let r = req(s);
        assert_eq!(r.to_string(), s);
        assert_eq!(req(&r.to_string()), r);
    }
    // Sub-second TTLs (possible through serde) still print a positive TTL.
    let mut r = GrantRequest::new("x");
    r.ttl = Some(Duration::from_millis(1500));
    assert_eq!(r.to_string(), "x:ttl=2s");
    // Repeated keys print as one list.
    assert_eq!(
        req("x:host=a.com:host=b.com").to_string(),
        "x:host=a.com,b.com"
    );
}

// ---------------------------------------------------------------- hosts

#[test]
fn host_matching() {
    assert!(host_matches("api.github.com", "api.github.com"));
    assert!(host_matches("api.github.com", "API.GitHub.com."));
    assert!(host_matches("API.github.com.", "api.github.com"));
    assert!(!host_matches("api.github.com", "github.com"));
    assert!(!host_matches("api.github.com", "xapi.github.com"));
    assert!(host_matches("*.example.com", "a.example.com"));
    assert!(host_matches("*.example.com", "a.b.c.example.com"));
    assert!(host_matches("*.example.com", "A.Example.COM."));
    assert!(!host_matches("*.example.com", "example.com"));
    assert!(!host_matches("*.example.com", "badexample.com"));
    assert!(!host_matches("*.example.com", ".example.com"));
    assert!(!host_matches("*.example.com", "example.com.evil.net"));
    assert!(!host_matches("", "a.com"));
    assert!(!host_matches("a.com", ""));
}

// ---------------------------------------------------------------- issue

#[test]
fn issue_defaults_and_checks() {
    let s = spec("github", &["api.github.com", "*.githubusercontent.com"]);
    let g = issue(&s, &req("github"), 1_000).unwrap();
    assert_eq!(g.secret, "github");
    assert_eq!(g.hosts, s.hosts);
    assert!(g.methods.is_empty() && g.path_prefixes.is_empty());
    assert_eq!(g.expires_at_ms, None);
    assert!(g.placeholder.starts_with(PLACEHOLDER_PREFIX));
    assert_eq!(g.env, "GITHUB_TOKEN");
    // Fresh placeholder each time.
    assert_ne!(
        issue(&s, &req("github"), 0).unwrap().placeholder,
        g.placeholder
    );

    let g = issue(
        &s,
        &req("github:ttl=2h:host=raw.githubusercontent.com:method=get:path=/repos/"),
        1_000,
    )
    .unwrap();
    assert_eq!(g.hosts, ["raw.githubusercontent.com"]);
    assert_eq!(g.methods, ["GET"]);
    assert_eq!(g.path_prefixes, ["/repos/"]);
    assert_eq!(g.expires_at_ms, Some(1_000 + 7_200_000));

    // Coverage of requested hosts.
    let ok = |h: &str| issue(&s, &req(&format!("github:host={h}")), 0).is_ok();
    assert!(ok("api.github.com"));
    assert!(ok("a.b.githubusercontent.com"));
    assert!(ok("*.githubusercontent.com"));
    assert!(ok("*.x.githubusercontent.com"));
    assert!(!ok("githubusercontent.com"));
    assert!(!ok("github.com"));
    assert!(!ok("*.api.github.com"));
    assert!(!ok("evil.com"));
    let s2 = spec("a", &["a.com"]);
    assert!(matches!(
        issue(&s2, &req("a:host=*.a.com"), 0),
        Err(GrantError::HostNotAllowed { host, .. }) if host == "*.a.com"
    ));

    assert!(matches!(
        issue(&s, &req("other"), 0),
        Err(GrantError::SecretMismatch { .. })
    ));
    // A request built by hand is validated too.
    let mut r = GrantRequest::new("github");
    r.ttl = Some(Duration::ZERO);
    assert!(matches!(
        issue(&s, &r, 0),
        Err(GrantError::Invalid { field: "ttl", .. })
    ));
    let mut r = GrantRequest::new("github");
    r.path_prefixes = strs(&["repos"]);
    assert!(matches!(
        issue(&s, &r, 0),
        Err(GrantError::Invalid { field: "path", .. })
    ));
}

// ---------------------------------------------------------------- permits

#[test]
fn permits_checks_each_dimension() {
    let s = spec("github", &["api.github.com", "*.githubusercontent.com"]);
    let g = issue(
        &s,
        &req("github:ttl=1h:method=GET,POST:path=/repos/,/user"),
        0,
    )
    .unwrap();
    let at = 3_600_000;
    assert_eq!(
        permits(&g, "api.github.com", "GET", "/repos/a/b", 10),
        Ok(())
    );
    assert_eq!(
        permits(&g, "x.githubusercontent.com", "POST", "/user", 10),
        Ok(())
    );
    assert_eq!(
        permits(&g, "api.github.com", "GET", "/user?x=/repos/", 10),
        Ok(())
    );
    assert_eq!(
        permits(&g, "evil.com", "GET", "/repos/", 10),
        Err(Refusal::Host)
    );
    assert_eq!(
        permits(&g, "githubusercontent.com", "GET", "/repos/", 10),
        Err(Refusal::Host)
    );
    assert_eq!(
        permits(&g, "api.github.com", "DELETE", "/repos/", 10),
        Err(Refusal::Method)
    );
    assert_eq!(
        permits(&g, "api.github.com", "get", "/repos/", 10),
        Err(Refusal::Method)
    );
    assert_eq!(
        permits(&g, "api.github.com", "GET", "/orgs", 10),
        Err(Refusal::Path)
    );
    assert_eq!(
        permits(&g, "api.github.com", "GET", "/rep", 10),
        Err(Refusal::Path)
    );
    assert_eq!(
        permits(&g, "api.github.com", "GET", "?/repos/", 10),
        Err(Refusal::Path)
    );
    for sneaky in [
        "/repos/../admin",
        "/repos/%2e%2e/admin",
        "/repos/%2E%2e/admin",
        "/repos/x/..%2f..%2fadmin",
        "/repos/.%2e/admin",
        "/repos/x\\..\\..\\admin",
        "/repos/./x",
    ] {
        assert_eq!(
            permits(&g, "api.github.com", "GET", sneaky, 10),
            Err(Refusal::Path),
            "{sneaky}"
        );
    }
    assert_eq!(
        permits(&g, "api.github.com", "GET", "/repos/", at),
        Err(Refusal::Expired { at_ms: at })
    );
    assert_eq!(
        permits(&g, "api.github.com", "GET", "/repos/", at - 1),
        Ok(())
    );
    // No methods or prefixes: any.
    let any = issue(&s, &req("github"), 0).unwrap();
    assert_eq!(
        permits(&any, "api.github.com", "PATCH", "/x/../y", u64::MAX),
        Ok(())
    );
    // Messages say what to do.
    assert!(Refusal::Host.to_string().contains(":host="));
    assert!(Refusal::Expired { at_ms: 5 }.to_string().contains("ttl"));
}

// ---------------------------------------------------------------- narrow

fn parent() -> Vec<Grant> {
    let gh = spec("github", &["api.github.com", "*.githubusercontent.com"]);
    let other = spec("other", &["other.com"]);
    vec![
        issue(&gh, &req("github:ttl=2h:method=GET,POST:path=/repos/"), 0).unwrap(),
        issue(&other, &req("other"), 0).unwrap(),
    ]
}

#[test]
fn narrow_inherits_by_default() {
    let p = parent();
    let c = narrow(&p, &req("github"), 1_000).unwrap();
    assert_eq!(c, p[0]);
    let c = narrow(&p, &req("other"), 1_000).unwrap();
    assert_eq!(c, p[1]);
}

#[test]
fn narrow_narrows() {
    let p = parent();
    let c = narrow(
        &p,
        &req("github:ttl=30m:host=raw.githubusercontent.com:method=GET:path=/repos/me/"),
        1_000,
    )
    .unwrap();
    assert_eq!(c.hosts, ["raw.githubusercontent.com"]);
    assert_eq!(c.methods, ["GET"]);
    assert_eq!(c.path_prefixes, ["/repos/me/"]);
    assert_eq!(c.expires_at_ms, Some(1_000 + 1_800_000));
    assert_eq!(c.placeholder, p[0].placeholder);
    assert_eq!(c.env, p[0].env);
    // A parent with no methods or prefixes allows the child any.
    let c = narrow(&p, &req("other:method=DELETE:path=/x"), 0).unwrap();
    assert_eq!(c.methods, ["DELETE"]);
    assert_eq!(c.path_prefixes, ["/x"]);
    assert_eq!(c.expires_at_ms, None);
    let c = narrow(&p, &req("other:ttl=1d"), 5).unwrap();
    assert_eq!(c.expires_at_ms, Some(5 + 86_400_000));
}

#[test]
fn narrow_refuses_widening() {
    let p = parent();
    let n = |s: &str| narrow(&p, &req(s), 1_000).unwrap_err();
    match n("nothere") {
        GrantError::NotInParent {
            secret,
            parent_secrets,
        } => {
            assert_eq!(secret, "nothere");
            assert_eq!(parent_secrets, ["github", "other"]);
        }
        e => panic!("{e:?}"),
    }
    assert!(n("nothere").to_string().contains("nothere"));
    assert!(matches!(
        n("github:host=evil.com"),
        GrantError::HostNotAllowed { .. }
    ));
    assert!(matches!(
        n("github:host=githubusercontent.com"),
        GrantError::HostNotAllowed { .. }
    ));
    assert!(matches!(
        n("other:host=*.other.com"),
        GrantError::HostNotAllowed { .. }
    ));
    assert!(matches!(
        n("github:method=DELETE"),
        GrantError::MethodNotAllowed { .. }
    ));
    assert!(matches!(
        n("github:method=GET,PUT"),
        GrantError::MethodNotAllowed { .. }
    ));
    assert!(matches!(
        n("github:path=/user"),
        GrantError::PathNotAllowed { .. }
    ));
    assert!(matches!(
        n("github:path=/repos"),
        GrantError::PathNotAllowed { .. }
    ));
    assert!(matches!(n("github:ttl=3h"), GrantError::TtlTooLong { .. }));
    assert!(n("github:ttl=3h").to_string().contains("inherit"));
    // Exactly the parent's expiry is fine; after it, the parent is expired.
    narrow(&p, &req("github:ttl=2h"), 0).unwrap();
    assert!(matches!(
        narrow(&p, &req("github"), 7_200_000),
        Err(GrantError::ParentExpired {
            at_ms: 7_200_000,
            ..
        })
    ));
    assert!(matches!(
        narrow(&[], &req("github"), 0),
        Err(GrantError::NotInParent { .. })
    ));
}

/// xorshift64*: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn subset(&mut self, from: &[&str], max: usize) -> Vec<String> {
        let k = self.below(max + 1);
        (0..k)
            .map(|_| from[self.below(from.len())].to_string())
            .collect()
    }
}

const HOSTS: &[&str] = &[
    "a.com",
    "x.a.com",
    "y.x.a.com",
    "b.com",
    "q.b.com",
    "*.a.com",
    "*.x.a.com",
    "*.b.com",
];
const PROBE_HOSTS: &[&str] = &[
    "a.com",
    "x.a.com",
    "y.x.a.com",
    "z.y.x.a.com",
    "w.a.com",
    "b.com",
    "q.b.com",
    "r.q.b.com",
    "c.com",
    "xa.com",
    "a.com.evil.net",
];
const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE"];
const PROBE_METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "get"];
const PREFIXES: &[&str] = &[
    "/",
    "/repos",
    "/repos/",
    "/repos/x/",
    "/repos/x/issues",
    "/user",
    "/users/",
];
const PROBE_PATHS: &[&str] = &[
    "/",
    "/repos",
    "/repos/",
    "/repos/x/",
    "/repos/x/issues/1",
    "/repos/xy",
    "/repos/y/z",
    "/user",
    "/users/z",
    "/userinfo",
    "/other",
    "/repos/x/../../admin",
    "/repos/%2e%2e/admin",
    "/repos/x/issues?q=/user",
    "relative",
];

fn random_request(rng: &mut Rng, secret: &str) -> GrantRequest {
    let ttl = match rng.below(4) {
        0 => None,
        _ => Some(Duration::from_secs(1 + rng.below(7200) as u64)),
    };
    GrantRequest {
        secret: secret.into(),
        hosts: rng.subset(HOSTS, 3),
        methods: rng.subset(METHODS, 3),
        path_prefixes: rng.subset(PREFIXES, 3),
        ttl,
    }
}

/// Picks up to `max` items, each from `likely` three times in four (when it
/// has any), else from `any`.
fn pick(rng: &mut Rng, likely: &[String], any: &[&str], max: usize) -> Vec<String> {
    let k = rng.below(max + 1);
    (0..k)
        .map(|_| {
            if !likely.is_empty() && rng.below(4) != 0 {
                likely[rng.below(likely.len())].clone()
            } else {
                any[rng.below(any.len())].to_string()
            }
        })
        .collect()
}

/// A request mostly within `like` (a spec's hosts or a parent grant), so
/// that many succeed; sometimes beyond it.
fn request_like(
    rng: &mut Rng,
    hosts: &[String],
    methods: &[String],
    prefixes: &[String],
) -> GrantRequest {
    let longer: Vec<String> = prefixes
        .iter()
        .flat_map(|p| [p.clone(), format!("{p}x/"), format!("{p}x/issues")])
        .collect();
    let ttl = match rng.below(3) {
        0 => None,
        _ => Some(Duration::from_secs(1 + rng.below(7200) as u64)),
    };
    GrantRequest {
        secret: "sec".into(),
        hosts: pick(rng, hosts, HOSTS, 2),
        methods: pick(rng, methods, METHODS, 2),
        path_prefixes: pick(rng, &longer, PREFIXES, 2),
        ttl,
    }
}

/// Every (host, method, path, time) the child permits, the parent permits.
fn assert_subset(parent: &Grant, child: &Grant, now: u64, case: usize) {
    assert_eq!(child.placeholder, parent.placeholder);
    assert_eq!(child.env, parent.env);
    if let Some(p) = parent.expires_at_ms {
        assert!(child.expires_at_ms.is_some_and(|c| c <= p), "case {case}");
    }
    let times = [
        now,
        now + 1,
        now + 1_000_000,
        now + 3_600_000,
        now + 7_200_000,
        now + 10_000_000,
        u64::MAX - 1,
    ];
    for host in PROBE_HOSTS {
        for method in PROBE_METHODS {
            for path in PROBE_PATHS {
                for t in times {
                    if permits(child, host, method, path, t).is_ok() {
                        assert_eq!(
                            permits(parent, host, method, path, t),
                            Ok(()),
                            "case {case}: child {child:?} permits {host} {method} {path} at {t} \
                             but parent {parent:?} does not"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn narrowed_grants_never_allow_more_than_their_parent() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut refused) = (0, 0);
    for case in 0..600 {
        let mut hosts = rng.subset(HOSTS, 4);
        if hosts.is_empty() {
            hosts.push("a.com".into());
        }
        let hosts_ref: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let s = spec("sec", &hosts_ref);
        let now = 1_000 + rng.below(1_000) as u64;
        let p_req = if rng.below(2) == 0 {
            random_request(&mut rng, "sec")
        } else {
            request_like(&mut rng, &s.hosts, &[], &[])
        };
        let Ok(p) = issue(&s, &p_req, now) else {
            continue;
        };
        // Requests that inherit everything are always accepted and equal.
        assert_eq!(
            narrow(std::slice::from_ref(&p), &GrantRequest::new("sec"), now).unwrap(),
            p
        );
        let later = now + rng.below(3_600_000) as u64;
        let c_req = request_like(&mut rng, &p.hosts, &p.methods, &p.path_prefixes);
        match narrow(std::slice::from_ref(&p), &c_req, later) {
            Ok(c) => {
                ok += 1;
                assert_subset(&p, &c, now, case);
                // And a grandchild of it.
                let gc_req = request_like(&mut rng, &c.hosts, &c.methods, &c.path_prefixes);
                if let Ok(gc) = narrow(std::slice::from_ref(&c), &gc_req, later) {
                    assert_subset(&c, &gc, now, case);
                    assert_subset(&p, &gc, now, case);
                }
            }
            Err(_) => refused += 1,
        }
    }
    // The generator exercises both outcomes.
    eprintln!("narrowed {ok}, refused {refused}");
    assert!(ok > 50, "only {ok} narrowed");
    assert!(refused > 50, "only {refused} refused");
}

// ---------------------------------------------------------------- sandbox env

fn as_map(env: &[(String, String)]) -> HashMap<String, String> {
    env.iter().cloned().collect()
}

#[test]
fn sandbox_env_lists_placeholders_and_a_consistent_git_config() {
    let gh = issue(
        &spec(
            "github",
            &["api.github.com", "github.com", "*.githubusercontent.com"],
        ),
        &req("github"),
        0,
    )
    .unwrap();
    let gl = issue(
        &spec("gitlab", &["gitlab.com", "github.com"]),
        &req("gitlab"),
        0,
    )
    .unwrap();
    let env = sandbox_env(&[gh.clone(), gl.clone()]);
    let m = as_map(&env);
    assert_eq!(env.len(), m.len(), "duplicate variables: {env:?}");
    assert_eq!(m["GITHUB_TOKEN"], gh.placeholder);
    assert_eq!(m["GITLAB_TOKEN"], gl.placeholder);
    let count: usize = m["GIT_CONFIG_COUNT"].parse().unwrap();
    // api.github.com (reset + 1), github.com (reset + 2), gitlab.com (reset + 1).
    assert_eq!(count, 7);
    for i in 0..count {
        assert!(m.contains_key(&format!("GIT_CONFIG_KEY_{i}")), "{i}");
        assert!(m.contains_key(&format!("GIT_CONFIG_VALUE_{i}")), "{i}");
    }
    assert!(!m.contains_key(&format!("GIT_CONFIG_KEY_{count}")));
    let keys: Vec<&str> = (0..count)
        .map(|i| m[&format!("GIT_CONFIG_KEY_{i}")].as_str())
        .collect();
    assert!(keys
        .iter()
        .all(|k| k.starts_with("credential.https://") && k.ends_with(".helper")));
    assert!(
        !keys.iter().any(|k| k.contains('*')),
        "wildcards get no helper"
    );
    // The values hold no placeholder, only variable names.
    for i in 0..count {
        assert!(!m[&format!("GIT_CONFIG_VALUE_{i}")].contains(PLACEHOLDER_PREFIX));
    }
    assert!(sandbox_env(&[]).is_empty());
    let one = sandbox_env(&[gl]);
    assert_eq!(as_map(&one)["GIT_CONFIG_COUNT"], "4");
}

fn git_fill(env: &[(String, String)], home: &std::path::Path, host: &str) -> Option<String> {
    let mut cmd = Command::new("git");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(home.join("repo"))
        .args(["credential", "fill"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().ok()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("protocol=https\nhost={host}\n\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn git_credential_fill_gets_the_placeholder() {
    if Command::new("git").arg("--version").output().is_err() {
        eprintln!("git is not installed; skipping");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    // A global helper that would answer first: the grant's entries clear it.
    std::fs::write(
        home.path().join(".gitconfig"),
        "[credential]\n\thelper = \"!f() { echo username=wrong; echo password=wrong; }; f\"\n",
    )
    .unwrap();
    let repo = home.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let init = Command::new("git")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["init", "-q"])
        .current_dir(&repo)
        .status()
        .unwrap();
    assert!(init.success());

    let gh = issue(
        &spec("github", &["github.com", "api.github.com"]),
        &req("github"),
        0,
    )
    .unwrap();
    let gl = issue(&spec("gitlab", &["gitlab.com"]), &req("gitlab"), 0).unwrap();
    let env = sandbox_env(&[gh.clone(), gl.clone()]);

    let out = git_fill(&env, home.path(), "github.com").unwrap();
    assert!(out.contains("username=x-access-token\n"), "{out}");
    assert!(
        out.contains(&format!("password={}\n", gh.placeholder)),
        "{out}"
    );
    let out = git_fill(&env, home.path(), "gitlab.com").unwrap();
    assert!(
        out.contains(&format!("password={}\n", gl.placeholder)),
        "{out}"
    );
    // Another host keeps the other helpers (here: the global one).
    let out = git_fill(&env, home.path(), "example.com").unwrap();
    assert!(out.contains("password=wrong"), "{out}");
    assert!(!out.contains(PLACEHOLDER_PREFIX), "{out}");
}
