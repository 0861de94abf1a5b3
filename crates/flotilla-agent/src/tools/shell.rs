//! The `shell` tool.

use std::time::Duration;

use serde::Deserialize;

use super::exec::{CommandRequest, CommandResult};
use super::path::{display_path, resolve_in_workspace, PathIntent};
use super::{ToolContext, ToolOutcome};

#[derive(Deserialize)]
pub(crate) struct ShellArgs {
    command: String,
    timeout_secs: Option<u64>,
    workdir: Option<String>,
}

pub(crate) async fn run(ctx: &ToolContext, args: ShellArgs) -> ToolOutcome {
    if args.command.trim().is_empty() {
        return ToolOutcome::error("command is empty; give the shell command to run");
    }
    let cwd = match args.workdir.as_deref() {
        None | Some("") => ctx.workspace.clone(),
        Some(dir) => match resolve_in_workspace(&ctx.workspace, dir, PathIntent::Read) {
            Ok(path) if path.is_dir() => path,
            Ok(path) => {
                return ToolOutcome::error(format!(
                    "workdir {:?} is not a directory",
                    display_path(&ctx.workspace, &path)
                ))
            }
            Err(err) => return ToolOutcome::error(format!("invalid workdir: {err}")),
        },
    };
    let max = ctx.limits.max_timeout;
    let timeout = match args.timeout_secs {
        None => ctx.limits.default_timeout.min(max),
        Some(secs) => Duration::from_secs(secs.max(1)).min(max),
    };
    let request = CommandRequest {
        command: args.command,
        cwd,
        timeout,
        output_cap_bytes: ctx.limits.output_cap_bytes,
        env: vec![
            // Never wait for a password prompt nobody can answer.
            ("GIT_TERMINAL_PROMPT".to_owned(), "0".to_owned()),
            ("PAGER".to_owned(), "cat".to_owned()),
            ("GIT_PAGER".to_owned(), "cat".to_owned()),
        ],
        cancel: ctx.cancel.clone(),
    };
    match ctx.executor.run(request).await {
        Ok(result) => {
            let is_error = result.exit_code != Some(0) || result.timed_out || result.cancelled;
            ToolOutcome::Output {
                text: format_result(&result, timeout, ctx.limits.output_cap_bytes),
                is_error,
            }
        }
        Err(err) => ToolOutcome::error(format!("the command could not be started: {err}")),
    }
}

/// Formats a result for the model: status line, then stdout and stderr
/// sharing `cap` bytes.
pub(crate) fn format_result(result: &CommandResult, timeout: Duration, cap: usize) -> String {
    let mut text = String::new();
    if result.timed_out {
        text.push_str(&format!(
            "[timed out after {}s: the command and its process group were killed; \
             pass a larger timeout_secs (at most the configured maximum) or run it in the background]\n",
            timeout.as_secs()
        ));
    }
    if result.cancelled {
        text.push_str("[cancelled: the command and its process group were killed]\n");
    }
    match (result.exit_code, result.signal) {
        (Some(code), _) => text.push_str(&format!("exit code: {code}\n")),
        (None, Some(signal)) => text.push_str(&format!(
            "killed by signal {signal} ({})\n",
            signal_name(signal)
        )),
        (None, None) => text.push_str("exit status unknown\n"),
    }
    let out = &result.output.stdout;
    let err = &result.output.stderr;
    // Share the cap: the smaller stream gets what it needs, up to half.
    let out_len = out.total_bytes.min(cap as u64) as usize;
    let err_len = err.total_bytes.min(cap as u64) as usize;
    let (out_budget, err_budget) = if out_len + err_len <= cap {
        (out_len, err_len)
    } else if out_len <= err_len {
        let o = out_len.min(cap / 2);
        (o, cap - o)
    } else {
        let e = err_len.min(cap / 2);
        (cap - e, e)
    };
    if out.total_bytes == 0 && err.total_bytes == 0 {
        text.push_str("(no output)\n");
    }
    for (label, stream, budget) in [("stdout", out, out_budget), ("stderr", err, err_budget)] {
        if stream.total_bytes == 0 {
            continue;
        }
        text.push_str(&format!("--- {label} ---\n"));
        let body = stream.render(budget);
        text.push_str(&body);
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    for note in &result.notes {
        text.push_str(&format!("[sandbox: {note}]\n"));
    }
    text
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
