//! Off-policy evaluation: the logged-bandit-feedback format ([`LogRow`], JSONL, read by
//! [`read_log`] with line-numbered errors), the estimators [`ips`], [`snips`] and [`dr`]
//! (each a value with a 95% confidence interval), and the replay runner [`evaluate`] behind
//! `trimtab ope`. Formulas, references and the CI construction are in `docs/ope.md`.
//!
//! Runs on the calling thread (the CLI, or a blocking task of the server); pure apart from
//! reading the given reader and measuring its own throughput.
//!
//! Replay: rows are visited in log order. For row i the target policy's probabilities
//! `π_i(·|x_i)` are computed *before* it learns from that row; a learning policy then updates
//! on the logged action and reward (it learns from every row, as a policy that had been
//! running would learn from its own feedback). The importance weight is
//! `w_i = π_i(a_i|x_i) / p_i` with `p_i` the logged propensity.

use std::io::{BufRead, Write};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::bandit::{new_policy, one_hot, BanditError, FeatureMap, Params, Policy, PolicyKind};
use super::linalg::{add_outer, chol_solve, cholesky, identity_scaled};

/// z-quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// One logged decision (one JSONL line). Unknown fields are ignored so logs from other
/// sources may carry ids or timestamps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Context features x.
    pub context: Vec<f32>,
    /// Per-action features (optional; absent means one-hot actions, the disjoint model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<Vec<Vec<f32>>>,
    /// Index of the action shown.
    pub action: usize,
    /// Observed reward.
    pub reward: f64,
    /// Probability with which the logging policy chose `action`, in (0, 1].
    pub propensity: f64,
    /// Slot position (optional, informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
}

/// Errors of reading or evaluating a log. `line` is the 1-based line in the file (for
/// in-memory rows, the 1-based row number).
#[derive(Debug, thiserror::Error)]
pub enum OpeError {
    /// Reading failed.
    #[error("reading the log: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a JSON object of the row format.
    #[error("line {line}: not a valid log row: {message}")]
    Parse {
        /// 1-based line.
        line: usize,
        /// serde_json's message.
        message: String,
    },
    /// A field has an invalid value or a dimension inconsistent with earlier rows.
    #[error("line {line}: field `{field}`: {message}")]
    Invalid {
        /// 1-based line.
        line: usize,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Too few rows for a confidence interval.
    #[error("the log has {rows} rows; at least 2 are needed")]
    TooFewRows {
        /// Rows found.
        rows: usize,
    },
    /// Building the policy failed.
    #[error(transparent)]
    Bandit(#[from] BanditError),
}

impl OpeError {
    /// A stable code for user-facing messages.
    pub fn code(&self) -> &'static str {
        match self {
            OpeError::Io(_) => "ope.io",
            OpeError::Parse { .. } => "ope.parse",
            OpeError::Invalid { .. } => "ope.invalid_row",
            OpeError::TooFewRows { .. } => "ope.too_few_rows",
            OpeError::Bandit(e) => e.code(),
        }
    }
}

/// Reads JSONL rows; blank lines are skipped. Checks each row and the consistency of
/// dimensions across rows (see [`LogShape::infer`]); errors name the line.
pub fn read_log<R: BufRead>(reader: R) -> Result<Vec<LogRow>, OpeError> {
    let mut rows = Vec::new();
    let mut lines = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row: LogRow = serde_json::from_str(&line).map_err(|e| OpeError::Parse {
            line: line_no,
            message: e.to_string(),
        })?;
        rows.push(row);
        lines.push(line_no);
    }
    LogShape::infer_at(&rows, None, |i| lines[i])?;
    Ok(rows)
}

/// Writes rows as JSONL, one per line.
pub fn write_log<W: Write>(mut w: W, rows: &[LogRow]) -> std::io::Result<()> {
    for r in rows {
        serde_json::to_writer(&mut w, r)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

/// Dimensions of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogShape {
    /// Context dimension d.
    pub ctx_dim: usize,
    /// Action feature dimension m (K when rows have no `actions`).
    pub action_dim: usize,
    /// Number of actions of rows without `actions`: `n_actions` if given, else the largest
    /// logged action index + 1.
    pub one_hot_actions: usize,
}

impl LogShape {
    /// Checks every row (propensity in (0, 1], finite reward, action index in range,
    /// consistent dimensions) and returns the shape. `n_actions` fixes K for rows without
    /// per-action features.
    pub fn infer(rows: &[LogRow], n_actions: Option<usize>) -> Result<Self, OpeError> {
        Self::infer_at(rows, n_actions, |i| i + 1)
    }

    fn infer_at(
        rows: &[LogRow],
        n_actions: Option<usize>,
        line: impl Fn(usize) -> usize,
    ) -> Result<Self, OpeError> {
        let bad = |i: usize, field, message: String| OpeError::Invalid {
            line: line(i),
            field,
            message,
        };
        let k = n_actions.unwrap_or_else(|| {
            rows.iter()
                .filter(|r| r.actions.is_none())
                .map(|r| r.action + 1)
                .max()
                .unwrap_or(0)
        });
        let mut shape: Option<LogShape> = None;
        for (i, r) in rows.iter().enumerate() {
            if !(r.propensity.is_finite() && r.propensity > 0.0 && r.propensity <= 1.0) {
                return Err(bad(
                    i,
                    "propensity",
                    format!("{} is not in (0, 1]", r.propensity),
                ));
            }
            if !r.reward.is_finite() {
                return Err(bad(i, "reward", "must be finite".into()));
            }
            if r.context.iter().any(|x| !x.is_finite()) {
                return Err(bad(i, "context", "must be finite".into()));
            }
            let (n_act, m) = match &r.actions {
                Some(a) => {
                    let m = a.first().map_or(0, Vec::len);
                    if a.is_empty() {
                        return Err(bad(i, "actions", "is empty".into()));
                    }
                    if let Some(j) = a.iter().position(|f| f.len() != m) {
                        return Err(bad(
                            i,
                            "actions",
                            format!("action {j} has {} features, action 0 has {m}", a[j].len()),
                        ));
                    }
                    if a.iter().flatten().any(|x| !x.is_finite()) {
                        return Err(bad(i, "actions", "must be finite".into()));
                    }
                    (a.len(), m)
                }
                None => (k, k),
            };
            if r.action >= n_act {
                return Err(bad(
                    i,
                    "action",
                    format!("{} is out of range for {n_act} actions", r.action),
                ));
            }
            match &shape {
                None => {
                    shape = Some(LogShape {
                        ctx_dim: r.context.len(),
                        action_dim: m,
                        one_hot_actions: k,
                    })
                }
                Some(s) => {
                    if r.context.len() != s.ctx_dim {
                        return Err(bad(
                            i,
                            "context",
                            format!(
                                "has {} features, earlier rows {}",
                                r.context.len(),
                                s.ctx_dim
                            ),
                        ));
                    }
                    if m != s.action_dim {
                        return Err(bad(
                            i,
                            "actions",
                            format!("{m} features per action, earlier rows {}", s.action_dim),
                        ));
                    }
                }
            }
        }
        shape.ok_or(OpeError::TooFewRows { rows: 0 })
    }
}

/// An estimate with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Point estimate.
    pub value: f64,
    /// 95% confidence interval `[lo, hi]`.
    pub ci: [f64; 2],
}

impl Estimate {
    fn normal(value: f64, se: f64) -> Self {
        Estimate {
            value,
            ci: [value - Z95 * se, value + Z95 * se],
        }
    }

    /// `hi − lo`.
    pub fn width(&self) -> f64 {
        self.ci[1] - self.ci[0]
    }
}

/// The three estimates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimates {
    /// Inverse propensity scoring.
    pub ips: Estimate,
    /// Self-normalised IPS.
    pub snips: Estimate,
    /// Doubly robust.
    pub dr: Estimate,
}

/// What `trimtab ope --json` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpeReport {
    /// Evaluated policy's name.
    pub policy: String,
    /// Rows replayed.
    pub rows: usize,
    /// The logging policy's value: the mean logged reward.
    pub logged_value: f64,
    /// Estimates of the target policy's value.
    pub estimates: Estimates,
    /// Replay throughput (rows per second, including the reward model fit).
    pub examples_per_s: f64,
}

impl std::fmt::Display for OpeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "policy {} on {} rows ({:.0} rows/s)",
            self.policy, self.rows, self.examples_per_s
        )?;
        writeln!(f, "logged policy value  {:.5}", self.logged_value)?;
        let e = &self.estimates;
        for (name, est) in [("IPS", e.ips), ("SNIPS", e.snips), ("DR", e.dr)] {
            writeln!(
                f,
                "{name:<6} {:.5}  95% CI [{:.5}, {:.5}]",
                est.value, est.ci[0], est.ci[1]
            )?;
        }
        Ok(())
    }
}

/// Mean and standard error (sample sd with n − 1, over √n) of per-row terms.
fn mean_se(t: &[f64]) -> (f64, f64) {
    let n = t.len() as f64;
    let mean = t.iter().sum::<f64>() / n;
    if t.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = t.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// IPS (Horvitz & Thompson 1952): `V = (1/n) Σ wᵢ rᵢ`, CI by the CLT on the terms `wᵢ rᵢ`.
pub fn ips(w: &[f64], r: &[f64]) -> Estimate {
    let t: Vec<f64> = w.iter().zip(r).map(|(w, r)| w * r).collect();
    let (m, se) = mean_se(&t);
    Estimate::normal(m, se)
}

/// SNIPS (Swaminathan & Joachims 2015): `V = Σ wᵢ rᵢ / Σ wᵢ`; delta-method standard error
/// `√(Σ wᵢ²(rᵢ − V)²) / Σ wᵢ` (n/(n−1)-corrected). `Σ w = 0` (the target never picks a
/// logged action) gives NaN (`null` in JSON).
pub fn snips(w: &[f64], r: &[f64]) -> Estimate {
    let n = w.len() as f64;
    let sw: f64 = w.iter().sum();
    if sw <= 0.0 {
        return Estimate {
            value: f64::NAN,
            ci: [f64::NAN; 2],
        };
    }
    let v = w.iter().zip(r).map(|(w, r)| w * r).sum::<f64>() / sw;
    let ss: f64 = w.iter().zip(r).map(|(w, r)| (w * (r - v)).powi(2)).sum();
    let se = (ss * n / (n - 1.0).max(1.0)).sqrt() / sw;
    Estimate::normal(v, se)
}

/// DR (Dudík, Langford & Li 2011): `V = (1/n) Σ [q̂ᵢ(π) + wᵢ (rᵢ − q̂ᵢ(aᵢ))]` with
/// `q̂ᵢ(π) = Σₐ π(a|xᵢ) q̂(xᵢ, a)`; CI by the CLT on the terms. `q_target[i] = q̂ᵢ(π)`,
/// `q_logged[i] = q̂(xᵢ, aᵢ)`.
pub fn dr(w: &[f64], r: &[f64], q_logged: &[f64], q_target: &[f64]) -> Estimate {
    let t: Vec<f64> = (0..w.len())
        .map(|i| q_target[i] + w[i] * (r[i] - q_logged[i]))
        .collect();
    let (m, se) = mean_se(&t);
    Estimate::normal(m, se)
}

/// Options of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpeConfig {
    /// Hyperparameters of the target policy.
    pub params: Params,
    /// K for rows without per-action features (default: largest logged index + 1).
    pub n_actions: Option<usize>,
    /// Ridge penalty of DR's reward model.
    pub dr_lambda: f64,
}

impl Default for OpeConfig {
    fn default() -> Self {
        OpeConfig {
            params: Params::default(),
            n_actions: None,
            dr_lambda: 1.0,
        }
    }
}

/// Replays `rows` through a fresh policy of `kind` that learns online, and estimates its value.
pub fn evaluate(rows: &[LogRow], kind: PolicyKind, cfg: &OpeConfig) -> Result<OpeReport, OpeError> {
    let shape = LogShape::infer(rows, cfg.n_actions)?;
    let mut policy = new_policy(kind, shape.ctx_dim, shape.action_dim, &cfg.params)?;
    evaluate_policy(rows, policy.as_mut(), true, kind.name(), cfg)
}

/// Replays `rows` through `policy` (updating it on each row when `learn`) and estimates its
/// value. The policy's dimensions must match the log's.
pub fn evaluate_policy(
    rows: &[LogRow],
    policy: &mut dyn Policy,
    learn: bool,
    name: &str,
    cfg: &OpeConfig,
) -> Result<OpeReport, OpeError> {
    let start = Instant::now();
    let shape = LogShape::infer(rows, cfg.n_actions)?;
    if rows.len() < 2 {
        return Err(OpeError::TooFewRows { rows: rows.len() });
    }
    let (d, m) = policy.dims();
    if (d, m) != (shape.ctx_dim, shape.action_dim) {
        return Err(OpeError::Invalid {
            line: 1,
            field: "context",
            message: format!(
                "log has {}×{} features, the policy expects {d}×{m}",
                shape.ctx_dim, shape.action_dim
            ),
        });
    }
    let onehot = one_hot(shape.one_hot_actions);

    let n = rows.len();
    let mut w = Vec::with_capacity(n);
    let mut r = Vec::with_capacity(n);
    let mut target = Vec::with_capacity(n);
    for row in rows {
        let acts = actions_of(row, &onehot);
        let probs = policy.probabilities(&row.context, acts);
        w.push(probs[row.action] / row.propensity);
        r.push(row.reward);
        if learn {
            policy.update(&row.context, &acts[row.action], row.reward);
        }
        target.push(probs);
    }

    let map = FeatureMap {
        ctx_dim: shape.ctx_dim,
        action_dim: shape.action_dim,
    };
    let (q_logged, q_target) = cross_fit_reward_model(rows, &target, map, &onehot, cfg.dr_lambda);

    let estimates = Estimates {
        ips: ips(&w, &r),
        snips: snips(&w, &r),
        dr: dr(&w, &r, &q_logged, &q_target),
    };
    let elapsed = start.elapsed().as_secs_f64().max(1e-9);
    Ok(OpeReport {
        policy: name.to_owned(),
        rows: n,
        logged_value: r.iter().sum::<f64>() / n as f64,
        estimates,
        examples_per_s: n as f64 / elapsed,
    })
}

/// The row's action features, or the shared one-hot set.
fn actions_of<'a>(row: &'a LogRow, onehot: &'a [Vec<f32>]) -> &'a [Vec<f32>] {
    row.actions.as_deref().unwrap_or(onehot)
}

/// DR's reward model `q̂(x, a) = φ(x, a)ᵀβ`, ridge on the bandit features, 2-fold cross-fitted:
/// rows with even index are predicted by the model fit on odd rows and vice versa, so no
/// row's prediction has seen its own reward. Returns `(q̂(xᵢ, aᵢ), Σₐ πᵢ(a) q̂(xᵢ, a))`.
fn cross_fit_reward_model(
    rows: &[LogRow],
    target: &[Vec<f64>],
    map: FeatureMap,
    onehot: &[Vec<f32>],
    lambda: f64,
) -> (Vec<f64>, Vec<f64>) {
    let p = map.dim();
    let fit = |fold: usize| -> Vec<f64> {
        let mut a = identity_scaled(p, lambda);
        let mut b = vec![0.0; p];
        for row in rows.iter().skip(fold).step_by(2) {
            let acts = actions_of(row, onehot);
            let phi = map.phi(&row.context, &acts[row.action]);
            add_outer(&mut a, p, &phi, 1.0);
            for (&i, &v) in phi.idx.iter().zip(&phi.val) {
                b[i] += row.reward * v;
            }
        }
        // λI + PSD is SPD; should rounding break the factorisation the model predicts 0 and
        // DR degrades to IPS.
        cholesky(&a, p).map_or_else(|| vec![0.0; p], |l| chol_solve(&l, p, &b))
    };
    let betas = [fit(1), fit(0)]; // betas[i % 2] was fit on the other fold.
    let mut q_logged = Vec::with_capacity(rows.len());
    let mut q_target = Vec::with_capacity(rows.len());
    for (i, (row, probs)) in rows.iter().zip(target).enumerate() {
        let beta = &betas[i % 2];
        let acts = actions_of(row, onehot);
        let q: Vec<f64> = acts
            .iter()
            .map(|a| map.phi(&row.context, a).dot(beta))
            .collect();
        q_logged.push(q[row.action]);
        q_target.push(probs.iter().zip(&q).map(|(p, q)| p * q).sum());
    }
    (q_logged, q_target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn estimators_match_reference_values() {
        // Reference values computed independently (Python, same formulas).
        let (w, r) = ([2.0, 0.0, 1.0, 0.5], [1.0, 0.0, 0.0, 1.0]);
        let e = ips(&w, &r);
        assert!(close(e.value, 0.625) && close(e.ci[0], -0.30254) && close(e.ci[1], 1.55254));
        let e = snips(&w, &r);
        assert!(close(e.value, 0.71429) && close(e.ci[0], 0.11563) && close(e.ci[1], 1.31294));
        let e = dr(&w, &r, &[0.5, 0.2, 0.3, 0.6], &[0.4, 0.4, 0.4, 0.5]);
        assert!(close(e.value, 0.65) && close(e.ci[0], 0.10437) && close(e.ci[1], 1.19563));
        assert!(snips(&[0.0, 0.0], &[1.0, 0.0]).value.is_nan());
    }

    #[test]
    fn parse_errors_name_the_line() {
        let ok = r#"{"context":[0.5,1],"action":1,"reward":1,"propensity":0.5}"#;
        let cases = [
            (
                format!("{ok}\n{ok}\n{{\"context\":[1,2],\"action\":1\n"),
                3,
                "ope.parse",
            ),
            (format!("{ok}\n\n{ok}\nnot json\n"), 4, "ope.parse"),
            (
                format!("{ok}\n{}\n", ok.replace("0.5}", "0}")),
                2,
                "ope.invalid_row",
            ),
            (
                format!("{ok}\n{ok}\n{}\n", ok.replace("[0.5,1]", "[0.5]")),
                3,
                "ope.invalid_row",
            ),
            (
                format!(
                    "{}\n",
                    ok.replace("\"action\":1", "\"actions\":[[1],[2]],\"action\":2")
                ),
                1,
                "ope.invalid_row",
            ),
            (
                format!(
                    "{}\n",
                    ok.replace("\"action\":1", "\"actions\":[[1],[2,3]],\"action\":0")
                ),
                1,
                "ope.invalid_row",
            ),
        ];
        for (text, line, code) in cases {
            let err = read_log(text.as_bytes()).expect_err(&text);
            assert_eq!(err.code(), code, "{err}");
            assert!(
                err.to_string().starts_with(&format!("line {line}:")),
                "{err}"
            );
        }
    }

    #[test]
    fn log_round_trips_and_optional_fields_are_omitted() {
        let rows = vec![
            LogRow {
                context: vec![0.25, -1.0],
                actions: None,
                action: 2,
                reward: 1.0,
                propensity: 0.25,
                position: None,
            },
            LogRow {
                context: vec![0.0, 3.5],
                actions: None,
                action: 0,
                reward: 0.0,
                propensity: 0.5,
                position: Some(1),
            },
        ];
        let mut buf = Vec::new();
        write_log(&mut buf, &rows).expect("in memory");
        let text = String::from_utf8(buf).expect("utf-8");
        assert_eq!(
            text.lines().next(),
            Some(r#"{"context":[0.25,-1.0],"action":2,"reward":1.0,"propensity":0.25}"#)
        );
        let back = read_log(format!("{text}\n  \n").as_bytes()).expect("valid");
        assert_eq!(back, rows);
        let shape = LogShape::infer(&back, None).expect("valid");
        assert_eq!(
            shape,
            LogShape {
                ctx_dim: 2,
                action_dim: 3,
                one_hot_actions: 3
            }
        );
        // Unknown fields from other sources are ignored.
        let extra = r#"{"event_id":"x","context":[],"action":0,"reward":0,"propensity":1}"#;
        assert_eq!(read_log(extra.as_bytes()).expect("valid").len(), 1);
    }

    #[test]
    fn report_json_has_exactly_the_documented_keys() {
        let rows = read_log(
            concat!(
                r#"{"context":[1],"action":0,"reward":1,"propensity":0.5}"#,
                "\n",
                r#"{"context":[-1],"action":1,"reward":0,"propensity":0.5}"#,
                "\n",
                r#"{"context":[0.5],"action":1,"reward":1,"propensity":0.5}"#,
            )
            .as_bytes(),
        )
        .expect("valid");
        let rep = evaluate(&rows, PolicyKind::Uniform, &OpeConfig::default()).expect("valid");
        let v = serde_json::to_value(&rep).expect("serialisable");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object().expect("object").keys().cloned().collect()
        };
        assert_eq!(
            keys(&v),
            [
                "estimates",
                "examples_per_s",
                "logged_value",
                "policy",
                "rows"
            ]
        );
        assert_eq!(keys(&v["estimates"]), ["dr", "ips", "snips"]);
        assert_eq!(keys(&v["estimates"]["dr"]), ["ci", "value"]);
        assert_eq!(v["policy"], "uniform");
        assert_eq!(v["rows"], 3);
        // Uniform target on uniform logging: every weight is 1, IPS = SNIPS = mean reward.
        assert!(close(rep.estimates.ips.value, 2.0 / 3.0));
        assert!(close(rep.estimates.snips.value, 2.0 / 3.0));
        assert!(rep.to_string().contains("SNIPS"));
    }

    #[test]
    fn too_few_rows_and_dimension_mismatch_are_errors() {
        let one = read_log(r#"{"context":[1],"action":0,"reward":1,"propensity":1}"#.as_bytes())
            .expect("valid");
        let err = evaluate(&one, PolicyKind::LinUcb, &OpeConfig::default()).expect_err("1 row");
        assert_eq!(err.code(), "ope.too_few_rows");
        let err = evaluate(&[], PolicyKind::LinUcb, &OpeConfig::default()).expect_err("0 rows");
        assert_eq!(err.code(), "ope.too_few_rows");
        let two = [one.clone(), one].concat();
        let mut p = crate::bandit::Uniform::new(3, 1);
        let err =
            evaluate_policy(&two, &mut p, false, "u", &OpeConfig::default()).expect_err("dims");
        assert_eq!(err.code(), "ope.invalid_row");
    }
}
