//! Credentials as typed extractors: [`Admin`] (admin token), [`Caller`] (write key or a user
//! token). Bearer tokens come only from the `Authorization` header, never from URLs.

use crate::event::Code;
use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::privacy::secrets::credential_eq;
use crate::privacy::Pseudonymizer;
use crate::privacy::UserKey;

pub(crate) fn bearer(req: &HttpRequest) -> Option<&str> {
    let h = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, rest) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("AppState missing from app data"))
}

/// The caller presented the admin token.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Admin, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready((|| {
            let st = state(req)?;
            let t = bearer(req).ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "missing `Authorization: Bearer <admin token>`",
                )
            })?;
            if credential_eq(t, &st.admin_token) {
                Ok(Admin)
            } else {
                Err(ApiError::new(Code::Forbidden, "not the admin token"))
            }
        })())
    }
}

/// Who is calling an ingestion endpoint.
pub enum Caller {
    /// The site's server (or the SDK bootstrap) with the write key: may name any user.
    WriteKey,
    /// A browser with a user token: may only read and write that user.
    User(UserKey),
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready((|| {
            let st = state(req)?;
            let t = bearer(req).ok_or_else(|| {
                ApiError::new(
                    Code::Unauthorized,
                    "missing `Authorization: Bearer <write key or user token>`",
                )
            })?;
            Caller::from_credential(st, t)
        })())
    }
}

impl Caller {
    /// Authenticates a presented credential: a user token (`tt1.…`) or the write key.
    pub fn from_credential(st: &AppState, t: &str) -> Result<Caller, ApiError> {
        if t.starts_with("tt1.") {
            let now_s = super::now_ms() as u64 / 1000;
            return st
                .signer
                .verify(t, now_s)
                .map(Caller::User)
                .map_err(ApiError::from);
        }
        if credential_eq(t, &st.write_key) {
            Ok(Caller::WriteKey)
        } else {
            Err(ApiError::new(
                Code::InvalidToken,
                "neither the write key nor a valid user token",
            ))
        }
    }

    /// The caller of a request whose credential may also travel in the body (beacons).
    pub fn from_request_or_body(
        st: &AppState,
        req: &HttpRequest,
        body_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        match (bearer(req), body_token) {
            (Some(t), _) | (None, Some(t)) => Caller::from_credential(st, t),
            (None, None) => Err(ApiError::new(Code::Unauthorized,
                "missing `Authorization: Bearer <write key or user token>` (or `token` in the body)",
            )),
        }
    }

    /// The user a request acts for: a token's own user, or the named one for the write key.
    /// `named` is the raw id in the request (if any) and `path` its field path for errors.
    pub fn resolve(
        &self,
        pseudo: &Pseudonymizer,
        named: Option<&str>,
        path: &str,
    ) -> Result<UserKey, ApiError> {
        match (self, named) {
            (Caller::User(u), None) => Ok(*u),
            (Caller::User(u), Some(raw)) if pseudo.user(raw) == *u => Ok(*u),
            (Caller::User(_), Some(_)) => Err(ApiError::new(
                Code::UserMismatch,
                "a token only reads and writes its own user",
            )
            .at(path)),
            (Caller::WriteKey, Some(raw)) => Ok(pseudo.user(raw)),
            (Caller::WriteKey, None) => {
                Err(ApiError::new(Code::MissingField, "with the write key, name the user").at(path))
            }
        }
    }
}
