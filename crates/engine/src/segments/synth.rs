//! Seeded synthetic users of known behaviour types, for tests, benchmarks and demos.
//!
//! Each user is a real [`UserState`] (targets with hover/dwell/click stats, an interaction
//! sequence, sessions, device and hour, the session's signals) drawn from one of three behaviour types — quick
//! responders, deep explorers, selective clickers — or from a broad "noise" distribution, and
//! turned into a feature vector by [`feature_vector`]. Every user has its own RNG seeded from
//! `(seed, index)`, so data sets are identical for any thread count and generated in parallel.
//! No I/O, no clock (the fixed [`NOW_MS`] is "now").

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::features::{feature_vector, DIM, FEATURE_NAMES};
use super::Matrix;
use crate::features::state::TargetStats;
use crate::features::{Sym, UserState};

/// The "now" of generated users (2026-01-01T00:00:00Z).
pub const NOW_MS: i64 = 1_767_225_600_000;
const DAY_MS: i64 = 86_400_000;

/// The behaviour type a synthetic user is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserKind {
    /// Fast scroll, short dwell, early clicks on some items, frequent visits, mostly mobile, evenings.
    QuickResponder,
    /// Slow, deep scroll, long dwell and hovers on many items, rare clicks, desktop.
    DeepExplorer,
    /// Looks at few items and clicks every one of them; little hovering, mid-day.
    SelectiveClicker,
    /// Anything: every statistic drawn from a broad range.
    Noise,
}

impl UserKind {
    /// Ground-truth label: 0, 1, 2 for the three types, −1 for noise.
    pub fn label(self) -> i32 {
        match self {
            UserKind::QuickResponder => 0,
            UserKind::DeepExplorer => 1,
            UserKind::SelectiveClicker => 2,
            UserKind::Noise => -1,
        }
    }
}

/// Per-type generation parameters.
struct Spec {
    depth: (f64, f64),
    velocity: (f64, f64),
    targets: (u32, u32),
    p_dwell: f64,
    /// Median dwell per target, seconds.
    dwell_s: f64,
    p_hover: f64,
    hover_s: f64,
    p_click: f64,
    sessions: (u32, u32),
    /// (P(mobile), P(tablet)); the rest desktop.
    device: (f64, f64),
    hour: (f64, f64),
    /// Visible engaged time of the session, seconds (median).
    engaged_s: f64,
    /// Hesitations, at most.
    hesitations: u16,
}

fn spec(kind: UserKind, rng: &mut StdRng) -> Spec {
    match kind {
        UserKind::QuickResponder => Spec {
            depth: (35.0, 8.0),
            velocity: (90.0, 12.0),
            targets: (6, 10),
            p_dwell: 0.9,
            dwell_s: 0.8,
            p_hover: 0.15,
            hover_s: 0.3,
            p_click: 0.35,
            sessions: (5, 9),
            device: (0.8, 0.1),
            hour: (20.0, 2.0),
            engaged_s: 20.0,
            hesitations: 0,
        },
        UserKind::DeepExplorer => Spec {
            depth: (92.0, 4.0),
            velocity: (5.0, 1.5),
            targets: (10, 16),
            p_dwell: 1.0,
            dwell_s: 40.0,
            p_hover: 0.8,
            hover_s: 3.0,
            p_click: 0.03,
            sessions: (1, 2),
            device: (0.05, 0.05),
            hour: (10.0, 2.0),
            engaged_s: 180.0,
            hesitations: 3,
        },
        UserKind::SelectiveClicker => Spec {
            depth: (60.0, 6.0),
            velocity: (25.0, 4.0),
            targets: (2, 3),
            p_dwell: 1.0,
            dwell_s: 8.0,
            p_hover: 0.05,
            hover_s: 0.8,
            p_click: 1.0,
            sessions: (2, 3),
            device: (0.3, 0.0),
            hour: (14.0, 2.0),
            engaged_s: 60.0,
            hesitations: 1,
        },
        UserKind::Noise => Spec {
            depth: (rng.random_range(0.0..100.0), 1.0),
            velocity: (rng.random_range(0.0..150.0), 1.0),
            targets: (0, 20),
            p_dwell: rng.random_range(0.0..1.0),
            dwell_s: (rng.random_range(0.1f64..120.0)).max(0.1),
            p_hover: rng.random_range(0.0..1.0),
            hover_s: rng.random_range(0.1..10.0),
            p_click: rng.random_range(0.0..1.0),
            sessions: (1, 20),
            device: (0.33, 0.33),
            hour: (rng.random_range(0.0..24.0), 6.0),
            engaged_s: rng.random_range(1.0..300.0),
            hesitations: 4,
        },
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// One synthetic user of `kind`, drawn with its own RNG.
pub fn user(kind: UserKind, rng: &mut StdRng) -> UserState {
    let sp = spec(kind, rng);
    let mut s = UserState::default();
    let g = |rng: &mut StdRng, (m, sd): (f64, f64)| m + sd * normal(rng);
    s.scroll.max_depth = g(rng, sp.depth).clamp(0.0, 100.0);
    s.scroll.depth = s.scroll.max_depth * 0.8;
    s.scroll.velocity = g(rng, sp.velocity).abs() * if rng.random_bool(0.8) { 1.0 } else { -1.0 };
    let n_targets = rng.random_range(sp.targets.0..=sp.targets.1);
    let mut seq: Vec<String> = vec!["page_view:/article".into()];
    let mut clicks_seq = Vec::new();
    for mark in [25, 50, 75, 100] {
        if s.scroll.max_depth >= f64::from(mark) {
            seq.push(format!("scroll:{mark}"));
        }
    }
    for t in 0..n_targets {
        let name = format!("t{t}");
        let mut st = TargetStats {
            last_ms: NOW_MS - 1_000,
            ..TargetStats::default()
        };
        if rng.random_bool(sp.p_dwell) {
            st.dwell_count = rng.random_range(1..=2);
            st.dwell_ms = (sp.dwell_s * (0.3 * normal(rng)).exp() * 1000.0) as i64;
            seq.push(format!("dwell:{name}"));
        }
        if rng.random_bool(sp.p_hover) {
            st.hover_count = 1;
            st.hover_ms = (sp.hover_s * (0.3 * normal(rng)).exp() * 1000.0) as i64;
            seq.push(format!("hover:{name}"));
        }
        if rng.random_bool(sp.p_click) {
            st.clicks = 1;
            clicks_seq.push(format!("click:{name}"));
        }
        s.targets.insert(Sym::from(name), st);
    }
    // Quick responders click early (before most dwells); others click at the end.
    if kind == UserKind::QuickResponder {
        let at = seq.len().min(2);
        seq.splice(at..at, clicks_seq);
    } else {
        seq.extend(clicks_seq);
    }
    let keep = seq.len().saturating_sub(32);
    s.sequence = seq.into_iter().skip(keep).map(Sym::from).collect();
    s.sessions = rng.random_range(sp.sessions.0..=sp.sessions.1);
    s.events = 1 + s.sequence.len() as u64;
    s.first_seen_ms = NOW_MS - 7 * DAY_MS;
    s.last_seen_ms = NOW_MS - 1_000;
    let r: f64 = rng.random();
    s.context.device = if r < sp.device.0 {
        "mobile"
    } else if r < sp.device.0 + sp.device.1 {
        "tablet"
    } else {
        "desktop"
    }
    .into();
    s.context.hour = Some(g(rng, sp.hour).rem_euclid(24.0) as u8 % 24);
    let sig = &mut s.signals;
    sig.engaged_ms = (sp.engaged_s * (0.3 * normal(rng)).exp() * 1000.0) as u32;
    sig.hesitations = rng.random_range(0..=sp.hesitations);
    sig.hesitation_ms = u32::from(sig.hesitations) * 2_000;
    s
}

/// A labelled synthetic population.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Raw feature vectors (one row per user, columns [`FEATURE_NAMES`]).
    pub raw: Matrix,
    pub kinds: Vec<UserKind>,
    /// Ground truth per user ([`UserKind::label`]).
    pub truth: Vec<i32>,
}

impl Dataset {
    pub fn names() -> Vec<String> {
        FEATURE_NAMES.iter().map(|s| s.to_string()).collect()
    }
}

fn user_rng(seed: u64, i: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The kind of user `i`: noise with probability `noise_frac`, else the three types in
/// proportions 35 / 35 / 30.
fn kind_of(rng: &mut StdRng, noise_frac: f64) -> UserKind {
    if rng.random_bool(noise_frac.clamp(0.0, 1.0)) {
        return UserKind::Noise;
    }
    let r: f64 = rng.random();
    if r < 0.35 {
        UserKind::QuickResponder
    } else if r < 0.70 {
        UserKind::DeepExplorer
    } else {
        UserKind::SelectiveClicker
    }
}

/// `n` users (a share `noise_frac` of them noise), deterministic in `seed`. Users
/// `0..m` of `dataset(n, …, seed)` are the same for every `n ≥ m`, so growing `n` adds users.
pub fn dataset(n: usize, noise_frac: f64, seed: u64) -> Dataset {
    let rows: Vec<(UserKind, [f32; DIM])> = (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let mut rng = user_rng(seed, i);
            let kind = kind_of(&mut rng, noise_frac);
            (kind, feature_vector(&user(kind, &mut rng), NOW_MS))
        })
        .collect();
    let kinds: Vec<UserKind> = rows.iter().map(|r| r.0).collect();
    let truth = kinds.iter().map(|k| k.label()).collect();
    let vecs: Vec<[f32; DIM]> = rows.into_iter().map(|r| r.1).collect();
    Dataset {
        raw: Matrix::from_rows(&vecs),
        kinds,
        truth,
    }
}

/// The user states of users `0..n` of [`dataset`] (same seed ⇒ same users).
pub fn user_states(n: usize, noise_frac: f64, seed: u64) -> Vec<(UserKind, UserState)> {
    (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let mut rng = user_rng(seed, i);
            let kind = kind_of(&mut rng, noise_frac);
            (kind, user(kind, &mut rng))
        })
        .collect()
}
