//! Behavioural micro-segments: cluster users by how they behave, name the clusters, keep their
//! ids stable across runs, and assign new users online.
//!
//! What it owns: feature vectors from [`UserState`](crate::features::UserState)
//! ([`features`]), robust scaling, three clustering algorithms ([`kmeans`], [`dbscan`] over a
//! [`kdtree`], diagonal [`gmm`] with BIC), stable ids ([`stable`]), profiles and names
//! ([`profile`]), the 2-D [`pca`] projection, file input ([`io`]) and a seeded generator of
//! synthetic users for tests and benchmarks ([`synth`]).
//!
//! Threads: fitting ([`Segmenter::fit`], [`segment_file`]) is CPU-heavy and parallel with rayon;
//! call it from the background segmenter thread inside its own small rayon pool
//! (`ThreadPool::install`) so it never starves the shard workers. The result, a [`Segmenter`],
//! is immutable, `Send + Sync` and cheap to query: publish it as a snapshot (`arc-swap`) and let
//! shard threads call [`Segmenter::assign_state`] per user. No I/O except [`segment_file`]
//! reading its input; no clocks (callers pass `now_ms`); no locks.

pub mod dbscan;
pub mod features;
pub mod gmm;
pub mod io;
pub mod kdtree;
pub mod kmeans;
pub mod metrics;
pub mod pca;
pub mod profile;
pub mod service;
pub mod stable;
pub mod synth;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use features::{feature_vector, RobustScaler, DIM, FEATURE_NAMES, FEATURE_UNITS};
pub use profile::{FeatureStat, SegmentInfo};
pub use stable::IdRegistry;

use crate::features::UserState;

/// `(k, BIC)` for each k tried by a BIC search.
pub type BicCurve = Vec<(usize, f64)>;

/// Rows per parallel work item in the clustering passes.
pub(crate) const CHUNK: usize = 1024;

/// Errors of the segments engine. [`SegError::code`] gives a stable code for the API/CLI.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("the input has no data rows")]
    EmptyInput,
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    #[error("a point has {got} features, the model expects {expected}")]
    Dimension { expected: usize, got: usize },
}

impl SegError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            SegError::Io { .. } => "segment_input_unreadable",
            SegError::Parse { .. } => "segment_input_invalid",
            SegError::EmptyInput => "segment_input_empty",
            SegError::InvalidParam(_) => "segment_param_invalid",
            SegError::Dimension { .. } => "segment_dimension_mismatch",
        }
    }
}

/// Dense row-major matrix of `f32` (n rows × d columns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    pub n: usize,
    pub d: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// A matrix over `data` (length must be `n * d`; every value finite).
    pub fn new(n: usize, d: usize, data: Vec<f32>) -> Result<Matrix, SegError> {
        if data.len() != n * d {
            return Err(SegError::InvalidParam(format!(
                "matrix data has {} values, expected {n}×{d}",
                data.len()
            )));
        }
        if data.iter().any(|v| !v.is_finite()) {
            return Err(SegError::InvalidParam(
                "matrix has a non-finite value".into(),
            ));
        }
        Ok(Matrix { n, d, data })
    }

    /// Matrix of fixed-size rows (e.g. [`feature_vector`]s).
    pub fn from_rows<const D: usize>(rows: &[[f32; D]]) -> Matrix {
        Matrix {
            n: rows.len(),
            d: D,
            data: rows.iter().flatten().copied().collect(),
        }
    }

    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }
}

/// Mean of the rows of each cluster `0..k` (rows labelled −1 ignored).
pub fn centroids(x: &Matrix, labels: &[i32], k: usize) -> Matrix {
    let mut sums = vec![0f64; k * x.d];
    let mut counts = vec![0usize; k];
    for (i, &l) in labels.iter().enumerate() {
        if l < 0 || l as usize >= k {
            continue;
        }
        let l = l as usize;
        counts[l] += 1;
        for (s, &v) in sums[l * x.d..(l + 1) * x.d].iter_mut().zip(x.row(i)) {
            *s += f64::from(v);
        }
    }
    let data = sums
        .chunks(x.d.max(1))
        .zip(&counts)
        .flat_map(|(s, &c)| s.iter().map(move |v| (v / c.max(1) as f64) as f32))
        .collect();
    Matrix { n: k, d: x.d, data }
}

/// The clustering algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    Kmeans,
    Dbscan,
    Gmm,
}

impl FromStr for Algo {
    type Err = SegError;
    fn from_str(s: &str) -> Result<Algo, SegError> {
        match s.to_ascii_lowercase().as_str() {
            "kmeans" | "k-means" => Ok(Algo::Kmeans),
            "dbscan" => Ok(Algo::Dbscan),
            "gmm" => Ok(Algo::Gmm),
            other => Err(SegError::InvalidParam(format!(
                "unknown algorithm {other:?} (kmeans, dbscan or gmm)"
            ))),
        }
    }
}

/// Parameters of a segmentation run (the CLI flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Params {
    /// Number of clusters for k-means / GMM; `None` chooses it by BIC over `k_min..=k_max`.
    pub k: Option<usize>,
    pub k_min: usize,
    pub k_max: usize,
    /// DBSCAN radius, in robust-scaled units (1 = one IQR along one feature).
    pub eps: f32,
    /// DBSCAN: neighbours within `eps` (itself included) that make a core point.
    pub min_points: usize,
    /// Seeded restarts of k-means and of GMM (the best inertia / likelihood wins).
    pub n_init: usize,
    pub max_iter: usize,
    pub seed: u64,
    /// Stable ids: largest scaled centroid distance (robust units) at which a new cluster
    /// inherits an old id; 2.0 tolerates drift of behaviour between runs.
    pub match_threshold: f32,
    /// Include the 2-D PCA coordinates of every row in the output.
    pub projection: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            k: None,
            k_min: 2,
            k_max: 8,
            eps: 1.0,
            min_points: 10,
            n_init: 3,
            max_iter: 300,
            seed: 42,
            match_threshold: 2.0,
            projection: false,
        }
    }
}

/// A fitted clustering model, in the scaled space.
#[derive(Debug, Clone)]
pub enum Model {
    Kmeans(kmeans::KMeansModel),
    Dbscan(dbscan::DbscanModel),
    Gmm(gmm::GmmModel),
}

impl Model {
    /// Cluster index of one scaled point (−1: DBSCAN noise): nearest centroid, nearest core
    /// point within eps, or GMM posterior argmax.
    pub fn predict(&self, scaled: &[f32]) -> i32 {
        match self {
            Model::Kmeans(m) => m.predict(scaled) as i32,
            Model::Dbscan(m) => m.predict(scaled),
            Model::Gmm(m) => m.predict(scaled) as i32,
        }
    }

    /// Number of clusters.
    pub fn k(&self) -> usize {
        match self {
            Model::Kmeans(m) => m.centroids.n,
            Model::Dbscan(m) => m.n_clusters,
            Model::Gmm(m) => m.k(),
        }
    }
}

/// Runs one algorithm on scaled rows. Returns the model, cluster labels (−1 = noise) and the
/// BIC curve when k was searched.
pub fn cluster(
    x: &Matrix,
    algo: Algo,
    p: &Params,
) -> Result<(Model, Vec<i32>, Option<BicCurve>), SegError> {
    if x.n == 0 {
        return Err(SegError::EmptyInput);
    }
    if p.k.is_none() && (p.k_min == 0 || p.k_min > p.k_max) {
        return Err(SegError::InvalidParam(format!(
            "k range {}..={} is empty",
            p.k_min, p.k_max
        )));
    }
    match algo {
        Algo::Kmeans => {
            let kp = kmeans::KMeansParams {
                k: p.k.unwrap_or(p.k_min),
                n_init: p.n_init,
                max_iter: p.max_iter,
                seed: p.seed,
                ..Default::default()
            };
            match p.k {
                Some(_) => {
                    let (m, l) = kmeans::fit(x, &kp)?;
                    Ok((Model::Kmeans(m), l, None))
                }
                None => {
                    let (m, l, c) = kmeans::fit_bic(x, p.k_min..=p.k_max, &kp)?;
                    Ok((Model::Kmeans(m), l, Some(c)))
                }
            }
        }
        Algo::Gmm => {
            let gp = gmm::GmmParams {
                k: p.k.unwrap_or(p.k_min),
                max_iter: p.max_iter,
                n_init: p.n_init,
                seed: p.seed,
                ..Default::default()
            };
            match p.k {
                Some(_) => {
                    let (m, l) = gmm::fit(x, &gp)?;
                    Ok((Model::Gmm(m), l, None))
                }
                None => {
                    let (m, l, c) = gmm::fit_bic(x, p.k_min..=p.k_max, &gp)?;
                    Ok((Model::Gmm(m), l, Some(c)))
                }
            }
        }
        Algo::Dbscan => {
            let dp = dbscan::DbscanParams {
                eps: p.eps,
                min_points: p.min_points,
            };
            let (m, l) = dbscan::fit(x, &dp)?;
            Ok((Model::Dbscan(m), l, None))
        }
    }
}

/// A fitted segmentation: scaler, model, stable ids, named segments and the projection.
/// Immutable and `Send + Sync`; publish it as a snapshot for online assignment.
#[derive(Debug, Clone)]
pub struct Segmenter {
    pub algo: Algo,
    pub feature_names: Vec<String>,
    pub scaler: RobustScaler,
    pub model: Model,
    /// Stable segment id of each model cluster index.
    pub cluster_ids: Vec<u32>,
    /// Segments, largest first.
    pub segments: Vec<SegmentInfo>,
    /// The ids handed out so far; pass it to the next [`Segmenter::fit`] to keep ids stable.
    pub registry: IdRegistry,
    pub pca: pca::Pca,
    /// `(k, BIC)` for each k tried when k was chosen by BIC.
    pub bic_curve: Option<Vec<(usize, f64)>>,
}

impl Segmenter {
    /// Fits on raw feature rows (`names` one per column). `previous` is the registry of the
    /// last run (ids of matching clusters are kept) or `None` for a first run. Returns the
    /// segmenter and each row's segment id (−1 for noise).
    pub fn fit(
        raw: &Matrix,
        names: &[String],
        algo: Algo,
        p: &Params,
        previous: Option<&IdRegistry>,
    ) -> Result<(Segmenter, Vec<i32>), SegError> {
        if names.len() != raw.d {
            return Err(SegError::Dimension {
                expected: raw.d,
                got: names.len(),
            });
        }
        if raw.n == 0 {
            return Err(SegError::EmptyInput);
        }
        let scaler = RobustScaler::fit(raw);
        let scaled = scaler.transform(raw);
        let (model, labels, bic_curve) = cluster(&scaled, algo, p)?;
        let k = model.k();
        let profiles = profile::cluster_profiles(raw, &labels, k, &scaler, names);
        // Fresh ids are handed out largest cluster first, so they are deterministic.
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by_key(|&c| (std::cmp::Reverse(profiles[c].0), c));
        let raw_centroids = centroids(raw, &labels, k);
        let ordered: Vec<Vec<f32>> = order
            .iter()
            .map(|&c| raw_centroids.row(c).to_vec())
            .collect();
        let mut registry = previous.cloned().unwrap_or_default();
        let ordered_ids = registry.assign(&ordered, &scaler, p.match_threshold);
        let mut cluster_ids = vec![0u32; k];
        for (&c, &id) in order.iter().zip(&ordered_ids) {
            cluster_ids[c] = id;
        }
        let names_desc = profile::name_all(&profiles);
        let segments = order
            .iter()
            .map(|&c| SegmentInfo {
                id: cluster_ids[c],
                name: names_desc[c].0.clone(),
                description: names_desc[c].1.clone(),
                size: profiles[c].0,
                share: profiles[c].0 as f32 / raw.n as f32,
                profile: profiles[c].1.clone(),
            })
            .collect();
        let seg_labels = labels
            .iter()
            .map(|&l| {
                if l < 0 {
                    -1
                } else {
                    cluster_ids[l as usize] as i32
                }
            })
            .collect();
        let pca = pca::Pca::fit(&scaled);
        Ok((
            Segmenter {
                algo,
                feature_names: names.to_vec(),
                scaler,
                model,
                cluster_ids,
                segments,
                registry,
                pca,
                bic_curve,
            },
            seg_labels,
        ))
    }

    /// Fits on user states (feature vectors at `now_ms`).
    pub fn fit_states(
        states: &[UserState],
        now_ms: i64,
        algo: Algo,
        p: &Params,
        previous: Option<&IdRegistry>,
    ) -> Result<(Segmenter, Vec<i32>), SegError> {
        use rayon::prelude::*;
        let rows: Vec<[f32; DIM]> = states
            .par_iter()
            .map(|s| feature_vector(s, now_ms))
            .collect();
        let names: Vec<String> = FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
        Self::fit(&Matrix::from_rows(&rows), &names, algo, p, previous)
    }

    /// Segment id of a new point in raw feature units; `None` for DBSCAN noise.
    pub fn assign(&self, raw: &[f32]) -> Result<Option<u32>, SegError> {
        if raw.len() != self.scaler.dim() {
            return Err(SegError::Dimension {
                expected: self.scaler.dim(),
                got: raw.len(),
            });
        }
        let c = self.model.predict(&self.scaler.transform_vec(raw));
        Ok(usize::try_from(c)
            .ok()
            .and_then(|c| self.cluster_ids.get(c).copied()))
    }

    /// Segment id of a user now (`None`: noise, or a segmenter fitted on other columns).
    pub fn assign_state(&self, state: &UserState, now_ms: i64) -> Option<u32> {
        self.assign(&feature_vector(state, now_ms)).ok().flatten()
    }

    /// The segment with this id.
    pub fn segment(&self, id: u32) -> Option<&SegmentInfo> {
        self.segments.iter().find(|s| s.id == id)
    }

    /// 2-D PCA coordinates of a raw point (for the scatter plot).
    pub fn project(&self, raw: &[f32]) -> [f32; 2] {
        self.pca.project(&self.scaler.transform_vec(raw))
    }
}

/// What `trimtab segment --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentOutput {
    pub algo: Algo,
    pub features: Vec<String>,
    /// Segment id per input row, −1 for noise.
    pub labels: Vec<i32>,
    /// Segments, largest first.
    pub segments: Vec<SegmentInfo>,
    /// Rows labelled noise (DBSCAN only).
    pub noise: usize,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bic: Option<Vec<(usize, f64)>>,
    /// Share of variance on the two PCA axes.
    pub pca_explained: [f64; 2],
    /// PCA coordinates per row, when asked for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub projection: Option<Vec<[f32; 2]>>,
}

/// Segments a matrix of raw feature rows.
pub fn segment_matrix(
    raw: &Matrix,
    names: &[String],
    algo: Algo,
    params: &Params,
) -> Result<SegmentOutput, SegError> {
    let (seg, labels) = Segmenter::fit(raw, names, algo, params, None)?;
    let projection = params
        .projection
        .then(|| seg.pca.project_all(&seg.scaler.transform(raw)));
    Ok(SegmentOutput {
        algo,
        features: names.to_vec(),
        noise: labels.iter().filter(|&&l| l < 0).count(),
        labels,
        segments: seg.segments,
        bic: seg.bic_curve,
        pca_explained: seg.pca.explained_ratio,
        projection,
    })
}

/// The offline CLI core: reads a CSV (header + numeric columns) or JSONL file of feature rows
/// and segments it.
pub fn segment_file(input: &Path, algo: Algo, params: &Params) -> Result<SegmentOutput, SegError> {
    let (raw, names) = io::read_features(input)?;
    segment_matrix(&raw, &names, algo, params)
}

#[cfg(test)]
mod tests;
