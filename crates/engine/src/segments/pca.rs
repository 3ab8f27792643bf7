//! 2-D PCA projection for the segments scatter plot.
//!
//! The d×d covariance is accumulated in one parallel pass (f64), then diagonalised exactly with
//! cyclic Jacobi rotations (d is small: 16 here, a CSV's column count in general), and the two
//! leading eigenvectors are kept. Signs are fixed (largest-magnitude loading positive) so plots
//! do not flip between runs. Runs on the segmenter's rayon pool.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Matrix;

/// A fitted 2-component PCA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pca {
    pub mean: Vec<f64>,
    /// The two leading principal axes (unit length), each of length d.
    pub components: [Vec<f64>; 2],
    /// Variance along each axis.
    pub explained_variance: [f64; 2],
    /// Share of the total variance along each axis.
    pub explained_ratio: [f64; 2],
}

impl Pca {
    /// Fits on the rows of `x` (at least one row).
    pub fn fit(x: &Matrix) -> Pca {
        let (n, d) = (x.n.max(1) as f64, x.d);
        let zero = || (vec![0f64; d], vec![0f64; d * d]);
        let (sum, outer) = x
            .data
            .par_chunks(d.max(1))
            .fold(zero, |(mut s, mut o), r| {
                for a in 0..d {
                    let va = f64::from(r[a]);
                    s[a] += va;
                    for b in a..d {
                        o[a * d + b] += va * f64::from(r[b]);
                    }
                }
                (s, o)
            })
            .reduce(zero, |(mut s, mut o), (s2, o2)| {
                s.iter_mut().zip(&s2).for_each(|(p, q)| *p += q);
                o.iter_mut().zip(&o2).for_each(|(p, q)| *p += q);
                (s, o)
            });
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let mut cov = vec![0f64; d * d];
        for a in 0..d {
            for b in a..d {
                let c = outer[a * d + b] / n - mean[a] * mean[b];
                cov[a * d + b] = c;
                cov[b * d + a] = c;
            }
        }
        let total: f64 = (0..d).map(|a| cov[a * d + a]).sum();
        let (vals, vecs) = jacobi_eigen(cov, d);
        let mut order: Vec<usize> = (0..d).collect();
        order.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]));
        let pick = |r: usize| -> (f64, Vec<f64>) {
            match order.get(r) {
                Some(&c) => {
                    let mut v: Vec<f64> = (0..d).map(|a| vecs[a * d + c]).collect();
                    let big = v
                        .iter()
                        .fold(0f64, |m, &x| if x.abs() > m.abs() { x } else { m });
                    if big < 0.0 {
                        v.iter_mut().for_each(|x| *x = -*x);
                    }
                    (vals[c].max(0.0), v)
                }
                None => (0.0, vec![0.0; d]),
            }
        };
        let (l0, v0) = pick(0);
        let (l1, v1) = pick(1);
        let ratio = |l: f64| if total > 0.0 { l / total } else { 0.0 };
        Pca {
            mean,
            components: [v0, v1],
            explained_variance: [l0, l1],
            explained_ratio: [ratio(l0), ratio(l1)],
        }
    }

    /// Coordinates of one point on the two axes.
    pub fn project(&self, x: &[f32]) -> [f32; 2] {
        let mut out = [0f64; 2];
        for (o, c) in out.iter_mut().zip(&self.components) {
            *o = x
                .iter()
                .zip(&self.mean)
                .zip(c)
                .map(|((&v, m), w)| (f64::from(v) - m) * w)
                .sum();
        }
        [out[0] as f32, out[1] as f32]
    }

    /// Coordinates of every row (in parallel).
    pub fn project_all(&self, x: &Matrix) -> Vec<[f32; 2]> {
        x.data
            .par_chunks(x.d.max(1))
            .map(|r| self.project(r))
            .collect()
    }
}

/// Eigen-decomposition of a symmetric d×d matrix (row-major) by cyclic Jacobi rotations.
/// Returns the eigenvalues and the eigenvectors as columns of a d×d matrix.
pub fn jacobi_eigen(mut a: Vec<f64>, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; d * d];
    for i in 0..d {
        v[i * d + i] = 1.0;
    }
    let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _sweep in 0..100 {
        let off: f64 = (0..d)
            .flat_map(|p| (0..d).filter(move |&q| q != p).map(move |q| (p, q)))
            .map(|(p, q)| a[p * d + q] * a[p * d + q])
            .sum::<f64>()
            .sqrt();
        if off <= 1e-12 * norm.max(1e-300) {
            break;
        }
        for p in 0..d {
            for q in p + 1..d {
                let apq = a[p * d + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * d + q] - a[p * d + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..d {
                    let akp = a[k * d + p];
                    let akq = a[k * d + q];
                    a[k * d + p] = c * akp - s * akq;
                    a[k * d + q] = s * akp + c * akq;
                }
                for k in 0..d {
                    let apk = a[p * d + k];
                    let aqk = a[q * d + k];
                    a[p * d + k] = c * apk - s * aqk;
                    a[q * d + k] = s * apk + c * aqk;
                }
                for k in 0..d {
                    let vkp = v[k * d + p];
                    let vkq = v[k * d + q];
                    v[k * d + p] = c * vkp - s * vkq;
                    v[k * d + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..d).map(|i| a[i * d + i]).collect(), v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_recovers_known_eigenpairs() {
        // [[2,1],[1,2]]: eigenvalues 3 and 1.
        let (vals, vecs) = jacobi_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        let mut sorted = vals.clone();
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-9 && (sorted[1] - 3.0).abs() < 1e-9);
        let big = if vals[0] > vals[1] { 0 } else { 1 };
        assert!((vecs[big].abs() - 0.5f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn pca_finds_the_long_axis() {
        let rows: Vec<f32> = (0..100)
            .flat_map(|i| {
                let t = i as f32 - 50.0;
                [t, t, 0.01 * (i % 3) as f32]
            })
            .collect();
        let p = Pca::fit(&Matrix::new(100, 3, rows).unwrap());
        let c = &p.components[0];
        assert!((c[0] - 0.5f64.sqrt()).abs() < 1e-6 && (c[1] - 0.5f64.sqrt()).abs() < 1e-6);
        assert!(p.explained_ratio[0] > 0.999);
    }
}
