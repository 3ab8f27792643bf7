//! One WebSocket session, as a task on an actix worker. It authenticates the socket by its first
//! message (tokens never travel in URLs), then relays: client event batches into the pipeline,
//! acks and adjustments back out. Pings every `heartbeat_s`; a socket silent for
//! `client_timeout_s` is closed. Never blocks: queueing is `try_send`, waiting is `.await`.

use crate::event::Code;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::config::Config;
use crate::delivery::{Hub, Outbound, SocketTx};
use crate::event::{parse_client_message, ClientMessage, InputError};
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, SubmitError};
use crate::privacy::{Pseudonymizer, TokenSigner, UserKey};

/// What a session needs from the app.
#[derive(Clone)]
pub struct SessionCtx {
    /// Set once the first message has authenticated the socket (read by the frame guard).
    pub authenticated: Arc<std::sync::atomic::AtomicBool>,
    pub cfg: Arc<Config>,
    pub pipeline: Arc<Pipeline>,
    /// Cluster mode: a socket's batches go to the stream, in order, through its publisher.
    pub cluster: Option<Arc<trimtab_cluster::Cluster>>,
    pub hub: Arc<Hub>,
    pub signer: TokenSigner,
    pub pseudo: Pseudonymizer,
    pub metrics: Arc<Metrics>,
    /// The server's rate limits (a socket's messages count against its user).
    pub limits: Arc<crate::api::limit::Limiters>,
}

fn error_msg(code: Code, message: &str, path: Option<&str>, ids: &[String]) -> ByteString {
    crate::delivery::frames::error(code, message, path, ids)
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
            Err(e) => {
                let _ = session.text(e.frame(&[])).await;
                ctx.metrics.reject("ws_auth", 1);
                close(session, CloseCode::Policy, &e.message).await;
                return;
            }
        },
        // Gone before authenticating: nothing was refused.
        Ok(Some(Err(e))) if peer_gone(&e) => return,
        Ok(Some(Err(e))) => {
            // An oversized frame (refused at its header) or too many bytes before the auth.
            let _ = session
                .text(error_msg(Code::ProtocolError, &e.to_string(), None, &[]))
                .await;
            ctx.metrics.reject("ws_frame", 1);
            close(
                session,
                CloseCode::Size,
                "message too big or malformed frame",
            )
            .await;
            return;
        }
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
    ctx.authenticated
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Outbound>(d.session_buffer.max(8));
    let Some(id) = ctx
        .hub
        .try_register(user, tx.clone(), d.max_sockets_per_user)
    else {
        ctx.metrics.reject("too_many_sockets", 1);
        let why = format!(
            "this user has {} WebSockets open already (delivery.max_sockets_per_user)",
            d.max_sockets_per_user
        );
        let _ = session
            .text(error_msg(Code::TooManySockets, &why, None, &[]))
            .await;
        close(session, CloseCode::Policy, "too many sockets for this user").await;
        return;
    };
    if session.text(r#"{"type":"ready"}"#).await.is_err() {
        ctx.hub.unregister(&user, id);
        return;
    }
    let publisher = ctx.cluster.clone().map(|c| {
        let (ptx, prx) = mpsc::channel(PUBLISH_QUEUE);
        actix_web::rt::spawn(publish_batches(
            c,
            ctx.hub.clone(),
            ctx.cfg.pipeline.retry_after_s,
            prx,
        ));
        ptx
    });
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
                    if let Some(reply) = handle_text(&ctx, user, text.as_bytes(), &tx, publisher.as_ref()) {
                        if session.text(reply).await.is_err() { break; }
                    }
                }
                Some(Ok(AggregatedMessage::Binary(_))) => {
                    let m = error_msg(Code::UnsupportedMessage, "binary frames are not supported; send JSON text", None, &[]);
                    if session.text(m).await.is_err() { break; }
                }
                Some(Ok(AggregatedMessage::Ping(b))) => {
                    last_seen = Instant::now();
                    if session.pong(&b).await.is_err() { break; }
                }
                Some(Ok(AggregatedMessage::Pong(_))) => last_seen = Instant::now(),
                Some(Ok(AggregatedMessage::Close(_))) | None => break,
                Some(Err(e)) if peer_gone(&e) => break,
                Some(Err(e)) => {
                    // Oversized frames and protocol violations end the session with a reason.
                    ctx.metrics.reject("ws_frame", 1);
                    let m = error_msg(Code::ProtocolError, &e.to_string(), None, &[]);
                    let _ = session.text(m).await;
                    closing = Some((1009, "message too big or malformed frame"));
                    break;
                }
            },
            out = rx.recv() => match out {
                Some(Outbound::Text(t)) => {
                    if session.text(t).await.is_err() { break; }
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

/// Whether a stream error is the client's connection ending (reset, closed mid-frame) rather
/// than a frame refused (the size guard) or a protocol violation: a tab closed without a close
/// frame is not a rejected message.
fn peer_gone(e: &actix_ws::ProtocolError) -> bool {
    use actix_web::error::PayloadError;
    let actix_ws::ProtocolError::Io(io) = e else {
        return false;
    };
    match io.get_ref().and_then(|r| r.downcast_ref::<PayloadError>()) {
        Some(PayloadError::Incomplete(_)) => true,
        // The frame guard refuses with InvalidData; anything else is the socket failing.
        Some(PayloadError::Io(inner)) => inner.kind() != std::io::ErrorKind::InvalidData,
        _ => false,
    }
}

fn authenticate(ctx: &SessionCtx, body: &[u8]) -> Result<UserKey, ApiError> {
    // The JSON parser every body goes through: a repeated key (two tokens) is refused.
    let v: Value = crate::event::parse_json(body).map_err(ApiError::from)?;
    if v.get("type").and_then(Value::as_str) != Some("auth") {
        return Err(ApiError::new(
            Code::Unauthorized,
            "the first message must be {\"type\":\"auth\",\"token\":…}",
        ));
    }
    let token = v
        .get("token")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::new(Code::Unauthorized, "auth message without a token"))?;
    let now_s = (now_ms() / 1000) as u64;
    Ok(ctx.signer.verify(token, now_s)?)
}

/// Handles one client text message; returns an immediate reply (errors), if any. The `ack`
/// comes later through the socket's own queue `tx`, put there by the writer once the batch is
/// durable.
fn handle_text(
    ctx: &SessionCtx,
    user: UserKey,
    body: &[u8],
    tx: &SocketTx,
    publisher: Option<&mpsc::Sender<Batch>>,
) -> Option<ByteString> {
    let reject = |e: InputError, ids: &[String]| {
        ctx.metrics.reject(e.code.as_str(), 1);
        Some(ApiError::from(e).frame(ids))
    };
    // One typed parse from the bytes (no JSON tree for valid input).
    let incoming = match parse_client_message(body, &ctx.cfg.limits, now_ms()) {
        Ok(ClientMessage::Events(v)) => v,
        Ok(ClientMessage::Ping) => return Some(ByteString::from_static(r#"{"type":"pong"}"#)),
        Ok(ClientMessage::Auth { .. }) => {
            let e = InputError::new(
                Code::InvalidValue,
                "this socket is authenticated already",
                Some("type".into()),
            );
            return reject(e, &[]);
        }
        Err(e) => return reject(e, &[]),
    };
    if let Err(l) = ctx.limits.check_user(&user) {
        ctx.metrics.reject(l.reason(), 1);
        let ids: Vec<String> = incoming.into_iter().map(|i| i.event.id).collect();
        return Some(l.error().frame(&ids));
    }
    // The same admission as an HTTP batch: the socket's user may only write its own events.
    let (groups, ids_no_consent) =
        match crate::api::ingest::group_by_user(&ctx.pseudo, &Caller::User(user), incoming) {
            Ok(g) => g,
            Err(e) => {
                ctx.metrics.reject(e.code.as_str(), 1);
                return Some(e.frame(&[]));
            }
        };
    let evs = groups
        .into_iter()
        .next()
        .map(|(_, v)| v)
        .unwrap_or_default();
    if !ids_no_consent.is_empty() {
        ctx.metrics
            .reject("no_consent", ids_no_consent.len() as u64);
    }
    if evs.is_empty() {
        // Nothing to store: the client may forget these ids.
        return Some(crate::delivery::frames::ack_not_consented(&ids_no_consent));
    }
    let result = match publisher {
        Some(p) => p
            .try_send(Batch {
                user,
                events: evs,
                extra: ids_no_consent,
                socket: tx.clone(),
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(b) => (SubmitError::Overloaded, b.events),
                mpsc::error::TrySendError::Closed(b) => (SubmitError::ShuttingDown, b.events),
            }),
        None => ctx
            .pipeline
            .submit_ws(user, evs, tx.clone(), ids_no_consent),
    };
    let (err, evs) = match result {
        Ok(()) => return None,
        Err(e) => e,
    };
    let n = evs.len() as u64;
    let failed_ids: Vec<String> = evs.into_iter().map(|e| e.id).collect();
    match err {
        SubmitError::Overloaded => {
            ctx.metrics.reject("overloaded", n);
            Some(error_msg(
                Code::Overloaded,
                "the server is busy; retry these events later with the same ids",
                None,
                &failed_ids,
            ))
        }
        SubmitError::ShuttingDown => Some(error_msg(
            Code::Unavailable,
            "the server is shutting down",
            None,
            &failed_ids,
        )),
    }
}

/// Batches a socket may have waiting for the stream (cluster mode); past it, `overloaded`.
const PUBLISH_QUEUE: usize = 64;

/// A socket's batch on its way to the stream (cluster mode).
struct Batch {
    user: UserKey,
    events: Vec<crate::event::Event>,
    /// Ids acknowledged with the batch without being stored (no consent).
    extra: Vec<String>,
    socket: SocketTx,
}

/// Cluster mode: publishes a socket's batches in the order they came (each is queued to the
/// stream before the next), and sends each `ack` once JetStream has acknowledged all of its
/// events (or the error frame naming them).
async fn publish_batches(
    cluster: Arc<trimtab_cluster::Cluster>,
    hub: Arc<Hub>,
    retry_after_s: u64,
    mut rx: mpsc::Receiver<Batch>,
) {
    while let Some(b) = rx.recv().await {
        let mut ids: Vec<String> = b.events.iter().map(|e| e.id.clone()).collect();
        ids.extend(b.extra);
        let sent = cluster.send(&[(b.user, b.events)]).await;
        let (hub, socket) = (hub.clone(), b.socket);
        let frame = move |r: Result<
            trimtab_engine::pipeline::IngestOutcome,
            trimtab_cluster::ClusterError,
        >| match r {
            Ok(o) => crate::delivery::frames::ack(ids.iter().map(String::as_str), o.duplicates),
            Err(e) => ApiError::from_cluster(e, retry_after_s).frame(&ids),
        };
        match sent {
            Ok(published) => {
                actix_web::rt::spawn(async move {
                    let f = frame(published.wait().await);
                    hub.send_to(&socket, f);
                });
            }
            Err(e) => {
                hub.send_to(&socket, frame(Err(e)));
            }
        }
    }
}
