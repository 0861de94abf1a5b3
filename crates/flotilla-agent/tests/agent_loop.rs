//! The agent loop against a real store and the scripted model server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::tools::{HostExecutor, ToolLimits};
use flotilla_agent::{load_all, run_agent, AgentExit, AgentRun, AgentSettings};
use flotilla_models::{OpenAiClient, OpenAiConfig, RetryPolicy};
use flotilla_protocol::{EventKind, SessionId, SessionLimits};
use flotilla_store::{Store, StoreOptions};
use flotilla_testkit::{MockModelServer, Script, Step};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Harness {
    _dir: tempfile::TempDir,
    ws: tempfile::TempDir,
    store: Store,
    mock: MockModelServer,
}

impl Harness {
    async fn new(steps: Vec<Step>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("f.db"), StoreOptions::default()).unwrap();
        let mock = MockModelServer::start(Script::single(steps)).await.unwrap();
        Harness {
            _dir: dir,
            ws: tempfile::tempdir().unwrap(),
            store,
            mock,
        }
    }

    async fn session(&self, limits: SessionLimits) -> SessionId {
        let id = SessionId::generate();
        self.store
            .append(
                &id,
                vec![EventKind::SessionCreated {
                    task: "the task".into(),
                    model: "openai:mock".into(),
                    workspace: self.ws.path().to_string_lossy().into_owned(),
                    base_url: None,
                    limits,
                    principal: None,
                    permissions: None,
                    role: None,
                    fallbacks: Vec::new(),
                    machine: None,
                    fleet: None,
                }],
            )
            .await
            .unwrap();
        id
    }

    fn run(&self, id: &SessionId, cancel: CancellationToken) -> AgentRun {
        let client = OpenAiClient::new(OpenAiConfig::from_env(Some(self.mock.base_url()))).unwrap();
        AgentRun {
            store: self.store.clone(),
            session: id.clone(),
            client: Arc::new(client),
            executor: Arc::new(HostExecutor),
            settings: AgentSettings {
                model_name: "mock".into(),
                retry: RetryPolicy {
                    max_attempts: 3,
                    base_delay: Duration::from_millis(5),
                    max_delay: Duration::from_millis(20),
                },
                tool_limits: ToolLimits::default(),
                system_prompt: None,
                max_tokens: None,
                prices: Arc::default(),
            },
            cancel,
            resume: false,
            policy: None,
            redact: None,
            host_tools: None,
        }
    }
}

#[tokio::test]
async fn compaction_summarises_older_turns_and_keeps_the_task() {
    // Each turn reads a big file, so the conversation outgrows a small window.
    let mut steps: Vec<Step> = (0..6)
        .map(|_| Step::tool("read_file", json!({"path": "big.txt"})))
        .collect();
    steps.push(Step::finish("read it all"));
    let h = Harness::new(steps).await;
    let line = "0123456789abcdef ".repeat(6);
    std::fs::write(h.ws.path().join("big.txt"), format!("{line}\n").repeat(30)).unwrap();
    let limits = SessionLimits {
        context_window: 4096,
        ..SessionLimits::default()
    };
    let id = h.session(limits).await;
    let exit = run_agent(h.run(&id, CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(exit, AgentExit::Completed("read it all".into()));
    let events = load_all(&h.store, &id).await.unwrap();
    let compactions: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.event {
            EventKind::ContextCompacted {
                through_seq,
                tokens_before,
                ..
            } => Some((*through_seq, *tokens_before)),
            _ => None,
        })
        .collect();
    assert!(!compactions.is_empty(), "no compaction happened");
    assert!(compactions.iter().all(|(_, before)| *before >= 3072));
    // The request after a compaction carries the task, the summary and only recent turns.
    let reqs = h.mock.requests();
    let after = reqs
        .iter()
        .find(|r| {
            r["tools"].as_array().is_some_and(|t| !t.is_empty())
                && r["messages"]
                    .to_string()
                    .contains("Summary of earlier work")
        })
        .expect("a request with the summary");
    let msgs = after["messages"].as_array().unwrap();
    assert_eq!(msgs[1]["content"], "the task");
    let assistants = msgs.iter().filter(|m| m["role"] == "assistant").count();
    assert!(
        assistants <= 3,
        "older turns were not dropped: {assistants}"
    );
}

#[tokio::test]
async fn max_turns_ends_the_session() {
    let steps = (0..10)
        .map(|_| Step::tool("list_files", json!({})))
        .collect();
    let h = Harness::new(steps).await;
    let id = h
        .session(SessionLimits {
            max_turns: 3,
            ..SessionLimits::default()
        })
        .await;
    let exit = run_agent(h.run(&id, CancellationToken::new()))
        .await
        .unwrap();
    assert!(
        matches!(&exit, AgentExit::Failed(m) if m.contains("max turns (3)")),
        "{exit:?}"
    );
    assert_eq!(h.mock.request_count(), 3);
    let info = h.store.session(&id).await.unwrap().unwrap();
    assert_eq!(info.state.as_str(), "failed");
    assert!(info.reason.unwrap().contains("max turns"));
}

#[tokio::test]
async fn wall_time_budget_stops_a_long_tool() {
    let h = Harness::new(vec![
        Step::tool("shell", json!({"command": "sleep 30"})),
        Step::finish("never"),
    ])
    .await;
    let id = h
        .session(SessionLimits {
            wall_time_secs: 1,
            ..SessionLimits::default()
        })
        .await;
    let started = std::time::Instant::now();
    let exit = run_agent(h.run(&id, CancellationToken::new()))
        .await
        .unwrap();
    assert!(
        matches!(&exit, AgentExit::Failed(m) if m.contains("wall-time")),
        "{exit:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The tool still got its result recorded: no dangling ToolStarted.
    let events = load_all(&h.store, &id).await.unwrap();
    let finished = events
        .iter()
        .any(|e| matches!(&e.event, EventKind::ToolFinished { .. }));
    assert!(finished);
}

#[tokio::test]
async fn a_restarted_loop_does_not_ask_the_model_again_for_an_answered_turn() {
    // A crash after the model replied but before the tool ran: the reply is
    // in the log, so resuming runs the tool without a new request.
    let h = Harness::new(vec![
        Step::tool("write_file", json!({"path": "x.txt", "content": "1"})),
        Step::finish("ok"),
    ])
    .await;
    let id = h.session(SessionLimits::default()).await;
    h.store
        .append(
            &id,
            vec![EventKind::ModelResponded {
                turn: 1,
                text: String::new(),
                tool_calls: vec![flotilla_protocol::ToolCall {
                    id: "call_0_0".into(),
                    name: "write_file".into(),
                    arguments: json!({"path": "x.txt", "content": "1"}).to_string(),
                }],
                usage: Default::default(),
                finish_reason: Some("tool_calls".into()),
                latency_ms: 1,
                model: None,
                cost_usd: None,
            }],
        )
        .await
        .unwrap();
    let mut run = h.run(&id, CancellationToken::new());
    run.resume = true;
    let exit = run_agent(run).await.unwrap();
    assert_eq!(exit, AgentExit::Completed("ok".into()));
    assert_eq!(
        h.mock.request_count(),
        1,
        "only the turn after the tool was asked"
    );
    assert_eq!(
        std::fs::read_to_string(h.ws.path().join("x.txt")).unwrap(),
        "1"
    );
}
