//! End-to-end: principals, authentication and TOTP MFA through the real CLI
//! and a real daemon (Unix socket as the owner; TCP with bearer tokens).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use flotilla_testkit::{Script, Step};
use serde_json::{json, Value};

fn env() -> Env {
    Env::new(Script::single(vec![Step::text("hi")]))
}

/// Runs a CLI command that must succeed and returns its stdout as JSON.
fn ok_json(env: &Env, args: &[&str]) -> Value {
    let out = env.run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {}", stdout(&out)))
}

/// Runs a CLI command that must fail and returns its stderr.
fn fails(env: &Env, args: &[&str]) -> String {
    let out = env.run(args);
    assert!(
        !out.status.success(),
        "{args:?} should fail but printed: {}",
        stdout(&out)
    );
    stderr(&out)
}

fn totp(secret: &str, name: &str) -> totp_rs::Totp {
    totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap().to_vec())
        .with_account_name(name)
        .with_issuer(Some("flotilla"))
        .build()
        .unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A 6-digit code that matches no step near now.
fn wrong_code(t: &totp_rs::Totp) -> String {
    let now = now_secs();
    let near: Vec<String> = (0..=6)
        .map(|k| t.generate(now - 90 + 30 * k).to_string())
        .collect();
    (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .unwrap()
}

#[test]
fn whoami_as_the_owner_is_admin() {
    let env = env();
    let me = ok_json(&env, &["whoami", "--json"]);
    assert_eq!(me["owner"], true, "{me}");
    assert!(me["roles"].as_array().unwrap().contains(&json!("admin")));
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(me["uid"], euid);
    assert_eq!(me["mfa_enrolled"], false);
    let text = env.run(&["whoami"]);
    assert!(text.status.success());
    assert!(stdout(&text).contains("(owner)"), "{}", stdout(&text));
    // The directory is private.
    let db = env.home.path().join("data/principals.sqlite");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(db).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "principals.sqlite must be private");
}

#[test]
fn principal_add_list_vet_and_token() {
    let env = env();
    let added = ok_json(
        &env,
        &[
            "principal",
            "add",
            "bob",
            "--uid",
            "4242",
            "--role",
            "user",
            "--token",
            "--json",
        ],
    );
    assert_eq!(added["principal"]["name"], "bob");
    assert_eq!(added["principal"]["uid"], 4242);
    assert_eq!(added["principal"]["roles"], json!(["user"]));
    let token = added["token"].as_str().unwrap();
    assert!(token.starts_with("flt_") && token.len() == 68, "{token}");

    let added = ok_json(
        &env,
        &[
            "principal",
            "add",
            "audit.team",
            "--role",
            "auditor",
            "--role",
            "user",
            "--json",
        ],
    );
    assert_eq!(added["principal"]["roles"], json!(["auditor", "user"]));
    assert!(added.get("token").is_none());

    // Duplicates and bad input are refused with the reason.
    assert!(fails(&env, &["principal", "add", "bob"]).contains("exists already"));
    assert!(fails(&env, &["principal", "add", "robert", "--uid", "4242"]).contains("uid 4242"));
    assert!(fails(&env, &["principal", "add", "Bad Name"]).contains("invalid"));
    assert!(fails(&env, &["principal", "vet", "bob", "--tier", "Not_A_Tier"]).contains("invalid"));
    assert!(
        fails(&env, &["principal", "vet", "nobody", "--tier", "cyber"]).contains("no principal")
    );

    let v = ok_json(
        &env,
        &["principal", "vet", "bob", "--tier", "cyber", "--json"],
    );
    assert_eq!(v["vetted"], json!(["cyber"]));
    ok_json(
        &env,
        &[
            "principal",
            "vet",
            "bob",
            "--tier",
            "high-autonomy",
            "--json",
        ],
    );
    let v = ok_json(
        &env,
        &[
            "principal",
            "vet",
            "bob",
            "--tier",
            "cyber",
            "--revoke",
            "--json",
        ],
    );
    assert_eq!(v["vetted"], json!(["high-autonomy"]));

    let t = ok_json(&env, &["principal", "token", "bob", "--json"]);
    assert_eq!(t["principal"], "bob");
    assert!(t["token"].as_str().unwrap().starts_with("flt_"));
    assert_ne!(t["token"].as_str().unwrap(), token);
    let text = env.run(&["principal", "token", "bob"]);
    assert!(text.status.success());
    assert!(stdout(&text).trim().starts_with("flt_"));
    assert!(stderr(&text).contains("shown once"));

    let list = ok_json(&env, &["principal", "list", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
    let bob = list.iter().find(|p| p["name"] == "bob").unwrap();
    assert_eq!(bob["tokens"], 3);
    assert_eq!(bob["vetted"], json!(["high-autonomy"]));
    assert_eq!(bob["owner"], false);
    assert!(list.iter().any(|p| p["owner"] == true));
    let text = env.run(&["principal", "list"]);
    assert!(stdout(&text).contains("NAME") && stdout(&text).contains("audit.team"));

    // Tokens are stored only as hashes.
    let raw = std::fs::read(env.home.path().join("data/principals.sqlite")).unwrap();
    assert!(!raw.windows(token.len()).any(|w| w == token.as_bytes()));
}

#[test]
fn mfa_enroll_then_login_with_totp() {
    let env = env();
    let err = fails(&env, &["login", "--totp", "123456"]);
    assert!(err.contains("flotilla principal mfa-enroll"), "{err}");

    let text = env.run(&["principal", "mfa-enroll"]);
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(stdout(&text).contains("flotilla login --totp CODE"));
    assert!(stdout(&text).contains("otpauth://totp/"));

    // Enrolling again replaces the secret (the owner is admin).
    let e = ok_json(&env, &["principal", "mfa-enroll", "--json"]);
    let me = ok_json(&env, &["whoami", "--json"]);
    let name = me["name"].as_str().unwrap().to_string();
    assert_eq!(e["principal"], name.as_str());
    let secret = e["secret"].as_str().unwrap().to_string();
    assert!(e["otpauth_url"]
        .as_str()
        .unwrap()
        .contains("issuer=flotilla"));
    assert_eq!(me["mfa_enrolled"], true);
    assert!(me["mfa_verified_ms"].is_null());
    let t = totp(&secret, &name);

    // A wrong code: refused, nothing recorded.
    let err = fails(&env, &["login", "--totp", &wrong_code(&t)]);
    assert!(err.contains("wrong"), "{err}");
    assert!(ok_json(&env, &["whoami", "--json"])["mfa_verified_ms"].is_null());

    // The right code.
    let code = t.generate(now_secs()).to_string();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let v = ok_json(&env, &["login", "--totp", &code, "--json"]);
    let at = v["mfa_verified_ms"].as_i64().unwrap();
    assert!(at >= before, "{v}");
    assert_eq!(v["principal"], name.as_str());
    let me = ok_json(&env, &["whoami", "--json"]);
    assert_eq!(me["mfa_verified_ms"], at);

    // The same code again: refused, the verification time unchanged.
    let err = fails(&env, &["login", "--totp", &code]);
    assert!(err.contains("used already"), "{err}");
    assert_eq!(ok_json(&env, &["whoami", "--json"])["mfa_verified_ms"], at);

    // The secret is never read back.
    for args in [
        &["whoami", "--json"][..],
        &["principal", "list", "--json"][..],
        &["whoami"][..],
        &["principal", "list"][..],
    ] {
        let out = env.run(args);
        assert!(out.status.success());
        assert!(!stdout(&out).contains(&secret), "{args:?} shows the secret");
    }
}

#[test]
fn tcp_authenticates_principals_by_token_and_enforces_roles() {
    let env = env();
    let (_daemon, addr) = serve_tcp(&env);

    // No token, a wrong token: 401 with the fix.
    let (status, body) = tcp(&addr, "GET", "/v1/whoami", None, None);
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Bearer"));
    let (status, _) = tcp(&addr, "GET", "/v1/sessions", None, Some("flt_0000"));
    assert_eq!(status, 401);
    // Health needs nothing.
    assert_eq!(tcp(&addr, "GET", "/v1/health", None, None).0, 200);

    // The daemon's token is the owner.
    let daemon_token = std::fs::read_to_string(env.home.path().join("run/token")).unwrap();
    let (status, me) = tcp(&addr, "GET", "/v1/whoami", None, Some(daemon_token.trim()));
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["owner"], true);

    // A user principal's token names that principal.
    let carol = ok_json(&env, &["principal", "add", "carol", "--token", "--json"]);
    let token = carol["token"].as_str().unwrap().to_string();
    let (status, me) = tcp(&addr, "GET", "/v1/whoami", None, Some(&token));
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["name"], "carol");
    assert_eq!(me["roles"], json!(["user"]));
    assert_eq!(me["owner"], false);

    // Admin routes are refused with the missing role named.
    let (status, body) = tcp(
        &addr,
        "POST",
        "/v1/principals",
        Some(&json!({"name": "mallory", "roles": ["admin"]})),
        Some(&token),
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("admin role"));
    for (method, path, body) in [
        ("GET", "/v1/principals", None),
        (
            "POST",
            "/v1/principals/carol/vet",
            Some(json!({"tier": "cyber"})),
        ),
        ("POST", "/v1/principals/bob/tokens", None),
        ("POST", "/v1/principals/bob/mfa", None),
    ] {
        let (status, b) = tcp(&addr, method, path, body.as_ref(), Some(&token));
        assert_eq!(status, 403, "{method} {path}: {b}");
    }
    assert!(ok_json(&env, &["principal", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["name"] != "mallory"));

    // A principal may issue its own token and enroll its own TOTP once.
    let (status, t) = tcp(
        &addr,
        "POST",
        "/v1/principals/carol/tokens",
        None,
        Some(&token),
    );
    assert_eq!(status, 201, "{t}");
    let token2 = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        tcp(&addr, "GET", "/v1/whoami", None, Some(&token2)).1["name"],
        "carol"
    );
    let (status, e) = tcp(
        &addr,
        "POST",
        "/v1/principals/carol/mfa",
        None,
        Some(&token),
    );
    assert_eq!(status, 201, "{e}");
    let secret = e["secret"].as_str().unwrap().to_string();
    let (status, b) = tcp(
        &addr,
        "POST",
        "/v1/principals/carol/mfa",
        None,
        Some(&token),
    );
    assert_eq!(status, 403, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("admin"));

    // TOTP over TCP.
    let t = totp(&secret, "carol");
    let (status, b) = tcp(
        &addr,
        "POST",
        "/v1/auth/totp",
        Some(&json!({"code": wrong_code(&t)})),
        Some(&token),
    );
    assert_eq!(status, 401, "{b}");
    assert_eq!(b["error"]["code"], "mfa_failed");
    let code = t.generate(now_secs()).to_string();
    let (status, b) = tcp(
        &addr,
        "POST",
        "/v1/auth/totp",
        Some(&json!({"code": code})),
        Some(&token),
    );
    assert_eq!(status, 200, "{b}");
    let (_, me) = tcp(&addr, "GET", "/v1/whoami", None, Some(&token));
    assert_eq!(me["mfa_verified_ms"], b["mfa_verified_ms"]);
    assert!(!me.to_string().contains(&secret));
    let (_, list) = tcp(
        &addr,
        "GET",
        "/v1/principals",
        None,
        Some(daemon_token.trim()),
    );
    assert!(!list.to_string().contains(&secret));
    assert_eq!(list["principals"].as_array().unwrap().len(), 2);

    // Sessions record who created them.
    let (status, info) = tcp(
        &addr,
        "POST",
        "/v1/sessions",
        Some(&json!({"task": "say hi", "workspace": env.ws_str(), "model": "openai:mock"})),
        Some(&token),
    );
    assert_eq!(status, 201, "{info}");
    let id = info["id"].as_str().unwrap().to_string();
    let (status, page) = tcp(
        &addr,
        "GET",
        &format!("/v1/sessions/{id}/events?after=0&limit=1"),
        None,
        Some(&token),
    );
    assert_eq!(status, 200, "{page}");
    let first = &page["events"][0]["event"];
    assert_eq!(first["type"], "session_created", "{page}");
    assert_eq!(first["principal"], "carol", "{page}");
    env.run(&["cancel", &id]);
}
