//! The admin live feed (`GET /v1/admin/live`), a WebSocket for the dashboard: authenticated by
//! its first message with the admin token, then a `stats` snapshot every second plus every
//! event and adjustment as it happens (pseudonymous user keys only).

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;

use crate::delivery::Hub;
use crate::metrics::Metrics;
use crate::privacy::secrets::credential_eq;
use crate::rules::Rules;

/// Largest frame the feed takes (its only message is the auth message).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

pub struct LiveCtx {
    /// Set once the first message has authenticated the socket (read by the frame guard).
    pub authenticated: Arc<std::sync::atomic::AtomicBool>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub rules: Rules,
    pub admin_token: String,
    pub auth_timeout: Duration,
}

use crate::now_ms;

pub async fn run(ctx: LiveCtx, mut session: Session, stream: actix_ws::MessageStream) {
    let mut stream = stream
        .max_frame_size(MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME_BYTES);
    let first = tokio::time::timeout(ctx.auth_timeout, stream.recv()).await;
    if let Ok(Some(Err(e))) = &first {
        let _ = session
            .close(Some(CloseReason {
                code: CloseCode::Size,
                description: Some(format!("message too big or malformed frame: {e}")),
            }))
            .await;
        return;
    }
    let ok = match first {
        Ok(Some(Ok(AggregatedMessage::Text(t)))) => crate::event::parse_json(t.as_bytes())
            .ok()
            .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string))
            .is_some_and(|tok| credential_eq(&tok, &ctx.admin_token)),
        _ => false,
    };
    if !ok {
        let _ = session
            .text(r#"{"type":"error","code":"forbidden","message":"the first message must be {\"type\":\"auth\",\"token\":<admin token>}"}"#)
            .await;
        let _ = session
            .close(Some(CloseReason {
                code: CloseCode::Policy,
                description: Some("admin token required".into()),
            }))
            .await;
        return;
    }
    ctx.authenticated
        .store(true, std::sync::atomic::Ordering::Relaxed);
    if session.text(r#"{"type":"ready"}"#).await.is_err() {
        return;
    }
    let mut feed = ctx.hub.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            item = feed.recv() => match item {
                Ok(msg) => if session.text(msg.to_string()).await.is_err() { break },
                Err(RecvError::Lagged(n)) => {
                    let m = format!(r#"{{"type":"lagged","skipped":{n}}}"#);
                    if session.text(m).await.is_err() { break }
                }
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => {
                let snap = ctx.metrics.snapshot(&ctx.rules.statuses(), now_ms()).to_string();
                if session.text(snap).await.is_err() { break }
            }
            msg = stream.recv() => match msg {
                Some(Ok(AggregatedMessage::Ping(b))) => { if session.pong(&b).await.is_err() { break } }
                Some(Ok(AggregatedMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    let _ = session.close(None).await;
}
