//! The simulator (`trimtab_sim`) against the real server: a seeded synthetic audience streams its
//! behaviour over real WebSockets, gets decisions for the `cta` slot from an experiment (some
//! pushed by a rule over the socket, the rest from `POST /v1/decide`), and reports impressions,
//! clicks and conversions. The server's own records must agree with the simulator's.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use trimtab_sim::online::{run, OnlineConfig};

use crate::support::*;

/// Afternoon and evening visitors get the slot pushed on their page view; the experiment on
/// the slot replaces the rule's variant with the user's arm.
const RULE: &str = r#"
if event.type == "page_view" && user.hour() >= 12 {
    adjust("cta", "urgent", #{});
}
"#;

fn events_of<'a>(ex: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    ex["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["type"] == kind)
}

#[test]
fn simulated_audience_is_acknowledged_decided_and_counted() {
    let s = Server::start(
        // The simulator mints a token per visitor, all from one address, and at speed 0 sends
        // a visitor's whole session at once: no rate limits.
        Opts::config(
            "[delivery]\ncap_per_session = 0\ncap_per_user = 0\n\
             [rate]\nanonymous_per_min = 0\nuser_per_min = 0\n",
        )
        .script("sim_push", RULE),
    );
    let def = json!({
        "slot": "cta",
        "primary_metric": "click_through",
        "variants": [
            {"name": "control", "weight": 1}, {"name": "urgent", "weight": 1},
            {"name": "social", "weight": 1}, {"name": "detailed", "weight": 1}
        ]
    });
    let r = s.put_raw(
        "/v1/experiments/cta-copy",
        Some(ADMIN_TOKEN),
        def.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let cfg = OnlineConfig {
        url: s.base.clone(),
        users: 60,
        seed: 5,
        concurrency: 4,
        speed: 0.0,
        timeout: Duration::from_secs(10),
        ..OnlineConfig::default()
    };
    let rep = run(&cfg).expect("the simulation runs");
    let sm = &rep.summary;
    assert_eq!(
        (sm.users, sm.users_completed, sm.decisions),
        (60, 60, 60),
        "{sm:#?}"
    );
    assert!(sm.errors.is_empty(), "{:?}", sm.errors);
    assert_eq!(sm.events_sent, sm.events_acked);
    assert!(sm.events_sent > 60 * 10, "{}", sm.events_sent);
    assert!(sm.pushed > 0 && sm.pushed < 60, "pushed {}", sm.pushed);

    // The server's records, user by user.
    let mut server_clicks = 0;
    for (u, d) in rep.users.iter().zip(rep.decisions_by_user()) {
        let d = d.unwrap_or_else(|| panic!("user {} got no decision", u.index));
        assert!(u.decided && u.failure.is_none(), "{u:?}");
        assert_eq!(u.events_sent, u.events_acked, "{u:?}");
        let ex = s.export(&d.user).expect("export");
        assert_eq!(exported_ids(&ex).len(), u.events_sent, "every event stored");
        assert!(
            ex["decisions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == d.decision_id.as_str()),
            "the decision shown is stored: {d:?}"
        );
        assert_eq!(d.experiment.as_deref(), Some("cta-copy"), "{d:?}");
        assert_eq!(d.propensity, 0.25, "{d:?}");
        assert!(d.variant_index.is_some());
        let cta_clicks = events_of(&ex, "click")
            .filter(|e| e["props"]["decision"] == d.decision_id.as_str())
            .count();
        assert_eq!(cta_clicks, usize::from(d.clicked), "{d:?}");
        assert_eq!(events_of(&ex, "click").count(), u.clicks_sent);
        assert_eq!(events_of(&ex, "impression").count(), 1);
        assert_eq!(
            events_of(&ex, "conversion").count(),
            usize::from(d.converted)
        );
        server_clicks += cta_clicks as u64;
        // The server saw the simulated context.
        let ctx = &ex["state"]["context"];
        assert_eq!(ctx["device"], d.device.name(), "{ctx}");
        assert_eq!(ctx["hour"], d.hour, "{ctx}");
    }
    assert_eq!(server_clicks, sm.clicks);

    // The experiment counted every user once, per arm as the simulator saw it.
    let res = s.get("/v1/experiments/cta-copy/results", Some(ADMIN_TOKEN));
    assert_eq!(res.status, 200, "{}", res.body);
    let mut exposed = BTreeMap::new();
    for a in res.json["arms"].as_array().unwrap() {
        exposed.insert(
            a["arm"].as_str().unwrap().to_string(),
            a["exposed"].as_u64().unwrap(),
        );
    }
    for (name, v) in &sm.variants {
        assert_eq!(
            exposed.get(name).copied().unwrap_or(0),
            v.shows,
            "{name}: {}",
            res.body
        );
    }

    // The summary adds up.
    let shows: u64 = sm.variants.values().map(|v| v.shows).sum();
    let clicks: u64 = sm.variants.values().map(|v| v.clicks).sum();
    assert_eq!((shows, clicks), (sm.decisions, sm.clicks));
    assert!((sm.click_rate - sm.clicks as f64 / 60.0).abs() < 1e-12);
    assert!(sm.expected_reward <= sm.oracle_reward && sm.uniform_reward <= sm.oracle_reward);
    assert!((sm.regret - (sm.oracle_reward - sm.expected_reward)).abs() < 1e-9);
    assert!((sm.regret - sm.regret_first_half - sm.regret_second_half).abs() < 1e-9);
    let users_by_type: u64 = sm.types.values().map(|t| t.users).sum();
    assert_eq!(users_by_type, 60);
    // An even split is uniform random: its expected reward is near the uniform one.
    let per = (sm.expected_reward - sm.uniform_reward).abs() / 60.0;
    assert!(per < 0.08, "{sm:#?}");
    assert!(sm.elapsed_s > 0.0 && sm.users_per_s > 0.0);
}
