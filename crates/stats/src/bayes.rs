//! Bayesian decision quantities: chance to beat control and expected loss.
//!
//! Owns: the Beta-Binomial model for proportions (independent Beta(1, 1)
//! priors, posteriors Beta(1 + x, 1 + n − x)) evaluated by deterministic
//! adaptive Gauss–Legendre quadrature, and the Normal model for means
//! (flat prior, posterior N(x̄, s²/n)) in closed form. Pure functions.

use super::error::Note;
use super::frequentist::{finite, Estimate};
use super::special::{beta_cdf, beta_pdf, beta_sf, integrate, norm_cdf, norm_pdf};
use super::suffstats::ProportionStat;

/// Absolute tolerance of each quadrature.
const QUAD_TOL: f64 = 1e-12;

/// Chance that the treatment beats control and the expected loss of shipping it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BayesOutcome {
    /// P(θ_t > θ_c | data).
    pub chance_to_beat_control: Option<f64>,
    /// E[max(θ_c − θ_t, 0) | data], in the metric's absolute units.
    pub expected_loss: Option<f64>,
    pub note: Option<Note>,
}

/// Shape parameter above which a Beta posterior is replaced by the normal
/// with the same mean and variance: its skewness is then below
/// 2/√1e9 ≈ 6e-5, and the continued fraction of the incomplete beta would
/// need too many terms (seconds at 1e12).
const NORMAL_LIMIT: f64 = 1e9;

/// One arm's posterior for the conversion rate.
#[derive(Debug, Clone, Copy)]
enum Posterior {
    Beta { a: f64, b: f64 },
    Normal { mean: f64, sd: f64 },
}

impl Posterior {
    /// Beta(1 + x, 1 + n − x): the uniform Beta(1, 1) prior updated by the data.
    fn from_stat(s: ProportionStat) -> Self {
        let x = s.conversions as f64;
        let (a, b) = (1.0 + x, 1.0 + s.n as f64 - x);
        if a.min(b) > NORMAL_LIMIT {
            let t = a + b;
            Self::Normal {
                mean: a / t,
                sd: (a * b / (t * t * (t + 1.0))).sqrt(),
            }
        } else {
            Self::Beta { a, b }
        }
    }

    fn mean_sd(&self) -> (f64, f64) {
        match *self {
            Self::Beta { a, b } => {
                let t = a + b;
                (a / t, (a * b / (t * t * (t + 1.0))).sqrt())
            }
            Self::Normal { mean, sd } => (mean, sd),
        }
    }

    fn pdf(&self, x: f64) -> f64 {
        match *self {
            Self::Beta { a, b } => beta_pdf(a, b, x),
            Self::Normal { mean, sd } => norm_pdf((x - mean) / sd) / sd,
        }
    }

    fn cdf(&self, x: f64) -> f64 {
        match *self {
            Self::Beta { a, b } => beta_cdf(a, b, x),
            Self::Normal { mean, sd } => norm_cdf((x - mean) / sd),
        }
    }

    fn sf(&self, x: f64) -> f64 {
        match *self {
            Self::Beta { a, b } => beta_sf(a, b, x),
            Self::Normal { mean, sd } => norm_cdf((mean - x) / sd),
        }
    }

    /// E[θ · 1{θ > t}]. For the Beta: m · (1 − I_t(a + 1, b)), since
    /// θ f_{a,b}(θ) = m f_{a+1,b}(θ); for the normal: m Q(z) + sd φ(z).
    fn upper_partial_mean(&self, t: f64) -> f64 {
        match *self {
            Self::Beta { a, b } => a / (a + b) * beta_sf(a + 1.0, b, t),
            Self::Normal { mean, sd } => {
                let z = (t - mean) / sd;
                mean * norm_cdf(-z) + sd * norm_pdf(z)
            }
        }
    }
}

/// Break points for the quadrature: both posteriors' ±40 sd windows in steps
/// of 2.5 sd, so panels resolve both the treatment density and the control
/// CDF's rise, whichever is narrower.
fn break_points(posteriors: &[Posterior]) -> Vec<f64> {
    let mut pts = vec![];
    let mut lo = 1.0_f64;
    let mut hi = 0.0_f64;
    for p in posteriors {
        let (m, sd) = p.mean_sd();
        lo = lo.min((m - 40.0 * sd).max(0.0));
        hi = hi.max((m + 40.0 * sd).min(1.0));
        for k in -16..=16 {
            pts.push(m + 2.5 * f64::from(k) * sd);
        }
    }
    pts.push(lo);
    pts.push(hi);
    pts.retain(|p| (lo..=hi).contains(p));
    pts.sort_by(f64::total_cmp);
    pts.dedup();
    pts
}

/// Beta-Binomial chance to beat control and expected loss.
///
/// P(θ_t > θ_c) = ∫ f_t(x) I_x(a_c, b_c) dx and
/// E[(θ_c − θ_t)⁺] = ∫ f_t(t) [m_c (1 − I_t(a_c + 1, b_c)) − t (1 − I_t(a_c, b_c))] dt,
/// m_c = a_c/(a_c + b_c), both by globally adaptive 20-point Gauss–Legendre
/// with absolute tolerance 1e-12 (agrees with SciPy to 1e-10). Posteriors
/// with min(a, b) > 1e9 use their normal limit (see `NORMAL_LIMIT`).
pub fn beta_binomial(control: ProportionStat, treatment: ProportionStat) -> BayesOutcome {
    if control.n == 0 || treatment.n == 0 {
        return BayesOutcome {
            note: Some(Note::new("empty_arm", "an arm has no units (n = 0)")),
            ..BayesOutcome::default()
        };
    }
    let c = Posterior::from_stat(control);
    let t = Posterior::from_stat(treatment);
    let breaks = break_points(&[c, t]);
    let ctw = integrate(&|x| t.pdf(x) * c.cdf(x), &breaks, QUAD_TOL);
    let loss = integrate(
        &|x| t.pdf(x) * (c.upper_partial_mean(x) - x * c.sf(x)),
        &breaks,
        QUAD_TOL,
    );
    BayesOutcome {
        chance_to_beat_control: finite(ctw.clamp(0.0, 1.0)),
        expected_loss: finite(loss.max(0.0)),
        note: None,
    }
}

/// Normal model: θ_t − θ_c | data ~ N(d, s²), d = x̄_t − x̄_c,
/// s² = Var(x̄_c) + Var(x̄_t). Chance to beat = Φ(d/s);
/// expected loss E[(−D)⁺] = s φ(d/s) − d Φ(−d/s). Exact for this model.
pub fn normal(control: Estimate, treatment: Estimate) -> BayesOutcome {
    let d = treatment.mean - control.mean;
    let s2 = control.variance_of_mean + treatment.variance_of_mean;
    if s2.is_nan() || s2 <= 0.0 || !d.is_finite() {
        return BayesOutcome {
            note: Some(Note::new(
                "zero_variance",
                "the difference has zero variance: the posterior is degenerate",
            )),
            ..BayesOutcome::default()
        };
    }
    let s = s2.sqrt();
    let z = d / s;
    BayesOutcome {
        chance_to_beat_control: finite(norm_cdf(z)),
        expected_loss: finite((s * norm_pdf(z) - d * norm_cdf(-z)).max(0.0)),
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    fn p(n: u64, conversions: u64) -> ProportionStat {
        ProportionStat { n, conversions }
    }

    // python (scipy.integrate.quad over the treatment posterior, points at its mean):
    //   from scipy import integrate, stats
    //   def ctw(xc,nc,xt,nt):
    //     C,T=stats.beta(1+xc,1+nc-xc),stats.beta(1+xt,1+nt-xt); m,s=T.mean(),T.std()
    //     a,b=max(0,m-40*s),min(1,m+40*s)
    //     P=integrate.quad(lambda x:T.pdf(x)*C.cdf(x),a,b,points=[m-3*s,m,m+3*s],epsabs=1e-13,limit=500)[0]
    //     L=integrate.quad(lambda t:T.pdf(t)*(C.mean()*stats.beta(2+xc,1+nc-xc).sf(t)-t*C.sf(t)),a,b,
    //         points=[m-3*s,m,m+3*s],epsabs=1e-13,limit=500)[0]
    //     return P,L
    #[test]
    fn beta_binomial_matches_scipy_quad() {
        for &(c, t, ctw, loss) in REF_BAYES {
            let r = beta_binomial(p(c.1, c.0), p(t.1, t.0));
            close(r.chance_to_beat_control.unwrap(), ctw, 1e-8);
            close(r.expected_loss.unwrap(), loss, 1e-10);
        }
    }

    type Case = ((u64, u64), (u64, u64), f64, f64);
    // ((conversions_c, n_c), (conversions_t, n_t), chance_to_beat, expected_loss)
    const REF_BAYES: &[Case] = &[
        (
            (500, 10000),
            (560, 10000),
            0.9708376637062502,
            3.567456999978926e-05,
        ),
        ((3, 20), (7, 25), 0.8361812047985288, 0.01076952652482758),
        // exact: 51/92 (minimum of two exponential-like races)
        ((0, 50), (0, 40), 0.5543478260869564, 0.008478081058726218),
        (
            (50000, 1000000),
            (50400, 1000000),
            0.9023941130374457,
            1.4199973101956198e-05,
        ),
        (
            (120, 150),
            (140, 160),
            0.9628046007348293,
            0.0006222836768099817,
        ),
        (
            (10, 1000),
            (14, 100),
            0.9999999998494423,
            2.5290286817180474e-13,
        ),
        // ctw(500000, 10000000, 501000, 10000000): posteriors with a, b ~ 1e7
        (
            (500_000, 10_000_000),
            (501_000, 10_000_000),
            0.8474345099094556,
            7.737646534351893e-06,
        ),
    ];

    #[test]
    fn normal_closed_form_matches_scipy() {
        // python: from scipy.stats import norm; d,s=1.2,(4/40+9/55)**.5
        //   norm.cdf(d/s), s*norm.pdf(d/s)-d*norm.cdf(-d/s)
        let r = normal(
            Estimate {
                mean: 10.0,
                variance_of_mean: 0.1,
            },
            Estimate {
                mean: 11.2,
                variance_of_mean: 9.0 / 55.0,
            },
        );
        close(r.chance_to_beat_control.unwrap(), REF_NORMAL.0, 1e-9);
        close(r.expected_loss.unwrap(), REF_NORMAL.1, 1e-9);
    }
    const REF_NORMAL: (f64, f64) = (0.9902831885210174, 0.0016854696333322948);

    #[test]
    fn billions_of_units_agree_with_the_normal_limit() {
        // SciPy's quad fails here (returns ~1e-99); at n = 1e9 the Beta posteriors are
        // normal to ~1e-4: python: from scipy.stats import norm
        //   norm.cdf(1e-5/(2*0.05*0.95/1e9)**0.5) -> 0.8475...
        let r = beta_binomial(p(1_000_000_000, 50_000_000), p(1_000_000_000, 50_010_000));
        let approx = super::super::special::norm_cdf(1e-5 / (2.0 * 0.05 * 0.95 / 1e9_f64).sqrt());
        close(r.chance_to_beat_control.unwrap(), approx, 1e-3);
        // Beyond 1e9 per shape parameter the normal limit is used: still finite and fast.
        // N=2**64-1; norm.cdf(1e9/N/(2*.25/N)**.5) -> 0.62902...
        let r = beta_binomial(
            p(u64::MAX, u64::MAX / 2),
            p(u64::MAX, u64::MAX / 2 + 1_000_000_000),
        );
        close(r.chance_to_beat_control.unwrap(), REF_MAX, 1e-5);
        let r = beta_binomial(
            p(2_000_000_000_000, 1_000_000_000_000),
            p(2_000_000_000_000, 1_000_000_700_000),
        );
        // norm.cdf(7e5/2e12/(2*0.25/2e12)**0.5)
        close(r.chance_to_beat_control.unwrap(), 0.758036347776927, 1e-5);
    }
    const REF_MAX: f64 = 0.629025043013254;

    #[test]
    fn symmetric_arms_give_one_half() {
        let r = beta_binomial(p(1000, 50), p(1000, 50));
        close(r.chance_to_beat_control.unwrap(), 0.5, 1e-10);
    }
}
