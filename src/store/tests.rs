//! Unit tests of the store: real redb files in temp dirs.

use super::*;
use crate::privacy::{Table, UserKey};

fn scan_dir_for(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        let p = e.unwrap().path();
        p.is_file()
            && std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
    })
}

/// Rows for `u` sealed with its (new) key.
fn rows(store: &Store, u: UserKey, f: impl FnOnce(&Sealer, &mut UserRows)) -> UserRows {
    let s = store.sealer(&u);
    let mut r = UserRows::new(u);
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
    assert_eq!((c.events, c.decisions, c.state, c.key), (2, 1, true, true));
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
fn a_schema_1_file_opens_as_schema_2() {
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
    assert_eq!(
        store.reader().unwrap().seen_many(&u, &[[4; 16]]).unwrap(),
        [true]
    );
    assert_eq!(store.log_len().unwrap(), 0, "applied entries are trimmed");
    assert!(store.applied_wal().unwrap() >= 1);
    drop(store);
    // Applied once only: a second open adds nothing (statistics are not counted twice).
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.stats("g").unwrap()[0].1, [1.0; 6]);
}

#[test]
fn non_durable_applies_reach_the_disk_with_the_next_durable_one() {
    let dir = tempfile::tempdir().unwrap();
    let u = UserKey([9; 16]);
    let store = Store::open(dir.path()).unwrap();
    let r = rows(&store, u, |s, r| {
        r.events = vec![(0, [5; 16], s.seal(&u, Table::Event, b"e"))];
    });
    let batch = Batch {
        rows: vec![r],
        stats: Vec::new(),
    };
    let seq = store.log(&batch, 0).unwrap();
    store.apply(&[(seq, &batch)], false).unwrap();
    // Visible at once to readers.
    assert_eq!(store.export(&u).unwrap().unwrap().events.len(), 1);
    store.mark_durable().unwrap();
    store.trim_log(seq).unwrap();
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.export(&u).unwrap().unwrap().events.len(), 1);
}
