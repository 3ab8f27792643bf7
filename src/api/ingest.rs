//! Ingestion and delivery endpoints: `POST /v1/identify`, `POST /v1/events`, `POST /v1/decide`,
//! `GET /v1/ws`.

use crate::event::Code;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::bearer;
use super::auth::Caller;
use super::error::ApiError;
use super::{now_ms, read_body, AppState};
use crate::event::{parse_batch_envelope, InputError};
use crate::privacy::{Pseudonymizer, UserKey};
use crate::ws::session::{self, SessionCtx};

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    Ok(crate::event::parse_body(body)?)
}

/// A string of a request: 1..=`max` characters (as JSON Schema counts them) without control
/// characters.
pub(crate) fn check_str(s: &str, path: &str, max: usize) -> Result<(), ApiError> {
    let too_long = crate::event::longer_than(s, max);
    if s.is_empty() || too_long || s.chars().any(char::is_control) {
        return Err(ApiError::from(InputError::new(
            if too_long {
                Code::StringTooLong
            } else {
                Code::InvalidValue
            },
            format!("must be 1..={max} characters without control characters"),
            Some(path.to_string()),
        )));
    }
    Ok(())
}

/// `POST /v1/identify`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = IdentifyRequest)]
pub(crate) struct IdentifyReq {
    /// The site's own id of the user (pseudonymised before anything stores it).
    user: String,
}

/// A user token: `{user, token, expires_at}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TokenResponse {
    user: String,
    token: String,
    /// Unix seconds.
    expires_at: u64,
}

/// What a batch became: `{accepted, duplicates, not_consented}` (202, all durable).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct IngestResponse {
    /// Events stored now.
    accepted: usize,
    /// Events whose id was stored before (acknowledged, not stored again).
    duplicates: usize,
    /// Events without analytics consent (acknowledged, not stored).
    not_consented: usize,
}

/// `POST /v1/identify` (write key): `{user}` → `{user, token, expires_at}`.
pub async fn identify(
    st: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !matches!(caller, Caller::WriteKey) {
        return Err(ApiError::new(
            Code::Forbidden,
            "identify needs the write key",
        ));
    }
    limited(&st, st.limits.check_ip(&req, super::limit::Kind::Identify))?;
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    let req: IdentifyReq = parse_body(&body)?;
    check_str(&req.user, "user", st.cfg.limits.max_string_len)?;
    let key = st.pseudo.user(&req.user);
    let exp = now_ms() as u64 / 1000 + st.cfg.token_ttl_s;
    let token = st.signer.issue(&key, exp);
    Ok(HttpResponse::Ok().json(TokenResponse {
        user: req.user,
        token,
        expires_at: exp,
    }))
}

/// `POST /v1/events` (write key or token): `{"events":[…]}` → 202 `{accepted,…}` once durable.
pub async fn events(
    st: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    // Authenticate before validating: a header credential is checked before the body is even
    // parsed; a beacon's body token right after parsing, before any field is validated.
    let header_caller = match bearer(&req) {
        Some(_) => Some(Caller::from_request_or_body(&st, &req, None)?),
        None => None,
    };
    // One typed parse from the bytes, in two steps: the envelope (syntax, `token`, the events
    // as raw slices), then, once the caller is known, each event into its typed form.
    let reject = |e: &InputError| st.metrics.reject(e.code.as_str(), 1);
    let raw = parse_batch_envelope(&body, &st.cfg.limits).inspect_err(reject)?;
    let caller = match header_caller {
        Some(c) => c,
        None => Caller::from_request_or_body(&st, &req, raw.token())?,
    };
    let events = raw
        .into_events(&st.cfg.limits, now_ms())
        .inspect_err(reject)?;
    if let Caller::User(u) = &caller {
        limited(&st, st.limits.check_user(u))?;
    }
    let (groups, not_consented) = group_by_user(&st.pseudo, &caller, events)?;
    let not_consented = not_consented.len();
    if not_consented > 0 {
        st.metrics.reject("no_consent", not_consented as u64);
    }
    let n: u64 = groups.iter().map(|(_, v)| v.len() as u64).sum();
    if let Some(c) = &st.cluster {
        let outcome = c
            .publish(&groups)
            .await
            .map_err(|e| ApiError::from_cluster(e, st.cfg.pipeline.retry_after_s))?;
        return Ok(HttpResponse::Accepted().json(IngestResponse {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            not_consented,
        }));
    }
    let pending = st.pipeline.submit_events(groups).map_err(|e| {
        st.metrics.reject("overloaded", n);
        ApiError::from_submit(e, st.cfg.pipeline.retry_after_s)
    })?;
    let outcome = pending
        .await
        .map_err(|_| ApiError::unavailable("the server stopped before storing the events"))??;
    Ok(HttpResponse::Accepted().json(IngestResponse {
        accepted: outcome.accepted,
        duplicates: outcome.duplicates,
        not_consented,
    }))
}

/// A rate-limit refusal as the answer, counted.
fn limited(st: &AppState, r: Result<(), super::limit::Limited>) -> Result<(), ApiError> {
    r.map_err(|l| {
        st.metrics.reject(l.reason(), 1);
        l.error()
    })
}

/// One user's events of a batch, in order.
type UserEvents = (UserKey, Vec<crate::event::Event>);

/// Groups a batch's events by user, keeping each user's order; each distinct user id is
/// pseudonymised (and checked against the credentials) once. Events without analytics consent
/// are not stored: their ids come back separately. The one admission of events, for HTTP
/// batches and WebSocket messages alike (a socket is a `Caller::User`).
pub(crate) fn group_by_user(
    pseudo: &Pseudonymizer,
    caller: &Caller,
    incoming: Vec<crate::event::Incoming>,
) -> Result<(Vec<UserEvents>, Vec<String>), ApiError> {
    let mut groups: Vec<UserEvents> = Vec::new();
    let mut index: std::collections::HashMap<Option<String>, usize> =
        std::collections::HashMap::new();
    // Each event's group first, then every group's events moved in once, into a vector of
    // the size it needs (events are large; growing by doubling copied each one several times).
    let mut group_of = Vec::with_capacity(incoming.len());
    let mut sizes: Vec<usize> = Vec::new();
    for (i, inc) in incoming.iter().enumerate() {
        let g = match index.get(&inc.user) {
            Some(g) => *g,
            None => {
                let user =
                    caller.resolve(pseudo, inc.user.as_deref(), &format!("events[{i}].user"))?;
                let g = match groups.iter().position(|(u, _)| *u == user) {
                    Some(g) => g,
                    None => {
                        groups.push((user, Vec::new()));
                        sizes.push(0);
                        groups.len() - 1
                    }
                };
                index.insert(inc.user.clone(), g);
                g
            }
        };
        group_of.push(g);
        if inc.event.consent.analytics {
            sizes[g] += 1;
        }
    }
    for ((_, events), n) in groups.iter_mut().zip(sizes) {
        events.reserve_exact(n);
    }
    let mut not_consented = Vec::new();
    for (inc, g) in incoming.into_iter().zip(group_of) {
        if !inc.event.consent.analytics {
            not_consented.push(inc.event.id);
            continue;
        }
        groups[g].1.push(inc.event);
    }
    groups.retain(|(_, v)| !v.is_empty());
    Ok((groups, not_consented))
}

/// `POST /v1/anonymous` (no credentials; `anonymous = true`): a token for a new random id, so a
/// browser SDK can start without any secret. The id is chosen here, never by the client, so a
/// token for somebody else's id cannot be obtained this way.
///
/// Renewal: with `{"user": "anon-…", "token": "<its token>"}` (expired at most
/// [`RENEW_GRACE_S`] ago) the same anonymous user gets a fresh token, so a returning visitor
/// keeps their history.
pub async fn anonymous(
    st: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    if !st.cfg.anonymous {
        return Err(ApiError::new(Code::AnonymousDisabled,
            "anonymous visitors are disabled (anonymous = false); use /v1/identify from your server",
        ));
    }
    limited(&st, st.limits.check_ip(&req, super::limit::Kind::Anonymous))?;
    let body = read_body(payload, 4096, &st.cfg).await?;
    let trimmed = body.trim_ascii();
    let renew: Option<RenewReq> = if trimmed.is_empty() || trimmed == b"null" {
        None
    } else {
        // `{}` asks for a new id; anything else is a renewal and needs both fields.
        let fields: serde_json::Map<String, serde_json::Value> = parse_body(&body)?;
        if fields.is_empty() {
            None
        } else {
            let r: RenewReq =
                crate::event::from_value(fields.into(), "").map_err(ApiError::from)?;
            Some(r)
        }
    };
    let user = match renew {
        None => {
            let mut raw = [0u8; 16];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut raw);
            format!("anon-{}", hex::encode(raw))
        }
        Some(RenewReq {
            user: Some(user),
            token: Some(token),
        }) => {
            let (key, exp) = st.signer.verify_signature(&token).map_err(ApiError::from)?;
            let now_s = now_ms() as u64 / 1000;
            if !user.starts_with("anon-") || st.pseudo.user(&user) != key {
                return Err(ApiError::new(
                    Code::UserMismatch,
                    "the token is not this anonymous user's",
                )
                .at("user"));
            }
            if exp + RENEW_GRACE_S < now_s {
                return Err(ApiError::new(
                    Code::TokenExpired,
                    "the token expired too long ago to be renewed",
                ));
            }
            user
        }
        Some(_) => {
            return Err(ApiError::from(InputError::new(
                Code::MissingField,
                "renewal needs both `user` and `token`",
                Some("token".into()),
            )))
        }
    };
    let key = st.pseudo.user(&user);
    let exp = now_ms() as u64 / 1000 + st.cfg.token_ttl_s;
    let token = st.signer.issue(&key, exp);
    Ok(HttpResponse::Ok().json(TokenResponse {
        user,
        token,
        expires_at: exp,
    }))
}

/// How long after expiry an anonymous token can still be renewed (30 days).
pub const RENEW_GRACE_S: u64 = 30 * 86_400;

/// `POST /v1/anonymous`'s body: empty (or `{}`) for a new id, `{user, token}` to renew.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewReq {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// `POST /v1/decide`'s body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = DecideRequest)]
pub(crate) struct DecideReq {
    #[serde(default)]
    user: Option<String>,
    slot: String,
    /// The variants to choose from (none: the slot's bandit or experiment says).
    #[serde(default)]
    #[schema(max_items = 32)]
    candidates: Vec<String>,
}

/// `POST /v1/decide`: `{user?, slot, candidates?}` → `{slot, variant, params, decision}`.
pub async fn decide(
    st: web::Data<AppState>,
    caller: Caller,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(payload, st.cfg.limits.max_body_bytes, &st.cfg).await?;
    let req: DecideReq = parse_body(&body)?;
    let max = st.cfg.limits.max_string_len;
    check_str(&req.slot, "slot", max)?;
    if req.candidates.len() > 32 {
        return Err(ApiError::from(InputError::new(
            Code::InvalidValue,
            "at most 32 candidates",
            Some("candidates".into()),
        )));
    }
    for (i, c) in req.candidates.iter().enumerate() {
        check_str(c, &format!("candidates[{i}]"), max)?;
    }
    let user = caller.resolve(&st.pseudo, req.user.as_deref(), "user")?;
    if let Caller::User(u) = &caller {
        limited(&st, st.limits.check_user(u))?;
    }
    let d = if let Some(c) = &st.cluster {
        c.decide(user, req.slot, req.candidates)
            .await
            .map_err(|e| ApiError::from_cluster(e, st.cfg.pipeline.retry_after_s))?
    } else {
        st.pipeline
            .decide(user, req.slot, req.candidates)
            .map_err(|e| ApiError::from_submit(e, st.cfg.pipeline.retry_after_s))?
            .await
            .map_err(|_| ApiError::unavailable("the server stopped before deciding"))??
    };
    Ok(HttpResponse::Ok().json(json!({
        "slot": d.slot, "variant": d.variant, "params": d.params, "decision": d.wire(),
    })))
}

/// `GET /v1/ws`: upgrades to a WebSocket; authentication happens in the first message.
pub async fn ws(
    st: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    super::origin::require(&req, &st.cfg.allowed_origins, &st.metrics, "a WebSocket")?;
    if !st.ready.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let ws = crate::ws::guard::handshake(&req, body, st.cfg.limits.max_body_bytes).await?;
    let ctx = SessionCtx {
        authenticated: ws.authenticated,
        limits: st.limits.clone(),
        cfg: st.cfg.clone(),
        pipeline: st.pipeline.clone(),
        cluster: st.cluster.clone(),
        hub: st.hub.clone(),
        signer: st.signer.clone(),
        pseudo: st.pseudo.clone(),
        metrics: st.metrics.clone(),
    };
    actix_web::rt::spawn(session::run(ctx, ws.session, ws.stream));
    Ok(ws.resp)
}
