//! Fault injection: the storage under the server fails (an `LD_PRELOAD` shim,
//! `tests/faults/shim.c`, failing `fsync`/`fdatasync` or writing `ENOSPC`), an engine thread
//! panics (`failpoints` builds: `cargo test --features failpoints --test integration faults`),
//! the database is damaged. Each asserts that nothing not durable is acknowledged, that the
//! server is not ready while broken, that it exits with its documented code, and that a restart
//! has every acknowledged event (and takes the refused ones when they are sent again).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The shim, compiled once per test run (`cc`, which building Rust needs anyway).
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/shim.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-shim.so");
        let st = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("run cc (a C compiler is needed for the fault shim)");
        assert!(st.success(), "compiling {} failed", src.display());
        out
    })
}

fn events(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| custom(&eid(prefix), "fault-test", json!({ "n": i })))
        .collect()
}

fn ids(evs: &[Value]) -> Vec<String> {
    evs.iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect()
}

/// A server whose storage calls go through the shim, failing while `flag` exists.
fn server_with_shim(flag: &Path) -> Server {
    Server::start(
        Opts::config(
            "[pipeline]\nfatal_grace_ms = 20000\nindex_ms = 20\n[rate]\nuser_per_min = 0\n",
        )
        .env("LD_PRELOAD", &shim().display().to_string())
        .env("FAULT_SHIM_FLAG", &flag.display().to_string()),
    )
}

/// A server that has just failed, with what it acknowledged before and what it refused.
struct Failed<'a> {
    s: Server,
    /// The shim's flag (removed: the disk works again).
    flag: &'a Path,
    token: &'a str,
    user: &'a str,
    acked: Vec<Value>,
    refused: Vec<Value>,
}

/// How the failed server's process ends in a test.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// By itself, after `pipeline.fatal_grace_ms` (20 s here: long enough for the checks on a
    /// busy machine).
    ByItself,
    /// A SIGTERM during the grace (the exit code is still the failure's).
    Sigterm,
}

/// After the failure: not ready with the reason, counted, writes refused even once the disk
/// works again, then exit with `code`; a restart has every acknowledged event and no other.
fn fails_then_recovers(f: Failed<'_>, kind: &str, code: i32, end: End) {
    let Failed {
        mut s,
        flag,
        token,
        user,
        acked,
        refused,
    } = f;
    let r = s.get("/readyz", None);
    assert_eq!(r.status, 503, "readyz after the failure: {}", r.body);
    assert_eq!(r.json["status"], "failed", "{}", r.body);
    assert_eq!(r.json["reason"], kind, "{}", r.body);
    let m = s.get("/metrics", None);
    assert!(
        m.body
            .contains(&format!("trimtab_fatal{{kind=\"{kind}\"}} 1")),
        "the failure is not in the metrics"
    );
    // The disk works again: the failed server still refuses (it never retries an fsync that
    // failed as if it had succeeded), and says so with the storage code.
    let _ = std::fs::remove_file(flag);
    let more = events("late", 2);
    let r = s.post_events(token, &batch(more.clone()));
    assert_eq!(r.status, 503, "a write after the failure: {}", r.body);
    if end == End::Sigterm {
        s.sigterm();
    }
    let st = s
        .wait_exit(Duration::from_secs(60))
        .expect("the failed server exits");
    assert_eq!(
        st.code(),
        Some(code),
        "exit status {st}; stderr:\n{}",
        s.stderr()
    );
    assert!(
        s.stderr().contains("fatal:"),
        "no fatal line in the log:\n{}",
        s.stderr()
    );

    s.restart();
    let ready = poll(Duration::from_secs(30), || {
        (s.get("/readyz", None).status == 200).then_some(())
    });
    assert!(ready.is_some(), "not ready after the restart");
    let after = s.export(user).expect("the user survives");
    let got = exported_ids(&after);
    for id in ids(&acked) {
        assert!(got.contains(&id), "acknowledged {id} lost: {got:?}");
    }
    for id in ids(&more) {
        assert!(
            !got.contains(&id),
            "{id} was refused but is stored: {got:?}"
        );
    }
    // The client sends what was refused again: accepted (or found already durable), once.
    let r = s.post_events(token, &batch(refused.clone()));
    assert_eq!(r.status, 202, "resending the refused batch: {}", r.body);
    let n = r.json["accepted"].as_u64().unwrap_or(0) + r.json["duplicates"].as_u64().unwrap_or(0);
    assert_eq!(n as usize, refused.len(), "{}", r.body);
    let after = s.export(user).expect("export");
    let mut want = ids(&acked);
    want.extend(ids(&refused));
    assert_eq!(exported_ids(&after), want, "each event exactly once");
}

/// Posts batches of 3 new events until one is refused: each acknowledged batch (all 3
/// accepted) goes into `acked`; the refused one must be 503 `storage_unavailable` and is
/// returned.
fn post_until_refused(s: &Server, token: &str, acked: &mut Vec<Value>) -> Vec<Value> {
    loop {
        let evs = events("b", 3);
        let r = s.post_events(token, &batch(evs.clone()));
        if r.status == 202 {
            assert_eq!(r.json["accepted"], 3, "{}", r.body);
            acked.extend(evs);
            continue;
        }
        assert_eq!(r.status, 503, "a batch whose commit failed: {}", r.body);
        assert_eq!(r.code(), "storage_unavailable", "{}", r.body);
        return evs;
    }
}

/// Whether the server's log shows `line` within [`WAIT`]: a 503 can answer before the health
/// thread's fatal line reaches the log.
fn logs_within_wait(s: &Server, line: &str) -> bool {
    poll(WAIT, || s.stderr().contains(line).then_some(())).is_some()
}

fn storage_fault(fault: impl Fn(&Server) -> String + Send + 'static, user: &str, end: End) {
    let flags = tempfile::tempdir().expect("temp dir");
    let flag = flags.path().join("flag");
    let s = server_with_shim(&flag);
    let token = s.identify(user);
    // Batches go in one after the other while the disk fails 300 ms in: with an index
    // transaction every 20 ms, the failure also lands in the middle of one (the event store
    // appended, the database's commit failing), not only in a group commit.
    let raise = {
        let (flag, text) = (flag.clone(), fault(&s));
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(&flag, text).expect("raise the flag");
        })
    };
    let mut acked = Vec::new();
    let refused = post_until_refused(&s, &token, &mut acked);
    raise.join().expect("flag thread");
    assert!(
        !acked.is_empty(),
        "nothing was acknowledged before the failure"
    );
    let f = Failed {
        s,
        flag: &flag,
        token: &token,
        user,
        acked,
        refused,
    };
    fails_then_recovers(f, "storage", 74, end);
}

#[test]
fn a_failed_fsync_is_not_acknowledged_makes_the_server_unready_and_exit_74() {
    storage_fault(|_| "fsync".into(), "fsync-user", End::ByItself);
}

/// The database's commit fails while the log's group commits succeed: the index transaction
/// fails after the event store took its records. Those are acknowledged events: they must be
/// there after the restart (they were once cut off with the failed transaction and lost, as the
/// database's commit had in fact reached the file).
#[test]
fn a_failed_index_transaction_loses_no_acknowledged_event() {
    let flags = tempfile::tempdir().expect("temp dir");
    let flag = flags.path().join("flag");
    let s = server_with_shim(&flag);
    let user = "index-fault-user";
    let token = s.identify(user);
    let first = events("first", 3);
    s.post_ok(&token, first.clone());
    std::fs::write(&flag, "fsync trimtab.redb").expect("raise the flag");
    // Acknowledged (the log is fine) until the failed index transaction makes the server stop
    // taking writes.
    let mut acked = first;
    let refused = post_until_refused(&s, &token, &mut acked);
    assert!(
        logs_within_wait(&s, "fatal: index transaction failed"),
        "not the index transaction:\n{}",
        s.stderr()
    );
    let f = Failed {
        s,
        flag: &flag,
        token: &token,
        user,
        acked,
        refused,
    };
    fails_then_recovers(f, "storage", 74, End::Sigterm);
}

/// The decision log's fsync fails (the event store's and the database's work): the index
/// transaction fails before it commits. The decisions it was applying were acknowledged with
/// their events (they are in the write-ahead log): after the restart every decision exported
/// before the failure is still there, and so is one for every acknowledged event.
#[test]
fn a_failed_decision_log_sync_loses_no_decision() {
    let flags = tempfile::tempdir().expect("temp dir");
    let flag = flags.path().join("flag");
    // One adjustment per event, each a new variant (n grows), no caps: a decision per event.
    let mut s = Server::start(
        Opts::config(
            "[pipeline]\nfatal_grace_ms = 20000\nindex_ms = 20\n[rate]\nuser_per_min = 0\n[delivery]\ncap_per_session = 0\ncap_per_user = 0\n",
        )
        .script(
            "per-event",
            "const ON = [\"custom\"];\nif event.props.name == \"decided\" { adjust(\"fault\", \"v\" + event.props.n, #{}); }\n",
        )
        .env("LD_PRELOAD", &shim().display().to_string())
        .env("FAULT_SHIM_FLAG", &flag.display().to_string()),
    );
    let user = "decision-fault-user";
    let token = s.identify(user);
    let mut n = 0;
    let mut next = |k: usize| {
        (0..k)
            .map(|_| {
                n += 1;
                custom(&eid("d"), "decided", json!({ "n": n }))
            })
            .collect::<Vec<Value>>()
    };
    let decision_ids = |ex: &Value| -> BTreeSet<String> {
        ex["decisions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut acked = next(3);
    s.post_ok(&token, acked.clone());
    let before = poll(Duration::from_secs(10), || {
        let ex = s.export(user)?;
        let d = decision_ids(&ex);
        (d.len() == 3).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "three decisions exported before the fault: {:?}\n{}",
            s.export(user),
            s.stderr()
        )
    });
    // Only the decision log's first segment: the event store and the database sync fine.
    std::fs::write(&flag, "fsync decisions/00000000000000000000.evs").expect("raise the flag");
    loop {
        let evs = next(3);
        let r = s.post_events(&token, &batch(evs.clone()));
        if r.status == 202 {
            acked.extend(evs);
            continue;
        }
        assert_eq!(r.code(), "storage_unavailable", "{}", r.body);
        break;
    }
    assert!(
        logs_within_wait(&s, "fatal: index transaction failed"),
        "not the index transaction:\n{}",
        s.stderr()
    );
    let _ = std::fs::remove_file(&flag);
    s.sigterm();
    let st = s
        .wait_exit(Duration::from_secs(60))
        .expect("the failed server exits");
    assert_eq!(st.code(), Some(74), "{st}\n{}", s.stderr());
    s.restart();
    poll(Duration::from_secs(30), || {
        (s.get("/readyz", None).status == 200).then_some(())
    })
    .expect("ready after the restart");
    let ex = s.export(user).expect("the user survives");
    let got = exported_ids(&ex);
    for id in ids(&acked) {
        assert!(got.contains(&id), "acknowledged {id} lost");
    }
    let after = decision_ids(&ex);
    assert!(after.is_superset(&before), "{before:?} ⊄ {after:?}");
    assert_eq!(
        after.len(),
        acked.len(),
        "one decision per acknowledged event: {}",
        ex["decisions"]
    );
}

#[test]
fn a_full_disk_is_not_acknowledged_makes_the_server_unready_and_exit_74() {
    storage_fault(
        |s| format!("enospc {}", s.data.display()),
        "enospc-user",
        End::Sigterm,
    );
}

/// A panicking engine thread (`FAILPOINTS`): not ready, exit 70, nothing acknowledged lost.
#[cfg(feature = "failpoints")]
fn panicking(point: &str, user: &str) {
    // Nothing else reaches the point meanwhile: no segmentation run (it checkpoints every
    // shard), checkpoints only at the stop.
    let mut s = Server::start(
        Opts::config(
            "[pipeline]\nfatal_grace_ms = 20000\ncheckpoint_ms = 600000\n[segments]\nrefresh_s = 0\n",
        )
        // The first evaluation passes (the acknowledged batch), the second panics.
            .env("FAILPOINTS", &format!("{point}=1*off->panic(injected)")),
    );
    let token = s.identify(user);
    let acked = events("ok", 3);
    let r = s.post_ok(&token, acked.clone());
    assert_eq!(r["accepted"], 3, "{r}");
    let refused = events("refused", 3);
    let r = s.post_events(&token, &batch(refused.clone()));
    assert_eq!(r.status, 503, "a batch whose thread died: {}", r.body);
    // The restart must not inject again.
    s.env.retain(|(k, _)| k != "FAILPOINTS");
    let flag = s.dir().join("no-flag");
    let f = Failed {
        s,
        flag: &flag,
        token: &token,
        user,
        acked,
        refused,
    };
    fails_then_recovers(f, "thread", 70, End::Sigterm);
}

#[cfg(feature = "failpoints")]
#[test]
fn a_panicking_writer_makes_the_server_unready_and_exit_70() {
    panicking("writer-commit", "writer-panic-user");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_panicking_shard_makes_the_server_unready_and_exit_70() {
    panicking("shard-message", "shard-panic-user");
}

#[test]
fn a_damaged_database_is_refused_at_start_with_a_clear_message() {
    let mut s = Server::start(Opts::config(""));
    let token = s.identify("damaged-user");
    for i in 0..20 {
        s.post_ok(&token, events(&format!("d{i}"), 50));
    }
    s.sigterm();
    let st = s.wait_exit(Duration::from_secs(30)).expect("stops");
    assert!(st.success(), "{st}");
    // 64 KiB of garbage over the middle of the file (as a disk error or a bad copy would).
    let db = s.data.join("trimtab.redb");
    let bytes = std::fs::read(&db).expect("read db");
    let at = (bytes.len() / 2).max(8192) & !4095;
    let mut damaged = bytes.clone();
    let mut x: u32 = 0x9e37_79b9;
    for b in damaged.iter_mut().skip(at).take(64 << 10) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(&db, &damaged).expect("write damaged db");
    let (st, err) = s.run_second_instance(Duration::from_secs(60));
    assert!(!st.success(), "a damaged database was accepted:\n{err}");
    assert!(
        err.contains("failed its integrity check"),
        "no clear message:\n{err}"
    );
    // The original file starts again.
    std::fs::write(&db, &bytes).expect("restore");
    s.restart();
    assert_eq!(
        exported_ids(&s.export("damaged-user").expect("export")).len(),
        1000
    );
}
