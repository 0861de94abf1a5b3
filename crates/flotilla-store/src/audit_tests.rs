//! The audit log: derivation, queries, pagination under appends, and
//! tampering done the way an attacker would: by editing the SQLite file.

use super::*;
use flotilla_protocol::audit::{AuditChain, AuditKind};
use flotilla_protocol::{PolicyVerdict, SecretUse, ToolCall};

fn created(principal: &str) -> EventKind {
    EventKind::SessionCreated {
        task: "fix the tests".into(),
        model: "openai:m".into(),
        workspace: "/w".into(),
        base_url: None,
        limits: flotilla_protocol::SessionLimits::default(),
        principal: Some(principal.into()),
        permissions: None,
        role: Some("worker".into()),
        fallbacks: Vec::new(),
        machine: None,
        fleet: None,
    }
}

/// One tool call's events: proposed, decided, started, finished.
fn tool_call(id: &str, command: &str, decision: PolicyVerdict) -> Vec<EventKind> {
    let mut v = vec![
        EventKind::ToolProposed {
            call: ToolCall {
                id: id.into(),
                name: "shell".into(),
                arguments: serde_json::json!({ "command": command }).to_string(),
            },
        },
        EventKind::PolicyDecided {
            call_id: id.into(),
            decision,
            reason: "rule".into(),
            rule: Some("Shell(ls *)".into()),
            layer: Some("user".into()),
        },
    ];
    if decision == PolicyVerdict::Allow {
        v.push(EventKind::ToolStarted { call_id: id.into() });
        v.push(EventKind::ToolFinished {
            call_id: id.into(),
            output: "out".into(),
            is_error: false,
            duration_ms: 3,
        });
    }
    v
}

async fn open(dir: &std::path::Path) -> Store {
    Store::open(
        dir.join("f.db"),
        StoreOptions {
            durability: Durability::Normal,
        },
    )
    .unwrap()
}

/// A session with `calls` allowed tool calls; returns its id.
async fn session_with(store: &Store, principal: &str, calls: usize) -> SessionId {
    let id = SessionId::generate();
    store.append(&id, vec![created(principal)]).await.unwrap();
    for i in 0..calls {
        store
            .append(
                &id,
                tool_call(&format!("c{i}"), &format!("ls {i}"), PolicyVerdict::Allow),
            )
            .await
            .unwrap();
    }
    id
}

fn q(limit: u32) -> AuditQuery {
    AuditQuery {
        limit,
        ..AuditQuery::default()
    }
}

async fn verify(store: &Store) -> VerifyReport {
    store.audit_verify(VerifyOptions::default()).await.unwrap()
}

fn raw(store: &Store) -> rusqlite::Connection {
    rusqlite::Connection::open(store.path()).unwrap()
}

#[tokio::test]
async fn session_events_become_chained_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = session_with(&store, "alice", 2).await;
    store
        .append(
            &id,
            vec![
                EventKind::SecretUsed {
                    record: SecretUse {
                        ts_ms: 1,
                        secret: "gh".into(),
                        host: "api.github.com".into(),
                        method: "GET".into(),
                        path: "/user".into(),
                        allowed: false,
                        reason: "host not granted".into(),
                    },
                },
                EventKind::CancelRequested { by: "bob".into() },
                EventKind::StateChanged {
                    state: SessionState::Cancelled,
                    reason: Some("cancelled by bob".into()),
                },
            ],
        )
        .await
        .unwrap();
    let page = store.audit_query(q(100)).await.unwrap();
    let got: Vec<(AuditKind, &str, &str)> = page
        .activities
        .iter()
        .map(|r| (r.kind, r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (AuditKind::Session, "session.start", "ok"),
            (AuditKind::Policy, "shell", "allow"),
            (AuditKind::Tool, "shell", "ok"),
            (AuditKind::Policy, "shell", "allow"),
            (AuditKind::Tool, "shell", "ok"),
            (AuditKind::Secret, "secret.use", "blocked"),
            (AuditKind::Session, "session.cancel", "requested"),
            (AuditKind::Session, "session.cancelled", "cancelled"),
        ]
    );
    let tool = &page.activities[2];
    assert_eq!(tool.target.as_deref(), Some("ls 0"));
    assert_eq!(tool.principal.as_deref(), Some("alice"));
    assert_eq!(tool.agent.as_deref(), Some("worker"));
    assert_eq!(tool.session.as_deref(), Some(id.as_str()));
    // The cancel was bob's act, in alice's session.
    assert_eq!(page.activities[6].principal.as_deref(), Some("bob"));
    // Chained: each points back to the one before, and names its event.
    let events = store.events(&id, 0, 100).await.unwrap();
    for (i, r) in page.activities.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.computed_hash(), r.hash);
        let prev = if i == 0 {
            GENESIS_HASH
        } else {
            &page.activities[i - 1].hash
        };
        assert_eq!(&r.prev_hash, prev);
        let ev = &events[r.event_seq.unwrap() as usize - 1];
        assert_eq!(r.event_hash.as_deref(), Some(ev.hash.as_str()));
    }
    assert!(page.next_cursor.is_none());
    let report = verify(&store).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.chains[0].records, 8);
    assert_eq!(report.links, 8);
    assert_eq!(report.events, events.len() as u64);
}

#[tokio::test]
async fn daemon_records_form_their_own_chain_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let recs = store
        .append_audit(vec![
            AuditDraft::new(AuditKind::Auth, "auth.token", "failure")
                .on("tcp 127.0.0.1")
                .because("wrong token"),
            AuditDraft::new(AuditKind::Admin, "principal.add", "ok")
                .by("root")
                .on("carol"),
        ])
        .await
        .unwrap();
    assert_eq!(recs[0].chain, AuditChain::Daemon);
    assert_eq!((recs[0].seq, recs[1].seq), (1, 2));
    assert_eq!(recs[1].prev_hash, recs[0].hash);
    session_with(&store, "alice", 1).await;
    store.record_audit(AuditDraft::new(AuditKind::Auth, "auth.peer", "success").by("alice"));
    store.close();
    drop(store);

    let store = open(dir.path()).await;
    let more = store
        .append_audit(vec![
            AuditDraft::new(AuditKind::Admin, "secret.add", "ok").by("root")
        ])
        .await
        .unwrap();
    // The fire-and-forget record committed before the close; the chain
    // continued across the restart.
    assert_eq!(more[0].seq, 4);
    let report = verify(&store).await;
    assert!(report.ok, "{report:?}");
    let daemon = report
        .chains
        .iter()
        .find(|c| c.chain == AuditChain::Daemon)
        .unwrap();
    assert_eq!(daemon.records, 4);
    assert_eq!(daemon.head.hash, more[0].hash);
    // Ids order everything, both chains together.
    let all = store.audit_query(q(100)).await.unwrap().activities;
    assert!(all
        .windows(2)
        .all(|w| w[0].id < w[1].id && w[0].ts_ms <= w[1].ts_ms));
}

#[tokio::test]
async fn filters_and_cursor_pages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let a = session_with(&store, "alice", 5).await;
    let b = session_with(&store, "bob", 3).await;
    store
        .append_audit(vec![AuditDraft::new(
            AuditKind::Auth,
            "auth.totp",
            "success",
        )
        .by("bob")])
        .await
        .unwrap();
    let count = |page: &AuditPage| page.activities.len();
    let by_kind = store
        .audit_query(AuditQuery {
            kinds: vec![AuditKind::Tool],
            ..q(100)
        })
        .await
        .unwrap();
    assert_eq!(count(&by_kind), 8);
    let by_session = store
        .audit_query(AuditQuery {
            session: Some(b.as_str().into()),
            kinds: vec![AuditKind::Policy],
            ..q(100)
        })
        .await
        .unwrap();
    assert_eq!(count(&by_session), 3);
    assert!(by_session
        .activities
        .iter()
        .all(|r| r.session.as_deref() == Some(b.as_str())));
    let by_principal = store
        .audit_query(AuditQuery {
            principal: Some("bob".into()),
            ..q(100)
        })
        .await
        .unwrap();
    assert_eq!(count(&by_principal), 1 + 3 * 2 + 1);
    // A normal principal sees its own sessions and its own acts only.
    let visible = store
        .audit_query(AuditQuery {
            visible_to: Some("alice".into()),
            ..q(100)
        })
        .await
        .unwrap();
    assert_eq!(count(&visible), 1 + 5 * 2);
    assert!(visible
        .activities
        .iter()
        .all(|r| r.session.as_deref() == Some(a.as_str())));

    // Time bounds.
    let all = store.audit_query(q(1000)).await.unwrap().activities;
    let mid = all[all.len() / 2].ts_ms;
    let since = store
        .audit_query(AuditQuery {
            since_ms: Some(mid),
            ..q(1000)
        })
        .await
        .unwrap();
    assert!(since.activities.iter().all(|r| r.ts_ms >= mid));
    assert_eq!(count(&since), all.iter().filter(|r| r.ts_ms >= mid).count());
    let until = store
        .audit_query(AuditQuery {
            until_ms: Some(mid),
            ..q(1000)
        })
        .await
        .unwrap();
    assert_eq!(count(&until), all.iter().filter(|r| r.ts_ms <= mid).count());
    let none = store
        .audit_query(AuditQuery {
            since_ms: Some(i64::MAX - 1),
            ..q(10)
        })
        .await
        .unwrap();
    assert_eq!(count(&none), 0);

    // Pages of 3, forwards and backwards, cover everything exactly once.
    for descending in [false, true] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .audit_query(AuditQuery {
                    cursor,
                    descending,
                    ..q(3)
                })
                .await
                .unwrap();
            seen.extend(page.activities.iter().map(|r| r.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c.parse().unwrap()),
                None => break,
            }
        }
        let mut expect: Vec<u64> = all.iter().map(|r| r.id).collect();
        if descending {
            expect.reverse();
        }
        assert_eq!(seen, expect);
    }
}

#[tokio::test]
async fn cursor_pages_are_stable_under_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    session_with(&store, "alice", 20).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..30 {
                session_with(&store, "bob", 2).await;
                store.record_audit(AuditDraft::new(AuditKind::Auth, "auth.peer", "success"));
            }
            // Queued after the fire-and-forget records: once this one has
            // committed, so have they.
            store
                .append_audit(vec![AuditDraft::new(AuditKind::Admin, "barrier", "ok")])
                .await
                .unwrap();
        })
    };
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut idle_rounds = 0;
    loop {
        let page = store
            .audit_query(AuditQuery { cursor, ..q(7) })
            .await
            .unwrap();
        seen.extend(page.activities.iter().map(|r| r.id));
        if let Some(last) = page.activities.last() {
            cursor = Some(last.id);
        }
        if page.next_cursor.is_none() {
            if writer.is_finished() {
                idle_rounds += 1;
                if idle_rounds > 1 {
                    break;
                }
            }
            tokio::task::yield_now().await;
        }
    }
    writer.await.unwrap();
    let all: Vec<u64> = store
        .audit_query(q(10_000))
        .await
        .unwrap()
        .activities
        .iter()
        .map(|r| r.id)
        .collect();
    // Nothing skipped, nothing repeated.
    assert_eq!(seen, all);
    assert!(verify(&store).await.ok);
}

/// Builds a log with both chains populated; returns the store.
async fn populated(dir: &std::path::Path) -> Store {
    let store = open(dir).await;
    for i in 0..3 {
        session_with(&store, "alice", 3).await;
        store
            .append_audit(vec![AuditDraft::new(
                AuditKind::Admin,
                "principal.add",
                "ok",
            )
            .by("root")
            .on(format!("p{i}"))])
            .await
            .unwrap();
    }
    assert!(verify(&store).await.ok);
    store
}

fn broken_at(report: &VerifyReport) -> Vec<(String, Option<u64>)> {
    report
        .broken
        .iter()
        .map(|b| (b.place.clone(), b.seq))
        .collect()
}

#[tokio::test]
async fn verify_names_a_changed_record_at_any_position() {
    for seq in [1i64, 10, 21] {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let n = raw(&store)
            .execute(
                "UPDATE audit SET outcome = 'deny' WHERE chain = 'sessions' AND seq = ?1",
                [seq],
            )
            .unwrap();
        assert_eq!(n, 1);
        let report = verify(&store).await;
        assert!(!report.ok);
        assert_eq!(report.broken[0].place, "chain sessions");
        assert_eq!(report.broken[0].seq, Some(seq as u64), "{report:?}");
        assert!(report.broken[0].detail.contains("changed"), "{report:?}");
    }
}

#[tokio::test]
async fn verify_names_deleted_reordered_and_inserted_records() {
    // Deleted in the middle, at the start, at the end (the end: the event
    // still exists, so its missing record shows).
    for (seq, expect) in [(5i64, 6u64), (1, 2), (21, 21)] {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        raw(&store)
            .execute(
                "DELETE FROM audit WHERE chain = 'sessions' AND seq = ?1",
                [seq],
            )
            .unwrap();
        let report = verify(&store).await;
        assert!(!report.ok, "delete {seq}");
        if seq == 21 {
            assert_eq!(report.broken[0].place, "links", "{report:?}");
            assert!(report.broken[0].detail.contains("no audit record"));
        } else {
            assert_eq!(
                broken_at(&report)[0],
                ("chain sessions".into(), Some(expect)),
                "{report:?}"
            );
        }
    }
    // Reordered: two records swap their contents (ids stay).
    {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let c = raw(&store);
        c.execute_batch(
            "UPDATE audit SET seq = -1 WHERE chain = 'sessions' AND seq = 7;
             UPDATE audit SET seq = 7 WHERE chain = 'sessions' AND seq = 8;
             UPDATE audit SET seq = 8 WHERE chain = 'sessions' AND seq = -1;",
        )
        .unwrap();
        let report = verify(&store).await;
        assert!(!report.ok);
        assert_eq!(
            broken_at(&report)[0],
            ("chain sessions".into(), Some(7)),
            "{report:?}"
        );
    }
    // Inserted: a copy of record 3 placed after it, everything after shifted.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let c = raw(&store);
        c.execute_batch(
            "UPDATE audit SET seq = seq + 1000 WHERE chain = 'sessions' AND seq > 3;
             UPDATE audit SET seq = seq - 999 WHERE chain = 'sessions' AND seq > 1000;
             INSERT INTO audit (id, chain, seq, ts_ms, principal, session_id, agent, kind, action, target, outcome, reason, detail, event_seq, event_hash, prev_hash, hash)
               SELECT 100000, chain, 4, ts_ms, principal, session_id, agent, kind, action, target, 'deny', reason, detail, event_seq, event_hash, hash, hash
               FROM audit WHERE chain = 'sessions' AND seq = 3;",
        )
        .unwrap();
        let report = verify(&store).await;
        assert!(!report.ok);
        assert_eq!(
            broken_at(&report)[0],
            ("chain sessions".into(), Some(4)),
            "{report:?}"
        );
        // The duplicate link is named too.
        assert!(report
            .broken
            .iter()
            .any(|b| b.detail.contains("more than one record")));
    }
    // A daemon record deleted in the middle.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        raw(&store)
            .execute("DELETE FROM audit WHERE chain = 'daemon' AND seq = 2", [])
            .unwrap();
        let report = verify(&store).await;
        assert_eq!(broken_at(&report), vec![("chain daemon".into(), Some(3))]);
    }
    // An event changed: its own chain and the record's link both break.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let c = raw(&store);
        let (sid, seq): (String, i64) = c
            .query_row(
                "SELECT session_id, seq FROM events WHERE kind = 'tool_finished' LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        c.execute(
            "UPDATE events SET hash = 'ff' || substr(hash, 3) WHERE session_id = ?1 AND seq = ?2",
            rusqlite::params![sid, seq],
        )
        .unwrap();
        let report = verify(&store).await;
        let places: Vec<String> = report.broken.iter().map(|b| b.place.clone()).collect();
        assert!(places.contains(&"links".to_string()), "{report:?}");
        assert!(
            places.contains(&format!("session {sid} events")),
            "{report:?}"
        );
    }
}

#[tokio::test]
async fn a_checkpoint_catches_truncation_and_a_rewritten_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let cp = store.audit_checkpoint("root").await.unwrap();
    let opts = VerifyOptions {
        session: None,
        checkpoints: vec![cp.clone()],
    };
    assert!(store.audit_verify(opts.clone()).await.unwrap().ok);
    // The checkpoint itself is in the daemon chain.
    let last = store
        .audit_query(AuditQuery {
            kinds: vec![AuditKind::Admin],
            descending: true,
            ..q(1)
        })
        .await
        .unwrap();
    assert_eq!(last.activities[0].action, CHECKPOINT_ACTION);

    // Truncate the daemon chain's tail (the checkpoint record and the one
    // before it): the chain alone still verifies, the checkpoint does not.
    raw(&store)
        .execute("DELETE FROM audit WHERE chain = 'daemon' AND seq >= 3", [])
        .unwrap();
    assert!(
        verify(&store).await.ok,
        "a clean cut tail is invisible to the chain alone"
    );
    let report = store.audit_verify(opts.clone()).await.unwrap();
    assert!(!report.ok);
    assert!(report.broken[0].detail.contains("truncated"), "{report:?}");

    // Rewriting a record and re-hashing everything after it (no key to
    // stop that) shows against the checkpoint too.
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let cp = store.audit_checkpoint("root").await.unwrap();
    store.close();
    let c = rusqlite::Connection::open(dir.path().join("f.db")).unwrap();
    c.execute(
        "UPDATE audit SET outcome = 'deny' WHERE chain = 'sessions' AND seq = 2",
        [],
    )
    .unwrap();
    rehash(&c, AuditChain::Sessions);
    drop(c);
    let report = verify_file(
        &dir.path().join("f.db"),
        &VerifyOptions {
            session: None,
            checkpoints: vec![cp],
        },
    )
    .unwrap();
    assert_eq!(report.broken.len(), 1, "{report:?}");
    assert!(
        report.broken[0].place.starts_with("checkpoint of sessions"),
        "{report:?}"
    );
    assert!(report.broken[0].detail.contains("rewritten"));
}

/// What an attacker with the file and this source does: recompute every
/// hash of a chain so that it verifies on its own.
fn rehash(c: &rusqlite::Connection, chain: AuditChain) {
    let mut stmt = c
        .prepare(&format!(
            "SELECT {} FROM audit WHERE chain = ?1 ORDER BY seq",
            super::audit_columns()
        ))
        .unwrap();
    let recs: Vec<AuditRecord> = stmt
        .query_map([chain.as_str()], super::audit_row)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut prev = GENESIS_HASH.to_string();
    for mut r in recs {
        r.prev_hash = prev.clone();
        r.hash = r.computed_hash();
        c.execute(
            "UPDATE audit SET prev_hash = ?1, hash = ?2 WHERE id = ?3",
            rusqlite::params![r.prev_hash, r.hash, r.id as i64],
        )
        .unwrap();
        prev = r.hash;
    }
}

#[tokio::test]
async fn retention_cuts_keep_the_chains_verifiable() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    // Old records, then (after a pause) new ones: the cut falls between.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cut_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    session_with(&store, "alice", 3).await;
    store
        .append_audit(vec![
            AuditDraft::new(AuditKind::Admin, "secret.add", "ok").by("root")
        ])
        .await
        .unwrap();
    let all = store.audit_query(q(1000)).await.unwrap().activities;
    let cp_before = store.audit_checkpoint("root").await.unwrap();
    let before = verify(&store).await;
    assert!(before.ok, "{before:?}");

    let cut = store.audit_prune(cut_at, "root").await.unwrap().unwrap();
    assert_eq!(
        (cut.kind, cut.action.as_str()),
        (AuditKind::Admin, PRUNE_ACTION)
    );
    assert_eq!(cut.principal.as_deref(), Some("root"));
    let left = store.audit_query(q(1000)).await.unwrap().activities;
    assert!(left.len() < all.len());
    assert!(left.iter().all(|r| r.ts_ms >= cut_at), "{left:?}");
    let after = store
        .audit_verify(VerifyOptions {
            session: None,
            checkpoints: vec![cp_before],
        })
        .await
        .unwrap();
    assert!(after.ok, "{after:?}");
    let sessions = after
        .chains
        .iter()
        .find(|c| c.chain == AuditChain::Sessions)
        .unwrap();
    assert!(sessions.first_seq > 1);

    // Appends continue the chain after the cut, and a second prune with
    // nothing to cut records nothing.
    session_with(&store, "alice", 1).await;
    assert!(store.audit_prune(cut_at, "root").await.unwrap().is_none());
    assert!(verify(&store).await.ok);

    // Forging the cut: delete one more old-looking record at the front.
    let first: i64 = raw(&store)
        .query_row(
            "SELECT min(seq) FROM audit WHERE chain = 'sessions'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    raw(&store)
        .execute(
            "DELETE FROM audit WHERE chain = 'sessions' AND seq = ?1",
            [first],
        )
        .unwrap();
    let report = verify(&store).await;
    assert!(!report.ok);
    assert!(
        report.broken[0]
            .detail
            .contains("retention cut record says"),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_older_database_gets_its_audit_log_built_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let before = store.audit_query(q(1000)).await.unwrap().activities;
    let sessions_before: Vec<_> = before
        .iter()
        .filter(|r| r.chain == AuditChain::Sessions)
        .map(|r| {
            (
                r.kind,
                r.action.clone(),
                r.target.clone(),
                r.principal.clone(),
                r.event_hash.clone(),
            )
        })
        .collect();
    store.close();
    drop(store);
    // Make it a version-2 file: no audit table, no principal columns.
    let c = rusqlite::Connection::open(dir.path().join("f.db")).unwrap();
    c.execute_batch(
        "DROP TABLE audit; ALTER TABLE sessions DROP COLUMN principal;
         ALTER TABLE sessions DROP COLUMN agent; PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(c);
    let store = open(dir.path()).await;
    let after = store.audit_query(q(1000)).await.unwrap().activities;
    let sessions_after: Vec<_> = after
        .iter()
        .map(|r| {
            (
                r.kind,
                r.action.clone(),
                r.target.clone(),
                r.principal.clone(),
                r.event_hash.clone(),
            )
        })
        .collect();
    // The session records come back from the events (daemon records of
    // the old file did not exist in version 2).
    assert_eq!(sessions_after, sessions_before);
    assert!(verify(&store).await.ok);
    let v: i32 = raw(&store)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}

#[tokio::test]
async fn verify_one_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let s = session_with(&store, "dave", 2).await;
    let opts = VerifyOptions {
        session: Some(s.clone()),
        checkpoints: Vec::new(),
    };
    let report = store.audit_verify(opts.clone()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.sessions, report.links), (1, 5));
    raw(&store)
        .execute(
            "UPDATE audit SET target = 'rm -rf /' WHERE session_id = ?1 AND kind = 'tool'",
            [s.as_str()],
        )
        .unwrap();
    let report = store.audit_verify(opts).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.broken[0].place, format!("session {s} records"));
}

#[tokio::test]
async fn verify_file_refuses_what_is_not_a_flotilla_database() {
    let dir = tempfile::tempdir().unwrap();
    let err = verify_file(&dir.path().join("nope.db"), &VerifyOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::NotFlotilla { .. }));
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not sqlite at all, just some bytes in a file").unwrap();
    assert!(verify_file(&junk, &VerifyOptions::default()).is_err());
}

/// The full verify vouches for sound sessions in one pass and hands the
/// rest to the exact per-session check: both must agree on the counts, a
/// session stored out of commit order but otherwise intact stays sound, and
/// a gap is still named where it is.
#[tokio::test]
async fn the_one_pass_scan_and_the_exact_checks_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let c = raw(&store);
    let count = |sql: &str| -> u64 { c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64 };
    let report = verify(&store).await;
    assert!(report.ok, "{report:?}");
    assert_eq!(report.events, count("SELECT count(*) FROM events"));
    assert_eq!(
        report.sessions,
        count("SELECT count(DISTINCT session_id) FROM events")
    );
    assert_eq!(
        report.links,
        count("SELECT count(*) FROM audit WHERE chain = 'sessions'")
    );

    // One session's second event moved to the end of the table (a new
    // gid, same content): the scan cannot vouch for it, the exact check
    // finds its chain intact.
    let (sid, kind): (String, String) = c
        .query_row(
            "SELECT session_id, kind FROM events WHERE seq = 2 ORDER BY gid LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    c.execute(
        "UPDATE events SET gid = (SELECT max(gid) + 1 FROM events) WHERE session_id = ?1 AND seq = 2",
        [&sid],
    )
    .unwrap();
    let moved = verify(&store).await;
    // An audited event out of order also sends the links to the exact
    // check, which finds each record's event where it names it.
    assert!(moved.ok, "moved a {kind} event: {moved:?}");
    assert_eq!(
        (moved.events, moved.sessions, moved.links),
        (report.events, report.sessions, report.links)
    );

    // An unaudited event deleted from the middle of a session: that
    // session's chain breaks at the gap; the links stay whole.
    let (sid, seq): (String, i64) = c
        .query_row(
            "SELECT session_id, seq FROM events WHERE kind = 'tool_proposed' AND seq > 1 ORDER BY gid LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    c.execute(
        "DELETE FROM events WHERE session_id = ?1 AND seq = ?2",
        rusqlite::params![sid, seq],
    )
    .unwrap();
    let gap = verify(&store).await;
    assert_eq!(
        broken_at(&gap),
        vec![(format!("session {sid} events"), Some(seq as u64 + 1))],
        "{gap:?}"
    );
    assert!(gap.broken[0]
        .detail
        .contains(&format!("expected seq {seq}")));
}

/// (session, head seq, head hash, head time) of the first session.
fn head_of_a_session(c: &rusqlite::Connection) -> (String, i64, String, i64) {
    c.query_row(
        "SELECT session_id, seq, hash, ts_ms FROM events e
         WHERE seq = (SELECT max(seq) FROM events WHERE session_id = e.session_id)
         ORDER BY gid LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .unwrap()
}

/// A second record for an event already recorded, planted in the daemon
/// chain (rehashed: the hashes have no key) or in a chain of its own (no
/// hashing at all): the one-pass merge sees neither, the full verify must.
#[tokio::test]
async fn a_second_link_outside_the_sessions_chain_is_named() {
    // In the daemon chain.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let c = raw(&store);
        let (sid, eseq): (String, i64) = c
            .query_row(
                "SELECT session_id, event_seq FROM audit WHERE chain = 'sessions' ORDER BY id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        c.execute(
            "UPDATE audit SET session_id = ?1, event_seq = ?2
             WHERE chain = 'daemon' AND seq = (SELECT max(seq) FROM audit WHERE chain = 'daemon')",
            rusqlite::params![sid, eseq],
        )
        .unwrap();
        rehash(&c, AuditChain::Daemon);
        let report = verify(&store).await;
        assert!(!report.ok);
        assert!(
            report.broken.iter().any(|b| b.place == "links"
                && b.detail
                    .contains(&format!("event {sid}#{eseq} has more than one record"))),
            "{report:?}"
        );
    }
    // In a chain that does not exist.
    {
        let dir = tempfile::tempdir().unwrap();
        let store = populated(dir.path()).await;
        let c = raw(&store);
        c.execute(
            "INSERT INTO audit (chain, seq, ts_ms, principal, session_id, agent, kind, action, target, outcome, reason, detail, event_seq, event_hash, prev_hash, hash)
             SELECT 'x', seq, ts_ms, principal, session_id, agent, kind, action, target, outcome, reason, detail, event_seq, event_hash, prev_hash, hash
             FROM audit WHERE chain = 'sessions' ORDER BY id LIMIT 1",
            [],
        )
        .unwrap();
        let id: i64 = c
            .query_row("SELECT id FROM audit WHERE chain = 'x'", [], |r| r.get(0))
            .unwrap();
        let report = verify(&store).await;
        assert!(!report.ok);
        assert!(
            report.broken.iter().any(|b| b.place == "chains"
                && b.id == Some(id as u64)
                && b.detail.contains("\"x\", which does not exist")),
            "{report:?}"
        );
        assert!(
            report.broken.iter().any(|b| b.place == "links"),
            "{report:?}"
        );
        // And without a link, the stray record is still named.
        c.execute(
            "UPDATE audit SET chain = 'zz', session_id = NULL, event_seq = NULL, event_hash = NULL WHERE chain = 'x'",
            [],
        )
        .unwrap();
        let report = verify(&store).await;
        assert_eq!(
            broken_at(&report),
            vec![("chains".to_string(), None)],
            "{report:?}"
        );
    }
}

/// An event appended at a session's head, hash and header consistent, whose
/// event is none this build knows: the daemon could not load that log, so
/// neither the full verify nor `--session` may call it sound, and both count
/// the same events.
#[tokio::test]
async fn an_event_the_daemon_could_not_load_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let c = raw(&store);
    let before = verify(&store).await;
    let (sid, seq, hash, ts) = head_of_a_session(&c);
    let body = serde_json::to_vec(&serde_json::json!({
        "v": 1, "session": sid, "seq": seq + 1, "ts_ms": ts + 1, "prev": hash,
        "event": {"type": "no_such_event", "anything": [1, 2, 3]}
    }))
    .unwrap();
    assert!(decode_canonical_event(&body).is_err());
    c.execute(
        "INSERT INTO events (session_id, seq, ts_ms, kind, hash, body) VALUES (?1, ?2, ?3, 'tool_started', ?4, ?5)",
        rusqlite::params![sid, seq + 1, ts + 1, flotilla_protocol::sha256_hex(&body), body],
    )
    .unwrap();
    let full = verify(&store).await;
    let place = format!("session {sid} events");
    assert_eq!(
        broken_at(&full),
        vec![(place.clone(), Some(seq as u64 + 1))],
        "{full:?}"
    );
    assert!(full.broken[0].detail.contains("does not decode"));
    assert_eq!(full.events, before.events);
    let one = store
        .audit_verify(VerifyOptions {
            session: Some(SessionId::parse(&sid).unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(broken_at(&one), vec![(place, Some(seq as u64 + 1))]);
}

/// An audited event relabelled in the `kind` column (which decides what
/// needs a record) with its record deleted: the relabelling is named.
#[tokio::test]
async fn a_relabelled_event_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let c = raw(&store);
    let (sid, seq): (String, i64) = c
        .query_row(
            "SELECT session_id, seq FROM events WHERE kind = 'policy_decided' ORDER BY gid DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    c.execute(
        "UPDATE events SET kind = 'tool_started' WHERE session_id = ?1 AND seq = ?2",
        rusqlite::params![sid, seq],
    )
    .unwrap();
    let report = verify(&store).await;
    assert!(
        report
            .broken
            .iter()
            .any(|b| b.place == format!("session {sid} events")
                && b.seq == Some(seq as u64)
                && b.detail.contains("kind column says tool_started")),
        "{report:?}"
    );
}

/// A mistyped column the hashes do not cover (`ts_ms`) no longer aborts
/// the whole verify: the scan cannot vouch, the exact checks decide, and
/// the pooled reader serves fresh snapshots afterwards.
#[tokio::test]
async fn a_mistyped_column_does_not_abort_verify() {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path()).await;
    let c = raw(&store);
    let before = verify(&store).await;
    c.execute(
        "UPDATE events SET ts_ms = 'soon' WHERE gid = (SELECT max(gid) FROM events)",
        [],
    )
    .unwrap();
    let report = store.audit_verify(VerifyOptions::default()).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.events, report.links), (before.events, before.links));
    let id = session_with(&store, "bob", 1).await;
    let after = verify(&store).await;
    let now: i64 = c
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert!(after.events > before.events, "{after:?}");
    assert_eq!(after.events, now as u64, "{after:?}");
    assert!(!store.events(&id, 0, 100).await.unwrap().is_empty());
}
