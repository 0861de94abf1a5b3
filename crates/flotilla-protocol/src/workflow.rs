//! Declarative fleets (`flotilla run --workflow FILE.toml`): the file's
//! shape, its checks, and the templates that feed one step's output into
//! the next step's tasks.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A declarative fleet: steps run in order, each by one or more workers,
/// the outputs of one feeding the tasks of the next.
///
/// In a task, `{{item}}` is the item a `parallel` worker got, `{{input}}`
/// the output of the step (or pipeline stage) before, and
/// `{{steps.NAME.output}}` the output of an earlier step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    /// What the workflow is for (the root's task in `ps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Budget of the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<WorkflowBudget>,
    /// Defaults of every step's workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The steps, run in order.
    pub steps: Vec<WorkflowStep>,
}

/// Limits of a whole workflow run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowBudget {
    /// Tokens the whole tree may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// US dollars the whole tree may spend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Seconds the whole run may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_secs: Option<u64>,
    /// Workers running at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workers: Option<u32>,
}

/// One step: exactly one of `agent`, `parallel` or `pipeline`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowStep {
    /// Unique name (letters, digits, - and _; at most 24): its workers are
    /// NAME, NAME-1, NAME-2...
    pub name: String,
    /// One worker with this task; the output is its final answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// One worker per item; the output is every answer, in item order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel: Option<Parallel>,
    /// Workers one after the other, each task's `{{input}}` the answer of
    /// the one before; the output is the last answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<Vec<String>>,
    /// `worktree` (default: each worker writes on its own branch, merged
    /// when the step ends) or `shared` (read-only in the workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Merge the workers' branches when the step has finished (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<bool>,
    /// The workers' model (provider:model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Permission mode, never wider than the workflow's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Only these built-in tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Model turns per worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Secrets of the workflow's own `--grant`s its workers may use, each
    /// `NAME[:host=H][:method=M][:path=/p][:ttl=1h]`, never wider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<String>>,
}

/// A fan-out: one worker per item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Parallel {
    /// Where the items come from.
    pub over: Over,
    /// The task of each worker (`{{item}}` is its item).
    pub agent: String,
}

/// The items of a fan-out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Over {
    /// These items.
    List(Vec<String>),
    /// Files of the workspace matching this glob (e.g. `src/**/*.rs`),
    /// relative paths, sorted; `.gitignore` is honoured.
    Glob(String),
    /// Non-empty lines of this shell command's output, run in the
    /// workflow's sandbox under its policy (no templates: an agent's
    /// output never becomes shell code).
    Command(String),
    /// Non-empty lines of this text, e.g. `{{steps.plan.output}}`.
    Lines(String),
}

/// The longest step name: its workers are named `NAME-N` within the
/// 32 characters of a worker name.
pub const MAX_STEP_NAME: usize = 24;
/// The most steps in one workflow.
pub const MAX_STEPS: usize = 100;

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepKind<'a> {
    /// One worker.
    Agent(&'a str),
    /// One worker per item.
    Parallel(&'a Parallel),
    /// Workers in a chain.
    Pipeline(&'a [String]),
}

impl WorkflowStep {
    /// What the step does, if exactly one of `agent`, `parallel` and
    /// `pipeline` is set.
    pub fn kind(&self) -> Result<StepKind<'_>, String> {
        match (&self.agent, &self.parallel, &self.pipeline) {
            (Some(a), None, None) => Ok(StepKind::Agent(a)),
            (None, Some(p), None) => Ok(StepKind::Parallel(p)),
            (None, None, Some(p)) => Ok(StepKind::Pipeline(p)),
            _ => Err(format!(
                "step {:?}: give exactly one of agent = \"TASK\", parallel = {{ over = ..., agent = \"TASK\" }} or pipeline = [\"TASK\", ...]",
                self.name
            )),
        }
    }

    /// Whether its workers write on their own branches (else read-only).
    pub fn writes(&self) -> bool {
        self.workspace.as_deref() != Some("shared")
    }
}

/// What a task may name: `item`, `index`, `input` or `steps.NAME.output`.
fn check_template(text: &str, earlier: &[&str], item: bool, what: &str) -> Result<(), String> {
    for token in tokens(text)? {
        match token {
            "item" | "index" if item => {}
            "item" | "index" => {
                return Err(format!(
                    "{what}: {{{{{token}}}}} exists only in a parallel step's task"
                ))
            }
            "input" => {}
            t => {
                let step = t
                    .strip_prefix("steps.")
                    .and_then(|r| r.strip_suffix(".output"));
                match step {
                    Some(s) if earlier.contains(&s) => {}
                    Some(s) => {
                        return Err(format!(
                            "{what}: {{{{{t}}}}} names step {s:?}, which is not an earlier step"
                        ))
                    }
                    None => {
                        return Err(format!(
                            "{what}: unknown {{{{{t}}}}}; use {{{{item}}}}, {{{{index}}}}, {{{{input}}}} or {{{{steps.NAME.output}}}}"
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `{{...}}` names in a text, trimmed.
fn tokens(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            return Err("a {{ without its }}".into());
        };
        out.push(after[..j].trim());
        rest = &after[j + 2..];
    }
    Ok(out)
}

/// Fills a task's `{{...}}` names in: `item` and `index` (1-based) of a
/// fan-out, `input` (the output before), `steps.NAME.output`. Unknown
/// names are left as written (a checked workflow has none).
pub fn render(
    text: &str,
    item: Option<(usize, &str)>,
    input: &str,
    output_of: &dyn Fn(&str) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find("}}") else {
            break;
        };
        let token = after[..j].trim();
        let value = match token {
            "item" => item.map(|(_, s)| s.to_owned()),
            "index" => item.map(|(n, _)| n.to_string()),
            "input" => Some(input.to_owned()),
            t => t
                .strip_prefix("steps.")
                .and_then(|r| r.strip_suffix(".output"))
                .and_then(output_of),
        };
        match value {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[i..i + 2 + j + 2]),
        }
        rest = &after[j + 2..];
    }
    out.push_str(rest);
    out
}

fn valid_step_name(name: &str) -> bool {
    let ok_chars = !name.is_empty()
        && name.len() <= MAX_STEP_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    // `NAME-3` is the third worker of step NAME: no step may be named so.
    let numbered = name
        .rsplit_once('-')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    ok_chars && !numbered
}

impl Workflow {
    /// Checks what can be checked before anything runs: names, one kind per
    /// step, templates naming only earlier steps, the workspace modes.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("the workflow has no steps: add [[steps]] tables".into());
        }
        if self.steps.len() > MAX_STEPS {
            return Err(format!(
                "the workflow has {} steps, at most {MAX_STEPS}",
                self.steps.len()
            ));
        }
        if let Some(b) = &self.budget {
            if b.max_tokens == Some(0) || b.wall_time_secs == Some(0) || b.max_workers == Some(0) {
                return Err(
                    "budget: max_tokens, wall_time_secs and max_workers must be positive".into(),
                );
            }
            if let Some(c) = b.max_cost_usd {
                if !(c.is_finite() && c > 0.0) {
                    return Err("budget: max_cost_usd must be a positive number".into());
                }
            }
        }
        let mut earlier: Vec<&str> = Vec::new();
        for step in &self.steps {
            let name = step.name.as_str();
            if !valid_step_name(name) {
                return Err(format!(
                    "step name {name:?}: use 1 to {MAX_STEP_NAME} letters, digits, - and _, not ending in -NUMBER"
                ));
            }
            if earlier.contains(&name) {
                return Err(format!("two steps are named {name:?}"));
            }
            match step.workspace.as_deref() {
                None | Some("worktree") | Some("shared") => {}
                Some(w) => {
                    return Err(format!(
                        "step {name:?}: workspace {w:?}: use worktree (its own branch) or shared (read-only)"
                    ))
                }
            }
            if step.max_turns == Some(0) {
                return Err(format!("step {name:?}: max_turns must be positive"));
            }
            let what = format!("step {name:?}");
            match step.kind()? {
                StepKind::Agent(task) => {
                    nonempty(task, &what)?;
                    check_template(task, &earlier, false, &what)?;
                }
                StepKind::Pipeline(tasks) => {
                    if tasks.is_empty() {
                        return Err(format!("{what}: the pipeline has no tasks"));
                    }
                    for t in tasks {
                        nonempty(t, &what)?;
                        check_template(t, &earlier, false, &what)?;
                    }
                }
                StepKind::Parallel(p) => {
                    nonempty(&p.agent, &what)?;
                    check_template(&p.agent, &earlier, true, &what)?;
                    match &p.over {
                        Over::List(items) if items.is_empty() => {
                            return Err(format!("{what}: over.list is empty"))
                        }
                        Over::List(_) => {}
                        Over::Glob(g) => nonempty(g, &what)?,
                        // A model's answer spliced into shell text would be
                        // code: commands take no templates.
                        Over::Command(c) => {
                            nonempty(c, &what)?;
                            if c.contains("{{") {
                                return Err(format!(
                                    "{what}: over.command takes no {{{{...}}}}: an agent's output must not become shell code; use over.lines with the output instead"
                                ));
                            }
                        }
                        Over::Lines(text) => check_template(text, &earlier, false, &what)?,
                    }
                }
            }
            earlier.push(name);
        }
        Ok(())
    }
}

fn nonempty(task: &str, what: &str) -> Result<(), String> {
    if task.trim().is_empty() {
        return Err(format!("{what}: a task is empty"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, agent: &str) -> WorkflowStep {
        WorkflowStep {
            name: name.into(),
            agent: Some(agent.into()),
            ..WorkflowStep::default()
        }
    }

    #[test]
    fn templates_name_only_earlier_steps() {
        let wf = Workflow {
            name: None,
            budget: None,
            model: None,
            steps: vec![
                step("a", "x"),
                step("b", "use {{steps.a.output}} and {{input}}"),
            ],
        };
        assert_eq!(wf.validate(), Ok(()));
        let wf = Workflow {
            steps: vec![step("a", "{{steps.b.output}}"), step("b", "y")],
            ..wf
        };
        assert!(wf.validate().unwrap_err().contains("not an earlier step"));
        let bad = Workflow {
            steps: vec![step("a", "{{item}}")],
            ..wf.clone()
        };
        assert!(bad.validate().unwrap_err().contains("parallel"));
        let bad = Workflow {
            steps: vec![step("a-2", "x")],
            ..wf.clone()
        };
        assert!(bad.validate().unwrap_err().contains("step name"));
        let bad = Workflow {
            steps: vec![step("a", "x"), step("a", "y")],
            ..wf.clone()
        };
        assert!(bad.validate().unwrap_err().contains("two steps"));
        let spliced = WorkflowStep {
            name: "b".into(),
            parallel: Some(Parallel {
                over: Over::Command("cat {{steps.a.output}}".into()),
                agent: "x {{item}}".into(),
            }),
            ..WorkflowStep::default()
        };
        let bad = Workflow {
            steps: vec![step("a", "x"), spliced],
            ..wf
        };
        assert!(bad.validate().unwrap_err().contains("no {{...}}"));
    }

    #[test]
    fn render_fills_in_names() {
        let out = render(
            "{{ item }}#{{index}} <{{input}}> {{steps.a.output}} {{steps.zz.output}}",
            Some((3, "src/x.rs")),
            "prev",
            &|s| (s == "a").then(|| "A".to_owned()),
        );
        assert_eq!(out, "src/x.rs#3 <prev> A {{steps.zz.output}}");
    }
}
