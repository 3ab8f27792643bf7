//! The one error type of the API, HTTP and WebSocket alike: a [`Code`] from the wire crate's
//! table (which alone decides the HTTP status and whether it is the caller's fault), a
//! message and the path of the offending field, rendered as `{"error":{"code","message",
//! "path"?}}` over HTTP and as an `error` frame over a WebSocket. Every engine error converts
//! here, in one place each (exhaustive matches: a new variant must be given a code). Server
//! faults are logged with their detail and answered without it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use bytestring::ByteString;
use serde_json::json;

use crate::bandits::BanditsError;
use crate::event::{Code, InputError};
use crate::experiments::stats::{ErrorCode as StatsCode, StatsError};
use crate::experiments::ExperimentsError;
use crate::pipeline::{PipelineError, SubmitError};
use crate::privacy::TokenError;
use crate::rules::RulesError;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    pub path: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            path: None,
            retry_after_s: None,
        }
    }

    /// Names the offending field (or file position).
    pub fn at(mut self, path: impl Into<String>) -> ApiError {
        self.path = Some(path.into());
        self
    }

    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(Code::NotFound, msg)
    }

    /// The same error, answered with `Retry-After: s`.
    pub fn retry_after(mut self, s: u64) -> ApiError {
        self.retry_after_s = Some(s);
        self
    }

    pub fn overloaded(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s),
            ..ApiError::new(
                Code::Overloaded,
                "the server is busy; retry later with the same event ids",
            )
        }
    }

    pub fn unavailable(msg: impl Into<String>) -> ApiError {
        ApiError::new(Code::Unavailable, msg)
    }

    /// A failure the caller cannot act on: logged with its detail, answered without it.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(Code::Internal, "internal error; see the server log")
    }

    /// A cluster operation's failure: 429 when the owner is busy, else 503 with the reason.
    pub fn from_cluster(e: trimtab_cluster::ClusterError, retry_after_s: u64) -> ApiError {
        match e {
            trimtab_cluster::ClusterError::Overloaded => ApiError::overloaded(retry_after_s),
            trimtab_cluster::ClusterError::Unavailable(m) => {
                tracing::warn!(error = %m, "cluster: a request failed");
                ApiError::unavailable(format!("the cluster cannot answer now: {m}"))
            }
        }
    }

    pub fn from_submit(e: SubmitError, retry_after_s: u64) -> ApiError {
        match e {
            SubmitError::Overloaded => ApiError::overloaded(retry_after_s),
            SubmitError::ShuttingDown => ApiError::unavailable("the server is shutting down"),
        }
    }

    /// The HTTP status, from the code's table.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The WebSocket `error` frame of this error, naming the event ids it concerns.
    pub fn frame(&self, ids: &[String]) -> ByteString {
        crate::delivery::frames::error(self.code, &self.message, self.path.as_deref(), ids)
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        ApiError {
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
                    Code::StorageUnavailable,
                    "storage failed; nothing was acknowledged, retry later",
                )
            }
            PipelineError::Stopped => ApiError::unavailable("the server stopped before answering"),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        let code = match e {
            TokenError::Malformed | TokenError::BadSignature => Code::InvalidToken,
            TokenError::Expired => Code::TokenExpired,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<RulesError> for ApiError {
    fn from(e: RulesError) -> Self {
        match e {
            RulesError::Compile { info } => {
                ApiError::new(Code::RuleCompileError, info.message).at(info.location)
            }
            RulesError::InvalidName { .. } => {
                ApiError::new(Code::InvalidRuleName, e.to_string()).at("name")
            }
            RulesError::NotFound(..) => ApiError::not_found(e.to_string()),
            RulesError::Io { .. } | RulesError::Watch(_) => ApiError::internal(e),
        }
    }
}

impl From<ExperimentsError> for ApiError {
    fn from(e: ExperimentsError) -> Self {
        match e {
            ExperimentsError::Invalid(d) => {
                ApiError::new(Code::InvalidExperiment, d.message).at(d.path)
            }
            ExperimentsError::NotFound(id) => ApiError::not_found(format!("no experiment {id:?}")),
            ExperimentsError::Io { .. } => ApiError::internal(e),
        }
    }
}

impl From<BanditsError> for ApiError {
    fn from(e: BanditsError) -> Self {
        match e {
            BanditsError::Invalid(d) => ApiError::new(Code::InvalidBandit, d.message).at(d.path),
            BanditsError::NotFound(s) => ApiError::not_found(format!("no bandit on slot {s:?}")),
            BanditsError::Io { .. } => ApiError::internal(e),
        }
    }
}

impl From<StatsError> for ApiError {
    fn from(e: StatsError) -> Self {
        let code = match e.code {
            StatsCode::InvalidJson => Code::InvalidJson,
            StatsCode::MissingField => Code::MissingField,
            StatsCode::UnexpectedField => Code::UnexpectedField,
            StatsCode::InvalidValue => Code::InvalidValue,
            StatsCode::DuplicateArm => Code::DuplicateArm,
            StatsCode::UnknownControl => Code::UnknownControl,
        };
        ApiError::new(code, e.message).at(e.path)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }
    fn error_response(&self) -> HttpResponse {
        let mut err = json!({"code": self.code.as_str(), "message": self.message});
        if let Some(p) = &self.path {
            err["path"] = p.clone().into();
        }
        let mut r = HttpResponse::build(self.status());
        if let Some(s) = self.retry_after_s {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.json(json!({ "error": err }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The README's error table (`| status | codes | when |` rows under "### Errors") as
    /// code → status.
    fn readme_codes() -> BTreeMap<String, u16> {
        let readme = include_str!("../../README.md");
        let at = readme
            .find("### Errors")
            .expect("the README has an Errors section");
        let mut out = BTreeMap::new();
        for line in readme[at..]
            .lines()
            .skip_while(|l| !l.starts_with("| status"))
            .skip(2)
        {
            if !line.starts_with('|') {
                break;
            }
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let status: u16 = cells[1].parse().expect("a status");
            for code in cells[2].split(',') {
                let code = code.trim().trim_matches('`');
                assert!(
                    out.insert(code.to_string(), status).is_none(),
                    "{code} listed twice"
                );
            }
        }
        out
    }

    #[test]
    fn the_readme_lists_every_code_with_its_status() {
        let readme = readme_codes();
        let table: BTreeMap<String, u16> = Code::ALL
            .iter()
            .map(|c| (c.as_str().to_string(), c.status()))
            .collect();
        assert_eq!(readme, table);
    }

    #[test]
    fn server_faults_carry_no_detail_and_input_errors_keep_their_path() {
        let e = ApiError::internal("redb: page 17 checksum mismatch in /data/trimtab.redb");
        assert_eq!((e.code, e.status().as_u16()), (Code::Internal, 500));
        assert!(!e.message.contains("redb") && !e.message.contains("/data"));
        let e = ApiError::from(PipelineError::Storage("disk full at /data/wal".into()));
        assert_eq!(
            (e.code, e.status().as_u16()),
            (Code::StorageUnavailable, 503)
        );
        assert!(!e.message.contains("/data"));
        let frame = e.frame(&["e1".into()]);
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["code"], "storage_unavailable");
        assert_eq!(v["ids"][0], "e1");
        assert!(!frame.contains("/data"));
        let input = InputError::new(Code::StringTooLong, "too long", Some("events[2].id".into()));
        let e = ApiError::from(input);
        assert_eq!(
            (e.status().as_u16(), e.path.as_deref()),
            (413, Some("events[2].id"))
        );
        let e = ApiError::from(TokenError::Expired);
        assert_eq!((e.code, e.status().as_u16()), (Code::TokenExpired, 401));
    }
}
