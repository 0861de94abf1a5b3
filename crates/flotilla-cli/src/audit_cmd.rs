//! `flotilla audit`: the tamper-evident activity log — list, verify,
//! export, checkpoint, prune.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use flotilla_protocol::audit::{AuditCheckpoint, AuditPage, AuditRecord, VerifyReport};
use flotilla_server::Paths;
use hyper::Method;

use crate::client::{connect_or_start, Client};

pub const AUDIT_HELP: &str = "\
Every tool call with its policy decision, every approval, secret use,
authentication, admin action, session start/stop and sandbox degradation is a
record in one of two SHA-256 chains (`sessions`, `daemon`); each record holds
the hash of the one before it, and session records hold the hash of the
event they come from. `verify` recomputes everything and names the first
broken link. A checkpoint (chain heads and counts) kept outside the database
also makes a truncated tail visible.

Times: RFC 3339 (2026-11-23T10:00:00Z), a date (2026-11-23), milliseconds
since the epoch, or an age (30m, 12h, 7d). Kinds: tool, policy, approval,
secret, auth, admin, session, sandbox.

Access: principals with the admin or auditor role see everything; others see
their own sessions and their own acts.

Examples:
  flotilla audit --since 1h
  flotilla audit --kind policy --kind approval --session s3k9x2m1q0ab
  flotilla audit --principal alice --kind auth --json
  flotilla audit verify
  flotilla audit checkpoint --out /mnt/offsite/flotilla-checkpoints.jsonl
  flotilla audit verify --checkpoint /mnt/offsite/flotilla-checkpoints.jsonl
  flotilla audit verify --db /backup/flotilla.sqlite    # offline, no daemon
  flotilla audit export --format csv --out audit.csv --since 2026-11-01
  flotilla audit prune --before 90d";

/// `flotilla audit [FILTERS] | verify | export | checkpoint | prune`
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chains; name the first broken link; exit 1 if any.
    Verify(VerifyArgs),
    /// Write every matching record to a file (JSON Lines or CSV), streaming.
    Export(ExportArgs),
    /// Print the chains' heads (and append them to --out): keep it elsewhere.
    Checkpoint(CheckpointArgs),
    /// Cut records older than a time from both chains (admin); the cut is
    /// itself a record with the hashes it cut at.
    Prune(PruneArgs),
}

/// The filters, shared by the listing and `export`.
#[derive(Args, Clone, Default)]
pub struct Filters {
    /// Records at or after this time.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Records at or before this time.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only this session.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Only acts of this principal.
    #[arg(long, value_name = "NAME")]
    principal: Option<String>,
    /// Only these kinds (repeat, or comma-separate).
    #[arg(long = "kind", value_name = "KIND", value_delimiter = ',',
          value_parser = ["tool", "policy", "approval", "secret", "auth", "admin", "session", "sandbox"])]
    kinds: Vec<String>,
    /// Only this action (a tool name, session.start, principal.add, ...).
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
}

#[derive(Args)]
struct ListArgs {
    #[command(flatten)]
    filters: Filters,
    /// Show the newest N matching records (default 50).
    #[arg(long, short = 'n', default_value_t = 50)]
    limit: u32,
    /// Show every matching record, oldest first.
    #[arg(long, conflicts_with = "limit")]
    all: bool,
    /// JSON Lines: one record per line, with its hashes.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// Only this session: its events, and its records' hashes and links.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// A file of checkpoints (JSON Lines, as `checkpoint --out` writes):
    /// each must still hold.
    #[arg(long, value_name = "FILE")]
    checkpoint: Vec<PathBuf>,
    /// Verify this database file directly (read-only, no daemon needed).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    filters: Filters,
    /// jsonl (one record per line, re-verifiable) or csv.
    #[arg(long, value_parser = ["jsonl", "csv"])]
    format: String,
    /// The file to write (written as FILE.partial, renamed when complete).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct CheckpointArgs {
    /// Append the checkpoint to this file (created 0600).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct PruneArgs {
    /// Cut records older than this (e.g. 90d, or a date).
    #[arg(long, value_name = "TIME")]
    before: String,
    /// JSON output.
    #[arg(long)]
    json: bool,
}

/// Percent-encodes a query value (RFC 3986 unreserved kept).
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Filters {
    fn query(&self, limit: u32, order: &str, cursor: Option<&str>) -> String {
        let mut q = vec![format!("limit={limit}"), format!("order={order}")];
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                q.push(format!("{k}={}", enc(v)));
            }
        };
        push("since", &self.since);
        push("until", &self.until);
        push("session", &self.session);
        push("principal", &self.principal);
        push("action", &self.action);
        push("cursor", &cursor.map(str::to_string));
        if !self.kinds.is_empty() {
            q.push(format!("kind={}", enc(&self.kinds.join(","))));
        }
        format!("/v1/compliance/activities?{}", q.join("&"))
    }
}

/// `2026-11-23 10:00:01.250` (UTC).
fn timestamp(ts_ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:3]"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(ts_ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| ts_ms.to_string())
}

/// RFC 3339 time of a record, for exports.
fn rfc3339(ts_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ts_ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ts_ms.to_string())
}

fn one_line(s: &str, max: usize) -> String {
    let flat = s.replace(['\n', '\r'], " ");
    flotilla_protocol::audit::clip(&flat, max)
}

fn rows(records: &[AuditRecord]) -> Vec<[String; 7]> {
    records
        .iter()
        .map(|r| {
            [
                timestamp(r.ts_ms),
                r.principal.clone().unwrap_or_else(|| "-".into()),
                r.session.clone().unwrap_or_else(|| "-".into()),
                r.kind.to_string(),
                one_line(&r.action, 24),
                r.outcome.clone(),
                one_line(
                    &match (&r.target, &r.reason) {
                        (Some(t), Some(why)) => format!("{t} — {why}"),
                        (Some(t), None) => t.clone(),
                        (None, Some(why)) => why.clone(),
                        (None, None) => String::new(),
                    },
                    100,
                ),
            ]
        })
        .collect()
}

const HEAD: [&str; 7] = [
    "TIME (UTC)",
    "PRINCIPAL",
    "SESSION",
    "KIND",
    "ACTION",
    "OUTCOME",
    "TARGET — REASON",
];

/// Runs `flotilla audit ...`.
pub async fn audit(paths: &Paths, args: AuditArgs) -> Result<ExitCode> {
    match args.command {
        None => list(paths, args.list).await,
        Some(AuditCommand::Verify(v)) => verify(paths, v).await,
        Some(AuditCommand::Export(e)) => export(paths, e).await,
        Some(AuditCommand::Checkpoint(c)) => checkpoint(paths, c).await,
        Some(AuditCommand::Prune(p)) => prune(paths, p).await,
    }
}

async fn list(paths: &Paths, args: ListArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let mut out = std::io::stdout().lock();
    if args.all {
        // Oldest first, page by page: constant memory however long the log.
        let mut cursor: Option<String> = None;
        let mut first = true;
        loop {
            let page: AuditPage = client
                .call(
                    Method::GET,
                    &args.filters.query(1000, "asc", cursor.as_deref()),
                    None,
                )
                .await?;
            if args.json {
                for r in &page.activities {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                }
            } else if !page.activities.is_empty() {
                let table = crate::render::table(HEAD, &rows(&page.activities));
                // The header once; later pages continue the same columns
                // only approximately, which is fine for reading.
                let body = if first {
                    table.as_str()
                } else {
                    table.split_once('\n').map(|(_, b)| b).unwrap_or("")
                };
                write!(out, "{body}")?;
                first = false;
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        if first && !args.json {
            writeln!(out, "no matching records")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let limit = args.limit.clamp(1, 1000);
    let mut page: AuditPage = client
        .call(Method::GET, &args.filters.query(limit, "desc", None), None)
        .await?;
    page.activities.reverse();
    if args.json {
        for r in &page.activities {
            writeln!(out, "{}", serde_json::to_string(r)?)?;
        }
    } else if page.activities.is_empty() {
        writeln!(out, "no matching records")?;
    } else {
        write!(
            out,
            "{}",
            crate::render::table(HEAD, &rows(&page.activities))
        )?;
        if page.next_cursor.is_some() {
            writeln!(
                out,
                "(the newest {limit}; --limit N or --all for more, --json for hashes)"
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads every checkpoint (one JSON object per line) of the files.
fn read_checkpoints(files: &[PathBuf]) -> Result<Vec<AuditCheckpoint>> {
    let mut out = Vec::new();
    for f in files {
        let file =
            std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
        for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", f.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            out.push(serde_json::from_str(&line).with_context(|| {
                format!(
                    "{}:{}: not a checkpoint (write them with `flotilla audit checkpoint --out FILE`)",
                    f.display(),
                    i + 1
                )
            })?);
        }
    }
    Ok(out)
}

async fn verify(paths: &Paths, args: VerifyArgs) -> Result<ExitCode> {
    let checkpoints = read_checkpoints(&args.checkpoint)?;
    let report: VerifyReport = match &args.db {
        Some(db) => {
            let session = args
                .session
                .as_deref()
                .map(flotilla_protocol::SessionId::parse)
                .transpose()?;
            let opts = flotilla_store::VerifyOptions {
                session,
                checkpoints,
            };
            let db = db.clone();
            tokio::task::spawn_blocking(move || flotilla_store::verify_file(&db, &opts)).await??
        }
        None => {
            let client = connect_or_start(paths).await?;
            let body = serde_json::json!({ "session": args.session, "checkpoints": checkpoints });
            client
                .call(Method::POST, "/v1/compliance/verify", Some(&body))
                .await?
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_report(&report, args.checkpoint.len()));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn render_report(r: &VerifyReport, checkpoint_files: usize) -> String {
    let mut s = String::new();
    if r.ok {
        s.push_str("audit log verified: no record changed, deleted, reordered or inserted\n");
    } else {
        s.push_str("AUDIT LOG BROKEN\n");
        for b in &r.broken {
            let at = match (b.id, b.seq) {
                (Some(id), Some(seq)) => format!(" at seq {seq} (record {id})"),
                (None, Some(seq)) => format!(" at seq {seq}"),
                _ => String::new(),
            };
            s.push_str(&format!("  {}{at}: {}\n", b.place, b.detail));
        }
    }
    for c in &r.chains {
        let span = if c.records == 0 {
            "empty".to_string()
        } else {
            format!("seq {}..{}", c.first_seq, c.head.seq)
        };
        s.push_str(&format!(
            "  chain {:<8} {:>9} records ({span}), head {}\n",
            c.chain.as_str(),
            c.records,
            &c.head.hash[..c.head.hash.len().min(16)]
        ));
    }
    s.push_str(&format!(
        "  events   {:>9} in {} sessions; {} records linked to their events\n",
        r.events, r.sessions, r.links
    ));
    if checkpoint_files > 0 {
        s.push_str(&format!(
            "  checkpoints from {checkpoint_files} file(s) checked\n"
        ));
    }
    s.push_str(&format!("  {} ms\n", r.elapsed_ms));
    s
}

const CSV_HEAD: [&str; 18] = [
    "id",
    "chain",
    "seq",
    "time",
    "ts_ms",
    "principal",
    "session",
    "agent",
    "kind",
    "action",
    "target",
    "outcome",
    "reason",
    "detail",
    "event_seq",
    "event_hash",
    "prev_hash",
    "hash",
];

fn csv_row(r: &AuditRecord) -> [String; 18] {
    let o = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        r.id.to_string(),
        r.chain.to_string(),
        r.seq.to_string(),
        rfc3339(r.ts_ms),
        r.ts_ms.to_string(),
        o(&r.principal),
        o(&r.session),
        o(&r.agent),
        r.kind.to_string(),
        r.action.clone(),
        o(&r.target),
        r.outcome.clone(),
        o(&r.reason),
        o(&r.detail),
        r.event_seq.map(|s| s.to_string()).unwrap_or_default(),
        o(&r.event_hash),
        r.prev_hash.clone(),
        r.hash.clone(),
    ]
}

/// Where an export goes: a CSV writer or JSON lines, over one buffered file.
enum Sink {
    Csv(Box<csv::Writer<std::io::BufWriter<std::fs::File>>>),
    Jsonl(std::io::BufWriter<std::fs::File>),
}

impl Sink {
    fn write(&mut self, r: &AuditRecord) -> Result<()> {
        match self {
            Sink::Csv(w) => w.write_record(csv_row(r))?,
            Sink::Jsonl(w) => {
                serde_json::to_writer(&mut *w, r)?;
                w.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn finish(self, out: &Path) -> Result<()> {
        let buf = match self {
            Sink::Csv(w) => w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("cannot write {}: {}", out.display(), e.error()))?,
            Sink::Jsonl(w) => w,
        };
        let file = buf
            .into_inner()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {}", out.display(), e.error()))?;
        file.sync_all()
            .with_context(|| format!("cannot write {}", out.display()))
    }
}

/// Pages through the records into `out` (one page in memory at a time);
/// returns how many.
async fn export_to(client: &Client, filters: &Filters, format: &str, out: &Path) -> Result<u64> {
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let buf = std::io::BufWriter::new(file);
    let mut sink = if format == "csv" {
        let mut w = csv::Writer::from_writer(buf);
        w.write_record(CSV_HEAD)?;
        Sink::Csv(Box::new(w))
    } else {
        Sink::Jsonl(buf)
    };
    let progress = std::io::stderr().is_terminal();
    let mut n = 0u64;
    let mut cursor: Option<String> = None;
    loop {
        let page: AuditPage = client
            .call(
                Method::GET,
                &filters.query(1000, "asc", cursor.as_deref()),
                None,
            )
            .await?;
        for r in &page.activities {
            sink.write(r)?;
        }
        n += page.activities.len() as u64;
        if progress {
            eprint!("\rexported {n} records");
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if progress {
        eprintln!();
    }
    sink.finish(out)?;
    Ok(n)
}

async fn export(paths: &Paths, args: ExportArgs) -> Result<ExitCode> {
    if args.out.is_dir() {
        bail!("{} is a folder: give a file name", args.out.display());
    }
    let client = connect_or_start(paths).await?;
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    match export_to(&client, &args.filters, &args.format, &partial).await {
        Ok(n) => {
            std::fs::rename(&partial, &args.out)
                .with_context(|| format!("cannot rename to {}", args.out.display()))?;
            eprintln!("wrote {n} records to {}", args.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

async fn checkpoint(paths: &Paths, args: CheckpointArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let cp: AuditCheckpoint = client
        .call(Method::POST, "/v1/compliance/checkpoint", None)
        .await?;
    let line = serde_json::to_string(&cp)?;
    if let Some(out) = &args.out {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(out)
            .with_context(|| format!("cannot open {}", out.display()))?;
        writeln!(f, "{line}").with_context(|| format!("cannot write {}", out.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("checkpoint appended to {}", out.display());
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}

async fn prune(paths: &Paths, args: PruneArgs) -> Result<ExitCode> {
    let client = connect_or_start(paths).await?;
    let out: serde_json::Value = client
        .call(
            Method::POST,
            "/v1/compliance/prune",
            Some(&serde_json::json!({ "before": args.before })),
        )
        .await?;
    if args.json {
        println!("{}", serde_json::to_string(&out)?);
    } else {
        match out.get("cut").filter(|c| !c.is_null()) {
            Some(cut) => {
                let removed = cut
                    .get("detail")
                    .and_then(|d| d.as_str())
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                    .map(|d| d["removed"].to_string())
                    .unwrap_or_default();
                println!(
                    "cut the audit log before {} (removed {removed}); the cut is record {}",
                    args.before, cut["id"]
                );
            }
            None => println!("nothing older than {} to cut", args.before),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn filters_become_a_query_string() {
        let f = Filters {
            since: Some("2026-11-23T10:00:00+01:00".into()),
            kinds: vec!["tool".into(), "policy".into()],
            principal: Some("a b".into()),
            ..Default::default()
        };
        let q = f.query(100, "desc", Some("42"));
        assert_eq!(
            q,
            "/v1/compliance/activities?limit=100&order=desc&since=2026-11-23T10%3A00%3A00%2B01%3A00&principal=a%20b&cursor=42&kind=tool%2Cpolicy"
        );
    }

    #[test]
    fn times_render() {
        assert_eq!(timestamp(1_795_428_000_250), "2026-11-23 10:00:00.250");
        assert_eq!(rfc3339(1_795_428_000_000), "2026-11-23T10:00:00Z");
    }
}
