//! `list_files`, `glob` and `grep`: walks that respect `.gitignore`.

use std::path::{Path, PathBuf};

use grep_regex::RegexMatcherBuilder;
use grep_searcher::{sinks, BinaryDetection, SearcherBuilder};
use ignore::{DirEntry, WalkBuilder};
use serde::Deserialize;

use super::path::{display_path, resolve_in_workspace, PathIntent};
use super::{cap_text, ToolContext, ToolOutcome};

/// Most entries `list_files` and `glob` return.
const MAX_ENTRIES: usize = 1_000;
/// Default and largest `depth` of `list_files`.
const DEFAULT_DEPTH: usize = 2;
const MAX_DEPTH: usize = 20;
/// Default and largest `max_results` of `grep`.
const DEFAULT_MAX_RESULTS: usize = 200;
const MAX_RESULTS: usize = 2_000;
/// Longest matching line shown whole by `grep`.
const MAX_HIT_CHARS: usize = 400;

#[derive(Deserialize)]
pub(crate) struct ListArgs {
    path: Option<String>,
    depth: Option<u64>,
}

#[derive(Deserialize)]
pub(crate) struct GlobArgs {
    pattern: String,
    path: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct GrepArgs {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
    #[serde(default)]
    case_insensitive: bool,
    max_results: Option<u64>,
}

/// Resolves an optional directory (or file) argument, "." by default.
fn resolve_root(ctx: &ToolContext, path: Option<&str>) -> Result<PathBuf, ToolOutcome> {
    let path = match path {
        None | Some("") => ".",
        Some(path) => path,
    };
    resolve_in_workspace(&ctx.workspace, path, PathIntent::Read)
        .map_err(|err| ToolOutcome::error(err.to_string()))
}

/// A walker over `root` that respects `.gitignore` (even outside a git
/// repository), `.ignore` and git's exclude files, shows hidden files but
/// never descends into `.git`, never follows symlinks, and sorts by name.
fn walker(ctx: &ToolContext, root: &Path, max_depth: Option<usize>) -> WalkBuilder {
    let mut builder = WalkBuilder::new(root);
    let hidden = ctx.hidden.clone();
    builder
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(true)
        .ignore(true)
        .require_git(false)
        .follow_links(false)
        .max_depth(max_depth)
        .filter_entry(move |entry| {
            entry.file_name() != ".git" && !hidden.as_ref().is_some_and(|h| h(entry.path()))
        })
        .sort_by_file_name(|a, b| a.cmp(b));
    builder
}

fn is_dir(entry: &DirEntry) -> bool {
    entry.file_type().is_some_and(|t| t.is_dir())
}

fn is_symlink(entry: &DirEntry) -> bool {
    entry.file_type().is_some_and(|t| t.is_symlink())
}

pub(crate) fn list_files(ctx: &ToolContext, args: ListArgs) -> ToolOutcome {
    let root = match resolve_root(ctx, args.path.as_deref()) {
        Ok(root) => root,
        Err(outcome) => return outcome,
    };
    let shown_root = display_path(&ctx.workspace, &root);
    if !root.is_dir() {
        return ToolOutcome::error(format!(
            "{shown_root} is a file, not a directory; use read_file to read it"
        ));
    }
    let depth = args
        .depth
        .map_or(DEFAULT_DEPTH, |d| (d as usize).clamp(1, MAX_DEPTH));
    let mut lines = Vec::new();
    let mut more = false;
    for entry in walker(ctx, &root, Some(depth)).build() {
        if ctx.cancel.is_cancelled() {
            return ToolOutcome::error("list_files was cancelled");
        }
        let Ok(entry) = entry else { continue };
        if entry.depth() == 0 {
            continue;
        }
        if lines.len() >= MAX_ENTRIES {
            more = true;
            break;
        }
        let mut line = display_path(&ctx.workspace, entry.path());
        if is_dir(&entry) {
            line.push('/');
        } else if is_symlink(&entry) {
            if let Ok(target) = std::fs::read_link(entry.path()) {
                line.push_str(&format!(" -> {}", target.display()));
            }
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return ToolOutcome::ok(format!(
            "{shown_root}/ is empty (or everything in it is ignored by .gitignore)"
        ));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    if more {
        text.push_str(&format!(
            "[stopped at {MAX_ENTRIES} entries; list a subdirectory or use a smaller depth]\n"
        ));
    }
    ToolOutcome::ok(cap_text(text, ctx.limits.output_cap_bytes))
}

pub(crate) fn glob(ctx: &ToolContext, args: GlobArgs) -> ToolOutcome {
    let root = match resolve_root(ctx, args.path.as_deref()) {
        Ok(root) => root,
        Err(outcome) => return outcome,
    };
    let pattern = args.pattern.trim_start_matches("./");
    let matcher = match globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
    {
        Ok(glob) => glob.compile_matcher(),
        Err(err) => {
            return ToolOutcome::error(format!(
                "invalid glob pattern {:?}: {err}; examples: \"**/*.rs\", \"src/*.toml\"",
                args.pattern
            ))
        }
    };
    let mut hits = Vec::new();
    let mut more = false;
    for entry in walker(ctx, &root, None).build() {
        if ctx.cancel.is_cancelled() {
            return ToolOutcome::error("glob was cancelled");
        }
        let Ok(entry) = entry else { continue };
        if entry.depth() == 0 || is_dir(&entry) {
            continue;
        }
        let Ok(relative) = entry.path().strip_prefix(&root) else {
            continue;
        };
        if !matcher.is_match(relative) {
            continue;
        }
        if hits.len() >= MAX_ENTRIES {
            more = true;
            break;
        }
        hits.push(display_path(&ctx.workspace, entry.path()));
    }
    if hits.is_empty() {
        return ToolOutcome::ok(format!(
            "no files match {:?} under {} (files ignored by .gitignore are not searched)",
            args.pattern,
            display_path(&ctx.workspace, &root)
        ));
    }
    let count = hits.len();
    let mut text = hits.join("\n");
    text.push('\n');
    if more {
        text.push_str(&format!(
            "[stopped at {MAX_ENTRIES} files; use a narrower pattern or path]\n"
        ));
    } else {
        text.push_str(&format!(
            "[{count} file{}]\n",
            if count == 1 { "" } else { "s" }
        ));
    }
    ToolOutcome::ok(cap_text(text, ctx.limits.output_cap_bytes))
}

pub(crate) fn grep(ctx: &ToolContext, args: GrepArgs) -> ToolOutcome {
    let root = match resolve_root(ctx, args.path.as_deref()) {
        Ok(root) => root,
        Err(outcome) => return outcome,
    };
    let matcher = match RegexMatcherBuilder::new()
        .case_insensitive(args.case_insensitive)
        .build(&args.pattern)
    {
        Ok(matcher) => matcher,
        Err(err) => {
            return ToolOutcome::error(format!(
                "invalid regular expression {:?}: {err}; the syntax is Rust's regex \
                 (like ripgrep): escape special characters such as ( [ {{ . * + ? with a backslash",
                args.pattern
            ))
        }
    };
    let file_filter = match args.glob.as_deref() {
        None | Some("") => None,
        Some(glob) => match globset::GlobBuilder::new(glob.trim_start_matches("./"))
            .literal_separator(true)
            .build()
        {
            Ok(compiled) => Some((compiled.compile_matcher(), glob.contains('/'))),
            Err(err) => {
                return ToolOutcome::error(format!("invalid glob {glob:?}: {err}; e.g. \"*.rs\""))
            }
        },
    };
    let max_results = args
        .max_results
        .map_or(DEFAULT_MAX_RESULTS, |n| (n as usize).clamp(1, MAX_RESULTS));
    let mut searcher = SearcherBuilder::new()
        .binary_detection(BinaryDetection::quit(0))
        .line_number(true)
        .build();

    let mut hits: Vec<String> = Vec::new();
    let mut files_with_hits = 0usize;
    let mut more = false;
    for entry in walker(ctx, &root, None).build() {
        if ctx.cancel.is_cancelled() {
            return ToolOutcome::error("grep was cancelled");
        }
        let Ok(entry) = entry else { continue };
        // Regular files only: symlinks are not followed, so a link in the
        // workspace cannot make grep read outside it.
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        if let Some((filter, has_slash)) = &file_filter {
            let matched = if *has_slash {
                entry
                    .path()
                    .strip_prefix(&root)
                    .is_ok_and(|rel| filter.is_match(rel))
            } else {
                filter.is_match(Path::new(entry.file_name()))
            };
            if !matched {
                continue;
            }
        }
        if hits.len() >= max_results {
            more = true;
            break;
        }
        let shown = display_path(&ctx.workspace, entry.path());
        let before = hits.len();
        let result = searcher.search_path(
            &matcher,
            entry.path(),
            sinks::Lossy(|line_no, line| {
                if hits.len() >= max_results {
                    more = true;
                    return Ok(false);
                }
                let line = line.trim_end_matches(['\n', '\r']);
                let line = match line.char_indices().nth(MAX_HIT_CHARS) {
                    None => line.to_owned(),
                    Some((cut, _)) => format!("{}... [line cut]", &line[..cut]),
                };
                hits.push(format!("{shown}:{line_no}: {line}"));
                Ok(true)
            }),
        );
        if let Err(err) = result {
            tracing::debug!(path = %entry.path().display(), %err, "grep skipped a file");
        }
        if hits.len() > before {
            files_with_hits += 1;
        }
        if more {
            break;
        }
    }
    if hits.is_empty() {
        return ToolOutcome::ok(format!(
            "no matches for {:?} under {} (binary files and files ignored by .gitignore are not searched)",
            args.pattern,
            display_path(&ctx.workspace, &root)
        ));
    }
    let count = hits.len();
    let mut text = hits.join("\n");
    text.push('\n');
    if more {
        text.push_str(&format!(
            "[stopped at max_results={max_results} matching lines; narrow the pattern, path or glob]\n"
        ));
    } else {
        text.push_str(&format!(
            "[{count} matching line{} in {files_with_hits} file{}]\n",
            if count == 1 { "" } else { "s" },
            if files_with_hits == 1 { "" } else { "s" }
        ));
    }
    ToolOutcome::ok(cap_text(text, ctx.limits.output_cap_bytes))
}
