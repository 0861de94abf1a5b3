//! Resolving paths the model gives us to paths inside the workspace.
//!
//! The rule: every path a tool touches must resolve, after following every
//! symlink, to a place under the canonical workspace. Relative paths are
//! relative to the workspace; absolute paths are accepted when they point
//! inside it.
//!
//! # The TOCTOU limit
//!
//! Resolution and use are two steps: between [`resolve_in_workspace`]
//! returning and the tool opening the file, a concurrent process (a
//! background job started by an earlier `shell` call, for instance) could
//! swap a directory for a symlink pointing outside. These checks therefore
//! stop a confused or careless model, not a determined one racing us; the
//! session's sandbox (a mount namespace where only the workspace is
//! writable, and Landlock) is what closes the race for good.

use std::io;
use std::path::{Component, Path, PathBuf};

/// What the caller means to do with the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathIntent {
    /// The path must exist (a file or a directory to read or search).
    Read,
    /// The path may not exist yet; missing parent directories may be created.
    Write,
}

/// Why a path was refused. Messages are written for the model to act on.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path is under a protected prefix (`.git/hooks`, `.git/config`,
    /// `.flotilla/`).
    #[error(
        "{path} is read-only for agents: {protected} runs or configures things later \
         (git hooks, git config, flotilla's project config), and the sandbox keeps it \
         read-only for commands too; if the change is wanted, the user makes it"
    )]
    Protected {
        /// The path, relative to the workspace.
        path: String,
        /// The protected prefix it is under.
        protected: String,
    },
    /// The path was empty.
    #[error("path is empty; give a path relative to the workspace {workspace}")]
    Empty {
        /// The canonical workspace.
        workspace: PathBuf,
    },
    /// The path points outside the workspace (by `..` or being absolute elsewhere).
    #[error("path {path:?} escapes the workspace {workspace}; use a path inside it")]
    Escapes {
        /// The path as given.
        path: String,
        /// The canonical workspace.
        workspace: PathBuf,
    },
    /// The path goes through a symlink whose target is outside the workspace.
    #[error(
        "path {path:?} resolves through a symlink to {target}, outside the workspace {workspace}; \
         use a path inside it"
    )]
    SymlinkEscapes {
        /// The path as given.
        path: String,
        /// Where it resolved to.
        target: PathBuf,
        /// The canonical workspace.
        workspace: PathBuf,
    },
    /// A component is a symlink whose target does not exist, so where it leads cannot be checked.
    #[error(
        "path {path:?} goes through the dangling symlink {link} (its target does not exist); \
         refused because where it leads cannot be checked"
    )]
    DanglingSymlink {
        /// The path as given.
        path: String,
        /// The dangling link.
        link: PathBuf,
    },
    /// The path does not exist (for reading).
    #[error("path {path:?} does not exist (looked for {resolved}); check the name with list_files or glob")]
    NotFound {
        /// The path as given.
        path: String,
        /// The absolute path that was looked for.
        resolved: PathBuf,
    },
    /// The workspace itself cannot be resolved.
    #[error("the workspace {workspace} cannot be resolved: {source}")]
    Workspace {
        /// The workspace as configured.
        workspace: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another I/O error while resolving (permission denied, a file used as a directory...).
    #[error("cannot resolve path {path:?}: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Resolves `user_path` (as the model wrote it) to an absolute path inside
/// `workspace`, or refuses it.
///
/// The deepest existing ancestor of the path is canonicalized (following every
/// symlink, including the final component when it exists) and must stay under
/// the canonical workspace; the remaining, not yet existing components are
/// appended and must be plain names (no `..`). A symlink whose target is inside
/// the workspace is fine and is resolved to that target, so writing through it
/// replaces the target file and keeps the link.
///
/// With [`PathIntent::Read`] the path must exist. See the module docs for the
/// TOCTOU limit of this check.
pub fn resolve_in_workspace(
    workspace: &Path,
    user_path: &str,
    intent: PathIntent,
) -> Result<PathBuf, PathError> {
    let workspace = workspace
        .canonicalize()
        .map_err(|source| PathError::Workspace {
            workspace: workspace.to_path_buf(),
            source,
        })?;
    if user_path.is_empty() {
        return Err(PathError::Empty { workspace });
    }
    let given = Path::new(user_path);
    let candidate = if given.is_absolute() {
        given.to_path_buf()
    } else {
        workspace.join(given)
    };
    let escapes = || PathError::Escapes {
        path: user_path.to_owned(),
        workspace: workspace.clone(),
    };
    // A lexical check first, so that `../x` gets the clearer message even when
    // `../x` happens to exist.
    if !lexically_normalized(&candidate).is_some_and(|p| p.starts_with(&workspace)) {
        return Err(escapes());
    }

    // Find the deepest existing ancestor and canonicalize it.
    let components: Vec<Component<'_>> = candidate.components().collect();
    let mut split = components.len();
    let base = loop {
        let prefix: PathBuf = components[..split].iter().collect();
        match prefix.canonicalize() {
            Ok(canonical) => break canonical,
            Err(err) if err.kind() == io::ErrorKind::NotFound && split > 1 => split -= 1,
            Err(source) => {
                return Err(PathError::Io {
                    path: user_path.to_owned(),
                    source,
                })
            }
        }
    };
    if !base.starts_with(&workspace) {
        return Err(PathError::SymlinkEscapes {
            path: user_path.to_owned(),
            target: base,
            workspace,
        });
    }

    let rest = &components[split..];
    if rest.is_empty() {
        return Ok(base);
    }
    if intent == PathIntent::Read {
        return Err(PathError::NotFound {
            path: user_path.to_owned(),
            resolved: candidate,
        });
    }
    let mut resolved = base;
    for component in rest {
        match component {
            Component::Normal(name) => {
                resolved.push(name);
                // The name does not resolve (canonicalize said NotFound), yet it
                // may exist as a dangling symlink: writing through it would
                // create its target, wherever that is.
                if resolved.symlink_metadata().is_ok() {
                    return Err(PathError::DanglingSymlink {
                        path: user_path.to_owned(),
                        link: resolved,
                    });
                }
            }
            Component::CurDir => {}
            // `..` after a missing directory cannot be resolved safely.
            _ => return Err(escapes()),
        }
    }
    Ok(resolved)
}

/// Refuses a write to a path that runs or configures things later
/// (`.git/hooks`, `.git/config`, `.flotilla/`): the same paths the sandbox
/// keeps read-only for commands, so the file tools (which run in the daemon,
/// outside the sandbox) cannot be used to go around it.
pub fn refuse_protected(workspace: &Path, resolved: &Path) -> Result<(), PathError> {
    let Ok(workspace) = workspace.canonicalize() else {
        return Ok(());
    };
    let Ok(rel) = resolved.strip_prefix(&workspace) else {
        return Ok(());
    };
    for protected in flotilla_sandbox::spec::default_protected() {
        if rel.starts_with(&protected) {
            return Err(PathError::Protected {
                path: rel.display().to_string(),
                protected: protected.display().to_string(),
            });
        }
    }
    Ok(())
}

/// Removes `.` and `..` lexically; `None` when `..` climbs above the root.
fn lexically_normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// `path` relative to `workspace` for display, or `path` itself when it is not under it.
pub(crate) fn display_path(workspace: &Path, path: &Path) -> String {
    match path.strip_prefix(workspace) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_owned(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}
