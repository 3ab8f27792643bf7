//! `rules_cost`: the three example rules (`scripts/*.rhai`) evaluated on a few typical events
//! the way the engine evaluates them (lazy views of the user's state and of the event), N
//! times each. Meant to run under callgrind, which counts instructions — repeatable on a busy
//! machine, unlike timings:
//!
//! ```text
//! cargo build --release --example rules_cost
//! valgrind --tool=callgrind --toggle-collect='*Rules::evaluate' --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/rules_cost scroll_on_article 2000
//! callgrind_annotate /tmp/cg.out | head   # instructions in evaluate ÷ 2000 = per event
//! ```
//! Cases: `scroll_on_article` (two rules do their full work and one adjusts), `custom` and
//! `hover_heartbeat` (typical events most rules return early on), `maps` (v1's input: the whole
//! user map built and copied into the evaluation, same event as `scroll_on_article`), and
//! `session`: N page visits as the SDK reports them (page view, scrolls, mouse summaries,
//! hovers, dwells, a click, …; 57 events each) through the whole decision step
//! (`decide::step`: features, attribution, assignment, rules, admission) — divide by 57·N.
//!
//! Remembered runs (`scripts/README.md`) are on as in the server, so the single-event cases
//! measure a replay after their first run; `MEMO=0` in the environment turns them off (every
//! evaluation runs Rhai). `session` is the one whose reads vary as they do in real traffic.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use trimtab::decide::view::{event_map, event_view, user_map, user_view, EventData};
use trimtab::event::{parse_batch, Event, Limits};
use trimtab::features::{FeatureConfig, UserState};
use trimtab::privacy::UserKey;
use trimtab::rules::{RuleInput, RuleLimits, Rules};

/// The rules' limits: the defaults, with remembered runs off when `MEMO=0`.
fn limits() -> RuleLimits {
    RuleLimits {
        memo: std::env::var("MEMO").map_or(true, |v| v != "0"),
        ..RuleLimits::default()
    }
}

fn parse(now: i64, events: serde_json::Value) -> Vec<Event> {
    let body = serde_json::to_vec(&json!({ "events": events })).expect("json");
    parse_batch(&body, &Limits::default(), now)
        .expect("valid events")
        .events
        .into_iter()
        .map(|i| i.event)
        .collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "scroll_on_article".into());
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let now = trimtab::now_ms();
    let consent = json!({"analytics": true, "personalization": true});
    // The user: the same 100 scrolls on an article page as `benches/engine.rs`.
    let history: Vec<_> = (0..100)
        .map(|i| {
            json!({"id": format!("e{i}"), "type": "scroll", "session": "s1", "ts": now,
            "props": {"depth": (i % 100) as f64}, "context": {"page": "/article/a", "hour": 20},
            "consent": consent})
        })
        .collect();
    let history = parse(now, json!(history));
    let cfg = FeatureConfig::default();
    let mut state = UserState::default();
    for e in &history {
        state.apply(e, &cfg);
    }
    if case == "session" {
        return session(now, n);
    }
    let event = match case.as_str() {
        "scroll_on_article" | "maps" => history[80].clone(),
        "custom" => parse(
            now,
            json!([{"id": "c", "type": "custom", "session": "s1", "ts": now,
            "props": {"name": "signup", "plan": "pro"}, "consent": consent}]),
        )
        .remove(0),
        "hover_heartbeat" => parse(
            now,
            json!([{"id": "h", "type": "hover", "session": "s1",
            "ts": now, "target": "pricing", "props": {"phase": "heartbeat", "duration_ms": 800},
            "consent": consent}]),
        )
        .remove(0),
        other => panic!("unknown case {other}"),
    };
    // RULES_DIR=dir: other rules (to measure the cost of a construct).
    let dir = std::env::var("RULES_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts").to_string());
    let rules = Rules::load(Path::new(&dir), limits()).expect("rules load");
    let key = UserKey([3; 16]);
    let event = Arc::new(event);
    let mut state = Some(state);
    let mut adjusts = 0;
    for _ in 0..n {
        let input = if case == "maps" {
            let st = state.as_ref().expect("state");
            RuleInput {
                user: rhai::Dynamic::from_map(user_map(&key, st, now)),
                event: rhai::Dynamic::from_map(event_map(&event)),
                now_ms: now,
                scorer: None,
                kind: None,
            }
        } else {
            // As the engine does: the state moves into an Arc for the evaluation and back.
            let shared = Arc::new(state.take().expect("state"));
            let input = RuleInput {
                user: user_view(&key, shared.clone(), now),
                event: event_view(EventData::Real(event.clone())),
                now_ms: now,
                scorer: None,
                kind: Some(event.kind().as_str()),
            };
            adjusts += rules.evaluate(&input).len();
            drop(input);
            state = Some(Arc::try_unwrap(shared).unwrap_or_else(|a| (*a).clone()));
            continue;
        };
        adjusts += rules.evaluate(&input).len();
    }
    println!("{case}: {n} evaluations, {adjusts} adjustments");
}

/// One page visit as the SDK reports it.
fn visit(now: i64, v: usize) -> Vec<Event> {
    let c = json!({"analytics": true, "personalization": true});
    let ctx = json!({"page": "/article/a", "device": "desktop", "hour": 20});
    let mut evs = Vec::new();
    let mut t = now;
    let mut push = |kind: &str, target: Option<&str>, props: serde_json::Value| {
        t += 250;
        let mut e = json!({"id": format!("v{v}-{}", evs.len()), "type": kind,
            "session": format!("s{v}"), "ts": t, "props": props, "context": ctx, "consent": c});
        if let Some(tg) = target {
            e["target"] = tg.into();
        }
        evs.push(e);
    };
    push("page_view", None, json!({"path": "/article/a"}));
    for i in 1..=19 {
        push(
            "scroll",
            None,
            json!({"depth": i as f64 * 5.0, "velocity": 12.5}),
        );
        if i % 2 == 0 {
            push(
                "mouse",
                None,
                json!({"speed": 120.0, "path_px": 300.0, "idle_ms": 40}),
            );
        }
    }
    for _ in 0..10 {
        push(
            "mouse",
            None,
            json!({"speed": 80.0, "path_px": 150.0, "idle_ms": 200}),
        );
    }
    push("hover", Some("product-image"), json!({"phase": "start"}));
    for d in [1000, 2000, 3000] {
        push(
            "hover",
            Some("product-image"),
            json!({"phase": "heartbeat", "duration_ms": d}),
        );
    }
    push(
        "hover",
        Some("product-image"),
        json!({"phase": "end", "duration_ms": 3400}),
    );
    for tg in ["reviews", "pricing"] {
        push("dwell", Some(tg), json!({"phase": "start"}));
        push(
            "dwell",
            Some(tg),
            json!({"phase": "end", "duration_ms": 4000, "visible_ratio": 0.8}),
        );
    }
    push("hover", Some("cta"), json!({"phase": "start"}));
    push(
        "hover",
        Some("cta"),
        json!({"phase": "end", "duration_ms": 900}),
    );
    push("click", Some("cta"), json!({}));
    push("visibility", None, json!({"visible": false}));
    push("visibility", None, json!({"visible": true}));
    push(
        "impression",
        Some("offer"),
        json!({"slot": "offer", "variant": "discount"}),
    );
    push("custom", None, json!({"name": "share", "network": "mail"}));
    push("custom", None, json!({"name": "newsletter"}));
    parse(t, json!(evs))
}

/// `session`: N visits of one user through the whole decision step.
fn session(now: i64, n: usize) {
    use trimtab::decide::{step, Input, LearnCache, NoRecords, Out, Snapshot};
    let dir = std::env::temp_dir().join(format!("rules-cost-{}", std::process::id()));
    let rules_dir = std::env::var("RULES_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/scripts").to_string());
    let rules = Rules::load(Path::new(&rules_dir), limits()).expect("rules load");
    let experiments = trimtab::experiments::Experiments::load(&dir.join("exp"), rules.clone(), 0.0)
        .expect("experiments");
    let bandits = trimtab::bandits::Bandits::load(&dir.join("bandits")).expect("bandits");
    let models = Arc::new(trimtab::learn::serving::Models::new());
    let metrics = Arc::new(trimtab::metrics::Metrics::new());
    let features = FeatureConfig::default();
    let delivery = trimtab::config::DeliveryConfig::default();
    let snap = Snapshot {
        features: &features,
        delivery: &delivery,
        rules: &rules,
        experiments: &experiments,
        bandits: &bandits,
        segments: None,
        models: &models,
        metrics: &metrics,
    };
    let key = UserKey([9; 16]);
    let mut state = UserState::default();
    let mut cache = LearnCache::default();
    let (mut events, mut decisions) = (0, 0);
    // Parsed before the clock starts: what is timed is the decision step alone.
    let visits: Vec<Vec<Arc<Event>>> = (0..n)
        .map(|v| {
            visit(now + v as i64 * 60_000, v)
                .into_iter()
                .map(Arc::new)
                .collect()
        })
        .collect();
    let started = std::time::Instant::now();
    for evs in visits {
        for ev in evs {
            let mut out = Out::default();
            let at = ev.received_ms;
            step(
                &snap,
                &key,
                &mut state,
                &mut cache,
                &mut NoRecords,
                Input::Event(&ev),
                at,
                &mut out,
            );
            events += 1;
            decisions += out.decisions.len();
        }
    }
    let took = started.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "session: {n} visits, {events} events, {decisions} decisions, {:.0} ns per event in decide::step",
        took.as_nanos() as f64 / events.max(1) as f64
    );
}
