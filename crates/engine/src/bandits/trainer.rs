//! The trainer thread: background training of click models from the engine's own logs, and
//! serving whatever the registry says is current.
//!
//! - Every `learn.retrain_every_s` (and on `POST /v1/models/retrain`) it trains, for each bandit
//!   slot with `train_model = true`, an MLP on the slot's closed decisions (the most recent
//!   `learn.max_rows`), held-out test = the newest 15 %. The registry promotes the candidate
//!   only if it is not worse than the current model on those same rows; a promoted model is
//!   swapped in at once (readers see the old or the new model, never neither).
//! - Every `learn.check_every_s` it compares each model's `CURRENT` in `models/` with what it
//!   serves, so a model promoted by `trimtab train --save` or copied in by an operator goes live
//!   without a restart. A corrupt or mismatched file is refused with its error code (visible
//!   in `GET /v1/models` and the log) and the previous model keeps serving.
//!
//! Training runs on this thread (candle on the CPU) and on its own rayon pool, where candle's
//! matrix products run; the thread and the pool are at nice +19
//! ([`crate::sched::BACKGROUND_NICE`]), so a training yields the CPU to the shards, the writer
//! and the HTTP workers. Shards never wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::def::BanditDef;
use super::Bandits;
use crate::features::context::{CONTEXT_DIM, CONTEXT_FEATURES, LAYOUT_DIMS};
use crate::metrics::Metrics;
use trimtab_learn::model::registry::{DataInfo, FeatureInfo};
use trimtab_learn::model::{
    train, Architecture, ClickModel, Dataset, ModelCard, ModelError, Registry, SplitConfig,
    TrainConfig,
};
use trimtab_learn::serving::{Models, Served};
use trimtab_store::Store;
use trimtab_util::now_ms;

/// `[learn]` in the config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnConfig {
    /// Seconds between background trainings (0 = only on `POST /v1/models/retrain`).
    pub retrain_every_s: u64,
    /// Closed decisions a slot needs before a model is trained on it.
    pub min_rows: usize,
    /// Most recent decisions used per training.
    pub max_rows: usize,
    /// Seconds between checks of `models/` for a changed `CURRENT`.
    pub check_every_s: u64,
    /// Training epochs at most (early stopping usually ends sooner).
    pub max_epochs: usize,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            retrain_every_s: 600,
            min_rows: 500,
            max_rows: 200_000,
            check_every_s: 5,
            max_epochs: 50,
        }
    }
}

/// The last training of a model.
#[derive(Debug, Clone, Serialize)]
pub struct Training {
    pub at_ms: i64,
    /// `promoted`, `kept` (candidate not better), `skipped` (too few rows) or `failed`.
    pub outcome: &'static str,
    pub reason: String,
    pub rows: usize,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelStatus {
    pub name: String,
    pub kind: String,
    pub slot: String,
    /// `serving` (a version serves), `error` (nothing serves: the registry's model was
    /// refused) or `untrained` (no model yet).
    pub status: &'static str,
    /// Version served (None: nothing serves).
    pub version: Option<u32>,
    pub card: Option<serde_json::Value>,
    /// Why the registry's current model is not the one served, if it is not.
    pub error: Option<serde_json::Value>,
    pub last_training: Option<Training>,
}

/// Told of each model made on this node once it serves: (name, version).
pub type ShareHook = Arc<dyn Fn(&str, u32) + Send + Sync>;

struct Shared {
    status: Mutex<HashMap<String, ModelStatus>>,
    trigger: Sender<()>,
    /// Cluster mode: shares the models made here (trained, or put into `models/` by an
    /// operator) with the other nodes.
    share: Mutex<Option<ShareHook>>,
}

/// Handle to the trainer: status for the API and a way to ask for a training now.
#[derive(Clone)]
pub struct ModelService {
    shared: Arc<Shared>,
    registry: Registry,
}

impl ModelService {
    /// Status of every model of a bandit slot (served or not), sorted by name.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        let mut v: Vec<_> = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .map(|mut s| {
                s.status = match (&s.version, &s.error) {
                    (Some(_), _) => "serving",
                    (None, Some(_)) => "error",
                    (None, None) => "untrained",
                };
                s
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Asks for a training of every slot now (returns at once; `false` if one is queued).
    pub fn retrain(&self) -> bool {
        self.shared.trigger.try_send(()).is_ok()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Cluster mode: `hook` is told of every model made on this node (its card has no
    /// `origin`) once it serves, including the one serving when it is set.
    pub fn set_share(&self, hook: ShareHook) {
        *self.shared.share.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook.clone());
        let serving: Vec<(String, u32)> = self
            .statuses()
            .into_iter()
            .filter_map(|s| {
                let made_here = s.card.as_ref().is_some_and(|c| c["origin"].is_null());
                Some((s.name, s.version.filter(|_| made_here)?))
            })
            .collect();
        for (name, version) in serving {
            hook(&name, version);
        }
    }
}

struct Trainer {
    cfg: LearnConfig,
    bandits: Bandits,
    store: Arc<Store>,
    models: Arc<Models>,
    registry: Registry,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    trigger: Receiver<()>,
    stop: Receiver<()>,
}

/// Starts the trainer thread; it stops when `stop`'s sender is dropped.
#[allow(clippy::too_many_arguments)] // separate services, each used as it is given
pub fn start(
    cfg: LearnConfig,
    models_dir: &std::path::Path,
    bandits: Bandits,
    store: Arc<Store>,
    models: Arc<Models>,
    metrics: Arc<Metrics>,
    stop: Receiver<()>,
    health: &Arc<crate::health::Health>,
) -> std::io::Result<(ModelService, JoinHandle<()>)> {
    let (ttx, trx) = bounded(1);
    let shared = Arc::new(Shared {
        status: Mutex::new(HashMap::new()),
        trigger: ttx,
        share: Mutex::new(None),
    });
    let registry = Registry::new(models_dir);
    let mut t = Trainer {
        cfg,
        bandits,
        store,
        models,
        registry: registry.clone(),
        metrics,
        shared: shared.clone(),
        trigger: trx,
        stop,
    };
    // Serve what the registry has before the first request.
    t.sync();
    let h = health.spawn("trimtab-trainer", move || t.run())?;
    Ok((ModelService { shared, registry }, h))
}

fn model_name(slot: &str) -> String {
    Models::name("click", slot)
}

impl Trainer {
    fn run(mut self) {
        crate::sched::set_nice(crate::sched::BACKGROUND_NICE);
        // candle runs its parallel work on the current rayon pool: this one, in the background.
        let pool = crate::sched::background_pool("trimtab-trainer-pool", 0)
            .map_err(|e| {
                tracing::warn!("no background pool for training ({e}); training on the global pool")
            })
            .ok();
        let check = Duration::from_secs(self.cfg.check_every_s.max(1));
        let every = self.cfg.retrain_every_s as i64 * 1000;
        let mut last_train = now_ms();
        loop {
            let mut train_now = false;
            select! {
                recv(self.stop) -> _ => break,
                recv(self.trigger) -> t => {
                    if t.is_err() { break; }
                    train_now = true;
                }
                default(check) => {}
            }
            let now = now_ms();
            if every > 0 && now - last_train >= every {
                train_now = true;
            }
            if train_now {
                last_train = now;
                match &pool {
                    Some(p) => p.install(|| self.train_all()),
                    None => self.train_all(),
                }
            }
            self.sync();
        }
        tracing::debug!("trainer stopped");
    }

    fn defs(&self) -> Vec<Arc<BanditDef>> {
        self.bandits
            .defs()
            .values()
            .filter(|d| d.train_model)
            .cloned()
            .collect()
    }

    fn with_status(&self, def: &BanditDef, f: impl FnOnce(&mut ModelStatus)) {
        let name = model_name(&def.slot);
        let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
        let s = st.entry(name.clone()).or_insert_with(|| ModelStatus {
            name,
            kind: "click".into(),
            slot: def.slot.clone(),
            ..ModelStatus::default()
        });
        f(s);
    }

    /// Serves each slot's `CURRENT` model if it is not served yet; refuses bad files.
    fn sync(&mut self) {
        let defs = self.defs();
        {
            // Slots that lost their bandit stop serving a model.
            let keep: Vec<String> = defs.iter().map(|d| model_name(&d.slot)).collect();
            let mut st = self.shared.status.lock().unwrap_or_else(|e| e.into_inner());
            st.retain(|k, _| keep.contains(k));
            for (name, _) in self.models.names() {
                if !keep.contains(&name) {
                    self.models.remove(&name);
                }
            }
        }
        for def in defs {
            let name = model_name(&def.slot);
            let current = match self.registry.current_version(&name) {
                Ok(v) => v,
                Err(e) => {
                    self.refuse(&def, None, &e);
                    continue;
                }
            };
            let served = self.models.get(&name).map(|s| s.version as u32);
            let Some(v) = current else {
                self.with_status(&def, |_| {});
                continue;
            };
            if served == Some(v) {
                // CURRENT points at what serves: an earlier refusal no longer applies.
                self.with_status(&def, |s| s.error = None);
                continue;
            }
            let known_bad = self
                .shared
                .status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .and_then(|s| s.error.as_ref())
                .and_then(|e| e["version"].as_u64())
                == Some(u64::from(v));
            if known_bad {
                continue; // refused already; wait for a new CURRENT
            }
            match self.registry.load_current(&name) {
                Ok((model, card)) => match self.serve(&def, model, &card) {
                    Ok(()) => {}
                    Err(e) => self.refuse(&def, Some(v), &e),
                },
                Err(e) => self.refuse(&def, Some(v), &e),
            }
        }
    }

    fn refuse(&self, def: &BanditDef, version: Option<u32>, e: &ModelError) {
        let name = model_name(&def.slot);
        tracing::error!(model = %name, version = ?version, code = e.code(), "model refused, the previous one keeps serving: {e}");
        self.metrics
            .model_trainings
            .with_label_values(&[name.as_str(), "refused"])
            .inc();
        self.with_status(def, |s| {
            s.error = Some(serde_json::json!({
                "code": e.code(), "message": e.to_string(), "version": version,
            }));
        });
    }

    /// Checks that a model fits the slot (context + one-hot candidates) and serves it.
    fn serve(
        &self,
        def: &BanditDef,
        model: ClickModel,
        card: &ModelCard,
    ) -> Result<(), ModelError> {
        let k = def.candidates.len();
        let layout = &card.features.layout;
        // A model trained on an earlier context layout reads the prefix it knows.
        if !LAYOUT_DIMS.contains(&layout.ctx_dim) || layout.n_actions != Some(k) {
            return Err(ModelError::Mismatch(format!(
                "the model expects {} context features and {:?} one-hot actions; slot {:?} has {CONTEXT_DIM} (or an earlier layout's {LAYOUT_DIMS:?}) and {k}",
                layout.ctx_dim, layout.n_actions, def.slot
            )));
        }
        let name = model_name(&def.slot);
        self.models.swap_in(
            &name,
            Served {
                scorer: Arc::new(model),
                candidates: def.candidates.clone(),
                version: u64::from(card.version),
            },
        );
        tracing::info!(model = %name, version = card.version, auc = card.metrics.auc, "model serving");
        self.with_status(def, |s| {
            s.version = Some(card.version);
            s.card = serde_json::to_value(card).ok();
            s.error = None;
        });
        if card.origin.is_none() {
            let hook = self
                .shared
                .share
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(&name, card.version);
            }
        }
        Ok(())
    }

    fn train_all(&mut self) {
        for def in self.defs() {
            let started = std::time::Instant::now();
            let (outcome, reason, rows) = match self.train_slot(&def) {
                Ok(x) => x,
                Err(e) => ("failed", format!("{} ({})", e, e.code()), 0),
            };
            let name = model_name(&def.slot);
            self.metrics
                .model_trainings
                .with_label_values(&[name.as_str(), outcome])
                .inc();
            tracing::info!(model = %name, outcome, rows, "training: {reason}");
            let seconds = started.elapsed().as_secs_f64();
            self.with_status(&def, |s| {
                s.last_training = Some(Training {
                    at_ms: now_ms(),
                    outcome,
                    reason,
                    rows,
                    seconds,
                })
            });
        }
    }

    fn train_slot(&mut self, def: &BanditDef) -> Result<(&'static str, String, usize), ModelError> {
        let recs = super::export::records(&self.store, &def.slot, now_ms(), false)
            .map_err(|e| ModelError::Missing(format!("reading the log: {e}")))?;
        let rows: Vec<_> = recs
            .iter()
            .filter(|r| r.candidates == def.candidates && r.context.len() == CONTEXT_DIM)
            .map(|r| r.log_row())
            .collect();
        let rows = &rows[rows.len().saturating_sub(self.cfg.max_rows)..];
        let n = rows.len();
        if n < self.cfg.min_rows.max(20) {
            return Ok((
                "skipped",
                format!(
                    "{n} closed decisions, fewer than learn.min_rows = {}",
                    self.cfg.min_rows
                ),
                n,
            ));
        }
        let data = Dataset::from_rows(rows, Some(def.candidates.len()))?;
        if data.positives() == 0 || data.positives() == data.len() {
            return Ok((
                "skipped",
                "every reward is the same: nothing to learn".into(),
                n,
            ));
        }
        let cfg = TrainConfig {
            max_epochs: self.cfg.max_epochs,
            ..TrainConfig::default()
        };
        let trained = train::train(&data, &cfg, &SplitConfig::default(), &mut |_| {})?;
        let mut names: Vec<String> = CONTEXT_FEATURES.iter().map(|s| s.to_string()).collect();
        names.extend(def.candidates.iter().map(|c| format!("variant={c}")));
        let card = ModelCard::new(
            DataInfo {
                source: format!("learnlog of slot {}", def.slot),
                rows: n,
                positives: data.positives(),
                test_rows: trained.test.len(),
            },
            FeatureInfo {
                layout: data.layout.clone(),
                names: Some(names),
            },
            Architecture {
                input: data.dim(),
                hidden: cfg.hidden.clone(),
                dropout: cfg.dropout,
            },
            cfg,
        );
        let name = model_name(&def.slot);
        let p = self
            .registry
            .propose(&name, &trained.model, card, &trained.test)?;
        if p.promoted {
            let (model, card) = self.registry.load_current(&name)?;
            self.serve(def, model, &card)?;
            Ok(("promoted", p.reason, n))
        } else {
            Ok(("kept", p.reason, n))
        }
    }
}
