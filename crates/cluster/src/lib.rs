//! Cluster mode: several trimtab nodes share the users through NATS JetStream, an existing
//! distributed engine (no home-made consensus). Without `[cluster] nats` none of this runs.
//!
//! ```text
//!  client ─▶ any node ── publish, Nats-Msg-Id = event id ─▶ stream <prefix>_events
//!            (admission as alone;                           subject <prefix>.ev.<part>.<user>
//!             ack after JetStream's)                              │ in order, per partition
//!                                                                 ▼
//!  sockets ◀─ <prefix>.push.<node> ◀── adjustments ── the partition's owner (a lease in KV):
//!                                                     its own engine — state, rules, decisions
//! ```
//! - **Log** ([`Cluster::publish`]): the accepting node admits events as a lone node does,
//!   publishes each to its user's subject in its partition with `Nats-Msg-Id` = the event id's
//!   hash (JetStream's de-duplication), and acknowledges the client only after every
//!   publish acknowledgement.
//! - **Ownership** ([`owner`]): each partition is leased to one live node in a KV bucket
//!   whose entries expire after `lease_ms`; a node renews its leases, takes free partitions up
//!   to its share, and gives back partitions beyond it when nodes join. A node that stops
//!   renewing loses its partitions to the others.
//! - **Serving a partition** ([`serve`]): the owner reads the partition's events, in order,
//!   into its own engine — from after its last checkpoint, or from the start of the stream
//!   (the engine's de-duplication skips what it has already; events older than
//!   `quiet_after_ms` update state without pushing to pages) — and answers the partition's
//!   requests (export, erase, decide) once it has read everything stored for that user.
//! - **Checkpoints** ([`ckpt`]): every `checkpoint_ms` the owner stores sealed images of the
//!   users that changed and then the partition's mark, so a new owner resumes from there.
//! - **Delivery**: adjustments go to the nodes that sent the user's events, on each node's
//!   own subject; each node pushes them to its sockets.
//! - **Erasure**: the owner erases the user, the user's subject is purged from the stream,
//!   their checkpoint images deleted and their checkpoint key shredded, and every node erases
//!   what it still holds of the user from an earlier ownership.
//! - **Definitions** ([`defs`]): rules, experiments, bandit slots and click models, shared.

mod ckpt;
mod defs;
mod learn;
pub mod names;
mod owner;
mod serve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytestring::ByteString;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use tokio::runtime::Runtime;

use trimtab_engine::config::ClusterConfig;
use trimtab_engine::pipeline::{Decision, IngestOutcome, UserExport};
use trimtab_engine::Engine;
use trimtab_privacy::UserKey;
use trimtab_wire::Event;

pub use defs::DefKind;
use names::Names;

/// How long leaving the cluster may take before the node stops without NATS's answer.
const LEAVE_WITHIN: Duration = Duration::from_secs(5);

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// NATS or the partition's owner cannot be reached now: retry (HTTP 503).
    #[error("{0}")]
    Unavailable(String),
    /// The owner's queues are full: retry later (HTTP 429).
    #[error("the node owning this user is busy")]
    Overloaded,
}

/// A failure the owner reports to the requester.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Fail {
    overloaded: bool,
    message: String,
}

/// A request to a partition's owner.
#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Export,
    Erase,
    Decide {
        slot: String,
        candidates: Vec<String>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Request {
    user: UserKey,
    op: Op,
}

/// A node's view of the cluster, for `/readyz` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub node: String,
    pub connected: bool,
    /// Live nodes (this one included), as the nodes bucket lists them.
    pub nodes: Vec<String>,
    /// The partitions this node owns, with the stream sequence read into the engine.
    pub partitions: Vec<PartitionStatus>,
    pub partition_count: u32,
    /// Every live node's partitions, as each said in its last round (may lag a round).
    pub owners: std::collections::BTreeMap<String, Vec<u32>>,
}

/// An owned partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    /// The last stream sequence of the partition that is in this node's engine.
    pub read: u64,
}

/// The cluster's metrics (registered with the engine's, on `/metrics`).
struct Metrics {
    owned: prometheus::IntGauge,
    consumed: prometheus::IntCounterVec,
    /// The stream sequence up to which each owned partition is in the engine.
    read: prometheus::IntGaugeVec,
    published: prometheus::IntCounter,
    forwarded: prometheus::IntCounter,
    checkpoints: prometheus::IntCounter,
    checkpoint_images: prometheus::IntCounter,
    restored: prometheus::IntCounter,
}

impl Metrics {
    fn new(engine: &Engine) -> Metrics {
        let ok = "valid metric";
        let m = Metrics {
            owned: prometheus::IntGauge::new(
                "trimtab_cluster_partitions_owned",
                "Partitions this node owns",
            )
            .expect(ok),
            consumed: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "trimtab_cluster_consumed_total",
                    "Events read from the stream into this node's engine, by partition",
                ),
                &["partition"],
            )
            .expect(ok),
            read: prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "trimtab_cluster_read_sequence",
                    "The stream sequence up to which a partition this node owns is in its engine",
                ),
                &["partition"],
            )
            .expect(ok),
            published: prometheus::IntCounter::new(
                "trimtab_cluster_published_total",
                "Events this node published to the stream (acknowledged by JetStream)",
            )
            .expect(ok),
            forwarded: prometheus::IntCounter::new(
                "trimtab_cluster_forwarded_total",
                "Frames sent on to other nodes' sockets",
            )
            .expect(ok),
            checkpoints: prometheus::IntCounter::new(
                "trimtab_cluster_checkpoints_total",
                "Checkpoint rounds of owned partitions stored in NATS (images, then the mark)",
            )
            .expect(ok),
            checkpoint_images: prometheus::IntCounter::new(
                "trimtab_cluster_checkpoint_images_total",
                "Users' sealed images written by checkpoint rounds",
            )
            .expect(ok),
            restored: prometheus::IntCounter::new(
                "trimtab_cluster_restored_users_total",
                "Users restored from a checkpoint when this node took over their partition",
            )
            .expect(ok),
        };
        for c in [
            Box::new(m.owned.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.consumed.clone()),
            Box::new(m.read.clone()),
            Box::new(m.published.clone()),
            Box::new(m.forwarded.clone()),
            Box::new(m.checkpoints.clone()),
            Box::new(m.checkpoint_images.clone()),
            Box::new(m.restored.clone()),
        ] {
            let _ = engine.metrics.register(c);
        }
        m
    }
}

/// Which nodes hold sockets of a user: the nodes that sent their latest events, at most two
/// per user (a user's tabs are rarely on more), bounded in users.
#[derive(Default)]
struct Origins {
    map: HashMap<UserKey, [Option<Arc<str>>; 2]>,
}

/// At most this many users' origins are remembered; past it the table starts over (a user's
/// next event tells it again).
const MAX_ORIGINS: usize = 500_000;

impl Origins {
    /// `node` sent the user's latest event (a name is allocated only when it changes).
    fn note(&mut self, user: UserKey, node: &str) {
        if self.map.len() >= MAX_ORIGINS && !self.map.contains_key(&user) {
            self.map.clear();
        }
        let e = self.map.entry(user).or_default();
        if e[0].as_deref() != Some(node) {
            e[1] = e[0].take();
            e[0] = Some(node.into());
        }
    }
}

pub(crate) struct Inner {
    cfg: ClusterConfig,
    names: Names,
    node: Arc<str>,
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    leases: kv::Store,
    nodes: kv::Store,
    /// Shared definitions (see [`defs`]).
    defs: kv::Store,
    /// Checkpoints of owned partitions (see [`ckpt`]).
    ckpt: ckpt::Checkpoints,
    /// This process, among the puts of shared definitions (it skips its own).
    instance: String,
    engine: Arc<Engine>,
    /// The partitions this node owns.
    parts: Mutex<HashMap<u32, owner::Owned>>,
    origins: Mutex<Origins>,
    metrics: Metrics,
    /// Frames for other nodes, from the engine's threads to the publishing task.
    forward_tx: tokio::sync::mpsc::UnboundedSender<(String, bytes::Bytes)>,
    live: Mutex<Vec<String>>,
    /// Each live node's partitions, as each last said (the dashboard's map).
    owners: Mutex<std::collections::BTreeMap<String, Vec<u32>>>,
    stopping: AtomicBool,
    rounds: AtomicUsize,
}

/// A running cluster node: its NATS connection and the tasks that own partitions, on a
/// runtime of its own.
pub struct Cluster {
    inner: Arc<Inner>,
    rt: Mutex<Option<Runtime>>,
}

/// What a node derives from the cluster's shared secrets.
pub struct Secrets {
    /// An HMAC keyed by the pseudonym key over the other three, so that nodes can compare
    /// secrets through NATS without NATS learning any of them.
    pub fingerprint: String,
    /// Wraps the users' checkpoint keys (see [`ckpt`]): derived from the pseudonym key, so
    /// every node has it and NATS does not.
    kek: [u8; 32],
}

impl Secrets {
    pub fn derive(
        pseudonym_key: &[u8],
        admin_token: &str,
        write_key: &str,
        token_key: &[u8],
    ) -> Secrets {
        let keyed =
            <Hmac<sha2::Sha256> as Mac>::new_from_slice(pseudonym_key).expect("HMAC takes any key");
        let mut mac = keyed.clone();
        mac.update(b"trimtab/cluster-secrets/v1");
        for part in [admin_token.as_bytes(), write_key.as_bytes(), token_key] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part);
        }
        let fingerprint = hex::encode(mac.finalize().into_bytes());
        let mut mac = keyed;
        mac.update(b"trimtab/cluster-checkpoint-kek/v1");
        Secrets {
            fingerprint,
            kek: mac.finalize().into_bytes().into(),
        }
    }
}

fn unavailable(what: &str) -> impl Fn(async_nats::Error) -> ClusterError + '_ {
    move |e| ClusterError::Unavailable(format!("{what}: {e}"))
}

impl Cluster {
    /// Connects to NATS, creates (or opens) the stream and buckets, checks that this node's
    /// secrets are the cluster's, and starts taking partitions. Fails with a message naming
    /// what is wrong (NATS unreachable, other secrets, JetStream off).
    pub fn start(engine: Arc<Engine>, secrets: Secrets) -> Result<Arc<Cluster>, String> {
        let cfg = engine.cfg.cluster.clone();
        let url = cfg.nats.clone().ok_or("cluster.nats is not set")?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("trimtab-cluster")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the cluster's runtime: {e}"))?;
        let (forward_tx, forward_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = rt.block_on(async {
            let connect = |name: String| async {
                let client = async_nats::ConnectOptions::new()
                    .name(name)
                    .retry_on_initial_connect()
                    .connection_timeout(Duration::from_secs(5))
                    .connect(url.as_str());
                tokio::time::timeout(Duration::from_secs(15), client)
                    .await
                    .map_err(|_| format!("cannot reach NATS at {url} (cluster.nats) within 15 s"))?
                    .map_err(|e| format!("cannot connect to NATS at {url} (cluster.nats): {e}"))
            };
            let client = connect(format!("trimtab-{}", cfg.node)).await?;
            // Leases and liveness on a connection of their own: a node reading partitions
            // from the stream at full speed must not delay its renewals behind that data.
            let control = connect(format!("trimtab-{}-control", cfg.node)).await?;
            let control_js = jetstream::new(control);
            // Room for the acknowledgements of many batches in flight at once (each publish
            // holds a permit until its acknowledgement is read; the client's default is 5 000).
            let js = jetstream::ContextBuilder::new()
                .max_ack_inflight(65_536)
                .build(client.clone());
            let names = Names::new(&cfg.prefix);
            let retention = engine.cfg.retention.max_age().unwrap_or_default();
            let stream = js
                .get_or_create_stream(jetstream::stream::Config {
                    name: names.stream(),
                    subjects: vec![names.events_all()],
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: cfg.replicas,
                    max_age: retention,
                    duplicate_window: Duration::from_secs(120),
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    format!("cannot open the events stream on NATS at {url} (is JetStream on? nats-server -js): {e}")
                })?;
            let lease = Duration::from_millis(cfg.lease_ms);
            // On disk, all of them: a restarted NATS server keeps the leases (their owners
            // carry on) and the shared definitions.
            let leases = bucket(&control_js, &names.leases(), lease, cfg.replicas, true).await?;
            let nodes = bucket(&control_js, &names.nodes(), lease, cfg.replicas, true).await?;
            let meta = bucket(&js, &names.meta(), Duration::ZERO, cfg.replicas, true).await?;
            let defs = bucket(&js, &names.defs(), Duration::ZERO, cfg.replicas, true).await?;
            check_secrets(&meta, &secrets.fingerprint).await?;
            let ckpt =
                ckpt::Checkpoints::open(&js, &names, cfg.replicas, secrets.kek).await?;
            check_partitions(&meta, cfg.partitions).await?;
            Ok::<_, String>(Arc::new(Inner {
                node: cfg.node.as_str().into(),
                names,
                client,
                js,
                stream,
                leases,
                nodes,
                defs,
                ckpt,
                instance: format!(
                    "{}-{}-{}",
                    cfg.node,
                    std::process::id(),
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                ),
                metrics: Metrics::new(&engine),
                engine: engine.clone(),
                parts: Mutex::new(HashMap::new()),
                origins: Mutex::new(Origins::default()),
                forward_tx,
                live: Mutex::new(Vec::new()),
                owners: Mutex::new(Default::default()),
                stopping: AtomicBool::new(false),
                rounds: AtomicUsize::new(0),
                cfg,
            }))
        })?;
        // Adjustments for sockets on other nodes leave through the forwarding task.
        let fwd = inner.clone();
        engine
            .hub
            .set_forward(Box::new(move |user, frame| fwd.forward(user, frame)));
        rt.spawn(forward_loop(inner.clone(), forward_rx));
        learn::start(&rt, &inner)?;
        let sub = inner.clone();
        rt.block_on(async move {
            let pushes = sub
                .client
                .subscribe(sub.names.push(&sub.node))
                .await
                .map_err(|e| format!("cannot subscribe to this node's deliveries: {e}"))?;
            let erasures = sub
                .client
                .subscribe(sub.names.erase())
                .await
                .map_err(|e| format!("cannot subscribe to erasures: {e}"))?;
            tokio::spawn(push_loop(sub.clone(), pushes));
            tokio::spawn(erase_loop(sub.clone(), erasures));
            let stats = sub
                .client
                .subscribe(sub.names.stats())
                .await
                .map_err(|e| format!("cannot subscribe to statistics requests: {e}"))?;
            tokio::spawn(stats_loop(sub.clone(), stats));
            Ok::<_, String>(())
        })?;
        rt.spawn(owner::run(inner.clone()));
        rt.spawn(defs::follow(inner.clone()));
        let (models_tx, models_rx) = tokio::sync::mpsc::unbounded_channel();
        rt.spawn(defs::share_models(inner.clone(), models_rx));
        engine
            .models
            .set_share(Arc::new(move |name: &str, version: u32| {
                let _ = models_tx.send((name.to_string(), version));
            }));
        tracing::info!(node = %inner.node, partitions = inner.cfg.partitions, "cluster: joined");
        Ok(Arc::new(Cluster {
            inner,
            rt: Mutex::new(Some(rt)),
        }))
    }

    /// Publishes each user's events to the stream (in order) and waits for JetStream's
    /// acknowledgements: the batch is durable in the cluster once this returns `Ok`.
    /// A duplicate is an event whose id JetStream or the owner saw before.
    pub async fn publish(
        &self,
        groups: &[(UserKey, Vec<Event>)],
    ) -> Result<IngestOutcome, ClusterError> {
        self.send(groups).await?.wait().await
    }

    /// The first half of [`Cluster::publish`]: queues every event to the stream, in order
    /// (a later `send` is ordered after this one), without waiting for the acknowledgements.
    pub async fn send(&self, groups: &[(UserKey, Vec<Event>)]) -> Result<Published, ClusterError> {
        let inner = &self.inner;
        let mut acks = Vec::new();
        for (user, events) in groups {
            let part = names::partition(user, inner.cfg.partitions);
            let subject = inner.names.events(part, user);
            for ev in events {
                let id = hex::encode(inner.engine.pseudo.event_id(user, &ev.id));
                let payload = postcard::to_allocvec(ev).expect("Event is postcard-serialisable");
                let msg = jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(id)
                    .header("Trimtab-Node", &*inner.node);
                let ack = inner
                    .js
                    .send_publish(subject.clone(), msg)
                    .await
                    .map_err(|e| unavailable("publishing to the stream")(e.into()))?;
                acks.push(ack);
            }
        }
        Ok(Published {
            acks,
            metrics: inner.metrics.published.clone(),
        })
    }
}

/// Events queued to the stream, waiting for JetStream's acknowledgements.
pub struct Published {
    acks: Vec<jetstream::context::PublishAckFuture>,
    metrics: prometheus::IntCounter,
}

impl Published {
    /// Waits for every acknowledgement: the events are durable in the stream once `Ok`.
    pub async fn wait(self) -> Result<IngestOutcome, ClusterError> {
        let mut out = IngestOutcome::default();
        for a in self.acks {
            let ack = a
                .await
                .map_err(|e| unavailable("waiting for the stream's acknowledgement")(e.into()))?;
            if ack.duplicate {
                out.duplicates += 1;
            } else {
                out.accepted += 1;
            }
        }
        self.metrics.inc_by(out.accepted as u64);
        Ok(out)
    }
}

impl Cluster {
    /// The user's data from the node that owns them.
    pub async fn export(&self, user: UserKey) -> Result<Option<UserExport>, ClusterError> {
        self.inner.request(user, Op::Export).await
    }

    /// A decision for a slot, from the node that owns the user.
    pub async fn decide(
        &self,
        user: UserKey,
        slot: String,
        candidates: Vec<String>,
    ) -> Result<Decision, ClusterError> {
        self.inner
            .request(user, Op::Decide { slot, candidates })
            .await
    }

    /// Erases the user everywhere: on the owner, in the stream, and on every other node.
    /// Returns the owner's counts.
    pub async fn erase(
        &self,
        user: UserKey,
    ) -> Result<trimtab_engine::pipeline::EraseCounts, ClusterError> {
        let inner = &self.inner;
        let counts = inner.request(user, Op::Erase).await?;
        inner.erase_from_stream(user).await?;
        let part = names::partition(&user, inner.cfg.partitions);
        inner
            .ckpt
            .erase(&inner.names, part, &user)
            .await
            .map_err(ClusterError::Unavailable)?;
        inner.erase_everywhere(user).await?;
        Ok(counts)
    }

    /// Shares a definition this node installed (or deleted: `body` None) with every node.
    pub async fn share(
        &self,
        kind: DefKind,
        name: &str,
        body: Option<&str>,
    ) -> Result<(), ClusterError> {
        defs::share(&self.inner, kind, name, body).await
    }

    /// An experiment's sufficient statistics over the cluster: every node answers with its
    /// sums for the partitions it owns (their owner has counted all of their events), and
    /// they are added up. Also returns how many of the partitions were counted (fewer while a
    /// partition changes hands).
    pub async fn experiment_rows(
        &self,
        id: &str,
    ) -> Result<(Vec<trimtab_engine::pipeline::StatRow>, usize), ClusterError> {
        let inner = &self.inner;
        let answers = inner
            .ask_everyone(inner.names.stats(), id.to_string().into())
            .await?;
        let mut sums = Vec::new();
        let mut counted = std::collections::BTreeSet::new();
        for a in answers {
            let Ok(part) = serde_json::from_slice::<StatsAnswer>(&a) else {
                continue;
            };
            // A partition counted twice (it moved between two answers) is taken once.
            if part.partitions.iter().any(|p| counted.contains(p)) {
                continue;
            }
            counted.extend(part.partitions);
            for (k, v) in part.rows {
                trimtab_engine::service::add_row(&mut sums, k, v);
            }
        }
        Ok((sums, counted.len()))
    }

    /// This node's view, for `/readyz`.
    pub fn status(&self) -> Status {
        let inner = &self.inner;
        let mut partitions: Vec<PartitionStatus> = inner
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(p, o)| PartitionStatus {
                partition: *p,
                read: o.read.read.load(Ordering::Relaxed),
            })
            .collect();
        partitions.sort_unstable_by_key(|p| p.partition);
        Status {
            node: inner.node.to_string(),
            connected: inner.client.connection_state() == async_nats::connection::State::Connected,
            nodes: inner.live.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            partitions,
            partition_count: inner.cfg.partitions,
            owners: inner
                .owners
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Whether the node has joined: connected, and its first ownership round done.
    pub fn ready(&self) -> bool {
        self.inner.rounds.load(Ordering::Relaxed) > 0
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Leaves the cluster: stops reading the partitions (what was read is in the engine),
    /// gives the leases back so other nodes take over at once, and closes the connection.
    /// Call before stopping the engine.
    ///
    /// Bounded by [`LEAVE_WITHIN`]: with the NATS server unreachable the leases cannot be
    /// given back (they expire after `lease_ms` on their own) and a reader waiting on it is
    /// dropped — the stream keeps every event it had not read.
    pub fn stop(&self) {
        let Some(rt) = self.rt.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let inner = self.inner.clone();
        let left = rt.block_on(async move {
            inner.stopping.store(true, Ordering::Relaxed);
            tokio::time::timeout(LEAVE_WITHIN, async {
                let parts = inner.partitions();
                futures_util::future::join_all(parts.iter().map(|p| owner::release(&inner, *p)))
                    .await;
                let _ = inner.nodes.delete(&*inner.node).await;
                let _ = inner.client.flush().await;
            })
            .await
            .is_ok()
        });
        rt.shutdown_timeout(Duration::from_secs(2));
        if left {
            tracing::info!("cluster: left");
        } else {
            tracing::warn!(
                within_ms = LEAVE_WITHIN.as_millis() as u64,
                "cluster: left without giving the leases back (NATS did not answer); they expire after lease_ms"
            );
        }
    }
}

impl Inner {
    /// Sends a request to the owner of `user`'s partition and decodes its answer. While the
    /// partition has no owner (a node died and its lease has not expired yet), it retries
    /// for up to twice the lease.
    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        user: UserKey,
        op: Op,
    ) -> Result<T, ClusterError> {
        let part = names::partition(&user, self.cfg.partitions);
        let body = serde_json::to_vec(&Request { user, op }).expect("serialisable");
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.cfg.lease_ms * 2)
            + Duration::from_secs(5);
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(30),
                self.client
                    .request(self.names.rpc(part), body.clone().into()),
            )
            .await;
            let retry = match r {
                Ok(Ok(msg)) => {
                    let answer: Result<serde_json::Value, Fail> =
                        serde_json::from_slice(&msg.payload).map_err(|e| {
                            ClusterError::Unavailable(format!("the owner's answer: {e}"))
                        })?;
                    return match answer {
                        Ok(v) => serde_json::from_value(v).map_err(|e| {
                            ClusterError::Unavailable(format!("the owner's answer: {e}"))
                        }),
                        Err(f) if f.overloaded => Err(ClusterError::Overloaded),
                        Err(f) => Err(ClusterError::Unavailable(f.message)),
                    };
                }
                Ok(Err(e)) => matches!(e.kind(), async_nats::RequestErrorKind::NoResponders)
                    .then(|| format!("partition {part} has no owner now"))
                    .ok_or_else(|| {
                        ClusterError::Unavailable(format!("asking partition {part}'s owner: {e}"))
                    })?,
                Err(_) => format!("partition {part}'s owner did not answer within 30 s"),
            };
            if tokio::time::Instant::now() > deadline {
                return Err(ClusterError::Unavailable(retry));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Deletes every message of the user's subject from the stream (see [`shred`]).
    async fn erase_from_stream(&self, user: UserKey) -> Result<(), ClusterError> {
        let part = names::partition(&user, self.cfg.partitions);
        shred(&self.stream, self.names.events(part, &user))
            .await
            .map_err(|e| ClusterError::Unavailable(format!("erasing the user's events: {e}")))
    }

    /// Tells every node to erase what it holds of `user`; waits for the live nodes' answers
    /// (or 5 s).
    async fn erase_everywhere(&self, user: UserKey) -> Result<(), ClusterError> {
        self.ask_everyone(self.names.erase(), user.hex().into())
            .await
            .map(|_| ())
    }

    /// Publishes a request every node answers; collects the live nodes' answers (at most 5 s).
    async fn ask_everyone(
        &self,
        subject: String,
        payload: bytes::Bytes,
    ) -> Result<Vec<bytes::Bytes>, ClusterError> {
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("asking every node")(e.into()))?;
        self.client
            .publish_with_reply(subject.clone(), inbox, payload)
            .await
            .map_err(|e| unavailable("asking every node")(e.into()))?;
        let want = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
            .max(1);
        let mut answers = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        while answers.len() < want {
            tokio::select! {
                m = sub.next() => match m { Some(m) => answers.push(m.payload), None => break },
                _ = &mut deadline => {
                    tracing::warn!(%subject, answered = answers.len(), live = want, "cluster: not every node answered within 5 s");
                    break;
                }
            }
        }
        Ok(answers)
    }

    /// The engine's hook: sends a pushed frame to the other nodes that sent the user's
    /// latest events. Returns to how many.
    fn forward(&self, user: &UserKey, frame: &ByteString) -> usize {
        let nodes = {
            let o = self.origins.lock().unwrap_or_else(|e| e.into_inner());
            match o.map.get(user) {
                Some(n) => n.clone(),
                None => return 0,
            }
        };
        let mut sent = 0;
        for node in nodes.iter().flatten() {
            if **node == *self.node {
                continue;
            }
            let mut payload = Vec::with_capacity(16 + frame.len());
            payload.extend_from_slice(&user.0);
            payload.extend_from_slice(frame.as_bytes());
            if self
                .forward_tx
                .send((self.names.push(node), payload.into()))
                .is_ok()
            {
                sent += 1;
            }
        }
        sent
    }

    fn note_origin(&self, user: UserKey, node: &str) {
        self.origins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(user, node);
    }

    /// The partitions this node owns, in order.
    fn partitions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

/// Publishes frames for other nodes' sockets (core NATS: a page that misses one gets the
/// next; the decision itself is stored by the owner).
async fn forward_loop(
    inner: Arc<Inner>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(String, bytes::Bytes)>,
) {
    while let Some((subject, payload)) = rx.recv().await {
        if inner.client.publish(subject, payload).await.is_ok() {
            inner.metrics.forwarded.inc();
        }
    }
}

/// Frames other nodes sent for this node's sockets.
async fn push_loop(inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        if msg.payload.len() < 16 {
            continue;
        }
        let mut k = [0u8; 16];
        k.copy_from_slice(&msg.payload[..16]);
        let Ok(frame) = ByteString::try_from(msg.payload.slice(16..)) else {
            continue;
        };
        inner.engine.hub.push_local(&UserKey(k), &frame);
    }
}

/// One node's statistics of an experiment, for the partitions it owns.
#[derive(Serialize, Deserialize)]
struct StatsAnswer {
    partitions: Vec<u32>,
    rows: Vec<trimtab_engine::pipeline::StatRow>,
}

/// Statistics requests: this node's sums for the partitions it owns, once what it has read
/// is in its tables.
async fn stats_loop(inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let Some(reply) = msg.reply else { return };
            let id = String::from_utf8_lossy(&msg.payload).into_owned();
            let partitions = inner.partitions();
            let _ = inner.engine.pipeline.sync().await;
            let engine = inner.engine.clone();
            let ps = partitions.clone();
            let rows = tokio::task::spawn_blocking(move || engine.experiment_rows(&id, Some(&ps)))
                .await
                .ok()
                .and_then(Result::ok);
            let Some(rows) = rows else { return };
            let body = serde_json::to_vec(&StatsAnswer { partitions, rows }).expect("serialisable");
            let _ = inner.client.publish(reply, body.into()).await;
        });
    }
}

/// Erasures asked through any node: what this node holds of the user from an earlier
/// ownership goes too (the owner erased its own copy first).
async fn erase_loop(inner: Arc<Inner>, mut sub: async_nats::Subscriber) {
    while let Some(msg) = sub.next().await {
        let user = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .map(UserKey);
        if let Some(user) = user {
            let part = names::partition(&user, inner.cfg.partitions);
            let owned = inner
                .parts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&part);
            inner
                .origins
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map
                .remove(&user);
            inner.ckpt.forget(&user);
            inner.engine.hub.close_user(&user, "user erased");
            if !owned {
                if let Ok(p) = inner.engine.pipeline.erase(user) {
                    let _ = p.await;
                }
            }
        }
        if let Some(reply) = msg.reply {
            let _ = inner.client.publish(reply, "ok".into()).await;
        }
    }
}

/// Deletes every message of `subject` from `stream` with JetStream's secure delete (the
/// record is overwritten with random bytes, subject included: a purge only unlinks it,
/// leaving the bytes in the block file), then purges the subject.
pub(crate) async fn shred(
    stream: &jetstream::stream::Stream,
    subject: String,
) -> Result<(), String> {
    use jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
    let last = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(e) => return Err(format!("finding the messages: {e}")),
    };
    if last > 0 {
        let listing = |e: String| format!("listing the messages: {e}");
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: subject.clone(),
                headers_only: true,
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| listing(e.to_string()))?;
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| listing(e.to_string()))?;
        let mut seqs = Vec::new();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), msgs.next())
                .await
                .map_err(|_| listing("timed out".into()))?;
            let Some(Ok(m)) = m else {
                return Err(listing("the listing ended early".into()));
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(last);
            seqs.push(seq);
            if seq >= last {
                break;
            }
        }
        for seq in seqs {
            stream
                .delete_message(seq)
                .await
                .map_err(|e| format!("deleting a message: {e}"))?;
        }
    }
    stream
        .purge()
        .filter(subject)
        .await
        .map_err(|e| format!("purging the subject: {e}"))?;
    Ok(())
}

/// Opens a key-value bucket, creating it first if needed. Its stream is created here with
/// the configuration the KV convention gives (`KV_<bucket>`, `$KV.<bucket>.>`, one value per
/// key, roll-ups, direct gets): the client's own `create_key_value` first asks for the
/// account's limits in a form nats-server 2.9 does not answer.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
    deny_delete: bool,
) -> Result<kv::Store, String> {
    use jetstream::stream::{Config, DiscardPolicy, StorageType};
    js.get_or_create_stream(Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete,
        allow_direct: true,
        num_replicas: replicas,
        discard: DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot open the bucket {name} on NATS: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("cannot open the bucket {name} on NATS: {e}"))
}

/// The first node records the secrets' fingerprint; every later node must match it.
async fn check_secrets(meta: &kv::Store, fp: &str) -> Result<(), String> {
    match agree(meta, "secrets", fp, "the cluster's secrets fingerprint").await? {
        Ok(()) => Ok(()),
        Err(_) => Err("this node's secrets differ from the cluster's: every node needs the same admin token, write key, token-signing and pseudonym keys — copy secrets.toml from the first node's data dir (or set the same TRIMTAB_ADMIN_TOKEN and TRIMTAB_WRITE_KEY on every node)".into()),
    }
}

/// The partition count is fixed for a cluster's life: the stream's subjects carry it.
async fn check_partitions(meta: &kv::Store, n: u32) -> Result<(), String> {
    match agree(meta, "partitions", &n.to_string(), "the cluster's partition count").await? {
        Ok(()) | Err(None) => Ok(()),
        Err(Some(k)) => Err(format!(
            "cluster.partitions is {n} here but {k} in the cluster: it is fixed for a cluster's life"
        )),
    }
}

/// Records `value` under `key` if the cluster has none yet, else compares: `Ok(Ok(()))` when
/// recorded or the same, `Ok(Err(known))` when it differs (`None`: the key could not be
/// created and holds nothing).
async fn agree(
    meta: &kv::Store,
    key: &str,
    value: &str,
    what: &str,
) -> Result<Result<(), Option<String>>, String> {
    if meta.create(key, value.to_string().into()).await.is_ok() {
        return Ok(Ok(()));
    }
    let known = meta
        .get(key)
        .await
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    Ok(match known {
        Some(k) if k.as_ref() == value.as_bytes() => Ok(()),
        other => Err(other.map(|k| String::from_utf8_lossy(&k).into_owned())),
    })
}
