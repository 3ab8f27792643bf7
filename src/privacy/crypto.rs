//! Record encryption with per-user keys: ChaCha20-Poly1305, a random 96-bit nonce per record,
//! and the user key plus the table name as associated data (a record cannot be moved to another
//! user or table unnoticed). Once a user's key is destroyed, their records are noise.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use super::ids::UserKey;

/// Which table a record belongs to (bound into the AEAD associated data).
#[derive(Clone, Copy, Debug)]
pub enum Table {
    State,
    Event,
    Decision,
    Learn,
}

impl Table {
    fn tag(self) -> &'static [u8] {
        match self {
            Table::State => b"state",
            Table::Event => b"event",
            Table::Decision => b"decision",
            Table::Learn => b"learn",
        }
    }
}

fn aad(user: &UserKey, table: Table) -> Vec<u8> {
    let mut a = Vec::with_capacity(32);
    a.extend_from_slice(&user.0);
    a.extend_from_slice(table.tag());
    a
}

/// Encrypts `plain` for `user`: returns nonce ‖ ciphertext ‖ tag.
pub fn seal_record(key: &[u8; 32], user: &UserKey, table: Table, plain: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let aad = aad(user, table);
    // Encryption only fails for plaintexts beyond ~256 GiB; records are bounded far below that.
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .expect("record far below the AEAD size limit");
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Decrypts a record sealed by [`seal_record`]; `None` when it is not authentic.
pub fn open_record(key: &[u8; 32], user: &UserKey, table: Table, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < 12 + 16 {
        return None;
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
    let (nonce, ct) = sealed.split_at(12);
    let aad = aad(user, table);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: &aad })
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_binding() {
        let k = [3u8; 32];
        let u = UserKey([1; 16]);
        let sealed = seal_record(&k, &u, Table::Event, b"canary-123");
        assert!(!sealed.windows(10).any(|w| w == b"canary-123"));
        assert_eq!(
            open_record(&k, &u, Table::Event, &sealed).unwrap(),
            b"canary-123"
        );
        assert!(open_record(&k, &u, Table::State, &sealed).is_none());
        assert!(open_record(&k, &UserKey([2; 16]), Table::Event, &sealed).is_none());
        assert!(open_record(&[4u8; 32], &u, Table::Event, &sealed).is_none());
    }
}
