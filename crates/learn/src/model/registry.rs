//! The model registry: versioned click models in a directory (default `models/`).
//!
//! ```text
//! models/<name>/v<N>.safetensors   weights (layers.<i>.weight [out,in], layers.<i>.bias [out])
//! models/<name>/v<N>.json          model card (ModelCard), incl. the sha256 of the weights
//! models/<name>/CURRENT            the served version N, as decimal text
//! ```
//!
//! Every file is written to a temporary name in the same directory, fsynced, renamed over its
//! final name, and the directory fsynced, so a crash leaves either the old or the new state.
//! Readers ([`Registry::load_current`]) verify in this order and never panic: card parses
//! (`model_card_invalid`), weights parse as safetensors with finite values (`model_corrupt`),
//! tensor names and shapes match the card's architecture (`model_mismatch`), and the file's
//! sha256 equals the card's (`model_checksum`). A missing name, version, card, weights file
//! or `CURRENT` is `model_missing`.
//!
//! Promotion ([`Registry::propose`]) evaluates the candidate and the current model on the
//! same held-out rows. The candidate is **not worse**, and is promoted, when
//! `logloss_cand ≤ logloss_cur + 0.002` **and** `auc_cand ≥ auc_cur − 0.005` (the AUC condition
//! is skipped when either AUC is undefined, i.e. the held-out rows have one class only).
//! A refused candidate is **not written** (no version number is used up; the report says
//! why). Without a current model, or when the current model cannot be loaded (corrupt,
//! checksum, shape mismatch, bad card), the candidate is promoted and the reason says so. A
//! candidate whose feature layout differs from the current model's is an error
//! (`model_mismatch`): it cannot be compared, register it under a new name.
//!
//! Runs on the calling thread; one writer per model name at a time (the CLI or the learner).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::features::{Dataset, FeatureLayout};
use super::metrics::Metrics;
use super::mlp::{Architecture, ClickModel, TrainConfig};
use super::ModelError;

/// Allowed log-loss increase of a candidate over the current model.
pub const LOGLOSS_TOLERANCE: f64 = 0.002;
/// Allowed AUC decrease of a candidate under the current model.
pub const AUC_TOLERANCE: f64 = 0.005;

/// Where the training data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    /// The log file (or another description of the source).
    pub source: String,
    /// Rows used (train + validation + test).
    pub rows: usize,
    /// Rows with a positive label.
    pub positives: usize,
    /// Held-out test rows.
    pub test_rows: usize,
}

/// The model's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureInfo {
    /// Input layout.
    pub layout: FeatureLayout,
    /// Feature names, when known (context names, then action feature names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names: Option<Vec<String>>,
}

/// The `v<N>.json` model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Model name.
    pub name: String,
    /// Version N (set by [`Registry::propose`]).
    pub version: u32,
    /// Creation time, RFC 3339 UTC (set by [`Registry::propose`]).
    pub created: String,
    /// Training data.
    pub data: DataInfo,
    /// Input features.
    pub features: FeatureInfo,
    /// Network shape.
    pub architecture: Architecture,
    /// Training hyperparameters.
    pub train: TrainConfig,
    /// Metrics on the held-out rows given to [`Registry::propose`].
    pub metrics: Metrics,
    /// Reliability bins on the same rows (10 equal-width bins).
    #[serde(default)]
    pub calibration: Vec<super::metrics::CalibrationBin>,
    /// Hex sha256 of `v<N>.safetensors` (set by [`Registry::propose`]).
    pub sha256: String,
    /// Where the model was made when another cluster node made it (`<node> v<N>`; set by
    /// [`Registry::import`]); none when made here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl ModelCard {
    /// A card for a candidate; `name`, `version`, `created`, `metrics` and `sha256` are filled
    /// in by [`Registry::propose`].
    pub fn new(
        data: DataInfo,
        features: FeatureInfo,
        architecture: Architecture,
        train: TrainConfig,
    ) -> Self {
        ModelCard {
            name: String::new(),
            version: 0,
            created: String::new(),
            data,
            features,
            architecture,
            train,
            metrics: Metrics::from_values([f64::NAN; 5]),
            calibration: Vec::new(),
            sha256: String::new(),
            origin: None,
        }
    }
}

/// The outcome of [`Registry::propose`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    /// Whether the candidate became CURRENT.
    pub promoted: bool,
    /// The candidate's version when written (only when promoted).
    pub version: Option<u32>,
    /// The version that was CURRENT before.
    pub previous: Option<u32>,
    /// Why, in a sentence.
    pub reason: String,
    /// The candidate's metrics on the held-out rows.
    pub candidate: Metrics,
    /// The current model's metrics on the same rows (when it could be evaluated).
    pub current: Option<Metrics>,
}

/// A registry rooted at a directory.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

fn check_name(name: &str) -> Result<(), ModelError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ModelError::InvalidName(name.to_string()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    fs::read(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => ModelError::Missing(format!("{} does not exist", path.display())),
        _ => ModelError::io(path, e),
    })
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename,
/// fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    trimtab_util::fsutil::write_atomic(path, bytes)
        .and_then(|()| trimtab_util::fsutil::sync_dir(path))
        .map_err(|e| ModelError::io(path, e))
}

/// Hex sha256.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The current time as RFC 3339 UTC, second precision (`2026-01-31T12:00:00Z`).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Unix seconds as RFC 3339 UTC (civil-from-days, H. Hinnant's algorithm).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether `cand` is not worse than `cur` (see the module docs).
pub fn not_worse(cand: &Metrics, cur: &Metrics) -> bool {
    let logloss_ok = cand.logloss <= cur.logloss + LOGLOSS_TOLERANCE;
    let auc_ok = cand.auc.is_nan() || cur.auc.is_nan() || cand.auc >= cur.auc - AUC_TOLERANCE;
    logloss_ok && auc_ok
}

impl Registry {
    /// A registry at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Registry { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> Result<PathBuf, ModelError> {
        check_name(name)?;
        Ok(self.root.join(name))
    }

    /// Path of `v<version>.safetensors`.
    pub fn weights_path(&self, name: &str, version: u32) -> Result<PathBuf, ModelError> {
        Ok(self.dir(name)?.join(format!("v{version}.safetensors")))
    }

    /// Path of `v<version>.json`.
    pub fn card_path(&self, name: &str, version: u32) -> Result<PathBuf, ModelError> {
        Ok(self.dir(name)?.join(format!("v{version}.json")))
    }

    /// The version in `CURRENT`, `None` when there is none.
    pub fn current_version(&self, name: &str) -> Result<Option<u32>, ModelError> {
        let path = self.dir(name)?.join("CURRENT");
        match read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let v = text.trim().trim_start_matches('v');
                v.parse::<u32>().map(Some).map_err(|_| {
                    ModelError::Corrupt(format!(
                        "{} holds {:?}, not a version",
                        path.display(),
                        text.trim()
                    ))
                })
            }
            Err(ModelError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Versions with a card on disk, ascending.
    pub fn versions(&self, name: &str) -> Result<Vec<u32>, ModelError> {
        let dir = self.dir(name)?;
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ModelError::io(&dir, e)),
        };
        let mut v: Vec<u32> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_prefix('v')?.strip_suffix(".json")?.parse().ok()
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Loads and verifies version `version` of `name`.
    pub fn load(&self, name: &str, version: u32) -> Result<(ClickModel, ModelCard), ModelError> {
        let card_path = self.card_path(name, version)?;
        let card: ModelCard = serde_json::from_slice(&read(&card_path)?)
            .map_err(|e| ModelError::CardInvalid(format!("{}: {e}", card_path.display())))?;
        if card.architecture.input != card.features.layout.input_dim() {
            return Err(ModelError::CardInvalid(format!(
                "{}: architecture input {} ≠ feature layout dimension {}",
                card_path.display(),
                card.architecture.input,
                card.features.layout.input_dim()
            )));
        }
        let weights_path = self.weights_path(name, version)?;
        let bytes = read(&weights_path)?;
        let model = ClickModel::from_safetensors(&bytes, card.architecture.clone()).map_err(
            |e| match e {
                ModelError::Corrupt(m) => {
                    ModelError::Corrupt(format!("{}: {m}", weights_path.display()))
                }
                ModelError::Mismatch(m) => ModelError::Mismatch(format!(
                    "{} does not fit its card {}: {m}",
                    weights_path.display(),
                    card_path.display()
                )),
                other => other,
            },
        )?;
        let sha = sha256_hex(&bytes);
        if !sha.eq_ignore_ascii_case(&card.sha256) {
            return Err(ModelError::Checksum(format!(
                "{} has sha256 {sha}, its card records {}",
                weights_path.display(),
                card.sha256
            )));
        }
        Ok((model, card))
    }

    /// Adds a model made elsewhere (another cluster node) as this registry's next version and
    /// makes it `CURRENT` — only if it verifies as [`Registry::load`] does (a model that does
    /// not is not kept, and `CURRENT` stays). Its card keeps its metrics and `created`, with
    /// the version renumbered and `origin` set. Returns the version.
    pub fn import(
        &self,
        name: &str,
        weights: &[u8],
        mut card: ModelCard,
        origin: &str,
    ) -> Result<u32, ModelError> {
        let dir = self.dir(name)?;
        let sha = sha256_hex(weights);
        if !sha.eq_ignore_ascii_case(&card.sha256) {
            return Err(ModelError::Checksum(format!(
                "the shared weights have sha256 {sha}, their card records {}",
                card.sha256
            )));
        }
        fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        let previous = self.current_version(name).unwrap_or(None);
        let version = self.next_version(name, previous)?;
        card.name = name.to_string();
        card.version = version;
        card.origin = Some(origin.to_string());
        let json = serde_json::to_vec_pretty(&card)
            .map_err(|e| ModelError::CardInvalid(format!("serialising the card: {e}")))?;
        let (weights_path, card_path) = (
            self.weights_path(name, version)?,
            self.card_path(name, version)?,
        );
        write_atomic(&weights_path, weights)?;
        write_atomic(&card_path, &json)?;
        if let Err(e) = self.load(name, version) {
            let _ = fs::remove_file(&card_path);
            let _ = fs::remove_file(&weights_path);
            return Err(e);
        }
        write_atomic(&dir.join("CURRENT"), format!("{version}\n").as_bytes())?;
        Ok(version)
    }

    /// The number a new version of `name` gets: past every version on disk and `previous`
    /// (the `CURRENT` one).
    fn next_version(&self, name: &str, previous: Option<u32>) -> Result<u32, ModelError> {
        Ok(self
            .versions(name)?
            .last()
            .copied()
            .unwrap_or(0)
            .max(previous.unwrap_or(0))
            + 1)
    }

    /// Loads the version `CURRENT` points to.
    pub fn load_current(&self, name: &str) -> Result<(ClickModel, ModelCard), ModelError> {
        let v = self.current_version(name)?.ok_or_else(|| {
            ModelError::Missing(format!(
                "model {name:?} has no CURRENT version in {}",
                self.root.display()
            ))
        })?;
        self.load(name, v)
    }

    /// Evaluates `model` and the current model on `holdout` and promotes the candidate when it
    /// is not worse (see the module docs). On promotion the weights, the card (with `name`,
    /// `version`, `created`, `metrics` on `holdout`, `sha256` filled in) and `CURRENT` are
    /// written in that order.
    pub fn propose(
        &self,
        name: &str,
        model: &ClickModel,
        mut card: ModelCard,
        holdout: &Dataset,
    ) -> Result<Promotion, ModelError> {
        let dir = self.dir(name)?;
        if holdout.is_empty() {
            return Err(ModelError::TooFewRows(
                "no held-out rows to compare on".into(),
            ));
        }
        if card.features.layout.input_dim() != model.input_dim()
            || card.architecture != *model.architecture()
        {
            return Err(ModelError::Mismatch(
                "the card's layout/architecture does not describe the candidate".into(),
            ));
        }
        let cand_probs = model.predict_dataset(holdout)?;
        let candidate = Metrics::compute(&cand_probs, &holdout.y);
        let calibration = super::metrics::calibration(&cand_probs, &holdout.y, 10);
        let previous = self.current_version(name).or_else(|e| match e {
            ModelError::Corrupt(_) => Ok(None),
            e => Err(e),
        })?;

        let (current, reason) = match self.load_current(name) {
            Ok((cur, cur_card)) => {
                if cur_card.features.layout != card.features.layout {
                    return Err(ModelError::Mismatch(format!(
                        "the candidate's feature layout {:?} differs from the current v{}'s {:?}; \
                         register it under a new name",
                        card.features.layout, cur_card.version, cur_card.features.layout
                    )));
                }
                let cur = Metrics::compute(&cur.predict_dataset(holdout)?, &holdout.y);
                let verdict = format!(
                    "candidate logloss {:.4} vs current {:.4} (tolerance +{LOGLOSS_TOLERANCE}), \
                     AUC {:.4} vs {:.4} (tolerance −{AUC_TOLERANCE}) on {} held-out rows",
                    candidate.logloss,
                    cur.logloss,
                    candidate.auc,
                    cur.auc,
                    holdout.len()
                );
                if !not_worse(&candidate, &cur) {
                    return Ok(Promotion {
                        promoted: false,
                        version: None,
                        previous,
                        reason: format!(
                            "refused: {verdict}; CURRENT stays v{}; the candidate was not saved",
                            cur_card.version
                        ),
                        candidate,
                        current: Some(cur),
                    });
                }
                (Some(cur), format!("promoted: {verdict}"))
            }
            Err(ModelError::Missing(_)) if previous.is_none() => {
                (None, "promoted: no current model".to_string())
            }
            Err(e @ ModelError::Io { .. }) | Err(e @ ModelError::InvalidName(_)) => return Err(e),
            Err(e) => (
                None,
                format!(
                    "promoted: the current model is unusable ({}: {e})",
                    e.code()
                ),
            ),
        };

        fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        let version = self.next_version(name, previous)?;
        let weights_path = self.weights_path(name, version)?;
        // Serialise through a private temp file, then write the bytes atomically.
        let staging = dir.join(format!(".staging{}.safetensors", std::process::id()));
        model.save(&staging)?;
        let bytes = fs::read(&staging).map_err(|e| ModelError::io(&staging, e));
        let _ = fs::remove_file(&staging);
        let bytes = bytes?;
        write_atomic(&weights_path, &bytes)?;

        card.name = name.to_string();
        card.version = version;
        card.created = rfc3339_now();
        card.metrics = candidate;
        card.calibration = calibration;
        card.sha256 = sha256_hex(&bytes);
        let json = serde_json::to_vec_pretty(&card)
            .map_err(|e| ModelError::CardInvalid(format!("serialising the card: {e}")))?;
        write_atomic(&self.card_path(name, version)?, &json)?;
        write_atomic(&dir.join("CURRENT"), format!("{version}\n").as_bytes())?;
        Ok(Promotion {
            promoted: true,
            version: Some(version),
            previous,
            reason,
            candidate,
            current,
        })
    }
}
