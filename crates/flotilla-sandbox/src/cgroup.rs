//! Cgroup limits for a whole sandbox: `pids.max` (a fork bomb stops there)
//! and memory (a memory bomb is killed there, not by the host's OOM killer).
//!
//! Works with cgroup v2 (unified) and v1 (`pids` and `memory` controllers).
//! The sandbox helper creates the group and moves itself in before entering
//! the namespaces; its children inherit it. Where the cgroup filesystem is
//! not writable (a non-root daemon without systemd delegation), there are no
//! cgroup limits and the sandbox says so.

use std::fs;
use std::path::{Path, PathBuf};

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

impl Cgroup {
    /// Creates the group with `limits` and moves the calling process into it.
    pub fn create(limits: &SandboxLimits) -> Result<Cgroup, String> {
        let name = format!("flotilla-sandbox-{}", std::process::id());
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
            let dir = parent.join(&name);
            let cg = Cgroup {
                dirs: vec![dir.clone()],
                version: 2,
                pids: limits.max_processes,
                memory: limits
                    .memory_bytes
                    .filter(|_| available.split_whitespace().any(|c| c == "memory")),
            };
            mkdir(&dir)?;
            let result = (|| {
                write(&dir.join("pids.max"), &limits.max_processes.to_string())?;
                if let Some(mem) = cg.memory {
                    write(&dir.join("memory.max"), &mem.to_string())?;
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                write(&dir.join("cgroup.procs"), &std::process::id().to_string())
            })();
            if let Err(err) = result {
                cg.remove();
                return Err(err);
            }
            return Ok(cg);
        }
        // cgroup v1: one hierarchy per controller.
        let pids_parent = v1_dir(&own, "pids").ok_or("no v1 pids controller mounted")?;
        let pids_dir = pids_parent.join(&name);
        mkdir(&pids_dir)?;
        let mut cg = Cgroup {
            dirs: vec![pids_dir.clone()],
            version: 1,
            pids: limits.max_processes,
            memory: None,
        };
        let result = (|| {
            write(
                &pids_dir.join("pids.max"),
                &limits.max_processes.to_string(),
            )?;
            write(
                &pids_dir.join("cgroup.procs"),
                &std::process::id().to_string(),
            )?;
            if let (Some(mem), Some(mem_parent)) = (limits.memory_bytes, v1_dir(&own, "memory")) {
                let mem_dir = mem_parent.join(&name);
                mkdir(&mem_dir)?;
                cg.dirs.push(mem_dir.clone());
                write(&mem_dir.join("memory.limit_in_bytes"), &mem.to_string())?;
                // Swap too, where accounted, so the bomb cannot hide in swap.
                let _ = write(
                    &mem_dir.join("memory.memsw.limit_in_bytes"),
                    &mem.to_string(),
                );
                write(
                    &mem_dir.join("cgroup.procs"),
                    &std::process::id().to_string(),
                )?;
                cg.memory = Some(mem);
            }
            Ok(())
        })();
        if let Err(err) = result {
            cg.remove();
            return Err(err);
        }
        Ok(cg)
    }

    /// For reports: "v1 pids=1024 memory=8589934592".
    pub fn describe(&self) -> String {
        let mut line = format!("v{} pids={}", self.version, self.pids);
        if let Some(mem) = self.memory {
            line.push_str(&format!(" memory={mem}"));
        }
        line
    }

    /// Leaves the group (back to the parent) and removes it. Called by the
    /// helper after the init (and with it every process of the sandbox) is
    /// gone.
    pub fn remove(self) {
        for dir in &self.dirs {
            if let Some(parent) = dir.parent() {
                let _ = fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
            }
        }
        for dir in &self.dirs {
            // A group empties asynchronously after its last process is
            // reaped; retry briefly.
            for _ in 0..50 {
                if fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
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
