//! Other ways of running one command confined, timed the same way as
//! flotilla's session sandbox: a bare fork/exec, bubblewrap, Anthropic's
//! `srt` and OpenAI's `codex sandbox`.
//!
//! `scripts/install-sandbox-peers.sh` installs them: bubblewrap (and socat for
//! srt) from apt, the two npm packages into `target/sandbox-peers`. How each
//! is run, and why:
//!
//! - `bwrap --unshare-all --ro-bind / / -- CMD`: every namespace unshared
//!   (user, ipc, pid, net, uts, cgroup), the host's root read-only. Without a
//!   bind the new root is empty and nothing can be executed.
//! - `env TMPDIR=<dir>/tmp srt --settings <dir>/srt-settings.json -- CMD`:
//!   an explicit settings file (no domains allowed, no writes) so a user's
//!   `~/.srt-settings.json` does not change the figure; srt leaves a
//!   `srt-mux-<pid>-0.sock` in `$TMPDIR` on every run (it exits without
//!   closing its proxy), so it gets a private one, emptied by [`discover`].
//!   srt needs bwrap, socat and node >= 20.11 on `PATH`.
//! - `env CODEX_HOME=<dir>/codex-home codex sandbox -- CMD`: the native codex
//!   binary from the npm package, not its node launcher (`.bin/codex`), which
//!   only adds a node start (~100 ms) and is not on the path of an agent's
//!   commands; a private `CODEX_HOME` so no `~/.codex/config.toml` applies and
//!   nothing is written under `~`. Its default profile: root read-only, no
//!   network. It runs the system's bwrap when there is one, else its own.
//!
//! `env` costs one extra exec (well under a millisecond) against the hundreds
//! (srt) or tens (codex) of milliseconds these take.

use std::ffi::OsStr;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where the install script puts the npm peers, relative to the repository.
pub(crate) const PEERS_DIR: &str = "target/sandbox-peers";

/// What to tell the user when a peer is not installed.
const INSTALL_HINT: &str = "run scripts/install-sandbox-peers.sh";

/// The srt settings `discover` writes when there are none: nothing allowed
/// beyond srt's own defaults (read everywhere, write nowhere, no network).
const SRT_SETTINGS: &str = r#"{
  "network": { "allowedDomains": [], "deniedDomains": [] },
  "filesystem": { "denyRead": [], "allowRead": [], "allowWrite": [], "denyWrite": [] }
}
"#;

/// A way of running a command, for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    /// `"bare"`, `"bwrap"`, `"srt"` or `"codex"`.
    pub name: &'static str,
    /// Prepended to the command (e.g. `["/bin/true"]`); empty for `bare`.
    pub argv_prefix: Vec<String>,
}

impl Peer {
    /// The full argv that runs `command` this way.
    pub(crate) fn argv(&self, command: &[&str]) -> Vec<String> {
        let mut argv = self.argv_prefix.clone();
        argv.extend(command.iter().map(|s| (*s).to_owned()));
        argv
    }
}

/// The executables and files `discover` looked for; `None` is not found.
#[derive(Clone, Debug, Default)]
struct Found {
    /// `target/sandbox-peers` of the repository.
    dir: PathBuf,
    bwrap: Option<PathBuf>,
    socat: Option<PathBuf>,
    node: Option<PathBuf>,
    env: Option<PathBuf>,
    /// `node_modules/.bin/srt`.
    srt: Option<PathBuf>,
    /// The native codex binary, or failing that `node_modules/.bin/codex`.
    codex: Option<PathBuf>,
    /// Whether `codex` is the node launcher rather than the native binary.
    codex_needs_node: bool,
}

/// The peers found on this machine (bwrap on `PATH`, srt and codex under
/// `target/sandbox-peers`), and for each missing one a reason. `bare` is
/// always found. Creates srt's settings file, srt's `TMPDIR` and
/// `CODEX_HOME` under `target/sandbox-peers` when they are missing, and
/// removes the sockets earlier srt runs left in that `TMPDIR`.
///
/// A peer found here can still fail to run (no user namespaces, say):
/// [`time_command`]'s error then says why.
pub(crate) fn discover(repo_root: &Path) -> (Vec<Peer>, Vec<(&'static str, String)>) {
    let dir = repo_root.join(PEERS_DIR);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let modules = dir.join("node_modules");
    let native = native_codex(&modules, std::env::consts::ARCH);
    let codex_needs_node = native.is_none();
    let mut found = Found {
        bwrap: find_on_path("bwrap", &path),
        socat: find_on_path("socat", &path),
        node: find_on_path("node", &path),
        env: find_on_path("env", &path),
        srt: executable(&modules.join(".bin/srt")),
        codex: native.or_else(|| executable(&modules.join(".bin/codex"))),
        codex_needs_node,
        dir,
    };
    let mut setup_failed = Vec::new();
    if found.srt.is_some() || found.codex.is_some() {
        if let Err(e) = prepare(&found.dir) {
            let why = format!("cannot prepare {}: {e:#}", found.dir.display());
            if found.srt.take().is_some() {
                setup_failed.push(("srt", why.clone()));
            }
            if found.codex.take().is_some() {
                setup_failed.push(("codex", why));
            }
        }
    }
    let (peers, mut missing) = assemble(&found);
    // A peer whose setup failed is reported for that, not as "not installed".
    for (name, why) in setup_failed {
        if let Some(entry) = missing.iter_mut().find(|(n, _)| *n == name) {
            entry.1 = why;
        }
    }
    (peers, missing)
}

/// Turns what was found into peers and reasons; pure, for testing.
fn assemble(found: &Found) -> (Vec<Peer>, Vec<(&'static str, String)>) {
    let mut peers = vec![Peer {
        name: "bare",
        argv_prefix: Vec::new(),
    }];
    let mut missing: Vec<(&'static str, String)> = Vec::new();
    let show = |p: &Path| p.display().to_string();

    match &found.bwrap {
        Some(bwrap) => peers.push(Peer {
            name: "bwrap",
            argv_prefix: vec![
                show(bwrap),
                "--unshare-all".into(),
                "--ro-bind".into(),
                "/".into(),
                "/".into(),
                "--".into(),
            ],
        }),
        None => missing.push((
            "bwrap",
            format!("bwrap is not on PATH (apt-get install bubblewrap, or {INSTALL_HINT})"),
        )),
    }

    let srt_dir = &found.dir;
    match (&found.srt, &found.env) {
        (None, _) => missing.push((
            "srt",
            format!(
                "srt is not installed under {} ({INSTALL_HINT})",
                show(srt_dir)
            ),
        )),
        (Some(_), None) => missing.push(("srt", "env is not on PATH".to_owned())),
        (Some(srt), Some(env)) => {
            let lacking: Vec<&str> = [
                ("bwrap", found.bwrap.is_some()),
                ("socat", found.socat.is_some()),
                ("node", found.node.is_some()),
            ]
            .into_iter()
            .filter(|(_, there)| !there)
            .map(|(name, _)| name)
            .collect();
            if lacking.is_empty() {
                peers.push(Peer {
                    name: "srt",
                    argv_prefix: vec![
                        show(env),
                        format!("TMPDIR={}", show(&srt_dir.join("tmp"))),
                        show(srt),
                        "--settings".into(),
                        show(&srt_dir.join("srt-settings.json")),
                        "--".into(),
                    ],
                });
            } else {
                missing.push((
                    "srt",
                    format!(
                        "srt needs {} on PATH ({INSTALL_HINT})",
                        lacking.join(" and ")
                    ),
                ));
            }
        }
    }

    match (&found.codex, &found.env) {
        (None, _) => missing.push((
            "codex",
            format!(
                "codex is not installed under {} ({INSTALL_HINT})",
                show(srt_dir)
            ),
        )),
        (Some(_), None) => missing.push(("codex", "env is not on PATH".to_owned())),
        (Some(_), Some(_)) if found.codex_needs_node && found.node.is_none() => missing.push((
            "codex",
            "codex's node launcher needs node on PATH".to_owned(),
        )),
        (Some(codex), Some(env)) => peers.push(Peer {
            name: "codex",
            argv_prefix: vec![
                show(env),
                format!("CODEX_HOME={}", show(&srt_dir.join("codex-home"))),
                show(codex),
                "sandbox".into(),
                "--".into(),
            ],
        }),
    }
    (peers, missing)
}

/// Creates srt's settings and `TMPDIR` and codex's home under `dir`, and
/// empties that `TMPDIR` of the sockets srt leaves behind.
fn prepare(dir: &Path) -> Result<()> {
    let tmp = dir.join("tmp");
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let home = dir.join("codex-home");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let settings = dir.join("srt-settings.json");
    if !settings.exists() {
        std::fs::write(&settings, SRT_SETTINGS)
            .with_context(|| format!("writing {}", settings.display()))?;
    }
    for entry in std::fs::read_dir(&tmp)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("srt-mux-") && name.ends_with(".sock") {
            // Best effort: a socket of a concurrent srt run may go first.
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The first executable `name` in the directories of `path` (a `PATH` value).
fn find_on_path(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|d| !d.as_os_str().is_empty())
        .find_map(|d| executable(&d.join(name)))
}

/// `path` if it is an executable file (following links).
fn executable(path: &Path) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    (meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| path.to_path_buf())
}

/// The native codex binary the npm package installed for `arch` (as in
/// `std::env::consts::ARCH`): `@openai/codex-linux-<x64|arm64>/vendor/<target
/// triple>/bin/codex` under `modules`.
fn native_codex(modules: &Path, arch: &str) -> Option<PathBuf> {
    let npm_arch = match arch {
        "x86_64" => "x64",
        "aarch64" => "arm64",
        _ => return None,
    };
    let vendor = modules.join(format!("@openai/codex-linux-{npm_arch}/vendor"));
    let mut triples: Vec<PathBuf> = std::fs::read_dir(vendor)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    triples.sort();
    triples
        .iter()
        .find_map(|t| executable(&t.join("bin/codex")))
}

/// Runs `argv` `runs` times after `warmup` untimed runs, each a fresh spawn
/// and wait with stdin and stdout on `/dev/null`, and returns the wall times
/// of the timed runs. Stderr goes to an unlinked temporary file, emptied
/// before each run, so that a run exiting non-zero (an error, timed or not)
/// can be reported with what it said.
pub(crate) fn time_command(argv: &[String], warmup: usize, runs: usize) -> Result<Vec<Duration>> {
    let Some((program, args)) = argv.split_first() else {
        bail!("empty command");
    };
    let mut stderr = tempfile::tempfile().context("creating a file for stderr")?;
    let mut times = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        // The child shares this file description, so this rewinds it too.
        stderr.set_len(0)?;
        stderr.rewind()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr.try_clone()?);
        let start = Instant::now();
        let status = command
            .status()
            .with_context(|| format!("cannot run {program}"))?;
        let took = start.elapsed();
        if !status.success() {
            let mut said = String::new();
            stderr.rewind()?;
            (&mut stderr).take(8 * 1024).read_to_string(&mut said).ok();
            bail!(
                "`{}` failed ({status}) on run {} of {}: {}",
                argv.join(" "),
                i + 1,
                warmup + runs,
                said.trim()
            );
        }
        if i >= warmup {
            times.push(took);
        }
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Summary;

    fn make_executable(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn nothing_found_leaves_bare_and_says_why() {
        let found = Found {
            dir: PathBuf::from("/repo/target/sandbox-peers"),
            ..Found::default()
        };
        let (peers, missing) = assemble(&found);
        assert_eq!(
            peers,
            vec![Peer {
                name: "bare",
                argv_prefix: vec![]
            }]
        );
        let names: Vec<&str> = missing.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["bwrap", "srt", "codex"]);
        assert!(missing[0].1.contains("bwrap is not on PATH"));
        assert!(missing[1].1.contains("/repo/target/sandbox-peers"));
        assert!(missing.iter().all(|(_, why)| why.contains(INSTALL_HINT)));
    }

    #[test]
    fn everything_found_gives_the_documented_argvs() {
        let found = Found {
            dir: PathBuf::from("/r/target/sandbox-peers"),
            bwrap: Some("/usr/bin/bwrap".into()),
            socat: Some("/usr/bin/socat".into()),
            node: Some("/usr/bin/node".into()),
            env: Some("/usr/bin/env".into()),
            srt: Some("/r/target/sandbox-peers/node_modules/.bin/srt".into()),
            codex: Some("/r/codex".into()),
            codex_needs_node: false,
        };
        let (peers, missing) = assemble(&found);
        assert!(missing.is_empty(), "{missing:?}");
        let argvs: Vec<(&str, String)> = peers
            .iter()
            .map(|p| (p.name, p.argv(&["/bin/true"]).join(" ")))
            .collect();
        assert_eq!(
            argvs,
            [
                ("bare", "/bin/true".to_owned()),
                (
                    "bwrap",
                    "/usr/bin/bwrap --unshare-all --ro-bind / / -- /bin/true".to_owned()
                ),
                (
                    "srt",
                    "/usr/bin/env TMPDIR=/r/target/sandbox-peers/tmp \
                     /r/target/sandbox-peers/node_modules/.bin/srt \
                     --settings /r/target/sandbox-peers/srt-settings.json -- /bin/true"
                        .to_owned()
                ),
                (
                    "codex",
                    "/usr/bin/env CODEX_HOME=/r/target/sandbox-peers/codex-home \
                     /r/codex sandbox -- /bin/true"
                        .to_owned()
                ),
            ]
        );
    }

    #[test]
    fn srt_without_its_helpers_is_missing_and_says_which() {
        let found = Found {
            dir: PathBuf::from("/r"),
            env: Some("/usr/bin/env".into()),
            node: Some("/usr/bin/node".into()),
            srt: Some("/r/srt".into()),
            codex: Some("/r/.bin/codex".into()),
            codex_needs_node: true,
            ..Found::default()
        };
        let (peers, missing) = assemble(&found);
        let names: Vec<&str> = peers.iter().map(|p| p.name).collect();
        assert_eq!(names, ["bare", "codex"]);
        let srt = missing.iter().find(|(n, _)| *n == "srt").unwrap();
        assert!(srt.1.contains("bwrap and socat"), "{}", srt.1);

        // The node launcher of codex cannot run without node.
        let (_, missing) = assemble(&Found {
            node: None,
            ..found
        });
        assert!(missing
            .iter()
            .any(|(n, why)| *n == "codex" && why.contains("node")));
    }

    #[test]
    fn lookups_find_only_executable_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        make_executable(&b.join("tool"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::write(a.join("tool"), "not executable").unwrap();
        std::fs::create_dir_all(a.join("dir-tool")).unwrap();
        let path = std::env::join_paths([a.as_path(), Path::new(""), b.as_path()]).unwrap();
        assert_eq!(find_on_path("tool", &path), Some(b.join("tool")));
        assert_eq!(find_on_path("dir-tool", &path), None);
        assert_eq!(find_on_path("absent", &path), None);

        let modules = dir.path().join("node_modules");
        assert_eq!(native_codex(&modules, "x86_64"), None);
        let bin =
            modules.join("@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex");
        make_executable(&bin);
        assert_eq!(native_codex(&modules, "x86_64"), Some(bin));
        assert_eq!(native_codex(&modules, "aarch64"), None);
        assert_eq!(native_codex(&modules, "riscv64"), None);
    }

    #[test]
    fn discover_in_an_empty_repo_finds_bare() {
        let dir = tempfile::tempdir().unwrap();
        let (peers, missing) = discover(dir.path());
        assert_eq!(peers[0].name, "bare");
        assert!(missing.iter().any(|(n, _)| *n == "srt"));
        assert!(missing.iter().any(|(n, _)| *n == "codex"));
        // Nothing is created for peers that are not there.
        assert!(!dir.path().join(PEERS_DIR).exists());
    }

    #[test]
    fn prepare_writes_settings_and_clears_srt_sockets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let stale = dir.path().join("tmp/srt-mux-123-0.sock");
        let other = dir.path().join("tmp/keep.txt");
        std::fs::write(&stale, "").unwrap();
        std::fs::write(&other, "").unwrap();
        prepare(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
        assert!(dir.path().join("codex-home").is_dir());
        let settings = std::fs::read_to_string(dir.path().join("srt-settings.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&settings).unwrap();
        assert_eq!(v["filesystem"]["allowWrite"], serde_json::json!([]));
        // An existing settings file is kept.
        std::fs::write(dir.path().join("srt-settings.json"), "{}").unwrap();
        prepare(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("srt-settings.json")).unwrap(),
            "{}"
        );
    }

    #[test]
    fn time_command_reports_a_failure_with_its_stderr() {
        let argv: Vec<String> = ["/bin/sh", "-c", "echo first >&2; exit 3"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let err = time_command(&argv, 0, 2).unwrap_err().to_string();
        assert!(err.contains("run 1 of 2"), "{err}");
        assert!(err.contains("first"), "{err}");
        assert!(time_command(&[], 0, 1).is_err());

        let ok: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo out; echo err >&2".into(),
        ];
        assert_eq!(time_command(&ok, 1, 3).unwrap().len(), 3);
    }

    /// (a) of the sandbox benchmark: `/bin/true` as a bare spawn and wait.
    /// `cargo test --release -p flotilla-bench -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, not a check"]
    fn time_bare_true() {
        let bare = Peer {
            name: "bare",
            argv_prefix: vec![],
        };
        let times = time_command(&bare.argv(&["/bin/true"]), 5, 50).unwrap();
        let s = Summary::of(&times);
        eprintln!(
            "bare /bin/true: p50 {:.0} us, p90 {:.0} us (n {})",
            s.p50_us, s.p90_us, s.n
        );
        assert_eq!(s.n, 50);
    }

    /// (a), (c)-(e): `/bin/true` under every peer installed here (run
    /// `scripts/install-sandbox-peers.sh` first).
    /// `cargo test -p flotilla-bench time_every_peer -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, not a check; needs the peers installed"]
    fn time_every_peer() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .canonicalize()
            .unwrap();
        let (peers, missing) = discover(&root);
        for (name, why) in &missing {
            eprintln!("{name}: missing: {why}");
        }
        for peer in &peers {
            let argv = peer.argv(&["/bin/true"]);
            let times = time_command(&argv, 3, 50).unwrap();
            let s = Summary::of(&times);
            eprintln!(
                "{:5} p50 {:9.0} us  p90 {:9.0} us  {}",
                peer.name,
                s.p50_us,
                s.p90_us,
                argv.join(" ")
            );
        }
    }
}
