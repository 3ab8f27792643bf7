//! Drives a running `trimtab serve` over real WebSockets with the synthetic audience.
//!
//! Per simulated user, on one of `concurrency` worker threads (sync `tungstenite` + `ureq`):
//! 1. `POST /v1/anonymous` → a token (the browser SDK's way; no secret needed);
//! 2. open `/v1/ws`, authenticate with `{"type":"auth","token":…}`, wait for `ready`;
//! 3. send the behaviour script as `events` batches the way the SDK flushes them (events of
//!    a 200 ms window together, clicks at once), paced in wall time at `speed`× real time
//!    (`speed = 0`: no waiting). Every event grants analytics + personalization consent; a
//!    first visit starts with the SDK's `consent` custom event. Hover/dwell `end` events carry
//!    their full duration, which the server trusts over its (compressed) clock. Errors
//!    `overloaded`/`rate_limited`/`unavailable`/`storage_unavailable` are retried with the same ids after a
//!    backoff; then it waits until every event is acknowledged;
//! 4. `POST /v1/decide {slot, candidates}` with the token; an `adjust` for the slot pushed over
//!    the socket (with a candidate variant) takes precedence, as in the SDK;
//! 5. sends the `impression` of the decision, then — drawn from the ground truth — a `click`
//!    citing the decision id and maybe a `conversion`, and waits for their acks.
//!
//! Each decision is recorded with the user's type and context, the variant, its propensity, the
//! true click probability of every candidate and the outcome; [`summarize`] turns the records
//! into a [`Summary`] (click rates, expected reward vs oracle and uniform, regret per half).
//! Users, scripts and outcomes are reproducible from the seed; which variant the server picks
//! is the server's business.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::audience::{
    argmax, default_candidates, generate_user, Device, GroundTruth, Mix, SimUser, UserType,
};
use super::offline::context_vector;
use trimtab_util::now_ms;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineConfig {
    /// Base URL of the server (`http://host:port`).
    pub url: String,
    pub users: usize,
    pub seed: u64,
    /// Worker threads (users in flight).
    pub concurrency: usize,
    pub slot: String,
    pub candidates: Vec<String>,
    pub mix: Mix,
    /// Time compression: script time runs `speed`× faster than wall time; 0 = no waiting.
    pub speed: f64,
    /// How long to wait for acks (and for the server in general) per step.
    pub timeout: Duration,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        OnlineConfig {
            url: "http://127.0.0.1:8080".into(),
            users: 500,
            seed: 7,
            concurrency: 8,
            slot: "cta".into(),
            candidates: default_candidates(),
            mix: Mix::default(),
            speed: 50.0,
            timeout: Duration::from_secs(15),
        }
    }
}

/// One decision the server made for a simulated user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecisionRecord {
    /// Position in the order decisions were obtained (0-based, over the whole run).
    pub order: usize,
    pub user_index: usize,
    /// The anonymous user id the server issued.
    pub user: String,
    pub kind: UserType,
    pub device: Device,
    pub hour: u8,
    pub returning: bool,
    /// The context vector the server computes after the script (see `offline`).
    pub context: Vec<f32>,
    pub variant: String,
    /// Index among the candidates (None if the server chose something else).
    pub variant_index: Option<usize>,
    pub decision_id: String,
    /// `decision.source` as the server reported it (`default`, `rule`, `current`, …).
    pub source: String,
    pub experiment: Option<String>,
    /// `decide` (HTTP answer) or `push` (an `adjust` over the socket).
    pub via: String,
    pub propensity: f64,
    /// True `P(click)` of every candidate for this user.
    pub click_p: Vec<f64>,
    /// True `P(click)` of the variant shown.
    pub shown_p: f64,
    pub clicked: bool,
    pub converted: bool,
}

/// What happened to one simulated user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserRecord {
    pub index: usize,
    pub user: Option<String>,
    pub kind: UserType,
    /// Distinct events sent (retries not counted) and acknowledged.
    pub events_sent: usize,
    pub events_acked: usize,
    /// Click events sent (content clicks of the script + the click on the slot).
    pub clicks_sent: usize,
    pub adjusts: usize,
    pub decided: bool,
    /// Why the user did not complete, if they did not.
    pub failure: Option<String>,
}

/// Shows and clicks of one variant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VariantSummary {
    pub shows: u64,
    pub clicks: u64,
    pub click_rate: f64,
    /// Mean true `P(click)` of the users it was shown to.
    pub true_rate: f64,
}

/// Per user type.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TypeSummary {
    pub users: u64,
    pub decisions: u64,
    pub clicks: u64,
    pub click_rate: f64,
    /// The truly best variant for this type's simulated users (highest mean `P(click)`).
    pub best_variant: String,
    /// The variant the server showed them most.
    pub most_shown: String,
    /// Share of this type's decisions that showed the user's own best variant.
    pub best_share: f64,
}

/// The result of a run (`--json` prints it).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub url: String,
    pub seed: u64,
    pub slot: String,
    pub candidates: Vec<String>,
    pub speed: f64,
    pub users: u64,
    /// Users that went through every step.
    pub users_completed: u64,
    pub events_sent: u64,
    pub events_acked: u64,
    pub decisions: u64,
    /// Decisions by `decision.source`.
    pub sources: BTreeMap<String, u64>,
    /// Decisions taken from an `adjust` push rather than the `decide` answer.
    pub pushed: u64,
    pub clicks: u64,
    pub conversions: u64,
    pub click_rate: f64,
    pub conversion_rate: f64,
    pub variants: BTreeMap<String, VariantSummary>,
    pub types: BTreeMap<String, TypeSummary>,
    /// Σ true `P(click)` of the variants shown.
    pub expected_reward: f64,
    /// Σ max over candidates of the true `P(click)`.
    pub oracle_reward: f64,
    /// Σ mean over candidates of the true `P(click)`.
    pub uniform_reward: f64,
    /// `oracle_reward − expected_reward`, overall and per half of the decisions (in order).
    pub regret: f64,
    pub regret_first_half: f64,
    pub regret_second_half: f64,
    /// Errors by code (server `error` codes, HTTP statuses as `http_<status>`, and client-side
    /// failures such as `connect` or `ack_timeout`).
    pub errors: BTreeMap<String, u64>,
    pub elapsed_s: f64,
    pub users_per_s: f64,
}

/// Everything a run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub summary: Summary,
    pub decisions: Vec<DecisionRecord>,
    pub users: Vec<UserRecord>,
}

impl Report {
    /// The decision of each user, in the order of `users`.
    pub fn decisions_by_user(&self) -> Vec<Option<&DecisionRecord>> {
        let by: BTreeMap<usize, &DecisionRecord> =
            self.decisions.iter().map(|d| (d.user_index, d)).collect();
        self.users
            .iter()
            .map(|u| by.get(&u.index).copied())
            .collect()
    }
}

/// `host:port` of an `http://` or `ws://` URL (or of a bare `host:port`).
pub fn authority(url: &str) -> anyhow::Result<String> {
    let rest = if let Some(r) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("ws://"))
    {
        r
    } else if url.starts_with("https://") || url.starts_with("wss://") {
        bail!("{url}: TLS is not supported by the simulator; use http:// (e.g. a local address)")
    } else if url.contains("://") {
        bail!("{url}: expected an http:// URL")
    } else {
        url
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        bail!("{url}: no host");
    }
    Ok(if host.contains(':') && !host.ends_with(']') {
        host.to_string()
    } else {
        format!("{host}:80")
    })
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// An HTTP answer: status, JSON body (Null if none) and Retry-After seconds.
struct Answer {
    status: u16,
    json: Value,
    retry_after: Option<u64>,
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    bearer: Option<&str>,
    body: &Value,
) -> Result<Answer, String> {
    let mut r = agent.post(url).content_type("application/json");
    if let Some(b) = bearer {
        r = r.header("Authorization", format!("Bearer {b}"));
    }
    let mut resp = r.send(body.to_string()).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    Ok(Answer {
        status,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        retry_after,
    })
}

/// State shared by the workers.
struct Shared<'a> {
    cfg: &'a OnlineConfig,
    truth: GroundTruth,
    base: String,
    addr: String,
    http: ureq::Agent,
    order: AtomicUsize,
}

/// Errors seen by one user, by code.
#[derive(Default)]
struct Errors(BTreeMap<String, u64>);

impl Errors {
    fn add(&mut self, code: impl Into<String>) {
        *self.0.entry(code.into()).or_insert(0) += 1;
    }
}

/// A POST retried on 429/503 (honouring Retry-After, at most 5 tries).
fn post_retry(
    sh: &Shared<'_>,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
    errs: &mut Errors,
) -> Result<Value, String> {
    let url = format!("{}{}", sh.base, path);
    for attempt in 0..5u32 {
        let a = post(&sh.http, &url, bearer, body).map_err(|e| {
            errs.add("http_transport");
            format!("POST {path}: {e}")
        })?;
        match a.status {
            200..=299 => return Ok(a.json),
            429 | 503 => {
                errs.add(format!("http_{}", a.status));
                let wait = a.retry_after.map_or(100 << attempt, |s| s * 1000);
                std::thread::sleep(Duration::from_millis(wait.min(5000)));
            }
            s => {
                let code = a.json["error"]["code"].as_str().unwrap_or("").to_string();
                errs.add(if code.is_empty() {
                    format!("http_{s}")
                } else {
                    code.clone()
                });
                return Err(format!("POST {path}: {s} {code}"));
            }
        }
    }
    Err(format!("POST {path}: still busy after 5 tries"))
}

/// The user's socket and what arrived on it.
struct Socket {
    ws: WebSocket<TcpStream>,
    /// Sent, not yet acknowledged: id → event.
    unacked: BTreeMap<String, Value>,
    /// Ids to resend at a time, with their try count.
    retry: VecDeque<(Instant, Vec<String>, u32)>,
    sent: HashSet<String>,
    acked: HashSet<String>,
    /// The last `adjust` of the slot.
    adjust: Option<Value>,
    adjusts: usize,
}

enum Pump {
    Ok,
    Closed(String),
}

impl Socket {
    fn open(sh: &Shared<'_>, token: &str, errs: &mut Errors) -> Result<Socket, String> {
        let req = format!("ws://{}/v1/ws", sh.addr)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        let stream = TcpStream::connect(&sh.addr).map_err(|e| {
            errs.add("connect");
            format!("connect {}: {e}", sh.addr)
        })?;
        let _ = stream.set_nodelay(true);
        stream
            .set_read_timeout(Some(sh.cfg.timeout))
            .map_err(|e| e.to_string())?;
        let ws = match tungstenite::client(req, stream) {
            Ok((ws, _)) => ws,
            Err(e) => {
                errs.add("ws_handshake");
                return Err(format!("WebSocket handshake: {e}"));
            }
        };
        let mut s = Socket {
            ws,
            unacked: BTreeMap::new(),
            retry: VecDeque::new(),
            sent: HashSet::new(),
            acked: HashSet::new(),
            adjust: None,
            adjusts: 0,
        };
        s.send_json(&json!({"type": "auth", "token": token}))?;
        let end = Instant::now() + sh.cfg.timeout;
        loop {
            match s.read(end.saturating_duration_since(Instant::now())) {
                Ok(Some(m)) if m["type"] == "ready" => return Ok(s),
                Ok(Some(m)) if m["type"] == "error" => {
                    let code = m["code"].as_str().unwrap_or("error").to_string();
                    errs.add(code.clone());
                    return Err(format!("WebSocket auth refused: {code}"));
                }
                Ok(_) if Instant::now() < end => {}
                Ok(_) => {
                    errs.add("auth_timeout");
                    return Err("no ready after auth".into());
                }
                Err(e) => {
                    errs.add("ws_closed");
                    return Err(e);
                }
            }
        }
    }

    fn send_json(&mut self, v: &Value) -> Result<(), String> {
        self.ws
            .send(Message::text(v.to_string()))
            .map_err(|e| format!("WebSocket send: {e}"))
    }

    /// Sends events as one `events` message and tracks them until acked.
    fn send_events(&mut self, events: Vec<Value>) -> Result<(), String> {
        for e in &events {
            let id = e["id"].as_str().unwrap_or_default().to_string();
            self.sent.insert(id.clone());
            self.unacked.insert(id, e.clone());
        }
        self.send_json(&json!({"type": "events", "events": events}))
    }

    /// One message within `wait` (`Ok(None)`: nothing came).
    fn read(&mut self, wait: Duration) -> Result<Option<Value>, String> {
        let _ = self
            .ws
            .get_ref()
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))));
        match self.ws.read() {
            Ok(Message::Text(t)) => Ok(serde_json::from_str(t.as_str()).ok()),
            Ok(Message::Close(f)) => Err(format!(
                "the server closed the socket{}",
                f.map(|f| format!(" ({} {})", u16::from(f.code), f.reason.as_str()))
                    .unwrap_or_default()
            )),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(format!("WebSocket read: {e}")),
        }
    }

    /// Reads and handles messages until `until`, resending retried ids when due.
    fn pump(&mut self, sh: &Shared<'_>, until: Instant, errs: &mut Errors) -> Pump {
        loop {
            let now = Instant::now();
            while self.retry.front().is_some_and(|(at, _, _)| *at <= now) {
                let Some((_, ids, tries)) = self.retry.pop_front() else {
                    break;
                };
                let evs: Vec<Value> = ids
                    .iter()
                    .filter_map(|id| self.unacked.get(id).cloned())
                    .collect();
                if evs.is_empty() {
                    continue;
                }
                if let Err(e) = self.send_json(&json!({"type": "events", "events": evs})) {
                    return Pump::Closed(e);
                }
                // Remember the try count for a further refusal.
                self.retry.push_back((far_future(), ids, tries));
            }
            if now >= until {
                return Pump::Ok;
            }
            let wait = until
                .saturating_duration_since(now)
                .min(Duration::from_millis(50));
            match self.read(wait) {
                Ok(Some(m)) => self.handle(sh, m, errs),
                Ok(None) => {}
                Err(e) => return Pump::Closed(e),
            }
        }
    }

    fn handle(&mut self, sh: &Shared<'_>, m: Value, errs: &mut Errors) {
        match m["type"].as_str() {
            Some("ack") => {
                for id in m["ids"].as_array().into_iter().flatten() {
                    if let Some(id) = id.as_str() {
                        if self.unacked.remove(id).is_some() {
                            self.acked.insert(id.to_string());
                        }
                    }
                }
            }
            Some("adjust") => {
                self.adjusts += 1;
                if m["slot"] == sh.cfg.slot.as_str() {
                    self.adjust = Some(m);
                }
            }
            Some("error") => {
                let code = m["code"].as_str().unwrap_or("error").to_string();
                errs.add(code.clone());
                let ids: Vec<String> = m["ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect();
                let retryable = matches!(
                    code.as_str(),
                    "overloaded" | "rate_limited" | "unavailable" | "storage_unavailable"
                );
                if retryable && !ids.is_empty() {
                    // Tries so far for these ids (any earlier entry naming the first id).
                    let tries = self
                        .retry
                        .iter()
                        .find(|(_, v, _)| v.first() == ids.first())
                        .map_or(0, |(_, _, t)| *t);
                    self.retry.retain(|(_, v, _)| v.first() != ids.first());
                    if tries < 8 {
                        let backoff = Duration::from_millis((100u64 << tries).min(5000));
                        self.retry
                            .push_back((Instant::now() + backoff, ids, tries + 1));
                        self.retry.make_contiguous().sort_by_key(|(at, _, _)| *at);
                    } else {
                        for id in ids {
                            self.unacked.remove(&id);
                        }
                    }
                } else {
                    // Refused for good (or a message-level error): stop waiting for these.
                    for id in ids {
                        self.unacked.remove(&id);
                    }
                }
            }
            _ => {}
        }
    }

    /// Waits until every sent event is acknowledged (or the timeout passes).
    fn drain(&mut self, sh: &Shared<'_>, errs: &mut Errors) -> Result<(), String> {
        let end = Instant::now() + sh.cfg.timeout;
        while !self.unacked.is_empty() && Instant::now() < end {
            let step = (Instant::now() + Duration::from_millis(50)).min(end);
            if let Pump::Closed(e) = self.pump(sh, step, errs) {
                errs.add("ws_closed");
                return Err(e);
            }
        }
        if !self.unacked.is_empty() {
            errs.add("ack_timeout");
            return Err(format!(
                "{} events not acknowledged within {:?}",
                self.unacked.len(),
                sh.cfg.timeout
            ));
        }
        Ok(())
    }

    fn close(mut self) {
        let _ = self.ws.close(None);
        let end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < end {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Groups script events into the SDK's flushes: a flush goes out 200 ms (script time) after
/// its first event, or at once with a click. Returns (flush time, event indices).
fn flushes(user: &SimUser) -> Vec<(i64, Vec<usize>)> {
    let mut out: Vec<(i64, Vec<usize>)> = Vec::new();
    let mut cur: Option<(i64, Vec<usize>)> = None;
    for (i, e) in user.script.iter().enumerate() {
        let at = e.at_ms.max(0);
        if let Some((due, idx)) = &mut cur {
            if at <= *due && idx.len() < 100 {
                idx.push(i);
                if e.kind == "click" {
                    *due = at;
                    out.push(cur.take().expect("current flush"));
                }
                continue;
            }
            out.push(cur.take().expect("current flush"));
        }
        if e.kind == "click" {
            out.push((at, vec![i]));
        } else {
            cur = Some((at + 200, vec![i]));
        }
    }
    out.extend(cur);
    out
}

/// What one user's run produced.
struct UserResult {
    record: UserRecord,
    decision: Option<DecisionRecord>,
    errors: Errors,
}

fn run_user(sh: &Shared<'_>, index: usize) -> UserResult {
    let u = generate_user(sh.cfg.seed, index, &sh.cfg.mix);
    let mut errors = Errors::default();
    let mut record = UserRecord {
        index,
        user: None,
        kind: u.profile.kind,
        events_sent: 0,
        events_acked: 0,
        clicks_sent: 0,
        adjusts: 0,
        decided: false,
        failure: None,
    };
    let mut socket = None;
    let decision = simulate_user(sh, &u, &mut record, &mut socket, &mut errors);
    let decision = match decision {
        Ok(d) => Some(d),
        Err(e) => {
            record.failure = Some(e);
            None
        }
    };
    if let Some(s) = socket {
        record.events_sent = s.sent.len();
        record.events_acked = s.acked.len();
        record.adjusts = s.adjusts;
        s.close();
    }
    UserResult {
        record,
        decision,
        errors,
    }
}

fn simulate_user(
    sh: &Shared<'_>,
    u: &SimUser,
    record: &mut UserRecord,
    socket: &mut Option<Socket>,
    errs: &mut Errors,
) -> Result<DecisionRecord, String> {
    let cfg = sh.cfg;
    let who = post_retry(sh, "/v1/anonymous", None, &json!({}), errs)?;
    let (Some(user), Some(token)) = (who["user"].as_str(), who["token"].as_str()) else {
        errs.add("bad_anonymous");
        return Err(format!("/v1/anonymous answered {who}"));
    };
    record.user = Some(user.to_string());
    let s = socket.insert(Socket::open(sh, token, errs)?);

    // The behaviour script, paced.
    let t0 = Instant::now();
    let base_ts = now_ms();
    let wall = |at_ms: i64| -> Instant {
        if cfg.speed > 0.0 {
            t0 + Duration::from_secs_f64(at_ms.max(0) as f64 / 1000.0 / cfg.speed)
        } else {
            t0
        }
    };
    for (due, idx) in flushes(u) {
        if let Pump::Closed(e) = s.pump(sh, wall(due), errs) {
            errs.add("ws_closed");
            return Err(e);
        }
        let evs: Vec<Value> = idx.iter().map(|&i| u.wire_event(i, base_ts)).collect();
        record.clicks_sent += idx.iter().filter(|&&i| u.script[i].kind == "click").count();
        s.send_events(evs)?;
    }
    s.drain(sh, errs)?;

    // The decision.
    let ans = post_retry(
        sh,
        "/v1/decide",
        Some(token),
        &json!({"slot": cfg.slot, "candidates": cfg.candidates}),
        errs,
    )?;
    // Adjusts that raced the answer.
    if let Pump::Closed(e) = s.pump(sh, Instant::now() + Duration::from_millis(5), errs) {
        errs.add("ws_closed");
        return Err(e);
    }
    let (msg, via) = match &s.adjust {
        Some(a)
            if a["variant"]
                .as_str()
                .is_some_and(|v| cfg.candidates.iter().any(|c| c == v)) =>
        {
            (a.clone(), "push")
        }
        _ => (ans, "decide"),
    };
    let variant = msg["variant"].as_str().unwrap_or_default().to_string();
    let decision_id = msg["decision"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if variant.is_empty() || decision_id.is_empty() {
        errs.add("bad_decision");
        return Err(format!("a decision without variant or id: {msg}"));
    }
    record.decided = true;
    let order = sh.order.fetch_add(1, Ordering::Relaxed);
    let variant_index = sh.truth.index_of(&variant);
    let p = &u.profile;
    let click_p = sh.truth.click_probabilities(p);
    let (shown_p, outcome) = match variant_index {
        Some(i) => (click_p[i], u.outcome(&sh.truth, i)),
        None => {
            let t = GroundTruth::new(std::slice::from_ref(&variant));
            (t.click_probability(p, 0), u.outcome(&t, 0))
        }
    };

    // Impression, then maybe click and conversion, paced after the script.
    let end = u.duration_ms() + 300;
    if let Pump::Closed(e) = s.pump(sh, wall(end), errs) {
        errs.add("ws_closed");
        return Err(e);
    }
    s.send_events(vec![u.impression_event(
        &cfg.slot,
        &variant,
        &decision_id,
        base_ts + end,
    )])?;
    if outcome.clicked {
        let at = end + outcome.click_after_ms;
        if let Pump::Closed(e) = s.pump(sh, wall(at), errs) {
            errs.add("ws_closed");
            return Err(e);
        }
        s.send_events(vec![u.click_event(&cfg.slot, &decision_id, base_ts + at)])?;
        record.clicks_sent += 1;
        if outcome.converted {
            let at = end + outcome.conversion_after_ms;
            if let Pump::Closed(e) = s.pump(sh, wall(at), errs) {
                errs.add("ws_closed");
                return Err(e);
            }
            s.send_events(vec![u.conversion_event(&decision_id, base_ts + at)])?;
        }
    }
    s.drain(sh, errs)?;

    Ok(DecisionRecord {
        order,
        user_index: u.index,
        user: record.user.clone().unwrap_or_default(),
        kind: p.kind,
        device: p.device,
        hour: p.hour,
        returning: p.returning,
        context: context_vector(u),
        variant,
        variant_index,
        decision_id,
        source: msg["decision"]["source"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        experiment: msg["decision"]["experiment"].as_str().map(str::to_string),
        via: via.to_string(),
        propensity: msg["decision"]["propensity"].as_f64().unwrap_or(f64::NAN),
        click_p,
        shown_p,
        clicked: outcome.clicked,
        converted: outcome.converted,
    })
}

/// Checks that the server answers `GET /healthz`; a clear error otherwise.
pub fn check_reachable(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let addr = authority(url)?;
    let base = format!("http://{addr}");
    let resp = agent(timeout.min(Duration::from_secs(5)))
        .get(format!("{base}/healthz"))
        .call()
        .with_context(|| {
            format!("cannot reach the trimtab server at {base} (is `trimtab serve` running there?)")
        })?;
    if resp.status().as_u16() != 200 {
        bail!(
            "the server at {base} answered /healthz with {}",
            resp.status()
        );
    }
    Ok(())
}

/// Runs the simulation against the server at `cfg.url`.
pub fn run(cfg: &OnlineConfig) -> anyhow::Result<Report> {
    if cfg.candidates.is_empty() {
        bail!("at least one candidate is needed");
    }
    if !(cfg.speed >= 0.0 && cfg.speed.is_finite()) {
        bail!("speed must be a finite number ≥ 0 (0 = no waiting)");
    }
    check_reachable(&cfg.url, cfg.timeout)?;
    let addr = authority(&cfg.url)?;
    let sh = Shared {
        cfg,
        truth: GroundTruth::new(&cfg.candidates),
        base: format!("http://{addr}"),
        addr,
        http: agent(cfg.timeout),
        order: AtomicUsize::new(0),
    };
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<UserResult>> = Mutex::new(Vec::with_capacity(cfg.users));
    std::thread::scope(|scope| {
        for _ in 0..cfg.concurrency.clamp(1, cfg.users.max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= cfg.users {
                    break;
                }
                let r = run_user(&sh, i);
                results.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            });
        }
    });
    let elapsed = started.elapsed();
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.record.index);
    let mut errors = BTreeMap::new();
    let mut users = Vec::with_capacity(results.len());
    let mut decisions = Vec::new();
    for r in results {
        for (k, v) in r.errors.0 {
            *errors.entry(k).or_insert(0) += v;
        }
        users.push(r.record);
        decisions.extend(r.decision);
    }
    decisions.sort_by_key(|d| d.order);
    let summary = summarize(cfg, &decisions, &users, errors, elapsed);
    Ok(Report {
        summary,
        decisions,
        users,
    })
}

/// The summary of a run's records.
pub fn summarize(
    cfg: &OnlineConfig,
    decisions: &[DecisionRecord],
    users: &[UserRecord],
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
) -> Summary {
    let n = decisions.len();
    let rate = |num: u64, den: u64| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let mut s = Summary {
        url: cfg.url.clone(),
        seed: cfg.seed,
        slot: cfg.slot.clone(),
        candidates: cfg.candidates.clone(),
        speed: cfg.speed,
        users: users.len() as u64,
        users_completed: users.iter().filter(|u| u.failure.is_none()).count() as u64,
        events_sent: users.iter().map(|u| u.events_sent as u64).sum(),
        events_acked: users.iter().map(|u| u.events_acked as u64).sum(),
        decisions: n as u64,
        errors,
        elapsed_s: elapsed.as_secs_f64(),
        users_per_s: users.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        ..Summary::default()
    };
    for c in &cfg.candidates {
        s.variants.insert(c.clone(), VariantSummary::default());
    }
    let mut regret = Vec::with_capacity(n);
    // Per type: (users, decisions, clicks, Σ click_p per candidate, shows per variant, best shown).
    type Acc = (u64, u64, u64, Vec<f64>, BTreeMap<String, u64>, u64);
    let mut types: BTreeMap<UserType, Acc> = BTreeMap::new();
    for u in users {
        types
            .entry(u.kind)
            .or_insert_with(|| (0, 0, 0, vec![0.0; cfg.candidates.len()], BTreeMap::new(), 0))
            .0 += 1;
    }
    for d in decisions {
        *s.sources.entry(d.source.clone()).or_insert(0) += 1;
        s.pushed += u64::from(d.via == "push");
        s.clicks += u64::from(d.clicked);
        s.conversions += u64::from(d.converted);
        let v = s.variants.entry(d.variant.clone()).or_default();
        v.shows += 1;
        v.clicks += u64::from(d.clicked);
        v.true_rate += d.shown_p;
        let best = d.click_p.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let best = if best.is_finite() { best } else { d.shown_p };
        s.expected_reward += d.shown_p;
        s.oracle_reward += best;
        s.uniform_reward += d.click_p.iter().sum::<f64>() / d.click_p.len().max(1) as f64;
        regret.push(best - d.shown_p);
        let t = types
            .entry(d.kind)
            .or_insert_with(|| (0, 0, 0, vec![0.0; cfg.candidates.len()], BTreeMap::new(), 0));
        t.1 += 1;
        t.2 += u64::from(d.clicked);
        for (a, p) in t.3.iter_mut().zip(&d.click_p) {
            *a += p;
        }
        *t.4.entry(d.variant.clone()).or_insert(0) += 1;
        t.5 += u64::from(d.variant_index == Some(argmax(&d.click_p)));
    }
    for v in s.variants.values_mut() {
        v.click_rate = rate(v.clicks, v.shows);
        v.true_rate = if v.shows == 0 {
            0.0
        } else {
            v.true_rate / v.shows as f64
        };
    }
    s.click_rate = rate(s.clicks, s.decisions);
    s.conversion_rate = rate(s.conversions, s.decisions);
    s.regret = s.oracle_reward - s.expected_reward;
    let half = n / 2;
    s.regret_first_half = regret[..half].iter().sum();
    s.regret_second_half = regret[half..].iter().sum();
    for (t, (users, decs, clicks, sums, shown, best_shown)) in types {
        let most_shown = shown
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .map(|(v, _)| v.clone())
            .unwrap_or_default();
        s.types.insert(
            t.name().to_string(),
            TypeSummary {
                users,
                decisions: decs,
                clicks,
                click_rate: rate(clicks, decs),
                best_variant: if decs == 0 {
                    String::new()
                } else {
                    cfg.candidates[argmax(&sums)].clone()
                },
                most_shown,
                best_share: rate(best_shown, decs),
            },
        );
    }
    s
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        writeln!(
            f,
            "trimtab simulate: {} users against {} (seed {}, speed {}×), {:.1} s, {:.1} users/s",
            self.users, self.url, self.seed, self.speed, self.elapsed_s, self.users_per_s
        )?;
        writeln!(
            f,
            "  completed {} · events {} sent, {} acknowledged · decisions {} ({} pushed)",
            self.users_completed, self.events_sent, self.events_acked, self.decisions, self.pushed
        )?;
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  decision sources: {}", sources.join(", "))?;
        writeln!(
            f,
            "  clicks {} ({}) · conversions {} ({})",
            self.clicks,
            pct(self.click_rate),
            self.conversions,
            pct(self.conversion_rate)
        )?;
        writeln!(f, "  slot {:?}:", self.slot)?;
        writeln!(
            f,
            "    {:<14} {:>7} {:>7} {:>9} {:>9}",
            "variant", "shows", "clicks", "CTR", "true CTR"
        )?;
        for (name, v) in &self.variants {
            writeln!(
                f,
                "    {:<14} {:>7} {:>7} {:>9} {:>9}",
                name,
                v.shows,
                v.clicks,
                pct(v.click_rate),
                pct(v.true_rate)
            )?;
        }
        writeln!(f, "  by user type:")?;
        for (name, t) in &self.types {
            writeln!(
                f,
                "    {:<10} users {:>5}  CTR {:>6}  best {:<10} shown most {:<10} best shown {}",
                name,
                t.users,
                pct(t.click_rate),
                t.best_variant,
                t.most_shown,
                pct(t.best_share)
            )?;
        }
        let per = |x: f64| x / self.decisions.max(1) as f64;
        writeln!(
            f,
            "  expected reward {:.1} ({}) · oracle {:.1} ({}) · uniform {:.1} ({})",
            self.expected_reward,
            pct(per(self.expected_reward)),
            self.oracle_reward,
            pct(per(self.oracle_reward)),
            self.uniform_reward,
            pct(per(self.uniform_reward))
        )?;
        writeln!(
            f,
            "  regret {:.1} (first half {:.1}, second half {:.1})",
            self.regret, self.regret_first_half, self.regret_second_half
        )?;
        if self.errors.is_empty() {
            write!(f, "  errors: none")
        } else {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            write!(f, "  errors: {}", e.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::generate;

    #[test]
    fn authority_of_urls() {
        assert_eq!(
            authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(authority("ws://h:1/x").unwrap(), "h:1");
        assert_eq!(authority("example.org").unwrap(), "example.org:80");
        assert!(authority("https://x").is_err());
        assert!(authority("ftp://x").is_err());
    }

    #[test]
    fn flushes_cover_the_script_in_order() {
        for u in generate(9, 40, &Mix::default()) {
            let f = flushes(&u);
            let all: Vec<usize> = f.iter().flat_map(|(_, i)| i.clone()).collect();
            assert_eq!(all, (0..u.script.len()).collect::<Vec<_>>());
            assert!(f.windows(2).all(|w| w[0].0 <= w[1].0));
            for (due, idx) in &f {
                assert!(idx.len() <= 100);
                assert!(idx.iter().all(|&i| u.script[i].at_ms.max(0) <= *due));
            }
        }
    }

    #[test]
    fn unreachable_server_is_a_clear_error() {
        // A port nobody listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cfg = OnlineConfig {
            url: format!("http://127.0.0.1:{port}"),
            users: 1,
            ..OnlineConfig::default()
        };
        let e = run(&cfg).unwrap_err();
        assert!(format!("{e:#}").contains("cannot reach"), "{e:#}");
    }

    #[test]
    fn summary_adds_up() {
        let cfg = OnlineConfig::default();
        let rec = |order, kind, variant: &str, i, p: Vec<f64>, clicked| DecisionRecord {
            order,
            user_index: order,
            user: format!("u{order}"),
            kind,
            device: Device::Desktop,
            hour: 12,
            returning: false,
            context: vec![],
            variant: variant.into(),
            variant_index: Some(i),
            decision_id: format!("d{order}"),
            source: "default".into(),
            experiment: None,
            via: "decide".into(),
            propensity: 1.0,
            shown_p: p[i],
            click_p: p,
            clicked,
            converted: false,
        };
        let d = vec![
            rec(
                0,
                UserType::Quick,
                "control",
                0,
                vec![0.1, 0.5, 0.2, 0.0],
                false,
            ),
            rec(
                1,
                UserType::Quick,
                "urgent",
                1,
                vec![0.1, 0.5, 0.2, 0.0],
                true,
            ),
            rec(
                2,
                UserType::Deep,
                "detailed",
                3,
                vec![0.1, 0.0, 0.2, 0.4],
                true,
            ),
            rec(
                3,
                UserType::Deep,
                "detailed",
                3,
                vec![0.1, 0.0, 0.2, 0.4],
                false,
            ),
        ];
        let users: Vec<UserRecord> = d
            .iter()
            .map(|d| UserRecord {
                index: d.user_index,
                user: Some(d.user.clone()),
                kind: d.kind,
                events_sent: 10,
                events_acked: 10,
                clicks_sent: usize::from(d.clicked),
                adjusts: 0,
                decided: true,
                failure: None,
            })
            .collect();
        let s = summarize(&cfg, &d, &users, BTreeMap::new(), Duration::from_secs(2));
        assert_eq!(
            (s.users, s.decisions, s.clicks, s.events_acked),
            (4, 4, 2, 40)
        );
        assert!((s.expected_reward - 1.4).abs() < 1e-12);
        assert!((s.oracle_reward - 1.8).abs() < 1e-12);
        assert!((s.regret - 0.4).abs() < 1e-12);
        assert!((s.regret_first_half - 0.4).abs() < 1e-12);
        assert!(s.regret_second_half.abs() < 1e-12);
        assert_eq!(s.variants["detailed"].shows, 2);
        assert_eq!(s.variants["social"].shows, 0);
        assert_eq!(s.types["quick"].best_variant, "urgent");
        assert_eq!(s.types["deep"].most_shown, "detailed");
        assert_eq!(s.types["deep"].best_share, 1.0);
        assert_eq!(s.users_per_s, 2.0);
        assert!(s.to_string().contains("regret 0.4"));
    }
}
