//! Checkpoints of owned partitions in JetStream, so that a new owner resumes from the last
//! one plus the stream instead of reading a partition from its start.
//!
//! **Rounds.** Every `cluster.checkpoint_ms` the owner of a partition, between two batches
//! of its reader (so every event it has read is in the engine and no other is), takes the
//! engine's images of the partition's users that changed (their state, decisions and
//! learning records: [`trimtab_engine::pipeline::UserImage`]; the events stay in the events
//! stream), publishes each sealed on `<prefix>.st.u.<partition>.<user>`, then the partition's
//! **mark** on `<prefix>.st.p.<partition>`: the stream sequence the images cover and the
//! partition's experiment statistics. The `<prefix>_state` stream keeps two messages per
//! subject: when a round dies before its mark, each user's image before it is still there,
//! and a user's newest image whose sequence the mark covers is that user at the mark. A user
//! stays due for one round after its last change (a timer may still act on it).
//!
//! **Sealing.** Each image is sealed (ChaCha20-Poly1305, [`trimtab_privacy::crypto`]) under
//! a random key of its user's, which the `<prefix>_keys` bucket holds wrapped under a key
//! derived from the pseudonym key (which NATS never sees). Erasure shreds that key with
//! JetStream's secure delete: images left anywhere — an older message, free space in a block
//! file — then open for no one.
//!
//! **Taking over** ([`restore`]): the mark, then every image of the partition; all of them
//! are opened first, and a checkpoint that does not open as a whole is not used (the
//! partition is read from the start, which is always right: the engine de-duplicates). Then
//! each user's image replaces what this node held of them, the partition's statistics are
//! set to the mark's, and the reader starts after the mark.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use trimtab_engine::pipeline::{StatRow, SubmitError, UserImage};
use trimtab_privacy::crypto::{open_record, seal_record};
use trimtab_privacy::{Table, UserKey};

use crate::serve::Progress;
use crate::{names, Inner};

/// The checkpoint stream and the users' keys.
pub(crate) struct Checkpoints {
    pub stream: jetstream::stream::Stream,
    keys: kv::Store,
    keys_stream: jetstream::stream::Stream,
    /// Wraps the users' keys (derived from the pseudonym key).
    kek: [u8; 32],
    /// Users' keys this node has used.
    cache: Mutex<HashMap<UserKey, [u8; 32]>>,
    /// Partitions whose keys were all read into `cache` when this node took them: a user of
    /// one without a cached key has none, so a key is created without asking first.
    listed: Mutex<std::collections::HashSet<u32>>,
    /// Checkpoint rounds run one at a time.
    turn: tokio::sync::Semaphore,
}

/// What a user's sealed message holds.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// The partition's stream sequence the image is at.
    at: u64,
    image: UserImage,
}

/// A partition's mark.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Mark {
    /// Every event of the partition up to this stream sequence is in the images.
    pub read: u64,
    pub node: String,
    pub at_ms: i64,
    /// Images written in the round of this mark.
    pub users: usize,
    /// The partition's experiment statistics: (group, ((segment, arm, metric), sums)).
    pub stats: Vec<(String, StatRow)>,
}

impl Checkpoints {
    pub(crate) async fn open(
        js: &jetstream::Context,
        names: &names::Names,
        replicas: usize,
        kek: [u8; 32],
    ) -> Result<Checkpoints, String> {
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: names.state(),
                subjects: vec![names.state_all()],
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas,
                max_messages_per_subject: 2,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot open the checkpoint stream on NATS: {e}"))?;
        let keys = crate::bucket(js, &names.keys(), Duration::ZERO, replicas, false).await?;
        let keys_stream = js
            .get_stream(format!("KV_{}", names.keys()))
            .await
            .map_err(|e| format!("cannot open the bucket {} on NATS: {e}", names.keys()))?;
        Ok(Checkpoints {
            stream,
            keys,
            keys_stream,
            kek,
            cache: Mutex::new(HashMap::new()),
            listed: Mutex::new(Default::default()),
            turn: tokio::sync::Semaphore::new(1),
        })
    }

    /// The user's checkpoint key: cached, else from the bucket, else (with `create`) a new
    /// one. `Ok(None)`: the user has none (never checkpointed, or erased).
    async fn key(
        &self,
        part: u32,
        user: &UserKey,
        create: bool,
    ) -> Result<Option<[u8; 32]>, String> {
        if let Some(k) = self.cached(user) {
            return Ok(Some(k));
        }
        let name = names::Names::key(part, user);
        let listed = create
            && self
                .listed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&part);
        for attempt in 0..2 {
            if listed && attempt == 0 {
                // Known to have none: create it at once (one round trip, not two).
                let k = self.new_key();
                let wrapped = seal_record(&self.kek, user, Table::Key, &k);
                if self.keys.create(&name, wrapped.into()).await.is_ok() {
                    self.remember(*user, k);
                    return Ok(Some(k));
                }
            }
            let stored = self
                .keys
                .get(&name)
                .await
                .map_err(|e| format!("reading a user's checkpoint key: {e}"))?;
            if let Some(wrapped) = stored {
                let k = self.unwrap(user, &wrapped)?;
                self.remember(*user, k);
                return Ok(Some(k));
            }
            if !create {
                return Ok(None);
            }
            let k = self.new_key();
            let wrapped = seal_record(&self.kek, user, Table::Key, &k);
            // `create` fails if another node made one meanwhile: read that one.
            if self.keys.create(&name, wrapped.into()).await.is_ok() {
                self.remember(*user, k);
                return Ok(Some(k));
            }
        }
        Err("cannot create a user's checkpoint key".into())
    }

    fn new_key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut k);
        k
    }

    fn unwrap(&self, user: &UserKey, wrapped: &[u8]) -> Result<[u8; 32], String> {
        open_record(&self.kek, user, Table::Key, wrapped)
            .ok_or_else(|| {
                "a user's checkpoint key does not open (the cluster's pseudonym key differs?)"
                    .to_string()
            })?
            .try_into()
            .map_err(|_| "a user's checkpoint key has the wrong length".to_string())
    }

    /// Every user of partition `part` with a checkpoint key, by their images' tag.
    async fn users_of(
        &self,
        names: &names::Names,
        part: u32,
    ) -> Result<HashMap<String, (UserKey, [u8; 32])>, String> {
        let listing = |e: String| format!("listing partition {part}'s checkpoint keys: {e}");
        let filter = format!("$KV.{}.{part}.>", names.keys());
        let mut out = HashMap::new();
        for (subject, value) in all_messages(&self.keys_stream, filter, true)
            .await
            .map_err(listing)?
        {
            let Some(user) = crate::serve::user_of(&subject) else {
                continue;
            };
            if value.is_empty() {
                continue; // a deletion marker
            }
            let k = self.unwrap(&user, &value)?;
            out.insert(tag(&k), (user, k));
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        for (user, k) in out.values() {
            cache.insert(*user, *k);
        }
        drop(cache);
        self.listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(part);
        Ok(out)
    }

    fn cached(&self, user: &UserKey) -> Option<[u8; 32]> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .copied()
    }

    fn remember(&self, user: UserKey, k: [u8; 32]) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user, k);
    }

    /// Forgets the user's key on this node (an erasure told to every node).
    pub(crate) fn forget(&self, user: &UserKey) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
    }

    /// Erasure: the user's images go, then their key is shredded (secure delete): what is
    /// left of older images in block files opens for no one and names no one.
    pub(crate) async fn erase(
        &self,
        names: &names::Names,
        part: u32,
        user: &UserKey,
    ) -> Result<(), String> {
        if let Some(k) = self.key(part, user, false).await? {
            crate::shred(&self.stream, names.image(part, &tag(&k)))
                .await
                .map_err(|e| format!("deleting the user's checkpoint images: {e}"))?;
        }
        self.forget(user);
        let subject = format!("$KV.{}.{}", names.keys(), names::Names::key(part, user));
        crate::shred(&self.keys_stream, subject)
            .await
            .map_err(|e| format!("shredding the user's checkpoint key: {e}"))
    }

    /// The partition's mark, if it has one.
    async fn mark(&self, names: &names::Names, part: u32) -> Result<Option<Mark>, String> {
        match self
            .stream
            .get_last_raw_message_by_subject(&names.mark(part))
            .await
        {
            Ok(m) => serde_json::from_slice(&m.payload)
                .map(Some)
                .map_err(|e| format!("partition {part}'s checkpoint mark does not decode: {e}")),
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(format!("reading partition {part}'s checkpoint mark: {e}")),
        }
    }
}

/// The tag of a user's images: a hash keyed by their checkpoint key.
fn tag(key: &[u8; 32]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"trimtab/cluster-image-tag/v1");
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Every message of `stream` on `filter` (only the last per subject with `last`), as
/// (subject, payload).
pub(crate) async fn all_messages(
    stream: &jetstream::stream::Stream,
    filter: String,
    last: bool,
) -> Result<Vec<(String, bytes::Bytes)>, String> {
    use jetstream::consumer::DeliverPolicy;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: if last {
                DeliverPolicy::LastPerSubject
            } else {
                DeliverPolicy::All
            },
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| e.to_string())?
        .num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut msgs = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .map_err(|_| "timed out".to_string())?;
        let Some(Ok(m)) = m else {
            return Err("the listing ended early".into());
        };
        let left = m.info().map(|i| i.pending).unwrap_or(0);
        out.push((m.subject.to_string(), m.payload.clone()));
        if left == 0 {
            return Ok(out);
        }
    }
}

/// One checkpoint round of partition `part` (called by its reader between batches): images
/// of the due users, then the mark. `Err` leaves every user due.
pub(crate) async fn round(inner: &Inner, part: u32, progress: &Progress) -> Result<usize, String> {
    let _one = progress.lock.lock().await;
    let started = std::time::Instant::now();
    let read = progress.read.load(std::sync::atomic::Ordering::Relaxed);
    let users: Vec<UserKey> = progress
        .due
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .copied()
        .collect();
    let ck = &inner.ckpt;
    // One round at a time on this node: rounds are background work, and every publish holds
    // one of the client's bounded acknowledgement permits until its acknowledgement is read.
    let _turn = ck.turn.acquire().await.map_err(|e| e.to_string())?;
    let mut written = 0;
    for chunk in users.chunks(256) {
        let images = until_queued(|| inner.engine.pipeline.images(chunk))
            .await?
            .map_err(|e| e.to_string())?;
        // Keys for users checkpointed for the first time, made concurrently.
        let keys =
            futures_util::future::join_all(images.iter().map(|(u, _)| ck.key(part, u, true))).await;
        let mut acks = Vec::with_capacity(images.len());
        for ((user, image), key) in images.into_iter().zip(keys) {
            let key = key?.expect("created");
            let plain =
                postcard::to_allocvec(&Sealed { at: read, image }).map_err(|e| e.to_string())?;
            let sealed = seal_record(&key, &user, Table::Image, &plain);
            let ack = inner
                .js
                .publish(inner.names.image(part, &tag(&key)), sealed.into())
                .await
                .map_err(|e| format!("publishing a checkpoint image: {e}"))?;
            acks.push(ack);
            written += 1;
        }
        for a in acks {
            a.await
                .map_err(|e| format!("storing a checkpoint image: {e}"))?;
        }
    }
    // The statistics as the indexed store has them once everything read is in it.
    inner
        .engine
        .pipeline
        .sync()
        .await
        .map_err(|_| "the engine is stopping".to_string())?;
    let engine = inner.engine.clone();
    let stats = tokio::task::spawn_blocking(move || engine.partition_stats(part))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mark = Mark {
        read,
        node: inner.node.to_string(),
        at_ms: trimtab_util::now_ms(),
        users: written,
        stats,
    };
    inner
        .js
        .publish(
            inner.names.mark(part),
            serde_json::to_vec(&mark).expect("json").into(),
        )
        .await
        .map_err(|e| format!("publishing a checkpoint mark: {e}"))?
        .await
        .map_err(|e| format!("storing a checkpoint mark: {e}"))?;
    // Due once more after a change (a timer may still act), then not.
    let mut due = progress.due.lock().unwrap_or_else(|e| e.into_inner());
    for u in &users {
        if let Some(n) = due.get_mut(u) {
            *n = n.saturating_sub(1);
        }
    }
    due.retain(|_, n| *n > 0);
    inner.metrics.checkpoints.inc();
    inner.metrics.checkpoint_images.inc_by(written as u64);
    tracing::debug!(
        partition = part,
        images = written,
        ms = started.elapsed().as_millis() as u64,
        "cluster: checkpoint round stored"
    );
    Ok(written)
}

/// Takes over partition `part` from its last checkpoint: returns the stream sequence to read
/// after (0: there is no checkpoint), or `None` when the checkpoint cannot be used: then
/// every user of the partition has been reset here, to be read again from the start.
pub(crate) async fn restore(
    inner: &Inner,
    part: u32,
    progress: &Progress,
) -> Result<Option<u64>, String> {
    let _one = progress.lock.lock().await;
    let ck = &inner.ckpt;
    // One restore or round at a time: a node taking many partitions at once takes them one
    // after the other, with its ownership rounds and reads still running.
    let _turn = ck.turn.acquire().await.map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    // Every user of the partition with a checkpoint key (all cached: a round then makes keys
    // without asking first), by their images' tag.
    let users = match ck.users_of(&inner.names, part).await {
        Ok(u) => Ok(u),
        Err(e) if e.starts_with("a user's checkpoint key") => Err(e),
        Err(e) => return Err(e),
    };
    let mark = match ck.mark(&inner.names, part).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(Some(0)),
        Err(e) if e.contains("does not decode") => {
            tracing::error!(partition = part, error = %e, "cluster: the checkpoint cannot be used; reading the partition from the start instead");
            reset(inner, part).await?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    // Every image of the partition (both kept per user): per user the newest the mark
    // covers. An image whose tag no key gives is of a user erased since.
    let users = match users {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(partition = part, error = %e, "cluster: the checkpoint cannot be used; reading the partition from the start instead");
            reset(inner, part).await?;
            return Ok(None);
        }
    };
    let images = all_messages(&ck.stream, inner.names.images(part), false)
        .await
        .map_err(|e| format!("listing partition {part}'s checkpoint images: {e}"))?;
    let mut chosen: HashMap<UserKey, (u64, UserImage)> = HashMap::new();
    let mut undecodable = 0usize;
    for (subject, payload) in images {
        let Some((user, key)) = subject.rsplit('.').next().and_then(|t| users.get(t)) else {
            continue;
        };
        let sealed = open_record(key, user, Table::Image, &payload)
            .and_then(|p| postcard::from_bytes::<Sealed>(&p).ok());
        match sealed {
            Some(s) if s.at <= mark.read => {
                if chosen.get(user).is_none_or(|(at, _)| s.at >= *at) {
                    chosen.insert(*user, (s.at, s.image));
                }
            }
            Some(_) => {} // from a round whose mark never came
            None => undecodable += 1,
        }
    }
    if undecodable > 0 {
        tracing::error!(partition = part, images = undecodable, "cluster: checkpoint images that do not open; reading the partition from the start instead");
        reset(inner, part).await?;
        return Ok(None);
    }
    let listed_ms = started.elapsed().as_millis() as u64;
    // Replace what this node holds of each user, then the statistics.
    put_back(inner, &chosen).await?;
    set_stats(inner, part, &mark.stats).await?;
    tracing::info!(partition = part, users = chosen.len(), from = mark.read, by = %mark.node, listed_ms, ms = started.elapsed().as_millis() as u64, "cluster: partition restored from its checkpoint");
    inner.metrics.restored.inc_by(chosen.len() as u64);
    Ok(Some(mark.read))
}

/// Restores every user of partition `part` (every user subject in the events stream) as a
/// new user, so that reading the partition from the start counts each event once even where
/// an earlier ownership here had restored a checkpoint.
async fn reset(inner: &Inner, part: u32) -> Result<(), String> {
    let mut subjects = inner
        .stream
        .info_with_subjects(inner.names.partition(part))
        .await
        .map_err(|e| format!("listing partition {part}'s users: {e}"))?;
    let mut users = Vec::new();
    while let Some(s) = subjects.next().await {
        let (subject, _) = s.map_err(|e| format!("listing partition {part}'s users: {e}"))?;
        users.extend(crate::serve::user_of(&subject));
    }
    let blank: HashMap<UserKey, (u64, UserImage)> = users
        .into_iter()
        .map(|u| (u, (0, UserImage::default())))
        .collect();
    put_back(inner, &blank).await?;
    set_stats(inner, part, &[]).await
}

/// Replaces what this node holds of each user with their image.
async fn put_back(
    inner: &Inner,
    images: &HashMap<UserKey, (u64, UserImage)>,
) -> Result<(), String> {
    let pipeline = &inner.engine.pipeline;
    let mut waits = Vec::with_capacity(images.len());
    for (user, (_, image)) in images {
        waits.push(
            until_queued(|| std::future::ready(pipeline.restore(*user, image.clone()))).await?,
        );
    }
    for w in waits {
        w.await
            .map_err(|_| "the engine is stopping".to_string())?
            .map_err(|e| format!("restoring a user: {e}"))?;
    }
    Ok(())
}

/// Sets this node's statistics of partition `part` to `target` (what an earlier ownership
/// left here is replaced).
async fn set_stats(inner: &Inner, part: u32, target: &[(String, StatRow)]) -> Result<(), String> {
    let pipeline = &inner.engine.pipeline;
    pipeline
        .sync()
        .await
        .map_err(|_| "the engine is stopping".to_string())?;
    let engine = inner.engine.clone();
    let local = tokio::task::spawn_blocking(move || engine.partition_stats(part))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    type Key = (String, String, String, String);
    let mut delta: HashMap<Key, [f64; 6]> = HashMap::new();
    for (g, ((s, a, m), v)) in target {
        let d = delta
            .entry((g.clone(), s.clone(), a.clone(), m.clone()))
            .or_default();
        for i in 0..6 {
            d[i] += v[i];
        }
    }
    for (g, ((s, a, m), v)) in local {
        let d = delta.entry((g, s, a, m)).or_default();
        for i in 0..6 {
            d[i] -= v[i];
        }
    }
    delta.retain(|_, d| d.iter().any(|x| *x != 0.0));
    if delta.is_empty() {
        return Ok(());
    }
    let deltas: Vec<_> = delta.into_iter().collect();
    until_queued(|| std::future::ready(pipeline.add_stats(deltas.clone())))
        .await?
        .await
        .map_err(|_| "the engine is stopping".to_string())?
        .map_err(|e| format!("restoring the partition's statistics: {e}"))
}

/// Submits to the engine until a shard queue takes it: background work (checkpoint rounds,
/// restores) waits out `overloaded` instead of failing, 20 ms at a time.
async fn until_queued<T, F, Fut>(mut submit: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SubmitError>>,
{
    loop {
        match submit().await {
            Ok(t) => return Ok(t),
            Err(SubmitError::Overloaded) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(SubmitError::ShuttingDown) => return Err("the engine is stopping".into()),
        }
    }
}
