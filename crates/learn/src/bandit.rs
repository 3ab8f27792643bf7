//! Contextual bandit policies for one slot: [`Uniform`], [`EpsilonGreedy`], [`LinUcb`] and
//! [`LinTs`], behind the [`Policy`] trait, and [`Snapshot`], the serialisable model state
//! that the learner publishes to the shards and persists.
//!
//! Threads: the learner thread owns one mutable policy per slot and calls
//! [`Policy::update`] once per joined reward; after a batch it publishes
//! [`Policy::snapshot`], which shards [`Snapshot::restore`] into read-only policies and
//! call [`Policy::choose`] on. Deciding is pure: given the model, the context, the actions and
//! a uniform draw `u` the choice is fixed, and every choice returns every action's
//! probability so the caller logs the propensity of what it showed. Nothing here does I/O.
//!
//! **Model.** All learning policies share one ridge regression over the features
//! `φ(x, a) = a ⊗ [x, 1]` (the Kronecker product of the action's feature vector with the
//! context plus a bias term), dimension `p = m·(d + 1)` for `d` context and `m` action
//! features. With per-action features this is a shared model over context×action
//! interactions; with one-hot action features (what the offline tools use when a log has
//! no `actions`) it is exactly the *disjoint* model of Li et al. (2010), one independent
//! ridge regression per action, because `A` stays block diagonal. The linear algebra
//! exploits that block structure (see `linalg`).
//!
//! **Exploration floor.** Every policy mixes its own distribution with the uniform one:
//! `π(a) = (1 − f)·π₀(a) + f/K`, so every propensity is at least `f/K` and never 0.
//!
//! **Choosing.** [`Policy::choose`] inverts the cumulative distribution of
//! [`Policy::probabilities`] at `u`, so the logged propensity is exactly the probability
//! with which the returned action was drawn — for every policy, including LinTS.
//!
//! **LinTS probabilities.** The Thompson-sampling probability of an action has no closed
//! form. `LinTs` draws N parameter vectors `θ̃ₛ ~ N(θ̂, v²A⁻¹)` (Cholesky of `A`, seeded by
//! `seed` and the update count, so the same model always has the same draws), estimates
//! `π₀(a) = #{s : a = argmax_b φ(x, b)ᵀθ̃ₛ}/N`, and then draws from that distribution. That is
//! Thompson sampling from an N-sample ensemble of the posterior: the logged propensity is
//! the exact probability of the choice made, and the Monte Carlo error (≈ √(π(1−π)/N)) is
//! only a difference between this policy and textbook Thompson sampling.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use rand::{rngs::StdRng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::linalg::{Ridge, Sparse};

/// Errors of building or restoring a policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BanditError {
    /// A hyperparameter is out of range.
    #[error("invalid bandit parameter `{field}`: {message}")]
    InvalidParam {
        /// Field name in [`Params`].
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A snapshot is inconsistent (wrong shapes, non-finite or non-SPD statistics).
    #[error("invalid bandit snapshot: {0}")]
    InvalidSnapshot(String),
    /// Unknown policy name.
    #[error("unknown policy `{0}` (expected uniform, egreedy, linucb or lints)")]
    UnknownPolicy(String),
}

impl BanditError {
    /// A stable code for user-facing messages.
    pub fn code(&self) -> &'static str {
        match self {
            BanditError::InvalidParam { .. } => "bandit.invalid_param",
            BanditError::InvalidSnapshot(_) => "bandit.invalid_snapshot",
            BanditError::UnknownPolicy(_) => "bandit.unknown_policy",
        }
    }
}

/// Which policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// Uniformly random.
    Uniform,
    /// ε-greedy over a ridge regression.
    #[serde(rename = "egreedy")]
    EpsilonGreedy,
    /// LinUCB (Li et al. 2010).
    #[serde(rename = "linucb")]
    LinUcb,
    /// Linear Thompson sampling (Agrawal & Goyal 2013).
    #[serde(rename = "lints")]
    LinTs,
}

impl PolicyKind {
    /// All kinds, in CLI order.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Uniform,
        PolicyKind::EpsilonGreedy,
        PolicyKind::LinUcb,
        PolicyKind::LinTs,
    ];

    /// The CLI / JSON name.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Uniform => "uniform",
            PolicyKind::EpsilonGreedy => "egreedy",
            PolicyKind::LinUcb => "linucb",
            PolicyKind::LinTs => "lints",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = BanditError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| BanditError::UnknownPolicy(s.to_owned()))
    }
}

/// Hyperparameters. Every field has a default (`serde(default)`), so a config names only
/// what it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Ridge penalty λ > 0 (`A = λI + Σφφᵀ`). Default 1.
    pub lambda: f64,
    /// Exploration floor f ∈ [0, 1]: every action gets probability ≥ f/K. Default 0.01.
    pub floor: f64,
    /// ε of ε-greedy, ∈ [0, 1]. Default 0.1.
    pub epsilon: f64,
    /// LinUCB width α ≥ 0 (score `φᵀθ̂ + α√(φᵀA⁻¹φ)`). Default 0.5.
    pub alpha: f64,
    /// LinTS posterior scale v ≥ 0 (draws from `N(θ̂, v²A⁻¹)`). Default 0.25.
    pub v: f64,
    /// LinTS Monte Carlo draws N ≥ 1 for probabilities. Default 128.
    pub draws: usize,
    /// Seed of LinTS's draws.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            lambda: 1.0,
            floor: 0.01,
            epsilon: 0.1,
            alpha: 0.5,
            v: 0.25,
            draws: 128,
            seed: 0,
        }
    }
}

impl Params {
    /// Checks every range.
    pub fn validate(&self) -> Result<(), BanditError> {
        let bad = |field, message: &str| {
            Err(BanditError::InvalidParam {
                field,
                message: message.to_owned(),
            })
        };
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return bad("lambda", "must be finite and > 0");
        }
        if !(0.0..=1.0).contains(&self.floor) {
            return bad("floor", "must be in [0, 1]");
        }
        if !(0.0..=1.0).contains(&self.epsilon) {
            return bad("epsilon", "must be in [0, 1]");
        }
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return bad("alpha", "must be finite and >= 0");
        }
        if !(self.v.is_finite() && self.v >= 0.0) {
            return bad("v", "must be finite and >= 0");
        }
        if self.draws == 0 || self.draws > 100_000 {
            return bad("draws", "must be in 1..=100000");
        }
        Ok(())
    }
}

/// One decision's policy. Implementations are `Send + Sync`: a restored snapshot is shared
/// read-only by shard threads.
///
/// Contract for every method: `ctx.len()` equals the policy's context dimension, every
/// action feature vector has the policy's action dimension, and `actions` is not empty.
/// Callers validate inputs once at their boundary ([`Policy::check`]); a violation panics.
pub trait Policy: Send + Sync {
    /// Which policy this is.
    fn kind(&self) -> PolicyKind;

    /// `(context dimension d, action feature dimension m)`.
    fn dims(&self) -> (usize, usize);

    /// Every action's probability of being chosen (sums to 1, each ≥ floor/K).
    fn probabilities(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64>;

    /// The chosen action for a uniform draw `u ∈ [0, 1)` and every action's probability
    /// (the returned vector equals [`Policy::probabilities`]; its entry at the chosen index
    /// is the propensity to log). Deterministic given the model and `u`.
    fn choose(&self, ctx: &[f32], actions: &[Vec<f32>], u: f64) -> (usize, Vec<f64>) {
        let p = self.probabilities(ctx, actions);
        (sample_index(&p, u), p)
    }

    /// Learns from the reward of showing the action with features `action_features`.
    fn update(&mut self, ctx: &[f32], action_features: &[f32], reward: f64);

    /// The state to publish or persist.
    fn snapshot(&self) -> Snapshot;

    /// Checks the dimension contract for one decision.
    fn check(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Result<(), String> {
        let (d, m) = self.dims();
        if ctx.len() != d {
            return Err(format!("context has {} features, expected {d}", ctx.len()));
        }
        if actions.is_empty() {
            return Err("no actions".into());
        }
        if let Some((i, a)) = actions.iter().enumerate().find(|(_, a)| a.len() != m) {
            return Err(format!("action {i} has {} features, expected {m}", a.len()));
        }
        Ok(())
    }
}

/// One-hot action features for `k` actions (the disjoint per-action model).
pub fn one_hot(k: usize) -> Vec<Vec<f32>> {
    (0..k)
        .map(|i| (0..k).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect()
}

/// The index whose cumulative probability interval contains `u` (inverse CDF). Rounding at
/// the top end falls to the last action with positive probability.
///
/// # Panics
/// If `p` is empty.
pub fn sample_index(p: &[f64], u: f64) -> usize {
    assert!(!p.is_empty(), "sample_index: no actions");
    let mut acc = 0.0;
    for (i, &pi) in p.iter().enumerate() {
        acc += pi;
        if u < acc {
            return i;
        }
    }
    p.iter().rposition(|&x| x > 0.0).unwrap_or(p.len() - 1)
}

/// `π = (1 − f)·π₀ + f/K` in place.
fn apply_floor(p: &mut [f64], floor: f64) {
    let k = p.len() as f64;
    for x in p.iter_mut() {
        *x = (1.0 - floor) * *x + floor / k;
    }
}

/// Uniform over the maximisers of `scores` (ties within 1e-12 relative share equally).
fn argmax_distribution(scores: &[f64]) -> Vec<f64> {
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tol = 1e-12 * best.abs().max(1.0);
    let ties: Vec<bool> = scores.iter().map(|&s| s >= best - tol).collect();
    let n = ties.iter().filter(|&&t| t).count().max(1) as f64;
    ties.iter()
        .map(|&t| if t { 1.0 / n } else { 0.0 })
        .collect()
}

/// The feature map `φ(x, a) = a ⊗ [x, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureMap {
    /// Context dimension d.
    pub ctx_dim: usize,
    /// Action feature dimension m.
    pub action_dim: usize,
}

impl FeatureMap {
    /// `p = m·(d + 1)`.
    pub fn dim(&self) -> usize {
        self.action_dim * (self.ctx_dim + 1)
    }

    /// `φ(x, a)`, sparse: entry `j·(d+1) + i` is `a_j·x_i` (with `x_d = 1`).
    ///
    /// # Panics
    /// If `ctx` or `action` has the wrong length (the [`Policy`] contract).
    pub fn phi(&self, ctx: &[f32], action: &[f32]) -> Sparse {
        assert_eq!(ctx.len(), self.ctx_dim, "context dimension");
        assert_eq!(action.len(), self.action_dim, "action feature dimension");
        let w = self.ctx_dim + 1;
        let mut s = Sparse::default();
        for (j, &aj) in action.iter().enumerate() {
            if aj == 0.0 {
                continue;
            }
            for (i, &xi) in ctx.iter().chain(std::iter::once(&1.0)).enumerate() {
                let v = f64::from(aj) * f64::from(xi);
                if v != 0.0 {
                    s.idx.push(j * w + i);
                    s.val.push(v);
                }
            }
        }
        s
    }
}

/// Uniformly random choice (never learns).
#[derive(Debug, Clone, PartialEq)]
pub struct Uniform {
    map: FeatureMap,
}

impl Uniform {
    /// A uniform policy for contexts of `ctx_dim` and actions of `action_dim` features.
    pub fn new(ctx_dim: usize, action_dim: usize) -> Self {
        Uniform {
            map: FeatureMap {
                ctx_dim,
                action_dim,
            },
        }
    }
}

impl Policy for Uniform {
    fn kind(&self) -> PolicyKind {
        PolicyKind::Uniform
    }
    fn dims(&self) -> (usize, usize) {
        (self.map.ctx_dim, self.map.action_dim)
    }
    fn probabilities(&self, _ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64> {
        vec![1.0 / actions.len() as f64; actions.len()]
    }
    fn update(&mut self, _ctx: &[f32], _action_features: &[f32], _reward: f64) {}
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            kind: PolicyKind::Uniform,
            map: self.map,
            params: Params::default(),
            updates: 0,
            a: Vec::new(),
            b: Vec::new(),
        }
    }
}

/// State shared by the learning policies: feature map, parameters and the ridge model.
#[derive(Debug, Clone, PartialEq)]
struct Linear {
    map: FeatureMap,
    params: Params,
    ridge: Ridge,
}

impl Linear {
    fn new(
        ctx_dim: usize,
        action_dim: usize,
        params: Params,
        with_chol: bool,
    ) -> Result<Self, BanditError> {
        params.validate()?;
        let map = FeatureMap {
            ctx_dim,
            action_dim,
        };
        Ok(Linear {
            map,
            ridge: Ridge::new(map.dim(), params.lambda, with_chol),
            params,
        })
    }

    fn update(&mut self, ctx: &[f32], action: &[f32], reward: f64) {
        if reward.is_finite() {
            self.ridge.update(&self.map.phi(ctx, action), reward);
        }
    }

    fn snapshot(&self, kind: PolicyKind) -> Snapshot {
        Snapshot {
            kind,
            map: self.map,
            params: self.params.clone(),
            updates: self.ridge.updates(),
            a: self.ridge.a().to_vec(),
            b: self.ridge.b().to_vec(),
        }
    }

    fn restore(s: &Snapshot, with_chol: bool) -> Result<Self, BanditError> {
        s.params.validate()?;
        let p = s.map.dim();
        let ridge = Ridge::from_stats(
            p,
            s.params.lambda,
            s.a.clone(),
            s.b.clone(),
            s.updates,
            with_chol,
        )
        .ok_or_else(|| {
            BanditError::InvalidSnapshot(format!(
                "expected a {p}×{p} symmetric positive definite `a` and {p} finite `b` values"
            ))
        })?;
        Ok(Linear {
            map: s.map,
            params: s.params.clone(),
            ridge,
        })
    }
}

/// ε-greedy: the action with the highest predicted reward `φᵀθ̂` with probability 1 − ε
/// (ties split), uniform otherwise; then the floor.
#[derive(Debug, Clone, PartialEq)]
pub struct EpsilonGreedy(Linear);

impl EpsilonGreedy {
    /// A fresh model.
    pub fn new(ctx_dim: usize, action_dim: usize, params: Params) -> Result<Self, BanditError> {
        Ok(EpsilonGreedy(Linear::new(
            ctx_dim, action_dim, params, false,
        )?))
    }

    /// Predicted reward of each action.
    pub fn predictions(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64> {
        let l = &self.0;
        actions
            .iter()
            .map(|a| l.ridge.predict(&l.map.phi(ctx, a)))
            .collect()
    }
}

impl Policy for EpsilonGreedy {
    fn kind(&self) -> PolicyKind {
        PolicyKind::EpsilonGreedy
    }
    fn dims(&self) -> (usize, usize) {
        (self.0.map.ctx_dim, self.0.map.action_dim)
    }
    fn probabilities(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64> {
        let mut p = argmax_distribution(&self.predictions(ctx, actions));
        apply_floor(&mut p, self.0.params.epsilon);
        apply_floor(&mut p, self.0.params.floor);
        p
    }
    fn update(&mut self, ctx: &[f32], action_features: &[f32], reward: f64) {
        self.0.update(ctx, action_features, reward);
    }
    fn snapshot(&self) -> Snapshot {
        self.0.snapshot(PolicyKind::EpsilonGreedy)
    }
}

/// LinUCB (Li et al. 2010): argmax of `φᵀθ̂ + α√(φᵀA⁻¹φ)` (ties split), then the floor.
#[derive(Debug, Clone, PartialEq)]
pub struct LinUcb(Linear);

impl LinUcb {
    /// A fresh model.
    pub fn new(ctx_dim: usize, action_dim: usize, params: Params) -> Result<Self, BanditError> {
        Ok(LinUcb(Linear::new(ctx_dim, action_dim, params, false)?))
    }

    /// Upper confidence bound of each action.
    pub fn scores(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64> {
        let l = &self.0;
        actions
            .iter()
            .map(|a| {
                let phi = l.map.phi(ctx, a);
                l.ridge.predict(&phi) + l.params.alpha * l.ridge.variance(&phi).sqrt()
            })
            .collect()
    }
}

impl Policy for LinUcb {
    fn kind(&self) -> PolicyKind {
        PolicyKind::LinUcb
    }
    fn dims(&self) -> (usize, usize) {
        (self.0.map.ctx_dim, self.0.map.action_dim)
    }
    fn probabilities(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64> {
        let mut p = argmax_distribution(&self.scores(ctx, actions));
        apply_floor(&mut p, self.0.params.floor);
        p
    }
    fn update(&mut self, ctx: &[f32], action_features: &[f32], reward: f64) {
        self.0.update(ctx, action_features, reward);
    }
    fn snapshot(&self) -> Snapshot {
        self.0.snapshot(PolicyKind::LinUcb)
    }
}

/// Linear Thompson sampling (Agrawal & Goyal 2013) with Monte Carlo probabilities (see the
/// module docs). The N posterior draws are computed lazily once per model state and shared
/// by all decisions until the next update.
#[derive(Debug, Clone)]
pub struct LinTs {
    lin: Linear,
    draws: OnceLock<Vec<Vec<f64>>>,
}

impl PartialEq for LinTs {
    fn eq(&self, other: &Self) -> bool {
        self.lin == other.lin
    }
}

impl LinTs {
    /// A fresh model.
    pub fn new(ctx_dim: usize, action_dim: usize, params: Params) -> Result<Self, BanditError> {
        Ok(LinTs {
            lin: Linear::new(ctx_dim, action_dim, params, true)?,
            draws: OnceLock::new(),
        })
    }

    /// The N posterior draws `θ̃ₛ = θ̂ + v·L⁻ᵀzₛ` of the current model, seeded by
    /// `(seed, updates)`.
    pub fn draws(&self) -> &[Vec<f64>] {
        self.draws.get_or_init(|| {
            let l = &self.lin;
            let seed = l.params.seed ^ l.ridge.updates().wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rng = StdRng::seed_from_u64(seed);
            let p = l.ridge.dim();
            let zs = (0..l.params.draws)
                .map(|_| {
                    (0..p)
                        .map(|_| StandardNormal.sample(&mut rng))
                        .collect::<Vec<f64>>()
                })
                .collect::<Vec<_>>();
            l.ridge.samples(zs.into_iter(), l.params.v)
        })
    }
}

impl Policy for LinTs {
    fn kind(&self) -> PolicyKind {
        PolicyKind::LinTs
    }
    fn dims(&self) -> (usize, usize) {
        (self.lin.map.ctx_dim, self.lin.map.action_dim)
    }
    fn probabilities(&self, ctx: &[f32], actions: &[Vec<f32>]) -> Vec<f64> {
        let phis: Vec<Sparse> = actions.iter().map(|a| self.lin.map.phi(ctx, a)).collect();
        let draws = self.draws();
        let mut p = vec![0.0; actions.len()];
        for theta in draws {
            let mut best = (0, f64::NEG_INFINITY);
            for (i, phi) in phis.iter().enumerate() {
                let s = phi.dot(theta);
                if s > best.1 {
                    best = (i, s);
                }
            }
            p[best.0] += 1.0;
        }
        let n = draws.len() as f64;
        p.iter_mut().for_each(|x| *x /= n);
        apply_floor(&mut p, self.lin.params.floor);
        p
    }
    fn update(&mut self, ctx: &[f32], action_features: &[f32], reward: f64) {
        self.lin.update(ctx, action_features, reward);
        self.draws = OnceLock::new();
    }
    fn snapshot(&self) -> Snapshot {
        self.lin.snapshot(PolicyKind::LinTs)
    }
}

/// A fresh policy of `kind`.
pub fn new_policy(
    kind: PolicyKind,
    ctx_dim: usize,
    action_dim: usize,
    params: &Params,
) -> Result<Box<dyn Policy>, BanditError> {
    let p = params.clone();
    Ok(match kind {
        PolicyKind::Uniform => Box::new(Uniform::new(ctx_dim, action_dim)),
        PolicyKind::EpsilonGreedy => Box::new(EpsilonGreedy::new(ctx_dim, action_dim, p)?),
        PolicyKind::LinUcb => Box::new(LinUcb::new(ctx_dim, action_dim, p)?),
        PolicyKind::LinTs => Box::new(LinTs::new(ctx_dim, action_dim, p)?),
    })
}

/// A policy's model state: sufficient statistics `A`, `b` of the ridge regression plus
/// kind, dimensions and parameters. `(kind, updates)` identifies a model version (log it
/// with each decision). Restoring refactorises `A` (O(p³), once per publish), so a restored
/// policy agrees with the learner's to rounding (~1e-12) and LinTS restores the same draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Which policy.
    pub kind: PolicyKind,
    /// Feature dimensions.
    pub map: FeatureMap,
    /// Hyperparameters.
    pub params: Params,
    /// Observations absorbed (the model version).
    pub updates: u64,
    /// `A = λI + Σφφᵀ`, row-major p×p (empty for `uniform`).
    pub a: Vec<f64>,
    /// `b = Σ r φ`, length p (empty for `uniform`).
    pub b: Vec<f64>,
}

impl Snapshot {
    /// Rebuilds the policy, validating shapes, parameters and that `A` is SPD.
    pub fn restore(&self) -> Result<Box<dyn Policy>, BanditError> {
        Ok(match self.kind {
            PolicyKind::Uniform => Box::new(Uniform { map: self.map }),
            PolicyKind::EpsilonGreedy => Box::new(EpsilonGreedy(Linear::restore(self, false)?)),
            PolicyKind::LinUcb => Box::new(LinUcb(Linear::restore(self, false)?)),
            PolicyKind::LinTs => Box::new(LinTs {
                lin: Linear::restore(self, true)?,
                draws: OnceLock::new(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::Rng;

    fn all_policies(d: usize, m: usize, params: &Params) -> Vec<Box<dyn Policy>> {
        PolicyKind::ALL
            .iter()
            .map(|&k| new_policy(k, d, m, params).expect("valid params"))
            .collect()
    }

    fn random_ctx(rng: &mut StdRng, d: usize) -> Vec<f32> {
        (0..d).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// Trains each policy on a simple problem: action 2 pays when x₀ > 0, action 0 otherwise.
    fn train(policy: &mut dyn Policy, rng: &mut StdRng, n: usize) {
        let acts = one_hot(3);
        for _ in 0..n {
            let ctx = random_ctx(rng, 2);
            let (a, _) = policy.choose(&ctx, &acts, rng.random());
            let best = if ctx[0] > 0.0 { 2 } else { 0 };
            let r = if a == best { 1.0 } else { 0.0 };
            policy.update(&ctx, &acts[a], r);
        }
    }

    #[test]
    fn fresh_learners_are_uniform_by_ties() {
        for p in all_policies(2, 3, &Params::default()) {
            let probs = p.probabilities(&[0.3, -0.2], &one_hot(3));
            if p.kind() == PolicyKind::LinTs {
                continue; // random draws break ties at random
            }
            for x in probs {
                assert!((x - 1.0 / 3.0).abs() < 1e-12, "{}", p.kind());
            }
        }
    }

    #[test]
    fn learners_find_the_best_action() {
        let mut rng = StdRng::seed_from_u64(1);
        for mut p in all_policies(2, 3, &Params::default()) {
            if p.kind() == PolicyKind::Uniform {
                continue;
            }
            train(p.as_mut(), &mut rng, 2000);
            let pos = p.probabilities(&[0.8, 0.0], &one_hot(3));
            let neg = p.probabilities(&[-0.8, 0.0], &one_hot(3));
            assert!(
                pos[2] > 0.8 && neg[0] > 0.8,
                "{}: {pos:?} {neg:?}",
                p.kind()
            );
        }
    }

    #[test]
    fn choose_draws_from_probabilities_and_is_deterministic() {
        let mut rng = StdRng::seed_from_u64(2);
        for mut p in all_policies(2, 3, &Params::default()) {
            train(p.as_mut(), &mut rng, 300);
            let ctx = [0.1, 0.5];
            let acts = one_hot(3);
            let probs = p.probabilities(&ctx, &acts);
            let mut counts = [0usize; 3];
            let n = 10_000;
            for i in 0..n {
                let u = (i as f64 + 0.5) / n as f64;
                let (a, q) = p.choose(&ctx, &acts, u);
                assert_eq!(
                    q,
                    probs,
                    "{}: logged propensities = probabilities()",
                    p.kind()
                );
                assert_eq!(p.choose(&ctx, &acts, u).0, a);
                counts[a] += 1;
            }
            for (c, pr) in counts.iter().zip(&probs) {
                assert!((*c as f64 / n as f64 - pr).abs() < 2e-4, "{}", p.kind());
            }
        }
    }

    #[test]
    fn sample_index_edges() {
        assert_eq!(sample_index(&[0.5, 0.5], 0.0), 0);
        assert_eq!(sample_index(&[0.5, 0.5], 0.5), 1);
        assert_eq!(sample_index(&[0.3, 0.3, 0.3, 0.0], 0.99999), 2);
        assert_eq!(sample_index(&[0.0, 1.0], 0.0), 1);
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut rng = StdRng::seed_from_u64(3);
        for mut p in all_policies(2, 3, &Params::default()) {
            train(p.as_mut(), &mut rng, 500);
            let json = serde_json::to_string(&p.snapshot()).expect("serialisable");
            let snap: Snapshot = serde_json::from_str(&json).expect("parses");
            assert_eq!(snap, p.snapshot());
            let q = snap.restore().expect("valid");
            assert_eq!(q.kind(), p.kind());
            for _ in 0..50 {
                let ctx = random_ctx(&mut rng, 2);
                let (a, b) = (
                    p.probabilities(&ctx, &one_hot(3)),
                    q.probabilities(&ctx, &one_hot(3)),
                );
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() < 1e-9, "{}: {a:?} vs {b:?}", p.kind());
                }
            }
        }
    }

    #[test]
    fn bad_snapshots_and_params_are_errors() {
        let mut snap = LinUcb::new(2, 3, Params::default())
            .expect("valid")
            .snapshot();
        snap.a.pop();
        let err = snap.restore().err().expect("short a");
        assert_eq!(err.code(), "bandit.invalid_snapshot");
        let mut snap = LinTs::new(1, 1, Params::default())
            .expect("valid")
            .snapshot();
        snap.a = vec![-1.0, 0.0, 0.0, 1.0];
        assert!(snap.restore().is_err());
        let params = Params {
            floor: 1.5,
            ..Params::default()
        };
        let err = LinUcb::new(2, 3, params).expect_err("bad floor");
        assert_eq!(err.code(), "bandit.invalid_param");
        assert!("thompson".parse::<PolicyKind>().is_err());
        assert_eq!("lints".parse::<PolicyKind>(), Ok(PolicyKind::LinTs));
        assert_eq!(
            serde_json::to_string(&PolicyKind::EpsilonGreedy).expect("ser"),
            "\"egreedy\""
        );
    }

    #[test]
    fn check_reports_dimension_errors() {
        let p = Uniform::new(2, 3);
        assert!(p.check(&[0.0, 0.0], &one_hot(3)).is_ok());
        assert!(p.check(&[0.0], &one_hot(3)).is_err());
        assert!(p.check(&[0.0, 0.0], &one_hot(2)).is_err());
        assert!(p.check(&[0.0, 0.0], &[]).is_err());
    }

    #[test]
    fn lints_draws_are_reproducible_and_refreshed_on_update() {
        let mut rng = StdRng::seed_from_u64(4);
        let mut p = LinTs::new(2, 3, Params::default()).expect("valid");
        train(&mut p, &mut rng, 100);
        let q = p.clone();
        assert_eq!(p.draws(), q.draws());
        let before = p.draws().to_vec();
        p.update(&[0.1, 0.2], &one_hot(3)[1], 1.0);
        assert_ne!(p.draws(), &before[..]);
    }

    #[test]
    fn shared_model_with_action_features() {
        // Two-feature actions; the reward depends on x₀·a₀ only: the shared model learns it.
        let mut rng = StdRng::seed_from_u64(5);
        let mut p = LinUcb::new(1, 2, Params::default()).expect("valid");
        for _ in 0..2000 {
            let ctx = random_ctx(&mut rng, 1);
            let acts: Vec<Vec<f32>> = (0..4).map(|_| random_ctx(&mut rng, 2)).collect();
            let (a, _) = p.choose(&ctx, &acts, rng.random());
            let r = f64::from(ctx[0] * acts[a][0]);
            p.update(&ctx, &acts[a], r);
        }
        let probs = p.probabilities(&[1.0], &[vec![1.0, 0.0], vec![-1.0, 0.0]]);
        assert!(probs[0] > 0.9, "{probs:?}");
    }

    proptest! {
        #[test]
        fn probabilities_sum_to_one_above_the_floor(
            seed in 0u64..1000,
            k in 1usize..6,
            floor in 0.0f64..0.5,
            updates in 0usize..40,
        ) {
            let params = Params { floor, draws: 16, seed, ..Params::default() };
            let mut rng = StdRng::seed_from_u64(seed);
            let acts = one_hot(k);
            for mut p in all_policies(3, k, &params) {
                for _ in 0..updates {
                    let ctx = random_ctx(&mut rng, 3);
                    let (a, _) = p.choose(&ctx, &acts, rng.random());
                    p.update(&ctx, &acts[a], rng.random_range(-1.0..2.0));
                }
                let ctx = random_ctx(&mut rng, 3);
                let probs = p.probabilities(&ctx, &acts);
                prop_assert_eq!(probs.len(), k);
                prop_assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
                for &x in &probs {
                    prop_assert!(x >= floor / k as f64 - 1e-15, "{} {:?}", p.kind(), probs);
                }
            }
        }
    }
}
