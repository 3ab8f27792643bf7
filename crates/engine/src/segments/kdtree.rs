//! A flat k-d tree over the rows of a [`Matrix`]: fixed-radius range queries (count with an early
//! stop, list) and nearest-neighbour search, for DBSCAN and its online assignment.
//!
//! Immutable once built and `Sync`: rayon workers of the segmenter pool query it concurrently.
//! Pruning uses the exact distance from the query to each cell (incremental per-dimension
//! offsets, Arya & Mount), so in 16 dimensions a query touches only the cells that can hold a hit.
//! Own tree rather than `kiddo` 5.3: on the 100k×16 bench data, 5,000 range queries (r = 0.5,
//! 19M hits) took 0.66 s here vs 0.79 s with kiddo's `ImmutableKdTree` (build 26 vs 13 ms);
//! kiddo fixes the dimension at compile time (`[f32; K]`) while CSV input has any number of
//! columns, and this tree is ~150 lines with no dependency.

use super::Matrix;

/// Most points in a leaf.
const LEAF_SIZE: usize = 16;

#[derive(Debug, Clone)]
enum Node {
    Leaf {
        start: u32,
        end: u32,
    },
    Split {
        dim: u32,
        value: f32,
        left: u32,
        right: u32,
    },
}

/// k-d tree over points of dimension `d`; point ids are row indices of the input matrix.
#[derive(Debug, Clone)]
pub struct KdTree {
    d: usize,
    /// Points in tree order (row-major, `d` values each).
    points: Vec<f32>,
    /// Original row index of each point in tree order.
    ids: Vec<u32>,
    nodes: Vec<Node>,
}

#[inline]
fn dist2(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

impl KdTree {
    /// Builds a tree over all rows of `x`.
    pub fn build(x: &Matrix) -> KdTree {
        Self::build_subset(x, (0..x.n as u32).collect())
    }

    /// Builds a tree over the given rows of `x` (ids stay row indices of `x`).
    pub fn build_subset(x: &Matrix, mut order: Vec<u32>) -> KdTree {
        let mut nodes = Vec::with_capacity(2 * order.len() / LEAF_SIZE + 1);
        if !order.is_empty() {
            build_rec(x, &mut order, 0, &mut nodes);
        }
        let mut points = Vec::with_capacity(order.len() * x.d);
        for &i in &order {
            points.extend_from_slice(x.row(i as usize));
        }
        KdTree {
            d: x.d,
            points,
            ids: order,
            nodes,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Number of points within squared distance `r2` of `q` (inclusive), counting at most `limit`.
    pub fn count_within(&self, q: &[f32], r2: f32, limit: usize) -> usize {
        let mut n = 0;
        self.visit_within(q, r2, &mut |_| {
            n += 1;
            n < limit
        });
        n
    }

    /// Appends the ids of all points within squared distance `r2` of `q` to `out`.
    pub fn within(&self, q: &[f32], r2: f32, out: &mut Vec<u32>) {
        self.visit_within(q, r2, &mut |id| {
            out.push(id);
            true
        });
    }

    /// Calls `f` with each point id within squared distance `r2`; `f` returns false to stop.
    pub fn visit_within(&self, q: &[f32], r2: f32, f: &mut dyn FnMut(u32) -> bool) {
        if self.nodes.is_empty() {
            return;
        }
        let mut off = vec![0f32; self.d];
        self.range_rec(0, q, r2, 0.0, &mut off, f);
    }

    fn range_rec(
        &self,
        node: usize,
        q: &[f32],
        r2: f32,
        rd: f32,
        off: &mut [f32],
        f: &mut dyn FnMut(u32) -> bool,
    ) -> bool {
        match self.nodes[node] {
            Node::Leaf { start, end } => {
                for k in start as usize..end as usize {
                    let p = &self.points[k * self.d..(k + 1) * self.d];
                    if dist2(p, q) <= r2 && !f(self.ids[k]) {
                        return false;
                    }
                }
                true
            }
            Node::Split {
                dim,
                value,
                left,
                right,
            } => {
                let dim = dim as usize;
                let diff = q[dim] - value;
                let (near, far) = if diff < 0.0 {
                    (left, right)
                } else {
                    (right, left)
                };
                if !self.range_rec(near as usize, q, r2, rd, off, f) {
                    return false;
                }
                let old = off[dim];
                let far_rd = rd - old * old + diff * diff;
                if far_rd <= r2 {
                    off[dim] = diff;
                    let go_on = self.range_rec(far as usize, q, r2, far_rd, off, f);
                    off[dim] = old;
                    return go_on;
                }
                true
            }
        }
    }

    /// The nearest point to `q`: `(id, squared distance)`, or `None` for an empty tree.
    pub fn nearest(&self, q: &[f32]) -> Option<(u32, f32)> {
        if self.nodes.is_empty() {
            return None;
        }
        let mut best = (u32::MAX, f32::INFINITY);
        let mut off = vec![0f32; self.d];
        self.nearest_rec(0, q, 0.0, &mut off, &mut best);
        Some(best)
    }

    fn nearest_rec(&self, node: usize, q: &[f32], rd: f32, off: &mut [f32], best: &mut (u32, f32)) {
        match self.nodes[node] {
            Node::Leaf { start, end } => {
                for k in start as usize..end as usize {
                    let d2 = dist2(&self.points[k * self.d..(k + 1) * self.d], q);
                    if d2 < best.1 || (d2 == best.1 && self.ids[k] < best.0) {
                        *best = (self.ids[k], d2);
                    }
                }
            }
            Node::Split {
                dim,
                value,
                left,
                right,
            } => {
                let dim = dim as usize;
                let diff = q[dim] - value;
                let (near, far) = if diff < 0.0 {
                    (left, right)
                } else {
                    (right, left)
                };
                self.nearest_rec(near as usize, q, rd, off, best);
                let old = off[dim];
                let far_rd = rd - old * old + diff * diff;
                if far_rd <= best.1 {
                    off[dim] = diff;
                    self.nearest_rec(far as usize, q, far_rd, off, best);
                    off[dim] = old;
                }
            }
        }
    }
}

/// Builds the subtree for `order[..]` (whose first element sits at tree position `base`) and
/// returns its node index.
fn build_rec(x: &Matrix, order: &mut [u32], base: usize, nodes: &mut Vec<Node>) -> u32 {
    let me = nodes.len() as u32;
    if order.len() <= LEAF_SIZE {
        nodes.push(Node::Leaf {
            start: base as u32,
            end: (base + order.len()) as u32,
        });
        return me;
    }
    // Split the dimension of widest spread at its median.
    let mut lo = vec![f32::INFINITY; x.d];
    let mut hi = vec![f32::NEG_INFINITY; x.d];
    for &i in order.iter() {
        for (j, &v) in x.row(i as usize).iter().enumerate() {
            lo[j] = lo[j].min(v);
            hi[j] = hi[j].max(v);
        }
    }
    let (dim, spread) = (0..x.d)
        .map(|j| (j, hi[j] - lo[j]))
        .fold((0, f32::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    if spread <= 0.0 {
        // All points identical: one (possibly large) leaf.
        nodes.push(Node::Leaf {
            start: base as u32,
            end: (base + order.len()) as u32,
        });
        return me;
    }
    let mid = order.len() / 2;
    order.select_nth_unstable_by(mid, |&a, &b| {
        x.row(a as usize)[dim].total_cmp(&x.row(b as usize)[dim])
    });
    let value = x.row(order[mid] as usize)[dim];
    nodes.push(Node::Split {
        dim: dim as u32,
        value,
        left: 0,
        right: 0,
    });
    let (l, r) = order.split_at_mut(mid);
    let left = build_rec(x, l, base, nodes);
    let right = build_rec(x, r, base + mid, nodes);
    nodes[me as usize] = Node::Split {
        dim: dim as u32,
        value,
        left,
        right,
    };
    me
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_brute_force() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (n, d) = (2_000, 5);
        let data: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let x = Matrix::new(n, d, data).unwrap();
        let t = KdTree::build(&x);
        for qi in 0..50 {
            let q: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
            let r2 = 0.1 + 0.01 * qi as f32;
            let mut got = Vec::new();
            t.within(&q, r2, &mut got);
            got.sort_unstable();
            let want: Vec<u32> = (0..n as u32)
                .filter(|&i| dist2(x.row(i as usize), &q) <= r2)
                .collect();
            assert_eq!(got, want);
            assert_eq!(t.count_within(&q, r2, 3), want.len().min(3));
            let (id, d2) = t.nearest(&q).unwrap();
            let best = (0..n)
                .map(|i| dist2(x.row(i), &q))
                .fold(f32::INFINITY, f32::min);
            assert_eq!(d2, best);
            assert_eq!(dist2(x.row(id as usize), &q), best);
        }
    }
}
