//! Training runs: the split of a log into train / validation / test, the run behind
//! `trimtab train` ([`train`]), k-fold cross-validation ([`cross_validate`]) and the report
//! ([`TrainReport`], serialisable to the JSON `trimtab train --json` prints).
//!
//! Splits follow file order (a log is a time series; a later slice is the honest stand-in for
//! the future): the TEST set is the last `test_fraction` of the rows, `⌊n·f⌋` of them; the
//! VALIDATION set (early stopping only) is the last `validation_fraction` of the remaining
//! rows, `⌊(n − n_test)·v⌋`; the rest trains. Runs on the calling thread.

use std::ops::Range;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::features::Dataset;
use super::metrics::{calibration, CalibrationBin, Metrics, CALIBRATION_BINS};
use super::mlp::{fit, ClickModel, EpochStats, TrainConfig};
use super::registry::Promotion;
use super::ModelError;

/// Fractions of the split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Share of all rows held out for testing, taken from the end. Default 0.15.
    pub test_fraction: f64,
    /// Share of the remaining rows used for early stopping, taken from their end. Default 0.15.
    pub validation_fraction: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            test_fraction: 0.15,
            validation_fraction: 0.15,
        }
    }
}

/// Row ranges of a split (contiguous, in file order: train, then validation, then test).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Training rows.
    pub train: Range<usize>,
    /// Validation rows (early stopping).
    pub validation: Range<usize>,
    /// Held-out test rows.
    pub test: Range<usize>,
}

fn check_fraction(field: &'static str, f: f64) -> Result<(), ModelError> {
    if (0.0..1.0).contains(&f) {
        Ok(())
    } else {
        Err(ModelError::Config {
            field,
            message: format!("{f} is not in [0, 1)"),
        })
    }
}

/// Splits `n` rows; every part must be non-empty when its fraction is positive.
pub fn split(n: usize, cfg: &SplitConfig) -> Result<Split, ModelError> {
    check_fraction("test_fraction", cfg.test_fraction)?;
    check_fraction("validation_fraction", cfg.validation_fraction)?;
    let n_test = (n as f64 * cfg.test_fraction).floor() as usize;
    let rest = n - n_test;
    let n_val = (rest as f64 * cfg.validation_fraction).floor() as usize;
    let n_train = rest - n_val;
    if n_train == 0
        || (cfg.test_fraction > 0.0 && n_test == 0)
        || (cfg.validation_fraction > 0.0 && n_val == 0)
    {
        return Err(ModelError::TooFewRows(format!(
            "{n} rows give {n_train} train / {n_val} validation / {n_test} test rows; each must be ≥ 1"
        )));
    }
    Ok(Split {
        train: 0..n_train,
        validation: n_train..rest,
        test: rest..n,
    })
}

/// Row counts of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowCounts {
    /// Training rows.
    pub train: usize,
    /// Validation rows.
    pub validation: usize,
    /// Test rows.
    pub test: usize,
}

/// Cross-validation summary: per-fold metrics, their mean and sample standard deviation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvReport {
    /// Number of folds.
    pub k: usize,
    /// Metrics on each fold's held-out rows.
    pub folds: Vec<Metrics>,
    /// Mean across folds.
    pub mean: Metrics,
    /// Sample standard deviation across folds (n − 1).
    pub sd: Metrics,
}

/// What `trimtab train --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Metrics of the kept model on the test rows.
    pub metrics: Metrics,
    /// Reliability bins on the test rows.
    pub calibration: Vec<CalibrationBin>,
    /// Row counts.
    pub rows: RowCounts,
    /// Epochs run.
    pub epochs: usize,
    /// Epoch of the kept weights.
    pub best_epoch: usize,
    /// Wall time of the final model's training (excluding cross-validation).
    pub train_seconds: f64,
    /// Cross-validation, when asked for.
    pub cv: Option<CvReport>,
    /// The registry's decision, when saving.
    pub promotion: Option<Promotion>,
}

impl std::fmt::Display for TrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rows: {} train, {} validation, {} test; {} epochs (best {}), {:.2} s",
            self.rows.train,
            self.rows.validation,
            self.rows.test,
            self.epochs,
            self.best_epoch,
            self.train_seconds
        )?;
        writeln!(f, "held-out test metrics")?;
        for (name, v) in self.metrics.named() {
            match &self.cv {
                Some(cv) => {
                    let m = cv.mean.named();
                    let s = cv.sd.named();
                    let i = self.metrics.named().iter().position(|x| x.0 == name);
                    let (m, s) = i.map_or((f64::NAN, f64::NAN), |i| (m[i].1, s[i].1));
                    writeln!(f, "  {name:<8} {v:>8.4}   cv {m:.4} ± {s:.4}")?
                }
                None => writeln!(f, "  {name:<8} {v:>8.4}")?,
            }
        }
        if let Some(cv) = &self.cv {
            writeln!(f, "({}-fold cross-validation on the non-test rows)", cv.k)?;
        }
        writeln!(f, "calibration (test rows)")?;
        writeln!(f, "  bin          count  predicted  observed")?;
        for b in &self.calibration {
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
            writeln!(
                f,
                "  [{:.1}, {:.1})  {:>7}  {:>9}  {:>8}",
                b.lo,
                b.hi,
                b.count,
                fmt(b.mean_predicted),
                fmt(b.observed_rate)
            )?;
        }
        if let Some(p) = &self.promotion {
            writeln!(f, "registry: {}", p.reason)?;
        }
        Ok(())
    }
}

/// A trained model with its report (`cv` and `promotion` empty; see [`cross_validate`]).
#[derive(Debug, Clone)]
pub struct Trained {
    /// The model with the best validation loss.
    pub model: ClickModel,
    /// Its report.
    pub report: TrainReport,
    /// The held-out test rows (for the registry's comparison).
    pub test: Dataset,
}

/// Splits `data`, trains on the training rows with early stopping on the validation rows,
/// and evaluates on the test rows. `on_epoch` sees every epoch.
pub fn train(
    data: &Dataset,
    cfg: &TrainConfig,
    split_cfg: &SplitConfig,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<Trained, ModelError> {
    let s = split(data.len(), split_cfg)?;
    let (tr, va, te) = (
        data.slice(s.train.clone()),
        data.slice(s.validation.clone()),
        data.slice(s.test.clone()),
    );
    let start = Instant::now();
    let f = fit(&tr, &va, cfg, on_epoch)?;
    let train_seconds = start.elapsed().as_secs_f64();
    let p = f.model.predict_dataset(&te)?;
    let report = TrainReport {
        metrics: Metrics::compute(&p, &te.y),
        calibration: calibration(&p, &te.y, CALIBRATION_BINS),
        rows: RowCounts {
            train: tr.len(),
            validation: va.len(),
            test: te.len(),
        },
        epochs: f.epochs,
        best_epoch: f.best_epoch,
        train_seconds,
        cv: None,
        promotion: None,
    };
    Ok(Trained {
        model: f.model,
        report,
        test: te,
    })
}

/// K-fold cross-validation on `data` (pass the NON-test rows): contiguous folds in row
/// order; for fold i the model trains on the other rows (in order), early-stopping on their
/// last `validation_fraction`, and is evaluated on fold i. `on_epoch` sees every epoch of
/// every fold.
pub fn cross_validate(
    data: &Dataset,
    k: usize,
    cfg: &TrainConfig,
    validation_fraction: f64,
    on_epoch: &mut dyn FnMut(&EpochStats),
) -> Result<CvReport, ModelError> {
    if k < 2 {
        return Err(ModelError::Config {
            field: "kfold",
            message: format!("{k} folds; at least 2 are needed"),
        });
    }
    let n = data.len();
    if n < 2 * k {
        return Err(ModelError::TooFewRows(format!(
            "{n} rows for {k} folds (at least {} needed)",
            2 * k
        )));
    }
    let inner = SplitConfig {
        test_fraction: 0.0,
        validation_fraction,
    };
    let mut folds = Vec::with_capacity(k);
    for i in 0..k {
        let (lo, hi) = (i * n / k, (i + 1) * n / k);
        let rest: Vec<usize> = (0..lo).chain(hi..n).collect();
        let others = data.select(&rest);
        let held = data.slice(lo..hi);
        let s = split(others.len(), &inner)?;
        let f = fit(
            &others.slice(s.train),
            &others.slice(s.validation),
            cfg,
            on_epoch,
        )?;
        let p = f.model.predict_dataset(&held)?;
        folds.push(Metrics::compute(&p, &held.y));
    }
    let (mean, sd) = mean_sd(&folds);
    Ok(CvReport { k, folds, mean, sd })
}

/// Per-metric mean and sample standard deviation.
fn mean_sd(folds: &[Metrics]) -> (Metrics, Metrics) {
    let k = folds.len() as f64;
    let mut mean = [0.0; 5];
    let mut sd = [0.0; 5];
    for m in folds {
        for (j, (_, v)) in m.named().iter().enumerate() {
            mean[j] += v / k;
        }
    }
    for m in folds {
        for (j, (_, v)) in m.named().iter().enumerate() {
            sd[j] += (v - mean[j]).powi(2) / (k - 1.0).max(1.0);
        }
    }
    (
        Metrics::from_values(mean),
        Metrics::from_values(sd.map(f64::sqrt)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_sizes_follow_file_order() {
        let s = split(1000, &SplitConfig::default()).unwrap();
        // 150 test (last), then ⌊850·0.15⌋ = 127 validation, 723 train.
        assert_eq!(s.test, 850..1000);
        assert_eq!(s.validation, 723..850);
        assert_eq!(s.train, 0..723);
        let s = split(
            20,
            &SplitConfig {
                test_fraction: 0.5,
                validation_fraction: 0.0,
            },
        )
        .unwrap();
        assert_eq!((s.train, s.validation, s.test), (0..10, 10..10, 10..20));
        assert!(matches!(
            split(3, &SplitConfig::default()),
            Err(ModelError::TooFewRows(_))
        ));
        assert!(matches!(
            split(
                100,
                &SplitConfig {
                    test_fraction: 1.0,
                    validation_fraction: 0.1
                }
            ),
            Err(ModelError::Config { .. })
        ));
    }

    #[test]
    fn mean_and_sd_across_folds() {
        let a = Metrics::from_values([0.6, 0.1, 0.5, 0.4, 0.02]);
        let b = Metrics::from_values([0.8, 0.3, 0.7, 0.2, 0.04]);
        let (m, s) = mean_sd(&[a, b]);
        assert!((m.auc - 0.7).abs() < 1e-12);
        // sd of {0.6, 0.8} with n − 1: √(2·0.01) = 0.1414…
        assert!((s.auc - 0.02f64.sqrt()).abs() < 1e-12);
    }
}
