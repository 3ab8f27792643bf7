//! Power and sample size for two-sided two-sample tests at a stated minimum
//! detectable effect (MDE).
//!
//! Owns: the power function of the pooled two-proportion z-test and of the
//! (large-sample, normal) two-sample mean test, and the per-arm sample size
//! for equal allocation, solved exactly (both rejection tails) from the
//! classical closed form as a starting point. Pure functions.

use super::special::{norm_cdf, norm_ppf};

/// Power of the two-sided pooled z-test for p₁ (control) vs p₂ at sizes n₁, n₂:
/// Φ((|Δ| − z σ₀)/σ₁) + Φ((−|Δ| − z σ₀)/σ₁), σ₀ = √(p̄q̄(1/n₁ + 1/n₂)) with
/// p̄ = (n₁p₁ + n₂p₂)/(n₁ + n₂), σ₁ = √(p₁q₁/n₁ + p₂q₂/n₂), z = z_{1−α/2}.
pub fn proportion_power(p1: f64, p2: f64, n1: f64, n2: f64, alpha: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&p1) || !(0.0..=1.0).contains(&p2) || n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    let d = (p2 - p1).abs();
    let pbar = (n1 * p1 + n2 * p2) / (n1 + n2);
    let s0 = (pbar * (1.0 - pbar) * (1.0 / n1 + 1.0 / n2)).sqrt();
    let s1 = (p1 * (1.0 - p1) / n1 + p2 * (1.0 - p2) / n2).sqrt();
    if s1 <= 0.0 || !s1.is_finite() {
        return None;
    }
    let z = norm_ppf(1.0 - alpha / 2.0);
    let p = norm_cdf((d - z * s0) / s1) + norm_cdf((-d - z * s0) / s1);
    p.is_finite().then_some(p.clamp(0.0, 1.0))
}

/// Units per arm (equal allocation) for the pooled z-test to reach `power`
/// when the rates are p₁ and p₂. Starting value (Fleiss, Levin & Paik 2003,
/// eq. 4.14 without continuity correction):
/// n = (z_{1−α/2}√(2p̄q̄) + z_{power}√(p₁q₁ + p₂q₂))² / Δ², p̄ = (p₁ + p₂)/2,
/// then refined so that [`proportion_power`] equals `power` exactly.
pub fn proportion_sample_size(p1: f64, p2: f64, alpha: f64, power: f64) -> Option<f64> {
    let d = (p2 - p1).abs();
    if d <= 0.0 || !(0.0..=1.0).contains(&p1) || !(0.0..=1.0).contains(&p2) {
        return None;
    }
    let pbar = 0.5 * (p1 + p2);
    let za = norm_ppf(1.0 - alpha / 2.0);
    let zb = norm_ppf(power);
    let n0 = (za * (2.0 * pbar * (1.0 - pbar)).sqrt()
        + zb * (p1 * (1.0 - p1) + p2 * (1.0 - p2)).sqrt())
    .powi(2)
        / (d * d);
    solve_n(n0, power, |n| proportion_power(p1, p2, n, n, alpha))
}

/// Power of the two-sided two-sample test of means (normal approximation)
/// for a true difference Δ, per-unit variance σ² in both arms:
/// Φ(|Δ|/se − z) + Φ(−|Δ|/se − z), se = σ√(1/n₁ + 1/n₂).
pub fn mean_power(delta: f64, variance: f64, n1: f64, n2: f64, alpha: f64) -> Option<f64> {
    if variance.is_nan() || variance <= 0.0 || n1 <= 0.0 || n2 <= 0.0 {
        return None;
    }
    let se = (variance * (1.0 / n1 + 1.0 / n2)).sqrt();
    let z = norm_ppf(1.0 - alpha / 2.0);
    let k = delta.abs() / se;
    let p = norm_cdf(k - z) + norm_cdf(-k - z);
    p.is_finite().then_some(p.clamp(0.0, 1.0))
}

/// Units per arm (equal allocation) to detect Δ with variance σ²:
/// n = 2σ²(z_{1−α/2} + z_{power})²/Δ², refined to include the far tail
/// (equals `statsmodels` `NormalIndPower().solve_power(Δ/σ, alpha, power)`).
pub fn mean_sample_size(delta: f64, variance: f64, alpha: f64, power: f64) -> Option<f64> {
    if delta == 0.0 || !delta.is_finite() || variance.is_nan() || variance <= 0.0 {
        return None;
    }
    let za = norm_ppf(1.0 - alpha / 2.0);
    let zb = norm_ppf(power);
    let n0 = 2.0 * variance * (za + zb).powi(2) / (delta * delta);
    solve_n(n0, power, |n| mean_power(delta, variance, n, n, alpha))
}

/// Solves power(n) = target for n by bisection around the closed-form n0
/// (power is increasing in n).
fn solve_n(n0: f64, target: f64, power: impl Fn(f64) -> Option<f64>) -> Option<f64> {
    if !n0.is_finite() || n0 <= 0.0 {
        return None;
    }
    let (mut lo, mut hi) = (n0 * 0.5, n0 * 2.0);
    let mut guard = 0;
    while power(lo)? > target && guard < 60 {
        lo *= 0.5;
        guard += 1;
    }
    while power(hi)? < target && guard < 120 {
        hi *= 2.0;
        guard += 1;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if power(mid)? < target {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    let n = 0.5 * (lo + hi);
    n.is_finite().then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{a} vs {b}");
    }

    #[test]
    fn mean_sample_size_matches_statsmodels() {
        // python: from statsmodels.stats.power import NormalIndPower
        //   NormalIndPower().solve_power(effect_size=0.5/2.0, alpha=0.05, power=0.8, ratio=1)
        close(mean_sample_size(0.5, 4.0, 0.05, 0.8).unwrap(), REF_MEAN_N);
        //   NormalIndPower().power(effect_size=0.25, nobs1=200, alpha=0.05, ratio=1.5)
        close(
            mean_power(0.5, 4.0, 200.0, 300.0, 0.05).unwrap(),
            REF_MEAN_POWER,
        );
    }
    const REF_MEAN_N: f64 = 251.16353630180953;
    const REF_MEAN_POWER: f64 = 0.7819079987319797;

    #[test]
    fn proportion_sample_size_matches_closed_form() {
        // python: from scipy.stats import norm; from scipy.optimize import brentq
        //   def pw(p1,p2,n1,n2,a=.05):
        //     d=abs(p2-p1); pb=(n1*p1+n2*p2)/(n1+n2); s0=(pb*(1-pb)*(1/n1+1/n2))**.5
        //     s1=(p1*(1-p1)/n1+p2*(1-p2)/n2)**.5; z=norm.ppf(1-a/2)
        //     return norm.cdf((d-z*s0)/s1)+norm.cdf((-d-z*s0)/s1)
        //   brentq(lambda n: pw(.05,.055,n,n)-.8, 100, 1e6, xtol=1e-9); pw(.05,.055,20000,10000)
        close(
            proportion_sample_size(0.05, 0.055, 0.05, 0.8).unwrap(),
            REF_PROP_N,
        );
        close(
            proportion_power(0.05, 0.055, 20000.0, 10000.0, 0.05).unwrap(),
            REF_PROP_POWER,
        );
        // statsmodels' arcsine (Cohen's h) approximation is within 0.2% of this:
        //   NormalIndPower().solve_power(proportion_effectsize(.055,.05), alpha=.05, power=.8)
        let h = proportion_sample_size(0.05, 0.055, 0.05, 0.8).unwrap();
        assert!((h / REF_COHEN_H_N - 1.0).abs() < 0.002);
    }
    const REF_PROP_N: f64 = 31233.36153372452;
    const REF_PROP_POWER: f64 = 0.4547400846804046;
    const REF_COHEN_H_N: f64 = 31217.423430777748;

    #[test]
    fn zero_effect_has_no_sample_size() {
        assert_eq!(proportion_sample_size(0.1, 0.1, 0.05, 0.8), None);
        assert_eq!(mean_sample_size(0.0, 1.0, 0.05, 0.8), None);
    }
}
