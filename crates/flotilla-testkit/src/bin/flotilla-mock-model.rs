//! `flotilla-mock-model --script FILE [--port N]`: serves a scripted OpenAI
//! Chat Completions endpoint on 127.0.0.1 until interrupted.

use anyhow::{bail, Context as _};
use flotilla_testkit::{MockModelServer, Script};

const USAGE: &str = "usage: flotilla-mock-model --script FILE [--port N]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut script_path = None;
    let mut port = 0u16;
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
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let script_path = script_path.context(USAGE)?;
    let script = Script::from_json_file(&script_path)?;
    let server = MockModelServer::start_on_port(script, port).await?;
    println!("listening {}", server.base_url());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    server.shutdown();
    Ok(())
}
