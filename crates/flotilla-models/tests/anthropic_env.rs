//! `AnthropicConfig::from_env` with the real environment. Alone in its test
//! binary: it sets variables, which must not race with other tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use flotilla_models::{AnthropicConfig, DEFAULT_ANTHROPIC_BASE_URL};

#[test]
fn from_env_reads_base_url_and_key() {
    std::env::remove_var("ANTHROPIC_BASE_URL");
    std::env::remove_var("ANTHROPIC_API_KEY");
    let config = AnthropicConfig::from_env(None);
    assert_eq!(config.base_url, DEFAULT_ANTHROPIC_BASE_URL);
    assert_eq!(config.api_key, None);

    std::env::set_var("ANTHROPIC_BASE_URL", "http://127.0.0.1:4000");
    std::env::set_var("ANTHROPIC_API_KEY", "sk-ant-from-env");
    let config = AnthropicConfig::from_env(None);
    assert_eq!(config.base_url, "http://127.0.0.1:4000");
    assert_eq!(config.api_key.as_deref(), Some("sk-ant-from-env"));
    assert_eq!(config.version, "2023-06-01");
    assert_eq!(config.max_tokens, 8192);
    assert!(!format!("{config:?}").contains("sk-ant-from-env"));

    let config = AnthropicConfig::from_env(Some("http://override:1".into()));
    assert_eq!(config.base_url, "http://override:1");

    // Empty values count as unset.
    std::env::set_var("ANTHROPIC_BASE_URL", "");
    std::env::set_var("ANTHROPIC_API_KEY", " ");
    let config = AnthropicConfig::from_env(Some(String::new()));
    assert_eq!(config.base_url, DEFAULT_ANTHROPIC_BASE_URL);
    assert_eq!(config.api_key, None);
}
