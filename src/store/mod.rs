//! Storage: one redb file (`trimtab.redb`) plus the per-user key store (`keys.bin`) in the data
//! dir. Knows tables, key layouts and encryption at rest; knows nothing of HTTP or features
//! (values are opaque, already-encoded bytes).
//!
//! Tables (every user-derived value is encrypted with that user's key, see [`crate::privacy`]):
//! - `meta`: `&str → &[u8]`, holds `schema_version`.
//! - `users`: `user key → sealed state` (the user's features, consent, caps).
//! - `events`: `(user key, seq) → sealed event`: the event log, the write-ahead log of the loop;
//!   one user's events form one key range, so export and erasure are range operations.
//! - `seen`: `(user key, keyed hash of event id) → seq`: deduplication of client retries.
//! - `decisions`: `(user key, decision id) → sealed decision`: what was pushed, for attribution.
//! - `learnlog`: `(user key, decision id) → sealed learning record` of bandit decisions:
//!   context, candidates, propensity and attributed outcomes (the learning loop's log).
//!
//! Threads: the writer thread is the only one that calls [`Store::apply`] and [`Store::erase`];
//! shard threads read (`load_state`, `seen`). redb serialises writers itself; readers never block.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use crate::privacy::keystore::KeyStoreError;
use crate::privacy::{open_record, seal_record, KeyStore, Table, UserKey};

pub const SCHEMA_VERSION: u32 = 1;
pub const DB_FILE: &str = "trimtab.redb";
pub const KEYS_FILE: &str = "keys.bin";

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const USERS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("users");
const EVENTS: TableDefinition<([u8; 16], u64), &[u8]> = TableDefinition::new("events");
const SEEN: TableDefinition<([u8; 16], [u8; 16]), u64> = TableDefinition::new("seen");
const DECISIONS: TableDefinition<([u8; 16], [u8; 16]), &[u8]> = TableDefinition::new("decisions");
const LEARN: TableDefinition<([u8; 16], [u8; 16]), &[u8]> = TableDefinition::new("learnlog");
/// Additive statistics: (group, segment, arm, metric) → six f64 sums (experiments' sufficient
/// statistics). Aggregates over many users; holds no per-user data.
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
    #[error("the database {path} has schema version {found}; this trimtab understands version {expected}")]
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

/// Everything one writer batch does for one user; many of these commit in one transaction.
#[derive(Debug, Default)]
pub struct Mutation {
    pub user: Option<UserKey>,
    /// (seq, keyed id hash, encoded event)
    pub events: Vec<(u64, [u8; 16], Vec<u8>)>,
    /// The user's encoded state after this batch, if it changed.
    pub state: Option<Vec<u8>>,
    /// (decision id, encoded decision)
    pub decisions: Vec<([u8; 16], Vec<u8>)>,
    /// Increments of additive statistics (added element-wise to what is stored).
    pub stats: Vec<(StatKey, [f64; 6])>,
    /// (decision id, encoded learning record): inserted or replaced.
    pub learn: Vec<([u8; 16], Vec<u8>)>,
}

/// Everything stored about one user, decrypted.
#[derive(Debug, Default)]
pub struct UserRecords {
    pub state: Option<Vec<u8>>,
    pub events: Vec<(u64, Vec<u8>)>,
    pub decisions: Vec<([u8; 16], Vec<u8>)>,
    pub learn: Vec<([u8; 16], Vec<u8>)>,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct EraseCounts {
    pub events: u64,
    pub decisions: u64,
    pub learn: u64,
    pub state: bool,
    pub key: bool,
}

pub struct Store {
    db: Database,
    keys: Arc<KeyStore>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating on first start) the data dir, its database and key store.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let p = path.display().to_string();
        let db = Database::builder().create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: p.clone() },
            other => StoreError::Open {
                path: p.clone(),
                message: other.to_string(),
            },
        })?;
        let txn = db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value().to_vec());
            match found {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION.to_string().as_bytes())?;
                }
                Some(v) if v == SCHEMA_VERSION.to_string().as_bytes() => {}
                Some(v) => {
                    return Err(StoreError::UnknownSchema {
                        path: p,
                        found: String::from_utf8_lossy(&v).into_owned(),
                        expected: SCHEMA_VERSION,
                    })
                }
            }
            // Create every table so readers never see "table does not exist".
            txn.open_table(USERS)?;
            txn.open_table(EVENTS)?;
            txn.open_table(SEEN)?;
            txn.open_table(DECISIONS)?;
            txn.open_table(STATS)?;
            txn.open_table(LEARN)?;
        }
        txn.commit()?;
        let keys = Arc::new(KeyStore::open(&data_dir.join(KEYS_FILE))?);
        Ok(Store { db, keys, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// The user's decrypted state, if stored (and their key still exists).
    pub fn load_state(&self, user: &UserKey) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(key) = self.keys.get(user) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let t = txn.open_table(USERS)?;
        let sealed = t.get(user.0)?;
        Ok(sealed.and_then(|v| open_record(&key, user, Table::State, v.value())))
    }

    /// Whether an event with this keyed id hash was already committed for the user.
    pub fn seen(&self, user: &UserKey, id_hash: &[u8; 16]) -> Result<bool, StoreError> {
        Ok(self.seen_many(user, std::slice::from_ref(id_hash))?[0])
    }

    /// [`Store::seen`] for a whole batch, in one read transaction.
    pub fn seen_many(
        &self,
        user: &UserKey,
        id_hashes: &[[u8; 16]],
    ) -> Result<Vec<bool>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(SEEN)?;
        id_hashes
            .iter()
            .map(|h| Ok(t.get((user.0, *h))?.is_some()))
            .collect()
    }

    /// A stored decision of the user, decrypted.
    pub fn decision(&self, user: &UserKey, id: &[u8; 16]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(key) = self.keys.get(user) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let t = txn.open_table(DECISIONS)?;
        let v = t.get((user.0, *id))?;
        Ok(v.and_then(|v| open_record(&key, user, Table::Decision, v.value())))
    }

    /// A stored learning record of the user, decrypted.
    pub fn learn_record(
        &self,
        user: &UserKey,
        id: &[u8; 16],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(key) = self.keys.get(user) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LEARN)?;
        let v = t.get((user.0, *id))?;
        Ok(v.and_then(|v| open_record(&key, user, Table::Learn, v.value())))
    }

    /// Every learning record (decrypted) that `select` maps to `Some`, from one read
    /// transaction: `select` sees each record's plaintext once and keeps what it returns.
    /// Erased users' records are unreadable and skipped.
    pub fn learn_records<T>(
        &self,
        mut select: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<Vec<(UserKey, [u8; 16], T)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(LEARN)?;
        let mut out = Vec::new();
        let mut cached: Option<(UserKey, Option<[u8; 32]>)> = None;
        for row in t.iter()? {
            let (k, v) = row?;
            let (u, id) = k.value();
            let user = UserKey(u);
            if cached.as_ref().is_none_or(|(c, _)| *c != user) {
                cached = Some((user, self.keys.get(&user)));
            }
            let Some((_, Some(key))) = &cached else {
                continue;
            };
            if let Some(x) =
                open_record(key, &user, Table::Learn, v.value()).and_then(|p| select(&p))
            {
                out.push((user, id, x));
            }
        }
        Ok(out)
    }

    /// Applies many mutations in one durable transaction (the group commit).
    pub fn apply(&self, muts: &[Mutation]) -> Result<(), StoreError> {
        if muts.iter().all(|m| m.user.is_none() && m.stats.is_empty()) {
            return Ok(());
        }
        // Keys first: a key must be durable before any record sealed with it.
        let mut sealed = Vec::with_capacity(muts.len());
        for m in muts {
            let Some(user) = m.user else { continue };
            let key = self.keys.get_or_create(&user)?;
            sealed.push((user, key, m));
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut users = txn.open_table(USERS)?;
            let mut events = txn.open_table(EVENTS)?;
            let mut seen = txn.open_table(SEEN)?;
            let mut decisions = txn.open_table(DECISIONS)?;
            let mut learn = txn.open_table(LEARN)?;
            let mut stats = txn.open_table(STATS)?;
            for m in muts {
                for ((g, seg, arm, metric), d) in &m.stats {
                    let k = (g.as_str(), seg.as_str(), arm.as_str(), metric.as_str());
                    let mut cur = stats.get(k)?.map(|v| v.value()).unwrap_or([0.0; 6]);
                    for (c, x) in cur.iter_mut().zip(d) {
                        *c += x;
                    }
                    stats.insert(k, cur)?;
                }
            }
            for (user, key, m) in sealed {
                for (seq, idh, bytes) in &m.events {
                    let rec = seal_record(&key, &user, Table::Event, bytes);
                    events.insert((user.0, *seq), rec.as_slice())?;
                    seen.insert((user.0, *idh), *seq)?;
                }
                for (id, bytes) in &m.decisions {
                    let rec = seal_record(&key, &user, Table::Decision, bytes);
                    decisions.insert((user.0, *id), rec.as_slice())?;
                }
                for (id, bytes) in &m.learn {
                    let rec = seal_record(&key, &user, Table::Learn, bytes);
                    learn.insert((user.0, *id), rec.as_slice())?;
                }
                if let Some(state) = &m.state {
                    let rec = seal_record(&key, &user, Table::State, state);
                    users.insert(user.0, rec.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Everything stored about the user (decrypted), or `None` if nothing is.
    pub fn export(&self, user: &UserKey) -> Result<Option<UserRecords>, StoreError> {
        let Some(key) = self.keys.get(user) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let mut out = UserRecords::default();
        let users = txn.open_table(USERS)?;
        out.state = users
            .get(user.0)?
            .and_then(|v| open_record(&key, user, Table::State, v.value()));
        let events = txn.open_table(EVENTS)?;
        for row in events.range((user.0, 0u64)..=(user.0, u64::MAX))? {
            let (k, v) = row?;
            if let Some(plain) = open_record(&key, user, Table::Event, v.value()) {
                out.events.push((k.value().1, plain));
            }
        }
        let decisions = txn.open_table(DECISIONS)?;
        for row in decisions.range((user.0, [0u8; 16])..=(user.0, [0xffu8; 16]))? {
            let (k, v) = row?;
            if let Some(plain) = open_record(&key, user, Table::Decision, v.value()) {
                out.decisions.push((k.value().1, plain));
            }
        }
        let learn = txn.open_table(LEARN)?;
        for row in learn.range((user.0, [0u8; 16])..=(user.0, [0xffu8; 16]))? {
            let (k, v) = row?;
            if let Some(plain) = open_record(&key, user, Table::Learn, v.value()) {
                out.learn.push((k.value().1, plain));
            }
        }
        if out.state.is_none()
            && out.events.is_empty()
            && out.decisions.is_empty()
            && out.learn.is_empty()
        {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Erases the user from every table. The user's key is destroyed first (overwritten in
    /// place and fsynced), so even a crash mid-erasure leaves only undecryptable bytes; then the
    /// rows are deleted in one durable transaction.
    pub fn erase(&self, user: &UserKey) -> Result<EraseCounts, StoreError> {
        let mut counts = EraseCounts {
            key: self.keys.erase(user)?,
            ..EraseCounts::default()
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut users = txn.open_table(USERS)?;
            counts.state = users.remove(user.0)?.is_some();
            let mut events = txn.open_table(EVENTS)?;
            let mut n = 0;
            events.retain_in((user.0, 0u64)..=(user.0, u64::MAX), |_, _| {
                n += 1;
                false
            })?;
            counts.events = n;
            let mut seen = txn.open_table(SEEN)?;
            seen.retain_in((user.0, [0u8; 16])..=(user.0, [0xffu8; 16]), |_, _| false)?;
            let mut decisions = txn.open_table(DECISIONS)?;
            let mut d = 0;
            decisions.retain_in((user.0, [0u8; 16])..=(user.0, [0xffu8; 16]), |_, _| {
                d += 1;
                false
            })?;
            counts.decisions = d;
            let mut learn = txn.open_table(LEARN)?;
            let mut l = 0;
            learn.retain_in((user.0, [0u8; 16])..=(user.0, [0xffu8; 16]), |_, _| {
                l += 1;
                false
            })?;
            counts.learn = l;
        }
        txn.commit()?;
        Ok(counts)
    }

    /// Every statistic of `group`: ((segment, arm, metric), sums).
    pub fn stats(&self, group: &str) -> Result<Vec<StatRow>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(STATS)?;
        let mut out = Vec::new();
        for row in t.range((group, "", "", "")..)? {
            let (k, v) = row?;
            let (g, seg, arm, metric) = k.value();
            if g != group {
                break;
            }
            out.push((
                (seg.to_string(), arm.to_string(), metric.to_string()),
                v.value(),
            ));
        }
        Ok(out)
    }

    /// Every stored user state (decrypted), from one read transaction: a consistent snapshot
    /// that never blocks the writer or the shards. `limit` caps how many are returned.
    pub fn all_states(&self, limit: usize) -> Result<Vec<(UserKey, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = row?;
            let user = UserKey(k.value());
            let Some(key) = self.keys.get(&user) else {
                continue; // erased: nothing readable
            };
            if let Some(plain) = open_record(&key, &user, Table::State, v.value()) {
                out.push((user, plain));
            }
        }
        Ok(out)
    }

    /// Number of users with stored state.
    pub fn user_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(USERS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_dir_for(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|e| {
            let p = e.unwrap().path();
            p.is_file()
                && std::fs::read(&p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
        })
    }

    #[test]
    fn apply_export_erase_leaves_nothing_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let u = UserKey([5; 16]);
        let canary = b"canary-7f3a9c";
        let m = Mutation {
            user: Some(u),
            events: vec![(1, [1; 16], canary.to_vec()), (2, [2; 16], b"two".to_vec())],
            state: Some(b"state".to_vec()),
            decisions: vec![([9; 16], b"dec".to_vec())],
            stats: Vec::new(),
            learn: vec![([9; 16], b"learn-canary".to_vec())],
        };
        store.apply(&[m]).unwrap();
        assert!(store.seen(&u, &[1; 16]).unwrap());
        assert!(!store.seen(&u, &[3; 16]).unwrap());
        assert_eq!(
            store.load_state(&u).unwrap().as_deref(),
            Some(&b"state"[..])
        );
        let ex = store.export(&u).unwrap().unwrap();
        assert_eq!(ex.events.len(), 2);
        assert_eq!(ex.events[0].1, canary);
        assert_eq!(ex.decisions.len(), 1);
        assert_eq!(ex.learn.len(), 1);
        assert_eq!(
            store.learn_records(|b| Some(b.to_vec())).unwrap(),
            vec![(u, [9; 16], b"learn-canary".to_vec())]
        );
        // Encrypted at rest: the canary never appears in plaintext, even before erasure.
        assert!(!scan_dir_for(dir.path(), canary));
        let key = store.keys().get(&u).unwrap();
        assert!(scan_dir_for(dir.path(), &key));
        let c = store.erase(&u).unwrap();
        assert_eq!((c.events, c.decisions, c.state, c.key), (2, 1, true, true));
        assert_eq!(c.learn, 1);
        assert!(store.export(&u).unwrap().is_none());
        assert!(!store.seen(&u, &[1; 16]).unwrap());
        // The key that could decrypt leftovers in redb's free pages is gone from the data dir.
        assert!(!scan_dir_for(dir.path(), &key));
        assert!(!scan_dir_for(dir.path(), canary));
    }

    #[test]
    fn stats_add_up_across_commits_and_groups_stay_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let k = |g: &str, arm: &str| {
            (
                g.to_string(),
                String::new(),
                arm.to_string(),
                "m".to_string(),
            )
        };
        let m = |stats| Mutation {
            stats,
            ..Mutation::default()
        };
        store
            .apply(&[m(vec![(k("e1", "a"), [1.0, 2.0, 4.0, 0.0, 0.0, 0.0])])])
            .unwrap();
        store
            .apply(&[
                m(vec![(k("e1", "a"), [1.0, 3.0, 9.0, 1.0, 1.0, 3.0])]),
                m(vec![
                    (k("e1", "b"), [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
                    (k("e2", "a"), [5.0; 6]),
                ]),
            ])
            .unwrap();
        let e1 = store.stats("e1").unwrap();
        assert_eq!(e1.len(), 2);
        assert_eq!(e1[0].0 .1, "a");
        assert_eq!(e1[0].1, [2.0, 5.0, 13.0, 1.0, 1.0, 3.0]);
        assert_eq!(store.stats("e2").unwrap()[0].1, [5.0; 6]);
        assert!(store.stats("e0").unwrap().is_empty());
    }

    #[test]
    fn locked_and_schema_errors_are_clear() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // redb locks the file: a second open in the same process is refused the same way as
        // another process's.
        match Store::open(dir.path()) {
            Err(StoreError::Locked { .. }) => {}
            Err(e) => panic!("expected Locked, got {e}"),
            Ok(_) => panic!("expected Locked, got Ok"),
        }
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("schema_version", &b"99"[..])
                .unwrap();
            txn.commit().unwrap();
        }
        drop(store);
        match Store::open(dir.path()) {
            Err(StoreError::UnknownSchema { found, .. }) => assert_eq!(found, "99"),
            Err(e) => panic!("expected UnknownSchema, got {e}"),
            Ok(_) => panic!("expected UnknownSchema, got Ok"),
        }
    }

    #[test]
    fn garbage_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x42u8; 8192]).unwrap();
        match Store::open(dir.path()) {
            Err(StoreError::Open { .. }) => {}
            Err(e) => panic!("expected Open error, got {e}"),
            Ok(_) => panic!("garbage accepted"),
        }
    }
}
