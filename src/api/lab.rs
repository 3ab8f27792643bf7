//! The rule lab's endpoints (admin): check a rule source as you type, dry-run it against one
//! user, backtest it on recorded traffic. Nothing here installs a rule, pushes to a page or
//! writes user data; blocking work runs off the actix workers.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::auth::Admin;
use super::error::ApiError;
use super::{read_body, AppState};
use crate::event::Code;
use crate::lab::{backtest, dry_run, jobs::StartError, LabError, RuleSet};
use crate::privacy::UserKey;

/// How long `POST /v1/rules/backtest` waits for a short backtest before answering 202.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    Ok(crate::event::parse_body(body)?)
}

fn lab_error(e: LabError) -> ApiError {
    match e {
        LabError::Compile {
            message, location, ..
        } => ApiError::new(Code::RuleCompileError, message).at(location),
        other => ApiError::internal(other),
    }
}

fn check_source(source: &str, max: usize) -> Result<(), ApiError> {
    if source.trim().is_empty() {
        return Err(ApiError::new(Code::InvalidValue, "the rule's source is empty").at("source"));
    }
    // Characters, as JSON Schema's maxLength counts them (a longer one in bytes does not
    // compile: the compile error says so).
    if crate::event::longer_than(source, max) {
        return Err(ApiError::new(
            Code::StringTooLong,
            format!("a rule is at most {max} characters"),
        )
        .at("source"));
    }
    Ok(())
}

/// `POST /v1/rules/check`'s body: a rule's source and nothing else.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleCheckRequest)]
pub struct CheckReq {
    /// The rule's Rhai source.
    #[schema(min_length = 1, max_length = 262144, pattern = "\\S")]
    pub source: String,
}

/// `POST /v1/rules/check` `{"source"}` → `{errors, warnings, on}`: compiled as an upload would
/// be; `errors` and `warnings` each `[{line, column, message}]`.
pub async fn check(
    st: web::Data<AppState>,
    _: Admin,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    let req: CheckReq = parse(&body)?;
    check_source(&req.source, trimtab_rules::MAX_SOURCE_BYTES)?;
    let rules = st.rules.clone();
    let report = web::block(move || rules.check_source(&req.source))
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(report))
}

/// `POST /v1/rules/dry-run`'s body: the source and the user, by the site's id (`user`) or by
/// pseudonymous key (`key`): exactly one of the two.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleDryRunRequest)]
pub struct DryRunReq {
    /// The rule's Rhai source.
    #[schema(min_length = 1, max_length = 262144, pattern = "\\S")]
    pub source: String,
    /// The site's own id of the user.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub user: Option<String>,
    /// The user's pseudonymous key (32 hex characters, as exports show it).
    #[serde(default)]
    #[schema(pattern = "^[0-9a-f]{32}$")]
    pub key: Option<String>,
}

/// `POST /v1/rules/dry-run` `{"source", "user"|"key"}`: the rule against the user's current
/// state with each of their recent events and a tick now; what it would ask for, the
/// operations and any error. Nothing is pushed or written.
pub async fn dry_run(
    st: web::Data<AppState>,
    _: Admin,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    let req: DryRunReq = parse(&body)?;
    check_source(&req.source, trimtab_rules::MAX_SOURCE_BYTES)?;
    let key = match (&req.user, &req.key) {
        (Some(u), None) => {
            super::ingest::check_str(u, "user", st.cfg.limits.max_string_len)?;
            st.pseudo.user(u)
        }
        (None, Some(k)) => UserKey(
            hex::decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| {
                    ApiError::new(Code::InvalidValue, "a user key is 32 hex characters").at("key")
                })?,
        ),
        _ => {
            return Err(ApiError::new(
                Code::InvalidValue,
                "name the user by exactly one of `user` (the site's id) or `key`",
            )
            .at("user"))
        }
    };
    let mut limits = st.cfg.rules.clone();
    limits.memo = false; // every run runs, so its operations are counted
    let source = req.source.clone();
    let set = web::block(move || {
        RuleSet::build(None, None, &[("candidate".to_string(), source)], &limits)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(lab_error)?;
    let state = st
        .pipeline
        .peek(key)
        .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?
        .await
        .map_err(|_| ApiError::unavailable("the server stopped before answering"))??
        .ok_or_else(|| ApiError::not_found("no data is stored for this user"))?;
    // The user's latest events are in the event store before they are read.
    st.pipeline
        .sync()
        .await
        .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?;
    let engine = st.engine.clone();
    let out = web::block(move || {
        let events = engine.recent_events(&key)?;
        Ok::<_, trimtab_engine::service::ReadError>(dry_run::run(
            &set.rules,
            &key,
            *state,
            &events,
            crate::now_ms(),
        ))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /v1/rules/backtest` `{"source", "name"?, "from_ms"?, "to_ms"?, "sample"?,
/// "max_events"?}`: 200 with the result when it is done within 2 s, else 202 with its id
/// (then `GET /v1/rules/backtest/{id}`).
pub async fn backtest_start(
    st: web::Data<AppState>,
    _: Admin,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    let req: backtest::Request = parse(&body)?;
    check_source(&req.source, trimtab_rules::MAX_SOURCE_BYTES)?;
    req.validate()
        .map_err(|(path, msg)| ApiError::new(Code::InvalidValue, msg).at(path))?;
    // Every acknowledged event is in the event store before it is read.
    st.pipeline
        .sync()
        .await
        .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?;
    let engine = st.engine.clone();
    let job = web::block(move || engine.start_backtest(req))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            StartError::Busy(ref id) => {
                ApiError::new(Code::BacktestRunning, e.to_string()).at(id.clone())
            }
            StartError::Lab(l) => lab_error(l),
        })?;
    let j = job.clone();
    let done = web::block(move || j.wait(ANSWER_WITHIN))
        .await
        .map_err(ApiError::internal)?;
    let view = job.view();
    Ok(if done {
        HttpResponse::Ok().json(view)
    } else {
        HttpResponse::Accepted().json(view)
    })
}

fn job(st: &AppState, id: &str) -> Result<std::sync::Arc<crate::lab::jobs::Job>, ApiError> {
    st.backtests
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no backtest {id:?} (the last 8 are kept)")))
}

/// `GET /v1/rules/backtest/{id}`: its state, progress, and result once done.
pub async fn backtest_get(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(job(&st, &id)?.view()))
}

/// `DELETE /v1/rules/backtest/{id}`: cancels it (it stops between users; the result covers
/// those replayed).
pub async fn backtest_cancel(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let j = job(&st, &id)?;
    j.progress
        .cancel
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let w = j.clone();
    web::block(move || w.wait(std::time::Duration::from_secs(5)))
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(j.view()))
}
