//! Per-session Linux sandboxes for flotilla.
//!
//! A [`Sandbox`] is one long-lived init process holding user, mount, pid,
//! net, ipc, uts and cgroup namespaces; commands are spawned inside it over a
//! control channel, so a command costs about a plain fork/exec and a dev
//! server started by one command is still there for the next. Layers, each
//! reported in [`SandboxReport`]:
//!
//! - **namespaces and mounts** ([`mounts`]): host root read-only, workspace
//!   read-write, private `/tmp`, fresh `/proc`, minimal `/dev`, credential
//!   stores hidden, exec-later files in the workspace read-only;
//! - **Landlock** ([`landlock_rules`]) repeats the write rules;
//! - **seccomp** ([`seccomp`]) denies the syscalls that escape or attack the
//!   kernel; `no_new_privs`; every capability dropped;
//! - **limits**: rlimits and cgroup `pids`/`memory` ([`cgroup`]);
//! - **network**: none, or only the [`proxy::EgressProxy`] through a Unix
//!   socket bridged into the namespace ([`forwarder`]); the proxy may
//!   terminate TLS for hosts a [`hook::EgressHook`] asks to see, with leaf
//!   certificates from a per-daemon [`ca::CertAuthority`] whose bundle is
//!   mounted into the sandbox.
//!
//! Without unprivileged user namespaces it degrades to Landlock + seccomp +
//! rlimits and says so in [`SandboxReport::degraded`];
//! [`SandboxSpec::required`] refuses instead.
//!
//! The daemon never forks a sandbox itself: it re-executes its own binary as
//! the helper ([`HELPER_ARG`], [`helper_main`]).

#![cfg(target_os = "linux")]

pub mod ca;
pub mod cgroup;
pub mod control;
pub mod forwarder;
mod handle;
pub mod hook;
pub mod init;
pub mod landlock_rules;
pub mod mounts;
pub mod proxy;
pub mod seccomp;
pub mod spec;

pub use handle::{
    drain_prewarmed, enable_prewarm, ExitStatus, HelperCommand, Process, Sandbox, SandboxError,
    SpawnRequest, CREATE_TIMEOUT,
};
pub use init::{helper_main, HELPER_ARG};
pub use spec::{
    ca_bundle_path, explain_refusal, proxy_env, proxy_env_with_ca, NetworkMode, SandboxLimits,
    SandboxReport, SandboxSpec,
};
