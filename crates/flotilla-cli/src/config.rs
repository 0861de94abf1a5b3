//! The user config file (`config.toml` in the flotilla home).
//!
//! Unknown keys are errors, not silently ignored: a typo in a budget should
//! not turn into an unlimited one.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_agent::tools::ToolLimits;
use flotilla_fleet::FleetConfig;
use flotilla_models::RetryPolicy;
use flotilla_protocol::{ModelRoute, ModelSpec, SessionLimits};
use serde::Deserialize;

/// `config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Default model spec, e.g. `openai:gpt-4o-mini`.
    pub model: Option<String>,
    /// Default budgets.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Built-in tools.
    #[serde(default)]
    pub tools: ToolsSection,
    /// Model request retries.
    #[serde(default)]
    pub retry: RetrySection,
    /// System prompt override.
    pub system_prompt: Option<String>,
    /// The sandbox every session's commands run in.
    #[serde(default)]
    pub sandbox: SandboxSection,
    /// `[permissions]`: read by `flotilla-policy` itself (with line
    /// numbers for its errors), so here it is only let through.
    #[serde(default)]
    #[allow(dead_code)]
    pub permissions: Option<toml::Value>,
    /// `[[machines]]`: where local models can run (`flotilla machines`).
    #[serde(default)]
    pub machines: Vec<flotilla_fit::machines::MachineConfig>,
    /// `[roles.NAME]`: model, endpoint and fallbacks per role (`run --role`).
    #[serde(default)]
    pub roles: std::collections::HashMap<String, RoleSection>,
    /// `[prices."provider:model"]`: US dollars per million tokens.
    #[serde(default)]
    pub prices: std::collections::HashMap<String, flotilla_models::Price>,
    /// `[audit]`: retention and checkpoints of the activity log.
    #[serde(default)]
    pub audit: AuditSection,
    /// `[scheduler]`: how many model requests may be in flight at once.
    #[serde(default)]
    pub scheduler: SchedulerSection,
    /// `[local]`: the embedded model servers (`local:MODEL`).
    #[serde(default)]
    pub local: LocalSection,
}

/// `[local]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSection {
    /// Context per parallel slot, in tokens (default 4096).
    pub ctx: Option<u32>,
    /// Requests a model serves at once (default 4).
    pub parallel: Option<u32>,
    /// A model server stops after this many seconds without a request
    /// (default 600); the next request starts it again.
    pub idle_exit_secs: Option<u64>,
}

/// The model sessions use when nothing is configured: no `model`, no
/// `FLOTILLA_MODEL`, no provider endpoint or key in the environment.
pub const EMBEDDED_DEFAULT: &str = "local:gemma-3-270m";

/// `[scheduler]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    /// Model requests in flight from this daemon at once (default: no limit).
    pub machine_slots: Option<usize>,
    /// `[scheduler.endpoints]`: `"URL" = N` requests in flight at once to
    /// that endpoint. A `[[machines]]` endpoint gets its `slots` unless
    /// named here.
    #[serde(default)]
    pub endpoints: std::collections::HashMap<String, usize>,
}

/// `[audit]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Keep records this long (`90d`, `12h`); older ones are cut hourly.
    /// Default: forever.
    pub retention: Option<String>,
    /// Append a checkpoint to this file periodically; keep it on another
    /// disk or machine to make truncation of the log detectable.
    pub checkpoint_file: Option<std::path::PathBuf>,
    /// How often (`1h` by default).
    pub checkpoint_every: Option<String>,
}

impl AuditSection {
    /// The daemon's audit settings; the digests of `layers`' files (and
    /// the user config) are recorded at every start.
    pub fn settings(
        &self,
        layers: &flotilla_policy::config::LayerPaths,
    ) -> Result<flotilla_server::AuditSettings> {
        let dur = |what: &str, v: &Option<String>| -> Result<Option<i64>> {
            v.as_deref()
                .map(|s| {
                    flotilla_policy::config::parse_duration_ms(s)
                        .filter(|ms| *ms > 0)
                        .with_context(|| {
                            format!(
                                "[audit] {what} = {s:?}: use a number and s, m, h or d (e.g. 90d)"
                            )
                        })
                })
                .transpose()
        };
        let mut config_files = layers.admin.clone();
        config_files.push(layers.user.clone());
        Ok(flotilla_server::AuditSettings {
            retention_ms: dur("retention", &self.retention)?,
            checkpoint_file: self.checkpoint_file.clone(),
            checkpoint_every_ms: dur("checkpoint_every", &self.checkpoint_every)?,
            config_files,
        })
    }
}

/// `[roles.NAME]`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSection {
    /// `provider:model`.
    pub model: String,
    /// Its endpoint, when not the provider's default.
    pub base_url: Option<String>,
    /// Models tried in order when it fails: `"provider:model"` or
    /// `{ model = "...", base_url = "..." }`.
    #[serde(default)]
    pub fallbacks: Vec<FallbackEntry>,
    /// May this role use frontier (hosted) endpoints? Default: only `planner`.
    pub frontier: Option<bool>,
    /// The model's GGUF file: without `base_url`, sessions of the role are
    /// placed on a [[machines]] endpoint where it fits and a slot is free.
    pub gguf: Option<std::path::PathBuf>,
    /// Context to plan the placement for.
    pub ctx: Option<u64>,
}

/// One fallback of a role.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FallbackEntry {
    /// `"provider:model"` at the provider's default endpoint.
    Spec(String),
    /// A model and its endpoint.
    Route {
        /// `provider:model`.
        model: String,
        /// Its endpoint.
        base_url: Option<String>,
    },
}

impl RoleSection {
    fn to_role(&self) -> flotilla_fleet::RoleConfig {
        flotilla_fleet::RoleConfig {
            model: self.model.clone(),
            base_url: self.base_url.clone(),
            fallbacks: self
                .fallbacks
                .iter()
                .map(|f| match f {
                    FallbackEntry::Spec(m) => ModelRoute {
                        model: m.clone(),
                        base_url: None,
                    },
                    FallbackEntry::Route { model, base_url } => ModelRoute {
                        model: model.clone(),
                        base_url: base_url.clone(),
                    },
                })
                .collect(),
            frontier: self.frontier,
            gguf: self.gguf.clone(),
            ctx: self.ctx,
        }
    }
}

/// `[sandbox]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Refuse to run commands when the machine cannot confine them fully
    /// (no user namespaces) instead of degrading to Landlock + seccomp.
    pub required: Option<bool>,
    /// Use namespaces when available (default true); false forces the
    /// degraded mode.
    pub namespaces: Option<bool>,
    /// More paths to hide (`~/` is the home folder).
    #[serde(default)]
    pub deny_read: Vec<String>,
    /// More writable directories besides the workspace.
    #[serde(default)]
    pub write: Vec<String>,
    /// Processes and threads per sandbox.
    pub max_processes: Option<u64>,
    /// Open files per process.
    pub max_open_files: Option<u64>,
    /// Largest file a command may write, in MiB.
    pub max_file_size_mb: Option<u64>,
    /// Memory of the whole sandbox, in MiB (cgroup; 0 for no limit).
    pub memory_mb: Option<u64>,
    /// Size of the private /tmp, in MiB.
    pub tmp_size_mb: Option<u64>,
    /// `[sandbox.network]`
    #[serde(default)]
    pub network: NetworkSection,
}

/// `[sandbox.network]`
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// "none" (default: loopback only) or "proxy" (only the egress proxy,
    /// which lets through the `allow` domains).
    pub mode: Option<String>,
    /// Domains the proxy lets through: `github.com`, `*.npmjs.org`, `*`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Domains always refused (deny wins over allow).
    #[serde(default)]
    pub deny: Vec<String>,
    /// More root certificates (PEM files) the proxy trusts for the upstream
    /// side of intercepted TLS (sessions with granted secrets), besides the
    /// system's: a corporate CA, or a test server's.
    #[serde(default)]
    pub ca_files: Vec<std::path::PathBuf>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Model turns per session.
    pub max_turns: Option<u32>,
    /// Active wall time per session.
    pub wall_time_secs: Option<u64>,
    /// Context window of the model, in tokens.
    pub context_window: Option<u64>,
}

/// `[tools]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    /// Bytes of tool output shown to the model.
    pub output_cap_bytes: Option<usize>,
    /// Default shell timeout.
    pub default_timeout_secs: Option<u64>,
    /// Longest shell timeout a model may ask for.
    pub max_timeout_secs: Option<u64>,
}

/// `[retry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// Attempts per model request.
    pub max_attempts: Option<u32>,
    /// First backoff delay.
    pub base_delay_ms: Option<u64>,
    /// Longest backoff delay.
    pub max_delay_ms: Option<u64>,
}

/// Reads the file; a missing file is an empty config.
pub fn load(path: &Path) -> Result<ConfigFile> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigFile::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let cfg: ConfigFile =
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))?;
    if let Some(mode) = &cfg.sandbox.network.mode {
        if mode != "none" && mode != "proxy" {
            anyhow::bail!(
                "invalid [sandbox.network] mode {mode:?} in {}: use \"none\" or \"proxy\"",
                path.display()
            );
        }
    }
    flotilla_sandbox::proxy::DomainPolicy::new(
        &cfg.sandbox.network.allow,
        &cfg.sandbox.network.deny,
    )
    .with_context(|| format!("invalid [sandbox.network] in {}", path.display()))?;
    flotilla_fit::machines::from_config(&cfg.machines)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid [[machines]] in {}", path.display()))?;
    if cfg.scheduler.machine_slots == Some(0) || cfg.scheduler.endpoints.values().any(|n| *n == 0) {
        anyhow::bail!(
            "invalid [scheduler] in {}: slots must be at least 1 (leave a limit out for none)",
            path.display()
        );
    }
    for url in cfg.scheduler.endpoints.keys() {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!(
                "invalid [scheduler.endpoints] in {}: {url:?} must start with http:// or https://",
                path.display()
            );
        }
    }
    if let Some(m) = &cfg.model {
        ModelSpec::parse(m).with_context(|| format!("invalid `model` in {}", path.display()))?;
    }
    for (name, role) in &cfg.roles {
        let role = role.to_role();
        let routes = std::iter::once(ModelRoute {
            model: role.model.clone(),
            base_url: role.base_url.clone(),
        })
        .chain(role.fallbacks.iter().cloned());
        for route in routes {
            ModelSpec::parse(&route.model).with_context(|| {
                format!("invalid model in [roles.{name}] of {}", path.display())
            })?;
            if let Some(url) = &route.base_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    anyhow::bail!(
                        "invalid base_url {url:?} in [roles.{name}] of {}: it must start with http:// or https://",
                        path.display()
                    );
                }
            }
        }
    }
    flotilla_models::PriceTable::new(cfg.prices.clone())
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("invalid [prices] in {}", path.display()))?;
    Ok(cfg)
}

impl ConfigFile {
    /// The supervisor settings, with the daemon's environment.
    pub fn fleet_config(&self) -> FleetConfig {
        let d = SessionLimits::default();
        let t = ToolLimits::default();
        let r = RetryPolicy::default();
        // Blank counts as unset, as for the clients.
        let env = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        FleetConfig {
            default_model: self
                .model
                .clone()
                .or_else(|| env("FLOTILLA_MODEL"))
                .or_else(|| {
                    let configured = [
                        "OPENAI_BASE_URL",
                        "OPENAI_API_KEY",
                        "ANTHROPIC_BASE_URL",
                        "ANTHROPIC_API_KEY",
                    ]
                    .iter()
                    .any(|k| env(k).is_some());
                    (!configured).then(|| EMBEDDED_DEFAULT.to_owned())
                }),
            default_limits: SessionLimits {
                max_turns: self.limits.max_turns.unwrap_or(d.max_turns),
                wall_time_secs: self.limits.wall_time_secs.unwrap_or(d.wall_time_secs),
                context_window: self.limits.context_window.unwrap_or(d.context_window),
            },
            retry: RetryPolicy {
                max_attempts: self.retry.max_attempts.unwrap_or(r.max_attempts),
                base_delay: self
                    .retry
                    .base_delay_ms
                    .map(Duration::from_millis)
                    .unwrap_or(r.base_delay),
                max_delay: self
                    .retry
                    .max_delay_ms
                    .map(Duration::from_millis)
                    .unwrap_or(r.max_delay),
            },
            tool_limits: ToolLimits {
                output_cap_bytes: self.tools.output_cap_bytes.unwrap_or(t.output_cap_bytes),
                default_timeout: self
                    .tools
                    .default_timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(t.default_timeout),
                max_timeout: self
                    .tools
                    .max_timeout_secs
                    .map(Duration::from_secs)
                    .unwrap_or(t.max_timeout),
                ..t
            },
            roles: self
                .roles
                .iter()
                .map(|(name, r)| (name.clone(), r.to_role()))
                .collect(),
            // Checked by `load`.
            prices: std::sync::Arc::new(
                flotilla_models::PriceTable::new(self.prices.clone()).unwrap_or_default(),
            ),
            local_endpoints: self
                .machines
                .iter()
                .filter_map(|m| m.endpoint.clone())
                .collect(),
            // Checked by `load`.
            machines: flotilla_fit::machines::from_config(&self.machines).unwrap_or_default(),
            openai_base_url: env("OPENAI_BASE_URL"),
            openai_api_key: env("OPENAI_API_KEY"),
            anthropic_base_url: env("ANTHROPIC_BASE_URL"),
            anthropic_api_key: env("ANTHROPIC_API_KEY"),
            system_prompt: self.system_prompt.clone(),
            policy: None,
            worktrees_dir: None,
            local_models: None,
            scheduler: flotilla_fleet::SchedulerConfig {
                machine_slots: self.scheduler.machine_slots,
                endpoint_slots: self
                    .machines
                    .iter()
                    .filter_map(|m| Some((m.endpoint.clone()?, m.slots? as usize)))
                    .chain(self.scheduler.endpoints.clone())
                    .collect(),
            },
        }
    }
}

/// `~/x` -> `$HOME/x`.
pub fn expand_home(raw: &str) -> std::path::PathBuf {
    match (raw.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => std::path::PathBuf::from(home).join(rest),
        _ => std::path::PathBuf::from(raw),
    }
}

impl SandboxSection {
    /// The spec sessions (and `flotilla sandbox`) start from; the workspace
    /// is filled in per use.
    pub fn template(&self) -> flotilla_sandbox::SandboxSpec {
        let mut spec = flotilla_sandbox::SandboxSpec::new("/");
        let d = flotilla_sandbox::SandboxLimits::default();
        spec.required = self.required.unwrap_or(false);
        spec.namespaces = self.namespaces.unwrap_or(true);
        spec.deny_read = self.deny_read.iter().map(|p| expand_home(p)).collect();
        spec.extra_write = self.write.iter().map(|p| expand_home(p)).collect();
        spec.limits = flotilla_sandbox::SandboxLimits {
            max_processes: self.max_processes.unwrap_or(d.max_processes),
            max_open_files: self.max_open_files.unwrap_or(d.max_open_files),
            max_file_size_bytes: self
                .max_file_size_mb
                .map(|mb| mb << 20)
                .unwrap_or(d.max_file_size_bytes),
            memory_bytes: match self.memory_mb {
                Some(0) => None,
                Some(mb) => Some(mb << 20),
                None => d.memory_bytes,
            },
            tmp_size_bytes: self
                .tmp_size_mb
                .map(|mb| mb << 20)
                .unwrap_or(d.tmp_size_bytes),
        };
        spec
    }

    /// The template with flotilla's own state (data, sockets, config file)
    /// hidden: no sandbox may see it.
    pub fn template_hiding(&self, paths: &flotilla_server::Paths) -> flotilla_sandbox::SandboxSpec {
        let mut spec = self.template();
        spec.deny_read.extend([
            paths.data_dir.clone(),
            paths.run_dir.clone(),
            paths.config_file.clone(),
        ]);
        spec
    }

    /// Whether sessions get the egress proxy.
    pub fn proxy_enabled(&self) -> bool {
        self.network.mode.as_deref() == Some("proxy")
    }
}
