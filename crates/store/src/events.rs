//! The event store: every user's events and journal records, in the order they were logged,
//! in append-only segment files (`events/` in the data dir). The indexer appends each logged
//! batch's records here ([`super::Store::apply`]) instead of inserting them into B-trees keyed
//! by user: a copy-on-write B-tree rewrites every leaf an insert lands in, and with thousands
//! of users active per second nearly every leaf of a user-keyed table was rewritten by every
//! index transaction, a cost that grew with the table (the indexer was 43% of the server's
//! CPU under HTTP load, most of it redb's page writes of `events`). Appending is one
//! sequential write and one `fdatasync` per index transaction.
//!
//! Records are numbered (`n`, consecutive over the whole store); a segment is named after its
//! first record's number (`00000000000000000042.evs`) and holds records back to back, each
//! `[len: u32][crc32: u32][n: u64][kind: u8][row: 16][seq: u64][id hash: 16][sealed bytes]`
//! (little endian; the CRC covers everything after it; `row` is the user's row id, never the
//! user key; the sealed bytes are sealed by the shard with the user's key, as every record at
//! rest). `meta.events_end` in `trimtab.redb`
//! is the number of the first record not (yet) made part of the indexed store: it is written
//! in the same transaction as `applied_wal`, after the records are durable here, and at open
//! whatever lies past it is cut off (the write-ahead log applies those batches again).
//!
//! Reading a user's records means scanning: export (every segment), the log tail of a user
//! whose checkpoint does not cover all its records (from the first uncovered record, which
//! the store tracks, see [`super::Store`]), recovery (from `meta.replay_from`). Erasure
//! destroys the user's key, so the user's records here can no longer be opened.
//!
//! The same type keeps **the decision log** (`decisions/`, records of kind
//! [`Kind::Decision`]), which is read by location ([`EventLog::read_at`]) rather than scanned,
//! and never purged.
//!
//! Threads: the indexer is the only appender (and recovery at open); scans may run on any
//! thread and see the records appended before they started.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::StoreError;
use trimtab_privacy::RowId;

/// A new segment is started once the current one is this large.
const SEGMENT_BYTES: u64 = 32 << 20;
/// `len` + `crc`.
const FRAME: usize = 8;
/// `n` + `kind` + `row` + `seq` + `id hash`.
const META: usize = 8 + 1 + 16 + 8 + 16;
/// A record longer than this is damage, not data.
const MAX_RECORD: u32 = 1 << 26;
/// An appender writes its records out once this many bytes are pending (and at
/// [`Appender::sync`]): an index transaction of a busy second is tens of MB of records, which
/// built up whole meant a buffer grown by doubling (every byte copied again) in fresh pages
/// the kernel zeroes first, then freed (perf, HTTP ingest: 5 – 7% of the server's CPU).
pub(super) const WRITE_CHUNK: usize = 1 << 20;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A sealed event (`id hash` is the keyed hash of its id).
    Event = 1,
    /// A sealed journal record (effects of an evaluation at `seq`).
    Journal = 2,
    /// A sealed decision (`id hash` is the decision's id), in the decision log.
    Decision = 3,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Event),
            2 => Some(Kind::Journal),
            3 => Some(Kind::Decision),
            _ => None,
        }
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub n: u64,
    pub kind: Kind,
    pub row: RowId,
    pub seq: u64,
    pub id_hash: [u8; 16],
    pub sealed: Vec<u8>,
}

struct Segment {
    first: u64,
    path: PathBuf,
}

struct Inner {
    segments: Vec<Segment>,
    /// The open end of the last segment and its length.
    current: Option<(File, u64)>,
    /// When the open segment was started (a segment older than `rotate_after` is closed at
    /// the next append, so that retention can drop it whole).
    started: Option<std::time::Instant>,
    rotate_after: Option<std::time::Duration>,
    /// Number of the next record.
    next: u64,
}

pub(super) struct EventLog {
    dir: PathBuf,
    segment_bytes: u64,
    inner: Mutex<Inner>,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StoreError {
    StoreError::Db(format!("event store {}: {what}: {e}", path.display()))
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.evs")
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, "sync", e))
}

/// Walks the records of one segment's bytes whose numbers start at `first` and stay below
/// `end`; calls `f(record, byte offset after it)` for each. Returns the byte length of the
/// valid prefix. Stops at a short, damaged or out-of-sequence record.
fn walk(bytes: &[u8], first: u64, end: u64, mut f: impl FnMut(RecordRef<'_>, usize)) -> usize {
    let mut at = 0usize;
    let mut expect = first;
    while expect < end {
        let Some(h) = bytes.get(at..at + FRAME) else {
            break;
        };
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD || (len as usize) < META {
            break;
        }
        let stop = at + FRAME + len as usize;
        let Some(body) = bytes.get(at + FRAME..stop) else {
            break;
        };
        if crc32fast::hash(body) != crc {
            break;
        }
        let r = RecordRef::parse(body);
        match r {
            Some(r) if r.n == expect => f(r, stop),
            _ => break,
        }
        at = stop;
        expect += 1;
    }
    at
}

/// A record borrowed from a segment's bytes.
pub struct RecordRef<'a> {
    pub n: u64,
    pub kind: Kind,
    pub row: RowId,
    pub seq: u64,
    pub id_hash: [u8; 16],
    pub sealed: &'a [u8],
}

impl<'a> RecordRef<'a> {
    fn parse(body: &'a [u8]) -> Option<RecordRef<'a>> {
        let n = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
        let kind = Kind::from_u8(*body.get(8)?)?;
        let row = RowId(body.get(9..25)?.try_into().ok()?);
        let seq = u64::from_le_bytes(body.get(25..33)?.try_into().ok()?);
        let id_hash = body.get(33..49)?.try_into().ok()?;
        Some(RecordRef {
            n,
            kind,
            row,
            seq,
            id_hash,
            sealed: body.get(META..)?,
        })
    }

    pub fn to_owned(&self) -> Record {
        Record {
            n: self.n,
            kind: self.kind,
            row: self.row,
            seq: self.seq,
            id_hash: self.id_hash,
            sealed: self.sealed.to_vec(),
        }
    }
}

/// Bytes read at a record's location in one call ([`EventLog::read_at`]).
const READ_AHEAD: usize = 1024;

/// Reads into `buf` from `at` until it is full or the file ends; returns how many bytes.
fn read_up_to(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], at + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn read_all(path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| io_err(path, "read", e))?;
    Ok(bytes)
}

impl EventLog {
    /// Opens (creating) the store in `dir`, keeping records below `end` (the indexed store's
    /// `events_end`) and cutting off what follows them.
    pub(super) fn open(dir: &Path, end: u64) -> Result<EventLog, StoreError> {
        EventLog::open_sized(dir, end, SEGMENT_BYTES)
    }

    pub(super) fn open_sized(
        dir: &Path,
        end: u64,
        segment_bytes: u64,
    ) -> Result<EventLog, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create", e))?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, "list", e))? {
            let entry = entry.map_err(|e| io_err(dir, "list", e))?;
            let name = entry.file_name();
            if let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".evs"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = Vec::new();
        let mut removed = false;
        for first in firsts {
            let path = dir.join(segment_name(first));
            if first >= end {
                // Appended by an index transaction that never committed.
                std::fs::remove_file(&path).map_err(|e| io_err(&path, "remove", e))?;
                removed = true;
                continue;
            }
            segments.push(Segment { first, path });
        }
        let mut next = end;
        if let Some(last) = segments.last() {
            let bytes = read_all(&last.path)?;
            let mut count = 0u64;
            let valid = walk(&bytes, last.first, end, |_, _| count += 1);
            if (valid as u64) < bytes.len() as u64 {
                OpenOptions::new()
                    .write(true)
                    .open(&last.path)
                    .and_then(|f| {
                        f.set_len(valid as u64)?;
                        f.sync_all()
                    })
                    .map_err(|e| io_err(&last.path, "truncate", e))?;
            }
            let found = last.first + count;
            if found < end {
                tracing::error!(store = %dir.display(), expected = end, found,
                    "the event store ends before the indexed store says it does; records are missing");
                next = found;
            }
        } else if end > 0 {
            tracing::error!(store = %dir.display(), expected = end,
                "the event store has no segments although the indexed store lists records");
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(EventLog {
            dir: dir.to_path_buf(),
            segment_bytes,
            inner: Mutex::new(Inner {
                segments,
                current: None,
                started: None,
                rotate_after: None,
                next,
            }),
        })
    }

    /// Number of the next record (every record below it is readable).
    pub(super) fn end(&self) -> u64 {
        self.lock().next
    }

    /// Number of the first record kept (older ones were purged by retention).
    pub(super) fn first(&self) -> u64 {
        let g = self.lock();
        g.segments.first().map_or(g.next, |s| s.first)
    }

    /// The segments as they are now (first record, path) and the number of the next record.
    fn listing(&self) -> (Vec<(u64, PathBuf)>, u64) {
        let g = self.lock();
        let segs = g
            .segments
            .iter()
            .map(|s| (s.first, s.path.clone()))
            .collect();
        (segs, g.next)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts appending; nothing is visible to scans until [`Appender::sync`] and nothing is
    /// kept unless the appender is finished ([`Appender::finish`]) — dropping it undoes the
    /// appends.
    pub(super) fn begin(&self) -> Appender<'_> {
        let g = self.lock();
        let mark = Mark {
            segments: g.segments.len(),
            len: g.current.as_ref().map(|(_, l)| *l),
            next: g.next,
        };
        Appender {
            log: self,
            inner: g,
            buf: Vec::with_capacity(WRITE_CHUNK + 4096),
            mark,
            done: false,
        }
    }

    /// Every record numbered `from` or later, in order, to `f` (borrowed from the segment's
    /// bytes). `f` returns `false` to stop.
    pub(super) fn scan(
        &self,
        from: u64,
        mut f: impl FnMut(RecordRef<'_>) -> bool,
    ) -> Result<(), StoreError> {
        self.scan_located(from, |r, _| f(r))
    }

    /// [`EventLog::scan`], with each record's byte offset in its segment.
    pub(super) fn scan_located(
        &self,
        from: u64,
        mut f: impl FnMut(RecordRef<'_>, u64) -> bool,
    ) -> Result<(), StoreError> {
        let (segs, end) = self.listing();
        for (i, (first, path)) in segs.iter().enumerate() {
            let upto = segs.get(i + 1).map_or(end, |s| s.0);
            if upto <= from {
                continue;
            }
            let bytes = match read_all(path) {
                Ok(b) => b,
                // Dropped by retention since the list was taken: its records are gone.
                Err(_) if !self.lock().segments.iter().any(|s| s.first == *first) => continue,
                Err(e) => return Err(e),
            };
            let mut go = true;
            walk(&bytes, *first, upto, |r, stop| {
                if go && r.n >= from {
                    let at = (stop - FRAME - META - r.sealed.len()) as u64;
                    go = f(r, at);
                }
            });
            if !go {
                break;
            }
        }
        Ok(())
    }

    /// The records at `locs` (each checked: its frame, CRC and number), in the order given,
    /// to `f`; a location that holds no such record (damage) is an error naming it.
    pub(super) fn read_at(
        &self,
        locs: &[Location],
        mut f: impl FnMut(RecordRef<'_>),
    ) -> Result<(), StoreError> {
        if locs.is_empty() {
            return Ok(());
        }
        let (segs, end) = self.listing();
        let mut open: Option<(usize, File)> = None;
        let mut buf = Vec::new();
        for l in locs {
            let i = segs.partition_point(|(first, _)| *first <= l.n);
            if l.n >= end || i == 0 {
                return Err(StoreError::Db(format!(
                    "{}: no record {} (the store holds {}..{end})",
                    self.dir.display(),
                    l.n,
                    segs.first().map_or(end, |s| s.0)
                )));
            }
            let (_, path) = &segs[i - 1];
            if open.as_ref().is_none_or(|(j, _)| *j != i - 1) {
                let f = File::open(path).map_err(|e| io_err(path, "open", e))?;
                open = Some((i - 1, f));
            }
            let (_, file) = open.as_ref().expect("opened above");
            // One read for a record of the usual size (a decision is a few hundred bytes);
            // a longer one reads its rest.
            buf.resize(READ_AHEAD, 0);
            let got = read_up_to(file, &mut buf, l.offset).map_err(|e| io_err(path, "read", e))?;
            buf.truncate(got);
            let bad = || {
                StoreError::Db(format!(
                    "{}: record {} at byte {} is damaged",
                    path.display(),
                    l.n,
                    l.offset
                ))
            };
            let Some(h) = buf.get(..FRAME) else {
                return Err(bad());
            };
            let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
            let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            if len > MAX_RECORD || (len as usize) < META {
                return Err(bad());
            }
            let stop = FRAME + len as usize;
            if buf.len() < stop {
                let have = buf.len();
                buf.resize(stop, 0);
                file.read_exact_at(&mut buf[have..], l.offset + have as u64)
                    .map_err(|e| io_err(path, "read", e))?;
            }
            let body = &buf[FRAME..stop];
            if crc32fast::hash(body) != crc {
                return Err(bad());
            }
            match RecordRef::parse(body) {
                Some(r) if r.n == l.n => f(r),
                _ => return Err(bad()),
            }
        }
        Ok(())
    }

    /// Rewrites every record's row field through `map` (the schema 4 migration, at open before
    /// any append): each segment is written anew beside itself, synced and renamed over it.
    /// Returns how many records were rewritten.
    pub(super) fn rewrite_rows(
        &self,
        mut map: impl FnMut(&RowId) -> RowId,
    ) -> Result<u64, StoreError> {
        let g = self.lock();
        let mut count = 0u64;
        for (i, seg) in g.segments.iter().enumerate() {
            let upto = g.segments.get(i + 1).map_or(g.next, |s| s.first);
            let mut bytes = read_all(&seg.path)?;
            let mut spans = Vec::new();
            let valid = walk(&bytes, seg.first, upto, |r, stop| {
                spans.push((stop - FRAME - META - r.sealed.len(), stop, map(&r.row)));
            });
            bytes.truncate(valid);
            for (at, stop, row) in spans {
                bytes[at + FRAME + 9..at + FRAME + 25].copy_from_slice(&row.0);
                let crc = crc32fast::hash(&bytes[at + FRAME..stop]);
                bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
                count += 1;
            }
            trimtab_util::fsutil::write_atomic_private(&seg.path, &bytes)
                .map_err(|e| io_err(&seg.path, "rewrite", e))?;
        }
        sync_dir(&self.dir)?;
        Ok(count)
    }

    /// Closes the open segment at the next append once it is `after` old (None: only by size).
    pub(super) fn set_rotate_after(&self, after: Option<std::time::Duration>) {
        self.lock().rotate_after = after;
    }

    /// Retention: deletes the oldest segments last written before `cutoff` whose records all
    /// lie below `floor` (checkpoints cover them: recovery never reads them again), oldest
    /// first, never the open (newest) one. Returns (segments, records) deleted.
    pub(super) fn purge(
        &self,
        cutoff: std::time::SystemTime,
        floor: u64,
    ) -> Result<(usize, u64), StoreError> {
        let mut g = self.lock();
        let (mut segments, mut records) = (0usize, 0u64);
        while g.segments.len() > 1 {
            let upto = g.segments[1].first;
            let seg = &g.segments[0];
            if upto > floor {
                break;
            }
            let written = std::fs::metadata(&seg.path)
                .and_then(|m| m.modified())
                .map_err(|e| io_err(&seg.path, "stat", e))?;
            if written >= cutoff {
                break;
            }
            std::fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, "remove", e))?;
            records += upto - seg.first;
            segments += 1;
            g.segments.remove(0);
        }
        if segments > 0 {
            sync_dir(&self.dir)?;
        }
        Ok((segments, records))
    }

    /// Segment files (tests and diagnostics).
    #[cfg(test)]
    pub(super) fn segments(&self) -> usize {
        self.lock().segments.len()
    }
}

/// Where a record is: its number and its byte offset in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Location {
    pub n: u64,
    pub offset: u64,
}

impl Location {
    /// 16 bytes, little endian (as kept in the indexed store).
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.n.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
    }

    /// The locations of [`Location::encode`]d bytes (a torn tail is ignored).
    pub(super) fn decode_all(b: &[u8]) -> impl Iterator<Item = Location> + '_ {
        b.chunks_exact(16).map(|c| Location {
            n: u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
            offset: u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
        })
    }
}

/// Where an [`Appender`] started: what to go back to.
struct Mark {
    segments: usize,
    len: Option<u64>,
    next: u64,
}

/// An open append (holds the store's lock: the indexer's one transaction at a time).
pub(super) struct Appender<'a> {
    log: &'a EventLog,
    inner: MutexGuard<'a, Inner>,
    /// Encoded records not yet written to the current segment.
    buf: Vec<u8>,
    mark: Mark,
    done: bool,
}

impl Appender<'_> {
    /// Adds a record; returns its number and where it is ([`EventLog::read_at`] reads it
    /// back).
    pub(super) fn push(
        &mut self,
        kind: Kind,
        row: &RowId,
        seq: u64,
        id_hash: &[u8; 16],
        sealed: &[u8],
    ) -> Result<Location, StoreError> {
        let seg_len = self.inner.current.as_ref().map_or(u64::MAX, |(_, l)| *l);
        // Closed by age only once it holds a record (a new segment is named after its first).
        let holds = self
            .inner
            .segments
            .last()
            .is_some_and(|s| s.first < self.inner.next);
        let old = match (self.inner.started, self.inner.rotate_after) {
            (Some(s), Some(after)) => holds && s.elapsed() >= after,
            _ => false,
        };
        if old || seg_len.saturating_add(self.buf.len() as u64) >= self.log.segment_bytes {
            self.write_out()?;
            self.rotate()?;
        }
        let n = self.inner.next;
        let len = u32::try_from(META + sealed.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| StoreError::Db("an event record is larger than 64 MiB".into()))?;
        let at = self.buf.len();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&[0u8; 4]);
        self.buf.extend_from_slice(&n.to_le_bytes());
        self.buf.push(kind as u8);
        self.buf.extend_from_slice(&row.0);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(id_hash);
        self.buf.extend_from_slice(sealed);
        let crc = crc32fast::hash(&self.buf[at + FRAME..]);
        self.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        self.inner.next = n + 1;
        let written = self.inner.current.as_ref().map_or(0, |(_, l)| *l);
        let location = Location {
            n,
            offset: written + at as u64,
        };
        // Not visible to scans before the records are synced and the index transaction
        // commits (they stop at the end they were given); undone like the rest on failure.
        if self.buf.len() >= WRITE_CHUNK {
            self.write_out()?;
        }
        Ok(location)
    }

    /// Number of the next record.
    pub(super) fn next(&self) -> u64 {
        self.inner.next
    }

    fn rotate(&mut self) -> Result<(), StoreError> {
        if let Some((f, _)) = self.inner.current.take() {
            f.sync_data()
                .map_err(|e| io_err(&self.log.dir, "sync", e))?;
        }
        let first = self.inner.next;
        let path = self.log.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, "create", e))?;
        sync_dir(&self.log.dir)?;
        self.inner.segments.push(Segment { first, path });
        self.inner.current = Some((file, 0));
        self.inner.started = Some(std::time::Instant::now());
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), StoreError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        // The first push of an appender with no open segment started one (`rotate`).
        let (file, len) = self
            .inner
            .current
            .as_mut()
            .expect("a segment is open once a record is pushed");
        file.write_all_at(&self.buf, *len)
            .map_err(|e| io_err(&self.log.dir, "write", e))?;
        *len += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is pending and makes every record pushed so far durable.
    pub(super) fn sync(&mut self) -> Result<(), StoreError> {
        self.write_out()?;
        if let Some((f, _)) = &self.inner.current {
            f.sync_data()
                .map_err(|e| io_err(&self.log.dir, "sync", e))?;
        }
        Ok(())
    }

    /// Keeps what was appended: after [`Appender::sync`], before the transaction that records
    /// it commits (a commit that reports a failure may still have landed).
    pub(super) fn finish(mut self) {
        self.done = true;
    }

    /// Goes back to where the appender started: segments it created are removed, the one it
    /// appended to is cut back. If that fails the store refuses appends until reopened.
    fn undo(&mut self) {
        self.buf.clear();
        let keep = self.mark.segments;
        let mut ok = true;
        while self.inner.segments.len() > keep {
            let s = self.inner.segments.pop().expect("len > keep");
            ok &= std::fs::remove_file(&s.path).is_ok();
            self.inner.current = None;
        }
        if let (Some(len), Some(s)) = (self.mark.len, self.inner.segments.last()) {
            let cut = OpenOptions::new().write(true).open(&s.path).and_then(|f| {
                f.set_len(len)?;
                f.sync_data()?;
                Ok(f)
            });
            match cut {
                Ok(f) => self.inner.current = Some((f, len)),
                Err(_) => ok = false,
            }
        } else if self.mark.len.is_none() {
            self.inner.current = None;
        }
        self.inner.next = self.mark.next;
        if !ok {
            tracing::error!(store = %self.log.dir.display(),
                "cannot undo a failed append to the event store; the next start cuts it off");
        }
    }
}

impl Drop for Appender<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.undo();
        }
    }
}
