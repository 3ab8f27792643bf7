//! trimtab-store, the only crate that touches the data dir's files (only the engine depends on
//! it, never the server). Storage: the write-ahead log (segment files in `wal/`), the event
//! store (segment files in `events/`), the decision log (segment files in `decisions/`), one
//! redb file and the per-user key store (`keys.bin`) in the data dir. Knows
//! tables, files, key layouts and encryption at rest; knows nothing of HTTP, features or
//! decisions (values are opaque bytes, sealed by the caller with the user's [`Sealer`]).
//!
//! **`wal/`, the write-ahead log** (`wal.rs`): append-only segment files, one record per group
//! commit ([`Store::log`]): one write and one `fdatasync` however many users it holds; an
//! event is acknowledged once its batch is in this log. The indexer applies the same batches a
//! little later, many at a time ([`Store::apply`]): events and journal records are appended,
//! in log order, to **`events/`, the event store** (`events.rs`), and the rest goes into
//! **`trimtab.redb`, the indexed store**. `meta.applied_wal` records how far the log is
//! applied; what is past it is applied again at open, so a crash at any point loses nothing
//! the log holds. Applied log segments are recycled.
//!
//! Tables of `trimtab.redb` (every user-derived value is sealed with that user's key, see
//! [`trimtab_privacy`]; every per-user row is filed under the user's **row id**, a keyed hash
//! of that random key which only `keys.bin` ties to the user key — [`trimtab_privacy::RowId`]
//! — so once erasure zeroes the key's slot, what free pages, log segments and event store
//! records still hold can be tied to no one, even with the pseudonym key):
//! - `meta`: `&str → &[u8]`: `schema_version`, `shutdown` (`clean` after a graceful stop,
//!   `running` while a process has the file open), `applied_wal`, `events_end` (records of the
//!   event store that are part of the indexed store) and `replay_from` (the first record of
//!   the event store that a checkpoint may not cover yet: recovery reads from there).
//! - `users`: `row id → sealed state`: the user's **checkpoint**, written every few seconds
//!   for dirty users, on eviction and on shutdown, not per event.
//! - `heads`: `row id → seq`: the first seq *not* covered by the user's checkpoint; loading a
//!   user replays its records from there.
//! - `seen_runs`: `(row id, run) → sorted fingerprints` (8 bytes each: the first half of
//!   the keyed hash of an event id): every id the user's checkpoints cover, for deduplication
//!   of client retries. One run is added per checkpoint (the ids of the records it covers,
//!   which the indexer keeps in memory until then, see [`Store::apply`]); a run is merged into
//!   the one before while that one is at most twice its size, so a user has O(log n) runs and
//!   an id is rewritten O(log n) times. A row per id instead (schema 2's `seen`) was one more
//!   random insert per event into a table that grew with every event.
//! - `decision_index`: `(row id, first record) → locations (record number, byte offset; 16
//!   bytes each)` of the user's records in **`decisions/`, the decision log**, where the
//!   indexer appends every decision pushed (what was pushed, for exports and cluster images;
//!   attribution works from the state). A user's locations stay in memory until its next
//!   checkpoint files them as one row; `meta.decisions_from` (the oldest not filed) and
//!   `meta.decisions_end` are written with every transaction, and at open the log is read from
//!   `decisions_from` to find them again. Never purged by retention; erasure deletes the rows
//!   and shreds the key. (`decisions`: `(row id, decision id) → sealed decision`, schema 4's
//!   form, still read and erased.)
//! - `learnlog`: `(row id, decision id) → sealed learning record` of bandit decisions.
//! - `stats`: `(group, segment, arm, metric) → six f64 sums`: experiments' sufficient statistics
//!   (aggregates over many users; no per-user data).
//!
//! Which users have records past their checkpoint (the **coverage**) is kept in memory: the
//! indexer adds a user at its first record after a checkpoint and removes it at the next
//! checkpoint; `replay_from` is the oldest such record. Loading a user not in it reads only
//! the checkpoint; loading one in it (after a failed commit) also scans the event store from
//! its first uncovered record. At open, the coverage is rebuilt by reading the event store from
//! `replay_from`, and the tails of the users in it are kept for their shards to replay.
//!
//! Threads: the writer thread is the only one that appends to the log ([`Store::log`]); the
//! indexer thread the only one that writes the event store and `trimtab.redb`
//! ([`Store::apply`], [`Store::erase`]); shard threads read through a [`Reader`] (one redb
//! snapshot); readers never block writers.

mod events;
mod read;
mod sealed_bytes;
mod wal;
mod write;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use events::Kind;

use trimtab_privacy::keystore::KeyStoreError;
use trimtab_privacy::{KeyMap, KeyStore, RowId, UserKey};

pub use read::{Loaded, Reader};
pub use trimtab_privacy::keystore::Detached;
pub use wal::Batch;
pub use write::UserRows;

pub use trimtab_privacy::crypto::Sealer;

/// 1: write-through state. 2: checkpoints (`heads`) and the `journal`. 3: events and journal
/// in the event store (`events/`), not in redb tables. 4: rows and records filed by row id,
/// not by user key (1 to 3 are migrated at open). 5: decisions in their own append-only log
/// (`decisions/`), indexed per user at checkpoints (4 opens as is: its `decisions` rows stay
/// where they are and are read beside the log).
pub const SCHEMA_VERSION: u32 = 5;
pub const DB_FILE: &str = "trimtab.redb";
/// The write-ahead log's directory (segment files) in the data dir.
pub const WAL_DIR: &str = "wal";
/// The event store's directory (segment files) in the data dir.
pub const EVENTS_DIR: &str = "events";
/// The decision log's directory (segment files, as the event store's) in the data dir.
pub const DECISIONS_DIR: &str = "decisions";
/// Where the log was before it became segment files: its unapplied tail is applied at open,
/// then the file is removed.
const LEGACY_WAL_FILE: &str = "wal.redb";
pub const KEYS_FILE: &str = "keys.bin";
/// The indexed store being rewritten by the schema 4 migration (renamed over `DB_FILE`).
const MIGRATING_FILE: &str = "trimtab.redb.migrating";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const USERS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("users");
const HEADS: TableDefinition<[u8; 16], u64> = TableDefinition::new("heads");
/// Schema 1 and 2 kept events and journal records here, by user; migrated at open.
const EVENTS: TableDefinition<([u8; 16], u64), &[u8]> = TableDefinition::new("events");
const JOURNAL: TableDefinition<([u8; 16], u64), &[u8]> = TableDefinition::new("journal");
/// Schema 1 and 2 kept one row per event id here; migrated into `seen_runs` at open.
const SEEN: TableDefinition<([u8; 16], [u8; 16]), u64> = TableDefinition::new("seen");
const SEEN_RUNS: TableDefinition<([u8; 16], u32), &[u8]> = TableDefinition::new("seen_runs");
/// Schema 4 and earlier kept decisions here (still read and erased; no longer written).
const DECISIONS: TableDefinition<([u8; 16], [u8; 16]), &[u8]> = TableDefinition::new("decisions");
const DECISION_INDEX: TableDefinition<([u8; 16], u64), &[u8]> =
    TableDefinition::new("decision_index");
const LEARN: TableDefinition<([u8; 16], [u8; 16]), &[u8]> = TableDefinition::new("learnlog");
const STATS: TableDefinition<(&str, &str, &str, &str), [f64; 6]> = TableDefinition::new("stats");

/// A key of the additive statistics table.
pub type StatKey = (String, String, String, String);
/// One stored statistic of a group: ((segment, arm, metric), sums).
pub type StatRow = ((String, String, String), [f64; 6]);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database {path} is locked by another process (is another trimtab running with this data dir?)")]
    Locked { path: String },
    #[error("cannot open the database {path}: {message}")]
    Open { path: String, message: String },
    #[error("the database {path} has schema version {found}; this trimtab understands versions 1 to {expected}")]
    UnknownSchema {
        path: String,
        found: String,
        expected: u32,
    },
    #[error("cannot create the data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("the key store {path} holds {found} key slots but the database has seen {expected}: it was cut short (a partial copy or restore?). Restore keys.bin from the backup taken with this database; starting would lose the users whose keys are missing")]
    KeysTruncated {
        path: String,
        found: u64,
        expected: u64,
    },
    #[error("the database {path} failed its integrity check at open ({message}): it was damaged outside trimtab (a disk error, a partial copy, an edit). Restore the data dir from a backup; starting would serve from damaged pages")]
    Corrupt { path: String, message: String },
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    #[error("storage error: {0}")]
    Db(String),
    #[error("key store write failed: {0}")]
    KeyIo(#[from] std::io::Error),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// What was erased of one user.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct EraseCounts {
    pub events: u64,
    pub decisions: u64,
    pub learn: u64,
    pub state: bool,
    pub key: bool,
}

/// Everything stored about one user except the state (which the owning shard has newer),
/// decrypted.
#[derive(Debug, Default)]
pub struct UserRecords {
    pub events: Vec<(u64, Vec<u8>)>,
    pub decisions: Vec<([u8; 16], Vec<u8>)>,
    pub learn: Vec<([u8; 16], Vec<u8>)>,
}

pub struct Store {
    db: Database,
    wal: wal::Log,
    events: events::EventLog,
    /// The decision log: every decision pushed, sealed, in the order applied; never purged
    /// by retention (decisions are kept until the user is erased).
    decisions: events::EventLog,
    /// Indexer only: per user, where its decisions applied since its last checkpoint are in
    /// the decision log: the next checkpoint's row of `decision_index`.
    pending_decisions: std::sync::Mutex<KeyMap<RowId, Vec<events::Location>>>,
    /// Users with records in the event store that their checkpoint does not cover → (the
    /// first such record, the highest seq among them) (see the module doc).
    coverage: std::sync::Mutex<KeyMap<RowId, (u64, u64)>>,
    /// After an unclean stop: the records past each uncovered user's checkpoint, read once at
    /// open, taken by the user's first load.
    recovered: std::sync::Mutex<std::collections::HashMap<RowId, Vec<events::Record>>>,
    /// Indexer only: per user, (seq, id fingerprint) of the events applied since its last
    /// checkpoint: the next checkpoint's run of `seen_runs`.
    pending_ids: std::sync::Mutex<KeyMap<RowId, Vec<(u64, u64)>>>,
    keys: Arc<KeyStore>,
    path: PathBuf,
    /// Whether the previous process stopped gracefully (every user checkpointed).
    was_clean: bool,
    /// Write transactions committed since open: a read snapshot opened at generation `g` sees
    /// everything while the generation is still `g` (shards keep one across drains).
    generation: std::sync::atomic::AtomicU64,
    retention: std::sync::Mutex<Retention>,
}

/// How long events and their ids are kept ([`Store::set_retention`]), and where the purge of
/// `seen_runs` goes on (indexer only).
#[derive(Default)]
struct Retention {
    max_age: Option<std::time::Duration>,
    /// Runs of different epochs (`max_age / 4` long) are not merged, so that a run's age
    /// stays close to its oldest id's: retention drops whole runs.
    epoch_ms: u64,
    cursor: Option<([u8; 16], u32)>,
}

/// What one retention step ([`Store::purge`]) deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Event-store segments and the records (events and journal records) they held.
    pub segments: usize,
    pub records: u64,
    /// Runs of ids seen (the deduplication keys of old events).
    pub runs: u64,
    /// Whether the step stopped at its bound with more of `seen_runs` to look at.
    pub more: bool,
}

/// Default page cache of the indexed store (`pipeline.store_cache_mb`).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// The fingerprint of a keyed event id hash kept in `seen_runs`: its first 8 bytes.
pub fn fingerprint(h: &[u8; 16]) -> u64 {
    u64::from_le_bytes(h[..8].try_into().expect("8 of 16 bytes"))
}

/// Fingerprints sorted, without repeats, 8 bytes each (little endian): a run of schema 3.
fn encode_fps(mut fps: Vec<u64>) -> Vec<u8> {
    fps.sort_unstable();
    fps.dedup();
    fps.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// A run of `seen_runs`: when its newest id was added (ms since the Unix epoch, 8 bytes,
/// little endian; retention drops the run once that is older than the events it may keep),
/// then its fingerprints ([`encode_fps`]).
fn encode_run(fps: Vec<u64>, ms: u64) -> Vec<u8> {
    let mut out = ms.to_le_bytes().to_vec();
    out.extend(encode_fps(fps));
    out
}

/// When a run's newest id was added (ms).
fn run_time(run: &[u8]) -> u64 {
    run.get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// A run's fingerprints.
fn run_fps(run: &[u8]) -> &[u8] {
    run.get(8..).unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a run holds `fp` (binary search over its 8-byte entries).
fn run_has(run: &[u8], fp: u64) -> bool {
    let n = run.len() / 8;
    let at = |i: usize| u64::from_le_bytes(run[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid).cmp(&fp) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Moves the rows of `seen` (one per id) into one run per user of `seen_runs` (schema 3's
/// form, which the schema 4 migration then dates) and drops the table, in `txn`; false when
/// there is no such table.
fn migrate_seen(db: &Database, txn: &redb::WriteTransaction) -> Result<bool, StoreError> {
    let read = db.begin_read()?;
    let t = match read.open_table(SEEN) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut runs = txn.open_table(SEEN_RUNS)?;
    let mut cur: Option<([u8; 16], Vec<u64>)> = None;
    for row in t.iter()? {
        let (k, _) = row?;
        let (u, h) = k.value();
        if cur.as_ref().is_some_and(|(c, _)| *c != u) {
            let (c, fps) = cur.take().expect("checked");
            runs.insert((c, 0), encode_fps(fps).as_slice())?;
        }
        cur.get_or_insert_with(|| (u, Vec::new()))
            .1
            .push(fingerprint(&h));
    }
    if let Some((c, fps)) = cur {
        runs.insert((c, 0), encode_fps(fps).as_slice())?;
    }
    drop(runs);
    drop(t);
    drop(read);
    txn.delete_table(SEEN)?;
    Ok(true)
}

/// A `u64` of `meta` (0 when absent).
fn meta_u64(db: &Database, key: &str) -> Result<u64, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let v = meta.get(key)?;
    Ok(
        v.and_then(|v| v.value().try_into().ok().map(u64::from_le_bytes))
            .unwrap_or(0),
    )
}

/// The last decision-log record that the user's `decision_index` rows list (None: none).
fn last_indexed(
    index: &redb::ReadOnlyTable<([u8; 16], u64), &[u8]>,
    row: &RowId,
) -> Result<Option<u64>, StoreError> {
    Ok(
        match index.range((row.0, 0)..=(row.0, u64::MAX))?.next_back() {
            Some(r) => events::Location::decode_all(r?.1.value())
                .last()
                .map(|l| l.n),
            None => None,
        },
    )
}

/// `meta.applied_wal`: the last log seq applied to the indexed store.
fn applied_wal(db: &Database) -> Result<u64, StoreError> {
    meta_u64(db, "applied_wal")
}

fn open_db(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let p = path.display().to_string();
    Database::builder()
        .set_cache_size(cache_bytes)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: p.clone() },
            other => StoreError::Open {
                path: p,
                message: other.to_string(),
            },
        })
}

/// Verifies every page's checksum and the allocator state (redb's `check_integrity`): a file
/// damaged outside trimtab is refused at open rather than found by a reader mid-request. A
/// state redb can rebuild (pages leaked by a crash) is repaired, with a warning.
fn check_integrity(db: &mut Database, path: &str) -> Result<(), StoreError> {
    let t = std::time::Instant::now();
    match db.check_integrity() {
        Ok(true) => {
            tracing::debug!(
                ms = t.elapsed().as_millis() as u64,
                "database integrity checked"
            );
            Ok(())
        }
        Ok(false) => {
            tracing::warn!(path, "the database's allocator state was repaired at open");
            Ok(())
        }
        Err(e) => Err(StoreError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        }),
    }
}

/// Re-wraps `keys.bin` in the data dir of a stopped server: read with `current` (None: not
/// wrapped), written with `new` (None: unwrapped), atomically. Holds the database's lock while
/// it does, so a running server (or a second rotation) is refused with [`StoreError::Locked`].
/// Returns how many keys were re-wrapped.
pub fn rewrap_keys(
    data_dir: &Path,
    current: Option<&trimtab_privacy::MasterKey>,
    new: Option<&trimtab_privacy::MasterKey>,
) -> Result<usize, StoreError> {
    let db_path = data_dir.join(DB_FILE);
    if !db_path.exists() {
        return Err(StoreError::Open {
            path: db_path.display().to_string(),
            message: "no such file (is this a trimtab data dir?)".into(),
        });
    }
    let lock = open_db(&db_path, 1 << 20)?;
    let n = trimtab_privacy::keystore::rewrap(&data_dir.join(KEYS_FILE), current, new)?;
    drop(lock);
    Ok(n)
}

impl Store {
    /// Opens (creating on first start) the data dir, its database and key store. A schema 1
    /// database is upgraded in place (its states are complete: v1 wrote them through).
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(data_dir, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with `cache_bytes` of page cache for the indexed store (redb's own
    /// default is 1 GiB per file, which a small deployment does not want resident).
    pub fn open_with_cache(data_dir: &Path, cache_bytes: usize) -> Result<Store, StoreError> {
        Store::open_with(data_dir, cache_bytes, None)
    }

    /// [`Store::open_with_cache`] with the master key that wraps the per-user keys in
    /// `keys.bin` (a file written without one is wrapped at this open; a wrapped file needs it).
    pub fn open_with(
        data_dir: &Path,
        cache_bytes: usize,
        master_key: Option<&trimtab_privacy::MasterKey>,
    ) -> Result<Store, StoreError> {
        let (store, found_version) = Store::open_once(data_dir, cache_bytes, master_key)?;
        if found_version >= 4 {
            return Ok(store);
        }
        let fresh = data_dir.join(MIGRATING_FILE);
        store.migrate_to_rows(&fresh)?;
        drop(store);
        std::fs::rename(&fresh, data_dir.join(DB_FILE)).map_err(StoreError::KeyIo)?;
        trimtab_util::fsutil::sync_dir(&data_dir.join(DB_FILE)).map_err(StoreError::KeyIo)?;
        Ok(Store::open_once(data_dir, cache_bytes, master_key)?.0)
    }

    /// Opens the data dir as it is (any schema), applying the log's tail; returns the store and
    /// the schema version it found.
    fn open_once(
        data_dir: &Path,
        cache_bytes: usize,
        master_key: Option<&trimtab_privacy::MasterKey>,
    ) -> Result<(Store, u32), StoreError> {
        // The data dir 0700 and the database 0600 from their creation: it holds sealed user
        // data, the key store and the secrets.
        trimtab_util::fsutil::create_private_dir(data_dir).map_err(|source| {
            StoreError::DataDir {
                path: data_dir.display().to_string(),
                source,
            }
        })?;
        let path = data_dir.join(DB_FILE);
        let p = path.display().to_string();
        trimtab_util::fsutil::create_private_file(&path).map_err(|source| StoreError::DataDir {
            path: p.clone(),
            source,
        })?;
        // redb panics on some damaged pages instead of returning an error: that is a damaged
        // file too, refused with the same message.
        let db = trimtab_util::panics::catch(|| {
            let mut db = open_db(&path, cache_bytes)?;
            check_integrity(&mut db, &p)?;
            Ok::<_, StoreError>(db)
        })
        .unwrap_or_else(|panic| {
            let msg = trimtab_util::panics::message(panic.as_ref());
            Err(StoreError::Corrupt {
                path: p.clone(),
                message: format!("redb panicked reading it: {msg}"),
            })
        })?;
        let txn = db.begin_write()?;
        let was_clean;
        let found_version: u32;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value().to_vec());
            let fresh = found.is_none();
            found_version = match found.as_deref() {
                None => SCHEMA_VERSION,
                Some(b"1") => 1,
                Some(b"2") => 2,
                Some(b"3") => 3,
                Some(b"4") => 4,
                Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => SCHEMA_VERSION,
                Some(v) => {
                    return Err(StoreError::UnknownSchema {
                        path: p,
                        found: String::from_utf8_lossy(v).into_owned(),
                        expected: SCHEMA_VERSION,
                    })
                }
            };
            let shutdown = meta.get("shutdown")?.map(|v| v.value().to_vec());
            // v1 wrote every state through, so a v1 file never has a log tail to replay.
            was_clean = fresh || shutdown.as_deref() == Some(b"clean") || shutdown.is_none();
            // Schema 4 becomes 5 as it is: the decision log starts empty beside its rows.
            if fresh || found_version == 4 {
                meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            }
            meta.insert("shutdown", &b"running"[..])?;
            // Create every table so readers never see "table does not exist".
            txn.open_table(USERS)?;
            txn.open_table(HEADS)?;
            txn.open_table(SEEN_RUNS)?;
            txn.open_table(DECISIONS)?;
            txn.open_table(DECISION_INDEX)?;
            txn.open_table(STATS)?;
            txn.open_table(LEARN)?;
        }
        txn.commit()?;
        let keys = Arc::new(KeyStore::open(&data_dir.join(KEYS_FILE), master_key)?);
        // Slots are never removed (erasure zeroes them in place): fewer than the database has
        // seen means the file was cut short, and the users of the lost slots would silently
        // lose their data.
        let expected = meta_u64(&db, "key_slots")?;
        if keys.durable_slots() < expected {
            return Err(StoreError::KeysTruncated {
                path: data_dir.join(KEYS_FILE).display().to_string(),
                found: keys.durable_slots(),
                expected,
            });
        }
        // The log of an earlier version (a redb file): apply what it holds past the indexed
        // store, then let it go.
        let legacy = data_dir.join(LEGACY_WAL_FILE);
        let applied = applied_wal(&db)?;
        let legacy_tail = if legacy.exists() {
            Some(wal::read_legacy(&open_db(&legacy, 16 << 20)?, applied)?)
        } else {
            None
        };
        let events_end = meta_u64(&db, "events_end")?;
        let decisions_end = meta_u64(&db, "decisions_end")?;
        let store = Store {
            events: events::EventLog::open(&data_dir.join(EVENTS_DIR), events_end)?,
            decisions: events::EventLog::open(&data_dir.join(DECISIONS_DIR), decisions_end)?,
            pending_decisions: Default::default(),
            db,
            wal: wal::Log::open(&data_dir.join(WAL_DIR), applied)?,
            coverage: Default::default(),
            recovered: Default::default(),
            pending_ids: Default::default(),
            keys,
            path,
            was_clean,
            generation: Default::default(),
            retention: Default::default(),
        };
        if found_version < 3 {
            store.migrate_to_event_store(was_clean)?;
        }
        store.migrate_seen_rows()?;
        // Which users have records past their checkpoint, from where recovery must read.
        store.rebuild_coverage()?;
        store.rebuild_pending_decisions()?;
        if let Some(tail) = legacy_tail {
            if !tail.is_empty() {
                store.apply(&tail)?;
            }
            std::fs::remove_file(&legacy).map_err(StoreError::KeyIo)?;
            // New records are numbered past what the old log applied.
            store.wal.number_past(store.applied_wal()?);
        }
        // What the log holds past `applied_wal` was acknowledged but is not indexed yet
        // (a crash, or a failed apply): apply it now, before anyone reads.
        let applied = store.applied_wal()?;
        let pending = store.wal.read_after(applied)?;
        if !pending.is_empty() {
            let n = pending.len();
            let t = std::time::Instant::now();
            store.apply(&pending)?;
            tracing::info!(
                batches = n,
                ms = t.elapsed().as_millis() as u64,
                "applied the write-ahead log's tail to the store"
            );
        }
        let applied = store.applied_wal()?;
        store.wal.trim(applied)?;
        store.read_recovered()?;
        Ok((store, found_version))
    }

    /// Schema 1 and 2 kept events and journal records in redb tables by user: they are
    /// copied into the event store (all events, then all journal records, each in seq order per
    /// user), then the tables
    /// are dropped, in one transaction that also records schema 3. A crash before it leaves a
    /// schema 2 file and an event store cut back to nothing at the next open, which migrates
    /// again.
    fn migrate_to_event_store(&self, was_clean: bool) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        let mut app = self.events.begin();
        let mut copied = 0u64;
        {
            let txn = self.db.begin_read()?;
            // Events, then journal records: a user's tail is read by kind, each in seq order.
            for (def, kind) in [(EVENTS, Kind::Event), (JOURNAL, Kind::Journal)] {
                let t = match txn.open_table(def) {
                    Ok(t) => t,
                    Err(redb::TableError::TableDoesNotExist(_)) => continue,
                    Err(e) => return Err(e.into()),
                };
                for row in t.iter()? {
                    let (k, v) = row?;
                    let (u, seq) = k.value();
                    // Still keyed by user key: the schema 4 migration that follows maps them.
                    app.push(kind, &RowId(u), seq, &[0; 16], v.value())?;
                    copied += 1;
                }
            }
        }
        app.sync()?;
        let end = app.next();
        let txn = self.db.begin_write()?;
        {
            migrate_seen(&self.db, &txn)?;
            let _ = txn.delete_table(EVENTS)?;
            let _ = txn.delete_table(JOURNAL)?;
            let mut meta = txn.open_table(META)?;
            meta.insert("events_end", &end.to_le_bytes()[..])?;
            // After an unclean stop any migrated record may be past its user's checkpoint.
            let from: u64 = if was_clean { end } else { 0 };
            meta.insert("replay_from", &from.to_le_bytes()[..])?;
            meta.insert("schema_version", &b"3"[..])?;
        }
        txn.commit()?;
        app.finish();
        self.committed_one();
        if copied > 0 {
            tracing::info!(
                records = copied,
                ms = t.elapsed().as_millis() as u64,
                "moved events and journal records into the event store (schema 3)"
            );
        }
        Ok(())
    }

    /// A file whose ids seen are still one row per id (`seen`, schemas 1 to 3 before
    /// `seen_runs`) has them moved into one run per user, at any version.
    fn migrate_seen_rows(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        if migrate_seen(&self.db, &txn)? {
            txn.commit()?;
            self.committed_one();
            tracing::info!("moved the ids seen into one run per user");
        } else {
            txn.abort()?;
        }
        Ok(())
    }

    /// Rebuilds the coverage from the event store's records past `meta.replay_from`: a user
    /// is uncovered from its first record at or past its checkpoint's head.
    fn rebuild_coverage(&self) -> Result<(), StoreError> {
        let from = meta_u64(&self.db, "replay_from")?;
        if from >= self.events.end() {
            return Ok(());
        }
        let txn = self.db.begin_read()?;
        let heads = txn.open_table(HEADS)?;
        let mut head_of: std::collections::HashMap<RowId, u64> = Default::default();
        let mut cov = self.coverage.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids = self.pending_ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = None;
        self.events.scan(from, |r| {
            let head = match head_of.get(&r.row) {
                Some(h) => *h,
                None => match heads.get(r.row.0) {
                    Ok(h) => {
                        let h = h.map_or(0, |h| h.value());
                        head_of.insert(r.row, h);
                        h
                    }
                    Err(e) => {
                        err = Some(e);
                        return false;
                    }
                },
            };
            if r.seq >= head {
                let e = cov.entry(r.row).or_insert((r.n, r.seq));
                e.1 = e.1.max(r.seq);
                if r.kind == Kind::Event && r.id_hash != [0; 16] {
                    ids.entry(r.row)
                        .or_default()
                        .push((r.seq, fingerprint(&r.id_hash)));
                }
            }
            true
        })?;
        match err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Rebuilds which decisions no row of `decision_index` lists yet, from the decision log's
    /// records past `meta.decisions_from`: a user's record is pending when it lies past the
    /// last location its index rows hold. Records of erased users (no key) are left out.
    fn rebuild_pending_decisions(&self) -> Result<(), StoreError> {
        let from = meta_u64(&self.db, "decisions_from")?;
        if from >= self.decisions.end() {
            return Ok(());
        }
        // The tail past `decisions_from` (a few seconds of decisions), then the index.
        let mut tail: Vec<(RowId, events::Location)> = Vec::new();
        self.decisions.scan_located(from, |r, at| {
            tail.push((r.row, events::Location { n: r.n, offset: at }));
            true
        })?;
        let txn = self.db.begin_read()?;
        let index = txn.open_table(DECISION_INDEX)?;
        // Per user: the last record its index rows list, or `None` for an erased user (no key).
        let mut last: std::collections::HashMap<RowId, Option<Option<u64>>> = Default::default();
        let mut pend = self
            .pending_decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (row, loc) in tail {
            let known = match last.get(&row) {
                Some(k) => *k,
                None => {
                    let k = match self.keys.by_row(&row) {
                        Some(_) => Some(last_indexed(&index, &row)?),
                        None => None,
                    };
                    *last.entry(row).or_insert(k)
                }
            };
            if known.is_some_and(|indexed| indexed.is_none_or(|i| loc.n > i)) {
                pend.entry(row).or_default().push(loc);
            }
        }
        Ok(())
    }

    /// Schema 3 filed every row and record under the user key, so an erased user's key stayed
    /// in redb's free pages and the log files, linkable with the pseudonym key. Schema 4 files
    /// them under row ids that only `keys.bin` ties to users ([`trimtab_privacy::RowId`]).
    /// Run at open, after the log's tail is applied (its batches name user keys): the event
    /// store's records are rewritten segment by segment (a record whose field is already a row
    /// id, from an interrupted migration, stays as it is; one of a user without a key — erased
    /// — gets zeros), the log's recycled segment is deleted, and the indexed store is copied
    /// into a new file `fresh` with every row under its row id, which the caller renames over
    /// the old one: a new file, because the old one's free pages would keep the user keys.
    fn migrate_to_rows(&self, fresh: &Path) -> Result<(), StoreError> {
        let t = std::time::Instant::now();
        let map = |x: &[u8; 16]| -> Option<RowId> {
            match self.keys.row(&UserKey(*x)) {
                Some(r) => Some(r),
                None => self.keys.by_row(&RowId(*x)).map(|_| RowId(*x)),
            }
        };
        let records = self
            .events
            .rewrite_rows(|r| map(&r.0).unwrap_or_default())?;
        self.wal.drop_spare()?;
        if fresh.exists() {
            std::fs::remove_file(fresh).map_err(StoreError::KeyIo)?;
        }
        let p = fresh.display().to_string();
        trimtab_util::fsutil::create_private_file(fresh).map_err(|source| StoreError::DataDir {
            path: p.clone(),
            source,
        })?;
        let new = open_db(fresh, 64 << 20)?;
        let mut rows = 0u64;
        let mut dropped = 0u64;
        let old = self.db.begin_read()?;
        let mut txn = new.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        macro_rules! copy_rows {
            ($def:expr, |$k:ident| $new:expr) => {
                copy_rows!($def, |$k| $new, |v| v)
            };
            ($def:expr, |$k:ident| $new:expr, |$v:ident| $value:expr) => {{
                let mut to = txn.open_table($def)?;
                for row in old.open_table($def)?.iter()? {
                    let (k, v) = row?;
                    let $k = k.value();
                    let $v = v.value();
                    match $new {
                        Some(key) => {
                            to.insert(key, $value)?;
                            rows += 1;
                        }
                        None => dropped += 1,
                    }
                }
            }};
        }
        copy_rows!(USERS, |k| map(&k).map(|r| r.0));
        copy_rows!(HEADS, |k| map(&k).map(|r| r.0));
        // Schema 3's runs have no time: they are dated now (kept one retention period more).
        let now = now_ms();
        copy_rows!(SEEN_RUNS, |k| map(&k.0).map(|r| (r.0, k.1)), |v| [
            &now.to_le_bytes()[..],
            v
        ]
        .concat()
        .as_slice());
        copy_rows!(DECISIONS, |k| map(&k.0).map(|r| (r.0, k.1)));
        copy_rows!(LEARN, |k| map(&k.0).map(|r| (r.0, k.1)));
        copy_rows!(STATS, |k| Some(k));
        copy_rows!(META, |k| Some(k));
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
            // As the previous process left it (this open's "running" is not news).
            let shutdown: &[u8] = if self.was_clean { b"clean" } else { b"running" };
            meta.insert("shutdown", shutdown)?;
        }
        txn.commit()?;
        drop(new);
        tracing::info!(
            records,
            rows,
            dropped,
            ms = t.elapsed().as_millis() as u64,
            "filed every row and record by row id instead of user key (schema 4)"
        );
        Ok(())
    }

    /// After the log's tail is applied: reads the records of every uncovered user once, for
    /// its first load (recovery).
    fn read_recovered(&self) -> Result<(), StoreError> {
        let cov = self
            .coverage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(from) = cov.values().map(|(n, _)| *n).min() else {
            return Ok(());
        };
        let mut out: std::collections::HashMap<RowId, Vec<events::Record>> = Default::default();
        self.events.scan(from, |r| {
            if cov.get(&r.row).is_some_and(|(n, _)| r.n >= *n) {
                out.entry(r.row).or_default().push(r.to_owned());
            }
            true
        })?;
        *self.recovered.lock().unwrap_or_else(|p| p.into_inner()) = out;
        Ok(())
    }

    /// Keeps events (and the ids seen that deduplicate them) for `max_age` (None: until the
    /// user is erased): [`Store::purge`] deletes older ones. The event store then starts a new
    /// segment at least every `max_age / 4`, so that what is purged is at most that much late.
    pub fn set_retention(&self, max_age: Option<std::time::Duration>) {
        let quarter = max_age.map(|a| (a / 4).max(std::time::Duration::from_millis(100)));
        self.events.set_rotate_after(quarter);
        let mut r = self.retention.lock().unwrap_or_else(|p| p.into_inner());
        r.max_age = max_age;
        r.epoch_ms = quarter.map_or(0, |q| q.as_millis() as u64);
    }

    /// The epoch length of runs (0: one epoch, retention off).
    pub(crate) fn run_epoch_ms(&self) -> u64 {
        self.retention
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .epoch_ms
    }

    /// One bounded step of retention (indexer only; nothing without [`Store::set_retention`]):
    /// deletes the event store's segments older than the retention period whose records every
    /// checkpoint covers (file deletions), and looks at up to `max_runs` rows of `seen_runs`
    /// from where the last step stopped, deleting the runs whose newest id is older than the
    /// period, in one transaction. Call again while [`Purged::more`].
    pub fn purge(&self, max_runs: usize) -> Result<Purged, StoreError> {
        let (max_age, start) = {
            let r = self.retention.lock().unwrap_or_else(|p| p.into_inner());
            (r.max_age, r.cursor)
        };
        let Some(max_age) = max_age else {
            return Ok(Purged::default());
        };
        let mut out = Purged::default();
        let floor = self
            .coverage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|(n, _)| *n)
            .min()
            .unwrap_or(u64::MAX);
        let cutoff = std::time::SystemTime::now()
            .checked_sub(max_age)
            .unwrap_or(std::time::UNIX_EPOCH);
        (out.segments, out.records) = self.events.purge(cutoff, floor)?;
        let cutoff_ms = now_ms().saturating_sub(max_age.as_millis() as u64);
        let txn = self.db.begin_write()?;
        let mut next = None;
        {
            let mut t = txn.open_table(SEEN_RUNS)?;
            let mut expired = Vec::new();
            {
                let rows = match start {
                    Some(k) => t.range(k..)?,
                    None => t.range::<([u8; 16], u32)>(..)?,
                };
                for (i, row) in rows.enumerate() {
                    let (k, v) = row?;
                    if i == max_runs {
                        next = Some(k.value());
                        break;
                    }
                    if run_time(v.value()) < cutoff_ms {
                        expired.push(k.value());
                    }
                }
            }
            for k in &expired {
                t.remove(k)?;
            }
            out.runs = expired.len() as u64;
        }
        if out.runs > 0 {
            txn.commit()?;
            self.committed_one();
        } else {
            txn.abort()?;
        }
        out.more = next.is_some();
        self.retention
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cursor = next;
        Ok(out)
    }

    /// The last log seq applied to the indexed store.
    pub fn applied_wal(&self) -> Result<u64, StoreError> {
        applied_wal(&self.db)
    }

    /// Appends one group commit's batch to the write-ahead log, durably (one `fsync`); also
    /// drops entries up to `trim` (already applied). New users' keys are made durable first
    /// (one `fdatasync` for all of them), since the batch holds records sealed with them.
    /// Returns the batch's seq. Writer thread only.
    pub fn log(&self, batch: &Batch, trim: u64) -> Result<u64, StoreError> {
        self.keys.sync_pending()?;
        self.wal.append(batch, trim)
    }

    /// Drops log entries up to `upto` (applied).
    pub fn trim_log(&self, upto: u64) -> Result<(), StoreError> {
        self.wal.trim(upto)
    }

    /// Entries in the write-ahead log (applied or not).
    pub fn log_len(&self) -> Result<u64, StoreError> {
        self.wal.len()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Whether the previous process stopped gracefully, with every user checkpointed (then
    /// no log tail needs replaying at start).
    pub fn was_clean(&self) -> bool {
        self.was_clean
    }

    /// Records a graceful stop: every dirty user has been checkpointed (durable).
    pub fn mark_clean(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        txn.open_table(META)?.insert("shutdown", &b"clean"[..])?;
        txn.commit()?;
        self.committed_one();
        Ok(())
    }

    /// The user's cipher, creating the user's key if needed (durable with the next commit).
    pub fn sealer(&self, user: &trimtab_privacy::UserKey) -> Sealer {
        let (key, row) = self.keys.get_or_create_entry(user);
        Sealer::with_row(&key, row)
    }

    /// The user's cipher if the user has a key (was ever stored and not erased).
    pub fn existing_sealer(&self, user: &trimtab_privacy::UserKey) -> Option<Sealer> {
        self.keys
            .entry(user)
            .map(|(key, row)| Sealer::with_row(&key, row))
    }

    /// How many write transactions have committed since open (see [`Reader`]'s freshness).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Called after every successful write transaction, before anyone is told of it.
    fn committed_one(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A consistent snapshot for reading (cheap; shards keep one until the next write commits).
    pub fn reader(&self) -> Result<Reader<'_>, StoreError> {
        Ok(Reader::new(self, self.db.begin_read()?))
    }
}

#[cfg(test)]
mod tests;
