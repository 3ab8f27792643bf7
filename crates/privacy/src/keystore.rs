//! The per-user key store (`keys.bin` in the data dir), built for erasure that is final.
//!
//! redb never zeroes freed pages, so deleting rows leaves their bytes in the file. Every user
//! record is therefore encrypted with that user's own random key, and the keys live here, in
//! fixed 48-byte slots (`user key ‖ data key`) that are overwritten **in place** with zeros and
//! fsynced when a user is erased. After that, nothing in the data dir can decrypt what was left
//! behind in redb's free pages.
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

use super::ids::UserKey;

const MAGIC: &[u8; 8] = b"TTKEYS01";
const SLOT: usize = 48;

struct FileState {
    file: File,
    free: Vec<u64>,
    slots: u64,
    /// Slots known to be on disk (written and synced): what a truncated file would lack.
    durable: u64,
    /// Keys created in memory and not yet written: (slot, user, key).
    pending: Vec<(u64, UserKey, [u8; 32])>,
}

pub struct KeyStore {
    keys: RwLock<HashMap<UserKey, (u64, [u8; 32])>>,
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
}

impl KeyStore {
    pub fn open(path: &Path) -> Result<KeyStore, KeyStoreError> {
        let io = |source| KeyStoreError::Io {
            path: path.display().to_string(),
            source,
        };
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
            file.write_all(MAGIC).map_err(io)?;
            file.sync_all().map_err(io)?;
            buf.extend_from_slice(MAGIC);
        }
        if &buf[..8.min(buf.len())] != MAGIC {
            return Err(KeyStoreError::Corrupt {
                path: path.display().to_string(),
            });
        }
        // A torn trailing slot (crash mid-append) was never referenced: ignore it.
        let body = &buf[8..];
        let slots = (body.len() / SLOT) as u64;
        let mut keys = HashMap::new();
        let mut free = Vec::new();
        for i in 0..slots {
            let s = &body[i as usize * SLOT..(i as usize + 1) * SLOT];
            if s.iter().all(|b| *b == 0) {
                free.push(i);
                continue;
            }
            let mut u = [0u8; 16];
            u.copy_from_slice(&s[..16]);
            let mut k = [0u8; 32];
            k.copy_from_slice(&s[16..]);
            keys.insert(UserKey(u), (i, k));
        }
        Ok(KeyStore {
            keys: RwLock::new(keys),
            file: Mutex::new(FileState {
                file,
                free,
                slots,
                durable: slots,
                pending: Vec::new(),
            }),
        })
    }

    /// The data key of `user`, if one exists.
    pub fn get(&self, user: &UserKey) -> Option<[u8; 32]> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(user)
            .map(|(_, k)| *k)
    }

    /// The data key of `user`, creating one if needed. A new key lives in memory only until
    /// the next [`KeyStore::sync_pending`]; records sealed with it must not be committed before.
    pub fn get_or_create(&self, user: &UserKey) -> [u8; 32] {
        if let Some(k) = self.get(user) {
            return k;
        }
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = keys.get(user) {
            return *k; // created by another thread meanwhile
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let slot = fs.free.pop().unwrap_or_else(|| {
            fs.slots += 1;
            fs.slots - 1
        });
        fs.pending.push((slot, *user, key));
        keys.insert(*user, (slot, key));
        key
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
        let result = write_runs(&fs.file, &pending).and_then(|()| fs.file.sync_data());
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
    /// this returns. Returns whether a key existed.
    pub fn erase(&self, user: &UserKey) -> std::io::Result<bool> {
        match self.detach(user) {
            Some(slot) => self.shred(slot).map(|()| true),
            None => Ok(false),
        }
    }

    /// Forgets `user`'s key at once (the next record of that user gets a new key) and returns
    /// its slot, which stays reserved until [`KeyStore::shred`] overwrites it. A key that was
    /// never written is simply dropped.
    pub fn detach(&self, user: &UserKey) -> Option<u64> {
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, _) = self
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user)?;
        fs.pending.retain(|(s, _, _)| *s != slot);
        Some(slot)
    }

    /// Overwrites a detached slot with zeros in place, fsyncs, and frees it for reuse.
    pub fn shred(&self, slot: u64) -> std::io::Result<()> {
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        fs.file.seek(SeekFrom::Start(8 + slot * SLOT as u64))?;
        fs.file.write_all(&[0u8; SLOT])?;
        fs.file.sync_data()?;
        fs.free.push(slot);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes sorted `(slot, user, key)` records, one `pwrite` per run of consecutive slots.
fn write_runs(file: &File, recs: &[(u64, UserKey, [u8; 32])]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut i = 0;
    while i < recs.len() {
        let start = recs[i].0;
        let mut buf = Vec::with_capacity(SLOT * 8);
        let mut j = i;
        while j < recs.len() && recs[j].0 == start + (j - i) as u64 {
            buf.extend_from_slice(&recs[j].1 .0);
            buf.extend_from_slice(&recs[j].2);
            j += 1;
        }
        file.write_all_at(&buf, 8 + start * SLOT as u64)?;
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
mod tests {
    use super::*;

    #[test]
    fn create_reopen_erase_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let ks = KeyStore::open(&p).unwrap();
        let a = UserKey([1; 16]);
        let b = UserKey([2; 16]);
        let ka = ks.get_or_create(&a);
        let kb = ks.get_or_create(&b);
        assert_eq!(ks.get_or_create(&a), ka);
        assert_eq!(ks.pending(), 2);
        assert_eq!(ks.sync_pending().unwrap(), 2);
        assert_eq!(ks.sync_pending().unwrap(), 0);
        drop(ks);
        let ks = KeyStore::open(&p).unwrap();
        assert_eq!(ks.get(&a), Some(ka));
        assert!(ks.erase(&a).unwrap());
        assert!(!ks.erase(&a).unwrap());
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
            KeyStore::open(&p),
            Err(KeyStoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn unsynced_keys_are_not_on_disk_and_erasing_one_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.bin");
        let ks = KeyStore::open(&p).unwrap();
        let users: Vec<UserKey> = (0..5u8).map(|i| UserKey([i + 10; 16])).collect();
        let keys: Vec<[u8; 32]> = users.iter().map(|u| ks.get_or_create(u)).collect();
        // Not durable yet: a crash now loses them (their records were never committed).
        assert_eq!(KeyStore::open(&p).unwrap().len(), 0);
        assert!(ks.erase(&users[2]).unwrap());
        assert_eq!(ks.sync_pending().unwrap(), 4);
        let back = KeyStore::open(&p).unwrap();
        assert_eq!(back.len(), 4);
        for (i, u) in users.iter().enumerate() {
            assert_eq!(back.get(u), (i != 2).then_some(keys[i]), "user {i}");
        }
        let bytes = std::fs::read(&p).unwrap();
        assert!(!bytes.windows(32).any(|w| w == keys[2]));
    }
}
