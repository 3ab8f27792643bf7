//! Fixed-horizon frequentist tests and intervals.
//!
//! Owns: the two-proportion z-test, Welch's t-test, per-arm intervals (Wilson
//! for rates, Student t for means) and the delta-method interval for the
//! relative uplift. Every function returns a [`TestOutcome`] whose fields are
//! `None` (with a [`Note`]) when the data cannot support the statistic: the
//! gbstats "uninformative result" convention. Pure functions.

use super::error::Note;
use super::special::{norm_ppf, norm_sf, t_ppf, t_two_sided_p};
use super::suffstats::ProportionStat;

/// Result of a two-sample test of treatment − control.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TestOutcome {
    /// Estimated absolute difference (treatment − control).
    pub difference: Option<f64>,
    /// Test statistic (z or t).
    pub statistic: Option<f64>,
    /// Degrees of freedom (Welch only).
    pub df: Option<f64>,
    /// Two-sided p-value.
    pub p_value: Option<f64>,
    /// Standard error of the difference used for the interval (unpooled).
    pub se: Option<f64>,
    /// Two-sided 1 − α confidence interval of the difference.
    pub ci: Option<[f64; 2]>,
    /// Why some fields are missing.
    pub note: Option<Note>,
}

impl TestOutcome {
    /// The gbstats-style uninformative result.
    pub fn uninformative(note: Note) -> Self {
        Self {
            note: Some(note),
            ..Self::default()
        }
    }
}

/// Estimate of a mean with the variance of that estimate (σ²/n).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub variance_of_mean: f64,
}

pub(crate) fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

pub(crate) fn finite_pair(lo: f64, hi: f64) -> Option<[f64; 2]> {
    (lo.is_finite() && hi.is_finite()).then_some([lo, hi])
}

/// Two-sided two-proportion z-test of H₀: p_t = p_c.
///
/// z = (p̂_t − p̂_c) / √(p̄(1 − p̄)(1/n_c + 1/n_t)) with the pooled p̄; the
/// interval uses the unpooled (Wald) standard error
/// √(p̂_c(1 − p̂_c)/n_c + p̂_t(1 − p̂_t)/n_t).
pub fn two_proportion_z_test(
    control: ProportionStat,
    treatment: ProportionStat,
    alpha: f64,
) -> TestOutcome {
    let (Some(pc), Some(pt)) = (control.rate(), treatment.rate()) else {
        return TestOutcome::uninformative(Note::new("empty_arm", "an arm has no units (n = 0)"));
    };
    let (nc, nt) = (control.n as f64, treatment.n as f64);
    let diff = pt - pc;
    let pooled = (control.conversions as f64 + treatment.conversions as f64) / (nc + nt);
    let se_pooled = (pooled * (1.0 - pooled) * (1.0 / nc + 1.0 / nt)).sqrt();
    let se = (pc * (1.0 - pc) / nc + pt * (1.0 - pt) / nt).sqrt();
    let mut out = TestOutcome {
        difference: Some(diff),
        ..TestOutcome::default()
    };
    if se_pooled > 0.0 {
        let z = diff / se_pooled;
        out.statistic = finite(z);
        out.p_value = finite((2.0 * norm_sf(z.abs())).min(1.0));
    } else {
        out.note = Some(Note::new(
            "zero_variance",
            "both arms have all or no conversions: the z-test is undefined",
        ));
        return out;
    }
    if se > 0.0 {
        let h = norm_ppf(1.0 - alpha / 2.0) * se;
        out.se = Some(se);
        out.ci = finite_pair(diff - h, diff + h);
    } else {
        out.note = Some(Note::new(
            "zero_variance",
            "each arm has all or no conversions: the Wald interval has zero width and is not reported",
        ));
    }
    out
}

/// Welch's unequal-variance t-test of H₀: μ_t = μ_c from summary statistics
/// (sample variances with the n − 1 denominator). Degrees of freedom by
/// Welch–Satterthwaite. Needs n ≥ 2 in both arms.
pub fn welch_t_test(
    n_c: u64,
    mean_c: f64,
    var_c: f64,
    n_t: u64,
    mean_t: f64,
    var_t: f64,
    alpha: f64,
) -> TestOutcome {
    if n_c < 2 || n_t < 2 {
        return TestOutcome::uninformative(Note::new(
            "insufficient_data",
            "Welch's t-test needs at least 2 units per arm",
        ));
    }
    let (nc, nt) = (n_c as f64, n_t as f64);
    let (vc, vt) = (var_c / nc, var_t / nt);
    let se2 = vc + vt;
    let diff = mean_t - mean_c;
    if se2 <= 0.0 || !se2.is_finite() {
        return TestOutcome {
            difference: finite(diff),
            note: Some(Note::new(
                "zero_variance",
                "both arms have zero variance: the t-test is undefined",
            )),
            ..TestOutcome::default()
        };
    }
    let se = se2.sqrt();
    let df = se2 * se2 / (vc * vc / (nc - 1.0) + vt * vt / (nt - 1.0));
    let t = diff / se;
    let h = t_ppf(1.0 - alpha / 2.0, df) * se;
    TestOutcome {
        difference: finite(diff),
        statistic: finite(t),
        df: finite(df),
        p_value: finite(t_two_sided_p(t, df)),
        se: finite(se),
        ci: finite_pair(diff - h, diff + h),
        note: None,
    }
}

/// Wilson score interval for a single proportion.
pub fn wilson_interval(stat: ProportionStat, alpha: f64) -> Option<[f64; 2]> {
    let p = stat.rate()?;
    let n = stat.n as f64;
    let z = norm_ppf(1.0 - alpha / 2.0);
    let z2n = z * z / n;
    let center = (p + z2n / 2.0) / (1.0 + z2n);
    let half = z / (1.0 + z2n) * (p * (1.0 - p) / n + z2n / (4.0 * n)).sqrt();
    finite_pair((center - half).max(0.0), (center + half).min(1.0))
}

/// Student-t interval for a single mean: x̄ ± t_{n−1, 1−α/2} √(s²/n).
pub fn mean_interval(n: u64, mean: f64, variance: f64, alpha: f64) -> Option<[f64; 2]> {
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let h = t_ppf(1.0 - alpha / 2.0, nf - 1.0) * (variance / nf).sqrt();
    finite_pair(mean - h, mean + h)
}

/// Relative uplift r = μ_t/μ_c − 1 with a delta-method interval on the log ratio (Katz et
/// al. 1978) when both means are positive: Var(ln(μ̂_t/μ̂_c)) ≈ Var(μ̂_t)/μ_t² + Var(μ̂_c)/μ_c²,
/// interval exp(ln(μ_t/μ_c) ± z_{1−α/2} √Var) − 1. Unlike the symmetric interval on the ratio it
/// is skewed like the ratio's distribution and cannot cross −100%, so it agrees in sign with
/// the absolute interval when the control rate is small. Otherwise (a mean ≤ 0) the linear
/// delta method: Var(μ̂_t/μ̂_c) ≈ Var(μ̂_t)/μ_c² + μ_t² Var(μ̂_c)/μ_c⁴, interval r ± z √Var.
pub fn relative_uplift(
    control: Estimate,
    treatment: Estimate,
    alpha: f64,
) -> (Option<f64>, Option<[f64; 2]>, Option<Note>) {
    let mc = control.mean;
    if mc == 0.0 || !mc.is_finite() {
        return (
            None,
            None,
            Some(Note::new(
                "zero_baseline",
                "control mean is 0: relative uplift is undefined",
            )),
        );
    }
    let mt = treatment.mean;
    let r = mt / mc - 1.0;
    let z = norm_ppf(1.0 - alpha / 2.0);
    if mc > 0.0 && mt > 0.0 {
        let var_log = treatment.variance_of_mean / (mt * mt) + control.variance_of_mean / (mc * mc);
        let l = (mt / mc).ln();
        let h = z * var_log.sqrt();
        return (
            finite(r),
            finite_pair((l - h).exp() - 1.0, (l + h).exp() - 1.0),
            None,
        );
    }
    let var = treatment.variance_of_mean / (mc * mc)
        + mt * mt * control.variance_of_mean / (mc * mc * mc * mc);
    let h = z * var.sqrt();
    (finite(r), finite_pair(r - h, r + h), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 5e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }

    const C: ProportionStat = ProportionStat {
        n: 10_000,
        conversions: 500,
    };
    const T: ProportionStat = ProportionStat {
        n: 10_000,
        conversions: 560,
    };

    #[test]
    fn z_test_matches_statsmodels() {
        // python: from statsmodels.stats.proportion import proportions_ztest, confint_proportions_2indep
        //   proportions_ztest([560, 500], [10000, 10000])
        //   confint_proportions_2indep(560, 10000, 500, 10000, method="wald")
        let r = two_proportion_z_test(C, T, 0.05);
        close(r.statistic.unwrap(), REF_Z);
        close(r.p_value.unwrap(), REF_P);
        let ci = r.ci.unwrap();
        close(ci[0], REF_CI.0);
        close(ci[1], REF_CI.1);
    }
    const REF_Z: f64 = 1.8937529756356748;
    const REF_P: f64 = 0.05825780603351623;
    const REF_CI: (f64, f64) = (-0.00020922034622822532, 0.012209220346228223);

    #[test]
    fn welch_matches_scipy() {
        // python: from scipy.stats import ttest_ind_from_stats, t
        //   ttest_ind_from_stats(11.2, 9**.5, 55, 10.0, 2.0, 40, equal_var=False)  # t, p
        //   vc,vt=4/40,9/55; df=(vc+vt)**2/(vc**2/39+vt**2/54)                    # W–S df
        //   q=t.ppf(.975,df)*(vc+vt)**.5; (1.2-q, 1.2+q)                            # CI
        let r = welch_t_test(40, 10.0, 4.0, 55, 11.2, 9.0, 0.05);
        close(r.statistic.unwrap(), REF_WELCH.0);
        close(r.p_value.unwrap(), REF_WELCH.1);
        close(r.df.unwrap(), REF_WELCH.2);
        let ci = r.ci.unwrap();
        close(ci[0], REF_WELCH.3);
        close(ci[1], REF_WELCH.4);
    }
    const REF_WELCH: (f64, f64, f64, f64, f64) = (
        2.3371069649284846,
        0.0215940033722152,
        92.39154929577465,
        0.18029099727142728,
        2.219709002728573,
    );

    #[test]
    fn wilson_matches_statsmodels() {
        // python: from statsmodels.stats.proportion import proportion_confint
        //   proportion_confint(500, 10000, alpha=0.05, method="wilson"); proportion_confint(0, 20, method="wilson")
        let ci = wilson_interval(C, 0.05).unwrap();
        close(ci[0], REF_WILSON.0);
        close(ci[1], REF_WILSON.1);
        let edge = wilson_interval(
            ProportionStat {
                n: 20,
                conversions: 0,
            },
            0.05,
        )
        .unwrap();
        close(edge[0], 0.0);
        close(edge[1], REF_WILSON_ZERO);
    }
    const REF_WILSON: (f64, f64) = (0.04589848269058477, 0.05444711584302416);
    const REF_WILSON_ZERO: f64 = 0.1611251580528194;

    #[test]
    fn mean_interval_matches_scipy() {
        // python: from scipy.stats import t; t.interval(0.95, 39, loc=10, scale=(4/40)**0.5)
        let ci = mean_interval(40, 10.0, 4.0, 0.05).unwrap();
        close(ci[0], REF_MEAN_CI.0);
        close(ci[1], REF_MEAN_CI.1);
    }
    const REF_MEAN_CI: (f64, f64) = (9.360368969014232, 10.639631030985768);

    #[test]
    fn relative_interval_agrees_with_the_absolute_one_at_small_baselines() {
        // 4/51 vs 48/69: the absolute CI is far above 0, so must the relative one be.
        // python (as above, n 51 and 69): (2.417815509758047, 22.01738842279606)
        let (pc, pt) = (4.0 / 51.0, 48.0 / 69.0);
        let (_, ci, _) = relative_uplift(
            Estimate {
                mean: pc,
                variance_of_mean: pc * (1.0 - pc) / 51.0,
            },
            Estimate {
                mean: pt,
                variance_of_mean: pt * (1.0 - pt) / 69.0,
            },
            0.05,
        );
        let ci = ci.unwrap();
        close(ci[0], 2.417815509758047);
        close(ci[1], 22.01738842279606);
    }

    #[test]
    fn relative_uplift_delta_method() {
        // python: import math; from scipy.stats import norm; z=norm.ppf(.975)
        //   pc,pt=.05,.056; vc,vt=pc*(1-pc)/1e4,pt*(1-pt)/1e4
        //   se=(vt/pt**2+vc/pc**2)**.5; l=math.log(pt/pc); (math.exp(l-z*se)-1, math.exp(l+z*se)-1)
        let (r, ci, _) = relative_uplift(
            Estimate {
                mean: 0.05,
                variance_of_mean: 0.05 * 0.95 / 1e4,
            },
            Estimate {
                mean: 0.056,
                variance_of_mean: 0.056 * 0.944 / 1e4,
            },
            0.05,
        );
        close(r.unwrap(), 0.12);
        let ci = ci.unwrap();
        close(ci[0], REF_REL.0);
        close(ci[1], REF_REL.1);
    }
    const REF_REL: (f64, f64) = (-0.00402746072032778, 0.2594724759251221);

    #[test]
    fn degenerate_inputs_are_uninformative() {
        let zero = ProportionStat {
            n: 0,
            conversions: 0,
        };
        assert_eq!(two_proportion_z_test(zero, T, 0.05).p_value, None);
        let all = ProportionStat {
            n: 10,
            conversions: 10,
        };
        let r = two_proportion_z_test(all, all, 0.05);
        assert_eq!(r.p_value, None);
        assert_eq!(r.note.unwrap().code, "zero_variance");
        assert_eq!(welch_t_test(1, 1.0, 0.0, 5, 2.0, 1.0, 0.05).p_value, None);
        assert_eq!(welch_t_test(5, 1.0, 0.0, 5, 2.0, 0.0, 0.05).p_value, None);
    }
}
