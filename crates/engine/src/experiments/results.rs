//! Experiment results: turns the stored sufficient statistics of an experiment into the
//! statistics engine's input, per metric (and per segment for the primary metric), and adds a
//! plain-language recommendation. Never scans raw events.

use serde_json::{json, Value};

use super::def::MetricKind;
use super::stats::{
    self, AnalyzeRequest, AnalyzeResponse, ArmInput, CovariateStat, Mde, Metric, ProportionStat,
};
use super::{Compiled, Suff};
use trimtab_store::StatRow;

/// Sums of (segment, arm, metric), or zeros.
fn suff(rows: &[StatRow], segment: &str, arm: &str, metric: &str) -> Suff {
    rows.iter()
        .find(|((s, a, m), _)| s == segment && a == arm && m == metric)
        .map(|(_, v)| Suff::from_array(*v))
        .unwrap_or_default()
}

fn arm_input(kind: MetricKind, name: &str, s: &Suff, cuped: bool) -> ArmInput {
    let n = s.n.max(0.0).round() as u64;
    match kind {
        MetricKind::Proportion => ProportionStat {
            n,
            conversions: (s.sum.max(0.0).round() as u64).min(n),
        }
        .to_arm(name),
        MetricKind::Mean => {
            let c = CovariateStat {
                n,
                sum_y: s.sum,
                sum_y_squares: s.sum_sq,
                sum_x: s.sum_x,
                sum_x_squares: s.sum_x2,
                sum_xy: s.sum_xy,
            };
            if cuped {
                c.to_arm(name)
            } else {
                c.metric().to_arm(name)
            }
        }
    }
}

/// The analysis of one metric over the arms, within `segment` ("" = everyone).
pub fn analyze_metric(
    c: &Compiled,
    rows: &[StatRow],
    segment: &str,
    metric: &str,
    with_mde: bool,
) -> Result<AnalyzeResponse, stats::StatsError> {
    let kind = c
        .metrics
        .get(metric)
        .map(|m| m.kind)
        .unwrap_or(MetricKind::Mean);
    let sums: Vec<Suff> = c
        .arms
        .iter()
        .map(|a| suff(rows, segment, &a.name, metric))
        .collect();
    // CUPED when every arm has a varying pre-exposure covariate.
    let cuped = kind == MetricKind::Mean
        && sums
            .iter()
            .all(|s| s.n >= 2.0 && (s.sum_x2 - s.sum_x * s.sum_x / s.n) / (s.n - 1.0) > 1e-12);
    let req = AnalyzeRequest {
        metric: match kind {
            MetricKind::Proportion => Metric::Proportion,
            MetricKind::Mean => Metric::Mean,
        },
        arms: c
            .arms
            .iter()
            .zip(&sums)
            .map(|(a, s)| arm_input(kind, &a.name, s, cuped))
            .collect(),
        control: Some(control_arm(c)),
        weights: Some(c.arms.iter().map(|a| a.weight).collect()),
        alpha: Some(c.def.alpha),
        power: None,
        mde: if with_mde {
            c.def.mde.map(Mde::Absolute)
        } else {
            None
        },
        tau: None,
        sequential_tuning_n: None,
        correction: None,
    };
    stats::analyze(&req)
}

/// The control arm: the one showing `default` (or named `control`) everywhere, else the first.
pub fn control_arm(c: &Compiled) -> String {
    c.arms
        .iter()
        .find(|a| {
            a.variants
                .iter()
                .all(|(_, v)| v.name == "default" || v.name == "control")
        })
        .or_else(|| c.arms.iter().find(|a| a.name == "holdout"))
        .or(c.arms.first())
        .map(|a| a.name.clone())
        .unwrap_or_default()
}

/// The full results document of an experiment. `looks` keeps the running minimum of the
/// primary metric's always-valid p-values across looks (the p-value reported), and their
/// history for the chart.
pub fn results(c: &Compiled, rows: &[StatRow], now_ms: i64, looks: &super::Experiments) -> Value {
    let primary = &c.def.primary_metric;
    let mut metrics = serde_json::Map::new();
    let mut primary_res: Option<AnalyzeResponse> = None;
    let mut guardrail_res = Vec::new();
    for name in c.metrics.keys() {
        let is_primary = name == primary;
        let v = match analyze_metric(c, rows, "", name, is_primary) {
            Ok(r) => {
                let v = serde_json::to_value(&r).unwrap_or(Value::Null);
                if is_primary {
                    primary_res = Some(r);
                } else if c.def.guardrails.contains(name) {
                    guardrail_res.push((name.clone(), r));
                }
                v
            }
            Err(e) => json!({"error": {"code": e.code, "message": e.message, "path": e.path}}),
        };
        metrics.insert(name.clone(), v);
    }
    let exposures: Vec<Value> = c
        .arms
        .iter()
        .map(|a| {
            json!({"arm": a.name, "weight": a.weight,
                   "exposed": suff(rows, "", &a.name, primary).n as u64,
                   "variants": a.variants.iter().map(|(s, v)| json!({"slot": s, "variant": v.name})).collect::<Vec<_>>()})
        })
        .collect();
    let mut segments: Vec<String> = rows
        .iter()
        .map(|((s, _, _), _)| s.clone())
        .filter(|s| !s.is_empty())
        .collect();
    segments.sort();
    segments.dedup();
    let by_segment: serde_json::Map<String, Value> = segments
        .iter()
        .filter_map(|s| {
            analyze_metric(c, rows, s, primary, false)
                .ok()
                .map(|r| (s.clone(), serde_json::to_value(r).unwrap_or(Value::Null)))
        })
        .collect();
    // Always-valid p-values: the running minimum over looks (Johari et al. 2017, §4).
    let mut history = Value::Null;
    if let Some(p) = primary_res.as_mut() {
        let now_p: Vec<(String, f64)> = p
            .arms
            .iter()
            .filter_map(|a| {
                a.vs_control
                    .as_ref()
                    .and_then(|v| v.sequential_p_value)
                    .map(|sp| (a.name.clone(), sp))
            })
            .collect();
        let l = looks.record_look(&c.def.id, now_ms, &now_p);
        for a in p.arms.iter_mut() {
            if let (Some(v), Some(m)) = (a.vs_control.as_mut(), l.min.get(&a.name)) {
                v.sequential_p_value = Some(*m);
            }
        }
        if let Some(v) = metrics.get_mut(primary) {
            *v = serde_json::to_value(&*p).unwrap_or(Value::Null);
        }
        history = json!(l
            .history
            .iter()
            .map(|(t, pts)| json!({"ts": t, "sequential_p_value": pts.iter().map(|(a, v)| (a.clone(), json!(v))).collect::<serde_json::Map<_, _>>()}))
            .collect::<Vec<_>>());
    }
    let recommendation = recommend(c, primary_res.as_ref(), &guardrail_res);
    json!({
        "experiment": c.def.id,
        "status": c.def.status,
        "live": c.def.is_live(now_ms),
        "primary_metric": primary,
        "guardrails": c.def.guardrails,
        "control": control_arm(c),
        "arms": exposures,
        "srm_p_value": primary_res.as_ref().and_then(|r| r.srm_p_value),
        "srm_warning": primary_res.as_ref().is_some_and(|r| r.srm_warning),
        "metrics": metrics,
        "primary_by_segment": by_segment,
        "sequential_history": history,
        "recommendation": recommendation,
        "computed_at_ms": now_ms,
    })
}

/// Keep running / ship / stop, in plain language, from the primary metric's always-valid
/// (sequential) p-values — safe to read at any time — and the guardrails.
fn recommend(
    c: &Compiled,
    primary: Option<&AnalyzeResponse>,
    guardrails: &[(String, AnalyzeResponse)],
) -> Value {
    let alpha = c.def.alpha;
    let Some(p) = primary else {
        return json!({"action": "keep_running", "text": "No results yet for the primary metric."});
    };
    if p.srm_warning {
        return json!({"action": "stop", "text": format!(
            "Stop and investigate: the arms' sizes do not match their weights (sample-ratio mismatch, p = {:.2e}). Assignment or exposure logging is broken, so no result can be trusted.",
            p.srm_p_value.unwrap_or(0.0))});
    }
    for (name, g) in guardrails {
        for arm in &g.arms {
            if let Some(cmp) = &arm.vs_control {
                let worse = cmp.ci.is_some_and(|ci| ci[1] < 0.0);
                if worse && cmp.sequential_p_value.is_some_and(|sp| sp < alpha) {
                    return json!({"action": "stop", "arm": arm.name, "text": format!(
                        "Stop {}: it makes the guardrail metric {name} worse (always-valid p = {:.3}).",
                        arm.name, cmp.sequential_p_value.unwrap_or(1.0))});
                }
            }
        }
    }
    let mut best: Option<(&str, f64, f64)> = None;
    for arm in &p.arms {
        if let Some(cmp) = &arm.vs_control {
            if let (Some(sp), Some(ci)) = (cmp.sequential_p_value, cmp.ci) {
                if sp < alpha
                    && ci[0] > 0.0
                    && best.is_none_or(|b| cmp.difference.unwrap_or(0.0) > b.2)
                {
                    best = Some((&arm.name, sp, cmp.difference.unwrap_or(0.0)));
                }
            }
        }
    }
    if let Some((arm, sp, diff)) = best {
        let by = match c.metrics.get(&c.def.primary_metric).map(|m| m.kind) {
            Some(MetricKind::Proportion) => format!("{:+.1} percentage points", diff * 100.0),
            _ => format!("{diff:+.4}"),
        };
        return json!({"action": "ship", "arm": arm, "text": format!(
            "Ship {arm}: it beats {} on {} by {by} (always-valid p = {sp:.4}, safe to read at any time).",
            p.control, c.def.primary_metric)});
    }
    let losers = p
        .arms
        .iter()
        .filter_map(|a| a.vs_control.as_ref().map(|c| (a, c)))
        .all(|(_, cmp)| {
            cmp.sequential_p_value.is_some_and(|sp| sp < alpha)
                && cmp.ci.is_some_and(|ci| ci[1] < 0.0)
        });
    if losers && p.arms.len() > 1 {
        return json!({"action": "stop", "text": format!(
            "Stop: every variant is worse than {} on {}; keep the control.", p.control, c.def.primary_metric)});
    }
    let n: u64 = p.arms.iter().map(|a| a.n).sum();
    let needed = p.power.as_ref().and_then(|pw| pw.required_n_per_arm);
    let text = match needed {
        Some(need) if p.arms.iter().all(|a| a.n >= need) => format!(
            "Stop: {n} users exposed, more than the {need} per arm needed to detect the minimum effect, and no arm differs. The variants perform alike."),
        Some(need) => format!("Keep running: {n} users exposed so far; about {need} per arm are needed to detect the minimum effect."),
        None => format!("Keep running: {n} users exposed so far; no arm differs from {} yet.", p.control),
    };
    let action = if text.starts_with("Stop") {
        "stop"
    } else {
        "keep_running"
    };
    json!({"action": action, "text": text})
}
