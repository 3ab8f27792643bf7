//! Request and response types of `POST /v1/stats/analyze` (and of the
//! experiment results endpoint), with their JSON schema.
//!
//! Owns: the serde types only. Requests reject unknown fields; validation of
//! values lives in `analyze.rs`. Responses carry `null` (never NaN) for
//! statistics the data cannot support, with an entry in `warnings`.

use serde::{Deserialize, Serialize};

/// Which kind of metric the arms summarize.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Conversions out of `n` units (`conversions` per arm).
    Proportion,
    /// A real-valued metric (`mean`, `variance` per arm; optional CUPED inputs).
    Mean,
}

/// Multiple-testing correction used for `adjusted_p_value`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Correction {
    /// Holm step-down (controls the family-wise error rate). Default.
    #[default]
    Holm,
    /// Benjamini–Hochberg (controls the false discovery rate).
    Bh,
    /// No correction: `adjusted_p_value` = `p_value`.
    None,
}

/// Minimum detectable effect: `{"absolute": 0.005}` (metric units) or
/// `{"relative": 0.1}` (fraction of the control rate/mean).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mde {
    Absolute(f64),
    Relative(f64),
}

/// Body of `POST /v1/stats/analyze`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    pub metric: Metric,
    /// At least one arm; the first is control unless `control` names another.
    pub arms: Vec<ArmInput>,
    /// Name of the control arm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Configured traffic weights (positive, one per arm; need not sum to 1).
    /// Default: equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// Two-sided significance level in (0, 1). Default 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Target power in (0, 1) for the sample-size calculation. Default 0.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<f64>,
    /// Minimum detectable effect; without it `power` in the response is null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mde: Option<Mde>,
    /// Standard deviation τ of the mSPRT mixing distribution N(0, τ²), in the
    /// metric's absolute units. Default: tuned from `sequential_tuning_n`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// Units per arm at which the default τ² makes the confidence sequence
    /// narrowest. Default 5000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequential_tuning_n: Option<f64>,
    /// Correction reported as `adjusted_p_value`. Default `holm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<Correction>,
}

/// One arm's summary statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArmInput {
    pub name: String,
    /// Units (users) exposed.
    pub n: u64,
    /// `metric: "proportion"` only: converted units, ≤ n.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversions: Option<u64>,
    /// `metric: "mean"` only: sample mean.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// `metric: "mean"` only: sample variance (n − 1 denominator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance: Option<f64>,
    /// CUPED (mean only; all three or none, for every arm or none):
    /// mean of the pre-exposure covariate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_mean: Option<f64>,
    /// Sample variance of the covariate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_variance: Option<f64>,
    /// Sample covariance of the metric with the covariate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariance: Option<f64>,
}

/// Result of [`super::analyze`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnalyzeResponse {
    pub metric: Metric,
    pub alpha: f64,
    /// Name of the control arm.
    pub control: String,
    pub correction: Correction,
    /// Every arm in request order, control included.
    pub arms: Vec<ArmResult>,
    /// Pearson χ² of arm sizes against `weights`.
    pub srm_chi_square: Option<f64>,
    pub srm_p_value: Option<f64>,
    /// `srm_p_value < 0.001`.
    pub srm_warning: bool,
    /// Present when CUPED inputs were given.
    pub cuped: Option<CupedSummary>,
    pub sequential: SequentialSummary,
    /// Present when `mde` was given.
    pub power: Option<PowerSummary>,
    pub warnings: Vec<Warning>,
}

/// One arm: its own estimate and, for non-control arms, the comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArmResult {
    pub name: String,
    pub is_control: bool,
    pub n: u64,
    #[serde(flatten)]
    pub estimate: ArmEstimate,
    /// `null` for the control arm.
    pub vs_control: Option<Comparison>,
}

/// Per-arm estimate; its fields are inlined in [`ArmResult`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ArmEstimate {
    Proportion {
        conversions: u64,
        /// conversions / n.
        rate: Option<f64>,
        /// Wilson score interval.
        rate_ci: Option<[f64; 2]>,
    },
    Mean {
        mean: Option<f64>,
        variance: Option<f64>,
        /// Student-t interval x̄ ± t_{n−1} s/√n.
        mean_ci: Option<[f64; 2]>,
        /// CUPED only: ȳ − θ(x̄ − x̄_all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adjusted_mean: Option<f64>,
        /// CUPED only: Student-t interval of the adjusted mean.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        adjusted_mean_ci: Option<[f64; 2]>,
        /// CUPED only: 1 − s²_cv/s²_y in this arm.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variance_reduction: Option<f64>,
    },
}

/// A non-control arm against control (treatment − control).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Comparison {
    /// Absolute difference of rates/means (CUPED-adjusted when CUPED ran).
    pub difference: Option<f64>,
    /// z (proportion) or t (mean).
    pub statistic: Option<f64>,
    /// Welch–Satterthwaite degrees of freedom (mean only).
    pub df: Option<f64>,
    /// Two-sided fixed-horizon p-value.
    pub p_value: Option<f64>,
    /// 1 − α confidence interval of the absolute difference.
    pub ci: Option<[f64; 2]>,
    /// treatment/control − 1.
    pub relative_uplift: Option<f64>,
    /// Delta-method 1 − α interval of the relative uplift.
    pub relative_ci: Option<[f64; 2]>,
    /// Posterior P(treatment > control).
    pub chance_to_beat_control: Option<f64>,
    /// Posterior E[max(control − treatment, 0)], absolute units.
    pub expected_loss: Option<f64>,
    /// Always-valid mSPRT p-value at this look.
    pub sequential_p_value: Option<f64>,
    /// 1 − α confidence sequence of the difference at this look.
    pub sequential_ci: Option<[f64; 2]>,
    /// Mixing variance τ² used for this comparison.
    pub tau_squared: Option<f64>,
    /// `p_value` adjusted across arms by `correction` (Holm by default).
    pub adjusted_p_value: Option<f64>,
    /// `p_value` adjusted across arms by Benjamini–Hochberg.
    pub bh_adjusted_p_value: Option<f64>,
    /// Power of this comparison at its current sizes for the stated MDE.
    pub achieved_power: Option<f64>,
}

/// CUPED summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CupedSummary {
    /// Pooled within-arm θ = Σ(n−1)s_xy / Σ(n−1)s²_x.
    pub theta: Option<f64>,
    /// 1 − pooled adjusted variance / pooled raw variance.
    pub variance_reduction: Option<f64>,
}

/// How the mSPRT mixing variance was chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SequentialSummary {
    /// `request` (τ given) or `tuned` (from `tuning_n`).
    pub tau_source: String,
    /// τ from the request, if any.
    pub tau: Option<f64>,
    /// N* used for tuning (units per arm).
    pub tuning_n: f64,
    /// r*(α): tuned τ² = r* (σ²_c + σ²_t)/N*.
    pub tau_ratio: f64,
}

/// Sample size and power for the stated MDE (two-sided, unadjusted α,
/// equal allocation between control and one treatment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PowerSummary {
    pub mde: Mde,
    /// The MDE in absolute units.
    pub absolute_mde: Option<f64>,
    /// Control rate/mean the MDE is relative to.
    pub baseline: Option<f64>,
    /// Per-unit variance assumed (pooled within arms; CUPED-adjusted if used).
    pub variance: Option<f64>,
    pub alpha: f64,
    pub target_power: f64,
    /// Units per arm needed (rounded up).
    pub required_n_per_arm: Option<u64>,
    /// Smallest achieved power over the comparisons at their current sizes.
    pub achieved_power: Option<f64>,
}

/// A degenerate-data message: the named statistic is `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Warning {
    /// Stable code, e.g. `zero_variance`, `empty_arm`, `single_arm`,
    /// `sample_ratio_mismatch`, `zero_baseline`, `cuped_unavailable`.
    pub code: String,
    pub message: String,
    /// The arm concerned, if any.
    pub arm: Option<String>,
}
