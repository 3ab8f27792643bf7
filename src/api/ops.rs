//! Operations endpoints: liveness, readiness, Prometheus metrics, and the JSON 404.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `GET /readyz`: ready to take traffic (not failed, not shutting down, not replaying log
/// tails after an unclean stop).
pub async fn readyz(st: web::Data<AppState>) -> HttpResponse {
    if let Some(f) = st.health.fatal() {
        // The kind only: the detail is in the server's log.
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "failed", "reason": f.kind.as_str()}))
    } else if !st.ready.load(Ordering::Relaxed) {
        HttpResponse::ServiceUnavailable().json(json!({"status": "shutting_down"}))
    } else if st.pipeline.recovering() {
        HttpResponse::ServiceUnavailable().json(json!({"status": "recovering"}))
    } else if let Some(c) = &st.cluster {
        let status = c.status();
        if c.ready() {
            HttpResponse::Ok().json(json!({"status": "ready", "ws_sessions": st.hub.session_count(), "cluster": status}))
        } else {
            HttpResponse::ServiceUnavailable()
                .json(json!({"status": "cluster_disconnected", "cluster": status}))
        }
    } else {
        HttpResponse::Ok().json(json!({"status": "ready", "ws_sessions": st.hub.session_count()}))
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(st: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &st.cfg.metrics_token {
        let presented = super::auth::bearer(&req).ok_or_else(|| {
            ApiError::new(
                crate::event::Code::Unauthorized,
                "missing `Authorization: Bearer <metrics token>` (metrics_token is set)",
            )
        })?;
        let eq = crate::privacy::secrets::credential_eq;
        if !(eq(presented, token) || eq(presented, &st.admin_token)) {
            return Err(ApiError::new(
                crate::event::Code::Forbidden,
                "not the metrics token",
            ));
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(st.metrics.render(&st.rules.statuses())))
}

/// A known path asked with a method it does not take: 405 with `Allow` (the methods named
/// in [`configure`](super::configure)).
pub fn method_not_allowed(req: &HttpRequest, allow: &[&str]) -> HttpResponse {
    let allow = allow
        .iter()
        .map(|m| m.to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(", ");
    let mut resp = actix_web::ResponseError::error_response(&ApiError::new(
        crate::event::Code::MethodNotAllowed,
        format!("{} takes {allow}, not {}", req.path(), req.method()),
    ));
    resp.headers_mut().insert(
        actix_web::http::header::ALLOW,
        actix_web::http::header::HeaderValue::from_str(&allow).expect("method names are ASCII"),
    );
    resp
}

/// Static assets for GET/HEAD, else a JSON 404.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if req.method() == actix_web::http::Method::GET || req.method() == actix_web::http::Method::HEAD
    {
        if let Some(resp) = super::assets::serve(&req, req.path()) {
            return Ok(resp);
        }
    }
    Err(ApiError::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}
