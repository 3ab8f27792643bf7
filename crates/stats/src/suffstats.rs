//! Sufficient statistics: small immutable `Copy` types that add.
//!
//! Owns: the per-arm running aggregates the engine keeps incrementally
//! (`ProportionStat`, `MeanStat`, `CovariateStat`) and their conversion into
//! the summary form that [`super::analyze`] consumes ([`super::ArmInput`]).
//! Adding two statistics of disjoint samples gives the statistic of their
//! union; `Default` is the empty sample. No I/O, no locking: the owner
//! (the engine's writer thread) keeps them and snapshots by copy.

use super::schema::ArmInput;
use std::iter::Sum;
use std::ops::{Add, AddAssign};

/// Bernoulli outcomes: `n` units, of which `conversions` converted.
///
/// Counts saturate at `u64::MAX` instead of overflowing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProportionStat {
    pub n: u64,
    pub conversions: u64,
}

impl ProportionStat {
    /// A single unit's outcome.
    pub fn observe(converted: bool) -> Self {
        Self {
            n: 1,
            conversions: u64::from(converted),
        }
    }

    /// Conversion rate, `None` when `n == 0`.
    pub fn rate(&self) -> Option<f64> {
        (self.n > 0).then(|| self.conversions as f64 / self.n as f64)
    }

    /// The same data as a mean statistic (x ∈ {0, 1}: sum = sum of squares).
    pub fn to_mean_stat(&self) -> MeanStat {
        MeanStat {
            n: self.n,
            sum: self.conversions as f64,
            sum_squares: self.conversions as f64,
        }
    }

    /// Summary input for [`super::analyze`] with `metric: "proportion"`.
    pub fn to_arm(&self, name: impl Into<String>) -> ArmInput {
        ArmInput {
            name: name.into(),
            n: self.n,
            conversions: Some(self.conversions),
            ..ArmInput::default()
        }
    }
}

impl Add for ProportionStat {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            n: self.n.saturating_add(rhs.n),
            conversions: self.conversions.saturating_add(rhs.conversions),
        }
    }
}

impl AddAssign for ProportionStat {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Sum for ProportionStat {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

/// A real-valued metric: count, sum and sum of squares (gbstats'
/// `SampleMeanStatistic`).
///
/// The variance is computed as `(Σx² − (Σx)²/n)/(n − 1)`, clamped at 0.
/// This loses relative precision when |mean| ≫ standard deviation (about
/// `mean²/var · 1e-16`); center the metric (subtract a fixed offset) before
/// aggregating if that ratio exceeds ~1e8.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MeanStat {
    pub n: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

impl MeanStat {
    /// A single unit's value.
    pub fn observe(x: f64) -> Self {
        Self {
            n: 1,
            sum: x,
            sum_squares: x * x,
        }
    }

    /// Rebuilds the statistic from a mean and sample variance (n − 1 denominator).
    pub fn from_summary(n: u64, mean: f64, variance: f64) -> Self {
        let nf = n as f64;
        Self {
            n,
            sum: mean * nf,
            sum_squares: variance * (nf - 1.0).max(0.0) + mean * mean * nf,
        }
    }

    /// Sample mean, `None` when `n == 0`.
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Sample variance with the n − 1 denominator, `None` when `n < 2`.
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        Some(((self.sum_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }

    /// Summary input for [`super::analyze`] with `metric: "mean"`.
    /// For `n < 2` the variance is reported as 0 (the analysis then warns).
    pub fn to_arm(&self, name: impl Into<String>) -> ArmInput {
        ArmInput {
            name: name.into(),
            n: self.n,
            mean: Some(self.mean().unwrap_or(0.0)),
            variance: Some(self.variance().unwrap_or(0.0)),
            ..ArmInput::default()
        }
    }
}

impl Add for MeanStat {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            n: self.n.saturating_add(rhs.n),
            sum: self.sum + rhs.sum,
            sum_squares: self.sum_squares + rhs.sum_squares,
        }
    }
}

impl AddAssign for MeanStat {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Sum for MeanStat {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

impl From<ProportionStat> for MeanStat {
    fn from(p: ProportionStat) -> Self {
        p.to_mean_stat()
    }
}

/// A metric `y` together with a pre-exposure covariate `x` (for CUPED):
/// the sums needed for both means, both variances and the covariance.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CovariateStat {
    pub n: u64,
    pub sum_y: f64,
    pub sum_y_squares: f64,
    pub sum_x: f64,
    pub sum_x_squares: f64,
    pub sum_xy: f64,
}

impl CovariateStat {
    /// A single unit's metric value `y` and pre-exposure covariate `x`.
    pub fn observe(y: f64, x: f64) -> Self {
        Self {
            n: 1,
            sum_y: y,
            sum_y_squares: y * y,
            sum_x: x,
            sum_x_squares: x * x,
            sum_xy: x * y,
        }
    }

    /// The metric alone.
    pub fn metric(&self) -> MeanStat {
        MeanStat {
            n: self.n,
            sum: self.sum_y,
            sum_squares: self.sum_y_squares,
        }
    }

    /// The covariate alone.
    pub fn covariate(&self) -> MeanStat {
        MeanStat {
            n: self.n,
            sum: self.sum_x,
            sum_squares: self.sum_x_squares,
        }
    }

    /// Sample covariance of y and x (n − 1 denominator), `None` when `n < 2`.
    pub fn covariance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        Some((self.sum_xy - self.sum_x * self.sum_y / n) / (n - 1.0))
    }

    /// Summary input for [`super::analyze`] with `metric: "mean"` and CUPED.
    pub fn to_arm(&self, name: impl Into<String>) -> ArmInput {
        let y = self.metric();
        let x = self.covariate();
        ArmInput {
            name: name.into(),
            n: self.n,
            mean: Some(y.mean().unwrap_or(0.0)),
            variance: Some(y.variance().unwrap_or(0.0)),
            covariate_mean: Some(x.mean().unwrap_or(0.0)),
            covariate_variance: Some(x.variance().unwrap_or(0.0)),
            covariance: Some(self.covariance().unwrap_or(0.0)),
            ..ArmInput::default()
        }
    }
}

impl Add for CovariateStat {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self {
            n: self.n.saturating_add(rhs.n),
            sum_y: self.sum_y + rhs.sum_y,
            sum_y_squares: self.sum_y_squares + rhs.sum_y_squares,
            sum_x: self.sum_x + rhs.sum_x,
            sum_x_squares: self.sum_x_squares + rhs.sum_x_squares,
            sum_xy: self.sum_xy + rhs.sum_xy,
        }
    }
}

impl AddAssign for CovariateStat {
    fn add_assign(&mut self, rhs: Self) {
        *self = *self + rhs;
    }
}

impl Sum for CovariateStat {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel_close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn mean_stat_matches_numpy() {
        // python: import numpy as np; x=[1.5,2.0,-0.5,4.25,3.0]; np.mean(x), np.var(x, ddof=1)
        //   -> 2.05, 3.1375
        let s: MeanStat = [1.5, 2.0, -0.5, 4.25, 3.0]
            .into_iter()
            .map(MeanStat::observe)
            .sum();
        assert!((s.mean().unwrap() - 2.05).abs() < 1e-12);
        assert!((s.variance().unwrap() - 3.1375).abs() < 1e-12);
        let back = MeanStat::from_summary(5, 2.05, 3.1375);
        assert!(rel_close(back.sum, s.sum) && rel_close(back.sum_squares, s.sum_squares));
    }

    #[test]
    fn covariate_stat_covariance() {
        // python: np.cov([1,2,4],[2,1,7])[0,1] -> 4.333333333333333
        let s: CovariateStat = [(1.0, 2.0), (2.0, 1.0), (4.0, 7.0)]
            .into_iter()
            .map(|(y, x)| CovariateStat::observe(y, x))
            .sum();
        assert!((s.covariance().unwrap() - 13.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn empty_statistics_are_uninformative() {
        assert_eq!(ProportionStat::default().rate(), None);
        assert_eq!(MeanStat::observe(3.0).variance(), None);
        assert_eq!(MeanStat::default().mean(), None);
    }

    proptest! {
        #[test]
        fn proportion_add_is_associative_and_commutative(
            a in (0u64..1_000_000, 0u64..1_000_000),
            b in (0u64..1_000_000, 0u64..1_000_000),
            c in (0u64..1_000_000, 0u64..1_000_000),
        ) {
            let mk = |(n, k): (u64, u64)| ProportionStat { n: n.max(k), conversions: n.min(k) };
            let (a, b, c) = (mk(a), mk(b), mk(c));
            prop_assert_eq!((a + b) + c, a + (b + c));
            prop_assert_eq!(a + b, b + a);
            prop_assert_eq!(a + ProportionStat::default(), a);
        }

        #[test]
        fn mean_add_is_associative(
            xs in proptest::collection::vec(-1e6f64..1e6, 1..40),
            split1 in 0usize..40, split2 in 0usize..40,
        ) {
            let (i, j) = (split1.min(split2).min(xs.len()), split1.max(split2).min(xs.len()));
            let part = |s: &[f64]| s.iter().copied().map(MeanStat::observe).sum::<MeanStat>();
            let (a, b, c) = (part(&xs[..i]), part(&xs[i..j]), part(&xs[j..]));
            let left = (a + b) + c;
            let right = a + (b + c);
            let whole = part(&xs);
            prop_assert_eq!(left.n, right.n);
            prop_assert!(rel_close(left.sum, right.sum) && rel_close(left.sum_squares, right.sum_squares));
            prop_assert!(rel_close(left.sum, whole.sum) && rel_close(left.sum_squares, whole.sum_squares));
        }

        #[test]
        fn integer_valued_means_add_exactly(
            xs in proptest::collection::vec(-1000i32..1000, 0..60), cut in 0usize..60,
        ) {
            let cut = cut.min(xs.len());
            let part = |s: &[i32]| s.iter().map(|&x| MeanStat::observe(f64::from(x))).sum::<MeanStat>();
            prop_assert_eq!(part(&xs[..cut]) + part(&xs[cut..]), part(&xs));
        }

        #[test]
        fn covariate_add_is_associative(
            xs in proptest::collection::vec((-1e3f64..1e3, -1e3f64..1e3), 0..30), cut in 0usize..30,
        ) {
            let cut = cut.min(xs.len());
            let part = |s: &[(f64, f64)]| s.iter().map(|&(y, x)| CovariateStat::observe(y, x)).sum::<CovariateStat>();
            let (a, b) = (part(&xs[..cut]), part(&xs[cut..]));
            let w = part(&xs);
            let s = a + b;
            prop_assert_eq!(s.n, w.n);
            prop_assert!(rel_close(s.sum_xy, w.sum_xy) && rel_close(s.sum_x_squares, w.sum_x_squares));
        }
    }
}
