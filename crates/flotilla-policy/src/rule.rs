//! Rules in the Claude Code dialect: `Tool` or `Tool(specifier)`.
//!
//! `Shell(npm run test:*)` (with `Bash(...)` as an alias), `Read(./.env)`,
//! `Edit(src/**)`, `Write(/etc/**)`, `Fetch(domain:github.com)`,
//! `mcp__server__tool`. Parsing never touches the filesystem; a rule's paths
//! are anchored to a workspace and a home folder when it is compiled.

use std::fmt;

/// The actions rules talk about. `Write` is a kind of `Edit`, and `Grep`,
/// `Glob` and `List` are kinds of `Read`: a rule on the parent covers them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Running a shell command (`shell`).
    Shell,
    /// Reading a file (`read_file`).
    Read,
    /// Searching file contents (`grep`).
    Grep,
    /// Finding files by pattern (`glob`).
    Glob,
    /// Listing a folder (`list_files`).
    List,
    /// Changing a file (`edit_file`).
    Edit,
    /// Creating or replacing a file (`write_file`).
    Write,
    /// Reaching a network host.
    Fetch,
    /// An MCP tool: `mcp__server__tool` (or a whole server, `mcp__server`).
    Mcp(String),
}

impl Action {
    /// The name rules and Cedar use: `Shell`, `Read`, ..., `mcp__server__tool`.
    pub fn name(&self) -> &str {
        match self {
            Action::Shell => "Shell",
            Action::Read => "Read",
            Action::Grep => "Grep",
            Action::Glob => "Glob",
            Action::List => "List",
            Action::Edit => "Edit",
            Action::Write => "Write",
            Action::Fetch => "Fetch",
            Action::Mcp(name) => name,
        }
    }

    /// This action and the ones whose rules cover it, most specific first.
    pub fn with_ancestors(&self) -> Vec<Action> {
        match self {
            Action::Grep | Action::Glob | Action::List => vec![self.clone(), Action::Read],
            Action::Write => vec![Action::Write, Action::Edit],
            Action::Mcp(name) => {
                let mut out = vec![self.clone()];
                // mcp__server__tool is covered by mcp__server.
                if let Some(rest) = name.strip_prefix("mcp__") {
                    if let Some((server, _tool)) = rest.split_once("__") {
                        out.push(Action::Mcp(format!("mcp__{server}")));
                    }
                }
                out
            }
            _ => vec![self.clone()],
        }
    }

    /// Whether the action only reads (what `plan` mode lets run).
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Action::Read | Action::Grep | Action::Glob | Action::List
        )
    }

    /// Whether the action changes files.
    pub fn is_edit(&self) -> bool {
        matches!(self, Action::Edit | Action::Write)
    }

    /// Parses a tool name of the dialect (case as written; `Bash` is `Shell`).
    pub fn parse(name: &str) -> Option<Action> {
        Some(match name {
            "Shell" | "Bash" => Action::Shell,
            "Read" => Action::Read,
            "Grep" => Action::Grep,
            "Glob" => Action::Glob,
            "List" | "LS" => Action::List,
            "Edit" | "MultiEdit" => Action::Edit,
            "Write" => Action::Write,
            "Fetch" | "WebFetch" => Action::Fetch,
            other
                if other.len() > 5
                    && other.starts_with("mcp__")
                    && other[5..]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
            {
                Action::Mcp(other.to_owned())
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule's parentheses say.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Specifier {
    /// `Shell(...)`: a command pattern; `*` matches anything, a trailing
    /// `:*` or ` *` also matches the bare prefix.
    Command(String),
    /// `Read(...)`, `Edit(...)`...: a path glob, as written: anchored at the
    /// workspace unless absolute or `~/`; `*` stays within a folder, `**` crosses folders.
    Path(String),
    /// `Fetch(domain:...)`: a host name, or `*.example.com`.
    Domain(String),
}

/// One rule: a tool and, optionally, what it applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The tool.
    pub action: Action,
    /// What within the tool; `None` means every call of it.
    pub spec: Option<Specifier>,
    /// The rule as written.
    pub text: String,
}

/// A rule that cannot be understood, with a hint to fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}; {hint}")]
pub struct RuleError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

fn err(message: String, hint: &str) -> RuleError {
    RuleError {
        message,
        hint: hint.to_owned(),
    }
}

const TOOLS_HINT: &str = "tools are Shell (alias Bash), Read, Grep, Glob, List, Edit, Write, \
                          Fetch and mcp__SERVER__TOOL; write `Tool` or `Tool(specifier)`";

impl Rule {
    /// Parses `Tool` or `Tool(specifier)`.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(err("the rule is empty".into(), TOOLS_HINT));
        }
        let (name, inner) = match trimmed.find('(') {
            None => (trimmed, None),
            Some(open) => {
                if !trimmed.ends_with(')') {
                    return Err(err(
                        format!("rule {trimmed:?} opens a parenthesis it does not close"),
                        "end the rule with `)`, e.g. `Shell(npm test)`",
                    ));
                }
                (
                    &trimmed[..open],
                    Some(&trimmed[open + 1..trimmed.len() - 1]),
                )
            }
        };
        let action = Action::parse(name.trim()).ok_or_else(|| {
            let lower = name.trim().to_ascii_lowercase();
            let suggestion = [
                "Shell", "Bash", "Read", "Grep", "Glob", "List", "Edit", "Write", "Fetch",
            ]
            .into_iter()
            .find(|t| t.to_ascii_lowercase() == lower);
            match suggestion {
                Some(s) => err(
                    format!("unknown tool {:?} in rule {trimmed:?}", name.trim()),
                    &format!("tool names are case-sensitive: write `{s}`"),
                ),
                None => err(
                    format!("unknown tool {:?} in rule {trimmed:?}", name.trim()),
                    TOOLS_HINT,
                ),
            }
        })?;
        let spec = match inner {
            None => None,
            Some(inner) => {
                let inner = inner.trim();
                if inner.is_empty() {
                    return Err(err(
                        format!("rule {trimmed:?} has empty parentheses"),
                        &format!("write `{}` for every call, or put a pattern inside", action),
                    ));
                }
                if inner == "*" || (action != Action::Shell && inner == "**") {
                    None
                } else {
                    Some(match &action {
                        Action::Shell => Specifier::Command(inner.to_owned()),
                        Action::Fetch => match inner.strip_prefix("domain:") {
                            Some(d) if valid_domain_pattern(d.trim()) => {
                                Specifier::Domain(d.trim().to_ascii_lowercase())
                            }
                            _ => {
                                return Err(err(
                                    format!("Fetch rule {trimmed:?} does not name a domain"),
                                    "write `Fetch(domain:github.com)` or `Fetch(domain:*.github.com)`",
                                ))
                            }
                        },
                        Action::Mcp(_) => {
                            return Err(err(
                                format!("MCP rule {trimmed:?} takes no parentheses"),
                                "write `mcp__server` for a whole server or `mcp__server__tool` for one tool",
                            ))
                        }
                        _ => {
                            if inner.contains('\0') {
                                return Err(err(
                                    format!("rule {trimmed:?} contains a NUL byte"),
                                    "remove it",
                                ));
                            }
                            globset::GlobBuilder::new(inner)
                                .literal_separator(true)
                                .build()
                                .map_err(|e| {
                                    err(
                                        format!("path pattern in {trimmed:?} is not a valid glob: {e}"),
                                        "use `*` within one folder, `**` across folders, e.g. `Edit(src/**)`",
                                    )
                                })?;
                            Specifier::Path(inner.to_owned())
                        }
                    })
                }
            }
        };
        let text = match &spec {
            None => action.name().to_owned(),
            Some(_) => trimmed.to_owned(),
        };
        Ok(Rule { action, spec, text })
    }

    /// Whether the rule names a tool only (in `deny`, that removes the tool
    /// from the model's list).
    pub fn is_bare(&self) -> bool {
        self.spec.is_none()
    }
}

fn valid_domain_pattern(d: &str) -> bool {
    let body = d.strip_prefix("*.").unwrap_or(d);
    !body.is_empty()
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !body.starts_with('.')
        && !body.ends_with('.')
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How a command pattern reads: the text `like` gets, and whether the bare
/// prefix (without arguments) matches too.
pub(crate) fn command_pattern(pattern: &str) -> (String, Option<String>) {
    // `npm run test:*` is Claude Code's prefix form: "starts with npm run test".
    if let Some(prefix) = pattern.strip_suffix(":*") {
        return (format!("{prefix}*"), Some(prefix.trim_end().to_owned()));
    }
    // `git push *` also matches plain `git push`.
    if let Some(prefix) = pattern.strip_suffix(" *") {
        return (pattern.to_owned(), Some(prefix.trim_end().to_owned()));
    }
    (pattern.to_owned(), None)
}

/// The first word of every command a pattern can match, when the pattern
/// fixes it (used to index rules; `None` means "any command").
pub(crate) fn command_first_word(pattern: &str) -> Option<String> {
    let (like, _) = command_pattern(pattern);
    let end = match like.find([' ', '\t']) {
        Some(end) => end,
        None if !like.contains('*') => like.len(),
        None => return None,
    };
    let word = &like[..end];
    if word.is_empty() || word.contains('*') {
        return None;
    }
    Some(word.to_owned())
}

/// A shell rule's pattern, split once: what Cedar's `like` gets and the
/// bare prefix. The engine's index uses it to hand Cedar only the shell
/// policies that can match; Cedar still decides.
pub(crate) struct CommandPattern {
    /// The `like` pattern split at its `*`s, once: the first part is a
    /// prefix, the last a suffix, the middle ones are searched for with
    /// searchers built here, so matching a command allocates nothing.
    first: String,
    mids: Vec<memchr::memmem::Finder<'static>>,
    last: Option<String>,
    bare: Option<String>,
}

impl CommandPattern {
    pub(crate) fn new(pattern: &str) -> CommandPattern {
        let (like, bare) = command_pattern(pattern);
        let mut parts: Vec<&str> = like.split('*').collect();
        let last = (parts.len() > 1).then(|| parts.pop().unwrap_or_default().to_owned());
        let first = if parts.is_empty() {
            String::new()
        } else {
            parts.remove(0).to_owned()
        };
        CommandPattern {
            first,
            mids: parts
                .into_iter()
                .map(|m| memchr::memmem::Finder::new(m.as_bytes()).into_owned())
                .collect(),
            last,
            bare,
        }
    }

    /// Cedar's `like` semantics (`*` matches any run), or the bare prefix.
    pub(crate) fn matches(&self, command: &str) -> bool {
        self.bare.as_deref() == Some(command) || self.wildcard_match(command)
    }

    /// The middle parts must occur in order between the prefix and the
    /// suffix; the leftmost occurrence of each is always the best choice.
    fn wildcard_match(&self, text: &str) -> bool {
        let Some(last) = &self.last else {
            return self.first == text;
        };
        let Some(mut rest) = text.as_bytes().strip_prefix(self.first.as_bytes()) else {
            return false;
        };
        for mid in &self.mids {
            match mid.find(rest) {
                Some(i) => rest = &rest[i + mid.needle().len()..],
                None => return false,
            }
        }
        rest.ends_with(last.as_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_dialect() {
        let r = Rule::parse("Bash(npm run test:*)").unwrap();
        assert_eq!(r.action, Action::Shell);
        assert_eq!(r.spec, Some(Specifier::Command("npm run test:*".into())));
        assert_eq!(Rule::parse("Read").unwrap().spec, None);
        assert_eq!(Rule::parse("Edit(*)").unwrap().spec, None);
        assert_eq!(
            Rule::parse("Fetch(domain:GitHub.com)").unwrap().spec,
            Some(Specifier::Domain("github.com".into()))
        );
        assert_eq!(
            Rule::parse("mcp__github__create_issue").unwrap().action,
            Action::Mcp("mcp__github__create_issue".into())
        );
    }

    #[test]
    fn bad_rules_say_how_to_fix_them() {
        let e = Rule::parse("bash(ls)").unwrap_err();
        assert!(e.hint.contains("`Bash`"), "{e}");
        let e = Rule::parse("Shell(ls").unwrap_err();
        assert!(e.hint.contains(")"), "{e}");
        let e = Rule::parse("Fetch(github.com)").unwrap_err();
        assert!(e.hint.contains("domain:"), "{e}");
        assert!(Rule::parse("Shell()").is_err());
        assert!(Rule::parse("Edit(src/[)").is_err());
        assert!(Rule::parse("Frobnicate").is_err());
    }

    #[test]
    fn command_patterns() {
        let m = |p: &str, c: &str| CommandPattern::new(p).matches(c);
        assert!(m("npm run test:*", "npm run test"));
        assert!(m("npm run test:*", "npm run test:unit"));
        assert!(!m("npm run test:*", "npm install"));
        assert!(m("git push *", "git push"));
        assert!(m("git push *", "git push --force origin main"));
        assert!(!m("git push *", "git pushx"));
        assert!(m("rm -rf /*", "rm -rf /"));
        assert!(m("*--force*", "git push --force"));
        assert!(!m("ls", "ls -la"));
        // Middle parts in order, not overlapping the prefix or the suffix.
        assert!(!m("a*b*b", "ab"));
        assert!(m("a*b*b", "abb"));
        assert!(m("*x*x", "xx"));
        assert!(!m("*x*x", "x"));
        assert!(m("*", ""));
        assert!(m("é*ü", "éaü"));
        assert!(!m("é*ü", "ü"));
        assert_eq!(command_first_word("git push *"), Some("git".into()));
        assert_eq!(command_first_word("npm*"), None);
        assert_eq!(command_first_word("ls"), Some("ls".into()));
        assert_eq!(command_first_word("*x"), None);
    }
}
