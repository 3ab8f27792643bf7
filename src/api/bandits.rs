//! Bandit endpoints (admin token): list, read, create/replace, delete, guardrail reset, and the
//! slot's decision log as logged-bandit-feedback JSONL.

use crate::event::Code;
use crate::experiments::def::Definition;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::auth::Admin;
use super::error::ApiError;
use super::{now_ms, read_body, AppState};
use crate::bandits::def::BanditDef;
use crate::bandits::BanditsError;
use crate::event::{parse_json, require_object};

fn bandit_error(e: BanditsError) -> ApiError {
    match e {
        BanditsError::Invalid(d) => ApiError::new(Code::InvalidBandit, d.message).at(d.path),
        BanditsError::NotFound(s) => ApiError::not_found(format!("no bandit on slot {s:?}")),
        other => ApiError::internal(other),
    }
}

fn found(st: &AppState, slot: &str) -> Result<(), ApiError> {
    if st.bandits.defs().contains_key(slot) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no bandit on slot {slot:?}")))
    }
}

/// `GET /v1/bandits`: every bandit slot with its state, plus refused definition files.
pub async fn list(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    HttpResponse::Ok().json(st.bandits.summary())
}

/// `GET /v1/bandits/{slot}`: definition, policy version, state (learning, fallback with its
/// reason, paused), per-arm and per-group counters and the lift over the holdout.
pub async fn get(
    st: web::Data<AppState>,
    _: Admin,
    slot: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    found(&st, &slot)?;
    Ok(HttpResponse::Ok().json(st.bandits.status(&slot)))
}

/// `PUT /v1/bandits/{slot}` with a JSON definition: validated, stored as
/// `scripts/bandits/SLOT.toml`, live at once (the learner rebuilds the slot from its log).
pub async fn put(
    st: web::Data<AppState>,
    _: Admin,
    slot: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    require_object(&body)?;
    let v = parse_json(&body)?;
    let def = BanditDef::from_json(&slot, v).map_err(|d| bandit_error(BanditsError::Invalid(d)))?;
    let b = st.bandits.clone();
    web::block(move || b.put(def))
        .await
        .map_err(ApiError::internal)?
        .map_err(bandit_error)?;
    let text = std::str::from_utf8(&body).map_err(ApiError::internal)?;
    super::share(&st, trimtab_cluster::DefKind::Bandit, &slot, Some(text)).await?;
    Ok(HttpResponse::Ok().json(st.bandits.status(&slot)))
}

/// `DELETE /v1/bandits/{slot}`: the slot goes back to rules/experiments (its log stays).
pub async fn delete(
    st: web::Data<AppState>,
    _: Admin,
    slot: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let b = st.bandits.clone();
    let slot = slot.into_inner();
    let s = slot.clone();
    web::block(move || b.delete(&s))
        .await
        .map_err(ApiError::internal)?
        .map_err(bandit_error)?;
    super::share(&st, trimtab_cluster::DefKind::Bandit, &slot, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/bandits/{slot}/reset`: leaves fallback; the guardrail compares only decisions
/// from now on.
pub async fn reset(
    st: web::Data<AppState>,
    _: Admin,
    slot: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let b = st.bandits.clone();
    let s = slot.clone();
    web::block(move || b.reset_guardrail(&s, now_ms()))
        .await
        .map_err(ApiError::internal)?
        .map_err(bandit_error)?;
    Ok(HttpResponse::Ok().json(st.bandits.status(&slot)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// `rows` (default): the logged-bandit-feedback format; `records`: every field.
    #[serde(default)]
    format: Option<String>,
    /// Include decisions whose attribution window is still open (reward not final).
    #[serde(default)]
    open: Option<bool>,
}

/// `GET /v1/bandits/{slot}/log`: the slot's logged decisions as JSONL, oldest first.
pub async fn log(
    st: web::Data<AppState>,
    _: Admin,
    slot: web::Path<String>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if !trimtab_engine::experiments::def::valid_name(&slot) {
        return Err(ApiError::new(
            Code::InvalidValue,
            "a slot name is [A-Za-z0-9_.-]{1,64}, not starting with a dot",
        )
        .at("slot"));
    }
    let q = web::Query::<LogQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(Code::BadQuery, e.to_string()).at("query"))?;
    // Every acknowledged decision's record is in the store before the log is read.
    st.pipeline
        .sync()
        .await
        .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?;
    let records = match q.format.as_deref() {
        None | Some("rows") => false,
        Some("records") => true,
        Some(other) => {
            return Err(ApiError::new(
                Code::BadQuery,
                format!("format must be `rows` or `records`, not {other:?}"),
            )
            .at("format"))
        }
    };
    let engine = st.engine.clone();
    let slot = slot.into_inner();
    let open = q.open.unwrap_or(false);
    let body = web::block(move || engine.bandit_log(&slot, now_ms(), open, records))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .body(body))
}
