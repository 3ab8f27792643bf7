//! CUPED variance reduction with a pre-exposure covariate (Deng, Xu, Kohavi &
//! Walker 2013).
//!
//! Owns: the pooled regression coefficient θ, the adjusted arm means and
//! variances, and the variance reduction achieved. Works on summary
//! statistics (n, ȳ, s²_y, x̄, s²_x, s_xy per arm). Pure functions.

use super::error::Note;
use super::frequentist::finite;

/// One arm's summary for CUPED (sample variances/covariance with n − 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CupedArm {
    pub n: u64,
    pub mean: f64,
    pub variance: f64,
    pub covariate_mean: f64,
    pub covariate_variance: f64,
    pub covariance: f64,
}

/// Adjusted arm: Ȳ_cv = ȳ − θ (x̄ − x̄_all), s²_cv = s²_y − 2θ s_xy + θ² s²_x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdjustedArm {
    pub mean: f64,
    pub variance: f64,
    /// 1 − s²_cv / s²_y for this arm (None when s²_y = 0).
    pub variance_reduction: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CupedOutcome {
    /// θ = Σ(n_i − 1) s_xy,i / Σ(n_i − 1) s²_x,i (within-arm pooled).
    pub theta: Option<f64>,
    /// One entry per input arm (unadjusted when θ is undefined).
    pub arms: Vec<AdjustedArm>,
    /// 1 − Σ(n_i − 1)s²_cv,i / Σ(n_i − 1)s²_y,i.
    pub variance_reduction: Option<f64>,
    pub note: Option<Note>,
}

/// Applies CUPED to all arms with one θ pooled across arms.
pub fn cuped(arms: &[CupedArm]) -> CupedOutcome {
    let dof = |a: &CupedArm| (a.n as f64 - 1.0).max(0.0);
    let sxy: f64 = arms.iter().map(|a| dof(a) * a.covariance).sum();
    let sxx: f64 = arms.iter().map(|a| dof(a) * a.covariate_variance).sum();
    let syy: f64 = arms.iter().map(|a| dof(a) * a.variance).sum();
    let total_n: f64 = arms.iter().map(|a| a.n as f64).sum();
    let unadjusted = |note: Note| CupedOutcome {
        theta: None,
        arms: arms
            .iter()
            .map(|a| AdjustedArm {
                mean: a.mean,
                variance: a.variance,
                variance_reduction: None,
            })
            .collect(),
        variance_reduction: None,
        note: Some(note),
    };
    if sxx.is_nan() || sxx <= 0.0 || total_n <= 0.0 {
        return unadjusted(Note::new(
            "cuped_unavailable",
            "the covariate has zero variance within arms: CUPED not applied",
        ));
    }
    let theta = sxy / sxx;
    if !theta.is_finite() {
        return unadjusted(Note::new(
            "cuped_unavailable",
            "θ is not finite: CUPED not applied",
        ));
    }
    let x_all = arms
        .iter()
        .map(|a| a.n as f64 * a.covariate_mean)
        .sum::<f64>()
        / total_n;
    let adjusted: Vec<AdjustedArm> = arms
        .iter()
        .map(|a| {
            let variance = (a.variance - 2.0 * theta * a.covariance
                + theta * theta * a.covariate_variance)
                .max(0.0);
            AdjustedArm {
                mean: a.mean - theta * (a.covariate_mean - x_all),
                variance,
                variance_reduction: (a.variance > 0.0)
                    .then(|| 1.0 - variance / a.variance)
                    .and_then(finite),
            }
        })
        .collect();
    let adj_pooled: f64 = arms
        .iter()
        .zip(&adjusted)
        .map(|(a, adj)| dof(a) * adj.variance)
        .sum();
    CupedOutcome {
        theta: Some(theta),
        arms: adjusted,
        variance_reduction: (syy > 0.0).then(|| 1.0 - adj_pooled / syy).and_then(finite),
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuped_matches_regression_by_hand() {
        // python (numpy): pooled within-arm slope on the summaries
        //   n=[100,120]; sxy=[3.0,2.4]; sxx=[4.0,3.5]; syy=[9.0,8.0]; ym=[10,10.5]; xm=[5,5.2]
        //   th=sum((k-1)*c for k,c in zip(n,sxy))/sum((k-1)*v for k,v in zip(n,sxx))
        //   xa=(100*5+120*5.2)/220; [y-th*(x-xa) for y,x in zip(ym,xm)]
        //   va=[s-2*th*c+th*th*v for s,c,v in zip(syy,sxy,sxx)]
        //   1-sum((k-1)*v for k,v in zip(n,va))/sum((k-1)*s for k,s in zip(n,syy))
        let arms = [
            CupedArm {
                n: 100,
                mean: 10.0,
                variance: 9.0,
                covariate_mean: 5.0,
                covariate_variance: 4.0,
                covariance: 3.0,
            },
            CupedArm {
                n: 120,
                mean: 10.5,
                variance: 8.0,
                covariate_mean: 5.2,
                covariate_variance: 3.5,
                covariance: 2.4,
            },
        ];
        let r = cuped(&arms);
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        close(r.theta.unwrap(), REF.0);
        close(r.arms[0].mean, REF.1);
        close(r.arms[1].mean, REF.2);
        close(r.variance_reduction.unwrap(), REF.3);
    }
    const REF: (f64, f64, f64, f64) = (
        0.7170461538461538,
        10.078223216783217,
        10.434813986013985,
        0.22666906632163275,
    );

    #[test]
    fn constant_covariate_leaves_data_unadjusted() {
        let a = CupedArm {
            n: 10,
            mean: 1.0,
            variance: 2.0,
            covariate_mean: 3.0,
            covariate_variance: 0.0,
            covariance: 0.0,
        };
        let r = cuped(&[a, a]);
        assert_eq!(r.theta, None);
        assert_eq!(r.arms[0].mean, 1.0);
        assert_eq!(r.note.unwrap().code, "cuped_unavailable");
    }
}
