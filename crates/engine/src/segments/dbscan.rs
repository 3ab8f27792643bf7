//! DBSCAN over a k-d tree: core / border / noise, label −1 for noise, and online assignment of
//! new points (nearest core point within `eps`, else noise).
//!
//! Runs on the segmenter's rayon pool in three phases, none all-pairs:
//! 1. core flags: a parallel range **count** per point that stops at `min_points`;
//! 2. clusters: core points are joined with a union–find; neighbour lists of core points (queried
//!    on a tree of core points only) are computed in parallel blocks and merged sequentially, so
//!    at most one block of neighbour lists is alive at a time (sklearn keeps all of them);
//! 3. border points take the cluster of their nearest core point within `eps` (parallel).
//!
//! `min_points` counts the point itself, as in scikit-learn's `min_samples`.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::kdtree::KdTree;
use super::{Matrix, SegError};

/// Parameters of [`fit`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbscanParams {
    /// Neighbourhood radius (Euclidean, in the scaled space).
    pub eps: f32,
    /// Points within `eps` (itself included) that make a point a core point.
    pub min_points: usize,
}

impl Default for DbscanParams {
    fn default() -> Self {
        DbscanParams {
            eps: 0.5,
            min_points: 10,
        }
    }
}

/// What [`fit`] keeps for online assignment: the core points and their clusters.
#[derive(Debug, Clone)]
pub struct DbscanModel {
    pub eps: f32,
    pub min_points: usize,
    pub n_clusters: usize,
    /// Core points (ids are row indices of the training matrix).
    core: KdTree,
    /// Cluster of each training row (−1 for noise), indexed by row.
    labels: Vec<i32>,
    /// Centroid of each cluster (mean of its members), k × d.
    pub centroids: Matrix,
}

impl DbscanModel {
    /// Cluster of a new (scaled) point: that of its nearest core point if within `eps`,
    /// else −1 (noise). Never fails, also for a model that found only noise.
    pub fn predict(&self, x: &[f32]) -> i32 {
        match self.core.nearest(x) {
            Some((id, d2)) if d2 <= self.eps * self.eps => self.labels[id as usize],
            _ => -1,
        }
    }

    /// Number of core points.
    pub fn n_core(&self) -> usize {
        self.core.len()
    }
}

/// Disjoint sets with path halving and union by size.
struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }
    fn find(&mut self, mut a: u32) -> u32 {
        while self.parent[a as usize] != a {
            let p = self.parent[a as usize];
            self.parent[a as usize] = self.parent[p as usize];
            a = p;
        }
        a
    }
    fn union(&mut self, a: u32, b: u32) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a as usize] < self.size[b as usize] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b as usize] = a;
        self.size[a as usize] += self.size[b as usize];
    }
}

/// Rows of core points whose neighbour lists are held at once in phase 2.
const BLOCK: usize = 2048;

/// Runs DBSCAN on (scaled) rows; returns the model and one label per row (−1 = noise).
/// Cluster numbers follow the first row of each cluster, so they are deterministic.
pub fn fit(x: &Matrix, p: &DbscanParams) -> Result<(DbscanModel, Vec<i32>), SegError> {
    if !(p.eps > 0.0 && p.eps.is_finite()) || p.min_points == 0 {
        return Err(SegError::InvalidParam(format!(
            "dbscan needs eps > 0 and min_points ≥ 1 (got eps {}, min_points {})",
            p.eps, p.min_points
        )));
    }
    let r2 = p.eps * p.eps;
    let all = KdTree::build(x);
    let is_core: Vec<bool> = (0..x.n)
        .into_par_iter()
        .map(|i| all.count_within(x.row(i), r2, p.min_points) >= p.min_points)
        .collect();
    drop(all);
    let core_ids: Vec<u32> = (0..x.n as u32).filter(|&i| is_core[i as usize]).collect();
    let core = KdTree::build_subset(x, core_ids.clone());

    let mut uf = UnionFind::new(x.n);
    for block in core_ids.chunks(BLOCK) {
        let lists: Vec<Vec<u32>> = block
            .par_iter()
            .map(|&i| {
                let mut out = Vec::new();
                core.visit_within(x.row(i as usize), r2, &mut |j| {
                    if j > i {
                        out.push(j);
                    }
                    true
                });
                out
            })
            .collect();
        for (&i, list) in block.iter().zip(&lists) {
            for &j in list {
                uf.union(i, j);
            }
        }
    }

    // Number clusters by their first row.
    let mut labels = vec![-1i32; x.n];
    let mut root_label = vec![-1i32; x.n];
    let mut n_clusters = 0usize;
    for &i in &core_ids {
        let r = uf.find(i) as usize;
        if root_label[r] < 0 {
            root_label[r] = n_clusters as i32;
            n_clusters += 1;
        }
        labels[i as usize] = root_label[r];
    }
    // Border points: the cluster of the nearest core point within eps.
    let border: Vec<(usize, i32)> = (0..x.n)
        .into_par_iter()
        .filter(|&i| !is_core[i])
        .filter_map(|i| match core.nearest(x.row(i)) {
            Some((id, d2)) if d2 <= r2 => Some((i, labels[id as usize])),
            _ => None,
        })
        .collect();
    for (i, l) in border {
        labels[i] = l;
    }
    let centroids = super::centroids(x, &labels, n_clusters);
    let model = DbscanModel {
        eps: p.eps,
        min_points: p.min_points,
        n_clusters,
        core,
        labels: labels.clone(),
        centroids,
    };
    Ok((model, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_border_noise_like_the_definition() {
        // A dense line of 5 points, a border point 0.9 from the end, an isolated point.
        let pts: [f32; 14] = [
            0., 0., 0.5, 0., 1.0, 0., 1.5, 0., 2.0, 0., 2.9, 0., 10., 10.,
        ];
        let x = Matrix::new(7, 2, pts.to_vec()).unwrap();
        let (m, labels) = fit(
            &x,
            &DbscanParams {
                eps: 1.0,
                min_points: 3,
            },
        )
        .unwrap();
        assert_eq!(labels, vec![0, 0, 0, 0, 0, 0, -1]);
        assert_eq!(m.n_core(), 5);
        assert_eq!(m.predict(&[2.4, 0.0]), 0);
        assert_eq!(m.predict(&[10.0, 10.0]), -1); // a noise point is not a core point
        assert_eq!(m.predict(&[50.0, 0.0]), -1);
    }
}
