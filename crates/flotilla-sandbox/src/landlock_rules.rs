//! The Landlock layer of the sandbox: filesystem access control that an unprivileged process
//! applies to itself and every process it spawns afterwards.
//!
//! In namespace mode the mounts already decide what is visible; Landlock then decides what is
//! *writable* (and, with `scope`, which signals and abstract Unix sockets may cross the sandbox
//! boundary). In degraded mode (no user namespaces) it is the main filesystem confinement, so
//! the read list is narrowed too.
//!
//! Decisions:
//! * Best effort ([`CompatLevel::BestEffort`]): on an older kernel we enforce what it supports
//!   and report `"partial"` / `"not_enforced"` in [`LandlockStatus::enforcement`] instead of
//!   failing; the caller decides whether that is acceptable.
//! * All filesystem rights of [`TARGET_ABI`] are handled, so anything not granted by a rule is
//!   denied: write-type rights only under [`LandlockRules::write`], read/execute under both lists.
//! * TCP rights (ABI 4+) are *not* handled: the network namespace and the egress proxy own
//!   networking, and Landlock port rules would only duplicate them less precisely.
//! * Rule paths that do not exist are skipped and reported, never an error: a missing optional
//!   directory (e.g. `/lib64` on aarch64) must not prevent the sandbox from starting, and
//!   skipping a rule only ever removes access.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

/// The newest Landlock ABI whose rights this module handles (the kernel's ABI is used up to
/// this one). ABIs 5 to 8 have the same filesystem rights (ABI 7 added audit-log flags, ABI 8
/// thread synchronisation); ABI 9 adds `ResolveUnix`, which would deny `connect(2)` to pathname
/// Unix sockets outside `write`. That changes behaviour (agents, X11, the proxy socket) and
/// must be a deliberate, tested bump, not an accident of a newer kernel.
const TARGET_ABI: ABI = ABI::V8;

/// `LANDLOCK_CREATE_RULESET_VERSION` from `<linux/landlock.h>` (not in the `libc` crate).
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;

/// Device directory that keeps `ioctl` on devices (ABI 5+), so terminals work.
const DEV_DIR: &str = "/dev";

/// What the sandboxed processes may access.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LandlockRules {
    /// Hierarchies readable (and executable). In namespace mode the init passes `["/"]`
    /// because mounts already hide secrets; in degraded mode a narrower list.
    pub read: Vec<PathBuf>,
    /// Hierarchies readable and writable (workspace, `/tmp`, `/dev` for `/dev/null` and
    /// `/dev/pts`, extra `--write` dirs).
    pub write: Vec<PathBuf>,
    /// Also scope signals and abstract Unix sockets to the sandbox (Landlock ABI >= 6):
    /// sandboxed processes can then neither signal nor connect to abstract sockets of
    /// processes outside it.
    pub scope: bool,
}

/// What [`restrict_self`] achieved, for reports and `--check`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LandlockStatus {
    /// Best ABI the kernel offers (0 = none).
    pub abi: u32,
    /// `"full"` | `"partial"` | `"not_enforced"` (from landlock's `RulesetStatus`).
    pub enforcement: String,
    /// Paths from the rules that did not exist and were skipped.
    pub skipped: Vec<PathBuf>,
}

/// Errors from [`restrict_self`].
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// A rule path exists (or might) but could not be opened or inspected, e.g. `EACCES`.
    #[error("landlock: cannot use rule path {}: {source}", path.display())]
    Path {
        /// The path from the rules.
        path: PathBuf,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// Building or enforcing the ruleset failed.
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
}

/// The kernel's Landlock ABI version, 0 if Landlock is unsupported or disabled.
pub fn abi_version() -> u32 {
    // SAFETY: a NULL attribute with size 0 and the VERSION flag is the documented ABI query;
    // the kernel reads no memory.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0 as libc::size_t,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    // -1 (ENOSYS: not built in, EOPNOTSUPP: disabled at boot) becomes 0.
    u32::try_from(version).unwrap_or(0)
}

/// Restricts the calling thread and its future children (call it while single-threaded).
///
/// Uses the best ABI available (up to [`TARGET_ABI`]), handling all its filesystem rights:
/// write-type rights (`write_file`, `remove_*`, `make_*`, `truncate`, `refer`, `ioctl_dev`, as the
/// ABI has them) only under `write`; read/execute under `read` and `write`. `/dev` always keeps
/// `ioctl_dev` so terminals work. TCP is never restricted. With `scope` and ABI >= 6, signals
/// and abstract Unix sockets are scoped to the sandbox.
///
/// Rule paths that do not exist are skipped and listed in [`LandlockStatus::skipped`].
/// A kernel without Landlock is not an error: the status then says `"not_enforced"`.
///
/// Also sets `PR_SET_NO_NEW_PRIVS` (the kernel requires it, or `CAP_SYS_ADMIN`, to enforce a
/// ruleset). Allocates and opens file descriptors: do not call between `fork` and `exec`.
pub fn restrict_self(rules: &LandlockRules) -> Result<LandlockStatus, LandlockError> {
    let abi = abi_version();
    let all = AccessFs::from_all(TARGET_ABI);
    let read = AccessFs::from_read(TARGET_ABI);
    let mut skipped = Vec::new();

    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?;
    if rules.scope {
        ruleset = ruleset.scope(Scope::from_all(TARGET_ABI))?;
    }
    let mut created = ruleset.create()?;

    for path in &rules.read {
        if let Some(rule) = path_rule(path, read, &mut skipped)? {
            created = created.add_rule(rule)?;
        }
    }
    for path in &rules.write {
        if let Some(rule) = path_rule(path, all, &mut skipped)? {
            created = created.add_rule(rule)?;
        }
    }
    // ioctl_dev (ABI 5) is handled, so device ioctls are denied unless granted: without this
    // rule a read-only /dev (or one only reachable through `read`) would lose TCGETS/TIOCGWINSZ
    // and every terminal program would break. Only ioctl is added here; opening a device still
    // needs read or write rights from the lists. Terminals opened before the restriction keep
    // their rights whatever the rules. Not added where the kernel lacks the right (it would be
    // an empty rule) nor where /dev is absent (nothing to grant; not the caller's path).
    if abi >= 5 {
        let mut ignored = Vec::new();
        if let Some(rule) = path_rule(Path::new(DEV_DIR), AccessFs::IoctlDev.into(), &mut ignored)?
        {
            created = created.add_rule(rule)?;
        }
    }

    let status = created.restrict_self()?;
    let enforcement = match status.ruleset {
        RulesetStatus::FullyEnforced => "full",
        RulesetStatus::PartiallyEnforced => "partial",
        RulesetStatus::NotEnforced => "not_enforced",
    };
    Ok(LandlockStatus {
        abi,
        enforcement: enforcement.to_owned(),
        skipped,
    })
}

/// Opens `path` (`O_PATH`, following symlinks: the rule applies to what the path names) as a
/// rule granting `access`, narrowed to the file rights when it is not a directory (directory
/// rights on a file make the kernel return `EINVAL`). A path that does not exist is recorded in
/// `skipped` and yields `None`.
fn path_rule(
    path: &Path,
    access: BitFlags<AccessFs>,
    skipped: &mut Vec<PathBuf>,
) -> Result<Option<PathBeneath<File>>, LandlockError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path);
    let file = match opened {
        Ok(file) => file,
        // ENOENT: missing (or a dangling symlink); ENOTDIR: a parent is not a directory.
        // Either way there is nothing there to grant access to.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
            skipped.push(path.to_path_buf());
            return Ok(None);
        }
        Err(source) => {
            return Err(LandlockError::Path {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let metadata = file.metadata().map_err(|source| LandlockError::Path {
        path: path.to_path_buf(),
        source,
    })?;
    let access = if metadata.is_dir() {
        access
    } else {
        access & AccessFs::from_file(TARGET_ABI)
    };
    Ok(Some(PathBeneath::new(file, access)))
}

#[cfg(test)]
mod tests {
    //! Landlock is exercised for real, never in the (multithreaded) test process: the test
    //! binary re-executes itself with [`CHILD_ENV`] set, which turns [`reexec_child`] into a
    //! child that calls [`restrict_self`] and then runs a shell command. The parent checks the
    //! command's report and the host filesystem afterwards.

    use super::*;
    use std::process::Command;

    /// Env vars of the re-executed child.
    const CHILD_ENV: &str = "FLOTILLA_LANDLOCK_TEST_CHILD";
    const READ_ENV: &str = "FLOTILLA_LL_READ";
    const WRITE_ENV: &str = "FLOTILLA_LL_WRITE";
    const SCOPE_ENV: &str = "FLOTILLA_LL_SCOPE";
    const CMD_ENV: &str = "FLOTILLA_LL_CMD";
    const STATUS_PREFIX: &str = "LANDLOCK_STATUS ";

    fn python() -> &'static str {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    fn join(paths: &[&Path]) -> String {
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    }

    fn split(value: &str) -> Vec<PathBuf> {
        value
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    struct Confined {
        /// Lines the command printed (the status line removed).
        lines: Vec<String>,
        status: serde_json::Value,
        code: Option<i32>,
    }

    impl Confined {
        fn has(&self, line: &str) -> bool {
            self.lines.iter().any(|l| l == line)
        }
    }

    /// Runs `sh -c cmd` under `restrict_self` in a re-executed child. `env` is passed on.
    fn confined(
        read: &[&Path],
        write: &[&Path],
        scope: bool,
        cmd: &str,
        env: &[(&str, String)],
    ) -> Confined {
        let exe = std::env::current_exe().expect("current exe");
        let out = Command::new(exe)
            .args([
                "--exact",
                "landlock_rules::tests::reexec_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .env(READ_ENV, join(read))
            .env(WRITE_ENV, join(write))
            .env(SCOPE_ENV, if scope { "1" } else { "0" })
            .env(CMD_ENV, cmd)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("re-exec test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let status = stdout
            .lines()
            .find_map(|l| l.split_once(STATUS_PREFIX).map(|(_, json)| json))
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no status from child: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        Confined {
            lines: stdout
                .lines()
                .filter(|l| !l.contains(STATUS_PREFIX))
                .map(str::to_owned)
                .collect(),
            status,
            code: out.status.code(),
        }
    }

    /// The confined half of the tests below; a no-op unless [`CHILD_ENV`] is set.
    #[test]
    fn reexec_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let var = |name| std::env::var(name).unwrap_or_default();
        let rules = LandlockRules {
            read: split(&var(READ_ENV)),
            write: split(&var(WRITE_ENV)),
            scope: var(SCOPE_ENV) == "1",
        };
        let status = restrict_self(&rules).expect("restrict_self");
        // On a line of its own: the harness has printed "test ... " without a newline.
        println!(
            "\n{STATUS_PREFIX}{}",
            serde_json::to_string(&status).expect("json")
        );
        let code = Command::new("sh")
            .args(["-c", &var(CMD_ENV)])
            .status()
            .ok()
            .and_then(|s| s.code())
            .unwrap_or(99);
        std::process::exit(code);
    }

    /// Landlock tests need a kernel with Landlock; say so and pass where there is none.
    fn landlock_available() -> bool {
        let abi = abi_version();
        if abi == 0 {
            eprintln!("skipped: Landlock unavailable");
        }
        abi > 0
    }

    fn assert_full(c: &Confined) {
        assert_eq!(
            c.status["enforcement"], "full",
            "status {} (TARGET_ABI above the kernel's?)",
            c.status
        );
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn abi_version_matches_kernel() {
        let abi = abi_version();
        // The kernel this project targets; 0 only where Landlock is missing.
        assert!(abi == 0 || abi >= 1, "abi {abi}");
        eprintln!("landlock ABI {abi}");
    }

    #[test]
    fn writes_only_inside_write_dirs() {
        if !landlock_available() {
            return;
        }
        let allowed = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let readonly = tempfile::tempdir().expect("tempdir");
        let keep = readonly.path().join("keep.txt");
        std::fs::write(&keep, "original").expect("write keep");

        let cmd = r#"
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name ok"; else echo "$name denied"; fi; }
try a_write sh -c 'echo hi > "$A/x"'
try a_mkdir mkdir "$A/sub"
try a_rename mv "$A/x" "$A/sub/x"
try b_write sh -c 'echo hi > "$B/x"'
try b_mkdir mkdir "$B/d"
try b_mkfifo mkfifo "$B/f"
try move_out mv "$A/sub/x" "$B/x"
ln -s "$B" "$A/dirlink"
try dir_symlink sh -c 'echo hi > "$A/dirlink/y"'
ln -s "$B/z" "$A/filelink"
try file_symlink sh -c 'echo hi > "$A/filelink"'
try hardlink_out ln "$A/sub/x" "$B/hard"
try c_truncate sh -c ': > "$C/keep.txt"'
try c_append sh -c 'echo more >> "$C/keep.txt"'
try c_remove rm -f "$C/keep.txt"
try c_read cat "$C/keep.txt"
"#;
        let c = confined(
            &[Path::new("/")],
            &[allowed.path(), Path::new("/dev")],
            false,
            cmd,
            &[
                ("A", allowed.path().display().to_string()),
                ("B", outside.path().display().to_string()),
                ("C", readonly.path().display().to_string()),
            ],
        );
        assert_eq!(c.code, Some(0));
        assert_full(&c);
        for line in [
            "a_write ok",
            "a_mkdir ok",
            "a_rename ok",
            "b_write denied",
            "b_mkdir denied",
            "b_mkfifo denied",
            "move_out denied",
            "dir_symlink denied",
            "file_symlink denied",
            "hardlink_out denied",
            "c_truncate denied",
            "c_append denied",
            "c_remove denied",
            "c_read ok",
        ] {
            assert!(c.has(line), "expected {line:?} in {:?}", c.lines);
        }
        // The host view: nothing landed outside, the read-only file is intact, the
        // allowed write happened.
        assert!(
            entries(outside.path()).is_empty(),
            "{:?}",
            entries(outside.path())
        );
        assert_eq!(std::fs::read_to_string(&keep).expect("keep"), "original");
        assert_eq!(
            std::fs::read_to_string(allowed.path().join("sub/x")).expect("x"),
            "hi\n"
        );
    }

    #[test]
    fn reads_confined_to_read_list_and_missing_paths_skipped() {
        if !landlock_available() {
            return;
        }
        let workspace = tempfile::tempdir().expect("tempdir");
        let secret_dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(secret_dir.path().join("secret"), "s3cret").expect("write secret");
        let missing = Path::new("/nonexistent/flotilla-landlock-test");
        let dangling = workspace.path().join("dangling");
        std::os::unix::fs::symlink("/nonexistent/target", &dangling).expect("symlink");

        let cmd = r#"
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name ok"; else echo "$name denied"; fi; }
try secret_read cat "$S/secret"
try secret_list ls "$S"
try etc_read cat /etc/hostname
try ws_write sh -c 'echo mine > "$W/own"'
try ws_read cat "$W/own"
"#;
        let read = [
            Path::new("/usr"),
            Path::new("/bin"),
            Path::new("/lib"),
            Path::new("/lib64"),
            Path::new("/etc"),
            missing,
            dangling.as_path(),
        ];
        let c = confined(
            &read,
            &[workspace.path(), Path::new("/dev")],
            false,
            cmd,
            &[
                ("S", secret_dir.path().display().to_string()),
                ("W", workspace.path().display().to_string()),
            ],
        );
        assert_eq!(c.code, Some(0));
        assert_full(&c);
        for line in [
            "secret_read denied",
            "secret_list denied",
            "etc_read ok",
            "ws_write ok",
            "ws_read ok",
        ] {
            assert!(c.has(line), "expected {line:?} in {:?}", c.lines);
        }
        let skipped: Vec<String> = c.status["skipped"]
            .as_array()
            .expect("skipped")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        assert!(
            skipped.contains(&missing.display().to_string()),
            "{skipped:?}"
        );
        assert!(
            skipped.contains(&dangling.display().to_string()),
            "{skipped:?}"
        );
    }

    #[test]
    fn device_ioctls_allowed_under_dev() {
        if abi_version() < 5 {
            eprintln!("skipped: no ioctl_dev (ABI < 5)");
            return;
        }
        let workspace = tempfile::tempdir().expect("tempdir");
        // /dev is not in `write`: only the built-in ioctl rule keeps device ioctls. TCGETS on
        // /dev/null must reach the driver (ENOTTY), not be refused by Landlock (EACCES).
        let cmd = format!(
            "{} -c 'import fcntl, termios\ntry:\n    fcntl.ioctl(open(\"/dev/null\"), termios.TCGETS, bytes(64))\nexcept OSError as e:\n    print(\"errno\", e.errno)'",
            python()
        );
        let c = confined(&[Path::new("/")], &[workspace.path()], false, &cmd, &[]);
        assert_eq!(c.code, Some(0));
        assert_full(&c);
        assert!(c.has("errno 25"), "{:?}", c.lines);
    }

    #[test]
    fn scope_blocks_signals_and_abstract_sockets_outside() {
        if abi_version() < 6 {
            eprintln!("skipped: no scopes (ABI < 6)");
            return;
        }
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::{SocketAddr, UnixListener};

        let mut outsider = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let name = format!("flotilla-landlock-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
        let _listener = UnixListener::bind_addr(&addr).expect("bind abstract");
        let workspace = tempfile::tempdir().expect("tempdir");

        let cmd = format!(
            r#"
if kill -0 "$PID" 2>/dev/null; then echo "signal ok"; else echo "signal denied"; fi
if kill -0 $$ 2>/dev/null; then echo "self_signal ok"; fi
{} -c 'import socket, os
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("\0" + os.environ["SOCK"]); print("abstract ok")
except OSError as e:
    print("abstract denied", e.errno)'
"#,
            python()
        );
        let env = [("PID", outsider.id().to_string()), ("SOCK", name.clone())];
        let write = [workspace.path(), Path::new("/dev")];
        let scoped = confined(&[Path::new("/")], &write, true, &cmd, &env);
        let unscoped = confined(&[Path::new("/")], &write, false, &cmd, &env);
        let _ = outsider.kill();
        let _ = outsider.wait();

        assert_full(&scoped);
        assert!(scoped.has("signal denied"), "{:?}", scoped.lines);
        assert!(scoped.has("self_signal ok"), "{:?}", scoped.lines);
        assert!(scoped.has("abstract denied 1"), "{:?}", scoped.lines);
        assert!(unscoped.has("signal ok"), "{:?}", unscoped.lines);
        assert!(unscoped.has("abstract ok"), "{:?}", unscoped.lines);
    }
}
