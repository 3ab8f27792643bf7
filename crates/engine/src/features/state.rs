//! [`UserState`] and its update rules. See the module doc of [`crate::features`].

use std::collections::{BTreeMap, VecDeque};

/// A map of a few entries (a user's targets, slots, experiments): a sorted `Vec`, which costs
/// a fraction of a `BTreeMap`'s node (11 slots allocated for the first entry); serialised as a
/// map, like one. Decoding reserves at most a few entries up front whatever the record's
/// length prefix says — `LiteMap`'s own `Deserialize` reserves all of it, so one damaged
/// length aborted the process on an allocation of exabytes (found by the `records` fuzz
/// target) — as serde's own collections do.
#[derive(Debug, Clone, PartialEq)]
pub struct SmallMap<K, V>(litemap::LiteMap<K, V>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(litemap::LiteMap::new())
    }
}

impl<K, V> SmallMap<K, V> {
    pub const fn new() -> Self {
        SmallMap(litemap::LiteMap::new())
    }
}

impl<K, V> std::ops::Deref for SmallMap<K, V> {
    type Target = litemap::LiteMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<K, V> std::ops::DerefMut for SmallMap<K, V> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        SmallMap(iter.into_iter().collect())
    }
}

impl<'a, K, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = <&'a litemap::LiteMap<K, V> as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&self.0).into_iter()
    }
}

impl<K: Serialize, V: Serialize> Serialize for SmallMap<K, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for SmallMap<K, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K: Ord + Deserialize<'de>, V: Deserialize<'de>> serde::de::Visitor<'de> for Visit<K, V> {
            type Value = SmallMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                /// Entries reserved before any is read (these maps hold a few).
                const RESERVE: usize = 16;
                let mut map =
                    litemap::LiteMap::with_capacity(a.size_hint().unwrap_or(0).min(RESERVE));
                while let Some((k, v)) = a.next_entry()? {
                    // In order (as encoded) appends; anything else inserts in place.
                    if let Some((k, v)) = map.try_append(k, v) {
                        map.insert(k, v);
                    }
                }
                Ok(SmallMap(map))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

use serde::{Deserialize, Serialize};

use super::signals::Signals;
use super::sym::Sym;
use trimtab_wire::{Consent, Event, Phase, Props};

/// Tunables of feature extraction (`[features]` in the config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeatureConfig {
    /// Length of the recent interaction sequence kept per user.
    pub sequence_len: usize,
    /// Most distinct targets tracked per user (the least recently used one is dropped).
    pub max_targets: usize,
    /// An ongoing hover/dwell without a heartbeat for this long is considered ended.
    pub ongoing_timeout_ms: i64,
    /// While a hover/dwell is ongoing, rules are re-evaluated this often (server timer).
    pub tick_ms: i64,
    /// Smoothing factor of the scroll-velocity EWMA (0..1, weight of the newest sample).
    pub velocity_alpha: f64,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            sequence_len: 32,
            max_targets: 64,
            ongoing_timeout_ms: 2_500,
            tick_ms: 250,
            velocity_alpha: 0.3,
        }
    }
}

/// How many recent decision ids a user's record keeps per experiment.
pub const KEEP_DECISIONS: usize = 8;

/// Shortest interval between two scroll events that yields a velocity sample.
const MIN_VELOCITY_DT_MS: i64 = 50;

/// A hover or dwell that has started and not ended yet, timed on the server's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Ongoing {
    /// Server time the interaction started (receive time of `start`, or backdated by the
    /// reported duration when the first message seen is a heartbeat).
    pub started_ms: i64,
    /// Server time of the last start/heartbeat.
    pub last_seen_ms: i64,
}

impl Ongoing {
    pub fn elapsed(&self, now_ms: i64) -> i64 {
        (now_ms - self.started_ms).max(0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStats {
    pub hover_ms: i64,
    pub hover_count: u32,
    pub dwell_ms: i64,
    pub dwell_count: u32,
    pub clicks: u32,
    pub hovering: Option<Ongoing>,
    pub in_view: Option<Ongoing>,
    /// Server time of the last interaction (for least-recently-used eviction).
    pub last_ms: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScrollState {
    pub depth: f64,
    pub max_depth: f64,
    pub velocity: f64,
    pub direction: i8,
    last_ts: i64,
    /// Depth at `last_ts` (the start of the next velocity sample).
    last_depth: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContextState {
    pub device: Sym,
    pub browser: Sym,
    pub viewport_w: u32,
    pub viewport_h: u32,
    /// The user's local hour (0–23), if the client told us.
    pub hour: Option<u8>,
    pub tz_offset_min: i32,
    pub language: Sym,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MouseState {
    pub speed: f64,
    pub path_px: f64,
    pub idle_ms: u64,
}

/// Frequency-cap counters of one slot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotCount {
    pub session: String,
    pub in_session: u32,
    pub day: i64,
    pub in_day: u32,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    /// Sequence number the next stored event of this user gets.
    pub next_seq: u64,
    pub events: u64,
    pub sessions: u32,
    pub session: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub consent: Consent,
    pub page: Sym,
    pub visible: bool,
    pub scroll: ScrollState,
    pub targets: SmallMap<Sym, TargetStats>,
    pub sequence: VecDeque<Sym>,
    pub context: ContextState,
    pub mouse: MouseState,
    /// Variant currently shown per slot (the last one pushed).
    pub adjustments: SmallMap<Sym, Sym>,
    /// What each adjusted slot shows: (decision id, params) of the last pushed decision.
    pub shown: SmallMap<Sym, (String, SmallMap<Sym, Sym>)>,
    pub caps: SmallMap<Sym, SlotCount>,
    /// Behavioural segment (filled in by the segmenter; empty until then).
    pub segment: Sym,
    /// Experiments this user was considered for, by experiment id.
    pub experiments: SmallMap<String, ExperimentRecord>,
    /// Whether the user is in the global holdout (never adjusted), decided on first sight.
    pub holdout: Option<bool>,
    /// The session's behavioural signals. Encoded after the rest (see [`UserState::encode`]):
    /// a checkpoint written before signals existed decodes with none.
    #[serde(skip)]
    pub signals: Signals,
}

/// One user's participation in one experiment (maintained by [`crate::experiments`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    /// The arm, or `None` when the user is not eligible (targeting, segments).
    pub arm: Option<String>,
    pub assigned_ms: i64,
    /// When the user first saw the experiment's content (the first impression of one of its
    /// decisions); metrics count only after this.
    pub exposed_ms: Option<i64>,
    /// Pre-exposure behaviour (events before exposure), the CUPED covariate.
    pub covariate: f64,
    /// Behavioural segment at exposure (for per-segment results).
    pub segment: Sym,
    /// Recent decision ids issued under this experiment (to attribute impressions and clicks).
    pub decisions: VecDeque<String>,
    /// Current value of each metric for this user.
    pub values: SmallMap<String, f64>,
}

/// Whether stored params (see [`UserState::shown`]) are exactly `params`.
pub fn same_params(stored: &SmallMap<Sym, Sym>, params: &BTreeMap<String, String>) -> bool {
    stored.len() == params.len()
        && stored
            .iter()
            .zip(params)
            .all(|((a, b), (c, d))| *a == **c && *b == **d)
}

/// Bytes a `String` holds on the heap.
fn heap_str(s: &str) -> usize {
    s.len()
}

/// Bytes a `SmallMap`'s entries take (its vector), not counting what they point to.
fn heap_map<K, V>(m: &SmallMap<K, V>) -> usize {
    m.len() * std::mem::size_of::<(K, V)>()
}

impl UserState {
    /// An estimate of the heap bytes this state holds beyond its own size (strings, maps,
    /// the sequence; shared `Sym`s count as a pointer): what bounds the shards' user caches in
    /// bytes (`pipeline.user_cache_mb`), where the count alone would let large states through.
    pub fn heap_bytes(&self) -> usize {
        let shown: usize = self
            .shown
            .values()
            .map(|(id, params)| heap_str(id) + heap_map(params))
            .sum();
        let caps: usize = self.caps.values().map(|c| heap_str(&c.session)).sum();
        let experiments: usize = self
            .experiments
            .iter()
            .map(|(id, r)| {
                heap_str(id)
                    + r.arm.as_deref().map_or(0, heap_str)
                    + r.decisions.iter().map(|d| heap_str(d) + 24).sum::<usize>()
                    + heap_map(&r.values)
                    + r.values.keys().map(|k| heap_str(k)).sum::<usize>()
            })
            .sum();
        heap_str(&self.session)
            + heap_map(&self.targets)
            + self.sequence.len() * std::mem::size_of::<Sym>()
            + heap_map(&self.adjustments)
            + heap_map(&self.shown)
            + shown
            + heap_map(&self.caps)
            + caps
            + heap_map(&self.experiments)
            + experiments
    }

    /// The state as postcard, then the signals as postcard: postcard is not self-describing,
    /// so a field added to the struct would make every older checkpoint undecodable, while a
    /// trailing section is simply absent from them (and ignored by an older trimtab).
    pub fn encode(&self) -> Vec<u8> {
        // postcard serialises these plain types into a Vec without failure modes.
        let v = postcard::to_allocvec(self).expect("UserState is postcard-serialisable");
        postcard::to_extend(&self.signals, v).expect("Signals are postcard-serialisable")
    }

    pub fn decode(bytes: &[u8]) -> Option<UserState> {
        let (mut state, rest): (UserState, _) = postcard::take_from_bytes(bytes).ok()?;
        if !rest.is_empty() {
            state.signals = postcard::from_bytes(rest).ok()?;
        }
        Some(state)
    }

    fn push_seq(&mut self, entry: std::fmt::Arguments<'_>, cfg: &FeatureConfig) {
        if cfg.sequence_len == 0 {
            return;
        }
        // Make room first: pushing past the bound would double the buffer (32 → 64 slots).
        while self.sequence.len() >= cfg.sequence_len {
            self.sequence.pop_front();
        }
        // Formatted into one reused buffer: the entry is nearly always interned already.
        thread_local! {
            static ENTRY: std::cell::RefCell<String> =
                const { std::cell::RefCell::new(String::new()) };
        }
        let sym = ENTRY.with(|b| {
            let mut b = b.borrow_mut();
            b.clear();
            // Writing into a String cannot fail.
            let _ = std::fmt::Write::write_fmt(&mut *b, entry);
            Sym::new(&b)
        });
        self.sequence.push_back(sym);
    }

    fn target(&mut self, name: &str, now_ms: i64, cfg: &FeatureConfig) -> &mut TargetStats {
        let known = self.targets.contains_key(name);
        if !known && self.targets.len() >= cfg.max_targets {
            if let Some(oldest) = self
                .targets
                .iter()
                .filter(|(_, t)| t.hovering.is_none() && t.in_view.is_none())
                .min_by_key(|(_, t)| t.last_ms)
                .map(|(k, _)| k.clone())
            {
                self.targets.remove(&oldest);
            }
        }
        // A known target is found by its text; only a new one is interned.
        let t = if known {
            self.targets.get_mut(name).expect("present")
        } else {
            self.targets.entry(Sym::new(name)).or_default()
        };
        t.last_ms = now_ms;
        t
    }

    /// Updates the features with one event (`now_ms` = server receive time).
    pub fn apply(&mut self, ev: &Event, cfg: &FeatureConfig) {
        let now = ev.received_ms;
        if self.first_seen_ms == 0 {
            self.first_seen_ms = now;
        }
        self.last_seen_ms = now;
        self.events += 1;
        self.consent = ev.consent;
        if self.session != ev.session {
            self.session = ev.session.clone();
            self.sessions += 1;
            self.signals = Signals::default();
        }
        let c = &ev.context;
        if let Some(p) = &c.page {
            set_sym(&mut self.page, p);
        }
        let ctx = &mut self.context;
        if let Some(v) = &c.device {
            set_sym(&mut ctx.device, v);
        }
        if let Some(v) = &c.browser {
            set_sym(&mut ctx.browser, v);
        }
        if let Some(v) = c.viewport_w {
            ctx.viewport_w = v;
        }
        if let Some(v) = c.viewport_h {
            ctx.viewport_h = v;
        }
        if let Some(v) = c.hour {
            ctx.hour = Some(v);
        }
        if let Some(v) = c.tz_offset_min {
            ctx.tz_offset_min = v;
        }
        if let Some(v) = &c.language {
            set_sym(&mut ctx.language, v);
        }
        let target = ev.target.as_deref().unwrap_or("");
        match &ev.props {
            Props::PageView { path, .. } => {
                set_sym(&mut self.page, path);
                self.scroll = ScrollState::default();
                self.visible = true;
                self.push_seq(format_args!("page_view:{path}"), cfg);
            }
            Props::Scroll {
                depth,
                max_depth,
                velocity,
            } => self.apply_scroll(*depth, *max_depth, *velocity, ev.ts, cfg),
            Props::Hover { phase, duration_ms } => {
                let t = self.target(target, now, cfg);
                let started = track(&mut t.hovering, *phase, *duration_ms as i64, now);
                if let Some(done) = started.ended {
                    t.hover_ms += done;
                    t.hover_count += 1;
                }
                if started.is_new {
                    self.push_seq(format_args!("hover:{target}"), cfg);
                }
            }
            Props::Dwell {
                phase, duration_ms, ..
            } => {
                let t = self.target(target, now, cfg);
                let started = track(&mut t.in_view, *phase, *duration_ms as i64, now);
                if let Some(done) = started.ended {
                    t.dwell_ms += done;
                    t.dwell_count += 1;
                }
                if started.is_new {
                    self.push_seq(format_args!("dwell:{target}"), cfg);
                }
            }
            Props::Click { .. } => {
                self.target(target, now, cfg).clicks += 1;
                self.push_seq(format_args!("click:{target}"), cfg);
            }
            Props::Impression { slot, .. } => self.push_seq(format_args!("impression:{slot}"), cfg),
            Props::Conversion { name, .. } => {
                let n = name.as_deref().unwrap_or(target);
                self.push_seq(format_args!("conversion:{n}"), cfg);
            }
            Props::Mouse {
                speed,
                path_px,
                idle_ms,
            } => {
                self.mouse = MouseState {
                    speed: *speed,
                    path_px: self.mouse.path_px + path_px,
                    idle_ms: *idle_ms,
                };
            }
            Props::Visibility { visible } => {
                self.visible = *visible;
                if !visible {
                    // A hidden page ends every ongoing interaction.
                    for (_, t) in self.targets.iter_mut() {
                        if let Some(h) = t.hovering.take() {
                            t.hover_ms += h.elapsed(now);
                            t.hover_count += 1;
                        }
                        if let Some(d) = t.in_view.take() {
                            t.dwell_ms += d.elapsed(now);
                            t.dwell_count += 1;
                        }
                    }
                }
            }
            Props::Custom { name, .. } => self.push_seq(format_args!("custom:{name}"), cfg),
            Props::Signal(s) => {
                self.signals.apply(s, now);
                self.push_seq(format_args!("signal:{}", s.kind.as_str()), cfg);
            }
        }
    }

    fn apply_scroll(
        &mut self,
        depth: f64,
        max_depth: Option<f64>,
        velocity: Option<f64>,
        ts: i64,
        cfg: &FeatureConfig,
    ) {
        let s = &mut self.scroll;
        let sample = match velocity {
            Some(v) => Some(v),
            // Samples closer than MIN_VELOCITY_DT_MS apart (batched or bursty events) would give
            // meaningless spikes; they only move the depth.
            None if s.last_ts > 0 && ts - s.last_ts >= MIN_VELOCITY_DT_MS => {
                Some((depth - s.last_depth) * 1000.0 / (ts - s.last_ts) as f64)
            }
            None => None,
        };
        if let Some(v) = sample {
            s.velocity = if s.last_ts == 0 && velocity.is_some() {
                v
            } else {
                cfg.velocity_alpha * v + (1.0 - cfg.velocity_alpha) * s.velocity
            };
        }
        s.direction = if depth > s.depth {
            1
        } else if depth < s.depth {
            -1
        } else {
            s.direction
        };
        let before = s.max_depth;
        if sample.is_some() || s.last_ts == 0 {
            s.last_ts = ts;
            s.last_depth = depth;
        }
        s.depth = depth;
        s.max_depth = s.max_depth.max(depth).max(max_depth.unwrap_or(0.0));
        let after = s.max_depth;
        for mark in [25.0, 50.0, 75.0, 100.0] {
            if before < mark && after >= mark {
                self.push_seq(format_args!("scroll:{}", mark as u32), cfg);
            }
        }
    }

    /// Ends ongoing interactions whose heartbeats stopped. Returns whether anything changed.
    pub fn expire(&mut self, now_ms: i64, cfg: &FeatureConfig) -> bool {
        let mut changed = false;
        for (_, t) in self.targets.iter_mut() {
            if let Some(h) = t.hovering {
                if now_ms - h.last_seen_ms > cfg.ongoing_timeout_ms {
                    t.hover_ms += (h.last_seen_ms - h.started_ms).max(0);
                    t.hover_count += 1;
                    t.hovering = None;
                    changed = true;
                }
            }
            if let Some(d) = t.in_view {
                if now_ms - d.last_seen_ms > cfg.ongoing_timeout_ms {
                    t.dwell_ms += (d.last_seen_ms - d.started_ms).max(0);
                    t.dwell_count += 1;
                    t.in_view = None;
                    changed = true;
                }
            }
        }
        changed
    }

    /// The frequency-cap counts of `slot` as they stand at `at` (a new session or UTC day
    /// starts from zero): `(in this session, today)`. Reads only.
    pub fn cap_counts(&self, slot: &str, at: i64) -> (u32, u32) {
        let day = at.div_euclid(86_400_000);
        self.caps.get(slot).map_or((0, 0), |c| {
            (
                if c.session == self.session {
                    c.in_session
                } else {
                    0
                },
                if c.day == day { c.in_day } else { 0 },
            )
        })
    }

    /// Records that `slot` now shows decision `id` (`variant` with `params`), decided at `at`:
    /// counts it against the slot's frequency caps and, for an experiment's decision, keeps
    /// its id to attribute the impression.
    pub fn record_shown(
        &mut self,
        slot: &str,
        variant: &str,
        params: &BTreeMap<String, String>,
        id: &str,
        experiment: Option<&str>,
        at: i64,
    ) {
        let day = at.div_euclid(86_400_000);
        let c = self.caps.entry(Sym::new(slot)).or_default();
        if c.session != self.session {
            c.session = self.session.clone();
            c.in_session = 0;
        }
        if c.day != day {
            c.day = day;
            c.in_day = 0;
        }
        c.in_session += 1;
        c.in_day += 1;
        c.total += 1;
        self.adjustments.insert(Sym::new(slot), Sym::new(variant));
        let params = params
            .iter()
            .map(|(k, v)| (Sym::new(k), Sym::new(v)))
            .collect();
        self.shown.insert(Sym::new(slot), (id.to_string(), params));
        if let Some(rec) = experiment.and_then(|e| self.experiments.get_mut(e)) {
            while rec.decisions.len() >= KEEP_DECISIONS {
                rec.decisions.pop_front();
            }
            rec.decisions.push_back(id.to_string());
        }
    }

    /// Records the user's arm in an experiment (`None`: not eligible), decided at `at`.
    pub fn assign_experiment(&mut self, experiment: &str, arm: Option<String>, at: i64) {
        self.experiments.insert(
            experiment.to_string(),
            ExperimentRecord {
                arm,
                assigned_ms: at,
                ..ExperimentRecord::default()
            },
        );
    }

    /// Records the user's first exposure to an experiment's content.
    pub fn expose(&mut self, experiment: &str, at: i64, covariate: f64, segment: &str) {
        if let Some(rec) = self.experiments.get_mut(experiment) {
            rec.exposed_ms = Some(at);
            rec.covariate = covariate;
            rec.segment = Sym::new(segment);
        }
    }

    /// Sets the user's current value of an experiment metric.
    pub fn set_metric(&mut self, experiment: &str, metric: &str, value: f64) {
        if let Some(rec) = self.experiments.get_mut(experiment) {
            rec.values.insert(metric.to_string(), value);
        }
    }

    /// A `page_view` renders every slot with its default again.
    pub fn new_page(&mut self) {
        self.adjustments.clear();
        self.shown.clear();
    }

    /// Whether any hover or dwell is going on (the shard then keeps a timer for the user).
    pub fn has_ongoing(&self) -> bool {
        self.targets
            .values()
            .any(|t| t.hovering.is_some() || t.in_view.is_some())
    }
}

struct Tracked {
    is_new: bool,
    ended: Option<i64>,
}

/// The hover/dwell state machine. Durations come from the server clock, except that a client's
/// reported `duration_ms` backdates a start we never saw and is trusted for the final total
/// when it is larger (it excludes network delay).
fn track(slot: &mut Option<Ongoing>, phase: Phase, reported: i64, now: i64) -> Tracked {
    match phase {
        Phase::Start => {
            let ended = slot.take().map(|o| o.elapsed(now));
            *slot = Some(Ongoing {
                started_ms: now,
                last_seen_ms: now,
            });
            Tracked {
                is_new: true,
                ended,
            }
        }
        Phase::Heartbeat => match slot {
            Some(o) => {
                o.last_seen_ms = now;
                o.started_ms = o.started_ms.min(now - reported);
                Tracked {
                    is_new: false,
                    ended: None,
                }
            }
            None => {
                *slot = Some(Ongoing {
                    started_ms: now - reported,
                    last_seen_ms: now,
                });
                Tracked {
                    is_new: true,
                    ended: None,
                }
            }
        },
        Phase::End => {
            let server = slot.take().map(|o| o.elapsed(now)).unwrap_or(0);
            Tracked {
                is_new: false,
                ended: Some(server.max(reported)),
            }
        }
    }
}

/// Sets an interned field to `v`, interning only when it changes (a visit's page, device,
/// browser and language repeat in every event: comparing is cheaper than the table lookup).
fn set_sym(slot: &mut Sym, v: &str) {
    if slot.as_str() != v {
        *slot = Sym::new(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trimtab_wire::Context;

    fn ev(props: Props, target: Option<&str>, now: i64) -> Event {
        Event {
            id: "e".into(),
            session: "s1".into(),
            ts: now,
            received_ms: now,
            target: target.map(str::to_string),
            props,
            context: Context::default(),
            consent: Consent {
                analytics: true,
                personalization: true,
            },
        }
    }

    #[test]
    fn scroll_depth_velocity_and_milestones() {
        let cfg = FeatureConfig::default();
        let mut s = UserState::default();
        s.apply(
            &ev(
                Props::Scroll {
                    depth: 10.0,
                    max_depth: None,
                    velocity: None,
                },
                None,
                1_000,
            ),
            &cfg,
        );
        s.apply(
            &ev(
                Props::Scroll {
                    depth: 80.0,
                    max_depth: None,
                    velocity: None,
                },
                None,
                2_000,
            ),
            &cfg,
        );
        assert_eq!(s.scroll.max_depth, 80.0);
        assert_eq!(s.scroll.direction, 1);
        // 70 %/s sample, EWMA from 0 with alpha 0.3.
        assert!((s.scroll.velocity - 21.0).abs() < 1e-9);
        assert_eq!(
            s.sequence.iter().cloned().collect::<Vec<_>>(),
            vec!["scroll:25", "scroll:50", "scroll:75"]
        );
        s.apply(
            &ev(
                Props::Scroll {
                    depth: 40.0,
                    max_depth: None,
                    velocity: None,
                },
                None,
                3_000,
            ),
            &cfg,
        );
        assert_eq!(
            (s.scroll.depth, s.scroll.max_depth, s.scroll.direction),
            (40.0, 80.0, -1)
        );
    }

    #[test]
    fn bursts_do_not_make_velocity_spikes() {
        let cfg = FeatureConfig::default();
        let mut s = UserState::default();
        let sc = |d: f64, t: i64| {
            ev(
                Props::Scroll {
                    depth: d,
                    max_depth: None,
                    velocity: None,
                },
                None,
                t,
            )
        };
        s.apply(&sc(0.0, 1_000), &cfg);
        s.apply(&sc(30.0, 1_001), &cfg); // 1 ms later: no sample
        assert_eq!(s.scroll.velocity, 0.0);
        assert_eq!(s.scroll.depth, 30.0);
        s.apply(&sc(40.0, 2_000), &cfg); // measured from the last sample: 40 % in 1 s
        assert!(
            (s.scroll.velocity - 0.3 * 40.0).abs() < 1e-9,
            "{}",
            s.scroll.velocity
        );
    }

    #[test]
    fn hover_ongoing_heartbeat_end_and_expiry() {
        let cfg = FeatureConfig::default();
        let mut s = UserState::default();
        let hover = |phase, d| Props::Hover {
            phase,
            duration_ms: d,
        };
        s.apply(&ev(hover(Phase::Start, 0), Some("img"), 10_000), &cfg);
        assert!(s.has_ongoing());
        s.apply(
            &ev(hover(Phase::Heartbeat, 1_000), Some("img"), 11_000),
            &cfg,
        );
        assert_eq!(
            s.targets
                .get("img")
                .unwrap()
                .hovering
                .unwrap()
                .elapsed(12_500),
            2_500
        );
        s.apply(&ev(hover(Phase::End, 3_200), Some("img"), 13_100), &cfg);
        let t = &s.targets.get("img").unwrap();
        assert_eq!((t.hover_ms, t.hover_count, t.hovering), (3_200, 1, None));
        // A hover whose heartbeats stop is ended by expiry at its last sign of life.
        s.apply(&ev(hover(Phase::Start, 0), Some("img"), 20_000), &cfg);
        assert!(!s.expire(21_000, &cfg));
        assert!(s.expire(20_000 + cfg.ongoing_timeout_ms + 1, &cfg));
        assert_eq!(s.targets.get("img").unwrap().hover_count, 2);
        assert!(!s.has_ongoing());
        assert_eq!(s.sequence.iter().filter(|x| *x == "hover:img").count(), 2);
    }

    #[test]
    fn sessions_targets_cap_and_codec() {
        let cfg = FeatureConfig {
            max_targets: 2,
            sequence_len: 3,
            ..FeatureConfig::default()
        };
        let mut s = UserState::default();
        for (i, t) in ["a", "b", "c", "d"].iter().enumerate() {
            let mut e = ev(Props::Click { decision: None }, Some(t), 1_000 + i as i64);
            e.session = format!("s{}", i / 2);
            s.apply(&e, &cfg);
        }
        assert_eq!(s.targets.len(), 2);
        assert!(s.targets.contains_key("d") && s.targets.contains_key("c"));
        assert_eq!(s.sequence.len(), 3);
        assert_eq!(s.sessions, 2);
        assert_eq!(s.events, 4);
        assert_eq!(UserState::decode(&s.encode()), Some(s));
        // The sequence never grows its buffer past its bound (it would double it).
        let cfg = FeatureConfig::default();
        let mut s = UserState::default();
        for i in 0..100 {
            s.apply(
                &ev(Props::Click { decision: None }, Some("t"), 1_000 + i),
                &cfg,
            );
        }
        assert_eq!(s.sequence.len(), cfg.sequence_len);
        assert!(
            s.sequence.capacity() <= cfg.sequence_len,
            "{}",
            s.sequence.capacity()
        );
        let none = FeatureConfig {
            sequence_len: 0,
            ..FeatureConfig::default()
        };
        s.apply(
            &ev(Props::Click { decision: None }, Some("t"), 2_000),
            &none,
        );
        assert_eq!(
            s.sequence.len(),
            cfg.sequence_len,
            "nothing added with a zero bound"
        );
    }

    #[test]
    fn signals_count_per_session_and_survive_the_codec_while_older_checkpoints_still_decode() {
        use trimtab_wire::{Signal, SignalKind, Via};
        let cfg = FeatureConfig::default();
        let sig = |kind, via| {
            Props::Signal(Signal {
                kind,
                count: None,
                duration_ms: None,
                via,
                wpm: None,
                state: None,
                tilt: None,
            })
        };
        let mut s = UserState::default();
        s.apply(
            &ev(sig(SignalKind::DeadClick, None), Some("p"), 1_000),
            &cfg,
        );
        s.apply(
            &ev(sig(SignalKind::ExitIntent, Some(Via::Top)), None, 1_500),
            &cfg,
        );
        assert_eq!((s.signals.dead_clicks, s.signals.exit_intents), (1, 1));
        assert_eq!(s.signals.last_ms, 1_500);
        assert_eq!(
            s.sequence.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            ["signal:dead_click", "signal:exit_intent"]
        );
        let back = UserState::decode(&s.encode()).unwrap();
        assert_eq!(back.signals, s.signals);
        assert_eq!(back, s);
        // A checkpoint written before signals existed: the same bytes without the section.
        let old = postcard::to_allocvec(&s).unwrap();
        assert!(old.len() < s.encode().len());
        let back = UserState::decode(&old).unwrap();
        assert_eq!(back.signals, Signals::default());
        assert_eq!(back.events, s.events);
        // A damaged signals section is refused like any damaged record.
        let mut bad = s.encode();
        bad.truncate(old.len() + 1);
        assert!(UserState::decode(&bad).is_none());
        // A new session starts from no signals.
        let mut e = ev(sig(SignalKind::ErrorClick, None), Some("p"), 2_000);
        e.session = "s2".into();
        s.apply(&e, &cfg);
        assert_eq!(
            (
                s.signals.dead_clicks,
                s.signals.exit_intents,
                s.signals.error_clicks
            ),
            (0, 0, 1)
        );
    }

    #[test]
    fn compact_maps_and_shared_strings_encode_like_the_btreemaps_and_strings_they_replaced() {
        // States checkpointed before (BTreeMap<String, _>, String) decode unchanged.
        let old: BTreeMap<String, (String, BTreeMap<String, String>)> = [
            (
                "offer".to_string(),
                ("d1".to_string(), [("code".into(), "READ15".into())].into()),
            ),
            ("cta".to_string(), ("d2".to_string(), BTreeMap::new())),
        ]
        .into();
        let bytes = postcard::to_allocvec(&old).unwrap();
        let new: SmallMap<Sym, (String, SmallMap<Sym, Sym>)> =
            postcard::from_bytes(&bytes).unwrap();
        assert_eq!(
            new.get("offer").unwrap().1.get("code").unwrap().as_str(),
            "READ15"
        );
        assert_eq!(postcard::to_allocvec(&new).unwrap(), bytes);
        let old_targets: BTreeMap<String, TargetStats> = [(
            "img".to_string(),
            TargetStats {
                clicks: 3,
                ..TargetStats::default()
            },
        )]
        .into();
        let bytes = postcard::to_allocvec(&old_targets).unwrap();
        let targets: SmallMap<Sym, TargetStats> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(targets.get("img").unwrap().clicks, 3);
        assert_eq!(postcard::to_allocvec(&targets).unwrap(), bytes);
        // And the export (JSON) keeps its shape: objects keyed by name.
        assert_eq!(
            serde_json::to_value(&targets).unwrap(),
            serde_json::to_value(&old_targets).unwrap()
        );
    }

    /// Found by the `records` fuzz target: a map whose length prefix says 2^32 entries made
    /// `LiteMap` reserve them all and the process abort; now the record is refused.
    #[test]
    fn a_damaged_length_prefix_is_refused_not_allocated() {
        let record = [
            0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
            0x0, 0x3f, 0x3d, 0x7d, 0x7d, 0x79, 0x75, 0x7d, 0x7d, 0x0, 0x3f, 0x3d, 0x7d, 0x8c, 0x7d,
            0x79, 0x75, 0x7d, 0x7d, 0x7d, 0x7d, 0x7d, 0x7d, 0x4b, 0x7d, 0x0, 0x0, 0xf7, 0xff, 0xff,
            0xff, 0x0, 0x0, 0x7d,
        ];
        assert!(UserState::decode(&record).is_none());
        // A map claiming u32::MAX entries with none following.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<SmallMap<Sym, TargetStats>>(&bytes).is_err());
        // Out-of-order entries still decode (inserted in place), duplicates keep the last.
        let bytes = postcard::to_allocvec(&vec![("b", 2u32), ("a", 1), ("b", 3)]).unwrap();
        let mut as_map = bytes.clone();
        as_map[0] = 3; // the same bytes read as a map of 3 entries
        let m: SmallMap<String, u32> = postcard::from_bytes(&as_map).unwrap();
        assert_eq!(
            m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            [("a", 1), ("b", 3)]
        );
    }
}
