//! `flotilla-mock-model --script FILE [--port N] [--anthropic | --bedrock]`:
//! serves a scripted OpenAI Chat Completions endpoint (or, with
//! `--anthropic`, an Anthropic Messages endpoint; with `--bedrock`, an Amazon
//! Bedrock Runtime Converse endpoint) on 127.0.0.1 until interrupted.

use anyhow::{bail, Context as _};
use flotilla_testkit::{MockAnthropicServer, MockBedrockServer, MockModelServer, Script};

const USAGE: &str = "usage: flotilla-mock-model --script FILE [--port N] [--anthropic | --bedrock]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut script_path = None;
    let mut port = 0u16;
    let mut anthropic = false;
    let mut bedrock = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--script" => script_path = Some(args.next().context(USAGE)?),
            "--port" => {
                let value = args.next().context(USAGE)?;
                port = value
                    .parse()
                    .with_context(|| format!("--port {value:?} is not a port number\n{USAGE}"))?;
            }
            "--anthropic" => anthropic = true,
            "--bedrock" => bedrock = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let script_path = script_path.context(USAGE)?;
    let script = Script::from_json_file(&script_path)?;
    if anthropic && bedrock {
        bail!("--anthropic and --bedrock exclude each other\n{USAGE}");
    }
    if bedrock {
        let server = MockBedrockServer::start_on_port(script, port).await?;
        serve_until_interrupted(&server.endpoint_url()).await?;
        server.shutdown();
    } else if anthropic {
        let server = MockAnthropicServer::start_on_port(script, port).await?;
        serve_until_interrupted(&server.base_url()).await?;
        server.shutdown();
    } else {
        let server = MockModelServer::start_on_port(script, port).await?;
        serve_until_interrupted(&server.base_url()).await?;
        server.shutdown();
    }
    Ok(())
}

/// Says where the server listens, then waits for Ctrl-C.
async fn serve_until_interrupted(base_url: &str) -> anyhow::Result<()> {
    println!("listening {base_url}");
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
