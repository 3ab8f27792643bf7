//! A seeded synthetic environment for tests and benchmarks: K actions, d-dimensional
//! Gaussian contexts, and linear-logistic click probabilities
//! `μ(x, a) = σ(b_a + w_aᵀx)` with a known ground truth, so regret and the true value of a
//! policy can be computed exactly (up to Monte Carlo over contexts).
//!
//! Pure and single-threaded: every function takes the RNG it draws from. Nothing here is
//! used on the serving path.

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

use super::bandit::{one_hot, Policy};
use super::ope::LogRow;

/// The ground truth: per-action weights and biases of a logistic click model.
#[derive(Debug, Clone, PartialEq)]
pub struct Environment {
    k: usize,
    d: usize,
    weights: Vec<Vec<f64>>,
    bias: Vec<f64>,
    actions: Vec<Vec<f32>>,
}

/// Logistic function.
fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Environment {
    /// `k` actions, `d` context features, ground truth drawn from `seed`: weights
    /// `w_aj ~ N(0, 1/d)`, biases `b_a ~ N(−1, 0.3²)`, so click rates lie mostly in 0.1–0.5
    /// and the best action depends on the context.
    pub fn new(k: usize, d: usize, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let s = 1.0 / (d.max(1) as f64).sqrt();
        let mut normal = || -> f64 { StandardNormal.sample(&mut rng) };
        let weights = (0..k)
            .map(|_| (0..d).map(|_| s * normal()).collect())
            .collect();
        let bias = (0..k).map(|_| -1.0 + 0.3 * normal()).collect();
        Environment {
            k,
            d,
            weights,
            bias,
            actions: one_hot(k),
        }
    }

    /// Number of actions K.
    pub fn n_actions(&self) -> usize {
        self.k
    }

    /// Context dimension d.
    pub fn ctx_dim(&self) -> usize {
        self.d
    }

    /// One-hot action features.
    pub fn actions(&self) -> &[Vec<f32>] {
        &self.actions
    }

    /// A context `x ~ N(0, I_d)`.
    pub fn context(&self, rng: &mut StdRng) -> Vec<f32> {
        (0..self.d)
            .map(|_| StandardNormal.sample(rng))
            .map(|x: f64| x as f32)
            .collect()
    }

    /// Click probability `μ(x, a)`.
    pub fn click_prob(&self, ctx: &[f32], a: usize) -> f64 {
        let z: f64 = self.weights[a]
            .iter()
            .zip(ctx)
            .map(|(w, &x)| w * f64::from(x))
            .sum();
        sigmoid(self.bias[a] + z)
    }

    /// `μ(x, a)` for every action.
    pub fn expected_rewards(&self, ctx: &[f32]) -> Vec<f64> {
        (0..self.k).map(|a| self.click_prob(ctx, a)).collect()
    }

    /// A Bernoulli click.
    pub fn reward(&self, ctx: &[f32], a: usize, rng: &mut StdRng) -> f64 {
        if rng.random::<f64>() < self.click_prob(ctx, a) {
            1.0
        } else {
            0.0
        }
    }

    /// Plays `t` rounds with `policy` (learning from every reward) and returns the cumulative
    /// expected regret after each round: `Σ_s max_a μ(x_s, a) − μ(x_s, a_s)`.
    pub fn run(&self, policy: &mut dyn Policy, t: usize, rng: &mut StdRng) -> Vec<f64> {
        let mut cum = Vec::with_capacity(t);
        let mut total = 0.0;
        for _ in 0..t {
            let ctx = self.context(rng);
            let mu = self.expected_rewards(&ctx);
            let (a, _) = policy.choose(&ctx, &self.actions, rng.random());
            let r = self.reward(&ctx, a, rng);
            policy.update(&ctx, &self.actions[a], r);
            total += mu.iter().copied().fold(f64::NEG_INFINITY, f64::max) - mu[a];
            cum.push(total);
        }
        cum
    }

    /// `n` logged decisions of `logging` (which learns from them when `learn`); rows carry no
    /// `actions` (one-hot) and the propensity `logging` reported.
    pub fn log(
        &self,
        n: usize,
        logging: &mut dyn Policy,
        learn: bool,
        rng: &mut StdRng,
    ) -> Vec<LogRow> {
        (0..n)
            .map(|_| {
                let ctx = self.context(rng);
                let (a, probs) = logging.choose(&ctx, &self.actions, rng.random());
                let reward = self.reward(&ctx, a, rng);
                if learn {
                    logging.update(&ctx, &self.actions[a], reward);
                }
                LogRow {
                    context: ctx,
                    actions: None,
                    action: a,
                    reward,
                    propensity: probs[a],
                    position: None,
                }
            })
            .collect()
    }

    /// The value `E_x[Σ_a π(a|x) μ(x, a)]` of a fixed policy, averaged over `n` fresh contexts
    /// (standard error ≈ 0.1/√n for these click rates).
    pub fn true_value(&self, policy: &dyn Policy, n: usize, rng: &mut StdRng) -> f64 {
        let total: f64 = (0..n)
            .map(|_| {
                let ctx = self.context(rng);
                let probs = policy.probabilities(&ctx, &self.actions);
                let mu = self.expected_rewards(&ctx);
                probs.iter().zip(&mu).map(|(p, m)| p * m).sum::<f64>()
            })
            .sum();
        total / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bandit::{EpsilonGreedy, Params};

    #[test]
    fn seeded_and_deterministic() {
        let (e1, e2) = (Environment::new(4, 5, 9), Environment::new(4, 5, 9));
        assert_eq!(e1, e2);
        assert_ne!(e1, Environment::new(4, 5, 10));
        let mut p1 = EpsilonGreedy::new(5, 4, Params::default()).expect("valid");
        let mut p2 = p1.clone();
        let l1 = e1.log(200, &mut p1, true, &mut StdRng::seed_from_u64(1));
        let l2 = e2.log(200, &mut p2, true, &mut StdRng::seed_from_u64(1));
        assert_eq!(l1, l2);
    }

    #[test]
    fn logged_propensities_equal_probabilities() {
        let env = Environment::new(4, 5, 1);
        let mut rng = StdRng::seed_from_u64(2);
        let mut logging = EpsilonGreedy::new(5, 4, Params::default()).expect("valid");
        // Learn on a prefix, then freeze and compare every logged propensity.
        env.log(500, &mut logging, true, &mut rng);
        for row in env.log(500, &mut logging, false, &mut rng) {
            let p = logging.probabilities(&row.context, env.actions());
            assert_eq!(row.propensity, p[row.action]);
        }
    }

    #[test]
    fn click_rates_are_in_a_realistic_range() {
        let env = Environment::new(4, 5, 3);
        let mut rng = StdRng::seed_from_u64(4);
        let mut mean = 0.0;
        for _ in 0..2000 {
            let ctx = env.context(&mut rng);
            mean += env.expected_rewards(&ctx).iter().sum::<f64>() / 4.0 / 2000.0;
        }
        assert!((0.1..0.5).contains(&mean), "{mean}");
    }
}
