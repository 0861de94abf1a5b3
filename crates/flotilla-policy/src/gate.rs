//! The exec-later gate. A write to a file that something executes later (a
//! shell startup file, a git hook, a CI workflow, a package manager's config)
//! turns one edit into code run outside any sandbox, at a time nobody watches,
//! so such writes always ask a human, whatever the allow rules say, in every
//! mode but an admin-permitted `bypass` (deny rules still deny).
//!
//! Matching is on path components and case-insensitive everywhere: on
//! case-insensitive filesystems (macOS, Windows) `.BashRC` *is* `.bashrc`, and
//! elsewhere it only asks a little more often. Paths must first go through
//! [`resolve`], so that neither a symlink nor a `..` can dress a gated file up
//! as an innocent one.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

/// The built-in list of files that execute later: `(category, entry)` pairs.
///
/// An entry ending in `/` is a folder: the folder itself and anything inside
/// it, at any depth. Any other entry is a file: the path's last components
/// equal it. Relative entries match anywhere in the path, `~/` entries only
/// under the user's home, `/` entries only from the root; a component ending
/// in `*` matches by prefix, and such an entry is a folder too. A backup or
/// look-alike (`.bashrc.bak`, `my.npmrc.txt`) is never executed, so it is not
/// gated.
pub const EXEC_LATER: &[(&str, &str)] = &[
    ("shell startup file", ".bashrc"),
    ("shell startup file", ".bash_profile"),
    ("shell startup file", ".bash_login"),
    ("shell startup file", ".bash_logout"),
    ("shell startup file", ".profile"),
    ("shell startup file", ".zshrc"),
    ("shell startup file", ".zshenv"),
    ("shell startup file", ".zprofile"),
    ("shell startup file", ".zlogin"),
    ("shell startup file", ".zlogout"),
    ("shell startup file", ".config/fish/"),
    ("shell startup file", "/etc/profile"),
    ("shell startup file", "/etc/profile.d/"),
    ("shell startup file", "/etc/bash.bashrc"),
    ("shell startup file", "/etc/zshrc"),
    ("shell startup file", "/etc/zshenv"),
    ("shell startup file", "/etc/zsh/"),
    ("git", ".gitconfig"),
    ("git", ".config/git/"),
    ("git", ".git/config"),
    ("git", ".git/hooks/"),
    // Submodules and linked worktrees keep their own config and hooks here.
    ("git", ".git/modules/"),
    ("git", ".git/worktrees/"),
    ("git", ".git/info/attributes"),
    ("git", ".gitmodules"),
    ("git", ".gitattributes"),
    ("package manager", ".npmrc"),
    ("package manager", ".yarnrc"),
    ("package manager", ".yarnrc.yml"),
    ("package manager", "bunfig.toml"),
    ("package manager", ".pnpmfile.cjs"),
    ("package manager", "pip.conf"),
    ("package manager", "pip.ini"),
    ("package manager", ".pypirc"),
    ("package manager", ".cargo/config.toml"),
    ("package manager", ".cargo/config"),
    ("package manager", ".bazelrc"),
    ("package manager", ".mvn/"),
    ("package manager", "gradle.properties"),
    ("hooks", ".pre-commit-config.yaml"),
    ("hooks", ".husky/"),
    ("environment", ".devcontainer/"),
    ("environment", ".envrc"),
    ("environment", ".direnvrc"),
    ("environment", ".vscode/tasks.json"),
    ("environment", ".idea/"),
    ("CI", ".github/workflows/"),
    ("CI", ".gitlab-ci.yml"),
    ("agent config", ".mcp.json"),
    ("agent config", ".flotilla/"),
    ("agent config", ".claude/"),
    ("agent config", "AGENTS.md"),
    ("autostart", "~/.config/autostart/"),
    ("autostart", "~/.config/systemd/user/"),
    ("autostart", "~/Library/LaunchAgents/"),
    ("autostart", "/var/spool/cron/"),
    ("autostart", "/var/at/tabs/"),
    ("autostart", "/etc/cron*"),
    // The policy passes the pseudo-path `crontab` for a shell command that
    // edits the user's crontab.
    ("autostart", "crontab"),
];

/// A path the gate stops, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateHit {
    /// The list entry that matched, as written in the list (`.bashrc`,
    /// `.git/hooks/`, or the admin's glob).
    pub entry: String,
    /// Its category (`shell startup file`, `git`, `package manager`, `hooks`,
    /// `environment`, `CI`, `agent config`, `autostart`, `admin list`).
    pub category: String,
    /// The path that matched (the resolved one).
    pub path: PathBuf,
}

/// An admin's `exec_later_extra` entry that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("exec_later_extra entry {entry:?} is not a valid glob: {message}")]
pub struct GateError {
    /// The entry as the admin wrote it.
    pub entry: String,
    /// Why it is not a glob.
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Anchor {
    Anywhere,
    Home,
    Root,
}

#[derive(Clone, Debug)]
struct Builtin {
    category: &'static str,
    entry: &'static str,
    anchor: Anchor,
    /// Lowercased components; a `Root` entry starts with `/`.
    comps: Vec<String>,
    folder: bool,
}

#[derive(Clone, Debug)]
struct Extra {
    entry: String,
    /// Matched against the path relative to home instead of the whole path.
    home: bool,
    globs: Vec<GlobMatcher>,
}

/// The gate: the built-in list plus the admin's extra globs.
#[derive(Clone, Debug)]
pub struct ExecLaterGate {
    builtin: Vec<Builtin>,
    extra: Vec<Extra>,
}

impl ExecLaterGate {
    /// `extra` are admin globs (`**/.tool-versions`, `/opt/tools/**`):
    /// gitignore-like, matched against the whole absolute path,
    /// case-insensitively. A glob without a `/` (but a trailing one) matches
    /// a name anywhere; a relative glob with a `/` matches anywhere too, as
    /// there is no folder to anchor it at; `~/` anchors at the home; a
    /// trailing `/` or `/**` also gates the folder itself.
    pub fn new(extra: &[String]) -> Result<ExecLaterGate, GateError> {
        let builtin = EXEC_LATER
            .iter()
            .map(|&(category, entry)| parse_builtin(category, entry))
            .collect();
        let extra = extra
            .iter()
            .map(|entry| parse_extra(entry))
            .collect::<Result<_, _>>()?;
        Ok(ExecLaterGate { builtin, extra })
    }

    /// Whether writing `path` (absolute, already resolved with [`resolve`])
    /// is gated. `home` is the user's home folder, for the home-anchored
    /// entries; pass it resolved too, as `path` is.
    pub fn check(&self, path: &Path, home: Option<&Path>) -> Option<GateHit> {
        let cleaned = clean(path);
        let home = home.map(clean);
        let comps = lower_comps(&cleaned);
        let home_comps = home.as_deref().map(lower_comps);
        // macOS keeps /etc and /var under /private, and a resolved path says
        // so.
        let unprivate: Option<Vec<String>> =
            (comps.len() > 2 && comps[0] == "/" && comps[1] == "private")
                .then(|| comps[..1].iter().chain(&comps[2..]).cloned().collect());
        let hit = |entry: &str, category: &str| GateHit {
            entry: entry.to_string(),
            category: category.to_string(),
            path: path.to_path_buf(),
        };
        for b in &self.builtin {
            let matched = match b.anchor {
                Anchor::Anywhere => matches_anywhere(&comps, &b.comps, b.folder),
                Anchor::Home => home_comps.as_ref().is_some_and(|h| {
                    let full: Vec<String> = h.iter().chain(&b.comps).cloned().collect();
                    matches_anchored(&comps, &full, h.len(), b.folder)
                }),
                Anchor::Root => {
                    matches_anchored(&comps, &b.comps, 1, b.folder)
                        || unprivate
                            .as_ref()
                            .is_some_and(|u| matches_anchored(u, &b.comps, 1, b.folder))
                }
            };
            if matched {
                return Some(hit(b.entry, b.category));
            }
        }
        for e in &self.extra {
            let candidate = if e.home {
                match home.as_deref().and_then(|h| cleaned.strip_prefix(h).ok()) {
                    Some(rest) => rest.to_path_buf(),
                    None => continue,
                }
            } else {
                cleaned.clone()
            };
            if e.globs.iter().any(|g| g.is_match(&candidate)) {
                return Some(hit(&e.entry, "admin list"));
            }
        }
        None
    }
}

fn parse_builtin(category: &'static str, entry: &'static str) -> Builtin {
    let (anchor, rest) = if let Some(rest) = entry.strip_prefix("~/") {
        (Anchor::Home, rest)
    } else if entry.starts_with('/') {
        (Anchor::Root, entry)
    } else {
        (Anchor::Anywhere, entry)
    };
    let mut comps: Vec<String> = Vec::new();
    if anchor == Anchor::Root {
        comps.push("/".to_string());
    }
    comps.extend(
        rest.split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_lowercase),
    );
    Builtin {
        category,
        entry,
        anchor,
        comps,
        folder: entry.ends_with('/') || entry.ends_with('*'),
    }
}

fn parse_extra(entry: &str) -> Result<Extra, GateError> {
    let err = |message: String| GateError {
        entry: entry.to_string(),
        message,
    };
    let trimmed = entry.trim();
    if trimmed.is_empty() {
        return Err(err("empty glob".to_string()));
    }
    let (home, body) = match trimmed.strip_prefix("~/") {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let folder = body.ends_with('/');
    let body = body.trim_end_matches('/');
    if body.is_empty() {
        return Err(err("matches no file".to_string()));
    }
    let anchored = home || body.starts_with('/') || Path::new(body).is_absolute();
    let base = if anchored {
        body.to_string()
    } else {
        format!("**/{body}")
    };
    let mut patterns = vec![base.clone()];
    if folder {
        patterns.push(format!("{base}/**"));
    } else if let Some(dir) = base.strip_suffix("/**") {
        if !dir.is_empty() && dir != "**" {
            patterns.push(dir.to_string());
        }
    }
    let globs = patterns
        .iter()
        .map(|p| {
            GlobBuilder::new(p)
                .case_insensitive(true)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| err(e.kind().to_string()))
        })
        .collect::<Result<_, _>>()?;
    Ok(Extra {
        entry: entry.to_string(),
        home,
        globs,
    })
}

fn comp_eq(pat: &str, comp: &str) -> bool {
    match pat.strip_suffix('*') {
        Some(prefix) => comp.starts_with(prefix),
        None => pat == comp,
    }
}

fn run_eq(path: &[String], pat: &[String]) -> bool {
    path.len() == pat.len() && path.iter().zip(pat).all(|(c, p)| comp_eq(p, c))
}

/// `pat` (of which the first `base` components are the anchor) is a prefix
/// of `path`: the whole entry (a file exactly, a folder or below), or, short
/// of it, a folder on the way to it: replacing `.git` or `~/.config` plants
/// whatever is under it.
fn matches_anchored(path: &[String], pat: &[String], base: usize, folder: bool) -> bool {
    if path.len() >= pat.len() {
        run_eq(&path[..pat.len()], pat) && (folder || path.len() == pat.len())
    } else {
        path.len() > base && run_eq(path, &pat[..path.len()])
    }
}

/// A run of `pat` anywhere: ending the path for a file, anywhere for a folder;
/// or the path ending in the first components of a multi-component entry
/// (`.git` for `.git/hooks/`), for the same reason as [`matches_anchored`].
fn matches_anywhere(path: &[String], pat: &[String], folder: bool) -> bool {
    let k = pat.len();
    let n = path.len();
    if k == 0 {
        return false;
    }
    let whole = if folder {
        n >= k && (0..=n - k).any(|i| run_eq(&path[i..i + k], pat))
    } else {
        n >= k && run_eq(&path[n - k..], pat)
    };
    whole || (1..k).any(|j| n >= j && run_eq(&path[n - j..], &pat[..j]))
}

fn lower_comps(path: &Path) -> Vec<String> {
    path.components()
        .map(|c| match c {
            Component::RootDir => "/".to_string(),
            other => other.as_os_str().to_string_lossy().to_lowercase(),
        })
        .collect()
}

/// `.` dropped and `..` popped, without looking at the filesystem.
fn clean(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// The kernel's symlink limit on Linux.
const MAX_HOPS: usize = 40;

/// Resolves `path` as a write would see it: `~/` expanded with `home`;
/// relative paths joined to `base` (the workspace); symlinks followed
/// component by component, so `.` and `..` apply to the real folders as the
/// kernel's would; a final component that is a symlink (even a dangling one)
/// followed to its target, as a write through it creates the target
/// (repeatedly, at most 40 hops, relative targets resolved against the link's
/// folder); what does not exist is taken lexically. Never fails: where nothing can be resolved, returns the lexically cleaned path.
pub fn resolve(base: &Path, path: &str, home: Option<&Path>) -> PathBuf {
    let expanded = match home {
        Some(h) if path == "~" => h.to_path_buf(),
        Some(h) => match path
            .strip_prefix("~/")
            .or_else(|| cfg!(windows).then(|| path.strip_prefix("~\\")).flatten())
        {
            Some(rest) => h.join(rest),
            None => PathBuf::from(path),
        },
        None => PathBuf::from(path),
    };
    let joined = if expanded.is_absolute() {
        expanded
    } else {
        base.join(expanded)
    };
    let mut queue: VecDeque<OsString> = joined
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut out = PathBuf::new();
    let mut hops = 0;
    while let Some(name) = queue.pop_front() {
        let comp = Path::new(&name).components().next();
        match comp {
            None | Some(Component::CurDir) => {}
            Some(Component::ParentDir) => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            Some(Component::Normal(_)) => {
                let candidate = out.join(&name);
                // Missing components are looked at too: in `new/../link`,
                // `link` exists once `new` is created.
                let link = if hops >= MAX_HOPS {
                    None
                } else {
                    match std::fs::symlink_metadata(&candidate) {
                        Ok(m) if m.file_type().is_symlink() => std::fs::read_link(&candidate).ok(),
                        _ => None,
                    }
                };
                match link {
                    Some(target) => {
                        hops += 1;
                        // The target's components go first; an absolute one
                        // restarts from its root, a relative one from `out`,
                        // the link's folder.
                        for c in target.components().rev() {
                            queue.push_front(c.as_os_str().to_os_string());
                        }
                    }
                    None => out = candidate,
                }
            }
            Some(Component::Prefix(_)) => out = PathBuf::from(&name),
            // An absolute path or link target: restart from the root, on the
            // same drive where there is one.
            Some(Component::RootDir) => {
                out = match out.components().next() {
                    Some(Component::Prefix(p)) => PathBuf::from(p.as_os_str()),
                    _ => PathBuf::new(),
                };
                out.push(&name);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const HOME: &str = "/home/u";

    fn gate() -> ExecLaterGate {
        ExecLaterGate::new(&[]).unwrap()
    }

    /// `(category, entry)` of the hit for `path`, with `/home/u` as home.
    fn hit(path: &str) -> Option<(String, String)> {
        gate()
            .check(Path::new(path), Some(Path::new(HOME)))
            .map(|h| (h.category, h.entry))
    }

    fn is(path: &str, category: &str, entry: &str) {
        assert_eq!(
            hit(path),
            Some((category.to_string(), entry.to_string())),
            "{path}"
        );
    }

    fn not(path: &str) {
        assert_eq!(hit(path), None, "{path}");
    }

    #[test]
    fn bashrc_in_home() {
        is("/home/u/.bashrc", "shell startup file", ".bashrc");
    }

    #[test]
    fn shell_startup_files_anywhere() {
        for f in [
            ".bash_profile",
            ".bash_login",
            ".bash_logout",
            ".profile",
            ".zshrc",
            ".zshenv",
            ".zprofile",
            ".zlogin",
        ] {
            is(&format!("/ws/{f}"), "shell startup file", f);
        }
    }

    #[test]
    fn fish_config_folder() {
        is(
            "/home/u/.config/fish/conf.d/x.fish",
            "shell startup file",
            ".config/fish/",
        );
    }

    #[test]
    fn system_profile() {
        is(
            "/etc/profile.d/x.sh",
            "shell startup file",
            "/etc/profile.d/",
        );
        not("/ws/etc/profile.d/x.sh");
    }

    #[test]
    fn bashrc_uppercase() {
        is("/home/u/.BASHRC", "shell startup file", ".bashrc");
        is("/home/u/.BashRC", "shell startup file", ".bashrc");
    }

    #[test]
    fn git_hook_mixed_case() {
        is("/ws/.Git/Hooks/pre-commit", "git", ".git/hooks/");
    }

    #[test]
    fn git_hook_deep() {
        is("/ws/repo/.git/hooks/sub/x", "git", ".git/hooks/");
    }

    #[test]
    fn git_hooks_folder_itself() {
        is("/ws/.git/hooks", "git", ".git/hooks/");
    }

    #[test]
    fn git_folder_itself_replaces_hooks() {
        // `mv evil .git` (or a `.git` gitfile pointing elsewhere).
        assert_eq!(hit("/ws/.git").unwrap().0, "git");
    }

    #[test]
    fn git_config_and_friends() {
        is("/ws/.git/config", "git", ".git/config");
        is("/home/u/.gitconfig", "git", ".gitconfig");
        is("/home/u/.config/git/config", "git", ".config/git/");
        is("/ws/.gitmodules", "git", ".gitmodules");
        is("/ws/sub/.gitattributes", "git", ".gitattributes");
        is(
            "/ws/.git/modules/lib/hooks/post-checkout",
            "git",
            ".git/modules/",
        );
    }

    #[test]
    fn git_other_files_not_gated() {
        not("/ws/.git/HEAD");
        not("/ws/.git/refs/heads/main");
        not("/ws/src/git/config.rs");
    }

    #[test]
    fn npmrc_nested() {
        is("/ws/sub/dir/.npmrc", "package manager", ".npmrc");
    }

    #[test]
    fn package_manager_files() {
        for f in [
            ".yarnrc",
            ".yarnrc.yml",
            "bunfig.toml",
            ".pnpmfile.cjs",
            "pip.conf",
            ".pypirc",
            ".bazelrc",
            "gradle.properties",
        ] {
            is(&format!("/ws/{f}"), "package manager", f);
        }
    }

    #[test]
    fn cargo_config() {
        is(
            "/ws/.cargo/config.toml",
            "package manager",
            ".cargo/config.toml",
        );
        is("/home/u/.cargo/config", "package manager", ".cargo/config");
        is(
            "/ws/.CARGO/Config.TOML",
            "package manager",
            ".cargo/config.toml",
        );
    }

    #[test]
    fn cargo_other_files_not_gated() {
        not("/ws/config.toml");
        not("/home/u/.cargo/registry/src/x/lib.rs");
    }

    #[test]
    fn maven_wrapper() {
        is(
            "/ws/.mvn/wrapper/maven-wrapper.properties",
            "package manager",
            ".mvn/",
        );
    }

    #[test]
    fn hooks_category() {
        is(
            "/ws/.pre-commit-config.yaml",
            "hooks",
            ".pre-commit-config.yaml",
        );
        is("/ws/.husky/pre-push", "hooks", ".husky/");
        is("/ws/.husky", "hooks", ".husky/");
    }

    #[test]
    fn environment_category() {
        is(
            "/ws/.devcontainer/devcontainer.json",
            "environment",
            ".devcontainer/",
        );
        is("/ws/.envrc", "environment", ".envrc");
        is("/home/u/.direnvrc", "environment", ".direnvrc");
        is(
            "/ws/.vscode/tasks.json",
            "environment",
            ".vscode/tasks.json",
        );
        is("/ws/.idea/workspace.xml", "environment", ".idea/");
    }

    #[test]
    fn vscode_settings_not_gated() {
        not("/ws/.vscode/settings.json");
        not("/ws/tasks.json");
    }

    #[test]
    fn ci_workflow_nested() {
        is(
            "/ws/repo/.github/workflows/ci.yml",
            "CI",
            ".github/workflows/",
        );
        is("/ws/.github/workflows", "CI", ".github/workflows/");
        is("/ws/.gitlab-ci.yml", "CI", ".gitlab-ci.yml");
    }

    #[test]
    fn github_issue_template_not_gated() {
        not("/ws/.github/ISSUE_TEMPLATE.md");
        not("/ws/docs/workflows/ci.yml");
    }

    #[test]
    fn agent_config() {
        is("/ws/.mcp.json", "agent config", ".mcp.json");
        is("/ws/.flotilla/policy.toml", "agent config", ".flotilla/");
        is("/home/u/.claude/settings.json", "agent config", ".claude/");
        is("/ws/agents.md", "agent config", "AGENTS.md");
        is("/ws/sub/AGENTS.md", "agent config", "AGENTS.md");
    }

    #[test]
    fn autostart_in_home() {
        is(
            "/home/u/.config/autostart/x.desktop",
            "autostart",
            "~/.config/autostart/",
        );
        is(
            "/home/u/.config/systemd/user/x.service",
            "autostart",
            "~/.config/systemd/user/",
        );
        is(
            "/home/u/Library/LaunchAgents/x.plist",
            "autostart",
            "~/Library/LaunchAgents/",
        );
    }

    #[test]
    fn autostart_outside_home_not_gated() {
        not("/ws/.config/autostart/x.desktop");
        not("/ws/.config/systemd/user/x.service");
        not("/ws/Library/LaunchAgents/x.plist");
    }

    #[test]
    fn autostart_without_home_not_gated() {
        let g = gate();
        assert_eq!(
            g.check(Path::new("/home/u/.config/autostart/x.desktop"), None),
            None
        );
    }

    #[test]
    fn crontabs() {
        is(
            "/var/spool/cron/crontabs/u",
            "autostart",
            "/var/spool/cron/",
        );
        is("/etc/crontab", "autostart", "/etc/cron*");
        is("/etc/cron.d/job", "autostart", "/etc/cron*");
        is("/etc/cron.daily/job", "autostart", "/etc/cron*");
        is("/private/etc/crontab", "autostart", "/etc/cron*");
        not("/etc/hosts");
        not("/ws/etc/cron.d/job");
    }

    #[test]
    fn crontab_pseudo_path() {
        is("crontab", "autostart", "crontab");
        is("/ws/crontab", "autostart", "crontab");
    }

    #[test]
    fn look_alikes_not_gated() {
        // A backup is never executed.
        not("/home/u/.bashrc.bak");
        not("/ws/src/profile.rs");
        not("/ws/my.npmrc.txt");
        not("/ws/bashrc");
        not("/ws/notes/.bashrc.d.md");
        not("/ws/src/main.rs");
    }

    #[test]
    fn dot_dot_in_checked_path() {
        is("/ws/src/../.git/hooks/x", "git", ".git/hooks/");
    }

    #[test]
    fn hit_carries_path() {
        let h = gate().check(Path::new("/ws/.envrc"), None).unwrap();
        assert_eq!(h.path, PathBuf::from("/ws/.envrc"));
    }

    fn admin(globs: &[&str]) -> ExecLaterGate {
        ExecLaterGate::new(&globs.iter().map(|g| g.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn admin_name_glob() {
        let g = admin(&["**/.tool-versions"]);
        let h = g.check(Path::new("/ws/a/.Tool-Versions"), None).unwrap();
        assert_eq!(h.category, "admin list");
        assert_eq!(h.entry, "**/.tool-versions");
    }

    #[test]
    fn admin_bare_name_matches_anywhere() {
        let g = admin(&["Makefile"]);
        assert!(g.check(Path::new("/ws/sub/makefile"), None).is_some());
        assert!(g.check(Path::new("/ws/sub/Makefile.bak"), None).is_none());
    }

    #[test]
    fn admin_absolute_folder() {
        let g = admin(&["/opt/tools/**"]);
        assert!(g.check(Path::new("/opt/tools/bin/x"), None).is_some());
        assert!(g.check(Path::new("/opt/tools"), None).is_some());
        assert!(g.check(Path::new("/opt/toolsx/y"), None).is_none());
        assert!(g.check(Path::new("/ws/opt/tools/y"), None).is_none());
    }

    #[test]
    fn admin_trailing_slash_folder() {
        let g = admin(&["scripts/"]);
        assert!(g.check(Path::new("/ws/scripts/deploy.sh"), None).is_some());
        assert!(g.check(Path::new("/ws/scripts"), None).is_some());
        assert!(g.check(Path::new("/ws/scripts.md"), None).is_none());
    }

    #[test]
    fn admin_star_does_not_cross_folders() {
        let g = admin(&["/opt/*.sh"]);
        assert!(g.check(Path::new("/opt/a.sh"), None).is_some());
        assert!(g.check(Path::new("/opt/x/a.sh"), None).is_none());
    }

    #[test]
    fn admin_home_anchored() {
        let g = admin(&["~/.local/bin/**"]);
        let home = Some(Path::new(HOME));
        assert!(g.check(Path::new("/home/u/.local/bin/x"), home).is_some());
        assert!(g.check(Path::new("/ws/.local/bin/x"), home).is_none());
        assert!(g.check(Path::new("/home/u/.local/bin/x"), None).is_none());
    }

    #[test]
    fn admin_invalid_glob() {
        let e = ExecLaterGate::new(&["a/[b".to_string()]).unwrap_err();
        assert_eq!(e.entry, "a/[b");
        assert!(e.to_string().contains("not a valid glob"));
        assert!(ExecLaterGate::new(&["  ".to_string()]).is_err());
    }

    #[test]
    fn builtin_wins_over_admin() {
        let g = admin(&["**/.bashrc"]);
        let h = g.check(Path::new("/ws/.bashrc"), None).unwrap();
        assert_eq!(h.category, "shell startup file");
    }

    #[test]
    fn every_builtin_entry_parses_and_matches_itself() {
        let home = Path::new(HOME);
        let g = gate();
        for (category, entry) in EXEC_LATER {
            let p = if let Some(rest) = entry.strip_prefix("~/") {
                home.join(rest).join("x")
            } else if entry.starts_with('/') {
                let p = PathBuf::from(entry.trim_end_matches('*'));
                if entry.ends_with('/') || entry.ends_with('*') {
                    p.join("x")
                } else {
                    p
                }
            } else {
                Path::new("/ws")
                    .join(entry)
                    .join(if entry.ends_with('/') { "x" } else { "" })
            };
            let h = g.check(&p, Some(home)).unwrap_or_else(|| panic!("{entry}"));
            assert_eq!(h.category, *category, "{entry}");
        }
    }

    // resolve()

    #[test]
    fn resolve_relative_and_tilde() {
        let base = Path::new("/nonexistent-ws");
        let home = Path::new("/nonexistent-home");
        assert_eq!(
            resolve(base, "a/./b/../c", Some(home)),
            PathBuf::from("/nonexistent-ws/a/c")
        );
        assert_eq!(
            resolve(base, "~/.bashrc", Some(home)),
            PathBuf::from("/nonexistent-home/.bashrc")
        );
        assert_eq!(
            resolve(base, "~", Some(home)),
            PathBuf::from("/nonexistent-home")
        );
        assert_eq!(
            resolve(base, "~/.bashrc", None),
            PathBuf::from("/nonexistent-ws/~/.bashrc")
        );
        assert_eq!(resolve(base, "/../..", None), PathBuf::from("/"));
    }

    #[test]
    fn resolve_dot_dot_trick_is_gated() {
        let p = resolve(Path::new("/nonexistent-ws"), "src/../.git/hooks/x", None);
        assert_eq!(p, PathBuf::from("/nonexistent-ws/.git/hooks/x"));
        assert_eq!(gate().check(&p, None).unwrap().entry, ".git/hooks/");
    }

    #[cfg(unix)]
    mod links {
        use super::*;
        use std::os::unix::fs::symlink;

        struct Fixture {
            _dir: tempfile::TempDir,
            ws: PathBuf,
            home: PathBuf,
        }

        fn fixture() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let root = std::fs::canonicalize(dir.path()).unwrap();
            let ws = root.join("ws");
            let home = root.join("home");
            std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
            std::fs::create_dir_all(&home).unwrap();
            Fixture {
                _dir: dir,
                ws,
                home,
            }
        }

        #[test]
        fn symlink_to_home_bashrc() {
            let f = fixture();
            std::fs::write(f.home.join(".bashrc"), "").unwrap();
            symlink(f.home.join(".bashrc"), f.ws.join("innocent.txt")).unwrap();
            let p = resolve(&f.ws, "innocent.txt", Some(&f.home));
            assert_eq!(p, f.home.join(".bashrc"));
            let h = gate().check(&p, Some(&f.home)).unwrap();
            assert_eq!(h.entry, ".bashrc");
        }

        #[test]
        fn dangling_symlink_to_hook() {
            let f = fixture();
            symlink(".git/hooks/pre-commit", f.ws.join("notes.md")).unwrap();
            let p = resolve(&f.ws, "notes.md", None);
            assert_eq!(p, f.ws.join(".git/hooks/pre-commit"));
            assert_eq!(gate().check(&p, None).unwrap().entry, ".git/hooks/");
        }

        #[test]
        fn symlinked_folder_to_hooks() {
            let f = fixture();
            symlink(f.ws.join(".git/hooks"), f.ws.join("link")).unwrap();
            let p = resolve(&f.ws, "link/pre-commit", None);
            assert_eq!(p, f.ws.join(".git/hooks/pre-commit"));
            assert!(gate().check(&p, None).is_some());
        }

        #[test]
        fn dot_dot_after_symlinked_folder() {
            let f = fixture();
            // `link/..` is the link target's parent, `.git`, not `ws`.
            symlink(f.ws.join(".git/hooks"), f.ws.join("link")).unwrap();
            let p = resolve(&f.ws, "link/../config", None);
            assert_eq!(p, f.ws.join(".git/config"));
            assert_eq!(gate().check(&p, None).unwrap().entry, ".git/config");
        }

        #[test]
        fn chain_of_relative_links() {
            let f = fixture();
            std::fs::create_dir_all(f.ws.join("a")).unwrap();
            symlink("../b", f.ws.join("a/l1")).unwrap();
            symlink(".git/hooks/post-merge", f.ws.join("b")).unwrap();
            let p = resolve(&f.ws, "a/l1", None);
            assert_eq!(p, f.ws.join(".git/hooks/post-merge"));
        }

        #[test]
        fn symlink_loop_terminates() {
            let f = fixture();
            symlink(f.ws.join("b"), f.ws.join("a")).unwrap();
            symlink(f.ws.join("a"), f.ws.join("b")).unwrap();
            let p = resolve(&f.ws, "a/x", None);
            assert!(p.starts_with(&f.ws));
            symlink("self", f.ws.join("self")).unwrap();
            let p = resolve(&f.ws, "self", None);
            assert!(p.starts_with(&f.ws));
        }

        #[test]
        fn plain_file_unchanged() {
            let f = fixture();
            std::fs::write(f.ws.join("main.rs"), "").unwrap();
            assert_eq!(resolve(&f.ws, "./main.rs", None), f.ws.join("main.rs"));
            assert_eq!(
                resolve(&f.ws, "new/dir/file", None),
                f.ws.join("new/dir/file")
            );
        }

        #[test]
        fn autostart_through_home_tilde() {
            let f = fixture();
            let p = resolve(&f.ws, "~/.config/autostart/x.desktop", Some(&f.home));
            let h = gate().check(&p, Some(&f.home)).unwrap();
            assert_eq!(h.entry, "~/.config/autostart/");
            // The same relative path in the workspace is not the user's.
            let p = resolve(&f.ws, ".config/autostart/x.desktop", Some(&f.home));
            assert_eq!(gate().check(&p, Some(&f.home)), None);
        }
    }
}
