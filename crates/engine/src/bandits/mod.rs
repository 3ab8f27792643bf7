//! Contextual bandits per slot, live in the engine.
//!
//! ```text
//! shard ──choose(slot, user, x)──▶ published policy snapshot (arc-swap, lock-free read)
//!   │  LearnRecord (context, candidates, action, propensity) stored with the decision
//!   └─Chosen / Outcome──▶ learner thread ──update──▶ policy ──snapshot──▶ publish
//! ```
//! - [`def`]: slot definitions (`scripts/bandits/SLOT.toml` or `PUT /v1/bandits/{slot}`), kept
//!   by the shared definition registry ([`trimtab_util::registry`]) like rules and
//!   experiments: hot-reloaded, and a broken file keeps the last good definition.
//! - Shards call [`Bandits::choose`]: holdout users (a hash of user and slot below the
//!   slot's `holdout` share) always get the control; while the guardrail has tripped everyone
//!   gets it; otherwise the policy draws with its probabilities and the propensity is logged.
//! - [`learner`]: the only owner of mutable policies. It joins decisions with their outcomes
//!   within the attribution window (a reward updates at once; no reward by the window's end is
//!   learned as 0), watches the guardrail and publishes snapshots. On start it replays the
//!   stored log, so a restart resumes where the policy was.
//! - [`record`]: the logged form of a decision (the `learnlog` table; `trimtab export-log`).

pub mod def;
pub mod export;
pub mod learner;
pub mod record;
pub mod trainer;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use crossbeam_channel::Sender;
use rand::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::experiments::def::{check_name, DefError, Definition};
use crate::experiments::DefProblem;
use def::{BanditDef, RewardKind};
use learner::LearnMsg;
use record::{Group, LearnRecord};
use trimtab_learn::bandit::{one_hot, Policy};
use trimtab_privacy::UserKey;
use trimtab_util::registry::{self, PutError, Registry};
use trimtab_util::watch::{DirWatcher, WatchError};

#[derive(Debug, thiserror::Error)]
pub enum BanditsError {
    #[error("invalid bandit definition at `{}`: {}", .0.path, .0.message)]
    Invalid(DefError),
    #[error("no bandit on slot `{0}`")]
    NotFound(String),
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl From<PutError<DefError>> for BanditsError {
    fn from(e: PutError<DefError>) -> BanditsError {
        match e {
            PutError::InvalidName { reason, .. } => BanditsError::Invalid(DefError {
                message: reason.into(),
                path: "slot".into(),
            }),
            PutError::Invalid(d) => BanditsError::Invalid(d),
            PutError::Io { path, source } => BanditsError::Io {
                path: path.display().to_string(),
                source,
            },
        }
    }
}

/// Per-group counters of closed decisions (their window ended), for lift and guardrail.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GroupStats {
    /// Decisions whose window closed.
    pub decisions: u64,
    /// Of those, how many had each outcome (click, conversion, dwell).
    pub outcomes: [u64; 3],
}

impl GroupStats {
    pub fn rate(&self, kind: RewardKind) -> Option<f64> {
        (self.decisions > 0).then(|| self.outcomes[kind.index()] as f64 / self.decisions as f64)
    }
}

/// Counters of one candidate (all groups, all decisions).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ArmStats {
    pub chosen: u64,
    pub closed: u64,
    pub rewarded: u64,
}

/// What the learner publishes for one slot.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlotStats {
    pub arms: Vec<ArmStats>,
    /// Indexed by [`Group`] as `bandit, holdout, fallback`.
    pub groups: [GroupStats; 3],
    /// Decisions whose window is still open.
    pub pending: u64,
    /// Rewards absorbed by the policy (its version).
    pub updates: u64,
}

/// A slot as shards see it: definition, the policy to draw from and the guardrail state.
pub struct LiveSlot {
    pub def: Arc<BanditDef>,
    pub policy: Box<dyn Policy>,
    pub version: u64,
    /// Why the slot serves only its control, if it does.
    pub fallback: Option<String>,
    pub stats: SlotStats,
}

/// A bandit's answer for one decision.
#[derive(Debug, Clone)]
pub struct Choice {
    pub variant: String,
    pub propensity: f64,
    pub group: Group,
    /// The record to store with the decision.
    pub record: LearnRecord,
}

/// How a slot definition file compiles (the registry's [`registry::Kind`]), the definitions
/// the learner reads (rebuilt after every change) and the channel that tells it to rebuild.
pub struct BanditKind {
    defs: ArcSwap<BTreeMap<String, Arc<BanditDef>>>,
    tx: Mutex<Option<Sender<LearnMsg>>>,
}

impl BanditKind {
    fn send(&self, msg: LearnMsg) {
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(msg);
        }
    }
}

impl registry::Kind for BanditKind {
    type Item = BanditDef;
    type Error = DefError;
    const NOUN: &'static str = "bandit";
    const EXT: &'static str = "toml";

    fn check_name(&self, name: &str) -> Result<(), &'static str> {
        check_name(name)
    }

    fn compile(
        &self,
        name: &str,
        _file: &str,
        text: &str,
        _prev: Option<&Arc<BanditDef>>,
    ) -> Result<BanditDef, DefError> {
        BanditDef::from_toml(name, text)
    }

    fn describe(e: &DefError) -> String {
        format!("{} (at {})", e.message, e.path)
    }

    /// The learner rebuilds the policies of changed slots.
    fn installed(&self, set: &registry::Set<Self>) {
        let defs = set
            .iter()
            .filter_map(|(k, e)| e.live.clone().map(|d| (k.clone(), d)))
            .collect();
        self.defs.store(Arc::new(defs));
        self.send(LearnMsg::Reload(None));
    }
}

struct Inner {
    registry: Arc<Registry<BanditKind>>,
    live: ArcSwap<HashMap<String, Arc<LiveSlot>>>,
    /// Cluster mode: every bandit decision and outcome made here is also sent to the other
    /// nodes' learners (set once, at start).
    share: std::sync::OnceLock<ShareLearning>,
}

/// See [`Bandits::set_share`].
pub type ShareLearning = Box<dyn Fn(&learner::LearnMsg) + Send + Sync>;

/// The bandit slots: definitions, published policies and the channel to the learner.
#[derive(Clone)]
pub struct Bandits {
    inner: Arc<Inner>,
}

impl Bandits {
    /// Loads every `dir/*.toml` (invalid files are reported in [`Bandits::problems`]).
    pub fn load(dir: &Path) -> Result<Bandits, BanditsError> {
        let kind = BanditKind {
            defs: ArcSwap::from_pointee(BTreeMap::new()),
            tx: Mutex::new(None),
        };
        let registry = Registry::open(kind, dir).map_err(|source| BanditsError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(Bandits {
            inner: Arc::new(Inner {
                registry: Arc::new(registry),
                live: ArcSwap::from_pointee(HashMap::new()),
                share: std::sync::OnceLock::new(),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        self.inner.registry.dir()
    }

    fn kind(&self) -> &BanditKind {
        self.inner.registry.kind()
    }

    /// Cluster mode: `f` gets every decision and outcome the shards send the learner, to pass
    /// on to the other nodes' learners (which learn from every node's users).
    pub fn set_share(&self, f: ShareLearning) {
        let _ = self.inner.share.set(f);
    }

    /// Passes a shard's learner message on to the other nodes (cluster mode).
    pub(crate) fn share(&self, msg: &LearnMsg) {
        if let Some(f) = self.inner.share.get() {
            f(msg);
        }
    }

    /// A decision or outcome another node's learner had (cluster mode): learned here too.
    pub fn learn_from_peer(&self, msg: LearnMsg) {
        if matches!(msg, LearnMsg::Chosen { .. } | LearnMsg::Outcome { .. }) {
            if let Some(tx) = &*self.kind().tx.lock().unwrap_or_else(|e| e.into_inner()) {
                let _ = tx.try_send(msg);
            }
        }
    }

    pub(crate) fn connect(&self, tx: Sender<LearnMsg>) {
        *self.kind().tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    pub fn disconnect(&self) {
        self.kind()
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    pub(crate) fn send(&self, msg: LearnMsg) {
        self.kind().send(msg);
    }

    /// Re-reads the directory (called by the watcher; puts and deletes install at once); the
    /// learner then rebuilds the policies of changed slots.
    pub fn reload(&self) {
        if let Err(e) = self.inner.registry.reload() {
            tracing::warn!(dir = %self.dir().display(), "cannot read the bandits directory: {e}");
        }
    }

    /// Waits (up to 5 s) until the learner has published what was installed, so an API write
    /// is live when it returns.
    fn wait_for_learner(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(LearnMsg::Reload(Some(tx)));
        let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
    }

    /// Watches the directory for changes (hot reload).
    pub fn watch(&self) -> Result<DirWatcher, WatchError> {
        self.inner.registry.watch("trimtab-bandits-watch")
    }

    pub fn defs(&self) -> Arc<BTreeMap<String, Arc<BanditDef>>> {
        self.kind().defs.load_full()
    }

    /// The definition files that do not compile (a previous good version may still run).
    pub fn problems(&self) -> Vec<DefProblem> {
        crate::experiments::problems(&self.inner.registry)
    }

    /// The published state of a slot (None before the learner first publishes it).
    pub fn live(&self, slot: &str) -> Option<Arc<LiveSlot>> {
        self.inner.live.load().get(slot).cloned()
    }

    pub(crate) fn publish(&self, slots: HashMap<String, Arc<LiveSlot>>) {
        self.inner.live.store(Arc::new(slots));
    }

    /// Whether a bandit decides `slot`.
    pub fn covers(&self, slot: &str) -> bool {
        self.inner.live.load().contains_key(slot)
    }

    /// Validates and stores a definition as `dir/SLOT.toml` (atomically); live when it returns.
    pub fn put(&self, def: BanditDef) -> Result<(), BanditsError> {
        def.validate().map_err(BanditsError::Invalid)?;
        let text = toml::to_string(&def).map_err(|e| {
            BanditsError::Invalid(DefError {
                message: e.to_string(),
                path: ".".into(),
            })
        })?;
        self.inner
            .registry
            .put(&def.slot, &text)
            .map_err(BanditsError::from)?;
        self.wait_for_learner();
        Ok(())
    }

    pub fn delete(&self, slot: &str) -> Result<(), BanditsError> {
        match self.inner.registry.delete(slot) {
            Ok(true) => {
                self.wait_for_learner();
                Ok(())
            }
            Ok(false) | Err(PutError::InvalidName { .. }) => {
                Err(BanditsError::NotFound(slot.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Restarts the guardrail comparison from `now` (persisted in the definition as
    /// `guardrail.since_ms`) and leaves fallback.
    pub fn reset_guardrail(&self, slot: &str, now: i64) -> Result<(), BanditsError> {
        let def = self
            .defs()
            .get(slot)
            .cloned()
            .ok_or_else(|| BanditsError::NotFound(slot.into()))?;
        let mut d = (*def).clone();
        if let Some(g) = &mut d.guardrail {
            g.since_ms = Some(now);
        }
        self.put(d)
    }

    /// Decides `slot` for a user with context `x`, or `None` when no bandit covers it.
    pub fn choose(&self, slot: &str, user: &UserKey, x: &[f32], now: i64) -> Option<Choice> {
        let live = self.live(slot)?;
        let def = &live.def;
        let k = def.candidates.len();
        let control = def.control_index();
        let (action, propensity, group) = if in_holdout(user, slot, def.holdout) {
            (control, 1.0, Group::Holdout)
        } else if !def.enabled || live.fallback.is_some() {
            (control, 1.0, Group::Fallback)
        } else {
            let actions = one_hot(k);
            match live.policy.check(x, &actions) {
                Ok(()) => {
                    let (a, p) = live.policy.choose(x, &actions, rand::rng().random());
                    (a, p[a], Group::Bandit)
                }
                Err(e) => {
                    tracing::error!(slot, "bandit input refused: {e}");
                    (control, 1.0, Group::Fallback)
                }
            }
        };
        Some(Choice {
            variant: def.candidates[action].clone(),
            propensity,
            group,
            record: LearnRecord {
                slot: slot.to_string(),
                ts: now,
                context: x.to_vec(),
                candidates: def.candidates.clone(),
                action: action as u32,
                propensity,
                policy: match group {
                    Group::Bandit => live.policy.kind().name().to_string(),
                    g => g.as_str().to_string(),
                },
                version: live.version,
                group,
                reward: def.reward,
                window_ms: def.window_ms,
                outcomes: [None; 3],
            },
        })
    }

    /// JSON status of every slot (for `GET /v1/bandits` and the dashboard).
    pub fn summary(&self) -> serde_json::Value {
        let defs = self.defs();
        let list: Vec<_> = defs.keys().map(|s| self.status(s)).collect();
        serde_json::json!({
            "bandits": list,
            "problems": self.problems(),
        })
    }

    /// JSON status of one slot: definition, policy version, guardrail state, per-arm and
    /// per-group counters, and the lift of the bandit over the holdout.
    pub fn status(&self, slot: &str) -> serde_json::Value {
        let def = self.defs().get(slot).cloned();
        let live = self.live(slot);
        let Some(def) = def.or_else(|| live.as_ref().map(|l| l.def.clone())) else {
            return serde_json::Value::Null;
        };
        let stats = live.as_ref().map(|l| l.stats.clone()).unwrap_or_default();
        let rate = |g: usize| stats.groups[g].rate(def.reward);
        let (b, h) = (rate(0), rate(1));
        let lift = match (b, h) {
            (Some(b), Some(h)) if h > 0.0 => Some(b / h - 1.0),
            _ => None,
        };
        let arms: Vec<_> = def
            .candidates
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let a = stats.arms.get(i).copied().unwrap_or_default();
                serde_json::json!({
                    "variant": v, "chosen": a.chosen, "closed": a.closed, "rewarded": a.rewarded,
                    "reward_rate": (a.closed > 0).then(|| a.rewarded as f64 / a.closed as f64),
                })
            })
            .collect();
        let group = |i: usize| {
            let g = stats.groups[i];
            serde_json::json!({
                "decisions": g.decisions,
                "click_rate": g.rate(RewardKind::Click),
                "conversion_rate": g.rate(RewardKind::Conversion),
                "dwell_rate": g.rate(RewardKind::Dwell),
                "reward_rate": g.rate(def.reward),
            })
        };
        let fallback = live.as_ref().and_then(|l| l.fallback.clone());
        serde_json::json!({
            "slot": slot,
            "state": if !def.enabled { "paused" } else if fallback.is_some() { "fallback" } else if live.is_some() { "learning" } else { "starting" },
            "fallback_reason": fallback,
            "policy": def.policy.name(),
            "version": live.as_ref().map_or(0, |l| l.version),
            "candidates": def.candidates,
            "control": def.control(),
            "reward": def.reward.as_str(),
            "window_ms": def.window_ms,
            "holdout": def.holdout,
            "pending": stats.pending,
            "arms": arms,
            "groups": {"bandit": group(0), "holdout": group(1), "fallback": group(2)},
            "lift_vs_holdout": lift,
            "definition": &*def,
        })
    }
}

/// Whether the user is in the slot's holdout: a stable hash of (user, slot) below `share`.
pub fn in_holdout(user: &UserKey, slot: &str, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let mut h = Sha256::new();
    h.update(b"trimtab-bandit-holdout\0");
    h.update(user.0);
    h.update(slot.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_le_bytes(b) as f64 / u64::MAX as f64) < share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_share_is_respected_and_stable() {
        let n = 20_000;
        let inside = (0..n)
            .filter(|i| {
                let mut k = [0u8; 16];
                k[..4].copy_from_slice(&(*i as u32).to_le_bytes());
                in_holdout(&UserKey(k), "cta", 0.1)
            })
            .count();
        let share = inside as f64 / n as f64;
        // ±4 binomial sd around 10 %.
        assert!(
            (share - 0.1).abs() < 4.0 * (0.1f64 * 0.9 / n as f64).sqrt(),
            "{share}"
        );
        let u = UserKey([3; 16]);
        assert_eq!(in_holdout(&u, "cta", 0.5), in_holdout(&u, "cta", 0.5));
        assert!(!in_holdout(&u, "cta", 0.0));
    }
}
