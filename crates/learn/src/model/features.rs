//! Log rows → supervised examples. Owns the input layout of the click model
//! ([`FeatureLayout`]), the in-memory [`Dataset`] and the serving-time [`input`].
//!
//! Input vector = context `x` ++ features of the shown action: the row's `actions[action]`
//! when the row has per-action features, else the one-hot vector of `action` over K actions
//! (K = `--actions K`, else the largest logged action + 1). Label `y = 1` if `reward > 0`
//! else `0`: the reward is read as a binary click/engagement signal, so a dwell time or a
//! rating becomes "engaged at all". Pure, single-threaded.

use serde::{Deserialize, Serialize};

use super::ModelError;
use crate::ope::{LogRow, LogShape};

/// Shape of the model's input: `input_dim = ctx_dim + action_dim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureLayout {
    /// Context dimension d.
    pub ctx_dim: usize,
    /// Action feature dimension m (= K for one-hot actions).
    pub action_dim: usize,
    /// K when actions are one-hot (rows without `actions`); `None` when rows carry features.
    pub n_actions: Option<usize>,
}

impl FeatureLayout {
    /// `ctx_dim + action_dim`.
    pub fn input_dim(&self) -> usize {
        self.ctx_dim + self.action_dim
    }

    /// Infers and validates the layout of `rows` (see [`LogShape::infer`]); `n_actions` fixes K
    /// for rows without per-action features. Errors name the 1-based row.
    pub fn infer(rows: &[LogRow], n_actions: Option<usize>) -> Result<Self, ModelError> {
        let shape = LogShape::infer(rows, n_actions)?;
        let one_hot = rows.iter().any(|r| r.actions.is_none());
        Ok(FeatureLayout {
            ctx_dim: shape.ctx_dim,
            action_dim: shape.action_dim,
            n_actions: one_hot.then_some(shape.one_hot_actions),
        })
    }

    /// The action features of `row` under this layout, checked; `i` is the 0-based row index
    /// for the error message.
    fn action_features(&self, row: &LogRow, i: usize) -> Result<Vec<f32>, ModelError> {
        let bad = |field, message: String| ModelError::InvalidRow {
            row: i + 1,
            field,
            message,
        };
        if row.context.len() != self.ctx_dim {
            return Err(bad(
                "context",
                format!(
                    "has {} features, the model expects {}",
                    row.context.len(),
                    self.ctx_dim
                ),
            ));
        }
        if row.context.iter().any(|v| !v.is_finite()) {
            return Err(bad("context", "must be finite".into()));
        }
        if !row.reward.is_finite() {
            return Err(bad("reward", "must be finite".into()));
        }
        match &row.actions {
            Some(actions) => {
                let f = actions.get(row.action).ok_or_else(|| {
                    bad(
                        "action",
                        format!(
                            "{} is out of range for {} actions",
                            row.action,
                            actions.len()
                        ),
                    )
                })?;
                if f.len() != self.action_dim {
                    return Err(bad(
                        "actions",
                        format!(
                            "{} features per action, the model expects {}",
                            f.len(),
                            self.action_dim
                        ),
                    ));
                }
                if f.iter().any(|v| !v.is_finite()) {
                    return Err(bad("actions", "must be finite".into()));
                }
                Ok(f.clone())
            }
            None => {
                let k = self.n_actions.unwrap_or(self.action_dim);
                if k != self.action_dim || row.action >= k {
                    return Err(bad(
                        "action",
                        format!(
                            "{} is out of range for {k} one-hot actions (model action_dim {})",
                            row.action, self.action_dim
                        ),
                    ));
                }
                let mut f = vec![0.0; k];
                f[row.action] = 1.0;
                Ok(f)
            }
        }
    }
}

/// The input vector of one (context, action) pair, as at training: `ctx ++ action_features`.
pub fn input(ctx: &[f32], action_features: &[f32]) -> Vec<f32> {
    let mut v = Vec::with_capacity(ctx.len() + action_features.len());
    v.extend_from_slice(ctx);
    v.extend_from_slice(action_features);
    v
}

/// Examples in row-major order: `x` is `len() × dim()`, `y` is 0/1.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The input layout.
    pub layout: FeatureLayout,
    /// Inputs, row-major.
    pub x: Vec<f32>,
    /// Labels, 0.0 or 1.0.
    pub y: Vec<f32>,
}

impl Dataset {
    /// Builds the dataset of `rows`, inferring the layout (`n_actions` fixes K).
    pub fn from_rows(rows: &[LogRow], n_actions: Option<usize>) -> Result<Self, ModelError> {
        let layout = FeatureLayout::infer(rows, n_actions)?;
        Self::with_layout(rows, &layout)
    }

    /// Builds the dataset of `rows` under a given layout (e.g. a registered model's); every
    /// row is checked against it.
    pub fn with_layout(rows: &[LogRow], layout: &FeatureLayout) -> Result<Self, ModelError> {
        let dim = layout.input_dim();
        let mut x = Vec::with_capacity(rows.len() * dim);
        let mut y = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let a = layout.action_features(row, i)?;
            x.extend_from_slice(&row.context);
            x.extend_from_slice(&a);
            y.push(if row.reward > 0.0 { 1.0 } else { 0.0 });
        }
        Ok(Dataset {
            layout: layout.clone(),
            x,
            y,
        })
    }

    /// Builds a dataset from raw parts. `x.len()` must be `y.len() × layout.input_dim()`.
    pub fn from_parts(layout: FeatureLayout, x: Vec<f32>, y: Vec<f32>) -> Result<Self, ModelError> {
        if x.len() != y.len() * layout.input_dim() {
            return Err(ModelError::Mismatch(format!(
                "{} inputs for {} labels of dimension {}",
                x.len(),
                y.len(),
                layout.input_dim()
            )));
        }
        Ok(Dataset { layout, x, y })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// No examples.
    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Input dimension.
    pub fn dim(&self) -> usize {
        self.layout.input_dim()
    }

    /// Input of example `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = self.dim();
        &self.x[i * d..(i + 1) * d]
    }

    /// Number of positive labels.
    pub fn positives(&self) -> usize {
        self.y.iter().filter(|&&y| y > 0.5).count()
    }

    /// The contiguous examples `range`.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Dataset {
        let d = self.dim();
        Dataset {
            layout: self.layout.clone(),
            x: self.x[range.start * d..range.end * d].to_vec(),
            y: self.y[range].to_vec(),
        }
    }

    /// The examples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut x = Vec::with_capacity(indices.len() * self.dim());
        for &i in indices {
            x.extend_from_slice(self.row(i));
        }
        Dataset {
            layout: self.layout.clone(),
            x,
            y: indices.iter().map(|&i| self.y[i]).collect(),
        }
    }
}
