//! Contextual bandits end to end: a slot defined over the admin API is decided by the
//! bandit (with a logged propensity), clicks carrying the decision id reward it within the
//! attribution window, the learner absorbs every decision (reward 0 when the window closes),
//! the log exports as logged-bandit-feedback JSONL, erasure removes a user's records, a
//! restart resumes by replaying the log, and a degrading guardrail falls back to the control.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn put_bandit(s: &Server, slot: &str, def: &Value) -> Resp {
    s.put_raw(
        &format!("/v1/bandits/{slot}"),
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    )
}

fn decide(s: &Server, token: &str, slot: &str) -> Value {
    let r = s.post_raw(
        "/v1/decide",
        Some(token),
        json!({ "slot": slot }).to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "decide: {}", r.body);
    r.json
}

fn click_on(decision: &str) -> Value {
    let mut e = click(&eid("c"), "cta");
    e["props"] = json!({ "decision": decision });
    e
}

fn status(s: &Server, slot: &str) -> Value {
    let r = s.get(&format!("/v1/bandits/{slot}"), Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json
}

/// One user: a page view, a first-paint decision, a click when `click_if(variant, propensity)`.
fn visit(s: &Server, user: &str, click_if: impl Fn(&str, f64) -> bool) -> (Value, bool) {
    let t = s.identify(user);
    s.post_ok(
        &t,
        vec![
            at_hour(page_view(&eid("pv"), "/product"), 20),
            scroll(&eid("sc"), 60.0, "/product"),
        ],
    );
    let d = decide(s, &t, "cta");
    let clicked = click_if(
        d["variant"].as_str().unwrap(),
        d["decision"]["propensity"].as_f64().unwrap(),
    );
    if clicked {
        s.post_ok(&t, vec![click_on(d["decision"]["id"].as_str().unwrap())]);
    }
    (d, clicked)
}

#[test]
fn bandit_decides_learns_logs_and_survives_restart_and_erasure() {
    let mut s = Server::start(Opts::config(""));
    // Invalid definitions are refused with the field's path.
    let r = put_bandit(&s, "cta", &json!({"candidates": ["a"]}));
    assert_eq!(
        (r.status, r.code(), r.path()),
        (422, "invalid_bandit", "candidates"),
        "{}",
        r.body
    );
    let r = put_bandit(
        &s,
        "cta",
        &json!({"candidates": ["a", "b"], "policy": "best"}),
    );
    assert_eq!((r.status, r.path()), (422, "policy"), "{}", r.body);
    let r = put_bandit(&s, "cta", &json!({"candidates": ["a", "b"], "nope": 1}));
    assert_eq!(r.status, 422, "{}", r.body);
    // Admin only.
    let r = s.get("/v1/bandits", None);
    assert_eq!(r.status, 401);

    let def = json!({"candidates": ["a", "b", "c"], "window_ms": 1500, "holdout": 0,
                     "policy": "linucb", "params": {"floor": 0.3}});
    let r = put_bandit(&s, "cta", &def);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(s.scripts.join("bandits/cta.toml").exists());

    let n = 24;
    let mut clicks = 0;
    let mut clicked_by = Vec::new();
    for i in 0..n {
        let (d, clicked) = visit(&s, &format!("bu-{i}"), |v, _| v == "b");
        assert_eq!(d["decision"]["source"], "bandit", "{d}");
        let p = d["decision"]["propensity"].as_f64().unwrap();
        assert!(p > 0.0 && p <= 1.0, "{d}");
        // With a 0.3 floor every arm has probability ≥ 0.1.
        assert!(p >= 0.1 - 1e-9, "{d}");
        clicks += usize::from(clicked);
        clicked_by.push(clicked);
        // A second decide on the same page keeps the decision.
        if i == 0 {
            let t = s.identify("bu-0");
            let again = decide(&s, &t, "cta");
            assert_eq!(again["decision"]["id"], d["decision"]["id"]);
            assert_eq!(again["variant"], d["variant"]);
        }
    }
    // Every decision is absorbed once its window closes (clicks at once, the rest as 0).
    let st = poll(Duration::from_secs(10), || {
        let st = status(&s, "cta");
        (st["version"] == n && st["pending"] == 0).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "learner did not absorb all decisions: {}",
            status(&s, "cta")
        )
    });
    assert_eq!(st["state"], "learning");
    assert_eq!(st["arms"][1]["rewarded"], clicks, "{st}");
    assert_eq!(st["arms"][0]["rewarded"], 0, "{st}");
    let chosen: u64 = (0..3)
        .map(|i| st["arms"][i]["chosen"].as_u64().unwrap())
        .sum();
    assert_eq!(chosen, n as u64);

    // The log: one logged-bandit-feedback row per decision, reward 1 exactly for clicks on b.
    let r = s.get("/v1/bandits/cta/log", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200);
    let rows: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), n);
    for row in &rows {
        assert_eq!(row["context"].as_array().unwrap().len(), 14, "{row}");
        let reward = row["reward"].as_f64().unwrap();
        assert_eq!(reward == 1.0, row["action"] == 1, "{row}");
        assert!(row["propensity"].as_f64().unwrap() > 0.0);
    }
    // Depth 60 % is in the context (feature 0).
    assert!((rows[0]["context"][0].as_f64().unwrap() - 0.6).abs() < 1e-6);
    let r = s.get("/v1/bandits/cta/log?format=bogus", Some(ADMIN_TOKEN));
    assert_eq!((r.status, r.code()), (400, "bad_query"));
    let r = s.get("/v1/bandits/cta/log?format=records", Some(ADMIN_TOKEN));
    let first: Value = serde_json::from_str(r.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["group"], "bandit");
    assert_eq!(first["policy"], "linucb");

    // A user's export includes their learning record; erasure removes it from the log.
    let ex = s.export("bu-3").unwrap();
    assert_eq!(ex["learning"].as_array().unwrap().len(), 1, "{ex}");
    let r = s.delete("/v1/users/bu-3", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.get("/v1/bandits/cta/log", Some(ADMIN_TOKEN));
    assert_eq!(r.body.lines().count(), n - 1);

    // A restart replays the log: the policy resumes at the same version (minus the erased).
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    s.restart();
    let st = status(&s, "cta");
    assert_eq!(st["version"], n - 1, "{st}");
    // bu-3's click (if any) went with the erasure.
    assert_eq!(
        st["arms"][1]["rewarded"].as_u64().unwrap() as usize,
        clicks - usize::from(clicked_by[3])
    );

    // `trimtab export-log` reads the same log from a stopped server's data dir, and
    // `trimtab ope` reads what it writes.
    let locked = std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"))
        .args(["export-log", "--slot", "cta", "--data"])
        .arg(&s.data)
        .output()
        .unwrap();
    assert!(!locked.status.success());
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("/v1/bandits/cta/log"),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    s.sigterm();
    assert!(s.wait_exit(Duration::from_secs(15)).is_some());
    let out_file = s.dir().join("cta.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"))
        .args(["export-log", "--slot", "cta", "--data"])
        .arg(&s.data)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(text.lines().count(), n - 1);
    let ope = std::process::Command::new(env!("CARGO_BIN_EXE_trimtab"))
        .args(["ope", "--policy", "uniform", "--json", "--log"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        ope.status.success(),
        "{}",
        String::from_utf8_lossy(&ope.stderr)
    );
    let report: Value = serde_json::from_slice(&ope.stdout).unwrap();
    assert_eq!(report["rows"], n - 1);
    s.restart();

    // Deleting the slot hands it back to rules: decide answers the default.
    let r = s.delete("/v1/bandits/cta", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 204);
    let t = s.identify("after-delete");
    s.post_ok(&t, vec![page_view(&eid("pv"), "/")]);
    let d = poll(Duration::from_secs(5), || {
        let d = decide(&s, &t, "cta");
        (d["decision"]["source"] == "default").then_some(d)
    });
    assert!(d.is_some());
}

#[test]
fn guardrail_degradation_falls_back_to_the_control() {
    let s = Server::start(Opts::config(""));
    let def = json!({"candidates": ["safe", "risky", "other"], "window_ms": 1000, "holdout": 0.5,
                     "guardrail": {"metric": "click", "min_samples": 8, "max_drop": 0.2}});
    let r = put_bandit(&s, "cta", &def);
    assert_eq!(r.status, 200, "{}", r.body);
    // Holdout users (always the control, propensity 1) click; bandit users never do.
    let mut i = 0;
    let fell_back = poll(Duration::from_secs(60), || {
        for _ in 0..6 {
            visit(&s, &format!("g-{i}"), |_, p| p == 1.0);
            i += 1;
        }
        let st = status(&s, "cta");
        (st["state"] == "fallback").then_some(st)
    })
    .unwrap_or_else(|| panic!("no fallback: {}", status(&s, "cta")));
    let reason = fell_back["fallback_reason"].as_str().unwrap();
    assert!(reason.contains("guardrail `click`"), "{reason}");
    let m = s.get("/metrics", None).body;
    assert!(m.contains("trimtab_bandit_fallback{slot=\"cta\"} 1"), "{m}");
    // Everyone now gets the control, with propensity 1.
    for k in 0..5 {
        let (d, _) = visit(&s, &format!("after-{k}"), |_, _| false);
        assert_eq!(d["variant"], "safe", "{d}");
        assert_eq!(d["decision"]["propensity"], 1.0);
    }
    // Reset resumes learning and restarts the comparison.
    let r = s.post_raw("/v1/bandits/cta/reset", Some(ADMIN_TOKEN), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let st = poll(Duration::from_secs(5), || {
        let st = status(&s, "cta");
        (st["state"] == "learning").then_some(st)
    })
    .unwrap_or_else(|| panic!("still in fallback: {}", status(&s, "cta")));
    assert_eq!(st["groups"]["bandit"]["decisions"], 0, "{st}");
    let m = s.get("/metrics", None).body;
    assert!(m.contains("trimtab_bandit_fallback{slot=\"cta\"} 0"), "{m}");
}

#[test]
fn dwell_and_conversion_outcomes_are_attributed_to_the_slot_decision() {
    let s = Server::start(Opts::config(""));
    let def = json!({"candidates": ["a", "b"], "reward": "dwell", "dwell_ms": 1000,
                     "window_ms": 1000, "holdout": 0});
    assert_eq!(put_bandit(&s, "cta", &def).status, 200);
    let dwell = |ms: u64| {
        let mut e = click(&eid("dw"), "cta");
        e["type"] = "dwell".into();
        e["props"] = json!({"phase": "end", "duration_ms": ms});
        e
    };
    let conversion = || {
        let mut e = click(&eid("cv"), "cta");
        e["type"] = "conversion".into();
        e["props"] = json!({"name": "signup"});
        e.as_object_mut().unwrap().remove("target");
        e
    };
    let users: [(&str, Vec<Value>); 3] = [
        ("long-dwell", vec![dwell(1500)]),
        ("short-dwell", vec![dwell(500)]),
        ("converts", vec![conversion()]),
    ];
    for (user, outcome) in &users {
        let t = s.identify(user);
        s.post_ok(&t, vec![page_view(&eid("pv"), "/")]);
        let d = decide(&s, &t, "cta");
        assert_eq!(d["decision"]["source"], "bandit", "{d}");
        s.post_ok(&t, outcome.clone());
    }
    let st = poll(Duration::from_secs(10), || {
        let st = status(&s, "cta");
        (st["version"] == 3 && st["pending"] == 0).then_some(st)
    })
    .unwrap_or_else(|| panic!("{}", status(&s, "cta")));
    let rewarded: u64 = (0..2)
        .map(|i| st["arms"][i]["rewarded"].as_u64().unwrap())
        .sum();
    assert_eq!(rewarded, 1, "only the 1.5 s dwell rewards: {st}");
    let r = s.get("/v1/bandits/cta/log?format=records", Some(ADMIN_TOKEN));
    let recs: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3);
    let dwells = recs
        .iter()
        .filter(|r| r["outcomes"]["dwell"].is_number())
        .count();
    let convs = recs
        .iter()
        .filter(|r| r["outcomes"]["conversion"].is_number())
        .count();
    assert_eq!((dwells, convs), (1, 1), "{}", r.body);
    assert_eq!(
        st["groups"]["bandit"]["conversion_rate"].as_f64().unwrap() * 3.0,
        1.0
    );
    let m = s.get("/metrics", None).body;
    assert!(
        m.contains("trimtab_bandit_outcomes_total{kind=\"dwell\",slot=\"cta\"} 1"),
        "{m}"
    );
}
