//! Experiment definitions: what is tested (slots and their variants, with weights), on whom
//! (targeting condition, segments), measured how (metrics), and when (status, start, stop).
//!
//! A definition is a TOML file `scripts/experiments/ID.toml` or a JSON body of
//! `PUT /v1/experiments/{id}`; both parse into [`ExperimentDef`] and are validated before use.
//! A single-slot experiment names `slot` and `[[variants]]`; a multivariate (factorial)
//! experiment lists `[[factors]]`, each a slot with its variants, and its arms are every
//! combination.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Lifecycle of an experiment. Only `running` experiments assign users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    #[default]
    Running,
    Stopped,
}

/// One variant of a slot, with its share of traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VariantDef {
    /// The `<template data-trimtab-variant>` to show; `default` keeps the page's own content
    /// (the usual control).
    pub name: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// Params sent with the adjustment (override the rule's).
    #[serde(default)]
    pub params: BTreeMap<String, String>,
}

fn one() -> f64 {
    1.0
}

/// A slot and the variants it is tested with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Factor {
    pub slot: String,
    pub variants: Vec<VariantDef>,
}

/// What a metric measures per exposed user, after exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// Share of users with at least one matching event.
    Proportion,
    /// Mean per user of the summed value of matching events.
    Mean,
}

/// Which value of a matching event a `mean` metric sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueOf {
    /// 1 per matching event.
    #[default]
    Count,
    /// `props.value` of a conversion.
    Value,
    /// `props.duration_ms` of a finished hover or dwell.
    Duration,
}

/// Whether a matching event must concern the experiment's own slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Any matching event after exposure.
    #[default]
    Any,
    /// Only events on the experiment's content: clicks/conversions carrying one of its decision
    /// ids, or hovers/dwells whose target is one of its slots.
    Slot,
}

/// A declarative micro-conversion metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricDef {
    pub kind: MetricKind,
    /// Event type to count (`click`, `conversion`, `dwell`, `hover`, `custom`, … or `any`).
    pub event: String,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub value: ValueOf,
    /// For `custom`/`conversion` events: only this `name`.
    #[serde(default)]
    pub name: Option<String>,
}

/// The metrics every experiment has without defining them.
pub fn builtin_metrics() -> BTreeMap<String, MetricDef> {
    let m = |kind, event: &str, scope, value| MetricDef {
        kind,
        event: event.into(),
        scope,
        value,
        name: None,
    };
    BTreeMap::from([
        (
            "click_through".into(),
            m(MetricKind::Proportion, "click", Scope::Slot, ValueOf::Count),
        ),
        (
            "conversion".into(),
            m(
                MetricKind::Proportion,
                "conversion",
                Scope::Any,
                ValueOf::Count,
            ),
        ),
        (
            "conversion_value".into(),
            m(MetricKind::Mean, "conversion", Scope::Any, ValueOf::Value),
        ),
        (
            "dwell_ms".into(),
            m(MetricKind::Mean, "dwell", Scope::Slot, ValueOf::Duration),
        ),
        (
            "interaction_depth".into(),
            m(MetricKind::Mean, "any", Scope::Any, ValueOf::Count),
        ),
    ])
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExperimentDef {
    /// Set from the file name / URL; a value in the body must agree.
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub description: String,
    /// Hash salt of the assignment (default: the id). Changing it reshuffles users.
    #[serde(default)]
    pub salt: Option<String>,
    #[serde(default)]
    pub status: Status,
    /// Unix ms; before it the experiment assigns nobody.
    #[serde(default)]
    pub start_ms: Option<i64>,
    /// Unix ms; after it the experiment assigns nobody (results stay readable).
    #[serde(default)]
    pub stop_ms: Option<i64>,
    /// Single-slot form: the slot …
    #[serde(default)]
    pub slot: Option<String>,
    /// … and its variants.
    #[serde(default)]
    pub variants: Vec<VariantDef>,
    /// Factorial form: several slots, every combination is an arm.
    #[serde(default)]
    pub factors: Vec<Factor>,
    /// A Rhai condition over `user` (e.g. `user.context.device == "mobile"`); only users for
    /// whom it is true are assigned.
    #[serde(default)]
    pub targeting: Option<String>,
    /// Only users in these behavioural segments (empty: everyone).
    #[serde(default)]
    pub segments: Vec<String>,
    pub primary_metric: String,
    #[serde(default)]
    pub guardrails: Vec<String>,
    /// Extra metric definitions (built-ins are always there).
    #[serde(default)]
    pub metrics: BTreeMap<String, MetricDef>,
    /// Balance arms within behavioural segments.
    #[serde(default)]
    pub stratify: bool,
    /// Significance level of the results.
    #[serde(default = "alpha")]
    pub alpha: f64,
    /// Minimum detectable effect (absolute) of the primary metric, for the power calculation.
    #[serde(default)]
    pub mde: Option<f64>,
}

fn alpha() -> f64 {
    0.05
}

/// One arm: a variant per factor, with its probability.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Arm {
    /// `b` for single-slot experiments; `cta=b|offer=discount` for factorial ones.
    pub name: String,
    pub weight: f64,
    /// (slot, variant) per factor.
    pub variants: Vec<(String, VariantDef)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (at {path})")]
pub struct DefError {
    pub message: String,
    pub path: String,
}

fn err(path: &str, message: impl Into<String>) -> DefError {
    DefError {
        message: message.into(),
        path: path.into(),
    }
}

/// Parses a TOML definition file. A syntax error is at path `toml`; a wrong type or an
/// unknown or missing field is at its field path (`params.alpha`, `variants[1].weight`), like
/// the JSON API reports it.
/// A definition named by its file (experiments by `id`, bandit slots by `slot`): parsed from
/// TOML (a file) or JSON (an upload) into the same type, its name taken from the file or the
/// URL (a name in the body must agree), then validated — one path for both.
pub trait Definition: serde::de::DeserializeOwned {
    /// The field that holds the name.
    const NAME_FIELD: &'static str;
    fn name_mut(&mut self) -> &mut String;
    /// Checks everything parsing cannot.
    fn check(&self) -> Result<(), DefError>;

    /// Parses a TOML definition named `name`.
    fn from_toml(name: &str, text: &str) -> Result<Self, DefError> {
        named(parse_toml(text)?, name)
    }

    /// Parses a JSON definition named `name`.
    fn from_json(name: &str, v: serde_json::Value) -> Result<Self, DefError> {
        let d = trimtab_wire::from_value(v, "")
            .map_err(|e| err(e.path.as_deref().unwrap_or("."), e.message))?;
        named(d, name)
    }
}

fn named<D: Definition>(mut d: D, name: &str) -> Result<D, DefError> {
    let field = D::NAME_FIELD;
    let n = d.name_mut();
    if !n.is_empty() && n != name {
        return Err(err(field, format!("{field} {n:?} differs from {name:?}")));
    }
    *n = name.to_string();
    d.check()?;
    Ok(d)
}

pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, DefError> {
    let de = toml::Deserializer::parse(text).map_err(|e| err("toml", e.message().to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().message().to_string();
        err(if path == "." { "toml" } else { &path }, message)
    })
}

/// Valid experiment ids, slot and variant names: `[A-Za-z0-9_.-]{1,64}`, not starting with a
/// dot (a definition's file would be hidden, and `..` is never a name).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// [`valid_name`] with the rule as the reason (what the definition registry reports).
pub fn check_name(s: &str) -> Result<(), &'static str> {
    if valid_name(s) {
        Ok(())
    } else {
        Err("must match [A-Za-z0-9_.-]{1,64} and not start with a dot")
    }
}

impl Definition for ExperimentDef {
    const NAME_FIELD: &'static str = "id";
    fn name_mut(&mut self) -> &mut String {
        &mut self.id
    }
    fn check(&self) -> Result<(), DefError> {
        self.validate()
    }
}

impl ExperimentDef {
    /// The factors, whichever form was used.
    pub fn factors(&self) -> Vec<Factor> {
        match &self.slot {
            Some(slot) => vec![Factor {
                slot: slot.clone(),
                variants: self.variants.clone(),
            }],
            None => self.factors.clone(),
        }
    }

    pub fn slots(&self) -> Vec<String> {
        self.factors().into_iter().map(|f| f.slot).collect()
    }

    /// Every arm (the cartesian product of the factors' variants), weights normalised.
    pub fn arms(&self) -> Vec<Arm> {
        let factors = self.factors();
        let mut arms = vec![Arm {
            name: String::new(),
            weight: 1.0,
            variants: Vec::new(),
        }];
        let single = factors.len() == 1;
        for f in &factors {
            let total: f64 = f.variants.iter().map(|v| v.weight).sum();
            let mut next = Vec::new();
            for a in &arms {
                for v in &f.variants {
                    let part = if single {
                        v.name.clone()
                    } else {
                        format!("{}={}", f.slot, v.name)
                    };
                    let name = if a.name.is_empty() {
                        part
                    } else {
                        format!("{}|{part}", a.name)
                    };
                    let mut variants = a.variants.clone();
                    variants.push((f.slot.clone(), v.clone()));
                    next.push(Arm {
                        name,
                        weight: a.weight * v.weight / total,
                        variants,
                    });
                }
            }
            arms = next;
        }
        arms
    }

    /// Every metric this experiment reports (built-ins plus its own).
    pub fn all_metrics(&self) -> BTreeMap<String, MetricDef> {
        let mut m = builtin_metrics();
        m.extend(self.metrics.clone());
        m
    }

    pub fn validate(&self) -> Result<(), DefError> {
        if !valid_name(&self.id) {
            return Err(err("id", "must match [A-Za-z0-9_.-]{1,64}"));
        }
        match (&self.slot, self.factors.is_empty()) {
            (Some(_), false) => {
                return Err(err(
                    "factors",
                    "give either `slot` + `variants` or `factors`",
                ))
            }
            (None, true) => return Err(err("slot", "an experiment needs a `slot` or `factors`")),
            (Some(_), true) if self.variants.len() < 2 => {
                return Err(err("variants", "at least two variants"))
            }
            (None, false) if !self.variants.is_empty() => {
                return Err(err(
                    "variants",
                    "with `factors`, variants go inside each factor",
                ))
            }
            _ => {}
        }
        let factors = self.factors();
        let mut seen_slots = Vec::new();
        for (i, f) in factors.iter().enumerate() {
            let p = if self.slot.is_some() {
                "variants".to_string()
            } else {
                format!("factors[{i}]")
            };
            if !valid_name(&f.slot) {
                return Err(err(&format!("{p}.slot"), "must match [A-Za-z0-9_.-]{1,64}"));
            }
            if seen_slots.contains(&f.slot) {
                return Err(err(
                    &format!("{p}.slot"),
                    "each slot appears in one factor only",
                ));
            }
            seen_slots.push(f.slot.clone());
            if f.variants.len() < 2 {
                return Err(err(&p, "a factor needs at least two variants"));
            }
            let mut names = Vec::new();
            for (j, v) in f.variants.iter().enumerate() {
                let vp = if self.slot.is_some() {
                    format!("variants[{j}]")
                } else {
                    format!("{p}.variants[{j}]")
                };
                if !valid_name(&v.name) {
                    return Err(err(
                        &format!("{vp}.name"),
                        "must match [A-Za-z0-9_.-]{1,64}",
                    ));
                }
                if names.contains(&v.name) {
                    return Err(err(&format!("{vp}.name"), "duplicate variant name"));
                }
                names.push(v.name.clone());
                if !(v.weight.is_finite() && v.weight > 0.0) {
                    return Err(err(&format!("{vp}.weight"), "must be a positive number"));
                }
            }
        }
        let metrics = self.all_metrics();
        if !metrics.contains_key(&self.primary_metric) {
            return Err(err(
                "primary_metric",
                format!(
                    "unknown metric {:?}; built-in: click_through, conversion, conversion_value, dwell_ms, interaction_depth",
                    self.primary_metric
                ),
            ));
        }
        for (i, g) in self.guardrails.iter().enumerate() {
            if !metrics.contains_key(g) {
                return Err(err(
                    &format!("guardrails[{i}]"),
                    format!("unknown metric {g:?}"),
                ));
            }
        }
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(err("alpha", "must be in (0, 0.5)"));
        }
        if let (Some(a), Some(b)) = (self.start_ms, self.stop_ms) {
            if b <= a {
                return Err(err("stop_ms", "must be after start_ms"));
            }
        }
        Ok(())
    }

    /// Whether the experiment assigns users at `now_ms`.
    pub fn is_live(&self, now_ms: i64) -> bool {
        self.status == Status::Running
            && self.start_ms.is_none_or(|s| now_ms >= s)
            && self.stop_ms.is_none_or(|s| now_ms < s)
    }

    pub fn salt(&self) -> &str {
        self.salt.as_deref().unwrap_or(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_never_start_with_a_dot() {
        for ok in ["cta", "cta-copy.v2", "A_1", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn single_slot_toml() {
        let d = ExperimentDef::from_toml(
            "cta-copy",
            r#"
            slot = "cta"
            primary_metric = "click_through"
            guardrails = ["dwell_ms"]
            [[variants]]
            name = "default"
            [[variants]]
            name = "reassure"
            weight = 3
            params = { headline = "Cancel any time" }
            "#,
        )
        .unwrap();
        let arms = d.arms();
        assert_eq!(arms.len(), 2);
        assert_eq!(arms[0].name, "default");
        assert!((arms[1].weight - 0.75).abs() < 1e-12);
        assert_eq!(arms[1].variants[0].1.params["headline"], "Cancel any time");
        assert!(d.is_live(0));
    }

    #[test]
    fn factorial_arms_are_the_product() {
        let d = ExperimentDef::from_toml(
            "mv",
            r#"
            primary_metric = "conversion"
            [[factors]]
            slot = "cta"
            variants = [{ name = "a" }, { name = "b" }]
            [[factors]]
            slot = "offer"
            variants = [{ name = "default" }, { name = "discount" }, { name = "free-shipping" }]
            "#,
        )
        .unwrap();
        let arms = d.arms();
        assert_eq!(arms.len(), 6);
        assert_eq!(arms[0].name, "cta=a|offer=default");
        let total: f64 = arms.iter().map(|a| a.weight).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert_eq!(d.slots(), vec!["cta", "offer"]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = ExperimentDef::from_toml(
            "x",
            "slot = \"cta\"\nprimary_metric = \"nope\"\nvariants = [{name=\"a\"},{name=\"b\"}]",
        )
        .unwrap_err();
        assert_eq!(e.path, "primary_metric");
        let e = ExperimentDef::from_toml("x", "slot = \"cta\"\nprimary_metric = \"conversion\"\nvariants = [{name=\"a\"},{name=\"a\"}]").unwrap_err();
        assert_eq!(e.path, "variants[1].name");
        let e = ExperimentDef::from_toml("x", "slot = \"cta\"\nprimary_metric = \"conversion\"\nvariants = [{name=\"a\", weight = 0},{name=\"b\"}]").unwrap_err();
        assert_eq!(e.path, "variants[0].weight");
        let e = ExperimentDef::from_toml("x", "slot = \"cta\"\nprimary_metric = \"conversion\"\nbogus = 1\nvariants = [{name=\"a\"},{name=\"b\"}]").unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");
        let e = ExperimentDef::from_json("x", serde_json::json!({"id":"y","slot":"s","primary_metric":"conversion","variants":[{"name":"a"},{"name":"b"}]})).unwrap_err();
        assert_eq!(e.path, "id");
    }
}
