//! Clustering quality measures used by tests and the benchmark: the adjusted Rand index
//! (agreement of two labelings, chance-corrected) and the silhouette coefficient.
//!
//! Plain functions on slices; the silhouette is O(n²), meant for samples of a few thousand.

use std::collections::HashMap;

fn choose2(n: u64) -> f64 {
    (n as f64) * (n as f64 - 1.0) / 2.0
}

/// Adjusted Rand index (Hubert & Arabie) of two labelings of the same points. Every label value,
/// −1 included, is a class of its own. 1 for identical partitions, ≈ 0 for random ones.
///
/// # Panics
/// When the two labelings have different lengths (a caller bug).
pub fn adjusted_rand_index(a: &[i32], b: &[i32]) -> f64 {
    assert_eq!(a.len(), b.len(), "labelings of different lengths");
    let n = a.len() as u64;
    let mut pairs: HashMap<(i32, i32), u64> = HashMap::new();
    let mut ra: HashMap<i32, u64> = HashMap::new();
    let mut rb: HashMap<i32, u64> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *pairs.entry((x, y)).or_default() += 1;
        *ra.entry(x).or_default() += 1;
        *rb.entry(y).or_default() += 1;
    }
    let index: f64 = pairs.values().map(|&c| choose2(c)).sum();
    let sa: f64 = ra.values().map(|&c| choose2(c)).sum();
    let sb: f64 = rb.values().map(|&c| choose2(c)).sum();
    let expected = sa * sb / choose2(n).max(1.0);
    let max = 0.5 * (sa + sb);
    if (max - expected).abs() < f64::EPSILON {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Mean silhouette coefficient of 2-D points; points labelled −1 are left out.
pub fn silhouette_2d(points: &[[f32; 2]], labels: &[i32]) -> f64 {
    let idx: Vec<usize> = (0..points.len()).filter(|&i| labels[i] >= 0).collect();
    let k = labels.iter().copied().max().unwrap_or(-1) + 1;
    if k < 2 {
        return 0.0;
    }
    let k = k as usize;
    let mut total = 0.0;
    let mut counted = 0usize;
    for &i in &idx {
        let mut sum = vec![0f64; k];
        let mut cnt = vec![0usize; k];
        for &j in &idx {
            if i == j {
                continue;
            }
            let dx = f64::from(points[i][0] - points[j][0]);
            let dy = f64::from(points[i][1] - points[j][1]);
            let l = labels[j] as usize;
            sum[l] += (dx * dx + dy * dy).sqrt();
            cnt[l] += 1;
        }
        let own = labels[i] as usize;
        if cnt[own] == 0 {
            continue;
        }
        let a = sum[own] / cnt[own] as f64;
        let b = (0..k)
            .filter(|&l| l != own && cnt[l] > 0)
            .map(|l| sum[l] / cnt[l] as f64)
            .fold(f64::INFINITY, f64::min);
        if b.is_finite() {
            total += (b - a) / a.max(b);
            counted += 1;
        }
    }
    if counted == 0 {
        0.0
    } else {
        total / counted as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ari_known_values() {
        assert_eq!(adjusted_rand_index(&[0, 0, 1, 1], &[5, 5, 3, 3]), 1.0);
        // sklearn: adjusted_rand_score([0,0,1,1],[0,0,1,2]) = 0.5714285714285715
        let v = adjusted_rand_index(&[0, 0, 1, 1], &[0, 0, 1, 2]);
        assert!((v - 0.571_428_571_428_571_5).abs() < 1e-12);
        // Worse than chance: index 0, expected 6·3/15 = 1.2, max 4.5 → −1.2/3.3 = −4/11.
        let v = adjusted_rand_index(&[0, 0, 0, 1, 1, 1], &[0, 1, 2, 0, 1, 2]);
        assert!((v + 4.0 / 11.0).abs() < 1e-12);
    }

    #[test]
    fn silhouette_of_separated_blobs_is_high() {
        let pts = [[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]];
        assert!(silhouette_2d(&pts, &[0, 0, 1, 1]) > 0.95);
        assert!(silhouette_2d(&pts, &[0, 1, 0, 1]) < 0.0);
    }
}
