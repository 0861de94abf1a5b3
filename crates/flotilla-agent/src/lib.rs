//! The loop of one flotilla agent (model <-> tools) and the built-in tools.
//!
//! [`run_agent`] drives one session from its log: it rebuilds the
//! conversation from the events ([`Conversation`]), asks the model, runs the
//! tools it proposes through [`tools`], and appends every step to the store
//! before it takes effect.

mod agent;
mod conversation;
pub mod policy;
pub mod tools;

pub use agent::{
    default_system_prompt, load_all, run_agent, AgentError, AgentExit, AgentRun, AgentSettings,
    EventFilter, HostTools,
};
pub use conversation::{estimate_tokens, interrupted_message, ApprovalState, Conversation};
pub use policy::{ApprovalAnswer, ApprovalAsk, CallPolicy, Verdict};
