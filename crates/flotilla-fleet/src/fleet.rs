//! Fleets: the tools a planner coordinates workers with (`spawn_agent`,
//! `wait_agents`, `list_agents`, `cancel_agent`, `merge_worker`), each
//! writing worker's git worktree, and the limits of the tree.
//!
//! A worker is a session like any other (its own log, sandbox, policy and
//! budget) whose `SessionCreated` names its parent, its root (the planner)
//! and its name; the tree is therefore durable by construction: after a
//! restart finished workers stay finished, running ones resume, and the
//! planner's tools read the tree from the store.
//!
//! Only a worker's final answer and a summary of its diff reach the
//! planner, never its transcript.
//!
//! Git runs on the host, as the daemon, never trusting what a worker could
//! have written: the worktree's `.git` file is ignored (`GIT_DIR` names the
//! worktree's admin folder inside the main repository, which the worker's
//! sandbox cannot write), hooks and fsmonitor are off, and no pager or
//! prompt can start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use flotilla_agent::tools::{ToolOutcome, BUILTIN_TOOLS};
use flotilla_agent::HostTools;
use flotilla_models::ToolSpec;
use flotilla_protocol::{
    EventKind, FleetLink, FleetSpec, ModelRoute, ModelSpec, ParentLink, SessionId, SessionInfo,
    SessionLimits, SessionPermissions, SessionState,
};
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{is_frontier, session_origin, FleetError, Supervisor};

/// An agent's place in its fleet, as its tools need it.
#[derive(Clone, Debug)]
pub(crate) struct Place {
    /// This agent.
    pub(crate) me: SessionId,
    /// The planner at the top.
    pub(crate) root: SessionId,
    /// Levels below the planner (the planner is 0).
    pub(crate) depth: u32,
    /// The root's settings and limits.
    pub(crate) spec: FleetSpec,
}

/// The fleet tools of one agent.
pub(crate) struct FleetTools {
    pub(crate) sup: Weak<Supervisor>,
    pub(crate) place: Place,
}

/// How long `wait_agents` waits unless told (seconds).
const DEFAULT_WAIT_SECS: u64 = 600;
/// The longest one `wait_agents` waits (a day).
const MAX_WAIT_SECS: u64 = 86_400;
/// The longest a report's final answer may be in the planner's context.
const MAX_REPORT_CHARS: usize = 4000;

fn specs() -> Vec<ToolSpec> {
    let spec = flotilla_agent::tools::tool_spec;
    vec![
        spec(
            "spawn_agent",
            "Start a worker agent on a task and return at once with its name. Each worker \
             that writes gets its own git worktree (a branch of your repository at your last \
             commit) and sandbox, so workers never clobber each other or you; merge its work \
             with merge_worker once it has finished. Past the fleet's limit of workers at once, a \
             worker is queued and starts when another ends. Give each worker one self-contained task \
             with everything it needs to know: it sees only its task, not your conversation.",
            json!({
                "type": "object",
                "properties": {
                    "task": {"type": "string", "description": "What the worker should do, completely stated."},
                    "name": {"type": "string", "description": "A short unique name (letters, digits, - and _), e.g. \"parser-tests\"; default w1, w2..."},
                    "workspace": {"type": "string", "enum": ["worktree", "shared"], "description": "worktree (default): its own branch to write in; shared: read-only in your workspace (plan mode), for research."},
                    "model": {"type": "string", "description": "provider:model for this worker (default: the fleet's worker model)."},
                    "tools": {"type": "array", "items": {"type": "string"}, "description": "Only these built-in tools (default: all)."},
                    "mode": {"type": "string", "enum": ["plan", "ask", "accept-edits", "auto"], "description": "Permission mode, never wider than yours (default: yours)."},
                    "max_turns": {"type": "integer", "minimum": 1, "description": "Model turns it may take."},
                    "wall_time_secs": {"type": "integer", "minimum": 1, "description": "Seconds it may run (never beyond your own remaining time)."},
                    "grants": {"type": "array", "items": {"type": "string"}, "description": "Secrets of yours it may use, each NAME[:host=H][:method=GET][:path=/prefix][:ttl=1h], never wider than your own grant (default: none)."}
                },
                "required": ["task"],
                "additionalProperties": false
            }),
        ),
        spec(
            "wait_agents",
            "Wait until your workers finish and get their reports: each finished worker's \
             state, final answer and a summary of the files it changed. mode all (default) \
             returns when every named worker has finished, any when at least one has; on \
             timeout, you get what has finished so far.",
            json!({
                "type": "object",
                "properties": {
                    "agents": {"type": "array", "items": {"type": "string"}, "description": "Names (or session ids) to wait for; default: all your workers not yet reported."},
                    "mode": {"type": "string", "enum": ["all", "any"]},
                    "timeout_secs": {"type": "integer", "minimum": 1, "description": "Default 600."}
                },
                "additionalProperties": false
            }),
        ),
        spec(
            "send_message",
            "Send a running worker a message (a correction, a detail it needs, a request to \
             wrap up): it reads it as a user message at its next turn. A worker that has \
             ended cannot get messages; spawn another.",
            json!({
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "description": "Its name or session id."},
                    "text": {"type": "string", "description": "The message."}
                },
                "required": ["agent", "text"],
                "additionalProperties": false
            }),
        ),
        spec(
            "list_agents",
            "List your workers: name, session, state, turns, tokens, cost and branch.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
        spec(
            "cancel_agent",
            "Cancel a worker (and every worker it started).",
            json!({
                "type": "object",
                "properties": {"agent": {"type": "string", "description": "Its name or session id."}},
                "required": ["agent"],
                "additionalProperties": false
            }),
        ),
        spec(
            "merge_worker",
            "Merge a finished worker's branch into your workspace (its changes are committed \
             on its branch first). On a conflict nothing changes in your workspace and you get \
             the conflicting files: decide what to do (another worker, your own edit, or skip).",
            json!({
                "type": "object",
                "properties": {"agent": {"type": "string", "description": "Its name or session id."}},
                "required": ["agent"],
                "additionalProperties": false
            }),
        ),
    ]
}

impl HostTools for FleetTools {
    fn specs(&self) -> Vec<ToolSpec> {
        specs()
    }

    fn call(
        &self,
        name: &str,
        arguments: &str,
        stop: CancellationToken,
    ) -> futures::future::BoxFuture<'static, ToolOutcome> {
        let sup = self.sup.clone();
        let place = self.place.clone();
        let name = name.to_owned();
        let args = arguments.to_owned();
        Box::pin(async move {
            let Some(sup) = sup.upgrade() else {
                return ToolOutcome::Output {
                    text: "error: the daemon is shutting down".into(),
                    is_error: true,
                };
            };
            let result = match name.as_str() {
                "spawn_agent" => sup.spawn_agent(&place, &args, &stop).await,
                "wait_agents" => sup.wait_agents(&place, &args, stop).await,
                "list_agents" => sup.list_agents(&place).await,
                "send_message" => sup.send_message(&place, &args).await,
                "cancel_agent" => sup.cancel_agent(&place, &args).await,
                "merge_worker" => sup.merge_worker(&place, &args).await,
                other => Err(format!("{other} is not a fleet tool")),
            };
            match result {
                Ok(text) => ToolOutcome::Output {
                    text,
                    is_error: false,
                },
                Err(e) => ToolOutcome::Output {
                    text: format!("error: {e}"),
                    is_error: true,
                },
            }
        })
    }
}

fn parse<T: for<'de> Deserialize<'de>>(tool: &str, args: &str) -> Result<T, String> {
    serde_json::from_str(args).map_err(|e| format!("bad arguments for {tool}: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpawnArgs {
    task: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    tools: Option<Vec<String>>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    max_turns: Option<u32>,
    #[serde(default)]
    wall_time_secs: Option<u64>,
    #[serde(default)]
    grants: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitArgs {
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    timeout_secs: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentArg {
    agent: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageArgs {
    agent: String,
    text: String,
}

/// The longest message `send_message` takes.
const MAX_MESSAGE_CHARS: usize = 16_000;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Where a worker's fleet facts live in its `SessionCreated`.
pub(crate) fn link_of(events: &[flotilla_protocol::Event]) -> Option<FleetLink> {
    events.iter().find_map(|e| match &e.event {
        EventKind::SessionCreated { fleet, .. } => fleet.as_deref().cloned(),
        _ => None,
    })
}

impl Supervisor {
    /// The fleet tools for a session, if it is a planner or a worker that
    /// may still spawn (its depth is below the fleet's limit).
    pub(crate) async fn fleet_tools(
        self: &Arc<Self>,
        id: &SessionId,
        link: Option<&FleetLink>,
    ) -> Result<Option<Arc<dyn HostTools>>, FleetError> {
        let place = match link {
            Some(FleetLink {
                spec: Some(spec), ..
            }) => Place {
                me: id.clone(),
                root: id.clone(),
                depth: 0,
                spec: spec.clone(),
            },
            Some(FleetLink {
                parent: Some(p), ..
            }) => {
                let root_events = self.store.events(&p.root, 0, 1).await?;
                let Some(spec) = link_of(&root_events).and_then(|l| l.spec) else {
                    return Ok(None);
                };
                Place {
                    me: id.clone(),
                    root: p.root.clone(),
                    depth: p.depth,
                    spec,
                }
            }
            _ => return Ok(None),
        };
        if place.depth >= place.spec.max_depth {
            return Ok(None);
        }
        Ok(Some(Arc::new(FleetTools {
            sup: Arc::downgrade(self),
            place,
        })))
    }

    /// Starts (once) the task that stops a fleet past its budget: after
    /// each model answer of a fleet agent, the tree's tokens and cost are
    /// summed; past the planner's `max_tokens` or `max_cost_usd`, the
    /// planner is cancelled, and with it every worker.
    pub(crate) fn watch_budgets(self: &Arc<Self>) {
        if self.budget_watch.set(()).is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        let mut feed = self.store.subscribe();
        tokio::spawn(async move {
            loop {
                let event = match feed.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if !matches!(event.event, EventKind::ModelResponded { .. }) {
                    continue;
                }
                let Some(sup) = me.upgrade() else { break };
                if let Err(e) = sup.check_budget(&event.session).await {
                    tracing::warn!(session = %event.session, error = %e, "checking a fleet's budget failed");
                }
            }
        });
    }

    async fn check_budget(self: &Arc<Self>, session: &SessionId) -> Result<(), FleetError> {
        let Some(root) = self.store.session(session).await?.and_then(|s| s.root) else {
            return Ok(());
        };
        let root_events = self.store.events(&root, 0, 1).await?;
        let Some(spec) = link_of(&root_events).and_then(|l| l.spec) else {
            return Ok(());
        };
        if spec.max_tokens.is_none() && spec.max_cost_usd.is_none() {
            return Ok(());
        }
        let tree = self.store.fleet_tree(&root).await?;
        if tree.iter().all(|s| s.state.is_terminal()) {
            return Ok(());
        }
        let tokens: u64 = tree
            .iter()
            .map(|s| s.prompt_tokens + s.completion_tokens)
            .sum();
        let cost: f64 = tree.iter().map(|s| s.cost_usd).sum();
        let why = match (spec.max_tokens, spec.max_cost_usd) {
            (Some(max), _) if tokens > max => {
                format!("the fleet's budget: {tokens} tokens used of {max}")
            }
            (_, Some(max)) if cost > max => {
                format!("the fleet's budget: ${cost:.4} spent of ${max:.4}")
            }
            _ => return Ok(()),
        };
        let first = self
            .over_budget
            .lock()
            .map(|mut s| s.insert(root.clone()))
            .unwrap_or(false);
        if first {
            tracing::info!(fleet = %root, %why, "fleet over budget: cancelling it");
            let me = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = me.cancel(&root, &why).await {
                    tracing::warn!(fleet = %root, error = %e, "cancelling a fleet over budget failed");
                }
                if let Ok(mut s) = me.over_budget.lock() {
                    s.remove(&root);
                }
            });
        }
        Ok(())
    }

    /// How a worker's approvals are tagged and escalated: after the fleet's
    /// timeout, denied as `escalation` (a no-op if a person answered).
    pub(crate) async fn worker_approvals(
        self: &Arc<Self>,
        link: Option<&FleetLink>,
    ) -> Option<crate::governance::WorkerApprovals> {
        let p = link?.parent.as_ref()?;
        let root_events = self.store.events(&p.root, 0, 1).await.ok()?;
        let spec = link_of(&root_events)?.spec?;
        let sup = Arc::downgrade(self);
        Some(crate::governance::WorkerApprovals {
            agent: p.name.clone(),
            fleet: p.root.clone(),
            timeout: Duration::from_secs(spec.approval_timeout_secs.max(1)),
            escalate: Arc::new(move |id: String, reason: String| {
                if let Some(sup) = sup.upgrade() {
                    tokio::spawn(async move {
                        match sup.deny(&id, "escalation", true, &reason).await {
                            Ok(_) => {
                                tracing::info!(approval = %id, "unanswered worker approval denied by escalation")
                            }
                            // Answered meanwhile: nothing to do.
                            Err(FleetError::NoApproval(_)) => {}
                            Err(e) => {
                                tracing::warn!(approval = %id, error = %e, "escalating an approval failed")
                            }
                        }
                    });
                }
            }),
        })
    }

    /// The permissions of each ancestor of a worker, nearest first: its
    /// policy is the intersection of its own and all of these.
    pub(crate) async fn ancestor_permissions(
        &self,
        link: Option<&FleetLink>,
    ) -> Result<Vec<SessionPermissions>, FleetError> {
        let mut out = Vec::new();
        let mut next = link
            .and_then(|l| l.parent.as_ref())
            .map(|p| p.parent.clone());
        // A tree is at most max_depth deep; the bound only guards a corrupt
        // log that names a cycle.
        for _ in 0..64 {
            let Some(id) = next else { break };
            let origin = session_origin(&self.store, &id).await?;
            out.push(origin.permissions.unwrap_or_default());
            let events = self.store.events(&id, 0, 1).await?;
            next = link_of(&events).and_then(|l| l.parent).map(|p| p.parent);
        }
        Ok(out)
    }

    /// My workers (direct children), oldest first.
    async fn children(&self, place: &Place) -> Result<Vec<SessionInfo>, String> {
        let tree = self
            .store
            .fleet_tree(&place.root)
            .await
            .map_err(|e| e.to_string())?;
        Ok(tree
            .into_iter()
            .filter(|s| s.parent.as_ref() == Some(&place.me))
            .collect())
    }

    async fn find_child(&self, place: &Place, who: &str) -> Result<SessionInfo, String> {
        let children = self.children(place).await?;
        let names: Vec<String> = children
            .iter()
            .map(|c| c.name.clone().unwrap_or_else(|| c.id.to_string()))
            .collect();
        children
            .into_iter()
            .find(|c| c.name.as_deref() == Some(who) || c.id.as_str() == who)
            .ok_or_else(|| {
                format!(
                    "you have no worker {who:?} (your workers: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                )
            })
    }

    async fn spawn_agent(
        self: &Arc<Self>,
        place: &Place,
        args: &str,
        stop: &CancellationToken,
    ) -> Result<String, String> {
        let args: SpawnArgs = parse("spawn_agent", args)?;
        if args.task.trim().is_empty() {
            return Err("the task is empty: say what the worker should do".into());
        }
        if place.depth + 1 > place.spec.max_depth {
            return Err(format!(
                "workers at depth {} may not start workers (the fleet's depth limit is {})",
                place.depth, place.spec.max_depth
            ));
        }
        let me = self.get(&place.me).await.map_err(|e| e.to_string())?;
        let origin = session_origin(&self.store, &place.me)
            .await
            .map_err(|e| e.to_string())?;
        // One spawn at a time per daemon: the limits below count the tree,
        // and a cancel snapshots the tree under the same lock.
        let lock = self.fleet_lock(&place.root);
        let _spawning = lock.lock().await;
        if stop.is_cancelled() {
            return Err("this agent is stopping: it starts no more workers".into());
        }
        let tree = self
            .store
            .fleet_tree(&place.root)
            .await
            .map_err(|e| e.to_string())?;
        let workers: Vec<&SessionInfo> = tree.iter().filter(|s| s.id != place.root).collect();
        if workers.len() as u64 >= u64::from(place.spec.max_total) {
            return Err(format!(
                "the fleet has started {} workers, its limit for the run",
                workers.len()
            ));
        }
        // Past the fleet's limit at once, the planner's worker is queued:
        // its loop starts when a running one ends. A worker's own workers
        // are refused instead: their parent holds a slot while it waits
        // for them, and queueing them behind it could wait for ever.
        let live = workers.iter().filter(|s| !s.state.is_terminal()).count();
        let queued = live as u64 >= u64::from(place.spec.max_workers);
        if queued && place.depth > 0 {
            return Err(format!(
                "{live} workers are running, the fleet's limit at once: wait_agents for some of yours to finish first"
            ));
        }
        let name = match args.name {
            Some(n) if !valid_name(&n) => {
                return Err(format!("name {n:?}: use 1 to 32 letters, digits, - and _"))
            }
            Some(n) => n,
            None => {
                let mut i = workers.len() + 1;
                while tree
                    .iter()
                    .any(|s| s.name.as_deref() == Some(&format!("w{i}")))
                {
                    i += 1;
                }
                format!("w{i}")
            }
        };
        if tree.iter().any(|s| s.name.as_deref() == Some(&name)) {
            return Err(format!("the fleet already has a worker named {name:?}"));
        }
        // Narrowing: the worker's own layer, on top of which its ancestors'
        // apply (the supervisor intersects them when it starts the worker).
        let shared = match args.workspace.as_deref() {
            None | Some("worktree") => false,
            Some("shared") => true,
            Some(other) => {
                return Err(format!(
                "workspace {other:?}: use worktree (its own branch) or shared (read-only in yours)"
            ))
            }
        };
        // Only the planner's checkout is the user's repository; a worker's
        // worktree (whose `.git` it can rewrite) never has git run over it
        // as a repository of its own.
        if !shared && place.depth > 0 {
            return Err(
                "only the planner gives workers their own worktrees: a worker's workers use workspace: shared"
                    .into(),
            );
        }
        let mine = self.effective_mode(&place.me);
        let mode = match (&args.mode, shared) {
            (_, true) => Some("plan".to_owned()),
            (Some(m), false) => {
                let asked = flotilla_policy::Mode::parse(m)?;
                if let Some(mine) = mine {
                    if asked > mine {
                        return Err(format!(
                            "a worker cannot run in mode {}: you run in {}, and a worker never gets more than its parent",
                            asked.as_str(),
                            mine.as_str()
                        ));
                    }
                }
                Some(asked.as_str().to_owned())
            }
            (None, false) => None,
        };
        let mut deny = Vec::new();
        if let Some(tools) = &args.tools {
            for t in tools {
                if !BUILTIN_TOOLS.contains(&t.as_str()) {
                    return Err(format!(
                        "tools: {t:?} is not a built-in tool ({})",
                        BUILTIN_TOOLS.join(", ")
                    ));
                }
            }
            // Bare deny rules in the dialect remove the others. A rule on an
            // action also covers its narrower ones (Edit covers Write, Read
            // covers Grep), so an action an offered tool falls under stays.
            use flotilla_policy::request::tool_action;
            let kept: Vec<flotilla_policy::rule::Action> = tools
                .iter()
                .filter_map(|t| tool_action(t))
                .flat_map(|a| a.with_ancestors())
                .collect();
            for t in BUILTIN_TOOLS {
                if let Some(a) = tool_action(t) {
                    let name = a.name().to_owned();
                    if !kept.contains(&a) && !deny.contains(&name) {
                        deny.push(name);
                    }
                }
            }
        }
        let permissions = SessionPermissions {
            mode,
            deny,
            ..SessionPermissions::default()
        };
        // The worker's policy must build before anything is recorded.
        if let Some(pc) = &self.config.policy {
            let mut chain = vec![origin.permissions.clone().unwrap_or_default()];
            chain.extend(
                self.ancestor_permissions(origin.fleet.as_deref())
                    .await
                    .map_err(|e| e.to_string())?,
            );
            crate::build_stack(pc, Path::new(&me.workspace), &permissions, &[], &chain)?;
        }
        // The model: named, the fleet's worker model, the daemon's
        // [roles.worker] (placed on the machine where its model file fits,
        // if it names one), or the planner's own.
        let role = self.config.roles.get("worker");
        let mut fallbacks = Vec::new();
        let mut machine = None;
        let mut _placing = None;
        let (model, base_url) = match (&args.model, &place.spec.worker_model, role) {
            (Some(m), _, _) => (m.clone(), None),
            (None, Some(m), _) => (m.clone(), place.spec.worker_base_url.clone()),
            (None, None, Some(r)) => {
                fallbacks = r.fallbacks.clone();
                let mut url = r.base_url.clone();
                if let (Some(gguf), None) = (&r.gguf, &url) {
                    _placing = Some(self.placing.lock().await);
                    let ctx = r.ctx.unwrap_or(self.config.default_limits.context_window);
                    let (m, endpoint) = self.place("worker", gguf, ctx)?;
                    machine = Some(m);
                    url = Some(endpoint);
                }
                (r.model.clone(), url)
            }
            (None, None, None) => (me.model.clone(), origin.base_url.clone()),
        };
        let spec = ModelSpec::parse(&model).map_err(|e| e.to_string())?;
        let route = ModelRoute {
            model: spec.to_string(),
            base_url: base_url.clone(),
        };
        let frontier_ok = role.is_some_and(|r| r.allows_frontier("worker"));
        for r in std::iter::once(&route).chain(&fallbacks) {
            if !frontier_ok
                && is_frontier(
                    r,
                    self.config.openai_base_url.as_deref(),
                    &self.config.local_endpoints,
                )
            {
                return Err(format!(
                    "workers may not use the frontier model {} (only local endpoints): start the fleet with --workers naming a local model, or set frontier = true in [roles.worker]",
                    r.model
                ));
            }
        }
        self.chain_for(&route, &fallbacks).map(|_| ())?;
        // Budget: never beyond the parent's remaining wall time.
        let d = self.config.default_limits;
        let used = (me.updated_ms - me.created_ms).max(0) as u64 / 1000;
        let left = me.limits.wall_time_secs.saturating_sub(used).max(1);
        let limits = SessionLimits {
            max_turns: args.max_turns.unwrap_or(d.max_turns).max(1),
            wall_time_secs: args.wall_time_secs.unwrap_or(left).clamp(1, left),
            context_window: d.context_window,
        };
        // Secrets: only the parent's, each narrowed (hosts, methods, paths,
        // expiry within the parent's grant; the same placeholder).
        let now = crate::secrets::now_ms();
        let mut grants: Vec<flotilla_protocol::SecretGrant> = Vec::new();
        for raw in &args.grants {
            let req: flotilla_vault::grant::GrantRequest =
                raw.parse().map_err(|e| format!("grants: {raw:?}: {e}"))?;
            if grants.iter().any(|g| g.secret == req.secret) {
                return Err(format!("grants: secret {:?} is granted twice", req.secret));
            }
            grants.push(
                flotilla_vault::grant::narrow(&origin.grants, &req, now)
                    .map_err(|e| format!("grants: {raw:?}: {e}"))?,
            );
        }
        let id = SessionId::generate();
        let (workspace, branch, base) = if shared {
            (me.workspace.clone(), None, None)
        } else {
            let dir = self.config.worktrees_dir.clone().ok_or_else(|| {
                "this daemon has no folder for worktrees; use workspace: shared".to_owned()
            })?;
            let repo = Repo {
                path: PathBuf::from(&me.workspace),
                config_id: place.spec.repo_config.clone(),
            };
            let branch = format!("flotilla/{}/{name}", place.root);
            let path = dir.join(format!("{}-{name}", place.root));
            let (b, p) = (branch.clone(), path.clone());
            let base = tokio::task::spawn_blocking(move || add_worktree(&repo, &p, &b))
                .await
                .map_err(|e| format!("creating the worktree failed: {e}"))??;
            (
                path.to_string_lossy().into_owned(),
                Some(branch),
                Some(base),
            )
        };
        let link = ParentLink {
            parent: place.me.clone(),
            root: place.root.clone(),
            depth: place.depth + 1,
            name: name.clone(),
            branch: branch.clone(),
            base,
        };
        self.store
            .append(
                &id,
                vec![EventKind::SessionCreated {
                    task: args.task,
                    model: spec.to_string(),
                    workspace: workspace.clone(),
                    base_url,
                    limits,
                    principal: origin.principal.clone(),
                    permissions: Some(permissions).filter(|p| !p.is_empty()),
                    role: Some("worker".into()),
                    fallbacks,
                    machine,
                    fleet: Some(Box::new(FleetLink {
                        spec: None,
                        parent: Some(link),
                    })),
                }]
                .into_iter()
                .chain((!grants.is_empty()).then_some(EventKind::SecretsGranted { grants }))
                .collect(),
            )
            .await
            .map_err(|e| e.to_string())?;
        self.start(&id, false).await.map_err(|e| e.to_string())?;
        let mut text = match branch {
            Some(b) => {
                format!("spawned worker {name} (session {id}) on branch {b}, in its own worktree")
            }
            None => format!("spawned worker {name} (session {id}), read-only in your workspace"),
        };
        if queued {
            text.push_str(&format!(
                "; queued: {live} workers are running, the fleet's limit at once, and it starts when one of them ends"
            ));
        }
        Ok(text)
    }

    /// The lock of one fleet's tree: spawns hold it from the limits check to
    /// the worker's start, a cancel while it reads the tree.
    pub(crate) fn fleet_lock(&self, root: &SessionId) -> Arc<tokio::sync::Mutex<()>> {
        match self.spawning.lock() {
            Ok(mut all) => all.entry(root.clone()).or_default().clone(),
            Err(_) => Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Waits (a little) until a worker's task has ended and its sandbox,
    /// with any background job of the worker, is gone: git must not read
    /// a worktree the worker can still change.
    async fn settled(&self, id: &SessionId) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let running = self
                .running
                .lock()
                .map(|r| r.contains_key(id))
                .unwrap_or(true);
            if !running {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "worker {id} has ended but its task is still stopping"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The exec-later list a merge is checked against: the built-in one,
    /// the admin's `exec_later_extra`, and the home its `~/` entries mean.
    fn merge_gate(&self, repo: &Path) -> Result<MergeGate, String> {
        let Some(pc) = &self.config.policy else {
            return Ok(MergeGate {
                extra: Vec::new(),
                home: None,
            });
        };
        let layers =
            flotilla_policy::Layers::load(&pc.paths, repo, &SessionPermissions::default(), &[])
                .map_err(|e| format!("policy: {e}"))?;
        let spec = layers
            .spec(repo, pc.home.as_deref())
            .map_err(|e| format!("policy: {e}"))?;
        Ok(MergeGate {
            extra: spec.exec_later_extra,
            home: pc.home.clone(),
        })
    }

    /// The mode a session's policy runs in, when policy is on.
    fn effective_mode(&self, id: &SessionId) -> Option<flotilla_policy::Mode> {
        let policies = self.policies.lock().ok()?;
        let p = policies.get(id)?;
        let stack = p.stack.read().ok()?;
        Some(stack.mode())
    }

    async fn wait_agents(
        &self,
        place: &Place,
        args: &str,
        stop: CancellationToken,
    ) -> Result<String, String> {
        let args: WaitArgs = parse("wait_agents", args)?;
        let any = match args.mode.as_deref() {
            None | Some("all") => false,
            Some("any") => true,
            Some(other) => return Err(format!("mode {other:?}: use all or any")),
        };
        let timeout = Duration::from_secs(
            args.timeout_secs
                .unwrap_or(DEFAULT_WAIT_SECS)
                .clamp(1, MAX_WAIT_SECS),
        );
        let children = self.children(place).await?;
        if children.is_empty() {
            return Err("you have no workers: start some with spawn_agent".into());
        }
        let mut targets: Vec<SessionId> = Vec::new();
        for who in &args.agents {
            targets.push(self.find_child(place, who).await?.id);
        }
        if targets.is_empty() {
            // By default, the workers not reported yet by an earlier wait.
            let reported = self.reported(&place.me).await?;
            targets = children
                .iter()
                .filter(|c| !reported.contains(&c.id))
                .map(|c| c.id.clone())
                .collect();
            if targets.is_empty() {
                return Err(
                    "every worker has been reported already: name the agents to wait for, or spawn more"
                        .into(),
                );
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let wanted: std::collections::HashSet<SessionId> = targets.iter().cloned().collect();
        let (done, pending) = self
            .await_ended(&place.root, &wanted, any, deadline, &stop)
            .await?;
        let mut out = String::new();
        for info in &done {
            out.push_str(&self.report(info).await);
            out.push('\n');
        }
        if !pending.is_empty() {
            let names: Vec<String> = pending.iter().map(label).collect();
            out.push_str(&format!(
                "still running after {}s: {}\n",
                timeout.as_secs(),
                names.join(", ")
            ));
        }
        Ok(out)
    }

    /// Waits until every agent of `wanted` (of the fleet `root`) has ended,
    /// or with `any` one of them, or the deadline passes; returns the ended
    /// ones and the others.
    pub(crate) async fn await_ended(
        &self,
        root: &SessionId,
        wanted: &std::collections::HashSet<SessionId>,
        any: bool,
        deadline: tokio::time::Instant,
        stop: &CancellationToken,
    ) -> Result<(Vec<SessionInfo>, Vec<SessionInfo>), String> {
        // Subscribed before the first look, so no ending is missed.
        let mut feed = self.store.subscribe();
        Ok(loop {
            // One read of the tree per look, however many workers.
            let tree = self
                .store
                .fleet_tree(root)
                .await
                .map_err(|e| e.to_string())?;
            let (done, pending): (Vec<SessionInfo>, Vec<SessionInfo>) = tree
                .into_iter()
                .filter(|s| wanted.contains(&s.id))
                .partition(|s| s.state.is_terminal());
            if pending.is_empty() || (any && !done.is_empty()) {
                break (done, pending);
            }
            // Sleep until one of them changes state (or the feed lagged),
            // then take every change already queued before looking again.
            let relevant = |r: &Result<
                Arc<flotilla_protocol::Event>,
                tokio::sync::broadcast::error::RecvError,
            >| match r {
                Ok(e) => {
                    matches!(e.event, EventKind::StateChanged { .. }) && wanted.contains(&e.session)
                }
                Err(_) => true,
            };
            let woke = loop {
                tokio::select! {
                    _ = stop.cancelled() => return Err("the wait was stopped: this session is stopping".into()),
                    _ = tokio::time::sleep_until(deadline) => break false,
                    r = feed.recv() => if relevant(&r) { break true },
                }
            };
            if !woke {
                break (done, pending);
            }
            while feed.try_recv().is_ok() {}
        })
    }

    /// Workers an earlier `wait_agents` of this agent reported, read from
    /// its log (each report starts `## NAME (SESSION): STATE`), so that the
    /// default survives a restart.
    async fn reported(
        &self,
        me: &SessionId,
    ) -> Result<std::collections::HashSet<SessionId>, String> {
        let events = flotilla_agent::load_all(&self.store, me)
            .await
            .map_err(|e| e.to_string())?;
        let mut waits = std::collections::HashSet::new();
        let mut out = std::collections::HashSet::new();
        for e in &events {
            match &e.event {
                EventKind::ToolProposed { call } if call.name == "wait_agents" => {
                    waits.insert(call.id.clone());
                }
                EventKind::ToolFinished {
                    call_id,
                    output,
                    is_error: false,
                    ..
                } if waits.contains(call_id) => {
                    for line in output.lines().filter(|l| l.starts_with("## ")) {
                        let id = line
                            .split_once(" (")
                            .and_then(|(_, rest)| rest.split_once(')'))
                            .and_then(|(id, _)| SessionId::parse(id).ok());
                        out.extend(id);
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// A finished worker as the planner sees it: never its transcript.
    async fn report(&self, info: &SessionInfo) -> String {
        let mut s = format!("## {} ({}): {}", label(info), info.id, info.state.as_str());
        match info.state {
            SessionState::Completed => {
                let answer = info.final_answer.clone().unwrap_or_default();
                s.push_str(&format!(
                    "\nfinal answer: {}",
                    clip(&answer, MAX_REPORT_CHARS)
                ));
            }
            _ => {
                if let Some(r) = &info.reason {
                    s.push_str(&format!("\nreason: {r}"));
                }
            }
        }
        if let Some((wt, link)) = self.worktree_of(info).await {
            if let Err(e) = self.settled(&info.id).await {
                s.push_str(&format!("\nchanges: unknown ({e})"));
                return s;
            }
            let summary = tokio::task::spawn_blocking(move || diff_summary(&wt, &link))
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
            match summary {
                Ok(text) if text.trim().is_empty() => s.push_str("\nchanges: none"),
                Ok(text) => s.push_str(&format!("\nchanges:\n{}", text.trim_end())),
                Err(e) => s.push_str(&format!("\nchanges: unknown ({e})")),
            }
        }
        s
    }

    /// A worker's worktree and link, when it has one.
    async fn worktree_of(&self, info: &SessionInfo) -> Option<(Worktree, ParentLink)> {
        let events = self.store.events(&info.id, 0, 1).await.ok()?;
        let link = link_of(&events)?.parent?;
        link.branch.as_ref()?;
        // Only the planner's own workers have worktrees of its repository.
        if link.parent != link.root {
            return None;
        }
        let root = self.get(&link.root).await.ok()?;
        let root_events = self.store.events(&link.root, 0, 1).await.ok()?;
        let spec = link_of(&root_events)?.spec?;
        Some((
            Worktree {
                repo: Repo {
                    path: PathBuf::from(root.workspace),
                    config_id: spec.repo_config,
                },
                path: PathBuf::from(&info.workspace),
            },
            link,
        ))
    }

    async fn list_agents(&self, place: &Place) -> Result<String, String> {
        let children = self.children(place).await?;
        if children.is_empty() {
            return Ok("no workers yet".into());
        }
        let mut out = String::from("name\tsession\tstate\tturns\ttokens\tcost_usd\tbranch\n");
        for c in &children {
            let branch = self
                .worktree_of(c)
                .await
                .and_then(|(_, l)| l.branch)
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\t{}\t{:.4}\t{}\n",
                label(c),
                c.id,
                c.state.as_str(),
                c.turns,
                c.prompt_tokens + c.completion_tokens,
                c.cost_usd,
                branch
            ));
        }
        Ok(out)
    }

    async fn send_message(&self, place: &Place, args: &str) -> Result<String, String> {
        let args: MessageArgs = parse("send_message", args)?;
        if args.text.trim().is_empty() {
            return Err("the message is empty".into());
        }
        if args.text.chars().count() > MAX_MESSAGE_CHARS {
            return Err(format!(
                "the message is longer than {MAX_MESSAGE_CHARS} characters: say it shorter, or put it in a file the worker can read"
            ));
        }
        let child = self.find_child(place, &args.agent).await?;
        if child.state.is_terminal() {
            return Err(format!(
                "{} has ended ({}): it gets no more messages",
                label(&child),
                child.state.as_str()
            ));
        }
        let me = self.get(&place.me).await.map_err(|e| e.to_string())?;
        let from = match &me.name {
            Some(n) => format!("your parent agent {n} ({})", place.me),
            None => format!("your planner ({})", place.me),
        };
        self.store
            .append_one(
                &child.id,
                EventKind::MessageReceived {
                    from,
                    text: args.text,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!(
            "sent to {}: it reads it at its next turn (if it is not finishing already)",
            label(&child)
        ))
    }

    async fn cancel_agent(self: &Arc<Self>, place: &Place, args: &str) -> Result<String, String> {
        let args: AgentArg = parse("cancel_agent", args)?;
        let child = self.find_child(place, &args.agent).await?;
        let info = self
            .cancel(&child.id, &format!("agent {}", place.me))
            .await
            .map_err(|e| e.to_string())?;
        Ok(format!("{}: {}", label(&info), info.state.as_str()))
    }

    async fn merge_worker(&self, place: &Place, args: &str) -> Result<String, String> {
        let args: AgentArg = parse("merge_worker", args)?;
        if place.depth > 0 {
            return Err("only the planner merges workers' branches".into());
        }
        let child = self.find_child(place, &args.agent).await?;
        self.merge_child(child).await
    }

    /// Merges a completed worker's branch into the planner's workspace.
    pub(crate) async fn merge_child(&self, child: SessionInfo) -> Result<String, String> {
        if child.state != SessionState::Completed {
            return Err(format!(
                "{} has not completed (it is {}): only a completed worker is merged",
                label(&child),
                child.state.as_str()
            ));
        }
        let Some((wt, link)) = self.worktree_of(&child).await else {
            return Err(format!(
                "{} worked read-only in your workspace: there is nothing to merge",
                label(&child)
            ));
        };
        self.settled(&child.id).await?;
        let name = label(&child);
        let task = clip(&child.task, 200);
        let gate = self.merge_gate(&wt.repo.path)?;
        // Workers it started still run in its worktree: keep it for them.
        let tree = self
            .store
            .fleet_tree(&link.root)
            .await
            .map_err(|e| e.to_string())?;
        let busy = tree
            .iter()
            .any(|s| s.parent.as_ref() == Some(&child.id) && !s.state.is_terminal());
        tokio::task::spawn_blocking(move || {
            // Merged before, and its worktree removed (a restart cut the
            // merge's record short, or the planner asks again).
            if !wt.path.exists() {
                return if merged_already(&wt, &link)? {
                    Ok(format!("{name} is already merged"))
                } else {
                    Err(format!("{name}'s worktree is gone: its branch {} is not merged; a person can merge it", link.branch.as_deref().unwrap_or("?")))
                };
            }
            let merged = merge(&wt, &link, &name, &task, &gate)?;
            // Merged: its branch keeps the work, its worktree goes (a fleet
            // of a thousand workers must not leave a thousand checkouts).
            if !busy {
                if let Err(e) = remove_worktree(&wt) {
                    tracing::warn!(worktree = %wt.path.display(), error = %e, "removing a merged worktree failed");
                }
            }
            Ok(merged)
        })
        .await
        .map_err(|e| format!("the merge failed: {e}"))?
    }
}

/// Whether the worker's branch is already in the planner's history.
fn merged_already(wt: &Worktree, link: &ParentLink) -> Result<bool, String> {
    let branch = link.branch.as_deref().ok_or("no branch")?;
    let out = output(git_repo(&wt.repo)?.args([
        "merge-base",
        "--is-ancestor",
        &format!("refs/heads/{branch}"),
        "HEAD",
    ]))?;
    Ok(out.status.success())
}

/// Deletes a merged worker's worktree (symlinks in it are removed, never
/// followed) and drops git's record of it.
fn remove_worktree(wt: &Worktree) -> Result<(), String> {
    match std::fs::remove_dir_all(&wt.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    run(git_repo(&wt.repo)?.args(["worktree", "prune"])).map(|_| ())
}

fn label(info: &SessionInfo) -> String {
    info.name.clone().unwrap_or_else(|| info.id.to_string())
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// The planner's repository as the fleet recorded it at its start.
#[derive(Clone, Debug)]
pub(crate) struct Repo {
    /// Its top (the planner's workspace).
    pub(crate) path: PathBuf,
    /// `DEV:INODE` of its `.git/config` when the fleet started: that file
    /// is read-only in the planner's sandbox; a different one was made by
    /// an agent.
    pub(crate) config_id: Option<String>,
}

/// `DEV:INODE` of `<workspace>/.git/config`, if the workspace is the top of
/// a repository with a plain `.git` folder.
pub(crate) fn config_identity(workspace: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let gitdir = workspace.join(".git");
    if !std::fs::symlink_metadata(&gitdir).ok()?.is_dir() {
        return None;
    }
    let m = std::fs::symlink_metadata(gitdir.join("config")).ok()?;
    m.is_file().then(|| format!("{}:{}", m.dev(), m.ino()))
}

/// A worker's checkout, as the daemon addresses it.
struct Worktree {
    /// The planner's repository.
    repo: Repo,
    /// The worktree.
    path: PathBuf,
}

/// `git` as the daemon runs it: no hooks, no fsmonitor, no prompts, no
/// pager, no user or system config that could name a program, no
/// background maintenance, and an identity for its commits. The caller
/// names the repository (`--git-dir`, `--work-tree`): git never discovers
/// one from a folder an agent can write.
fn git(dir: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_COMMON_DIR")
        .env_remove("GIT_CEILING_DIRECTORIES")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .env_remove("GIT_CONFIG_COUNT")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "core.pager=cat",
            "-c",
            "core.quotePath=false",
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "-c",
            "submodule.recurse=false",
            "-c",
            "user.name=flotilla",
            "-c",
            "user.email=flotilla@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .stdin(std::process::Stdio::null());
    cmd
}

/// The longest one git command of the daemon may take: a repository an
/// agent prepared (a FIFO where git reads, a huge file) must not hang the
/// fleet.
const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs git to its end or kills it at [`GIT_TIMEOUT`].
fn output(cmd: &mut std::process::Command) -> Result<std::process::Output, String> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run git: {e}"))?;
    // Drained on threads so that a chatty git never blocks on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + GIT_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "git took longer than {}s and was stopped",
                    GIT_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for git: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

fn run(cmd: &mut std::process::Command) -> Result<String, String> {
    let out = output(cmd)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "git failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The planner's git folder, as the daemon trusts it: `<repo>/.git` must
/// be a plain folder (not a file: a linked worktree; not a symlink), its
/// `config` the very file the fleet recorded at its start (read-only in
/// the planner's sandbox), with no `include` (which could name a file an
/// agent writes) and no per-worktree config (`extensions.worktreeConfig`
/// reads files an agent writes). Every git call also gets
/// `GIT_COMMON_DIR` set to this folder, so a `commondir` file anywhere
/// cannot send git (and its config) elsewhere.
fn trusted_gitdir(repo: &Repo) -> Result<PathBuf, String> {
    let Some(expected) = &repo.config_id else {
        return Err(format!(
            "{} was not a git repository with a .git folder when the fleet started: workers can only share it (workspace: shared)",
            repo.path.display()
        ));
    };
    let gitdir = repo.path.join(".git");
    if config_identity(&repo.path).as_ref() != Some(expected) {
        return Err(format!(
            "{}/config is not the file that was there when the fleet started: refusing to run git there",
            gitdir.display()
        ));
    }
    if std::fs::symlink_metadata(gitdir.join("worktrees")).is_ok_and(|m| !m.is_dir()) {
        return Err(format!(
            "{}/worktrees is not a plain folder: refusing to run git there",
            gitdir.display()
        ));
    }
    let listed = run(git(&repo.path)
        .args(["config", "--no-includes", "--list", "--file"])
        .arg(gitdir.join("config")))?;
    for line in listed.lines() {
        let key = line.split('=').next().unwrap_or("").to_ascii_lowercase();
        let value = line
            .split_once('=')
            .map(|(_, v)| v.trim().to_ascii_lowercase());
        if key.starts_with("include.") || key.starts_with("includeif.") {
            return Err(format!(
                "{}/config includes other files ({key}): refusing to run git there",
                gitdir.display()
            ));
        }
        if key == "extensions.worktreeconfig" && value.as_deref() != Some("false") {
            return Err(format!(
                "{}/config enables per-worktree config files, which agents can write: refusing to run git there",
                gitdir.display()
            ));
        }
    }
    Ok(gitdir)
}

/// `git` for the planner's repository, named explicitly.
fn git_repo(repo: &Repo) -> Result<std::process::Command, String> {
    let gitdir = trusted_gitdir(repo)?;
    let mut cmd = git(&repo.path);
    cmd.env("GIT_COMMON_DIR", &gitdir)
        .arg("--git-dir")
        .arg(&gitdir)
        .arg("--work-tree")
        .arg(&repo.path);
    Ok(cmd)
}

/// The worktree's admin folder inside the main repository (its HEAD and
/// index; the common folder is forced to the repository's): whatever the
/// worktree's own `.git` file says (the worker can write that file).
fn admin_dir(repo: &Repo, path: &Path) -> Result<(PathBuf, PathBuf), String> {
    let base = path
        .file_name()
        .ok_or_else(|| format!("{} has no name", path.display()))?;
    let gitdir = trusted_gitdir(repo)?;
    let admin = gitdir.join("worktrees").join(base);
    match std::fs::symlink_metadata(&admin) {
        Ok(m) if m.is_dir() => Ok((gitdir, admin)),
        _ => Err(format!(
            "{} is not a worktree's admin folder",
            admin.display()
        )),
    }
}

/// A nested `.git` below the worktree's top (a repository or a gitlink of
/// the worker's making) would have git run that repository's own config
/// (`git add` looks into submodules). Nothing of the kind is allowed.
fn no_nested_git(top: &Path) -> Result<(), String> {
    let mut stack = vec![top.to_path_buf()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
            seen += 1;
            if seen > 1_000_000 {
                return Err(format!("{} holds over a million files", top.display()));
            }
            let name = entry.file_name();
            let is_git = name.to_string_lossy().eq_ignore_ascii_case(".git");
            if is_git && dir != top {
                return Err(format!(
                    "the worker left a git repository at {}: flotilla does not run git over it",
                    entry.path().display()
                ));
            }
            // Not followed: a symlink is content, never a folder to walk.
            let kind = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", entry.path().display()))?;
            if kind.is_dir() && !is_git {
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// `git` for a worktree: its admin folder, the repository's common
/// folder and the work tree, all named.
fn git_in(wt: &Worktree) -> Result<std::process::Command, String> {
    let (common, admin) = admin_dir(&wt.repo, &wt.path)?;
    let mut cmd = git(&wt.repo.path);
    cmd.env("GIT_COMMON_DIR", &common)
        .arg("--git-dir")
        .arg(&admin)
        .arg("--work-tree")
        .arg(&wt.path);
    Ok(cmd)
}

/// Stages everything the worker did, after checking the worktree: no
/// nested repository, and the repository's own gitlinks (submodules)
/// marked skip-worktree, so that `git add` never looks inside one.
fn stage(wt: &Worktree) -> Result<(), String> {
    no_nested_git(&wt.path)?;
    let listed = output(git_in(wt)?.args(["ls-files", "--stage", "-z"]))?;
    let gitlinks: Vec<&[u8]> = listed
        .stdout
        .split(|b| *b == 0)
        .filter(|e| e.starts_with(b"160000 "))
        .filter_map(|e| e.iter().position(|b| *b == b'\t').map(|i| &e[i + 1..]))
        .collect();
    if !gitlinks.is_empty() {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = git_in(wt)?;
        cmd.args(["update-index", "--skip-worktree", "--"]);
        for g in gitlinks {
            cmd.arg(std::ffi::OsStr::from_bytes(g));
        }
        run(&mut cmd)?;
    }
    run(git_in(wt)?.args(["add", "--all"])).map(|_| ())
}

/// Creates the worktree at `path` on a new `branch` from the repository's
/// HEAD; returns that commit.
fn add_worktree(repo: &Repo, path: &Path, branch: &str) -> Result<String, String> {
    let base =
        run(git_repo(repo)?.args(["rev-parse", "--verify", "HEAD^{commit}"])).map_err(|e| {
            format!(
                "{} has no commit to start workers from ({e})",
                repo.path.display()
            )
        })?;
    let base = base.trim().to_owned();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    run(git_repo(repo)?
        .args(["worktree", "add", "--quiet", "-b", branch])
        .arg(path)
        .arg(&base))?;
    // The admin folder must be where `admin_dir` will look for it.
    let (_, admin) = admin_dir(repo, path)?;
    if !admin.join("HEAD").is_file() {
        return Err(format!(
            "git put the worktree's admin folder elsewhere than {}",
            admin.display()
        ));
    }
    Ok(base)
}

/// What a worker changed since its base: `git diff --stat`, uncommitted
/// work and new files included.
fn diff_summary(wt: &Worktree, link: &ParentLink) -> Result<String, String> {
    let base = link.base.as_deref().unwrap_or("HEAD");
    stage(wt)?;
    run(git_in(wt)?.args(["diff", "--cached", "--stat", base]))
}

/// What the exec-later list is, for a merge.
struct MergeGate {
    /// The admin's extra globs.
    extra: Vec<String>,
    /// The user's home, for `~/` entries.
    home: Option<PathBuf>,
}

/// Why a commit may not be merged by an agent: a file that runs later
/// (added, changed or deleted), a nested repository (gitlink), or a
/// symlink out of the repository. Reads `git diff --raw -z` (exact bytes,
/// no quoting, no rename pairing that would hide the old name).
fn unmergeable(
    repo: &Repo,
    base: &str,
    commit: &str,
    gate_list: &MergeGate,
) -> Result<Vec<String>, String> {
    use std::os::unix::ffi::OsStrExt;
    let mut cmd = git_repo(repo)?;
    cmd.args(["diff", "--raw", "-z", "--no-renames", "--no-abbrev"])
        .arg(format!("{base}...{commit}"));
    let out = output(&mut cmd)?;
    if !out.status.success() {
        return Err(format!(
            "git failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let gate =
        flotilla_policy::gate::ExecLaterGate::new(&gate_list.extra).map_err(|e| e.to_string())?;
    let mut bad = Vec::new();
    let mut fields = out.stdout.split(|b| *b == 0).filter(|f| !f.is_empty());
    while let Some(meta) = fields.next() {
        let Some(path) = fields.next() else { break };
        let meta = String::from_utf8_lossy(meta);
        // ":100644 100644 <old> <new> M"
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        let dst_mode = parts.get(1).copied().unwrap_or("");
        let dst_sha = parts.get(3).copied().unwrap_or("");
        let rel = std::ffi::OsStr::from_bytes(path);
        let shown = String::from_utf8_lossy(path).into_owned();
        if gate
            .check(&repo.path.join(rel), gate_list.home.as_deref())
            .is_some()
        {
            bad.push(format!("{shown} (runs later)"));
        } else if dst_mode == "160000" {
            bad.push(format!("{shown} (a nested repository)"));
        } else if dst_mode == "120000" {
            let target = run(git_repo(repo)?.args(["cat-file", "blob", dst_sha]))?;
            if link_escapes(Path::new(rel), Path::new(target.trim_end_matches('\n'))) {
                bad.push(format!("{shown} (a symlink that may leave the repository)"));
            }
        }
    }
    Ok(bad)
}

/// Whether a symlink at `rel` (relative to the repository) whose target is
/// `target` may point outside the repository. Only plain names, with `..`
/// only leading and no more of them than the link is deep, pass: a `..`
/// after a name could climb out through another symlink.
fn link_escapes(rel: &Path, target: &Path) -> bool {
    use std::path::Component;
    let depth = rel.parent().map(|p| p.components().count()).unwrap_or(0);
    let mut ups = 0usize;
    let mut names = 0usize;
    for c in target.components() {
        match c {
            Component::ParentDir if names == 0 => ups += 1,
            Component::Normal(_) => names += 1,
            _ => return true,
        }
    }
    names == 0 || ups > depth
}

/// Commits the worker's changes on its branch, then merges that commit
/// (checked first, by id) into the planner's repository; on a conflict,
/// aborts and names the files.
fn merge(
    wt: &Worktree,
    link: &ParentLink,
    name: &str,
    task: &str,
    gate: &MergeGate,
) -> Result<String, String> {
    let branch = link
        .branch
        .as_deref()
        .ok_or_else(|| format!("{name} has no branch"))?;
    stage(wt)?;
    let staged = output(git_in(wt)?.args(["diff", "--cached", "--quiet"]))?;
    if !staged.status.success() {
        run(git_in(wt)?
            .args(["commit", "--quiet", "--no-verify", "-m"])
            .arg(format!("flotilla worker {name}: {task}")))?;
    }
    let base = link.base.as_deref().unwrap_or("HEAD");
    // One commit id, checked and merged: the branch cannot move between.
    let commit = run(git_repo(&wt.repo)?.args([
        "rev-parse",
        "--verify",
        &format!("refs/heads/{branch}^{{commit}}"),
    ]))?;
    let commit = commit.trim().to_owned();
    let ahead =
        run(git_repo(&wt.repo)?.args(["rev-list", "--count", &format!("{base}..{commit}")]))?;
    if ahead.trim() == "0" {
        return Ok(format!("{name} changed nothing: nothing to merge"));
    }
    // Files that run later (shell startup files, git and CI config, hooks,
    // .envrc...) always ask a person when an agent writes them; a merge
    // must not carry them in unasked. Nor a nested repository, nor a
    // symlink that leaves the repository.
    let bad = unmergeable(&wt.repo, base, &commit, gate)?;
    if !bad.is_empty() {
        return Err(format!(
            "{name}'s branch {branch} changes what flotilla does not merge for an agent: {}. A person must review and merge the branch",
            bad.join(", ")
        ));
    }
    let merged = output(
        git_repo(&wt.repo)?
            .args(["merge", "--no-ff", "--no-edit", "-m"])
            .arg(format!("merge flotilla worker {name} ({branch})"))
            .arg(&commit),
    )?;
    if merged.status.success() {
        let stat = run(git_repo(&wt.repo)?.args(["diff", "--stat", "HEAD^1", "HEAD"]))?;
        return Ok(format!("merged {name} ({branch}):\n{}", stat.trim_end()));
    }
    // The index alone (never the work tree, where a submodule's own git
    // would be asked): the conflicted paths.
    let unmerged = output(git_repo(&wt.repo)?.args(["ls-files", "-u", "-z"]))?;
    let mut conflicts: Vec<String> = unmerged
        .stdout
        .split(|b| *b == 0)
        .filter_map(|e| {
            e.iter()
                .position(|b| *b == b'\t')
                .map(|i| String::from_utf8_lossy(&e[i + 1..]).into_owned())
        })
        .collect();
    conflicts.dedup();
    if conflicts.is_empty() {
        // Refused before starting (local changes in the way, ...).
        return Err(format!(
            "merging {name} was refused, your workspace is unchanged: {}",
            String::from_utf8_lossy(&merged.stderr).trim()
        ));
    }
    let _ = run(git_repo(&wt.repo)?.args(["merge", "--abort"]));
    Err(format!(
        "merging {name} ({branch}) conflicts in: {}. The merge was aborted and your workspace is unchanged; decide: merge the others first, ask a worker to redo its change on top of yours, or edit the files yourself",
        conflicts.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_that_may_leave_the_repository_are_caught() {
        let esc = |rel: &str, target: &str| link_escapes(Path::new(rel), Path::new(target));
        // Inside.
        assert!(!esc("a", "b"));
        assert!(!esc("d/a", "../b"));
        assert!(!esc("d/e/a", "../../b/c"));
        // Out, or possibly out through another link.
        assert!(esc("a", "../b"));
        assert!(esc("d/a", "../../b"));
        assert!(esc("a", "/etc/passwd"));
        assert!(esc("x", "u/u/../.."));
        assert!(esc("x", "."));
        assert!(esc("x", ""));
        assert!(esc("d/x", "./b"));
    }

    #[test]
    fn nested_repositories_are_found_and_symlinks_not_followed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let top = dir.path();
        std::fs::write(top.join(".git"), "gitdir: x\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(top.join("a/b")).unwrap_or_else(|e| panic!("{e}"));
        assert!(no_nested_git(top).is_ok());
        std::os::unix::fs::symlink("/", top.join("a/root")).unwrap_or_else(|e| panic!("{e}"));
        assert!(no_nested_git(top).is_ok(), "followed a symlink");
        std::fs::create_dir_all(top.join("a/b/.GIT")).unwrap_or_else(|e| panic!("{e}"));
        let err = no_nested_git(top).err().unwrap_or_default();
        assert!(err.contains("left a git repository"), "{err}");
    }
}
