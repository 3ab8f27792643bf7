//! The backtest (`POST /v1/rules/backtest`, `trimtab rules backtest`): a rule source not yet
//! installed, replayed with the installed rules over recorded traffic — each user's stored
//! events of a time window, in order, through the server's decision step
//! ([`super::Session`], timer ticks included), from a fresh state, never pushing and never
//! writing — and summed up: how many users and sessions it would fire for, per variant; when
//! in the session it fires; where it meets the installed rules on the same slot; its errors
//! and operations; a few example users.
//!
//! Bounded: at most `max_events` events are replayed (the answer says when the window held
//! more). [`Progress`] is readable while it runs and a cancel flag stops it between users.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LabConfig, LabError, RuleSet, Session, World};
use crate::features::UserState;
use std::path::Path;
use trimtab_privacy::UserKey;
use trimtab_store::Store;
use trimtab_wire::Event;

/// Events replayed at most when the request names no bound.
/// (They are held in memory for the replay: a few hundred bytes each.)
pub const DEFAULT_MAX_EVENTS: u64 = 200_000;
/// Example users in an answer.
const EXAMPLES: usize = 5;
/// Upper bounds (ms) of the time-to-fire histogram's buckets; the last is open.
const BUCKETS_MS: [i64; 8] = [
    1_000, 5_000, 15_000, 30_000, 60_000, 120_000, 300_000, 900_000,
];

/// What to backtest (`POST /v1/rules/backtest`'s body).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleBacktestRequest)]
pub struct Request {
    /// The rule's Rhai source.
    #[schema(min_length = 1, max_length = 262144, pattern = "\\S")]
    pub source: String,
    /// The rule's name (an installed rule of this name is replaced by it for the backtest;
    /// default `candidate`).
    #[serde(default)]
    #[schema(pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: Option<String>,
    /// Events received at or after this time (Unix ms; default: the oldest kept).
    #[serde(default)]
    pub from_ms: Option<i64>,
    /// Events received before this time (Unix ms; default: now).
    #[serde(default)]
    pub to_ms: Option<i64>,
    /// The share of users to replay, in (0, 1] (a fixed sample: the same users every time).
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub sample: Option<f64>,
    /// Events to replay at most (default 200 000; they are held in memory).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_events: Option<u64>,
}

impl Request {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("candidate")
    }

    /// Whether `user` is in the sample.
    fn sampled(&self, user: &UserKey) -> bool {
        match self.sample {
            None => true,
            Some(s) => {
                let h = u64::from_le_bytes(user.0[8..16].try_into().expect("8 bytes"));
                (h as f64 / u64::MAX as f64) < s
            }
        }
    }

    /// Checks the fields a schema cannot (`path` of the problem, message).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.source.trim().is_empty() {
            return Err(("source", "the rule's source is empty".into()));
        }
        if let Some(s) = self.sample {
            if !(s > 0.0 && s <= 1.0) {
                return Err(("sample", format!("sample must be in (0, 1], got {s}")));
            }
        }
        if self.max_events == Some(0) {
            return Err(("max_events", "max_events must be at least 1".into()));
        }
        if let Some(n) = &self.name {
            trimtab_rules::validate_name(n).map_err(|e| ("name", e.to_string()))?;
        }
        Ok(())
    }
}

/// How far a backtest is (readable from any thread while it runs).
#[derive(Debug, Default)]
pub struct Progress {
    /// Event-store records looked at, and how many there are.
    pub records_scanned: AtomicU64,
    pub records_total: AtomicU64,
    /// Events taken for replay.
    pub events: AtomicU64,
    /// Users replayed, of how many.
    pub users_done: AtomicU64,
    pub users_total: AtomicU64,
    pub cancel: AtomicBool,
}

impl Progress {
    pub fn snapshot(&self) -> serde_json::Value {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "records_scanned": l(&self.records_scanned),
            "records_total": l(&self.records_total),
            "events": l(&self.events),
            "users_done": l(&self.users_done),
            "users_total": l(&self.users_total),
        })
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Per (slot, variant): the users, the (user, session)s and the decisions.
type Tally = (HashSet<UserKey>, HashSet<(UserKey, String)>, u64);

/// Each user's events, in order.
pub type Audience = Vec<(UserKey, Vec<Arc<Event>>)>;

/// The candidate of `req` with the installed rules of `installed`, compiled into a world of
/// their own (the set's temp dir lives as long as the returned [`RuleSet`]).
pub fn world(
    cfg: LabConfig,
    installed: &Path,
    req: &Request,
) -> Result<(RuleSet, World), LabError> {
    let set = RuleSet::build(
        Some(installed),
        None,
        &[(req.name().to_string(), req.source.clone())],
        &cfg.limits,
    )?;
    let world = World::new(cfg, set.rules.clone())?;
    Ok((set, world))
}

/// Builds an [`Audience`] from events in any order of users (each user's in order): keeps
/// those of the request's window and sample, at most `max_events` of them.
struct Gather<'r> {
    req: &'r Request,
    max: u64,
    by_user: HashMap<UserKey, Vec<Arc<Event>>>,
    order: Vec<UserKey>,
    taken: u64,
    truncated: bool,
}

impl<'r> Gather<'r> {
    fn new(req: &'r Request) -> Gather<'r> {
        Gather {
            req,
            max: req.max_events.unwrap_or(DEFAULT_MAX_EVENTS),
            by_user: HashMap::new(),
            order: Vec::new(),
            taken: 0,
            truncated: false,
        }
    }

    /// Takes `ev` of `user` if the request wants it; `false` once the bound is reached (stop).
    fn take(&mut self, user: &UserKey, ev: Event) -> bool {
        if !self.req.sampled(user)
            || self.req.from_ms.is_some_and(|f| ev.received_ms < f)
            || self.req.to_ms.is_some_and(|t| ev.received_ms >= t)
        {
            return true;
        }
        if self.taken >= self.max {
            self.truncated = true;
            return false;
        }
        self.taken += 1;
        let order = &mut self.order;
        self.by_user
            .entry(*user)
            .or_insert_with(|| {
                order.push(*user);
                Vec::new()
            })
            .push(Arc::new(ev));
        true
    }

    /// `(audience, truncated)`, users in the order they first came.
    fn finish(mut self) -> (Audience, bool) {
        let audience = self
            .order
            .into_iter()
            .map(|u| {
                let evs = self.by_user.remove(&u).unwrap_or_default();
                (u, evs)
            })
            .collect();
        (audience, self.truncated)
    }
}

/// The users' events of the request's window and sample from the store, in each user's
/// order; `Ok((audience, truncated))`.
pub fn collect(
    store: &Store,
    req: &Request,
    progress: &Progress,
) -> Result<(Audience, bool), LabError> {
    let (first, end) = store.event_records();
    progress.records_total.store(end - first, Ordering::Relaxed);
    let mut g = Gather::new(req);
    store
        .scan_events(first, |user, _seq, plain| {
            progress.records_scanned.fetch_add(1, Ordering::Relaxed);
            if progress.cancelled() {
                return false;
            }
            if !req.sampled(user) {
                return true; // not decoded at all
            }
            let Ok(ev) = postcard::from_bytes::<Event>(plain) else {
                return true;
            };
            let go = g.take(user, ev);
            progress.events.store(g.taken, Ordering::Relaxed);
            go
        })
        .map_err(|e| LabError::Io(format!("reading the event store: {e}")))?;
    Ok(g.finish())
}

/// The users' events of the request's window and sample from a JSONL file of wire events
/// naming their `user` (e.g. the simulator's `--offline --events`), each received at its own
/// `ts`; users are pseudonymised with a fixed key. `Ok((audience, truncated))`.
pub fn collect_file(file: &Path, req: &Request) -> Result<(Audience, bool), LabError> {
    use std::io::BufRead;
    let f = std::fs::File::open(file)
        .map_err(|e| LabError::Io(format!("cannot read {}: {e}", file.display())))?;
    let pseudo = trimtab_privacy::Pseudonymizer::new([0; 32]);
    let mut g = Gather::new(req);
    for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| LabError::Io(format!("{}: {e}", file.display())))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |e: String| LabError::Io(format!("{} line {}: {e}", file.display(), n + 1));
        let mut v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let user = v
            .as_object_mut()
            .and_then(|o| o.remove("user"))
            .and_then(|u| u.as_str().map(str::to_string))
            .ok_or_else(|| at("every event needs its \"user\"".into()))?;
        let ts = v["ts"]
            .as_i64()
            .ok_or_else(|| at("every event needs its \"ts\"".into()))?;
        let ev = super::parse_event(v, ts).map_err(|e| at(e.to_string()))?;
        if !g.take(&pseudo.user(&user), ev) {
            break;
        }
    }
    Ok(g.finish())
}

/// Users, sessions and decisions of one (slot, variant).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Count {
    pub slot: String,
    pub variant: String,
    pub users: u64,
    pub sessions: u64,
    pub decisions: u64,
}

/// One bucket of the time-to-fire histogram.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper bound, ms from the session's first event (None: the open last bucket).
    pub le_ms: Option<i64>,
    pub sessions: u64,
}

/// An installed rule that decided the same slot in sessions where the candidate fired.
#[derive(Debug, Clone, Serialize)]
pub struct Conflict {
    pub rule: String,
    pub slot: String,
    pub sessions: u64,
}

/// One user the rule fired for.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    /// The user's pseudonymous key (hex): `GET /v1/admin/users/{key}` shows them.
    pub key: String,
    pub session: String,
    /// ms from the session's first event to the first firing.
    pub after_ms: i64,
    pub slot: String,
    pub variant: String,
}

/// How the candidate's runs went.
#[derive(Debug, Clone, Serialize)]
pub struct RuleRuns {
    pub runs: u64,
    pub failures: u64,
    pub operations: u64,
    pub adjust_calls: u64,
    pub disabled: bool,
    pub disabled_reason: Option<String>,
    pub last_error: Option<trimtab_rules::RuleErrorInfo>,
}

/// The backtest's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub rule: String,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub sample: Option<f64>,
    pub users: u64,
    pub sessions: u64,
    pub events: u64,
    /// The window held more events than `max_events`: the replay stopped there.
    pub truncated: bool,
    /// Users and sessions the candidate would fire for (its admitted decisions).
    pub fired_users: u64,
    pub fired_sessions: u64,
    pub decisions: u64,
    pub by_variant: Vec<Count>,
    /// When in a session it first fires.
    pub time_to_fire: Vec<Bucket>,
    pub conflicts: Vec<Conflict>,
    pub rule_runs: RuleRuns,
    pub examples: Vec<Example>,
    pub elapsed_ms: u64,
}

/// Replays `audience` in `world` (the installed rules and the candidate `name`) and sums up.
/// Stops between users when cancelled (the outcome then covers the users replayed).
pub fn replay(
    world: &World,
    req: &Request,
    audience: &Audience,
    truncated: bool,
    progress: &Progress,
) -> Outcome {
    let started = std::time::Instant::now();
    let name = req.name();
    progress
        .users_total
        .store(audience.len() as u64, Ordering::Relaxed);
    let mut counts: BTreeMap<(String, String), Tally> = BTreeMap::new();
    let mut fired_users = HashSet::new();
    let mut fired_sessions: HashSet<(UserKey, String)> = HashSet::new();
    let mut first_fire: HashMap<(UserKey, String), i64> = HashMap::new();
    let mut conflicts: BTreeMap<(String, String), HashSet<(UserKey, String)>> = BTreeMap::new();
    let mut examples = Vec::new();
    let (mut sessions_seen, mut events, mut decisions) = (HashSet::new(), 0u64, 0u64);
    for (user, evs) in audience {
        if progress.cancelled() {
            break;
        }
        let mut s = Session::new(*user, UserState::default());
        let mut fired = Vec::new();
        let mut starts: HashMap<String, i64> = HashMap::new();
        for ev in evs {
            starts.entry(ev.session.clone()).or_insert(ev.received_ms);
            sessions_seen.insert((*user, ev.session.clone()));
            s.event(world, ev, &mut fired);
            events += 1;
        }
        if let Some(last) = evs.last() {
            s.run_timers(
                world,
                last.received_ms + world.cfg.features.ongoing_timeout_ms + 1,
                &mut fired,
            );
        }
        // Slots each session's installed rules decided, and the candidate's.
        let mut installed: HashMap<String, HashSet<(String, String)>> = HashMap::new();
        let mut mine: HashMap<String, HashSet<String>> = HashMap::new();
        for f in &fired {
            let Some(rule) = &f.rule else { continue };
            if rule != name {
                installed
                    .entry(f.session.clone())
                    .or_default()
                    .insert((rule.clone(), f.slot.clone()));
                continue;
            }
            decisions += 1;
            let sk = (*user, f.session.clone());
            let c = counts
                .entry((f.slot.clone(), f.variant.clone()))
                .or_default();
            c.0.insert(*user);
            c.1.insert(sk.clone());
            c.2 += 1;
            fired_users.insert(*user);
            mine.entry(f.session.clone())
                .or_default()
                .insert(f.slot.clone());
            if fired_sessions.insert(sk.clone()) {
                let after = f.at - starts.get(&f.session).copied().unwrap_or(f.at);
                first_fire.insert(sk, after);
                if examples.len() < EXAMPLES {
                    examples.push(Example {
                        key: user.hex(),
                        session: f.session.clone(),
                        after_ms: after,
                        slot: f.slot.clone(),
                        variant: f.variant.clone(),
                    });
                }
            }
        }
        for (session, slots) in &mine {
            for (rule, slot) in installed.get(session).into_iter().flatten() {
                if slots.contains(slot) {
                    conflicts
                        .entry((rule.clone(), slot.clone()))
                        .or_default()
                        .insert((*user, session.clone()));
                }
            }
        }
        progress.users_done.fetch_add(1, Ordering::Relaxed);
    }
    let mut hist = vec![0u64; BUCKETS_MS.len() + 1];
    for after in first_fire.values() {
        let i = BUCKETS_MS
            .iter()
            .position(|b| after <= b)
            .unwrap_or(BUCKETS_MS.len());
        hist[i] += 1;
    }
    let status = world.rules.statuses().into_iter().find(|s| s.name == name);
    Outcome {
        rule: name.to_string(),
        from_ms: req.from_ms,
        to_ms: req.to_ms,
        sample: req.sample,
        users: progress.users_done.load(Ordering::Relaxed),
        sessions: sessions_seen.len() as u64,
        events,
        truncated,
        fired_users: fired_users.len() as u64,
        fired_sessions: fired_sessions.len() as u64,
        decisions,
        by_variant: counts
            .into_iter()
            .map(|((slot, variant), (u, s, d))| Count {
                slot,
                variant,
                users: u.len() as u64,
                sessions: s.len() as u64,
                decisions: d,
            })
            .collect(),
        time_to_fire: hist
            .into_iter()
            .enumerate()
            .map(|(i, n)| Bucket {
                le_ms: BUCKETS_MS.get(i).copied(),
                sessions: n,
            })
            .collect(),
        conflicts: conflicts
            .into_iter()
            .map(|((rule, slot), s)| Conflict {
                rule,
                slot,
                sessions: s.len() as u64,
            })
            .collect(),
        rule_runs: match status {
            Some(s) => RuleRuns {
                runs: s.runs,
                failures: s.failures,
                operations: s.operations,
                adjust_calls: s.adjustments,
                disabled: s.state == "disabled",
                disabled_reason: s.disabled_reason,
                last_error: s.last_error,
            },
            None => RuleRuns {
                runs: 0,
                failures: 0,
                operations: 0,
                adjust_calls: 0,
                disabled: false,
                disabled_reason: None,
                last_error: None,
            },
        },
        examples,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, kind: &str, props: serde_json::Value, at: i64) -> Arc<Event> {
        let v = serde_json::json!({"id": id, "type": kind, "session": "s1", "ts": at,
            "props": props, "context": {"page": "/a"},
            "consent": {"analytics": true, "personalization": true}});
        Arc::new(crate::lab::parse_event(v, at).unwrap())
    }

    #[test]
    fn conflicts_time_to_fire_and_cancel() {
        let installed = tempfile::tempdir().unwrap();
        std::fs::write(
            installed.path().join("inst.rhai"),
            "const ON = [\"scroll\"];\nif (user.scroll?.depth ?? 0.0) > 80.0 { adjust(\"promo\", \"inst\", #{}); }",
        )
        .unwrap();
        let cand = "const ON = [\"scroll\"];\nif user.showing(\"promo\") != \"\" { return; }\nif (user.scroll?.depth ?? 0.0) > 60.0 { adjust(\"promo\", \"small\", #{}); }";
        let req = Request {
            source: cand.into(),
            name: Some("cand".into()),
            from_ms: None,
            to_ms: None,
            sample: None,
            max_events: None,
        };
        let (_set, world) = world(LabConfig::default(), installed.path(), &req).unwrap();
        let t0 = 1_800_000_000_000;
        let u = UserKey([7; 16]);
        let audience: Audience = vec![(
            u,
            vec![
                event("p", "page_view", serde_json::json!({"path": "/a"}), t0),
                event(
                    "a",
                    "scroll",
                    serde_json::json!({"depth": 70.0}),
                    t0 + 7_000,
                ),
                event(
                    "b",
                    "scroll",
                    serde_json::json!({"depth": 85.0}),
                    t0 + 9_000,
                ),
            ],
        )];
        let out = replay(&world, &req, &audience, false, &Progress::default());
        assert_eq!(
            (out.fired_users, out.fired_sessions, out.decisions),
            (1, 1, 1)
        );
        assert_eq!(out.conflicts.len(), 1, "{out:?}");
        assert_eq!(
            (
                out.conflicts[0].rule.as_str(),
                out.conflicts[0].slot.as_str(),
                out.conflicts[0].sessions
            ),
            ("inst", "promo", 1)
        );
        // Fired 7 s into the session: the 5–15 s bucket.
        let b: Vec<u64> = out.time_to_fire.iter().map(|b| b.sessions).collect();
        assert_eq!(b, [0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out.examples[0].after_ms, 7_000);
        // Cancelled before it starts: nobody is replayed.
        let p = Progress::default();
        p.cancel.store(true, Ordering::Relaxed);
        assert_eq!(replay(&world, &req, &audience, false, &p).users, 0);
    }
}
