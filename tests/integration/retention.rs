//! Retention: events older than `retention.events_days` leave the data dir (the export stops
//! listing them), their ids stop deduplicating, and younger events and the users' state stay.

use serde_json::{json, Value};

use crate::support::*;

/// `trimtab_retention_purged_total{kind}` as the server reports it.
fn purged(s: &Server, kind: &str) -> f64 {
    let m = s.get("/metrics", None).body;
    let line = format!("trimtab_retention_purged_total{{kind=\"{kind}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn events_past_the_retention_period_are_purged_and_younger_ones_kept() {
    // 2.6 s of retention, checked every 200 ms; users checkpointed within 100 ms.
    let s = Server::start(Opts::config(
        "[retention]\nevents_days = 0.00003\ncheck_ms = 200\n\
         [pipeline]\ncheckpoint_ms = 100\nindex_ms = 50\n\
         [rate]\nuser_per_min = 0\n",
    ));
    let old = s.identify("retention-old");
    let young = s.identify("retention-young");
    let first = custom(&eid("o"), "note", json!({"n": 1}));
    s.post_ok(
        &old,
        vec![first.clone(), custom(&eid("o"), "note", json!({"n": 2}))],
    );
    let n = |user: &str| {
        s.export(user)
            .and_then(|e| e["events"].as_array().map(Vec::len))
            .unwrap_or(0)
    };
    assert_eq!(n("retention-old"), 2);
    // A younger user keeps writing, so the event store moves on to newer segments.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut sent = 0;
    while n("retention-old") > 0 {
        assert!(
            std::time::Instant::now() < until,
            "the old events are still exported after 20 s"
        );
        s.post_ok(&young, vec![custom(&eid("y"), "note", Value::Null)]);
        sent += 1;
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        purged(&s, "records") >= 2.0,
        "{}",
        s.get("/metrics", None).body
    );
    assert!(purged(&s, "dedup_runs") >= 1.0);
    // The young user's recent events are still there (those of the last second at least).
    let kept = n("retention-young");
    assert!(kept > 0 && kept <= sent, "{kept} of {sent}");
    // The state is not an event: the user is still known, with its counts.
    let me = s.get("/v1/me", Some(&old));
    assert_eq!(me.status, 200, "{}", me.body);
    // A purged event's id no longer deduplicates: sent again, it is a new event.
    let r = s.post_ok(&old, vec![first]);
    assert_eq!(
        (r["accepted"].clone(), r["duplicates"].clone()),
        (json!(1), json!(0)),
        "{r}"
    );
}

#[test]
fn retention_can_be_turned_off_and_bad_values_are_refused() {
    let s = Server::start(Opts::config("[retention]\nevents_days = 0\n"));
    let t = s.identify("kept-forever");
    s.post_ok(&t, vec![custom(&eid("k"), "note", Value::Null)]);
    assert_eq!(purged(&s, "records"), 0.0);
    let (st, err) = run_with_config_file("[retention]\nevents_days = -1\n");
    assert!(!st.success());
    assert!(err.contains("retention.events_days"), "{err}");
}
