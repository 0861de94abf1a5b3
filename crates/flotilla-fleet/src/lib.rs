//! The flotilla supervisor: creates sessions, runs their agent loops,
//! cancels them, and resumes them after a restart.
//!
//! Invariants:
//! - a session's loop runs in at most one task of this daemon (the `running`
//!   map is the guard; the daemon lock file makes it one daemon per home);
//! - stopping the daemon never records a cancel: sessions that were running
//!   resume on the next start ([`Supervisor::recover`]);
//! - a loop that dies on an internal error still leaves a terminal state in
//!   the log when the log can be written at all.

mod fleet;
mod governance;
mod schedule;
mod secrets;
mod workflow;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use flotilla_agent::tools::{
    CommandExecutor, CommandRequest, CommandResult, ExecutorFactory, ToolLimits,
};
use flotilla_agent::ApprovalAnswer;
use flotilla_agent::{run_agent, AgentExit, AgentRun, AgentSettings};
use flotilla_models::fit::machines::Machine;
use flotilla_models::{
    AnthropicClient, AnthropicConfig, BedrockClient, BedrockConfig, ChainLink, FallbackClient,
    ModelClient, OpenAiClient, OpenAiConfig, PriceTable, RetryPolicy,
};
use flotilla_protocol::{
    ApprovalInfo, CreateSessionRequest, EventKind, FleetLink, ModelRoute, ModelSpec, SessionId,
    SessionInfo, SessionLimits, SessionPermissions, SessionState,
};
use flotilla_store::{Store, StoreError};
pub use governance::{build_engine, build_stack, PolicyConfig, PrincipalLookup};
use governance::{ApprovalQueue, SessionPolicy};
pub use schedule::SchedulerConfig;
use tokio_util::sync::CancellationToken;

/// Settings of the supervisor (from config files and the environment).
#[derive(Clone, Default)]
pub struct FleetConfig {
    /// Model used when a request names none.
    pub default_model: Option<String>,
    /// Budgets used when a request sets none.
    pub default_limits: SessionLimits,
    /// Model request retries.
    pub retry: RetryPolicy,
    /// Built-in tool limits.
    pub tool_limits: ToolLimits,
    /// `OPENAI_BASE_URL` of the daemon, used when a session names no endpoint.
    pub openai_base_url: Option<String>,
    /// `OPENAI_API_KEY` of the daemon.
    pub openai_api_key: Option<String>,
    /// `ANTHROPIC_BASE_URL` of the daemon, for `anthropic:` sessions that
    /// name no endpoint.
    pub anthropic_base_url: Option<String>,
    /// `ANTHROPIC_API_KEY` of the daemon.
    pub anthropic_api_key: Option<String>,
    /// System prompt override.
    pub system_prompt: Option<String>,
    /// Policy layers; `None` runs every tool call unchecked (tests only).
    pub policy: Option<PolicyConfig>,
    /// `[roles.NAME]`: model, endpoint and fallbacks per role.
    pub roles: HashMap<String, RoleConfig>,
    /// Prices by model spec, for each answer's cost.
    pub prices: Arc<PriceTable>,
    /// Endpoints of the configured machines (`[[machines]]`): local, never
    /// frontier.
    pub local_endpoints: Vec<String>,
    /// The configured machines, where local models are placed.
    pub machines: Vec<Machine>,
    /// Where fleet workers' git worktrees go (outside anything a sandbox
    /// hides); `None`: workers can only share their parent's workspace.
    pub worktrees_dir: Option<std::path::PathBuf>,
    /// Concurrency slots of model requests.
    pub scheduler: SchedulerConfig,
    /// Serves `local:` models (the embedded llama.cpp server); `None`:
    /// such sessions are refused.
    pub local_models: Option<Arc<dyn flotilla_models::LocalModels>>,
}

/// An endpoint as compared for trust: trimmed, without a trailing `/`,
/// lowercase.
fn normalize_endpoint(url: &str) -> String {
    url.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The endpoints the daemon's configuration names (provider defaults, its
/// `*_BASE_URL`, roles and their fallbacks, `[[machines]]`): the only ones
/// its API keys are sent to.
fn trusted_endpoints(config: &FleetConfig) -> Vec<String> {
    let mut out = vec![
        flotilla_models::DEFAULT_OPENAI_BASE_URL.to_owned(),
        flotilla_models::DEFAULT_ANTHROPIC_BASE_URL.to_owned(),
    ];
    out.extend(config.openai_base_url.clone());
    out.extend(config.anthropic_base_url.clone());
    for r in config.roles.values() {
        out.extend(r.base_url.clone());
        out.extend(r.fallbacks.iter().filter_map(|f| f.base_url.clone()));
    }
    out.extend(config.local_endpoints.iter().cloned());
    out.iter().map(|u| normalize_endpoint(u)).collect()
}

/// A Bedrock client made at its first request: the AWS credential chain
/// is loaded asynchronously, once. A chain that cannot be loaded (no
/// region, no credentials) fails that request with the reason.
struct LazyBedrock {
    config: BedrockConfig,
    client: tokio::sync::OnceCell<Result<BedrockClient, String>>,
}

impl ModelClient for LazyBedrock {
    fn chat<'a>(
        &'a self,
        request: &'a flotilla_models::ChatRequest,
    ) -> futures::future::BoxFuture<
        'a,
        Result<flotilla_models::ChatResponse, flotilla_models::ModelError>,
    > {
        Box::pin(async move {
            let client = self
                .client
                .get_or_init(|| async {
                    BedrockClient::new(self.config.clone())
                        .await
                        .map_err(|e| match e {
                            flotilla_models::ModelError::Config(m) => m,
                            other => other.to_string(),
                        })
                })
                .await
                .as_ref()
                .map_err(|e| flotilla_models::ModelError::Config(e.clone()))?;
            client.chat(request).await
        })
    }
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |k: &Option<String>| k.as_ref().map(|_| "<redacted>");
        f.debug_struct("FleetConfig")
            .field("default_model", &self.default_model)
            .field("default_limits", &self.default_limits)
            .field("openai_base_url", &self.openai_base_url)
            .field("openai_api_key", &redacted(&self.openai_api_key))
            .field("anthropic_base_url", &self.anthropic_base_url)
            .field("anthropic_api_key", &redacted(&self.anthropic_api_key))
            .field("roles", &self.roles)
            .field("machines", &self.machines)
            .finish_non_exhaustive()
    }
}

/// One `[roles.NAME]` of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoleConfig {
    /// `provider:model`.
    pub model: String,
    /// Its endpoint, when not the provider's default.
    pub base_url: Option<String>,
    /// Tried in order when the model fails.
    pub fallbacks: Vec<ModelRoute>,
    /// Whether the role may use a frontier (hosted, paid) endpoint; by
    /// default only `planner` may.
    pub frontier: Option<bool>,
    /// The model's GGUF file: with no `base_url`, the session is placed
    /// on a `[[machines]]` endpoint where `fit` says the model fits and a
    /// slot is free.
    pub gguf: Option<std::path::PathBuf>,
    /// The context to plan the placement for (default: the session's
    /// context window, up to the model's).
    pub ctx: Option<u64>,
}

impl RoleConfig {
    /// Whether role `name` may call frontier endpoints.
    pub fn allows_frontier(&self, name: &str) -> bool {
        self.frontier.unwrap_or(name == "planner")
    }
}

/// Whether a model is reached at a frontier endpoint (a hosted provider)
/// rather than a local one: Anthropic and Bedrock always are; an
/// OpenAI-compatible endpoint is local on loopback, a private or
/// link-local address, a `.local` or single-label host name, or a
/// configured machine's endpoint.
pub fn is_frontier(
    route: &ModelRoute,
    default_openai_base: Option<&str>,
    local: &[String],
) -> bool {
    let Ok(spec) = ModelSpec::parse(&route.model) else {
        return true;
    };
    // Served by this daemon, on this machine.
    if spec.provider == "local" {
        return false;
    }
    if spec.provider != "openai" {
        return true;
    }
    // The same trimming and fallback as the client's, then the host as the
    // client's URL parser reads it: a URL this check reads one way and the
    // client another would let a worker past it.
    let url = route
        .base_url
        .as_deref()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .or(default_openai_base.map(str::trim).filter(|u| !u.is_empty()))
        .unwrap_or(flotilla_models::DEFAULT_OPENAI_BASE_URL);
    let Some(host) = flotilla_models::endpoint_host(url) else {
        return true;
    };
    if local
        .iter()
        .any(|l| flotilla_models::endpoint_host(l).as_ref() == Some(&host))
    {
        return false;
    }
    match host {
        flotilla_models::EndpointHost::Domain(h) => {
            !(h == "localhost"
                || h.ends_with(".localhost")
                || h.ends_with(".local")
                || !h.contains('.'))
        }
        flotilla_models::EndpointHost::Ip(std::net::IpAddr::V4(ip)) => {
            !(ip.is_loopback() || ip.is_private() || ip.is_link_local())
        }
        flotilla_models::EndpointHost::Ip(std::net::IpAddr::V6(ip)) => {
            !(ip.is_loopback()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Builds a model client for a session.
pub type ClientFactory =
    Arc<dyn Fn(&ModelSpec, Option<&str>) -> Result<Arc<dyn ModelClient>, String> + Send + Sync>;

/// What the supervisor refuses, and why.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// No such session.
    #[error("no session {0}; `flotilla ps` lists them")]
    NotFound(SessionId),
    /// No such pending approval.
    #[error("no pending approval {0}; `flotilla approvals` lists them")]
    NoApproval(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Running {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// The machine slots held by session loops, by session.
type Slots = Arc<Mutex<HashMap<SessionId, String>>>;

/// A loop's hold on its machine's slot: released when the loop's task
/// ends, however it ends (an answer, a cancel, a failure, a panic, an
/// abort at shutdown), not when the loop is merely asked to stop.
struct SlotHold {
    slots: Slots,
    session: SessionId,
}

impl SlotHold {
    fn take(slots: &Slots, session: &SessionId, machine: String) -> SlotHold {
        if let Ok(mut s) = slots.lock() {
            s.insert(session.clone(), machine);
        }
        SlotHold {
            slots: slots.clone(),
            session: session.clone(),
        }
    }
}

impl Drop for SlotHold {
    fn drop(&mut self) {
        if let Ok(mut s) = self.slots.lock() {
            s.remove(&self.session);
        }
    }
}

/// Runs the sessions of one daemon.
pub struct Supervisor {
    /// Held from placing a session on a machine until its loop holds the slot.
    placing: tokio::sync::Mutex<()>,
    /// Held while a fleet worker is checked against the tree's limits and
    /// recorded.
    spawning: Mutex<HashMap<SessionId, Arc<tokio::sync::Mutex<()>>>>,
    /// The fleets' budget watcher runs (started with the first fleet).
    budget_watch: OnceLock<()>,
    /// Fleets being stopped for their budget.
    over_budget: Mutex<std::collections::HashSet<SessionId>>,
    /// Machine slots held by running loops.
    slots: Slots,
    store: Store,
    config: FleetConfig,
    executors: Arc<dyn ExecutorFactory>,
    factory: ClientFactory,
    clients: Mutex<HashMap<String, Arc<dyn ModelClient>>>,
    running: Mutex<HashMap<SessionId, Running>>,
    queue: Arc<ApprovalQueue>,
    policies: Mutex<HashMap<SessionId, Arc<SessionPolicy>>>,
    principals: OnceLock<PrincipalLookup>,
    /// The secrets vault (set once by the daemon); `Err` says why it is
    /// unusable (a missing or wrong key).
    vault: OnceLock<Result<Arc<flotilla_vault::store::Vault>, String>>,
    /// The grants of sessions whose loop runs now.
    grants: Mutex<HashMap<SessionId, Vec<flotilla_protocol::SecretGrant>>>,
    /// Concurrency slots of model requests and fleet workers.
    sched: Arc<schedule::Scheduler>,
}

impl Supervisor {
    /// A supervisor over `store`. Each session gets its command executor
    /// (its sandbox) from `executors` when its loop starts. With no
    /// `factory`, models are reached over HTTP with [`OpenAiClient`].
    pub fn new(
        store: Store,
        config: FleetConfig,
        executors: Arc<dyn ExecutorFactory>,
        factory: Option<ClientFactory>,
    ) -> Arc<Supervisor> {
        let factory = factory.unwrap_or_else(|| {
            let base = config.openai_base_url.clone();
            let key = config.openai_api_key.clone();
            let anthropic_base = config.anthropic_base_url.clone();
            let anthropic_key = config.anthropic_api_key.clone();
            let trusted = trusted_endpoints(&config);
            let local = config.local_models.clone();
            Arc::new(move |spec: &ModelSpec, url: Option<&str>| {
                // The daemon's keys go only to endpoints the daemon's own
                // configuration names: a session may name any endpoint,
                // and must not be able to collect the keys with it.
                let keyed = url.is_none_or(|u| trusted.contains(&normalize_endpoint(u)));
                let client: Arc<dyn ModelClient> = match spec.provider.as_str() {
                    "anthropic" => {
                        let mut cfg = AnthropicConfig::from_env(
                            url.map(str::to_owned).or(anthropic_base.clone()),
                        );
                        if anthropic_key.is_some() {
                            cfg.api_key = anthropic_key.clone();
                        }
                        if !keyed {
                            cfg.api_key = None;
                        }
                        Arc::new(AnthropicClient::new(cfg).map_err(|e| e.to_string())?)
                    }
                    "local" => match &local {
                        Some(models) => Arc::new(flotilla_models::LocalClient::new(models.clone())),
                        None => {
                            return Err("this daemon serves no embedded model (local:)".to_owned())
                        }
                    },
                    "bedrock" => Arc::new(LazyBedrock {
                        config: BedrockConfig {
                            endpoint_url: url.map(str::to_owned),
                            ..BedrockConfig::default()
                        },
                        client: tokio::sync::OnceCell::new(),
                    }),
                    _ => {
                        let mut cfg =
                            OpenAiConfig::from_env(url.map(str::to_owned).or(base.clone()));
                        if key.is_some() {
                            cfg.api_key = key.clone();
                        }
                        if !keyed {
                            cfg.api_key = None;
                        }
                        Arc::new(OpenAiClient::new(cfg).map_err(|e| e.to_string())?)
                    }
                };
                Ok(client)
            })
        });
        let sched = schedule::Scheduler::new(&config.scheduler);
        Arc::new(Supervisor {
            placing: tokio::sync::Mutex::new(()),
            spawning: Mutex::new(HashMap::new()),
            budget_watch: OnceLock::new(),
            over_budget: Mutex::new(std::collections::HashSet::new()),
            slots: Arc::new(Mutex::new(HashMap::new())),
            store,
            config,
            executors,
            factory,
            clients: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            queue: Arc::new(ApprovalQueue::default()),
            policies: Mutex::new(HashMap::new()),
            principals: OnceLock::new(),
            vault: OnceLock::new(),
            grants: Mutex::new(HashMap::new()),
            sched,
        })
    }

    /// Tells the supervisor how to learn a principal's tiers and MFA (set
    /// once, by the daemon).
    pub fn set_principal_lookup(&self, lookup: PrincipalLookup) {
        let _ = self.principals.set(lookup);
    }

    /// Gives the supervisor the daemon's vault (set once), or why there is
    /// none: sessions with `--grant` are then refused with that reason.
    pub fn set_vault(&self, vault: Result<Arc<flotilla_vault::store::Vault>, String>) {
        let _ = self.vault.set(vault);
    }

    /// The vault, or why it cannot be used.
    pub fn vault(&self) -> Result<Arc<flotilla_vault::store::Vault>, String> {
        match self.vault.get() {
            Some(v) => v.clone(),
            None => Err("this daemon has no vault".to_owned()),
        }
    }

    /// The grants held by sessions whose loop runs now.
    pub fn grant_holders(&self) -> Vec<(SessionId, flotilla_protocol::SecretGrant)> {
        let Ok(all) = self.grants.lock() else {
            return Vec::new();
        };
        let mut out: Vec<_> = all
            .iter()
            .flat_map(|(id, gs)| gs.iter().map(move |g| (id.clone(), g.clone())))
            .collect();
        out.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        out
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Sessions whose loop runs in this daemon now.
    pub fn active_count(&self) -> usize {
        self.running.lock().map(|r| r.len()).unwrap_or(0)
    }

    fn client_for(
        &self,
        spec: &ModelSpec,
        base_url: Option<&str>,
    ) -> Result<Arc<dyn ModelClient>, String> {
        let key = format!("{}|{}", spec.provider, base_url.unwrap_or(""));
        if let Ok(clients) = self.clients.lock() {
            if let Some(c) = clients.get(&key) {
                return Ok(c.clone());
            }
        }
        let client = (self.factory)(spec, base_url)?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(key, client.clone());
        }
        Ok(client)
    }

    /// Where role `role`'s local model (`gguf`) runs: the configured machine
    /// with an endpoint where `fit` says it fits fully at `ctx` and a slot
    /// is free (the fastest such), as (machine, endpoint). Otherwise an
    /// error that names the closest machine and what it lacks.
    fn place(&self, role: &str, gguf: &Path, ctx: u64) -> Result<(String, String), String> {
        use flotilla_models::fit::estimate::{estimate, FitOptions, KvType, ModelShape, Verdict};
        let machines: Vec<&Machine> = self
            .config
            .machines
            .iter()
            .filter(|m| m.endpoint.is_some())
            .collect();
        if machines.is_empty() {
            return Err(format!(
                "role {role:?} names a model file to place, but no [[machines]] entry has an endpoint"
            ));
        }
        let file = flotilla_models::fit::gguf::GgufFile::read(gguf)
            .map_err(|e| format!("role {role:?}: {e}"))?;
        let shape =
            ModelShape::from_gguf(&file, None).map_err(|e| format!("role {role:?}: {e}"))?;
        let ctx = match shape.context_length {
            0 => ctx,
            trained => ctx.min(trained),
        };
        let opts = FitOptions {
            ctx,
            kv_type: KvType::F16,
        };
        let busy: HashMap<String, u32> = match self.slots.lock() {
            Ok(s) => s.values().fold(HashMap::new(), |mut acc, m| {
                *acc.entry(m.clone()).or_default() += 1;
                acc
            }),
            Err(_) => return Err("supervisor state poisoned".into()),
        };
        let mut best: Option<(f64, &Machine)> = None;
        let mut full: Vec<String> = Vec::new();
        // The closest that does not fit: the smallest shortfall.
        let mut closest: Option<(u64, u64, &Machine)> = None;
        for m in machines {
            let fit = estimate(&shape, m, &opts);
            if fit.verdict == Verdict::Fits {
                let slots = m.slots.unwrap_or(1);
                let used = busy.get(&m.name).copied().unwrap_or(0);
                if used < slots {
                    if best.is_none_or(|(tps, _)| fit.tokens_per_s > tps) {
                        best = Some((fit.tokens_per_s, m));
                    }
                } else {
                    full.push(format!("{} ({used} of {slots} slots in use)", m.name));
                }
                continue;
            }
            // What all of it would take on this machine.
            let unbounded = Machine {
                memory_bytes: u64::MAX / 4,
                ..m.clone()
            };
            let needed = estimate(&shape, &unbounded, &opts).total_bytes;
            let short = needed.saturating_sub(m.memory_bytes);
            if closest.is_none_or(|(s, _, _)| short < s) {
                closest = Some((short, needed, m));
            }
        }
        if let Some((_, m)) = best {
            let endpoint = m.endpoint.clone().unwrap_or_default();
            return Ok((m.name.clone(), endpoint));
        }
        let gb = |b: u64| b as f64 / 1e9;
        if !full.is_empty() {
            return Err(format!(
                "role {role:?}: its model fits on {}, but every slot is taken; try again when a session there ends",
                full.join(", ")
            ));
        }
        match closest {
            Some((short, needed, m)) => Err(format!(
                "role {role:?}: its model ({}, {}) fits fully on no machine at a context of {ctx}; the closest is {}, which lacks {:.1} GB (needs {:.1} GB, has {:.1} GB); use a smaller quantization or context (see `flotilla fit {}`)",
                shape.file_type,
                shape.name.as_deref().unwrap_or("model"),
                m.name,
                gb(short),
                gb(needed),
                gb(m.memory_bytes),
                gguf.display()
            )),
            None => Err(format!("role {role:?}: no machine to place its model on")),
        }
    }

    /// The client of a session: its model, or its model and fallbacks as a
    /// [`FallbackClient`] chain.
    fn chain_for(
        &self,
        primary: &ModelRoute,
        fallbacks: &[ModelRoute],
    ) -> Result<Arc<dyn ModelClient>, String> {
        let link = |route: &ModelRoute| -> Result<ChainLink, String> {
            let spec = ModelSpec::parse(&route.model).map_err(|e| e.to_string())?;
            Ok(ChainLink {
                spec: spec.to_string(),
                model: spec.model.clone(),
                client: self.client_for(&spec, route.base_url.as_deref())?,
            })
        };
        let first = link(primary)?;
        if fallbacks.is_empty() {
            return Ok(first.client);
        }
        let mut links = vec![first];
        for f in fallbacks {
            links.push(link(f)?);
        }
        Ok(Arc::new(
            FallbackClient::new(links).map_err(|e| e.to_string())?,
        ))
    }

    /// Validates a request, records the session and starts its loop.
    /// `principal` is who asks, as the daemon authenticated them.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateSessionRequest,
        principal: &str,
    ) -> Result<SessionInfo, FleetError> {
        let bad = |m: String| Err(FleetError::BadRequest(m));
        if req.task.trim().is_empty() {
            return bad("the task is empty: say what the agent should do".into());
        }
        let workspace = Path::new(&req.workspace);
        if !workspace.is_absolute() {
            return bad(format!(
                "workspace {:?} is not an absolute path",
                req.workspace
            ));
        }
        let workspace = match workspace.canonicalize() {
            Ok(p) if p.is_dir() => p,
            Ok(_) => return bad(format!("workspace {} is not a directory", req.workspace)),
            Err(e) => return bad(format!("workspace {}: {e}", req.workspace)),
        };
        let role = match &req.role {
            Some(name) => match self.config.roles.get(name) {
                Some(r) => Some((name.clone(), r.clone())),
                None => {
                    let mut known: Vec<&str> =
                        self.config.roles.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    return bad(format!(
                        "no role {name:?} in the daemon's config (roles: {}); add [roles.{name}] with a model",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ));
                }
            },
            None => None,
        };
        let role_model = role.as_ref().map(|(_, r)| r.model.clone());
        let base_url = req
            .base_url
            .clone()
            .or_else(|| role.as_ref().and_then(|(_, r)| r.base_url.clone()));
        let fallbacks = role
            .as_ref()
            .map(|(_, r)| r.fallbacks.clone())
            .unwrap_or_default();
        let d = self.config.default_limits;
        let limits = SessionLimits {
            max_turns: req.max_turns.unwrap_or(d.max_turns),
            wall_time_secs: req.wall_time_secs.unwrap_or(d.wall_time_secs),
            context_window: req.context_window.unwrap_or(d.context_window),
        };
        // A role with a model file and no endpoint (and no other model
        // asked for): place it. Placements are made one at a time, each
        // seeing the slots the last one took.
        let mut _placing = None;
        let mut machine = None;
        let mut base_url = base_url;
        if let Some((name, r)) = &role {
            if let (Some(gguf), None, None) = (&r.gguf, &base_url, &req.model) {
                _placing = Some(self.placing.lock().await);
                let ctx = r.ctx.unwrap_or(limits.context_window);
                let (m, endpoint) = self
                    .place(name, gguf, ctx)
                    .map_err(FleetError::BadRequest)?;
                machine = Some(m);
                base_url = Some(endpoint);
            }
        }
        let model = match req.model.clone().or(role_model).or_else(|| self.config.default_model.clone()) {
            Some(m) => m,
            None => {
                return bad("no model given and no default configured: pass --model openai:MODEL, or set `model` in config.toml".into())
            }
        };
        let spec = ModelSpec::parse(&model).map_err(|e| FleetError::BadRequest(e.to_string()))?;
        let primary = ModelRoute {
            model: spec.to_string(),
            base_url: base_url.clone(),
        };
        for route in std::iter::once(&primary).chain(&fallbacks) {
            ModelSpec::parse(&route.model).map_err(|e| FleetError::BadRequest(e.to_string()))?;
            if let Some(url) = &route.base_url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return bad(format!(
                        "base_url {url:?} must start with http:// or https://"
                    ));
                }
            }
        }
        // Only roles allowed to may reach a frontier endpoint.
        if let Some((name, r)) = &role {
            if !r.allows_frontier(name) {
                for route in std::iter::once(&primary).chain(&fallbacks) {
                    let openai_base = self.config.openai_base_url.as_deref();
                    if is_frontier(route, openai_base, &self.config.local_endpoints) {
                        return bad(format!(
                            "role {name:?} may not use the frontier model {} (only local endpoints; set frontier = true in [roles.{name}] to allow it)",
                            route.model
                        ));
                    }
                }
            }
        }
        if limits.max_turns == 0 || limits.wall_time_secs == 0 || limits.context_window < 512 {
            return bad(
                "max_turns and wall_time_secs must be positive and context_window at least 512"
                    .into(),
            );
        }
        // Fail before recording anything if the model cannot even be set up,
        // or the policy layers do not load (a bad rule, a mode the admin forbids).
        self.chain_for(&primary, &fallbacks)
            .map_err(FleetError::BadRequest)?;
        if let Some(policy) = &self.config.policy {
            let cli = req.permissions.clone().unwrap_or_default();
            build_engine(policy, &workspace, &cli, &[]).map_err(FleetError::BadRequest)?;
        }
        let grants = if req.grants.is_empty() {
            Vec::new()
        } else {
            let vault = self
                .vault()
                .map_err(|e| FleetError::BadRequest(format!("secrets cannot be granted: {e}")))?;
            let specs = req.grants.clone();
            tokio::task::spawn_blocking(move || secrets::issue(&vault, &specs))
                .await
                .map_err(|e| FleetError::BadRequest(format!("checking grants failed: {e}")))?
                .map_err(FleetError::BadRequest)?
        };
        let mut req = req;
        if let Some(f) = &mut req.fleet {
            validate_fleet(f).map_err(FleetError::BadRequest)?;
            // Recorded by the daemon, never taken from the request.
            f.repo_config = fleet::config_identity(&workspace);
        }
        let id = SessionId::generate();
        let mut first = vec![EventKind::SessionCreated {
            task: req.task,
            model: spec.to_string(),
            workspace: workspace.to_string_lossy().into_owned(),
            base_url,
            limits,
            principal: Some(principal.to_owned()),
            permissions: req.permissions.filter(|p| !p.is_empty()),
            role: role.map(|(name, _)| name),
            fallbacks,
            machine,
            fleet: req.fleet.map(|spec| {
                Box::new(FleetLink {
                    spec: Some(spec),
                    parent: None,
                })
            }),
        }];
        if !grants.is_empty() {
            first.push(EventKind::SecretsGranted { grants });
        }
        self.store.append(&id, first).await?;
        self.start(&id, false).await?;
        self.get(&id).await
    }

    /// One session.
    pub async fn get(&self, id: &SessionId) -> Result<SessionInfo, FleetError> {
        self.store
            .session(id)
            .await?
            .ok_or_else(|| FleetError::NotFound(id.clone()))
    }

    /// Asks a session to stop. Ended sessions are returned unchanged.
    pub async fn cancel(
        self: &Arc<Self>,
        id: &SessionId,
        by: &str,
    ) -> Result<SessionInfo, FleetError> {
        let info = self.get(id).await?;
        let live = !info.state.is_terminal();
        // Stop this agent first (so it starts nothing more), then every
        // agent below it, deepest first, then wait for its own end.
        let token = if live {
            self.store
                .append_one(id, EventKind::CancelRequested { by: by.to_owned() })
                .await?;
            let token = self
                .running
                .lock()
                .ok()
                .and_then(|r| r.get(id).map(|r| r.cancel.clone()));
            if let Some(t) = &token {
                t.cancel();
            }
            token
        } else {
            None
        };
        if let Some(root) = &info.root {
            // Taken under the spawning lock: a spawn either finished before
            // (its worker is in the tree) or sees its agent stopping.
            let tree = {
                let lock = self.fleet_lock(root);
                let _spawning = lock.lock().await;
                self.store.fleet_tree(root).await?
            };
            let mut below: Vec<&SessionInfo> = Vec::new();
            let mut frontier = vec![id.clone()];
            while let Some(p) = frontier.pop() {
                for s in tree.iter().filter(|s| s.parent.as_ref() == Some(&p)) {
                    frontier.push(s.id.clone());
                    below.push(s);
                }
            }
            for s in below.iter().rev() {
                if !s.state.is_terminal() {
                    // One failure does not leave the others running.
                    let r = Box::pin(
                        self.cancel(&s.id, &format!("{by} (its parent {id} was cancelled)")),
                    )
                    .await;
                    if let Err(e) = r {
                        tracing::warn!(session = %s.id, error = %e, "cancelling a worker failed");
                    }
                }
            }
        }
        if !live {
            return self.get(id).await;
        }
        match token {
            Some(_) => {
                // Wait for the loop to record the end, so the caller sees it.
                let handle = self.running.lock().ok().and_then(|mut r| r.remove(id));
                if let Some(running) = handle {
                    let _ = running.task.await;
                }
                self.forget(id);
            }
            None => {
                self.store
                    .append_one(
                        id,
                        EventKind::StateChanged {
                            state: SessionState::Cancelled,
                            reason: Some("cancelled".into()),
                        },
                    )
                    .await?;
            }
        }
        self.get(id).await
    }

    /// Resumes every session that was running when the daemon last stopped.
    /// Returns how many were resumed.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, FleetError> {
        let open = self
            .store
            .sessions(Some(vec![
                SessionState::Running,
                SessionState::WaitingApproval,
            ]))
            .await?;
        let n = open.len();
        for info in open {
            self.start(&info.id, true).await?;
        }
        Ok(n)
    }

    async fn start(self: &Arc<Self>, id: &SessionId, resume: bool) -> Result<(), FleetError> {
        let Some(info) = self.store.session(id).await? else {
            return Err(FleetError::NotFound(id.clone()));
        };
        let spec = ModelSpec::parse(&info.model).map_err(|e| FleetError::BadRequest(e.to_string()));
        let Origin {
            base_url,
            principal,
            permissions,
            fallbacks,
            machine,
            grants,
            fleet,
        } = session_origin(&self.store, id).await?;
        // A worker's policy is its own intersected with every ancestor's.
        let ancestors = self.ancestor_permissions(fleet.as_deref()).await?;
        if fleet.is_some() {
            self.watch_budgets();
        }
        let host_tools = self.fleet_tools(id, fleet.as_deref()).await?;
        // A workflow's root runs its file's steps instead of a model's turns.
        let workflow = fleet
            .as_deref()
            .and_then(|l| l.spec.as_ref())
            .filter(|s| s.workflow.is_some())
            .map(|s| fleet::Place {
                me: id.clone(),
                root: id.clone(),
                depth: 0,
                spec: s.clone(),
            });
        let client = spec.and_then(|s| {
            let primary = ModelRoute {
                model: s.to_string(),
                base_url: base_url.clone(),
            };
            self.chain_for(&primary, &fallbacks)
                .map_err(FleetError::BadRequest)
                .map(|c| (s, c))
        });
        // Each model request waits for a slot of the machine and of its
        // endpoint, in the queue shared fairly between fleets.
        let fleet_key = info.root.clone().unwrap_or_else(|| id.clone());
        let client = client.map(|(s, c)| {
            let endpoint = base_url.clone().or_else(|| match s.provider.as_str() {
                "anthropic" => self.config.anthropic_base_url.clone(),
                "bedrock" => None,
                _ => self.config.openai_base_url.clone(),
            });
            let mut slots = vec![schedule::Slot::Machine];
            slots.extend(endpoint.map(|u| schedule::Slot::Endpoint(schedule::normalize(&u))));
            let c: Arc<dyn ModelClient> = Arc::new(schedule::Scheduled {
                inner: c,
                sched: self.sched.clone(),
                fleet: fleet_key.clone(),
                slots,
            });
            (s, c)
        });
        // The planner's workers run when their fleet has a free worker slot
        // (deeper workers were counted when they were spawned).
        let worker_slot = match fleet.as_deref().and_then(|l| l.parent.as_ref()) {
            Some(p) if p.depth == 1 => {
                let root_events = self.store.events(&p.root, 0, 1).await?;
                fleet::link_of(&root_events)
                    .and_then(|l| l.spec)
                    .map(|s| (p.root.clone(), s.max_workers as usize))
            }
            _ => None,
        };
        let (spec, client) = match client {
            Ok(pair) => pair,
            Err(e) => {
                self.store
                    .append_one(
                        id,
                        EventKind::StateChanged {
                            state: SessionState::Failed,
                            reason: Some(format!("cannot reach the model: {e}")),
                        },
                    )
                    .await?;
                return Ok(());
            }
        };
        let policy = match &self.config.policy {
            None => None,
            Some(config) => {
                let workspace = std::path::PathBuf::from(&info.workspace);
                let cli = permissions.unwrap_or_default();
                match build_stack(config, &workspace, &cli, &[], &ancestors) {
                    Ok(stack) => {
                        let p = Arc::new(SessionPolicy {
                            session: id.clone(),
                            principal: principal.unwrap_or_else(|| "local".into()),
                            workspace,
                            cli,
                            ancestors,
                            config: config.clone(),
                            session_allow: Mutex::new(Vec::new()),
                            stack: RwLock::new(stack),
                            lookup: self.principals.get().cloned(),
                            queue: self.queue.clone(),
                            worker: self.worker_approvals(fleet.as_deref()).await,
                        });
                        if let Ok(mut all) = self.policies.lock() {
                            all.insert(id.clone(), p.clone());
                        }
                        Some(p as Arc<dyn flotilla_agent::CallPolicy>)
                    }
                    Err(e) => {
                        self.fail(id, e).await;
                        return Ok(());
                    }
                }
            }
        };
        // Granted secrets: the proxy hook, the placeholders, the redaction.
        let session_secrets = if grants.is_empty() {
            None
        } else {
            match self.vault() {
                Ok(vault) => Some(secrets::for_session(&vault, &self.store, id, &grants)),
                Err(e) => {
                    self.fail(
                        id,
                        format!("the session's granted secrets cannot be used: {e}"),
                    )
                    .await;
                    return Ok(());
                }
            }
        };
        let (network, redact) = match session_secrets {
            Some(s) => (s.network, Some(s.redact)),
            None => (Default::default(), None),
        };
        let cancel = CancellationToken::new();
        let settings = AgentSettings {
            model_name: spec.model.clone(),
            retry: self.config.retry,
            tool_limits: self.config.tool_limits.clone(),
            system_prompt: self.config.system_prompt.clone(),
            max_tokens: None,
            prices: self.config.prices.clone(),
        };
        let me = Arc::clone(self);
        let sid = id.clone();
        let workspace = std::path::PathBuf::from(&info.workspace);
        let loop_cancel = cancel.clone();
        let mut running = self
            .running
            .lock()
            .map_err(|_| FleetError::BadRequest("supervisor state poisoned".into()))?;
        if running.contains_key(id) {
            return Ok(());
        }
        if !grants.is_empty() {
            if let Ok(mut all) = self.grants.lock() {
                all.insert(id.clone(), grants);
            }
        }
        // The machine's slot is held from now until the task ends (for a
        // queued worker, from when it leaves the queue).
        let slots = self.slots.clone();
        let (hold, hold_later) = match worker_slot {
            None => (machine.map(|m| SlotHold::take(&slots, id, m)), None),
            Some(_) => (None, machine),
        };
        let tool_limits = self.config.tool_limits.clone();
        let sched = self.sched.clone();
        let task = tokio::spawn(async move {
            let _worker_slot = match &worker_slot {
                Some((root, max)) => {
                    let slot = schedule::Slot::Fleet(root.clone());
                    tokio::select! {
                        p = sched.acquire_limited(root, slot, *max) => Some(p),
                        // Cancelled while queued: the loop records it.
                        _ = loop_cancel.cancelled() => None,
                    }
                }
                None => None,
            };
            let _hold = hold.or_else(|| hold_later.map(|m| SlotHold::take(&slots, &sid, m)));
            // The session's sandbox is built at its first command and lives
            // as long as this task: dropping the executor ends it and every
            // process in it. What cannot work at all fails the session now.
            if let Err(e) = me.executors.preflight().await {
                tracing::error!(session = %sid, error = %e, "no sandbox for the session");
                me.fail(&sid, format!("no sandbox for the session's commands: {e}"))
                    .await;
                return;
            }
            let executor: Arc<dyn CommandExecutor> = Arc::new(LazyExecutor {
                factory: me.executors.clone(),
                workspace,
                network,
                store: me.store.clone(),
                session: sid.clone(),
                current: tokio::sync::Mutex::new(None),
            });
            let run = AgentRun {
                store: me.store.clone(),
                session: sid.clone(),
                client,
                executor,
                settings,
                cancel: loop_cancel,
                resume,
                policy,
                redact,
                host_tools,
            };
            let outcome = match (workflow, run.host_tools.clone()) {
                (Some(place), Some(tools)) => {
                    let Some(workflow) = place.spec.workflow.clone() else {
                        return;
                    };
                    workflow::run_workflow(workflow::WorkflowRun {
                        sup: me.clone(),
                        place,
                        workflow,
                        tools,
                        executor: run.executor,
                        policy: run.policy,
                        tool_limits,
                        cancel: run.cancel,
                        resume,
                    })
                    .await
                }
                _ => run_agent(run).await,
            };
            match outcome {
                Ok(exit) => {
                    tracing::info!(session = %sid, exit = ?short(&exit), "session ended");
                    me.forget(&sid);
                }
                Err(e) => {
                    tracing::error!(session = %sid, error = %e, "session loop failed");
                    me.fail(&sid, format!("internal error: {e}")).await;
                }
            }
            drop(_worker_slot);
            if let Some((root, _)) = worker_slot {
                sched.clear_limit(&schedule::Slot::Fleet(root));
            }
        });
        running.insert(id.clone(), Running { cancel, task });
        Ok(())
    }

    /// Records a failed session and forgets its loop.
    async fn fail(&self, sid: &SessionId, reason: String) {
        let _ = self
            .store
            .append_one(
                sid,
                EventKind::StateChanged {
                    state: SessionState::Failed,
                    reason: Some(reason),
                },
            )
            .await;
        self.forget(sid);
    }

    fn forget(&self, sid: &SessionId) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(sid);
        }
        if let Ok(mut p) = self.policies.lock() {
            p.remove(sid);
        }
        if let Ok(mut g) = self.grants.lock() {
            g.remove(sid);
        }
        self.queue.forget_session(sid);
    }

    /// The approvals waiting for a person, oldest first.
    pub fn approvals(&self) -> Vec<ApprovalInfo> {
        self.queue.list()
    }

    /// Approves a pending call. With `always` (session, project or user),
    /// also adds `rule` (default: the suggested one) to that layer's allow
    /// list. `by` is the principal answering; only the session's principal
    /// or an admin may.
    pub async fn approve(
        &self,
        approval_id: &str,
        by: &str,
        is_admin: bool,
        always: Option<&str>,
        rule: Option<&str>,
    ) -> Result<ApprovalInfo, FleetError> {
        let info = self.answerable(approval_id, by, is_admin)?;
        // Everything that can refuse is checked before the approval is taken.
        let mut always_rule = None;
        if let Some(layer) = always {
            let rule = rule.unwrap_or(&info.suggested_rule).trim().to_owned();
            flotilla_policy::Rule::parse(&rule)
                .map_err(|e| FleetError::BadRequest(format!("rule {rule:?}: {e}")))?;
            let policy =
                self.config.policy.as_ref().ok_or_else(|| {
                    FleetError::BadRequest("this daemon has no policy layers".into())
                })?;
            let file = match layer {
                "session" => None,
                // The user layer is the daemon's config.toml: every
                // principal's sessions read it.
                "user" if !is_admin => {
                    return Err(FleetError::Forbidden(
                        "--always user changes the daemon's config.toml for every principal: only an admin may; use --always session".into(),
                    ))
                }
                "user" => Some(policy.paths.user.clone()),
                "project" => {
                    let ws = self.get(&info.session).await?.workspace;
                    let ws = Path::new(&ws);
                    let user = flotilla_policy::config::LoadedLayer::load(
                        flotilla_policy::Layer::User,
                        &policy.paths.user,
                    )
                    .map_err(|e| FleetError::BadRequest(e.to_string()))?;
                    let trusted = user
                        .permissions
                        .trusted_projects
                        .iter()
                        .any(|p| Path::new(p) == ws);
                    if !trusted {
                        return Err(FleetError::BadRequest(format!(
                            "a project's allow rules count only when the project is trusted: add {:?} to trusted_projects in {}, or use --always session|user",
                            ws.display(),
                            policy.paths.user.display()
                        )));
                    }
                    Some(flotilla_policy::LayerPaths::project(ws))
                }
                other => {
                    return Err(FleetError::BadRequest(format!(
                        "--always takes session, project or user, not {other:?}"
                    )))
                }
            };
            always_rule = Some((rule, layer.to_owned(), file));
        }
        let Some(pending) = self.queue.take(approval_id) else {
            return Err(FleetError::NoApproval(approval_id.to_owned()));
        };
        let (rule, layer, file) = match always_rule {
            Some((r, l, f)) => (Some(r), Some(l), f),
            None => (None, None, None),
        };
        let given = EventKind::ApprovalGiven {
            approval_id: approval_id.to_owned(),
            by: by.to_owned(),
            always_rule: rule.clone(),
            always_layer: layer,
        };
        if let Err(e) = self.store.append_one(&info.session, given).await {
            // Not recorded, so not approved: the call waits again.
            self.queue.put_back(approval_id, pending);
            return Err(e.into());
        }
        let mut result = Ok(info.clone());
        if let (Some(file), Some(rule)) = (&file, &rule) {
            match flotilla_policy::config::add_allow_rule(file, rule) {
                Ok(()) => self.reload_policies(),
                Err(e) => {
                    result = Err(FleetError::BadRequest(format!(
                        "the call is approved, but the rule was not written: {e}"
                    )))
                }
            }
        }
        if let Some(tx) = pending.answer {
            let _ = tx.send(ApprovalAnswer::Approved);
        }
        result
    }

    /// Refuses a pending call; the model is told `reason`.
    pub async fn deny(
        &self,
        approval_id: &str,
        by: &str,
        is_admin: bool,
        reason: &str,
    ) -> Result<ApprovalInfo, FleetError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(FleetError::BadRequest(
                "say why (--reason TEXT): the agent is told, so it can do something else".into(),
            ));
        }
        let info = self.answerable(approval_id, by, is_admin)?;
        let Some(pending) = self.queue.take(approval_id) else {
            return Err(FleetError::NoApproval(approval_id.to_owned()));
        };
        let refused = EventKind::ApprovalRefused {
            approval_id: approval_id.to_owned(),
            by: by.to_owned(),
            reason: reason.to_owned(),
        };
        if let Err(e) = self.store.append_one(&info.session, refused).await {
            self.queue.put_back(approval_id, pending);
            return Err(e.into());
        }
        if let Some(tx) = pending.answer {
            let _ = tx.send(ApprovalAnswer::Refused {
                reason: reason.to_owned(),
            });
        }
        Ok(info)
    }

    fn answerable(
        &self,
        approval_id: &str,
        by: &str,
        is_admin: bool,
    ) -> Result<ApprovalInfo, FleetError> {
        let info = self
            .queue
            .get(approval_id)
            .ok_or_else(|| FleetError::NoApproval(approval_id.to_owned()))?;
        if !is_admin && info.principal != by {
            return Err(FleetError::Forbidden(format!(
                "approval {approval_id} belongs to a session of {}; only they or an admin may answer it",
                info.principal
            )));
        }
        Ok(info)
    }

    /// Rebuilds every running session's policy from its layers.
    pub fn reload_policies(&self) {
        let all: Vec<Arc<SessionPolicy>> = self
            .policies
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        for p in all {
            p.reload();
        }
    }

    /// Stops every loop without recording a cancel: they resume on the next start.
    pub async fn shutdown(&self) {
        let tasks: Vec<Running> = match self.running.lock() {
            Ok(mut r) => r.drain().map(|(_, v)| v).collect(),
            Err(_) => return,
        };
        for t in tasks {
            t.task.abort();
            let _ = t.task.await;
        }
    }
}

fn short(exit: &AgentExit) -> &'static str {
    match exit {
        AgentExit::Completed(_) => "completed",
        AgentExit::Failed(_) => "failed",
        AgentExit::Cancelled => "cancelled",
    }
}

/// What a session was created with that its loop needs again.
#[derive(Default)]
struct Origin {
    base_url: Option<String>,
    principal: Option<String>,
    permissions: Option<SessionPermissions>,
    fallbacks: Vec<ModelRoute>,
    machine: Option<String>,
    grants: Vec<flotilla_protocol::SecretGrant>,
    fleet: Option<Box<FleetLink>>,
}

async fn session_origin(store: &Store, id: &SessionId) -> Result<Origin, StoreError> {
    // `SessionCreated`, then `SecretsGranted` when the session has grants.
    let first = store.events(id, 0, 2).await?;
    let grants = first
        .iter()
        .find_map(|e| match &e.event {
            EventKind::SecretsGranted { grants } => Some(grants.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let origin = first
        .into_iter()
        .find_map(|e| match e.event {
            EventKind::SessionCreated {
                base_url,
                principal,
                permissions,
                fallbacks,
                machine,
                fleet,
                ..
            } => Some(Origin {
                base_url,
                principal,
                permissions,
                fallbacks,
                machine,
                grants: Vec::new(),
                fleet,
            }),
            _ => None,
        })
        .unwrap_or_default();
    Ok(Origin { grants, ..origin })
}

/// A fleet's settings within sane bounds (a tree deeper than 8 levels, a
/// budget of zero, or a timeout past a week is a mistake, and a huge one
/// would overflow a clock).
fn validate_fleet(f: &flotilla_protocol::FleetSpec) -> Result<(), String> {
    if !(1..=8).contains(&f.max_depth) {
        return Err(format!("fleet max_depth {} must be 1 to 8", f.max_depth));
    }
    if f.max_workers == 0 || f.max_total == 0 {
        return Err("fleet max_workers and max_total must be at least 1".into());
    }
    if !(1..=7 * 86_400).contains(&f.approval_timeout_secs) {
        return Err("fleet approval_timeout_secs must be 1 s to 7 days".into());
    }
    if f.max_tokens == Some(0) {
        return Err("fleet max_tokens must be positive".into());
    }
    if let Some(c) = f.max_cost_usd {
        if !(c.is_finite() && c > 0.0) {
            return Err("fleet max_cost_usd must be a positive number".into());
        }
    }
    if let Some(w) = &f.workflow {
        w.validate().map_err(|e| format!("workflow: {e}"))?;
    }
    Ok(())
}

/// A session's command executor, built by the factory at the session's first
/// command (a session that only talks to its model never costs a sandbox),
/// and built again if it stops being usable (its sandbox's init died). Each
/// build is recorded as `SandboxReady`.
struct LazyExecutor {
    factory: Arc<dyn ExecutorFactory>,
    workspace: std::path::PathBuf,
    /// The session's proxy hook and placeholder environment.
    network: flotilla_agent::tools::SessionNetwork,
    store: Store,
    session: SessionId,
    current: tokio::sync::Mutex<Option<Arc<dyn CommandExecutor>>>,
}

impl LazyExecutor {
    async fn executor(&self) -> std::io::Result<Arc<dyn CommandExecutor>> {
        let mut current = self.current.lock().await;
        if let Some(executor) = current.as_ref() {
            if executor.is_usable() {
                return Ok(executor.clone());
            }
        }
        let built = self
            .factory
            .for_session_with(&self.workspace, self.network.clone())
            .await
            .map_err(|e| {
                std::io::Error::other(format!("no sandbox for the session's commands: {e}"))
            })?;
        if !built.degraded.is_empty() {
            tracing::warn!(session = %self.session, degraded = ?built.degraded, "sandbox is degraded");
        }
        let ready = EventKind::SandboxReady {
            confined: built.confined,
            summary: built.summary,
            degraded: built.degraded,
        };
        if let Err(e) = self.store.append_one(&self.session, ready).await {
            tracing::error!(session = %self.session, error = %e, "cannot record the sandbox");
        }
        *current = Some(built.executor.clone());
        Ok(built.executor)
    }
}

impl CommandExecutor for LazyExecutor {
    fn run<'a>(
        &'a self,
        req: CommandRequest,
    ) -> futures::future::BoxFuture<'a, std::io::Result<CommandResult>> {
        Box::pin(async move { self.executor().await?.run(req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(model: &str, url: Option<&str>) -> ModelRoute {
        ModelRoute {
            model: model.into(),
            base_url: url.map(str::to_owned),
        }
    }

    #[test]
    fn frontier_endpoints() {
        let local = vec!["http://gpu-box.lan:8080/v1".to_owned()];
        let f = |m: &str, u: Option<&str>, default: Option<&str>| {
            is_frontier(&route(m, u), default, &local)
        };
        // Hosted providers always are.
        assert!(f("anthropic:claude", Some("http://127.0.0.1:9"), None));
        // OpenAI-compatible: by where it is.
        assert!(f("openai:gpt-4o", None, None), "api.openai.com by default");
        assert!(f("openai:m", Some("https://openrouter.ai/api/v1"), None));
        assert!(!f("openai:m", Some("http://127.0.0.1:8080/v1"), None));
        assert!(!f("openai:m", Some("http://localhost:8080/v1"), None));
        assert!(!f("openai:m", Some("http://[::1]:8080/v1"), None));
        assert!(!f("openai:m", Some("http://10.1.2.3/v1"), None));
        assert!(!f("openai:m", Some("http://192.168.1.20:8080/v1"), None));
        assert!(
            !f("openai:m", Some("http://box:8080/v1"), None),
            "a LAN name"
        );
        assert!(!f("openai:m", Some("http://ollama.local:11434/v1"), None));
        assert!(
            !f("openai:m", Some("http://gpu-box.lan:8080/v1"), None),
            "a machine"
        );
        assert!(f("openai:m", Some("http://8.8.8.8/v1"), None));
        assert!(f("openai:m", Some("http://user@evil.example.com/v1"), None));
        // URLs a naive parser reads as local while the client goes public.
        for tricky in [
            "http://api%2Eopenai%2Ecom/v1",
            "http://evil.com\\@127.0.0.1/v1",
            "http:///api.openai.com/v1",
            "http://api\u{3002}openai\u{3002}com/v1",
            "http://134744072/v1",
            "http://0x08080808/v1",
            "http://[::ffff:8.8.8.8]/v1",
            "HTTP://API.OPENAI.COM./v1",
        ] {
            assert!(
                f("openai:m", Some(tricky), None),
                "{tricky} taken for local"
            );
        }
        assert!(!f(
            "openai:m",
            Some("http://[::ffff:127.0.0.1]:8080/v1"),
            None
        ));
        assert!(
            !f("openai:m", Some("http://2130706433:8080/v1"), None),
            "127.0.0.1"
        );
        // A blank endpoint means the default, as for the client.
        assert!(f("openai:m", Some("  "), Some(" ")));
        // The daemon's OPENAI_BASE_URL when the route names none.
        assert!(!f("openai:m", None, Some("http://127.0.0.1:1234/v1")));
        // Only the planner by default; a role may opt in.
        let r = RoleConfig::default();
        assert!(r.allows_frontier("planner") && !r.allows_frontier("worker"));
        let r = RoleConfig {
            frontier: Some(true),
            ..RoleConfig::default()
        };
        assert!(r.allows_frontier("worker"));
    }
}
