//! The three example rules (`scripts/*.rhai`) fire on real traffic and their adjustments arrive
//! over the WebSocket.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// scroll_offer: past 75% on an article page → slot `offer`, variant `discount`.
#[test]
fn scroll_past_75_percent_on_article_pushes_offer() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let token = s.identify("reader-1");
    let mut ws = s.ws_connect(&token);
    ws.send_acked(vec![page_view(&eid("pv"), "/article/deep-sea")]);
    // 60% is not enough; the ack of the next batch comes after any push for this one.
    ws.send_acked(vec![scroll(&eid("sc"), 60.0, "/article/deep-sea")]);
    ws.send_acked(vec![scroll(&eid("sc"), 70.0, "/article/deep-sea")]);
    assert!(
        ws.adjusts(Some("offer")).is_empty(),
        "offer pushed below 75%: {:?}",
        ws.seen
    );
    ws.send_events(vec![scroll(&eid("sc"), 80.0, "/article/deep-sea")]);
    let adj = ws
        .wait_adjust("offer", deadline(WAIT))
        .unwrap_or_else(|| panic!("no offer adjustment; seen {:?}", ws.seen));
    assert_eq!(adj["variant"], "discount", "{adj}");
    assert_eq!(adj["params"]["code"], "READ15", "{adj}");
    assert_eq!(adj["decision"]["source"], "rule", "{adj}");
    assert!(adj["decision"]["id"]
        .as_str()
        .is_some_and(|i| !i.is_empty()));

    // Not an article: a second user scrolling a product page deep gets nothing.
    let t2 = s.identify("reader-2");
    let mut ws2 = s.ws_connect(&t2);
    ws2.send_acked(vec![page_view(&eid("pv"), "/product/9")]);
    ws2.send_acked(vec![scroll(&eid("sc"), 95.0, "/product/9")]);
    ws2.send_acked(vec![custom(&eid("barrier"), "barrier", Value::Null)]);
    assert!(
        ws2.adjusts(Some("offer")).is_empty(),
        "offer on a non-article page: {:?}",
        ws2.seen
    );
}

/// hover_review: a hover on `product-image` lasting more than 3 s → `product-detail`/`review`,
/// pushed while the hover is still going on (server timers + heartbeats), not before ~3 s.
#[test]
fn long_hover_on_product_image_pushes_review_while_hovering() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let token = s.identify("shopper-1");
    let mut ws = s.ws_connect(&token);
    ws.send_acked(vec![page_view(&eid("pv"), "/product/42")]);

    let start = Instant::now();
    ws.send_events(vec![hover(&eid("hv"), "product-image", "start", 0)]);
    let mut next_beat = start + Duration::from_millis(500);
    let end = deadline(Duration::from_secs(12));
    let adj = loop {
        let now = Instant::now();
        assert!(
            now < end,
            "no review adjustment while hovering for {:?}; seen {:?}",
            start.elapsed(),
            ws.seen
        );
        if now >= next_beat {
            let elapsed = start.elapsed().as_millis() as u64;
            ws.send_events(vec![hover(
                &eid("hb"),
                "product-image",
                "heartbeat",
                elapsed,
            )]);
            next_beat += Duration::from_millis(500);
        }
        let wait = next_beat.saturating_duration_since(Instant::now());
        if let Got::Json(m) = ws.next(wait.min(Duration::from_millis(100))) {
            if m["type"] == "adjust" && m["slot"] == "product-detail" {
                break (m, start.elapsed());
            }
            assert_ne!(m["type"], "error", "server error: {m}");
        }
    };
    let (adj, at) = adj;
    assert_eq!(adj["variant"], "review", "{adj}");
    assert!(
        at >= Duration::from_millis(2900),
        "review pushed after only {at:?} of hovering (rule needs > 3 s)"
    );
    // Only now does the hover end: the adjustment arrived while still hovering.
    ws.send_acked(vec![hover(
        &eid("he"),
        "product-image",
        "end",
        at.as_millis() as u64,
    )]);
    assert_eq!(ws.adjusts(Some("product-detail")).len(), 1, "{:?}", ws.seen);
}

fn cta_adjusts(ws: &Ws) -> Vec<String> {
    ws.adjusts(Some("cta"))
        .iter()
        .map(|m| m["variant"].as_str().unwrap_or("").to_string())
        .collect()
}

/// cta_by_context: 3 hovers on cta/pricing without a click in the evening → `reassure`; the
/// same sequence in the morning → `morning`; a recent click in work hours → `fast-checkout`.
#[test]
fn cta_rule_picks_variant_from_sequence_and_hour() {
    let s = Server::start(Opts::with_repo_scripts(""));

    // Evening, hesitant: hover cta, pricing, cta (each a new hover), no clicks.
    let t = s.identify("cta-evening");
    let mut ws = s.ws_connect(&t);
    ws.send_acked(vec![at_hour(page_view(&eid("pv"), "/pricing"), 20)]);
    ws.send_acked(vec![
        at_hour(hover(&eid("h"), "cta", "start", 0), 20),
        at_hour(hover(&eid("h"), "cta", "end", 400), 20),
        at_hour(hover(&eid("h"), "pricing", "start", 0), 20),
        at_hour(hover(&eid("h"), "pricing", "end", 400), 20),
    ]);
    assert!(
        cta_adjusts(&ws).is_empty(),
        "two hovers are not hesitant yet: {:?}",
        ws.seen
    );
    ws.send_events(vec![at_hour(hover(&eid("h"), "cta", "start", 0), 20)]);
    let adj = ws
        .wait_adjust("cta", deadline(WAIT))
        .unwrap_or_else(|| panic!("no cta adjustment; seen {:?}", ws.seen));
    assert_eq!(adj["variant"], "reassure", "{adj}");
    assert!(adj["params"]["headline"].as_str().is_some(), "{adj}");

    // Same hesitant sequence at 10:00 → not reassure, but the morning variant.
    let t = s.identify("cta-morning");
    let mut ws = s.ws_connect(&t);
    ws.send_acked(vec![at_hour(page_view(&eid("pv"), "/pricing"), 10)]);
    ws.send_acked(vec![
        at_hour(hover(&eid("h"), "cta", "start", 0), 10),
        at_hour(hover(&eid("h"), "cta", "end", 400), 10),
        at_hour(hover(&eid("h"), "pricing", "start", 0), 10),
        at_hour(hover(&eid("h"), "pricing", "end", 400), 10),
        at_hour(hover(&eid("h"), "cta", "start", 0), 10),
    ]);
    ws.send_acked(vec![custom(&eid("barrier"), "barrier", Value::Null)]);
    assert_eq!(cta_adjusts(&ws), vec!["morning"], "{:?}", ws.seen);

    // A click in work hours → fast-checkout.
    let t = s.identify("cta-buyer");
    let mut ws = s.ws_connect(&t);
    ws.send_acked(vec![at_hour(page_view(&eid("pv"), "/product/1"), 14)]);
    ws.send_acked(vec![at_hour(scroll(&eid("sc"), 30.0, "/product/1"), 14)]);
    assert!(cta_adjusts(&ws).is_empty(), "{:?}", ws.seen);
    ws.send_events(vec![at_hour(click(&eid("c"), "add-to-cart"), 14)]);
    let adj = ws
        .wait_adjust("cta", deadline(WAIT))
        .unwrap_or_else(|| panic!("no cta adjustment; seen {:?}", ws.seen));
    assert_eq!(adj["variant"], "fast-checkout", "{adj}");

    // Late night, no hovers, no click → nothing.
    let t = s.identify("cta-night");
    let mut ws = s.ws_connect(&t);
    ws.send_acked(vec![at_hour(page_view(&eid("pv"), "/pricing"), 2)]);
    ws.send_acked(vec![at_hour(scroll(&eid("sc"), 50.0, "/pricing"), 2)]);
    ws.send_acked(vec![custom(&eid("barrier"), "barrier", Value::Null)]);
    assert!(cta_adjusts(&ws).is_empty(), "{:?}", ws.seen);
}
