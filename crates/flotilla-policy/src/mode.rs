//! Permission modes, from the strictest to the widest.

use std::fmt;

/// How much runs without asking.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Read-only tools only.
    Plan,
    /// Reads run; edits and commands ask unless a rule allows them.
    #[default]
    Ask,
    /// Edits inside the workspace run too; commands ask unless allowed.
    AcceptEdits,
    /// Everything runs that no rule denies or asks (the sandbox still holds).
    Auto,
    /// Everything runs that no deny rule, hard-deny or tier stops, without
    /// asking (not even the exec-later gate); only where the admin permits it.
    Bypass,
}

/// Every mode, strictest first.
pub const ALL_MODES: [Mode; 5] = [
    Mode::Plan,
    Mode::Ask,
    Mode::AcceptEdits,
    Mode::Auto,
    Mode::Bypass,
];

impl Mode {
    /// `plan`, `ask`, `accept-edits`, `auto` or `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plan => "plan",
            Mode::Ask => "ask",
            Mode::AcceptEdits => "accept-edits",
            Mode::Auto => "auto",
            Mode::Bypass => "bypass",
        }
    }

    /// Parses a mode name (Claude Code's `acceptEdits`, `default` and
    /// `bypassPermissions` are accepted too).
    pub fn parse(s: &str) -> Result<Mode, String> {
        Ok(match s.trim() {
            "plan" => Mode::Plan,
            "ask" | "default" => Mode::Ask,
            "accept-edits" | "acceptEdits" | "accept_edits" => Mode::AcceptEdits,
            "auto" => Mode::Auto,
            "bypass" | "bypassPermissions" => Mode::Bypass,
            other => {
                return Err(format!(
                    "unknown permission mode {other:?}; modes are plan, ask, accept-edits, auto, bypass"
                ))
            }
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
