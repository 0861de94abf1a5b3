//! The machines a local model can run on: this one, detected, and the
//! `[[machines]]` of the config.
//!
//! Detection, in order: NVIDIA GPUs through `nvidia-smi` (the driver's own
//! tool, present wherever the driver is; NVML is the library behind it),
//! AMD GPUs through the amdgpu driver's sysfs files, Apple silicon through
//! `sysctl` (the GPU's wired-memory limit, else the share of RAM macOS lets
//! the GPU use), else the host's RAM. Memory bandwidth is not something a
//! driver reports; it comes from a table of known devices, and is marked
//! `assumed` when the device is not in it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};

const GIB: f64 = (1u64 << 30) as f64;

/// What a machine runs models on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    /// An NVIDIA GPU.
    Cuda,
    /// An AMD GPU.
    Rocm,
    /// Apple silicon (unified memory).
    Metal,
    /// The CPU and its RAM.
    Cpu,
}

impl MachineKind {
    /// The name used in config and output.
    pub fn name(self) -> &'static str {
        match self {
            MachineKind::Cuda => "cuda",
            MachineKind::Rocm => "rocm",
            MachineKind::Metal => "metal",
            MachineKind::Cpu => "cpu",
        }
    }

    /// A GPU with its own memory: layers can be split with the host.
    pub fn is_discrete(self) -> bool {
        matches!(self, MachineKind::Cuda | MachineKind::Rocm)
    }

    /// Bandwidth assumed when nothing better is known, GB/s.
    fn default_bandwidth(self) -> f64 {
        match self {
            MachineKind::Cuda | MachineKind::Rocm => 500.0,
            MachineKind::Metal => 200.0,
            MachineKind::Cpu => DEFAULT_HOST_BANDWIDTH,
        }
    }
}

/// Host RAM bandwidth assumed when not configured (dual-channel DDR4/DDR5),
/// GB/s.
pub const DEFAULT_HOST_BANDWIDTH: f64 = 50.0;

/// A machine a model may be placed on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    /// Its name (`rtx3060`, or `local-cuda0` for a detected one).
    pub name: String,
    /// cuda, rocm, metal, cpu.
    pub kind: MachineKind,
    /// The memory budget the model may use, bytes.
    pub memory_bytes: u64,
    /// Memory bandwidth, GB/s.
    pub bandwidth_gbps: f64,
    /// Whether the bandwidth is a default rather than known.
    pub bandwidth_assumed: bool,
    /// The host RAM's bandwidth, for the layers a GPU cannot hold, GB/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_bandwidth_gbps: Option<f64>,
    /// Where its model server listens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Requests its model server serves at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// The device, as its driver names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `detected` or `config`.
    pub source: &'static str,
    /// How the budget was found (detected machines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Machine {
    /// The host bandwidth (configured, else the default).
    pub fn host_bandwidth_gbps(&self) -> f64 {
        self.host_bandwidth_gbps.unwrap_or(DEFAULT_HOST_BANDWIDTH)
    }
}

/// One `[[machines]]` entry of `config.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Its name.
    pub name: String,
    /// cuda | rocm | metal | cpu.
    pub kind: MachineKind,
    /// The memory budget the model may use, GB (10^9 bytes).
    pub memory_gb: f64,
    /// Memory bandwidth, GB/s (a default for the kind when absent).
    pub bandwidth_gbps: Option<f64>,
    /// Host RAM bandwidth for layers that spill, GB/s.
    pub host_bandwidth_gbps: Option<f64>,
    /// Where its model server listens (`http://box:8080/v1`).
    pub endpoint: Option<String>,
    /// Requests its model server serves at once.
    pub slots: Option<u32>,
}

impl MachineConfig {
    /// Checks the entry and makes it a [`Machine`].
    pub fn to_machine(&self) -> Result<Machine, String> {
        let name = self.name.trim();
        if name.is_empty() {
            return Err("a [[machines]] entry has an empty name".into());
        }
        if !(self.memory_gb.is_finite() && self.memory_gb > 0.0 && self.memory_gb < 1e6) {
            return Err(format!(
                "machine {name:?}: memory_gb must be a positive number of GB, not {}",
                self.memory_gb
            ));
        }
        for (what, v) in [
            ("bandwidth_gbps", self.bandwidth_gbps),
            ("host_bandwidth_gbps", self.host_bandwidth_gbps),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(format!(
                        "machine {name:?}: {what} must be positive, not {v}"
                    ));
                }
            }
        }
        if let Some(url) = &self.endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "machine {name:?}: endpoint {url:?} must start with http:// or https://"
                ));
            }
        }
        if self.slots == Some(0) {
            return Err(format!("machine {name:?}: slots must be at least 1"));
        }
        Ok(Machine {
            name: name.to_owned(),
            kind: self.kind,
            memory_bytes: (self.memory_gb * 1e9) as u64,
            bandwidth_gbps: self
                .bandwidth_gbps
                .unwrap_or_else(|| self.kind.default_bandwidth()),
            bandwidth_assumed: self.bandwidth_gbps.is_none(),
            host_bandwidth_gbps: self.host_bandwidth_gbps,
            endpoint: self.endpoint.clone(),
            slots: self.slots,
            device: None,
            source: "config",
            note: None,
        })
    }
}

/// Checks a config's machines: each valid, names unique.
pub fn from_config(entries: &[MachineConfig]) -> Result<Vec<Machine>, String> {
    let mut out: Vec<Machine> = Vec::with_capacity(entries.len());
    for e in entries {
        let m = e.to_machine()?;
        if out.iter().any(|o| o.name == m.name) {
            return Err(format!("two [[machines]] entries are named {:?}", m.name));
        }
        out.push(m);
    }
    Ok(out)
}

/// Peak memory bandwidth of known devices, GB/s (vendor specifications).
fn known_bandwidth(device: &str) -> Option<f64> {
    let d = device.to_ascii_lowercase();
    // More specific names first: "rtx 4080 super" before "rtx 4080".
    const TABLE: &[(&str, f64)] = &[
        ("h200", 4800.0),
        ("h100 nvl", 3900.0),
        ("h100 pcie", 2000.0),
        ("h100", 3350.0),
        ("gh200", 4000.0),
        ("b200", 8000.0),
        ("a100-sxm4-80gb", 2039.0),
        ("a100 80gb pcie", 1935.0),
        ("a100", 1555.0),
        ("l40s", 864.0),
        ("l40", 864.0),
        ("l4", 300.0),
        ("a10g", 600.0),
        ("a10", 600.0),
        ("t4", 320.0),
        ("v100", 900.0),
        ("rtx 5090", 1792.0),
        ("rtx 5080", 960.0),
        ("rtx 5070 ti", 896.0),
        ("rtx 5070", 672.0),
        ("rtx 4090", 1008.0),
        ("rtx 4080 super", 736.0),
        ("rtx 4080", 717.0),
        ("rtx 4070 ti super", 672.0),
        ("rtx 4070 ti", 504.0),
        ("rtx 4070", 504.0),
        ("rtx 4060 ti", 288.0),
        ("rtx 4060", 272.0),
        ("rtx 3090 ti", 1008.0),
        ("rtx 3090", 936.0),
        ("rtx 3080 ti", 912.0),
        ("rtx 3080", 760.0),
        ("rtx 3070", 448.0),
        ("rtx 3060 ti", 448.0),
        ("rtx 3060", 360.0),
        ("rtx a6000", 768.0),
        ("rtx 6000 ada", 960.0),
        ("mi300x", 5300.0),
        ("mi250", 3277.0),
        ("rx 7900 xtx", 960.0),
        ("rx 7900 xt", 800.0),
        ("m4 max", 546.0),
        ("m4 pro", 273.0),
        ("m4", 120.0),
        ("m3 ultra", 819.0),
        ("m3 max", 400.0),
        ("m3 pro", 150.0),
        ("m3", 100.0),
        ("m2 ultra", 800.0),
        ("m2 max", 400.0),
        ("m2 pro", 200.0),
        ("m2", 100.0),
        ("m1 ultra", 800.0),
        ("m1 max", 400.0),
        ("m1 pro", 200.0),
        ("m1", 68.0),
    ];
    TABLE
        .iter()
        .find(|(name, _)| {
            d.match_indices(name).any(|(i, _)| {
                // Whole words only ("m1" is not in "m10").
                let after = d[i + name.len()..].chars().next();
                let before = d[..i].chars().next_back();
                !after.is_some_and(|c| c.is_ascii_alphanumeric())
                    && !before.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        })
        .map(|(_, bw)| *bw)
}

/// Runs a probe command with a time limit; its stdout, if it succeeded.
fn probe(program: &str, args: &[&str]) -> Option<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let mut out = String::new();
    use std::io::Read as _;
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Parses `nvidia-smi --query-gpu=index,name,memory.total,memory.used
/// --format=csv,noheader,nounits` (MiB).
pub fn parse_nvidia_smi(out: &str) -> Vec<Machine> {
    out.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, total, used, ..] = f.as_slice() else {
                return None;
            };
            let total_mib: u64 = total.parse().ok()?;
            let used_mib: u64 = used.parse().unwrap_or(0);
            let bw = known_bandwidth(name);
            Some(Machine {
                name: format!("local-cuda{index}"),
                kind: MachineKind::Cuda,
                memory_bytes: total_mib << 20,
                bandwidth_gbps: bw.unwrap_or(MachineKind::Cuda.default_bandwidth()),
                bandwidth_assumed: bw.is_none(),
                host_bandwidth_gbps: None,
                endpoint: None,
                slots: None,
                device: Some((*name).to_owned()),
                source: "detected",
                note: Some(format!(
                    "nvidia-smi: {:.1} GiB total, {:.1} GiB in use now",
                    (total_mib << 20) as f64 / GIB,
                    (used_mib << 20) as f64 / GIB
                )),
            })
        })
        .collect()
}

/// AMD GPUs of the amdgpu driver under `drm` (normally `/sys/class/drm`).
pub fn detect_amd(drm: &Path) -> Vec<Machine> {
    let Ok(dir) = std::fs::read_dir(drm) else {
        return Vec::new();
    };
    let mut cards: Vec<_> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("card") && n[4..].chars().all(|c| c.is_ascii_digit())
            })
        })
        .collect();
    cards.sort();
    let mut out = Vec::new();
    for card in cards {
        let dev = card.join("device");
        let read = |f: &str| std::fs::read_to_string(dev.join(f)).ok();
        if read("vendor").map(|v| v.trim().to_ascii_lowercase()) != Some("0x1002".into()) {
            continue;
        }
        let Some(total) = read("mem_info_vram_total").and_then(|v| v.trim().parse::<u64>().ok())
        else {
            continue;
        };
        let name = read("product_name")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "AMD GPU".to_owned());
        let bw = known_bandwidth(&name);
        out.push(Machine {
            name: format!("local-rocm{}", out.len()),
            kind: MachineKind::Rocm,
            memory_bytes: total,
            bandwidth_gbps: bw.unwrap_or(MachineKind::Rocm.default_bandwidth()),
            bandwidth_assumed: bw.is_none(),
            host_bandwidth_gbps: None,
            endpoint: None,
            slots: None,
            device: Some(name),
            source: "detected",
            note: Some(format!("amdgpu sysfs: {:.1} GiB VRAM", total as f64 / GIB)),
        });
    }
    out
}

/// The GPU budget of an Apple machine: `iogpu.wired_limit_mb` when set,
/// else the share of RAM macOS gives the GPU by default (about two thirds
/// up to 36 GB, three quarters above; `recommendedMaxWorkingSetSize`).
pub fn apple_budget(memsize: u64, wired_limit_mb: Option<u64>) -> (u64, String) {
    match wired_limit_mb.filter(|&m| m > 0) {
        Some(mb) => (mb << 20, format!("iogpu.wired_limit_mb = {mb}")),
        None => {
            let share = if memsize > 36 * (1 << 30) {
                0.75
            } else {
                2.0 / 3.0
            };
            (
                (memsize as f64 * share) as u64,
                format!(
                    "{:.0}% of {:.0} GiB RAM (macOS's default GPU working set)",
                    share * 100.0,
                    memsize as f64 / GIB
                ),
            )
        }
    }
}

/// This host's RAM (`/proc/meminfo`): total and available, bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    let total = field("MemTotal:")?;
    Some((total, field("MemAvailable:").unwrap_or(total)))
}

/// Detects this machine: its GPUs, else its RAM.
pub fn detect() -> Vec<Machine> {
    let nvidia = probe(
        "nvidia-smi",
        &[
            "--query-gpu=index,name,memory.total,memory.used",
            "--format=csv,noheader,nounits",
        ],
    )
    .map(|o| parse_nvidia_smi(&o))
    .unwrap_or_default();
    if !nvidia.is_empty() {
        return nvidia;
    }
    let amd = detect_amd(Path::new("/sys/class/drm"));
    if !amd.is_empty() {
        return amd;
    }
    if cfg!(target_os = "macos") {
        let memsize = probe("sysctl", &["-n", "hw.memsize"]).and_then(|s| s.trim().parse().ok());
        if let Some(memsize) = memsize {
            let wired = probe("sysctl", &["-n", "iogpu.wired_limit_mb"])
                .and_then(|s| s.trim().parse().ok());
            let chip =
                probe("sysctl", &["-n", "machdep.cpu.brand_string"]).map(|s| s.trim().to_owned());
            let (budget, note) = apple_budget(memsize, wired);
            let bw = chip.as_deref().and_then(known_bandwidth);
            return vec![Machine {
                name: "local-metal".into(),
                kind: MachineKind::Metal,
                memory_bytes: budget,
                bandwidth_gbps: bw.unwrap_or(MachineKind::Metal.default_bandwidth()),
                bandwidth_assumed: bw.is_none(),
                host_bandwidth_gbps: None,
                endpoint: None,
                slots: None,
                device: chip,
                source: "detected",
                note: Some(note),
            }];
        }
    }
    let (total, available) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    vec![Machine {
        name: "local-cpu".into(),
        kind: MachineKind::Cpu,
        memory_bytes: available,
        bandwidth_gbps: DEFAULT_HOST_BANDWIDTH,
        bandwidth_assumed: true,
        host_bandwidth_gbps: None,
        endpoint: None,
        slots: None,
        device: None,
        source: "detected",
        note: Some(format!(
            "RAM: {:.1} GiB available now of {:.1} GiB",
            available as f64 / GIB,
            total as f64 / GIB
        )),
    }]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines() {
        let m = parse_nvidia_smi(
            "0, NVIDIA GeForce RTX 3060, 12288, 301\n1, NVIDIA H100 80GB HBM3, 81559, 0\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].name, "local-cuda0");
        assert_eq!(m[0].memory_bytes, 12288 << 20);
        assert_eq!(m[0].bandwidth_gbps, 360.0);
        assert!(!m[0].bandwidth_assumed);
        assert_eq!(m[1].bandwidth_gbps, 3350.0);
        assert!(parse_nvidia_smi("garbage\n\n").is_empty());
    }

    #[test]
    fn bandwidth_matches_whole_words() {
        assert_eq!(known_bandwidth("NVIDIA GeForce RTX 3060 Ti"), Some(448.0));
        assert_eq!(known_bandwidth("Apple M2 Max"), Some(400.0));
        assert_eq!(known_bandwidth("Apple M1"), Some(68.0));
        assert_eq!(known_bandwidth("Mystery M10"), None);
        assert_eq!(known_bandwidth("NVIDIA L4"), Some(300.0));
        assert_eq!(known_bandwidth("NVIDIA L40S"), Some(864.0));
    }

    #[test]
    fn apple_budgets() {
        let gib = 1u64 << 30;
        let (b, _) = apple_budget(36 * gib, None);
        assert_eq!(b, 24 * gib);
        let (b, _) = apple_budget(64 * gib, None);
        assert_eq!(b, 48 * gib);
        let (b, note) = apple_budget(64 * gib, Some(57_344));
        assert_eq!(b, 57_344 << 20);
        assert!(note.contains("wired_limit"));
    }

    #[test]
    fn amd_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("card0/device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x1002\n").unwrap();
        std::fs::write(dev.join("mem_info_vram_total"), "25753026560\n").unwrap();
        std::fs::write(dev.join("product_name"), "Radeon RX 7900 XTX\n").unwrap();
        // An Intel card and a connector entry are not GPUs of ours.
        let intel = dir.path().join("card1/device");
        std::fs::create_dir_all(&intel).unwrap();
        std::fs::write(intel.join("vendor"), "0x8086\n").unwrap();
        std::fs::create_dir_all(dir.path().join("card0-DP-1")).unwrap();
        let m = detect_amd(dir.path());
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kind, MachineKind::Rocm);
        assert_eq!(m[0].memory_bytes, 25_753_026_560);
        assert_eq!(m[0].bandwidth_gbps, 960.0);
    }

    #[test]
    fn meminfo() {
        let t = "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(
            parse_meminfo(t),
            Some((24_576_000 * 1024, 20_000_000 * 1024))
        );
        assert_eq!(parse_meminfo("nothing"), None);
    }

    #[test]
    fn config_entries_are_checked() {
        let ok = MachineConfig {
            name: "rtx3060".into(),
            kind: MachineKind::Cuda,
            memory_gb: 12.0,
            bandwidth_gbps: Some(360.0),
            host_bandwidth_gbps: None,
            endpoint: Some("http://box:8080/v1".into()),
            slots: Some(2),
        };
        let m = ok.to_machine().unwrap();
        assert_eq!(m.memory_bytes, 12_000_000_000);
        assert_eq!(m.source, "config");
        let bad = |f: &dyn Fn(&mut MachineConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.to_machine().unwrap_err()
        };
        assert!(bad(&|c| c.memory_gb = 0.0).contains("memory_gb"));
        assert!(bad(&|c| c.memory_gb = f64::NAN).contains("memory_gb"));
        assert!(bad(&|c| c.bandwidth_gbps = Some(-1.0)).contains("bandwidth_gbps"));
        assert!(bad(&|c| c.endpoint = Some("box:8080".into())).contains("http://"));
        assert!(bad(&|c| c.slots = Some(0)).contains("slots"));
        assert!(bad(&|c| c.name = " ".into()).contains("empty name"));
        let err = from_config(&[ok.clone(), ok]).unwrap_err();
        assert!(err.contains("two [[machines]]"));
    }
}
