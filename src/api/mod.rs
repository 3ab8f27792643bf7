//! HTTP and WebSocket endpoints (actix-web). Handlers are thin: authenticate (extractors in
//! [`auth`]), parse with [`crate::event`], call the pipeline, map the result through [`ApiError`].
//! Nothing here blocks an actix worker: storage, rules and fsync run on pipeline threads.

pub mod admin;
pub mod assets;
pub mod auth;
pub mod bandits;
pub mod error;
pub mod experiments;
pub mod ingest;
pub mod models;
pub mod ops;

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
}

impl std::ops::Deref for AppState {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

pub(crate) use crate::now_ms;

/// Reads a request body up to `limit` bytes; larger bodies are refused with 413 without being
/// read to the end.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
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

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1")
            .route("/identify", web::post().to(ingest::identify))
            .route("/anonymous", web::post().to(ingest::anonymous))
            .route("/events", web::post().to(ingest::events))
            .route("/decide", web::post().to(ingest::decide))
            .route("/ws", web::get().to(ingest::ws))
            .route("/me", web::get().to(admin::export_me))
            .route("/me", web::delete().to(admin::erase_me))
            .route("/rules", web::get().to(admin::rules_list))
            .route("/rules/{name}", web::get().to(admin::rule_get))
            .route("/rules/{name}", web::put().to(admin::rule_put))
            .route("/rules/{name}", web::delete().to(admin::rule_delete))
            .route("/users/{id}", web::get().to(admin::export_user))
            .route("/users/{id}", web::delete().to(admin::erase_user))
            .route("/admin/users/{key}", web::get().to(admin::export_by_key))
            .route("/admin/live", web::get().to(admin::live))
            .route("/segments", web::get().to(admin::segments))
            .route("/segments/refresh", web::post().to(admin::segments_refresh))
            .route("/experiments", web::get().to(experiments::list))
            .route("/experiments/{id}", web::get().to(experiments::get))
            .route("/experiments/{id}", web::put().to(experiments::put))
            .route("/experiments/{id}", web::delete().to(experiments::delete))
            .route(
                "/experiments/{id}/results",
                web::get().to(experiments::results),
            )
            .route("/stats/analyze", web::post().to(experiments::analyze))
            .route("/bandits", web::get().to(bandits::list))
            .route("/bandits/{slot}", web::get().to(bandits::get))
            .route("/bandits/{slot}", web::put().to(bandits::put))
            .route("/bandits/{slot}", web::delete().to(bandits::delete))
            .route("/bandits/{slot}/reset", web::post().to(bandits::reset))
            .route("/bandits/{slot}/log", web::get().to(bandits::log))
            .route("/models", web::get().to(models::list))
            .route("/models/retrain", web::post().to(models::retrain)),
    )
    .route("/healthz", web::get().to(ops::healthz))
    .route("/readyz", web::get().to(ops::readyz))
    .route("/metrics", web::get().to(ops::metrics))
    .default_service(web::to(ops::not_found));
}

#[cfg(test)]
mod tests;
