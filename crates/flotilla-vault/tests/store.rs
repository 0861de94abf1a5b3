#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The vault at rest: real SQLite files and key files in temporary directories.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use flotilla_vault::store::{default_env_name, Vault, VaultError, DB_FILE, KEY_FILE};
use flotilla_vault::{HeaderTemplate, SecretSpec};

const VALUE: &str = "ghp_TESTVALUEabcdef0123456789xyz";

fn spec(name: &str) -> SecretSpec {
    SecretSpec {
        name: name.to_string(),
        hosts: vec!["api.github.com".into(), "*.githubusercontent.com".into()],
        headers: vec![HeaderTemplate {
            name: "Authorization".into(),
            value: "Bearer {secret}".into(),
        }],
        env: default_env_name(name),
        inject_query: false,
        inject_body: false,
        allow_http: false,
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn db(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(DB_FILE)).unwrap()
}

#[test]
fn round_trip_add_get_list_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data/vault");
    let v = Vault::open(&dir).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
    assert_eq!(mode(&dir.join(DB_FILE)), 0o600);
    assert!(v.list().unwrap().is_empty());
    assert!(v.get("github").unwrap().is_none());

    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    v.add(&spec("anthropic"), b"sk-ant-other", false).unwrap();
    let (s, value) = v.get("github").unwrap().unwrap();
    assert_eq!(s, spec("github"));
    assert_eq!(value.as_str(), VALUE);

    let list = v.list().unwrap();
    let names: Vec<&str> = list.iter().map(|i| i.spec.name.as_str()).collect();
    assert_eq!(names, ["anthropic", "github"]);
    assert_eq!(list[1].uses, 0);
    assert_eq!(list[1].last_used_ms, None);
    assert!(list[1].created_at_ms > 1_600_000_000_000);

    // Survives reopening.
    drop(v);
    let v = Vault::open(&dir).unwrap();
    assert_eq!(v.get("github").unwrap().unwrap().1.as_str(), VALUE);

    assert!(v.remove("github").unwrap());
    assert!(!v.remove("github").unwrap());
    assert!(v.get("github").unwrap().is_none());
    assert_eq!(v.list().unwrap().len(), 1);
}

#[test]
fn hosts_are_normalized() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    let mut s = spec("github");
    s.hosts = vec![
        "API.GitHub.com.".into(),
        "api.github.com".into(),
        "*.Example.COM".into(),
    ];
    v.add(&s, VALUE.as_bytes(), false).unwrap();
    let (got, _) = v.get("github").unwrap().unwrap();
    assert_eq!(got.hosts, ["api.github.com", "*.example.com"]);
}

#[test]
fn list_and_debug_never_show_the_value_or_key() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    let json = serde_json::to_string(&v.list().unwrap()).unwrap();
    assert!(json.contains("github"));
    assert!(!json.contains(VALUE));
    assert!(!format!("{:?}", v.list().unwrap()).contains(VALUE));
    let key = fs::read_to_string(tmp.path().join(KEY_FILE)).unwrap();
    let debug = format!("{v:?}");
    assert!(!debug.contains(key.trim()));
    assert!(!debug.contains(VALUE));
    assert!(debug.contains("redacted"));
}

#[test]
fn neither_value_nor_key_is_in_the_database_files() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    let key_hex = fs::read_to_string(tmp.path().join(KEY_FILE)).unwrap();
    let key_hex = key_hex.trim();
    assert_eq!(key_hex.len(), 64);
    let key_raw = hex::decode(key_hex).unwrap();
    let mut bytes = Vec::new();
    for f in [DB_FILE, "vault.sqlite-wal", "vault.sqlite-shm"] {
        if let Ok(b) = fs::read(tmp.path().join(f)) {
            bytes.extend(b);
        }
    }
    drop(v);
    bytes.extend(fs::read(tmp.path().join(DB_FILE)).unwrap());
    assert!(!bytes.is_empty());
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(contains(b"api.github.com"), "the spec is stored in clear");
    assert!(!contains(VALUE.as_bytes()));
    assert!(!contains(key_hex.as_bytes()));
    assert!(!contains(&key_raw));
}

#[test]
fn missing_key_with_secrets_is_an_error_and_no_key_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    v.add(&spec("other"), b"x", false).unwrap();
    drop(v);
    let key = tmp.path().join(KEY_FILE);
    fs::remove_file(&key).unwrap();
    let err = Vault::open(tmp.path()).unwrap_err();
    match &err {
        VaultError::KeyMissing { path, secrets } => {
            assert_eq!(path, &key);
            assert_eq!(*secrets, 2);
        }
        other => panic!("expected KeyMissing, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("cannot be decrypted"), "{msg}");
    assert!(msg.contains("vault.sqlite"), "{msg}");
    assert!(!key.exists(), "a new key was created");
    // Still refused the second time (nothing was changed).
    assert!(matches!(
        Vault::open(tmp.path()),
        Err(VaultError::KeyMissing { secrets: 2, .. })
    ));
    assert!(!key.exists());
}

#[test]
fn missing_key_with_only_a_key_check_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Vault::open(tmp.path()).unwrap());
    fs::remove_file(tmp.path().join(KEY_FILE)).unwrap();
    assert!(matches!(
        Vault::open(tmp.path()),
        Err(VaultError::KeyMissing { secrets: 0, .. })
    ));
    assert!(!tmp.path().join(KEY_FILE).exists());
}

#[test]
fn deleting_the_database_resets_the_vault_under_the_same_key() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    drop(v);
    for f in [DB_FILE, "vault.sqlite-wal", "vault.sqlite-shm"] {
        let _ = fs::remove_file(tmp.path().join(f));
    }
    let v = Vault::open(tmp.path()).unwrap();
    assert!(v.list().unwrap().is_empty());
}

#[test]
fn wrong_key_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    drop(v);
    let key = tmp.path().join(KEY_FILE);
    fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let err = Vault::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, VaultError::WrongKey { path } if path == &key),
        "{err:?}"
    );
    // Also with no secrets stored: the key check alone catches it.
    let tmp2 = tempfile::tempdir().unwrap();
    drop(Vault::open(tmp2.path()).unwrap());
    fs::copy(&key, tmp2.path().join(KEY_FILE)).unwrap();
    assert!(matches!(
        Vault::open(tmp2.path()),
        Err(VaultError::WrongKey { .. })
    ));
}

#[test]
fn readable_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Vault::open(tmp.path()).unwrap());
    let key = tmp.path().join(KEY_FILE);
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let err = Vault::open(tmp.path()).unwrap_err();
    assert!(
        matches!(&err, VaultError::KeyPermissions { path, mode: 0o644 } if path == &key),
        "{err:?}"
    );
    assert!(err.to_string().contains("chmod 600"), "{err}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
    Vault::open(tmp.path()).unwrap();
}

#[test]
fn malformed_key_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Vault::open(tmp.path()).unwrap());
    let key = tmp.path().join(KEY_FILE);
    for bad in ["", "abc\n", &"zz".repeat(32), &"ab".repeat(33)] {
        fs::write(&key, bad).unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        let err = Vault::open(tmp.path()).unwrap_err();
        assert!(
            matches!(&err, VaultError::KeyMalformed { path, .. } if path == &key),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains(&key.display().to_string()));
    }
}

#[test]
fn swapped_or_edited_rows_are_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("aaa"), b"value-a", false).unwrap();
    v.add(&spec("bbb"), b"value-b", false).unwrap();
    {
        let c = db(tmp.path());
        let a: Vec<u8> = c
            .query_row("SELECT sealed FROM secrets WHERE name='aaa'", [], |r| {
                r.get(0)
            })
            .unwrap();
        let b: Vec<u8> = c
            .query_row("SELECT sealed FROM secrets WHERE name='bbb'", [], |r| {
                r.get(0)
            })
            .unwrap();
        c.execute(
            "UPDATE secrets SET sealed=?1 WHERE name='aaa'",
            rusqlite::params![b],
        )
        .unwrap();
        c.execute(
            "UPDATE secrets SET sealed=?1 WHERE name='bbb'",
            rusqlite::params![a],
        )
        .unwrap();
    }
    for name in ["aaa", "bbb"] {
        let err = v.get(name).unwrap_err();
        assert!(
            matches!(&err, VaultError::Corrupt { name: n } if n == name),
            "{err:?}"
        );
    }
    // list does not decrypt, so it still works.
    assert_eq!(v.list().unwrap().len(), 2);

    // Editing a row's hosts in the database (to send it elsewhere) breaks it too.
    v.add(&spec("ccc"), b"value-c", false).unwrap();
    db(tmp.path())
        .execute(
            "UPDATE secrets SET spec = replace(spec, 'api.github.com', 'evil.example') \
             WHERE name='ccc'",
            [],
        )
        .unwrap();
    assert!(matches!(
        v.get("ccc"),
        Err(VaultError::Corrupt { name }) if name == "ccc"
    ));
    // A damaged ciphertext too.
    v.add(&spec("ddd"), b"value-d", false).unwrap();
    db(tmp.path())
        .execute("UPDATE secrets SET sealed = x'00' WHERE name='ddd'", [])
        .unwrap();
    assert!(matches!(v.get("ddd"), Err(VaultError::Corrupt { .. })));
}

#[test]
fn replace_semantics() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), b"old", false).unwrap();
    v.record_use("github", 5).unwrap();
    let err = v.add(&spec("github"), b"new", false).unwrap_err();
    assert!(matches!(&err, VaultError::Exists { name } if name == "github"));
    assert!(err.to_string().contains("--replace"));
    assert_eq!(v.get("github").unwrap().unwrap().1.as_str(), "old");

    let mut s = spec("github");
    s.hosts = vec!["github.com".into()];
    v.add(&s, b"new", true).unwrap();
    let (got, value) = v.get("github").unwrap().unwrap();
    assert_eq!(value.as_str(), "new");
    assert_eq!(got.hosts, ["github.com"]);
    let info = &v.list().unwrap()[0];
    assert_eq!(info.uses, 0);
    assert_eq!(info.last_used_ms, None);
    // replace on a new name simply adds.
    v.add(&spec("fresh"), b"v", true).unwrap();
    assert_eq!(v.list().unwrap().len(), 2);
}

#[test]
fn record_use_updates_last_use_and_count() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    v.add(&spec("github"), VALUE.as_bytes(), false).unwrap();
    v.record_use("github", 1_000).unwrap();
    v.record_use("github", 3_000).unwrap();
    v.record_use("github", 2_000).unwrap(); // out of order: last use stays 3000
    let info = &v.list().unwrap()[0];
    assert_eq!(info.uses, 3);
    assert_eq!(info.last_used_ms, Some(3_000));
    // An unknown name is ignored.
    v.record_use("nope", 1).unwrap();
}

fn invalid_field(r: Result<(), VaultError>) -> &'static str {
    match r {
        Err(VaultError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn validation_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let v = Vault::open(tmp.path()).unwrap();
    let add = |s: &SecretSpec, value: &[u8]| v.add(s, value, false);

    // Names.
    for bad in [
        "",
        "Github",
        "1github",
        "-x",
        "git hub",
        "gh.token",
        &"a".repeat(65),
    ] {
        let mut s = spec("x");
        s.name = bad.to_string();
        assert_eq!(invalid_field(add(&s, b"v")), "name", "{bad:?}");
    }
    let mut s = spec("x");
    s.name = format!("a{}", "b".repeat(63));
    add(&s, b"v").unwrap();
    s.name = "a-b_c9".into();
    add(&s, b"v").unwrap();

    // Hosts.
    let mut s = spec("h");
    s.hosts = vec![];
    assert_eq!(invalid_field(add(&s, b"v")), "host");
    for bad in [
        "https://api.github.com",
        "api.github.com/repos",
        "api.github.com:443",
        "api github.com",
        " api.github.com",
        "*",
        "*.com",
        "a.*.com",
        "*api.github.com",
        "**.github.com",
        "api..github.com",
        "-a.com",
        "user@a.com",
        "",
    ] {
        s.hosts = vec!["ok.com".into(), bad.to_string()];
        assert_eq!(invalid_field(add(&s, b"v")), "host", "{bad:?}");
    }

    // Headers.
    let header = |name: &str, value: &str| {
        let mut s = spec("hd");
        s.headers = vec![HeaderTemplate {
            name: name.into(),
            value: value.into(),
        }];
        s
    };
    for (name, value) in [
        ("Author ization", "Bearer {secret}"),
        ("", "{secret}"),
        ("X:Y", "{secret}"),
        ("Authorization", "Bearer"),
        ("Authorization", "{secret} {secret}"),
        ("Authorization", "Bearer {secret}\r\nX-Evil: 1"),
        ("Authorization", "Bearer {secret}\n"),
        ("Host", "{secret}"),
        ("Content-Length", "{secret}"),
    ] {
        assert_eq!(
            invalid_field(add(&header(name, value), b"v")),
            "header",
            "{name:?}: {value:?}"
        );
    }
    add(&header("X-Api-Key", "{secret}"), b"v").unwrap();
    let mut no_headers = spec("noheaders");
    no_headers.headers.clear();
    add(&no_headers, b"v").unwrap();

    // Env.
    for bad in [
        "",
        "github_token",
        "1TOKEN",
        "GH-TOKEN",
        "PATH",
        "HOME",
        "SHELL",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "GIT_CONFIG_COUNT",
        "SSL_CERT_FILE",
    ] {
        let mut s = spec("env");
        s.env = bad.to_string();
        let err = add(&s, b"v");
        assert_eq!(invalid_field(err), "env", "{bad:?}");
    }
    let mut s = spec("envok");
    s.env = "_MY_TOKEN2".into();
    add(&s, b"v").unwrap();

    // Values.
    let big = vec![b'a'; 64 * 1024 + 1];
    for bad in [
        &b""[..],
        b"abc\0def",
        b"abc\n",
        b"abc\rdef",
        b"\x1b[31m",
        &[0xff, 0xfe][..],
        &big,
    ] {
        let err = add(&spec("val"), bad);
        // The message never holds the value.
        if let Err(e) = &err {
            if bad.len() > 2 {
                assert!(!e.to_string().contains("abc"), "{e}");
            }
        }
        assert_eq!(invalid_field(err), "value");
    }
    add(&spec("val"), &vec![b'a'; 64 * 1024]).unwrap();
    assert!(v.get("val").unwrap().is_some());
}

#[test]
fn default_env_names() {
    assert_eq!(default_env_name("github"), "GITHUB_TOKEN");
    assert_eq!(default_env_name("my-api_2"), "MY_API_2_TOKEN");
    assert_eq!(default_env_name("gh_token"), "GH_TOKEN");
}

#[test]
fn vault_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Vault>();
}

#[test]
fn concurrent_use_from_two_threads_and_two_handles() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = Arc::new(Vault::open(tmp.path()).unwrap());
    shared
        .add(&spec("shared"), VALUE.as_bytes(), false)
        .unwrap();
    let other = Arc::new(Vault::open(tmp.path()).unwrap()); // like a second process
    let handles: Vec<_> = [shared.clone(), shared.clone(), other.clone()]
        .into_iter()
        .enumerate()
        .map(|(t, v)| {
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let name = format!("t{t}-{i}");
                    v.add(&spec(&name), format!("value-{t}-{i}").as_bytes(), false)
                        .unwrap();
                    v.record_use("shared", i).unwrap();
                    assert_eq!(
                        v.get(&name).unwrap().unwrap().1.as_str(),
                        format!("value-{t}-{i}")
                    );
                    assert_eq!(v.get("shared").unwrap().unwrap().1.as_str(), VALUE);
                    if i % 2 == 0 {
                        assert!(v.remove(&name).unwrap());
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let list = other.list().unwrap();
    assert_eq!(list.len(), 1 + 3 * 20);
    let s = list.iter().find(|i| i.spec.name == "shared").unwrap();
    assert_eq!(s.uses, 120);
    assert_eq!(s.last_used_ms, Some(39));
}

#[test]
fn two_processes_creating_a_vault_at_once_agree_on_one_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || Vault::open(&dir).unwrap())
        })
        .collect();
    let vaults: Vec<Vault> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    vaults[0]
        .add(&spec("github"), VALUE.as_bytes(), false)
        .unwrap();
    for v in &vaults {
        assert_eq!(v.get("github").unwrap().unwrap().1.as_str(), VALUE);
    }
    // No temporary key files left behind.
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}
