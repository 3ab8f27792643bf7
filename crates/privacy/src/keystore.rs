//! The per-user key store (`keys.bin` in the data dir), built for erasure that is final.
//!
//! redb never zeroes freed pages, so deleting rows leaves their bytes in the file. Every user
//! record is therefore encrypted with that user's own random key, and the keys live here, in
//! fixed slots (`user key ‖ data key`, 48 bytes; with a master key `user key ‖ wrapped data
//! key`, 76 bytes, see [`crate::master`]) that are overwritten **in place** with zeros and
//! fsynced when a user is erased. After that, nothing in the data dir can decrypt what was left
//! behind in redb's free pages — and with a master key kept elsewhere, not even an older copy
//! of `keys.bin` can, without that key.
//!
//! New keys are created in memory by the shard that first writes a user
//! ([`KeyStore::get_or_create`]) and made durable by the writer, all the new keys of a group
//! commit in one write and one `fdatasync` ([`KeyStore::sync_pending`]), before the redb commit
//! that holds the first records sealed with them. The writer erases keys; shards look them up.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Mutex, RwLock};

use rand::RngCore;

use super::ids::{RowId, UserKey};
use super::master::{MasterKey, CHECK, WRAPPED};

/// `keys.bin` without a master key: 48-byte slots `user key ‖ data key`.
const MAGIC_PLAIN: &[u8; 8] = b"TTKEYS01";
/// `keys.bin` wrapped with a master key: the key's check value after the magic, then 76-byte
/// slots `user key ‖ wrapped data key`.
const MAGIC_WRAPPED: &[u8; 8] = b"TTKEYS02";

/// How the slots of a key file are written.
enum Format {
    Plain,
    Wrapped(MasterKey),
}

impl Format {
    fn of(master: Option<&MasterKey>) -> Format {
        master.map_or(Format::Plain, |m| Format::Wrapped(m.clone()))
    }

    fn header(&self) -> Vec<u8> {
        match self {
            Format::Plain => MAGIC_PLAIN.to_vec(),
            Format::Wrapped(m) => [&MAGIC_WRAPPED[..], &m.check()[..]].concat(),
        }
    }

    /// The header's length, without building it (the check value is an HMAC: not for every
    /// group commit that writes new keys).
    fn header_len(&self) -> u64 {
        match self {
            Format::Plain => MAGIC_PLAIN.len() as u64,
            Format::Wrapped(_) => (MAGIC_WRAPPED.len() + CHECK) as u64,
        }
    }

    fn slot_len(&self) -> usize {
        match self {
            Format::Plain => 48,
            Format::Wrapped(_) => 16 + WRAPPED,
        }
    }

    fn encode(&self, user: &UserKey, key: &[u8; 32], out: &mut Vec<u8>) {
        out.extend_from_slice(&user.0);
        match self {
            Format::Plain => out.extend_from_slice(key),
            Format::Wrapped(m) => out.extend_from_slice(&m.wrap(&user.0, key)),
        }
    }

    /// One slot: `Ok(None)` when it is zeros (free), `Err(())` when it does not unwrap.
    fn decode(&self, slot: &[u8]) -> Result<Option<(UserKey, [u8; 32])>, ()> {
        if slot.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let mut u = [0u8; 16];
        u.copy_from_slice(&slot[..16]);
        let key = match self {
            Format::Plain => {
                let mut k = [0u8; 32];
                k.copy_from_slice(&slot[16..48]);
                k
            }
            Format::Wrapped(m) => m.unwrap(&u, &slot[16..]).ok_or(())?,
        };
        Ok(Some((UserKey(u), key)))
    }
}

struct FileState {
    file: File,
    format: Format,
    free: Vec<u64>,
    slots: u64,
    /// Slots known to be on disk (written and synced): what a truncated file would lack.
    durable: u64,
    /// Keys created in memory and not yet written: (slot, user, key).
    pending: Vec<(u64, UserKey, [u8; 32])>,
}

/// A key held in memory: its slot, the key, and the row id it files the user's rows under.
#[derive(Clone, Copy)]
struct Held {
    slot: u64,
    key: [u8; 32],
    row: RowId,
}

impl Held {
    fn new(slot: u64, key: [u8; 32]) -> Held {
        Held {
            slot,
            key,
            row: RowId::of(&key),
        }
    }
}

/// A key taken from its user ([`KeyStore::detach`]) whose slot is not yet overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detached {
    pub slot: u64,
    /// The row id the user's rows were filed under with that key.
    pub row: RowId,
}

#[derive(Default)]
struct Keys {
    by_user: crate::KeyMap<UserKey, Held>,
    /// The user of every row id whose key is in memory (current or detached).
    by_row: crate::KeyMap<RowId, UserKey>,
    /// Keys detached from their users and not yet zeroed on disk, by slot: they stay known
    /// until [`KeyStore::shred`] has overwritten them, so that a failed overwrite can be
    /// retried instead of the key surviving on disk unnoticed.
    detached: HashMap<u64, (UserKey, Held)>,
}

impl Keys {
    fn insert(&mut self, user: UserKey, held: Held) {
        self.by_row.insert(held.row, user);
        self.by_user.insert(user, held);
    }
}

pub struct KeyStore {
    keys: RwLock<Keys>,
    file: Mutex<FileState>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("key store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key store {path} is not a trimtab key file (bad header or size)")]
    Corrupt { path: String },
    #[error("key store {path}: slot {slot} does not unwrap with the master key (damaged bytes?); restore keys.bin from the backup taken with this database")]
    BadSlot { path: String, slot: u64 },
    #[error("key store {path} is wrapped with a master key: set TRIMTAB_MASTER_KEY (or master_key_file) to the key it was written with")]
    MasterKeyNeeded { path: String },
    #[error("key store {path} was wrapped with another master key (check value {found}, this key's {expected}): set the key it was written with")]
    WrongMasterKey {
        path: String,
        found: String,
        expected: String,
    },
}

/// The slots of a key file's bytes: each `Some((user, key))` or `None` (free).
type Slots = Vec<Option<(UserKey, [u8; 32])>>;

/// Reads a key file's bytes with `master` (needed for a wrapped file); returns its slots and
/// whether it was wrapped.
fn parse(
    path: &Path,
    buf: &[u8],
    master: Option<&MasterKey>,
) -> Result<(Slots, bool), KeyStoreError> {
    let p = || path.display().to_string();
    let (format, body, wrapped) = if buf.starts_with(MAGIC_PLAIN) {
        (Format::Plain, &buf[8..], false)
    } else if buf.starts_with(MAGIC_WRAPPED) && buf.len() >= 8 + CHECK {
        let Some(m) = master else {
            return Err(KeyStoreError::MasterKeyNeeded { path: p() });
        };
        let found = &buf[8..8 + CHECK];
        if found != m.check() {
            return Err(KeyStoreError::WrongMasterKey {
                path: p(),
                found: hex::encode(found),
                expected: hex::encode(m.check()),
            });
        }
        (Format::Wrapped(m.clone()), &buf[8 + CHECK..], true)
    } else {
        return Err(KeyStoreError::Corrupt { path: p() });
    };
    // A torn trailing slot (crash mid-append) was never referenced: ignore it.
    let n = body.len() / format.slot_len();
    let mut slots = Vec::with_capacity(n);
    for (i, s) in body.chunks_exact(format.slot_len()).enumerate() {
        slots.push(format.decode(s).map_err(|()| KeyStoreError::BadSlot {
            path: p(),
            slot: i as u64,
        })?);
    }
    Ok((slots, wrapped))
}

/// Writes `slots` as a complete key file in `format`: a private temp file beside `path`,
/// fsynced, renamed over it, the directory fsynced.
fn write_file(path: &Path, slots: &Slots, format: &Format) -> std::io::Result<()> {
    let mut bytes = format.header();
    for s in slots {
        match s {
            Some((u, k)) => format.encode(u, k, &mut bytes),
            None => bytes.resize(bytes.len() + format.slot_len(), 0),
        }
    }
    trimtab_util::fsutil::write_atomic_private(path, &bytes)?;
    trimtab_util::fsutil::sync_dir(path)
}

/// Re-wraps the key file at `path` (of a stopped server): read with `current` (None: it is
/// not wrapped), written with `new` (None: unwrapped). Slot numbers stay as they are. Returns
/// how many keys it holds.
pub fn rewrap(
    path: &Path,
    current: Option<&MasterKey>,
    new: Option<&MasterKey>,
) -> Result<usize, KeyStoreError> {
    let io = |source| KeyStoreError::Io {
        path: path.display().to_string(),
        source,
    };
    let buf = std::fs::read(path).map_err(io)?;
    let (slots, _) = parse(path, &buf, current)?;
    write_file(path, &slots, &Format::of(new)).map_err(io)?;
    Ok(slots.iter().flatten().count())
}

impl KeyStore {
    /// Opens (creating) the key file. With `master`, the keys are wrapped with it: a file
    /// written without one is wrapped now (rewritten in place, atomically); without `master`, a
    /// wrapped file is refused, as is one wrapped with another key.
    pub fn open(path: &Path, master: Option<&MasterKey>) -> Result<KeyStore, KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let format = Format::of(master);
        // Mode 0600 from its creation (set_private below fixes older files).
        let mut file = trimtab_util::fsutil::private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        set_private(path);
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io)?;
        if buf.is_empty() {
            buf = format.header();
            file.write_all(&buf).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let (slots, wrapped) = parse(path, &buf, master)?;
        if master.is_some() && !wrapped {
            write_file(path, &slots, &format).map_err(io)?;
            file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(io)?;
        }
        let mut keys = Keys::default();
        let mut free = Vec::new();
        for (i, s) in slots.iter().enumerate() {
            match s {
                Some((u, k)) => keys.insert(*u, Held::new(i as u64, *k)),
                None => free.push(i as u64),
            }
        }
        let n = slots.len() as u64;
        Ok(KeyStore {
            keys: RwLock::new(keys),
            file: Mutex::new(FileState {
                file,
                format,
                free,
                slots: n,
                durable: n,
                pending: Vec::new(),
            }),
        })
    }

    /// Whether the keys are wrapped with a master key.
    pub fn wrapped(&self) -> bool {
        matches!(
            self.file.lock().unwrap_or_else(|e| e.into_inner()).format,
            Format::Wrapped(_)
        )
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The data key of `user`, if one exists.
    pub fn get(&self, user: &UserKey) -> Option<[u8; 32]> {
        self.entry(user).map(|(k, _)| k)
    }

    /// The data key of `user` and the row id its rows are filed under, if a key exists.
    pub fn entry(&self, user: &UserKey) -> Option<([u8; 32], RowId)> {
        self.read().by_user.get(user).map(|h| (h.key, h.row))
    }

    /// The row id of `user`'s rows, if the user has a key.
    pub fn row(&self, user: &UserKey) -> Option<RowId> {
        self.read().by_user.get(user).map(|h| h.row)
    }

    /// The user and data key behind a row id (current or detached and not yet shredded);
    /// `None` once the key is destroyed: then nothing ties the row id to anyone.
    pub fn by_row(&self, row: &RowId) -> Option<(UserKey, [u8; 32])> {
        let k = self.read();
        let user = *k.by_row.get(row)?;
        match k.by_user.get(&user) {
            Some(h) if h.row == *row => Some((user, h.key)),
            _ => k
                .detached
                .values()
                .find(|(_, h)| h.row == *row)
                .map(|(u, h)| (*u, h.key)),
        }
    }

    /// The data key of `user`, creating one if needed. A new key lives in memory only until
    /// the next [`KeyStore::sync_pending`]; records sealed with it must not be committed before.
    pub fn get_or_create(&self, user: &UserKey) -> [u8; 32] {
        self.get_or_create_entry(user).0
    }

    /// [`KeyStore::get_or_create`] with the key's row id.
    pub fn get_or_create_entry(&self, user: &UserKey) -> ([u8; 32], RowId) {
        if let Some(e) = self.entry(user) {
            return e;
        }
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = self.write();
        if let Some(h) = keys.by_user.get(user) {
            return (h.key, h.row); // created by another thread meanwhile
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let slot = fs.free.pop().unwrap_or_else(|| {
            fs.slots += 1;
            fs.slots - 1
        });
        fs.pending.push((slot, *user, key));
        let held = Held::new(slot, key);
        keys.insert(*user, held);
        (key, held.row)
    }

    /// Writes every key created since the last call and makes them durable with one
    /// `fdatasync`. Returns how many were written. On error they stay pending (retried by the
    /// next call), and the caller must not commit records sealed with them.
    pub fn sync_pending(&self) -> std::io::Result<usize> {
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if fs.pending.is_empty() {
            return Ok(0);
        }
        let mut pending = std::mem::take(&mut fs.pending);
        pending.sort_unstable_by_key(|(slot, _, _)| *slot);
        let result = write_runs(&fs.file, &fs.format, &pending).and_then(|()| fs.file.sync_data());
        match result {
            Ok(()) => {
                let top = pending.last().map_or(0, |(slot, _, _)| slot + 1);
                fs.durable = fs.durable.max(top);
                Ok(pending.len())
            }
            Err(e) => {
                pending.append(&mut fs.pending);
                fs.pending = pending;
                Err(e)
            }
        }
    }

    /// How many slots the file holds durably. The store records it with every index
    /// transaction, so that a `keys.bin` cut short (a partial restore, a bad copy) is refused
    /// at the next start instead of silently losing the users whose slots were cut.
    pub fn durable_slots(&self) -> u64 {
        self.file.lock().unwrap_or_else(|e| e.into_inner()).durable
    }

    /// Keys created and not yet durable.
    pub fn pending(&self) -> usize {
        self.file
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .len()
    }

    /// Destroys `user`'s key: the slot is overwritten with zeros in place and fsynced before
    /// this returns (with any earlier key of the user detached and not yet overwritten).
    /// Returns the row ids whose keys were destroyed (empty: the user had no key).
    pub fn erase(&self, user: &UserKey) -> std::io::Result<Vec<RowId>> {
        self.detach(user);
        let mut rows = Vec::new();
        for d in self.detached_of(user) {
            self.shred(d.slot)?;
            rows.push(d.row);
        }
        Ok(rows)
    }

    /// Takes `user`'s key from the user at once (the next record of that user gets a new key)
    /// and returns its slot and row id. The key stays known, detached, until
    /// [`KeyStore::shred`] has overwritten its slot on disk. A key that was never written is
    /// not written any more.
    pub fn detach(&self, user: &UserKey) -> Option<Detached> {
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = self.write();
        let held = keys.by_user.remove(user)?;
        keys.detached.insert(held.slot, (*user, held));
        fs.pending.retain(|(s, _, _)| *s != held.slot);
        Some(Detached {
            slot: held.slot,
            row: held.row,
        })
    }

    /// The keys of `user` detached and not yet overwritten (an erasure that failed to
    /// overwrite one leaves it here, for the retry).
    pub fn detached_of(&self, user: &UserKey) -> Vec<Detached> {
        let mut out: Vec<Detached> = self
            .read()
            .detached
            .values()
            .filter(|(u, _)| u == user)
            .map(|(_, h)| Detached {
                slot: h.slot,
                row: h.row,
            })
            .collect();
        out.sort_unstable_by_key(|d| d.slot);
        out
    }

    /// Overwrites a detached slot with zeros in place and fsyncs; only then forgets the key
    /// and frees the slot for reuse. On error the key stays detached (retry with this again).
    pub fn shred(&self, slot: u64) -> std::io::Result<()> {
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let (at, len) = (
            fs.format.header_len() + slot * fs.format.slot_len() as u64,
            fs.format.slot_len(),
        );
        #[cfg(test)]
        if FAIL_SHRED.with(|f| f.get()) {
            return Err(std::io::Error::other("injected write failure"));
        }
        fs.file.seek(SeekFrom::Start(at))?;
        fs.file.write_all(&vec![0u8; len])?;
        fs.file.sync_data()?;
        let mut keys = self.write();
        if let Some((_, h)) = keys.detached.remove(&slot) {
            keys.by_row.remove(&h.row);
        }
        fs.free.push(slot);
        Ok(())
    }

    /// Users with a key (detached keys not counted).
    pub fn len(&self) -> usize {
        self.read().by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes sorted `(slot, user, key)` records, one `pwrite` per run of consecutive slots.
fn write_runs(
    file: &File,
    format: &Format,
    recs: &[(u64, UserKey, [u8; 32])],
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let slot = format.slot_len();
    let mut i = 0;
    while i < recs.len() {
        let start = recs[i].0;
        let mut buf = Vec::with_capacity(slot * 8);
        let mut j = i;
        while j < recs.len() && recs[j].0 == start + (j - i) as u64 {
            format.encode(&recs[j].1, &recs[j].2, &mut buf);
            j += 1;
        }
        file.write_all_at(&buf, format.header_len() + start * slot as u64)?;
        i = j;
    }
    Ok(())
}

/// Restricts a secret-bearing file to its owner (0600) where the platform allows.
pub fn set_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
}

#[cfg(test)]
thread_local! {
    /// Makes [`KeyStore::shred`] fail on this thread (a test of the erasure's retry).
    static FAIL_SHRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_reopen_erase_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let ks = KeyStore::open(&p, None).unwrap();
        let a = UserKey([1; 16]);
        let b = UserKey([2; 16]);
        let ka = ks.get_or_create(&a);
        let kb = ks.get_or_create(&b);
        assert_eq!(ks.get_or_create(&a), ka);
        assert_eq!(ks.pending(), 2);
        assert_eq!(ks.sync_pending().unwrap(), 2);
        assert_eq!(ks.sync_pending().unwrap(), 0);
        drop(ks);
        let ks = KeyStore::open(&p, None).unwrap();
        assert_eq!(ks.get(&a), Some(ka));
        assert_eq!(ks.erase(&a).unwrap(), vec![RowId::of(&ka)]);
        assert!(ks.erase(&a).unwrap().is_empty());
        assert_eq!(ks.by_row(&RowId::of(&ka)), None);
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes.windows(32).any(|w| w == ka),
            "erased key still on disk"
        );
        assert!(bytes.windows(32).any(|w| w == kb));
        // The freed slot is reused, so the file does not grow.
        let len = bytes.len();
        ks.get_or_create(&UserKey([3; 16]));
        ks.sync_pending().unwrap();
        assert_eq!(std::fs::read(&p).unwrap().len(), len);
        std::fs::write(&p, b"garbage!garbage!").unwrap();
        assert!(matches!(
            KeyStore::open(&p, None),
            Err(KeyStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn unsynced_keys_are_not_on_disk_and_erasing_one_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let ks = KeyStore::open(&p, None).unwrap();
        let users: Vec<UserKey> = (0..5u8).map(|i| UserKey([i + 10; 16])).collect();
        let keys: Vec<[u8; 32]> = users.iter().map(|u| ks.get_or_create(u)).collect();
        // Not durable yet: a crash now loses them (their records were never committed).
        assert_eq!(KeyStore::open(&p, None).unwrap().len(), 0);
        assert_eq!(ks.erase(&users[2]).unwrap().len(), 1);
        assert_eq!(ks.sync_pending().unwrap(), 4);
        let back = KeyStore::open(&p, None).unwrap();
        assert_eq!(back.len(), 4);
        for (i, u) in users.iter().enumerate() {
            assert_eq!(back.get(u), (i != 2).then_some(keys[i]), "user {i}");
        }
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.windows(32).any(|w| w == keys[2]));
    }

    #[test]
    fn wrapped_keys_are_not_on_disk_and_need_their_master_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let m = MasterKey::generate();
        let ks = KeyStore::open(&p, Some(&m)).unwrap();
        assert!(ks.wrapped());
        let users: Vec<UserKey> = (0..4u8).map(|i| UserKey([i + 1; 16])).collect();
        let keys: Vec<[u8; 32]> = users.iter().map(|u| ks.get_or_create(u)).collect();
        ks.sync_pending().unwrap();
        assert_eq!(ks.erase(&users[1]).unwrap().len(), 1);
        drop(ks);
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.starts_with(b"TTKEYS02"));
        for k in &keys {
            assert!(
                !bytes.windows(32).any(|w| w == k),
                "a data key in the clear"
            );
        }
        // Without the key, or with another one: refused, saying what to do.
        assert!(matches!(
            KeyStore::open(&p, None),
            Err(KeyStoreError::MasterKeyNeeded { .. })
        ));
        assert!(matches!(
            KeyStore::open(&p, Some(&MasterKey::generate())),
            Err(KeyStoreError::WrongMasterKey { .. })
        ));
        let ks = KeyStore::open(&p, Some(&m)).unwrap();
        for (i, u) in users.iter().enumerate() {
            assert_eq!(ks.get(u), (i != 1).then_some(keys[i]), "user {i}");
        }
        // The erased slot is reused without growing the file.
        let len = bytes.len();
        ks.get_or_create(&UserKey([9; 16]));
        ks.sync_pending().unwrap();
        assert_eq!(std::fs::read(&p).unwrap().len(), len);
        drop(ks);
        // A damaged slot is named.
        let mut bad = std::fs::read(&p).unwrap();
        bad[8 + 16 + 40] ^= 0x55;
        std::fs::write(&p, &bad).unwrap();
        assert!(matches!(
            KeyStore::open(&p, Some(&m)),
            Err(KeyStoreError::BadSlot { slot: 0, .. })
        ));
    }

    #[test]
    fn a_plain_file_is_wrapped_when_a_master_key_comes_and_rewrap_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let ks = KeyStore::open(&p, None).unwrap();
        assert!(!ks.wrapped());
        let a = UserKey([1; 16]);
        let ka = ks.get_or_create(&a);
        ks.sync_pending().unwrap();
        drop(ks);
        assert!(std::fs::read(&p).unwrap().windows(32).any(|w| w == ka));
        // First start with a master key: wrapped in place, same keys.
        let m1 = MasterKey::generate();
        let ks = KeyStore::open(&p, Some(&m1)).unwrap();
        assert!(ks.wrapped());
        assert_eq!(ks.get(&a), Some(ka));
        drop(ks);
        assert!(!std::fs::read(&p).unwrap().windows(32).any(|w| w == ka));
        // Rotation: the old key no longer opens it, the new one does.
        let m2 = MasterKey::generate();
        assert_eq!(rewrap(&p, Some(&m1), Some(&m2)).unwrap(), 1);
        assert!(matches!(
            KeyStore::open(&p, Some(&m1)),
            Err(KeyStoreError::WrongMasterKey { .. })
        ));
        assert_eq!(KeyStore::open(&p, Some(&m2)).unwrap().get(&a), Some(ka));
        // And back to unwrapped (leaving the master key behind) when asked.
        assert_eq!(rewrap(&p, Some(&m2), None).unwrap(), 1);
        assert_eq!(KeyStore::open(&p, None).unwrap().get(&a), Some(ka));
    }

    #[test]
    fn a_key_is_forgotten_only_once_its_slot_is_zeroed_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let ks = KeyStore::open(&p, None).unwrap();
        let a = UserKey([1; 16]);
        let (ka, row) = ks.get_or_create_entry(&a);
        ks.sync_pending().unwrap();
        assert_eq!(ks.row(&a), Some(row));
        assert_eq!(ks.by_row(&row), Some((a, ka)));
        // The overwrite fails: the erasure reports the error and the key stays known, so a
        // retry cannot report success while the key is still on disk.
        FAIL_SHRED.with(|f| f.set(true));
        assert!(ks.erase(&a).is_err());
        FAIL_SHRED.with(|f| f.set(false));
        assert!(std::fs::read(&p).unwrap().windows(32).any(|w| w == ka));
        assert_eq!(ks.get(&a), None, "records after the erasure take a new key");
        assert_eq!(
            ks.by_row(&row),
            Some((a, ka)),
            "the old rows can still be found"
        );
        // A new key for the user meanwhile is not the retry's to destroy.
        let (kb, row_b) = ks.get_or_create_entry(&a);
        assert_ne!(row_b, row);
        assert_eq!(ks.detached_of(&a), vec![Detached { slot: 0, row }]);
        // The retry (the shard detaches the new key only for a new erasure): the old key goes.
        assert!(ks.shred(0).is_ok());
        assert!(ks.detached_of(&a).is_empty());
        assert_eq!(ks.by_row(&row), None);
        assert_eq!(ks.by_row(&row_b), Some((a, kb)));
        ks.sync_pending().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.windows(32).any(|w| w == ka));
        assert!(bytes.windows(32).any(|w| w == kb));
        // erase() also sweeps up a detached leftover with the current key.
        let c = UserKey([3; 16]);
        let (kc, rc) = ks.get_or_create_entry(&c);
        ks.sync_pending().unwrap();
        FAIL_SHRED.with(|f| f.set(true));
        assert!(ks.erase(&c).is_err());
        FAIL_SHRED.with(|f| f.set(false));
        let (kc2, rc2) = ks.get_or_create_entry(&c);
        ks.sync_pending().unwrap();
        let mut erased = ks.erase(&c).unwrap();
        erased.sort();
        let mut want = vec![rc, rc2];
        want.sort();
        assert_eq!(erased, want);
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.windows(32).any(|w| w == kc || w == kc2));
    }
}
