//! The handlers in-process (actix-web's test service over a real engine on a temporary data
//! dir): every endpoint family's success and its error paths, each answer's status checked
//! against the error table and its body's code and path. The integration tests drive the same
//! server over real sockets; these pin the handlers' own answers one by one.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::{test, web, App};
use serde_json::{json, Value};

use super::{configure, AppState};
use crate::config::Config;
use crate::event::Code;
use crate::privacy::{Pseudonymizer, TokenSigner};
use trimtab_engine::Engine;

const ADMIN: &str = "adm_handler_tests_admin_token_0123456789";
const WRITE: &str = "wk_handler_tests_write_key_0123456789abc";

/// A started engine on temporary directories, and the state the handlers share.
struct Fixture {
    _dir: tempfile::TempDir,
    state: web::Data<AppState>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.state.engine.stop();
    }
}

fn fixture(tune: impl FnOnce(&mut Config)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config {
        data: dir.path().join("data"),
        scripts: dir.path().join("scripts"),
        models: dir.path().join("models"),
        shards: 1,
        ..Config::default()
    };
    tune(&mut cfg);
    let state_cfg = cfg.clone();
    let engine = Engine::open(Arc::new(cfg))
        .unwrap()
        .start(Pseudonymizer::new([7; 32]))
        .unwrap();
    let state = web::Data::new(AppState {
        cluster: None,
        engine: Arc::new(engine),
        signer: TokenSigner::new([9; 32]),
        admin_token: ADMIN.into(),
        write_key: WRITE.into(),
        ready: AtomicBool::new(true),
        limits: Arc::new(super::limit::Limiters::new(&state_cfg.rate, false)),
    });
    Fixture { _dir: dir, state }
}

/// Status and JSON body of one answer.
async fn answer<B: MessageBody>(resp: ServiceResponse<B>) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = test::read_body(resp).await;
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, v)
}

/// Sends one request to the in-process app: its status and JSON body.
macro_rules! call {
    ($app:expr, $req:expr $(,)?) => {
        answer(test::call_service($app, $req.to_request()).await)
    };
}

/// Asserts an error answer: its code, the status the table gives it, and the path if given.
fn is_error((status, body): &(u16, Value), code: Code, path: Option<&str>) {
    assert_eq!(body["error"]["code"], code.as_str(), "{body}");
    assert_eq!(*status, code.status(), "{code}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    if let Some(p) = path {
        assert_eq!(body["error"]["path"], p, "{body}");
    }
}

fn bearer(t: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {t}"))
}

fn event(id: &str) -> Value {
    json!({
        "id": id, "type": "custom", "session": "s1", "ts": crate::now_ms(),
        "props": {"name": "x"}, "context": {},
        "consent": {"analytics": true, "personalization": true},
        "user": "u-1",
    })
}

#[actix_web::test]
async fn ingest_answers_and_refuses_with_the_table_s_codes() {
    let f = fixture(|c| c.limits.max_body_bytes = 4096);
    let app = test::init_service(
        App::new()
            .app_data(f.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;
    let post = |auth: Option<&str>, body: Vec<u8>| {
        let mut r = test::TestRequest::post()
            .uri("/v1/events")
            .set_payload(body);
        if let Some(a) = auth {
            r = r.insert_header(bearer(a));
        }
        r
    };
    let ok = call!(
        &app,
        post(
            Some(WRITE),
            json!({"events": [event("e1"), event("e2")]})
                .to_string()
                .into_bytes()
        )
    )
    .await;
    assert_eq!(ok.0, 202, "{}", ok.1);
    assert_eq!(
        (ok.1["accepted"].clone(), ok.1["duplicates"].clone()),
        (json!(2), json!(0))
    );
    let again = call!(
        &app,
        post(
            Some(WRITE),
            json!({"events": [event("e1")]}).to_string().into_bytes()
        )
    )
    .await;
    assert_eq!((again.0, again.1["duplicates"].clone()), (202, json!(1)));

    // The envelope is read first (it may carry the token), then the credential is checked.
    let valid = json!({"events": [event("e0")]}).to_string().into_bytes();
    is_error(
        &call!(&app, post(None, b"{}".to_vec())).await,
        Code::MissingField,
        Some("events"),
    );
    is_error(
        &call!(&app, post(None, valid.clone())).await,
        Code::Unauthorized,
        None,
    );
    is_error(
        &call!(&app, post(Some("nope"), valid)).await,
        Code::InvalidToken,
        None,
    );
    is_error(
        &call!(&app, post(Some(WRITE), b"{\"events\": [".to_vec())).await,
        Code::MalformedJson,
        None,
    );
    let mut unknown = event("e3");
    unknown["planet"] = "mars".into();
    is_error(
        &call!(
            &app,
            post(
                Some(WRITE),
                json!({"events": [unknown]}).to_string().into_bytes()
            )
        )
        .await,
        Code::UnknownField,
        Some("events[0].planet"),
    );
    let mut wrong = event("e4");
    wrong["ts"] = "yesterday".into();
    is_error(
        &call!(
            &app,
            post(
                Some(WRITE),
                json!({"events": [wrong]}).to_string().into_bytes()
            )
        )
        .await,
        Code::InvalidType,
        Some("events[0].ts"),
    );
    is_error(
        &call!(&app, post(Some(WRITE), vec![b' '; 5000])).await,
        Code::BodyTooLarge,
        None,
    );
    let many: Vec<Value> = (0..101).map(|i| event(&format!("m{i}"))).collect();
    let big = post(
        Some(WRITE),
        json!({"events": many}).to_string().into_bytes(),
    );
    // 101 events are more than 4 KiB here: the size check comes first.
    is_error(&call!(&app, big).await, Code::BodyTooLarge, None);

    // A user token writes only its own user's events.
    let token = call!(
        &app,
        test::TestRequest::post()
            .uri("/v1/identify")
            .insert_header(bearer(WRITE))
            .set_payload(json!({"user": "u-2"}).to_string()),
    )
    .await;
    assert_eq!(token.0, 200, "{}", token.1);
    let token = token.1["token"].as_str().unwrap().to_string();
    is_error(
        &call!(
            &app,
            post(
                Some(&token),
                json!({"events": [event("e5")]}).to_string().into_bytes()
            )
        )
        .await,
        Code::UserMismatch,
        Some("events[0].user"),
    );
    // The write key must name the user.
    let mut nameless = event("e6");
    nameless.as_object_mut().unwrap().remove("user");
    is_error(
        &call!(
            &app,
            post(
                Some(WRITE),
                json!({"events": [nameless]}).to_string().into_bytes()
            )
        )
        .await,
        Code::MissingField,
        Some("events[0].user"),
    );
    // /v1/me is a user's own: the write key may not use it.
    is_error(
        &call!(
            &app,
            test::TestRequest::get()
                .uri("/v1/me")
                .insert_header(bearer(WRITE))
        )
        .await,
        Code::Forbidden,
        None,
    );
    let me = call!(
        &app,
        test::TestRequest::get()
            .uri("/v1/me")
            .insert_header(bearer(&token))
    )
    .await;
    is_error(&me, Code::NotFound, None);
}

#[actix_web::test]
async fn admin_endpoints_need_the_admin_token_and_name_what_is_wrong() {
    let f = fixture(|_| {});
    let app = test::init_service(
        App::new()
            .app_data(f.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;
    let get = |uri: &str, auth: Option<&str>| {
        let mut r = test::TestRequest::get().uri(uri);
        if let Some(a) = auth {
            r = r.insert_header(bearer(a));
        }
        r
    };
    is_error(
        &call!(&app, get("/v1/rules", None)).await,
        Code::Unauthorized,
        None,
    );
    is_error(
        &call!(&app, get("/v1/rules", Some(WRITE))).await,
        Code::Forbidden,
        None,
    );
    let (s, rules) = call!(&app, get("/v1/rules", Some(ADMIN))).await;
    assert_eq!((s, rules["rules"].as_array().map(Vec::len)), (200, Some(0)));

    // Rules: compiled before they are written; errors at file:line:col.
    let put = |name: &str, body: &[u8]| {
        test::TestRequest::put()
            .uri(&format!("/v1/rules/{name}"))
            .insert_header(bearer(ADMIN))
            .set_payload(body.to_vec())
    };
    let broken = call!(&app, put("promo", b"adjust(\"s\",\n  \"v\"")).await;
    is_error(&broken, Code::RuleCompileError, None);
    assert!(
        broken.1["error"]["path"]
            .as_str()
            .unwrap()
            .ends_with("promo.rhai:2:6"),
        "{}",
        broken.1
    );
    is_error(
        &call!(&app, put("BadName", b"1;")).await,
        Code::InvalidRuleName,
        Some("name"),
    );
    is_error(
        &call!(&app, put("promo", &[0xff, 0xfe])).await,
        Code::InvalidEncoding,
        None,
    );
    let (s, st) = call!(&app, put("promo", b"adjust(\"s\", \"v\", #{});")).await;
    assert_eq!((s, st["state"].clone()), (200, json!("active")), "{st}");
    let (s, st) = call!(&app, get("/v1/rules/promo", Some(ADMIN))).await;
    assert_eq!((s, st["name"].clone()), (200, json!("promo")));
    is_error(
        &call!(&app, get("/v1/rules/none", Some(ADMIN))).await,
        Code::NotFound,
        None,
    );
    let del = |uri: &str| {
        test::TestRequest::delete()
            .uri(uri)
            .insert_header(bearer(ADMIN))
    };
    assert_eq!(call!(&app, del("/v1/rules/promo")).await.0, 204);
    is_error(
        &call!(&app, del("/v1/rules/promo")).await,
        Code::NotFound,
        None,
    );

    // Experiments and bandits: the field that is wrong.
    let put_json = |uri: &str, v: Value| {
        test::TestRequest::put()
            .uri(uri)
            .insert_header(bearer(ADMIN))
            .set_payload(v.to_string())
    };
    is_error(
        &call!(
            &app,
            put_json(
                "/v1/experiments/e1",
                json!({"slot": "cta", "primary_metric": "click_through", "variants": [{"name": "a"}]})
            )
        )
        .await,
        Code::InvalidExperiment,
        Some("variants"),
    );
    is_error(
        &call!(
            &app,
            put_json(
                "/v1/experiments/e1",
                json!({"slot": "cta", "primary_metric": "click_through", "colour": 1})
            )
        )
        .await,
        Code::InvalidExperiment,
        Some("colour"),
    );
    is_error(
        &call!(&app, get("/v1/experiments/none", Some(ADMIN))).await,
        Code::NotFound,
        None,
    );
    is_error(
        &call!(&app, del("/v1/experiments/none")).await,
        Code::NotFound,
        None,
    );
    is_error(
        &call!(
            &app,
            put_json("/v1/bandits/cta", json!({"candidates": ["a"]}))
        )
        .await,
        Code::InvalidBandit,
        Some("candidates"),
    );
    let (s, b) = call!(
        &app,
        put_json("/v1/bandits/cta", json!({"candidates": ["a", "b"]}))
    )
    .await;
    assert_eq!(s, 200, "{b}");
    is_error(
        &call!(&app, get("/v1/bandits/none", Some(ADMIN))).await,
        Code::NotFound,
        None,
    );
    is_error(
        &call!(&app, get("/v1/bandits/cta/log?format=xml", Some(ADMIN))).await,
        Code::BadQuery,
        Some("format"),
    );
    is_error(
        &call!(&app, get("/v1/bandits/cta/log?bogus=1", Some(ADMIN))).await,
        Code::BadQuery,
        Some("query"),
    );
    let (s, _) = call!(&app, get("/v1/bandits/cta/log", Some(ADMIN))).await;
    assert_eq!(s, 200);

    // Statistics requests and user data.
    let analyze = |v: Value| {
        test::TestRequest::post()
            .uri("/v1/stats/analyze")
            .insert_header(bearer(ADMIN))
            .set_payload(v.to_string())
    };
    let arms =
        json!([{"name": "a", "n": 10, "conversions": 1}, {"name": "a", "n": 10, "conversions": 2}]);
    is_error(
        &call!(&app, analyze(json!({"metric": "proportion", "arms": arms}))).await,
        Code::DuplicateArm,
        None,
    );
    let arms =
        json!([{"name": "a", "n": 10, "conversions": 1}, {"name": "b", "n": 10, "conversions": 2}]);
    is_error(
        &call!(
            &app,
            analyze(json!({"metric": "proportion", "arms": arms, "control": "z"}))
        )
        .await,
        Code::UnknownControl,
        Some("control"),
    );
    is_error(
        &call!(&app, get("/v1/users/nobody", Some(ADMIN))).await,
        Code::NotFound,
        None,
    );
    is_error(
        &call!(&app, get("/v1/admin/users/zz", Some(ADMIN))).await,
        Code::InvalidValue,
        Some("key"),
    );
    is_error(
        &call!(&app, get("/v1/nothing/here", None)).await,
        Code::NotFound,
        None,
    );
}

#[actix_web::test]
async fn anonymous_tokens_and_readiness_follow_the_configuration_and_shutdown() {
    let f = fixture(|c| c.anonymous = false);
    let app = test::init_service(
        App::new()
            .app_data(f.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;
    let anon = call!(
        &app,
        test::TestRequest::post()
            .uri("/v1/anonymous")
            .set_payload("{}")
    )
    .await;
    is_error(&anon, Code::AnonymousDisabled, None);
    let (s, r) = call!(&app, test::TestRequest::get().uri("/readyz")).await;
    assert_eq!((s, r["status"].clone()), (200, json!("ready")), "{r}");
    f.state
        .ready
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let (s, _) = call!(&app, test::TestRequest::get().uri("/readyz")).await;
    assert_eq!(s, 503);
    let ws = call!(&app, test::TestRequest::get().uri("/v1/ws")).await;
    is_error(&ws, Code::Unavailable, None);
}

#[actix_web::test]
async fn tokens_sockets_and_limits_are_refused_with_their_own_codes() {
    let f = fixture(|c| c.limits.max_batch_events = 3);
    let app = test::init_service(
        App::new()
            .app_data(f.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;
    let events = |n: usize, user: &str| {
        let evs: Vec<Value> = (0..n)
            .map(|i| {
                let mut e = event(&format!("lim-{i}"));
                e["user"] = user.into();
                e
            })
            .collect();
        json!({ "events": evs }).to_string()
    };
    let post = |auth: &str, body: String| {
        test::TestRequest::post()
            .uri("/v1/events")
            .insert_header(bearer(auth))
            .set_payload(body)
    };
    is_error(
        &call!(&app, post(WRITE, events(4, "u-3"))).await,
        Code::BatchTooLarge,
        Some("events"),
    );
    let long = "x".repeat(1000);
    is_error(
        &call!(&app, post(WRITE, events(1, &long))).await,
        Code::StringTooLong,
        Some("events[0].user"),
    );
    // A token past its expiry; a forged one.
    let user = f.state.pseudo.user("u-3");
    let expired = f.state.signer.issue(&user, 1);
    is_error(
        &call!(&app, post(&expired, events(1, "u-3"))).await,
        Code::TokenExpired,
        None,
    );
    let forged = TokenSigner::new([1; 32]).issue(&user, u64::MAX / 2);
    is_error(
        &call!(&app, post(&forged, events(1, "u-3"))).await,
        Code::InvalidToken,
        None,
    );
    // decide: at most 32 candidates, a slot name within limits.
    let decide = |v: Value| {
        test::TestRequest::post()
            .uri("/v1/decide")
            .insert_header(bearer(WRITE))
            .set_payload(v.to_string())
    };
    let many: Vec<String> = (0..33).map(|i| format!("v{i}")).collect();
    is_error(
        &call!(
            &app,
            decide(json!({"user": "u-3", "slot": "cta", "candidates": many}))
        )
        .await,
        Code::InvalidValue,
        Some("candidates"),
    );
    // identify names a user.
    let identify = test::TestRequest::post()
        .uri("/v1/identify")
        .insert_header(bearer(WRITE))
        .set_payload("{}");
    is_error(
        &call!(&app, identify).await,
        Code::MissingField,
        Some("user"),
    );
    // WebSockets: a foreign page's Origin; a plain GET without the handshake.
    let ws = test::TestRequest::get()
        .uri("/v1/ws")
        .insert_header(("Origin", "https://elsewhere.example"))
        .insert_header(("Host", "localhost:8080"));
    is_error(&call!(&app, ws).await, Code::OriginNotAllowed, None);
    is_error(
        &call!(&app, test::TestRequest::get().uri("/v1/ws")).await,
        Code::BadRequest,
        None,
    );
}

#[actix_web::test]
async fn a_known_path_with_another_method_is_405_and_bodies_must_be_objects() {
    let f = fixture(|_| {});
    let app = test::init_service(
        App::new()
            .app_data(f.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;

    // 405 with Allow naming the path's methods; an unknown path stays 404.
    let resp = test::call_service(
        &app,
        test::TestRequest::patch()
            .uri("/v1/rules/x")
            .insert_header(bearer(ADMIN))
            .to_request(),
    )
    .await;
    assert_eq!(resp.headers().get("allow").unwrap(), "GET, PUT, DELETE");
    is_error(&answer(resp).await, Code::MethodNotAllowed, None);
    let get_events = call!(&app, test::TestRequest::get().uri("/v1/events")).await;
    is_error(&get_events, Code::MethodNotAllowed, None);
    let nowhere = call!(&app, test::TestRequest::get().uri("/v1/nowhere")).await;
    is_error(&nowhere, Code::NotFound, None);

    // An array would fill a struct field by position: refused as a wrong type, before auth
    // sees the caller; invalid JSON keeps its own code.
    for (uri, auth) in [
        ("/v1/identify", WRITE),
        ("/v1/events", WRITE),
        ("/v1/stats/analyze", ADMIN),
    ] {
        let arr = call!(
            &app,
            test::TestRequest::post()
                .uri(uri)
                .insert_header(bearer(auth))
                .set_payload(r#"["someone"]"#)
        )
        .await;
        is_error(&arr, Code::InvalidType, None);
        let broken = call!(
            &app,
            test::TestRequest::post()
                .uri(uri)
                .insert_header(bearer(auth))
                .set_payload("[1,")
        )
        .await;
        is_error(&broken, Code::MalformedJson, None);
    }
    let put_arr = call!(
        &app,
        test::TestRequest::put()
            .uri("/v1/bandits/hero")
            .insert_header(bearer(ADMIN))
            .set_payload(r#"[["a","b"]]"#)
    )
    .await;
    is_error(&put_arr, Code::InvalidType, None);

    // Anonymous: empty, `null` and `{}` mint a new id; any field makes it a renewal.
    for body in ["", "null", "{}", " { } "] {
        let (status, v) = call!(
            &app,
            test::TestRequest::post()
                .uri("/v1/anonymous")
                .set_payload(body)
        )
        .await;
        assert_eq!(status, 200, "{body:?}: {v}");
        assert!(v["user"].as_str().unwrap().starts_with("anon-"));
    }
    let half = call!(
        &app,
        test::TestRequest::post()
            .uri("/v1/anonymous")
            .set_payload(r#"{"user": null}"#)
    )
    .await;
    is_error(&half, Code::MissingField, None);

    // A rule's source is its body: an empty one is refused, nothing is written.
    let empty = call!(
        &app,
        test::TestRequest::put()
            .uri("/v1/rules/blank")
            .insert_header(bearer(ADMIN))
            .set_payload("  \n")
    )
    .await;
    is_error(&empty, Code::MissingBody, None);
    let gone = call!(
        &app,
        test::TestRequest::get()
            .uri("/v1/rules/blank")
            .insert_header(bearer(ADMIN))
    )
    .await;
    is_error(&gone, Code::NotFound, None);

    // The document is served, names itself 3.1 and lists the new codes.
    let (status, doc) = call!(&app, test::TestRequest::get().uri("/v1/openapi.json")).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let codes = doc["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap();
    assert!(codes.iter().any(|c| c == "method_not_allowed"));
}

#[actix_web::test]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let open = fixture(|_| {});
    let app = test::init_service(
        App::new()
            .app_data(open.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;
    let resp =
        test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(resp.status(), 200);
    drop(app);

    let token = "metrics-scrape-token-0123";
    let f = fixture(|c| c.metrics_token = Some(token.into()));
    let app = test::init_service(
        App::new()
            .app_data(f.state.clone())
            .configure(|c| configure(c, &[])),
    )
    .await;
    let none = call!(&app, test::TestRequest::get().uri("/metrics")).await;
    is_error(&none, Code::Unauthorized, None);
    let wrong = call!(
        &app,
        test::TestRequest::get()
            .uri("/metrics")
            .insert_header(bearer(WRITE))
    )
    .await;
    is_error(&wrong, Code::Forbidden, None);
    for t in [token, ADMIN] {
        let resp = test::call_service(
            &app,
            test::TestRequest::get()
                .uri("/metrics")
                .insert_header(bearer(t))
                .to_request(),
        )
        .await;
        assert_eq!(resp.status(), 200);
        let body = test::read_body(resp).await;
        assert!(std::str::from_utf8(&body).unwrap().contains("trimtab_"));
    }
}
