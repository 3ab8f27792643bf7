//! trimtab-stats: the statistics engine for experiments, pure functions from summary statistics
//! to decisions. No I/O, no clocks, no global state; deterministic (no Monte
//! Carlo anywhere in the product code).
//!
//! Owns: sufficient statistics that add ([`ProportionStat`], [`MeanStat`],
//! [`CovariateStat`]), the JSON schema of `POST /v1/stats/analyze`
//! ([`AnalyzeRequest`] / [`AnalyzeResponse`]) and [`analyze`], which the
//! HTTP handlers of that endpoint and of `GET /v1/experiments/{id}/results`
//! call. Each statistic lives in its own submodule and is public:
//!
//! | module | what |
//! |---|---|
//! | [`frequentist`] | two-proportion z-test, Welch t-test, Wilson/t intervals, delta-method relative uplift |
//! | [`bayes`] | chance to beat control / expected loss (Beta-Binomial quadrature; Normal closed form) |
//! | [`sequential`] | mixture SPRT always-valid p-value and confidence sequence, τ² tuning |
//! | [`cuped`] | CUPED θ, adjusted means and variance reduction |
//! | [`srm`] | sample-ratio-mismatch χ² test |
//! | [`multiple`] | Holm and Benjamini–Hochberg adjustments |
//! | [`power`] | power and sample size for a minimum detectable effect |
//! | [`special`] | normal/t/χ²/incomplete-beta functions and quadrature |
//!
//! Threading: CPU-bound and cheap (microseconds per arm for means,
//! ≲ 1 ms per arm for the Beta-Binomial quadrature); call from a blocking
//! thread when analyzing many experiments at once. Must not touch storage,
//! the network or the runtime. Formulas and references: `docs/statistics.md`.
//!
//! Conventions (gbstats): degenerate data never fails: the affected fields
//! are `None`/`null` and a `warnings` entry says why; only malformed requests
//! return [`StatsError`] (with a stable `code` and the field `path`).

mod analyze;
pub mod bayes;
pub mod cuped;
mod error;
pub mod frequentist;
pub mod multiple;
pub mod power;
mod schema;
pub mod sequential;
pub mod special;
pub mod srm;
mod suffstats;

pub use analyze::{analyze, MAX_ARMS, MAX_NAME_LEN};
pub use error::{ErrorCode, Note, StatsError};
pub use multiple::{benjamini_hochberg, holm};
pub use schema::{
    AnalyzeRequest, AnalyzeResponse, ArmEstimate, ArmInput, ArmResult, Comparison, Correction,
    CupedSummary, Mde, Metric, PowerSummary, SequentialSummary, Warning,
};
pub use suffstats::{CovariateStat, MeanStat, ProportionStat};

/// Parses a request body, mapping serde errors to [`StatsError`] with code
/// `invalid_json` (unknown fields are rejected).
///
/// # Errors
/// `invalid_json` when the body does not match the schema.
pub fn parse_request(body: &[u8]) -> Result<AnalyzeRequest, StatsError> {
    Ok(serde_json::from_slice(body)?)
}

#[cfg(test)]
mod tests;
