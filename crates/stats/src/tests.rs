//! End-to-end, validation, simulation and property tests of [`super::analyze`].

use super::frequentist::{two_proportion_z_test, welch_t_test};
use super::sequential::{default_tau_squared, msprt, DEFAULT_TUNING_N};
use super::*;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, Normal};

fn close(a: Option<f64>, b: f64) {
    let a = a.expect("value present");
    assert!(
        (a - b).abs() <= 5e-6 * (1.0 + b.abs()),
        "{a} vs {b} (5 decimals)"
    );
}

fn parse(v: serde_json::Value) -> AnalyzeRequest {
    serde_json::from_value(v).expect("valid request")
}

fn comparison(r: &AnalyzeResponse, arm: &str) -> Comparison {
    r.arms
        .iter()
        .find(|a| a.name == arm)
        .and_then(|a| a.vs_control.clone())
        .expect("comparison")
}

#[test]
fn proportion_example_reference_values() {
    let req = parse(serde_json::json!({
        "metric": "proportion",
        "arms": [{"name": "control", "n": 10000, "conversions": 500},
                 {"name": "b", "n": 10000, "conversions": 560}],
        "weights": [0.5, 0.5], "alpha": 0.05, "mde": {"relative": 0.1}
    }));
    let r = analyze(&req).unwrap();
    let c = comparison(&r, "b");
    // statsmodels proportions_ztest([560, 500], [10000, 10000]) -> (1.8937529756, 0.0582578060)
    close(c.statistic, 1.8937529756356748);
    close(c.p_value, 0.05825780603351623);
    // confint_proportions_2indep(560, 10000, 500, 10000, method="wald")
    let ci = c.ci.unwrap();
    close(Some(ci[0]), -0.00020922034622822532);
    close(Some(ci[1]), 0.012209220346228223);
    close(c.relative_uplift, 0.12);
    // log-ratio delta method, see frequentist::tests::relative_uplift_delta_method
    let rci = c.relative_ci.unwrap();
    close(Some(rci[0]), -0.00402746072032778);
    close(Some(rci[1]), 0.2594724759251221);
    // scipy quad, see bayes::tests
    close(c.chance_to_beat_control, 0.9708376637062502);
    close(c.expected_loss, 3.567456999978926e-05);
    // One comparison: Holm and BH equal the raw p-value.
    close(c.adjusted_p_value, 0.05825780603351623);
    close(c.bh_adjusted_p_value, 0.05825780603351623);
    // scipy.stats.chisquare([10000, 10000]).pvalue -> 1.0
    close(r.srm_p_value, 1.0);
    assert!(!r.srm_warning);
    // mSPRT with the tuned τ²:
    // python: import math; from scipy.optimize import brentq
    //   r=brentq(lambda r: r-math.log1p(r)+2*math.log(0.05),1,100,xtol=1e-15)
    //   t2=r*(.05*.95+.056*.944)/5000; V=(.05*.95+.056*.944)/1e4; d=.006
    //   L=math.sqrt(V/(V+t2))*math.exp(t2*d*d/(2*V*(V+t2))); min(1,1/L)
    close(c.tau_squared, REF_SEQ.0);
    close(c.sequential_p_value, REF_SEQ.1);
    // Wilson interval of control: proportion_confint(500, 10000, method="wilson")
    match &r.arms[0].estimate {
        ArmEstimate::Proportion { rate, rate_ci, .. } => {
            close(*rate, 0.05);
            close(Some(rate_ci.unwrap()[0]), 0.04589848269058477);
        }
        ArmEstimate::Mean { .. } => panic!("proportion arm expected"),
    }
    // Power: see power::tests (closed form solved with brentq): p1=.05, p2=.055.
    let p = r.power.unwrap();
    assert_eq!(p.required_n_per_arm, Some(31234));
    close(p.absolute_mde, 0.005);
    // pw(.05,.055,10000,10000) in power::tests' python -> achieved power
    close(p.achieved_power, REF_ACHIEVED);
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}
const REF_SEQ: (f64, f64) = (0.00016483719251628366, 0.769805172043313);
const REF_ACHIEVED: f64 = 0.35410754167819625;

#[test]
fn mean_example_with_cuped_and_three_arms() {
    let req = parse(serde_json::json!({
        "metric": "mean", "control": "a",
        "arms": [
            {"name": "b", "n": 55, "mean": 11.2, "variance": 9.0},
            {"name": "a", "n": 40, "mean": 10.0, "variance": 4.0},
            {"name": "c", "n": 50, "mean": 10.1, "variance": 5.0}
        ]
    }));
    let r = analyze(&req).unwrap();
    assert_eq!(r.control, "a");
    let b = comparison(&r, "b");
    // scipy ttest_ind_from_stats(11.2, 3, 55, 10.0, 2, 40, equal_var=False)
    close(b.statistic, 2.3371069649284846);
    close(b.p_value, 0.0215940033722152);
    close(b.df, 92.39154929577465);
    let c = comparison(&r, "c");
    // python: from statsmodels.stats.multitest import multipletests
    //   from scipy.stats import ttest_ind_from_stats as t
    //   p=[t(11.2,3,55,10,2,40,equal_var=False).pvalue, t(10.1,5**.5,50,10,2,40,equal_var=False).pvalue]
    //   multipletests(p,method="holm")[1], multipletests(p,method="fdr_bh")[1]
    close(c.p_value, REF_C.0);
    close(b.adjusted_p_value, REF_C.1);
    close(c.adjusted_p_value, REF_C.2);
    close(b.bh_adjusted_p_value, REF_C.3);
    close(c.bh_adjusted_p_value, REF_C.4);
    // normal posterior, see bayes::tests
    close(b.chance_to_beat_control, 0.9902831885210174);

    // CUPED: same arms with a covariate; θ pooled within arms.
    let req = parse(serde_json::json!({
        "metric": "mean",
        "arms": [
            {"name": "a", "n": 100, "mean": 10.0, "variance": 9.0,
             "covariate_mean": 5.0, "covariate_variance": 4.0, "covariance": 3.0},
            {"name": "b", "n": 120, "mean": 10.5, "variance": 8.0,
             "covariate_mean": 5.2, "covariate_variance": 3.5, "covariance": 2.4}
        ]
    }));
    let r = analyze(&req).unwrap();
    let cu = r.cuped.clone().unwrap();
    // see cuped::tests for the python
    close(cu.theta, 0.7170461538461538);
    close(cu.variance_reduction, 0.22666906632163275);
    let b = comparison(&r, "b");
    // python: va=9-2*th*3+th*th*4, vb=8-2*th*2.4+th*th*3.5 with th above;
    //   ttest_ind_from_stats(10.434813986013985, vb**.5, 120, 10.078223216783217, va**.5, 100, equal_var=False)
    close(b.difference, 10.434813986013985 - 10.078223216783217);
    close(b.p_value, REF_CUPED_P);
}
const REF_C: (f64, f64, f64, f64, f64) = (
    0.8235883249992547,
    0.0431880067444304,
    0.8235883249992547,
    0.0431880067444304,
    0.8235883249992547,
);
const REF_CUPED_P: f64 = 0.30554149194238744;

#[test]
fn srm_is_flagged() {
    let req = parse(serde_json::json!({
        "metric": "proportion", "weights": [1, 1],
        "arms": [{"name": "a", "n": 5300, "conversions": 10}, {"name": "b", "n": 4700, "conversions": 10}]
    }));
    let r = analyze(&req).unwrap();
    assert!(r.srm_warning);
    // scipy.stats.chisquare([5300, 4700]).pvalue
    close(r.srm_p_value, 1.9731752900753933e-09);
    assert!(r.warnings.iter().any(|w| w.code == "sample_ratio_mismatch"));
}

#[test]
fn response_json_round_trips_and_has_no_nan() {
    let req = parse(serde_json::json!({
        "metric": "mean",
        "arms": [{"name": "a", "n": 0}, {"name": "b", "n": 1, "mean": 3.0, "variance": 0.0}]
    }));
    let r = analyze(&req).unwrap();
    let text = serde_json::to_string(&r).unwrap();
    assert!(!text.contains("NaN") && !text.contains("inf"));
    let back: AnalyzeResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(back, r);
}

fn err(v: serde_json::Value) -> StatsError {
    analyze(&parse(v)).expect_err("request must be rejected")
}

#[test]
fn validation_errors_name_the_field() {
    let e = err(serde_json::json!({"metric": "proportion",
        "arms": [{"name": "a", "n": 10, "conversions": 1}, {"name": "b", "n": 10, "conversions": 11}]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::InvalidValue, "arms[1].conversions")
    );

    let e = err(serde_json::json!({"metric": "proportion",
        "arms": [{"name": "a", "n": 10, "conversions": 1, "mean": 0.1}]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::UnexpectedField, "arms[0].mean")
    );

    let e =
        err(serde_json::json!({"metric": "mean", "arms": [{"name": "a", "n": 10, "mean": 1.0}]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::MissingField, "arms[0].variance")
    );

    let e = err(serde_json::json!({"metric": "proportion",
        "arms": [{"name": "a", "n": 1, "conversions": 0}, {"name": "a", "n": 1, "conversions": 0}]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::DuplicateArm, "arms[1].name")
    );

    let e = err(serde_json::json!({"metric": "proportion", "control": "z",
        "arms": [{"name": "a", "n": 1, "conversions": 0}]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::UnknownControl, "control")
    );

    let e = err(
        serde_json::json!({"metric": "proportion", "weights": [1.0, 0.0],
        "arms": [{"name": "a", "n": 1, "conversions": 0}, {"name": "b", "n": 1, "conversions": 0}]}),
    );
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::InvalidValue, "weights[1]")
    );

    let e = err(serde_json::json!({"metric": "proportion", "alpha": 1.5,
        "arms": [{"name": "a", "n": 1, "conversions": 0}]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::InvalidValue, "alpha")
    );

    let e = err(serde_json::json!({"metric": "mean", "arms": [
        {"name": "a", "n": 5, "mean": 1.0, "variance": 1.0, "covariate_mean": 1.0, "covariate_variance": 1.0},
    ]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::MissingField, "arms[0].covariance")
    );

    let e = err(serde_json::json!({"metric": "mean", "arms": [
        {"name": "a", "n": 5, "mean": 1.0, "variance": 1.0, "covariate_mean": 1.0, "covariate_variance": 1.0, "covariance": 2.0},
    ]}));
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::InvalidValue, "arms[0].covariance")
    );

    let e = err(
        serde_json::json!({"metric": "proportion", "mde": {"relative": -0.1},
        "arms": [{"name": "a", "n": 1, "conversions": 0}]}),
    );
    assert_eq!(
        (e.code, e.path.as_str()),
        (ErrorCode::InvalidValue, "mde.relative")
    );

    let e = err(serde_json::json!({"metric": "proportion", "arms": []}));
    assert_eq!((e.code, e.path.as_str()), (ErrorCode::InvalidValue, "arms"));

    // Unknown fields are rejected at parse time.
    let e = parse_request(br#"{"metric":"proportion","arms":[],"alpah":0.1}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidJson);
    assert!(e.message.contains("alpah"), "{}", e.message);
    let e = parse_request(br#"{"metric":"proportion","arms":[{"name":"a","n":1,"conversion":0}]}"#)
        .unwrap_err();
    assert!(e.message.contains("conversion"), "{}", e.message);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["code"], "invalid_json");
}

#[test]
fn degenerate_inputs_give_nulls_and_warnings() {
    let cases = [
        // one arm only
        serde_json::json!({"metric": "proportion", "arms": [{"name": "a", "n": 100, "conversions": 5}]}),
        // n = 0
        serde_json::json!({"metric": "proportion", "mde": {"relative": 0.1},
            "arms": [{"name": "a", "n": 0, "conversions": 0}, {"name": "b", "n": 100, "conversions": 5}]}),
        // all conversions
        serde_json::json!({"metric": "proportion", "mde": {"absolute": 0.1},
            "arms": [{"name": "a", "n": 100, "conversions": 100}, {"name": "b", "n": 50, "conversions": 50}]}),
        // zero variance
        serde_json::json!({"metric": "mean", "mde": {"absolute": 1.0},
            "arms": [{"name": "a", "n": 100, "mean": 1.0, "variance": 0.0}, {"name": "b", "n": 100, "mean": 1.0, "variance": 0.0}]}),
        // zero variance covariate and zero control mean
        serde_json::json!({"metric": "mean", "mde": {"relative": 0.1},
            "arms": [{"name": "a", "n": 10, "mean": 0.0, "variance": 1.0, "covariate_mean": 1.0, "covariate_variance": 0.0, "covariance": 0.0},
                     {"name": "b", "n": 10, "mean": 1.0, "variance": 1.0, "covariate_mean": 1.0, "covariate_variance": 0.0, "covariance": 0.0}]}),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let r = analyze(&parse(case)).unwrap();
        assert!(!r.warnings.is_empty(), "case {i} should warn");
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains("NaN"), "case {i}");
        if let Some(c) = r.arms.iter().find_map(|a| a.vs_control.as_ref()) {
            assert!(c.p_value.is_none() || i == 4, "case {i}: {c:?}");
        }
    }
}

// ---------------------------------------------------------------- simulations

/// Kolmogorov–Smirnov distance of a sample from Uniform(0, 1).
fn ks_uniform(mut p: Vec<f64>) -> f64 {
    p.sort_by(f64::total_cmp);
    let n = p.len() as f64;
    p.iter()
        .enumerate()
        .map(|(i, &x)| (x - i as f64 / n).max((i as f64 + 1.0) / n - x))
        .fold(0.0, f64::max)
}

/// 1% critical value of the one-sample KS statistic, asymptotic: 1.628/√n.
fn ks_critical_1pct(n: usize) -> f64 {
    1.628 / (n as f64).sqrt()
}

#[test]
fn p_values_are_uniform_under_the_null() {
    let mut rng = StdRng::seed_from_u64(7);
    let sims = 2000;
    // Proportions: n = 2000 per arm, p = 0.3.
    let bin = Binomial::new(2000, 0.3).unwrap();
    let p: Vec<f64> = (0..sims)
        .map(|_| {
            let c = ProportionStat {
                n: 2000,
                conversions: bin.sample(&mut rng),
            };
            let t = ProportionStat {
                n: 2000,
                conversions: bin.sample(&mut rng),
            };
            two_proportion_z_test(c, t, 0.05).p_value.unwrap()
        })
        .collect();
    let d = ks_uniform(p);
    eprintln!(
        "z-test KS D = {d:.4} (1% critical {:.4})",
        ks_critical_1pct(sims)
    );
    assert!(d < ks_critical_1pct(sims), "z-test KS {d}");
    // Means: unequal variances and sizes (Welch's raison d'être).
    let (nc, nt) = (15usize, 40usize);
    let (gc, gt) = (
        Normal::new(5.0, 1.0).unwrap(),
        Normal::new(5.0, 3.0).unwrap(),
    );
    let p: Vec<f64> = (0..sims)
        .map(|_| {
            let c: MeanStat = (0..nc)
                .map(|_| MeanStat::observe(gc.sample(&mut rng)))
                .sum();
            let t: MeanStat = (0..nt)
                .map(|_| MeanStat::observe(gt.sample(&mut rng)))
                .sum();
            let (mc, vc) = (c.mean().unwrap(), c.variance().unwrap());
            let (mt, vt) = (t.mean().unwrap(), t.variance().unwrap());
            welch_t_test(c.n, mc, vc, t.n, mt, vt, 0.05)
                .p_value
                .unwrap()
        })
        .collect();
    let d = ks_uniform(p);
    eprintln!(
        "Welch KS D = {d:.4} (1% critical {:.4})",
        ks_critical_1pct(sims)
    );
    assert!(d < ks_critical_1pct(sims), "Welch KS {d}");
}

#[test]
fn peeking_inflates_fixed_horizon_but_not_msprt() {
    // 1000 A/A experiments, 50 looks, 200 units per arm per look, p = 0.1.
    let mut rng = StdRng::seed_from_u64(11);
    let (sims, looks, batch, alpha) = (1000, 50, 200u64, 0.05);
    let bin = Binomial::new(batch, 0.1).unwrap();
    let (mut seq_fp, mut fixed_fp) = (0, 0);
    for _ in 0..sims {
        let (mut c, mut t) = (ProportionStat::default(), ProportionStat::default());
        let (mut seq_hit, mut fixed_hit) = (false, false);
        for _ in 0..looks {
            c += ProportionStat {
                n: batch,
                conversions: bin.sample(&mut rng),
            };
            t += ProportionStat {
                n: batch,
                conversions: bin.sample(&mut rng),
            };
            let (pc, pt) = (c.rate().unwrap(), t.rate().unwrap());
            let (vc, vt) = (pc * (1.0 - pc), pt * (1.0 - pt));
            let tau2 = default_tau_squared(vc, vt, DEFAULT_TUNING_N, alpha);
            let v = vc / c.n as f64 + vt / t.n as f64;
            seq_hit |= msprt(pt - pc, v, tau2, alpha)
                .p_value
                .is_some_and(|p| p <= alpha);
            fixed_hit |= two_proportion_z_test(c, t, alpha)
                .p_value
                .is_some_and(|p| p <= alpha);
        }
        seq_fp += usize::from(seq_hit);
        fixed_fp += usize::from(fixed_hit);
    }
    let (seq_rate, fixed_rate) = (seq_fp as f64 / sims as f64, fixed_fp as f64 / sims as f64);
    // Monte Carlo tolerance: 3 standard errors of a 5% rate over 1000 runs.
    let tol = 3.0 * (alpha * (1.0 - alpha) / sims as f64).sqrt();
    eprintln!(
        "false-positive rate over {looks} looks: mSPRT {seq_rate:.3}, z-test {fixed_rate:.3}"
    );
    assert!(
        seq_rate <= alpha + tol,
        "mSPRT false-positive rate {seq_rate}"
    );
    assert!(
        fixed_rate > 2.0 * alpha,
        "peeking z-test false-positive rate {fixed_rate}"
    );
}

#[test]
fn simulated_power_matches_the_calculator() {
    let mut rng = StdRng::seed_from_u64(23);
    // Proportions: 10% baseline, +10% relative, alpha 0.05, power 0.8.
    let n = power::proportion_sample_size(0.10, 0.11, 0.05, 0.8)
        .unwrap()
        .ceil() as u64;
    let predicted = power::proportion_power(0.10, 0.11, n as f64, n as f64, 0.05).unwrap();
    let sims = 2000;
    let (bc, bt) = (
        Binomial::new(n, 0.10).unwrap(),
        Binomial::new(n, 0.11).unwrap(),
    );
    let hits = (0..sims)
        .filter(|_| {
            let c = ProportionStat {
                n,
                conversions: bc.sample(&mut rng),
            };
            let t = ProportionStat {
                n,
                conversions: bt.sample(&mut rng),
            };
            two_proportion_z_test(c, t, 0.05).p_value.unwrap() <= 0.05
        })
        .count();
    let observed = hits as f64 / sims as f64;
    eprintln!("proportion power: n = {n}/arm, simulated {observed:.3}, predicted {predicted:.3}");
    // Tolerance 0.03 ≈ 3.4 Monte Carlo standard errors (√(0.8·0.2/2000) = 0.0089).
    assert!(
        (observed - predicted).abs() < 0.03,
        "simulated {observed} vs predicted {predicted}"
    );

    // Means: Δ = 0.5, σ = 2 (d = 0.25), Welch test on normal data.
    let n = power::mean_sample_size(0.5, 4.0, 0.05, 0.8).unwrap().ceil() as usize;
    let sims = 1000;
    let (gc, gt) = (
        Normal::new(0.0, 2.0).unwrap(),
        Normal::new(0.5, 2.0).unwrap(),
    );
    let hits = (0..sims)
        .filter(|_| {
            let c: MeanStat = (0..n).map(|_| MeanStat::observe(gc.sample(&mut rng))).sum();
            let t: MeanStat = (0..n).map(|_| MeanStat::observe(gt.sample(&mut rng))).sum();
            let r = welch_t_test(
                c.n,
                c.mean().unwrap(),
                c.variance().unwrap(),
                t.n,
                t.mean().unwrap(),
                t.variance().unwrap(),
                0.05,
            );
            r.p_value.unwrap() <= 0.05
        })
        .count();
    let observed = hits as f64 / sims as f64;
    eprintln!("mean power: n = {n}/arm, simulated {observed:.3}, predicted 0.8");
    // Tolerance 0.04 ≈ 3.2 standard errors (√(0.8·0.2/1000) = 0.0126).
    assert!((observed - 0.8).abs() < 0.04, "simulated {observed} vs 0.8");
}

#[test]
fn cuped_reduces_variance_in_simulation() {
    // y = x + noise; corr(x, y) = 1/√2 ⇒ theoretical reduction ρ² = 0.5.
    let mut rng = StdRng::seed_from_u64(5);
    let g = Normal::new(0.0, 1.0).unwrap();
    let arm = |rng: &mut StdRng, name: &str, lift: f64| {
        (0..4000)
            .map(|_| {
                let x: f64 = g.sample(rng);
                CovariateStat::observe(x + g.sample(rng) + lift, x)
            })
            .sum::<CovariateStat>()
            .to_arm(name)
    };
    let req = AnalyzeRequest {
        metric: Metric::Mean,
        arms: vec![arm(&mut rng, "a", 0.0), arm(&mut rng, "b", 0.05)],
        control: None,
        weights: None,
        alpha: None,
        power: None,
        mde: None,
        tau: None,
        sequential_tuning_n: None,
        correction: None,
    };
    let r = analyze(&req).unwrap();
    let vr = r.cuped.unwrap().variance_reduction.unwrap();
    eprintln!("CUPED variance reduction {vr:.3} (theory 0.5)");
    assert!((vr - 0.5).abs() < 0.05, "variance reduction {vr}");
}

// ---------------------------------------------------------------- properties

fn arb_proportion_arm() -> impl Strategy<Value = (u64, f64)> {
    prop_oneof![
        Just(0u64),
        1u64..20,
        20u64..100_000,
        100_000u64..10_000_000_000,
        Just(u64::MAX),
    ]
    .prop_flat_map(|n| (Just(n), prop_oneof![Just(0.0), Just(1.0), 0.0f64..=1.0]))
}

fn arb_mean_arm() -> impl Strategy<Value = (u64, f64, f64, f64, f64)> {
    (
        prop_oneof![
            Just(0u64),
            1u64..5,
            5u64..1_000_000,
            1_000_000u64..u64::MAX,
            Just(u64::MAX)
        ],
        -1e6f64..1e6,
        prop_oneof![Just(0.0), 1e-9f64..1e6],
        prop_oneof![Just(0.0), 1e-6f64..1e4],
        -1.0f64..=1.0,
    )
}

fn arb_common() -> impl Strategy<Value = (f64, Option<Mde>, Option<f64>, bool, u8)> {
    (
        0.001f64..0.5,
        prop_oneof![
            Just(None),
            (1e-4f64..10.0).prop_map(|v| Some(Mde::Absolute(v))),
            (1e-3f64..2.0).prop_map(|v| Some(Mde::Relative(v)))
        ],
        prop_oneof![Just(None), (1e-6f64..100.0).prop_map(Some)],
        any::<bool>(),
        0u8..3,
    )
}

fn check_response(r: &AnalyzeResponse) -> Result<(), TestCaseError> {
    prop_assert!(
        !r.warnings.iter().any(|w| w.code == "numerical_issue"),
        "{:?}",
        r.warnings
    );
    let text = serde_json::to_string(r).expect("serializable");
    prop_assert!(!text.contains("NaN"));
    let unit = |x: Option<f64>| x.is_none_or(|v| (0.0..=1.0).contains(&v));
    prop_assert!(unit(r.srm_p_value));
    for a in &r.arms {
        if let Some(c) = &a.vs_control {
            for p in [
                c.p_value,
                c.adjusted_p_value,
                c.bh_adjusted_p_value,
                c.sequential_p_value,
                c.chance_to_beat_control,
                c.achieved_power,
            ] {
                prop_assert!(unit(p), "{c:?}");
            }
            if let (Some(p), Some(h)) = (c.p_value, c.adjusted_p_value) {
                prop_assert!(h >= p - 1e-15);
            }
            if let Some([lo, hi]) = c.ci {
                prop_assert!(lo <= hi);
            }
            prop_assert!(c.expected_loss.is_none_or(|l| l >= 0.0));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn analyze_proportions_never_panics_or_emits_nan(
        arms in proptest::collection::vec(arb_proportion_arm(), 1..5),
        (alpha, mde, tau, use_weights, corr) in arb_common(),
    ) {
        let req = AnalyzeRequest {
            metric: Metric::Proportion,
            weights: use_weights.then(|| (1..=arms.len()).map(|i| i as f64).collect()),
            arms: arms.iter().enumerate().map(|(i, &(n, f))| ProportionStat {
                n, conversions: ((n as f64) * f).floor() as u64,
            }.to_arm(format!("arm{i}"))).collect(),
            control: None, alpha: Some(alpha), power: None, mde, tau,
            sequential_tuning_n: None,
            correction: Some([Correction::Holm, Correction::Bh, Correction::None][corr as usize]),
        };
        let r = analyze(&req).expect("valid request");
        check_response(&r)?;
    }

    #[test]
    fn analyze_means_never_panics_or_emits_nan(
        arms in proptest::collection::vec(arb_mean_arm(), 1..5),
        (alpha, mde, tau, use_cuped, _corr) in arb_common(),
    ) {
        let req = AnalyzeRequest {
            metric: Metric::Mean,
            arms: arms.iter().enumerate().map(|(i, &(n, mean, var, xvar, rho))| ArmInput {
                name: format!("arm{i}"), n, mean: Some(mean), variance: Some(var),
                covariate_mean: use_cuped.then_some(mean / 2.0),
                covariate_variance: use_cuped.then_some(xvar),
                covariance: use_cuped.then_some(rho * (var * xvar).sqrt()),
                ..ArmInput::default()
            }).collect(),
            control: Some(format!("arm{}", arms.len() - 1)),
            weights: None, alpha: Some(alpha), power: Some(0.9), mde, tau,
            sequential_tuning_n: Some(100.0), correction: None,
        };
        let r = analyze(&req).expect("valid request");
        check_response(&r)?;
    }
}
