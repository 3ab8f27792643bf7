//! A seeded synthetic audience: user types with their own behaviour, context and ground truth.
//!
//! Every simulated user ([`SimUser`]) has a [`Profile`] — a [`UserType`], a [`Device`], a local
//! hour and whether they are returning — and a behaviour script: the ordered events a browser
//! running `static/trimtab.js` would send for them (page view, scroll progression with the
//! SDK's velocities, hover and dwell `start`/`heartbeat`/`end` with durations, clicks, mouse
//! summaries), with realistic timing. Each user is generated from their own RNG stream derived
//! from `(seed, index)`, so a user is the same whatever the number of users, threads or order.
//!
//! # User types (behaviour)
//! | type | scrolling | hovers (desktop) | dwells | clicks | visit |
//! |---|---|---|---|---|---|
//! | `quick` (quick responders) | 3–6 fast steps (≈25–60 %/s), max depth ≈30–70 % | 1–2 short (0.2–0.8 s) on `cta`/`price` | one short on `hero` | usually one within seconds | 6–15 s |
//! | `deep` (deep explorers) | 12–25 slow steps (≈1–4 %/s), back-scrolls, max depth 80–100 % | 3+ long (1.5–6 s) on content | 2+ long (5–20 s) on sections | sometimes on content | 1–4 min |
//! | `selective` (selective clickers) | 6–12 medium steps (≈3–10 %/s), max depth 50–85 % | 2–4 medium (0.6–2.5 s), hesitating on `cta`/`pricing` | 1–3 medium (3–10 s) | rarely | 20–60 s |
//!
//! Phones and tablets are touch devices: like the SDK, they send no hovers and no mouse
//! summaries. Device mix, hour distribution and returning share depend on the type (see
//! [`draw_profile`]). Returning users carry a short earlier session (1–6 days before) in their
//! script, so the server counts two sessions for them.
//!
//! # Ground truth (click and conversion probabilities)
//! `P(click | user, variant) = σ(base[type] + effect[type][v] + device[v] + hour_band[v] +
//! returning[v])` with σ the logistic function and `v` the variant's kind ([`VariantKind`], from
//! its name; unknown names are neutral = control):
//!
//! | term | control | urgent | social | detailed |
//! |---|---|---|---|---|
//! | quick (base −1.7) | 0 | **+1.0** | +0.3 | −0.7 |
//! | deep (base −2.1) | 0 | −0.6 | +0.3 | **+1.1** |
//! | selective (base −2.8) | 0 | −0.8 | **+1.6** | +0.1 |
//! | mobile | 0 | +0.4 | 0 | −0.9 |
//! | tablet | 0 | 0 | +0.1 | +0.3 |
//! | morning 06–11 | 0 | +0.25 | 0 | 0 |
//! | evening 18–23 | 0 | −0.2 | +0.35 | +0.25 |
//! | night 00–05 | 0 | −0.3 | 0 | +0.3 |
//! | returning | 0 | +0.3 | −0.3 | 0 |
//!
//! So the best variant differs by type (quick → urgent, deep → detailed, selective → social)
//! and context moves it (a deep explorer on a phone in the evening is best served `social`).
//! `P(conversion | click) = σ(cbase[type] + ceffect[v] − 0.3·mobile)` with cbase quick −1.2,
//! deep −0.6, selective 0.0 and ceffect urgent −0.2, social +0.1, detailed +0.3;
//! [`GroundTruth::conversion_probability`] is the unconditional `P(click)·P(conversion|click)`.
//!
//! For the default mix (quick 0.4, deep 0.3, selective 0.3) and the default candidates, the
//! expected click rate is ≈0.315 when every user gets their best variant (oracle) against ≈0.157
//! for a uniformly random choice, and ≈0.200 for the best single variant for everyone
//! (`urgent`). Per type (oracle / uniform): quick 0.415 / 0.208, deep 0.279 / 0.153,
//! selective 0.220 / 0.092; see [`expected_rates`] and the unit tests, which pin these numbers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The behavioural user types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserType {
    /// Quick responders: fast shallow scrolls, short hovers, click quickly.
    Quick,
    /// Deep explorers: slow deep scrolls, long dwells and hovers on content.
    Deep,
    /// Selective clickers: medium reading, rarely click except for social proof.
    Selective,
}

impl UserType {
    pub const ALL: [UserType; 3] = [UserType::Quick, UserType::Deep, UserType::Selective];

    pub fn name(self) -> &'static str {
        match self {
            UserType::Quick => "quick",
            UserType::Deep => "deep",
            UserType::Selective => "selective",
        }
    }
}

impl fmt::Display for UserType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for UserType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "quick" => Ok(UserType::Quick),
            "deep" => Ok(UserType::Deep),
            "selective" => Ok(UserType::Selective),
            other => Err(format!(
                "unknown user type {other:?} (expected quick, deep or selective)"
            )),
        }
    }
}

/// Shares of the user types in the audience (normalised when used).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mix {
    pub quick: f64,
    pub deep: f64,
    pub selective: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            quick: 0.4,
            deep: 0.3,
            selective: 0.3,
        }
    }
}

impl Mix {
    /// The share of `t`, normalised.
    pub fn share(&self, t: UserType) -> f64 {
        let total = self.quick + self.deep + self.selective;
        let w = match t {
            UserType::Quick => self.quick,
            UserType::Deep => self.deep,
            UserType::Selective => self.selective,
        };
        w / total
    }

    /// The type whose cumulative share interval contains `u ∈ [0, 1)`.
    pub fn pick(&self, u: f64) -> UserType {
        let mut acc = 0.0;
        for t in UserType::ALL {
            acc += self.share(t);
            if u < acc {
                return t;
            }
        }
        // Rounding: the last type with a positive share.
        UserType::ALL
            .into_iter()
            .rev()
            .find(|t| self.share(*t) > 0.0)
            .unwrap_or(UserType::Quick)
    }
}

impl FromStr for Mix {
    type Err = String;
    /// `quick=0.4,deep=0.3,selective=0.3`; types left out get 0; weights need not sum to 1.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = Mix {
            quick: 0.0,
            deep: 0.0,
            selective: 0.0,
        };
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("mix entry {part:?} is not type=weight"))?;
            let w: f64 = v
                .trim()
                .parse()
                .map_err(|_| format!("mix weight {v:?} is not a number"))?;
            if !w.is_finite() || w < 0.0 {
                return Err(format!("mix weight {w} must be ≥ 0"));
            }
            match k.parse::<UserType>()? {
                UserType::Quick => m.quick = w,
                UserType::Deep => m.deep = w,
                UserType::Selective => m.selective = w,
            }
        }
        if m.quick + m.deep + m.selective <= 0.0 {
            return Err("the mix needs at least one positive weight".into());
        }
        Ok(m)
    }
}

/// Device class, as the SDK reports it in `context.device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    Mobile,
    Desktop,
    Tablet,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Mobile => "mobile",
            Device::Desktop => "desktop",
            Device::Tablet => "tablet",
        }
    }
    /// Touch devices send no hovers and no mouse summaries.
    pub fn is_touch(self) -> bool {
        self != Device::Desktop
    }
}

/// Who a simulated user is: what the ground truth depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub kind: UserType,
    pub device: Device,
    /// Local hour, 0–23.
    pub hour: u8,
    /// Has an earlier session.
    pub returning: bool,
}

/// One event of a behaviour script, before ids, timestamps and context are added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScriptEvent {
    /// Offset from the current page view, ms (negative for the earlier session).
    pub at_ms: i64,
    /// 0 = the earlier session of a returning user, 1 = the current one.
    pub session: u8,
    /// Wire event type (`page_view`, `scroll`, …).
    pub kind: &'static str,
    pub target: Option<String>,
    pub props: Value,
}

/// A simulated user: profile, browser context and behaviour script.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimUser {
    /// Position in the audience (0-based).
    pub index: usize,
    /// The audience seed it was drawn from.
    pub seed: u64,
    pub profile: Profile,
    pub browser: &'static str,
    pub viewport: (u32, u32),
    pub tz_offset_min: i32,
    pub language: &'static str,
    pub page: String,
    /// Ordered by `at_ms`.
    pub script: Vec<ScriptEvent>,
}

/// splitmix64: decorrelates per-user seeds.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn user_rng(seed: u64, index: usize, stream: u64) -> StdRng {
    StdRng::seed_from_u64(mix64(mix64(seed ^ stream) ^ index as u64))
}

const BEHAVIOUR_STREAM: u64 = 0x6265_6861_7669_6f75;
const OUTCOME_STREAM: u64 = 0x6f75_7463_6f6d_6573;

fn weighted(rng: &mut StdRng, w: &[f64]) -> usize {
    let total: f64 = w.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, x) in w.iter().enumerate() {
        if u < *x {
            return i;
        }
        u -= x;
    }
    w.len() - 1
}

/// Relative frequency of each local hour, per type.
const HOURS_QUICK: [f64; 24] = [
    1.0, 0.5, 0.3, 0.2, 0.2, 0.5, 2.0, 5.0, 6.0, 4.0, 3.0, 3.0, 6.0, 5.0, 3.0, 3.0, 4.0, 6.0, 6.0,
    4.0, 3.0, 2.0, 2.0, 1.5,
];
const HOURS_DEEP: [f64; 24] = [
    3.0, 2.0, 1.0, 0.5, 0.3, 0.3, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.5, 2.5, 2.5, 2.5, 3.0, 4.0,
    6.0, 8.0, 8.0, 7.0, 5.0,
];
const HOURS_SELECTIVE: [f64; 24] = [
    0.3, 0.2, 0.1, 0.1, 0.1, 0.3, 1.0, 3.0, 5.0, 7.0, 8.0, 8.0, 6.0, 7.0, 8.0, 8.0, 7.0, 5.0, 3.0,
    2.0, 1.5, 1.0, 0.7, 0.5,
];

/// Draws a profile: type from the mix, then a type-dependent device (quick: mobile 60 %,
/// desktop 30 %, tablet 10 %; deep: desktop 60 %, mobile 25 %, tablet 15 %; selective:
/// desktop 45 %, mobile 45 %, tablet 10 %), local hour (quick: commute and lunch peaks; deep:
/// evenings; selective: office hours) and returning share (quick 30 %, deep 50 %, selective 40 %).
pub fn draw_profile(rng: &mut StdRng, mix: &Mix) -> Profile {
    let kind = mix.pick(rng.random());
    let (devices, hours, returning): (&[f64; 3], &[f64; 24], f64) = match kind {
        UserType::Quick => (&[0.6, 0.3, 0.1], &HOURS_QUICK, 0.3),
        UserType::Deep => (&[0.25, 0.6, 0.15], &HOURS_DEEP, 0.5),
        UserType::Selective => (&[0.45, 0.45, 0.1], &HOURS_SELECTIVE, 0.4),
    };
    let device = [Device::Mobile, Device::Desktop, Device::Tablet][weighted(rng, devices)];
    let hour = weighted(rng, hours) as u8;
    let returning = rng.random::<f64>() < returning;
    Profile {
        kind,
        device,
        hour,
        returning,
    }
}

/// The page every simulated visit is on.
pub const PAGE: &str = "/product/trail-runner";

/// Generates user `index` of the audience `(seed, mix)`.
pub fn generate_user(seed: u64, index: usize, mix: &Mix) -> SimUser {
    let mut rng = user_rng(seed, index, BEHAVIOUR_STREAM);
    let profile = draw_profile(&mut rng, mix);
    let (browser, viewport) = match profile.device {
        Device::Mobile => (
            ["safari", "chrome"][rng.random_range(0..2)],
            [(390, 844), (412, 915), (375, 667)][rng.random_range(0..3)],
        ),
        Device::Tablet => (
            ["safari", "chrome"][rng.random_range(0..2)],
            [(820, 1180), (768, 1024)][rng.random_range(0..2)],
        ),
        Device::Desktop => (
            ["chrome", "firefox", "edge", "safari"][weighted(&mut rng, &[6.0, 2.0, 1.0, 1.0])],
            [(1440, 900), (1920, 1080), (1366, 768), (2560, 1440)][rng.random_range(0..4)],
        ),
    };
    let tz_offset_min = [0, 60, 120, -300, -240, -480, 330, 540][rng.random_range(0..8)];
    let language = ["en-US", "en-GB", "de-DE", "fr-FR", "es-ES"][rng.random_range(0..5)];
    let script = Builder::new(&mut rng, profile).build();
    SimUser {
        index,
        seed,
        profile,
        browser,
        viewport,
        tz_offset_min,
        language,
        page: PAGE.to_string(),
        script,
    }
}

/// Users `0..n` of the audience `(seed, mix)`.
pub fn generate(seed: u64, n: usize, mix: &Mix) -> Vec<SimUser> {
    (0..n).map(|i| generate_user(seed, i, mix)).collect()
}

/// Builds a behaviour script as the SDK would emit it.
struct Builder<'a> {
    rng: &'a mut StdRng,
    p: Profile,
    out: Vec<ScriptEvent>,
    session: u8,
    depth: f64,
    max_depth: f64,
    /// (time, depth) of the last scroll event sent (the SDK's velocity reference).
    sent: Option<(i64, f64)>,
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl<'a> Builder<'a> {
    fn new(rng: &'a mut StdRng, p: Profile) -> Self {
        Builder {
            rng,
            p,
            out: Vec::new(),
            session: 1,
            depth: 0.0,
            max_depth: 0.0,
            sent: None,
        }
    }

    fn push(&mut self, at: i64, kind: &'static str, target: Option<&str>, props: Value) {
        self.out.push(ScriptEvent {
            at_ms: at,
            session: self.session,
            kind,
            target: target.map(str::to_string),
            props,
        });
    }

    fn page_view(&mut self, at: i64) {
        self.depth = 0.0;
        self.max_depth = 0.0;
        self.sent = None;
        self.push(
            at,
            "page_view",
            None,
            json!({"path": PAGE, "title": "Trail Runner 3 — lightweight trail shoe"}),
        );
    }

    /// A scroll to `depth` (%) at `at`, with the SDK's velocity (%/s since the last one sent).
    fn scroll(&mut self, at: i64, depth: f64) {
        let depth = r1(depth.clamp(0.0, 100.0));
        if (depth - self.depth).abs() < 0.5 {
            return;
        }
        let v = match self.sent {
            None => 0.0,
            Some((t, d)) => (depth - d) * 1000.0 / ((at - t).max(1) as f64),
        };
        self.depth = depth;
        self.max_depth = self.max_depth.max(depth);
        self.sent = Some((at, depth));
        let max = self.max_depth;
        self.push(
            at,
            "scroll",
            None,
            json!({"depth": depth, "max_depth": max, "velocity": r1(v).clamp(-10_000.0, 10_000.0)}),
        );
    }

    /// Fast or slow scrolling from the current depth to `to` in `steps` steps of `dt` ms each.
    fn scroll_run(&mut self, mut at: i64, to: f64, steps: usize, dt: (i64, i64)) -> i64 {
        let from = self.depth;
        for i in 1..=steps {
            at += self.rng.random_range(dt.0..=dt.1);
            let target = from + (to - from) * i as f64 / steps as f64;
            let jitter = self.rng.random_range(-1.5..1.5);
            self.scroll(at, target + jitter);
        }
        at
    }

    /// A hover: the SDK emits `start` 120 ms after pointer-over, heartbeats every 500 ms and
    /// `end` with the total duration. Touch devices have no hovers.
    fn hover(&mut self, at: i64, target: &str, dur: i64) -> i64 {
        if self.p.device.is_touch() || dur <= 120 {
            return at;
        }
        self.push(
            at + 120,
            "hover",
            Some(target),
            json!({"phase": "start", "duration_ms": 0}),
        );
        let mut k = 500;
        while k < dur {
            self.push(
                at + k,
                "hover",
                Some(target),
                json!({"phase": "heartbeat", "duration_ms": k}),
            );
            k += 500;
        }
        self.push(
            at + dur,
            "hover",
            Some(target),
            json!({"phase": "end", "duration_ms": dur}),
        );
        at + dur
    }

    /// A dwell (element ≥ 50 % in view): `start`, heartbeats every 2 s, `end`.
    fn dwell(&mut self, at: i64, target: &str, dur: i64) -> i64 {
        let ratio = r1(self.rng.random_range(0.5..1.0));
        self.push(
            at,
            "dwell",
            Some(target),
            json!({"phase": "start", "duration_ms": 0, "visible_ratio": ratio}),
        );
        let mut k = 2000;
        while k < dur {
            self.push(
                at + k,
                "dwell",
                Some(target),
                json!({"phase": "heartbeat", "duration_ms": k, "visible_ratio": ratio}),
            );
            k += 2000;
        }
        self.push(
            at + dur,
            "dwell",
            Some(target),
            json!({"phase": "end", "duration_ms": dur, "visible_ratio": ratio}),
        );
        at + dur
    }

    fn click(&mut self, at: i64, target: &str) -> i64 {
        self.push(at, "click", Some(target), json!({}));
        at
    }

    /// Mouse summaries every 5 s on desktop (the SDK's timer), speed in px/s.
    fn mouse(&mut self, from: i64, to: i64, speed: (f64, f64)) {
        if self.p.device.is_touch() {
            return;
        }
        let mut t = from + 5000;
        while t <= to {
            let s = self.rng.random_range(speed.0..speed.1).round();
            let moving = self.rng.random_range(400..2500);
            self.push(
                t,
                "mouse",
                None,
                json!({"speed": s, "path_px": (s * moving as f64 / 1000.0).round(), "idle_ms": 5000 - moving}),
            );
            t += 5000;
        }
    }

    /// The SDK's behavioural signals over the visit (drawn after everything else, so adding
    /// them left every earlier draw of a seed as it was): engaged time every 15 s, a reading
    /// speed for readers, hesitation on the call to action, leaving through the top (or a flick
    /// up on touch) for quick visitors, and now and then a frustrated burst of clicks.
    fn signals(&mut self, end: i64) {
        let sig = |kind: &str| json!({ "kind": kind });
        let mut t = 15_000;
        while t <= end {
            self.push(
                t,
                "signal",
                None,
                json!({"kind": "engagement", "duration_ms": 15_000}),
            );
            t += 15_000;
        }
        let (wpm, p_hesitate, p_exit) = match self.p.kind {
            UserType::Deep => (self.rng.random_range(180.0..320.0), 0.2, 0.05),
            UserType::Selective => (self.rng.random_range(300.0..600.0), 0.5, 0.15),
            UserType::Quick => (self.rng.random_range(700.0..1500.0), 0.1, 0.5),
        };
        if end > 8_000 {
            self.push(
                end / 2,
                "signal",
                None,
                json!({"kind": "reading", "wpm": r1(wpm)}),
            );
        }
        if self.rng.random::<f64>() < p_hesitate {
            let at = self.rng.random_range(1_000..end.max(1_001));
            let via = if self.p.device.is_touch() {
                "idle"
            } else {
                "hover"
            };
            let d = self.rng.random_range(1_500..4_000);
            self.push(
                at,
                "signal",
                Some("cta"),
                json!({"kind": "hesitation", "duration_ms": d, "via": via}),
            );
        }
        if self.rng.random::<f64>() < 0.06 {
            let at = self.rng.random_range(1_000..end.max(1_001));
            let count = self.rng.random_range(3..=6);
            self.push(
                at,
                "signal",
                Some("price"),
                json!({"kind": "rage_click", "count": count}),
            );
            let mut s = sig("dead_click");
            if self.rng.random::<f64>() < 0.3 {
                s = sig("error_click");
            }
            self.push(at + 1_200, "signal", Some("price"), s);
        }
        if self.rng.random::<f64>() < p_exit {
            let via = if self.p.device.is_touch() {
                "flick"
            } else {
                "top"
            };
            self.push(
                end,
                "signal",
                None,
                json!({"kind": "exit_intent", "via": via}),
            );
        }
    }

    fn pick<'s>(&mut self, from: &[&'s str]) -> &'s str {
        from[self.rng.random_range(0..from.len())]
    }

    fn earlier_session(&mut self) {
        self.session = 0;
        let start =
            -self.rng.random_range(1..=6i64) * 86_400_000 - self.rng.random_range(0..3_600_000i64);
        self.page_view(start);
        let steps = self.rng.random_range(2..=4);
        let to = self.rng.random_range(20.0..60.0);
        let t = self.scroll_run(start, to, steps, (600, 2000));
        let d = self.rng.random_range(2000..10_000);
        self.dwell(t + 200, "hero", d);
        self.session = 1;
    }

    fn quick(&mut self) -> i64 {
        let hero_until = self.rng.random_range(1500..4000i64);
        let burst_at = hero_until - 300;
        let steps = self.rng.random_range(3..=6);
        let to = self.rng.random_range(30.0..65.0);
        let mut t = self.scroll_run(burst_at, to, steps, (250, 400));
        self.dwell(150, "hero", hero_until - 150);
        if self.rng.random::<f64>() < 0.8 {
            t += self.rng.random_range(500..2500);
            let target = self.pick(&["product-link", "nav-deals", "hero-button"]);
            self.click(t, target);
        }
        for _ in 0..self.rng.random_range(1..=2) {
            t += self.rng.random_range(300..1500);
            let target = self.pick(&["cta", "price"]);
            let d = self.rng.random_range(200..800);
            t = self.hover(t, target, d);
        }
        if self.rng.random::<f64>() < 0.5 {
            let to = (self.depth + self.rng.random_range(10.0..25.0)).min(100.0);
            let n = self.rng.random_range(2..=3);
            t = self.scroll_run(t, to, n, (250, 400));
        }
        t + self.rng.random_range(500..2000)
    }

    fn deep(&mut self) -> i64 {
        let hero = self.rng.random_range(3000..8000);
        let mut t = self.dwell(0, "hero", hero);
        let steps = self.rng.random_range(12..=25);
        let goal = self.rng.random_range(82.0..100.0);
        let sections = ["article", "specs", "reviews", "gallery", "faq"];
        let hover_targets = ["gallery", "specs", "reviews", "pricing"];
        let (mut hovers, mut dwells) = (0, 0);
        for i in 1..=steps {
            t += self.rng.random_range(1500..5000);
            let target = goal * i as f64 / steps as f64;
            if self.rng.random::<f64>() < 0.1 && self.depth > 15.0 {
                let back = self.depth - self.rng.random_range(3.0..8.0);
                self.scroll(t, back);
                t += self.rng.random_range(1500..4000);
            }
            let jitter = self.rng.random_range(-2.0..2.0);
            self.scroll(t, target + jitter);
            if self.rng.random::<f64>() < 0.35 {
                let s = sections[(i + dwells) % sections.len()];
                let d = self.rng.random_range(5000..20_000);
                t = self.dwell(t + 200, s, d);
                dwells += 1;
            }
            if self.rng.random::<f64>() < 0.25 {
                let h = self.pick(&hover_targets);
                let d = self.rng.random_range(1500..6000);
                t = self.hover(t + 300, h, d);
                hovers += 1;
            }
            if self.rng.random::<f64>() < 0.08 {
                t += self.rng.random_range(500..2000);
                let c = self.pick(&["gallery-next", "specs-tab", "reviews-more"]);
                self.click(t, c);
            }
        }
        while dwells < 2 {
            let s = self.pick(&sections);
            let d = self.rng.random_range(5000..20_000);
            t = self.dwell(t + 500, s, d);
            dwells += 1;
        }
        while hovers < 3 {
            let h = self.pick(&hover_targets);
            let d = self.rng.random_range(1500..6000);
            t = self.hover(t + 400, h, d);
            hovers += 1;
        }
        t + self.rng.random_range(1000..4000)
    }

    fn selective(&mut self) -> i64 {
        let hero = self.rng.random_range(1000..3000);
        let mut t = self.dwell(0, "hero", hero);
        let steps = self.rng.random_range(6..=12);
        let goal = self.rng.random_range(50.0..85.0);
        let n_hovers = self.rng.random_range(2..=4);
        let n_dwells = self.rng.random_range(1..=3);
        let (mut hovers, mut dwells) = (0, 0);
        for i in 1..=steps {
            t += self.rng.random_range(800..2500);
            self.scroll(t, goal * i as f64 / steps as f64);
            let left = (steps - i + 1) as f64;
            if hovers < n_hovers && self.rng.random::<f64>() < (n_hovers - hovers) as f64 / left {
                let h = self.pick(&["cta", "pricing", "reviews", "cta"]);
                let d = self.rng.random_range(600..2500);
                t = self.hover(t + 300, h, d);
                hovers += 1;
            }
            if dwells < n_dwells && self.rng.random::<f64>() < (n_dwells - dwells) as f64 / left {
                let s = self.pick(&["reviews", "pricing", "specs"]);
                let d = self.rng.random_range(3000..10_000);
                t = self.dwell(t + 200, s, d);
                dwells += 1;
            }
        }
        if self.rng.random::<f64>() < 0.1 {
            t += self.rng.random_range(1000..3000);
            self.click(t, "reviews-more");
        }
        t + self.rng.random_range(800..3000)
    }

    fn build(mut self) -> Vec<ScriptEvent> {
        if self.p.returning {
            self.earlier_session();
        } else {
            // A first visit: consent is granted in the banner, then tracking starts.
            self.push(
                0,
                "custom",
                None,
                json!({"name": "consent", "personalization": true}),
            );
        }
        self.page_view(0);
        let (end, speed) = match self.p.kind {
            UserType::Quick => (self.quick(), (900.0, 1600.0)),
            UserType::Deep => (self.deep(), (150.0, 450.0)),
            UserType::Selective => (self.selective(), (300.0, 700.0)),
        };
        self.mouse(0, end, speed);
        self.signals(end);
        let mut out = self.out;
        out.sort_by_key(|e| e.at_ms);
        out
    }
}

/// What happened after the decision, for one user and one shown variant. The draws come from
/// the user's own outcome stream, with common random numbers across variants (a user who
/// clicks variant A with probability 0.3 and B with 0.5 clicks B whenever they click A).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    pub clicked: bool,
    pub converted: bool,
    /// Offsets after the impression, ms.
    pub click_after_ms: i64,
    pub conversion_after_ms: i64,
}

impl SimUser {
    /// Session id `s` (0 = the earlier one of a returning user, 1 = the current one).
    pub fn session_id(&self, s: u8) -> String {
        format!("sim{}-u{}-s{}", self.seed, self.index, s)
    }

    /// The id of event `n` (unique per user and per run seed; the post-decision events use
    /// `imp`, `clk` and `conv`).
    pub fn event_id(&self, n: &str) -> String {
        format!("sim{}-u{}-{}", self.seed, self.index, n)
    }

    /// Script length: the offset of the last event of the current session, ms.
    pub fn duration_ms(&self) -> i64 {
        self.script.last().map_or(0, |e| e.at_ms.max(0))
    }

    /// The `context` object of this user's events.
    pub fn context_json(&self) -> Value {
        json!({
            "page": self.page,
            "device": self.profile.device.name(),
            "browser": self.browser,
            "viewport_w": self.viewport.0,
            "viewport_h": self.viewport.1,
            "hour": self.profile.hour,
            "tz_offset_min": self.tz_offset_min,
            "language": self.language,
        })
    }

    fn wire(
        &self,
        id: String,
        session: u8,
        kind: &str,
        target: Option<&str>,
        props: Value,
        ts: i64,
    ) -> Value {
        let mut v = json!({
            "id": id,
            "type": kind,
            "session": self.session_id(session),
            "ts": ts,
            "props": props,
            "context": self.context_json(),
            "consent": {"analytics": true, "personalization": true},
        });
        if let Some(t) = target {
            v["target"] = t.into();
        }
        v
    }

    /// Script event `n` in its wire shape, `ts = base_ts + at_ms`.
    pub fn wire_event(&self, n: usize, base_ts: i64) -> Value {
        let e = &self.script[n];
        self.wire(
            self.event_id(&n.to_string()),
            e.session,
            e.kind,
            e.target.as_deref(),
            e.props.clone(),
            base_ts + e.at_ms,
        )
    }

    /// The whole script in wire shape.
    pub fn wire_events(&self, base_ts: i64) -> Vec<Value> {
        (0..self.script.len())
            .map(|n| self.wire_event(n, base_ts))
            .collect()
    }

    /// The impression of the decided slot (as the SDK sends it when the slot is seen).
    pub fn impression_event(&self, slot: &str, variant: &str, decision: &str, ts: i64) -> Value {
        self.wire(
            self.event_id("imp"),
            1,
            "impression",
            None,
            json!({"slot": slot, "variant": variant, "decision": decision}),
            ts,
        )
    }

    /// A click on the slot, citing the decision.
    pub fn click_event(&self, slot: &str, decision: &str, ts: i64) -> Value {
        self.wire(
            self.event_id("clk"),
            1,
            "click",
            Some(slot),
            json!({"decision": decision}),
            ts,
        )
    }

    /// A conversion attributed to the decision.
    pub fn conversion_event(&self, decision: &str, ts: i64) -> Value {
        self.wire(
            self.event_id("conv"),
            1,
            "conversion",
            None,
            json!({"name": "purchase", "value": 89.0, "decision": decision}),
            ts,
        )
    }

    /// Draws the outcome of showing variant `i` (click, then conversion given the click).
    pub fn outcome(&self, truth: &GroundTruth, i: usize) -> Outcome {
        let mut rng = user_rng(self.seed, self.index, OUTCOME_STREAM);
        let (u_click, u_conv): (f64, f64) = (rng.random(), rng.random());
        let delay = match self.profile.kind {
            UserType::Quick => rng.random_range(800..3000),
            UserType::Deep => rng.random_range(4000..15_000),
            UserType::Selective => rng.random_range(2000..8000),
        };
        let conv_delay = rng.random_range(5000..30_000);
        let clicked = u_click < truth.click_probability(&self.profile, i);
        let converted = clicked && u_conv < truth.conversion_given_click(&self.profile, i);
        Outcome {
            clicked,
            converted,
            click_after_ms: delay,
            conversion_after_ms: delay + conv_delay,
        }
    }
}

/// What a variant is, for the ground truth (from its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VariantKind {
    /// `control` or `default`: the page as it is.
    Control,
    /// `urgent`: a time-limited, act-now call to action.
    Urgent,
    /// `social`: social proof ("2,300 runners bought this").
    Social,
    /// `detailed`: a detailed review / spec summary.
    Detailed,
    /// Any other name: the same effect as control.
    Neutral,
}

impl VariantKind {
    pub fn of(name: &str) -> Self {
        match name.trim().to_ascii_lowercase().as_str() {
            "control" | "default" => VariantKind::Control,
            "urgent" => VariantKind::Urgent,
            "social" => VariantKind::Social,
            "detailed" => VariantKind::Detailed,
            _ => VariantKind::Neutral,
        }
    }

    /// Column of the effect tables (neutral = control).
    fn col(self) -> usize {
        match self {
            VariantKind::Control | VariantKind::Neutral => 0,
            VariantKind::Urgent => 1,
            VariantKind::Social => 2,
            VariantKind::Detailed => 3,
        }
    }
}

/// The default candidates of the simulated slot.
pub fn default_candidates() -> Vec<String> {
    ["control", "urgent", "social", "detailed"]
        .map(String::from)
        .to_vec()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The ground truth for one slot's candidates (see the module doc for the table).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroundTruth {
    pub candidates: Vec<String>,
    pub kinds: Vec<VariantKind>,
}

impl GroundTruth {
    pub fn new(candidates: &[String]) -> Self {
        GroundTruth {
            candidates: candidates.to_vec(),
            kinds: candidates.iter().map(|c| VariantKind::of(c)).collect(),
        }
    }

    /// The index of a candidate by name.
    pub fn index_of(&self, variant: &str) -> Option<usize> {
        self.candidates.iter().position(|c| c == variant)
    }

    /// The click logit of variant `i` for `p`.
    pub fn logit(&self, p: &Profile, i: usize) -> f64 {
        let c = self.kinds[i].col();
        let (base, effect): (f64, [f64; 4]) = match p.kind {
            UserType::Quick => (-1.7, [0.0, 1.0, 0.3, -0.7]),
            UserType::Deep => (-2.1, [0.0, -0.6, 0.3, 1.1]),
            UserType::Selective => (-2.8, [0.0, -0.8, 1.6, 0.1]),
        };
        let device: [f64; 4] = match p.device {
            Device::Mobile => [0.0, 0.4, 0.0, -0.9],
            Device::Tablet => [0.0, 0.0, 0.1, 0.3],
            Device::Desktop => [0.0; 4],
        };
        let hour: [f64; 4] = match p.hour {
            0..=5 => [0.0, -0.3, 0.0, 0.3],
            6..=11 => [0.0, 0.25, 0.0, 0.0],
            18..=23 => [0.0, -0.2, 0.35, 0.25],
            _ => [0.0; 4],
        };
        let returning: [f64; 4] = if p.returning {
            [0.0, 0.3, -0.3, 0.0]
        } else {
            [0.0; 4]
        };
        base + effect[c] + device[c] + hour[c] + returning[c]
    }

    /// `P(click | p, variant i)`.
    pub fn click_probability(&self, p: &Profile, i: usize) -> f64 {
        sigmoid(self.logit(p, i))
    }

    /// `P(click)` of every candidate.
    pub fn click_probabilities(&self, p: &Profile) -> Vec<f64> {
        (0..self.candidates.len())
            .map(|i| self.click_probability(p, i))
            .collect()
    }

    /// `P(conversion | click, p, variant i)`.
    pub fn conversion_given_click(&self, p: &Profile, i: usize) -> f64 {
        let base = match p.kind {
            UserType::Quick => -1.2,
            UserType::Deep => -0.6,
            UserType::Selective => 0.0,
        };
        let effect = [0.0, -0.2, 0.1, 0.3][self.kinds[i].col()];
        let mobile = if p.device == Device::Mobile {
            -0.3
        } else {
            0.0
        };
        sigmoid(base + effect + mobile)
    }

    /// `P(conversion | p, variant i) = P(click) · P(conversion | click)`.
    pub fn conversion_probability(&self, p: &Profile, i: usize) -> f64 {
        self.click_probability(p, i) * self.conversion_given_click(p, i)
    }

    /// The best candidate (highest click probability; first on ties).
    pub fn best(&self, p: &Profile) -> usize {
        argmax(&self.click_probabilities(p))
    }
}

/// Index of the largest value (first on ties; 0 for an empty slice).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Expected click rates of one type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeRates {
    pub share: f64,
    /// Mean click probability of each candidate over this type's users.
    pub per_variant: Vec<f64>,
    /// The candidate best on average for this type.
    pub best_variant: String,
    pub oracle: f64,
    pub uniform: f64,
}

/// Expected click rates of an audience (Monte Carlo over profiles).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rates {
    /// Everyone gets their best variant.
    pub oracle: f64,
    /// A uniformly random variant.
    pub uniform: f64,
    /// The best single variant for everyone (and which one).
    pub best_fixed: f64,
    pub best_fixed_variant: String,
    pub per_type: BTreeMap<String, TypeRates>,
}

/// Expected click rates over `n` profiles drawn from `(seed, mix)`.
pub fn expected_rates(truth: &GroundTruth, mix: &Mix, n: usize, seed: u64) -> Rates {
    let k = truth.candidates.len();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut per: BTreeMap<UserType, (usize, Vec<f64>, f64)> = BTreeMap::new();
    for _ in 0..n {
        let p = draw_profile(&mut rng, mix);
        let probs = truth.click_probabilities(&p);
        let e = per.entry(p.kind).or_insert((0, vec![0.0; k], 0.0));
        e.0 += 1;
        for (s, x) in e.1.iter_mut().zip(&probs) {
            *s += x;
        }
        e.2 += probs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    }
    let n_f = n.max(1) as f64;
    let mut fixed = vec![0.0; k];
    let (mut oracle, mut uniform) = (0.0, 0.0);
    let mut per_type = BTreeMap::new();
    for (t, (count, sums, best_sum)) in per {
        for (f, s) in fixed.iter_mut().zip(&sums) {
            *f += s / n_f;
        }
        oracle += best_sum / n_f;
        uniform += sums.iter().sum::<f64>() / k as f64 / n_f;
        let c = count.max(1) as f64;
        let per_variant: Vec<f64> = sums.iter().map(|s| s / c).collect();
        per_type.insert(
            t.name().to_string(),
            TypeRates {
                share: count as f64 / n_f,
                best_variant: truth.candidates[argmax(&per_variant)].clone(),
                uniform: per_variant.iter().sum::<f64>() / k as f64,
                per_variant,
                oracle: best_sum / c,
            },
        );
    }
    let b = argmax(&fixed);
    Rates {
        oracle,
        uniform,
        best_fixed: fixed[b],
        best_fixed_variant: truth.candidates[b].clone(),
        per_type,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trimtab_wire::{parse_events, EventType, Limits};

    const NOW: i64 = 1_790_000_000_000;

    #[test]
    fn same_seed_same_users_other_seed_other_users() {
        let mix = Mix::default();
        let a = generate(7, 50, &mix);
        assert_eq!(a, generate(7, 50, &mix));
        assert_ne!(a, generate(8, 50, &mix));
        // A user does not depend on how many were drawn before it.
        assert_eq!(generate_user(7, 33, &mix), a[33]);
        let t = GroundTruth::new(&default_candidates());
        let o: Vec<_> = a.iter().map(|u| u.outcome(&t, 1)).collect();
        assert_eq!(o, a.iter().map(|u| u.outcome(&t, 1)).collect::<Vec<_>>());
    }

    #[test]
    fn every_generated_event_validates_with_the_real_parser() {
        let mix = Mix::default();
        let limits = Limits::default();
        let mut kinds = std::collections::BTreeSet::new();
        for u in generate(3, 200, &mix) {
            let end = NOW + u.duration_ms();
            let mut evs = u.wire_events(NOW);
            evs.push(u.impression_event("cta", "urgent", "d1", end + 300));
            evs.push(u.click_event("cta", "d1", end + 900));
            evs.push(u.conversion_event("d1", end + 9000));
            let ids: std::collections::HashSet<_> =
                evs.iter().map(|e| e["id"].to_string()).collect();
            assert_eq!(ids.len(), evs.len(), "ids are unique per user");
            for chunk in evs.chunks(limits.max_batch_events) {
                let parsed = parse_events(chunk.to_vec(), &limits, end + 10_000, "events")
                    .unwrap_or_else(|e| panic!("user {}: {e}", u.index));
                kinds.extend(parsed.iter().map(|i| i.event.kind().as_str()));
                assert!(parsed.iter().all(|i| i.event.consent.personalization));
            }
            // Ordered in time.
            assert!(u.script.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
            if u.profile.device.is_touch() {
                assert!(u
                    .script
                    .iter()
                    .all(|e| e.kind != "hover" && e.kind != "mouse"));
            }
        }
        for k in [
            EventType::PageView,
            EventType::Scroll,
            EventType::Hover,
            EventType::Dwell,
            EventType::Click,
            EventType::Impression,
            EventType::Conversion,
            EventType::Custom,
            EventType::Mouse,
            EventType::Signal,
        ] {
            assert!(kinds.contains(k.as_str()), "{k:?} never generated");
        }
    }

    fn mean_by_type(users: &[SimUser], f: impl Fn(&SimUser) -> f64) -> BTreeMap<UserType, f64> {
        let mut acc: BTreeMap<UserType, (f64, f64)> = BTreeMap::new();
        for u in users {
            let e = acc.entry(u.profile.kind).or_default();
            e.0 += f(u);
            e.1 += 1.0;
        }
        acc.into_iter().map(|(k, (s, n))| (k, s / n)).collect()
    }

    fn max_depth(u: &SimUser) -> f64 {
        u.script
            .iter()
            .filter(|e| e.session == 1 && e.kind == "scroll")
            .map(|e| e.props["depth"].as_f64().unwrap())
            .fold(0.0, f64::max)
    }

    #[test]
    fn types_behave_measurably_differently() {
        let users = generate(11, 600, &Mix::default());
        let depth = mean_by_type(&users, max_depth);
        let (q, d, s) = (UserType::Quick, UserType::Deep, UserType::Selective);
        assert!(
            depth[&d] > depth[&s] + 10.0 && depth[&s] > depth[&q] + 5.0,
            "{depth:?}"
        );
        let speed = mean_by_type(&users, |u| {
            let v: Vec<f64> = u
                .script
                .iter()
                .filter(|e| e.session == 1 && e.kind == "scroll")
                .map(|e| e.props["velocity"].as_f64().unwrap().abs())
                .filter(|v| *v > 0.0)
                .collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        });
        assert!(
            speed[&q] > 3.0 * speed[&s] && speed[&s] > 1.5 * speed[&d],
            "{speed:?}"
        );
        let dwell = mean_by_type(&users, |u| {
            u.script
                .iter()
                .filter(|e| e.session == 1 && e.kind == "dwell" && e.props["phase"] == "end")
                .map(|e| e.props["duration_ms"].as_f64().unwrap())
                .sum()
        });
        assert!(
            dwell[&d] > 2.0 * dwell[&s] && dwell[&s] > dwell[&q],
            "{dwell:?}"
        );
        let length = mean_by_type(&users, |u| u.duration_ms() as f64);
        assert!(
            length[&d] > length[&s] && length[&s] > length[&q],
            "{length:?}"
        );
        let owned: Vec<SimUser> = users
            .iter()
            .filter(|u| u.profile.device == Device::Desktop)
            .cloned()
            .collect();
        let hover = |u: &SimUser| {
            u.script
                .iter()
                .filter(|e| e.kind == "hover" && e.props["phase"] == "end")
                .map(|e| e.props["duration_ms"].as_f64().unwrap())
                .sum::<f64>()
        };
        let hovers = mean_by_type(&owned, hover);
        assert!(
            hovers[&d] > hovers[&s] && hovers[&s] > hovers[&q],
            "{hovers:?}"
        );
        let clicks = mean_by_type(&users, |u| {
            u.script.iter().filter(|e| e.kind == "click").count() as f64
        });
        assert!(clicks[&q] > 0.6 && clicks[&s] < 0.2, "{clicks:?}");
        // Context distributions depend on the type.
        let mobile = mean_by_type(&users, |u| {
            f64::from(u8::from(u.profile.device == Device::Mobile))
        });
        assert!(mobile[&q] > 0.45 && mobile[&d] < 0.4, "{mobile:?}");
        let evening = mean_by_type(&users, |u| f64::from(u8::from(u.profile.hour >= 18)));
        assert!(evening[&d] > evening[&s] + 0.2, "{evening:?}");
    }

    #[test]
    fn mix_parses_and_picks() {
        let m: Mix = "quick=1,deep=0,selective=1".parse().unwrap();
        assert_eq!(m.pick(0.2), UserType::Quick);
        assert_eq!(m.pick(0.7), UserType::Selective);
        assert!("fast=1".parse::<Mix>().is_err());
        assert!("quick=0".parse::<Mix>().is_err());
        assert!("quick=-1,deep=2".parse::<Mix>().is_err());
        let only_deep: Mix = "deep=1".parse().unwrap();
        assert!(generate(1, 30, &only_deep)
            .iter()
            .all(|u| u.profile.kind == UserType::Deep));
    }

    #[test]
    fn best_variant_differs_by_type_and_context() {
        let t = GroundTruth::new(&default_candidates());
        let p = |kind, device, hour| Profile {
            kind,
            device,
            hour,
            returning: false,
        };
        let best = |pr: Profile| t.candidates[t.best(&pr)].as_str();
        assert_eq!(best(p(UserType::Quick, Device::Desktop, 14)), "urgent");
        assert_eq!(best(p(UserType::Deep, Device::Desktop, 14)), "detailed");
        assert_eq!(best(p(UserType::Selective, Device::Desktop, 14)), "social");
        // Mobile moves a deep explorer's evening best from detailed to social.
        assert_eq!(best(p(UserType::Deep, Device::Desktop, 20)), "detailed");
        assert_eq!(best(p(UserType::Deep, Device::Mobile, 20)), "social");
        // Unknown names are neutral (= control); order of candidates does not matter.
        let t2 = GroundTruth::new(&["zebra".into(), "detailed".into(), "control".into()]);
        let pr = p(UserType::Deep, Device::Tablet, 21);
        assert_eq!(t2.click_probability(&pr, 0), t2.click_probability(&pr, 2));
        assert_eq!(t2.best(&pr), 1);
        // Conversions need a click.
        for i in 0..4 {
            assert!(t.conversion_probability(&pr, i) < t.click_probability(&pr, i));
        }
    }

    #[test]
    fn oracle_beats_uniform_by_the_documented_margin() {
        let t = GroundTruth::new(&default_candidates());
        let r = expected_rates(&t, &Mix::default(), 200_000, 1);
        // Numbers stated in the module doc.
        assert!((r.oracle - 0.315).abs() < 0.005, "{r:?}");
        assert!((r.uniform - 0.157).abs() < 0.005, "{r:?}");
        assert!((r.best_fixed - 0.200).abs() < 0.005, "{r:?}");
        assert_eq!(r.best_fixed_variant, "urgent");
        assert!(r.oracle > 2.0 * r.uniform);
        assert_eq!(r.per_type["quick"].best_variant, "urgent");
        assert_eq!(r.per_type["deep"].best_variant, "detailed");
        assert_eq!(r.per_type["selective"].best_variant, "social");
    }
}
