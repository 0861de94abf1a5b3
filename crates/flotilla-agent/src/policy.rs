//! The seam between the loop and governance: before a tool runs, the loop
//! asks a [`CallPolicy`] (the fleet implements it with `flotilla-policy`),
//! records the decision, and on `ask` waits for a person's answer.

use flotilla_protocol::{PolicyVerdict, ToolCall};
use futures::future::BoxFuture;

/// A decision on one call, as the loop records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// allow, ask or deny.
    pub verdict: PolicyVerdict,
    /// Why.
    pub reason: String,
    /// The rule that decided.
    pub rule: Option<String>,
    /// Its layer (or `mode`, `gate`, `tier`).
    pub layer: Option<String>,
    /// The call in one line.
    pub summary: String,
    /// The allow rule `approve --always` would add.
    pub suggested_rule: String,
}

/// What a call that asks waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovalAsk {
    /// Id of the approval.
    pub approval_id: String,
    /// Id of the call.
    pub call_id: String,
    /// The tool.
    pub tool: String,
    /// The call in one line.
    pub summary: String,
    /// Why it asks.
    pub reason: String,
    /// The allow rule `--always` would add.
    pub suggested_rule: String,
}

/// A person's answer. The answer is already in the session's log when the
/// waiting loop gets it (the supervisor appends it first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApprovalAnswer {
    /// Run the call.
    Approved,
    /// Do not; the model is told the reason.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Governance of one session's tool calls.
pub trait CallPolicy: Send + Sync {
    /// Decides a call (whose arguments are valid JSON). Must not block long:
    /// it runs on the loop's task.
    fn decide(&self, call: &ToolCall, args: &serde_json::Value) -> Verdict;
    /// Whether the model is offered `tool` at all.
    fn offers_tool(&self, tool: &str) -> bool;
    /// Registers the approval and waits for its answer. Waiting never
    /// blocks other sessions.
    fn wait_approval(&self, ask: ApprovalAsk) -> BoxFuture<'static, ApprovalAnswer>;
    /// The session's own allow rules (`approve --always session`) changed.
    fn session_rules_changed(&self, session_allow: &[String]);
    /// Whether policy denies reading `path` (absolute): searches skip it.
    fn read_denied(&self, _path: &std::path::Path) -> bool {
        false
    }
}

/// A fresh approval id: short enough to type.
pub fn new_approval_id() -> String {
    format!("ap-{:08x}", rand::random::<u32>())
}
