//! The embedded default: a local model server inside flotilla.
//!
//! llama.cpp (through `llama-cpp-2`) runs in an engine process that serves
//! OpenAI's chat protocol on loopback ([`engine`], [`server`]); `flotilla
//! model serve` is the front clients talk to, which keeps an engine child
//! running and starts it again when it dies ([`supervise`]). Tool calls are
//! made valid by a grammar built from the tools' JSON schemas ([`chat`]).
//! Model files are found by name in a small catalogue or by path
//! ([`catalogue`]), and fetched from the Hugging Face hub ([`pull`]).

pub mod catalogue;
pub mod chat;
mod child;
pub mod engine;
pub mod manager;
pub mod pull;
pub mod server;
pub mod supervise;

use std::net::SocketAddr;

/// Runs an engine: loads the model, listens on loopback, prints
/// `listening ADDR` on stdout once ready, and serves until killed.
pub async fn run_engine(config: engine::EngineConfig) -> Result<(), String> {
    let engine = tokio::task::spawn_blocking(move || engine::Engine::start(config))
        .await
        .map_err(|e| format!("the engine did not start: {e}"))??;
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| format!("cannot listen on loopback: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    axum::serve(listener, server::router(engine))
        .await
        .map_err(|e| e.to_string())
}
