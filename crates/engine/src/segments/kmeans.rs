//! k-means: k-means++ seeding, Lloyd iterations with a parallel assignment step, `n_init`
//! seeded restarts (the lowest inertia wins), and a BIC for choosing k.
//!
//! Runs on the segmenter's rayon pool: each Lloyd step is one parallel pass over row chunks that
//! assigns labels and accumulates per-chunk sums (f64) which are then reduced, so there are no
//! locks and memory beyond the input is O(n) labels + O(k·d) per chunk.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{BicCurve, Matrix, SegError, CHUNK};

/// Parameters of [`fit`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KMeansParams {
    pub k: usize,
    /// Independent restarts (different seeds); the lowest inertia is kept.
    pub n_init: usize,
    pub max_iter: usize,
    /// Convergence: total squared centroid shift ≤ `tol` × mean per-column variance (as sklearn).
    pub tol: f64,
    pub seed: u64,
}

impl Default for KMeansParams {
    fn default() -> Self {
        KMeansParams {
            k: 4,
            n_init: 3,
            max_iter: 300,
            tol: 1e-4,
            seed: 42,
        }
    }
}

/// A fitted k-means model (centroids in the scaled space it was fitted in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansModel {
    pub centroids: Matrix,
    /// Sum of squared distances of the points to their centroid.
    pub inertia: f64,
    pub iterations: usize,
}

impl KMeansModel {
    /// Index of the nearest centroid of one (scaled) point.
    pub fn predict(&self, x: &[f32]) -> usize {
        nearest(&self.centroids, x).0
    }

    /// Bayesian information criterion of the model as a mixture of k spherical Gaussians with
    /// one shared variance (Pelleg & Moore's X-means); lower is better.
    pub fn bic(&self, labels: &[i32]) -> f64 {
        let (n, d, k) = (
            labels.len() as f64,
            self.centroids.d as f64,
            self.centroids.n,
        );
        let var = (self.inertia / ((n - k as f64).max(1.0) * d)).max(1e-12);
        let mut counts = vec![0f64; k];
        for &l in labels {
            if l >= 0 {
                counts[l as usize] += 1.0;
            }
        }
        let ll: f64 = counts
            .iter()
            .filter(|&&c| c > 0.0)
            .map(|&c| c * (c / n).ln())
            .sum::<f64>()
            - n * d / 2.0 * (2.0 * std::f64::consts::PI * var).ln()
            - self.inertia / (2.0 * var);
        let p = k as f64 * (d + 1.0);
        -2.0 * ll + p * n.ln()
    }
}

#[inline]
pub(crate) fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of and squared distance to the nearest row of `c`.
pub fn nearest(c: &Matrix, x: &[f32]) -> (usize, f32) {
    let mut best = (0, f32::INFINITY);
    for j in 0..c.n {
        let d2 = dist2(c.row(j), x);
        if d2 < best.1 {
            best = (j, d2);
        }
    }
    best
}

/// k-means++ seeding: the first centre uniformly, each next one with probability ∝ D(x)².
/// Distances are updated in parallel; sampling is one sequential pass over them.
pub fn kmeans_pp(x: &Matrix, k: usize, rng: &mut StdRng) -> Matrix {
    let mut centres = Vec::with_capacity(k * x.d);
    let first = rng.random_range(0..x.n);
    centres.extend_from_slice(x.row(first));
    let mut d2: Vec<f32> = (0..x.n)
        .into_par_iter()
        .map(|i| dist2(x.row(i), x.row(first)))
        .collect();
    for _ in 1..k {
        let total: f64 = d2.par_iter().map(|&v| f64::from(v)).sum();
        let pick = if total <= 0.0 {
            rng.random_range(0..x.n)
        } else {
            let mut target = rng.random::<f64>() * total;
            let mut pick = x.n - 1;
            for (i, &v) in d2.iter().enumerate() {
                target -= f64::from(v);
                if target <= 0.0 {
                    pick = i;
                    break;
                }
            }
            pick
        };
        let c = x.row(pick).to_vec();
        centres.extend_from_slice(&c);
        d2.par_iter_mut().enumerate().for_each(|(i, v)| {
            *v = v.min(dist2(x.row(i), &c));
        });
    }
    Matrix {
        n: k,
        d: x.d,
        data: centres,
    }
}

struct Step {
    sums: Vec<f64>,
    counts: Vec<u64>,
    inertia: f64,
    /// The point farthest from its centroid (re-seeds an empty cluster).
    far: (f32, usize),
}

/// One assignment pass: writes labels and returns per-cluster sums.
fn assign_step(x: &Matrix, c: &Matrix, labels: &mut [i32]) -> Step {
    let (k, d) = (c.n, x.d);
    let empty = || Step {
        sums: vec![0.0; k * d],
        counts: vec![0; k],
        inertia: 0.0,
        far: (-1.0, 0),
    };
    labels
        .par_chunks_mut(CHUNK)
        .enumerate()
        .fold(empty, |mut s, (ci, lab)| {
            let base = ci * CHUNK;
            for (o, l) in lab.iter_mut().enumerate() {
                let row = x.row(base + o);
                let (j, d2) = nearest(c, row);
                *l = j as i32;
                s.counts[j] += 1;
                s.inertia += f64::from(d2);
                if d2 > s.far.0 {
                    s.far = (d2, base + o);
                }
                for (acc, &v) in s.sums[j * d..(j + 1) * d].iter_mut().zip(row) {
                    *acc += f64::from(v);
                }
            }
            s
        })
        .reduce(empty, |mut a, b| {
            a.sums.iter_mut().zip(&b.sums).for_each(|(x, y)| *x += y);
            a.counts
                .iter_mut()
                .zip(&b.counts)
                .for_each(|(x, y)| *x += y);
            a.inertia += b.inertia;
            if b.far.0 > a.far.0 {
                a.far = b.far;
            }
            a
        })
}

/// Mean per-column variance of `x` (scales the convergence tolerance).
fn mean_variance(x: &Matrix) -> f64 {
    let n = x.n as f64;
    let (s, s2) = x
        .data
        .par_chunks(x.d)
        .fold(
            || (vec![0f64; x.d], vec![0f64; x.d]),
            |(mut s, mut s2), r| {
                for (j, &v) in r.iter().enumerate() {
                    s[j] += f64::from(v);
                    s2[j] += f64::from(v) * f64::from(v);
                }
                (s, s2)
            },
        )
        .reduce(
            || (vec![0f64; x.d], vec![0f64; x.d]),
            |(mut a, mut a2), (b, b2)| {
                a.iter_mut().zip(&b).for_each(|(p, q)| *p += q);
                a2.iter_mut().zip(&b2).for_each(|(p, q)| *p += q);
                (a, a2)
            },
        );
    s.iter()
        .zip(&s2)
        .map(|(a, b)| b / n - (a / n).powi(2))
        .sum::<f64>()
        / x.d as f64
}

/// Fits k-means on (scaled) rows; returns the best of `n_init` runs and its labels.
pub fn fit(x: &Matrix, p: &KMeansParams) -> Result<(KMeansModel, Vec<i32>), SegError> {
    if p.k == 0 || p.k > x.n {
        return Err(SegError::InvalidParam(format!(
            "k must be between 1 and the number of rows ({}), got {}",
            x.n, p.k
        )));
    }
    let tol = p.tol * mean_variance(x);
    let mut best: Option<(KMeansModel, Vec<i32>)> = None;
    for run in 0..p.n_init.max(1) {
        let mut rng = StdRng::seed_from_u64(p.seed.wrapping_add(run as u64));
        let mut c = kmeans_pp(x, p.k, &mut rng);
        let mut labels = vec![0i32; x.n];
        let mut iterations = 0;
        for it in 0..p.max_iter.max(1) {
            iterations = it + 1;
            let s = assign_step(x, &c, &mut labels);
            let mut next = c.clone();
            let mut far = Some(s.far.1);
            for j in 0..p.k {
                let dst = &mut next.data[j * x.d..(j + 1) * x.d];
                if s.counts[j] == 0 {
                    // Empty cluster: move it to the worst-served point (once per step).
                    if let Some(f) = far.take() {
                        dst.copy_from_slice(x.row(f));
                    }
                    continue;
                }
                let n = s.counts[j] as f64;
                for (o, &v) in dst.iter_mut().zip(&s.sums[j * x.d..(j + 1) * x.d]) {
                    *o = (v / n) as f32;
                }
            }
            let shift: f64 = (0..p.k)
                .map(|j| f64::from(dist2(c.row(j), next.row(j))))
                .sum();
            c = next;
            if shift <= tol {
                break;
            }
        }
        // Final assignment so labels and inertia match the returned centroids.
        let s = assign_step(x, &c, &mut labels);
        let model = KMeansModel {
            centroids: c,
            inertia: s.inertia,
            iterations,
        };
        if best.as_ref().is_none_or(|b| model.inertia < b.0.inertia) {
            best = Some((model, labels));
        }
    }
    best.ok_or_else(|| SegError::InvalidParam("n_init must be at least 1".into()))
}

/// Fits k-means for every k in `ks` and keeps the one with the lowest [`KMeansModel::bic`].
/// Returns the model, its labels and the `(k, bic)` curve.
pub fn fit_bic(
    x: &Matrix,
    ks: std::ops::RangeInclusive<usize>,
    p: &KMeansParams,
) -> Result<(KMeansModel, Vec<i32>, BicCurve), SegError> {
    let mut best: Option<(KMeansModel, Vec<i32>, f64)> = None;
    let mut curve = Vec::new();
    for k in ks {
        if k == 0 || k > x.n {
            continue;
        }
        let (m, l) = fit(x, &KMeansParams { k, ..p.clone() })?;
        let bic = m.bic(&l);
        curve.push((k, bic));
        if best.as_ref().is_none_or(|b| bic < b.2) {
            best = Some((m, l, bic));
        }
    }
    let (m, l, _) = best.ok_or_else(|| SegError::InvalidParam("empty k range".into()))?;
    Ok((m, l, curve))
}
