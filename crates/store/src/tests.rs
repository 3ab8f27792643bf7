//! Unit tests of the store: real redb files in temp dirs.

use super::*;
use trimtab_privacy::{Table, UserKey};

/// Whether any file under `dir` (the log's segments included) contains `needle`.
fn scan_dir_for(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        if p.is_dir() {
            return scan_dir_for(&p, needle);
        }
        p.is_file()
            && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
    })
}

/// The files under `dir` (recursively) that contain `needle`, by name.
fn files_with(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_with(&p, needle));
        } else if std::fs::read(&p)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            out.push(p.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

/// Rows for `u` sealed with its (new) key.
fn rows(store: &Store, u: UserKey, f: impl FnOnce(&Sealer, &mut UserRows)) -> UserRows {
    let s = store.sealer(&u);
    let mut r = UserRows::new(u, s.row());
    f(&s, &mut r);
    r
}

#[test]
fn commit_load_export_erase_leaves_nothing_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = UserKey([5; 16]);
    let canary = b"canary-7f3a9c";
    let r = rows(&store, u, |s, r| {
        r.events = vec![
            (1, [1; 16], s.seal(&u, Table::Event, canary)),
            (2, [2; 16], s.seal(&u, Table::Event, b"two")),
        ];
        r.journal = vec![(2, s.seal(&u, Table::Journal, b"j2"))];
        r.decisions = vec![([9; 16], s.seal(&u, Table::Decision, b"dec"))];
        r.learn = vec![([9; 16], s.seal(&u, Table::Learn, b"learn-canary"))];
        r.checkpoint = Some((2, s.seal(&u, Table::State, b"state@2")));
    });
    store.commit(vec![r], Vec::new()).unwrap();
    let rd = store.reader().unwrap();
    assert_eq!(
        rd.seen_many(&u, &[[1; 16], [3; 16]]).unwrap(),
        [true, false]
    );
    let l = rd.load(&u, |_| None).unwrap().unwrap();
    assert_eq!(l.state.as_deref(), Some(&b"state@2"[..]));
    assert_eq!(l.head, 2);
    // The tail starts at the head: seq 1 is covered by the checkpoint.
    assert_eq!(
        l.tail,
        vec![(2, Some(b"two".to_vec()), Some(b"j2".to_vec()))]
    );
    drop(rd);
    let ex = store.export(&u).unwrap().unwrap();
    assert_eq!(ex.events.len(), 2);
    assert_eq!(ex.events[0].1, canary);
    assert_eq!((ex.decisions.len(), ex.learn.len()), (1, 1));
    assert_eq!(
        store.learn_records(|b| Some(b.to_vec())).unwrap(),
        vec![(u, [9; 16], b"learn-canary".to_vec())]
    );
    // Encrypted at rest: the canary never appears in plaintext, even before erasure.
    assert!(!scan_dir_for(dir.path(), canary));
    let key = store.keys().get(&u).unwrap();
    assert!(
        scan_dir_for(dir.path(), &key),
        "key not durable after commit"
    );
    let c = store.erase(&u, None).unwrap();
    // Events are not counted here: the store leaves them in the event store, unreadable.
    assert_eq!((c.events, c.decisions, c.state, c.key), (0, 1, true, true));
    assert_eq!(c.learn, 1);
    assert!(store.export(&u).unwrap().is_none());
    let rd = store.reader().unwrap();
    assert!(rd.load(&u, |_| None).unwrap().is_none());
    assert_eq!(rd.seen_many(&u, &[[1; 16]]).unwrap(), [false]);
    drop(rd);
    // The key that could decrypt leftovers in redb's free pages is gone from the data dir.
    assert!(!scan_dir_for(dir.path(), &key));
    assert!(!scan_dir_for(dir.path(), canary));
}

#[test]
fn users_with_tail_finds_exactly_the_users_past_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ev =
        |s: &Sealer, u: &UserKey, seq: u64| (seq, [seq as u8; 16], s.seal(u, Table::Event, b"e"));
    let a = UserKey([1; 16]); // checkpoint covers everything
    let b = UserKey([2; 16]); // one event past the checkpoint
    let c = UserKey([3; 16]); // never checkpointed
    let d = UserKey([4; 16]); // a journal record (tick) past the checkpoint
    let all = [
        rows(&store, a, |s, r| {
            r.events = vec![ev(s, &a, 0), ev(s, &a, 1)];
            r.checkpoint = Some((2, s.seal(&a, Table::State, b"a")));
        }),
        rows(&store, b, |s, r| {
            r.events = vec![ev(s, &b, 0), ev(s, &b, 1)];
            r.checkpoint = Some((1, s.seal(&b, Table::State, b"b")));
        }),
        rows(&store, c, |s, r| r.events = vec![ev(s, &c, 0)]),
        rows(&store, d, |s, r| {
            r.events = vec![ev(s, &d, 0)];
            r.journal = vec![(1, s.seal(&d, Table::Journal, b"tick"))];
            r.checkpoint = Some((1, s.seal(&d, Table::State, b"d")));
        }),
    ];
    store.commit(all.into(), Vec::new()).unwrap();
    assert_eq!(store.users_with_tail().unwrap(), vec![b, c, d]);
    let rd = store.reader().unwrap();
    let l = rd.load(&d, |_| None).unwrap().unwrap();
    assert_eq!(l.tail, vec![(1, None, Some(b"tick".to_vec()))]);
    let l = rd.load(&c, |_| None).unwrap().unwrap();
    assert_eq!((l.state.is_none(), l.head, l.tail.len()), (true, 0, 1));
}

#[test]
fn stats_add_up_across_commits_and_groups_stay_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let k = |g: &str, arm: &str| {
        (
            g.to_string(),
            String::new(),
            arm.to_string(),
            "m".to_string(),
        )
    };
    store
        .commit(
            Vec::new(),
            vec![(k("e1", "a"), [1.0, 2.0, 4.0, 0.0, 0.0, 0.0])],
        )
        .unwrap();
    store
        .commit(
            Vec::new(),
            vec![
                (k("e1", "a"), [1.0, 3.0, 9.0, 1.0, 1.0, 3.0]),
                (k("e1", "b"), [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
                (k("e2", "a"), [5.0; 6]),
            ],
        )
        .unwrap();
    let e1 = store.stats("e1").unwrap();
    assert_eq!(e1.len(), 2);
    assert_eq!(e1[0].0 .1, "a");
    assert_eq!(e1[0].1, [2.0, 5.0, 13.0, 1.0, 1.0, 3.0]);
    assert_eq!(store.stats("e2").unwrap()[0].1, [5.0; 6]);
    assert!(store.stats("e0").unwrap().is_empty());
}

#[test]
fn clean_marker_survives_only_a_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(store.was_clean(), "a new data dir has nothing to replay");
    drop(store); // like kill -9: no mark_clean
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.was_clean());
    store.mark_clean().unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(store.was_clean());
    drop(store);
    assert!(!Store::open(dir.path()).unwrap().was_clean());
}

#[test]
fn a_schema_1_file_opens_as_the_current_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    {
        // What trimtab 0.1 (schema 1) left: meta, users, events, …; no heads, no journal.
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", &b"1"[..])
            .unwrap();
        txn.open_table(USERS).unwrap();
        txn.open_table(EVENTS).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(
        store.was_clean(),
        "v1 wrote states through: nothing to replay"
    );
    assert!(store.users_with_tail().unwrap().is_empty());
    let txn = store.db.begin_read().unwrap();
    let v = txn.open_table(META).unwrap();
    let v = v.get("schema_version").unwrap().unwrap();
    assert_eq!(v.value(), SCHEMA_VERSION.to_string().as_bytes());
}

/// A schema 2 file (events and journal records in redb tables by user), left by an unclean
/// stop: its records move into the event store, the tables go, and the user's tail past its
/// checkpoint is still replayed.
#[test]
fn a_schema_2_file_moves_its_events_into_the_event_store() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([21; 16]);
    let v = UserKey([22; 16]);
    let (su, sv) = {
        let store = Store::open(dir.path()).unwrap();
        let (su, sv) = (store.sealer(&u), store.sealer(&v));
        store.keys().sync_pending().unwrap();
        (su, sv)
    };
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("schema_version", &b"2"[..]).unwrap();
            meta.insert("shutdown", &b"running"[..]).unwrap();
            meta.remove("events_end").unwrap();
            meta.remove("replay_from").unwrap();
            let mut ev = txn.open_table(EVENTS).unwrap();
            for seq in 0..3u64 {
                let body = format!("u-{seq}");
                ev.insert(
                    (u.0, seq),
                    su.seal(&u, Table::Event, body.as_bytes()).as_slice(),
                )
                .unwrap();
            }
            ev.insert((v.0, 0), sv.seal(&v, Table::Event, b"v-0").as_slice())
                .unwrap();
            let mut seen = txn.open_table(SEEN).unwrap();
            seen.insert((u.0, [7; 16]), 0).unwrap();
            seen.insert((u.0, [8; 16]), 1).unwrap();
            seen.insert((v.0, [7; 16]), 0).unwrap();
            drop(seen);
            let mut jr = txn.open_table(JOURNAL).unwrap();
            jr.insert((u.0, 2), su.seal(&u, Table::Journal, b"j-2").as_slice())
                .unwrap();
            // u's checkpoint covers seqs 0 and 1; v's covers its only event.
            let mut heads = txn.open_table(HEADS).unwrap();
            heads.insert(u.0, 2).unwrap();
            heads.insert(v.0, 1).unwrap();
            let mut users = txn.open_table(USERS).unwrap();
            users
                .insert(u.0, su.seal(&u, Table::State, b"u@2").as_slice())
                .unwrap();
            users
                .insert(v.0, sv.seal(&v, Table::State, b"v@1").as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(!store.was_clean());
    let txn = store.db.begin_read().unwrap();
    assert!(
        txn.open_table(EVENTS).is_err()
            && txn.open_table(JOURNAL).is_err()
            && txn.open_table(SEEN).is_err(),
        "the old tables are dropped"
    );
    drop(txn);
    assert_eq!(store.users_with_tail().unwrap(), vec![u]);
    // The ids of `seen` are in one run per user.
    let rd = store.reader().unwrap();
    assert_eq!(
        rd.seen_many(&u, &[[7; 16], [8; 16], [9; 16]]).unwrap(),
        [true, true, false]
    );
    assert_eq!(
        rd.seen_many(&v, &[[7; 16], [8; 16]]).unwrap(),
        [true, false]
    );
    drop(rd);
    let ex = store.export(&u).unwrap().unwrap();
    let bodies: Vec<&[u8]> = ex.events.iter().map(|e| e.1.as_slice()).collect();
    assert_eq!(bodies, [&b"u-0"[..], b"u-1", b"u-2"]);
    let l = store.reader().unwrap().load(&u, |_| None).unwrap().unwrap();
    assert_eq!((l.state.as_deref(), l.head), (Some(&b"u@2"[..]), 2));
    assert_eq!(
        l.tail,
        vec![(2, Some(b"u-2".to_vec()), Some(b"j-2".to_vec()))]
    );
    let l = store.reader().unwrap().load(&v, |_| None).unwrap().unwrap();
    assert!(l.tail.is_empty());
    drop(store);
    // Migrated once: a second open finds schema 4 and the same records.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.export(&v).unwrap().unwrap().events.len(), 1);
    assert_eq!(store.export(&u).unwrap().unwrap().events.len(), 3);
}

#[test]
fn locked_and_schema_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // redb locks the file: a second open in the same process is refused the same way as
    // another process's.
    match Store::open(dir.path()) {
        Err(StoreError::Locked { .. }) => {}
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("expected Locked, got Ok"),
    }
    {
        let txn = store.db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", &b"99"[..])
            .unwrap();
        txn.commit().unwrap();
    }
    drop(store);
    match Store::open(dir.path()) {
        Err(StoreError::UnknownSchema { found, .. }) => assert_eq!(found, "99"),
        Err(e) => panic!("expected UnknownSchema, got {e}"),
        Ok(_) => panic!("expected UnknownSchema, got Ok"),
    }
}

#[test]
fn garbage_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Open { .. }) => {}
        Err(e) => panic!("expected Open error, got {e}"),
        Ok(_) => panic!("garbage accepted"),
    }
}

#[test]
fn a_logged_batch_not_yet_applied_is_applied_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([8; 16]);
    {
        let store = Store::open(dir.path()).unwrap();
        let r = rows(&store, u, |s, r| {
            r.events = vec![(0, [4; 16], s.seal(&u, Table::Event, b"logged"))];
        });
        let batch = Batch {
            rows: vec![r],
            stats: vec![(("g".into(), "".into(), "a".into(), "m".into()), [1.0; 6])],
        };
        // Durable in the log (and the user's key with it) but never applied: a crash here.
        store.log(&batch, 0).unwrap();
        assert!(store.export(&u).unwrap().unwrap().events.is_empty());
        assert_eq!(store.log_len().unwrap(), 1);
    }
    let store = Store::open(dir.path()).unwrap();
    let ex = store.export(&u).unwrap().unwrap();
    assert_eq!(ex.events, vec![(0, b"logged".to_vec())]);
    assert_eq!(store.stats("g").unwrap()[0].1, [1.0; 6]);
    // No checkpoint covers the event: its id is not in a run, the load hands it over.
    let rd = store.reader().unwrap();
    assert_eq!(rd.seen_many(&u, &[[4; 16]]).unwrap(), [false]);
    assert_eq!(rd.load(&u, |_| None).unwrap().unwrap().tail_ids, [[4; 16]]);
    drop(rd);
    assert_eq!(store.log_len().unwrap(), 0, "applied entries are trimmed");
    assert!(store.applied_wal().unwrap() >= 1);
    drop(store);
    // Applied once only: a second open adds nothing (statistics are not counted twice).
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.stats("g").unwrap()[0].1, [1.0; 6]);
}

/// kill -9 with records past every checkpoint: the next open finds exactly the users whose
/// records their checkpoint does not cover and hands each its tail once; after a checkpoint
/// that covers them, nothing is left to replay.
#[test]
fn records_past_a_checkpoint_are_found_again_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let a = UserKey([31; 16]);
    let b = UserKey([32; 16]);
    {
        let store = Store::open(dir.path()).unwrap();
        let ra = rows(&store, a, |s, r| {
            r.events = vec![(0, [1; 16], s.seal(&a, Table::Event, b"a0"))];
            r.checkpoint = Some((1, s.seal(&a, Table::State, b"a@1")));
        });
        let rb = rows(&store, b, |s, r| {
            r.events = vec![(0, [2; 16], s.seal(&b, Table::Event, b"b0"))];
        });
        store.commit(vec![ra, rb], Vec::new()).unwrap();
        let rb = rows(&store, b, |s, r| {
            r.events = vec![(1, [3; 16], s.seal(&b, Table::Event, b"b1"))];
        });
        let ra = rows(&store, a, |s, r| {
            r.journal = vec![(1, s.seal(&a, Table::Journal, b"a-tick"))];
        });
        store.commit(vec![rb, ra], Vec::new()).unwrap();
        assert_eq!(store.users_with_tail().unwrap(), vec![a, b]);
    } // no clean stop
    {
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.users_with_tail().unwrap(), vec![a, b]);
        let rd = store.reader().unwrap();
        let lb = rd.load(&b, |_| None).unwrap().unwrap();
        assert_eq!(
            lb.tail,
            vec![
                (0, Some(b"b0".to_vec()), None),
                (1, Some(b"b1".to_vec()), None)
            ]
        );
        let la = rd.load(&a, |_| None).unwrap().unwrap();
        assert_eq!(la.tail, vec![(1, None, Some(b"a-tick".to_vec()))]);
        drop(rd);
        // Checkpoints covering both.
        let ca = rows(&store, a, |s, r| {
            r.checkpoint = Some((2, s.seal(&a, Table::State, b"a@2")))
        });
        let cb = rows(&store, b, |s, r| {
            r.checkpoint = Some((2, s.seal(&b, Table::State, b"b@2")))
        });
        store.commit(vec![ca, cb], Vec::new()).unwrap();
        assert!(store.users_with_tail().unwrap().is_empty());
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.users_with_tail().unwrap().is_empty());
    let l = store.reader().unwrap().load(&b, |_| None).unwrap().unwrap();
    assert_eq!((l.state.as_deref(), l.tail.len()), (Some(&b"b@2"[..]), 0));
    assert_eq!(store.export(&b).unwrap().unwrap().events.len(), 2);
}

/// An append larger than the appender's write chunk is written out as it goes: undone whole
/// when dropped unfinished (the segment cut back to where it started), and when kept, every
/// record reads back by scan and by location, the ones written out early and the rest.
#[test]
fn event_store_appends_past_the_write_chunk_are_undone_or_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let ev_dir = dir.path().join("ev");
    let u = UserKey([42; 16]);
    let log = events::EventLog::open_sized(&ev_dir, 0, 64 << 20).unwrap();
    let record = |i: u64| vec![(i % 251) as u8; 1000 + (i % 7) as usize];
    let n = (3 * events::WRITE_CHUNK / 1000) as u64;
    let mut app = log.begin();
    app.push(events::Kind::Event, &RowId(u.0), 0, &[0; 16], b"first")
        .unwrap();
    app.sync().unwrap();
    app.finish();
    let seg = std::fs::read_dir(&ev_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "evs"))
        .unwrap();
    let len_before = std::fs::metadata(&seg).unwrap().len();
    // Past three chunks, synced, dropped unfinished: nothing of it stays.
    let mut app = log.begin();
    for i in 1..=n {
        app.push(events::Kind::Event, &RowId(u.0), i, &[1; 16], &record(i))
            .unwrap();
    }
    assert!(std::fs::metadata(&seg).unwrap().len() > len_before + 2 * events::WRITE_CHUNK as u64);
    app.sync().unwrap();
    drop(app);
    assert_eq!(log.end(), 1);
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), len_before);
    // The same, kept.
    let mut app = log.begin();
    let mut locs = Vec::new();
    for i in 1..=n {
        locs.push(
            app.push(events::Kind::Event, &RowId(u.0), i, &[1; 16], &record(i))
                .unwrap(),
        );
    }
    app.sync().unwrap();
    app.finish();
    assert_eq!(log.end(), n + 1);
    let mut scanned = 0u64;
    log.scan(1, |r| {
        scanned += 1;
        assert_eq!((r.n, r.seq), (scanned, scanned));
        assert_eq!(r.sealed, &record(scanned)[..]);
        true
    })
    .unwrap();
    assert_eq!(scanned, n);
    let mut read = Vec::new();
    log.read_at(&locs, |r| read.push((r.seq, r.sealed.to_vec())))
        .unwrap();
    assert_eq!(read.len(), n as usize);
    assert!(read.iter().all(|(seq, b)| *b == record(*seq)));
    // And after a reopen.
    drop(log);
    let log = events::EventLog::open_sized(&ev_dir, n + 1, 64 << 20).unwrap();
    assert_eq!(log.end(), n + 1);
}

/// Records appended to the event store by a transaction that never committed (a crash between
/// the event store's fsync and redb's commit) are cut off at open; the log applies them again.
#[test]
fn event_store_records_past_events_end_are_cut_off_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let ev_dir = dir.path().join("ev");
    let u = UserKey([41; 16]);
    {
        let log = events::EventLog::open_sized(&ev_dir, 0, 200).unwrap();
        let mut app = log.begin();
        for seq in 0..6 {
            assert_eq!(
                app.push(events::Kind::Event, &RowId(u.0), seq, &[0; 16], &[7; 40])
                    .unwrap()
                    .n,
                seq
            );
        }
        app.sync().unwrap();
        app.finish();
        assert!(log.segments() >= 2, "{} segments", log.segments());
        // Appended and durable, then dropped unfinished: undone.
        let mut app = log.begin();
        app.push(events::Kind::Journal, &RowId(u.0), 6, &[0; 16], b"j")
            .unwrap();
        app.sync().unwrap();
        drop(app);
        assert_eq!(log.end(), 6);
        let mut app = log.begin();
        app.push(events::Kind::Event, &RowId(u.0), 6, &[0; 16], b"six")
            .unwrap();
        app.sync().unwrap();
        app.finish();
    }
    let seqs = |log: &events::EventLog| {
        let mut out = Vec::new();
        log.scan(0, |r| {
            out.push((r.n, r.seq, r.kind));
            true
        })
        .unwrap();
        out
    };
    // The indexed store says 4 records are part of it: 4, 5, 6 are cut off.
    let log = events::EventLog::open_sized(&ev_dir, 4, 200).unwrap();
    assert_eq!(
        seqs(&log),
        (0..4)
            .map(|i| (i, i, events::Kind::Event))
            .collect::<Vec<_>>()
    );
    let mut app = log.begin();
    assert_eq!(
        app.push(events::Kind::Event, &RowId(u.0), 4, &[0; 16], b"again")
            .unwrap()
            .n,
        4
    );
    app.sync().unwrap();
    app.finish();
    drop(log);
    let log = events::EventLog::open_sized(&ev_dir, 5, 200).unwrap();
    assert_eq!(seqs(&log).len(), 5);
    let mut last = None;
    log.scan(4, |r| {
        last = Some(r.sealed.to_vec());
        true
    })
    .unwrap();
    assert_eq!(last.as_deref(), Some(&b"again"[..]));
}

/// A batch of one event for `u` (sealed), with id hash `[id; 16]`.
fn one_event(store: &Store, u: UserKey, id: u8, body: &[u8]) -> Batch {
    let r = rows(store, u, |s, r| {
        r.events = vec![(u64::from(id), [id; 16], s.seal(&u, Table::Event, body))];
    });
    Batch {
        rows: vec![r],
        stats: Vec::new(),
    }
}

/// The seqs of the records the log holds after `seq`.
fn seqs_after(log: &wal::Log, seq: u64) -> Vec<u64> {
    log.read_after(seq).unwrap().iter().map(|r| r.0).collect()
}

#[test]
fn after_a_clean_stop_new_log_records_are_numbered_past_what_was_applied() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([10; 16]);
    {
        let store = Store::open(dir.path()).unwrap();
        for i in 1..=3 {
            store
                .commit(one_event(&store, u, i, b"applied").rows, Vec::new())
                .unwrap();
        }
        assert_eq!(store.applied_wal().unwrap(), 3);
        assert_eq!(
            store.log_len().unwrap(),
            0,
            "every record applied and dropped"
        );
    }
    {
        // A new process: its first record is logged, acknowledged, and the process dies
        // before the indexer applies it.
        let store = Store::open(dir.path()).unwrap();
        let seq = store
            .log(&one_event(&store, u, 4, b"only-logged"), 3)
            .unwrap();
        assert!(seq > 3, "seq {seq} would count as applied already");
        assert_eq!(store.log_len().unwrap(), 1);
    }
    let store = Store::open(dir.path()).unwrap();
    let events = store.export(&u).unwrap().unwrap().events;
    assert_eq!(
        events.len(),
        4,
        "the logged record was applied at open: {events:?}"
    );
    assert_eq!(events[3].1, b"only-logged");
}

#[test]
fn a_torn_append_is_cut_off_and_the_log_goes_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([11; 16]);
    {
        let store = Store::open(dir.path()).unwrap();
        store.log(&one_event(&store, u, 1, b"first"), 0).unwrap();
        store.log(&one_event(&store, u, 2, b"second"), 0).unwrap();
    }
    // A crash mid-append: half a record at the end of the newest segment.
    let seg = std::fs::read_dir(dir.path().join(WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    // Right after the last record (the segment is zeroed past it).
    let end = records_end(&std::fs::read(&seg).unwrap());
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7], end)
        .unwrap();
    drop(f);
    {
        let store = Store::open(dir.path()).unwrap();
        let ev = store.export(&u).unwrap().unwrap().events;
        assert_eq!(ev.len(), 2, "both whole records applied");
        store.log(&one_event(&store, u, 3, b"third"), 0).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let ev = store.export(&u).unwrap().unwrap().events;
    assert_eq!(
        ev.iter().map(|e| e.1.as_slice()).collect::<Vec<_>>(),
        [&b"first"[..], b"second", b"third"]
    );
}

/// Where the records of a segment's bytes end (`[len: u32][crc: u32][seq: u64][len bytes]`
/// back to back; zeros, or nothing, follow).
fn records_end(bytes: &[u8]) -> u64 {
    let mut at = 0;
    while let Some(h) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(h.try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        at += 16 + len;
    }
    at as u64
}

/// A segment that is not a recycled one is written with zeros ahead of its records, so the
/// commits that follow overwrite blocks the file has (one device write each) instead of
/// growing it; the zeros are never read as records, are no damage, and are cut off at open.
#[test]
fn a_new_segment_is_zeroed_ahead_and_the_zeros_are_no_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = UserKey([16; 16]);
    let batch = one_event(&store, u, 1, &[5u8; 300]);
    let log_dir = dir.path().join("log-only");
    let seg = log_dir.join("00000000000000000001.wal");
    {
        let log = wal::Log::open_sized(&log_dir, 0, 10_000).unwrap();
        assert_eq!(log.append(&batch, 0).unwrap(), 1);
        let size = std::fs::metadata(&seg).unwrap().len();
        let end = records_end(&std::fs::read(&seg).unwrap());
        assert!(end > 300 && end < 1_000, "one record: {end} bytes");
        assert_eq!(size, 10_000, "zeros up to the segment's size");
        // The next commits land in the zeroed blocks: the file does not grow.
        for i in 2..=5 {
            assert_eq!(log.append(&batch, 0).unwrap(), i);
        }
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), size);
        assert_eq!(seqs_after(&log, 0), [1, 2, 3, 4, 5]);
        // A crash here: the zeros stay behind the records.
    }
    let log = wal::Log::open_sized(&log_dir, 0, 10_000).unwrap();
    assert_eq!(seqs_after(&log, 0), [1, 2, 3, 4, 5]);
    let bytes = std::fs::read(&seg).unwrap();
    assert_eq!(
        bytes.len() as u64,
        records_end(&bytes),
        "the zeros were cut off"
    );
    // Past the end of a segment the next one starts; the full one is cut to its records.
    for i in 6..=40 {
        assert_eq!(log.append(&batch, 0).unwrap(), i);
    }
    assert!(log.segments() >= 2, "{} segments", log.segments());
    drop(log);
    for e in std::fs::read_dir(&log_dir).unwrap() {
        let bytes = std::fs::read(e.unwrap().path()).unwrap();
        let end = records_end(&bytes);
        assert!(end > 0);
        assert!(
            bytes[end as usize..].iter().all(|b| *b == 0),
            "only zeros after the records"
        );
    }
    let log = wal::Log::open_sized(&log_dir, 0, 10_000).unwrap();
    assert_eq!(seqs_after(&log, 0), (1..=40).collect::<Vec<_>>());
}

#[test]
fn a_damaged_record_is_skipped_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = UserKey([12; 16]);
    let batch = one_event(&store, u, 1, b"x");
    let log_dir = dir.path().join("log-only");
    {
        let log = wal::Log::open(&log_dir, 0).unwrap();
        log.append(&batch, 0).unwrap();
        log.append(&batch, 0).unwrap();
    }
    let seg = log_dir.join("00000000000000000001.wal");
    let mut bytes = std::fs::read(&seg).unwrap();
    let last = records_end(&bytes) as usize - 1;
    bytes[last] ^= 0xff; // the second record's last byte: its CRC no longer matches
    std::fs::write(&seg, &bytes).unwrap();
    let log = wal::Log::open(&log_dir, 0).unwrap();
    assert_eq!(seqs_after(&log, 0), [1]);
    // The damaged tail was cut off: the next record follows the valid one.
    assert_eq!(log.append(&batch, 0).unwrap(), 2);
    drop(log);
    let log = wal::Log::open(&log_dir, 0).unwrap();
    assert_eq!(seqs_after(&log, 0), [1, 2]);
}

#[test]
fn segments_roll_over_and_applied_ones_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = UserKey([13; 16]);
    let batch = one_event(&store, u, 1, &[7u8; 300]);
    let log_dir = dir.path().join("log-only");
    let log = wal::Log::open_sized(&log_dir, 0, 1000).unwrap();
    for i in 1..=10 {
        assert_eq!(log.append(&batch, 0).unwrap(), i);
    }
    let files = || {
        std::fs::read_dir(&log_dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "wal")
            })
            .count()
    };
    assert!(log.segments() >= 3, "{} segments", log.segments());
    assert_eq!(files(), log.segments());
    assert_eq!(log.len().unwrap(), 10);
    // Applying up to 6 drops the segments holding only records up to 6, not the others.
    log.trim(6).unwrap();
    let left = log.read_after(0).unwrap();
    assert!(left.first().unwrap().0 <= 7, "record 7 kept");
    assert_eq!(left.last().unwrap().0, 10);
    assert_eq!(log.len().unwrap(), 4);
    assert_eq!(files(), log.segments());
    // Everything applied: no segment left; the next record is 11, in a new segment.
    log.trim(10).unwrap();
    assert_eq!((log.segments(), files()), (0, 0));
    assert_eq!(log.append(&batch, 10).unwrap(), 11);
    drop(log);
    let log = wal::Log::open_sized(&log_dir, 10, 1000).unwrap();
    assert_eq!(seqs_after(&log, 10), [11]);
}

#[test]
fn a_log_left_by_the_redb_version_is_applied_then_removed() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([14; 16]);
    let batch = {
        let store = Store::open(dir.path()).unwrap();
        let b = one_event(&store, u, 1, b"from-wal-redb");
        store.keys().sync_pending().unwrap(); // as the old version's log() did
        b
    };
    {
        const WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");
        let db = Database::create(dir.path().join(LEGACY_WAL_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(WAL)
            .unwrap()
            .insert(1, postcard::to_allocvec(&batch).unwrap().as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let ev = store.export(&u).unwrap().unwrap().events;
    assert_eq!(ev, vec![(1, b"from-wal-redb".to_vec())]);
    assert!(!dir.path().join(LEGACY_WAL_FILE).exists());
    // The new log numbers its records past the old one's.
    assert!(store.log(&one_event(&store, u, 2, b"n"), 0).unwrap() > 1);
}

/// An applied segment is kept as the spare and becomes the next segment: what it held before
/// is never read back as records, whether the process stops cleanly, crashes right after the
/// spare became the new segment, or crashes after a record was written into it.
#[test]
fn a_recycled_segment_never_yields_its_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = UserKey([15; 16]);
    let batch = one_event(&store, u, 1, &[9u8; 300]);
    let log_dir = dir.path().join("log-only");
    let spare = log_dir.join("spare.tmp");
    {
        let log = wal::Log::open_sized(&log_dir, 0, 1000).unwrap();
        for i in 1..=6 {
            assert_eq!(log.append(&batch, 0).unwrap(), i);
        }
        log.trim(6).unwrap();
        assert!(spare.exists(), "an applied segment is kept as the spare");
        let big = std::fs::metadata(&spare).unwrap().len();
        assert!(big >= 600, "the spare keeps its blocks: {big} bytes");
        // The spare becomes segment 7: its first record overwrites old ones in place.
        assert_eq!(log.append(&batch, 6).unwrap(), 7);
        assert!(!spare.exists());
        let seg7 = log_dir.join("00000000000000000007.wal");
        assert!(
            std::fs::metadata(&seg7).unwrap().len() >= big,
            "no shrink while in use"
        );
        assert_eq!(seqs_after(&log, 6), [7]);
        // A crash here: segment 7 holds record 7 and then the old records.
    }
    let log = wal::Log::open_sized(&log_dir, 6, 1000).unwrap();
    assert_eq!(
        seqs_after(&log, 0),
        [7],
        "old bytes after record 7 were cut off"
    );
    for i in 8..=12 {
        assert_eq!(log.append(&batch, 6).unwrap(), i);
    }
    assert_eq!(seqs_after(&log, 6), (7..=12).collect::<Vec<_>>());
    log.trim(12).unwrap();
    // The spare is renamed to the next segment and the process dies before writing to it.
    let seg13 = log_dir.join("00000000000000000013.wal");
    std::fs::rename(&spare, &seg13).unwrap();
    drop(log);
    let log = wal::Log::open_sized(&log_dir, 12, 1000).unwrap();
    assert!(seqs_after(&log, 0).is_empty(), "{:?}", seqs_after(&log, 0));
    assert_eq!(log.append(&batch, 12).unwrap(), 13);
    assert_eq!(seqs_after(&log, 12), [13]);
}

/// Ids join the user's runs when a checkpoint covers them, and runs merge as they grow: after
/// many checkpoints every id is found, none that was never sent is, and a user has few runs.
#[test]
fn seen_runs_hold_every_checkpointed_id_in_few_runs() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([51; 16]);
    let store = Store::open(dir.path()).unwrap();
    let sealer = store.sealer(&u);
    let id = |i: u64| {
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes());
        h[8] = 1;
        h
    };
    let mut seq = 0u64;
    for round in 0..40u64 {
        let mut r = UserRows::new(u, sealer.row());
        for _ in 0..(1 + round % 7) {
            r.events
                .push((seq, id(seq), sealer.seal(&u, Table::Event, b"e")));
            seq += 1;
        }
        // Every other round ends with a checkpoint; the last one covers everything.
        if round % 2 == 1 || round == 39 {
            r.checkpoint = Some((seq, sealer.seal(&u, Table::State, b"s")));
        }
        store.commit(vec![r], Vec::new()).unwrap();
    }
    let rd = store.reader().unwrap();
    let all: Vec<[u8; 16]> = (0..seq).map(id).collect();
    assert!(
        rd.seen_many(&u, &all).unwrap().iter().all(|b| *b),
        "an id is missing"
    );
    let never: Vec<[u8; 16]> = (seq..seq + 200).map(id).collect();
    assert!(rd.seen_many(&u, &never).unwrap().iter().all(|b| !*b));
    drop(rd);
    let txn = store.db.begin_read().unwrap();
    let runs = txn.open_table(SEEN_RUNS).unwrap();
    let r = sealer.row().0;
    let n = runs.range((r, 0u32)..=(r, u32::MAX)).unwrap().count();
    assert!(
        (1..=6).contains(&n),
        "{n} runs for {seq} ids in 20 checkpoints"
    );
    drop(runs);
    drop(txn);
    // Erasure removes them all.
    store.erase(&u, None).unwrap();
    assert_eq!(
        store.reader().unwrap().seen_many(&u, &all[..1]).unwrap(),
        [false]
    );
}

/// A schema 3 file that still keeps one `seen` row per id (the event store's first form) has
/// its ids moved into runs at open, so a resent id stays a duplicate across the upgrade.
#[test]
fn a_schema_3_file_with_seen_rows_keeps_its_ids() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([61; 16]);
    {
        let store = Store::open(dir.path()).unwrap();
        store.sealer(&u);
        store.keys().sync_pending().unwrap();
    }
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", &b"3"[..])
                .unwrap();
            let mut seen = txn.open_table(SEEN).unwrap();
            seen.insert((u.0, [3; 16]), 0).unwrap();
            seen.insert((u.0, [4; 16]), 1).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let rd = store.reader().unwrap();
    assert_eq!(
        rd.seen_many(&u, &[[3; 16], [4; 16], [5; 16]]).unwrap(),
        [true, true, false]
    );
    drop(rd);
    let txn = store.db.begin_read().unwrap();
    assert!(txn.open_table(SEEN).is_err(), "the row table is dropped");
}

/// Every kind of row of two users, through the log, the event store and the indexed store:
/// the user key is stored in `keys.bin` only, and after one user's erasure nowhere at all,
/// while the other user's data is intact.
#[test]
fn the_user_key_is_in_keys_bin_only_and_gone_after_erasure() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (u, v) = (UserKey([0x5a; 16]), UserKey([0x6b; 16]));
    for round in 0..30u64 {
        let batch: Vec<UserRows> = [u, v]
            .iter()
            .map(|x| {
                rows(&store, *x, |s, r| {
                    let mut id = [round as u8; 16];
                    id[15] = x.0[0];
                    r.events = vec![(round, id, s.seal(x, Table::Event, b"e"))];
                    r.journal = vec![(round, s.seal(x, Table::Journal, b"j"))];
                    r.decisions = vec![(id, s.seal(x, Table::Decision, b"d"))];
                    r.learn = vec![(id, s.seal(x, Table::Learn, b"l"))];
                    if round % 4 == 3 {
                        r.checkpoint = Some((round + 1, s.seal(x, Table::State, b"s")));
                    }
                })
            })
            .collect();
        store.commit(batch, Vec::new()).unwrap();
    }
    let row_u = store.sealer(&u).row();
    assert_eq!(files_with(dir.path(), &u.0), ["keys.bin"]);
    assert_eq!(files_with(dir.path(), &v.0), ["keys.bin"]);
    assert!(!files_with(dir.path(), &row_u.0).is_empty());
    let c = store.erase(&u, None).unwrap();
    assert!(c.key && c.state);
    assert_eq!((c.decisions, c.learn), (30, 30));
    assert!(
        files_with(dir.path(), &u.0).is_empty(),
        "the erased key survives"
    );
    // What the files still hold under the old row id is tied to nobody.
    assert_eq!(store.keys().by_row(&row_u), None);
    assert!(store.export(&u).unwrap().is_none());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert!(files_with(dir.path(), &u.0).is_empty());
    let ex = store.export(&v).unwrap().unwrap();
    assert_eq!(
        (ex.events.len(), ex.decisions.len(), ex.learn.len()),
        (30, 30, 30)
    );
    let l = store.reader().unwrap().load(&v, |_| None).unwrap().unwrap();
    assert_eq!((l.state.as_deref(), l.head), (Some(&b"s"[..]), 28));
    assert_eq!(l.tail.len(), 2);
}

/// A schema 3 data dir (rows and records under user keys, left by an unclean stop) opens as
/// schema 4: everything readable as before, the user key left in `keys.bin` only, the old
/// file replaced; an interrupted migration (the event store rewritten, the database not yet)
/// is finished by the next open.
#[test]
fn a_schema_3_dir_is_refiled_by_row_id() {
    for interrupted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (u, v) = (UserKey([0x71; 16]), UserKey([0x72; 16]));
        let (su, sv) = {
            let store = Store::open(dir.path()).unwrap();
            let s = (store.sealer(&u), store.sealer(&v));
            store.keys().sync_pending().unwrap();
            s
        };
        let path = dir.path().join(DB_FILE);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_dir_all(dir.path().join(EVENTS_DIR)).unwrap();
        let end = {
            let log = events::EventLog::open(&dir.path().join(EVENTS_DIR), 0).unwrap();
            let mut app = log.begin();
            for seq in 0..4u64 {
                let id = [seq as u8 + 1; 16];
                app.push(
                    events::Kind::Event,
                    &RowId(u.0),
                    seq,
                    &id,
                    &su.seal(&u, Table::Event, b"ue"),
                )
                .unwrap();
            }
            app.push(
                events::Kind::Event,
                &RowId(v.0),
                0,
                &[9; 16],
                &sv.seal(&v, Table::Event, b"ve"),
            )
            .unwrap();
            app.sync().unwrap();
            let end = app.next();
            app.finish();
            end
        };
        {
            let db = redb::Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("schema_version", &b"3"[..]).unwrap();
                meta.insert("shutdown", &b"running"[..]).unwrap();
                meta.insert("events_end", &end.to_le_bytes()[..]).unwrap();
                meta.insert("replay_from", &0u64.to_le_bytes()[..]).unwrap();
                // u's checkpoint covers seqs 0 and 1 (their ids in a run); v's covers its event.
                txn.open_table(USERS)
                    .unwrap()
                    .insert(u.0, su.seal(&u, Table::State, b"u@2").as_slice())
                    .unwrap();
                let mut heads = txn.open_table(HEADS).unwrap();
                heads.insert(u.0, 2).unwrap();
                heads.insert(v.0, 1).unwrap();
                txn.open_table(SEEN_RUNS)
                    .unwrap()
                    .insert(
                        (u.0, 0),
                        encode_fps(vec![fingerprint(&[1; 16]), fingerprint(&[2; 16])]).as_slice(),
                    )
                    .unwrap();
                txn.open_table(DECISIONS)
                    .unwrap()
                    .insert(
                        (u.0, [3; 16]),
                        su.seal(&u, Table::Decision, b"ud").as_slice(),
                    )
                    .unwrap();
                txn.open_table(LEARN)
                    .unwrap()
                    .insert((v.0, [4; 16]), sv.seal(&v, Table::Learn, b"vl").as_slice())
                    .unwrap();
                txn.open_table(STATS)
                    .unwrap()
                    .insert(("g", "all", "a", "m"), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        if interrupted {
            // The event store was rewritten, then the process died before the new database.
            let log = events::EventLog::open(&dir.path().join(EVENTS_DIR), end).unwrap();
            let ks = KeyStore::open(&dir.path().join(KEYS_FILE), None).unwrap();
            log.rewrite_rows(|r| ks.row(&UserKey(r.0)).unwrap())
                .unwrap();
            std::fs::write(dir.path().join(MIGRATING_FILE), b"half-written").unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.was_clean());
        assert_eq!(
            files_with(dir.path(), &u.0),
            ["keys.bin"],
            "interrupted: {interrupted}"
        );
        assert_eq!(files_with(dir.path(), &v.0), ["keys.bin"]);
        assert!(!dir.path().join(MIGRATING_FILE).exists());
        assert_eq!(store.users_with_tail().unwrap(), vec![u]);
        let rd = store.reader().unwrap();
        assert_eq!(
            rd.seen_many(&u, &[[1; 16], [2; 16], [3; 16]]).unwrap(),
            [true, true, false]
        );
        let l = rd.load(&u, |_| None).unwrap().unwrap();
        assert_eq!((l.state.as_deref(), l.head), (Some(&b"u@2"[..]), 2));
        assert_eq!(l.tail.len(), 2);
        drop(rd);
        let ex = store.export(&u).unwrap().unwrap();
        assert_eq!((ex.events.len(), ex.decisions.len()), (4, 1));
        assert_eq!(store.export(&v).unwrap().unwrap().learn.len(), 1);
        assert_eq!(store.stats("g").unwrap().len(), 1);
        drop(store);
        // Once: the next open finds the current schema.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.export(&u).unwrap().unwrap().events.len(), 4);
        let txn = store.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(
            meta.get("schema_version").unwrap().unwrap().value(),
            SCHEMA_VERSION.to_string().as_bytes()
        );
    }
}

/// Retention: the event store's old segments go once checkpoints cover them (a user whose
/// records no checkpoint covers holds its segment back), old runs of ids seen go in bounded
/// steps, and what is newer stays.
#[test]
fn retention_purges_old_events_and_their_ids_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Generous margins: a loaded machine may pause the test for a while between steps.
    let age = std::time::Duration::from_millis(3000);
    store.set_retention(Some(age));
    let id = |u: &UserKey, i: u64| {
        let mut h = [u.0[0]; 16];
        h[..8].copy_from_slice(&i.to_le_bytes());
        h
    };
    let visit = |u: UserKey, n: u64, checkpoint: bool| {
        let r = rows(&store, u, |s, r| {
            r.events = (0..n)
                .map(|i| (i, id(&u, i), s.seal(&u, Table::Event, b"e")))
                .collect();
            if checkpoint {
                r.checkpoint = Some((n, s.seal(&u, Table::State, b"s")));
            }
        });
        store.commit(vec![r], Vec::new()).unwrap();
    };
    let ids = |u: &UserKey, n: u64| (0..n).map(|i| id(u, i)).collect::<Vec<_>>();
    let seen = |u: &UserKey, n: u64| store.reader().unwrap().seen_many(u, &ids(u, n)).unwrap();
    let pause = |ms| std::thread::sleep(std::time::Duration::from_millis(ms));
    let (old, young, open) = (UserKey([1; 16]), UserKey([2; 16]), UserKey([3; 16]));
    visit(old, 3, true);
    // Not covered by a checkpoint (as after a crash before one): recovery still needs it.
    visit(open, 2, false);
    pause(1700);
    visit(young, 4, true); // a new segment: the first is older than age / 4
                           // Nothing is old enough yet.
    assert_eq!(store.purge(100).unwrap(), Purged::default());
    pause(1700);
    // The first segment is past the age but holds `open`'s uncovered records: kept.
    let p = store.purge(100).unwrap();
    assert_eq!((p.segments, p.records), (0, 0));
    assert_eq!(p.runs, 1, "old's run of ids");
    assert_eq!(seen(&old, 3), [false; 3]);
    assert_eq!(store.export(&old).unwrap().unwrap().events.len(), 3);
    // Once a checkpoint covers `open` (its events' ids into a run of now), the segment goes.
    let r = rows(&store, open, |s, r| {
        r.checkpoint = Some((2, s.seal(&open, Table::State, b"s")))
    });
    store.commit(vec![r], Vec::new()).unwrap();
    let p = store.purge(100).unwrap();
    assert_eq!((p.segments, p.records, p.runs), (1, 5, 0));
    assert!(store.export(&old).unwrap().unwrap().events.is_empty());
    assert!(store.export(&open).unwrap().unwrap().events.is_empty());
    assert_eq!(
        seen(&open, 2),
        [true; 2],
        "its ids are as young as its checkpoint"
    );
    assert_eq!(store.export(&young).unwrap().unwrap().events.len(), 4);
    assert_eq!(seen(&young, 4), [true; 4]);
    // The state is not an event: it stays until erasure.
    let l = store
        .reader()
        .unwrap()
        .load(&old, |_| None)
        .unwrap()
        .unwrap();
    assert_eq!(l.state.as_deref(), Some(&b"s"[..]));
    // Bounded steps: one row looked at per step, more until the table's end.
    let mut steps = 0;
    loop {
        let p = store.purge(1).unwrap();
        steps += 1;
        if !p.more {
            break;
        }
    }
    assert!(steps >= 2, "{steps} steps");
    // Reopened, the store reads from the segments that are left.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.export(&young).unwrap().unwrap().events.len(), 4);
    assert!(store.export(&old).unwrap().unwrap().events.is_empty());
}

/// Decisions are records of their own log (`decisions/`), not rows of a B-tree: readable at
/// once, filed in `decision_index` by the user's next checkpoint, found again after a crash
/// before that checkpoint, left out of nothing by erasure.
#[test]
fn decisions_are_logged_indexed_at_checkpoints_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (u, v) = (UserKey([21; 16]), UserKey([22; 16]));
    let dec = |s: &Sealer, x: &UserKey, i: u8| ([i; 16], s.seal(x, Table::Decision, &[b'd', i]));
    let index_rows = |store: &Store| {
        let txn = store.db.begin_read().unwrap();
        let t = txn.open_table(DECISION_INDEX).unwrap();
        t.iter().unwrap().count()
    };
    let ids = |store: &Store, x: &UserKey| {
        let ex = store.export(x).unwrap().unwrap();
        ex.decisions
            .iter()
            .map(|(id, plain)| {
                assert_eq!(plain, &[b'd', id[0]]);
                id[0]
            })
            .collect::<Vec<u8>>()
    };
    {
        let store = Store::open(dir.path()).unwrap();
        let a = rows(&store, u, |s, r| {
            r.decisions = vec![dec(s, &u, 1), dec(s, &u, 2)]
        });
        let b = rows(&store, v, |s, r| r.decisions = vec![dec(s, &v, 7)]);
        store.commit(vec![a, b], Vec::new()).unwrap();
        // Readable before any checkpoint (pending), and not in the legacy table.
        assert_eq!(ids(&store, &u), [1, 2]);
        assert_eq!(ids(&store, &v), [7]);
        assert_eq!(index_rows(&store), 0);
        // u's checkpoint files its decisions (those of the same batch too) as one row.
        let a = rows(&store, u, |s, r| {
            r.decisions = vec![dec(s, &u, 3)];
            r.checkpoint = Some((1, s.seal(&u, Table::State, b"u@1")));
        });
        store.commit(vec![a], Vec::new()).unwrap();
        assert_eq!(index_rows(&store), 1);
        assert_eq!(ids(&store, &u), [1, 2, 3]);
        let a = rows(&store, u, |s, r| r.decisions = vec![dec(s, &u, 4)]);
        store.commit(vec![a], Vec::new()).unwrap();
        assert_eq!(ids(&store, &u), [1, 2, 3, 4]);
        let txn = store.db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(DECISIONS).unwrap().iter().unwrap().count(),
            0
        );
        drop(txn);
        assert!(dir.path().join(DECISIONS_DIR).is_dir());
        // Dropped without `mark_clean`: a crash. u's 4 and v's 7 are in no index row.
    }
    {
        let store = Store::open(dir.path()).unwrap();
        assert!(!store.was_clean());
        assert_eq!(ids(&store, &u), [1, 2, 3, 4]);
        assert_eq!(ids(&store, &v), [7]);
        // A checkpoint after the crash files the rest once (no repeats).
        let a = rows(&store, u, |s, r| {
            r.checkpoint = Some((2, s.seal(&u, Table::State, b"u@2")))
        });
        store.commit(vec![a], Vec::new()).unwrap();
        assert_eq!(index_rows(&store), 2);
        store.mark_clean().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(ids(&store, &u), [1, 2, 3, 4]);
    // Retention never takes decisions: they are kept until the user is erased.
    store.set_retention(Some(std::time::Duration::from_millis(1)));
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.purge(100).unwrap();
    assert_eq!(ids(&store, &u), [1, 2, 3, 4]);
    let c = store.erase(&u, None).unwrap();
    assert_eq!(c.decisions, 4);
    assert!(store.export(&u).unwrap().is_none());
    assert_eq!(index_rows(&store), 0);
    let c = store.erase(&v, None).unwrap();
    assert_eq!(c.decisions, 1, "a pending decision counts too");
    drop(store);
    // v's pending decision is not pending again after the erasure (its key is gone).
    let store = Store::open(dir.path()).unwrap();
    assert!(store.pending_decisions.lock().unwrap().is_empty());
}

/// A schema 4 dir opens as schema 5 as it is: its `decisions` rows are read beside the
/// decision log and erased with it.
#[test]
fn a_schema_4_dirs_decision_rows_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([23; 16]);
    {
        let store = Store::open(dir.path()).unwrap();
        let s = store.sealer(&u);
        let r = rows(&store, u, |_, _| {});
        store.commit(vec![r], Vec::new()).unwrap();
        let txn = store.db.begin_write().unwrap();
        {
            txn.open_table(DECISIONS)
                .unwrap()
                .insert(
                    (s.row().0, [1; 16]),
                    s.seal(&u, Table::Decision, b"old").as_slice(),
                )
                .unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", &b"4"[..])
                .unwrap();
        }
        txn.commit().unwrap();
        store.mark_clean().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    {
        let txn = store.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get("schema_version").unwrap().unwrap().value(), b"5");
    }
    let s = store.sealer(&u);
    let r = rows(&store, u, |_, r| {
        r.decisions = vec![([2; 16], s.seal(&u, Table::Decision, b"new"))]
    });
    store.commit(vec![r], Vec::new()).unwrap();
    let ex = store.export(&u).unwrap().unwrap();
    assert_eq!(
        ex.decisions,
        vec![([1; 16], b"old".to_vec()), ([2; 16], b"new".to_vec())]
    );
    assert_eq!(store.erase(&u, None).unwrap().decisions, 2);
}

/// Decisions are read back by location, whatever their size; a damaged one is an error that
/// names the file, the record and the byte, not a silent gap.
#[test]
fn decisions_read_by_location_check_what_they_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let u = UserKey([24; 16]);
    let big = vec![b'x'; 5000];
    let r = rows(&store, u, |s, r| {
        r.decisions = vec![
            ([1; 16], s.seal(&u, Table::Decision, b"small")),
            ([2; 16], s.seal(&u, Table::Decision, &big)),
            ([3; 16], s.seal(&u, Table::Decision, b"after")),
        ];
    });
    store.commit(vec![r], Vec::new()).unwrap();
    let ex = store.export(&u).unwrap().unwrap();
    assert_eq!(
        ex.decisions,
        vec![
            ([1; 16], b"small".to_vec()),
            ([2; 16], big.clone()),
            ([3; 16], b"after".to_vec())
        ]
    );
    let seg = dir
        .path()
        .join(DECISIONS_DIR)
        .join("00000000000000000000.evs");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let e = store.export(&u).unwrap_err().to_string();
    assert!(
        e.contains("00000000000000000000.evs") && e.contains("record 2") && e.contains("damaged"),
        "{e}"
    );
}
