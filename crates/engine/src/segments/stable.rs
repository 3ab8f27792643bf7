//! Stable segment ids across re-clusterings: new clusters are matched to the previous run's
//! segments by centroid distance with the Hungarian algorithm (minimum total distance), a match
//! counts only under a distance threshold, and unmatched clusters get fresh ids that are never
//! reused.
//!
//! Pure and cheap (k ≤ a few dozen): runs on the segmenter thread after each clustering run.
//! Centroids are stored in raw feature units and compared after scaling both runs' centroids
//! with the *new* scaler, so a refitted scaler does not by itself break the match.

use serde::{Deserialize, Serialize};

use super::features::RobustScaler;

/// Minimum-cost assignment of rows to columns of a rectangular cost matrix (`cost[r][c]`).
/// Returns, for each row, its column (`None` when there are more rows than columns and the row
/// is left over). O(n³) (Kuhn–Munkres with potentials).
pub fn hungarian(cost: &[Vec<f64>]) -> Vec<Option<usize>> {
    let rows = cost.len();
    let cols = cost.first().map_or(0, Vec::len);
    let n = rows.max(cols);
    if n == 0 {
        return vec![None; rows];
    }
    let big = cost
        .iter()
        .flatten()
        .fold(0f64, |a, &b| a.max(b.abs()))
        .max(1.0)
        * 4.0;
    let c = |i: usize, j: usize| -> f64 {
        if i < rows && j < cols {
            cost[i][j]
        } else {
            big
        }
    };
    // 1-based arrays as in the classic formulation; p[j] = row matched to column j.
    let (mut u, mut v) = (vec![0f64; n + 1], vec![0f64; n + 1]);
    let (mut p, mut way) = (vec![0usize; n + 1], vec![0usize; n + 1]);
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = c(i0 - 1, j - 1) - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![None; rows];
    for j in 1..=n {
        if p[j] >= 1 && p[j] <= rows && j <= cols {
            out[p[j] - 1] = Some(j - 1);
        }
    }
    out
}

/// One segment as remembered between runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackedSegment {
    pub id: u32,
    /// Centroid in raw feature units.
    pub centroid: Vec<f32>,
}

/// The segment ids handed out so far and the centroids of the current segments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdRegistry {
    /// The next fresh id (ids are never reused, also after a segment disappears).
    pub next_id: u32,
    pub segments: Vec<TrackedSegment>,
}

impl IdRegistry {
    /// Assigns an id to each new cluster (centroids in raw units, in cluster order) and makes
    /// them the current segments. A cluster keeps the id of the previous segment it is matched
    /// to when their scaled distance is at most `max_dist`; otherwise it gets a fresh id.
    pub fn assign(
        &mut self,
        centroids: &[Vec<f32>],
        scaler: &RobustScaler,
        max_dist: f32,
    ) -> Vec<u32> {
        let new: Vec<Vec<f32>> = centroids.iter().map(|c| scaler.transform_vec(c)).collect();
        let old: Vec<Vec<f32>> = self
            .segments
            .iter()
            .map(|s| scaler.transform_vec(&s.centroid))
            .collect();
        let cost: Vec<Vec<f64>> = new
            .iter()
            .map(|a| {
                old.iter()
                    .map(|b| f64::from(super::kmeans::dist2(a, b)).sqrt())
                    .collect()
            })
            .collect();
        let matched = if old.is_empty() {
            vec![None; new.len()]
        } else {
            hungarian(&cost)
        };
        let ids: Vec<u32> = matched
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Some(j) if cost[i][*j] <= f64::from(max_dist) => self.segments[*j].id,
                _ => {
                    self.next_id += 1;
                    self.next_id - 1
                }
            })
            .collect();
        self.segments = ids
            .iter()
            .zip(centroids)
            .map(|(&id, c)| TrackedSegment {
                id,
                centroid: c.clone(),
            })
            .collect();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hungarian_finds_the_optimum() {
        let cost = vec![
            vec![4.0, 1.0, 3.0],
            vec![2.0, 0.0, 5.0],
            vec![3.0, 2.0, 2.0],
        ];
        // Greedy would take (1,1)=0 first and end at 0+4+2=6; the optimum is 1+2+2=5.
        assert_eq!(hungarian(&cost), vec![Some(1), Some(0), Some(2)]);
        // Rectangular both ways.
        assert_eq!(
            hungarian(&[vec![5.0, 1.0], vec![1.0, 5.0], vec![0.5, 0.6]]),
            vec![Some(1), None, Some(0)]
        );
        assert_eq!(hungarian(&[vec![3.0, 1.0, 2.0]]), vec![Some(1)]);
    }

    #[test]
    fn registry_keeps_matches_and_issues_fresh_ids() {
        let scaler = RobustScaler {
            center: vec![0.0, 0.0],
            scale: vec![1.0, 1.0],
        };
        let mut r = IdRegistry::default();
        assert_eq!(
            r.assign(&[vec![0.0, 0.0], vec![5.0, 5.0]], &scaler, 1.0),
            vec![0, 1]
        );
        // Reordered and slightly moved, plus a new far cluster; one old segment vanished.
        let ids = r.assign(
            &[vec![5.1, 5.0], vec![-20.0, 0.0], vec![0.2, 0.0]],
            &scaler,
            1.0,
        );
        assert_eq!(ids, vec![1, 2, 0]);
        let ids = r.assign(&[vec![0.2, 0.0], vec![9.0, 9.0]], &scaler, 1.0);
        assert_eq!(ids, vec![0, 3]); // id 1 is retired, never reused
    }
}
