//! The write-ahead log: append-only segment files in `wal/` of the data dir. A group commit is
//! one record appended to the current segment and one `fdatasync` — no B-tree, no page
//! copies, however many users the batch holds. Applied records are dropped a segment at a
//! time (a segment is deleted once every record in it is applied).
//!
//! A segment is named after the seq of its first record (`00000000000000000042.wal`) and
//! holds records back to back, each `[len: u32][crc32: u32][seq: u64][payload: len bytes]`
//! (little endian; the CRC covers seq and payload; the payload is the postcard-encoded
//! [`Batch`]). Reading a segment stops at the first record that is short or fails its CRC: a
//! crash mid-append leaves at most such a torn record at the end, and it was never
//! acknowledged. A failed append is cut off again (or, if that fails too, the segment is
//! closed and the next append starts a new one), so records after a torn one are never lost.
//!
//! **Recycled segments.** A segment whose records are all applied is not deleted but kept as
//! the spare (`spare.tmp`, one at most) and renamed to become the next segment: appending into
//! blocks the file already has is an overwrite, so the record's `fdatasync` writes the data
//! block alone, where an append that grows the file also writes the inode (size, extents)
//! synchronously — two device writes per group commit instead of one (perf, the WebSocket loop:
//! the writer's time was mostly those two I/Os). What the spare held before is never read as
//! data: records within a segment carry consecutive seqs starting at the one the file is named
//! after, every older record has a smaller seq, and reading stops at the first record that is
//! not the expected next one. A segment is cut to its length when the next one starts, so only
//! the newest can end in stale bytes; they are cut off at open like a torn record.
//!
//! **Zeroed ahead.** A segment that is not a recycled one (the first of a new data dir, or
//! one started while no spare was free) is grown [`ZERO_AHEAD`] at a time: the group commit
//! whose record passes the end of the blocks written so far also writes zeros past it, in the
//! same `fdatasync`. The appends that follow land in those blocks — overwrites, one device
//! write each, as in a recycled segment — so a fresh log pays the inode's write once a
//! mebibyte rather than once a commit. Zeros are no record (their CRC does not match): reading
//! stops there, open cuts them off the newest segment, and the next segment cuts them off the
//! one before.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{StatKey, StoreError, UserRows};

/// A new segment is started once the current one is this large.
const SEGMENT_BYTES: u64 = 32 << 20;
/// A record longer than this is damage, not data (a batch is bounded far below it).
const MAX_RECORD: u32 = 1 << 30;
const HEADER: usize = 16;
/// The recycled segment waiting to become the next one.
const SPARE: &str = "spare.tmp";
/// How far past its last record a segment that is not recycled is written with zeros.
const ZERO_AHEAD: u64 = 1 << 20;
/// Zeros to write from.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

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

/// One segment file: records `first..=last` (`last < first` while it is empty).
struct Segment {
    first: u64,
    last: u64,
    path: PathBuf,
}

struct Inner {
    /// Oldest first; the last one is the one appended to (when `current` is open).
    segments: Vec<Segment>,
    /// The open end of the last segment: the file, the length of its records, and the
    /// length of the blocks written in it (records, then zeros or a recycled file's old bytes).
    current: Option<Current>,
    /// Seq of the next appended record.
    next: u64,
    /// Records up to here are applied (may be dropped).
    trimmed: u64,
    /// Reused encoding buffer.
    buf: Vec<u8>,
    /// An applied segment's file, renamed to be reused as the next segment.
    spare: Option<PathBuf>,
}

struct Current {
    file: File,
    len: u64,
    written: u64,
}

pub(super) struct Log {
    dir: PathBuf,
    /// A new segment is started once the current one is this large.
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Db(format!("write-ahead log {}: {what}: {e}", path.display()))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// Makes the directory's entries (a created or deleted segment) durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "sync", e))
}

/// What [`scan`] found in one segment.
struct Scanned {
    /// `(seq, payload)` in order.
    records: Vec<(u64, Vec<u8>)>,
    /// Byte length of the valid prefix.
    valid: u64,
    /// Whether something other than whole records follows it.
    damaged: bool,
    /// Whether anything at all follows it (damage or a recycled file's old bytes).
    trailing: bool,
}

/// Writes zeros over `range` of `file`.
fn write_zeros(file: &File, range: std::ops::Range<u64>) -> std::io::Result<()> {
    let mut at = range.start;
    while at < range.end {
        let n = (range.end - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Reads the valid records of the segment whose first record is `first`. Stops at the first
/// short or damaged record, and at the first whole record whose seq is not the next one (what
/// a recycled file held before: not damage).
fn scan(path: &Path, first: u64) -> Result<Scanned, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(path, "read", e))?;
    let mut out = Vec::new();
    let mut at = 0usize;
    let damaged = loop {
        if at == bytes.len() {
            break false;
        }
        let expected = first + out.len() as u64;
        let Some(h) = bytes.get(at..at + HEADER) else {
            break true;
        };
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            break true;
        }
        let end = at + HEADER + len as usize;
        let Some(body) = bytes.get(at + 8..end) else {
            break true;
        };
        if crc32fast::hash(body) != crc {
            break true;
        }
        let seq = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
        if seq != expected {
            // A whole record of the file's earlier life as another segment: the end.
            break false;
        }
        out.push((seq, body[8..].to_vec()));
        at = end;
    };
    // Zeros written ahead of the records are no damage.
    let damaged = damaged && bytes[at..].iter().any(|b| *b != 0);
    Ok(Scanned {
        records: out,
        valid: at as u64,
        damaged,
        trailing: at < bytes.len(),
    })
}

impl Log {
    /// Opens (creating) the log in `dir`. `applied` is the last seq the indexed store holds:
    /// new records get seqs above it even when every segment has been dropped. A torn record
    /// at the end of the newest segment (a crash mid-append) is cut off.
    pub(super) fn open(dir: &Path, applied: u64) -> Result<Log, StoreError> {
        Log::open_sized(dir, applied, SEGMENT_BYTES)
    }

    /// [`Log::open`] with segments of `segment_bytes` (tests use small ones).
    pub(super) fn open_sized(
        dir: &Path,
        applied: u64,
        segment_bytes: u64,
    ) -> Result<Log, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create", e))?;
        let spare = dir.join(SPARE);
        let spare = spare.exists().then_some(spare);
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, "list", e))? {
            let entry = entry.map_err(|e| io_err(dir, "list", e))?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            firsts.push(first);
        }
        firsts.sort_unstable();
        let mut segments = Vec::with_capacity(firsts.len());
        for (i, first) in firsts.iter().enumerate() {
            let path = dir.join(segment_name(*first));
            let Scanned {
                records,
                valid,
                damaged,
                trailing,
            } = scan(&path, *first)?;
            let newest = i + 1 == firsts.len();
            if trailing && newest {
                // A torn append (never acknowledged), or a recycled file's old bytes past the
                // last record. Cut it off so nothing but valid data precedes the next start.
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| {
                        f.set_len(valid)?;
                        f.sync_all()
                    })
                    .map_err(|e| io_err(&path, "truncate", e))?;
            } else if damaged {
                tracing::error!(segment = %path.display(), valid_bytes = valid,
                    "write-ahead log segment is damaged; records after the damage are skipped");
            }
            let last = records.last().map_or(first.saturating_sub(1), |r| r.0);
            segments.push(Segment {
                first: *first,
                last,
                path,
            });
        }
        let last = segments.iter().map(|s| s.last).max().unwrap_or(0);
        let log = Log {
            dir: dir.to_path_buf(),
            segment_bytes,
            inner: Mutex::new(Inner {
                segments,
                current: None,
                next: last + 1,
                trimmed: 0,
                buf: Vec::new(),
                spare,
            }),
        };
        log.number_past(applied);
        Ok(log)
    }

    /// Records up to `applied` are in the indexed store: they count as applied, and new
    /// records get seqs above it.
    pub(super) fn number_past(&self, applied: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.next = g.next.max(applied + 1);
        g.trimmed = g.trimmed.max(applied);
    }

    /// Appends `batch` durably (one write, one `fdatasync`) and drops segments applied up to
    /// `trim`; returns the batch's seq.
    pub(super) fn append(&self, batch: &Batch, trim: u64) -> Result<u64, StoreError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        let seq = inner.next;
        inner.buf.clear();
        inner.buf.extend_from_slice(&[0u8; 8]);
        inner.buf.extend_from_slice(&seq.to_le_bytes());
        // Plain data: postcard into a Vec cannot fail.
        let mut buf = postcard::to_extend(batch, std::mem::take(&mut inner.buf))
            .expect("Batch is postcard-serialisable");
        let len = u32::try_from(buf.len() - HEADER)
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| StoreError::Db("a group commit is larger than 1 GiB".into()))?;
        let crc = crc32fast::hash(&buf[8..]);
        buf[0..4].copy_from_slice(&len.to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        let result = self.write(inner, seq, &buf);
        inner.buf = buf;
        if result.is_err() && inner.current.is_none() {
            // The segment was closed (its end may hold a torn record): skip this seq, so the
            // next append starts a segment of a new name instead of reopening that one.
            inner.next = seq + 1;
        }
        result?;
        inner.next = seq + 1;
        if trim > inner.trimmed {
            inner.trimmed = trim;
            self.drop_applied(inner)?;
        }
        Ok(seq)
    }

    fn write(&self, inner: &mut Inner, seq: u64, record: &[u8]) -> Result<(), StoreError> {
        let rotate = inner
            .current
            .as_ref()
            .is_none_or(|c| c.len >= self.segment_bytes);
        if rotate {
            if let Some(old) = inner.current.take() {
                // Only the newest segment may end in a recycled file's old bytes or zeros.
                let _ = old.file.set_len(old.len).and_then(|()| old.file.sync_all());
            }
            let path = self.dir.join(segment_name(seq));
            // A segment of this name exists only when it holds no record yet (created, then a
            // crash or a failed first append; cut to its valid length): go on in it.
            let existing = inner.segments.last().is_some_and(|s| s.path == path);
            if !existing {
                if let Some(spare) = inner.spare.take() {
                    if let Err(e) = std::fs::rename(&spare, &path) {
                        tracing::warn!(error = %e, "cannot reuse the spare log segment; starting a new file");
                        let _ = std::fs::remove_file(&spare);
                    }
                }
            }
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, "create", e))?;
            let size = file.metadata().map_err(|e| io_err(&path, "stat", e))?.len();
            // A recycled file is overwritten from its start; an existing segment (cut to its
            // valid length at open) is appended to.
            let len = if existing { size } else { 0 };
            sync_dir(&self.dir)?;
            if inner.segments.last().is_none_or(|s| s.path != path) {
                inner.segments.push(Segment {
                    first: seq,
                    last: seq - 1,
                    path,
                });
            }
            inner.current = Some(Current {
                file,
                len,
                written: size,
            });
        }
        let cur = inner.current.as_mut().expect("opened above");
        let end = cur.len + record.len() as u64;
        // Past the written blocks: zeros ahead, made durable with the record (module doc).
        let zeros = if end > cur.written {
            end..(end + ZERO_AHEAD).min(self.segment_bytes).max(end)
        } else {
            end..end
        };
        let written = cur.file.write_all_at(record, cur.len).and_then(|()| {
            // The zeros are a saving, not data: a disk too full for them still takes the
            // record (what part of them was written is zeros either way).
            let zeroed = write_zeros(&cur.file, zeros.clone()).is_ok();
            cur.file.sync_data().map(|()| zeroed)
        });
        match written {
            Ok(zeroed) => {
                cur.len = end;
                cur.written = cur.written.max(if zeroed { zeros.end } else { end });
                if let Some(s) = inner.segments.last_mut() {
                    s.last = seq;
                }
                Ok(())
            }
            Err(e) => {
                // Cut the partial record off; if even that fails, the next append starts a
                // new segment (under the next seq's name), so nothing valid ever follows a
                // torn record.
                let prev = cur.len;
                cur.written = prev;
                if cur
                    .file
                    .set_len(prev)
                    .and_then(|()| cur.file.sync_data())
                    .is_err()
                {
                    inner.current = None;
                }
                let path = inner.segments.last().map(|s| s.path.clone());
                Err(io_err(&path.unwrap_or_default(), "append", e))
            }
        }
    }

    /// Deletes the segments whose every record is applied (the current one too, once it is
    /// entirely applied: the next append starts a new one).
    fn drop_applied(&self, inner: &mut Inner) -> Result<(), StoreError> {
        let trimmed = inner.trimmed;
        let mut dropped = false;
        while inner.segments.first().is_some_and(|s| s.last <= trimmed) {
            if inner.segments.len() == 1 {
                inner.current = None; // the next append starts a new segment
            }
            let s = inner.segments.remove(0);
            if inner.spare.is_none() {
                let spare = self.dir.join(SPARE);
                std::fs::rename(&s.path, &spare).map_err(|e| io_err(&s.path, "recycle", e))?;
                inner.spare = Some(spare);
            } else {
                std::fs::remove_file(&s.path).map_err(|e| io_err(&s.path, "remove", e))?;
            }
            dropped = true;
        }
        if dropped {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the recycled segment kept for reuse (its old records' bytes with it).
    pub(super) fn drop_spare(&self) -> Result<(), StoreError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(spare) = g.spare.take() {
            std::fs::remove_file(&spare).map_err(|e| io_err(&spare, "remove", e))?;
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Every batch after `seq`, in order. A record that does not decode (a damaged file) is
    /// reported and skipped.
    pub(super) fn read_after(&self, seq: u64) -> Result<Vec<(u64, Batch)>, StoreError> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for s in g.segments.iter().filter(|s| s.last > seq) {
            for (k, v) in scan(&s.path, s.first)?.records {
                if k <= seq {
                    continue;
                }
                out.extend(decode(k, &v));
            }
        }
        Ok(out)
    }

    /// Marks records up to `upto` applied and deletes the segments that holds only those.
    pub(super) fn trim(&self, upto: u64) -> Result<(), StoreError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if upto > g.trimmed {
            g.trimmed = upto;
        }
        self.drop_applied(&mut g)
    }

    /// Segment files (for tests and diagnostics).
    #[cfg(test)]
    pub(super) fn segments(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .segments
            .len()
    }

    /// Records in the log not yet applied.
    pub(super) fn len(&self) -> Result<u64, StoreError> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let from = g.trimmed + 1;
        Ok(g.segments
            .iter()
            .filter(|s| s.last >= from.max(s.first))
            .map(|s| s.last - from.max(s.first) + 1)
            .sum())
    }
}

/// The record `seq` as a batch; one that does not decode (a damaged file) is reported and
/// skipped.
fn decode(seq: u64, bytes: &[u8]) -> Option<(u64, Batch)> {
    match postcard::from_bytes::<Batch>(bytes) {
        Ok(b) => Some((seq, b)),
        Err(e) => {
            tracing::error!(seq, error = %e, "write-ahead log record does not decode; skipped");
            None
        }
    }
}

/// The unapplied tail (records after `applied`) of a log written by an earlier version, a
/// redb file with one table `wal: u64 → batch`.
pub(super) fn read_legacy(
    db: &redb::Database,
    applied: u64,
) -> Result<Vec<(u64, Batch)>, StoreError> {
    use redb::{ReadableDatabase, TableDefinition};
    const WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");
    let txn = db.begin_read()?;
    let t = match txn.open_table(WAL) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in t.range(applied.saturating_add(1)..)? {
        let (k, v) = row?;
        out.extend(decode(k.value(), v.value()));
    }
    Ok(out)
}
