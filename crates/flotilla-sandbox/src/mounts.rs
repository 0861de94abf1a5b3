//! The filesystem a namespaced sandbox sees, built by its init inside a
//! fresh mount namespace:
//!
//! - the host root, read-only, nosuid, nodev (recursively, every submount);
//! - the workspace (and `--write` directories) read-write at their own paths;
//! - inside the workspace, `.git/hooks`, `.git/config` and `.flotilla/`
//!   read-only, and `.git` itself a mount point so it cannot be renamed away
//!   and replaced;
//! - a private tmpfs `/tmp`, a tmpfs `/run` (no host sockets: no Docker, no
//!   D-Bus, no ssh-agent, not the daemon's), a fresh `/proc` for the new pid
//!   namespace, a minimal `/dev` (null, zero, full, random, urandom, tty, a
//!   private devpts, shm);
//! - credential stores and the deny-read list masked by empty read-only
//!   mounts.
//!
//! The steps follow bubblewrap's: stage on a tmpfs, `pivot_root` so the host
//! root sits at `/oldroot`, assemble `/newroot` from binds, then pivot into it
//! and detach the rest. Nothing here is visible outside the namespace.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};

use crate::spec::{NetworkMode, SandboxSpec, PROXY_INSIDE_CA_BUNDLE, PROXY_INSIDE_SOCKET};

/// Where the staging tmpfs is mounted (inside our namespace only).
const STAGE: &str = "/tmp";

/// What [`build`] did, for the report.
#[derive(Debug, Default)]
pub struct View {
    /// Hidden paths that existed and were masked.
    pub hidden: Vec<PathBuf>,
    /// Workspace paths made read-only.
    pub protected: Vec<PathBuf>,
    /// Weaker than asked, and why.
    pub degraded: Vec<String>,
}

type Result<T> = std::result::Result<T, String>;

fn ctx<T>(what: impl FnOnce() -> String, res: nix::Result<T>) -> Result<T> {
    res.map_err(|err| format!("{}: {err}", what()))
}

fn io_ctx<T>(what: impl FnOnce() -> String, res: std::io::Result<T>) -> Result<T> {
    res.map_err(|err| format!("{}: {err}", what()))
}

/// `/newroot` + an absolute host path.
fn under(root: &str, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    Path::new(root).join(rel)
}

fn bind(src: &Path, dst: &Path, recursive: bool) -> Result<()> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    ctx(
        || format!("bind-mounting {} on {}", src.display(), dst.display()),
        mount(Some(src), dst, None::<&str>, flags, None::<&str>),
    )
}

fn remount_readonly(path: &Path) -> Result<()> {
    ctx(
        || format!("making {} read-only", path.display()),
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        ),
    )
}

fn tmpfs(dst: &Path, flags: MsFlags, options: &str) -> Result<()> {
    ctx(
        || format!("mounting a tmpfs on {}", dst.display()),
        mount(Some("tmpfs"), dst, Some("tmpfs"), flags, Some(options)),
    )
}

/// The kernel's `struct mount_attr` (linux/mount.h), for `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Read-only, nosuid, nodev on `path` and every mount below it, in one call
/// (`mount_setattr(2)`, Linux 5.12). The `MS_REMOUNT` alternative would have
/// to walk mountinfo and re-state each mount's locked flags.
fn readonly_recursive(path: &Path) -> Result<()> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: cpath is a valid NUL-terminated string and attr a valid
    // mount_attr, both alive for the duration of the call; the size passed is
    // the struct's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "making {} read-only (mount_setattr): {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Builds the view and pivots into it. Runs in the init, in the new mount
/// namespace, with the namespace's capabilities.
pub fn build(spec: &SandboxSpec) -> Result<View> {
    let mut view = View::default();
    // Nothing we do may propagate back to the host.
    ctx(
        || "making / private".into(),
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
    )?;
    tmpfs(
        Path::new(STAGE),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755,size=64k",
    )?;
    io_ctx(|| "creating the staging directories".into(), {
        fs::create_dir(Path::new(STAGE).join("newroot"))
            .and_then(|()| fs::create_dir(Path::new(STAGE).join("oldroot")))
            .and_then(|()| fs::write(Path::new(STAGE).join("empty"), b""))
    })?;
    ctx(|| format!("chdir {STAGE}"), chdir(STAGE))?;
    ctx(
        || "pivot_root to the staging tmpfs".into(),
        pivot_root(".", "oldroot"),
    )?;
    ctx(|| "chdir /".into(), chdir("/"))?;

    let newroot = Path::new("/newroot");
    let old = |p: &Path| under("/oldroot", p);
    let new = |p: &Path| under("/newroot", p);

    // The host, read-only.
    bind(Path::new("/oldroot"), newroot, true)?;
    readonly_recursive(newroot)?;

    // Private /tmp.
    tmpfs(
        &new(Path::new("/tmp")),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        &format!("mode=1777,size={}", spec.limits.tmp_size_bytes.max(1 << 20)),
    )?;
    // No host sockets under /run.
    if new(Path::new("/run")).is_dir() {
        tmpfs(
            &new(Path::new("/run")),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "mode=0755,size=1m",
        )?;
    }
    build_dev(&new(Path::new("/dev")))?;
    // A fresh /proc: only this sandbox's processes.
    let proc_dir = new(Path::new("/proc"));
    if let Err(err) = mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        // Never fall back to the host's /proc: it shows every host process.
        tmpfs(
            &proc_dir,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "mode=0555,size=4k",
        )?;
        view.degraded.push(format!(
            "a fresh /proc could not be mounted ({err}); /proc is empty in the sandbox"
        ));
    }

    // The workspace and other writable directories, read-write.
    let mut writable = vec![spec.workspace.clone()];
    writable.extend(spec.extra_write.iter().cloned());
    for dir in &writable {
        let target = new(dir);
        io_ctx(
            || format!("creating the mount point {}", target.display()),
            fs::create_dir_all(&target),
        )?;
        bind(&old(dir), &target, true)?;
    }

    // Inside the workspace: what runs later stays read-only.
    let ws = new(&spec.workspace);
    let git = ws.join(".git");
    if git.is_dir() {
        // Git creates hooks/ itself; make sure it exists so it can be
        // protected rather than created by the agent.
        let _ = fs::create_dir(git.join("hooks"));
        // A mount point cannot be renamed or removed: `mv .git elsewhere`
        // followed by a fresh .git/hooks is refused with EBUSY.
        bind(&git, &git, false)?;
    }
    for rel in &spec.protected {
        let path = ws.join(rel);
        if path.exists() {
            bind(&path, &path, false)?;
            remount_readonly(&path)?;
            view.protected.push(spec.workspace.join(rel));
        }
    }

    if let NetworkMode::Proxy { socket, ca_bundle } = &spec.network {
        let inside = new(Path::new(PROXY_INSIDE_SOCKET));
        if let Some(parent) = inside.parent() {
            io_ctx(
                || format!("creating {}", parent.display()),
                fs::create_dir_all(parent),
            )?;
        }
        io_ctx(
            || format!("creating {}", inside.display()),
            fs::write(&inside, b""),
        )?;
        bind(&old(socket), &inside, false)?;
        if let Some(bundle) = ca_bundle {
            let inside = new(Path::new(PROXY_INSIDE_CA_BUNDLE));
            io_ctx(
                || format!("creating {}", inside.display()),
                fs::write(&inside, b""),
            )?;
            bind(&old(bundle), &inside, false)?;
            remount_readonly(&inside)?;
        }
    }

    // Masks last, so they also cover anything bound above.
    for path in spec.hidden_paths() {
        let target = new(&path);
        let Ok(meta) = fs::metadata(&target) else {
            continue;
        };
        if meta.is_dir() {
            tmpfs(
                &target,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                "mode=0555,size=4k",
            )?;
        } else {
            bind(Path::new("/empty"), &target, false)?;
            remount_readonly(&target)?;
        }
        view.hidden.push(path);
    }

    // Into the new root; the staging tmpfs and the host root under it are
    // detached and unreachable.
    ctx(|| "chdir /newroot".into(), chdir(newroot))?;
    ctx(
        || "pivot_root to the sandbox root".into(),
        pivot_root(".", "."),
    )?;
    ctx(
        || "detaching the old root".into(),
        umount2(".", MntFlags::MNT_DETACH),
    )?;
    ctx(|| "chdir /".into(), chdir("/"))?;
    Ok(view)
}

/// A minimal /dev: a few device nodes bound from the host, a private devpts.
fn build_dev(dev: &Path) -> Result<()> {
    tmpfs(
        dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let src = Path::new("/oldroot/dev").join(node);
        if !src.exists() {
            continue;
        }
        let dst = dev.join(node);
        io_ctx(
            || format!("creating {}", dst.display()),
            fs::write(&dst, b""),
        )?;
        bind(&src, &dst, false)?;
    }
    let pts = dev.join("pts");
    io_ctx(
        || format!("creating {}", pts.display()),
        fs::create_dir(&pts),
    )?;
    ctx(
        || "mounting a private devpts".into(),
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=620"),
        ),
    )?;
    let shm = dev.join("shm");
    io_ctx(
        || format!("creating {}", shm.display()),
        fs::create_dir(&shm),
    )?;
    tmpfs(
        &shm,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777,size=64m",
    )?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        io_ctx(
            || format!("linking /dev/{name}"),
            std::os::unix::fs::symlink(target, dev.join(name)),
        )?;
    }
    Ok(())
}
