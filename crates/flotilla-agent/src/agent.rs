//! The agent loop: ask the model, run the tools it proposes, repeat until it
//! finishes, with every step appended to the session's log first.
//!
//! Commit points: a `ToolStarted` is durable before its tool runs, and
//! everything buffered is durable before each model request and when the
//! session ends. Events between those points are batched into one append,
//! which is what keeps a turn at two commits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_models::{
    ChatMessage, ChatRequest, ChatResponse, ModelClient, PriceTable, RetryPolicy, Role,
    SuspendAwareClock,
};
use flotilla_protocol::{Event, EventKind, PolicyVerdict, SessionId, SessionState, ToolCall};
use flotilla_store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::conversation::{estimate_tokens, ApprovalState, Conversation};
use crate::policy::{new_approval_id, ApprovalAnswer, ApprovalAsk, CallPolicy};
use crate::tools::{self, CommandExecutor, ToolContext, ToolLimits, ToolOutcome};

/// Fraction of the context window at which older turns are compacted.
const COMPACT_AT: f64 = 0.75;
/// Model turns kept verbatim by compaction.
const KEEP_TURNS: usize = 2;
/// A failure during which the machine slept this long is not counted against the retry budget.
const SLEEP_FORGIVENESS: Duration = Duration::from_secs(2);

/// Settings of one agent loop.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// The model name the provider knows (without `provider:`).
    pub model_name: String,
    /// Retry policy for model requests.
    pub retry: RetryPolicy,
    /// Limits of the built-in tools.
    pub tool_limits: ToolLimits,
    /// System prompt; [`default_system_prompt`] when empty.
    pub system_prompt: Option<String>,
    /// Cap on generated tokens per reply.
    pub max_tokens: Option<u32>,
    /// Prices by model spec: each answer's cost goes in its event.
    pub prices: Arc<PriceTable>,
}

/// How a loop ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentExit {
    /// The agent gave its final answer.
    Completed(String),
    /// It stopped on an error or a budget.
    Failed(String),
    /// Somebody cancelled it.
    Cancelled,
}

/// Why the loop itself could not go on (the log could not be written).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The system prompt used unless one is configured.
pub fn default_system_prompt(workspace: &str) -> String {
    format!(
        "You are a coding agent working in the workspace {workspace}. Use the tools to \
         inspect and change files and to run commands there; paths are relative to the \
         workspace. Work step by step, check your work, and when the task is done call \
         `finish` with a short final answer for the user."
    )
}

/// Everything one loop needs.
pub struct AgentRun {
    /// The log.
    pub store: Store,
    /// The session.
    pub session: SessionId,
    /// The model.
    pub client: Arc<dyn ModelClient>,
    /// Where commands run.
    pub executor: Arc<dyn CommandExecutor>,
    /// Settings.
    pub settings: AgentSettings,
    /// Fires on cancel.
    pub cancel: CancellationToken,
    /// The daemon restarted: mark tools that started and never finished as
    /// interrupted, and record the resumption, before going on.
    pub resume: bool,
    /// Governance of tool calls; `None` runs every call (tests, benchmarks).
    pub policy: Option<Arc<dyn CallPolicy>>,
    /// Applied to every event before it is appended (the vault's redaction
    /// of granted secret values); `None` stores events as they are.
    pub redact: Option<Arc<dyn EventFilter>>,
    /// Tools the host offers beside the built-in ones (a planner's fleet
    /// tools); `None` offers only the built-in ones.
    pub host_tools: Option<Arc<dyn HostTools>>,
}

/// Tools the host adds to a session beside the built-in ones: the fleet's
/// `spawn_agent`, `wait_agents`... They are proposed, started and finished
/// in the log like any other call (a crash while one runs is an
/// interruption the model is told about, never a silent re-run). Policy
/// rules see them by name: a bare `deny` removes one from the model's list.
pub trait HostTools: Send + Sync {
    /// What the model is offered; the names must not be built-in ones.
    fn specs(&self) -> Vec<flotilla_models::ToolSpec>;
    /// Runs `name` (one of `specs`) with the raw JSON `arguments`. Never
    /// fails: a problem is an error output for the model. `stop` fires when
    /// the session is cancelled or runs out of time.
    fn call(
        &self,
        name: &str,
        arguments: &str,
        stop: CancellationToken,
    ) -> futures::future::BoxFuture<'static, ToolOutcome>;
}

/// Rewrites events before they are stored: the one funnel through which
/// tool output, model replies and everything else reach the log (and from
/// the log, the model and the API).
pub trait EventFilter: Send + Sync {
    /// Rewrites `event` in place.
    fn filter(&self, event: &mut EventKind);
}

/// Reads a whole session log.
pub async fn load_all(store: &Store, session: &SessionId) -> Result<Vec<Event>, StoreError> {
    let mut all = Vec::new();
    loop {
        let after = all.last().map(|e: &Event| e.seq).unwrap_or(0);
        let page = store.events(session, after, 10_000).await?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

struct Loop {
    run: AgentRun,
    conv: Conversation,
    buffer: Vec<EventKind>,
    system_prompt: String,
    tool_ctx: ToolContext,
    /// Fires on cancel or when the wall-time budget runs out.
    stop: CancellationToken,
    /// The tools offered to the model (those policy does not remove).
    offered: Arc<[flotilla_models::ToolSpec]>,
    /// Names of the host's tools among them.
    host_names: Vec<String>,
}

impl Loop {
    fn push(&mut self, event: EventKind) {
        self.buffer.push(event);
    }

    async fn flush(&mut self) -> Result<(), AgentError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.buffer);
        if let Some(redact) = &self.run.redact {
            for event in &mut events {
                redact.filter(event);
            }
        }
        let appended = self.run.store.append(&self.run.session, events).await?;
        // Events others appended since the loop last looked (a message, an
        // approval's answer, a cancel request) are folded in first, in log
        // order: the live conversation is the one a replay of the log builds.
        if let Some(first) = appended.first() {
            let mut after = self.conv.last_seq;
            while after + 1 < first.seq {
                let gap = self
                    .run
                    .store
                    .events(&self.run.session, after, 1000)
                    .await?;
                let before: Vec<&Event> = gap.iter().filter(|e| e.seq < first.seq).collect();
                if before.is_empty() {
                    break;
                }
                for e in before {
                    self.conv.apply(e);
                    after = e.seq;
                }
            }
        }
        for e in &appended {
            self.conv.apply(e);
        }
        Ok(())
    }

    async fn end(&mut self, exit: AgentExit) -> Result<AgentExit, AgentError> {
        let (state, reason) = match &exit {
            AgentExit::Completed(answer) => {
                self.push(EventKind::FinalAnswer {
                    text: answer.clone(),
                });
                (SessionState::Completed, None)
            }
            AgentExit::Failed(why) => (SessionState::Failed, Some(why.clone())),
            AgentExit::Cancelled => (SessionState::Cancelled, Some("cancelled".to_string())),
        };
        self.push(EventKind::StateChanged { state, reason });
        self.flush().await?;
        Ok(exit)
    }
}

/// Runs the loop until the session ends. Resumes where the log stops.
pub async fn run_agent(run: AgentRun) -> Result<AgentExit, AgentError> {
    let events = load_all(&run.store, &run.session).await?;
    let conv = Conversation::from_events(&events);
    if conv.ended {
        return Ok(match conv.final_answer {
            Some(a) => AgentExit::Completed(a),
            None => AgentExit::Failed("the session had already ended".into()),
        });
    }
    let workspace = PathBuf::from(&conv.workspace);
    let system_prompt = run
        .settings
        .system_prompt
        .clone()
        .unwrap_or_else(|| default_system_prompt(&conv.workspace));
    // The wall-time budget counts time the machine was awake: tokio's clock is
    // CLOCK_MONOTONIC, which stops during suspend. Earlier runs of this
    // session (before a daemon restart) are counted from the log, from its
    // first model request (time queued for a fleet's slot is not work).
    let began = conv.first_request_ms.unwrap_or(conv.last_ts_ms);
    let used_before = Duration::from_millis((conv.last_ts_ms - began).max(0) as u64);
    let budget = Duration::from_secs(conv.limits.wall_time_secs).saturating_sub(used_before);
    let stop = run.cancel.child_token();
    let tool_ctx = ToolContext {
        workspace: workspace.canonicalize().unwrap_or(workspace),
        executor: run.executor.clone(),
        limits: run.settings.tool_limits.clone(),
        cancel: stop.clone(),
        hidden: run.policy.clone().map(|p| {
            Arc::new(move |path: &std::path::Path| p.read_denied(path)) as tools::HiddenPaths
        }),
    };
    let host_specs = run
        .host_tools
        .as_ref()
        .map(|h| h.specs())
        .unwrap_or_default();
    let host_names: Vec<String> = host_specs.iter().map(|s| s.name.clone()).collect();
    let offered = offered_tools(run.policy.as_deref(), host_specs);
    if let Some(policy) = &run.policy {
        if !conv.session_allow.is_empty() {
            policy.session_rules_changed(&conv.session_allow);
        }
    }
    let mut lp = Loop {
        run,
        conv,
        buffer: Vec::new(),
        system_prompt,
        tool_ctx,
        stop: stop.clone(),
        offered,
        host_names,
    };
    if lp.run.resume {
        let unfinished = lp.conv.unfinished_calls();
        for id in &unfinished {
            lp.push(EventKind::ToolInterrupted {
                call_id: id.clone(),
                reason: "the daemon stopped while the tool was running".into(),
            });
        }
        lp.push(EventKind::SessionResumed {
            interrupted_tools: unfinished.len() as u32,
        });
        lp.flush().await?;
    }
    if lp.conv.cancel_requested {
        return lp.end(AgentExit::Cancelled).await;
    }
    let deadline = tokio::time::Instant::now() + budget;
    let timer_stop = stop.clone();
    let timer = tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => timer_stop.cancel(),
            _ = timer_stop.cancelled() => {}
        }
    });
    let result = lp.turns().await;
    timer.abort();
    let exit = match result {
        Ok(exit) => exit,
        Err(e) => return Err(e),
    };
    let exit = match exit {
        // A stop that was not a cancel is the wall-time budget.
        AgentExit::Cancelled if !lp.run.cancel.is_cancelled() => AgentExit::Failed(format!(
            "wall-time budget of {}s used up",
            lp.conv.limits.wall_time_secs
        )),
        other => other,
    };
    lp.end(exit).await
}

impl Loop {
    async fn turns(&mut self) -> Result<AgentExit, AgentError> {
        loop {
            if self.stop.is_cancelled() {
                return Ok(AgentExit::Cancelled);
            }
            // Finish what the last reply asked for before asking again.
            if let Some(text) = self.conv.answered_without_tools.clone() {
                return Ok(AgentExit::Completed(text));
            }
            // (With results still buffered, the conversation has not seen
            // them yet: those calls are done, not pending.)
            if self.buffer.is_empty() && !self.conv.pending_calls.is_empty() {
                let calls = self.conv.pending_calls.clone();
                if let Some(answer) = self.run_calls(calls).await? {
                    return Ok(AgentExit::Completed(answer));
                }
                continue;
            }
            if self.turns_so_far() >= self.conv.limits.max_turns {
                return Ok(AgentExit::Failed(format!(
                    "max turns ({}) reached without a final answer",
                    self.conv.limits.max_turns
                )));
            }
            self.maybe_compact().await?;
            let turn = self.turns_so_far() + 1;
            let (messages, estimated_tokens) = self.next_request_size();
            self.push(EventKind::ModelRequested {
                turn,
                messages,
                estimated_tokens,
            });
            // One commit for the last tool results and this request.
            self.flush().await?;
            let messages = self.conv.messages(&self.system_prompt);
            let request = ChatRequest {
                model: self.run.settings.model_name.clone(),
                messages,
                tools: self.offered.clone(),
                max_tokens: self.run.settings.max_tokens,
            };
            let (response, latency) = match self.call_model(turn, &request).await? {
                Ok(r) => r,
                Err(exit) => return Ok(exit),
            };
            // Who answered (a fallback names itself; else the session's
            // model) and what it cost.
            let answered = response.model;
            let cost_usd = self.run.settings.prices.cost(
                answered.as_deref().unwrap_or(&self.conv.model),
                &response.usage,
            );
            self.push(EventKind::ModelResponded {
                turn,
                text: response.text,
                tool_calls: response.tool_calls.clone(),
                usage: response.usage,
                finish_reason: response.finish_reason,
                latency_ms: latency.as_millis() as u64,
                model: answered,
                cost_usd,
            });
            if response.tool_calls.is_empty() {
                self.flush().await?;
                continue;
            }
            // The reply, the proposals and the first ToolStarted share one commit.
            if let Some(answer) = self.run_calls(response.tool_calls).await? {
                return Ok(AgentExit::Completed(answer));
            }
        }
    }

    /// One model request with retries, and the latency of the attempt that
    /// answered. `Ok(Err(exit))` ends the session.
    async fn call_model(
        &mut self,
        turn: u32,
        request: &ChatRequest,
    ) -> Result<Result<(ChatResponse, Duration), AgentExit>, AgentError> {
        let policy = self.run.settings.retry;
        let mut attempt = 0u32;
        let mut counted = 0u32;
        loop {
            attempt += 1;
            let clock = SuspendAwareClock::now();
            let started = Instant::now();
            let result = tokio::select! {
                r = self.run.client.chat(request) => r,
                _ = self.stop.cancelled() => return Ok(Err(AgentExit::Cancelled)),
            };
            let err = match result {
                Ok(r) => return Ok(Ok((r, started.elapsed()))),
                Err(e) => e,
            };
            let slept = clock.suspended_since() > SLEEP_FORGIVENESS;
            if !slept {
                counted += 1;
            }
            let retry = err.is_retryable() && (slept || policy.should_retry(counted, &err));
            let delay = if !retry {
                None
            } else if slept {
                // Woken from sleep: every session's request failed at once.
                // Retry soon, spread out, and do not count it as a failure.
                Some(Duration::from_millis(rand_jitter_ms(2_000)))
            } else {
                Some(policy.delay_for(counted, err.retry_after()))
            };
            self.push(EventKind::ModelFailed {
                turn,
                attempt,
                error: err.to_string(),
                retry_in_ms: delay.map(|d| d.as_millis() as u64),
            });
            self.flush().await?;
            let Some(delay) = delay else {
                return Ok(Err(AgentExit::Failed(format!(
                    "model request failed after {attempt} attempt(s): {err}"
                ))));
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return Ok(Err(AgentExit::Cancelled)),
            }
        }
    }

    /// Runs the calls of the last reply in order (those not yet answered).
    /// Returns the final answer when one of them is `finish`.
    async fn run_calls(&mut self, calls: Vec<ToolCall>) -> Result<Option<String>, AgentError> {
        for call in calls {
            if self.stop.is_cancelled() {
                // Unrun calls get an answer so the conversation stays well formed.
                self.push(EventKind::ToolFinished {
                    call_id: call.id.clone(),
                    output: "error: not run, the session was stopped".into(),
                    is_error: true,
                    duration_ms: 0,
                });
                continue;
            }
            if !self.conv.proposed.contains(&call.id) {
                self.push(EventKind::ToolProposed { call: call.clone() });
            }
            if let Some(answer) = self.run_one(&call).await? {
                return Ok(Some(answer));
            }
        }
        // The results commit with the next model request.
        Ok(None)
    }

    async fn run_one(&mut self, call: &ToolCall) -> Result<Option<String>, AgentError> {
        let refuse = |output: String| EventKind::ToolFinished {
            call_id: call.id.clone(),
            output,
            is_error: true,
            duration_ms: 0,
        };
        let host = self
            .run
            .host_tools
            .clone()
            .filter(|_| self.host_names.contains(&call.name));
        if !tools::is_builtin(&call.name) && host.is_none() {
            let known: Vec<String> = self.offered.iter().map(|s| s.name.clone()).collect();
            self.push(refuse(format!(
                "error: unknown tool {:?}; the tools are: {}",
                call.name,
                known.join(", ")
            )));
            return Ok(None);
        }
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&call.arguments) {
            self.push(refuse(format!(
                "error: the arguments of {} are not valid JSON ({e}); send a JSON object",
                call.name
            )));
            return Ok(None);
        }
        if let Some(policy) = self.run.policy.clone() {
            // A host tool is coordination, not an action on the machine
            // (what a worker does goes through the worker's own, narrower
            // policy): rules decide only whether it is offered.
            if host.is_some() {
                if !policy.offers_tool(&call.name) {
                    self.push(refuse(format!(
                        "error: {} is denied by a rule and not offered",
                        call.name
                    )));
                    return Ok(None);
                }
            } else if call.name != "finish" && !self.permitted(&policy, call).await? {
                return Ok(None);
            }
        }
        self.push(EventKind::ToolStarted {
            call_id: call.id.clone(),
        });
        // Durable before the tool runs: a crash from here on is reported as
        // an interruption, never silently re-run.
        self.flush().await?;
        let started = Instant::now();
        let outcome = match host {
            // Raced against the stop: a host tool that does not return (a
            // wait, a stuck git) never holds up a cancel.
            Some(h) => {
                let stop = self.stop.clone();
                tokio::select! {
                    outcome = h.call(&call.name, &call.arguments, stop.clone()) => outcome,
                    _ = stop.cancelled() => ToolOutcome::Output {
                        text: format!("error: {} was stopped: the session is stopping", call.name),
                        is_error: true,
                    },
                }
            }
            None => tools::run_tool(&self.tool_ctx, &call.name, &call.arguments).await,
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match outcome {
            ToolOutcome::Finish { answer } => {
                self.push(EventKind::ToolFinished {
                    call_id: call.id.clone(),
                    output: "finished".into(),
                    is_error: false,
                    duration_ms,
                });
                Ok(Some(answer))
            }
            ToolOutcome::Output { text, is_error } => {
                self.push(EventKind::ToolFinished {
                    call_id: call.id.clone(),
                    output: text,
                    is_error,
                    duration_ms,
                });
                Ok(None)
            }
        }
    }

    /// Puts a call through policy: records the decision, and on ask waits
    /// for a person. Returns whether the call may run; when it may not, its
    /// result (the reason) is already pushed.
    async fn permitted(
        &mut self,
        policy: &Arc<dyn CallPolicy>,
        call: &ToolCall,
    ) -> Result<bool, AgentError> {
        let refuse = |output: String| EventKind::ToolFinished {
            call_id: call.id.clone(),
            output,
            is_error: true,
            duration_ms: 0,
        };
        // Resumed with an approval already asked (and maybe answered).
        if let Some(state) = self.conv.approvals.get(&call.id).cloned() {
            return match state.answer {
                // Approved before a restart: only a deny that appeared
                // since (a new hard-deny) can stop it now.
                Some(Ok(())) => {
                    let v = decide(policy.as_ref(), call);
                    if v.verdict != PolicyVerdict::Deny {
                        return Ok(true);
                    }
                    self.push(decided(call, &v));
                    self.push(refuse(denial_text(&v.reason)));
                    Ok(false)
                }
                Some(Err(reason)) => {
                    self.push(refuse(refusal_text(&reason)));
                    Ok(false)
                }
                None => self.wait_for(policy, call, state).await,
            };
        }
        let v = decide(policy.as_ref(), call);
        self.push(decided(call, &v));
        match v.verdict {
            PolicyVerdict::Allow => Ok(true),
            PolicyVerdict::Deny => {
                self.push(refuse(denial_text(&v.reason)));
                Ok(false)
            }
            PolicyVerdict::Ask => {
                let state = ApprovalState {
                    approval_id: new_approval_id(),
                    tool: call.name.clone(),
                    summary: v.summary.clone(),
                    reason: v.reason.clone(),
                    suggested_rule: v.suggested_rule.clone(),
                    answer: None,
                };
                self.push(EventKind::ApprovalRequested {
                    approval_id: state.approval_id.clone(),
                    call_id: call.id.clone(),
                    tool: state.tool.clone(),
                    summary: state.summary.clone(),
                    reason: state.reason.clone(),
                    suggested_rule: state.suggested_rule.clone(),
                });
                self.push(EventKind::StateChanged {
                    state: SessionState::WaitingApproval,
                    reason: Some(format!("{}: {}", state.summary, state.reason)),
                });
                self.flush().await?;
                self.wait_for(policy, call, state).await
            }
        }
    }

    async fn wait_for(
        &mut self,
        policy: &Arc<dyn CallPolicy>,
        call: &ToolCall,
        state: ApprovalState,
    ) -> Result<bool, AgentError> {
        self.flush().await?;
        let ask = ApprovalAsk {
            approval_id: state.approval_id,
            call_id: call.id.clone(),
            tool: state.tool,
            summary: state.summary,
            reason: state.reason,
            suggested_rule: state.suggested_rule,
        };
        let answer = tokio::select! {
            a = policy.wait_approval(ask) => a,
            _ = self.stop.cancelled() => {
                self.push(EventKind::ToolFinished {
                    call_id: call.id.clone(),
                    output: "error: not run, the session was stopped while waiting for approval".into(),
                    is_error: true,
                    duration_ms: 0,
                });
                return Ok(false);
            }
        };
        // The supervisor appended the answer; read it (and any rule it added).
        let before = self.conv.session_allow.len();
        let newer = self
            .run
            .store
            .events(&self.run.session, self.conv.last_seq, 10_000)
            .await?;
        for e in &newer {
            self.conv.apply(e);
        }
        if self.conv.session_allow.len() != before {
            policy.session_rules_changed(&self.conv.session_allow);
        }
        self.push(EventKind::StateChanged {
            state: SessionState::Running,
            reason: None,
        });
        match answer {
            ApprovalAnswer::Approved => Ok(true),
            ApprovalAnswer::Refused { reason } => {
                self.push(EventKind::ToolFinished {
                    call_id: call.id.clone(),
                    output: refusal_text(&reason),
                    is_error: true,
                    duration_ms: 0,
                });
                Ok(false)
            }
        }
    }

    /// Summarises older turns when the next request would come near the context window.
    /// Model turns taken, counting a reply that is still buffered.
    fn turns_so_far(&self) -> u32 {
        self.buffer
            .iter()
            .filter_map(|e| match e {
                EventKind::ModelResponded { turn, .. } => Some(*turn),
                _ => None,
            })
            .fold(self.conv.turns, u32::max)
    }

    /// Messages and estimated tokens of the next request, from the
    /// conversation's running count plus the buffered tool results, without
    /// building the request.
    fn next_request_size(&self) -> (u32, u64) {
        let system = ChatMessage::text(Role::System, self.system_prompt.clone());
        let mut messages = self.conv.message_count() as u32;
        let mut tokens =
            self.conv.estimated_tokens + estimate_tokens(std::slice::from_ref(&system));
        for e in &self.buffer {
            if let EventKind::ToolFinished { output, .. } = e {
                messages += 1;
                tokens += (output.len() / 4 + 4) as u64;
            } else if matches!(e, EventKind::ToolInterrupted { .. }) {
                messages += 1;
                tokens += 64;
            }
        }
        (messages, tokens)
    }

    async fn maybe_compact(&mut self) -> Result<(), AgentError> {
        let estimate = self.next_request_size().1.max(self.conv.last_prompt_tokens);
        let limit = (self.conv.limits.context_window as f64 * COMPACT_AT) as u64;
        if estimate < limit {
            return Ok(());
        }
        // Compaction reads the conversation: let it see the buffered results.
        self.flush().await?;
        let Some(through_seq) = self.conv.compaction_boundary(KEEP_TURNS) else {
            return Ok(());
        };
        // The older turns go as they are (long tool outputs clipped: the
        // summary needs their gist), followed by the request to summarise.
        let mut messages = vec![
            ChatMessage::text(
                Role::System,
                "You compress the history of a coding agent's session. Keep every fact \
                 needed to finish the task: files changed, commands run and their results, \
                 decisions, open problems. Be concise.",
            ),
            ChatMessage::text(Role::User, format!("Task: {}", self.conv.task)),
        ];
        if let Some(prev) = &self.conv.summary {
            messages.push(ChatMessage::text(
                Role::User,
                format!("Earlier summary:\n{prev}"),
            ));
        }
        for (_, m) in self
            .conv
            .recent
            .iter()
            .filter(|(seq, _)| *seq <= through_seq)
        {
            let mut m = m.clone();
            if m.content.len() > 2_000 {
                let cut: String = m.content.chars().take(2_000).collect();
                m.content = format!("{cut}\n[clipped]");
            }
            messages.push(m);
        }
        messages.push(ChatMessage::text(
            Role::User,
            "Summarise the session above for the agent that will continue it.",
        ));
        let request = ChatRequest {
            model: self.run.settings.model_name.clone(),
            messages,
            tools: Vec::new().into(),
            max_tokens: None,
        };
        let result = tokio::select! {
            r = self.run.client.chat(&request) => r,
            _ = self.stop.cancelled() => return Ok(()),
        };
        match result {
            Ok(resp) if !resp.text.trim().is_empty() => {
                self.push(EventKind::ContextCompacted {
                    summary: resp.text,
                    through_seq,
                    tokens_before: estimate,
                });
                self.flush().await?;
            }
            Ok(_) => {
                tracing::warn!(session = %self.run.session, "compaction returned an empty summary; continuing without it")
            }
            Err(e) => {
                tracing::warn!(session = %self.run.session, error = %e, "compaction failed; continuing without it")
            }
        }
        Ok(())
    }
}

/// Asks `policy` about a call (arguments already checked to be JSON).
fn decide(policy: &dyn CallPolicy, call: &ToolCall) -> crate::policy::Verdict {
    let args = serde_json::from_str::<serde_json::Value>(&call.arguments)
        .unwrap_or(serde_json::Value::Null);
    policy.decide(call, &args)
}

fn decided(call: &ToolCall, v: &crate::policy::Verdict) -> EventKind {
    EventKind::PolicyDecided {
        call_id: call.id.clone(),
        decision: v.verdict,
        reason: v.reason.clone(),
        rule: v.rule.clone(),
        layer: v.layer.clone(),
    }
}

fn denial_text(reason: &str) -> String {
    format!(
        "error: not run, denied by policy: {reason}. Do not retry the same call; find another \
         way or explain in your final answer what you needed."
    )
}

fn refusal_text(reason: &str) -> String {
    format!("error: not run, a person denied this call: {reason}")
}

/// The built-in tools and the host's, minus those a bare `deny` rule
/// removes.
fn offered_tools(
    policy: Option<&dyn CallPolicy>,
    host: Vec<flotilla_models::ToolSpec>,
) -> Arc<[flotilla_models::ToolSpec]> {
    let all = if host.is_empty() {
        tools::shared_tool_specs()
    } else {
        tools::shared_tool_specs()
            .iter()
            .cloned()
            .chain(host)
            .collect::<Vec<_>>()
            .into()
    };
    match policy {
        Some(p) if all.iter().any(|t| !p.offers_tool(&t.name)) => all
            .iter()
            .filter(|t| p.offers_tool(&t.name))
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        _ => all,
    }
}

fn rand_jitter_ms(max: u64) -> u64 {
    rand::random_range(0..max.max(1))
}
