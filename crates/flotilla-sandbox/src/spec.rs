//! What a sandbox is asked to be ([`SandboxSpec`]) and what it turned out to
//! be ([`SandboxReport`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::landlock_rules::LandlockStatus;

/// Where the sandbox's network goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NetworkMode {
    /// An empty network namespace: loopback only.
    #[default]
    None,
    /// Loopback plus one way out: an HTTP(S) proxy listening on the host at
    /// `socket` (a Unix socket), reached from inside at
    /// [`PROXY_INSIDE_ADDR`] through a forwarder.
    Proxy {
        /// The proxy's Unix socket on the host.
        socket: PathBuf,
        /// The CA bundle tools inside should trust (the proxy's interception
        /// CA followed by the system roots, see
        /// [`crate::ca::CertAuthority::write_bundle`]), a file on the host.
        /// With namespaces it is bind-mounted read-only at
        /// [`PROXY_INSIDE_CA_BUNDLE`]; in the degraded mode it is read at
        /// this host path. [`ca_bundle_path`] says which, and
        /// [`proxy_env_with_ca`] gives the variables pointing tools at it.
        #[serde(default)]
        ca_bundle: Option<PathBuf>,
    },
}

/// Where tools inside the sandbox find the egress proxy.
pub const PROXY_INSIDE_ADDR: &str = "127.0.0.1:3128";

/// Where the proxy's socket is mounted inside the sandbox.
pub const PROXY_INSIDE_SOCKET: &str = "/run/flotilla/proxy.sock";

/// Where the CA bundle of [`NetworkMode::Proxy::ca_bundle`] is mounted
/// inside the sandbox (read-only).
pub const PROXY_INSIDE_CA_BUNDLE: &str = "/run/flotilla/ca.pem";

/// Resource limits for everything that runs in one sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Processes (and threads) at once: `RLIMIT_NPROC` inside the user
    /// namespace, and the cgroup `pids` limit where cgroups are writable.
    pub max_processes: u64,
    /// Open files per process (`RLIMIT_NOFILE`).
    pub max_open_files: u64,
    /// Largest file a process may write (`RLIMIT_FSIZE`), in bytes.
    pub max_file_size_bytes: u64,
    /// Memory of the whole sandbox (cgroup `memory`), in bytes; `None` for no
    /// cgroup memory limit.
    pub memory_bytes: Option<u64>,
    /// Size of the private `/tmp` (a tmpfs, so it is memory too), in bytes.
    pub tmp_size_bytes: u64,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            max_processes: 1024,
            max_open_files: 4096,
            max_file_size_bytes: 8 << 30,
            memory_bytes: Some(8 << 30),
            tmp_size_bytes: 1 << 30,
        }
    }
}

/// Everything the sandbox helper needs to build one sandbox. It is sent to
/// the helper over the control channel, so it is plain data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// The directory the agent works in: read-write, at the same path inside.
    pub workspace: PathBuf,
    /// More read-write directories (`--write DIR`).
    pub extra_write: Vec<PathBuf>,
    /// Paths hidden from the sandbox, in addition to [`default_hidden`]:
    /// directories appear empty, files empty.
    pub deny_read: Vec<PathBuf>,
    /// Paths inside the workspace (relative) that stay read-only because they
    /// run later or configure flotilla itself.
    pub protected: Vec<PathBuf>,
    /// Network mode.
    pub network: NetworkMode,
    /// Limits.
    pub limits: SandboxLimits,
    /// Use namespaces when the kernel allows. `false` forces the degraded
    /// mode (Landlock + seccomp + rlimits), for tests and odd hosts.
    pub namespaces: bool,
    /// Refuse to start rather than degrade.
    pub required: bool,
    /// The host user's home, for the default hidden list.
    pub home: Option<PathBuf>,
}

impl SandboxSpec {
    /// A spec with the defaults: workspace read-write, no network, default
    /// limits, secrets under `home` hidden, namespaces when available.
    pub fn new(workspace: impl Into<PathBuf>) -> SandboxSpec {
        SandboxSpec {
            workspace: workspace.into(),
            extra_write: Vec::new(),
            deny_read: Vec::new(),
            protected: default_protected(),
            network: NetworkMode::None,
            limits: SandboxLimits::default(),
            namespaces: true,
            required: false,
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    /// Every path to hide: the defaults under `home` plus `deny_read`.
    pub fn hidden_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.home.as_deref().map(default_hidden).unwrap_or_default();
        paths.extend(self.deny_read.iter().cloned());
        paths
    }
}

/// Credential stores under a home directory that no sandbox may read.
pub fn default_hidden(home: &Path) -> Vec<PathBuf> {
    [
        ".ssh",
        ".aws",
        ".gnupg",
        ".config/gh",
        ".netrc",
        ".docker",
        ".kube",
        ".git-credentials",
        ".config/gcloud",
        ".azure",
        ".password-store",
        ".local/share/keyrings",
        ".pgpass",
        ".npmrc",
        ".pypirc",
        ".cargo/credentials.toml",
        ".cargo/credentials",
    ]
    .iter()
    .map(|rel| home.join(rel))
    .collect()
}

/// Workspace paths that stay read-only: code that runs later (git hooks),
/// git's own config (which can name programs to run: `core.fsmonitor`,
/// `core.sshCommand`, aliases), and flotilla's project config.
pub fn default_protected() -> Vec<PathBuf> {
    [".git/hooks", ".git/config", ".flotilla"]
        .iter()
        .map(PathBuf::from)
        .collect()
}

/// What a sandbox turned out to be: which layers hold, and what was degraded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxReport {
    /// User, mount, pid, net, ipc, uts and cgroup namespaces are in place.
    pub namespaces: bool,
    /// The filesystem view: read-only root, private /tmp, fresh /proc,
    /// minimal /dev, hidden secrets.
    pub filesystem: bool,
    /// Network: "none", "proxy", or "host" (degraded: no network namespace).
    pub network: String,
    /// Landlock, when it could be applied.
    pub landlock: Option<LandlockStatus>,
    /// The seccomp filter is installed.
    pub seccomp: bool,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// All capabilities dropped.
    pub capabilities_dropped: bool,
    /// Cgroup limits in force, e.g. "v1 pids=1024 memory=8589934592".
    pub cgroup: Option<String>,
    /// Rlimits set, e.g. "nproc=1024 nofile=4096 fsize=8589934592".
    pub rlimits: String,
    /// Hidden paths that existed and are now masked.
    pub hidden: Vec<PathBuf>,
    /// Workspace paths made read-only.
    pub protected: Vec<PathBuf>,
    /// Every way this sandbox is weaker than asked, each with its cause.
    pub degraded: Vec<String>,
    /// The pid of the sandbox's init, as the host sees it.
    pub init_pid: u32,
    /// Microseconds the helper spent building the sandbox.
    pub setup_us: u64,
    /// Microseconds since the helper started at the end of each setup
    /// phase, for finding what makes creation slow.
    #[serde(default)]
    pub phases_us: Vec<(String, u64)>,
}

impl SandboxReport {
    /// One line for logs and events.
    pub fn summary(&self) -> String {
        let mut layers = Vec::new();
        if self.namespaces {
            layers.push("namespaces".to_string());
        }
        if let Some(ll) = &self.landlock {
            if ll.abi > 0 && ll.enforcement != "not_enforced" {
                layers.push(format!("landlock(abi {})", ll.abi));
            }
        }
        if self.seccomp {
            layers.push("seccomp".to_string());
        }
        if let Some(cg) = &self.cgroup {
            layers.push(format!("cgroup({cg})"));
        }
        layers.push(format!("rlimits({})", self.rlimits));
        let mut line = format!("network={} layers={}", self.network, layers.join(","));
        if !self.degraded.is_empty() {
            line.push_str(&format!(" DEGRADED: {}", self.degraded.join("; ")));
        }
        line
    }
}

/// The variables that point tools inside a `network = proxy` sandbox at the
/// egress proxy.
pub fn proxy_env() -> Vec<(String, String)> {
    let url = format!("http://{PROXY_INSIDE_ADDR}");
    let mut env = Vec::new();
    for name in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        env.push((name.to_string(), url.clone()));
        env.push((name.to_ascii_lowercase(), url.clone()));
    }
    env.push(("NO_PROXY".into(), "localhost,127.0.0.1,::1".into()));
    env.push(("no_proxy".into(), "localhost,127.0.0.1,::1".into()));
    env
}

/// The variables of [`proxy_env`], plus the ones that make common tools
/// (OpenSSL and everything built on it, curl, git, cargo, Python
/// `requests`, Node) trust the CA bundle at `ca_bundle`, a path as seen from
/// inside the sandbox (see [`ca_bundle_path`]). Use it when the proxy
/// intercepts TLS for some hosts; the bundle also holds the system roots, so
/// hosts tunnelled untouched still verify.
pub fn proxy_env_with_ca(ca_bundle: &str) -> Vec<(String, String)> {
    let mut env = proxy_env();
    for name in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "CARGO_HTTP_CAINFO",
        "CURL_CA_BUNDLE",
    ] {
        env.push((name.to_string(), ca_bundle.to_string()));
    }
    env
}

/// Where processes inside a sandbox find the CA bundle of `mode`, for
/// [`proxy_env_with_ca`]: [`PROXY_INSIDE_CA_BUNDLE`] when the sandbox has
/// its namespaces (`report.namespaces`), the host path itself in the
/// degraded mode (no mount namespace, so nothing is mounted; Landlock lets
/// the sandbox read that one file). `None` without a proxy or a bundle.
pub fn ca_bundle_path(mode: &NetworkMode, report: &SandboxReport) -> Option<PathBuf> {
    match mode {
        NetworkMode::Proxy {
            ca_bundle: Some(host_path),
            ..
        } => Some(if report.namespaces {
            PathBuf::from(PROXY_INSIDE_CA_BUNDLE)
        } else {
            host_path.clone()
        }),
        _ => None,
    }
}

/// Explains, for the model and the user, which sandbox rule most likely
/// refused a failed command, and how the user can allow it when they mean
/// to. `output` is what the command printed; empty when nothing matches.
pub fn explain_refusal(
    output: &str,
    status: crate::ExitStatus,
    report: &SandboxReport,
) -> Vec<String> {
    let mut notes = Vec::new();
    let has = |needle: &str| output.contains(needle);
    if has("Read-only file system") {
        notes.push(
            "writes outside the workspace are refused: the host's files are read-only in the sandbox, and so are .git/hooks, .git/config and .flotilla/ in the workspace (they run or configure things later). If the user means to allow a directory, they add it to `write` under [sandbox] in config.toml (or `flotilla sandbox --write DIR`)".into(),
        );
    }
    if has("Permission denied") && report.landlock.is_some() && !report.namespaces {
        notes.push(
            "Landlock refused the access: only the workspace (and [sandbox] write directories) are writable, and only system directories are readable".into(),
        );
    }
    if has("Operation not permitted") {
        notes.push(
            "the sandbox refuses privileged operations (mount, ptrace, new namespaces, raw or netlink sockets, io_uring, kernel keyrings, module loading): they cannot be allowed from inside a session".into(),
        );
    }
    if has("Network is unreachable")
        || has("Could not resolve host")
        || has("Temporary failure in name resolution")
        || has("Name or service not known")
    {
        let how = if report.network == "proxy" {
            "only the egress proxy's allowed domains are reachable; the user can add a domain to `allow` under [sandbox.network] in config.toml"
        } else {
            "the sandbox has no network; the user can enable `mode = \"proxy\"` with an `allow` list of domains under [sandbox.network] in config.toml"
        };
        notes.push(how.into());
    }
    if has("egress to") && has("denied") {
        notes.push(
            "the egress proxy refused a domain outside its allow list (see the message above)"
                .into(),
        );
    }
    if has("File too large") || status.signal == Some(libc::SIGXFSZ) {
        notes.push(
            "the sandbox's file size limit stopped a write; the user can raise `max_file_size_mb` under [sandbox]".into(),
        );
    }
    if has("Resource temporarily unavailable") || has("fork: retry") || has("Cannot fork") {
        notes.push(
            "the sandbox's process limit may have been reached; the user can raise `max_processes` under [sandbox]".into(),
        );
    }
    if status.signal == Some(libc::SIGKILL)
        && report
            .cgroup
            .as_deref()
            .is_some_and(|c| c.contains("memory"))
    {
        notes.push(
            "killed by SIGKILL: possibly the sandbox's memory limit (the cgroup's OOM killer); the user can raise `memory_mb` under [sandbox]".into(),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn ca_bundle_env_and_path() {
        let env = proxy_env_with_ca(PROXY_INSIDE_CA_BUNDLE);
        for name in [
            "HTTPS_PROXY",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "GIT_SSL_CAINFO",
            "CARGO_HTTP_CAINFO",
            "CURL_CA_BUNDLE",
        ] {
            assert!(env.iter().any(|(k, _)| k == name), "{name}");
        }
        assert!(env
            .iter()
            .filter(|(k, _)| k.ends_with("CA_BUNDLE") || k.ends_with("CAINFO"))
            .all(|(_, v)| v == PROXY_INSIDE_CA_BUNDLE));

        let host = PathBuf::from("/var/lib/flotilla/ca-bundle.pem");
        let mode = NetworkMode::Proxy {
            socket: "/run/proxy.sock".into(),
            ca_bundle: Some(host.clone()),
        };
        let mut report = SandboxReport {
            namespaces: true,
            ..SandboxReport::default()
        };
        assert_eq!(
            ca_bundle_path(&mode, &report),
            Some(PathBuf::from(PROXY_INSIDE_CA_BUNDLE))
        );
        report.namespaces = false;
        assert_eq!(ca_bundle_path(&mode, &report), Some(host));
        assert_eq!(ca_bundle_path(&NetworkMode::None, &report), None);

        // Specs from before the field still parse.
        let old: NetworkMode =
            serde_json::from_str(r#"{"mode":"proxy","socket":"/run/proxy.sock"}"#).unwrap();
        assert_eq!(
            old,
            NetworkMode::Proxy {
                socket: "/run/proxy.sock".into(),
                ca_bundle: None
            }
        );
    }
}
