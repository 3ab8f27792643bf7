//! Multiple-testing corrections: Holm (FWER) and Benjamini–Hochberg (FDR).
//!
//! Owns: adjusted p-values for a family of tests (the arms of one metric, or
//! several metrics). Matches `statsmodels.stats.multitest.multipletests` with
//! `method="holm"` and `method="fdr_bh"`. Pure functions.

/// Holm step-down adjusted p-values, in input order.
///
/// With p₍₁₎ ≤ … ≤ p₍ₘ₎: p̃₍ᵢ₎ = max_{j ≤ i} min(1, (m − j + 1) p₍ⱼ₎).
/// Entries that are NaN are not part of the family and come back NaN.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let order = sorted_finite(p_values);
    let m = order.len() as f64;
    let mut out = vec![f64::NAN; p_values.len()];
    let mut running = 0.0_f64;
    for (rank, &i) in order.iter().enumerate() {
        let adj = ((m - rank as f64) * p_values[i]).min(1.0);
        running = running.max(adj);
        out[i] = running;
    }
    out
}

/// Benjamini–Hochberg step-up adjusted p-values (q-values), in input order.
///
/// With p₍₁₎ ≤ … ≤ p₍ₘ₎: p̃₍ᵢ₎ = min_{j ≥ i} min(1, m p₍ⱼ₎ / j).
/// Entries that are NaN are not part of the family and come back NaN.
pub fn benjamini_hochberg(p_values: &[f64]) -> Vec<f64> {
    let order = sorted_finite(p_values);
    let m = order.len() as f64;
    let mut out = vec![f64::NAN; p_values.len()];
    let mut running = 1.0_f64;
    for (rank, &i) in order.iter().enumerate().rev() {
        let adj = (m * p_values[i] / (rank as f64 + 1.0)).min(1.0);
        running = running.min(adj);
        out[i] = running;
    }
    out
}

/// Same as [`holm`] / [`benjamini_hochberg`] over optional p-values.
pub(crate) fn adjust_options(p: &[Option<f64>], f: fn(&[f64]) -> Vec<f64>) -> Vec<Option<f64>> {
    let raw: Vec<f64> = p.iter().map(|x| x.unwrap_or(f64::NAN)).collect();
    f(&raw)
        .into_iter()
        .map(|x| x.is_finite().then_some(x))
        .collect()
}

fn sorted_finite(p: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: [f64; 6] = [0.01, 0.04, 0.03, 0.005, 0.20, 0.04];

    fn assert_vec(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn holm_matches_statsmodels() {
        // python: from statsmodels.stats.multitest import multipletests
        //   multipletests([0.01,0.04,0.03,0.005,0.20,0.04], method="holm")[1]
        //   -> [0.05, 0.12, 0.12, 0.03, 0.2, 0.12]
        assert_vec(&holm(&P), &[0.05, 0.12, 0.12, 0.03, 0.2, 0.12]);
    }

    #[test]
    fn bh_matches_statsmodels() {
        // python: multipletests([0.01,0.04,0.03,0.005,0.20,0.04], method="fdr_bh")[1]
        //   -> [0.03, 0.048, 0.048, 0.03, 0.2, 0.048]
        assert_vec(
            &benjamini_hochberg(&P),
            &[0.03, 0.048, 0.048, 0.03, 0.2, 0.048],
        );
    }

    #[test]
    fn nan_is_left_out_of_the_family() {
        let out = holm(&[0.01, f64::NAN, 0.04]);
        assert!(out[1].is_nan());
        assert_vec(&[out[0], out[2]], &[0.02, 0.04]);
        assert!(holm(&[]).is_empty());
    }
}
