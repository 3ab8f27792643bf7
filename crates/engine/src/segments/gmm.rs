//! Gaussian mixture with **diagonal** covariances, fitted by EM, initialised by k-means
//! (k-means++ seeds, then Lloyd), with seeded restarts, and the
//! number of components chosen by BIC over a range.
//!
//! Diagonal rather than full: the features are already robust-scaled and nearly independent
//! within a behaviour type; a diagonal model has 2·k·d + k − 1 parameters instead of
//! k·d(d+3)/2 + k − 1, so BIC does not over-penalise 16-D fits, and each E-step is O(n·k·d).
//!
//! Runs on the segmenter's rayon pool. Each EM iteration is one parallel pass over row chunks
//! that computes responsibilities on the fly and accumulates the sufficient statistics
//! (Σr, Σr·x, Σr·x²) per chunk: the n×k responsibility matrix is never stored, which is why
//! peak memory stays near the size of the input (see the benchmark against scikit-learn).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kmeans::{self, KMeansParams};
use super::{BicCurve, Matrix, SegError, CHUNK};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

/// Parameters of [`fit`] / [`fit_bic`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GmmParams {
    pub k: usize,
    pub max_iter: usize,
    /// Convergence: change of the mean log-likelihood per point below `tol` (as sklearn).
    pub tol: f64,
    /// Added to every variance, in scaled units (keeps components from collapsing onto the
    /// discrete values of features such as the device class; sklearn uses 1e-6).
    pub reg_covar: f64,
    /// Seeded restarts; the highest log-likelihood is kept.
    pub n_init: usize,
    /// Lloyd iterations of the k-means (k-means++ seeded) run that initialises each restart.
    pub init_kmeans_iter: usize,
    pub seed: u64,
}

impl Default for GmmParams {
    fn default() -> Self {
        GmmParams {
            k: 4,
            max_iter: 100,
            tol: 1e-3,
            reg_covar: 1e-3,
            n_init: 3,
            init_kmeans_iter: 100,
            seed: 42,
        }
    }
}

/// A fitted diagonal-covariance mixture (in the scaled space it was fitted in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GmmModel {
    pub d: usize,
    pub weights: Vec<f64>,
    /// k × d means, row-major.
    pub means: Vec<f64>,
    /// k × d variances, row-major.
    pub vars: Vec<f64>,
    /// Total log-likelihood of the training data.
    pub log_likelihood: f64,
    pub n: usize,
    pub iterations: usize,
    pub converged: bool,
    /// Per-component constant: ln w − ½(d ln 2π + Σ ln var).
    log_norm: Vec<f64>,
}

impl GmmModel {
    pub fn k(&self) -> usize {
        self.weights.len()
    }

    fn from_params(d: usize, weights: Vec<f64>, means: Vec<f64>, vars: Vec<f64>) -> GmmModel {
        let log_norm = weights
            .iter()
            .enumerate()
            .map(|(j, &w)| {
                let sum_ln_var: f64 = vars[j * d..(j + 1) * d].iter().map(|v| v.ln()).sum();
                w.max(1e-300).ln() - 0.5 * (d as f64 * LN_2PI + sum_ln_var)
            })
            .collect();
        GmmModel {
            d,
            weights,
            means,
            vars,
            log_likelihood: f64::NEG_INFINITY,
            n: 0,
            iterations: 0,
            converged: false,
            log_norm,
        }
    }

    /// Weighted log-density of each component at `x` (into `out`, length k); returns the
    /// log of the mixture density.
    pub fn log_joint(&self, x: &[f32], out: &mut [f64]) -> f64 {
        let d = self.d;
        let mut max = f64::NEG_INFINITY;
        for (j, o) in out.iter_mut().enumerate() {
            let m = &self.means[j * d..(j + 1) * d];
            let v = &self.vars[j * d..(j + 1) * d];
            let mut q = 0.0;
            for t in 0..d {
                let diff = f64::from(x[t]) - m[t];
                q += diff * diff / v[t];
            }
            *o = self.log_norm[j] - 0.5 * q;
            max = max.max(*o);
        }
        let s: f64 = out.iter().map(|&l| (l - max).exp()).sum();
        max + s.ln()
    }

    /// Posterior probability of each component for one (scaled) point.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f64> {
        let mut lp = vec![0.0; self.k()];
        let total = self.log_joint(x, &mut lp);
        lp.iter().map(|l| (l - total).exp()).collect()
    }

    /// The component of highest posterior probability (argmax of the posterior).
    pub fn predict(&self, x: &[f32]) -> usize {
        let mut lp = vec![0.0; self.k()];
        self.log_joint(x, &mut lp);
        argmax(&lp)
    }

    /// Number of free parameters: means and variances of each component, k − 1 weights.
    pub fn n_parameters(&self) -> usize {
        2 * self.k() * self.d + self.k() - 1
    }

    /// Bayesian information criterion on the training data; lower is better.
    pub fn bic(&self) -> f64 {
        -2.0 * self.log_likelihood + self.n_parameters() as f64 * (self.n as f64).ln()
    }

    /// The component means as a matrix (for naming, matching and the projection).
    pub fn means_matrix(&self) -> Matrix {
        Matrix {
            n: self.k(),
            d: self.d,
            data: self.means.iter().map(|&v| v as f32).collect(),
        }
    }
}

fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (j, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = j;
        }
    }
    best
}

/// Sufficient statistics of one E-step.
struct Stats {
    nk: Vec<f64>,
    sx: Vec<f64>,
    sxx: Vec<f64>,
    ll: f64,
}

fn e_step(x: &Matrix, m: &GmmModel) -> Stats {
    let (k, d) = (m.k(), x.d);
    let empty = || Stats {
        nk: vec![0.0; k],
        sx: vec![0.0; k * d],
        sxx: vec![0.0; k * d],
        ll: 0.0,
    };
    x.data
        .par_chunks(CHUNK * d)
        .fold(empty, |mut s, rows| {
            let mut lp = vec![0.0; k];
            for r in rows.chunks_exact(d) {
                let total = m.log_joint(r, &mut lp);
                s.ll += total;
                for (j, &l) in lp.iter().enumerate() {
                    let resp = (l - total).exp();
                    if resp < 1e-12 {
                        continue;
                    }
                    s.nk[j] += resp;
                    let sx = &mut s.sx[j * d..(j + 1) * d];
                    let sxx = &mut s.sxx[j * d..(j + 1) * d];
                    for t in 0..d {
                        let v = f64::from(r[t]);
                        sx[t] += resp * v;
                        sxx[t] += resp * v * v;
                    }
                }
            }
            s
        })
        .reduce(empty, |mut a, b| {
            a.nk.iter_mut().zip(&b.nk).for_each(|(p, q)| *p += q);
            a.sx.iter_mut().zip(&b.sx).for_each(|(p, q)| *p += q);
            a.sxx.iter_mut().zip(&b.sxx).for_each(|(p, q)| *p += q);
            a.ll += b.ll;
            a
        })
}

/// M-step: parameters from sufficient statistics.
fn m_step(s: &Stats, n: usize, d: usize, reg: f64) -> GmmModel {
    let k = s.nk.len();
    let mut means = vec![0.0; k * d];
    let mut vars = vec![1.0; k * d];
    let mut weights = vec![0.0; k];
    for j in 0..k {
        let nk = s.nk[j] + 10.0 * f64::EPSILON;
        weights[j] = nk / n as f64;
        for t in 0..d {
            let mu = s.sx[j * d + t] / nk;
            means[j * d + t] = mu;
            vars[j * d + t] = (s.sxx[j * d + t] / nk - mu * mu).max(0.0) + reg;
        }
    }
    GmmModel::from_params(d, weights, means, vars)
}

/// Fits one mixture of `p.k` components; returns the model and the argmax-posterior labels.
pub fn fit(x: &Matrix, p: &GmmParams) -> Result<(GmmModel, Vec<i32>), SegError> {
    if p.k == 0 || p.k > x.n {
        return Err(SegError::InvalidParam(format!(
            "k must be between 1 and the number of rows ({}), got {}",
            x.n, p.k
        )));
    }
    let (n, d) = (x.n, x.d);
    let mut best: Option<GmmModel> = None;
    for run in 0..p.n_init.max(1) {
        // Initialisation: k-means (k-means++ seeds, then Lloyd) gives hard responsibilities,
        // then one M-step; k-means++ seeds alone leave EM in poor local optima too often.
        let (_, hard) = kmeans::fit(
            x,
            &KMeansParams {
                k: p.k,
                n_init: 1,
                max_iter: p.init_kmeans_iter,
                tol: 1e-4,
                seed: p.seed.wrapping_add(run as u64),
            },
        )?;
        let zero = || Stats {
            nk: vec![0.0; p.k],
            sx: vec![0.0; p.k * d],
            sxx: vec![0.0; p.k * d],
            ll: 0.0,
        };
        let init = x
            .data
            .par_chunks(CHUNK * d)
            .zip(hard.par_chunks(CHUNK))
            .fold(zero, |mut s, (rows, labs)| {
                for (r, &j) in rows.chunks_exact(d).zip(labs) {
                    let j = j as usize;
                    s.nk[j] += 1.0;
                    for (t, &v) in r.iter().enumerate() {
                        let v = f64::from(v);
                        s.sx[j * d + t] += v;
                        s.sxx[j * d + t] += v * v;
                    }
                }
                s
            })
            .reduce(zero, |mut a, b| {
                a.nk.iter_mut().zip(&b.nk).for_each(|(p, q)| *p += q);
                a.sx.iter_mut().zip(&b.sx).for_each(|(p, q)| *p += q);
                a.sxx.iter_mut().zip(&b.sxx).for_each(|(p, q)| *p += q);
                a
            });
        let mut m = m_step(&init, n, d, p.reg_covar);
        let mut prev = f64::NEG_INFINITY;
        let mut ll = None;
        let mut iterations = 0;
        for it in 0..p.max_iter.max(1) {
            iterations = it + 1;
            // E-step under the current parameters; its log-likelihood is theirs.
            let s = e_step(x, &m);
            let mean_ll = s.ll / n as f64;
            if (mean_ll - prev).abs() < p.tol {
                m.converged = true;
                ll = Some(s.ll);
                break;
            }
            prev = mean_ll;
            m = m_step(&s, n, d, p.reg_covar);
        }
        m.iterations = iterations;
        m.log_likelihood = match ll {
            Some(ll) => ll,
            None => e_step(x, &m).ll,
        };
        m.n = n;
        if best
            .as_ref()
            .is_none_or(|b| m.log_likelihood > b.log_likelihood)
        {
            best = Some(m);
        }
    }
    let m = best.ok_or(SegError::EmptyInput)?;
    let labels = predict_all(&m, x);
    Ok((m, labels))
}

/// Argmax-posterior labels of every row (in parallel).
pub fn predict_all(m: &GmmModel, x: &Matrix) -> Vec<i32> {
    x.data
        .par_chunks(x.d)
        .map(|r| m.predict(r) as i32)
        .collect()
}

/// Fits a mixture for each k in `ks` and keeps the lowest BIC. Returns the model, its labels and
/// the `(k, bic)` curve.
pub fn fit_bic(
    x: &Matrix,
    ks: std::ops::RangeInclusive<usize>,
    p: &GmmParams,
) -> Result<(GmmModel, Vec<i32>, BicCurve), SegError> {
    let mut best: Option<(GmmModel, Vec<i32>)> = None;
    let mut curve = Vec::new();
    for k in ks {
        if k == 0 || k > x.n {
            continue;
        }
        let (m, l) = fit(x, &GmmParams { k, ..p.clone() })?;
        curve.push((k, m.bic()));
        if best.as_ref().is_none_or(|b| m.bic() < b.0.bic()) {
            best = Some((m, l));
        }
    }
    let (m, l) = best.ok_or_else(|| SegError::InvalidParam("empty k range".into()))?;
    Ok((m, l, curve))
}
