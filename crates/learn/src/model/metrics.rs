//! Evaluation metrics of a binary probabilistic classifier, in plain Rust (no candle): AUC-ROC,
//! PR-AUC (average precision), log-loss, MAE, reliability bins and expected calibration error.
//!
//! Inputs are predicted probabilities (or any scores, for the rank metrics) and labels in
//! {0, 1} (`> 0.5` counts as positive). Undefined values (AUC with one class only, metrics of
//! no rows) are NaN, which serde_json writes as `null`. Pure functions; O(n log n) at most.

use serde::{Deserialize, Serialize};

/// Probabilities are clamped to `[EPS, 1 − EPS]` inside the log-loss.
pub const LOGLOSS_EPS: f64 = 1e-7;

/// Number of equal-width reliability bins.
pub const CALIBRATION_BINS: usize = 10;

fn positive(y: f32) -> bool {
    y > 0.5
}

/// Area under the ROC curve by ranks (Mann–Whitney U): tied scores get the average of their
/// ranks, so a tie between a positive and a negative counts ½. NaN without both classes.
pub fn auc_roc(scores: &[f32], labels: &[f32]) -> f64 {
    let n = scores.len().min(labels.len());
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut pos) = (0.0f64, 0usize);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let avg = (i + j + 2) as f64 / 2.0;
        for &k in &idx[i..=j] {
            if positive(labels[k]) {
                rank_sum += avg;
                pos += 1;
            }
        }
        i = j + 1;
    }
    let neg = n - pos;
    if pos == 0 || neg == 0 {
        return f64::NAN;
    }
    let (p, q) = (pos as f64, neg as f64);
    (rank_sum - p * (p + 1.0) / 2.0) / (p * q)
}

/// Average precision `Σₖ (Rₖ − Rₖ₋₁)·Pₖ` over the distinct score thresholds, highest first
/// (tied scores enter together; scikit-learn's `average_precision_score`). NaN without
/// positives.
pub fn pr_auc(scores: &[f32], labels: &[f32]) -> f64 {
    let n = scores.len().min(labels.len());
    let total_pos = labels[..n].iter().filter(|&&y| positive(y)).count();
    if total_pos == 0 {
        return f64::NAN;
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let (mut ap, mut prev_recall) = (0.0, 0.0);
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        for &k in &idx[i..=j] {
            if positive(labels[k]) {
                tp += 1;
            } else {
                fp += 1;
            }
        }
        let recall = tp as f64 / total_pos as f64;
        let precision = tp as f64 / (tp + fp) as f64;
        ap += (recall - prev_recall) * precision;
        prev_recall = recall;
        i = j + 1;
    }
    ap
}

/// Mean binary cross-entropy of probabilities clamped to `[1e-7, 1 − 1e-7]`.
pub fn log_loss(probs: &[f32], labels: &[f32]) -> f64 {
    let n = probs.len().min(labels.len());
    let total: f64 = (0..n)
        .map(|i| {
            let p = f64::from(probs[i]).clamp(LOGLOSS_EPS, 1.0 - LOGLOSS_EPS);
            if positive(labels[i]) {
                -p.ln()
            } else {
                -(1.0 - p).ln()
            }
        })
        .sum();
    total / n as f64
}

/// Mean absolute error `|p − y|`.
pub fn mae(probs: &[f32], labels: &[f32]) -> f64 {
    let n = probs.len().min(labels.len());
    let total: f64 = (0..n)
        .map(|i| (f64::from(probs[i]) - f64::from(labels[i])).abs())
        .sum();
    total / n as f64
}

/// One reliability bin `[lo, hi)` (the last bin includes 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Predictions in the bin.
    pub count: usize,
    /// Mean predicted probability (`None` when empty).
    pub mean_predicted: Option<f64>,
    /// Observed positive rate (`None` when empty).
    pub observed_rate: Option<f64>,
}

/// `bins` equal-width reliability bins over [0, 1].
pub fn calibration(probs: &[f32], labels: &[f32], bins: usize) -> Vec<CalibrationBin> {
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut sum_p = vec![0.0f64; bins];
    let mut sum_y = vec![0.0f64; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let p = f64::from(p).clamp(0.0, 1.0);
        let b = ((p * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        sum_p[b] += p;
        sum_y[b] += if positive(y) { 1.0 } else { 0.0 };
    }
    (0..bins)
        .map(|b| {
            let c = count[b] as f64;
            CalibrationBin {
                lo: b as f64 / bins as f64,
                hi: (b + 1) as f64 / bins as f64,
                count: count[b],
                mean_predicted: (count[b] > 0).then(|| sum_p[b] / c),
                observed_rate: (count[b] > 0).then(|| sum_y[b] / c),
            }
        })
        .collect()
}

/// Expected calibration error `Σ_b (n_b / n)·|mean predicted_b − observed rate_b|`.
pub fn ece(bins: &[CalibrationBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    bins.iter()
        .filter_map(|b| {
            let (p, o) = (b.mean_predicted?, b.observed_rate?);
            Some(b.count as f64 / n as f64 * (p - o).abs())
        })
        .sum()
}

/// Reads `null` (how serde_json writes NaN) back as NaN.
fn f64_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// The held-out metrics reported for a model. Undefined values are NaN (`null` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// AUC-ROC.
    #[serde(deserialize_with = "f64_or_nan")]
    pub auc: f64,
    /// Average precision.
    #[serde(deserialize_with = "f64_or_nan")]
    pub pr_auc: f64,
    /// Log-loss (natural log).
    #[serde(deserialize_with = "f64_or_nan")]
    pub logloss: f64,
    /// Mean absolute error of the probability.
    #[serde(deserialize_with = "f64_or_nan")]
    pub mae: f64,
    /// Expected calibration error over 10 bins.
    #[serde(deserialize_with = "f64_or_nan")]
    pub ece: f64,
}

impl Metrics {
    /// All metrics of `probs` against `labels`.
    pub fn compute(probs: &[f32], labels: &[f32]) -> Self {
        Metrics {
            auc: auc_roc(probs, labels),
            pr_auc: pr_auc(probs, labels),
            logloss: log_loss(probs, labels),
            mae: mae(probs, labels),
            ece: ece(&calibration(probs, labels, CALIBRATION_BINS)),
        }
    }

    /// The metrics as `(name, value)` pairs, in report order.
    pub fn named(&self) -> [(&'static str, f64); 5] {
        [
            ("auc", self.auc),
            ("pr_auc", self.pr_auc),
            ("logloss", self.logloss),
            ("mae", self.mae),
            ("ece", self.ece),
        ]
    }

    /// Builds metrics from values in [`Metrics::named`] order.
    pub fn from_values(v: [f64; 5]) -> Self {
        Metrics {
            auc: v[0],
            pr_auc: v[1],
            logloss: v[2],
            mae: v[3],
            ece: v[4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn auc_hand_computed() {
        // Positives at 0.8, 0.4; negatives at 0.6, 0.2. Pairs (pos > neg): (0.8,0.6),
        // (0.8,0.2), (0.4,0.2) → 3 of 4.
        assert_eq!(auc_roc(&[0.8, 0.6, 0.4, 0.2], &[1.0, 0.0, 1.0, 0.0]), 0.75);
        // A tie between a positive and a negative counts ½: pairs (0.5,0.5)=½, (0.5,0.1)=1.
        assert_eq!(auc_roc(&[0.5, 0.5, 0.1], &[1.0, 0.0, 0.0]), 0.75);
        assert!(auc_roc(&[0.1, 0.2], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn pr_auc_hand_computed() {
        // Descending: 0.8 (+), 0.6 (−), 0.4 (+), 0.2 (−). AP = ½·1 + ½·(2/3) = 5/6.
        let ap = pr_auc(&[0.8, 0.6, 0.4, 0.2], &[1.0, 0.0, 1.0, 0.0]);
        assert!((ap - 5.0 / 6.0).abs() < 1e-12, "{ap}");
        // All tied: one threshold, recall 1 at precision ½.
        assert_eq!(pr_auc(&[0.3; 4], &[1.0, 0.0, 1.0, 0.0]), 0.5);
        assert!(pr_auc(&[0.3], &[0.0]).is_nan());
    }

    #[test]
    fn logloss_and_mae_hand_computed() {
        let ll = log_loss(&[0.8, 0.4], &[1.0, 0.0]);
        let want = -(0.8f64.ln() + 0.6f64.ln()) / 2.0;
        assert!((ll - want).abs() < 1e-6, "{ll} {want}");
        // Clamped: a confident mistake costs −ln(1e-7), not infinity.
        let worst = log_loss(&[0.0], &[1.0]);
        assert!((worst - 1e7f64.ln()).abs() < 1e-6);
        let m = mae(&[0.8, 0.4], &[1.0, 0.0]);
        assert!((m - 0.3).abs() < 1e-6);
    }

    #[test]
    fn calibration_bins_and_ece() {
        let probs = [0.05, 0.15, 0.15, 0.95, 1.0];
        let labels = [0.0, 1.0, 0.0, 1.0, 1.0];
        let bins = calibration(&probs, &labels, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(bins[0].count, 1);
        assert_eq!(bins[1].count, 2);
        assert_eq!(bins[9].count, 2, "1.0 falls in the last bin");
        assert_eq!(bins[5].count, 0);
        assert_eq!(bins[5].mean_predicted, None);
        assert_eq!(bins[1].observed_rate, Some(0.5));
        // ECE = 1/5·0.05 + 2/5·|0.15−0.5| + 2/5·|0.975−1| = 0.01 + 0.14 + 0.01 = 0.16.
        let e = ece(&bins);
        assert!((e - 0.16).abs() < 1e-6, "{e}");
    }

    #[test]
    fn perfectly_separated_and_reversed() {
        let s = [0.1, 0.2, 0.3, 0.9];
        let y = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auc_roc(&s, &y), 1.0);
        assert_eq!(pr_auc(&s, &y), 1.0);
        let rev: Vec<f32> = s.iter().map(|v| 1.0 - v).collect();
        assert_eq!(auc_roc(&rev, &y), 0.0);
    }

    proptest! {
        #[test]
        fn auc_invariant_to_monotone_transforms(
            rows in proptest::collection::vec((-500i32..500, any::<bool>()), 2..60)
        ) {
            // Scores on a 0.01 grid (with ties), so no transform below merges distinct scores.
            let s: Vec<f32> = rows.iter().map(|r| r.0 as f32 / 100.0).collect();
            let y: Vec<f32> = rows.iter().map(|r| if r.1 { 1.0 } else { 0.0 }).collect();
            let a = auc_roc(&s, &y);
            // Strictly increasing transforms.
            let t: Vec<f32> = s.iter().map(|v| 2.0 * v + 3.0).collect();
            let e: Vec<f32> = s.iter().map(|v| v.exp()).collect();
            let b = auc_roc(&t, &y);
            let c = auc_roc(&e, &y);
            prop_assert!(a.is_nan() == b.is_nan() && (a.is_nan() || (a - b).abs() < 1e-12));
            prop_assert!(a.is_nan() == c.is_nan() && (a.is_nan() || (a - c).abs() < 1e-12));
            // Reversing the order turns AUC into 1 − AUC.
            let r: Vec<f32> = s.iter().map(|v| -v).collect();
            let d = auc_roc(&r, &y);
            prop_assert!(a.is_nan() || (a + d - 1.0).abs() < 1e-12);
        }

        #[test]
        fn separated_scores_give_auc_one(
            neg in proptest::collection::vec(0.0f32..0.5, 1..30),
            pos in proptest::collection::vec(0.5f32..1.0, 1..30),
        ) {
            // Strictly separated: negatives < 0.5 <= positives, except equal at the edge.
            let neg: Vec<f32> = neg.iter().map(|v| v.min(0.49)).collect();
            let s: Vec<f32> = neg.iter().chain(&pos).copied().collect();
            let y: Vec<f32> = neg.iter().map(|_| 0.0).chain(pos.iter().map(|_| 1.0)).collect();
            prop_assert_eq!(auc_roc(&s, &y), 1.0);
            prop_assert_eq!(pr_auc(&s, &y), 1.0);
            let r: Vec<f32> = s.iter().map(|v| -v).collect();
            prop_assert_eq!(auc_roc(&r, &y), 0.0);
        }
    }
}
