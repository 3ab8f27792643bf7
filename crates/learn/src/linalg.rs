//! Small dense linear algebra for the bandit learners and the OPE reward model: row-major
//! square matrices as `Vec<f64>` (dimension p ≲ a few hundred), sparse feature vectors,
//! Cholesky factorisation with solves and rank-1 updates, Sherman–Morrison updates of an
//! inverse, and [`Ridge`], an online ridge regression built from them.
//!
//! Pure functions and plain data: no threads, no I/O. Whoever owns a [`Ridge`] (the learner
//! thread, an OPE replay) mutates it; shards only read published copies.
//!
//! Sparsity: features are `a ⊗ [x, 1]` (see `bandit`), so with one-hot action features only
//! one block of `d + 1` entries is non-zero. The updates below touch only the rows/columns
//! where a vector is non-zero; matrices whose off-block entries start at exactly 0 keep them
//! at exactly 0, which keeps per-update cost O(nnz · p) instead of O(p²).

/// A sparse vector: parallel lists of indices and values (indices ascending, no duplicates).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sparse {
    /// Indices of the stored entries, ascending.
    pub idx: Vec<usize>,
    /// Values, one per index.
    pub val: Vec<f64>,
}

impl Sparse {
    /// The non-zero entries of a dense vector.
    pub fn from_dense(v: &[f64]) -> Self {
        let mut s = Sparse::default();
        for (i, &x) in v.iter().enumerate() {
            if x != 0.0 {
                s.idx.push(i);
                s.val.push(x);
            }
        }
        s
    }

    /// The dense vector of length `n`.
    pub fn to_dense(&self, n: usize) -> Vec<f64> {
        let mut v = vec![0.0; n];
        for (&i, &x) in self.idx.iter().zip(&self.val) {
            v[i] = x;
        }
        v
    }

    /// `Σ v[i] · self[i]`.
    pub fn dot(&self, v: &[f64]) -> f64 {
        self.idx
            .iter()
            .zip(&self.val)
            .map(|(&i, &x)| v[i] * x)
            .sum()
    }
}

/// `s · I` as a row-major n×n matrix.
pub fn identity_scaled(n: usize, s: f64) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for i in 0..n {
        m[i * n + i] = s;
    }
    m
}

/// `xᵀ M x` for a symmetric matrix `m` (n×n) and a sparse `x`: O(nnz²).
pub fn quad_form(m: &[f64], n: usize, x: &Sparse) -> f64 {
    let mut acc = 0.0;
    for (&i, &xi) in x.idx.iter().zip(&x.val) {
        let row = &m[i * n..(i + 1) * n];
        acc += xi * x.dot(row);
    }
    acc
}

/// `M x` for an n×n matrix and a sparse `x`, returned sparse (exact zeros dropped): O(n · nnz).
pub fn mat_vec_sparse(m: &[f64], n: usize, x: &Sparse) -> Sparse {
    let mut out = Sparse::default();
    for r in 0..n {
        let row = &m[r * n..(r + 1) * n];
        let v = x.dot(row);
        if v != 0.0 {
            out.idx.push(r);
            out.val.push(v);
        }
    }
    out
}

/// `M x` for an n×n matrix and a dense `x`.
pub fn mat_vec(m: &[f64], n: usize, x: &[f64]) -> Vec<f64> {
    (0..n)
        .map(|r| {
            m[r * n..(r + 1) * n]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum()
        })
        .collect()
}

/// `M += c · x xᵀ` (sparse x): O(nnz²).
pub fn add_outer(m: &mut [f64], n: usize, x: &Sparse, c: f64) {
    for (&i, &xi) in x.idx.iter().zip(&x.val) {
        for (&j, &xj) in x.idx.iter().zip(&x.val) {
            m[i * n + j] += c * xi * xj;
        }
    }
}

/// Cholesky factor `L` (lower triangular, row-major, zeros above the diagonal) with
/// `A = L Lᵀ`, or `None` when `A` is not (numerically) symmetric positive definite.
/// O(n³/6); skips exact zeros so block-diagonal matrices cost O(Σ block³).
pub fn cholesky(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= l[j * n + k] * l[j * n + k];
        }
        if !d.is_finite() || d <= 0.0 {
            return None;
        }
        let ljj = d.sqrt();
        l[j * n + j] = ljj;
        for i in (j + 1)..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                let (lik, ljk) = (l[i * n + k], l[j * n + k]);
                if lik != 0.0 && ljk != 0.0 {
                    s -= lik * ljk;
                }
            }
            l[i * n + j] = s / ljj;
        }
    }
    Some(l)
}

/// Solves `L y = b` (forward substitution).
pub fn solve_lower(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..n {
        let mut s = y[i];
        for k in 0..i {
            s -= l[i * n + k] * y[k];
        }
        y[i] = s / l[i * n + i];
    }
    y
}

/// Solves `Lᵀ x = y` (back substitution with the transpose of a lower factor).
pub fn solve_lower_transpose(l: &[f64], n: usize, y: &[f64]) -> Vec<f64> {
    solve_lower_transpose_rows(l, n, y, &vec![0; n])
}

/// For each row of a lower-triangular `L`, the column of its first non-zero entry (the row's
/// diagonal when it has no other); with block-diagonal `L` the block's start.
pub fn row_starts(l: &[f64], n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| (0..i).find(|&k| l[i * n + k] != 0.0).unwrap_or(i))
        .collect()
}

/// `Lᵀ x = y` by row-oriented back substitution, visiting in row `i` only the columns
/// `starts[i]..i` (see [`row_starts`]): O(Σ row lengths) instead of O(n²).
pub fn solve_lower_transpose_rows(l: &[f64], n: usize, y: &[f64], starts: &[usize]) -> Vec<f64> {
    let mut x = y.to_vec();
    for i in (0..n).rev() {
        let xi = x[i] / l[i * n + i];
        x[i] = xi;
        if xi != 0.0 {
            for k in starts[i]..i {
                x[k] -= l[i * n + k] * xi;
            }
        }
    }
    x
}

/// Solves `A x = b` given the Cholesky factor of `A`.
pub fn chol_solve(l: &[f64], n: usize, b: &[f64]) -> Vec<f64> {
    solve_lower_transpose(l, n, &solve_lower(l, n, b))
}

/// `A⁻¹` from the Cholesky factor of `A` (symmetrised), O(n³).
pub fn inverse_from_cholesky(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0.0; n * n];
    let mut e = vec![0.0; n];
    for c in 0..n {
        e.iter_mut().for_each(|v| *v = 0.0);
        e[c] = 1.0;
        let col = chol_solve(l, n, &e);
        for r in 0..n {
            inv[r * n + c] = col[r];
        }
    }
    for r in 0..n {
        for c in (r + 1)..n {
            let m = 0.5 * (inv[r * n + c] + inv[c * n + r]);
            inv[r * n + c] = m;
            inv[c * n + r] = m;
        }
    }
    inv
}

/// Rank-1 Cholesky update in place: given `L` with `A = L Lᵀ`, makes `L` the factor of
/// `A + x xᵀ` (the classic LINPACK `dchud` rotation sweep). Columns where the running `x` is
/// zero are skipped, so a sparse `x` costs O(nnz · n).
pub fn chol_rank1_update(l: &mut [f64], n: usize, x: &Sparse) {
    let mut w = x.to_dense(n);
    let start = x.idx.first().copied().unwrap_or(n);
    for k in start..n {
        if w[k] == 0.0 {
            continue;
        }
        let lkk = l[k * n + k];
        let r = lkk.hypot(w[k]);
        let c = r / lkk;
        let s = w[k] / lkk;
        l[k * n + k] = r;
        for i in (k + 1)..n {
            let lik = l[i * n + k];
            if lik == 0.0 && w[i] == 0.0 {
                continue;
            }
            let new = (lik + s * w[i]) / c;
            l[i * n + k] = new;
            w[i] = c * w[i] - s * new;
        }
    }
}

/// Sherman–Morrison in place: given `A⁻¹`, makes it `(A + x xᵀ)⁻¹ = A⁻¹ − u uᵀ/(1 + xᵀu)` with
/// `u = A⁻¹x`. Returns `(u, xᵀu)` (the caller updates the ridge solution with them).
pub fn sherman_morrison(a_inv: &mut [f64], n: usize, x: &Sparse) -> (Sparse, f64) {
    let u = mat_vec_sparse(a_inv, n, x);
    let s = x.dot(&u.to_dense(n));
    add_outer(a_inv, n, &u, -1.0 / (1.0 + s));
    (u, s)
}

/// Online ridge regression `θ̂ = A⁻¹ b`, `A = λI + Σ φφᵀ`, `b = Σ r φ`.
///
/// Keeps `A` (the sufficient statistic that snapshots persist), `A⁻¹` by Sherman–Morrison
/// (for predictions and UCB widths), optionally the Cholesky factor of `A` by rank-1 updates
/// (for Thompson sampling), and `θ̂` by the rank-1 identity
/// `θ̂' = θ̂ + u (r − φᵀθ̂)/(1 + φᵀu)`. Every [`Ridge::REFRESH_EVERY`] updates everything is
/// recomputed from `A` and `b` by a fresh Cholesky factorisation, so rounding cannot drift.
#[derive(Debug, Clone, PartialEq)]
pub struct Ridge {
    dim: usize,
    lambda: f64,
    a: Vec<f64>,
    a_inv: Vec<f64>,
    chol: Option<Vec<f64>>,
    b: Vec<f64>,
    theta: Vec<f64>,
    updates: u64,
}

impl Ridge {
    /// Updates between full recomputations from `A`, `b`.
    pub const REFRESH_EVERY: u64 = 16_384;

    /// An empty model (`A = λI`, `b = 0`); `with_chol` keeps the Cholesky factor of `A`.
    pub fn new(dim: usize, lambda: f64, with_chol: bool) -> Self {
        Ridge {
            dim,
            lambda,
            a: identity_scaled(dim, lambda),
            a_inv: identity_scaled(dim, 1.0 / lambda),
            chol: with_chol.then(|| identity_scaled(dim, lambda.sqrt())),
            b: vec![0.0; dim],
            theta: vec![0.0; dim],
            updates: 0,
        }
    }

    /// A model from its sufficient statistics; `None` if the shapes are wrong or `A` is not
    /// symmetric positive definite.
    pub fn from_stats(
        dim: usize,
        lambda: f64,
        a: Vec<f64>,
        b: Vec<f64>,
        updates: u64,
        with_chol: bool,
    ) -> Option<Self> {
        if a.len() != dim * dim || b.len() != dim || a.iter().chain(&b).any(|v| !v.is_finite()) {
            return None;
        }
        let mut m = Ridge {
            dim,
            lambda,
            a,
            a_inv: Vec::new(),
            chol: with_chol.then(Vec::new),
            b,
            theta: Vec::new(),
            updates,
        };
        m.refresh()?;
        Some(m)
    }

    /// Recomputes `A⁻¹`, `θ̂` (and the factor) from `A` and `b`; `None` if `A` is not SPD.
    fn refresh(&mut self) -> Option<()> {
        let l = cholesky(&self.a, self.dim)?;
        self.a_inv = inverse_from_cholesky(&l, self.dim);
        self.theta = chol_solve(&l, self.dim, &self.b);
        if self.chol.is_some() {
            self.chol = Some(l);
        }
        Some(())
    }

    /// Number of features p.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The ridge penalty λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// Observations absorbed so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// `A = λI + Σ φφᵀ` (row-major).
    pub fn a(&self) -> &[f64] {
        &self.a
    }

    /// `b = Σ r φ`.
    pub fn b(&self) -> &[f64] {
        &self.b
    }

    /// The ridge solution `θ̂ = A⁻¹ b`.
    pub fn theta(&self) -> &[f64] {
        &self.theta
    }

    /// Predicted reward `φᵀθ̂`.
    pub fn predict(&self, phi: &Sparse) -> f64 {
        phi.dot(&self.theta)
    }

    /// `φᵀ A⁻¹ φ` (the squared confidence width before scaling).
    pub fn variance(&self, phi: &Sparse) -> f64 {
        quad_form(&self.a_inv, self.dim, phi).max(0.0)
    }

    /// Absorbs one observation `(φ, r)`.
    pub fn update(&mut self, phi: &Sparse, r: f64) {
        let n = self.dim;
        add_outer(&mut self.a, n, phi, 1.0);
        for (&i, &x) in phi.idx.iter().zip(&phi.val) {
            self.b[i] += r * x;
        }
        if let Some(l) = self.chol.as_mut() {
            chol_rank1_update(l, n, phi);
        }
        let resid = r - self.predict(phi);
        let (u, s) = sherman_morrison(&mut self.a_inv, n, phi);
        let step = resid / (1.0 + s);
        for (&i, &ui) in u.idx.iter().zip(&u.val) {
            self.theta[i] += ui * step;
        }
        self.updates += 1;
        if self.updates.is_multiple_of(Self::REFRESH_EVERY) {
            // A stays SPD (λI plus PSD terms); should the factorisation still fail through
            // rounding, the incrementally updated values are kept.
            let _ = self.refresh();
        }
    }

    /// `θ̂ + scale · L⁻ᵀ z`: with `z ~ N(0, I)` a draw from `N(θ̂, scale² A⁻¹)`. Without a kept
    /// factor (model built with `with_chol = false`) it returns `θ̂`.
    pub fn sample(&self, z: &[f64], scale: f64) -> Vec<f64> {
        self.samples(std::iter::once(z.to_vec()), scale)
            .pop()
            .unwrap_or_else(|| self.theta.clone())
    }

    /// [`Ridge::sample`] for many `z`, sharing the sparsity scan of the factor.
    pub fn samples(&self, zs: impl Iterator<Item = Vec<f64>>, scale: f64) -> Vec<Vec<f64>> {
        let Some(l) = &self.chol else {
            return zs.map(|_| self.theta.clone()).collect();
        };
        let starts = row_starts(l, self.dim);
        zs.map(|z| {
            let w = solve_lower_transpose_rows(l, self.dim, &z, &starts);
            self.theta
                .iter()
                .zip(w)
                .map(|(t, w)| t + scale * w)
                .collect()
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * n];
        for i in 0..n {
            for k in 0..n {
                for j in 0..n {
                    c[i * n + j] += a[i * n + k] * b[k * n + j];
                }
            }
        }
        c
    }

    fn transpose(a: &[f64], n: usize) -> Vec<f64> {
        let mut t = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                t[j * n + i] = a[i * n + j];
            }
        }
        t
    }

    fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// A random SPD matrix `λI + Σ vvᵀ` from a vector of entries.
    fn spd(n: usize, entries: &[f64]) -> Vec<f64> {
        let mut a = identity_scaled(n, 0.5);
        for v in entries.chunks(n) {
            add_outer(&mut a, n, &Sparse::from_dense(v), 1.0);
        }
        a
    }

    #[test]
    fn cholesky_reconstructs_and_solves() {
        let n = 4;
        let a = spd(
            n,
            &[1.0, 2.0, 0.0, -1.0, 0.5, 0.0, 3.0, 1.0, -2.0, 1.0, 1.0, 0.0],
        );
        let l = cholesky(&a, n).expect("SPD");
        for i in 0..n {
            for j in (i + 1)..n {
                assert_eq!(l[i * n + j], 0.0);
            }
        }
        assert!(max_abs_diff(&matmul(&l, &transpose(&l, n), n), &a) < 1e-12);
        let b = [1.0, -2.0, 0.5, 3.0];
        let x = chol_solve(&l, n, &b);
        assert!(max_abs_diff(&mat_vec(&a, n, &x), &b) < 1e-12);
        let inv = inverse_from_cholesky(&l, n);
        assert!(max_abs_diff(&matmul(&a, &inv, n), &identity_scaled(n, 1.0)) < 1e-12);
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
        assert!(cholesky(&[0.0], 1).is_none());
    }

    #[test]
    fn reference_values() {
        // A = [[4, 2], [2, 3]]: L = [[2, 0], [1, √2]], A⁻¹ = [[3, −2], [−2, 4]] / 8.
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).expect("SPD");
        assert!(max_abs_diff(&l, &[2.0, 0.0, 1.0, 2f64.sqrt()]) < 1e-15);
        let inv = inverse_from_cholesky(&l, 2);
        assert!(max_abs_diff(&inv, &[0.375, -0.25, -0.25, 0.5]) < 1e-15);
    }

    proptest! {
        #[test]
        fn rank1_updates_match_refactorisation(
            entries in prop::collection::vec(-3.0f64..3.0, 15),
            x in prop::collection::vec(-3.0f64..3.0, 5),
        ) {
            let n = 5;
            let a = spd(n, &entries);
            let xs = Sparse::from_dense(&x);
            let mut a2 = a.clone();
            add_outer(&mut a2, n, &xs, 1.0);
            // Cholesky update.
            let mut l = cholesky(&a, n).expect("SPD");
            chol_rank1_update(&mut l, n, &xs);
            let l2 = cholesky(&a2, n).expect("SPD");
            prop_assert!(max_abs_diff(&l, &l2) < 1e-9);
            // Sherman–Morrison.
            let mut inv = inverse_from_cholesky(&cholesky(&a, n).expect("SPD"), n);
            sherman_morrison(&mut inv, n, &xs);
            let inv2 = inverse_from_cholesky(&l2, n);
            prop_assert!(max_abs_diff(&inv, &inv2) < 1e-9);
            // Quadratic form.
            let q = quad_form(&a, n, &xs);
            let q2: f64 = x.iter().zip(mat_vec(&a, n, &x)).map(|(a, b)| a * b).sum();
            prop_assert!((q - q2).abs() < 1e-9 * (1.0 + q2.abs()));
        }
    }

    #[test]
    fn ridge_matches_batch_solution_and_keeps_blocks_sparse() {
        // Two blocks of 3 (one-hot actions): updates in block 0 must leave block 1 at exactly λI.
        let n = 6;
        let mut m = Ridge::new(n, 1.0, true);
        let mut a = identity_scaled(n, 1.0);
        let mut b = vec![0.0; n];
        for t in 0..20_000u32 {
            let f = t as f64;
            let x = [(f * 0.37).sin(), (f * 0.11).cos(), 1.0];
            let blk = if t % 3 == 0 { 0 } else { 3 };
            let mut dense = vec![0.0; n];
            dense[blk..blk + 3].copy_from_slice(&x);
            let phi = Sparse::from_dense(&dense);
            let r = 0.3 * x[0] - 0.2 * x[1] + 0.1 + 0.01 * (f * 1.7).sin();
            m.update(&phi, r);
            add_outer(&mut a, n, &phi, 1.0);
            for (i, v) in dense.iter().enumerate() {
                b[i] += r * v;
            }
        }
        let l = cholesky(&a, n).expect("SPD");
        let theta = chol_solve(&l, n, &b);
        assert!(max_abs_diff(m.theta(), &theta) < 1e-10);
        assert!(max_abs_diff(m.a(), &a) < 1e-9);
        let fresh = Ridge::from_stats(n, 1.0, a, b, 20_000, true).expect("SPD");
        assert!(max_abs_diff(&m.a_inv, &fresh.a_inv) < 1e-10);
        let (lm, lf) = (
            m.chol.as_ref().expect("kept"),
            fresh.chol.as_ref().expect("kept"),
        );
        assert!(max_abs_diff(lm, lf) < 1e-9);
        for i in 0..3 {
            for j in 3..6 {
                assert_eq!(m.a_inv[i * n + j], 0.0);
                assert_eq!(lm[j * n + i], 0.0);
            }
        }
        assert_eq!(row_starts(lm, n), [0, 0, 0, 3, 3, 3]);
        // The sparse back substitution equals the dense one: Lᵀ w = z ⇔ w = (Lᵀ)⁻¹ z.
        let z = [0.3, -1.2, 0.7, 2.0, -0.1, 0.4];
        let w: Vec<f64> = m
            .sample(&z, 1.0)
            .iter()
            .zip(m.theta())
            .map(|(s, t)| s - t)
            .collect();
        let lt = transpose(lm, n);
        assert!(max_abs_diff(&mat_vec(&lt, n, &w), &z) < 1e-9);
    }

    #[test]
    fn from_stats_rejects_bad_shapes() {
        assert!(Ridge::from_stats(2, 1.0, vec![1.0; 3], vec![0.0; 2], 0, false).is_none());
        assert!(
            Ridge::from_stats(2, 1.0, vec![1.0, 2.0, 2.0, 1.0], vec![0.0; 2], 0, false).is_none()
        );
        assert!(Ridge::from_stats(1, 1.0, vec![f64::NAN], vec![0.0], 0, false).is_none());
    }

    #[test]
    fn sample_has_covariance_a_inverse() {
        use rand::{rngs::StdRng, SeedableRng};
        use rand_distr::{Distribution, StandardNormal};
        let n = 2;
        let mut m = Ridge::new(n, 1.0, true);
        m.update(&Sparse::from_dense(&[1.0, 1.0]), 1.0);
        m.update(&Sparse::from_dense(&[2.0, 0.0]), 0.0);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut cov = [0.0; 4];
        for _ in 0..draws {
            let z: Vec<f64> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
            let s = m.sample(&z, 1.0);
            let d = [s[0] - m.theta()[0], s[1] - m.theta()[1]];
            for i in 0..2 {
                for j in 0..2 {
                    cov[i * 2 + j] += d[i] * d[j] / draws as f64;
                }
            }
        }
        assert!(
            max_abs_diff(&cov, &m.a_inv) < 0.01,
            "{cov:?} vs {:?}",
            m.a_inv
        );
    }
}
