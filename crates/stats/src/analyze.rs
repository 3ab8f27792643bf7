//! Request validation and the orchestration of one analysis.
//!
//! Owns: [`analyze`]: validates an [`AnalyzeRequest`] (errors name the field
//! path), runs every building block for each non-control arm against control,
//! adjusts p-values across arms, checks the sample ratio, computes power, and
//! turns every degenerate-data note into a `null` plus a [`Warning`].
//! CPU-only and bounded (≤ `MAX_ARMS` arms, each a few quadratures): callers
//! on an async runtime should still run it off the reactor threads
//! (`spawn_blocking`) for large batches.

use super::bayes;
use super::cuped::{cuped, CupedArm};
use super::error::{ErrorCode, Note, StatsError};
use super::frequentist::{
    finite, mean_interval, relative_uplift, two_proportion_z_test, welch_t_test, wilson_interval,
    Estimate, TestOutcome,
};
use super::multiple::{adjust_options, benjamini_hochberg, holm};
use super::power;
use super::schema::*;
use super::sequential::{self, DEFAULT_TUNING_N};
use super::srm::srm_test;
use super::suffstats::ProportionStat;

/// Most arms one request may hold.
pub const MAX_ARMS: usize = 100;
/// Longest arm name, in bytes.
pub const MAX_NAME_LEN: usize = 200;

struct Params {
    alpha: f64,
    power: f64,
    weights: Vec<f64>,
    control: usize,
    tuning_n: f64,
    correction: Correction,
    cuped: bool,
}

fn check_prob(value: Option<f64>, default: f64, path: &str) -> Result<f64, StatsError> {
    let v = value.unwrap_or(default);
    if v.is_finite() && v > 0.0 && v < 1.0 {
        Ok(v)
    } else {
        Err(StatsError::invalid(
            path,
            format!("must be strictly between 0 and 1, got {v}"),
        ))
    }
}

fn unexpected(path: String, metric: &str) -> StatsError {
    StatsError::new(
        ErrorCode::UnexpectedField,
        path,
        format!("not accepted with metric \"{metric}\""),
    )
}

fn validate(req: &AnalyzeRequest) -> Result<Params, StatsError> {
    let alpha = check_prob(req.alpha, 0.05, "alpha")?;
    let power = check_prob(req.power, 0.8, "power")?;
    if req.arms.is_empty() {
        return Err(StatsError::invalid("arms", "at least one arm is required"));
    }
    if req.arms.len() > MAX_ARMS {
        return Err(StatsError::invalid(
            "arms",
            format!(
                "at most {MAX_ARMS} arms are allowed, got {}",
                req.arms.len()
            ),
        ));
    }
    let mut cuped_arms = 0;
    for (i, arm) in req.arms.iter().enumerate() {
        let p = |field: &str| format!("arms[{i}].{field}");
        if arm.name.is_empty() || arm.name.len() > MAX_NAME_LEN {
            return Err(StatsError::invalid(
                p("name"),
                format!("must be 1 to {MAX_NAME_LEN} bytes long"),
            ));
        }
        if req.arms[..i].iter().any(|a| a.name == arm.name) {
            return Err(StatsError::new(
                ErrorCode::DuplicateArm,
                p("name"),
                format!("arm name \"{}\" is used twice", arm.name),
            ));
        }
        let cuped_fields = [
            ("covariate_mean", arm.covariate_mean),
            ("covariate_variance", arm.covariate_variance),
            ("covariance", arm.covariance),
        ];
        match req.metric {
            Metric::Proportion => {
                for (field, v) in [("mean", arm.mean), ("variance", arm.variance)]
                    .into_iter()
                    .chain(cuped_fields)
                {
                    if v.is_some() {
                        return Err(unexpected(p(field), "proportion"));
                    }
                }
                let Some(conversions) = arm.conversions else {
                    return Err(StatsError::new(
                        ErrorCode::MissingField,
                        p("conversions"),
                        "required with metric \"proportion\"",
                    ));
                };
                if conversions > arm.n {
                    return Err(StatsError::invalid(
                        p("conversions"),
                        format!("{conversions} conversions exceed n = {}", arm.n),
                    ));
                }
            }
            Metric::Mean => {
                if arm.conversions.is_some() {
                    return Err(unexpected(p("conversions"), "mean"));
                }
                for (field, v) in [("mean", arm.mean), ("variance", arm.variance)] {
                    match v {
                        None if arm.n > 0 => {
                            return Err(StatsError::new(
                                ErrorCode::MissingField,
                                p(field),
                                "required with metric \"mean\" when n > 0",
                            ))
                        }
                        Some(x) if !x.is_finite() => {
                            return Err(StatsError::invalid(p(field), "must be finite"))
                        }
                        _ => {}
                    }
                }
                if arm.variance.is_some_and(|v| v < 0.0) {
                    return Err(StatsError::invalid(p("variance"), "must be ≥ 0"));
                }
                let given = cuped_fields.iter().filter(|(_, v)| v.is_some()).count();
                if given > 0 {
                    if let Some((field, _)) = cuped_fields.iter().find(|(_, v)| v.is_none()) {
                        return Err(StatsError::new(
                            ErrorCode::MissingField,
                            p(field),
                            "CUPED needs covariate_mean, covariate_variance and covariance together",
                        ));
                    }
                    for (field, v) in cuped_fields {
                        if v.is_some_and(|x| !x.is_finite()) {
                            return Err(StatsError::invalid(p(field), "must be finite"));
                        }
                    }
                    let vx = arm.covariate_variance.unwrap_or(0.0);
                    if vx < 0.0 {
                        return Err(StatsError::invalid(p("covariate_variance"), "must be ≥ 0"));
                    }
                    let vy = arm.variance.unwrap_or(0.0);
                    let cov = arm.covariance.unwrap_or(0.0);
                    if cov.abs() > (vx * vy).sqrt() * (1.0 + 1e-9) + 1e-300 {
                        return Err(StatsError::invalid(
                            p("covariance"),
                            "|covariance| exceeds √(variance · covariate_variance) (Cauchy–Schwarz)",
                        ));
                    }
                    cuped_arms += 1;
                }
            }
        }
    }
    if cuped_arms > 0 && cuped_arms < req.arms.len() {
        let i = req
            .arms
            .iter()
            .position(|a| a.covariate_mean.is_none())
            .unwrap_or(0);
        return Err(StatsError::new(
            ErrorCode::MissingField,
            format!("arms[{i}].covariate_mean"),
            "CUPED inputs must be given for every arm or for none",
        ));
    }
    let weights = match &req.weights {
        None => vec![1.0; req.arms.len()],
        Some(w) => {
            if w.len() != req.arms.len() {
                return Err(StatsError::invalid(
                    "weights",
                    format!("{} weights for {} arms", w.len(), req.arms.len()),
                ));
            }
            if let Some(i) = w.iter().position(|x| !(x.is_finite() && *x > 0.0)) {
                return Err(StatsError::invalid(
                    format!("weights[{i}]"),
                    "must be positive and finite",
                ));
            }
            w.clone()
        }
    };
    let control = match &req.control {
        None => 0,
        Some(name) => req
            .arms
            .iter()
            .position(|a| &a.name == name)
            .ok_or_else(|| {
                StatsError::new(
                    ErrorCode::UnknownControl,
                    "control",
                    format!("no arm is named \"{name}\""),
                )
            })?,
    };
    match req.mde {
        Some(Mde::Absolute(v)) if !(v.is_finite() && v > 0.0) => {
            return Err(StatsError::invalid(
                "mde.absolute",
                "must be positive and finite",
            ))
        }
        Some(Mde::Relative(v)) if !(v.is_finite() && v > 0.0) => {
            return Err(StatsError::invalid(
                "mde.relative",
                "must be positive and finite",
            ))
        }
        _ => {}
    }
    if let Some(t) = req.tau {
        if !(t.is_finite() && t > 0.0) {
            return Err(StatsError::invalid("tau", "must be positive and finite"));
        }
    }
    let tuning_n = req.sequential_tuning_n.unwrap_or(DEFAULT_TUNING_N);
    if !(tuning_n.is_finite() && tuning_n >= 1.0) {
        return Err(StatsError::invalid(
            "sequential_tuning_n",
            "must be ≥ 1 and finite",
        ));
    }
    Ok(Params {
        alpha,
        power,
        weights,
        control,
        tuning_n,
        correction: req.correction.unwrap_or_default(),
        cuped: cuped_arms > 0,
    })
}

/// One arm after CUPED, in the form every mean/proportion test consumes.
#[derive(Clone, Copy)]
struct ArmStats {
    n: u64,
    mean: f64,
    /// Per-unit variance (sample variance; p(1 − p) for rates).
    unit_variance: f64,
    prop: Option<ProportionStat>,
}

impl ArmStats {
    fn estimate(&self) -> Estimate {
        Estimate {
            mean: self.mean,
            variance_of_mean: if self.n > 0 {
                self.unit_variance / self.n as f64
            } else {
                f64::INFINITY
            },
        }
    }
}

struct Warnings(Vec<Warning>);

impl Warnings {
    fn push(&mut self, note: Option<Note>, arm: Option<&str>) {
        if let Some(n) = note {
            let w = Warning {
                code: n.code.to_string(),
                message: n.message,
                arm: arm.map(str::to_string),
            };
            if !self.0.contains(&w) {
                self.0.push(w);
            }
        }
    }
}

/// Analyzes summary statistics of an experiment's arms: see the module docs
/// of [`super`] and `docs/statistics.md` for every formula.
///
/// # Errors
/// A [`StatsError`] naming the offending field when the request is malformed.
/// Degenerate data (empty arms, zero variance, one arm) never errors: the
/// affected statistics are `null` and `warnings` says why.
pub fn analyze(req: &AnalyzeRequest) -> Result<AnalyzeResponse, StatsError> {
    let params = validate(req)?;
    let alpha = params.alpha;
    let mut warnings = Warnings(vec![]);
    let names: Vec<&str> = req.arms.iter().map(|a| a.name.as_str()).collect();

    if req.arms.len() == 1 {
        warnings.push(
            Some(Note::new(
                "single_arm",
                "only one arm: there is nothing to compare against control",
            )),
            None,
        );
    }
    for arm in &req.arms {
        if arm.n == 0 {
            warnings.push(
                Some(Note::new("empty_arm", "arm has no units (n = 0)")),
                Some(&arm.name),
            );
        }
    }

    // Per-arm statistics, CUPED-adjusted for means when requested.
    let mut cuped_summary = None;
    let mut adjusted: Vec<Option<(f64, f64, Option<f64>)>> = vec![None; req.arms.len()];
    let stats: Vec<ArmStats> = match req.metric {
        Metric::Proportion => req
            .arms
            .iter()
            .map(|a| {
                let p = ProportionStat {
                    n: a.n,
                    conversions: a.conversions.unwrap_or(0),
                };
                let rate = p.rate().unwrap_or(0.0);
                ArmStats {
                    n: a.n,
                    mean: rate,
                    unit_variance: rate * (1.0 - rate),
                    prop: Some(p),
                }
            })
            .collect(),
        Metric::Mean => {
            let mut s: Vec<ArmStats> = req
                .arms
                .iter()
                .map(|a| ArmStats {
                    n: a.n,
                    mean: a.mean.unwrap_or(0.0),
                    unit_variance: a.variance.unwrap_or(0.0),
                    prop: None,
                })
                .collect();
            if params.cuped {
                let inputs: Vec<CupedArm> = req
                    .arms
                    .iter()
                    .zip(&s)
                    .map(|(a, st)| CupedArm {
                        n: a.n,
                        mean: st.mean,
                        variance: st.unit_variance,
                        covariate_mean: a.covariate_mean.unwrap_or(0.0),
                        covariate_variance: a.covariate_variance.unwrap_or(0.0),
                        covariance: a.covariance.unwrap_or(0.0),
                    })
                    .collect();
                let out = cuped(&inputs);
                warnings.push(out.note.clone(), None);
                if out.theta.is_some() {
                    for ((st, adj), slot) in s.iter_mut().zip(&out.arms).zip(&mut adjusted) {
                        st.mean = adj.mean;
                        st.unit_variance = adj.variance;
                        *slot = Some((adj.mean, adj.variance, adj.variance_reduction));
                    }
                }
                cuped_summary = Some(CupedSummary {
                    theta: out.theta,
                    variance_reduction: out.variance_reduction,
                });
            }
            s
        }
    };

    let control = stats[params.control];
    let tau_ratio = sequential::optimal_tau_ratio(alpha);

    // Power inputs shared by all comparisons.
    let baseline = (control.n > 0).then_some(control.mean);
    let absolute_mde = match (req.mde, baseline) {
        (Some(Mde::Absolute(d)), _) => Some(d),
        (Some(Mde::Relative(r)), Some(b)) if b != 0.0 => Some(r * b.abs()),
        (Some(Mde::Relative(_)), _) => {
            warnings.push(
                Some(Note::new(
                    "zero_baseline",
                    "control rate/mean is 0 or unknown: a relative MDE is undefined",
                )),
                None,
            );
            None
        }
        (None, _) => None,
    };
    let pooled_variance = {
        let (num, den) = stats.iter().fold((0.0, 0.0), |(num, den), s| {
            let dof = (s.n as f64 - 1.0).max(0.0);
            (num + dof * s.unit_variance, den + dof)
        });
        (den > 0.0).then(|| num / den).and_then(finite)
    };
    let achieved = |t: &ArmStats| -> Option<f64> {
        let d = absolute_mde?;
        match req.metric {
            Metric::Proportion => power::proportion_power(
                control.mean,
                control.mean + d,
                control.n as f64,
                t.n as f64,
                alpha,
            ),
            Metric::Mean => {
                power::mean_power(d, pooled_variance?, control.n as f64, t.n as f64, alpha)
            }
        }
    };

    let mut comparisons: Vec<Option<Comparison>> = vec![None; stats.len()];
    for (i, t) in stats.iter().enumerate() {
        if i == params.control {
            continue;
        }
        let name = Some(names[i]);
        let test: TestOutcome = match req.metric {
            Metric::Proportion => two_proportion_z_test(
                control.prop.unwrap_or_default(),
                t.prop.unwrap_or_default(),
                alpha,
            ),
            Metric::Mean => welch_t_test(
                control.n,
                control.mean,
                control.unit_variance,
                t.n,
                t.mean,
                t.unit_variance,
                alpha,
            ),
        };
        warnings.push(test.note.clone(), name);
        let both_present = control.n > 0 && t.n > 0;
        let (rel, rel_ci, rel_note) = if both_present {
            relative_uplift(control.estimate(), t.estimate(), alpha)
        } else {
            (None, None, None)
        };
        warnings.push(rel_note, name);
        let bayes = match req.metric {
            Metric::Proportion => {
                bayes::beta_binomial(control.prop.unwrap_or_default(), t.prop.unwrap_or_default())
            }
            Metric::Mean if control.n < 2 || t.n < 2 => bayes::BayesOutcome::default(),
            Metric::Mean => bayes::normal(control.estimate(), t.estimate()),
        };
        warnings.push(bayes.note.clone(), name);
        let tau_squared = match req.tau {
            Some(tau) => tau * tau,
            None => sequential::default_tau_squared(
                control.unit_variance,
                t.unit_variance,
                params.tuning_n,
                alpha,
            ),
        };
        let seq = if both_present {
            let var = control.estimate().variance_of_mean + t.estimate().variance_of_mean;
            sequential::msprt(t.mean - control.mean, var, tau_squared, alpha)
        } else {
            sequential::SequentialOutcome::default()
        };
        warnings.push(seq.note.clone(), name);
        comparisons[i] = Some(Comparison {
            difference: test
                .difference
                .or_else(|| both_present.then_some(t.mean - control.mean)),
            statistic: test.statistic,
            df: test.df,
            p_value: test.p_value,
            ci: test.ci,
            relative_uplift: rel,
            relative_ci: rel_ci,
            chance_to_beat_control: bayes.chance_to_beat_control,
            expected_loss: bayes.expected_loss,
            sequential_p_value: seq.p_value,
            sequential_ci: seq.ci,
            tau_squared: finite(tau_squared),
            adjusted_p_value: None,
            bh_adjusted_p_value: None,
            achieved_power: achieved(t),
        });
    }

    // Multiple testing across the non-control arms.
    let p: Vec<Option<f64>> = comparisons
        .iter()
        .map(|c| c.as_ref().and_then(|c| c.p_value))
        .collect();
    let holm_adj = adjust_options(&p, holm);
    let bh_adj = adjust_options(&p, benjamini_hochberg);
    for (i, c) in comparisons.iter_mut().enumerate() {
        if let Some(c) = c {
            c.bh_adjusted_p_value = bh_adj[i];
            c.adjusted_p_value = match params.correction {
                Correction::Holm => holm_adj[i],
                Correction::Bh => bh_adj[i],
                Correction::None => c.p_value,
            };
        }
    }

    // Sample-ratio mismatch.
    let counts: Vec<u64> = req.arms.iter().map(|a| a.n).collect();
    let srm = srm_test(&counts, &params.weights);
    if req.arms.len() > 1 && counts.iter().any(|&c| c > 0) {
        warnings.push(srm.note.clone(), None);
    }
    if srm.warning {
        warnings.push(
            Some(Note::new(
                "sample_ratio_mismatch",
                format!(
                    "arm sizes do not match the configured weights (χ² p = {:.2e} < 0.001): results are suspect",
                    srm.p_value.unwrap_or(0.0)
                ),
            )),
            None,
        );
    }

    // Power block.
    let power_summary = req.mde.map(|mde| {
        let required = absolute_mde.and_then(|d| match req.metric {
            Metric::Proportion => {
                let p2 = control.mean + d;
                if p2 > 1.0 {
                    warnings.push(
                        Some(Note::new(
                            "mde_out_of_range",
                            "control rate + MDE exceeds 1: no sample size",
                        )),
                        None,
                    );
                    return None;
                }
                baseline.and_then(|b| power::proportion_sample_size(b, p2, alpha, params.power))
            }
            Metric::Mean => {
                pooled_variance.and_then(|v| power::mean_sample_size(d, v, alpha, params.power))
            }
        });
        if absolute_mde.is_some() && required.is_none() {
            warnings.push(
                Some(Note::new(
                    "insufficient_data",
                    "not enough data to estimate the baseline and variance for the sample size",
                )),
                None,
            );
        }
        let achieved_power = comparisons
            .iter()
            .flatten()
            .filter_map(|c| c.achieved_power)
            .reduce(f64::min);
        PowerSummary {
            mde,
            absolute_mde,
            baseline,
            variance: match req.metric {
                Metric::Proportion => baseline.map(|b| b * (1.0 - b)),
                Metric::Mean => pooled_variance,
            },
            alpha,
            target_power: params.power,
            // Saturating float → integer cast: required n is finite and positive here.
            required_n_per_arm: required.map(|n| n.ceil() as u64),
            achieved_power,
        }
    });

    let arms: Vec<ArmResult> = req
        .arms
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let estimate = match req.metric {
                Metric::Proportion => {
                    let p = stats[i].prop.unwrap_or_default();
                    ArmEstimate::Proportion {
                        conversions: p.conversions,
                        rate: p.rate(),
                        rate_ci: wilson_interval(p, alpha),
                    }
                }
                Metric::Mean => {
                    let raw_mean = a.mean.filter(|_| a.n > 0);
                    let raw_var = a.variance.filter(|_| a.n > 1);
                    ArmEstimate::Mean {
                        mean: raw_mean,
                        variance: raw_var,
                        mean_ci: mean_interval(
                            a.n,
                            a.mean.unwrap_or(0.0),
                            a.variance.unwrap_or(0.0),
                            alpha,
                        ),
                        adjusted_mean: adjusted[i].map(|x| x.0).filter(|_| a.n > 0),
                        adjusted_mean_ci: adjusted[i]
                            .and_then(|x| mean_interval(a.n, x.0, x.1, alpha)),
                        variance_reduction: adjusted[i].and_then(|x| x.2),
                    }
                }
            };
            ArmResult {
                name: a.name.clone(),
                is_control: i == params.control,
                n: a.n,
                estimate,
                vs_control: comparisons[i].take(),
            }
        })
        .collect();

    let mut response = AnalyzeResponse {
        metric: req.metric,
        alpha,
        control: names[params.control].to_string(),
        correction: params.correction,
        arms,
        srm_chi_square: srm.chi_square,
        srm_p_value: srm.p_value,
        srm_warning: srm.warning,
        cuped: cuped_summary,
        sequential: SequentialSummary {
            tau_source: if req.tau.is_some() {
                "request"
            } else {
                "tuned"
            }
            .to_string(),
            tau: req.tau,
            tuning_n: params.tuning_n,
            tau_ratio,
        },
        power: power_summary,
        warnings: warnings.0,
    };
    if sanitize(&mut response) > 0 {
        response.warnings.push(Warning {
            code: "numerical_issue".into(),
            message: "some statistics could not be computed to finite precision and are null"
                .into(),
            arm: None,
        });
    }
    Ok(response)
}

/// Replaces any non-finite number by `None`; returns how many were replaced.
/// A defensive last pass: the building blocks already return `None` instead
/// of NaN/∞, and the property tests assert this never fires.
fn sanitize(r: &mut AnalyzeResponse) -> usize {
    let mut bad = 0;
    let mut fix = |x: &mut Option<f64>| {
        if x.is_some_and(|v| !v.is_finite()) {
            *x = None;
            bad += 1;
        }
    };
    let fix_pair =
        |x: &mut Option<[f64; 2]>| x.is_some_and(|[a, b]| !a.is_finite() || !b.is_finite());
    let mut pairs: Vec<&mut Option<[f64; 2]>> = vec![];
    let mut singles: Vec<&mut Option<f64>> = vec![&mut r.srm_chi_square, &mut r.srm_p_value];
    if let Some(c) = &mut r.cuped {
        singles.push(&mut c.theta);
        singles.push(&mut c.variance_reduction);
    }
    if let Some(p) = &mut r.power {
        singles.extend([
            &mut p.absolute_mde,
            &mut p.baseline,
            &mut p.variance,
            &mut p.achieved_power,
        ]);
    }
    for arm in &mut r.arms {
        match &mut arm.estimate {
            ArmEstimate::Proportion { rate, rate_ci, .. } => {
                singles.push(rate);
                pairs.push(rate_ci);
            }
            ArmEstimate::Mean {
                mean,
                variance,
                mean_ci,
                adjusted_mean,
                adjusted_mean_ci,
                variance_reduction,
            } => {
                singles.extend([mean, variance, adjusted_mean, variance_reduction]);
                pairs.extend([mean_ci, adjusted_mean_ci]);
            }
        }
        if let Some(c) = &mut arm.vs_control {
            singles.extend([
                &mut c.difference,
                &mut c.statistic,
                &mut c.df,
                &mut c.p_value,
                &mut c.relative_uplift,
                &mut c.chance_to_beat_control,
                &mut c.expected_loss,
                &mut c.sequential_p_value,
                &mut c.tau_squared,
                &mut c.adjusted_p_value,
                &mut c.bh_adjusted_p_value,
                &mut c.achieved_power,
            ]);
            pairs.extend([&mut c.ci, &mut c.relative_ci, &mut c.sequential_ci]);
        }
    }
    for s in singles {
        fix(s);
    }
    for p in pairs {
        if fix_pair(p) {
            *p = None;
            bad += 1;
        }
    }
    bad
}
