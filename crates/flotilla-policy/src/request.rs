//! From a tool call to what policy checks: the items a call does, with
//! paths resolved the way the write would see them (symlinks followed).
//! This is the one part of the crate that reads the filesystem.

use std::path::{Component, Path, PathBuf};

use crate::engine::{CallCheck, Item};
use crate::gate::resolve;
use crate::rule::Action;
use crate::shell;

/// The action of a flotilla tool (`None` for `finish` and unknown tools).
pub fn tool_action(tool: &str) -> Option<Action> {
    Some(match tool {
        "shell" => Action::Shell,
        "read_file" => Action::Read,
        "grep" => Action::Grep,
        "glob" => Action::Glob,
        "list_files" => Action::List,
        "edit_file" => Action::Edit,
        "write_file" => Action::Write,
        other if other.starts_with("mcp__") => Action::Mcp(other.to_owned()),
        _ => return None,
    })
}

/// Lexically cleaned absolute path (no symlinks followed).
fn lexical(base: &Path, path: &str, home: Option<&Path>) -> PathBuf {
    let raw = match (path.strip_prefix("~/"), home) {
        (Some(rest), Some(h)) => h.join(rest),
        _ => base.join(path),
    };
    let mut out = PathBuf::from("/");
    for c in raw.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    out
}

/// Items for a path: the path as written and as resolved, when they differ
/// (a deny on either form denies; an allow must cover both).
fn path_items(
    action: Action,
    base: &Path,
    path: &str,
    home: Option<&Path>,
    implied: bool,
) -> Vec<Item> {
    let written = lexical(base, path, home);
    let resolved = resolve(base, path, home);
    let mut out = vec![Item {
        action: action.clone(),
        command: String::new(),
        path: written.display().to_string(),
        domain: String::new(),
        implied,
    }];
    if resolved != written {
        out.push(Item {
            action,
            command: String::new(),
            path: resolved.display().to_string(),
            domain: String::new(),
            implied,
        });
    }
    out
}

fn str_arg<'a>(args: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    args.get(key).and_then(|v| v.as_str())
}

/// What the flotilla tool call `tool(args)` does, for policy. `workspace` is
/// absolute and canonical.
pub fn check_tool_call(
    tool: &str,
    args: &serde_json::Value,
    workspace: &Path,
    home: Option<&Path>,
) -> CallCheck {
    let Some(action) = tool_action(tool) else {
        return CallCheck {
            tool: tool.to_owned(),
            summary: tool.to_owned(),
            ..CallCheck::default()
        };
    };
    match action {
        Action::Shell => {
            let command = str_arg(args, "command").unwrap_or("");
            let dir = match str_arg(args, "workdir") {
                Some(w) => lexical(workspace, w, home),
                None => workspace.to_path_buf(),
            };
            let mut check = check_shell(command, &dir, home);
            check.tool = tool.to_owned();
            check
        }
        Action::Read
        | Action::Edit
        | Action::Write
        | Action::List
        | Action::Glob
        | Action::Grep => {
            let path = str_arg(args, "path").unwrap_or(".");
            let items = path_items(action.clone(), workspace, path, home, false);
            CallCheck {
                tool: tool.to_owned(),
                summary: format!("{action}: {path}"),
                items,
                opaque: None,
            }
        }
        Action::Fetch | Action::Mcp(_) => CallCheck {
            tool: tool.to_owned(),
            summary: tool.to_owned(),
            items: vec![Item {
                action,
                command: String::new(),
                path: String::new(),
                domain: str_arg(args, "domain").unwrap_or("").to_ascii_lowercase(),
                implied: false,
            }],
            opaque: None,
        },
    }
}

/// What a shell command line does: every simple command (each must pass),
/// the whole line when it is compound (deny and ask rules see it too), and
/// the files it writes (deny, ask and the exec-later gate see them).
pub fn check_shell(command: &str, dir: &Path, home: Option<&Path>) -> CallCheck {
    let shell_item = |text: &str, implied: bool| Item {
        action: Action::Shell,
        command: text.to_owned(),
        path: String::new(),
        domain: String::new(),
        implied,
    };
    let summary = format!("Shell: {command}");
    let analysis = match shell::analyze(command) {
        Ok(a) => a,
        Err(e) => {
            return CallCheck {
                tool: "shell".into(),
                items: vec![shell_item(command.trim(), false)],
                opaque: Some(e.to_string()),
                summary,
            }
        }
    };
    let mut items: Vec<Item> = Vec::new();
    for c in &analysis.commands {
        if !items.iter().any(|i| i.command == c.text && !i.implied) {
            items.push(shell_item(&c.text, false));
        }
        // `/usr/bin/rm -rf x` is `rm -rf x` to deny and ask rules.
        if let Some((first, rest)) = c.words.split_first() {
            if let Some((_, base)) = first.rsplit_once('/') {
                if !base.is_empty() {
                    let mut text = base.to_owned();
                    for w in rest {
                        text.push(' ');
                        text.push_str(w);
                    }
                    items.push(shell_item(&text, true));
                }
            }
        }
    }
    let whole = command.trim();
    if !items.iter().any(|i| i.command == whole) {
        items.push(shell_item(whole, true));
    }
    for w in &analysis.writes {
        items.extend(path_items(Action::Write, dir, w, home, true));
    }
    CallCheck {
        tool: "shell".into(),
        items,
        opaque: analysis
            .opaque
            .then(|| "part of it is only known when it runs".to_owned()),
        summary,
    }
}

/// What `flotilla policy check --tool TOOL --input INPUT` asks about:
/// a dialect tool name (`Shell`, `Read`, `Edit`, `Write`, `Fetch`,
/// `mcp__...`) with a command, path or domain.
pub fn check_dialect(
    tool: &str,
    input: &str,
    workspace: &Path,
    home: Option<&Path>,
) -> Result<CallCheck, String> {
    let action = Action::parse(tool).ok_or_else(|| {
        format!("unknown tool {tool:?}; tools are Shell (alias Bash), Read, Grep, Glob, List, Edit, Write, Fetch, mcp__SERVER__TOOL")
    })?;
    Ok(match &action {
        Action::Shell => check_shell(input, workspace, home),
        Action::Fetch | Action::Mcp(_) => CallCheck {
            tool: tool.to_owned(),
            summary: format!("{action}: {input}"),
            items: vec![Item {
                action: action.clone(),
                command: String::new(),
                path: String::new(),
                domain: input.trim().to_ascii_lowercase(),
                implied: false,
            }],
            opaque: None,
        },
        _ => CallCheck {
            tool: tool.to_owned(),
            summary: format!("{action}: {input}"),
            items: path_items(action.clone(), workspace, input, home, false),
            opaque: None,
        },
    })
}
