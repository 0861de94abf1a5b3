//! (f) `policy`: decision latency with 1,000 rules loaded.
//!
//! The rules are a realistic mix: shell rules over a hundred commands
//! (prefix and `*` forms), path rules over many folders, domain rules, MCP
//! tools, a few leading-wildcard shell rules that every command meets, the
//! admin's hard-deny and capability tiers. Calls mix single and compound
//! commands, reads, edits (some on files the exec-later gate stops) and
//! fetches. Timed: `Engine::decide` on prepared calls (the pure part).
//! Baseline: the same engine evaluating every policy for every call
//! (`decide_unsliced`), i.e. Cedar without flotilla's slicing.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_policy::config::{Layers, LoadedLayer};
use flotilla_policy::engine::{CallCheck, Engine, Layer, Principal};
use flotilla_policy::request;
use flotilla_protocol::SessionPermissions;

use crate::report::{Figure, Goal, Summary, Target};

/// Rules loaded.
pub const RULES: usize = 1000;
const CALLS: usize = 2000;
const ROUNDS: usize = 5;

const COMMANDS: [&str; 20] = [
    "git",
    "npm",
    "cargo",
    "make",
    "docker",
    "kubectl",
    "python3",
    "pip",
    "go",
    "node",
    "yarn",
    "pnpm",
    "terraform",
    "aws",
    "gcloud",
    "curl",
    "wget",
    "ssh",
    "rsync",
    "psql",
];
const SUBS: [&str; 5] = ["build", "test", "run", "push", "deploy"];

fn rules_toml() -> (String, String) {
    let mut user = Vec::new();
    let mut n = 0;
    let effect = |i: usize| ["allow", "ask", "deny"][i % 3];
    // 500 shell rules: 20 commands x 5 subcommands x 5 variants.
    'shell: for (c, cmd) in COMMANDS.iter().enumerate() {
        for (s, sub) in SUBS.iter().enumerate() {
            for v in 0..5 {
                let pat = match v {
                    0 => format!("{cmd} {sub}:*"),
                    1 => format!("{cmd} {sub} --flag{c} *"),
                    2 => format!("{cmd} {sub} target{s}"),
                    3 => format!("{cmd} {sub}-{v} *"),
                    _ => format!("{cmd} {sub} *--{v}*"),
                };
                user.push((effect(n), format!("Shell({pat})")));
                n += 1;
                if n >= 500 {
                    break 'shell;
                }
            }
        }
    }
    // 300 path rules over 100 folders.
    for i in 0..100 {
        user.push((effect(n), format!("Edit(src/mod{i}/**)")));
        user.push((effect(n + 1), format!("Read(./data/set{i}/*.csv)")));
        user.push((effect(n + 2), format!("Write(/srv/app{i}/**)")));
        n += 3;
    }
    // 120 domains, 50 MCP tools, 15 leading-wildcard shell rules.
    for i in 0..120 {
        user.push((effect(n), format!("Fetch(domain:host{i}.example.com)")));
        n += 1;
    }
    for i in 0..50 {
        user.push((effect(n), format!("mcp__server{}__tool{i}", i % 5)));
        n += 1;
    }
    for i in 0..15 {
        user.push(("deny", format!("Shell(*--dangerous-{i}*)")));
    }
    let mut toml = String::from("[permissions]\nmode = \"auto\"\n");
    for eff in ["allow", "ask", "deny"] {
        let list: Vec<String> = user
            .iter()
            .filter(|(e, _)| *e == eff)
            .map(|(_, r)| format!("{r:?}"))
            .collect();
        toml.push_str(&format!("{eff} = [{}]\n", list.join(", ")));
    }
    // 20 admin rules: hard-deny and tiers.
    let admin = "[permissions]\nallowed_modes = [\"plan\", \"ask\", \"accept-edits\", \"auto\"]\n\
        hard_deny = [\"Shell(rm -rf /*)\", \"Shell(mkfs *)\", \"Shell(dd if=*)\", \"Fetch(domain:pastebin.com)\", \
        \"Shell(shutdown *)\", \"Shell(reboot *)\", \"Write(/etc/**)\", \"Read(~/.ssh/**)\", \"Shell(nc -l *)\", \"Shell(curl * | sh)\"]\n\
        [[permissions.tiers]]\ntier = \"cyber\"\nrules = [\"Shell(nmap *)\", \"Shell(sqlmap *)\", \"Shell(hydra *)\", \"Shell(masscan *)\", \"Shell(nikto *)\"]\n"
        .to_owned();
    (toml, admin)
}

fn calls(ws: &std::path::Path) -> Result<Vec<CallCheck>> {
    let mut out = Vec::with_capacity(CALLS);
    let mut i = 0usize;
    while out.len() < CALLS {
        let cmd = COMMANDS[i % COMMANDS.len()];
        let sub = SUBS[(i / 3) % SUBS.len()];
        let (tool, input) = match i % 8 {
            0 => ("Shell", format!("{cmd} {sub} --flag{} x", i % 7)),
            1 => (
                "Shell",
                format!(
                    "{cmd} {sub} && {} test | tee out.log",
                    COMMANDS[(i + 3) % 20]
                ),
            ),
            2 => (
                "Shell",
                format!("cd src && {cmd} {sub} target{} > build.log 2>&1", i % 5),
            ),
            3 => ("Edit", format!("src/mod{}/lib{}.rs", i % 120, i % 9)),
            4 => ("Read", format!("data/set{}/part{}.csv", i % 110, i % 4)),
            5 => ("Fetch", format!("host{}.example.com", i % 140)),
            6 => (
                "Write",
                if i % 16 == 6 {
                    ".github/workflows/ci.yml".into()
                } else {
                    format!("/srv/app{}/conf", i % 100)
                },
            ),
            _ => ("Shell", format!("nmap -sS 10.0.0.{}", i % 250)),
        };
        out.push(request::check_dialect(tool, &input, ws, None).map_err(anyhow::Error::msg)?);
        i += 1;
    }
    Ok(out)
}

fn time(engine: &Engine, calls: &[CallCheck], who: &Principal, sliced: bool) -> Vec<Duration> {
    let mut sample = Vec::with_capacity(calls.len() * ROUNDS);
    for _ in 0..ROUNDS {
        for c in calls {
            let t = Instant::now();
            let d = if sliced {
                engine.decide(c, who, 0)
            } else {
                engine.decide_unsliced(c, who, 0)
            };
            sample.push(t.elapsed());
            std::hint::black_box(d);
        }
    }
    sample
}

/// Runs the benchmark.
pub fn run() -> Result<Figure> {
    let dir = tempfile::tempdir()?;
    let ws = dir.path().canonicalize()?;
    let (user, admin) = rules_toml();
    let layers = Layers {
        admin: vec![LoadedLayer::parse(Layer::Admin, None, &admin).context("admin rules")?],
        cli: LoadedLayer::from_cli(&SessionPermissions::default()),
        session_allow: Vec::new(),
        project: LoadedLayer::default(),
        user: LoadedLayer::parse(Layer::User, None, &user).context("user rules")?,
    };
    let spec = layers.spec(&ws, None).context("layers")?;
    let rule_count = spec.rules.len() + spec.tiers.len();
    anyhow::ensure!(
        rule_count == RULES,
        "the benchmark loads {rule_count} rules, not {RULES}"
    );
    let built = Instant::now();
    let engine = Engine::new(spec).context("compiling the rules")?;
    let compile_ms = built.elapsed().as_secs_f64() * 1e3;
    let prep = Instant::now();
    let calls = calls(&ws)?;
    let prep_us = prep.elapsed().as_secs_f64() * 1e6 / calls.len() as f64;
    let who = Principal {
        name: "bench".into(),
        vetted: vec!["cyber".into()],
        mfa_verified_ms: Some(0),
    };
    // Both must agree on every call before either is timed.
    let mut verdicts = [0usize; 3];
    for c in &calls {
        let (a, b) = (
            engine.decide(c, &who, 0),
            engine.decide_unsliced(c, &who, 0),
        );
        anyhow::ensure!(
            a == b,
            "sliced and unsliced disagree on {c:?}: {a:?} vs {b:?}"
        );
        verdicts[a.verdict as usize] += 1;
    }
    let _warm = time(&engine, &calls[..200], &who, true);
    let sample = time(&engine, &calls, &who, true);
    let sliced = Summary::of(&sample);
    // p99 by kind of call (calls[i] is of kind i % 8, see `calls`).
    let kinds = [
        "shell",
        "shell_compound",
        "shell_redirect",
        "edit",
        "read",
        "fetch",
        "write",
        "tier",
    ];
    let by_kind: serde_json::Map<String, serde_json::Value> = kinds
        .iter()
        .enumerate()
        .map(|(k, name)| {
            let part: Vec<Duration> = sample
                .iter()
                .enumerate()
                .filter(|(j, _)| (j % calls.len()) % 8 == k)
                .map(|(_, d)| *d)
                .collect();
            ((*name).to_owned(), Summary::of(&part).p99_us.into())
        })
        .collect();
    let unsliced = Summary::of(&time(&engine, &calls, &who, false));
    let mut fig = Figure::new(
        "policy",
        format!("p99 policy decision, {rule_count} rules loaded"),
        Target {
            goal: Goal::Below,
            value: 50.0,
            unit: "us",
        },
        sliced.p99_us,
        "p99 with every Cedar policy evaluated (no slicing)",
        unsliced.p99_us,
    );
    fig.detail("sliced", sliced.to_value());
    fig.detail("unsliced", unsliced.to_value());
    fig.detail("p99_us_by_kind", serde_json::Value::Object(by_kind));
    fig.detail("rules", rule_count as u64);
    fig.detail("cedar_policies", engine.policy_count() as u64);
    fig.detail("compile_ms", compile_ms);
    fig.detail("request_build_us_per_call", prep_us);
    fig.detail("calls", calls.len() as u64);
    fig.detail(
        "verdicts_allow_ask_deny",
        format!("{}/{}/{}", verdicts[0], verdicts[1], verdicts[2]),
    );
    Ok(fig)
}
