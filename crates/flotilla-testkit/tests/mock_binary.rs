//! The `flotilla-mock-model` binary.

// Helpers outside #[test] functions may unwrap too: this is test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use flotilla_testkit::{Script, Step};

#[test]
fn binary_serves_a_script_file_and_prints_its_url() {
    let dir = std::env::temp_dir().join(format!("flotilla-mock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("script.json");
    std::fs::write(
        &path,
        serde_json::to_string(&Script::single(vec![Step::text("from file")])).unwrap(),
    )
    .unwrap();

    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_flotilla-mock-model"))
            .args(["--script", path.to_str().unwrap(), "--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening URL")
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"),
        "{url}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let body = serde_json::json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "t", "parameters": {}}}],
        });
        let reply: serde_json::Value = reqwest::Client::new()
            .post(format!("{url}/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["choices"][0]["message"]["content"], "from file");
    });
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binary_speaks_anthropic_on_request() {
    let dir = std::env::temp_dir().join(format!("flotilla-mock-anthropic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("script.json");
    std::fs::write(
        &path,
        serde_json::to_string(&Script::single(vec![Step::text("from file")])).unwrap(),
    )
    .unwrap();

    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_flotilla-mock-model"))
            .args(["--script", path.to_str().unwrap(), "--anthropic"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening ")
        .expect("listening URL")
        .to_owned();
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with("/v1"),
        "{url}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let body = serde_json::json!({
            "model": "m",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "t", "input_schema": {"type": "object"}}],
        });
        let reply: serde_json::Value = reqwest::Client::new()
            .post(format!("{url}/v1/messages"))
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["content"][0]["text"], "from file");
    });
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Kills the server even when an assertion fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_explains_a_bad_script_file() {
    let output = Command::new(env!("CARGO_BIN_EXE_flotilla-mock-model"))
        .args(["--script", "/nonexistent/script.json"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/script.json"), "{stderr}");
}
