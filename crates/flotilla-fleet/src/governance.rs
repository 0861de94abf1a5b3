//! Governance of the sessions: each session's policy engine (built from
//! the layers), and the approvals queue.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use flotilla_agent::{ApprovalAnswer, ApprovalAsk, CallPolicy, Verdict};
use flotilla_policy::{request, Engine, LayerPaths, Layers, PolicyStack, Principal};
use flotilla_protocol::{ApprovalInfo, SessionId, SessionPermissions, ToolCall};
use tokio::sync::oneshot;

/// Where the policy layers are, for every session.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// The admin and user files.
    pub paths: LayerPaths,
    /// The user's home folder (`~/` in rules, home-anchored gate entries).
    pub home: Option<PathBuf>,
}

/// Denies an approval nobody answered in time (the fleet's escalation):
/// (approval id, reason).
pub(crate) type Escalate = Arc<dyn Fn(String, String) + Send + Sync>;

/// A fleet worker's side of the approvals queue.
#[derive(Clone)]
pub(crate) struct WorkerApprovals {
    /// The worker's name.
    pub(crate) agent: String,
    /// Its planner.
    pub(crate) fleet: SessionId,
    /// How long an approval waits for a person.
    pub(crate) timeout: std::time::Duration,
    /// What happens then.
    pub(crate) escalate: Escalate,
}

/// What the daemon knows about a principal, for tier checks.
pub type PrincipalLookup = Arc<dyn Fn(&str) -> Option<Principal> + Send + Sync>;

pub(crate) struct Pending {
    pub(crate) info: ApprovalInfo,
    pub(crate) answer: Option<oneshot::Sender<ApprovalAnswer>>,
}

/// The approvals waiting for a person, daemon-wide.
#[derive(Default)]
pub(crate) struct ApprovalQueue {
    pub(crate) pending: Mutex<HashMap<String, Pending>>,
}

impl ApprovalQueue {
    pub(crate) fn list(&self) -> Vec<ApprovalInfo> {
        let mut out: Vec<ApprovalInfo> = self
            .pending
            .lock()
            .map(|p| p.values().map(|v| v.info.clone()).collect())
            .unwrap_or_default();
        out.sort_by_key(|a| a.requested_ms);
        out
    }

    pub(crate) fn get(&self, id: &str) -> Option<ApprovalInfo> {
        self.pending
            .lock()
            .ok()
            .and_then(|p| p.get(id).map(|v| v.info.clone()))
    }

    pub(crate) fn take(&self, id: &str) -> Option<Pending> {
        self.pending.lock().ok().and_then(|mut p| p.remove(id))
    }

    /// Returns a taken approval whose answer could not be recorded.
    pub(crate) fn put_back(&self, id: &str, pending: Pending) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.to_owned(), pending);
        }
    }

    pub(crate) fn forget_session(&self, session: &SessionId) {
        if let Ok(mut p) = self.pending.lock() {
            p.retain(|_, v| &v.info.session != session);
        }
    }
}

/// Builds a session's engine from its layers.
pub fn build_engine(
    config: &PolicyConfig,
    workspace: &Path,
    cli: &SessionPermissions,
    session_allow: &[String],
) -> Result<Engine, String> {
    let layers = Layers::load(&config.paths, workspace, cli, session_allow)
        .map_err(|e| format!("policy: {e}"))?;
    let spec = layers
        .spec(workspace, config.home.as_deref())
        .map_err(|e| format!("policy: {e}"))?;
    Engine::new(spec).map_err(|e| format!("policy: {e}"))
}

/// A session's policy stack: its own layers, intersected with those of every
/// ancestor in its fleet (each built for this session's workspace), so a
/// worker never gets more than its parent.
pub fn build_stack(
    config: &PolicyConfig,
    workspace: &Path,
    cli: &SessionPermissions,
    session_allow: &[String],
    ancestors: &[SessionPermissions],
) -> Result<PolicyStack, String> {
    let mut stack = PolicyStack::new(Arc::new(build_engine(
        config,
        workspace,
        cli,
        session_allow,
    )?));
    for a in ancestors {
        let parent = PolicyStack::new(Arc::new(build_engine(config, workspace, a, &[])?));
        stack = parent.intersect(&stack);
    }
    Ok(stack)
}

/// One session's policy: its engine stack and its way to the approvals queue.
pub(crate) struct SessionPolicy {
    pub(crate) session: SessionId,
    pub(crate) principal: String,
    pub(crate) workspace: PathBuf,
    pub(crate) cli: SessionPermissions,
    /// Each fleet ancestor's command-line layer, nearest first.
    pub(crate) ancestors: Vec<SessionPermissions>,
    pub(crate) config: PolicyConfig,
    pub(crate) session_allow: Mutex<Vec<String>>,
    pub(crate) stack: RwLock<PolicyStack>,
    pub(crate) lookup: Option<PrincipalLookup>,
    pub(crate) queue: Arc<ApprovalQueue>,
    /// Set for a fleet worker: its approvals are tagged and escalate.
    pub(crate) worker: Option<WorkerApprovals>,
}

impl SessionPolicy {
    /// Rebuilds the engine from the layers (after a rule was added). A
    /// layer that became invalid keeps the previous engine, loudly.
    pub(crate) fn reload(&self) {
        // Held through read, build and swap: two reloads at once (a session
        // rule and another session's user rule) cannot swap in order
        // reversed and lose the newer rule.
        let Ok(allow) = self.session_allow.lock() else {
            return;
        };
        match build_stack(
            &self.config,
            &self.workspace,
            &self.cli,
            &allow,
            &self.ancestors,
        ) {
            Ok(stack) => {
                if let Ok(mut s) = self.stack.write() {
                    *s = stack;
                }
            }
            Err(e) => {
                tracing::error!(session = %self.session, error = %e, "policy layers no longer load; keeping the previous policy")
            }
        }
    }

    fn principal(&self) -> Principal {
        self.lookup
            .as_ref()
            .and_then(|l| l(&self.principal))
            .unwrap_or_else(|| Principal {
                name: self.principal.clone(),
                ..Principal::default()
            })
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl CallPolicy for SessionPolicy {
    fn decide(&self, call: &ToolCall, args: &serde_json::Value) -> Verdict {
        let check = request::check_tool_call(
            &call.name,
            args,
            &self.workspace,
            self.config.home.as_deref(),
        );
        let stack = match self.stack.read() {
            Ok(s) => s.clone(),
            Err(_) => PolicyStack::default(),
        };
        let d = stack.decide(&check, &self.principal(), now_ms());
        Verdict {
            verdict: d.verdict,
            reason: d.reason,
            rule: d.rule,
            layer: d.layer,
            summary: check.summary,
            suggested_rule: d.item.unwrap_or_else(|| call.name.clone()),
        }
    }

    fn offers_tool(&self, tool: &str) -> bool {
        self.stack
            .read()
            .map(|s| s.offers_tool(tool))
            .unwrap_or(true)
    }

    fn wait_approval(
        &self,
        ask: ApprovalAsk,
    ) -> futures::future::BoxFuture<'static, ApprovalAnswer> {
        let (tx, rx) = oneshot::channel();
        let info = ApprovalInfo {
            approval_id: ask.approval_id.clone(),
            session: self.session.clone(),
            principal: self.principal.clone(),
            call_id: ask.call_id,
            tool: ask.tool,
            summary: ask.summary,
            reason: ask.reason,
            suggested_rule: ask.suggested_rule,
            requested_ms: now_ms(),
            agent: self.worker.as_ref().map(|w| w.agent.clone()),
            fleet: self.worker.as_ref().map(|w| w.fleet.clone()),
            escalates_ms: self
                .worker
                .as_ref()
                .map(|w| now_ms() + w.timeout.as_millis() as i64),
        };
        if let Some(w) = &self.worker {
            let (id, timeout, escalate) = (ask.approval_id.clone(), w.timeout, w.escalate.clone());
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                escalate(
                    id,
                    format!(
                        "nobody answered within {}s, so the fleet's escalation denied it",
                        timeout.as_secs()
                    ),
                );
            });
        }
        if let Ok(mut p) = self.queue.pending.lock() {
            p.insert(
                ask.approval_id,
                Pending {
                    info,
                    answer: Some(tx),
                },
            );
        }
        Box::pin(async move {
            rx.await.unwrap_or(ApprovalAnswer::Refused {
                reason: "the approval was withdrawn".into(),
            })
        })
    }

    fn read_denied(&self, path: &Path) -> bool {
        let check = flotilla_policy::CallCheck {
            tool: "read_file".into(),
            items: vec![flotilla_policy::Item {
                action: flotilla_policy::Action::Read,
                command: String::new(),
                path: path.display().to_string(),
                domain: String::new(),
                implied: false,
            }],
            opaque: None,
            summary: String::new(),
        };
        let stack = match self.stack.read() {
            Ok(s) => s.clone(),
            Err(_) => return true,
        };
        stack.decide(&check, &self.principal(), now_ms()).verdict
            == flotilla_protocol::PolicyVerdict::Deny
    }

    fn session_rules_changed(&self, session_allow: &[String]) {
        if let Ok(mut a) = self.session_allow.lock() {
            *a = session_allow.to_vec();
        }
        self.reload();
    }
}
