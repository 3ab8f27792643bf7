//! The per-user key store (`keys.bin` in the data dir), built for erasure that is final.
//!
//! redb never zeroes freed pages, so deleting rows leaves their bytes in the file. Every user
//! record is therefore encrypted with that user's own random key, and the keys live here, in
//! fixed 48-byte slots (`user key ‖ data key`) that are overwritten **in place** with zeros and
//! fsynced when a user is erased. After that, nothing in the data dir can decrypt what was left
//! behind in redb's free pages.
//!
//! Threads: the writer thread creates and erases keys; shard threads look keys up (read lock).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
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
        let mut file = OpenOptions::new()
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
            file: Mutex::new(FileState { file, free, slots }),
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

    /// The data key of `user`, creating (and fsyncing) one if needed. Writer thread only.
    pub fn get_or_create(&self, user: &UserKey) -> std::io::Result<[u8; 32]> {
        if let Some(k) = self.get(user) {
            return Ok(k);
        }
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let slot = fs.free.pop().unwrap_or_else(|| {
            fs.slots += 1;
            fs.slots - 1
        });
        let mut rec = [0u8; SLOT];
        rec[..16].copy_from_slice(&user.0);
        rec[16..].copy_from_slice(&key);
        fs.file.seek(SeekFrom::Start(8 + slot * SLOT as u64))?;
        fs.file.write_all(&rec)?;
        fs.file.sync_data()?;
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(*user, (slot, key));
        Ok(key)
    }

    /// Destroys `user`'s key: the slot is overwritten with zeros in place and fsynced before
    /// this returns. Returns whether a key existed.
    pub fn erase(&self, user: &UserKey) -> std::io::Result<bool> {
        let removed = self
            .keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(user);
        let Some((slot, _)) = removed else {
            return Ok(false);
        };
        let mut fs = self.file.lock().unwrap_or_else(|e| e.into_inner());
        fs.file.seek(SeekFrom::Start(8 + slot * SLOT as u64))?;
        fs.file.write_all(&[0u8; SLOT])?;
        fs.file.sync_data()?;
        fs.free.push(slot);
        Ok(true)
    }

    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
        let ka = ks.get_or_create(&a).unwrap();
        let kb = ks.get_or_create(&b).unwrap();
        assert_eq!(ks.get_or_create(&a).unwrap(), ka);
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
        ks.get_or_create(&UserKey([3; 16])).unwrap();
        assert_eq!(std::fs::read(&p).unwrap().len(), len);
        std::fs::write(&p, b"garbage!garbage!").unwrap();
        assert!(matches!(
            KeyStore::open(&p),
            Err(KeyStoreError::Corrupt { .. })
        ));
    }
}
