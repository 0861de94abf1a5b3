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
use flotilla_protocol::{ModelSpec, SessionLimits};
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
    if let Some(m) = &cfg.model {
        ModelSpec::parse(m).with_context(|| format!("invalid `model` in {}", path.display()))?;
    }
    Ok(cfg)
}

impl ConfigFile {
    /// The supervisor settings, with the daemon's environment.
    pub fn fleet_config(&self) -> FleetConfig {
        let d = SessionLimits::default();
        let t = ToolLimits::default();
        let r = RetryPolicy::default();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        FleetConfig {
            default_model: self.model.clone().or_else(|| env("FLOTILLA_MODEL")),
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
            openai_base_url: env("OPENAI_BASE_URL"),
            openai_api_key: env("OPENAI_API_KEY"),
            system_prompt: self.system_prompt.clone(),
        }
    }
}
