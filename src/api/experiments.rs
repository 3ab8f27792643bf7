//! Experiment endpoints (admin token): list, read, create/replace, delete, results; and the
//! pure statistics endpoint `POST /v1/stats/analyze`.

use crate::event::Code;
use crate::experiments::def::Definition;
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use super::auth::Admin;
use super::error::ApiError;
use super::{now_ms, read_body, AppState};
use crate::event::{parse_json, require_object};
use crate::experiments::def::ExperimentDef;
use crate::experiments::{Compiled, ExperimentsError};

fn summary(c: &Compiled, now: i64) -> Value {
    json!({
        "id": c.def.id,
        "description": c.def.description,
        "status": c.def.status,
        "live": c.def.is_live(now),
        "origin": c.origin,
        "slots": c.def.slots(),
        "arms": c.arms.iter().map(|a| json!({"name": a.name, "weight": a.weight})).collect::<Vec<_>>(),
        "primary_metric": c.def.primary_metric,
        "guardrails": c.def.guardrails,
        "metrics": c.metrics.keys().collect::<Vec<_>>(),
    })
}

fn exp_error(e: ExperimentsError) -> ApiError {
    match e {
        ExperimentsError::Invalid(d) => {
            ApiError::new(Code::InvalidExperiment, d.message).at(d.path)
        }
        ExperimentsError::NotFound(id) => ApiError::not_found(format!("no experiment {id:?}")),
        other => ApiError::internal(other),
    }
}

fn find(st: &AppState, id: &str) -> Result<std::sync::Arc<Compiled>, ApiError> {
    st.experiments
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no experiment {id:?}")))
}

/// `GET /v1/experiments`: every experiment, plus definition files that were refused.
pub async fn list(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    let now = now_ms();
    let all: Vec<Value> = st
        .experiments
        .all()
        .iter()
        .map(|c| summary(c, now))
        .collect();
    HttpResponse::Ok().json(json!({
        "experiments": all,
        "problems": st.experiments.problems(),
        "holdout": st.experiments.holdout(),
    }))
}

/// `GET /v1/experiments/{id}`: the definition and its arms.
pub async fn get(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let c = find(&st, &id)?;
    let mut v = summary(&c, now_ms());
    v["definition"] = serde_json::to_value(&c.def).unwrap_or_default();
    Ok(HttpResponse::Ok().json(v))
}

/// `PUT /v1/experiments/{id}` with a JSON definition: validated, then stored as
/// `experiments/ID.toml` and live at once.
pub async fn put(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    require_object(&body)?;
    let v = parse_json(&body)?;
    let def =
        ExperimentDef::from_json(&id, v).map_err(|d| exp_error(ExperimentsError::Invalid(d)))?;
    let exps = st.experiments.clone();
    web::block(move || exps.put(def))
        .await
        .map_err(ApiError::internal)?
        .map_err(exp_error)?;
    let text = std::str::from_utf8(&body).map_err(ApiError::internal)?;
    super::share(&st, trimtab_cluster::DefKind::Experiment, &id, Some(text)).await?;
    let c = st
        .experiments
        .get(&id)
        .ok_or_else(|| ApiError::internal("stored experiment not loaded"))?;
    Ok(HttpResponse::Ok().json(summary(&c, now_ms())))
}

/// `DELETE /v1/experiments/{id}`: removes the definition (its statistics stay readable).
pub async fn delete(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let exps = st.experiments.clone();
    let id = id.into_inner();
    let i = id.clone();
    web::block(move || exps.delete(&i))
        .await
        .map_err(ApiError::internal)?
        .map_err(exp_error)?;
    super::share(&st, trimtab_cluster::DefKind::Experiment, &id, None).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /v1/experiments/{id}/results` (admin): statistics of every metric from the stored
/// sufficient statistics, per-segment results of the primary metric, SRM check, the history of
/// the always-valid p-value and a recommendation.
pub async fn results(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let c = find(&st, &id)?;
    if let Some(cluster) = &st.cluster {
        // Every node's sums for the partitions it owns, added up.
        let (rows, counted) = cluster
            .experiment_rows(&c.def.id)
            .await
            .map_err(|e| ApiError::from_cluster(e, st.cfg.pipeline.retry_after_s))?;
        let engine = st.engine.clone();
        let mut v = web::block(move || engine.experiment_results_of(&c, &rows, now_ms()))
            .await
            .map_err(ApiError::internal)?;
        v["cluster"] = json!({
            "partitions_counted": counted,
            "partitions": st.cfg.cluster.partitions,
        });
        return Ok(HttpResponse::Ok().json(v));
    }
    // Every acknowledged event's statistics are in the store before they are read.
    st.pipeline
        .sync()
        .await
        .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?;
    let engine = st.engine.clone();
    let v = web::block(move || engine.experiment_results(&c, now_ms()))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(v))
}

/// `POST /v1/stats/analyze` (admin): the statistics engine on summary statistics you bring.
pub async fn analyze(
    st: web::Data<AppState>,
    _: Admin,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use crate::experiments::stats;
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    require_object(&body)?;
    let v = parse_json(&body)?;
    let req: stats::AnalyzeRequest = crate::event::from_value(v, "")?;
    let out = web::block(move || stats::analyze(&req))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    Ok(HttpResponse::Ok().json(out))
}
