//! Reading: a [`Reader`] is one redb snapshot (shards open one per drain of their queue, so a
//! batch of messages costs one read transaction), plus whole-table scans that open their own.

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::{
    StatRow, Store, StoreError, UserRecords, DECISIONS, EVENTS, HEADS, JOURNAL, LEARN, SEEN, STATS,
    USERS,
};
use crate::privacy::crypto::Sealer;
use crate::privacy::{Table, UserKey};

/// One seq of a user's log tail: `(seq, event record, journal record)`, either record absent.
pub type TailEntry = (u64, Option<Vec<u8>>, Option<Vec<u8>>);

/// One stored user, decrypted: the checkpoint and the log tail past it, in seq order.
#[derive(Debug)]
pub struct Loaded {
    pub sealer: Sealer,
    /// The checkpointed state, if any.
    pub state: Option<Vec<u8>>,
    /// First seq not covered by the checkpoint.
    pub head: u64,
    /// `(seq, event, journal record)` of every seq ≥ head that has either, in seq order.
    pub tail: Vec<TailEntry>,
    /// Records of the tail that did not decrypt (corruption; skipped).
    pub unreadable: usize,
}

/// The `seen` table as a snapshot reads it: (user, keyed id hash) → seq.
type SeenTable = redb::ReadOnlyTable<([u8; 16], [u8; 16]), u64>;

/// A read snapshot of the store.
pub struct Reader<'s> {
    store: &'s Store,
    txn: ReadTransaction,
    /// `seen`, opened on first use: a drain checks many users' ids, and opening a table
    /// costs more than a lookup (redb compares its stored type names).
    seen: std::cell::OnceCell<SeenTable>,
}

fn range_of(user: &UserKey, from: u64) -> std::ops::RangeInclusive<([u8; 16], u64)> {
    (user.0, from)..=(user.0, u64::MAX)
}

impl<'s> Reader<'s> {
    pub(super) fn new(store: &'s Store, txn: ReadTransaction) -> Reader<'s> {
        Reader {
            store,
            txn,
            seen: std::cell::OnceCell::new(),
        }
    }

    /// The user's checkpoint and log tail, or `None` when the user has no key (never stored,
    /// or erased). `head_of` reads the first uncovered seq out of a decrypted checkpoint, for
    /// checkpoints written before `heads` existed (schema 1).
    pub fn load(
        &self,
        user: &UserKey,
        head_of: impl FnOnce(&[u8]) -> Option<u64>,
    ) -> Result<Option<Loaded>, StoreError> {
        let Some(sealer) = self.store.existing_sealer(user) else {
            return Ok(None);
        };
        let users = self.txn.open_table(USERS)?;
        let state = match users.get(user.0)? {
            Some(v) => sealer.open(user, Table::State, v.value()),
            None => None,
        };
        let head = match self.txn.open_table(HEADS)?.get(user.0)? {
            Some(h) => h.value(),
            None => state.as_deref().and_then(head_of).unwrap_or(0),
        };
        let mut unreadable = 0;
        let mut events = Vec::new();
        for row in self.txn.open_table(EVENTS)?.range(range_of(user, head))? {
            let (k, v) = row?;
            match sealer.open(user, Table::Event, v.value()) {
                Some(p) => events.push((k.value().1, p)),
                None => unreadable += 1,
            }
        }
        let mut journal = Vec::new();
        for row in self.txn.open_table(JOURNAL)?.range(range_of(user, head))? {
            let (k, v) = row?;
            match sealer.open(user, Table::Journal, v.value()) {
                Some(p) => journal.push((k.value().1, p)),
                None => unreadable += 1,
            }
        }
        Ok(Some(Loaded {
            sealer,
            state,
            head,
            tail: merge_by_seq(events, journal),
            unreadable,
        }))
    }

    /// For each keyed event id hash: whether it was already committed for the user.
    pub fn seen_many(&self, user: &UserKey, hashes: &[[u8; 16]]) -> Result<Vec<bool>, StoreError> {
        let t = match self.seen.get() {
            Some(t) => t,
            None => {
                let t = self.txn.open_table(SEEN)?;
                self.seen.get_or_init(|| t)
            }
        };
        hashes
            .iter()
            .map(|h| Ok(t.get((user.0, *h))?.is_some()))
            .collect()
    }

    /// A stored learning record of the user, decrypted.
    pub fn learn_record(
        &self,
        user: &UserKey,
        sealer: &Sealer,
        id: &[u8; 16],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn.open_table(LEARN)?;
        let v = t.get((user.0, *id))?;
        Ok(v.and_then(|v| sealer.open(user, Table::Learn, v.value())))
    }
}

/// Joins two seq-sorted lists into one, pairing entries with the same seq.
fn merge_by_seq(events: Vec<(u64, Vec<u8>)>, journal: Vec<(u64, Vec<u8>)>) -> Vec<TailEntry> {
    let mut out = Vec::with_capacity(events.len().max(journal.len()));
    let mut e = events.into_iter().peekable();
    let mut j = journal.into_iter().peekable();
    loop {
        let next = match (e.peek(), j.peek()) {
            (None, None) => break,
            (Some(_), None) => 0,
            (None, Some(_)) => 1,
            (Some((a, _)), Some((b, _))) => match a.cmp(b) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Equal => 2,
            },
        };
        match next {
            0 => {
                let (s, v) = e.next().expect("peeked");
                out.push((s, Some(v), None));
            }
            1 => {
                let (s, v) = j.next().expect("peeked");
                out.push((s, None, Some(v)));
            }
            _ => {
                let (s, v) = e.next().expect("peeked");
                let (_, w) = j.next().expect("peeked");
                out.push((s, Some(v), Some(w)));
            }
        }
    }
    out
}

/// The next user key in key order (`None` after the last one).
fn next_user(u: [u8; 16]) -> Option<[u8; 16]> {
    let n = u128::from_be_bytes(u).checked_add(1)?;
    Some(n.to_be_bytes())
}

impl Store {
    /// Everything stored about the user except the state (decrypted), or `None` if nothing is.
    pub fn export(&self, user: &UserKey) -> Result<Option<UserRecords>, StoreError> {
        let Some(sealer) = self.existing_sealer(user) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let mut out = UserRecords::default();
        for row in txn.open_table(EVENTS)?.range(range_of(user, 0))? {
            let (k, v) = row?;
            if let Some(plain) = sealer.open(user, Table::Event, v.value()) {
                out.events.push((k.value().1, plain));
            }
        }
        let ids = (user.0, [0u8; 16])..=(user.0, [0xffu8; 16]);
        for row in txn.open_table(DECISIONS)?.range(ids.clone())? {
            let (k, v) = row?;
            if let Some(plain) = sealer.open(user, Table::Decision, v.value()) {
                out.decisions.push((k.value().1, plain));
            }
        }
        for row in txn.open_table(LEARN)?.range(ids)? {
            let (k, v) = row?;
            if let Some(plain) = sealer.open(user, Table::Learn, v.value()) {
                out.learn.push((k.value().1, plain));
            }
        }
        Ok(Some(out))
    }

    /// Users whose log goes past their checkpoint (to replay at start after a crash): one
    /// seek per user and table, never a full scan of the log.
    pub fn users_with_tail(&self) -> Result<Vec<UserKey>, StoreError> {
        let txn = self.db.begin_read()?;
        let heads = txn.open_table(HEADS)?;
        let mut out = std::collections::BTreeSet::new();
        for t in [txn.open_table(EVENTS)?, txn.open_table(JOURNAL)?] {
            let mut cursor = Some([0u8; 16]);
            while let Some(from) = cursor {
                let Some(first) = t.range((from, 0u64)..)?.next() else {
                    break;
                };
                let u = first?.0.value().0;
                let last = t
                    .range(range_of(&UserKey(u), 0))?
                    .next_back()
                    .transpose()?
                    .map(|(k, _)| k.value().1);
                let head = heads.get(u)?.map(|h| h.value());
                if head.is_none_or(|h| last.is_some_and(|l| l >= h)) {
                    out.insert(UserKey(u));
                }
                cursor = next_user(u);
            }
        }
        Ok(out.into_iter().collect())
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
        let mut cached: Option<(UserKey, Option<Sealer>)> = None;
        for row in t.iter()? {
            let (k, v) = row?;
            let (u, id) = k.value();
            let user = UserKey(u);
            if cached.as_ref().is_none_or(|(c, _)| *c != user) {
                cached = Some((user, self.existing_sealer(&user)));
            }
            let Some((_, Some(sealer))) = &cached else {
                continue;
            };
            if let Some(x) = sealer
                .open(&user, Table::Learn, v.value())
                .and_then(|p| select(p.as_slice()))
            {
                out.push((user, id, x));
            }
        }
        Ok(out)
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

    /// Every checkpointed user state (decrypted), from one read transaction: a consistent
    /// snapshot that never blocks the writer or the shards. A state is at most one checkpoint
    /// interval behind its user's last event. `limit` caps how many are returned.
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
            let Some(sealer) = self.existing_sealer(&user) else {
                continue; // erased: nothing readable
            };
            if let Some(plain) = sealer.open(&user, Table::State, v.value()) {
                out.push((user, plain));
            }
        }
        Ok(out)
    }

    /// Number of users with a checkpoint.
    pub fn user_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(USERS)?.len()?)
    }
}
