//! A rule that never ends (`loop {}`) is stopped by the sandbox, disabled after repeated
//! failures, and the other rules keep running.

use serde_json::Value;

use crate::support::*;

const LOOPING: &str = r#"// looping: never ends on its own
if event.type == "scroll" || event.type == "custom" {
    loop {}
}
"#;

#[test]
fn looping_rule_is_stopped_and_disabled_while_others_keep_running() {
    let s = Server::start(Opts::with_repo_scripts("").script("looping", LOOPING));
    let max = 5; // [rules] max_consecutive_failures default
    let user = "loop-user";
    let t = s.identify(user);
    let mut ws = s.ws_connect(&t);

    ws.send_acked(vec![page_view(&eid("pv"), "/article/loops")]);
    // Each scroll runs the looping rule, which must be cut off (and fail) every time.
    for depth in [10.0, 20.0, 30.0] {
        ws.send_acked(vec![scroll(&eid("sc"), depth, "/article/loops")]);
    }
    let st = s.rule("looping").expect("looping rule listed");
    assert_eq!(st["failures"], 3, "{st}");
    assert_eq!(
        st["state"], "active",
        "not yet disabled after 3 failures: {st}"
    );
    assert!(
        st["last_error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{st}"
    );

    // The other rules still run: the scroll offer arrives.
    ws.send_events(vec![scroll(&eid("sc"), 80.0, "/article/loops")]);
    let adj = ws
        .wait_adjust("offer", deadline(WAIT))
        .unwrap_or_else(|| panic!("scroll_offer stopped working; seen {:?}", ws.seen));
    assert_eq!(adj["variant"], "discount");

    for _ in 0..3 {
        ws.send_acked(vec![custom(&eid("c"), "more", Value::Null)]);
    }
    let st = s.rule("looping").expect("looping rule listed");
    assert_eq!(st["state"], "disabled", "{st}");
    assert_eq!(st["enabled"], false, "{st}");
    assert!(
        st["failures"].as_u64().is_some_and(|f| f >= max),
        "failures: {st}"
    );
    assert!(
        st["disabled_reason"]
            .as_str()
            .is_some_and(|r| r.contains("consecutive failures")),
        "disabled without a reason: {st}"
    );

    // Disabled: no longer run (runs stop growing) while the others still answer.
    let runs = st["runs"].clone();
    let t2 = s.identify("loop-user-2");
    let mut ws2 = s.ws_connect(&t2);
    ws2.send_acked(vec![page_view(&eid("pv"), "/article/after")]);
    ws2.send_events(vec![scroll(&eid("sc"), 90.0, "/article/after")]);
    assert!(
        ws2.wait_adjust("offer", deadline(WAIT)).is_some(),
        "no offer after the looping rule was disabled; seen {:?}",
        ws2.seen
    );
    let st = s.rule("looping").expect("listed");
    assert_eq!(st["runs"], runs, "a disabled rule still runs: {st}");
    for other in ["scroll_offer", "cta_by_context", "hover_review"] {
        let r = s.rule(other).unwrap_or_else(|| panic!("{other} missing"));
        assert_eq!(r["state"], "active", "{r}");
        assert_eq!(r["failures"], 0, "{r}");
    }
    assert_eq!(s.get("/healthz", None).status, 200);
}
