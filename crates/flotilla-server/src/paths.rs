//! Where flotilla keeps its config, data and socket.
//!
//! `FLOTILLA_HOME` puts everything under one folder (tests use it);
//! otherwise the XDG base directories are used.

use std::path::{Path, PathBuf};

/// The files and folders of one flotilla home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `FLOTILLA_HOME`, or the config folder.
    pub home: PathBuf,
    /// User config file.
    pub config_file: PathBuf,
    /// Data folder (database).
    pub data_dir: PathBuf,
    /// The event database.
    pub database: PathBuf,
    /// Runtime folder (socket, lock, token).
    pub run_dir: PathBuf,
    /// The daemon's Unix socket.
    pub socket: PathBuf,
    /// The lock file that makes one daemon per home.
    pub lock: PathBuf,
    /// Bearer token for TCP clients.
    pub token: PathBuf,
    /// The daemon's log file when started in the background.
    pub log_file: PathBuf,
    /// Fleet workers' git worktrees: outside the data folder, which every
    /// sandbox hides.
    pub worktrees: PathBuf,
}

/// Longest Unix socket path Linux accepts (sun_path is 108 bytes with the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

impl Paths {
    /// Paths from the environment.
    pub fn from_env() -> Paths {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(home) = var("FLOTILLA_HOME") {
            return Paths::under(&home);
        }
        let user_home = var("HOME").unwrap_or_else(|| PathBuf::from("/tmp"));
        let config = var("XDG_CONFIG_HOME")
            .unwrap_or_else(|| user_home.join(".config"))
            .join("flotilla");
        let data = var("XDG_DATA_HOME")
            .unwrap_or_else(|| user_home.join(".local/share"))
            .join("flotilla");
        let run = var("XDG_RUNTIME_DIR")
            .map(|d| d.join("flotilla"))
            .unwrap_or_else(|| {
                var("XDG_STATE_HOME")
                    .unwrap_or_else(|| user_home.join(".local/state"))
                    .join("flotilla/run")
            });
        let state = var("XDG_STATE_HOME").unwrap_or_else(|| user_home.join(".local/state"));
        Paths {
            worktrees: state.join("flotilla/worktrees"),
            config_file: config.join("config.toml"),
            home: config,
            database: data.join("flotilla.db"),
            log_file: data.join("daemon.log"),
            data_dir: data,
            socket: run.join("flotilla.sock"),
            lock: run.join("flotilla.lock"),
            token: run.join("token"),
            run_dir: run,
        }
    }

    /// Everything under one folder.
    pub fn under(home: &Path) -> Paths {
        let data = home.join("data");
        let run = home.join("run");
        Paths {
            worktrees: home.join("worktrees"),
            home: home.to_path_buf(),
            config_file: home.join("config.toml"),
            database: data.join("flotilla.db"),
            log_file: data.join("daemon.log"),
            data_dir: data,
            socket: run.join("flotilla.sock"),
            lock: run.join("flotilla.lock"),
            token: run.join("token"),
            run_dir: run,
        }
    }
}
