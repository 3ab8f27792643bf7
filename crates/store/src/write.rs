//! Writing: applying logged batches ([`Store::apply`]) and erasure. Indexer thread only.

use redb::{Durability, ReadableTable};

use super::events::Kind;
use super::events::Location;
use super::{
    encode_run, fingerprint, EraseCounts, StatKey, Store, StoreError, DECISIONS, DECISION_INDEX,
    HEADS, LEARN, SEEN_RUNS, STATS, USERS,
};
use trimtab_privacy::keystore::Detached;
use trimtab_privacy::{KeyMap, RowId, UserKey};

/// Everything one group commit writes for one user; every value is already sealed with the
/// user's key (shards seal, so that work is spread over their threads), and filed under the
/// row id of that key ([`trimtab_privacy::crypto::Sealer::row`]), never the user key.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct UserRows {
    pub row: RowId,
    /// The user, for the process that built the rows (which shard's they are); never
    /// written: decoded from the log it is all zeros.
    #[serde(skip)]
    pub user: UserKey,
    /// (seq, keyed id hash, sealed event): appended to the log; the id joins the user's
    /// `seen_runs` with the next checkpoint.
    #[serde(with = "super::sealed_bytes::events")]
    pub events: Vec<(u64, [u8; 16], Vec<u8>)>,
    /// (seq, sealed journal record).
    #[serde(with = "super::sealed_bytes::keyed")]
    pub journal: Vec<(u64, Vec<u8>)>,
    /// (decision id, sealed decision): appended to the decision log.
    #[serde(with = "super::sealed_bytes::keyed")]
    pub decisions: Vec<([u8; 16], Vec<u8>)>,
    /// (decision id, sealed learning record): inserted or replaced.
    #[serde(with = "super::sealed_bytes::keyed")]
    pub learn: Vec<([u8; 16], Vec<u8>)>,
    /// (head, sealed state): a new checkpoint covering every seq below `head`.
    #[serde(with = "super::sealed_bytes::checkpoint")]
    pub checkpoint: Option<(u64, Vec<u8>)>,
}

impl UserRows {
    pub fn new(user: UserKey, row: RowId) -> UserRows {
        UserRows {
            user,
            row,
            ..UserRows::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.journal.is_empty()
            && self.decisions.is_empty()
            && self.learn.is_empty()
            && self.checkpoint.is_none()
    }
}

/// What one row of a batch means for its user's coverage, in log order.
#[derive(Clone, Copy)]
enum Mark {
    /// Records from `first` on, the highest of their seqs `top`.
    Records { first: u64, top: u64 },
    /// A checkpoint covering every seq below `head`.
    Checkpoint { head: u64 },
}

impl Store {
    /// Detaches the user's key at once (see [`trimtab_privacy::KeyStore::detach`]): the owning
    /// shard calls this when it accepts an erasure, so records it seals afterwards use a new
    /// key; the indexer then erases the detached keys ([`Store::erase_detached`]). `None`: the
    /// user had no key.
    pub fn detach_key(&self, user: &UserKey) -> Option<Detached> {
        self.keys.detach(user)
    }

    /// Applies logged batches to the indexed store in **one** durable transaction, and
    /// records the last one's seq as applied. Events and journal records are appended to the
    /// event store ([`super::events`]) in log order and made durable first; the rest goes
    /// into `trimtab.redb`, each table's rows in key order, with `applied_wal`, `events_end`
    /// and `replay_from` in the same transaction. Statistics are summed first, so each is read
    /// and written once. If anything fails, the event store is cut back to where it was and
    /// nothing counts as applied (the log keeps the batches). Indexer thread only (and
    /// recovery at open).
    pub fn apply(
        &self,
        batches: &[(u64, impl std::borrow::Borrow<super::Batch>)],
    ) -> Result<(), StoreError> {
        let Some(last) = batches.iter().map(|(s, _)| *s).max() else {
            return Ok(());
        };
        let mut sums: std::collections::HashMap<&StatKey, [f64; 6]> = Default::default();
        for (_, b) in batches {
            for (k, d) in &b.borrow().stats {
                let s = sums.entry(k).or_insert([0.0; 6]);
                for (a, x) in s.iter_mut().zip(d) {
                    *a += x;
                }
            }
        }
        let rows: Vec<&super::UserRows> = batches
            .iter()
            .flat_map(|(_, b)| b.borrow().rows.iter())
            .collect();
        // Event store first, in log order, tracking which users' records no checkpoint covers
        // yet: `Some(n)` from record n on, `None` covered by a checkpoint in these batches.
        let mut app = self.events.begin();
        let mut marks: Vec<(RowId, Mark)> = Vec::new();
        // The ids applied since each touched user's last checkpoint, as they will be after
        // these batches (copied from `pending_ids`, written back only once committed), and
        // the ids each checkpoint here covers: the users' new runs.
        let mut pend = self.pending_ids.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: KeyMap<RowId, Vec<(u64, u64)>> = Default::default();
        ids.reserve(rows.len());
        let mut new_runs: std::collections::BTreeMap<[u8; 16], Vec<u64>> = Default::default();
        // Decisions go to the decision log; where each is stays pending per user (copied
        // from `pending_decisions`, written back once committed) until a checkpoint of the
        // user in these batches files them as one row of `decision_index`.
        let mut dapp = self.decisions.begin();
        let mut dpend = self
            .pending_decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut dlocs: KeyMap<RowId, Vec<Location>> = Default::default();
        let mut dflush: std::collections::BTreeSet<[u8; 16]> = Default::default();
        for r in &rows {
            if !r.decisions.is_empty() || r.checkpoint.is_some() {
                let v = dlocs
                    .entry(r.row)
                    .or_insert_with(|| dpend.get(&r.row).cloned().unwrap_or_default());
                for (id, rec) in &r.decisions {
                    v.push(dapp.push(Kind::Decision, &r.row, 0, id, rec)?);
                }
                if r.checkpoint.is_some() {
                    dflush.insert(r.row.0);
                }
            }
            let mut first = None;
            let mut top = 0;
            if !r.events.is_empty() || r.checkpoint.is_some() {
                ids.entry(r.row)
                    .or_insert_with(|| pend.get(&r.row).cloned().unwrap_or_default());
            }
            for (seq, idh, rec) in &r.events {
                let n = app.push(Kind::Event, &r.row, *seq, idh, rec)?.n;
                first.get_or_insert(n);
                top = top.max(*seq);
                if let Some(v) = ids.get_mut(&r.row) {
                    v.push((*seq, fingerprint(idh)));
                }
            }
            for (seq, rec) in &r.journal {
                let n = app.push(Kind::Journal, &r.row, *seq, &[0; 16], rec)?.n;
                first.get_or_insert(n);
                top = top.max(*seq);
            }
            if let Some(n) = first {
                marks.push((r.row, Mark::Records { first: n, top }));
            }
            if let Some((head, _)) = &r.checkpoint {
                marks.push((r.row, Mark::Checkpoint { head: *head }));
                if let Some(v) = ids.get_mut(&r.row) {
                    let run = new_runs.entry(r.row.0).or_default();
                    v.retain(|(seq, fp)| {
                        let covered = seq < head;
                        if covered {
                            run.push(*fp);
                        }
                        !covered
                    });
                }
            }
        }
        // The coverage after these batches, for the users they touch: `Some((first uncovered
        // record, highest seq among the uncovered))`, or `None` once a checkpoint's head is
        // past every record of the user.
        let mut delta: KeyMap<RowId, Option<(u64, u64)>> = Default::default();
        delta.reserve(marks.len());
        {
            let cov = self.coverage.lock().unwrap_or_else(|p| p.into_inner());
            for (u, m) in marks {
                let cur = match delta.get(&u) {
                    Some(v) => *v,
                    None => cov.get(&u).copied(),
                };
                let new = match (m, cur) {
                    (Mark::Records { top, .. }, Some((n0, t0))) => Some((n0, t0.max(top))),
                    (Mark::Records { first, top }, None) => Some((first, top)),
                    // A checkpoint covers the user only if its head is past every record.
                    (Mark::Checkpoint { head }, Some((_, top))) if top >= head => cur,
                    (Mark::Checkpoint { .. }, _) => None,
                };
                delta.insert(u, new);
            }
        }
        app.sync()?;
        dapp.sync()?;
        let end = app.next();
        let dend = dapp.next();
        // The first decision no index row lists after these batches: the next open reads
        // the decision log from there.
        let decisions_from = dlocs
            .iter()
            .filter(|(u, _)| !dflush.contains(&u.0))
            .chain(dpend.iter().filter(|(u, _)| !dlocs.contains_key(*u)))
            .filter_map(|(_, v)| v.first().map(|l| l.n))
            .min()
            .unwrap_or(dend);
        let replay_from = {
            let cov = self.coverage.lock().unwrap_or_else(|p| p.into_inner());
            cov.iter()
                .filter(|(u, _)| !delta.contains_key(*u))
                .map(|(_, (n, _))| *n)
                .chain(delta.values().flatten().map(|(n, _)| *n))
                .min()
                .unwrap_or(end)
        };
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut users = txn.open_table(USERS)?;
            let mut heads = txn.open_table(HEADS)?;
            let mut runs = txn.open_table(SEEN_RUNS)?;
            let mut dindex = txn.open_table(DECISION_INDEX)?;
            let mut learn = txn.open_table(LEARN)?;
            // Each table's rows in key order (stable: a later batch's checkpoint of a user
            // wins): a B-tree takes sorted inserts leaf by leaf, with the path to the leaf
            // still in cache, instead of jumping across the file for every row.
            type ById = ([u8; 16], [u8; 16]);
            let mut lr: Vec<(ById, &[u8])> = Vec::new();
            let mut cp: Vec<([u8; 16], u64, &[u8])> = Vec::new();
            for r in &rows {
                let u = r.row.0;
                lr.extend(r.learn.iter().map(|(id, rec)| ((u, *id), rec.as_slice())));
                if let Some((head, rec)) = &r.checkpoint {
                    cp.push((u, *head, rec.as_slice()));
                }
            }
            lr.sort_by_key(|r| r.0);
            cp.sort_by_key(|r| r.0);
            let (now, epoch) = (super::now_ms(), self.run_epoch_ms());
            for (u, fps) in new_runs {
                add_run(&mut runs, u, fps, now, epoch)?;
            }
            for u in &dflush {
                let locs = &dlocs[&RowId(*u)];
                if let Some(first) = locs.first() {
                    let mut v = Vec::with_capacity(locs.len() * 16);
                    for l in locs {
                        l.encode(&mut v);
                    }
                    dindex.insert((*u, first.n), v.as_slice())?;
                }
            }
            for (k, rec) in lr {
                learn.insert(k, rec)?;
            }
            for (u, _, rec) in &cp {
                users.insert(*u, *rec)?;
            }
            for (u, head, _) in cp {
                heads.insert(u, head)?;
            }
            if !sums.is_empty() {
                let mut t = txn.open_table(STATS)?;
                for ((g, seg, arm, metric), d) in sums {
                    let k = (g.as_str(), seg.as_str(), arm.as_str(), metric.as_str());
                    let mut cur = t.get(k)?.map(|v| v.value()).unwrap_or([0.0; 6]);
                    for (c, x) in cur.iter_mut().zip(d) {
                        *c += x;
                    }
                    t.insert(k, cur)?;
                }
            }
            let mut meta = txn.open_table(super::META)?;
            meta.insert("applied_wal", &last.to_le_bytes()[..])?;
            meta.insert("events_end", &end.to_le_bytes()[..])?;
            meta.insert("replay_from", &replay_from.to_le_bytes()[..])?;
            meta.insert("decisions_end", &dend.to_le_bytes()[..])?;
            meta.insert("decisions_from", &decisions_from.to_le_bytes()[..])?;
            meta.insert("key_slots", &self.keys.durable_slots().to_le_bytes()[..])?;
        }
        // From here on the transaction may land on disk even if `commit` reports an error (a
        // failed fsync leaves what the file holds unknown, and redb's header write may have
        // reached it): the records just appended must stay, whatever the outcome. The next
        // open keeps them or cuts them off by the `events_end` the database turns out to hold.
        // (Undoing them here lost acknowledged events: the fault test with a failing fsync.)
        app.finish();
        dapp.finish();
        txn.commit()?;
        for (u, v) in dlocs {
            if dflush.contains(&u.0) || v.is_empty() {
                dpend.remove(&u);
            } else {
                dpend.insert(u, v);
            }
        }
        drop(dpend);
        for (u, v) in ids {
            if v.is_empty() {
                pend.remove(&u);
            } else {
                pend.insert(u, v);
            }
        }
        drop(pend);
        {
            let mut cov = self.coverage.lock().unwrap_or_else(|p| p.into_inner());
            for (u, d) in delta {
                match d {
                    Some(n) => {
                        cov.insert(u, n);
                    }
                    None => {
                        cov.remove(&u);
                    }
                }
            }
        }
        self.committed_one();
        Ok(())
    }

    /// [`Store::log`] and [`Store::apply`] at once (tools and tests).
    pub fn commit(
        &self,
        rows: Vec<UserRows>,
        stats: Vec<(StatKey, [f64; 6])>,
    ) -> Result<(), StoreError> {
        let batch = super::Batch { rows, stats };
        let seq = self.log(&batch, 0)?;
        self.apply(&[(seq, batch)])?;
        self.trim_log(seq)
    }

    /// Erases the user from every table. The user's key is destroyed first (overwritten in
    /// place and fsynced, and only then forgotten), so even a crash mid-erasure leaves only
    /// undecryptable bytes under a row id nothing ties to the user any more; then the rows are
    /// deleted in one durable transaction. The user's records in the event store are not
    /// rewritten: without the key they can no longer be opened, nor found. `detached` is the
    /// key the owning shard already detached ([`Store::detach_key`]); else the user's current
    /// key is. Earlier keys of the user still detached (an erasure whose overwrite failed) go
    /// too. `events` of the counts is left 0 (the owning shard knows the number).
    pub fn erase(
        &self,
        user: &UserKey,
        detached: Option<Detached>,
    ) -> Result<EraseCounts, StoreError> {
        if detached.is_none() {
            // (Given, it is among the user's detached keys, with any leftover.)
            self.keys.detach(user);
        }
        self.erase_detached(user)
    }

    /// [`Store::erase`] of the keys the user's shard detached when it accepted the erasure
    /// (with any leftover), never of the current one: a key made after that acceptance
    /// seals records that came after the erasure (the indexer's erasure, which runs later).
    pub fn erase_detached(&self, user: &UserKey) -> Result<EraseCounts, StoreError> {
        let keys = self.keys.detached_of(user);
        let mut counts = EraseCounts {
            key: !keys.is_empty(),
            ..EraseCounts::default()
        };
        for d in &keys {
            self.keys.shred(d.slot)?;
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut users = txn.open_table(USERS)?;
            let mut heads = txn.open_table(HEADS)?;
            let mut runs = txn.open_table(SEEN_RUNS)?;
            let mut decisions = txn.open_table(DECISIONS)?;
            let mut dindex = txn.open_table(DECISION_INDEX)?;
            let mut learn = txn.open_table(LEARN)?;
            let dpend = self
                .pending_decisions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for d in &keys {
                let u = d.row.0;
                let ids = (u, [0u8; 16])..=(u, [0xffu8; 16]);
                counts.state |= users.remove(u)?.is_some();
                heads.remove(u)?;
                runs.retain_in((u, 0u32)..=(u, u32::MAX), |_, _| false)?;
                decisions.retain_in(ids.clone(), |_, _| {
                    counts.decisions += 1;
                    false
                })?;
                // The decision log's records stay, unreadable without the key; where they
                // are goes.
                dindex.retain_in((u, 0)..=(u, u64::MAX), |_, v| {
                    counts.decisions += (v.len() / 16) as u64;
                    false
                })?;
                counts.decisions += dpend.get(&d.row).map_or(0, |v| v.len() as u64);
                learn.retain_in(ids, |_, _| {
                    counts.learn += 1;
                    false
                })?;
            }
        }
        txn.commit()?;
        // Nothing of the user is left to replay: its records no longer hold recovery back.
        for d in &keys {
            self.coverage
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&d.row);
            self.recovered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&d.row);
            self.pending_ids
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&d.row);
            self.pending_decisions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&d.row);
        }
        self.committed_one();
        Ok(counts)
    }
}

/// Adds a run of fingerprints, added at `now` (ms), to the user's `seen_runs`, merging it
/// with the newest runs while the newest is at most twice as large as what is being added
/// (so sizes fall geometrically from the oldest run to the newest) and of the same epoch
/// (`now / epoch_ms`; 0: one epoch), so that retention can drop old ids by whole runs.
fn add_run(
    runs: &mut redb::Table<([u8; 16], u32), &[u8]>,
    user: [u8; 16],
    mut fps: Vec<u64>,
    now: u64,
    epoch_ms: u64,
) -> Result<(), StoreError> {
    if fps.is_empty() {
        return Ok(());
    }
    let epoch = |ms: u64| ms.checked_div(epoch_ms).unwrap_or(0);
    let mut have: Vec<(u32, usize, u64)> = Vec::new();
    for row in runs.range((user, 0u32)..=(user, u32::MAX))? {
        let (k, v) = row?;
        let v = v.value();
        have.push((k.value().1, super::run_fps(v).len() / 8, super::run_time(v)));
    }
    let mut next = have.last().map_or(0, |(n, _, _)| n + 1);
    while let Some(&(n, len, t)) = have.last() {
        if len > 2 * fps.len() || epoch(t) != epoch(now) {
            break;
        }
        if let Some(v) = runs.remove((user, n))? {
            let b = super::run_fps(v.value());
            fps.extend(
                b.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
            );
        }
        have.pop();
        next = n;
    }
    runs.insert((user, next), encode_run(fps, now).as_slice())?;
    Ok(())
}
