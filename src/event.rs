//! Event schema and validation: the only module that knows the v1 wire format of events.
//!
//! Parsing is strict: unknown fields, wrong types, out-of-range values and oversized strings are
//! rejected with an [`InputError`] whose `path` names the offending field exactly as the client
//! wrote it (`events[3].props.depth`). Validated events become [`Event`]s, the compact internal
//! form that the pipeline processes and the store persists (postcard-encoded, then encrypted).
//!
//! Runs on actix worker threads (it is pure CPU work over one request body) and in tests.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl InputError {
    pub fn new(code: &'static str, message: impl Into<String>, path: Option<String>) -> Self {
        InputError {
            code,
            message: message.into(),
            path,
        }
    }
    /// True for the size-limit family (HTTP 413).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self.code,
            "body_too_large" | "batch_too_large" | "string_too_long"
        )
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

/// The event types of the v1 contract, plus `mouse` and `visibility` (SDK summaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl EventType {
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
        }
    }
}

/// Phase of an ongoing interaction (hover or dwell): SDKs send `start`, then `heartbeat`s while
/// it lasts (with the elapsed time so far), then `end` with the final duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// Where and on what the event happened. All optional; unknown fields are rejected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub hour: Option<u8>,
    #[serde(default)]
    pub tz_offset_min: Option<i32>,
    #[serde(default)]
    pub language: Option<String>,
}

/// Consent carried by each event. Missing means "not given".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEvent {
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
    props: Option<Value>,
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

/// A validated batch body.
#[derive(Debug)]
pub struct Batch {
    pub events: Vec<Incoming>,
    pub token: Option<String>,
}

/// A validated event together with the raw user id the client named (if any). The API layer
/// checks that id against the credentials and pseudonymises it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub user: Option<String>,
    pub event: Event,
}

// Typed props, one struct per event type; `deny_unknown_fields` names stray keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageViewP {
    path: String,
    #[serde(default)]
    title: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrollP {
    depth: f64,
    #[serde(default)]
    max_depth: Option<f64>,
    #[serde(default)]
    velocity: Option<f64>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseP {
    phase: Phase,
    #[serde(default)]
    duration_ms: u64,
    #[serde(default)]
    visible_ratio: Option<f64>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClickP {
    #[serde(default)]
    decision: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImpressionP {
    slot: String,
    variant: String,
    #[serde(default)]
    decision: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionP {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(default)]
    decision: Option<String>,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MouseP {
    speed: f64,
    path_px: f64,
    idle_ms: u64,
}
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VisibilityP {
    visible: bool,
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
        InputError::new("unknown_field", clean, Some(p))
    } else if clean.starts_with("missing field") {
        let p = quoted(&clean).map(|f| join(&path, f)).unwrap_or(path);
        InputError::new("missing_field", clean, Some(p))
    } else if clean.starts_with("invalid type") {
        InputError::new("invalid_type", clean, path_opt(path))
    } else {
        InputError::new("invalid_value", clean, path_opt(path))
    }
}

/// Deserializes `v` into `T`, mapping errors to stable codes with the field path under `prefix`.
pub fn from_value<T: DeserializeOwned>(v: Value, prefix: &str) -> Result<T, InputError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let inner = e.path().to_string();
        let path = if prefix.is_empty() {
            inner
        } else if inner == "." {
            prefix.to_string()
        } else if inner.starts_with('[') {
            format!("{prefix}{inner}")
        } else {
            format!("{prefix}.{inner}")
        };
        classify(&e.inner().to_string(), path)
    })
}

/// Parses and validates a batch body `{"events":[…], "token"?}`.
pub fn parse_batch(body: &[u8], limits: &Limits, now_ms: i64) -> Result<Batch, InputError> {
    if body.len() > limits.max_body_bytes {
        return Err(InputError::new(
            "body_too_large",
            format!(
                "body is {} bytes; the limit is {}",
                body.len(),
                limits.max_body_bytes
            ),
            None,
        ));
    }
    parse_batch_value(parse_json(body)?, limits, now_ms)
}

/// Validates a batch body that is already parsed JSON.
pub fn parse_batch_value(value: Value, limits: &Limits, now_ms: i64) -> Result<Batch, InputError> {
    let batch: WireBatch = from_value(value, "")?;
    Ok(Batch {
        events: parse_events(batch.events, limits, now_ms, "events")?,
        token: batch.token,
    })
}

/// Parses JSON text, mapping syntax errors to `malformed_json` with line and column.
pub fn parse_json(body: &[u8]) -> Result<Value, InputError> {
    serde_json::from_slice(body).map_err(|e| {
        InputError::new(
            "malformed_json",
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

/// Validates an already-parsed `events` array; `prefix` is its path (`events`).
pub fn parse_events(
    events: Vec<Value>,
    limits: &Limits,
    now_ms: i64,
    prefix: &str,
) -> Result<Vec<Incoming>, InputError> {
    if events.is_empty() {
        return Err(InputError::new(
            "invalid_value",
            "a batch needs at least one event",
            Some(prefix.to_string()),
        ));
    }
    if events.len() > limits.max_batch_events {
        return Err(InputError::new(
            "batch_too_large",
            format!(
                "{} events in one batch; the limit is {}",
                events.len(),
                limits.max_batch_events
            ),
            Some(prefix.to_string()),
        ));
    }
    let mut out = Vec::with_capacity(events.len());
    for (i, v) in events.into_iter().enumerate() {
        out.push(parse_event(v, limits, now_ms, &format!("{prefix}[{i}]"))?);
    }
    Ok(out)
}

struct Checker<'a> {
    limits: &'a Limits,
    base: &'a str,
}

impl Checker<'_> {
    fn path(&self, field: &str) -> String {
        format!("{}.{}", self.base, field)
    }
    fn string(&self, field: &str, s: &str, allow_empty: bool) -> Result<(), InputError> {
        if s.len() > self.limits.max_string_len {
            return Err(InputError::new(
                "string_too_long",
                format!(
                    "{} bytes; the limit is {}",
                    s.len(),
                    self.limits.max_string_len
                ),
                Some(self.path(field)),
            ));
        }
        if !allow_empty && s.is_empty() {
            return Err(InputError::new(
                "invalid_value",
                "must not be empty",
                Some(self.path(field)),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(InputError::new(
                "invalid_value",
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
                "invalid_value",
                format!("{v} is outside {lo}..={hi}"),
                Some(self.path(field)),
            ));
        }
        Ok(())
    }
}

/// Longest accepted duration of one hover or dwell segment (one day).
const MAX_DURATION_MS: u64 = 86_400_000;

fn parse_event(v: Value, limits: &Limits, now_ms: i64, base: &str) -> Result<Incoming, InputError> {
    let w: WireEvent = from_value(v, base)?;
    let c = Checker { limits, base };
    c.string("id", &w.id, false)?;
    if w.id.len() > 64 {
        return Err(InputError::new(
            "string_too_long",
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
            "invalid_value",
            format!(
                "timestamp {} (ms since epoch) is more than {} days old or more than a day ahead",
                w.ts, limits.max_event_age_days
            ),
            Some(c.path("ts")),
        ));
    }
    let context = w.context.unwrap_or_default();
    let ctx = Checker {
        limits,
        base: &c.path("context"),
    };
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
    let props_path = c.path("props");
    let props_value = w.props.unwrap_or_else(|| Value::Object(Default::default()));
    let p = Checker {
        limits,
        base: &props_path,
    };
    let need_target = |what: &str| -> Result<(), InputError> {
        if w.target.is_none() {
            return Err(InputError::new(
                "missing_field",
                format!("a {what} event needs a target"),
                Some(c.path("target")),
            ));
        }
        Ok(())
    };
    let props = match w.kind {
        EventType::PageView => {
            let x: PageViewP = from_value(props_value, &props_path)?;
            p.string("path", &x.path, false)?;
            p.opt_string("title", &x.title)?;
            Props::PageView {
                path: x.path,
                title: x.title,
            }
        }
        EventType::Scroll => {
            let x: ScrollP = from_value(props_value, &props_path)?;
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
            let x: PhaseP = from_value(props_value, &props_path)?;
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
                        "unknown_field",
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
            let x: ClickP = from_value(props_value, &props_path)?;
            p.opt_string("decision", &x.decision)?;
            Props::Click {
                decision: x.decision,
            }
        }
        EventType::Impression => {
            let x: ImpressionP = from_value(props_value, &props_path)?;
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
            let x: ConversionP = from_value(props_value, &props_path)?;
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
            let x: MouseP = from_value(props_value, &props_path)?;
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
            let x: VisibilityP = from_value(props_value, &props_path)?;
            Props::Visibility { visible: x.visible }
        }
        EventType::Custom => parse_custom(props_value, &p)?,
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

fn parse_custom(v: Value, p: &Checker<'_>) -> Result<Props, InputError> {
    let Value::Object(map) = v else {
        return Err(InputError::new(
            "invalid_type",
            "props must be an object",
            Some(p.base.to_string()),
        ));
    };
    if map.len() > p.limits.max_custom_props {
        return Err(InputError::new(
            "invalid_value",
            format!(
                "{} props; a custom event has at most {}",
                map.len(),
                p.limits.max_custom_props
            ),
            Some(p.base.to_string()),
        ));
    }
    let mut name = None;
    let mut props = BTreeMap::new();
    for (k, v) in map {
        p.string(&k, &k, false)?;
        let s = match v {
            Value::Bool(b) => Scalar::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::String(s) => {
                p.string(&k, &s, true)?;
                Scalar::Str(s)
            }
            _ => {
                return Err(InputError::new(
                    "invalid_type",
                    "custom props are strings, numbers or booleans",
                    Some(p.path(&k)),
                ))
            }
        };
        if k == "name" {
            match s {
                Scalar::Str(s) if !s.is_empty() => name = Some(s),
                _ => {
                    return Err(InputError::new(
                        "invalid_type",
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
            "missing_field",
            "a custom event needs props.name",
            Some(p.path("name")),
        )
    })?;
    Ok(Props::Custom { name, props })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
        assert_eq!(e.code, "invalid_type");
        assert_eq!(e.path.as_deref(), Some("events[0].props.depth"));
    }

    #[test]
    fn out_of_range_is_invalid_value() {
        let e = parse_batch(&batch(scroll(120.0.into())), &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code, "invalid_value");
        assert_eq!(e.path.as_deref(), Some("events[0].props.depth"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let mut ev = scroll(10.into());
        ev["props"]["color"] = "red".into();
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code, "unknown_field");
        assert_eq!(e.path.as_deref(), Some("events[0].props.color"));
        let mut ev = scroll(10.into());
        ev["extra"] = 1.into();
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code, e.path.as_deref()),
            ("unknown_field", Some("events[0].extra"))
        );
    }

    #[test]
    fn missing_field_is_named() {
        let mut ev = scroll(10.into());
        ev.as_object_mut().unwrap().remove("session");
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code, e.path.as_deref()),
            ("missing_field", Some("events[0].session"))
        );
    }

    #[test]
    fn malformed_json_and_limits() {
        let e = parse_batch(b"{\"events\": [", &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code, "malformed_json");
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        let e = parse_batch(&batch(scroll(1.into())), &limits, NOW).unwrap_err();
        assert_eq!(e.code, "body_too_large");
        assert!(e.is_too_large());
        let many: Vec<Value> = (0..101).map(|_| scroll(1.into())).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "events": many })).unwrap();
        let e = parse_batch(&body, &Limits::default(), NOW).unwrap_err();
        assert_eq!(e.code, "batch_too_large");
        let mut ev = scroll(1.into());
        ev["session"] = "x".repeat(300).into();
        let e = parse_batch(&batch(ev), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code, e.path.as_deref()),
            ("string_too_long", Some("events[0].session"))
        );
    }

    #[test]
    fn hover_needs_target_and_phase() {
        let ev = serde_json::json!({"id":"h","type":"hover","session":"s","ts":NOW,
            "props":{"phase":"start"}});
        let e = parse_batch(&batch(ev.clone()), &Limits::default(), NOW).unwrap_err();
        assert_eq!(
            (e.code, e.path.as_deref()),
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
            (e.code, e.path.as_deref()),
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
            (e.code, e.path.as_deref()),
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
                prop_assert!(!e.code.is_empty());
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
}
