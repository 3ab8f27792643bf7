//! The engine as one service: [`Engine::open`] opens and locks the data dir's store, and
//! [`Opened::start`] starts every part of the loop from one config — rules, experiments and
//! bandit definitions (each watched for changes), the segmenter, the bandit learner, the model
//! trainer and the pipeline — and
//! [`Engine::stop`] stops them in order once the server no longer takes requests (drain the
//! pipeline and checkpoint, stop watching, abandon a training, stop the learner and the
//! segmenter). The server holds one `Engine` and reaches the loop only through it: the store
//! is private to this crate (a server that names it does not compile).
//!
//! Blocking methods (`experiment_results`, `bandit_log`, `export_bandit_log`) read the store
//! and must run off the async runtime (the server calls them in `web::block`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use serde_json::Value;
use trimtab_privacy::Pseudonymizer;
use trimtab_rules::Rules;
use trimtab_store::{Store, StoreError};
use trimtab_util::watch::DirWatcher;

use crate::bandits::trainer::ModelService;
use crate::bandits::Bandits;
use crate::config::Config;
use crate::delivery::Hub;
use crate::experiments::{Compiled, Experiments};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Services};
use crate::segments::service::SegmentService;

/// Why the engine did not start: what was being started, and the error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StartError {
    pub what: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

fn starting<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> StartError {
    let what = what.into();
    move |e| StartError {
        what,
        source: Box::new(e),
    }
}

/// A failure of a read the server asked for (logged by the server, answered as `internal`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(String);

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> ReadError {
        ReadError(e.to_string())
    }
}

/// The threads and watchers that run beside the pipeline, until [`Engine::stop`].
struct Background {
    watchers: Vec<DirWatcher>,
    trainer_stop: Sender<()>,
    trainer: JoinHandle<()>,
    learner: JoinHandle<()>,
    segmenter_stop: Sender<()>,
    segmenter: JoinHandle<()>,
}

/// Every part of the loop, started from one config.
pub struct Engine {
    pub cfg: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub hub: Arc<Hub>,
    pub rules: Rules,
    pub experiments: Experiments,
    pub segments: Arc<SegmentService>,
    pub bandits: Bandits,
    pub models: ModelService,
    pub metrics: Arc<Metrics>,
    pub pseudo: Pseudonymizer,
    /// The first fatal failure (storage error, panicked thread), for readiness and the exit.
    pub health: Arc<crate::health::Health>,
    store: Arc<Store>,
    background: Mutex<Option<Background>>,
    /// The rule lab's backtests.
    pub backtests: crate::lab::jobs::Backtests,
}

/// Starts watching a definitions directory; a failure only costs hot reload (logged).
fn watch(
    what: &str,
    w: Result<DirWatcher, impl std::fmt::Display>,
    watchers: &mut Vec<DirWatcher>,
) {
    match w {
        Ok(w) => watchers.push(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the {what} dir; they will not hot-reload")
        }
    }
}

/// The data dir, opened and locked: nothing else may use it until this is dropped (the
/// server loads its secrets from the data dir only once it holds the lock).
pub struct Opened {
    cfg: Arc<Config>,
    store: Arc<Store>,
}

impl Opened {
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Loads the definitions and starts every thread. `pseudo` is the secret-keyed
    /// pseudonymizer of user and event ids.
    pub fn start(self, pseudo: Pseudonymizer) -> Result<Engine, StartError> {
        Engine::start_on(self.cfg, self.store, pseudo)
    }
}

impl Engine {
    /// Opens (and locks) the store in `cfg.data`, applying the log's tail after an unclean
    /// stop; [`Opened::start`] then starts the engine.
    pub fn open(cfg: Arc<Config>) -> Result<Opened, StartError> {
        let master = cfg
            .master_key()
            .map_err(starting("reading the master key"))?;
        if master.is_none() {
            tracing::warn!(
                "no master key: keys.bin holds every user's data key unwrapped, so a copy of the \
                 data dir can read user data, and restoring an old keys.bin undoes erasures; set \
                 TRIMTAB_MASTER_KEY or master_key_file (README, \"Privacy and security\")"
            );
        }
        let store = Arc::new(
            Store::open_with(
                &cfg.data,
                cfg.pipeline.store_cache_mb.max(1) << 20,
                master.as_ref(),
            )
            .map_err(starting(format!(
                "opening the data dir {}",
                cfg.data.display()
            )))?,
        );
        Ok(Opened { cfg, store })
    }

    fn start_on(
        cfg: Arc<Config>,
        store: Arc<Store>,
        pseudo: Pseudonymizer,
    ) -> Result<Engine, StartError> {
        let mut watchers = Vec::new();
        let rules = Rules::load(&cfg.scripts, cfg.rules.clone()).map_err(starting(format!(
            "loading rules from {}",
            cfg.scripts.display()
        )))?;
        watch("rules", rules.watch(), &mut watchers);
        let experiments = Experiments::load(
            &cfg.experiments_dir(),
            rules.clone(),
            cfg.experiments.holdout,
        )
        .map_err(starting("loading experiments"))?;
        watch("experiments", experiments.watch(), &mut watchers);
        let metrics = Arc::new(Metrics::new());
        let health = crate::health::Health::new();
        health.set_gauge(metrics.fatal.clone());
        let segments = SegmentService::new(cfg.segments.clone(), store.clone())
            .map_err(starting("starting the segmenter"))?;
        let (segmenter_stop, seg_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let segmenter = segments
            .start(seg_stop_rx, &health)
            .map_err(starting("starting the segmenter"))?;
        let bandits = Bandits::load(&cfg.bandits_dir()).map_err(starting("loading bandits"))?;
        watch("bandits", bandits.watch(), &mut watchers);
        let (learner, learner_tx) =
            crate::bandits::learner::start(&bandits, store.clone(), metrics.clone(), &health)
                .map_err(starting("starting the bandit learner"))?;
        let served = Arc::new(trimtab_learn::serving::Models::new());
        let (trainer_stop, trainer_stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (models, trainer) = crate::bandits::trainer::start(
            cfg.learn.clone(),
            &cfg.models,
            bandits.clone(),
            store.clone(),
            served.clone(),
            metrics.clone(),
            trainer_stop_rx,
            &health,
        )
        .map_err(starting("starting the trainer"))?;
        let hub = Arc::new(Hub::new(metrics.clone()));
        let pipeline = Arc::new(
            Pipeline::start(Services {
                cfg: cfg.clone(),
                store: store.clone(),
                rules: rules.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                pseudo: pseudo.clone(),
                experiments: experiments.clone(),
                segments: segments.clone(),
                bandits: bandits.clone(),
                models: served,
                learner: Some(learner_tx),
                health: health.clone(),
            })
            .map_err(starting("starting pipeline threads"))?,
        );
        {
            // Segments read the checkpoints: make them current first (not a strong reference:
            // the pipeline already holds the segment service).
            let p = Arc::downgrade(&pipeline);
            segments.set_before_read(Box::new(move || {
                if let Some(p) = p.upgrade() {
                    if !p.checkpoint_all(Duration::from_secs(10)) {
                        tracing::warn!("segments: not every shard checkpointed in time; some states may be a few seconds old");
                    }
                }
            }));
        }
        Ok(Engine {
            cfg,
            pipeline,
            hub,
            rules,
            experiments,
            segments,
            bandits,
            models,
            metrics,
            pseudo,
            health,
            store,
            backtests: Default::default(),
            background: Mutex::new(Some(Background {
                watchers,
                trainer_stop,
                trainer,
                learner,
                segmenter_stop,
                segmenter,
            })),
        })
    }

    /// Stops everything, in order, once no request can arrive any more: the pipeline drains
    /// its queues and checkpoints every user, watching stops, a training in progress is
    /// abandoned (registry writes are atomic renames, so nothing half-written becomes
    /// current), then the learner and the segmenter stop. A second call does nothing.
    pub fn stop(&self) {
        let Some(bg) = self
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        self.pipeline.shutdown();
        drop(bg.watchers);
        drop(bg.trainer_stop);
        let until = Instant::now() + Duration::from_secs(2);
        while !bg.trainer.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if bg.trainer.is_finished() {
            let _ = bg.trainer.join();
        } else {
            tracing::info!("shutdown: a model training was in progress and is abandoned");
        }
        // Shards are gone; the last sender is the registry's: disconnecting stops the learner.
        self.bandits.disconnect();
        let _ = bg.learner.join();
        drop(bg.segmenter_stop);
        let _ = bg.segmenter.join();
    }

    /// An experiment's results from its stored sufficient statistics (blocking; call after
    /// [`Pipeline::sync`] so that every acknowledged event is counted).
    pub fn experiment_results(&self, c: &Compiled, now_ms: i64) -> Result<Value, ReadError> {
        let rows = self.experiment_rows(&c.def.id, None)?;
        Ok(self.experiment_results_of(c, &rows, now_ms))
    }

    /// An experiment's results from the given sufficient statistics (a cluster's sums).
    pub fn experiment_results_of(
        &self,
        c: &Compiled,
        rows: &[trimtab_store::StatRow],
        now_ms: i64,
    ) -> Value {
        crate::experiments::results::results(c, rows, now_ms, &self.experiments)
    }

    /// Every experiment statistic this node keeps for cluster partition `part` (the groups
    /// `<experiment>/p<part>`), blocking: a cluster checkpoint's mark carries them.
    pub fn partition_stats(
        &self,
        part: u32,
    ) -> Result<Vec<(String, trimtab_store::StatRow)>, ReadError> {
        Ok(self
            .store
            .stats_where(|g| crate::config::group_partition(g) == Some(part))?)
    }

    /// An experiment's stored sufficient statistics (blocking). In cluster mode they are kept
    /// per partition: summed over `partitions` (None: every partition this node has counted).
    pub fn experiment_rows(
        &self,
        id: &str,
        partitions: Option<&[u32]>,
    ) -> Result<Vec<trimtab_store::StatRow>, ReadError> {
        if !self.cfg.cluster.enabled() {
            return Ok(self.store.stats(id)?);
        }
        let prefix = format!("{id}/p");
        let mut sums: Vec<trimtab_store::StatRow> = Vec::new();
        for (group, (key, v)) in self.store.stats_prefixed(&prefix)? {
            let Some(p) = group[prefix.len()..].parse::<u32>().ok() else {
                continue;
            };
            if partitions.is_some_and(|ps| !ps.contains(&p)) {
                continue;
            }
            add_row(&mut sums, key, v);
        }
        Ok(sums)
    }

    /// The rule lab as this server runs rules: its features, caps, limits, experiments and
    /// bandits.
    pub fn lab_config(&self) -> crate::lab::LabConfig {
        crate::lab::LabConfig::of(&self.cfg)
    }

    /// The user's recent events (at most [`crate::lab::dry_run::MAX_EVENTS`], oldest first),
    /// from a bounded read of the newest records of the event store (blocking).
    pub fn recent_events(
        &self,
        user: &trimtab_privacy::UserKey,
    ) -> Result<Vec<Arc<trimtab_wire::Event>>, ReadError> {
        let recs = self.store.recent_events(user, RECENT_WINDOW)?;
        let mut evs: Vec<Arc<trimtab_wire::Event>> = recs
            .iter()
            .filter_map(|(_, plain)| postcard::from_bytes(plain).ok().map(Arc::new))
            .collect();
        let skip = evs.len().saturating_sub(crate::lab::dry_run::MAX_EVENTS);
        evs.drain(..skip);
        Ok(evs)
    }

    /// Starts a backtest of `req` over this server's stored events with its installed rules.
    pub fn start_backtest(
        &self,
        req: crate::lab::backtest::Request,
    ) -> Result<Arc<crate::lab::jobs::Job>, crate::lab::jobs::StartError> {
        self.backtests.start(
            self.store.clone(),
            self.lab_config(),
            self.cfg.scripts.clone(),
            req,
        )
    }

    /// A bandit slot's logged decisions as JSONL (blocking; call after [`Pipeline::sync`]):
    /// log rows, or full records with `records`; decisions still in their attribution window
    /// only with `open`.
    pub fn bandit_log(
        &self,
        slot: &str,
        now_ms: i64,
        open: bool,
        records: bool,
    ) -> Result<Vec<u8>, ReadError> {
        Ok(crate::bandits::export::write_jsonl(
            &self.store,
            slot,
            now_ms,
            open,
            records,
        )?)
    }
}

/// Event-store records a dry run reads back for the user's recent events.
const RECENT_WINDOW: u64 = 50_000;

/// Re-wraps `keys.bin` in the data dir of a stopped server (`trimtab keys rotate`): from the
/// `current` master key (None: not wrapped) to `new` (None: unwrapped). A running server holds
/// the data dir's lock: the error says so. Returns how many user keys it holds.
pub fn rewrap_keys(
    data: &Path,
    current: Option<&trimtab_privacy::MasterKey>,
    new: Option<&trimtab_privacy::MasterKey>,
) -> Result<usize, ReadError> {
    Ok(trimtab_store::rewrap_keys(data, current, new)?)
}

/// A bandit slot's logged decisions as JSONL from the data dir of a stopped server (`trimtab
/// export-log`). A running server holds the data dir's lock: the error says so.
pub fn export_bandit_log(
    data: &Path,
    master_key: Option<&trimtab_privacy::MasterKey>,
    slot: &str,
    now_ms: i64,
    open: bool,
    records: bool,
) -> Result<Vec<u8>, ReadError> {
    let store = Store::open_with(data, 16 << 20, master_key).map_err(|e| match e {
        StoreError::Locked { .. } => ReadError(format!(
            "{e}; while it runs, use GET /v1/bandits/{slot}/log with the admin token"
        )),
        other => other.into(),
    })?;
    Ok(crate::bandits::export::write_jsonl(
        &store, slot, now_ms, open, records,
    )?)
}

/// `trimtab rules backtest --data DIR`: a backtest of `req` over the stored events of a
/// stopped server's data dir, with the rules of `installed` (the configured scripts dir).
pub fn backtest_data_dir(
    data: &Path,
    master_key: Option<&trimtab_privacy::MasterKey>,
    lab: crate::lab::LabConfig,
    installed: &Path,
    req: &crate::lab::backtest::Request,
) -> Result<crate::lab::backtest::Outcome, ReadError> {
    use crate::lab::backtest;
    let (_set, world) =
        backtest::world(lab, installed, req).map_err(|e| ReadError(e.to_string()))?;
    let store = Store::open_with(data, 16 << 20, master_key).map_err(|e| match e {
        StoreError::Locked { .. } => ReadError(format!(
            "{e}; while it runs, use POST /v1/rules/backtest with the admin token"
        )),
        other => other.into(),
    })?;
    let progress = backtest::Progress::default();
    let (audience, truncated) =
        backtest::collect(&store, req, &progress).map_err(|e| ReadError(e.to_string()))?;
    Ok(backtest::replay(
        &world, req, &audience, truncated, &progress,
    ))
}

/// `trimtab rules backtest --events FILE`: a backtest of `req` over events in a JSONL file
/// (wire events naming their `user`, e.g. the simulator's `--offline --events`), each user's
/// in the file's order, received at their own `ts`.
pub fn backtest_events_file(
    file: &Path,
    lab: crate::lab::LabConfig,
    installed: &Path,
    req: &crate::lab::backtest::Request,
) -> Result<crate::lab::backtest::Outcome, ReadError> {
    use crate::lab::backtest;
    let (_set, world) =
        backtest::world(lab, installed, req).map_err(|e| ReadError(e.to_string()))?;
    let (audience, truncated) =
        backtest::collect_file(file, req).map_err(|e| ReadError(e.to_string()))?;
    Ok(backtest::replay(
        &world,
        req,
        &audience,
        truncated,
        &backtest::Progress::default(),
    ))
}

/// Adds one row of sufficient statistics into `sums` (summed by segment, arm and metric).
pub fn add_row(sums: &mut Vec<trimtab_store::StatRow>, key: (String, String, String), v: [f64; 6]) {
    match sums.iter_mut().find(|(k, _)| *k == key) {
        Some((_, cur)) => {
            for (c, x) in cur.iter_mut().zip(v) {
                *c += x;
            }
        }
        None => sums.push((key, v)),
    }
}
