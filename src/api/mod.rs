//! HTTP and WebSocket endpoints (actix-web). Handlers are thin: authenticate (extractors in
//! [`auth`]), parse with [`crate::event`], call the pipeline, map the result through [`ApiError`].
//! Nothing here blocks an actix worker: storage, rules and fsync run on pipeline threads.

pub mod admin;
pub mod assets;
pub mod auth;
pub mod bandits;
pub mod conns;
pub mod error;
pub mod experiments;
pub mod ingest;
pub mod lab;
pub mod limit;
pub mod models;
pub mod openapi;
pub mod ops;
pub mod origin;

use crate::event::Code;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::web;
use futures_util::StreamExt;

use crate::privacy::TokenSigner;
use trimtab_engine::Engine;

pub use error::ApiError;

/// Everything the handlers share, as one value (a missing piece is a compile error, not a 500):
/// the engine — the one interface to the loop (`st.pipeline`, `st.rules`, … through `Deref`);
/// the store is not reachable from here — and what only the server needs: credentials and
/// readiness.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub signer: TokenSigner,
    pub admin_token: String,
    pub write_key: String,
    /// False once shutdown has begun (`/readyz` then answers 503).
    pub ready: AtomicBool,
    /// Rate limits per client IP and per user.
    pub limits: Arc<limit::Limiters>,
    /// Cluster mode: events go to the stream, a user's requests to the node that owns them.
    pub cluster: Option<Arc<trimtab_cluster::Cluster>>,
}

impl std::ops::Deref for AppState {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

pub(crate) use crate::now_ms;

/// Cluster mode: shares a definition this node just installed (or deleted) with every node;
/// alone, nothing to do.
pub(crate) async fn share(
    st: &AppState,
    kind: trimtab_cluster::DefKind,
    name: &str,
    body: Option<&str>,
) -> Result<(), error::ApiError> {
    match &st.cluster {
        Some(c) => c
            .share(kind, name, body)
            .await
            .map_err(|e| error::ApiError::from_cluster(e, st.cfg.pipeline.retry_after_s)),
        None => Ok(()),
    }
}

/// Reads a request body up to `limit` bytes within `http.body_timeout_s`; larger bodies are
/// refused with 413 without being read to the end, slower ones with 408.
pub async fn read_body(
    payload: web::Payload,
    limit: usize,
    cfg: &crate::config::Config,
) -> Result<web::BytesMut, ApiError> {
    let within = std::time::Duration::from_secs(cfg.http.body_timeout_s);
    match tokio::time::timeout(within, read_all(payload, limit)).await {
        Ok(body) => body,
        Err(_) => Err(ApiError::new(
            Code::RequestTimeout,
            format!(
                "the body did not arrive within {} s (http.body_timeout_s)",
                cfg.http.body_timeout_s
            ),
        )),
    }
}

async fn read_all(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::new(Code::BadRequest, e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                Code::BodyTooLarge,
                format!("the body exceeds the limit of {limit} bytes (limits.max_body_bytes)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// One path and the methods it takes, each with its handler; any other method on the path
/// answers 405 `method_not_allowed` with `Allow`. (The OpenAPI test reads these lines.)
macro_rules! resource {
    ($path:literal $(, $method:ident => $handler:path)+ $(,)?) => {
        web::resource($path)
            $(.route(web::$method().to($handler)))+
            .default_service(web::to(|req: actix_web::HttpRequest| async move {
                ops::method_not_allowed(&req, &[$(stringify!($method)),+])
            }))
    };
}

/// Registers every route. `origins` (the configured `allowed_origins`) get CORS on the
/// endpoints a page calls.
#[rustfmt::skip]
pub fn configure(cfg: &mut web::ServiceConfig, origins: &[String]) {
    let cors = || origin::cors(origins);
    cfg.service(
        web::scope("/v1")
            .service(resource!("/identify", post => ingest::identify))
            .service(resource!("/anonymous", post => ingest::anonymous).wrap(cors()))
            .service(resource!("/events", post => ingest::events).wrap(cors()))
            .service(resource!("/decide", post => ingest::decide).wrap(cors()))
            .service(resource!("/ws", get => ingest::ws))
            .service(resource!("/me", get => admin::export_me, delete => admin::erase_me).wrap(cors()))
            .service(resource!("/rules", get => admin::rules_list))
            .service(resource!("/rules/check", post => lab::check))
            .service(resource!("/rules/dry-run", post => lab::dry_run))
            .service(resource!("/rules/backtest", post => lab::backtest_start))
            .service(resource!("/rules/backtest/{id}", get => lab::backtest_get, delete => lab::backtest_cancel))
            .service(resource!("/rules/{name}", get => admin::rule_get, put => admin::rule_put, delete => admin::rule_delete))
            .service(resource!("/users/{id}", get => admin::export_user, delete => admin::erase_user))
            .service(resource!("/admin/users/{key}", get => admin::export_by_key))
            .service(resource!("/admin/live", get => admin::live))
            .service(resource!("/segments", get => admin::segments))
            .service(resource!("/segments/refresh", post => admin::segments_refresh))
            .service(resource!("/experiments", get => experiments::list))
            .service(resource!("/experiments/{id}", get => experiments::get, put => experiments::put, delete => experiments::delete))
            .service(resource!("/experiments/{id}/results", get => experiments::results))
            .service(resource!("/stats/analyze", post => experiments::analyze))
            .service(resource!("/bandits", get => bandits::list))
            .service(resource!("/bandits/{slot}", get => bandits::get, put => bandits::put, delete => bandits::delete))
            .service(resource!("/bandits/{slot}/reset", post => bandits::reset))
            .service(resource!("/bandits/{slot}/log", get => bandits::log))
            .service(resource!("/models", get => models::list))
            .service(resource!("/models/retrain", post => models::retrain))
            .service(resource!("/openapi.json", get => openapi::serve)),
    )
    .service(resource!("/healthz", get => ops::healthz))
    .service(resource!("/readyz", get => ops::readyz))
    .service(resource!("/metrics", get => ops::metrics))
    .default_service(web::to(ops::not_found));
}

#[cfg(test)]
mod tests;
