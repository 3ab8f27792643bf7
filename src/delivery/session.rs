//! One WebSocket session, as a task on an actix worker. It authenticates the socket by its first
//! message (tokens never travel in URLs), then relays: client event batches into the pipeline,
//! acks and adjustments back out. Pings every `heartbeat_s`; a socket silent for
//! `client_timeout_s` is closed. Never blocks: queueing is `try_send`, waiting is `.await`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{Hub, Outbound};
use crate::config::Config;
use crate::event::{parse_events, parse_json, InputError};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, SubmitError};
use crate::privacy::{Pseudonymizer, TokenSigner, UserKey};

/// What a session needs from the app.
#[derive(Clone)]
pub struct SessionCtx {
    pub cfg: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    pub hub: Arc<Hub>,
    pub signer: TokenSigner,
    pub pseudo: Pseudonymizer,
    pub metrics: Arc<Metrics>,
}

fn error_msg(code: &str, message: &str, path: Option<&str>, ids: &[String]) -> Arc<str> {
    let mut v = json!({"type": "error", "code": code, "message": message});
    if let Some(p) = path {
        v["path"] = p.into();
    }
    if !ids.is_empty() {
        v["ids"] = ids.into();
    }
    v.to_string().into()
}

use crate::now_ms;

async fn close(session: Session, code: CloseCode, why: &str) {
    let _ = session
        .close(Some(CloseReason {
            code,
            description: Some(why.to_string()),
        }))
        .await;
}

/// Runs the session until the socket closes.
pub async fn run(ctx: SessionCtx, mut session: Session, stream: actix_ws::MessageStream) {
    let limit = ctx.cfg.limits.max_body_bytes;
    let mut stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let d = &ctx.cfg.delivery;

    // 1. Authenticate: the first message must be {"type":"auth","token":…}.
    let first = tokio::time::timeout(Duration::from_secs(d.auth_timeout_s), stream.recv()).await;
    let user = match first {
        Ok(Some(Ok(AggregatedMessage::Text(text)))) => match authenticate(&ctx, text.as_bytes()) {
            Ok(u) => u,
            Err((code, msg)) => {
                let _ = session
                    .text(error_msg(code, msg, None, &[]).to_string())
                    .await;
                ctx.metrics.reject("ws_auth", 1);
                close(session, CloseCode::Policy, msg).await;
                return;
            }
        },
        Ok(_) => {
            close(
                session,
                CloseCode::Policy,
                "the first message must be an auth message",
            )
            .await;
            return;
        }
        Err(_) => {
            close(session, CloseCode::Policy, "authentication timed out").await;
            return;
        }
    };
    if session.text(r#"{"type":"ready"}"#).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::channel::<Outbound>(d.session_buffer.max(8));
    let id = ctx.hub.register(user, tx.clone());
    let mut heartbeat = tokio::time::interval(Duration::from_secs(d.heartbeat_s.max(1)));
    heartbeat.tick().await;
    let timeout = Duration::from_secs(d.client_timeout_s.max(1));
    let mut last_seen = Instant::now();
    let mut closing: Option<(u16, &'static str)> = None;

    // 2. Relay until either side stops.
    loop {
        tokio::select! {
            msg = stream.recv() => match msg {
                Some(Ok(AggregatedMessage::Text(text))) => {
                    last_seen = Instant::now();
                    if let Some(reply) = handle_text(&ctx, user, text.as_bytes(), &tx) {
                        if session.text(reply.to_string()).await.is_err() { break; }
                    }
                }
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    let m = error_msg("unsupported_message", "binary frames are not supported; send JSON text", None, &[]);
                    if session.text(m.to_string()).await.is_err() { break; }
                }
                Some(Ok(AggregatedMessage::Ping(b))) => {
                    last_seen = Instant::now();
                    if session.pong(&b).await.is_err() { break; }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => last_seen = Instant::now(),
                Some(Ok(AggregatedMessage::Close(_))) | None => break,
                Some(Err(e)) => {
                    // Oversized frames and protocol violations end the session with a reason.
                    let m = error_msg("protocol_error", &e.to_string(), None, &[]);
                    let _ = session.text(m.to_string()).await;
                    closing = Some((1009, "message too big or malformed frame"));
                    break;
                }
            },
            out = rx.recv() => match out {
                Some(Outbound::Text(t)) => {
                    if session.text(t.to_string()).await.is_err() { break; }
                }
                Some(Outbound::Close(code, why)) => { closing = Some((code, why)); break; }
                None => break,
            },
            _ = heartbeat.tick() => {
                if last_seen.elapsed() > timeout {
                    closing = Some((1001, "heartbeat timeout"));
                    break;
                }
                if session.ping(b"").await.is_err() { break; }
            }
        }
    }
    ctx.hub.unregister(&user, id);
    let (code, why) = closing.unwrap_or((1000, "bye"));
    close(session, CloseCode::from(code), why).await;
}

fn authenticate(ctx: &SessionCtx, body: &[u8]) -> Result<UserKey, (&'static str, &'static str)> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| ("malformed_json", "auth message is not JSON"))?;
    if v.get("type").and_then(Value::as_str) != Some("auth") {
        return Err((
            "unauthorized",
            "the first message must be {\"type\":\"auth\",\"token\":…}",
        ));
    }
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .ok_or(("unauthorized", "auth message without a token"))?;
    let now_s = (now_ms() / 1000) as u64;
    ctx.signer.verify(token, now_s).map_err(|e| match e.code() {
        "token_expired" => ("token_expired", "the token has expired"),
        _ => ("invalid_token", "the token is not valid"),
    })
}

/// Handles one client text message; returns an immediate reply (errors), if any. Acks are
/// sent later through `tx`, once the batch is durable.
fn handle_text(
    ctx: &SessionCtx,
    user: UserKey,
    body: &[u8],
    tx: &mpsc::Sender<Outbound>,
) -> Option<Arc<str>> {
    let reject = |e: InputError, ids: &[String]| {
        ctx.metrics.reject(e.code, 1);
        Some(error_msg(e.code, &e.message, e.path.as_deref(), ids))
    };
    if body.len() > ctx.cfg.limits.max_body_bytes {
        let e = InputError::new(
            "body_too_large",
            "message exceeds limits.max_body_bytes",
            None,
        );
        return reject(e, &[]);
    }
    let v = match parse_json(body) {
        Ok(v) => v,
        Err(e) => return reject(e, &[]),
    };
    let Value::Object(mut obj) = v else {
        return reject(
            InputError::new("invalid_type", "a message is a JSON object", None),
            &[],
        );
    };
    match obj.get("type").and_then(Value::as_str) {
        Some("events") => {}
        Some("ping") => return Some(r#"{"type":"pong"}"#.into()),
        Some(other) => {
            let e = InputError::new(
                "invalid_value",
                format!("unknown message type {other:?}"),
                Some("type".into()),
            );
            return reject(e, &[]);
        }
        None => {
            return reject(
                InputError::new("missing_field", "missing field `type`", Some("type".into())),
                &[],
            )
        }
    }
    if let Some(k) = obj.keys().find(|k| *k != "type" && *k != "events") {
        let e = InputError::new(
            "unknown_field",
            format!("unknown field `{k}`"),
            Some(k.clone()),
        );
        return reject(e, &[]);
    }
    let events = match obj.remove("events") {
        Some(Value::Array(a)) => a,
        Some(_) => {
            return reject(
                InputError::new(
                    "invalid_type",
                    "events must be an array",
                    Some("events".into()),
                ),
                &[],
            )
        }
        None => {
            return reject(
                InputError::new(
                    "missing_field",
                    "missing field `events`",
                    Some("events".into()),
                ),
                &[],
            )
        }
    };
    let incoming = match parse_events(events, &ctx.cfg.limits, now_ms(), "events") {
        Ok(v) => v,
        Err(e) => return reject(e, &[]),
    };
    let mut ids_no_consent = Vec::new();
    let mut evs = Vec::with_capacity(incoming.len());
    for (i, inc) in incoming.into_iter().enumerate() {
        if let Some(raw) = &inc.user {
            if ctx.pseudo.user(raw) != user {
                let e = InputError::new(
                    "user_mismatch",
                    "a token only writes its own user's events",
                    Some(format!("events[{i}].user")),
                );
                return reject(e, &[]);
            }
        }
        if inc.event.consent.analytics {
            evs.push(inc.event);
        } else {
            ids_no_consent.push(inc.event.id);
        }
    }
    if !ids_no_consent.is_empty() {
        ctx.metrics
            .reject("no_consent", ids_no_consent.len() as u64);
    }
    if evs.is_empty() {
        // Nothing to store: the client may forget these ids.
        return Some(
            json!({"type":"ack","ids": ids_no_consent, "not_consented": ids_no_consent.len()})
                .to_string()
                .into(),
        );
    }
    let ids: Vec<String> = evs.iter().map(|e| e.id.clone()).collect();
    match ctx.pipeline.submit_events(user, evs) {
        Ok(pending) => {
            let tx = tx.clone();
            actix_web::rt::spawn(async move {
                let msg = match pending.await {
                    Ok(Ok(outcome)) => {
                        let mut all = outcome.ids;
                        all.extend(ids_no_consent);
                        json!({"type":"ack","ids": all, "duplicates": outcome.duplicates})
                            .to_string()
                            .into()
                    }
                    Ok(Err(e)) => error_msg("storage_unavailable", &e.to_string(), None, &ids),
                    Err(_) => error_msg(
                        "unavailable",
                        "the server stopped before storing these events",
                        None,
                        &ids,
                    ),
                };
                // The session may be gone; the client then retries unacknowledged ids.
                let _ = tx.send(Outbound::Text(msg)).await;
            });
            None
        }
        Err(SubmitError::Overloaded) => {
            ctx.metrics.reject("overloaded", ids.len() as u64);
            Some(error_msg(
                "overloaded",
                "the server is busy; retry these events later with the same ids",
                None,
                &ids,
            ))
        }
        Err(SubmitError::ShuttingDown) => Some(error_msg(
            "unavailable",
            "the server is shutting down",
            None,
            &ids,
        )),
    }
}
