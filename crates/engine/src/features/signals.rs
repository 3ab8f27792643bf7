//! Behavioural signals of the current session: what the SDK's `signal` events report (rage,
//! dead and error clicks, hesitation, exit intent, reading speed, excessive scrolling, quick
//! backs, engaged time, device motion), kept as counters, and the two scores derived from them
//! — frustration and intent — with the weights documented in the README ("Behavioural
//! signals"). Rules read them as `user.signals`, segments and the learning loop's context use
//! the scores.
//!
//! A new session starts from zero. Pure data and arithmetic, like the rest of `features`.

use serde::{Deserialize, Serialize};

use trimtab_wire::{MotionState, Signal, SignalKind, Via};

/// Engaged time a single `engagement` report may add (the SDK reports every 15 s).
pub const MAX_ENGAGEMENT_REPORT_MS: u64 = 60_000;

/// Weight of the newest `reading` report in the reading-speed average.
pub const READING_ALPHA: f32 = 0.5;

/// Frustration weights: `frustration = 1 − exp(−Σ wᵢ·nᵢ)` over the session's counts.
pub const FRUSTRATION_WEIGHTS: FrustrationWeights = FrustrationWeights {
    rage_click: 0.6,
    error_click: 0.6,
    dead_click: 0.3,
    excessive_scroll: 0.3,
    quick_back: 0.4,
};

/// Intent weights: `intent = (1 − exp(−x)) · exit_factor^exit_intents` with
/// `x = engaged·min(engaged minutes, 5) + hesitation·min(hesitations, 4) + depth·max depth/100`.
pub const INTENT_WEIGHTS: IntentWeights = IntentWeights {
    engaged_minute: 0.8,
    hesitation: 0.4,
    depth: 1.0,
    exit_factor: 0.7,
};

#[derive(Debug, Clone, Copy)]
pub struct FrustrationWeights {
    pub rage_click: f64,
    pub error_click: f64,
    pub dead_click: f64,
    pub excessive_scroll: f64,
    pub quick_back: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct IntentWeights {
    pub engaged_minute: f64,
    pub hesitation: f64,
    pub depth: f64,
    pub exit_factor: f64,
}

/// The session's signals (reset when a new session starts). Compact — every cached user holds
/// one (40 bytes): counts saturate at 65 535 per session, durations at 49 days.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    /// Rage-click bursts (each ≥ 3 clicks within 1 s in a small radius).
    pub rage_clicks: u16,
    pub dead_clicks: u16,
    pub error_clicks: u16,
    pub hesitations: u16,
    pub exit_intents: u16,
    pub excessive_scrolls: u16,
    pub quick_backs: u16,
    /// How the last exit intent showed: `top`, `flick`, `hidden` (None before any).
    pub exit_via: Option<Via>,
    /// The device's motion (None: unknown).
    pub motion: Option<MotionState>,
    /// Summed duration of the hesitations.
    pub hesitation_ms: u32,
    /// Visible engaged time.
    pub engaged_ms: u32,
    /// Reading speed, words per minute (average of the reports, newest weighted
    /// [`READING_ALPHA`]); 0 before any.
    pub reading_wpm: f32,
    /// Front-back tilt in degrees (0 flat … 180), the last reported.
    pub tilt: f32,
    /// Server time of the last signal (0: none this session).
    pub last_ms: i64,
}

impl Signals {
    /// Counts one signal, received at `now_ms`.
    pub fn apply(&mut self, s: &Signal, now_ms: i64) {
        fn one(n: &mut u16) {
            *n = n.saturating_add(1);
        }
        fn add(total: &mut u32, ms: u64) {
            *total = total.saturating_add(u32::try_from(ms).unwrap_or(u32::MAX));
        }
        self.last_ms = now_ms;
        match s.kind {
            SignalKind::RageClick => one(&mut self.rage_clicks),
            SignalKind::DeadClick => one(&mut self.dead_clicks),
            SignalKind::ErrorClick => one(&mut self.error_clicks),
            SignalKind::Hesitation => {
                one(&mut self.hesitations);
                add(&mut self.hesitation_ms, s.duration_ms.unwrap_or(0));
            }
            SignalKind::ExitIntent => {
                one(&mut self.exit_intents);
                self.exit_via = s.via;
            }
            SignalKind::Reading => {
                let wpm = s.wpm.unwrap_or(0.0) as f32;
                self.reading_wpm = if self.reading_wpm == 0.0 {
                    wpm
                } else {
                    READING_ALPHA * wpm + (1.0 - READING_ALPHA) * self.reading_wpm
                };
            }
            SignalKind::ExcessiveScroll => one(&mut self.excessive_scrolls),
            SignalKind::QuickBack => one(&mut self.quick_backs),
            SignalKind::Engagement => {
                let ms = s.duration_ms.unwrap_or(0).min(MAX_ENGAGEMENT_REPORT_MS);
                add(&mut self.engaged_ms, ms);
            }
            SignalKind::Motion => {
                self.motion = s.state;
                if let Some(t) = s.tilt {
                    self.tilt = t as f32;
                }
            }
        }
    }

    /// How the last exit intent showed ("" before any).
    pub fn exit_via_str(&self) -> &'static str {
        self.exit_via.map_or("", Via::as_str)
    }

    /// The device's motion ("" unknown).
    pub fn motion_str(&self) -> &'static str {
        self.motion.map_or("", MotionState::as_str)
    }

    /// How frustrated the session looks, 0–1 ([`FRUSTRATION_WEIGHTS`]).
    pub fn frustration(&self) -> f64 {
        let w = FRUSTRATION_WEIGHTS;
        let x = w.rage_click * f64::from(self.rage_clicks)
            + w.error_click * f64::from(self.error_clicks)
            + w.dead_click * f64::from(self.dead_clicks)
            + w.excessive_scroll * f64::from(self.excessive_scrolls)
            + w.quick_back * f64::from(self.quick_backs);
        1.0 - (-x).exp()
    }

    /// How engaged and intent on the page the session looks, 0–1 ([`INTENT_WEIGHTS`]);
    /// `max_depth` is the page's deepest scroll, in percent.
    pub fn intent(&self, max_depth: f64) -> f64 {
        let w = INTENT_WEIGHTS;
        let minutes = (f64::from(self.engaged_ms) / 60_000.0).min(5.0);
        let x = w.engaged_minute * minutes
            + w.hesitation * f64::from(self.hesitations.min(4))
            + w.depth * (max_depth / 100.0).clamp(0.0, 1.0);
        (1.0 - (-x).exp()) * w.exit_factor.powi(self.exit_intents.min(10) as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trimtab_wire::{MotionState, Via};

    fn sig(kind: SignalKind) -> Signal {
        Signal {
            kind,
            count: None,
            duration_ms: None,
            via: None,
            wpm: None,
            state: None,
            tilt: None,
        }
    }

    #[test]
    fn each_kind_counts_where_it_belongs() {
        let mut s = Signals::default();
        s.apply(
            &Signal {
                count: Some(5),
                ..sig(SignalKind::RageClick)
            },
            10,
        );
        s.apply(&sig(SignalKind::DeadClick), 11);
        s.apply(&sig(SignalKind::ErrorClick), 12);
        let hes = Signal {
            duration_ms: Some(1500),
            via: Some(Via::Hover),
            ..sig(SignalKind::Hesitation)
        };
        s.apply(&hes, 13);
        s.apply(
            &Signal {
                duration_ms: Some(2500),
                ..hes
            },
            14,
        );
        s.apply(
            &Signal {
                via: Some(Via::Top),
                ..sig(SignalKind::ExitIntent)
            },
            15,
        );
        s.apply(
            &Signal {
                count: Some(4),
                ..sig(SignalKind::ExcessiveScroll)
            },
            16,
        );
        s.apply(
            &Signal {
                duration_ms: Some(3000),
                ..sig(SignalKind::QuickBack)
            },
            17,
        );
        s.apply(
            &Signal {
                duration_ms: Some(15_000),
                ..sig(SignalKind::Engagement)
            },
            18,
        );
        // One report adds at most a minute, however long it claims.
        s.apply(
            &Signal {
                duration_ms: Some(3_600_000),
                ..sig(SignalKind::Engagement)
            },
            19,
        );
        s.apply(
            &Signal {
                wpm: Some(200.0),
                ..sig(SignalKind::Reading)
            },
            20,
        );
        s.apply(
            &Signal {
                wpm: Some(300.0),
                ..sig(SignalKind::Reading)
            },
            21,
        );
        s.apply(
            &Signal {
                state: Some(MotionState::Walking),
                tilt: Some(40.0),
                ..sig(SignalKind::Motion)
            },
            22,
        );
        s.apply(
            &Signal {
                state: Some(MotionState::Still),
                ..sig(SignalKind::Motion)
            },
            23,
        );
        assert_eq!((s.rage_clicks, s.dead_clicks, s.error_clicks), (1, 1, 1));
        assert_eq!((s.hesitations, s.hesitation_ms), (2, 4000));
        assert_eq!((s.exit_intents, s.exit_via_str()), (1, "top"));
        assert_eq!((s.excessive_scrolls, s.quick_backs), (1, 1));
        assert_eq!(u64::from(s.engaged_ms), 15_000 + MAX_ENGAGEMENT_REPORT_MS);
        assert_eq!(s.reading_wpm, 250.0);
        // A motion report without tilt keeps the last tilt.
        assert_eq!((s.motion_str(), s.tilt), ("still", 40.0));
        assert_eq!(s.last_ms, 23);
        // Counts saturate instead of wrapping; so do durations.
        s.dead_clicks = u16::MAX;
        s.apply(&sig(SignalKind::DeadClick), 24);
        assert_eq!(s.dead_clicks, u16::MAX);
        s.hesitation_ms = u32::MAX - 10;
        s.apply(&hes, 25);
        assert_eq!(s.hesitation_ms, u32::MAX);
        assert!(
            std::mem::size_of::<Signals>() <= 40,
            "{}",
            std::mem::size_of::<Signals>()
        );
    }

    #[test]
    fn frustration_follows_its_documented_weights() {
        let mut s = Signals::default();
        assert_eq!(s.frustration(), 0.0);
        s.rage_clicks = 1;
        assert!((s.frustration() - (1.0 - (-0.6f64).exp())).abs() < 1e-12);
        assert!(s.frustration() > 0.45 && s.frustration() < 0.46);
        s.dead_clicks = 1;
        // One rage burst and one dead click: 1 − e^−0.9 ≈ 0.593.
        assert!(
            (s.frustration() - 0.5934).abs() < 1e-3,
            "{}",
            s.frustration()
        );
        s.error_clicks = 1;
        s.excessive_scrolls = 1;
        s.quick_backs = 1;
        let x: f64 = 0.6 + 0.3 + 0.6 + 0.3 + 0.4;
        assert!((s.frustration() - (1.0 - (-x).exp())).abs() < 1e-12);
        s.rage_clicks = 1000;
        assert!(s.frustration() <= 1.0 && s.frustration() > 0.999);
    }

    #[test]
    fn intent_grows_with_engagement_and_depth_and_falls_with_exit_intent() {
        let mut s = Signals::default();
        assert_eq!(s.intent(0.0), 0.0);
        // Read to 75% for a minute: x = 0.8 + 0.75.
        s.engaged_ms = 60_000;
        assert!((s.intent(75.0) - (1.0 - (-1.55f64).exp())).abs() < 1e-12);
        let before = s.intent(75.0);
        s.hesitations = 1;
        assert!(s.intent(75.0) > before);
        let engaged = s.intent(75.0);
        s.exit_intents = 1;
        assert!((s.intent(75.0) - engaged * 0.7).abs() < 1e-12);
        // Capped: five minutes and four hesitations count at most; depth at most 100%.
        s.exit_intents = 0;
        s.engaged_ms = 3_600_000;
        s.hesitations = 100;
        let x: f64 = 0.8 * 5.0 + 0.4 * 4.0 + 1.0;
        assert!((s.intent(250.0) - (1.0 - (-x).exp())).abs() < 1e-12);
    }
}
