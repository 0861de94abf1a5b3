//! Figures, summary statistics, and how they are printed.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

/// Which way a figure has to go to meet its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// The value must stay below the target.
    Below,
    /// The value must reach at least the target.
    AtLeast,
}

/// One measured figure with the baseline measured in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    /// Short key: `turn`, `throughput`, `idle_rss`, `recover`.
    pub key: &'static str,
    /// What was measured, in words.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// Unit of `value` and `target`.
    pub unit: &'static str,
    /// What the baseline is, in words.
    pub baseline_name: String,
    /// The baseline, in the same unit.
    pub baseline: f64,
    /// `value / baseline`.
    pub ratio: f64,
    /// The target.
    pub target: f64,
    /// Which side of the target passes.
    pub goal: Goal,
    /// Whether the target is met (and, where it applies, no event was lost).
    pub pass: bool,
    /// Further numbers worth seeing (distribution, counts, checks).
    pub details: Map<String, Value>,
}

/// What a figure must reach.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// Which side of `value` passes.
    pub goal: Goal,
    /// The threshold.
    pub value: f64,
    /// Unit of the threshold and of the measured value.
    pub unit: &'static str,
}

impl Figure {
    /// A figure; `pass` is computed from the target.
    pub fn new(
        key: &'static str,
        name: impl Into<String>,
        target: Target,
        value: f64,
        baseline_name: impl Into<String>,
        baseline: f64,
    ) -> Self {
        let pass = match target.goal {
            Goal::Below => value < target.value,
            Goal::AtLeast => value >= target.value,
        };
        Figure {
            key,
            name: name.into(),
            value,
            unit: target.unit,
            baseline_name: baseline_name.into(),
            baseline,
            ratio: if baseline > 0.0 {
                value / baseline
            } else {
                f64::NAN
            },
            target: target.value,
            goal: target.goal,
            pass,
            details: Map::new(),
        }
    }

    /// Adds a detail.
    pub fn detail(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Marks the figure failed for a reason other than its value (e.g. lost events).
    pub fn fail_because(&mut self, why: impl Into<String>) {
        self.pass = false;
        let why = why.into();
        match self.details.get_mut("failures") {
            Some(Value::Array(list)) => list.push(Value::String(why)),
            _ => {
                self.details.insert(
                    "failures".to_owned(),
                    Value::Array(vec![Value::String(why)]),
                );
            }
        }
    }
}

/// Order statistics of a sample of durations, in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Smallest.
    pub min_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Arithmetic mean.
    pub mean_us: f64,
}

impl Summary {
    /// Summarises `sample` (empty gives zeros).
    pub fn of(sample: &[Duration]) -> Summary {
        let mut us: Vec<f64> = sample.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let pick = |q: f64| -> f64 {
            if us.is_empty() {
                return 0.0;
            }
            let idx = ((us.len() - 1) as f64 * q).round() as usize;
            us[idx.min(us.len() - 1)]
        };
        let mean = if us.is_empty() {
            0.0
        } else {
            us.iter().sum::<f64>() / us.len() as f64
        };
        Summary {
            n: us.len(),
            p50_us: pick(0.5),
            p90_us: pick(0.9),
            p99_us: pick(0.99),
            min_us: pick(0.0),
            max_us: pick(1.0),
            mean_us: mean,
        }
    }

    /// As a JSON value, for [`Figure::details`].
    pub fn to_value(self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Facts about where the figures were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    /// Logical CPUs.
    pub cpus: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// The daemon binary used for the out-of-process figures, if any.
    pub daemon_binary: Option<String>,
    /// Whether this benchmark binary was built with optimisations.
    pub optimized: bool,
}

impl Environment {
    /// Reads the facts of this machine.
    pub fn detect(daemon_binary: Option<String>) -> Environment {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        Environment {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            kernel,
            daemon_binary,
            optimized: !cfg!(debug_assertions),
        }
    }
}

/// Formats a number for the table: few significant digits, no exponent.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The human table.
pub fn render_table(env: &Environment, figures: &[Figure]) -> String {
    let mut rows = vec![[
        "figure".to_owned(),
        "value".to_owned(),
        "baseline".to_owned(),
        "ratio".to_owned(),
        "target".to_owned(),
        "result".to_owned(),
    ]];
    for f in figures {
        let target = match f.goal {
            Goal::Below => format!("< {} {}", num(f.target), f.unit),
            Goal::AtLeast => format!(">= {} {}", num(f.target), f.unit),
        };
        rows.push([
            f.name.clone(),
            format!("{} {}", num(f.value), f.unit),
            format!("{} {} ({})", num(f.baseline), f.unit, f.baseline_name),
            format!("{}x", num(f.ratio)),
            target,
            if f.pass { "PASS" } else { "FAIL" }.to_owned(),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!(
        "flotilla-bench on {} x {} (kernel {}){}\n",
        env.cpus,
        env.cpu_model,
        env.kernel,
        if env.optimized {
            ""
        } else {
            " -- DEBUG BUILD, figures are meaningless"
        }
    );
    if let Some(bin) = &env.daemon_binary {
        out.push_str(&format!("daemon binary: {bin}\n"));
    }
    out.push('\n');
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    for f in figures {
        out.push_str(&format!("\n[{}] {}\n", f.key, f.name));
        for (k, v) in &f.details {
            out.push_str(&format!("  {k}: {}\n", compact(v)));
        }
    }
    out
}

fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map(num)
            .unwrap_or_else(|| n.to_string()),
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}={}", compact(v)))
                .collect();
            parts.join(" ")
        }
        other => other.to_string(),
    }
}

/// The `--json` document.
pub fn render_json(env: &Environment, figures: &[Figure]) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&serde_json::json!({
        "environment": env,
        "figures": figures,
        "all_pass": figures.iter().all(|f| f.pass),
    }))?)
}
