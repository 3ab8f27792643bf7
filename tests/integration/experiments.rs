//! Experiments end to end: a definition uploaded over the admin API (and one from a file) takes
//! over a slot; users are assigned deterministically; impressions of its decisions expose them;
//! clicks on its content are the click-through metric; results come from the sufficient
//! statistics and recommend the better arm. Plus the global holdout and `POST /v1/stats/analyze`.

use serde_json::{json, Value};

use crate::support::*;

const RULE: &str = r#"
    if event.type == "custom" && event.props.name == "go" {
        adjust("offer", "discount", #{ code: "RULE" });
    }
    // Rules can read the user's arm.
    if event.type == "custom" && event.props.name == "which" {
        adjust("probe", "arm-" + experiment("offer-test"));
    }
"#;

fn put_json(s: &Server, path: &str, v: &Value) -> Resp {
    s.put_raw(path, Some(ADMIN_TOKEN), v.to_string().as_bytes())
}

fn impression(id: &str, slot: &str, variant: &str, decision: &str) -> Value {
    let mut e = custom(id, "x", json!({}));
    e["type"] = "impression".into();
    e["props"] = json!({"slot": slot, "variant": variant, "decision": decision});
    e
}

fn click_on(id: &str, decision: &str) -> Value {
    let mut e = click(id, "offer-button");
    e["props"] = json!({ "decision": decision });
    e
}

/// Runs one user through: trigger, see the decision, impression, maybe a click.
/// Returns (arm, variant).
fn run_user(s: &Server, user: &str, click_if: impl Fn(&str) -> bool) -> (String, String) {
    s.post_ok(
        WRITE_KEY,
        vec![for_user(custom(&eid("go"), "go", json!({})), user)],
    );
    let ex = s.export(user).expect("export");
    let d = ex["decisions"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["experiment"] == "offer-test"))
        .unwrap_or_else(|| panic!("no experiment decision for {user}: {ex}"))
        .clone();
    let (id, arm, variant) = (
        d["id"].as_str().unwrap().to_string(),
        d["arm"].as_str().unwrap().to_string(),
        d["variant"].as_str().unwrap().to_string(),
    );
    assert_eq!(d["propensity"], 0.5, "{d}");
    let mut evs = vec![for_user(
        impression(&eid("imp"), "offer", &variant, &id),
        user,
    )];
    if click_if(&arm) {
        evs.push(for_user(click_on(&eid("clk"), &id), user));
    }
    s.post_ok(WRITE_KEY, evs);
    (arm, variant)
}

#[test]
fn experiment_assigns_exposes_measures_and_recommends() {
    let s = Server::start(
        Opts::config("[delivery]\ncap_per_session = 0\ncap_per_user = 0\n").script("go", RULE),
    );
    // Invalid definitions are refused with the field named.
    let bad = put_json(
        &s,
        "/v1/experiments/offer-test",
        &json!({"slot": "offer", "primary_metric": "nope", "variants": [{"name": "default"}, {"name": "discount"}]}),
    );
    assert_eq!(
        (bad.status, bad.code(), bad.path()),
        (422, "invalid_experiment", "primary_metric"),
        "{}",
        bad.body
    );
    let def = json!({
        "description": "Does the discount beat the page's own offer box?",
        "slot": "offer",
        "primary_metric": "click_through",
        "guardrails": ["interaction_depth"],
        "variants": [
            {"name": "default", "weight": 1},
            {"name": "discount", "weight": 1, "params": {"code": "EXP10"}}
        ]
    });
    let r = put_json(&s, "/v1/experiments/offer-test", &def);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["live"], true);

    // 160 users; discount users click 3 in 4, default users 1 in 8.
    let mut arms = std::collections::HashMap::new();
    let mut a_discount_user = None;
    for i in 0..160 {
        let user = format!("exp-user-{i}");
        let (arm, variant) = run_user(&s, &user, |arm| {
            if arm == "discount" {
                i % 4 != 0
            } else {
                i % 8 == 0
            }
        });
        assert_eq!(
            arm, variant,
            "single-slot arms are named after their variant"
        );
        // Sticky: the same user keeps their arm.
        if i < 3 {
            s.post_ok(WRITE_KEY, vec![for_user(page_view(&eid("pv"), "/"), &user)]);
            let (again, _) = run_user(&s, &user, |_| false);
            assert_eq!(again, arm);
        }
        if i < 2 {
            s.post_ok(
                WRITE_KEY,
                vec![for_user(custom(&eid("which"), "which", json!({})), &user)],
            );
            let ex = s.export(&user).unwrap();
            let probe = ex["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["slot"] == "probe")
                .cloned();
            assert_eq!(
                probe.map(|d| d["variant"].clone()),
                Some(json!(format!("arm-{arm}"))),
                "{ex}"
            );
        }
        if arm == "discount" && a_discount_user.is_none() {
            a_discount_user = Some(user.clone());
        }
        *arms.entry(arm).or_insert(0u32) += 1;
    }
    assert_eq!(arms.len(), 2, "{arms:?}");
    // 50/50 within binomial noise (p < 0.001 bounds for n = 160).
    assert!(arms.values().all(|n| (59..=101).contains(n)), "{arms:?}");

    let res = s.get("/v1/experiments/offer-test/results", Some(ADMIN_TOKEN));
    assert_eq!(res.status, 200, "{}", res.body);
    let v = &res.json;
    assert_eq!(v["control"], "default", "{v}");
    let exposed: u64 = v["arms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["exposed"].as_u64().unwrap())
        .sum();
    assert_eq!(exposed, 160, "each user exposed once: {v}");
    assert!(v["srm_p_value"].as_f64().unwrap() > 0.001, "{v}");
    assert_eq!(v["srm_warning"], false);
    let ct = &v["metrics"]["click_through"];
    let b = ct["arms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "discount")
        .unwrap();
    let cmp = &b["vs_control"];
    for k in [
        "p_value",
        "ci",
        "relative_uplift",
        "relative_ci",
        "chance_to_beat_control",
        "expected_loss",
        "sequential_p_value",
        "adjusted_p_value",
    ] {
        assert!(!cmp[k].is_null(), "{k} missing: {cmp}");
    }
    assert!(cmp["p_value"].as_f64().unwrap() < 1e-6, "{cmp}");
    assert!(
        cmp["chance_to_beat_control"].as_f64().unwrap() > 0.99,
        "{cmp}"
    );
    let rate = b["rate"].as_f64().unwrap();
    assert!((0.6..0.9).contains(&rate), "discount click-through {rate}");
    assert_eq!(
        v["recommendation"]["action"], "ship",
        "{}",
        v["recommendation"]
    );
    assert_eq!(v["recommendation"]["arm"], "discount");
    assert!(!v["sequential_history"].as_array().unwrap().is_empty());
    // The experiment's params override the rule's: a user of the discount arm was shown the
    // discount with the experiment's code.
    let user = a_discount_user.expect("the discount arm has users (checked above)");
    let ex = s.export(&user).unwrap();
    let shown: Vec<&Value> = ex["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["variant"] == "discount")
        .collect();
    assert!(!shown.is_empty(), "{ex}");
    for d in shown {
        assert_eq!(d["params"]["code"], "EXP10", "{d}");
    }

    // Listed, and deletable.
    let list = s.get("/v1/experiments", Some(ADMIN_TOKEN));
    assert!(
        list.json["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "offer-test"),
        "{}",
        list.body
    );
    assert_eq!(
        s.delete("/v1/experiments/offer-test", Some(ADMIN_TOKEN))
            .status,
        204
    );
    assert_eq!(
        s.get("/v1/experiments/offer-test", Some(ADMIN_TOKEN))
            .status,
        404
    );
}

#[test]
fn experiment_files_hot_reload_and_global_holdout() {
    let s = Server::start(
        Opts::config(
            "[experiments]\nholdout = 0.3\n[delivery]\ncap_per_session = 0\ncap_per_user = 0\n",
        )
        .script("go", RULE),
    );
    // A definition file appears while the server runs.
    let dir = s.scripts.join("experiments");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("file-test.toml"),
        "slot = \"offer\"\nprimary_metric = \"conversion\"\n[[variants]]\nname = \"default\"\n[[variants]]\nname = \"discount\"\n",
    )
    .unwrap();
    poll(WAIT, || {
        let r = s.get("/v1/experiments", Some(ADMIN_TOKEN));
        r.json["experiments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == "file-test")
            .then_some(())
    })
    .expect("experiment file not loaded");
    // A broken file is reported with the field, and does not take the server down.
    std::fs::write(dir.join("broken.toml"), "slot = \"offer\"\n").unwrap();
    let problems = poll(WAIT, || {
        let r = s.get("/v1/experiments", Some(ADMIN_TOKEN));
        let p = r.json["problems"].as_array().unwrap().clone();
        (!p.is_empty()).then_some(p)
    })
    .expect("broken file not reported");
    assert_eq!(problems[0]["id"], "broken");

    // Global holdout: about 30% of users get no adjustment at all.
    let mut held = 0;
    for i in 0..100 {
        let user = format!("h-{i}");
        s.post_ok(
            WRITE_KEY,
            vec![for_user(custom(&eid("go"), "go", json!({})), &user)],
        );
        let ex = s.export(&user).unwrap();
        let none = ex["decisions"].as_array().unwrap().is_empty();
        assert_eq!(none, ex["state"]["holdout"] == true, "{ex}");
        held += usize::from(none);
    }
    assert!((15..=45).contains(&held), "held out: {held}");
    let res = s.get("/v1/experiments/global-holdout/results", Some(ADMIN_TOKEN));
    assert_eq!(res.status, 200, "{}", res.body);
    let arms = res.json["arms"].as_array().unwrap();
    let exposed: Vec<u64> = arms
        .iter()
        .map(|a| a["exposed"].as_u64().unwrap())
        .collect();
    assert_eq!(exposed.iter().sum::<u64>(), 100, "{}", res.body);
    assert_eq!(res.json["control"], "holdout");
}

#[test]
fn stats_analyze_endpoint() {
    let s = Server::start(Opts::config(""));
    let body = json!({"metric":"proportion","arms":[{"name":"control","n":10000,"conversions":500},{"name":"b","n":10000,"conversions":560}],"weights":[0.5,0.5],"alpha":0.05});
    let r = s.post_raw(
        "/v1/stats/analyze",
        Some(ADMIN_TOKEN),
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Two-proportion z-test, pooled SE: z = 0.006 / sqrt(0.053·0.947·2/10000) = 1.8938, p = 0.05826.
    let p = r.json["arms"][1]["vs_control"]["p_value"].as_f64().unwrap();
    assert!((p - 0.05826).abs() < 1e-4, "{p}");
    assert_eq!(r.json["srm_p_value"], 1.0);
    let bad = s.post_raw(
        "/v1/stats/analyze",
        Some(ADMIN_TOKEN),
        br#"{"metric":"proportion","arms":[{"name":"a","n":-1}]}"#,
    );
    assert_eq!((bad.status, bad.path()), (422, "arms[0].n"), "{}", bad.body);
    assert_eq!(
        s.post_raw("/v1/stats/analyze", None, body.to_string().as_bytes())
            .status,
        401
    );
}
