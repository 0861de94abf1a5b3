//! The audit log: two SHA-256 chains of activity records in the `audit`
//! table, written by the store's single writer thread.
//!
//! - `sessions` records are derived from session events in the very
//!   transaction that appends the event, and carry the event's seq and hash:
//!   an audited event without its record, or a record whose event differs,
//!   is a break that `verify` names.
//! - `daemon` records (authentication, admin actions, retention cuts,
//!   checkpoints) are appended by the daemon through the same writer.
//! - `id` orders both chains together and is the pagination cursor: the one
//!   writer assigns ids in commit order, so a page boundary never moves.
//! - `ts_ms` never decreases along `id` (the writer clamps it), which lets a
//!   time filter become an id range.
//! - Retention deletes a prefix of each chain and appends an `audit.prune`
//!   record that states, for both chains, the seq and hash it cut at; the
//!   newest such record always describes every cut, so the chain stays
//!   verifiable from its first surviving record.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use flotilla_protocol::audit::{
    draft_for_event, is_audited, record_digest, AuditBreak, AuditChain, AuditCheckpoint,
    AuditDraft, AuditKind, AuditPage, AuditQuery, AuditRecord, CallInfo, ChainHead, ChainVerdict,
    RecordFields, SessionContext, VerifyReport, AUDITED_EVENT_NAMES,
};
use flotilla_protocol::{
    decode_canonical_event, decode_event_header, digest_hex, digest_hex_bytes, sha256_matches,
    Event, EventKind, SessionId, GENESIS_HASH,
};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::{sqlite, verify_chain, Result, StoreError};

pub(crate) const AUDIT_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    id         INTEGER PRIMARY KEY,
    chain      TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    ts_ms      INTEGER NOT NULL,
    principal  TEXT,
    session_id TEXT,
    agent      TEXT,
    kind       TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT,
    outcome    TEXT    NOT NULL,
    reason     TEXT,
    detail     TEXT,
    event_seq  INTEGER,
    event_hash TEXT,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    UNIQUE (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_by_ts ON audit (ts_ms);
CREATE INDEX IF NOT EXISTS audit_by_kind ON audit (kind, id);
CREATE INDEX IF NOT EXISTS audit_by_principal ON audit (principal, id);
CREATE INDEX IF NOT EXISTS audit_by_event ON audit (session_id, event_seq);
CREATE INDEX IF NOT EXISTS audit_by_action ON audit (action, id);
"#;

pub(crate) const COLUMNS: &str =
    "id, chain, seq, ts_ms, principal, session_id, agent, kind, action, target, \
     outcome, reason, detail, event_seq, event_hash, prev_hash, hash";

/// The action of a retention cut record.
pub const PRUNE_ACTION: &str = "audit.prune";
/// The action of a checkpoint record.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";

/// What the writer keeps between appends: the head of each chain, the next
/// id, the last time used, and per live session what records need.
#[derive(Default)]
pub(crate) struct AuditState {
    heads: HashMap<AuditChain, (u64, String)>,
    next_id: u64,
    last_ts: i64,
    sessions: HashMap<SessionId, SessionAudit>,
    /// Set when a commit failed: reload heads before the next append.
    stale: bool,
}

#[derive(Default)]
struct SessionAudit {
    ctx: SessionContext,
    /// Tool calls proposed and not yet finished, by call id.
    calls: HashMap<String, CallInfo>,
}

/// What a savepoint must restore if it rolls back.
pub(crate) struct Mark {
    heads: HashMap<AuditChain, (u64, String)>,
    next_id: u64,
    last_ts: i64,
}

impl AuditState {
    pub(crate) fn load(conn: &Connection, path: &Path) -> Result<AuditState> {
        let mut st = AuditState::default();
        st.reload(conn, path)?;
        Ok(st)
    }

    fn reload(&mut self, conn: &Connection, path: &Path) -> Result<()> {
        self.heads.clear();
        for chain in AuditChain::ALL {
            let head = conn
                .query_row(
                    "SELECT seq, hash FROM audit WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
                    params![chain.as_str()],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(|e| sqlite(path, e))?;
            let head = match head {
                Some(h) => h,
                // An empty chain after a cut continues from the cut.
                None => last_cut(conn, path, chain)?
                    .map(|c| (c.through_seq, c.hash))
                    .unwrap_or((0, GENESIS_HASH.to_string())),
            };
            self.heads.insert(chain, head);
        }
        let (max_id, max_ts): (Option<i64>, Option<i64>) = conn
            .query_row("SELECT max(id), max(ts_ms) FROM audit", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(|e| sqlite(path, e))?;
        // Ids are never reused, even after a cut deleted the newest rows'
        // predecessors: the cut record itself is newer than all of them.
        self.next_id = max_id.unwrap_or(0) as u64 + 1;
        self.last_ts = max_ts.unwrap_or(0);
        self.stale = false;
        Ok(())
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            heads: self.heads.clone(),
            next_id: self.next_id,
            last_ts: self.last_ts,
        }
    }

    pub(crate) fn restore(&mut self, mark: Mark) {
        self.heads = mark.heads;
        self.next_id = mark.next_id;
        self.last_ts = mark.last_ts;
    }

    /// After a failed commit nothing of the batch is on disk.
    pub(crate) fn invalidate(&mut self) {
        self.stale = true;
        self.sessions.clear();
    }

    pub(crate) fn ensure_fresh(&mut self, conn: &Connection, path: &Path) -> Result<()> {
        if self.stale {
            self.reload(conn, path)?;
        }
        Ok(())
    }

    pub(crate) fn forget_session(&mut self, session: &SessionId) {
        self.sessions.remove(session);
    }

    /// Appends one record to `chain`.
    pub(crate) fn insert(
        &mut self,
        tx: &Transaction<'_>,
        path: &Path,
        chain: AuditChain,
        draft: AuditDraft,
        ts_ms: i64,
        event: Option<(u64, &str)>,
    ) -> Result<AuditRecord> {
        let (seq, prev) = self
            .heads
            .get(&chain)
            .cloned()
            .unwrap_or((0, GENESIS_HASH.to_string()));
        let ts_ms = ts_ms.max(self.last_ts);
        let mut rec = AuditRecord {
            id: self.next_id,
            chain,
            seq: seq + 1,
            ts_ms,
            principal: draft.principal,
            session: draft.session,
            agent: draft.agent,
            kind: draft.kind,
            action: draft.action,
            target: draft.target,
            outcome: draft.outcome,
            reason: draft.reason,
            detail: draft.detail,
            event_seq: event.map(|e| e.0),
            event_hash: event.map(|e| e.1.to_string()),
            prev_hash: prev,
            hash: String::new(),
        };
        rec.hash = rec.computed_hash();
        tx.prepare_cached(&format!(
            "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ))
        .and_then(|mut s| {
            s.execute(params![
                rec.id as i64,
                rec.chain.as_str(),
                rec.seq as i64,
                rec.ts_ms,
                rec.principal,
                rec.session,
                rec.agent,
                rec.kind.as_str(),
                rec.action,
                rec.target,
                rec.outcome,
                rec.reason,
                rec.detail,
                rec.event_seq.map(|s| s as i64),
                rec.event_hash,
                rec.prev_hash,
                rec.hash,
            ])
        })
        .map_err(|e| sqlite(path, e))?;
        self.heads.insert(chain, (rec.seq, rec.hash.clone()));
        self.next_id += 1;
        self.last_ts = ts_ms;
        Ok(rec)
    }

    /// Derives and appends the record of one session event, if it has one.
    pub(crate) fn on_event(
        &mut self,
        tx: &Transaction<'_>,
        path: &Path,
        event: &Event,
    ) -> Result<()> {
        let entry = match self.sessions.get_mut(&event.session) {
            Some(e) => e,
            None => {
                let ctx = match &event.event {
                    EventKind::SessionCreated {
                        principal, role, ..
                    } => SessionContext {
                        principal: principal.clone(),
                        agent: role.clone(),
                    },
                    _ => load_context(tx, path, &event.session)?,
                };
                self.sessions
                    .entry(event.session.clone())
                    .or_insert(SessionAudit {
                        ctx,
                        calls: HashMap::new(),
                    })
            }
        };
        let finished_call = match &event.event {
            EventKind::ToolProposed { call } => {
                entry.calls.insert(call.id.clone(), CallInfo::of(call));
                return Ok(());
            }
            EventKind::ToolFinished { call_id, .. }
            | EventKind::ToolInterrupted { call_id, .. } => Some(call_id.clone()),
            _ => None,
        };
        let ctx = entry.ctx.clone();
        let known = &entry.calls;
        let lookup = |id: &str| -> Option<CallInfo> {
            known
                .get(id)
                .cloned()
                .or_else(|| find_call(tx, &event.session, event.seq, id))
        };
        let draft = draft_for_event(&event.event, event.session.as_str(), &ctx, &lookup);
        if let Some(id) = finished_call {
            entry.calls.remove(&id);
        }
        if let Some(draft) = draft {
            self.insert(
                tx,
                path,
                AuditChain::Sessions,
                draft,
                event.ts_ms,
                Some((event.seq, &event.hash)),
            )?;
        }
        Ok(())
    }

    /// Cuts every record older than `before_ms` from both chains and
    /// appends the cut record; `None` when nothing was old enough.
    pub(crate) fn prune(
        &mut self,
        tx: &Transaction<'_>,
        path: &Path,
        before_ms: i64,
        by: &str,
        now_ms: i64,
    ) -> Result<Option<AuditRecord>> {
        let sql = |e| sqlite(path, e);
        let mut cuts = serde_json::Map::new();
        let mut removed = serde_json::Map::new();
        let mut any = false;
        for chain in AuditChain::ALL {
            let newest_old: Option<(i64, String, i64)> = tx
                .query_row(
                    "SELECT seq, hash, ts_ms FROM audit WHERE chain = ?1 AND ts_ms < ?2 ORDER BY seq DESC LIMIT 1",
                    params![chain.as_str(), before_ms],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(sql)?;
            let cut = match newest_old {
                Some((seq, hash, ts)) => {
                    let n = tx
                        .execute(
                            "DELETE FROM audit WHERE chain = ?1 AND seq <= ?2",
                            params![chain.as_str(), seq],
                        )
                        .map_err(sql)?;
                    any |= n > 0;
                    removed.insert(chain.as_str().into(), n.into());
                    Some(Cut {
                        through_seq: seq as u64,
                        hash,
                        through_ts_ms: ts,
                    })
                }
                // Nothing new to cut: restate the previous cut, if any.
                None => last_cut(tx, path, chain)?,
            };
            if let Some(c) = cut {
                cuts.insert(
                    chain.as_str().into(),
                    serde_json::json!({
                        "through_seq": c.through_seq, "hash": c.hash, "through_ts_ms": c.through_ts_ms,
                    }),
                );
            }
        }
        if !any {
            return Ok(None);
        }
        let detail = serde_json::json!({
            "before_ms": before_ms, "cuts": cuts, "removed": removed,
        });
        let draft = AuditDraft::new(AuditKind::Admin, PRUNE_ACTION, "ok")
            .by(by)
            .on("audit")
            .because(format!("retention: records before {before_ms} ms removed"))
            .with_detail(&detail);
        self.insert(tx, path, AuditChain::Daemon, draft, now_ms, None)
            .map(Some)
    }

    pub(crate) fn heads(&self) -> Vec<ChainHead> {
        AuditChain::ALL
            .into_iter()
            .map(|chain| {
                let (seq, hash) = self
                    .heads
                    .get(&chain)
                    .cloned()
                    .unwrap_or((0, GENESIS_HASH.to_string()));
                ChainHead { chain, seq, hash }
            })
            .collect()
    }
}

fn load_context(tx: &Transaction<'_>, path: &Path, session: &SessionId) -> Result<SessionContext> {
    let row: Option<(Option<String>, Option<String>)> = tx
        .prepare_cached("SELECT principal, agent FROM sessions WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row(params![session.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(|e| sqlite(path, e))?;
    let (principal, agent) = row.unwrap_or((None, None));
    Ok(SessionContext { principal, agent })
}

/// The newest `tool_proposed` of `session` before `before_seq` with this
/// call id (call ids repeat across turns with some servers).
fn find_call(
    tx: &Transaction<'_>,
    session: &SessionId,
    before_seq: u64,
    call_id: &str,
) -> Option<CallInfo> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT body FROM events WHERE session_id = ?1 AND kind = 'tool_proposed' AND seq < ?2 ORDER BY seq DESC LIMIT 64",
        )
        .ok()?;
    let rows = stmt
        .query_map(params![session.as_str(), before_seq as i64], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .ok()?;
    for body in rows.flatten() {
        if let Ok(Event {
            event: EventKind::ToolProposed { call },
            ..
        }) = decode_canonical_event(&body)
        {
            if call.id == call_id {
                return Some(CallInfo::of(&call));
            }
        }
    }
    None
}

/// One chain's cut, as the newest `audit.prune` record states it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cut {
    through_seq: u64,
    hash: String,
    through_ts_ms: i64,
}

fn last_cut(conn: &Connection, path: &Path, chain: AuditChain) -> Result<Option<Cut>> {
    let detail: Option<Option<String>> = conn
        .query_row(
            "SELECT detail FROM audit WHERE chain = 'daemon' AND action = ?1 ORDER BY seq DESC LIMIT 1",
            params![PRUNE_ACTION],
            |r| r.get(0),
        )
        .optional()
        .map_err(|e| sqlite(path, e))?;
    let Some(Some(detail)) = detail else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&detail)?;
    let c = &v["cuts"][chain.as_str()];
    match (c["through_seq"].as_u64(), c["hash"].as_str()) {
        (Some(through_seq), Some(hash)) => Ok(Some(Cut {
            through_seq,
            hash: hash.to_string(),
            through_ts_ms: c["through_ts_ms"].as_i64().unwrap_or(0),
        })),
        _ => Ok(None),
    }
}

/// Builds the records of every event already in the log (a database of an
/// older schema), in commit order.
pub(crate) fn backfill(tx: &Transaction<'_>, path: &Path) -> Result<u64> {
    let mut state = AuditState::load(tx, path)?;
    let mut stmt = tx
        .prepare("SELECT session_id, seq, hash, body FROM events ORDER BY gid")
        .map_err(|e| sqlite(path, e))?;
    let mut rows = stmt.query([]).map_err(|e| sqlite(path, e))?;
    let mut n = 0;
    while let Some(row) = rows.next().map_err(|e| sqlite(path, e))? {
        let session: String = row.get(0).map_err(|e| sqlite(path, e))?;
        let seq: i64 = row.get(1).map_err(|e| sqlite(path, e))?;
        let hash: String = row.get(2).map_err(|e| sqlite(path, e))?;
        let body: Vec<u8> = row.get(3).map_err(|e| sqlite(path, e))?;
        let mut event = decode_canonical_event(&body).map_err(|e| StoreError::Corrupt {
            session,
            seq: seq as u64,
            detail: e.to_string(),
        })?;
        event.hash = hash;
        state.on_event(tx, path, &event)?;
        n += 1;
    }
    Ok(n)
}

pub(crate) fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let bad = |col: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(col, rusqlite::types::Type::Text, what.into())
    };
    let chain: String = r.get(1)?;
    let kind: String = r.get(7)?;
    Ok(AuditRecord {
        id: r.get::<_, i64>(0)? as u64,
        chain: AuditChain::parse(&chain).ok_or_else(|| bad(1, format!("unknown chain {chain}")))?,
        seq: r.get::<_, i64>(2)? as u64,
        ts_ms: r.get(3)?,
        principal: r.get(4)?,
        session: r.get(5)?,
        agent: r.get(6)?,
        kind: AuditKind::parse(&kind).ok_or_else(|| bad(7, format!("unknown kind {kind}")))?,
        action: r.get(8)?,
        target: r.get(9)?,
        outcome: r.get(10)?,
        reason: r.get(11)?,
        detail: r.get(12)?,
        event_seq: r.get::<_, Option<i64>>(13)?.map(|s| s as u64),
        event_hash: r.get(14)?,
        prev_hash: r.get(15)?,
        hash: r.get(16)?,
    })
}

/// One page of records matching `q`.
pub(crate) fn query(conn: &Connection, path: &Path, q: &AuditQuery) -> Result<AuditPage> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let arg = |v: rusqlite::types::Value, args: &mut Vec<rusqlite::types::Value>| {
        args.push(v);
        format!("?{}", args.len())
    };
    use rusqlite::types::Value as V;
    if let Some(c) = q.cursor {
        let p = arg(V::Integer(c as i64), &mut args);
        sql += &format!(" AND id {} {p}", if q.descending { "<" } else { ">" });
    }
    // Times never decrease along ids, so a time bound is an id bound found
    // by one index seek; the time test stays for exactness.
    if let Some(since) = q.since_ms {
        let p = arg(V::Integer(since), &mut args);
        sql += &format!(
            " AND id >= coalesce((SELECT id FROM audit WHERE ts_ms >= {p} ORDER BY ts_ms, id LIMIT 1), 9223372036854775807) AND ts_ms >= {p}"
        );
    }
    if let Some(until) = q.until_ms {
        let p = arg(V::Integer(until), &mut args);
        sql += &format!(
            " AND id <= coalesce((SELECT id FROM audit WHERE ts_ms <= {p} ORDER BY ts_ms DESC, id DESC LIMIT 1), -1) AND ts_ms <= {p}"
        );
    }
    if !q.kinds.is_empty() {
        let list: Vec<String> = q
            .kinds
            .iter()
            .map(|k| arg(V::Text(k.as_str().to_string()), &mut args))
            .collect();
        sql += &format!(" AND kind IN ({})", list.join(", "));
    }
    if let Some(s) = &q.session {
        let p = arg(V::Text(s.clone()), &mut args);
        sql += &format!(" AND session_id = {p}");
    }
    if let Some(a) = &q.action {
        let p = arg(V::Text(a.clone()), &mut args);
        sql += &format!(" AND action = {p}");
    }
    if let Some(pr) = &q.principal {
        let p = arg(V::Text(pr.clone()), &mut args);
        sql += &format!(" AND principal = {p}");
    }
    if let Some(v) = &q.visible_to {
        let p = arg(V::Text(v.clone()), &mut args);
        sql += &format!(
            " AND (principal = {p} OR session_id IN (SELECT id FROM sessions WHERE principal = {p}))"
        );
    }
    let limit = q.limit.clamp(1, 10_000);
    let p = arg(V::Integer(limit as i64 + 1), &mut args);
    sql += &format!(
        " ORDER BY id {} LIMIT {p}",
        if q.descending { "DESC" } else { "ASC" }
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(|e| sqlite(path, e))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), row_to_record)
        .map_err(|e| sqlite(path, e))?;
    let mut activities = Vec::with_capacity(limit as usize + 1);
    for row in rows {
        activities.push(row.map_err(|e| sqlite(path, e))?);
    }
    let next_cursor = if activities.len() > limit as usize {
        activities.truncate(limit as usize);
        activities.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(AuditPage {
        activities,
        next_cursor,
    })
}

/// Heads of both chains and the number of events, read from the database.
pub(crate) fn read_checkpoint(
    conn: &Connection,
    path: &Path,
    now_ms: i64,
) -> Result<AuditCheckpoint> {
    let st = AuditState::load(conn, path)?;
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .map_err(|e| sqlite(path, e))?;
    Ok(AuditCheckpoint {
        ts_ms: now_ms,
        chains: st.heads(),
        events: events as u64,
    })
}

/// What `verify` looks at.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Only this session: its event chain, and its records' hashes and links.
    pub session: Option<SessionId>,
    /// Checkpoints taken earlier: each must still hold.
    pub checkpoints: Vec<AuditCheckpoint>,
}

fn text<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<&'a str>> {
    match r.get_ref(i)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t).map(Some).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
        }),
        other => Err(rusqlite::Error::InvalidColumnType(
            i,
            format!("column {i}"),
            other.data_type(),
        )),
    }
}

fn req<'a>(r: &'a rusqlite::Row<'_>, i: usize) -> rusqlite::Result<&'a str> {
    // Lazily: this runs for every column of every row `verify` reads.
    text(r, i)?.ok_or_else(|| {
        rusqlite::Error::InvalidColumnType(i, format!("column {i}"), rusqlite::types::Type::Null)
    })
}

/// The record's own hash recomputed from its row, without copying strings
/// (`buf` is reused across rows): `None` when it matches the stored hash,
/// else `(stored, computed)`.
fn row_hash_mismatch(
    r: &rusqlite::Row<'_>,
    chain: AuditChain,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<Option<(String, String)>> {
    let kind = req(r, 7)?;
    let kind = AuditKind::parse(kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            7,
            rusqlite::types::Type::Text,
            format!("unknown kind {kind}").into(),
        )
    })?;
    let stored = req(r, 16)?;
    let computed = record_digest(
        &RecordFields {
            id: r.get::<_, i64>(0)? as u64,
            chain,
            seq: r.get::<_, i64>(2)? as u64,
            ts_ms: r.get(3)?,
            prev: req(r, 15)?,
            principal: text(r, 4)?,
            session: text(r, 5)?,
            agent: text(r, 6)?,
            kind,
            action: req(r, 8)?,
            target: text(r, 9)?,
            outcome: req(r, 10)?,
            reason: text(r, 11)?,
            detail: text(r, 12)?,
            event_seq: r.get::<_, Option<i64>>(13)?.map(|s| s as u64),
            event_hash: text(r, 14)?,
        },
        buf,
    );
    if digest_hex_bytes(&computed) == stored.as_bytes() {
        return Ok(None);
    }
    Ok(Some((stored.to_string(), digest_hex(&computed))))
}

/// Walks one chain in seq order; the first break ends the walk.
fn verify_audit_chain(
    conn: &Connection,
    path: &Path,
    chain: AuditChain,
    broken: &mut Vec<AuditBreak>,
) -> Result<ChainVerdict> {
    let place = format!("chain {chain}");
    let cut = last_cut(conn, path, chain).unwrap_or(None);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE chain = ?1 ORDER BY seq"
        ))
        .map_err(|e| sqlite(path, e))?;
    let mut rows = stmt
        .query(params![chain.as_str()])
        .map_err(|e| sqlite(path, e))?;
    let mut records = 0u64;
    let mut first_seq = 0u64;
    let mut buf = Vec::with_capacity(512);
    let (mut expect_seq, mut prev) = (1u64, GENESIS_HASH.to_string());
    let (mut last_id, mut last_ts) = (0u64, i64::MIN);
    let mut brk = |id: Option<u64>, seq: Option<u64>, detail: String| {
        broken.push(AuditBreak {
            place: place.clone(),
            id,
            seq,
            detail,
        });
    };
    while let Some(r) = rows.next().map_err(|e| sqlite(path, e))? {
        let id = r.get::<_, i64>(0).map_err(|e| sqlite(path, e))? as u64;
        let seq = r.get::<_, i64>(2).map_err(|e| sqlite(path, e))? as u64;
        let ts: i64 = r.get(3).map_err(|e| sqlite(path, e))?;
        let row_prev = req(r, 15).map_err(|e| sqlite(path, e))?;
        if records == 0 {
            first_seq = seq;
            if seq > 1 {
                // Records before it were cut by retention: the newest cut
                // record must say so, with the hash this one points back to.
                match &cut {
                    Some(c) if c.through_seq + 1 == seq && c.hash == row_prev => {
                        expect_seq = seq;
                        prev = c.hash.clone();
                    }
                    Some(c) => {
                        brk(Some(id), Some(seq), format!(
                            "the chain starts at seq {seq}, but the retention cut record says records through seq {} (hash {}) were removed",
                            c.through_seq, c.hash
                        ));
                        break;
                    }
                    None => {
                        brk(Some(id), Some(seq), format!(
                            "records 1..{} are missing and no retention cut record accounts for them",
                            seq - 1
                        ));
                        break;
                    }
                }
            }
        }
        if seq != expect_seq {
            brk(
                Some(id),
                Some(seq),
                format!(
                    "expected seq {expect_seq}, found {seq}: a record is missing or was inserted"
                ),
            );
            break;
        }
        if let Some((stored, computed)) =
            row_hash_mismatch(r, chain, &mut buf).map_err(|e| sqlite(path, e))?
        {
            brk(
                Some(id),
                Some(seq),
                format!("stored hash {stored} but the record hashes to {computed}: it was changed"),
            );
            break;
        }
        if row_prev != prev {
            brk(
                Some(id),
                Some(seq),
                format!("points back to {row_prev} but the previous record is {prev}: records were removed, inserted or reordered"),
            );
            break;
        }
        if id <= last_id || ts < last_ts {
            brk(
                Some(id),
                Some(seq),
                format!("out of order: id {id} at {ts} ms follows id {last_id} at {last_ts} ms"),
            );
            break;
        }
        last_id = id;
        last_ts = ts;
        prev.clear();
        prev.push_str(req(r, 16).map_err(|e| sqlite(path, e))?);
        records += 1;
        expect_seq += 1;
    }
    if records == 0 {
        if let Some(c) = &cut {
            expect_seq = c.through_seq + 1;
            prev = c.hash.clone();
        }
    }
    Ok(ChainVerdict {
        chain,
        records,
        first_seq,
        head: ChainHead {
            chain,
            seq: expect_seq - 1,
            hash: prev,
        },
    })
}

/// (record id, chain seq, session, event seq, event hash named, actual hash)
type BadLink = (
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// Every `sessions` record points at an event with that hash; every
/// audited event (after the retention cut) has exactly one record.
fn verify_links(
    conn: &Connection,
    path: &Path,
    session: Option<&SessionId>,
    broken: &mut Vec<AuditBreak>,
) -> Result<u64> {
    let sql = |e| sqlite(path, e);
    let scope = if session.is_some() {
        " AND a.session_id = ?1"
    } else {
        " AND ?1 IS NULL"
    };
    let s = session.map(|s| s.as_str().to_string());
    let links: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM audit a WHERE a.chain = 'sessions'{scope}"),
            params![s],
            |r| r.get(0),
        )
        .map_err(sql)?;
    let bad: Option<BadLink> = conn
        .query_row(
            &format!(
                "SELECT a.id, a.seq, a.session_id, a.event_seq, a.event_hash, e.hash FROM audit a
                 LEFT JOIN events e ON e.session_id = a.session_id AND e.seq = a.event_seq
                 WHERE a.chain = 'sessions'{scope} AND (e.hash IS NULL OR e.hash IS NOT a.event_hash)
                 ORDER BY a.id LIMIT 1"
            ),
            params![s],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .optional()
        .map_err(sql)?;
    if let Some((id, seq, sess, ev_seq, ev_hash, actual)) = bad {
        let where_ = format!(
            "event {}#{}",
            sess.as_deref().unwrap_or("?"),
            ev_seq.map(|s| s.to_string()).unwrap_or_else(|| "?".into())
        );
        broken.push(AuditBreak {
            place: "links".into(),
            id: Some(id as u64),
            seq: Some(seq as u64),
            detail: match actual {
                None => format!("the record names {where_}, which does not exist"),
                Some(h) => format!(
                    "the record names {where_} with hash {}, but that event's hash is {h}",
                    ev_hash.as_deref().unwrap_or("(none)")
                ),
            },
        });
    }
    let dup: Option<(String, i64)> = conn
        .query_row(
            &format!(
                "SELECT a.session_id, a.event_seq FROM audit a WHERE a.event_seq IS NOT NULL{scope}
                 GROUP BY a.session_id, a.event_seq HAVING count(*) > 1 LIMIT 1"
            ),
            params![s],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql)?;
    if let Some((sess, seq)) = dup {
        broken.push(AuditBreak {
            place: "links".into(),
            id: None,
            seq: Some(seq as u64),
            detail: format!("event {sess}#{seq} has more than one record: one was inserted"),
        });
    }
    // Events older than the sessions chain's cut lost their records by design.
    let cut_ts = last_cut(conn, path, AuditChain::Sessions)?
        .map(|c| c.through_ts_ms)
        .unwrap_or(i64::MIN);
    let names: Vec<String> = AUDITED_EVENT_NAMES
        .iter()
        .map(|n| format!("'{n}'"))
        .collect();
    let escope = if session.is_some() {
        " AND e.session_id = ?1"
    } else {
        " AND ?1 IS NULL"
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT e.session_id, e.seq, e.kind, e.body FROM events e
             WHERE e.kind IN ({}) AND e.ts_ms > ?2{escope}
             AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.session_id = e.session_id AND a.event_seq = e.seq)
             ORDER BY e.gid",
            names.join(", ")
        ))
        .map_err(sql)?;
    let mut rows = stmt.query(params![s, cut_ts]).map_err(sql)?;
    while let Some(r) = rows.next().map_err(sql)? {
        let sess: String = r.get(0).map_err(sql)?;
        let seq: i64 = r.get(1).map_err(sql)?;
        let kind: String = r.get(2).map_err(sql)?;
        if kind == "state_changed" {
            // Only terminal states are audited.
            let body: Vec<u8> = r.get(3).map_err(sql)?;
            match decode_canonical_event(&body) {
                Ok(ev) if !is_audited(&ev.event) => continue,
                _ => {}
            }
        }
        broken.push(AuditBreak {
            place: "links".into(),
            id: None,
            seq: Some(seq as u64),
            detail: format!("event {sess}#{seq} ({kind}) has no audit record: it was deleted"),
        });
        break;
    }
    Ok(links as u64)
}

/// Both audit chains and the stray-record check, on a connection of their
/// own: (verdicts, breaks, whether a stray record was found).
fn walk_chains(path: &Path) -> Result<(Vec<ChainVerdict>, Vec<AuditBreak>, bool)> {
    let conn = crate::open_reader(path)?;
    let tx = conn.unchecked_transaction().map_err(|e| sqlite(path, e))?;
    let mut broken = Vec::new();
    let mut chains = Vec::new();
    for chain in AuditChain::ALL {
        chains.push(verify_audit_chain(&tx, path, chain, &mut broken)?);
    }
    let stray = stray_records(&tx, path, &mut broken)?;
    Ok((chains, broken, stray))
}

/// A record in no chain was inserted: no walk reads it, yet queries and
/// exports would. Three index range seeks around the two chain names;
/// whether there was one.
fn stray_records(conn: &Connection, path: &Path, broken: &mut Vec<AuditBreak>) -> Result<bool> {
    // Each range on its own: combined, SQLite scans the table. Numbers
    // sort below text and blobs above it, so a chain of another type is
    // found too.
    let mut stray: Option<(i64, String)> = None;
    for range in [
        "chain < 'daemon'",
        "chain > 'daemon' AND chain < 'sessions'",
        "chain > 'sessions'",
    ] {
        let found: Option<(i64, String)> = conn
            .query_row(
                &format!("SELECT id, CAST(chain AS TEXT) FROM audit WHERE {range} LIMIT 1"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| sqlite(path, e))?;
        stray = match (stray, found) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if let Some((id, chain)) = stray {
        broken.push(AuditBreak {
            place: "chains".into(),
            id: Some(id as u64),
            seq: None,
            detail: format!(
                "record id {id} claims chain {chain:?}, which does not exist: it was inserted"
            ),
        });
        return Ok(true);
    }
    Ok(false)
}

/// What one pass over the whole event log vouches for.
struct EventScan {
    /// Every session, sorted, with its event count when its chain is sound
    /// (`None`: the exact check must look at it).
    sessions: Vec<(String, Option<u64>)>,
    /// Whether the audited events and the `sessions` chain's records
    /// correspond one to one, in order.
    links_sound: bool,
    /// Records of the `sessions` chain (meaningful when `links_sound`).
    links: u64,
}

/// One pass over every event in commit order that checks each session's
/// chain (seq, hash, header, back-link) and, in step with a second cursor
/// over the `sessions` chain's records, that the audited events and the
/// records correspond one to one. Sequential reads and one hash per event,
/// where the exact checks cost an index lookup per event and per record.
///
/// It can only vouch: a session or the links it cannot vouch for go to the
/// exact checks ([`crate::verify_chain`], [`verify_links`]), which decide
/// and name the break. The one thing it does not read is the event body
/// past its header (the hash covers those bytes).
fn scan_events(conn: &Connection, path: &Path, cut_ts: i64) -> Result<EventScan> {
    struct Walk {
        next_seq: u64,
        prev: [u8; 64],
        events: u64,
        sound: bool,
    }
    let sql = |e| sqlite(path, e);
    let mut genesis = [0u8; 64];
    genesis.copy_from_slice(GENESIS_HASH.as_bytes());
    let mut walks: HashMap<String, Walk> = HashMap::new();
    let mut ev_stmt = conn
        .prepare("SELECT session_id, seq, ts_ms, kind, hash, body FROM events ORDER BY gid")
        .map_err(sql)?;
    // Records in id order are in seq order (one writer assigns both); if
    // they are not, the chain walk names it and the links go to the exact
    // check. NOT INDEXED: a scan in rowid order, where the (chain, seq)
    // index would make SQLite sort every record.
    let mut rec_stmt = conn
        .prepare(
            "SELECT session_id, event_seq, event_hash FROM audit NOT INDEXED WHERE chain = 'sessions' ORDER BY id",
        )
        .map_err(sql)?;
    let mut recs = rec_stmt.query([]).map_err(sql)?;
    let mut events = ev_stmt.query([]).map_err(sql)?;
    let (mut links_sound, mut links) = (true, 0u64);
    while let Some(r) = events.next().map_err(sql)? {
        // Only the session must be readable (the exact check lists
        // sessions the same way); any other unreadable column means the
        // scan cannot vouch, and the exact checks decide.
        let session = req(r, 0).map_err(sql)?;
        let seq = r.get::<_, i64>(1).ok().filter(|s| *s >= 1);
        let ts = r.get::<_, i64>(2).ok();
        let kind = req(r, 3).ok();
        let hash = req(r, 4).ok();
        let body = match r.get_ref(5) {
            Ok(ValueRef::Blob(b)) => Some(b),
            _ => None,
        };
        // The whole event is decoded (one the daemon could not load is not
        // sound), and its kind must be what the `kind` column says: that
        // column decides which events need a record.
        let header = body
            .and_then(|b| decode_event_header(b).ok())
            .filter(|h| kind == Some(h.event.name()));
        if !walks.contains_key(session) {
            walks.insert(
                session.to_string(),
                Walk {
                    next_seq: 1,
                    prev: genesis,
                    events: 0,
                    sound: true,
                },
            );
        }
        if let Some(w) = walks.get_mut(session).filter(|w| w.sound) {
            let sound = match (seq, hash, body, &header) {
                (Some(seq), Some(hash), Some(body), Some(h)) => {
                    seq as u64 == w.next_seq
                        && hash.len() == 64
                        && sha256_matches(body, hash)
                        && h.seq == seq as u64
                        && h.session == session
                        && h.prev_hash.as_bytes() == w.prev
                }
                _ => false,
            };
            match hash.filter(|_| sound) {
                Some(hash) => {
                    w.prev.copy_from_slice(hash.as_bytes());
                    w.next_seq += 1;
                    w.events += 1;
                }
                None => w.sound = false,
            }
        }
        if !links_sound {
            continue;
        }
        // A decoded header also means the kind column was readable and right.
        let (Some(seq), Some(ts), Some(hash), Some(h)) = (seq, ts, hash, &header) else {
            links_sound = false;
            continue;
        };
        // Only terminal state changes are audited.
        if ts > cut_ts && is_audited(&h.event) {
            match recs.next().map_err(sql)? {
                Some(a) => {
                    links += 1;
                    let same = text(a, 0).ok().flatten() == Some(session)
                        && a.get::<_, Option<i64>>(1).ok().flatten() == Some(seq)
                        && text(a, 2).ok().flatten() == Some(hash);
                    links_sound &= same;
                }
                None => links_sound = false,
            }
        }
    }
    if links_sound && recs.next().map_err(sql)?.is_some() {
        links_sound = false;
    }
    // A link held by a record of another chain is something the merge does
    // not see (no daemon record names an event): the exact check names it.
    if links_sound {
        links_sound = !conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM audit WHERE chain = 'daemon' AND event_seq IS NOT NULL)",
                [],
                |r| r.get::<_, bool>(0),
            )
            .map_err(sql)?;
    }
    let mut sessions: Vec<(String, Option<u64>)> = walks
        .into_iter()
        .map(|(s, w)| (s, w.sound.then_some(w.events)))
        .collect();
    sessions.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(EventScan {
        sessions,
        links_sound,
        links,
    })
}

/// Checks a session's records one by one (hash and link to the previous
/// record of the chain), for `verify --session`.
fn verify_session_records(
    conn: &Connection,
    path: &Path,
    session: &SessionId,
    broken: &mut Vec<AuditBreak>,
) -> Result<()> {
    let sql = |e| sqlite(path, e);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM audit WHERE session_id = ?1 AND chain = 'sessions' ORDER BY seq"
        ))
        .map_err(sql)?;
    let mut rows = stmt.query(params![session.as_str()]).map_err(sql)?;
    let cut = last_cut(conn, path, AuditChain::Sessions)?;
    let mut buf = Vec::with_capacity(512);
    while let Some(r) = rows.next().map_err(sql)? {
        let id = r.get::<_, i64>(0).map_err(sql)? as u64;
        let seq = r.get::<_, i64>(2).map_err(sql)? as u64;
        let mismatch = row_hash_mismatch(r, AuditChain::Sessions, &mut buf).map_err(sql)?;
        let row_prev = req(r, 15).map_err(sql)?.to_string();
        let before: Option<String> = if seq == 1 {
            Some(GENESIS_HASH.to_string())
        } else {
            conn.prepare_cached("SELECT hash FROM audit WHERE chain = 'sessions' AND seq = ?1")
                .and_then(|mut s| {
                    s.query_row(params![seq as i64 - 1], |r| r.get(0))
                        .optional()
                })
                .map_err(sql)?
                .or_else(|| {
                    cut.as_ref()
                        .filter(|c| c.through_seq + 1 == seq)
                        .map(|c| c.hash.clone())
                })
        };
        let problem = if let Some((stored, computed)) = mismatch {
            Some(format!(
                "stored hash {stored} but the record hashes to {computed}: it was changed"
            ))
        } else if before.as_deref() != Some(row_prev.as_str()) {
            Some(format!(
                "points back to {row_prev} but the previous record of the chain is {}",
                before.as_deref().unwrap_or("missing")
            ))
        } else {
            None
        };
        if let Some(detail) = problem {
            broken.push(AuditBreak {
                place: format!("session {session} records"),
                id: Some(id),
                seq: Some(seq),
                detail,
            });
            break;
        }
    }
    Ok(())
}

fn verify_checkpoint(
    conn: &Connection,
    path: &Path,
    cp: &AuditCheckpoint,
    verdicts: &[ChainVerdict],
    broken: &mut Vec<AuditBreak>,
) -> Result<()> {
    let sql = |e| sqlite(path, e);
    for head in &cp.chains {
        if head.seq == 0 {
            continue;
        }
        let place = format!("checkpoint of {} at {} ms", head.chain, cp.ts_ms);
        let stored: Option<String> = conn
            .query_row(
                "SELECT hash FROM audit WHERE chain = ?1 AND seq = ?2",
                params![head.chain.as_str(), head.seq as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        let problem = match stored {
            Some(h) if h == head.hash => None,
            Some(h) => Some(format!(
                "record seq {} is {h} now, but the checkpoint recorded {}: the chain was rewritten",
                head.seq, head.hash
            )),
            None => {
                let cut = last_cut(conn, path, head.chain)?;
                let current = verdicts
                    .iter()
                    .find(|v| v.chain == head.chain)
                    .map(|v| v.head.seq);
                match cut {
                    Some(c) if c.through_seq >= head.seq => {
                        if c.through_seq == head.seq && c.hash != head.hash {
                            Some(format!(
                                "retention cut at seq {} has hash {}, but the checkpoint recorded {}",
                                head.seq, c.hash, head.hash
                            ))
                        } else {
                            // Cut by retention since: nothing left to compare.
                            None
                        }
                    }
                    _ => Some(format!(
                        "the checkpoint recorded seq {} but the chain now ends at seq {}: its tail was truncated",
                        head.seq,
                        current.unwrap_or(0)
                    )),
                }
            }
        };
        if let Some(detail) = problem {
            broken.push(AuditBreak {
                place,
                id: None,
                seq: Some(head.seq),
                detail,
            });
        }
    }
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .map_err(sql)?;
    if (events as u64) < cp.events {
        broken.push(AuditBreak {
            place: format!("checkpoint of the event log at {} ms", cp.ts_ms),
            id: None,
            seq: None,
            detail: format!(
                "the checkpoint counted {} events, the log holds {events}: events were deleted",
                cp.events
            ),
        });
    }
    Ok(())
}

/// Recomputes everything: both audit chains (or one session's records),
/// the links between records and events, every session's event chain,
/// and the given checkpoints.
pub(crate) fn verify(conn: &Connection, path: &Path, opts: &VerifyOptions) -> Result<VerifyReport> {
    let started = Instant::now();
    // One read transaction: every check sees the same snapshot while the
    // daemon goes on appending. Only reads happen; dropping it ends it.
    let tx = conn.unchecked_transaction().map_err(|e| sqlite(path, e))?;
    let conn: &Connection = &tx;
    let mut broken = Vec::new();
    let mut chains = Vec::new();
    // (session, events vouched for by the scan, or None: check it exactly)
    let (sessions, links) = match &opts.session {
        Some(s) => {
            verify_session_records(conn, path, s, &mut broken)?;
            let links = verify_links(conn, path, Some(s), &mut broken)?;
            (vec![(s.as_str().to_string(), None)], links)
        }
        None => {
            // The audit chains are walked on a second thread and connection
            // while this one scans the events: the two halves are about
            // equal work and share nothing. Each reads its own snapshot;
            // every cross-check (links, counts) is made within one.
            let (walked, scan) = std::thread::scope(|scope| {
                let walker = scope.spawn(|| walk_chains(path));
                let scan = last_cut(conn, path, AuditChain::Sessions).and_then(|cut| {
                    let cut_ts = cut.map(|c| c.through_ts_ms).unwrap_or(i64::MIN);
                    scan_events(conn, path, cut_ts)
                });
                match walker.join() {
                    Ok(walked) => (walked, scan),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            });
            let (walked_chains, walked_broken, stray) = walked?;
            let scan = scan?;
            chains = walked_chains;
            broken.extend(walked_broken);
            // A stray record may hold a link the merge did not read.
            let links = if scan.links_sound && !stray {
                scan.links
            } else {
                verify_links(conn, path, None, &mut broken)?
            };
            (scan.sessions, links)
        }
    };
    let mut events = 0u64;
    for (s, vouched) in &sessions {
        let id = SessionId::parse(s).map_err(|e| StoreError::Corrupt {
            session: s.clone(),
            seq: 0,
            detail: e.to_string(),
        })?;
        if let Some(n) = vouched {
            events += n;
            continue;
        }
        let report = verify_chain(conn, path, &id)?;
        events += report.events;
        if let Some(b) = report.broken {
            broken.push(AuditBreak {
                place: format!("session {id} events"),
                id: None,
                seq: Some(b.seq),
                detail: b.detail,
            });
        }
    }
    for cp in &opts.checkpoints {
        verify_checkpoint(conn, path, cp, &chains, &mut broken)?;
    }
    Ok(VerifyReport {
        ok: broken.is_empty(),
        chains,
        sessions: sessions.len() as u64,
        events,
        links,
        broken,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}
