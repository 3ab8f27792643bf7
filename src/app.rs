//! Wiring: opens the data dir, loads secrets and rules, starts the pipeline threads and the
//! HTTP server, and runs the graceful shutdown (stop accepting → close sockets → drain →
//! commit → exit) on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::delivery::Hub;
use crate::experiments::Experiments;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::privacy::{Pseudonymizer, Secrets, TokenSigner};
use crate::rules::Rules;
use crate::segments::service::SegmentService;
use crate::store::Store;

/// Runs `trimtab serve` until SIGTERM/SIGINT. `on_listen` is told the bound address.
pub fn serve(
    cfg: Config,
    on_listen: impl FnOnce(SocketAddr) + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let store = Arc::new(Store::open_with_cache(
        &cfg.data,
        cfg.pipeline.store_cache_mb.max(1) << 20,
    )?);
    let secrets = Secrets::load_or_create(
        &cfg.data,
        cfg.admin_token.as_deref(),
        cfg.write_key.as_deref(),
    )
    .context("loading secrets")?;
    for (what, value) in &secrets.generated {
        // Shown once, on the terminal of the operator who started the first run; not logged.
        println!(
            "trimtab generated {what} (stored in {}/secrets.toml): {value}",
            cfg.data.display()
        );
    }
    let rules = Rules::load(&cfg.scripts, cfg.rules.clone())
        .with_context(|| format!("loading rules from {}", cfg.scripts.display()))?;
    let watcher = match rules.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the scripts dir; rules will not hot-reload");
            None
        }
    };
    for r in rules.statuses() {
        match &r.compile_error {
            Some(e) => {
                tracing::warn!(rule = %r.name, error = %e.message, location = %e.location, "rule failed to compile")
            }
            None => tracing::info!(rule = %r.name, "rule loaded"),
        }
    }
    let experiments = Experiments::load(
        &cfg.experiments_dir(),
        rules.clone(),
        cfg.experiments.holdout,
    )
    .context("loading experiments")?;
    let exp_watcher = match experiments.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the experiments dir; definitions will not hot-reload");
            None
        }
    };
    for p in experiments.problems() {
        tracing::warn!(experiment = %p.id, file = %p.file, path = %p.path, "experiment refused: {}", p.error);
    }
    let segments = SegmentService::new(cfg.segments.clone(), store.clone())
        .context("starting the segmenter")?;
    let (seg_stop, seg_stop_rx) = crossbeam_channel::bounded::<()>(0);
    let seg_thread = segments
        .start(seg_stop_rx)
        .context("starting the segmenter")?;
    let metrics = Arc::new(Metrics::new());
    let bandits = crate::bandits::Bandits::load(&cfg.bandits_dir()).context("loading bandits")?;
    for p in bandits.problems() {
        tracing::warn!(slot = %p.id, file = %p.file, path = %p.path, "bandit refused: {}", p.error);
    }
    let bandit_watcher = match bandits.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the bandits dir; definitions will not hot-reload");
            None
        }
    };
    let (learner_thread, learner_tx) =
        crate::bandits::learner::start(&bandits, store.clone(), metrics.clone())
            .context("starting the bandit learner")?;
    let models = Arc::new(crate::learn::serving::Models::new());
    let (trainer_stop, trainer_stop_rx) = crossbeam_channel::bounded::<()>(0);
    let (model_service, trainer_thread) = crate::bandits::trainer::start(
        cfg.learn.clone(),
        &cfg.models,
        bandits.clone(),
        store.clone(),
        models.clone(),
        metrics.clone(),
        trainer_stop_rx,
    )
    .context("starting the trainer")?;
    let hub = Arc::new(Hub::new(metrics.clone()));
    let pseudo = Pseudonymizer::new(secrets.pseudonym_key);
    let pipeline = Arc::new(
        Pipeline::start(crate::pipeline::Services {
            cfg: cfg.clone(),
            store: store.clone(),
            rules: rules.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
            pseudo: pseudo.clone(),
            experiments: experiments.clone(),
            segments: segments.clone(),
            bandits: bandits.clone(),
            models: models.clone(),
            learner: Some(learner_tx),
        })
        .context("starting pipeline threads")?,
    );
    {
        // Segments read the checkpoints: make them current first (not a strong reference,
        // the pipeline already holds the segment service).
        let p = Arc::downgrade(&pipeline);
        segments.set_before_read(Box::new(move || {
            if let Some(p) = p.upgrade() {
                if !p.checkpoint_all(std::time::Duration::from_secs(10)) {
                    tracing::warn!("segments: not every shard checkpointed in time; some states may be a few seconds old");
                }
            }
        }));
    }
    let state = web::Data::new(AppState {
        cfg: cfg.clone(),
        pipeline: pipeline.clone(),
        hub: hub.clone(),
        rules,
        experiments,
        segments,
        bandits: bandits.clone(),
        model_service,
        metrics,
        store,
        signer: TokenSigner::new(secrets.token_key),
        pseudo,
        admin_token: secrets.admin_token.clone(),
        write_key: secrets.write_key.clone(),
        ready: AtomicBool::new(true),
    });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let st = state.clone();
    let result = actix_web::rt::System::new().block_on(async move {
        let server =
            HttpServer::new(move || App::new().app_data(st.clone()).configure(api::configure))
                // Adjustments are small frames that must leave at once: no Nagle delay.
                .on_connect(|conn, _ext| {
                    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                        let _ = tcp.set_nodelay(true);
                    }
                })
                .workers(workers)
                .disable_signals()
                .shutdown_timeout(10)
                .bind(&cfg.addr)
                .with_context(|| format!("cannot listen on {}", cfg.addr))?;
        let addr = *server.addrs().first().context("no bound address")?;
        let server = server.run();
        let handle = server.handle();
        let st = state.clone();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown: no longer ready; closing sockets and draining");
            st.ready.store(false, Ordering::Relaxed);
            st.hub.close_all();
            handle.stop(true).await;
        });
        tracing::info!(%addr, "listening");
        on_listen(addr);
        server.await.context("http server failed")
    });
    // The server has stopped: no new work can arrive. Drain the queues and commit.
    pipeline.shutdown();
    drop(watcher);
    drop(exp_watcher);
    drop(bandit_watcher);
    // The trainer stops between trainings; one in progress is abandoned rather than waited
    // for (registry writes are atomic renames, so nothing half-written is ever CURRENT).
    drop(trainer_stop);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !trainer_thread.is_finished() && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if trainer_thread.is_finished() {
        let _ = trainer_thread.join();
    } else {
        tracing::info!("shutdown: a model training was in progress and is abandoned");
    }
    // Shards are gone; the last sender is the registry's: disconnecting stops the learner.
    bandits.disconnect();
    let _ = learner_thread.join();
    drop(seg_stop);
    let _ = seg_thread.join();
    tracing::info!("stopped cleanly");
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
