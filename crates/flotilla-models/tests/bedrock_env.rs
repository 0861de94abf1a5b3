//! `BedrockClient::new` with the standard AWS chain reading the real
//! environment and shared files. Alone in its test binary, and one test: it
//! sets process-wide variables, which must not race with other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use flotilla_models::{
    BedrockClient, BedrockConfig, ChatMessage, ChatRequest, ModelClient, ModelError, Role, ToolSpec,
};
use flotilla_testkit::{MockBedrockServer, Script, Step};
use serde_json::json;

/// Every variable of the chain that could change what these phases see.
const CHAIN_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SDK_LOAD_CONFIG",
];

fn request() -> ChatRequest {
    ChatRequest {
        model: "anthropic.claude-test-v1:0".into(),
        messages: vec![ChatMessage::text(Role::User, "hi")],
        tools: vec![ToolSpec {
            name: "shell".into(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }]
        .into(),
        max_tokens: None,
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn the_standard_chain_reads_the_environment_and_profiles() {
    let server = MockBedrockServer::start(Script::single(vec![Step::text("from the chain")]))
        .await
        .unwrap();
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    // No real configuration of this machine takes part: empty shared files,
    // no instance metadata.
    let dir = std::env::temp_dir().join(format!("flotilla-bedrock-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("config");
    let credentials_file = dir.join("credentials");
    write(&config_file, "");
    write(&credentials_file, "");
    for name in CHAIN_VARS {
        std::env::remove_var(name);
    }
    std::env::set_var("AWS_CONFIG_FILE", &config_file);
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials_file);
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");

    // 1. Credentials, region and the Bedrock endpoint from the environment.
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDFROMENV");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "secret/from+env");
    std::env::set_var("AWS_REGION", "eu-central-1");
    std::env::set_var("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.endpoint_url());
    let client = BedrockClient::new(BedrockConfig::default()).await.unwrap();
    assert_eq!(client.region(), "eu-central-1");
    assert!(!format!("{client:?}").contains("secret/from+env"));
    assert_eq!(
        client.chat(&request()).await.unwrap().text,
        "from the chain"
    );
    let authorization = server.requests()[0]
        .header("authorization")
        .unwrap()
        .to_owned();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDFROMENV/")
            && authorization.contains("/eu-central-1/bedrock/aws4_request"),
        "{authorization}"
    );

    // 2. The generic AWS_ENDPOINT_URL; the configured endpoint and region
    // win over the environment's.
    std::env::remove_var("AWS_ENDPOINT_URL_BEDROCK_RUNTIME");
    std::env::set_var("AWS_ENDPOINT_URL", server.endpoint_url());
    let client = BedrockClient::new(BedrockConfig::default()).await.unwrap();
    client.chat(&request()).await.unwrap();
    std::env::set_var("AWS_ENDPOINT_URL", &closed);
    let client = BedrockClient::new(BedrockConfig {
        endpoint_url: Some(server.endpoint_url()),
        region: Some("us-east-2".into()),
        ..BedrockConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(client.region(), "us-east-2");
    client.chat(&request()).await.unwrap();
    let authorization = server.requests()[2]
        .header("authorization")
        .unwrap()
        .to_owned();
    assert!(
        authorization.contains("/us-east-2/bedrock/"),
        "{authorization}"
    );
    std::env::remove_var("AWS_ENDPOINT_URL");

    // 3. A named profile of the shared files: region, endpoint, keys.
    std::env::remove_var("AWS_ACCESS_KEY_ID");
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    std::env::remove_var("AWS_REGION");
    write(
        &config_file,
        &format!(
            "[default]\nregion = us-east-1\n\n[profile flotilla-test]\nregion = ap-south-1\n\
             endpoint_url = {}\n",
            server.endpoint_url()
        ),
    );
    write(
        &credentials_file,
        "[flotilla-test]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\n",
    );
    let client = BedrockClient::new(BedrockConfig {
        profile: Some("flotilla-test".into()),
        ..BedrockConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(client.region(), "ap-south-1");
    client.chat(&request()).await.unwrap();
    let authorization = server.requests()[3]
        .header("authorization")
        .unwrap()
        .to_owned();
    assert!(
        authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDPROFILE/")
            && authorization.contains("/ap-south-1/bedrock/aws4_request"),
        "{authorization}"
    );

    // 4. A Bedrock API key (bearer token) instead of signing.
    std::env::set_var("AWS_BEARER_TOKEN_BEDROCK", "ABSKbedrock-api-key");
    let client = BedrockClient::new(BedrockConfig {
        profile: Some("flotilla-test".into()),
        ..BedrockConfig::default()
    })
    .await
    .unwrap();
    client.chat(&request()).await.unwrap();
    assert_eq!(
        server.requests()[4].header("authorization"),
        Some("Bearer ABSKbedrock-api-key")
    );
    std::env::remove_var("AWS_BEARER_TOKEN_BEDROCK");

    // 5. The default profile has a region but no credentials: the request
    // fails before it is sent, as a configuration error.
    let client = BedrockClient::new(BedrockConfig {
        endpoint_url: Some(server.endpoint_url()),
        ..BedrockConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(client.region(), "us-east-1");
    let error = client.chat(&request()).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::Config(message) if message.contains("credentials")),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(server.request_count(), 5);

    // 6. No region anywhere.
    write(&config_file, "");
    let error = BedrockClient::new(BedrockConfig::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, ModelError::Config(message) if message.contains("region")),
        "{error:?}"
    );

    std::fs::remove_dir_all(&dir).unwrap();
}
