//! `flotilla principal …`, `flotilla login` and `flotilla whoami`: who may
//! use the daemon, their roles, vetted tiers, API tokens and TOTP MFA.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use flotilla_server::principals::{
    valid_name, CreatePrincipalRequest, MfaEnrollment, PrincipalList, PrincipalView, TokenIssued,
    TotpLoginRequest, TotpVerified, VetRequest,
};
use flotilla_server::Paths;
use hyper::Method;

use crate::client::{connect_or_start, Client};

pub const PRINCIPAL_HELP: &str = "\
A principal is someone who may use this daemon. The daemon's owner (the Unix
user it runs as) is an admin from the start. Other local users connect on the
socket as the principal that names their uid (--uid); remote clients on TCP
(`flotilla serve --listen`) send a principal's token as
`Authorization: Bearer TOKEN`.

Roles: admin (manages principals), auditor, user. Tiers (`vet`) are what a
principal is vetted for, e.g. high-autonomy, cyber, bio; policy may require
them. MFA: `mfa-enroll` gives a TOTP secret for an authenticator app, and
`flotilla login --totp CODE` proves it.

Examples:
  flotilla principal add bob --uid 1001
  flotilla principal add ci --role user --token
  flotilla principal vet bob --tier high-autonomy
  flotilla principal list
  flotilla principal mfa-enroll
  flotilla login --totp 123456";

#[derive(Subcommand)]
pub enum PrincipalCommand {
    /// Add a principal (admin): a local Unix user (--uid) or a remote client
    /// (--token prints an API token for it, once).
    Add(AddArgs),
    /// List principals (admin): uid, roles, vetted tiers, MFA, tokens.
    List(JsonArgs),
    /// Vet a principal for a tier (admin), or take the tier away (--revoke).
    Vet(VetArgs),
    /// Issue an API token for TCP clients (admin, or for yourself); it is
    /// shown once, and only its hash is kept.
    Token(TokenArgs),
    /// Enroll a TOTP secret for MFA (yourself by default; replacing an
    /// enrolled secret or enrolling someone else needs admin); shown once.
    MfaEnroll(MfaEnrollArgs),
}

#[derive(Args)]
pub struct JsonArgs {
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct AddArgs {
    /// Unique name: a-z, 0-9, '.', '_', '-'.
    name: String,
    /// The local Unix user (uid) who connects on the socket as this principal.
    #[arg(long)]
    uid: Option<u32>,
    /// A role; repeat for several (default: user).
    #[arg(long = "role", value_parser = ["admin", "auditor", "user"])]
    roles: Vec<String>,
    /// Also issue an API token and print it (shown once).
    #[arg(long)]
    token: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct VetArgs {
    /// The principal.
    name: String,
    /// The tier: a-z, 0-9, '-' (e.g. high-autonomy, cyber, bio).
    #[arg(long)]
    tier: String,
    /// Take the tier away instead.
    #[arg(long)]
    revoke: bool,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TokenArgs {
    /// The principal.
    name: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MfaEnrollArgs {
    /// The principal (default: yourself).
    name: Option<String>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LoginArgs {
    /// The current 6-digit code of your authenticator app.
    #[arg(long, value_name = "CODE")]
    totp: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

fn check_name(name: &str) -> Result<()> {
    if !valid_name(name) {
        bail!("principal name {name:?} is invalid: use 1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit");
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn mfa_text(p: &PrincipalView, now: i64) -> String {
    match (p.mfa_enrolled, p.mfa_verified_ms) {
        (false, _) => "no".into(),
        (true, None) => "enrolled".into(),
        (true, Some(t)) => format!("verified {} ago", crate::render::age(now, t)),
    }
}

fn print_view(p: &PrincipalView) {
    let now = now_ms();
    println!(
        "name     {}{}",
        p.name,
        if p.owner { " (owner)" } else { "" }
    );
    println!(
        "uid      {}",
        p.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into())
    );
    println!("roles    {}", or_dash(&p.roles));
    println!("vetted   {}", or_dash(&p.vetted));
    println!("mfa      {}", mfa_text(p, now));
    println!("tokens   {}", p.tokens);
}

fn table(list: &[PrincipalView]) -> String {
    let now = now_ms();
    let rows: Vec<[String; 6]> = list
        .iter()
        .map(|p| {
            [
                format!("{}{}", p.name, if p.owner { "*" } else { "" }),
                p.uid.map(|u| u.to_string()).unwrap_or_else(|| "-".into()),
                or_dash(&p.roles),
                or_dash(&p.vetted),
                mfa_text(p, now),
                p.tokens.to_string(),
            ]
        })
        .collect();
    crate::render::table(["NAME", "UID", "ROLES", "VETTED", "MFA", "TOKENS"], &rows)
}

fn print_token(t: &TokenIssued) {
    println!("{}", t.token);
    eprintln!(
        "API token for {}: shown once, keep it secret. TCP clients send it as `Authorization: Bearer TOKEN`.",
        t.principal
    );
}

async fn issue_token(client: &Client, name: &str) -> Result<TokenIssued> {
    client
        .call(
            Method::POST,
            &format!("/v1/principals/{name}/tokens"),
            Some(&serde_json::json!({})),
        )
        .await
}

/// `flotilla principal …`
pub async fn principal(paths: &Paths, command: PrincipalCommand) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    match command {
        PrincipalCommand::Add(a) => {
            check_name(&a.name)?;
            let req = CreatePrincipalRequest {
                name: a.name.clone(),
                uid: a.uid,
                roles: (!a.roles.is_empty()).then_some(a.roles),
            };
            let view: PrincipalView = client
                .call(
                    Method::POST,
                    "/v1/principals",
                    Some(&serde_json::to_value(&req)?),
                )
                .await?;
            let token = match a.token {
                true => Some(issue_token(&client, &a.name).await?),
                false => None,
            };
            if a.json {
                let mut v = serde_json::json!({ "principal": view });
                if let Some(t) = &token {
                    v["token"] = serde_json::Value::String(t.token.clone());
                }
                println!("{v}");
            } else {
                eprintln!(
                    "added principal {} (roles {}{})",
                    view.name,
                    or_dash(&view.roles),
                    view.uid.map(|u| format!(", uid {u}")).unwrap_or_default()
                );
                if let Some(t) = &token {
                    print_token(t);
                }
            }
        }
        PrincipalCommand::List(a) => {
            let list: PrincipalList = client.call(Method::GET, "/v1/principals", None).await?;
            if a.json {
                println!("{}", serde_json::to_string(&list.principals)?);
            } else {
                print!("{}", table(&list.principals));
            }
        }
        PrincipalCommand::Vet(a) => {
            check_name(&a.name)?;
            let req = VetRequest {
                tier: a.tier.clone(),
                revoke: a.revoke,
            };
            let view: PrincipalView = client
                .call(
                    Method::POST,
                    &format!("/v1/principals/{}/vet", a.name),
                    Some(&serde_json::to_value(&req)?),
                )
                .await?;
            if a.json {
                println!("{}", serde_json::to_string(&view)?);
            } else {
                println!(
                    "{} {} {}; vetted: {}",
                    view.name,
                    if a.revoke {
                        "no longer vetted for"
                    } else {
                        "vetted for"
                    },
                    a.tier,
                    or_dash(&view.vetted)
                );
            }
        }
        PrincipalCommand::Token(a) => {
            check_name(&a.name)?;
            let t = issue_token(&client, &a.name).await?;
            if a.json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                print_token(&t);
            }
        }
        PrincipalCommand::MfaEnroll(a) => {
            let name = match a.name {
                Some(n) => n,
                None => {
                    let me: PrincipalView = client.call(Method::GET, "/v1/whoami", None).await?;
                    me.name
                }
            };
            check_name(&name)?;
            let e: MfaEnrollment = client
                .call(
                    Method::POST,
                    &format!("/v1/principals/{name}/mfa"),
                    Some(&serde_json::json!({})),
                )
                .await?;
            if a.json {
                println!("{}", serde_json::to_string(&e)?);
            } else {
                println!("principal    {}", e.principal);
                println!("secret       {}", e.secret);
                println!("otpauth url  {}", e.otpauth_url);
                println!();
                println!(
                    "Shown once: add the secret (or the otpauth URL) to an authenticator app, then run `flotilla login --totp CODE` with the code it shows."
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla login --totp CODE`
pub async fn login(paths: &Paths, args: LoginArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let req = TotpLoginRequest { code: args.totp };
    let v: TotpVerified = client
        .call(
            Method::POST,
            "/v1/auth/totp",
            Some(&serde_json::to_value(&req)?),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{} verified with TOTP at {} UTC",
            v.principal,
            crate::render::clock(v.mfa_verified_ms)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla whoami`
pub async fn whoami(paths: &Paths, args: JsonArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let me: PrincipalView = client.call(Method::GET, "/v1/whoami", None).await?;
    if args.json {
        println!("{}", serde_json::to_string(&me)?);
    } else {
        print_view(&me);
    }
    Ok(ExitCode::SUCCESS)
}
