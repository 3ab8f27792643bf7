//! The rule lab: `trimtab rules test` on the shipped fixtures and on broken ones (the real
//! binary, the repository's rules).

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::support::*;

/// `trimtab rules SUB` with these args: (exit code, stdout, stderr).
fn rules_cmd<S: AsRef<std::ffi::OsStr>>(sub: &str, args: &[S]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("rules")
        .arg(sub)
        .args(args)
        .env_remove("TRIMTAB_CONFIG")
        .output()
        .expect("run trimtab rules");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rules_test(args: &[&str]) -> (i32, String, String) {
    rules_cmd("test", args)
}

fn repo_scripts() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .display()
        .to_string()
}

#[test]
fn the_shipped_fixtures_pass() {
    let (code, out, err) = rules_test(&["--dir", &repo_scripts()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("0 failed"), "{out}");
    for f in [
        "scroll_offer.toml",
        "hover_review.toml",
        "cta_by_context.toml",
    ] {
        assert!(out.contains(f), "{f} not run: {out}");
    }
    let (code, out, _) = rules_test(&["--dir", &repo_scripts(), "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    assert!(v["passed"].as_u64().unwrap() >= 15, "{v}");
    // The timer-driven case fires from a tick at 3 s into the hover.
    let hover = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"].as_str().unwrap().contains("3-second hover"))
        .expect("the hover case");
    assert_eq!(
        hover["got"][0]["trigger"],
        serde_json::Value::Null,
        "{hover}"
    );
}

#[test]
fn a_failing_case_shows_its_diff_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let scripts = dir.path().join("scripts");
    std::fs::create_dir_all(scripts.join("tests")).unwrap();
    for f in [
        "scroll_offer.rhai",
        "hover_review.rhai",
        "cta_by_context.rhai",
    ] {
        std::fs::copy(Path::new(&repo_scripts()).join(f), scripts.join(f)).unwrap();
    }
    // The offer at 60% is expected, but the rule waits for 75%.
    std::fs::write(
        scripts.join("tests/wrong.toml"),
        r#"
rules = ["scroll_offer"]
[[case]]
name = "expects the offer too early"
context = { page = "/article/x", hour = 12 }
[[case.events]]
at = 0
type = "page_view"
props = { path = "/article/x" }
[[case.events]]
at = 1000
type = "scroll"
props = { depth = 60.0 }
[[case.events]]
at = 2000
type = "scroll"
props = { depth = 90.0 }
[[case.expect]]
at = 1000
slot = "offer"
variant = "discount"
"#,
    )
    .unwrap();
    let s = scripts.display().to_string();
    let (code, out, err) = rules_test(&["--dir", &s]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("FAIL  expects the offer too early"), "{out}");
    assert!(out.contains("- offer = discount at 1000 ms"), "{out}");
    assert!(out.contains("+ offer = discount at 2000 ms"), "{out}");
    assert!(out.contains("1 failed"), "{out}");
    // A rule that does not compile: exit 2, naming the file, line and column.
    std::fs::write(
        scripts.join("scroll_offer.rhai"),
        "const ON = [\"scroll\"];\nlet x = ;\n",
    )
    .unwrap();
    let (code, _, err) = rules_test(&["--dir", &s]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("scroll_offer.rhai:2:"), "{err}");
    // A fixture with an unknown key: exit 2, naming it.
    std::fs::write(
        scripts.join("tests/wrong.toml"),
        "[[case]]\nexpected = []\n",
    )
    .unwrap();
    let (code, _, err) = rules_test(&["--dir", &s]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("wrong.toml") && err.contains("expected"),
        "{err}"
    );
}

const ADMIN: Option<&str> = Some(ADMIN_TOKEN);

fn post_json(s: &Server, path: &str, body: serde_json::Value) -> Resp {
    s.post_raw(path, ADMIN, body.to_string().as_bytes())
}

#[test]
fn check_reports_errors_and_unknown_fields_with_line_and_column() {
    let s = Server::start(Opts::config(""));
    let r = post_json(
        &s,
        "/v1/rules/check",
        json!({"source": "const ON = [\"scroll\"];\nlet d = user.scrol.depth;\nif event.kind == 1 { adjust(\"a\", \"b\", #{}); }"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["errors"], json!([]));
    assert_eq!(r.json["on"], json!(["scroll"]));
    let w = r.json["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{}", r.body);
    assert_eq!(
        (w[0]["line"].as_u64(), w[0]["column"].as_u64()),
        (Some(2), Some(14))
    );
    assert!(w[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("user.scrol does not exist"));
    assert_eq!(w[1]["line"], 3);
    let r = post_json(
        &s,
        "/v1/rules/check",
        json!({"source": "let x = 1;\nif x > { }"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json["errors"][0]["line"], 2, "{}", r.body);
    assert!(r.json["errors"][0]["column"].as_u64().is_some());
    // Nothing was installed.
    assert!(s.rules().is_empty());
    // Admin only; the body is checked like any other.
    assert_eq!(
        s.post_raw("/v1/rules/check", None, b"{\"source\":\"1\"}")
            .status,
        401
    );
    let r = post_json(&s, "/v1/rules/check", json!({"source": "1", "extra": 1}));
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (422, Some("unknown_field"))
    );
    let r = post_json(&s, "/v1/rules/check", json!({"source": "   "}));
    assert_eq!(
        (r.status, r.json["error"]["path"].as_str()),
        (422, Some("source"))
    );
    // The lab's names are not rule names.
    let r = s.put_raw("/v1/rules/check", ADMIN, b"1");
    assert_eq!(r.status, 405, "{}", r.body);
    let r = s.put_raw("/v1/rules/backtest", ADMIN, b"1");
    assert_eq!(r.status, 405, "{}", r.body);
}

const DEEP_READER: &str = r#"const ON = ["scroll"];
if (user.scroll?.max_depth ?? 0.0) > 75.0 {
    adjust("offer", "deep", #{ at: "" + event.props.depth });
}"#;

#[test]
fn a_dry_run_answers_what_the_rule_would_do_and_changes_nothing() {
    let s = Server::start(Opts::config("[rate]\nuser_per_min = 0\n"));
    let t = s.identify("dry-run-reader");
    s.post_ok(
        &t,
        vec![
            page_view(&eid("p"), "/article/a"),
            scroll(&eid("s"), 40.0, "/article/a"),
            scroll(&eid("s"), 80.0, "/article/a"),
        ],
    );
    let before = s.get("/v1/users/dry-run-reader", ADMIN).body;
    let r = post_json(
        &s,
        "/v1/rules/dry-run",
        json!({"source": DEEP_READER, "user": "dry-run-reader"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let steps = r.json["steps"].as_array().unwrap();
    let kinds: Vec<(&str, bool, usize)> = steps
        .iter()
        .map(|st| {
            (
                st["type"].as_str().unwrap(),
                st["ran"].as_bool().unwrap(),
                st["adjustments"].as_array().unwrap().len(),
            )
        })
        .collect();
    // With the state as it is now (max depth 80), both scrolls would adjust; the page view
    // and the tick are not in its ON.
    assert_eq!(
        kinds,
        [
            ("page_view", false, 0),
            ("scroll", true, 1),
            ("scroll", true, 1),
            ("tick", false, 0)
        ]
    );
    assert_eq!(steps[1]["adjustments"][0]["params"]["at"], "40.0");
    assert!(steps[1]["operations"].as_u64().unwrap() > 0);
    assert_eq!(r.json["adjustments"], 2);
    assert_eq!(r.json["user_events"], 3);
    // By key too; errors per step.
    let key = r.json["key"].as_str().unwrap().to_string();
    let r = post_json(
        &s,
        "/v1/rules/dry-run",
        json!({"source": "const ON = [\"scroll\"];\nthrow \"nope\";", "key": key}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["errors"], 2);
    assert!(
        r.json["steps"][1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nope"),
        "{}",
        r.body
    );
    // Nothing changed: the export is the same to the byte, and nothing was installed.
    assert_eq!(s.get("/v1/users/dry-run-reader", ADMIN).body, before);
    assert!(s.rules().is_empty());
    // Refusals.
    let r = post_json(
        &s,
        "/v1/rules/dry-run",
        json!({"source": DEEP_READER, "user": "nobody-here"}),
    );
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = post_json(
        &s,
        "/v1/rules/dry-run",
        json!({"source": DEEP_READER, "user": "a", "key": key}),
    );
    assert_eq!(
        (r.status, r.json["error"]["path"].as_str()),
        (422, Some("user"))
    );
    let r = post_json(
        &s,
        "/v1/rules/dry-run",
        json!({"source": "let x = ;", "user": "dry-run-reader"}),
    );
    assert_eq!(
        (r.status, r.json["error"]["code"].as_str()),
        (422, Some("rule_compile_error")),
        "{}",
        r.body
    );
    assert!(
        r.json["error"]["path"].as_str().unwrap().ends_with(":1:9"),
        "{}",
        r.body
    );
}

/// The depths user `i` scrolls to in each of its sessions.
fn sessions_of(i: usize) -> Vec<(String, Vec<f64>)> {
    let mut out = vec![(
        "sess-1".to_string(),
        vec![10.0, 30.0, 50.0 + (i % 6) as f64 * 10.0],
    )];
    if i.is_multiple_of(4) {
        out.push(("sess-2".to_string(), vec![20.0, 95.0]));
    }
    out
}

const PROMO: &str = r#"const ON = ["scroll"];
if user.showing("promo") != "" { return; }
let d = user.scroll?.depth ?? 0.0;
if d > 60.0 { adjust("promo", if d > 90.0 { "big" } else { "small" }, #{}); }"#;

#[test]
fn a_backtest_counts_what_a_brute_force_replay_counts() {
    let s = Server::start(Opts::config(
        "[rate]\nuser_per_min = 0\nanonymous_per_min = 0\n",
    ));
    let users = 36;
    let mut batch = Vec::new();
    for i in 0..users {
        let u = format!("bt-{i}");
        for (session, depths) in sessions_of(i) {
            let mut pv = for_user(page_view(&eid("p"), "/article/a"), &u);
            pv["session"] = session.clone().into();
            batch.push(pv);
            for d in depths {
                let mut e = for_user(scroll(&eid("s"), d, "/article/a"), &u);
                e["session"] = session.clone().into();
                batch.push(e);
            }
        }
    }
    for chunk in batch.chunks(100) {
        s.post_ok(WRITE_KEY, chunk.to_vec());
    }
    // Brute force, from the generator: the first depth past 60 of each session fires, "big"
    // past 90.
    let (mut fired_users, mut fired_sessions) = (0u64, 0u64);
    let mut variants: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for i in 0..users {
        let mut any = false;
        let mut seen_variants = std::collections::BTreeSet::new();
        for (_, depths) in sessions_of(i) {
            if let Some(d) = depths.iter().find(|d| **d > 60.0) {
                let v = if *d > 90.0 { "big" } else { "small" };
                fired_sessions += 1;
                variants.entry(v).or_default().1 += 1;
                seen_variants.insert(v);
                any = true;
            }
        }
        for v in seen_variants {
            variants.entry(v).or_default().0 += 1;
        }
        fired_users += u64::from(any);
    }
    let r = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": PROMO, "name": "promo"}),
    );
    let r = if r.status == 202 {
        let id = r.json["id"].as_str().unwrap().to_string();
        poll(WAIT, || {
            let g = s.get(&format!("/v1/rules/backtest/{id}"), ADMIN);
            (g.json["state"] != "running").then_some(g)
        })
        .expect("the backtest ends")
    } else {
        r
    };
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["state"], "done", "{}", r.body);
    let res = &r.json["result"];
    assert_eq!(res["users"], users as u64, "{res}");
    assert_eq!(res["events"], batch.len() as u64);
    assert_eq!(res["fired_users"], fired_users, "{res}");
    assert_eq!(res["fired_sessions"], fired_sessions, "{res}");
    assert_eq!(res["decisions"], fired_sessions);
    for c in res["by_variant"].as_array().unwrap() {
        let v = c["variant"].as_str().unwrap();
        assert_eq!(
            (
                c["users"].as_u64().unwrap(),
                c["sessions"].as_u64().unwrap()
            ),
            variants[v],
            "{v}: {res}"
        );
    }
    assert_eq!(res["by_variant"].as_array().unwrap().len(), variants.len());
    let hist: u64 = res["time_to_fire"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["sessions"].as_u64().unwrap())
        .sum();
    assert_eq!(hist, fired_sessions);
    assert_eq!(res["rule_runs"]["failures"], 0);
    assert!(res["rule_runs"]["operations"].as_u64().unwrap() > 0);
    assert!(!res["examples"].as_array().unwrap().is_empty());
    // Nothing installed, nothing pushed: the users' state shows no promo.
    assert!(s.rules().is_empty());
    let ex = s.export("bt-5").unwrap();
    assert!(ex["decisions"].as_array().unwrap().is_empty(), "{ex}");
    // A sample replays a fixed share of the users; a window in the future replays nothing.
    let r = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": PROMO, "sample": 0.5}),
    );
    let n = r.json["result"]["users"].as_u64().unwrap();
    assert!(n > 0 && n < users as u64, "{}", r.body);
    let r2 = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": PROMO, "sample": 0.5}),
    );
    assert_eq!(
        r2.json["result"]["users"].as_u64().unwrap(),
        n,
        "the same sample"
    );
    let r = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": PROMO, "from_ms": now_ms() + 60_000}),
    );
    assert_eq!(r.json["result"]["events"], 0, "{}", r.body);
    let r = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": PROMO, "max_events": 10}),
    );
    assert_eq!(
        (
            r.json["result"]["events"].as_u64(),
            r.json["result"]["truncated"].as_bool()
        ),
        (Some(10), Some(true)),
        "{}",
        r.body
    );
    let r = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": PROMO, "sample": 2.0}),
    );
    assert_eq!(
        (r.status, r.json["error"]["path"].as_str()),
        (422, Some("sample"))
    );
}

#[test]
fn a_looping_rule_is_stopped_reported_and_cancellable_while_the_server_serves() {
    // Every run of the looping rule takes its full 40 ms (never disabled): 150 events, 6 s.
    let s = Server::start(Opts::config(
        "[rate]\nuser_per_min = 0\n[rules]\ntimeout_ms = 40\nmax_operations = 100000000\n\
         max_consecutive_failures = 1000000\nmax_failure_percent = 100\n",
    ));
    let t = s.identify("looped");
    let evs: Vec<_> = (0..150)
        .map(|i| scroll(&eid("l"), f64::from(i % 100), "/a"))
        .collect();
    for chunk in evs.chunks(50) {
        s.post_ok(&t, chunk.to_vec());
    }
    let looping = "const ON = [\"scroll\"];\nlet i = 0;\nloop { i += 1; }";
    let r = post_json(&s, "/v1/rules/backtest", json!({"source": looping}));
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json["id"].as_str().unwrap().to_string();
    // One at a time.
    let busy = post_json(&s, "/v1/rules/backtest", json!({"source": PROMO}));
    assert_eq!(
        (busy.status, busy.json["error"]["code"].as_str()),
        (409, Some("backtest_running"))
    );
    // Live traffic is served meanwhile.
    let t2 = s.identify("live-while-backtesting");
    let r = s.post_ok(&t2, vec![scroll(&eid("x"), 10.0, "/a")]);
    assert_eq!(r["accepted"], 1);
    assert_eq!(s.get("/readyz", None).status, 200);
    let g = s.get(&format!("/v1/rules/backtest/{id}"), ADMIN);
    assert_eq!(g.json["state"], "running", "{}", g.body);
    // Cancelled: it stops between users, with what it did so far.
    let c = s.delete(&format!("/v1/rules/backtest/{id}"), ADMIN);
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.json["state"], "cancelled", "{}", c.body);
    // A run to the end reports the sandbox's stops: every run failed, with the reason.
    let r = post_json(
        &s,
        "/v1/rules/backtest",
        json!({"source": looping, "max_events": 5}),
    );
    let r = if r.status == 202 {
        poll(WAIT, || {
            let g = s.get(
                &format!("/v1/rules/backtest/{}", r.json["id"].as_str().unwrap()),
                ADMIN,
            );
            (g.json["state"] != "running").then_some(g)
        })
        .unwrap()
    } else {
        r
    };
    let runs = &r.json["result"]["rule_runs"];
    assert_eq!(
        (runs["runs"].as_u64(), runs["failures"].as_u64()),
        (Some(5), Some(5)),
        "{}",
        r.body
    );
    assert!(
        runs["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("40 ms"),
        "{}",
        r.body
    );
    assert_eq!(s.get("/v1/rules/backtest/nope", ADMIN).status, 404);
}

fn rules_backtest(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    rules_cmd("backtest", args)
}

#[test]
fn the_backtest_cli_reads_a_stopped_data_dir_and_the_simulators_audience() {
    let mut s = Server::start(Opts::config("[rate]\nuser_per_min = 0\n"));
    let mut batch = Vec::new();
    for i in 0..12 {
        let u = format!("cli-{i}");
        batch.push(for_user(page_view(&eid("p"), "/article/a"), &u));
        batch.push(for_user(
            scroll(&eid("s"), if i < 5 { 95.0 } else { 20.0 }, "/article/a"),
            &u,
        ));
    }
    s.post_ok(WRITE_KEY, batch);
    let rule = s.dir().join("promo.rhai");
    std::fs::write(&rule, PROMO).unwrap();
    let empty = s.dir().join("no-rules");
    std::fs::create_dir_all(&empty).unwrap();
    let data = s.data.clone();
    let args = |extra: &[&std::ffi::OsStr]| {
        let mut v: Vec<std::ffi::OsString> = vec![
            "--rule".into(),
            rule.clone().into(),
            "--dir".into(),
            empty.clone().into(),
            "--json".into(),
        ];
        v.extend(extra.iter().map(|a| a.to_os_string()));
        v
    };
    // While the server runs, the data dir is locked: the message says what to use instead.
    let a = args(&["--data".as_ref(), data.as_os_str()]);
    let a: Vec<&std::ffi::OsStr> = a.iter().map(|x| x.as_os_str()).collect();
    let (code, _, err) = rules_backtest(&a);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("POST /v1/rules/backtest"), "{err}");
    s.sigterm();
    assert!(s.wait_exit(WAIT).is_some());
    let (code, out, err) = rules_backtest(&a);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["users"].as_u64(), v["fired_users"].as_u64()),
        (Some(12), Some(5)),
        "{v}"
    );
    assert_eq!(v["by_variant"][0]["variant"], "big");
    // The simulator's audience, before any real traffic.
    let events = s.dir().join("audience.jsonl");
    let st = Command::new(sim_bin())
        .args(["--offline", "--rows", "60", "--out"])
        .arg(s.dir().join("log.jsonl"))
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let cta = Path::new(&repo_scripts()).join("cta_by_context.rhai");
    let (code, out, err) = rules_backtest(&[
        "--rule".as_ref(),
        cta.as_os_str(),
        "--dir".as_ref(),
        repo_scripts().as_ref(),
        "--events".as_ref(),
        events.as_os_str(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replayed") && out.contains("of 60 users"),
        "{out}"
    );
    assert!(
        out.contains("cta = "),
        "the example rule fires for some of the audience: {out}"
    );
}
