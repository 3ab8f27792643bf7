//! Behavioural feature vectors of one user and robust scaling.
//!
//! [`feature_vector`] turns a [`UserState`] into [`DIM`] numbers (names and units in
//! [`FEATURE_NAMES`] / [`FEATURE_UNITS`]). It is pure arithmetic and cheap (one pass over the
//! user's targets and sequence), so a shard thread may call it per event for online assignment;
//! the segmenter calls it in bulk on its own rayon pool. Durations and rates are `ln(1 + x)`
//! because they are heavy-tailed: a user with an hour of dwell must not stretch the scale that
//! separates 5 s from 30 s.
//!
//! [`RobustScaler`] centres every column on its median and divides by its inter-quartile range,
//! fitted on the population and then applied to new points, so a handful of extreme users do not
//! move everybody else.
//!
//! The sequence's length is not a feature: it is a ring buffer capped at `sequence_len` (32),
//! so it saturates for any active user and only repeats the activity that the totals carry.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Matrix;
use crate::features::UserState;

/// Number of features per user.
pub const DIM: usize = 17;

/// Name of each dimension of [`feature_vector`], in order.
pub const FEATURE_NAMES: [&str; DIM] = [
    "scroll_max_depth",
    "scroll_speed",
    "hover_total",
    "hover_mean",
    "hover_max",
    "dwell_total",
    "dwell_mean",
    "dwell_max",
    "click_selectivity",
    "seq_distinct_types",
    "seq_click_share",
    "seq_hover_share",
    "session_frequency",
    "device_class",
    "hour_sin",
    "hour_cos",
    "intent",
];

/// Unit (and meaning) of each dimension of [`feature_vector`], in order.
pub const FEATURE_UNITS: [&str; DIM] = [
    "% of page (0-100): deepest scroll position",
    "ln(1 + |%/s|): smoothed scroll velocity (EWMA), absolute",
    "ln(1 + s): total hover time over all targets, ongoing hovers included",
    "ln(1 + s): mean hover time per hovered target",
    "ln(1 + s): longest total hover on one target",
    "ln(1 + s): total in-view dwell time over all targets, ongoing included",
    "ln(1 + s): mean dwell time per dwelled target",
    "ln(1 + s): longest total dwell on one target",
    "clicks per element seen (hovered, in view or clicked); 0 when none seen",
    "count (0-10): distinct event types in the recent sequence",
    "fraction (0-1): share of clicks in the recent sequence",
    "fraction (0-1): share of hovers in the recent sequence",
    "ln(1 + sessions/day) since first seen (at least one day)",
    "ordinal: 0 desktop or unknown, 1 tablet, 2 mobile",
    "sin(2*pi*hour/24) of the local hour; 0 when unknown",
    "cos(2*pi*hour/24) of the local hour; 0 when unknown",
    "score (0-1): the session's intent (engaged time, hesitations, depth; lowered by exit intent)",
];

const DAY_MS: f64 = 86_400_000.0;

/// The behavioural feature vector of one user at `now_ms` (server clock, ms since the epoch).
/// Ongoing hovers and dwells count up to `now_ms`. Always finite.
pub fn feature_vector(state: &UserState, now_ms: i64) -> [f32; DIM] {
    let ln1p = |x: f64| x.max(0.0).ln_1p();
    let mut f = [0f32; DIM];
    f[0] = state.scroll.max_depth.clamp(0.0, 100.0) as f32;
    f[1] = ln1p(state.scroll.velocity.abs()) as f32;

    let (mut hover_total, mut hover_max, mut hovered) = (0i64, 0i64, 0u32);
    let (mut dwell_total, mut dwell_max, mut dwelled) = (0i64, 0i64, 0u32);
    let (mut clicks, mut seen) = (0u64, 0u32);
    for t in state.targets.values() {
        let h = t.hover_ms + t.hovering.map_or(0, |o| o.elapsed(now_ms));
        let d = t.dwell_ms + t.in_view.map_or(0, |o| o.elapsed(now_ms));
        let was_hovered = t.hover_count > 0 || t.hovering.is_some();
        let was_dwelled = t.dwell_count > 0 || t.in_view.is_some();
        if was_hovered {
            hovered += 1;
            hover_total += h;
            hover_max = hover_max.max(h);
        }
        if was_dwelled {
            dwelled += 1;
            dwell_total += d;
            dwell_max = dwell_max.max(d);
        }
        if was_hovered || was_dwelled || t.clicks > 0 {
            seen += 1;
        }
        clicks += u64::from(t.clicks);
    }
    let secs = |ms: i64| ms as f64 / 1000.0;
    let mean = |total: i64, n: u32| {
        if n == 0 {
            0.0
        } else {
            secs(total) / f64::from(n)
        }
    };
    f[2] = ln1p(secs(hover_total)) as f32;
    f[3] = ln1p(mean(hover_total, hovered)) as f32;
    f[4] = ln1p(secs(hover_max)) as f32;
    f[5] = ln1p(secs(dwell_total)) as f32;
    f[6] = ln1p(mean(dwell_total, dwelled)) as f32;
    f[7] = ln1p(secs(dwell_max)) as f32;
    f[8] = if seen == 0 {
        0.0
    } else {
        (clicks as f64 / f64::from(seen)) as f32
    };

    // Sequence entries are "type:detail" (see `UserState::apply`).
    let mut types: Vec<&str> = Vec::with_capacity(10);
    let (mut seq_clicks, mut seq_hovers) = (0usize, 0usize);
    for e in &state.sequence {
        let ty = e.split_once(':').map_or(e.as_str(), |(t, _)| t);
        match ty {
            "click" => seq_clicks += 1,
            "hover" => seq_hovers += 1,
            _ => {}
        }
        if !types.contains(&ty) {
            types.push(ty);
        }
    }
    let len = state.sequence.len().max(1) as f32;
    f[9] = types.len() as f32;
    f[10] = seq_clicks as f32 / len;
    f[11] = seq_hovers as f32 / len;

    let days = if state.first_seen_ms > 0 {
        ((now_ms - state.first_seen_ms) as f64 / DAY_MS).max(1.0)
    } else {
        1.0
    };
    f[12] = ln1p(f64::from(state.sessions) / days) as f32;
    f[13] = device_class(&state.context.device);
    if let Some(h) = state.context.hour {
        let a = std::f32::consts::TAU * f32::from(h % 24) / 24.0;
        f[14] = a.sin();
        f[15] = a.cos();
    }
    f[16] = state.signals.intent(state.scroll.max_depth) as f32;
    f
}

/// Ordinal device class: 0 desktop or unknown, 1 tablet, 2 mobile.
pub fn device_class(device: &str) -> f32 {
    let d = device.to_ascii_lowercase();
    if d.contains("tablet") || d.contains("ipad") {
        1.0
    } else if d.contains("mobile") || d.contains("phone") {
        2.0
    } else {
        0.0
    }
}

/// Median / inter-quartile-range scaler: `(x - median) / IQR` per column.
///
/// A column whose IQR is zero (e.g. a mostly-constant device class) falls back to its standard
/// deviation, and to 1 when that is zero too, so no column is blown up or divided by zero.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustScaler {
    pub center: Vec<f32>,
    pub scale: Vec<f32>,
}

impl RobustScaler {
    /// Fits medians and IQRs on the rows of `x` (columns in parallel).
    pub fn fit(x: &Matrix) -> RobustScaler {
        let stats: Vec<(f32, f32)> = (0..x.d)
            .into_par_iter()
            .map(|j| {
                let mut col: Vec<f32> = (0..x.n).map(|i| x.row(i)[j]).collect();
                if col.is_empty() {
                    return (0.0, 1.0);
                }
                let q1 = quantile(&mut col, 0.25);
                let med = quantile(&mut col, 0.5);
                let q3 = quantile(&mut col, 0.75);
                let mut scale = q3 - q1;
                if scale <= f32::EPSILON * med.abs().max(1.0) {
                    let n = col.len() as f64;
                    let mean = col.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
                    let var = col
                        .iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / n;
                    scale = var.sqrt() as f32;
                }
                if scale <= f32::EPSILON || !scale.is_finite() {
                    scale = 1.0;
                }
                (med, scale)
            })
            .collect();
        RobustScaler {
            center: stats.iter().map(|s| s.0).collect(),
            scale: stats.iter().map(|s| s.1).collect(),
        }
    }

    pub fn dim(&self) -> usize {
        self.center.len()
    }

    /// Scales one point into `out` (same length as the fitted data's rows).
    pub fn transform_row(&self, x: &[f32], out: &mut [f32]) {
        for (j, o) in out.iter_mut().enumerate() {
            *o = (x[j] - self.center[j]) / self.scale[j];
        }
    }

    /// Scales one point.
    pub fn transform_vec(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.dim()];
        self.transform_row(x, &mut out);
        out
    }

    /// Scales every row of `x` (in parallel).
    pub fn transform(&self, x: &Matrix) -> Matrix {
        let mut data = vec![0f32; x.data.len()];
        let d = x.d.max(1);
        data.par_chunks_mut(d)
            .zip(x.data.par_chunks(d))
            .for_each(|(o, r)| self.transform_row(r, o));
        Matrix {
            n: x.n,
            d: x.d,
            data,
        }
    }

    /// Maps a scaled point back to raw units.
    pub fn inverse_row(&self, z: &[f32]) -> Vec<f32> {
        z.iter()
            .enumerate()
            .map(|(j, &v)| v * self.scale[j] + self.center[j])
            .collect()
    }
}

/// Linear-interpolated quantile (`q` in 0..=1) of a non-empty slice; reorders the slice.
pub fn quantile(v: &mut [f32], q: f64) -> f32 {
    let pos = q * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = (pos - lo as f64) as f32;
    let (_, &mut a, rest) = v.select_nth_unstable_by(lo, f32::total_cmp);
    if frac == 0.0 || rest.is_empty() {
        return a;
    }
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    a + frac * (b - a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::state::TargetStats;
    use crate::features::Ongoing;

    #[test]
    fn vector_from_state() {
        let mut s = UserState::default();
        s.scroll.max_depth = 80.0;
        s.scroll.velocity = -20.0;
        s.first_seen_ms = 0;
        s.sessions = 2;
        s.context.device = "mobile".into();
        s.context.hour = Some(6);
        s.targets.insert(
            "img".into(),
            TargetStats {
                hover_ms: 2_000,
                hover_count: 1,
                dwell_ms: 9_000,
                dwell_count: 1,
                clicks: 1,
                ..TargetStats::default()
            },
        );
        s.targets.insert(
            "cta".into(),
            TargetStats {
                in_view: Some(Ongoing {
                    started_ms: 10_000,
                    last_seen_ms: 10_000,
                }),
                ..TargetStats::default()
            },
        );
        for e in ["page_view:/", "hover:img", "click:img", "dwell:cta"] {
            s.sequence.push_back(e.into());
        }
        let f = feature_vector(&s, 13_000);
        assert_eq!(f[0], 80.0);
        assert!((f[1] - 21f32.ln()).abs() < 1e-6);
        assert!((f[2] - 3f32.ln()).abs() < 1e-6);
        // Dwell: 9 s done + 3 s ongoing = 12 s over two targets.
        assert!((f[5] - 13f32.ln()).abs() < 1e-6);
        assert!((f[6] - 7f32.ln()).abs() < 1e-6);
        assert!((f[7] - 10f32.ln()).abs() < 1e-6);
        assert_eq!(f[8], 0.5);
        assert_eq!((f[9], f[10], f[11]), (4.0, 0.25, 0.25));
        assert!((f[12] - 3f32.ln()).abs() < 1e-6);
        assert_eq!(f[13], 2.0);
        assert!((f[14] - 1.0).abs() < 1e-6 && f[15].abs() < 1e-6);
        // No signals this session: the depth alone gives intent 1 − e^−0.8; an exit intent
        // lowers it.
        assert!((f[16] - (1.0 - (-0.8f32).exp())).abs() < 1e-6);
        s.signals.exit_intents = 1;
        let f = feature_vector(&s, 13_000);
        assert!((f[16] - 0.7 * (1.0 - (-0.8f32).exp())).abs() < 1e-6);
        assert!(feature_vector(&UserState::default(), 0)
            .iter()
            .all(|v| v.is_finite()));
    }

    #[test]
    fn robust_scaler_median_iqr_and_fallback() {
        // Column 0: 1..=5 (median 3, IQR 2); column 1 constant except one value.
        let rows: Vec<f32> = (1..=5)
            .flat_map(|i| [i as f32, if i == 5 { 10.0 } else { 0.0 }])
            .collect();
        let x = Matrix::new(5, 2, rows).unwrap();
        let s = RobustScaler::fit(&x);
        assert_eq!(s.center, vec![3.0, 0.0]);
        assert_eq!(s.scale[0], 2.0);
        assert!((s.scale[1] - 4.0).abs() < 1e-5); // std of [0,0,0,0,10]
        let z = s.transform_vec(&[5.0, 0.0]);
        assert_eq!(z, vec![1.0, 0.0]);
        assert_eq!(s.inverse_row(&z), vec![5.0, 0.0]);
    }
}
