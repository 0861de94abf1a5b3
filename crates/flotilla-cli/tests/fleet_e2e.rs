//! End-to-end fleets: a scripted planner fans work out to scripted workers
//! through the real daemon; each worker writes in its own git worktree and
//! the planner merges. One mock server plays every agent: each task carries
//! a `[script:NAME]` marker that picks that agent's script.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use flotilla_testkit::{Script, ScriptedCall, Step};
use serde_json::{json, Value};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A repository with one commit, as the planner's workspace.
fn repo(env: &Env) {
    git(env.ws(), &["init", "-q", "-b", "main"]);
    std::fs::write(env.ws().join("README.md"), "fleet test\n").unwrap();
    std::fs::write(env.ws().join("same.txt"), "base\n").unwrap();
    git(env.ws(), &["add", "-A"]);
    git(env.ws(), &["commit", "-q", "-m", "init"]);
}

fn spawn(name: &str, task: &str) -> ScriptedCall {
    ScriptedCall::new(
        "spawn_agent",
        json!({"name": name, "task": format!("[script:{name}] {task}")}),
    )
}

/// A worker that writes one file and finishes.
fn writer(path: &str, content: &str) -> Vec<Step> {
    vec![
        Step::tool("write_file", json!({"path": path, "content": content})),
        Step::finish(format!("wrote {path}")),
    ]
}

/// `flotilla run --detach --planner openai:mock` and the planner's id.
fn start_planner(env: &Env, task: &str, extra: &[&str]) -> String {
    let ws = env.ws_str();
    let mut args = vec![
        "run",
        "--detach",
        "--json",
        "-w",
        &ws,
        "--planner",
        "openai:mock",
    ];
    args.extend_from_slice(extra);
    args.push(task);
    let out = env.run(&args);
    assert!(out.status.success(), "run failed: {}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["id"].as_str().unwrap().to_string()
}

/// A planner that spawns worker `name`, waits for it and merges it.
fn spawn_wait_merge(name: &str) -> Vec<Step> {
    vec![
        Step::tool(
            "spawn_agent",
            json!({"name": name, "task": format!("[script:{name}] go")}),
        ),
        Step::tool("wait_agents", json!({})),
        Step::tool("merge_worker", json!({"agent": name})),
        Step::finish("done"),
    ]
}

/// A host path the attacks try to create (removed first): it must not
/// exist after the test.
fn marker(tag: &str) -> String {
    let mark = format!("/tmp/flotilla-pwned-{}-{tag}", std::process::id());
    let _ = std::fs::remove_file(&mark);
    mark
}

/// Every session of the daemon, as `ps --json` lists them.
fn sessions(env: &Env) -> Vec<Value> {
    let out = env.run(&["ps", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The requests the mock got for one agent's script.
fn requests_of(env: &Env, script: &str) -> Vec<Value> {
    let marker = format!("[script:{script}]");
    env.mock
        .requests()
        .into_iter()
        .filter(|r| r["messages"].to_string().contains(&marker))
        .filter(|r| {
            // The first user message carries the marker.
            r["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["role"] == "user")
                .is_some_and(|m| m["content"].to_string().contains(&marker))
        })
        .collect()
}

/// The last tool results the agent's model saw.
fn last_tool_results(env: &Env, script: &str) -> Vec<String> {
    let reqs = requests_of(env, script);
    tool_messages(reqs.last().unwrap())
}

#[test]
fn a_planner_fans_out_twenty_workers_and_merges_them() {
    let n = 20;
    let names: Vec<String> = (1..=n).map(|i| format!("w{i}")).collect();
    let mut script = Script::new().with(
        "planner",
        vec![
            Step::tools(
                names
                    .iter()
                    .map(|w| spawn(w, &format!("write {w}.txt")))
                    .collect(),
            ),
            Step::tool("wait_agents", json!({"timeout_secs": 120})),
            Step::tools(
                names
                    .iter()
                    .map(|w| ScriptedCall::new("merge_worker", json!({"agent": w})))
                    .collect(),
            ),
            // Asked again (its worktree is gone by now): nothing to do.
            Step::tool("merge_worker", json!({"agent": "w1"})),
            Step::finish("merged every worker"),
        ],
    );
    for w in &names {
        script = script.with(
            w.clone(),
            writer(&format!("{w}.txt"), &format!("from {w}\n")),
        );
    }
    let env = Env::new(script);
    repo(&env);
    let ws = env.ws_str();
    let out = env.run_for(
        &[
            "run",
            "-w",
            &ws,
            "--planner",
            "openai:mock",
            "--max-workers",
            "20",
            "[script:planner] split the work",
        ],
        240,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("merged every worker"),
        "{}",
        stdout(&out)
    );

    // Every worker's file is in the planner's checkout, each merged in its
    // own merge commit, and the user's checkout is clean.
    for w in &names {
        assert_eq!(
            std::fs::read_to_string(env.ws().join(format!("{w}.txt"))).unwrap(),
            format!("from {w}\n")
        );
    }
    let merges = git(env.ws(), &["log", "--merges", "--format=%s"]);
    assert_eq!(merges.lines().count(), n, "{merges}");
    assert_eq!(git(env.ws(), &["status", "--porcelain"]), "");
    let again = last_tool_results(&env, "planner");
    assert!(
        again.last().unwrap().contains("w1 is already merged"),
        "{again:?}"
    );
    // Merged worktrees are gone; their branches stay.
    let worktrees = git(env.ws(), &["worktree", "list", "--porcelain"]);
    assert_eq!(worktrees.matches("worktree ").count(), 1, "{worktrees}");
    let left = std::fs::read_dir(env.home.path().join("worktrees"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "merged worktrees are removed");
    let branches = git(env.ws(), &["branch", "--list", "flotilla/*"]);
    assert_eq!(branches.lines().count(), n, "{branches}");

    // The tree: one planner, twenty workers under it, all completed.
    let all = sessions(&env);
    let planner = all.iter().find(|s| s["parent"].is_null()).unwrap();
    let pid = planner["id"].as_str().unwrap();
    let workers: Vec<&Value> = all.iter().filter(|s| s["parent"] == pid).collect();
    assert_eq!(workers.len(), n);
    for w in &workers {
        assert_eq!(w["state"], "completed", "{w}");
        assert_eq!(w["root"], pid);
        assert!(w["workspace"].as_str().unwrap() != ws, "{w}");
    }

    // Only reports reach the planner: final answers and diff summaries,
    // never a worker's transcript (its tool results).
    let waited = last_tool_results(&env, "planner");
    let all_reqs = requests_of(&env, "planner");
    let wait_result = tool_messages(&all_reqs[2]).join("\n");
    for w in &names {
        assert!(
            wait_result.contains(&format!("## {w} (")),
            "no report of {w}: {wait_result}"
        );
        assert!(wait_result.contains(&format!("final answer: wrote {w}.txt")));
        assert!(wait_result.contains(&format!("{w}.txt |")), "{wait_result}");
    }
    let planner_saw = all_reqs
        .iter()
        .map(|r| r["messages"].to_string())
        .collect::<String>();
    assert!(
        !planner_saw.contains("created w1.txt") && !planner_saw.contains("bytes"),
        "a worker's tool output reached the planner"
    );
    // The merge turn's results: one merge per worker (then the repeat).
    let merged = &waited[waited.len() - n - 1..waited.len() - 1];
    for (w, m) in names.iter().zip(merged) {
        assert!(
            m.starts_with(&format!("merged {w} (flotilla/{pid}/{w})")),
            "{m}"
        );
    }

    // ps --tree shows the workers indented under the planner; attach
    // reaches a worker by PLANNER/NAME.
    let tree = stdout(&env.run(&["ps", "--tree"]));
    assert!(tree.contains(&format!("\n{pid}")), "{tree}");
    assert!(tree.contains("\n  w7 s"), "{tree}");
    let attach = env.run(&["attach", "--json", &format!("{pid}/w7")]);
    assert!(attach.status.success(), "{}", stderr(&attach));
    assert!(stdout(&attach).contains("[script:w7]"));
    let missing = env.run(&["attach", &format!("{pid}/nobody")]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("has no worker \"nobody\""),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn a_merge_conflict_is_reported_to_the_planner() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![
                        spawn("a", "edit same.txt"),
                        spawn("b", "edit same.txt"),
                    ]),
                    Step::tool("wait_agents", json!({})),
                    Step::tool("merge_worker", json!({"agent": "a"})),
                    Step::tool("merge_worker", json!({"agent": "b"})),
                    Step::finish("b conflicted"),
                ],
            )
            .with("a", writer("same.txt", "from a\n"))
            .with("b", writer("same.txt", "from b\n")),
    );
    repo(&env);
    let ws = env.ws_str();
    let out = env.run_for(
        &[
            "run",
            "-w",
            &ws,
            "--planner",
            "openai:mock",
            "[script:planner] go",
        ],
        120,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let reqs = requests_of(&env, "planner");
    let first = tool_messages(&reqs[3]).join("\n");
    assert!(first.contains("merged a"), "{first}");
    let second = tool_messages(&reqs[4]).join("\n");
    assert!(
        second.contains("conflicts in: same.txt") && second.contains("workspace is unchanged"),
        "{second}"
    );
    // a's change is in, b's is not, and no merge is left half done.
    assert_eq!(
        std::fs::read_to_string(env.ws().join("same.txt")).unwrap(),
        "from a\n"
    );
    assert_eq!(git(env.ws(), &["status", "--porcelain"]), "");
    assert!(!env.ws().join(".git/MERGE_HEAD").exists());
}

#[test]
fn cancelling_the_planner_cancels_its_workers() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![spawn("a", "think"), spawn("b", "think")]),
                    Step::tool("wait_agents", json!({"timeout_secs": 300})),
                    Step::finish("never"),
                ],
            )
            .with("a", vec![Step::hang()])
            .with("b", vec![Step::hang()]),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    // Wait for both workers to be asking their model.
    let deadline = Instant::now() + Duration::from_secs(60);
    while requests_of(&env, "a").is_empty() || requests_of(&env, "b").is_empty() {
        assert!(Instant::now() < deadline, "the workers never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = env.run(&["cancel", &pid]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.wait_state(&pid, 30), "cancelled");
    let all = sessions(&env);
    let workers: Vec<&Value> = all.iter().filter(|s| s["parent"] == pid.as_str()).collect();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert_eq!(w["state"], "cancelled", "{w}");
        let events = env.events(w["id"].as_str().unwrap());
        let by = events
            .iter()
            .find(|e| e["event"]["type"] == "cancel_requested")
            .unwrap();
        assert!(by["event"]["by"].as_str().unwrap().contains(&pid), "{by}");
    }
}

#[test]
fn kill9_mid_fleet_resumes_without_rerunning_finished_workers() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![spawn("fast", "quick"), spawn("slow", "slow")]),
                    Step::tool("wait_agents", json!({})),
                    // After the restart the wait was interrupted: wait again.
                    Step::tool("wait_agents", json!({})),
                    Step::finish("both done"),
                ],
            )
            .with("fast", writer("fast.txt", "fast\n"))
            .with(
                "slow",
                vec![
                    Step::tool(
                        "write_file",
                        json!({"path": "slow.txt", "content": "slow\n"}),
                    )
                    .with_delay_ms(4000),
                    Step::finish("wrote slow.txt"),
                ],
            ),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    // fast finishes; slow is waiting on its (slow) model reply; the
    // planner waits on both.
    let deadline = Instant::now() + Duration::from_secs(60);
    let fast_id = loop {
        let all = sessions(&env);
        let fast = all
            .iter()
            .find(|s| s["name"] == "fast" && s["state"] == "completed");
        if let Some(f) = fast {
            if !requests_of(&env, "slow").is_empty() && requests_of(&env, "planner").len() >= 2 {
                break f["id"].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < deadline, "the fleet never got going");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The planner's wait is under way (started before it runs).
    std::thread::sleep(Duration::from_millis(300));
    let fast_requests = requests_of(&env, "fast").len();
    kill9(env.daemon_pid().unwrap());
    // Any command starts the daemon again, which resumes the fleet.
    assert_eq!(env.wait_state(&pid, 90), "completed");
    let all = sessions(&env);
    let slow = all.iter().find(|s| s["name"] == "slow").unwrap();
    assert_eq!(slow["state"], "completed");
    // The finished worker was not run again; the running one resumed.
    assert_eq!(requests_of(&env, "fast").len(), fast_requests);
    let fast_events = kinds(&env.events(&fast_id));
    assert!(!fast_events.contains(&"session_resumed".to_string()));
    let slow_events = kinds(&env.events(slow["id"].as_str().unwrap()));
    assert!(slow_events.contains(&"session_resumed".to_string()));
    let planner_events = env.events(&pid);
    assert_gapless(&planner_events);
    assert!(kinds(&planner_events).contains(&"tool_interrupted".to_string()));
    // The planner's second wait reported both.
    let reqs = requests_of(&env, "planner");
    let last_wait = tool_messages(reqs.last().unwrap()).join("\n");
    assert!(
        last_wait.contains("## fast (") && last_wait.contains("## slow ("),
        "{last_wait}"
    );
    for f in ["fast.txt", "slow.txt"] {
        assert!(
            !env.ws().join(f).exists(),
            "nothing merged yet, {f} is in the worktree only"
        );
    }
}

#[test]
fn a_worker_never_gets_more_than_its_parent() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tool(
                        "spawn_agent",
                        json!({"name": "wide", "task": "[script:wide] x", "mode": "bypass"}),
                    ),
                    Step::tools(vec![ScriptedCall::new(
                        "spawn_agent",
                        json!({"name": "narrow", "task": "[script:narrow] x", "mode": "auto", "tools": ["shell", "read_file"]}),
                    )]),
                    Step::tool("wait_agents", json!({})),
                    Step::finish("done"),
                ],
            )
            .with(
                "narrow",
                vec![
                    Step::tool("shell", json!({"command": "touch denied-by-parent"})),
                    Step::tool("write_file", json!({"path": "x.txt", "content": "x"})),
                    Step::finish("tried"),
                ],
            ),
    );
    repo(&env);
    // The planner's own layer denies `touch`; the worker asks for auto mode
    // and no rules of its own.
    let pid = start_planner(&env, "[script:planner] go", &["--deny", "Shell(touch *)"]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let reqs = requests_of(&env, "planner");
    let refused = tool_messages(&reqs[1]).join("\n");
    assert!(
        refused.contains("cannot run in mode bypass")
            && refused.contains("never gets more than its parent"),
        "{refused}"
    );
    let all = sessions(&env);
    assert!(all.iter().all(|s| s["name"] != "wide"));
    let spawned = tool_messages(&reqs[2]).join("\n");
    assert!(spawned.contains("spawned worker narrow"), "{spawned}");
    let narrow = all.iter().find(|s| s["name"] == "narrow").unwrap();
    let worktree = narrow["workspace"].as_str().unwrap();
    // The parent's deny held in the worker, which ran in auto mode, and a
    // tool outside its subset was refused.
    let seen = last_tool_results(&env, "narrow");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|m| m.contains("denied by policy")),
        "{seen:?}"
    );
    assert!(!Path::new(worktree).join("denied-by-parent").exists());
    assert!(!Path::new(worktree).join("x.txt").exists());
    let events = env.events(narrow["id"].as_str().unwrap());
    let denies = events
        .iter()
        .filter(|e| e["event"]["type"] == "policy_decided" && e["event"]["decision"] == "deny")
        .count();
    assert_eq!(denies, 2);
}

/// A worker owns its worktree, `.git` file included: it points it at a git
/// folder of its own whose config runs programs (fsmonitor, a clean filter
/// every file goes through), and plants `.envrc` (a file that runs later).
/// The daemon's git must run none of it, and the merge must not carry the
/// planted files into the user's checkout.
#[test]
fn a_worker_cannot_make_the_daemon_run_its_git_config() {
    let marks: Vec<String> = (1..=2).map(|i| marker(&i.to_string())).collect();
    let attack = format!(
        r#"import os
os.makedirs('evil/refs/heads', exist_ok=True)
os.makedirs('evil/objects', exist_ok=True)
open('evil/HEAD', 'w').write('ref: refs/heads/main\n')
open('evil/config', 'w').write('[core]\n\trepositoryformatversion = 0\n\tfsmonitor = touch {m1}\n[filter "pwn"]\n\tclean = touch {m2}\n\trequired = true\n')
open('.gitattributes', 'w').write('* filter=pwn\n')
open('.envrc', 'w').write('echo planted\n')
try:
    open('.git', 'w').write('gitdir: evil\n')
    print('rewrote .git')
except OSError as e:
    print('cannot rewrite .git:', e)
"#,
        m1 = marks[0],
        m2 = marks[1]
    );
    std::fs::create_dir_all("/tmp").unwrap();
    let env = Env::new(Script::new().with("planner", spawn_wait_merge("x")).with(
        "x",
        vec![
            Step::tool(
                "write_file",
                json!({"path": "attack.py", "content": attack}),
            ),
            Step::tool(
                "shell",
                json!({"command": "python3 attack.py && rm attack.py"}),
            ),
            Step::finish("planted"),
        ],
    ));
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let x_saw = last_tool_results(&env, "x").join("\n");
    assert!(x_saw.contains(".git"), "the attack did not run: {x_saw}");
    let reqs = requests_of(&env, "planner");
    let merge = tool_messages(reqs.last().unwrap()).join("\n");
    assert!(
        merge.contains("does not merge for an agent") && merge.contains(".envrc (runs later)"),
        "{merge}"
    );
    for m in &marks {
        assert!(
            !Path::new(m).exists(),
            "the daemon ran the worker's git config: {m}"
        );
    }
    assert!(!env.ws().join(".envrc").exists());
    assert!(!env.ws().join("evil").exists());
    assert_eq!(git(env.ws(), &["status", "--porcelain"]), "");
}

/// A worker in ask mode asks; its approval is in the daemon's queue tagged
/// with the worker and its fleet; nobody answers, so the fleet's escalation
/// denies it after the timeout, the worker's model is told why, and the
/// fleet goes on.
#[test]
fn an_unanswered_worker_approval_escalates() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tool(
                        "spawn_agent",
                        json!({"name": "asker", "task": "[script:asker] go", "mode": "ask"}),
                    ),
                    Step::tool("wait_agents", json!({"timeout_secs": 60})),
                    Step::finish("done"),
                ],
            )
            .with(
                "asker",
                vec![
                    Step::tool("shell", json!({"command": "touch asked.txt"})),
                    Step::finish("gave up"),
                ],
            ),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &["--approval-timeout", "3"]);
    // The approval shows up tagged with the worker and its fleet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let out = env.run(&["approvals", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        if let Some(a) = list["approvals"].as_array().unwrap().first() {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no approval was asked");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(pending["agent"], "asker");
    assert_eq!(pending["fleet"], pid.as_str());
    assert!(pending["escalates_ms"].as_i64().unwrap() > pending["requested_ms"].as_i64().unwrap());
    let text = stdout(&env.run(&["approvals"]));
    assert!(text.contains("worker asker of fleet"), "{text}");
    // Nobody answers.
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let asker = sessions(&env)
        .into_iter()
        .find(|s| s["name"] == "asker")
        .unwrap();
    assert_eq!(asker["state"], "completed");
    let events = env.events(asker["id"].as_str().unwrap());
    let refused = events
        .iter()
        .find(|e| e["event"]["type"] == "approval_refused")
        .unwrap();
    assert_eq!(refused["event"]["by"], "escalation");
    let told = last_tool_results(&env, "asker").join("\n");
    assert!(told.contains("nobody answered within 3s"), "{told}");
    assert!(!Path::new(asker["workspace"].as_str().unwrap())
        .join("asked.txt")
        .exists());
    let out = env.run(&["approvals", "--json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(list["approvals"].as_array().unwrap().is_empty());
}

/// Three workers that would read for thirty turns each; the fleet may use
/// 6,000 tokens. Past it the planner and every worker are cancelled, and
/// the model is asked nothing more.
#[test]
fn a_fleet_over_its_budget_stops_as_a_whole() {
    let reader: Vec<Step> = (0..30)
        .map(|_| Step::tool("read_file", json!({"path": "README.md"})))
        .chain(std::iter::once(Step::finish("read a lot")))
        .collect();
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![
                        spawn("r1", "read"),
                        spawn("r2", "read"),
                        spawn("r3", "read"),
                    ]),
                    Step::tool("wait_agents", json!({"timeout_secs": 120})),
                    Step::finish("never"),
                ],
            )
            .with("r1", reader.clone())
            .with("r2", reader.clone())
            .with("r3", reader),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &["--max-tokens", "6000"]);
    assert_eq!(env.wait_state(&pid, 60), "cancelled");
    let all = sessions(&env);
    let workers: Vec<&Value> = all.iter().filter(|s| s["parent"] == pid.as_str()).collect();
    // The budget may stop the planner before its third spawn.
    assert!((1..=3).contains(&workers.len()), "{workers:?}");
    let mut tokens = 0;
    for s in all.iter() {
        tokens += s["prompt_tokens"].as_u64().unwrap() + s["completion_tokens"].as_u64().unwrap();
    }
    for w in &workers {
        assert_eq!(
            env.wait_state(w["id"].as_str().unwrap(), 30),
            "cancelled",
            "{w}"
        );
    }
    let by = env
        .events(&pid)
        .into_iter()
        .find(|e| e["event"]["type"] == "cancel_requested")
        .unwrap();
    assert!(
        by["event"]["by"].as_str().unwrap().contains("budget"),
        "{by}"
    );
    // Stopped early, and for good: far fewer than the 93 requests the
    // scripts hold, and none after the stop.
    let asked = env.mock.request_count();
    assert!(asked < 60, "{asked} requests, {tokens} tokens");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.mock.request_count(), asked);
}

/// A worker writes, through an interpreter the policy cannot read, a git
/// repository of its own inside its worktree (whose config names a clean
/// filter, as `git add` would run for a modified submodule), and a file
/// that runs later under a name git quotes (a tab in a folder name). The
/// daemon's git runs nothing of the nested repository, and the merge is
/// refused, naming the file.
#[test]
fn nested_repositories_and_quoted_names_do_not_get_past_the_merge() {
    let mark = marker("nested");
    let attack = format!(
        r#"import os, subprocess
g = ['git', '-c', 'user.name=w', '-c', 'user.email=w@w', '-c', 'commit.gpgsign=false']
os.makedirs('sub')
subprocess.run(g + ['init', '-q', 'sub'], check=True)
subprocess.run(['git', '-C', 'sub', 'config', 'filter.evil.clean', 'touch {mark}; cat'], check=True)
open('sub/.git/info/attributes', 'w').write('* filter=evil\n')
open('sub/f', 'w').write('a\n')
subprocess.run(g + ['-C', 'sub', 'add', 'f'], check=True)
subprocess.run(g + ['-C', 'sub', 'commit', '-qm', 'i'], check=True)
open('sub/f', 'w').write('b\n')
os.makedirs('tab\there')
open('tab\there/.envrc', 'w').write('echo planted\n')
print('planted')
"#
    );
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![spawn("n", "go"), spawn("q", "go")]),
                    Step::tool("wait_agents", json!({})),
                    Step::tool("merge_worker", json!({"agent": "n"})),
                    Step::tool("merge_worker", json!({"agent": "q"})),
                    Step::finish("done"),
                ],
            )
            .with(
                "n",
                vec![
                    Step::tool("write_file", json!({"path": "attack.py", "content": attack})),
                    Step::tool("shell", json!({"command": "python3 attack.py && rm -rf 'tab\there'"})),
                    Step::finish("planted"),
                ],
            )
            .with(
                "q",
                vec![
                    Step::tool(
                        "write_file",
                        json!({"path": "plant.py", "content": "import os\nos.makedirs('tab\\there')\nopen('tab\\there/.envrc', 'w').write('echo planted\\n')\n"}),
                    ),
                    Step::tool("shell", json!({"command": "python3 plant.py && rm plant.py"})),
                    Step::finish("planted"),
                ],
            ),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let n_saw = last_tool_results(&env, "n").join("\n");
    assert!(n_saw.contains("planted"), "the attack did not run: {n_saw}");
    let reqs = requests_of(&env, "planner");
    let waited = tool_messages(&reqs[2]).join("\n");
    assert!(waited.contains("left a git repository"), "{waited}");
    let merges = tool_messages(reqs.last().unwrap());
    let merge_n = &merges[merges.len() - 2];
    let merge_q = &merges[merges.len() - 1];
    assert!(merge_n.contains("left a git repository"), "{merge_n}");
    assert!(
        merge_q.contains("does not merge for an agent")
            && merge_q.contains("tab\there/.envrc (runs later)"),
        "{merge_q}"
    );
    assert!(
        !Path::new(&mark).exists(),
        "the daemon ran the nested repository's filter"
    );
    assert!(!env.ws().join("tab\there").exists());
    assert!(!env.ws().join("sub").exists());
    assert_eq!(git(env.ws(), &["status", "--porcelain"]), "");
}

/// The planner is a model too, and can write its repository's `.git`
/// (all but hooks and config): it points `commondir` at a git folder of
/// its own whose config names a smudge filter for every file. The daemon
/// refuses to run git there at all.
#[test]
fn a_planner_cannot_redirect_the_daemons_git() {
    let mark = marker("commondir");
    let attack = format!(
        r#"import shutil
shutil.copytree('.git', '.g2', ignore=shutil.ignore_patterns('hooks'))
open('.g2/config', 'a').write('[filter "evil"]\n\tsmudge = touch {mark}; cat\n')
open('.g2/info/attributes', 'w').write('* filter=evil\n')
open('.git/commondir', 'w').write('../.g2\n')
print('redirected')
"#
    );
    let env = Env::new(Script::new().with(
        "planner",
        vec![
            Step::tool(
                "write_file",
                json!({"path": "attack.py", "content": attack}),
            ),
            Step::tool("shell", json!({"command": "python3 attack.py"})),
            Step::tool("spawn_agent", json!({"name": "w", "task": "[script:w] go"})),
            Step::finish("done"),
        ],
    ));
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let saw = last_tool_results(&env, "planner");
    assert!(
        saw[1].contains("redirected"),
        "the attack did not run: {saw:?}"
    );
    // The daemon's git names its common folder itself: the redirect is
    // ignored, the worker starts from the real repository.
    assert!(saw[2].contains("spawned worker w"), "{saw:?}");
    assert!(
        !Path::new(&mark).exists(),
        "the daemon ran the planner's git config"
    );
}

/// A planner whose workspace is not a repository when the fleet starts
/// makes one, with a config of its own (the sandbox protects `.git/config`
/// only when it exists): the daemon refuses to run git there.
#[test]
fn a_planner_cannot_make_the_repository_the_daemon_runs_git_in() {
    let mark = marker("init");
    let attack = format!(
        r#"import subprocess
g = ['git', '-c', 'user.name=p', '-c', 'user.email=p@p', '-c', 'commit.gpgsign=false']
subprocess.run(g + ['init', '-q', '-b', 'main'], check=True)
subprocess.run(['git', 'config', 'filter.evil.smudge', 'touch {mark}; cat'], check=True)
open('.git/info/attributes', 'w').write('* filter=evil\n')
open('f', 'w').write('x\n')
subprocess.run(g + ['add', 'f'], check=True)
subprocess.run(g + ['commit', '-qm', 'i'], check=True)
print('made a repository')
"#
    );
    let env = Env::new(Script::new().with(
        "planner",
        vec![
            Step::tool(
                "write_file",
                json!({"path": "attack.py", "content": attack}),
            ),
            Step::tool("shell", json!({"command": "python3 attack.py"})),
            Step::tool("spawn_agent", json!({"name": "w", "task": "[script:w] go"})),
            Step::finish("done"),
        ],
    ));
    // No repository at the start.
    let pid = start_planner(&env, "[script:planner] go", &[]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let saw = last_tool_results(&env, "planner");
    assert!(
        saw[1].contains("made a repository"),
        "the attack did not run: {saw:?}"
    );
    assert!(
        saw[2].contains("was not a git repository") && saw[2].contains("when the fleet started"),
        "{saw:?}"
    );
    assert!(
        !Path::new(&mark).exists(),
        "the daemon ran the planner's git config"
    );
    assert!(sessions(&env).iter().all(|s| s["name"] != "w"));
}

/// The admin's `exec_later_extra` counts for merges too: a worker that
/// plants `.tool-versions` (on the admin's list) through an interpreter
/// does not get it merged.
#[test]
fn the_admins_exec_later_list_holds_for_merges() {
    let env = Env::new(
        Script::new()
            .with(
"planner", spawn_wait_merge("t"))
            .with(
                "t",
                vec![
                    Step::tool(
                        "shell",
                        json!({"command": "python3 -c \"open('.tool-versions', 'w').write('nodejs 22\\n')\""}),
                    ),
                    Step::finish("pinned node"),
                ],
            ),
    );
    std::fs::write(
        env.home.path().join("managed.toml"),
        "[permissions]\nexec_later_extra = [\"**/.tool-versions\"]\n",
    )
    .unwrap();
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let merge = last_tool_results(&env, "planner").pop().unwrap();
    assert!(merge.contains(".tool-versions (runs later)"), "{merge}");
    assert!(!env.ws().join(".tool-versions").exists());
}

/// Writes a workflow file next to (not in) the workspace.
fn workflow_file(env: &Env, text: &str) -> String {
    let path = env.ws().parent().unwrap().join(format!(
        "wf-{}-{}.toml",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&path, text).unwrap();
    path.to_string_lossy().into_owned()
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}

/// The workers of a fleet, by name.
fn workers_of(env: &Env, root: &str) -> std::collections::BTreeMap<String, Value> {
    sessions(env)
        .into_iter()
        .filter(|s| s["root"] == root && s["id"] != root)
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s))
        .collect()
}

/// The first user message of an agent's first request: its task.
fn task_seen_by(env: &Env, script: &str) -> String {
    let reqs = requests_of(env, script);
    let first = reqs
        .first()
        .unwrap_or_else(|| panic!("{script} was never asked"));
    first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap()["content"]
        .to_string()
}

#[test]
fn a_workflow_runs_agent_parallel_and_pipeline_steps_feeding_each_other() {
    let env = Env::new(
        Script::new()
            .with("plan", vec![Step::finish("a.txt\nb.txt\n")])
            .with("write-1", writer("a.txt", "A\n"))
            .with("write-2", writer("b.txt", "B\n"))
            .with("count-1", vec![Step::finish("saw one")])
            .with("count-2", vec![Step::finish("saw two")])
            .with("count-3", vec![Step::finish("saw three")])
            .with("notes-1", vec![Step::finish("summary of three files")])
            .with("notes-2", vec![Step::finish("polished release notes")]),
    );
    repo(&env);
    let file = workflow_file(
        &env,
        r#"
name = "write and review"
model = "openai:mock"

[[steps]]
name = "plan"
agent = "[script:plan] list the files to write, one per line"
workspace = "shared"

[[steps]]
name = "write"
parallel = { over = { lines = "{{steps.plan.output}}" }, agent = "[script:write-{{index}}] create {{item}}" }

[[steps]]
name = "count"
workspace = "shared"
parallel = { over = { command = "ls *.txt" }, agent = "[script:count-{{index}}] look at {{ item }}" }

[[steps]]
name = "notes"
pipeline = ["[script:notes-1] summarise: {{input}}", "[script:notes-2] polish: {{input}} (plan was {{steps.plan.output}})"]
"#,
    );
    let ws = env.ws_str();
    let out = env.run_for(&["run", "-w", &ws, "--workflow", &file], 180);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("polished release notes"),
        "{}",
        stdout(&out)
    );
    // The parallel step's workers were merged, one merge commit each; the
    // shared steps wrote nothing.
    assert_eq!(
        std::fs::read_to_string(env.ws().join("a.txt")).unwrap(),
        "A\n"
    );
    assert_eq!(
        std::fs::read_to_string(env.ws().join("b.txt")).unwrap(),
        "B\n"
    );
    let merges = git(env.ws(), &["log", "--merges", "--format=%s"]);
    assert_eq!(merges.lines().count(), 2, "{merges}");
    assert_eq!(git(env.ws(), &["status", "--porcelain"]), "");
    // Outputs fed the next tasks: the plan's lines became items, the
    // command's output (after the merge) too, the pipeline chained.
    assert!(task_seen_by(&env, "write-2").contains("create b.txt"));
    assert!(task_seen_by(&env, "count-3").contains("look at same.txt"));
    let polish = task_seen_by(&env, "notes-2");
    assert!(
        polish.contains("polish: summary of three files"),
        "{polish}"
    );
    assert!(polish.contains("plan was a.txt"), "{polish}");
    let summarise = task_seen_by(&env, "notes-1");
    assert!(
        summarise.contains("## a.txt") && summarise.contains("saw three"),
        "the parallel step's output is every answer: {summarise}"
    );
    // One worker per job, each once, every one completed.
    let all = sessions(&env);
    let root = all
        .iter()
        .find(|s| s["task"] == "write and review")
        .unwrap();
    let root_id = root["id"].as_str().unwrap();
    let workers = workers_of(&env, root_id);
    let names: Vec<&str> = workers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["count-1", "count-2", "count-3", "notes-1", "notes-2", "plan", "write-1", "write-2"]
    );
    assert!(workers.values().all(|w| w["state"] == "completed"));
    // The root's log holds its actions: spawns, the command, merges.
    let events = env.events(root_id);
    assert_gapless(&events);
    let calls: Vec<String> = events
        .iter()
        .filter(|e| e["event"]["type"] == "tool_proposed")
        .map(|e| e["event"]["call"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(calls.iter().filter(|c| *c == "spawn_agent").count(), 8);
    assert_eq!(calls.iter().filter(|c| *c == "merge_worker").count(), 4);
    assert_eq!(calls.iter().filter(|c| *c == "shell").count(), 1);
    // The tree shows it.
    let tree = env.run(&["ps", "--tree"]);
    assert!(stdout(&tree).contains("write-2"), "{}", stdout(&tree));
}

#[test]
fn kill9_mid_workflow_resumes_without_rerunning_finished_steps() {
    let env = Env::new(
        Script::new()
            .with("first", vec![Step::finish("first done")])
            .with("fan-1", vec![Step::finish("x done")])
            .with("fan-2", vec![Step::finish("y done").with_delay_ms(4000)]),
    );
    repo(&env);
    let file = workflow_file(
        &env,
        r#"
model = "openai:mock"
[[steps]]
name = "first"
agent = "[script:first] go"
workspace = "shared"
[[steps]]
name = "fan"
workspace = "shared"
parallel = { over = { list = ["x", "y"] }, agent = "[script:fan-{{index}}] do {{item}} after {{input}}" }
"#,
    );
    let ws = env.ws_str();
    let out = env.run(&["run", "--detach", "--json", "-w", &ws, "--workflow", &file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root: Value = serde_json::from_slice(&out.stdout).unwrap();
    let root = root["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = workers_of(&env, &root);
        let fan1_done = w.get("fan-1").is_some_and(|s| s["state"] == "completed");
        if fan1_done && !requests_of(&env, "fan-2").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the workflow never got going");
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_requests = requests_of(&env, "first").len();
    let fan1_requests = requests_of(&env, "fan-1").len();
    kill9(env.daemon_pid().unwrap());
    assert_eq!(env.wait_state(&root, 90), "completed");
    // Nothing finished ran again, nothing was spawned twice.
    assert_eq!(requests_of(&env, "first").len(), first_requests);
    assert_eq!(requests_of(&env, "fan-1").len(), fan1_requests);
    let workers = workers_of(&env, &root);
    assert_eq!(
        workers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["fan-1", "fan-2", "first"]
    );
    let fan2 = workers["fan-2"]["id"].as_str().unwrap();
    assert!(kinds(&env.events(fan2)).contains(&"session_resumed".to_string()));
    let events = env.events(&root);
    assert_gapless(&events);
    assert!(kinds(&events).contains(&"session_resumed".to_string()));
    let spawns = events
        .iter()
        .filter(|e| {
            e["event"]["type"] == "tool_finished"
                && e["event"]["call_id"]
                    .as_str()
                    .unwrap()
                    .starts_with("spawn-")
        })
        .count();
    assert_eq!(spawns, 3, "one recorded spawn per worker");
    let answer = env.session(&root)["final_answer"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        answer.contains("## x\nx done") && answer.contains("## y\ny done"),
        "{answer}"
    );
    assert!(task_seen_by(&env, "fan-2").contains("do y after first done"));
}

#[test]
fn a_failing_workflow_step_stops_the_run_and_bad_files_are_refused() {
    let env = Env::new(
        Script::new()
            .with("a-1", vec![Step::status(400, "bad request: no such model")])
            .with("a-2", vec![Step::hang()]),
    );
    repo(&env);
    let file = workflow_file(
        &env,
        r#"
model = "openai:mock"
[[steps]]
name = "a"
workspace = "shared"
parallel = { over = { list = ["one", "two"] }, agent = "[script:a-{{index}}] {{item}}" }
[[steps]]
name = "never"
agent = "[script:never] not reached"
"#,
    );
    let ws = env.ws_str();
    let out = env.run_for(&["run", "-w", &ws, "--workflow", &file], 120);
    assert!(!out.status.success());
    let all = sessions(&env);
    let root = all
        .iter()
        .find(|s| s["role"].is_null() && s["root"].is_string())
        .unwrap();
    assert_eq!(root["state"], "failed");
    let reason = root["reason"].as_str().unwrap();
    assert!(reason.contains("step \"a\": worker a-1 failed"), "{reason}");
    let workers = workers_of(&env, root["id"].as_str().unwrap());
    assert_eq!(
        workers["a-2"]["state"], "cancelled",
        "the step's other worker is stopped"
    );
    assert!(!workers.contains_key("never"));
    assert!(requests_of(&env, "never").is_empty());

    // Files that cannot run are refused before anything starts.
    for (text, says) in [
        (
            "[[steps]]\nname = \"s\"\nagent = \"{{steps.later.output}}\"\n",
            "not an earlier step",
        ),
        (
            "[[steps]]\nname = \"s\"\nagent = \"x\"\npipeline = [\"y\"]\n",
            "exactly one of",
        ),
        ("[[steps]]\nname = \"s\"\nagnet = \"x\"\n", "unknown field"),
        ("[[steps]]\nname = \"s-1\"\nagent = \"x\"\n", "step name"),
        ("steps = []\n", "no steps"),
    ] {
        let bad = workflow_file(&env, text);
        let out = env.run(&["run", "-w", &ws, "--workflow", &bad]);
        assert!(!out.status.success());
        assert!(stderr(&out).contains(says), "{text}: {}", stderr(&out));
    }
}

#[test]
fn workers_past_the_fleets_limit_queue_and_run_one_at_a_time() {
    let names = ["q1", "q2", "q3"];
    let mut script = Script::new().with(
        "planner",
        vec![
            Step::tools(names.iter().map(|w| spawn(w, "go")).collect()),
            Step::tool("wait_agents", json!({"timeout_secs": 120})),
            Step::finish("all three done"),
        ],
    );
    for w in names {
        script = script.with(
            w,
            vec![Step::finish(format!("{w} done")).with_delay_ms(300)],
        );
    }
    let env = Env::new(script);
    repo(&env);
    let ws = env.ws_str();
    let out = env.run_for(
        &[
            "run",
            "-w",
            &ws,
            "--planner",
            "openai:mock",
            "--max-workers",
            "1",
            "[script:planner] three jobs",
        ],
        120,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("all three done"), "{}", stdout(&out));
    // Spawning past the limit queued instead of refusing...
    let spawned = tool_messages(&requests_of(&env, "planner")[1]);
    assert_eq!(spawned.len(), 3);
    assert!(!spawned[0].contains("queued"), "{}", spawned[0]);
    assert!(
        spawned[1].contains("queued") && spawned[2].contains("queued"),
        "{spawned:?}"
    );
    // ...and one worker ran at a time: each asked its model only after
    // the one before had ended.
    let root = sessions(&env)
        .into_iter()
        .find(|s| s["name"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut spans: Vec<(i64, i64)> = workers_of(&env, &root)
        .values()
        .map(|w| {
            let events = env.events(w["id"].as_str().unwrap());
            let first = events
                .iter()
                .find(|e| e["event"]["type"] == "model_requested")
                .unwrap()["ts_ms"]
                .as_i64()
                .unwrap();
            (first, events.last().unwrap()["ts_ms"].as_i64().unwrap())
        })
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 3);
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "two workers ran at once: {spans:?}");
    }
    let reports = last_tool_results(&env, "planner").join("\n");
    for w in names {
        assert!(reports.contains(&format!("## {w} (")), "{reports}");
        assert!(reports.contains(&format!("{w} done")), "{reports}");
    }
}

#[test]
fn an_endpoints_slots_bound_its_requests_in_flight() {
    let env = Env::new(
        Script::new()
            .with("s1", vec![Step::finish("one").with_delay_ms(400)])
            .with("s2", vec![Step::finish("two").with_delay_ms(400)])
            .with("s3", vec![Step::finish("three").with_delay_ms(400)]),
    );
    // The mock stands for a local GPU server that answers one at a time.
    let config = env.home.path().join("config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[scheduler.endpoints]\n\"{}/\" = 1\n",
        env.mock.base_url()
    ));
    std::fs::write(&config, text).unwrap();
    let ids: Vec<String> = ["s1", "s2", "s3"]
        .iter()
        .map(|s| env.start(&format!("[script:{s}] go")))
        .collect();
    for id in &ids {
        assert_eq!(env.wait_state(id, 60), "completed");
    }
    assert_eq!(env.mock.max_in_flight(), 1);
}

#[test]
fn a_planner_messages_a_running_worker() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tool("spawn_agent", json!({"name": "m", "task": "[script:m] go"})),
                    Step::tool(
                        "send_message",
                        json!({"agent": "m", "text": "use tabs, not spaces"}),
                    ),
                    Step::tool("wait_agents", json!({})),
                    Step::tool("send_message", json!({"agent": "m", "text": "too late"})),
                    Step::finish("done"),
                ],
            )
            .with(
                "m",
                vec![
                    // Still thinking when the message comes.
                    Step::tool("write_file", json!({"path": "m.txt", "content": "m\n"}))
                        .with_delay_ms(800),
                    Step::finish("wrote m.txt with tabs"),
                ],
            ),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &[]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let planner = requests_of(&env, "planner");
    let sent = tool_messages(&planner[2]);
    assert!(sent.last().unwrap().contains("sent to m"), "{sent:?}");
    let late = tool_messages(&planner[4]).last().unwrap().clone();
    assert!(late.contains("m has ended"), "{late}");
    // The worker's next request carried the message, after its tool result.
    let worker = requests_of(&env, "m");
    assert_eq!(worker.len(), 2);
    let messages = worker[1]["messages"].as_array().unwrap();
    let last = messages.last().unwrap();
    assert_eq!(last["role"], "user", "{messages:?}");
    let text = last["content"].to_string();
    assert!(
        text.contains("Message from your planner") && text.contains("use tabs, not spaces"),
        "{text}"
    );
    assert!(messages.iter().any(|m| m["role"] == "tool"));
    assert!(!worker[0]["messages"].to_string().contains("use tabs"));
    // It is in the worker's log.
    let all = sessions(&env);
    let m = all.iter().find(|s| s["name"] == "m").unwrap();
    let events = env.events(m["id"].as_str().unwrap());
    assert_gapless(&events);
    assert!(kinds(&events).contains(&"message_received".to_string()));
}

#[test]
fn a_worker_gets_only_a_narrowed_grant_of_its_planners_secrets() {
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![
                        ScriptedCall::new(
                            "spawn_agent",
                            json!({"name": "narrow", "task": "[script:narrow] x", "grants": ["api:method=GET"]}),
                        ),
                        ScriptedCall::new(
                            "spawn_agent",
                            json!({"name": "host", "task": "x", "grants": ["api:host=evil.example"]}),
                        ),
                        ScriptedCall::new(
                            "spawn_agent",
                            json!({"name": "method", "task": "x", "grants": ["api:method=DELETE"]}),
                        ),
                        ScriptedCall::new(
                            "spawn_agent",
                            json!({"name": "other", "task": "x", "grants": ["other"]}),
                        ),
                    ]),
                    Step::tool("wait_agents", json!({})),
                    Step::finish("done"),
                ],
            )
            .with("narrow", vec![Step::finish("ok")]),
    );
    repo(&env);
    for (name, value) in [("api", "s3cret-api-value"), ("other", "s3cret-other")] {
        let out = env.add_secret(&[name, "--host", "127.0.0.1"], value);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let pid = start_planner(
        &env,
        "[script:planner] go",
        &["--grant", "api:method=GET,POST"],
    );
    assert_eq!(env.wait_state(&pid, 60), "completed");
    let spawned = tool_messages(&requests_of(&env, "planner")[1]);
    assert!(spawned[0].contains("spawned worker narrow"), "{spawned:?}");
    assert!(spawned[1].contains("evil.example"), "{spawned:?}");
    assert!(spawned[2].contains("DELETE"), "{spawned:?}");
    assert!(spawned[3].contains("\"other\""), "{spawned:?}");
    let names: Vec<String> = sessions(&env)
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["narrow"], "refused workers are not recorded");
    // The worker's grant: GET only, same host and placeholder as the
    // planner's; never the value.
    let grant_of = |id: &str| {
        env.events(id)
            .into_iter()
            .find(|e| e["event"]["type"] == "secrets_granted")
            .map(|e| e["event"]["grants"][0].clone())
            .unwrap()
    };
    let mine = grant_of(&pid);
    let all = sessions(&env);
    let worker = all.iter().find(|s| s["name"] == "narrow").unwrap();
    let theirs = grant_of(worker["id"].as_str().unwrap());
    assert_eq!(theirs["methods"], json!(["GET"]));
    assert_eq!(theirs["hosts"], mine["hosts"]);
    assert_eq!(theirs["placeholder"], mine["placeholder"]);
    assert!(!env
        .events(worker["id"].as_str().unwrap())
        .iter()
        .any(|e| e.to_string().contains("s3cret")));
}

#[test]
fn workers_of_workers_past_the_limit_are_refused_not_queued_for_ever() {
    // Two workers hold the fleet's two slots and each asks for a worker of
    // its own: queued behind their parents, those would wait for ever.
    // Both are running when either asks (each asks after a pause, and
    // stays a while after).
    let sub = |name: &str| {
        vec![
            Step::tool(
                "spawn_agent",
                json!({"name": format!("{name}-sub"), "task": "x", "workspace": "shared"}),
            )
            .with_delay_ms(300),
            Step::finish(format!("{name} done")).with_delay_ms(1000),
        ]
    };
    let env = Env::new(
        Script::new()
            .with(
                "planner",
                vec![
                    Step::tools(vec![spawn("a", "go"), spawn("b", "go")]),
                    Step::tool("wait_agents", json!({"timeout_secs": 60})),
                    Step::finish("done"),
                ],
            )
            .with("a", sub("a"))
            .with("b", sub("b")),
    );
    repo(&env);
    let pid = start_planner(&env, "[script:planner] go", &["--max-workers", "2"]);
    assert_eq!(env.wait_state(&pid, 60), "completed");
    for w in ["a", "b"] {
        let said = last_tool_results(&env, w).join("\n");
        assert!(said.contains("the fleet's limit at once"), "{w}: {said}");
    }
    assert!(sessions(&env)
        .iter()
        .all(|s| s["name"] != "a-sub" && s["name"] != "b-sub"));
}
