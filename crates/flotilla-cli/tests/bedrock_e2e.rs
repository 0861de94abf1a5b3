//! A session on `bedrock:MODEL`, end to end: the real binary and daemon,
//! the AWS credential chain from the daemon's environment, the Bedrock
//! Converse wire protocol (SigV4, event stream) from a local scripted server.

mod common;

use common::*;
use flotilla_testkit::{MockBedrockServer, Script, Step};
use serde_json::json;

#[test]
fn a_bedrock_session_signs_with_the_chain_and_streams_converse() {
    let env = Env::new(Script::single(vec![]));
    let mock = MockBedrockServer::start_blocking(Script::single(vec![
        Step::tool("read_file", json!({"path": "notes.txt"})),
        Step::finish("the notes say hi"),
    ]))
    .unwrap();
    std::fs::write(env.ws().join("notes.txt"), "hi from the notes\n").unwrap();
    let ws = env.ws_str();
    let out = run_with_timeout(
        {
            let mut c = env.cmd(&[
                "run",
                "-w",
                &ws,
                "-m",
                "bedrock:anthropic.claude-mock-v1:0",
                "read the notes",
            ]);
            c.env("AWS_ACCESS_KEY_ID", "AKIDFLOTILLATEST")
                .env("AWS_SECRET_ACCESS_KEY", "flotilla-test-secret")
                .env("AWS_REGION", "eu-west-1")
                .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", mock.endpoint_url())
                .env_remove("AWS_PROFILE")
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
                .env("AWS_EC2_METADATA_DISABLED", "true");
            c
        },
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the notes say hi"),
        "{}",
        stdout(&out)
    );
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert!(r.path.contains("converse-stream"), "{}", r.path);
        let auth = r.header("authorization").unwrap_or_default();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256")
                && auth.contains("AKIDFLOTILLATEST/")
                && auth.contains("/eu-west-1/bedrock/aws4_request"),
            "{auth}"
        );
        assert!(!auth.contains("flotilla-test-secret"));
    }
    // The second request carries the tool result for the first's toolUse.
    let body = serde_json::to_string(&reqs[1].body).unwrap();
    assert!(
        body.contains("toolResult") && body.contains("hi from the notes"),
        "{body}"
    );
}
