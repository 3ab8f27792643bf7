//! Lazy views for scripts: `user` and `event` as custom Rhai types that read the engine's data
//! only where a script looks, instead of maps built (and deep-copied) for every evaluation.
//!
//! A [`UserView`] wraps a [`UserSource`] (implemented by the decision layer over the user's
//! state); an [`EventView`] an [`EventSource`]. Both behave like the documented maps
//! (`scripts/README.md`): `user.page`, `user["page"]`, `user.scroll?.depth`, `"scroll" in user`,
//! `user.keys()`, `type_of(user) == "map"`; a missing field reads as `()`; nested objects
//! (`user.targets`, `user.adjustments`, `user.experiments`) are built as plain maps when read.
//! The objects with fixed keys (`user.scroll`, `user.consent`, `user.context`, `user.mouse`,
//! `user.signals`) and `event.props` are [`MapView`]s: read key by key, so that what a run
//! read is each value it looked at (`user.scroll.depth`), not the whole object, which is what
//! lets [`super::memo`] remember runs of rules that read them. A `MapView` answers every map
//! function that does not change the map (`keys`, `values`, `len`, `contains`/`in`, `get`,
//! `to_json`, `==`, `+`, printing); `to_map()` gives a plain copy. A run that does something
//! else with one (sets a key of it, `filter`, …) fails on the view and is run again with plain
//! maps, and the rule keeps plain maps from then on (see `Rules::evaluate`). The helpers
//! (`user.hover_ms(t)`, `user.seq_last(n)`, …) read the source directly. Views are read-only
//! (no setters), and scripts hold them as constants, so a rule cannot change what the next
//! rule sees.
//!
//! Cloning a view is a reference count; views are `Send + Sync` (Rhai's `sync` feature).

use std::sync::Arc;

use rhai::{Array, Dynamic, Engine, ImmutableString, Map, INT};

/// Per-target statistics a helper can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetStat {
    /// Finished hovers, total ms.
    HoverMs,
    /// The ongoing hover, ms (0 if none).
    HoveringMs,
    HoverCount,
    /// Finished stays in view, total ms.
    DwellMs,
    /// The ongoing stay in view, ms (0 if none).
    InViewMs,
    Clicks,
}

/// What scripts can read of a user.
pub trait UserSource: Send + Sync {
    /// A top-level field of the `user` map layout, `()` when there is no such field.
    fn field(&self, name: &str) -> Dynamic;
    /// Key `key` of the object `field` (one of [`USER_MAPS`]), `()` when it has no such key.
    /// The default builds the object; a source can read the one value instead.
    fn sub(&self, field: &str, key: &str) -> Dynamic {
        map_get(&self.field(field), key)
    }
    /// The top-level field names of the layout.
    fn keys(&self) -> &'static [&'static str];
    /// A statistic of a target, 0 when the target is unknown.
    fn target(&self, target: &str, stat: TargetStat) -> INT;
    /// Length of the recent interaction sequence.
    fn seq_len(&self) -> usize;
    /// Entry `i` of the sequence (oldest first; `i < seq_len()`).
    fn seq(&self, i: usize) -> &str;
    /// The local hour 0–23, or -1 when unknown.
    fn hour(&self) -> INT;
    /// The device class (`mobile`, `tablet`, `desktop` or "").
    fn device(&self) -> &str;
    /// The variant `slot` shows now ("" if none).
    fn showing(&self, slot: &str) -> &str;
    /// The path of the page the user is on ("" if none yet).
    fn page(&self) -> &str;
    /// The user's arm of experiment `id` (None when not in it).
    fn experiment(&self, id: &str) -> Option<&str>;
}

/// What scripts can read of an event.
pub trait EventSource: Send + Sync {
    /// A field of the `event` map layout, `()` when there is no such field.
    fn field(&self, name: &str) -> Dynamic;
    fn keys(&self) -> &'static [&'static str];
    /// Key `key` of the object `field` (`props`), `()` when it has no such key.
    fn sub(&self, field: &str, key: &str) -> Dynamic {
        map_get(&self.field(field), key)
    }
}

/// Key `key` of `map` if it is a map, else `()`.
fn map_get(map: &Dynamic, key: &str) -> Dynamic {
    map.read_lock::<Map>()
        .and_then(|m| m.get(key).cloned())
        .unwrap_or(Dynamic::UNIT)
}

/// The `user` constant of a rule run.
#[derive(Clone)]
pub struct UserView(pub Arc<dyn UserSource>);

/// The `event` constant of a rule run.
#[derive(Clone)]
pub struct EventView(pub Arc<dyn EventSource>);

/// An object of `user` with fixed keys (one of [`USER_MAPS`]) or `event.props`, read key by
/// key (see the module doc). Cloning is a reference count.
#[derive(Clone)]
pub struct MapView {
    of: Of,
    field: ImmutableString,
}

#[derive(Clone)]
enum Of {
    User(UserView),
    Event(EventView),
}

impl MapView {
    /// The value of `key` (`()` when missing), recorded as that one read.
    fn get(&self, key: ImmutableString) -> Dynamic {
        use super::memo::{self, Read};
        match &self.of {
            Of::User(u) => memo::user(u, Read::UserSub(self.field.clone(), key)),
            Of::Event(e) => memo::event(e, Read::EventSub(self.field.clone(), key)),
        }
    }

    /// The whole object as a plain map, recorded as a read of all of it.
    pub(crate) fn whole(&self) -> Map {
        use super::memo::{self, Read};
        let v = match &self.of {
            Of::User(u) => memo::user(u, Read::UserField(self.field.clone())),
            Of::Event(e) => memo::event(e, Read::EventField(self.field.clone())),
        };
        v.try_cast::<Map>().unwrap_or_default()
    }
}

/// Whether this rule run reads the objects of [`MapView`] through views (the running call's
/// choice; plain maps outside rule runs).
fn nested() -> bool {
    super::sandbox::with_current(|s| s.nested).unwrap_or(false)
}

/// `user.<field>`: a [`MapView`] for the objects with fixed keys when the run reads views,
/// else the field's value.
fn user_field(u: &UserView, name: &ImmutableString) -> Dynamic {
    use super::memo::{self, Read};
    if USER_MAPS.iter().any(|(m, _)| *m == name.as_str()) && nested() {
        return Dynamic::from(MapView {
            of: Of::User(u.clone()),
            field: name.clone(),
        });
    }
    memo::user(u, Read::UserField(name.clone()))
}

/// `event.<field>`: a [`MapView`] for `props` when the run reads views, else the field's value.
fn event_field(e: &EventView, name: &ImmutableString) -> Dynamic {
    use super::memo::{self, Read};
    if name.as_str() == "props" && nested() {
        return Dynamic::from(MapView {
            of: Of::Event(e.clone()),
            field: name.clone(),
        });
    }
    memo::event(e, Read::EventField(name.clone()))
}

/// A value as `print` and `adjust()` params show it: a [`MapView`] as the map it stands for.
pub(crate) fn display(v: &Dynamic) -> String {
    match v.read_lock::<MapView>() {
        Some(m) => Dynamic::from_map(m.whole()).to_string(),
        None => v.to_string(),
    }
}

impl UserView {
    pub fn source(&self) -> &dyn UserSource {
        &*self.0
    }

    /// The last `n` sequence entries, oldest first.
    pub fn seq_last(&self, n: INT) -> Array {
        let s = self.source();
        let len = s.seq_len();
        let n = usize::try_from(n).unwrap_or(0).min(len);
        (len - n..len)
            .map(|i| Dynamic::from(s.seq(i).to_string()))
            .collect()
    }

    fn seq_iter(&self) -> impl Iterator<Item = &str> + '_ {
        let s = self.source();
        (0..s.seq_len()).map(move |i| s.seq(i))
    }
}

/// A script-visible string for a static name (shared: cloning is a reference count).
pub fn text(s: &str) -> Dynamic {
    Dynamic::from(ImmutableString::from(s))
}

/// The fields of the layouts, registered as property getters: a registered getter is found by
/// its precomputed hash, while an unknown property goes through Rhai's (slower) fallback to
/// the indexer.
pub const USER_FIELDS: &[&str] = &[
    "id",
    "session",
    "sessions",
    "events",
    "consent",
    "scroll",
    "targets",
    "sequence",
    "context",
    "mouse",
    "signals",
    "adjustments",
    "page",
    "visible",
    "local_hour",
    "segment",
    "experiments",
];
pub const EVENT_FIELDS: &[&str] = &["type", "target", "session", "ts", "props"];

/// The maps of `user` whose keys are fixed, and their keys (`targets`, `adjustments` and
/// `experiments` are keyed by names the page and the definitions choose).
pub const USER_MAPS: &[(&str, &[&str])] = &[
    ("consent", &["analytics", "personalization"]),
    ("scroll", &["depth", "max_depth", "velocity", "direction"]),
    (
        "context",
        &[
            "device",
            "browser",
            "viewport_w",
            "viewport_h",
            "hour",
            "tz_offset_min",
            "language",
        ],
    ),
    ("mouse", &["speed", "path_px", "idle_ms"]),
    (
        "signals",
        &[
            "rage_clicks",
            "dead_clicks",
            "error_clicks",
            "hesitations",
            "hesitation_ms",
            "exit_intents",
            "exit_via",
            "excessive_scrolls",
            "quick_backs",
            "engaged_ms",
            "reading_wpm",
            "motion",
            "tilt",
            "frustration",
            "intent",
            "last_ms",
        ],
    ),
];

/// Registers both view types and the map-like operations on them. The helpers on `user` are
/// registered by [`super::api`] next to their map versions.
pub(crate) fn register(engine: &mut Engine) {
    use super::memo::{self, Read};
    // Every read goes through `memo`, which records it when the run is being remembered.
    engine.register_type_with_name::<UserView>("map");
    engine.register_type_with_name::<EventView>("map");
    engine.register_indexer_get(|u: &mut UserView, k: ImmutableString| user_field(u, &k));
    engine.register_indexer_get(|e: &mut EventView, k: ImmutableString| event_field(e, &k));
    for f in USER_FIELDS {
        let name = ImmutableString::from(*f);
        engine.register_get(f, move |u: &mut UserView| user_field(u, &name));
    }
    for f in EVENT_FIELDS {
        let name = ImmutableString::from(*f);
        engine.register_get(f, move |e: &mut EventView| event_field(e, &name));
    }
    register_map_view(engine);
    engine.register_fn("keys", |u: &mut UserView| memo::user(u, Read::UserKeys));
    engine.register_fn("keys", |e: &mut EventView| memo::event(e, Read::EventKeys));
    engine.register_fn("len", |u: &mut UserView| memo::user(u, Read::UserLen));
    engine.register_fn("len", |e: &mut EventView| memo::event(e, Read::EventLen));
    engine.register_fn("contains", |u: &mut UserView, k: ImmutableString| {
        memo::user(u, Read::UserContains(k))
    });
    engine.register_fn("contains", |e: &mut EventView, k: ImmutableString| {
        memo::event(e, Read::EventContains(k))
    });
    engine.register_fn("to_map", |u: &mut UserView| memo::user(u, Read::UserToMap));
    engine.register_fn("to_map", |e: &mut EventView| {
        memo::event(e, Read::EventToMap)
    });
    engine.register_fn("to_string", |_: &mut UserView| "user".to_string());
    engine.register_fn("to_string", |_: &mut EventView| "event".to_string());
    engine.register_fn("to_debug", |_: &mut UserView| "user".to_string());
    engine.register_fn("to_debug", |_: &mut EventView| "event".to_string());
}

/// [`MapView`]: its keys as properties and index, and the map functions that do not change a
/// map, with the meanings they have on the map it stands for.
fn register_map_view(engine: &mut Engine) {
    use rhai::NativeCallContext;
    engine.register_type_with_name::<MapView>("map");
    engine.register_indexer_get(|m: &mut MapView, k: ImmutableString| m.get(k));
    let mut keys: Vec<&str> = USER_MAPS
        .iter()
        .flat_map(|(_, k)| k.iter().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let key = ImmutableString::from(k);
        engine.register_get(k, move |m: &mut MapView| m.get(key.clone()));
    }
    engine.register_fn("get", |m: &mut MapView, k: ImmutableString| m.get(k));
    engine.register_fn("contains", |m: &mut MapView, k: ImmutableString| {
        m.whole().contains_key(k.as_str())
    });
    engine.register_fn("len", |m: &mut MapView| m.whole().len() as INT);
    engine.register_fn("is_empty", |m: &mut MapView| m.whole().is_empty());
    engine.register_fn("keys", |m: &mut MapView| -> Array {
        m.whole().into_keys().map(|k| text(&k)).collect()
    });
    engine.register_fn("values", |m: &mut MapView| -> Array {
        m.whole().into_values().collect()
    });
    engine.register_fn("to_map", |m: &mut MapView| m.whole());
    // Printing and JSON exactly as for the map (Rhai's own functions, on the plain map).
    for name in ["to_string", "to_debug", "to_json"] {
        engine.register_fn(
            name,
            move |ctx: NativeCallContext,
                  m: &mut MapView|
                  -> Result<Dynamic, Box<rhai::EvalAltResult>> {
                ctx.call_native_fn(name, (m.whole(),))
            },
        );
    }
    // Equality and merging as for the maps (Rhai's own, called on the plain maps).
    fn same(ctx: &NativeCallContext, a: Map, b: Map) -> Result<bool, Box<rhai::EvalAltResult>> {
        ctx.call_native_fn("==", (a, b))
    }
    engine.register_fn(
        "==",
        |ctx: NativeCallContext, a: &mut MapView, b: MapView| same(&ctx, a.whole(), b.whole()),
    );
    engine.register_fn("==", |ctx: NativeCallContext, a: &mut MapView, b: Map| {
        same(&ctx, a.whole(), b)
    });
    engine.register_fn("==", |ctx: NativeCallContext, a: &mut Map, b: MapView| {
        same(&ctx, a.clone(), b.whole())
    });
    engine.register_fn(
        "!=",
        |ctx: NativeCallContext, a: &mut MapView, b: MapView| {
            same(&ctx, a.whole(), b.whole()).map(|e| !e)
        },
    );
    engine.register_fn("!=", |ctx: NativeCallContext, a: &mut MapView, b: Map| {
        same(&ctx, a.whole(), b).map(|e| !e)
    });
    engine.register_fn("!=", |ctx: NativeCallContext, a: &mut Map, b: MapView| {
        same(&ctx, a.clone(), b.whole()).map(|e| !e)
    });
    engine.register_fn("+", |a: MapView, b: Map| {
        let mut m = a.whole();
        m.extend(b);
        m
    });
    engine.register_fn("+", |a: Map, b: MapView| {
        let mut m = a;
        m.extend(b.whole());
        m
    });
    engine.register_fn("+", |a: MapView, b: MapView| {
        let mut m = a.whole();
        m.extend(b.whole());
        m
    });
}

/// The helpers on a view (same names and meanings as the map helpers in [`super::api`]).
pub(crate) fn hover_ms(u: &UserView, t: &str) -> INT {
    let s = u.source();
    s.target(t, TargetStat::HoverMs)
        .saturating_add(s.target(t, TargetStat::HoveringMs))
}

pub(crate) fn dwell_ms(u: &UserView, t: &str) -> INT {
    let s = u.source();
    s.target(t, TargetStat::DwellMs)
        .saturating_add(s.target(t, TargetStat::InViewMs))
}

/// Whether the page was scrolled past `pct` percent (its deepest point so far, or the depth
/// now if that is deeper).
pub(crate) fn scrolled_past(u: &UserView, pct: f64) -> bool {
    let s = u.source();
    let at = |k: &str| s.sub("scroll", k).as_float().unwrap_or(0.0);
    at("depth").max(at("max_depth")) > pct
}

pub(crate) fn seq_contains(u: &UserView, entry: &str) -> bool {
    u.seq_iter().any(|e| e == entry)
}

pub(crate) fn seq_count(u: &UserView, prefix: &str) -> INT {
    INT::try_from(u.seq_iter().filter(|e| e.starts_with(prefix)).count()).unwrap_or(INT::MAX)
}

pub(crate) fn seq_count_last(u: &UserView, n: INT, prefix: &str) -> INT {
    let s = u.source();
    let len = s.seq_len();
    let n = usize::try_from(n).unwrap_or(0).min(len);
    let c = (len - n..len)
        .filter(|i| s.seq(*i).starts_with(prefix))
        .count();
    INT::try_from(c).unwrap_or(INT::MAX)
}

pub(crate) fn seq_ends_with(u: &UserView, suffix: &Array) -> bool {
    let s = u.source();
    let len = s.seq_len();
    if suffix.len() > len {
        return false;
    }
    suffix.iter().enumerate().all(|(i, b)| {
        let a = s.seq(len - suffix.len() + i);
        match b.read_lock::<ImmutableString>() {
            Some(b) => a == b.as_str(),
            None => a == b.to_string(),
        }
    })
}
