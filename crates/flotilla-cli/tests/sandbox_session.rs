//! A session's sandbox through the library API, with the real `flotilla`
//! binary as its helper: commands spawned one after another in one warm
//! sandbox, background jobs that outlive a command but not the sandbox,
//! streamed output, signals, and the executor the agent's shell tool uses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use common::host_pids_with_arg;
use flotilla_agent::tools::{CommandExecutor, CommandRequest, SandboxExecutor};
use flotilla_sandbox::{HelperCommand, Sandbox, SandboxSpec, SpawnRequest};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

fn helper() -> HelperCommand {
    HelperCommand::new(env!("CARGO_BIN_EXE_flotilla"))
}

fn spec(ws: &std::path::Path) -> SandboxSpec {
    let mut spec = SandboxSpec::new(ws);
    spec.home = None;
    spec
}

fn env() -> Vec<(String, String)> {
    vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())]
}

fn pipe() -> (tokio::net::unix::pipe::Receiver, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    (
        tokio::net::unix::pipe::Receiver::from_owned_fd(r).unwrap(),
        w,
    )
}

async fn wait_gone(arg: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_pids_with_arg(arg).is_empty() {
        assert!(Instant::now() < deadline, "process with {arg} still alive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn request(cmd: &str, ws: &std::path::Path, timeout: Duration) -> CommandRequest {
    CommandRequest {
        command: cmd.into(),
        cwd: ws.to_path_buf(),
        timeout,
        output_cap_bytes: 64 * 1024,
        env: vec![],
        cancel: CancellationToken::new(),
    }
}

#[tokio::test]
async fn a_background_job_survives_its_command_and_dies_with_the_sandbox() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    assert!(sandbox.report().namespaces, "{:?}", sandbox.report());
    let exec = SandboxExecutor::new(sandbox.clone(), env());
    // A "dev server" started by one command...
    let first = exec
        .run(request(
            "sleep 303.25 & echo $! > /tmp/bg.pid; echo started",
            ws.path(),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert!(first.success(), "{first:?}");
    assert!(first.duration < Duration::from_secs(2), "{first:?}");
    // ...is still there for the next (same pid namespace, same /tmp).
    let second = exec
        .run(request(
            "kill -0 $(cat /tmp/bg.pid) && echo alive",
            ws.path(),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert_eq!(second.output.stdout.render(1000), "alive\n", "{second:?}");
    assert_eq!(host_pids_with_arg("303.25").len(), 1);
    // The session ends: so does the job.
    drop(exec);
    sandbox.shutdown().await;
    wait_gone("303.25").await;
}

#[tokio::test]
async fn killing_the_helper_kills_everything_inside() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    let exec = SandboxExecutor::new(sandbox.clone(), env());
    let r = exec
        .run(request(
            "sleep 304.5 & echo ok",
            ws.path(),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert!(r.success());
    assert_eq!(host_pids_with_arg("304.5").len(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sandbox.helper_pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_gone("304.5").await;
    // The handle notices and refuses new work with a clear error.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sandbox.is_gone() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = exec
        .run(request("true", ws.path(), Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sandbox is gone"), "{err}");
}

#[tokio::test]
async fn output_streams_before_the_command_exits() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    let (mut out_r, out_w) = pipe();
    let (_err_r, err_w) = pipe();
    let mut process = sandbox
        .spawn(SpawnRequest {
            argv: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo first; sleep 30; echo never".into(),
            ],
            cwd: ws.path().to_path_buf(),
            env: env(),
            stdin: None,
            stdout: out_w,
            stderr: err_w,
        })
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), out_r.read(&mut buf))
        .await
        .expect("the first line did not stream")
        .unwrap();
    assert_eq!(&buf[..n], b"first\n");
    process.signal_group(libc::SIGTERM).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), process.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal, Some(libc::SIGTERM));
    sandbox.shutdown().await;
}

#[tokio::test]
async fn timeout_and_cancel_kill_the_command_group() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    let exec = SandboxExecutor::new(sandbox.clone(), env());
    let started = Instant::now();
    let r = exec
        .run(request(
            "sleep 305.5 & sleep 305.75",
            ws.path(),
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_gone("305.5").await;
    wait_gone("305.75").await;

    let mut req = request("sleep 306.5", ws.path(), Duration::from_secs(60));
    let cancel = req.cancel.clone();
    req.cancel = cancel.clone();
    let task = tokio::spawn(async move {
        let r = exec.run(req).await;
        (r, exec)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    cancel.cancel();
    let (r, _exec) = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(r.unwrap().cancelled);
    wait_gone("306.5").await;
    sandbox.shutdown().await;
}

#[tokio::test]
async fn many_commands_in_one_sandbox_report_their_own_exit_codes() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    let exec = std::sync::Arc::new(SandboxExecutor::new(sandbox.clone(), env()));
    let mut tasks = Vec::new();
    for i in 0..32 {
        let exec = exec.clone();
        let ws = ws.path().to_path_buf();
        tasks.push(tokio::spawn(async move {
            let r = exec
                .run(request(
                    &format!("echo out{i}; exit {}", i % 7),
                    &ws,
                    Duration::from_secs(30),
                ))
                .await
                .unwrap();
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.exit_code, Some(i % 7));
        assert_eq!(r.output.stdout.render(100), format!("out{i}\n"));
    }
    sandbox.shutdown().await;
}

#[tokio::test]
async fn the_environment_is_only_what_was_passed() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    // As the daemon does: the base environment comes from this process,
    // filtered; a secret in it must not get through.
    std::env::set_var("FLOTILLA_TEST_SECRET_TOKEN", "leak-me");
    std::env::set_var("OPENAI_API_KEY", "sk-leak-me-too");
    let exec = SandboxExecutor::new(sandbox.clone(), flotilla_agent::tools::sandbox_base_env());
    let r = exec
        .run(request("env", ws.path(), Duration::from_secs(10)))
        .await
        .unwrap();
    let text = r.output.stdout.render(100_000);
    assert!(!text.contains("leak-me"), "{text}");
    assert!(text.contains("PATH="), "{text}");
    assert!(text.contains("FLOTILLA=1"), "{text}");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn dropping_the_last_handle_ends_the_sandbox() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    let helper_pid = sandbox.helper_pid() as i32;
    let exec = SandboxExecutor::new(sandbox, env());
    let r = exec
        .run(request(
            "sleep 308.5 & echo ok",
            ws.path(),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert!(r.success());
    assert_eq!(host_pids_with_arg("308.5").len(), 1);
    // No shutdown call: the session's executor is simply dropped.
    drop(exec);
    wait_gone("308.5").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(format!("/proc/{helper_pid}/stat"))
        .map(|s| !s.contains(") Z"))
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "the helper outlived its handle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_command_that_cannot_start_is_an_error_and_the_sandbox_goes_on() {
    let ws = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::create(spec(ws.path()), &helper()).await.unwrap();
    let (_r, w) = pipe();
    let (_r2, w2) = pipe();
    let mut process = sandbox
        .spawn(SpawnRequest {
            argv: vec!["no-such-program-0451".into()],
            cwd: ws.path().to_path_buf(),
            env: env(),
            stdin: None,
            stdout: w,
            stderr: w2,
        })
        .await
        .unwrap();
    let err = process.wait().await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let exec = SandboxExecutor::new(sandbox.clone(), env());
    let r = exec
        .run(request(
            "echo still-here",
            ws.path(),
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
    assert_eq!(r.output.stdout.render(100), "still-here\n");
    sandbox.shutdown().await;
}

#[tokio::test]
async fn a_session_with_the_proxy_reaches_only_allowed_hosts() {
    use flotilla_agent::tools::{ExecutorFactory, ProxySettings, SandboxFactory};
    use std::io::{Read, Write};
    let ws = tempfile::tempdir().unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\nconnection: close\r\n\r\nhost-says",
            );
        }
    });
    let factory = SandboxFactory::new(
        spec(ws.path()),
        helper(),
        env(),
        Some(ProxySettings {
            policy: flotilla_sandbox::proxy::DomainPolicy::new(&["localhost".into()], &[]).unwrap(),
            socket_dir: sockets.path().to_path_buf(),
            ca: None,
            ca_bundle: None,
            upstream_tls: None,
        }),
    );
    let session = factory.for_session(ws.path()).await.unwrap();
    assert!(session.confined);
    assert!(
        session.summary.contains("network=proxy"),
        "{}",
        session.summary
    );
    let r = session
        .executor
        .run(request(
            &format!(
                "curl -sS --noproxy '' --max-time 10 http://localhost:{port}/; echo; \
                 curl -sS --max-time 10 https://example.com/ -o /dev/null"
            ),
            ws.path(),
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    let out = r.output.stdout.render(10_000);
    let err = r.output.stderr.render(10_000);
    assert!(out.starts_with("host-says"), "{out}\n{err}");
    assert!(err.contains("CONNECT tunnel failed, response 403"), "{err}");
    assert!(!r.success());
}
