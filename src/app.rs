//! Wiring: loads the secrets, starts the engine (`trimtab_engine::Engine`: store, definitions,
//! pipeline and background threads) and the HTTP server, and runs the graceful shutdown (stop
//! accepting → close sockets → drain → commit → exit) on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::rt::net::TcpStream;
use actix_web::{web, App, HttpServer};
use anyhow::Context;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::privacy::{Pseudonymizer, Secrets, TokenSigner};
use trimtab_engine::Engine;

/// Runs `trimtab serve` until SIGTERM/SIGINT. `on_listen` is told the bound address and the
/// URL it serves (`https://` with `[tls]`).
pub fn serve(
    cfg: Config,
    on_listen: impl FnOnce(SocketAddr, &str) + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    // TLS first: a certificate that does not load stops the start before anything is opened.
    let certs = match cfg.tls.files() {
        Some((cert, key)) => Some(crate::tls::Certs::load(cert, key)?),
        None => None,
    };
    let _tls_watch = certs.as_ref().and_then(|c| c.watch());
    // The data dir first: its lock keeps a second server away from the secrets too.
    let opened = Engine::open(cfg.clone())?;
    let secrets = Secrets::load_or_create(
        &cfg.data,
        cfg.admin_token.as_deref(),
        cfg.write_key.as_deref(),
    )
    .and_then(|s| s.with_keys(cfg.token_key.as_deref(), cfg.pseudonym_key.as_deref()))
    .context("loading secrets")?;
    let engine = Arc::new(opened.start(Pseudonymizer::new(secrets.pseudonym_key))?);
    for (what, value) in &secrets.generated {
        // Shown once, on the terminal of the operator who started the first run; not logged.
        println!(
            "trimtab generated {what} (stored in {}/secrets.toml): {value}",
            cfg.data.display()
        );
    }
    // Cluster mode: join before taking traffic; a node that cannot join does not start.
    let cluster = if cfg.cluster.enabled() {
        let shared = trimtab_cluster::Secrets::derive(
            &secrets.pseudonym_key,
            &secrets.admin_token,
            &secrets.write_key,
            &secrets.token_key,
        );
        match trimtab_cluster::Cluster::start(engine.clone(), shared) {
            Ok(c) => Some(c),
            Err(e) => {
                engine.stop();
                anyhow::bail!("cluster: {e}");
            }
        }
    } else {
        None
    };
    let state = web::Data::new(AppState {
        cluster: cluster.clone(),
        engine: engine.clone(),
        signer: TokenSigner::new(secrets.token_key),
        admin_token: secrets.admin_token.clone(),
        write_key: secrets.write_key.clone(),
        ready: AtomicBool::new(true),
        limits: Arc::new(api::limit::Limiters::new(
            &cfg.rate,
            cfg.http.trust_forwarded_for,
        )),
    });
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let st = state.clone();
    let result = actix_web::rt::System::new().block_on(async move {
        // Rate-limit state of clients idle for a minute is dropped.
        let lim = st.limits.clone();
        actix_web::rt::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                every.tick().await;
                lim.forget_idle();
            }
        });
        let conns = Arc::new(api::conns::Counter::default());
        let per_ip = match (
            cfg.http.max_connections_per_ip,
            cfg.http.trust_forwarded_for,
        ) {
            (0, _) | (_, true) => None,
            (cap, false) => Some(cap),
        };
        let server = HttpServer::new(move || {
            let origins = st.cfg.allowed_origins.clone();
            App::new()
                .app_data(st.clone())
                .wrap(actix_web::middleware::from_fn(api::conns::refuse_over_cap))
                .configure(move |c| api::configure(c, &origins))
        })
        // Adjustments are small frames that must leave at once: no Nagle delay. The
        // connection's local address and scheme are kept for the Origin checks.
        .on_connect(move |conn, ext| {
            type Tls = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;
            let (tcp, tls) = if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
                (tcp, false)
            } else if let Some(t) = conn.downcast_ref::<Tls>() {
                (t.get_ref().0, true)
            } else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            if let Ok(local) = tcp.local_addr() {
                ext.insert(api::origin::Conn { local, tls });
            }
            if let (Some(cap), Ok(peer)) = (per_ip, tcp.peer_addr()) {
                ext.insert(conns.accept(peer.ip(), cap));
            }
        })
        .workers(workers)
        // The connection cap is per worker in actix.
        .max_connections(cfg.http.max_connections.div_ceil(workers))
        .disable_signals()
        .shutdown_timeout(10);
        let server = match &certs {
            Some(c) => server.bind_rustls_0_23(&cfg.addr, c.server_config()),
            None => server.bind(&cfg.addr),
        }
        .with_context(|| format!("cannot listen on {}", cfg.addr))?;
        let scheme = if certs.is_some() { "https" } else { "http" };
        if let Some(c) = certs.clone() {
            actix_web::rt::spawn(reload_on_sighup(c));
        }
        let addr = *server.addrs().first().context("no bound address")?;
        let server = server.run();
        let handle = server.handle();
        // A fatal failure (storage error, panicked engine thread): not ready at once (readyz
        // reads the engine's health), writes refused, and after a short grace — for probes
        // and scrapes to see it — the server stops without draining; the process exits with
        // the failure's code.
        let st = state.clone();
        let h = handle.clone();
        let grace = std::time::Duration::from_millis(cfg.pipeline.fatal_grace_ms);
        actix_web::rt::spawn(async move {
            let f = st.health.failed().await;
            st.ready.store(false, Ordering::Relaxed);
            tokio::time::sleep(grace).await;
            tracing::error!(
                exit_code = f.kind.exit_code(),
                "stopping after the fatal {} failure",
                f.kind.as_str()
            );
            st.hub.close_all();
            h.stop(false).await;
        });
        let st = state.clone();
        actix_web::rt::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown: no longer ready; closing sockets and draining");
            st.ready.store(false, Ordering::Relaxed);
            st.hub.close_all();
            handle.stop(true).await;
        });
        tracing::info!(%addr, scheme, "listening");
        on_listen(addr, &format!("{scheme}://{addr}"));
        server.await.context("http server failed")
    });
    if let Some(c) = &cluster {
        // Give the partitions back before the engine stops: what was read is in it.
        c.stop();
    }
    if let Some(f) = engine.health.fatal() {
        // Nothing is drained or checkpointed onto a store that failed: the log has every
        // acknowledged event, and the next start replays it.
        return Err(anyhow::Error::new(FatalExit(f.clone())));
    }
    // The server has stopped: no new work can arrive. Drain the queues, commit, stop.
    engine.stop();
    tracing::info!("stopped cleanly");
    result
}

/// `serve` ended on a fatal engine failure: the process exits with [`FatalExit::exit_code`].
#[derive(Debug)]
pub struct FatalExit(pub trimtab_engine::health::Fatal);

impl FatalExit {
    pub fn exit_code(&self) -> u8 {
        self.0.kind.exit_code()
    }
}

impl std::fmt::Display for FatalExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stopped after a fatal {} failure in the {}: {} (exit code {}; a restart replays the log)",
            self.0.kind.as_str(),
            self.0.what,
            self.0.message,
            self.exit_code()
        )
    }
}

impl std::error::Error for FatalExit {}

/// Reloads the TLS certificate on every SIGHUP.
async fn reload_on_sighup(certs: Arc<crate::tls::Certs>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!(
                "cannot listen for SIGHUP; the certificate reloads when its files change"
            );
            return;
        };
        while hup.recv().await.is_some() {
            let c = certs.clone();
            let _ = actix_web::rt::task::spawn_blocking(move || c.reload()).await;
        }
    }
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
