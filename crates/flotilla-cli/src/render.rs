//! How events and sessions look in a terminal.

use flotilla_protocol::{Event, EventKind, SessionId, SessionInfo};

fn clip(s: &str, max: usize) -> String {
    let one_line = s.replace('\n', "⏎ ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut out: String = one_line.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// `HH:MM:SS` (UTC) of a millisecond timestamp.
pub fn clock(ts_ms: i64) -> String {
    let secs = ts_ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A short age such as `5s`, `3m`, `2h`, `4d`.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    let s = ((now_ms - then_ms) / 1000).max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Token counts like `12.3k`.
pub fn tokens(n: u64) -> String {
    match n {
        0..=999 => n.to_string(),
        1000..=999_999 => format!("{:.1}k", n as f64 / 1000.0),
        _ => format!("{:.1}M", n as f64 / 1_000_000.0),
    }
}

/// One line (sometimes a few) for an event.
pub fn event_line(e: &Event) -> String {
    let head = format!("#{:<4} {} ", e.seq, clock(e.ts_ms));
    let body = match &e.event {
        EventKind::SessionCreated {
            task,
            model,
            workspace,
            ..
        } => format!("created   {model} in {workspace}: {}", clip(task, 200)),
        EventKind::StateChanged { state, reason } => match reason {
            Some(r) => format!("state     {state}: {}", clip(r, 300)),
            None => format!("state     {state}"),
        },
        EventKind::SessionResumed { interrupted_tools } => {
            format!("resumed   after a daemon restart ({interrupted_tools} tool(s) interrupted)")
        }
        EventKind::ModelRequested {
            turn,
            messages,
            estimated_tokens,
        } => format!(
            "model     turn {turn}: {messages} messages, ~{} tokens",
            tokens(*estimated_tokens)
        ),
        EventKind::ModelFailed {
            turn,
            attempt,
            error,
            retry_in_ms,
        } => match retry_in_ms {
            Some(ms) => format!(
                "model     turn {turn} attempt {attempt} failed, retry in {:.1}s: {}",
                *ms as f64 / 1000.0,
                clip(error, 200)
            ),
            None => format!(
                "model     turn {turn} attempt {attempt} failed: {}",
                clip(error, 300)
            ),
        },
        EventKind::ModelResponded {
            turn,
            text,
            tool_calls,
            usage,
            latency_ms,
            model,
            cost_usd,
            ..
        } => {
            let mut s = format!(
                "model     turn {turn} replied in {latency_ms}ms ({} in, {} out{}{})",
                tokens(usage.prompt_tokens),
                tokens(usage.completion_tokens),
                cost_usd.map(|c| format!(", {}", cost(c))).unwrap_or_default(),
                model
                    .as_deref()
                    .map(|m| format!(", by fallback {m}"))
                    .unwrap_or_default()
            );
            if !text.trim().is_empty() {
                s.push_str(&format!(": {}", clip(text, 200)));
            }
            if !tool_calls.is_empty() {
                let names: Vec<&str> = tool_calls.iter().map(|c| c.name.as_str()).collect();
                s.push_str(&format!(" → {}", names.join(", ")));
            }
            s
        }
        EventKind::ToolProposed { call } => {
            format!("tool      {} {}", call.name, clip(&call.arguments, 200))
        }
        EventKind::ToolStarted { call_id } => format!("tool      started {call_id}"),
        EventKind::ToolFinished {
            output,
            is_error,
            duration_ms,
            ..
        } => format!(
            "tool      {} in {duration_ms}ms: {}",
            if *is_error { "error" } else { "ok" },
            clip(output, 240)
        ),
        EventKind::ToolInterrupted { call_id, reason } => {
            format!("tool      interrupted {call_id}: {reason}")
        }
        EventKind::ContextCompacted {
            through_seq,
            tokens_before,
            ..
        } => format!(
            "context   compacted events up to #{through_seq} (was ~{} tokens)",
            tokens(*tokens_before)
        ),
        EventKind::PolicyDecided {
            call_id,
            decision,
            reason,
            rule,
            layer,
        } => {
            let by = match (rule, layer) {
                (Some(r), Some(l)) => format!(" [{l}: {r}]"),
                (None, Some(l)) => format!(" [{l}]"),
                (Some(r), None) => format!(" [{r}]"),
                (None, None) => String::new(),
            };
            format!("policy    {call_id} {}: {}{by}", decision.as_str(), clip(reason, 300))
        }
        EventKind::ApprovalRequested {
            approval_id,
            summary,
            reason,
            ..
        } => format!(
            "approval  {approval_id} WAITING {}: {} (flotilla approve {approval_id} / flotilla deny {approval_id} --reason ...)",
            clip(summary, 200),
            clip(reason, 200)
        ),
        EventKind::ApprovalGiven {
            approval_id,
            by,
            always_rule,
            always_layer,
        } => match (always_rule, always_layer) {
            (Some(r), Some(l)) => {
                format!("approval  {approval_id} approved by {by}; always {r} ({l})")
            }
            _ => format!("approval  {approval_id} approved by {by}"),
        },
        EventKind::ApprovalRefused {
            approval_id,
            by,
            reason,
        } => format!(
            "approval  {approval_id} denied by {by}: {}",
            clip(reason, 300)
        ),
        EventKind::SandboxReady {
            confined,
            summary,
            degraded,
        } => {
            let what = if *confined {
                "confined"
            } else {
                "NOT fully confined"
            };
            let mut line = format!("sandbox   {what}: {summary}");
            if !degraded.is_empty() && !summary.contains("DEGRADED") {
                line.push_str(&format!(" DEGRADED: {}", degraded.join("; ")));
            }
            line
        }
        EventKind::CancelRequested { by } => format!("cancel    requested by {by}"),
        EventKind::MessageReceived { from, text } => {
            format!("message   from {from}: {}", clip(text, 200))
        }
        EventKind::FinalAnswer { text } => format!("answer    {text}"),
        EventKind::SecretsGranted { grants } => {
            let list: Vec<String> = grants
                .iter()
                .map(|g| {
                    let ttl = match g.expires_at_ms {
                        Some(t) => format!(" until {}", crate::render::clock(t as i64)),
                        None => String::new(),
                    };
                    format!("{} (${}) for {}{ttl}", g.secret, g.env, g.hosts.join(","))
                })
                .collect();
            format!("secrets   granted {}", list.join("; "))
        }
        EventKind::SecretUsed { record } => format!(
            "secret    {} {} {} {}{}: {}",
            record.secret,
            if record.allowed { "sent" } else { "BLOCKED" },
            record.method,
            record.host,
            record.path,
            clip(&record.reason, 200)
        ),
    };
    head + &body
}

/// Money spent, or `-` when no price applied.
fn cost(usd: f64) -> String {
    match usd {
        c if c <= 0.0 => "-".into(),
        c if c < 0.01 => format!("${c:.4}"),
        c => format!("${c:.2}"),
    }
}

/// The `ps` table.
pub fn session_table(sessions: &[SessionInfo], now_ms: i64) -> String {
    let mut rows = vec![[
        "ID".to_string(),
        "STATE".into(),
        "MODEL".into(),
        "AGE".into(),
        "TURNS".into(),
        "TOKENS".into(),
        "COST".into(),
        "WORKSPACE".into(),
    ]];
    for s in sessions {
        rows.push(session_row(s, s.id.to_string(), now_ms));
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One row of `ps`: the session named `who`, then state, model (and its
/// machine, when placed), age,
/// turns, tokens, cost, workspace.
fn session_row(s: &SessionInfo, who: String, now_ms: i64) -> [String; 8] {
    [
        who,
        s.state.to_string(),
        // Where it runs: a placed model names its machine.
        match &s.machine {
            Some(m) => format!("{}@{m}", s.model),
            None => s.model.clone(),
        },
        age(now_ms, s.created_ms),
        s.turns.to_string(),
        tokens(s.prompt_tokens + s.completion_tokens),
        cost(s.cost_usd),
        s.workspace.clone(),
    ]
}

/// Sessions with each fleet as a tree: a planner, then its workers
/// indented below their parent (name and session), other sessions as
/// they are.
pub fn session_tree(sessions: &[SessionInfo], now_ms: i64) -> String {
    use std::collections::HashMap;
    let mut children: HashMap<&SessionId, Vec<&SessionInfo>> = HashMap::new();
    for s in sessions {
        if let Some(p) = &s.parent {
            children.entry(p).or_default().push(s);
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.created_ms, s.id.to_string()));
    }
    let mut rows: Vec<[String; 8]> = Vec::new();
    fn walk<'a>(
        s: &'a SessionInfo,
        depth: usize,
        children: &HashMap<&SessionId, Vec<&'a SessionInfo>>,
        rows: &mut Vec<[String; 8]>,
        now_ms: i64,
    ) {
        let who = match &s.name {
            Some(n) => format!("{}{n} {}", "  ".repeat(depth), s.id),
            None => format!("{}{}", "  ".repeat(depth), s.id),
        };
        rows.push(session_row(s, who, now_ms));
        if depth < 64 {
            for c in children.get(&s.id).into_iter().flatten() {
                walk(c, depth + 1, children, rows, now_ms);
            }
        }
    }
    // Top level: sessions with no parent, or whose parent is not listed.
    let listed: std::collections::HashSet<&SessionId> = sessions.iter().map(|s| &s.id).collect();
    for s in sessions {
        if s.parent.as_ref().is_none_or(|p| !listed.contains(p)) {
            walk(s, 0, &children, &mut rows, now_ms);
        }
    }
    table(
        [
            "AGENT",
            "STATE",
            "MODEL",
            "AGE",
            "TURNS",
            "TOKENS",
            "COST",
            "WORKSPACE",
        ],
        &rows,
    )
}

/// A plain table: left-aligned columns two spaces apart, the last column
/// unpadded, trailing spaces trimmed.
pub fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = head.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; N]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(head);
    for r in rows {
        line(r.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(clock(3_723_000), "01:02:03");
        assert_eq!(age(100_000, 40_000), "1m");
        assert_eq!(tokens(1234), "1.2k");
        assert_eq!(clip("a\nb", 10), "a⏎ b");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
