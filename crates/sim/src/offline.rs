//! Logged bandit feedback without a server: for each simulated user, the context vector the
//! server would compute after their behaviour script, an action chosen by a logging policy, and
//! a reward drawn from the ground truth — plus the ground truth itself per row, so tests can
//! compute the Bayes-optimal AUC, the oracle value and the true value of any policy.
//!
//! The context is computed the way the server computes it: the script's events are validated
//! by the real parser ([`trimtab_wire::parse_events`]) and applied to a fresh
//! [`UserState`] (server receive time = the event's timestamp), then [`inputs_from_state`]
//! maps the state to [`ContextInputs`] and [`context::vector`] makes the vector.
//!
//! Pure and seeded: users are generated in parallel (rayon) from per-user RNG streams; the
//! logging policy's draws come from one sequential stream, so the output depends only on the
//! config.

use std::io::Write;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;

use super::audience::{
    argmax, default_candidates, generate_user, Device, GroundTruth, Mix, Outcome, SimUser, UserType,
};
use trimtab_engine::features::context::{self, ContextInputs};
use trimtab_engine::features::{FeatureConfig, UserState};
use trimtab_learn::bandit::{one_hot, Policy};
use trimtab_learn::ope::LogRow;
use trimtab_wire::{parse_events, Limits};

/// A fixed timestamp base for offline scripts (reproducible; any recent time works).
pub const OFFLINE_BASE_TS: i64 = 1_790_000_000_000;

/// Replays `user`'s script (events with `ts = base_ts + at_ms`) through the real parser and
/// [`UserState::apply`], with the receive time equal to the event time.
pub fn replay_state(user: &SimUser, base_ts: i64) -> UserState {
    let limits = Limits::default();
    let cfg = FeatureConfig::default();
    let mut state = UserState::default();
    let now = base_ts + user.duration_ms() + 1;
    let wire = user.wire_events(base_ts);
    for chunk in wire.chunks(limits.max_batch_events) {
        let parsed = parse_events(chunk.to_vec(), &limits, now, "events")
            .unwrap_or_else(|e| panic!("simulated user {} sent an invalid event: {e}", user.index));
        for inc in parsed {
            let mut ev = inc.event;
            ev.received_ms = ev.ts;
            state.apply(&ev, &cfg);
        }
    }
    state
}

/// The inputs of the context vector from a user's state, exactly as the engine computes them
/// ([`ContextInputs::of`]).
pub fn inputs_from_state(s: &UserState, now_ms: i64) -> ContextInputs {
    ContextInputs::of(s, now_ms)
}

/// The inputs the server would have when deciding right after `user`'s script.
pub fn context_inputs(user: &SimUser) -> ContextInputs {
    let s = replay_state(user, OFFLINE_BASE_TS);
    inputs_from_state(&s, OFFLINE_BASE_TS + user.duration_ms())
}

/// The context vector the server would compute right after `user`'s script.
pub fn context_vector(user: &SimUser) -> Vec<f32> {
    context::vector(&context_inputs(user))
}

/// How the logged actions are chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Logging {
    /// Uniformly at random (propensity 1/K).
    Uniform,
    /// Fixed probabilities (normalised), one per candidate.
    Weights(Vec<f64>),
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineConfig {
    /// Rows = simulated users (one decision each).
    pub rows: usize,
    pub seed: u64,
    pub mix: Mix,
    pub candidates: Vec<String>,
    pub logging: Logging,
}

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            rows: 20_000,
            seed: 1,
            mix: Mix::default(),
            candidates: default_candidates(),
            logging: Logging::Uniform,
        }
    }
}

/// The ground truth of one logged row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TruthRow {
    /// Simulated user index (= row index).
    pub user: usize,
    pub kind: UserType,
    pub device: Device,
    pub hour: u8,
    pub returning: bool,
    /// `P(click)` of every candidate.
    pub click_p: Vec<f64>,
    /// `P(conversion)` (unconditional) of every candidate.
    pub conversion_p: Vec<f64>,
    /// Index of the best candidate.
    pub best: usize,
    /// Whether the logged action was converted on (the reward is the click).
    pub converted: bool,
}

/// A generated log with its ground truth (`rows[i]` ↔ `truth[i]`).
#[derive(Debug, Clone, PartialEq)]
pub struct OfflineLog {
    pub candidates: Vec<String>,
    pub rows: Vec<LogRow>,
    pub truth: Vec<TruthRow>,
}

/// One user, ready to be logged: context, truth and the outcome of every action.
struct Prepared {
    context: Vec<f32>,
    truth: TruthRow,
    outcomes: Vec<Outcome>,
}

fn prepare(cfg: &OfflineConfig, gt: &GroundTruth) -> Vec<Prepared> {
    (0..cfg.rows)
        .into_par_iter()
        .map(|i| {
            let u = generate_user(cfg.seed, i, &cfg.mix);
            let p = u.profile;
            let click_p = gt.click_probabilities(&p);
            Prepared {
                context: context_vector(&u),
                outcomes: (0..gt.candidates.len()).map(|a| u.outcome(gt, a)).collect(),
                truth: TruthRow {
                    user: i,
                    kind: p.kind,
                    device: p.device,
                    hour: p.hour,
                    returning: p.returning,
                    best: argmax(&click_p),
                    conversion_p: (0..gt.candidates.len())
                        .map(|a| gt.conversion_probability(&p, a))
                        .collect(),
                    click_p,
                    converted: false,
                },
            }
        })
        .collect()
}

fn assemble(
    prepared: Vec<Prepared>,
    candidates: &[String],
    mut choose: impl FnMut(&[f32]) -> (usize, f64),
    mut learn: impl FnMut(&[f32], usize, f64),
) -> OfflineLog {
    let mut rows = Vec::with_capacity(prepared.len());
    let mut truth = Vec::with_capacity(prepared.len());
    for mut p in prepared {
        let (a, propensity) = choose(&p.context);
        let o = p.outcomes[a];
        let reward = if o.clicked { 1.0 } else { 0.0 };
        learn(&p.context, a, reward);
        p.truth.converted = o.converted;
        rows.push(LogRow {
            context: p.context,
            actions: None,
            action: a,
            reward,
            propensity,
            position: None,
        });
        truth.push(p.truth);
    }
    OfflineLog {
        candidates: candidates.to_vec(),
        rows,
        truth,
    }
}

/// The logging policy's own RNG stream.
fn logging_rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ 0x6c6f_6767_696e_6721)
}

/// Generates `cfg.rows` logged decisions with the configured fixed logging policy.
///
/// Panics if `cfg.candidates` is empty or `Logging::Weights` has the wrong length or no
/// positive weight (the CLI checks these first).
pub fn generate(cfg: &OfflineConfig) -> OfflineLog {
    let k = cfg.candidates.len();
    assert!(k > 0, "at least one candidate");
    let probs: Vec<f64> = match &cfg.logging {
        Logging::Uniform => vec![1.0 / k as f64; k],
        Logging::Weights(w) => {
            assert_eq!(w.len(), k, "one logging weight per candidate");
            let total: f64 = w.iter().sum();
            assert!(total > 0.0, "a positive logging weight");
            w.iter().map(|x| x / total).collect()
        }
    };
    let gt = GroundTruth::new(&cfg.candidates);
    let prepared = prepare(cfg, &gt);
    let mut rng = logging_rng(cfg.seed);
    assemble(
        prepared,
        &cfg.candidates,
        |_| {
            let a = trimtab_learn::bandit::sample_index(&probs, rng.random());
            (a, probs[a])
        },
        |_, _, _| {},
    )
}

/// The audience's behaviour as the SDK would send it: every event of `cfg.rows` users' scripts
/// (the users [`generate`] logs), in wire shape with `user` = `sim-<index>` and `ts` counted
/// from [`OFFLINE_BASE_TS`], one JSON object per line — what `trimtab rules backtest --events`
/// replays before any real traffic exists.
pub fn write_events(cfg: &OfflineConfig, w: &mut impl Write) -> std::io::Result<u64> {
    let mut n = 0;
    for index in 0..cfg.rows {
        let user = super::audience::generate_user(cfg.seed, index, &cfg.mix);
        for mut e in user.wire_events(OFFLINE_BASE_TS) {
            e["user"] = format!("sim-{index}").into();
            serde_json::to_writer(&mut *w, &e)?;
            w.write_all(b"\n")?;
            n += 1;
        }
    }
    Ok(n)
}

/// Generates `cfg.rows` logged decisions chosen by `policy` (one-hot actions), which learns
/// from each reward when `learn` (`cfg.logging` is ignored). The logged propensity is the
/// policy's probability of the chosen action at that time.
pub fn generate_with_policy(
    cfg: &OfflineConfig,
    policy: &mut dyn Policy,
    learn: bool,
) -> OfflineLog {
    let gt = GroundTruth::new(&cfg.candidates);
    let actions = one_hot(cfg.candidates.len());
    let prepared = prepare(cfg, &gt);
    let mut rng = logging_rng(cfg.seed);
    let policy = std::cell::RefCell::new(policy);
    assemble(
        prepared,
        &cfg.candidates,
        |ctx| {
            let (a, p) = policy.borrow().choose(ctx, &actions, rng.random());
            (a, p[a])
        },
        |ctx, a, r| {
            if learn {
                policy.borrow_mut().update(ctx, &actions[a], r);
            }
        },
    )
}

impl OfflineLog {
    fn mean(&self, f: impl Fn(usize) -> f64) -> f64 {
        let n = self.rows.len().max(1) as f64;
        (0..self.rows.len()).map(f).sum::<f64>() / n
    }

    /// Mean observed reward (click rate of the logged actions).
    pub fn mean_reward(&self) -> f64 {
        self.mean(|i| self.rows[i].reward)
    }

    /// Mean true click probability of the logged actions (the logging policy's realised value).
    pub fn logged_value(&self) -> f64 {
        self.mean(|i| self.truth[i].click_p[self.rows[i].action])
    }

    /// Mean true click probability of the best action (the oracle's value).
    pub fn oracle_value(&self) -> f64 {
        self.mean(|i| self.truth[i].click_p[self.truth[i].best])
    }

    /// Mean true click probability of a uniformly random action.
    pub fn uniform_value(&self) -> f64 {
        self.mean(|i| {
            let p = &self.truth[i].click_p;
            p.iter().sum::<f64>() / p.len() as f64
        })
    }

    /// True value on these rows' users of a policy given as action probabilities per context:
    /// `mean_i Σ_a π(a|x_i) μ(x_i, a)`.
    pub fn value_of(&self, probs: impl Fn(&[f32]) -> Vec<f64>) -> f64 {
        self.mean(|i| {
            probs(&self.rows[i].context)
                .iter()
                .zip(&self.truth[i].click_p)
                .map(|(p, m)| p * m)
                .sum()
        })
    }

    /// True value of a (fixed) bandit policy with one-hot actions.
    pub fn policy_value(&self, policy: &dyn Policy) -> f64 {
        let actions = one_hot(self.candidates.len());
        self.value_of(|x| policy.probabilities(x, &actions))
    }

    /// AUC of the Bayes-optimal click model (the true `P(click)` of the logged action) against
    /// the logged rewards: the ceiling for any learned click model on this log.
    pub fn bayes_auc(&self) -> f64 {
        let scores: Vec<f64> = (0..self.rows.len())
            .map(|i| self.truth[i].click_p[self.rows[i].action])
            .collect();
        let labels: Vec<bool> = self.rows.iter().map(|r| r.reward > 0.5).collect();
        auc(&scores, &labels)
    }

    /// Writes the ground truth as JSONL, one row per line (same order as the log).
    pub fn write_truth<W: Write>(&self, mut w: W) -> std::io::Result<()> {
        for t in &self.truth {
            serde_json::to_writer(&mut w, t)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }
}

/// Area under the ROC curve of `scores` for `labels` (ties count ½); 0.5 when one class is
/// missing.
pub fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0, 0usize);
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1..=j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            if labels[k] {
                rank_sum += avg;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = scores.len() - pos;
    if pos == 0 || neg == 0 {
        return 0.5;
    }
    (rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos as f64 * neg as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trimtab_engine::features::context::CONTEXT_DIM;
    use trimtab_learn::bandit::{EpsilonGreedy, Params};

    fn cfg(rows: usize, seed: u64) -> OfflineConfig {
        OfflineConfig {
            rows,
            seed,
            ..OfflineConfig::default()
        }
    }

    #[test]
    fn deterministic_rows_and_truth() {
        let a = generate(&cfg(300, 5));
        assert_eq!(a, generate(&cfg(300, 5)));
        assert_ne!(a.rows, generate(&cfg(300, 6)).rows);
        assert!(a.rows.iter().all(|r| r.context.len() == CONTEXT_DIM));
        let mut out = Vec::new();
        a.write_truth(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 300);
    }

    #[test]
    fn uniform_propensities_and_rewards_match_the_truth() {
        let log = generate(&cfg(4000, 2));
        assert!(log.rows.iter().all(|r| r.propensity == 0.25));
        let mut shown = [0usize; 4];
        for r in &log.rows {
            shown[r.action] += 1;
        }
        // Each action ~1000 times (4.5 σ ≈ 123).
        assert!(shown.iter().all(|n| n.abs_diff(1000) < 125), "{shown:?}");
        // Mean reward ≈ mean true p of the logged actions, within 4 binomial σ.
        let var: f64 = (0..log.rows.len())
            .map(|i| {
                let p = log.truth[i].click_p[log.rows[i].action];
                p * (1.0 - p)
            })
            .sum::<f64>()
            / (log.rows.len() as f64).powi(2);
        let (m, t) = (log.mean_reward(), log.logged_value());
        assert!((m - t).abs() < 4.0 * var.sqrt(), "reward {m} vs truth {t}");
        assert!((log.uniform_value() - 0.157).abs() < 0.01);
        assert!(log.oracle_value() > 2.0 * log.uniform_value());
        let bayes = log.bayes_auc();
        assert!((0.6..0.95).contains(&bayes), "{bayes}");
        // The uniform policy's true value is the uniform value.
        let k = log.candidates.len();
        let u = log.value_of(|_| vec![1.0 / k as f64; k]);
        assert!((u - log.uniform_value()).abs() < 1e-12);
    }

    #[test]
    fn weighted_logging_and_a_learning_logger() {
        let mut c = cfg(500, 3);
        c.logging = Logging::Weights(vec![1.0, 0.0, 1.0, 2.0]);
        let log = generate(&c);
        assert!(log.rows.iter().all(|r| r.action != 1));
        assert!(log
            .rows
            .iter()
            .all(|r| r.propensity == [0.25, 0.0, 0.25, 0.5][r.action]));
        let mut p = EpsilonGreedy::new(CONTEXT_DIM, 4, Params::default()).expect("valid");
        let log = generate_with_policy(&cfg(500, 3), &mut p, true);
        assert!(log
            .rows
            .iter()
            .all(|r| r.propensity > 0.0 && r.propensity <= 1.0));
        let v = log.policy_value(&p);
        assert!(v > 0.0 && v <= log.oracle_value() + 1e-12);
    }

    #[test]
    fn context_reflects_behaviour() {
        use crate::audience::generate;
        let users = generate(4, 300, &Mix::default());
        let mut depth = std::collections::BTreeMap::<UserType, (f64, f64)>::new();
        for u in &users {
            let c = context_inputs(u);
            assert_eq!(c.device, u.profile.device.name());
            assert_eq!(c.hour, Some(u.profile.hour));
            assert_eq!(c.sessions > 1, u.profile.returning);
            assert!(c.max_depth > 0.0 && c.max_depth <= 100.0);
            let e = depth.entry(u.profile.kind).or_default();
            e.0 += c.max_depth;
            e.1 += 1.0;
        }
        let m = |t| depth[&t].0 / depth[&t].1;
        assert!(m(UserType::Deep) > m(UserType::Selective));
        assert!(m(UserType::Selective) > m(UserType::Quick));
    }

    #[test]
    fn auc_of_known_cases() {
        assert_eq!(auc(&[0.1, 0.2, 0.3, 0.4], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.4, 0.3, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert_eq!(auc(&[0.5, 0.7], &[true, true]), 0.5);
    }
}
