//! The `shell` tool and the host executor, with real processes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns panic by design

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_agent::tools::{
    run_tool, CommandExecutor, CommandRequest, HostExecutor, ToolContext, ToolOutcome,
};
use serde_json::json;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

fn workspace() -> (TempDir, ToolContext) {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ToolContext::on_host(dir.path()).unwrap();
    (dir, ctx)
}

async fn shell(ctx: &ToolContext, args: serde_json::Value) -> (String, bool) {
    match run_tool(ctx, "shell", &args.to_string()).await {
        ToolOutcome::Output { text, is_error } => (text, is_error),
        ToolOutcome::Finish { answer } => panic!("unexpected finish: {answer}"),
    }
}

fn request(ctx: &ToolContext, command: &str) -> CommandRequest {
    CommandRequest {
        command: command.to_owned(),
        cwd: ctx.workspace.clone(),
        timeout: Duration::from_secs(30),
        output_cap_bytes: 30_000,
        env: Vec::new(),
        cancel: CancellationToken::new(),
    }
}

/// Whether `pid` is a live process (a zombie awaiting its reaper counts as gone).
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
            state != Some('Z')
        }
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to be gone.
async fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !alive(pid)
}

fn pids_in(text: &str, marker: &str) -> Vec<i32> {
    text.lines()
        .filter_map(|l| l.strip_prefix(marker))
        .map(|p| p.trim().parse().unwrap())
        .collect()
}

fn kill(pid: i32) {
    // SAFETY: plain kill(2) of a pid a test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[tokio::test]
async fn exit_codes_stdout_and_stderr() {
    let (_dir, ctx) = workspace();
    let (text, err) = shell(&ctx, json!({"command": "echo hello; echo oops >&2"})).await;
    assert!(!err, "{text}");
    assert_eq!(
        text,
        "exit code: 0\n--- stdout ---\nhello\n--- stderr ---\noops\n"
    );

    let (text, err) = shell(&ctx, json!({"command": "echo failing >&2; exit 3"})).await;
    assert!(err);
    assert_eq!(text, "exit code: 3\n--- stderr ---\nfailing\n");

    let (text, err) = shell(&ctx, json!({"command": "true"})).await;
    assert!(!err);
    assert_eq!(text, "exit code: 0\n(no output)\n");

    let (text, err) = shell(&ctx, json!({"command": "kill -9 $$"})).await;
    assert!(err);
    assert!(text.contains("killed by signal 9 (SIGKILL)"), "{text}");
}

#[tokio::test]
async fn runs_in_workdir_with_flotilla_env_and_empty_stdin() {
    let (_dir, ctx) = workspace();
    std::fs::create_dir_all(ctx.workspace.join("sub/dir")).unwrap();
    let (text, err) = shell(
        &ctx,
        json!({"command": "pwd; echo FLOTILLA=$FLOTILLA; cat; echo nice=$(cut -d' ' -f19 /proc/self/stat)", "workdir": "sub/dir"}),
    )
    .await;
    assert!(!err, "{text}");
    let ws = ctx.workspace.display();
    assert!(text.contains(&format!("{ws}/sub/dir\n")), "{text}");
    assert!(text.contains("FLOTILLA=1\n"), "{text}");
    // The daemon (this test) runs at nice 0 in CI; commands run 10 lower in priority.
    let own_nice: i32 = std::fs::read_to_string("/proc/self/stat")
        .unwrap()
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(16)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        text.contains(&format!("nice={}\n", (own_nice + 10).min(19))),
        "{text}"
    );

    let (text, err) = shell(&ctx, json!({"command": "true", "workdir": "missing"})).await;
    assert!(err);
    assert!(text.contains("invalid workdir"), "{text}");
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let (_dir, ctx) = workspace();
    let started = Instant::now();
    let (text, err) = shell(
        &ctx,
        json!({"command": "sleep 100 & echo bg=$!; sleep 100 & echo bg=$!; echo sh=$$; wait", "timeout_secs": 1}),
    )
    .await;
    let took = started.elapsed();
    assert!(err);
    assert!(text.starts_with("[timed out after 1s"), "{text}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let pids = [pids_in(&text, "bg="), pids_in(&text, "sh=")].concat();
    assert_eq!(pids.len(), 3, "{text}");
    for pid in pids {
        assert!(
            gone_within(pid, Duration::from_secs(3)).await,
            "pid {pid} survived: {text}"
        );
    }
}

#[tokio::test]
async fn sigterm_ignoring_members_get_sigkill() {
    let (_dir, ctx) = workspace();
    let mut req = request(
        &ctx,
        "sh -c 'trap \"\" TERM; echo stubborn=$$; while :; do sleep 1; done' & wait",
    );
    req.timeout = Duration::from_millis(500);
    let result = HostExecutor.run(req).await.unwrap();
    assert!(result.timed_out);
    let text = String::from_utf8_lossy(&result.output.stdout.head).into_owned();
    let pids = pids_in(&text, "stubborn=");
    assert_eq!(pids.len(), 1, "{text}");
    assert!(
        gone_within(pids[0], Duration::from_secs(3)).await,
        "survived SIGKILL"
    );
}

#[tokio::test]
async fn cancel_kills_the_command() {
    let (_dir, ctx) = workspace();
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
    });
    let started = Instant::now();
    let (text, err) = shell(&ctx, json!({"command": "echo pid=$$; sleep 100"})).await;
    assert!(err);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(text.starts_with("[cancelled"), "{text}");
    let pids = pids_in(&text, "pid=");
    assert_eq!(pids.len(), 1, "{text}");
    assert!(gone_within(pids[0], Duration::from_secs(3)).await);

    // Once cancelled, nothing more runs.
    let marker = ctx.workspace.join("ran");
    let (text, err) = shell(
        &ctx,
        json!({"command": format!("touch {}", marker.display())}),
    )
    .await;
    assert!(err);
    assert!(text.contains("cancelled"), "{text}");
    assert!(!marker.exists());
}

#[tokio::test]
async fn dropping_the_future_kills_the_group() {
    let (_dir, ctx) = workspace();
    let pid_file = ctx.workspace.join("pid");
    let req = request(
        &ctx,
        &format!("sleep 100 & echo $! > {}; wait", pid_file.display()),
    );
    let executor: Arc<dyn CommandExecutor> = Arc::new(HostExecutor);
    let run = executor.run(req);
    let _ = tokio::time::timeout(Duration::from_millis(1500), run).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(gone_within(pid, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn background_job_does_not_hang_the_tool() {
    let (_dir, ctx) = workspace();
    let started = Instant::now();
    let (text, err) = shell(
        &ctx,
        json!({"command": "sleep 300 & echo bg=$!; echo started"}),
    )
    .await;
    let took = started.elapsed();
    assert!(!err, "{text}");
    assert!(text.contains("started"), "{text}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // Background jobs are left running (documented), so clean up.
    for pid in pids_in(&text, "bg=") {
        assert!(alive(pid), "background job should survive the call");
        kill(pid);
    }
}

#[tokio::test]
async fn output_cap_keeps_head_and_tail_with_notice() {
    let (_dir, mut ctx) = workspace();
    ctx.limits.output_cap_bytes = 2_000;
    let (text, err) = shell(&ctx, json!({"command": "seq 1 100000"})).await;
    assert!(!err);
    assert!(
        text.contains("--- stdout ---\n1\n2\n3\n"),
        "{}",
        &text[..200]
    );
    assert!(
        text.ends_with("99999\n100000\n"),
        "{}",
        &text[text.len() - 200..]
    );
    assert!(
        text.contains(
            "[output truncated: 588895 bytes total, showing the first 1000 and last 1000]"
        ),
        "{text}"
    );
    assert!(text.len() < 2_300, "{}", text.len());
}

/// Peak resident set size of this test process (VmHWM), in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn fifty_megabytes_of_output_stay_bounded() {
    let (_dir, ctx) = workspace();
    let req = request(
        &ctx,
        "head -c 50000000 /dev/zero | tr '\\0' 'a'; echo; echo the-end; head -c 3000000 /dev/zero >&2",
    );
    let peak_before = peak_rss_kib();
    let result = HostExecutor.run(req).await.unwrap();
    let peak_growth = peak_rss_kib().saturating_sub(peak_before);
    // 50 MB went through; buffering it would raise the peak by at least that.
    assert!(
        peak_growth < 20 * 1024,
        "peak RSS grew by {peak_growth} KiB"
    );
    assert_eq!(result.exit_code, Some(0));
    let out = &result.output.stdout;
    assert_eq!(out.total_bytes, 50_000_000 + 1 + 8);
    assert!(out.captured_len() <= 30_000, "{}", out.captured_len());
    assert!(out.truncated());
    assert!(out.tail.ends_with(b"\nthe-end\n"));
    assert_eq!(result.output.stderr.total_bytes, 3_000_000);
    assert!(result.output.stderr.captured_len() <= 30_000);

    let (text, _) = shell(
        &ctx,
        json!({"command": "head -c 50000000 /dev/zero | tr '\\0' 'b'"}),
    )
    .await;
    assert!(text.len() < 31_000, "{}", text.len());
    assert!(
        text.contains(
            "[output truncated: 50000000 bytes total, showing the first 15000 and last 15000]"
        ),
        "{}",
        &text[..100]
    );
}

#[tokio::test]
async fn spawn_failure_is_reported() {
    let (_dir, ctx) = workspace();
    let mut req = request(&ctx, "true");
    req.cwd = ctx.workspace.join("does-not-exist");
    assert!(HostExecutor.run(req).await.is_err());
}
