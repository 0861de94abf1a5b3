//! Model fallbacks and prices.
//!
//! A role (`[roles.worker]`) names a model and fallbacks; [`FallbackClient`]
//! tries them in order within one attempt, so an overloaded or unreachable
//! primary does not stall the session while another model can answer. The
//! answer says which model gave it ([`ChatResponse::model`]), and
//! [`PriceTable`] turns its tokens into money.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;

use crate::{ChatRequest, ChatResponse, ModelClient, ModelError, Usage};

/// One model of a chain: its spec (`provider:model`), the model name its
/// provider knows, and a client for that provider.
#[derive(Clone)]
pub struct ChainLink {
    /// `provider:model`, as configured; recorded with each answer.
    pub spec: String,
    /// The name sent to the provider.
    pub model: String,
    /// The provider's client.
    pub client: Arc<dyn ModelClient>,
}

/// Tries a chain of models in order within one attempt.
///
/// The first link is the primary. On any failure of a link the next one is
/// asked; the first answer wins, and an answer of a fallback names its
/// model (even when it is the primary's model at another endpoint, the
/// answer is marked as a fallback's). If every link fails,
/// the primary's error is returned (it is the one the loop's retry policy
/// should judge: a fallback's refusal says nothing about whether waiting
/// for the primary helps), with the others' reasons appended.
pub struct FallbackClient {
    links: Vec<ChainLink>,
}

impl FallbackClient {
    /// A chain; fails on an empty one.
    pub fn new(links: Vec<ChainLink>) -> Result<FallbackClient, ModelError> {
        if links.is_empty() {
            return Err(ModelError::Config(
                "a model chain needs at least one model".into(),
            ));
        }
        Ok(FallbackClient { links })
    }

    /// The specs, primary first.
    pub fn specs(&self) -> Vec<&str> {
        self.links.iter().map(|l| l.spec.as_str()).collect()
    }
}

impl ModelClient for FallbackClient {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let mut first: Option<ModelError> = None;
            let mut others: Vec<String> = Vec::new();
            for (n, link) in self.links.iter().enumerate() {
                let mut req = request.clone();
                req.model = link.model.clone();
                match link.client.chat(&req).await {
                    Ok(mut response) => {
                        response.model = (n > 0).then(|| link.spec.clone());
                        return Ok(response);
                    }
                    Err(e) => {
                        tracing::warn!(model = %link.spec, error = %e, "model failed; trying the next of the chain");
                        if first.is_none() {
                            first = Some(e);
                        } else {
                            others.push(format!("{}: {e}", link.spec));
                        }
                    }
                }
            }
            let first = first.unwrap_or_else(|| ModelError::Config("empty chain".into()));
            if others.is_empty() {
                return Err(first);
            }
            let also = format!(" (fallbacks failed too: {})", others.join("; "));
            Err(match first {
                ModelError::Status {
                    status,
                    body,
                    retry_after,
                } => ModelError::Status {
                    status,
                    body: body + &also,
                    retry_after,
                },
                ModelError::Timeout(m) => ModelError::Timeout(m + &also),
                ModelError::Connection(m) => ModelError::Connection(m + &also),
                ModelError::Truncated(m) => ModelError::Truncated(m + &also),
                ModelError::Protocol(m) => ModelError::Protocol(m + &also),
                ModelError::Config(m) => ModelError::Config(m + &also),
            })
        })
    }
}

/// What a model costs, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_mtok: f64,
    /// Per million generated tokens.
    pub output_per_mtok: f64,
}

/// Prices by model spec (`[prices."anthropic:claude-sonnet-4-5"]`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceTable {
    prices: HashMap<String, Price>,
}

impl PriceTable {
    /// Checks and keeps `prices`: no negative or non-finite price.
    pub fn new(prices: HashMap<String, Price>) -> Result<PriceTable, String> {
        for (spec, p) in &prices {
            for (what, v) in [
                ("input_per_mtok", p.input_per_mtok),
                ("output_per_mtok", p.output_per_mtok),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!(
                        "price of {spec:?}: {what} must be a non-negative number, not {v}"
                    ));
                }
            }
        }
        Ok(PriceTable { prices })
    }

    /// The cost of `usage` on `spec`, if its price is known.
    pub fn cost(&self, spec: &str, usage: &Usage) -> Option<f64> {
        let p = self.prices.get(spec)?;
        Some(
            (usage.prompt_tokens as f64 * p.input_per_mtok
                + usage.completion_tokens as f64 * p.output_per_mtok)
                / 1e6,
        )
    }

    /// Whether no price is configured.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers or fails as told, recording the model names it was asked for.
    struct Fake {
        fail: Option<u16>,
        asked: Mutex<Vec<String>>,
    }

    impl ModelClient for Fake {
        fn chat<'a>(
            &'a self,
            request: &'a ChatRequest,
        ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
            Box::pin(async move {
                self.asked.lock().unwrap().push(request.model.clone());
                match self.fail {
                    Some(status) => Err(ModelError::Status {
                        status,
                        body: format!("{} refused", request.model),
                        retry_after: None,
                    }),
                    None => Ok(ChatResponse {
                        text: format!("from {}", request.model),
                        ..ChatResponse::default()
                    }),
                }
            })
        }
    }

    fn fake(fail: Option<u16>) -> Arc<Fake> {
        Arc::new(Fake {
            fail,
            asked: Mutex::new(Vec::new()),
        })
    }

    fn link(spec: &str, client: Arc<Fake>) -> ChainLink {
        ChainLink {
            spec: spec.into(),
            model: spec.split_once(':').unwrap().1.into(),
            client,
        }
    }

    fn request() -> ChatRequest {
        ChatRequest {
            model: "ignored".into(),
            messages: Vec::new(),
            tools: Arc::from(Vec::new()),
            max_tokens: None,
        }
    }

    #[tokio::test]
    async fn the_first_answer_wins_and_names_its_model() {
        let (a, b, c) = (fake(Some(529)), fake(None), fake(None));
        let chain = FallbackClient::new(vec![
            link("anthropic:big", a.clone()),
            link("openai:mid", b.clone()),
            link("openai:small", c.clone()),
        ])
        .unwrap();
        let r = chain.chat(&request()).await.unwrap();
        assert_eq!(r.text, "from mid");
        assert_eq!(r.model.as_deref(), Some("openai:mid"));
        assert_eq!(*a.asked.lock().unwrap(), vec!["big"]);
        assert!(c.asked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_primary_answer_is_not_marked() {
        let chain = FallbackClient::new(vec![
            link("openai:same", fake(None)),
            link("openai:same", fake(None)),
        ])
        .unwrap();
        assert_eq!(chain.chat(&request()).await.unwrap().model, None);
        let chain = FallbackClient::new(vec![
            link("openai:same", fake(Some(503))),
            link("openai:same", fake(None)),
        ])
        .unwrap();
        assert_eq!(
            chain.chat(&request()).await.unwrap().model.as_deref(),
            Some("openai:same"),
            "the same model at another endpoint is still a fallback's answer"
        );
    }

    #[tokio::test]
    async fn when_all_fail_the_primary_error_stands_with_the_others() {
        let chain = FallbackClient::new(vec![
            link("anthropic:big", fake(Some(529))),
            link("openai:mid", fake(Some(404))),
        ])
        .unwrap();
        let e = chain.chat(&request()).await.unwrap_err();
        assert!(e.is_retryable(), "the primary's 529 decides: {e}");
        let text = e.to_string();
        assert!(
            text.contains("big refused") && text.contains("openai:mid"),
            "{text}"
        );
        assert!(FallbackClient::new(Vec::new()).is_err());
    }

    #[test]
    fn prices() {
        let t = PriceTable::new(HashMap::from([(
            "anthropic:big".to_owned(),
            Price {
                input_per_mtok: 3.0,
                output_per_mtok: 15.0,
            },
        )]))
        .unwrap();
        let usage = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 100_000,
        };
        assert_eq!(t.cost("anthropic:big", &usage), Some(4.5));
        assert_eq!(t.cost("openai:free", &usage), None);
        let bad = PriceTable::new(HashMap::from([(
            "x:y".to_owned(),
            Price {
                input_per_mtok: -1.0,
                output_per_mtok: 0.0,
            },
        )]));
        assert!(bad.unwrap_err().contains("input_per_mtok"));
    }
}
