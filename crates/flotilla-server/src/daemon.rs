//! The daemon's life: one per home (a lock file), a socket that a crashed
//! daemon may have left behind replaced, sessions resumed, clean stop.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_agent::tools::ExecutorFactory;
use flotilla_fleet::{ClientFactory, FleetConfig, Supervisor};
use flotilla_protocol::DaemonStatus;
use flotilla_store::{Durability, Store, StoreError, StoreOptions};
use nix::fcntl::{Flock, FlockArg};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::api::{router, AppState};
use crate::paths::{Paths, MAX_SOCKET_PATH};
use crate::principals::{Peer, Principals};

/// Everything `serve` needs.
pub struct ServeOptions {
    /// Where things live.
    pub paths: Paths,
    /// Also listen on TCP (bearer token required).
    pub listen: Option<SocketAddr>,
    /// Supervisor settings.
    pub fleet: FleetConfig,
    /// Commit durability.
    pub durability: Durability,
    /// Where shell commands run.
    pub executor: Arc<dyn ExecutorFactory>,
    /// Model clients (tests and benchmarks inject their own).
    pub factory: Option<ClientFactory>,
    /// Retention, checkpoints, and the files whose digests are recorded.
    pub audit: AuditSettings,
}

/// The daemon's audit duties (`[audit]` in the config).
#[derive(Clone, Debug, Default)]
pub struct AuditSettings {
    /// Keep records this long (ms); older ones are cut hourly.
    pub retention_ms: Option<i64>,
    /// Append a checkpoint (a JSON line) to this file periodically.
    pub checkpoint_file: Option<std::path::PathBuf>,
    /// How often (ms); default one hour.
    pub checkpoint_every_ms: Option<i64>,
    /// Config and rule files: their SHA-256 is recorded at every start, and
    /// a change since the last start is recorded as `config.changed`.
    pub config_files: Vec<std::path::PathBuf>,
}

/// The digest of each file (`absent` when it does not exist).
fn file_digests(files: &[std::path::PathBuf]) -> serde_json::Map<String, serde_json::Value> {
    files
        .iter()
        .map(|f| {
            let digest = match std::fs::read(f) {
                Ok(bytes) => flotilla_protocol::sha256_hex(&bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "absent".to_string(),
                Err(e) => format!("unreadable: {e}"),
            };
            (f.display().to_string(), serde_json::Value::String(digest))
        })
        .collect()
}

/// Records the start, and any change of the config files since the last one.
async fn record_start(store: &Store, settings: &AuditSettings) {
    use flotilla_protocol::audit::{AuditDraft, AuditKind, AuditQuery};
    let digests = file_digests(&settings.config_files);
    let last = store
        .audit_query(AuditQuery {
            kinds: vec![AuditKind::Admin],
            action: Some("daemon.start".into()),
            descending: true,
            limit: 1,
            ..AuditQuery::default()
        })
        .await
        .ok()
        .and_then(|p| p.activities.into_iter().next())
        .and_then(|r| r.detail)
        .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
        .and_then(|d| d.get("config").and_then(|c| c.as_object()).cloned());
    let mut drafts = Vec::new();
    if let Some(before) = last {
        let changed: Vec<String> = digests
            .iter()
            .filter(|(f, d)| before.get(*f) != Some(*d))
            .map(|(f, _)| f.clone())
            .chain(before.keys().filter(|f| !digests.contains_key(*f)).cloned())
            .collect();
        if !changed.is_empty() {
            drafts.push(
                AuditDraft::new(AuditKind::Admin, "config.changed", "ok")
                    .by("daemon")
                    .on(changed.join(", "))
                    .because("the files differ from what the previous start recorded")
                    .with_detail(&serde_json::json!({ "before": before, "after": digests })),
            );
        }
    }
    drafts.push(
        AuditDraft::new(AuditKind::Admin, "daemon.start", "ok")
            .by("daemon")
            .on(format!("pid {}", std::process::id()))
            .with_detail(&serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "config": digests,
            })),
    );
    if let Err(e) = store.append_audit(drafts).await {
        tracing::error!(error = %e, "daemon start not recorded in the audit log");
    }
}

/// Appends one checkpoint to `file` (a JSON line; the file is 0600).
pub async fn write_checkpoint(
    store: &Store,
    file: &std::path::Path,
    by: &str,
) -> Result<flotilla_protocol::audit::AuditCheckpoint, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cp = store
        .audit_checkpoint(by)
        .await
        .map_err(|e| e.to_string())?;
    let line = serde_json::to_string(&cp).map_err(|e| e.to_string())?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", file.display()))?;
    f.sync_all()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(cp)
}

/// Retention cuts and periodic checkpoints, until `stop`.
fn spawn_audit_duties(store: Store, settings: AuditSettings, stop: CancellationToken) {
    if let Some(retention) = settings.retention_ms {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                match store.audit_prune(now_ms() - retention, "retention").await {
                    Ok(Some(cut)) => tracing::info!(record = cut.id, "audit retention cut"),
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "audit retention failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                }
            }
        });
    }
    if let Some(file) = settings.checkpoint_file {
        let every = settings.checkpoint_every_ms.unwrap_or(3_600_000).max(1000) as u64;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(every)) => {}
                }
                if let Err(e) = write_checkpoint(&store, &file, "daemon").await {
                    tracing::error!(error = %e, "audit checkpoint not written");
                }
            }
        });
    }
}

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Another daemon holds the lock.
    #[error("a flotilla daemon is already running for {home} (pid {pid}); stop it with `flotilla daemon stop`")]
    AlreadyRunning {
        /// The home.
        home: String,
        /// Its pid, as written in the lock file.
        pid: String,
    },
    /// The socket path is longer than Unix sockets allow.
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes; set FLOTILLA_HOME or XDG_RUNTIME_DIR to a shorter folder")]
    SocketPathTooLong(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not open.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Resuming sessions failed.
    #[error("resuming sessions failed: {0}")]
    Recover(String),
}

fn io<'a>(
    what: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> DaemonError + 'a {
    move |source| DaemonError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

fn private_dir(path: &std::path::Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(io("cannot create", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(io("cannot restrict", path))
}

/// Holds the one-daemon-per-home lock for as long as it lives.
pub struct DaemonLock {
    _lock: Flock<std::fs::File>,
}

/// Takes the home's lock, or says which daemon holds it.
pub fn acquire_lock(paths: &Paths) -> Result<DaemonLock, DaemonError> {
    use std::io::{Read, Seek, Write};
    private_dir(&paths.run_dir)?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&paths.lock)
        .map_err(io("cannot open lock file", &paths.lock))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(DaemonError::AlreadyRunning {
                home: paths.home.display().to_string(),
                pid: pid.trim().to_string(),
            });
        }
    };
    lock.set_len(0)
        .map_err(io("cannot write lock file", &paths.lock))?;
    lock.rewind()
        .map_err(io("cannot write lock file", &paths.lock))?;
    write!(lock, "{}", std::process::id()).map_err(io("cannot write lock file", &paths.lock))?;
    Ok(DaemonLock { _lock: lock })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn load_or_create_token(paths: &Paths) -> Result<String, DaemonError> {
    if let Ok(t) = std::fs::read_to_string(&paths.token) {
        let t = t.trim().to_string();
        if t.len() >= 32 {
            return Ok(t);
        }
    }
    let bytes: [u8; 32] = rand::random();
    let token = hex::encode(bytes);
    let tmp = paths.token.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("cannot write token", &tmp))?;
        f.write_all(token.as_bytes())
            .map_err(io("cannot write token", &tmp))?;
    }
    std::fs::rename(&tmp, &paths.token).map_err(io("cannot write token", &paths.token))?;
    Ok(token)
}

/// Raises the open-files soft limit to the hard limit: every session holds a
/// model connection and its tools' pipes, and 1,024 is too few for a fleet.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
            }
        }
    }
}

/// Runs the daemon until it is asked to stop (API, SIGTERM or SIGINT).
pub async fn serve(opts: ServeOptions) -> Result<(), DaemonError> {
    let paths = opts.paths.clone();
    raise_nofile_limit();
    if paths.socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(DaemonError::SocketPathTooLong(
            paths.socket.display().to_string(),
        ));
    }
    let _lock = acquire_lock(&paths)?;
    private_dir(&paths.data_dir)?;
    let principals = Principals::open_for_daemon(&paths).map_err(|e| DaemonError::Io {
        what: "cannot open the principal directory",
        path: Principals::db_path(&paths).display().to_string(),
        source: std::io::Error::other(e.to_string()),
    })?;
    // We hold the lock, so a socket file here was left by a daemon that died.
    match std::fs::remove_file(&paths.socket) {
        Ok(()) => {
            tracing::warn!(socket = %paths.socket.display(), "removed a stale socket left by a previous daemon")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove stale socket", &paths.socket)(e)),
    }
    let store = Store::open(
        &paths.database,
        StoreOptions {
            durability: opts.durability,
        },
    )?;
    record_start(&store, &opts.audit).await;
    principals.set_audit(store.clone());
    let fleet = Supervisor::new(store.clone(), opts.fleet, opts.executor, opts.factory);
    // The vault: a missing or wrong key is an error for every secret
    // operation and grant (never a silently empty vault), not for the daemon.
    let vault_dir = paths.data_dir.join("vault");
    let vault = match tokio::task::spawn_blocking(move || {
        flotilla_vault::store::Vault::open(&vault_dir)
    })
    .await
    {
        Ok(Ok(v)) => Ok(Arc::new(v)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the vault cannot be opened; secrets and grants are unavailable");
            Err(e.to_string())
        }
        Err(e) => Err(format!("opening the vault failed: {e}")),
    };
    fleet.set_vault(vault);
    // Tier checks read a principal's vetting and last MFA at each call.
    let directory = principals.clone();
    fleet.set_principal_lookup(Arc::new(move |name: &str| {
        directory.facts(name).map(|f| flotilla_policy::Principal {
            name: f.name,
            vetted: f.vetted,
            mfa_verified_ms: f.mfa_verified_ms,
        })
    }));
    let unix = UnixListener::bind(&paths.socket).map_err(io("cannot listen on", &paths.socket))?;
    std::fs::set_permissions(&paths.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot restrict", &paths.socket))?;
    let tcp = match opts.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Io {
                    what: "cannot listen on",
                    path: addr.to_string(),
                    source,
                })?,
        ),
        None => None,
    };
    let tcp_addr = match &tcp {
        Some(l) => Some(
            l.local_addr()
                .map_err(io("cannot read address of", &paths.socket))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    spawn_audit_duties(store.clone(), opts.audit.clone(), shutdown.clone());
    let status = DaemonStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms: now_ms(),
        home: paths.home.display().to_string(),
        socket: paths.socket.display().to_string(),
        tcp: tcp_addr.map(|a| a.to_string()),
        database: paths.database.display().to_string(),
        sessions_total: 0,
        sessions_active: 0,
        rss_bytes: None,
    };
    let state = AppState {
        fleet: fleet.clone(),
        status: Arc::new(status),
        shutdown: shutdown.clone(),
        principals: principals.clone(),
    };

    // Serve first, resume second: clients get answers while sessions come back.
    let recover_fleet = fleet.clone();
    let recovery = tokio::spawn(async move {
        let started = std::time::Instant::now();
        match recover_fleet.recover().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                sessions = n,
                ms = started.elapsed().as_millis() as u64,
                "resumed sessions"
            ),
            Err(e) => tracing::error!(error = %e, "resuming sessions failed"),
        }
    });

    let signals = shutdown.clone();
    let signal_store = store.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = signals.cancelled() => return,
        };
        let draft = flotilla_protocol::audit::AuditDraft::new(
            flotilla_protocol::audit::AuditKind::Admin,
            "daemon.stop",
            "ok",
        )
        .by("daemon")
        .on("daemon")
        .because(signal);
        if let Err(e) = signal_store.append_audit(vec![draft]).await {
            tracing::error!(error = %e, "daemon stop not recorded in the audit log");
        }
        signals.cancel();
    });

    let unix_app = router(state.clone());
    let stop = shutdown.clone();
    let unix_server = tokio::spawn(async move {
        axum::serve(unix, unix_app.into_make_service_with_connect_info::<Peer>())
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let tcp_server = match tcp {
        Some(listener) => {
            // The daemon's token authenticates as the owner.
            principals.set_daemon_token(&load_or_create_token(&paths)?);
            let app = router(state.clone());
            let stop = shutdown.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    tracing::info!(socket = %paths.socket.display(), tcp = ?tcp_addr, "flotilla daemon listening");

    shutdown.cancelled().await;
    tracing::info!("stopping: sessions will resume on the next start");
    recovery.abort();
    fleet.shutdown().await;
    let _ = unix_server.await;
    if let Some(t) = tcp_server {
        let _ = t.await;
    }
    store.close();
    let _ = std::fs::remove_file(&paths.socket);
    Ok(())
}
