//! `local:MODEL`: a model the daemon serves itself (the embedded llama.cpp
//! server of `flotilla-local`), started on demand. The client asks the
//! [`LocalModels`] for the model's endpoint at every request (so a server
//! that idled out or crashed is started again) and speaks OpenAI's
//! protocol to it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;

use crate::{ChatRequest, ChatResponse, ModelClient, ModelError, OpenAiClient, OpenAiConfig};

/// Serves local models on demand.
pub trait LocalModels: Send + Sync {
    /// The base URL (ending in `/v1`) of a server for `model` (a catalogue
    /// name, or NAME for NAME.gguf in the models folder), started if it is
    /// not running. The error says what is wrong (not downloaded, corrupt).
    fn endpoint<'a>(&'a self, model: &'a str) -> BoxFuture<'a, Result<String, String>>;
}

/// The client of `local:` models: each request goes to the server of the
/// model it names (`ChatRequest::model`), as for any provider.
pub struct LocalClient {
    models: Arc<dyn LocalModels>,
    clients: Mutex<HashMap<String, Arc<OpenAiClient>>>,
}

impl LocalClient {
    /// A client of the models `models` serves.
    pub fn new(models: Arc<dyn LocalModels>) -> LocalClient {
        LocalClient {
            models,
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn client_for(&self, url: &str) -> Result<Arc<OpenAiClient>, ModelError> {
        if let Some(c) = self.clients.lock().ok().and_then(|m| m.get(url).cloned()) {
            return Ok(c);
        }
        let c = Arc::new(OpenAiClient::new(OpenAiConfig {
            base_url: url.to_owned(),
            api_key: None,
            ..OpenAiConfig::default()
        })?);
        if let Ok(mut m) = self.clients.lock() {
            m.insert(url.to_owned(), c.clone());
        }
        Ok(c)
    }
}

impl ModelClient for LocalClient {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, Result<ChatResponse, ModelError>> {
        Box::pin(async move {
            let url = self
                .models
                .endpoint(&request.model)
                .await
                .map_err(|e| ModelError::Config(format!("the embedded model: {e}")))?;
            self.client_for(&url)?.chat(request).await
        })
    }
}
