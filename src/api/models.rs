//! Model endpoints (admin token): what is served and how the last training went, and a
//! training on demand.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::Admin;
use super::AppState;

/// `GET /v1/models`: every click model of a bandit slot: served version and model card, the
/// error of a refused file, the last training's outcome.
pub async fn list(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "dir": st.cfg.models.display().to_string(),
        "models": st.models.statuses(),
    }))
}

/// `POST /v1/models/retrain`: trains every slot's model now, in the background (202).
pub async fn retrain(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    // Train on every acknowledged outcome (the trainer reads the indexed store).
    let _ = st.pipeline.sync().await;
    let queued = st.models.retrain();
    HttpResponse::Accepted().json(json!({ "queued": queued }))
}
