//! A session on `anthropic:MODEL`, end to end: the real binary and daemon,
//! the Anthropic Messages wire protocol from a local scripted server.

mod common;

use common::*;
use flotilla_testkit::{Failure, MockAnthropicServer, Script, Step};
use serde_json::json;
use serde_json::Value;

#[test]
fn an_anthropic_session_uses_the_messages_api_with_the_daemon_key() {
    let env = Env::new(Script::single(vec![]));
    let mock = MockAnthropicServer::start_blocking(Script::single(vec![
        // Overloaded once: the loop retries like for any provider.
        Step::tool("read_file", json!({"path": "notes.txt"}))
            .failing_first(vec![Failure::status(529)]),
        Step::finish("the notes say hello"),
    ]))
    .unwrap();
    std::fs::write(env.ws().join("notes.txt"), "hello from the notes\n").unwrap();
    let ws = env.ws_str();
    let out = run_with_timeout(
        {
            let mut c = env.cmd(&[
                "run",
                "-w",
                &ws,
                "-m",
                "anthropic:claude-mock",
                "read the notes",
            ]);
            c.env("ANTHROPIC_BASE_URL", mock.base_url())
                .env("ANTHROPIC_API_KEY", "sk-ant-test-key");
            c
        },
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the notes say hello"),
        "{}",
        stdout(&out)
    );
    // Nothing went to the OpenAI server.
    assert!(env.mock.requests().is_empty());
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 3, "one refused with 529, then two turns");
    for r in &reqs {
        assert_eq!(r.header("x-api-key"), Some("sk-ant-test-key"));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.body["model"], "claude-mock");
        assert_eq!(r.body["stream"], true);
    }
    // The second turn carries the tool result back as a tool_result block
    // answering the tool_use of the first.
    let last = &reqs[2].body["messages"];
    let msgs = last.as_array().unwrap();
    let assistant = &msgs[msgs.len() - 2];
    let user = &msgs[msgs.len() - 1];
    assert_eq!(assistant["role"], "assistant");
    let call = assistant["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert_eq!(call["name"], "read_file");
    let result = &user["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], call["id"]);
    assert!(result["content"]
        .to_string()
        .contains("hello from the notes"));
    // The key is nowhere in the session's log.
    let out = env.run(&["ps", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let id = all[0]["id"].as_str().unwrap().to_string();
    let log = serde_json::to_string(&env.events(&id)).unwrap();
    assert!(!log.contains("sk-ant-test-key"));
    assert!(log.contains("anthropic"), "the model spec is recorded");
}

#[test]
fn an_unknown_provider_is_refused_with_the_known_ones() {
    let env = Env::new(Script::single(vec![]));
    let ws = env.ws_str();
    let out = env.run(&["run", "-w", &ws, "-m", "gemini:x", "task"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("openai") && err.contains("anthropic") && err.contains("bedrock"),
        "{err}"
    );
}

/// The attack: a session names its own endpoint, hoping the daemon sends
/// its API key there. The key goes only to endpoints the daemon's own
/// configuration names.
#[test]
fn the_daemon_key_never_goes_to_an_endpoint_a_session_names() {
    let env = Env::new(Script::single(vec![]));
    let thief =
        MockAnthropicServer::start_blocking(Script::single(vec![Step::finish("x")])).unwrap();
    // The daemon starts with the key and no ANTHROPIC_BASE_URL of its own.
    let out = run_with_timeout(
        {
            let mut c = env.cmd(&["ps"]);
            c.env("ANTHROPIC_API_KEY", "sk-ant-daemon-secret")
                .env_remove("ANTHROPIC_BASE_URL");
            c
        },
        std::time::Duration::from_secs(30),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let ws = env.ws_str();
    let out = run_with_timeout(
        {
            let mut c = env.cmd(&["run", "-w", &ws, "-m", "anthropic:claude-mock", "task"]);
            c.env("ANTHROPIC_BASE_URL", thief.base_url());
            c
        },
        std::time::Duration::from_secs(60),
    );
    // The server wants a key and got none: the session fails on 401.
    assert!(!out.status.success());
    let reqs = thief.requests();
    assert!(!reqs.is_empty(), "the session did reach the endpoint");
    for r in &reqs {
        assert_eq!(r.header("x-api-key"), None, "the daemon's key was sent");
        assert!(!serde_json::to_string(&r.body)
            .unwrap()
            .contains("sk-ant-daemon-secret"));
    }
}
