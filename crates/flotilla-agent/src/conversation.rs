//! The conversation of a session, derived from its events.
//!
//! The log is the truth; a [`Conversation`] is a cache of what the log says,
//! built by [`Conversation::apply`] from every event in order, at start-up
//! and then as each new event is appended. The same code path serves a fresh
//! session and one resumed after a crash, so both see the same history.

use std::collections::HashSet;

use flotilla_models::{ChatMessage, Role};
use flotilla_protocol::{Event, EventKind, SessionLimits, ToolCall};

/// What the model is told when a tool was interrupted by a daemon restart.
pub fn interrupted_message(reason: &str) -> String {
    format!(
        "error: this tool call was interrupted ({reason}) and was NOT re-run. \
         It may have had partial effects: check the state of the workspace before \
         deciding whether to run it again."
    )
}

/// Where the session stands, as far as the loop needs to know.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    /// Task text.
    pub task: String,
    /// Model spec.
    pub model: String,
    /// Workspace path.
    pub workspace: String,
    /// Endpoint override.
    pub base_url: Option<String>,
    /// Budgets.
    pub limits: SessionLimits,
    /// Created at, ms since the epoch.
    pub created_ms: i64,
    /// Last event's time.
    pub last_ts_ms: i64,
    /// When the first model request was made: the loop's work starts
    /// there (a fleet worker may wait in a queue before).
    pub first_request_ms: Option<i64>,
    /// Last event's seq.
    pub last_seq: u64,
    /// Summary of compacted turns.
    pub summary: Option<String>,
    /// Messages after the system prompt, the task and the summary.
    pub recent: Vec<(u64, ChatMessage)>,
    /// Model turns answered so far.
    pub turns: u32,
    /// Tool calls of the last model reply that have no result yet, in order.
    pub pending_calls: Vec<ToolCall>,
    /// Calls already proposed (so a resumed loop does not propose them twice).
    pub proposed: HashSet<String>,
    /// Calls started and not finished.
    pub started: HashSet<String>,
    /// The final answer, once given.
    pub final_answer: Option<String>,
    /// The last model reply had no tool calls (it is the final answer).
    pub answered_without_tools: Option<String>,
    /// Whether a terminal state was recorded.
    pub ended: bool,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// Last prompt size the model reported.
    pub last_prompt_tokens: u64,
    /// Who started the session.
    pub principal: Option<String>,
    /// The session's command-line policy layer.
    pub permissions: Option<flotilla_protocol::SessionPermissions>,
    /// Approvals asked, by call id.
    pub approvals: std::collections::HashMap<String, ApprovalState>,
    /// Allow rules added with `approve --always session`.
    pub session_allow: Vec<String>,
    /// Messages received while tool results were outstanding: they join
    /// the conversation once every call of the last reply has its result
    /// (a message may not come between a call and its result).
    pub inbox: Vec<ChatMessage>,
    /// A model request was sent and its reply is not in yet: a message
    /// arriving now is shown after that reply, which was made without it.
    pub awaiting_reply: bool,
    /// Running estimate of the tokens of the task, summary and recent
    /// messages (everything but the system prompt), kept so a turn does not
    /// rebuild the whole conversation to learn its size.
    pub estimated_tokens: u64,
}

/// An approval asked for a call, and its answer once given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalState {
    /// Id of the approval.
    pub approval_id: String,
    /// The tool.
    pub tool: String,
    /// The call in one line.
    pub summary: String,
    /// Why it asked.
    pub reason: String,
    /// The rule `--always` would add.
    pub suggested_rule: String,
    /// `None` while waiting; `Ok(())` approved; `Err(reason)` refused.
    pub answer: Option<Result<(), String>>,
}

impl Conversation {
    /// A call has its result: what was known about it by id goes, since
    /// servers that send no ids get `call_0` again in the next turn, and an
    /// old approval must never answer a new call.
    fn forget_call(&mut self, call_id: &str) {
        self.started.remove(call_id);
        self.proposed.remove(call_id);
        self.approvals.remove(call_id);
    }

    /// Builds the conversation from a whole log.
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> Self {
        let mut c = Conversation::default();
        for e in events {
            c.apply(e);
        }
        c
    }

    /// Folds one event in.
    pub fn apply(&mut self, event: &Event) {
        self.last_seq = event.seq;
        self.last_ts_ms = event.ts_ms;
        match &event.event {
            EventKind::SessionCreated {
                task,
                model,
                workspace,
                base_url,
                limits,
                principal,
                permissions,
                ..
            } => {
                self.principal = principal.clone();
                self.permissions = permissions.clone();
                self.task = task.clone();
                self.estimated_tokens +=
                    estimate_tokens(&[ChatMessage::text(Role::User, task.clone())]);
                self.model = model.clone();
                self.workspace = workspace.clone();
                self.base_url = base_url.clone();
                self.limits = *limits;
                self.created_ms = event.ts_ms;
            }
            EventKind::ModelResponded {
                turn,
                text,
                tool_calls,
                usage,
                ..
            } => {
                self.turns = self.turns.max(*turn);
                self.last_prompt_tokens = usage.prompt_tokens;
                self.awaiting_reply = false;
                let message = ChatMessage {
                    role: Role::Assistant,
                    content: text.clone(),
                    tool_calls: tool_calls.clone(),
                    tool_call_id: None,
                };
                self.estimated_tokens += estimate_tokens(std::slice::from_ref(&message));
                self.recent.push((event.seq, message));
                self.pending_calls = tool_calls.clone();
                self.answered_without_tools = tool_calls.is_empty().then(|| text.clone());
                self.deliver(event.seq);
            }
            EventKind::ToolProposed { call } => {
                self.proposed.insert(call.id.clone());
            }
            EventKind::ToolStarted { call_id } => {
                self.started.insert(call_id.clone());
            }
            EventKind::ToolFinished {
                call_id, output, ..
            } => {
                self.forget_call(call_id);
                self.resolve(event.seq, call_id, output.clone());
            }
            EventKind::ToolInterrupted { call_id, reason } => {
                self.forget_call(call_id);
                self.resolve(event.seq, call_id, interrupted_message(reason));
            }
            EventKind::ContextCompacted {
                summary,
                through_seq,
                ..
            } => {
                self.summary = Some(summary.clone());
                self.recent.retain(|(seq, _)| *seq > *through_seq);
                // The last reported prompt size predates the compaction.
                self.last_prompt_tokens = 0;
                let task = ChatMessage::text(Role::User, self.task.clone());
                let summary = ChatMessage::text(Role::User, summary.clone());
                self.estimated_tokens = estimate_tokens(&[task, summary])
                    + self
                        .recent
                        .iter()
                        .map(|(_, m)| estimate_tokens(std::slice::from_ref(m)))
                        .sum::<u64>();
            }
            EventKind::FinalAnswer { text } => self.final_answer = Some(text.clone()),
            EventKind::StateChanged { state, .. } => self.ended = state.is_terminal(),
            EventKind::CancelRequested { .. } => self.cancel_requested = true,
            EventKind::MessageReceived { from, text } => {
                let message =
                    ChatMessage::text(Role::User, format!("Message from {from}:\n{text}"));
                self.estimated_tokens += estimate_tokens(std::slice::from_ref(&message));
                self.inbox.push(message);
                self.deliver(event.seq);
            }
            EventKind::ApprovalRequested {
                approval_id,
                call_id,
                tool,
                summary,
                reason,
                suggested_rule,
            } => {
                self.approvals.insert(
                    call_id.clone(),
                    ApprovalState {
                        approval_id: approval_id.clone(),
                        tool: tool.clone(),
                        summary: summary.clone(),
                        reason: reason.clone(),
                        suggested_rule: suggested_rule.clone(),
                        answer: None,
                    },
                );
            }
            EventKind::ApprovalGiven {
                approval_id,
                always_rule,
                always_layer,
                ..
            } => {
                if let Some(a) = self
                    .approvals
                    .values_mut()
                    .find(|a| &a.approval_id == approval_id)
                {
                    a.answer = Some(Ok(()));
                }
                if let (Some(rule), Some("session")) = (always_rule, always_layer.as_deref()) {
                    self.session_allow.push(rule.clone());
                }
            }
            EventKind::ApprovalRefused {
                approval_id,
                reason,
                ..
            } => {
                if let Some(a) = self
                    .approvals
                    .values_mut()
                    .find(|a| &a.approval_id == approval_id)
                {
                    a.answer = Some(Err(reason.clone()));
                }
            }
            EventKind::ModelRequested { .. } => {
                self.awaiting_reply = true;
                self.first_request_ms.get_or_insert(event.ts_ms);
            }
            EventKind::SessionResumed { .. } => {
                // A request cut short by the restart is asked again.
                self.awaiting_reply = false;
                self.deliver(event.seq);
            }
            EventKind::PolicyDecided { .. }
            | EventKind::SandboxReady { .. }
            | EventKind::SecretsGranted { .. }
            | EventKind::SecretUsed { .. }
            | EventKind::ModelFailed { .. } => {}
        }
    }

    fn resolve(&mut self, seq: u64, call_id: &str, content: String) {
        if let Some(pos) = self.pending_calls.iter().position(|c| c.id == call_id) {
            self.pending_calls.remove(pos);
        }
        let message = ChatMessage::tool_result(call_id, content);
        self.estimated_tokens += estimate_tokens(std::slice::from_ref(&message));
        self.recent.push((seq, message));
        self.deliver(seq);
    }

    /// Moves received messages into the conversation once no call of the
    /// last reply waits for its result.
    fn deliver(&mut self, seq: u64) {
        if !self.awaiting_reply && self.pending_calls.is_empty() && !self.inbox.is_empty() {
            for m in std::mem::take(&mut self.inbox) {
                self.recent.push((seq, m));
            }
            // The reply before may have been a plain answer: the message
            // asks for more, so it is not the end.
            self.answered_without_tools = None;
        }
    }

    /// Messages of the next request, the system prompt included.
    pub fn message_count(&self) -> usize {
        2 + usize::from(self.summary.is_some()) + self.recent.len()
    }

    /// Calls that started and never finished: a crash happened while they ran.
    pub fn unfinished_calls(&self) -> Vec<String> {
        self.pending_calls
            .iter()
            .filter(|c| self.started.contains(&c.id))
            .map(|c| c.id.clone())
            .collect()
    }

    /// The messages of the next model request.
    pub fn messages(&self, system_prompt: &str) -> Vec<ChatMessage> {
        let mut out = Vec::with_capacity(self.recent.len() + 3);
        out.push(ChatMessage::text(Role::System, system_prompt));
        out.push(ChatMessage::text(Role::User, self.task.clone()));
        if let Some(summary) = &self.summary {
            out.push(ChatMessage::text(
                Role::User,
                format!("Summary of the earlier part of this session (older turns were compacted):\n{summary}"),
            ));
        }
        out.extend(self.recent.iter().map(|(_, m)| m.clone()));
        out
    }

    /// The boundary for compaction that keeps the last `keep_turns` model
    /// turns verbatim: the seq just before the first kept assistant message,
    /// or `None` when there is nothing older to compact.
    pub fn compaction_boundary(&self, keep_turns: usize) -> Option<u64> {
        let assistant_seqs: Vec<u64> = self
            .recent
            .iter()
            .filter(|(_, m)| m.role == Role::Assistant)
            .map(|(s, _)| *s)
            .collect();
        if assistant_seqs.len() <= keep_turns {
            return None;
        }
        let first_kept = assistant_seqs[assistant_seqs.len() - keep_turns];
        Some(first_kept - 1)
    }
}

/// Rough token count of messages: 4 bytes a token, plus a little per message.
pub fn estimate_tokens(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| {
            let calls: usize = m
                .tool_calls
                .iter()
                .map(|c| c.name.len() + c.arguments.len() + 8)
                .sum();
            ((m.content.len() + calls) / 4 + 4) as u64
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_protocol::{SessionId, Usage};

    fn ev(seq: u64, event: EventKind) -> Event {
        Event {
            session: SessionId::parse("stest").unwrap(),
            seq,
            ts_ms: 0,
            prev_hash: String::new(),
            hash: String::new(),
            event,
        }
    }

    #[test]
    fn running_estimate_matches_a_full_recount() {
        let call = ToolCall {
            id: "c1".into(),
            name: "shell".into(),
            arguments: "{\"command\":\"ls\"}".into(),
        };
        let events = vec![
            ev(
                1,
                EventKind::SessionCreated {
                    task: "do the thing ".repeat(20),
                    model: "openai:m".into(),
                    workspace: "/w".into(),
                    base_url: None,
                    limits: SessionLimits::default(),
                    principal: None,
                    permissions: None,
                    role: None,
                    fallbacks: Vec::new(),
                    machine: None,
                    fleet: None,
                },
            ),
            ev(
                2,
                EventKind::ModelResponded {
                    turn: 1,
                    text: "let me look".into(),
                    tool_calls: vec![call.clone()],
                    usage: Usage::default(),
                    finish_reason: None,
                    latency_ms: 0,
                    model: None,
                    cost_usd: None,
                },
            ),
            ev(
                3,
                EventKind::ToolFinished {
                    call_id: "c1".into(),
                    output: "x".repeat(999),
                    is_error: false,
                    duration_ms: 0,
                },
            ),
        ];
        let c = Conversation::from_events(&events);
        let full = c.messages("");
        assert_eq!(c.message_count(), full.len());
        let without_system = estimate_tokens(&full[1..]);
        assert_eq!(c.estimated_tokens, without_system);
        assert!(c.pending_calls.is_empty());
    }

    #[test]
    fn a_message_waits_for_the_reply_and_results_it_did_not_shape() {
        let call = ToolCall {
            id: "c1".into(),
            name: "shell".into(),
            arguments: "{}".into(),
        };
        let mut c = Conversation::default();
        let mut seq = 0;
        let mut feed = |c: &mut Conversation, e: EventKind| {
            seq += 1;
            c.apply(&ev(seq, e));
        };
        let msg = |text: &str| EventKind::MessageReceived {
            from: "planner".into(),
            text: text.into(),
        };
        let roles = |c: &Conversation| -> Vec<String> {
            c.recent
                .iter()
                .map(|(_, m)| match m.role {
                    Role::User => format!("user:{}", m.content.lines().last().unwrap_or("")),
                    r => format!("{r:?}"),
                })
                .collect()
        };
        // Nothing outstanding: it joins at once.
        feed(&mut c, msg("first"));
        feed(
            &mut c,
            EventKind::ModelRequested {
                turn: 1,
                messages: 3,
                estimated_tokens: 10,
            },
        );
        // During the request: held until the reply and its results are in.
        feed(&mut c, msg("second"));
        assert_eq!(c.inbox.len(), 1);
        feed(
            &mut c,
            EventKind::ModelResponded {
                turn: 1,
                text: String::new(),
                tool_calls: vec![call.clone()],
                usage: Usage::default(),
                finish_reason: None,
                latency_ms: 0,
                model: None,
                cost_usd: None,
            },
        );
        assert_eq!(c.inbox.len(), 1);
        feed(
            &mut c,
            EventKind::ToolFinished {
                call_id: "c1".into(),
                output: "ok".into(),
                is_error: false,
                duration_ms: 0,
            },
        );
        assert!(c.inbox.is_empty());
        assert_eq!(
            roles(&c),
            ["user:first", "Assistant", "Tool", "user:second"]
        );
    }

    #[test]
    fn an_answered_call_forgets_its_approval() {
        let call = ToolCall {
            id: "call_0".into(),
            name: "shell".into(),
            arguments: "{\"command\":\"ls\"}".into(),
        };
        let mut c = Conversation::default();
        let mut seq = 0;
        let mut feed = |c: &mut Conversation, e: EventKind| {
            seq += 1;
            c.apply(&ev(seq, e));
        };
        feed(&mut c, EventKind::ToolProposed { call: call.clone() });
        feed(
            &mut c,
            EventKind::ApprovalRequested {
                approval_id: "ap-1".into(),
                call_id: "call_0".into(),
                tool: "shell".into(),
                summary: "Shell: ls".into(),
                reason: "ask mode".into(),
                suggested_rule: "Shell(ls)".into(),
            },
        );
        feed(
            &mut c,
            EventKind::ApprovalGiven {
                approval_id: "ap-1".into(),
                by: "alice".into(),
                always_rule: None,
                always_layer: None,
            },
        );
        assert_eq!(c.approvals["call_0"].answer, Some(Ok(())));
        feed(
            &mut c,
            EventKind::ToolFinished {
                call_id: "call_0".into(),
                output: "x".into(),
                is_error: false,
                duration_ms: 0,
            },
        );
        // A server that sends no ids says `call_0` again next turn: the
        // old approval must not answer it.
        assert!(c.approvals.is_empty());
        assert!(!c.proposed.contains("call_0"));
    }
}
