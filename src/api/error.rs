//! The one error type of the HTTP API: a status, a stable code, a message and the path of the
//! offending field, rendered as `{"error":{"code","message","path"?}}`. Internal errors are
//! logged with detail and answered without it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::event::InputError;
use crate::pipeline::{PipelineError, SubmitError};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub path: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            path: None,
            retry_after_s: None,
        }
    }
    pub fn at(mut self, path: impl Into<String>) -> ApiError {
        self.path = Some(path.into());
        self
    }
    pub fn unauthorized(code: &'static str, msg: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, msg)
    }
    pub fn forbidden(code: &'static str, msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", msg)
    }
    pub fn overloaded(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the server is busy; retry later with the same event ids",
            )
        }
    }
    pub fn unavailable(msg: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
    }
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }
    pub fn from_submit(e: SubmitError, retry_after_s: u64) -> ApiError {
        match e {
            SubmitError::Overloaded => ApiError::overloaded(retry_after_s),
            SubmitError::ShuttingDown => ApiError::unavailable("the server is shutting down"),
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        let status = if e.is_too_large() {
            StatusCode::PAYLOAD_TOO_LARGE
        } else if e.code == "malformed_json" {
            StatusCode::BAD_REQUEST
        } else if e.code == "user_mismatch" {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        ApiError {
            status,
            code: e.code,
            message: e.message,
            path: e.path,
            retry_after_s: None,
        }
    }
}

impl From<PipelineError> for ApiError {
    fn from(e: PipelineError) -> Self {
        match e {
            PipelineError::Storage(m) => {
                tracing::error!(error = %m, "storage failure answered with 503");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "storage failed; nothing was acknowledged, retry later",
                )
            }
            PipelineError::Stopped => ApiError::unavailable("the server stopped before answering"),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }
    fn error_response(&self) -> HttpResponse {
        let mut err = json!({"code": self.code, "message": self.message});
        if let Some(p) = &self.path {
            err["path"] = p.clone().into();
        }
        let mut r = HttpResponse::build(self.status);
        if let Some(s) = self.retry_after_s {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.json(json!({ "error": err }))
    }
}
