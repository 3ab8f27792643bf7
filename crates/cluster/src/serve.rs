//! Serving an owned partition: restoring it from its last checkpoint, reading its events from
//! the stream into this node's engine in order (with a checkpoint round every
//! `checkpoint_ms` between two batches), and answering its requests once the user's events
//! are read.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures_util::{FutureExt, StreamExt};

use trimtab_engine::pipeline::SubmitError;
use trimtab_privacy::UserKey;
use trimtab_wire::Event;

use crate::{names, Fail, Inner, Op, Request};

/// How far an owned partition is read, and a way to make its reader start over.
#[derive(Default)]
pub(crate) struct Progress {
    /// The last stream sequence of the partition that is in the engine.
    pub read: AtomicU64,
    /// Told when a request waits for events that do not come: the reader makes a new
    /// consumer from where it is (after a NATS restart the old one can stay silent).
    pub kick: tokio::sync::Notify,
    /// Whether the partition's checkpoint (if any) is restored: requests wait for it.
    pub restored: std::sync::atomic::AtomicBool,
    /// Held by a checkpoint round, a restore and an erasure of one of the partition's users
    /// (a round never images a user half-erased).
    pub lock: tokio::sync::Mutex<()>,
    /// Users changed since the last checkpoint round, with the rounds they stay due for.
    pub due: std::sync::Mutex<std::collections::HashMap<UserKey, u8>>,
}

impl Progress {
    /// `user` changed: due for the next two checkpoint rounds.
    pub(crate) fn touch(&self, user: UserKey) {
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user, 2);
    }
}

/// At most this many messages go into the engine as one batch.
const MAX_BATCH: usize = 512;

/// Reads partition `p` — after its last checkpoint's mark, else from the start of the stream
/// (the engine skips events it already has) — until told to stop; `read` follows the last
/// stream sequence that is in the engine.
pub(crate) async fn read(
    inner: Arc<Inner>,
    p: u32,
    progress: Arc<Progress>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let read = &progress.read;
    let label = p.to_string();
    let consumed = inner.metrics.consumed.with_label_values(&[&label]);
    let read_gauge = inner.metrics.read.with_label_values(&[&label]);
    let every = Duration::from_millis(inner.cfg.checkpoint_ms);
    if !every.is_zero() && read.load(Ordering::Relaxed) == 0 {
        // Resume from the partition's last checkpoint (if it has one).
        loop {
            match crate::ckpt::restore(&inner, p, &progress).await {
                Ok(from) => {
                    read.store(from.unwrap_or(0), Ordering::Relaxed);
                    read_gauge.set(read.load(Ordering::Relaxed) as i64);
                    break;
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "cluster: cannot read the partition's checkpoint; retrying");
                    if sleep_or_stop(&mut stop, Duration::from_millis(500)).await {
                        return;
                    }
                }
            }
        }
    }
    progress.restored.store(true, Ordering::Release);
    let mut next_round = tokio::time::Instant::now() + every;
    'connect: loop {
        if *stop.borrow() {
            return;
        }
        let from = read.load(Ordering::Relaxed);
        let config = OrderedConfig {
            filter_subject: inner.names.partition(p),
            deliver_policy: if from == 0 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: from + 1,
                }
            },
            ..Default::default()
        };
        // Bounded: a request lost in a NATS restart must not leave the reader waiting.
        let messages = tokio::time::timeout(Duration::from_secs(5), async {
            match inner.stream.create_consumer(config).await {
                Ok(c) => c.messages().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 5 s".into()));
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cluster: cannot read a partition; retrying");
                if sleep_or_stop(&mut stop, Duration::from_millis(500)).await {
                    return;
                }
                continue;
            }
        };
        loop {
            if !every.is_zero() && tokio::time::Instant::now() >= next_round {
                checkpoint(&inner, p, &progress).await;
                next_round = tokio::time::Instant::now() + every;
            }
            let first = tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep_until(next_round), if !every.is_zero() => continue,
                _ = progress.kick.notified() => {
                    tracing::info!(partition = p, "cluster: a request waits for events that do not come; reading the partition anew");
                    continue 'connect;
                }
                m = messages.next() => m,
            };
            let mut batch = match first {
                Some(Ok(m)) => vec![m],
                Some(Err(e)) => {
                    tracing::warn!(partition = p, error = %e, "cluster: reading a partition failed; resuming");
                    continue 'connect;
                }
                None => continue 'connect,
            };
            while batch.len() < MAX_BATCH {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    _ => break,
                }
            }
            let mut last = 0;
            let mut quiet = true;
            let now_ns = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as i128;
            let mut groups: Vec<(UserKey, Vec<Event>)> = Vec::new();
            for m in &batch {
                if let Ok(info) = m.info() {
                    last = last.max(info.stream_sequence);
                    let age_ms = (now_ns - info.published.unix_timestamp_nanos()) / 1_000_000;
                    quiet &= age_ms > i128::from(inner.cfg.quiet_after_ms);
                } else {
                    quiet = false;
                }
                let Some(user) = user_of(&m.subject) else {
                    continue;
                };
                let Ok(ev) = postcard::from_bytes::<Event>(&m.payload) else {
                    tracing::warn!(partition = p, subject = %m.subject, "cluster: an event in the stream does not decode; skipped");
                    continue;
                };
                if let Some(node) = m.headers.as_ref().and_then(|h| h.get("Trimtab-Node")) {
                    inner.note_origin(user, node.as_str());
                }
                progress.touch(user);
                match groups.iter_mut().find(|(u, _)| *u == user) {
                    Some((_, evs)) => evs.push(ev),
                    None => groups.push((user, vec![ev])),
                }
            }
            let n = batch.len() as u64;
            if !groups.is_empty() && !submit(&inner, groups, !quiet, &mut stop).await {
                return;
            }
            consumed.inc_by(n);
            read.fetch_max(last, Ordering::Relaxed);
            read_gauge.set(read.load(Ordering::Relaxed) as i64);
        }
    }
}

/// A checkpoint round of the partition, if any of its users changed.
async fn checkpoint(inner: &Inner, p: u32, progress: &Progress) {
    let due = !progress
        .due
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty();
    if !due {
        return;
    }
    if let Err(e) = crate::ckpt::round(inner, p, progress).await {
        tracing::warn!(partition = p, error = %e, "cluster: a checkpoint round failed; its users stay due");
    }
}

/// Puts a batch into the engine and waits until it is durable there, retrying while the
/// engine's queues are full. False: told to stop (or the engine is stopping).
async fn submit(
    inner: &Inner,
    groups: Vec<(UserKey, Vec<Event>)>,
    push: bool,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        match inner
            .engine
            .pipeline
            .submit_events_with(groups.clone(), push)
        {
            Ok(pending) => match pending.await {
                Ok(Ok(_)) => return true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cluster: the engine refused a batch from the stream; retrying");
                }
                Err(_) => return false,
            },
            Err(SubmitError::Overloaded) => {}
            Err(SubmitError::ShuttingDown) => return false,
        }
        // A stop still lets an interrupted batch be retried by the next owner: the stream
        // has it, and what this node stored of it is de-duplicated.
        if sleep_or_stop(stop, Duration::from_millis(20)).await {
            return false;
        }
    }
}

/// Sleeps `d`; true if told to stop meanwhile.
async fn sleep_or_stop(stop: &mut tokio::sync::watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = stop.changed() => true,
        _ = tokio::time::sleep(d) => *stop.borrow(),
    }
}

/// The user key in an event subject (`<prefix>.ev.<part>.<hex>`).
pub(crate) fn user_of(subject: &str) -> Option<UserKey> {
    let hex = subject.rsplit('.').next()?;
    let b = hex::decode(hex).ok()?;
    Some(UserKey(<[u8; 16]>::try_from(b).ok()?))
}

/// Answers the partition's requests until the subscription ends (the partition is given
/// back).
pub(crate) async fn requests(
    inner: Arc<Inner>,
    p: u32,
    progress: Arc<Progress>,
    mut sub: async_nats::Subscriber,
) {
    while let Some(msg) = sub.next().await {
        let inner = inner.clone();
        let read = progress.clone();
        tokio::spawn(async move {
            let Some(reply) = msg.reply.clone() else {
                return;
            };
            let answer = match serde_json::from_slice::<Request>(&msg.payload) {
                Ok(req) => answer(&inner, p, &read, req).await,
                Err(e) => Err(Fail {
                    overloaded: false,
                    message: format!("a request this node cannot read: {e}"),
                }),
            };
            let body = serde_json::to_vec(&answer).expect("serialisable");
            let _ = inner.client.publish(reply, body.into()).await;
        });
    }
}

fn fail(message: impl Into<String>) -> Fail {
    Fail {
        overloaded: false,
        message: message.into(),
    }
}

fn submit_fail(e: SubmitError) -> Fail {
    match e {
        SubmitError::Overloaded => Fail {
            overloaded: true,
            message: "busy".into(),
        },
        SubmitError::ShuttingDown => fail("the owning node is shutting down"),
    }
}

async fn answer(
    inner: &Inner,
    p: u32,
    read: &Progress,
    req: Request,
) -> Result<serde_json::Value, Fail> {
    if names::partition(&req.user, inner.cfg.partitions) != p {
        return Err(fail("the user is not in this partition"));
    }
    caught_up(inner, p, read, &req.user).await?;
    let pipeline = &inner.engine.pipeline;
    // Every node's erase_loop (this one's too) forgets the user's origins.
    match req.op {
        Op::Export => {
            let mut export = settle(pipeline.export(req.user)).await?;
            if let Some(x) = &mut export {
                // The stream is the cluster's log: it has every event of the user, this
                // node's event store only those it read (not those before a checkpoint).
                x.events = stream_events(inner, p, &req.user).await?;
            }
            json(export)
        }
        Op::Erase => {
            // Not while a checkpoint round images the partition's users.
            let _one = read.lock.lock().await;
            read.due
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.user);
            json(settle(pipeline.erase(req.user)).await?)
        }
        Op::Decide { slot, candidates } => {
            read.touch(req.user);
            json(settle(pipeline.decide(req.user, slot, candidates)).await?)
        }
    }
}

/// The engine's answer to a queued request, or why there is none.
async fn settle<T>(
    queued: Result<trimtab_engine::pipeline::Pending<T>, SubmitError>,
) -> Result<T, Fail> {
    queued
        .map_err(submit_fail)?
        .await
        .map_err(|_| fail("the owning node stopped before answering"))?
        .map_err(|e| fail(e.to_string()))
}

fn json(v: impl serde::Serialize) -> Result<serde_json::Value, Fail> {
    serde_json::to_value(v).map_err(|e| fail(e.to_string()))
}

/// The user's events as the stream holds them, in its order, each id once (`seq`: the
/// position among them, from 1).
async fn stream_events(
    inner: &Inner,
    p: u32,
    user: &UserKey,
) -> Result<Vec<serde_json::Value>, Fail> {
    let messages = crate::ckpt::all_messages(&inner.stream, inner.names.events(p, user), false)
        .await
        .map_err(|e| fail(format!("reading the user's events from the stream: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (_, payload) in messages {
        if let Ok(ev) = postcard::from_bytes::<Event>(&payload) {
            if seen.insert(ev.id.clone()) {
                let mut v = ev.to_json();
                v["seq"] = (out.len() + 1).into();
                out.push(v);
            }
        }
    }
    Ok(out)
}

/// Waits until every event the stream holds for `user` is in the engine (read your writes:
/// an export after an acknowledged batch has the batch).
async fn caught_up(inner: &Inner, p: u32, progress: &Progress, user: &UserKey) -> Result<(), Fail> {
    let read = &progress.read;
    let last = match inner
        .stream
        .get_last_raw_message_by_subject(&inner.names.events(p, user))
        .await
    {
        Ok(m) => m.sequence,
        Err(e)
            if e.kind()
                == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
        {
            0
        }
        Err(e) => return Err(fail(format!("reading the stream: {e}"))),
    };
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs(8);
    let mut kicked = start;
    let mut seen = read.load(Ordering::Relaxed);
    while !progress.restored.load(Ordering::Acquire) || read.load(Ordering::Relaxed) < last {
        // No progress for a second: the reader's consumer may be stale; make it start over.
        let now = tokio::time::Instant::now();
        let at = read.load(Ordering::Relaxed);
        if at != seen {
            (seen, kicked) = (at, now);
        } else if now - kicked > Duration::from_secs(1) {
            progress.kick.notify_one();
            kicked = now;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(fail(format!(
                "partition {p} is still being read (at {} of {last})",
                read.load(Ordering::Relaxed)
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
