//! Every error code trimtab answers with — over HTTP (`{"error":{"code",…}}`) and over a
//! WebSocket (`{"type":"error","code",…}`) alike — with its HTTP status and whose fault it is.
//! This table is the only place a code's status is decided; the README's error table is
//! checked against it by a test. Codes are part of the v1 contract: add, never rename.
//!
//! A [`Fault::Server`] error is logged with its detail where it happens and reaches clients
//! only as its code and a generic message: storage and internal failures never leak paths,
//! database messages or keys.

use serde::{Serialize, Serializer};

/// Who must act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request was wrong: fix it before sending it again (4xx).
    User,
    /// The server could not do it now: the same request may succeed later (5xx, 429).
    Server,
}

macro_rules! codes {
    ($($variant:ident = $code:literal, $status:literal, $fault:ident, $when:literal;)+) => {
        /// A stable error code (see the module doc).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $when] $variant,)+
        }

        impl Code {
            /// Every code, in the table's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            /// The code as sent (snake case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)+
                }
            }

            /// The HTTP status of an answer with this code.
            pub fn status(self) -> u16 {
                match self {
                    $(Code::$variant => $status,)+
                }
            }

            /// Whose fault it is.
            pub fn fault(self) -> Fault {
                match self {
                    $(Code::$variant => Fault::$fault,)+
                }
            }

            /// When it is answered (the README's wording).
            pub fn when(self) -> &'static str {
                match self {
                    $(Code::$variant => $when,)+
                }
            }

            /// The code of a string, if it is one.
            pub fn parse(s: &str) -> Option<Code> {
                match s {
                    $($code => Some(Code::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

codes! {
    MalformedJson = "malformed_json", 400, User, "the body is not JSON (the message has line and column)";
    DuplicateKey = "duplicate_key", 400, User, "a key appears twice in one JSON object (the message has line and column)";
    InvalidType = "invalid_type", 422, User, "a field has the wrong type";
    MissingField = "missing_field", 422, User, "a required field is missing";
    UnknownField = "unknown_field", 422, User, "a field is not part of the schema";
    InvalidValue = "invalid_value", 422, User, "a value is out of range or not allowed";
    InvalidEncoding = "invalid_encoding", 400, User, "a body that must be UTF-8 text is not";
    BodyTooLarge = "body_too_large", 413, User, "the body or message is larger than `limits.max_body_bytes`";
    BatchTooLarge = "batch_too_large", 413, User, "more events than `limits.max_batch_events`";
    StringTooLong = "string_too_long", 413, User, "a string is longer than `limits.max_string_len`";
    BadQuery = "bad_query", 400, User, "an unknown or invalid query parameter (`path` = `query` or the parameter)";
    MissingBody = "missing_body", 400, User, "a body is required and was empty (a rule's source)";
    BadRequest = "bad_request", 400, User, "a request that cannot be read: a broken body, a WebSocket upgrade without the handshake";
    RequestTimeout = "request_timeout", 408, User, "the body did not arrive within `http.body_timeout_s`";
    Unauthorized = "unauthorized", 401, User, "no credential, or the wrong kind for this endpoint";
    InvalidToken = "invalid_token", 401, User, "a forged or malformed token";
    TokenExpired = "token_expired", 401, User, "an expired token (get a new one)";
    Forbidden = "forbidden", 403, User, "a valid credential that may not do this (e.g. not the admin token)";
    UserMismatch = "user_mismatch", 403, User, "a user token writing or reading another user's data";
    OriginNotAllowed = "origin_not_allowed", 403, User, "a WebSocket from an Origin not in `allowed_origins`";
    AnonymousDisabled = "anonymous_disabled", 403, User, "`POST /v1/anonymous` while `anonymous = false`";
    NotFound = "not_found", 404, User, "no such route, rule, experiment, bandit slot, model or user data";
    MethodNotAllowed = "method_not_allowed", 405, User, "the path exists but not with this method; `Allow` lists its methods";
    RuleCompileError = "rule_compile_error", 422, User, "an uploaded rule does not compile (`path` = `file:line:col`)";
    InvalidRuleName = "invalid_rule_name", 422, User, "a rule name is not `[a-z0-9_-]{1,64}`";
    InvalidExperiment = "invalid_experiment", 422, User, "an experiment definition is invalid (`path` names the field)";
    InvalidBandit = "invalid_bandit", 422, User, "a bandit definition is invalid (`path` names the field)";
    InvalidJson = "invalid_json", 422, User, "a statistics request does not match its schema";
    UnexpectedField = "unexpected_field", 422, User, "a statistics request has a field its metric does not take";
    DuplicateArm = "duplicate_arm", 422, User, "two arms of a statistics request share a name";
    UnknownControl = "unknown_control", 422, User, "a statistics request's `control` names no arm";
    UnsupportedMessage = "unsupported_message", 422, User, "a binary WebSocket frame (send JSON text)";
    ProtocolError = "protocol_error", 400, User, "a malformed WebSocket frame; the socket closes with 1009";
    RateLimited = "rate_limited", 429, User, "over a rate limit (`[rate]`); `Retry-After` says when to retry";
    TooManySockets = "too_many_sockets", 429, User, "a user's WebSocket beyond `delivery.max_sockets_per_user` (closed with 1008)";
    TooManyConnections = "too_many_connections", 429, User, "a connection beyond `http.max_connections_per_ip` from one address (closed after this answer)";
    BacktestRunning = "backtest_running", 409, User, "a rule backtest is already running (one at a time): wait for it or cancel it (`path` = its id)";
    Overloaded = "overloaded", 429, Server, "a queue is full; `Retry-After` says when to retry (see below)";
    Unavailable = "unavailable", 503, Server, "the server is shutting down";
    StorageUnavailable = "storage_unavailable", 503, Server, "storage failed; nothing was acknowledged, retry later";
    Internal = "internal", 500, Server, "a bug or an unexpected failure; details are in the server log only";
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_parse_back_and_have_a_consistent_status() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            assert!(c
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            // 429 is the server's (`overloaded`: its queues are full) except over a client's
            // own rate limit.
            let user = (400..500).contains(&c.status())
                && (c.status() != 429
                    || matches!(
                        c,
                        Code::RateLimited | Code::TooManySockets | Code::TooManyConnections
                    ));
            assert_eq!(c.fault() == Fault::User, user, "{c}: status {}", c.status());
            assert!(!c.when().is_empty());
        }
        assert_eq!(Code::parse("nope"), None);
        assert_eq!(
            serde_json::to_string(&Code::UserMismatch).unwrap(),
            "\"user_mismatch\""
        );
    }
}
