//! The `[permissions]` tables of the layers, and how they combine.
//!
//! Layers, strongest first: admin (`/etc/flotilla/managed.toml` and
//! `$FLOTILLA_HOME/managed.toml`), command line, project
//! (`.flotilla/config.toml` in the workspace), user (`config.toml`).
//! - `hard_deny`, `allowed_modes`, `exec_later_extra`, `mfa_window`,
//!   `[[permissions.tiers]]` and `cedar` belong to the admin layer only.
//! - `deny` and `ask` rules of every layer apply. `allow` rules of the
//!   admin, command-line, session and user layers apply; a project's
//!   `allow` rules apply only when the user lists the project in
//!   `trusted_projects` (a cloned repository cannot grant itself anything).
//! - The mode is the command line's, else the stricter of the project's
//!   and the user's; the admin decides which modes exist, and `bypass`
//!   exists only when the admin lists it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::engine::{Effect, EngineSpec, Layer, Origin, RuleEntry, TierEntry};
use crate::mode::Mode;
use crate::rule::Rule;

/// Default MFA window: a TOTP login counts for 12 hours.
pub const DEFAULT_MFA_WINDOW_MS: i64 = 12 * 3600 * 1000;

/// A rule with inline examples (`flotilla policy test` runs them).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleToml {
    /// allow, ask, deny (or hard_deny in the admin layer).
    pub effect: Spanned<String>,
    /// The rule.
    pub rule: Spanned<String>,
    /// Inputs the rule must match (commands, paths or domains).
    #[serde(default, rename = "match")]
    pub matches: Vec<String>,
    /// Inputs it must not match.
    #[serde(default)]
    pub not_match: Vec<String>,
}

/// `[[permissions.tiers]]` (admin): calls that need a capability tier.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierToml {
    /// The tier.
    pub tier: Spanned<String>,
    /// The calls in it.
    pub rules: Vec<Spanned<String>>,
}

/// `[permissions]` of one file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsToml {
    /// plan, ask, accept-edits, auto, bypass.
    pub mode: Option<Spanned<String>>,
    /// Allow rules.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// Ask rules.
    #[serde(default)]
    pub ask: Vec<Spanned<String>>,
    /// Deny rules.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// Admin: rules nothing overrides.
    #[serde(default)]
    pub hard_deny: Vec<Spanned<String>>,
    /// Admin: the modes that exist.
    pub allowed_modes: Option<Spanned<Vec<String>>>,
    /// Admin: more files that execute later (globs).
    #[serde(default)]
    pub exec_later_extra: Vec<String>,
    /// Admin: how long a TOTP login counts (`12h`, `30m`, `1d`).
    pub mfa_window: Option<Spanned<String>>,
    /// Admin: capability tiers.
    #[serde(default)]
    pub tiers: Vec<TierToml>,
    /// Admin: raw Cedar policies.
    pub cedar: Option<String>,
    /// User: projects whose `allow` rules count.
    #[serde(default)]
    pub trusted_projects: Vec<String>,
    /// Rules with examples.
    #[serde(default)]
    pub rules: Vec<RuleToml>,
}

#[derive(Debug, Default, Deserialize)]
struct FileToml {
    #[serde(default)]
    permissions: Option<PermissionsToml>,
}

/// A layer's permissions, loaded from its file.
#[derive(Clone, Debug, Default)]
pub struct LoadedLayer {
    /// Which layer.
    pub layer: Option<Layer>,
    /// The file (None for the command line).
    pub file: Option<PathBuf>,
    /// The file's text, for line numbers.
    pub source: String,
    /// The table.
    pub permissions: PermissionsToml,
}

/// A policy file or rule that is wrong, with where and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}\n  hint: {hint}")]
pub struct ConfigError {
    /// `file:line` (or `command line`).
    pub location: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
}

fn line_of(source: &str, offset: usize) -> usize {
    source[..offset.min(source.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

impl LoadedLayer {
    /// Reads `[permissions]` from `file` (a missing file is an empty layer).
    pub fn load(layer: Layer, file: &Path) -> Result<LoadedLayer, ConfigError> {
        let source = match std::fs::read_to_string(file) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LoadedLayer {
                    layer: Some(layer),
                    ..LoadedLayer::default()
                })
            }
            Err(e) => {
                return Err(ConfigError {
                    location: file.display().to_string(),
                    message: format!("cannot read the file: {e}"),
                    hint: "check its permissions".into(),
                })
            }
        };
        LoadedLayer::parse(layer, Some(file), &source)
    }

    /// Parses a layer from its text.
    pub fn parse(
        layer: Layer,
        file: Option<&Path>,
        source: &str,
    ) -> Result<LoadedLayer, ConfigError> {
        let name = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "(config)".into());
        let doc: FileToml = toml::from_str(source).map_err(|e| {
            let line = e.span().map(|s| line_of(source, s.start)).unwrap_or(1);
            ConfigError {
                location: format!("{name}:{line}"),
                message: e.message().to_owned(),
                hint: "see docs/policy.md for the [permissions] keys".into(),
            }
        })?;
        let loaded = LoadedLayer {
            layer: Some(layer),
            file: file.map(Path::to_path_buf),
            source: source.to_owned(),
            permissions: doc.permissions.unwrap_or_default(),
        };
        loaded.check_keys()?;
        Ok(loaded)
    }

    /// The command-line layer.
    pub fn from_cli(p: &flotilla_protocol::SessionPermissions) -> LoadedLayer {
        let plain = |v: &Vec<String>| v.iter().map(|s| Spanned::new(0..0, s.clone())).collect();
        LoadedLayer {
            layer: Some(Layer::Cli),
            file: None,
            source: String::new(),
            permissions: PermissionsToml {
                mode: p.mode.clone().map(|m| Spanned::new(0..0, m)),
                allow: plain(&p.allow),
                ask: plain(&p.ask),
                deny: plain(&p.deny),
                ..PermissionsToml::default()
            },
        }
    }

    fn origin(&self, span: std::ops::Range<usize>) -> Origin {
        match &self.file {
            Some(f) => Origin {
                file: Some(f.clone()),
                line: Some(line_of(&self.source, span.start)),
            },
            None => Origin::default(),
        }
    }

    fn location(&self, span: std::ops::Range<usize>) -> String {
        match &self.file {
            Some(f) => format!("{}:{}", f.display(), line_of(&self.source, span.start)),
            None => "command line".into(),
        }
    }

    fn layer(&self) -> Layer {
        self.layer.unwrap_or(Layer::User)
    }

    fn check_keys(&self) -> Result<(), ConfigError> {
        let p = &self.permissions;
        if self.layer() != Layer::Admin {
            let admin_only = [
                ("hard_deny", !p.hard_deny.is_empty()),
                ("allowed_modes", p.allowed_modes.is_some()),
                ("exec_later_extra", !p.exec_later_extra.is_empty()),
                ("mfa_window", p.mfa_window.is_some()),
                ("tiers", !p.tiers.is_empty()),
                ("cedar", p.cedar.is_some()),
            ];
            if let Some((key, _)) = admin_only.iter().find(|(_, set)| *set) {
                return Err(ConfigError {
                    location: self
                        .file
                        .as_ref()
                        .map(|f| f.display().to_string())
                        .unwrap_or_else(|| "command line".into()),
                    message: format!("`{key}` may only be set by the administrator"),
                    hint: "move it to /etc/flotilla/managed.toml (or $FLOTILLA_HOME/managed.toml)"
                        .into(),
                });
            }
        }
        if self.layer() != Layer::User && !p.trusted_projects.is_empty() {
            return Err(ConfigError {
                location: self
                    .file
                    .as_ref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default(),
                message: "`trusted_projects` belongs in the user's config.toml".into(),
                hint: "a project cannot trust itself; move the list to your config.toml".into(),
            });
        }
        Ok(())
    }

    /// Every rule of the layer, parsed, with its effect and origin.
    pub fn rules(&self) -> Result<Vec<RuleEntry>, ConfigError> {
        let p = &self.permissions;
        let mut out = Vec::new();
        let lists = [
            (Effect::HardDeny, &p.hard_deny),
            (Effect::Deny, &p.deny),
            (Effect::Ask, &p.ask),
            (Effect::Allow, &p.allow),
        ];
        for (effect, list) in lists {
            for r in list {
                out.push(self.entry(effect, r)?);
            }
        }
        for r in &p.rules {
            let effect = match r.effect.get_ref().as_str() {
                "allow" => Effect::Allow,
                "ask" => Effect::Ask,
                "deny" => Effect::Deny,
                "hard_deny" if self.layer() == Layer::Admin => Effect::HardDeny,
                other => {
                    return Err(ConfigError {
                        location: self.location(r.effect.span()),
                        message: format!("unknown effect {other:?}"),
                        hint: "effect is allow, ask or deny (hard_deny in managed.toml only)"
                            .into(),
                    })
                }
            };
            out.push(self.entry(effect, &r.rule)?);
        }
        Ok(out)
    }

    fn entry(&self, effect: Effect, r: &Spanned<String>) -> Result<RuleEntry, ConfigError> {
        let rule = Rule::parse(r.get_ref()).map_err(|e| ConfigError {
            location: self.location(r.span()),
            message: e.message,
            hint: e.hint,
        })?;
        Ok(RuleEntry {
            effect,
            rule,
            layer: self.layer(),
            origin: self.origin(r.span()),
        })
    }

    fn mode(&self) -> Result<Option<(Mode, String)>, ConfigError> {
        match &self.permissions.mode {
            None => Ok(None),
            Some(m) => Mode::parse(m.get_ref())
                .map(|mode| Some((mode, self.location(m.span()))))
                .map_err(|message| ConfigError {
                    location: self.location(m.span()),
                    message,
                    hint: "pick one of plan, ask, accept-edits, auto, bypass".into(),
                }),
        }
    }
}

/// Parses `12h`, `30m`, `45s`, `1d` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// The layers of one session.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// Admin files (all that exist: `/etc/flotilla/managed.toml`, then `$FLOTILLA_HOME/managed.toml`).
    pub admin: Vec<LoadedLayer>,
    /// The command line.
    pub cli: LoadedLayer,
    /// Allow rules added with `approve --always session`.
    pub session_allow: Vec<String>,
    /// The workspace's `.flotilla/config.toml`.
    pub project: LoadedLayer,
    /// The user's `config.toml`.
    pub user: LoadedLayer,
}

/// Where the layer files are.
#[derive(Clone, Debug, Default)]
pub struct LayerPaths {
    /// Admin files to read (those missing are skipped).
    pub admin: Vec<PathBuf>,
    /// The user's config.toml.
    pub user: PathBuf,
}

impl LayerPaths {
    /// The usual places: `/etc/flotilla/managed.toml` (always: a user's
    /// `FLOTILLA_HOME` cannot escape the administrator), plus
    /// `managed.toml` and `config.toml` in the flotilla home.
    pub fn standard(home_dir: &Path) -> LayerPaths {
        let mut admin = vec![PathBuf::from("/etc/flotilla/managed.toml")];
        let local = home_dir.join("managed.toml");
        if !admin.contains(&local) {
            admin.push(local);
        }
        LayerPaths {
            admin,
            user: home_dir.join("config.toml"),
        }
    }

    /// The project file of a workspace.
    pub fn project(workspace: &Path) -> PathBuf {
        workspace.join(".flotilla").join("config.toml")
    }
}

impl Layers {
    /// Loads every layer of a session.
    pub fn load(
        paths: &LayerPaths,
        workspace: &Path,
        cli: &flotilla_protocol::SessionPermissions,
        session_allow: &[String],
    ) -> Result<Layers, ConfigError> {
        let mut admin = Vec::new();
        for f in &paths.admin {
            if f.exists() {
                admin.push(LoadedLayer::load(Layer::Admin, f)?);
            }
        }
        Ok(Layers {
            admin,
            cli: LoadedLayer::from_cli(cli),
            session_allow: session_allow.to_vec(),
            project: LoadedLayer::load(Layer::Project, &LayerPaths::project(workspace))?,
            user: LoadedLayer::load(Layer::User, &paths.user)?,
        })
    }

    /// Every layer with a table, strongest first.
    pub fn all(&self) -> Vec<&LoadedLayer> {
        let mut out: Vec<&LoadedLayer> = self.admin.iter().collect();
        out.extend([&self.cli, &self.project, &self.user]);
        out
    }

    /// The modes the admin lets exist (without an admin list: all but bypass).
    pub fn allowed_modes(&self) -> Result<Vec<Mode>, ConfigError> {
        let mut allowed: Option<Vec<Mode>> = None;
        for a in &self.admin {
            if let Some(list) = &a.permissions.allowed_modes {
                let mut modes = Vec::new();
                for m in list.get_ref() {
                    modes.push(Mode::parse(m).map_err(|message| ConfigError {
                        location: a.location(list.span()),
                        message,
                        hint: "allowed_modes lists plan, ask, accept-edits, auto, bypass".into(),
                    })?);
                }
                // Several admin files: a mode exists only if all allow it.
                allowed = Some(match allowed {
                    None => modes,
                    Some(prev) => prev.into_iter().filter(|m| modes.contains(m)).collect(),
                });
            }
        }
        Ok(allowed.unwrap_or_else(|| vec![Mode::Plan, Mode::Ask, Mode::AcceptEdits, Mode::Auto]))
    }

    /// Builds the engine spec for `workspace`.
    pub fn spec(&self, workspace: &Path, home: Option<&Path>) -> Result<EngineSpec, ConfigError> {
        let mut inactive = Vec::new();
        // The mode: user, narrowed by the project, replaced by the command line.
        let mut mode = Mode::Ask;
        let mut mode_layer = None;
        if let Some((m, _)) = self.user.mode()? {
            mode = m;
            mode_layer = Some(Layer::User);
        }
        if let Some((m, at)) = self.project.mode()? {
            if m <= mode {
                mode = m;
                mode_layer = Some(Layer::Project);
            } else {
                inactive.push(format!(
                    "{at}: project mode `{m}` is wider than the user's `{mode}`; a project can only narrow"
                ));
            }
        }
        if let Some((m, _)) = self.cli.mode()? {
            mode = m;
            mode_layer = Some(Layer::Cli);
        }
        let allowed = self.allowed_modes()?;
        if !allowed.contains(&mode) {
            let names: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
            let hint = if mode == Mode::Bypass {
                "bypass exists only where the administrator lists it in allowed_modes (managed.toml)".to_owned()
            } else {
                format!("pick one of: {}", names.join(", "))
            };
            return Err(ConfigError {
                location: mode_layer
                    .map(|l| format!("{} layer", l.as_str()))
                    .unwrap_or_default(),
                message: format!("permission mode `{mode}` is not allowed by the administrator"),
                hint,
            });
        }
        let trusted = self.user.permissions.trusted_projects.iter().any(|p| {
            let p = Path::new(p);
            p == workspace || p.canonicalize().ok().as_deref() == Some(workspace)
        });
        let mut rules = Vec::new();
        let mut tiers = Vec::new();
        let mut raw_cedar = Vec::new();
        let mut exec_later_extra = Vec::new();
        let mut mfa_window_ms = DEFAULT_MFA_WINDOW_MS;
        for a in &self.admin {
            rules.extend(a.rules()?);
            exec_later_extra.extend(a.permissions.exec_later_extra.iter().cloned());
            if let Some(w) = &a.permissions.mfa_window {
                let ms = parse_duration_ms(w.get_ref()).ok_or_else(|| ConfigError {
                    location: a.location(w.span()),
                    message: format!("mfa_window {:?} is not a duration", w.get_ref()),
                    hint: "write a number with a unit: 30m, 12h, 1d".into(),
                })?;
                mfa_window_ms = mfa_window_ms.min(ms);
            }
            for t in &a.permissions.tiers {
                let tier = t.tier.get_ref().trim().to_ascii_lowercase();
                if tier.is_empty()
                    || !tier
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                {
                    return Err(ConfigError {
                        location: a.location(t.tier.span()),
                        message: format!("tier name {:?} is not valid", t.tier.get_ref()),
                        hint: "use lowercase letters, digits and dashes: high-autonomy, cyber, bio"
                            .into(),
                    });
                }
                for r in &t.rules {
                    let entry = a.entry(Effect::Deny, r)?;
                    tiers.push(TierEntry {
                        tier: tier.clone(),
                        rule: entry.rule,
                        origin: entry.origin,
                    });
                }
            }
            if let Some(src) = &a.permissions.cedar {
                raw_cedar.push((
                    src.clone(),
                    Origin {
                        file: a.file.clone(),
                        line: None,
                    },
                ));
            }
        }
        rules.extend(self.cli.rules()?);
        for (i, r) in self.session_allow.iter().enumerate() {
            let rule = Rule::parse(r).map_err(|e| ConfigError {
                location: format!("session rule {}", i + 1),
                message: e.message,
                hint: e.hint,
            })?;
            rules.push(RuleEntry {
                effect: Effect::Allow,
                rule,
                layer: Layer::Session,
                origin: Origin::default(),
            });
        }
        for entry in self.project.rules()? {
            if entry.effect == Effect::Allow && !trusted {
                inactive.push(format!(
                    "{}: project rule allow `{}` is not in force: a project can narrow but not widen; \
                     add the workspace to `trusted_projects` in your config.toml to let it",
                    entry.origin, entry.rule
                ));
                continue;
            }
            rules.push(entry);
        }
        rules.extend(self.user.rules()?);
        Ok(EngineSpec {
            workspace: workspace.to_path_buf(),
            home: home.map(Path::to_path_buf),
            mode,
            mode_layer,
            rules,
            tiers,
            raw_cedar,
            exec_later_extra,
            mfa_window_ms,
            inactive,
        })
    }
}

/// A failed inline example of `flotilla policy test`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExampleFailure {
    /// `file:line` of the rule.
    pub location: String,
    /// The rule.
    pub rule: String,
    /// The example.
    pub input: String,
    /// Whether it should have matched.
    pub expected_match: bool,
}

/// Runs the `match` / `not_match` examples of every `[[permissions.rules]]`
/// of `layers`. Returns how many ran and the failures.
pub fn run_examples(
    layers: &Layers,
    workspace: &Path,
    home: Option<&Path>,
) -> Result<(usize, Vec<ExampleFailure>), ConfigError> {
    let mut ran = 0;
    let mut failures = Vec::new();
    for layer in layers.all() {
        for r in &layer.permissions.rules {
            let entry = layer.entry(Effect::Allow, &r.rule)?;
            for (input, want) in r
                .matches
                .iter()
                .map(|i| (i, true))
                .chain(r.not_match.iter().map(|i| (i, false)))
            {
                ran += 1;
                if crate::engine::rule_matches(&entry.rule, input, workspace, home) != want {
                    failures.push(ExampleFailure {
                        location: layer.location(r.rule.span()),
                        rule: entry.rule.text.clone(),
                        input: input.clone(),
                        expected_match: want,
                    });
                }
            }
        }
    }
    Ok((ran, failures))
}

/// Adds `rule` to the `allow` list of `[permissions]` in `file` (created
/// if missing), keeping the file's comments and layout. Nothing is added
/// twice. The write is atomic (a temporary file renamed over the old one).
pub fn add_allow_rule(file: &Path, rule: &str) -> Result<(), ConfigError> {
    let fail = |message: String, hint: &str| ConfigError {
        location: file.display().to_string(),
        message,
        hint: hint.to_owned(),
    };
    let source = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(fail(format!("cannot read: {e}"), "check its permissions")),
    };
    let mut doc: toml_edit::DocumentMut = source.parse().map_err(|e| {
        fail(
            format!("not valid TOML: {e}"),
            "fix the file, then approve again",
        )
    })?;
    let perms = doc
        .entry("permissions")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_mut()
        .ok_or_else(|| {
            fail(
                "`permissions` is not a table".into(),
                "make it a [permissions] table",
            )
        })?;
    let allow = perms
        .entry("allow")
        .or_insert_with(|| toml_edit::value(toml_edit::Array::new()))
        .as_array_mut()
        .ok_or_else(|| {
            fail(
                "`permissions.allow` is not a list".into(),
                "make it a list of rules",
            )
        })?;
    if allow.iter().any(|v| v.as_str() == Some(rule)) {
        return Ok(());
    }
    allow.push(rule);
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            fail(
                format!("cannot create the folder: {e}"),
                "check permissions",
            )
        })?;
    }
    let tmp = file.with_extension("toml.tmp");
    std::fs::write(&tmp, doc.to_string())
        .and_then(|()| std::fs::rename(&tmp, file))
        .map_err(|e| fail(format!("cannot write: {e}"), "check permissions"))?;
    Ok(())
}
