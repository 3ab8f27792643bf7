//! The rule lab: trying a rule before it reaches a visitor, through the code path the server
//! runs ([`crate::decide::step`]: features → attribution → assignment → rules → admission),
//! with a clock the caller sets and nothing pushed or written.
//!
//! - [`fixture`]: fixture files (`scripts/tests/*.toml`: an initial history, a timeline of
//!   events, the adjustments expected) run by `trimtab rules test`.
//! - [`RuleSet`]: a set of rules compiled for the lab (installed ones, a candidate source, or
//!   both) in a private temp dir, so that nothing the lab compiles is ever installed.
//! - [`Session`]: one user's state stepped through inputs at given times, timer ticks fired as
//!   the shard fires them; what it decided comes back as [`Fired`] adjustments.

pub mod backtest;
pub mod dry_run;
pub mod fixture;
pub mod jobs;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::bandits::Bandits;
use crate::config::DeliveryConfig;
use crate::decide::{self, LearnCache, NoRecords, Out, Snapshot};
use crate::experiments::Experiments;
use crate::features::{FeatureConfig, UserState};
use crate::metrics::Metrics;
use trimtab_learn::serving::Models;
use trimtab_privacy::UserKey;
use trimtab_rules::{RuleLimits, Rules};
use trimtab_wire::Event;

/// What the lab needs besides the rules: the server's config sections that shape a step, and
/// where its experiments and bandits are defined.
#[derive(Debug, Clone, Default)]
pub struct LabConfig {
    pub features: FeatureConfig,
    pub delivery: DeliveryConfig,
    pub limits: RuleLimits,
    /// Experiment definitions (None: no experiments).
    pub experiments_dir: Option<PathBuf>,
    /// Bandit slot definitions (None: no bandit slots).
    pub bandits_dir: Option<PathBuf>,
}

impl LabConfig {
    /// The lab as the server with `cfg` runs: its features, caps, rule limits, experiments and
    /// bandits.
    pub fn of(cfg: &crate::config::Config) -> LabConfig {
        LabConfig {
            features: cfg.features.clone(),
            delivery: cfg.delivery.clone(),
            limits: cfg.rules.clone(),
            experiments_dir: Some(cfg.experiments_dir()),
            bandits_dir: Some(cfg.bandits_dir()),
        }
    }
}

/// Why the lab could not run.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Io(String),
    #[error("rule {name:?} does not compile: {message} at {location}")]
    Compile {
        name: String,
        message: String,
        line: Option<usize>,
        column: Option<usize>,
        location: String,
    },
    #[error("{0}")]
    Definitions(String),
}

/// Rules compiled for the lab in a temp dir of their own (removed when dropped).
pub struct RuleSet {
    pub rules: Rules,
    _dir: tempfile::TempDir,
}

impl RuleSet {
    /// The `*.rhai` files of `installed` (those named in `only`, when given; every file must
    /// compile) plus `extra` `(name, source)` rules, which replace an installed rule of the
    /// same name.
    pub fn build(
        installed: Option<&Path>,
        only: Option<&[String]>,
        extra: &[(String, String)],
        limits: &RuleLimits,
    ) -> Result<RuleSet, LabError> {
        let dir = tempfile::tempdir().map_err(|e| LabError::Io(format!("temp dir: {e}")))?;
        let io = |p: &Path, e: std::io::Error| LabError::Io(format!("{}: {e}", p.display()));
        if let Some(src) = installed {
            let entries = std::fs::read_dir(src).map_err(|e| io(src, e))?;
            for entry in entries {
                let p = entry.map_err(|e| io(src, e))?.path();
                let Some(stem) = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|_| p.extension().is_some_and(|x| x == "rhai"))
                else {
                    continue;
                };
                if only.is_some_and(|o| !o.iter().any(|n| n == stem)) {
                    continue;
                }
                std::fs::copy(&p, dir.path().join(p.file_name().expect("a file")))
                    .map_err(|e| io(&p, e))?;
            }
            if let Some(o) = only {
                for name in o {
                    if !dir.path().join(format!("{name}.rhai")).exists() {
                        return Err(LabError::Io(format!(
                            "no rule {name:?} in {}",
                            src.display()
                        )));
                    }
                }
            }
        }
        for (name, source) in extra {
            trimtab_rules::validate_name(name).map_err(|e| LabError::Io(e.to_string()))?;
            let p = dir.path().join(format!("{name}.rhai"));
            std::fs::write(&p, source).map_err(|e| io(&p, e))?;
        }
        let rules = Rules::load(dir.path(), limits.clone())
            .map_err(|e| LabError::Io(format!("loading rules: {e}")))?;
        if let Some(s) = rules
            .statuses()
            .into_iter()
            .find(|s| s.compile_error.is_some())
        {
            let e = s.compile_error.expect("checked");
            // Name the file as the user knows it, not the temp copy.
            let file = match installed {
                Some(d) if !extra.iter().any(|(n, _)| *n == s.name) => {
                    d.join(format!("{}.rhai", s.name)).display().to_string()
                }
                _ => format!("{}.rhai", s.name),
            };
            let location = match (e.line, e.column) {
                (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
                _ => file,
            };
            return Err(LabError::Compile {
                name: s.name,
                message: e.message,
                line: e.line,
                column: e.column,
                location,
            });
        }
        Ok(RuleSet { rules, _dir: dir })
    }
}

/// One wire event (a JSON object) through the server's parser, received at `received_ms`.
pub fn parse_event(
    v: serde_json::Value,
    received_ms: i64,
) -> Result<Event, trimtab_wire::InputError> {
    let body =
        serde_json::to_vec(&serde_json::json!({ "events": [v] })).expect("a JSON value serialises");
    let mut batch =
        trimtab_wire::parse_batch(&body, &trimtab_wire::Limits::default(), received_ms)?;
    Ok(batch.events.remove(0).event)
}

/// Everything a step reads besides the user, owned (see [`Snapshot`]).
pub struct World {
    pub cfg: LabConfig,
    pub rules: Rules,
    pub experiments: Experiments,
    pub bandits: Bandits,
    pub models: Arc<Models>,
    pub metrics: Arc<Metrics>,
}

impl World {
    /// `rules` with the experiments and bandits of `cfg` (an empty scratch dir stands for a
    /// missing one).
    pub fn new(cfg: LabConfig, rules: Rules) -> Result<World, LabError> {
        let none = std::env::temp_dir().join("trimtab-lab-none");
        let exp_dir = cfg.experiments_dir.clone().unwrap_or_else(|| none.clone());
        let experiments = Experiments::load(&exp_dir, rules.clone(), 0.0)
            .map_err(|e| LabError::Definitions(format!("experiments: {e}")))?;
        let bandits = Bandits::load(&cfg.bandits_dir.clone().unwrap_or(none))
            .map_err(|e| LabError::Definitions(format!("bandits: {e}")))?;
        Ok(World {
            cfg,
            rules,
            experiments,
            bandits,
            models: Arc::new(Models::new()),
            metrics: Arc::new(Metrics::new()),
        })
    }

    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            features: &self.cfg.features,
            delivery: &self.cfg.delivery,
            rules: &self.rules,
            experiments: &self.experiments,
            bandits: &self.bandits,
            segments: None,
            models: &self.models,
            metrics: &self.metrics,
        }
    }
}

/// One adjustment a step decided (admitted: after caps, precedence, "already showing").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fired {
    /// Server time of the decision (ms).
    pub at: i64,
    pub slot: String,
    pub variant: String,
    pub params: std::collections::BTreeMap<String, String>,
    /// The rule that asked, if a rule did (an experiment or bandit may have chosen the variant).
    pub rule: Option<String>,
    pub experiment: Option<String>,
    /// The event that triggered it (None: a timer tick).
    pub trigger: Option<String>,
    pub session: String,
}

/// One user stepped through inputs, as the owning shard steps it (timers included).
pub struct Session {
    pub key: UserKey,
    pub state: UserState,
    cache: LearnCache,
    /// The next timer tick, if one is scheduled (the shard's timer heap for this user).
    timer: Option<i64>,
}

impl Session {
    pub fn new(key: UserKey, state: UserState) -> Session {
        Session {
            key,
            state,
            cache: LearnCache::default(),
            timer: None,
        }
    }

    /// Takes `ev` into the features only (history before what is tested: no rules run).
    pub fn history(&mut self, world: &World, ev: &Event) {
        decide::journal::apply_event(&mut self.state, ev, &world.cfg.features);
    }

    /// Fires the timer ticks due up to `until` (ms), in order, as the shard would.
    pub fn run_timers(&mut self, world: &World, until: i64, fired: &mut Vec<Fired>) {
        let tick = world.cfg.features.tick_ms;
        while let Some(due) = self.timer.filter(|d| *d <= until) {
            self.timer = None;
            self.step(world, decide::Input::Tick, due, fired);
            if self.state.has_ongoing() {
                self.timer = Some(due + tick);
            }
        }
    }

    /// Fires the timers due before `ev`'s time, then steps `ev` at that time.
    pub fn event(&mut self, world: &World, ev: &Arc<Event>, fired: &mut Vec<Fired>) {
        let at = ev.received_ms;
        self.run_timers(world, at, fired);
        self.step(world, decide::Input::Event(ev), at, fired);
        if self.state.has_ongoing() && self.timer.is_none() {
            self.timer = Some(at + world.cfg.features.tick_ms);
        }
    }

    fn step(&mut self, world: &World, input: decide::Input<'_>, at: i64, fired: &mut Vec<Fired>) {
        let mut out = Out::default();
        decide::step(
            &world.snapshot(),
            &self.key,
            &mut self.state,
            &mut self.cache,
            &mut NoRecords,
            input,
            at,
            &mut out,
        );
        fired.extend(out.decisions.into_iter().map(|d| Fired {
            at,
            slot: d.slot,
            variant: d.variant,
            params: d.params,
            rule: d.rule,
            experiment: d.experiment,
            trigger: d.trigger,
            session: d.session,
        }));
    }
}
