//! Bandit slot definitions: which slot a contextual bandit decides, among which candidates,
//! with which policy, rewarded by what, and with which safety nets (holdout share, guardrail).
//!
//! A definition is a TOML file `scripts/bandits/SLOT.toml` or a JSON body of
//! `PUT /v1/bandits/{slot}`; both parse into [`BanditDef`] and are validated before use.

use serde::{Deserialize, Serialize};

use crate::experiments::def::{valid_name, DefError, Definition};
use trimtab_learn::bandit::{Params, PolicyKind};

/// What counts as a reward of a decision (within the attribution window).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// A `click` event carrying the decision id.
    #[default]
    Click,
    /// A `conversion` event carrying the decision id (or, without one, any conversion of the
    /// user while the slot shows the decision).
    Conversion,
    /// A finished `dwell` on the slot's element of at least `dwell_ms`.
    Dwell,
}

impl RewardKind {
    pub const ALL: [RewardKind; 3] = [RewardKind::Click, RewardKind::Conversion, RewardKind::Dwell];

    pub fn as_str(self) -> &'static str {
        match self {
            RewardKind::Click => "click",
            RewardKind::Conversion => "conversion",
            RewardKind::Dwell => "dwell",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Falls back to the control for everyone when the bandit's users do measurably worse than
/// the holdout's on `metric`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Guardrail {
    /// The outcome watched (may differ from the reward, e.g. optimise clicks, guard conversions).
    pub metric: RewardKind,
    /// Largest tolerated relative drop of the metric's rate, bandit vs holdout (0.1 = 10 %).
    pub max_drop: f64,
    /// Decisions needed in each group before the guardrail can trip.
    pub min_samples: u64,
    /// One-sided significance level of "the bandit's rate is below the holdout's".
    pub alpha: f64,
    /// Only decisions from this time (Unix ms) on are compared: set by
    /// `POST /v1/bandits/{slot}/reset` to resume after a fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
}

impl Default for Guardrail {
    fn default() -> Self {
        Guardrail {
            metric: RewardKind::Click,
            max_drop: 0.1,
            min_samples: 200,
            alpha: 0.05,
            since_ms: None,
        }
    }
}

/// One bandit-decided slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanditDef {
    /// The slot (also the file stem / URL id).
    #[serde(default)]
    pub slot: String,
    /// Variants to choose from (at least 2). Action i of the logs is `candidates[i]`.
    pub candidates: Vec<String>,
    /// The safe default shown to the holdout and during fallback; default `candidates[0]`.
    #[serde(default)]
    pub control: Option<String>,
    /// `linucb` (default), `lints`, `egreedy` or `uniform`.
    #[serde(default = "default_policy")]
    pub policy: PolicyKind,
    /// Hyperparameters (`alpha`, `v`, `epsilon`, `lambda`, `floor`, …).
    #[serde(default)]
    pub params: Params,
    /// What rewards a decision.
    #[serde(default)]
    pub reward: RewardKind,
    /// Dwell needed for a `dwell` reward, in ms.
    #[serde(default = "default_dwell_ms")]
    pub dwell_ms: i64,
    /// Attribution window: outcomes later than this after the decision do not count; a
    /// decision without a reward by then is learned as reward 0.
    #[serde(default = "default_window_ms")]
    pub window_ms: i64,
    /// Share of users (by a hash of user and slot) who always get the control: the baseline
    /// the bandit's lift and the guardrail are measured against.
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// Optional guardrail.
    #[serde(default)]
    pub guardrail: Option<Guardrail>,
    /// Train a click model on this slot's log in the background (`models/click-SLOT/`).
    #[serde(default = "yes")]
    pub train_model: bool,
    /// `false` pauses the bandit: everyone gets the control, nothing is learned.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_policy() -> PolicyKind {
    PolicyKind::LinUcb
}
fn default_dwell_ms() -> i64 {
    5_000
}
fn default_window_ms() -> i64 {
    30 * 60_000
}
fn default_holdout() -> f64 {
    0.05
}
fn yes() -> bool {
    true
}

fn err(path: &str, message: impl Into<String>) -> DefError {
    DefError {
        message: message.into(),
        path: path.into(),
    }
}

/// Most candidates per slot.
pub const MAX_CANDIDATES: usize = 32;

impl Definition for BanditDef {
    const NAME_FIELD: &'static str = "slot";
    fn name_mut(&mut self) -> &mut String {
        &mut self.slot
    }
    fn check(&self) -> Result<(), DefError> {
        self.validate()
    }
}

impl BanditDef {
    /// The control variant.
    pub fn control(&self) -> &str {
        self.control
            .as_deref()
            .unwrap_or_else(|| self.candidates.first().map_or("default", |s| s.as_str()))
    }

    /// Index of the control among the candidates.
    pub fn control_index(&self) -> usize {
        let c = self.control();
        self.candidates.iter().position(|v| v == c).unwrap_or(0)
    }

    pub fn validate(&self) -> Result<(), DefError> {
        if !valid_name(&self.slot) {
            return Err(err("slot", "must match [A-Za-z0-9_.-]{1,64}"));
        }
        if self.candidates.len() < 2 || self.candidates.len() > MAX_CANDIDATES {
            return Err(err(
                "candidates",
                format!("give 2 to {MAX_CANDIDATES} variants"),
            ));
        }
        for (i, c) in self.candidates.iter().enumerate() {
            if !valid_name(c) {
                return Err(err(
                    &format!("candidates[{i}]"),
                    "must match [A-Za-z0-9_.-]{1,64}",
                ));
            }
            if self.candidates[..i].contains(c) {
                return Err(err(&format!("candidates[{i}]"), "duplicate variant"));
            }
        }
        if let Some(c) = &self.control {
            if !self.candidates.contains(c) {
                return Err(err("control", "must be one of the candidates"));
            }
        }
        self.params.validate().map_err(|e| match e {
            trimtab_learn::bandit::BanditError::InvalidParam { field, message } => {
                err(&format!("params.{field}"), message)
            }
            other => err("params", other.to_string()),
        })?;
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(err("holdout", "must be in [0, 1)"));
        }
        if !(1_000..=7 * 86_400_000).contains(&self.window_ms) {
            return Err(err("window_ms", "must be between 1 s and 7 days"));
        }
        if self.dwell_ms < 0 {
            return Err(err("dwell_ms", "must be >= 0"));
        }
        if let Some(g) = &self.guardrail {
            if !(g.max_drop.is_finite() && (0.0..1.0).contains(&g.max_drop)) {
                return Err(err("guardrail.max_drop", "must be in [0, 1)"));
            }
            if !(g.alpha > 0.0 && g.alpha < 0.5) {
                return Err(err("guardrail.alpha", "must be in (0, 0.5)"));
            }
            if g.min_samples == 0 {
                return Err(err("guardrail.min_samples", "must be >= 1"));
            }
            if self.holdout == 0.0 {
                return Err(err(
                    "guardrail",
                    "a guardrail compares against the holdout: set holdout > 0",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_toml_gets_defaults() {
        let d = BanditDef::from_toml("cta", r#"candidates = ["a", "b"]"#).unwrap();
        assert_eq!(d.slot, "cta");
        assert_eq!(d.policy, PolicyKind::LinUcb);
        assert_eq!((d.control(), d.control_index()), ("a", 0));
        assert_eq!(d.reward, RewardKind::Click);
        assert!(d.enabled && d.train_model);
    }

    #[test]
    fn errors_name_the_field() {
        let e = BanditDef::from_toml("cta", r#"candidates = ["a"]"#).unwrap_err();
        assert_eq!(e.path, "candidates");
        let e = BanditDef::from_toml("cta", "candidates = [\"a\", \"a\"]").unwrap_err();
        assert_eq!(e.path, "candidates[1]");
        let e = BanditDef::from_toml("cta", "candidates = [\"a\", \"b\"]\ncontrol = \"c\"")
            .unwrap_err();
        assert_eq!(e.path, "control");
        let e = BanditDef::from_toml("cta", "candidates = [\"a\", \"b\"]\n[params]\nalpha = -1")
            .unwrap_err();
        assert_eq!(e.path, "params.alpha");
        let e = BanditDef::from_toml(
            "cta",
            "candidates = [\"a\", \"b\"]\nholdout = 0\n[guardrail]",
        )
        .unwrap_err();
        assert_eq!(e.path, "guardrail");
        let e = BanditDef::from_toml("cta", "candidates = [\"a\", \"b\"]\nbogus = 1").unwrap_err();
        assert!(e.message.contains("bogus"), "{e:?}");
        let e = BanditDef::from_toml("cta", "candidates = [\"a\", \"b\"]\npolicy = \"best\"")
            .unwrap_err();
        assert_eq!(e.path, "policy");
        let e = BanditDef::from_toml("cta", "candidates = [").unwrap_err();
        assert_eq!(e.path, "toml");
        let e = BanditDef::from_json(
            "cta",
            serde_json::json!({"candidates": ["a", "b"], "policy": "nope"}),
        )
        .unwrap_err();
        assert_eq!(e.path, "policy");
    }
}
