//! What rules see: the user's state and the event as the lazy views of
//! [`trimtab_rules::view`] (a field is converted only when a script reads it), and the same
//! layout as JSON for people (export, `/v1/me`, the dashboard). The layout is documented for
//! script authors in `scripts/README.md`.

use std::sync::Arc;

use rhai::{Array, Dynamic, Map, INT};
use serde_json::Value;

use crate::features::{Sym, UserState};
use trimtab_privacy::UserKey;
use trimtab_rules::view::{text, EventSource, EventView, TargetStat, UserSource, UserView};
use trimtab_wire::{Event, Props};

/// The top-level fields of the `user` layout, and those of the `event` layout.
use trimtab_rules::view::{EVENT_FIELDS as EVENT_KEYS, USER_FIELDS as USER_KEYS, USER_MAPS};

fn map(pairs: impl IntoIterator<Item = (&'static str, Dynamic)>) -> Dynamic {
    Dynamic::from_map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn int(v: impl Into<i64>) -> Dynamic {
    Dynamic::from_int(v.into())
}

/// A user's state as rules read it, at one instant (`now_ms` times ongoing interactions).
pub struct StateView {
    pub key: UserKey,
    pub state: Arc<UserState>,
    pub now_ms: i64,
}

impl StateView {
    fn st(&self) -> &UserState {
        &self.state
    }
}

impl UserSource for StateView {
    fn field(&self, name: &str) -> Dynamic {
        let st = self.st();
        match name {
            "id" => text(&self.key.short()),
            "session" => text(&st.session),
            "sessions" => int(st.sessions),
            "events" => Dynamic::from_int(st.events as INT),
            "consent" | "scroll" | "context" | "mouse" | "signals" => {
                let keys = USER_MAPS
                    .iter()
                    .find(|(m, _)| *m == name)
                    .map_or(&[][..], |(_, k)| *k);
                Dynamic::from_map(
                    keys.iter()
                        .map(|k| ((*k).into(), self.sub(name, k)))
                        .collect(),
                )
            }
            "targets" => {
                let now = self.now_ms;
                let m: Map = st
                    .targets
                    .iter()
                    .map(|(name, t)| {
                        let hovering = t.hovering.map(|o| o.elapsed(now)).unwrap_or(0);
                        let in_view = t.in_view.map(|o| o.elapsed(now)).unwrap_or(0);
                        let v = map([
                            ("hover_ms", int(t.hover_ms)),
                            ("hover_count", int(t.hover_count)),
                            ("hovering_ms", int(hovering)),
                            ("dwell_ms", int(t.dwell_ms)),
                            ("dwell_count", int(t.dwell_count)),
                            ("in_view_ms", int(in_view)),
                            ("clicks", int(t.clicks)),
                        ]);
                        (name.as_str().into(), v)
                    })
                    .collect();
                Dynamic::from_map(m)
            }
            "sequence" => {
                let a: Array = st.sequence.iter().map(|e| text(e)).collect();
                Dynamic::from_array(a)
            }
            "adjustments" => Dynamic::from_map(
                st.adjustments
                    .iter()
                    .map(|(slot, v)| (slot.as_str().into(), text(v)))
                    .collect(),
            ),
            "page" => text(&st.page),
            "visible" => Dynamic::from_bool(st.visible),
            "local_hour" => Dynamic::from_int(self.hour()),
            "segment" => text(&st.segment),
            "experiments" => Dynamic::from_map(
                st.experiments
                    .iter()
                    .filter_map(|(id, r)| Some((id.as_str().into(), text(r.arm.as_ref()?))))
                    .collect(),
            ),
            _ => Dynamic::UNIT,
        }
    }

    fn sub(&self, field: &str, key: &str) -> Dynamic {
        let st = self.st();
        let (c, g) = (&st.context, &st.signals);
        match (field, key) {
            ("consent", "analytics") => Dynamic::from_bool(st.consent.analytics),
            ("consent", "personalization") => Dynamic::from_bool(st.consent.personalization),
            ("scroll", "depth") => Dynamic::from_float(st.scroll.depth),
            ("scroll", "max_depth") => Dynamic::from_float(st.scroll.max_depth),
            ("scroll", "velocity") => Dynamic::from_float(st.scroll.velocity),
            ("scroll", "direction") => text(match st.scroll.direction {
                1 => "down",
                -1 => "up",
                _ => "none",
            }),
            ("context", "device") => text(&c.device),
            ("context", "browser") => text(&c.browser),
            ("context", "viewport_w") => int(c.viewport_w),
            ("context", "viewport_h") => int(c.viewport_h),
            ("context", "hour") => Dynamic::from_int(self.hour()),
            ("context", "tz_offset_min") => int(c.tz_offset_min),
            ("context", "language") => text(&c.language),
            ("mouse", "speed") => Dynamic::from_float(st.mouse.speed),
            ("mouse", "path_px") => Dynamic::from_float(st.mouse.path_px),
            ("mouse", "idle_ms") => Dynamic::from_int(st.mouse.idle_ms as INT),
            ("signals", "rage_clicks") => int(g.rage_clicks),
            ("signals", "dead_clicks") => int(g.dead_clicks),
            ("signals", "error_clicks") => int(g.error_clicks),
            ("signals", "hesitations") => int(g.hesitations),
            ("signals", "hesitation_ms") => int(g.hesitation_ms),
            ("signals", "exit_intents") => int(g.exit_intents),
            ("signals", "exit_via") => text(g.exit_via_str()),
            ("signals", "excessive_scrolls") => int(g.excessive_scrolls),
            ("signals", "quick_backs") => int(g.quick_backs),
            ("signals", "engaged_ms") => int(g.engaged_ms),
            ("signals", "reading_wpm") => Dynamic::from_float(f64::from(g.reading_wpm)),
            ("signals", "motion") => text(g.motion_str()),
            ("signals", "tilt") => Dynamic::from_float(f64::from(g.tilt)),
            ("signals", "frustration") => Dynamic::from_float(g.frustration()),
            ("signals", "intent") => Dynamic::from_float(g.intent(st.scroll.max_depth)),
            ("signals", "last_ms") => int(g.last_ms),
            _ => Dynamic::UNIT,
        }
    }

    fn keys(&self) -> &'static [&'static str] {
        USER_KEYS
    }

    fn target(&self, target: &str, stat: TargetStat) -> INT {
        let Some(t) = self.st().targets.get(target) else {
            return 0;
        };
        match stat {
            TargetStat::HoverMs => t.hover_ms,
            TargetStat::HoveringMs => t.hovering.map(|o| o.elapsed(self.now_ms)).unwrap_or(0),
            TargetStat::HoverCount => t.hover_count.into(),
            TargetStat::DwellMs => t.dwell_ms,
            TargetStat::InViewMs => t.in_view.map(|o| o.elapsed(self.now_ms)).unwrap_or(0),
            TargetStat::Clicks => t.clicks.into(),
        }
    }

    fn seq_len(&self) -> usize {
        self.st().sequence.len()
    }

    fn seq(&self, i: usize) -> &str {
        &self.st().sequence[i]
    }

    fn hour(&self) -> INT {
        self.st().context.hour.map(INT::from).unwrap_or(-1)
    }

    fn device(&self) -> &str {
        &self.st().context.device
    }

    fn showing(&self, slot: &str) -> &str {
        self.st().adjustments.get(slot).map_or("", Sym::as_str)
    }

    fn page(&self) -> &str {
        &self.st().page
    }

    fn experiment(&self, id: &str) -> Option<&str> {
        self.st().experiments.get(id)?.arm.as_deref()
    }
}

/// The `user` view of `state` (shares the state: cloning the view is a reference count).
pub fn user_view(key: &UserKey, state: Arc<UserState>, now_ms: i64) -> Dynamic {
    Dynamic::from(UserView(Arc::new(StateView {
        key: *key,
        state,
        now_ms,
    })))
}

/// The `user` map for rules, fully built (tools, tests; the engine passes [`user_view`]).
pub fn user_map(key: &UserKey, st: &UserState, now_ms: i64) -> Map {
    let v = StateView {
        key: *key,
        state: Arc::new(st.clone()),
        now_ms,
    };
    USER_KEYS
        .iter()
        .filter(|k| **k != "experiments")
        .map(|k| ((*k).into(), v.field(k)))
        .collect()
}

/// An event as rules read it: a real event, or a synthetic one (`tick`, `decide`).
pub enum EventData {
    Real(Arc<Event>),
    Synthetic {
        kind: &'static str,
        session: String,
        ts: i64,
        props: Map,
    },
}

impl EventSource for EventData {
    fn field(&self, name: &str) -> Dynamic {
        match self {
            EventData::Real(ev) => match name {
                "type" => text(ev.kind().as_str()),
                "target" => text(ev.target.as_deref().unwrap_or("")),
                "session" => text(&ev.session),
                "ts" => Dynamic::from_int(ev.ts),
                "props" => props_dynamic(&ev.props),
                _ => Dynamic::UNIT,
            },
            EventData::Synthetic {
                kind,
                session,
                ts,
                props,
            } => match name {
                "type" => text(kind),
                "target" => text(""),
                "session" => text(session),
                "ts" => Dynamic::from_int(*ts),
                "props" => Dynamic::from_map(props.clone()),
                _ => Dynamic::UNIT,
            },
        }
    }

    fn keys(&self) -> &'static [&'static str] {
        EVENT_KEYS
    }
}

/// The `event` view.
pub fn event_view(data: EventData) -> Dynamic {
    Dynamic::from(EventView(Arc::new(data)))
}

/// The `event` map of a real event, fully built (tools, tests).
pub fn event_map(ev: &Event) -> Map {
    let d = EventData::Real(Arc::new(ev.clone()));
    EVENT_KEYS
        .iter()
        .map(|k| ((*k).into(), d.field(k)))
        .collect()
}

/// An event's props as the client sent them, as a Rhai map (no JSON in between).
fn props_dynamic(p: &Props) -> Dynamic {
    use trimtab_wire::Scalar;
    let opt_f = |v: Option<f64>| v.map(Dynamic::from_float);
    let opt_s = |v: &Option<String>| v.as_deref().map(text);
    let phase = |p: trimtab_wire::Phase| {
        text(match p {
            trimtab_wire::Phase::Start => "start",
            trimtab_wire::Phase::Heartbeat => "heartbeat",
            trimtab_wire::Phase::End => "end",
        })
    };
    let pairs: Vec<(&str, Option<Dynamic>)> = match p {
        Props::PageView { path, title } => {
            vec![("path", Some(text(path))), ("title", opt_s(title))]
        }
        Props::Scroll {
            depth,
            max_depth,
            velocity,
        } => vec![
            ("depth", Some(Dynamic::from_float(*depth))),
            ("max_depth", opt_f(*max_depth)),
            ("velocity", opt_f(*velocity)),
        ],
        Props::Hover {
            phase: ph,
            duration_ms,
        } => vec![
            ("phase", Some(phase(*ph))),
            ("duration_ms", Some(Dynamic::from_int(*duration_ms as INT))),
        ],
        Props::Dwell {
            phase: ph,
            duration_ms,
            visible_ratio,
        } => vec![
            ("phase", Some(phase(*ph))),
            ("duration_ms", Some(Dynamic::from_int(*duration_ms as INT))),
            ("visible_ratio", opt_f(*visible_ratio)),
        ],
        Props::Click { decision } => vec![("decision", opt_s(decision))],
        Props::Impression {
            slot,
            variant,
            decision,
        } => vec![
            ("slot", Some(text(slot))),
            ("variant", Some(text(variant))),
            ("decision", opt_s(decision)),
        ],
        Props::Conversion {
            name,
            value,
            decision,
        } => vec![
            ("name", opt_s(name)),
            ("value", opt_f(*value)),
            ("decision", opt_s(decision)),
        ],
        Props::Mouse {
            speed,
            path_px,
            idle_ms,
        } => vec![
            ("speed", Some(Dynamic::from_float(*speed))),
            ("path_px", Some(Dynamic::from_float(*path_px))),
            ("idle_ms", Some(Dynamic::from_int(*idle_ms as INT))),
        ],
        Props::Visibility { visible } => vec![("visible", Some(Dynamic::from_bool(*visible)))],
        Props::Signal(s) => vec![
            ("kind", Some(text(s.kind.as_str()))),
            ("count", s.count.map(|n| Dynamic::from_int(n.into()))),
            (
                "duration_ms",
                s.duration_ms.map(|d| Dynamic::from_int(d as INT)),
            ),
            ("via", s.via.map(|v| text(v.as_str()))),
            ("wpm", opt_f(s.wpm)),
            ("state", s.state.map(|m| text(m.as_str()))),
            ("tilt", opt_f(s.tilt)),
        ],
        Props::Custom { name, props } => {
            let mut m: Map = props
                .iter()
                .map(|(k, v)| {
                    let d = match v {
                        Scalar::Bool(b) => Dynamic::from_bool(*b),
                        Scalar::Int(i) => Dynamic::from_int(*i),
                        Scalar::Float(f) => Dynamic::from_float(*f),
                        Scalar::Str(s) => text(s),
                    };
                    (k.as_str().into(), d)
                })
                .collect();
            m.insert("name".into(), text(name));
            return Dynamic::from_map(m);
        }
    };
    Dynamic::from_map(
        pairs
            .into_iter()
            .filter_map(|(k, v)| Some((k.into(), v?)))
            .collect(),
    )
}

/// The `event` props of a synthetic evaluation.
pub fn synthetic_event(kind: &'static str, session: &str, now_ms: i64, props: Map) -> Dynamic {
    event_view(EventData::Synthetic {
        kind,
        session: session.to_string(),
        ts: now_ms,
        props,
    })
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
