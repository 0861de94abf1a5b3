//! Cgroup limits for a whole sandbox: `pids.max` (a fork bomb stops there)
//! and memory (a memory bomb is killed there, not by the host's OOM killer).
//!
//! Works with cgroup v2 (unified) and v1 (`pids` and `memory` controllers).
//! The sandbox helper finds where the group goes before entering the
//! namespaces, then creates it and moves itself and the init in while the
//! init builds the sandbox (creating a v1 group costs milliseconds per
//! controller on some kernels); the init waits for it before it forks
//! anything. Where the cgroup filesystem is
//! not writable (a non-root daemon without systemd delegation), there are no
//! cgroup limits and the sandbox says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::spec::SandboxLimits;

const ROOT: &str = "/sys/fs/cgroup";

/// A cgroup (one directory per controller on v1) that this process joined.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    version: u8,
    pids: u64,
    memory: Option<u64>,
}

/// Where the sandbox's cgroup will go, worked out before the helper enters
/// its namespaces (inside a new cgroup namespace, /proc/self/cgroup no
/// longer shows where we are).
#[derive(Debug)]
pub struct CgroupPlan {
    /// v2: the parent directory; v1: the `pids` parent and maybe `memory`.
    parents: Vec<PathBuf>,
    version: u8,
    pids: u64,
    memory: Option<u64>,
    name: String,
}

impl CgroupPlan {
    /// Finds where a group called `name` goes (beside this process's own
    /// cgroup), or says why there is none.
    pub fn detect(limits: &SandboxLimits, name: String) -> Result<CgroupPlan, String> {
        let own = own_cgroups().map_err(|err| format!("reading /proc/self/cgroup: {err}"))?;
        if Path::new(ROOT).join("cgroup.controllers").exists() {
            let rel = own.get("").ok_or("no unified cgroup for this process")?;
            let parent = Path::new(ROOT).join(rel.trim_start_matches('/'));
            let available = fs::read_to_string(parent.join("cgroup.subtree_control"))
                .map_err(|err| format!("{}: {err}", parent.display()))?;
            if !available.split_whitespace().any(|c| c == "pids") {
                return Err(format!(
                    "the pids controller is not delegated to {} (cgroup.subtree_control: {:?})",
                    parent.display(),
                    available.trim()
                ));
            }
            return Ok(CgroupPlan {
                parents: vec![parent],
                version: 2,
                pids: limits.max_processes,
                memory: limits
                    .memory_bytes
                    .filter(|_| available.split_whitespace().any(|c| c == "memory")),
                name,
            });
        }
        let pids_parent = v1_dir(&own, "pids").ok_or("no v1 pids controller mounted")?;
        let mut parents = vec![pids_parent];
        let mut memory = None;
        if let (Some(mem), Some(mem_parent)) = (limits.memory_bytes, v1_dir(&own, "memory")) {
            parents.push(mem_parent);
            memory = Some(mem);
        }
        Ok(CgroupPlan {
            parents,
            version: 1,
            pids: limits.max_processes,
            memory,
            name,
        })
    }

    /// Creates the group with its limits. On v1 each controller's directory
    /// is made on its own thread: cgroup creation waits for RCU grace
    /// periods (milliseconds each on some kernels), and parallel waits
    /// overlap. Runs in the daemon, in parallel with the helper's setup.
    pub fn create(&self) -> Result<Cgroup, String> {
        let version = self.version;
        let limit_pids = self.pids;
        let memory = self.memory;
        let dirs: Vec<PathBuf> = self.parents.iter().map(|p| p.join(&self.name)).collect();
        let results = on_threads(&dirs, |i, dir| {
            setup_dir(dir, version, i == 0, limit_pids, memory)
        });
        let cg = Cgroup {
            dirs: dirs.iter().filter(|d| d.exists()).cloned().collect(),
            version,
            pids: limit_pids,
            memory,
        };
        match results.into_iter().find_map(Result::err) {
            None => Ok(cg),
            Some(err) => {
                cg.remove();
                Err(err)
            }
        }
    }
}

/// Runs `f` on each directory, each on its own thread, and collects results.
fn on_threads<F>(dirs: &[PathBuf], f: F) -> Vec<Result<(), String>>
where
    F: Fn(usize, &Path) -> Result<(), String> + Sync,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let f = &f;
                scope.spawn(move || f(i, dir))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("cgroup setup thread panicked".to_string()))
            })
            .collect()
    })
}

fn remove_dir_retrying(dir: &Path) {
    // A group empties asynchronously after its last process is reaped.
    for _ in 0..50 {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn setup_dir(
    dir: &Path,
    version: u8,
    is_pids: bool,
    limit_pids: u64,
    memory: Option<u64>,
) -> Result<(), String> {
    mkdir(dir)?;
    if version == 2 {
        write(&dir.join("pids.max"), &limit_pids.to_string())?;
        if let Some(mem) = memory {
            write(&dir.join("memory.max"), &mem.to_string())?;
            let _ = write(&dir.join("memory.swap.max"), "0");
        }
    } else if is_pids {
        write(&dir.join("pids.max"), &limit_pids.to_string())?;
    } else if let Some(mem) = memory {
        write(&dir.join("memory.limit_in_bytes"), &mem.to_string())?;
        // Swap too, where accounted, so the bomb cannot hide in swap.
        let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &mem.to_string());
    }
    Ok(())
}

impl Cgroup {
    fn matches(&self, limits: &SandboxLimits) -> bool {
        self.pids == limits.max_processes && self.memory == limits.memory_bytes
    }

    /// For reports: "v1 pids=1024 memory=8589934592".
    pub fn describe(&self) -> String {
        let mut line = format!("v{} pids={}", self.version, self.pids);
        if let Some(mem) = self.memory {
            line.push_str(&format!(" memory={mem}"));
        }
        line
    }

    /// Moves process `pid` (and its future children) into the group, all
    /// controllers at once.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        let results = on_threads(&self.dirs, |_, dir| {
            write(&dir.join("cgroup.procs"), &pid.to_string())
        });
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Removes the group (it must be empty).
    pub fn remove(self) {
        for dir in &self.dirs {
            remove_dir_retrying(dir);
        }
    }

    /// Whether no process is left in the group.
    fn is_empty(&self) -> bool {
        self.dirs.iter().all(|d| {
            fs::read_to_string(d.join("cgroup.procs"))
                .map(|t| t.trim().is_empty())
                .unwrap_or(true)
        })
    }
}

/// A few spare groups made ahead of time, so that creating a sandbox does
/// not wait for the kernel to make one (on some kernels each cgroup
/// operation waits for an RCU grace period: milliseconds). Only a
/// long-lived process (the daemon) enables it; groups are recycled when
/// their sandbox ends, and [`drain_pool`] removes the spares at exit.
struct Pool {
    spares: usize,
    groups: Vec<Cgroup>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
static SEQ: AtomicU64 = AtomicU64::new(0);

/// Keeps up to `spares` groups ready from now on. Also removes the empty
/// groups left behind by a flotilla process that died (kill -9).
pub fn enable_pool(spares: usize) {
    if let Ok(mut pool) = POOL.lock() {
        *pool = Some(Pool {
            spares,
            groups: Vec::new(),
        });
    }
    sweep_stale();
}

/// Removes every spare group (the daemon calls it when it stops).
pub fn drain_pool() {
    let groups = POOL
        .lock()
        .ok()
        .and_then(|mut p| p.take())
        .map(|p| p.groups)
        .unwrap_or_default();
    for cg in groups {
        cg.remove();
    }
}

fn next_name() -> String {
    format!(
        "flotilla-sandbox-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A group with `limits`: a recycled one when one is ready, else a new one
/// (blocking).
pub fn acquire(limits: &SandboxLimits) -> Result<Cgroup, String> {
    let spare = POOL.lock().ok().and_then(|mut pool| {
        let pool = pool.as_mut()?;
        let at = pool.groups.iter().position(|g| g.matches(limits))?;
        Some(pool.groups.swap_remove(at))
    });
    match spare {
        Some(cg) => Ok(cg),
        None => CgroupPlan::detect(limits, next_name())?.create(),
    }
}

/// Puts `cg` in the pool if it wants one; gives it back otherwise.
fn keep(cg: Cgroup) -> Option<Cgroup> {
    let Ok(mut pool) = POOL.lock() else {
        return Some(cg);
    };
    match pool.as_mut() {
        Some(p) if p.groups.len() < p.spares => {
            p.groups.push(cg);
            None
        }
        _ => Some(cg),
    }
}

/// When the sandbox's last process is gone (waiting up to 5 s), recycles
/// the group into the pool or removes it. Blocking.
pub fn release(cg: Cgroup) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cg.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    if !cg.is_empty() {
        tracing::warn!(dirs = ?cg.dirs, "a sandbox cgroup still has processes; leaving it");
        return;
    }
    if let Some(cg) = keep(cg) {
        cg.remove();
    }
}

/// Removes empty `flotilla-sandbox-PID-N` groups whose PID is not alive.
fn sweep_stale() {
    let Ok(own) = own_cgroups() else {
        return;
    };
    let mut parents = Vec::new();
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        if let Some(rel) = own.get("") {
            parents.push(Path::new(ROOT).join(rel.trim_start_matches('/')));
        }
    } else {
        parents.extend(v1_dir(&own, "pids"));
        parents.extend(v1_dir(&own, "memory"));
    }
    for parent in parents {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name
                .to_str()
                .and_then(|n| n.strip_prefix("flotilla-sandbox-"))
            else {
                continue;
            };
            let pid = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}
/// Controller list ("" for the unified hierarchy) -> path, from /proc/self/cgroup.
fn own_cgroups() -> std::io::Result<std::collections::HashMap<String, String>> {
    let text = fs::read_to_string("/proc/self/cgroup")?;
    let mut map = std::collections::HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if controllers.is_empty() {
            map.insert(String::new(), path.to_string());
        }
        for c in controllers.split(',') {
            map.insert(c.to_string(), path.to_string());
        }
    }
    Ok(map)
}

fn v1_dir(own: &std::collections::HashMap<String, String>, controller: &str) -> Option<PathBuf> {
    let rel = own.get(controller)?;
    let mount = Path::new(ROOT).join(controller);
    if !mount.join("cgroup.procs").exists() {
        return None;
    }
    Some(mount.join(rel.trim_start_matches('/')))
}

fn mkdir(dir: &Path) -> Result<(), String> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(format!("creating {}: {err}", dir.display())),
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|err| format!("writing {value} to {}: {err}", path.display()))
}
