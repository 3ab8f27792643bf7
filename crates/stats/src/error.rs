//! The engine's one user-facing error type.
//!
//! Owns: `StatsError` (stable `code`, human `message`, JSON `path` of the
//! offending field) and the degenerate-data `Note` that building blocks attach
//! to uninformative results. Statistics never fail on data: only requests that
//! are malformed (out-of-range parameters, inconsistent fields) produce a
//! `StatsError`; the server gives each code its status from the wire error table (422).

use serde::{Deserialize, Serialize};

/// A request the engine cannot analyze. `path` names the field, e.g.
/// `arms[1].conversions`, or is empty for the body as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code} at `{path}`: {message}")]
pub struct StatsError {
    /// Stable machine-readable code: see [`ErrorCode`].
    pub code: ErrorCode,
    pub message: String,
    pub path: String,
}

/// Stable error codes (serialized in snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON for the schema (unknown field, wrong type).
    InvalidJson,
    /// A required field is missing for this metric.
    MissingField,
    /// A field is present that this metric does not accept.
    UnexpectedField,
    /// A value is out of range or inconsistent with other fields.
    InvalidValue,
    /// Two arms share a name.
    DuplicateArm,
    /// `control` names no arm.
    UnknownControl,
}

impl ErrorCode {
    /// The stable code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::MissingField => "missing_field",
            Self::UnexpectedField => "unexpected_field",
            Self::InvalidValue => "invalid_value",
            Self::DuplicateArm => "duplicate_arm",
            Self::UnknownControl => "unknown_control",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StatsError {
    pub fn new(code: ErrorCode, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            path: path.into(),
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidValue, path, message)
    }
}

impl From<serde_json::Error> for StatsError {
    /// Deserialization failures carry serde's message (which names unknown
    /// fields and the line/column) but no path; the handler may use
    /// `serde_path_to_error` to fill `path`.
    fn from(e: serde_json::Error) -> Self {
        Self::new(ErrorCode::InvalidJson, "", e.to_string())
    }
}

/// Why a building block returned an uninformative (null) result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Stable warning code, e.g. `zero_variance`.
    pub code: &'static str,
    pub message: String,
}

impl Note {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}
