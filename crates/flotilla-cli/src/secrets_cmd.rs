//! `flotilla secrets add|list|rm`: the vault. Values are read from stdin (a
//! terminal prompt hides them) or a file, never from the command line,
//! where `ps` and shell history would show them.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_protocol::{AddSecretRequest, SecretInfo, SecretList};
use flotilla_server::Paths;
use hyper::Method;
use zeroize::Zeroizing;

use crate::client::connect_or_start;

pub const SECRETS_HELP: &str = "\
A secret is stored encrypted (AES-256-GCM) in the daemon's vault, under a key
kept outside the database (DATA/vault/vault.key, mode 0600). A session may use
it only when granted (`flotilla run --grant NAME`), and only towards the
secret's hosts: its sandbox sees a placeholder (GITHUB_TOKEN=flotilla-ph-...)
and the egress proxy swaps it for the value on requests to those hosts, over
TLS. A placeholder sent anywhere else is blocked and recorded. Any granted
value that turns up in tool output, events or the model's input is replaced
by [secret:NAME].

Examples:
  flotilla secrets add github --host api.github.com --host github.com \\
      --header 'Authorization: Bearer {secret}' < token.txt
  flotilla secrets add npm --host registry.npmjs.org --from-file ~/.npm-token
  flotilla secrets list
  flotilla run --grant github:ttl=2h \"open a PR fixing the typo\"
  flotilla run --grant github:host=api.github.com:method=GET \"list my issues\"
  flotilla secrets rm github";

#[derive(Subcommand)]
pub enum SecretsCommand {
    /// Store a secret (admin). The value comes from stdin or --from-file.
    Add(AddArgs),
    /// List secrets: names, hosts, headers, live grants, last use; never values.
    List(ListArgs),
    /// Remove a secret (admin). Sessions holding a grant of it stop using it
    /// at their next start.
    Rm(RmArgs),
}

#[derive(Args)]
pub struct AddArgs {
    /// Name: a-z, 0-9, '_', '-', starting with a letter.
    name: String,
    /// A host the secret may be sent to: `example.com` or `*.example.com`.
    /// Repeat for several; at least one.
    #[arg(long = "host", required = true, value_name = "HOST")]
    hosts: Vec<String>,
    /// A header the proxy adds to requests for those hosts, e.g.
    /// 'Authorization: Bearer {secret}'. Repeat for several.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// The variable that holds the placeholder in the sandbox (default:
    /// NAME_TOKEN, upper case).
    #[arg(long)]
    env: Option<String>,
    /// Read the value from this file (one trailing newline is dropped).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// Also replace placeholders in query strings.
    #[arg(long)]
    inject_query: bool,
    /// Also replace placeholders in request bodies.
    #[arg(long)]
    inject_body: bool,
    /// Allow sending it over plain http:// (refused by default).
    #[arg(long)]
    allow_http: bool,
    /// Overwrite a secret of that name.
    #[arg(long)]
    replace: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct RmArgs {
    /// The secret.
    name: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Drops one trailing newline (`\n` or `\r\n`): what `echo` and editors add.
fn trim_newline(mut value: Zeroizing<Vec<u8>>) -> Zeroizing<Vec<u8>> {
    if value.last() == Some(&b'\n') {
        value.pop();
        if value.last() == Some(&b'\r') {
            value.pop();
        }
    }
    value
}

fn read_value(args: &AddArgs) -> Result<Zeroizing<String>> {
    let raw = match &args.from_file {
        Some(path) => Zeroizing::new(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        None if std::io::stdin().is_terminal() => {
            let prompt = format!("Value of secret {} (input hidden): ", args.name);
            Zeroizing::new(
                rpassword::prompt_password(prompt)
                    .context("cannot read the value from the terminal")?
                    .into_bytes(),
            )
        }
        None => {
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the value from stdin")?;
            buf
        }
    };
    let raw = trim_newline(raw);
    if raw.is_empty() {
        bail!(
            "the value of secret {} is empty: pipe it on stdin or pass --from-file FILE",
            args.name
        );
    }
    match String::from_utf8(raw.to_vec()) {
        Ok(s) => Ok(Zeroizing::new(s)),
        Err(_) => bail!("the value of secret {} is not UTF-8 text", args.name),
    }
}

fn when(ms: Option<u64>) -> String {
    match ms {
        Some(t) => format!("{} ago", crate::render::age(now_ms(), t as i64)),
        None => "never".into(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn table(list: &[SecretInfo]) -> String {
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.hosts.join(","),
                s.env.clone(),
                s.grants.len().to_string(),
                when(s.last_used_ms),
            ]
        })
        .collect();
    crate::render::table(["NAME", "HOSTS", "ENV", "GRANTS", "LAST USE"], &rows)
}

/// Runs `flotilla secrets ...`.
pub async fn secrets(paths: &Paths, command: SecretsCommand) -> Result<ExitCode> {
    match command {
        SecretsCommand::Add(args) => {
            let value = read_value(&args)?;
            let req = AddSecretRequest {
                name: args.name.clone(),
                hosts: args.hosts.clone(),
                headers: args.headers.clone(),
                env: args.env.clone(),
                inject_query: args.inject_query,
                inject_body: args.inject_body,
                allow_http: args.allow_http,
                replace: args.replace,
                value: value.to_string(),
            };
            let body = serde_json::to_value(&req)?;
            let client = connect_or_start(paths).await?;
            let info: SecretInfo = client
                .call(Method::POST, "/v1/secrets", Some(&body))
                .await?;
            if args.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!(
                    "stored secret {} for {} (sandboxes see ${} as a placeholder; grant it with --grant {})",
                    info.name,
                    info.hosts.join(", "),
                    info.env,
                    info.name
                );
            }
        }
        SecretsCommand::List(args) => {
            let client = connect_or_start(paths).await?;
            let list: SecretList = client.call(Method::GET, "/v1/secrets", None).await?;
            if args.json {
                println!("{}", serde_json::to_string(&list)?);
            } else if list.secrets.is_empty() {
                println!("no secrets (add one with `flotilla secrets add NAME --host HOST`)");
            } else {
                print!("{}", table(&list.secrets));
            }
        }
        SecretsCommand::Rm(args) => {
            let client = connect_or_start(paths).await?;
            let out: serde_json::Value = client
                .call(Method::DELETE, &format!("/v1/secrets/{}", args.name), None)
                .await?;
            if args.json {
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!("removed secret {}", args.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
