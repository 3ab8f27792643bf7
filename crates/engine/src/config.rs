//! The one `Config` of `trimtab serve`: defaults < `trimtab.toml` < `TRIMTAB_*` env < flags.
//!
//! Nested keys use `__` in env names (`TRIMTAB_DELIVERY__CAP_PER_SESSION=5`). Unknown keys are
//! errors (a typo must not silently fall back to a default). Every field is documented here and
//! in the README's config reference.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::experiments::ExperimentsConfig;
use crate::features::FeatureConfig;
use crate::segments::service::SegmentsConfig;
use trimtab_rules::RuleLimits;
use trimtab_wire::Limits;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address (`127.0.0.1:0` picks a free port; the bound one is printed).
    pub addr: String,
    /// Data dir: the redb file, the key store, secrets.
    pub data: PathBuf,
    /// Rule scripts dir (`*.rhai`, hot-reloaded).
    pub scripts: PathBuf,
    /// Model registry dir.
    pub models: PathBuf,
    /// Admin token (Bearer) for admin endpoints; generated and stored in the data dir if unset.
    pub admin_token: Option<String>,
    /// Write key for `/v1/identify` and server-side `/v1/events`; generated if unset.
    pub write_key: Option<String>,
    /// The key signing user tokens, 64 hex characters (`trimtab keys generate` makes one);
    /// unset, the one in `secrets.toml`. The nodes of a cluster share it.
    pub token_key: Option<String>,
    /// The key turning user ids into pseudonymous keys, 64 hex characters; unset, the one in
    /// `secrets.toml`. The nodes of a cluster share it; changing it on a node with data makes
    /// every stored user unreachable.
    pub pseudonym_key: Option<String>,
    /// When set, `GET /metrics` needs `Authorization: Bearer` with this token (or the admin
    /// token); unset, it is open, as Prometheus endpoints usually are.
    pub metrics_token: Option<String>,
    /// The master key wrapping the per-user keys in `keys.bin`: 64 hex characters (`trimtab
    /// keys generate`). Kept outside the data dir, so that a copy of it cannot read user data.
    pub master_key: Option<String>,
    /// A file holding the master key (instead of `master_key`); must not be in the data dir.
    pub master_key_file: Option<PathBuf>,
    /// Origins allowed to open the WebSocket besides the server's own; `"*"` allows any.
    pub allowed_origins: Vec<String>,
    /// Lifetime of user tokens, seconds.
    pub token_ttl_s: u64,
    /// Let browsers get a token for a new random id at `POST /v1/anonymous` (no secret needed).
    pub anonymous: bool,
    /// Shard worker threads (0 = one per CPU, at least 2).
    pub shards: usize,
    /// Log format: `text` or `json`.
    pub log_format: String,
    pub limits: Limits,
    pub pipeline: PipelineConfig,
    pub delivery: DeliveryConfig,
    pub features: FeatureConfig,
    pub rules: RuleLimits,
    pub experiments: ExperimentsConfig,
    pub segments: SegmentsConfig,
    pub learn: crate::bandits::trainer::LearnConfig,
    pub tls: TlsConfig,
    pub http: HttpConfig,
    pub rate: RateConfig,
    pub retention: RetentionConfig,
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several nodes sharing the users through NATS JetStream. Without `nats` the
/// node runs alone (the default) and nothing here is used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222` (several comma-separated).
    pub nats: Option<String>,
    /// This node's name: unique in the cluster, `[A-Za-z0-9_-]{1,32}`.
    pub node: String,
    /// Partitions of the user space; each is owned by one live node. Fixed for a cluster's
    /// life (the stream's subjects carry it).
    pub partitions: u32,
    /// A partition's lease: a node that does not renew within this loses it (ms).
    pub lease_ms: u64,
    /// The stream's replicas (3 in production, on a NATS cluster of 3; 1 on one server).
    pub replicas: usize,
    /// The names' prefix of the stream, the buckets and the subjects, so that two clusters
    /// can share one NATS.
    pub prefix: String,
    /// Events older than this when a new owner reads them (a partition taken over and read
    /// from the start) update state without pushing adjustments to pages (ms).
    pub quiet_after_ms: u64,
    /// How often an owner checkpoints the users of its partitions that changed into NATS
    /// (ms; 0: never, and a new owner reads a partition from the start of the stream).
    pub checkpoint_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats: None,
            node: String::new(),
            partitions: 64,
            lease_ms: 6_000,
            replicas: 1,
            prefix: "trimtab".into(),
            quiet_after_ms: 10_000,
            checkpoint_ms: 5_000,
        }
    }
}

impl ClusterConfig {
    /// Whether this node runs in a cluster.
    pub fn enabled(&self) -> bool {
        self.nats.is_some()
    }

    /// The partition of `user` in cluster mode (None alone).
    pub fn partition_of(&self, user: &trimtab_privacy::UserKey) -> Option<u32> {
        self.enabled().then(|| partition(user, self.partitions))
    }
}

/// Which of `n` partitions `user` is in (bytes 8..16 of the key: independent of the shard,
/// which takes bytes 0..8).
pub fn partition(user: &trimtab_privacy::UserKey, n: u32) -> u32 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&user.0[8..16]);
    (u64::from_le_bytes(b) % u64::from(n.max(1))) as u32
}

/// In cluster mode an experiment's statistics are kept per partition, as the group
/// `<experiment>/p<partition>`: a partition's current owner has counted every event of it
/// (read from the start of the stream, or restored from a checkpoint that carries the
/// partition's statistics), so the cluster's totals are the owners' sums.
pub fn partition_group(experiment: &str, partition: u32) -> String {
    format!("{experiment}/p{partition}")
}

/// The partition of a statistics group made by [`partition_group`] (None: not such a group).
pub fn group_partition(group: &str) -> Option<u32> {
    group.rsplit_once("/p")?.1.parse().ok()
}

/// `[retention]`: how long raw events are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Events (their records in the event store, with the journal records of their
    /// evaluation) and the ids that deduplicate them are purged once older than this many
    /// days (fractions allowed); 0 keeps them until the user is erased.
    pub events_days: f64,
    /// How often the purge runs (ms); each run goes in bounded steps off the hot path.
    pub check_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            events_days: 90.0,
            check_ms: 600_000,
        }
    }
}

impl RetentionConfig {
    /// The retention period (None: events are kept until erasure).
    pub fn max_age(&self) -> Option<std::time::Duration> {
        (self.events_days > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.events_days * 86_400.0))
    }
}

/// `[rate]`: rate limits, each a sustained rate per minute and a burst; a rate of 0 turns that
/// limit off. Over a limit: 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RateConfig {
    /// `POST /v1/anonymous` per client IP (a household or an office shares one).
    pub anonymous_per_min: u32,
    pub anonymous_burst: u32,
    /// `POST /v1/identify` per client IP (the site's server calls it for every login).
    pub identify_per_min: u32,
    pub identify_burst: u32,
    /// Event batches, decide requests and WebSocket messages per user.
    pub user_per_min: u32,
    pub user_burst: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            anonymous_per_min: 120,
            anonymous_burst: 30,
            identify_per_min: 60_000,
            identify_burst: 2_000,
            user_per_min: 1_200,
            user_burst: 120,
        }
    }
}

/// `[http]`: bounds on connections, against clients that hold them open.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request body must arrive within this many seconds (then 408 `request_timeout` and
    /// the connection closes): a client trickling a body cannot hold a connection for long.
    pub body_timeout_s: u64,
    /// Open connections at most, WebSockets included; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections per client address at most (0: no cap); one more is answered 429
    /// `too_many_connections` and closed. Not applied with `trust_forwarded_for` (behind a
    /// proxy every connection comes from the proxy).
    pub max_connections_per_ip: usize,
    /// Take the client's IP (for per-IP rate limits) from the last `X-Forwarded-For` entry:
    /// only behind a reverse proxy that sets it, or any client could pick its own address.
    pub trust_forwarded_for: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_timeout_s: 10,
            max_connections: 25_000,
            max_connections_per_ip: 256,
            trust_forwarded_for: false,
        }
    }
}

/// `[tls]`: serve HTTPS and WSS with these PEM files (both or neither). The files are read
/// again on SIGHUP and when they change; a pair that does not load keeps the previous one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// The (cert, key) pair, when TLS is on.
    pub fn files(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: "127.0.0.1:8080".into(),
            data: "data".into(),
            scripts: "scripts".into(),
            models: "models".into(),
            admin_token: None,
            write_key: None,
            metrics_token: None,
            token_key: None,
            pseudonym_key: None,
            master_key: None,
            master_key_file: None,
            allowed_origins: Vec::new(),
            token_ttl_s: 86_400,
            anonymous: true,
            shards: 0,
            log_format: "text".into(),
            limits: Limits::default(),
            pipeline: PipelineConfig::default(),
            delivery: DeliveryConfig::default(),
            features: FeatureConfig::default(),
            rules: RuleLimits::default(),
            experiments: ExperimentsConfig::default(),
            segments: SegmentsConfig::default(),
            learn: crate::bandits::trainer::LearnConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            rate: RateConfig::default(),
            retention: RetentionConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Capacity of each shard's input queue (messages). Full ⇒ 429 / WS `overloaded`. 4096:
    /// 3 000 sessions sending 30 000 events/s on two cores keep a backlog of a few thousand
    /// messages while the shards catch up; with 1024 per shard 1 – 2% of them were shed
    /// (BENCHMARKS.md). A slot is about a hundred bytes.
    pub shard_queue: usize,
    /// Capacity of the writer's queue (batches). Full ⇒ shards wait (backpressure).
    pub writer_queue: usize,
    /// Most batches committed in one transaction.
    pub max_commit_batch: usize,
    /// Users kept in memory per shard before the least recently used is evicted.
    pub user_cache: usize,
    /// Memory the shards' user caches may take together, MiB (an estimate of each cached
    /// user's state, ids and learning records): past it the least recently used are evicted
    /// too, however few they are.
    pub user_cache_mb: usize,
    /// Seconds `Retry-After` tells an overloaded client to wait.
    pub retry_after_s: u64,
    /// A user whose state changed is checkpointed at most this long after the change (ms);
    /// also on eviction and at shutdown. Recovery after a crash replays at most this much of
    /// each user's log.
    pub checkpoint_ms: i64,
    /// Logged batches are applied to the indexed store at most this often (ms): a visit's
    /// events then share their pages. Readers that must see every acknowledged event (export,
    /// erasure, experiment results, the bandit log) wait for the next application.
    pub index_ms: u64,
    /// Page cache of the indexed store (`trimtab.redb`), MiB. The OS page cache holds the
    /// rest of the file; the write-ahead log has its own small cache.
    pub store_cache_mb: usize,
    /// After a fatal failure (storage error, panicked thread) the server stays up this long,
    /// not ready and refusing writes, so probes and scrapes see why, then exits (ms).
    pub fatal_grace_ms: u64,
    /// A cached user at rest this long (no input, checkpoint indexed, no timer) is kept in a
    /// compact form — its encoded state and key, one allocation — until its next input
    /// decodes it (ms; 0: never). Still cached: nothing is read from the store.
    pub compact_idle_ms: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            shard_queue: 4096,
            writer_queue: 4096,
            max_commit_batch: 512,
            user_cache: 50_000,
            user_cache_mb: 1024,
            retry_after_s: 1,
            checkpoint_ms: 5_000,
            index_ms: 1_000,
            store_cache_mb: 256,
            fatal_grace_ms: 1_000,
            compact_idle_ms: 10_000,
        }
    }
}

/// Frequency caps of one slot (overrides the defaults in `[delivery]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotCaps {
    pub cap_per_session: Option<u32>,
    pub cap_per_user: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Most adjustments of one slot per user session (0 = unlimited).
    pub cap_per_session: u32,
    /// Most adjustments of one slot per user per UTC day (0 = unlimited).
    pub cap_per_user: u32,
    /// Per-slot overrides: `[delivery.slots.offer] cap_per_session = 1`.
    pub slots: BTreeMap<String, SlotCaps>,
    /// Seconds between server pings on a WebSocket.
    pub heartbeat_s: u64,
    /// A WebSocket silent (no message, no pong) this long is closed.
    pub client_timeout_s: u64,
    /// A WebSocket must authenticate within this many seconds (else closed with 1008).
    pub auth_timeout_s: u64,
    /// Outgoing messages buffered per WebSocket before it counts as too slow.
    pub session_buffer: usize,
    /// Open WebSockets per user at most (a page per tab; 0 = no cap); one more is closed with
    /// 1008 after a `too_many_sockets` message.
    pub max_sockets_per_user: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            cap_per_session: 3,
            cap_per_user: 20,
            slots: BTreeMap::new(),
            heartbeat_s: 10,
            client_timeout_s: 30,
            auth_timeout_s: 5,
            session_buffer: 256,
            max_sockets_per_user: 16,
        }
    }
}

impl DeliveryConfig {
    /// (per session, per user-day) caps of a slot; 0 means unlimited.
    pub fn caps(&self, slot: &str) -> (u32, u32) {
        let o = self.slots.get(slot);
        (
            o.and_then(|c| c.cap_per_session)
                .unwrap_or(self.cap_per_session),
            o.and_then(|c| c.cap_per_user).unwrap_or(self.cap_per_user),
        )
    }
}

/// Flags of `trimtab serve` that override config (only those given are applied).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scripts: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// TRIMTAB_* variables that are not config keys but are read by trimtab itself.
const NON_CONFIG_ENV: &[&str] = &["CONFIG", "LOG"];

/// The top-level keys of [`Config`] (from its serialised default).
fn top_level_keys() -> Vec<String> {
    serde_json::to_value(Config::default())
        .ok()
        .and_then(|v| v.as_object().map(|m| m.keys().cloned().collect()))
        .unwrap_or_default()
}

/// The layers of a config, each on its own: what the file, the environment and the flags set.
struct Layers {
    /// The file read, if any.
    file_path: Option<PathBuf>,
    file: Option<Figment>,
    env: Figment,
    flags: Figment,
}

/// One effective setting and the layer that set it.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// Dotted key, e.g. `pipeline.index_ms`.
    pub key: String,
    /// The value in force (secrets redacted).
    pub value: serde_json::Value,
    /// `default`, `file <path>`, `env TRIMTAB_…` or `flag`.
    pub source: String,
}

/// Keys whose values are secrets: shown only as set or unset.
const SECRET_KEYS: &[&str] = &[
    "admin_token",
    "write_key",
    "metrics_token",
    "master_key",
    "token_key",
    "pseudonym_key",
];

impl Layers {
    fn read(file: Option<&Path>, overrides: &Overrides) -> Result<Layers, ConfigError> {
        let file_path = match file {
            Some(f) if !f.exists() => return Err(ConfigError::Missing(f.display().to_string())),
            Some(f) => Some(f.to_path_buf()),
            None if Path::new("trimtab.toml").exists() => Some(PathBuf::from("trimtab.toml")),
            None => None,
        };
        // Environment variables feed known keys only: other programs (test harnesses, wrappers)
        // use TRIMTAB_* names too. Unknown ones are reported, not fatal; files stay strict.
        let known = top_level_keys();
        for (name, _) in std::env::vars() {
            if let Some(rest) = name.strip_prefix("TRIMTAB_") {
                let first = rest.split("__").next().unwrap_or("").to_ascii_lowercase();
                if !known.contains(&first) && !NON_CONFIG_ENV.contains(&rest) {
                    eprintln!("trimtab: note: ignoring {name}: not a configuration key");
                }
            }
        }
        let env = Figment::from(Env::prefixed("TRIMTAB_").split("__").filter(move |k| {
            let first = k
                .as_str()
                .split('.')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            known.contains(&first)
        }));
        Ok(Layers {
            file: file_path
                .as_ref()
                .map(|f| Figment::from(Toml::file_exact(f))),
            file_path,
            env,
            flags: Figment::from(Serialized::defaults(overrides)),
        })
    }

    /// Defaults < file < environment < flags.
    fn merged(&self) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = &self.file {
            fig = fig.merge(f.clone());
        }
        fig.merge(self.env.clone()).merge(self.flags.clone())
    }

    /// Which layer set `key` (the highest one that has it).
    fn source(&self, key: &str) -> String {
        if self.flags.find_value(key).is_ok() {
            "flag".into()
        } else if self.env.find_value(key).is_ok() {
            format!(
                "env TRIMTAB_{}",
                key.replace('.', "__").to_ascii_uppercase()
            )
        } else if self
            .file
            .as_ref()
            .is_some_and(|f| f.find_value(key).is_ok())
        {
            let path = self.file_path.as_ref().map(|p| p.display().to_string());
            format!("file {}", path.unwrap_or_default())
        } else {
            "default".into()
        }
    }
}

/// The leaves of a JSON value as (dotted key, value); arrays are leaves.
fn leaves(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

impl Config {
    /// Loads the layered config. `file` is `--config`; without it `./trimtab.toml` is read if
    /// present.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let layers = Layers::read(file, overrides)?;
        Config::from_layers(&layers)
    }

    fn from_layers(layers: &Layers) -> Result<Config, ConfigError> {
        let mut cfg: Config = layers
            .merged()
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        // An empty secret (`TRIMTAB_ADMIN_TOKEN=` from a compose file's `${VAR:-}`) is not
        // given: the stored or generated one is used, never an empty credential.
        for secret in [
            &mut cfg.admin_token,
            &mut cfg.write_key,
            &mut cfg.metrics_token,
            &mut cfg.master_key,
        ] {
            if secret.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *secret = None;
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// [`Config::load`], and every setting in force with the layer that set it (`trimtab
    /// config`). Secrets are shown as `"(set)"` or null, never their value.
    pub fn explain(
        file: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<(Config, Vec<Setting>), ConfigError> {
        let layers = Layers::read(file, overrides)?;
        let cfg = Config::from_layers(&layers)?;
        let mut all = Vec::new();
        let v = serde_json::to_value(&cfg).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        leaves("", &v, &mut all);
        let settings = all
            .into_iter()
            .map(|(key, value)| {
                let value = if SECRET_KEYS.contains(&key.as_str()) && !value.is_null() {
                    serde_json::Value::String("(set)".into())
                } else {
                    value
                };
                Setting {
                    source: layers.source(&key),
                    key,
                    value,
                }
            })
            .collect();
        Ok((cfg, settings))
    }

    /// The master key from `master_key` or `master_key_file`, checked (None: keys are kept
    /// unwrapped). A key file inside the data dir is refused: it would travel with every copy
    /// of the data it protects.
    pub fn master_key(&self) -> Result<Option<trimtab_privacy::MasterKey>, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let text = match (&self.master_key, &self.master_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => {
                let data = std::fs::canonicalize(&self.data).unwrap_or_else(|_| self.data.clone());
                let file = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
                if file.starts_with(&data) {
                    return Err(invalid(format!(
                        "master_key_file {} is inside the data dir {}: keep it elsewhere (a copy of the data dir must not carry its key)",
                        f.display(),
                        self.data.display()
                    )));
                }
                std::fs::read_to_string(f).map_err(|e| {
                    invalid(format!("cannot read master_key_file {}: {e}", f.display()))
                })?
            }
            (None, None) => return Ok(None),
        };
        trimtab_privacy::MasterKey::parse(&text)
            .map(Some)
            .map_err(|e| invalid(format!("master key: {e}")))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return bad("log_format must be \"text\" or \"json\"");
        }
        if self.pipeline.shard_queue == 0 || self.pipeline.writer_queue == 0 {
            return bad("pipeline queues need a capacity of at least 1");
        }
        if self.limits.max_batch_events == 0 || self.limits.max_body_bytes < 1024 {
            return bad("limits.max_batch_events must be ≥ 1 and limits.max_body_bytes ≥ 1024");
        }
        if self.http.body_timeout_s == 0 || self.http.max_connections == 0 {
            return bad("http.body_timeout_s and http.max_connections must be positive");
        }
        if self.token_ttl_s == 0 {
            return bad("token_ttl_s must be positive");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls.cert and tls.key go together: give both PEM files, or neither");
        }
        for (name, v) in [
            ("admin_token", &self.admin_token),
            ("write_key", &self.write_key),
            ("metrics_token", &self.metrics_token),
        ] {
            if v.as_ref().is_some_and(|v| v.len() < 16) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be at least 16 characters (or unset: one is generated)"
                )));
            }
        }
        if self.master_key.is_some() && self.master_key_file.is_some() {
            return bad("give master_key or master_key_file, not both");
        }
        self.master_key()?;
        if !(0.0..1.0).contains(&self.experiments.holdout) {
            return bad("experiments.holdout must be in [0, 1)");
        }
        if !matches!(self.segments.algo.as_str(), "kmeans" | "gmm" | "dbscan") {
            return bad("segments.algo must be \"kmeans\", \"gmm\" or \"dbscan\"");
        }
        if self.features.tick_ms < 10 {
            return bad("features.tick_ms must be at least 10");
        }
        if !(self.retention.events_days >= 0.0 && self.retention.events_days <= 36_500.0) {
            return bad("retention.events_days must be between 0 (keep) and 36500");
        }
        if self.retention.check_ms < 100 {
            return bad("retention.check_ms must be at least 100");
        }
        for (name, v) in [
            ("token_key", &self.token_key),
            ("pseudonym_key", &self.pseudonym_key),
        ] {
            if v.as_ref()
                .is_some_and(|v| v.len() != 64 || hex::decode(v).is_err())
            {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be 64 hex characters (trimtab keys generate makes one)"
                )));
            }
        }
        if self.cluster.enabled() {
            let c = &self.cluster;
            let name_ok = |s: &str, max: usize| {
                !s.is_empty()
                    && s.len() <= max
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !name_ok(&c.node, 32) {
                return bad("cluster.node must be set to this node's name, [A-Za-z0-9_-]{1,32} (unique in the cluster)");
            }
            if !name_ok(&c.prefix, 32) {
                return bad("cluster.prefix must be [A-Za-z0-9_-]{1,32}");
            }
            if !(1..=4096).contains(&c.partitions) {
                return bad("cluster.partitions must be between 1 and 4096");
            }
            if c.lease_ms < 500 {
                return bad("cluster.lease_ms must be at least 500");
            }
            if !(1..=5).contains(&c.replicas) {
                return bad("cluster.replicas must be between 1 and 5");
            }
        }
        Ok(())
    }

    /// Directory of experiment definitions.
    /// Bandit slot definitions: `scripts/bandits/`.
    pub fn bandits_dir(&self) -> PathBuf {
        self.scripts.join("bandits")
    }

    pub fn experiments_dir(&self) -> PathBuf {
        self.experiments
            .dir
            .clone()
            .unwrap_or_else(|| self.scripts.join("experiments"))
    }

    /// Number of shard threads to run.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2)
        }
    }
}

#[cfg(test)]
// figment's Jail returns its own (large) error type; nothing to box here.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layering_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "custom.toml",
                "addr = \"0.0.0.0:9000\"\nshards = 3\n[delivery]\ncap_per_session = 7\n",
            )?;
            jail.set_env("TRIMTAB_SHARDS", "5");
            jail.set_env("TRIMTAB_DELIVERY__CAP_PER_USER", "9");
            // Not a config key (e.g. a test harness's own variable): ignored, not fatal.
            jail.set_env("TRIMTAB_BIN", "/usr/bin/true");
            let cfg = Config::load(
                Some(Path::new("custom.toml")),
                &Overrides {
                    data: Some("/tmp/x".into()),
                    ..Overrides::default()
                },
            )
            .unwrap();
            assert_eq!(cfg.addr, "0.0.0.0:9000"); // file
            assert_eq!(cfg.shards, 5); // env beats file
            assert_eq!(cfg.delivery.cap_per_session, 7);
            assert_eq!(cfg.delivery.cap_per_user, 9);
            assert_eq!(cfg.data, PathBuf::from("/tmp/x")); // flag
            let cfg = Config::load(
                Some(Path::new("custom.toml")),
                &Overrides {
                    shards: Some(8),
                    ..Overrides::default()
                },
            )
            .unwrap();
            assert_eq!(cfg.shards, 8); // flag beats env
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[delivery]\ncap_per_sesion = 1\n")?;
            let e = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("cap_per_sesion"), "{e}");
            jail.create_file("bad2.toml", "log_format = \"xml\"\n")?;
            assert!(Config::load(Some(Path::new("bad2.toml")), &Overrides::default()).is_err());
            assert!(matches!(
                Config::load(Some(Path::new("nope.toml")), &Overrides::default()),
                Err(ConfigError::Missing(_))
            ));
            Ok(())
        });
    }

    #[test]
    fn empty_secrets_are_unset_and_short_ones_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TRIMTAB_ADMIN_TOKEN", "");
            jail.set_env("TRIMTAB_WRITE_KEY", "  ");
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!((cfg.admin_token, cfg.write_key), (None, None));
            jail.set_env("TRIMTAB_ADMIN_TOKEN", "short");
            let e = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(
                e.to_string().contains("admin_token must be at least 16"),
                "{e}"
            );
            Ok(())
        });
    }

    #[test]
    fn cluster_settings_from_the_environment_and_their_checks() {
        figment::Jail::expect_with(|jail| {
            // Alone by default: nothing of the cluster is used.
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert!(!cfg.cluster.enabled());
            assert_eq!(
                cfg.cluster.partition_of(&trimtab_privacy::UserKey([7; 16])),
                None
            );
            jail.set_env("TRIMTAB_CLUSTER__NATS", "nats://127.0.0.1:4222");
            jail.set_env("TRIMTAB_CLUSTER__NODE", "n1");
            jail.set_env("TRIMTAB_CLUSTER__PARTITIONS", "16");
            let cfg = Config::load(None, &Overrides::default()).unwrap();
            assert!(cfg.cluster.enabled());
            assert_eq!(cfg.cluster.partitions, 16);
            let p = cfg
                .cluster
                .partition_of(&trimtab_privacy::UserKey([7; 16]))
                .unwrap();
            assert!(p < 16);
            assert_eq!(partition_group("offer-test", p), format!("offer-test/p{p}"));
            assert_eq!(
                group_partition(&partition_group("offer/p-test", p)),
                Some(p)
            );
            for (key, value, says) in [
                ("TRIMTAB_CLUSTER__NODE", "", "cluster.node must be set"),
                ("TRIMTAB_CLUSTER__NODE", "n 1", "cluster.node must be set"),
                ("TRIMTAB_CLUSTER__PARTITIONS", "0", "cluster.partitions"),
                ("TRIMTAB_CLUSTER__LEASE_MS", "100", "cluster.lease_ms"),
                ("TRIMTAB_CLUSTER__REPLICAS", "7", "cluster.replicas"),
                (
                    "TRIMTAB_PSEUDONYM_KEY",
                    "abc",
                    "pseudonym_key must be 64 hex",
                ),
            ] {
                jail.set_env(key, value);
                let e = Config::load(None, &Overrides::default()).unwrap_err();
                assert!(e.to_string().contains(says), "{key}={value:?}: {e}");
                jail.set_env("TRIMTAB_CLUSTER__NODE", "n1");
                jail.set_env("TRIMTAB_CLUSTER__PARTITIONS", "16");
                jail.set_env("TRIMTAB_CLUSTER__LEASE_MS", "6000");
                jail.set_env("TRIMTAB_CLUSTER__REPLICAS", "1");
                jail.set_env("TRIMTAB_PSEUDONYM_KEY", "ab".repeat(32));
            }
            Ok(())
        });
    }
}
