//! The live segmenter: a background thread that re-clusters all users periodically from a
//! snapshot read of the store (one redb read transaction; it never blocks the shards or the
//! writer), on its own one-thread rayon pool so it cannot starve the shards, both threads at
//! nice +19 ([`BACKGROUND_NICE`]) so that a run yields the CPU to the shards, the writer and
//! the HTTP workers on a busy machine (yet still progresses, where `SCHED_IDLE` might not
//! run at all under a steady load), and publishes the
//! result as a read-only snapshot (`ArcSwap`). Between runs, shards assign new and changed
//! users online (nearest centroid / core point / GMM posterior) with [`SegmentService::assign`].
//! Segment ids stay stable across runs (the previous run's registry is passed on).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use crossbeam_channel::{bounded, Receiver, Sender};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{Algo, Params, Segmenter};
use crate::features::UserState;
use trimtab_store::Store;

/// `[segments]` config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SegmentsConfig {
    /// Re-cluster every this many seconds (0 = never in the background; `POST /v1/segments/refresh` still works).
    pub refresh_s: u64,
    /// Fewer users than this: no segments yet.
    pub min_users: usize,
    /// Most users read per run.
    pub max_users: usize,
    /// `gmm`, `kmeans` or `dbscan`.
    pub algo: String,
    /// Number of segments (k-means, GMM); 0 = chosen by BIC over 2..=`k_max`.
    pub k: usize,
    pub k_max: usize,
    /// DBSCAN radius (robust-scaled units) and core-point neighbours.
    pub eps: f32,
    pub min_points: usize,
    /// Points of the 2-D projection kept for the dashboard's scatter plot.
    pub projection_points: usize,
}

impl Default for SegmentsConfig {
    fn default() -> Self {
        SegmentsConfig {
            refresh_s: 300,
            min_users: 30,
            max_users: 200_000,
            algo: "kmeans".into(),
            k: 4,
            k_max: 8,
            eps: 1.0,
            min_points: 10,
            projection_points: 2_000,
        }
    }
}

/// Segment sizes of one run: (time, [(segment id, name, size)]).
type SizesAt = (i64, Vec<(u32, String, usize)>);

/// One published run.
pub struct Snapshot {
    pub segmenter: Segmenter,
    pub at_ms: i64,
    pub users: usize,
    pub noise: usize,
    /// (x, y, segment id or −1) for a sample of users.
    pub projection: Vec<(f32, f32, i32)>,
}

pub struct SegmentService {
    cfg: SegmentsConfig,
    store: Arc<Store>,
    current: ArcSwapOption<Snapshot>,
    /// (time, [(segment id, name, size)]) of recent runs: sizes over time.
    history: Mutex<VecDeque<SizesAt>>,
    pool: rayon::ThreadPool,
    kick: Sender<()>,
    kicked: Receiver<()>,
    last_error: Mutex<Option<String>>,
    /// Called before reading the states: makes the engine's checkpoints current.
    before_read: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

use trimtab_util::now_ms;

/// Nice value of the segmenter's threads: a run (reading, decoding and clustering every user,
/// a few hundred ms of CPU at 40 000 users) is background work, not on any answer's path.
pub use crate::sched::BACKGROUND_NICE;

impl SegmentService {
    pub fn new(cfg: SegmentsConfig, store: Arc<Store>) -> std::io::Result<Arc<SegmentService>> {
        let pool = crate::sched::background_pool("trimtab-segmenter-pool", 1)?;
        let (kick, kicked) = bounded(1);
        Ok(Arc::new(SegmentService {
            cfg,
            store,
            current: ArcSwapOption::empty(),
            history: Mutex::new(VecDeque::new()),
            pool,
            kick,
            kicked,
            last_error: Mutex::new(None),
            before_read: std::sync::OnceLock::new(),
        }))
    }

    /// Sets what runs before each read of the stored states (the app: checkpoint every dirty
    /// user, since states are checkpointed every few seconds, not per event). Set once.
    pub fn set_before_read(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.before_read.set(f);
    }

    /// Starts the background thread; it stops when `stop` is dropped or sends.
    pub fn start(
        self: &Arc<Self>,
        stop: Receiver<()>,
        health: &Arc<crate::health::Health>,
    ) -> std::io::Result<JoinHandle<()>> {
        let me = self.clone();
        health.spawn("trimtab-segmenter", move || {
            crate::sched::set_nice(BACKGROUND_NICE);
            // A first run soon after start, then every refresh_s (0: only when asked).
            let every = me.cfg.refresh_s;
            let mut wait = Duration::from_secs(if every == 0 { 3600 } else { 5 });
            loop {
                let asked = crossbeam_channel::select! {
                    recv(stop) -> _ => return,
                    recv(me.kicked) -> _ => true,
                    default(wait) => false,
                };
                wait = Duration::from_secs(if every == 0 { 3600 } else { every });
                if every == 0 && !asked {
                    continue;
                }
                if let Err(e) = me.run_once() {
                    tracing::warn!("segmentation run failed: {e}");
                    *me.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
        })
    }

    /// Asks the background thread for a run now (returns at once).
    pub fn refresh(&self) {
        let _ = self.kick.try_send(());
    }

    fn params(&self) -> Result<(Algo, Params), String> {
        let algo: Algo = self
            .cfg
            .algo
            .parse()
            .map_err(|e: super::SegError| e.to_string())?;
        Ok((
            algo,
            Params {
                k: (self.cfg.k > 0).then_some(self.cfg.k),
                k_max: self.cfg.k_max.max(2),
                eps: self.cfg.eps,
                min_points: self.cfg.min_points,
                ..Params::default()
            },
        ))
    }

    /// Reads every user, clusters and publishes. Blocking; runs on the segmenter thread.
    pub fn run_once(&self) -> Result<(), String> {
        let (algo, params) = self.params()?;
        if let Some(f) = self.before_read.get() {
            f();
        }
        let rows = self
            .store
            .all_states(self.cfg.max_users)
            .map_err(|e| e.to_string())?;
        let states: Vec<UserState> = rows
            .iter()
            .filter_map(|(_, b)| UserState::decode(b))
            .collect();
        if states.len() < self.cfg.min_users.max(2) {
            tracing::debug!(users = states.len(), "too few users to segment yet");
            return Ok(());
        }
        let now = now_ms();
        let previous = self.current.load_full();
        let (seg, labels) = self
            .pool
            .install(|| {
                Segmenter::fit_states(
                    &states,
                    now,
                    algo,
                    &params,
                    previous.as_ref().map(|p| &p.segmenter.registry),
                )
            })
            .map_err(|e| e.to_string())?;
        let step = (states.len() / self.cfg.projection_points.max(1)).max(1);
        let projection = states
            .iter()
            .zip(&labels)
            .step_by(step)
            .map(|(s, l)| {
                let p = seg.project(&super::features::feature_vector(s, now));
                (p[0], p[1], *l)
            })
            .collect();
        let noise = labels.iter().filter(|l| **l < 0).count();
        let sizes = seg
            .segments
            .iter()
            .map(|s| (s.id, s.name.clone(), s.size))
            .collect();
        tracing::info!(
            users = states.len(),
            segments = seg.segments.len(),
            noise,
            "segments refreshed"
        );
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            h.push_back((now, sizes));
            while h.len() > 288 {
                h.pop_front();
            }
        }
        self.current.store(Some(Arc::new(Snapshot {
            segmenter: seg,
            at_ms: now,
            users: states.len(),
            noise,
            projection,
        })));
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// The segment name of a user now (online assignment), or "" (no model yet, or noise).
    pub fn assign(&self, state: &UserState, now_ms: i64) -> String {
        let cur = self.current.load();
        let Some(snap) = cur.as_ref() else {
            return String::new();
        };
        snap.segmenter
            .assign_state(state, now_ms)
            .and_then(|id| snap.segmenter.segment(id))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// `GET /v1/segments`.
    pub fn describe(&self) -> Value {
        let cur = self.current.load_full();
        let history: Vec<Value> = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(t, sizes)| {
                json!({"ts": t, "sizes": sizes.iter().map(|(id, name, n)| json!({"id": id, "name": name, "size": n})).collect::<Vec<_>>()})
            })
            .collect();
        let last_error = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match cur {
            None => json!({"segments": [], "computed_at_ms": null, "users": 0,
                "history": history, "last_error": last_error,
                "note": format!("no segments yet: they are computed every {} s once at least {} users exist", self.cfg.refresh_s, self.cfg.min_users)}),
            Some(s) => json!({
                "algo": s.segmenter.algo,
                "computed_at_ms": s.at_ms,
                "users": s.users,
                "noise": s.noise,
                "features": s.segmenter.feature_names,
                "segments": s.segmenter.segments,
                "bic": s.segmenter.bic_curve,
                "projection": s.projection.iter().map(|(x, y, l)| json!([x, y, l])).collect::<Vec<_>>(),
                "history": history,
                "last_error": last_error,
            }),
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Both of the segmenter's threads run at [`BACKGROUND_NICE`]: the one that reads the
    /// states (seen from its `before_read` hook) and the pool's that clusters them.
    #[test]
    fn the_segmenter_runs_at_background_priority() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("data")).unwrap());
        let cfg = SegmentsConfig {
            refresh_s: 0,
            ..SegmentsConfig::default()
        };
        let svc = SegmentService::new(cfg, store).unwrap();
        assert_eq!(svc.pool.install(crate::sched::nice), BACKGROUND_NICE);
        let (tx, rx) = crossbeam_channel::unbounded();
        svc.set_before_read(Box::new(move || {
            let _ = tx.send(crate::sched::nice());
        }));
        let own = crate::sched::nice();
        let (stop_tx, stop_rx) = bounded(1);
        let thread = svc.start(stop_rx, &crate::health::Health::new()).unwrap();
        // The thread that started it is not lowered by any of this.
        assert_eq!(crate::sched::nice(), own);
        svc.refresh();
        let nice = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(nice, BACKGROUND_NICE);
        drop(stop_tx);
        thread.join().unwrap();
    }
}
