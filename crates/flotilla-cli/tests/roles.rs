//! Roles, fallbacks and cost accounting, end to end: the real binary and
//! daemon, two scripted model servers on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use flotilla_testkit::{MockModelServer, Script, Step};
use serde_json::{json, Value};

fn write_config(env: &Env, extra: &str) {
    std::fs::write(
        env.home.path().join("config.toml"),
        format!(
            "[retry]\nbase_delay_ms = 10\nmax_delay_ms = 100\n[permissions]\nmode = \"auto\"\n{extra}"
        ),
    )
    .unwrap();
}

#[test]
fn a_role_falls_back_to_its_next_model_and_its_cost_is_counted() {
    // The primary is down (HTTP 503 for every request); the fallback answers.
    let env = Env::new(Script::single(vec![Step::status(503, "overloaded")]));
    let backup = MockModelServer::start_blocking(Script::single(vec![
        Step::tool("read_file", json!({"path": "notes.txt"})),
        Step::finish("read them"),
    ]))
    .unwrap();
    write_config(
        &env,
        &format!(
            r#"
[roles.worker]
model = "openai:primary"
base_url = "{primary}"
fallbacks = [{{ model = "openai:backup", base_url = "{backup}" }}]

[prices."openai:backup"]
input_per_mtok = 2.0
output_per_mtok = 10.0
"#,
            primary = env.mock.base_url(),
            backup = backup.base_url()
        ),
    );
    std::fs::write(env.ws().join("notes.txt"), "hello\n").unwrap();
    let ws = env.ws_str();
    let out = env.run(&["run", "-w", &ws, "--role", "worker", "read the notes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("by fallback openai:backup"),
        "{}",
        stdout(&out)
    );
    // Both turns went to the primary first, then to the fallback.
    assert_eq!(env.mock.requests().len(), 2);
    let reqs = backup.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["model"], "backup");

    let out = env.run(&["ps", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let s = &all[0];
    assert_eq!(s["model"], "openai:primary");
    let id = s["id"].as_str().unwrap().to_string();
    let events = env.events(&id);
    let created = &events[0]["event"];
    assert_eq!(created["role"], "worker");
    assert_eq!(created["fallbacks"][0]["model"], "openai:backup");
    let answers: Vec<&Value> = events
        .iter()
        .map(|e| &e["event"])
        .filter(|e| e["type"] == "model_responded")
        .collect();
    assert_eq!(answers.len(), 2);
    let mut expected = 0.0;
    for a in &answers {
        assert_eq!(a["model"], "openai:backup");
        let usage = &a["usage"];
        let cost = (usage["prompt_tokens"].as_f64().unwrap() * 2.0
            + usage["completion_tokens"].as_f64().unwrap() * 10.0)
            / 1e6;
        assert!(cost > 0.0);
        assert!((a["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12);
        expected += cost;
    }
    let total = s["cost_usd"].as_f64().unwrap();
    assert!((total - expected).abs() < 1e-9, "{total} vs {expected}");
    let table = stdout(&env.run(&["ps"]));
    assert!(table.contains("COST") && table.contains('$'), "{table}");
}

#[test]
fn only_the_planner_may_use_frontier_endpoints() {
    let env = Env::new(Script::single(vec![Step::finish("done")]));
    write_config(
        &env,
        &format!(
            r#"
[roles.worker]
model = "openai:local"
base_url = "{local}"
fallbacks = ["anthropic:claude-big"]

[roles.hosted]
model = "openai:gpt-4o"
base_url = "https://api.openai.com/v1"

[roles.reviewer]
model = "anthropic:claude-small"
frontier = true

[roles.planner]
model = "anthropic:claude-big"
"#,
            local = env.mock.base_url()
        ),
    );
    let ws = env.ws_str();
    let refused = |role: &str, what: &str| {
        let out = env.run(&["run", "-w", &ws, "--role", role, "task"]);
        assert!(!out.status.success(), "role {role} ran");
        let err = stderr(&out);
        assert!(err.contains("frontier") && err.contains(what), "{err}");
    };
    // A worker's fallback to Anthropic, or a worker on api.openai.com.
    refused("worker", "anthropic:claude-big");
    refused("hosted", "openai:gpt-4o");
    // The planner, and a role that says so, may: they get past the check
    // (and start; no Anthropic server answers here, which is not this
    // test's business).
    for role in ["planner", "reviewer"] {
        let out = env.run(&["run", "--detach", "-w", &ws, "--role", role, "task"]);
        assert!(out.status.success(), "{role}: {}", stderr(&out));
    }
    // An unknown role names the known ones.
    let out = env.run(&["run", "-w", &ws, "--role", "nope", "task"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("nope") && err.contains("planner") && err.contains("worker"),
        "{err}"
    );
}

#[test]
fn bad_roles_and_prices_in_config_are_refused() {
    let env = Env::new(Script::single(vec![]));
    let ws = env.ws_str();
    for (config, what) in [
        ("[roles.worker]\nmodel = \"gpt4\"\n", "[roles.worker]"),
        (
            "[roles.worker]\nmodel = \"openai:m\"\nbase_url = \"ftp://x\"\n",
            "base_url",
        ),
        (
            "[prices.\"openai:m\"]\ninput_per_mtok = -1\noutput_per_mtok = 0\n",
            "input_per_mtok",
        ),
        ("[roles.worker]\nmodell = \"openai:m\"\n", "modell"),
    ] {
        write_config(&env, config);
        let out = env.run(&["run", "-w", &ws, "--role", "worker", "task"]);
        assert!(!out.status.success(), "{config} was accepted");
        let err = stderr(&out);
        assert!(err.contains(what), "{config}: {err}");
    }
}

fn gemma() -> String {
    let path = std::env::var_os("FLOTILLA_TEST_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/test-models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-models.sh",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

#[test]
fn a_local_model_is_placed_where_it_fits_and_a_slot_is_free() {
    // "tiny" cannot hold the model; "big" can, with one slot.
    let env = Env::new(Script::single(vec![Step::finish("never asked")]));
    let big = MockModelServer::start_blocking(Script::single(vec![Step::hang()])).unwrap();
    write_config(
        &env,
        &format!(
            r#"
[roles.worker]
model = "openai:gemma-3-270m"
gguf = "{gguf}"
ctx = 8192

[[machines]]
name = "tiny"
kind = "cuda"
memory_gb = 0.6
bandwidth_gbps = 100
endpoint = "{tiny}"

[[machines]]
name = "big"
kind = "cuda"
memory_gb = 12
bandwidth_gbps = 360
endpoint = "{big}"
slots = 1
"#,
            gguf = gemma(),
            tiny = env.mock.base_url(),
            big = big.base_url()
        ),
    );
    let ws = env.ws_str();
    let out = env.run(&[
        "run", "--detach", "--json", "-w", &ws, "--role", "worker", "t1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = info["id"].as_str().unwrap().to_string();
    let created = &env.events(&id)[0]["event"];
    assert_eq!(created["machine"], "big");
    assert_eq!(created["base_url"], big.base_url());
    // The request reaches big's server (which holds it), not tiny's.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while big.requests().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never reached big");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(env.mock.requests().is_empty());
    // big's one slot is taken: the next session is refused, saying so.
    let out = env.run(&["run", "--detach", "-w", &ws, "--role", "worker", "t2"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("slot") && err.contains("big"), "{err}");
    // When the first ends, its slot is free again.
    let out = env.run(&["cancel", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    env.wait_state(&id, 20);
    let out = env.run(&["run", "--detach", "-w", &ws, "--role", "worker", "t3"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_model_that_fits_nowhere_names_the_closest_machine() {
    let env = Env::new(Script::single(vec![]));
    write_config(
        &env,
        &format!(
            r#"
[roles.worker]
model = "openai:gemma-3-270m"
gguf = "{gguf}"
ctx = 32768

[[machines]]
name = "pi"
kind = "cpu"
memory_gb = 0.3
bandwidth_gbps = 10
endpoint = "http://10.0.0.7:8080/v1"

[[machines]]
name = "phone"
kind = "cpu"
memory_gb = 0.1
bandwidth_gbps = 10
endpoint = "http://10.0.0.8:8080/v1"
"#,
            gguf = gemma()
        ),
    );
    let ws = env.ws_str();
    let out = env.run(&["run", "-w", &ws, "--role", "worker", "task"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("closest is pi") && err.contains("lacks") && err.contains("GB"),
        "{err}"
    );
}

#[test]
fn a_fleets_workers_are_placed_where_their_model_fits() {
    let env = Env::new(Script::new().with(
        "planner",
        vec![
            Step::tool(
                "spawn_agent",
                json!({"name": "w", "task": "[script:w] look", "workspace": "shared"}),
            ),
            Step::tool("wait_agents", json!({})),
            Step::finish("done"),
        ],
    ));
    let big = MockModelServer::start_blocking(
        Script::new().with("w", vec![Step::finish("answered on big")]),
    )
    .unwrap();
    write_config(
        &env,
        &format!(
            r#"
[roles.worker]
model = "openai:gemma-3-270m"
gguf = "{gguf}"
ctx = 8192

[[machines]]
name = "big"
kind = "cuda"
memory_gb = 12
bandwidth_gbps = 360
endpoint = "{big}"
slots = 2
"#,
            gguf = gemma(),
            big = big.base_url()
        ),
    );
    let ws = env.ws_str();
    let out = env.run(&[
        "run",
        "-w",
        &ws,
        "--planner",
        "openai:mock",
        "[script:planner] go",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Vec<Value> = serde_json::from_slice(&env.run(&["ps", "--json"]).stdout).unwrap();
    let w = all.iter().find(|s| s["name"] == "w").unwrap();
    assert_eq!(w["state"], "completed");
    assert_eq!(w["final_answer"], "answered on big");
    let created = &env.events(w["id"].as_str().unwrap())[0]["event"];
    assert_eq!(created["machine"], "big");
    assert_eq!(created["base_url"], big.base_url());
    assert_eq!(created["model"], "openai:gemma-3-270m");
    assert_eq!(w["machine"], "big");
    let tree = env.run(&["ps", "--tree"]);
    let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
    assert!(tree.contains("openai:gemma-3-270m@big"), "{tree}");
    // The planner's server never saw the worker.
    let tasks: Vec<String> = env
        .mock
        .requests()
        .iter()
        .map(|r| r["messages"][1]["content"].to_string())
        .collect();
    assert!(
        tasks.iter().all(|t| t.contains("[script:planner]")),
        "{tasks:?}"
    );
    assert_eq!(big.requests().len(), 1);
}
