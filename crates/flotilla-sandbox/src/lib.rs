//! Per-session Linux sandboxes.

pub mod landlock_rules;
pub mod proxy;
pub mod seccomp;
