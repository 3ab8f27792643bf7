//! Rules are hot-reloaded while traffic flows: a rewritten file takes effect within a deadline
//! without losing an ack, a broken rewrite keeps the previous version running (and is reported
//! with `file:line:col`), and `PUT /v1/rules/{name}` validates before installing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const CONFIG: &str = r#"
# Traffic as fast as the test can send it: no per-user rate limit.
[rate]
user_per_min = 0

[delivery]
cap_per_session = 0
cap_per_user = 0
"#;

fn probe(variant: &str) -> String {
    format!(
        r#"// probe: answers every custom "probe" event with variant {variant}
if event.type == "custom" && event.props.name == "probe" {{
    adjust("probe", "{variant}", #{{ version: "{variant}" }});
}}
"#
    )
}

const BROKEN: &str = r#"// probe, half edited
if event.type == "custom" && event.props.name == "probe" {
    adjust("probe", "v3", #{ version: "v3" }
}
"#;

/// Sends `page_view + custom(probe)` batches over one socket until stopped, waiting for each
/// ack; forwards every adjust to `tx`. Returns (sent ids, acked ids).
fn traffic(
    mut ws: Ws,
    stop: Arc<AtomicBool>,
    tx: mpsc::Sender<Value>,
) -> (Vec<String>, Vec<String>) {
    let (mut sent, mut acked) = (Vec::new(), Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let pv = eid("rl-pv");
        let pr = eid("rl-probe");
        ws.send_events(vec![
            page_view(&pv, "/reload"),
            custom(&pr, "probe", Value::Null),
        ]);
        sent.push(pv.clone());
        sent.push(pr.clone());
        let end = deadline(WAIT);
        loop {
            match ws.next(Duration::from_millis(100)) {
                Got::Json(m) if m["type"] == "adjust" => {
                    let _ = tx.send(m);
                }
                Got::Json(m) if m["type"] == "ack" => {
                    let ids: Vec<String> = m["ids"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect();
                    let done = ids.contains(&pr);
                    acked.extend(ids);
                    if done {
                        break;
                    }
                }
                Got::Json(m) => panic!("unexpected message during traffic: {m}"),
                Got::Close(c) => panic!("socket closed during traffic: {c:?}"),
                Got::Gone(e) => panic!("socket gone during traffic: {e}"),
                Got::Nothing => {}
            }
            assert!(Instant::now() < end, "no ack for {pr} within {WAIT:?}");
        }
    }
    // Adjustments pushed after the last ack still count.
    while let Got::Json(m) = ws.next(Duration::from_millis(200)) {
        if m["type"] == "adjust" {
            let _ = tx.send(m);
        }
    }
    (sent, acked)
}

fn next_adjust(rx: &mpsc::Receiver<Value>, until: Instant) -> Option<Value> {
    rx.recv_timeout(until.saturating_duration_since(Instant::now()))
        .ok()
}

#[test]
fn rewritten_rule_takes_effect_while_traffic_flows_and_broken_rewrite_keeps_old() {
    let s = Server::start(Opts::config(CONFIG).script("probe", &probe("v1")));
    let user = "reload-user";
    let t = s.identify(user);
    let ws = s.ws_connect(&t);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || traffic(ws, stop, tx))
    };
    let finish = |stop: &AtomicBool| {
        stop.store(true, Ordering::Relaxed);
    };

    let first = next_adjust(&rx, deadline(WAIT));
    let first = first.unwrap_or_else(|| {
        finish(&stop);
        panic!("no probe adjustment from v1")
    });
    assert_eq!(first["variant"], "v1", "{first}");

    // Rewrite the file (as an editor would: temp file + rename).
    let path = s.scripts.join("probe.rhai");
    let tmp = s.scripts.join(".probe.rhai.swp");
    std::fs::write(&tmp, probe("v2")).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let rewritten = Instant::now();
    let end = deadline(WAIT);
    let mut v2 = None;
    while let Some(m) = next_adjust(&rx, end) {
        if m["variant"] == "v2" {
            v2 = Some(m);
            break;
        }
        assert_eq!(m["variant"], "v1", "unexpected variant {m}");
    }
    if v2.is_none() {
        finish(&stop);
        panic!(
            "the rewritten rule did not take effect within {WAIT:?}; rules: {:?}",
            s.rules()
        );
    }
    let took = rewritten.elapsed();
    for _ in 0..3 {
        let m = next_adjust(&rx, deadline(WAIT)).expect("more adjustments");
        assert_eq!(m["variant"], "v2", "the old version came back: {m}");
    }

    // A broken rewrite: reported with its location, the previous good version keeps running.
    std::fs::write(&path, BROKEN).expect("write broken");
    let st = poll(WAIT, || {
        s.rule("probe").filter(|r| r["state"] == "compile_error")
    });
    let st = st.unwrap_or_else(|| {
        finish(&stop);
        panic!("compile error not reported: {:?}", s.rules())
    });
    let loc = st["compile_error"]["location"].as_str().unwrap_or("");
    let (file, rest) = loc.split_once("probe.rhai:").unwrap_or(("", ""));
    let nums: Vec<&str> = rest.split(':').collect();
    assert!(
        !file.is_empty() || loc.starts_with("probe.rhai:"),
        "location {loc:?} does not name the file"
    );
    assert!(
        nums.len() == 2 && nums.iter().all(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
        "location {loc:?} is not file:line:col"
    );
    assert!(st["compile_error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        st["enabled"], true,
        "the previous version must keep running: {st}"
    );
    // Drain what may have been queued before, then require fresh v2 adjustments.
    while rx.try_recv().is_ok() {}
    for _ in 0..3 {
        let m = next_adjust(&rx, deadline(WAIT)).expect("adjustments after the broken rewrite");
        assert_eq!(m["variant"], "v2", "{m}");
    }

    finish(&stop);
    let (sent, acked) = worker.join().expect("traffic thread");
    assert!(sent.len() >= 12, "too little traffic: {}", sent.len());
    assert_eq!(acked, sent, "every sent event is acknowledged, in order");
    let ex = s.export(user).expect("export");
    assert_eq!(
        exported_ids(&ex),
        sent,
        "every acknowledged event is stored"
    );
    eprintln!("rule rewrite took effect after {took:?}");
}

#[test]
fn put_rule_validates_then_installs() {
    let s = Server::start(Opts::config(CONFIG));

    // Credentials: none → 401, a user token → not allowed.
    let r = s.put_raw("/v1/rules/uploaded", None, b"let x = 1;");
    assert_eq!(r.status, 401, "{}", r.body);
    let t = s.identify("put-user");
    let r = s.put_raw("/v1/rules/uploaded", Some(&t), b"let x = 1;");
    assert_eq!(r.status, 403, "{}", r.body);

    // Invalid source: 422 rule_compile_error with a location; nothing installed or written.
    let r = s.put_raw(
        "/v1/rules/uploaded",
        Some(ADMIN_TOKEN),
        b"if event.type == \"custom\" {\n    adjust(\"up\", \"yes\"\n}\n",
    );
    assert_eq!(
        (r.status, r.code()),
        (422, "rule_compile_error"),
        "{}",
        r.body
    );
    assert!(
        r.path().contains("uploaded.rhai:"),
        "compile error path should be file:line:col: {}",
        r.body
    );
    assert!(
        s.rule("uploaded").is_none(),
        "an invalid rule was installed"
    );
    assert!(
        !s.scripts.join("uploaded.rhai").exists(),
        "an invalid rule was written"
    );

    // Valid source: installed and active at once, and it runs.
    let src = "if event.type == \"custom\" && event.props.name == \"go\" {\n    adjust(\"uploaded\", \"yes\", #{ via: \"put\" });\n}\n";
    let r = s.put_raw("/v1/rules/uploaded", Some(ADMIN_TOKEN), src.as_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["state"], "active", "{}", r.body);
    assert_eq!(r.json["name"], "uploaded", "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(s.scripts.join("uploaded.rhai")).expect("rule file"),
        src
    );
    let mut ws = s.ws_connect(&t);
    ws.send_events(vec![custom(&eid("go"), "go", Value::Null)]);
    let m = ws
        .wait_adjust("uploaded", deadline(WAIT))
        .unwrap_or_else(|| panic!("the uploaded rule did not run; seen {:?}", ws.seen));
    assert_eq!(m["variant"], "yes");
    assert_eq!(m["params"], json!({"via": "put"}));
    let st = s.rule("uploaded").expect("listed");
    assert_eq!(st["state"], "active", "{st}");

    // An invalid name is refused.
    let r = s.put_raw("/v1/rules/Bad%20Name", Some(ADMIN_TOKEN), src.as_bytes());
    assert_eq!(
        (r.status, r.code()),
        (422, "invalid_rule_name"),
        "{}",
        r.body
    );
}
