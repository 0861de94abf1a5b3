use super::*;

fn created(task: &str) -> EventKind {
    EventKind::SessionCreated {
        task: task.into(),
        model: "openai:m".into(),
        workspace: "/w".into(),
        base_url: None,
        limits: flotilla_protocol::SessionLimits::default(),
        principal: None,
        permissions: None,
        role: None,
        fallbacks: Vec::new(),
        machine: None,
        fleet: None,
    }
}

fn state(s: SessionState) -> EventKind {
    EventKind::StateChanged {
        state: s,
        reason: None,
    }
}

#[tokio::test]
async fn appends_chain_and_project() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("f.db"), StoreOptions::default()).unwrap();
    let id = SessionId::generate();
    let evs = store.append(&id, vec![created("t")]).await.unwrap();
    assert_eq!(evs[0].seq, 1);
    assert_eq!(evs[0].prev_hash, GENESIS_HASH);
    let more = store
        .append(
            &id,
            vec![
                EventKind::ModelResponded {
                    turn: 1,
                    text: "hi".into(),
                    tool_calls: vec![],
                    usage: flotilla_protocol::Usage {
                        prompt_tokens: 10,
                        completion_tokens: 3,
                    },
                    finish_reason: None,
                    latency_ms: 1,
                    model: None,
                    cost_usd: None,
                },
                EventKind::FinalAnswer { text: "ok".into() },
                state(SessionState::Completed),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        more.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert_eq!(more[0].prev_hash, evs[0].hash);
    let info = store.session(&id).await.unwrap().unwrap();
    assert_eq!(info.state, SessionState::Completed);
    assert_eq!(info.prompt_tokens, 10);
    assert_eq!(info.turns, 1);
    assert_eq!(info.last_seq, 4);
    assert_eq!(info.final_answer.as_deref(), Some("ok"));
    let read = store.events(&id, 1, 100).await.unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read, more);
    let report = store.verify_session(&id).await.unwrap();
    assert_eq!(report.events, 4);
    assert!(report.broken.is_none());
}

#[tokio::test]
async fn unknown_and_duplicate_sessions_are_refused_without_poisoning_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("f.db"), StoreOptions::default()).unwrap();
    let id = SessionId::generate();
    let stranger = SessionId::generate();
    let (a, b) = tokio::join!(
        store.append(&id, vec![created("t")]),
        store.append(&stranger, vec![state(SessionState::Running)])
    );
    assert!(a.is_ok());
    assert!(matches!(b, Err(StoreError::UnknownSession(_))));
    assert!(matches!(
        store.append(&id, vec![created("again")]).await,
        Err(StoreError::SessionExists(_))
    ));
    assert_eq!(store.events(&id, 0, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn concurrent_appenders_get_gapless_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("f.db"), StoreOptions::default()).unwrap();
    let ids: Vec<SessionId> = (0..20).map(|_| SessionId::generate()).collect();
    for id in &ids {
        store.append(id, vec![created("t")]).await.unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        let id = ids[i % ids.len()].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                store
                    .append(&id, vec![state(SessionState::Running)])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for id in &ids {
        let evs = store.events(id, 0, 10_000).await.unwrap();
        assert_eq!(evs.len(), 1 + 50);
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
        }
        assert!(store.verify_session(id).await.unwrap().broken.is_none());
    }
}

#[tokio::test]
async fn survives_reopen_and_rebuilds_projections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let id = SessionId::generate();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store.append(&id, vec![created("t")]).await.unwrap();
        store.close();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let e = store
        .append_one(&id, state(SessionState::Failed))
        .await
        .unwrap();
    assert_eq!(e.seq, 2);
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE sessions SET state = 'running', last_seq = 0", [])
        .unwrap();
    assert_eq!(store.rebuild_projections().await.unwrap(), 2);
    let info = store.session(&id).await.unwrap().unwrap();
    assert_eq!(info.state, SessionState::Failed);
    assert_eq!(info.last_seq, 2);
}

#[tokio::test]
async fn tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let id = SessionId::generate();
    store.append(&id, vec![created("t")]).await.unwrap();
    for _ in 0..4 {
        store
            .append_one(&id, state(SessionState::Running))
            .await
            .unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    let changed = conn
        .execute(
            "UPDATE events SET body = CAST(replace(CAST(body AS TEXT), '\"running\"', '\"failed\"') AS BLOB) WHERE seq = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let report = store.verify_session(&id).await.unwrap();
    assert_eq!(report.broken.as_ref().unwrap().seq, 3, "{report:?}");
    assert_eq!(report.events, 2);
}

#[test]
fn foreign_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database at all, just some text that is long enough",
    )
    .unwrap();
    let before = std::fs::read(&junk).unwrap();
    let err = Store::open(&junk, StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::NotFlotilla { .. }), "{err}");
    assert!(err.to_string().contains("not a flotilla database"));
    assert_eq!(std::fs::read(&junk).unwrap(), before);

    let other = dir.path().join("other.db");
    let conn = Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    let err = Store::open(&other, StoreOptions::default()).err().unwrap();
    assert!(matches!(err, StoreError::NotFlotilla { .. }), "{err}");
    let conn = Connection::open(&other).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "a foreign database must not be changed");
}

#[tokio::test]
async fn live_feed_sees_committed_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("f.db"), StoreOptions::default()).unwrap();
    let mut rx = store.subscribe();
    let id = SessionId::generate();
    store.append(&id, vec![created("t")]).await.unwrap();
    let e = rx.recv().await.unwrap();
    assert_eq!(e.session, id);
    assert_eq!(e.seq, 1);
}

#[tokio::test]
async fn a_version_1_database_gains_the_cost_column_and_keeps_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let id = SessionId::generate();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store.append(&id, vec![created("t")]).await.unwrap();
        store.close();
    }
    // Make it what version 1 wrote: no cost column, user_version 1.
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("ALTER TABLE sessions DROP COLUMN cost_usd; PRAGMA user_version = 1;")
            .unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let info = store.session(&id).await.unwrap().unwrap();
    assert_eq!(info.cost_usd, 0.0);
    let responded = |cost| EventKind::ModelResponded {
        turn: 1,
        text: String::new(),
        tool_calls: vec![],
        usage: flotilla_protocol::Usage::default(),
        finish_reason: None,
        latency_ms: 1,
        model: Some("anthropic:big".into()),
        cost_usd: cost,
    };
    store
        .append(
            &id,
            vec![responded(Some(0.25)), responded(None), responded(Some(0.5))],
        )
        .await
        .unwrap();
    assert_eq!(store.session(&id).await.unwrap().unwrap().cost_usd, 0.75);
    // Rebuilt from the events, the same.
    let conn = Connection::open(&path).unwrap();
    conn.execute("UPDATE sessions SET cost_usd = 0, last_seq = 0", [])
        .unwrap();
    store.rebuild_projections().await.unwrap();
    assert_eq!(store.session(&id).await.unwrap().unwrap().cost_usd, 0.75);
    let v: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert!(store.verify_session(&id).await.unwrap().broken.is_none());
}

/// Version 3 had no fleet columns: they are added (empty), and a fleet's
/// tree is projected from `SessionCreated`, also when rebuilt.
#[tokio::test]
async fn a_version_3_database_gains_the_fleet_tree() {
    use flotilla_protocol::{FleetLink, FleetSpec, ParentLink};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.db");
    let old = SessionId::generate();
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        store.append(&old, vec![created("t")]).await.unwrap();
        store.close();
    }
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP INDEX sessions_by_root; ALTER TABLE sessions DROP COLUMN parent; \
             ALTER TABLE sessions DROP COLUMN root; ALTER TABLE sessions DROP COLUMN name; \
             PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let info = store.session(&old).await.unwrap().unwrap();
    assert_eq!((info.parent, info.root, info.name), (None, None, None));
    let planner = SessionId::generate();
    let worker = SessionId::generate();
    let with_fleet = |link: FleetLink| {
        let mut event = created("t");
        if let EventKind::SessionCreated { fleet, .. } = &mut event {
            *fleet = Some(Box::new(link));
        }
        event
    };
    store
        .append(
            &planner,
            vec![with_fleet(FleetLink {
                spec: Some(FleetSpec::default()),
                parent: None,
            })],
        )
        .await
        .unwrap();
    store
        .append(
            &worker,
            vec![with_fleet(FleetLink {
                spec: None,
                parent: Some(ParentLink {
                    parent: planner.clone(),
                    root: planner.clone(),
                    depth: 1,
                    name: "w1".into(),
                    branch: None,
                    base: None,
                }),
            })],
        )
        .await
        .unwrap();
    let check = |tree: Vec<flotilla_protocol::SessionInfo>| {
        assert_eq!(tree.len(), 2);
        assert_eq!(tree[0].id, planner);
        assert_eq!(tree[0].root.as_ref(), Some(&planner));
        assert_eq!(tree[0].parent, None);
        assert_eq!(tree[1].id, worker);
        assert_eq!(tree[1].parent.as_ref(), Some(&planner));
        assert_eq!(tree[1].name.as_deref(), Some("w1"));
    };
    check(store.fleet_tree(&planner).await.unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE sessions SET parent = NULL, root = NULL, name = NULL",
        [],
    )
    .unwrap();
    store.rebuild_projections().await.unwrap();
    check(store.fleet_tree(&planner).await.unwrap());
}

#[tokio::test]
async fn a_schema_4_database_learns_where_placed_sessions_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let (placed, plain) = (SessionId::generate(), SessionId::generate());
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        let mut event = created("placed");
        if let EventKind::SessionCreated { machine, .. } = &mut event {
            *machine = Some("big".into());
        }
        store.append(&placed, vec![event]).await.unwrap();
        store.append(&plain, vec![created("plain")]).await.unwrap();
        assert_eq!(
            store
                .session(&placed)
                .await
                .unwrap()
                .unwrap()
                .machine
                .as_deref(),
            Some("big")
        );
        store.close();
    }
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("ALTER TABLE sessions DROP COLUMN machine; PRAGMA user_version = 4;")
            .unwrap();
    }
    let store = Store::open(&path, StoreOptions::default()).unwrap();
    let info = store.session(&placed).await.unwrap().unwrap();
    assert_eq!(info.machine.as_deref(), Some("big"));
    assert_eq!(store.session(&plain).await.unwrap().unwrap().machine, None);
    let conn = Connection::open(&path).unwrap();
    let v: i32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
}
