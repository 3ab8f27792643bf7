//! Writing: the group commit ([`Store::commit`]) and erasure. Writer thread only.

use redb::{Durability, ReadableTable};

use super::{
    EraseCounts, StatKey, Store, StoreError, DECISIONS, EVENTS, HEADS, JOURNAL, LEARN, SEEN, STATS,
    USERS,
};
use crate::privacy::UserKey;

/// Everything one group commit writes for one user; every value is already sealed with the
/// user's key (shards seal, so that work is spread over their threads).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct UserRows {
    pub user: UserKey,
    /// (seq, keyed id hash, sealed event): appended to the log, and the id marked seen.
    pub events: Vec<(u64, [u8; 16], Vec<u8>)>,
    /// (seq, sealed journal record).
    pub journal: Vec<(u64, Vec<u8>)>,
    /// (decision id, sealed decision).
    pub decisions: Vec<([u8; 16], Vec<u8>)>,
    /// (decision id, sealed learning record): inserted or replaced.
    pub learn: Vec<([u8; 16], Vec<u8>)>,
    /// (head, sealed state): a new checkpoint covering every seq below `head`.
    pub checkpoint: Option<(u64, Vec<u8>)>,
}

impl UserRows {
    pub fn new(user: UserKey) -> UserRows {
        UserRows {
            user,
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

impl Store {
    /// Detaches the user's key at once (see [`crate::privacy::KeyStore::detach`]): the owning
    /// shard calls this when it accepts an erasure, so records it seals afterwards use a new
    /// key; the writer then erases with the returned slot.
    pub fn detach_key(&self, user: &UserKey) -> Option<u64> {
        self.keys.detach(user)
    }

    /// Applies logged batches to the indexed store in **one** transaction, and records the last
    /// one's seq as applied. Many batches at once touch each B-tree page once; statistics are
    /// summed first, so each is read and written once. With `durable = false` the transaction
    /// is visible to readers at once but reaches the disk only with the next durable one: the
    /// log must keep these batches until then. Indexer thread only (and recovery at open).
    pub fn apply(
        &self,
        batches: &[(u64, impl std::borrow::Borrow<super::Batch>)],
        durable: bool,
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
        let mut txn = self.db.begin_write()?;
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        {
            let mut users = txn.open_table(USERS)?;
            let mut heads = txn.open_table(HEADS)?;
            let mut events = txn.open_table(EVENTS)?;
            let mut journal = txn.open_table(JOURNAL)?;
            let mut seen = txn.open_table(SEEN)?;
            let mut decisions = txn.open_table(DECISIONS)?;
            let mut learn = txn.open_table(LEARN)?;
            // Each table's rows in key order (stable: a later batch's checkpoint of a user
            // wins): a B-tree takes sorted inserts leaf by leaf, with the path to the leaf
            // still in cache, instead of jumping across the file for every row.
            let rows: Vec<&super::UserRows> = batches
                .iter()
                .flat_map(|(_, b)| b.borrow().rows.iter())
                .collect();
            type BySeq = ([u8; 16], u64);
            type ById = ([u8; 16], [u8; 16]);
            let mut ev: Vec<(BySeq, &[u8])> = Vec::new();
            let mut sn: Vec<(ById, u64)> = Vec::new();
            let mut jr: Vec<(BySeq, &[u8])> = Vec::new();
            let mut dc: Vec<(ById, &[u8])> = Vec::new();
            let mut lr: Vec<(ById, &[u8])> = Vec::new();
            let mut cp: Vec<([u8; 16], u64, &[u8])> = Vec::new();
            for r in &rows {
                let u = r.user.0;
                for (seq, idh, rec) in &r.events {
                    ev.push(((u, *seq), rec.as_slice()));
                    sn.push(((u, *idh), *seq));
                }
                jr.extend(
                    r.journal
                        .iter()
                        .map(|(seq, rec)| ((u, *seq), rec.as_slice())),
                );
                dc.extend(
                    r.decisions
                        .iter()
                        .map(|(id, rec)| ((u, *id), rec.as_slice())),
                );
                lr.extend(r.learn.iter().map(|(id, rec)| ((u, *id), rec.as_slice())));
                if let Some((head, rec)) = &r.checkpoint {
                    cp.push((u, *head, rec.as_slice()));
                }
            }
            ev.sort_by_key(|r| r.0);
            sn.sort_by_key(|r| r.0);
            jr.sort_by_key(|r| r.0);
            dc.sort_by_key(|r| r.0);
            lr.sort_by_key(|r| r.0);
            cp.sort_by_key(|r| r.0);
            for (k, rec) in ev {
                events.insert(k, rec)?;
            }
            for (k, seq) in sn {
                seen.insert(k, seq)?;
            }
            for (k, rec) in jr {
                journal.insert(k, rec)?;
            }
            for (k, rec) in dc {
                decisions.insert(k, rec)?;
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
            txn.open_table(super::META)?
                .insert("applied_wal", &last.to_le_bytes()[..])?;
        }
        txn.commit()?;
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
        self.apply(&[(seq, batch)], true)?;
        self.trim_log(seq)
    }

    /// Erases the user from every table. The user's key is destroyed first (overwritten in
    /// place and fsynced), so even a crash mid-erasure leaves only undecryptable bytes; then the
    /// rows are deleted in one durable transaction. `detached` is the key's slot when the
    /// owning shard already detached it ([`Store::detach_key`]); else the key is looked up.
    pub fn erase(&self, user: &UserKey, detached: Option<u64>) -> Result<EraseCounts, StoreError> {
        let slot = detached.or_else(|| self.keys.detach(user));
        if let Some(s) = slot {
            self.keys.shred(s)?;
        }
        let mut counts = EraseCounts {
            key: slot.is_some(),
            ..EraseCounts::default()
        };
        let u = user.0;
        let ids = (u, [0u8; 16])..=(u, [0xffu8; 16]);
        let seqs = (u, 0u64)..=(u, u64::MAX);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            counts.state = txn.open_table(USERS)?.remove(u)?.is_some();
            txn.open_table(HEADS)?.remove(u)?;
            let mut n = 0;
            txn.open_table(EVENTS)?.retain_in(seqs.clone(), |_, _| {
                n += 1;
                false
            })?;
            counts.events = n;
            txn.open_table(JOURNAL)?.retain_in(seqs, |_, _| false)?;
            txn.open_table(SEEN)?.retain_in(ids.clone(), |_, _| false)?;
            let mut d = 0;
            txn.open_table(DECISIONS)?.retain_in(ids.clone(), |_, _| {
                d += 1;
                false
            })?;
            counts.decisions = d;
            let mut l = 0;
            txn.open_table(LEARN)?.retain_in(ids, |_, _| {
                l += 1;
                false
            })?;
            counts.learn = l;
        }
        txn.commit()?;
        self.committed_one();
        Ok(counts)
    }
}
