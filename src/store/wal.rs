//! The write-ahead log (`wal.redb`): one table of group-commit batches by seq. Appending is one
//! insert at the end of the table; applied entries are trimmed from the front.

use std::sync::atomic::{AtomicU64, Ordering};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use super::{StatKey, StoreError, UserRows};

const WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");

/// What one group commit writes: every user's rows (sealed) and the statistic deltas.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Batch {
    pub rows: Vec<UserRows>,
    pub stats: Vec<(StatKey, [f64; 6])>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.stats.is_empty()
    }

    /// Bytes of sealed records in the batch (what it weighs in memory, about).
    pub fn bytes(&self) -> usize {
        self.rows
            .iter()
            .map(|r| {
                r.events.iter().map(|(_, _, v)| v.len() + 24).sum::<usize>()
                    + r.journal.iter().map(|(_, v)| v.len() + 8).sum::<usize>()
                    + r.decisions.iter().map(|(_, v)| v.len() + 16).sum::<usize>()
                    + r.learn.iter().map(|(_, v)| v.len() + 16).sum::<usize>()
                    + r.checkpoint.as_ref().map_or(0, |(_, v)| v.len() + 8)
                    + 64
            })
            .sum()
    }

    /// Events in the batch.
    pub fn events(&self) -> usize {
        self.rows.iter().map(|r| r.events.len()).sum()
    }
}

pub(super) struct Log {
    db: Database,
    /// Seq of the next appended batch.
    next: AtomicU64,
    /// Entries up to here are trimmed already.
    trimmed: AtomicU64,
}

impl Log {
    pub(super) fn open(db: Database) -> Result<Log, StoreError> {
        let txn = db.begin_write()?;
        txn.open_table(WAL)?;
        txn.commit()?;
        let last = {
            let txn = db.begin_read()?;
            let t = txn.open_table(WAL)?;
            let last = t.last()?.map(|(k, _)| k.value());
            last
        };
        Ok(Log {
            db,
            next: AtomicU64::new(last.map_or(1, |l| l + 1)),
            trimmed: AtomicU64::new(0),
        })
    }

    /// Appends `batch` durably and drops entries up to `trim`; returns the batch's seq.
    pub(super) fn append(&self, batch: &Batch, trim: u64) -> Result<u64, StoreError> {
        // Plain data: postcard into a Vec cannot fail.
        let bytes = postcard::to_allocvec(batch).expect("Batch is postcard-serialisable");
        let seq = self.next.load(Ordering::Relaxed);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut t = txn.open_table(WAL)?;
            t.insert(seq, bytes.as_slice())?;
            let from = self.trimmed.load(Ordering::Relaxed);
            if trim > from {
                t.retain_in(from + 1..=trim, |_, _| false)?;
            }
        }
        txn.commit()?;
        self.next.store(seq + 1, Ordering::Relaxed);
        self.trimmed.fetch_max(trim, Ordering::Relaxed);
        Ok(seq)
    }

    /// Every batch after `seq`, in order. A batch that does not decode (a damaged file) is
    /// reported and skipped.
    pub(super) fn read_after(&self, seq: u64) -> Result<Vec<(u64, Batch)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(WAL)?;
        let mut out = Vec::new();
        for row in t.range(seq.saturating_add(1)..)? {
            let (k, v) = row?;
            match postcard::from_bytes::<Batch>(v.value()) {
                Ok(b) => out.push((k.value(), b)),
                Err(e) => {
                    tracing::error!(seq = k.value(), error = %e, "write-ahead log entry does not decode; skipped")
                }
            }
        }
        Ok(out)
    }

    /// Drops entries up to `upto`.
    pub(super) fn trim(&self, upto: u64) -> Result<(), StoreError> {
        if upto == 0 {
            return Ok(());
        }
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(WAL)?.retain_in(..=upto, |_, _| false)?;
        txn.commit()?;
        self.trimmed.fetch_max(upto, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(WAL)?.len()?)
    }
}
