//! Governance of tool calls: permission modes, allow/ask/deny rules in the
//! Claude Code dialect, layered admin > command line > project > user, the
//! admin's hard-deny, the exec-later write gate and capability tiers.
//!
//! Decisions are pure: [`engine::Engine::decide`] reads nothing but its
//! arguments. Everything that touches the filesystem (loading layers,
//! resolving symlinks of a call's paths) happens before, in [`request`] and
//! [`config`].

pub mod config;
pub mod engine;
pub mod gate;
pub mod mode;
pub mod request;
pub mod rule;
pub mod shell;

pub use config::{ConfigError, LayerPaths, Layers};
pub use engine::{CallCheck, Decision, Engine, EngineSpec, Item, Layer, PolicyStack, Principal};
pub use mode::Mode;
pub use rule::{Action, Rule};
