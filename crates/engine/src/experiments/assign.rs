//! Deterministic, sticky assignment: a user's bucket in an experiment is a hash of the
//! pseudonymous user key and the experiment's salt, mapped to an arm by cumulative weight.
//! The same user always lands in the same arm (no state needed to stay sticky); changing the
//! salt reshuffles. The global holdout uses its own salt.

use sha2::{Digest, Sha256};

use super::def::Arm;
use trimtab_privacy::UserKey;

/// Salt of the global holdout (users who never get any adjustment).
pub const HOLDOUT_SALT: &str = "trimtab/global-holdout/v1";

/// A uniform number in [0, 1) from SHA-256(salt ‖ 0 ‖ user key).
pub fn bucket(user: &UserKey, salt: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(user.0);
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    // 53 random bits → [0, 1) exactly representable.
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The arm whose cumulative weight interval contains `u` (weights sum to 1).
pub fn choose(arms: &[Arm], u: f64) -> usize {
    let mut acc = 0.0;
    for (i, a) in arms.iter().enumerate() {
        acc += a.weight;
        if u < acc {
            return i;
        }
    }
    arms.len().saturating_sub(1)
}

/// Whether the user is in the global holdout of the given share (0..1).
pub fn in_holdout(user: &UserKey, share: f64) -> bool {
    share > 0.0 && bucket(user, HOLDOUT_SALT) < share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::def::VariantDef;

    fn arms(weights: &[f64]) -> Vec<Arm> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Arm {
                name: format!("a{i}"),
                weight: *w,
                variants: vec![(
                    "s".into(),
                    VariantDef {
                        name: format!("a{i}"),
                        weight: *w,
                        params: Default::default(),
                    },
                )],
            })
            .collect()
    }

    fn user(i: u32) -> UserKey {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&i.to_le_bytes());
        UserKey(k)
    }

    #[test]
    fn sticky_and_salted() {
        let u = user(7);
        assert_eq!(bucket(&u, "x"), bucket(&u, "x"));
        assert_ne!(bucket(&u, "x"), bucket(&u, "y"));
        assert!((0.0..1.0).contains(&bucket(&u, "x")));
    }

    /// Arm shares match the weights: chi-square goodness of fit over 40,000 users, against the
    /// 0.1% critical value of χ²(2) = 13.82.
    #[test]
    fn shares_follow_weights() {
        let a = arms(&[0.5, 0.3, 0.2]);
        let mut counts = [0f64; 3];
        let n = 40_000;
        for i in 0..n {
            counts[choose(&a, bucket(&user(i), "exp"))] += 1.0;
        }
        let chi2: f64 = counts
            .iter()
            .zip(&a)
            .map(|(c, arm)| {
                let e = arm.weight * n as f64;
                (c - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 13.82, "chi2 = {chi2}, counts = {counts:?}");
        // Different experiments assign independently: the arms of two salts are uncorrelated.
        let both = (0..n)
            .filter(|i| {
                choose(&a, bucket(&user(*i), "exp")) == 0
                    && choose(&a, bucket(&user(*i), "other")) == 0
            })
            .count() as f64;
        assert!((both / n as f64 - 0.25).abs() < 0.015, "{both}");
        let held = (0..n).filter(|i| in_holdout(&user(*i), 0.1)).count() as f64;
        assert!((held / n as f64 - 0.1).abs() < 0.01);
        assert!(!in_holdout(&user(1), 0.0));
    }
}
