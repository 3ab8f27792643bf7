//! Partition ownership: leases in a JetStream KV bucket whose entries expire after
//! `lease_ms`. Every third of a lease a node says it is alive (the nodes bucket), renews its
//! leases (a compare-and-set on the revision it holds: a lease that changed hands is lost at
//! once), takes free partitions up to its share (⌈partitions / live nodes⌉, in its own order
//! of preference), takes a partition beyond its share only if it stayed free for a whole
//! round, and gives back partitions beyond its share when nodes join, after it stopped
//! reading them.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinHandle;

use crate::names::{lease_key, preference};
use crate::Inner;

/// A partition this node owns.
pub(crate) struct Owned {
    /// The lease's revision in the bucket (renewals compare it).
    pub revision: u64,
    /// How far the partition's events are in the engine.
    pub read: Arc<crate::serve::Progress>,
    stop: tokio::sync::watch::Sender<bool>,
    reader: JoinHandle<()>,
    requests: JoinHandle<()>,
}

/// Renews every lease held, concurrently; a partition whose lease changed hands (or expired)
/// stops at once.
async fn renew(inner: &Arc<Inner>) {
    let mine: Vec<(u32, u64)> = owned(inner);
    let renewals = futures_util::future::join_all(mine.iter().map(|(p, rev)| {
        inner
            .leases
            .update(lease_key(*p), inner.node.to_string().into(), *rev)
    }))
    .await;
    for ((p, _), r) in mine.into_iter().zip(renewals) {
        match r {
            Ok(r) => {
                if let Some(o) = inner
                    .parts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&p)
                {
                    o.revision = r;
                }
            }
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "cluster: lease lost");
                stop_reading(inner, p).await;
            }
        }
    }
}

/// The ownership loop, until the node stops.
pub(crate) async fn run(inner: Arc<Inner>) {
    let tick = Duration::from_millis((inner.cfg.lease_ms / 3).max(100));
    let mut free_before: HashSet<u32> = HashSet::new();
    while !inner.stopping.load(Ordering::Relaxed) {
        if let Err(e) = round(&inner, &mut free_before).await {
            tracing::warn!(error = %e, "cluster: ownership round failed; retrying");
        }
        inner.rounds.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(tick).await;
    }
}

async fn round(inner: &Arc<Inner>, free_before: &mut HashSet<u32>) -> Result<(), String> {
    // Leases first, all at once: a node busy taking partitions over must not lose the ones it
    // has to a round slowed by the rest.
    renew(inner).await;
    // Alive, with the partitions held (for every node's view of who owns what).
    let held = inner.partitions();
    let me = serde_json::to_vec(&serde_json::json!({ "partitions": held })).expect("json");
    inner
        .nodes
        .put(&*inner.node, me.into())
        .await
        .map_err(|e| format!("saying this node is alive: {e}"))?;
    let mut live = keys(&inner.nodes).await?;
    if !live.iter().any(|n| *n == *inner.node) {
        live.push(inner.node.to_string());
    }
    live.sort();
    live.dedup();
    let n_live = live.len().max(1) as u32;
    let mut owners = std::collections::BTreeMap::new();
    for n in &live {
        let parts = match inner.nodes.get(n.as_str()).await {
            Ok(Some(v)) => serde_json::from_slice::<serde_json::Value>(&v)
                .ok()
                .and_then(|v| serde_json::from_value::<Vec<u32>>(v["partitions"].clone()).ok())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        owners.insert(n.clone(), parts);
    }
    *inner.owners.lock().unwrap_or_else(|e| e.into_inner()) = owners;
    *inner.live.lock().unwrap_or_else(|e| e.into_inner()) = live;

    let total = inner.cfg.partitions;
    let share = total.div_ceil(n_live) as usize;
    let taken: HashSet<u32> = keys(&inner.leases)
        .await?
        .iter()
        .filter_map(|k| k.strip_prefix('p')?.parse().ok())
        .collect();
    let mut free: Vec<u32> = (0..total).filter(|p| !taken.contains(p)).collect();
    free.sort_by_key(|p| std::cmp::Reverse(preference(&inner.node, *p)));
    let mut still_free = HashSet::new();
    for p in free {
        let below_share = owned(inner).len() < share;
        if below_share || free_before.contains(&p) {
            match inner
                .leases
                .create(lease_key(p), inner.node.to_string().into())
                .await
            {
                Ok(rev) => take(inner, p, rev).await,
                Err(_) => continue, // another node was quicker
            }
        } else {
            still_free.insert(p);
        }
    }
    *free_before = still_free;

    // Give back what is beyond the share (nodes joined), least preferred first.
    let mut mine = inner.partitions();
    if mine.len() > share && n_live > 1 {
        mine.sort_by_key(|p| preference(&inner.node, *p));
        let extra = mine.len() - share;
        for p in mine.into_iter().take(extra) {
            release(inner, p).await;
        }
    }
    inner.metrics.owned.set(owned(inner).len() as i64);
    Ok(())
}

fn owned(inner: &Inner) -> Vec<(u32, u64)> {
    inner
        .parts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(p, o)| (*p, o.revision))
        .collect()
}

/// The keys of a bucket (empty when it has none).
async fn keys(kv: &async_nats::jetstream::kv::Store) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut ks = kv
        .keys()
        .await
        .map_err(|e| format!("listing a bucket: {e}"))?;
    while let Some(k) = ks.next().await {
        out.push(k.map_err(|e| format!("listing a bucket: {e}"))?);
    }
    Ok(out)
}

/// Starts owning `p`: read its events from the start of the stream, answer its requests.
async fn take(inner: &Arc<Inner>, p: u32, revision: u64) {
    let read = Arc::new(crate::serve::Progress::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let requests = match inner.client.subscribe(inner.names.rpc(p)).await {
        Ok(sub) => tokio::spawn(crate::serve::requests(inner.clone(), p, read.clone(), sub)),
        Err(e) => {
            tracing::warn!(partition = p, error = %e, "cluster: cannot serve a partition's requests; giving it back");
            let _ = inner.leases.delete(lease_key(p)).await;
            return;
        }
    };
    let reader = tokio::spawn(crate::serve::read(inner.clone(), p, read.clone(), stopped));
    tracing::info!(partition = p, "cluster: partition taken");
    inner
        .parts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            p,
            Owned {
                revision,
                read,
                stop,
                reader,
                requests,
            },
        );
}

/// Stops reading `p` and answering for it (what was read is in the engine).
async fn stop_reading(inner: &Inner, p: u32) -> bool {
    let o = inner
        .parts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&p);
    let Some(o) = o else { return false };
    let _ = inner.metrics.read.remove_label_values(&[&p.to_string()]);
    o.requests.abort();
    let _ = o.stop.send(true);
    let _ = o.reader.await;
    true
}

/// Gives `p` back: stop reading it, then delete the lease so another node takes it at once.
pub(crate) async fn release(inner: &Inner, p: u32) {
    if stop_reading(inner, p).await {
        let _ = inner.leases.delete(lease_key(p)).await;
        tracing::info!(partition = p, "cluster: partition given back");
    }
}
