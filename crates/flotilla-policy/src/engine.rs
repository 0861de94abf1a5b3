//! The decision engine: rules compiled to Cedar policies, evaluated per call.
//!
//! How the dialect maps onto Cedar (see ARCHITECTURE.md):
//! - `deny` and the admin's `hard_deny` rules are `forbid` policies; `ask`
//!   and `allow` rules are `permit` policies. Each policy's id indexes a
//!   table that says its effect (hard-deny, deny, ask, allow, tier), layer
//!   and text.
//! - One Cedar evaluation returns every satisfied policy of the kind that
//!   won (all satisfied `forbid`s, else all satisfied `permit`s). flotilla
//!   then orders them: hard-deny, tier, deny, ask, allow; no match at all
//!   falls to the permission mode.
//! - The principal carries its vetted tiers; `context.mfa_fresh` says
//!   whether its last TOTP login is within the admin's window. Tier rules
//!   are `forbid` policies over those two.
//! - Shell rules are `resource.command like "..."`; path rules are
//!   `resource in Glob::"N"`: path globs are matched by `globset` (exact
//!   `*`/`**` semantics that `like` lacks) and the globs a path matches
//!   become the resource's parents. Domain rules compare `resource.domain`.
//!
//! Policies are indexed (sliced) by action and by what their condition
//! fixes: the first word of a shell pattern, the glob, the exact domain.
//! A call is evaluated against the slices that can match it only, which is
//! what keeps a decision in microseconds with thousands of rules; the
//! `unsliced` mode evaluates everything and exists to check that both agree.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Entities, EntityId, EntityTypeName, EntityUid, Policy, PolicyId,
    PolicySet, Request, RestrictedExpression,
};
use cedar_policy_core::ast as core_ast;
use cedar_policy_core::entities as core_entities;
use flotilla_protocol::PolicyVerdict;
use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};

use crate::gate::ExecLaterGate;
use crate::mode::Mode;
use crate::rule::{command_first_word, command_pattern, Action, CommandPattern, Rule, Specifier};

/// What a rule does when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// The admin's `hard_deny`: nothing overrides it.
    HardDeny,
    /// `deny`.
    Deny,
    /// `ask`.
    Ask,
    /// `allow`.
    Allow,
}

impl Effect {
    /// `hard_deny`, `deny`, `ask` or `allow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::HardDeny => "hard_deny",
            Effect::Deny => "deny",
            Effect::Ask => "ask",
            Effect::Allow => "allow",
        }
    }
}

/// Where a rule or setting comes from, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// `/etc/flotilla/managed.toml` or `$FLOTILLA_HOME/managed.toml`.
    Admin,
    /// `flotilla run --mode --allow ...`.
    Cli,
    /// `approve --always session`: this session only.
    Session,
    /// `.flotilla/config.toml` in the workspace.
    Project,
    /// The user's `config.toml`.
    User,
}

impl Layer {
    /// `admin`, `cli`, `session`, `project` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Admin => "admin",
            Layer::Cli => "cli",
            Layer::Session => "session",
            Layer::Project => "project",
            Layer::User => "user",
        }
    }
}

/// Where a rule was written, for messages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The file, when the rule came from one.
    pub file: Option<PathBuf>,
    /// Its line, from 1.
    pub line: Option<usize>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{line}", file.display()),
            (Some(file), None) => write!(f, "{}", file.display()),
            _ => Ok(()),
        }
    }
}

/// One rule of one layer.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    /// What it does.
    pub effect: Effect,
    /// The rule.
    pub rule: Rule,
    /// Its layer.
    pub layer: Layer,
    /// Where it was written.
    pub origin: Origin,
}

/// An admin rule that puts calls into a capability tier.
#[derive(Clone, Debug)]
pub struct TierEntry {
    /// The tier (`high-autonomy`, `cyber`, `bio`, or the admin's own).
    pub tier: String,
    /// The calls in the tier.
    pub rule: Rule,
    /// Where it was written.
    pub origin: Origin,
}

/// Everything an engine is built from (see [`crate::config`] for how layers
/// produce it).
#[derive(Clone, Debug, Default)]
pub struct EngineSpec {
    /// The session's workspace (absolute, canonical).
    pub workspace: PathBuf,
    /// The user's home folder, for `~/` in rules and the gate.
    pub home: Option<PathBuf>,
    /// The effective mode.
    pub mode: Mode,
    /// The layer that set the mode.
    pub mode_layer: Option<Layer>,
    /// Every rule in force.
    pub rules: Vec<RuleEntry>,
    /// Tier assignments.
    pub tiers: Vec<TierEntry>,
    /// The admin's raw Cedar policies (source text, origin).
    pub raw_cedar: Vec<(String, Origin)>,
    /// The admin's extra exec-later globs.
    pub exec_later_extra: Vec<String>,
    /// How long a TOTP login counts, in milliseconds.
    pub mfa_window_ms: i64,
    /// Rules present but not in force (a project's `allow` it may not
    /// widen with), with why: shown by `policy check`.
    pub inactive: Vec<String>,
}

/// Why an engine cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A rule compiled to something Cedar refused (a flotilla bug, or a
    /// raw admin policy that does not parse).
    #[error("Cedar policy {origin}: {message}")]
    Cedar {
        /// Where the policy came from.
        origin: String,
        /// Cedar's message.
        message: String,
    },
    /// An exec-later glob is wrong.
    #[error(transparent)]
    Gate(#[from] crate::gate::GateError),
    /// A path glob could not be compiled.
    #[error("path pattern {0:?}: {1}")]
    Glob(String, String),
}

/// One thing a call does, checked on its own: a shell command (each part
/// of a compound one), a path read or written, a domain reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The action.
    pub action: Action,
    /// The command text (shell), else empty.
    pub command: String,
    /// The absolute path (file tools, shell redirections), else empty.
    pub path: String,
    /// The host (Fetch), else empty.
    pub domain: String,
    /// Implied by another item (a shell redirection's target, the whole
    /// text of a compound command): deny, ask and the gate apply to it, but
    /// it needs no allow of its own.
    pub implied: bool,
}

/// A tool call as policy sees it (built by [`crate::request`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCheck {
    /// The flotilla tool (`shell`, `write_file`...).
    pub tool: String,
    /// What it does, item by item.
    pub items: Vec<Item>,
    /// Set when the call cannot be fully analysed (why): it asks.
    pub opaque: Option<String>,
    /// The call in one line, for approvals.
    pub summary: String,
}

/// Who makes the call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Principal {
    /// Name.
    pub name: String,
    /// Tiers the principal is vetted for.
    pub vetted: Vec<String>,
    /// Last TOTP login, ms since the epoch.
    pub mfa_verified_ms: Option<i64>,
}

/// A decision, with what decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// allow, ask or deny.
    pub verdict: PolicyVerdict,
    /// Why, in words a person can act on.
    pub reason: String,
    /// The rule that decided, as written.
    pub rule: Option<String>,
    /// Its layer, or `mode`, `gate`, `tier`.
    pub layer: Option<String>,
    /// The item that decided (`Shell(git push)`): what an approval is for,
    /// and what `--always` would allow.
    pub item: Option<String>,
}

impl Decision {
    fn new(verdict: PolicyVerdict, reason: String, rule: Option<String>, layer: &str) -> Self {
        Decision {
            verdict,
            reason,
            rule,
            layer: Some(layer.to_owned()),
            item: None,
        }
    }

    fn severity(&self) -> u8 {
        match self.verdict {
            PolicyVerdict::Allow => 0,
            PolicyVerdict::Ask => 1,
            PolicyVerdict::Deny => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Meta {
    Rule(usize),
    TierUnvetted(usize),
    TierMfa(usize),
    Raw {
        index: usize,
        ask: bool,
        forbid: bool,
    },
}

/// A compiled policy: decides calls of one session.
pub struct Engine {
    spec: EngineSpec,
    gate: ExecLaterGate,
    authorizer: Authorizer,
    /// Indexes into `policies`, by slice key.
    slices: HashMap<String, Vec<usize>>,
    /// Every compiled rule as a set of one, with its command pattern
    /// (shell rules). This is flotilla's index: Cedar evaluates every policy
    /// it is given (about 1.5 us each, whether it matches or not), so a
    /// policy is given to Cedar only when its slice fits the call and, for
    /// a shell rule, its pattern matches the command by the same `like`
    /// semantics Cedar applies (`CommandPattern`); `decide_unsliced`,
    /// which gives Cedar everything, must decide the same.
    policies: Vec<(PolicySet, Option<CommandPattern>, bool)>,
    /// The admin's raw Cedar, evaluated for every item.
    raw: Option<PolicySet>,
    /// Every policy in one set (the `unsliced` check and the benchmark baseline).
    all: PolicySet,
    meta: HashMap<String, Meta>,
    /// Every anchored path glob at once (what `decide_unsliced` uses).
    globs: GlobSet,
    /// The same globs one by one, indexed by the folder their literal
    /// prefix names: a path is matched only against the globs of its
    /// ancestors, instead of running the whole set's automaton.
    glob_matchers: Vec<GlobMatcher>,
    glob_dirs: HashMap<String, Vec<usize>>,
    call_type: EntityTypeName,
    principal_type: EntityTypeName,
    action_type: EntityTypeName,
    /// `Glob::"N"` for every glob, built once.
    glob_uids: Vec<core_ast::EntityUID>,
    /// The workspace, as the value of every resource's `workspace`.
    workspace: core_ast::Value,
    /// The request context, by whether the principal's MFA is fresh.
    contexts: [Context; 2],
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("mode", &self.spec.mode)
            .field("rules", &self.spec.rules.len())
            .field("slices", &self.slices.len())
            .finish()
    }
}

fn type_name(s: &str) -> Result<EntityTypeName, EngineError> {
    EntityTypeName::from_str(s).map_err(|e| EngineError::Cedar {
        origin: "entity type".into(),
        message: e.to_string(),
    })
}

/// A Cedar string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Anchors a rule's path pattern: `/abs`, `//abs` (Claude Code's absolute
/// form), `~/x` under home, anything else under the workspace.
pub fn anchor_pattern(pattern: &str, workspace: &Path, home: Option<&Path>) -> String {
    let clean = |p: &str| p.trim_start_matches("./").to_owned();
    if let Some(rest) = pattern.strip_prefix("//") {
        return format!("/{rest}");
    }
    if pattern.starts_with('/') {
        return pattern.to_owned();
    }
    if let Some(rest) = pattern.strip_prefix("~/") {
        if let Some(h) = home {
            return format!("{}/{}", h.display().to_string().trim_end_matches('/'), rest);
        }
    }
    format!(
        "{}/{}",
        workspace.display().to_string().trim_end_matches('/'),
        clean(pattern)
    )
}

/// A compiled policy source: id, Cedar text, shell command pattern.
type Source = (String, String, Option<String>);

struct Compiler {
    slices: HashMap<String, Vec<Source>>,
    meta: HashMap<String, Meta>,
    glob_patterns: Vec<String>,
    glob_index: HashMap<String, usize>,
}

impl Compiler {
    /// Slice key, Cedar condition and shell command pattern of a rule.
    fn condition(
        &mut self,
        rule: &Rule,
        spec: &EngineSpec,
    ) -> (String, Option<String>, Option<String>) {
        let action = rule.action.name();
        let (key, cond) = match &rule.spec {
            None => (format!("{action}|"), None),
            Some(Specifier::Command(p)) => {
                let (like, bare) = command_pattern(p);
                let mut cond = format!("resource.command like {}", lit(&like));
                if let Some(b) = bare {
                    cond = format!("({cond} || resource.command == {})", lit(&b));
                }
                let key = match command_first_word(p) {
                    Some(w) => format!("{action}|w:{w}"),
                    None => format!("{action}|"),
                };
                return (key, Some(cond), Some(p.clone()));
            }
            Some(Specifier::Path(p)) => {
                let anchored = anchor_pattern(p, &spec.workspace, spec.home.as_deref());
                let i = match self.glob_index.get(&anchored) {
                    Some(i) => *i,
                    None => {
                        let i = self.glob_patterns.len();
                        self.glob_patterns.push(anchored.clone());
                        self.glob_index.insert(anchored, i);
                        i
                    }
                };
                (
                    format!("{action}|g:{i}"),
                    Some(format!("resource in Glob::\"{i}\"")),
                )
            }
            Some(Specifier::Domain(d)) => match d.strip_prefix("*.") {
                Some(base) => (
                    format!("{action}|"),
                    Some(format!(
                        "resource.domain like {}",
                        lit(&format!("*.{base}"))
                    )),
                ),
                None => (
                    format!("{action}|d:{d}"),
                    Some(format!("resource.domain == {}", lit(d))),
                ),
            },
        };
        (key, cond, None)
    }

    fn add(&mut self, key: String, id: String, src: String, prefix: Option<String>, meta: Meta) {
        self.meta.insert(id.clone(), meta);
        self.slices.entry(key).or_default().push((id, src, prefix));
    }
}

impl Engine {
    /// Compiles `spec`.
    pub fn new(spec: EngineSpec) -> Result<Engine, EngineError> {
        let gate = ExecLaterGate::new(&spec.exec_later_extra)?;
        let mut c = Compiler {
            slices: HashMap::new(),
            meta: HashMap::new(),
            glob_patterns: Vec::new(),
            glob_index: HashMap::new(),
        };
        for (i, entry) in spec.rules.iter().enumerate() {
            let (key, cond, prefix) = c.condition(&entry.rule, &spec);
            let head = match entry.effect {
                Effect::HardDeny | Effect::Deny => "forbid",
                Effect::Ask | Effect::Allow => "permit",
            };
            let src = format!(
                "{head}(principal, action == Action::{}, resource){};",
                lit(entry.rule.action.name()),
                cond.map(|c| format!(" when {{ {c} }}")).unwrap_or_default()
            );
            c.add(key, format!("r{i}"), src, prefix, Meta::Rule(i));
        }
        for (i, t) in spec.tiers.iter().enumerate() {
            let (key, cond, prefix) = c.condition(&t.rule, &spec);
            let cond = cond.map(|c| format!("{c} && ")).unwrap_or_default();
            let tier = lit(&t.tier);
            let head = format!(
                "forbid(principal, action == Action::{}, resource)",
                lit(t.rule.action.name())
            );
            c.add(
                key.clone(),
                format!("t{i}v"),
                format!("{head} when {{ {cond}!principal.vetted.contains({tier}) }};"),
                prefix.clone(),
                Meta::TierUnvetted(i),
            );
            c.add(
                key,
                format!("t{i}m"),
                format!(
                    "{head} when {{ {cond}principal.vetted.contains({tier}) && !context.mfa_fresh }};"
                ),
                prefix,
                Meta::TierMfa(i),
            );
        }
        let mut slices: HashMap<String, Vec<usize>> = HashMap::new();
        let mut policies: Vec<(PolicySet, Option<CommandPattern>, bool)> = Vec::new();
        let mut all = PolicySet::new();
        for (key, sources) in c.slices {
            for (id, src, prefix) in sources {
                let policy = Policy::parse(Some(PolicyId::new(&id)), &src).map_err(|e| {
                    EngineError::Cedar {
                        origin: format!("compiled from rule {id}: {src}"),
                        message: e.to_string(),
                    }
                })?;
                let mut set = PolicySet::new();
                set.add(policy.clone()).map_err(|e| EngineError::Cedar {
                    origin: id.clone(),
                    message: e.to_string(),
                })?;
                all.add(policy).map_err(|e| EngineError::Cedar {
                    origin: id.clone(),
                    message: e.to_string(),
                })?;
                slices.entry(key.clone()).or_default().push(policies.len());
                // An allow rule can only decide an item that needs an allow.
                let allow = matches!(c.meta.get(&id), Some(Meta::Rule(i)) if spec.rules[*i].effect == Effect::Allow);
                policies.push((set, prefix.as_deref().map(CommandPattern::new), allow));
            }
        }
        // The admin's own Cedar: evaluated for every item.
        let mut raw = PolicySet::new();
        for (index, (src, origin)) in spec.raw_cedar.iter().enumerate() {
            let parsed = PolicySet::from_str(src).map_err(|e| EngineError::Cedar {
                origin: origin.to_string(),
                message: e.to_string(),
            })?;
            for (n, policy) in parsed.policies().enumerate() {
                let id = format!("x{index}_{n}");
                let ask = policy.annotation("ask").is_some();
                let forbid = policy.effect() == cedar_policy::Effect::Forbid;
                let policy = policy.new_id(PolicyId::new(&id));
                c.meta.insert(id.clone(), Meta::Raw { index, ask, forbid });
                raw.add(policy.clone()).map_err(|e| EngineError::Cedar {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
                all.add(policy).map_err(|e| EngineError::Cedar {
                    origin: origin.to_string(),
                    message: e.to_string(),
                })?;
            }
        }
        let has_raw = raw.policies().next().is_some();
        let raw = has_raw.then_some(raw);
        let mut globs = GlobSetBuilder::new();
        for g in &c.glob_patterns {
            globs.add(
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| EngineError::Glob(g.clone(), e.to_string()))?,
            );
        }
        let globs = globs
            .build()
            .map_err(|e| EngineError::Glob("(set)".into(), e.to_string()))?;
        let mut glob_matchers = Vec::with_capacity(c.glob_patterns.len());
        let mut glob_dirs: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, g) in c.glob_patterns.iter().enumerate() {
            glob_matchers.push(
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| EngineError::Glob(g.clone(), e.to_string()))?
                    .compile_matcher(),
            );
            glob_dirs.entry(literal_dir(g)).or_default().push(i);
        }
        let glob_type = type_name("Glob")?;
        let glob_uids = (0..c.glob_patterns.len())
            .map(|i| {
                EntityUid::from_type_name_and_id(glob_type.clone(), EntityId::new(i.to_string()))
                    .into()
            })
            .collect();
        let context = |mfa_fresh: bool| {
            Context::from_pairs([
                (
                    "mfa_fresh".to_owned(),
                    RestrictedExpression::new_bool(mfa_fresh),
                ),
                (
                    "mode".to_owned(),
                    RestrictedExpression::new_string(spec.mode.as_str().to_owned()),
                ),
            ])
            .map_err(|e| EngineError::Cedar {
                origin: "the request context".into(),
                message: e.to_string(),
            })
        };
        let contexts = [context(false)?, context(true)?];
        let workspace = core_ast::Value::from(spec.workspace.display().to_string());
        Ok(Engine {
            spec,
            gate,
            authorizer: Authorizer::new(),
            slices,
            policies,
            raw,
            all,
            meta: c.meta,
            globs,
            glob_matchers,
            glob_dirs,
            call_type: type_name("Call")?,
            glob_uids,
            workspace,
            contexts,
            principal_type: type_name("Principal")?,
            action_type: type_name("Action")?,
        })
    }

    /// The spec the engine was built from.
    pub fn spec(&self) -> &EngineSpec {
        &self.spec
    }

    /// The effective permission mode.
    pub fn mode(&self) -> Mode {
        self.spec.mode
    }

    /// How many Cedar policies are loaded.
    pub fn policy_count(&self) -> usize {
        self.all.policies().count()
    }

    /// Whether the model may be offered the flotilla tool `tool`: a bare
    /// tool name in any `deny` or `hard_deny` removes it.
    pub fn offers_tool(&self, tool: &str) -> bool {
        let Some(action) = crate::request::tool_action(tool) else {
            return true;
        };
        let covered = action.with_ancestors();
        !self.spec.rules.iter().any(|r| {
            matches!(r.effect, Effect::Deny | Effect::HardDeny)
                && r.rule.is_bare()
                && covered.contains(&r.rule.action)
        })
    }

    /// Decides a call. Pure: reads nothing but its arguments.
    pub fn decide(&self, call: &CallCheck, principal: &Principal, now_ms: i64) -> Decision {
        self.decide_with(call, principal, now_ms, true)
    }

    /// [`Engine::decide`] evaluating every policy instead of the slices
    /// that can match: the same answer, slower. For tests and benchmarks.
    pub fn decide_unsliced(
        &self,
        call: &CallCheck,
        principal: &Principal,
        now_ms: i64,
    ) -> Decision {
        self.decide_with(call, principal, now_ms, false)
    }

    fn decide_with(
        &self,
        call: &CallCheck,
        principal: &Principal,
        now_ms: i64,
        sliced: bool,
    ) -> Decision {
        let mfa_fresh = principal
            .mfa_verified_ms
            .is_some_and(|t| now_ms >= t && now_ms - t <= self.spec.mfa_window_ms);
        // The worst decision so far, and the item that made it (whose
        // suggested rule is written once, for the decision that stands).
        let mut worst: Option<(Decision, Option<usize>)> = None;
        let mut fold = |d: Decision, item: Option<usize>| {
            if worst
                .as_ref()
                .is_none_or(|(w, _)| d.severity() > w.severity())
            {
                worst = Some((d, item));
            }
        };
        let hits: Vec<Vec<usize>> = call
            .items
            .iter()
            .map(|i| {
                if i.path.is_empty() {
                    Vec::new()
                } else if sliced {
                    self.glob_hits(&i.path)
                } else {
                    self.globs.matches(&i.path)
                }
            })
            .collect();
        // Entities are built only if some policy is to be evaluated.
        let ctx = std::cell::OnceCell::new();
        let ctx = || ctx.get_or_init(|| self.call_context(call, &hits, principal, mfa_fresh));
        for (n, item) in call.items.iter().enumerate() {
            let matched = self.evaluate(&ctx, n, item, &hits[n], sliced);
            let d = match matched {
                Ok(m) => self.rank(item, m),
                // Fail closed: a policy that could not be evaluated denies.
                Err(e) => Some(Decision::new(
                    PolicyVerdict::Deny,
                    format!("policy evaluation failed, so the call is refused: {e}"),
                    None,
                    "admin",
                )),
            };
            if let Some(d) = d {
                fold(d, Some(n));
            }
        }
        if let Some(why) = &call.opaque {
            if self.spec.mode != Mode::Bypass {
                fold(
                    Decision::new(
                        PolicyVerdict::Ask,
                        format!("flotilla cannot tell everything this command runs ({why})"),
                        None,
                        "mode",
                    ),
                    None,
                );
            }
        }
        match worst {
            Some((mut d, item)) => {
                d.item = item.map(|n| suggested_rule(&call.items[n], &self.spec.workspace));
                d
            }
            // Nothing to check at all: a tool policy does not know.
            None if call.items.is_empty() => Decision::new(
                PolicyVerdict::Deny,
                format!("no policy covers the tool {}", call.tool),
                None,
                "mode",
            ),
            // Only implied items, none objected (an empty command).
            None => Decision::new(
                PolicyVerdict::Allow,
                format!("{} runs nothing that needs a rule", call.tool),
                None,
                "mode",
            ),
        }
    }

    fn rank(&self, item: &Item, mut matched: Vec<Meta>) -> Option<Decision> {
        // Cedar reports satisfied policies in no particular order.
        matched.sort();
        matched.dedup();
        let matched = matched.as_slice();
        // Of several matching rules, the first listed decides: rules are
        // listed strongest layer first, so the reason names the rule of the
        // strongest layer, whatever order Cedar reported them in.
        let rule_of = |want: Effect| {
            matched
                .iter()
                .filter_map(|m| match m {
                    Meta::Rule(i) if self.spec.rules[*i].effect == want => Some(*i),
                    _ => None,
                })
                .min()
                .map(|i| &self.spec.rules[i])
        };
        let at = |e: &RuleEntry| {
            let o = e.origin.to_string();
            if o.is_empty() {
                String::new()
            } else {
                format!(" ({o})")
            }
        };
        if let Some(e) = rule_of(Effect::HardDeny) {
            return Some(Decision::new(
                PolicyVerdict::Deny,
                format!(
                    "the administrator forbids this: hard_deny rule `{}`{}; no mode, rule or approval can allow it",
                    e.rule, at(e)
                ),
                Some(e.rule.text.clone()),
                "admin",
            ));
        }
        for m in matched {
            if let Meta::Raw {
                index,
                forbid: true,
                ..
            } = m
            {
                return Some(Decision::new(
                    PolicyVerdict::Deny,
                    format!(
                        "the administrator forbids this: Cedar policy {}",
                        self.spec.raw_cedar[*index].1
                    ),
                    Some(format!("cedar#{index}")),
                    "admin",
                ));
            }
        }
        for m in matched {
            let (i, missing) = match m {
                Meta::TierUnvetted(i) => (*i, "vetting"),
                Meta::TierMfa(i) => (*i, "mfa"),
                _ => continue,
            };
            let t = &self.spec.tiers[i];
            let reason = if missing == "vetting" {
                format!(
                    "`{}` is in capability tier `{}`, and this session's principal is not vetted for it: an admin runs `flotilla principal vet NAME --tier {}`",
                    t.rule, t.tier, t.tier
                )
            } else {
                format!(
                    "`{}` is in capability tier `{}`, which needs a TOTP login within the last {}: run `flotilla login --totp CODE`",
                    t.rule,
                    t.tier,
                    human_ms(self.spec.mfa_window_ms)
                )
            };
            return Some(Decision::new(
                PolicyVerdict::Deny,
                reason,
                Some(t.rule.text.clone()),
                "tier",
            ));
        }
        let mode = self.spec.mode;
        if mode == Mode::Plan && !item.action.is_read_only() {
            return Some(Decision::new(
                PolicyVerdict::Deny,
                format!(
                    "plan mode is read-only: {} is not run; present the plan instead",
                    item.action
                ),
                None,
                "mode",
            ));
        }
        if let Some(e) = rule_of(Effect::Deny) {
            return Some(Decision::new(
                PolicyVerdict::Deny,
                format!("denied by rule `{}`{}", e.rule, at(e)),
                Some(e.rule.text.clone()),
                e.layer.as_str(),
            ));
        }
        if mode == Mode::Bypass {
            return Some(Decision::new(
                PolicyVerdict::Allow,
                "bypass mode (permitted by the administrator)".into(),
                None,
                "mode",
            ));
        }
        if item.action.is_edit() && !item.path.is_empty() {
            let path = Path::new(&item.path);
            if let Some(hit) = self.gate.check(path, self.spec.home.as_deref()) {
                return Some(Decision::new(
                    PolicyVerdict::Ask,
                    format!(
                        "writing {} changes a file that executes later ({}: {}); such writes always ask",
                        hit.path.display(),
                        hit.category,
                        hit.entry
                    ),
                    Some(hit.entry),
                    "gate",
                ));
            }
        }
        if let Some(e) = rule_of(Effect::Ask) {
            return Some(Decision::new(
                PolicyVerdict::Ask,
                format!("rule `{}`{} asks", e.rule, at(e)),
                Some(e.rule.text.clone()),
                e.layer.as_str(),
            ));
        }
        for m in matched {
            if let Meta::Raw {
                index, ask: true, ..
            } = m
            {
                return Some(Decision::new(
                    PolicyVerdict::Ask,
                    format!(
                        "the administrator's Cedar policy {} asks",
                        self.spec.raw_cedar[*index].1
                    ),
                    Some(format!("cedar#{index}")),
                    "admin",
                ));
            }
        }
        // The whole line of a compound command needs no allow of its own
        // (its parts do). A file a shell command writes does: a bare
        // `> src/main.rs` is an edit, decided like one.
        if item.implied && !item.action.is_edit() {
            return None;
        }
        if let Some(e) = rule_of(Effect::Allow) {
            return Some(Decision::new(
                PolicyVerdict::Allow,
                format!("allowed by rule `{}`{}", e.rule, at(e)),
                Some(e.rule.text.clone()),
                e.layer.as_str(),
            ));
        }
        for m in matched {
            if let Meta::Raw {
                index,
                ask: false,
                forbid: false,
            } = m
            {
                return Some(Decision::new(
                    PolicyVerdict::Allow,
                    format!(
                        "allowed by the administrator's Cedar policy {}",
                        self.spec.raw_cedar[*index].1
                    ),
                    Some(format!("cedar#{index}")),
                    "admin",
                ));
            }
        }
        Some(self.mode_default(item))
    }

    fn mode_default(&self, item: &Item) -> Decision {
        let mode = self.spec.mode;
        let allow = |why: String| Decision::new(PolicyVerdict::Allow, why, None, "mode");
        let ask = |why: String| Decision::new(PolicyVerdict::Ask, why, None, "mode");
        if item.action.is_read_only() {
            return allow(format!("reads run in {mode} mode"));
        }
        match mode {
            Mode::Auto | Mode::Bypass => {
                allow(format!("{mode} mode runs what no rule denies or asks"))
            }
            Mode::AcceptEdits if item.action.is_edit() => {
                if Path::new(&item.path).starts_with(&self.spec.workspace) {
                    allow("accept-edits mode: edits inside the workspace run".into())
                } else {
                    ask(format!(
                        "accept-edits mode: {} is outside the workspace",
                        item.path
                    ))
                }
            }
            _ => ask(format!(
                "{mode} mode: {} asks unless a rule allows it (e.g. `{}`)",
                item.action,
                suggested_rule(item, &self.spec.workspace)
            )),
        }
    }

    /// The entities of one call (one resource per item, the principal)
    /// and its context, built once for all its items.
    ///
    /// Built with `cedar-policy-core` rather than the public `Entity::new`
    /// and `Entities::from_entities`, which together were two fifths of a
    /// decision: those evaluate every attribute as a restricted expression
    /// and recompute the transitive closure of the entity graph. Here the
    /// attributes are plain strings and sets of strings, made values
    /// directly, and the graph is a star whose only edges go from a
    /// resource to the `Glob`s it matches, which are never entities
    /// themselves: the closure is the parents, so it is declared computed
    /// (`TCComputation::AssumeAlreadyComputed`) instead of recomputed.
    fn call_context(
        &self,
        call: &CallCheck,
        hits: &[Vec<usize>],
        principal: &Principal,
        mfa_fresh: bool,
    ) -> Result<CallContext, String> {
        use core_ast::{PartialValue, Value};
        let principal_uid = EntityUid::from_type_name_and_id(
            self.principal_type.clone(),
            EntityId::new(&principal.name),
        );
        let string = |s: &str| PartialValue::from(Value::from(s));
        let mut entities = Vec::with_capacity(call.items.len() + 1);
        let mut resources = Vec::with_capacity(call.items.len());
        for (n, item) in call.items.iter().enumerate() {
            let uid = EntityUid::from_type_name_and_id(
                self.call_type.clone(),
                EntityId::new(n.to_string()),
            );
            let parents = hits[n].iter().map(|&i| self.glob_uids[i].clone()).collect();
            entities.push(core_ast::Entity::new_with_attr_partial_value(
                uid.clone().into(),
                [
                    ("command".into(), string(&item.command)),
                    ("path".into(), string(&item.path)),
                    ("domain".into(), string(&item.domain)),
                    ("workspace".into(), self.workspace.clone().into()),
                ],
                HashSet::new(),
                parents,
                [],
            ));
            resources.push(uid);
        }
        let vetted = Value::set(
            principal.vetted.iter().map(|t| Value::from(t.as_str())),
            None,
        );
        entities.push(core_ast::Entity::new_with_attr_partial_value(
            principal_uid.clone().into(),
            [("vetted".into(), vetted.into())],
            HashSet::new(),
            HashSet::new(),
            [],
        ));
        let entities = core_entities::Entities::from_entities(
            entities,
            None::<&core_entities::NoEntitiesSchema>,
            core_entities::TCComputation::AssumeAlreadyComputed,
            cedar_policy_core::extensions::Extensions::all_available(),
        )
        .map_err(|e| e.to_string())?;
        Ok(CallContext {
            entities: Entities::from(entities),
            context: self.contexts[usize::from(mfa_fresh)].clone(),
            principal: principal_uid,
            resources,
        })
    }

    /// The satisfied policies for item `n` of a call.
    fn evaluate<'c>(
        &self,
        ctx: &impl Fn() -> &'c Result<CallContext, String>,
        n: usize,
        item: &Item,
        hits: &[usize],
        sliced: bool,
    ) -> Result<Vec<Meta>, String> {
        let mut matched = Vec::new();
        for action in item.action.with_ancestors() {
            let sets = if sliced {
                self.candidates(&action, item, hits)
            } else {
                vec![&self.all]
            };
            if sets.is_empty() {
                continue;
            }
            let ctx = ctx().as_ref().map_err(Clone::clone)?;
            let action_uid = EntityUid::from_type_name_and_id(
                self.action_type.clone(),
                EntityId::new(action.name()),
            );
            let request = Request::new(
                ctx.principal.clone(),
                action_uid,
                ctx.resources[n].clone(),
                ctx.context.clone(),
                None,
            )
            .map_err(|e| e.to_string())?;
            let mut run = |set: &PolicySet| -> Result<(), String> {
                let response = self.authorizer.is_authorized(&request, set, &ctx.entities);
                if let Some(e) = response.diagnostics().errors().next() {
                    return Err(e.to_string());
                }
                for id in response.diagnostics().reason() {
                    if let Some(m) = self.meta.get(AsRef::<str>::as_ref(id)) {
                        matched.push(m.clone());
                    }
                }
                Ok(())
            };
            for set in sets {
                run(set)?;
            }
        }
        Ok(matched)
    }

    /// The anchored globs `path` matches (sorted), through the folder index.
    fn glob_hits(&self, path: &str) -> Vec<usize> {
        let mut hits = Vec::new();
        for dir in Path::new(path).ancestors() {
            let Some(dir) = dir.to_str() else { continue };
            if let Some(globs) = self.glob_dirs.get(dir) {
                hits.extend(
                    globs
                        .iter()
                        .filter(|&&g| self.glob_matchers[g].is_match(path)),
                );
            }
        }
        hits.sort_unstable();
        hits
    }

    /// The policies the index cannot rule out for `item` under `action`.
    fn candidates<'s>(
        &'s self,
        action: &Action,
        item: &Item,
        hits: &[usize],
    ) -> Vec<&'s PolicySet> {
        let name = action.name();
        let mut out = Vec::new();
        // One key buffer for every lookup: no allocation per slice.
        let mut key = String::with_capacity(64);
        let add = |key: &str, out: &mut Vec<&'s PolicySet>| {
            for &p in self.slices.get(key).map(Vec::as_slice).unwrap_or(&[]) {
                let (set, pattern, allow) = &self.policies[p];
                if *allow && item.implied && !item.action.is_edit() {
                    continue;
                }
                if pattern
                    .as_ref()
                    .is_some_and(|pat| !pat.matches(&item.command))
                {
                    continue;
                }
                out.push(set);
            }
        };
        key.push_str(name);
        key.push('|');
        add(&key, &mut out);
        if let Some(word) = item.command.split([' ', '\t']).find(|w| !w.is_empty()) {
            key.truncate(name.len() + 1);
            key.push_str("w:");
            key.push_str(word);
            add(&key, &mut out);
        }
        for i in hits {
            key.truncate(name.len() + 1);
            key.push_str("g:");
            key.push_str(&i.to_string());
            add(&key, &mut out);
        }
        if !item.domain.is_empty() {
            key.truncate(name.len() + 1);
            key.push_str("d:");
            key.push_str(&item.domain);
            add(&key, &mut out);
        }
        if let Some(raw) = &self.raw {
            out.push(raw);
        }
        out
    }
}

/// The folder named by a glob's literal prefix (up to its first wildcard).
fn literal_dir(glob: &str) -> String {
    let end = glob.find(['*', '?', '[', '{', '\\']).unwrap_or(glob.len());
    let literal = &glob[..end];
    match literal.rfind('/') {
        Some(0) | None => "/".to_owned(),
        Some(i) => literal[..i].to_owned(),
    }
}

/// What every item of one call shares.
struct CallContext {
    entities: Entities,
    context: Context,
    principal: EntityUid,
    resources: Vec<EntityUid>,
}

/// Whether `rule` applies to `input` (a command, path or domain), decided
/// through Cedar like any call: `policy test` runs inline examples with it.
pub fn rule_matches(rule: &Rule, input: &str, workspace: &Path, home: Option<&Path>) -> bool {
    let spec = EngineSpec {
        workspace: workspace.to_path_buf(),
        home: home.map(Path::to_path_buf),
        mode: Mode::Auto,
        rules: vec![RuleEntry {
            effect: Effect::Deny,
            rule: rule.clone(),
            layer: Layer::User,
            origin: Origin::default(),
        }],
        mfa_window_ms: crate::config::DEFAULT_MFA_WINDOW_MS,
        ..EngineSpec::default()
    };
    let Ok(engine) = Engine::new(spec) else {
        return false;
    };
    let Ok(check) = crate::request::check_dialect(rule.action.name(), input, workspace, home)
    else {
        return false;
    };
    engine
        .decide(&check, &Principal::default(), 0)
        .rule
        .as_deref()
        == Some(rule.text.as_str())
}

/// The allow rule `--always` would add for an item.
pub fn suggested_rule(item: &Item, workspace: &Path) -> String {
    if !item.command.is_empty() {
        return format!("{}({})", item.action, item.command);
    }
    if !item.path.is_empty() {
        let p = Path::new(&item.path);
        return match p.strip_prefix(workspace) {
            Ok(rel) => format!("{}(./{})", item.action, rel.display()),
            Err(_) => format!("{}(/{})", item.action, item.path.trim_start_matches('/')),
        };
    }
    if !item.domain.is_empty() {
        return format!("{}(domain:{})", item.action, item.domain);
    }
    item.action.to_string()
}

fn human_ms(ms: i64) -> String {
    let s = ms / 1000;
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A child agent's effective policy: the intersection of its own and every
/// ancestor's. A call runs only if every engine allows it; the strictest
/// answer wins, so a child can never gain a mode, a rule or a tier its
/// parent lacks.
#[derive(Clone, Debug, Default)]
pub struct PolicyStack {
    engines: Vec<std::sync::Arc<Engine>>,
}

impl PolicyStack {
    /// A stack of one engine.
    pub fn new(engine: std::sync::Arc<Engine>) -> PolicyStack {
        PolicyStack {
            engines: vec![engine],
        }
    }

    /// The intersection of `self` (the parent) and `child`.
    pub fn intersect(&self, child: &PolicyStack) -> PolicyStack {
        let mut engines = self.engines.clone();
        engines.extend(child.engines.iter().cloned());
        PolicyStack { engines }
    }

    /// The engines, parent first.
    pub fn engines(&self) -> &[std::sync::Arc<Engine>] {
        &self.engines
    }

    /// The strictest mode of the stack.
    pub fn mode(&self) -> Mode {
        self.engines
            .iter()
            .map(|e| e.mode())
            .min()
            .unwrap_or_default()
    }

    /// Whether every engine offers `tool` to the model.
    pub fn offers_tool(&self, tool: &str) -> bool {
        self.engines.iter().all(|e| e.offers_tool(tool))
    }

    /// The strictest decision of the stack (an empty stack denies).
    pub fn decide(&self, call: &CallCheck, principal: &Principal, now_ms: i64) -> Decision {
        let mut out: Option<Decision> = None;
        for e in &self.engines {
            let d = e.decide(call, principal, now_ms);
            if out.as_ref().is_none_or(|o| d.severity() > o.severity()) {
                out = Some(d);
            }
        }
        out.unwrap_or_else(|| {
            Decision::new(
                PolicyVerdict::Deny,
                "no policy is loaded, so nothing runs".into(),
                None,
                "mode",
            )
        })
    }
}
