//! Sample-ratio mismatch (SRM) check: Pearson's χ² goodness of fit of the
//! observed arm sizes against the configured traffic weights.
//!
//! Owns: the χ² statistic and p-value; the warning threshold. Pure function.

use super::error::Note;
use super::frequentist::finite;
use super::special::chi2_sf;

/// p-value below which a sample-ratio mismatch is flagged (GrowthBook and
/// Fabijan et al. 2019 use 0.001).
pub const SRM_THRESHOLD: f64 = 0.001;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SrmOutcome {
    pub chi_square: Option<f64>,
    pub df: Option<f64>,
    pub p_value: Option<f64>,
    /// `p_value < SRM_THRESHOLD`.
    pub warning: bool,
    pub note: Option<Note>,
}

/// χ² = Σ (O_i − E_i)²/E_i with E_i = N w_i/Σw, df = k − 1.
///
/// `weights` must be positive and as long as `counts` (validated by the
/// caller; otherwise the result is uninformative).
pub fn srm_test(counts: &[u64], weights: &[f64]) -> SrmOutcome {
    let uninformative = |msg: &str| SrmOutcome {
        note: Some(Note::new("srm_unavailable", msg)),
        ..SrmOutcome::default()
    };
    if counts.len() < 2 || counts.len() != weights.len() {
        return uninformative("the sample-ratio check needs at least two arms");
    }
    let total: f64 = counts.iter().map(|&c| c as f64).sum();
    let wsum: f64 = weights.iter().sum();
    if total <= 0.0 || wsum.is_nan() || wsum <= 0.0 {
        return uninformative("no units yet: the sample-ratio check is undefined");
    }
    let chi: f64 = counts
        .iter()
        .zip(weights)
        .map(|(&o, &w)| {
            let e = total * w / wsum;
            let d = o as f64 - e;
            d * d / e
        })
        .sum();
    let df = (counts.len() - 1) as f64;
    let p = finite(chi2_sf(chi, df));
    SrmOutcome {
        chi_square: finite(chi),
        df: Some(df),
        p_value: p,
        warning: p.is_some_and(|p| p < SRM_THRESHOLD),
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srm_matches_scipy() {
        // python: from scipy.stats import chisquare
        //   chisquare([5100, 4900, 10150], f_exp=[5037.5, 5037.5, 10075])
        let r = srm_test(&[5100, 4900, 10150], &[0.25, 0.25, 0.5]);
        assert!((r.chi_square.unwrap() - REF.0).abs() < 1e-9);
        assert!((r.p_value.unwrap() - REF.1).abs() < 1e-9);
        assert!(!r.warning);
        // chisquare([5300, 4700]).pvalue -> 1.9731752900753933e-09 (flagged)
        let bad = srm_test(&[5300, 4700], &[1.0, 1.0]);
        assert!((bad.p_value.unwrap() - REF_BAD).abs() < 1e-15);
        assert!(bad.warning);
    }
    const REF: (f64, f64) = (5.086848635235732, 0.07859679805284904);
    const REF_BAD: f64 = 1.9731752900753933e-09;

    #[test]
    fn one_arm_or_no_data_is_uninformative() {
        assert_eq!(srm_test(&[10], &[1.0]).p_value, None);
        assert_eq!(srm_test(&[0, 0], &[1.0, 1.0]).p_value, None);
    }
}
