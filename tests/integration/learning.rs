//! The learning loop on a real server: the behaviour simulator (the `trimtab-sim` binary,
//! over real WebSockets) plays an audience against a bandit slot; every decision is logged and
//! absorbed; a click model is trained from the server's own log on demand, promoted and served
//! to rules (`predict`); a corrupt model file dropped into the registry is refused while the
//! previous model keeps serving.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const CONFIG: &str = r#"
# Traffic as fast as the test can send it, a token per simulated visitor from one address:
# no rate limits.
[rate]
user_per_min = 0
anonymous_per_min = 0

[learn]
retrain_every_s = 0
min_rows = 100
check_every_s = 1

[delivery]
cap_per_session = 0
cap_per_user = 0
"#;

/// A rule that shows whether `predict` has a model: slot `probe` gets `scored` or `none`.
const PROBE: &str = r#"
if event.type == "custom" && event.props.name == "probe" {
    let p = predict("click", "cta", "urgent");
    if p >= 0.0 && p <= 1.0 { adjust("probe", "scored"); } else { adjust("probe", "none"); }
}
"#;

fn probe(s: &Server, user: &str) -> String {
    s.post_ok(
        WRITE_KEY,
        vec![for_user(custom(&eid("probe"), "probe", json!({})), user)],
    );
    let ex = s.export(user).expect("export");
    ex["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["slot"] == "probe")
        .map(|d| d["variant"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no probe decision: {ex}"))
}

fn models(s: &Server) -> Vec<Value> {
    let r = s.get("/v1/models", Some(ADMIN_TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json["models"].as_array().unwrap().clone()
}

#[test]
fn simulated_audience_trains_a_served_model_and_a_corrupt_file_is_refused() {
    let s = Server::start(Opts::config(CONFIG).script("probe", PROBE));
    let def = json!({"candidates": ["control", "urgent", "social", "detailed"],
                     "window_ms": 1000, "holdout": 0.1});
    let r = s.put_raw(
        "/v1/bandits/cta",
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // The trainer picks the new slot up within `check_every_s`.
    let m = poll(Duration::from_secs(10), || {
        let m = models(&s);
        (m.len() == 1).then_some(m)
    })
    .unwrap_or_else(|| panic!("{:?}", models(&s)));
    assert_eq!(m[0]["name"], "click-cta");
    assert!(m[0]["version"].is_null());
    assert_eq!(m[0]["status"], "untrained");
    assert_eq!(probe(&s, "probe-before"), "none");
    // Too few rows: a training is skipped, with the reason.
    let r = s.post_raw("/v1/models/retrain", Some(ADMIN_TOKEN), b"");
    assert_eq!(r.status, 202);
    let skipped = poll(Duration::from_secs(20), || {
        let m = models(&s);
        (m[0]["last_training"]["outcome"] == "skipped").then(|| m[0].clone())
    })
    .expect("a skipped training");
    assert!(skipped["last_training"]["reason"]
        .as_str()
        .unwrap()
        .contains("min_rows"));

    // The audience: 240 users over real WebSockets, decided by the bandit.
    let out = std::process::Command::new(sim_bin())
        .args(["--url", &s.base, "--users", "240", "--seed", "3"])
        .args(["--concurrency", "8", "--speed", "0", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sum["decisions"], 240, "{sum}");
    assert_eq!(sum["errors"].as_object().map_or(0, |e| e.len()), 0, "{sum}");
    assert_eq!(sum["sources"]["bandit"], 240, "{sum}");
    // Every decision is absorbed once its window has closed; clicks match the simulator's.
    let st = poll(Duration::from_secs(20), || {
        let st = s.get("/v1/bandits/cta", Some(ADMIN_TOKEN)).json;
        (st["version"] == 240 && st["pending"] == 0).then_some(st)
    })
    .unwrap_or_else(|| panic!("{}", s.get("/v1/bandits/cta", Some(ADMIN_TOKEN)).body));
    let rewarded: u64 = (0..4)
        .map(|i| st["arms"][i]["rewarded"].as_u64().unwrap())
        .sum();
    assert_eq!(rewarded, sum["clicks"].as_u64().unwrap(), "{st}");
    let holdout = st["groups"]["holdout"]["decisions"].as_u64().unwrap();
    assert!(holdout > 0 && holdout < 80, "{st}");

    // Train from the server's own log: the first model is promoted and served to rules.
    let r = s.post_raw("/v1/models/retrain", Some(ADMIN_TOKEN), b"");
    assert_eq!(r.status, 202);
    let m = poll(Duration::from_secs(60), || {
        let m = models(&s);
        (m[0]["last_training"]["outcome"] == "promoted").then(|| m[0].clone())
    })
    .unwrap_or_else(|| panic!("no promoted model: {:?}", models(&s)));
    assert_eq!(m["version"], 1, "{m}");
    assert_eq!(m["status"], "serving");
    assert_eq!(
        m["card"]["calibration"].as_array().unwrap().len(),
        10,
        "{m}"
    );
    assert_eq!(m["card"]["data"]["rows"], 240, "{m}");
    assert!(m["card"]["metrics"]["auc"].is_number(), "{m}");
    let dir = s.models().join("click-cta");
    assert!(dir.join("v1.safetensors").exists() && dir.join("v1.json").exists());
    assert_eq!(probe(&s, "probe-after"), "scored");

    // A corrupt v2 made CURRENT is refused; v1 keeps serving.
    std::fs::write(dir.join("v2.safetensors"), b"not a safetensors file").unwrap();
    let mut card: Value =
        serde_json::from_slice(&std::fs::read(dir.join("v1.json")).unwrap()).unwrap();
    card["version"] = 2.into();
    std::fs::write(dir.join("v2.json"), card.to_string()).unwrap();
    std::fs::write(dir.join("CURRENT"), "2\n").unwrap();
    let refused = poll(Duration::from_secs(20), || {
        let m = models(&s);
        m[0]["error"].is_object().then(|| m[0].clone())
    })
    .unwrap_or_else(|| panic!("corrupt model not refused: {:?}", models(&s)));
    assert_eq!(refused["error"]["code"], "model_corrupt", "{refused}");
    assert_eq!(refused["error"]["version"], 2);
    assert_eq!(refused["version"], 1, "v1 still serves: {refused}");
    assert_eq!(probe(&s, "probe-corrupt"), "scored");
    let metrics = s.get("/metrics", None).body;
    assert!(
        metrics.contains("trimtab_model_predictions_total{model=\"click-cta\",result=\"scored\"}"),
        "{metrics}"
    );
    // Back to the good version: served again without the error.
    std::fs::write(dir.join("CURRENT"), "1\n").unwrap();
    poll(Duration::from_secs(20), || {
        let m = models(&s);
        (m[0]["error"].is_null() && m[0]["version"] == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}", models(&s)));
}
