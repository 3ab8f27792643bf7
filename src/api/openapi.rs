//! The OpenAPI 3.1 document of the v1 API, served at `GET /v1/openapi.json`. Request and
//! response schemas come from the code's own types: the wire contract's (events, their props,
//! context, consent, the error object with every code of the table) from
//! [`crate::event::openapi`], the handlers' own request and answer structs, and the operations
//! below name every route `configure` mounts (a test checks that each route is documented and
//! each documented path is a route). Answers built from engine state that has no fixed shape
//! (rule statuses, experiment results, bandit status, exports) are documented as JSON objects.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi as Doc;
use utoipa::{Modify, OpenApi, ToSchema};

use super::ingest::{DecideReq, IdentifyReq, IngestResponse, TokenResponse};
use super::lab::{CheckReq, DryRunReq};
use crate::event::openapi::{ErrorBody, EventBatch};
use trimtab_engine::bandits::def::BanditDef;
use trimtab_engine::experiments::def::ExperimentDef;
use trimtab_stats::{AnalyzeRequest, AnalyzeResponse};

/// A JSON object whose fields are described in the README (engine state, not a fixed shape).
#[derive(utoipa::ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
struct Json(serde_json::Value);

/// `{"status": "ok"}`, `{"status": "ready", "ws_sessions": n}`, `{"status": "recovering"}`, ….
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct Status {
    status: String,
    ws_sessions: Option<u64>,
}

/// `{slot, variant, params, decision}`: what `POST /v1/decide` decided (stored before the answer).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DecideResponse {
    slot: String,
    variant: String,
    params: std::collections::BTreeMap<String, String>,
    decision: DecisionRef,
}

/// The decision an adjustment came from (cite its `id` in impressions, clicks, conversions).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct DecisionRef {
    id: String,
    /// `rule`, `experiment`, `bandit` or `default`.
    source: String,
    rule: Option<String>,
    experiment: Option<String>,
    arm: Option<String>,
    propensity: f64,
}

/// `format` of `GET /v1/bandits/{slot}/log`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
enum LogFormat {
    /// The logged-bandit-feedback rows (default).
    Rows,
    /// Every field of each record.
    Records,
}

/// The body of `POST /v1/anonymous`: empty or `{}` for a new id, or the anonymous user and
/// its (possibly expired) token to renew it.
#[allow(dead_code)]
struct AnonymousRequest;

impl utoipa::PartialSchema for AnonymousRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
        let closed = || AdditionalProperties::FreeForm(false);
        let new = ObjectBuilder::new()
            .schema_type(Type::Object)
            .max_properties(Some(0))
            .additional_properties(Some(closed()));
        let renew = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "user",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^anon-[0-9a-f]{32}$")),
            )
            .required("user")
            .property("token", ObjectBuilder::new().schema_type(Type::String))
            .required("token")
            .additional_properties(Some(closed()));
        OneOfBuilder::new().item(new).item(renew).into()
    }
}
impl ToSchema for AnonymousRequest {}

macro_rules! op {
    ($name:ident, $method:ident, $path:literal, $summary:literal, $($rest:tt)*) => {
        #[utoipa::path($method, path = $path, summary = $summary, $($rest)*)]
        #[allow(dead_code)]
        fn $name() {}
    };
}

// Errors every authenticated endpoint may answer.
op!(
    identify,
    post,
    "/v1/identify",
    "A user token for a site's own user id (write key)",
    request_body = IdentifyReq,
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (
            status = 429,
            body = ErrorBody,
            description = "over the per-address rate limit; retry after Retry-After"
        ),
        (status = 200, body = TokenResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(anonymous, post, "/v1/anonymous", "A user token for a new random id (no credential), or its renewal",
    request_body(content = Option<AnonymousRequest>, description = "empty for a new id"),
    responses((status = 408, body = ErrorBody, description = "the body did not arrive within http.body_timeout_s"), (status = 429, body = ErrorBody, description = "over the per-address rate limit; retry after Retry-After"), (status = 200, body = TokenResponse), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 422, body = ErrorBody)));
op!(
    events,
    post,
    "/v1/events",
    "A batch of events; 202 once every one is durable",
    request_body = EventBatch,
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (status = 202, body = IngestResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (
            status = 429,
            body = ErrorBody,
            description = "retry after Retry-After with the same ids"
        ),
        (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    decide,
    post,
    "/v1/decide",
    "Decide a slot now (first paint); stored before the answer",
    request_body = DecideReq,
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (status = 200, body = DecideResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    ws,
    get,
    "/v1/ws",
    "The WebSocket (authenticate with the first message; see the README)",
    responses(
        (status = 101, description = "switching protocols"),
        (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
);
op!(
    me_get,
    get,
    "/v1/me",
    "The caller's own data (user token)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    me_delete,
    delete,
    "/v1/me",
    "Erase the caller's own data (user token)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rules_list,
    get,
    "/v1/rules",
    "Every rule with its status, counters and errors (admin)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rule_get,
    get,
    "/v1/rules/{name}",
    "One rule's status (admin)",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rule_put,
    put,
    "/v1/rules/{name}",
    "Upload a rule (Rhai source as the body); compiled before it is installed (admin)",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    request_body(
        content = String,
        content_type = "text/plain",
        description = "the rule's Rhai source (not empty)"
    ),
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (status = 200, body = Json),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rule_delete,
    delete,
    "/v1/rules/{name}",
    "Delete a rule (admin)",
    params(("name" = String, Path, pattern = "^[a-z0-9_-]{1,64}$")),
    responses(
        (status = 204),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rules_check,
    post,
    "/v1/rules/check",
    "Check a rule's source without installing it: compile errors and reads of fields that do not exist, each with line and column (admin)",
    request_body = CheckReq,
    responses(
        (status = 408, body = ErrorBody, description = "the body did not arrive within http.body_timeout_s"),
        (status = 200, body = Json, description = "`{errors: [{line, column, message}], warnings: [...], on}`"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rules_dry_run,
    post,
    "/v1/rules/dry-run",
    "Evaluate a rule's source against one user's current state and recent events; nothing is pushed or written (admin)",
    request_body = DryRunReq,
    responses(
        (status = 408, body = ErrorBody, description = "the body did not arrive within http.body_timeout_s"),
        (status = 200, body = Json, description = "`{key, user_events, steps: [{event, type, ts, ran, adjustments, error?, operations}], adjustments, errors, operations}`"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no data is stored for this user"),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody),
        (status = 503, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rules_backtest,
    post,
    "/v1/rules/backtest",
    "Backtest a rule's source on the stored events with the installed rules: the result, or 202 and its id when it takes longer than 2 s (admin)",
    request_body = trimtab_engine::lab::backtest::Request,
    responses(
        (status = 408, body = ErrorBody, description = "the body did not arrive within http.body_timeout_s"),
        (status = 200, body = Json, description = "`{id, state: done, progress, result}`"),
        (status = 202, body = Json, description = "`{id, state: running, progress}`: poll GET /v1/rules/backtest/{id}"),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a backtest is already running"),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rules_backtest_get,
    get,
    "/v1/rules/backtest/{id}",
    "A backtest's state, progress and, once done, result (admin)",
    params(("id" = String, Path)),
    responses(
        (
            status = 200,
            body = Json,
            description = "`{id, state: running|done|cancelled|failed, progress, result?, error?}`"
        ),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    rules_backtest_cancel,
    delete,
    "/v1/rules/backtest/{id}",
    "Cancel a backtest (it stops between users; the result covers those replayed) (admin)",
    params(("id" = String, Path)),
    responses(
        (
            status = 200,
            body = Json,
            description = "the backtest as GET shows it"
        ),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    user_get,
    get,
    "/v1/users/{id}",
    "Export a user's data by the site's id (admin)",
    params((
        "id" = String,
        Path,
        description = "the site's own user id (any id: one never seen erases or exports nothing)"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    user_delete,
    delete,
    "/v1/users/{id}",
    "Erase a user (admin)",
    params((
        "id" = String,
        Path,
        description = "the site's own user id (any id: one never seen erases or exports nothing)"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    user_by_key,
    get,
    "/v1/admin/users/{key}",
    "Export a user's data by pseudonymous key (admin)",
    params((
        "key" = String,
        Path,
        pattern = "^[0-9a-fA-F]{32}$",
        description = "the pseudonymous key: 32 hex characters"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    live,
    get,
    "/v1/admin/live",
    "The dashboard's live feed (a WebSocket; admin token in the first message)",
    responses(
        (status = 101, description = "switching protocols"),
        (status = 400, body = ErrorBody)
    )
);
op!(
    segments,
    get,
    "/v1/segments",
    "The behavioural segments (admin)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    segments_refresh,
    post,
    "/v1/segments/refresh",
    "Recompute the segments now (admin)",
    responses(
        (status = 202, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    experiments_list,
    get,
    "/v1/experiments",
    "Every experiment, and the definition files that do not load (admin)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    experiment_get,
    get,
    "/v1/experiments/{id}",
    "One experiment (admin)",
    params((
        "id" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    experiment_put,
    put,
    "/v1/experiments/{id}",
    "Create or replace an experiment (admin)",
    params((
        "id" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    request_body = ExperimentDef,
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (status = 200, body = Json),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    experiment_delete,
    delete,
    "/v1/experiments/{id}",
    "Delete an experiment (admin)",
    params((
        "id" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    responses(
        (status = 204),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    experiment_results,
    get,
    "/v1/experiments/{id}/results",
    "An experiment's statistics and recommendation (admin)",
    params((
        "id" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    stats_analyze,
    post,
    "/v1/stats/analyze",
    "The statistics engine on summary statistics you bring (admin)",
    request_body = AnalyzeRequest,
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (status = 200, body = AnalyzeResponse),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    bandits_list,
    get,
    "/v1/bandits",
    "Every bandit slot (admin)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    bandit_get,
    get,
    "/v1/bandits/{slot}",
    "A bandit slot's status (admin)",
    params((
        "slot" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    bandit_put,
    put,
    "/v1/bandits/{slot}",
    "Create or replace a bandit slot (admin)",
    params((
        "slot" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    request_body = BanditDef,
    responses(
        (
            status = 408,
            body = ErrorBody,
            description = "the body did not arrive within http.body_timeout_s"
        ),
        (status = 200, body = Json),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 422, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    bandit_delete,
    delete,
    "/v1/bandits/{slot}",
    "Delete a bandit slot (admin)",
    params((
        "slot" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    responses(
        (status = 204),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    bandit_reset,
    post,
    "/v1/bandits/{slot}/reset",
    "Restart a slot's guardrail comparison (admin)",
    params((
        "slot" = String,
        Path,
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"
    )),
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(bandit_log, get, "/v1/bandits/{slot}/log", "A slot's logged decisions as JSONL (admin)",
    params(("slot" = String, Path, pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"),
           ("format" = Option<LogFormat>, Query, description = "`rows` (default) or `records`"),
           ("open" = Option<bool>, Query, description = "include decisions whose window is open")),
    responses((status = 200, content_type = "application/x-ndjson", body = String),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 422, body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("bearer" = [])));
op!(
    models_list,
    get,
    "/v1/models",
    "The served models and their last trainings (admin)",
    responses(
        (status = 200, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    models_retrain,
    post,
    "/v1/models/retrain",
    "Train every slot's model now (admin)",
    responses(
        (status = 202, body = Json),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    ),
    security(("bearer" = []))
);
op!(
    openapi_json,
    get,
    "/v1/openapi.json",
    "This document",
    responses((status = 200, body = Json))
);
op!(
    healthz,
    get,
    "/healthz",
    "Alive",
    responses((status = 200, body = Status))
);
op!(
    readyz,
    get,
    "/readyz",
    "Ready for traffic (503 while recovering or shutting down)",
    responses((status = 200, body = Status), (status = 503, body = Status))
);
op!(
    metrics,
    get,
    "/metrics",
    "Prometheus metrics (text format); needs the metrics token when `metrics_token` is set",
    responses(
        (status = 200, content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)
    )
);

/// The bearer credential: the write key, a user token or the admin token, per endpoint.
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, doc: &mut Doc) {
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (name, schema) in crate::event::openapi::components() {
            c.schemas.insert(name, schema);
        }
        // The handlers check their strings as the parser does.
        for name in ["IdentifyRequest", "DecideRequest"] {
            let s = c.schemas.remove(name).expect("a handler's request schema");
            c.schemas
                .insert(name.into(), crate::event::openapi::constrain_strings(s));
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "trimtab", description = "Real-time content micro-adjustments: the v1 API. \
        Errors are `{\"error\": {\"code\", \"message\", \"path\"?}}` with the codes of the README's table."),
    paths(identify, anonymous, events, decide, ws, me_get, me_delete, rules_list, rule_get, rule_put,
          rule_delete, rules_check, rules_dry_run, rules_backtest, rules_backtest_get,
          rules_backtest_cancel, user_get, user_delete, user_by_key, live, segments, segments_refresh,
          experiments_list, experiment_get, experiment_put, experiment_delete, experiment_results,
          stats_analyze, bandits_list, bandit_get, bandit_put, bandit_delete, bandit_reset, bandit_log,
          models_list, models_retrain, openapi_json, healthz, readyz, metrics),
    components(schemas(IdentifyReq, AnonymousRequest, DecideReq, TokenResponse, IngestResponse,
                       CheckReq, DryRunReq, trimtab_engine::lab::backtest::Request,
                       DecideResponse, DecisionRef, Status, Json, LogFormat)),
    modifiers(&Bearer)
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_json().expect("the OpenAPI document serialises")
    })
}

/// `GET /v1/openapi.json`.
pub async fn serve() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The routes `configure` mounts, read from its `resource!` lines: (method, path).
    fn routes() -> Vec<(String, String)> {
        let src = include_str!("mod.rs");
        let body = src.split("pub fn configure").nth(1).expect("configure");
        let flat: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        // The `/v1` scope is the argument of `cfg.service(…)`: up to its matching parenthesis.
        let open = flat.find("cfg.service(").expect("the /v1 scope") + "cfg.service(".len();
        let mut depth = 1;
        let close = open
            + flat[open..]
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .expect("the scope closes")
                .0;
        let (scoped, top) = flat.split_at(close);
        let mut out = Vec::new();
        for (prefix, part) in [("/v1", scoped), ("", top)] {
            for r in part.split("resource!(\"").skip(1) {
                let (path, rest) = r.split_once('"').unwrap();
                let methods = rest.split(')').next().unwrap();
                for m in methods.split(',').skip(1) {
                    let method = m.split("=>").next().unwrap();
                    out.push((method.to_string(), format!("{prefix}{path}")));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_path_is_a_route() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut mounted = routes();
        mounted.sort();
        documented.sort();
        assert_eq!(mounted, documented);
        // Every referenced schema exists.
        let text = document();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = r.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "missing schema {name}"
            );
        }
    }
}
