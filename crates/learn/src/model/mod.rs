//! A supervised click model: from logged bandit feedback (the JSONL of `docs/ope.md`) to a
//! small MLP that predicts `P(click | context, action)`, evaluated on held-out rows and kept
//! in a versioned on-disk registry. See `docs/model.md`.
//!
//! * [`features`]: log rows → input vectors and binary labels ([`Dataset`], [`FeatureLayout`]).
//! * [`mlp`]: the network, its training loop (candle, CPU) and its inference ([`ClickModel`]).
//! * [`metrics`]: AUC, PR-AUC, log-loss, MAE, calibration (pure Rust).
//! * [`train`]: splits, k-fold cross-validation and the training report.
//! * [`registry`]: `models/<name>/v<N>.{safetensors,json}` + `CURRENT`, guarded promotion.
//! * [`cli`]: `trimtab train`.
//!
//! Training runs on the calling thread (the CLI, or a blocking task); candle may use its own
//! worker threads for matrix products. A trained [`ClickModel`] is immutable, `Send + Sync`,
//! and meant to be shared in an `Arc` by serving threads; its single-row
//! [`ClickModel::predict`] is plain Rust with no allocation besides two small buffers.

pub mod features;
pub mod metrics;
pub mod mlp;
pub mod registry;
pub mod train;

pub use features::{input, Dataset, FeatureLayout};
pub use metrics::{CalibrationBin, Metrics};
pub use mlp::{Architecture, ClickModel, EpochStats, TrainConfig};
pub use registry::{ModelCard, Promotion, Registry};
pub use train::{SplitConfig, TrainReport};

use super::ope::OpeError;

/// Errors of the click model: bad data, bad configuration, and the registry's failures.
/// Every variant has a stable [`ModelError::code`].
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A row is inconsistent with the others or with the expected layout. `row` is 1-based.
    #[error("row {row}: field `{field}`: {message}")]
    InvalidRow {
        /// 1-based row number (the line number when read from a file without blank lines).
        row: usize,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The log itself could not be read or validated.
    #[error(transparent)]
    Log(#[from] OpeError),
    /// Too few rows for the requested split.
    #[error("too few rows: {0}")]
    TooFewRows(String),
    /// A training or split parameter is out of range.
    #[error("invalid configuration `{field}`: {message}")]
    Config {
        /// Parameter name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such model, version, card or `CURRENT` pointer in the registry.
    #[error("model missing: {0}")]
    Missing(String),
    /// The weights file (or `CURRENT`) is unreadable: truncated, garbage, non-finite values.
    #[error("model corrupt: {0}")]
    Corrupt(String),
    /// The weights file's sha256 differs from the one its card records.
    #[error("model checksum mismatch: {0}")]
    Checksum(String),
    /// Shapes disagree: weights vs card, or data vs the model's input layout.
    #[error("model mismatch: {0}")]
    Mismatch(String),
    /// The model card is not valid JSON of the card format.
    #[error("model card invalid: {0}")]
    CardInvalid(String),
    /// A model name that is not `[A-Za-z0-9_-]{1,64}`.
    #[error("invalid model name {0:?}: use 1–64 of A–Z a–z 0–9 _ -")]
    InvalidName(String),
    /// Filesystem error of the registry.
    #[error("registry I/O on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// candle failed (an internal error: shapes are checked before candle sees them).
    #[error("tensor backend: {0}")]
    Backend(#[from] candle_core::Error),
}

impl ModelError {
    /// A stable code for user-facing messages.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::InvalidRow { .. } => "model_invalid_row",
            ModelError::Log(e) => e.code(),
            ModelError::TooFewRows(_) => "model_too_few_rows",
            ModelError::Config { .. } => "model_invalid_config",
            ModelError::Missing(_) => "model_missing",
            ModelError::Corrupt(_) => "model_corrupt",
            ModelError::Checksum(_) => "model_checksum",
            ModelError::Mismatch(_) => "model_mismatch",
            ModelError::CardInvalid(_) => "model_card_invalid",
            ModelError::InvalidName(_) => "model_invalid_name",
            ModelError::Io { .. } => "model_io",
            ModelError::Backend(_) => "model_backend",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
