//! Unit tests of the rules module: real files in temp dirs, the real notify watcher.

use super::*;
use std::fs;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

const SCROLL_OFFER: &str = include_str!("../../../scripts/scroll_offer.rhai");
const HOVER_REVIEW: &str = include_str!("../../../scripts/hover_review.rhai");
const CTA_BY_CONTEXT: &str = include_str!("../../../scripts/cta_by_context.rhai");

/// A complete user map in the documented layout; tests override parts with `with`.
const BASE_USER: &str = r#"{
  "id": "9f2c0a1b2c3d4e5f", "session": "s1", "sessions": 3, "events": 42,
  "consent": { "analytics": true, "personalization": true },
  "scroll": { "depth": 10.0, "max_depth": 20.0, "velocity": 1.5, "direction": "down" },
  "targets": {
    "product-image": { "hover_ms": 1200, "hover_count": 2, "hovering_ms": 0, "dwell_ms": 5000, "in_view_ms": 700, "clicks": 1 },
    "cta": { "hover_ms": 300, "hover_count": 1, "hovering_ms": 0, "dwell_ms": 0, "in_view_ms": 0, "clicks": 0 }
  },
  "sequence": ["page_view:/article/rust", "scroll", "hover:product-image", "click:cta"],
  "context": { "device": "desktop", "browser": "firefox", "viewport_w": 1280, "viewport_h": 800,
               "hour": 14, "tz_offset_min": 60, "language": "en" },
  "mouse": { "speed": 120.5, "path_px": 3400.0, "idle_ms": 200 },
  "adjustments": {},
  "page": "/article/rust", "local_hour": 14, "segment": ""
}"#;

fn json_map(json: &str) -> rhai::Map {
    rhai::Engine::new_raw()
        .parse_json(json, true)
        .expect("test JSON is valid")
}

/// `BASE_USER` with the top-level keys of `patch` replaced.
fn user_with(patch: &str) -> rhai::Map {
    let mut user = json_map(BASE_USER);
    for (k, v) in json_map(patch) {
        user.insert(k, v);
    }
    user
}

fn event(kind: &str, target: &str) -> rhai::Map {
    json_map(&format!(
        r#"{{"type": "{kind}", "target": "{target}", "session": "s1", "ts": 1700000000000, "props": {{}}}}"#
    ))
}

fn input(user: rhai::Map, event: rhai::Map) -> RuleInput {
    RuleInput {
        user: Dynamic::from_map(user),
        event: Dynamic::from_map(event),
        now_ms: 1_700_000_000_000,
        scorer: None,
        kind: None,
    }
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, src) in files {
        fs::write(dir.path().join(format!("{name}.rhai")), src).expect("write rule");
    }
    dir
}

fn load(dir: &tempfile::TempDir) -> Rules {
    Rules::load(dir.path(), RuleLimits::default()).expect("load rules")
}

fn one(name: &str, src: &str) -> (tempfile::TempDir, Rules) {
    let dir = dir_with(&[(name, src)]);
    let rules = load(&dir);
    (dir, rules)
}

fn status(rules: &Rules, name: &str) -> RuleStatus {
    rules.status(name).expect("rule exists")
}

/// Polls `cond` every 10 ms until it holds or 5 s pass.
fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Replaces a file the way editors do: write a temp file, then rename over the target.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("rhai.swp");
    fs::write(&tmp, content).expect("write temp");
    fs::rename(&tmp, path).expect("rename");
}

fn variants(out: &[AdjustRequest]) -> Vec<(String, String, String)> {
    out.iter()
        .map(|a| (a.rule.clone(), a.slot.clone(), a.variant.clone()))
        .collect()
}

fn run_src(src: &str, user: rhai::Map, ev: rhai::Map) -> (Vec<AdjustRequest>, RuleStatus) {
    let (_dir, rules) = one("t", src);
    let out = rules.evaluate(&input(user, ev));
    let st = status(&rules, "t");
    (out, st)
}

fn last_error(st: &RuleStatus) -> String {
    st.last_error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default()
}

// ---------------------------------------------------------------- example rules

#[test]
fn scroll_offer_fires_past_75_percent_on_article() {
    let (_d, rules) = one("scroll_offer", SCROLL_OFFER);
    assert_eq!(status(&rules, "scroll_offer").state, "active");
    let user = user_with(r#"{"scroll": {"depth": 80.0, "max_depth": 80.0}}"#);
    let out = rules.evaluate(&input(user, event("scroll", "")));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].slot, "offer");
    assert_eq!(out[0].variant, "discount");
    assert_eq!(out[0].params["code"], "READ15");
    assert!(out[0].params.contains_key("headline"));

    // Max depth counts even after scrolling back up; int depths work too.
    let user = user_with(r#"{"scroll": {"depth": 30, "max_depth": 76}}"#);
    assert_eq!(rules.evaluate(&input(user, event("scroll", ""))).len(), 1);
    // A non-article page that says it is an article through the event.
    let mut ev = event("scroll", "");
    ev.insert(
        "props".into(),
        json_map(r#"{"page_type": "article"}"#).into(),
    );
    let user = user_with(r#"{"page": "/p/42", "scroll": {"depth": 90.0, "max_depth": 90.0}}"#);
    assert_eq!(rules.evaluate(&input(user, ev)).len(), 1);
}

#[test]
fn scroll_offer_near_misses() {
    let (_d, rules) = one("scroll_offer", SCROLL_OFFER);
    let cases = [
        // 75% exactly is not past 75%.
        (
            r#"{"scroll": {"depth": 75.0, "max_depth": 75.0}}"#,
            "scroll",
        ),
        // Not an article.
        (
            r#"{"page": "/shop", "scroll": {"depth": 95.0, "max_depth": 95.0}}"#,
            "scroll",
        ),
        // Already showing the discount.
        (
            r#"{"adjustments": {"offer": "discount"}, "scroll": {"depth": 95.0, "max_depth": 95.0}}"#,
            "scroll",
        ),
        // Not a scroll/page_view event.
        (r#"{"scroll": {"depth": 95.0, "max_depth": 95.0}}"#, "tick"),
        // No scroll data and no page at all.
        (r#"{"scroll": {}, "page": null}"#, "scroll"),
    ];
    for (patch, kind) in cases {
        let out = rules.evaluate(&input(user_with(patch), event(kind, "")));
        assert!(out.is_empty(), "{patch} {kind}: {out:?}");
    }
    assert_eq!(status(&rules, "scroll_offer").failures, 0);
}

#[test]
fn hover_review_fires_on_long_ongoing_hover() {
    let (_d, rules) = one("hover_review", HOVER_REVIEW);
    let user = user_with(
        r#"{"targets": {"product-image": {"hover_ms": 0, "hovering_ms": 3500, "hover_count": 1}}}"#,
    );
    for kind in ["hover", "tick"] {
        let out = rules.evaluate(&input(user.clone(), event(kind, "product-image")));
        assert_eq!(
            variants(&out),
            [(
                "hover_review".into(),
                "product-detail".into(),
                "review".into()
            )],
            "{kind}"
        );
        assert!(out[0].params.contains_key("headline"));
    }
}

#[test]
fn hover_review_near_misses() {
    let (_d, rules) = one("hover_review", HOVER_REVIEW);
    let cases = [
        // Ongoing hover too short.
        (
            r#"{"targets": {"product-image": {"hovering_ms": 2500}}}"#,
            "tick",
        ),
        // Long total hover time, but not hovering now.
        (
            r#"{"targets": {"product-image": {"hover_ms": 10000, "hovering_ms": 0}}}"#,
            "hover",
        ),
        // Long hover on another target.
        (r#"{"targets": {"cta": {"hovering_ms": 9000}}}"#, "hover"),
        // Right hover, wrong event type.
        (
            r#"{"targets": {"product-image": {"hovering_ms": 5000}}}"#,
            "click",
        ),
        // Already showing the review.
        (
            r#"{"adjustments": {"product-detail": "review"}, "targets": {"product-image": {"hovering_ms": 5000}}}"#,
            "tick",
        ),
        // No targets at all.
        (r#"{"targets": null}"#, "tick"),
    ];
    for (patch, kind) in cases {
        let out = rules.evaluate(&input(user_with(patch), event(kind, "product-image")));
        assert!(out.is_empty(), "{patch} {kind}: {out:?}");
    }
    assert_eq!(status(&rules, "hover_review").failures, 0);
}

fn cta_user(hour: i64, sequence: &[&str]) -> rhai::Map {
    let seq: Vec<String> = sequence.iter().map(|s| format!("\"{s}\"")).collect();
    user_with(&format!(
        r#"{{"context": {{"hour": {hour}, "device": "desktop"}}, "local_hour": {hour}, "sequence": [{}]}}"#,
        seq.join(",")
    ))
}

#[test]
fn cta_by_context_branches() {
    let (_d, rules) = one("cta_by_context", CTA_BY_CONTEXT);
    let hesitant = [
        "page_view:/pricing",
        "hover:cta",
        "scroll",
        "hover:pricing",
        "hover:cta",
        "scroll",
    ];
    let quick = ["page_view:/product", "scroll", "click:cta", "scroll"];
    let calm = ["page_view:/", "scroll", "scroll"];
    let cases: [(i64, &[&str], &str, Option<&str>); 8] = [
        (20, &hesitant, "hover", Some("reassure")),
        (23, &hesitant, "scroll", Some("reassure")),
        (11, &quick, "click", Some("fast-checkout")),
        (7, &calm, "scroll", Some("morning")),
        // Hesitant in the morning: not reassure, but morning.
        (8, &hesitant, "hover", Some("morning")),
        // Near misses: quick responder at night, hesitant at 17:00, nothing at 3 am.
        (22, &quick, "click", None),
        (17, &hesitant, "hover", None),
        (3, &calm, "scroll", None),
    ];
    for (hour, seq, kind, want) in cases {
        let out = rules.evaluate(&input(cta_user(hour, seq), event(kind, "cta")));
        let got: Vec<&str> = out.iter().map(|a| a.variant.as_str()).collect();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{hour} {seq:?}");
        if let Some(a) = out.first() {
            assert_eq!(a.slot, "cta");
            assert!(a.params.contains_key("button"));
        }
    }
    // A click among the hovers means not hesitant, and an old click (not in the last 3) at
    // work hours is not a quick responder.
    let mixed = [
        "hover:cta",
        "hover:cta",
        "click:pricing",
        "hover:cta",
        "scroll",
        "scroll",
        "scroll",
    ];
    assert!(rules
        .evaluate(&input(cta_user(20, &mixed), event("hover", "cta")))
        .is_empty());
    assert!(rules
        .evaluate(&input(cta_user(14, &mixed), event("scroll", "")))
        .is_empty());
    // Not evaluated on ticks; not pushed again when already shown; unknown hour: nothing.
    assert!(rules
        .evaluate(&input(cta_user(7, &calm), event("tick", "")))
        .is_empty());
    // A page view re-evaluates it (a first-paint decision may have raced the page's events).
    let out = rules.evaluate(&input(cta_user(7, &calm), event("page_view", "")));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].variant, "morning");
    let mut shown = cta_user(7, &calm);
    shown.insert(
        "adjustments".into(),
        json_map(r#"{"cta": "morning"}"#).into(),
    );
    assert!(rules
        .evaluate(&input(shown, event("scroll", "")))
        .is_empty());
    let mut unknown = cta_user(7, &calm);
    unknown.remove("context");
    unknown.remove("local_hour");
    assert!(rules
        .evaluate(&input(unknown, event("scroll", "")))
        .is_empty());
    assert_eq!(status(&rules, "cta_by_context").failures, 0);
}

/// The decision of `cta_by_context` as first written (every count computed up front, one
/// if/else chain over hour ranges); the shipped script orders its work to compute less and
/// must decide exactly the same.
const CTA_REFERENCE: &str = r#"
const ON = ["click", "hover", "scroll", "page_view", "decide"];
if event.type == "decide" && event.props.slot != "cta" { return; }
let hesitant_hovers = user.seq_count_last(8, "hover:cta") + user.seq_count_last(8, "hover:pricing");
let clicks = user.seq_count_last(8, "click");
let clicked_lately = user.seq_count_last(3, "click") > 0;
let hour = user.hour();
let variant = "";
if hesitant_hovers >= 3 && clicks == 0 && hour >= 18 && hour <= 23 { variant = "reassure"; }
else if clicked_lately && hour >= 9 && hour < 18 { variant = "fast-checkout"; }
else if hour >= 6 && hour < 12 { variant = "morning"; }
if variant != "" && user.showing("cta") != variant { adjust("cta", variant); }
"#;

#[test]
fn cta_by_context_decides_like_its_reference_for_every_hour_and_sequence() {
    let (_d, shipped) = one("cta_by_context", CTA_BY_CONTEXT);
    let (_e, reference) = one("cta_reference", CTA_REFERENCE);
    let entries = [
        "hover:cta",
        "hover:pricing",
        "click:cta",
        "scroll",
        "hover:x",
    ];
    // Every sequence of up to 9 entries from a small alphabet is too many; a deterministic
    // walk through lengths 0..=9 with varied mixes covers each branch's edges (3 hesitant
    // hovers, a click at position 3 vs 4 from the end, sequences shorter than 8).
    let mut seqs: Vec<Vec<&str>> = vec![
        vec![],
        vec!["hover:cta", "hover:pricing", "hover:cta"],
        vec![
            "click:cta",
            "hover:cta",
            "hover:cta",
            "hover:pricing",
            "scroll",
        ],
        vec![
            "click:cta",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "hover:cta",
            "hover:cta",
            "hover:cta",
        ],
        vec!["hover:cta", "hover:cta", "click:x", "hover:pricing"],
        vec![
            "hover:cta",
            "hover:pricing",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "scroll",
            "hover:cta",
        ],
    ];
    for len in 1..=9usize {
        for seed in 0..40usize {
            let seq = (0..len)
                .map(|i| entries[(seed * 7 + i * (seed % 5 + 1) + i * i) % entries.len()])
                .collect();
            seqs.push(seq);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for hour in -1..=23i64 {
        for seq in &seqs {
            for kind in ["hover", "scroll", "click"] {
                let run = |rules: &Rules| -> Vec<String> {
                    let out = rules.evaluate(&input(cta_user(hour, seq), event(kind, "cta")));
                    out.into_iter().map(|a| a.variant).collect()
                };
                let (a, b) = (run(&shipped), run(&reference));
                assert_eq!(a, b, "hour {hour}, sequence {seq:?}, event {kind}");
                seen.extend(a);
            }
        }
    }
    // The walk reached every branch.
    let all: std::collections::BTreeSet<String> = ["fast-checkout", "morning", "reassure"]
        .map(String::from)
        .into();
    assert_eq!(seen, all);
    assert_eq!(status(&shipped, "cta_by_context").failures, 0);
    assert_eq!(status(&reference, "cta_reference").failures, 0);
}

#[test]
fn shipped_scripts_compile() {
    let dir = dir_with(&[
        ("scroll_offer", SCROLL_OFFER),
        ("hover_review", HOVER_REVIEW),
        ("cta_by_context", CTA_BY_CONTEXT),
    ]);
    let rules = load(&dir);
    let st = rules.statuses();
    let names: Vec<&str> = st.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["cta_by_context", "hover_review", "scroll_offer"]);
    assert!(
        st.iter().all(|s| s.state == "active" && s.enabled),
        "{st:?}"
    );
    // All three on one event: those that react to scrolls run (hover_review declares
    // `ON = ["hover", "tick"]` and is not run at all), none fails, results in name order.
    let user = user_with(
        r#"{"scroll": {"depth": 90.0, "max_depth": 90.0}, "context": {"hour": 7},
            "targets": {"product-image": {"hovering_ms": 4000}}}"#,
    );
    let out = rules.evaluate(&input(user, event("scroll", "")));
    let got: Vec<&str> = out.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(got, ["cta_by_context", "scroll_offer"]);
    let runs: Vec<(String, u64, u64)> = rules
        .statuses()
        .into_iter()
        .map(|s| (s.name, s.runs, s.failures))
        .collect();
    assert_eq!(
        runs,
        [
            ("cta_by_context".into(), 1, 0),
            ("hover_review".into(), 0, 0),
            ("scroll_offer".into(), 1, 0)
        ]
    );
    assert_eq!(
        status(&rules, "hover_review").on,
        Some(vec!["hover".to_string(), "tick".to_string()])
    );
}

#[test]
fn on_lists_the_events_a_rule_runs_for() {
    let src = r#"const ON = ["hover", "tick"]; adjust("s", "v");"#;
    let (_d, rules) = one("t", src);
    for (kind, runs) in [
        ("hover", true),
        ("tick", true),
        ("scroll", false),
        ("decide", false),
    ] {
        let out = rules.evaluate(&input(user_with("{}"), event(kind, "")));
        assert_eq!(!out.is_empty(), runs, "{kind}");
    }
    assert_eq!(status(&rules, "t").runs, 2);
    // Without ON a rule runs for every event; an input without a type runs every rule.
    let (_d, all) = one("t", r#"adjust("s", "v");"#);
    assert_eq!(
        all.evaluate(&input(user_with("{}"), event("scroll", "")))
            .len(),
        1
    );
    let (_d, rules) = one("t", src);
    let mut i = input(user_with("{}"), rhai::Map::new());
    assert_eq!(rules.evaluate(&i).len(), 1, "no event type known: runs");
    i.kind = Some("scroll");
    assert!(rules.evaluate(&i).is_empty(), "the caller's kind wins");
    // A bad ON is a compile error that names the problem.
    for (bad, why) in [
        (r#"const ON = "hover";"#, "array of event types"),
        (r#"const ON = ["hover", 3];"#, "strings"),
        (
            r#"const ON = ["hovr"];"#,
            "\"hovr\", which is not an event type",
        ),
    ] {
        let (_d, rules) = one("b", bad);
        let e = status(&rules, "b").compile_error.expect("compile error");
        assert!(e.message.contains(why), "{bad}: {}", e.message);
    }
}

// ---------------------------------------------------------------- script API

#[test]
fn helpers_read_the_user_map() {
    let src = r#"
        let a = [];
        a.push(user.hover_ms("product-image"));     // 1200 + 0
        a.push(hover_ms(user, "product-image"));    // function-call style
        a.push(user.hovering_ms("product-image"));
        a.push(user.dwell_ms("product-image"));     // 5000 + 700
        a.push(user.clicks("product-image"));
        a.push(user.seen("product-image"));
        a.push(user.seen("cta"));
        a.push(user.hover_count("product-image"));
        a.push(user.hover_ms("nope"));
        a.push(user.clicks("nope"));
        a.push(user.seen("nope"));
        a.push(user.seq_last(2));
        a.push(user.seq_last(100).len());
        a.push(user.seq_last(-1).len());
        a.push(user.seq_contains("click:cta"));
        a.push(user.seq_contains("click:nope"));
        a.push(user.seq_ends_with(["hover:product-image", "click:cta"]));
        a.push(user.seq_ends_with(["scroll", "click:cta"]));
        a.push(user.seq_ends_with([]));
        a.push(user.seq_count("click:"));
        a.push(user.seq_count("s"));
        a.push(user.hour());
        a.push(user.is_mobile());
        a.push(user.showing("cta"));
        a.push(now_ms);
        a.push(user.on_page("/article"));
        a.push(user.on_page("/article/rust/more"));
        a.push(user.scrolled_past(19.9));   // max_depth 20
        a.push(user.scrolled_past(20));
        adjust("out", "v", #{ r: a });
    "#;
    let (out, st) = run_src(src, json_map(BASE_USER), event("tick", ""));
    assert_eq!(out.len(), 1, "{st:?}");
    assert_eq!(
        out[0].params["r"],
        r#"[1200, 1200, 0, 5700, 1, true, false, 2, 0, 0, false, ["hover:product-image", "click:cta"], 4, 0, true, false, true, false, true, 1, 1, 14, false, "", 1700000000000, true, false, true, false]"#
    );
}

#[test]
fn helpers_on_an_empty_user_give_zero_false_and_minus_one_hour() {
    let src = r#"
        let r = [user.hover_ms("x"), user.hovering_ms("x"), user.dwell_ms("x"), user.clicks("x"),
                 user.seen("x"), user.seq_last(3), user.seq_contains("a"), user.seq_ends_with(["a"]),
                 user.seq_count("a"), user.hour(), user.is_mobile(), user.showing("x"),
                 user.on_page("/"), user.scrolled_past(0), user.scrolled_past(-1.0)];
        adjust("out", "v", #{ r: r });
    "#;
    let (out, st) = run_src(src, rhai::Map::new(), rhai::Map::new());
    assert_eq!(out.len(), 1, "{st:?}");
    assert_eq!(
        out[0].params["r"],
        r#"[0, 0, 0, 0, false, [], false, false, 0, -1, false, "", false, false, true]"#
    );
    // Ongoing hover counts in hover_ms; mobile and local_hour fallback.
    let user = json_map(
        r#"{"targets": {"a": {"hover_ms": 100, "hovering_ms": 50.9}}, "context": {"device": "mobile"}, "local_hour": 21}"#,
    );
    let src =
        r#"adjust("o", "v", #{ h: user.hover_ms("a"), m: user.is_mobile(), t: user.hour() });"#;
    let (out, _) = run_src(src, user, rhai::Map::new());
    assert_eq!(out[0].params["h"], "150");
    assert_eq!(out[0].params["m"], "true");
    assert_eq!(out[0].params["t"], "21");
}

#[test]
fn adjust_params_become_strings() {
    let src =
        r#"adjust("slot-1", "Variant.A_2", #{ n: 3, f: 1.5, b: true, s: "<b>x</b>", u: () });"#;
    let (out, _) = run_src(src, rhai::Map::new(), rhai::Map::new());
    assert_eq!(out.len(), 1);
    let p = &out[0].params;
    assert_eq!(
        (
            p["n"].as_str(),
            p["f"].as_str(),
            p["b"].as_str(),
            p["s"].as_str(),
            p["u"].as_str()
        ),
        ("3", "1.5", "true", "<b>x</b>", "")
    );
    assert_eq!(out[0].rule, "t");
}

#[test]
fn adjust_rejects_bad_arguments_with_position() {
    let long = "x".repeat(65);
    let many: Vec<String> = (0..17).map(|i| format!("k{i}: {i}")).collect();
    let bad_calls = [
        r#"adjust("", "v");"#.to_owned(),
        r#"adjust("my slot", "v");"#.to_owned(),
        r#"adjust("s", "<script>");"#.to_owned(),
        r#"adjust("s", "");"#.to_owned(),
        format!(r#"adjust("{long}", "v");"#),
        format!("adjust(\"s\", \"v\", #{{ {} }});", many.join(", ")),
        r#"let t = ""; t.pad(513, "y"); adjust("s", "v", #{ t: t });"#.to_owned(),
        r#"adjust("s", "v", #{ "bad key": 1 });"#.to_owned(),
        "for i in 0..17 { adjust(\"s\", \"v\"); }".to_owned(),
        r#"adjust(1, "v");"#.to_owned(),
    ];
    for src in &bad_calls {
        let full = format!("adjust(\"ok\", \"fine\");\n{src}");
        let (out, st) = run_src(&full, rhai::Map::new(), rhai::Map::new());
        assert!(
            out.is_empty(),
            "partial adjustments of a failed run leak: {src}"
        );
        let err = st.last_error.expect("failure recorded");
        assert_eq!(err.line, Some(2), "{src}: {err:?}");
        assert!(err.location.ends_with("t.rhai:2:1") || err.location.contains("t.rhai:2:"));
        assert_eq!(st.failures, 1);
    }
    let (_, st) = run_src(
        r#"adjust("my slot", "v");"#,
        rhai::Map::new(),
        rhai::Map::new(),
    );
    let msg = last_error(&st);
    assert!(msg.starts_with("adjust(): invalid slot"), "{msg}");
}

#[test]
fn log_print_and_debug_do_not_fail() {
    let src = r#"log("hello"); log(42); print("p"); debug("d"); for i in 0..50 { log(i) } adjust("s", "v");"#;
    let (out, st) = run_src(src, rhai::Map::new(), rhai::Map::new());
    assert_eq!(out.len(), 1, "{st:?}");
}

#[test]
fn input_is_read_only_and_rules_are_isolated() {
    let dir = dir_with(&[
        ("a_mutate", r#"user.id = "hacked";"#),
        ("b_mutate", r#"user.targets.clear();"#),
        ("c_mutate", r#"user.sequence.push("x");"#),
        (
            "d_shadow",
            r#"let leaked = 1; let user = #{ id: "shadow" };"#,
        ),
        (
            "e_check",
            r#"if user.id == "9f2c0a1b2c3d4e5f" && user.sequence.len() == 4 && user.targets.len() == 2
                   && !is_def_var("leaked") { adjust("ok", "yes"); }"#,
        ),
    ]);
    let rules = load(&dir);
    let out = rules.evaluate(&input(json_map(BASE_USER), event("click", "")));
    assert_eq!(
        variants(&out),
        [("e_check".into(), "ok".into(), "yes".into())]
    );
    for name in ["a_mutate", "b_mutate", "c_mutate"] {
        let st = status(&rules, name);
        assert_eq!(
            st.failures, 1,
            "{name} must not be able to modify user: {st:?}"
        );
    }
    assert_eq!(status(&rules, "d_shadow").failures, 0);
}

#[test]
fn top_level_return_ends_a_rule_quietly() {
    let (out, st) = run_src(
        r#"if true { return; } adjust("s", "v");"#,
        rhai::Map::new(),
        rhai::Map::new(),
    );
    assert!(out.is_empty());
    assert_eq!((st.failures, st.runs), (0, 1));
}

// ---------------------------------------------------------------- sandbox

#[test]
fn eval_is_rejected_at_compile_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    for src in [r#"eval("1")"#, r#"let x = eval("adjust(\"s\", \"v\")");"#] {
        match rules.put("evil", src) {
            Err(RulesError::Compile { info }) => {
                assert_eq!(info.line, Some(1), "{info:?}");
            }
            other => panic!("eval accepted: {other:?}"),
        }
    }
    assert!(!dir.path().join("evil.rhai").exists());
}

#[test]
fn no_sleep_no_time_no_modules() {
    for src in [
        "sleep(10);",
        "sleep(0.5);",
        "let t = timestamp();",
        r#"let j = parse_json("{}");"#,
        "exit();",
    ] {
        let (_, st) = run_src(src, rhai::Map::new(), rhai::Map::new());
        assert_eq!(st.failures, 1, "{src} should not be callable: {st:?}");
        assert!(last_error(&st).contains("not found"), "{src}: {st:?}");
    }
    // `import` is not even syntax (no_module).
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    assert!(matches!(
        rules.put("imp", r#"import "x" as y;"#),
        Err(RulesError::Compile { .. })
    ));
}

#[test]
fn strict_variables_catch_typos_at_compile_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    match rules.put(
        "typo",
        "let a = 1;\nif usr.page == \"/\" { adjust(\"s\", \"v\"); }",
    ) {
        Err(RulesError::Compile { info }) => {
            assert_eq!((info.line, info.column), (Some(2), Some(4)), "{info:?}");
            assert!(info.location.ends_with("typo.rhai:2:4"), "{info:?}");
            assert!(info.message.contains("usr"), "{info:?}");
        }
        other => panic!("typo accepted: {other:?}"),
    }
}

#[test]
fn infinite_loop_hits_operation_limit_and_others_still_run() {
    let dir = dir_with(&[
        ("a_first", r#"adjust("a", "one");"#),
        ("b_spin", "let x = 0;\nloop {\n  x += 1;\n}"),
        ("c_last", r#"adjust("c", "three");"#),
    ]);
    let rules = load(&dir);
    let started = Instant::now();
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        variants(&out),
        [
            ("a_first".into(), "a".into(), "one".into()),
            ("c_last".into(), "c".into(), "three".into())
        ]
    );
    let st = status(&rules, "b_spin");
    let err = st.last_error.expect("failure recorded");
    assert_eq!(err.message, "operation limit exceeded", "{err:?}");
    assert!(err.line.is_some_and(|l| (2..=3).contains(&l)), "{err:?}");
    assert_eq!((st.failures, st.consecutive_failures), (1, 1));
}

#[test]
fn the_operation_limit_counts_each_run_on_its_own() {
    // Rhai's run-time state is kept between runs of a rule (its function cache); the count of
    // operations must start again at zero, or the tenth run of a rule using a tenth of the
    // limit would fail.
    let dir = dir_with(&[(
        "busy",
        "let x = 0;\nfor i in 0..300 {\n  x += i;\n}\nadjust(\"s\", `v${x}`);",
    )]);
    let limits = RuleLimits {
        max_operations: 2_000,
        ..RuleLimits::default()
    };
    let rules = Rules::load(dir.path(), limits).expect("load");
    for run in 0..20 {
        let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
        assert_eq!(
            variants(&out),
            [("busy".into(), "s".into(), "v44850".into())],
            "run {run}"
        );
    }
    assert_eq!(status(&rules, "busy").failures, 0);
}

#[test]
fn a_run_that_fails_inside_a_function_leaves_the_next_run_sound() {
    // The error unwinds out of a script function (and out of a nested call) midway; the kept
    // run-time state is rebuilt, and later runs resolve the same functions correctly.
    let src = r#"
fn pick(kind) {
    if kind == "boom" { throw "exploded in pick"; }
    inner(kind)
}
fn inner(kind) { kind + "-x" }
adjust("s", pick(event.type));
"#;
    let (_dir, rules) = one("f", src);
    for (i, kind) in ["a", "boom", "b", "boom", "boom", "c"]
        .into_iter()
        .enumerate()
    {
        let out = rules.evaluate(&input(rhai::Map::new(), event(kind, "")));
        if kind == "boom" {
            assert!(out.is_empty(), "run {i}: {out:?}");
        } else {
            assert_eq!(
                variants(&out),
                [("f".into(), "s".into(), format!("{kind}-x"))],
                "run {i}"
            );
        }
    }
    let st = status(&rules, "f");
    assert_eq!(st.failures, 3);
    assert!(last_error(&st).contains("exploded in pick"), "{st:?}");
}

#[test]
fn slow_loop_under_the_op_limit_hits_the_timeout() {
    let dir = dir_with(&[
        ("a_first", r#"adjust("a", "one");"#),
        // Each iteration builds a ~12 KB string: few operations, much time.
        (
            "b_slow",
            "let s = \"\";\nfor i in 0..1000000 {\n  s = \"x\";\n  s.pad(12000, \"y\");\n  s.replace(\"y\", \"z\");\n}",
        ),
        ("c_last", r#"adjust("c", "three");"#),
    ]);
    let limits = RuleLimits {
        max_operations: 50_000_000,
        timeout_ms: 30,
        ..RuleLimits::default()
    };
    let rules = Rules::load(dir.path(), limits).expect("load");
    let started = Instant::now();
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    assert_eq!(out.len(), 2, "{out:?}");
    let err = status(&rules, "b_slow")
        .last_error
        .expect("failure recorded");
    assert_eq!(err.message, "timeout after 30 ms", "{err:?}");
}

#[test]
fn size_limits_stop_runaway_growth() {
    let cases = [
        ("let s = \"x\"; loop { s += s; }", "size limit exceeded"),
        ("let s = \"\"; s.pad(100000, \"x\");", "size limit exceeded"),
        ("let a = []; loop { a.push(1); }", "size limit exceeded"),
        ("let a = []; a.pad(1000000, 0);", "size limit exceeded"),
        ("let a = [1]; loop { a += a; }", "size limit exceeded"),
        (
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            "size limit exceeded",
        ),
        (
            "let m = #{ a: #{} }; let i = 0; loop { m.a[`k${i}`] = i; i += 1; }",
            "size limit exceeded",
        ),
        (
            "let m = #{}; let i = 0; loop { m[`k${i}`] = #{ x: 1, y: [#{ z: 1 }] }; i += 1; }",
            "size limit exceeded",
        ),
        ("fn f(n) { f(n + 1) } f(0);", "call depth limit exceeded"),
        // Refused before the work: the output's size is computed first (256 MiB here).
        (
            "let s = \"\"; s.pad(16000, \"y\"); let t = s; s.replace(\"y\", t);",
            "replace() would make a string of 256000000 bytes",
        ),
        (
            "let s = \"\"; s.pad(16000, 'y'); let t = s; s.replace('y', t);",
            "replace() would make a string of 256000000 bytes",
        ),
        (
            "let s = \"\"; s.pad(10000, 'y'); s.replace(\"\", \"ab\");",
            "replace() would make a string of 30002 bytes",
        ),
        ("let s = \"x\"; loop { s += s; }", "Length of string"),
        (
            "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
            "Size of object map",
        ),
    ];
    for (src, want) in cases {
        let (_, st) = run_src(src, rhai::Map::new(), rhai::Map::new());
        let msg = last_error(&st);
        assert!(msg.contains(want), "{src}: {msg}");
    }
}

#[test]
fn replace_still_replaces_within_the_limit() {
    let (out, st) = run_src(
        r#"let s = "a-b-c"; s.replace("-", "_._"); let c = "x"; c.replace('x', "yy");
        let d = "aXa"; d.replace('X', 'Y'); let e = "ab"; e.replace("b", 'c');
        adjust("s", s + "-" + c + "-" + d + "-" + e);"#,
        rhai::Map::new(),
        rhai::Map::new(),
    );
    assert_eq!(st.failures, 0, "{st:?}");
    assert_eq!(out[0].variant, "a_._b_._c-yy-aYa-ac");
}

#[test]
fn deep_expressions_are_rejected_at_compile_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    let deep = format!("let x = {}1{};", "(".repeat(500), ")".repeat(500));
    assert!(matches!(
        rules.put("deep", &deep),
        Err(RulesError::Compile { .. })
    ));
    let big = "let x = 1;\n".repeat(MAX_SOURCE_BYTES / 10);
    assert!(matches!(
        rules.put("big", &big),
        Err(RulesError::Compile { .. })
    ));
}

#[test]
fn panics_are_caught_and_count_as_failures() {
    let dir = dir_with(&[
        ("a_panics", "let x = 1;\n__test_panic();"),
        ("b_fine", r#"adjust("b", "v");"#),
    ]);
    // A budget per event no panic exhausts: with RUST_BACKTRACE set (as in CI) the panic hook
    // symbolises a backtrace, which can take longer than the default 100 ms on a busy machine,
    // and then `b_fine` is rightly skipped for the budget — not what this test is about.
    let limits = RuleLimits {
        event_budget_ms: 60_000,
        ..RuleLimits::default()
    };
    let rules = Rules::load(dir.path(), limits).expect("load rules");
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(out.len(), 1);
    let st = status(&rules, "a_panics");
    assert_eq!(st.failures, 1);
    assert!(last_error(&st).contains("test panic"), "{st:?}");
    // The thread-local state was cleaned up: the next evaluation is normal.
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(variants(&out), [("b_fine".into(), "b".into(), "v".into())]);
}

// ---------------------------------------------------------------- failures and reload

#[test]
fn a_rule_failing_every_other_event_is_disabled_by_its_failure_rate() {
    let dir = dir_with(&[(
        "alternating",
        "if event.fail == true { throw \"bad input\" }\nadjust(\"a\", \"ok\");",
    )]);
    let rules = load(&dir);
    let run = |fail: bool| {
        let mut ev = rhai::Map::new();
        ev.insert("fail".into(), fail.into());
        rules.evaluate(&input(rhai::Map::new(), ev))
    };
    // 99 runs, 49 failed: never 5 in a row, and the window of 100 is not complete yet.
    for i in 0..99 {
        run(i % 2 == 1);
    }
    let st = status(&rules, "alternating");
    assert_eq!(
        (st.runs, st.failures, st.state),
        (99, 49, "active"),
        "{st:?}"
    );
    // The 100th run (a failure) closes the window at 50%: disabled, with the reason.
    run(true);
    let st = status(&rules, "alternating");
    assert_eq!((st.state, st.enabled), ("disabled", false), "{st:?}");
    assert_eq!(
        st.disabled_reason.as_deref(),
        Some("disabled: 50 of its last 100 runs failed (max_failure_percent 50); last: bad input at line 1")
    );
    assert!(run(false).is_empty(), "a disabled rule does not run");
}

#[test]
fn a_rule_failing_rarely_stays_enabled() {
    let dir = dir_with(&[(
        "rare",
        "if event.fail == true { throw \"bad input\" }\nadjust(\"a\", \"ok\");",
    )]);
    let rules = load(&dir);
    for i in 0..300 {
        let mut ev = rhai::Map::new();
        ev.insert("fail".into(), (i % 3 == 0).into());
        rules.evaluate(&input(rhai::Map::new(), ev));
    }
    let st = status(&rules, "rare");
    assert_eq!(
        (st.runs, st.failures, st.state),
        (300, 100, "active"),
        "{st:?}"
    );
}

#[test]
fn the_rules_budget_per_event_stops_and_skips_rules_without_blaming_them() {
    let dir = dir_with(&[
        ("a_first", r#"adjust("a", "ok");"#),
        ("b_slow", "let i = 0; loop { i += 1; }"),
        ("c_after", r#"adjust("c", "ok");"#),
    ]);
    let limits = RuleLimits {
        timeout_ms: 200,
        event_budget_ms: 30,
        max_operations: u64::MAX / 2,
        ..RuleLimits::default()
    };
    let rules = Rules::load(dir.path(), limits).expect("load");
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    // The first rule's adjustment stands; the slow one is stopped at the budget (30 ms, not
    // its own 200 ms deadline); the one after it is skipped.
    assert_eq!(
        variants(&out),
        [("a_first".into(), "a".into(), "ok".into())]
    );
    let slow = status(&rules, "b_slow");
    assert_eq!(
        (slow.runs, slow.failures, slow.budget_skips, slow.state),
        (0, 0, 1, "active"),
        "{slow:?}"
    );
    let after = status(&rules, "c_after");
    assert_eq!((after.runs, after.budget_skips), (0, 1), "{after:?}");
    assert_eq!(status(&rules, "a_first").budget_skips, 0);
}

#[test]
fn disabled_after_consecutive_failures_then_reenabled_when_file_changes() {
    let dir = dir_with(&[
        (
            "flaky",
            "let x = 1;\nif event.fail == true { loop {} }\nadjust(\"f\", \"ok\");",
        ),
        ("steady", r#"adjust("s", "ok");"#),
    ]);
    let rules = load(&dir);
    let _watcher = rules.watch().expect("watch");
    let fail = || {
        let mut ev = rhai::Map::new();
        ev.insert("fail".into(), true.into());
        rules.evaluate(&input(rhai::Map::new(), ev))
    };
    let ok = || rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));

    // A success resets the count.
    for _ in 0..4 {
        fail();
    }
    assert_eq!(status(&rules, "flaky").consecutive_failures, 4);
    assert_eq!(ok().len(), 2);
    assert_eq!(status(&rules, "flaky").consecutive_failures, 0);

    for _ in 0..5 {
        let out = fail();
        assert_eq!(variants(&out), [("steady".into(), "s".into(), "ok".into())]);
    }
    let st = status(&rules, "flaky");
    assert_eq!((st.state, st.enabled), ("disabled", false), "{st:?}");
    assert_eq!(
        st.disabled_reason.as_deref(),
        Some("disabled after 5 consecutive failures; last: operation limit exceeded at line 2")
    );
    assert_eq!(st.failures, 9);
    // Disabled: not run any more, even on input where it would succeed.
    assert_eq!(ok().len(), 1);
    assert_eq!(status(&rules, "flaky").runs, 10);

    // Editing the file re-enables it (watcher), counters are kept.
    replace_file(
        &dir.path().join("flaky.rhai"),
        "// fixed\nadjust(\"f\", \"ok\");",
    );
    assert!(
        wait_until(|| status(&rules, "flaky").state == "active"),
        "{:?}",
        status(&rules, "flaky")
    );
    let st = status(&rules, "flaky");
    assert!(st.enabled && st.disabled_reason.is_none() && st.last_error.is_none());
    assert_eq!(st.failures, 9);
    assert_eq!(ok().len(), 2);

    // Re-uploading also re-enables.
    for _ in 0..5 {
        rules.evaluate(&input(
            json_map(r#"{"x": 1}"#),
            json_map(r#"{"fail": true}"#),
        ));
    }
    rules
        .put(
            "flaky",
            "if event.fail == true { loop {} }\nadjust(\"f\", \"ok\");",
        )
        .expect("put");
    for _ in 0..5 {
        fail();
    }
    assert_eq!(status(&rules, "flaky").state, "disabled");
    rules.put("flaky", "adjust(\"f\", \"ok2\");").expect("put");
    assert_eq!(status(&rules, "flaky").state, "active");
    assert_eq!(ok().len(), 2);
}

#[test]
fn compile_error_keeps_previous_version_running() {
    let dir = dir_with(&[("rule", r#"adjust("s", "v1");"#)]);
    let rules = load(&dir);
    let _watcher = rules.watch().expect("watch");
    let path = dir.path().join("rule.rhai");
    replace_file(&path, "let ok = 1;\nlet broken = (1 + ;\n");
    assert!(wait_until(
        || status(&rules, "rule").state == "compile_error"
    ));
    let st = status(&rules, "rule");
    let info = st.compile_error.clone().expect("compile error");
    assert_eq!(info.line, Some(2), "{info:?}");
    assert!(info.column.is_some(), "{info:?}");
    let want = format!("{}:2:{}", path.display(), info.column.unwrap_or(0));
    assert_eq!(info.location, want);
    assert!(st.enabled, "previous version keeps running: {st:?}");
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(variants(&out), [("rule".into(), "s".into(), "v1".into())]);

    // Fixing the file installs the new version.
    replace_file(&path, r#"adjust("s", "v2");"#);
    assert!(wait_until(|| status(&rules, "rule").state == "active"));
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(out[0].variant, "v2");

    // A new file that never compiled: listed, not run.
    fs::write(dir.path().join("newbad.rhai"), "adjust(").expect("write");
    assert!(wait_until(|| rules.status("newbad").is_ok()));
    let st = status(&rules, "newbad");
    assert_eq!((st.state, st.enabled), ("compile_error", false));
    assert_eq!(
        rules
            .evaluate(&input(rhai::Map::new(), rhai::Map::new()))
            .len(),
        1
    );
}

#[test]
fn bad_file_at_load_does_not_fail_loading() {
    let dir = dir_with(&[("good", r#"adjust("g", "v");"#), ("bad", "let = ;")]);
    fs::write(dir.path().join("Bad Name.rhai"), "adjust(\"x\", \"y\");").expect("write");
    fs::write(dir.path().join("notes.txt"), "not a rule").expect("write");
    let rules = load(&dir);
    let st = rules.statuses();
    let names: Vec<&str> = st.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["bad", "good"]);
    assert_eq!(st[0].state, "compile_error");
    assert_eq!(st[0].compile_error.as_ref().and_then(|e| e.line), Some(1));
    assert_eq!(
        rules
            .evaluate(&input(rhai::Map::new(), rhai::Map::new()))
            .len(),
        1
    );
    // A missing directory is created.
    let missing = dir.path().join("sub/dir");
    let rules = Rules::load(&missing, RuleLimits::default()).expect("load creates dir");
    assert!(missing.is_dir() && rules.statuses().is_empty());
}

#[test]
fn hot_reload_while_other_threads_evaluate() {
    let dir = dir_with(&[
        ("live", r#"adjust("s", "v1");"#),
        ("other", r#"adjust("o", "x");"#),
    ]);
    let rules = load(&dir);
    let _watcher = rules.watch().expect("watch");
    let stop = Arc::new(AtomicBool::new(false));
    let seen_v2 = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(AtomicUsize::new(0));
    let worker = {
        let (rules, stop, seen_v2, bad) =
            (rules.clone(), stop.clone(), seen_v2.clone(), bad.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
                // Always both rules, `live` at v1 or v2 (never missing while being replaced).
                match variants(&out).as_slice() {
                    [(_, _, v), (_, _, o)] if o == "x" && (v == "v1" || v == "v2") => {
                        if v == "v2" {
                            seen_v2.store(true, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // An in-place write (not atomic), as `echo > file` would do.
    fs::write(dir.path().join("live.rhai"), r#"adjust("s", "v2");"#).expect("write");
    let picked_up = wait_until(|| seen_v2.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    assert!(picked_up, "{:?}", rules.statuses());
    assert_eq!(bad.load(Ordering::Relaxed), 0);

    // Delete and create through the file system too.
    fs::remove_file(dir.path().join("other.rhai")).expect("rm");
    assert!(wait_until(|| rules.status("other").is_err()));
    replace_file(&dir.path().join("added.rhai"), r#"adjust("n", "new");"#);
    assert!(wait_until(|| rules.status("added").is_ok()));
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    let names: Vec<&str> = out.iter().map(|a| a.rule.as_str()).collect();
    assert_eq!(names, ["added", "live"]);
}

#[test]
fn watcher_stops_when_dropped() {
    let dir = dir_with(&[("r", r#"adjust("s", "v1");"#)]);
    let rules = load(&dir);
    let watcher = rules.watch().expect("watch");
    drop(watcher);
    fs::write(dir.path().join("r.rhai"), r#"adjust("s", "v2");"#).expect("write");
    // Nothing reloads any more; an explicit reload still works.
    std::thread::sleep(Duration::from_millis(400));
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(out[0].variant, "v1");
    rules.reload().expect("reload");
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(out[0].variant, "v2");
}

// ---------------------------------------------------------------- put / delete

#[test]
fn put_validates_writes_and_installs_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    let path = dir.path().join("promo.rhai");

    match rules.put("promo", "adjust(\"s\",\n  \"v\"") {
        Err(RulesError::Compile { info }) => {
            assert!(info.location.contains("promo.rhai:"), "{info:?}");
        }
        other => panic!("bad source accepted: {other:?}"),
    }
    assert!(!path.exists());
    assert!(rules.statuses().is_empty());
    assert_eq!(
        fs::read_dir(dir.path()).expect("ls").count(),
        0,
        "no temp file left"
    );

    let st = rules.put("promo", r#"adjust("s", "v");"#).expect("put");
    assert_eq!((st.state, st.enabled, st.runs), ("active", true, 0));
    assert_eq!(
        st.source_sha256,
        registry::sha256_hex(r#"adjust("s", "v");"#)
    );
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        r#"adjust("s", "v");"#
    );
    assert_eq!(
        fs::read_dir(dir.path()).expect("ls").count(),
        1,
        "no temp file left"
    );
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(variants(&out), [("promo".into(), "s".into(), "v".into())]);

    // A bad replacement leaves the good one in place, on disk and running.
    assert!(rules.put("promo", "let = ;").is_err());
    assert_eq!(
        fs::read_to_string(&path).expect("read"),
        r#"adjust("s", "v");"#
    );
    assert_eq!(status(&rules, "promo").state, "active");

    for name in ["", "Promo", "a/b", "../x", "a.b", &"x".repeat(65)] {
        let err = rules.put(name, "1;").expect_err(name);
        assert!(
            matches!(err, RulesError::InvalidName { .. }),
            "{name}: {err}"
        );
    }
}

#[test]
fn delete_removes_file_and_rule() {
    let dir = dir_with(&[
        ("gone", r#"adjust("s", "v");"#),
        ("kept", r#"adjust("k", "v");"#),
    ]);
    let rules = load(&dir);
    assert!(rules.delete("gone").expect("delete"));
    assert!(!dir.path().join("gone.rhai").exists());
    assert!(matches!(rules.status("gone"), Err(RulesError::NotFound(_))));
    let out = rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    assert_eq!(variants(&out), [("kept".into(), "k".into(), "v".into())]);
    assert!(!rules.delete("gone").expect("delete again"));
    assert!(matches!(
        rules.delete("../kept"),
        Err(RulesError::InvalidName { .. })
    ));
    assert!(dir.path().join("kept.rhai").exists());
}

// ---------------------------------------------------------------- concurrency

#[test]
fn concurrent_evaluate_from_four_threads() {
    let dir = dir_with(&[
        ("scroll_offer", SCROLL_OFFER),
        ("hover_review", HOVER_REVIEW),
        ("cta_by_context", CTA_BY_CONTEXT),
        ("spin", "if event.spin == true { loop {} }"),
    ]);
    let rules = load(&dir);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let rules = rules.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    // Each thread alternates firing and near-miss inputs of its own.
                    let fire = (i + t) % 2 == 0;
                    let depth = if fire { 90.0 } else { 10.0 };
                    let user = user_with(&format!(
                        r#"{{"scroll": {{"depth": {depth}, "max_depth": {depth}}}, "context": {{"hour": 3}}}}"#
                    ));
                    let out = rules.evaluate(&input(user, event("scroll", "")));
                    let want: Vec<&str> = if fire { vec!["scroll_offer"] } else { vec![] };
                    let got: Vec<&str> = out.iter().map(|a| a.rule.as_str()).collect();
                    assert_eq!(got, want, "thread {t} iteration {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let st = rules.statuses();
    // Every scroll ran every rule that reacts to scrolls (not hover_review: ON = hover, tick).
    assert!(
        st.iter()
            .all(|s| s.failures == 0 && s.runs == if s.name == "hover_review" { 0 } else { 800 }),
        "{st:?}"
    );
    assert_eq!(status(&rules, "scroll_offer").adjustments, 400);
}

#[test]
fn status_serializes_for_the_admin_api() {
    let (_d, rules) = one("r", "let x = 1;\nx.nope();");
    rules.evaluate(&input(rhai::Map::new(), rhai::Map::new()));
    let json = serde_json::to_value(rules.statuses()).expect("serialize");
    assert_eq!(json[0]["state"], "active");
    assert_eq!(json[0]["last_error"]["line"], 2);
    let limits: RuleLimits = serde_json::from_str(r#"{"timeout_ms": 20}"#).expect("limits");
    assert_eq!(limits.timeout_ms, 20);
    assert_eq!(limits.max_operations, RuleLimits::default().max_operations);
}

#[test]
fn readme_examples_compile_and_run_cleanly() {
    let readme = include_str!("../../../scripts/README.md");
    let blocks: Vec<&str> = readme
        .split("```rhai\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .collect();
    assert!(blocks.len() >= 6, "{}", blocks.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    for (i, src) in blocks.iter().enumerate() {
        rules
            .put(&format!("example{i}"), src)
            .unwrap_or_else(|e| panic!("example {i} does not compile: {e}\n{src}"));
    }
    for kind in ["page_view", "scroll", "hover", "tick", "click"] {
        rules.evaluate(&input(json_map(BASE_USER), event(kind, "cta")));
        rules.evaluate(&input(rhai::Map::new(), event(kind, "")));
    }
    for st in rules.statuses() {
        assert_eq!(st.failures, 0, "{st:?}");
    }
}

#[test]
fn variable_limit_is_enforced() {
    let src: String = (0..300).map(|i| format!("let v{i} = {i};\n")).collect();
    let (_, st) = run_src(&src, rhai::Map::new(), rhai::Map::new());
    assert_eq!(last_error(&st), "variable limit exceeded", "{st:?}");
}

#[test]
fn function_and_depth_limits_are_compile_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = Rules::load(dir.path(), RuleLimits::default()).expect("load");
    let many: String = (0..65).map(|i| format!("fn f{i}() {{ {i} }}\n")).collect();
    assert!(matches!(
        rules.put("many", &many),
        Err(RulesError::Compile { .. })
    ));
    let deep_fn = format!("fn f() {{ {}1{} }}", "(".repeat(40), ")".repeat(40));
    assert!(matches!(
        rules.put("deepfn", &deep_fn),
        Err(RulesError::Compile { .. })
    ));
}

#[test]
fn predict_reads_the_scorer_and_is_minus_one_without_a_model() {
    let dir = dir_with(&[(
        "score",
        r#"
        let p = predict("click", "cta", "urgent");
        if p >= 0.5 { adjust("cta", "urgent"); }
        else if p < 0.0 { adjust("cta", "no-model"); }
        else { adjust("cta", "low"); }
        "#,
    )]);
    let rules = Rules::load(dir.path(), RuleLimits::default()).unwrap();
    let run = |scorer: Option<super::Scorer>| {
        let mut i = input(json_map(BASE_USER), event("custom", "x"));
        i.scorer = scorer;
        rules.evaluate(&i).pop().map(|a| a.variant)
    };
    assert_eq!(run(None).as_deref(), Some("no-model"));
    let s = |p: f64| {
        super::Scorer(std::sync::Arc::new(move |k: &str, slot: &str, v: &str| {
            (k == "click" && slot == "cta" && v == "urgent").then_some(p)
        }))
    };
    assert_eq!(run(Some(s(0.8))).as_deref(), Some("urgent"));
    assert_eq!(run(Some(s(0.1))).as_deref(), Some("low"));
    // The scorer of one evaluation does not leak into the next.
    assert_eq!(run(None).as_deref(), Some("no-model"));
}

#[test]
fn a_constant_prelude_is_evaluated_once_and_decides_as_written() {
    let ev = || event("custom", "");
    // Leading constants (dropped from the compiled rule) used in expressions and arguments.
    let src = r#"const ON = ["custom"];
const SLOT = "s";
const N = 3;
let x = N + 1;
adjust(SLOT, "v" + x, #{ n: N });"#;
    let (out, st) = run_src(src, user_with("{}"), ev());
    assert_eq!(
        variants(&out),
        [("t".into(), "s".into(), "v4".into())],
        "{st:?}"
    );
    assert_eq!(out[0].params["n"], "3");
    // A constant after a `let` stays, and the variables around it still resolve.
    let src = r#"const A = 1;
let b = 20;
const C = 300;
let d = 4000;
adjust("s", "" + (A + b + C + d) + "-" + b + "-" + d);"#;
    let (out, st) = run_src(src, user_with("{}"), ev());
    assert_eq!(
        out.first().map(|a| a.variant.as_str()),
        Some("4321-20-4000"),
        "{st:?}"
    );
    // `is_def_var` looks names up at run time: the prelude is kept as written.
    let src = r#"const SLOT = "s";
let name = "SL" + "OT";
if is_def_var(name) { adjust(SLOT, "defined"); }"#;
    let (out, st) = run_src(src, user_with("{}"), ev());
    assert_eq!(
        variants(&out),
        [("t".into(), "s".into(), "defined".into())],
        "{st:?}"
    );
    // Runtime errors keep their line numbers.
    let src = "const ON = [\"custom\"];\nconst X = 1;\nlet y = X + \"a\" - 1;\n";
    let (out, st) = run_src(src, user_with("{}"), ev());
    assert!(out.is_empty());
    let e = st.last_error.expect("a runtime error");
    assert_eq!(e.line, Some(3), "{e:?}");
}
