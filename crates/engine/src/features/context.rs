//! The context vector of a decision: what a bandit and the click model see of a user's
//! behaviour and context when a slot is decided. One documented layout, used by the engine
//! (from [`UserState`]), by the behaviour simulator and by every exported log.
//!
//! | # | name         | value                                                   |
//! |---|--------------|---------------------------------------------------------|
//! | 0 | `depth`      | deepest scroll on the page, 0–100 % mapped to 0–1       |
//! | 1 | `velocity`   | `ln(1+|v|)/ln(1+200)`, v = scroll velocity in %/s, ≤ 1  |
//! | 2 | `hovers`     | `ln(1+n)/ln(1+50)`, n = hovers started, ≤ 1             |
//! | 3 | `hover_time` | `ln(1+s)/ln(1+60)`, s = total hover seconds, ≤ 1        |
//! | 4 | `dwell_time` | `ln(1+s)/ln(1+300)`, s = total dwell seconds, ≤ 1       |
//! | 5 | `clicks`     | `ln(1+n)/ln(1+20)`, n = clicks, ≤ 1                     |
//! | 6 | `events`     | `ln(1+n)/ln(1+500)`, n = events so far, ≤ 1             |
//! | 7 | `mobile`     | 1 if the device is a phone                              |
//! | 8 | `tablet`     | 1 if the device is a tablet                             |
//! | 9 | `hour_sin`   | `sin(2π·h/24)` of the local hour (0 when unknown)       |
//! |10 | `hour_cos`   | `cos(2π·h/24)` of the local hour (0 when unknown)       |
//! |11 | `returning`  | 1 if this is not the user's first session               |
//! |12 | `frustration`| the session's frustration score, 0–1 (`features::signals`) |
//! |13 | `intent`     | the session's intent score, 0–1                          |
//!
//! Fixed squashing (not scaling fitted on data) keeps a vector's meaning stable across model
//! versions and runs: a model trained last week reads today's vectors the same way. The layout
//! only ever grows at the end: a decision logged under an earlier layout (the first 12
//! features, before behavioural signals) reads as this one with the new features at 0
//! ([`upgrade`]), and a model trained on an earlier layout reads the prefix it knows.

use crate::features::UserState;

/// Number of context features.
pub const CONTEXT_DIM: usize = 14;

/// The lengths of every layout so far, oldest first (the last is [`CONTEXT_DIM`]).
pub const LAYOUT_DIMS: [usize; 2] = [12, CONTEXT_DIM];

/// Feature names, in vector order.
pub const CONTEXT_FEATURES: [&str; CONTEXT_DIM] = [
    "depth",
    "velocity",
    "hovers",
    "hover_time",
    "dwell_time",
    "clicks",
    "events",
    "mobile",
    "tablet",
    "hour_sin",
    "hour_cos",
    "returning",
    "frustration",
    "intent",
];

/// The raw quantities the vector is computed from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContextInputs {
    /// Deepest scroll, 0–100 (%), as the SDK reports it.
    pub max_depth: f64,
    /// Scroll velocity as the SDK reports it (% of the page per second; sign ignored).
    pub velocity: f64,
    pub hover_count: u32,
    pub hover_ms: i64,
    pub dwell_ms: i64,
    pub clicks: u32,
    pub events: u64,
    /// `mobile`, `tablet`, `desktop` or anything else (treated as desktop).
    pub device: String,
    /// Local hour 0–23, if known.
    pub hour: Option<u8>,
    /// Sessions seen so far (including the current one).
    pub sessions: u32,
    /// The session's frustration and intent scores (0–1).
    pub frustration: f64,
    pub intent: f64,
}

impl ContextInputs {
    /// The inputs of a user's current state at server time `now_ms` (ongoing hovers and
    /// dwells count up to now).
    pub fn of(state: &UserState, now_ms: i64) -> ContextInputs {
        let mut c = ContextInputs {
            max_depth: state.scroll.max_depth,
            velocity: state.scroll.velocity,
            events: state.events,
            device: state.context.device.to_string(),
            hour: state.context.hour,
            sessions: state.sessions,
            frustration: state.signals.frustration(),
            intent: state.signals.intent(state.scroll.max_depth),
            ..ContextInputs::default()
        };
        for t in state.targets.values() {
            c.hover_count += t.hover_count;
            c.hover_ms += t.hover_ms + t.hovering.map_or(0, |o| o.elapsed(now_ms));
            c.dwell_ms += t.dwell_ms + t.in_view.map_or(0, |o| o.elapsed(now_ms));
            c.clicks += t.clicks;
        }
        c
    }
}

fn squash(x: f64, scale: f64) -> f32 {
    ((1.0 + x.max(0.0)).ln() / (1.0 + scale).ln()).min(1.0) as f32
}

/// The context vector (length [`CONTEXT_DIM`], every entry in [-1, 1]).
pub fn vector(c: &ContextInputs) -> Vec<f32> {
    let (hs, hc) = match c.hour {
        Some(h) => {
            let a = std::f64::consts::TAU * f64::from(h.min(23)) / 24.0;
            (a.sin() as f32, a.cos() as f32)
        }
        None => (0.0, 0.0),
    };
    let device = c.device.to_ascii_lowercase();
    vec![
        (c.max_depth / 100.0).clamp(0.0, 1.0) as f32,
        squash(c.velocity.abs(), 200.0),
        squash(f64::from(c.hover_count), 50.0),
        squash(c.hover_ms as f64 / 1000.0, 60.0),
        squash(c.dwell_ms as f64 / 1000.0, 300.0),
        squash(f64::from(c.clicks), 20.0),
        squash(c.events as f64, 500.0),
        f32::from(u8::from(device == "mobile")),
        f32::from(u8::from(device == "tablet")),
        hs,
        hc,
        f32::from(u8::from(c.sessions > 1)),
        c.frustration.clamp(0.0, 1.0) as f32,
        c.intent.clamp(0.0, 1.0) as f32,
    ]
}

/// Brings a context logged under an earlier layout to the current one (the features added
/// since at 0). Returns false, leaving it as it is, when its length is no layout's.
pub fn upgrade(ctx: &mut Vec<f32>) -> bool {
    if ctx.len() == CONTEXT_DIM {
        return true;
    }
    if LAYOUT_DIMS.contains(&ctx.len()) {
        ctx.resize(CONTEXT_DIM, 0.0);
        return true;
    }
    false
}

/// The context vector of a user's current state at `now_ms`.
pub fn of_state(state: &UserState, now_ms: i64) -> Vec<f32> {
    vector(&ContextInputs::of(state, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_ranges() {
        let v = vector(&ContextInputs::default());
        assert_eq!(v.len(), CONTEXT_DIM);
        assert_eq!(v, vec![0.0; CONTEXT_DIM]);
        let big = ContextInputs {
            max_depth: 300.0,
            velocity: -1e9,
            hover_count: u32::MAX,
            hover_ms: i64::MAX,
            dwell_ms: i64::MAX,
            clicks: u32::MAX,
            events: u64::MAX,
            device: "Mobile".into(),
            hour: Some(6),
            sessions: 2,
            frustration: 7.0,
            intent: 0.25,
        };
        let v = vector(&big);
        assert!(v.iter().all(|x| (-1.0..=1.0).contains(x)), "{v:?}");
        assert_eq!((v[12], v[13]), (1.0, 0.25));
        assert_eq!(&v[..7], &[1.0; 7]);
        assert_eq!((v[7], v[8], v[11]), (1.0, 0.0, 1.0));
        assert!(
            (v[9] - 1.0).abs() < 1e-6 && v[10].abs() < 1e-6,
            "06:00 is a quarter turn"
        );
    }

    #[test]
    fn an_earlier_layout_reads_with_the_new_features_at_zero() {
        let mut old = vec![0.5; 12];
        assert!(upgrade(&mut old));
        assert_eq!(old.len(), CONTEXT_DIM);
        assert_eq!(&old[..12], &[0.5; 12]);
        assert_eq!(&old[12..], &[0.0, 0.0]);
        let mut current = vec![0.25; CONTEXT_DIM];
        assert!(upgrade(&mut current));
        assert_eq!(current, vec![0.25; CONTEXT_DIM]);
        let mut other = vec![0.0; 5];
        assert!(!upgrade(&mut other));
        assert_eq!(other.len(), 5);
    }

    #[test]
    fn monotone_in_activity() {
        let a = vector(&ContextInputs {
            hover_ms: 1_000,
            ..ContextInputs::default()
        });
        let b = vector(&ContextInputs {
            hover_ms: 10_000,
            ..ContextInputs::default()
        });
        assert!(b[3] > a[3] && a[3] > 0.0);
    }
}
