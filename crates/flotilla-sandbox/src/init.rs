//! The sandbox helper and the sandbox's init process.
//!
//! The daemon never forks a sandbox from its own (multi-threaded) process:
//! it re-executes its own binary as `flotilla __sandbox-init` with the
//! control socket on fd 3 (see [`crate::Sandbox::create`]). That fresh,
//! single-threaded process:
//!
//! 1. reads the [`SandboxSpec`] from the control socket;
//! 2. unshares user, pid, net, ipc, uts and cgroup namespaces and maps its
//!    own uid and gid;
//! 3. forks: the child is pid 1 of the new pid namespace (the *init*), the
//!    parent stays behind to wait for it.
//!
//! The daemon moved the helper into the sandbox's cgroup (pids and memory
//! limits) before sending the spec, so the init and everything it forks are
//! in it.
//!
//! The init builds the filesystem view ([`crate::mounts`]), brings up
//! loopback, sets rlimits, applies Landlock, `no_new_privs`, drops every
//! capability, installs the seccomp filter, reports `Ready`, and then serves
//! spawn and signal requests until the control socket closes. Everything it
//! spawns inherits every layer. When init exits, the kernel kills every
//! process left in its pid namespace: background jobs die with the session.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::control::{self, Reply, Request, MAX_MESSAGE};
use crate::landlock_rules::{self, LandlockRules};
use crate::spec::{NetworkMode, SandboxReport, SandboxSpec, PROXY_INSIDE_ADDR};
use crate::{mounts, seccomp};

/// The argument that makes the `flotilla` binary act as the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox-init";

/// The descriptor the control socket arrives on.
pub const CONTROL_FD: RawFd = 3;

/// Entry point of `flotilla __sandbox-init`. Must be called before the
/// process starts any thread (no tokio runtime yet): it forks.
///
/// Returns the process exit code.
pub fn helper_main() -> i32 {
    // SAFETY: the parent dup2'd the init end of the control socket pair onto
    // CONTROL_FD just before exec; nothing else in this fresh process owns it.
    let ctl = unsafe { OwnedFd::from_raw_fd(CONTROL_FD) };
    let _ = nix::fcntl::fcntl(
        &ctl,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    let spec = match control::recv_raw(ctl.as_raw_fd(), &mut buf) {
        Ok(msg) if !msg.bytes.is_empty() => match serde_json::from_slice::<Request>(&msg.bytes) {
            Ok(Request::Setup { spec }) => *spec,
            Ok(_) => return fail(&ctl, "the first control message must be setup".into()),
            Err(err) => return fail(&ctl, format!("bad setup message: {err}")),
        },
        Ok(_) => return 1,
        Err(err) => {
            eprintln!(
                "flotilla {HELPER_ARG}: no control channel on fd {CONTROL_FD} ({err}); this command is started by flotilla itself"
            );
            return 2;
        }
    };
    helper(spec, ctl)
}

fn fail(ctl: &OwnedFd, error: String) -> i32 {
    let _ = control::send_blocking(ctl, &Reply::Failed { error }, &[]);
    1
}

fn helper(spec: SandboxSpec, ctl: OwnedFd) -> i32 {
    let started = Instant::now();
    let mut report = SandboxReport::default();

    let namespaced = if spec.namespaces {
        match enter_namespaces() {
            Ok(()) => true,
            Err(reason) => {
                report.degraded.push(format!(
                    "user namespaces are unavailable ({reason}): running with Landlock + seccomp + rlimits only, so the network is the host's, /tmp is shared and secrets outside the readable system directories are hidden by Landlock alone"
                ));
                false
            }
        }
    } else {
        report.degraded.push(
            "namespaces disabled by configuration (sandbox.namespaces = false): Landlock + seccomp + rlimits only"
                .into(),
        );
        false
    };
    mark(&mut report, "namespaces", started);
    if !namespaced && spec.required {
        let why = report.degraded.last().cloned().unwrap_or_default();
        return fail(
            &ctl,
            format!(
                "sandbox.required = true refuses a degraded sandbox: {why}. Enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or the AppArmor userns profile), or set sandbox.required = false to accept the weaker sandbox"
            ),
        );
    }

    // SAFETY: this process is single-threaded (helper_main runs before any
    // thread is started), so the child may run arbitrary code after fork.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = init_main(spec, ctl, namespaced, report, started);
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => {
            drop(ctl);
            wait_for(child)
        }
        Err(err) => fail(&ctl, format!("fork of the sandbox init failed: {err}")),
    }
}

/// Records that setup phase `name` ended now.
fn mark(report: &mut SandboxReport, name: &str, started: Instant) {
    report
        .phases_us
        .push((name.into(), started.elapsed().as_micros() as u64));
}

fn wait_for(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// Unshares every namespace and maps our uid and gid to themselves.
fn enter_namespaces() -> Result<(), String> {
    let uid = nix::unistd::getuid();
    let gid = nix::unistd::getgid();
    // No CLONE_NEWNS here: the init unshares the mount namespace itself,
    // so that its pivot_root does not move this helper (which still has to
    // write to the host's cgroup filesystem) into the sandbox's root.
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(flags).map_err(|err| format!("unshare: {err}"))?;
    // Without `deny`, an unprivileged process may not write gid_map.
    std::fs::write("/proc/self/setgroups", "deny")
        .map_err(|err| format!("writing /proc/self/setgroups: {err}"))?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1\n"))
        .map_err(|err| format!("writing /proc/self/uid_map: {err}"))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1\n"))
        .map_err(|err| format!("writing /proc/self/gid_map: {err}"))?;
    Ok(())
}

/// The init: builds the sandbox, reports, serves.
fn init_main(
    spec: SandboxSpec,
    ctl: OwnedFd,
    namespaced: bool,
    mut report: SandboxReport,
    started: Instant,
) -> i32 {
    // Die with the helper (which dies with the daemon).
    // SAFETY: prctl with integer arguments has no memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };

    let mut private_tmp: Option<PathBuf> = None;
    let mut write: Vec<PathBuf> = vec![spec.workspace.clone()];
    write.extend(spec.extra_write.iter().cloned());
    let read: Vec<PathBuf>;
    if namespaced {
        if let Err(err) = unshare(CloneFlags::CLONE_NEWNS) {
            return fail(&ctl, format!("unsharing the mount namespace: {err}"));
        }
        match mounts::build(&spec) {
            Ok(view) => {
                report.filesystem = true;
                report.hidden = view.hidden;
                report.protected = view.protected;
                report.degraded.extend(view.degraded);
            }
            Err(err) => {
                return fail(
                    &ctl,
                    format!("building the sandbox filesystem failed: {err}"),
                );
            }
        }
        mark(&mut report, "mounts", started);
        report.namespaces = true;
        let _ = nix::unistd::sethostname("flotilla-sandbox");
        if let Err(err) = loopback_up() {
            report
                .degraded
                .push(format!("loopback interface could not be brought up: {err}"));
        }
        report.network = match spec.network {
            NetworkMode::None => "none".into(),
            NetworkMode::Proxy { .. } => "proxy".into(),
        };
        write.push("/tmp".into());
        write.push("/dev".into());
        read = vec!["/".into()];
    } else {
        // No mount namespace: no private /tmp either. Give the sandbox a
        // directory of its own and point TMPDIR at it.
        // SAFETY: prctl with integer arguments has no memory-safety preconditions.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        match tempfile_dir() {
            Ok(dir) => {
                write.push(dir.clone());
                private_tmp = Some(dir);
            }
            Err(err) => {
                return fail(
                    &ctl,
                    format!("creating the sandbox's temporary directory: {err}"),
                )
            }
        }
        write.push("/dev".into());
        report.network = "host".into();
        let mut readable = degraded_readable();
        readable.extend(write.iter().cloned());
        // The proxy's CA bundle, read at its host path (nothing is mounted).
        if let NetworkMode::Proxy {
            ca_bundle: Some(bundle),
            ..
        } = &spec.network
        {
            readable.push(bundle.clone());
        }
        let unenforced: Vec<String> = spec
            .hidden_paths()
            .into_iter()
            .filter(|p| p.exists() && readable.iter().any(|r| p.starts_with(r)))
            .map(|p| p.display().to_string())
            .collect();
        if !unenforced.is_empty() {
            report.degraded.push(format!(
                "without a mount namespace these deny-read paths stay readable: {}",
                unenforced.join(", ")
            ));
        }
        read = readable;
    }

    mark(&mut report, "network", started);
    report.rlimits = match set_rlimits(&spec, namespaced) {
        Ok(line) => line,
        Err(err) => return fail(&ctl, format!("setting rlimits: {err}")),
    };

    let rules = LandlockRules {
        read,
        write,
        scope: true,
    };
    match landlock_rules::restrict_self(&rules) {
        Ok(status) => {
            if status.abi == 0 || status.enforcement == "not_enforced" {
                report.degraded.push(
                    "Landlock is not available on this kernel: no second filesystem layer".into(),
                );
                if !namespaced {
                    return fail(&ctl, "neither user namespaces nor Landlock are available: flotilla cannot confine the filesystem on this machine".into());
                }
            }
            report.landlock = Some(status);
        }
        Err(err) => {
            if !namespaced {
                return fail(
                    &ctl,
                    format!("Landlock failed and there are no namespaces to fall back on: {err}"),
                );
            }
            report.degraded.push(format!("Landlock failed: {err}"));
        }
    }

    mark(&mut report, "landlock", started);
    // SAFETY: prctl with integer arguments has no memory-safety preconditions.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return fail(
            &ctl,
            format!("setting no_new_privs: {}", std::io::Error::last_os_error()),
        );
    }
    report.no_new_privs = true;
    report.capabilities_dropped = drop_capabilities();
    if !report.capabilities_dropped {
        report
            .degraded
            .push("some capabilities could not be dropped".into());
    }

    match seccomp::build_filter().and_then(|prog| seccomp::install(&prog)) {
        Ok(()) => report.seccomp = true,
        Err(err) => return fail(&ctl, format!("installing the seccomp filter: {err}")),
    }

    mark(&mut report, "seccomp", started);

    if namespaced {
        if let NetworkMode::Proxy { .. } = spec.network {
            if let Err(err) = start_forwarder(&ctl) {
                return fail(&ctl, format!("starting the proxy forwarder: {err}"));
            }
        }
    }

    report.setup_us = started.elapsed().as_micros() as u64;
    if control::send_blocking(
        &ctl,
        &Reply::Ready {
            report: Box::new(report),
        },
        &[],
    )
    .is_err()
    {
        return 1;
    }
    let code = serve(&ctl, namespaced, private_tmp.as_deref());
    if let Some(dir) = private_tmp {
        let _ = std::fs::remove_dir_all(dir);
    }
    code
}

/// Directories a degraded sandbox may read: the system, not the homes.
fn degraded_readable() -> Vec<PathBuf> {
    [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc",
        "/sys", "/dev", "/nix", "/snap",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect()
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..16u32 {
        let dir = base.join(format!(
            "flotilla-sandbox-{}-{}",
            std::process::id(),
            attempt
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                return Ok(dir);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AlreadyExists,
        "no free temporary directory name",
    ))
}

fn set_rlimits(spec: &SandboxSpec, namespaced: bool) -> nix::Result<String> {
    use nix::sys::resource::{setrlimit, Resource};
    let limits = &spec.limits;
    let mut line = Vec::new();
    // RLIMIT_NPROC counts the processes of a uid. Inside our user namespace
    // that is exactly this sandbox; on the host it would count every process
    // of the user (or be ignored for root), so it is only set when
    // namespaced.
    if namespaced {
        setrlimit(
            Resource::RLIMIT_NPROC,
            limits.max_processes,
            limits.max_processes,
        )?;
        line.push(format!("nproc={}", limits.max_processes));
    }
    setrlimit(
        Resource::RLIMIT_NOFILE,
        limits.max_open_files,
        limits.max_open_files,
    )?;
    line.push(format!("nofile={}", limits.max_open_files));
    setrlimit(
        Resource::RLIMIT_FSIZE,
        limits.max_file_size_bytes,
        limits.max_file_size_bytes,
    )?;
    line.push(format!("fsize={}", limits.max_file_size_bytes));
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    line.push("core=0".into());
    Ok(line.join(" "))
}

/// Drops every capability for good: bounding set, ambient, inheritable,
/// permitted, effective, and the securebits that would give a uid-0 process
/// its capabilities back on exec. Returns whether the effective and
/// permitted sets are empty afterwards.
fn drop_capabilities() -> bool {
    // SECBIT_NOROOT | NOROOT_LOCKED | NO_SETUID_FIXUP | NO_SETUID_FIXUP_LOCKED
    // | KEEP_CAPS_LOCKED | NO_CAP_AMBIENT_RAISE | NO_CAP_AMBIENT_RAISE_LOCKED:
    // uid 0 inside the sandbox (the daemon may run as root) gains nothing by
    // exec'ing anything.
    const SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
    // SAFETY: prctl with integer arguments has no memory-safety preconditions.
    // Failure (no CAP_SETPCAP, e.g. an unprivileged degraded sandbox) is fine:
    // such a process has no capabilities to regain.
    unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0) };
    let _ = caps::clear(None, caps::CapSet::Ambient);
    for cap in caps::all() {
        let _ = caps::drop(None, caps::CapSet::Bounding, cap);
    }
    let _ = caps::clear(None, caps::CapSet::Inheritable);
    let _ = caps::clear(None, caps::CapSet::Effective);
    let _ = caps::clear(None, caps::CapSet::Permitted);
    matches!(caps::read(None, caps::CapSet::Effective), Ok(set) if set.is_empty())
        && matches!(caps::read(None, caps::CapSet::Permitted), Ok(set) if set.is_empty())
}

/// Brings up `lo` in the new network namespace, so servers and clients
/// inside the sandbox can talk to each other.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket(2); the descriptor is wrapped at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into ifr, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the flags member of the union was just written by the kernel.
    unsafe { ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads ifr, which lives for the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forks the process that accepts TCP connections on [`PROXY_INSIDE_ADDR`]
/// inside the network namespace and relays each to the egress proxy's Unix
/// socket, which is bind-mounted into the sandbox. It is confined like
/// everything else (it is forked after every layer is in place).
fn start_forwarder(ctl: &OwnedFd) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(PROXY_INSIDE_ADDR)?;
    // SAFETY: init is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            // The control socket belongs to init alone: if init dies, the
            // daemon must see end-of-file.
            let _ = nix::unistd::close(ctl.as_raw_fd());
            crate::forwarder::serve(listener);
            std::process::exit(0);
        }
        Ok(ForkResult::Parent { .. }) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// A spawned command: its process group.
struct Tracked {
    pgid: i32,
}

fn serve(ctl: &OwnedFd, namespaced: bool, private_tmp: Option<&Path>) -> i32 {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    if mask.thread_block().is_err() {
        return 1;
    }
    let Ok(sfd) = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
    else {
        return 1;
    };
    let mut by_pid: HashMap<i32, u64> = HashMap::new();
    let mut groups: HashMap<u64, Tracked> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE + 1];
    loop {
        let mut fds = [
            PollFd::new(ctl.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
        let ctl_ready = fds[0].revents().is_some_and(|r| !r.is_empty());
        let child_ready = fds[1].revents().is_some_and(|r| !r.is_empty());
        if child_ready {
            while let Ok(Some(_)) = sfd.read_signal() {}
            reap(ctl, &mut by_pid);
        }
        if !ctl_ready {
            continue;
        }
        let msg = match control::recv_raw(ctl.as_raw_fd(), &mut buf) {
            Ok(msg) => msg,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(_) => break,
        };
        if msg.bytes.is_empty() {
            break;
        }
        let request = match serde_json::from_slice::<Request>(&msg.bytes) {
            Ok(request) => request,
            Err(_) => continue,
        };
        match request {
            Request::Spawn { id, argv, cwd, env } => {
                // Success is not acknowledged: the handle learns of the
                // command again when it exits.
                match spawn(argv, cwd, env, msg.fds, namespaced, private_tmp) {
                    Ok(pid) => {
                        by_pid.insert(pid, id);
                        groups.insert(id, Tracked { pgid: pid });
                    }
                    Err(error) => {
                        if control::send_blocking(ctl, &Reply::SpawnFailed { id, error }, &[])
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
            Request::Signal { id, signal } => {
                if let Some(tracked) = groups.get(&id) {
                    if let Ok(sig) = Signal::try_from(signal) {
                        let _ = kill(Pid::from_raw(-tracked.pgid), sig);
                    }
                }
            }
            Request::Shutdown => break,
            Request::Setup { .. } => {}
        }
    }
    kill_everything(namespaced, &groups);
    0
}

fn reap(ctl: &OwnedFd, by_pid: &mut HashMap<i32, u64>) {
    loop {
        let (pid, code, signal) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, Some(code), None),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, None, Some(sig as i32)),
            Ok(WaitStatus::StillAlive) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        // Orphaned background jobs are reparented to us and reaped here too;
        // only the commands the handle asked for are reported.
        if let Some(id) = by_pid.remove(&pid.as_raw()) {
            let _ = control::send_blocking(ctl, &Reply::Exited { id, code, signal }, &[]);
        }
    }
}

fn spawn(
    argv: Vec<String>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    fds: Vec<OwnedFd>,
    namespaced: bool,
    private_tmp: Option<&Path>,
) -> Result<i32, String> {
    let Some(program) = argv.first() else {
        return Err("empty command".into());
    };
    let mut fds = fds.into_iter();
    let (Some(stdin), Some(stdout), Some(stderr)) = (fds.next(), fds.next(), fds.next()) else {
        return Err("spawn needs stdin, stdout and stderr descriptors".into());
    };
    // An absolute program and no pre-exec hook let std spawn with
    // posix_spawn (clone(CLONE_VM|CLONE_VFORK)), which costs a fraction of a
    // fork of this process; so the PATH lookup happens here.
    let program_path = resolve_program(program, &env)
        .ok_or_else(|| format!("cannot run {program:?}: not found on the PATH"))?;
    let mut cmd = Command::new(&program_path);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env)
        .current_dir(&cwd)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        // Own process group, so the whole command tree can be signalled at
        // once. (The helper already left the daemon's session, so nothing
        // here has a controlling terminal.) std resets the signal mask that
        // init uses for its signalfd.
        .process_group(0);
    if let Some(tmp) = private_tmp {
        cmd.env("TMPDIR", tmp);
    }
    if !namespaced {
        // SAFETY: the closure runs between fork and exec in a child of this
        // single-threaded init; it makes one raw syscall and allocates
        // nothing.
        unsafe {
            cmd.pre_exec(|| {
                // Without a pid namespace, this is how a command dies with
                // the sandbox.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
    }
    match cmd.spawn() {
        // The Child handle is dropped: the serve loop reaps by pid.
        Ok(child) => Ok(child.id() as i32),
        Err(err) => Err(format!(
            "cannot run {program:?} in {}: {err}",
            cwd.display()
        )),
    }
}

/// `program` as an absolute path: as given when it contains a slash, else
/// the first executable match on the `PATH` of `env`.
fn resolve_program(program: &str, env: &[(String, String)]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn kill_everything(namespaced: bool, groups: &HashMap<u64, Tracked>) {
    if namespaced {
        // As pid 1, kill(-1) reaches every other process of the namespace;
        // and when we exit the kernel kills whatever is left anyway.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        return;
    }
    for tracked in groups.values() {
        let _ = kill(Pid::from_raw(-tracked.pgid), Signal::SIGKILL);
    }
    // Orphans reparented to us (we are their subreaper).
    for _ in 0..3 {
        let orphans = children_of(std::process::id());
        if orphans.is_empty() {
            break;
        }
        for pid in orphans {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        while let Ok(status) = waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
    }
}

fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The fields after the last ')' are: state ppid ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}
