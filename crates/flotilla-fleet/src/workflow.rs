//! Declarative fleets: the root of a `run --workflow FILE.toml` runs the
//! file's steps itself, with the planner's own means (`spawn_worker`, the
//! wait on the tree, `merge_child`) instead of a model choosing them.
//!
//! Durability is the planner's: every action (a spawn, a merge, the items
//! of a fan-out) is a call in the root's log, `ToolStarted` durable before
//! it runs and its result in `ToolFinished`. After a restart the steps run
//! again from the top, and each action whose result is in the log returns
//! that result instead of running again: finished workers are not re-run,
//! running ones resumed on their own, and a spawn cut short is found by its
//! worker's name. Outputs are the workers' final answers, read from their
//! logs, so the values fed into later steps are the same after a restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::tools::ToolOutcome;
use flotilla_agent::tools::{CommandExecutor, CommandRequest, ToolLimits};
use flotilla_agent::{AgentError, AgentExit, CallPolicy, HostTools};
use flotilla_protocol::workflow::{render, StepKind};
use flotilla_protocol::{
    EventKind, Over, PolicyVerdict, SessionId, SessionInfo, SessionState, ToolCall, Workflow,
    WorkflowStep,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::fleet::Place;
use crate::Supervisor;

/// The most items one fan-out may have, whatever the fleet's total.
const MAX_ITEMS: usize = 1000;

/// Everything one workflow run needs.
pub(crate) struct WorkflowRun {
    pub(crate) sup: Arc<Supervisor>,
    pub(crate) place: Place,
    pub(crate) workflow: Workflow,
    /// The root's fleet tools: workers are spawned as a planner spawns them.
    pub(crate) tools: Arc<dyn HostTools>,
    pub(crate) executor: Arc<dyn CommandExecutor>,
    pub(crate) policy: Option<Arc<dyn CallPolicy>>,
    pub(crate) tool_limits: ToolLimits,
    pub(crate) cancel: CancellationToken,
    pub(crate) resume: bool,
}

/// What the log says about the actions so far.
struct Journal {
    /// Results of finished actions, by call id.
    done: HashMap<String, (String, bool)>,
    /// Every call id used (an interrupted one is not used again).
    used: HashSet<String>,
}

struct Interpreter {
    run: WorkflowRun,
    journal: Journal,
    workspace: PathBuf,
    stop: CancellationToken,
}

/// Runs a workflow root until it ends, recording the end.
pub(crate) async fn run_workflow(run: WorkflowRun) -> Result<AgentExit, AgentError> {
    let id = run.place.me.clone();
    let events = flotilla_agent::load_all(run.sup.store(), &id).await?;
    let mut journal = Journal {
        done: HashMap::new(),
        used: HashSet::new(),
    };
    let mut started: Vec<String> = Vec::new();
    let mut created_ms = 0;
    let mut workspace = PathBuf::new();
    let mut wall = 0u64;
    let mut cancel_requested = false;
    for e in &events {
        match &e.event {
            EventKind::SessionCreated {
                workspace: w,
                limits,
                ..
            } => {
                created_ms = e.ts_ms;
                workspace = PathBuf::from(w);
                wall = limits.wall_time_secs;
            }
            EventKind::ToolProposed { call } => {
                journal.used.insert(call.id.clone());
            }
            EventKind::ToolStarted { call_id } => started.push(call_id.clone()),
            EventKind::ToolFinished {
                call_id,
                output,
                is_error,
                ..
            } => {
                started.retain(|c| c != call_id);
                journal
                    .done
                    .insert(call_id.clone(), (output.clone(), *is_error));
            }
            EventKind::ToolInterrupted { call_id, .. } => started.retain(|c| c != call_id),
            EventKind::CancelRequested { .. } => cancel_requested = true,
            EventKind::StateChanged { state, .. } if state.is_terminal() => {
                return Ok(AgentExit::Failed("the session had already ended".into()));
            }
            _ => {}
        }
    }
    let last_ms = events.last().map(|e| e.ts_ms).unwrap_or(created_ms);
    if run.resume {
        let mut batch: Vec<EventKind> = started
            .iter()
            .map(|c| EventKind::ToolInterrupted {
                call_id: c.clone(),
                reason: "the daemon stopped while the action was running".into(),
            })
            .collect();
        batch.push(EventKind::SessionResumed {
            interrupted_tools: started.len() as u32,
        });
        run.sup.store().append(&id, batch).await?;
    }
    let stop = run.cancel.child_token();
    let mut it = Interpreter {
        workspace,
        journal,
        stop: stop.clone(),
        run,
    };
    let exit = if cancel_requested {
        AgentExit::Cancelled
    } else {
        // Awake time already used (before a restart) counts, as for a planner.
        let used = Duration::from_millis((last_ms - created_ms).max(0) as u64);
        let left = Duration::from_secs(wall).saturating_sub(used);
        let cancel = it.run.cancel.clone();
        tokio::select! {
            r = it.steps() => match r {
                Ok(answer) => AgentExit::Completed(answer),
                Err(_) if cancel.is_cancelled() => AgentExit::Cancelled,
                Err(e) => AgentExit::Failed(e),
            },
            _ = cancel.cancelled() => AgentExit::Cancelled,
            _ = tokio::time::sleep(left) => {
                stop.cancel();
                AgentExit::Failed(format!("wall-time budget of {wall}s used up"))
            }
        }
    };
    let (state, reason) = match &exit {
        AgentExit::Completed(_) => (SessionState::Completed, None),
        AgentExit::Failed(why) => (SessionState::Failed, Some(why.clone())),
        AgentExit::Cancelled => (SessionState::Cancelled, Some("cancelled".to_owned())),
    };
    let mut end = Vec::new();
    if let AgentExit::Completed(text) = &exit {
        end.push(EventKind::FinalAnswer { text: text.clone() });
    }
    end.push(EventKind::StateChanged { state, reason });
    it.run.sup.store().append(&id, end).await?;
    Ok(exit)
}

impl Interpreter {
    fn id(&self) -> &SessionId {
        &self.run.place.me
    }

    /// Runs every step; the answer is the last step's output.
    async fn steps(&mut self) -> Result<String, String> {
        let steps = self.run.workflow.steps.clone();
        let mut outputs: HashMap<String, String> = HashMap::new();
        let mut last = String::new();
        for step in &steps {
            let kind = step.kind()?;
            let output_of = |name: &str| outputs.get(name).cloned();
            let out = match kind {
                StepKind::Agent(task) => {
                    let task = render(task, None, &last, &output_of);
                    let done = self.workers(step, vec![(step.name.clone(), task)]).await?;
                    self.merge(step, &done).await?;
                    answer(&done[0])
                }
                StepKind::Pipeline(tasks) => {
                    let mut input = last.clone();
                    for (i, t) in tasks.iter().enumerate() {
                        let task = render(t, None, &input, &output_of);
                        let name = format!("{}-{}", step.name, i + 1);
                        let done = self.workers(step, vec![(name, task)]).await?;
                        // Each stage builds on the one before it.
                        self.merge(step, &done).await?;
                        input = answer(&done[0]);
                    }
                    input
                }
                StepKind::Parallel(p) => {
                    let items = self.items(step, &p.over, &last, &output_of).await?;
                    let jobs: Vec<(String, String)> = items
                        .iter()
                        .enumerate()
                        .map(|(i, item)| {
                            (
                                format!("{}-{}", step.name, i + 1),
                                render(&p.agent, Some((i + 1, item)), &last, &output_of),
                            )
                        })
                        .collect();
                    let done = self.workers(step, jobs).await?;
                    self.merge(step, &done).await?;
                    items
                        .iter()
                        .zip(&done)
                        .map(|(item, info)| format!("## {item}\n{}\n", answer(info).trim_end()))
                        .collect::<Vec<_>>()
                        .join("\n")
                }
            };
            outputs.insert(step.name.clone(), out.clone());
            last = out;
        }
        Ok(last)
    }

    /// Records the start of an action, or returns its recorded result.
    async fn begin(
        &mut self,
        key: &str,
        tool: &str,
        args: serde_json::Value,
    ) -> Result<Result<(String, bool), String>, String> {
        // Done: its result. Cut short by a restart: again, under a new id
        // (every id with a result was proposed, so is in `used`).
        let mut call_id = key.to_owned();
        let mut n = 1;
        while self.journal.used.contains(&call_id) {
            if let Some(done) = self.journal.done.get(&call_id) {
                return Ok(Ok(done.clone()));
            }
            n += 1;
            call_id = format!("{key}~{n}");
        }
        self.journal.used.insert(call_id.clone());
        let call = ToolCall {
            id: call_id.clone(),
            name: tool.to_owned(),
            arguments: args.to_string(),
        };
        self.run
            .sup
            .store()
            .append(
                self.id(),
                vec![
                    EventKind::ToolProposed { call },
                    EventKind::ToolStarted {
                        call_id: call_id.clone(),
                    },
                ],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(Err(call_id))
    }

    /// Records an action's result.
    async fn finish(
        &mut self,
        call_id: String,
        output: &str,
        is_error: bool,
    ) -> Result<(), String> {
        self.run
            .sup
            .store()
            .append_one(
                self.id(),
                EventKind::ToolFinished {
                    call_id: call_id.clone(),
                    output: output.to_owned(),
                    is_error,
                    duration_ms: 0,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        self.journal
            .done
            .insert(call_id, (output.to_owned(), is_error));
        Ok(())
    }

    /// The items of a fan-out. Those read from the machine (a glob, a
    /// command) are recorded, so a restart fans out over the same ones.
    async fn items(
        &mut self,
        step: &WorkflowStep,
        over: &Over,
        input: &str,
        output_of: &(dyn Fn(&str) -> Option<String> + Sync),
    ) -> Result<Vec<String>, String> {
        let key = format!("items-{}", step.name);
        let items: Vec<String> = match over {
            Over::List(items) => items.clone(),
            Over::Lines(text) => lines(&render(text, None, input, output_of)),
            Over::Glob(pattern) => {
                let (out, is_error) = match self
                    .begin(&key, "glob", json!({ "pattern": pattern }))
                    .await?
                {
                    Ok(done) => done,
                    Err(call_id) => {
                        let root = self.workspace.clone();
                        let p = pattern.clone();
                        let r = tokio::task::spawn_blocking(move || glob(&root, &p))
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()));
                        let (text, err) = match r {
                            Ok(files) => (files.join("\n"), false),
                            Err(e) => (format!("error: {e}"), true),
                        };
                        self.finish(call_id, &text, err).await?;
                        (text, err)
                    }
                };
                if is_error {
                    return Err(format!("step {:?}: glob {pattern:?}: {out}", step.name));
                }
                lines(&out)
            }
            Over::Command(command) => {
                // Checked to hold no templates: used as written.
                let command = command.clone();
                let (out, is_error) = match self
                    .begin(&key, "shell", json!({ "command": command }))
                    .await?
                {
                    Ok(done) => done,
                    Err(call_id) => {
                        let (text, err) = match self.command(&call_id, &command).await {
                            Ok(text) => (text, false),
                            Err(e) => (format!("error: {e}"), true),
                        };
                        self.finish(call_id, &text, err).await?;
                        (text, err)
                    }
                };
                if is_error {
                    return Err(format!(
                        "step {:?}: the command {command:?}: {out}",
                        step.name
                    ));
                }
                lines(&out)
            }
        };
        if items.is_empty() {
            return Err(format!("step {:?}: the fan-out has no items", step.name));
        }
        let max = (self.run.place.spec.max_total as usize).min(MAX_ITEMS);
        if items.len() > max {
            return Err(format!(
                "step {:?}: {} items, more than the {max} workers a run may start",
                step.name,
                items.len()
            ));
        }
        Ok(items)
    }

    /// Runs a fan-out's command in the workflow's sandbox, if its policy
    /// allows it outright (nobody is there to answer an `ask`).
    async fn command(&mut self, call_id: &str, command: &str) -> Result<String, String> {
        let args = json!({ "command": command });
        let Some(policy) = &self.run.policy else {
            return Err(
                "this daemon runs no policy, and a workflow's command needs one to allow it".into(),
            );
        };
        {
            let call = ToolCall {
                id: call_id.to_owned(),
                name: "shell".into(),
                arguments: args.to_string(),
            };
            let v = policy.decide(&call, &args);
            self.run
                .sup
                .store()
                .append_one(
                    self.id(),
                    EventKind::PolicyDecided {
                        call_id: call_id.to_owned(),
                        decision: v.verdict,
                        reason: v.reason.clone(),
                        rule: v.rule.clone(),
                        layer: v.layer.clone(),
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            if v.verdict != PolicyVerdict::Allow {
                return Err(format!(
                    "policy says {} ({}); a workflow's command must be allowed outright: add the rule {} or run with --mode auto",
                    v.verdict.as_str(),
                    v.reason,
                    v.suggested_rule
                ));
            }
        }
        let limits = &self.run.tool_limits;
        let result = self
            .run
            .executor
            .run(CommandRequest {
                command: command.to_owned(),
                cwd: self.workspace.clone(),
                timeout: limits.default_timeout,
                output_cap_bytes: limits.output_cap_bytes,
                env: Vec::new(),
                cancel: self.stop.clone(),
            })
            .await
            .map_err(|e| format!("it could not start: {e}"))?;
        let stdout = &result.output.stdout;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if !result.success() {
            let mut err = text(&result.output.stderr.head);
            err.push_str(&text(&result.output.stderr.tail));
            let how = match (result.exit_code, result.timed_out) {
                (_, true) => "timed out".to_owned(),
                (Some(c), _) => format!("exited with {c}"),
                (None, _) => "was killed".to_owned(),
            };
            let mut msg = format!("it {how}: {}", err.trim());
            for note in &result.notes {
                msg.push_str(&format!("; {note}"));
            }
            return Err(msg);
        }
        if stdout.head.len() + stdout.tail.len() < stdout.total_bytes as usize {
            return Err(format!(
                "its output ({} bytes) is longer than the {} bytes kept: narrow it",
                stdout.total_bytes, limits.output_cap_bytes
            ));
        }
        let mut out = text(&stdout.head);
        out.push_str(&text(&stdout.tail));
        Ok(out)
    }

    /// Runs one worker per job (name, task), at most the fleet's
    /// `max_workers` at once; returns them ended, in job order. A worker
    /// that does not complete fails the step, and the step's other workers
    /// are cancelled.
    async fn workers(
        &mut self,
        step: &WorkflowStep,
        jobs: Vec<(String, String)>,
    ) -> Result<Vec<SessionInfo>, String> {
        let n = jobs.len();
        let max = self.run.place.spec.max_workers.max(1) as usize;
        let mut queue: VecDeque<(usize, String, String)> = jobs
            .into_iter()
            .enumerate()
            .map(|(i, (name, task))| (i, name, task))
            .collect();
        let mut live: HashMap<SessionId, usize> = HashMap::new();
        let mut ended: Vec<Option<SessionInfo>> = vec![None; n];
        loop {
            while live.len() < max {
                let Some((i, name, task)) = queue.pop_front() else {
                    break;
                };
                let id = self.worker(step, &name, task).await?;
                live.insert(id, i);
            }
            if live.is_empty() {
                break;
            }
            let wanted: HashSet<SessionId> = live.keys().cloned().collect();
            let far = tokio::time::Instant::now() + Duration::from_secs(7 * 86_400);
            let (done, _) = self
                .run
                .sup
                .await_ended(&self.run.place.root, &wanted, true, far, &self.stop)
                .await?;
            for info in done {
                let Some(i) = live.remove(&info.id) else {
                    continue;
                };
                if info.state != SessionState::Completed {
                    let why = format!(
                        "step {:?}: worker {} {}{}",
                        step.name,
                        info.name.as_deref().unwrap_or(info.id.as_str()),
                        info.state.as_str(),
                        info.reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    );
                    for other in live.keys() {
                        let by = format!("workflow {} (step {} failed)", self.id(), step.name);
                        if let Err(e) = self.run.sup.cancel(other, &by).await {
                            tracing::warn!(session = %other, error = %e, "cancelling a workflow worker failed");
                        }
                    }
                    return Err(why);
                }
                ended[i] = Some(info);
            }
        }
        ended
            .into_iter()
            .map(|e| e.ok_or_else(|| format!("step {:?}: a worker was lost", step.name)))
            .collect()
    }

    /// The worker `name`: started now, or found (started before a restart).
    async fn worker(
        &mut self,
        step: &WorkflowStep,
        name: &str,
        task: String,
    ) -> Result<SessionId, String> {
        let mut args = json!({
            "task": task,
            "name": name,
            "workspace": if step.writes() { "worktree" } else { "shared" },
        });
        for (k, v) in [
            ("model", step.model.as_ref().map(|m| json!(m))),
            ("tools", step.tools.as_ref().map(|t| json!(t))),
            ("mode", step.mode.as_ref().map(|m| json!(m))),
            ("max_turns", step.max_turns.map(|n| json!(n))),
            ("grants", step.grants.as_ref().map(|g| json!(g))),
        ] {
            if let Some(v) = v {
                args[k] = v;
            }
        }
        let key = format!("spawn-{name}");
        match self.begin(&key, "spawn_agent", args.clone()).await? {
            Ok((out, false)) => {
                // Spawned before: find it by its name.
                let _ = out;
                self.child(name).await?.ok_or_else(|| {
                    format!("worker {name} was spawned but is not in the fleet's tree")
                })
            }
            Ok((out, true)) => Err(format!("step {:?}: spawning {name}: {out}", step.name)),
            Err(call_id) => {
                // A spawn cut short by a restart may have recorded it.
                if let Some(id) = self.child(name).await? {
                    self.finish(
                        call_id,
                        &format!("worker {name} (session {id}) found after a restart"),
                        false,
                    )
                    .await?;
                    return Ok(id);
                }
                // Through the planner's tool (a trait object: the loop that
                // runs this workflow starts the worker's loop in turn).
                // A machine whose slots are all taken (a worker that just
                // ended may hold its slot a moment longer) is waited for.
                let mut tries = 0;
                let (text, is_error) = loop {
                    let outcome = self
                        .run
                        .tools
                        .call("spawn_agent", &args.to_string(), self.stop.clone())
                        .await;
                    let (text, is_error) = match outcome {
                        ToolOutcome::Output { text, is_error } => (text, is_error),
                        ToolOutcome::Finish { answer } => (answer, true),
                    };
                    tries += 1;
                    if is_error && text.contains("every slot is taken") && tries < 600 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                    break (text, is_error);
                };
                self.finish(call_id, &text, is_error).await?;
                if is_error {
                    return Err(format!("step {:?}: spawning {name}: {text}", step.name));
                }
                self.child(name).await?.ok_or_else(|| {
                    format!("worker {name} was spawned but is not in the fleet's tree")
                })
            }
        }
    }

    async fn child(&self, name: &str) -> Result<Option<SessionId>, String> {
        let tree = self
            .run
            .sup
            .store()
            .fleet_tree(&self.run.place.root)
            .await
            .map_err(|e| e.to_string())?;
        Ok(tree
            .into_iter()
            .find(|s| s.parent.as_ref() == Some(self.id()) && s.name.as_deref() == Some(name))
            .map(|s| s.id))
    }

    /// Merges a writing step's workers, in order, unless it says not to.
    async fn merge(&mut self, step: &WorkflowStep, done: &[SessionInfo]) -> Result<(), String> {
        if !step.writes() || step.merge == Some(false) {
            return Ok(());
        }
        for info in done {
            let name = info.name.clone().unwrap_or_else(|| info.id.to_string());
            let key = format!("merge-{name}");
            let (out, is_error) = match self
                .begin(&key, "merge_worker", json!({ "agent": name }))
                .await?
            {
                Ok(done) => done,
                Err(call_id) => {
                    let (text, err) = match self.run.sup.merge_child(info.clone()).await {
                        Ok(t) => (t, false),
                        Err(e) => (format!("error: {e}"), true),
                    };
                    self.finish(call_id, &text, err).await?;
                    (text, err)
                }
            };
            if is_error {
                return Err(format!("step {:?}: {out}", step.name));
            }
        }
        Ok(())
    }
}

/// A worker's final answer.
fn answer(info: &SessionInfo) -> String {
    info.final_answer.clone().unwrap_or_default()
}

/// The non-empty lines of a text, trimmed.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Files under `root` matching `pattern` (relative, `/`-separated),
/// sorted; ignored files (`.gitignore`, `.git/`) are skipped and symlinks
/// are not followed.
fn glob(root: &std::path::Path, pattern: &str) -> Result<Vec<String>, String> {
    let matcher = globset::GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| e.to_string())?
        .compile_matcher();
    let mut out = Vec::new();
    for entry in ignore::WalkBuilder::new(root).hidden(false).build() {
        let entry = entry.map_err(|e| e.to_string())?;
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(root) else {
            continue;
        };
        if rel.components().any(|c| c.as_os_str() == ".git") {
            continue;
        }
        if matcher.is_match(rel) {
            out.push(rel.to_string_lossy().into_owned());
        }
        if out.len() > MAX_ITEMS {
            break;
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_skips_ignored_and_git_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("src/a")).unwrap();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join("target")).unwrap();
        for f in [
            "src/x.rs",
            "src/a/y.rs",
            "src/z.txt",
            "target/t.rs",
            ".git/h.rs",
        ] {
            std::fs::write(root.join(f), "").unwrap();
        }
        std::fs::write(root.join(".gitignore"), "target/\n").unwrap();
        // `ignore` honours .gitignore inside a git repository.
        assert_eq!(
            glob(root, "src/**/*.rs").unwrap(),
            vec!["src/a/y.rs", "src/x.rs"]
        );
        assert_eq!(glob(root, "src/*.rs").unwrap(), vec!["src/x.rs"]);
        assert_eq!(
            glob(root, "**/*.rs").unwrap(),
            vec!["src/a/y.rs", "src/x.rs"]
        );
        assert!(glob(root, "src/[").is_err());
    }

    #[test]
    fn lines_are_trimmed_and_blank_ones_dropped() {
        assert_eq!(lines(" a \n\n b\r\n"), vec!["a", "b"]);
    }
}
