//! The seccomp-BPF layer of the sandbox.
//!
//! This is a *deny-list* filter (default action: allow). Coding agents run arbitrary
//! toolchains (compilers, package managers, interpreters, test runners), so an allow-list would
//! break them in ways nobody can predict. Instead the filter removes the kernel interfaces that
//! (a) a build or test never needs, and (b) are either a way out of the other sandbox layers
//! (namespaces, mounts, Landlock, the network namespace + egress proxy) or a large, historically
//! buggy kernel attack surface. Every entry below says why it is there.
//!
//! Denied calls fail with `EPERM` (the program sees "not permitted" and usually degrades
//! gracefully) rather than killing the process, so a denied call shows up as an error message
//! in the agent's transcript instead of a mysterious crash. Two exceptions:
//! * `clone3` fails with `ENOSYS` (see [`clone3_filter`]);
//! * on x86_64, x32-ABI system calls fail with `ENOSYS` (see [`x32_guard`]).
//!
//! Syscalls made with a foreign architecture's calling convention (e.g. `int 0x80` i386 calls
//! from an x86_64 process) kill the process: a deny-list keyed on syscall numbers is meaningless
//! for another table, and seccompiler's architecture check does exactly that.
//!
//! Argument comparisons are all 32-bit (`Dword`): every argument we inspect (`clone` flags, the
//! `socket` domain/type, the `ioctl` request, the `personality` value) is truncated to 32 bits by
//! the kernel, so comparing 64 bits would let a caller slip past a rule by setting high bits
//! (e.g. `ioctl(fd, TIOCSTI | 1 << 32, ..)` still reaches the kernel as `TIOCSTI`).

// The tables are empty on unsupported architectures, where build_filter refuses to run.
#![cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// The kernel's limit on the number of instructions in one classic BPF program
/// (`BPF_MAXINSNS`).
const BPF_MAXINSNS: usize = 4096;

/// Errors from building or installing the seccomp filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The running architecture has no filter (only x86_64 and aarch64 are supported).
    #[error("seccomp: unsupported architecture {0} (supported: x86_64, aarch64)")]
    UnsupportedArch(&'static str),
    /// seccompiler rejected the rules.
    #[error("seccomp: compiling the filter failed: {0}")]
    Compile(#[from] seccompiler::BackendError),
    /// The program is empty or longer than the kernel accepts.
    #[error("seccomp: program has {0} instructions (must be 1..={BPF_MAXINSNS})")]
    InvalidLength(usize),
    /// `seccomp(2)` returned `EACCES`: the caller has neither set `PR_SET_NO_NEW_PRIVS` nor
    /// holds `CAP_SYS_ADMIN`.
    #[error("seccomp: no_new_privs is not set and CAP_SYS_ADMIN is missing")]
    NoNewPrivsRequired,
    /// `seccomp(SECCOMP_SET_MODE_FILTER)` failed for another reason.
    #[error("seccomp: installing the filter failed: {0}")]
    Install(#[source] std::io::Error),
}

/// `socket(2)` type values carry `SOCK_NONBLOCK`/`SOCK_CLOEXEC` in the upper bits; the socket
/// type proper is the low nibble (`SOCK_TYPE_MASK` in the kernel).
const SOCK_TYPE_MASK: u64 = 0xf;

/// `open_tree_attr(2)` (Linux 6.15), not yet in the `libc` crate. Syscalls added since 5.1
/// (424+) share one number on every architecture.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// x86_64 tags x32-ABI syscalls by setting this bit in the syscall number
/// (`__X32_SYSCALL_BIT`); the audit architecture stays `AUDIT_ARCH_X86_64`.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// One syscall denied outright with `EPERM`.
struct Deny {
    name: &'static str,
    nr: i64,
}

const fn deny(name: &'static str, nr: i64) -> Deny {
    Deny { name, nr }
}

/// Syscalls denied with `EPERM` whatever their arguments.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const UNCONDITIONAL: &[Deny] = &[
    // --- Reaching into other processes. Processes outside the sandbox may share our uid
    // (degraded mode) and, inside it, the init holds the confinement state. Landlock already
    // scopes ptrace, but this is the layer that still stands when Landlock is absent.
    deny("ptrace", libc::SYS_ptrace),
    deny("process_vm_readv", libc::SYS_process_vm_readv),
    deny("process_vm_writev", libc::SYS_process_vm_writev),
    // Duplicates a file descriptor out of another process (ptrace-attach-equivalent).
    deny("pidfd_getfd", libc::SYS_pidfd_getfd),
    // Applies madvise() to another process's memory (ptrace-read-equivalent).
    deny("process_madvise", libc::SYS_process_madvise),
    // Compares kernel objects of two processes: a ptrace-adjacent information leak.
    deny("kcmp", libc::SYS_kcmp),
    // --- io_uring: a second syscall interface that seccomp cannot see into (operations
    // submitted through the ring bypass this filter) and a leading source of kernel CVEs.
    deny("io_uring_setup", libc::SYS_io_uring_setup),
    deny("io_uring_enter", libc::SYS_io_uring_enter),
    deny("io_uring_register", libc::SYS_io_uring_register),
    // --- The mount table. The init built the filesystem view (and Landlock assumes it);
    // commands must not rearrange it, even inside a user namespace where they could.
    deny("mount", libc::SYS_mount),
    deny("umount2", libc::SYS_umount2),
    deny("pivot_root", libc::SYS_pivot_root),
    deny("chroot", libc::SYS_chroot),
    // The new mount API (5.2+): same powers as mount(2) under other names.
    deny("fsopen", libc::SYS_fsopen),
    deny("fsconfig", libc::SYS_fsconfig),
    deny("fsmount", libc::SYS_fsmount),
    deny("fspick", libc::SYS_fspick),
    deny("move_mount", libc::SYS_move_mount),
    deny("open_tree", libc::SYS_open_tree),
    deny("open_tree_attr", SYS_OPEN_TREE_ATTR),
    deny("mount_setattr", libc::SYS_mount_setattr),
    // --- Namespaces. A new user namespace hands out a full capability set (the usual first
    // step of kernel exploits and of escaping mount/Landlock assumptions); setns joins someone
    // else's namespaces. Creation through clone(2) is covered by the argument rules below.
    deny("unshare", libc::SYS_unshare),
    deny("setns", libc::SYS_setns),
    // --- File handles bypass path-based checks (the "shocker" container escape): a handle
    // opens a file by inode, ignoring the mount view and Landlock's path hierarchy.
    deny("open_by_handle_at", libc::SYS_open_by_handle_at),
    deny("name_to_handle_at", libc::SYS_name_to_handle_at),
    // --- In-kernel programmability and observability: large attack surface, and perf/bpf
    // can observe other processes.
    deny("bpf", libc::SYS_bpf),
    deny("perf_event_open", libc::SYS_perf_event_open),
    // Lets a process handle page faults of its own memory in user space: the classic tool for
    // winning kernel race conditions.
    deny("userfaultfd", libc::SYS_userfaultfd),
    // --- Kernel keyrings are not namespaced: keys (credentials, e.g. Kerberos, fscrypt,
    // ecryptfs) would be shared with the host, and keyctl has a long CVE history.
    deny("keyctl", libc::SYS_keyctl),
    deny("add_key", libc::SYS_add_key),
    deny("request_key", libc::SYS_request_key),
    // --- Host-global machine state: modules, kexec, reboot, swap, accounting, the kernel
    // log, quotas. None is namespaced; all need capabilities we dropped (defence in depth for
    // degraded mode, where the same uid as the host user is in use).
    deny("init_module", libc::SYS_init_module),
    deny("finit_module", libc::SYS_finit_module),
    deny("delete_module", libc::SYS_delete_module),
    deny("kexec_load", libc::SYS_kexec_load),
    deny("kexec_file_load", libc::SYS_kexec_file_load),
    deny("reboot", libc::SYS_reboot),
    deny("swapon", libc::SYS_swapon),
    deny("swapoff", libc::SYS_swapoff),
    deny("acct", libc::SYS_acct),
    // The kernel log leaks kernel addresses and other tenants' activity.
    deny("syslog", libc::SYS_syslog),
    deny("quotactl", libc::SYS_quotactl),
    deny("quotactl_fd", libc::SYS_quotactl_fd),
    // Old oprofile interface (removed in 6.10); kernel attack surface with no use.
    deny("lookup_dcookie", libc::SYS_lookup_dcookie),
    // The hostname is private in namespace mode (UTS namespace) but the host's in degraded
    // mode.
    deny("sethostname", libc::SYS_sethostname),
    deny("setdomainname", libc::SYS_setdomainname),
    // --- The system clock is not namespaced (time namespaces only offset monotonic/boottime),
    // and changing it breaks TLS, make, and every other process on the host.
    deny("settimeofday", libc::SYS_settimeofday),
    deny("clock_settime", libc::SYS_clock_settime),
    deny("clock_adjtime", libc::SYS_clock_adjtime),
    deny("adjtimex", libc::SYS_adjtimex),
    // --- x86_64 only.
    // Raw I/O port access: direct hardware access.
    #[cfg(target_arch = "x86_64")]
    deny("iopl", libc::SYS_iopl),
    #[cfg(target_arch = "x86_64")]
    deny("ioperm", libc::SYS_ioperm),
    // Per-process LDT: only 16-bit/Wine code needs it; a source of kernel bugs.
    #[cfg(target_arch = "x86_64")]
    deny("modify_ldt", libc::SYS_modify_ldt),
    // Loads an a.out shared library (obsolete, CONFIG_USELIB): attack surface, no use.
    #[cfg(target_arch = "x86_64")]
    deny("uselib", libc::SYS_uselib),
];

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const UNCONDITIONAL: &[Deny] = &[];

/// `clone(2)` flags that create namespaces. Same reason as `unshare`: a new user namespace
/// grants capabilities; the others build a new view of mounts, processes or the network that
/// the sandbox did not set up.
const CLONE_NEW_FLAGS: &[(&str, libc::c_int)] = &[
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    // 0x80 overlaps CSIGNAL (the exit signal) in legacy clone(2), which therefore cannot
    // create time namespaces; kept for completeness (no valid exit signal has bit 7 set).
    ("CLONE_NEWTIME", libc::CLONE_NEWTIME),
];

/// `socket(2)` address families denied with `EPERM`.
const DENIED_FAMILIES: &[(&str, libc::c_int)] = &[
    // Raw link-layer access: sniffing and forging frames below the egress proxy.
    ("socket(AF_PACKET)", libc::AF_PACKET),
    // Netlink configures the kernel (routes, firewall, interfaces, audit, ...): kernel attack
    // surface and a way to reshape networking. glibc's getaddrinfo falls back when it fails.
    ("socket(AF_NETLINK)", libc::AF_NETLINK),
    // vsock is not network-namespaced: on a VM it reaches the hypervisor host directly,
    // bypassing the network namespace and the egress proxy.
    ("socket(AF_VSOCK)", libc::AF_VSOCK),
];

/// `ioctl(2)` requests denied with `EPERM`.
// The casts are no-ops on glibc (`Ioctl` is `c_ulong`) but not on musl (`c_int`).
#[allow(clippy::unnecessary_cast)]
const DENIED_IOCTLS: &[(&str, u64)] = &[
    // Pushes bytes into a terminal's input queue: a sandboxed command could type commands
    // into the user's shell once the agent exits (CVE-2016-7545 class).
    ("ioctl(TIOCSTI)", libc::TIOCSTI as u64),
    // Virtual-console control, including selection paste (the same injection through the
    // console's copy/paste buffer).
    ("ioctl(TIOCLINUX)", libc::TIOCLINUX as u64),
];

/// Label of the `clone(2)` namespace rules.
const CLONE_LABEL: &str = "clone(CLONE_NEW*)";
/// Label of the raw-socket rule.
const SOCK_RAW_LABEL: &str = "socket(SOCK_RAW)";
/// Label of the `personality(2)` rule.
const PERSONALITY_LABEL: &str = "personality(!PER_LINUX)";
/// Label of the `clone3` rule.
const CLONE3_LABEL: &str = "clone3 (ENOSYS)";
/// Label of the x32 guard.
#[cfg(target_arch = "x86_64")]
const X32_LABEL: &str = "x32 syscalls (ENOSYS)";

/// Names of the syscalls (and syscall+argument rules) that the filter denies, for reports and
/// `--check`. Empty on an unsupported architecture (no filter is built there).
pub fn denied_rules() -> Vec<&'static str> {
    if target_arch().is_err() {
        return Vec::new();
    }
    let mut names: Vec<&'static str> = UNCONDITIONAL.iter().map(|d| d.name).collect();
    names.push(CLONE_LABEL);
    names.push(CLONE3_LABEL);
    names.extend(DENIED_FAMILIES.iter().map(|(name, _)| *name));
    names.push(SOCK_RAW_LABEL);
    names.extend(DENIED_IOCTLS.iter().map(|(name, _)| *name));
    names.push(PERSONALITY_LABEL);
    #[cfg(target_arch = "x86_64")]
    names.push(X32_LABEL);
    names
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
    }
}

/// A 32-bit argument condition (see the module docs for why never 64-bit).
fn arg32(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, SeccompError> {
    Ok(SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// A rule matching when one 32-bit argument condition holds.
fn rule32(index: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, SeccompError> {
    Ok(SeccompRule::new(vec![arg32(index, op, value)?])?)
}

/// Widens a (non-negative) C int constant for a comparison.
fn c(value: libc::c_int) -> u64 {
    u64::from(value.unsigned_abs())
}

/// The main filter: everything that fails with `EPERM`.
fn eperm_filter(arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for d in UNCONDITIONAL {
        // An empty rule list means "always matches" in seccompiler.
        rules.insert(d.nr, Vec::new());
    }

    // clone(2): arg 0 is the flags word on both x86_64 and aarch64 (the argument order of
    // the remaining arguments differs, the flags do not). One rule per flag, any bit set.
    let clone_rules = CLONE_NEW_FLAGS
        .iter()
        .map(|(_, flag)| rule32(0, SeccompCmpOp::MaskedEq(c(*flag)), c(*flag)))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);

    // socket(2): denied families (arg 0) with any type, and SOCK_RAW (arg 1, low nibble) in
    // any family. Raw IP sockets forge packets and see traffic below the proxy; they need
    // CAP_NET_RAW, which a user namespace root would have in its own network namespace.
    let mut socket_rules = DENIED_FAMILIES
        .iter()
        .map(|(_, family)| rule32(0, SeccompCmpOp::Eq, c(*family)))
        .collect::<Result<Vec<_>, _>>()?;
    socket_rules.push(rule32(
        1,
        SeccompCmpOp::MaskedEq(SOCK_TYPE_MASK),
        c(libc::SOCK_RAW),
    )?);
    rules.insert(libc::SYS_socket, socket_rules);

    // ioctl(2): terminal input injection (arg 1 is the request, an unsigned int).
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|(_, request)| rule32(1, SeccompCmpOp::Eq, *request))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);

    // personality(2): only PER_LINUX (0) and the query value 0xffffffff. Other personalities
    // disable ASLR (ADDR_NO_RANDOMIZE), make readable memory executable (READ_IMPLIES_EXEC) or
    // map page zero (MMAP_PAGE_ZERO): all exploit helpers. Conditions of one rule are ANDed.
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(vec![
            arg32(0, SeccompCmpOp::Ne, 0)?,
            arg32(0, SeccompCmpOp::Ne, 0xffff_ffff)?,
        ])?],
    );

    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(c(libc::EPERM) as u32),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// `clone3(2)` fails with `ENOSYS`, whatever its arguments.
///
/// Its flags (including `CLONE_NEW*`) live in a `struct clone_args` in user memory, which a
/// seccomp filter cannot read, so it cannot be filtered per flag like `clone(2)`. Denying it
/// with `EPERM` would break every program that uses it; `ENOSYS` ("this kernel predates
/// clone3") makes glibc (>= 2.34: `posix_spawn`, `pthread_create`), systemd and others fall
/// back to `clone(2)`, whose flags the main filter does check.
fn clone3_filter(arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        std::iter::once((libc::SYS_clone3, Vec::new())).collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(c(libc::ENOSYS) as u32),
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// No x32 ABI outside x86_64: nothing to guard.
#[cfg(not(target_arch = "x86_64"))]
fn x32_guard() -> BpfProgram {
    Vec::new()
}

/// x86_64 only: syscall numbers with the x32 bit set fail with `ENOSYS`.
///
/// x32 syscalls report `AUDIT_ARCH_X86_64` like native ones but use numbers offset by
/// `0x40000000`, so a deny-list keyed on native numbers would not see them: on a kernel built
/// with `CONFIG_X86_X32_ABI`, `syscall(0x40000000 + 272)` would be an unfiltered `unshare`.
/// The guard checks only the number, so it is correct before the architecture check too.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    // BPF_LD | BPF_W | BPF_ABS
    const BPF_LD_W_ABS: u16 = 0x20;
    // BPF_JMP | BPF_JGE | BPF_K
    const BPF_JMP_JGE_K: u16 = 0x35;
    // BPF_RET | BPF_K
    const BPF_RET_K: u16 = 0x06;
    vec![
        // A = seccomp_data.nr (offset 0)
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // if A >= X32_SYSCALL_BIT fall through to the return, else skip it
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | c(libc::ENOSYS) as u32,
        },
    ]
}

/// Concatenates filters so that a syscall one of them allows goes on to the next.
///
/// seccompiler gives each filter a single on-match action, and we need two (`EPERM` and
/// `ENOSYS`) in one program (`install` takes one). Every `RET ALLOW` of a filter except the
/// last is replaced by an unconditional jump to the first instruction after that filter. The
/// replacement has the same length, and all BPF jumps are relative, so no other offset
/// changes.
fn chain(programs: Vec<BpfProgram>) -> BpfProgram {
    // BPF_RET | BPF_K
    const BPF_RET_K: u16 = 0x06;
    // BPF_JMP | BPF_JA
    const BPF_JMP_JA: u16 = 0x05;
    let count = programs.len();
    let mut out = Vec::with_capacity(programs.iter().map(Vec::len).sum());
    for (index, mut program) in programs.into_iter().enumerate() {
        if index + 1 < count {
            let len = program.len();
            for (pc, insn) in program.iter_mut().enumerate() {
                if insn.code == BPF_RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
                    *insn = sock_filter {
                        code: BPF_JMP_JA,
                        jt: 0,
                        jf: 0,
                        // Jumps are relative to the next instruction; fits: len <= 4096.
                        k: u32::try_from(len - pc - 1).unwrap_or(u32::MAX),
                    };
                }
            }
        }
        out.append(&mut program);
    }
    out
}

/// The filter, compiled for the running architecture (x86_64 and aarch64; other
/// architectures return [`SeccompError::UnsupportedArch`]).
///
/// Default action allow; the calls listed by [`denied_rules`] fail with `EPERM` (`clone3` and
/// x32 syscalls with `ENOSYS`); syscalls of a foreign architecture kill the process.
pub fn build_filter() -> Result<BpfProgram, SeccompError> {
    let arch = target_arch()?;
    let program = chain(vec![x32_guard(), eperm_filter(arch)?, clone3_filter(arch)?]);
    if program.is_empty() || program.len() > BPF_MAXINSNS {
        return Err(SeccompError::InvalidLength(program.len()));
    }
    Ok(program)
}

/// `struct sock_fprog` from `<linux/filter.h>`.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// Applies a program built earlier by [`build_filter`] to the calling thread and its future
/// children. Filters are permanent and stack: there is no way to remove one.
///
/// Requires `PR_SET_NO_NEW_PRIVS` to have been set (or `CAP_SYS_ADMIN`); this function does not
/// set it. Does not allocate and is async-signal-safe, so it may run between `fork` and `exec`.
/// Does not synchronise other threads (no `SECCOMP_FILTER_FLAG_TSYNC`): call it while
/// single-threaded.
pub fn install(program: &BpfProgram) -> Result<(), SeccompError> {
    let len = match u16::try_from(program.len()) {
        Ok(len) if len > 0 && usize::from(len) <= BPF_MAXINSNS => len,
        _ => return Err(SeccompError::InvalidLength(program.len())),
    };
    let fprog = SockFprog {
        len,
        filter: program.as_ptr(),
    };
    // SAFETY: `fprog` points at `len` initialised instructions that outlive the call; the
    // kernel copies the program and does not keep the pointer.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &fprog as *const SockFprog,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // `last_os_error` stores the errno inline: no allocation.
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EACCES) {
        Err(SeccompError::NoNewPrivsRequired)
    } else {
        Err(SeccompError::Install(err))
    }
}

#[cfg(test)]
mod tests {
    //! The filter is exercised for real, never in the (multithreaded) test process: each check
    //! runs in a child that installs the filter between `fork` and `exec`, then runs a real
    //! program that attempts the denied operation.

    use super::*;
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Command, Output};
    use std::sync::Arc;

    /// Env var that turns [`reexec_child`] into the confined child.
    const CHILD_ENV: &str = "FLOTILLA_SECCOMP_TEST_CHILD";

    fn python() -> &'static str {
        if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        }
    }

    fn set_no_new_privs() -> std::io::Result<()> {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Runs `program args` with the filter installed in the child before `exec`.
    fn run(program: &str, args: &[&str], filtered: bool) -> Output {
        let mut cmd = Command::new(program);
        // Error messages are matched in English.
        cmd.args(args).env("LC_ALL", "C");
        if filtered {
            let bpf = Arc::new(build_filter().expect("build filter"));
            // SAFETY: the closure only calls prctl and `install`, which does not allocate.
            unsafe {
                cmd.pre_exec(move || {
                    set_no_new_privs()?;
                    install(&bpf).map_err(|_| std::io::Error::from_raw_os_error(libc::EPERM))
                });
            }
        }
        cmd.output().expect("spawn child")
    }

    /// Runs a python3 snippet (under the filter if `filtered`) and returns its stdout, trimmed.
    fn py(code: &str, filtered: bool) -> String {
        let out = run(python(), &["-c", code], filtered);
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Python prelude: `sc(nr, *args)` makes a raw syscall and returns "ok" or "errno=N".
    const PY_SYSCALL: &str = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    return "ok" if r >= 0 else "errno=%d" % ctypes.get_errno()
"#;

    fn have(program: &str) -> bool {
        Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    #[test]
    fn filter_builds_and_lists_rules() {
        let program = build_filter().expect("build filter");
        assert!(!program.is_empty() && program.len() <= BPF_MAXINSNS);
        eprintln!(
            "filter: {} BPF instructions, {} rules",
            program.len(),
            denied_rules().len()
        );
        let rules = denied_rules();
        for name in [
            "ptrace",
            "io_uring_setup",
            "mount",
            "unshare",
            "setns",
            "bpf",
            "keyctl",
            "clone(CLONE_NEW*)",
            "clone3 (ENOSYS)",
            "socket(AF_NETLINK)",
            "socket(AF_PACKET)",
            "socket(SOCK_RAW)",
            "ioctl(TIOCSTI)",
        ] {
            assert!(rules.contains(&name), "{name} missing from {rules:?}");
        }
        let mut numbers: Vec<i64> = UNCONDITIONAL.iter().map(|d| d.nr).collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(
            numbers.len(),
            UNCONDITIONAL.len(),
            "duplicate syscall number"
        );
        for reserved in [
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_socket,
            libc::SYS_ioctl,
        ] {
            assert!(
                !numbers.contains(&reserved),
                "{reserved} has argument rules"
            );
        }
    }

    #[test]
    fn install_rejects_invalid_programs() {
        assert!(matches!(
            install(&Vec::new()),
            Err(SeccompError::InvalidLength(0))
        ));
        let huge = vec![
            sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            };
            BPF_MAXINSNS + 1
        ];
        assert!(matches!(
            install(&huge),
            Err(SeccompError::InvalidLength(_))
        ));
    }

    #[test]
    fn chain_redirects_allow_to_next_program() {
        let ret = |k| sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k,
        };
        let first = vec![
            ret(libc::SECCOMP_RET_KILL_PROCESS),
            ret(libc::SECCOMP_RET_ALLOW),
        ];
        let second = vec![ret(libc::SECCOMP_RET_ALLOW)];
        let chained = chain(vec![first, second]);
        assert_eq!(chained.len(), 3);
        assert_eq!(chained[0].k, libc::SECCOMP_RET_KILL_PROCESS);
        // JA +0: falls into the second program.
        assert_eq!((chained[1].code, chained[1].k), (0x05, 0));
        assert_eq!(chained[2].k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn unshare_user_and_net_namespaces_fail() {
        if !have("unshare") {
            eprintln!("skipped: no unshare(1)");
            return;
        }
        for flag in ["-U", "-n"] {
            let control = run("unshare", &[flag, "true"], false);
            if !control.status.success() {
                eprintln!("note: unshare {flag} fails even unfiltered here");
            }
            let out = run("unshare", &[flag, "true"], true);
            assert!(
                !out.status.success(),
                "unshare {flag} succeeded under filter"
            );
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("Operation not permitted"),
                "unshare {flag}: {stderr}"
            );
        }
    }

    #[test]
    fn clone_with_namespace_flags_fails() {
        // Raw clone(2) without a new stack behaves like fork; the child exits at once.
        let code = format!(
            "{PY_SYSCALL}
def try_clone(flags):
    r = libc.syscall(ctypes.c_long({nr}), ctypes.c_ulong(flags), ctypes.c_ulong(0),
                     ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return 'ok'
    return 'errno=%d' % ctypes.get_errno()
SIGCHLD = 17
print(try_clone(SIGCHLD), try_clone({newuser} | SIGCHLD), try_clone({newnet} | SIGCHLD),
      try_clone({newns} | SIGCHLD), try_clone((1 << 32) | {newuser} | SIGCHLD))
",
            nr = libc::SYS_clone,
            newuser = libc::CLONE_NEWUSER,
            newnet = libc::CLONE_NEWNET,
            newns = libc::CLONE_NEWNS,
        );
        assert_eq!(
            py(&code, true),
            "ok errno=1 errno=1 errno=1 errno=1",
            "plain clone must work, namespace clones must fail with EPERM (high bits ignored)"
        );
    }

    #[test]
    fn clone3_fails_with_enosys() {
        let code = format!("{PY_SYSCALL}\nprint(sc({}, 0, 0))", libc::SYS_clone3);
        assert_ne!(py(&code, false), "errno=38", "control: kernel has clone3");
        assert_eq!(py(&code, true), "errno=38");
    }

    #[test]
    fn dangerous_sockets_fail() {
        let code = r#"
import socket
def t(family, kind, proto=0):
    try:
        socket.socket(family, kind, proto).close()
        return "ok"
    except OSError as e:
        return "errno=%d" % e.errno
print(t(socket.AF_NETLINK, socket.SOCK_RAW), t(socket.AF_NETLINK, socket.SOCK_DGRAM),
      t(socket.AF_PACKET, socket.SOCK_DGRAM), t(socket.AF_PACKET, socket.SOCK_RAW),
      t(socket.AF_INET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMP),
      t(socket.AF_VSOCK, socket.SOCK_STREAM),
      t(socket.AF_INET, socket.SOCK_STREAM), t(socket.AF_INET6, socket.SOCK_DGRAM),
      t(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
"#;
        assert_eq!(
            py(code, true),
            "errno=1 errno=1 errno=1 errno=1 errno=1 errno=1 ok ok ok"
        );
    }

    #[test]
    fn io_uring_setup_fails() {
        let code = format!(
            "{PY_SYSCALL}\nparams = ctypes.create_string_buffer(256)\n\
             r = libc.syscall(ctypes.c_long({nr}), ctypes.c_uint(8), params)\n\
             print(r, ctypes.get_errno())",
            nr = libc::SYS_io_uring_setup
        );
        assert_eq!(py(&code, true), "-1 1");
    }

    #[test]
    fn terminal_injection_ioctls_fail_even_with_high_bits() {
        let code = format!(
            "{PY_SYSCALL}\nfd = os.open('/dev/null', os.O_RDONLY)\nbuf = ctypes.create_string_buffer(b'x')\n\
             def io(req):\n    r = libc.syscall(ctypes.c_long({nr}), ctypes.c_long(fd), ctypes.c_ulong(req), buf)\n    \
             return 'ok' if r >= 0 else 'errno=%d' % ctypes.get_errno()\n\
             print(io({sti}), io((1 << 32) | {sti}), io({linux}))",
            nr = libc::SYS_ioctl,
            sti = libc::TIOCSTI,
            linux = libc::TIOCLINUX,
        );
        // /dev/null is no terminal: unfiltered, the kernel answers ENOTTY.
        assert_eq!(py(&code, false), "errno=25 errno=25 errno=25");
        assert_eq!(py(&code, true), "errno=1 errno=1 errno=1");
    }

    #[test]
    fn personality_only_allows_linux_and_query() {
        let code = format!(
            "{PY_SYSCALL}\nn = {nr}\nprint(sc(n, 0xffffffff), sc(n, 0), sc(n, 0x0040000), sc(n, 0x0400000), sc(n, 8))",
            nr = libc::SYS_personality
        );
        assert_eq!(py(&code, true), "ok ok errno=1 errno=1 errno=1");
    }

    #[test]
    fn other_denied_syscalls_fail_with_eperm() {
        let calls = [
            libc::SYS_ptrace,
            libc::SYS_keyctl,
            libc::SYS_bpf,
            libc::SYS_setns,
            libc::SYS_userfaultfd,
            libc::SYS_perf_event_open,
            libc::SYS_mount,
            libc::SYS_fsopen,
            SYS_OPEN_TREE_ATTR,
        ];
        let list = calls.map(|nr| nr.to_string()).join(", ");
        let code = format!("{PY_SYSCALL}\nprint(' '.join(sc(n, 0, 0, 0, 0, 0) for n in [{list}]))");
        let expected = vec!["errno=1"; calls.len()].join(" ");
        assert_eq!(py(&code, true), expected);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn x32_syscalls_fail() {
        // x32 unshare(CLONE_NEWUSER) and x32 getpid.
        let code = format!(
            "{PY_SYSCALL}\nprint(sc({x32} + 272, {newuser}), sc({x32} + 39))",
            x32 = X32_SYSCALL_BIT,
            newuser = libc::CLONE_NEWUSER
        );
        assert_eq!(py(&code, true), "errno=38 errno=38");
    }

    #[test]
    fn ordinary_commands_still_work() {
        let out = run(
            "sh",
            &["-c", "true; ls / >/dev/null && sh -c 'sh -c true'"],
            true,
        );
        assert!(out.status.success(), "{out:?}");

        // subprocess (vfork/fork), os.posix_spawn (glibc: clone3, then clone on ENOSYS) and
        // threads (pthread_create: same fallback).
        let code = r#"
import os, subprocess, threading
subprocess.run(["true"], check=True)
assert subprocess.run(["sh", "-c", "echo hi"], capture_output=True, check=True).stdout == b"hi\n"
pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], os.environ)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 3
t = threading.Thread(target=lambda: subprocess.run(["true"], check=True))
t.start(); t.join()
print("ok")
"#;
        assert_eq!(py(code, true), "ok");
    }

    /// Like the sandbox init: install the filter in this (single-threaded) process, then spawn
    /// children with Rust's `std::process::Command` and threads.
    #[test]
    fn rust_std_spawn_works_under_filter() {
        let exe = std::env::current_exe().expect("current exe");
        let out = Command::new(exe)
            .args([
                "--exact",
                "seccomp::tests::reexec_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .expect("re-exec test binary");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("SECCOMP_CHILD_OK"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The confined half of [`rust_std_spawn_works_under_filter`]; a no-op otherwise.
    #[test]
    fn reexec_child() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return;
        }
        let program = build_filter().expect("build");
        set_no_new_privs().expect("no_new_privs");
        install(&program).expect("install");
        let spawn = |cmd: &str| {
            Command::new("sh")
                .args(["-c", cmd])
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let ok = spawn("true")
            && std::thread::spawn(move || spawn("sh -c true"))
                .join()
                .unwrap_or(false)
            && !spawn("unshare -U true 2>/dev/null")
            && Command::new("true")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
        if ok {
            println!("SECCOMP_CHILD_OK");
        }
        std::process::exit(if ok { 0 } else { 1 });
    }
}
