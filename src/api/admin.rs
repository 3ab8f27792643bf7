//! Admin endpoints (Bearer admin token): rules, user export and erasure. Plus the user's own
//! export and erasure with their token (`/v1/me`), so a person can get and delete their data.

use crate::event::Code;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::auth::{Admin, Caller};
use super::error::ApiError;
use super::{read_body, AppState};
use crate::privacy::UserKey;
use crate::rules::RulesError;

fn rules_error(e: RulesError) -> ApiError {
    match e {
        RulesError::Compile { info } => {
            ApiError::new(Code::RuleCompileError, info.message.clone()).at(info.location.clone())
        }
        RulesError::InvalidName { .. } => {
            ApiError::new(Code::InvalidRuleName, e.to_string()).at("name")
        }
        RulesError::NotFound(..) => ApiError::not_found(e.to_string()),
        other => ApiError::internal(other),
    }
}

/// `GET /v1/rules`: every rule with its status, counters and errors.
pub async fn rules_list(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "rules": st.rules.statuses() }))
}

/// `GET /v1/rules/{name}`: one rule's status, with the source of its file (`source`: what the
/// rule lab diffs an edit against; absent if the file cannot be read).
pub async fn rule_get(
    st: web::Data<AppState>,
    _: Admin,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let status = st
        .rules
        .statuses()
        .into_iter()
        .find(|r| r.name == *name)
        .ok_or_else(|| ApiError::not_found(format!("no rule named {name:?}")))?;
    let path = st.rules.dir().join(format!("{}.rhai", status.name));
    let source = web::block(move || std::fs::read_to_string(path).ok())
        .await
        .map_err(ApiError::internal)?;
    let mut v = serde_json::to_value(status).map_err(ApiError::internal)?;
    if let Some(src) = source {
        v["source"] = src.into();
    }
    Ok(HttpResponse::Ok().json(v))
}

/// `PUT /v1/rules/{name}` with the script as the body: compiled first; installed only if valid.
pub async fn rule_put(
    st: web::Data<AppState>,
    _: Admin,
    name: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    let source = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(Code::InvalidEncoding, "a script must be UTF-8 text"))?;
    if source.trim().is_empty() {
        return Err(ApiError::new(
            Code::MissingBody,
            "the body is the rule's Rhai source and it is empty (to remove a rule, DELETE it)",
        ));
    }
    let rules = st.rules.clone();
    let name = name.into_inner();
    let (n, src) = (name.clone(), source.to_string());
    // Compiling and writing the file are blocking work: off the actix worker.
    let status = web::block(move || rules.put(&n, &src))
        .await
        .map_err(ApiError::internal)?
        .map_err(rules_error)?;
    super::share(&st, trimtab_cluster::DefKind::Rule, &name, Some(source)).await?;
    Ok(HttpResponse::Ok().json(status))
}

/// `DELETE /v1/rules/{name}`.
pub async fn rule_delete(
    st: web::Data<AppState>,
    _: Admin,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rules = st.rules.clone();
    let n = name.into_inner();
    let n2 = n.clone();
    let existed = web::block(move || rules.delete(&n2))
        .await
        .map_err(ApiError::internal)?
        .map_err(rules_error)?;
    if existed {
        super::share(&st, trimtab_cluster::DefKind::Rule, &n, None).await?;
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::not_found(format!("no rule named {n:?}")))
    }
}

async fn export(st: &AppState, user: UserKey) -> Result<HttpResponse, ApiError> {
    let ex = if let Some(c) = &st.cluster {
        c.export(user)
            .await
            .map_err(|e| ApiError::from_cluster(e, st.cfg.pipeline.retry_after_s))?
    } else {
        st.pipeline
            .export(user)
            .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?
            .await
            .map_err(|_| ApiError::unavailable("the server stopped before answering"))??
    };
    match ex {
        Some(ex) => Ok(HttpResponse::Ok().json(json!({
            "user": user.short(),
            "key": user.hex(),
            "state": ex.state,
            "events": ex.events,
            "decisions": ex.decisions,
            "learning": ex.learning,
        }))),
        None => Err(ApiError::not_found("no data is stored for this user")),
    }
}

async fn erase(st: &AppState, user: UserKey) -> Result<HttpResponse, ApiError> {
    if let Some(c) = &st.cluster {
        let counts = c
            .erase(user)
            .await
            .map_err(|e| ApiError::from_cluster(e, st.cfg.pipeline.retry_after_s))?;
        return Ok(HttpResponse::Ok().json(json!({ "erased": counts })));
    }
    let counts = st
        .pipeline
        .erase(user)
        .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?
        .await
        .map_err(|_| ApiError::unavailable("the server stopped before answering"))??;
    Ok(HttpResponse::Ok().json(json!({ "erased": counts })))
}

/// `GET /v1/users/{id}` (admin): the user's state and every stored event and decision.
pub async fn export_user(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    export(&st, st.pseudo.user(&id)).await
}

/// `DELETE /v1/users/{id}` (admin): erases the user from every table and destroys their key.
pub async fn erase_user(
    st: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    erase(&st, st.pseudo.user(&id)).await
}

/// `GET /v1/admin/users/{key}` (admin): export by pseudonymous key (32 hex chars), as shown in
/// the live feed; for operators who never see raw ids.
pub async fn export_by_key(
    st: web::Data<AppState>,
    _: Admin,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let bytes: [u8; 16] = hex::decode(key.as_str())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            ApiError::new(Code::InvalidValue, "a user key is 32 hex characters").at("key")
        })?;
    export(&st, UserKey(bytes)).await
}

/// `GET /v1/admin/live`: the dashboard's live feed (WebSocket; admin token in the first message).
pub async fn live(
    st: web::Data<AppState>,
    req: actix_web::HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The dashboard is served by this server: a page from elsewhere may not open the feed.
    super::origin::require(&req, &st.cfg.allowed_origins, &st.metrics, "the live feed")?;
    let ws = crate::ws::guard::handshake(&req, body, crate::ws::live::MAX_FRAME_BYTES).await?;
    let ctx = crate::ws::live::LiveCtx {
        authenticated: ws.authenticated,
        hub: st.hub.clone(),
        metrics: st.metrics.clone(),
        rules: st.rules.clone(),
        admin_token: st.admin_token.clone(),
        auth_timeout: std::time::Duration::from_secs(st.cfg.delivery.auth_timeout_s),
    };
    actix_web::rt::spawn(crate::ws::live::run(ctx, ws.session, ws.stream));
    Ok(ws.resp)
}

/// `GET /v1/segments` (admin): the current behavioural segments (names, sizes, profiles),
/// a 2-D projection sample for a scatter plot, and sizes over time.
pub async fn segments(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    HttpResponse::Ok().json(st.segments.describe())
}

/// `POST /v1/segments/refresh` (admin): re-cluster now (in the background); 202.
pub async fn segments_refresh(st: web::Data<AppState>, _: Admin) -> HttpResponse {
    st.segments.refresh();
    HttpResponse::Accepted().json(serde_json::json!({"refresh": "started"}))
}

fn me(caller: Caller) -> Result<UserKey, ApiError> {
    match caller {
        Caller::User(u) => Ok(u),
        Caller::WriteKey => Err(ApiError::new(Code::Forbidden, "/v1/me needs a user token")),
    }
}

/// `GET /v1/me` (user token): the caller's own data.
pub async fn export_me(st: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    export(&st, me(caller)?).await
}

/// `DELETE /v1/me` (user token): erases the caller's own data.
pub async fn erase_me(st: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    erase(&st, me(caller)?).await
}
