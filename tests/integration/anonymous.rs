//! Browser credentials without secrets: anonymous tokens, their renewal for the same visitor,
//! and first-paint decisions (`POST /v1/decide`) made by the example CTA rule.

use serde_json::{json, Value};

use crate::support::*;

fn anonymous(s: &Server, body: &Value) -> Resp {
    s.post_raw("/v1/anonymous", None, body.to_string().as_bytes())
}

#[test]
fn anonymous_tokens_renew_for_the_same_visitor_only() {
    let s = Server::start(Opts::with_repo_scripts("token_ttl_s = 1\n"));
    let first = anonymous(&s, &json!({}));
    assert_eq!(first.status, 200, "{}", first.body);
    let user = first.json["user"].as_str().unwrap().to_string();
    let token = first.json["token"].as_str().unwrap().to_string();
    assert!(user.starts_with("anon-"), "{user}");
    // An empty body works too, and every call mints a different visitor.
    let other = s.post_raw("/v1/anonymous", None, b"");
    assert_eq!(other.status, 200, "{}", other.body);
    assert_ne!(other.json["user"], first.json["user"]);
    s.post_ok(&token, vec![page_view(&eid("pv"), "/article/anon")]);

    // Wait until the one-second token has expired.
    let expired = poll(WAIT, || {
        let r = s.get("/v1/me", Some(&token));
        (r.status == 401).then_some(r)
    })
    .expect("token never expired");
    assert_eq!(expired.code(), "token_expired");

    // Renewal keeps the visitor: the new token reads the data stored under the old one.
    let renewed = anonymous(&s, &json!({ "user": user, "token": token }));
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    assert_eq!(renewed.json["user"], user.as_str());
    let new_token = renewed.json["token"].as_str().unwrap().to_string();
    let me = s.get("/v1/me", Some(&new_token));
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json["state"]["page"], "/article/anon", "{}", me.body);

    // Someone else's id with this token, a tampered token, or half a request: refused.
    let theirs = anonymous(&s, &json!({ "user": other.json["user"], "token": token }));
    assert_eq!(
        (theirs.status, theirs.code()),
        (403, "user_mismatch"),
        "{}",
        theirs.body
    );
    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let bad = anonymous(&s, &json!({ "user": user, "token": forged }));
    assert_eq!(
        (bad.status, bad.code()),
        (401, "invalid_token"),
        "{}",
        bad.body
    );
    let half = anonymous(&s, &json!({ "user": user }));
    assert_eq!(
        (half.status, half.code()),
        (422, "missing_field"),
        "{}",
        half.body
    );
    let unknown = anonymous(&s, &json!({ "nickname": "x" }));
    assert_eq!(
        (unknown.status, unknown.code()),
        (422, "unknown_field"),
        "{}",
        unknown.body
    );
}

#[test]
fn anonymous_can_be_disabled() {
    let s = Server::start(Opts::with_repo_scripts("anonymous = false\n"));
    let r = anonymous(&s, &json!({}));
    assert_eq!(
        (r.status, r.code()),
        (403, "anonymous_disabled"),
        "{}",
        r.body
    );
}

#[test]
fn first_paint_decide_uses_the_cta_rule() {
    let s = Server::start(Opts::with_repo_scripts(""));
    let t = s.identify("early-bird");
    let decide = |hour_events: Vec<Value>| {
        s.post_ok(&t, hour_events);
        s.post_raw(
            "/v1/decide",
            Some(&t),
            json!({"slot": "cta", "candidates": ["default", "reassure", "fast-checkout", "morning"]})
                .to_string()
                .as_bytes(),
        )
    };
    // 08:00 local time (known from an event the rule itself ignores): the rule's morning
    // branch decides the first paint.
    let mouse = json!({"id": eid("m"), "type": "mouse", "session": "s1", "ts": now_ms(),
        "props": {"speed": 10.0, "path_px": 100.0, "idle_ms": 0},
        "consent": {"analytics": true, "personalization": true}});
    let r = decide(vec![at_hour(mouse, 8)]);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["variant"], "morning", "{}", r.body);
    assert_eq!(r.json["decision"]["source"], "rule");
    assert_eq!(r.json["decision"]["rule"], "cta_by_context");
    // The decision is stored (it can be attributed later).
    let ex = s.export("early-bird").unwrap();
    let id = r.json["decision"]["id"].as_str().unwrap();
    assert!(
        ex["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == id),
        "{ex}"
    );
    // Already pushed on this page (the rule also runs on page views): decide answers what the
    // slot shows, with the original decision id, so the impression is attributed to it.
    let t3 = s.identify("page-first");
    s.post_ok(&t3, vec![at_hour(page_view(&eid("pv"), "/"), 8)]);
    let pushed = s.export("page-first").unwrap()["decisions"][0]["id"].clone();
    let r = s.post_raw(
        "/v1/decide",
        Some(&t3),
        json!({"slot": "cta", "candidates": ["default", "morning"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json["variant"], "morning", "{}", r.body);
    assert_eq!(r.json["decision"]["source"], "current");
    assert_eq!(r.json["decision"]["id"], pushed);
    // 02:00: no branch applies, the page keeps its default.
    let t2 = s.identify("night-owl");
    s.post_ok(&t2, vec![at_hour(page_view(&eid("pv"), "/"), 2)]);
    let r = s.post_raw(
        "/v1/decide",
        Some(&t2),
        json!({"slot": "cta", "candidates": ["default", "morning"]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (
            r.json["variant"].as_str(),
            r.json["decision"]["source"].as_str()
        ),
        (Some("default"), Some("default"))
    );
}
