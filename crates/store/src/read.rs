//! Reading: a [`Reader`] is one redb snapshot (shards keep one across drains until a write
//! commits), plus whole-table scans that open their own, and reads of the event store.

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::events::{Kind, Location, Record};
use super::{
    fingerprint, run_has, StatRow, Store, StoreError, UserRecords, DECISIONS, DECISION_INDEX,
    HEADS, LEARN, SEEN_RUNS, STATS, USERS,
};
use trimtab_privacy::crypto::Sealer;
use trimtab_privacy::{RowId, Table, UserKey};

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
    /// Keyed id hashes of the tail's events: no checkpoint covers them, so no run holds them
    /// yet (the shard keeps them until one does).
    pub tail_ids: Vec<[u8; 16]>,
}

/// The `seen_runs` table as a snapshot reads it: (user, run) → sorted fingerprints.
type SeenTable = redb::ReadOnlyTable<([u8; 16], u32), &'static [u8]>;

/// A read snapshot of the store.
pub struct Reader<'s> {
    store: &'s Store,
    txn: ReadTransaction,
    /// `seen_runs`, opened on first use: a drain checks many users' ids, and opening a table
    /// costs more than a lookup (redb compares its stored type names).
    seen: std::cell::OnceCell<SeenTable>,
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
    /// checkpoints written before `heads` existed (schema 1). The tail is empty unless the
    /// user's checkpoint does not cover all its records: then it comes from what recovery read
    /// at open, or from a scan of the event store from the user's first uncovered record.
    pub fn load(
        &self,
        user: &UserKey,
        head_of: impl FnOnce(&[u8]) -> Option<u64>,
    ) -> Result<Option<Loaded>, StoreError> {
        let Some(sealer) = self.store.existing_sealer(user) else {
            return Ok(None);
        };
        let row = sealer.row();
        let users = self.txn.open_table(USERS)?;
        let state = match users.get(row.0)? {
            Some(v) => sealer.open(user, Table::State, v.value()),
            None => None,
        };
        let head = match self.txn.open_table(HEADS)?.get(row.0)? {
            Some(h) => h.value(),
            None => state.as_deref().and_then(head_of).unwrap_or(0),
        };
        let records = self.store.uncovered_records(&row)?;
        let mut unreadable = 0;
        let mut events = Vec::new();
        let mut journal = Vec::new();
        let mut tail_ids = Vec::new();
        for r in records.iter().filter(|r| r.seq >= head) {
            if r.kind == Kind::Event && r.id_hash != [0; 16] {
                tail_ids.push(r.id_hash);
            }
            let (table, list) = match r.kind {
                Kind::Event => (Table::Event, &mut events),
                Kind::Journal => (Table::Journal, &mut journal),
                // Never in the event store (the decision log has its own files).
                Kind::Decision => continue,
            };
            match sealer.open(user, table, &r.sealed) {
                Some(p) => list.push((r.seq, p)),
                // Damaged.
                None => unreadable += 1,
            }
        }
        Ok(Some(Loaded {
            sealer,
            state,
            head,
            tail: merge_by_seq(events, journal),
            unreadable,
            tail_ids,
        }))
    }

    /// For each keyed event id hash: whether a checkpoint of the user covers an event with
    /// that id (ids since the last checkpoint are the shard's to know). One range read of the
    /// user's runs, a binary search per run and id.
    pub fn seen_many(&self, user: &UserKey, hashes: &[[u8; 16]]) -> Result<Vec<bool>, StoreError> {
        let mut out = vec![false; hashes.len()];
        let fps: Vec<u64> = hashes.iter().map(fingerprint).collect();
        self.each_run(user, |run| {
            for (o, fp) in out.iter_mut().zip(&fps) {
                *o = *o || run_has(run, *fp);
            }
            true
        })?;
        Ok(out)
    }

    /// Every fingerprint of the user's stored event ids (its `seen_runs`), to `f`, in one range
    /// read; stops early once `f` returns `false`.
    pub fn seen_fps(
        &self,
        user: &UserKey,
        mut f: impl FnMut(u64) -> bool,
    ) -> Result<(), StoreError> {
        self.each_run(user, |run| {
            run.chunks_exact(8)
                .all(|c| f(u64::from_le_bytes(c.try_into().expect("8 bytes"))))
        })
    }

    /// The fingerprints of each of the user's runs in `seen_runs` (sorted, 8 bytes each), to
    /// `f`, oldest run first, in one range read of the snapshot's `seen_runs` (opened once);
    /// stops once `f` returns `false`. A user without a key has none.
    fn each_run(&self, user: &UserKey, mut f: impl FnMut(&[u8]) -> bool) -> Result<(), StoreError> {
        let t = match self.seen.get() {
            Some(t) => t,
            None => {
                let t = self.txn.open_table(SEEN_RUNS)?;
                self.seen.get_or_init(|| t)
            }
        };
        let Some(r) = self.store.keys.row(user) else {
            return Ok(());
        };
        for row in t.range((r.0, 0u32)..=(r.0, u32::MAX))? {
            let (_, run) = row?;
            if !f(super::run_fps(run.value())) {
                break;
            }
        }
        Ok(())
    }

    /// A stored learning record of the user, decrypted.
    pub fn learn_record(
        &self,
        user: &UserKey,
        sealer: &Sealer,
        id: &[u8; 16],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.txn.open_table(LEARN)?;
        let v = t.get((sealer.row().0, *id))?;
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

impl Store {
    /// The user's records that its checkpoint may not cover (none for a covered user): taken
    /// from what recovery read at open, else read from the event store.
    fn uncovered_records(&self, row: &RowId) -> Result<Vec<Record>, StoreError> {
        if let Some(r) = self
            .recovered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(row)
        {
            return Ok(r);
        }
        let from = self
            .coverage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(row)
            .map(|(n, _)| *n);
        let Some(from) = from else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        self.events.scan(from, |r| {
            if r.row == *row {
                out.push(r.to_owned());
            }
            true
        })?;
        Ok(out)
    }

    /// Everything stored about the user except the state (decrypted), or `None` if nothing is.
    /// The events come from a scan of the whole event store.
    pub fn export(&self, user: &UserKey) -> Result<Option<UserRecords>, StoreError> {
        self.export_with(user, true)
    }

    /// [`Store::export`], with the events only if `events` (without them it reads two
    /// ranges of the indexed store, not the event store: a cluster checkpoint's image).
    pub fn export_with(
        &self,
        user: &UserKey,
        events: bool,
    ) -> Result<Option<UserRecords>, StoreError> {
        let Some(sealer) = self.existing_sealer(user) else {
            return Ok(None);
        };
        let row = sealer.row();
        let mut out = UserRecords::default();
        if events {
            self.events.scan(0, |r| {
                if r.row == row && r.kind == Kind::Event {
                    if let Some(plain) = sealer.open(user, Table::Event, r.sealed) {
                        out.events.push((r.seq, plain));
                    }
                }
                true
            })?;
        }
        // The pending locations and the index as of one moment: the indexer holds the lock
        // from before its transaction until they agree again.
        let pending = self
            .pending_decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_read()?;
        let mine = pending.get(&row).cloned().unwrap_or_default();
        drop(pending);
        let ids = (row.0, [0u8; 16])..=(row.0, [0xffu8; 16]);
        // Schema 4 and earlier: rows of the `decisions` table.
        for r in txn.open_table(DECISIONS)?.range(ids.clone())? {
            let (k, v) = r?;
            if let Some(plain) = sealer.open(user, Table::Decision, v.value()) {
                out.decisions.push((k.value().1, plain));
            }
        }
        let mut locs = Vec::new();
        for r in txn
            .open_table(DECISION_INDEX)?
            .range((row.0, 0)..=(row.0, u64::MAX))?
        {
            locs.extend(Location::decode_all(r?.1.value()));
        }
        locs.extend(mine);
        self.decisions.read_at(&locs, |r| {
            if r.row == row && r.kind == Kind::Decision {
                if let Some(plain) = sealer.open(user, Table::Decision, r.sealed) {
                    out.decisions.push((r.id_hash, plain));
                }
            }
        })?;
        for row in txn.open_table(LEARN)?.range(ids)? {
            let (k, v) = row?;
            if let Some(plain) = sealer.open(user, Table::Learn, v.value()) {
                out.learn.push((k.value().1, plain));
            }
        }
        Ok(Some(out))
    }

    /// The user's events among the last `window` records of the event store, opened, oldest
    /// first: `(seq, plaintext)` (a bounded read of the newest segments, for the rule lab's
    /// dry run).
    pub fn recent_events(
        &self,
        user: &UserKey,
        window: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let Some(sealer) = self.existing_sealer(user) else {
            return Ok(Vec::new());
        };
        let row = sealer.row();
        let mut out = Vec::new();
        self.events
            .scan(self.events.end().saturating_sub(window), |r| {
                if r.row == row && r.kind == Kind::Event {
                    if let Some(plain) = sealer.open(user, Table::Event, r.sealed) {
                        out.push((r.seq, plain));
                    }
                }
                true
            })?;
        Ok(out)
    }

    /// Numbers of the event store's records: `(first kept, next)` (records before the first
    /// were purged by retention).
    pub fn event_records(&self) -> (u64, u64) {
        (self.events.first(), self.events.end())
    }

    /// Every event from record `from` on, in log order (each user's in order), opened:
    /// `f(user, seq, plaintext)`; records of erased users (no key) are skipped. `f` returns
    /// `false` to stop. Returns how many records were looked at. For the rule lab's backtest.
    pub fn scan_events(
        &self,
        from: u64,
        mut f: impl FnMut(&UserKey, u64, &[u8]) -> bool,
    ) -> Result<u64, StoreError> {
        let mut sealers: std::collections::HashMap<RowId, Option<(UserKey, Sealer)>> =
            Default::default();
        let mut looked = 0u64;
        self.events.scan(from, |r| {
            looked += 1;
            if r.kind != Kind::Event {
                return true;
            }
            let s = sealers.entry(r.row).or_insert_with(|| {
                self.keys
                    .by_row(&r.row)
                    .map(|(u, key)| (u, Sealer::with_row(&key, r.row)))
            });
            match s {
                Some((user, sealer)) => match sealer.open(user, Table::Event, r.sealed) {
                    Some(plain) => f(user, r.seq, &plain),
                    None => true,
                },
                None => true,
            }
        })?;
        Ok(looked)
    }

    /// Users whose records go past their checkpoint (to replay at start after a crash), as
    /// found at open from `meta.replay_from` on; sorted.
    pub fn users_with_tail(&self) -> Result<Vec<UserKey>, StoreError> {
        let rows: Vec<RowId> = self
            .coverage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let mut out: Vec<UserKey> = rows
            .iter()
            .filter_map(|r| self.keys.by_row(r).map(|(u, _)| u))
            .collect();
        out.sort_unstable();
        out.dedup();
        Ok(out)
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
        let mut cached: Option<(RowId, Option<(UserKey, Sealer)>)> = None;
        for row in t.iter()? {
            let (k, v) = row?;
            let (r, id) = k.value();
            let r = RowId(r);
            if cached.as_ref().is_none_or(|(c, _)| *c != r) {
                let found = self.keys.by_row(&r);
                cached = Some((r, found.map(|(u, key)| (u, Sealer::with_row(&key, r)))));
            }
            let Some((_, Some((user, sealer)))) = &cached else {
                continue; // erased: nothing readable
            };
            let user = *user;
            if let Some(x) = sealer
                .open(&user, Table::Learn, v.value())
                .and_then(|p| select(p.as_slice()))
            {
                out.push((user, id, x));
            }
        }
        Ok(out)
    }

    /// Every statistic of the groups `keep` accepts: (group, ((segment, arm, metric), sums)).
    /// Reads the whole table (aggregates: small).
    pub fn stats_where(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, StatRow)>, StoreError> {
        let mut out = Vec::new();
        self.scan_stats(
            "",
            |_| true,
            |g, row| {
                if keep(g) {
                    out.push((g.to_string(), row))
                }
            },
        )?;
        Ok(out)
    }

    /// Every statistic of `group`: ((segment, arm, metric), sums).
    pub fn stats(&self, group: &str) -> Result<Vec<StatRow>, StoreError> {
        let mut out = Vec::new();
        self.scan_stats(group, |g| g == group, |_, row| out.push(row))?;
        Ok(out)
    }

    /// Every statistic of the groups whose name starts with `prefix`: (group, ((segment, arm,
    /// metric), sums)).
    pub fn stats_prefixed(&self, prefix: &str) -> Result<Vec<(String, StatRow)>, StoreError> {
        let mut out = Vec::new();
        self.scan_stats(
            prefix,
            |g| g.starts_with(prefix),
            |g, row| out.push((g.to_string(), row)),
        )?;
        Ok(out)
    }

    /// The statistics from the first group at or after `from`, in key order, while `within`
    /// holds for their group.
    fn scan_stats(
        &self,
        from: &str,
        within: impl Fn(&str) -> bool,
        mut each: impl FnMut(&str, StatRow),
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(STATS)?;
        for row in t.range((from, "", "", "")..)? {
            let (k, v) = row?;
            let (g, seg, arm, metric) = k.value();
            if !within(g) {
                break;
            }
            each(
                g,
                (
                    (seg.to_string(), arm.to_string(), metric.to_string()),
                    v.value(),
                ),
            );
        }
        Ok(())
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
            let r = RowId(k.value());
            let Some((user, key)) = self.keys.by_row(&r) else {
                continue; // erased: nothing readable
            };
            let sealer = Sealer::with_row(&key, r);
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
