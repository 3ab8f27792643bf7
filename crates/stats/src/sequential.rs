//! Always-valid inference: the normal-mixture sequential probability ratio
//! test (mSPRT; Robbins 1970, Johari et al. 2017/2022) and the matching
//! confidence sequence (Howard et al. 2021).
//!
//! Owns: the mixture likelihood ratio, the always-valid p-value at one look,
//! the confidence sequence, and the default choice of the mixing variance τ².
//! Pure functions; the caller keeps the running minimum across looks if it
//! wants the monotone p-value (see [`running_min`]).

use super::error::Note;
use super::frequentist::{finite, finite_pair};

/// Default number of units per arm at which the confidence sequence is
/// tightest (GrowthBook's `sequential_tuning_parameter` default).
pub const DEFAULT_TUNING_N: f64 = 5000.0;

/// Result of the mSPRT at one look.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequentialOutcome {
    /// min(1, 1/Λ) at this look.
    pub p_value: Option<f64>,
    /// {θ : Λ(θ) < 1/α}: the (1 − α) confidence sequence at this look.
    pub ci: Option<[f64; 2]>,
    pub note: Option<Note>,
}

/// r*(α): the τ²/V ratio that minimises the confidence-sequence width at the
/// look where Var(d̂) = V. Solves r = ln(1 + r) + 2 ln(1/α) (fixed point,
/// contraction since d/dr ln(1 + r) < 1); ≈ −2 ln α + ln(1 − 2 ln α) (Howard
/// et al. 2021, eq. for the optimal normal-mixture ρ).
pub fn optimal_tau_ratio(alpha: f64) -> f64 {
    let two_l = -2.0 * alpha.ln();
    let mut r = two_l + (1.0 + two_l).ln();
    for _ in 0..100 {
        let next = (1.0 + r).ln() + two_l;
        if (next - r).abs() < 1e-14 * r {
            return next;
        }
        r = next;
    }
    r
}

/// Default mixing variance: τ² = r*(α) · (σ²_c + σ²_t)/N*, i.e. tuned so the
/// confidence sequence is narrowest when each arm has N* units, where σ² are
/// per-unit variances (plug-in estimates).
pub fn default_tau_squared(unit_var_c: f64, unit_var_t: f64, tuning_n: f64, alpha: f64) -> f64 {
    optimal_tau_ratio(alpha) * (unit_var_c + unit_var_t) / tuning_n
}

/// Normal-mixture SPRT of H₀: θ = 0 for an asymptotically normal estimate
/// `difference` with variance `variance` (= SE²), mixing N(0, τ²):
///
/// Λ = √(V/(V + τ²)) · exp(τ² d̂² / (2V(V + τ²))),  p = min(1, 1/Λ),
/// CS = d̂ ± √( V(V + τ²)/τ² · (ln((V + τ²)/V) + 2 ln(1/α)) ).
pub fn msprt(difference: f64, variance: f64, tau_squared: f64, alpha: f64) -> SequentialOutcome {
    if variance.is_nan() || variance <= 0.0 || !difference.is_finite() || !variance.is_finite() {
        return SequentialOutcome {
            note: Some(Note::new(
                "zero_variance",
                "the difference has zero variance: the sequential test is undefined",
            )),
            ..SequentialOutcome::default()
        };
    }
    if tau_squared.is_nan() || tau_squared <= 0.0 || !tau_squared.is_finite() {
        return SequentialOutcome {
            note: Some(Note::new(
                "invalid_tau",
                "the mixing variance τ² is not positive",
            )),
            ..SequentialOutcome::default()
        };
    }
    let v = variance;
    let s = v + tau_squared;
    let ln_lambda = 0.5 * (v / s).ln() + tau_squared * difference * difference / (2.0 * v * s);
    let p = (-ln_lambda).exp().min(1.0);
    let half = (v * s / tau_squared * ((s / v).ln() + 2.0 * (1.0 / alpha).ln())).sqrt();
    SequentialOutcome {
        p_value: finite(p),
        ci: finite_pair(difference - half, difference + half),
        note: None,
    }
}

/// The always-valid p-value reported over time is the running minimum of the
/// per-look values: `running_min(previous, current)`.
pub fn running_min(previous: Option<f64>, current: Option<f64>) -> Option<f64> {
    match (previous, current) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msprt_matches_closed_form() {
        // python: import math; d,V,t2,a=0.006,(0.05*0.95+0.056*0.944)/1e4,1e-5,0.05
        //   L=math.sqrt(V/(V+t2))*math.exp(t2*d*d/(2*V*(V+t2))); min(1,1/L)
        //   d+math.sqrt(V*(V+t2)/t2*(math.log((V+t2)/V)+2*math.log(1/a)))
        let v = (0.05 * 0.95 + 0.056 * 0.944) / 1e4;
        let r = msprt(0.006, v, 1e-5, 0.05);
        assert!((r.p_value.unwrap() - REF.0).abs() < 1e-9);
        assert!((r.ci.unwrap()[1] - REF.1).abs() < 1e-9);
    }
    const REF: (f64, f64) = (0.5772725774252169, 0.01759252261099265);

    #[test]
    fn optimal_ratio_solves_fixed_point() {
        // python: from scipy.optimize import brentq; import math
        //   brentq(lambda r: r-math.log1p(r)+2*math.log(0.05), 1, 100)
        let r = optimal_tau_ratio(0.05);
        assert!((r - REF_R).abs() < 1e-9);
    }
    const REF_R: f64 = 8.211968062068253;

    #[test]
    fn sequential_interval_is_wider_than_fixed() {
        let r = msprt(0.0, 1.0, 1.0, 0.05);
        let ci = r.ci.unwrap();
        assert!(ci[1] > 1.96);
        assert_eq!(r.p_value, Some(1.0));
        assert_eq!(msprt(1.0, 0.0, 1.0, 0.05).p_value, None);
    }
}
