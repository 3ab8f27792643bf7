//! The read-only view of a user and an event that Rhai rules get (`user`, `event`).
//! The layout is documented for script authors in `scripts/README.md`.

use rhai::{Array, Dynamic, Map};
use serde_json::Value;

use super::state::UserState;
use crate::event::Event;
use crate::privacy::UserKey;

fn s(v: &str) -> Dynamic {
    Dynamic::from(v.to_string())
}

fn map(pairs: Vec<(&str, Dynamic)>) -> Dynamic {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert(k.into(), v);
    }
    Dynamic::from_map(m)
}

/// The `user` map for rules, with ongoing hovers/dwells measured at `now_ms`.
pub fn user_map(key: &UserKey, st: &UserState, now_ms: i64) -> Map {
    let mut targets = Map::new();
    for (name, t) in &st.targets {
        let hovering = t.hovering.map(|o| o.elapsed(now_ms)).unwrap_or(0);
        let in_view = t.in_view.map(|o| o.elapsed(now_ms)).unwrap_or(0);
        targets.insert(
            name.as_str().into(),
            map(vec![
                ("hover_ms", Dynamic::from_int(t.hover_ms)),
                ("hover_count", Dynamic::from_int(t.hover_count as i64)),
                ("hovering_ms", Dynamic::from_int(hovering)),
                ("dwell_ms", Dynamic::from_int(t.dwell_ms)),
                ("dwell_count", Dynamic::from_int(t.dwell_count as i64)),
                ("in_view_ms", Dynamic::from_int(in_view)),
                ("clicks", Dynamic::from_int(t.clicks as i64)),
            ]),
        );
    }
    let sequence: Array = st.sequence.iter().map(|e| s(e)).collect();
    let mut adjustments = Map::new();
    for (slot, variant) in &st.adjustments {
        adjustments.insert(slot.as_str().into(), s(variant));
    }
    let c = &st.context;
    let hour = c.hour.map(i64::from).unwrap_or(-1);
    let direction = match st.scroll.direction {
        1 => "down",
        -1 => "up",
        _ => "none",
    };
    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    put("id", s(&key.short()));
    put("session", s(&st.session));
    put("sessions", Dynamic::from_int(st.sessions as i64));
    put("events", Dynamic::from_int(st.events as i64));
    put(
        "consent",
        map(vec![
            ("analytics", Dynamic::from_bool(st.consent.analytics)),
            (
                "personalization",
                Dynamic::from_bool(st.consent.personalization),
            ),
        ]),
    );
    put(
        "scroll",
        map(vec![
            ("depth", Dynamic::from_float(st.scroll.depth)),
            ("max_depth", Dynamic::from_float(st.scroll.max_depth)),
            ("velocity", Dynamic::from_float(st.scroll.velocity)),
            ("direction", s(direction)),
        ]),
    );
    put("targets", Dynamic::from_map(targets));
    put("sequence", Dynamic::from_array(sequence));
    put(
        "context",
        map(vec![
            ("device", s(&c.device)),
            ("browser", s(&c.browser)),
            ("viewport_w", Dynamic::from_int(c.viewport_w as i64)),
            ("viewport_h", Dynamic::from_int(c.viewport_h as i64)),
            ("hour", Dynamic::from_int(hour)),
            ("tz_offset_min", Dynamic::from_int(c.tz_offset_min as i64)),
            ("language", s(&c.language)),
        ]),
    );
    put(
        "mouse",
        map(vec![
            ("speed", Dynamic::from_float(st.mouse.speed)),
            ("path_px", Dynamic::from_float(st.mouse.path_px)),
            ("idle_ms", Dynamic::from_int(st.mouse.idle_ms as i64)),
        ]),
    );
    put("adjustments", Dynamic::from_map(adjustments));
    put("page", s(&st.page));
    put("visible", Dynamic::from_bool(st.visible));
    put("local_hour", Dynamic::from_int(hour));
    put("segment", s(&st.segment));
    m
}

/// Converts JSON into a Rhai value (objects → maps, arrays → arrays).
pub fn json_to_dynamic(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(x) => s(x),
        Value::Array(a) => Dynamic::from_array(a.iter().map(json_to_dynamic).collect()),
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, v) in o {
                m.insert(k.as_str().into(), json_to_dynamic(v));
            }
            Dynamic::from_map(m)
        }
    }
}

/// The `event` map for a real event.
pub fn event_map(ev: &Event) -> Map {
    let mut m = Map::new();
    m.insert("type".into(), s(ev.kind().as_str()));
    m.insert("target".into(), s(ev.target.as_deref().unwrap_or("")));
    m.insert("session".into(), s(&ev.session));
    m.insert("ts".into(), Dynamic::from_int(ev.ts));
    m.insert("props".into(), json_to_dynamic(&ev.props_json()));
    m
}

/// The `event` map of a synthetic evaluation (`tick` while an interaction is ongoing, or
/// `decide` for a first-paint decision), with the given props.
pub fn synthetic_event(kind: &str, session: &str, now_ms: i64, props: Map) -> Map {
    let mut m = Map::new();
    m.insert("type".into(), s(kind));
    m.insert("target".into(), s(""));
    m.insert("session".into(), s(session));
    m.insert("ts".into(), Dynamic::from_int(now_ms));
    m.insert("props".into(), Dynamic::from_map(props));
    m
}

/// Converts a Rhai value into JSON (maps → objects, arrays → arrays; others by type).
pub fn dynamic_to_json(d: &Dynamic) -> Value {
    if d.is_unit() {
        Value::Null
    } else if let Ok(b) = d.as_bool() {
        Value::Bool(b)
    } else if let Ok(i) = d.as_int() {
        Value::from(i)
    } else if let Ok(f) = d.as_float() {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    } else if let Some(a) = d.read_lock::<Array>() {
        Value::Array(a.iter().map(dynamic_to_json).collect())
    } else if let Some(m) = d.read_lock::<Map>() {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), dynamic_to_json(v)))
                .collect(),
        )
    } else {
        Value::String(d.to_string())
    }
}

/// The user's state for people (export, `/v1/me`, dashboard): the same layout rules see,
/// plus first/last seen and experiment participation.
pub fn state_json(key: &UserKey, st: &UserState, now_ms: i64) -> Value {
    let mut v = dynamic_to_json(&Dynamic::from_map(user_map(key, st, now_ms)));
    if let Value::Object(m) = &mut v {
        m.insert("first_seen_ms".into(), st.first_seen_ms.into());
        m.insert("last_seen_ms".into(), st.last_seen_ms.into());
        m.insert("holdout".into(), st.holdout.into());
        let exps: serde_json::Map<String, Value> = st
            .experiments
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    serde_json::json!({"arm": r.arm, "assigned_ms": r.assigned_ms,
                        "exposed_ms": r.exposed_ms, "values": r.values}),
                )
            })
            .collect();
        m.insert("experiments".into(), Value::Object(exps));
    }
    v
}
