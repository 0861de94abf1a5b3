//! The durable, hash-chained event log of flotilla sessions, on SQLite.
//!
//! Invariants (see `ARCHITECTURE.md`):
//! - the log is append-only: nothing here updates or deletes an event;
//! - per session, sequence numbers start at 1 and have no gaps: one writer
//!   thread assigns them, so concurrent appenders cannot race;
//! - each event stores its canonical bytes and their SHA-256; the bytes hold
//!   the previous event's hash, so the log is its own audit chain;
//! - [`Store::append`] returns only after the transaction holding the events
//!   has committed (fsynced with [`Durability::Full`], the default);
//! - appends from many sessions that arrive together share one commit
//!   (group commit), which is what makes durable commits cheap at scale;
//! - the `sessions` table is a projection: derived from events in the same
//!   transaction, and [`Store::rebuild_projections`] recomputes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_protocol::audit::{
    AuditCheckpoint, AuditDraft, AuditPage, AuditQuery, AuditRecord, VerifyReport,
};
use flotilla_protocol::{
    canonical_event_bytes, decode_canonical_event, sha256_hex, Event, EventKind, SessionId,
    SessionInfo, SessionState, GENESIS_HASH,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

mod audit;
pub use audit::{VerifyOptions, CHECKPOINT_ACTION, PRUNE_ACTION};
use flotilla_protocol::audit::AuditChain;
use tokio::sync::{broadcast, oneshot};

/// `PRAGMA application_id` of flotilla databases ("FLOT").
pub const APPLICATION_ID: i32 = 0x464c_4f54;
/// Schema version this build writes.
pub const SCHEMA_VERSION: i32 = 5;
/// Most appends committed in one transaction.
const MAX_BATCH: usize = 2048;
/// Most concurrent readers.
const MAX_READERS: usize = 4;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync at every commit: survives power loss (the default).
    #[default]
    Full,
    /// Survives a crash of the daemon (kill -9), not of the machine.
    Normal,
    /// No syncing at all; for benchmarks that want to exclude the disk.
    Off,
}

/// Options for [`Store::open`].
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Commit durability.
    pub durability: Durability,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but is not a flotilla database.
    #[error("{path} is not a flotilla database ({detail}); move it away or point FLOTILLA_HOME elsewhere, nothing was changed")]
    NotFlotilla {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// Written by a newer flotilla.
    #[error("{path} has schema version {found}, newer than this flotilla understands ({SCHEMA_VERSION}); upgrade flotilla")]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i32,
    },
    /// An append for a session that has no `session_created` event.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// A `session_created` for a session that exists already.
    #[error("session {0} already exists")]
    SessionExists(SessionId),
    /// A stored event does not decode.
    #[error("event {session}#{seq} is corrupt: {detail}")]
    Corrupt {
        /// Session.
        session: String,
        /// Sequence number.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
    /// SQLite failed.
    #[error("database error on {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// The transaction could not commit; nothing of it is on disk.
    #[error("could not commit events: {0}")]
    CommitFailed(String),
    /// The writer thread is gone (the store is shutting down).
    #[error("the event store is closed")]
    Closed,
    /// Encoding an event failed.
    #[error("could not encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A broken link found by [`Store::verify_session`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokenLink {
    /// Sequence number of the first event that does not verify.
    pub seq: u64,
    /// What is wrong with it.
    pub detail: String,
}

/// Result of verifying one session's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// Events checked.
    pub events: u64,
    /// Hash of the last event checked.
    pub head: String,
    /// The first problem, if any.
    pub broken: Option<BrokenLink>,
}

enum WriteCmd {
    Append {
        session: SessionId,
        events: Vec<EventKind>,
        reply: oneshot::Sender<Result<Vec<Event>>>,
    },
    /// Daemon-chain records; `reply` is `None` for fire-and-forget.
    Audit {
        drafts: Vec<AuditDraft>,
        reply: Option<oneshot::Sender<Result<Vec<AuditRecord>>>>,
    },
    Prune {
        before_ms: i64,
        by: String,
        reply: oneshot::Sender<Result<Option<AuditRecord>>>,
    },
    Checkpoint {
        by: String,
        reply: oneshot::Sender<Result<AuditCheckpoint>>,
    },
    Rebuild {
        reply: oneshot::Sender<Result<u64>>,
    },
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Option<mpsc::Sender<WriteCmd>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    readers: Mutex<Vec<Connection>>,
    /// Bounds concurrent reads (and so reader connections and blocking threads).
    read_permits: tokio::sync::Semaphore,
    live: broadcast::Sender<Arc<Event>>,
}

/// Handle to the event store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    gid        INTEGER PRIMARY KEY,
    session_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    body       BLOB    NOT NULL,
    UNIQUE (session_id, seq)
);
CREATE TABLE IF NOT EXISTS sessions (
    id                TEXT PRIMARY KEY,
    state             TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    workspace         TEXT    NOT NULL,
    task              TEXT    NOT NULL,
    limits            TEXT    NOT NULL,
    created_ms        INTEGER NOT NULL,
    updated_ms        INTEGER NOT NULL,
    turns             INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd          REAL    NOT NULL DEFAULT 0,
    last_seq          INTEGER NOT NULL,
    final_answer      TEXT,
    reason            TEXT,
    principal         TEXT,
    agent             TEXT,
    parent            TEXT,
    root              TEXT,
    name              TEXT,
    machine           TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_state ON sessions (state);
CREATE INDEX IF NOT EXISTS sessions_by_created ON sessions (created_ms);
"#;

impl Store {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    ///
    /// A file that is not a flotilla database is refused without being changed.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let existed = path.exists()
            && std::fs::metadata(&path)
                .map(|m| m.len() > 0)
                .unwrap_or(false);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        check_identity(&conn, &path, existed)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        let sync = match options.durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        if !existed {
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(sql)?;
        }
        let found: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        migrate(&conn, &path, existed.then_some(found))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
        let audit_state = audit::AuditState::load(&conn, &path)?;

        let (tx, rx) = mpsc::channel();
        let (live, _) = broadcast::channel(8192);
        let writer = Writer {
            conn,
            path: path.clone(),
            heads: HashMap::new(),
            live: live.clone(),
            audit: audit_state,
        };
        let handle = std::thread::Builder::new()
            .name("flotilla-store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Sqlite {
                path: path.clone(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                writer: Mutex::new(Some(tx)),
                writer_thread: Mutex::new(Some(handle)),
                readers: Mutex::new(Vec::new()),
                read_permits: tokio::sync::Semaphore::new(MAX_READERS),
                live,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends events to a session's log and returns them once committed.
    ///
    /// The first event of a session must be [`EventKind::SessionCreated`].
    pub async fn append(&self, session: &SessionId, events: Vec<EventKind>) -> Result<Vec<Event>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteCmd::Append {
            session: session.clone(),
            events,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends one event; see [`Store::append`].
    pub async fn append_one(&self, session: &SessionId, event: EventKind) -> Result<Event> {
        let mut out = self.append(session, vec![event]).await?;
        out.pop().ok_or(StoreError::Closed)
    }

    fn send(&self, cmd: WriteCmd) -> Result<()> {
        let guard = self.inner.writer.lock().map_err(|_| StoreError::Closed)?;
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(cmd)
            .map_err(|_| StoreError::Closed)
    }

    /// Every committed event of every session, as it commits.
    ///
    /// A receiver that falls behind gets `Lagged` and should re-read from
    /// the database with [`Store::events`].
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.live.subscribe()
    }

    /// Recomputes the `sessions` projection from the events.
    pub async fn rebuild_projections(&self) -> Result<u64> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteCmd::Rebuild { reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer after it has committed what it holds.
    pub fn close(&self) {
        if let Ok(mut w) = self.inner.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.inner.writer_thread.lock() {
            if let Some(handle) = t.take() {
                let _ = handle.join();
            }
        }
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Path) -> Result<T> + Send + 'static,
    {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = inner.readers.lock().ok().and_then(|mut r| r.pop());
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&inner.path)?,
            };
            let result = f(&conn, &inner.path);
            // A reader left inside a transaction (a failed rollback) would
            // serve an old snapshot forever: it is not reused.
            if !conn.is_autocommit() {
                return result;
            }
            if let Ok(mut r) = inner.readers.lock() {
                if r.len() < MAX_READERS {
                    r.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// Events of `session` with `seq > after`, at most `limit`.
    pub async fn events(&self, session: &SessionId, after: u64, limit: u32) -> Result<Vec<Event>> {
        let session = session.clone();
        self.read(move |conn, path| read_events(conn, path, &session, after, limit))
            .await
    }

    /// One session's projection.
    pub async fn session(&self, id: &SessionId) -> Result<Option<SessionInfo>> {
        let id = id.clone();
        self.read(move |conn, path| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"
                ))
                .map_err(|e| sqlite(path, e))?;
            stmt.query_row(params![id.as_str()], row_to_session)
                .optional()
                .map_err(|e| sqlite(path, e))
        })
        .await
    }

    /// Sessions, newest first; with `states`, only those in one of them.
    pub async fn sessions(&self, states: Option<Vec<SessionState>>) -> Result<Vec<SessionInfo>> {
        self.read(move |conn, path| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions ORDER BY created_ms DESC, id"
                ))
                .map_err(|e| sqlite(path, e))?;
            let rows = stmt
                .query_map([], row_to_session)
                .map_err(|e| sqlite(path, e))?;
            let mut out = Vec::new();
            for row in rows {
                let info = row.map_err(|e| sqlite(path, e))?;
                if states.as_ref().is_none_or(|s| s.contains(&info.state)) {
                    out.push(info);
                }
            }
            Ok(out)
        })
        .await
    }

    /// A fleet's tree: the planner `root` and every agent below it, oldest
    /// first.
    pub async fn fleet_tree(&self, root: &SessionId) -> Result<Vec<SessionInfo>> {
        let root = root.clone();
        self.read(move |conn, path| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {SESSION_COLUMNS} FROM sessions WHERE root = ?1 ORDER BY created_ms, id"
                ))
                .map_err(|e| sqlite(path, e))?;
            let rows = stmt
                .query_map(params![root.as_str()], row_to_session)
                .map_err(|e| sqlite(path, e))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|e| sqlite(path, e))
        })
        .await
    }

    /// Number of sessions.
    pub async fn session_count(&self) -> Result<u64> {
        self.read(|conn, path| {
            conn.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(|e| sqlite(path, e))
        })
        .await
    }

    /// Appends daemon-chain records (authentication, admin actions) and
    /// returns them once committed.
    pub async fn append_audit(&self, drafts: Vec<AuditDraft>) -> Result<Vec<AuditRecord>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteCmd::Audit {
            drafts,
            reply: Some(reply),
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues a daemon-chain record without waiting for its commit (for the
    /// hot request path); it commits with the writer's next batch.
    pub fn record_audit(&self, draft: AuditDraft) {
        if let Err(e) = self.send(WriteCmd::Audit {
            drafts: vec![draft],
            reply: None,
        }) {
            tracing::error!(error = %e, "audit record not queued");
        }
    }

    /// One page of audit records.
    pub async fn audit_query(&self, query: AuditQuery) -> Result<AuditPage> {
        self.read(move |conn, path| audit::query(conn, path, &query))
            .await
    }

    /// Recomputes the audit chains, their links to events, the event
    /// chains, and checks the given checkpoints.
    pub async fn audit_verify(&self, options: VerifyOptions) -> Result<VerifyReport> {
        self.read(move |conn, path| audit::verify(conn, path, &options))
            .await
    }

    /// Removes audit records older than `before_ms` from both chains and
    /// records the cut; `None` when nothing was that old.
    pub async fn audit_prune(&self, before_ms: i64, by: &str) -> Result<Option<AuditRecord>> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteCmd::Prune {
            before_ms,
            by: by.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Takes a checkpoint (the chain heads and the event count), records
    /// that it was taken, and returns it.
    pub async fn audit_checkpoint(&self, by: &str) -> Result<AuditCheckpoint> {
        let (reply, rx) = oneshot::channel();
        self.send(WriteCmd::Checkpoint {
            by: by.to_string(),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Recomputes the hash chain of one session.
    pub async fn verify_session(&self, session: &SessionId) -> Result<ChainReport> {
        let session = session.clone();
        self.read(move |conn, path| verify_chain(conn, path, &session))
            .await
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut w) = self.writer.lock() {
            w.take();
        }
        if let Ok(mut t) = self.writer_thread.lock() {
            if let Some(handle) = t.take() {
                let _ = handle.join();
            }
        }
    }
}

fn sqlite(path: &Path, source: rusqlite::Error) -> StoreError {
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Verifies a database file without a daemon (`flotilla audit verify
/// --db FILE`): opens it read-only and changes nothing.
pub fn verify_file(path: &Path, options: &VerifyOptions) -> Result<VerifyReport> {
    if !path.exists() {
        return Err(StoreError::NotFlotilla {
            path: path.to_path_buf(),
            detail: "no such file".into(),
        });
    }
    let conn = open_reader(path)?;
    check_identity(&conn, path, true)?;
    audit::verify(&conn, path, options)
}

pub(crate) fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sqlite(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sqlite(path, e))?;
    Ok(conn)
}

fn check_identity(conn: &Connection, path: &Path, existed: bool) -> Result<()> {
    let not_ours = |detail: String| StoreError::NotFlotilla {
        path: path.to_path_buf(),
        detail,
    };
    // Reading the schema is what makes SQLite look at the file header.
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::NotADatabase => {
                not_ours("the file is not a SQLite database".into())
            }
            other => sqlite(path, other),
        })?;
    let app_id: i32 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| sqlite(path, e))?;
    if existed && tables > 0 && app_id != APPLICATION_ID {
        return Err(not_ours(format!(
            "a SQLite database with application_id {app_id:#x}, not flotilla's {APPLICATION_ID:#x}"
        )));
    }
    let version: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| sqlite(path, e))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(())
}

const SESSION_COLUMNS: &str = "id, state, model, workspace, task, limits, created_ms, updated_ms, \
     turns, prompt_tokens, completion_tokens, last_seq, final_answer, reason, cost_usd, \
     agent, parent, root, name, machine";

/// Brings a database of an older schema up to [`SCHEMA_VERSION`]: the
/// events never change; projections gain columns; the audit log is built
/// from the events already there.
fn migrate(conn: &Connection, path: &Path, found: Option<i32>) -> Result<()> {
    let sql = |e| sqlite(path, e);
    let has_column = |name: &str| -> Result<bool> {
        conn.prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = ?1")
            .and_then(|mut s| s.exists(params![name]))
            .map_err(sql)
    };
    // 1 -> 2: sessions.cost_usd. Version 1 recorded no costs, so 0 is right.
    if !has_column("cost_usd")? {
        conn.execute_batch("ALTER TABLE sessions ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0")
            .map_err(sql)?;
    }
    // 2 -> 3: sessions.principal and .agent, and the audit table, built
    // from the log in one transaction (all of it or none).
    if !has_column("principal")? {
        conn.execute_batch(
            "ALTER TABLE sessions ADD COLUMN principal TEXT; ALTER TABLE sessions ADD COLUMN agent TEXT;",
        )
        .map_err(sql)?;
    }
    // 3 -> 4: a fleet's tree (parent, root, name). Older sessions belong
    // to no fleet, so NULL is right.
    // All three or none: a crash between them must not leave a table
    // that has `parent` and lacks the others.
    if !has_column("parent")? {
        let added = conn.execute_batch(
            "BEGIN IMMEDIATE; ALTER TABLE sessions ADD COLUMN parent TEXT; ALTER TABLE sessions ADD COLUMN root TEXT; ALTER TABLE sessions ADD COLUMN name TEXT; COMMIT;",
        );
        if let Err(e) = added {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(sql(e));
        }
    }
    // 4 -> 5: where a placed session runs (sessions.machine), filled from
    // the log with the column, in one transaction.
    if !has_column("machine")? {
        let mut conn2 = backfill_conn(path)?;
        let tx = conn2
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        // Another process may have migrated while this one waited for the lock.
        let done = tx
            .prepare("SELECT 1 FROM pragma_table_info('sessions') WHERE name = 'machine'")
            .and_then(|mut s| s.exists([]))
            .map_err(sql)?;
        if !done {
            tx.execute_batch("ALTER TABLE sessions ADD COLUMN machine TEXT")
                .map_err(sql)?;
            each_created(&tx, path, |session, created| {
                if let EventKind::SessionCreated {
                    machine: Some(m), ..
                } = created
                {
                    tx.execute(
                        "UPDATE sessions SET machine = ?2 WHERE id = ?1",
                        params![session.as_str(), m],
                    )
                    .map_err(sql)?;
                }
                Ok(())
            })?;
        }
        tx.commit().map_err(sql)?;
    }
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS sessions_by_root ON sessions (root, created_ms);",
    )
    .map_err(sql)?;
    conn.execute_batch(audit::AUDIT_SCHEMA).map_err(sql)?;
    if found.is_some_and(|v| v < 3) {
        let mut conn2 = backfill_conn(path)?;
        let tx = conn2.transaction().map_err(sql)?;
        each_created(&tx, path, |session, created| {
            if let EventKind::SessionCreated {
                principal, role, ..
            } = created
            {
                tx.execute(
                    "UPDATE sessions SET principal = ?2, agent = ?3 WHERE id = ?1",
                    params![session.as_str(), principal, role],
                )
                .map_err(sql)?;
            }
            Ok(())
        })?;
        let n = audit::backfill(&tx, path)?;
        tx.commit().map_err(sql)?;
        tracing::info!(events = n, "audit log built from the existing event log");
    }
    Ok(())
}

/// A second connection, for a migration that fills columns from the log.
fn backfill_conn(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(|e| sqlite(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(|e| sqlite(path, e))?;
    Ok(conn)
}

/// Calls `f` with every session's `session_created` event (those that
/// decode), in one pass over the log.
fn each_created(
    tx: &Transaction<'_>,
    path: &Path,
    mut f: impl FnMut(&SessionId, &EventKind) -> Result<()>,
) -> Result<()> {
    let sql = |e| sqlite(path, e);
    let mut stmt = tx
        .prepare("SELECT body FROM events WHERE kind = 'session_created'")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let body: Vec<u8> = row.get(0).map_err(sql)?;
        if let Ok(event) = decode_canonical_event(&body) {
            f(&event.session, &event.event)?;
        }
    }
    Ok(())
}

fn row_to_session(row: &rusqlite::Row<'_>) -> rusqlite::Result<SessionInfo> {
    let id: String = row.get(0)?;
    let state: String = row.get(1)?;
    let limits: String = row.get(5)?;
    let bad = |col: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into())
    };
    Ok(SessionInfo {
        id: SessionId::parse(&id).map_err(|e| bad(0, e.to_string()))?,
        state: SessionState::parse(&state)
            .ok_or_else(|| bad(1, format!("unknown state {state}")))?,
        model: row.get(2)?,
        workspace: row.get(3)?,
        task: row.get(4)?,
        limits: serde_json::from_str(&limits).map_err(|e| bad(5, e.to_string()))?,
        created_ms: row.get(6)?,
        updated_ms: row.get(7)?,
        turns: row.get::<_, i64>(8)? as u32,
        prompt_tokens: row.get::<_, i64>(9)? as u64,
        completion_tokens: row.get::<_, i64>(10)? as u64,
        last_seq: row.get::<_, i64>(11)? as u64,
        final_answer: row.get(12)?,
        reason: row.get(13)?,
        cost_usd: row.get(14)?,
        role: row.get(15)?,
        parent: opt_id(row, 16)?,
        root: opt_id(row, 17)?,
        name: row.get(18)?,
        machine: row.get(19)?,
    })
}

fn opt_id(row: &rusqlite::Row<'_>, col: usize) -> rusqlite::Result<Option<SessionId>> {
    let text: Option<String> = row.get(col)?;
    text.map(|t| {
        SessionId::parse(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                col,
                rusqlite::types::Type::Text,
                e.to_string().into(),
            )
        })
    })
    .transpose()
}

fn read_events(
    conn: &Connection,
    path: &Path,
    session: &SessionId,
    after: u64,
    limit: u32,
) -> Result<Vec<Event>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT seq, hash, body FROM events WHERE session_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(|e| sqlite(path, e))?;
    let rows = stmt
        .query_map(params![session.as_str(), after as i64, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(|e| sqlite(path, e))?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, hash, body) = row.map_err(|e| sqlite(path, e))?;
        let mut event = decode_canonical_event(&body).map_err(|e| StoreError::Corrupt {
            session: session.to_string(),
            seq: seq as u64,
            detail: e.to_string(),
        })?;
        // Served as stored; `verify_session` is what compares it to the recomputed hash.
        event.hash = hash;
        out.push(event);
    }
    Ok(out)
}

fn verify_chain(conn: &Connection, path: &Path, session: &SessionId) -> Result<ChainReport> {
    let mut stmt = conn
        .prepare("SELECT seq, hash, body, kind FROM events WHERE session_id = ?1 ORDER BY seq")
        .map_err(|e| sqlite(path, e))?;
    let mut rows = stmt
        .query(params![session.as_str()])
        .map_err(|e| sqlite(path, e))?;
    let mut expected_seq = 1u64;
    let mut prev = GENESIS_HASH.to_string();
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(|e| sqlite(path, e))? {
        let seq: i64 = row.get(0).map_err(|e| sqlite(path, e))?;
        let hash: String = row.get(1).map_err(|e| sqlite(path, e))?;
        let body: Vec<u8> = row.get(2).map_err(|e| sqlite(path, e))?;
        let kind: String = row.get(3).map_err(|e| sqlite(path, e))?;
        let broken = |detail: String| ChainReport {
            events: count,
            head: prev.clone(),
            broken: Some(BrokenLink {
                seq: seq as u64,
                detail,
            }),
        };
        if seq as u64 != expected_seq {
            return Ok(broken(format!("expected seq {expected_seq}, found {seq}")));
        }
        let actual = sha256_hex(&body);
        if actual != hash {
            return Ok(broken(format!(
                "stored hash {hash} but the event hashes to {actual}"
            )));
        }
        let event = match decode_canonical_event(&body) {
            Ok(e) => e,
            Err(e) => return Ok(broken(format!("body does not decode: {e}"))),
        };
        if event.seq != seq as u64 || &event.session != session {
            return Ok(broken("body names another position".into()));
        }
        // The column decides which events need an audit record: a
        // relabelled event could shed its record unnoticed.
        if event.event.name() != kind {
            return Ok(broken(format!(
                "the kind column says {kind} but the body is a {} event",
                event.event.name()
            )));
        }
        if event.prev_hash != prev {
            return Ok(broken(format!(
                "points back to {} but the previous event is {prev}",
                event.prev_hash
            )));
        }
        prev = hash;
        count += 1;
        expected_seq += 1;
    }
    Ok(ChainReport {
        events: count,
        head: prev,
        broken: None,
    })
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    /// Last (seq, hash) per session; a miss reloads from the events table.
    heads: HashMap<SessionId, (u64, String)>,
    live: broadcast::Sender<Arc<Event>>,
    audit: audit::AuditState,
}

struct Pending {
    reply: oneshot::Sender<Result<Vec<Event>>>,
    outcome: Result<Vec<Event>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<WriteCmd>) {
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        let _ = self.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
    }

    fn commit_batch(&mut self, batch: Vec<WriteCmd>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut rebuilds = Vec::new();
        let mut audits: Vec<AuditReply> = Vec::new();
        let result = (|| -> Result<()> {
            let tx = self.conn.transaction().map_err(|e| sqlite(&self.path, e))?;
            self.audit.ensure_fresh(&tx, &self.path)?;
            for cmd in batch {
                match cmd {
                    WriteCmd::Append {
                        session,
                        events,
                        reply,
                    } => {
                        let outcome = append_in_tx(
                            &tx,
                            &self.path,
                            &mut self.heads,
                            &mut self.audit,
                            &session,
                            events,
                        );
                        pending.push(Pending { reply, outcome });
                    }
                    WriteCmd::Rebuild { reply } => {
                        let outcome = rebuild_in_tx(&tx, &self.path);
                        rebuilds.push((reply, outcome));
                    }
                    WriteCmd::Audit { drafts, reply } => {
                        let outcome =
                            in_savepoint(&tx, &self.path, &mut self.audit, |tx, path, a| {
                                drafts
                                    .into_iter()
                                    .map(|d| {
                                        a.insert(tx, path, AuditChain::Daemon, d, now_ms(), None)
                                    })
                                    .collect()
                            });
                        if let Err(e) = &outcome {
                            tracing::error!(error = %e, "audit record not written");
                        }
                        audits.push(AuditReply::Records(reply, outcome));
                    }
                    WriteCmd::Prune {
                        before_ms,
                        by,
                        reply,
                    } => {
                        let outcome =
                            in_savepoint(&tx, &self.path, &mut self.audit, |tx, path, a| {
                                a.prune(tx, path, before_ms, &by, now_ms())
                            });
                        audits.push(AuditReply::Prune(reply, Box::new(outcome)));
                    }
                    WriteCmd::Checkpoint { by, reply } => {
                        let outcome =
                            in_savepoint(&tx, &self.path, &mut self.audit, |tx, path, a| {
                                let mut cp = audit::read_checkpoint(tx, path, now_ms())?;
                                // The heads the writer holds (not yet committed
                                // appends of this batch included).
                                cp.chains = a.heads();
                                let detail = serde_json::to_value(&cp)?;
                                let draft = AuditDraft::new(
                                    flotilla_protocol::audit::AuditKind::Admin,
                                    audit::CHECKPOINT_ACTION,
                                    "ok",
                                )
                                .by(by)
                                .on("audit")
                                .with_detail(&detail);
                                a.insert(tx, path, AuditChain::Daemon, draft, now_ms(), None)?;
                                Ok(cp)
                            });
                        audits.push(AuditReply::Checkpoint(reply, Box::new(outcome)));
                    }
                }
            }
            tx.commit().map_err(|e| sqlite(&self.path, e))
        })();
        match result {
            Ok(()) => {
                for p in pending {
                    if let Ok(events) = &p.outcome {
                        for e in events {
                            let _ = self.live.send(Arc::new(e.clone()));
                        }
                        if let Some(last) = events.last() {
                            if let EventKind::StateChanged { state, .. } = &last.event {
                                if state.is_terminal() {
                                    self.heads.remove(&last.session);
                                    self.audit.forget_session(&last.session);
                                }
                            }
                        }
                    }
                    let _ = p.reply.send(p.outcome);
                }
                for (reply, outcome) in rebuilds {
                    let _ = reply.send(outcome);
                }
                for a in audits {
                    a.send_ok();
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "event store commit failed");
                // Nothing of the batch is on disk: forget the cached heads.
                self.heads.clear();
                self.audit.invalidate();
                let msg = err.to_string();
                for p in pending {
                    let _ = p.reply.send(Err(StoreError::CommitFailed(msg.clone())));
                }
                for (reply, _) in rebuilds {
                    let _ = reply.send(Err(StoreError::Closed));
                }
                for a in audits {
                    a.send_failed(&msg);
                }
            }
        }
    }
}

fn load_head(
    tx: &Transaction<'_>,
    path: &Path,
    session: &SessionId,
) -> Result<Option<(u64, String)>> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, hash FROM events WHERE session_id = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .map_err(|e| sqlite(path, e))?;
    stmt.query_row(params![session.as_str()], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?))
    })
    .optional()
    .map_err(|e| sqlite(path, e))
}

fn append_in_tx(
    tx: &Transaction<'_>,
    path: &Path,
    heads: &mut HashMap<SessionId, (u64, String)>,
    audit: &mut audit::AuditState,
    session: &SessionId,
    events: Vec<EventKind>,
) -> Result<Vec<Event>> {
    let head = match heads.get(session) {
        Some(h) => Some(h.clone()),
        None => load_head(tx, path, session)?,
    };
    let (mut seq, mut prev) = match (&head, events.first()) {
        (None, Some(EventKind::SessionCreated { .. })) => (0, GENESIS_HASH.to_string()),
        (None, _) => return Err(StoreError::UnknownSession(session.clone())),
        (Some(_), Some(EventKind::SessionCreated { .. })) => {
            return Err(StoreError::SessionExists(session.clone()))
        }
        (Some((s, h)), _) => (*s, h.clone()),
    };
    // A savepoint keeps one bad append from poisoning the rest of the batch.
    let mark = audit.mark();
    let sp_result = (|| -> Result<Vec<Event>> {
        tx.execute_batch("SAVEPOINT append")
            .map_err(|e| sqlite(path, e))?;
        let mut out = Vec::with_capacity(events.len());
        let ts_ms = now_ms();
        for kind in events {
            seq += 1;
            let body = canonical_event_bytes(session, seq, ts_ms, &prev, &kind)?;
            let hash = sha256_hex(&body);
            tx.prepare_cached(
                "INSERT INTO events (session_id, seq, ts_ms, kind, hash, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![session.as_str(), seq as i64, ts_ms, kind.name(), hash, body])
            })
            .map_err(|e| sqlite(path, e))?;
            let event = Event {
                session: session.clone(),
                seq,
                ts_ms,
                prev_hash: std::mem::take(&mut prev),
                hash: hash.clone(),
                event: kind,
            };
            apply_projection(tx, path, &event)?;
            audit.on_event(tx, path, &event)?;
            prev = hash;
            out.push(event);
        }
        tx.execute_batch("RELEASE append")
            .map_err(|e| sqlite(path, e))?;
        Ok(out)
    })();
    match sp_result {
        Ok(out) => {
            heads.insert(session.clone(), (seq, prev));
            Ok(out)
        }
        Err(e) => {
            let _ = tx.execute_batch("ROLLBACK TO append; RELEASE append");
            heads.remove(session);
            audit.restore(mark);
            audit.forget_session(session);
            Err(e)
        }
    }
}

/// Runs `f` in a savepoint; on failure the audit state and the database are
/// both back where they were.
fn in_savepoint<T>(
    tx: &Transaction<'_>,
    path: &Path,
    audit: &mut audit::AuditState,
    f: impl FnOnce(&Transaction<'_>, &Path, &mut audit::AuditState) -> Result<T>,
) -> Result<T> {
    let mark = audit.mark();
    tx.execute_batch("SAVEPOINT audit")
        .map_err(|e| sqlite(path, e))?;
    match f(tx, path, audit) {
        Ok(v) => {
            tx.execute_batch("RELEASE audit")
                .map_err(|e| sqlite(path, e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = tx.execute_batch("ROLLBACK TO audit; RELEASE audit");
            audit.restore(mark);
            Err(e)
        }
    }
}

enum AuditReply {
    Records(
        Option<oneshot::Sender<Result<Vec<AuditRecord>>>>,
        Result<Vec<AuditRecord>>,
    ),
    Prune(
        oneshot::Sender<Result<Option<AuditRecord>>>,
        Box<Result<Option<AuditRecord>>>,
    ),
    Checkpoint(
        oneshot::Sender<Result<AuditCheckpoint>>,
        Box<Result<AuditCheckpoint>>,
    ),
}

impl AuditReply {
    fn send_ok(self) {
        match self {
            AuditReply::Records(Some(r), o) => {
                let _ = r.send(o);
            }
            AuditReply::Records(None, _) => {}
            AuditReply::Prune(r, o) => {
                let _ = r.send(*o);
            }
            AuditReply::Checkpoint(r, o) => {
                let _ = r.send(*o);
            }
        }
    }

    fn send_failed(self, msg: &str) {
        let err = || StoreError::CommitFailed(msg.to_string());
        match self {
            AuditReply::Records(Some(r), _) => {
                let _ = r.send(Err(err()));
            }
            AuditReply::Records(None, _) => {
                tracing::error!(error = msg, "audit record lost with a failed commit");
            }
            AuditReply::Prune(r, _) => {
                let _ = r.send(Err(err()));
            }
            AuditReply::Checkpoint(r, _) => {
                let _ = r.send(Err(err()));
            }
        }
    }
}

fn apply_projection(tx: &Transaction<'_>, path: &Path, event: &Event) -> Result<()> {
    let sql = |e| sqlite(path, e);
    let id = event.session.as_str();
    match &event.event {
        EventKind::SessionCreated {
            task,
            model,
            workspace,
            limits,
            principal,
            role,
            fleet,
            machine,
            ..
        } => {
            let limits = serde_json::to_string(limits)?;
            let link = fleet.as_ref().and_then(|f| f.parent.as_ref());
            // A planner is the root of its own tree.
            let root = match (link, fleet.as_ref().and_then(|f| f.spec.as_ref())) {
                (Some(l), _) => Some(l.root.as_str()),
                (None, Some(_)) => Some(id),
                (None, None) => None,
            };
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sessions (id, state, model, workspace, task, limits, created_ms, updated_ms, last_seq, principal, agent, parent, root, name, machine)
                 VALUES (?1, 'running', ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    model,
                    workspace,
                    task,
                    limits,
                    event.ts_ms,
                    event.seq as i64,
                    principal,
                    role,
                    link.map(|l| l.parent.as_str()),
                    root,
                    link.map(|l| l.name.as_str()),
                    machine
                ])
            })
            .map_err(sql)?;
            return Ok(());
        }
        EventKind::StateChanged { state, reason } => {
            tx.prepare_cached(
                "UPDATE sessions SET state = ?2, reason = CASE WHEN ?3 IS NULL THEN reason ELSE ?3 END WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![id, state.as_str(), reason]))
            .map_err(sql)?;
        }
        EventKind::ModelResponded {
            turn,
            usage,
            cost_usd,
            ..
        } => {
            tx.prepare_cached(
                "UPDATE sessions SET turns = max(turns, ?2), prompt_tokens = prompt_tokens + ?3,
                 completion_tokens = completion_tokens + ?4, cost_usd = cost_usd + ?5 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    *turn as i64,
                    usage.prompt_tokens as i64,
                    usage.completion_tokens as i64,
                    cost_usd.unwrap_or(0.0)
                ])
            })
            .map_err(sql)?;
        }
        EventKind::FinalAnswer { text } => {
            tx.prepare_cached("UPDATE sessions SET final_answer = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id, text]))
                .map_err(sql)?;
        }
        _ => {}
    }
    tx.prepare_cached("UPDATE sessions SET last_seq = ?2, updated_ms = ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![id, event.seq as i64, event.ts_ms]))
        .map_err(sql)?;
    Ok(())
}

fn rebuild_in_tx(tx: &Transaction<'_>, path: &Path) -> Result<u64> {
    tx.execute("DELETE FROM sessions", [])
        .map_err(|e| sqlite(path, e))?;
    let mut stmt = tx
        .prepare("SELECT session_id, seq, body FROM events ORDER BY session_id, seq")
        .map_err(|e| sqlite(path, e))?;
    let mut rows = stmt.query([]).map_err(|e| sqlite(path, e))?;
    let mut n = 0;
    while let Some(row) = rows.next().map_err(|e| sqlite(path, e))? {
        let session: String = row.get(0).map_err(|e| sqlite(path, e))?;
        let seq: i64 = row.get(1).map_err(|e| sqlite(path, e))?;
        let body: Vec<u8> = row.get(2).map_err(|e| sqlite(path, e))?;
        let event = decode_canonical_event(&body).map_err(|e| StoreError::Corrupt {
            session,
            seq: seq as u64,
            detail: e.to_string(),
        })?;
        apply_projection(tx, path, &event)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
fn audit_columns() -> &'static str {
    audit::COLUMNS
}
#[cfg(test)]
fn audit_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    audit::row_to_record(r)
}
