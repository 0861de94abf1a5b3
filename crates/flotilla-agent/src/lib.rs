//! The loop of one flotilla agent (model <-> tools) and the built-in tools.

pub mod tools;
