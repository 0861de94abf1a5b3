//! Secrets at rest.
//!
//! A [`Vault`] is a directory `DIR` with two files:
//!
//! - `DIR/vault.sqlite`: its own SQLite database (WAL), never the main
//!   event store. Each row holds a secret's [`SecretSpec`] (in clear: hosts,
//!   headers, environment variable) and its value sealed with AES-256-GCM
//!   under a fresh random 96-bit nonce. The associated data binds the
//!   ciphertext to the row's name and stored spec, so a ciphertext moved to
//!   another row, or a row whose hosts or headers were edited in the
//!   database, fails to decrypt ([`VaultError::Corrupt`]) instead of sending
//!   a value somewhere it was never meant to go.
//! - `DIR/vault.key`: the 32-byte key, hex-encoded, mode 0600, created with
//!   `O_EXCL` and written atomically (a temporary file hard-linked into
//!   place). It is kept outside the database so that a copy of the database
//!   alone (a backup, a bug report) reveals no value.
//!
//! # Where the key lives
//!
//! Where an OS keyring is available it would be the better home for the key;
//! on the Linux servers flotilla runs on there is none, so the key file *is*
//! the key store. It lives under the daemon's data directory, which every
//! sandbox hides from the agents it runs, and it is refused when group or
//! other can read it ([`VaultError::KeyPermissions`]).
//!
//! # Key rules
//!
//! - No key file and nothing stored: a key is created (with a key-check row:
//!   a fixed plaintext sealed under it).
//! - No key file but secrets (or a key check) stored: [`VaultError::KeyMissing`].
//!   A new key is never created silently then: it could not decrypt what is
//!   stored, and the secrets would look lost.
//! - A key that does not open the key check: [`VaultError::WrongKey`], never an
//!   empty-looking vault.
//! - A malformed key file: [`VaultError::KeyMalformed`], naming the file.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::TryRngCore;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::SecretSpec;

/// The database's file name inside the vault directory.
pub const DB_FILE: &str = "vault.sqlite";
/// The key's file name inside the vault directory.
pub const KEY_FILE: &str = "vault.key";
/// The largest value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const KEY_CHECK_PLAINTEXT: &[u8] = b"flotilla-vault key check v1";
const KEY_CHECK_AAD: &[u8] = b"flotilla-vault:key-check";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    sealed BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    last_used_ms INTEGER,
    uses INTEGER NOT NULL DEFAULT 0
);
";

/// Environment variables a secret's placeholder may not take: the sandbox
/// needs them (paths, shells, the proxy and CA settings that route its
/// traffic, the loader, git's own configuration).
const DENIED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "PWD",
    "OLDPWD",
    "TERM",
    "TMPDIR",
    "TMP",
    "TEMP",
    "LANG",
    "IFS",
    "ENV",
    "BASH_ENV",
    "CDPATH",
    "PS1",
    "PS2",
    "PS3",
    "PS4",
    "PROMPT_COMMAND",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "FTP_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "NODE_OPTIONS",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PERL5LIB",
    "PERL5OPT",
    "RUBYOPT",
    "RUBYLIB",
];
/// Prefixes refused for the same reason (the loader, locales, git, flotilla).
const DENIED_ENV_PREFIXES: &[&str] = &["LD_", "DYLD_", "LC_", "GIT_", "FLOTILLA_"];
/// Headers a secret may not set: they frame or route the request.
const DENIED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
];

/// What went wrong with the vault. Messages say what to do; none holds a
/// secret's value or the key.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key file is gone but the database holds secrets sealed under it.
    #[error(
        "the vault key {path} is missing, but {db} holds {secrets} secret(s) (or a key check) \
         sealed under it; they cannot be decrypted without that key, so no new key was created. \
         Restore {path} from a backup (mode 0600), or, to give up the stored secrets, delete {db} \
         (and its -wal and -shm files) and add the secrets again with `flotilla secrets add`",
        db = .path.with_file_name(DB_FILE).display()
    )]
    KeyMissing {
        /// Where the key should be (the database is beside it).
        path: PathBuf,
        /// How many secrets are stored.
        secrets: u64,
    },
    /// The key file does not open what the database holds.
    #[error(
        "the vault key {path} is not the key {db} was sealed with (its key check does not \
         decrypt); restore the right key file, or, to give up the stored secrets, delete {db} \
         (and its -wal and -shm files) and add the secrets again",
        db = .path.with_file_name(DB_FILE).display()
    )]
    WrongKey {
        /// The key file (the database is beside it).
        path: PathBuf,
    },
    /// The key file can be read by group or other.
    #[error(
        "the vault key {path} has mode {mode:04o}: group or other can read it; \
         run `chmod 600 {path}` (and consider the key exposed if others used this machine)"
    )]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is not 64 hex digits.
    #[error(
        "the vault key {path} is malformed ({reason}); it should hold 64 hex digits. \
         Restore it from a backup; if it is lost, the stored secrets are too"
    )]
    KeyMalformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong (never the content).
        reason: String,
    },
    /// A secret with that name exists and replacing was not asked for.
    #[error(
        "a secret named {name:?} exists; pass --replace to overwrite it, or pick another name"
    )]
    Exists {
        /// The name.
        name: String,
    },
    /// A field of a secret is not acceptable.
    #[error("invalid {field}: {detail}")]
    Invalid {
        /// Which field: `name`, `host`, `header`, `env`, `value`.
        field: &'static str,
        /// What is wrong and what is accepted (never the value).
        detail: String,
    },
    /// A stored secret does not decrypt (tampered with, or damaged).
    #[error(
        "the stored secret {name:?} does not decrypt: its row was damaged or edited outside \
         flotilla; remove it (`flotilla secrets rm {name}`) and add it again"
    )]
    Corrupt {
        /// The secret's name.
        name: String,
    },
    /// SQLite failed.
    #[error("vault database error on {path}: {source}")]
    Sqlite {
        /// The database.
        path: PathBuf,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("vault I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// A stored secret as listed: its spec and use counters, never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    /// The secret's description.
    pub spec: SecretSpec,
    /// When it was added (or last replaced), in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was last sent, if ever.
    pub last_used_ms: Option<u64>,
    /// How many times it was sent since it was added or replaced.
    pub uses: u64,
}

/// The key, wiped from memory when dropped; its `Debug` prints nothing of it.
struct VaultKey(Zeroizing<[u8; KEY_LEN]>);

impl VaultKey {
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0[..]))
    }
}

impl fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VaultKey(<redacted>)")
    }
}

/// The secret store: `DIR/vault.sqlite` sealed under `DIR/vault.key`
/// (see the [module documentation](self)). `Send + Sync`; share it behind an
/// `Arc`. Its `Debug` shows the paths only.
pub struct Vault {
    dir: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    key: VaultKey,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Opens the vault in `dir`, creating the directory (0700), the database
    /// and the key as the [module documentation](self) describes.
    pub fn open(dir: &Path) -> Result<Vault, VaultError> {
        create_dir(dir)?;
        let db_path = dir.join(DB_FILE);
        let key_path = dir.join(KEY_FILE);
        let conn = open_db(&db_path)?;
        let sql = |source| sqlite(&db_path, source);

        let secrets: u64 = conn
            .query_row("SELECT COUNT(*) FROM secrets", [], |r| r.get::<_, i64>(0))
            .map_err(sql)?
            .try_into()
            .unwrap_or(0);
        let check: Option<Vec<u8>> = conn
            .query_row("SELECT v FROM meta WHERE k = 'key_check'", [], |r| r.get(0))
            .optional()
            .map_err(sql)?;

        let key = match read_key(&key_path)? {
            Some(key) => key,
            None if secrets > 0 || check.is_some() => {
                return Err(VaultError::KeyMissing {
                    path: key_path,
                    secrets,
                });
            }
            None => create_key(dir, &key_path)?,
        };

        let wrong = || VaultError::WrongKey {
            path: key_path.clone(),
        };
        match check {
            Some(sealed) => {
                let plain = open_sealed(&key, &sealed, KEY_CHECK_AAD).ok_or_else(wrong)?;
                if plain.as_slice() != KEY_CHECK_PLAINTEXT {
                    return Err(wrong());
                }
            }
            None => {
                // A database made before its key check was written (a crash
                // between the two, or a database deleted and recreated): if
                // secrets are stored, the key must open one of them first.
                let first: Option<(String, String, Vec<u8>)> = conn
                    .query_row(
                        "SELECT name, spec, sealed FROM secrets ORDER BY name LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()
                    .map_err(sql)?;
                if let Some((name, spec, sealed)) = first {
                    open_sealed(&key, &sealed, &secret_aad(&name, &spec)).ok_or_else(wrong)?;
                }
                let sealed = seal(&key, KEY_CHECK_PLAINTEXT, KEY_CHECK_AAD)?;
                conn.execute(
                    "INSERT OR IGNORE INTO meta (k, v) VALUES ('key_check', ?1)",
                    params![sealed],
                )
                .map_err(sql)?;
                // Another process may have raced us to it: check what won.
                let stored: Vec<u8> = conn
                    .query_row("SELECT v FROM meta WHERE k = 'key_check'", [], |r| r.get(0))
                    .map_err(sql)?;
                let plain = open_sealed(&key, &stored, KEY_CHECK_AAD).ok_or_else(wrong)?;
                if plain.as_slice() != KEY_CHECK_PLAINTEXT {
                    return Err(wrong());
                }
            }
        }

        Ok(Vault {
            dir: dir.to_path_buf(),
            db_path,
            conn: Mutex::new(conn),
            key,
        })
    }

    /// The vault's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores a secret. The spec is validated and normalized first (hosts
    /// lower-cased, trailing dots dropped, duplicates removed); see
    /// [`validate_spec`] and [`validate_value`] for the rules. An existing
    /// name is [`VaultError::Exists`] unless `replace`; replacing sets a new
    /// value, spec and creation time and resets the use counters.
    pub fn add(&self, spec: &SecretSpec, value: &[u8], replace: bool) -> Result<(), VaultError> {
        let spec = validate_spec(spec)?;
        validate_value(value)?;
        let spec_json = serde_json::to_string(&spec).map_err(|e| VaultError::Invalid {
            field: "spec",
            detail: e.to_string(),
        })?;
        let sealed = seal(&self.key, value, &secret_aad(&spec.name, &spec_json))?;
        let now = now_ms();
        let sql = |source| sqlite(&self.db_path, source);
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let exists: bool = tx
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM secrets WHERE name = ?1)",
                params![spec.name],
                |r| r.get(0),
            )
            .map_err(sql)?;
        if exists && !replace {
            return Err(VaultError::Exists { name: spec.name });
        }
        tx.execute(
            "INSERT INTO secrets (name, spec, sealed, created_at_ms, last_used_ms, uses)
             VALUES (?1, ?2, ?3, ?4, NULL, 0)
             ON CONFLICT(name) DO UPDATE SET spec = excluded.spec, sealed = excluded.sealed,
                 created_at_ms = excluded.created_at_ms, last_used_ms = NULL, uses = 0",
            params![spec.name, spec_json, sealed, to_i64(now)],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    /// Every stored secret's spec and counters, sorted by name. Decrypts
    /// nothing.
    pub fn list(&self) -> Result<Vec<SecretInfo>, VaultError> {
        let sql = |source| sqlite(&self.db_path, source);
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT name, spec, created_at_ms, last_used_ms, uses FROM secrets ORDER BY name",
            )
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(sql)?;
        let mut out = Vec::new();
        for row in rows {
            let (name, spec, created, last, uses) = row.map_err(sql)?;
            let spec = parse_spec(&name, &spec)?;
            out.push(SecretInfo {
                spec,
                created_at_ms: to_u64(created),
                last_used_ms: last.map(to_u64),
                uses: to_u64(uses),
            });
        }
        Ok(out)
    }

    /// Removes a secret; `false` when there was none by that name.
    pub fn remove(&self, name: &str) -> Result<bool, VaultError> {
        let conn = self.lock();
        let n = conn
            .execute("DELETE FROM secrets WHERE name = ?1", params![name])
            .map_err(|source| sqlite(&self.db_path, source))?;
        Ok(n > 0)
    }

    /// A secret's spec and value, or `None` when there is none by that name.
    /// A row that does not decrypt is [`VaultError::Corrupt`], never `None`.
    pub fn get(&self, name: &str) -> Result<Option<(SecretSpec, Zeroizing<String>)>, VaultError> {
        let row: Option<(String, Vec<u8>)> = {
            let conn = self.lock();
            conn.query_row(
                "SELECT spec, sealed FROM secrets WHERE name = ?1",
                params![name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|source| sqlite(&self.db_path, source))?
        };
        let Some((spec_json, sealed)) = row else {
            return Ok(None);
        };
        let corrupt = || VaultError::Corrupt {
            name: name.to_string(),
        };
        let plain =
            open_sealed(&self.key, &sealed, &secret_aad(name, &spec_json)).ok_or_else(corrupt)?;
        let value = std::str::from_utf8(&plain).map_err(|_| corrupt())?;
        let value = Zeroizing::new(value.to_string());
        let spec = parse_spec(name, &spec_json)?;
        if spec.name != name {
            return Err(corrupt());
        }
        Ok(Some((spec, value)))
    }

    /// Records that a secret was sent at `ts_ms`: bumps its use count and
    /// moves its last use forward (never back). A name with no secret (it
    /// was removed while a session still held a grant) is ignored.
    pub fn record_use(&self, name: &str, ts_ms: u64) -> Result<(), VaultError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE secrets SET uses = uses + 1,
                 last_used_ms = MAX(COALESCE(last_used_ms, 0), ?2)
             WHERE name = ?1",
            params![name, to_i64(ts_ms)],
        )
        .map_err(|source| sqlite(&self.db_path, source))?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done write behind
        // (each write is one statement or one transaction), so go on.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The default environment variable for a secret's placeholder: the name
/// upper-cased, `-` as `_`, with `_TOKEN` added unless it ends with it
/// already (`github` -> `GITHUB_TOKEN`, `my-api` -> `MY_API_TOKEN`,
/// `gh_token` -> `GH_TOKEN`).
pub fn default_env_name(name: &str) -> String {
    let base: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    if base.ends_with("_TOKEN") {
        base
    } else {
        format!("{base}_TOKEN")
    }
}

/// Checks a secret's name: `^[a-z][a-z0-9_-]{0,63}$`.
pub fn validate_name(name: &str) -> Result<(), VaultError> {
    let invalid = |detail: String| VaultError::Invalid {
        field: "name",
        detail,
    };
    let mut chars = name.chars();
    match chars.next() {
        None => return Err(invalid("the name is empty".into())),
        Some(c) if !c.is_ascii_lowercase() => {
            return Err(invalid(format!(
                "{name:?} must start with a lower-case letter (a-z)"
            )));
        }
        Some(_) => {}
    }
    if name.len() > 64 {
        return Err(invalid(format!(
            "{name:?} is {} characters long; at most 64",
            name.len()
        )));
    }
    if let Some(c) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
    {
        return Err(invalid(format!(
            "{name:?} contains {c:?}; use a-z, 0-9, '_' and '-'"
        )));
    }
    Ok(())
}

/// Checks and normalizes a host pattern: `example.com` or `*.example.com`,
/// returned lower-cased without a trailing dot. No scheme, path, port or
/// whitespace; `*` only as a leading `*.` over at least two labels.
pub fn normalize_host_pattern(host: &str) -> Result<String, VaultError> {
    let invalid = |detail: String| VaultError::Invalid {
        field: "host",
        detail,
    };
    let lower = host.to_ascii_lowercase();
    let h = lower.strip_suffix('.').unwrap_or(&lower);
    if h.is_empty() {
        return Err(invalid("the host is empty".into()));
    }
    if h.contains("://") {
        return Err(invalid(format!(
            "{host:?}: give the host alone, without a scheme (e.g. api.github.com)"
        )));
    }
    if let Some(c) = h.chars().find(|c| matches!(c, '/' | ':' | '?' | '#' | '@')) {
        return Err(invalid(format!(
            "{host:?} contains {c:?}: give the host alone, without path, port or user \
             (e.g. api.github.com)"
        )));
    }
    let (wildcard, base) = match h.strip_prefix("*.") {
        Some(base) => (true, base),
        None => (false, h),
    };
    if base.contains('*') {
        return Err(invalid(format!(
            "{host:?}: '*' is allowed only as a leading '*.' (e.g. *.example.com)"
        )));
    }
    if base.len() > 253 {
        return Err(invalid(format!("{host:?} is longer than 253 characters")));
    }
    let labels: Vec<&str> = base.split('.').collect();
    for label in &labels {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(invalid(format!(
                "{host:?} is not a host name: each dot-separated label is 1-63 of a-z, 0-9 \
                 and '-', not starting or ending with '-'"
            )));
        }
    }
    if wildcard && labels.len() < 2 {
        return Err(invalid(format!(
            "{host:?} would match a whole top-level domain; name at least the registered \
             domain (e.g. *.example.com)"
        )));
    }
    Ok(if wildcard {
        format!("*.{base}")
    } else {
        base.to_string()
    })
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Checks a secret's spec and returns it normalized (see [`Vault::add`]):
/// name, at least one host, header names (HTTP tokens, not framing headers
/// like `Host` or `Content-Length`) and values (`{secret}` exactly once, no
/// control characters), and the environment variable (`^[A-Z_][A-Z0-9_]*$`,
/// not one the sandbox needs such as `PATH`, `HOME`, `LD_*`, `HTTPS_PROXY`
/// or `GIT_*`).
pub fn validate_spec(spec: &SecretSpec) -> Result<SecretSpec, VaultError> {
    validate_name(&spec.name)?;
    if spec.hosts.is_empty() {
        return Err(VaultError::Invalid {
            field: "host",
            detail: format!(
                "secret {:?} names no host; give at least one host it may be sent to",
                spec.name
            ),
        });
    }
    let mut hosts: Vec<String> = Vec::with_capacity(spec.hosts.len());
    for h in &spec.hosts {
        let h = normalize_host_pattern(h)?;
        if !hosts.contains(&h) {
            hosts.push(h);
        }
    }
    for header in &spec.headers {
        let invalid = |detail: String| VaultError::Invalid {
            field: "header",
            detail,
        };
        if header.name.is_empty() || !header.name.chars().all(is_tchar) {
            return Err(invalid(format!(
                "{:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
                header.name
            )));
        }
        if DENIED_HEADERS.contains(&header.name.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "{:?} frames or routes the request and cannot carry a secret",
                header.name
            )));
        }
        if header.value.matches("{secret}").count() != 1 {
            return Err(invalid(format!(
                "the value of {:?} must contain {{secret}} exactly once, where the value goes \
                 (e.g. \"Bearer {{secret}}\")",
                header.name
            )));
        }
        if header.value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(invalid(format!(
                "the value of {:?} contains a control character (CR, LF, NUL...)",
                header.name
            )));
        }
    }
    validate_env(&spec.env)?;
    Ok(SecretSpec {
        hosts,
        ..spec.clone()
    })
}

/// Checks an environment variable name for a placeholder (see
/// [`validate_spec`]).
pub fn validate_env(env: &str) -> Result<(), VaultError> {
    let invalid = |detail: String| VaultError::Invalid {
        field: "env",
        detail,
    };
    let mut chars = env.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_uppercase() || c == '_');
    if !first_ok
        || !chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        || env.len() > 128
    {
        return Err(invalid(format!(
            "{env:?} is not an environment variable name: A-Z, 0-9 and '_', not starting \
             with a digit (e.g. GITHUB_TOKEN)"
        )));
    }
    if DENIED_ENV.contains(&env) || DENIED_ENV_PREFIXES.iter().any(|p| env.starts_with(p)) {
        return Err(invalid(format!(
            "{env} is needed by the sandbox itself (paths, shell, proxy, certificates, loader, \
             git); pick another name such as {env}_TOKEN"
        )));
    }
    Ok(())
}

/// Checks a secret's value without ever printing it: non-empty, at most
/// [`MAX_VALUE_LEN`] bytes, UTF-8, and no control characters other than tab
/// (values go into HTTP headers: no NUL, CR or LF).
pub fn validate_value(value: &[u8]) -> Result<(), VaultError> {
    let invalid = |detail: String| VaultError::Invalid {
        field: "value",
        detail,
    };
    if value.is_empty() {
        return Err(invalid("the value is empty".into()));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(invalid(format!(
            "the value is {} bytes; at most {MAX_VALUE_LEN}",
            value.len()
        )));
    }
    if value.contains(&0) {
        return Err(invalid("the value contains a NUL byte".into()));
    }
    if value.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return Err(invalid(
            "the value contains a line break (CR or LF); values go into HTTP headers. \
             A trailing newline from `echo` or a file? strip it"
                .into(),
        ));
    }
    if value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(invalid("the value contains a control character".into()));
    }
    if std::str::from_utf8(value).is_err() {
        return Err(invalid(
            "the value is not UTF-8 text; encode binary secrets (base64, hex) first".into(),
        ));
    }
    Ok(())
}

fn secret_aad(name: &str, spec_json: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(name.len() + 1 + spec_json.len());
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(spec_json.as_bytes());
    aad
}

fn random_bytes<const N: usize>() -> Result<[u8; N], VaultError> {
    let mut buf = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut buf)
        .map_err(|e| VaultError::Random(e.to_string()))?;
    Ok(buf)
}

/// `nonce || ciphertext+tag`.
fn seal(key: &VaultKey, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
    let nonce: [u8; NONCE_LEN] = random_bytes()?;
    let ct = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| VaultError::Random("AES-GCM encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_sealed(key: &VaultKey, sealed: &[u8], aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    if sealed.len() < NONCE_LEN + 16 {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    key.cipher()
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .ok()
        .map(Zeroizing::new)
}

fn parse_spec(name: &str, json: &str) -> Result<SecretSpec, VaultError> {
    serde_json::from_str(json).map_err(|_| VaultError::Corrupt {
        name: name.to_string(),
    })
}

fn sqlite(path: &Path, source: rusqlite::Error) -> VaultError {
    VaultError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VaultError + '_ {
    move |source| VaultError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn create_dir(dir: &Path) -> Result<(), VaultError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))
}

fn open_db(path: &Path) -> Result<Connection, VaultError> {
    // Create the file 0600 first: SQLite gives its -wal and -shm files the
    // database's mode.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    let sql = |source| sqlite(path, source);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
    // Switching a new file to WAL while another process does the same can
    // answer SQLITE_BUSY at once, without the busy handler: try again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => break,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(sql(e)),
        }
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql)?;
    conn.execute_batch(SCHEMA).map_err(sql)?;
    Ok(conn)
}

/// Reads the key file: `None` when there is none.
fn read_key(path: &Path) -> Result<Option<VaultKey>, VaultError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    let meta = file.metadata().map_err(io_err(path))?;
    let malformed = |reason: &str| VaultError::KeyMalformed {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if !meta.is_file() {
        return Err(malformed("not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyPermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if meta.len() > 1024 {
        return Err(malformed("longer than a key"));
    }
    // Sized up front (the length was checked): a reallocation would leave a
    // copy behind.
    let mut text = Zeroizing::new(String::with_capacity(1025));
    file.read_to_string(&mut text)
        .map_err(|_| malformed("not text"))?;
    let hex_text = text.trim();
    if hex_text.is_empty() {
        return Err(malformed("empty"));
    }
    if hex_text.len() != KEY_LEN * 2 {
        return Err(malformed(&format!(
            "{} characters instead of {}",
            hex_text.len(),
            KEY_LEN * 2
        )));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(hex_text, &mut key[..]).map_err(|_| malformed("not hex digits"))?;
    Ok(Some(VaultKey(key)))
}

/// Creates the key file: a temporary file (`O_EXCL`, 0600) written and
/// synced, then hard-linked to `path`, which fails rather than replace a key
/// another process created meanwhile (that key is read instead).
fn create_key(dir: &Path, path: &Path) -> Result<VaultKey, VaultError> {
    let key = VaultKey(Zeroizing::new(random_bytes()?));
    let suffix: [u8; 8] = random_bytes()?;
    let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", hex::encode(suffix)));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut text = Zeroizing::new([b'\n'; KEY_LEN * 2 + 1]);
        hex::encode_to_slice(&key.0[..], &mut text[..KEY_LEN * 2])
            .map_err(|e| io::Error::other(e.to_string()))?;
        f.write_all(&text[..])?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(key)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            read_key(path)?.ok_or_else(|| VaultError::Io {
                path: path.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotFound, "the key file vanished"),
            })
        }
        Err(e) => Err(io_err(path)(e)),
    }
}
