//! trimtab-wire: the v1 wire contract — event schema and validation, the client messages, and
//! the table of error codes ([`codes`]). The only crate that knows the wire format of events.
//! It depends on no other crate of trimtab and must not: everything above it parses with it.
//!
//! Parsing is strict: unknown fields, wrong types, out-of-range values and oversized strings are
//! rejected with an [`InputError`] whose `path` names the offending field exactly as the client
//! wrote it (`events[3].props.depth`). Validated events become [`Event`]s, the compact internal
//! form that the pipeline processes and the store persists (postcard-encoded, then encrypted).
//!
//! Runs on actix worker threads (it is pure CPU work over one request body) and in tests.

pub mod codes;
pub mod openapi;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub use codes::{Code, Fault};

/// Limits applied while validating events. Part of the config (`[limits]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted HTTP body or WebSocket message, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one batch.
    pub max_batch_events: usize,
    /// Longest string field (ids, targets, paths, prop values), in bytes.
    pub max_string_len: usize,
    /// Most entries in a `custom` event's props.
    pub max_custom_props: usize,
    /// How far in the past (days) an event's `ts` may be.
    pub max_event_age_days: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 256 * 1024,
            max_batch_events: 100,
            max_string_len: 256,
            max_custom_props: 32,
            max_event_age_days: 30,
        }
    }
}

/// A client error in the input: stable code, human message and the path of the field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputError {
    pub code: Code,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl InputError {
    pub fn new(code: Code, message: impl Into<String>, path: Option<String>) -> Self {
        InputError {
            code,
            message: message.into(),
            path,
        }
    }
    /// True for the size-limit family (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        self.code.status() == 413
    }
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(p) => write!(f, "{} at {}: {}", self.code, p, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

impl std::error::Error for InputError {}

/// The event types of the v1 contract, plus `mouse` and `visibility` (SDK summaries) and
/// `signal` (behavioural signals the SDK derives: rage clicks, exit intent, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    PageView,
    Scroll,
    Hover,
    Dwell,
    Click,
    Impression,
    Conversion,
    Mouse,
    Visibility,
    Custom,
    Signal,
}

impl EventType {
    /// Every type, in declaration order.
    pub const ALL: [EventType; 11] = [
        EventType::PageView,
        EventType::Scroll,
        EventType::Hover,
        EventType::Dwell,
        EventType::Click,
        EventType::Impression,
        EventType::Conversion,
        EventType::Mouse,
        EventType::Visibility,
        EventType::Custom,
        EventType::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PageView => "page_view",
            EventType::Scroll => "scroll",
            EventType::Hover => "hover",
            EventType::Dwell => "dwell",
            EventType::Click => "click",
            EventType::Impression => "impression",
            EventType::Conversion => "conversion",
            EventType::Mouse => "mouse",
            EventType::Visibility => "visibility",
            EventType::Custom => "custom",
            EventType::Signal => "signal",
        }
    }
}

/// What a `signal` event reports: a behavioural signal the SDK derived from raw input it never
/// sends (definitions and defaults in the README's "Behavioural signals").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// ≥ 3 clicks within 1 s in a small radius (`count`, `duration_ms`?).
    RageClick,
    /// A click on something not interactive after which nothing changed.
    DeadClick,
    /// A click followed by a script error.
    ErrorClick,
    /// A hover on an interactive element without a click, or the pointer resting on a call to
    /// action (`duration_ms`, `via` = `hover` | `idle`).
    Hesitation,
    /// Leaving: the pointer through the top edge, a fast flick up on touch, the tab hidden
    /// (`via` = `top` | `flick` | `hidden`).
    ExitIntent,
    /// Reading speed in words per minute (`wpm`).
    Reading,
    /// Up-down scroll reversals beyond the norm (`count`).
    ExcessiveScroll,
    /// Back to this page after a short visit elsewhere (`duration_ms` = time on the other page).
    QuickBack,
    /// Visible engaged time since the last report (`duration_ms`).
    Engagement,
    /// The device's motion, summarised (`state`, `tilt`?).
    Motion,
}

impl SignalKind {
    pub const ALL: [SignalKind; 10] = [
        SignalKind::RageClick,
        SignalKind::DeadClick,
        SignalKind::ErrorClick,
        SignalKind::Hesitation,
        SignalKind::ExitIntent,
        SignalKind::Reading,
        SignalKind::ExcessiveScroll,
        SignalKind::QuickBack,
        SignalKind::Engagement,
        SignalKind::Motion,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::RageClick => "rage_click",
            SignalKind::DeadClick => "dead_click",
            SignalKind::ErrorClick => "error_click",
            SignalKind::Hesitation => "hesitation",
            SignalKind::ExitIntent => "exit_intent",
            SignalKind::Reading => "reading",
            SignalKind::ExcessiveScroll => "excessive_scroll",
            SignalKind::QuickBack => "quick_back",
            SignalKind::Engagement => "engagement",
            SignalKind::Motion => "motion",
        }
    }

    /// The props this kind takes besides `kind`, and whether each is required; any other is
    /// refused as `unknown_field`.
    pub fn fields(self) -> &'static [(&'static str, bool)] {
        match self {
            SignalKind::RageClick => &[("count", true), ("duration_ms", false)],
            SignalKind::DeadClick | SignalKind::ErrorClick => &[],
            SignalKind::Hesitation => &[("duration_ms", true), ("via", true)],
            SignalKind::ExitIntent => &[("via", true)],
            SignalKind::Reading => &[("wpm", true)],
            SignalKind::ExcessiveScroll => &[("count", true)],
            SignalKind::QuickBack | SignalKind::Engagement => &[("duration_ms", true)],
            SignalKind::Motion => &[("state", true), ("tilt", false)],
        }
    }

    /// The `via` values this kind takes.
    pub fn vias(self) -> &'static [Via] {
        match self {
            SignalKind::ExitIntent => &[Via::Top, Via::Flick, Via::Hidden],
            SignalKind::Hesitation => &[Via::Hover, Via::Idle],
            _ => &[],
        }
    }
}

/// How a signal came about: exit intent `top` | `flick` | `hidden`, hesitation `hover` | `idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Top,
    Flick,
    Hidden,
    Hover,
    Idle,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Top => "top",
            Via::Flick => "flick",
            Via::Hidden => "hidden",
            Via::Hover => "hover",
            Via::Idle => "idle",
        }
    }
}

/// The device's motion over a window: still, walking or shaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MotionState {
    Still,
    Walking,
    Shaking,
}

impl MotionState {
    pub const ALL: [MotionState; 3] = [
        MotionState::Still,
        MotionState::Walking,
        MotionState::Shaking,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MotionState::Still => "still",
            MotionState::Walking => "walking",
            MotionState::Shaking => "shaking",
        }
    }
}

/// The payload of a `signal` event (which fields apply depends on `kind`:
/// [`SignalKind::fields`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    pub kind: SignalKind,
    pub count: Option<u32>,
    pub duration_ms: Option<u64>,
    pub via: Option<Via>,
    pub wpm: Option<f64>,
    pub state: Option<MotionState>,
    pub tilt: Option<f64>,
}

/// Phase of an ongoing interaction (hover or dwell): SDKs send `start`, then `heartbeat`s while
/// it lasts (with the elapsed time so far), then `end` with the final duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Start,
    Heartbeat,
    End,
}

/// Scalar value of a custom prop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Scalar {
    pub fn to_json(&self) -> Value {
        match self {
            Scalar::Bool(b) => Value::from(*b),
            Scalar::Int(i) => Value::from(*i),
            Scalar::Float(f) => Value::from(*f),
            Scalar::Str(s) => Value::from(s.clone()),
        }
    }
}

/// Type-specific payload of an event (the `props` object on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Props {
    PageView {
        path: String,
        title: Option<String>,
    },
    Scroll {
        depth: f64,
        max_depth: Option<f64>,
        velocity: Option<f64>,
    },
    Hover {
        phase: Phase,
        duration_ms: u64,
    },
    Dwell {
        phase: Phase,
        duration_ms: u64,
        visible_ratio: Option<f64>,
    },
    Click {
        decision: Option<String>,
    },
    Impression {
        slot: String,
        variant: String,
        decision: Option<String>,
    },
    Conversion {
        name: Option<String>,
        value: Option<f64>,
        decision: Option<String>,
    },
    Mouse {
        speed: f64,
        path_px: f64,
        idle_ms: u64,
    },
    Visibility {
        visible: bool,
    },
    Custom {
        name: String,
        props: BTreeMap<String, Scalar>,
    },
    /// Last: stored events are postcard-encoded, where a variant is its index.
    Signal(Signal),
}

/// Where and on what the event happened. All optional; unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Context {
    #[serde(default)]
    pub page: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub browser: Option<String>,
    #[serde(default)]
    pub viewport_w: Option<u32>,
    #[serde(default)]
    pub viewport_h: Option<u32>,
    /// The visitor's local hour, 0–23.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 23)]
    pub hour: Option<u8>,
    #[serde(default)]
    #[schema(minimum = -840, maximum = 840)]
    pub tz_offset_min: Option<i32>,
    #[serde(default)]
    pub language: Option<String>,
}

/// Consent carried by each event. Missing means "not given".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    #[serde(default)]
    pub analytics: bool,
    #[serde(default)]
    pub personalization: bool,
}

/// A validated event, in the form the pipeline and store use. The raw user id is not here: the
/// API layer turns it into a pseudonymous key before anything else sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub session: String,
    /// Client timestamp, ms since the Unix epoch.
    pub ts: i64,
    /// Server receive time, ms since the Unix epoch.
    pub received_ms: i64,
    pub target: Option<String>,
    pub props: Props,
    pub context: Context,
    pub consent: Consent,
}

impl Event {
    pub fn kind(&self) -> EventType {
        match &self.props {
            Props::PageView { .. } => EventType::PageView,
            Props::Scroll { .. } => EventType::Scroll,
            Props::Hover { .. } => EventType::Hover,
            Props::Dwell { .. } => EventType::Dwell,
            Props::Click { .. } => EventType::Click,
            Props::Impression { .. } => EventType::Impression,
            Props::Conversion { .. } => EventType::Conversion,
            Props::Mouse { .. } => EventType::Mouse,
            Props::Visibility { .. } => EventType::Visibility,
            Props::Custom { .. } => EventType::Custom,
            Props::Signal(_) => EventType::Signal,
        }
    }

    /// The props object as the client sent it (for export and for rules).
    pub fn props_json(&self) -> Value {
        fn put<T: Into<Value>>(m: &mut serde_json::Map<String, Value>, k: &str, v: Option<T>) {
            if let Some(v) = v {
                m.insert(k.to_string(), v.into());
            }
        }
        let mut m = serde_json::Map::new();
        match &self.props {
            Props::PageView { path, title } => {
                put(&mut m, "path", Some(path.clone()));
                put(&mut m, "title", title.clone());
            }
            Props::Scroll {
                depth,
                max_depth,
                velocity,
            } => {
                put(&mut m, "depth", Some(*depth));
                put(&mut m, "max_depth", *max_depth);
                put(&mut m, "velocity", *velocity);
            }
            Props::Hover { phase, duration_ms } => {
                put(&mut m, "phase", Some(phase_str(*phase)));
                put(&mut m, "duration_ms", Some(*duration_ms));
            }
            Props::Dwell {
                phase,
                duration_ms,
                visible_ratio,
            } => {
                put(&mut m, "phase", Some(phase_str(*phase)));
                put(&mut m, "duration_ms", Some(*duration_ms));
                put(&mut m, "visible_ratio", *visible_ratio);
            }
            Props::Click { decision } => put(&mut m, "decision", decision.clone()),
            Props::Impression {
                slot,
                variant,
                decision,
            } => {
                put(&mut m, "slot", Some(slot.clone()));
                put(&mut m, "variant", Some(variant.clone()));
                put(&mut m, "decision", decision.clone());
            }
            Props::Conversion {
                name,
                value,
                decision,
            } => {
                put(&mut m, "name", name.clone());
                put(&mut m, "value", *value);
                put(&mut m, "decision", decision.clone());
            }
            Props::Mouse {
                speed,
                path_px,
                idle_ms,
            } => {
                put(&mut m, "speed", Some(*speed));
                put(&mut m, "path_px", Some(*path_px));
                put(&mut m, "idle_ms", Some(*idle_ms));
            }
            Props::Visibility { visible } => put(&mut m, "visible", Some(*visible)),
            Props::Custom { name, props } => {
                put(&mut m, "name", Some(name.clone()));
                for (k, v) in props {
                    m.insert(k.clone(), v.to_json());
                }
            }
            Props::Signal(x) => {
                put(&mut m, "kind", Some(x.kind.as_str()));
                put(&mut m, "count", x.count);
                put(&mut m, "duration_ms", x.duration_ms);
                put(&mut m, "via", x.via.map(Via::as_str));
                put(&mut m, "wpm", x.wpm);
                put(&mut m, "state", x.state.map(MotionState::as_str));
                put(&mut m, "tilt", x.tilt);
            }
        }
        Value::Object(m)
    }

    /// The event in its wire shape (used by user export).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "type": self.kind().as_str(),
            "session": self.session,
            "ts": self.ts,
            "received_ms": self.received_ms,
            "props": self.props_json(),
            "context": self.context,
            "consent": self.consent,
        });
        if let (Some(t), Some(obj)) = (&self.target, v.as_object_mut()) {
            obj.insert("target".into(), Value::from(t.clone()));
        }
        v
    }

    /// The decision id this event refers to (clicks, impressions, conversions inside an
    /// adjusted slot carry it so rewards can be attributed).
    pub fn decision(&self) -> Option<&str> {
        match &self.props {
            Props::Click { decision }
            | Props::Impression { decision, .. }
            | Props::Conversion { decision, .. } => decision.as_deref(),
            _ => None,
        }
    }
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Start => "start",
        Phase::Heartbeat => "heartbeat",
        Phase::End => "end",
    }
}

/// An event as parsed from the wire, before validation, with its raw user id (if any).
///
/// `P` is how `props` is held until the event type is known (it may come before `type` in the
/// object): a [`Value`] on the reference path, the raw text (`&RawValue`) on the fast path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, bound(deserialize = "P: Deserialize<'de>"))]
struct WireEvent<P> {
    id: String,
    #[serde(rename = "type")]
    kind: EventType,
    #[serde(default)]
    user: Option<String>,
    session: String,
    ts: i64,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    props: Option<P>,
    #[serde(default)]
    context: Option<Context>,
    #[serde(default)]
    consent: Option<Consent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBatch {
    events: Vec<Value>,
    /// A user token in the body, for `navigator.sendBeacon`, which cannot set headers.
    #[serde(default)]
    token: Option<String>,
}

/// The batch envelope on the fast path: each event stays raw text until it is validated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvelope<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    token: Option<Text<'a>>,
}

/// A validated batch body.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Incoming>,
    pub token: Option<String>,
}

/// A batch body whose envelope (`{"events":[…], "token"?}`, the number of events) is valid but
/// whose events are not validated yet, so that the HTTP handler can authenticate (with the body
/// token, for beacons) in between. Borrows the body.
#[derive(Debug)]
pub struct RawBatch<'a> {
    body: &'a [u8],
    token: Option<Cow<'a, str>>,
    events: RawEvents<'a>,
}

#[derive(Debug)]
enum RawEvents<'a> {
    /// The fast path: each event's JSON text.
    Raw(Vec<&'a RawValue>),
    /// The envelope only passed the reference parser: the events as it parsed them.
    Parsed(Vec<Value>),
}

/// A validated event together with the raw user id the client named (if any). The API layer
/// checks that id against the credentials and pseudonymises it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub user: Option<String>,
    pub event: Event,
}

/// A message from a WebSocket client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `{"type":"events","events":[…]}`, validated like an HTTP batch (paths under `events`).
    Events(Vec<Incoming>),
    /// `{"type":"ping"}` (other keys are ignored).
    Ping,
    /// `{"type":"auth","token":…}` (other keys are ignored). The token is not verified here.
    Auth { token: String },
}

// Typed props, one struct per event type; `deny_unknown_fields` names stray keys.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PageViewProps)]
struct PageViewP {
    path: String,
    #[serde(default)]
    title: Option<String>,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ScrollProps)]
struct ScrollP {
    /// Percent of the page scrolled, 0–100.
    #[schema(minimum = 0, maximum = 100)]
    depth: f64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 100)]
    max_depth: Option<f64>,
    /// Percent per second (negative: upwards).
    #[serde(default)]
    #[schema(minimum = -10000, maximum = 10000)]
    velocity: Option<f64>,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PhaseProps)]
struct PhaseP {
    phase: Phase,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    visible_ratio: Option<f64>,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ClickProps)]
struct ClickP {
    #[serde(default)]
    decision: Option<String>,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ImpressionProps)]
struct ImpressionP {
    slot: String,
    variant: String,
    #[serde(default)]
    decision: Option<String>,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ConversionProps)]
struct ConversionP {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[schema(minimum = -1000000000000i64, maximum = 1000000000000i64)]
    value: Option<f64>,
    #[serde(default)]
    decision: Option<String>,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MouseProps)]
struct MouseP {
    speed: f64,
    path_px: f64,
    idle_ms: u64,
}
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VisibilityProps)]
struct VisibilityP {
    visible: bool,
}

/// The `signal` props as parsed (the document's `SignalProps` is built per kind, in
/// [`crate::openapi`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalP {
    kind: SignalKind,
    /// `rage_click`: clicks in the burst; `excessive_scroll`: scroll reversals.
    #[serde(default)]
    count: Option<u32>,
    /// `hesitation`: how long; `quick_back`: time on the page left; `engagement`: engaged time
    /// since the last report; `rage_click`: the burst's span.
    #[serde(default)]
    duration_ms: Option<u64>,
    /// `exit_intent`: `top`, `flick`, `hidden`; `hesitation`: `hover`, `idle`.
    #[serde(default)]
    via: Option<Via>,
    /// `reading`: words per minute.
    #[serde(default)]
    wpm: Option<f64>,
    /// `motion`: still, walking or shaking.
    #[serde(default)]
    state: Option<MotionState>,
    /// `motion`: front-back tilt in degrees, 0 (flat) to 180.
    #[serde(default)]
    tilt: Option<f64>,
}

/// The accepted range of a numeric signal field: one table for the parser and the OpenAPI
/// document.
pub(crate) fn signal_range(field: &str) -> (f64, f64) {
    match field {
        "count" => (1.0, 10_000.0),
        "duration_ms" => (0.0, MAX_DURATION_MS as f64),
        "wpm" => (0.0, 10_000.0),
        "tilt" => (0.0, 180.0),
        _ => unreachable!("{field} is not a numeric signal field"),
    }
}

/// Checks a signal's fields against its kind (which it takes, which it needs, their ranges).
fn check_signal(x: SignalP, p: &Checker<'_>) -> Result<Props, InputError> {
    let kind = x.kind;
    let present = [
        ("count", x.count.is_some()),
        ("duration_ms", x.duration_ms.is_some()),
        ("via", x.via.is_some()),
        ("wpm", x.wpm.is_some()),
        ("state", x.state.is_some()),
        ("tilt", x.tilt.is_some()),
    ];
    let fields = kind.fields();
    for (name, here) in present {
        let takes = fields.iter().find(|(f, _)| *f == name);
        if here && takes.is_none() {
            return Err(InputError::new(
                Code::UnknownField,
                format!("unknown field `{name}` for a {} signal", kind.as_str()),
                Some(p.path(name)),
            ));
        }
        if !here && takes.is_some_and(|(_, required)| *required) {
            return Err(InputError::new(
                Code::MissingField,
                format!(
                    "missing field `{name}`: a {} signal needs it",
                    kind.as_str()
                ),
                Some(p.path(name)),
            ));
        }
    }
    let numbers = [
        ("count", x.count.map(f64::from)),
        ("duration_ms", x.duration_ms.map(|d| d as f64)),
        ("wpm", x.wpm),
        ("tilt", x.tilt),
    ];
    for (name, v) in numbers {
        if let Some(v) = v {
            let (lo, hi) = signal_range(name);
            p.range(name, v, lo, hi)?;
        }
    }
    if let Some(v) = x.via {
        if !kind.vias().contains(&v) {
            let ok: Vec<&str> = kind.vias().iter().map(|v| v.as_str()).collect();
            return Err(InputError::new(
                Code::InvalidValue,
                format!(
                    "`{}` is not a way a {} signal comes about (one of: {})",
                    v.as_str(),
                    kind.as_str(),
                    ok.join(", ")
                ),
                Some(p.path("via")),
            ));
        }
    }
    Ok(Props::Signal(Signal {
        kind,
        count: x.count,
        duration_ms: x.duration_ms,
        via: x.via,
        wpm: x.wpm,
        state: x.state,
        tilt: x.tilt,
    }))
}

/// Maps a serde error message (serde gives no structured kind) to a stable code, and extends the
/// path with the field name for unknown/missing fields.
fn classify(msg: &str, path: String) -> InputError {
    fn quoted(msg: &str) -> Option<&str> {
        let start = msg.find('`')? + 1;
        let len = msg[start..].find('`')?;
        Some(&msg[start..start + len])
    }
    let join = |p: &str, field: &str| {
        if p == "." || p.is_empty() || p == field {
            field.to_string()
        } else if p.ends_with(&format!(".{field}")) {
            // serde_path_to_error already descended into the unknown key.
            p.to_string()
        } else {
            format!("{p}.{field}")
        }
    };
    let path_opt = |p: String| if p == "." { None } else { Some(p) };
    // serde_json appends " at line L column C"; drop it, the path is more useful.
    let clean = msg.split(" at line ").next().unwrap_or(msg).to_string();
    if clean.starts_with("unknown field") {
        let p = quoted(&clean).map(|f| join(&path, f)).unwrap_or(path);
        InputError::new(Code::UnknownField, clean, Some(p))
    } else if clean.starts_with("missing field") {
        let p = quoted(&clean).map(|f| join(&path, f)).unwrap_or(path);
        InputError::new(Code::MissingField, clean, Some(p))
    } else if clean.starts_with("invalid type") {
        InputError::new(Code::InvalidType, clean, path_opt(path))
    } else {
        InputError::new(Code::InvalidValue, clean, path_opt(path))
    }
}

/// Deserializes `v` into `T`, mapping errors to stable codes with the field path under `prefix`.
pub fn from_value<T: DeserializeOwned>(v: Value, prefix: &str) -> Result<T, InputError> {
    from_value_at(v, || prefix.to_string())
}

/// [`from_value`] with the prefix built only when there is an error to report.
fn from_value_at<T: DeserializeOwned>(
    v: Value,
    prefix: impl FnOnce() -> String,
) -> Result<T, InputError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let prefix = prefix();
        let inner = e.path().to_string();
        let path = if prefix.is_empty() {
            inner
        } else if inner == "." {
            prefix
        } else if inner.starts_with('[') {
            format!("{prefix}{inner}")
        } else {
            format!("{prefix}.{inner}")
        };
        classify(&e.inner().to_string(), path)
    })
}

// How parsing works. Every entry point has two paths:
//
// - the fast path deserializes the bytes straight into typed wire structs (no `Value` DOM, no
//   path tracking, no path strings) and runs the same checks as the reference path. It only
//   answers "valid, here is the result" or "not valid";
// - the reference path (JSON → `Value` → `serde_path_to_error` → typed, the original parser)
//   runs only when the fast path says "not valid", and builds the error the client gets.
//
// So errors are exactly those of the reference parser (code, message and path), including its
// ordering rules: a syntax error anywhere in the body wins over any other error (the fast path
// skips over raw values without checking number ranges, escapes or nesting depth, and stops at
// the first problem), and within one object fields are checked in key order (a `Value` object
// is sorted), with a repeated key keeping its last value (where typed deserialization rejects
// the duplicate). The fast path returns `Ok` only when every byte of the body went through a
// real typed parse and every check passed, and then its result equals the reference one (the
// `fast_path_matches_reference` proptests check this).

/// Parses and validates a batch body `{"events":[…], "token"?}`: [`parse_batch_envelope`] then
/// [`RawBatch::into_events`].
pub fn parse_batch(body: &[u8], limits: &Limits, now_ms: i64) -> Result<Batch, InputError> {
    let raw = parse_batch_envelope(body, limits)?;
    let token = raw.token().map(str::to_owned);
    Ok(Batch {
        events: raw.into_events(limits, now_ms)?,
        token,
    })
}

fn check_body_size(body: &[u8], limits: &Limits) -> Result<(), InputError> {
    if body.len() > limits.max_body_bytes {
        return Err(InputError::new(
            Code::BodyTooLarge,
            format!(
                "body is {} bytes; the limit is {}",
                body.len(),
                limits.max_body_bytes
            ),
            None,
        ));
    }
    Ok(())
}

/// First phase of [`parse_batch`]: checks the body size, the envelope `{"events":[…],
/// "token"?}` (unknown fields, types) and the number of events (`invalid_value` or
/// `batch_too_large` at `events`); the events themselves are validated by
/// [`RawBatch::into_events`].
pub fn parse_batch_envelope<'a>(
    body: &'a [u8],
    limits: &Limits,
) -> Result<RawBatch<'a>, InputError> {
    check_body_size(body, limits)?;
    require_object(body)?;
    // The number of events is checked by `into_events`, after the caller is authenticated.
    if let Ok(env) = serde_json::from_slice::<RawEnvelope<'a>>(body) {
        return Ok(RawBatch {
            body,
            token: env.token.map(|t| t.0),
            events: RawEvents::Raw(env.events),
        });
    }
    let batch: WireBatch = from_value(parse_json(body)?, "")?;
    Ok(RawBatch {
        body,
        token: batch.token.map(Cow::Owned),
        events: RawEvents::Parsed(batch.events),
    })
}

impl RawBatch<'_> {
    /// The user token in the body (for `navigator.sendBeacon`), if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Number of events in the batch (not yet checked against the limits).
    pub fn len(&self) -> usize {
        match &self.events {
            RawEvents::Raw(v) => v.len(),
            RawEvents::Parsed(v) => v.len(),
        }
    }

    /// Whether the batch has no events (`into_events` then refuses it).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Second phase of [`parse_batch`]: validates every event (paths `events[i]…`).
    pub fn into_events(self, limits: &Limits, now_ms: i64) -> Result<Vec<Incoming>, InputError> {
        let reference = |body| Ok(parse_batch_value(parse_json(body)?, limits, now_ms)?.events);
        match self.events {
            RawEvents::Raw(raw) if check_count(raw.len(), limits, "events").is_ok() => {
                match fast_events(&raw, limits, now_ms) {
                    Some(events) => Ok(events),
                    None => reference(self.body),
                }
            }
            // Errors come from the reference path, which reports them as it always has.
            RawEvents::Raw(_) => reference(self.body),
            RawEvents::Parsed(values) => parse_events(values, limits, now_ms, "events"),
        }
    }
}

/// Validates a batch body that is already parsed JSON (the reference path).
pub fn parse_batch_value(value: Value, limits: &Limits, now_ms: i64) -> Result<Batch, InputError> {
    let batch: WireBatch = from_value(value, "")?;
    Ok(Batch {
        events: parse_events(batch.events, limits, now_ms, "events")?,
        token: batch.token,
    })
}

/// Whether `s` has more than `max` characters — characters, as JSON Schema's `maxLength`
/// counts them (the byte length is a cheap first test: fewer bytes means fewer characters).
pub fn longer_than(s: &str, max: usize) -> bool {
    s.len() > max && s.chars().count() > max
}

/// Request bodies are JSON objects. Anything else — an array (which serde would read into a
/// struct, field by position), `null`, a number — is `invalid_type`; what is not JSON at all
/// stays `malformed_json`.
pub fn require_object(body: &[u8]) -> Result<(), InputError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return Ok(());
    }
    parse_json(body)?;
    Err(InputError::new(
        Code::InvalidType,
        "the body must be a JSON object",
        None,
    ))
}

/// Parses JSON text, mapping syntax errors to `malformed_json` with line and column. A key that
/// appears twice in one object is `duplicate_key` (line and column of the second): JSON leaves
/// it to the reader which one counts, and a reader that keeps the last is easy to smuggle
/// past one that keeps the first.
pub fn parse_json(body: &[u8]) -> Result<Value, InputError> {
    serde_json::from_slice::<UniqueKeys>(body)
        .map(|v| v.0)
        .map_err(|e| {
            let code = if e.to_string().starts_with(DUPLICATE_KEY) {
                Code::DuplicateKey
            } else {
                Code::MalformedJson
            };
            InputError::new(
                code,
                format!(
                    "body is not valid JSON: {} (line {}, column {})",
                    e,
                    e.line(),
                    e.column()
                ),
                None,
            )
        })
}

const DUPLICATE_KEY: &str = "duplicate key";

fn duplicate_key<E: de::Error>(key: &str) -> E {
    E::custom(format_args!("{DUPLICATE_KEY} `{key}`"))
}

/// A JSON value whose objects have each key once (see [`parse_json`]).
struct UniqueKeys(Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::Bool(b)))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::from(i)))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::from(u)))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(
                    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::String(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::String(s)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<UniqueKeys, E> {
                Ok(UniqueKeys(Value::Null))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
                let mut out = Vec::new();
                while let Some(UniqueKeys(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(UniqueKeys(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(duplicate_key(&key));
                    }
                    let UniqueKeys(v) = map.next_value()?;
                    out.insert(key, v);
                }
                Ok(UniqueKeys(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses an API request body into `T` (no path prefix): `malformed_json` for a syntax error,
/// otherwise the code of [`from_value`] at the field path. Same result as
/// `from_value(parse_json(body)?, "")`, without the `Value` for a valid body, for request types
/// that deny unknown fields. (A type that ignores unknown fields now also accepts a body whose
/// ignored values hold what only a `Value` rejects: an out-of-range number such as `1e400`, a
/// lone surrogate escape, nesting deeper than 128.)
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, InputError> {
    require_object(body)?;
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(_) => from_value(parse_json(body)?, ""),
    }
}

/// Parses and validates a WebSocket client message: `events`, `ping` or `auth`.
pub fn parse_client_message(
    body: &[u8],
    limits: &Limits,
    now_ms: i64,
) -> Result<ClientMessage, InputError> {
    if body.len() > limits.max_body_bytes {
        return Err(InputError::new(
            Code::BodyTooLarge,
            "message exceeds limits.max_body_bytes",
            None,
        ));
    }
    match fast_client_message(body, limits, now_ms) {
        Some(m) => Ok(m),
        None => parse_client_message_reference(body, limits, now_ms),
    }
}

/// The reference path of [`parse_client_message`] (the WebSocket session's original checks,
/// over a `serde_json::Value`): the fast path must give the same message or the same error
/// (code and path) for every input — the fuzz target `ws_message` checks that.
pub fn parse_client_message_reference(
    body: &[u8],
    limits: &Limits,
    now_ms: i64,
) -> Result<ClientMessage, InputError> {
    let Value::Object(mut obj) = parse_json(body)? else {
        return Err(InputError::new(
            Code::InvalidType,
            "a message is a JSON object",
            None,
        ));
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("events") => {}
        Some("ping") => return Ok(ClientMessage::Ping),
        Some("auth") => {
            return match obj.remove("token") {
                Some(Value::String(token)) => Ok(ClientMessage::Auth { token }),
                Some(_) => Err(InputError::new(
                    Code::InvalidType,
                    "token must be a string",
                    Some("token".into()),
                )),
                None => Err(InputError::new(
                    Code::MissingField,
                    "missing field `token`",
                    Some("token".into()),
                )),
            }
        }
        Some(other) => {
            return Err(InputError::new(
                Code::InvalidValue,
                format!("unknown message type {other:?}"),
                Some("type".into()),
            ))
        }
        None => {
            return Err(InputError::new(
                Code::MissingField,
                "missing field `type`",
                Some("type".into()),
            ))
        }
    }
    if let Some(k) = obj.keys().find(|k| *k != "type" && *k != "events") {
        return Err(InputError::new(
            Code::UnknownField,
            format!("unknown field `{k}`"),
            Some(k.clone()),
        ));
    }
    let events = match obj.remove("events") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(InputError::new(
                Code::InvalidType,
                "events must be an array",
                Some("events".into()),
            ))
        }
        None => {
            return Err(InputError::new(
                Code::MissingField,
                "missing field `events`",
                Some("events".into()),
            ))
        }
    };
    parse_events(events, limits, now_ms, "events").map(ClientMessage::Events)
}

/// The fast path of [`parse_client_message`]; `None` means "not valid" (or something the
/// reference accepts but the fast path does not handle: a repeated key, a non-string `type` or
/// `token` in a ping, a non-array `events` in a ping or auth message).
fn fast_client_message(body: &[u8], limits: &Limits, now_ms: i64) -> Option<ClientMessage> {
    let m: RawMessage<'_> = serde_json::from_slice(body).ok()?;
    if m.repeated {
        return None;
    }
    // Every value was fully parsed except the events, which are raw text until validated; a
    // message type that does not use them still has them parsed, as the reference does.
    let events_valid = || {
        m.events
            .iter()
            .flatten()
            .all(|r| serde_json::from_str::<Valid>(r.get()).is_ok())
    };
    match &*m.kind?.0 {
        "events" if !m.other && m.token.is_none() => {
            fast_events(&m.events?, limits, now_ms).map(ClientMessage::Events)
        }
        "ping" => events_valid().then_some(ClientMessage::Ping),
        "auth" => {
            let token = m.token.as_ref()?.0.to_string();
            events_valid().then_some(ClientMessage::Auth { token })
        }
        _ => None,
    }
}

/// A WebSocket message's top-level object, keys in any order.
struct RawMessage<'a> {
    kind: Option<Text<'a>>,
    events: Option<Vec<&'a RawValue>>,
    token: Option<Text<'a>>,
    /// Some other key was present (its value was parsed and dropped).
    other: bool,
    /// A key appeared twice.
    repeated: bool,
}

impl<'de> Deserialize<'de> for RawMessage<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMessage<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut m = RawMessage {
                    kind: None,
                    events: None,
                    token: None,
                    other: false,
                    repeated: false,
                };
                let mut others = Vec::new();
                while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                    match &*key {
                        "type" => {
                            m.repeated |= m.kind.is_some();
                            m.kind = Some(map.next_value()?);
                        }
                        "events" => {
                            m.repeated |= m.events.is_some();
                            m.events = Some(map.next_value()?);
                        }
                        "token" => {
                            m.repeated |= m.token.is_some();
                            m.token = Some(map.next_value()?);
                        }
                        _ => {
                            map.next_value::<Valid>()?;
                            m.repeated |= others.iter().any(|o: &Text<'de>| o.0 == key);
                            others.push(Text(key));
                            m.other = true;
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

fn check_count(n: usize, limits: &Limits, prefix: &str) -> Result<(), InputError> {
    if n == 0 {
        return Err(InputError::new(
            Code::InvalidValue,
            "a batch needs at least one event",
            Some(prefix.to_string()),
        ));
    }
    if n > limits.max_batch_events {
        return Err(InputError::new(
            Code::BatchTooLarge,
            format!(
                "{} events in one batch; the limit is {}",
                n, limits.max_batch_events
            ),
            Some(prefix.to_string()),
        ));
    }
    Ok(())
}

/// Validates an already-parsed `events` array; `prefix` is its path (`events`).
pub fn parse_events(
    events: Vec<Value>,
    limits: &Limits,
    now_ms: i64,
    prefix: &str,
) -> Result<Vec<Incoming>, InputError> {
    check_count(events.len(), limits, prefix)?;
    let mut out = Vec::with_capacity(events.len());
    for (index, v) in events.into_iter().enumerate() {
        out.push(parse_event(v, limits, now_ms, At { prefix, index })?);
    }
    Ok(out)
}

/// The fast path for a list of raw events; `None` if any of them is not valid.
fn fast_events(raw: &[&RawValue], limits: &Limits, now_ms: i64) -> Option<Vec<Incoming>> {
    check_count(raw.len(), limits, "").ok()?;
    let mut out = Vec::with_capacity(raw.len());
    for (index, r) in raw.iter().enumerate() {
        let w: WireEvent<&RawValue> = serde_json::from_str(r.get()).ok()?;
        let at = At {
            prefix: "events",
            index,
        };
        out.push(check_event(w, limits, now_ms, at).ok()?);
    }
    Some(out)
}

/// The reference path for one event.
fn parse_event(v: Value, limits: &Limits, now_ms: i64, at: At<'_>) -> Result<Incoming, InputError> {
    let w: WireEvent<Value> = from_value_at(v, || at.render())?;
    check_event(w, limits, now_ms, at)
}

/// Where an event is (`events[3]`), rendered only for an error.
#[derive(Clone, Copy)]
struct At<'a> {
    prefix: &'a str,
    index: usize,
}

impl At<'_> {
    fn render(&self) -> String {
        format!("{}[{}]", self.prefix, self.index)
    }
}

/// Checks fields of one event; paths (`events[3].context.hour`) are built only for an error.
struct Checker<'a> {
    limits: &'a Limits,
    at: At<'a>,
    /// The object inside the event (`context`, `props`), or "" for the event itself.
    sub: &'static str,
}

impl<'a> Checker<'a> {
    fn sub(&self, sub: &'static str) -> Checker<'a> {
        Checker {
            limits: self.limits,
            at: self.at,
            sub,
        }
    }
    /// Path of the checked object itself.
    fn here(&self) -> String {
        let mut p = self.at.render();
        if !self.sub.is_empty() {
            p.push('.');
            p.push_str(self.sub);
        }
        p
    }
    fn path(&self, field: &str) -> String {
        let mut p = self.here();
        p.push('.');
        p.push_str(field);
        p
    }
    fn string(&self, field: &str, s: &str, allow_empty: bool) -> Result<(), InputError> {
        if longer_than(s, self.limits.max_string_len) {
            return Err(InputError::new(
                Code::StringTooLong,
                format!(
                    "{} characters; the limit is {}",
                    s.chars().count(),
                    self.limits.max_string_len
                ),
                Some(self.path(field)),
            ));
        }
        if !allow_empty && s.is_empty() {
            return Err(InputError::new(
                Code::InvalidValue,
                "must not be empty",
                Some(self.path(field)),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(InputError::new(
                Code::InvalidValue,
                "must not contain control characters",
                Some(self.path(field)),
            ));
        }
        Ok(())
    }
    fn opt_string(&self, field: &str, s: &Option<String>) -> Result<(), InputError> {
        match s {
            Some(s) => self.string(field, s, false),
            None => Ok(()),
        }
    }
    fn range(&self, field: &str, v: f64, lo: f64, hi: f64) -> Result<(), InputError> {
        if !v.is_finite() || v < lo || v > hi {
            return Err(InputError::new(
                Code::InvalidValue,
                format!("{v} is outside {lo}..={hi}"),
                Some(self.path(field)),
            ));
        }
        Ok(())
    }
}

/// An event's `props` as held until the event type is known, deserialized into the type's
/// props on either path.
trait PropsSource {
    fn typed<T: DeserializeOwned>(self, p: &Checker<'_>) -> Result<T, InputError>;
    fn custom(self, p: &Checker<'_>) -> Result<Props, InputError>;
}

/// Reference path: a parsed `Value` (a missing `props` is `{}`).
impl PropsSource for Option<Value> {
    fn typed<T: DeserializeOwned>(self, p: &Checker<'_>) -> Result<T, InputError> {
        let v = self.unwrap_or_else(|| Value::Object(Default::default()));
        from_value_at(v, || p.here())
    }
    fn custom(self, p: &Checker<'_>) -> Result<Props, InputError> {
        let v = self.unwrap_or_else(|| Value::Object(Default::default()));
        parse_custom(v, p)
    }
}

/// Fast path: the raw JSON text (a missing `props` is `{}`).
impl PropsSource for Option<&RawValue> {
    fn typed<T: DeserializeOwned>(self, _: &Checker<'_>) -> Result<T, InputError> {
        serde_json::from_str(self.map_or("{}", RawValue::get)).map_err(|_| fast_path_failed())
    }
    fn custom(self, p: &Checker<'_>) -> Result<Props, InputError> {
        let CustomMap(map) = serde_json::from_str(self.map_or("{}", RawValue::get))
            .map_err(|_| fast_path_failed())?;
        check_custom(map.into_iter(), p, Some)
    }
}

/// The error of a failed fast-path deserialization. Never shown to a client: the fast path
/// only reports "not valid", and the caller re-runs the reference path for the exact error.
fn fast_path_failed() -> InputError {
    InputError::new(Code::InvalidValue, String::new(), None)
}

/// Longest accepted duration of one hover or dwell segment (one day).
const MAX_DURATION_MS: u64 = 86_400_000;

/// Validates one deserialized event (both paths).
fn check_event<P>(
    w: WireEvent<P>,
    limits: &Limits,
    now_ms: i64,
    at: At<'_>,
) -> Result<Incoming, InputError>
where
    Option<P>: PropsSource,
{
    let c = Checker {
        limits,
        at,
        sub: "",
    };
    c.string("id", &w.id, false)?;
    if w.id.len() > 64 {
        return Err(InputError::new(
            Code::StringTooLong,
            format!("{} bytes; an event id has at most 64", w.id.len()),
            Some(c.path("id")),
        ));
    }
    c.string("session", &w.session, false)?;
    if let Some(u) = &w.user {
        c.string("user", u, false)?;
    }
    c.opt_string("target", &w.target)?;
    let oldest = now_ms - limits.max_event_age_days * 86_400_000;
    let newest = now_ms + 86_400_000;
    if w.ts < oldest || w.ts > newest {
        return Err(InputError::new(
            Code::InvalidValue,
            format!(
                "timestamp {} (ms since epoch) is more than {} days old or more than a day ahead",
                w.ts, limits.max_event_age_days
            ),
            Some(c.path("ts")),
        ));
    }
    let context = w.context.unwrap_or_default();
    let ctx = c.sub("context");
    ctx.opt_string("page", &context.page)?;
    ctx.opt_string("device", &context.device)?;
    ctx.opt_string("browser", &context.browser)?;
    ctx.opt_string("language", &context.language)?;
    if let Some(h) = context.hour {
        ctx.range("hour", h as f64, 0.0, 23.0)?;
    }
    if let Some(tz) = context.tz_offset_min {
        ctx.range("tz_offset_min", tz as f64, -840.0, 840.0)?;
    }
    let p = c.sub("props");
    let need_target = |what: &str| -> Result<(), InputError> {
        if w.target.is_none() {
            return Err(InputError::new(
                Code::MissingField,
                format!("a {what} event needs a target"),
                Some(c.path("target")),
            ));
        }
        Ok(())
    };
    let props = match w.kind {
        EventType::PageView => {
            let x: PageViewP = w.props.typed(&p)?;
            p.string("path", &x.path, false)?;
            p.opt_string("title", &x.title)?;
            Props::PageView {
                path: x.path,
                title: x.title,
            }
        }
        EventType::Scroll => {
            let x: ScrollP = w.props.typed(&p)?;
            p.range("depth", x.depth, 0.0, 100.0)?;
            if let Some(m) = x.max_depth {
                p.range("max_depth", m, 0.0, 100.0)?;
            }
            if let Some(v) = x.velocity {
                p.range("velocity", v, -10_000.0, 10_000.0)?;
            }
            Props::Scroll {
                depth: x.depth,
                max_depth: x.max_depth,
                velocity: x.velocity,
            }
        }
        EventType::Hover | EventType::Dwell => {
            let x: PhaseP = w.props.typed(&p)?;
            need_target(w.kind.as_str())?;
            p.range(
                "duration_ms",
                x.duration_ms as f64,
                0.0,
                MAX_DURATION_MS as f64,
            )?;
            if w.kind == EventType::Hover {
                if x.visible_ratio.is_some() {
                    return Err(InputError::new(
                        Code::UnknownField,
                        "unknown field `visible_ratio` for a hover event",
                        Some(p.path("visible_ratio")),
                    ));
                }
                Props::Hover {
                    phase: x.phase,
                    duration_ms: x.duration_ms,
                }
            } else {
                if let Some(r) = x.visible_ratio {
                    p.range("visible_ratio", r, 0.0, 1.0)?;
                }
                Props::Dwell {
                    phase: x.phase,
                    duration_ms: x.duration_ms,
                    visible_ratio: x.visible_ratio,
                }
            }
        }
        EventType::Click => {
            let x: ClickP = w.props.typed(&p)?;
            p.opt_string("decision", &x.decision)?;
            Props::Click {
                decision: x.decision,
            }
        }
        EventType::Impression => {
            let x: ImpressionP = w.props.typed(&p)?;
            p.string("slot", &x.slot, false)?;
            p.string("variant", &x.variant, false)?;
            p.opt_string("decision", &x.decision)?;
            Props::Impression {
                slot: x.slot,
                variant: x.variant,
                decision: x.decision,
            }
        }
        EventType::Conversion => {
            let x: ConversionP = w.props.typed(&p)?;
            p.opt_string("name", &x.name)?;
            p.opt_string("decision", &x.decision)?;
            if let Some(v) = x.value {
                p.range("value", v, -1e12, 1e12)?;
            }
            Props::Conversion {
                name: x.name,
                value: x.value,
                decision: x.decision,
            }
        }
        EventType::Mouse => {
            let x: MouseP = w.props.typed(&p)?;
            p.range("speed", x.speed, 0.0, 1e6)?;
            p.range("path_px", x.path_px, 0.0, 1e9)?;
            p.range("idle_ms", x.idle_ms as f64, 0.0, MAX_DURATION_MS as f64)?;
            Props::Mouse {
                speed: x.speed,
                path_px: x.path_px,
                idle_ms: x.idle_ms,
            }
        }
        EventType::Visibility => {
            let x: VisibilityP = w.props.typed(&p)?;
            Props::Visibility { visible: x.visible }
        }
        EventType::Custom => w.props.custom(&p)?,
        EventType::Signal => check_signal(w.props.typed(&p)?, &p)?,
    };
    Ok(Incoming {
        user: w.user,
        event: Event {
            id: w.id,
            session: w.session,
            ts: w.ts,
            received_ms: now_ms,
            target: w.target,
            props,
            context,
            consent: w.consent.unwrap_or_default(),
        },
    })
}

/// Custom props on the reference path: the object's entries, sorted by key.
fn parse_custom(v: Value, p: &Checker<'_>) -> Result<Props, InputError> {
    let Value::Object(map) = v else {
        return Err(InputError::new(
            Code::InvalidType,
            "props must be an object",
            Some(p.here()),
        ));
    };
    check_custom(map.into_iter(), p, |v| match v {
        Value::Bool(b) => Some(Scalar::Bool(b)),
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => Scalar::Int(i),
            None => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
        }),
        Value::String(s) => Some(Scalar::Str(s)),
        _ => None,
    })
}

/// Checks a custom event's props, given as entries sorted by key (one per key), each value
/// turned into a scalar by `scalar` (`None`: an array, object or null).
fn check_custom<V>(
    entries: impl ExactSizeIterator<Item = (String, V)>,
    p: &Checker<'_>,
    scalar: impl Fn(V) -> Option<Scalar>,
) -> Result<Props, InputError> {
    if entries.len() > p.limits.max_custom_props {
        return Err(InputError::new(
            Code::InvalidValue,
            format!(
                "{} props; a custom event has at most {}",
                entries.len(),
                p.limits.max_custom_props
            ),
            Some(p.here()),
        ));
    }
    let mut name = None;
    let mut props = BTreeMap::new();
    for (k, v) in entries {
        p.string(&k, &k, false)?;
        let Some(s) = scalar(v) else {
            return Err(InputError::new(
                Code::InvalidType,
                "custom props are strings, numbers or booleans",
                Some(p.path(&k)),
            ));
        };
        if let Scalar::Str(s) = &s {
            p.string(&k, s, true)?;
        }
        if k == "name" {
            match s {
                Scalar::Str(s) if !s.is_empty() => name = Some(s),
                _ => {
                    return Err(InputError::new(
                        Code::InvalidType,
                        "name must be a non-empty string",
                        Some(p.path("name")),
                    ))
                }
            }
        } else {
            props.insert(k, s);
        }
    }
    let name = name.ok_or_else(|| {
        InputError::new(
            Code::MissingField,
            "a custom event needs props.name",
            Some(p.path("name")),
        )
    })?;
    Ok(Props::Custom { name, props })
}

/// A JSON string, borrowed from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Any JSON value, fully parsed (string escapes, number ranges, nesting depth: what building
/// a `Value` checks) and dropped. `IgnoredAny` and `RawValue` only skip over the text.
struct Valid;

impl<'de> Deserialize<'de> for Valid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Valid;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Valid, E> {
                Ok(Valid)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Valid, A::Error> {
                while seq.next_element::<Valid>()?.is_some() {}
                Ok(Valid)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Valid, A::Error> {
                let mut keys: Vec<Text<'de>> = Vec::new();
                while let Some(key) = map.next_key::<Text<'de>>()? {
                    if keys.iter().any(|k| k.0 == key.0) {
                        return Err(duplicate_key(&key.0));
                    }
                    map.next_value::<Valid>()?;
                    keys.push(key);
                }
                Ok(Valid)
            }
        }
        d.deserialize_any(V)
    }
}

/// A custom prop's value on the fast path: numbers map as `Value::as_i64` / `as_f64` do (an
/// integer above `i64::MAX` or a non-integer is a float); arrays, objects and null fail.
struct WireScalar(Scalar);

impl<'de> Deserialize<'de> for WireScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<WireScalar, E> {
                Ok(WireScalar(Scalar::Bool(b)))
            }
            fn visit_i64<E: de::Error>(self, i: i64) -> Result<WireScalar, E> {
                Ok(WireScalar(Scalar::Int(i)))
            }
            fn visit_u64<E: de::Error>(self, u: u64) -> Result<WireScalar, E> {
                Ok(WireScalar(match i64::try_from(u) {
                    Ok(i) => Scalar::Int(i),
                    Err(_) => Scalar::Float(u as f64),
                }))
            }
            fn visit_f64<E: de::Error>(self, f: f64) -> Result<WireScalar, E> {
                Ok(WireScalar(Scalar::Float(f)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<WireScalar, E> {
                Ok(WireScalar(Scalar::Str(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<WireScalar, E> {
                Ok(WireScalar(Scalar::Str(s)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A custom event's props on the fast path: sorted by key; a repeated key fails (the
/// reference path then reports it).
struct CustomMap(BTreeMap<String, Scalar>);

impl<'de> Deserialize<'de> for CustomMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CustomMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CustomMap, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, WireScalar(v))) = map.next_entry::<String, WireScalar>()? {
                    if m.contains_key(&k) {
                        return Err(duplicate_key(&k));
                    }
                    m.insert(k, v);
                }
                Ok(CustomMap(m))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_event_type_is_listed_once_and_parses_back() {
        let names: std::collections::BTreeSet<&str> =
            EventType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names.len(), EventType::ALL.len());
        for t in EventType::ALL {
            let back: EventType = serde_json::from_value(serde_json::json!(t.as_str())).unwrap();
            assert_eq!(back, t);
        }
    }

    const NOW: i64 = 1_790_000_000_000;

    fn batch(ev: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "events": [ev] })).unwrap()
    }

    fn scroll(depth: Value) -> Value {
        serde_json::json!({"id":"e1","type":"scroll","session":"s1","ts":NOW,
            "props":{"depth":depth},"consent":{"analytics":true,"personalization":true}})
    }

    #[test]
    fn valid_scroll_parses() {
        let out = parse_batch(&batch(scroll(80.0.into())), &Limits::default(), NOW)
            .unwrap()
            .events;
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event.kind(), EventType::Scroll);
        assert!(out[0].event.consent.analytics);
        assert_eq!(out[0].event.received_ms, NOW);
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse_batch(&batch(scroll("deep".into())), &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "invalid_type");
        assert_eq!(e.path.as_deref(), Some("events[0].props.depth"));
    }

    #[test]
    fn out_of_range_is_invalid_value() {
        let e = parse_batch(&batch(scroll(120.0.into())), &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "invalid_value");
        assert_eq!(e.path.as_deref(), Some("events[0].props.depth"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let mut ev = scroll(10.into());
        ev["props"]["color"] = "red".into();
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "unknown_field");
        assert_eq!(e.path.as_deref(), Some("events[0].props.color"));
        let mut ev = scroll(10.into());
        ev["extra"] = 1.into();
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("unknown_field", Some("events[0].extra"))
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut ev = scroll(10.into());
        ev.as_object_mut().unwrap().remove("session");
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("missing_field", Some("events[0].session"))
        );
    }

    fn signal(props: Value) -> Value {
        serde_json::json!({"id":"e1","type":"signal","session":"s1","ts":NOW,"target":"buy",
            "props":props,"consent":{"analytics":true,"personalization":true}})
    }

    #[test]
    fn signals_take_their_kinds_fields_only() {
        let ok = |props: Value| -> Signal {
            let out = parse_batch(&batch(signal(props.clone())), &Limits::default(), NOW)
                .unwrap_or_else(|e| panic!("{props}: {e}"));
            let ev = &out.events[0].event;
            assert_eq!(ev.kind(), EventType::Signal);
            // Export shows the props as sent.
            assert_eq!(ev.props_json(), props);
            let Props::Signal(s) = ev.props else {
                unreachable!()
            };
            s
        };
        let s = ok(serde_json::json!({"kind": "rage_click", "count": 4, "duration_ms": 640}));
        assert_eq!(
            (s.kind, s.count, s.duration_ms),
            (SignalKind::RageClick, Some(4), Some(640))
        );
        ok(serde_json::json!({"kind": "dead_click"}));
        ok(serde_json::json!({"kind": "error_click"}));
        let s = ok(serde_json::json!({"kind": "hesitation", "duration_ms": 1500, "via": "hover"}));
        assert_eq!(s.via, Some(Via::Hover));
        ok(serde_json::json!({"kind": "exit_intent", "via": "top"}));
        ok(serde_json::json!({"kind": "reading", "wpm": 231.5}));
        ok(serde_json::json!({"kind": "excessive_scroll", "count": 5}));
        ok(serde_json::json!({"kind": "quick_back", "duration_ms": 3200}));
        ok(serde_json::json!({"kind": "engagement", "duration_ms": 15000}));
        let s = ok(serde_json::json!({"kind": "motion", "state": "walking", "tilt": 35.0}));
        assert_eq!((s.state, s.tilt), (Some(MotionState::Walking), Some(35.0)));
        ok(serde_json::json!({"kind": "motion", "state": "still"}));

        let err = |props: Value| {
            let e = parse_batch(&batch(signal(props)), &Limits::default(), NOW).unwrap_err();
            (e.code.as_str(), e.path.unwrap_or_default(), e.message)
        };
        let (code, path, msg) = err(serde_json::json!({"kind": "dead_click", "count": 3}));
        assert_eq!(
            (code, path.as_str()),
            ("unknown_field", "events[0].props.count")
        );
        assert!(msg.contains("dead_click"), "{msg}");
        let (code, path, _) = err(serde_json::json!({"kind": "hesitation", "via": "hover"}));
        assert_eq!(
            (code, path.as_str()),
            ("missing_field", "events[0].props.duration_ms")
        );
        let (code, path, msg) = err(serde_json::json!({"kind": "exit_intent", "via": "idle"}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_value", "events[0].props.via")
        );
        assert!(msg.contains("top, flick, hidden"), "{msg}");
        let (code, path, _) = err(serde_json::json!({"kind": "reading", "wpm": 10001}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_value", "events[0].props.wpm")
        );
        let (code, path, _) =
            err(serde_json::json!({"kind": "motion", "state": "still", "tilt": -1}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_value", "events[0].props.tilt")
        );
        let (code, path, _) = err(serde_json::json!({"kind": "rage_click", "count": 0}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_value", "events[0].props.count")
        );
        let (code, path, _) = err(serde_json::json!({"kind": "sneeze"}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_value", "events[0].props.kind")
        );
        let (code, path, _) = err(serde_json::json!({"kind": "motion", "state": "running"}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_value", "events[0].props.state")
        );
        let (code, path, _) = err(serde_json::json!({"count": 3}));
        assert_eq!(
            (code, path.as_str()),
            ("missing_field", "events[0].props.kind")
        );
        let (code, path, _) = err(serde_json::json!({"kind": "quick_back", "duration_ms": "3s"}));
        assert_eq!(
            (code, path.as_str()),
            ("invalid_type", "events[0].props.duration_ms")
        );
    }

    #[test]
    fn malformed_json_and_limits() {
        let e = parse_batch(b"{\"events\": [", &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "malformed_json");
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let e = parse_batch(&batch(scroll(1.into())), &limits, NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "body_too_large");
        assert!(e.is_too_large());
        let many: Vec<Value> = (0..101).map(|_| scroll(1.into())).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "events": many })).unwrap();
        let e = parse_batch(&body, &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "batch_too_large");
        let mut ev = scroll(1.into());
        ev["session"] = "x".repeat(300).into();
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("string_too_long", Some("events[0].session"))
        );
    }

    #[test]
    fn hover_needs_target_and_phase() {
        let ev = serde_json::json!({"id":"h","type":"hover","session":"s","ts":NOW,
            "props":{"phase":"start"}});
        let e = parse_batch(&batch(ev.clone()), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("missing_field", Some("events[0].target"))
        );
        let mut ok = ev;
        ok["target"] = "product-image".into();
        let out = parse_batch(&batch(ok.clone()), &Limits::default(), NOW)
            .unwrap()
            .events;
        assert_eq!(
            out[0].event.props,
            Props::Hover {
                phase: Phase::Start,
                duration_ms: 0
            }
        );
        ok["props"]["phase"] = "wobble".into();
        let e = parse_batch(&batch(ok), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("invalid_value", Some("events[0].props.phase"))
        );
    }

    #[test]
    fn custom_props_and_stale_timestamps() {
        let ev = serde_json::json!({"id":"c","type":"custom","session":"s","ts":NOW,
            "props":{"name":"bench","seq":3,"ok":true}});
        let out = parse_batch(&batch(ev.clone()), &Limits::default(), NOW)
            .unwrap()
            .events;
        assert_eq!(out[0].event.props_json()["seq"], 3);
        let mut nested = ev.clone();
        nested["props"]["deep"] = serde_json::json!({"a":1});
        let e = parse_batch(&batch(nested), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("invalid_type", Some("events[0].props.deep"))
        );
        let mut old = ev;
        old["ts"] = (NOW - 40 * 86_400_000).into();
        let e = parse_batch(&batch(old), &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.path.as_deref(), Some("events[0].ts"));
    }

    #[test]
    fn event_round_trips_through_postcard_and_json() {
        let out = parse_batch(&batch(scroll(42.5.into())), &Limits::default(), NOW)
            .unwrap()
            .events;
        let ev = &out[0].event;
        let bytes = postcard::to_allocvec(ev).unwrap();
        let back: Event = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, ev);
        assert_eq!(ev.to_json()["props"]["depth"], 42.5);
    }

    proptest! {
        /// Arbitrary bytes never panic the parser; every error carries a stable code.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = parse_batch(&body, &Limits::default(), NOW) {
                prop_assert!(!e.code.as_str().is_empty());
            }
        }

        /// Any in-range depth is accepted and kept exactly.
        #[test]
        fn scroll_depth_roundtrip(depth in 0.0f64..=100.0) {
            let out = parse_batch(&batch(scroll(depth.into())), &Limits::default(), NOW).unwrap().events;
            let is_depth = matches!(out[0].event.props, Props::Scroll { depth: d, .. } if d == depth);
            prop_assert!(is_depth);
        }
    }
    // ---- The typed fast path against the `Value` reference ----

    /// The original `parse_batch`: JSON → `Value` → typed, kept as the reference.
    fn reference_batch(body: &[u8], limits: &Limits, now: i64) -> Result<Batch, InputError> {
        check_body_size(body, limits)?;
        require_object(body)?;
        parse_batch_value(parse_json(body)?, limits, now)
    }

    /// The WebSocket session's original checks (`handle_text`), plus `auth`.
    fn reference_message(
        body: &[u8],
        limits: &Limits,
        now: i64,
    ) -> Result<ClientMessage, InputError> {
        if body.len() > limits.max_body_bytes {
            return Err(InputError::new(
                Code::BodyTooLarge,
                "message exceeds limits.max_body_bytes",
                None,
            ));
        }
        parse_client_message_reference(body, limits, now)
    }

    type Flat = Result<(Vec<Incoming>, Option<String>), InputError>;

    fn flat(r: Result<Batch, InputError>) -> Flat {
        r.map(|b| (b.events, b.token))
    }

    fn err(r: Result<Batch, InputError>) -> (&'static str, Option<String>) {
        let e = r.unwrap_err();
        (e.code.as_str(), e.path)
    }

    fn msg_err(body: &str) -> (&'static str, Option<String>) {
        let e = parse_client_message(body.as_bytes(), &Limits::default(), NOW).unwrap_err();
        (e.code.as_str(), e.path)
    }

    fn some(p: &str) -> Option<String> {
        Some(p.to_string())
    }

    fn events_body(events: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "events": events })).unwrap()
    }

    fn custom(props: Value) -> Value {
        serde_json::json!({"id":"c","type":"custom","session":"s","ts":NOW,"props":props})
    }

    #[test]
    fn error_paths_at_several_depths() {
        let l = Limits::default();
        let mut evs: Vec<Value> = (0..4).map(|_| scroll(1.into())).collect();
        evs[3]["props"]["depth"] = "deep".into();
        assert_eq!(
            err(parse_batch(&events_body(evs), &l, NOW)),
            ("invalid_type", some("events[3].props.depth"))
        );
        let mut evs: Vec<Value> = (0..2).map(|_| scroll(1.into())).collect();
        evs[1]["context"] = serde_json::json!({"hour": 24});
        assert_eq!(
            err(parse_batch(&events_body(evs.clone()), &l, NOW)),
            ("invalid_value", some("events[1].context.hour"))
        );
        evs[1]["context"]["hour"] = "x".into();
        assert_eq!(
            err(parse_batch(&events_body(evs.clone()), &l, NOW)),
            ("invalid_type", some("events[1].context.hour"))
        );
        evs[1]["context"] = serde_json::json!({"planet": "mars"});
        assert_eq!(
            err(parse_batch(&events_body(evs), &l, NOW)),
            ("unknown_field", some("events[1].context.planet"))
        );
        let ev = custom(serde_json::json!({"name":"n","deep":{"a":1}}));
        assert_eq!(
            err(parse_batch(&batch(ev), &l, NOW)),
            ("invalid_type", some("events[0].props.deep"))
        );
        let ev = custom(serde_json::json!({"name":"n","list":[1]}));
        assert_eq!(
            err(parse_batch(&batch(ev), &l, NOW)),
            ("invalid_type", some("events[0].props.list"))
        );
        let ev = serde_json::json!({"id":"h","type":"hover","session":"s","ts":NOW,
            "target":"t","props":{"phase":"end","visible_ratio":0.5}});
        assert_eq!(
            err(parse_batch(&batch(ev), &l, NOW)),
            ("unknown_field", some("events[0].props.visible_ratio"))
        );
        let mut ev = scroll(1.into());
        ev["id"] = "x".repeat(65).into();
        assert_eq!(
            err(parse_batch(&batch(ev), &l, NOW)),
            ("string_too_long", some("events[0].id"))
        );
        let mut ev = scroll(1.into());
        ev["target"] = "a\u{85}b".into();
        assert_eq!(
            err(parse_batch(&batch(ev), &l, NOW)),
            ("invalid_value", some("events[0].target"))
        );
        // The envelope.
        let ev = scroll(1.into());
        let body = serde_json::to_vec(&serde_json::json!({"events":[ev],"extra":1})).unwrap();
        assert_eq!(
            err(parse_batch(&body, &l, NOW)),
            ("unknown_field", some("extra"))
        );
        let body = serde_json::to_vec(&serde_json::json!({"events":[ev],"token":5})).unwrap();
        assert_eq!(
            err(parse_batch(&body, &l, NOW)),
            ("invalid_type", some("token"))
        );
        assert_eq!(
            err(parse_batch(br#"{"events":{}}"#, &l, NOW)),
            ("invalid_type", some("events"))
        );
        assert_eq!(
            err(parse_batch(br#"{"token":"t"}"#, &l, NOW)),
            ("missing_field", some("events"))
        );
        assert_eq!(
            err(parse_batch(br#"{"events":[]}"#, &l, NOW)),
            ("invalid_value", some("events"))
        );
        assert_eq!(err(parse_batch(b"[1]", &l, NOW)).0, "invalid_type");
        let e = parse_batch(b"{\"events\":[\n{]}", &l, NOW).unwrap_err();
        assert_eq!(e.code.as_str(), "malformed_json");
        assert!(e.message.contains("(line 2, column 2)"), "{}", e.message);
    }

    #[test]
    fn envelope_then_events() {
        let l = Limits::default();
        let ev = scroll(5.into());
        let body =
            serde_json::to_vec(&serde_json::json!({"token":"tok","events":[ev, ev]})).unwrap();
        let raw = parse_batch_envelope(&body, &l).unwrap();
        assert_eq!(
            (raw.token(), raw.len(), raw.is_empty()),
            (Some("tok"), 2, false)
        );
        let events = raw.into_events(&l, NOW).unwrap();
        assert_eq!(events, parse_batch(&body, &l, NOW).unwrap().events);
        // An invalid event does not fail the envelope: the handler can authenticate first.
        let body = events_body(vec![scroll(500.into())]);
        let raw = parse_batch_envelope(&body, &l).unwrap();
        assert_eq!(raw.token(), None);
        let e = raw.into_events(&l, NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("invalid_value", Some("events[0].props.depth"))
        );
        // The number of events is checked in the second step too (after authentication).
        let small = Limits {
            max_batch_events: 1,
            ..Limits::default()
        };
        let body = events_body(vec![scroll(1.into()), scroll(2.into())]);
        let raw = parse_batch_envelope(&body, &small).unwrap();
        assert_eq!(raw.len(), 2);
        let e = raw.into_events(&small, NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("batch_too_large", Some("events"))
        );
        let raw = parse_batch_envelope(br#"{"events":[], "token":"t"}"#, &l).unwrap();
        assert_eq!((raw.token(), raw.is_empty()), (Some("t"), true));
        let e = raw.into_events(&l, NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("invalid_value", Some("events"))
        );
    }

    #[test]
    fn client_message_codes() {
        let l = Limits::default();
        let ev = serde_json::to_string(&scroll(3.into())).unwrap();
        let ok = format!(r#"{{"type":"events","events":[{ev}]}}"#);
        match parse_client_message(ok.as_bytes(), &l, NOW).unwrap() {
            ClientMessage::Events(v) => assert_eq!(v.len(), 1),
            m => panic!("{m:?}"),
        }
        let tiny = Limits {
            max_body_bytes: 8,
            ..Limits::default()
        };
        let e = parse_client_message(ok.as_bytes(), &tiny, NOW).unwrap_err();
        assert_eq!((e.code.as_str(), e.path), ("body_too_large", None));
        assert_eq!(msg_err(r#"{"type":"events","#), ("malformed_json", None));
        let e = parse_client_message(b"[1]", &l, NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str(), e.path),
            ("invalid_type", "a message is a JSON object", None)
        );
        assert_eq!(msg_err(r#"{"events":[]}"#), ("missing_field", some("type")));
        assert_eq!(msg_err(r#"{"type":7}"#), ("missing_field", some("type")));
        let e = parse_client_message(br#"{"type":"x"}"#, &l, NOW).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str(), e.path.as_deref()),
            ("invalid_value", r#"unknown message type "x""#, Some("type"))
        );
        assert_eq!(
            parse_client_message(br#"{"type":"ping","t":[1,{"a":null}]}"#, &l, NOW),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            msg_err(&format!(
                r#"{{"type":"events","zz":1,"aa":2,"events":[{ev}]}}"#
            )),
            ("unknown_field", some("aa"))
        );
        assert_eq!(
            msg_err(r#"{"type":"events","token":"t","events":[]}"#),
            ("unknown_field", some("token"))
        );
        assert_eq!(
            msg_err(r#"{"type":"events","events":{}}"#),
            ("invalid_type", some("events"))
        );
        assert_eq!(
            msg_err(r#"{"type":"events","events":null}"#),
            ("invalid_type", some("events"))
        );
        assert_eq!(
            msg_err(r#"{"type":"events"}"#),
            ("missing_field", some("events"))
        );
        assert_eq!(
            msg_err(r#"{"type":"events","events":[]}"#),
            ("invalid_value", some("events"))
        );
        let bad = serde_json::to_string(&scroll("x".into())).unwrap();
        assert_eq!(
            msg_err(&format!(r#"{{"type":"events","events":[{ev},{bad}]}}"#)),
            ("invalid_type", some("events[1].props.depth"))
        );
        assert_eq!(
            parse_client_message(br#"{"token":"abc","type":"auth","v":1}"#, &l, NOW),
            Ok(ClientMessage::Auth {
                token: "abc".into()
            })
        );
        assert_eq!(
            msg_err(r#"{"type":"auth"}"#),
            ("missing_field", some("token"))
        );
        assert_eq!(
            msg_err(r#"{"type":"auth","token":1}"#),
            ("invalid_type", some("token"))
        );
    }

    #[test]
    fn keys_in_any_order() {
        let l = Limits::default();
        let ev = format!(
            r#"{{"props":{{"depth":7}},"consent":{{"analytics":true}},"ts":{NOW},
                "session":"s","type":"scroll","id":"e"}}"#
        );
        let body = format!(r#"{{"token":"t","events":[{ev}]}}"#);
        let b = parse_batch(body.as_bytes(), &l, NOW).unwrap();
        assert_eq!(b.token.as_deref(), Some("t"));
        assert!(matches!(b.events[0].event.props, Props::Scroll { depth, .. } if depth == 7.0));
        let msg = format!(r#"{{"events":[{ev}],"type":"events"}}"#);
        assert_eq!(
            parse_client_message(msg.as_bytes(), &l, NOW),
            Ok(ClientMessage::Events(b.events))
        );
        // Escaped keys and strings are fine too.
        let body = format!(
            r#"{{"ev\u0065nts":[{{"\u0069d":"\u00e9","type":"page_view","session":"s",
                "ts":{NOW},"props":{{"path":"\/a"}}}}]}}"#
        );
        let b = parse_batch(body.as_bytes(), &l, NOW).unwrap();
        assert_eq!(b.events[0].event.id, "é");
        assert_eq!(flat(Ok(b)), flat(reference_batch(body.as_bytes(), &l, NOW)));
    }

    #[test]
    fn custom_prop_numbers_map_as_before() {
        let body = format!(
            r#"{{"events":[{{"id":"c","type":"custom","session":"s","ts":{NOW},"props":{{
                "name":"n","a":9223372036854775807,"b":9223372036854775808,
                "c":18446744073709551615,"d":-9223372036854775808,"e":1.5,"f":-0,"g":1e2,
                "h":100000000000000000000,"i":true,"j":"x","k":-7}}}}]}}"#
        );
        let l = Limits::default();
        let got = parse_batch(body.as_bytes(), &l, NOW).unwrap().events;
        let Props::Custom { name, props } = &got[0].event.props else {
            panic!()
        };
        assert_eq!(name, "n");
        let want = [
            ("a", Scalar::Int(i64::MAX)),
            ("b", Scalar::Float(9223372036854775808.0)),
            ("c", Scalar::Float(u64::MAX as f64)),
            ("d", Scalar::Int(i64::MIN)),
            ("e", Scalar::Float(1.5)),
            ("f", Scalar::Float(-0.0)),
            ("g", Scalar::Float(100.0)),
            ("h", Scalar::Float(1e20)),
            ("i", Scalar::Bool(true)),
            ("j", Scalar::Str("x".into())),
            ("k", Scalar::Int(-7)),
        ];
        for (k, v) in want {
            assert_eq!(props.get(k), Some(&v), "{k}");
        }
        assert_eq!(
            flat(Ok(Batch {
                events: got,
                token: None
            })),
            flat(reference_batch(body.as_bytes(), &l, NOW))
        );
    }

    /// Where typed deserialization alone would differ from the `Value` parser, the result is the
    /// reference one.
    #[test]
    fn reference_rules_are_kept() {
        let l = Limits::default();
        let ev = serde_json::to_string(&scroll(3.into())).unwrap();
        let bad_id = ev.replace(r#""id":"e1""#, r#""id":"""#);
        let cases = [
            // A repeated key (typed deserialization and the reference both refuse it).
            format!(r#"{{"events":[{ev}],"token":1,"token":"t"}}"#),
            format!(
                r#"{{"events":[{}]}}"#,
                ev.replace(r#""depth":3"#, r#""depth":"x","depth":4"#)
            ),
            format!(
                r#"{{"events":[{}]}}"#,
                ev.replace(r#""ts""#, r#""ts":1,"ts""#)
            ),
            // Errors in one object: the first key in sorted order wins.
            format!(
                r#"{{"events":[{}]}}"#,
                ev.replace(r#""session":"s1""#, r#""zz":1,"session":5"#)
            ),
            r#"{"zz":1,"events":5}"#.to_string(),
            // A syntax error anywhere wins over a validation error before it.
            format!(r#"{{"events":[{bad_id},{}]}}"#, ev.replace("3", "1e400")),
            format!(r#"{{"events":[{bad_id},{}]}}"#, ev.replace("s1", r"\ud800")),
            format!(
                r#"{{"events":[{bad_id},{}{}]}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            format!(r#"{{"extra":1,"events":[{ev}],"x":1e999}}"#),
        ];
        for body in cases {
            let got = flat(parse_batch(body.as_bytes(), &l, NOW));
            assert_eq!(
                got,
                flat(reference_batch(body.as_bytes(), &l, NOW)),
                "{body}"
            );
        }
        // A repeated key is refused wherever it is, on both paths, with line and column.
        for body in [
            format!(r#"{{"events":[{ev}],"token":1,"token":"t"}}"#),
            format!(
                r#"{{"events":[{}]}}"#,
                ev.replace(r#""depth":3"#, r#""depth":3,"depth":4"#)
            ),
            format!(
                r#"{{"events":[{}]}}"#,
                ev.replace(r#""type":"scroll""#, r#""type":"custom""#)
                    .replace(r#""depth":3"#, r#""name":"n","a":1,"a":2"#)
            ),
        ] {
            let e = parse_batch(body.as_bytes(), &l, NOW).unwrap_err();
            assert_eq!(e.code, Code::DuplicateKey, "{body}");
            assert!(e.message.contains("line 1"), "{}", e.message);
        }
        for msg in [
            r#"{"type":"ping","x":1,"x":2}"#.to_string(),
            r#"{"type":"ping","x":{"y":1,"y":2}}"#.to_string(),
            format!(r#"{{"type":"events","events":[{ev}],"events":[{ev}]}}"#),
        ] {
            let e = parse_client_message(msg.as_bytes(), &l, NOW).unwrap_err();
            assert_eq!(e.code, Code::DuplicateKey, "{msg}");
        }
        let e =
            parse_body::<Limits>(br#"{"max_batch_events":5,"max_batch_events":6}"#).unwrap_err();
        assert_eq!(e.code, Code::DuplicateKey);
        let e = parse_batch(
            format!(r#"{{"events":[{bad_id},{}]}}"#, ev.replace("3", "1e400")).as_bytes(),
            &l,
            NOW,
        )
        .unwrap_err();
        assert_eq!(e.code.as_str(), "malformed_json");
        for msg in [
            r#"{"type":"ping","x":1e400}"#.to_string(),
            r#"{"type":"ping","events":"\ud800"}"#.to_string(),
            r#"{"type":"auth","token":"t","events":[1e400]}"#.to_string(),
            r#"{"type":"ping","type":"events","events":[]}"#.to_string(),
            format!(
                r#"{{"type":"ping","x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            format!(r#"{{"type":"events","events":[{ev}],"events":[{ev},{ev}]}}"#),
        ] {
            assert_eq!(
                parse_client_message(msg.as_bytes(), &l, NOW),
                reference_message(msg.as_bytes(), &l, NOW),
                "{msg}"
            );
        }
    }

    #[test]
    fn parse_body_matches_parse_json_then_from_value() {
        for body in [
            r#"{"max_batch_events":5}"#,
            r#"{"max_batch_events":5,"max_batch_events":6}"#,
            r#"{"max_batch_events":"5"}"#,
            r#"{"nope":1}"#,
            r#"{"max_batch_events":-1}"#,
            r#"{"max_body_bytes":1,"#,
            r#"[]"#,
            r#"{"zz":1,"max_body_bytes":"x"}"#,
        ] {
            let new: Result<Limits, _> = parse_body(body.as_bytes());
            let old: Result<Limits, _> = require_object(body.as_bytes())
                .and_then(|()| parse_json(body.as_bytes()))
                .and_then(|v| from_value(v, ""));
            assert_eq!(
                new.map(|l| serde_json::to_value(l).unwrap()),
                old.map(|l| serde_json::to_value(l).unwrap()),
                "{body}"
            );
        }
        // Not an object: serde would fill a struct from an array by position.
        for body in ["[]", "[5]", "null", "7", " \n[{}]"] {
            let e = parse_body::<Limits>(body.as_bytes()).unwrap_err();
            assert_eq!(e.code, Code::InvalidType, "{body}");
        }
        let e = parse_body::<Limits>(b"[1,").unwrap_err();
        assert_eq!(e.code, Code::MalformedJson);
        let l: Limits = parse_body(br#"{"max_batch_events":6}"#).unwrap();
        assert_eq!(l.max_batch_events, 6);
        let e = parse_body::<Limits>(br#"{"max_batch_events":"x"}"#).unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.path.as_deref()),
            ("invalid_type", Some("max_batch_events"))
        );
    }

    /// Test-side JSON with keys in a chosen order, repeated keys and literal text.
    #[derive(Clone, Debug)]
    enum J {
        Lit(String),
        Arr(Vec<J>),
        /// Keys are JSON string literals (quotes included), so they may hold escapes.
        Obj(Vec<(String, J)>),
    }

    impl J {
        fn of(v: &Value) -> J {
            match v {
                Value::Array(a) => J::Arr(a.iter().map(J::of).collect()),
                Value::Object(m) => J::Obj(
                    m.iter()
                        .map(|(k, v)| (serde_json::to_string(k).unwrap(), J::of(v)))
                        .collect(),
                ),
                v => J::Lit(v.to_string()),
            }
        }
        fn write(&self, out: &mut String) {
            match self {
                J::Lit(s) => out.push_str(s),
                J::Arr(a) => {
                    out.push('[');
                    for (i, x) in a.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        x.write(out);
                    }
                    out.push(']');
                }
                J::Obj(m) => {
                    out.push('{');
                    for (i, (k, x)) in m.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(k);
                        out.push(':');
                        x.write(out);
                    }
                    out.push('}');
                }
            }
        }
        fn count(&self) -> usize {
            match self {
                J::Lit(_) => 0,
                J::Arr(a) => a.iter().map(J::count).sum(),
                J::Obj(m) => 1 + m.iter().map(|(_, x)| x.count()).sum::<usize>(),
            }
        }
        /// The `k`-th object, in document order.
        fn nth(&mut self, k: &mut usize) -> Option<&mut Vec<(String, J)>> {
            match self {
                J::Lit(_) => None,
                J::Arr(a) => a.iter_mut().find_map(|x| x.nth(k)),
                J::Obj(m) => {
                    if *k == 0 {
                        return Some(m);
                    }
                    *k -= 1;
                    m.iter_mut().find_map(|(_, x)| x.nth(k))
                }
            }
        }
        fn shuffle(&mut self, g: &mut Gen) {
            match self {
                J::Lit(_) => {}
                J::Arr(a) => a.iter_mut().for_each(|x| x.shuffle(g)),
                J::Obj(m) => {
                    for i in (1..m.len()).rev() {
                        m.swap(i, g.below(i + 1));
                    }
                    m.iter_mut().for_each(|(_, x)| x.shuffle(g));
                }
            }
        }
    }

    /// A small deterministic generator (proptest supplies the seed).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[self.below(xs.len())]
        }
        fn word(&mut self) -> String {
            let len = self.below(6) + 1;
            (0..len)
                .map(|_| (b'a' + self.below(26) as u8) as char)
                .collect()
        }
        fn number(&mut self, lo: f64, hi: f64) -> Value {
            match self.below(3) {
                0 => Value::from(lo as i64 + self.below((hi - lo) as usize + 1) as i64),
                1 => Value::from(lo + (hi - lo) * (self.below(1000) as f64 / 999.0)),
                _ => Value::from(lo + (hi - lo) / 3.0),
            }
        }
        fn scalar(&mut self) -> Value {
            match self.below(6) {
                0 => Value::from(self.chance(50)),
                1 => Value::from(self.next() as i64),
                2 => Value::from(self.next()),
                3 => Value::from(self.below(1000) as f64 / 7.0),
                _ => Value::from(self.word()),
            }
        }

        /// A valid event of a random type.
        fn event(&mut self, i: usize) -> Value {
            let kinds = EventType::ALL.map(EventType::as_str);
            let kind = self.pick(&kinds);
            let mut props = serde_json::Map::new();
            let phases = ["start", "heartbeat", "end"];
            match kind {
                "page_view" => {
                    props.insert("path".into(), format!("/{}", self.word()).into());
                    if self.chance(50) {
                        props.insert("title".into(), self.word().into());
                    }
                }
                "scroll" => {
                    props.insert("depth".into(), self.number(0.0, 100.0));
                    if self.chance(50) {
                        props.insert("max_depth".into(), self.number(0.0, 100.0));
                    }
                    if self.chance(50) {
                        props.insert("velocity".into(), self.number(-10_000.0, 10_000.0));
                    }
                }
                "hover" | "dwell" => {
                    props.insert("phase".into(), self.pick(&phases).into());
                    if self.chance(70) {
                        props.insert("duration_ms".into(), (self.below(100_000) as u64).into());
                    }
                    if kind == "dwell" && self.chance(50) {
                        props.insert("visible_ratio".into(), self.number(0.0, 1.0));
                    }
                }
                "click" => {
                    if self.chance(50) {
                        props.insert("decision".into(), self.word().into());
                    }
                }
                "impression" => {
                    props.insert("slot".into(), self.word().into());
                    props.insert("variant".into(), self.word().into());
                    if self.chance(50) {
                        props.insert("decision".into(), self.word().into());
                    }
                }
                "conversion" => {
                    if self.chance(50) {
                        props.insert("name".into(), self.word().into());
                    }
                    if self.chance(50) {
                        props.insert("value".into(), self.number(-1e6, 1e6));
                    }
                }
                "mouse" => {
                    props.insert("speed".into(), self.number(0.0, 1e6));
                    props.insert("path_px".into(), self.number(0.0, 1e9));
                    props.insert("idle_ms".into(), (self.below(1_000_000) as u64).into());
                }
                "visibility" => {
                    props.insert("visible".into(), self.chance(50).into());
                }
                "signal" => {
                    let k = SignalKind::ALL[self.below(SignalKind::ALL.len())];
                    props.insert("kind".into(), k.as_str().into());
                    for (f, need) in k.fields() {
                        if !need && self.chance(50) {
                            continue;
                        }
                        let v: Value = match *f {
                            "count" => (1 + self.below(20) as u64).into(),
                            "duration_ms" => (self.below(100_000) as u64).into(),
                            "via" => k.vias()[self.below(k.vias().len())].as_str().into(),
                            "wpm" => self.number(0.0, 10_000.0),
                            "state" => MotionState::ALL[self.below(3)].as_str().into(),
                            _ => self.number(0.0, 180.0),
                        };
                        props.insert((*f).into(), v);
                    }
                }
                _ => {
                    props.insert("name".into(), self.word().into());
                    for _ in 0..self.below(3) {
                        props.insert(self.word(), self.scalar());
                    }
                }
            }
            let mut ev = serde_json::json!({
                "id": format!("e{i}"), "type": kind, "session": self.word(),
                "ts": NOW - self.below(1_000_000) as i64,
            });
            if !props.is_empty() || self.chance(80) {
                ev["props"] = Value::Object(props);
            }
            if kind == "hover" || kind == "dwell" || self.chance(30) {
                ev["target"] = self.word().into();
            }
            if self.chance(30) {
                ev["user"] = self.word().into();
            }
            if self.chance(50) {
                ev["context"] = serde_json::json!({"page": "/p", "hour": self.below(24),
                    "tz_offset_min": self.number(-840.0, 840.0).as_f64().unwrap() as i64,
                    "viewport_w": self.below(4000), "language": "en"});
            }
            if self.chance(60) {
                ev["consent"] = serde_json::json!({"analytics": self.chance(80)});
            }
            ev
        }

        fn weird(&mut self) -> J {
            let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
            let now = NOW.to_string();
            let stale = (NOW - 40 * 86_400_000).to_string();
            let long = format!("\"{}\"", "x".repeat(30));
            let lits: &[&str] = &[
                "null",
                "true",
                "false",
                "0",
                "-0",
                "1",
                "-1",
                "1.5",
                "23",
                "24",
                "100",
                "101",
                "-841",
                "840",
                "1e2",
                "1e400",
                "-1e400",
                "18446744073709551615",
                "18446744073709551616",
                "9223372036854775807",
                "9223372036854775808",
                "-9223372036854775809",
                &now,
                &stale,
                "\"\"",
                "\"x\"",
                "\"start\"",
                "\"end\"",
                "\"scroll\"",
                "\"custom\"",
                "\"page_view\"",
                "\"hover\"",
                "\"events\"",
                "\"ping\"",
                "\"auth\"",
                r#""\u00e9t\u00e9""#,
                r#""\ud800""#,
                r#""\udc00x""#,
                r#""\ud83d\ude00""#,
                r#""a\u0001b""#,
                r#""\u0085""#,
                "\"é\"",
                &long,
                "[]",
                "{}",
                "[1]",
                r#"{"a":1}"#,
                r#"{"scroll":null}"#,
                r#"{"name":"n"}"#,
                &deep,
            ];
            match self.below(10) {
                0 => J::of(&self.scalar()),
                1 => J::of(&self.event(9)),
                _ => J::Lit(self.pick(lits).to_string()),
            }
        }

        fn key(&mut self) -> String {
            let keys = [
                "\"id\"",
                "\"type\"",
                "\"session\"",
                "\"ts\"",
                "\"user\"",
                "\"target\"",
                "\"props\"",
                "\"context\"",
                "\"consent\"",
                "\"events\"",
                "\"token\"",
                "\"name\"",
                "\"depth\"",
                "\"phase\"",
                "\"hour\"",
                "\"page\"",
                "\"visible_ratio\"",
                "\"analytics\"",
                "\"extra\"",
                "\"zz\"",
                "\"\"",
                r#""typ\u0065""#,
                r#""\u0069d""#,
                r#""a\u0000""#,
            ];
            self.pick(&keys).to_string()
        }

        /// Shuffles every object's keys, then applies a few random mutations.
        fn mutate(&mut self, j: &mut J, mutations: usize) {
            j.shuffle(self);
            for _ in 0..mutations {
                let n = j.count();
                if n == 0 {
                    return;
                }
                let Some(m) = j.nth(&mut self.below(n)) else {
                    return;
                };
                let at = if m.is_empty() { 0 } else { self.below(m.len()) };
                match self.below(5) {
                    0 if !m.is_empty() => m[at].1 = self.weird(),
                    1 if !m.is_empty() => {
                        m.remove(at);
                    }
                    2 if !m.is_empty() => {
                        let k = m[at].0.clone();
                        let v = self.weird();
                        m.insert(self.below(m.len() + 1), (k, v));
                    }
                    _ => {
                        let (k, v) = (self.key(), self.weird());
                        m.insert(at, (k, v));
                    }
                }
            }
        }

        fn limits(&mut self) -> Limits {
            Limits {
                max_body_bytes: if self.chance(3) { 200 } else { 64 * 1024 },
                max_batch_events: 4,
                max_string_len: 24,
                max_custom_props: 3,
                max_event_age_days: 30,
            }
        }

        /// Random text damage (mostly syntax errors), sometimes.
        fn damage(&mut self, mut body: Vec<u8>) -> Vec<u8> {
            if self.chance(5) && !body.is_empty() {
                body.truncate(self.below(body.len()));
            } else if self.chance(5) {
                let at = self.below(body.len() + 1);
                let b = b"{}[],:\"\\ 0-e.tn\xff"[self.below(16)];
                body.insert(at, b);
            }
            body
        }
    }

    fn batch_case(seed: u64) -> (Vec<u8>, Limits) {
        let mut g = Gen(seed | 1);
        let n = match g.below(20) {
            0 => 0,
            1 => 5,
            _ => g.below(4) + 1,
        };
        let events: Vec<Value> = (0..n).map(|i| g.event(i)).collect();
        let mut top = serde_json::json!({ "events": events });
        if g.chance(30) {
            top["token"] = g.word().into();
        }
        let mut j = J::of(&top);
        let mutations = [0, 0, 0, 1, 1, 2, 3][g.below(7)];
        g.mutate(&mut j, mutations);
        let mut s = String::new();
        j.write(&mut s);
        (g.damage(s.into_bytes()), g.limits())
    }

    fn message_case(seed: u64) -> (Vec<u8>, Limits) {
        let mut g = Gen(seed | 1);
        let kind = g.pick(&["events", "events", "events", "ping", "auth", "pong"]);
        let mut top = serde_json::json!({ "type": kind });
        if kind == "events" || g.chance(20) {
            let n = if g.chance(5) { 0 } else { g.below(4) + 1 };
            top["events"] = (0..n).map(|i| g.event(i)).collect();
        }
        if kind == "auth" || g.chance(10) {
            top["token"] = g.word().into();
        }
        let mut j = J::of(&top);
        let mutations = [0, 0, 0, 1, 1, 2][g.below(6)];
        g.mutate(&mut j, mutations);
        let mut s = String::new();
        j.write(&mut s);
        (g.damage(s.into_bytes()), g.limits())
    }

    #[test]
    fn generated_cases_are_mostly_valid() {
        // The generator must exercise the fast path's successes, not only its failures.
        let ok = (0..400u64)
            .filter(|&s| {
                let (body, limits) = batch_case(s);
                parse_batch(&body, &limits, NOW).is_ok()
            })
            .count();
        assert!(ok > 100, "{ok} of 400 generated batches are valid");
        let ok = (0..400u64)
            .filter(|&s| {
                let (body, limits) = message_case(s);
                parse_client_message(&body, &limits, NOW).is_ok()
            })
            .count();
        assert!(ok > 100, "{ok} of 400 generated messages are valid");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// For valid and mutated batches (keys in any order, repeated keys, wrong values, text
        /// damage), the typed parse gives exactly the reference result: the same events, or the
        /// same error (code, message, path).
        #[test]
        fn fast_path_matches_reference_batch(seed in any::<u64>()) {
            let (body, limits) = batch_case(seed);
            let new = flat(parse_batch(&body, &limits, NOW));
            let old = flat(reference_batch(&body, &limits, NOW));
            prop_assert_eq!(new, old, "{}", String::from_utf8_lossy(&body));
        }

        /// The same for WebSocket messages.
        #[test]
        fn fast_path_matches_reference_message(seed in any::<u64>()) {
            let (body, limits) = message_case(seed);
            let new = parse_client_message(&body, &limits, NOW);
            let old = reference_message(&body, &limits, NOW);
            prop_assert_eq!(new, old, "{}", String::from_utf8_lossy(&body));
        }

        #[test]
        fn arbitrary_messages_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let limits = Limits::default();
            prop_assert_eq!(
                parse_client_message(&body, &limits, NOW),
                reference_message(&body, &limits, NOW)
            );
            prop_assert_eq!(
                flat(parse_batch(&body, &limits, NOW)),
                flat(reference_batch(&body, &limits, NOW))
            );
        }
    }
}
